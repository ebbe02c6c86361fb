//! Running the command: fork, set up the child, exec; reap until the
//! command exits; kill and reap whatever is left.
//!
//! Everything the child needs (C strings, the `PATH` candidates, raw
//! descriptors) is built before `fork`; the child only makes system calls.
//! A failure in the child is sent as (step, errno) on a close-on-exec pipe,
//! so the parent tells "the command exited 127" from "could not exec" (an
//! empty pipe at EOF means exec succeeded).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use kestrel_initramfs::job::{Spec, Status};

use crate::error::InitError;
use crate::sys::{self, CStringArray};
use crate::{error, kmsg, relay};
use std::ffi::CString;

/// The search path when the spec's environment has no `PATH` (glibc's).
pub const DEFAULT_PATH: &str = "/bin:/usr/bin";
/// Exit code of a child that failed before exec (never reported as such).
const CHILD_FAILED: libc::c_int = 127;

/// The command's standard streams, opened by the init.
pub struct Streams {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

/// A step of the child between fork and exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildStep {
    Setsid = 1,
    Stdin,
    Stdout,
    Stderr,
    Ctty,
    Chroot,
    Chdir,
    Groups,
    Setgid,
    Setuid,
    Sigpipe,
    Exec,
}

impl ChildStep {
    const ALL: [ChildStep; 12] = [
        ChildStep::Setsid,
        ChildStep::Stdin,
        ChildStep::Stdout,
        ChildStep::Stderr,
        ChildStep::Ctty,
        ChildStep::Chroot,
        ChildStep::Chdir,
        ChildStep::Groups,
        ChildStep::Setgid,
        ChildStep::Setuid,
        ChildStep::Sigpipe,
        ChildStep::Exec,
    ];

    fn from_code(code: u32) -> Option<ChildStep> {
        ChildStep::ALL.into_iter().find(|s| *s as u32 == code)
    }
}

/// Everything the child uses, built before fork.
struct Plan<'a> {
    spec: &'a Spec,
    root: Option<CString>,
    cwd: CString,
    argv: CStringArray,
    envp: CStringArray,
    candidates: Vec<CString>,
}

impl<'a> Plan<'a> {
    fn new(spec: &'a Spec, root: Option<&Path>) -> Result<Plan<'a>, InitError> {
        let nul = |what: &str| InitError::msg(format!("{what} contains a NUL byte"));
        let program = spec.argv.first().map_or("", String::as_str);
        let candidates = path_candidates(program, path_var(&spec.env))
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| nul("argv[0]"))?;
        let root = root
            .map(|r| CString::new(r.as_os_str().as_encoded_bytes()))
            .transpose()
            .map_err(|_| nul("root"))?;
        Ok(Plan {
            spec,
            root,
            cwd: CString::new(spec.cwd.as_deref().unwrap_or("/")).map_err(|_| nul("cwd"))?,
            argv: CStringArray::new(&spec.argv).map_err(|_| nul("argv"))?,
            envp: CStringArray::new(&spec.env).map_err(|_| nul("env"))?,
            candidates,
        })
    }

    /// The step's name in the status text.
    fn describe(&self, step: ChildStep) -> String {
        let spec = self.spec;
        match step {
            ChildStep::Setsid => "setsid".into(),
            ChildStep::Stdin => "redirect stdin".into(),
            ChildStep::Stdout => "redirect stdout".into(),
            ChildStep::Stderr => "redirect stderr".into(),
            ChildStep::Ctty => "make the terminal the controlling tty".into(),
            ChildStep::Chroot => format!(
                "chroot {}",
                self.root
                    .as_deref()
                    .map_or(Default::default(), |r| r.to_string_lossy())
            ),
            ChildStep::Chdir => format!("chdir {}", self.cwd.to_string_lossy()),
            ChildStep::Groups => "setgroups".into(),
            ChildStep::Setgid => format!("setgid {}", spec.gid.unwrap_or_default()),
            ChildStep::Setuid => format!("setuid {}", spec.uid.unwrap_or_default()),
            ChildStep::Sigpipe => "reset SIGPIPE".into(),
            ChildStep::Exec => {
                let program = spec.argv.first().map_or("", String::as_str);
                if program.contains('/') {
                    format!("exec {program}")
                } else {
                    let path = path_var(&spec.env).unwrap_or(DEFAULT_PATH);
                    format!("exec {program:?} (PATH {path})")
                }
            }
        }
    }
}

/// The value of the first `PATH=` in `env`.
fn path_var(env: &[String]) -> Option<&str> {
    env.iter().find_map(|e| e.strip_prefix("PATH="))
}

/// The files `execvp` would try for `program`: itself when it contains a
/// `/`, else `<dir>/<program>` for each `PATH` entry (empty entry: the
/// working directory).
pub fn path_candidates(program: &str, path: Option<&str>) -> Vec<String> {
    if program.is_empty() {
        return Vec::new();
    }
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|dir| match dir.trim_end_matches('/') {
            "" if dir.is_empty() => format!("./{program}"),
            trimmed => format!("{trimmed}/{program}"),
        })
        .collect()
}

/// Runs the spec's command and waits for it, reaping every other child
/// that exits meanwhile. An empty argv is `Exit(0)` without running anything.
pub fn run(spec: &Spec, root: Option<&Path>, streams: &Streams) -> Result<Status, InitError> {
    if spec.argv.is_empty() {
        return Ok(Status::Exit(0));
    }
    let plan = Plan::new(spec, root)?;
    // stdout and stderr: a pipe relayed to a virtio-console port (see
    // relay.rs), else the stream itself.
    let mut relayed: Vec<(OwnedFd, File)> = Vec::new();
    let mut pipe_ends: Vec<OwnedFd> = Vec::new();
    let mut fds = [streams.stdin.as_raw_fd(), 0, 0];
    for (i, stream) in [(1, &streams.stdout), (2, &streams.stderr)] {
        fds[i] = stream.as_raw_fd();
        if spec.tty.is_none() && relay::needs_relay(stream.as_raw_fd()) {
            let (rd, wr) = sys::pipe_cloexec().map_err(|e| InitError::os("pipe", &e))?;
            let dest = stream
                .try_clone()
                .map_err(|e| InitError::os("dup an output stream", &e))?;
            fds[i] = wr.as_raw_fd();
            relayed.push((rd, dest));
            pipe_ends.push(wr);
        }
    }
    let (failure_rd, failure_wr) = sys::pipe_cloexec().map_err(|e| InitError::os("pipe", &e))?;
    let pid = sys::fork().map_err(|e| InitError::os("fork", &e))?;
    if pid == 0 {
        child(&plan, fds, failure_wr.as_raw_fd());
    }
    drop(failure_wr);
    drop(pipe_ends);
    let relays =
        relay::Relays::start(relayed).map_err(|e| InitError::os("start the output relays", &e))?;
    let failure = read_failure(failure_rd);
    let status = wait_for(pid);
    relays.finish();
    let status = status?;
    match failure? {
        Some((step, err)) => Err(InitError::os(plan.describe(step), &err)),
        None => Ok(status),
    }
}

/// The child between fork and exec (`fds`: its stdin, stdout, stderr);
/// never returns.
fn child(plan: &Plan, fds: [RawFd; 3], failure: RawFd) -> ! {
    let spec = plan.spec;
    let step = |step: ChildStep, result: io::Result<()>| {
        if let Err(e) = result {
            child_fail(failure, step, &e);
        }
    };
    step(ChildStep::Setsid, sys::child_setsid());
    step(ChildStep::Stdin, sys::child_redirect(fds[0], 0));
    step(ChildStep::Stdout, sys::child_redirect(fds[1], 1));
    step(ChildStep::Stderr, sys::child_redirect(fds[2], 2));
    if spec.tty.is_some() {
        step(ChildStep::Ctty, sys::child_set_ctty());
    }
    if let Some(root) = &plan.root {
        step(ChildStep::Chroot, sys::child_chroot(root));
    }
    step(ChildStep::Chdir, sys::child_chdir(&plan.cwd));
    if spec.uid.is_some() || spec.gid.is_some() {
        step(ChildStep::Groups, sys::child_clear_groups());
    }
    if let Some(gid) = spec.gid {
        step(ChildStep::Setgid, sys::child_setgid(gid));
    }
    if let Some(uid) = spec.uid {
        step(ChildStep::Setuid, sys::child_setuid(uid));
    }
    step(ChildStep::Sigpipe, sys::child_default_sigpipe());
    // execvp's rules: skip entries that do not have the file, remember
    // EACCES, stop at any other error.
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    let mut denied = false;
    for candidate in &plan.candidates {
        let err = sys::child_execve(candidate, &plan.argv, &plan.envp);
        match err.raw_os_error() {
            Some(libc::EACCES) => denied = true,
            Some(libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT) => {}
            _ => child_fail(failure, ChildStep::Exec, &err),
        }
        last = err;
    }
    if denied {
        last = io::Error::from_raw_os_error(libc::EACCES);
    }
    child_fail(failure, ChildStep::Exec, &last)
}

fn child_fail(failure: RawFd, step: ChildStep, err: &io::Error) -> ! {
    let errno = err.raw_os_error().unwrap_or(libc::EINVAL);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // If even this fails, the parent sees exit 127 and an empty pipe.
    let _ = sys::write_all(failure, &msg);
    sys::exit_now(CHILD_FAILED)
}

/// What the child reported before exec, if anything (EOF: exec succeeded).
fn read_failure(pipe: OwnedFd) -> Result<Option<(ChildStep, io::Error)>, InitError> {
    let mut buf = Vec::with_capacity(8);
    File::from(pipe)
        .read_to_end(&mut buf)
        .map_err(|e| InitError::os("read exec status pipe", &e))?;
    match buf.as_slice() {
        [] => Ok(None),
        [s0, s1, s2, s3, e0, e1, e2, e3] => {
            let code = u32::from_ne_bytes([*s0, *s1, *s2, *s3]);
            let errno = i32::from_ne_bytes([*e0, *e1, *e2, *e3]);
            let step = ChildStep::from_code(code)
                .ok_or_else(|| InitError::msg(format!("child reported unknown step {code}")))?;
            Ok(Some((step, io::Error::from_raw_os_error(errno))))
        }
        other => Err(InitError::msg(format!(
            "child sent {} bytes on the exec status pipe",
            other.len()
        ))),
    }
}

/// Reaps children until `pid` exits; returns how it ended.
fn wait_for(pid: libc::pid_t) -> Result<Status, InitError> {
    loop {
        let (reaped, status) =
            sys::waitpid(-1, 0).map_err(|e| InitError::os("wait for the command", &e))?;
        if reaped == pid {
            return decode_wait_status(status);
        }
    }
}

/// A `waitpid` status of a process that ended.
fn decode_wait_status(status: libc::c_int) -> Result<Status, InitError> {
    let byte = |n: libc::c_int| u8::try_from(n).unwrap_or(u8::MAX);
    if libc::WIFEXITED(status) {
        Ok(Status::Exit(byte(libc::WEXITSTATUS(status))))
    } else if libc::WIFSIGNALED(status) {
        Ok(Status::Signal(byte(libc::WTERMSIG(status))))
    } else {
        Err(InitError::msg(format!(
            "unexpected wait status {status:#x}"
        )))
    }
}

/// Kills every process but the init and reaps them all. PID 1 only.
pub fn kill_remaining() {
    match sys::kill(-1, libc::SIGKILL) {
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
            kmsg::error(&format!("kill -1: {}", error::describe(&e)));
        }
        _ => {}
    }
    // ECHILD: nothing is left.
    while sys::waitpid(-1, 0).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use std::sync::Mutex;

    /// `run` reaps any child (waitpid(-1)): one test at a time.
    static FORK_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn looks_up_programs_like_execvp() {
        assert_eq!(
            path_candidates("sh", Some("/usr/bin:/bin/")),
            ["/usr/bin/sh", "/bin/sh"]
        );
        assert_eq!(path_candidates("sh", None), ["/bin/sh", "/usr/bin/sh"]);
        assert_eq!(path_candidates("sh", Some("::/")), ["./sh", "./sh", "/sh"]);
        assert_eq!(path_candidates("./run.sh", Some("/bin")), ["./run.sh"]);
        assert_eq!(path_candidates("/bin/true", Some("/x")), ["/bin/true"]);
        assert!(path_candidates("", Some("/bin")).is_empty());
        let env = ["HOME=/".to_string(), "PATH=/a".into(), "PATH=/b".into()];
        assert_eq!(path_var(&env), Some("/a"));
        assert_eq!(path_var(&[]), None);
    }

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(decode_wait_status(3 << 8), Ok(Status::Exit(3)));
        assert_eq!(decode_wait_status(libc::SIGKILL), Ok(Status::Signal(9)));
        assert!(decode_wait_status(0x137f).is_err()); // stopped
    }

    #[test]
    fn child_steps_round_trip() {
        for step in ChildStep::ALL {
            assert_eq!(ChildStep::from_code(step as u32), Some(step));
        }
        assert_eq!(ChildStep::from_code(0), None);
    }

    fn spec(argv: &[&str], path: &str) -> Spec {
        Spec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![format!("PATH={path}"), "KESTREL=1".into()],
            ..Spec::default()
        }
    }

    fn streams(out: &Path) -> Streams {
        Streams {
            stdin: File::open("/dev/null").unwrap(),
            stdout: File::create(out).unwrap(),
            stderr: File::options().append(true).open(out).unwrap(),
        }
    }

    #[test]
    fn runs_commands_and_reports_exec_failures() {
        let _lock = FORK_LOCK.lock().unwrap();
        let dir = TestDir::new("run");
        let out = dir.path().join("out");
        let s = streams(&out);
        let path = "/nonexistent:/usr/bin:/bin";

        let env_check = spec(&["sh", "-c", "echo \"$KESTREL $HOME\"; exit 3"], path);
        assert_eq!(run(&env_check, None, &s), Ok(Status::Exit(3)));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "1 \n");

        let killed = spec(&["sh", "-c", "kill -TERM $$"], path);
        assert_eq!(run(&killed, None, &s), Ok(Status::Signal(15)));

        let e = run(&spec(&["kestrel-no-such-program"], path), None, &s).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("exec \"kestrel-no-such-program\" (PATH {path}): ENOENT")
        );

        let e = run(&spec(&["/nonexistent/prog"], path), None, &s).unwrap_err();
        assert_eq!(e.to_string(), "exec /nonexistent/prog: ENOENT");

        let mut in_missing_dir = spec(&["true"], path);
        in_missing_dir.cwd = Some("/nonexistent/dir".into());
        let e = run(&in_missing_dir, None, &s).unwrap_err();
        assert_eq!(e.to_string(), "chdir /nonexistent/dir: ENOENT");

        // A command that exits 127 by itself is not an init error.
        let exits_127 = spec(&["sh", "-c", "exit 127"], path);
        assert_eq!(run(&exits_127, None, &s), Ok(Status::Exit(127)));

        assert_eq!(run(&Spec::default(), None, &s), Ok(Status::Exit(0)));
    }

    #[test]
    fn nul_bytes_are_init_errors() {
        let dir = TestDir::new("nul");
        let s = streams(&dir.path().join("out"));
        let e = run(&spec(&["true", "a\0b"], "/bin"), None, &s).unwrap_err();
        assert_eq!(e.to_string(), "argv contains a NUL byte");
    }
}

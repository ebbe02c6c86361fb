//! The guest command on a terminal (issue 14 item 6), booted for real: kestrel
//! runs on the slave side of a pseudo-terminal this test holds the master
//! of, as it would in a developer's terminal emulator.
//!
//! - With no command: an interactive shell on the guest's `/dev/hvc0`
//!   that runs commands, follows the window size (the test resizes the
//!   pty; kestrel gets SIGWINCH and passes it on), delivers Ctrl-C to the
//!   foreground job only (the shell survives, `$?` is 130), stops a job
//!   with Ctrl-Z (job control), and ends with `exit 3` → kestrel exits 3;
//!   the terminal's settings are as before.
//! - A command given with a terminal reads what is typed.
//! - Ctrl-A x ends the VM: verdict `interrupted`, exit 130.
//!
//! Needs hardware-speed KVM (the nested rig in CI): see `common`. No sleeps:
//! every step waits for the text it needs, within a deadline.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one expected text may take (a boot included).
const STEP: Duration = Duration::from_secs(90);

/// A pseudo-terminal pair.
fn openpty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: both out-pointers are valid; name and termios may be null;
    // `size` lives for the call.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn set_size(master: RawFd, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, alive for the call.
    assert_eq!(unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &size) }, 0);
}

fn lflags(fd: RawFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data; tcgetattr fills it in.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is valid for the call.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t.c_lflag
}

/// kestrel on the slave side, in a session of its own with the pty as its
/// controlling terminal (so resizing the pty sends it SIGWINCH).
struct Session {
    child: Child,
    master: OwnedFd,
    /// Held so the pair outlives kestrel (the master can still be read
    /// and its settings checked after kestrel exits).
    _slave: OwnedFd,
    seen: String,
    /// The terminal's local flags before kestrel started.
    before: libc::tcflag_t,
}

impl Session {
    fn start(args: &[&str]) -> Session {
        let (master, slave) = openpty(30, 100);
        let before = lflags(slave.as_raw_fd());
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let mut cmd = Command::new(common::KESTREL);
        cmd.args(["run", "--kernel", "debian:6.1", "--console", "none"])
            .args(args)
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        // SAFETY: between fork and exec only async-signal-safe calls:
        // setsid and an ioctl on descriptor 0 (the pty slave).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("kestrel starts");
        Session {
            child,
            master,
            _slave: slave,
            seen: String::new(),
            before,
        }
    }

    fn send(&self, bytes: &[u8]) {
        // SAFETY: `bytes` is readable for its length.
        let n = unsafe { libc::write(self.master.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize, "write to the pty");
    }

    /// Waits up to `timeout_ms` for output and appends what came to
    /// `seen`: `Some(bytes)` (0: nothing came), `None` once the pty is
    /// closed or hung up.
    fn read_some(&mut self, timeout_ms: i32) -> Option<usize> {
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } <= 0 {
            return Some(0);
        }
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is writable for its length.
        let got =
            unsafe { libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            return None;
        }
        self.seen
            .push_str(&String::from_utf8_lossy(&buf[..got as usize]));
        Some(got as usize)
    }

    /// Reads until `needle` appears after what earlier calls consumed;
    /// returns the text up to and including it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(at) = self.seen.find(needle) {
                let upto = at + needle.len();
                let text = self.seen[..upto].to_string();
                self.seen.drain(..upto);
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} within {STEP:?}; the terminal showed:\n{}",
                self.seen
            );
            let open = self.read_some(left.as_millis().min(1000) as i32);
            assert!(
                open.is_some(),
                "the terminal closed before {needle:?}; it showed:\n{}",
                self.seen
            );
        }
    }

    /// Types `line` and waits for `needle` (retyping it while it has not
    /// shown, for effects that lag: a window size on its way).
    fn until(&mut self, line: &str, needle: &str, tries: u32) -> String {
        for _ in 1..tries {
            self.send(line.as_bytes());
            // Computed in the guest: the echo of the typed line differs.
            let n = self.seen.len();
            self.send(format!("echo try-$(({n}+1))\r").as_bytes());
            let text = self.expect(&format!("try-{}", n + 1));
            if text.contains(needle) {
                return text;
            }
        }
        self.send(line.as_bytes());
        self.expect(needle)
    }

    /// Waits for kestrel to exit (reading the terminal meanwhile so it
    /// never blocks on a full pty); its exit code and the rest it printed.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // What is left in the pty, then all of it.
                while self.read_some(0).is_some_and(|n| n > 0) {}
                return (status.code().unwrap_or(-1), std::mem::take(&mut self.seen));
            }
            assert!(
                Instant::now() < deadline,
                "kestrel did not exit; the terminal showed:\n{}",
                self.seen
            );
            // A short wait: the exit itself is not an event on the pty.
            self.read_some(100);
        }
    }
}

#[test]
fn an_interactive_shell_with_job_control_and_the_window_size() {
    if common::prerequisites("6.1").is_none() {
        return;
    }
    let mut s = Session::start(&[]);
    let before = s.before;
    let started = Instant::now();
    // Keys typed before the shell reads its terminal are not kept (as on
    // a real console): wait for root's prompt.
    s.expect("# ");
    eprintln!(
        "the shell's prompt came {:?} after start",
        started.elapsed()
    );
    s.send(b"echo $((6*7))x\r");
    s.expect("42x");
    // Expected texts are computed in the guest, so the echo of the typed
    // line never matches them.
    s.send(b"tty; echo end-$((2+3))\r");
    let tty = s.expect("end-5");
    assert!(tty.contains("/dev/hvc0"), "{tty}");

    // The starting size, then a resize of the host's terminal.
    s.send(b"stty size\r");
    s.expect("30 100");
    set_size(s.master.as_raw_fd(), 40, 120);
    s.until("stty size\r", "40 120", 20);

    // Ctrl-C ends the foreground job, not the shell.
    s.send(b"sh -c 'echo READY; sleep 1000'\r");
    s.expect("READY\r\n");
    s.send(b"\x03");
    s.send(b"echo rc=$?\r");
    s.expect("rc=130");

    // Ctrl-Z stops it: job control.
    s.send(b"sh -c 'echo READY2; sleep 1000'\r");
    s.expect("READY2\r\n");
    s.send(b"\x1a");
    s.expect("Stopped");
    // `wait`: the job ends (SIGTERM after bash's SIGCONT) only after the
    // kill returns; an `exit` before bash reaps it meets "There are
    // stopped jobs" (ci, session 20, in the one-vCPU rig).
    s.send(b"kill %1; wait %1 2>/dev/null; echo killed-$((1+1))\r");
    s.expect("killed-2");

    s.send(b"exit 3\r");
    // The master reads the pair's settings (the slave is hung up once its
    // session leader, kestrel, exits).
    let master = s.master.try_clone().unwrap();
    let (code, rest) = s.finish();
    assert_eq!(code, 3, "{rest}");
    assert!(rest.contains("verdict=fail(3)"), "{rest}");
    // kestrel gave the terminal back as it found it (echo, line editing).
    assert_ne!(before & libc::ICANON, 0);
    assert_eq!(lflags(master.as_raw_fd()), before);
}

#[test]
fn a_command_with_a_terminal_reads_what_is_typed() {
    if common::prerequisites("6.1").is_none() {
        return;
    }
    let mut s = Session::start(&["--", "sh", "-c", "echo ASK; read line; echo got:$line"]);
    s.expect("ASK\r\n");
    s.send(b"hello there\r");
    s.expect("got:hello there");
    let (code, rest) = s.finish();
    assert_eq!(code, 0, "{rest}");
}

#[test]
fn a_warm_start_gives_the_terminal_too() {
    if common::prerequisites("6.1").is_none() {
        return;
    }
    // The first run saves a snapshot (or finds one), the second restores
    // it: the job, with its terminal, arrives after the restore either way.
    for run in ["first", "second"] {
        let mut s = Session::start(&[
            "--warm",
            "--timings",
            "--",
            "sh",
            "-c",
            "echo ASK; read line; echo got:$line; tty",
        ]);
        s.expect("ASK\r\n");
        s.send(format!("{run} run\r").as_bytes());
        s.expect(&format!("got:{run} run"));
        s.expect("/dev/hvc0");
        let (code, rest) = s.finish();
        assert_eq!(code, 0, "{run}: {rest}");
        if run == "second" {
            assert!(rest.contains("snapshot-restored"), "not restored: {rest}");
        }
    }
}

#[test]
fn ctrl_a_x_ends_the_vm() {
    if common::prerequisites("6.1").is_none() {
        return;
    }
    let mut s = Session::start(&["--", "sh", "-c", "echo UP; sleep 1000"]);
    s.expect("UP\r\n");
    s.send(b"\x01x");
    let (code, rest) = s.finish();
    assert_eq!(code, 130, "{rest}");
    assert!(rest.contains("verdict=interrupted"), "{rest}");
}

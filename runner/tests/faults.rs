//! Faults survived, nothing lost (issue 13, item 4): kestrel killed mid-run,
//! a `--rw` directory whose host file system fills up, a host file changed
//! while the guest reads it, a guest that eats its memory or forks without
//! end. Each is a real boot of `debian:6.1` with the host's `/` as the
//! guest's root, exactly what a user runs.
//!
//! Prerequisites: as `host_root.rs` (hardware-speed KVM, `debian:6.1` in
//! the cache, the static guest init, the host's `sh`, `python3`), and root
//! for the full-file-system test (it mounts a 2 MiB tmpfs). Without
//! `KESTREL_REAL_KVM_TESTS=1` a missing prerequisite prints `skipped: …`;
//! with it, it fails.
//!
//! In the rig, from the workspace root:
//! `cargo test -p kestrel --release --test faults --no-run`, then
//! `cargo xtask rig -- env KESTREL_REAL_KVM_TESTS=1 target/release/deps/faults-<hash> --test-threads 1 --nocapture`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{require, scratch, Run, KESTREL};

/// `--timeout` of each boot.
const LIMIT: u64 = 120;
/// How long the test waits for the guest to reach a point it reports
/// through a file (a boot in the rig takes 3–10 s).
const REACH: Duration = Duration::from_secs(LIMIT);

fn prerequisites() -> bool {
    common::prerequisites("6.1").is_some()
}

/// `kestrel run --kernel debian:6.1 --console none --timeout <timeout>
/// [--rw <rw>] <extra…> -- sh -c <script>`, with `env` added.
fn sh(
    rw: Option<&Path>,
    timeout: u64,
    extra: &[&str],
    script: &str,
    env: &[(&str, &Path)],
) -> Command {
    let mut cmd = Command::new(KESTREL);
    cmd.args(["run", "--kernel", "debian:6.1", "--console", "none"])
        .args(["--timeout", &timeout.to_string()]);
    if let Some(dir) = rw {
        cmd.arg("--rw").arg(dir);
    }
    cmd.args(extra)
        .args(["--", "sh", "-c", script])
        .envs(env.iter().map(|(k, v)| (*k, *v)));
    cmd
}

/// `sh -c script` in a host-root guest with `--rw dir`, run to its end.
fn guest_sh(dir: &Path, extra: &[&str], script: &str) -> Run {
    Run::of(&mut sh(Some(dir), LIMIT, extra, script, &[]))
}

/// Waits until `path` exists (the guest wrote it through the share) or
/// `child` ends; panics after [`REACH`].
fn wait_for(path: &Path, child: &mut std::process::Child, log: &Path) {
    let started = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "kestrel ended ({status}) before the guest wrote {}:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < REACH,
            "the guest never wrote {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Entries under `dir` (recursively) that process `pid` made as
/// temporaries (`<name>.tmp-<pid>`, `.staging-<pid>-<name>`): what it
/// would leave if killed mid-write.
fn leftovers(dir: &Path, pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(&format!(".tmp-{pid}")) || name.starts_with(&format!(".staging-{pid}-")) {
            found.push(e.path());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(leftovers(&e.path(), pid));
        }
    }
    found
}

#[test]
fn killed_mid_run_the_next_run_works_and_nothing_is_left() {
    if !prerequisites() {
        return;
    }
    let dir = scratch("killed");
    let snapshots = dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    let before = std::fs::read_dir(&snapshots).unwrap().count();
    let log = dir.join("kestrel.log");
    let flag = dir.join("running");
    // Written aside and renamed: the name appears with its content.
    let script = format!(
        "echo up > {f}.new && mv {f}.new {f}; exec sleep 1000",
        f = flag.display()
    );
    // --warm: the killed run saved a snapshot on its way; the next run
    // must restore it (it was complete) or replace it.
    let mut child = sh(
        Some(&dir),
        LIMIT,
        &["--warm"],
        &script,
        &[("KESTREL_SNAPSHOT_DIR", &snapshots)],
    )
    .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    wait_for(&flag, &mut child, &log);
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "kestrel {pid} is still there after SIGKILL"
    );

    let next = Run::of(&mut sh(
        Some(&dir),
        LIMIT,
        &["--warm"],
        &format!("cat {}; exit 5", flag.display()),
        &[
            ("KESTREL_SNAPSHOT_DIR", &snapshots),
            ("KESTREL_LOG", Path::new("debug")),
        ],
    ));
    next.expect(5, "the run after a SIGKILL");
    assert_eq!(next.stdout.trim(), "up", "{}", next.stderr);
    assert!(
        next.stderr.contains("start: warm"),
        "the snapshot the killed run saved was not restored:\n{}",
        next.stderr
    );
    let snaps = std::fs::read_dir(&snapshots).unwrap().count();
    assert_eq!(snaps, before + 1, "one snapshot, no temporaries");
    let cache = kestrel::initrd::default_cache_dir();
    let mut left = leftovers(&snapshots, pid);
    left.extend(leftovers(&cache, pid));
    left.extend(leftovers(&dir, pid));
    assert!(left.is_empty(), "left behind: {left:?}");
    println!(
        "SIGKILL mid-run: the next run restored the killed run's snapshot in {:?}",
        next.wall
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs of `size` mounted on `dir` while it lives.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (root needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_rw_file_system_gives_the_guest_enospc_and_the_verdict_says_so() {
    if !prerequisites() {
        return;
    }
    let dir = scratch("full").join("fs");
    std::fs::create_dir_all(&dir).unwrap();
    let Some(_mount) = require(Mount::tmpfs(&dir, "2m")) else {
        return;
    };
    std::fs::write(dir.join("kept"), b"the user's file\n").unwrap();
    let script = "head -c 8388608 /dev/zero > big; echo rc=$?; \
                  echo more > small2 || echo small-failed; cat kept; exit 9";
    let run = guest_sh(&dir, &[], &format!("cd {} && {script}", dir.display()));
    run.expect(9, "writing 8 MiB into a 2 MiB tmpfs");
    assert!(run.stdout.contains("rc=1"), "{}", run.stdout);
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("the user's file"), "{}", run.stdout);
    let warning = format!(
        "{} is full on the host: the guest got ENOSPC",
        dir.display()
    );
    let at = run.stderr.find(&warning);
    let verdict = run.stderr.find("kestrel: verdict=fail(9)");
    assert!(
        at.is_some() && verdict.is_some() && at < verdict,
        "the warning before the verdict:\n{}",
        run.stderr
    );
    let big = std::fs::metadata(dir.join("big")).unwrap().len();
    assert!(big <= 2 << 20, "big is {big} bytes");
    assert_eq!(
        std::fs::read(dir.join("kept")).unwrap(),
        b"the user's file\n"
    );
    println!(
        "ENOSPC: the guest wrote {big} bytes of 8 MiB; {}",
        run.verdict()
    );
}

#[test]
fn the_guest_sees_host_changes_while_it_runs_without_stale_handles() {
    if !prerequisites() {
        return;
    }
    let dir = scratch("changed");
    let d = dir.display();
    std::fs::write(dir.join("inplace"), "one\n").unwrap();
    std::fs::write(dir.join("replaced"), "old\n").unwrap();
    std::fs::write(dir.join("deleted"), "here\n").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f"), "in sub\n").unwrap();
    // The guest reads everything (so it is cached), says so, waits for the
    // host's changes, then reads again until it sees them: the share's
    // names and attributes may be cached for 1 s, so 10 s is plenty.
    let script = format!(
        "cd {d} || exit 20
         exec 3< replaced
         cat inplace replaced deleted sub/f > /dev/null || exit 21
         touch ready
         i=0; while [ ! -e changed ]; do i=$((i+1)); [ $i -lt 1200 ] || exit 22; sleep 0.1; done
         see() {{ i=0; while ! \"$@\"; do i=$((i+1)); [ $i -lt 100 ] || return 1; sleep 0.1; done; }}
         see grep -qx 'one, then a longer two' inplace || {{ echo \"inplace: $(cat inplace)\"; exit 23; }}
         see grep -qx new replaced || {{ echo \"replaced: $(cat replaced)\"; exit 24; }}
         see test ! -e deleted || exit 25
         see test -e sub2/f || exit 26
         cat sub2/f; read old <&3; echo \"still open: $old\"
         cat deleted 2>&1; ls sub 2>&1; exit 7"
    );
    let log = dir.join("kestrel.log");
    let mut child = sh(Some(&dir), LIMIT, &[], &script, &[])
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&dir.join("ready"), &mut child, &log);
    std::fs::write(dir.join("inplace"), "one, then a longer two\n").unwrap();
    std::fs::write(dir.join("replaced.new"), "new\n").unwrap();
    std::fs::rename(dir.join("replaced.new"), dir.join("replaced")).unwrap();
    std::fs::remove_file(dir.join("deleted")).unwrap();
    std::fs::rename(dir.join("sub"), dir.join("sub2")).unwrap();
    std::fs::write(dir.join("changed"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(7),
        "--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("in sub"), "{stdout}");
    // The handle opened before the rename still reads what it opened.
    assert!(stdout.contains("still open: old"), "{stdout}");
    assert!(
        stdout.contains("No such file or directory"),
        "deleted/sub are gone: {stdout}"
    );
    assert!(
        !stdout.contains("Stale file handle") && !stdout.contains("Input/output error"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_that_eats_its_memory_is_oom_killed_and_gets_a_verdict() {
    if !prerequisites() {
        return;
    }
    let dir = scratch("oom");
    let run = guest_sh(
        &dir,
        &["--memory", "256"],
        "python3 -c 'a = []\nwhile True: a.append(bytearray(1 << 20))'; echo rc=$?; exit 3",
    );
    // The kernel's OOM killer ends python (SIGKILL, 128 + 9); the init and
    // the shell survive and the run ends with the shell's status.
    run.expect(3, "python3 filling 256 MiB");
    assert!(run.stdout.contains("rc=137"), "{}", run.stdout);
    println!("memory eater: {} in {:?}", run.verdict(), run.wall);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sh -c script` in a host-root guest with `--timeout limit`.
fn bomb(script: &str, limit: u64) -> Run {
    Run::of(&mut sh(None, limit, &[], script, &[]))
}

#[test]
fn a_fork_bomb_ends_with_a_verdict_in_bounded_time() {
    if !prerequisites() {
        return;
    }
    let limit = 30;
    // The command waits on a process tree that doubles without end: it
    // never finishes, the guest is saturated, kestrel's own clock ends it.
    let held = bomb("f() { f | f; }; f", limit);
    held.expect(124, "a fork bomb the command waits on");
    assert!(
        held.verdict().contains("verdict=timeout"),
        "{}",
        held.stderr
    );
    assert!(
        held.wall < Duration::from_secs(limit + 30),
        "a fork bomb held kestrel {:?} past its --timeout {limit}",
        held.wall
    );
    // The command leaves the bomb running in the background and exits:
    // its status is the verdict, whatever still forks.
    let left = bomb("f() { f | f & }; f; exit 4", limit);
    left.expect(4, "a fork bomb left behind");
    println!(
        "fork bomb: waited on: {} in {:?}; left behind: {} in {:?}",
        held.verdict(),
        held.wall,
        left.verdict(),
        left.wall
    );
}

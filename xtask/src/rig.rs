//! `cargo xtask rig -- CMD…`: real KVM one level down.
//!
//! This machine's `/dev/kvm` cannot boot Linux (design.md §1). The rig boots
//! an "L1" Linux under QEMU TCG with an emulated AMD SVM CPU, loads
//! `kvm-amd` there, shares the host's `/` into it over virtio-fs, and runs
//! CMD inside L1 — where `/dev/kvm` is the real Linux KVM.
//!
//! Invariants:
//! - Inside L1, CMD sees the host's `/` read-only at the same paths; only
//!   the workspace, the target dir, the kernel cache and any `--writable`
//!   directory are writable; `/tmp`, `/run`, `/var/tmp` are fresh tmpfs
//!   (a `--writable` directory under them is bound on top). CMD runs as root in the directory
//!   the rig was started from, with the host's environment (filtered) plus
//!   `KESTREL_RIG=1`.
//! - CMD's stdout/stderr reach ours as they arrive (virtio-console ports);
//!   its exit status comes back on its own channel (COM2), never scraped.
//! - A frozen L1 (no output for `--silence` seconds) is killed and reported
//!   as a rig failure, not as CMD's verdict.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kestrel_initramfs::job::{Dest, Root, Spec, Status};

use crate::guest::{self, BaseSpec};
use crate::qemu::{Accel, End, Guest, Machine, Sink, VhostUserFs};
use crate::{paths, tools};

/// The kernel L1 runs (design.md §1: measured with Debian's 6.1 cloud
/// kernel). `KESTREL_RIG_L1_KERNEL` names another for an experiment
/// (RELIABILITY.md, session 19: Debian 6.12 in L1 panicked the same way).
pub const L1_KERNEL: &str = "debian:6.1";
/// The virtio-fs tag of the host's root inside L1.
const ROOT_TAG: &str = "kestrel-root";
/// What L1 needs: virtio-fs for the host tree, virtio-console for CMD's
/// output, KVM for the tests.
const L1_MODULES: &[&str] = &["virtio_pci", "virtiofs", "virtio_console", "kvm_amd"];
/// An L1 whose QEMU stays idle this long while its command runs has
/// stalled (runner/NOTES.md, session 20: idle and silent, nothing in its
/// log) and is ended as a rig failure, retried like one — instead of
/// waiting out the silence limit. Nothing the rig runs idles this long:
/// its commands boot and run guests.
pub const L1_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// L1's vCPUs unless `--cpus` says otherwise (see [`RigArgs::cpus`]).
pub const L1_CPUS: u32 = 1;

/// The L1 CPU: EPYC with SVM and nested paging (`-cpu max` is 1.5–2× slower).
const L1_CPU: &str = "EPYC,+svm,+npt";
/// Exit code for a rig failure (L1 died, froze, or could not run CMD).
pub const RIG_FAILURE: u8 = 125;

/// How a rig run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RigExit {
    /// CMD ran and ended with this exit code (128+n for signal n).
    Command(i32),
    /// The rig itself failed: L1 died, froze, or its init could not run CMD.
    /// Not a verdict on CMD.
    RigFailure(Failure),
}

/// How the rig itself failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// L1's init could not run CMD.
    InitError,
    /// L1 ran past `--timeout`.
    Timeout,
    /// L1 printed nothing for `--silence` seconds.
    Silent,
    /// L1's kernel reported a stuck CPU.
    Lockup,
    /// L1's QEMU sat idle for `--idle` seconds while CMD ran (a stalled L1).
    Idle,
    /// L1's QEMU ended without CMD's status (L1 panicked or QEMU died).
    Ended,
}

impl RigExit {
    /// The exit code for our own process.
    pub fn code(self) -> u8 {
        match self {
            RigExit::Command(code) => u8::try_from(code).unwrap_or(RIG_FAILURE),
            RigExit::RigFailure(_) => RIG_FAILURE,
        }
    }
}

/// `cargo xtask rig` arguments.
#[derive(Debug, clap::Args)]
pub struct RigArgs {
    /// vCPUs of L1 (QEMU runs them on separate host threads). One by
    /// default: QEMU's emulated SVM loses L1 itself with two (a
    /// reschedule IPI taken right after `vmrun`, then an exception storm:
    /// three L1 panics in seven minutes of warm matrices in session 20,
    /// and L2 triple faults), never seen with one, which ran the 6.1
    /// suite nearly as fast (43 s in a fresh L1, 30–32 s after) —
    /// RELIABILITY.md, "Boots that fail in the rig".
    #[arg(long, default_value_t = L1_CPUS)]
    pub cpus: u32,
    /// Memory of L1 in MiB.
    #[arg(long, default_value_t = 4096)]
    pub memory: u32,
    /// Wall-clock limit for the whole L1 run, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Kill L1 after this many seconds without any output.
    #[arg(long, default_value_t = 600)]
    pub silence: u64,
    /// End L1 as stalled after this many seconds of its QEMU sitting idle
    /// while the command runs (0: never; for a command that waits).
    #[arg(long, default_value_t = L1_IDLE_LIMIT.as_secs())]
    pub idle: u64,
    /// Show L1's kernel log on stderr while it runs.
    #[arg(long)]
    pub console: bool,
    /// Also writable in L1, at the same path (repeatable; may be under
    /// `/tmp`, which L1 otherwise replaces with its own tmpfs).
    #[arg(long, value_name = "DIR")]
    pub writable: Vec<PathBuf>,
    /// The command to run inside L1.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

impl RigArgs {
    /// `cargo xtask rig`'s defaults for CMD, with `silence` seconds of
    /// allowed silence (tests that print nothing for minutes need more).
    pub fn for_cmd(cmd: Vec<String>, silence: u64) -> RigArgs {
        RigArgs {
            cpus: L1_CPUS,
            memory: 4096,
            timeout: 3600,
            silence,
            idle: L1_IDLE_LIMIT.as_secs(),
            console: false,
            writable: Vec::new(),
            cmd,
        }
    }
}

/// Runs CMD in L1 up to `attempts` times while the rig itself fails (L1
/// died, froze or soft-locked: ARCHITECTURE.md, "The nested rig") and
/// returns CMD's exit code; a rig failure is never taken as CMD's verdict.
/// `interrupted` stops the retries (the user pressed Ctrl-C).
pub fn run_retrying(args: &RigArgs, attempts: u32, interrupted: &dyn Fn() -> bool) -> Result<i32> {
    for attempt in 1..=attempts {
        match run(args)? {
            RigExit::Command(code) => return Ok(code),
            RigExit::RigFailure(_) if attempt < attempts && !interrupted() => tools::step(format!(
                "rig: L1 failed (not the command); attempt {} of {attempts}",
                attempt + 1
            )),
            RigExit::RigFailure(_) => break,
        }
    }
    bail!("the rig failed (L1, not the command under test): see the L1 kernel log above")
}

/// Runs CMD in L1.
pub fn run(args: &RigArgs) -> Result<RigExit> {
    if args.cpus == 0 || args.memory < 512 {
        bail!(
            "the rig needs at least 1 vCPU and 512 MiB (got --cpus {} --memory {})",
            args.cpus,
            args.memory
        );
    }
    let qemu = tools::ensure_qemu()?;
    let fs_server_bin = guest::build_release_bin("virtiofs-lite", "virtiofs-lite")?;
    // An A/B lever for the rig's own kernel (issue 13: the L1 panics).
    let l1_kernel = std::env::var("KESTREL_RIG_L1_KERNEL").unwrap_or_else(|_| L1_KERNEL.into());
    let kernel = guest::kernel(&l1_kernel)?;
    let base = guest::base_initramfs(&BaseSpec {
        name: "rig-l1",
        kernel: &kernel,
        modules: L1_MODULES,
        executables: &[],
    })?;

    let cache_dir = kestrel_kernels::Cache::from_env()?.root().to_path_buf();
    let mut writable = vec![paths::workspace(), paths::target_dir(), cache_dir];
    writable.extend(args.writable.iter().cloned());
    let writable = writable_paths(&writable)?;
    let cwd = std::env::current_dir().context("the current directory is not readable")?;
    let spec = Spec {
        argv: args.cmd.clone(),
        env: rig_env(),
        cwd: Some(cwd.to_string_lossy().into_owned()),
        root: Root::VirtioFs(ROOT_TAG.into()),
        writable,
        tmpfs: vec!["/tmp".into(), "/run".into(), "/var/tmp".into()],
        stdout: Dest::VirtioPort("kestrel.stdout".into()),
        stderr: Dest::VirtioPort("kestrel.stderr".into()),
        status: Some(Dest::Path("/dev/ttyS1".into())),
        ..Spec::default()
    };
    let run_dir = tempfile::Builder::new()
        .prefix("kestrel-rig-")
        .tempdir()
        .context("could not create a temporary directory")?;
    let initrd = run_dir.path().join("initrd.cpio");
    guest::initrd_with_job(&base, &spec, &initrd)?;

    let fs_socket = run_dir.path().join("fs.sock");
    let mut fs_server = start_fs_server(
        &fs_server_bin,
        &fs_socket,
        &run_dir.path().join("virtiofs-lite.log"),
    )?;
    let l1 = Guest {
        accel: Accel::Tcg,
        machine: Machine::Pc,
        cpu_model: L1_CPU.into(),
        cpus: args.cpus,
        memory_mib: args.memory,
        kernel: kernel.image.clone(),
        initrd,
        // `nokaslr`: the addresses in a stuck L1's inspection are then the
        // same in every L1 (Debian ships no real System.map; an L1's
        // /proc/kallsyms names them).
        append: "console=ttyS0 quiet loglevel=4 panic=-1 nokaslr".into(),
        shared_memory: true,
        fs: Some(VhostUserFs {
            socket: fs_socket,
            tag: ROOT_TAG.into(),
        }),
        ports: Some((Sink::Stdout, Sink::Stderr)),
        echo_console: args.console,
        kill_on_lockup: true,
        inspect_when_stuck: true,
        snapshot: None,
        idle: (args.idle > 0).then(|| Duration::from_secs(args.idle)),
        timeout: Duration::from_secs(args.timeout),
        silence: Duration::from_secs(args.silence),
    };
    tools::step(format!(
        "rig: booting L1 ({}, {} vCPUs, {} MiB) to run `{}`",
        kernel.release,
        args.cpus,
        args.memory,
        args.cmd.join(" ")
    ));
    let outcome = l1.run(&qemu);
    let _ = fs_server.kill();
    let _ = fs_server.wait();
    let outcome = outcome?;

    let exit = match &outcome.status {
        Some(Status::Exit(code)) => RigExit::Command(i32::from(*code)),
        Some(Status::Signal(sig)) => RigExit::Command(128 + i32::from(*sig)),
        Some(Status::InitError(what)) => {
            eprintln!("rig failure: L1's init could not run the command: {what}");
            RigExit::RigFailure(Failure::InitError)
        }
        None => {
            let (failure, why) = match outcome.end {
                End::Timeout => (
                    Failure::Timeout,
                    format!("L1 did not finish within {} s (--timeout)", args.timeout),
                ),
                End::Silent => (
                    Failure::Silent,
                    format!(
                        "L1 printed nothing for {} s and was killed (--silence)",
                        args.silence
                    ),
                ),
                End::Lockup(secs) => (
                    Failure::Lockup,
                    format!(
                        "L1's kernel reported a CPU stuck for {secs} s (the emulated SVM hung) and was killed"
                    ),
                ),
                End::Idle(for_) => (
                    Failure::Idle,
                    format!(
                        "L1 sat idle for {} s while its command ran (a stalled L1) and was killed",
                        for_.as_secs()
                    ),
                ),
                End::Exited(_) => (Failure::Ended, outcome.describe()),
            };
            let mut log = outcome.console.clone();
            if let Some(inspection) = &outcome.inspection {
                log.extend_from_slice(format!("\n{INSPECTION_HEADER}\n").as_bytes());
                log.extend_from_slice(inspection.as_bytes());
            }
            let whole = match save_l1_log(&paths::kestrel_dir().join("rig"), &log) {
                Ok(path) => format!(" (all of it: {})", path.display()),
                Err(e) => format!(" (could not keep all of it: {e:#})"),
            };
            eprintln!("rig failure: {why}; the last lines of L1's kernel log{whole}:");
            eprintln!("{}", outcome.console_tail(30));
            if let Some(inspection) = &outcome.inspection {
                eprintln!("L1's CPUs when it was stopped (QEMU's monitor; all of it in that log):");
                eprintln!("{}", inspection_summary(inspection));
            }
            let qemu_errors: Vec<&str> = outcome
                .qemu_log
                .lines()
                .filter(|l| !l.contains("TCG doesn't support requested feature"))
                .collect();
            if !qemu_errors.is_empty() {
                eprintln!("QEMU said:\n{}", qemu_errors.join("\n"));
            }
            RigExit::RigFailure(failure)
        }
    };
    tools::step(format!(
        "rig: L1 ended after {:.1} s: {exit:?}",
        outcome.wall.as_secs_f64()
    ));
    Ok(exit)
}

/// The lines of a stuck L1's inspection that say what its CPUs were
/// doing: each CPU's instruction pointer, flags and halt state (`info
/// registers`), its local APIC's pending and in-service interrupts and its
/// timer (`info lapic`); an inspection that failed, as it is.
fn inspection_summary(inspection: &str) -> String {
    let wanted = |line: &str| {
        line.starts_with("CPU#")
            || line.starts_with("RIP=")
            || line.starts_with("dumping local APIC")
            || ["LVTT", "ISR", "IRR"]
                .iter()
                .any(|k| line.split_whitespace().next() == Some(k))
    };
    let lines: Vec<&str> = inspection.lines().filter(|l| wanted(l)).collect();
    if lines.is_empty() {
        inspection.lines().take(5).collect::<Vec<_>>().join("\n")
    } else {
        lines.join("\n")
    }
}

/// The line in a kept L1 log after which QEMU's monitor's view of the
/// stuck L1 follows.
pub const INSPECTION_HEADER: &str = "=== QEMU's monitor on the stuck L1 ===";

/// How many L1 kernel logs of failed rigs are kept.
const L1_LOGS_KEPT: usize = 20;

/// Keeps L1's whole kernel log of a failed rig in `dir` (the tail printed
/// on the terminal loses the first fault of a long oops), as
/// `l1-<unix seconds>-<pid>.log`, and deletes all but the newest
/// [`L1_LOGS_KEPT`].
fn save_l1_log(dir: &Path, console: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!("l1-{secs:012}-{}.log", std::process::id()));
    std::fs::write(&path, console).with_context(|| format!("cannot write {}", path.display()))?;
    keep_newest(dir, L1_LOGS_KEPT);
    Ok(path)
}

/// The newest kept L1 log of a failed rig, if any.
pub fn newest_l1_log() -> Option<PathBuf> {
    l1_logs(&paths::kestrel_dir().join("rig")).pop()
}

/// The `l1-*.log` files in `dir`, oldest first (their names sort by time).
fn l1_logs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("l1-") && n.ends_with(".log"))
        })
        .collect();
    logs.sort();
    logs
}

/// Deletes all but the `n` last (by name) `l1-*.log` files in `dir`.
fn keep_newest(dir: &Path, n: usize) {
    let logs = l1_logs(dir);
    let extra = logs.len().saturating_sub(n);
    for old in &logs[..extra] {
        let _ = std::fs::remove_file(old);
    }
}

/// The host paths CMD may write, created if missing, nested ones dropped.
fn writable_paths(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut canon = Vec::new();
    for p in paths {
        std::fs::create_dir_all(p).with_context(|| format!("could not create {}", p.display()))?;
        canon.push(
            p.canonicalize()
                .with_context(|| format!("could not resolve {}", p.display()))?,
        );
    }
    canon.sort();
    canon.dedup();
    let outer: Vec<&PathBuf> = canon
        .iter()
        .filter(|p| !canon.iter().any(|q| q != *p && p.starts_with(q)))
        .collect();
    Ok(outer
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

/// The host environment CMD gets: what tools and tests read, not the rest.
fn rig_env() -> Vec<String> {
    const KEEP: &[&str] = &[
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM", "TZ", "CI",
    ];
    const KEEP_PREFIX: &[&str] = &["LC_", "RUST_", "CARGO", "KESTREL_"];
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| KEEP.contains(&k.as_str()) || KEEP_PREFIX.iter().any(|p| k.starts_with(p)))
        .filter(|(k, _)| k != "KESTREL_RIG")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push("KESTREL_RIG=1".into());
    // VM snapshots (`kestrel run --warm`) in L1's own tmpfs: read at every
    // restore, they are much faster there than on the virtio-fs share, and
    // L1 is a new machine each time (its TSC may differ from the last one's).
    if !env.iter().any(|e| e.starts_with("KESTREL_SNAPSHOT_DIR=")) {
        env.push("KESTREL_SNAPSHOT_DIR=/tmp/kestrel-snapshots".into());
    }
    env.sort();
    env
}

/// Starts our virtio-fs server sharing the host's `/` (writable: L1's
/// init mounts it read-only and binds only the writable paths).
fn start_fs_server(server: &Path, socket: &Path, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log).context("could not create the virtio-fs server log")?;
    let mut cmd = Command::new(server);
    cmd.args(["--shared-dir", "/", "--writable", "--tag", ROOT_TAG])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    tools::spawn_on_socket(cmd, socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_rigs_keep_l1_logs_and_only_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, "not a log").unwrap();
        for i in 0..(L1_LOGS_KEPT + 3) {
            std::fs::write(dir.path().join(format!("l1-{i:012}-1.log")), "old").unwrap();
        }
        let path = save_l1_log(dir.path(), b"[ 1.0] first fault\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[ 1.0] first fault\n");
        let logs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("l1-"))
            .collect();
        assert_eq!(logs.len(), L1_LOGS_KEPT);
        // The oldest went, the new one stayed, other files are untouched.
        assert!(!dir.path().join("l1-000000000000-1.log").exists());
        assert!(path.exists() && other.exists());
    }

    #[test]
    fn nested_writable_paths_collapse_to_the_outer_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("ws");
        let b = a.join("target");
        let c = dir.path().join("cache");
        let got = writable_paths(&[a.clone(), b, c.clone(), a.clone()]).unwrap();
        let want: Vec<String> = [a, c]
            .iter()
            .map(|p| p.canonicalize().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn an_inspection_is_summed_up_by_its_cpus_and_apics() {
        let inspection = "--- info registers -a\n\
            CPU#0\n\
            RAX=0000000000000000 RBX=ffffffff82a13940 RCX=0000000000000000 RDX=0000000000000000\n\
            RIP=ffffffff81e0b9a4 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
            ES =0000 0000000000000000 ffffffff 00c00000\n\
            --- info lapic\n\
            dumping local APIC state for CPU 0\n\
            \n\
            LVTT\t 0x000400ec active-hi edge                 tsc-deadline Fixed  (vec 236)\n\
            ISR\t (none)\n\
            IRR\t 236\n\
            --- info pic\n";
        assert_eq!(
            inspection_summary(inspection),
            "CPU#0\n\
             RIP=ffffffff81e0b9a4 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
             dumping local APIC state for CPU 0\n\
             LVTT\t 0x000400ec active-hi edge                 tsc-deadline Fixed  (vec 236)\n\
             ISR\t (none)\n\
             IRR\t 236"
        );
        let failed = "QMP: QEMU closed the monitor";
        assert_eq!(inspection_summary(failed), failed);
    }

    #[test]
    fn rig_env_marks_the_rig_and_drops_unrelated_variables() {
        let env = rig_env();
        assert!(env.contains(&"KESTREL_RIG=1".to_string()));
        assert!(env
            .iter()
            .all(|e| !e.starts_with("SSH_") && !e.starts_with("OLDPWD=")));
    }
}

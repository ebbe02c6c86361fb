//! `cargo xtask stress`: many boots of the same guest under kestrel and
//! under QEMU-KVM, alternating, with parallel load, and their failure
//! rates with a 95% interval — so a flaky boot can be pinned on our VMM or
//! on the place it runs (the nested rig) with numbers, not a guess.
//!
//! Both VMMs boot the same kernel and initramfs (our init running
//! `/bin/true`, or with `--execs N` a shell starting `/bin/true` N times,
//! status on COM2) with the same vCPUs and memory. Each round
//! starts `--jobs` boots of one VMM at once (two guests side by side is
//! what `cargo xtask test` does in one L1), then the other VMM's round.
//! A failed boot's stderr (kestrel: the verdict and, for a triple fault,
//! the vCPU report) or console tail (QEMU) is kept under
//! `target/kestrel/stress/`.
//!
//! With `--warm` every counted run is a restore: one boot of each VMM
//! first saves the VM where the init waits for its job (kestrel: `kestrel
//! run --warm`'s snapshot; QEMU: its own migration stream, written over
//! QMP), and each run then starts from that file with the job sent on
//! COM2 — so restored guests of both VMMs are compared, not only boots.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kestrel_initramfs::job::{Dest, JobHeader, Root, Spec, Status, SEED_BYTES};

use crate::guest;
use crate::qemu::{Accel, Guest, Machine, Snapshot, VhostUserFs};
use crate::tools::{self, Qemu};
use crate::{bench, bench_fs, paths};

/// `cargo xtask stress` arguments.
#[derive(Debug, clap::Args)]
pub struct StressArgs {
    /// Kernel to boot.
    #[arg(long, default_value = "debian:6.12")]
    pub kernel: String,
    /// vCPUs per guest.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Boots per VMM.
    #[arg(long, default_value_t = 20)]
    pub boots: usize,
    /// Guests booting at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// The QEMU machine compared with: pc or microvm.
    #[arg(long, default_value = "pc")]
    pub qemu_machine: String,
    /// Extra kernel arguments for kestrel's guests only (an A/B lever such
    /// as `pci=off`, which QEMU pc's DSDT cannot boot with).
    #[arg(long, default_value = "")]
    pub kestrel_append: String,
    /// The guest's job starts `/bin/true` this many times from a shell
    /// (each start runs the dynamic loader's CPUIDs in user mode) instead
    /// of once as the init's job.
    #[arg(long, default_value_t = 0)]
    pub execs: u32,
    /// The guest's root: `initramfs` (the programs packed in it) or `host`
    /// (this host's `/` over virtio-fs: kestrel's in-process device, and
    /// QEMU-KVM with shared memory and our `virtiofs-lite` as its
    /// vhost-user backend), so programs and their libraries are read
    /// through virtio-fs.
    #[arg(long, default_value = "initramfs")]
    pub root: String,
    /// With `--root host`, QEMU's vhost-user-fs server: `virtiofs-lite`
    /// (ours, with QEMU ≥ 10 as everywhere in the rig) or `virtiofsd`
    /// (Debian's, none of our code; it runs only with the system's QEMU
    /// 7.2, so that QEMU is used).
    #[arg(long, default_value = "virtiofs-lite")]
    pub fs_server: String,
    /// Compare restored guests: one saving boot of each VMM first (not
    /// counted), then every run restores it and gets its job (kestrel
    /// `--warm`: header and spec in its job window, one byte over COM2; QEMU
    /// `-incoming` from its own migration file, the job over COM2).
    /// Needs `--root initramfs` and `--qemu-machine pc`.
    #[arg(long)]
    pub warm: bool,
    /// Run here even if this host's KVM looks software-based (used inside the rig).
    #[arg(long)]
    pub here: bool,
}

const MEMORY_MIB: u32 = 512;
/// A boot that takes longer than this has hung.
const BOOT_LIMIT: Duration = Duration::from_secs(90);

pub fn run(args: &StressArgs) -> Result<()> {
    if args.boots == 0 || args.jobs == 0 || args.cpus == 0 {
        bail!("--boots, --jobs and --cpus must be at least 1");
    }
    let machine = match args.qemu_machine.as_str() {
        "pc" => Machine::Pc,
        "microvm" => Machine::Microvm,
        other => bail!("--qemu-machine {other}: use pc or microvm"),
    };
    let host_root = match args.root.as_str() {
        "initramfs" => false,
        "host" => true,
        other => bail!("--root {other}: use initramfs or host"),
    };
    if args.warm && host_root {
        bail!("--warm restores a guest whose programs are in its initramfs: drop --root host");
    }
    if args.warm && machine != Machine::Pc {
        bail!("--warm compares with QEMU's pc machine only (its migration of microvm is untried here): drop --qemu-machine microvm");
    }
    let kestrel = guest::build_kestrel()?;
    let kernel = guest::kernel(&args.kernel)?;
    if !args.here && !guest::hardware_kvm(&kestrel) {
        let mut rig_args: Vec<String> = vec!["stress".into(), "--here".into()];
        if args.warm {
            rig_args.push("--warm".into());
        }
        rig_args.extend([
            "--kernel".into(),
            args.kernel.clone(),
            "--cpus".into(),
            args.cpus.to_string(),
            "--boots".into(),
            args.boots.to_string(),
            "--jobs".into(),
            args.jobs.to_string(),
            "--qemu-machine".into(),
            args.qemu_machine.clone(),
            format!("--kestrel-append={}", args.kestrel_append),
            "--execs".into(),
            args.execs.to_string(),
            "--root".into(),
            args.root.clone(),
            "--fs-server".into(),
            args.fs_server.clone(),
        ]);
        return bench::in_rig(rig_args);
    }
    let virtiofsd = match args.fs_server.as_str() {
        "virtiofs-lite" => false,
        "virtiofsd" => true,
        other => bail!("--fs-server {other}: use virtiofs-lite or virtiofsd"),
    };
    let qemu = if host_root && virtiofsd {
        tools::system_qemu()?
    } else {
        tools::ensure_qemu()?
    };
    let dir = paths::kestrel_dir().join("stress");
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("initrd.cpio");
    let lite;
    let mut warm_base = None;
    let host_fs = if host_root {
        let base = guest::base_initramfs(&guest::BaseSpec {
            name: "stress-host-root",
            kernel: &kernel,
            modules: &["virtio_pci", "virtiofs"],
            executables: &[],
        })?;
        let mut job = execs_job(args.execs.max(1));
        job.root = Root::VirtioFs(bench_fs::TAG.into());
        job.env = vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()];
        job.tmpfs = vec!["/tmp".into(), "/run".into(), "/var/tmp".into()];
        guest::initrd_with_job(&base, &job, &initrd)?;
        Some(if virtiofsd {
            bench_fs::Server::Virtiofsd
        } else {
            lite = guest::build_release_bin("virtiofs-lite", "virtiofs-lite")?;
            bench_fs::Server::Lite(&lite)
        })
    } else if args.warm {
        // The base archive alone: the init waits for its job on COM2.
        warm_base = Some(guest::base_initramfs(&guest::BaseSpec {
            name: "stress-execs",
            kernel: &kernel,
            modules: &[],
            executables: &[PathBuf::from("/bin/true"), PathBuf::from("/bin/sh")],
        })?);
        None
    } else if args.execs == 0 {
        bench::write_true_initrd(&bench::true_base(&kernel)?, &initrd)?;
        None
    } else {
        let base = guest::base_initramfs(&guest::BaseSpec {
            name: "stress-execs",
            kernel: &kernel,
            modules: &[],
            executables: &[PathBuf::from("/bin/true"), PathBuf::from("/bin/sh")],
        })?;
        guest::initrd_with_job(&base, &execs_job(args.execs), &initrd)?;
        None
    };
    tools::step(format!(
        "stress: {} boots each of kestrel and QEMU-KVM ({}, {}), {} vCPUs, {} at a time, {}{}{}{}{}",
        args.boots,
        args.qemu_machine,
        qemu.version,
        args.cpus,
        args.jobs,
        kernel.release,
        if args.kestrel_append.trim().is_empty() {
            String::new()
        } else {
            format!(
                ", kestrel's kernel arguments + `{}`",
                args.kestrel_append.trim()
            )
        },
        if args.execs == 0 {
            String::new()
        } else {
            format!(", {} starts of /bin/true per boot", args.execs)
        },
        if args.warm {
            ", every run restored from a snapshot (its job handed over after the restore)"
        } else {
            ""
        },
        match &host_fs {
            None => "",
            Some(bench_fs::Server::Lite(_)) =>
                ", the host's / over virtio-fs (QEMU: virtiofs-lite)",
            Some(bench_fs::Server::Virtiofsd) => {
                ", the host's / over virtio-fs (QEMU: Debian's virtiofsd)"
            }
        }
    ));
    // vhost-user sockets: not on the rig's virtio-fs mounts, where
    // binding a socket fails.
    let sockets = tempfile::Builder::new()
        .prefix("kestrel-stress-")
        .tempdir()
        .context("could not create a temporary directory")?;
    let job = execs_job(args.execs.max(1));
    let warm = match &warm_base {
        Some(base) => {
            let job_spec = dir.join("warm-job.spec");
            std::fs::write(&job_spec, job.render())
                .with_context(|| format!("could not write {}", job_spec.display()))?;
            Some(Warm {
                base,
                job_spec,
                job: job.render(),
                qemu_file: sockets.path().join("qemu-vm.mig"),
            })
        }
        None => None,
    };
    let setup = Setup {
        kestrel: &kestrel,
        qemu: &qemu,
        kernel: &kernel.image,
        initrd: &initrd,
        cpus: args.cpus,
        append: args.kestrel_append.trim(),
        dir: &dir,
        host_fs: host_fs.as_ref(),
        execs: args.execs.max(1),
        kernel_spec: &args.kernel,
        sockets: sockets.path(),
        warm: warm.as_ref(),
    };
    if warm.is_some() {
        prime(&setup, machine)?;
    }
    let vmms = [Vmm::Kestrel, Vmm::Qemu(machine)];
    let mut tally = [Tally::default(), Tally::default()];
    let started = Instant::now();
    while tally.iter().any(|t| t.boots < args.boots) {
        for (i, vmm) in vmms.iter().enumerate() {
            let n = args.jobs.min(args.boots - tally[i].boots);
            if n == 0 {
                continue;
            }
            let results: Vec<Result<(), String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..n).map(|_| s.spawn(|| vmm.boot(&setup))).collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("the boot thread panicked".into()))
                    })
                    .collect()
            });
            for result in results {
                tally[i].boots += 1;
                if let Err(why) = result {
                    tally[i].failures += 1;
                    println!("{} boot {}: FAILED: {why}", vmm.name(), tally[i].boots);
                }
            }
        }
        println!(
            "after {:.0} s: kestrel {}/{} failed, qemu {}/{} failed",
            started.elapsed().as_secs_f64(),
            tally[0].failures,
            tally[0].boots,
            tally[1].failures,
            tally[1].boots
        );
    }
    println!();
    for (vmm, t) in vmms.iter().zip(&tally) {
        let (lo, hi) = wilson(t.failures, t.boots);
        println!(
            "{:<13} {:>3} of {:>3} boots failed ({:.1}%, 95% interval {:.1}–{:.1}%)",
            vmm.name(),
            t.failures,
            t.boots,
            100.0 * t.failures as f64 / t.boots as f64,
            100.0 * lo,
            100.0 * hi
        );
    }
    println!("failed boots' logs: {}", dir.display());
    Ok(())
}

#[derive(Default)]
struct Tally {
    boots: usize,
    failures: usize,
}

/// The `--execs N` job: a shell starting `/bin/true` N times.
fn execs_job(n: u32) -> Spec {
    Spec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("i=0; while [ $i -lt {n} ]; do /bin/true || exit 1; i=$((i+1)); done"),
        ],
        status: Some(Dest::Path("/dev/ttyS1".into())),
        ..Spec::default()
    }
}

/// What every boot of a stress run shares.
#[derive(Clone, Copy)]
struct Setup<'a> {
    kestrel: &'a Path,
    qemu: &'a Qemu,
    kernel: &'a Path,
    initrd: &'a Path,
    cpus: u32,
    /// Extra kernel arguments for kestrel's guests.
    append: &'a str,
    dir: &'a Path,
    /// With `--root host`: the server of QEMU's guests (kestrel's guests
    /// use the host's root over kestrel's own device).
    host_fs: Option<&'a bench_fs::Server<'a>>,
    /// `/bin/true` starts per boot with `--root host`.
    execs: u32,
    /// `--kernel` as given (kestrel finds its modules, virtio-fs among
    /// them, from the spec).
    kernel_spec: &'a str,
    /// Where QEMU's vhost-user sockets go.
    sockets: &'a Path,
    /// With `--warm`: what the runs restore.
    warm: Option<&'a Warm<'a>>,
}

/// What `--warm` runs restore and send.
struct Warm<'a> {
    /// The base archive (no job: the init waits on COM2).
    base: &'a Path,
    /// The job, as a file for `kestrel run --job-spec`.
    job_spec: PathBuf,
    /// The job spec's text, for QEMU's guests.
    job: String,
    /// QEMU's saved VM.
    qemu_file: PathBuf,
}

/// How many tries each VMM gets to save its snapshot.
const SAVE_TRIES: usize = 3;

/// The one saving boot of each VMM (`--warm`), not counted: a failure is
/// printed and tried again, up to [`SAVE_TRIES`] times.
fn prime(setup: &Setup, machine: Machine) -> Result<()> {
    for vmm in [Vmm::Kestrel, Vmm::Qemu(machine)] {
        let mut tries = 0;
        loop {
            tries += 1;
            match vmm.boot_as(setup, Role::Save) {
                Ok(()) => break,
                Err(why) if tries < SAVE_TRIES => {
                    println!("{} saving boot {tries}: FAILED: {why}", vmm.name());
                }
                Err(why) => bail!(
                    "{}'s saving boot failed {SAVE_TRIES} times, the last: {why}",
                    vmm.name()
                ),
            }
        }
        println!("{}: snapshot saved ({tries} boot(s))", vmm.name());
    }
    Ok(())
}

/// What a run of a `--warm` stress is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Boot and save the snapshot (the job still runs, for kestrel).
    Save,
    /// Start from the snapshot (or, without `--warm`, a plain boot).
    Run,
}

/// The job header and spec QEMU's restored guest gets on COM2: the host's
/// time now and a fresh seed, as kestrel sends them.
fn job_bytes(spec: &str) -> Result<Vec<u8>, String> {
    let mut seed = [0u8; SEED_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map_err(|e| format!("could not read /dev/urandom: {e}"))?;
    let realtime_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let len = u32::try_from(spec.len()).map_err(|_| "the job spec is too long".to_string())?;
    let header = JobHeader {
        len,
        realtime_ns,
        seed,
        in_window: false,
    };
    Ok([header.line().as_bytes(), spec.as_bytes()].concat())
}

enum Vmm {
    Kestrel,
    Qemu(Machine),
}

impl Vmm {
    fn name(&self) -> &'static str {
        match self {
            Vmm::Kestrel => "kestrel",
            Vmm::Qemu(_) => "qemu-kvm",
        }
    }

    /// One counted run.
    fn boot(&self, setup: &Setup) -> Result<(), String> {
        self.boot_as(setup, Role::Run)
    }

    /// One boot or restore; `Err` says how it failed (its log is kept in
    /// `dir`).
    fn boot_as(&self, setup: &Setup, role: Role) -> Result<(), String> {
        let Setup {
            kestrel,
            qemu,
            kernel,
            initrd,
            cpus,
            append: extra_args,
            dir,
            host_fs,
            execs,
            kernel_spec,
            sockets,
            warm,
        } = *setup;
        // Unique per boot: two jobs start in the same clock tick (L1's clock
        // under TCG is coarse: two QEMU-KVM boots once shared one name, so
        // one's vhost-user socket was "already in use"), hence the count.
        static BOOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let log = dir.join(format!(
            "{}-{}-{}.log",
            self.name(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        match self {
            Vmm::Kestrel => {
                let mut cmd = Command::new(kestrel);
                cmd.arg("run").arg("--kernel");
                if let Some(w) = warm {
                    cmd.arg(kernel)
                        .arg("--initrd")
                        .arg(w.base)
                        .arg("--warm")
                        .arg("--job-spec")
                        .arg(&w.job_spec)
                        .arg("--timings");
                } else if host_fs.is_none() {
                    cmd.arg(kernel).arg("--initrd").arg(initrd);
                } else {
                    cmd.arg(kernel_spec);
                }
                cmd.arg("--console")
                    .arg(&log)
                    .arg(format!("--append={extra_args}"))
                    .args([
                        "--cpus",
                        &cpus.to_string(),
                        "--memory",
                        &MEMORY_MIB.to_string(),
                        "--timeout",
                        &BOOT_LIMIT.as_secs().to_string(),
                    ]);
                if host_fs.is_some() {
                    // kestrel's default root is the host's `/` over
                    // virtio-fs: the same job as a command.
                    cmd.arg("--").args(&execs_job(execs).argv);
                }
                let out = cmd
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("could not start kestrel: {e}"))?;
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                // `--timings` names how a warm run started: a counted run
                // that booted instead of restoring is not what it claims.
                let started_warm = warm.is_none()
                    || match role {
                        Role::Save => stderr.contains("snapshot-saved"),
                        Role::Run => stderr.contains("snapshot-restored"),
                    };
                if out.status.success() && started_warm {
                    let _ = std::fs::remove_file(&log);
                    return Ok(());
                }
                if out.status.success() {
                    let _ = append(&log, &format!("\n--- kestrel's stderr\n{stderr}"));
                    return Err(format!(
                        "kestrel passed but did not {} a snapshot (log: {})",
                        if role == Role::Save {
                            "save"
                        } else {
                            "restore"
                        },
                        log.display()
                    ));
                }
                let _ = append(&log, &format!("\n--- kestrel's stderr\n{stderr}"));
                let why = stderr
                    .lines()
                    .find(|l| {
                        l.starts_with("kestrel: ")
                            && !l.starts_with("kestrel: phase ")
                            && !l.contains("last console lines")
                    })
                    .unwrap_or("no verdict line")
                    .to_string();
                Err(format!("{why} (log: {})", log.display()))
            }
            Vmm::Qemu(machine) => {
                let socket = sockets.join(format!(
                    "fs-{}.sock",
                    log.file_stem().unwrap_or_default().to_string_lossy()
                ));
                let mut server = match host_fs {
                    Some(bench_fs::Server::Virtiofsd) => Some(
                        bench_fs::start_server(&bench_fs::Server::Virtiofsd, &socket)
                            .map_err(|e| format!("{e:#}"))?,
                    ),
                    Some(bench_fs::Server::Lite(bin)) => {
                        Some(bench_fs::start_lite(bin, &socket).map_err(|e| format!("{e:#}"))?)
                    }
                    None => None,
                };
                let guest = Guest {
                    accel: Accel::Kvm,
                    machine: *machine,
                    cpu_model: "host".into(),
                    cpus,
                    memory_mib: MEMORY_MIB,
                    kernel: kernel.to_path_buf(),
                    initrd: warm.map_or_else(|| initrd.to_path_buf(), |w| w.base.to_path_buf()),
                    append: bench::QEMU_APPEND.into(),
                    shared_memory: host_fs.is_some(),
                    fs: host_fs.map(|_| VhostUserFs {
                        socket: socket.clone(),
                        tag: bench_fs::TAG.into(),
                    }),
                    ports: None,
                    echo_console: false,
                    kill_on_lockup: false,
                    inspect_when_stuck: false,
                    snapshot: match (warm, role) {
                        (None, _) => None,
                        (Some(w), Role::Save) => Some(Snapshot::SaveAt(w.qemu_file.clone())),
                        (Some(w), Role::Run) => Some(Snapshot::Restore {
                            from: w.qemu_file.clone(),
                            job: job_bytes(&w.job)?,
                        }),
                    },
                    timeout: BOOT_LIMIT,
                    silence: Duration::from_secs(60),
                    idle: None,
                };
                let outcome = guest.run(qemu);
                if let Some(server) = &mut server {
                    let _ = server.kill();
                    let _ = server.wait();
                    let _ = std::fs::remove_file(&socket);
                }
                let outcome = outcome.map_err(|e| format!("{e:#}"))?;
                match &outcome.snapshot {
                    Some(Ok(())) if role == Role::Save => return Ok(()),
                    Some(Err(why)) => {
                        let _ = std::fs::write(
                            &log,
                            [outcome.console.as_slice(), outcome.qemu_log.as_bytes()].concat(),
                        );
                        return Err(format!("{why} (log: {})", log.display()));
                    }
                    _ => {}
                }
                if outcome.status == Some(Status::Exit(0)) {
                    return Ok(());
                }
                let _ = std::fs::write(
                    &log,
                    [outcome.console.as_slice(), outcome.qemu_log.as_bytes()].concat(),
                );
                // QEMU stops a vCPU on KVM's emulation failure and waits.
                let internal = if outcome.qemu_log.contains("emulation failure") {
                    " after a KVM emulation failure"
                } else {
                    ""
                };
                Err(format!(
                    "{}{internal} (log: {})",
                    outcome.describe(),
                    log.display()
                ))
            }
        }
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The Wilson score interval (95%) of `failures` in `n` trials.
pub fn wilson(failures: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.96f64;
    let n = n as f64;
    let p = failures as f64 / n;
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_execs_job_starts_true_n_times_and_fails_if_one_fails() {
        let job = execs_job(3);
        assert_eq!(job.argv[..2], ["/bin/sh", "-c"]);
        let script = &job.argv[2];
        // Run the same script on the host, with `true` swapped for a
        // counter, then for a program that fails.
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let counting = script.replace("/bin/true", &format!("echo x >> {}", count.display()));
        let ok = Command::new("/bin/sh")
            .args(["-c", &counting])
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
        let failing = script.replace("/bin/true", "/bin/false");
        let bad = Command::new("/bin/sh")
            .args(["-c", &failing])
            .status()
            .unwrap();
        assert_eq!(bad.code(), Some(1));
    }

    #[test]
    fn a_restored_qemu_guest_gets_a_header_the_init_parses_then_the_spec() {
        let spec = execs_job(3).render();
        let bytes = job_bytes(&spec).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let (line, rest) = text.split_once('\n').unwrap();
        let header = JobHeader::parse(line).unwrap();
        assert_eq!(header.len as usize, spec.len());
        assert_eq!(rest, spec);
        assert!(header.realtime_ns > 0);
        // A fresh seed each time (equal twice in a row: 2^-256).
        let again = JobHeader::parse(
            String::from_utf8(job_bytes(&spec).unwrap())
                .unwrap()
                .split_once('\n')
                .unwrap()
                .0,
        )
        .unwrap();
        assert_ne!(header.seed, again.seed);
    }

    #[test]
    fn wilson_intervals_match_known_values() {
        // 0 of 200: the interval reaches up to ~1.9%.
        let (lo, hi) = wilson(0, 200);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.0188).abs() < 0.001, "{hi}");
        // 1 of 20 (the 6.12 triple-fault rate seen before): 0.9%–23.6%.
        let (lo, hi) = wilson(1, 20);
        assert!((lo - 0.0089).abs() < 0.001, "{lo}");
        assert!((hi - 0.236).abs() < 0.002, "{hi}");
        let (lo, hi) = wilson(10, 10);
        assert!(lo > 0.69 && hi == 1.0);
    }
}

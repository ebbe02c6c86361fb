//! `cargo xtask bench boot`: kestrel against QEMU-KVM, side by side.
//!
//! The same kernel and the same initramfs (our init running `/bin/true`,
//! status on COM2) boot to the same power-off under kestrel, QEMU
//! `-M microvm` and QEMU `-M pc`, in alternating order, in the same place
//! (inside the rig when this host's KVM is not hardware-backed). Each run
//! must report `exit=0`, or the bench fails: a fast broken boot is no data.
//! Reported: every run's wall time, medians, and the ratios kestrel/QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kestrel_initramfs::job::{Dest, Spec, Status};

use crate::bench_fs;
use crate::guest::{self, BaseSpec};
use crate::qemu::{Accel, Guest, Machine};
use crate::rig::{self, RigArgs};
use crate::tools::{self, Qemu};

/// `cargo xtask bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Boot to power-off: kestrel vs QEMU microvm vs QEMU pc.
    Boot(BootArgs),
    /// Host tree reads from the guest: kestrel vs QEMU with virtiofsd / virtiofs-lite.
    Fs(bench_fs::FsArgs),
    /// 10 MiB of guest command output: kestrel's virtio-console vs QEMU's
    /// virtio-serial (the `virtio_console` test's measurement, in the rig).
    Output(OutputArgs),
}

/// `cargo xtask bench output` arguments.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Kernel to boot.
    #[arg(long, default_value = "debian:6.1")]
    pub kernel: String,
    /// Boots per VMM (alternating).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// `cargo xtask bench boot` arguments.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Kernel to boot.
    #[arg(long, default_value = "debian:6.1")]
    pub kernel: String,
    /// Runs per VMM (alternating).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Run here even if this host's KVM looks software-based (used inside the rig).
    #[arg(long)]
    pub here: bool,
}

/// The command line both QEMU machines get: design.md §1's tuning.
const QEMU_APPEND: &str = "console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nomux \
     tsc=reliable no_timer_check quiet 8250.nr_uarts=2 initcall_blacklist=cmos_init";
const MEMORY_MIB: u32 = 512;

pub fn run(cmd: &BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Boot(args) => boot(args),
        BenchCmd::Fs(args) => bench_fs::run(args),
        BenchCmd::Output(args) => output(args),
    }
}

/// Runs `xtask ARGS…` inside the rig (the bench asked for `--here` there).
pub fn in_rig(args: Vec<String>) -> Result<()> {
    tools::step("bench: this host's KVM is not hardware-backed; running the bench in the rig");
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut cmd = vec![xtask.to_string_lossy().into_owned()];
    cmd.extend(args);
    let code = rig::run_retrying(&RigArgs::for_cmd(cmd, 900), 2, &|| false)?;
    if code != 0 {
        bail!("the bench in the rig failed (exit {code}): see above");
    }
    Ok(())
}

/// Runs the `virtio_console` test's 10 MiB comparison (release build) with
/// `KESTREL_TEST_BENCH=1`, here on a hardware-KVM host, else in the rig.
fn output(args: &OutputArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let kestrel = guest::build_kestrel()?;
    guest::build_init()?;
    let kernel = guest::kernel(&args.kernel)?;
    let qemu = tools::ensure_qemu()?;
    let bins = crate::ci::rig_test_binaries()?;
    let (_, bin) = bins
        .iter()
        .find(|(name, _)| *name == "virtio_console")
        .context("cargo built no virtio_console test binary")?;
    let mut cmd: Vec<String> = vec![
        "env".into(),
        "KESTREL_TEST_BENCH=1".into(),
        "KESTREL_REAL_KVM_TESTS=1".into(),
        format!("KESTREL_BENCH_RUNS={}", args.runs),
        format!("KESTREL_TEST_KERNEL={}", kernel.image.display()),
        format!("KESTREL_QEMU={}", qemu.bin.display()),
    ];
    if let Some(modules) = &kernel.modules_dir {
        cmd.push(format!("KESTREL_TEST_MODULES_DIR={}", modules.display()));
    }
    cmd.extend([
        bin.to_string_lossy().into_owned(),
        "ten_mib_throughput_against_qemu".into(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads".into(),
        "1".into(),
    ]);
    tools::step(format!(
        "bench output: 10 MiB of guest output, kestrel vs {} ({} runs each, {})",
        qemu.version, args.runs, kernel.release
    ));
    let code = if guest::hardware_kvm(&kestrel) {
        let status = Command::new(&cmd[0])
            .args(&cmd[1..])
            .status()
            .context("could not run the virtio_console test binary")?;
        status.code().unwrap_or(1)
    } else {
        tools::step("bench: this host's KVM is not hardware-backed; running the bench in the rig");
        rig::run_retrying(&RigArgs::for_cmd(cmd, 900), 2, &|| false)?
    };
    if code != 0 {
        bail!("the output bench failed (exit {code}): see above");
    }
    Ok(())
}

fn boot(args: &BootArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let kestrel = guest::build_kestrel()?;
    let kernel = guest::kernel(&args.kernel)?;
    let base = guest::base_initramfs(&BaseSpec {
        name: "bench",
        kernel: &kernel,
        modules: &[],
        executables: &[PathBuf::from("/bin/true")],
    })?;
    if !args.here && !guest::hardware_kvm(&kestrel) {
        return in_rig(vec![
            "bench".into(),
            "boot".into(),
            "--here".into(),
            "--kernel".into(),
            args.kernel.clone(),
            "--runs".into(),
            args.runs.to_string(),
        ]);
    }

    let qemu = tools::ensure_qemu()?;
    let dir = tempfile::tempdir()?;
    let initrd = dir.path().join("initrd.cpio");
    let job = Spec {
        argv: vec!["/bin/true".into()],
        status: Some(Dest::Path("/dev/ttyS1".into())),
        ..Spec::default()
    };
    guest::initrd_with_job(&base, &job, &initrd)?;

    let vmms = ["kestrel", "qemu-microvm", "qemu-pc"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); vmms.len()];
    tools::step(format!(
        "bench boot: {} ({}), {} runs each, alternating",
        kernel.release,
        kernel.image.display(),
        args.runs
    ));
    for run in 0..args.runs {
        for (i, vmm) in vmms.iter().enumerate() {
            let wall = match i {
                0 => run_kestrel(&kestrel, &kernel.image, &initrd)?,
                1 => run_qemu(&qemu, Machine::Microvm, &kernel.image, &initrd)?,
                _ => run_qemu(&qemu, Machine::Pc, &kernel.image, &initrd)?,
            };
            println!("run {} {vmm:<13} {:7.0} ms", run + 1, ms(wall));
            times[i].push(wall);
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    println!();
    println!(
        "{:<13} {:>10} {:>10} {:>10}",
        "vmm", "median ms", "min ms", "max ms"
    );
    for (i, vmm) in vmms.iter().enumerate() {
        let (min, max) = (times[i][0], times[i][times[i].len() - 1]);
        println!(
            "{vmm:<13} {:>10.0} {:>10.0} {:>10.0}",
            ms(medians[i]),
            ms(min),
            ms(max)
        );
    }
    println!(
        "ratio kestrel/qemu-microvm = {:.2}, kestrel/qemu-pc = {:.2} (below 1: kestrel is faster)",
        ms(medians[0]) / ms(medians[1]),
        ms(medians[0]) / ms(medians[2])
    );
    println!("kestrel command line: kestrel's default; QEMU: {QEMU_APPEND}");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sorts `times` and returns the median.
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2
    }
}

fn run_kestrel(kestrel: &Path, kernel: &Path, initrd: &Path) -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new(kestrel)
        .arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args([
            "--cpus",
            "1",
            "--memory",
            &MEMORY_MIB.to_string(),
            "--console",
            "none",
        ])
        .stdin(Stdio::null())
        .output()
        .context("could not start kestrel")?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!(
            "kestrel did not report exit=0 ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(wall)
}

fn run_qemu(qemu: &Qemu, machine: Machine, kernel: &Path, initrd: &Path) -> Result<Duration> {
    let guest = Guest {
        accel: Accel::Kvm,
        machine,
        cpu_model: "host".into(),
        cpus: 1,
        memory_mib: MEMORY_MIB,
        kernel: kernel.to_path_buf(),
        initrd: initrd.to_path_buf(),
        append: QEMU_APPEND.into(),
        shared_memory: false,
        fs: None,
        ports: None,
        echo_console: false,
        kill_on_lockup: false,
        timeout: Duration::from_secs(120),
        silence: Duration::from_secs(60),
    };
    let outcome = guest.run(qemu)?;
    if outcome.status != Some(Status::Exit(0)) {
        bail!(
            "QEMU {machine:?} did not report exit=0: {}\n{}\n{}",
            outcome.describe(),
            outcome.console_tail(20),
            outcome.qemu_log
        );
    }
    Ok(outcome.wall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_runs() {
        let d = Duration::from_millis;
        assert_eq!(median(&mut [d(30), d(10), d(20)]), d(20));
        assert_eq!(median(&mut [d(40), d(10), d(20), d(30)]), d(25));
    }
}

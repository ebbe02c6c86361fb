//! `cargo xtask bench boot`: kestrel against QEMU-KVM, side by side.
//!
//! The same kernel and the same initramfs (our init running `/bin/true`,
//! status on COM2) boot to the same power-off under kestrel, QEMU
//! `-M microvm` and QEMU `-M pc`, in alternating order, in the same place
//! (inside the rig when this host's KVM is not hardware-backed). Each run
//! must report `exit=0`, or the bench fails: a fast broken boot is no data.
//! kestrel runs twice per round: entering the bzImage as it is, and with its
//! default (the kernel unpacked once on the host, PVH entry), so the lever
//! is measured alone. Reported: every run's wall time, a table of median
//! phase times (the init's `KESTREL-PHASE` marks on COM2, timed as they
//! arrive on the host for every VMM alike), and the ratios kestrel/QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kestrel_initramfs::job::{Dest, Phase, Spec, Status};

use crate::bench_fs;
use crate::guest::{self, BaseSpec};
use crate::paths;
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
pub const QEMU_APPEND: &str = "console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nomux \
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
    let base = true_base(&kernel)?;
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
    // Kept after the bench, so a boot can be repeated by hand.
    let dir = paths::kestrel_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let initrd = dir.join("boot-initrd.cpio");
    write_true_initrd(&base, &initrd)?;
    let job_spec = dir.join("boot-job.spec");
    std::fs::write(&job_spec, true_job().render())?;
    let warm = Warm {
        base: &base,
        job_spec: &job_spec,
    };
    // The first warm boot is cold and saves the snapshot: not a sample.
    let first = run_kestrel(&kestrel, "auto", &kernel.image, &initrd, Some(&warm))
        .context("the first warm boot (which saves the snapshot) failed")?;
    println!(
        "kestrel-warm first run (boots cold, saves the snapshot): {:.0} ms",
        ms(first.wall)
    );

    tools::step(format!(
        "bench boot: {} ({}), {} runs each, alternating",
        kernel.release,
        kernel.image.display(),
        args.runs
    ));
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); VMMS.len()];
    let mut failures = vec![0usize; VMMS.len()];
    for run in 0..args.runs {
        for (i, vmm) in VMMS.iter().enumerate() {
            let sample = match vmm {
                Vmm::Kestrel(entry) => run_kestrel(&kestrel, entry, &kernel.image, &initrd, None),
                Vmm::KestrelWarm => {
                    run_kestrel(&kestrel, "auto", &kernel.image, &initrd, Some(&warm))
                }
                Vmm::Qemu(machine) => run_qemu(&qemu, *machine, &kernel.image, &initrd),
            };
            // A failed boot is counted and reported, never timed.
            let sample = match sample {
                Ok(sample) => sample,
                Err(e) => {
                    println!("run {} {:<15}  failed: {e:#}", run + 1, vmm.name());
                    failures[i] += 1;
                    continue;
                }
            };
            println!(
                "run {} {:<15} {:7.0} ms (init at {} ms, guest uptime {} ms)",
                run + 1,
                vmm.name(),
                ms(sample.wall),
                sample
                    .mark("init")
                    .map_or("-".into(), |d| format!("{:.0}", ms(d))),
                sample
                    .init_uptime
                    .map_or("-".into(), |d| format!("{:.0}", ms(d))),
            );
            samples[i].push(sample);
        }
    }
    println!();
    for (i, vmm) in VMMS.iter().enumerate() {
        if failures[i] > 0 {
            println!(
                "{}: {} of {} boots failed",
                vmm.name(),
                failures[i],
                args.runs
            );
        }
        if samples[i].is_empty() {
            bail!("every {} boot failed: no figures", vmm.name());
        }
    }
    print!("{}", phase_table(&samples));
    let wall = |i: usize| median(&mut samples[i].iter().map(|s| s.wall).collect::<Vec<_>>());
    let (bz, auto, warm, microvm, pc) = (wall(0), wall(1), wall(2), wall(3), wall(4));
    println!(
        "ratio kestrel/qemu-microvm = {:.2}, kestrel/qemu-pc = {:.2}, kestrel-bzimage/qemu-microvm = {:.2}, \
         kestrel-warm/qemu-microvm = {:.2} (boot to power-off, medians; below 1: kestrel is faster)",
        ms(auto) / ms(microvm),
        ms(auto) / ms(pc),
        ms(bz) / ms(microvm),
        ms(warm) / ms(microvm)
    );
    println!("kestrel command line: kestrel's default; QEMU: {QEMU_APPEND}");
    Ok(())
}

/// The base archive of the boot benches' guest: our init and `/bin/true`.
pub fn true_base(kernel: &kestrel_kernels::Kernel) -> Result<PathBuf> {
    guest::base_initramfs(&BaseSpec {
        name: "bench",
        kernel,
        modules: &[],
        executables: &[PathBuf::from("/bin/true")],
    })
}

/// The boot bench's job: run `/bin/true`, status on COM2 (`/dev/ttyS1`).
fn true_job() -> Spec {
    Spec {
        argv: vec!["/bin/true".into()],
        status: Some(Dest::Path("/dev/ttyS1".into())),
        ..Spec::default()
    }
}

/// `base` plus the job of [`true_job`].
pub fn write_true_initrd(base: &Path, out: &Path) -> Result<()> {
    guest::initrd_with_job(base, &true_job(), out)
}

/// A warm kestrel boot: the base archive alone, the job handed over after
/// the restore (in kestrel's job window, one byte on COM2 to say so).
struct Warm<'a> {
    base: &'a Path,
    job_spec: &'a Path,
}

/// A VMM column of the boot bench.
enum Vmm {
    /// kestrel with this `--entry`.
    Kestrel(&'static str),
    /// kestrel restoring a snapshot (`--warm`), default entry.
    KestrelWarm,
    /// QEMU-KVM on this machine type.
    Qemu(Machine),
}

impl Vmm {
    fn name(&self) -> &'static str {
        match self {
            Vmm::Kestrel("bzimage") => "kestrel-bzimage",
            Vmm::Kestrel(_) => "kestrel",
            Vmm::KestrelWarm => "kestrel-warm",
            Vmm::Qemu(Machine::Microvm) => "qemu-microvm",
            Vmm::Qemu(Machine::Pc) => "qemu-pc",
        }
    }
}

/// The columns, in the order they run: kestrel entering the bzImage as it is
/// (the guest decompresses itself, as under QEMU), kestrel's default (the
/// kernel unpacked once on the host, PVH entry), kestrel restoring the
/// snapshot of that boot where the init waits for its job (made by an
/// untimed first run), QEMU microvm and pc.
const VMMS: [Vmm; 5] = [
    Vmm::Kestrel("bzimage"),
    Vmm::Kestrel("auto"),
    Vmm::KestrelWarm,
    Vmm::Qemu(Machine::Microvm),
    Vmm::Qemu(Machine::Pc),
];

/// The marks of the phase table, in order: the init's phases, the status
/// line, the end of the process.
const TABLE_MARKS: [&str; 8] = [
    "init",
    "job",
    "modules",
    "root",
    "command",
    "command-end",
    "status",
    "exit",
];

/// One boot: wall time from spawning the VMM to its exit, and when each
/// mark arrived (host time since the spawn).
#[derive(Clone, Debug, Default)]
struct Sample {
    wall: Duration,
    marks: Vec<(String, Duration)>,
    /// The guest's uptime at the init's first mark: the part of the time to
    /// init that the guest kernel's own clock saw.
    init_uptime: Option<Duration>,
}

impl Sample {
    fn mark(&self, name: &str) -> Option<Duration> {
        if name == "exit" {
            return Some(self.wall);
        }
        self.marks.iter().find(|(n, _)| n == name).map(|(_, d)| *d)
    }
}

/// Medians per mark and VMM, plus the split of the time to init into what
/// came before the guest kernel's clock started (VMM start-up, firmware,
/// decompression, early boot) and the kernel's own uptime.
fn phase_table(samples: &[Vec<Sample>]) -> String {
    let mut out = format!("{:<22}", "median ms since start");
    for vmm in &VMMS {
        out.push_str(&format!(" {:>15}", vmm.name()));
    }
    out.push('\n');
    let row = |out: &mut String, label: &str, f: &dyn Fn(&Sample) -> Option<Duration>| {
        out.push_str(&format!("{label:<22}"));
        for column in samples {
            let mut values: Vec<Duration> = column.iter().filter_map(f).collect();
            let cell = if values.len() == column.len() && !values.is_empty() {
                format!("{:.0}", ms(median(&mut values)))
            } else {
                "-".into()
            };
            out.push_str(&format!(" {cell:>15}"));
        }
        out.push('\n');
    };
    for name in TABLE_MARKS {
        row(&mut out, name, &|s: &Sample| s.mark(name));
    }
    row(&mut out, "  before guest clock", &|s: &Sample| {
        Some(s.mark("init")?.saturating_sub(s.init_uptime?))
    });
    row(&mut out, "  guest uptime at init", &|s: &Sample| {
        s.init_uptime
    });
    out
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

/// Parses one `kestrel --timings` line: `kestrel: phase <name> at=<ms> …
/// [uptime=<ms>]`.
fn timing_line(line: &str) -> Option<(String, Duration, Option<Duration>)> {
    let rest = line.trim().strip_prefix("kestrel: phase ")?;
    let mut words = rest.split_ascii_whitespace();
    let name = words.next()?.to_string();
    let millis = |v: &str| {
        v.parse::<f64>()
            .ok()
            .map(|m| Duration::from_secs_f64(m / 1000.0))
    };
    let (mut at, mut uptime) = (None, None);
    for w in words {
        if let Some(v) = w.strip_prefix("at=") {
            at = millis(v);
        } else if let Some(v) = w.strip_prefix("uptime=") {
            uptime = millis(v);
        }
    }
    Some((name, at?, uptime))
}

fn run_kestrel(
    kestrel: &Path,
    entry: &str,
    kernel: &Path,
    initrd: &Path,
    warm: Option<&Warm<'_>>,
) -> Result<Sample> {
    let mut cmd = Command::new(kestrel);
    cmd.arg("run").arg("--kernel").arg(kernel);
    match warm {
        Some(w) => cmd
            .arg("--initrd")
            .arg(w.base)
            .arg("--warm")
            .arg("--job-spec")
            .arg(w.job_spec),
        None => cmd.arg("--initrd").arg(initrd),
    };
    let start = Instant::now();
    let out = cmd
        .args([
            "--entry",
            entry,
            "--timings",
            "--timeout",
            "60",
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "kestrel did not report exit=0 ({}): {}",
            out.status,
            stderr.trim()
        );
    }
    let mut sample = Sample {
        wall,
        ..Sample::default()
    };
    for (name, at, uptime) in stderr.lines().filter_map(timing_line) {
        if name == "init" {
            sample.init_uptime = uptime;
        }
        sample.marks.push((name, at));
    }
    Ok(sample)
}

fn run_qemu(qemu: &Qemu, machine: Machine, kernel: &Path, initrd: &Path) -> Result<Sample> {
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
        inspect_when_stuck: false,
        snapshot: None,
        idle: None,
        timeout: Duration::from_secs(60),
        silence: Duration::from_secs(30),
    };
    let outcome = guest.run(qemu)?;
    if outcome.status != Some(Status::Exit(0)) {
        bail!(
            "QEMU {machine:?} did not report exit=0: {}; last console lines:\n{}\n{}",
            outcome.describe(),
            outcome.console_tail(20),
            outcome.qemu_log
        );
    }
    let mut sample = Sample {
        wall: outcome.wall,
        ..Sample::default()
    };
    for (mark, at) in &outcome.marks {
        if mark.phase == Phase::Init {
            sample.init_uptime = Some(Duration::from_micros(mark.uptime_us));
        }
        sample.marks.push((mark.phase.name().to_string(), *at));
    }
    if let Some(at) = outcome.status_at {
        sample.marks.push(("status".into(), at));
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_lines_parse_and_the_table_lines_up() {
        let (name, at, uptime) =
            timing_line("kestrel: phase init           at=4660.8    delta=3736.5  uptime=2792.6")
                .unwrap();
        assert_eq!(name, "init");
        assert_eq!(at.as_micros(), 4_660_800);
        assert_eq!(uptime.map(|u| u.as_micros()), Some(2_792_600));
        assert_eq!(timing_line("kestrel: verdict=pass boot=1 total=2"), None);
        let d = Duration::from_millis;
        let sample = |init: u64, up: u64, wall: u64| Sample {
            wall: d(wall),
            marks: vec![("init".into(), d(init))],
            init_uptime: Some(d(up)),
        };
        let samples = vec![
            vec![sample(5000, 2000, 6000)],
            vec![sample(3000, 2000, 4000)],
            vec![sample(4000, 3000, 5000), sample(4200, 3000, 5200)],
            vec![Sample {
                wall: d(7000),
                ..Sample::default()
            }],
        ];
        let table = phase_table(&samples);
        let line = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap()
                .split_whitespace()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("init"), ["5000", "3000", "4100", "-"]);
        assert_eq!(line("exit"), ["6000", "4000", "5100", "7000"]);
        assert_eq!(line("  before guest clock"), ["3000", "1000", "1100", "-"]);
    }

    #[test]
    fn median_of_odd_and_even_runs() {
        let d = Duration::from_millis;
        assert_eq!(median(&mut [d(30), d(10), d(20)]), d(20));
        assert_eq!(median(&mut [d(40), d(10), d(20), d(30)]), d(25));
    }
}

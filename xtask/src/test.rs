//! `cargo xtask test`: the main job — every stored scenario, booted under
//! kestrel, checked against its snapshot.
//!
//! Set-up first (kestrel and the init built, kernels fetched), then the
//! suite runs where KVM can boot kernels: here on a hardware-KVM host,
//! otherwise inside the nested rig (the same command with `--here`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kestrel_scenarios::{run_suite, KestrelBinary, SuiteOptions};

use crate::rig::{self, RigArgs};
use crate::{guest, paths, tools};

/// `cargo xtask test` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Kernels to run the scenarios on (comma-separated specs).
    #[arg(long, value_delimiter = ',', default_value = "debian:6.1")]
    pub kernel: Vec<String>,
    /// Run only cases whose `scenario@kernel` name contains this (or matches this glob).
    #[arg(long)]
    pub filter: Vec<String>,
    /// A directory of your own scenarios (repeatable) instead of this
    /// workspace's `scenarios/`: each keeps its snapshots in `DIR/snapshots`
    /// and its probes in `DIR/probes`, and runs in `DIR`.
    #[arg(long = "scenarios", value_name = "DIR")]
    pub scenarios: Vec<PathBuf>,
    /// Cases run at once (default: one per core of the machine that runs them).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Accept the output as the new snapshots.
    #[arg(long)]
    pub update: bool,
    /// Also write JUnit XML to this path.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Record snapshot differences per kernel series (`<name>@<series>.snap`).
    #[arg(long)]
    pub per_kernel: bool,
    /// Run a case again (up to N times) when its guest hung, panicked or
    /// did not boot; a case that then passes is reported as flaky.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Boot every case (cold) instead of starting it from a snapshot.
    /// By default each case starts from a snapshot of its kernel booted
    /// to where the init waits for its job (`kestrel run --warm`; the
    /// first case of each kernel, vCPU count, memory and device count
    /// boots cold and saves it).
    #[arg(long, conflicts_with = "warm")]
    pub cold: bool,
    /// Start cases from snapshots (the default; kept for scripts that
    /// name it).
    #[arg(long)]
    pub warm: bool,
    /// Run here even if this host's KVM looks software-based (used inside the rig).
    #[arg(long)]
    pub here: bool,
}

/// Runs the suite; `Ok(true)` when every case passed.
pub fn run(args: &TestArgs) -> Result<bool> {
    if !args.here {
        ensure_guest_tools()?;
    }
    let kestrel = guest::build_kestrel()?;
    guest::build_init()?;
    for spec in &args.kernel {
        guest::kernel(spec)?;
    }
    if !args.here && !guest::hardware_kvm(&kestrel) {
        tools::step("test: this host's KVM cannot boot kernels; running the scenarios in the rig");
        return in_rig(args);
    }
    let mut options = SuiteOptions::new(&paths::workspace());
    if !args.scenarios.is_empty() {
        options.scenario_dirs = scenario_dirs(&args.scenarios)?;
    }
    options.kernels = args.kernel.clone();
    options.filters = args.filter.clone();
    if let Some(jobs) = args.jobs {
        if jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        options.jobs = jobs;
    }
    options.update = args.update;
    options.retries = args.retries;
    options.per_kernel_snapshots = args.per_kernel;
    options.junit = args.junit.clone();
    let summary = run_suite(&options, &backend(kestrel, !args.cold))?;
    eprint!("{}", summary.table);
    eprintln!("{}", summary.totals_line());
    Ok(summary.passed())
}

/// `--scenarios` directories made absolute (the rig's run and kestrel's
/// working directory need them so); one sentence for a path that is not a
/// directory.
pub fn scenario_dirs(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(kestrel_scenarios::scenario::resolve_dirs(dirs)?)
}

/// The scenarios' backend: `kestrel`, with `--warm` when `warm`.
pub fn backend(kestrel: PathBuf, warm: bool) -> KestrelBinary {
    let mut backend = KestrelBinary::new(kestrel);
    if warm {
        backend.extra_args.push("--warm".into());
    }
    backend
}

/// Scenarios run the host's own tools in the guest (the host's `/` is the
/// guest root): `modprobe` (Debian's `kmod`) for module loading, a C
/// compiler for the probes.
pub fn ensure_guest_tools() -> Result<()> {
    if !std::path::Path::new("/sbin/modprobe").exists()
        && !std::path::Path::new("/usr/sbin/modprobe").exists()
    {
        tools::apt_install(&["kmod"])?;
    }
    if tools::which("cc").is_none() {
        tools::apt_install(&["gcc", "libc6-dev"])?;
    }
    Ok(())
}

/// The suite options `test` and `matrix` forward to their own `--here`
/// run inside the rig.
pub struct HereCmd<'a> {
    /// The xtask subcommand.
    pub sub: &'a str,
    /// Its kernel-list flag (`--kernel`, `--kernels`).
    pub kernel_flag: &'a str,
    pub kernels: &'a [String],
    pub filters: &'a [String],
    /// `--scenarios` directories as given.
    pub scenario_dirs: &'a [PathBuf],
    pub jobs: Option<usize>,
    pub retries: u32,
    pub update: bool,
    /// Cases start from snapshots (`--warm`) or boot (`--cold`); passed on
    /// explicitly, as the two subcommands' defaults differ.
    pub warm: bool,
}

impl HereCmd<'_> {
    /// The rig run of `xtask SUB --here …`: the `--scenarios` directories,
    /// made absolute once, are both passed on and bound writable into L1
    /// (they may be under `/tmp`, which L1 replaces; snapshots go there).
    pub fn rig_args(&self) -> Result<RigArgs> {
        let dirs = scenario_dirs(self.scenario_dirs)?;
        let mut rig_args = RigArgs::for_cmd(self.argv(&dirs)?, 600);
        rig_args.writable = dirs;
        Ok(rig_args)
    }

    /// `xtask SUB --here …` as argv, with `dirs` as `--scenarios`.
    fn argv(&self, dirs: &[PathBuf]) -> Result<Vec<String>> {
        let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
        let mut cmd = vec![
            xtask.to_string_lossy().into_owned(),
            self.sub.into(),
            "--here".into(),
            self.kernel_flag.into(),
            self.kernels.join(","),
        ];
        for f in self.filters {
            cmd.extend(["--filter".into(), f.clone()]);
        }
        for d in dirs {
            cmd.extend(["--scenarios".into(), d.to_string_lossy().into_owned()]);
        }
        if let Some(jobs) = self.jobs {
            cmd.extend(["--jobs".into(), jobs.to_string()]);
        }
        cmd.extend(["--retries".into(), self.retries.to_string()]);
        if self.update {
            cmd.push("--update".into());
        }
        cmd.push(if self.warm { "--warm" } else { "--cold" }.into());
        Ok(cmd)
    }
}

fn in_rig(args: &TestArgs) -> Result<bool> {
    let mut rig_args = HereCmd {
        sub: "test",
        kernel_flag: "--kernel",
        kernels: &args.kernel,
        filters: &args.filter,
        scenario_dirs: &args.scenarios,
        jobs: args.jobs,
        retries: args.retries,
        update: args.update,
        warm: !args.cold,
    }
    .rig_args()?;
    if args.per_kernel {
        rig_args.cmd.push("--per-kernel".into());
    }
    if let Some(junit) = &args.junit {
        let junit = std::path::absolute(junit).context("cannot resolve --junit")?;
        rig_args
            .cmd
            .extend(["--junit".into(), junit.to_string_lossy().into_owned()]);
    }
    let code = rig::run_retrying(&rig_args, 2, &|| false)?;
    Ok(code == 0)
}

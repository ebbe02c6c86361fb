//! `kestrel test --scenarios DIR …`: your own scenario directories, run by
//! the installed binary (no workspace): every `DIR/*.toml` booted under
//! this same `kestrel`, checked against `DIR/snapshots/`, probes from
//! `DIR/probes/`, commands run in `DIR` — the engine `cargo xtask test`
//! uses ([`kestrel_scenarios::run_suite`]).
//!
//! Debian kernels that are not cached are fetched first (progress on
//! stderr). Where `/dev/kvm` cannot boot a kernel the command stops with
//! one sentence naming the rig. Artifacts go to the kernel cache's
//! `runs/<run id>/` (printed at the end). Exit status: 0 every case
//! passed, 1 one failed.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kestrel_kernels::Cache;
use kestrel_scenarios::{run_suite, KestrelBinary, SuiteOptions};

/// What `kestrel test` and `kestrel matrix` share: which scenarios, how
/// many at once, whether to accept their output, warm or cold (both start
/// cases warm by default, `--cold` boots them).
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// A directory of scenario files (repeatable): snapshots in
    /// DIR/snapshots, probes in DIR/probes, commands run in DIR.
    #[arg(long = "scenarios", value_name = "DIR", required = true)]
    pub scenarios: Vec<PathBuf>,
    /// Run only cases whose `scenario@kernel` name contains this (or matches this glob).
    #[arg(long)]
    pub filter: Vec<String>,
    /// Cases run at once (default: one per core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Accept the output as the new snapshots (the matrix: differences
    /// recorded per kernel series).
    #[arg(long)]
    pub update: bool,
    /// Run a case again (up to N times) when its guest hung, panicked or
    /// did not boot; a case that then passes is reported as flaky.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Boot every case.
    #[arg(long, conflicts_with = "warm")]
    pub cold: bool,
    /// Start each case from a VM snapshot (`kestrel run --warm`: the first
    /// case of each kernel, vCPU count, memory and device count boots and
    /// saves it; the default).
    #[arg(long)]
    pub warm: bool,
}

impl SuiteArgs {
    /// Checks the arguments and that KVM boots kernels here, then the
    /// suite options (artifacts in the cache's `runs/`) and this binary
    /// as the backend.
    /// `warm_by_default`: whether cases start from snapshots when neither
    /// `--warm` nor `--cold` is given.
    pub fn prepare(&self, warm_by_default: bool) -> Result<(SuiteOptions, KestrelBinary)> {
        let dirs = kestrel_scenarios::scenario::resolve_dirs(&self.scenarios)?;
        if self.jobs == Some(0) {
            bail!("--jobs must be at least 1");
        }
        crate::doctor::require_hardware_speed().map_err(anyhow::Error::msg)?;
        let cache = Cache::from_env()?;
        let mut options = SuiteOptions::new(cache.root());
        options.scenario_dirs = dirs;
        options.artifacts_root = cache.root().join("runs");
        options.filters = self.filter.clone();
        if let Some(jobs) = self.jobs {
            options.jobs = jobs;
        }
        options.update = self.update;
        options.retries = self.retries;
        let exe = std::env::current_exe().context("cannot find the kestrel binary itself")?;
        Ok((options, self.backend(exe, warm_by_default)))
    }

    /// `exe` as the suite's backend: every case `kestrel run --warm` with
    /// `--warm`, or with neither flag when `warm_by_default`.
    pub fn backend(&self, exe: PathBuf, warm_by_default: bool) -> KestrelBinary {
        let mut backend = KestrelBinary::new(exe);
        if self.warm || (warm_by_default && !self.cold) {
            backend.extra_args.push("--warm".into());
        }
        backend
    }
}

/// `kestrel test` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub suite: SuiteArgs,
    /// Kernels to run the scenarios on (comma-separated specs).
    #[arg(long, value_delimiter = ',', default_value = "debian:6.1")]
    pub kernel: Vec<String>,
    /// Also write JUnit XML to this path.
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

/// `kestrel test`.
pub fn run(args: TestArgs) -> Result<u8> {
    let (mut options, backend) = args.suite.prepare(true)?;
    for spec in &args.kernel {
        super::ensure_kernel(spec)?;
    }
    options.kernels = args.kernel.clone();
    options.junit = args.junit.clone();
    let summary = run_suite(&options, &backend)?;
    eprint!("{}", summary.table);
    eprintln!("{}", summary.totals_line());
    Ok(u8::from(!summary.passed()))
}

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

/// `kestrel test` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// A directory of scenario files (repeatable): snapshots in
    /// DIR/snapshots, probes in DIR/probes, commands run in DIR.
    #[arg(long = "scenarios", value_name = "DIR", required = true)]
    pub scenarios: Vec<PathBuf>,
    /// Kernels to run the scenarios on (comma-separated specs).
    #[arg(long, value_delimiter = ',', default_value = "debian:6.1")]
    pub kernel: Vec<String>,
    /// Run only cases whose `scenario@kernel` name contains this (or matches this glob).
    #[arg(long)]
    pub filter: Vec<String>,
    /// Cases run at once (default: one per core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Accept the output as the new snapshots.
    #[arg(long)]
    pub update: bool,
    /// Also write JUnit XML to this path.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Run a case again (up to N times) when its guest hung, panicked or
    /// did not boot; a case that then passes is reported as flaky.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Start each case from a VM snapshot (`kestrel run --warm`).
    #[arg(long)]
    pub warm: bool,
}

/// `--scenarios` directories, checked and made absolute.
pub fn scenario_dirs(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(kestrel_scenarios::scenario::resolve_dirs(given)?)
}

/// `kestrel test`.
pub fn run(args: TestArgs) -> Result<u8> {
    let dirs = scenario_dirs(&args.scenarios)?;
    if args.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }
    crate::doctor::require_hardware_speed().map_err(anyhow::Error::msg)?;
    let cache = Cache::from_env()?;
    for spec in &args.kernel {
        super::ensure_kernel(spec)?;
    }
    let exe = std::env::current_exe().context("cannot find the kestrel binary itself")?;
    let mut options = SuiteOptions::new(cache.root());
    options.scenario_dirs = dirs;
    options.artifacts_root = cache.root().join("runs");
    options.kernels = args.kernel.clone();
    options.filters = args.filter.clone();
    if let Some(jobs) = args.jobs {
        options.jobs = jobs;
    }
    options.update = args.update;
    options.retries = args.retries;
    options.junit = args.junit.clone();
    let mut backend = KestrelBinary::new(exe);
    if args.warm {
        backend.extra_args.push("--warm".into());
    }
    let summary = run_suite(&options, &backend)?;
    eprint!("{}", summary.table);
    let passed = summary
        .results
        .iter()
        .filter(|r| r.verdict.passed())
        .count();
    eprintln!(
        "scenarios: {passed} passed, {} failed ({:.1} s; artifacts in {})",
        summary.results.len() - passed,
        summary.wall.as_secs_f64(),
        summary.run_dir.display()
    );
    Ok(u8::from(!summary.passed()))
}

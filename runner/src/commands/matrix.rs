//! `kestrel matrix --scenarios DIR [--kernels a,b,…]`: your scenarios on
//! several kernels side by side — the engine `cargo xtask matrix` uses
//! ([`kestrel_scenarios::matrix::run_matrix`]), booted by this binary.
//!
//! Debian kernels that are not cached are fetched first (one that cannot
//! be had becomes an `unresolved` column; the others run). Snapshots are
//! per kernel series in `DIR/snapshots` (`<name>@<series>.snap` where a
//! series differs from the generic `<name>.snap`); `--update` records the
//! differences. Reports: `matrix.md`, `matrix.json`, `matrix.html` in
//! `--out` (default: the kernel cache's `matrix/`). Exit status: 0 every
//! cell as expected and every kernel resolved, 1 otherwise.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kestrel_kernels::{host, Cache};
use kestrel_scenarios::matrix::{run_matrix, table_only, MatrixRun};
use kestrel_scenarios::{KestrelBinary, SuiteOptions};

/// `kestrel matrix` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MatrixArgs {
    /// A directory of scenario files (repeatable).
    #[arg(long = "scenarios", value_name = "DIR", required = true)]
    pub scenarios: Vec<PathBuf>,
    /// Kernels, one column each (comma-separated specs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "debian:5.10,debian:6.1,debian:6.12,debian:7.2"
    )]
    pub kernels: Vec<String>,
    /// Run only cases whose `scenario@kernel` name contains this (or matches this glob).
    #[arg(long)]
    pub filter: Vec<String>,
    /// Cases run at once (default: one per core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Accept the outputs: differences are recorded per kernel series.
    #[arg(long)]
    pub update: bool,
    /// Run a case again (up to N times) when its guest hung, panicked or
    /// did not boot.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Start each cell from a VM snapshot (`kestrel run --warm`).
    #[arg(long)]
    pub warm: bool,
    /// Where the reports go (default: the kernel cache's matrix/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `kestrel matrix`.
pub fn run(args: MatrixArgs) -> Result<u8> {
    let dirs = super::test::scenario_dirs(&args.scenarios)?;
    if args.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }
    if args.kernels.is_empty() {
        bail!("--kernels needs at least one kernel spec");
    }
    crate::doctor::require_hardware_speed().map_err(anyhow::Error::msg)?;
    for spec in &args.kernels {
        if let Err(e) = super::ensure_kernel(spec) {
            host::step(format!("matrix: {spec}: {e:#}"));
        }
    }
    let cache = Cache::from_env()?;
    let mut options = SuiteOptions::new(cache.root());
    options.scenario_dirs = dirs;
    options.artifacts_root = cache.root().join("runs");
    options.filters = args.filter.clone();
    if let Some(jobs) = args.jobs {
        options.jobs = jobs;
    }
    options.update = args.update;
    options.retries = args.retries;
    let mut backend = KestrelBinary::new(
        std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find kestrel itself: {e}"))?,
    );
    if args.warm {
        backend.extra_args.push("--warm".into());
    }
    let report_dir = match &args.out {
        Some(o) => super::absolute(o)?,
        None => cache.root().join("matrix"),
    };
    let matrix = run_matrix(MatrixRun {
        options,
        kernels: args.kernels.clone(),
        backend: &backend,
        report_dir: report_dir.clone(),
    })?;
    eprintln!("{}", table_only(&matrix.markdown()));
    host::step(format!(
        "matrix: {}; reports in {} (matrix.md, matrix.json, matrix.html)",
        if matrix.passed() {
            "every cell as expected"
        } else {
            "some cells FAILED"
        },
        report_dir.display()
    ));
    Ok(u8::from(!matrix.passed()))
}

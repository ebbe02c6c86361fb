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

use super::test::SuiteArgs;

/// `kestrel matrix` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    pub suite: SuiteArgs,
    /// Kernels, one column each (comma-separated specs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "debian:5.10,debian:6.1,debian:6.12,debian:7.2"
    )]
    pub kernels: Vec<String>,
    /// Where the reports go (default: the kernel cache's matrix/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `kestrel matrix`.
pub fn run(args: MatrixArgs) -> Result<u8> {
    if args.kernels.is_empty() {
        bail!("--kernels needs at least one kernel spec");
    }
    let (options, backend) = args.suite.prepare(true)?;
    for spec in &args.kernels {
        if let Err(e) = super::ensure_kernel(spec) {
            host::step(format!("matrix: {spec}: {e:#}"));
        }
    }
    let report_dir = match &args.out {
        Some(o) => super::absolute(o)?,
        None => Cache::from_env()?.root().join("matrix"),
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

//! `cargo xtask matrix`: the stored scenarios on several kernels side by
//! side, with the differences between kernels as reviewed expectations.
//!
//! Set-up on the host (kestrel, the init, the kernels fetched; a kernel that
//! cannot be had is noted, not fatal), then the suite runs where KVM boots
//! kernels — here on a hardware-KVM host, else in the rig (`--here` there).
//! Snapshots are per kernel series (`<name>@<series>.snap` when present,
//! else `<name>.snap`); `--update` records differences per series and keeps
//! only the files that record one. Reports: `target/kestrel/matrix/`
//! `matrix.md`, `matrix.json`, `matrix.html` (self-contained), and with
//! `--screenshot` a PNG of the HTML rendered by headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use kestrel_scenarios::matrix::{run_matrix, table_only, MatrixRun};
use kestrel_scenarios::SuiteOptions;

use crate::rig;
use crate::{guest, paths, tools};

/// The kernels of the matrix unless `--kernels` says otherwise.
pub const DEFAULT_KERNELS: &str = "debian:5.10,debian:6.1,debian:6.12,debian:7.2";

/// `cargo xtask matrix` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MatrixArgs {
    /// Kernels, one column each (comma-separated specs: debian:<series>,
    /// build:DIR, image paths).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_KERNELS)]
    pub kernels: Vec<String>,
    /// Run only cases whose `scenario@kernel` name contains this (or matches this glob).
    #[arg(long)]
    pub filter: Vec<String>,
    /// A directory of your own scenarios (repeatable) instead of this
    /// workspace's `scenarios/`; per-kernel snapshots go to `DIR/snapshots`.
    #[arg(long = "scenarios", value_name = "DIR")]
    pub scenarios: Vec<PathBuf>,
    /// Cases run at once (default: one per core of the machine that runs them).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Accept the outputs: differences are recorded per kernel series.
    #[arg(long)]
    pub update: bool,
    /// Render matrix.html to matrix.png with headless Chromium (installed
    /// with apt when missing and we are root).
    #[arg(long)]
    pub screenshot: bool,
    /// Run a case again (up to N times) when its guest hung, panicked or
    /// did not boot; a case that then passes is reported as flaky.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Start each cell from a snapshot of its kernel booted to where the
    /// init waits for its job (`kestrel run --warm`; the first cell of each
    /// kernel, vCPU count, memory and device count boots cold and saves
    /// it). The default since session 20, when the rig's L1 went to one
    /// vCPU: six warm matrices there, 504 of 504 cells, 166–202 s each
    /// (RELIABILITY.md).
    #[arg(long, conflicts_with = "cold")]
    pub warm: bool,
    /// Boot every cell instead.
    #[arg(long)]
    pub cold: bool,
    /// Run here even if this host's KVM looks software-based (used inside the rig).
    #[arg(long)]
    pub here: bool,
}

/// Where the reports go.
pub fn report_dir() -> PathBuf {
    paths::target_dir().join("kestrel").join("matrix")
}

/// Runs the matrix; `Ok(true)` when every cell that ran passed and every
/// kernel resolved.
pub fn run(args: &MatrixArgs) -> Result<bool> {
    if args.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }
    if args.kernels.is_empty() {
        bail!("--kernels needs at least one kernel spec");
    }
    let passed = if args.here {
        run_here(args)?
    } else {
        crate::test::ensure_guest_tools()?;
        let kestrel = guest::build_kestrel()?;
        guest::build_init()?;
        for spec in &args.kernels {
            // Fetch what can be fetched; what cannot is reported in its
            // column by the run itself.
            if let Err(e) = guest::kernel(spec) {
                tools::step(format!("matrix: {spec}: {e:#}"));
            }
        }
        if guest::hardware_kvm(&kestrel) {
            run_here(args)?
        } else {
            tools::step(
                "matrix: this host's KVM cannot boot kernels; running the matrix in the rig",
            );
            in_rig(args)?
        }
    };
    if args.screenshot {
        screenshot(&report_dir().join("matrix.html"))?;
    }
    Ok(passed)
}

fn in_rig(args: &MatrixArgs) -> Result<bool> {
    let rig_args = crate::test::HereCmd {
        sub: "matrix",
        kernel_flag: "--kernels",
        kernels: &args.kernels,
        filters: &args.filter,
        scenario_dirs: &args.scenarios,
        jobs: args.jobs,
        retries: args.retries,
        update: args.update,
        warm: !args.cold,
    }
    .rig_args()?;
    let code = rig::run_retrying(&rig_args, 2, &|| false)?;
    Ok(code == 0)
}

/// The matrix engine ([`kestrel_scenarios::matrix::run_matrix`]) on
/// this workspace's scenarios or `--scenarios`, reports in
/// `target/kestrel/matrix/`.
fn run_here(args: &MatrixArgs) -> Result<bool> {
    let kestrel = guest::build_kestrel()?;
    guest::build_init()?;
    let mut options = SuiteOptions::new(&paths::workspace());
    if !args.scenarios.is_empty() {
        options.scenario_dirs = crate::test::scenario_dirs(&args.scenarios)?;
    }
    options.filters = args.filter.clone();
    if let Some(jobs) = args.jobs {
        options.jobs = jobs;
    }
    options.update = args.update;
    options.retries = args.retries;
    let backend = crate::test::backend(kestrel, !args.cold);
    let dir = report_dir();
    let matrix = run_matrix(MatrixRun {
        options,
        kernels: args.kernels.clone(),
        backend: &backend,
        report_dir: dir.clone(),
    })?;
    eprintln!("{}", table_only(&matrix.markdown()));
    tools::step(format!(
        "matrix: {} in {:.1} s; reports in {} (matrix.md, matrix.json, matrix.html)",
        if matrix.passed() {
            "every cell as expected"
        } else {
            "some cells FAILED"
        },
        matrix.wall_ms as f64 / 1000.0,
        dir.display()
    ));
    Ok(matrix.passed())
}

/// Renders `html` to a PNG next to it with headless Chromium.
fn screenshot(html: &Path) -> Result<()> {
    if !html.is_file() {
        bail!(
            "there is no {} to render: run the matrix first",
            html.display()
        );
    }
    let chromium = match tools::which("chromium") {
        Some(c) => c,
        None => {
            tools::apt_install(&["chromium"])?;
            tools::which("chromium").context("chromium is still missing after installing it")?
        }
    };
    let png = html.with_extension("png");
    let profile = tempfile::Builder::new()
        .prefix("kestrel-chromium-")
        .tempdir()
        .context("could not create a temporary directory")?;
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .context("could not run chromium")?;
    if !out.status.success() || !png.is_file() {
        bail!(
            "chromium could not render {}: {}",
            html.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tools::step(format!("matrix: rendered {}", png.display()));
    Ok(())
}

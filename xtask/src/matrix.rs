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
use kestrel_kernels::{Cache, Fetch, KernelSpec};
use kestrel_scenarios::matrix::{normalise_snapshots, Column, Matrix, PlannedRow};
use kestrel_scenarios::{run_suite, Session, SuiteOptions};

use crate::rig;
use crate::{guest, paths, tools};

/// The kernels of the matrix unless `--kernels` says otherwise.
pub const DEFAULT_KERNELS: &str = "debian:5.10,debian:6.1,debian:6.12,debian:7.2";
/// The series whose output is the generic snapshot (`xtask test`'s kernel).
const BASELINE_SERIES: &str = "6.1";

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
    /// it). Not the default yet: under sustained warm load the rig's L1
    /// kernel crashed (runner/NOTES.md, "Warm starts").
    #[arg(long)]
    pub warm: bool,
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
        warm: args.warm,
    }
    .rig_args()?;
    let code = rig::run_retrying(&rig_args, 2, &|| false)?;
    Ok(code == 0)
}

/// Resolves every column (cache only: the host fetched what it could), runs
/// the suite on the resolved ones, writes the reports.
fn run_here(args: &MatrixArgs) -> Result<bool> {
    let kestrel = guest::build_kestrel()?;
    guest::build_init()?;
    let cache = Cache::from_env()?;
    let columns: Vec<Column> = args
        .kernels
        .iter()
        .map(|spec| match resolve(spec, &cache) {
            Ok(release) => Column {
                spec: spec.clone(),
                release: Some(release),
                unresolved: None,
            },
            Err(why) => Column {
                spec: spec.clone(),
                release: None,
                unresolved: Some(why),
            },
        })
        .collect();
    for c in columns.iter().filter(|c| c.unresolved.is_some()) {
        tools::step(format!(
            "matrix: {} cannot be resolved ({}); the other kernels still run",
            c.spec,
            c.unresolved.as_deref().unwrap_or_default()
        ));
    }

    let mut options = SuiteOptions::new(&paths::workspace());
    if !args.scenarios.is_empty() {
        options.scenario_dirs = crate::test::scenario_dirs(&args.scenarios)?;
    }
    options.kernels = columns
        .iter()
        .filter(|c| c.unresolved.is_none())
        .map(|c| c.spec.clone())
        .collect();
    options.filters = args.filter.clone();
    if let Some(jobs) = args.jobs {
        options.jobs = jobs;
    }
    options.update = args.update;
    options.retries = args.retries;
    options.per_kernel_snapshots = true;

    // Rows: every scenario the filter selects on any column (planned on
    // all columns, so a scenario whose globs leave a kernel out shows
    // `not run` there).
    let session = Session::new(options.clone());
    let scenarios = session.load()?;
    let mut all_columns = options.clone();
    all_columns.kernels = args.kernels.clone();
    let planned_all = Session::new(all_columns).plan(&scenarios);
    let planned_here = session.plan(&scenarios);
    let rows: Vec<PlannedRow> = scenarios
        .iter()
        .filter(|s| planned_all.iter().any(|c| c.scenario.name == s.name))
        .map(|s| PlannedRow {
            scenario: s.name.clone(),
            description: s.description.clone(),
            kernels: planned_here
                .iter()
                .filter(|c| c.scenario.name == s.name)
                .map(|c| c.kernel.clone())
                .collect(),
            snapshots_dir: options.snapshots_dir_for(s),
        })
        .collect();
    if rows.is_empty() {
        bail!(
            "no scenario matches the filter {:?} on {}",
            args.filter,
            args.kernels.join(", ")
        );
    }

    let (run_id, wall_ms, results) = if planned_here.is_empty() {
        (String::from("none"), 0, Vec::new())
    } else {
        let summary = run_suite(&options, &crate::test::backend(kestrel, args.warm))?;
        eprint!("{}", summary.table);
        (
            summary.run_id.clone(),
            summary.wall.as_millis() as u64,
            summary.results,
        )
    };
    if args.update {
        // Per snapshots directory (one per --scenarios DIR).
        let mut by_dir: std::collections::BTreeMap<&Path, Vec<(String, Vec<String>)>> =
            std::collections::BTreeMap::new();
        for r in &rows {
            let series = r
                .kernels
                .iter()
                .filter_map(|k| kestrel_scenarios::kernel::series_of(k))
                .map(str::to_owned)
                .collect();
            by_dir
                .entry(r.snapshots_dir.as_path())
                .or_default()
                .push((r.scenario.clone(), series));
        }
        for (dir, names) in by_dir {
            let changed = normalise_snapshots(dir, &names, BASELINE_SERIES).with_context(|| {
                format!(
                    "could not tidy the per-kernel snapshots in {}",
                    dir.display()
                )
            })?;
            for c in changed {
                tools::step(format!("matrix: snapshots: {c}"));
            }
        }
    }

    let matrix = Matrix::build(&run_id, wall_ms, columns, &rows, &results);
    let dir = report_dir();
    write_reports(&matrix, &dir)?;
    eprintln!("{}", table_only(&matrix.markdown()));
    tools::step(format!(
        "matrix: {} in {:.1} s; reports in {} (matrix.md, matrix.json, matrix.html)",
        if matrix.passed() {
            "every cell as expected"
        } else {
            "some cells FAILED"
        },
        wall_ms as f64 / 1000.0,
        dir.display()
    ));
    Ok(matrix.passed())
}

/// The release of a spec from the cache, or one sentence why not.
fn resolve(spec: &str, cache: &Cache) -> std::result::Result<String, String> {
    let parsed: KernelSpec = spec.parse().map_err(|e| format!("{e}"))?;
    kestrel_kernels::resolve(&parsed, cache, Fetch::CacheOnly)
        .map(|k| k.release)
        .map_err(|e| format!("{e}"))
}

fn write_reports(matrix: &Matrix, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in [
        ("matrix.md", matrix.markdown()),
        ("matrix.json", matrix.json()),
        ("matrix.html", matrix.html()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The Markdown report up to its first section after the table.
fn table_only(markdown: &str) -> &str {
    markdown.split("\n## ").next().unwrap_or(markdown)
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

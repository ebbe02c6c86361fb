//! Running scenarios: the options, the cases (scenario × kernel), probe
//! builds, one case end to end ([`Session::run_case`]) and the whole suite
//! ([`run_suite`]), which `cargo xtask test` calls and the libtest-mimic
//! harness (`tests/scenarios.rs`) mirrors one trial at a time.
//!
//! Invariant: [`Session::run_case`] always returns a [`CaseResult`] — a
//! runner that cannot start is a VMM error, a failing snapshot write is a
//! failure — and writes the case's artifacts.

use std::collections::{HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, KestrelBinary, RunRequest};
use crate::error::{Error, Result};
use crate::evaluate::{self, FailReason, RunOutput, SnapshotContext, Verdict};
use crate::kernel::{series_of, slug};
use crate::report::{self, CaseResult, JUNIT_OUTPUT_LIMIT};
use crate::scenario::{self, GuestCommand, Scenario};
use crate::snapshot::Policy;

/// The kernel used when none is named.
pub const DEFAULT_KERNEL: &str = "debian:6.1";

/// What to run and where things go.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Directories of `<name>.toml` files, each with its own `probes/` and
    /// `snapshots/` (`--scenarios DIR`, repeatable; default: the
    /// workspace's `scenarios/`). A scenario's command runs in its
    /// directory.
    pub scenario_dirs: Vec<PathBuf>,
    /// Where `.snap` files go instead of `snapshots/` beside each scenario
    /// (a bisection keeps its baseline in its own state directory).
    pub snapshots_dir: Option<PathBuf>,
    /// `target/kestrel`: run directories and built probes go here.
    pub artifacts_root: PathBuf,
    /// Kernel specs; each applicable scenario runs on each.
    pub kernels: Vec<String>,
    /// Case-name filters (`scenario@kernel`): substrings, or globs with `*`;
    /// empty selects everything.
    pub filters: Vec<String>,
    /// Match filters against the whole name.
    pub exact: bool,
    /// Cases run at once.
    pub jobs: usize,
    /// Accept new snapshots.
    pub update: bool,
    /// Record snapshot differences per kernel series (see [`Policy`]).
    pub per_kernel_snapshots: bool,
    /// Also write JUnit XML here (the run directory always gets one).
    pub junit: Option<PathBuf>,
    /// Run directory name; a UTC timestamp and the PID when `None`.
    pub run_id: Option<String>,
    /// Print a line per finished case on stderr.
    pub progress: bool,
    /// C compiler for probes.
    pub cc: String,
    /// Kernel command line put before every scenario's `append`. The default,
    /// `loglevel=5`, lets `WARNING:` splats (KERN_WARNING) reach the console
    /// despite the runner's `quiet`, so `forbid` can see them.
    pub base_append: Option<String>,
    /// How many times a case is run again when its guest hung, panicked or
    /// did not boot (never for a failed check: a snapshot or exit-status
    /// failure is not retried). A case that passes on a retry is reported
    /// as flaky with its first verdict. Default 0; `cargo xtask ci` uses 1
    /// in the nested rig, whose emulated SVM hangs a guest now and then.
    pub retries: u32,
}

/// The default [`SuiteOptions::base_append`].
pub const BASE_APPEND: &str = "loglevel=5";

impl SuiteOptions {
    /// Defaults for a workspace: `scenarios/`, `scenarios/snapshots/`,
    /// `$CARGO_TARGET_DIR/kestrel` or `target/kestrel`, Debian 6.1, as many
    /// jobs as cores.
    pub fn new(workspace_root: &Path) -> SuiteOptions {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| {
                if t.is_absolute() {
                    t
                } else {
                    workspace_root.join(t)
                }
            })
            .unwrap_or_else(|| workspace_root.join("target"));
        SuiteOptions {
            scenario_dirs: vec![workspace_root.join("scenarios")],
            snapshots_dir: None,
            artifacts_root: target.join("kestrel"),
            kernels: vec![DEFAULT_KERNEL.to_owned()],
            filters: Vec::new(),
            exact: false,
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
            update: false,
            per_kernel_snapshots: false,
            junit: None,
            run_id: None,
            progress: true,
            cc: std::env::var("CC").unwrap_or_else(|_| "cc".to_owned()),
            base_append: Some(BASE_APPEND.to_owned()),
            retries: 0,
        }
    }

    /// Where `scenario`'s snapshots are: [`SuiteOptions::snapshots_dir`],
    /// else `snapshots/` beside the scenario file.
    pub fn snapshots_dir_for(&self, scenario: &Scenario) -> PathBuf {
        self.snapshots_dir
            .clone()
            .unwrap_or_else(|| scenario.dir().join("snapshots"))
    }

    /// Applies the harness's environment: `KESTREL_KERNEL` (comma-separated
    /// specs), `KESTREL_UPDATE_SNAPSHOTS=1`, `KESTREL_PER_KERNEL_SNAPSHOTS=1`,
    /// `KESTREL_JUNIT=PATH`, `KESTREL_RUN_ID`.
    pub fn apply_env(&mut self, var: &dyn Fn(&str) -> Option<String>) {
        let truthy =
            |v: Option<String>| v.is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        if let Some(k) = var("KESTREL_KERNEL") {
            let kernels: Vec<String> = k
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if !kernels.is_empty() {
                self.kernels = kernels;
            }
        }
        self.update |= truthy(var("KESTREL_UPDATE_SNAPSHOTS"));
        self.per_kernel_snapshots |= truthy(var("KESTREL_PER_KERNEL_SNAPSHOTS"));
        if let Some(j) = var("KESTREL_JUNIT").filter(|j| !j.is_empty()) {
            self.junit = Some(PathBuf::from(j));
        }
        if let Some(id) = var("KESTREL_RUN_ID").filter(|j| !j.is_empty()) {
            self.run_id = Some(id);
        }
    }
}

/// The backend the harness's environment names: `KESTREL_BIN` (required)
/// and `KESTREL_RUN_ARGS` (extra `kestrel run` arguments, split on white
/// space, such as `--initrd PATH`). `None` when `KESTREL_BIN` is unset.
pub fn backend_from_env(var: &dyn Fn(&str) -> Option<String>) -> Option<KestrelBinary> {
    let bin = var("KESTREL_BIN").filter(|b| !b.is_empty())?;
    let mut k = KestrelBinary::new(PathBuf::from(bin));
    k.extra_args = var("KESTREL_RUN_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some(k)
}

/// One scenario on one kernel.
#[derive(Debug, Clone)]
pub struct Case {
    /// The scenario.
    pub scenario: Arc<Scenario>,
    /// The kernel spec.
    pub kernel: String,
}

impl Case {
    /// `scenario@kernel`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.scenario.name, self.kernel)
    }
}

/// Whether a case name passes the filters.
pub fn selected(name: &str, filters: &[String], exact: bool) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            if exact {
                name == f
            } else if f.contains('*') {
                crate::kernel::KernelPattern::new(f).is_ok_and(|p| p.matches(name))
            } else {
                name.contains(f.as_str())
            }
        })
}

/// Every applicable scenario × kernel that passes the filters, scenario
/// order first.
pub fn plan(scenarios: &[Arc<Scenario>], options: &SuiteOptions) -> Vec<Case> {
    let mut cases = Vec::new();
    for s in scenarios {
        for k in &options.kernels {
            let case = Case {
                scenario: Arc::clone(s),
                kernel: k.clone(),
            };
            if s.applies_to(k) && selected(&case.name(), &options.filters, options.exact) {
                cases.push(case);
            }
        }
    }
    cases
}

/// Builds `probes/*.c` on the host once per process (and only when the
/// source is newer than the binary).
#[derive(Debug)]
pub struct Probes {
    src_dir: PathBuf,
    out_dir: PathBuf,
    cc: String,
    built: Mutex<HashMap<String, Result<(), String>>>,
}

impl Probes {
    /// Sources in `src_dir`, binaries in `out_dir`.
    pub fn new(src_dir: PathBuf, out_dir: PathBuf, cc: String) -> Probes {
        Probes {
            src_dir,
            out_dir,
            cc,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// Where binaries go (`${KESTREL_PROBES}`).
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Builds `file` (`ktap_demo.c` → `<out>/ktap_demo`) unless up to date.
    pub fn ensure(&self, file: &str) -> Result<(), String> {
        let mut built = self
            .built
            .lock()
            .map_err(|_| "probe builder poisoned".to_owned())?;
        if let Some(r) = built.get(file) {
            return r.clone();
        }
        let r = self.build(file);
        built.insert(file.to_owned(), r.clone());
        r
    }

    fn build(&self, file: &str) -> Result<(), String> {
        let src = self.src_dir.join(file);
        let stem = file.strip_suffix(".c").unwrap_or(file);
        let out = self.out_dir.join(stem);
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if let (Some(s), Some(o)) = (mtime(&src), mtime(&out)) {
            if o >= s {
                return Ok(());
            }
        }
        std::fs::create_dir_all(&self.out_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.out_dir.display()))?;
        let tmp = self.out_dir.join(format!(".{stem}.{}", std::process::id()));
        let result = Command::new(&self.cc)
            .args(["-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", self.cc))?;
        if !result.status.success() {
            let _ = std::fs::remove_file(&tmp);
            let stderr = String::from_utf8_lossy(&result.stderr);
            let first = stderr
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or("")
                .trim();
            return Err(format!("`{} {}` failed: {first}", self.cc, src.display()));
        }
        std::fs::rename(&tmp, &out)
            .map_err(|e| format!("cannot move the probe to {}: {e}", out.display()))
    }
}

/// A suite run in progress: the run directory and the probe builder.
#[derive(Debug)]
pub struct Session {
    options: SuiteOptions,
    run_id: String,
    run_dir: PathBuf,
    /// One builder per scenario directory, in [`SuiteOptions::scenario_dirs`]
    /// order: the first builds into `<root>/probes`, the others into
    /// `<root>/probes-<n>`.
    probes: Vec<Probes>,
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = kestrel_kernels::civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `p` made absolute and without `.` or `..` components (the runner takes
/// only such paths for `--share`).
fn absolute(p: &Path) -> PathBuf {
    let full = if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    };
    let mut out = PathBuf::new();
    for c in full.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl Session {
    /// Names the run directory (created lazily by the first case).
    pub fn new(options: SuiteOptions) -> Session {
        let run_id = options
            .run_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", utc_stamp(SystemTime::now()), std::process::id()));
        let root = absolute(&options.artifacts_root);
        let probes = options
            .scenario_dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let out = if i == 0 {
                    root.join("probes")
                } else {
                    root.join(format!("probes-{i}"))
                };
                Probes::new(dir.join("probes"), out, options.cc.clone())
            })
            .collect::<Vec<_>>();
        let probes = if probes.is_empty() {
            // No directories: a session that will find no scenarios still
            // has a builder, so `probes_for` always has one to give.
            vec![Probes::new(
                PathBuf::from("probes"),
                root.join("probes"),
                options.cc.clone(),
            )]
        } else {
            probes
        };
        Session {
            run_dir: root.join(&run_id),
            run_id,
            probes,
            options,
        }
    }

    /// The probe builder for `scenario`'s directory (the first one's for a
    /// scenario loaded from elsewhere, as a bisection step's is).
    fn probes_for(&self, scenario: &Scenario) -> &Probes {
        self.options
            .scenario_dirs
            .iter()
            .position(|d| d == scenario.dir())
            .and_then(|i| self.probes.get(i))
            .or(self.probes.first())
            .expect("a session has at least one probe builder")
    }

    /// The options.
    pub fn options(&self) -> &SuiteOptions {
        &self.options
    }

    /// `target/kestrel/<run-id>`.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Loads every scenario (stops at the first malformed file).
    pub fn load(&self) -> Result<Vec<Arc<Scenario>>> {
        Ok(scenario::load_dirs(&self.options.scenario_dirs)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }

    /// The cases to run.
    pub fn plan(&self, scenarios: &[Arc<Scenario>]) -> Vec<Case> {
        plan(scenarios, &self.options)
    }

    /// Runs one case and writes its artifacts.
    pub fn run_case(&self, case: &Case, backend: &dyn Backend) -> CaseResult {
        let start = Instant::now();
        let s = &case.scenario;
        let probes = self.probes_for(s);
        let argv = s.command.argv(probes.out_dir());
        let artifacts = self.run_dir.join(&s.name).join(slug(&case.kernel));
        let _ = std::fs::remove_dir_all(&artifacts);
        let mut result = CaseResult {
            scenario: s.name.clone(),
            description: s.description.clone(),
            kernel: case.kernel.clone(),
            argv: argv.clone(),
            verdict: Verdict::Pass,
            runner_verdict: None,
            exit_status: None,
            expected_exit: s.expect.exit,
            boot_ms: None,
            total_ms: 0,
            wall_ms: 0,
            artifacts: artifacts.clone(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            flaky: None,
        };

        let probe_errors: Vec<FailReason> = s
            .probes
            .iter()
            .filter_map(|p| probes.ensure(p).err())
            .map(|message| FailReason::ProbeBuild { message })
            .collect();
        if !probe_errors.is_empty() {
            result.verdict = Verdict::Fail(probe_errors);
            result.wall_ms = start.elapsed().as_millis() as u64;
            let out = RunOutput::vmm_error("not run: a probe did not build".into());
            let _ = report::write_case(&result, &out, None);
            return result;
        }

        let request = RunRequest {
            kernel: case.kernel.clone(),
            cpus: s.cpus,
            memory_mib: s.memory_mib,
            timeout: s.timeout,
            append: join_append(self.options.base_append.as_deref(), s.append.as_deref()),
            argv,
            console_path: artifacts.join("console.log"),
            workdir: s.dir().to_path_buf(),
            shares: if s.probes.is_empty() {
                Vec::new()
            } else {
                vec![probes.out_dir().to_path_buf()]
            },
        };
        if let Err(e) = std::fs::create_dir_all(&artifacts) {
            result.verdict = Verdict::Fail(vec![FailReason::Harness {
                message: format!("cannot create {}: {e}", artifacts.display()),
            }]);
            return result;
        }
        let output = backend
            .run(&request)
            .unwrap_or_else(|e| RunOutput::vmm_error(e.to_string()));
        let context = SnapshotContext {
            dir: self.options.snapshots_dir_for(s),
            series: series_of(&case.kernel).map(str::to_owned),
            policy: Policy {
                update: self.options.update,
                per_kernel: self.options.per_kernel_snapshots,
            },
            expression: expression(&s.command),
            symbols: backend.symbol_sources(&case.kernel),
        };
        let (verdict, text) = match evaluate::evaluate(s, &output, &context) {
            Ok(e) => (e.verdict, e.snapshot_text),
            Err(e) => (
                Verdict::Fail(vec![FailReason::Harness {
                    message: e.to_string(),
                }]),
                None,
            ),
        };
        result.verdict = verdict;
        result.runner_verdict = Some(output.verdict_from_runner);
        result.exit_status = output.effective_exit();
        result.boot_ms = output.boot_ms;
        result.total_ms = output.total_ms;
        result.stdout_tail = report::tail(&output.stdout, JUNIT_OUTPUT_LIMIT);
        result.stderr_tail = report::tail(&output.stderr, JUNIT_OUTPUT_LIMIT);
        result.wall_ms = start.elapsed().as_millis() as u64;
        if let Err(e) = report::write_case(&result, &output, text.as_deref()) {
            let mut reasons = match std::mem::replace(&mut result.verdict, Verdict::Pass) {
                Verdict::Fail(r) => r,
                Verdict::Pass => Vec::new(),
                other => {
                    result.verdict = other;
                    return result;
                }
            };
            reasons.push(FailReason::Harness {
                message: e.to_string(),
            });
            result.verdict = Verdict::Fail(reasons);
        }
        result
    }

    /// Writes the run's JUnit XML (and the extra copy asked for) and
    /// summary.txt; points `target/kestrel/latest` at the run.
    pub fn finish(&self, results: &[CaseResult], wall: Duration) -> Result<Summary> {
        let wall_ms = wall.as_millis() as u64;
        std::fs::create_dir_all(&self.run_dir)
            .map_err(|e| Error::io("create directory", &self.run_dir, e))?;
        let xml = report::junit_xml(results, wall_ms);
        let table = report::summary_table(results, wall_ms);
        let mut junit = vec![self.run_dir.join("junit.xml")];
        junit.extend(self.options.junit.iter().cloned());
        for path in &junit {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            }
            std::fs::write(path, &xml).map_err(|e| Error::io("write", path, e))?;
        }
        let summary_path = self.run_dir.join("summary.txt");
        std::fs::write(&summary_path, &table).map_err(|e| Error::io("write", &summary_path, e))?;
        if let Some(root) = self.run_dir.parent() {
            let latest = root.join("latest");
            let _ = std::fs::remove_file(&latest);
            let _ = std::os::unix::fs::symlink(&self.run_id, &latest);
        }
        Ok(Summary {
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            results: results.to_vec(),
            wall,
            table,
        })
    }
}

/// Whether a case with this verdict may be run again: the guest hung,
/// panicked or did not boot — what a flaky host (the nested rig) causes;
/// never a failed check.
pub fn retryable(v: &Verdict) -> bool {
    matches!(
        v,
        Verdict::Timeout | Verdict::Panic | Verdict::BootFailure(_)
    )
}

/// `base` then the scenario's own arguments (later ones win in the kernel).
fn join_append(base: Option<&str>, own: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = [base, own]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The command as written in the scenario (placeholders kept, so snapshot
/// headers do not depend on the machine).
fn expression(c: &GuestCommand) -> String {
    match c {
        GuestCommand::Run(args) => args.join(" "),
        GuestCommand::Script(s) => format!("sh -c {}", s.trim()),
    }
}

/// A finished suite.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The run id.
    pub run_id: String,
    /// `target/kestrel/<run-id>`.
    pub run_dir: PathBuf,
    /// One result per case, in plan order.
    pub results: Vec<CaseResult>,
    /// Wall time of the whole suite.
    pub wall: Duration,
    /// The summary table.
    pub table: String,
}

impl Summary {
    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.verdict.passed())
    }

    /// `scenarios: P passed, F failed (W s; artifacts in DIR)`: the last
    /// line `cargo xtask test` and `kestrel test` print.
    pub fn totals_line(&self) -> String {
        let passed = self.results.iter().filter(|r| r.verdict.passed()).count();
        format!(
            "scenarios: {passed} passed, {} failed ({:.1} s; artifacts in {})",
            self.results.len() - passed,
            self.wall.as_secs_f64(),
            self.run_dir.display()
        )
    }
}

/// Loads the scenarios, runs every selected case on `backend` with
/// `options.jobs` at once, prints progress on stderr, writes the artifacts,
/// JUnit and the summary. `Err` only for problems before any case ran (a
/// malformed scenario file, no case selected) or when the reports cannot be
/// written.
pub fn run_suite(options: &SuiteOptions, backend: &dyn Backend) -> Result<Summary> {
    let session = Session::new(options.clone());
    let scenarios = session.load()?;
    let cases = session.plan(&scenarios);
    if cases.is_empty() {
        return Err(Error::Options(format!(
            "no scenario matches the filters {:?} on kernels {}",
            options.filters,
            options.kernels.join(", ")
        )));
    }
    let start = Instant::now();
    let total = cases.len();
    let queue = Mutex::new(cases.iter().enumerate().collect::<VecDeque<_>>());
    let results: Mutex<Vec<Option<CaseResult>>> = Mutex::new(vec![None; total]);
    let done = Mutex::new(0usize);
    let jobs = options.jobs.clamp(1, total);
    if options.progress {
        eprintln!(
            "kestrel: {total} cases ({} scenarios × {}), {jobs} at a time; artifacts in {}",
            scenarios.len(),
            options.kernels.join(", "),
            session.run_dir().display()
        );
    }
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((index, case)) = next else { break };
                if options.progress {
                    let queued = queue.lock().map_or(0, |q| q.len());
                    eprintln!("[ run ] {} ({queued} queued)", case.name());
                }
                let mut r = session.run_case(case, backend);
                let mut first: Option<String> = None;
                for _ in 0..options.retries {
                    if !retryable(&r.verdict) {
                        break;
                    }
                    if options.progress {
                        eprintln!("[retry] {} ({})", case.name(), r.verdict);
                    }
                    first.get_or_insert_with(|| r.verdict.to_string());
                    r = session.run_case(case, backend);
                }
                if r.verdict.passed() {
                    r.flaky = first;
                }
                if options.progress {
                    if let Ok(mut d) = done.lock() {
                        *d += 1;
                        let line = match &r.verdict {
                            Verdict::Pass => "pass".to_owned(),
                            v => v.to_string(),
                        };
                        eprintln!(
                            "[{:>3}/{total}] {} … {line} ({:.1}s)",
                            *d,
                            case.name(),
                            r.wall_ms as f64 / 1000.0
                        );
                    }
                }
                if let Ok(mut all) = results.lock() {
                    all[index] = Some(r);
                }
            });
        }
    });
    let results: Vec<CaseResult> = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    session.finish(&results, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hangs_and_crashes_are_retried() {
        assert!(retryable(&Verdict::Timeout));
        assert!(retryable(&Verdict::Panic));
        assert!(retryable(&Verdict::BootFailure("triple fault".into())));
        assert!(!retryable(&Verdict::Pass));
        assert!(!retryable(&Verdict::Fail(Vec::new())));
        assert!(!retryable(&Verdict::VmmError("no kernel".into())));
    }

    #[test]
    fn absolute_paths_lose_dot_components() {
        assert_eq!(absolute(Path::new("/a/./b/../c/")), PathBuf::from("/a/c"));
        assert!(absolute(Path::new("t/../k")).is_absolute());
        assert!(!absolute(Path::new("t/../k"))
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir)));
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "19700101-000000");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(utc_stamp(t), "20240229-123456");
    }

    #[test]
    fn append_joins() {
        assert_eq!(
            join_append(Some("loglevel=5"), Some("x=1")).as_deref(),
            Some("loglevel=5 x=1")
        );
        assert_eq!(join_append(None, Some("x=1")).as_deref(), Some("x=1"));
        assert_eq!(join_append(Some(" "), None), None);
    }

    #[test]
    fn filters() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(selected("uname@debian:6.1", &[], false));
        assert!(selected("uname@debian:6.1", &f(&["uname"]), false));
        assert!(!selected("uname@debian:6.1", &f(&["uname"]), true));
        assert!(selected(
            "uname@debian:6.1",
            &f(&["uname@debian:6.1"]),
            true
        ));
        assert!(selected("uname@debian:6.12", &f(&["*@debian:6.1*"]), false));
        assert!(!selected("boot@debian:7.2", &f(&["uname", "*6.1"]), false));
    }

    #[test]
    fn env_options() {
        let mut o = SuiteOptions::new(Path::new("/w"));
        assert_eq!(o.kernels, [DEFAULT_KERNEL]);
        assert_eq!(o.scenario_dirs, [Path::new("/w/scenarios")]);
        assert_eq!(o.snapshots_dir, None);
        let vars = |k: &str| match k {
            "KESTREL_KERNEL" => Some("debian:6.1, debian:6.12".to_owned()),
            "KESTREL_UPDATE_SNAPSHOTS" => Some("1".to_owned()),
            "KESTREL_BIN" => Some("/bin/kestrel".to_owned()),
            "KESTREL_RUN_ARGS" => Some("--initrd /i".to_owned()),
            _ => None,
        };
        o.apply_env(&vars);
        assert_eq!(o.kernels, ["debian:6.1", "debian:6.12"]);
        assert!(o.update && !o.per_kernel_snapshots);
        let b = backend_from_env(&vars).unwrap();
        assert_eq!(b.extra_args, ["--initrd", "/i"]);
        assert!(backend_from_env(&|_| None).is_none());
    }
}

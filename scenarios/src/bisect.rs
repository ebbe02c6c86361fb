//! Bisection: "it broke somewhere between these two commits (or kernels)"
//! → a named commit, with nobody at the terminal. The engine behind
//! `kestrel bisect` and `cargo xtask bisect`; each binary supplies where a
//! boot runs ([`Booter`]) and re-enters itself for `git bisect run`.
//!
//! Git mode ([`Target::Git`]): the tree must be clean; its branch (or
//! detached HEAD) is recorded. The good revision is built and booted
//! first: its scenario output becomes the baseline snapshot (in the run's
//! state directory), and the bad revision must fail against it. Then
//! `git bisect start BAD GOOD` and `git bisect run <copy of the binary>
//! bisect-step --state DIR`: each step reads the typed [`StepPlan`] from
//! the state directory, builds HEAD incrementally into one reused output
//! directory (build failure → 125, skip), boots the kernel and runs the
//! scenario through the [`Booter`], and exits 0 (pass), 1 (fail; timeout
//! and boot failure per the policies) or 125 (skip); a broken harness
//! exits 255, which makes git abort. The report names the first bad commit
//! from `git bisect log`, its subject, the output diff against the good
//! revision, and the steps.
//!
//! List mode ([`Target::Kernels`]): the same search over prebuilt kernels,
//! oldest first: the first must pass (baseline), the last must fail.
//!
//! Between processes only typed records travel, as JSON: the plan
//! (`plan.json`), one [`Step`] per line of `steps.jsonl`, one
//! [`BootRecord`] per boot under `records/` (a boot that runs in another
//! process, such as xtask's nested rig, gets its [`BootRequest`] the same
//! way).
//!
//! Invariants: the user's tree ends as it began — `git bisect reset` and
//! a checkout of the recorded branch run on success, on error and on
//! Ctrl-C (every step, the endpoints included, runs as a child in a
//! process group of its own; SIGINT/SIGTERM/SIGHUP are taken by a signal
//! thread ([`take_signals`]) and forwarded to that group, so the clean-up
//! always runs in the driving process); the result is checked with
//! `git status --porcelain`. Steps run a copy of the binary in the state
//! directory, so a rebuild or reinstall during a long bisection does not
//! change the tool under it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kestrel_kernels::kbuild::{self, BuildError, ConfigSet, Output, Plan};
use serde::{Deserialize, Serialize};

use crate::{Case, KestrelBinary, Scenario, Session, SuiteOptions, Verdict};

/// Exit codes `git bisect run` understands.
pub const GOOD: u8 = 0;
pub const BAD: u8 = 1;
pub const SKIP: u8 = 125;
/// Any code above 127 aborts `git bisect run`.
pub const ABORT: u8 = 255;

/// What a timeout or a boot failure counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Bad,
    Skip,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Policy, String> {
        match s {
            "bad" => Ok(Policy::Bad),
            "skip" => Ok(Policy::Skip),
            _ => Err(format!("`{s}` is neither `bad` nor `skip`")),
        }
    }
}

/// How a boot (or its build) ended, as the bisection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ran {
    Pass,
    Fail,
    Timeout,
    Panic,
    BootFailure,
    VmmError,
    /// The step's kernel did not build (no boot).
    BuildFailed,
}

impl Ran {
    /// The scenario verdict's kind.
    pub fn of(v: &Verdict) -> Ran {
        match v {
            Verdict::Pass => Ran::Pass,
            Verdict::Fail(_) => Ran::Fail,
            Verdict::Timeout => Ran::Timeout,
            Verdict::Panic => Ran::Panic,
            Verdict::BootFailure(_) => Ran::BootFailure,
            Verdict::VmmError(_) => Ran::VmmError,
        }
    }

    /// `pass`, `fail`, …, `build-failed`: as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Ran::Pass => "pass",
            Ran::Fail => "fail",
            Ran::Timeout => "timeout",
            Ran::Panic => "panic",
            Ran::BootFailure => "boot-failure",
            Ran::VmmError => "vmm-error",
            Ran::BuildFailed => "build-failed",
        }
    }
}

/// What a step told `git bisect run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Good,
    Bad,
    Skip,
    Abort,
}

impl Outcome {
    pub fn of_code(code: u8) -> Outcome {
        match code {
            GOOD => Outcome::Good,
            BAD => Outcome::Bad,
            SKIP => Outcome::Skip,
            _ => Outcome::Abort,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Good => "good",
            Outcome::Bad => "bad",
            Outcome::Skip => "skip",
            Outcome::Abort => "abort",
        }
    }
}

/// How one boot ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    pub verdict: Ran,
    pub boot_ms: Option<u64>,
    pub wall_ms: u64,
    pub artifacts: PathBuf,
    /// Why it did not pass (empty for a pass).
    pub reason: String,
}

impl BootRecord {
    /// `: <first line of the reason>`, or nothing for a pass.
    fn why(&self) -> String {
        if self.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", first_line(&self.reason))
        }
    }

    /// The exit code for `git bisect run`.
    pub fn code(&self, on_timeout: Policy, on_boot_failure: Policy) -> u8 {
        let policy = |p| if p == Policy::Bad { BAD } else { SKIP };
        match self.verdict {
            Ran::Pass => GOOD,
            Ran::Fail => BAD,
            Ran::Timeout => policy(on_timeout),
            Ran::Panic | Ran::BootFailure => policy(on_boot_failure),
            Ran::VmmError | Ran::BuildFailed => ABORT,
        }
    }
}

/// Which revision a step tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// The good endpoint: its output is the baseline.
    Good,
    /// The bad endpoint.
    Bad,
    /// One of `git bisect run`'s (or the list search's) picks.
    Step,
}

impl std::str::FromStr for StepKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<StepKind, String> {
        match s {
            "good" => Ok(StepKind::Good),
            "bad" => Ok(StepKind::Bad),
            "step" => Ok(StepKind::Step),
            _ => Err(format!("`{s}` is not good, bad or step")),
        }
    }
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Good => "good",
            StepKind::Bad => "bad",
            StepKind::Step => "step",
        }
    }
}

/// One line of `<state>/steps.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub kind: StepKind,
    /// The commit, or the kernel spec in list mode.
    pub revision: String,
    pub build_secs: Option<f64>,
    pub boot_secs: Option<f64>,
    pub outcome: Outcome,
    pub verdict: Ran,
    /// The boot's artifact directory (none when it did not build).
    pub artifacts: Option<PathBuf>,
}

/// What `git bisect log` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conclusion {
    /// `# first bad commit: [sha] subject` (list mode: the kernel spec).
    FirstBad { sha: String, subject: String },
    /// Only skipped commits were left: the first bad one is among these.
    Ambiguous(Vec<(String, String)>),
}

/// Reads the conclusion from `git bisect log` output.
pub fn parse_bisect_log(log: &str) -> Option<Conclusion> {
    let bracketed = |rest: &str| -> Option<(String, String)> {
        let rest = rest.trim().strip_prefix('[')?;
        let (sha, subject) = rest.split_once(']')?;
        Some((sha.to_owned(), subject.trim().to_owned()))
    };
    let mut possible = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("# first bad commit:") {
            let (sha, subject) = bracketed(rest)?;
            return Some(Conclusion::FirstBad { sha, subject });
        }
        if let Some(rest) = line.strip_prefix("# possible first bad commit:") {
            possible.extend(bracketed(rest));
        }
    }
    (!possible.is_empty()).then_some(Conclusion::Ambiguous(possible))
}

/// A line diff, `-` good, `+` bad, with one line of context around
/// changes (empty when equal).
pub fn line_diff(good: &str, bad: &str) -> String {
    let diff = similar::TextDiff::from_lines(good, bad);
    let mut out = String::new();
    for group in diff.grouped_ops(1) {
        for op in group {
            for change in diff.iter_changes(&op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Equal => ' ',
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                };
                let line = change.value();
                out.push(sign);
                out.push(' ');
                out.push_str(line.strip_suffix('\n').unwrap_or(line));
                out.push('\n');
            }
        }
    }
    out
}

/// The search over an ordered list: index 0 passes, the last fails;
/// `test` answers good (0), bad (1) or skip (125) for an index. Returns the
/// first bad index, or the candidates when skips leave it open.
pub fn bisect_list(
    n: usize,
    mut test: impl FnMut(usize) -> Result<u8>,
) -> Result<std::result::Result<usize, Vec<usize>>> {
    if n < 2 {
        bail!(
            "bisecting a list needs at least two kernels (a passing one first, a failing one last)"
        );
    }
    let (mut good, mut bad) = (0, n - 1);
    let mut skipped: Vec<usize> = Vec::new();
    loop {
        let open: Vec<usize> = (good + 1..bad).filter(|i| !skipped.contains(i)).collect();
        if open.is_empty() {
            let mut left: Vec<usize> = (good + 1..bad).collect();
            if left.is_empty() {
                return Ok(Ok(bad));
            }
            left.push(bad);
            return Ok(Err(left));
        }
        // The untested index nearest the middle.
        let mid = (good + bad) / 2;
        let pick = open
            .iter()
            .copied()
            .min_by_key(|&i| (i.abs_diff(mid), i))
            .unwrap_or(mid);
        match test(pick)? {
            GOOD => good = pick,
            BAD => bad = pick,
            SKIP => skipped.push(pick),
            code => bail!("the test of kernel {pick} aborted the search (exit {code})"),
        }
    }
}

/// Finds the scenario: a file path, else `<name>.toml` in the first of
/// `dirs` that has one.
pub fn load_scenario(name: &str, dirs: &[PathBuf]) -> Result<Scenario> {
    let as_path = Path::new(name);
    if name.ends_with(".toml") || name.contains('/') {
        if !as_path.is_file() {
            bail!("scenario file {name} does not exist");
        }
        return Ok(Scenario::load(as_path)?);
    }
    let dirs = crate::scenario::resolve_dirs(dirs)?;
    if let Some(path) = dirs
        .iter()
        .map(|d| d.join(format!("{name}.toml")))
        .find(|p| p.is_file())
    {
        return Ok(Scenario::load(&path)?);
    }
    let mut known: Vec<String> = dirs
        .iter()
        .flat_map(|d| crate::scenario::scenario_files(d).unwrap_or_default())
        .filter_map(|p| p.file_stem().and_then(|n| n.to_str()).map(str::to_owned))
        .collect();
    known.sort();
    bail!(
        "no scenario `{name}` in {}; known: {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        known.join(", ")
    );
}

/// Where a bisection keeps its plan, baseline, runs, records and steps.
#[derive(Debug, Clone)]
pub struct State {
    pub dir: PathBuf,
}

impl State {
    /// A new state directory `<root>/<unix time>-<pid>`.
    pub fn create(root: &Path) -> Result<State> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dir = root.join(format!("{stamp}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(State { dir })
    }

    /// Copies the running binary into the state directory: what every
    /// step runs.
    pub fn copy_of_this_binary(&self) -> Result<PathBuf> {
        let me = std::env::current_exe().context("cannot find this binary")?;
        let name = me.file_name().map_or("bisect-exe".into(), |n| n.to_owned());
        let copy = self.dir.join(name);
        std::fs::copy(&me, &copy).with_context(|| format!("cannot copy {}", me.display()))?;
        Ok(copy)
    }

    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    pub fn runs(&self) -> PathBuf {
        self.dir.join("runs")
    }
    pub fn steps(&self) -> PathBuf {
        self.dir.join("steps.jsonl")
    }
    pub fn plan(&self) -> PathBuf {
        self.dir.join("plan.json")
    }
    /// The record of the boot named `name`.
    pub fn record(&self, name: &str) -> PathBuf {
        self.dir.join("records").join(format!("{name}.json"))
    }
    /// The request of the boot named `name` (for a boot in another process).
    pub fn request(&self, name: &str) -> PathBuf {
        self.dir.join("requests").join(format!("{name}.json"))
    }

    fn append_step(&self, step: &Step) -> Result<()> {
        use std::io::Write;
        let path = self.steps();
        let mut line = serde_json::to_string(step)?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(line.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Every step logged so far (a line that does not parse is left out).
    pub fn read_steps(&self) -> Vec<Step> {
        std::fs::read_to_string(self.steps())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Writes `value` as JSON to `path` (its directory created; a temporary
/// renamed into place, so a reader in another process never sees half).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    kbuild::write_if_changed(path, text.as_bytes()).map(|_| ())
}

/// Reads JSON written by [`write_json`].
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid record", path.display()))
}

/// Everything one boot needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRequest {
    /// Kernel spec (`build:DIR`, `debian:6.1`, a path).
    pub kernel: String,
    /// The scenario file.
    pub scenario: PathBuf,
    /// The bisection's state directory.
    pub state: PathBuf,
    /// Names this boot's record and run directory.
    pub name: String,
    /// Record the output as the baseline snapshot.
    pub baseline: bool,
    /// Host executables packed into the guest's initramfs.
    pub pack: Vec<String>,
}

/// Where a bisection's boots run.
pub trait Booter {
    fn boot(&self, req: &BootRequest) -> Result<BootRecord>;
}

/// Boots with `kestrel` in this process's machine (KVM that boots kernels).
pub struct Here {
    pub kestrel: PathBuf,
}

impl Booter for Here {
    fn boot(&self, req: &BootRequest) -> Result<BootRecord> {
        boot_here(req, &self.kestrel)
    }
}

/// One scenario run with `kestrel`; with `req.baseline` its output becomes
/// the baseline snapshot.
pub fn boot_here(req: &BootRequest, kestrel: &Path) -> Result<BootRecord> {
    let scenario = Scenario::load(&req.scenario)?;
    let state = State {
        dir: req.state.clone(),
    };
    let mut options = SuiteOptions::new(&req.state);
    options.scenario_dirs = vec![scenario.dir().to_path_buf()];
    options.snapshots_dir = Some(state.snapshots());
    options.artifacts_root = state.runs();
    options.run_id = Some(req.name.clone());
    options.kernels = vec![req.kernel.clone()];
    options.update = req.baseline;
    options.progress = false;
    options.jobs = 1;
    let mut backend = KestrelBinary::new(kestrel.to_path_buf());
    let probes_dir = options.artifacts_root.join("probes");
    let argv = scenario.command.argv(&probes_dir);
    let mut pack = req.pack.clone();
    if let Some(program) = argv.first() {
        if !program.starts_with(&probes_dir.display().to_string()) && !pack.contains(program) {
            pack.push(program.clone());
        }
    }
    for p in pack {
        backend.extra_args.extend(["--pack".to_owned(), p]);
    }
    let session = Session::new(options);
    let case = Case {
        scenario: Arc::new(scenario),
        kernel: req.kernel.clone(),
    };
    let result = session.run_case(&case, &backend);
    Ok(BootRecord {
        verdict: Ran::of(&result.verdict),
        boot_ms: result.boot_ms,
        wall_ms: result.wall_ms,
        artifacts: result.artifacts.clone(),
        reason: result.verdict.reason(),
    })
}

/// What every `bisect-step` of a git bisection does, in `plan.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    pub src: PathBuf,
    pub out: PathBuf,
    /// The scenario file.
    pub scenario: PathBuf,
    /// `kernel build --config` values.
    pub config: Vec<String>,
    pub jobs: usize,
    pub on_timeout: Policy,
    pub on_boot_failure: Policy,
    pub pack: Vec<String>,
    /// Boots go to the binary's other booter (xtask: the nested rig).
    pub rig: bool,
}

/// The bisection asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The scenario file.
    pub scenario: PathBuf,
    pub target: Target,
    /// As for `kernel build`: kestrel, defconfig or a fragment file.
    pub config: Vec<String>,
    /// Build directory reused by every step (default: `kernel build`'s).
    pub out: Option<PathBuf>,
    pub jobs: Option<usize>,
    pub on_timeout: Policy,
    pub on_boot_failure: Policy,
    pub pack: Vec<String>,
}

/// What is bisected.
#[derive(Debug, Clone)]
pub enum Target {
    /// A clean git kernel tree between two revisions.
    Git {
        src: PathBuf,
        good: String,
        bad: String,
    },
    /// Prebuilt kernels, oldest (passing) first, newest (failing) last.
    Kernels(Vec<String>),
}

/// What the driving binary provides.
pub struct Engine<'a> {
    pub state: State,
    /// The copy of the binary ([`State::copy_of_this_binary`]) and the
    /// arguments before `--state DIR --kind K` that make it run one step.
    pub step_command: Vec<std::ffi::OsString>,
    /// Where boots run.
    pub booter: &'a dyn Booter,
    /// Recorded in the plan: steps use their binary's other booter.
    pub rig: bool,
    /// The default build directory's base (`kbuild::default_out`).
    pub kbuild_base: PathBuf,
    /// Fetches (or checks) a kernel spec before a list bisection.
    pub fetch: &'a dyn Fn(&str) -> Result<()>,
}

/// Set by the signal thread on SIGINT/SIGTERM/SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The process group the signal thread forwards signals to (0: none).
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// Whether SIGINT/SIGTERM/SIGHUP arrived since [`take_signals`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this (still single-threaded)
/// process and starts a thread that takes them: it records the interrupt
/// and forwards the signal to the running step's process group, so this
/// process lives on to restore the tree. Children get a clean signal mask
/// (std resets it at spawn). Call before any other thread starts.
pub fn take_signals() -> Result<()> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use;
    // pthread_sigmask only changes this thread's mask (inherited by the
    // signal thread started below).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block SIGINT for the bisection's clean-up");
        }
        set
    };
    std::thread::Builder::new()
        .name("kestrel_bisect_signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid initialised signal set and `sig` a
            // valid out-pointer; sigwait blocks until one arrives.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("bisect: interrupted; stopping the bisection and restoring the tree");
            let group = CHILD_GROUP.load(Ordering::SeqCst);
            if group > 0 {
                // SAFETY: kill with a negative pid signals a process group we
                // started; it has no memory effects.
                unsafe { libc::kill(-group, sig) };
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Runs `cmd` in a process group of its own, which the signal thread
/// interrupts on Ctrl-C; returns its exit code (128+n for signal n).
fn run_grouped(mut cmd: Command, what: &str) -> Result<i32> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    cmd.process_group(0).stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {what}"))?;
    CHILD_GROUP.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait();
    CHILD_GROUP.store(0, Ordering::SeqCst);
    let status = status.with_context(|| format!("could not wait for {what}"))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// `bisect-step --state DIR --kind K`: build HEAD of the plan's tree,
/// boot through the booter `booter_for` picks for the plan (xtask: the rig
/// when `plan.rig`), return git's code. Never an `Err`: a broken harness
/// is the abort code, with the reason on stderr.
pub fn run_step(
    state: &Path,
    kind: StepKind,
    booter_for: &dyn Fn(&StepPlan) -> Result<Box<dyn Booter>>,
) -> u8 {
    let state = State {
        dir: state.to_path_buf(),
    };
    let step = read_json::<StepPlan>(&state.plan()).and_then(|plan| {
        let booter = booter_for(&plan)?;
        step(&plan, &state, kind, booter.as_ref())
    });
    match step {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bisect: step failed, aborting the bisection: {e:#}");
            ABORT
        }
    }
}

/// Builds and boots HEAD of `plan.src`; logs and records one step.
fn step(plan: &StepPlan, state: &State, kind: StepKind, booter: &dyn Booter) -> Result<u8> {
    let head = kbuild::git_output(&plan.src, &["rev-parse", "HEAD"])?
        .trim()
        .to_owned();
    let subject = kbuild::git_output(&plan.src, &["log", "-1", "--format=%s"])?
        .trim()
        .to_owned();
    let short = &head[..head.len().min(12)];
    let build = Plan {
        src: plan.src.clone(),
        out: plan.out.clone(),
        configs: ConfigSet::parse(&plan.config)?,
        jobs: plan.jobs,
        output: Output::LogFile,
        reproducible: true,
    };
    let build_start = Instant::now();
    let built = kbuild::build(&build);
    let build_secs = build_start.elapsed().as_secs_f64();
    let mut record = Step {
        kind,
        revision: head.clone(),
        build_secs: Some(build_secs),
        boot_secs: None,
        outcome: Outcome::Skip,
        verdict: Ran::BuildFailed,
        artifacts: None,
    };
    let kind = kind.as_str();
    match built {
        Ok(_) => {}
        Err(BuildError::Source(e)) => {
            state.append_step(&record)?;
            let why = kbuild::log_tail(&plan.out.join("kestrel-build.log"), 0);
            let why = why.first().map_or_else(|| format!("{e:#}"), Clone::clone);
            eprintln!(
                "bisect: {kind} {short} \"{subject}\": build failed in {build_secs:.1} s ({}) → skip",
                first_line(&why)
            );
            return Ok(SKIP);
        }
        Err(BuildError::Setup(e)) => return Err(e),
    }
    let request = BootRequest {
        kernel: format!("build:{}", plan.out.display()),
        scenario: plan.scenario.clone(),
        state: state.dir.clone(),
        name: format!("{kind}-{short}"),
        baseline: record.kind == StepKind::Good,
        pack: plan.pack.clone(),
    };
    let boot_start = Instant::now();
    let result = booter.boot(&request)?;
    let boot_secs = boot_start.elapsed().as_secs_f64();
    let code = result.code(plan.on_timeout, plan.on_boot_failure);
    record.boot_secs = Some(boot_secs);
    record.outcome = Outcome::of_code(code);
    record.verdict = result.verdict;
    record.artifacts = Some(result.artifacts.clone());
    state.append_step(&record)?;
    let guest_boot = result
        .boot_ms
        .map_or(String::new(), |b| format!(" (guest {b} ms)"));
    eprintln!(
        "bisect: {kind} {short} \"{subject}\": build {build_secs:.1} s, boot {boot_secs:.1} s{guest_boot}, {}{} → {}",
        result.verdict.as_str(),
        result.why(),
        record.outcome.as_str()
    );
    Ok(code)
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(160) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// The branch (or detached commit) to return to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Original {
    Branch(String),
    Detached(String),
}

/// Puts the user's tree back: ends any bisection, checks out the recorded
/// ref, removes a stale index lock left by a killed git.
struct TreeGuard {
    src: PathBuf,
    git_dir: PathBuf,
    original: Original,
    head: String,
    restored: bool,
}

impl TreeGuard {
    fn restore(&mut self) -> Result<()> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        let lock = self.git_dir.join("index.lock");
        if lock.exists() {
            eprintln!(
                "bisect: removing {} left by an interrupted git",
                lock.display()
            );
            let _ = std::fs::remove_file(&lock);
        }
        if self.git_dir.join("BISECT_START").exists() {
            let _ = kbuild::git_output(&self.src, &["bisect", "reset"]);
        }
        match &self.original {
            Original::Branch(b) => kbuild::git_output(&self.src, &["checkout", "-q", b])?,
            Original::Detached(sha) => {
                kbuild::git_output(&self.src, &["checkout", "-q", "--detach", sha])?
            }
        };
        let head = kbuild::git_output(&self.src, &["rev-parse", "HEAD"])?;
        let status = kbuild::git_status(&self.src).unwrap_or_default();
        if head.trim() != self.head || !status.trim().is_empty() {
            bail!(
                "could not put {} back as it was (HEAD {}, {} changed paths); check it by hand",
                self.src.display(),
                head.trim(),
                status.lines().count()
            );
        }
        Ok(())
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("error: {e:#}");
        }
    }
}

/// Runs the bisection, prints the report on stdout, returns the
/// conclusion. The caller has called [`take_signals`].
pub fn run(req: &Request, engine: &Engine<'_>) -> Result<Conclusion> {
    let scenario = std::fs::canonicalize(&req.scenario).unwrap_or_else(|_| req.scenario.clone());
    match &req.target {
        Target::Kernels(kernels) => run_list(req, kernels, &scenario, engine),
        Target::Git { src, good, bad } => run_git(req, src, good, bad, &scenario, engine),
    }
}

fn run_git(
    req: &Request,
    src: &Path,
    good: &str,
    bad: &str,
    scenario: &Path,
    engine: &Engine<'_>,
) -> Result<Conclusion> {
    let started = Instant::now();
    let src = kbuild::check_source_tree(src)?;
    let Some(status) = kbuild::git_status(&src) else {
        bail!(
            "{} is not the top of a git work tree; bisecting needs one (or use --kernels)",
            src.display()
        );
    };
    if !status.trim().is_empty() {
        let first = status.lines().next().unwrap_or("").trim();
        bail!(
            "{} has uncommitted changes ({} paths, such as `{first}`); commit or stash them first, since bisecting checks out other revisions",
            src.display(),
            status.lines().count()
        );
    }
    let git_dir =
        PathBuf::from(kbuild::git_output(&src, &["rev-parse", "--absolute-git-dir"])?.trim());
    if git_dir.join("BISECT_START").exists() {
        bail!(
            "a git bisect is already in progress in {}; finish it or run `git bisect reset` there first",
            src.display()
        );
    }
    let resolve = |rev: &str| -> Result<String> {
        kbuild::git_output(
            &src,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{rev}^{{commit}}"),
            ],
        )
        .map(|s| s.trim().to_owned())
        .map_err(|_| anyhow::anyhow!("revision `{rev}` does not exist in {}", src.display()))
    };
    let good_sha = resolve(good)?;
    let bad_sha = resolve(bad)?;
    if kbuild::git_output(&src, &["merge-base", "--is-ancestor", &good_sha, &bad_sha]).is_err() {
        bail!("the good revision `{good}` is not an ancestor of the bad revision `{bad}`");
    }
    let head = kbuild::git_output(&src, &["rev-parse", "HEAD"])?
        .trim()
        .to_owned();
    let original = match kbuild::git_output(&src, &["symbolic-ref", "-q", "--short", "HEAD"]) {
        Ok(b) if !b.trim().is_empty() => Original::Branch(b.trim().to_owned()),
        _ => Original::Detached(head.clone()),
    };
    let configs = ConfigSet::parse(&req.config)?;
    let out = match &req.out {
        Some(o) => std::path::absolute(o).context("cannot resolve --out")?,
        None => kbuild::default_out(&engine.kbuild_base, &src, &configs),
    };
    let plan = StepPlan {
        src: src.clone(),
        out: out.clone(),
        scenario: scenario.to_path_buf(),
        config: configs
            .fragments
            .iter()
            .map(|f| f.display().to_string())
            .chain((configs.base == kbuild::Base::Defconfig).then(|| "defconfig".to_owned()))
            .collect(),
        jobs: kbuild::jobs(req.jobs)?,
        on_timeout: req.on_timeout,
        on_boot_failure: req.on_boot_failure,
        pack: req.pack.clone(),
        rig: engine.rig,
    };
    write_json(&engine.state.plan(), &plan)?;
    eprintln!(
        "bisect: {} from {} (good) to {} (bad), scenario {}, build dir {}, log {}",
        src.display(),
        &good_sha[..12],
        &bad_sha[..12],
        scenario.display(),
        out.display(),
        engine.state.steps().display()
    );
    let mut guard = TreeGuard {
        src: src.clone(),
        git_dir,
        original,
        head,
        restored: false,
    };
    let result = bisect_git(&src, &good_sha, &bad_sha, engine);
    let restored = guard.restore();
    let conclusion = result?;
    restored?;
    report(Some(&src), &engine.state, &conclusion, started);
    Ok(conclusion)
}

/// The step command for `kind`.
fn step_command(engine: &Engine<'_>, kind: StepKind) -> Vec<std::ffi::OsString> {
    let mut argv = engine.step_command.clone();
    argv.extend([
        "--state".into(),
        engine.state.dir.clone().into_os_string(),
        "--kind".into(),
        kind.as_str().into(),
    ]);
    argv
}

/// The endpoints, then `git bisect run`; the conclusion from the log.
fn bisect_git(src: &Path, good: &str, bad: &str, engine: &Engine<'_>) -> Result<Conclusion> {
    let endpoint = |rev: &str, kind: StepKind| -> Result<i32> {
        kbuild::git_output(src, &["checkout", "-q", "--detach", rev])?;
        let argv = step_command(engine, kind);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let code = run_grouped(cmd, "the bisect step")?;
        check_interrupted()?;
        Ok(code)
    };
    match endpoint(good, StepKind::Good)? {
        0 => {}
        125 => bail!(
            "the good revision {} does not build or boot (see above), so it cannot be the baseline",
            &good[..12]
        ),
        1 => bail!(
            "the scenario fails on the good revision {} (see above); pick an older --good",
            &good[..12]
        ),
        code => bail!("the step on the good revision failed (exit {code}): see above"),
    }
    match endpoint(bad, StepKind::Bad)? {
        0 => bail!(
            "the scenario passes on the bad revision {} too, so there is nothing to bisect",
            &bad[..12]
        ),
        125 => bail!(
            "the bad revision {} does not build (see above); pick a --bad that builds",
            &bad[..12]
        ),
        1 => {}
        code => bail!("the step on the bad revision failed (exit {code}): see above"),
    }
    kbuild::git_output(src, &["bisect", "start", bad, good])?;
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(src)
        .args(["bisect", "run"])
        .args(step_command(engine, StepKind::Step));
    let code = run_grouped(cmd, "git bisect run")?;
    check_interrupted()?;
    let log = kbuild::git_output(src, &["bisect", "log"])?;
    if let Some(c) = parse_bisect_log(&log) {
        return Ok(c);
    }
    bail!("git bisect run ended (exit {code}) without naming a first bad commit: see its output above")
}

/// The final report on stdout. `src` is the git tree (`None` in list mode).
fn report(src: Option<&Path>, state: &State, conclusion: &Conclusion, started: Instant) {
    let steps = state.read_steps();
    let built = steps
        .iter()
        .filter(|s| s.verdict != Ran::BuildFailed)
        .count();
    let skipped = steps.iter().filter(|s| s.outcome == Outcome::Skip).count();
    let good_run = steps.iter().find(|s| s.kind == StepKind::Good);
    println!();
    match conclusion {
        Conclusion::FirstBad { sha, subject } => {
            match src {
                Some(_) => println!("first bad commit: {sha} {subject}"),
                None => println!("first failing kernel: {sha}"),
            }
            let bad_run = steps
                .iter()
                .rev()
                .find(|s| &s.revision == sha && s.artifacts.is_some());
            let dirs = good_run
                .and_then(|g| g.artifacts.as_ref())
                .zip(bad_run.and_then(|b| b.artifacts.as_ref().map(|a| (a, b.verdict))));
            if let Some((good_dir, (bad_dir, bad_verdict))) = dirs {
                let read = |d: &Path| {
                    std::fs::read_to_string(d.join("snapshot.txt"))
                        .or_else(|_| std::fs::read_to_string(d.join("stdout")))
                        .unwrap_or_default()
                };
                let diff = line_diff(&read(good_dir), &read(bad_dir));
                if diff.is_empty() {
                    println!(
                        "scenario output: the same as on the good revision ({} there: see {})",
                        bad_verdict.as_str(),
                        bad_dir.display()
                    );
                } else {
                    println!("scenario output, good (-) vs first bad (+):");
                    print!("{diff}");
                }
            }
        }
        Conclusion::Ambiguous(list) => {
            println!("only skipped commits were left; the first bad commit is one of:");
            for (sha, subject) in list {
                println!("  {sha} {subject}");
            }
        }
    }
    let restored = src.map_or(String::new(), |s| {
        format!("; {} is back as it was", s.display())
    });
    println!(
        "{} steps ({} booted, {} skipped) in {:.0} s{restored}; log: {}",
        steps.len(),
        built,
        skipped,
        started.elapsed().as_secs_f64(),
        state.steps().display()
    );
}

/// List mode: a binary search over prebuilt kernels.
fn run_list(
    req: &Request,
    kernels: &[String],
    scenario: &Path,
    engine: &Engine<'_>,
) -> Result<Conclusion> {
    let started = Instant::now();
    let n = kernels.len();
    if n < 2 {
        bail!("--kernels needs at least two kernels: a passing one first and a failing one last");
    }
    for spec in kernels {
        (engine.fetch)(spec)?;
    }
    let state = &engine.state;
    let test = |i: usize, kind: StepKind| -> Result<u8> {
        check_interrupted()?;
        let spec = &kernels[i];
        let request = BootRequest {
            kernel: spec.clone(),
            scenario: scenario.to_path_buf(),
            state: state.dir.clone(),
            name: format!("kernel-{i}"),
            baseline: kind == StepKind::Good,
            pack: req.pack.clone(),
        };
        let t = Instant::now();
        let r = engine.booter.boot(&request)?;
        let code = r.code(req.on_timeout, req.on_boot_failure);
        let outcome = Outcome::of_code(code);
        state.append_step(&Step {
            kind,
            revision: spec.clone(),
            build_secs: None,
            boot_secs: Some(t.elapsed().as_secs_f64()),
            outcome,
            verdict: r.verdict,
            artifacts: Some(r.artifacts.clone()),
        })?;
        eprintln!(
            "bisect: {spec}: boot {:.1} s, {}{} → {}",
            t.elapsed().as_secs_f64(),
            r.verdict.as_str(),
            r.why(),
            outcome.as_str()
        );
        Ok(code)
    };
    if test(0, StepKind::Good)? != GOOD {
        bail!(
            "the scenario fails on the first kernel {}, so it cannot be the baseline",
            kernels[0]
        );
    }
    if test(n - 1, StepKind::Bad)? == GOOD {
        bail!(
            "the scenario passes on the last kernel {} too, so there is nothing to bisect",
            kernels[n - 1]
        );
    }
    let found = bisect_list(n, |i| {
        if i == n - 1 {
            Ok(BAD)
        } else {
            test(i, StepKind::Step)
        }
    })?;
    let conclusion = match found {
        Ok(i) => Conclusion::FirstBad {
            sha: kernels[i].clone(),
            subject: String::new(),
        },
        Err(list) => Conclusion::Ambiguous(
            list.into_iter()
                .map(|i| (kernels[i].clone(), String::new()))
                .collect(),
        ),
    };
    report(None, state, &conclusion, started);
    Ok(conclusion)
}

/// The command-line arguments `kestrel bisect` and `cargo xtask bisect`
/// share.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct BisectArgs {
    /// A git kernel tree (clean: no uncommitted changes).
    #[arg(long, conflicts_with = "kernels")]
    pub src: Option<PathBuf>,
    /// The last revision known to pass.
    #[arg(long, requires = "src")]
    pub good: Option<String>,
    /// The first revision known to fail.
    #[arg(long, requires = "src")]
    pub bad: Option<String>,
    /// Instead of a tree: prebuilt kernels, oldest (passing) first, newest
    /// (failing) last.
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// A scenario name (DIR/NAME.toml in a `--scenarios DIR`) or the path
    /// of a scenario file.
    #[arg(long)]
    pub scenario: String,
    /// Directories to look the scenario name up in (repeatable).
    #[arg(long = "scenarios", value_name = "DIR")]
    pub scenarios: Vec<PathBuf>,
    /// As for `kernel build` (the build directory is reused by every step).
    #[command(flatten)]
    pub build: kestrel_kernels::commands::BuildOptions,
    /// What a guest timeout counts as: bad or skip.
    #[arg(long, default_value = "bad")]
    pub on_timeout: Policy,
    /// What a kernel that does not boot (or panics) counts as: bad or skip.
    #[arg(long, default_value = "bad")]
    pub on_boot_failure: Policy,
    /// Host executables packed into the guest's initramfs (the scenario's
    /// own program is packed too).
    #[arg(long)]
    pub pack: Vec<String>,
}

#[cfg(feature = "cli")]
impl BisectArgs {
    /// The request, the scenario looked up in `--scenarios` (or in
    /// `default_dirs` when none is given).
    pub fn request(&self, default_dirs: &[PathBuf]) -> Result<Request> {
        let dirs = if self.scenarios.is_empty() {
            default_dirs
        } else {
            &self.scenarios
        };
        let scenario = load_scenario(&self.scenario, dirs)?;
        let target = if !self.kernels.is_empty() {
            if self.kernels.len() < 2 {
                bail!("--kernels needs at least two kernels: a passing one first and a failing one last");
            }
            Target::Kernels(self.kernels.clone())
        } else {
            let (Some(src), Some(good), Some(bad)) = (&self.src, &self.good, &self.bad) else {
                bail!("bisect needs --src DIR --good REV --bad REV, or --kernels SPEC,SPEC,…");
            };
            Target::Git {
                src: src.clone(),
                good: good.clone(),
                bad: bad.clone(),
            }
        };
        Ok(Request {
            scenario: scenario.path.clone(),
            target,
            config: self.build.config.clone(),
            out: self.build.out.clone(),
            jobs: self.build.jobs,
            on_timeout: self.on_timeout,
            on_boot_failure: self.on_boot_failure,
            pack: self.pack.clone(),
        })
    }
}

/// `bisect-step` (hidden; what `git bisect run` calls).
#[cfg(feature = "cli")]
#[derive(Debug, Clone, clap::Args)]
pub struct StepArgs {
    /// The bisection's state directory (its `plan.json`).
    #[arg(long)]
    pub state: PathBuf,
    /// good, bad (the endpoints) or step.
    #[arg(long, default_value = "step")]
    pub kind: StepKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisect_log_conclusions() {
        let log = "\
git bisect start 'HEAD' 'v6.1'
# status: waiting for both good and bad commits
# bad: [9f3e1c0d] fixture: harmless 10
git bisect bad 9f3e1c0d
# skip: [11aa22bb] fixture: does not build
git bisect skip 11aa22bb
# first bad commit: [5b2c9d7e0123] fixture: /proc/version says \"Linux kernel version\"
";
        assert_eq!(
            parse_bisect_log(log),
            Some(Conclusion::FirstBad {
                sha: "5b2c9d7e0123".into(),
                subject: "fixture: /proc/version says \"Linux kernel version\"".into()
            })
        );
        let ambiguous = "# only skipped commits left to test\n# possible first bad commit: [aa] one\n# possible first bad commit: [bb] two\n";
        assert_eq!(
            parse_bisect_log(ambiguous),
            Some(Conclusion::Ambiguous(vec![
                ("aa".into(), "one".into()),
                ("bb".into(), "two".into())
            ]))
        );
        assert_eq!(parse_bisect_log("git bisect start\n"), None);
    }

    #[test]
    fn records_steps_and_plans_round_trip_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            dir: dir.path().to_owned(),
        };
        let r = BootRecord {
            verdict: Ran::Fail,
            boot_ms: Some(812),
            wall_ms: 4100,
            artifacts: "/t/runs/x".into(),
            reason: "snapshot differs\tline 2\nand more".into(),
        };
        write_json(&state.record("good-abc"), &r).unwrap();
        assert_eq!(
            read_json::<BootRecord>(&state.record("good-abc")).unwrap(),
            r
        );
        let text = std::fs::read_to_string(state.record("good-abc")).unwrap();
        assert!(text.contains("\"verdict\": \"fail\""), "{text}");

        let s = Step {
            kind: StepKind::Step,
            revision: "abc".into(),
            build_secs: Some(12.34),
            boot_secs: None,
            outcome: Outcome::Skip,
            verdict: Ran::BuildFailed,
            artifacts: None,
        };
        state.append_step(&s).unwrap();
        let t = Step {
            kind: StepKind::Good,
            verdict: Ran::BootFailure,
            outcome: Outcome::Bad,
            artifacts: Some("/a b/c".into()),
            ..s.clone()
        };
        state.append_step(&t).unwrap();
        // A torn last line (a step killed mid-write) is left out.
        std::fs::OpenOptions::new()
            .append(true)
            .open(state.steps())
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"kind\":\"st"))
            .unwrap();
        assert_eq!(state.read_steps(), vec![s, t]);

        let plan = StepPlan {
            src: "/src".into(),
            out: "/out".into(),
            scenario: "/s/x.toml".into(),
            config: vec!["defconfig".into()],
            jobs: 2,
            on_timeout: Policy::Skip,
            on_boot_failure: Policy::Bad,
            pack: vec!["/bin/true".into()],
            rig: true,
        };
        write_json(&state.plan(), &plan).unwrap();
        assert_eq!(read_json::<StepPlan>(&state.plan()).unwrap(), plan);
        std::fs::write(state.plan(), "{\"src\": 3}").unwrap();
        let err = read_json::<StepPlan>(&state.plan()).unwrap_err();
        assert!(
            format!("{err:#}").contains("is not a valid record"),
            "{err:#}"
        );
    }

    #[test]
    fn a_step_without_a_plan_aborts_the_bisection() {
        let dir = tempfile::tempdir().unwrap();
        let booter_for = |_: &StepPlan| -> Result<Box<dyn Booter>> {
            Ok(Box::new(Here {
                kestrel: "/nonexistent".into(),
            }))
        };
        assert_eq!(run_step(dir.path(), StepKind::Step, &booter_for), ABORT);
    }

    #[test]
    fn verdicts_map_to_git_codes() {
        let rec = |v: Ran| BootRecord {
            verdict: v,
            boot_ms: None,
            wall_ms: 0,
            artifacts: PathBuf::new(),
            reason: String::new(),
        };
        assert_eq!(rec(Ran::Pass).code(Policy::Bad, Policy::Bad), GOOD);
        assert_eq!(rec(Ran::Fail).code(Policy::Skip, Policy::Skip), BAD);
        assert_eq!(rec(Ran::Timeout).code(Policy::Bad, Policy::Skip), BAD);
        assert_eq!(rec(Ran::Timeout).code(Policy::Skip, Policy::Bad), SKIP);
        assert_eq!(rec(Ran::Panic).code(Policy::Bad, Policy::Skip), SKIP);
        assert_eq!(rec(Ran::BootFailure).code(Policy::Skip, Policy::Bad), BAD);
        assert_eq!(rec(Ran::VmmError).code(Policy::Bad, Policy::Bad), ABORT);
        assert_eq!("skip".parse::<Policy>(), Ok(Policy::Skip));
        assert!("maybe".parse::<Policy>().is_err());
        assert_eq!(Ran::of(&Verdict::BootFailure("x".into())), Ran::BootFailure);
        assert_eq!(Outcome::of_code(7), Outcome::Abort);
    }

    #[test]
    fn list_search_with_skips() {
        // First bad is 6 of 0..=9.
        let truth = |i: usize| if i >= 6 { BAD } else { GOOD };
        let mut tested = Vec::new();
        let r = bisect_list(10, |i| {
            tested.push(i);
            Ok(truth(i))
        })
        .unwrap();
        assert_eq!(r, Ok(6));
        assert!(tested.len() <= 4, "{tested:?}");
        // 4, the first pick, does not boot (skip): still found.
        let r = bisect_list(10, |i| Ok(if i == 4 { SKIP } else { truth(i) })).unwrap();
        assert_eq!(r, Ok(6));
        // 5, the last good one, is skipped: 5 or 6.
        let r = bisect_list(10, |i| Ok(if i == 5 { SKIP } else { truth(i) })).unwrap();
        assert_eq!(r, Err(vec![5, 6]));
        // 6 is skipped and is the first bad: the answer stays open.
        let r = bisect_list(10, |i| Ok(if i == 6 { SKIP } else { truth(i) })).unwrap();
        assert_eq!(r, Err(vec![6, 7]));
        assert_eq!(bisect_list(2, |_| Ok(GOOD)).unwrap(), Ok(1));
        assert!(bisect_list(1, |_| Ok(GOOD)).is_err());
        assert!(bisect_list(5, |_| Ok(ABORT)).is_err());
    }

    #[test]
    fn diffs_show_changed_lines_with_context() {
        let good = "== stdout ==\nLinux version [RELEASE] (kestrel@kestrel)\nend\n";
        let bad = "== stdout ==\nLinux kernel version [RELEASE] (kestrel@kestrel)\nend\n";
        assert_eq!(
            line_diff(good, bad),
            "  == stdout ==\n- Linux version [RELEASE] (kestrel@kestrel)\n+ Linux kernel version [RELEASE] (kestrel@kestrel)\n  end\n"
        );
        assert_eq!(line_diff("a\nb\n", "a\nb\n"), "");
        assert_eq!(line_diff("a\nb", "a\nc"), "  a\n- b\n+ c\n");
    }

    #[test]
    fn the_tree_guard_ends_the_bisection_and_restores_the_branch() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        let git = |args: &[&str]| kbuild::git_output(repo, args).unwrap();
        git(&["init", "-q", "-b", "work"]);
        git(&["config", "user.name", "t"]);
        git(&["config", "user.email", "t@t"]);
        for n in 0..4 {
            std::fs::write(repo.join("f"), format!("{n}\n")).unwrap();
            git(&["add", "f"]);
            git(&["commit", "-q", "-m", &format!("c{n}")]);
        }
        let head = git(&["rev-parse", "HEAD"]).trim().to_owned();
        let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"]).trim());
        let mut guard = TreeGuard {
            src: repo.to_owned(),
            git_dir: git_dir.clone(),
            original: Original::Branch("work".into()),
            head: head.clone(),
            restored: false,
        };
        git(&["checkout", "-q", "--detach", "HEAD~3"]);
        git(&["bisect", "start", "work", "HEAD"]);
        // A git killed mid-checkout leaves its lock behind.
        std::fs::write(git_dir.join("index.lock"), "").unwrap();
        guard.restore().unwrap();
        assert!(!git_dir.join("BISECT_START").exists());
        assert_eq!(git(&["symbolic-ref", "--short", "HEAD"]).trim(), "work");
        assert_eq!(git(&["rev-parse", "HEAD"]).trim(), head);
        assert_eq!(kbuild::git_status(repo).unwrap(), "");
    }

    #[test]
    fn scenarios_are_found_by_name_or_path() {
        let builtin = vec![Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()];
        let s = load_scenario("boot_smoke", &builtin).unwrap();
        assert_eq!(s.name, "boot_smoke");
        let err = load_scenario("no_such_scenario", &builtin)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no scenario `no_such_scenario`") && err.contains("boot_smoke"),
            "{err}"
        );
        assert!(load_scenario("/no/such.toml", &builtin).is_err());

        // A user's own directory: looked up there, listed when missing.
        let own = tempfile::tempdir().unwrap();
        let own = own.path().to_path_buf();
        std::fs::write(own.join("mine.toml"), "run = [\"./mine.sh\"]\n").unwrap();
        let s = load_scenario("mine", std::slice::from_ref(&own)).unwrap();
        assert_eq!(s.dir(), std::fs::canonicalize(&own).unwrap());
        let err = load_scenario("boot_smoke", std::slice::from_ref(&own))
            .unwrap_err()
            .to_string();
        assert!(err.contains("known: mine"), "{err}");
        let err = load_scenario("mine", &[own.join("nope")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such directory"), "{err}");
    }
}

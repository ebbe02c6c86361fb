//! `cargo xtask bisect`: "it broke somewhere between these two commits" →
//! a named commit, with nobody at the terminal.
//!
//! Git mode (`--src --good --bad`): the tree must be clean; its branch (or
//! detached HEAD) is recorded. The good revision is built and booted first:
//! its scenario output becomes the baseline snapshot (in the run's state
//! dir), and the bad revision must fail against it. Then `git bisect start
//! BAD GOOD` and `git bisect run <xtask copy> bisect-step …`: each step
//! builds incrementally into one reused output dir on this host (build
//! failure → 125, skip), boots the kernel and runs the scenario — in the
//! nested rig when this host's KVM cannot boot Linux, one rig call per step
//! (`bisect-boot`) — and exits 0 (pass), 1 (fail; timeout and boot failure
//! per the flags) or 125 (skip); a broken harness exits 255, which makes
//! git abort. The report names the first bad commit from `git bisect log`,
//! its subject, the output diff against the good revision, and the steps.
//!
//! List mode (`--kernels A,B,…`): the same search over prebuilt kernels,
//! oldest first: the first must pass (baseline), the last must fail.
//!
//! Invariants: the user's tree ends as it began — `git bisect reset` and
//! a checkout of the recorded branch run on success, on error and on
//! Ctrl-C (every step, the endpoints included, runs as a child in a
//! process group of its own; SIGINT/SIGTERM/SIGHUP are taken by a signal
//! thread and forwarded to that group, so the cleanup always runs in this
//! process); the result is checked with `git status --porcelain`. Every
//! step appends one line to `<state>/steps.tsv`, which the report reads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kestrel_scenarios::{Case, KestrelBinary, Scenario, Session, SuiteOptions, Verdict};

use crate::kbuild::{self, BuildError, ConfigSet, Output, Plan};
use crate::rig::{self, RigArgs};
use crate::{guest, paths, tools};

/// Exit codes `git bisect run` understands.
pub const GOOD: u8 = 0;
pub const BAD: u8 = 1;
pub const SKIP: u8 = 125;
/// Any code above 127 aborts `git bisect run`.
pub const ABORT: u8 = 255;

/// What a timeout or a boot failure counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    Bad,
    Skip,
}

/// `cargo xtask bisect` arguments.
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
    /// A scenario name (scenarios/NAME.toml, or DIR/NAME.toml with
    /// `--scenarios DIR`) or the path of a scenario file.
    #[arg(long)]
    pub scenario: String,
    /// Directories to look the scenario name up in (repeatable; default:
    /// this workspace's `scenarios/`).
    #[arg(long = "scenarios", value_name = "DIR")]
    pub scenarios: Vec<PathBuf>,
    /// As for `kernel build`: kestrel, defconfig or a fragment file.
    #[arg(long = "config")]
    pub config: Vec<String>,
    /// Build directory reused by every step (default: the one `kernel build` uses).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Parallel make jobs.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// What a guest timeout counts as.
    #[arg(long, value_enum, default_value = "bad")]
    pub on_timeout: Policy,
    /// What a kernel that does not boot (or panics) counts as.
    #[arg(long, value_enum, default_value = "bad")]
    pub on_boot_failure: Policy,
    /// Host executables packed into the guest's initramfs (the scenario's
    /// own program is packed too).
    #[arg(long)]
    pub pack: Vec<String>,
}

/// How one boot ended, as the bisection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRecord {
    /// `pass`, `fail`, `timeout`, `panic`, `boot-failure`, `vmm-error`.
    pub verdict: String,
    pub boot_ms: Option<u64>,
    pub wall_ms: u64,
    pub artifacts: PathBuf,
    pub reason: String,
}

impl BootRecord {
    /// One tab-separated line (the reason last, tabs and newlines blanked).
    pub fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.verdict,
            self.boot_ms.map_or("-".into(), |b| b.to_string()),
            self.wall_ms,
            self.artifacts.display(),
            self.reason.replace(['\t', '\n'], " ")
        )
    }

    pub fn parse(line: &str) -> Option<BootRecord> {
        let mut f = line.trim_end_matches('\n').splitn(5, '\t');
        let verdict = f.next()?.to_owned();
        let boot = f.next()?;
        let boot_ms = if boot == "-" {
            None
        } else {
            Some(boot.parse().ok()?)
        };
        Some(BootRecord {
            verdict,
            boot_ms,
            wall_ms: f.next()?.parse().ok()?,
            artifacts: PathBuf::from(f.next()?),
            reason: f.next().unwrap_or("").to_owned(),
        })
    }

    /// The exit code for `git bisect run`.
    pub fn code(&self, on_timeout: Policy, on_boot_failure: Policy) -> u8 {
        let policy = |p| if p == Policy::Bad { BAD } else { SKIP };
        match self.verdict.as_str() {
            "pass" => GOOD,
            "fail" => BAD,
            "timeout" => policy(on_timeout),
            "panic" | "boot-failure" => policy(on_boot_failure),
            _ => ABORT,
        }
    }
}

/// One line of `<state>/steps.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `good`, `bad` (the endpoints) or `step`.
    pub kind: String,
    pub revision: String,
    pub build_secs: Option<f64>,
    pub boot_secs: Option<f64>,
    /// `good`, `bad`, `skip`, `abort`.
    pub outcome: String,
    pub verdict: String,
    pub artifacts: String,
}

impl Step {
    pub fn to_line(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.1}"));
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.kind,
            self.revision,
            secs(self.build_secs),
            secs(self.boot_secs),
            self.outcome,
            self.verdict,
            self.artifacts
        )
    }

    pub fn parse(line: &str) -> Option<Step> {
        let f: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        if f.len() != 7 {
            return None;
        }
        let secs = |s: &str| s.parse::<f64>().ok();
        Some(Step {
            kind: f[0].to_owned(),
            revision: f[1].to_owned(),
            build_secs: secs(f[2]),
            boot_secs: secs(f[3]),
            outcome: f[4].to_owned(),
            verdict: f[5].to_owned(),
            artifacts: f[6].to_owned(),
        })
    }
}

fn outcome_name(code: u8) -> &'static str {
    match code {
        GOOD => "good",
        BAD => "bad",
        SKIP => "skip",
        _ => "abort",
    }
}

/// What `git bisect log` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conclusion {
    /// `# first bad commit: [sha] subject`.
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

/// A line diff (longest common subsequence), `-` good, `+` bad, with one
/// line of context around changes.
pub fn line_diff(good: &str, bad: &str) -> String {
    let a: Vec<&str> = good.lines().collect();
    let b: Vec<&str> = bad.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(1);
        let hi = (k + 1).min(ops.len() - 1);
        (lo..=hi).any(|x| ops[x].0 != ' ')
    };
    let mut out = String::new();
    for (k, (op, line)) in ops.iter().enumerate() {
        if near_change(k) {
            out.push_str(&format!("{op} {line}\n"));
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
/// `dirs` that has one (`--scenarios DIR`; default: the workspace's
/// `scenarios/`).
pub fn load_scenario(name: &str, dirs: &[PathBuf]) -> Result<Scenario> {
    let as_path = Path::new(name);
    if name.ends_with(".toml") || name.contains('/') {
        if !as_path.is_file() {
            bail!("scenario file {name} does not exist");
        }
        return Ok(Scenario::load(as_path)?);
    }
    let dirs = if dirs.is_empty() {
        vec![paths::workspace().join("scenarios")]
    } else {
        crate::test::scenario_dirs(dirs)?
    };
    if let Some(path) = dirs
        .iter()
        .map(|d| d.join(format!("{name}.toml")))
        .find(|p| p.is_file())
    {
        return Ok(Scenario::load(&path)?);
    }
    let mut known: Vec<String> = dirs
        .iter()
        .flat_map(|d| kestrel_scenarios::scenario::scenario_files(d).unwrap_or_default())
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

/// Where a bisection keeps its baseline, runs and step log.
#[derive(Debug, Clone)]
pub struct State {
    pub dir: PathBuf,
}

impl State {
    fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    fn runs(&self) -> PathBuf {
        self.dir.join("runs")
    }
    fn steps(&self) -> PathBuf {
        self.dir.join("steps.tsv")
    }
    fn record(&self, name: &str) -> PathBuf {
        self.dir.join("records").join(name)
    }

    fn append_step(&self, step: &Step) -> Result<()> {
        use std::io::Write;
        let path = self.steps();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(step.to_line().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn read_steps(&self) -> Vec<Step> {
        std::fs::read_to_string(self.steps())
            .unwrap_or_default()
            .lines()
            .filter_map(Step::parse)
            .collect()
    }
}

/// Everything one boot needs, passed to `bisect-boot` inside the rig.
#[derive(Debug, Clone, clap::Args)]
pub struct BootArgs {
    /// Kernel spec (`build:DIR`, `debian:6.1`, a path).
    #[arg(long)]
    pub kernel: String,
    #[arg(long)]
    pub scenario: String,
    /// The bisection's state directory.
    #[arg(long)]
    pub state: PathBuf,
    /// Names this boot's record and run directory.
    #[arg(long)]
    pub name: String,
    /// Record the output as the baseline snapshot.
    #[arg(long)]
    pub baseline: bool,
    #[arg(long)]
    pub pack: Vec<String>,
}

/// `xtask bisect-boot` (hidden; runs where KVM boots kernels): one
/// scenario run, its record written to `<state>/records/<name>`.
pub fn run_boot(args: &BootArgs) -> Result<()> {
    let record = boot_here(args)?;
    let path = State {
        dir: args.state.clone(),
    }
    .record(&args.name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, record.to_line())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn boot_here(args: &BootArgs) -> Result<BootRecord> {
    let scenario = load_scenario(&args.scenario, &[])?;
    let state = State {
        dir: args.state.clone(),
    };
    let mut options = SuiteOptions::new(&paths::workspace());
    options.scenario_dirs = vec![scenario.dir().to_path_buf()];
    options.snapshots_dir = Some(state.snapshots());
    options.artifacts_root = state.runs();
    options.run_id = Some(args.name.clone());
    options.kernels = vec![args.kernel.clone()];
    options.update = args.baseline;
    options.progress = false;
    options.jobs = 1;
    let kestrel = guest::build_kestrel()?;
    let mut backend = KestrelBinary::new(kestrel);
    let probes_dir = options.artifacts_root.join("probes");
    let argv = scenario.command.argv(&probes_dir);
    let mut pack = args.pack.clone();
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
        kernel: args.kernel.clone(),
    };
    let result = session.run_case(&case, &backend);
    Ok(BootRecord {
        verdict: result.verdict.kind().to_owned(),
        boot_ms: result.boot_ms,
        wall_ms: result.wall_ms,
        artifacts: result.artifacts.clone(),
        reason: match &result.verdict {
            Verdict::Pass => String::new(),
            v => v.reason(),
        },
    })
}

/// Boots once — here on hardware KVM, else one rig call — and returns the
/// record. A rig failure is retried once; a second one is an error.
fn boot(args: &BootArgs, xtask: &Path, in_rig: bool) -> Result<BootRecord> {
    if !in_rig {
        return boot_here(args);
    }
    let record_path = State {
        dir: args.state.clone(),
    }
    .record(&args.name);
    let _ = std::fs::remove_file(&record_path);
    let mut cmd = vec![
        xtask.display().to_string(),
        "bisect-boot".into(),
        "--kernel".into(),
        args.kernel.clone(),
        "--scenario".into(),
        args.scenario.clone(),
        "--state".into(),
        args.state.display().to_string(),
        "--name".into(),
        args.name.clone(),
    ];
    if args.baseline {
        cmd.push("--baseline".into());
    }
    for p in &args.pack {
        cmd.extend(["--pack".into(), p.clone()]);
    }
    let mut rig_args = RigArgs::for_cmd(cmd, 300);
    // The scenario's directory (its files, probes), even under /tmp.
    if let Some(dir) = Path::new(&args.scenario).parent().filter(|d| d.is_dir()) {
        rig_args.writable.push(dir.to_path_buf());
    }
    rig_args.memory = 2048;
    rig_args.timeout = 1800;
    let interrupted = || INTERRUPTED.load(Ordering::SeqCst);
    match rig::run_retrying(&rig_args, 2, &interrupted)? {
        0 => {
            let text = std::fs::read_to_string(&record_path).with_context(|| {
                format!(
                    "the rig ran the scenario but wrote no {}",
                    record_path.display()
                )
            })?;
            BootRecord::parse(&text)
                .with_context(|| format!("{} is not a boot record", record_path.display()))
        }
        code => bail!("running the scenario in the rig failed (exit {code}): see above"),
    }
}

/// `xtask bisect-step` arguments (hidden; what `git bisect run` calls).
#[derive(Debug, Clone, clap::Args)]
pub struct StepArgs {
    #[arg(long)]
    pub src: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub state: PathBuf,
    #[arg(long)]
    pub scenario: String,
    #[arg(long = "config")]
    pub config: Vec<String>,
    #[arg(long)]
    pub jobs: usize,
    #[arg(long, value_enum)]
    pub on_timeout: Policy,
    #[arg(long, value_enum)]
    pub on_boot_failure: Policy,
    #[arg(long)]
    pub pack: Vec<String>,
    /// Boot through the rig.
    #[arg(long)]
    pub rig: bool,
    /// `good`, `bad` (the endpoints) or `step`, for the log.
    #[arg(long, default_value = "step")]
    pub kind: String,
    /// Record this run's output as the baseline snapshot.
    #[arg(long)]
    pub baseline: bool,
}

impl StepArgs {
    /// The arguments after `bisect-step` that reproduce these.
    fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--src".into(),
            self.src.display().to_string(),
            "--out".into(),
            self.out.display().to_string(),
            "--state".into(),
            self.state.display().to_string(),
            "--scenario".into(),
            self.scenario.clone(),
            "--jobs".into(),
            self.jobs.to_string(),
            "--on-timeout".into(),
            policy_arg(self.on_timeout).into(),
            "--on-boot-failure".into(),
            policy_arg(self.on_boot_failure).into(),
            "--kind".into(),
            self.kind.clone(),
        ];
        for c in &self.config {
            a.extend(["--config".into(), c.clone()]);
        }
        for p in &self.pack {
            a.extend(["--pack".into(), p.clone()]);
        }
        if self.rig {
            a.push("--rig".into());
        }
        if self.baseline {
            a.push("--baseline".into());
        }
        a
    }
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

/// `xtask bisect-step`: build HEAD, boot, exit with git's code. Never an
/// `Err`: a broken harness is the abort code, with the reason on stderr.
pub fn run_step(args: &StepArgs) -> u8 {
    match step(args, &args.kind, args.baseline) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bisect: step failed, aborting the bisection: {e:#}");
            ABORT
        }
    }
}

/// Builds and boots HEAD of `args.src`; logs and records one step.
fn step(args: &StepArgs, kind: &str, baseline: bool) -> Result<u8> {
    let head = kbuild::git_output(&args.src, &["rev-parse", "HEAD"])?
        .trim()
        .to_owned();
    let subject = kbuild::git_output(&args.src, &["log", "-1", "--format=%s"])?
        .trim()
        .to_owned();
    let state = State {
        dir: args.state.clone(),
    };
    let short = &head[..head.len().min(12)];
    let plan = Plan {
        src: args.src.clone(),
        out: args.out.clone(),
        configs: ConfigSet::parse(&args.config)?,
        jobs: args.jobs,
        output: Output::LogFile,
        reproducible: true,
    };
    let build_start = Instant::now();
    let built = kbuild::build(&plan);
    let build_secs = build_start.elapsed().as_secs_f64();
    let mut record = Step {
        kind: kind.to_owned(),
        revision: head.clone(),
        build_secs: Some(build_secs),
        boot_secs: None,
        outcome: String::new(),
        verdict: String::new(),
        artifacts: String::new(),
    };
    match built {
        Ok(_) => {}
        Err(BuildError::Source(e)) => {
            record.outcome = outcome_name(SKIP).into();
            record.verdict = "build-failed".into();
            state.append_step(&record)?;
            let why = kbuild::log_tail(&args.out.join("kestrel-build.log"), 0);
            let why = why.first().map_or_else(|| format!("{e:#}"), Clone::clone);
            eprintln!(
                "bisect: {kind} {short} \"{subject}\": build failed in {build_secs:.1} s ({}) → skip",
                first_line(&why)
            );
            return Ok(SKIP);
        }
        Err(BuildError::Setup(e)) => return Err(e),
    }
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let boot_args = BootArgs {
        kernel: format!("build:{}", args.out.display()),
        scenario: args.scenario.clone(),
        state: args.state.clone(),
        name: format!("{kind}-{short}"),
        baseline,
        pack: args.pack.clone(),
    };
    let boot_start = Instant::now();
    let result = boot(&boot_args, &xtask, args.rig)?;
    let boot_secs = boot_start.elapsed().as_secs_f64();
    let code = result.code(args.on_timeout, args.on_boot_failure);
    record.boot_secs = Some(boot_secs);
    record.outcome = outcome_name(code).into();
    record.verdict = result.verdict.clone();
    record.artifacts = result.artifacts.display().to_string();
    state.append_step(&record)?;
    let guest_boot = result
        .boot_ms
        .map_or(String::new(), |b| format!(" (guest {b} ms)"));
    let why = if result.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", first_line(&result.reason))
    };
    eprintln!(
        "bisect: {kind} {short} \"{subject}\": build {build_secs:.1} s, boot {boot_secs:.1} s{guest_boot}, {}{why} → {}",
        result.verdict,
        outcome_name(code)
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

/// Set by the signal thread on SIGINT/SIGTERM/SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The process group the signal thread forwards signals to (0: none).
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// Blocks SIGINT, SIGTERM and SIGHUP in this (still single-threaded)
/// process and starts a thread that takes them: it records the interrupt
/// and forwards the signal to the running `git bisect run` group, so this
/// process lives on to restore the tree. Children get a clean signal mask
/// (std resets it at spawn).
fn take_signals() -> Result<()> {
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

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// `cargo xtask bisect`: prints the report, returns the conclusion.
pub fn run(args: &BisectArgs) -> Result<Conclusion> {
    take_signals()?;
    let scenario = load_scenario(&args.scenario, &args.scenarios)?;
    let scenario_arg = std::fs::canonicalize(&scenario.path)
        .unwrap_or_else(|_| scenario.path.clone())
        .display()
        .to_string();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = State {
        dir: paths::kestrel_dir()
            .join("bisect")
            .join(format!("{stamp}-{}", std::process::id())),
    };
    std::fs::create_dir_all(&state.dir)
        .with_context(|| format!("cannot create {}", state.dir.display()))?;
    // Steps run a copy of this binary: a rebuild of xtask during a long
    // bisection must not change the tool under it.
    let xtask = state.dir.join("xtask");
    let me = std::env::current_exe().context("cannot find the xtask binary")?;
    std::fs::copy(&me, &xtask).with_context(|| format!("cannot copy {}", me.display()))?;
    let kestrel = guest::build_kestrel()?;
    guest::build_init()?;
    let in_rig = !guest::hardware_kvm(&kestrel);
    if in_rig {
        tools::step("bisect: this host's KVM cannot boot kernels; each boot runs in the rig");
    }
    if !args.kernels.is_empty() {
        return run_list(args, &scenario_arg, &state, &xtask, in_rig);
    }
    let (Some(src), Some(good), Some(bad)) = (&args.src, &args.good, &args.bad) else {
        bail!("bisect needs --src DIR --good REV --bad REV, or --kernels SPEC,SPEC,…");
    };
    run_git(args, src, good, bad, &scenario_arg, &state, &xtask, in_rig)
}

#[allow(clippy::too_many_arguments)]
fn run_git(
    args: &BisectArgs,
    src: &Path,
    good: &str,
    bad: &str,
    scenario: &str,
    state: &State,
    xtask: &Path,
    in_rig: bool,
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
    let configs = ConfigSet::parse(&args.config)?;
    let out = match &args.out {
        Some(o) => std::path::absolute(o).context("cannot resolve --out")?,
        None => kbuild::default_out(&src, &configs),
    };
    let step_args = StepArgs {
        src: src.clone(),
        out: out.clone(),
        state: state.dir.clone(),
        scenario: scenario.to_owned(),
        config: configs
            .fragments
            .iter()
            .map(|f| f.display().to_string())
            .chain((configs.base == kbuild::Base::Defconfig).then(|| "defconfig".to_owned()))
            .collect(),
        jobs: kbuild::jobs(args.jobs)?,
        on_timeout: args.on_timeout,
        on_boot_failure: args.on_boot_failure,
        pack: args.pack.clone(),
        rig: in_rig,
        kind: "step".into(),
        baseline: false,
    };
    tools::step(format!(
        "bisect: {} from {} (good) to {} (bad), scenario {scenario}, build dir {}, log {}",
        src.display(),
        &good_sha[..12],
        &bad_sha[..12],
        out.display(),
        state.steps().display()
    ));
    let mut guard = TreeGuard {
        src: src.clone(),
        git_dir,
        original,
        head,
        restored: false,
    };
    let result = bisect_git(&step_args, &good_sha, &bad_sha, xtask);
    let restored = guard.restore();
    let conclusion = result?;
    restored?;
    report(Some(&src), state, &conclusion, started)?;
    Ok(conclusion)
}

/// The endpoints, then `git bisect run`; the conclusion from the log.
fn bisect_git(step_args: &StepArgs, good: &str, bad: &str, xtask: &Path) -> Result<Conclusion> {
    let src = &step_args.src;
    let endpoint = |rev: &str, kind: &str| -> Result<i32> {
        kbuild::git_output(src, &["checkout", "-q", "--detach", rev])?;
        let args = StepArgs {
            kind: kind.to_owned(),
            baseline: kind == "good",
            ..step_args.clone()
        };
        let mut cmd = Command::new(xtask);
        cmd.arg("bisect-step").args(args.to_args());
        let code = run_grouped(cmd, "the bisect step")?;
        check_interrupted()?;
        Ok(code)
    };
    match endpoint(good, "good")? {
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
    match endpoint(bad, "bad")? {
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
        .arg(xtask)
        .arg("bisect-step")
        .args(step_args.to_args());
    let code = run_grouped(cmd, "git bisect run")?;
    check_interrupted()?;
    let log = kbuild::git_output(src, &["bisect", "log"])?;
    if let Some(c) = parse_bisect_log(&log) {
        return Ok(c);
    }
    bail!("git bisect run ended (exit {code}) without naming a first bad commit: see its output above")
}

fn policy_arg(p: Policy) -> &'static str {
    match p {
        Policy::Bad => "bad",
        Policy::Skip => "skip",
    }
}

/// The final report on stdout.
/// `src` is the git tree (`None` in list mode).
fn report(
    src: Option<&Path>,
    state: &State,
    conclusion: &Conclusion,
    started: Instant,
) -> Result<()> {
    let steps = state.read_steps();
    let built: usize = steps.iter().filter(|s| s.verdict != "build-failed").count();
    let skipped = steps.iter().filter(|s| s.outcome == "skip").count();
    let good_run = steps.iter().find(|s| s.kind == "good");
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
                .find(|s| &s.revision == sha && !s.artifacts.is_empty());
            if let (Some(g), Some(b)) = (good_run, bad_run) {
                let read = |dir: &str| {
                    let d = Path::new(dir);
                    std::fs::read_to_string(d.join("snapshot.txt"))
                        .or_else(|_| std::fs::read_to_string(d.join("stdout")))
                        .unwrap_or_default()
                };
                let diff = line_diff(&read(&g.artifacts), &read(&b.artifacts));
                if diff.is_empty() {
                    println!(
                        "scenario output: the same as on the good revision ({} there: see {})",
                        b.verdict, b.artifacts
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
    Ok(())
}

/// List mode: a binary search over prebuilt kernels.
fn run_list(
    args: &BisectArgs,
    scenario: &str,
    state: &State,
    xtask: &Path,
    in_rig: bool,
) -> Result<Conclusion> {
    let started = Instant::now();
    for spec in &args.kernels {
        guest::kernel(spec)?;
    }
    let n = args.kernels.len();
    let test = |i: usize, baseline: bool| -> Result<u8> {
        check_interrupted()?;
        let spec = &args.kernels[i];
        let boot_args = BootArgs {
            kernel: spec.clone(),
            scenario: scenario.to_owned(),
            state: state.dir.clone(),
            name: format!("kernel-{i}"),
            baseline,
            pack: args.pack.clone(),
        };
        let t = Instant::now();
        let r = boot(&boot_args, xtask, in_rig)?;
        let code = r.code(args.on_timeout, args.on_boot_failure);
        state.append_step(&Step {
            kind: if baseline {
                "good".into()
            } else {
                "step".into()
            },
            revision: spec.clone(),
            build_secs: None,
            boot_secs: Some(t.elapsed().as_secs_f64()),
            outcome: outcome_name(code).into(),
            verdict: r.verdict.clone(),
            artifacts: r.artifacts.display().to_string(),
        })?;
        eprintln!(
            "bisect: {spec}: boot {:.1} s, {} → {}",
            t.elapsed().as_secs_f64(),
            r.verdict,
            outcome_name(code)
        );
        Ok(code)
    };
    if n < 2 {
        bail!("--kernels needs at least two kernels: a passing one first and a failing one last");
    }
    if test(0, true)? != GOOD {
        bail!(
            "the scenario fails on the first kernel {}, so it cannot be the baseline",
            args.kernels[0]
        );
    }
    if test(n - 1, false)? == GOOD {
        bail!(
            "the scenario passes on the last kernel {} too, so there is nothing to bisect",
            args.kernels[n - 1]
        );
    }
    let found = bisect_list(n, |i| if i == n - 1 { Ok(BAD) } else { test(i, false) })?;
    let conclusion = match found {
        Ok(i) => Conclusion::FirstBad {
            sha: args.kernels[i].clone(),
            subject: String::new(),
        },
        Err(list) => Conclusion::Ambiguous(
            list.into_iter()
                .map(|i| (args.kernels[i].clone(), String::new()))
                .collect(),
        ),
    };
    report(None, state, &conclusion, started)?;
    Ok(conclusion)
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
    fn records_and_steps_round_trip() {
        let r = BootRecord {
            verdict: "fail".into(),
            boot_ms: Some(812),
            wall_ms: 4100,
            artifacts: "/t/runs/x".into(),
            reason: "snapshot differs\tline 2".into(),
        };
        let back = BootRecord::parse(&r.to_line()).unwrap();
        assert_eq!(back.reason, "snapshot differs line 2");
        assert_eq!(back.boot_ms, Some(812));
        assert!(BootRecord::parse("pass\t-\t10\t/a\t")
            .unwrap()
            .boot_ms
            .is_none());
        assert!(BootRecord::parse("garbage").is_none());
        let s = Step {
            kind: "step".into(),
            revision: "abc".into(),
            build_secs: Some(12.34),
            boot_secs: None,
            outcome: "skip".into(),
            verdict: "build-failed".into(),
            artifacts: String::new(),
        };
        let back = Step::parse(&s.to_line()).unwrap();
        assert_eq!(back.build_secs, Some(12.3));
        assert_eq!(back.boot_secs, None);
        assert_eq!(back.verdict, "build-failed");
    }

    #[test]
    fn verdicts_map_to_git_codes() {
        let rec = |v: &str| BootRecord {
            verdict: v.into(),
            boot_ms: None,
            wall_ms: 0,
            artifacts: PathBuf::new(),
            reason: String::new(),
        };
        assert_eq!(rec("pass").code(Policy::Bad, Policy::Bad), GOOD);
        assert_eq!(rec("fail").code(Policy::Skip, Policy::Skip), BAD);
        assert_eq!(rec("timeout").code(Policy::Bad, Policy::Skip), BAD);
        assert_eq!(rec("timeout").code(Policy::Skip, Policy::Bad), SKIP);
        assert_eq!(rec("panic").code(Policy::Bad, Policy::Skip), SKIP);
        assert_eq!(rec("boot-failure").code(Policy::Skip, Policy::Bad), BAD);
        assert_eq!(rec("vmm-error").code(Policy::Bad, Policy::Bad), ABORT);
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
        let s = load_scenario("boot_smoke", &[]).unwrap();
        assert_eq!(s.name, "boot_smoke");
        let err = load_scenario("no_such_scenario", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no scenario `no_such_scenario`") && err.contains("boot_smoke"),
            "{err}"
        );
        assert!(load_scenario("/no/such.toml", &[]).is_err());

        // A user's own directory: looked up there, listed when missing.
        let own = std::env::temp_dir().join(format!("kestrel-bisect-own-{}", std::process::id()));
        std::fs::create_dir_all(&own).unwrap();
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
        std::fs::remove_dir_all(&own).unwrap();
    }
}

pub mod fixture {
    //! `cargo xtask bisect-fixture`: the acceptance test of the whole
    //! workflow on a real tree.
    //!
    //! A git repository made from Debian's 6.1 source (hard links, so the
    //! cache's files are never written: every change here replaces a file
    //! by rename) with ten commits on branch `fixture` over the tag
    //! `fixture-base`: harmless ones, one that does not compile (then its
    //! fix), and exactly one guest-visible regression (`/proc/version`
    //! names the system "Linux-fixture"). `cargo xtask bisect` must name the
    //! regression, skip the broken commit, and leave the repository on
    //! `fixture` with a clean status; bad input must fail with one line and
    //! leave it untouched. The repository and its build directory are kept
    //! and reused by the next run.

    use super::*;

    const BRANCH: &str = "fixture";
    const BASE_TAG: &str = "fixture-base";
    /// Subject of the regressing commit.
    pub const REGRESSION: &str = "fixture: /proc/version names the system Linux-fixture";
    const BROKEN: &str = "fixture: uptime does not compile";

    /// One commit: subject, file, text replaced, replacement.
    type Change = (&'static str, &'static str, &'static str, &'static str);

    /// The series. The broken commit sits where `git bisect` looks first
    /// (the middle), so the skip is exercised.
    const CHANGES: &[Change] = &[
        (
            "fixture: README wording",
            "README",
            "Linux kernel",
            "Linux kernel (fixture)",
        ),
        (
            "fixture: comment in kernel/panic.c",
            "kernel/panic.c",
            " * This function is used through-out the kernel",
            " * This function is used throughout the kernel",
        ),
        (
            "fixture: MAINTAINERS note",
            "MAINTAINERS",
            "List of maintainers",
            "List of maintainers (fixture)",
        ),
        (
            "fixture: comment in fs/proc/cmdline.c",
            "fs/proc/cmdline.c",
            "#include <linux/fs.h>",
            "#include <linux/fs.h> /* fixture */",
        ),
        (
            BROKEN,
            "fs/proc/uptime.c",
            "#include <linux/fs.h>",
            "#include <linux/fs.h>\nkestrel_fixture_does_not_compile;",
        ),
        (
            "fixture: uptime compiles again",
            "fs/proc/uptime.c",
            "#include <linux/fs.h>\nkestrel_fixture_does_not_compile;",
            "#include <linux/fs.h>",
        ),
        (
            REGRESSION,
            "fs/proc/version.c",
            "utsname()->sysname,",
            "\"Linux-fixture\",",
        ),
        (
            "fixture: comment in kernel/exit.c",
            "kernel/exit.c",
            " *  linux/kernel/exit.c",
            " *  linux/kernel/exit.c (fixture)",
        ),
        (
            "fixture: CREDITS note",
            "CREDITS",
            "This is at least a partial credits-file",
            "This is at least a partial credits-file (fixture)",
        ),
        (
            "fixture: comment in fs/proc/cmdline.c again",
            "fs/proc/cmdline.c",
            "/* fixture */",
            "/* fixture, again */",
        ),
    ];

    const SCENARIO: &str = "\
description = \"bisect fixture: /proc/version of a self-built kernel\"
run = [\"cat\", \"/proc/version\"]
redact_release = true
timeout = 60
";

    fn root() -> PathBuf {
        paths::kestrel_dir().join("bisect-fixture")
    }

    /// Replaces `from` by `to` in `path` through a new file (the old one may
    /// be a hard link into the cache).
    fn replace_in(path: &Path, from: &str, to: &str) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !text.contains(from) {
            bail!(
                "{} does not contain `{from}`: the fixture expects Debian's 6.1 source",
                path.display()
            );
        }
        let new = text.replacen(from, to, 1);
        let tmp = path.with_extension("kestrel-fixture-tmp");
        std::fs::write(&tmp, new).with_context(|| format!("cannot write {}", tmp.display()))?;
        let perms = std::fs::metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .permissions();
        std::fs::set_permissions(&tmp, perms).ok();
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    fn git(repo: &Path, args: &[&str]) -> Result<String> {
        kbuild::git_output(repo, args)
    }

    /// The repository when it is complete and clean, else `None`.
    fn existing(repo: &Path) -> Option<()> {
        let subjects = git(
            repo,
            &["log", "--format=%s", &format!("{BASE_TAG}..{BRANCH}")],
        )
        .ok()?;
        let want: Vec<&str> = CHANGES.iter().rev().map(|c| c.0).collect();
        let have: Vec<&str> = subjects.lines().collect();
        let status = kbuild::git_status(repo)?;
        let branch = git(repo, &["symbolic-ref", "--short", "HEAD"]).ok()?;
        (have == want && status.trim().is_empty() && branch.trim() == BRANCH).then_some(())
    }

    /// Makes (or reuses) the repository; returns its path.
    pub fn repository() -> Result<PathBuf> {
        let repo = root().join("linux");
        if existing(&repo).is_some() {
            tools::step(format!("fixture: reusing {}", repo.display()));
            return Ok(repo);
        }
        let cache = kestrel_kernels::Cache::from_env()?;
        let tree = kestrel_kernels::source::fetch(&cache, kestrel_kernels::Series::V6_1)?;
        let start = Instant::now();
        if repo.exists() {
            std::fs::remove_dir_all(&repo)
                .with_context(|| format!("cannot remove the old fixture {}", repo.display()))?;
        }
        std::fs::create_dir_all(root())
            .with_context(|| format!("cannot create {}", root().display()))?;
        tools::step(format!(
            "fixture: hard-linking {} to {}",
            tree.dir.display(),
            repo.display()
        ));
        tools::run(Command::new("cp").arg("-al").arg(&tree.dir).arg(&repo))?;
        git(&repo, &["init", "-q", "-b", BRANCH])?;
        for (k, v) in [
            ("user.name", "Kestrel fixture"),
            ("user.email", "fixture@kestrel.invalid"),
            ("gc.auto", "0"),
            ("core.autocrlf", "false"),
        ] {
            git(&repo, &["config", k, v])?;
        }
        tools::step("fixture: committing the tree (git add of ~75k files)");
        // Forced: Debian's tree ignores everything at its top level.
        git(&repo, &["add", "-A", "-f"])?;
        git(
            &repo,
            &[
                "commit",
                "-q",
                "-m",
                &format!("{} {}", tree.manifest.package, tree.manifest.version),
            ],
        )?;
        git(&repo, &["tag", BASE_TAG])?;
        for (subject, file, from, to) in CHANGES {
            replace_in(&repo.join(file), from, to)?;
            git(&repo, &["commit", "-q", "-a", "-m", subject])?;
        }
        tools::step(format!(
            "fixture: {} commits over {BASE_TAG} in {:.1} s",
            CHANGES.len(),
            start.elapsed().as_secs_f64()
        ));
        Ok(repo)
    }

    /// `cargo xtask bisect-fixture` (`prepare`: only the repository).
    pub fn run(prepare: bool) -> Result<()> {
        let start = Instant::now();
        let repo = repository()?;
        if prepare {
            println!("{}", repo.display());
            return Ok(());
        }
        let scenario = root().join("proc_version_fixture.toml");
        std::fs::write(&scenario, SCENARIO)
            .with_context(|| format!("cannot write {}", scenario.display()))?;
        let head_before = git(&repo, &["rev-parse", "HEAD"])?;

        // Bad input: one line each, tree untouched.
        let err =
            run_git_only(&repo, "no-such-rev", BRANCH, &scenario, &[]).expect_err_message()?;
        ensure_contains(&err, "revision `no-such-rev` does not exist")?;
        eprintln!("fixture: bad revision → {err}");
        let unsat = root().join("unsatisfiable.config");
        std::fs::write(&unsat, "CONFIG_KVM_AMD=y\n")
            .with_context(|| format!("cannot write {}", unsat.display()))?;
        let plan = Plan {
            src: repo.clone(),
            out: root().join("kbuild-unsatisfiable"),
            configs: ConfigSet::parse(&[unsat.display().to_string()])?,
            jobs: kbuild::jobs(None)?,
            output: Output::LogFile,
            reproducible: true,
        };
        let err = match kbuild::build(&plan) {
            Ok(_) => bail!("a build asking for CONFIG_KVM_AMD=y without KVM succeeded"),
            Err(e) => format!("{:#}", e.into_inner()),
        };
        ensure_contains(&err, "CONFIG_KVM_AMD=y")?;
        ensure_contains(&err, "KVM is not set")?;
        eprintln!("fixture: unsatisfiable fragment → {err}");
        let err = match kbuild::check_source_tree(&root()) {
            Ok(_) => bail!("{} was taken for a kernel tree", root().display()),
            Err(e) => e.to_string(),
        };
        ensure_contains(&err, "is not a Linux kernel source tree")?;
        eprintln!("fixture: not a kernel tree → {err}");
        let status = kbuild::git_status(&repo).unwrap_or_default();
        let head = git(&repo, &["rev-parse", "HEAD"])?;
        if head != head_before || !status.trim().is_empty() {
            bail!("bad input changed the fixture repository");
        }
        tools::step("fixture: bad input gives one line each: ok");

        // The bisection.
        let conclusion = run_git_only(&repo, BASE_TAG, BRANCH, &scenario, &[])?;
        let regression = git(
            &repo,
            &["log", "--format=%H", "--grep", REGRESSION, "-F", BRANCH],
        )?;
        let regression = regression.trim();
        match &conclusion {
            Conclusion::FirstBad { sha, .. } if sha == regression => {}
            other => {
                bail!("the bisection concluded {other:?}, expected the regression {regression}")
            }
        }
        let head_after = git(&repo, &["rev-parse", "HEAD"])?;
        let branch = git(&repo, &["symbolic-ref", "--short", "HEAD"])?;
        let status = kbuild::git_status(&repo).unwrap_or_else(|| "not a git tree".into());
        if head_after != head_before || branch.trim() != BRANCH || !status.trim().is_empty() {
            bail!(
                "the fixture repository was not left as it was (branch {}, status {status:?})",
                branch.trim()
            );
        }
        let steps = last_state_steps()?;
        if !steps.iter().any(|s| s.verdict == "build-failed") {
            bail!("the bisection never met the commit that does not build; the fixture's order no longer exercises skip");
        }
        tools::step(format!(
            "fixture: bisect named the regression, skipped the broken commit, left `{BRANCH}` clean ({} steps, {:.0} s)",
            steps.len(),
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    trait ExpectErr {
        fn expect_err_message(self) -> Result<String>;
    }

    impl<T> ExpectErr for Result<T> {
        fn expect_err_message(self) -> Result<String> {
            match self {
                Ok(_) => bail!("bad input was accepted"),
                Err(e) => Ok(format!("{e:#}")),
            }
        }
    }

    fn ensure_contains(msg: &str, needle: &str) -> Result<()> {
        if msg.contains(needle) && !msg.contains('\n') {
            Ok(())
        } else {
            bail!("expected one line containing `{needle}`, got: {msg}")
        }
    }

    fn run_git_only(
        repo: &Path,
        good: &str,
        bad: &str,
        scenario: &Path,
        config: &[String],
    ) -> Result<Conclusion> {
        super::run(&BisectArgs {
            src: Some(repo.to_owned()),
            good: Some(good.to_owned()),
            bad: Some(bad.to_owned()),
            kernels: Vec::new(),
            scenario: scenario.display().to_string(),
            scenarios: Vec::new(),
            config: config.to_vec(),
            out: None,
            jobs: None,
            on_timeout: Policy::Bad,
            on_boot_failure: Policy::Bad,
            pack: Vec::new(),
        })
    }

    /// The steps of the newest bisection state directory.
    fn last_state_steps() -> Result<Vec<Step>> {
        let dir = paths::kestrel_dir().join("bisect");
        let newest = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .flatten()
            .filter(|e| e.path().join("steps.tsv").is_file())
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .context("no bisection state found")?;
        Ok(State { dir: newest.path() }.read_steps())
    }
}

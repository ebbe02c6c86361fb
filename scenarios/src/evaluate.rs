//! From what a run produced ([`RunOutput`]) and what the scenario expects to
//! one [`Verdict`].
//!
//! Order of decision: a VMM error or a boot failure is reported as such; an
//! expected failure (panic, timeout) passes only when it happened; an
//! unexpected timeout or panic is reported as such; otherwise every check
//! runs — exit status, forbidden kernel-log lines, KTAP results, the snapshot
//! — and every failing one becomes a [`FailReason`], so a `WARNING:` in the
//! log fails the scenario even when its snapshot matches.

use std::fmt;

use kestrel_kernels::symbols::SymbolSources;
use serde::Serialize;

use crate::error::Result;
use crate::ktap;
use crate::redact::{self, Redactions};
use crate::scenario::{ExpectedFailure, Scenario, Stream};
use crate::snapshot::{self, Metadata, Policy, SnapshotTarget};
use crate::trace;

/// The runner's own verdict, from `kestrel run --verdict-file` (or its
/// `kestrel: verdict=…` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerVerdict {
    /// The command exited 0.
    Pass,
    /// The command exited with this status (or died of a signal: 128+N).
    Fail(i32),
    /// The wall-clock limit passed.
    Timeout,
    /// The kernel panicked or the guest died without a status.
    Panic,
    /// The kernel did not reach the init.
    BootFailure,
    /// The VMM failed (or the runner could not be run).
    VmmError,
}

impl RunnerVerdict {
    /// Parses `pass`, `fail(3)`, `timeout`, `panic`, `boot-failure`, `vmm-error`.
    pub fn parse(text: &str) -> Option<RunnerVerdict> {
        Some(match text {
            "pass" => RunnerVerdict::Pass,
            "timeout" => RunnerVerdict::Timeout,
            "panic" => RunnerVerdict::Panic,
            "boot-failure" => RunnerVerdict::BootFailure,
            "vmm-error" => RunnerVerdict::VmmError,
            _ => RunnerVerdict::Fail(
                text.strip_prefix("fail(")?
                    .strip_suffix(')')?
                    .parse()
                    .ok()?,
            ),
        })
    }
}

impl fmt::Display for RunnerVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerVerdict::Pass => f.write_str("pass"),
            RunnerVerdict::Fail(n) => write!(f, "fail({n})"),
            RunnerVerdict::Timeout => f.write_str("timeout"),
            RunnerVerdict::Panic => f.write_str("panic"),
            RunnerVerdict::BootFailure => f.write_str("boot-failure"),
            RunnerVerdict::VmmError => f.write_str("vmm-error"),
        }
    }
}

/// Everything one run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// What the runner decided.
    pub verdict_from_runner: RunnerVerdict,
    /// The command's exit status, when it reported one.
    pub exit_status: Option<i32>,
    /// The command's stdout.
    pub stdout: String,
    /// The command's stderr, without the runner's own lines.
    pub stderr: String,
    /// The kernel log (console).
    pub kernel_log: String,
    /// Time to the guest's init, when it got there.
    pub boot_ms: Option<u64>,
    /// Time of the whole run.
    pub total_ms: u64,
    /// The runner's own messages (its `kestrel: …` stderr lines, or why it
    /// could not run).
    pub runner_messages: Vec<String>,
}

impl RunOutput {
    /// An output for a run that never happened (the runner could not start).
    pub fn vmm_error(message: String) -> RunOutput {
        RunOutput {
            verdict_from_runner: RunnerVerdict::VmmError,
            exit_status: None,
            stdout: String::new(),
            stderr: String::new(),
            kernel_log: String::new(),
            boot_ms: None,
            total_ms: 0,
            runner_messages: vec![message],
        }
    }

    /// The exit status: the reported one, else the one the verdict implies.
    pub fn effective_exit(&self) -> Option<i32> {
        self.exit_status.or(match self.verdict_from_runner {
            RunnerVerdict::Pass => Some(0),
            RunnerVerdict::Fail(n) => Some(n),
            _ => None,
        })
    }
}

/// Why a scenario failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FailReason {
    /// The command's status differs from `exit`.
    ExitStatus {
        /// Expected status.
        expected: i32,
        /// What it was.
        actual: Option<i32>,
    },
    /// A kernel-log line matched a `forbid` pattern.
    ForbiddenLine {
        /// The pattern.
        pattern: String,
        /// The first matching line.
        line: String,
        /// How many lines matched in all.
        count: usize,
        /// The splat that starts at the first matching line, its frames
        /// symbolized (see [`crate::trace`]).
        trace: Vec<String>,
    },
    /// KTAP output has failing tests or broken plans.
    Ktap {
        /// Failing tests by path, or problems.
        failures: Vec<String>,
    },
    /// The normalised output differs from the stored snapshot.
    SnapshotDiff {
        /// The stored file.
        path: String,
        /// The new text.
        new_path: String,
        /// Which lines changed.
        summary: String,
        /// The readable diff.
        diff: String,
    },
    /// No stored snapshot yet.
    NoSnapshot {
        /// Where the new text was written.
        new_path: String,
    },
    /// The scenario provokes a failure that did not happen.
    ExpectedFailureMissing {
        /// What it expects.
        expected: ExpectedFailure,
        /// What happened instead.
        got: String,
    },
    /// A probe program could not be built on the host.
    ProbeBuild {
        /// The compiler's complaint.
        message: String,
    },
    /// The harness itself failed (a snapshot or artifact could not be written).
    Harness {
        /// What failed.
        message: String,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::ExitStatus { expected, actual } => match actual {
                Some(a) => write!(f, "exit status {a}, expected {expected}"),
                None => write!(f, "no exit status, expected {expected}"),
            },
            FailReason::ForbiddenLine {
                pattern,
                line,
                count,
                ..
            } => {
                write!(f, "forbidden kernel-log line (/{pattern}/): `{line}`")?;
                if *count > 1 {
                    write!(f, " and {} more", count - 1)?;
                }
                Ok(())
            }
            FailReason::Ktap { failures } => write!(f, "KTAP failures: {}", failures.join(", ")),
            FailReason::SnapshotDiff {
                path,
                summary,
                new_path,
                ..
            } => write!(
                f,
                "snapshot {path} differs at {summary} (new text in {new_path})"
            ),
            FailReason::NoSnapshot { new_path } => {
                write!(
                    f,
                    "no snapshot yet: run with --update (new text in {new_path})"
                )
            }
            FailReason::ExpectedFailureMissing { expected, got } => {
                let e = match expected {
                    ExpectedFailure::Panic => "a panic",
                    ExpectedFailure::Timeout => "a timeout",
                };
                write!(f, "expected {e}, but {got}")
            }
            FailReason::ProbeBuild { message } => write!(f, "probe build failed: {message}"),
            FailReason::Harness { message } => write!(f, "harness error: {message}"),
        }
    }
}

/// The scenario's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "kebab-case")]
pub enum Verdict {
    /// Everything as expected.
    Pass,
    /// At least one check failed.
    Fail(Vec<FailReason>),
    /// The runner's timeout fired (not expected).
    Timeout,
    /// The kernel panicked (not expected).
    Panic,
    /// The kernel did not boot.
    BootFailure(String),
    /// The VMM or the runner failed.
    VmmError(String),
}

impl Verdict {
    /// `pass`, `fail`, `timeout`, `panic`, `boot-failure`, `vmm-error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Timeout => "timeout",
            Verdict::Panic => "panic",
            Verdict::BootFailure(_) => "boot-failure",
            Verdict::VmmError(_) => "vmm-error",
        }
    }

    /// Whether the scenario passed.
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// One line: why it did not pass (empty for a pass).
    pub fn reason(&self) -> String {
        match self {
            Verdict::Pass => String::new(),
            Verdict::Fail(reasons) => reasons
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            Verdict::Timeout => "the guest did not finish before the timeout".into(),
            Verdict::Panic => "the kernel panicked".into(),
            Verdict::BootFailure(m) | Verdict::VmmError(m) => m.clone(),
        }
    }

    /// The traces of forbidden kernel-log lines, for reports.
    pub fn traces(&self) -> Vec<&[String]> {
        match self {
            Verdict::Fail(reasons) => reasons
                .iter()
                .filter_map(|r| match r {
                    FailReason::ForbiddenLine { trace, .. } if !trace.is_empty() => {
                        Some(trace.as_slice())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The diffs of snapshot failures, for reports.
    pub fn diffs(&self) -> Vec<&str> {
        match self {
            Verdict::Fail(reasons) => reasons
                .iter()
                .filter_map(|r| match r {
                    FailReason::SnapshotDiff { diff, .. } => Some(diff.as_str()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            other => write!(f, "{}: {}", other.kind(), other.reason()),
        }
    }
}

/// Where snapshots are and how to store new ones, for one kernel.
#[derive(Debug, Clone)]
pub struct SnapshotContext {
    /// `scenarios/snapshots`.
    pub dir: std::path::PathBuf,
    /// The kernel's series (`6.1`), for `<name>@<series>.snap`.
    pub series: Option<String>,
    /// Accept or record per kernel.
    pub policy: Policy,
    /// The guest command as shown in the snapshot header.
    pub expression: String,
    /// Where the kernel's System.map and vmlinux are, to symbolize the
    /// trace of a forbidden line (read only when one is found); `None`:
    /// the trace stays as the kernel printed it.
    pub symbols: Option<SymbolSources>,
}

/// The verdict and what was compared.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The result.
    pub verdict: Verdict,
    /// The normalised snapshot text, when the scenario has one and the run
    /// got that far.
    pub snapshot_text: Option<String>,
    /// The snapshot check, when it ran.
    pub snapshot: Option<snapshot::Outcome>,
    /// The KTAP tree, when parsed.
    pub ktap: Option<ktap::Report>,
}

/// Describes a runner verdict for "expected X, but …".
fn describe(out: &RunOutput) -> String {
    match out.verdict_from_runner {
        RunnerVerdict::Pass | RunnerVerdict::Fail(_) => match out.effective_exit() {
            Some(n) => format!("the command exited with status {n}"),
            None => "the command finished".into(),
        },
        RunnerVerdict::Timeout => "the run timed out".into(),
        RunnerVerdict::Panic => "the kernel panicked".into(),
        RunnerVerdict::BootFailure => "the kernel did not boot".into(),
        RunnerVerdict::VmmError => "the VMM failed".into(),
    }
}

/// The kernel-log lines selected for the snapshot.
fn selected_log(scenario: &Scenario, log: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        if scenario.expect.kernel_log.iter().any(|r| r.is_match(line)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The normalised snapshot text: one `== stream ==` section per stream, in
/// the scenario's order.
pub fn snapshot_text(scenario: &Scenario, out: &RunOutput, ktap: Option<&ktap::Report>) -> String {
    let release = redact::release_from_log(&out.kernel_log);
    let r = Redactions {
        release: scenario.expect.redact_release.then_some(release.as_deref()),
        pids: scenario.expect.redact_pids,
        filters: &scenario.expect.filters,
    };
    let mut text = String::new();
    for stream in &scenario.expect.snapshot {
        let (header, body) = match (stream, ktap) {
            (Stream::Stdout, Some(k)) => ("stdout (ktap)", k.render()),
            (Stream::Stdout, None) if scenario.expect.digest => {
                ("stdout (digest)", digest(&out.stdout))
            }
            (Stream::Stdout, None) => ("stdout", out.stdout.clone()),
            (Stream::Stderr, _) => ("stderr", out.stderr.clone()),
            (Stream::KernelLog, _) => ("kernel-log", selected_log(scenario, &out.kernel_log)),
        };
        text.push_str(&format!("== {header} ==\n"));
        if header == "stdout (digest)" {
            text.push_str(&body); // A checksum is not to be redacted.
        } else {
            text.push_str(&redact::normalise(&body, &r));
        }
    }
    text
}

/// Line count, byte count and FNV-1a 64 checksum of `text`: a stable
/// stand-in for output too large to store.
pub fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!(
        "lines: {}\nbytes: {}\nfnv1a64: {hash:016x}\n",
        text.lines().count(),
        text.len()
    )
}

/// Longest quoted kernel-log line.
const MAX_QUOTE: usize = 200;

fn forbidden(
    scenario: &Scenario,
    log: &str,
    symbols: Option<&SymbolSources>,
) -> Option<FailReason> {
    let mut first: Option<(String, String, usize)> = None;
    let mut count = 0;
    for (index, line) in log.lines().enumerate() {
        if let Some(re) = scenario.expect.forbid.iter().find(|r| r.is_match(line)) {
            count += 1;
            if first.is_none() {
                let mut quoted: String = line.trim().chars().take(MAX_QUOTE).collect();
                if line.trim().chars().count() > MAX_QUOTE {
                    quoted.push('…');
                }
                first = Some((re.as_str().to_owned(), quoted, index));
            }
        }
    }
    let (pattern, line, index) = first?;
    let loaded = symbols.map(SymbolSources::load);
    Some(FailReason::ForbiddenLine {
        pattern,
        line,
        count,
        trace: trace::trace(log, index, loaded.as_ref()),
    })
}

/// Decides the verdict; writes `.snap.new` / `.snap` as `snap.policy` says.
pub fn evaluate(
    scenario: &Scenario,
    out: &RunOutput,
    snap: &SnapshotContext,
) -> Result<Evaluation> {
    let mut eval = Evaluation {
        verdict: Verdict::Pass,
        snapshot_text: None,
        snapshot: None,
        ktap: None,
    };
    let notes = || out.runner_messages.join("; ");
    match out.verdict_from_runner {
        RunnerVerdict::VmmError => {
            eval.verdict = Verdict::VmmError(non_empty(notes(), "the VMM failed"));
            return Ok(eval);
        }
        RunnerVerdict::BootFailure => {
            eval.verdict =
                Verdict::BootFailure(non_empty(notes(), "the kernel did not reach the init"));
            return Ok(eval);
        }
        _ => {}
    }
    let happened = match out.verdict_from_runner {
        RunnerVerdict::Panic => Some(ExpectedFailure::Panic),
        RunnerVerdict::Timeout => Some(ExpectedFailure::Timeout),
        _ => None,
    };
    let mut reasons = Vec::new();
    match (scenario.expect.failure, happened) {
        (Some(expected), got) if got != Some(expected) => {
            eval.verdict = Verdict::Fail(vec![FailReason::ExpectedFailureMissing {
                expected,
                got: describe(out),
            }]);
            return Ok(eval);
        }
        (None, Some(ExpectedFailure::Timeout)) => {
            eval.verdict = Verdict::Timeout;
            return Ok(eval);
        }
        (None, Some(ExpectedFailure::Panic)) => {
            eval.verdict = Verdict::Panic;
            return Ok(eval);
        }
        (Some(_), _) => {
            // The provoked failure happened; only a panic excuses the
            // forbidden lines it prints itself.
            if scenario.expect.failure == Some(ExpectedFailure::Timeout) {
                reasons.extend(forbidden(scenario, &out.kernel_log, snap.symbols.as_ref()));
            }
        }
        (None, None) => {
            let actual = out.effective_exit();
            if actual != Some(scenario.expect.exit) {
                reasons.push(FailReason::ExitStatus {
                    expected: scenario.expect.exit,
                    actual,
                });
            }
            reasons.extend(forbidden(scenario, &out.kernel_log, snap.symbols.as_ref()));
        }
    }

    if scenario.expect.ktap {
        let report = ktap::parse(&out.stdout);
        let mut failures = report.failures();
        failures.extend(report.plan_problems().into_iter().map(str::to_owned));
        if !report.found {
            failures.push("no KTAP/TAP version line on stdout".into());
        }
        if !failures.is_empty() {
            reasons.push(FailReason::Ktap { failures });
        }
        eval.ktap = Some(report);
    }

    if !scenario.expect.snapshot.is_empty() {
        let text = snapshot_text(scenario, out, eval.ktap.as_ref());
        let target = SnapshotTarget::new(&snap.dir, &scenario.name, snap.series.as_deref());
        let metadata = Metadata {
            source: Some(source_of(scenario)),
            description: Some(scenario.description.clone()).filter(|d| !d.is_empty()),
            expression: Some(snap.expression.clone()),
        };
        let outcome = snapshot::check(&target, &text, &metadata, snap.policy)?;
        match &outcome {
            snapshot::Outcome::Mismatch {
                path,
                new_path,
                diff,
            } => reasons.push(FailReason::SnapshotDiff {
                path: path.display().to_string(),
                new_path: new_path.display().to_string(),
                summary: diff.summary(),
                diff: diff.text.clone(),
            }),
            snapshot::Outcome::Missing { new_path, .. } => reasons.push(FailReason::NoSnapshot {
                new_path: new_path.display().to_string(),
            }),
            snapshot::Outcome::Match { .. } | snapshot::Outcome::Written { .. } => {}
        }
        eval.snapshot_text = Some(text);
        eval.snapshot = Some(outcome);
    }

    if !reasons.is_empty() {
        eval.verdict = Verdict::Fail(reasons);
    }
    Ok(eval)
}

fn non_empty(s: String, default: &str) -> String {
    if s.trim().is_empty() {
        default.to_owned()
    } else {
        s
    }
}

/// `scenarios/uname.toml`: the file's directory name and file name.
fn source_of(scenario: &Scenario) -> String {
    let file = scenario
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match scenario
        .path
        .parent()
        .and_then(|p| p.file_name())
        .map(|d| d.to_string_lossy().into_owned())
    {
        Some(dir) => format!("{dir}/{file}"),
        None => file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn scenario(text: &str) -> Scenario {
        Scenario::parse(Path::new("/x/scenarios/demo.toml"), text).unwrap()
    }

    fn output(verdict: RunnerVerdict, stdout: &str, log: &str) -> RunOutput {
        RunOutput {
            verdict_from_runner: verdict,
            exit_status: None,
            stdout: stdout.into(),
            stderr: String::new(),
            kernel_log: log.into(),
            boot_ms: Some(10),
            total_ms: 20,
            runner_messages: Vec::new(),
        }
    }

    fn ctx(tag: &str) -> SnapshotContext {
        let dir = std::env::temp_dir().join(format!("kestrel-eval-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        SnapshotContext {
            dir,
            series: Some("6.1".into()),
            policy: Policy::default(),
            expression: "demo".into(),
            symbols: None,
        }
    }

    fn accept(c: &SnapshotContext, name: &str, text: &str) {
        let path: PathBuf = c.dir.join(format!("{name}.snap"));
        std::fs::create_dir_all(&c.dir).unwrap();
        let f = snapshot::SnapshotFile {
            metadata: Metadata::default(),
            contents: text.into(),
        };
        std::fs::write(path, f.render()).unwrap();
    }

    #[test]
    fn runner_verdicts_parse() {
        assert_eq!(
            RunnerVerdict::parse("fail(3)"),
            Some(RunnerVerdict::Fail(3))
        );
        assert_eq!(
            RunnerVerdict::parse("boot-failure"),
            Some(RunnerVerdict::BootFailure)
        );
        assert_eq!(RunnerVerdict::parse("fail(x)"), None);
        assert_eq!(RunnerVerdict::parse("great"), None);
        for v in [
            "pass",
            "fail(7)",
            "timeout",
            "panic",
            "boot-failure",
            "vmm-error",
        ] {
            assert_eq!(RunnerVerdict::parse(v).unwrap().to_string(), v);
        }
    }

    #[test]
    fn pass_when_everything_matches() {
        let c = ctx("pass");
        let s = scenario("run = [\"x\"]");
        accept(&c, "demo", "== stdout ==\nhello [TIME]");
        let e = evaluate(
            &s,
            &output(RunnerVerdict::Pass, "hello [  1.5]\n", "quiet\n"),
            &c,
        )
        .unwrap();
        assert_eq!(e.verdict, Verdict::Pass, "{}", e.verdict);
        std::fs::remove_dir_all(&c.dir).unwrap();
    }

    #[test]
    fn warning_fails_even_when_snapshot_matches() {
        let c = ctx("warn");
        let s = scenario("run = [\"x\"]");
        accept(&c, "demo", "== stdout ==\nhello");
        let log =
            "[ 1.0] ok\n[ 2.0] WARNING: CPU: 0 PID: 1 at fs/x.c:1 f+0x1/0x2\n[ 2.1] Call Trace:\n";
        let e = evaluate(&s, &output(RunnerVerdict::Pass, "hello\n", log), &c).unwrap();
        assert!(e.snapshot.as_ref().unwrap().is_ok());
        let Verdict::Fail(reasons) = &e.verdict else {
            panic!("{:?}", e.verdict)
        };
        assert_eq!(reasons.len(), 1);
        assert_eq!(
            reasons[0].to_string(),
            "forbidden kernel-log line (/^(\\[[ 0-9.]+\\] )?WARNING: /): `[ 2.0] WARNING: CPU: 0 PID: 1 at fs/x.c:1 f+0x1/0x2` and 1 more"
        );
        std::fs::remove_dir_all(&c.dir).unwrap();
    }

    #[test]
    fn a_forbidden_line_carries_its_symbolized_trace() {
        let c = ctx("trace");
        let dir = c.dir.with_extension("boot");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz-6.1.0-x"), b"").unwrap();
        std::fs::write(
            dir.join("System.map-6.1.0-x"),
            "ffffffff81001000 T write_sysrq_trigger\nffffffff81002000 T vfs_write\n",
        )
        .unwrap();
        let mut with_symbols = c.clone();
        with_symbols.symbols = Some(SymbolSources::for_image(&dir.join("vmlinuz-6.1.0-x")));
        let s = scenario("run = [\"x\"]");
        let log = "[ 1.0] ok\n[ 2.0] Call Trace:\n[ 2.0]  <TASK>\n[ 2.0]  0xffffffff81001024\n\
                   [ 2.0]  vfs_write+0xc6/0x3f0\n[ 2.0]  </TASK>\n[ 2.1] kestrel-init: done\n";
        let e = evaluate(&s, &output(RunnerVerdict::Pass, "", log), &with_symbols).unwrap();
        let Verdict::Fail(reasons) = &e.verdict else {
            panic!("{:?}", e.verdict)
        };
        let FailReason::ForbiddenLine { trace, count, .. } = &reasons[0] else {
            panic!("{reasons:?}")
        };
        assert_eq!(*count, 1);
        assert_eq!(
            trace,
            &[
                "Call Trace:",
                " <TASK>",
                " 0xffffffff81001024 write_sysrq_trigger+0x24",
                " vfs_write+0xc6/0x3f0",
                " </TASK>"
            ]
        );
        assert_eq!(e.verdict.traces(), [trace.as_slice()]);
        let json = serde_json::to_value(&reasons[0]).unwrap();
        assert_eq!(
            json["trace"][2],
            " 0xffffffff81001024 write_sysrq_trigger+0x24"
        );
        // Without symbols the trace is as printed.
        let e = evaluate(&s, &output(RunnerVerdict::Pass, "", log), &c).unwrap();
        assert_eq!(e.verdict.traces()[0][2], " 0xffffffff81001024");
        let _ = std::fs::remove_dir_all(&c.dir);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn exit_status_and_missing_snapshot_both_reported() {
        let c = ctx("exit");
        let s = scenario("run = [\"x\"]\nexit = 2");
        let mut o = output(RunnerVerdict::Fail(1), "out\n", "");
        o.exit_status = Some(1);
        let e = evaluate(&s, &o, &c).unwrap();
        let reason = e.verdict.reason();
        assert!(
            reason.starts_with("exit status 1, expected 2; no snapshot yet: run with --update"),
            "{reason}"
        );
        assert!(c.dir.join("demo.snap.new").is_file());
        assert!(!c.dir.join("demo.snap").exists());
        std::fs::remove_dir_all(&c.dir).unwrap();
    }

    #[test]
    fn expected_failures() {
        let c = ctx("expected");
        let panic = scenario("run = [\"x\"]\nexpect = \"panic\"");
        let log = "Kernel panic - not syncing: sysrq triggered crash\nCall Trace:\n";
        let e = evaluate(&panic, &output(RunnerVerdict::Panic, "", log), &c).unwrap();
        assert_eq!(
            e.verdict,
            Verdict::Pass,
            "a panic's own Call Trace is not forbidden"
        );
        let e = evaluate(&panic, &output(RunnerVerdict::Pass, "", ""), &c).unwrap();
        assert_eq!(
            e.verdict.reason(),
            "expected a panic, but the command exited with status 0"
        );
        let timeout = scenario("run = [\"x\"]\nexpect = \"timeout\"");
        assert!(
            evaluate(&timeout, &output(RunnerVerdict::Timeout, "", ""), &c)
                .unwrap()
                .verdict
                .passed()
        );
        let e = evaluate(&timeout, &output(RunnerVerdict::Panic, "", ""), &c).unwrap();
        assert_eq!(
            e.verdict.reason(),
            "expected a timeout, but the kernel panicked"
        );
        // Not expected: reported as what happened.
        let plain = scenario("run = [\"x\"]");
        assert_eq!(
            evaluate(&plain, &output(RunnerVerdict::Timeout, "", ""), &c)
                .unwrap()
                .verdict,
            Verdict::Timeout
        );
        assert_eq!(
            evaluate(&plain, &output(RunnerVerdict::Panic, "", ""), &c)
                .unwrap()
                .verdict,
            Verdict::Panic
        );
        let mut o = output(RunnerVerdict::VmmError, "", "");
        o.runner_messages
            .push("kestrel: /dev/kvm: permission denied".into());
        assert_eq!(
            evaluate(&panic, &o, &c).unwrap().verdict,
            Verdict::VmmError("kestrel: /dev/kvm: permission denied".into())
        );
        assert_eq!(
            evaluate(&plain, &output(RunnerVerdict::BootFailure, "", ""), &c)
                .unwrap()
                .verdict
                .kind(),
            "boot-failure"
        );
        let _ = std::fs::remove_dir_all(&c.dir);
    }

    #[test]
    fn ktap_failures_by_name_and_tree_snapshot() {
        let c = ctx("ktap");
        let s = scenario("run = [\"x\"]\nktap = true");
        let stdout = "KTAP version 1\n1..1\n  KTAP version 1\n  1..2\n  ok 1 a\n  not ok 2 b\nnot ok 1 suite\n";
        let e = evaluate(&s, &output(RunnerVerdict::Fail(1), stdout, ""), &c).unwrap();
        let text = e.snapshot_text.unwrap();
        assert!(
            text.starts_with("== stdout (ktap) ==\nFAIL  suite\nok      a\nFAIL    b\n"),
            "{text}"
        );
        let Verdict::Fail(reasons) = e.verdict else {
            panic!()
        };
        assert!(reasons.contains(&FailReason::Ktap {
            failures: vec!["suite.b".into()]
        }));
        let _ = std::fs::remove_dir_all(&c.dir);
    }

    #[test]
    fn digest_replaces_large_stdout() {
        let s = scenario("run = [\"x\"]\ndigest = true");
        let big: String = (0..40_000)
            .map(|i| format!("{i:08} kestrel large-output line padding\n"))
            .collect();
        assert!(big.len() > 1 << 20);
        let text = snapshot_text(&s, &output(RunnerVerdict::Pass, &big, ""), None);
        assert!(
            text.starts_with("== stdout (digest) ==\nlines: 40000\nbytes: 1720000\nfnv1a64: "),
            "{text}"
        );
        assert!(
            !text.contains("[ADDR]"),
            "a checksum is not redacted: {text}"
        );
        assert_eq!(
            digest(""),
            "lines: 0\nbytes: 0\nfnv1a64: cbf29ce484222325\n"
        );
        let mut changed = big.clone();
        changed.replace_range(100..101, "X");
        assert_ne!(digest(&big), digest(&changed));
    }

    #[test]
    fn sections_and_kernel_log_selection() {
        let s = scenario(
            "run = [\"x\"]\nsnapshot = [\"stderr\", \"kernel-log\"]\nkernel_log = [\"dummy\"]\nredact_release = true",
        );
        let mut o = output(RunnerVerdict::Pass, "ignored", "[ 0.0] Linux version 6.1.0-9-amd64 (x)\n[ 3.2] dummy: loaded on 6.1.0-9-amd64\n[ 3.3] other\n");
        o.stderr = "warn\n".into();
        assert_eq!(
            snapshot_text(&s, &o, None),
            "== stderr ==\nwarn\n== kernel-log ==\n[TIME] dummy: loaded on [RELEASE]\n"
        );
    }
}

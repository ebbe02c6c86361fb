//! What a suite run leaves behind: per-case artifacts
//! (`<run>/<scenario>/<kernel>/{console.log,stdout,stderr,verdict.json,…}`),
//! the JUnit XML file, and the summary table.
//!
//! Invariant: the JUnit text is well-formed XML whatever the guest printed
//! (characters XML 1.0 cannot carry are replaced, long output is cut).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::evaluate::{FailReason, RunOutput, RunnerVerdict, Verdict};

/// Longest stdout/stderr kept for JUnit `system-out`/`system-err` (the tail).
pub const JUNIT_OUTPUT_LIMIT: usize = 64 * 1024;

/// One scenario × kernel, done.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// Kernel spec.
    pub kernel: String,
    /// The guest command as run.
    pub argv: Vec<String>,
    /// The result.
    pub verdict: Verdict,
    /// The runner's verdict; `None` when it never ran.
    pub runner_verdict: Option<RunnerVerdict>,
    /// The command's status.
    pub exit_status: Option<i32>,
    /// The expected status.
    pub expected_exit: i32,
    /// Boot time reported by the runner.
    pub boot_ms: Option<u64>,
    /// Total time reported by the runner.
    pub total_ms: u64,
    /// Host wall time of the case, build and evaluation included.
    pub wall_ms: u64,
    /// The case's artifact directory.
    pub artifacts: PathBuf,
    /// Tail of stdout (for JUnit).
    pub stdout_tail: String,
    /// Tail of stderr (for JUnit).
    pub stderr_tail: String,
    /// When the case passed only on a retry: the verdict of the first try
    /// (a hang or crash of the guest: see [`crate::SuiteOptions::retries`]).
    pub flaky: Option<String>,
}

impl CaseResult {
    /// `scenario@kernel`, the trial name.
    pub fn name(&self) -> String {
        format!("{}@{}", self.scenario, self.kernel)
    }
}

/// The last `limit` bytes of `text` (on a char boundary), with a note when cut.
pub fn tail(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[… {} bytes cut; full text in the artifacts]\n{}",
        start,
        &text[start..]
    )
}

#[derive(Serialize)]
struct VerdictJson<'a> {
    scenario: &'a str,
    kernel: &'a str,
    command: &'a [String],
    verdict: &'a str,
    reason: String,
    reasons: &'a [FailReason],
    runner_verdict: Option<String>,
    exit_status: Option<i32>,
    expected_exit: i32,
    boot_ms: Option<u64>,
    total_ms: u64,
    wall_ms: u64,
    runner_messages: &'a [String],
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io("write", path, e))
}

/// Writes a case's artifacts into `result.artifacts`: stdout, stderr,
/// console.log (unless the runner wrote it), verdict.json, and when present
/// snapshot.txt (the normalised text) and diff.txt.
pub fn write_case(
    result: &CaseResult,
    output: &RunOutput,
    snapshot_text: Option<&str>,
) -> Result<()> {
    let dir = &result.artifacts;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    write(&dir.join("stdout"), output.stdout.as_bytes())?;
    write(&dir.join("stderr"), output.stderr.as_bytes())?;
    let console = dir.join("console.log");
    if !console.exists() {
        write(&console, output.kernel_log.as_bytes())?;
    }
    if let Some(text) = snapshot_text {
        write(&dir.join("snapshot.txt"), text.as_bytes())?;
    }
    let diffs = result.verdict.diffs();
    if !diffs.is_empty() {
        write(&dir.join("diff.txt"), diffs.join("\n").as_bytes())?;
    }
    let reasons: &[FailReason] = match &result.verdict {
        Verdict::Fail(r) => r,
        _ => &[],
    };
    let json = VerdictJson {
        scenario: &result.scenario,
        kernel: &result.kernel,
        command: &result.argv,
        verdict: result.verdict.kind(),
        reason: result.verdict.reason(),
        reasons,
        runner_verdict: result.runner_verdict.map(|v| v.to_string()),
        exit_status: result.exit_status,
        expected_exit: result.expected_exit,
        boot_ms: result.boot_ms,
        total_ms: result.total_ms,
        wall_ms: result.wall_ms,
        runner_messages: &output.runner_messages,
    };
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Io {
        action: "encode",
        path: dir.join("verdict.json"),
        source: std::io::Error::other(e),
    })?;
    write(&dir.join("verdict.json"), text.as_bytes())
}

/// Text safe inside an XML element or attribute.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// JUnit XML: one `testsuite`, one `testcase` per scenario × kernel;
/// `failure` for failing checks, timeouts and panics, `error` for boot
/// failures and VMM errors; stdout/stderr tails as `system-out`/`system-err`.
pub fn junit_xml(results: &[CaseResult], wall_ms: u64) -> String {
    let is_error = |v: &Verdict| matches!(v, Verdict::BootFailure(_) | Verdict::VmmError(_));
    let errors = results.iter().filter(|r| is_error(&r.verdict)).count();
    let failures = results
        .iter()
        .filter(|r| !r.verdict.passed() && !is_error(&r.verdict))
        .count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let head = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\" time=\"{}\"",
        results.len(),
        seconds(wall_ms)
    );
    let _ = writeln!(x, "<testsuites name=\"kestrel\" {head}>");
    let _ = writeln!(x, "  <testsuite name=\"kestrel-scenarios\" {head}>");
    for r in results {
        let class = format!(
            "kestrel.{}",
            crate::kernel::slug(&r.kernel).replace('.', "_")
        );
        let _ = writeln!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\">",
            xml_escape(&r.scenario),
            xml_escape(&class),
            seconds(r.wall_ms)
        );
        if !r.verdict.passed() {
            let tag = if is_error(&r.verdict) {
                "error"
            } else {
                "failure"
            };
            let mut body = r.verdict.reason();
            for t in r.verdict.traces() {
                body.push_str("\n\n");
                body.push_str(&t.join("\n"));
            }
            for d in r.verdict.diffs() {
                body.push_str("\n\n");
                body.push_str(d);
            }
            let _ = writeln!(
                x,
                "      <{tag} message=\"{}\" type=\"{}\">{}</{tag}>",
                xml_escape(&r.verdict.reason()),
                r.verdict.kind(),
                xml_escape(&body)
            );
        }
        let mut out = format!(
            "kernel: {}\ncommand: {}\nartifacts: {}\n",
            r.kernel,
            r.argv.join(" "),
            r.artifacts.display()
        );
        out.push_str(&tail(&r.stdout_tail, JUNIT_OUTPUT_LIMIT));
        let _ = writeln!(x, "      <system-out>{}</system-out>", xml_escape(&out));
        if !r.stderr_tail.is_empty() {
            let _ = writeln!(
                x,
                "      <system-err>{}</system-err>",
                xml_escape(&tail(&r.stderr_tail, JUNIT_OUTPUT_LIMIT))
            );
        }
        x.push_str("    </testcase>\n");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// The summary table (scenario, kernel, verdict, time), a totals line, and
/// each non-passing case's reason, with the trace of a forbidden kernel-log
/// line under it (`      | …`, at most [`crate::trace::MAX_LINES`] lines).
pub fn summary_table(results: &[CaseResult], wall_ms: u64) -> String {
    let w_s = results
        .iter()
        .map(|r| r.scenario.len())
        .chain([8])
        .max()
        .unwrap_or(8);
    let w_k = results
        .iter()
        .map(|r| r.kernel.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<w_s$}  {:<w_k$}  {:<12}  {:>8}",
        "scenario", "kernel", "verdict", "time"
    );
    for r in results {
        let _ = writeln!(
            t,
            "{:<w_s$}  {:<w_k$}  {:<12}  {:>7.1}s",
            r.scenario,
            r.kernel,
            r.verdict.kind(),
            r.wall_ms as f64 / 1000.0
        );
    }
    let passed = results.iter().filter(|r| r.verdict.passed()).count();
    let _ = writeln!(
        t,
        "{} cases: {passed} passed, {} not passed; wall {:.1}s",
        results.len(),
        results.len() - passed,
        wall_ms as f64 / 1000.0
    );
    for r in results.iter().filter(|r| !r.verdict.passed()) {
        let _ = writeln!(t, "  {}: {}", r.name(), r.verdict);
        for trace in r.verdict.traces() {
            for line in trace {
                let _ = writeln!(t, "      | {line}");
            }
        }
    }
    for r in results.iter().filter(|r| r.verdict.passed()) {
        if let Some(first) = &r.flaky {
            let _ = writeln!(
                t,
                "  {}: flaky, passed on a retry (first try: {first})",
                r.name()
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: &str, verdict: Verdict, stdout: &str) -> CaseResult {
        CaseResult {
            scenario: scenario.into(),
            description: String::new(),
            kernel: "debian:6.1".into(),
            argv: vec!["sh".into(), "-c".into(), "echo <&>".into()],
            verdict,
            runner_verdict: Some(RunnerVerdict::Pass),
            exit_status: Some(0),
            expected_exit: 0,
            boot_ms: Some(1),
            total_ms: 2,
            wall_ms: 1500,
            artifacts: "/t/a".into(),
            stdout_tail: stdout.into(),
            stderr_tail: "err\u{1b}[0m".into(),
            flaky: None,
        }
    }

    #[test]
    fn junit_is_well_formed_and_counts() {
        let results = vec![
            result("ok_case", Verdict::Pass, "fine"),
            result(
                "bad\"name",
                Verdict::Fail(vec![FailReason::SnapshotDiff {
                    path: "s/x.snap".into(),
                    new_path: "s/x.snap.new".into(),
                    summary: "line 2".into(),
                    diff: "-    2 │ <old>\n+    2 │ new & ]]>\n".into(),
                }]),
                "ctrl \u{0}\u{7} chars ]]> <tag>",
            ),
            result("vmm", Verdict::VmmError("kvm gone".into()), ""),
        ];
        let xml = junit_xml(&results, 4200);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("tests"), Some("3"));
        assert_eq!(suite.attribute("failures"), Some("1"));
        assert_eq!(suite.attribute("errors"), Some("1"));
        let cases: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[1].attribute("name"), Some("bad\"name"));
        assert_eq!(cases[1].attribute("classname"), Some("kestrel.debian-6_1"));
        let failure = cases[1]
            .children()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert!(failure
            .attribute("message")
            .unwrap()
            .contains("differs at line 2"));
        assert!(failure.text().unwrap().contains("+    2 │ new & ]]>"));
        let out = cases[1]
            .children()
            .find(|n| n.has_tag_name("system-out"))
            .unwrap();
        assert!(out
            .text()
            .unwrap()
            .contains("ctrl \u{FFFD}\u{FFFD} chars ]]> <tag>"));
        assert!(cases[2].children().any(|n| n.has_tag_name("error")));
    }

    #[test]
    fn tails_cut_on_char_boundaries() {
        assert_eq!(tail("short", 10), "short");
        let t = tail("ééééé", 3);
        assert!(t.ends_with("é") && t.contains("cut"), "{t}");
    }

    #[test]
    fn table_lists_reasons() {
        let results = vec![
            result("a", Verdict::Pass, ""),
            result("b", Verdict::Timeout, ""),
        ];
        let t = summary_table(&results, 3000);
        assert!(t.contains("scenario  kernel"), "{t}");
        assert!(t.contains("b         debian:6.1  timeout"), "{t}");
        assert!(
            t.contains("2 cases: 1 passed, 1 not passed; wall 3.0s"),
            "{t}"
        );
        assert!(
            t.contains("  b@debian:6.1: timeout: the guest did not finish before the timeout"),
            "{t}"
        );
    }

    #[test]
    fn traces_are_shown_under_their_reason() {
        let reason = FailReason::ForbiddenLine {
            pattern: "Call Trace".into(),
            line: "[ 2.0] Call Trace:".into(),
            count: 1,
            trace: vec![
                "Call Trace:".into(),
                " vfs_write+0xc6/0x3f0 (fs/read_write.c:584)".into(),
            ],
        };
        let results = vec![result("w", Verdict::Fail(vec![reason]), "")];
        let t = summary_table(&results, 1000);
        assert!(
            t.contains(
                "  w@debian:6.1: fail: forbidden kernel-log line (/Call Trace/): `[ 2.0] Call Trace:`\n\
                 \x20     | Call Trace:\n\
                 \x20     |  vfs_write+0xc6/0x3f0 (fs/read_write.c:584)\n"
            ),
            "{t}"
        );
        let xml = junit_xml(&results, 1000);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert!(failure
            .text()
            .unwrap()
            .ends_with("\n\nCall Trace:\n vfs_write+0xc6/0x3f0 (fs/read_write.c:584)"));
    }
}

//! KTAP / TAP parser (Documentation/dev-tools/ktap.rst) → a result tree, and
//! its stable text rendering for snapshots.
//!
//! Nesting follows the spec: a subtest starts with an indented version line
//! (KTAP), an indented `# Subtest:` header (TAP 14 as older KUnit prints it),
//! an indented plan line, or — kselftest's runner — a version line behind a
//! `# ` prefix; it ends at the parent's next line that is not deeper,
//! and the parent's next result line names it. Diagnostic lines attach to the
//! test whose result line follows them; those after a frame's last result
//! attach to the frame's own test. Unknown lines never change the tree.
//!
//! Invariant: parsing never fails and never panics; what does not fit the
//! format is kept in [`Report::unknown`] or reported in [`Report::problems`].

use std::fmt::Write as _;

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`.
    Pass,
    /// `not ok` (also `# TIMEOUT`, `# ERROR`).
    Fail,
    /// `# SKIP`, whether `ok` or `not ok`.
    Skip,
    /// `# TODO`: not expected to pass; never a failure.
    Todo,
    /// `# XFAIL`: expected to fail; never a failure.
    XFail,
    /// A subtest that started but has no result line (a crash or a cut).
    Missing,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "ok",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
            Outcome::Todo => "todo",
            Outcome::XFail => "xfail",
            Outcome::Missing => "MISS",
        }
    }

    /// Whether this outcome fails the run.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Missing)
    }
}

/// One test and its subtests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestNode {
    /// The description from the result line (or the `# Subtest:` name).
    pub name: String,
    /// The number on the result line.
    pub number: Option<u32>,
    /// The result.
    pub outcome: Outcome,
    /// Directive and diagnostic data after `#` on the result line.
    pub directive: Option<String>,
    /// The subtests' plan, when they had one.
    pub plan: Option<u32>,
    /// Diagnostic lines about this test, without their `# `.
    pub diagnostics: Vec<String>,
    /// Subtests in order.
    pub children: Vec<TestNode>,
}

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Whether a version line was found at all.
    pub found: bool,
    /// Top-level plan.
    pub plan: Option<u32>,
    /// Top-level tests.
    pub tests: Vec<TestNode>,
    /// Diagnostics after the last top-level result (totals and the like).
    pub trailing: Vec<String>,
    /// Structural problems: plans not met, tests without result lines.
    pub problems: Vec<String>,
    /// Lines that are not KTAP (1-based line number, text).
    pub unknown: Vec<(usize, String)>,
}

/// What a line says once its frame's prefix is removed.
enum Line<'a> {
    Version,
    Plan(u32),
    Result {
        ok: bool,
        number: Option<u32>,
        description: &'a str,
        directive: Option<&'a str>,
    },
    Subtest(&'a str),
    Diagnostic(&'a str),
    Unknown,
}

fn is_version(body: &str) -> bool {
    let body = body.trim_end();
    ["KTAP version ", "TAP version "].iter().any(|v| {
        body.strip_prefix(v)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn classify(body: &str) -> Line<'_> {
    let body = body.trim_end();
    if is_version(body) {
        return Line::Version;
    }
    if let Some(n) = body.strip_prefix("1..") {
        let n = n.split('#').next().unwrap_or_default().trim();
        if let Ok(n) = n.parse() {
            return Line::Plan(n);
        }
    }
    let (ok, rest) = if let Some(r) = body.strip_prefix("not ok") {
        (false, r)
    } else if let Some(r) = body.strip_prefix("ok") {
        (true, r)
    } else if let Some(d) = body.strip_prefix('#') {
        let d = d.strip_prefix(' ').unwrap_or(d);
        if let Some(name) = d.strip_prefix("Subtest:") {
            return Line::Subtest(name.trim());
        }
        return Line::Diagnostic(d);
    } else {
        return Line::Unknown;
    };
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return Line::Unknown; // `okay`, `nothing`
    }
    let (head, directive) = match rest.split_once('#') {
        Some((h, d)) => (h, Some(d.trim())),
        None => (rest, None),
    };
    let head = head.trim_start();
    let digits = head.bytes().take_while(u8::is_ascii_digit).count();
    let number = head[..digits].parse().ok();
    let description = head[digits..].trim();
    let description = description.strip_prefix("- ").unwrap_or(description).trim();
    Line::Result {
        ok,
        number,
        description,
        directive,
    }
}

/// One nesting level being read.
#[derive(Debug, Default)]
struct Frame {
    /// Leading text every line of this level carries (after the root prefix).
    prefix: String,
    name_hint: Option<String>,
    plan: Option<u32>,
    children: Vec<TestNode>,
    /// Diagnostics not yet attached, with their line numbers.
    pending_diag: Vec<(usize, String)>,
    /// A closed subtest waiting for this level's result line.
    closed: Option<Box<Frame>>,
}

impl Frame {
    fn nested(prefix: String) -> Frame {
        Frame {
            prefix,
            ..Frame::default()
        }
    }

    /// Turns an unclaimed closed subtest into a node without a result.
    fn flush_closed(&mut self) {
        if let Some(sub) = self.closed.take() {
            let name = sub.name_hint.clone().unwrap_or_else(|| "(unnamed)".into());
            self.children
                .push(sub.into_node(name, None, Outcome::Missing, None));
        }
    }

    fn into_node(
        mut self,
        name: String,
        number: Option<u32>,
        outcome: Outcome,
        directive: Option<String>,
    ) -> TestNode {
        self.flush_closed();
        TestNode {
            name,
            number,
            outcome,
            directive,
            plan: self.plan,
            diagnostics: self.pending_diag.into_iter().map(|(_, d)| d).collect(),
            children: self.children,
        }
    }
}

fn outcome_of(ok: bool, directive: Option<&str>) -> Outcome {
    let word = directive
        .and_then(|d| d.split_whitespace().next())
        .unwrap_or_default()
        .to_ascii_uppercase();
    match word.as_str() {
        w if w.starts_with("SKIP") => Outcome::Skip,
        "TODO" => Outcome::Todo,
        "XFAIL" => Outcome::XFail,
        "TIMEOUT" | "ERROR" => Outcome::Fail,
        _ if ok => Outcome::Pass,
        _ => Outcome::Fail,
    }
}

/// Parses KTAP or TAP text. Lines before the first version line are unknown;
/// text before the version marker on that line (a console timestamp, say) is
/// cut from every following line.
pub fn parse(text: &str) -> Report {
    let mut report = Report::default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| {
        ["KTAP version ", "TAP version "]
            .iter()
            .filter_map(|m| l.find(m))
            .min()
            .is_some_and(|i| is_version(&l[i..]))
    });
    let Some(start) = start else {
        report.unknown = lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i + 1, (*l).to_owned()))
            .collect();
        return report;
    };
    report.found = true;
    let first = lines[start];
    let root_cut = ["KTAP version ", "TAP version "]
        .iter()
        .filter_map(|m| first.find(m))
        .min()
        .unwrap_or(0);
    for (i, l) in lines[..start].iter().enumerate() {
        report.unknown.push((i + 1, (*l).to_owned()));
    }

    let mut stack: Vec<Frame> = vec![Frame::default()];
    for (index, raw) in lines.iter().enumerate().skip(start + 1) {
        let line_no = index + 1;
        let Some(line) = raw.get(root_cut..) else {
            report.unknown.push((line_no, (*raw).to_owned()));
            continue;
        };
        // Deepest frame whose prefix the line carries.
        let depth = stack
            .iter()
            .rposition(|f| line.starts_with(f.prefix.as_str()))
            .unwrap_or(0);
        let prefix_len = stack[depth].prefix.len();
        let rest = &line[prefix_len..];
        let body = rest.trim_start();
        let indent = &rest[..rest.len() - body.len()];
        let mut kind = classify(body);
        let mut extra = indent.to_owned();
        // kselftest: a nested document behind `# `.
        if let Line::Diagnostic(d) = kind {
            if is_version(d) {
                extra.push_str(&body[..body.len() - d.len()]);
                kind = Line::Version;
            }
        }
        if matches!(kind, Line::Unknown) || body.is_empty() {
            if !body.is_empty() {
                report.unknown.push((line_no, (*raw).to_owned()));
            }
            continue;
        }
        // A diagnostic goes to the level it is written at, deeper levels
        // stay open; a structural line at a shallower level closes them.
        if let Line::Diagnostic(d) = kind {
            stack[depth].pending_diag.push((line_no, d.to_owned()));
            continue;
        }
        while stack.len() > depth + 1 {
            close_top(&mut stack);
        }
        // Version and `# Subtest:` lines (and a plan, which starts a list)
        // open a deeper level; an over-indented result line does not.
        let opens = matches!(kind, Line::Version | Line::Subtest(_) | Line::Plan(_));
        if opens && !extra.is_empty() {
            let prefix = format!("{}{}", stack[depth].prefix, extra);
            stack.push(Frame::nested(prefix));
        }
        let Some(frame) = stack.last_mut() else {
            break;
        };
        match kind {
            Line::Version => {}
            Line::Plan(n) => frame.plan = Some(n),
            Line::Subtest(name) => {
                if frame.name_hint.is_none() && frame.children.is_empty() {
                    frame.name_hint = Some(name.to_owned());
                } else {
                    frame
                        .pending_diag
                        .push((line_no, format!("Subtest: {name}")));
                }
            }
            Line::Result {
                ok,
                number,
                description,
                directive,
            } => {
                let outcome = outcome_of(ok, directive);
                let mut diags = std::mem::take(&mut frame.pending_diag);
                let sub = frame.closed.take();
                let name = if description.is_empty() {
                    sub.as_ref()
                        .and_then(|s| s.name_hint.clone())
                        .unwrap_or_else(|| format!("#{}", number.unwrap_or(0)))
                } else {
                    description.to_owned()
                };
                let directive = directive.filter(|d| !d.is_empty()).map(str::to_owned);
                let node = match sub {
                    Some(mut sub) => {
                        // Both levels' diagnostics, in document order.
                        sub.pending_diag.append(&mut diags);
                        sub.pending_diag.sort_by_key(|(line, _)| *line);
                        sub.into_node(name, number, outcome, directive)
                    }
                    None => TestNode {
                        name,
                        number,
                        outcome,
                        directive,
                        plan: None,
                        diagnostics: diags.into_iter().map(|(_, d)| d).collect(),
                        children: Vec::new(),
                    },
                };
                frame.children.push(node);
            }
            Line::Diagnostic(_) | Line::Unknown => {}
        }
    }
    while stack.len() > 1 {
        close_top(&mut stack);
    }
    if let Some(mut root) = stack.pop() {
        root.flush_closed();
        report.plan = root.plan;
        report.tests = root.children;
        report.trailing = root.pending_diag.into_iter().map(|(_, d)| d).collect();
    }
    check_plans(&report.tests, report.plan, "", &mut report.problems);
    if report.plan.is_none() {
        report.problems.push("no plan at the top level".into());
    }
    report
}

fn close_top(stack: &mut Vec<Frame>) {
    if let Some(top) = stack.pop() {
        if let Some(parent) = stack.last_mut() {
            parent.flush_closed();
            parent.closed = Some(Box::new(top));
        }
    }
}

fn check_plans(tests: &[TestNode], plan: Option<u32>, path: &str, out: &mut Vec<String>) {
    if let Some(plan) = plan {
        if tests.len() != plan as usize {
            let at = if path.is_empty() { "top level" } else { path };
            out.push(format!("{at}: planned {plan}, ran {}", tests.len()));
        }
    }
    for t in tests {
        let p = join(path, &t.name);
        if t.outcome == Outcome::Missing {
            out.push(format!("{p}: no result line"));
        }
        check_plans(&t.children, t.plan, &p, out);
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Leaf counts by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Passed leaves (`ok`, and `xfail`).
    pub passed: usize,
    /// Failed or missing leaves.
    pub failed: usize,
    /// Skipped leaves (and `todo`).
    pub skipped: usize,
}

impl Report {
    /// Full paths (`suite.sub.case`) of failing tests none of whose subtests
    /// fail — the tests to look at first — in document order.
    pub fn failures(&self) -> Vec<String> {
        fn walk(nodes: &[TestNode], path: &str, out: &mut Vec<String>) {
            for n in nodes {
                let p = join(path, &n.name);
                let before = out.len();
                walk(&n.children, &p, out);
                if n.outcome.is_failure() && out.len() == before {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.tests, "", &mut out);
        out
    }

    /// Whether the run is good: a version line, no failing test, plans met.
    pub fn passed(&self) -> bool {
        self.found && self.failures().is_empty() && self.plan_problems().is_empty()
    }

    /// Problems that fail the run (all but a missing top-level plan, which
    /// the spec allows).
    pub fn plan_problems(&self) -> Vec<&str> {
        self.problems
            .iter()
            .map(String::as_str)
            .filter(|p| !p.starts_with("no plan"))
            .filter(|p| !p.ends_with(": no result line"))
            .collect()
    }

    /// Leaf counts.
    pub fn totals(&self) -> Totals {
        fn walk(nodes: &[TestNode], t: &mut Totals) {
            for n in nodes {
                if n.children.is_empty() {
                    match n.outcome {
                        Outcome::Pass | Outcome::XFail => t.passed += 1,
                        Outcome::Fail | Outcome::Missing => t.failed += 1,
                        Outcome::Skip | Outcome::Todo => t.skipped += 1,
                    }
                } else {
                    walk(&n.children, t);
                }
            }
        }
        let mut t = Totals::default();
        walk(&self.tests, &mut t);
        t
    }

    /// Every leaf test with its full path (`suite.case`, `suite.case.param`),
    /// in document order: what kunit.py counts and reports one by one.
    pub fn leaves(&self) -> Vec<(String, &TestNode)> {
        fn walk<'a>(nodes: &'a [TestNode], path: &str, out: &mut Vec<(String, &'a TestNode)>) {
            for n in nodes {
                let p = join(path, &n.name);
                if n.children.is_empty() {
                    out.push((p, n));
                } else {
                    walk(&n.children, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.tests, "", &mut out);
        out
    }

    /// The result tree without diagnostics or directive text beyond its
    /// first word (`SKIP`, `TIMEOUT`): what a snapshot of a run keeps, so
    /// timings and messages in diagnostics never make it differ.
    pub fn render_outcomes(&self) -> String {
        fn walk(nodes: &[TestNode], depth: usize, out: &mut String) {
            for n in nodes {
                let directive = n
                    .directive
                    .as_deref()
                    .and_then(|d| d.split_whitespace().next())
                    .map(|d| format!(" # {}", d.to_ascii_uppercase()))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<6}{}{}{directive}",
                    n.outcome.label(),
                    "  ".repeat(depth),
                    n.name
                );
                walk(&n.children, depth + 1, out);
            }
        }
        if !self.found {
            return "no KTAP/TAP version line found\n".into();
        }
        let mut out = String::new();
        walk(&self.tests, 0, &mut out);
        let t = self.totals();
        let _ = writeln!(
            out,
            "--\ntotals: {} passed, {} failed, {} skipped",
            t.passed, t.failed, t.skipped
        );
        out
    }

    /// JUnit XML: one `testsuite` per top-level test, one `testcase` per
    /// leaf under it (`classname` the path above the leaf); `failure` with
    /// the test's diagnostics for failing and missing ones, `skipped` for
    /// skips.
    pub fn junit(&self, name: &str) -> String {
        use crate::report::xml_escape;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let t = self.totals();
        let _ = writeln!(
            x,
            "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            xml_escape(name),
            t.passed + t.failed + t.skipped,
            t.failed,
            t.skipped
        );
        for top in &self.tests {
            let sub = Report {
                found: true,
                tests: vec![top.clone()],
                ..Report::default()
            };
            let st = sub.totals();
            let _ = writeln!(
                x,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
                xml_escape(&top.name),
                st.passed + st.failed + st.skipped,
                st.failed,
                st.skipped
            );
            for (path, leaf) in sub.leaves() {
                let (class, case) = path.rsplit_once('.').unwrap_or((name, path.as_str()));
                let _ = write!(
                    x,
                    "    <testcase name=\"{}\" classname=\"{}\"",
                    xml_escape(case),
                    xml_escape(class)
                );
                let directive = leaf.directive.as_deref().unwrap_or_default();
                match leaf.outcome {
                    Outcome::Pass | Outcome::XFail => x.push_str("/>\n"),
                    Outcome::Skip | Outcome::Todo => {
                        let _ = writeln!(
                            x,
                            ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                            xml_escape(directive)
                        );
                    }
                    Outcome::Fail | Outcome::Missing => {
                        let message = if leaf.outcome == Outcome::Missing {
                            "no result line (the test crashed or the run was cut)".to_owned()
                        } else if directive.is_empty() {
                            "not ok".to_owned()
                        } else {
                            format!("not ok # {directive}")
                        };
                        let _ = writeln!(
                            x,
                            ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                            xml_escape(&message),
                            xml_escape(&leaf.diagnostics.join("\n"))
                        );
                    }
                }
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }

    /// The stable text tree: status column, two spaces per level, the name,
    /// the directive; diagnostics only under failing tests. Then problems,
    /// totals and failing paths.
    pub fn render(&self) -> String {
        fn walk(nodes: &[TestNode], depth: usize, out: &mut String) {
            for n in nodes {
                let indent = "  ".repeat(depth);
                let directive = n
                    .directive
                    .as_deref()
                    .map(|d| format!(" # {d}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{:<6}{indent}{}{directive}", n.outcome.label(), n.name);
                if n.outcome.is_failure() {
                    for d in &n.diagnostics {
                        let _ = writeln!(out, "{:<6}{indent}  # {d}", "");
                    }
                }
                walk(&n.children, depth + 1, out);
            }
        }
        let mut out = String::new();
        if !self.found {
            return "no KTAP/TAP version line found\n".into();
        }
        walk(&self.tests, 0, &mut out);
        out.push_str("--\n");
        for p in &self.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        let t = self.totals();
        let _ = writeln!(
            out,
            "totals: {} passed, {} failed, {} skipped",
            t.passed, t.failed, t.skipped
        );
        for f in self.failures() {
            let _ = writeln!(out, "failed: {f}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_outcome_tree_and_junit() {
        let r = parse(
            "[    1.000000] KTAP version 1\n[    1.000001] 1..1\n[    1.000002]     KTAP version 1\n\
             [    1.000003]     # Subtest: example\n[    1.000004]     1..3\n\
             [    1.000005]     ok 1 example_simple_test\n\
             [    1.000006]     ok 2 example_skip_test # SKIP this test should be skipped\n\
             [    1.000007]     # example_fail: EXPECTATION FAILED at x.c:1 <a&b>\n\
             [    1.000008]     not ok 3 example_fail\n[    1.000009] not ok 1 example\n",
        );
        let leaves: Vec<(String, Outcome)> = r
            .leaves()
            .into_iter()
            .map(|(p, n)| (p, n.outcome))
            .collect();
        assert_eq!(
            leaves,
            [
                ("example.example_simple_test".to_owned(), Outcome::Pass),
                ("example.example_skip_test".to_owned(), Outcome::Skip),
                ("example.example_fail".to_owned(), Outcome::Fail),
            ]
        );
        assert_eq!(
            r.render_outcomes(),
            "FAIL  example\nok      example_simple_test\nskip    example_skip_test # SKIP\n\
             FAIL    example_fail\n--\ntotals: 1 passed, 1 failed, 1 skipped\n"
        );
        let x = r.junit("kunit");
        let doc = roxmltree::Document::parse(&x).unwrap();
        let cases: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].attribute("classname"), Some("example"));
        assert!(cases[1].children().any(|c| c.has_tag_name("skipped")));
        let failure = cases[2]
            .children()
            .find(|c| c.has_tag_name("failure"))
            .unwrap();
        assert_eq!(
            failure.text(),
            Some("example_fail: EXPECTATION FAILED at x.c:1 <a&b>")
        );
        assert!(x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
    }

    #[test]
    fn spec_example_tree() {
        let text = "\
KTAP version 1
1..1
  KTAP version 1
  1..3
    KTAP version 1
    1..1
    # test_1: initializing test_1
    ok 1 test_1
  ok 1 example_test_1
    KTAP version 1
    1..2
    ok 1 test_1 # SKIP test_1 skipped
    ok 2 test_2
  ok 2 example_test_2
    KTAP version 1
    1..3
    ok 1 test_1
    # test_2: FAIL
    not ok 2 test_2
    ok 3 test_3 # SKIP test_3 skipped
  not ok 3 example_test_3
not ok 1 main_test
";
        let r = parse(text);
        assert_eq!(r.plan, Some(1));
        assert_eq!(r.tests.len(), 1);
        let main = &r.tests[0];
        assert_eq!(
            (main.name.as_str(), main.outcome),
            ("main_test", Outcome::Fail)
        );
        assert_eq!(main.children.len(), 3);
        assert_eq!(
            main.children[0].children[0].diagnostics,
            ["test_1: initializing test_1"]
        );
        assert_eq!(main.children[1].children[0].outcome, Outcome::Skip);
        assert_eq!(main.children[2].children[1].diagnostics, ["test_2: FAIL"]);
        assert_eq!(r.failures(), ["main_test.example_test_3.test_2"]);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(!r.passed());
        assert_eq!(
            r.totals(),
            Totals {
                passed: 3,
                failed: 1,
                skipped: 2
            }
        );
    }

    #[test]
    fn result_line_forms() {
        for (line, ok, num, desc, dir) in [
            ("ok 1 test_case_name", true, Some(1), "test_case_name", None),
            ("not ok 12 - with dash", false, Some(12), "with dash", None),
            (
                "ok 5 check return code # rcode=0",
                true,
                Some(5),
                "check return code",
                Some("rcode=0"),
            ),
            ("ok", true, None, "", None),
        ] {
            match classify(line) {
                Line::Result {
                    ok: o,
                    number,
                    description,
                    directive,
                } => assert_eq!(
                    (o, number, description, directive),
                    (ok, num, desc, dir),
                    "{line}"
                ),
                _ => panic!("not a result: {line}"),
            }
        }
        assert!(matches!(classify("okay then"), Line::Unknown));
        assert_eq!(outcome_of(false, Some("TIMEOUT 30 seconds")), Outcome::Fail);
        assert_eq!(outcome_of(true, Some("skip no hw")), Outcome::Skip);
        assert_eq!(outcome_of(false, Some("SKIP")), Outcome::Skip);
        assert_eq!(outcome_of(false, Some("TODO later")), Outcome::Todo);
        assert_eq!(outcome_of(true, Some("XFAIL known")), Outcome::XFail);
        assert_eq!(outcome_of(false, Some("exit=1")), Outcome::Fail);
    }

    #[test]
    fn no_version_line_is_not_a_pass() {
        let r = parse("hello\nok 1 x\n");
        assert!(!r.found && !r.passed());
        assert_eq!(r.unknown.len(), 2);
        assert_eq!(r.render(), "no KTAP/TAP version line found\n");
    }

    #[test]
    fn cut_subtest_is_missing() {
        let r = parse(
            "KTAP version 1\n1..2\n  KTAP version 1\n  # Subtest: crashy\n  1..2\n  ok 1 a\n",
        );
        assert_eq!(r.tests.len(), 1);
        assert_eq!(r.tests[0].name, "crashy");
        assert_eq!(r.tests[0].outcome, Outcome::Missing);
        assert_eq!(r.failures(), ["crashy"]);
        assert!(
            r.problems
                .contains(&"top level: planned 2, ran 1".to_string()),
            "{:?}",
            r.problems
        );
        assert!(
            r.problems.contains(&"crashy: planned 2, ran 1".to_string()),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn console_prefix_is_cut() {
        let text =
            "[    0.1] boot noise\n[    0.2] KTAP version 1\n[    0.3] 1..1\n[    0.4] ok 1 t\n";
        let r = parse(text);
        assert_eq!(r.tests.len(), 1);
        assert!(r.passed());
        assert_eq!(r.unknown, [(1, "[    0.1] boot noise".to_string())]);
    }
}

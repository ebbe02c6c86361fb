//! The ABI matrix: scenario × kernel verdicts, the differences between
//! kernels, and its reports (Markdown, JSON, self-contained HTML).
//!
//! Built from a finished suite run (one [`CaseResult`] per case, with its
//! artifacts on disk) plus the kernels that could not be resolved. A cell is
//! `pass` when the output matches the generic snapshot, `differs` when it
//! matches its own accepted `<name>@<series>.snap` which is not the generic
//! one, `fail` for any failing verdict, `not-run` when the scenario's
//! `kernels` globs or the filter leave the kernel out, `unresolved` for a
//! kernel that could not be found. The differences come from the outputs of
//! this run, compared line by line: `key: value` lines by key, other lines
//! by presence.
//!
//! Invariant: the HTML report needs nothing but itself (inline CSS, no
//! scripts, no external links), so it can be opened from disk or mailed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::report::{xml_escape, CaseResult};
use crate::snapshot::{self, SnapshotFile, SnapshotTarget};

/// A kernel column.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Column {
    /// The spec as given (`debian:6.12`).
    pub spec: String,
    /// `uname -r` of the kernel, when resolved.
    pub release: Option<String>,
    /// Why the spec could not be resolved (then nothing ran on it).
    pub unresolved: Option<String>,
}

/// A cell's state.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Matches the generic snapshot (or passed without one).
    Pass,
    /// Matches this kernel series' own accepted snapshot, which differs
    /// from the generic one.
    Differs,
    /// A failing verdict (any kind).
    Fail,
    /// The scenario does not run on this kernel (its `kernels` globs, or
    /// the filter).
    NotRun,
    /// The kernel could not be resolved.
    Unresolved,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::Pass => "pass",
            State::Differs => "differs",
            State::Fail => "fail",
            State::NotRun => "not run",
            State::Unresolved => "unresolved",
        }
    }
}

/// One scenario on one kernel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cell {
    pub kernel: String,
    pub state: State,
    /// The verdict kind (`pass`, `fail`, `timeout`, …) when it ran.
    pub verdict: Option<String>,
    /// Why it did not pass (empty when it passed).
    pub reason: String,
    /// For `fail`: the diff against the snapshot it was compared with; for
    /// `differs`: the diff of its accepted snapshot against the generic one.
    pub diff: Option<String>,
    /// The snapshot file it was compared with, relative to the snapshots dir.
    pub baseline: Option<String>,
    /// Passed only on a retry: the first try's verdict.
    pub flaky: Option<String>,
}

/// A line whose value is not the same on every kernel that ran.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// The line's key (`stdout: mseal`), or the line itself for list output.
    pub key: String,
    /// Per kernel spec (in column order): the value, `None` when absent.
    pub values: Vec<(String, Option<String>)>,
    /// One sentence: `ENOSYS up to debian:6.1, ok from debian:6.12 on`.
    pub summary: String,
}

/// One scenario.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub scenario: String,
    pub description: String,
    pub cells: Vec<Cell>,
    pub differences: Vec<Difference>,
}

/// The whole matrix.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Matrix {
    pub run_id: String,
    pub wall_ms: u64,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

/// A scenario to show, with the kernels it was planned on.
#[derive(Debug, Clone)]
pub struct PlannedRow {
    pub scenario: String,
    pub description: String,
    /// Kernel specs it was planned on (others are `not run`).
    pub kernels: Vec<String>,
    /// Its accepted snapshots (`snapshots/` beside the scenario file).
    pub snapshots_dir: PathBuf,
}

impl Matrix {
    /// Builds the matrix from a run: `results` with their artifacts
    /// (`snapshot.txt`, `diff.txt`); each row names the directory of its
    /// accepted per-kernel snapshots.
    pub fn build(
        run_id: &str,
        wall_ms: u64,
        columns: Vec<Column>,
        rows: &[PlannedRow],
        results: &[CaseResult],
    ) -> Matrix {
        let rows = rows
            .iter()
            .map(|planned| {
                let mut outputs: Vec<(String, String)> = Vec::new();
                let cells = columns
                    .iter()
                    .map(|col| {
                        if let Some(why) = &col.unresolved {
                            return Cell {
                                kernel: col.spec.clone(),
                                state: State::Unresolved,
                                verdict: None,
                                reason: why.clone(),
                                diff: None,
                                baseline: None,
                                flaky: None,
                            };
                        }
                        let result = results
                            .iter()
                            .find(|r| r.scenario == planned.scenario && r.kernel == col.spec);
                        match result {
                            Some(r) if planned.kernels.contains(&col.spec) => {
                                if let Ok(text) =
                                    std::fs::read_to_string(r.artifacts.join("snapshot.txt"))
                                {
                                    outputs.push((col.spec.clone(), text));
                                }
                                cell_of(r, &planned.scenario, &planned.snapshots_dir)
                            }
                            _ => Cell {
                                kernel: col.spec.clone(),
                                state: State::NotRun,
                                verdict: None,
                                reason: String::new(),
                                diff: None,
                                baseline: None,
                                flaky: None,
                            },
                        }
                    })
                    .collect();
                Row {
                    scenario: planned.scenario.clone(),
                    description: planned.description.clone(),
                    cells,
                    differences: differences(&outputs),
                }
            })
            .collect();
        Matrix {
            run_id: run_id.to_owned(),
            wall_ms,
            columns,
            rows,
        }
    }

    /// Whether every cell that ran passed and every kernel resolved.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| {
            r.cells
                .iter()
                .all(|c| matches!(c.state, State::Pass | State::Differs | State::NotRun))
        })
    }

    /// Counts of cells per state, for the summary line.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for c in self.rows.iter().flat_map(|r| &r.cells) {
            *out.entry(c.state.label()).or_insert(0) += 1;
        }
        out
    }

    /// The JSON report.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The Markdown report: the table, then the differences, then the
    /// failures.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Kestrel ABI matrix\n\n");
        out.push_str(&format!(
            "Run `{}`, {:.1} s. Cells: {}.\n\n",
            self.run_id,
            self.wall_ms as f64 / 1000.0,
            self.counts_line()
        ));
        out.push_str("| scenario |");
        for c in &self.columns {
            out.push_str(&format!(" {} |", column_title(c)));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(self.columns.len()));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!("| {} |", r.scenario));
            for c in &r.cells {
                let mark = if c.flaky.is_some() { " (flaky)" } else { "" };
                out.push_str(&format!(" {}{mark} |", c.state.label()));
            }
            out.push('\n');
        }
        for col in self.columns.iter().filter(|c| c.unresolved.is_some()) {
            out.push_str(&format!(
                "\n`{}` could not be resolved: {}\n",
                col.spec,
                col.unresolved.as_deref().unwrap_or_default()
            ));
        }
        out.push_str("\n## Differences between kernels\n");
        let mut any = false;
        for r in self.rows.iter().filter(|r| !r.differences.is_empty()) {
            any = true;
            out.push_str(&format!("\n### {}\n\n", r.scenario));
            for d in &r.differences {
                out.push_str(&format!("- `{}`: {}\n", d.key, d.summary));
            }
        }
        if !any {
            out.push_str("\nNone: every scenario printed the same on every kernel.\n");
        }
        let flaky: Vec<(&Row, &Cell)> = self
            .rows
            .iter()
            .flat_map(|r| r.cells.iter().map(move |c| (r, c)))
            .filter(|(_, c)| c.flaky.is_some())
            .collect();
        if !flaky.is_empty() {
            out.push_str("\n## Flaky cells (passed on a retry)\n\n");
            for (r, c) in flaky {
                out.push_str(&format!(
                    "- {} on {}: first try {}\n",
                    r.scenario,
                    c.kernel,
                    c.flaky.as_deref().unwrap_or_default()
                ));
            }
        }
        let failing: Vec<(&Row, &Cell)> = self
            .rows
            .iter()
            .flat_map(|r| r.cells.iter().map(move |c| (r, c)))
            .filter(|(_, c)| c.state == State::Fail)
            .collect();
        if !failing.is_empty() {
            out.push_str("\n## Failures\n");
            for (r, c) in failing {
                out.push_str(&format!(
                    "\n### {} on {}\n\n{}\n",
                    r.scenario, c.kernel, c.reason
                ));
                if let Some(diff) = &c.diff {
                    out.push_str(&format!("\n```diff\n{}\n```\n", diff.trim_end()));
                }
            }
        }
        out
    }

    /// The HTML report (self-contained).
    pub fn html(&self) -> String {
        let mut out = String::from(HTML_HEAD);
        out.push_str(&format!(
            "<h1>Kestrel ABI matrix</h1>\n<p>Run <code>{}</code>, {:.1} s. Cells: {}.</p>\n",
            xml_escape(&self.run_id),
            self.wall_ms as f64 / 1000.0,
            xml_escape(&self.counts_line())
        ));
        out.push_str("<table class=\"matrix\">\n<tr><th>scenario</th>");
        for c in &self.columns {
            out.push_str(&format!(
                "<th>{}<br><small>{}</small></th>",
                xml_escape(&c.spec),
                xml_escape(
                    c.release
                        .as_deref()
                        .or(c.unresolved.as_ref().map(|_| "unresolved"))
                        .unwrap_or("")
                )
            ));
        }
        out.push_str("</tr>\n");
        for r in &self.rows {
            out.push_str(&format!(
                "<tr><th class=\"name\" title=\"{}\">{}</th>",
                xml_escape(&r.description),
                xml_escape(&r.scenario)
            ));
            for c in &r.cells {
                let class = match c.state {
                    State::Pass => "pass",
                    State::Differs => "differs",
                    State::Fail => "fail",
                    State::NotRun => "notrun",
                    State::Unresolved => "unresolved",
                };
                let mut text = match (&c.verdict, c.state) {
                    (Some(v), State::Fail) if v != "fail" => v.clone(),
                    _ => c.state.label().to_owned(),
                };
                if c.flaky.is_some() {
                    text.push_str(" (flaky)");
                }
                if c.diff.is_some() {
                    out.push_str(&format!(
                        "<td class=\"{class}\"><a href=\"#{}\">{}</a></td>",
                        anchor(&r.scenario, &c.kernel),
                        xml_escape(&text)
                    ));
                } else {
                    let title = match &c.flaky {
                        Some(first) => format!("passed on a retry; first try: {first}"),
                        None => c.reason.clone(),
                    };
                    out.push_str(&format!(
                        "<td class=\"{class}\" title=\"{}\">{}</td>",
                        xml_escape(&title),
                        xml_escape(&text)
                    ));
                }
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        for col in self.columns.iter().filter(|c| c.unresolved.is_some()) {
            out.push_str(&format!(
                "<p class=\"unresolved-note\"><code>{}</code> could not be resolved: {}</p>\n",
                xml_escape(&col.spec),
                xml_escape(col.unresolved.as_deref().unwrap_or_default())
            ));
        }

        out.push_str("<h2>Differences between kernels</h2>\n");
        let differing: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| !r.differences.is_empty())
            .collect();
        if differing.is_empty() {
            out.push_str("<p>None: every scenario printed the same on every kernel.</p>\n");
        }
        for r in differing {
            out.push_str(&format!(
                "<h3>{}</h3>\n<table class=\"diffs\"><tr><th>line</th>",
                xml_escape(&r.scenario)
            ));
            for (spec, _) in &r.differences[0].values {
                out.push_str(&format!("<th>{}</th>", xml_escape(spec)));
            }
            out.push_str("<th>summary</th></tr>\n");
            for d in &r.differences {
                out.push_str(&format!("<tr><td><code>{}</code></td>", xml_escape(&d.key)));
                for (_, v) in &d.values {
                    match v {
                        Some(v) => out.push_str(&format!("<td>{}</td>", xml_escape(v))),
                        None => out.push_str("<td class=\"absent\">—</td>"),
                    }
                }
                out.push_str(&format!("<td>{}</td></tr>\n", xml_escape(&d.summary)));
            }
            out.push_str("</table>\n");
        }

        let detailed: Vec<(&Row, &Cell)> = self
            .rows
            .iter()
            .flat_map(|r| r.cells.iter().map(move |c| (r, c)))
            .filter(|(_, c)| c.diff.is_some())
            .collect();
        if !detailed.is_empty() {
            out.push_str("<h2>Cell details</h2>\n");
        }
        for (r, c) in detailed {
            out.push_str(&format!(
                "<section id=\"{}\" class=\"{}\"><h3>{} on {} — {}</h3>\n",
                anchor(&r.scenario, &c.kernel),
                if c.state == State::Fail {
                    "fail"
                } else {
                    "differs"
                },
                xml_escape(&r.scenario),
                xml_escape(&c.kernel),
                xml_escape(c.state.label())
            ));
            let what = match c.state {
                State::Fail => format!(
                    "{} (compared with <code>{}</code>)",
                    xml_escape(&c.reason),
                    xml_escape(c.baseline.as_deref().unwrap_or("-"))
                ),
                _ => format!(
                    "The accepted <code>{}</code> against the generic snapshot:",
                    xml_escape(c.baseline.as_deref().unwrap_or("-"))
                ),
            };
            out.push_str(&format!("<p>{what}</p>\n<pre class=\"diff\">"));
            for line in c.diff.as_deref().unwrap_or_default().lines() {
                let class = if line.starts_with('-') {
                    " class=\"del\""
                } else if line.starts_with('+') {
                    " class=\"add\""
                } else {
                    ""
                };
                out.push_str(&format!("<span{class}>{}</span>\n", xml_escape(line)));
            }
            out.push_str("</pre></section>\n");
        }
        out.push_str("</body>\n</html>\n");
        out
    }

    fn counts_line(&self) -> String {
        self.counts()
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const HTML_HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Kestrel ABI matrix</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
table.matrix td { text-align: center; min-width: 6em; font-weight: 600; }
th.name { font-family: ui-monospace, monospace; font-weight: normal; }
td.pass { background: #c8ecc9; }
td.differs { background: #cfe3fb; }
td.fail { background: #f7c1c1; }
td.notrun { background: #eee; color: #777; font-weight: normal; }
td.unresolved { background: #fde2b8; }
td.absent { color: #999; }
td a { color: inherit; }
pre.diff { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
pre.diff .del { color: #a40000; background: #fde8e8; }
pre.diff .add { color: #0a5d00; background: #e6f6e4; }
section.fail h3 { color: #a40000; }
code { font-family: ui-monospace, monospace; }
</style>
</head>
<body>
"#;

fn column_title(c: &Column) -> String {
    match (&c.release, &c.unresolved) {
        (Some(r), _) => format!("{} ({r})", c.spec),
        (None, Some(_)) => format!("{} (unresolved)", c.spec),
        _ => c.spec.clone(),
    }
}

fn anchor(scenario: &str, kernel: &str) -> String {
    let mut s = format!("cell-{scenario}-{kernel}");
    s = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s
}

fn cell_of(r: &CaseResult, scenario: &str, snapshots_dir: &Path) -> Cell {
    let series = crate::kernel::series_of(&r.kernel);
    let target = SnapshotTarget::new(snapshots_dir, scenario, series);
    let baseline_path = target.baseline().to_path_buf();
    let baseline = baseline_path
        .strip_prefix(snapshots_dir)
        .ok()
        .map(|p| p.display().to_string());
    let own = target
        .per_kernel
        .as_deref()
        .filter(|p| p.is_file() && *p == baseline_path.as_path());
    if !r.verdict.passed() {
        let diff = std::fs::read_to_string(r.artifacts.join("diff.txt"))
            .ok()
            .filter(|d| !d.trim().is_empty());
        return Cell {
            kernel: r.kernel.clone(),
            state: State::Fail,
            verdict: Some(r.verdict.kind().to_owned()),
            reason: r.verdict.reason(),
            diff,
            baseline,
            flaky: None,
        };
    }
    // Passed: against its own per-kernel snapshot, which may differ from
    // the generic one.
    let differs = own.and_then(|own| {
        let own = SnapshotFile::read(own).ok()??;
        let generic = SnapshotFile::read(&target.generic).ok()??;
        let (a, b) = (
            snapshot::comparable(&generic.contents),
            snapshot::comparable(&own.contents),
        );
        (a != b).then(|| snapshot::diff(&a, &b).text)
    });
    Cell {
        kernel: r.kernel.clone(),
        state: if differs.is_some() {
            State::Differs
        } else {
            State::Pass
        },
        verdict: Some(r.verdict.kind().to_owned()),
        reason: String::new(),
        diff: differs,
        baseline,
        flaky: r.flaky.clone(),
    }
}

/// `(key, value)` entries of a snapshot text: under each `== stream ==`
/// header, `key: value` lines by key, other lines as present; a key seen
/// again gets `#2`, `#3`.
fn entries(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("== ").and_then(|l| l.strip_suffix(" ==")) {
            section = name.to_owned();
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (key, value) = match line.split_once(": ") {
            Some((k, v)) if !k.is_empty() => (k.to_owned(), v.to_owned()),
            _ => (line.to_owned(), "present".to_owned()),
        };
        let key = if section.is_empty() || section == "stdout" {
            key
        } else {
            format!("{section}: {key}")
        };
        let n = seen.entry(key.clone()).or_insert(0);
        *n += 1;
        let key = if *n > 1 { format!("{key} #{n}") } else { key };
        out.push((key, value));
    }
    out
}

/// The lines that are not the same on every kernel, in first-seen order.
fn differences(outputs: &[(String, String)]) -> Vec<Difference> {
    if outputs.len() < 2 {
        return Vec::new();
    }
    let parsed: Vec<(String, BTreeMap<String, String>)> = outputs
        .iter()
        .map(|(k, text)| (k.clone(), entries(text).into_iter().collect()))
        .collect();
    let mut keys: Vec<String> = Vec::new();
    for (_, text) in outputs {
        for (k, _) in entries(text) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys.into_iter()
        .filter_map(|key| {
            let values: Vec<(String, Option<String>)> = parsed
                .iter()
                .map(|(kernel, map)| (kernel.clone(), map.get(&key).cloned()))
                .collect();
            let first = &values[0].1;
            if values.iter().all(|(_, v)| v == first) {
                return None;
            }
            Some(Difference {
                summary: summarise(&values),
                key,
                values,
            })
        })
        .collect()
}

/// `absent up to debian:6.1, ok from debian:6.12 on` when the value changes
/// once along the columns; otherwise every kernel's value.
fn summarise(values: &[(String, Option<String>)]) -> String {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "absent".into());
    let changes: Vec<usize> = (1..values.len())
        .filter(|&i| values[i].1 != values[i - 1].1)
        .collect();
    if let [i] = changes[..] {
        format!(
            "{} up to {}, {} from {} on",
            show(&values[i - 1].1),
            values[i - 1].0,
            show(&values[i].1),
            values[i].0
        )
    } else {
        values
            .iter()
            .map(|(k, v)| format!("{k}: {}", show(v)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The series whose output is the generic snapshot (`test`'s kernel).
pub const BASELINE_SERIES: &str = "6.1";

/// One matrix run, for `cargo xtask matrix` and `kestrel matrix`.
pub struct MatrixRun<'a> {
    /// Scenario directories, filters, jobs, retries, `update`; its
    /// `kernels` are replaced by the resolvable columns and per-kernel
    /// snapshots are always on.
    pub options: crate::SuiteOptions,
    /// One column per spec, in order.
    pub kernels: Vec<String>,
    /// What boots the cells.
    pub backend: &'a dyn crate::Backend,
    /// Where `matrix.md`, `matrix.json` and `matrix.html` go.
    pub report_dir: PathBuf,
}

/// Resolves every column from the cache (one that cannot be is an
/// `unresolved` column, the others run), runs the suite, with `update`
/// tidies the per-kernel snapshots, writes the reports and returns the
/// matrix. Progress lines go to stderr.
pub fn run_matrix(run: MatrixRun<'_>) -> crate::Result<Matrix> {
    use crate::{run_suite, Error, Session};
    let cache = kestrel_kernels::Cache::from_env().map_err(|e| Error::Options(e.to_string()))?;
    let columns: Vec<Column> = run
        .kernels
        .iter()
        .map(|spec| {
            let resolved = spec
                .parse::<kestrel_kernels::KernelSpec>()
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    kestrel_kernels::resolve(&k, &cache, kestrel_kernels::Fetch::CacheOnly)
                        .map_err(|e| e.to_string())
                });
            match resolved {
                Ok(k) => Column {
                    spec: spec.clone(),
                    release: Some(k.release),
                    unresolved: None,
                },
                Err(why) => Column {
                    spec: spec.clone(),
                    release: None,
                    unresolved: Some(why),
                },
            }
        })
        .collect();
    for c in columns.iter().filter(|c| c.unresolved.is_some()) {
        eprintln!(
            "matrix: {} cannot be resolved ({}); the other kernels still run",
            c.spec,
            c.unresolved.as_deref().unwrap_or_default()
        );
    }
    let mut options = run.options;
    options.kernels = columns
        .iter()
        .filter(|c| c.unresolved.is_none())
        .map(|c| c.spec.clone())
        .collect();
    options.per_kernel_snapshots = true;

    // Rows: every scenario the filter selects on any column (planned on
    // all columns, so a scenario whose globs leave a kernel out shows
    // `not run` there).
    let session = Session::new(options.clone());
    let scenarios = session.load()?;
    let mut all_columns = options.clone();
    all_columns.kernels = run.kernels.clone();
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
        return Err(Error::Options(format!(
            "no scenario matches the filter {:?} on {}",
            options.filters,
            run.kernels.join(", ")
        )));
    }
    let (run_id, wall_ms, results) = if planned_here.is_empty() {
        (String::from("none"), 0, Vec::new())
    } else {
        let summary = run_suite(&options, run.backend)?;
        eprint!("{}", summary.table);
        (
            summary.run_id.clone(),
            u64::try_from(summary.wall.as_millis()).unwrap_or(u64::MAX),
            summary.results,
        )
    };
    if options.update {
        // Per snapshots directory (one per scenario directory).
        let mut by_dir: BTreeMap<&Path, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for r in &rows {
            let series = r
                .kernels
                .iter()
                .filter_map(|k| crate::kernel::series_of(k))
                .map(str::to_owned)
                .collect();
            by_dir
                .entry(r.snapshots_dir.as_path())
                .or_default()
                .push((r.scenario.clone(), series));
        }
        for (dir, names) in by_dir {
            let changed = normalise_snapshots(dir, &names, BASELINE_SERIES)
                .map_err(|e| Error::io("tidy the per-kernel snapshots in", dir, e))?;
            for c in changed {
                eprintln!("matrix: snapshots: {c}");
            }
        }
    }
    let matrix = Matrix::build(&run_id, wall_ms, columns, &rows, &results);
    std::fs::create_dir_all(&run.report_dir)
        .map_err(|e| Error::io("create directory", &run.report_dir, e))?;
    for (name, text) in [
        ("matrix.md", matrix.markdown()),
        ("matrix.json", matrix.json()),
        ("matrix.html", matrix.html()),
    ] {
        let path = run.report_dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(matrix)
}

/// The Markdown report up to its first section after the table.
pub fn table_only(markdown: &str) -> &str {
    markdown.split("\n## ").next().unwrap_or(markdown)
}

/// After `--update` with per-kernel snapshots, keeps one file per actual
/// difference. For each `(scenario, series it ran on)`:
/// - the baseline series' new `<name>@<baseline>.snap` becomes the generic
///   `<name>.snap`; the other series that had no file of their own (they
///   matched the old generic one) first get the old generic text as their
///   own, so nothing accepted changes meaning;
/// - a per-kernel snapshot equal to the generic one is removed.
///
/// Returns the files changed, for the log.
pub fn normalise_snapshots(
    dir: &Path,
    scenarios: &[(String, Vec<String>)],
    baseline_series: &str,
) -> std::io::Result<Vec<String>> {
    let mut changed = Vec::new();
    for (name, series) in scenarios {
        let generic = dir.join(format!("{name}.snap"));
        let per = |s: &str| dir.join(format!("{name}@{s}.snap"));
        let base = per(baseline_series);
        if base.is_file() {
            if generic.is_file() {
                for s in series.iter().filter(|s| s.as_str() != baseline_series) {
                    if !per(s).exists() {
                        std::fs::copy(&generic, per(s))?;
                        changed.push(format!("{name}.snap → {name}@{s}.snap (kept for {s})"));
                    }
                }
            }
            std::fs::rename(&base, &generic)?;
            changed.push(format!("{name}@{baseline_series}.snap → {name}.snap"));
        }
        let Some(generic_text) = read_contents(&generic) else {
            continue;
        };
        let prefix = format!("{name}@");
        let mut per_kernel: Vec<_> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".snap"))
            })
            .collect();
        per_kernel.sort();
        for p in per_kernel {
            if read_contents(&p).as_deref() == Some(generic_text.as_str()) {
                std::fs::remove_file(&p)?;
                changed.push(format!(
                    "{} removed (same as {name}.snap)",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    Ok(changed)
}

fn read_contents(path: &Path) -> Option<String> {
    SnapshotFile::read(path)
        .ok()
        .flatten()
        .map(|f| snapshot::comparable(&f.contents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{FailReason, Verdict};

    fn snap(contents: &str) -> String {
        SnapshotFile {
            metadata: snapshot::Metadata::default(),
            contents: contents.to_owned(),
        }
        .render()
    }

    fn result(dir: &Path, scenario: &str, kernel: &str, verdict: Verdict, out: &str) -> CaseResult {
        let artifacts = dir
            .join("run")
            .join(scenario)
            .join(kernel.replace(':', "-"));
        std::fs::create_dir_all(&artifacts).unwrap();
        std::fs::write(artifacts.join("snapshot.txt"), out).unwrap();
        if !verdict.passed() {
            std::fs::write(artifacts.join("diff.txt"), "   1 | -ok\n   1 | +ENOSYS\n").unwrap();
        }
        CaseResult {
            scenario: scenario.into(),
            description: String::new(),
            kernel: kernel.into(),
            argv: Vec::new(),
            verdict,
            runner_verdict: None,
            exit_status: Some(0),
            expected_exit: 0,
            boot_ms: None,
            total_ms: 0,
            wall_ms: 0,
            artifacts,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            flaky: None,
        }
    }

    fn col(spec: &str) -> Column {
        Column {
            spec: spec.into(),
            release: Some(format!("{}-release", spec.trim_start_matches("debian:"))),
            unresolved: None,
        }
    }

    #[test]
    fn entries_key_lines_and_list_lines() {
        let e = entries("== stdout ==\nmseal: ENOSYS\nVmRSS\nVmRSS\n== stderr ==\nx: 1\n");
        assert_eq!(
            e,
            vec![
                ("mseal".into(), "ENOSYS".into()),
                ("VmRSS".into(), "present".into()),
                ("VmRSS #2".into(), "present".into()),
                ("stderr: x".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn a_single_change_is_summarised_as_from_version_on() {
        let outs = vec![
            (
                "debian:5.10".to_string(),
                "mseal: ENOSYS\nstatx: ok\n".to_string(),
            ),
            (
                "debian:6.1".to_string(),
                "mseal: ENOSYS\nstatx: ok\n".to_string(),
            ),
            (
                "debian:6.12".to_string(),
                "mseal: ok\nstatx: ok\nnew\n".to_string(),
            ),
        ];
        let d = differences(&outs);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].key, "mseal");
        assert_eq!(
            d[0].summary,
            "ENOSYS up to debian:6.1, ok from debian:6.12 on"
        );
        assert_eq!(d[1].key, "new");
        assert_eq!(
            d[1].summary,
            "absent up to debian:6.1, present from debian:6.12 on"
        );
        // Back and forth: every value listed.
        let outs = vec![
            ("a".to_string(), "k: 1\n".to_string()),
            ("b".to_string(), "k: 2\n".to_string()),
            ("c".to_string(), "k: 1\n".to_string()),
        ];
        assert_eq!(differences(&outs)[0].summary, "a: 1; b: 2; c: 1");
        // One kernel: nothing to compare.
        assert!(differences(&outs[..1]).is_empty());
    }

    #[test]
    fn cells_states_and_reports() {
        let dir = tempdir();
        let snaps = dir.join("snapshots");
        std::fs::create_dir_all(&snaps).unwrap();
        std::fs::write(snaps.join("probe.snap"), snap("mseal: ENOSYS")).unwrap();
        std::fs::write(snaps.join("probe@6.12.snap"), snap("mseal: ok")).unwrap();
        let results = vec![
            result(
                &dir,
                "probe",
                "debian:6.1",
                Verdict::Pass,
                "== stdout ==\nmseal: ENOSYS\n",
            ),
            result(
                &dir,
                "probe",
                "debian:6.12",
                Verdict::Pass,
                "== stdout ==\nmseal: ok\n",
            ),
            result(
                &dir,
                "probe",
                "debian:7.2",
                Verdict::Fail(vec![FailReason::Harness {
                    message: "snapshot differs".into(),
                }]),
                "== stdout ==\nmseal: ENOSYS\n",
            ),
        ];
        let columns = vec![
            col("debian:6.1"),
            col("debian:6.12"),
            col("debian:7.2"),
            col("debian:5.10"),
            Column {
                spec: "debian:9.9".into(),
                release: None,
                unresolved: Some("unknown series 9.9".into()),
            },
        ];
        let rows = vec![PlannedRow {
            scenario: "probe".into(),
            description: "d".into(),
            kernels: vec![
                "debian:6.1".into(),
                "debian:6.12".into(),
                "debian:7.2".into(),
            ],
            snapshots_dir: snaps.clone(),
        }];
        let mut results = results;
        results[0].flaky = Some("timeout".into());
        let m = Matrix::build("run1", 1500, columns, &rows, &results);
        let states: Vec<State> = m.rows[0].cells.iter().map(|c| c.state).collect();
        assert_eq!(
            states,
            vec![
                State::Pass,
                State::Differs,
                State::Fail,
                State::NotRun,
                State::Unresolved
            ]
        );
        assert!(!m.passed());
        let differs = &m.rows[0].cells[1];
        assert_eq!(differs.baseline.as_deref(), Some("probe@6.12.snap"));
        let d = differs.diff.as_deref().unwrap();
        assert!(
            d.lines()
                .any(|l| l.starts_with('+') && l.ends_with("mseal: ok"))
                && d.lines()
                    .any(|l| l.starts_with('-') && l.ends_with("mseal: ENOSYS")),
            "{d}"
        );
        assert_eq!(
            m.rows[0].differences[0].summary,
            "debian:6.1: ENOSYS; debian:6.12: ok; debian:7.2: ENOSYS"
        );

        let md = m.markdown();
        assert!(
            md.contains("| probe | pass (flaky) | differs | fail | not run | unresolved |"),
            "{md}"
        );
        assert!(
            md.contains("- probe on debian:6.1: first try timeout"),
            "{md}"
        );
        assert!(md.contains("`debian:9.9` could not be resolved: unknown series 9.9"));
        assert!(md.contains("### probe on debian:7.2"));
        let html = m.html();
        assert!(
            html.contains("<td class=\"fail\"><a href=\"#cell-probe-debian_7_2\">fail</a></td>")
        );
        assert!(html.contains("id=\"cell-probe-debian_6_12\""));
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("<script")
        );
        let json: serde_json::Value = serde_json::from_str(&m.json()).unwrap();
        assert_eq!(json["rows"][0]["cells"][2]["state"], "fail");
        assert_eq!(json["columns"][4]["unresolved"], "unknown series 9.9");
    }

    #[test]
    fn normalising_makes_the_baseline_generic_and_drops_copies() {
        let dir = tempdir();
        let names = |n: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            n.iter()
                .map(|(a, s)| (a.to_string(), s.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        // A new scenario: 6.1's text becomes generic, equal copies go.
        std::fs::write(dir.join("a@6.1.snap"), snap("x")).unwrap();
        std::fs::write(dir.join("a@6.12.snap"), snap("x")).unwrap();
        std::fs::write(dir.join("a@7.2.snap"), snap("y")).unwrap();
        std::fs::write(dir.join("b.snap"), snap("z")).unwrap();
        std::fs::write(dir.join("b@5.10.snap"), snap("z")).unwrap();
        let changed = normalise_snapshots(
            &dir,
            &names(&[("a", &["6.1", "6.12", "7.2"]), ("b", &["5.10", "6.1"])]),
            "6.1",
        )
        .unwrap();
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert_eq!(listing(&dir), vec!["a.snap", "a@7.2.snap", "b.snap"]);

        // The baseline changes: 5.10 matched the old generic text and keeps
        // it as its own; 7.2 already had its own.
        std::fs::write(dir.join("a@6.1.snap"), snap("x2")).unwrap();
        normalise_snapshots(&dir, &names(&[("a", &["5.10", "6.1", "7.2"])]), "6.1").unwrap();
        assert_eq!(
            listing(&dir),
            vec!["a.snap", "a@5.10.snap", "a@7.2.snap", "b.snap"]
        );
        assert_eq!(read_contents(&dir.join("a.snap")).unwrap(), "x2");
        assert_eq!(read_contents(&dir.join("a@5.10.snap")).unwrap(), "x");
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        left
    }

    fn tempdir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "kestrel-matrix-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

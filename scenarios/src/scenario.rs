//! Scenario files: `scenarios/<name>.toml` → [`Scenario`].
//!
//! Invariant: a [`Scenario`] is fully validated — its regexes compile, exactly
//! one of `run`/`script` is set, its probes exist, its numbers are in range.
//! Every problem is reported as [`Error::Scenario`] with the file, the line and
//! one sentence; nothing here panics on bad input.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::kernel::KernelPattern;

/// Kernel-log patterns (regexes) that fail a scenario unless it sets
/// `forbid` itself.
///
/// `WARNING:` counts only where a message starts with it (after the printk
/// timestamp), as a `WARN()` splat does (`WARNING: CPU: 0 PID: 1 at …`, or
/// `WARNING: file.c:639 at …` on newer kernels): CPU-vulnerability notices
/// such as `Speculative Return Stack Overflow: WARNING: See …` are printed
/// at every boot on affected hosts and are no kernel bug.
pub const DEFAULT_FORBID: &[&str] = &[
    "BUG:",
    r"^(\[[ 0-9.]+\] )?WARNING: ",
    "Oops",
    "Call Trace",
    "KASAN",
    "UBSAN",
    "lockdep",
];

/// Placeholder in `run`/`script` replaced by the directory of built probes.
pub const PROBES_PLACEHOLDER: &str = "${KESTREL_PROBES}";

/// Files in the scenarios directory that end in `.toml` but are no scenario.
const NOT_SCENARIOS: &[&str] = &["Cargo.toml", "rustfmt.toml", ".rustfmt.toml", "clippy.toml"];

const DEFAULT_CPUS: u32 = 1;
const DEFAULT_MEMORY_MIB: u64 = 512;
const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// One stored scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// File stem: `uname` for `uname.toml`.
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// What it checks, one line.
    pub description: String,
    /// Kernels it applies to; empty means every kernel.
    pub kernels: Vec<KernelPattern>,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Wall-clock limit the runner enforces.
    pub timeout: Duration,
    /// Extra kernel command line.
    pub append: Option<String>,
    /// What runs in the guest.
    pub command: GuestCommand,
    /// Programs under `probes/` built on the host before the run (file names).
    pub probes: Vec<String>,
    /// What counts as success.
    pub expect: Expectations,
}

/// The guest command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestCommand {
    /// `run = ["prog", "arg"]`.
    Run(Vec<String>),
    /// `script = "…"`, run as `/bin/sh -c SCRIPT`.
    Script(String),
}

impl GuestCommand {
    /// The argv handed to the runner, with [`PROBES_PLACEHOLDER`] replaced.
    pub fn argv(&self, probes_dir: &Path) -> Vec<String> {
        let dir = probes_dir.display().to_string();
        let expand = |s: &str| s.replace(PROBES_PLACEHOLDER, &dir);
        match self {
            GuestCommand::Run(args) => args.iter().map(|a| expand(a)).collect(),
            GuestCommand::Script(script) => {
                vec!["/bin/sh".into(), "-c".into(), expand(script)]
            }
        }
    }
}

/// A stream that can be part of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    /// The guest command's stdout (or its KTAP tree when `ktap = true`).
    Stdout,
    /// The guest command's stderr.
    Stderr,
    /// Kernel-log lines matching `kernel_log`.
    KernelLog,
}

impl Stream {
    /// The name used in files and section headers.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::KernelLog => "kernel-log",
        }
    }
}

/// A failure the scenario provokes on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedFailure {
    /// The kernel panics.
    Panic,
    /// The runner's timeout fires.
    Timeout,
}

/// One user filter, applied after the built-in redactions.
#[derive(Debug, Clone)]
pub struct Filter {
    /// What to find.
    pub regex: Regex,
    /// What to put there (`$1` refers to groups).
    pub replacement: String,
}

/// What the run must show.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// Expected exit status of the command.
    pub exit: i32,
    /// Streams compared with the stored snapshot; empty means no snapshot.
    pub snapshot: Vec<Stream>,
    /// Kernel-log lines selected for the `kernel-log` stream.
    pub kernel_log: Vec<Regex>,
    /// User filters, in file order.
    pub filters: Vec<Filter>,
    /// Replace the kernel release (and release-shaped strings) with `[RELEASE]`.
    pub redact_release: bool,
    /// Replace PIDs after `pid`/`PID:`/`Pid:`-style markers with `[PID]`.
    pub redact_pids: bool,
    /// Kernel-log patterns that fail the scenario.
    pub forbid: Vec<Regex>,
    /// Parse stdout as KTAP/TAP; snapshot the result tree instead of the text.
    pub ktap: bool,
    /// Snapshot stdout as its line count, byte count and checksum instead of
    /// the text (for large output).
    pub digest: bool,
    /// The failure the scenario provokes, if any.
    pub failure: Option<ExpectedFailure>,
}

/// The file as written; every field optional so defaults live in one place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: Option<String>,
    kernels: Option<Vec<Spanned<String>>>,
    cpus: Option<Spanned<u32>>,
    memory: Option<Spanned<u64>>,
    timeout: Option<Spanned<u64>>,
    append: Option<String>,
    run: Option<Spanned<Vec<String>>>,
    script: Option<Spanned<String>>,
    probes: Option<Vec<Spanned<String>>>,
    exit: Option<Spanned<i32>>,
    snapshot: Option<Spanned<Vec<Stream>>>,
    kernel_log: Option<Vec<Spanned<String>>>,
    filters: Option<FilterTable>,
    redact_release: Option<bool>,
    redact_pids: Option<bool>,
    forbid: Option<Vec<Spanned<String>>>,
    ktap: Option<Spanned<bool>>,
    digest: Option<bool>,
    expect: Option<ExpectedFailure>,
}

/// `[filters]` in file order: `(regex, replacement)` with the span of the
/// replacement (on the same line as the regex).
#[derive(Debug, Default)]
struct FilterTable(Vec<(String, Spanned<String>)>);

impl<'de> Deserialize<'de> for FilterTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FilterVisitor;
        impl<'de> Visitor<'de> for FilterVisitor {
            type Value = FilterTable;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of regex = \"replacement\"")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FilterTable, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Spanned<String>>()? {
                    out.push((k, v));
                }
                Ok(FilterTable(out))
            }
        }
        deserializer.deserialize_map(FilterVisitor)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Scenario {
    /// The directory the scenario file is in: its probes are under
    /// `probes/` there, its snapshots under `snapshots/`, and its command
    /// runs there (relative names in `run`/`script` are its neighbours).
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// Reads and validates one scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Scenario::parse(path, &text)
    }

    /// Validates scenario text; `path` names it in errors and gives its name.
    /// Probe files are looked up next to `path`, under `probes/`.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario> {
        let fail = |span: Range<usize>, message: String| Error::Scenario {
            path: path.to_owned(),
            line: line_of(text, span.start),
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            Error::Scenario {
                path: path.to_owned(),
                line,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(fail(
                0..0,
                format!("scenario name `{name}` (the file name) may only use letters, digits, `_` and `-`"),
            ));
        }

        let command = match (raw.run, raw.script) {
            (Some(run), Some(script)) => {
                let at = run.span().start.max(script.span().start);
                return Err(fail(
                    at..at,
                    "both `run` and `script` are set: keep one".into(),
                ));
            }
            (None, None) => {
                return Err(fail(
                    0..0,
                    "neither `run` nor `script` is set: say what runs in the guest".into(),
                ))
            }
            (Some(run), None) => {
                let span = run.span();
                let args = run.into_inner();
                if args.first().is_none_or(|a| a.is_empty()) {
                    return Err(fail(
                        span,
                        "`run` needs a program name as its first element".into(),
                    ));
                }
                GuestCommand::Run(args)
            }
            (None, Some(script)) => {
                let span = script.span();
                let script = script.into_inner();
                if script.trim().is_empty() {
                    return Err(fail(span, "`script` is empty".into()));
                }
                GuestCommand::Script(script)
            }
        };

        let mut kernels = Vec::new();
        for k in raw.kernels.unwrap_or_default() {
            let span = k.span();
            kernels.push(KernelPattern::new(k.get_ref()).map_err(|m| fail(span, m))?);
        }

        let cpus = ranged(raw.cpus, DEFAULT_CPUS, 1..=256, "cpus", &fail)?;
        let memory_mib = ranged(raw.memory, DEFAULT_MEMORY_MIB, 64..=65536, "memory", &fail)?;
        let timeout = ranged(
            raw.timeout,
            DEFAULT_TIMEOUT_SECS,
            1..=86400,
            "timeout",
            &fail,
        )?;
        let exit = ranged(raw.exit, 0, 0..=255, "exit", &fail)?;

        let mut probes = Vec::new();
        let probes_dir = path.parent().unwrap_or(Path::new(".")).join("probes");
        for p in raw.probes.unwrap_or_default() {
            let span = p.span();
            let file = p.into_inner();
            if file.contains('/') || !file.ends_with(".c") {
                return Err(fail(
                    span,
                    format!("probe `{file}` must be a `.c` file name under probes/"),
                ));
            }
            if !probes_dir.join(&file).is_file() {
                return Err(fail(
                    span,
                    format!("probe `{file}` does not exist in {}", probes_dir.display()),
                ));
            }
            probes.push(file);
        }

        let failure = raw.expect;
        let snapshot = match raw.snapshot {
            Some(s) => {
                let span = s.span();
                let streams = s.into_inner();
                let mut seen = HashSet::new();
                if let Some(dup) = streams.iter().find(|s| !seen.insert(**s)) {
                    return Err(fail(
                        span,
                        format!("`snapshot` names `{}` twice", dup.name()),
                    ));
                }
                streams
            }
            // A provoked failure leaves no dependable output to compare.
            None if failure.is_some() => Vec::new(),
            None => vec![Stream::Stdout],
        };

        let kernel_log = regexes(raw.kernel_log.unwrap_or_default(), "kernel_log", &fail)?;
        let wants_log = snapshot.contains(&Stream::KernelLog);
        if wants_log && kernel_log.is_empty() {
            return Err(fail(
                0..0,
                "`snapshot` includes \"kernel-log\" but `kernel_log` selects no lines: add regexes for the lines to keep".into(),
            ));
        }
        if !wants_log && !kernel_log.is_empty() {
            return Err(fail(
                0..0,
                "`kernel_log` selects lines but `snapshot` does not include \"kernel-log\"".into(),
            ));
        }

        let mut filters = Vec::new();
        for (pattern, replacement) in raw.filters.unwrap_or_default().0 {
            let span = replacement.span();
            let regex = Regex::new(&pattern).map_err(|e| {
                fail(
                    span,
                    format!(
                        "filter regex `{pattern}` does not compile: {}",
                        one_line(&e.to_string())
                    ),
                )
            })?;
            filters.push(Filter {
                regex,
                replacement: replacement.into_inner(),
            });
        }

        let ktap = raw.ktap.map(|k| (k.span(), *k.get_ref()));
        let digest = raw.digest.unwrap_or(false);
        if let Some((span, true)) = &ktap {
            if digest {
                return Err(fail(
                    span.clone(),
                    "`ktap` and `digest` both replace stdout in the snapshot: keep one".into(),
                ));
            }
        }

        let forbid = match raw.forbid {
            Some(list) => regexes(list, "forbid", &fail)?,
            None => DEFAULT_FORBID
                .iter()
                .map(|p| Regex::new(p))
                .collect::<Result<_, _>>()
                .map_err(|e| fail(0..0, e.to_string()))?,
        };

        Ok(Scenario {
            name,
            path: path.to_owned(),
            description: raw.description.unwrap_or_default(),
            kernels,
            cpus,
            memory_mib,
            timeout: Duration::from_secs(timeout),
            append: raw.append.filter(|a| !a.trim().is_empty()),
            command,
            probes,
            expect: Expectations {
                exit,
                snapshot,
                kernel_log,
                filters,
                redact_release: raw.redact_release.unwrap_or(false),
                redact_pids: raw.redact_pids.unwrap_or(true),
                forbid,
                ktap: ktap.is_some_and(|(_, k)| k),
                digest,
                failure,
            },
        })
    }

    /// Whether the scenario applies to `kernel` (a spec such as `debian:6.1`).
    pub fn applies_to(&self, kernel: &str) -> bool {
        self.kernels.is_empty() || self.kernels.iter().any(|p| p.matches(kernel))
    }
}

/// A numeric field with a default and a range.
fn ranged<T>(
    value: Option<Spanned<T>>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    key: &str,
    fail: &dyn Fn(Range<usize>, String) -> Error,
) -> Result<T>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(fail(
            v.span(),
            format!(
                "`{key}` is {}, but must be between {} and {}",
                v.get_ref(),
                range.start(),
                range.end()
            ),
        )),
    }
}

fn regexes(
    list: Vec<Spanned<String>>,
    key: &str,
    fail: &dyn Fn(Range<usize>, String) -> Error,
) -> Result<Vec<Regex>> {
    list.into_iter()
        .map(|p| {
            Regex::new(p.get_ref()).map_err(|e| {
                fail(
                    p.span(),
                    format!(
                        "`{key}` regex `{}` does not compile: {}",
                        p.get_ref(),
                        one_line(&e.to_string())
                    ),
                )
            })
        })
        .collect()
}

/// The last non-empty line of a multi-line message (regex errors put the
/// reason last).
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or(message)
        .to_owned()
}

/// The scenario files in `dir` (`*.toml` but `Cargo.toml` and tool
/// configuration), sorted.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io("read directory", dir, e))?
            .path();
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let excluded = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| NOT_SCENARIOS.contains(&n));
        if is_toml && !excluded && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Every scenario in `dir`, sorted by name. Stops at the first bad file.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>> {
    scenario_files(dir)?
        .iter()
        .map(|p| Scenario::load(p))
        .collect()
}

/// `--scenarios` directories as given on a command line, checked to be
/// directories and made absolute (commands run in them, and the rig binds
/// them at the same path); one sentence for one that is not.
pub fn resolve_dirs(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    given
        .iter()
        .map(|d| {
            if !d.is_dir() {
                return Err(Error::Options(format!(
                    "--scenarios {}: no such directory; name a directory of <name>.toml scenario files",
                    d.display()
                )));
            }
            std::fs::canonicalize(d).map_err(|e| Error::io("resolve", d, e))
        })
        .collect()
}

/// Every scenario in `dirs` (a user's own directories, say), sorted by
/// name. Stops at the first bad file. A directory without scenario files,
/// or one name in two directories (snapshots and artifacts are named by
/// scenario), is an error that says what to do.
pub fn load_dirs(dirs: &[PathBuf]) -> Result<Vec<Scenario>> {
    let mut all: Vec<Scenario> = Vec::new();
    for dir in dirs {
        let files = scenario_files(dir)?;
        if files.is_empty() {
            return Err(Error::Options(format!(
                "{} has no scenario files (<name>.toml): name a directory of scenarios",
                dir.display()
            )));
        }
        for file in files {
            let scenario = Scenario::load(&file)?;
            if let Some(first) = all.iter().find(|s| s.name == scenario.name) {
                return Err(Error::Options(format!(
                    "two scenarios are named `{}` ({} and {}): rename one, since snapshots and \
                     artifacts are named by scenario",
                    scenario.name,
                    first.path.display(),
                    scenario.path.display()
                )));
            }
            all.push(scenario);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

#[cfg(test)]
mod tests {

    #[test]
    fn scenario_directories_are_checked_and_made_absolute() {
        let dir = std::env::temp_dir();
        let got = resolve_dirs(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(got, [std::fs::canonicalize(&dir).unwrap()]);
        let err = resolve_dirs(&[PathBuf::from("/no/such/dir")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--scenarios /no/such/dir: no such directory"),
            "{err}"
        );
    }

    #[test]
    fn default_warning_pattern_matches_splats_not_vulnerability_notices() {
        let re = regex::Regex::new(DEFAULT_FORBID[1]).unwrap();
        assert!(re.is_match("[    2.440507] WARNING: arch/x86/kernel/fpu/xstate.c:639 at fpu__init_system_xstate+0x8b0/0xbf0, CPU#0: swapper/0/0"));
        assert!(re.is_match("[   12.1] WARNING: CPU: 1 PID: 42 at mm/slub.c:100 f+0x1/0x2"));
        assert!(re.is_match("WARNING: CPU: 0 PID: 1 at kernel/x.c:1 g+0x0/0x1"));
        assert!(!re.is_match("[    1.319961] Speculative Return Stack Overflow: WARNING: See https://kernel.org/doc/html/latest/admin-guide/hw-vuln/srso.html for mitigation options."));
    }

    use super::*;

    fn parse(text: &str) -> Result<Scenario> {
        Scenario::parse(Path::new("/nonexistent/demo.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_run_gets_defaults() {
        let s = parse("run = [\"uname\", \"-r\"]").unwrap();
        assert_eq!(s.name, "demo");
        assert_eq!(
            s.command,
            GuestCommand::Run(vec!["uname".into(), "-r".into()])
        );
        assert_eq!((s.cpus, s.memory_mib, s.timeout.as_secs()), (1, 512, 60));
        assert_eq!(s.expect.exit, 0);
        assert_eq!(s.expect.snapshot, vec![Stream::Stdout]);
        assert_eq!(s.expect.forbid.len(), DEFAULT_FORBID.len());
        assert!(s.expect.redact_pids && !s.expect.redact_release && !s.expect.ktap);
        assert!(s.applies_to("debian:6.1") && s.applies_to("/boot/vmlinuz"));
    }

    #[test]
    fn full_file() {
        let s = parse(
            r#"
description = "all keys"
kernels = ["debian:6.*", "debian:5.10"]
cpus = 2
memory = 256
timeout = 30
append = "loglevel=7"
script = """
echo hi
"""
exit = 3
snapshot = ["stdout", "stderr", "kernel-log"]
kernel_log = ["^dummy"]
redact_release = true
redact_pids = false
forbid = ["BUG:"]
ktap = true
digest = false

[filters]
'z\d+' = "Z"
'a(\d)' = "b$1"
'^m' = "M"
"#,
        )
        .unwrap();
        assert_eq!(s.cpus, 2);
        assert!(s.applies_to("debian:6.12") && s.applies_to("debian:5.10"));
        assert!(!s.applies_to("debian:7.2"));
        assert_eq!(
            s.command.argv(Path::new("/p")),
            ["/bin/sh", "-c", "echo hi\n"]
        );
        assert_eq!(s.expect.snapshot.len(), 3);
        // File order, not sorted order.
        let order: Vec<_> = s.expect.filters.iter().map(|f| f.regex.as_str()).collect();
        assert_eq!(order, [r"z\d+", r"a(\d)", "^m"]);
        assert_eq!(s.expect.forbid.len(), 1);
    }

    #[test]
    fn expected_failure_defaults_to_no_snapshot() {
        let s = parse("run = [\"sh\"]\nexpect = \"panic\"").unwrap();
        assert_eq!(s.expect.failure, Some(ExpectedFailure::Panic));
        assert!(s.expect.snapshot.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let e = err("run = [\"x\"]\nrn = 1\n");
        assert!(
            e.starts_with("/nonexistent/demo.toml:2: unknown field `rn`"),
            "{e}"
        );
        let e = err("run = [\"x\"]\ncpus = \"two\"\n");
        assert!(
            e.starts_with("/nonexistent/demo.toml:2: invalid type: string"),
            "{e}"
        );
        let e = err("run = [\"x\"]\n\nscript = \"y\"\n");
        assert_eq!(
            e,
            "/nonexistent/demo.toml:3: both `run` and `script` are set: keep one"
        );
        let e = err("description = \"d\"\n");
        assert!(e.contains(":1: neither `run` nor `script`"), "{e}");
        let e = err("run = [\"x\"]\n[filters]\n'(' = \"y\"\n");
        assert!(
            e.starts_with("/nonexistent/demo.toml:3: filter regex `(` does not compile"),
            "{e}"
        );
        let e = err("run = [\"x\"]\nforbid = [\"ok\", \"[\"]\n");
        assert!(e.contains(":2: `forbid` regex `[` does not compile"), "{e}");
        let e = err("run = [\"x\"]\nexpect = \"crash\"\n");
        assert!(e.contains(":2: unknown variant `crash`"), "{e}");
        let e = err("run = [\"x\"]\nsnapshot = [\"stdin\"]\n");
        assert!(e.contains(":2: unknown variant `stdin`"), "{e}");
        let e = err("run = [\"x\"]\ncpus = 0\n");
        assert!(
            e.contains(":2: `cpus` is 0, but must be between 1 and 256"),
            "{e}"
        );
        let e = err("run = []\n");
        assert!(e.contains(":1: `run` needs a program name"), "{e}");
        let e = err("run = [\"x\"]\nkernels = [\"debian:6.1\", \"\"]\n");
        assert!(e.contains(":2: "), "{e}");
        let e = err("run = [\"x\"]\nprobes = [\"nope.c\"]\n");
        assert!(e.contains(":2: probe `nope.c` does not exist"), "{e}");
        let e = err("run = [\"x\"]\nsnapshot = [\"kernel-log\"]\n");
        assert!(e.contains("`kernel_log` selects no lines"), "{e}");
        let e = err("run = [\"x\"]\nktap = true\ndigest = true\n");
        assert!(e.contains(":2: `ktap` and `digest` both"), "{e}");
        let e = err("run = [\"x\"\n");
        assert!(e.starts_with("/nonexistent/demo.toml:1: "), "{e}");
        for text in ["run = [\"x\"]\nrn = 1\n", "run = [\"x\"\n", "[[[\n"] {
            assert!(!err(text).contains('\n'), "one line: {}", err(text));
        }
    }

    #[test]
    fn load_dir_skips_cargo_toml_and_sorts() {
        let dir = std::env::temp_dir().join(format!("kestrel-scn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::write(dir.join("b.toml"), "run = [\"b\"]\n").unwrap();
        std::fs::write(dir.join("a.toml"), "run = [\"a\"]\n").unwrap();
        let names: Vec<_> = load_dir(&dir)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_dirs_merges_sorts_and_refuses_clashes_and_empty_dirs() {
        let root = std::env::temp_dir().join(format!("kestrel-scn-dirs-{}", std::process::id()));
        let (one, two, empty) = (root.join("one"), root.join("two"), root.join("empty"));
        for d in [&one, &two, &empty] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(one.join("b.toml"), "run = [\"b\"]\n").unwrap();
        std::fs::write(two.join("a.toml"), "run = [\"./a.sh\"]\n").unwrap();
        let all = load_dirs(&[one.clone(), two.clone()]).unwrap();
        let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(all[0].dir(), two);
        assert_eq!(all[1].dir(), one);

        std::fs::write(two.join("b.toml"), "run = [\"b2\"]\n").unwrap();
        let clash = load_dirs(&[one.clone(), two.clone()])
            .unwrap_err()
            .to_string();
        assert!(clash.contains("two scenarios are named `b`"), "{clash}");
        assert!(clash.contains("rename one"), "{clash}");

        let none = load_dirs(&[one.clone(), empty.clone()])
            .unwrap_err()
            .to_string();
        assert!(none.contains("has no scenario files"), "{none}");
        let missing = load_dirs(&[root.join("nope")]).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_scenario_named_without_a_directory_is_in_the_current_one() {
        let s = Scenario::parse(Path::new("x.toml"), "run = [\"x\"]\n").unwrap();
        assert_eq!(s.dir(), Path::new("."));
        let s = Scenario::parse(Path::new("/t/x.toml"), "run = [\"x\"]\n").unwrap();
        assert_eq!(s.dir(), Path::new("/t"));
    }
}

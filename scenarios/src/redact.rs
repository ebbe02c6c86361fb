//! Normalisation of guest output before it is compared with a snapshot:
//! line endings and trailing blanks, built-in redactions, then the
//! scenario's own filters in file order.
//!
//! Invariant: normalising is idempotent for the built-in redactions (a
//! placeholder never matches a redaction again), so `.snap` files can be
//! fed back through it.

use std::sync::LazyLock;

use regex::Regex;

use crate::scenario::Filter;

/// Which optional redactions apply.
#[derive(Debug, Clone, Default)]
pub struct Redactions<'a> {
    /// Replace release strings with `[RELEASE]`; the exact release first
    /// when known.
    pub release: Option<Option<&'a str>>,
    /// Replace PIDs after `pid`-style markers.
    pub pids: bool,
    /// The scenario's filters, applied last.
    pub filters: &'a [Filter],
}

/// `(regex, replacement)` built once; a pattern that would not compile is
/// left out (a unit test checks none is).
fn compile(list: &[(&str, &'static str)]) -> Vec<(Regex, &'static str)> {
    list.iter()
        .filter_map(|(p, r)| Regex::new(p).ok().map(|re| (re, *r)))
        .collect()
}

const ALWAYS: &[(&str, &str)] = &[
    // printk timestamps: `[    1.234567]`.
    (r"\[\s*\d+\.\d+\]", "[TIME]"),
    // Durations: `12.3 ms`, `0.5s`, `3 seconds`.
    (
        r"\b\d+(?:\.\d+)?\s?(?:ns|us|µs|ms|s|sec|secs|seconds|min|mins|minutes)\b",
        "[DURATION]",
    ),
    // Addresses: `0xffffffff81000000`, and bare 16-digit kernel pointers.
    (r"\b0x[0-9a-fA-F]{6,16}\b", "0x[ADDR]"),
    (r"\b[0-9a-f]{16}\b", "[ADDR]"),
];

const PIDS: &[(&str, &str)] = &[(
    r"(?i)\b(pid|ppid|tgid|tid|nspid|nstgid|nspgid|nssid)(\s*[:=]\s*|\s+)\d+(?:[ \t]+\d+)*",
    "$1$2[PID]",
)];

/// Release-shaped strings: `6.1.0-31-cloud-amd64`, `5.10.234`,
/// `6.12.107+deb13-cloud-amd64` (Debian's releases since trixie).
const RELEASE_SHAPE: &str = r"\b\d+\.\d+\.\d+(?:[-+][0-9A-Za-z][0-9A-Za-z._+~-]*)?";

static ALWAYS_RE: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| compile(ALWAYS));
static PIDS_RE: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| compile(PIDS));
static RELEASE_RE: LazyLock<Vec<(Regex, &'static str)>> =
    LazyLock::new(|| compile(&[(RELEASE_SHAPE, "[RELEASE]")]));
static LINUX_VERSION_RE: LazyLock<Vec<(Regex, &'static str)>> =
    LazyLock::new(|| compile(&[(r"Linux version (\S+)", "")]));

/// The kernel release from a kernel log's `Linux version X` line.
pub fn release_from_log(log: &str) -> Option<String> {
    let (re, _) = LINUX_VERSION_RE.first()?;
    re.captures(log)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_owned())
}

/// Line endings to `\n`, trailing blanks off every line, exactly one final
/// newline (none for empty text).
pub fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let kept = out.trim_end_matches('\n').len();
    out.truncate(kept);
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Applies everything in order: tidy, timestamps/durations/addresses, the
/// release, PIDs, then the scenario's filters.
pub fn normalise(text: &str, r: &Redactions<'_>) -> String {
    let mut out = tidy(text);
    if let Some(exact) = r.release {
        if let Some(release) = exact.filter(|s| !s.is_empty()) {
            out = out.replace(release, "[RELEASE]");
        }
        out = apply(&out, &RELEASE_RE);
    }
    out = apply(&out, &ALWAYS_RE);
    if r.pids {
        out = apply(&out, &PIDS_RE);
    }
    for f in r.filters {
        out = f
            .regex
            .replace_all(&out, f.replacement.as_str())
            .into_owned();
    }
    tidy(&out)
}

fn apply(text: &str, rules: &[(Regex, &'static str)]) -> String {
    let mut out = text.to_owned();
    for (re, with) in rules {
        if let std::borrow::Cow::Owned(s) = re.replace_all(&out, *with) {
            out = s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Redactions<'static> {
        Redactions {
            release: Some(None),
            pids: true,
            filters: &[],
        }
    }

    #[test]
    fn every_builtin_pattern_compiles() {
        assert_eq!(ALWAYS_RE.len(), ALWAYS.len());
        assert_eq!(PIDS_RE.len(), PIDS.len());
        assert_eq!(RELEASE_RE.len(), 1);
        assert_eq!(LINUX_VERSION_RE.len(), 1);
    }

    #[test]
    fn builtins() {
        let input = "[    1.234567] took 12.3 ms and 0.5s\r\nat 0xffffffff81000000 ptr 000000003c6ee1ad  \n\
                     Pid:\t1234\nPPid:\t1\nTracerPid:\t0\nNSpid:\t77 1\nCPU: 0 PID: 42 Comm: sh\n\
                     Linux version 6.1.0-31-cloud-amd64 (gcc 12.2.0)\nflags 0x10 errno 2\n\n\n";
        let out = normalise(input, &all());
        assert_eq!(
            out,
            "[TIME] took [DURATION] and [DURATION]\nat 0x[ADDR] ptr [ADDR]\n\
             Pid:\t[PID]\nPPid:\t[PID]\nTracerPid:\t0\nNSpid:\t[PID]\nCPU: 0 PID: [PID] Comm: sh\n\
             Linux version [RELEASE] (gcc [RELEASE])\nflags 0x10 errno 2\n"
        );
        assert_eq!(normalise(&out, &all()), out, "idempotent");
    }

    #[test]
    fn release_off_by_default_and_exact_release_first() {
        let plain = Redactions::default();
        assert_eq!(
            normalise("6.1.0-31-cloud-amd64\n", &plain),
            "6.1.0-31-cloud-amd64\n"
        );
        let exact = Redactions {
            release: Some(Some("7.2-rc1+")),
            ..Redactions::default()
        };
        assert_eq!(normalise("uname: 7.2-rc1+\n", &exact), "uname: [RELEASE]\n");
        let shape = Redactions {
            release: Some(None),
            ..Redactions::default()
        };
        assert_eq!(
            normalise(
                "6.12.107+deb13-cloud-amd64 and 6.1.0-50-cloud-amd64\n",
                &shape
            ),
            "[RELEASE] and [RELEASE]\n"
        );
        assert_eq!(
            release_from_log("[ 0.0] Linux version 6.12.9-amd64 (x)"),
            Some("6.12.9-amd64".into())
        );
    }

    #[test]
    fn filters_run_last_in_order() {
        let filters = vec![
            Filter {
                regex: Regex::new(r"cpu(\d+)").unwrap(),
                replacement: "CPU$1".into(),
            },
            Filter {
                regex: Regex::new(r"CPU0").unwrap(),
                replacement: "first".into(),
            },
        ];
        let r = Redactions {
            filters: &filters,
            ..Redactions::default()
        };
        assert_eq!(normalise("cpu0 cpu1\n", &r), "first CPU1\n");
    }

    #[test]
    fn tidy_edges() {
        assert_eq!(tidy(""), "");
        assert_eq!(tidy("\n\n"), "");
        assert_eq!(tidy("a\r\nb  \n\n"), "a\nb\n");
        assert_eq!(tidy("\nx"), "\nx\n");
    }
}

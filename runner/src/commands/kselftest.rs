//! `kestrel kselftest --src TREE [--targets a,b] [--kernel SPEC]`: the
//! kernel's selftests, built out of tree and run in the guest.
//!
//! Steps: `make O=OUT headers` (the UAPI headers the tests compile
//! against, from the same tree) → `make -C tools/testing/selftests O=OUT
//! TARGETS=… install` into `OUT/install` (the tree itself is never written:
//! a git tree's status is compared before and after) → with
//! `--per-test-timeout`, each target's `settings` file in the install dir
//! says so (runner.sh's own mechanism; otherwise a target keeps its
//! own, 45 s by default) → one boot running the installed
//! `run_kselftest.sh`, the install dir writable (tests write beside
//! themselves), its TAP on the guest's stdout → the TAP parsed into the
//! result tree → one line per test (pass, skip, fail, timeout) and, for
//! each failure, the failing subtests and the test's last output lines.
//!
//! `--junit FILE` writes the tree as JUnit; `--snapshot FILE` compares the
//! outcome tree (names and results only, never timings or messages) with
//! the stored one, `--update` rewrites it.
//!
//! Exit status: 0 every test passed or was skipped (and the snapshot
//! matched), 1 a test failed or timed out, the guest's run was cut, or the
//! snapshot differs; 125 a build or setup error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use kestrel_kernels::host;
use kestrel_kernels::kbuild::{self, Base, ConfigSet};
use kestrel_scenarios::ktap::{self, Outcome, Report, TestNode};
use kestrel_scenarios::snapshot;

use super::Boot;

/// `kestrel kselftest` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct KselftestArgs {
    /// The kernel source tree the selftests come from (never written to).
    #[arg(long, value_name = "TREE")]
    pub src: PathBuf,
    /// Selftest targets (directories under tools/testing/selftests),
    /// comma-separated (default: the tree's whole default list, which
    /// takes long).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Run only this test of the built targets, as COLLECTION:TEST (e.g.
    /// `timers:nanosleep`; repeatable; run_kselftest.sh's `-t`).
    #[arg(long = "test", value_name = "COLLECTION:TEST")]
    pub tests: Vec<String>,
    /// The kernel to boot (default: the one `kestrel kernel build --src
    /// TREE` built from this tree).
    #[arg(long, value_name = "SPEC")]
    pub kernel: Option<String>,
    /// Seconds each test may run before it counts as a timeout (default:
    /// each target's own `settings`, else kselftest's 45).
    #[arg(long, value_name = "SECS")]
    pub per_test_timeout: Option<u64>,
    /// Build and install directory (default: one per tree and target list
    /// in the kernel cache's kselftest/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Parallel make jobs (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// vCPUs and memory (MiB) of the guest.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    #[arg(long, value_name = "MiB", default_value_t = 1024)]
    pub memory: u64,
    /// Build and install the selftests and stop (run them later, or
    /// elsewhere, with --no-build).
    #[arg(long, conflicts_with = "no_build")]
    pub build_only: bool,
    /// Run what an earlier build installed in the output directory,
    /// without running make (e.g. built on the host, run in the rig).
    #[arg(long)]
    pub no_build: bool,
    /// Also write the results as JUnit XML here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Compare the result tree with this stored one (names and outcomes).
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// With --snapshot: write the result tree there instead of comparing.
    #[arg(long, requires = "snapshot")]
    pub update: bool,
}

/// How one top-level test (`selftests: TARGET: TEST`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Skip,
    Fail,
    Timeout,
    /// Started but no result line: the run was cut.
    Missing,
}

impl Verdict {
    /// From the top-level node: runner.sh marks a timeout with
    /// `not ok N selftests: T: X # TIMEOUT 45 seconds`.
    pub fn of(node: &TestNode) -> Verdict {
        let timeout = node
            .directive
            .as_deref()
            .is_some_and(|d| d.trim_start().to_ascii_uppercase().starts_with("TIMEOUT"));
        match node.outcome {
            Outcome::Fail if timeout => Verdict::Timeout,
            Outcome::Pass | Outcome::XFail => Verdict::Pass,
            Outcome::Skip | Outcome::Todo => Verdict::Skip,
            Outcome::Fail => Verdict::Fail,
            Outcome::Missing => Verdict::Missing,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Skip => "SKIP",
            Verdict::Fail => "FAIL",
            Verdict::Timeout => "TIMEOUT",
            Verdict::Missing => "CUT",
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Timeout | Verdict::Missing)
    }
}

/// How many output lines of a failing test the report quotes.
const WHY_LINES: usize = 12;

/// The per-test report: one line per top-level test, and under a failure
/// its failing subtests and its last output lines; then the counts.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let mut counts = [0usize; 5];
    for node in &report.tests {
        let v = Verdict::of(node);
        counts[v as usize] += 1;
        out.push_str(&format!("[{}] {}\n", v.label(), short_name(&node.name)));
        if !v.is_failure() {
            continue;
        }
        let sub = Report {
            found: true,
            tests: node.children.clone(),
            ..Report::default()
        };
        for f in sub.failures() {
            out.push_str(&format!("    failed: {f}\n"));
        }
        if let Some(d) = &node.directive {
            out.push_str(&format!("    # {d}\n"));
        }
        let lines = why_lines(node);
        for l in &lines[lines.len().saturating_sub(WHY_LINES)..] {
            out.push_str(&format!("    | {l}\n"));
        }
    }
    for p in report.plan_problems() {
        out.push_str(&format!("problem: {p}\n"));
    }
    out.push_str(&format!(
        "kselftest: {} tests: {} passed, {} skipped, {} failed, {} timed out{}\n",
        report.tests.len(),
        counts[Verdict::Pass as usize],
        counts[Verdict::Skip as usize],
        counts[Verdict::Fail as usize],
        counts[Verdict::Timeout as usize],
        match counts[Verdict::Missing as usize] {
            0 => String::new(),
            n => format!(", {n} cut short"),
        }
    ));
    out
}

/// `size: get_size` from `selftests: size: get_size`.
fn short_name(name: &str) -> &str {
    name.strip_prefix("selftests: ").unwrap_or(name)
}

/// A failing test's output: its own diagnostics, else its failing
/// subtests'.
fn why_lines(node: &TestNode) -> Vec<String> {
    // runner.sh's own `# selftests: T: X` header names the test again.
    let own: Vec<String> = node
        .diagnostics
        .iter()
        .filter(|d| **d != node.name)
        .cloned()
        .collect();
    if !own.is_empty() {
        return own;
    }
    let mut out = Vec::new();
    for c in &node.children {
        if c.outcome.is_failure() {
            out.extend(why_lines(c));
        }
    }
    out
}

/// run_kselftest.sh's output: one TAP document per collection (each with
/// its own version line, plan and numbers from 1), made one report whose
/// top-level tests are every collection's, in order, and whose plan is
/// their sum.
pub fn parse_runs(text: &str) -> Report {
    let mut docs: Vec<String> = Vec::new();
    for line in text.lines() {
        let starts = ["TAP version ", "KTAP version "].iter().any(|v| {
            line.strip_prefix(v)
                .is_some_and(|n| n.trim().parse::<u32>().is_ok())
        });
        if starts || docs.is_empty() {
            docs.push(String::new());
        }
        if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    let mut all = Report::default();
    for doc in docs {
        let r = ktap::parse(&doc);
        if !r.found {
            all.unknown.extend(r.unknown);
            continue;
        }
        all.found = true;
        all.plan = match (all.plan, r.plan) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        all.tests.extend(r.tests);
        all.trailing.extend(r.trailing);
        all.problems.extend(r.problems);
        all.unknown.extend(r.unknown);
    }
    all
}

/// Whether every test passed or was skipped and the plans hold.
pub fn passed(report: &Report) -> bool {
    report.found
        && report.plan_problems().is_empty()
        && report.tests.iter().all(|n| !Verdict::of(n).is_failure())
}

/// The output directory for a tree and target list.
fn default_out(src: &Path, targets: &[String]) -> Result<PathBuf> {
    let key = ConfigSet {
        base: Base::Tinyconfig,
        fragments: targets.iter().map(PathBuf::from).collect(),
    };
    let base = kestrel_kernels::Cache::from_env()?.root().join("kselftest");
    Ok(kbuild::default_out(&base, src, &key))
}

/// The kernel `kestrel kernel build --src TREE` left, when it did.
fn built_kernel(src: &Path) -> Result<Option<String>> {
    let configs = ConfigSet {
        base: Base::Tinyconfig,
        fragments: Vec::new(),
    };
    let out = kbuild::default_out(&super::kbuild_base()?, src, &configs);
    Ok(out
        .join(kestrel_kernels::build::MANIFEST_FILE)
        .is_file()
        .then(|| format!("build:{}", out.display())))
}

/// `make ARGS`, its output into `log` (a failure quotes the log).
fn make(args: &[String], log: &Path, what: &str) -> Result<()> {
    let mut cmd = Command::new("make");
    cmd.args(args).stdin(Stdio::null());
    kbuild::run_logged(cmd, log, what)
}

/// `collection:test` lines of the install's list.
fn listed_tests(install: &Path) -> Result<Vec<String>> {
    let list = install.join("kselftest-list.txt");
    let text = std::fs::read_to_string(&list)
        .with_context(|| format!("the selftest install has no {}", list.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The tests to run: every listed one, or those `wanted` names
/// (`COLLECTION:TEST`), each of which must be listed.
fn selected_tests(listed: Vec<String>, wanted: &[String]) -> Result<Vec<String>> {
    if wanted.is_empty() {
        return Ok(listed);
    }
    for w in wanted {
        if !listed.contains(w) {
            bail!(
                "--test {w}: no such test in this build; built: {}",
                listed.join(", ")
            );
        }
    }
    Ok(wanted.to_vec())
}

/// Gives a collection's tests `timeout` seconds each (`settings`'
/// `timeout=`), or puts back the collection's own settings when `None`.
/// The installed original is kept once as `settings.kestrel-orig` (until
/// the next build installs fresh ones), so an override never outlives
/// its run.
fn set_timeout(collection: &Path, timeout: Option<u64>) -> Result<()> {
    let settings = collection.join("settings");
    let orig = collection.join("settings.kestrel-orig");
    let write = |path: &Path, text: &[u8]| {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    match timeout {
        Some(t) => {
            if !orig.exists() {
                // An empty original stands for "none was installed".
                write(&orig, &std::fs::read(&settings).unwrap_or_default())?;
            }
            write(&settings, format!("timeout={t}\n").as_bytes())
        }
        None => {
            let Ok(text) = std::fs::read(&orig) else {
                return Ok(());
            };
            if text.is_empty() {
                let _ = std::fs::remove_file(&settings);
            } else {
                write(&settings, &text)?;
            }
            std::fs::remove_file(&orig).with_context(|| format!("cannot remove {}", orig.display()))
        }
    }
}

/// `make headers`, then the selftests built and installed into `install`.
fn build(
    src: &Path,
    selftests: &Path,
    args: &KselftestArgs,
    out: &Path,
    install: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let log = out.join("kselftest-build.log");
    std::fs::write(&log, "").with_context(|| format!("cannot write {}", log.display()))?;
    kbuild::ensure_host_tools()?;
    // lib.mk installs with rsync.
    if host::which("rsync").is_none() {
        host::apt_install(&["rsync"])?;
    }
    let status_before = kbuild::git_status(src);
    let jobs = format!("-j{}", kbuild::jobs(args.jobs)?);
    let start = std::time::Instant::now();
    host::step(format!(
        "kselftest: headers and {} from {} into {}",
        if args.targets.is_empty() {
            "every default target".to_owned()
        } else {
            args.targets.join(", ")
        },
        src.display(),
        out.display()
    ));
    let o = format!("O={}", out.display());
    make(
        &[
            "-C".into(),
            src.display().to_string(),
            o.clone(),
            "ARCH=x86_64".into(),
            jobs.clone(),
            "headers".into(),
        ],
        &log,
        "make headers",
    )?;
    let mut sargs = vec![
        "-C".into(),
        selftests.display().to_string(),
        o,
        "ARCH=x86_64".into(),
        jobs,
        format!("KSFT_INSTALL_PATH={}", install.display()),
    ];
    if !args.targets.is_empty() {
        sargs.push(format!("TARGETS={}", args.targets.join(" ")));
    }
    sargs.push("install".into());
    make(&sargs, &log, "building the selftests")?;
    kbuild::ensure_tree_unchanged(src, status_before.as_deref(), "building the selftests")?;
    let tests = listed_tests(install)?;
    // The install's `settings` are fresh from the tree: an original kept
    // by an earlier `--per-test-timeout` run is stale now.
    for collection in tests.iter().filter_map(|t| t.split(':').next()) {
        let _ = std::fs::remove_file(install.join(collection).join("settings.kestrel-orig"));
    }
    if tests.is_empty() {
        bail!(
            "the targets built no test to run (empty {}/kselftest-list.txt); see {}",
            install.display(),
            log.display()
        );
    }
    host::step(format!(
        "kselftest: {} tests built in {:.1} s",
        tests.len(),
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `kestrel kselftest`.
pub fn run(args: KselftestArgs) -> Result<u8> {
    let src = kbuild::check_source_tree(&args.src)?;
    let selftests = src.join("tools/testing/selftests");
    if !selftests.join("Makefile").is_file() {
        bail!(
            "{} has no tools/testing/selftests/Makefile: pass a kernel tree that has the selftests",
            src.display()
        );
    }
    for t in &args.targets {
        if t.is_empty() || t.contains("..") || !selftests.join(t).join("Makefile").is_file() {
            bail!(
                "--targets {t}: no such selftest target (a directory with a Makefile under {})",
                selftests.display()
            );
        }
    }
    let out = match &args.out {
        Some(o) => super::absolute(o)?,
        None => default_out(&src, &args.targets)?,
    };
    let install = out.join("install");
    if args.no_build {
        if !install.join("kselftest-list.txt").is_file() {
            bail!(
                "--no-build: {} holds no installed selftests; run without --no-build first",
                out.display()
            );
        }
    } else {
        build(&src, &selftests, &args, &out, &install)?;
    }
    if args.build_only {
        host::step(format!(
            "kselftest: installed in {}; run them with --no-build --out {}",
            install.display(),
            out.display()
        ));
        println!("{}", install.display());
        return Ok(0);
    }
    crate::doctor::require_hardware_speed().map_err(anyhow::Error::msg)?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => built_kernel(&src)?.with_context(|| {
            format!(
                "no kernel is built from {} yet: pass --kernel SPEC (debian:6.1, build:DIR, a bzImage) or run `kestrel kernel build --src {}` first",
                src.display(),
                src.display()
            )
        })?,
    };
    super::ensure_kernel(&kernel)?;
    let tests = selected_tests(listed_tests(&install)?, &args.tests)?;
    if args.per_test_timeout == Some(0) {
        bail!("--per-test-timeout must be at least 1 second");
    }
    let mut collections: Vec<&str> = tests.iter().filter_map(|l| l.split(':').next()).collect();
    collections.dedup();
    for c in collections {
        set_timeout(&install.join(c), args.per_test_timeout)?;
    }
    let mut longest = 45;
    if let Some(t) = args.per_test_timeout {
        longest = t;
    } else {
        for l in &tests {
            let c = l.split(':').next().unwrap_or_default();
            if let Ok(s) = std::fs::read_to_string(install.join(c).join("settings")) {
                if let Some(t) = s
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("timeout="))
                    .and_then(|t| t.trim().parse::<u64>().ok())
                {
                    longest = longest.max(t);
                }
            }
        }
    }
    let tap = out.join("kselftest.tap");
    let console = out.join("console.log");
    host::step(format!("kselftest: booting {kernel}"));
    let booted = Boot {
        kernel,
        append: String::new(),
        console: console.clone(),
        stdout: Some(tap.clone()),
        timeout_secs: 120 + longest.saturating_mul(tests.len() as u64),
        cpus: args.cpus,
        memory_mib: args.memory,
        no_host_root: false,
        rw: vec![install.clone()],
        // runner.sh appends to /dev/stdout: the init's relay pipes make
        // that open work (initramfs/init/src/relay.rs).
        command: std::iter::once(install.join("run_kselftest.sh").display().to_string())
            .chain(args.tests.iter().flat_map(|t| ["-t".to_owned(), t.clone()]))
            .collect(),
    }
    .run()?;
    let text =
        std::fs::read_to_string(&tap).with_context(|| format!("cannot read {}", tap.display()))?;
    let report = parse_runs(&text);
    if !report.found {
        bail!(
            "the selftests printed no TAP ({}; output {}, kernel log {})",
            booted.describe(),
            tap.display(),
            console.display()
        );
    }
    print!("{}", summary(&report));
    if let Some(path) = &args.junit {
        std::fs::write(path, report.junit("kselftest"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut good = passed(&report);
    if booted.code != 0 && booted.code != 1 {
        eprintln!(
            "kselftest: the guest run did not end cleanly (kestrel exit {}): see {}",
            booted.code,
            console.display()
        );
        good = false;
    }
    if let Some(snap) = &args.snapshot {
        let tree = report.render_outcomes();
        if args.update {
            std::fs::write(snap, &tree)
                .with_context(|| format!("cannot write {}", snap.display()))?;
            eprintln!("kselftest: wrote the result tree to {}", snap.display());
        } else {
            let stored = std::fs::read_to_string(snap).with_context(|| {
                format!(
                    "no stored result tree at {}: run again with --update to write it",
                    snap.display()
                )
            })?;
            if stored != tree {
                eprintln!(
                    "kselftest: the result tree differs from {} (run with --update to accept):",
                    snap.display()
                );
                eprint!("{}", snapshot::diff(&stored, &tree).text);
                good = false;
            } else {
                eprintln!("kselftest: the result tree matches {}", snap.display());
            }
        }
    }
    Ok(u8::from(!good))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_override_never_outlives_its_run() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path();
        std::fs::write(c.join("settings"), "timeout=0\n").unwrap();
        set_timeout(c, Some(3)).unwrap();
        set_timeout(c, Some(5)).unwrap();
        assert_eq!(
            std::fs::read_to_string(c.join("settings")).unwrap(),
            "timeout=5\n"
        );
        set_timeout(c, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(c.join("settings")).unwrap(),
            "timeout=0\n"
        );
        assert!(!c.join("settings.kestrel-orig").exists());
        // A collection that installed no settings gets none back.
        std::fs::remove_file(c.join("settings")).unwrap();
        set_timeout(c, Some(2)).unwrap();
        set_timeout(c, None).unwrap();
        assert!(!c.join("settings").exists());
        set_timeout(c, None).unwrap();
    }

    #[test]
    fn tests_are_chosen_from_the_built_list() {
        let listed = vec!["timers:nanosleep".to_owned(), "timers:raw_skew".to_owned()];
        assert_eq!(selected_tests(listed.clone(), &[]).unwrap(), listed);
        let one = ["timers:raw_skew".to_owned()];
        assert_eq!(selected_tests(listed.clone(), &one).unwrap(), one);
        let err = selected_tests(listed, &["timers:nope".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--test timers:nope: no such test in this build; built: timers:nanosleep, timers:raw_skew"
        );
    }

    /// run_kselftest.sh's output shape (6.1): each test's own TAP behind
    /// `# `, then its result line; a timeout from runner.sh.
    const TAP: &str = "\
TAP version 13
1..3
# selftests: size: get_size
# TAP version 13
# 1..1
# # Testing system size.
# ok 1 get runtime memory use
# # System runtime memory report (units in Kilobytes):
# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0
ok 1 selftests: size: get_size
# selftests: membarrier: membarrier_test_single_thread
# TAP version 13
# 1..2
# ok 1 sys_membarrier available
# not ok 2 sys membarrier invalid command test: command = -1, flags = 0, errno = 22. Failed as expected
# Bail out!
not ok 2 selftests: membarrier: membarrier_test_single_thread # exit=1
# selftests: timers: nanosleep
# Nanosleep CLOCK_REALTIME
not ok 3 selftests: timers: nanosleep # TIMEOUT 45 seconds
";

    #[test]
    fn per_test_verdicts_and_why() {
        let r = ktap::parse(TAP);
        let s = summary(&r);
        assert!(
            s.starts_with(
                "[PASS] size: get_size\n[FAIL] membarrier: membarrier_test_single_thread\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("    failed: sys membarrier invalid command test: command = -1, flags = 0, errno = 22. Failed as expected\n"),
            "{s}"
        );
        assert!(s.contains("[TIMEOUT] timers: nanosleep\n    # TIMEOUT 45 seconds\n    | Nanosleep CLOCK_REALTIME\n"), "{s}");
        assert!(
            s.ends_with("kselftest: 3 tests: 1 passed, 0 skipped, 1 failed, 1 timed out\n"),
            "{s}"
        );
        assert!(!passed(&r));
        let only_pass: String = TAP.lines().take(10).map(|l| format!("{l}\n")).collect();
        let r = ktap::parse(&only_pass.replace("1..3", "1..1"));
        assert!(passed(&r), "{}", summary(&r));
    }

    #[test]
    fn one_document_per_collection_is_one_report() {
        let text =
            "TAP version 13\n1..1\n# selftests: size: get_size\nok 1 selftests: size: get_size\n\
                    TAP version 13\n1..2\n# selftests: m: a\nok 1 selftests: m: a\n\
                    # selftests: m: b\nnot ok 2 selftests: m: b # exit=1\n";
        let r = parse_runs(text);
        assert_eq!(r.plan, Some(3));
        assert!(r.plan_problems().is_empty(), "{:?}", r.problems);
        let names: Vec<&str> = r.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "selftests: size: get_size",
                "selftests: m: a",
                "selftests: m: b"
            ]
        );
        assert!(!passed(&r));
        assert!(summary(&r).ends_with("3 tests: 2 passed, 0 skipped, 1 failed, 0 timed out\n"));
        assert!(!parse_runs("no tap here\n").found);
    }

    #[test]
    fn skips_and_the_outcome_tree() {
        let r = ktap::parse("TAP version 13\n1..1\n# selftests: x: y\n# ok 1 # SKIP no rtc\nok 1 selftests: x: y # SKIP\n");
        assert_eq!(Verdict::of(&r.tests[0]), Verdict::Skip);
        assert!(passed(&r));
        let tree = r.render_outcomes();
        assert!(tree.starts_with("skip  selftests: x: y # SKIP\n"), "{tree}");
        let d = snapshot::diff("a\nb\n", "a\nc\n").text;
        assert!(d.contains("-    2 │ b") && d.contains("+    2 │ c"), "{d}");
    }
}

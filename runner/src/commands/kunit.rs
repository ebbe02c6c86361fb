//! `kestrel kunit --src TREE [--kunitconfig FILE] [--filter GLOB]`: the
//! kernel's KUnit tests, as `tools/testing/kunit/kunit.py run` runs them,
//! but built for x86-64 and booted under kestrel.
//!
//! Steps: the kunitconfig (a file, a directory holding `.kunitconfig`, or
//! the tree's `tools/testing/kunit/configs/default.config`, as kunit.py
//! picks it) is merged over Kestrel's fragment (tinyconfig + what the VMM
//! needs) and [`KUNIT_BASE`] (the testing menu, which tinyconfig turns
//! off), and every symbol it names is verified, so a test Kconfig dropped
//! is an error, not a silently smaller run → an incremental out-of-tree
//! build → a boot with `loglevel=7` (KUnit prints its results at
//! KERN_INFO, which `quiet` hides) and `kunit.filter_glob` → the KTAP in
//! the kernel log, parsed into the result tree → one line per test and
//! kunit.py's totals line.
//!
//! Counting follows kunit.py: the leaves of the tree (a parameterised
//! test counts each parameter). Exit status: 0 every test passed or was
//! skipped, 1 a test failed or the log was cut (a crash mid-suite), else
//! kestrel's own (125 a build or setup error, 124 timeout, …).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kestrel_kernels::host;
use kestrel_kernels::kbuild::{self, Base, BuildError, ConfigSet, Output, Plan};
use kestrel_scenarios::ktap::{self, Outcome, Report};

use super::Boot;

/// `kestrel kunit` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct KunitArgs {
    /// The kernel source tree (never written to).
    #[arg(long, value_name = "TREE")]
    pub src: PathBuf,
    /// The KUnit configuration: a fragment file, or a directory holding a
    /// `.kunitconfig` (default: the tree's
    /// tools/testing/kunit/configs/default.config, as kunit.py).
    #[arg(long, value_name = "FILE|DIR")]
    pub kunitconfig: Option<PathBuf>,
    /// Run only the tests matching this glob: `suite` or `suite.test`
    /// (kunit.py's filter_glob).
    #[arg(long, value_name = "GLOB")]
    pub filter: Option<String>,
    /// Build output directory (default: one per tree and kunitconfig in
    /// the kernel cache's kbuild/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Parallel make jobs (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Seconds the booted kernel gets to run its tests.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Also write the results as JUnit XML here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Build the kernel and stop (boot it later, or elsewhere, with
    /// --no-build).
    #[arg(long, conflicts_with = "no_build")]
    pub build_only: bool,
    /// Boot the kernel an earlier build left in the output directory,
    /// without running make (e.g. built on the host, booted in the rig).
    #[arg(long)]
    pub no_build: bool,
    /// Print the KTAP as the kernel printed it, not the summary.
    #[arg(long)]
    pub raw_output: bool,
    /// Extra kernel command-line arguments.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub append: String,
}

/// Merged between Kestrel's fragment and the kunitconfig: what kunit.py's
/// `olddefconfig` gets by default and tinyconfig turns off, without which
/// most test options cannot be set at all.
pub const KUNIT_BASE: &str = "\
# kestrel kunit: under tinyconfig the test options' menu is off.
CONFIG_RUNTIME_TESTING_MENU=y
";

/// Writes [`KUNIT_BASE`] into `dir` (unless it holds it already) and
/// returns its path.
fn kunit_base(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("kunit-base.config");
    kbuild::write_if_changed(&path, KUNIT_BASE.as_bytes())?;
    Ok(path)
}

/// The kunitconfig kunit.py would use for these arguments.
pub fn kunitconfig_path(src: &Path, given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) if p.is_dir() => p.join(".kunitconfig"),
        Some(p) => p.to_owned(),
        None => src.join("tools/testing/kunit/configs/default.config"),
    };
    if !path.is_file() {
        bail!(
            "no KUnit configuration at {}: pass --kunitconfig FILE (a config fragment such as CONFIG_KUNIT=y plus the tests' symbols)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !text.lines().any(|l| l.trim() == "CONFIG_KUNIT=y") {
        bail!(
            "{} does not set CONFIG_KUNIT=y, so the kernel would run no KUnit test: add that line",
            path.display()
        );
    }
    super::absolute(&path)
}

/// The kernel command line for a run.
pub fn append_for(filter: Option<&str>, extra: &str) -> Result<String> {
    let mut a = vec!["loglevel=7".to_owned()];
    if let Some(f) = filter {
        if f.is_empty() || f.contains(char::is_whitespace) {
            bail!("--filter takes one glob without spaces, such as `list` or `example.example_simple_test`");
        }
        a.push(format!("kunit.filter_glob={f}"));
    }
    if !extra.trim().is_empty() {
        a.push(extra.trim().to_owned());
    }
    Ok(a.join(" "))
}

/// The KTAP document in a kernel log: from the first version line on,
/// printk's timestamps cut (the parser cuts the first line's prefix from
/// every line).
pub fn ktap_of_log(log: &str) -> Report {
    ktap::parse(log)
}

/// kunit.py's per-test lines and its totals line.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    for (path, node) in report.leaves() {
        let tag = match node.outcome {
            Outcome::Pass | Outcome::XFail => "PASSED",
            Outcome::Skip | Outcome::Todo => "SKIPPED",
            Outcome::Fail => "FAILED",
            Outcome::Missing => "CRASHED",
        };
        out.push_str(&format!("[{tag}] {path}\n"));
        if node.outcome.is_failure() {
            for d in &node.diagnostics {
                out.push_str(&format!("    # {d}\n"));
            }
        }
    }
    fn cut(nodes: &[kestrel_scenarios::ktap::TestNode], path: &str, out: &mut String) {
        for n in nodes {
            let p = if path.is_empty() {
                n.name.clone()
            } else {
                format!("{path}.{}", n.name)
            };
            if n.outcome == Outcome::Missing && !n.children.is_empty() {
                out.push_str(&format!(
                    "[CRASHED] {p}: no result line after {} of its tests (the kernel crashed or the log was cut)\n",
                    n.children.len()
                ));
            }
            cut(&n.children, &p, out);
        }
    }
    cut(&report.tests, "", &mut out);
    for p in report.plan_problems() {
        out.push_str(&format!("problem: {p}\n"));
    }
    out.push_str(&totals_line(report));
    out.push('\n');
    out
}

/// `Testing complete. Ran N tests: passed: P, failed: F, crashed: C,
/// skipped: S` — kunit.py's wording: its counts in its order, zero
/// counts left out, a test cut by a crash counted as crashed.
pub fn totals_line(report: &Report) -> String {
    let (mut passed, mut failed, mut crashed, mut skipped) = (0, 0, 0, 0);
    for (_, node) in report.leaves() {
        match node.outcome {
            Outcome::Pass | Outcome::XFail => passed += 1,
            Outcome::Fail => failed += 1,
            Outcome::Missing => crashed += 1,
            Outcome::Skip | Outcome::Todo => skipped += 1,
        }
    }
    let total = passed + failed + crashed + skipped;
    let parts: Vec<String> = [
        ("passed", passed),
        ("failed", failed),
        ("crashed", crashed),
        ("skipped", skipped),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{what}: {n}"))
    .collect();
    format!("Testing complete. Ran {total} tests: {}", parts.join(", "))
}

/// `kestrel kunit`.
pub fn run(args: KunitArgs) -> Result<u8> {
    let src = kbuild::check_source_tree(&args.src)?;
    let kunitconfig = kunitconfig_path(&src, args.kunitconfig.as_deref())?;
    let append = append_for(args.filter.as_deref(), &args.append)?;
    let kbuild_base = super::kbuild_base()?;
    let configs = ConfigSet {
        base: Base::Tinyconfig,
        fragments: vec![kunit_base(&kbuild_base)?, kunitconfig.clone()],
    };
    let out = match &args.out {
        Some(o) => super::absolute(o)?,
        None => kbuild::default_out(&kbuild_base, &src, &configs),
    };
    if !args.no_build {
        host::step(format!(
            "kunit: building {} with {} in {}",
            src.display(),
            kunitconfig.display(),
            out.display()
        ));
    }
    let (out, release) = if args.no_build {
        let manifest = out.join(kestrel_kernels::build::MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest).map_err(|_| {
            anyhow::anyhow!(
                "--no-build: {} holds no finished build; run without --no-build first",
                out.display()
            )
        })?;
        let m = kestrel_kernels::build::BuildManifest::from_text(&text)
            .map_err(|e| anyhow::anyhow!("{} is damaged ({e}); build again", manifest.display()))?;
        (out, m.release)
    } else {
        let plan = Plan {
            src,
            out,
            configs,
            jobs: kbuild::jobs(args.jobs)?,
            output: Output::LogFile,
            reproducible: false,
        };
        let built = kbuild::build(&plan).map_err(BuildError::into_inner)?;
        (built.out, built.release)
    };
    if args.build_only {
        host::step(format!(
            "kunit: {release} built; run its tests with --no-build --out {}",
            out.display()
        ));
        println!("{}", out.display());
        return Ok(0);
    }
    crate::doctor::require_hardware_speed().map_err(anyhow::Error::msg)?;
    let log = out.join("kunit.log");
    host::step(format!(
        "kunit: booting {release} (kernel log: {})",
        log.display()
    ));
    let booted = Boot {
        kernel: format!("build:{}", out.display()),
        append,
        console: log.clone(),
        stdout: None,
        timeout_secs: args.timeout,
        cpus: 1,
        memory_mib: 512,
        no_host_root: true,
        rw: Vec::new(),
        command: Vec::new(),
    }
    .run()?;
    let text = std::fs::read_to_string(&log)
        .with_context(|| format!("cannot read the kernel log {}", log.display()))?;
    let report = ktap_of_log(&text);
    if !report.found {
        bail!(
            "the kernel printed no KTAP ({}; log {}): check that the kunitconfig's tests are built in and the filter matches a suite",
            booted.describe(),
            log.display()
        );
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report.junit("kunit"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.raw_output {
        let start = text
            .lines()
            .position(|l| l.contains("KTAP version") || l.contains("TAP version"))
            .unwrap_or(0);
        for l in text.lines().skip(start) {
            println!("{l}");
        }
    } else {
        print!("{}", summary(&report));
    }
    let crashed = !matches!(booted.code, 0);
    if crashed {
        eprintln!(
            "kunit: the kernel did not end cleanly (kestrel exit {}): the results above are what it printed before",
            booted.code
        );
    }
    Ok(if report.passed() && !crashed { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KUnit's output on Debian 6.1 (x86-64, kestrel's console), cut from a
    /// kernel log with other lines between.
    const LOG: &str = "\
[    0.512000] Run /init as init process
[    0.400000] KTAP version 1
[    0.400001] 1..2
[    0.400002]     KTAP version 1
[    0.400003]     # Subtest: example
[    0.400004]     1..3
[    0.400005]     # example_simple_test: initializing
[    0.400006]     ok 1 example_simple_test
[    0.400007]     ok 2 example_skip_test # SKIP this test should be skipped
[    0.400008]         KTAP version 1
[    0.400009]         # Subtest: example_params_test
[    0.400010]         ok 1 example value 2 # SKIP unsupported param value
[    0.400011]         ok 2 example value 0
[    0.400012] random: crng init done
[    0.400013]     # example_params_test: pass:1 fail:0 skip:1 total:2
[    0.400014]     ok 3 example_params_test
[    0.400015] # example: pass:2 fail:0 skip:1 total:3
[    0.400016] ok 1 example
[    0.400017]     KTAP version 1
[    0.400018]     # Subtest: list-kernel-test
[    0.400019]     1..1
[    0.400020]     # list_test_list_init: EXPECTATION FAILED at lib/list-test.c:10
[    0.400021]     not ok 1 list_test_list_init
[    0.400022] not ok 2 list-kernel-test
";

    #[test]
    fn log_to_results_and_kunit_py_totals() {
        let r = ktap_of_log(LOG);
        assert!(r.found);
        let s = summary(&r);
        assert_eq!(
            s,
            "[PASSED] example.example_simple_test\n\
             [SKIPPED] example.example_skip_test\n\
             [SKIPPED] example.example_params_test.example value 2\n\
             [PASSED] example.example_params_test.example value 0\n\
             [FAILED] list-kernel-test.list_test_list_init\n\
             \x20   # list_test_list_init: EXPECTATION FAILED at lib/list-test.c:10\n\
             Testing complete. Ran 5 tests: passed: 2, failed: 1, skipped: 2\n"
        );
        assert!(!r.passed());
    }

    #[test]
    fn a_cut_log_is_a_crash() {
        let cut: String = LOG.lines().take(8).map(|l| format!("{l}\n")).collect();
        let r = ktap_of_log(&cut);
        assert!(!r.passed());
        let s = summary(&r);
        assert!(s.contains("[PASSED] example.example_simple_test"), "{s}");
        assert!(
            s.contains("[CRASHED] example: no result line after 1 of its tests"),
            "{s}"
        );
        assert!(s.contains("problem: example: planned 3, ran 1"), "{s}");
    }

    #[test]
    fn arguments() {
        assert_eq!(append_for(None, "").unwrap(), "loglevel=7");
        assert_eq!(
            append_for(Some("example.*"), " nokaslr ").unwrap(),
            "loglevel=7 kunit.filter_glob=example.* nokaslr"
        );
        assert!(append_for(Some("a b"), "").is_err());
        let dir = tempfile::tempdir().unwrap();
        let err = kunitconfig_path(dir.path(), None).unwrap_err().to_string();
        assert!(err.starts_with("no KUnit configuration at"), "{err}");
        std::fs::write(
            dir.path().join(".kunitconfig"),
            "CONFIG_LIST_KUNIT_TEST=y\n",
        )
        .unwrap();
        let err = kunitconfig_path(dir.path(), Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("add that line"), "{err}");
        std::fs::write(
            dir.path().join(".kunitconfig"),
            "CONFIG_KUNIT=y\nCONFIG_LIST_KUNIT_TEST=y\n",
        )
        .unwrap();
        assert_eq!(
            kunitconfig_path(dir.path(), Some(dir.path())).unwrap(),
            dir.path().join(".kunitconfig")
        );
    }
}

//! `kestrel kselftest` and `kestrel kunit` end to end (issue 14 items 3
//! and 4), on Debian's 6.1 source: two selftest targets (size, membarrier)
//! run in a Debian 6.1 guest, the timers target under a 3 s per-test
//! limit (timeouts), and a small KUnit suite (example, list, bitfield)
//! built into a kernel and booted.
//!
//! The builds happen on the host before the rig starts (`cargo xtask ci`
//! runs `kestrel kselftest … --build-only` and `kestrel kunit …
//! --build-only`): compiling inside the rig's emulated L1 would take an
//! hour. Here each command runs with `--no-build` against those outputs,
//! so a missing build is a failure under `KESTREL_REAL_KVM_TESTS=1`.
//! `KESTREL_KUNIT_OUT=DIR` names the KUnit build's `--out` (ci's).
//!
//! Needs hardware-speed KVM (the nested rig in CI): see `common`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use kestrel_kernels::{source, Cache, Series};

/// Debian's 6.1 source tree from the cache (`cargo xtask kernel source
/// debian:6.1`).
fn source_61() -> Option<PathBuf> {
    common::require((|| {
        let cache = Cache::from_env().map_err(|e| e.to_string())?;
        let series = Series::parse("6.1").map_err(|e| e.to_string())?;
        match source::lookup(&cache, series) {
            Ok(Some(tree)) => Ok(tree.dir),
            Ok(None) => {
                Err("Debian's 6.1 source is not cached (kestrel kernel source debian:6.1)".into())
            }
            Err(e) => Err(e.to_string()),
        }
    })())
}

/// `--out DIR` when `KESTREL_KUNIT_OUT` names the KUnit build (ci builds
/// it there, so that splat_trace can boot the same kernel as `build:DIR`);
/// else kestrel's default build directory.
fn kunit_out() -> Vec<std::ffi::OsString> {
    match std::env::var_os("KESTREL_KUNIT_OUT") {
        Some(dir) => vec!["--out".into(), dir],
        None => Vec::new(),
    }
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The selftest targets the test runs, as `--targets` takes them.
pub const SELFTEST_TARGETS: &str = "size,membarrier";

#[test]
fn kselftest_targets_run_in_the_guest_with_per_test_results() {
    let Some(_) = common::prerequisites("6.1") else {
        return;
    };
    let Some(src) = source_61() else { return };
    let dir = common::scratch("kselftest");
    let junit = dir.join("kselftest.xml");
    let run = common::Run::of(
        Command::new(common::KESTREL)
            .args(["kselftest", "--no-build", "--kernel", "debian:6.1"])
            .arg("--src")
            .arg(&src)
            .args(["--targets", SELFTEST_TARGETS, "--per-test-timeout", "60"])
            .arg("--junit")
            .arg(&junit)
            .arg("--snapshot")
            .arg(data("kselftest-6.1.snap")),
    );
    run.expect(0, "kestrel kselftest size,membarrier on Debian 6.1")
        .expect_lines(&[
            "[PASS] size: get_size",
            "[PASS] membarrier: membarrier_test_single_thread",
            "[PASS] membarrier: membarrier_test_multi_thread",
            "kselftest: 3 tests: 3 passed, 0 skipped, 0 failed, 0 timed out",
        ]);
    assert!(
        run.stderr.contains("the result tree matches"),
        "{}",
        run.stderr
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuite name=\"selftests: size: get_size\""),
        "{xml}"
    );
    assert!(!xml.contains("<failure"), "{xml}");
}

/// The selftest target whose tests outlive a short per-test limit.
pub const SLOW_SELFTEST_TARGET: &str = "timers";

#[test]
fn a_selftest_over_its_time_limit_is_a_timeout() {
    let Some(_) = common::prerequisites("6.1") else {
        return;
    };
    let Some(src) = source_61() else { return };
    // timers' `settings` say `timeout=0` (none); 3 s overrides it for this
    // run only. nanosleep sleeps on every clock for up to a second each and
    // raw_skew measures drift for minutes, so both outlive it anywhere.
    let run = common::Run::of(
        Command::new(common::KESTREL)
            .args(["kselftest", "--no-build", "--kernel", "debian:6.1"])
            .arg("--src")
            .arg(&src)
            .args(["--targets", SLOW_SELFTEST_TARGET, "--per-test-timeout", "3"])
            .args(["--test", "timers:nanosleep", "--test", "timers:raw_skew"]),
    );
    run.expect(1, "kestrel kselftest timers --per-test-timeout 3")
        .expect_lines(&[
            "[TIMEOUT] timers: nanosleep",
            "[TIMEOUT] timers: raw_skew",
            "kselftest: 2 tests: 0 passed, 0 skipped, 0 failed, 2 timed out",
        ]);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.trim() == "# TIMEOUT 3 seconds"),
        "the limit given is not the one applied:\n{}",
        run.stdout
    );
}

#[test]
fn kunit_suites_run_at_boot_and_count_as_kunit_py_does() {
    let Some(_) = common::prerequisites("6.1") else {
        return;
    };
    let Some(src) = source_61() else { return };
    let kunit = |extra: &[&str]| {
        common::Run::of(
            Command::new(common::KESTREL)
                .args(["kunit", "--no-build", "--src"])
                .arg(&src)
                .arg("--kunitconfig")
                .arg(data("small.kunitconfig"))
                .args(kunit_out())
                .args(extra),
        )
    };
    let dir = common::scratch("kunit");
    let junit = dir.join("kunit.xml");
    let all = kunit(&["--junit", junit.to_str().unwrap()]);
    all.expect(0, "kestrel kunit with small.kunitconfig");
    let totals = all
        .stdout
        .lines()
        .find(|l| l.starts_with("Testing complete."))
        .unwrap_or_else(|| panic!("no totals line:\n{}\n{}", all.stdout, all.stderr));
    // tools/testing/kunit/kunit.py run --kunitconfig small.kunitconfig on
    // the same tree (UML) reports the same counts (runner/NOTES.md).
    assert_eq!(totals, KUNIT_PY_TOTALS, "{}", all.stdout);
    all.expect_lines(&[
        "[PASSED] example.example_simple_test",
        "[SKIPPED] example.example_skip_test",
        "[PASSED] list-kunit-test.list_test_list_init",
        "[SKIPPED] example.example_mark_skipped_test",
    ]);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testsuite name=\"example\""), "{xml}");

    let one = kunit(&["--filter", "example.example_simple_test"]);
    one.expect(0, "kestrel kunit --filter example.example_simple_test");
    assert_eq!(
        one.stdout,
        "[PASSED] example.example_simple_test\nTesting complete. Ran 1 tests: passed: 1\n",
        "{}",
        one.stderr
    );
}

/// kunit.py's totals for small.kunitconfig on Debian's 6.1 source.
/// Measured: `python3 tools/testing/kunit/kunit.py run --kunitconfig
/// runner/tests/data/small.kunitconfig --build_dir /tmp/kunit-uml` in the
/// 6.1.176 tree (UML, 428 s, nearly all of it the build).
const KUNIT_PY_TOTALS: &str = "Testing complete. Ran 63 tests: passed: 61, skipped: 2";

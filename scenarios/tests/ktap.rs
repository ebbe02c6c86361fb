//! KTAP/TAP parser on stored samples (tests/fixtures/ktap): KUnit's KTAP v1
//! with indented version lines and `# Subtest:` headers, older KUnit TAP 14,
//! kselftest's `# `-prefixed nesting, a missing plan, garbage lines, and
//! output cut off by a crash. Each test checks the rendered tree (what a
//! snapshot stores) and the failures by path (what a verdict reports).

use kestrel_scenarios::ktap::{self, Outcome};

fn fixture(name: &str) -> ktap::Report {
    let path = format!("{}/tests/fixtures/ktap/{name}", env!("CARGO_MANIFEST_DIR"));
    ktap::parse(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn kunit_ktap_v1_nested_with_a_failure_three_levels_down() {
    let r = fixture("kunit_v1_nested.ktap");
    assert_eq!(
        r.render(),
        "\
ok    kestrel-list
ok      list_init_is_empty
ok      list_add_then_del
ok      list_splice_cases
ok        splice into empty
skip      splice empty list # SKIP nothing to splice on this config
ok        splice both non-empty
FAIL  kestrel-time
        # kestrel-time: pass:1 fail:1 skip:0 total:2
ok      date_conversion
FAIL    leap_years
          # leap_years: EXPECTATION FAILED at lib/kestrel_time_test.c:88
          # leap_years: pass:2 fail:1 skip:0 total:3
ok        year 2000
FAIL      year 1900
ok        year 2024
--
totals: 7 passed, 1 failed, 1 skipped
failed: kestrel-time.leap_years.year 1900
"
    );
    assert_eq!(r.failures(), ["kestrel-time.leap_years.year 1900"]);
    assert!(!r.passed());
    // `# module:` is a diagnostic of the first test; the suite name comes
    // from the result line.
    assert_eq!(
        r.tests[0].children[0].diagnostics,
        ["module: kestrel_list_test"]
    );
    assert_eq!(r.trailing, ["Totals: pass:5 fail:1 skip:1 total:7"]);
    // The non-`#` line KUnit prints under an expectation is an unknown line.
    assert_eq!(r.unknown.len(), 1);
    assert_eq!(r.tests[1].children[1].children[1].outcome, Outcome::Fail);
}

#[test]
fn kunit_tap14_subtest_headers() {
    let r = fixture("kunit_tap14_subtest.ktap");
    assert_eq!(r.tests.len(), 2);
    assert_eq!(
        r.tests[0].name, "kestrel-bitmap",
        "`ok 1 - name`: the dash is not part of the name"
    );
    assert_eq!(r.tests[1].plan, Some(3));
    assert_eq!(r.tests[1].children[1].outcome, Outcome::Skip);
    assert_eq!(r.failures(), ["kestrel-crc.crc32c"]);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(r
        .render()
        .contains("skip    crc32_be # SKIP big-endian helpers not built\n"));
}

#[test]
fn kselftest_prefixed_nesting() {
    let r = fixture("kselftest.tap");
    assert_eq!(
        r.render(),
        "\
ok    selftests: kestrel: clock_probe
ok      CLOCK_REALTIME resolution
ok      CLOCK_MONOTONIC never goes back
skip    CLOCK_BOOTTIME includes suspend # SKIP no suspend in a VM
FAIL  selftests: kestrel: mmap_probe # exit=1
        # timeout set to 45
        # selftests: kestrel: mmap_probe
        # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0
ok      anonymous mapping
FAIL    executable mapping
          # mprotect(PROT_EXEC) returned EACCES
skip  selftests: kestrel: bpf_probe # SKIP CONFIG_BPF_SYSCALL is not set
--
totals: 3 passed, 1 failed, 2 skipped
failed: selftests: kestrel: mmap_probe.executable mapping
"
    );
    assert_eq!(r.plan, Some(3));
    assert!(r.unknown.is_empty());
}

#[test]
fn missing_plan_is_noted_not_failed() {
    let r = fixture("missing_plan.ktap");
    assert_eq!(r.plan, None);
    assert_eq!(r.problems, ["no plan at the top level"]);
    assert!(r.passed());
    assert!(r.render().contains("problem: no plan at the top level\n"));
}

#[test]
fn garbage_lines_do_not_change_the_tree() {
    let r = fixture("garbage.ktap");
    assert!(r.passed(), "{}", r.render());
    assert_eq!(r.tests.len(), 2);
    assert_eq!(r.tests[0].children.len(), 2);
    let unknown: Vec<usize> = r.unknown.iter().map(|(n, _)| *n).collect();
    assert_eq!(unknown, [1, 2, 5, 9, 12, 16]);
}

#[test]
fn output_cut_by_a_crash_fails_with_the_plan_unmet() {
    let r = fixture("cut_off.ktap");
    assert!(!r.passed());
    assert_eq!(r.failures(), ["crashes"]);
    assert_eq!(r.tests[1].outcome, Outcome::Missing);
    assert_eq!(
        r.problems,
        ["crashes: no result line", "crashes: planned 3, ran 1"]
    );
    assert_eq!(r.plan_problems(), ["crashes: planned 3, ran 1"]);
}

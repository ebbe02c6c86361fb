//! HARNESS TESTS — no kernel is booted here. A fake `kestrel` (a shell
//! script written by each test) plays the runner contract back from files:
//! for guest command `… NAME` it prints `cases/NAME/stdout` and
//! `cases/NAME/stderr`, copies `cases/NAME/console` to `--console FILE`,
//! appends a line to `cases/NAME/runs`,
//! prints `cases/NAME/verdict` as its last stderr line and exits with
//! `cases/NAME/exit`; it records its argv in `cases/NAME/argv`; with
//! `cases/NAME/sleep` it hangs that many seconds instead; with
//! `cases/NAME/first` (a verdict line) it prints that and exits 124 once,
//! removing the file (a guest that hung on the first try); with
//! `cases/NAME/record` it copies that to `--verdict-file FILE`. What is
//! tested is the harness: argument passing, output parsing, evaluation,
//! snapshots (`.snap.new`, `--update`), artifacts, JUnit, the summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kestrel_scenarios::backend::KestrelBinary;
use kestrel_scenarios::{run_suite, SuiteOptions, Summary, Verdict};

const FAKE_KESTREL: &str = r#"#!/bin/sh
# Fake kestrel for harness tests (see tests/harness.rs).
here=$(cd "$(dirname "$0")" && pwd)
all="$*"
console=""
record=""
while [ $# -gt 0 ]; do
  case "$1" in
    --console) console="$2"; shift 2 ;;
    --verdict-file) record="$2"; shift 2 ;;
    --) shift; break ;;
    *) shift ;;
  esac
done
for last in "$@"; do :; done
case_dir="$here/cases/$last"
{ echo "$all"; } > "$case_dir/argv"
echo run >> "$case_dir/runs"
[ -f "$case_dir/console" ] && cat "$case_dir/console" > "$console"
[ -f "$case_dir/stdout" ] && cat "$case_dir/stdout"
[ -f "$case_dir/stderr" ] && cat "$case_dir/stderr" >&2
[ -f "$case_dir/sleep" ] && exec sleep "$(cat "$case_dir/sleep")"
if [ -f "$case_dir/first" ]; then cat "$case_dir/first" >&2; rm "$case_dir/first"; exit 124; fi
[ -f "$case_dir/record" ] && cat "$case_dir/record" > "$record"
[ -f "$case_dir/verdict" ] && cat "$case_dir/verdict" >&2
exit "$(cat "$case_dir/exit" 2>/dev/null || echo 0)"
"#;

static RUNS: AtomicUsize = AtomicUsize::new(0);

struct Fixture {
    root: PathBuf,
    options: SuiteOptions,
    backend: KestrelBinary,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let root =
            std::env::temp_dir().join(format!("kestrel-harness-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("scenarios/snapshots")).unwrap();
        std::fs::create_dir_all(root.join("cases")).unwrap();
        let fake = root.join("fake-kestrel");
        std::fs::write(&fake, FAKE_KESTREL).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut options = SuiteOptions::new(&root);
        options.artifacts_root = root.join("target/kestrel");
        options.progress = false;
        options.jobs = 2;
        Fixture {
            backend: KestrelBinary::new(fake),
            options,
            root,
        }
    }

    fn scenario(&self, name: &str, toml: &str) {
        std::fs::write(self.root.join(format!("scenarios/{name}.toml")), toml).unwrap();
    }

    /// What the fake runner does for guest command `… name`.
    fn case(&self, name: &str, stdout: &str, console: &str, verdict: &str, exit: i32) {
        let d = self.root.join("cases").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("stdout"), stdout).unwrap();
        std::fs::write(d.join("console"), console).unwrap();
        std::fs::write(d.join("verdict"), format!("{verdict}\n")).unwrap();
        std::fs::write(d.join("exit"), exit.to_string()).unwrap();
    }

    fn stderr(&self, name: &str, text: &str) {
        std::fs::write(self.root.join("cases").join(name).join("stderr"), text).unwrap();
    }

    fn run(&mut self, update: bool) -> Summary {
        self.options.update = update;
        self.options.run_id = Some(format!("run{}", RUNS.fetch_add(1, Ordering::SeqCst)));
        run_suite(&self.options, &self.backend).unwrap()
    }

    fn snap(&self, name: &str) -> PathBuf {
        self.root.join("scenarios/snapshots").join(name)
    }

    fn verdict<'a>(summary: &'a Summary, scenario: &str) -> &'a Verdict {
        &summary
            .results
            .iter()
            .find(|r| r.scenario == scenario)
            .unwrap()
            .verdict
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

const PASS: &str = "kestrel: verdict=pass boot=812 total=1530";

#[test]
fn harness_snapshot_lifecycle_missing_update_edit_diff_restore() {
    let mut f = Fixture::new("lifecycle");
    f.scenario("alpha", "run = [\"probe\", \"alpha\"]\n");
    f.scenario("beta", "run = [\"probe\", \"beta\"]\n");
    f.case("alpha", "one\ntwo [    1.234567]\nthree\n", "", PASS, 0);
    f.case("beta", "beta output\n", "", PASS, 0);

    // No snapshots: a failure that says what to do, never a pass.
    let s = f.run(false);
    assert!(!s.passed());
    for name in ["alpha", "beta"] {
        let reason = Fixture::verdict(&s, name).reason();
        assert!(
            reason.starts_with("no snapshot yet: run with --update"),
            "{reason}"
        );
        assert!(f.snap(&format!("{name}.snap.new")).is_file());
        assert!(!f.snap(&format!("{name}.snap")).exists());
    }

    // --update accepts: .snap written, .snap.new removed, and the files are
    // insta's format.
    let s = f.run(true);
    assert!(s.passed(), "{}", s.table);
    assert!(!f.snap("alpha.snap.new").exists());
    let insta_view = insta::Snapshot::from_file(&f.snap("alpha.snap")).unwrap();
    assert_eq!(
        insta_view.as_text().unwrap().to_string(),
        "== stdout ==\none\ntwo [TIME]\nthree"
    );
    let accepted = std::fs::read_to_string(f.snap("alpha.snap")).unwrap();
    assert!(f.run(false).passed());

    // One expected line changed: exactly that scenario fails, naming the line.
    std::fs::write(f.snap("alpha.snap"), accepted.replace("three", "THREE")).unwrap();
    let s = f.run(false);
    assert!(Fixture::verdict(&s, "beta").passed());
    let v = Fixture::verdict(&s, "alpha");
    assert_eq!(v.kind(), "fail");
    assert!(v.reason().contains("differs at line 4"), "{}", v.reason());
    let diff = v.diffs().join("");
    assert!(diff.contains("-    4 │ THREE\n+    4 │ three\n"), "{diff}");
    assert!(f.snap("alpha.snap.new").is_file());
    let pending = insta::Snapshot::from_file(&f.snap("alpha.snap.new")).unwrap();
    assert_eq!(
        pending.as_text().unwrap().to_string(),
        "== stdout ==\none\ntwo [TIME]\nthree"
    );
    let case_dir = s
        .results
        .iter()
        .find(|r| r.scenario == "alpha")
        .unwrap()
        .artifacts
        .clone();
    assert!(std::fs::read_to_string(case_dir.join("diff.txt"))
        .unwrap()
        .contains("THREE"));
    let junit = std::fs::read_to_string(s.run_dir.join("junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&junit).unwrap();
    let failure = doc
        .descendants()
        .find(|n| n.has_tag_name("failure"))
        .unwrap();
    assert!(failure.text().unwrap().contains("+    4 │ three"));

    // --update restores it.
    assert!(f.run(true).passed());
    assert_eq!(
        std::fs::read_to_string(f.snap("alpha.snap")).unwrap(),
        accepted
    );
    assert!(!f.snap("alpha.snap.new").exists());
}

#[test]
fn harness_warning_in_kernel_log_fails_even_when_the_snapshot_matches() {
    let mut f = Fixture::new("warning");
    f.scenario("warns", "run = [\"probe\", \"warns\"]\n");
    f.case("warns", "fine\n", "[    0.1] booting\n", PASS, 0);
    assert!(f.run(true).passed());
    f.case(
        "warns",
        "fine\n",
        "[    0.1] booting\n[    2.5] WARNING: CPU: 1 PID: 77 at mm/page_alloc.c:4000 x+0x1/0x2\n",
        PASS,
        0,
    );
    let s = f.run(false);
    let v = Fixture::verdict(&s, "warns");
    assert_eq!(
        v.reason(),
        "forbidden kernel-log line (/^(\\[[ 0-9.]+\\] )?WARNING: /): `[    2.5] WARNING: CPU: 1 PID: 77 at mm/page_alloc.c:4000 x+0x1/0x2`"
    );
    assert!(
        !f.snap("warns.snap.new").exists(),
        "the snapshot itself matched"
    );
}

#[test]
fn harness_reads_the_typed_verdict_record_before_the_line() {
    let mut f = Fixture::new("record");
    f.scenario("recorded", "script = \"recorded\"\n");
    // The line says pass; the record (what kestrel decided) says the
    // kernel did not boot: the record is what counts.
    f.case(
        "recorded",
        "",
        "",
        "kestrel: verdict=pass boot=5 total=6",
        255,
    );
    std::fs::write(
        f.root.join("cases/recorded/record"),
        r#"{"verdict":"boot-failure","boot_ms":null,"total_ms":77,"reason":"the guest triple-faulted"}"#,
    )
    .unwrap();
    let s = f.run(false);
    let r = &s.results[0];
    assert!(
        matches!(r.verdict, Verdict::BootFailure(_)),
        "{:?}",
        r.verdict
    );
    assert_eq!((r.boot_ms, r.total_ms), (None, 77));
}

#[test]
fn harness_runner_contract_arguments_and_artifacts() {
    let mut f = Fixture::new("contract");
    f.options.kernels = vec!["debian:6.12".into()];
    f.scenario(
        "scripted",
        "cpus = 2\nmemory = 256\ntimeout = 7\nappend = \"loglevel=7 foo=bar\"\nscript = \"scripted\"\nexit = 4\nsnapshot = [\"stdout\", \"stderr\"]\n",
    );
    f.case(
        "scripted",
        "out\n",
        "[    0.000000] Linux version 6.12.9-cloud-amd64 (x)\n",
        "kestrel: verdict=fail(4) boot=900 total=2000",
        4,
    );
    f.stderr("scripted", "guest complaint\nkestrel: some runner note\n");
    let s = f.run(true);
    assert!(s.passed(), "{}", s.table);
    let r = &s.results[0];
    assert_eq!(
        (r.exit_status, r.boot_ms, r.total_ms),
        (Some(4), Some(900), 2000)
    );
    let argv = std::fs::read_to_string(f.root.join("cases/scripted/argv")).unwrap();
    let console = r.artifacts.join("console.log");
    assert_eq!(
        argv.trim_end(),
        format!(
            "run --kernel debian:6.12 --cpus 2 --memory 256 --timeout 7 --console {} --verdict-file {} --append loglevel=5 loglevel=7 foo=bar -- /bin/sh -c scripted",
            console.display(),
            r.artifacts.join("kestrel-verdict.json").display()
        )
    );
    // Artifacts: the runner's lines are not guest stderr.
    assert_eq!(
        std::fs::read_to_string(r.artifacts.join("stderr")).unwrap(),
        "guest complaint\n"
    );
    assert!(std::fs::read_to_string(&console)
        .unwrap()
        .contains("Linux version"));
    assert_eq!(
        std::fs::read_to_string(r.artifacts.join("stdout")).unwrap(),
        "out\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.artifacts.join("verdict.json")).unwrap())
            .unwrap();
    assert_eq!(json["kernel"], "debian:6.12");
    assert_eq!(json["command"][2], "scripted");
    assert_eq!(json["exit_status"], 4);
    assert_eq!(json["verdict"], "pass");
    assert_eq!(json["boot_ms"], 900);
    assert_eq!(json["runner_messages"][0], "kestrel: some runner note");
    assert!(r.artifacts.starts_with(f.root.join("target/kestrel")));
    assert!(r.artifacts.ends_with("scripted/debian-6.12"));
    // The summary table and its file.
    assert!(
        s.table.contains("scripted  debian:6.12  pass"),
        "{}",
        s.table
    );
    assert_eq!(
        std::fs::read_to_string(s.run_dir.join("summary.txt")).unwrap(),
        s.table
    );
}

#[test]
fn harness_retries_hangs_only_and_reports_them_as_flaky() {
    let mut f = Fixture::new("retries");
    let hang_once = |f: &Fixture, name: &str| {
        std::fs::write(
            f.root.join("cases").join(name).join("first"),
            "kestrel: verdict=timeout boot=- total=60000\n",
        )
        .unwrap();
    };
    f.scenario("flaky", "run = [\"p\", \"flaky\"]\nsnapshot = []\n");
    f.case("flaky", "", "", PASS, 0);
    hang_once(&f, "flaky");
    f.scenario("fails", "run = [\"p\", \"fails\"]\nsnapshot = []\n");
    f.case(
        "fails",
        "",
        "",
        "kestrel: verdict=fail:3 boot=700 total=900",
        3,
    );

    // No retries (the default): the hang is the verdict.
    let s = f.run(false);
    assert_eq!(Fixture::verdict(&s, "flaky"), &Verdict::Timeout);

    // One retry: the hang is run again and passes, reported as flaky; a
    // failed check is not retried.
    hang_once(&f, "flaky");
    f.options.retries = 1;
    let s = f.run(false);
    let flaky = s.results.iter().find(|r| r.scenario == "flaky").unwrap();
    assert!(flaky.verdict.passed(), "{:?}", flaky.verdict);
    assert!(
        flaky.flaky.as_deref().unwrap().contains("timeout"),
        "{:?}",
        flaky.flaky
    );
    assert!(s.table.contains("flaky, passed on a retry"), "{}", s.table);
    let fails = s.results.iter().find(|r| r.scenario == "fails").unwrap();
    assert!(!fails.verdict.passed() && fails.flaky.is_none());
    let runs = std::fs::read_to_string(f.root.join("cases/fails/runs")).unwrap();
    assert_eq!(
        runs.lines().count(),
        2,
        "a failed check runs once per suite run"
    );
    let runs = std::fs::read_to_string(f.root.join("cases/flaky/runs")).unwrap();
    assert_eq!(runs.lines().count(), 3, "the hang ran again on the retry");
}

#[test]
fn harness_expected_failures_and_runner_verdicts() {
    let mut f = Fixture::new("verdicts");
    f.scenario("panics", "run = [\"p\", \"panics\"]\nexpect = \"panic\"\nsnapshot = [\"kernel-log\"]\nkernel_log = [\"Kernel panic\"]\n");
    f.case(
        "panics",
        "",
        "[    3.1] sysrq: Trigger a crash\n[    3.2] Kernel panic - not syncing: sysrq triggered crash\n[    3.3] Call Trace:\n",
        "kestrel: verdict=panic boot=700 total=3300",
        255,
    );
    f.scenario(
        "sleeps",
        "run = [\"p\", \"sleeps\"]\nexpect = \"timeout\"\ntimeout = 5\n",
    );
    f.case(
        "sleeps",
        "sleeping\n",
        "",
        "kestrel: verdict=timeout boot=700 total=5001",
        124,
    );
    f.scenario(
        "no_panic",
        "run = [\"p\", \"no_panic\"]\nexpect = \"panic\"\n",
    );
    f.case("no_panic", "", "", PASS, 0);
    f.scenario("unexpected_panic", "run = [\"p\", \"unexpected_panic\"]\n");
    f.case(
        "unexpected_panic",
        "",
        "",
        "kestrel: verdict=panic boot=- total=900",
        255,
    );
    f.scenario("hangs", "run = [\"p\", \"hangs\"]\n");
    f.case(
        "hangs",
        "",
        "",
        "kestrel: verdict=timeout boot=700 total=60000",
        124,
    );
    f.scenario("no_boot", "run = [\"p\", \"no_boot\"]\n");
    f.case(
        "no_boot",
        "",
        "",
        "kestrel: verdict=boot-failure boot=- total=9000",
        125,
    );
    f.scenario("vmm", "run = [\"p\", \"vmm\"]\n");
    f.case(
        "vmm",
        "",
        "",
        "kestrel: cannot open /dev/kvm: Permission denied",
        125,
    );

    let s = f.run(true);
    let kind = |n: &str| Fixture::verdict(&s, n).kind();
    assert_eq!(kind("panics"), "pass", "{}", Fixture::verdict(&s, "panics"));
    assert_eq!(kind("sleeps"), "pass");
    assert_eq!(kind("no_panic"), "fail");
    assert_eq!(
        Fixture::verdict(&s, "no_panic").reason(),
        "expected a panic, but the command exited with status 0"
    );
    assert_eq!(kind("unexpected_panic"), "panic");
    assert_eq!(kind("hangs"), "timeout");
    assert_eq!(kind("no_boot"), "boot-failure");
    assert_eq!(kind("vmm"), "vmm-error");
    let vmm = Fixture::verdict(&s, "vmm").reason();
    assert!(
        vmm.contains("kestrel: cannot open /dev/kvm: Permission denied"),
        "{vmm}"
    );
    assert!(
        vmm.contains("exited with status 125 without a verdict line"),
        "{vmm}"
    );
    // The panic's kernel-log lines were snapshotted (redacted).
    let snap = std::fs::read_to_string(f.snap("panics.snap")).unwrap();
    assert!(
        snap.ends_with(
            "== kernel-log ==\n[TIME] Kernel panic - not syncing: sysrq triggered crash\n"
        ),
        "{snap}"
    );
    // JUnit: failures vs errors.
    let junit = std::fs::read_to_string(s.run_dir.join("junit.xml")).unwrap();
    let doc = roxmltree::Document::parse(&junit).unwrap();
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(suite.attribute("tests"), Some("7"));
    assert_eq!(suite.attribute("failures"), Some("3"));
    assert_eq!(suite.attribute("errors"), Some("2"));
}

#[test]
fn harness_ktap_scenario_names_failures_and_snapshots_the_tree() {
    let mut f = Fixture::new("ktap");
    f.scenario("kt", "run = [\"p\", \"kt\"]\nktap = true\nexit = 1\n");
    let ktap = "KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: suite\n  1..2\n  ok 1 good\n    KTAP version 1\n    # Subtest: deep\n    1..2\n    ok 1 fine # SKIP not here\n    not ok 2 broken\n  not ok 2 deep\nnot ok 1 suite\n";
    f.case("kt", ktap, "", "kestrel: verdict=fail(1) boot=1 total=2", 1);
    let s = f.run(true);
    let v = Fixture::verdict(&s, "kt");
    assert_eq!(v.reason(), "KTAP failures: suite.deep.broken");
    let snap = std::fs::read_to_string(f.snap("kt.snap")).unwrap();
    assert!(
        snap.contains("== stdout (ktap) ==\nFAIL  suite\nok      good\nFAIL    deep\nskip      fine # SKIP not here\nFAIL      broken\n"),
        "{snap}"
    );
}

#[test]
fn harness_per_kernel_snapshot_is_preferred() {
    let mut f = Fixture::new("perkernel");
    f.options.kernels = vec!["debian:6.1".into(), "debian:6.12".into()];
    f.scenario("abi", "run = [\"p\", \"abi\"]\n");
    f.case("abi", "landlock abi 2\n", "", PASS, 0);
    let first = f.run(true);
    assert!(first.passed(), "{}", first.table);
    let generic = std::fs::read_to_string(f.snap("abi.snap")).unwrap();
    std::fs::write(f.snap("abi@6.12.snap"), generic.replace("abi 2", "abi 6")).unwrap();
    let s = f.run(false);
    let by_kernel = |k: &str| {
        s.results
            .iter()
            .find(|r| r.kernel == k)
            .unwrap()
            .verdict
            .clone()
    };
    assert!(by_kernel("debian:6.1").passed());
    let v = by_kernel("debian:6.12");
    assert!(
        v.reason().contains("abi@6.12.snap differs at line 2"),
        "{}",
        v.reason()
    );
    assert!(f.snap("abi@6.12.snap.new").is_file());
    assert!(!f.snap("abi.snap.new").exists());
}

#[test]
fn harness_probes_build_on_the_host_and_expand() {
    let mut f = Fixture::new("probes");
    let probes = f.root.join("scenarios/probes");
    std::fs::create_dir_all(&probes).unwrap();
    std::fs::write(
        probes.join("hello.c"),
        "#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n",
    )
    .unwrap();
    std::fs::write(probes.join("broken.c"), "int main(void) { return }\n").unwrap();
    f.scenario("uses_probe", "probes = [\"hello.c\"]\nrun = [\"${KESTREL_PROBES}/hello\", \"uses_probe\"]\nsnapshot = []\n");
    f.scenario(
        "bad_probe",
        "probes = [\"broken.c\"]\nrun = [\"p\", \"bad_probe\"]\nsnapshot = []\n",
    );
    f.case("uses_probe", "", "", PASS, 0);
    let s = f.run(false);
    assert!(Fixture::verdict(&s, "uses_probe").passed(), "{}", s.table);
    let built = f.root.join("target/kestrel/probes/hello");
    let out = std::process::Command::new(&built).output().unwrap();
    assert_eq!(out.stdout, b"hi\n");
    let argv = std::fs::read_to_string(f.root.join("cases/uses_probe/argv")).unwrap();
    assert!(
        argv.contains(&format!("-- {} uses_probe", built.display())),
        "{argv}"
    );
    // The probes directory is asked for at its own path, so a guest whose
    // /tmp is a fresh tmpfs still sees it.
    let dir = built.parent().unwrap().display().to_string();
    assert!(argv.contains(&format!("--share {dir}:{dir} ")), "{argv}");
    let bad = Fixture::verdict(&s, "bad_probe").reason();
    assert!(bad.starts_with("probe build failed: "), "{bad}");
}

#[test]
fn harness_unusable_runner_and_bad_files_are_one_sentence() {
    let mut f = Fixture::new("errors");
    f.scenario("any", "run = [\"p\", \"any\"]\nsnapshot = []\n");
    f.backend = KestrelBinary::new(Path::new("/nonexistent/kestrel").to_owned());
    let s = f.run(false);
    let v = Fixture::verdict(&s, "any");
    assert_eq!(v.kind(), "vmm-error");
    assert!(
        v.reason()
            .starts_with("cannot start /nonexistent/kestrel: "),
        "{}",
        v.reason()
    );

    f.scenario("broken", "run = [\"p\"]\nscript = \"x\"\n");
    f.options.run_id = Some("errors-bad".into());
    let e = run_suite(&f.options, &f.backend).unwrap_err().to_string();
    assert!(
        e.ends_with("broken.toml:2: both `run` and `script` are set: keep one"),
        "{e}"
    );
    assert!(!e.contains('\n'));
}

#[test]
fn harness_watchdog_kills_a_runner_that_outlives_its_timeout() {
    let mut f = Fixture::new("watchdog");
    f.scenario(
        "hung",
        "run = [\"p\", \"hung\"]\ntimeout = 1\nsnapshot = []\n",
    );
    f.case("hung", "partial\n", "", PASS, 0);
    std::fs::write(f.root.join("cases/hung/sleep"), "30").unwrap();
    f.backend.grace = std::time::Duration::ZERO;
    let start = std::time::Instant::now();
    let s = f.run(false);
    assert!(start.elapsed().as_secs() < 15, "killed, not waited out");
    let v = Fixture::verdict(&s, "hung");
    assert_eq!(v.kind(), "vmm-error");
    assert!(
        v.reason().contains("kestrel did not exit within 1 s"),
        "{}",
        v.reason()
    );
}

#[test]
fn harness_filters_select_cases() {
    let mut f = Fixture::new("filters");
    f.scenario("one", "run = [\"p\", \"one\"]\nsnapshot = []\n");
    f.scenario(
        "two",
        "run = [\"p\", \"two\"]\nsnapshot = []\nkernels = [\"debian:7.*\"]\n",
    );
    f.case("one", "", "", PASS, 0);
    f.case("two", "", "", PASS, 0);
    f.options.kernels = vec!["debian:6.1".into(), "debian:7.2".into()];
    let s = f.run(false);
    let names: Vec<_> = s.results.iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        ["one@debian:6.1", "one@debian:7.2", "two@debian:7.2"]
    );
    f.options.filters = vec!["two".into()];
    let s = f.run(false);
    assert_eq!(s.results.len(), 1);
    f.options.filters = vec!["nothing".into()];
    assert!(run_suite(&f.options, &f.backend).is_err());
}

#[test]
fn starter_scenarios_parse_and_their_probes_build_and_run_on_the_host() {
    // Not a boot: the probes run on the host here, to catch build errors and
    // to check that ktap_demo's output is KTAP the parser accepts.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scenarios = kestrel_scenarios::scenario::load_dir(dir).unwrap();
    assert!(
        scenarios.len() >= 12,
        "{} starter scenarios",
        scenarios.len()
    );
    let out_dir = std::env::temp_dir().join(format!("kestrel-probes-{}", std::process::id()));
    let probes =
        kestrel_scenarios::suite::Probes::new(dir.join("probes"), out_dir.clone(), "cc".into());
    for s in &scenarios {
        for p in &s.probes {
            probes.ensure(p).unwrap();
        }
    }
    let ktap = std::process::Command::new(out_dir.join("ktap_demo"))
        .output()
        .unwrap();
    assert!(ktap.status.success());
    let report = kestrel_scenarios::ktap::parse(&String::from_utf8(ktap.stdout).unwrap());
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.totals().skipped, 1);
    assert_eq!(
        report.tests[1].children[2].children.len(),
        2,
        "two levels of nesting"
    );
    let sys = std::process::Command::new(out_dir.join("syscalls"))
        .output()
        .unwrap();
    let text = String::from_utf8(sys.stdout).unwrap();
    let names: Vec<&str> = text.lines().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(
        names,
        [
            "statx",
            "openat2",
            "pidfd_open",
            "clone3",
            "io_uring_setup",
            "landlock_create_ruleset"
        ]
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

//! `cargo xtask ci`: what CI runs, in tiers, cheapest first.
//!
//! 1. static checks: `cargo fmt --check`, `cargo clippy -D warnings`;
//! 2. kernels fetched into the cache (served from it on the next run);
//! 3. unit tests (`cargo test --workspace`), with the real 6.1 modules
//!    tree for the module-resolution test; every fuzz target for 30 s
//!    (`cargo xtask fuzz`);
//! 4. guest boots under QEMU TCG (no KVM needed): 6.1 and 7.2;
//! 5. the nested rig: `/dev/kvm` and the exit status through the rig, a
//!    stalled (idle) L1 ended by the idle watchdog, then
//!    the real-KVM tier in four L1 boots (each retried on a rig failure;
//!    in each, a test binary's failed tests run once more alone, and one
//!    that passes then is reported flaky, see [`RUN_TESTS`]):
//!    QEMU-KVM boots L2 guests there and the runner's real-kernel test
//!    binaries (built here, in release mode) boot every Debian series
//!    under kestrel; the host root over virtio-fs; the ABI matrix (every
//!    scenario on the four Debian series, which includes the 6.1 suite
//!    `xtask test` runs), as `xtask matrix` runs it by default: each cell
//!    restored from a VM snapshot (`--warm`), then, in an L1 of its own,
//!    the 6.1 suite with every case booted (`--cold`): both check every
//!    case against the same stored snapshot, so warm and cold runs must
//!    give identical outputs and verdicts;
//!    Meanwhile `kestrel kselftest` and `kestrel kunit` build two selftest
//!    targets and a KUnit kernel from Debian's 6.1 source on the host
//!    (`--build-only`, one make job, on the core the rig leaves idle);
//!    their rig test then runs them with `--no-build` in an L1 of its own,
//!    boots the KUnit kernel (built with debug info) once more for a
//!    forbidden trace that must carry file:line (splat_trace), and runs
//!    `kestrel bisect` over four Debian kernels (list mode).
//! 6. the bisect fixture: a git tree made from Debian's 6.1 source (kept
//!    with its build directory between runs: ~3 min then, ~20 min the first
//!    time), built here; `cargo xtask bisect` must name its regressing
//!    commit (boots in the rig).
//!
//! Every step prints its wall time; the summary at the end repeats them.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::rig::{self, RigArgs, RigExit};

use crate::selftest::{self, AccelArg, SelftestArgs};
use crate::{guest, paths, tools};

/// Runs every tier; the first failing tier stops the run.
pub fn run() -> Result<()> {
    let total = Instant::now();
    let mut times: Vec<(String, f64)> = Vec::new();
    let mut timed = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        tools::step(format!("ci: {name}"));
        let start = Instant::now();
        let result = f();
        let secs = start.elapsed().as_secs_f64();
        times.push((name.to_string(), secs));
        tools::step(format!(
            "ci: {name}: {} in {secs:.1} s",
            if result.is_ok() { "ok" } else { "FAILED" }
        ));
        result.with_context(|| format!("ci step `{name}` failed"))
    };

    timed("cargo fmt --check", &mut || {
        cargo(&["fmt", "--all", "--", "--check"])
    })?;
    timed("cargo clippy", &mut || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    let mut modules_dir = None;
    timed("kernels (debian:5.10, 6.1, 6.12, 7.2)", &mut || {
        for spec in ["debian:5.10", "debian:6.12", "debian:7.2"] {
            guest::kernel(spec)?;
        }
        modules_dir = guest::kernel("debian:6.1")?.modules_dir;
        Ok(())
    })?;
    timed("unit tests", &mut || {
        let mut cmd = cargo_cmd(&["test", "--workspace", "--quiet"]);
        if let Some(dir) = &modules_dir {
            cmd.env("KESTREL_TEST_MODULES_DIR", dir);
        }
        tools::run(&mut cmd)
    })?;
    timed("fuzz (30 s per target)", &mut || {
        crate::fuzz::run(&crate::fuzz::FuzzArgs {
            time: 30,
            target: Vec::new(),
        })
    })?;
    timed("guest boots under QEMU TCG (6.1, 7.2)", &mut || {
        let failed = selftest::run(&SelftestArgs {
            accel: AccelArg::Tcg,
            kernel: vec!["debian:6.1".into(), "debian:7.2".into()],
        })?;
        if failed > 0 {
            bail!("{failed} guest check(s) failed");
        }
        Ok(())
    })?;
    timed(
        "rig: /dev/kvm in L1, the exit status, a stalled L1 ended",
        &mut || {
            let code = in_rig(&["sh", "-c", "test -c /dev/kvm && exit 7"])?;
            if code != 7 {
                bail!("`rig -- sh -c 'test -c /dev/kvm && exit 7'` exited {code}, expected 7");
            }
            stalled_l1_is_ended()
        },
    )?;
    // The real-KVM tier, in four L1 boots: a rig failure (ARCHITECTURE.md,
    // "The nested rig")
    // then costs one part again, not the whole tier.
    crate::test::ensure_guest_tools()?;
    let k61 = guest::kernel("debian:6.1")?;
    let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
    let xtask = shell_quote(&xtask.to_string_lossy());
    let bins = rig_test_binaries()?;
    let kestrel_bin = guest::build_kestrel()?;
    // The KUnit kernel (built with debug info, small.kunitconfig) also
    // serves splat_trace's file:line check as `build:DIR`.
    let kunit_out = paths::kestrel_dir().join("ci-kunit-6.1");
    let test_bin_env = |name: &str, env: &str| -> Result<String> {
        let bin = bins
            .iter()
            .find(|(t, _)| *t == name)
            .with_context(|| format!("no rig test binary {name}"))?;
        let label = if env.is_empty() {
            name.to_string()
        } else {
            format!("{name} ({})", env.trim())
        };
        Ok(format!(
            "{RUN_TESTS} {} env {env}KESTREL_REAL_KVM_TESTS=1 KESTREL_TEST_KERNEL={} KESTREL_BIN={} {}\n",
            shell_quote(&label),
            shell_quote(&k61.image.to_string_lossy()),
            shell_quote(&kestrel_bin.to_string_lossy()),
            shell_quote(&bin.1.to_string_lossy())
        ))
    };
    let test_bin = |name: &str| test_bin_env(name, "");
    // `kestrel kselftest` and `kestrel kunit` build on the host (the
    // emulated L1 would take an hour), one make job at a time, while the
    // rig parts below run: the rig's one-vCPU L1 keeps about one host core
    // busy, so the other host core is mostly idle there. Their rig test
    // runs with --no-build after the matrix.
    let source_61 = {
        let cache = kestrel_kernels::Cache::from_env()?;
        kestrel_kernels::source::fetch(&cache, kestrel_kernels::Series::parse("6.1")?)?.dir
    };
    let builds_log = paths::kestrel_dir().join("ci-dev-tool-builds.log");
    let mut builds = Some({
        let (kestrel, src, log, out) = (
            kestrel_bin.clone(),
            source_61.clone(),
            builds_log.clone(),
            kunit_out.clone(),
        );
        tools::step(format!(
            "ci: kselftest targets and a KUnit kernel build in the background (log: {})",
            log.display()
        ));
        std::thread::spawn(move || {
            let start = Instant::now();
            dev_tool_builds(&kestrel, &src, &out, &log).map(|()| start.elapsed().as_secs_f64())
        })
    });
    let parts = [
        (
            "rig: QEMU-KVM guests, the runner on every Debian series, virtio-console, a terminal, gdb, a forbidden trace",
            format!(
                "{xtask} selftest --accel kvm --kernel debian:6.1 || rc=1\n{}{}{}{}{}",
                test_bin("real_kernel")?,
                test_bin("virtio_console")?,
                test_bin("terminal")?,
                test_bin("gdb")?,
                test_bin("splat_trace")?
            ),
        ),
        (
            "rig: the host's root over virtio-fs, faults survived, own scenario directories",
            format!(
                "{}{}{}",
                test_bin("host_root")?,
                test_bin("faults")?,
                test_bin("own_scenarios")?
            ),
        ),
        // As `cargo xtask matrix` runs it (warm, one cell at a time in
        // the rig's one-vCPU L1). A boot failure is retried once.
        (
            "rig: the ABI matrix (every scenario × Debian 5.10, 6.1, 6.12, 7.2, warm: cells restored from snapshots)",
            format!("echo '==> matrix (warm)'; {xtask} matrix --here --warm --retries 1 || rc=1\n"),
        ),
        // The 6.1 suite booted cold, against the same stored snapshots as
        // the matrix's restored cells: warm and cold must agree. In an L1
        // of its own, so a rig failure retries only its own step.
        (
            "rig: `xtask test --cold` (every 6.1 case booted)",
            format!("echo '==> test --cold'; {xtask} test --here --cold --retries 1 || rc=1\n"),
        ),
    ];
    for (name, body) in parts {
        let attempts = if name.contains("warm") { 5 } else { 3 };
        timed(name, &mut || {
            let script = rig_script(&body);
            let code = in_rig_attempts(&["sh", "-c", &script], attempts)?;
            if code != 0 {
                bail!("tests failed in the rig (exit {code}): see above");
            }
            Ok(())
        })?;
    }

    let kunit_out_arg = shell_quote(&kunit_out.to_string_lossy());
    let dev_tools = format!(
        "{}{}{}",
        test_bin_env("dev_tools", &format!("KESTREL_KUNIT_OUT={kunit_out_arg} "))?,
        test_bin_env(
            "splat_trace",
            &format!("KESTREL_KERNEL=build:{kunit_out_arg} KESTREL_EXPECT_DEBUG_INFO=1 ")
        )?,
        test_bin("bisect")?
    );
    timed(
        "rig: kestrel kselftest, kestrel kunit (built on the host meanwhile), file:line in a trace, kestrel bisect",
        &mut || {
            let took = builds
                .take()
                .context("the background builds were already joined")?
                .join()
                .map_err(|_| anyhow::anyhow!("the background build thread panicked"))?
                .with_context(|| {
                    format!(
                        "the kselftest/KUnit builds failed (log: {})",
                        builds_log.display()
                    )
                })?;
            tools::step(format!("ci: the background builds took {took:.1} s"));
            let script = rig_script(&dev_tools);
            let code = in_rig(&["sh", "-c", &script])?;
            if code != 0 {
                bail!("tests failed in the rig (exit {code}): see above");
            }
            Ok(())
        },
    )?;

    timed(
        "bisect fixture (Debian 6.1 git tree, builds here, boots in the rig)",
        &mut || crate::bisect::fixture::run(false),
    )?;

    eprintln!();
    for (name, secs) in &times {
        eprintln!("{secs:8.1} s  {name}");
    }
    eprintln!("{:8.1} s  total", total.elapsed().as_secs_f64());
    Ok(())
}

/// What runner/tests/dev_tools.rs boots, built with the same commands a
/// developer runs (`--build-only`, one make job): two selftest targets,
/// the timers target, and the small KUnit configuration from Debian's 6.1
/// source `src` (into `kunit_out`, with debug info: splat_trace boots it
/// too); their output goes to `log`.
fn dev_tool_builds(
    kestrel: &std::path::Path,
    src: &std::path::Path,
    kunit_out: &std::path::Path,
    log: &std::path::Path,
) -> Result<()> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
    let kunitconfig = paths::workspace().join("runner/tests/data/small.kunitconfig");
    let selftests = |targets: &str| {
        let mut cmd = Command::new(kestrel);
        cmd.args(["kselftest", "--build-only", "--jobs", "1", "--targets"])
            .arg(targets)
            .arg("--src")
            .arg(src);
        cmd
    };
    let mut kunit = Command::new(kestrel);
    kunit
        .args(["kunit", "--build-only", "--jobs", "1", "--src"])
        .arg(src)
        .arg("--kunitconfig")
        .arg(kunitconfig)
        .arg("--out")
        .arg(kunit_out);
    for mut cmd in [selftests("size,membarrier"), selftests("timers"), kunit] {
        let status = cmd
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out.try_clone()?)
            .status()
            .with_context(|| format!("could not run {}", tools::describe(&cmd)))?;
        if !status.success() {
            bail!("{} failed ({status})", tools::describe(&cmd));
        }
    }
    Ok(())
}

/// The shell function a rig step's script runs each test binary with
/// (`RUN_TESTS LABEL COMMAND...`; the command is the binary, maybe behind
/// `env`): libtest, one test at a time. When it fails, the tests its
/// summary names (at most [`MAX_RETRIED`]) run once more, each alone: a
/// test that passes then is reported as flaky (`==> FLAKY: …` at once and
/// in the step's last line) and does not fail the step; one that fails
/// again, more failures than that, or a binary that failed without naming
/// a test, set `rc=1`. The rig loses a guest now and then (runner/NOTES.md,
/// "When the guest triple-faults"); a real failure fails twice.
const RUN_TESTS: &str = "run_tests";

/// At most this many failed tests of one binary are run again.
const MAX_RETRIED: usize = 2;

/// `body` (lines using [`RUN_TESTS`] and setting `rc`) as a whole script
/// that exits `rc` and lists the flaky tests last.
fn rig_script(body: &str) -> String {
    format!(
        r#"rc=0
flaky=''
{RUN_TESTS}() {{
  label=$1; shift
  echo "==> $label"
  log=$(mktemp)
  {{ "$@" --test-threads 1 2>&1; echo $? > "$log.rc"; }} | tee "$log"
  if [ "$(cat "$log.rc")" != 0 ]; then
    failed=$(awk '/^failures:$/ {{ n = 1; c = 0; next }} n && /^    [^ ]+$/ {{ f[c++] = $1; next }} n && /^$/ {{ n = 0 }} END {{ for (i = 0; i < c; i++) print f[i] }}' "$log")
    count=$(printf '%s
' "$failed" | grep -c .)
    if [ "$count" -eq 0 ] || [ "$count" -gt {MAX_RETRIED} ]; then
      rc=1
    else
      for t in $failed; do
        echo "==> $label: $t failed; running it once more, alone"
        if "$@" --exact "$t" --test-threads 1; then
          echo "==> FLAKY: $label: $t failed, then passed on its retry"
          flaky="$flaky $label:$t"
        else
          rc=1
        fi
      done
    fi
  fi
  rm -f "$log" "$log.rc"
}}
{body}if [ -n "$flaky" ]; then echo "==> flaky (failed once, passed on a retry):$flaky"; fi
exit $rc
"#
    )
}

/// The rig's idle watchdog, on a real L1: a command that only sleeps
/// leaves L1's QEMU idle, which the rig must end as a stalled L1 long
/// before the silence limit and the command's end, keeping L1's log with
/// QEMU's monitor's view of its CPUs. Another kind of rig
/// failure (an L1 panic) gets one more L1, as every rig step does.
fn stalled_l1_is_ended() -> Result<()> {
    let mut args = RigArgs::for_cmd(vec!["sleep".into(), "900".into()], 600);
    args.timeout = 900;
    args.idle = 10;
    let mut ended = rig::run(&args)?;
    if matches!(ended, RigExit::RigFailure(f) if f != rig::Failure::Idle) {
        tools::step("rig: L1 failed otherwise (not idle); one more L1");
        ended = rig::run(&args)?;
    }
    if ended != RigExit::RigFailure(rig::Failure::Idle) {
        bail!(
            "`rig --idle 10 -- sleep 900` ended as {ended:?}, expected the idle watchdog's rig failure (a stalled L1)"
        );
    }
    // The L1 log it kept ends with QEMU's monitor on L1's CPUs.
    let log = rig::newest_l1_log().context("the stalled L1's log was not kept")?;
    let text = std::fs::read_to_string(&log)
        .with_context(|| format!("could not read {}", log.display()))?;
    let inspection = text
        .split_once(rig::INSPECTION_HEADER)
        .map(|(_, after)| after)
        .with_context(|| format!("{} has no inspection of L1's CPUs", log.display()))?;
    if !inspection.contains("RIP=") || !inspection.contains("dumping local APIC") {
        bail!(
            "{}: the inspection of L1's CPUs lacks their registers or APICs:\n{inspection}",
            log.display()
        );
    }
    Ok(())
}

/// Runs CMD in the rig and returns its exit code. A rig failure (L1 died,
/// froze or soft-locked: ARCHITECTURE.md, "The nested rig") is retried
/// twice (four times for the warm sample: warm load crashes L1's kernel
/// most often, three L1s in a row in one session-10 run); it is never
/// taken as CMD's verdict. The silence limit is long
/// because some tests print nothing for minutes (the `find /usr` walk
/// through two virtio-fs hops takes ~6 min).
fn in_rig(cmd: &[&str]) -> Result<i32> {
    in_rig_attempts(cmd, 3)
}

fn in_rig_attempts(cmd: &[&str], attempts: u32) -> Result<i32> {
    let mut args = RigArgs::for_cmd(cmd.iter().map(|s| s.to_string()).collect(), 900);
    args.timeout = 1500;
    rig::run_retrying(&args, attempts, &|| false)
}

/// Integration tests that need hardware-speed KVM: (package, test target).
/// They run inside the rig with `KESTREL_REAL_KVM_TESTS=1`, where a missing
/// prerequisite is a failure, not a skip.
const RIG_TESTS: &[(&str, &str)] = &[
    ("kestrel", "real_kernel"),
    ("kestrel", "virtio_console"),
    ("kestrel", "host_root"),
    ("kestrel", "faults"),
    ("kestrel", "own_scenarios"),
    ("kestrel", "dev_tools"),
    ("kestrel", "bisect"),
    ("kestrel", "terminal"),
    ("kestrel", "gdb"),
    ("kestrel-scenarios", "splat_trace"),
];

/// Builds the rig tests (release) and returns (test name, executable).
pub fn rig_test_binaries() -> Result<Vec<(&'static str, std::path::PathBuf)>> {
    let mut cmd = cargo_cmd(&[
        "test",
        "--release",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for (package, test) in RIG_TESTS {
        cmd.args(["--package", package, "--test", test]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not run cargo")?;
    if !out.status.success() {
        bail!("building the rig tests failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let is_test = msg["profile"]["test"].as_bool().unwrap_or(false);
        if let (true, Some(exe)) = (is_test, msg["executable"].as_str()) {
            if let Some((_, test)) = RIG_TESTS.iter().find(|(_, t)| *t == name) {
                bins.push((*test, std::path::PathBuf::from(exe)));
            }
        }
    }
    if bins.len() != RIG_TESTS.len() {
        bail!(
            "expected {} rig test binaries from cargo, found {}",
            RIG_TESTS.len(),
            bins.len()
        );
    }
    Ok(bins)
}

/// Quotes a word for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn cargo_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(paths::workspace()).args(args);
    cmd
}

fn cargo(args: &[&str]) -> Result<()> {
    tools::run(&mut cargo_cmd(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` as a rig step's script does, here; (exit code, output).
    fn run_script(body: &str) -> (i32, String) {
        let out = Command::new("sh")
            .args(["-c", &rig_script(body)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap(), text)
    }

    /// A stand-in for a libtest binary: tests `a`, `b` and `c`; the ones
    /// named in `$FAIL` fail, those in `$FLAKY` fail only while their
    /// mark file in `$STATE` is missing (their first run makes it);
    /// `--exact NAME` runs one test.
    const FAKE_TESTS: &str = r#"only=''
while [ $# -gt 0 ]; do case $1 in --exact) only=$2; shift;; esac; shift; done
failed=''
for t in a b c; do
  [ -n "$only" ] && [ "$only" != "$t" ] && continue
  bad=0
  case " $FAIL " in *" $t "*) bad=1;; esac
  case " $FLAKY " in *" $t "*) [ -e "$STATE/$t" ] || { touch "$STATE/$t"; bad=1; };; esac
  if [ $bad = 1 ]; then echo "test $t ... FAILED"; failed="$failed $t"; else echo "test $t ... ok"; fi
done
if [ -n "$failed" ]; then
  echo; echo 'failures:'; echo; for t in $failed; do echo "---- $t stdout ----"; echo 'boom'; done
  echo; echo 'failures:'; for t in $failed; do echo "    $t"; done; echo
  echo 'test result: FAILED. 1 passed; 1 failed'; exit 101
fi
echo 'test result: ok.'
"#;

    fn fake_run(fail: &str, flaky: &str) -> (i32, String) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tests");
        std::fs::write(&bin, FAKE_TESTS).unwrap();
        let body = format!(
            "{RUN_TESTS} fake env FAIL='{fail}' FLAKY='{flaky}' STATE={} sh {}\n",
            shell_quote(&dir.path().to_string_lossy()),
            shell_quote(&bin.to_string_lossy())
        );
        run_script(&body)
    }

    #[test]
    fn a_test_that_passes_alone_on_its_retry_is_flaky_not_failed() {
        let (code, out) = fake_run("", "b");
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("==> fake: b failed; running it once more, alone"),
            "{out}"
        );
        assert!(
            out.contains("==> FLAKY: fake: b failed, then passed on its retry"),
            "{out}"
        );
        assert!(
            out.ends_with("==> flaky (failed once, passed on a retry): fake:b\n"),
            "{out}"
        );
        // Only the failed test ran again.
        assert_eq!(out.matches("test a ... ok").count(), 1, "{out}");
    }

    #[test]
    fn a_test_that_fails_twice_fails_the_step() {
        let (code, out) = fake_run("c", "a");
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("FLAKY: fake: a failed"), "{out}");
        assert!(!out.contains("FLAKY: fake: c"), "{out}");
        assert_eq!(out.matches("test c ... FAILED").count(), 2, "{out}");
    }

    #[test]
    fn many_failures_or_a_binary_that_names_none_are_not_retried() {
        let (code, out) = fake_run("a b c", "");
        assert_eq!(code, 1, "{out}");
        assert!(!out.contains("running it once more"), "{out}");
        let (code, out) = run_script(&format!("{RUN_TESTS} crash sh -c 'echo oops; exit 3'\n"));
        assert_eq!(code, 1, "{out}");
        assert!(!out.contains("running it once more"), "{out}");
        // Passing binaries leave rc alone and report nothing.
        let (code, out) = fake_run("", "");
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("flaky"), "{out}");
    }
}

//! A kernel developer's own scenario directories (issue 14 item 2), booted
//! for real: two directories outside the workspace, under `/tmp` (a tmpfs
//! in the guest, so kestrel must share the scenario's directory), one
//! scenario naming a script and a data file beside it, one with its own
//! C probe. Each directory gets its own `snapshots/`; the workspace's
//! `scenarios/snapshots` is never touched.
//!
//! Needs hardware-speed KVM (the nested rig in CI): see `common`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kestrel_scenarios::{run_suite, FailReason, KestrelBinary, SuiteOptions, Verdict};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Two directories of scenarios in a fresh directory under `/tmp`.
fn own_dirs(root: &Path) -> (PathBuf, PathBuf) {
    let mine = root.join("mine");
    let more = root.join("more");
    write(
        &mine.join("greet.toml"),
        "description = \"a script and a data file beside the scenario\"\n\
         run = [\"./greet.sh\", \"data/name.txt\"]\n",
    );
    write(
        &mine.join("greet.sh"),
        "#!/bin/sh\necho \"hello, $(cat \"$1\")\"\necho \"cwd=$(pwd)\"\n",
    );
    std::fs::set_permissions(
        mine.join("greet.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write(&mine.join("data/name.txt"), "own tree\n");
    write(
        &mine.join("probed.toml"),
        "probes = [\"answer.c\"]\nrun = [\"${KESTREL_PROBES}/answer\"]\n",
    );
    write(
        &mine.join("probes/answer.c"),
        "#include <stdio.h>\nint main(void) { printf(\"answer %d\\n\", 6 * 7); return 0; }\n",
    );
    write(
        &more.join("other.toml"),
        "script = \"echo from the second directory\"\n",
    );
    (mine, more)
}

#[test]
fn own_scenario_directories_keep_their_snapshots_and_run_in_place() {
    if common::prerequisites("6.1").is_none() {
        return;
    }
    // Under /tmp: a tmpfs in the guest, so the scenario directories are
    // seen only because kestrel shares its working directory.
    let root = std::env::temp_dir().join(format!("kestrel-own-scenarios-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let (mine, more) = own_dirs(&root);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let builtin_snaps = workspace.join("scenarios/snapshots");
    let builtin_before = std::fs::read_dir(&builtin_snaps).map_or(0, |d| d.count());

    let mut options = SuiteOptions::new(workspace);
    options.scenario_dirs = vec![mine.clone(), more.clone()];
    options.artifacts_root = root.join("artifacts");
    options.kernels = vec!["debian:6.1".to_owned()];
    options.jobs = 2;
    options.progress = false;
    // The suite's own retry of a guest that hung or crashed (printed as
    // `[retry]`): this test is about directories, not boot reliability,
    // which `cargo xtask stress` measures (RELIABILITY.md).
    options.retries = 1;
    let backend = KestrelBinary::new(PathBuf::from(common::KESTREL));

    // First run: nothing accepted yet; each new text lands beside its own
    // scenario as `.snap.new`.
    let first = run_suite(&options, &backend).expect("the suite runs");
    assert_eq!(first.results.len(), 3, "{}", first.table);
    for r in &first.results {
        let Verdict::Fail(reasons) = &r.verdict else {
            panic!("{} passed without a snapshot: {}", r.scenario, first.table);
        };
        assert!(
            reasons
                .iter()
                .any(|f| matches!(f, FailReason::NoSnapshot { .. })),
            "{}: {reasons:?}",
            r.scenario
        );
    }
    assert!(mine.join("snapshots/greet.snap.new").is_file());
    assert!(mine.join("snapshots/probed.snap.new").is_file());
    assert!(more.join("snapshots/other.snap.new").is_file());

    // Accept, then check again from scratch.
    options.update = true;
    let accepted = run_suite(&options, &backend).expect("the suite runs");
    assert!(accepted.passed(), "{}", accepted.table);
    options.update = false;
    let again = run_suite(&options, &backend).expect("the suite runs");
    assert!(again.passed(), "{}", again.table);

    let greet = std::fs::read_to_string(mine.join("snapshots/greet.snap")).unwrap();
    assert!(greet.contains("hello, own tree"), "{greet}");
    assert!(
        greet.contains(&format!("cwd={}", mine.display())),
        "the command runs in its scenario's directory: {greet}"
    );
    let probed = std::fs::read_to_string(mine.join("snapshots/probed.snap")).unwrap();
    assert!(probed.contains("answer 42"), "{probed}");
    let other = std::fs::read_to_string(more.join("snapshots/other.snap")).unwrap();
    assert!(other.contains("from the second directory"), "{other}");
    assert!(!mine.join("snapshots/greet.snap.new").exists());

    // Nothing went to the workspace's own snapshots.
    for name in ["greet", "probed", "other"] {
        assert!(!builtin_snaps.join(format!("{name}.snap")).exists());
        assert!(!builtin_snaps.join(format!("{name}.snap.new")).exists());
    }
    assert_eq!(
        std::fs::read_dir(&builtin_snaps).map_or(0, |d| d.count()),
        builtin_before
    );
    let _ = std::fs::remove_dir_all(&root);
}

//! `kestrel bisect` end to end (issue 14 item 1), list mode: a scenario of
//! the user's own directory whose output changes between Debian's 6.1 and
//! 6.12 kernels, bisected over 5.10, 6.1, 6.12 and 7.2 by the installed
//! binary. Git mode runs the same engine (`kestrel_scenarios::bisect`) in
//! `cargo xtask bisect-fixture`, which builds ten commits of a 6.1 tree.
//!
//! Needs hardware-speed KVM (the nested rig in CI) and the four Debian
//! kernels cached: see `common`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use kestrel_scenarios::bisect::{Outcome, Ran, State, StepKind};

#[test]
fn bisect_names_the_first_kernel_where_the_output_changed() {
    let Some(_) = common::prerequisites("6.1") else {
        return;
    };
    for series in ["5.10", "6.12", "7.2"] {
        if common::require(common::cached(series)).is_none() {
            return;
        }
    }
    let dir = common::scratch("bisect");
    std::fs::write(
        dir.join("since.toml"),
        "description = \"what this kernel's series says\"\n\
         script = \"case $(uname -r) in 5.10.*|6.1.*) echo old ;; *) echo new ;; esac\"\n",
    )
    .unwrap();
    let run = common::Run::of(
        Command::new(common::KESTREL)
            .current_dir(&dir)
            .args(["bisect", "--scenarios", ".", "--scenario", "since"])
            .args(["--kernels", "debian:5.10,debian:6.1,debian:6.12,debian:7.2"]),
    );
    // The first kernel whose output changed, and the change.
    run.expect(0, "kestrel bisect over four Debian kernels")
        .expect_lines(&["first failing kernel: debian:6.12", "- old", "+ new"]);

    // The typed step log: the endpoints, then the two kernels between.
    let log = run
        .stdout
        .lines()
        .find_map(|l| l.split_once("; log: ").map(|(_, p)| PathBuf::from(p)))
        .unwrap_or_else(|| panic!("no log path in:\n{}", run.stdout));
    let state = State {
        dir: log.parent().unwrap().to_path_buf(),
    };
    let steps: Vec<_> = state
        .read_steps()
        .into_iter()
        .map(|s| (s.kind, s.revision, s.outcome, s.verdict))
        .collect();
    let step =
        |kind, series: &str, outcome, verdict| (kind, format!("debian:{series}"), outcome, verdict);
    assert_eq!(
        steps,
        vec![
            step(StepKind::Good, "5.10", Outcome::Good, Ran::Pass),
            step(StepKind::Bad, "7.2", Outcome::Bad, Ran::Fail),
            step(StepKind::Step, "6.1", Outcome::Good, Ran::Pass),
            step(StepKind::Step, "6.12", Outcome::Bad, Ran::Fail),
        ]
    );
    // The baseline lives in the bisection's state, not beside the scenario.
    assert!(state.snapshots().join("since.snap").is_file());
    assert!(!dir.join("snapshots").exists());
}

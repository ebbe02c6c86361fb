//! The scenario harness: every `scenarios/<name>.toml` × kernel is one
//! libtest-mimic trial named `<name>@<kernel>`, so `--exact`, name filters,
//! `--test-threads`, `--list` and nextest (`--partition hash:i/n`) work.
//!
//! Environment: `KESTREL_BIN` — the `kestrel` binary (unset: every trial is
//! reported as ignored, never passed; `cargo xtask test` sets it);
//! `KESTREL_RUN_ARGS` — extra `kestrel run` arguments; `KESTREL_KERNEL` —
//! comma-separated kernel specs (default `debian:6.1`);
//! `KESTREL_UPDATE_SNAPSHOTS=1` — accept snapshots; `KESTREL_JUNIT=PATH`;
//! `KESTREL_RUN_ID`. A malformed scenario file is a failing trial named
//! after the file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kestrel_scenarios::backend::Backend;
use kestrel_scenarios::scenario::{scenario_files, Scenario};
use kestrel_scenarios::suite::{backend_from_env, plan, Session, SuiteOptions};
use kestrel_scenarios::CaseResult;
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let var = |k: &str| std::env::var(k).ok();
    let mut options = SuiteOptions::new(workspace);
    options.scenario_dirs = vec![manifest.to_owned()];
    options.progress = false;
    options.apply_env(&var);
    let backend: Option<Arc<dyn Backend>> =
        backend_from_env(&var).map(|b| Arc::new(b) as Arc<dyn Backend>);

    // Load each file on its own, so one bad file fails one trial.
    let mut trials = Vec::new();
    let mut scenarios = Vec::new();
    let files = match scenario_files(manifest) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kestrel-scenarios: {e}");
            std::process::exit(1);
        }
    };
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        match Scenario::load(&path) {
            Ok(s) => scenarios.push(Arc::new(s)),
            Err(e) => {
                let message = e.to_string();
                trials.push(Trial::test(format!("{name} (malformed)"), move || {
                    Err(message.into())
                }));
            }
        }
    }

    let session = Arc::new(Session::new(options.clone()));
    let results: Arc<Mutex<Vec<CaseResult>>> = Arc::default();
    let cases = plan(&scenarios, &options);
    if backend.is_none() && !cases.is_empty() {
        eprintln!(
            "note: KESTREL_BIN is not set: the {} scenario trials are ignored (not passed); \
             `cargo xtask test` boots kernels and runs them",
            cases.len()
        );
    }
    for case in cases {
        let name = case.name();
        let backend = backend.clone();
        let session = Arc::clone(&session);
        let results = Arc::clone(&results);
        let ignored = backend.is_none();
        let trial = Trial::test(name, move || {
            let Some(backend) = backend else {
                return Err("KESTREL_BIN is not set: `cargo xtask test` runs the scenarios".into());
            };
            let r = session.run_case(&case, backend.as_ref());
            let outcome = if r.verdict.passed() {
                Ok(())
            } else {
                let mut msg = format!("{}\nartifacts: {}", r.verdict, r.artifacts.display());
                for d in r.verdict.diffs() {
                    msg.push_str("\n\n");
                    msg.push_str(d);
                }
                Err(Failed::from(msg))
            };
            if let Ok(mut all) = results.lock() {
                all.push(r);
            }
            outcome
        })
        .with_ignored_flag(ignored);
        trials.push(trial);
    }

    let start = Instant::now();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut ran = results.lock().map(|r| r.clone()).unwrap_or_default();
    ran.sort_by(|a, b| (&a.scenario, &a.kernel).cmp(&(&b.scenario, &b.kernel)));
    if !ran.is_empty() {
        match session.finish(&ran, start.elapsed()) {
            Ok(summary) => eprintln!(
                "\n{}\nartifacts: {}",
                summary.table,
                summary.run_dir.display()
            ),
            Err(e) => eprintln!("kestrel-scenarios: {e}"),
        }
    }
    conclusion.exit();
}

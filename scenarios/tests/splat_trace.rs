//! END TO END — a real kernel prints a forbidden trace and the verdict
//! carries it symbolized. The guest runs `echo l > /proc/sysrq-trigger`
//! (sysrq "show backtrace of all active CPUs": a `Call Trace:` at
//! `KERN_DEFAULT`, which the suite's `loglevel=5` lets reach the console);
//! the case must fail with a `ForbiddenLine` whose trace, shown in
//! summary.txt, has at least three kernel frames and `write_sysrq_trigger+0x…`
//! among them. When the System.map the backend found has symbols (not
//! Debian's placeholder), every named frame must resolve in it and every raw
//! address (a kernel without kallsyms) must carry the name it gives. When
//! the kernel's vmlinux has debug info (a `build:DIR` made with
//! `CONFIG_DEBUG_INFO_*`, as CI's KUnit kernel from
//! runner/tests/data/small.kunitconfig), `write_sysrq_trigger`'s frame must
//! end in `(drivers/tty/sysrq.c:LINE)` (relative to the source tree) and
//! most vmlinux frames must carry a file:line; `KESTREL_EXPECT_DEBUG_INFO=1`
//! makes a kernel without debug info a failure instead of a note.
//!
//! Needs hardware-speed KVM (the nested rig): with `KESTREL_REAL_KVM_TESTS=1`
//! and `KESTREL_BIN` set it runs; otherwise the trial is reported as
//! ignored, never passed. One trial per kernel of `KESTREL_KERNEL`
//! (comma-separated), else `debian:6.1` (in the cache: `cargo xtask kernel
//! fetch debian:6.1`); a `build:DIR` kernel without kallsyms exercises the
//! System.map path.
//!
//! `cargo test --release -p kestrel-scenarios --test splat_trace --no-run`, then
//! `cargo xtask rig -- env KESTREL_REAL_KVM_TESTS=1 KESTREL_BIN=… <binary> --nocapture`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kestrel_scenarios::backend::Backend;
use kestrel_scenarios::kernel::slug;
use kestrel_scenarios::suite::{backend_from_env, Case, Session, SuiteOptions, DEFAULT_KERNEL};
use kestrel_scenarios::trace::{parse_frame, Target};
use kestrel_scenarios::{FailReason, Scenario, Verdict};
use libtest_mimic::{Arguments, Failed, Trial};

const SCENARIO: &str = r#"
description = "sysrq l prints a Call Trace: the verdict shows it symbolized"
script = "echo l > /proc/sysrq-trigger"
timeout = 60
snapshot = []
"#;

fn main() {
    let args = Arguments::from_args();
    let var = |k: &str| std::env::var(k).ok();
    let mut kernels: Vec<String> = var("KESTREL_KERNEL")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if kernels.is_empty() {
        kernels.push(DEFAULT_KERNEL.to_owned());
    }
    let real = var("KESTREL_REAL_KVM_TESTS").as_deref() == Some("1");
    let backend = backend_from_env(&var).filter(|_| real).map(Arc::new);
    if backend.is_none() {
        eprintln!(
            "note: needs KESTREL_REAL_KVM_TESTS=1 and KESTREL_BIN (the nested rig): \
             the trials are ignored, not passed"
        );
    }
    let trials = kernels
        .into_iter()
        .map(|kernel| {
            let backend = backend.clone();
            // In the rig (KESTREL_REAL_KVM_TESTS=1) a missing KESTREL_BIN
            // is a broken set-up: the trial fails instead of being ignored.
            let ignored = backend.is_none() && !real;
            Trial::test(
                format!("sysrq_backtrace_is_symbolized@{kernel}"),
                move || match backend {
                    Some(b) => sysrq_backtrace_is_symbolized(b.as_ref(), &kernel),
                    None if real => {
                        Err("KESTREL_REAL_KVM_TESTS=1 but KESTREL_BIN is not set".into())
                    }
                    None => Err("not in the nested rig".into()),
                },
            )
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn sysrq_backtrace_is_symbolized(backend: &dyn Backend, kernel: &str) -> Result<(), Failed> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let mut options = SuiteOptions::new(workspace);
    options.kernels = vec![kernel.to_owned()];
    options.progress = false;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    options.run_id = Some(format!("splat-trace-{now}-{}", slug(kernel)));
    let scenario = Scenario::parse(&manifest.join("splat_trace_e2e.toml"), SCENARIO)
        .map_err(|e| e.to_string())?;
    let session = Session::new(options);
    let case = Case {
        scenario: Arc::new(scenario),
        kernel: kernel.to_owned(),
    };
    let start = Instant::now();
    let result = session.run_case(&case, backend);
    let summary = session
        .finish(std::slice::from_ref(&result), start.elapsed())
        .map_err(|e| e.to_string())?;
    eprintln!(
        "{}\nartifacts: {}",
        summary.table,
        result.artifacts.display()
    );

    let Verdict::Fail(reasons) = &result.verdict else {
        return Err(format!("expected a fail, got {}", result.verdict).into());
    };
    let Some(FailReason::ForbiddenLine { pattern, trace, .. }) = reasons
        .iter()
        .find(|r| matches!(r, FailReason::ForbiddenLine { .. }))
    else {
        return Err(format!("no forbidden line in {}", result.verdict).into());
    };
    if pattern != "Call Trace" {
        return Err(format!("forbidden by /{pattern}/, expected /Call Trace/").into());
    }
    let frames: Vec<(&String, Target)> = trace
        .iter()
        .filter_map(|l| Some((l, parse_frame(l)?.target)))
        .filter(|(_, t)| {
            !matches!(
                t,
                Target::Named {
                    module: Some(_),
                    ..
                }
            )
        })
        .collect();
    if frames.len() < 3 || !trace.iter().any(|l| l.contains(" write_sysrq_trigger+0x")) {
        return Err(format!("no write_sysrq_trigger+0x… among the frames of {trace:#?}").into());
    }
    // The frames must agree with the System.map the backend found — when
    // it has symbols: Debian's `boot/System.map-<release>` is a one-line
    // placeholder (the real one is in the `-dbg` package).
    let sources = backend
        .symbol_sources(kernel)
        .ok_or_else(|| format!("the backend found no image for {kernel}"))?;
    let loaded = sources.load();
    match &loaded.debug {
        // With debug info every vmlinux frame carries ` (file:line)`; the
        // sysrq handler's must name drivers/tty/sysrq.c.
        Some(_) => {
            let sysrq = trace
                .iter()
                .find(|l| l.contains(" write_sysrq_trigger+0x"))
                .map_or("", String::as_str);
            if !file_line_of(sysrq).is_some_and(|place| place.starts_with("drivers/tty/sysrq.c:")) {
                return Err(format!(
                    "vmlinux has debug info ({sources:?}) but write_sysrq_trigger's frame \
                     has no drivers/tty/sysrq.c:LINE: {sysrq:?}"
                )
                .into());
            }
            let bare: Vec<&String> = frames
                .iter()
                .filter(|(line, _)| file_line_of(line).is_none())
                .map(|(line, _)| *line)
                .collect();
            if bare.len() * 2 > frames.len() {
                return Err(format!("most vmlinux frames have no file:line: {bare:#?}").into());
            }
            eprintln!(
                "{} of {} kernel frames carry file:line; {sysrq}",
                frames.len() - bare.len(),
                frames.len()
            );
        }
        // CI boots a kernel built with debug info and says so: file:line
        // must not go untested there without a failure.
        None if std::env::var("KESTREL_EXPECT_DEBUG_INFO").as_deref() == Ok("1") => {
            return Err(format!(
                "KESTREL_EXPECT_DEBUG_INFO=1 but no vmlinux with debug info was found for \
                 {kernel} ({sources:?})"
            )
            .into());
        }
        None => {}
    }
    match loaded.table {
        Some(table) => {
            let wrong: Vec<&String> = frames
                .iter()
                .filter(|(line, target)| match target {
                    Target::Named {
                        name, offset, size, ..
                    } => table.address_of(name, *offset, *size).is_none(),
                    // A raw address must carry the name the map gives it.
                    Target::Raw(addr) => !table
                        .symbolize(*addr)
                        .is_some_and(|name| line.contains(&format!(" {name}"))),
                })
                .map(|(line, _)| *line)
                .collect();
            if !wrong.is_empty() {
                return Err(format!("not symbolized from {sources:?}: {wrong:#?}").into());
            }
            eprintln!("{} kernel frames agree with {sources:?}", frames.len());
        }
        None => eprintln!(
            "note: no text symbols for {kernel} ({sources:?}): the frames are as the \
             kernel named them; raw-address names and file:line were not exercised"
        ),
    }
    if !summary.table.contains("      | ") || !summary.table.contains(" write_sysrq_trigger+0x") {
        return Err("summary.txt does not show the trace".into());
    }
    Ok(())
}

/// The ` (file:line …)` a symbolized frame ends with.
fn file_line_of(line: &str) -> Option<&str> {
    let (_, place) = line.trim_end().strip_suffix(')')?.rsplit_once(" (")?;
    place.contains(':').then_some(place)
}

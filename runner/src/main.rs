//! The `kestrel` command. Exit codes: the guest command's status; 128+n
//! for a signal; 124 timeout; 125 bad arguments, setup or VMM error; 255
//! panic or guest died without a status. `doctor`: 0 hardware KVM, 2
//! software KVM (use the nested rig), 1 no usable KVM.

use std::process::ExitCode;
use std::time::Instant;

use clap::error::ErrorKind;
use clap::Parser;
use kestrel::cli::{clap_error_line, Cli, Command, RunArgs};
use kestrel::event::Ending;
use kestrel::gdb::Listener;
use kestrel::timings::Timings;
use kestrel::verdict::{verdict_line, verdict_record, EXIT_VMM_ERROR};
use kestrel::vm::{Config, Vm};
use kestrel::{doctor, log, verdict::Verdict};

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kestrel: {}", clap_error_line(&e));
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    match cli.command {
        Command::Run(args) => match run(*args, process_start) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                // One sentence: our error messages already name the cause.
                eprintln!("kestrel: {e}");
                ExitCode::from(EXIT_VMM_ERROR)
            }
        },
        Command::Kernel(cmd) => report(kestrel::commands::kernel::run(cmd).map(|()| 0)),
        Command::Test(args) => report(kestrel::commands::test::run(args)),
        Command::Matrix(args) => report(kestrel::commands::matrix::run(args)),
        Command::Kunit(args) => report(kestrel::commands::kunit::run(args)),
        Command::Kselftest(args) => report(kestrel::commands::kselftest::run(args)),
        Command::Bisect(args) => report(kestrel::commands::bisect::run(args)),
        Command::BisectStep(args) => ExitCode::from(kestrel::commands::bisect::run_step(args)),
        Command::Doctor => {
            let report = doctor::run();
            println!("kestrel doctor\n{}", report.text);
            println!("kestrel: doctor={}", report.class.name());
            ExitCode::from(report.class.exit_code())
        }
    }
}

/// A developer command's exit: its code, or its error as one line and 125.
fn report(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kestrel: {e:#}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

fn run(args: RunArgs, process_start: Instant) -> anyhow::Result<u8> {
    let mut timings = Timings::new(process_start);
    let show_timings = args.timings;
    let verdict_file = args.verdict_file.clone();
    // Before any virtio-fs table is sized from it: one handle per inode
    // the guest holds spares re-opens from the parent chain.
    let nofile = virtiofs_lite::raise_nofile_limit();
    log::debug(format_args!("RLIMIT_NOFILE is {nofile}"));
    // Bound first: a taken port is an argument error, before any boot work.
    let gdb = args.gdb.map(Listener::bind).transpose()?;
    let config = Config::try_from(args)?;
    // After the arguments (their errors come first), before any VM work.
    doctor::require_hardware_speed().map_err(anyhow::Error::msg)?;
    if config.terminal {
        // Before any thread starts, so only the terminal's signalfd sees it.
        kestrel::terminal::block_sigwinch()?;
        log::debug(format_args!(
            "the guest command runs on a terminal; Ctrl-A x ends the VM"
        ));
    }
    timings.host("inputs-ready", Instant::now());
    let mut vm = Vm::try_from(config)?;
    if let Some(listener) = gdb {
        vm.attach_gdb(listener);
    }
    timings.host("vm-built", Instant::now());
    let outcome = vm.run();
    timings.host("vcpus-released", outcome.released);
    if let Some(at) = outcome.snapshot_at {
        timings.host(
            match outcome.start {
                kestrel::vm::Start::Warm => "snapshot-restored",
                _ => "snapshot-saved",
            },
            at,
        );
    }
    log::debug(format_args!("start: {}", outcome.start.name()));
    timings.guest(&outcome.marks);
    if let Some(at) = outcome.status_at {
        timings.host("status", at);
    }
    timings.host(ending_mark(&outcome.ending), outcome.ended);
    timings.host("exit", Instant::now());
    if show_timings {
        eprint!("{}", timings.render());
    } else {
        log::debug(format_args!("timings:\n{}", timings.render()));
    }
    match &outcome.verdict {
        Verdict::BootFailure(why) | Verdict::VmmError(why) => eprintln!("kestrel: {why}"),
        _ => {}
    }
    if let (Verdict::Panic, Some(line)) = (&outcome.verdict, &outcome.panic_line) {
        eprintln!("kestrel: {}", line.trim());
    }
    if outcome.verdict.shows_console() && !outcome.console_tail.is_empty() {
        eprintln!("kestrel: last console lines:");
        for line in &outcome.console_tail {
            eprintln!("  | {line}");
        }
    }
    if let Some(path) = verdict_file {
        let record = verdict_record(
            &outcome.verdict,
            outcome.panic_line.as_deref(),
            outcome.boot,
            outcome.total,
        );
        if let Err(e) = record.write(&path) {
            eprintln!(
                "kestrel: cannot write the verdict to {}: {e:#}",
                path.display()
            );
        }
    }
    eprintln!(
        "{}",
        verdict_line(&outcome.verdict, outcome.boot, outcome.total)
    );
    Ok(outcome.verdict.exit_code())
}

/// The timing mark for how the VM ended.
fn ending_mark(ending: &Ending) -> &'static str {
    match ending {
        Ending::Reset => "guest-reset",
        Ending::TripleFault(_) => "triple-fault",
        Ending::Halted => "halted",
        Ending::Crash => "guest-crash",
        Ending::Timeout => "timeout",
        Ending::StatusGraceExpired => "status-grace-expired",
        Ending::VmmFailure(_) => "vmm-failure",
        Ending::UserQuit => "user-quit",
    }
}

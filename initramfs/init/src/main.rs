//! Kestrel's guest init (PID 1): mounts the basics, reads the job spec
//! (from the initramfs, or in a warm start over the status UART), loads
//! modules, opens the output and status channels, prepares the
//! command's root, runs the command, reports one `KESTREL-STATUS` line and
//! powers the VM off.
//!
//! Invariants: the init never exits and never unwinds (every failure, a
//! panic included, becomes `Status::InitError` and a power-off); it writes
//! at most one status line per boot. `main` below is the boot script; each
//! step lives in its own module.

mod dest;
mod error;
mod jobwait;
mod kmsg;
mod modules;
mod mounts;
mod relay;
mod report;
mod root;
mod run;
mod spec;
mod sys;
mod terminal;
#[cfg(test)]
mod testdir;

use std::fs::File;
use std::os::fd::IntoRawFd;
use std::path::Path;

use kestrel_initramfs::job::{Dest, Phase, Status};

use crate::error::InitError;

fn main() {
    if sys::getpid() != 1 {
        // Mounting over /dev and kill(-1) are only fine inside a guest.
        eprintln!("kestrel-init: must run as PID 1 inside a Kestrel guest");
        std::process::exit(2);
    }
    report::install_panic_hook();
    let status = boot().unwrap_or_else(|e| {
        kmsg::error(&e.to_string());
        Status::InitError(e.to_string())
    });
    run::kill_remaining();
    sys::sync();
    report::report(&status);
    report::power_off();
}

/// The boot script, up to the command's end.
fn boot() -> Result<Status, InitError> {
    // 1. The basics; /dev first: the log lives there.
    let dev = mounts::mount_one(&mounts::DEV, Path::new("/"));
    ensure_std_fds();
    if let Err(e) = kmsg::open() {
        // Nowhere to log this but the report.
        dev?;
        return Err(InitError::os("open /dev/kmsg", &e));
    }
    kmsg::info(concat!("starting ", env!("CARGO_PKG_VERSION")));
    dev?;
    mounts::mount_table(mounts::EARLY, Path::new("/"))?;
    mounts::make_dev_links()?;
    report::phase(Phase::Init);

    // 2. The job: in the initramfs, or (the base archive booted alone, a
    //    warm start) over the status UART, which is then already the status
    //    channel.
    let (spec, job_channel) = match spec::load(Path::new("/"))? {
        spec::Loaded::Job(spec) => (spec, None),
        spec::Loaded::BaseOnly(mut spec) => {
            let tty = jobwait::receive_on_uart(&mut spec)?;
            (spec, Some(tty))
        }
    };

    // 3. Modules; the uevent listener for virtio ports must predate them.
    //    A status channel that needs no module (a UART) is opened first, so
    //    the host sees the phases as they happen; the job's UART is kept.
    let mut dests = dest::Dests::new(&spec);
    let mut status_open = false;
    if let Some(tty) = job_channel {
        let uart = Dest::Path(report::FALLBACK_PATH.to_string());
        status_open = spec.status.as_ref() == Some(&uart);
        dests.adopt(uart, tty);
    }
    let early_status = !matches!(spec.status, Some(Dest::VirtioPort(_)));
    if early_status && !status_open {
        open_status(&mut dests, &spec, Ok(()))?;
    }
    let loaded = modules::load_all(&spec.modules);
    if loaded.is_err() {
        dests.stop_waiting();
    }
    report::phase(Phase::Modules);

    // 4. Destinations; status first, so later failures reach the host
    //    (even a module failure, when the status channel does not need it).
    if !early_status {
        open_status(&mut dests, &spec, loaded.clone())?;
    }
    loaded?;
    let streams = match &spec.tty {
        // A terminal is all three streams, and later the controlling tty.
        Some(tty) => {
            let term = dests.open_terminal(tty)?;
            let dup = |f: &File| f.try_clone().map_err(|e| InitError::os("dup terminal", &e));
            terminal::follow_window_size(dests.open_input(&tty.winsize_port)?, dup(&term)?);
            run::Streams {
                stdin: dup(&term)?,
                stdout: dup(&term)?,
                stderr: term,
            }
        }
        None => run::Streams {
            stdin: File::open("/dev/null").map_err(|e| InitError::os("open /dev/null", &e))?,
            stdout: dests.open(&spec.stdout, "stdout")?,
            stderr: dests.open(&spec.stderr, "stderr")?,
        },
    };

    // 5. The command's root.
    let root = root::prepare(&spec)?;
    report::phase(Phase::Root);

    // 6–7. Run it and reap until it exits.
    report::phase(Phase::Command);
    let status = run::run(&spec, root.as_deref(), &streams);
    report::phase(Phase::CommandEnd);
    status
}

/// Opens the spec's status channel and makes it the report channel. When
/// that fails, `loaded` (the module loading's result, the likelier cause) is
/// the error if it failed; the failure itself is logged.
fn open_status(
    dests: &mut dest::Dests,
    spec: &kestrel_initramfs::job::Spec,
    loaded: Result<(), InitError>,
) -> Result<(), InitError> {
    match spec
        .status
        .as_ref()
        .map(|d| dests.open(d, "status"))
        .transpose()
    {
        Ok(channel) => {
            report::set_channel(channel.map(Into::into));
            Ok(())
        }
        Err(e) => {
            // Reported on the fallback channel; a module failure is the likelier cause.
            kmsg::error(&e.to_string());
            loaded?;
            Err(e)
        }
    }
}

/// Makes sure descriptors 0–2 are open (on /dev/null) so files the init
/// opens never land there: the kernel leaves them closed when the archive
/// has no /dev/console.
fn ensure_std_fds() {
    for fd in 0..3 {
        if !sys::fd_is_open(fd) {
            // open(2) returns the lowest free descriptor, i.e. `fd`; keep it.
            if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                let _ = null.into_raw_fd();
            }
        }
    }
}

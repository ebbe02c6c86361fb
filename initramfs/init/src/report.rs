//! The end of every boot: the one `KESTREL-STATUS` line and the power-off.
//!
//! Owns the status channel. Invariant: at most one status line is written
//! per boot (the first [`report`] wins; a panic after it cannot overwrite
//! the verdict). Until the spec names a channel, reports go to
//! [`FALLBACK_PATH`]. State lives in atomics so the panic hook never waits
//! on a lock.

use std::fs::OpenOptions;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use kestrel_initramfs::job::{Status, STATUS_PREFIX};

use crate::{kmsg, run, sys};

/// Where the status goes while the spec has not said otherwise.
pub const FALLBACK_PATH: &str = "/dev/ttyS1";
/// `STATUS_FD` value: no channel chosen yet, use [`FALLBACK_PATH`].
const UNSET: RawFd = -1;
/// `STATUS_FD` value: the spec has no status channel; kmsg only.
const KMSG_ONLY: RawFd = -2;

static STATUS_FD: AtomicI32 = AtomicI32::new(UNSET);
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Sets the status channel from the spec: `None` means kmsg only.
pub fn set_channel(channel: Option<OwnedFd>) {
    let fd = channel.map_or(KMSG_ONLY, IntoRawFd::into_raw_fd);
    STATUS_FD.store(fd, Ordering::SeqCst);
}

/// The exact bytes written on the status channel.
pub fn status_line(status: &Status) -> String {
    format!("{STATUS_PREFIX}{status}\n")
}

/// Logs `status` and writes it on the status channel, once per boot.
pub fn report(status: &Status) {
    if REPORTED.swap(true, Ordering::SeqCst) {
        kmsg::error(&format!("not reporting a second status: {status}"));
        return;
    }
    let line = status_line(status);
    kmsg::info(line.trim_end());
    let fd = STATUS_FD.load(Ordering::SeqCst);
    let result = match fd {
        KMSG_ONLY => return,
        UNSET => write_to_fallback(&line),
        fd => write_and_flush(fd, &line),
    };
    if let Err(e) = result {
        kmsg::error(&format!("write status: {}", crate::error::describe(&e)));
    }
}

fn write_to_fallback(line: &str) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(FALLBACK_PATH)?;
    let fd = file.into_raw_fd();
    // Keep it open: closing a tty may discard what was not sent yet.
    write_and_flush(fd, line)
}

/// Writes the line and waits until it left the guest (tty) or reached
/// stable storage (file); a virtio port has no drain, its write is final.
fn write_and_flush(fd: RawFd, line: &str) -> std::io::Result<()> {
    sys::write_all(fd, line.as_bytes())?;
    if sys::isatty(fd) {
        sys::tcdrain(fd)
    } else {
        // Character devices other than ttys reject fsync (EINVAL); that is fine.
        let _ = sys::fsync(fd);
        Ok(())
    }
}

/// Reboots (the host treats the reset as the end of the VM); if the kernel
/// refuses, waits forever: PID 1 must never exit.
pub fn power_off() -> ! {
    sys::sync();
    let err = sys::reboot_autoboot();
    kmsg::error(&format!("reboot: {}", crate::error::describe(&err)));
    loop {
        sys::pause();
    }
}

/// Makes a panic end the boot like any other failure: log it, clean up,
/// report `InitError("init panicked: …")`, power off.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if sys::getpid() != 1 {
            // A forked child between fork and exec: the parent reports.
            sys::exit_now(127);
        }
        let text = panic_text(info);
        kmsg::error(&text);
        run::kill_remaining();
        sys::sync();
        report(&Status::InitError(text));
        power_off();
    }));
}

/// `init panicked at src/x.rs:1:2: message` on one line.
fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    match info.location() {
        Some(at) => format!("init panicked at {at}: {message}"),
        None => format!("init panicked: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        for status in [
            Status::Exit(0),
            Status::Exit(3),
            Status::Exit(255),
            Status::Signal(9),
            Status::InitError("mount virtiofs kestrel-root on /kestrel/host: ENODEV".into()),
            Status::InitError("init panicked: at src/main.rs:1:1:\nboom %".into()),
        ] {
            let line = status_line(&status);
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert!(line.starts_with(STATUS_PREFIX));
            assert_eq!(Status::find_in(line.as_bytes()), Some(status.clone()));
            // What a tty with ONLCR and a noisy console make of it.
            let seen = format!("boot noise\r\n{}\r\n", line.trim_end());
            assert_eq!(Status::find_in(seen.as_bytes()), Some(status));
        }
    }

    #[test]
    fn exact_line_for_exit() {
        assert_eq!(status_line(&Status::Exit(0)), "KESTREL-STATUS exit=0\n");
    }
}

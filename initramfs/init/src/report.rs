//! The end of every boot: the one `KESTREL-STATUS` line and the power-off.
//!
//! Owns the status channel. Invariant: at most one status line is written
//! per boot (the first [`report`] wins; a panic after it cannot overwrite
//! the verdict). Until the spec names a channel, reports go to
//! [`FALLBACK_PATH`] (a warm start makes that UART the channel while it
//! waits for its job, `jobwait.rs`). State lives in atomics so the panic hook never waits
//! on a lock. Phase marks ([`phase`]) go on the same channel before the
//! status line; those made before the channel is chosen wait in memory and
//! are sent, with the uptime they were made at, when it is.

use std::fs::OpenOptions;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use kestrel_initramfs::job::{Phase, PhaseMark, Status, STATUS_PREFIX};

use crate::{kmsg, run, sys};

/// Where the status goes while the spec has not said otherwise.
pub const FALLBACK_PATH: &str = "/dev/ttyS1";
/// `STATUS_FD` value: no channel chosen yet, use [`FALLBACK_PATH`].
const UNSET: RawFd = -1;
/// `STATUS_FD` value: the spec has no status channel; kmsg only.
const KMSG_ONLY: RawFd = -2;

static STATUS_FD: AtomicI32 = AtomicI32::new(UNSET);
static REPORTED: AtomicBool = AtomicBool::new(false);
/// Phase marks made before the channel was chosen.
static PENDING: Mutex<Vec<PhaseMark>> = Mutex::new(Vec::new());

/// Sets the status channel from the spec: `None` means kmsg only. Marks
/// made so far are sent on it now.
pub fn set_channel(channel: Option<OwnedFd>) {
    let fd = channel.map_or(KMSG_ONLY, IntoRawFd::into_raw_fd);
    STATUS_FD.store(fd, Ordering::SeqCst);
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    for mark in pending {
        send_mark(fd, &mark);
    }
}

/// Records that `phase` begins now: sent on the status channel, or kept
/// until the channel is chosen. Never fails the boot.
pub fn phase(phase: Phase) {
    let mark = PhaseMark {
        phase,
        uptime_us: sys::uptime_us(),
    };
    let fd = STATUS_FD.load(Ordering::SeqCst);
    if fd == UNSET {
        PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(mark);
    } else {
        send_mark(fd, &mark);
    }
}

/// Writes a mark without waiting for it to drain (the status line's drain
/// covers everything before it).
fn send_mark(fd: RawFd, mark: &PhaseMark) {
    if fd >= 0 && !REPORTED.load(Ordering::SeqCst) {
        if let Err(e) = sys::write_all(fd, mark.line().as_bytes()) {
            kmsg::error(&format!("write phase mark: {}", crate::error::describe(&e)));
        }
    }
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
    fn marks_wait_for_the_channel_then_flow_in_order() {
        let path = std::env::temp_dir().join(format!("kestrel-marks-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        phase(Phase::Init);
        phase(Phase::Modules);
        assert_eq!(STATUS_FD.load(Ordering::SeqCst), UNSET);
        assert_eq!(PENDING.lock().unwrap().len(), 2);
        set_channel(Some(file.into()));
        assert_ne!(STATUS_FD.load(Ordering::SeqCst), UNSET);
        phase(Phase::Root);
        let text = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let marks = PhaseMark::find_all(&text);
        let phases: Vec<Phase> = marks.iter().map(|m| m.phase).collect();
        assert_eq!(phases, [Phase::Init, Phase::Modules, Phase::Root]);
        assert!(marks.windows(2).all(|w| w[0].uptime_us <= w[1].uptime_us));
        assert!(marks[0].uptime_us > 0);
    }

    #[test]
    fn exact_line_for_exit() {
        assert_eq!(status_line(&Status::Exit(0)), "KESTREL-STATUS exit=0\n");
    }
}

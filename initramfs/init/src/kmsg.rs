//! The init's log: one record per message in the kernel log (`/dev/kmsg`),
//! each prefixed `kestrel-init: `.
//!
//! The descriptor lives in an atomic so the panic hook can log without
//! taking a lock. Until [`open`] succeeds, messages are dropped (there is
//! nowhere to put them before `/dev` is mounted). Failures are logged at
//! `KERN_ERR` so they reach the console even with `quiet`; everything else
//! at `KERN_INFO`.

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::sys;

/// Every record starts with this.
pub const PREFIX: &str = "kestrel-init: ";
const KMSG_PATH: &str = "/dev/kmsg";
static KMSG_FD: AtomicI32 = AtomicI32::new(-1);

/// Opens `/dev/kmsg` for the rest of the init's life.
pub fn open() -> std::io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(KMSG_PATH)?;
    KMSG_FD.store(file.into_raw_fd(), Ordering::SeqCst);
    Ok(())
}

/// Logs a step's failure.
pub fn error(msg: &str) {
    write(3, msg);
}

/// Logs progress.
pub fn info(msg: &str) {
    write(6, msg);
}

fn write(level: u8, msg: &str) {
    let fd = KMSG_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // One write is one record; keep it on one line.
    let record = format!("<{level}>{PREFIX}{}\n", msg.replace('\n', " "));
    // Nothing to do when the log itself fails.
    let _ = sys::write_all(fd, record.as_bytes());
}

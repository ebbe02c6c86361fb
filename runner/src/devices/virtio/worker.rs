//! The thread that serves a device's queues: woken by the transport's
//! queue eventfd (a KVM ioeventfd, so a guest notify costs no exit to the
//! VMM), it runs one round of the device's work per wake-up.
//!
//! Invariants: a panic in a round never leaves the thread; it marks the
//! device `DEVICE_NEEDS_RESET` and runs the device's own clean-up, and the
//! worker goes on waiting (the device ignores its queues until a reset).
//! [`QueueWorker::stop`] never waits forever: a round stuck in a host call
//! (a file system call, an output sink that blocks) past its limit is left
//! behind with a warning, not joined.

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::Interrupt;
use crate::log;

/// What the worker does after its next wake-up.
const RUN: u8 = 0;
const STOP_NOW: u8 = 1;
const ROUND_AND_STOP: u8 = 2;

/// How to stop a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// At once (a reset: the queues are being taken away).
    Now,
    /// After one more round (a shutdown that must drain what is queued).
    AfterRound,
}

/// A running queue worker.
pub struct QueueWorker {
    name: &'static str,
    wake: EventFd,
    order: Arc<AtomicU8>,
    done: Receiver<()>,
    handle: JoinHandle<()>,
}

impl QueueWorker {
    /// Starts thread `name` waiting on `events`. Each wake-up runs
    /// `round`; a panic in it calls `interrupt.set_needs_reset` and then
    /// `after_panic`.
    pub fn spawn(
        name: &'static str,
        events: EventFd,
        interrupt: Interrupt,
        round: impl Fn() + Send + 'static,
        after_panic: impl Fn() + Send + 'static,
    ) -> std::io::Result<QueueWorker> {
        let wake = events.try_clone()?;
        let order = Arc::new(AtomicU8::new(RUN));
        let (done_tx, done) = mpsc::channel();
        let flag = order.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                set_os_thread_name(name);
                loop {
                    if let Err(e) = events.read() {
                        if e.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        log::warn(format_args!("{name}: queue eventfd: {e}"));
                        break;
                    }
                    let now = flag.load(Ordering::Acquire);
                    if now == STOP_NOW {
                        break;
                    }
                    if catch_unwind(AssertUnwindSafe(&round)).is_err() {
                        interrupt.set_needs_reset(format_args!("{name} panicked"));
                        after_panic();
                    }
                    if now == ROUND_AND_STOP {
                        break;
                    }
                }
                let _ = done_tx.send(());
            })?;
        Ok(QueueWorker {
            name,
            wake,
            order,
            done,
            handle,
        })
    }

    /// Wakes the worker for a round (what a queue notify does).
    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            log::warn(format_args!("cannot wake {}: {e}", self.name));
        }
    }

    /// Stops the worker and waits up to `limit` for it; `blocker` says in
    /// the warning what a round that outlives `limit` is stuck in.
    pub fn stop(self, how: Stop, limit: Duration, blocker: &str) {
        let order = match how {
            Stop::Now => STOP_NOW,
            Stop::AfterRound => ROUND_AND_STOP,
        };
        self.order.store(order, Ordering::Release);
        if let Err(e) = self.wake.write(1) {
            log::warn(format_args!("cannot wake {}: {e}", self.name));
            return;
        }
        match self.done.recv_timeout(limit) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = self.handle.join();
            }
            Err(RecvTimeoutError::Timeout) => log::warn(format_args!(
                "{} did not finish within {limit:?} ({blocker}); leaving it",
                self.name
            )),
        }
    }
}

/// Names the calling thread for the OS too (`ps`, `top`,
/// `/proc/<pid>/task/*/comm`): the kernel keeps the first 15 bytes, where
/// `std` may leave a longer name unset.
fn set_os_thread_name(name: &str) {
    let short: String = name.chars().take(15).collect();
    let Ok(c) = CString::new(short) else {
        return;
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes from a valid pointer (`c` outlives the call) and affects only
    // the calling thread.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    if rc != 0 {
        log::debug(format_args!("cannot name {name} for the OS"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IrqLine;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn rounds_run_per_wake_and_a_panic_only_breaks_the_device() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let panics = Arc::new(AtomicUsize::new(0));
        let (r, p) = (rounds.clone(), panics.clone());
        let events = EventFd::new(0).unwrap();
        let interrupt = Interrupt::new(IrqLine::none());
        let w = QueueWorker::spawn(
            "kestrel_test_worker",
            events.try_clone().unwrap(),
            interrupt.clone(),
            move || {
                if r.fetch_add(1, Ordering::SeqCst) == 1 {
                    panic!("guest data made the device panic");
                }
            },
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        // Each wake-up is one round; the worker survives the panic in the
        // second. AfterRound runs a last one before stopping.
        w.wake();
        while rounds.load(Ordering::SeqCst) < 1 {
            std::thread::yield_now();
        }
        w.wake();
        while panics.load(Ordering::SeqCst) < 1 {
            std::thread::yield_now();
        }
        assert!(interrupt.needs_reset());
        w.stop(Stop::AfterRound, Duration::from_secs(30), "test");
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
        assert_eq!(panics.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn stop_now_runs_no_more_rounds() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let r = rounds.clone();
        let events = EventFd::new(0).unwrap();
        let interrupt = Interrupt::new(IrqLine::none());
        let w = QueueWorker::spawn(
            "kestrel_test_worker",
            events,
            interrupt,
            move || {
                r.fetch_add(1, Ordering::SeqCst);
            },
            || {},
        )
        .unwrap();
        w.stop(Stop::Now, Duration::from_secs(30), "test");
        assert_eq!(rounds.load(Ordering::SeqCst), 0);
    }
}

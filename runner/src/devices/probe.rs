//! The debug port of hand-written guests: records each byte written with
//! the time it arrived. Used by `kestrel doctor` to time its probe loop and
//! by the integration tests; never present for real kernels.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::bus::Device;

/// Bytes written to the port, with arrival times.
#[derive(Clone, Default)]
pub struct ProbeLog(Arc<Mutex<Vec<(Instant, u8)>>>);

impl ProbeLog {
    /// Everything recorded so far.
    pub fn entries(&self) -> Vec<(Instant, u8)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The port device.
pub struct ProbePort {
    log: ProbeLog,
}

impl ProbePort {
    /// A port appending to `log`.
    pub fn new(log: ProbeLog) -> Self {
        ProbePort { log }
    }
}

/// A hostile guest could write forever; keep only this many.
const MAX_ENTRIES: usize = 4096;

impl Device for ProbePort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let now = Instant::now();
        let mut log = self.log.0.lock().unwrap_or_else(PoisonError::into_inner);
        for &b in data {
            if log.len() < MAX_ENTRIES {
                log.push((now, b));
            }
        }
    }
}

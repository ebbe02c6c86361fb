//! Dispatch of guest port I/O and MMIO accesses to devices.
//!
//! One [`Device`] trait serves both address spaces; a [`Bus`] maps
//! non-overlapping address ranges to devices, each behind its own lock, so
//! two vCPUs touching different devices never wait on each other.
//! Invariants: ranges never overlap and are never empty (insertion refuses
//! them); an access that is not wholly inside one device's range reaches no
//! device: reads see all ones, writes are dropped, and both are only logged
//! at debug level. Nothing a guest does here can panic the VMM.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::log;

/// A device on a bus. `offset` is relative to the start of the range the
/// device was inserted at; `data.len()` is the access width (1, 2, 4 or 8
/// for port I/O and MMIO from a vCPU).
pub trait Device: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device handle as stored on a bus.
pub type SharedDevice = Arc<Mutex<dyn Device>>;

/// Errors while building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {new} overlaps {existing}: every device needs its own addresses")]
    Overlap {
        /// The range being inserted.
        new: BusRange,
        /// The range already present.
        existing: BusRange,
    },
    /// Zero length or past the end of the address space.
    #[error("bus range at {base:#x} with length {len:#x} is empty or wraps around")]
    BadRange {
        /// Start address.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// A half-open address range `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BusRange {
    /// First address.
    pub base: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
}

impl BusRange {
    fn end(&self) -> u64 {
        self.base + self.len
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.base, self.end())
    }
}

/// Which address space a bus serves (for log messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// x86 port I/O.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// Range → device dispatch for one address space.
pub struct Bus {
    space: Space,
    devices: BTreeMap<u64, (BusRange, SharedDevice)>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<_> = self.devices.values().map(|(r, _)| r.to_string()).collect();
        f.debug_struct("Bus")
            .field("space", &self.space)
            .field("ranges", &ranges)
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new(space: Space) -> Self {
        Bus {
            space,
            devices: BTreeMap::new(),
        }
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::BadRange { base, len });
        }
        let new = BusRange { base, len };
        let before = self.devices.range(..=base).next_back();
        let after = self.devices.range(base..).next();
        for (_, (existing, _)) in before.into_iter().chain(after) {
            if existing.base < new.end() && new.base < existing.end() {
                return Err(BusError::Overlap {
                    new,
                    existing: *existing,
                });
            }
        }
        self.devices.insert(base, (new, device));
        Ok(())
    }

    /// The device whose range wholly contains `[addr, addr + len)`, and the
    /// offset of `addr` in it.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, &SharedDevice)> {
        let (_, (range, device)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - range.base;
        let last = offset.checked_add(len as u64)?;
        (last <= range.len).then_some((offset, device))
    }

    /// A guest read. Unclaimed addresses read as all ones. Returns whether a
    /// device answered.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                log::debug(format_args!(
                    "{:?} read of {} bytes at {addr:#x}: no device",
                    self.space,
                    data.len()
                ));
                false
            }
        }
    }

    /// A guest write. Writes to unclaimed addresses are dropped. Returns
    /// whether a device took it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => {
                log::debug(format_args!(
                    "{:?} write of {:02x?} at {addr:#x}: no device",
                    self.space, data
                ));
                false
            }
        }
    }
}

/// A device whose lock was poisoned by a panic in another thread is still
/// usable: its state is plain data and the guest sees whatever it holds.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn Device + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses; reads return the low byte of the offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl Device for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new(Space::Pio);
        bus.insert(0x10, 8, probe()).unwrap();
        for (base, len) in [(0x10, 8), (0x0c, 5), (0x17, 1), (0x11, 2), (0x00, 0x100)] {
            assert!(
                matches!(
                    bus.insert(base, len, probe()),
                    Err(BusError::Overlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert(0x18, 1, probe()).unwrap();
        bus.insert(0x08, 8, probe()).unwrap();
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        let mut bus = Bus::new(Space::Mmio);
        assert!(matches!(
            bus.insert(5, 0, probe()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, probe()),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(u64::MAX - 1, 1, probe()).unwrap();
    }

    #[test]
    fn dispatch_uses_offsets_and_edges() {
        let mut bus = Bus::new(Space::Mmio);
        let dev = probe();
        bus.insert(0x1000, 0x10, dev.clone()).unwrap();

        let mut b = [0u8; 4];
        assert!(bus.read(0x1004, &mut b));
        assert_eq!(b, [4; 4]);
        // Last byte inside; a 4-byte access at the last byte straddles the end.
        assert!(bus.write(0x100f, &[1]));
        assert!(!bus.write(0x100e, &[1, 2, 3, 4]));
        assert!(bus.read(0x100c, &mut b));
        assert!(!bus.read(0x1010, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.read(0x0fff, &mut b));
        assert_eq!(dev.lock().unwrap().writes, vec![(0xf, vec![1])]);
    }

    #[test]
    fn unknown_addresses_never_panic() {
        let bus = Bus::new(Space::Pio);
        let mut b = [0u8; 8];
        assert!(!bus.read(u64::MAX, &mut b));
        assert!(!bus.write(u64::MAX - 3, &[0; 8]));
        assert!(!bus.read(0, &mut []));
    }
}

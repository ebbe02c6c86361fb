//! The virtio-mmio transport, register layout version 2 (virtio 1.2 §4.2.2).
//!
//! One [`MmioTransport`] is one register block on the MMIO bus, carrying
//! one [`VirtioDevice`]. It runs the status handshake (ACKNOWLEDGE →
//! DRIVER → FEATURES_OK → DRIVER_OK; writing 0 resets), keeps the driver's
//! queue settings until `DRIVER_OK`, then builds the queues and activates
//! the device. Legacy drivers are refused: the version register says 2 and
//! `FEATURES_OK` only sticks when the driver accepted `VIRTIO_F_VERSION_1`.
//!
//! Reads never reach the transport's logic: every readable register sits
//! in the transport's [`RegisterPage`], written after each register write
//! and mapped read-only into the guest where KVM allows (see
//! [`super::page`]), so the device's config space is read once.
//!
//! Invariants: registers are 32-bit, aligned; other writes below the
//! config space are dropped. A queue becomes ready only with a
//! power-of-two size within its maximum, aligned rings inside guest RAM;
//! anything else the guest does wrong (bad queue settings, notifying a
//! queue that is not there or not ready, a panic in the device) sets
//! `DEVICE_NEEDS_RESET` and the device is left alone until reset. Queue and
//! feature registers are frozen once `DRIVER_OK` is set.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::page::RegisterPage;
use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::Device;
use crate::memory::GuestMemory;
use crate::{layout, log};

/// Register offsets.
pub mod regs {
    /// "virt".
    pub const MAGIC: u64 = 0x000;
    /// Always 2 (modern).
    pub const VERSION: u64 = 0x004;
    /// Device id.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// 32 feature bits, selected by [`DEVICE_FEATURES_SEL`].
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Which 32 bits [`DEVICE_FEATURES`] shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// 32 accepted bits, selected by [`DRIVER_FEATURES_SEL`].
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Which 32 bits [`DRIVER_FEATURES`] sets.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue the queue registers refer to.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Largest size of the selected queue (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Legacy only (refused).
    pub const LEGACY_QUEUE_PFN: u64 = 0x040;
    /// Selected queue enabled.
    pub const QUEUE_READY: u64 = 0x044;
    /// Write a queue index: it has new buffers.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Pending interrupt causes.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Clears interrupt causes.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table, low 32 bits (high at +4).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Available ring, low 32 bits (high at +4).
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Used ring, low 32 bits (high at +4).
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Shared memory region select.
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory region length, low (high at +4); all ones: none.
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory region base, low (high at +4).
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Changes whenever the config space changes.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Device config space starts here.
    pub const CONFIG: u64 = 0x100;
}

/// `MagicValue`: "virt" little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The register layout version this transport implements.
pub const VERSION: u32 = 2;
/// Vendor id reported to the driver ("KEST"-ish; any value works).
pub const VENDOR_ID: u32 = 0x5453_454b;
/// Largest split-queue size allowed by the spec.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up.
    pub const FAILED: u32 = 0x80;
}

/// A device that cannot be put on a transport (a VMM bug).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioError {
    /// A maximum queue size is 0, not a power of two, or too large.
    #[error("virtio device {device} declares queue {index} with maximum size {size}: must be a power of two from 1 to {MAX_QUEUE_SIZE}")]
    QueueMax {
        /// Device id.
        device: u32,
        /// Queue index.
        index: usize,
        /// The bad size.
        size: u16,
    },
}

/// What the driver wrote for one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct QueueSettings {
    max: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueSettings {
    fn new(max: u16) -> Self {
        QueueSettings {
            max,
            size: max,
            ..Default::default()
        }
    }

    /// A ready queue for these settings, or why there is none.
    fn build(&self, mem: &GuestMemory) -> Result<Queue, String> {
        let mut q = Queue::new(self.max).map_err(|e| format!("maximum size: {e}"))?;
        q.try_set_size(self.size)
            .map_err(|_| format!("size {} (maximum {})", self.size, self.max))?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| format!("descriptor table at {:#x} is not 16-aligned", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(|_| format!("available ring at {:#x} is not 2-aligned", self.avail))?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(|_| format!("used ring at {:#x} is not 4-aligned", self.used))?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(format!(
                "rings (descriptors {:#x}, available {:#x}, used {:#x}, size {}) are not inside guest RAM",
                self.desc, self.avail, self.used, self.size
            ));
        }
        Ok(q)
    }
}

/// A virtio-mmio register block carrying one device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueSettings>,
    queue_events: Option<EventFd>,
    active: bool,
}

impl MmioTransport {
    /// A transport for `device`, using `mem` and raising `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Interrupt,
    ) -> Result<Self, MmioError> {
        let id = device.device_type();
        let mut queues = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
                return Err(MmioError::QueueMax {
                    device: id,
                    index,
                    size,
                });
            }
            queues.push(QueueSettings::new(size));
        }
        let transport = MmioTransport {
            device,
            mem,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            queue_events: None,
            active: false,
        };
        transport.render_fixed();
        transport.render();
        Ok(transport)
    }

    /// The page the guest reads this transport's registers from.
    pub fn page(&self) -> &Arc<RegisterPage> {
        self.interrupt.page()
    }

    /// The registers that never change, and the device's config space.
    fn render_fixed(&self) {
        let page = self.page();
        page.store(regs::MAGIC, MAGIC_VALUE);
        page.store(regs::VERSION, VERSION);
        page.store(regs::DEVICE_ID, self.device.device_type());
        page.store(regs::VENDOR_ID, VENDOR_ID);
        // No shared memory regions: their lengths read all ones.
        for offset in [regs::SHM_LEN_LOW, 0x0b4, regs::SHM_BASE_LOW, 0x0bc] {
            page.store(offset, u32::MAX);
        }
        let mut config = vec![0u8; (layout::VIRTIO_MMIO_SIZE - regs::CONFIG) as usize];
        let device = &self.device;
        if catch_unwind(AssertUnwindSafe(|| device.read_config(0, &mut config))).is_err() {
            config.fill(0);
            self.broken(format_args!("the device panicked reading its config"));
        }
        page.fill_from(regs::CONFIG, &config);
    }

    /// The registers that depend on what the driver wrote: called after
    /// every register write, before the vCPU that wrote runs on.
    fn render(&self) {
        let page = self.page();
        let features = match self.device_features_sel {
            0 => self.offered_features() as u32,
            1 => (self.offered_features() >> 32) as u32,
            _ => 0,
        };
        page.store(regs::DEVICE_FEATURES, features);
        let queue = self.queues.get(self.queue_sel as usize);
        page.store(regs::QUEUE_NUM_MAX, queue.map_or(0, |q| u32::from(q.max)));
        page.store(regs::QUEUE_READY, queue.map_or(0, |q| u32::from(q.ready)));
        // DEVICE_NEEDS_RESET is the interrupt's (a worker may set it).
        let status = self.status;
        page.update(regs::STATUS, |old| {
            status | (old & status::DEVICE_NEEDS_RESET)
        });
    }

    /// Notifies arrive on `events` (a KVM ioeventfd on the notify register,
    /// at [`regs::QUEUE_NOTIFY`]) instead of as register writes; the device
    /// gets a clone in [`Activation::queue_events`].
    /// Whether no driver has touched the device since it was made or reset
    /// (status 0, not active): then it has no state worth a snapshot.
    pub fn is_pristine(&self) -> bool {
        self.status == 0 && !self.active
    }

    pub fn set_queue_events(&mut self, events: EventFd) {
        self.queue_events = Some(events);
    }

    /// The VM has stopped: let the device finish what the guest queued.
    pub fn shutdown(&mut self) {
        if self.active {
            let device = &mut self.device;
            if catch_unwind(AssertUnwindSafe(|| device.shutdown())).is_err() {
                log::warn(format_args!("a virtio device panicked while shutting down"));
            }
        }
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSettings> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn broken(&self, why: std::fmt::Arguments<'_>) {
        self.interrupt.set_needs_reset(why);
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let features_done = self.status & status::FEATURES_OK != 0;
        let driver_ok = self.status & status::DRIVER_OK != 0;
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES if !features_done => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM | regs::QUEUE_READY | regs::QUEUE_DESC_LOW..=0x0a4 if !driver_ok => {
                self.write_queue_register(offset, value)
            }
            regs::QUEUE_NOTIFY => self.notify(value),
            regs::INTERRUPT_ACK => self.interrupt.ack(value),
            regs::STATUS => self.write_status(value),
            regs::SHM_SEL => {}
            regs::LEGACY_QUEUE_PFN => {
                self.broken(format_args!("a legacy driver wrote QueuePFN; only virtio 1.x drivers are supported"))
            }
            _ => log::debug(format_args!(
                "virtio-mmio write of {value:#x} to {offset:#x} ignored (read-only, unknown, or too late in the handshake)"
            )),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let mem = self.mem.clone();
        let index = self.queue_sel;
        let Some(q) = self.selected_queue() else {
            log::debug(format_args!(
                "virtio-mmio write to queue {index}, which does not exist"
            ));
            return;
        };
        if q.ready && offset != regs::QUEUE_READY {
            log::debug(format_args!(
                "virtio-mmio: queue {index} is ready; change ignored"
            ));
            return;
        }
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            // The low 16 bits: the register is 32-bit, sizes are 16-bit.
            regs::QUEUE_NUM => q.size = u16::try_from(value).unwrap_or(0),
            0x080 => q.desc = low(q.desc),
            0x084 => q.desc = high(q.desc),
            0x090 => q.avail = low(q.avail),
            0x094 => q.avail = high(q.avail),
            0x0a0 => q.used = low(q.used),
            0x0a4 => q.used = high(q.used),
            regs::QUEUE_READY if value == 0 => q.ready = false,
            regs::QUEUE_READY => match q.build(&mem) {
                Ok(_) => q.ready = true,
                Err(why) => {
                    let why = format!("queue {index}: {why}");
                    self.broken(format_args!("{why}"));
                }
            },
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::debug(format_args!(
                "virtio-mmio: status {old:#x} -> {value:#x} clears bits; only a write of 0 may"
            ));
            return;
        }
        let new = value & !old;
        let mut value = value & !DEVICE_NEEDS_RESET;
        let needs = |bits: u32| value & bits == bits;
        if new & DRIVER != 0 && !needs(ACKNOWLEDGE)
            || new & FEATURES_OK != 0 && !needs(ACKNOWLEDGE | DRIVER)
            || new & DRIVER_OK != 0 && !needs(ACKNOWLEDGE | DRIVER | FEATURES_OK)
        {
            log::debug(format_args!(
                "virtio-mmio: status {old:#x} -> {value:#x} skips a step of the handshake"
            ));
            return;
        }
        if new & FEATURES_OK != 0 && !self.features_acceptable() {
            log::debug(format_args!(
                "virtio-mmio: driver features {:#x} refused (offered {:#x}; VERSION_1 required)",
                self.driver_features,
                self.offered_features()
            ));
            value &= !(FEATURES_OK | DRIVER_OK);
        }
        self.status = value;
        if new & DRIVER_OK != 0 && value & DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered_features() == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        if self.interrupt.needs_reset() {
            return;
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, settings) in self.queues.iter().enumerate() {
            if settings.ready {
                match settings.build(&self.mem) {
                    Ok(q) => queues.push(q),
                    Err(why) => {
                        self.broken(format_args!("queue {index}: {why}"));
                        return;
                    }
                }
            } else {
                match Queue::new(settings.max) {
                    Ok(q) => queues.push(q),
                    Err(e) => {
                        self.broken(format_args!("queue {index}: {e}"));
                        return;
                    }
                }
            }
        }
        let queue_events = match self.queue_events.as_ref().map(EventFd::try_clone) {
            None => None,
            Some(Ok(events)) => Some(events),
            Some(Err(e)) => {
                self.broken(format_args!("cannot clone the queue eventfd: {e}"));
                return;
            }
        };
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
            queue_events,
        };
        let device = &mut self.device;
        match catch_unwind(AssertUnwindSafe(|| device.activate(activation))) {
            Ok(Ok(())) => self.active = true,
            Ok(Err(e)) => self.broken(format_args!("activation failed: {e}")),
            Err(_) => self.broken(format_args!("the device panicked while activating")),
        }
    }

    fn notify(&mut self, value: u32) {
        if !self.active || self.interrupt.needs_reset() {
            log::debug(format_args!(
                "virtio-mmio: notify {value} while the device is not running"
            ));
            return;
        }
        let index = value as usize;
        if !self.queues.get(index).is_some_and(|q| q.ready) {
            self.broken(format_args!(
                "notify of queue {value}, which does not exist or is not ready"
            ));
            return;
        }
        let device = &mut self.device;
        if catch_unwind(AssertUnwindSafe(|| device.queue_notify(index))).is_err() {
            self.broken(format_args!(
                "the device panicked on a notify of queue {index}"
            ));
        }
    }

    fn reset(&mut self) {
        if self.active {
            let device = &mut self.device;
            if catch_unwind(AssertUnwindSafe(|| device.reset())).is_err() {
                log::warn(format_args!("a virtio device panicked while resetting"));
            }
        }
        self.active = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueSettings::new(q.max);
        }
        self.interrupt.clear();
    }
}

impl Device for MmioTransport {
    /// Only reached where the page is not mapped into the guest: the
    /// same bytes the mapped page would show.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.page().read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            let device = &mut self.device;
            if catch_unwind(AssertUnwindSafe(|| {
                device.write_config(offset - regs::CONFIG, data)
            }))
            .is_err()
            {
                self.broken(format_args!("the device panicked writing its config"));
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(bytes));
                self.render();
            }
            _ => log::debug(format_args!(
                "virtio-mmio: {}-byte write at {offset:#x} dropped; registers are 32-bit aligned",
                data.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::*;
    use crate::devices::virtio::ActivateError;
    use crate::devices::IrqLine;
    use std::sync::{Arc, Mutex};
    use virtio_queue::QueueOwnedT;

    /// What the fake device saw.
    #[derive(Default)]
    struct Seen {
        activations: usize,
        ready_queues: Vec<bool>,
        features: u64,
        notified: Vec<usize>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
        popped: usize,
    }

    /// A device with two queues (max 16 and 8) that pops chains when
    /// notified, and panics on a notify of queue 1.
    struct Fake {
        seen: Arc<Mutex<Seen>>,
        active: Option<Activation>,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 3 | 1 << 40
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            let mut seen = self.seen.lock().unwrap();
            seen.activations += 1;
            seen.ready_queues = a.queues.iter().map(|q| q.ready()).collect();
            seen.features = a.features;
            self.active = Some(a);
            Ok(())
        }
        fn queue_notify(&mut self, index: usize) {
            assert_ne!(index, 1, "fake device bug");
            let a = self.active.as_mut().unwrap();
            let mem = a.mem.clone();
            let q = &mut a.queues[index];
            let heads: Vec<u16> = q.iter(&mem).unwrap().map(|c| c.head_index()).collect();
            for h in &heads {
                q.add_used(&mem, *h, 0).unwrap();
            }
            a.interrupt.signal_used_queue();
            let mut seen = self.seen.lock().unwrap();
            seen.notified.push(index);
            seen.popped += heads.len();
        }
        fn reset(&mut self) {
            self.active = None;
            self.seen.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Seen>>, GuestMemory) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mem = test_memory();
        let fake = Fake {
            seen: seen.clone(),
            active: None,
        };
        let t = MmioTransport::new(Box::new(fake), mem.clone(), Interrupt::new(IrqLine::none()))
            .unwrap();
        (t, seen, mem)
    }

    const FEATURES: u64 = VIRTIO_F_VERSION_1 | 1 << 3;
    const ALL: u32 = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(read_reg(&mut t, regs::MAGIC), MAGIC_VALUE);
        assert_eq!(read_reg(&mut t, regs::VERSION), 2);
        assert_eq!(read_reg(&mut t, regs::DEVICE_ID), 42);
        assert_eq!(read_reg(&mut t, regs::VENDOR_ID), VENDOR_ID);
        write_reg(&mut t, regs::DEVICE_FEATURES_SEL, 0);
        assert_eq!(read_reg(&mut t, regs::DEVICE_FEATURES), 1 << 3);
        write_reg(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(read_reg(&mut t, regs::DEVICE_FEATURES), 1 | 1 << 8);
        write_reg(&mut t, regs::DEVICE_FEATURES_SEL, 2);
        assert_eq!(read_reg(&mut t, regs::DEVICE_FEATURES), 0);
        write_reg(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(read_reg(&mut t, regs::QUEUE_NUM_MAX), 8);
        write_reg(&mut t, regs::QUEUE_SEL, 2);
        assert_eq!(read_reg(&mut t, regs::QUEUE_NUM_MAX), 0, "no queue 2");
        assert_eq!(read_reg(&mut t, regs::SHM_LEN_LOW), u32::MAX, "no shm");
        // Config space, any width.
        let mut b = [0u8; 2];
        t.read(regs::CONFIG + 4, &mut b);
        assert_eq!(b, [4, 5]);
        t.write(regs::CONFIG + 1, &[9]);
    }

    #[test]
    fn full_handshake_activates_with_ready_queues_only() {
        let (mut t, seen, mem) = transport();
        assert_eq!(
            negotiate(&mut t, FEATURES),
            S_ACK | S_DRIVER | S_FEATURES_OK
        );
        DriverQueue::new(&mem, 0, 16).setup(&mut t);
        write_reg(&mut t, regs::QUEUE_SEL, 0);
        assert_eq!(read_reg(&mut t, regs::QUEUE_READY), 1);
        write_reg(&mut t, regs::STATUS, ALL);
        assert_eq!(read_reg(&mut t, regs::STATUS), ALL);
        let s = seen.lock().unwrap();
        assert_eq!(s.activations, 1);
        assert_eq!(s.ready_queues, vec![true, false]);
        assert_eq!(s.features, FEATURES);
    }

    #[test]
    fn legacy_and_unknown_features_are_refused() {
        let (mut t, seen, _) = transport();
        // No VERSION_1: a legacy driver.
        assert_eq!(negotiate(&mut t, 1 << 3), S_ACK | S_DRIVER);
        // A bit that was not offered.
        assert_eq!(
            negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5),
            S_ACK | S_DRIVER
        );
        // DRIVER_OK without FEATURES_OK does not activate.
        write_reg(&mut t, regs::STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
        assert_eq!(seen.lock().unwrap().activations, 0);
        // The legacy queue register marks the device broken.
        write_reg(&mut t, regs::LEGACY_QUEUE_PFN, 1);
        assert_ne!(read_reg(&mut t, regs::STATUS) & S_NEEDS_RESET, 0);
        // And a reset clears that.
        write_reg(&mut t, regs::STATUS, 0);
        assert_eq!(read_reg(&mut t, regs::STATUS), 0);
        assert_eq!(negotiate(&mut t, FEATURES) & S_FEATURES_OK, S_FEATURES_OK);
    }

    #[test]
    fn handshake_steps_cannot_be_skipped_or_undone() {
        let (mut t, seen, _) = transport();
        write_reg(
            &mut t,
            regs::STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        // All steps at once, but no features accepted: stops before FEATURES_OK.
        assert_eq!(read_reg(&mut t, regs::STATUS), S_ACK | S_DRIVER);
        assert_eq!(seen.lock().unwrap().activations, 0);
        write_reg(&mut t, regs::STATUS, 0);
        negotiate(&mut t, FEATURES);
        write_reg(&mut t, regs::STATUS, S_ACK);
        assert_eq!(
            read_reg(&mut t, regs::STATUS),
            S_ACK | S_DRIVER | S_FEATURES_OK
        );
        // Features are frozen after FEATURES_OK.
        write_reg(&mut t, regs::DRIVER_FEATURES_SEL, 0);
        write_reg(&mut t, regs::DRIVER_FEATURES, 0);
        write_reg(&mut t, regs::STATUS, ALL);
        assert_eq!(seen.lock().unwrap().features, FEATURES);
    }

    #[test]
    fn bad_queue_settings_mark_the_device_broken() {
        type Spoil = Box<dyn Fn(&mut MmioTransport)>;
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "size not a power of two",
                Box::new(|t| write_reg(t, regs::QUEUE_NUM, 12)),
            ),
            (
                "size above the maximum",
                Box::new(|t| write_reg(t, regs::QUEUE_NUM, 32)),
            ),
            ("size zero", Box::new(|t| write_reg(t, regs::QUEUE_NUM, 0))),
            (
                "size above 16 bits",
                Box::new(|t| write_reg(t, regs::QUEUE_NUM, 0x1_0010)),
            ),
            (
                "misaligned table",
                Box::new(|t| write_reg(t, regs::QUEUE_DESC_LOW, 0x1_0008)),
            ),
            (
                "rings outside RAM",
                Box::new(|t| write_reg(t, regs::QUEUE_USED_LOW + 4, 1)),
            ),
            (
                "table in the MMIO hole",
                Box::new(|t| write_reg(t, regs::QUEUE_DESC_LOW, 0xd000_0000)),
            ),
        ];
        for (what, spoil) in cases {
            let (mut t, seen, mem) = transport();
            negotiate(&mut t, FEATURES);
            let q = DriverQueue::new(&mem, 0, 16);
            q.setup(&mut t);
            write_reg(&mut t, regs::QUEUE_READY, 0);
            spoil(&mut t);
            write_reg(&mut t, regs::QUEUE_READY, 1);
            assert_eq!(read_reg(&mut t, regs::QUEUE_READY), 0, "{what}");
            assert_ne!(read_reg(&mut t, regs::STATUS) & S_NEEDS_RESET, 0, "{what}");
            write_reg(&mut t, regs::STATUS, ALL);
            assert_eq!(seen.lock().unwrap().activations, 0, "{what}");
        }
    }

    #[test]
    fn notify_reaches_the_device_and_interrupts() {
        let (mut t, seen, mem) = transport();
        negotiate(&mut t, FEATURES);
        let mut q = DriverQueue::new(&mem, 0, 16);
        q.setup(&mut t);
        write_reg(&mut t, regs::STATUS, ALL);
        q.add_out(&mem, b"abc");
        q.add_out(&mem, b"def");
        q.kick(&mut t);
        assert_eq!(q.used(&mem), vec![(0, 0), (1, 0)]);
        // Reading does not clear; an ACK that reaches the transport does
        // (in a VM, KVM absorbs an ACK of exactly 1 and the bit stays).
        assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 1);
        assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 1);
        assert_eq!(t.page().load(regs::INTERRUPT_STATUS), 1, "in the page");
        write_reg(&mut t, regs::INTERRUPT_ACK, 1);
        assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 0, "acked");
        q.add_out(&mem, b"ghi");
        q.kick(&mut t);
        assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 1);
        write_reg(&mut t, regs::INTERRUPT_ACK, 3);
        assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 0, "acked");
        assert_eq!(seen.lock().unwrap().notified, vec![0, 0]);
        // Queue registers are frozen while running.
        write_reg(&mut t, regs::QUEUE_SEL, 0);
        write_reg(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(read_reg(&mut t, regs::QUEUE_READY), 1);
    }

    #[test]
    fn notify_of_missing_unready_queue_or_a_panicking_device_breaks_it() {
        for bad in [7u32, 1, u32::MAX] {
            let (mut t, seen, mem) = transport();
            negotiate(&mut t, FEATURES);
            DriverQueue::new(&mem, 0, 16).setup(&mut t);
            if bad == 1 {
                // Queue 1 ready: the fake device panics on it.
                DriverQueue::new(&mem, 1, 8).setup(&mut t);
            }
            write_reg(&mut t, regs::STATUS, ALL);
            write_reg(&mut t, regs::QUEUE_NOTIFY, bad);
            assert_ne!(read_reg(&mut t, regs::STATUS) & S_NEEDS_RESET, 0, "{bad}");
            assert_ne!(
                read_reg(&mut t, regs::INTERRUPT_STATUS) & 2,
                0,
                "config irq"
            );
            // Further notifies are ignored until reset.
            write_reg(&mut t, regs::QUEUE_NOTIFY, 0);
            assert!(seen.lock().unwrap().notified.is_empty());
            write_reg(&mut t, regs::STATUS, 0);
            assert_eq!(seen.lock().unwrap().resets, 1);
            assert_eq!(read_reg(&mut t, regs::STATUS), 0);
            assert_eq!(read_reg(&mut t, regs::INTERRUPT_STATUS), 0);
        }
    }

    #[test]
    fn reset_allows_a_second_activation() {
        let (mut t, seen, mem) = transport();
        for round in 1..=2 {
            negotiate(&mut t, FEATURES);
            let mut q = DriverQueue::new(&mem, 0, 16);
            q.setup(&mut t);
            write_reg(&mut t, regs::STATUS, ALL);
            q.add_out(&mem, b"x");
            q.kick(&mut t);
            assert_eq!(q.used(&mem).len(), 1);
            assert_eq!(seen.lock().unwrap().activations, round);
            write_reg(&mut t, regs::STATUS, 0);
            write_reg(&mut t, regs::QUEUE_SEL, 0);
            assert_eq!(read_reg(&mut t, regs::QUEUE_READY), 0);
        }
        assert_eq!(seen.lock().unwrap().resets, 2);
    }

    #[test]
    fn every_register_the_driver_reads_is_in_the_page_after_each_write() {
        // What a guest sees through the mapped page, with no exit: the
        // page must already hold the answer when a write returns.
        let (mut t, _, mem) = transport();
        let page = t.page().clone();
        write_reg(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(page.load(regs::DEVICE_FEATURES), 1 | 1 << 8);
        write_reg(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(page.load(regs::QUEUE_NUM_MAX), 8);
        negotiate(&mut t, FEATURES);
        assert_eq!(page.load(regs::STATUS), S_ACK | S_DRIVER | S_FEATURES_OK);
        DriverQueue::new(&mem, 0, 16).setup(&mut t);
        write_reg(&mut t, regs::QUEUE_SEL, 0);
        assert_eq!(page.load(regs::QUEUE_READY), 1);
        // A worker thread marking the device broken shows at once, and
        // a later status write by the driver does not hide it.
        t.interrupt.set_needs_reset(format_args!("test"));
        assert_ne!(page.load(regs::STATUS) & S_NEEDS_RESET, 0);
        write_reg(&mut t, regs::STATUS, ALL);
        assert_ne!(page.load(regs::STATUS) & S_NEEDS_RESET, 0);
        assert_eq!(page.load(regs::INTERRUPT_STATUS) & 2, 2);
        write_reg(&mut t, regs::STATUS, 0);
        assert_eq!(page.load(regs::STATUS), 0);
        assert_eq!(page.load(regs::INTERRUPT_STATUS), 0);
        assert_eq!(page.load(regs::MAGIC), MAGIC_VALUE);
    }

    #[test]
    fn garbage_accesses_never_panic() {
        let (mut t, _, mem) = transport();
        negotiate(&mut t, FEATURES);
        DriverQueue::new(&mem, 0, 16).setup(&mut t);
        write_reg(&mut t, regs::STATUS, ALL);
        for offset in (0..0x200u64).step_by(1) {
            for width in [0usize, 1, 2, 3, 4, 8] {
                let mut b = vec![0u8; width];
                t.read(offset, &mut b);
                if offset != regs::STATUS {
                    t.write(offset, &vec![0xff; width]);
                }
            }
        }
        t.read(u64::MAX - 3, &mut [0u8; 4]);
        t.write(u64::MAX - 3, &[1, 2, 3, 4]);
    }
}

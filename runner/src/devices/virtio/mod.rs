//! virtio devices (virtio 1.x, split virtqueues) and their transport.
//!
//! A device implements [`VirtioDevice`]: its id, features, config space,
//! and what it does with its queues once the driver has set them up. The
//! transport ([`mmio::MmioTransport`], virtio-mmio version 2) owns the
//! register block and the handshake, builds `virtio_queue::Queue`s from
//! what the driver wrote, and hands them to the device in
//! [`VirtioDevice::activate`] together with guest memory and an
//! [`Interrupt`]. The console ([`console`]) is one device; virtio-fs plugs
//! in the same way.
//!
//! Invariants: nothing the guest writes panics or blocks the VMM forever;
//! a device that meets bad guest data calls [`Interrupt::set_needs_reset`]
//! and ignores its queues until the driver resets it; after
//! [`VirtioDevice::reset`] a device holds no queue, memory or interrupt
//! (any worker thread it ran has stopped).

pub mod chain;
pub mod console;
pub mod fs;
pub mod mmio;
#[cfg(test)]
pub(crate) mod testing;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::IrqLine;
use crate::acpi::VirtioMmioSlot;
use crate::memory::GuestMemory;
use crate::{layout, log};

/// `VIRTIO_F_VERSION_1`: the modern interface. The transport offers it for
/// every device and refuses drivers that do not accept it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device ids (virtio 1.2 §5).
pub mod device_id {
    /// virtio-console.
    pub const CONSOLE: u32 = 3;
    /// virtio-fs.
    pub const FS: u32 = 26;
}

/// Interrupt status bit: a queue has new used buffers.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

/// What a device is handed when the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest RAM.
    pub mem: GuestMemory,
    /// One queue per entry of [`VirtioDevice::queue_max_sizes`], in order.
    /// Queues the driver did not enable have `ready() == false`; ready
    /// queues were checked (size, alignment, rings inside RAM).
    pub queues: Vec<Queue>,
    /// How to notify the driver.
    pub interrupt: Interrupt,
    /// The features the driver accepted (a subset of the offered ones,
    /// always with [`VIRTIO_F_VERSION_1`]).
    pub features: u64,
    /// Signalled when the driver notifies any queue, if the transport has
    /// an ioeventfd on its notify register (then such notifies never reach
    /// [`VirtioDevice::queue_notify`]; the device should look at all its
    /// queues). `None`: notifies arrive through `queue_notify`.
    pub queue_events: Option<EventFd>,
}

/// A device refused to start with what the driver set up.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs was not enabled.
    #[error("the driver did not enable virtio queue {0}, which this device needs")]
    QueueNotReady(usize),
    /// The device could not start (e.g. its worker thread).
    #[error("the device could not start: {0}")]
    Device(String),
}

/// A virtio device behind a transport.
///
/// Calls come from the vCPU thread that touched the register block, with
/// the transport's lock held: `queue_notify` must not block for long (a
/// device that needs to should hand work to its own thread, and catch
/// panics there).
pub trait VirtioDevice: Send {
    /// The virtio device id ([`device_id`]).
    fn device_type(&self) -> u32;
    /// One entry per queue: its maximum size (a power of two ≤ 32768).
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits (the transport adds [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads device config space at `offset` (bytes past its end read 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (ignore what is read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver finished setup (`DRIVER_OK`): start using the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (ready, and `< queue count`).
    fn queue_notify(&mut self, index: usize);
    /// The driver reset the device: drop queues, memory and interrupt,
    /// stop any worker, and be ready for a new `activate`.
    fn reset(&mut self);
    /// The VM has stopped (no vCPU runs): finish buffers the guest already
    /// made available (e.g. flush output), then stop any worker.
    fn shutdown(&mut self) {}
}

/// The device side of one transport's interrupt: the interrupt status
/// register, the `DEVICE_NEEDS_RESET` flag and the GSI (an irqfd, edge
/// triggered, as the DSDT describes it). Cheap to clone; safe to use from
/// any thread.
#[derive(Clone)]
pub struct Interrupt(Arc<InterruptState>);

struct InterruptState {
    status: AtomicU32,
    needs_reset: AtomicBool,
    config_generation: AtomicU32,
    line: IrqLine,
}

impl Interrupt {
    /// An interrupt raising `line`.
    pub fn new(line: IrqLine) -> Self {
        Interrupt(Arc::new(InterruptState {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            config_generation: AtomicU32::new(0),
            line,
        }))
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Tells the driver that the config space changed.
    pub fn signal_config_change(&self) {
        self.0.config_generation.fetch_add(1, Ordering::AcqRel);
        self.raise(INT_CONFIG);
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET`) because of `why`,
    /// once until the next reset, and tells the driver.
    pub fn set_needs_reset(&self, why: std::fmt::Arguments<'_>) {
        if !self.0.needs_reset.swap(true, Ordering::AcqRel) {
            log::warn(format_args!(
                "virtio device needs a reset: {why} (a guest driver bug or a hostile guest)"
            ));
            self.raise(INT_CONFIG);
        }
    }

    /// Whether the device is marked broken.
    pub fn needs_reset(&self) -> bool {
        self.0.needs_reset.load(Ordering::Acquire)
    }

    fn raise(&self, bit: u32) {
        self.0.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.0.line.trigger() {
            log::debug(format_args!("virtio interrupt: {e}"));
        }
    }

    /// Reads the interrupt status register, which clears it: the driver
    /// has now seen these events. Linux's virtio-mmio driver reads it once
    /// per interrupt and acknowledges exactly what it read, so for it this
    /// is what the acknowledgement would do; it lets `vm.rs` leave
    /// InterruptACK writes to KVM (an ioeventfd nobody reads), and an
    /// interrupt costs the guest one exit to the VMM instead of two. A
    /// bit raised after the read stays set for the next interrupt.
    pub(crate) fn take_status(&self) -> u32 {
        self.0.status.swap(0, Ordering::AcqRel)
    }

    /// The driver acknowledged `bits` (only reached when no ioeventfd
    /// absorbs the register: the bits are clear already, see
    /// [`take_status`](Self::take_status)).
    pub(crate) fn ack(&self, bits: u32) {
        self.0.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The config generation register.
    pub(crate) fn config_generation(&self) -> u32 {
        self.0.config_generation.load(Ordering::Acquire)
    }

    /// Device reset: no pending interrupt, not broken.
    pub(crate) fn clear(&self) {
        self.0.status.store(0, Ordering::Release);
        self.0.needs_reset.store(false, Ordering::Release);
    }
}

/// The DSDT description of virtio-mmio slot `n` (its register block and
/// GSI from [`layout::virtio_mmio_slot`]). Invariant kept by `vm.rs`: a
/// slot is described iff a transport sits on the MMIO bus at its range.
pub fn slot(n: u32) -> VirtioMmioSlot {
    let (range, gsi) = layout::virtio_mmio_slot(n);
    VirtioMmioSlot {
        base: range.start,
        size: range.end - range.start,
        gsi,
    }
}

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
pub mod page;
#[cfg(test)]
pub(crate) mod testing;
pub mod worker;

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::IrqLine;
use crate::acpi::VirtioMmioSlot;
use crate::memory::GuestMemory;
use crate::{layout, log};
use mmio::regs;
use page::RegisterPage;

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
    /// The transport reads it once, when it is created, into the register
    /// page the guest reads: a device's config space must not change.
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
/// register, the `DEVICE_NEEDS_RESET` bit (both kept in the transport's
/// [`RegisterPage`], where the guest reads them) and the GSI (an irqfd,
/// edge triggered, as the DSDT describes it). Cheap to clone; safe to use
/// from any thread.
#[derive(Clone)]
pub struct Interrupt(Arc<InterruptState>);

struct InterruptState {
    page: Arc<RegisterPage>,
    line: IrqLine,
}

impl Interrupt {
    /// An interrupt raising `line`, with a fresh register page.
    pub fn new(line: IrqLine) -> Self {
        Interrupt(Arc::new(InterruptState {
            page: RegisterPage::new(),
            line,
        }))
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET`) because of `why`,
    /// once until the next reset, and tells the driver.
    pub fn set_needs_reset(&self, why: std::fmt::Arguments<'_>) {
        let old = self
            .0
            .page
            .set_bits(regs::STATUS, mmio::status::DEVICE_NEEDS_RESET);
        if old & mmio::status::DEVICE_NEEDS_RESET == 0 {
            log::warn(format_args!(
                "virtio device needs a reset: {why} (a guest driver bug or a hostile guest)"
            ));
            self.raise(INT_CONFIG);
        }
    }

    /// Whether the device is marked broken.
    pub fn needs_reset(&self) -> bool {
        self.0.page.load(regs::STATUS) & mmio::status::DEVICE_NEEDS_RESET != 0
    }

    /// Sets `bit` in InterruptStatus, then raises the line (so the driver,
    /// woken by the line, reads the bit).
    fn raise(&self, bit: u32) {
        self.0.page.set_bits(regs::INTERRUPT_STATUS, bit);
        if let Err(e) = self.0.line.trigger() {
            log::debug(format_args!("virtio interrupt: {e}"));
        }
    }

    /// The driver acknowledged `bits`. `vm.rs` lets KVM absorb the common
    /// acknowledgement, of [`INT_VRING`] alone (an ioeventfd matching that
    /// value, which nobody reads), so that bit stays set once raised: to
    /// Linux's `vm_interrupt` it means "look at the queues", which is what
    /// every interrupt we raise asks for anyway, and an interrupt then
    /// costs the guest no exit to the VMM at all. Any other value reaches
    /// here and clears what it names.
    pub(crate) fn ack(&self, bits: u32) {
        self.0.page.clear_bits(regs::INTERRUPT_STATUS, bits);
    }

    /// The register page this interrupt's status lives in.
    pub(crate) fn page(&self) -> &Arc<RegisterPage> {
        &self.0.page
    }

    /// Device reset: no pending interrupt, not broken.
    pub(crate) fn clear(&self) {
        self.0.page.store(regs::INTERRUPT_STATUS, 0);
        self.0
            .page
            .clear_bits(regs::STATUS, mmio::status::DEVICE_NEEDS_RESET);
    }
}

/// Serves `queue` in passes until the driver has made nothing more
/// available, as every device drains its queues: notifications off during
/// a pass (the driver need not notify while we drain), back on after it,
/// then one more look for buffers the driver added in between. `pass`
/// serves what is available and returns how many chains it took.
///
/// Only a driver whose available index goes backwards makes that last
/// look say "more" and the next pass then find nothing: a driver whose
/// used ring's flags lie on its available ring's index, say, which turning
/// notifications off and on rewrites. That ends the round, with
/// notifications on, instead of spinning forever.
pub fn serve_available<E: From<virtio_queue::Error>>(
    queue: &mut Queue,
    mem: &GuestMemory,
    mut pass: impl FnMut(&mut Queue) -> Result<usize, E>,
) -> Result<(), E> {
    let mut after_more = false;
    loop {
        queue.disable_notification(mem)?;
        let taken = pass(queue)?;
        if !queue.enable_notification(mem)? || (after_more && taken == 0) {
            return Ok(());
        }
        after_more = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use testing::{test_memory, DriverQueue};
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress};

    /// Serves `q` like a device, taking every available chain per pass;
    /// returns the heads taken and the passes run.
    fn serve(q: &mut Queue, mem: &GuestMemory) -> (Vec<u16>, usize) {
        let (mut heads, mut passes) = (Vec::new(), 0);
        serve_available(q, mem, |q| {
            passes += 1;
            assert!(passes < 100, "the round does not end");
            let chains: Vec<_> = q.iter(mem)?.map(|c| c.head_index()).collect();
            for &head in &chains {
                q.add_used(mem, head, 0)?;
            }
            heads.extend_from_slice(&chains);
            Ok::<_, virtio_queue::Error>(chains.len())
        })
        .unwrap();
        (heads, passes)
    }

    #[test]
    fn a_round_takes_every_chain_in_one_pass() {
        let mem = test_memory();
        let mut dq = DriverQueue::new(&mem, 0, 8);
        dq.add_out(&mem, b"a");
        dq.add_out(&mem, b"b");
        let mut q = dq.queue(&mem);
        assert_eq!(serve(&mut q, &mem), (vec![0, 1], 1));
        assert_eq!(dq.used(&mem), [(0, 0), (1, 0)]);
        // Nothing new: one empty pass.
        assert_eq!(serve(&mut q, &mem), (vec![], 1));
    }

    #[test]
    fn used_flags_on_the_available_index_end_the_round() {
        // The used ring 2 bytes before the available ring's index: turning
        // notifications off writes 1 there, on writes 0, so the index
        // flips between 1 and 0 and "more?" never says no.
        let mem = test_memory();
        let dq = DriverQueue::new(&mem, 0, 8);
        let avail = dq.avail_addr() + 0x100 - 2;
        let used = avail + 2;
        let mut q = Queue::new(8).unwrap();
        q.try_set_desc_table_address(GuestAddress(dq.desc_addr()))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
        q.try_set_used_ring_address(GuestAddress(used)).unwrap();
        q.set_ready(true);
        assert!(q.is_valid(&mem));
        // A zeroed descriptor 0: one empty chain, head 0.
        mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        let (heads, passes) = serve(&mut q, &mem);
        assert_eq!(heads, [0]);
        assert_eq!(passes, 2);
        // Notifications are on again.
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used)).unwrap(), 0);
    }
}

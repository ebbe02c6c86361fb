//! virtio-mmio transport: not implemented yet (next issue: virtio-fs and
//! virtio-console). The hook is in place: [`crate::layout::virtio_mmio_slot`]
//! gives each slot its register block and GSI, and `vm.rs` passes the slots
//! in use to [`crate::acpi::build`], which describes them in the DSDT as
//! `LNRO0005` devices. A transport will be a [`crate::bus::Device`] on the
//! MMIO bus at the slot's range, raising the slot's GSI through an irqfd.
//!
//! Invariant (for then): a slot appears in the DSDT iff a device sits on the
//! MMIO bus at its range.

use crate::acpi::VirtioMmioSlot;
use crate::layout;

/// The DSDT description of slot `n`.
pub fn slot(n: u32) -> VirtioMmioSlot {
    let (range, gsi) = layout::virtio_mmio_slot(n);
    VirtioMmioSlot {
        base: range.start,
        size: range.end - range.start,
        gsi,
    }
}

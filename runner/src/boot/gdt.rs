//! The boot GDT and identity page tables the VMM writes before the first
//! instruction, and the matching segment registers.
//!
//! Invariant: the selectors below index [`TABLE`]; `segment()` describes a
//! descriptor exactly as the CPU would load it from [`TABLE`], so the
//! hidden segment state KVM gets and the table in guest memory agree.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::layout;
use crate::memory::GuestMemory;

/// 64-bit code (the Linux 64-bit boot protocol wants `__BOOT_CS` = 0x10).
pub const CODE64: u16 = 0x10;
/// Flat read/write data (`__BOOT_DS` = 0x18).
pub const DATA: u16 = 0x18;
/// A busy 64-bit TSS (KVM wants a valid TR in protected mode).
pub const TSS: u16 = 0x20;
/// Flat 32-bit code (PVH entry).
pub const CODE32: u16 = 0x28;

/// The descriptors, indexed by selector / 8.
pub const TABLE: [u64; 6] = [
    0,
    0,
    descriptor(0xa09b, 0, 0xfffff), // CODE64: present, DPL0, exec/read, L, G
    descriptor(0xc093, 0, 0xfffff), // DATA: present, read/write, D/B, G
    descriptor(0x808b, 0, 0xfffff), // TSS: present, busy TSS, G
    descriptor(0xc09b, 0, 0xfffff), // CODE32: present, exec/read, D/B, G
];

/// Packs flags (access byte in bits 0..8, flags nibble in 12..16), base and
/// limit into a descriptor.
const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The segment register contents for `selector` as loaded from [`TABLE`].
pub fn segment(selector: u16) -> kvm_segment {
    let d = TABLE[usize::from(selector / 8)];
    let base = ((d >> 16) & 0x00ff_ffff) | ((d >> 32) & 0xff00_0000);
    let raw_limit = ((d & 0xffff) | ((d >> 32) & 0x000f_0000)) as u32;
    let g = ((d >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((d >> 40) & 0xf) as u8,
        present: ((d >> 47) & 1) as u8,
        dpl: ((d >> 45) & 3) as u8,
        db: ((d >> 54) & 1) as u8,
        s: ((d >> 44) & 1) as u8,
        l: ((d >> 53) & 1) as u8,
        g,
        avl: ((d >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes [`TABLE`] at [`layout::BOOT_GDT`] and an empty IDT.
pub fn write_tables(mem: &GuestMemory) -> Result<(), BootError> {
    for (i, d) in TABLE.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(layout::BOOT_GDT + 8 * i as u64))
            .map_err(|_| BootError::Memory("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT))
        .map_err(|_| BootError::Memory("IDT"))
}

/// Identity-maps the first GiB with 2 MiB pages: PML4[0] → PDPT[0] → PD.
pub fn write_page_tables(mem: &GuestMemory) -> Result<(), BootError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let err = |_| BootError::Memory("page tables");
    mem.write_obj(layout::PDPT | PRESENT_RW, GuestAddress(layout::PML4))
        .map_err(err)?;
    mem.write_obj(layout::PD | PRESENT_RW, GuestAddress(layout::PDPT))
        .map_err(err)?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PRESENT_RW | HUGE,
            GuestAddress(layout::PD + i * 8),
        )
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_decode_to_the_intended_segments() {
        let cs = segment(CODE64);
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.s), (1, 0, 0xb, 1, 1));
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
        let ds = segment(DATA);
        assert_eq!((ds.l, ds.db, ds.type_, ds.s), (0, 1, 0x3, 1));
        let tss = segment(TSS);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
        let cs32 = segment(CODE32);
        assert_eq!((cs32.l, cs32.db, cs32.type_), (0, 1, 0xb));
        assert_eq!(TABLE[2], 0x00af_9b00_0000_ffff);
        assert_eq!(TABLE[3], 0x00cf_9300_0000_ffff);
    }
}

//! The guest's physical address map, I/O ports and interrupt lines.
//!
//! Owns every guest address, port and IRQ constant; no other module writes
//! an address literal. Invariant: the fixed low-memory structures below
//! (GDT, page tables, zero page, command line, ACPI) do not overlap each
//! other, lie below [`EBDA_START`] or inside the reserved BIOS area, and stay
//! clear of the kernel load address (checked by the tests at the bottom).

use std::ops::Range;

/// Page size used for alignment of loaded images.
pub const PAGE_SIZE: u64 = 0x1000;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;

// ---- Low memory: boot structures written by the VMM ----

/// Boot GDT (see [`crate::boot::gdt`]).
pub const BOOT_GDT: u64 = 0x500;
/// Boot IDT (empty: limit 0 until the kernel loads its own).
pub const BOOT_IDT: u64 = 0x540;
/// PVH `hvm_start_info`.
pub const PVH_INFO: u64 = 0x6000;
/// PVH module list (one entry: the initrd), after the start info.
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map (follows the module list).
pub const PVH_MEMMAP: u64 = 0x6100;
/// Maximum PVH memory-map entries that fit before [`ZERO_PAGE`].
pub const PVH_MEMMAP_MAX: usize = ((ZERO_PAGE - PVH_MEMMAP) / 24) as usize;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 of the identity map used for the 64-bit entry.
pub const PML4: u64 = 0x9000;
/// The one PDPT.
pub const PDPT: u64 = 0xa000;
/// The one page directory (2 MiB pages identity-mapping the first GiB).
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Room reserved for the command line (the kernel may accept less; see
/// `setup_header.cmdline_size`).
pub const CMDLINE_MAX: usize = 0x10000;
/// Where hand-written real-mode test guests (and the doctor probe) start.
pub const RAW_GUEST_ENTRY: u64 = 0x1000;
/// Largest hand-written guest image.
pub const RAW_GUEST_MAX: usize = 0x4000;

/// The job window (`kestrel_initramfs::job`'s module docs): reserved in
/// the memory map, its magic written at every boot; a warm start's job
/// spec goes here instead of over COM2 when the init acknowledged it.
pub const JOB_WINDOW: u64 = kestrel_initramfs::job::JOB_WINDOW_ADDR;
/// Length of [`JOB_WINDOW`].
pub const JOB_WINDOW_LEN: u64 = kestrel_initramfs::job::JOB_WINDOW_LEN;

/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// RSDP (inside the BIOS area, where a legacy scan would also find it).
pub const ACPI_RSDP: u64 = 0xe0000;
/// ACPI tables follow the RSDP, up to [`HIMEM_START`].
pub const ACPI_TABLES: u64 = 0xe0100;
/// First byte after the legacy BIOS area.
pub const HIMEM_START: u64 = 0x10_0000;

/// Where the bzImage's protected-mode part is loaded (its `code32_start`
/// default). The kernel relocates itself while decompressing.
pub const KERNEL_LOAD: u64 = HIMEM_START;
/// Offset of the 64-bit entry point from the protected-mode load address.
pub const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;

// ---- The 32-bit MMIO hole ----

/// RAM stops here below 4 GiB; everything up to 4 GiB is device space.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the hole (start of high RAM).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio transport register blocks, one per slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio register block.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// How many virtio-mmio slots the layout reserves.
pub const VIRTIO_MMIO_SLOTS: u32 = 8;
/// The I/O APIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC of every vCPU.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) for real-mode emulation on Intel, and the EPT
/// identity-map page right after it; both in the hole, never in RAM.
pub const KVM_TSS: u64 = 0xfffb_c000;
/// See [`KVM_TSS`].
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_f000;

// ---- Ports ----

/// COM1: the kernel console.
pub const COM1_PORT: u16 = 0x3f8;
/// COM2: the status channel.
pub const COM2_PORT: u16 = 0x2f8;
/// Size of one 8250 register block.
pub const SERIAL_PORT_LEN: u16 = 8;
/// i8042 data port; the command port is [`I8042_CMD_PORT`].
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port: writing 0xfe resets the machine.
pub const I8042_CMD_PORT: u16 = 0x64;
/// Debug port of the hand-written test guests and the doctor probe
/// (registered only for raw guests).
pub const PROBE_PORT: u16 = 0xe9;

// ---- Interrupts (GSIs on the I/O APIC; 0..16 also reach the PIC) ----

/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// COM2 interrupt line.
pub const COM2_IRQ: u32 = 3;
/// First GSI handed to virtio-mmio slots (one each, above the ISA range).
pub const VIRTIO_MMIO_FIRST_IRQ: u32 = 16;
/// Number of I/O APIC pins KVM's in-kernel I/O APIC has.
pub const IOAPIC_PINS: u32 = 24;
/// Most vCPUs a VM may have (APIC ids are 8 bits; the I/O APIC takes the
/// id after the last vCPU).
pub const MAX_VCPUS: u8 = 64;

/// Guest RAM ranges for `memory_bytes` of memory: below the MMIO hole first,
/// the rest above 4 GiB.
pub fn ram_ranges(memory_bytes: u64) -> Vec<Range<u64>> {
    if memory_bytes <= MMIO_GAP_START {
        std::iter::once(0..memory_bytes).collect()
    } else {
        vec![
            0..MMIO_GAP_START,
            MMIO_GAP_END..MMIO_GAP_END + (memory_bytes - MMIO_GAP_START),
        ]
    }
}

/// The register block and GSI of virtio-mmio slot `n` (`n < VIRTIO_MMIO_SLOTS`).
pub fn virtio_mmio_slot(n: u32) -> (Range<u64>, u32) {
    let base = VIRTIO_MMIO_BASE + u64::from(n) * VIRTIO_MMIO_SIZE;
    (base..base + VIRTIO_MMIO_SIZE, VIRTIO_MMIO_FIRST_IRQ + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_structures_do_not_overlap() {
        let mut fixed: Vec<(&str, Range<u64>)> = vec![
            ("gdt", BOOT_GDT..BOOT_GDT + 8 * 6),
            ("idt", BOOT_IDT..BOOT_IDT + 8),
            (
                "raw",
                RAW_GUEST_ENTRY..RAW_GUEST_ENTRY + RAW_GUEST_MAX as u64,
            ),
            ("pvh", PVH_INFO..PVH_INFO + 56),
            ("modlist", PVH_MODLIST..PVH_MODLIST + 32),
            (
                "memmap",
                PVH_MEMMAP..PVH_MEMMAP + 24 * PVH_MEMMAP_MAX as u64,
            ),
            ("zero", ZERO_PAGE..ZERO_PAGE + PAGE_SIZE),
            ("stack", BOOT_STACK - 0x100..BOOT_STACK),
            ("pml4", PML4..PML4 + PAGE_SIZE),
            ("pdpt", PDPT..PDPT + PAGE_SIZE),
            ("pd", PD..PD + PAGE_SIZE),
            ("cmdline", CMDLINE..CMDLINE + CMDLINE_MAX as u64),
            ("job window", JOB_WINDOW..JOB_WINDOW + JOB_WINDOW_LEN),
            ("ebda", EBDA_START..ACPI_RSDP),
            ("acpi", ACPI_RSDP..HIMEM_START),
        ];
        fixed.sort_by_key(|(_, r)| r.start);
        for pair in fixed.windows(2) {
            assert!(
                pair[0].1.end <= pair[1].1.start,
                "{} overlaps {}",
                pair[0].0,
                pair[1].0
            );
        }
        assert!(fixed.iter().all(|(_, r)| r.end <= KERNEL_LOAD));
        assert!(CMDLINE + (CMDLINE_MAX as u64) <= EBDA_START);
    }

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(
            ram_ranges(512 * MIB),
            std::iter::once(0..512 * MIB).collect::<Vec<_>>()
        );
        let r = ram_ranges(4096 * MIB);
        assert_eq!(r[0], 0..MMIO_GAP_START);
        assert_eq!(r[1].start, MMIO_GAP_END);
        assert_eq!(r[1].end - r[1].start + r[0].end, 4096 * MIB);
    }

    #[test]
    fn virtio_slots_stay_in_the_hole_below_the_ioapic() {
        let (last, irq) = virtio_mmio_slot(VIRTIO_MMIO_SLOTS - 1);
        assert!(last.start >= MMIO_GAP_START && last.end <= IOAPIC_ADDR);
        assert!(irq < IOAPIC_PINS);
    }
}

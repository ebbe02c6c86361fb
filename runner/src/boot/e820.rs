//! The guest's physical memory map as the kernel sees it (e820 for the
//! zero page, the same entries for the PVH memory map).
//!
//! Invariant: entries are sorted, do not overlap, RAM entries cover exactly
//! the RAM given to KVM minus the job window and the legacy BIOS area, and
//! both are reserved (the BIOS area holds the ACPI tables; the job window,
//! `layout::JOB_WINDOW`, is never the kernel's and `/dev/mem` may read it).

use crate::layout;

/// Kind of an e820 range (values as in the e820 / PVH specifications).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved (EBDA, BIOS area with the ACPI tables).
    Reserved = 2,
}

/// One range of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: Kind,
}

/// The memory map for `memory_bytes` of RAM laid out by
/// [`layout::ram_ranges`].
pub fn map(memory_bytes: u64) -> Vec<Entry> {
    let window_end = layout::JOB_WINDOW + layout::JOB_WINDOW_LEN;
    let mut entries = vec![
        Entry {
            addr: 0,
            size: layout::JOB_WINDOW,
            kind: Kind::Ram,
        },
        Entry {
            addr: layout::JOB_WINDOW,
            size: layout::JOB_WINDOW_LEN,
            kind: Kind::Reserved,
        },
        Entry {
            addr: window_end,
            size: layout::EBDA_START - window_end,
            kind: Kind::Ram,
        },
        Entry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            kind: Kind::Reserved,
        },
    ];
    for range in layout::ram_ranges(memory_bytes) {
        let start = range.start.max(layout::HIMEM_START);
        if range.end > start {
            entries.push(Entry {
                addr: start,
                size: range.end - start,
                kind: Kind::Ram,
            });
        }
    }
    entries
}

/// End of RAM below the MMIO hole (exclusive).
pub fn low_ram_end(memory_bytes: u64) -> u64 {
    memory_bytes.min(layout::MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIB;

    fn check(memory: u64) {
        let map = map(memory);
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{map:?}");
        }
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(
            ram,
            memory - (layout::HIMEM_START - layout::EBDA_START) - layout::JOB_WINDOW_LEN
        );
        let window = map.iter().find(|e| e.addr == layout::JOB_WINDOW).unwrap();
        assert_eq!(
            (window.size, window.kind),
            (layout::JOB_WINDOW_LEN, Kind::Reserved)
        );
        let acpi = map
            .iter()
            .find(|e| e.addr <= layout::ACPI_RSDP && layout::ACPI_RSDP < e.addr + e.size)
            .unwrap();
        assert_eq!(acpi.kind, Kind::Reserved);
        assert!(map.iter().all(|e| e.kind != Kind::Ram
            || e.addr + e.size <= layout::MMIO_GAP_START
            || e.addr >= layout::MMIO_GAP_END));
    }

    #[test]
    fn maps_are_sorted_disjoint_and_complete() {
        for mib in [32, 512, 3072, 3073, 8192] {
            check(mib * MIB);
        }
    }

    #[test]
    fn large_memory_continues_above_4g() {
        let map = map(4096 * MIB);
        let last = map.last().unwrap();
        assert_eq!(last.addr, layout::MMIO_GAP_END);
        assert_eq!(last.size, 1024 * MIB);
        assert_eq!(low_ram_end(4096 * MIB), layout::MMIO_GAP_START);
    }
}

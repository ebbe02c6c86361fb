//! The guest's own page tables walked on guest memory (x86-64 long mode,
//! 4- and 5-level paging), independent of KVM's walker: for saying what
//! guest RAM holds at `rip` when KVM could not fetch an instruction.
//!
//! Invariant: every read goes through `GuestMemory` and is bounds-checked
//! there; a hostile page table (an entry pointing outside RAM, a loop)
//! ends the walk with an error after at most five reads, never a panic.

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
/// Bits 12–51 of an entry: the next table's (or the page's) frame.
const FRAME: u64 = 0x000f_ffff_ffff_f000;
const PAGE: u64 = 4096;

/// The vCPU's paging registers.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// Why a linear address has no guest-physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError {
    /// The vCPU is not in long mode with paging (this walker's only mode).
    NotLongMode,
    /// The entry at `level` (4 = PML4, 1 = PTE; 5 with LA57), number
    /// `index` of the table at guest-physical `table`, is not present.
    NotPresent {
        level: u8,
        entry: u64,
        table: u64,
        index: u64,
    },
    /// A table or the page lies outside guest RAM.
    OutsideRam(u64),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::NotLongMode => write!(f, "the vCPU is not in long mode with paging"),
            WalkError::NotPresent {
                level,
                entry,
                table,
                index,
            } => write!(
                f,
                "its level-{level} entry {entry:#x} (number {index} of the table at {table:#x}) is not present"
            ),
            WalkError::OutsideRam(gpa) => write!(f, "{gpa:#x} is outside guest RAM"),
        }
    }
}

/// The guest-physical address of the linear address `va`.
pub fn translate(mem: &GuestMemory, paging: &Paging, va: u64) -> Result<u64, WalkError> {
    if paging.cr0 & CR0_PG == 0 || paging.efer & EFER_LMA == 0 {
        return Err(WalkError::NotLongMode);
    }
    let levels: u8 = if paging.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    let mut table = paging.cr3 & FRAME;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (va >> shift) & 0x1ff;
        let at = table + index * 8;
        let entry: u64 = mem
            .read_obj(GuestAddress(at))
            .map_err(|_| WalkError::OutsideRam(at))?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent {
                level,
                entry,
                table,
                index,
            });
        }
        // A 1 GiB (level 3) or 2 MiB (level 2) page ends the walk.
        if entry & LARGE != 0 && (level == 2 || level == 3) {
            let size = 1u64 << shift;
            return Ok((entry & FRAME & !(size - 1)) | (va & (size - 1)));
        }
        table = entry & FRAME;
    }
    Ok(table | (va & (PAGE - 1)))
}

/// How many of the 512 entries of the table at `table` are present, and
/// the entries from `index - 2` to `index + 2`: whether a missing entry is
/// one hole in a populated table or a table that maps nothing.
pub fn table_summary(mem: &GuestMemory, table: u64, index: u64) -> String {
    let entry = |i: u64| -> Option<u64> { mem.read_obj(GuestAddress(table + i * 8)).ok() };
    let present = (0..512)
        .filter(|&i| entry(i).is_some_and(|e| e & PRESENT != 0))
        .count();
    let around: Vec<String> = (index.saturating_sub(2)..=(index + 2).min(511))
        .map(|i| match entry(i) {
            Some(e) => format!("[{i}] {e:#x}"),
            None => format!("[{i}] outside RAM"),
        })
        .collect();
    format!("{present} of 512 entries present, {}", around.join(" "))
}

/// `len` bytes at the linear address `va`, which may cross a page.
pub fn read(mem: &GuestMemory, paging: &Paging, va: u64, len: usize) -> Result<Vec<u8>, WalkError> {
    let mut out = Vec::with_capacity(len);
    let mut at = va;
    while out.len() < len {
        let gpa = translate(mem, paging, at)?;
        let in_page = (PAGE - (at & (PAGE - 1))) as usize;
        let n = in_page.min(len - out.len());
        let mut chunk = vec![0u8; n];
        mem.read_slice(&mut chunk, GuestAddress(gpa))
            .map_err(|_| WalkError::OutsideRam(gpa))?;
        out.extend_from_slice(&chunk);
        at = at.wrapping_add(n as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Paging = Paging {
        cr0: CR0_PG | 1,
        cr3: 0x1000,
        cr4: 0x20,
        efer: EFER_LMA | (1 << 8),
    };

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn put(mem: &GuestMemory, at: u64, value: u64) {
        mem.write_obj(value, GuestAddress(at)).unwrap();
    }

    /// Maps user page 0x7f00_0000_5000 → 0x20_0000 and 0x7f00_0000_6000 →
    /// 0x30_0000 through 4 KiB pages (tables at 0x1000–0x4000), and a
    /// 2 MiB page at 0x4000_0000 → 0x20_0000.
    fn tables(mem: &GuestMemory) {
        let va: u64 = 0x7f00_0000_5000;
        let (l4, l3, l2, l1) = (
            (va >> 39) & 0x1ff,
            (va >> 30) & 0x1ff,
            (va >> 21) & 0x1ff,
            (va >> 12) & 0x1ff,
        );
        put(mem, 0x1000 + l4 * 8, 0x2000 | 0x7);
        put(mem, 0x2000 + l3 * 8, 0x3000 | 0x7);
        put(mem, 0x3000 + l2 * 8, 0x4000 | 0x7);
        put(mem, 0x4000 + l1 * 8, 0x20_0000 | 0x5);
        put(mem, 0x4000 + (l1 + 1) * 8, 0x30_0000 | 0x5);
        // 0x4000_0000: PML4 0, PDPT 1, PD 0 (a 2 MiB page).
        put(mem, 0x1000, 0x5000 | 0x3);
        put(mem, 0x5000 + 8, 0x6000 | 0x3);
        put(mem, 0x6000, 0x20_0000 | LARGE | 0x3);
    }

    #[test]
    fn four_level_and_large_pages_translate() {
        let mem = memory();
        tables(&mem);
        assert_eq!(translate(&mem, &LONG, 0x7f00_0000_5c76), Ok(0x20_0c76));
        assert_eq!(translate(&mem, &LONG, 0x4001_2345), Ok(0x21_2345));
        // PCID bits in CR3 are not part of the table's address.
        let pcid = Paging {
            cr3: 0x1000 | 0x5,
            ..LONG
        };
        assert_eq!(translate(&mem, &pcid, 0x7f00_0000_5000), Ok(0x20_0000));
    }

    #[test]
    fn reads_cross_pages_and_holes_are_reported() {
        let mem = memory();
        tables(&mem);
        mem.write_slice(&[0x0f], GuestAddress(0x20_0fff)).unwrap();
        mem.write_slice(&[0xa2], GuestAddress(0x30_0000)).unwrap();
        assert_eq!(read(&mem, &LONG, 0x7f00_0000_5fff, 2), Ok(vec![0x0f, 0xa2]));
        // The page after 0x…6000 has no PTE.
        let l1 = (0x7f00_0000_7000u64 >> 12) & 0x1ff;
        assert_eq!(
            read(&mem, &LONG, 0x7f00_0000_6fff, 2),
            Err(WalkError::NotPresent {
                level: 1,
                entry: 0,
                table: 0x4000,
                index: l1,
            })
        );
        // Two present entries before the hole, none after it.
        assert_eq!(
            table_summary(&mem, 0x4000, l1),
            format!(
                "2 of 512 entries present, [{}] 0x200005 [{}] 0x300005 [{l1}] 0x0 [{}] 0x0 [{}] 0x0",
                l1 - 2,
                l1 - 1,
                l1 + 1,
                l1 + 2
            )
        );
        assert_eq!(
            translate(&mem, &LONG, 0x1234_5678_9000),
            Err(WalkError::NotPresent {
                level: 4,
                entry: 0,
                table: 0x1000,
                index: 0x24,
            })
        );
        let real_mode = Paging { cr0: 0, ..LONG };
        assert_eq!(translate(&mem, &real_mode, 0), Err(WalkError::NotLongMode));
    }

    #[test]
    fn hostile_tables_end_in_an_error() {
        let mem = memory();
        // A PML4 entry pointing far outside RAM.
        put(&mem, 0x1000, 0xff_ffff_f000 | 0x7);
        assert_eq!(
            translate(&mem, &LONG, 0x10),
            Err(WalkError::OutsideRam(0xff_ffff_f000))
        );
        // A table that points at itself at every level still ends after
        // four reads (the last "page" is the table).
        put(&mem, 0x1000, 0x1000 | 0x7);
        assert_eq!(translate(&mem, &LONG, 0x10), Ok(0x1010));
        // CR3 outside RAM.
        let far = Paging {
            cr3: 0x7000_0000,
            ..LONG
        };
        assert_eq!(
            translate(&mem, &far, 0),
            Err(WalkError::OutsideRam(0x7000_0000))
        );
    }

    #[test]
    fn five_level_paging_walks_five_tables() {
        let mem = memory();
        let la57 = Paging {
            cr4: 0x20 | CR4_LA57,
            ..LONG
        };
        // Every level's index 0: 0x1000 → 0x2000 → … → 0x5000 → page 0x20_0000.
        for (i, t) in [0x1000u64, 0x2000, 0x3000, 0x4000, 0x5000]
            .iter()
            .enumerate()
        {
            let next = if i == 4 { 0x20_0000 } else { t + 0x1000 };
            put(&mem, *t, next | 0x3);
        }
        assert_eq!(translate(&mem, &la57, 0x123), Ok(0x20_0123));
        // The same tables read as four levels end one table early.
        assert_eq!(translate(&mem, &LONG, 0x123), Ok(0x5123));
    }
}

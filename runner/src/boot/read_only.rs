//! The parts of an ELF vmlinux its kernel keeps read-only once booted.
//!
//! A warm start maps these guest pages from the snapshot file instead of
//! copying them (`memory::copy_snapshot`): the kernel's text and rodata
//! are never written after boot (`mark_rodata_ro`), so the guest's pages
//! stay shared with the file's page cache — shared between concurrent VMs
//! and, in the nested rig, between runs (whose TCG then keeps the code it
//! translated). Only a hint: a page the guest does write is copied on
//! write by the host kernel, so a wrong range costs speed, never a result.
//!
//! The ranges: each `PT_LOAD` without `PF_W`, cut to the pages its
//! allocated sections cover — the gaps between them (text/rodata) are
//! freed by the kernel at boot and reused as ordinary RAM. Without section
//! headers, the whole segment.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::layout::PAGE_SIZE;
use crate::vmlinux::le;

const PT_LOAD: u32 = 1;
const PF_W: u32 = 2;
const SHF_ALLOC: u64 = 2;
const SHT_NOBITS: u32 = 8;
/// More headers than any kernel has: a file claiming more is not one.
const MAX_HEADERS: usize = 4096;

/// The guest-physical page ranges of the kernel at `path` that it keeps
/// read-only, sorted and disjoint; empty when `path` is no ELF64 x86-64
/// file or cannot be read (the hint is then simply absent).
pub fn read_only_ranges(path: &Path) -> Vec<Range<u64>> {
    File::open(path)
        .ok()
        .and_then(|f| parse(&f))
        .unwrap_or_default()
}

/// A program header's fields that matter here.
struct Segment {
    kind: u32,
    flags: u32,
    vaddr: u64,
    paddr: u64,
    memsz: u64,
}

/// A section header's fields that matter here.
struct Section {
    kind: u32,
    flags: u64,
    addr: u64,
    size: u64,
}

fn parse(file: &impl FileExt) -> Option<Vec<Range<u64>>> {
    let u16_at = |b: &[u8], at| le::<2>(b, at).map(u16::from_le_bytes);
    let u32_at = |b: &[u8], at| le::<4>(b, at).map(u32::from_le_bytes);
    let u64_at = |b: &[u8], at| le::<8>(b, at).map(u64::from_le_bytes);
    let mut head = [0u8; 64];
    file.read_exact_at(&mut head, 0).ok()?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 || u16_at(&head, 0x12)? != 62 {
        return None;
    }
    let phoff = u64_at(&head, 0x20)?;
    let shoff = u64_at(&head, 0x28)?;
    let (phentsize, phnum) = (
        usize::from(u16_at(&head, 0x36)?),
        usize::from(u16_at(&head, 0x38)?),
    );
    let (shentsize, shnum) = (
        usize::from(u16_at(&head, 0x3a)?),
        usize::from(u16_at(&head, 0x3c)?),
    );
    let segments = table(file, phoff, phentsize, phnum, 56)?
        .chunks_exact(phentsize)
        .map(|p| {
            Some(Segment {
                kind: u32_at(p, 0)?,
                flags: u32_at(p, 4)?,
                vaddr: u64_at(p, 16)?,
                paddr: u64_at(p, 24)?,
                memsz: u64_at(p, 40)?,
            })
        })
        .collect::<Option<Vec<Segment>>>()?;
    let sections = if shoff == 0 || shnum == 0 {
        Vec::new()
    } else {
        table(file, shoff, shentsize, shnum, 64)?
            .chunks_exact(shentsize)
            .map(|s| {
                Some(Section {
                    kind: u32_at(s, 4)?,
                    flags: u64_at(s, 8)?,
                    addr: u64_at(s, 16)?,
                    size: u64_at(s, 32)?,
                })
            })
            .collect::<Option<Vec<Section>>>()?
    };
    let mut ranges = Vec::new();
    for seg in segments
        .iter()
        .filter(|s| s.kind == PT_LOAD && s.flags & PF_W == 0 && s.memsz > 0)
    {
        let seg_end = seg.vaddr.checked_add(seg.memsz)?;
        let to_phys = |v: u64| seg.paddr.checked_add(v - seg.vaddr);
        let inside: Vec<&Section> = sections
            .iter()
            .filter(|s| s.flags & SHF_ALLOC != 0 && s.kind != SHT_NOBITS && s.size > 0)
            .filter(|s| {
                s.addr >= seg.vaddr && s.addr.checked_add(s.size).is_some_and(|e| e <= seg_end)
            })
            .collect();
        if inside.is_empty() {
            ranges.push(page_range(seg.paddr, seg.paddr.checked_add(seg.memsz)?)?);
        }
        for s in inside {
            let start = to_phys(s.addr)?;
            ranges.push(page_range(start, start.checked_add(s.size)?)?);
        }
    }
    Some(merge(ranges))
}

/// `start..end` widened to whole pages.
fn page_range(start: u64, end: u64) -> Option<Range<u64>> {
    let mask = PAGE_SIZE - 1;
    Some(start & !mask..end.checked_add(mask)? & !mask)
}

/// Sorted, with overlapping or touching ranges joined.
fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// `count` headers of `size` bytes at `offset` (at least `min` bytes each).
fn table(
    file: &impl FileExt,
    offset: u64,
    size: usize,
    count: usize,
    min: usize,
) -> Option<Vec<u8>> {
    if size < min || count > MAX_HEADERS {
        return None;
    }
    let mut bytes = vec![0u8; size * count];
    file.read_exact_at(&mut bytes, offset).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// An ELF64 x86-64 header with `phdrs` (type, flags, vaddr, paddr,
    /// memsz) and `shdrs` (type, flags, addr, size).
    fn elf(phdrs: &[(u32, u32, u64, u64, u64)], shdrs: &[(u32, u64, u64, u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let shoff = phoff + 56 * phdrs.len() as u64;
        let mut f = vec![0u8; shoff as usize + 64 * shdrs.len()];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        f[0x28..0x30].copy_from_slice(&(if shdrs.is_empty() { 0 } else { shoff }).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&(shdrs.len() as u16).to_le_bytes());
        for (i, &(kind, flags, vaddr, paddr, memsz)) in phdrs.iter().enumerate() {
            let at = phoff as usize + 56 * i;
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            f[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        for (i, &(kind, flags, addr, size)) in shdrs.iter().enumerate() {
            let at = shoff as usize + 64 * i;
            f[at + 4..at + 8].copy_from_slice(&kind.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&flags.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        }
        f
    }

    fn ranges(bytes: &[u8]) -> Option<Vec<Range<u64>>> {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(bytes, 0).unwrap();
        parse(&file)
    }

    const V: u64 = 0xffff_ffff_8100_0000;

    #[test]
    fn text_and_rodata_without_the_gap_between_them() {
        // As Debian 6.1's vmlinux: R E segment = .text, a gap, .rodata and
        // more read-only sections; a RW segment after it.
        let image = elf(
            &[
                (PT_LOAD, 5, V, 16 * MIB, 0x182_2310),
                (PT_LOAD, 6, V + 0x1a0_0000, 0x2a0_0000, 0x61_8000),
            ],
            &[
                (1, 6, V, 0xe0_1ef2),              // .text
                (1, 3, V + 0x100_0000, 0x3d_e3f6), // .rodata (WA, still in R E)
                (1, 2, V + 0x13d_e400, 0x3ba0),    // .pci_fixup
                (1, 2, V + 0x182_1b38, 0x7d8),     // .BTF_ids, the last
                (1, 0, 0, 0x1000),                 // not allocated
                (1, 3, V + 0x1a0_0000, 0x24_5d40), // .data, in the RW segment
            ],
        );
        assert_eq!(
            ranges(&image).unwrap(),
            vec![
                0x100_0000..0x1e0_2000,
                0x200_0000..0x23e_2000,
                0x282_1000..0x282_3000
            ]
        );
    }

    #[test]
    fn without_sections_the_whole_read_only_segment() {
        let image = elf(
            &[
                (PT_LOAD, 5, V, 16 * MIB, 0x1800),
                (PT_LOAD, 6, V + MIB, 17 * MIB, 0x1000),
            ],
            &[],
        );
        assert_eq!(ranges(&image).unwrap(), vec![0x100_0000..0x100_2000]);
    }

    #[test]
    fn writable_only_or_foreign_files_give_nothing() {
        let rw = elf(&[(PT_LOAD, 6, V, 16 * MIB, 0x1000)], &[]);
        assert_eq!(ranges(&rw).unwrap(), Vec::<Range<u64>>::new());
        assert_eq!(ranges(b"MZ not an elf"), None);
        let mut arm = rw.clone();
        arm[0x12] = 183;
        assert_eq!(ranges(&arm), None);
        // Headers past the end of the file, absurd counts, overflow.
        let mut cut = elf(&[(PT_LOAD, 5, V, 16 * MIB, 0x1000)], &[(1, 6, V, 0x10)]);
        cut.truncate(100);
        assert_eq!(ranges(&cut), None);
        let mut many = rw.clone();
        many[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(ranges(&many), None);
        let wrap = elf(&[(PT_LOAD, 5, V, u64::MAX - 10, 0x1000)], &[]);
        assert_eq!(ranges(&wrap), None);
        assert!(read_only_ranges(Path::new("/nonexistent/vmlinux")).is_empty());
    }

    #[test]
    fn merging_joins_touching_and_overlapping_ranges() {
        assert_eq!(
            merge(vec![
                0x3000..0x4000,
                0x1000..0x2000,
                0x2000..0x2800,
                0x5000..0x5000
            ]),
            vec![0x1000..0x2800, 0x3000..0x4000]
        );
    }
}

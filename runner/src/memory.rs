//! Guest RAM: anonymous mappings laid out by [`crate::layout::ram_ranges`].
//!
//! Owns the creation of guest memory. Invariant: RAM never covers the MMIO
//! hole; every region is registered with KVM by `kvm::Kvm::create_vm`.
//! Each region starts at a 2 MiB-aligned host address when the host lets us
//! choose (as QEMU aligns its RAM), and asks for transparent huge pages:
//! KVM maps a guest page with a 2 MiB nested-paging entry only when guest
//! and host addresses agree modulo 2 MiB, and every 4 KiB entry costs the
//! guest a fault on first touch (expensive when KVM itself is nested).

use std::io::{Seek, SeekFrom};
use vm_memory::mmap::{MmapRegion, MmapRegionError};

use vm_memory::{
    Bytes as _, GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion as _, GuestRegionMmap,
};

use crate::layout;
use crate::log;

/// Guest memory as used everywhere in the VMM.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// The huge-page size whose alignment guest RAM gets.
const HUGE_PAGE: usize = 2 << 20;

/// Guest memory could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot allocate {mib} MiB of guest memory: {why}; ask for less with --memory")]
pub struct MemoryError {
    mib: u64,
    why: String,
}

impl MemoryError {
    /// Builds the error for `memory_bytes` of RAM from why it failed.
    fn for_bytes(memory_bytes: u64) -> impl Fn(String) -> MemoryError {
        move |why| MemoryError {
            mib: memory_bytes >> 20,
            why,
        }
    }
}

/// Allocates `memory_bytes` of guest RAM (zeroed, lazily backed).
pub fn create(memory_bytes: u64) -> Result<GuestMemory, MemoryError> {
    let fail = MemoryError::for_bytes(memory_bytes);
    let mut regions = Vec::new();
    for range in layout::ram_ranges(memory_bytes) {
        let len = (range.end - range.start) as usize;
        let mapping = aligned_mapping(len).map_err(|e| fail(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(range.start))
            .ok_or_else(|| fail("the region would overflow the address space".into()))?;
        regions.push(region);
    }
    let memory = GuestMemory::from_regions(regions).map_err(|e| fail(e.to_string()))?;
    for region in memory.iter() {
        let (addr, len) = (region.as_ptr(), region.len() as usize);
        if !(addr as usize).is_multiple_of(HUGE_PAGE) {
            log::debug(format_args!(
                "guest RAM at host {addr:p} is not 2 MiB-aligned: KVM maps it with 4 KiB pages"
            ));
        }
        // SAFETY: `addr..addr+len` is exactly one anonymous mapping this
        // process owns (the region's); MADV_HUGEPAGE only changes how the
        // kernel backs it, never its contents or permissions. A kernel
        // without THP answers EINVAL, which changes nothing.
        let _ = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    }
    Ok(memory)
}

/// How a restore fills guest RAM from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreRam {
    /// The non-zero extents copied into fresh RAM as [`create`] makes it
    /// (anonymous, huge pages where the kernel gives them), but for the
    /// kernel's read-only image, mapped private from the file: the default.
    Copy,
    /// The file's RAM mapped private (copy-on-write; 4 KiB pages, the
    /// guest's writes stay in this process): `KESTREL_RESTORE=map`.
    Map,
}

impl RestoreRam {
    /// `KESTREL_RESTORE=map` maps; anything else copies. Copying is the
    /// default since session 17: in the rig, restored two-vCPU guests on
    /// mapped RAM failed 5 of 304 runs (and two L1 kernels panicked in
    /// those runs) against 1 of 300 on copied RAM and 1 of ~480 QEMU-KVM
    /// restores (`cargo xtask stress --warm`, `runner/NOTES.md`).
    pub fn from_env() -> RestoreRam {
        if std::env::var_os("KESTREL_RESTORE").is_some_and(|v| v == "map") {
            RestoreRam::Map
        } else {
            RestoreRam::Copy
        }
    }
}

/// Guest RAM filled from a snapshot.
pub struct Restored {
    /// The RAM.
    pub memory: GuestMemory,
    /// Bytes of the snapshot's read-only ranges that are mapped from the
    /// file (the rest of them, if any, were copied).
    pub read_only_mapped: u64,
}

/// Guest RAM of `memory_bytes` with a snapshot's contents, filled as
/// [`RestoreRam::from_env`] says.
pub fn from_snapshot(
    loaded: &crate::snapshot::Loaded,
    memory_bytes: u64,
) -> Result<Restored, MemoryError> {
    from_snapshot_as(loaded, memory_bytes, RestoreRam::from_env())
}

/// [`from_snapshot`], filled as `how` says.
pub fn from_snapshot_as(
    loaded: &crate::snapshot::Loaded,
    memory_bytes: u64,
    how: RestoreRam,
) -> Result<Restored, MemoryError> {
    match how {
        RestoreRam::Copy => copy_snapshot(loaded, memory_bytes),
        RestoreRam::Map => Ok(Restored {
            memory: map_snapshot(loaded, memory_bytes)?,
            read_only_mapped: loaded.state.read_only.iter().map(|r| r.len).sum(),
        }),
    }
}

/// [`from_snapshot`] by copying, with two threads (each with its own open
/// file description, so their offsets do not mix) — but for the snapshot's
/// read-only ranges (the kernel's text and rodata), which are mapped
/// private from the file over fresh RAM: the guest never writes them, so
/// they stay the file's page-cache pages (shared by every VM restored from
/// it; in the rig their TCG translations outlive the run).
fn copy_snapshot(
    loaded: &crate::snapshot::Loaded,
    memory_bytes: u64,
) -> Result<Restored, MemoryError> {
    let fail = MemoryError::for_bytes(memory_bytes);
    let memory = create(memory_bytes)?;
    let mut mapped = Vec::new();
    for r in &loaded.state.read_only {
        if map_from_file(&memory, loaded, r).map_err(&fail)? {
            mapped.push(*r);
        }
    }
    let extents = &without(&loaded.state.extents, &mapped);
    let total: u64 = extents.iter().map(|e| e.len).sum();
    // The first extents up to half the bytes, and the rest.
    let mut sum = 0;
    let split = extents
        .iter()
        .position(|e| {
            sum += e.len;
            sum >= total / 2
        })
        .map_or(extents.len(), |i| i + 1);
    let (first, second) = extents.split_at(split);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&loaded.file);
    let copy = |part: &[crate::snapshot::Extent]| -> Result<(), String> {
        let mut file = std::fs::File::open(format!("/proc/self/fd/{fd}"))
            .map_err(|e| format!("cannot reopen the snapshot: {e}"))?;
        for e in part {
            file.seek(SeekFrom::Start(loaded.mem_offset + e.offset))
                .map_err(|err| err.to_string())?;
            memory
                .read_exact_volatile_from(GuestAddress(e.gpa), &mut file, e.len as usize)
                .map_err(|err| format!("cannot read the snapshot's RAM: {err}"))?;
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let other = scope.spawn(|| copy(second));
        let mine = copy(first);
        let theirs = other
            .join()
            .unwrap_or_else(|_| Err("the copying thread panicked".into()));
        mine.and(theirs)
    })
    .map_err(fail)?;
    Ok(Restored {
        memory,
        read_only_mapped: mapped.iter().map(|r| r.len).sum(),
    })
}

/// Maps the snapshot's `range` (whole pages inside one region of
/// `memory`, as [`crate::snapshot`] checked on opening) private from the
/// file over that part of `memory`; where the file cannot be mapped (a
/// file system without `mmap`), fresh anonymous memory again, and false:
/// the caller then copies the range.
fn map_from_file(
    memory: &GuestMemory,
    loaded: &crate::snapshot::Loaded,
    range: &crate::snapshot::Extent,
) -> Result<bool, String> {
    let offset = libc::off_t::try_from(loaded.mem_offset + range.offset)
        .map_err(|_| "a read-only range lies past any file offset")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&loaded.file);
    match map_over(memory, range, Some((fd, offset))) {
        Ok(()) => Ok(true),
        Err(why) => {
            log::debug(format_args!("{why}; copying it instead"));
            map_over(memory, range, None).map(|()| false)
        }
    }
}

/// Replaces the pages of `memory` under `range` by a private mapping of
/// `file` (descriptor, offset), or of fresh anonymous memory.
fn map_over(
    memory: &GuestMemory,
    range: &crate::snapshot::Extent,
    file: Option<(std::os::fd::RawFd, libc::off_t)>,
) -> Result<(), String> {
    let fits = memory
        .find_region(GuestAddress(range.gpa))
        .is_some_and(|r| range.gpa + range.len <= r.start_addr().0 + r.len());
    let host = memory
        .get_host_address(GuestAddress(range.gpa))
        .ok()
        .filter(|_| fits)
        .ok_or("a read-only range lies outside guest RAM")?;
    let (flags, fd, offset) = match file {
        Some((fd, offset)) => (libc::MAP_PRIVATE, fd, offset),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
    };
    // SAFETY: `host..host+len` lies inside one region of `memory`, an
    // anonymous mapping this process made in `create` and has shared with
    // no one yet (no vCPU, device or KVM memory slot exists); MAP_FIXED
    // replaces exactly those pages, and the region's owner later unmaps its
    // whole range, this part included. The mapping holds its own reference
    // to the file, which is only ever replaced by rename, never truncated.
    let mapped = unsafe {
        libc::mmap(
            host.cast(),
            range.len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
            fd,
            offset,
        )
    };
    if mapped == libc::MAP_FAILED || mapped != host.cast() {
        return Err(format!(
            "cannot map the snapshot's read-only RAM: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `extents` with every byte inside one of `holes` left out.
fn without(
    extents: &[crate::snapshot::Extent],
    holes: &[crate::snapshot::Extent],
) -> Vec<crate::snapshot::Extent> {
    let mut out = Vec::with_capacity(extents.len());
    for e in extents {
        let mut pieces = vec![*e];
        for h in holes {
            let (lo, hi) = (h.gpa, h.gpa + h.len);
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let end = p.gpa + p.len;
                    let before = (p.gpa < lo).then(|| crate::snapshot::Extent {
                        len: end.min(lo) - p.gpa,
                        ..p
                    });
                    let after = (end > hi).then(|| {
                        let from = p.gpa.max(hi);
                        crate::snapshot::Extent {
                            gpa: from,
                            offset: p.offset + (from - p.gpa),
                            len: end - from,
                        }
                    });
                    before.into_iter().chain(after)
                })
                .collect();
        }
        out.extend(pieces);
    }
    out
}

/// [`from_snapshot`] by mapping: each region of [`layout::ram_ranges`] from
/// its place in the file (the regions lie back to back from `mem_offset`).
fn map_snapshot(
    loaded: &crate::snapshot::Loaded,
    memory_bytes: u64,
) -> Result<GuestMemory, MemoryError> {
    let fail = MemoryError::for_bytes(memory_bytes);
    let mut regions = Vec::new();
    let mut offset = loaded.mem_offset;
    for range in layout::ram_ranges(memory_bytes) {
        let len = (range.end - range.start) as usize;
        let file = loaded
            .file
            .try_clone()
            .map_err(|e| fail(format!("cannot reopen the snapshot: {e}")))?;
        let mapping = MmapRegion::build(
            Some(vm_memory::FileOffset::new(file, offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| fail(format!("cannot map the snapshot: {e}")))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(range.start))
            .ok_or_else(|| fail("the region would overflow the address space".into()))?;
        regions.push(region);
        offset += len as u64;
    }
    GuestMemory::from_regions(regions).map_err(|e| fail(e.to_string()))
}

/// An anonymous mapping of `len` bytes (owned by vm-memory, unmapped when
/// the last user drops it), placed at a 2 MiB-aligned address when it can:
/// a `PROT_NONE` reservation of `len + 2 MiB` is made, the aligned hole of
/// `len` inside it released, the mapping made (Linux places it in the
/// highest gap that fits: that hole), and the rest of the reservation
/// released. Another thread mapping at the same moment only costs the
/// alignment, which [`create`] checks.
fn aligned_mapping(len: usize) -> Result<MmapRegion<()>, MmapRegionError> {
    let span = len + HUGE_PAGE;
    // SAFETY: a new private anonymous mapping with no access rights; it
    // touches no existing memory.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return MmapRegion::new(len);
    }
    let base = reserved as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let unmap = |from: usize, to: usize| {
        if to > from {
            // SAFETY: `from..to` lies inside the reservation made above,
            // which nothing else uses: releasing it cannot affect other memory.
            unsafe { libc::munmap(from as *mut libc::c_void, to - from) };
        }
    };
    unmap(start, start + len);
    let mapping = MmapRegion::new(len);
    unmap(base, start);
    unmap(start + len, base + span);
    mapping
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_ranges_are_cut_out_of_the_copied_extents() {
        use crate::snapshot::Extent;
        let e = |gpa, offset, len| Extent { gpa, offset, len };
        let extents = [
            e(0x1000, 0x1000, 0x4000),
            e(0x8000, 0x8000, 0x1000),
            e(0x1_0000, 0x9000, 0x3000),
        ];
        let holes = [
            e(0x2000, 0x2000, 0x1000),
            e(0x7000, 0x7000, 0x2000),
            e(0x1_1000, 0xa000, 0x1000),
        ];
        assert_eq!(
            without(&extents, &holes),
            [
                e(0x1000, 0x1000, 0x1000),
                e(0x3000, 0x3000, 0x2000),
                // 0x8000 lies wholly in a hole.
                e(0x1_0000, 0x9000, 0x1000),
                e(0x1_2000, 0xb000, 0x1000),
            ]
        );
        assert_eq!(without(&extents, &[]), extents);
    }

    #[test]
    fn ram_is_laid_out_and_aligned_for_huge_pages() {
        let memory = create(64 << 20).unwrap();
        let regions: Vec<_> = memory.iter().collect();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].len(), 64 << 20);
        assert_eq!(regions[0].start_addr(), GuestAddress(0));
        // Another test thread mapping at the same moment may take the hole
        // once; not five times in a row.
        let aligned = (0..5)
            .filter_map(|_| aligned_mapping(8 << 20).ok())
            .any(|m| (m.as_ptr() as usize).is_multiple_of(HUGE_PAGE));
        assert!(aligned, "no 2 MiB-aligned mapping in five tries");
        let big = create(layout::MMIO_GAP_START + (64 << 20)).unwrap();
        assert_eq!(big.iter().count(), 2);
        let err = create(1 << 62).unwrap_err().to_string();
        assert!(err.starts_with("cannot allocate"), "{err}");
    }
}

//! A bzImage's kernel, unpacked once on the host so the guest can enter it
//! through PVH instead of decompressing itself on every boot.
//!
//! A bzImage carries its kernel as a compressed ELF (`payload_offset` and
//! `payload_length` in the setup header, boot protocol 2.08+). Unpacked, that
//! ELF is what the in-guest decompressor would have produced; when it has a
//! PVH note (Debian's kernels and most builds: `CONFIG_PVH=y`) kestrel loads
//! it directly and jumps to the PVH entry: no decompression, no relocation
//! pass, no real-mode setup, in the guest.
//!
//! Cache: `<cache>/vmlinux-<key>-<size>.elf`, key = hash of the bzImage's
//! path, device, inode, size and mtime (as the initramfs cache keys its
//! inputs); a use marks the entry (at most hourly), and a write keeps only the
//! [`CACHE_MAX`] most recently used. Invariants: an entry appears complete
//! or not at all (written to a temporary name, then renamed); an entry whose
//! size differs from its name is ignored and rewritten; any failure here
//! means the bzImage is booted as it is, never a failed run.

use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Oldest boot protocol with `payload_offset`/`payload_length`.
const PROTOCOL_PAYLOAD: u16 = 0x0208;
/// Bumped when the cached file's layout changes.
const FORMAT: u32 = 1;
/// lz4's legacy frame magic (`lz4 -l`, what the kernel's build uses).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Uncompressed size of every legacy-frame block but the last.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Cache entries kept (a bisection builds a new kernel per step).
pub const CACHE_MAX: usize = 8;
/// Largest unpacked kernel accepted (a corrupt payload must not eat memory).
const MAX_VMLINUX: u64 = 1 << 30;

/// Why a bzImage is booted as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotUnpacked(pub String);

/// The payload's compression, by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `CONFIG_KERNEL_GZIP`.
    Gzip,
    /// `CONFIG_KERNEL_XZ`.
    Xz,
    /// `CONFIG_KERNEL_ZSTD` (Debian 6.12 and later).
    Zstd,
    /// `CONFIG_KERNEL_LZ4` (Debian 6.1): lz4's legacy frame.
    Lz4,
}

impl Compression {
    /// Recognises the payload's first bytes; `Err` names a format kestrel
    /// does not unpack (lzo, bzip2, lzma).
    pub fn of(payload: &[u8]) -> Result<Compression, NotUnpacked> {
        if payload.starts_with(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Ok(Compression::Xz)
        } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Ok(Compression::Lz4)
        } else {
            let head: Vec<String> = payload.iter().take(4).map(|b| format!("{b:02x}")).collect();
            Err(NotUnpacked(format!(
                "the payload's compression (magic {}) is not gzip, xz or zstd",
                head.join(" ")
            )))
        }
    }
}

/// The compressed payload of a bzImage, from its setup header.
pub fn payload(bz: &[u8]) -> Result<&[u8], NotUnpacked> {
    let u16_at = |at: usize| le::<2>(bz, at).map(u16::from_le_bytes);
    let u32_at = |at: usize| le::<4>(bz, at).map(u32::from_le_bytes);
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err(NotUnpacked("not a bzImage".into()));
    }
    let version = u16_at(0x206).unwrap_or(0);
    if version < PROTOCOL_PAYLOAD {
        return Err(NotUnpacked(format!(
            "boot protocol {version:#x} has no payload fields"
        )));
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let (Some(offset), Some(length)) = (u32_at(0x248), u32_at(0x24c)) else {
        return Err(NotUnpacked("truncated setup header".into()));
    };
    let start = (setup_sects + 1) * 512 + offset as usize;
    bz.get(start..start.saturating_add(length as usize))
        .ok_or_else(|| NotUnpacked("the payload lies outside the file".into()))
}

/// Decompresses `payload` into the ELF vmlinux (at most [`MAX_VMLINUX`]).
pub fn unpack(payload: &[u8]) -> Result<Vec<u8>, NotUnpacked> {
    let fail =
        |e: &dyn std::fmt::Display| NotUnpacked(format!("cannot decompress the payload: {e}"));
    let mut out = Vec::new();
    // The payload is followed by the relocation table and the decompressed
    // size (le32); a decoder stops at its stream's end.
    match Compression::of(payload)? {
        Compression::Gzip => {
            flate2::read::GzDecoder::new(payload)
                .take(MAX_VMLINUX)
                .read_to_end(&mut out)
                .map_err(|e| fail(&e))?;
        }
        Compression::Xz => {
            lzma_rs::xz_decompress(&mut &payload[..], &mut out).map_err(|e| fail(&e))?;
        }
        Compression::Lz4 => out = unlz4_legacy(payload).map_err(|e| fail(&e))?,
        Compression::Zstd => {
            let mut input = payload;
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| fail(&e))?;
            decoder
                .take(MAX_VMLINUX)
                .read_to_end(&mut out)
                .map_err(|e| fail(&e))?;
        }
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(NotUnpacked(
            "the unpacked payload is not an ELF vmlinux".into(),
        ));
    }
    if out.len() as u64 >= MAX_VMLINUX {
        return Err(NotUnpacked(
            "the unpacked payload is larger than 1 GiB".into(),
        ));
    }
    Ok(out)
}

/// Decodes lz4's legacy frame as the kernel's `unlz4` does: the magic, then
/// blocks of (le32 compressed size, LZ4 block) that each unpack to at most
/// 8 MiB; a repeated magic starts a concatenated frame. What follows the
/// last block (the build's le32 decompressed size) is not a block: a size
/// larger than what is left ends the stream.
fn unlz4_legacy(payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut at = 4;
    while let Some(word) = payload.get(at..at + 4) {
        let size = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        at += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let size = size as usize;
        let Some(block) = payload.get(at..at.saturating_add(size)) else {
            break;
        };
        let start = out.len();
        if start as u64 + LZ4_LEGACY_BLOCK as u64 > MAX_VMLINUX {
            return Err("more than 1 GiB".into());
        }
        out.resize(start + LZ4_LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[start..])
            .map_err(|e| e.to_string())?;
        out.truncate(start + n);
        at += size;
    }
    Ok(out)
}

/// Whether the ELF image carries a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).
pub fn has_pvh_note(elf: &[u8]) -> bool {
    pvh_entry(elf).is_some()
}

/// The PVH entry address from the ELF's PT_NOTE segments.
pub fn pvh_entry(elf: &[u8]) -> Option<u32> {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    if elf.get(4) != Some(&2) {
        return None; // not ELFCLASS64
    }
    let phoff = usize::try_from(le::<8>(elf, 0x20).map(u64::from_le_bytes)?).ok()?;
    let phentsize = usize::from(le::<2>(elf, 0x36).map(u16::from_le_bytes)?);
    let phnum = usize::from(le::<2>(elf, 0x38).map(u16::from_le_bytes)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if le::<4>(elf, ph).map(u32::from_le_bytes)? != PT_NOTE {
            continue;
        }
        let start =
            usize::try_from(le::<8>(elf, ph.checked_add(8)?).map(u64::from_le_bytes)?).ok()?;
        let size =
            usize::try_from(le::<8>(elf, ph.checked_add(32)?).map(u64::from_le_bytes)?).ok()?;
        let notes = elf.get(start..start.checked_add(size)?)?;
        let word = |at: usize| le::<4>(notes, at).map(u32::from_le_bytes);
        let mut at = 0usize;
        while at.checked_add(12)? <= notes.len() {
            let (namesz, descsz, kind) =
                (word(at)? as usize, word(at + 4)? as usize, word(at + 8)?);
            let name_at = at + 12;
            let desc_at = name_at.checked_add(namesz.checked_next_multiple_of(4)?)?;
            let name = notes.get(name_at..name_at.checked_add(namesz)?)?;
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") && descsz >= 4 {
                return word(desc_at);
            }
            at = desc_at.checked_add(descsz.checked_next_multiple_of(4)?)?;
        }
    }
    None
}

/// `N` bytes of `data` at `at`, if they are all there.
pub(crate) fn le<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The cache file for `bzimage` in `dir` (before the size is known: the
/// name's prefix).
fn key(bzimage: &Path) -> Result<String, NotUnpacked> {
    let meta = std::fs::metadata(bzimage)
        .map_err(|e| NotUnpacked(format!("cannot stat {}: {e}", bzimage.display())))?;
    let mut h = DefaultHasher::new();
    FORMAT.hash(&mut h);
    bzimage.hash(&mut h);
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
        .hash(&mut h);
    Ok(format!("vmlinux-{:016x}-", h.finish()))
}

/// A complete cache entry for `prefix` in `dir`, if one exists.
fn lookup(dir: &Path, prefix: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some(size) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.strip_suffix(".elf"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if entry.metadata().is_ok_and(|m| m.len() == size) {
            crate::initrd::mark_used(&path);
            return Some(path);
        }
        // Truncated or overwritten: drop it, a fresh one is written below.
        let _ = std::fs::remove_file(&path);
    }
    None
}

/// The unpacked, PVH-capable vmlinux of `bzimage`, from the cache in `dir`
/// or made now (and cached). `Err` says why the bzImage must be booted as it
/// is.
pub fn pvh_vmlinux(bzimage: &Path, dir: &Path) -> Result<PathBuf, NotUnpacked> {
    let prefix = key(bzimage)?;
    if let Some(path) = lookup(dir, &prefix) {
        return Ok(path);
    }
    let mut file = File::open(bzimage)
        .map_err(|e| NotUnpacked(format!("cannot read {}: {e}", bzimage.display())))?;
    let mut bz = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bz))
        .map_err(|e| NotUnpacked(format!("cannot read {}: {e}", bzimage.display())))?;
    let elf = unpack(payload(&bz)?)?;
    if !has_pvh_note(&elf) {
        return Err(NotUnpacked(
            "the kernel has no PVH entry (CONFIG_PVH is off)".into(),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| NotUnpacked(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("{prefix}{}.elf", elf.len()));
    let tmp = dir.join(format!(".{prefix}{}.{}.tmp", elf.len(), std::process::id()));
    std::fs::write(&tmp, &elf)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            NotUnpacked(format!("cannot write {}: {e}", path.display()))
        })?;
    crate::initrd::prune_cache(dir, &path, ("vmlinux-", ".elf"), CACHE_MAX, None);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 with one PT_NOTE segment holding a PVH entry note.
    pub(crate) fn fake_pvh_elf(entry: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x12] = 62;
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
        let note_at = elf.len() as u64;
        let ph = 0x40;
        elf[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        elf[ph + 8..ph + 16].copy_from_slice(&note_at.to_le_bytes());
        elf[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend_from_slice(&note);
        elf
    }

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 1u8;
        let mut bz = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        bz[0x1f1] = setup_sects;
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let offset = 0x100u32;
        bz[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&vec![0xcc; offset as usize]);
        bz.extend_from_slice(payload);
        // What a real bzImage appends: relocations, then the size.
        bz.extend_from_slice(&[0u8; 16]);
        bz
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// lz4's legacy frame of `data`, cut into `block`-byte blocks (the real
    /// format uses 8 MiB), with a second magic in the middle and the build's
    /// trailing size word.
    fn lz4_legacy(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for (i, chunk) in data.chunks(block).enumerate() {
            if i == 1 {
                out.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
            }
            let packed = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            out.extend_from_slice(&packed);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn lz4_legacy_frames_unpack_and_bad_blocks_are_errors() {
        let data: Vec<u8> = (0..5000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        assert_eq!(unlz4_legacy(&lz4_legacy(&data, 3000)).unwrap(), data);
        let mut bad = lz4_legacy(&data, 3000);
        bad[10] ^= 0xff;
        bad[12] ^= 0xff;
        assert!(unlz4_legacy(&bad).map_or(true, |d| d != data));
        assert_eq!(unlz4_legacy(&LZ4_LEGACY_MAGIC.to_le_bytes()).unwrap(), b"");
    }

    #[test]
    fn pvh_notes_are_found_or_not() {
        assert_eq!(pvh_entry(&fake_pvh_elf(0x1000_abcd)), Some(0x1000_abcd));
        let mut other = fake_pvh_elf(5);
        let kind_at = other.len() - 12;
        other[kind_at..kind_at + 4].copy_from_slice(&17u32.to_le_bytes());
        assert_eq!(pvh_entry(&other), None);
        assert_eq!(pvh_entry(b"\x7fELF"), None);
        let mut bogus = fake_pvh_elf(5);
        bogus[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&bogus), None, "a wild phoff is no note, no panic");
        let mut bogus = fake_pvh_elf(5);
        let size_at = 0x40 + 32;
        bogus[size_at..size_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&bogus), None, "a wild note size");
        let mut bogus = fake_pvh_elf(5);
        let namesz_at = 0x40 + 0x38;
        bogus[namesz_at..namesz_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&bogus), None, "a wild name size");
        // Every truncation of a good image: no answer or the right one.
        let good = fake_pvh_elf(7);
        for n in 0..good.len() {
            assert_ne!(pvh_entry(&good[..n]), Some(0));
        }
    }

    #[test]
    fn payloads_of_every_supported_compression_unpack() {
        let elf = fake_pvh_elf(0x0100_0000);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&elf).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut &elf[..], &mut out).unwrap();
            out
        };
        for (packed, kind) in [
            (gz, Compression::Gzip),
            (xz, Compression::Xz),
            (zstd(&elf), Compression::Zstd),
            (lz4_legacy(&elf, 100), Compression::Lz4),
        ] {
            let bz = fake_bzimage(&packed);
            let payload = payload(&bz).unwrap();
            assert_eq!(Compression::of(payload), Ok(kind));
            assert_eq!(unpack(payload).unwrap(), elf, "{kind:?}");
        }
        let lzo = fake_bzimage(&[0x89, 0x4c, 0x5a, 0x4f, 0, 0]);
        let err = unpack(payload(&lzo).unwrap()).unwrap_err();
        assert!(err.0.contains("89 4c 5a 4f"), "{err:?}");
        let not_elf = fake_bzimage(&zstd(b"just text"));
        assert!(unpack(payload(&not_elf).unwrap()).is_err());
    }

    #[test]
    fn bad_headers_are_refused_not_panicked_on() {
        assert!(payload(b"short").is_err());
        let mut bz = fake_bzimage(b"x");
        bz[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(payload(&bz).unwrap_err().0.contains("0x206"));
        let mut bz = fake_bzimage(b"x");
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload(&bz).is_err());
    }

    #[test]
    fn cache_entries_are_made_once_and_replaced_when_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let bzimage = dir.path().join("bzImage");
        let elf = fake_pvh_elf(0x0100_0000);
        std::fs::write(&bzimage, fake_bzimage(&zstd(&elf))).unwrap();
        let cache = dir.path().join("cache");
        let first = pvh_vmlinux(&bzimage, &cache).unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), elf);
        let made = std::fs::metadata(&first).unwrap().ino();
        let again = pvh_vmlinux(&bzimage, &cache).unwrap();
        assert_eq!(again, first);
        assert_eq!(
            std::fs::metadata(&again).unwrap().ino(),
            made,
            "reused, not rewritten"
        );
        // A truncated entry is not used; a complete one takes its place.
        std::fs::write(&first, &elf[..10]).unwrap();
        let fixed = pvh_vmlinux(&bzimage, &cache).unwrap();
        assert_eq!(std::fs::read(&fixed).unwrap(), elf);
        let names: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary or stale files left");
        // A kernel without the note is booted as a bzImage.
        let mut no_note = elf.clone();
        let kind_at = no_note.len() - 12;
        no_note[kind_at..kind_at + 4].copy_from_slice(&1u32.to_le_bytes());
        let plain = dir.path().join("plain");
        std::fs::write(&plain, fake_bzimage(&zstd(&no_note))).unwrap();
        assert!(pvh_vmlinux(&plain, &cache)
            .unwrap_err()
            .0
            .contains("CONFIG_PVH"));
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let mut made = Vec::new();
        for i in 0..CACHE_MAX + 3 {
            let bzimage = dir.path().join(format!("bzImage-{i}"));
            let elf = fake_pvh_elf(0x0100_0000 + i as u32);
            std::fs::write(&bzimage, fake_bzimage(&zstd(&elf))).unwrap();
            let path = pvh_vmlinux(&bzimage, &cache).unwrap();
            // Distinct, ordered use times without waiting for the clock.
            let when = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_000_000 + i as u64);
            File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
            made.push(path);
        }
        let left: Vec<_> = made.iter().filter(|p| p.exists()).collect();
        assert_eq!(left.len(), CACHE_MAX);
        assert!(made.last().unwrap().exists() && !made[0].exists());
    }
}

//! VM snapshots for warm starts (`kestrel run --warm`).
//!
//! A warm run boots kestrel's base initramfs without a job archive: the
//! init mounts the basics, says `KESTREL-READY` on COM2 and waits there for
//! its job. At that moment (before any virtio driver has touched a device,
//! so no device but the two UARTs has state) the VM is paused and saved
//! into one file; this run and every later run with the same [`Key`]
//! continue from it and hand the job over COM2.
//!
//! File layout (`<snapshot dir>/<key>.snap`, written to a temporary name
//! and renamed, so a reader sees a whole file or none):
//! ```text
//! 0    magic "KSTRLSNP", format u32, state length u32, state checksum u64,
//!      memory offset u64, memory length u64          (little-endian)
//! 64   state: key, TSC kHz, guest RAM size, VM state (PIT, kvmclock, PICs,
//!      IOAPIC), both UARTs, each vCPU (MP state, registers, XSAVE, XCRs,
//!      debug registers, LAPIC, events, MSRs), the non-zero RAM extents,
//!      the kernel's read-only ranges
//! off  guest RAM, regions back to back, holes where RAM is zero (sparse)
//! ```
//! Invariants: a file whose magic, format, checksum, key or length does
//! not match is never restored (the caller boots cold and rewrites it);
//! a restore copies the file's RAM into fresh memory but for the kernel's
//! read-only image, which it maps private (with `KESTREL_RESTORE=map`,
//! all of RAM is mapped private, copy-on-write), so every restore
//! starts from the identical state and nothing writes the file back (a
//! file is only ever replaced by rename or unlinked, never truncated in
//! place, so a mapping never loses its pages); the only device state
//! restored is the UARTs', because a snapshot is refused while any virtio
//! device is past reset.
//!
//! Copy or map (`memory::RestoreRam`): copying the ~67 MiB of non-zero
//! extents into fresh huge-page RAM costs 220–450 ms up front in the rig;
//! a private file mapping has 4 KiB pages, so every page the guest touches
//! is a nested-paging fault and its first write a copy-on-write break.
//! Session 7 measured mapping faster (warm `/bin/true` ~1.0 s against
//! ~1.3 s, the suite 51.7 s against 59.2 s), but session 17's side-by-side
//! `cargo xtask stress --warm` (2 vCPUs, beside QEMU-KVM's own restores)
//! lost 5 of 304 mapped restores and two L1 kernels, against 1 of 300
//! copied — and the copied runs were no slower there — so RAM is copied
//! (`KESTREL_RESTORE=map` maps). Mapping a file on L1's virtio-fs share
//! was much slower still (every fault a FUSE read): the rig keeps
//! snapshots in L1's tmpfs.
//!
//! Since format 3 the state lists the kernel's read-only ranges (its text
//! and rodata, [`crate::boot::read_only_ranges`]), and a copying restore
//! maps just those from the file: the guest never writes them, so there
//! is no copy-on-write break to fear, 22 of Debian 6.1's 66 MiB are not
//! copied, and the pages stay the file's page cache from run to run — in
//! the rig, where L1's TCG keeps the code it translated for a physical
//! page until that page is written, a restored guest no longer runs its
//! kernel through freshly translated code, and freed RAM of the last run
//! no longer holds translated code the next copy must invalidate (warm
//! `/bin/true` 0.52–0.72 s → 0.35–0.52 s, `runner/NOTES.md`).

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use vm_memory::{Bytes as _, GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion as _};
use vm_superio::serial::SerialState;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::kvm::{VcpuState, VmState};
use crate::memory::GuestMemory;

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"KSTRLSNP";
/// Bumped whenever the state layout or its meaning changes.
pub const FORMAT: u32 = 3;
/// Fixed header size; the state follows it.
const HEADER_LEN: u64 = 64;
/// Guest RAM starts at a multiple of this in the file.
const MEMORY_ALIGN: u64 = 2 << 20;
/// Granule of the zero check when RAM is written.
const PAGE: usize = 4096;
/// Snapshots kept in the directory (the least recently used go first).
pub const KEEP: usize = 6;

/// What a snapshot is only valid for: a stable 64-bit hash (FNV-1a) of
/// every input that shapes the VM up to the snapshot point.
#[derive(Debug, Clone, Default)]
pub struct Key {
    text: String,
}

impl Key {
    /// A key for this format and kestrel version.
    pub fn new() -> Key {
        let mut k = Key::default();
        k.add("format", &FORMAT.to_string());
        k.add("kestrel", env!("CARGO_PKG_VERSION"));
        k
    }

    /// Adds a named input.
    pub fn add(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        self.text.push('=');
        self.text.push_str(value);
        self.text.push('\n');
    }

    /// Adds a file by path, size and modification time.
    pub fn add_file(&mut self, name: &str, path: &Path) {
        let stamp = std::fs::metadata(path).map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{} {} {mtime}", path.display(), m.len())
        });
        self.add(
            name,
            &stamp.unwrap_or_else(|_| format!("{} ?", path.display())),
        );
    }

    /// The inputs, one `name=value` line each.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The hash.
    pub fn value(&self) -> u64 {
        fnv1a(self.text.as_bytes())
    }
}

/// A stable 64-bit hash of `bytes` (for key inputs too long to add whole).
pub fn hash(bytes: &[u8]) -> u64 {
    fnv1a(bytes)
}

/// FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Everything of a VM but its RAM.
pub struct State {
    /// The [`Key`] it was made for.
    pub key: u64,
    /// The vCPUs' TSC frequency when it was made (0: unknown).
    pub tsc_khz: u32,
    /// Guest RAM size.
    pub memory_bytes: u64,
    /// In-kernel irqchip, PIT and clock.
    pub vm: VmState,
    /// COM1 (console).
    pub com1: SerialState,
    /// COM2 (status and job channel).
    pub com2: SerialState,
    /// Each vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// The non-zero RAM runs in the file: (guest address, offset from the
    /// start of the file's RAM, length). Everything else is zero.
    pub extents: Vec<Extent>,
    /// RAM the guest keeps read-only (its kernel's text and rodata,
    /// [`crate::boot::read_only_ranges`]): a restore maps these pages from
    /// the file instead of copying them. Page-aligned, each in one RAM
    /// region; a hint only (a page the guest writes is copied on write).
    pub read_only: Vec<Extent>,
}

/// Most read-only ranges a snapshot may list (a kernel has one or two).
const MAX_READ_ONLY: u32 = 64;

/// A run of non-zero guest RAM in a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest physical address.
    pub gpa: u64,
    /// Offset in the file's RAM part.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A snapshot file that cannot be used (the caller boots cold).
#[derive(Debug, thiserror::Error)]
#[error("snapshot {path}: {why}")]
pub struct SnapshotError {
    path: PathBuf,
    why: String,
}

fn fail(path: &Path, why: impl Into<String>) -> SnapshotError {
    SnapshotError {
        path: path.to_owned(),
        why: why.into(),
    }
}

// ---- State encoding ----

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn pod<T: IntoBytes + Immutable>(&mut self, v: &T) {
        self.bytes(v.as_bytes());
    }
    fn serial(&mut self, s: &SerialState) {
        self.bytes(&[
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ]);
        self.bytes(&s.in_buffer);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("the state ends early".into());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn extent(&mut self) -> Result<Extent, String> {
        Ok(Extent {
            gpa: self.u64()?,
            offset: self.u64()?,
            len: self.u64()?,
        })
    }

    fn pod<T: FromBytes>(&mut self, what: &str) -> Result<T, String> {
        let b = self.bytes()?;
        T::read_from_bytes(b).map_err(|_| format!("{what} has {} bytes", b.len()))
    }
    fn serial(&mut self) -> Result<SerialState, String> {
        let r = self.bytes()?;
        let [dll, dlh, ier, iir, lcr, lsr, mcr, msr, scr] = r else {
            return Err("a UART's registers have the wrong size".into());
        };
        let in_buffer = self.bytes()?.to_vec();
        Ok(SerialState {
            baud_divisor_low: *dll,
            baud_divisor_high: *dlh,
            interrupt_enable: *ier,
            interrupt_identification: *iir,
            line_control: *lcr,
            line_status: *lsr,
            modem_control: *mcr,
            modem_status: *msr,
            scratch: *scr,
            in_buffer,
        })
    }
}

impl State {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.key);
        w.u32(self.tsc_khz);
        w.u64(self.memory_bytes);
        w.pod(&self.vm.pit);
        w.pod(&self.vm.clock);
        w.pod(&self.vm.pic_master);
        w.pod(&self.vm.pic_slave);
        w.pod(&self.vm.ioapic);
        w.serial(&self.com1);
        w.serial(&self.com2);
        w.u32(self.vcpus.len() as u32);
        for v in &self.vcpus {
            w.pod(&v.mp_state);
            w.pod(&v.regs);
            w.pod(&v.sregs);
            w.pod(&v.xsave);
            match &v.xcrs {
                Some(x) => {
                    w.u32(1);
                    w.pod(x);
                }
                None => w.u32(0),
            }
            w.pod(&v.debugregs);
            w.pod(&v.lapic);
            w.pod(&v.events);
            w.u32(v.msrs.len() as u32);
            for m in &v.msrs {
                w.pod(m);
            }
        }
        for list in [&self.extents, &self.read_only] {
            w.u32(list.len() as u32);
            for e in list {
                w.u64(e.gpa);
                w.u64(e.offset);
                w.u64(e.len);
            }
        }
        w.0
    }

    fn decode(buf: &[u8]) -> Result<State, String> {
        let mut r = Reader { buf };
        let key = r.u64()?;
        let tsc_khz = r.u32()?;
        let memory_bytes = r.u64()?;
        let vm = VmState {
            pit: r.pod("the PIT")?,
            clock: r.pod("the clock")?,
            pic_master: r.pod("the PIC")?,
            pic_slave: r.pod("the PIC")?,
            ioapic: r.pod("the IOAPIC")?,
        };
        let com1 = r.serial()?;
        let com2 = r.serial()?;
        let n = r.u32()?;
        if n == 0 || n > u32::from(crate::layout::MAX_VCPUS) {
            return Err(format!("{n} vCPUs"));
        }
        let mut vcpus = Vec::new();
        for _ in 0..n {
            let mp_state = r.pod("an MP state")?;
            let regs = r.pod("registers")?;
            let sregs = r.pod("special registers")?;
            let xsave = r.pod("an XSAVE area")?;
            let xcrs = match r.u32()? {
                0 => None,
                _ => Some(r.pod("XCRs")?),
            };
            let debugregs = r.pod("debug registers")?;
            let lapic = r.pod("a LAPIC")?;
            let events = r.pod("vCPU events")?;
            let count = r.u32()?;
            if count > 4096 {
                return Err(format!("{count} MSRs"));
            }
            let msrs = (0..count)
                .map(|_| r.pod("an MSR"))
                .collect::<Result<_, _>>()?;
            vcpus.push(VcpuState {
                mp_state,
                regs,
                sregs,
                xsave,
                xcrs,
                debugregs,
                lapic,
                events,
                msrs,
            });
        }
        let count = r.u32()?;
        let mut extents = Vec::new();
        for _ in 0..count {
            let e = r.extent()?;
            if e.offset
                .checked_add(e.len)
                .is_none_or(|end| end > memory_bytes)
                || e.gpa.checked_add(e.len).is_none()
            {
                return Err("a RAM extent lies outside guest RAM".into());
            }
            extents.push(e);
        }
        let count = r.u32()?;
        if count > MAX_READ_ONLY {
            return Err(format!("{count} read-only ranges"));
        }
        let mut read_only = Vec::new();
        for _ in 0..count {
            let e = r.extent()?;
            let range = e.gpa..e.gpa.saturating_add(e.len);
            if !file_extents(memory_bytes, std::slice::from_ref(&range)).contains(&e)
                || e.len == 0
                || !(e.gpa | e.len).is_multiple_of(PAGE as u64)
            {
                return Err("a read-only range is not whole pages of one RAM region".into());
            }
            read_only.push(e);
        }
        if !r.buf.is_empty() {
            return Err("trailing bytes after the state".into());
        }
        Ok(State {
            key,
            tsc_khz,
            memory_bytes,
            vm,
            com1,
            com2,
            vcpus,
            extents,
            read_only,
        })
    }
}

/// Where the guest ranges `ranges` lie in a snapshot's RAM of
/// `memory_bytes` (the regions of [`crate::layout::ram_ranges`] back to
/// back): one extent per piece inside a region, whole pages only (a range
/// is shrunk to the pages it covers entirely); what lies outside RAM is
/// dropped.
pub fn file_extents(memory_bytes: u64, ranges: &[std::ops::Range<u64>]) -> Vec<Extent> {
    let page = PAGE as u64;
    let mut out = Vec::new();
    let mut offset = 0;
    for region in crate::layout::ram_ranges(memory_bytes) {
        for r in ranges {
            let Some(start) = r.start.max(region.start).checked_next_multiple_of(page) else {
                continue;
            };
            let end = r.end.min(region.end) / page * page;
            if start < end {
                out.push(Extent {
                    gpa: start,
                    offset: offset + (start - region.start),
                    len: end - start,
                });
            }
        }
        offset += region.end - region.start;
    }
    out
}

// ---- Files ----

/// Where snapshots live: `$KESTREL_SNAPSHOT_DIR`, else `snapshots/` beside
/// the initramfs cache.
pub fn default_dir() -> PathBuf {
    std::env::var_os("KESTREL_SNAPSHOT_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::initrd::default_cache_dir().with_file_name("snapshots"))
}

/// The file for `key` in `dir`.
pub fn path_for(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("{key:016x}.snap"))
}

/// The file that says snapshots for `path`'s key cannot be made (its
/// text says why): its runs boot cold without trying again.
pub fn unsuitable_marker(path: &Path) -> PathBuf {
    path.with_extension("unsuitable")
}

/// Writes `state` and `mem` to `path` (atomically: a temporary file renamed
/// over it) and prunes the directory to [`KEEP`] files. RAM pages that are
/// all zero are left as holes.
pub fn write(path: &Path, state: &mut State, mem: &GuestMemory) -> Result<u64, SnapshotError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(path, format!("cannot create its directory: {e}")))?;
    kestrel_initramfs::remove_orphaned_temps(dir);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("snap"),
        std::process::id()
    ));
    let result = write_to(&tmp, state, mem);
    match result {
        Ok(written) => {
            std::fs::rename(&tmp, path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                fail(path, format!("cannot rename it into place: {e}"))
            })?;
            crate::initrd::prune_cache(dir, path, ("", ".snap"), KEEP, None);
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_to(path: &Path, state: &mut State, mem: &GuestMemory) -> Result<u64, SnapshotError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| fail(path, format!("cannot {what}: {e}"))
    };
    let extents = nonzero_extents(mem);
    state.extents = extents.clone();
    let body = state.encode();
    let mem_offset = (HEADER_LEN + body.len() as u64).next_multiple_of(MEMORY_ALIGN);
    let mem_len: u64 = mem.iter().map(|r| r.len()).sum();
    let mut file = File::create(path).map_err(io("create it"))?;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&(body.len() as u32).to_le_bytes());
    header.extend_from_slice(&fnv1a(&body).to_le_bytes());
    header.extend_from_slice(&mem_offset.to_le_bytes());
    header.extend_from_slice(&mem_len.to_le_bytes());
    header.resize(HEADER_LEN as usize, 0);
    file.write_all(&header).map_err(io("write its header"))?;
    file.write_all(&body).map_err(io("write its state"))?;
    file.set_len(mem_offset + mem_len).map_err(io("size it"))?;
    let mut written = 0u64;
    for e in &extents {
        let mut buf = vec![0u8; e.len as usize];
        mem.read_slice(&mut buf, GuestAddress(e.gpa))
            .map_err(|err| fail(path, format!("cannot read guest RAM: {err}")))?;
        file.write_all_at(&buf, mem_offset + e.offset)
            .map_err(io("write guest RAM"))?;
        written += e.len;
    }
    file.sync_data().map_err(io("sync it"))?;
    Ok(written)
}

/// The runs of non-zero 4 KiB pages of guest RAM, region by region. Every
/// vCPU is paused while this runs and no virtio device is active (the
/// module invariant), so nothing changes RAM meanwhile.
fn nonzero_extents(mem: &GuestMemory) -> Vec<Extent> {
    let mut extents = Vec::new();
    let mut offset = 0u64;
    let mut page = vec![0u8; PAGE];
    for region in mem.iter() {
        let start = region.start_addr().0;
        let len = region.len();
        let mut at = 0u64;
        let mut run: Option<u64> = None;
        while at < len {
            let zero = region
                .read_slice(&mut page, vm_memory::MemoryRegionAddress(at))
                .is_ok_and(|()| is_zero(&page));
            match (zero, run) {
                (false, None) => run = Some(at),
                (true, Some(from)) => {
                    extents.push(Extent {
                        gpa: start + from,
                        offset: offset + from,
                        len: at - from,
                    });
                    run = None;
                }
                _ => {}
            }
            at += PAGE as u64;
        }
        if let Some(from) = run {
            extents.push(Extent {
                gpa: start + from,
                offset: offset + from,
                len: len - from,
            });
        }
        offset += len;
    }
    extents
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])) == 0)
        && page.chunks_exact(8).remainder().iter().all(|&b| b == 0)
}

/// An opened snapshot: its state, and where its RAM is in the file.
pub struct Loaded {
    /// The state.
    pub state: State,
    /// The file (RAM is mapped from it).
    pub file: File,
    /// Where RAM starts in the file.
    pub mem_offset: u64,
}

/// Opens the snapshot at `path` for `key` and checks it whole but for the
/// RAM's contents (its length is checked). `Ok(None)`: there is none.
pub fn open(path: &Path, key: u64, memory_bytes: u64) -> Result<Option<Loaded>, SnapshotError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(path, format!("cannot open it: {e}"))),
    };
    let size = file
        .metadata()
        .map_err(|e| fail(path, format!("cannot stat it: {e}")))?
        .len();
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| fail(path, "it is shorter than its header"))?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
    if &header[..8] != MAGIC {
        return Err(fail(path, "it is not a kestrel snapshot"));
    }
    if u32_at(8) != FORMAT {
        return Err(fail(
            path,
            format!("format {} (kestrel writes {FORMAT})", u32_at(8)),
        ));
    }
    let (state_len, checksum, mem_offset, mem_len) =
        (u32_at(12) as u64, u64_at(16), u64_at(24), u64_at(32));
    if HEADER_LEN + state_len > mem_offset || mem_offset % MEMORY_ALIGN != 0 {
        return Err(fail(path, "its header is inconsistent"));
    }
    if mem_len != memory_bytes || size != mem_offset + mem_len {
        return Err(fail(
            path,
            format!(
                "it is {size} bytes, not {} (truncated or for another --memory)",
                mem_offset + memory_bytes
            ),
        ));
    }
    let mut body = vec![0u8; state_len as usize];
    file.read_exact_at(&mut body, HEADER_LEN)
        .map_err(|e| fail(path, format!("cannot read its state: {e}")))?;
    if fnv1a(&body) != checksum {
        return Err(fail(path, "its state fails its checksum"));
    }
    let state = State::decode(&body).map_err(|why| fail(path, why))?;
    if state.key != key {
        return Err(fail(path, "it was made for other inputs"));
    }
    if state.memory_bytes != memory_bytes {
        return Err(fail(path, "it was made for another --memory"));
    }
    crate::initrd::mark_used(path);
    Ok(Some(Loaded {
        state,
        file,
        mem_offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_msr_entry, kvm_xsave};
    use vm_memory::{Bytes, GuestAddress};

    fn state(key: u64) -> State {
        let mut xsave = kvm_xsave::default();
        xsave.region[7] = 0xdead_beef;
        let regs = kvm_bindings::kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            ..Default::default()
        };
        State {
            key,
            tsc_khz: 2_994_000,
            memory_bytes: 64 << 20,
            vm: VmState {
                pit: Default::default(),
                clock: kvm_bindings::kvm_clock_data {
                    clock: 123_456_789,
                    ..Default::default()
                },
                pic_master: kvm_bindings::kvm_irqchip {
                    chip_id: 0,
                    ..Default::default()
                },
                pic_slave: kvm_bindings::kvm_irqchip {
                    chip_id: 1,
                    ..Default::default()
                },
                ioapic: kvm_bindings::kvm_irqchip {
                    chip_id: 2,
                    ..Default::default()
                },
            },
            com1: SerialState::default(),
            com2: SerialState {
                interrupt_enable: 1,
                in_buffer: b"x".to_vec(),
                ..Default::default()
            },
            vcpus: vec![VcpuState {
                mp_state: Default::default(),
                regs,
                sregs: Default::default(),
                xsave,
                xcrs: None,
                debugregs: Default::default(),
                lapic: kvm_bindings::kvm_lapic_state::default(),
                events: Default::default(),
                msrs: vec![kvm_msr_entry {
                    index: 0x10,
                    data: 42,
                    ..Default::default()
                }],
            }],
            extents: Vec::new(),
            read_only: Vec::new(),
        }
    }

    fn memory() -> GuestMemory {
        let mem = crate::memory::create(64 << 20).unwrap();
        mem.write_obj(0x1234_5678_u32, GuestAddress(0x10_0000))
            .unwrap();
        mem.write_obj(0xabcd_u16, GuestAddress((64 << 20) - 2))
            .unwrap();
        mem
    }

    /// [`memory`] saved under key 7 in `dir` with `read_only` as its one
    /// read-only range: the file and the RAM bytes written.
    fn saved_with(dir: &Path, read_only: std::ops::Range<u64>) -> (PathBuf, u64) {
        let path = path_for(dir, 7);
        let mut saved = state(7);
        saved.read_only = file_extents(64 << 20, std::slice::from_ref(&read_only));
        let written = write(&path, &mut saved, &memory()).unwrap();
        (path, written)
    }

    #[test]
    fn a_snapshot_round_trips_and_ram_is_sparse() {
        let dir = tempfile::tempdir().unwrap();
        // A read-only range over the first non-zero page and a zero one.
        let (path, written) = saved_with(dir.path(), 0x10_0000..0x10_2000);
        assert_eq!(written, 2 * PAGE as u64, "only the two non-zero pages");
        let loaded = open(&path, 7, 64 << 20).unwrap().unwrap();
        let s = &loaded.state;
        assert_eq!(
            s.read_only,
            [Extent {
                gpa: 0x10_0000,
                offset: 0x10_0000,
                len: 2 * PAGE as u64
            }]
        );
        assert_eq!((s.key, s.tsc_khz, s.memory_bytes), (7, 2_994_000, 64 << 20));
        assert_eq!(s.vm.clock.clock, 123_456_789);
        assert_eq!(s.vm.ioapic.chip_id, 2);
        assert_eq!(s.com2.in_buffer, b"x");
        assert_eq!(s.com2.interrupt_enable, 1);
        assert_eq!(s.vcpus.len(), 1);
        assert_eq!(s.vcpus[0].regs.rip, 0xffff_ffff_8100_0000);
        assert_eq!(s.vcpus[0].xsave.region[7], 0xdead_beef);
        assert_eq!(s.vcpus[0].msrs[0].data, 42);
        assert_eq!(
            s.extents,
            [
                Extent {
                    gpa: 0x10_0000,
                    offset: 0x10_0000,
                    len: PAGE as u64
                },
                Extent {
                    gpa: (64 << 20) - PAGE as u64,
                    offset: (64 << 20) - PAGE as u64,
                    len: PAGE as u64
                },
            ]
        );
        use crate::memory::{from_snapshot_as, RestoreRam};
        for how in [RestoreRam::Copy, RestoreRam::Map] {
            let restored = from_snapshot_as(&loaded, 64 << 20, how).unwrap();
            assert_eq!(restored.read_only_mapped, 2 * PAGE as u64, "{how:?}");
            let ram = restored.memory;
            assert_eq!(
                ram.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
                0x1234_5678,
                "{how:?}"
            );
            assert_eq!(
                ram.read_obj::<u16>(GuestAddress((64 << 20) - 2)).unwrap(),
                0xabcd,
                "{how:?}"
            );
            assert_eq!(
                ram.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(),
                0,
                "a hole ({how:?})"
            );
            assert_eq!(
                ram.read_obj::<u64>(GuestAddress(0x10_1000)).unwrap(),
                0,
                "a hole in the read-only range ({how:?})"
            );
            // The guest's writes never reach the file.
            ram.write_obj(0u32, GuestAddress(0x10_0000)).unwrap();
            let again = open(&path, 7, 64 << 20).unwrap().unwrap();
            let ram2 = from_snapshot_as(&again, 64 << 20, how).unwrap().memory;
            assert_eq!(
                ram2.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
                0x1234_5678,
                "{how:?}"
            );
        }
    }

    #[test]
    fn a_read_only_range_the_file_cannot_map_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved_with(dir.path(), 0x10_0000..0x10_1000);
        let mut loaded = open(&path, 7, 64 << 20).unwrap().unwrap();
        // Write-only: mmap refuses it (EACCES), a reopen for reading works.
        loaded.file = File::options().write(true).open(&path).unwrap();
        let restored =
            crate::memory::from_snapshot_as(&loaded, 64 << 20, crate::memory::RestoreRam::Copy)
                .unwrap();
        assert_eq!(restored.read_only_mapped, 0, "copied, not mapped");
        let ram = restored.memory;
        assert_eq!(
            ram.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0x1234_5678
        );
        ram.write_obj(7u32, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(
            ram.read_obj::<u16>(GuestAddress((64 << 20) - 2)).unwrap(),
            0xabcd
        );
    }

    #[test]
    fn read_only_ranges_are_whole_pages_placed_region_by_region() {
        let gap = crate::layout::MMIO_GAP_START;
        let high = crate::layout::MMIO_GAP_END;
        let big = gap + (64 << 20);
        let page = PAGE as u64;
        assert_eq!(
            file_extents(
                big,
                &[0x1000_0800..0x1000_3800, gap - page..high + 2 * page]
            ),
            [
                // Shrunk to the pages it covers entirely.
                Extent {
                    gpa: 0x1000_1000,
                    offset: 0x1000_1000,
                    len: 2 * page
                },
                // Split at the MMIO gap; the high part follows the low
                // region in the file.
                Extent {
                    gpa: gap - page,
                    offset: gap - page,
                    len: page
                },
                Extent {
                    gpa: high,
                    offset: gap,
                    len: 2 * page
                },
            ]
        );
        assert!(file_extents(64 << 20, std::slice::from_ref(&(u64::MAX - 5..u64::MAX))).is_empty());

        // A file whose read-only list is not what file_extents would give
        // is refused as damaged.
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), 7);
        for bad in [
            Extent {
                gpa: 0x10_0000,
                offset: 0x20_0000,
                len: page,
            },
            Extent {
                gpa: 0x10_0800,
                offset: 0x10_0800,
                len: page,
            },
            Extent {
                gpa: (64 << 20) - page,
                offset: (64 << 20) - page,
                len: 2 * page,
            },
            Extent {
                gpa: 0x10_0000,
                offset: 0x10_0000,
                len: 0,
            },
        ] {
            let mut s = state(7);
            s.read_only = vec![bad];
            write(&path, &mut s, &memory()).unwrap();
            let err = open(&path, 7, 64 << 20).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("read-only range")),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn damaged_or_foreign_snapshots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(dir.path(), 7);
        assert!(open(&path, 7, 64 << 20).unwrap().is_none(), "none yet");
        write(&path, &mut state(7), &memory()).unwrap();
        let why = |key, mib: u64| open(&path, key, mib << 20).err().map(|e| e.to_string());
        assert!(why(8, 64).unwrap().contains("other inputs"));
        assert!(why(7, 128).unwrap().contains("another --memory"));
        // A flipped state byte.
        let f = File::options().write(true).open(&path).unwrap();
        f.write_all_at(&[0x5a], HEADER_LEN + 20).unwrap();
        assert!(why(7, 64).unwrap().contains("checksum"));
        // Truncated.
        write(&path, &mut state(7), &memory()).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 4096)
            .unwrap();
        assert!(why(7, 64).unwrap().contains("truncated"));
        // Not a snapshot at all.
        std::fs::write(&path, b"hello").unwrap();
        assert!(why(7, 64).unwrap().contains("shorter than its header"));
        std::fs::write(&path, vec![1u8; 128]).unwrap();
        assert!(why(7, 64).unwrap().contains("not a kestrel snapshot"));
    }

    #[test]
    fn keys_change_with_every_input() {
        let mut a = Key::new();
        a.add("cpus", "1");
        let mut b = Key::new();
        b.add("cpus", "2");
        assert_ne!(a.value(), b.value());
        let mut c = Key::new();
        c.add("cpus", "1");
        assert_eq!(a.value(), c.value());
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn truncated_state_bytes_are_errors_not_panics() {
        let body = state(1).encode();
        for cut in [0, 5, 17, body.len() / 2, body.len() - 1] {
            assert!(State::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(State::decode(&body).is_ok());
    }
}

//! FUSE request dispatch: one request's bytes in, one reply's bytes out.
//!
//! Invariants:
//! - Nothing here panics on guest input: every argument is decoded with
//!   length checks; a malformed request gets an error reply (or none, when
//!   not even its `unique` can be read).
//! - A reply never exceeds the room the caller says it has: sizes of READ,
//!   READDIR(PLUS) and READLINK are clamped to it, and any other reply that
//!   would not fit becomes an `ERANGE` error reply. Opcodes that create
//!   lookup counts check the room *before* touching the file system, so a
//!   reply we could not deliver never leaves a count behind.
//! - On a read-only share every mutating opcode answers `EROFS`; opcodes we
//!   do not implement answer `ENOSYS`; before INIT everything but INIT
//!   answers `EIO`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::abi::{self, opcode as op, Decoder, Wire};
use crate::fs::{Caller, Entry, FsConfig, PassthroughFs, SetAttr};
use crate::sys::{Errno, SysResult};

/// Every open file's `close()` goes without a FLUSH: this server has no
/// write-back cache and no POSIX locks (GETLK/SETLK are ENOSYS, so the
/// kernel keeps locks itself), and FLUSH would only answer 0 — one request
/// per `close()` saved (two per program start: its binary and libc).
const NO_FLUSH: u32 = abi::FOPEN_NOFLUSH;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The passthrough file system's settings.
    pub fs: FsConfig,
    /// How long the guest may cache names.
    pub entry_timeout: Duration,
    /// How long the guest may cache attributes.
    pub attr_timeout: Duration,
    /// Largest WRITE (and READ) payload, in bytes; a multiple of 4096.
    pub max_io: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            fs: FsConfig::default(),
            entry_timeout: Duration::from_secs(1),
            attr_timeout: Duration::from_secs(1),
            max_io: 1 << 20,
        }
    }
}

/// A FUSE server over one [`PassthroughFs`]. `Sync`: worker threads of
/// several request queues share one.
#[derive(Debug)]
pub struct Server {
    fs: PassthroughFs,
    cfg: ServerConfig,
    initialized: AtomicBool,
    /// The kernel said it can do without OPENDIR (FUSE_NO_OPENDIR_SUPPORT):
    /// we answer it ENOSYS, which saves the guest a round trip per
    /// directory it lists, and RELEASEDIR.
    no_opendir: AtomicBool,
    stats: Stats,
}

/// Requests served and time spent, per opcode (opcodes past 63 share slot 0).
#[derive(Debug)]
struct Stats {
    count: [AtomicU64; 64],
    nanos: [AtomicU64; 64],
    /// Replies that said the host file system is full (ENOSPC, EDQUOT).
    no_space: AtomicU64,
}

/// One line of [`Server::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    /// FUSE opcode.
    pub opcode: u32,
    /// Requests handled.
    pub count: u64,
    /// Time spent handling them, in nanoseconds.
    pub nanos: u64,
}

/// Size of the FUSE header that starts every request.
pub const IN_HEADER_SIZE: usize = abi::InHeader::SIZE;
/// Size of the FUSE header that starts every reply.
pub const OUT_HEADER_SIZE: usize = abi::OutHeader::SIZE;

type OpResult = SysResult<Vec<u8>>;

fn einval() -> Errno {
    Errno(libc::EINVAL)
}

fn arg<T: Wire>(d: &mut Decoder<'_>) -> SysResult<T> {
    d.read::<T>().ok_or_else(einval)
}

fn name<'a>(d: &mut Decoder<'a>) -> SysResult<&'a [u8]> {
    d.cstr().ok_or_else(einval)
}

fn encoded<T: Wire>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(T::SIZE);
    v.encode(&mut out);
    out
}

/// Linux's `new_encode_dev` (what the FUSE kernel client decodes).
fn encode_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// FUSE attributes from a host `stat` (inode number already mapped).
pub fn attr_from_stat(st: &libc::stat64) -> abi::Attr {
    abi::Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn time_or_now(secs: u64, nsecs: u32, now: bool) -> libc::timespec {
    if now {
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        }
    } else {
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: libc::c_long::from(nsecs.min(999_999_999)),
        }
    }
}

/// Opcodes that change the share.
fn is_mutating(opcode: u32) -> bool {
    matches!(
        opcode,
        op::SETATTR
            | op::SYMLINK
            | op::MKNOD
            | op::MKDIR
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::LINK
            | op::WRITE
            | op::CREATE
            | op::FALLOCATE
            | op::RENAME2
            | op::SETXATTR
            | op::REMOVEXATTR
            | op::TMPFILE
            | op::COPY_FILE_RANGE
    )
}

/// The fixed reply size of opcodes that create lookup counts or handles.
fn reply_needs(opcode: u32) -> usize {
    let payload = match opcode {
        op::LOOKUP | op::MKDIR | op::MKNOD | op::SYMLINK | op::LINK => abi::EntryOut::SIZE,
        op::CREATE => abi::EntryOut::SIZE + abi::OpenOut::SIZE,
        op::OPEN | op::OPENDIR => abi::OpenOut::SIZE,
        _ => 0,
    };
    OUT_HEADER_SIZE + payload
}

impl Server {
    /// A server for `root`.
    pub fn new(root: &std::path::Path, cfg: ServerConfig) -> Result<Self, crate::Error> {
        let fs = PassthroughFs::new(root, &cfg.fs)?;
        Ok(Self {
            fs,
            cfg,
            initialized: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            stats: Stats {
                count: std::array::from_fn(|_| AtomicU64::new(0)),
                nanos: std::array::from_fn(|_| AtomicU64::new(0)),
                no_space: AtomicU64::new(0),
            },
        })
    }

    /// The file system behind the server (for tests and statistics).
    pub fn fs(&self) -> &PassthroughFs {
        &self.fs
    }

    /// Requests served so far, per opcode (only opcodes seen).
    pub fn stats(&self) -> Vec<OpStats> {
        (0..64)
            .filter_map(|op| {
                let count = self.stats.count[op].load(Ordering::Relaxed);
                (count > 0).then(|| OpStats {
                    opcode: op as u32,
                    count,
                    nanos: self.stats.nanos[op].load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// How many replies told the guest the host file system was full
    /// (ENOSPC or EDQUOT), so the VMM can say so beside the verdict.
    pub fn no_space_replies(&self) -> u64 {
        self.stats.no_space.load(Ordering::Relaxed)
    }

    /// Handles one request. `room` is how many bytes the reply may take.
    /// Returns the reply bytes (out header included), or `None` when the
    /// request gets no reply (FORGET, BATCH_FORGET, INTERRUPT, or a
    /// request too short to carry a header).
    pub fn handle(&self, req: &[u8], room: usize) -> Option<Vec<u8>> {
        let start = Instant::now();
        let reply = self.handle_inner(req, room);
        if let Some(h) = abi::InHeader::from_bytes(req) {
            let slot = if h.opcode < 64 { h.opcode as usize } else { 0 };
            self.stats.count[slot].fetch_add(1, Ordering::Relaxed);
            let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stats.nanos[slot].fetch_add(ns, Ordering::Relaxed);
        }
        reply
    }

    fn handle_inner(&self, req: &[u8], room: usize) -> Option<Vec<u8>> {
        let h = abi::InHeader::from_bytes(req)?;
        if matches!(h.opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT) {
            // No reply is expected; a malformed one is simply dropped.
            if let Some(body) = usize::try_from(h.len)
                .ok()
                .filter(|&l| l >= IN_HEADER_SIZE && l <= req.len())
                .map(|l| &req[IN_HEADER_SIZE..l])
            {
                if self.initialized.load(Ordering::Acquire) {
                    self.forgets(h.opcode, h.nodeid, body);
                }
            }
            return None;
        }
        let result = match usize::try_from(h.len) {
            Ok(len) if (IN_HEADER_SIZE..=req.len()).contains(&len) => {
                if room < reply_needs(h.opcode) {
                    Err(Errno(libc::ERANGE))
                } else {
                    self.dispatch(&h, &req[IN_HEADER_SIZE..len], room - OUT_HEADER_SIZE)
                }
            }
            _ => Err(einval()),
        };
        let mut reply = match result {
            Ok(payload) if OUT_HEADER_SIZE + payload.len() <= room => {
                let mut r = Vec::with_capacity(OUT_HEADER_SIZE + payload.len());
                abi::OutHeader::default().encode(&mut r);
                r.extend_from_slice(&payload);
                r
            }
            Ok(_) => error_reply(libc::ERANGE),
            Err(e) => {
                if matches!(e.0, libc::ENOSPC | libc::EDQUOT) {
                    self.stats.no_space.fetch_add(1, Ordering::Relaxed);
                }
                error_reply(e.0)
            }
        };
        if reply.len() > room {
            // Not even a header fits: nothing can be said.
            return None;
        }
        let out = abi::OutHeader {
            len: reply.len() as u32,
            error: i32::from_le_bytes(reply[4..8].try_into().expect("4 bytes")),
            unique: h.unique,
        };
        let mut hdr = Vec::with_capacity(OUT_HEADER_SIZE);
        out.encode(&mut hdr);
        reply[..OUT_HEADER_SIZE].copy_from_slice(&hdr);
        Some(reply)
    }

    fn forgets(&self, opcode: u32, nodeid: u64, body: &[u8]) {
        let mut d = Decoder::new(body);
        if opcode == op::FORGET {
            if let Some(f) = d.read::<abi::ForgetIn>() {
                self.fs.forget(nodeid, f.nlookup);
            }
        } else if opcode == op::BATCH_FORGET {
            let Some(b) = d.read::<abi::BatchForgetIn>() else {
                return;
            };
            for _ in 0..b.count {
                let Some(one) = d.read::<abi::ForgetOne>() else {
                    return;
                };
                self.fs.forget(one.nodeid, one.nlookup);
            }
        }
    }

    fn entry_out(&self, e: &Entry) -> abi::EntryOut {
        abi::EntryOut {
            nodeid: e.nodeid,
            generation: 0,
            entry_valid: self.cfg.entry_timeout.as_secs(),
            attr_valid: self.cfg.attr_timeout.as_secs(),
            entry_valid_nsec: self.cfg.entry_timeout.subsec_nanos(),
            attr_valid_nsec: self.cfg.attr_timeout.subsec_nanos(),
            attr: attr_from_stat(&e.st),
        }
    }

    fn attr_out(&self, st: &libc::stat64) -> Vec<u8> {
        encoded(&abi::AttrOut {
            attr_valid: self.cfg.attr_timeout.as_secs(),
            attr_valid_nsec: self.cfg.attr_timeout.subsec_nanos(),
            dummy: 0,
            attr: attr_from_stat(st),
        })
    }

    fn dispatch(&self, h: &abi::InHeader, body: &[u8], room: usize) -> OpResult {
        let mut d = Decoder::new(body);
        let d = &mut d;
        if h.opcode == op::INIT {
            return self.init(d);
        }
        if !self.initialized.load(Ordering::Acquire) {
            return Err(Errno(libc::EIO));
        }
        if is_mutating(h.opcode) && !self.fs.writable() {
            return Err(Errno(libc::EROFS));
        }
        let fs = &self.fs;
        let node = h.nodeid;
        let who = Caller {
            uid: h.uid,
            gid: h.gid,
        };
        match h.opcode {
            op::DESTROY => {
                fs.reset();
                self.initialized.store(false, Ordering::Release);
                Ok(Vec::new())
            }
            op::LOOKUP => match fs.lookup(node, name(d)?) {
                Ok(e) => Ok(encoded(&self.entry_out(&e))),
                // A name that is not there: node id 0 with the entry
                // timeout, which the kernel keeps as a negative dentry for
                // that long (as virtiofsd's cache=auto), instead of asking
                // again at every exec's `/etc/ld.so.preload` probe. A name
                // the host creates is seen after at most the same timeout
                // as a name it deletes.
                Err(Errno(libc::ENOENT)) if !self.cfg.entry_timeout.is_zero() => {
                    Ok(encoded(&abi::EntryOut {
                        nodeid: 0,
                        entry_valid: self.cfg.entry_timeout.as_secs(),
                        entry_valid_nsec: self.cfg.entry_timeout.subsec_nanos(),
                        ..Default::default()
                    }))
                }
                Err(e) => Err(e),
            },
            op::GETATTR => Ok(self.attr_out(&fs.getattr(node)?)),
            op::READLINK => {
                let target = fs.readlink(node)?;
                if target.len() > room {
                    return Err(Errno(libc::ERANGE));
                }
                Ok(target)
            }
            op::STATFS => {
                let s = fs.statfs(node)?;
                Ok(encoded(&abi::StatfsOut {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: s.f_bsize as u32,
                    namelen: s.f_namemax as u32,
                    frsize: s.f_frsize as u32,
                    ..Default::default()
                }))
            }
            op::OPEN => {
                let a: abi::OpenIn = arg(d)?;
                let (fh, keep_cache) = fs.open(node, a.flags)?;
                let keep = if keep_cache { abi::FOPEN_KEEP_CACHE } else { 0 };
                Ok(encoded(&abi::OpenOut {
                    fh,
                    open_flags: keep | NO_FLUSH,
                    ..Default::default()
                }))
            }
            op::OPENDIR => {
                let _: abi::OpenIn = arg(d)?;
                if self.no_opendir.load(Ordering::Acquire) {
                    // The kernel takes this as "opendir always succeeds"
                    // and never sends OPENDIR or RELEASEDIR again: its
                    // READDIRs come with fh 0 (see `PassthroughFs::readdir`).
                    return Err(Errno(libc::ENOSYS));
                }
                let fh = fs.opendir(node)?;
                Ok(encoded(&abi::OpenOut {
                    fh,
                    ..Default::default()
                }))
            }
            op::READ => {
                let a: abi::ReadIn = arg(d)?;
                let size = (a.size as usize).min(self.cfg.max_io as usize).min(room);
                fs.read(a.fh, a.offset, size)
            }
            op::READDIR | op::READDIRPLUS => {
                let a: abi::ReadIn = arg(d)?;
                let limit = (a.size as usize).min(room).min(self.cfg.max_io as usize);
                self.readdir(a.fh, node, a.offset, limit, h.opcode == op::READDIRPLUS)
            }
            op::FLUSH => {
                let _: abi::FlushIn = arg(d)?;
                Ok(Vec::new())
            }
            op::RELEASE | op::RELEASEDIR => {
                let a: abi::ReleaseIn = arg(d)?;
                fs.release(a.fh);
                Ok(Vec::new())
            }
            op::FSYNC | op::FSYNCDIR if fs.writable() => {
                let a: abi::FsyncIn = arg(d)?;
                let dir = h.opcode == op::FSYNCDIR;
                fs.fsync(a.fh, node, dir, a.fsync_flags & abi::FSYNC_FDATASYNC != 0)?;
                Ok(Vec::new())
            }
            op::CREATE => {
                let a: abi::CreateIn = arg(d)?;
                let (e, fh) = fs.create(node, name(d)?, a.mode, a.flags, who)?;
                let mut out = encoded(&self.entry_out(&e));
                abi::OpenOut {
                    fh,
                    open_flags: NO_FLUSH,
                    ..Default::default()
                }
                .encode(&mut out);
                Ok(out)
            }
            op::MKDIR => {
                let a: abi::MkdirIn = arg(d)?;
                let e = fs.mkdir(node, name(d)?, a.mode, who)?;
                Ok(encoded(&self.entry_out(&e)))
            }
            op::MKNOD => {
                let a: abi::MknodIn = arg(d)?;
                let e = fs.mknod(node, name(d)?, a.mode, who)?;
                Ok(encoded(&self.entry_out(&e)))
            }
            op::SYMLINK => {
                let n = name(d)?;
                let target = name(d)?;
                let e = fs.symlink(node, n, target, who)?;
                Ok(encoded(&self.entry_out(&e)))
            }
            op::LINK => {
                let a: abi::LinkIn = arg(d)?;
                let e = fs.link(a.oldnodeid, node, name(d)?)?;
                Ok(encoded(&self.entry_out(&e)))
            }
            op::UNLINK | op::RMDIR => {
                fs.unlink(node, name(d)?, h.opcode == op::RMDIR)?;
                Ok(Vec::new())
            }
            op::RENAME => {
                let a: abi::RenameIn = arg(d)?;
                let (old, new) = (name(d)?, name(d)?);
                fs.rename(node, old, a.newdir, new, 0)?;
                Ok(Vec::new())
            }
            op::RENAME2 => {
                let a: abi::Rename2In = arg(d)?;
                let (old, new) = (name(d)?, name(d)?);
                fs.rename(node, old, a.newdir, new, a.flags)?;
                Ok(Vec::new())
            }
            op::SETATTR => {
                let a: abi::SetattrIn = arg(d)?;
                let v = a.valid;
                let has = |bit: u32| v & bit != 0;
                let set = SetAttr {
                    mode: has(abi::fattr::MODE).then_some(a.mode),
                    uid: has(abi::fattr::UID).then_some(a.uid),
                    gid: has(abi::fattr::GID).then_some(a.gid),
                    size: has(abi::fattr::SIZE).then_some(a.size),
                    atime: has(abi::fattr::ATIME)
                        .then(|| time_or_now(a.atime, a.atimensec, has(abi::fattr::ATIME_NOW))),
                    mtime: has(abi::fattr::MTIME)
                        .then(|| time_or_now(a.mtime, a.mtimensec, has(abi::fattr::MTIME_NOW))),
                };
                let fh = has(abi::fattr::FH).then_some(a.fh);
                Ok(self.attr_out(&fs.setattr(node, fh, &set)?))
            }
            op::WRITE => {
                let a: abi::WriteIn = arg(d)?;
                if a.size > self.cfg.max_io {
                    return Err(einval());
                }
                let data = d.take(a.size as usize).ok_or_else(einval)?;
                let n = fs.write(a.fh, a.offset, data)?;
                Ok(encoded(&abi::WriteOut {
                    size: n as u32,
                    padding: 0,
                }))
            }
            op::FALLOCATE => {
                let a: abi::FallocateIn = arg(d)?;
                fs.fallocate(a.fh, a.mode, a.offset, a.length)?;
                Ok(Vec::new())
            }
            _ => Err(Errno(libc::ENOSYS)),
        }
    }

    fn init(&self, d: &mut Decoder<'_>) -> OpResult {
        use abi::init_flags as f;
        let raw = d.rest();
        if raw.len() < abi::INIT_IN_MIN {
            return Err(einval());
        }
        let mut padded = [0u8; abi::InitIn::SIZE];
        let n = raw.len().min(padded.len());
        padded[..n].copy_from_slice(&raw[..n]);
        let a = abi::InitIn::from_bytes(&padded).ok_or_else(einval)?;
        if a.major > abi::KERNEL_VERSION {
            // Ask the kernel to come back with our major version.
            return Ok(encoded(&abi::InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..Default::default()
            }));
        }
        if a.major < abi::KERNEL_VERSION || a.minor < abi::MIN_MINOR {
            return Err(Errno(libc::EPROTO));
        }
        // A new session: whatever the previous one looked up is gone.
        self.fs.reset();
        let wanted = f::ASYNC_READ
            | f::ATOMIC_O_TRUNC
            | f::BIG_WRITES
            | f::AUTO_INVAL_DATA
            | f::DO_READDIRPLUS
            | f::READDIRPLUS_AUTO
            | f::ASYNC_DIO
            | f::PARALLEL_DIROPS
            | f::MAX_PAGES
            | f::CACHE_SYMLINKS;
        let max_io = self.cfg.max_io.max(4096) & !4095;
        self.no_opendir
            .store(a.flags & f::NO_OPENDIR_SUPPORT != 0, Ordering::Release);
        self.initialized.store(true, Ordering::Release);
        Ok(encoded(&abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: a.minor.min(abi::KERNEL_MINOR_VERSION),
            max_readahead: a.max_readahead.min(max_io),
            flags: a.flags & wanted,
            max_background: 64,
            congestion_threshold: 48,
            max_write: max_io,
            time_gran: 1,
            max_pages: u16::try_from(max_io / 4096).unwrap_or(u16::MAX),
            ..Default::default()
        }))
    }

    fn readdir(&self, fh: u64, node: u64, offset: u64, limit: usize, plus: bool) -> OpResult {
        let mut out = Vec::with_capacity(limit.min(64 * 1024));
        self.fs.readdir(fh, node, offset, |e| {
            let size = if plus {
                abi::direntplus_size(e.name.len())
            } else {
                abi::dirent_size(e.name.len())
            };
            if out.len() + size > limit {
                return false;
            }
            let mut ino = e.ino;
            if plus {
                let entry = if e.name == b"." || e.name == b".." {
                    // The kernel never links these; nodeid 0 = no lookup counted.
                    abi::EntryOut::default()
                } else {
                    match self.fs.lookup_for_readdir(e.dir, e.name) {
                        Ok(en) => {
                            ino = en.st.st_ino;
                            self.entry_out(&en)
                        }
                        // Vanished since getdents: leave it out.
                        Err(Errno(libc::ENOENT)) => return true,
                        // Could not look it up now (EMFILE, EACCES…): list
                        // the name without attributes (nodeid 0, nothing
                        // counted); the guest's own LOOKUP reports the error.
                        Err(_) => abi::EntryOut::default(),
                    }
                };
                entry.encode(&mut out);
            }
            abi::encode_dirent(
                &mut out,
                &abi::Dirent {
                    ino,
                    off: e.next_off,
                    namelen: e.name.len() as u32,
                    typ: u32::from(e.typ),
                },
                e.name,
            );
            true
        })?;
        Ok(out)
    }
}

fn error_reply(errno: i32) -> Vec<u8> {
    let mut r = Vec::with_capacity(OUT_HEADER_SIZE);
    abi::OutHeader {
        len: OUT_HEADER_SIZE as u32,
        error: -errno,
        unique: 0,
    }
    .encode(&mut r);
    r
}

//! The FUSE kernel ABI as the Linux virtio-fs driver speaks it (protocol
//! 7.31 and later): opcodes, flags and the `#[repr(C)]` argument structs,
//! with explicit little-endian encoding.
//!
//! Invariants: every struct lists every byte (padding fields included) and a
//! compile-time check ties its declared wire size to both `size_of` and the
//! sum of its fields, so `encode` writes exactly `SIZE` bytes. Decoding reads
//! from byte slices with `from_le_bytes` only (no pointer casts, no unaligned
//! reads) and fails, never panics, on short input.

/// FUSE major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// The oldest minor version we accept (what virtio-fs requires).
pub const MIN_MINOR: u32 = 31;
/// The minor version we implement.
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// The node id of the file system root.
pub const ROOT_ID: u64 = 1;
/// `fuse_open_out.open_flags`: the kernel keeps the file's cached pages at
/// this open instead of dropping them.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `fuse_open_out.open_flags`: the kernel sends no FLUSH at this file's
/// `close()` (Linux 5.16 on; older kernels ignore the bit).
pub const FOPEN_NOFLUSH: u32 = 1 << 5;

/// Request opcodes (`enum fuse_opcode`).
#[allow(missing_docs)]
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
}

/// `FUSE_INIT` flags (`fuse_init_in.flags` / `fuse_init_out.flags`).
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const POSIX_LOCKS: u32 = 1 << 1;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const EXPORT_SUPPORT: u32 = 1 << 4;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DONT_MASK: u32 = 1 << 6;
    pub const SPLICE_WRITE: u32 = 1 << 7;
    pub const SPLICE_MOVE: u32 = 1 << 8;
    pub const SPLICE_READ: u32 = 1 << 9;
    pub const FLOCK_LOCKS: u32 = 1 << 10;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const ASYNC_DIO: u32 = 1 << 15;
    pub const WRITEBACK_CACHE: u32 = 1 << 16;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
    /// The kernel can do without OPENDIR: an ENOSYS reply to it means
    /// "always succeeds, send no more" (no RELEASEDIR either).
    pub const NO_OPENDIR_SUPPORT: u32 = 1 << 24;
}

/// `fuse_setattr_in.valid` bits.
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_fsync_in.fsync_flags`: only flush data.
pub const FSYNC_FDATASYNC: u32 = 1;
/// `fuse_getattr_in.getattr_flags`: `fh` is valid.
pub const GETATTR_FH: u32 = 1;

/// Bytes of a decoded field or struct on the wire.
pub trait Wire: Sized {
    /// Wire size in bytes.
    const SIZE: usize;
    /// Reads one value from the front of `r`; `None` if `r` is too short.
    fn decode(r: &mut Decoder<'_>) -> Option<Self>;
    /// Appends exactly `SIZE` bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decodes a value from the start of `bytes`.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Self::decode(&mut Decoder::new(bytes))
    }
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn decode(r: &mut Decoder<'_>) -> Option<Self> {
                let b = r.take(Self::SIZE)?;
                Some(<$t>::from_le_bytes(b.try_into().ok()?))
            }
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
wire_int!(u16, u32, u64, i32);

impl<const N: usize> Wire for [u32; N] {
    const SIZE: usize = 4 * N;
    fn decode(r: &mut Decoder<'_>) -> Option<Self> {
        let mut a = [0u32; N];
        for v in a.iter_mut() {
            *v = u32::decode(r)?;
        }
        Some(a)
    }
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            v.encode(out);
        }
    }
}

/// A cursor over request bytes.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// A decoder over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The next `n` bytes, or `None` if fewer remain.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    /// A NUL-terminated string without its NUL; `None` if no NUL follows.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.buf.iter().position(|&b| b == 0)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Some(s)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Decodes one `T`.
    pub fn read<T: Wire>(&mut self) -> Option<T> {
        T::decode(self)
    }
}

macro_rules! abi_struct {
    ($(#[$m:meta])* pub struct $name:ident = $size:literal { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }

        const _: () = assert!(std::mem::size_of::<$name>() == $size);
        const _: () = assert!(0 $(+ <$t as Wire>::SIZE)* == $size);

        impl Wire for $name {
            const SIZE: usize = $size;
            fn decode(r: &mut Decoder<'_>) -> Option<Self> {
                Some(Self { $($f: <$t as Wire>::decode(r)?),* })
            }
            fn encode(&self, out: &mut Vec<u8>) {
                $(Wire::encode(&self.$f, out);)*
            }
        }
    };
}

abi_struct! {
    /// `struct fuse_in_header`: starts every request.
    pub struct InHeader = 40 {
        pub len: u32, pub opcode: u32, pub unique: u64, pub nodeid: u64,
        pub uid: u32, pub gid: u32, pub pid: u32, pub total_extlen: u16, pub padding: u16,
    }
}

abi_struct! {
    /// `struct fuse_out_header`: starts every reply.
    pub struct OutHeader = 16 { pub len: u32, pub error: i32, pub unique: u64 }
}

abi_struct! {
    /// `struct fuse_attr`.
    pub struct Attr = 88 {
        pub ino: u64, pub size: u64, pub blocks: u64, pub atime: u64, pub mtime: u64,
        pub ctime: u64, pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32,
        pub mode: u32, pub nlink: u32, pub uid: u32, pub gid: u32, pub rdev: u32,
        pub blksize: u32, pub flags: u32,
    }
}

abi_struct! {
    /// `struct fuse_entry_out`: reply to LOOKUP, MKDIR, CREATE (first part)…
    pub struct EntryOut = 128 {
        pub nodeid: u64, pub generation: u64, pub entry_valid: u64, pub attr_valid: u64,
        pub entry_valid_nsec: u32, pub attr_valid_nsec: u32, pub attr: Attr,
    }
}

abi_struct! {
    /// `struct fuse_attr_out`: reply to GETATTR and SETATTR.
    pub struct AttrOut = 104 {
        pub attr_valid: u64, pub attr_valid_nsec: u32, pub dummy: u32, pub attr: Attr,
    }
}

abi_struct! {
    /// `struct fuse_init_in` (7.36+ layout; older kernels send the first 16 bytes).
    pub struct InitIn = 64 {
        pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32,
        pub flags2: u32, pub unused: [u32; 11],
    }
}

/// The part of `fuse_init_in` every 7.x kernel sends.
pub const INIT_IN_MIN: usize = 16;

abi_struct! {
    /// `struct fuse_init_out`.
    pub struct InitOut = 64 {
        pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32,
        pub max_background: u16, pub congestion_threshold: u16, pub max_write: u32,
        pub time_gran: u32, pub max_pages: u16, pub map_alignment: u16, pub flags2: u32,
        pub unused: [u32; 7],
    }
}

abi_struct! {
    /// `struct fuse_forget_in`.
    pub struct ForgetIn = 8 { pub nlookup: u64 }
}

abi_struct! {
    /// `struct fuse_batch_forget_in`, followed by `count` [`ForgetOne`].
    pub struct BatchForgetIn = 8 { pub count: u32, pub dummy: u32 }
}

abi_struct! {
    /// `struct fuse_forget_one`.
    pub struct ForgetOne = 16 { pub nodeid: u64, pub nlookup: u64 }
}

abi_struct! {
    /// `struct fuse_getattr_in`.
    pub struct GetattrIn = 16 { pub getattr_flags: u32, pub dummy: u32, pub fh: u64 }
}

abi_struct! {
    /// `struct fuse_setattr_in`.
    pub struct SetattrIn = 88 {
        pub valid: u32, pub padding: u32, pub fh: u64, pub size: u64, pub lock_owner: u64,
        pub atime: u64, pub mtime: u64, pub ctime: u64, pub atimensec: u32,
        pub mtimensec: u32, pub ctimensec: u32, pub mode: u32, pub unused4: u32,
        pub uid: u32, pub gid: u32, pub unused5: u32,
    }
}

abi_struct! {
    /// `struct fuse_open_in` (OPEN, OPENDIR).
    pub struct OpenIn = 8 { pub flags: u32, pub open_flags: u32 }
}

abi_struct! {
    /// `struct fuse_create_in`, followed by the name.
    pub struct CreateIn = 16 { pub flags: u32, pub mode: u32, pub umask: u32, pub open_flags: u32 }
}

abi_struct! {
    /// `struct fuse_open_out`.
    pub struct OpenOut = 16 { pub fh: u64, pub open_flags: u32, pub padding: u32 }
}

abi_struct! {
    /// `struct fuse_release_in` (RELEASE, RELEASEDIR).
    pub struct ReleaseIn = 24 { pub fh: u64, pub flags: u32, pub release_flags: u32, pub lock_owner: u64 }
}

abi_struct! {
    /// `struct fuse_flush_in`.
    pub struct FlushIn = 24 { pub fh: u64, pub unused: u32, pub padding: u32, pub lock_owner: u64 }
}

abi_struct! {
    /// `struct fuse_read_in` (READ, READDIR, READDIRPLUS).
    pub struct ReadIn = 40 {
        pub fh: u64, pub offset: u64, pub size: u32, pub read_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
}

abi_struct! {
    /// `struct fuse_write_in`, followed by `size` bytes of data.
    pub struct WriteIn = 40 {
        pub fh: u64, pub offset: u64, pub size: u32, pub write_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
}

abi_struct! {
    /// `struct fuse_write_out`.
    pub struct WriteOut = 8 { pub size: u32, pub padding: u32 }
}

abi_struct! {
    /// `struct fuse_kstatfs` (the whole of `fuse_statfs_out`).
    pub struct StatfsOut = 80 {
        pub blocks: u64, pub bfree: u64, pub bavail: u64, pub files: u64, pub ffree: u64,
        pub bsize: u32, pub namelen: u32, pub frsize: u32, pub padding: u32, pub spare: [u32; 6],
    }
}

abi_struct! {
    /// `struct fuse_fsync_in` (FSYNC, FSYNCDIR).
    pub struct FsyncIn = 16 { pub fh: u64, pub fsync_flags: u32, pub padding: u32 }
}

abi_struct! {
    /// `struct fuse_mkdir_in`, followed by the name.
    pub struct MkdirIn = 8 { pub mode: u32, pub umask: u32 }
}

abi_struct! {
    /// `struct fuse_mknod_in`, followed by the name.
    pub struct MknodIn = 16 { pub mode: u32, pub rdev: u32, pub umask: u32, pub padding: u32 }
}

abi_struct! {
    /// `struct fuse_rename_in`, followed by old and new names.
    pub struct RenameIn = 8 { pub newdir: u64 }
}

abi_struct! {
    /// `struct fuse_rename2_in`, followed by old and new names.
    pub struct Rename2In = 16 { pub newdir: u64, pub flags: u32, pub padding: u32 }
}

abi_struct! {
    /// `struct fuse_link_in`, followed by the new name.
    pub struct LinkIn = 8 { pub oldnodeid: u64 }
}

abi_struct! {
    /// `struct fuse_fallocate_in`.
    pub struct FallocateIn = 32 { pub fh: u64, pub offset: u64, pub length: u64, pub mode: u32, pub padding: u32 }
}

abi_struct! {
    /// `struct fuse_dirent` header; the name follows, padded to 8 bytes.
    pub struct Dirent = 24 { pub ino: u64, pub off: u64, pub namelen: u32, pub typ: u32 }
}

/// Size of one `fuse_dirent` record with a name of `namelen` bytes.
pub fn dirent_size(namelen: usize) -> usize {
    (Dirent::SIZE + namelen + 7) & !7
}

/// Size of one `fuse_direntplus` record with a name of `namelen` bytes.
pub fn direntplus_size(namelen: usize) -> usize {
    EntryOut::SIZE + dirent_size(namelen)
}

/// Appends one `fuse_dirent` (header, name, zero padding).
pub fn encode_dirent(out: &mut Vec<u8>, d: &Dirent, name: &[u8]) {
    let start = out.len();
    d.encode(out);
    out.extend_from_slice(name);
    out.resize(start + dirent_size(name.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_writes_exactly_the_wire_size_in_little_endian() {
        let h = OutHeader {
            len: 0x0102_0304,
            error: -2,
            unique: 7,
        };
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), OutHeader::SIZE);
        assert_eq!(&out[..4], &[4, 3, 2, 1]);
        assert_eq!(&out[4..8], &(-2i32).to_le_bytes());
        assert_eq!(OutHeader::from_bytes(&out), Some(h));
    }

    #[test]
    fn decode_of_a_short_slice_fails_instead_of_panicking() {
        let bytes = [0u8; 39];
        assert_eq!(InHeader::from_bytes(&bytes), None);
        for n in 0..ReadIn::SIZE {
            assert!(ReadIn::from_bytes(&vec![0xff; n]).is_none());
        }
    }

    #[test]
    fn decode_reads_unaligned_input() {
        let mut buf = vec![0u8; 1];
        ForgetOne {
            nodeid: 5,
            nlookup: 9,
        }
        .encode(&mut buf);
        let got = ForgetOne::from_bytes(&buf[1..]).unwrap();
        assert_eq!((got.nodeid, got.nlookup), (5, 9));
    }

    #[test]
    fn cstr_needs_a_terminating_nul() {
        let mut d = Decoder::new(b"abc\0def");
        assert_eq!(d.cstr(), Some(&b"abc"[..]));
        assert_eq!(d.cstr(), None);
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        let mut out = Vec::new();
        encode_dirent(
            &mut out,
            &Dirent {
                ino: 1,
                off: 2,
                namelen: 3,
                typ: 4,
            },
            b"abc",
        );
        assert_eq!(out.len(), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
    }
}

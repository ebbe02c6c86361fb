//! The passthrough file system: one host directory, confined.
//!
//! Invariants:
//! - Every host path walk is one component, resolved with `openat2`
//!   (`RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`) relative to the parent's
//!   O_PATH handle, with `O_NOFOLLOW`: a symlink is looked up as itself and
//!   never followed, so nothing outside the shared root is reached.
//! - Guest names are checked before any host call: empty, `.`, `..`, any
//!   `/` or NUL, or longer than `NAME_MAX` is refused.
//! - Only regular files and directories are ever opened for I/O (symlinks
//!   only read with `readlinkat`); device nodes, FIFOs and sockets are only
//!   ever held as O_PATH handles, whose opening never reaches a driver. The
//!   I/O open re-opens the O_PATH handle's own inode through
//!   `/proc/self/fd`, after `fstat` on that very handle checked its type.
//! - Lookup counts are ours: FORGET saturates at zero, unknown ids are
//!   ignored, the root is never freed, and an inode with live children stays
//!   (a child needs its parent's name chain to be re-opened).
//! - At most `max_open_inodes` O_PATH handles are held (LRU); an evicted
//!   one is re-opened from its parent chain, beneath the root, and must
//!   match the (dev, ino) recorded at lookup, else ESTALE.
//! - Without `writable`, every mutating call returns EROFS before touching
//!   the host.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::abi::ROOT_ID;
use crate::sys::{self, Errno, SysResult};

/// Errors building a [`PassthroughFs`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared directory cannot be opened.
    #[error("the shared directory {path} cannot be opened: {source}")]
    SharedDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The shared path is not a directory.
    #[error("the shared path {0} is not a directory")]
    NotADirectory(PathBuf),
    /// `/proc/self/fd` is needed to re-open handles safely.
    #[error("/proc/self/fd is not available (is /proc mounted?): {0}")]
    Proc(std::io::Error),
}

/// How a share behaves.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Allow the guest to change the share.
    pub writable: bool,
    /// The host user and group that get what the guest creates (made with
    /// the guest caller's ids and permission checks, then handed over;
    /// kestrel run under sudo: the invoking user). `None`: the guest
    /// caller's own uid and gid. Only acts when the server runs as root.
    pub owner: Option<(u32, u32)>,
    /// Upper bound on O_PATH handles the inode table keeps open.
    pub max_open_inodes: usize,
    /// Upper bound on open file and directory handles (the guest's opens).
    pub max_handles: usize,
    /// How long a file must have gone unchanged (its ctime that far in the
    /// past) before an open may tell the guest to keep the data it cached
    /// (see [`PassthroughFs::open`]). Longer than the host's timestamp
    /// granularity, so a change right after a stamp is taken always moves
    /// the ctime.
    pub data_cache_after: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        let nofile = usize::try_from(sys::nofile_limit()).unwrap_or(usize::MAX);
        Self {
            writable: false,
            owner: None,
            max_open_inodes: (nofile / 4).clamp(16, 16384),
            max_handles: (nofile / 2).clamp(16, 65536),
            data_cache_after: Duration::from_secs(2),
        }
    }
}

/// A looked-up inode: its node id and attributes (`st_ino` already mapped
/// to the guest's inode number).
#[derive(Clone, Copy)]
pub struct Entry {
    /// Node id (the guest's handle for the inode).
    pub nodeid: u64,
    /// Attributes.
    pub st: libc::stat64,
}

/// One directory entry as read from the host.
#[derive(Debug)]
pub struct DirEntry<'a> {
    /// Node id of the directory it is in.
    pub dir: u64,
    /// Inode number (mapped).
    pub ino: u64,
    /// Offset of the next entry (the cookie to resume from).
    pub next_off: u64,
    /// `DT_*` type.
    pub typ: u8,
    /// Name bytes.
    pub name: &'a [u8],
}

/// Attribute changes (SETATTR); `None` leaves a field alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time (`UTIME_NOW` allowed in `tv_nsec`).
    pub atime: Option<libc::timespec>,
    /// New modification time.
    pub mtime: Option<libc::timespec>,
}

/// `mode` (permission bits) without what would give privilege on the
/// host: set-user-ID never, set-group-ID only on a directory (there it
/// just chooses the group of new entries). The guest is untrusted; the
/// server may run as root, so the host kernel would keep these bits.
pub fn unprivileged(mode: u32, kind: u32) -> u32 {
    let setgid = if kind == libc::S_IFDIR {
        0
    } else {
        libc::S_ISGID
    };
    mode & 0o7777 & !(libc::S_ISUID | setgid)
}

/// Who asks (for ownership of new files).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    /// Guest uid.
    pub uid: u32,
    /// Guest gid.
    pub gid: u32,
}

struct Inode {
    key: (u64, u64),
    parent: u64,
    name: CString,
    lookups: u64,
    children: u64,
    fd: Option<Arc<OwnedFd>>,
    /// `st_mode & S_IFMT` of the inode `fd` holds (set with every fd: an
    /// inode's type never changes, so opens need no fstat to check it).
    kind: u32,
    tick: u64,
    /// What the file looked like at the last open, if it had been stable
    /// then ([`CacheStamp::of`]): the guest's cached data is from no
    /// earlier than that open.
    stamp: Option<CacheStamp>,
}

/// A regular file's size and change times, which any change of its data
/// moves (mtime, and ctime, which no caller can set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheStamp {
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl CacheStamp {
    /// The stamp of `st`, if its last change is at least `settled` before
    /// `now`: only then does any later change leave a different stamp
    /// (timestamps are coarse, so a change in the same tick as the last
    /// one may leave mtime and ctime as they were).
    fn of(st: &libc::stat64, now: SystemTime, settled: Duration) -> Option<CacheStamp> {
        let ctime = UNIX_EPOCH.checked_add(Duration::new(
            u64::try_from(st.st_ctime).ok()?,
            u32::try_from(st.st_ctime_nsec).ok()?,
        ))?;
        if now.duration_since(ctime).ok()? < settled {
            return None;
        }
        Some(CacheStamp {
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        })
    }
}

/// The longest parent chain we follow when re-opening (guards against a
/// corrupted chain; real trees are far shallower).
const MAX_CHAIN: usize = 4096;

struct InodeTable {
    nodes: HashMap<u64, Inode>,
    by_key: HashMap<(u64, u64), u64>,
    lru: BTreeMap<u64, u64>,
    next_tick: u64,
    next_id: u64,
    max_fds: usize,
    devs: HashMap<u64, u64>,
    reopens: u64,
}

impl InodeTable {
    fn new(root_fd: OwnedFd, root_key: (u64, u64), max_fds: usize) -> Self {
        let mut t = Self {
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            next_id: ROOT_ID + 1,
            max_fds: max_fds.max(1),
            devs: HashMap::new(),
            reopens: 0,
        };
        t.devs.insert(root_key.0, 0);
        t.nodes.insert(
            ROOT_ID,
            Inode {
                key: root_key,
                parent: 0,
                name: CString::default(),
                lookups: 1,
                children: 0,
                fd: Some(Arc::new(root_fd)),
                kind: libc::S_IFDIR,
                tick: 0,
                stamp: None,
            },
        );
        t.by_key.insert(root_key, ROOT_ID);
        t
    }

    /// Guest inode number: the host's, tagged with a per-device index so
    /// two devices' inodes do not collide. Stable for the server's life.
    fn map_ino(&mut self, st: &mut libc::stat64) {
        let n = self.devs.len() as u64;
        let idx = *self.devs.entry(st.st_dev).or_insert(n);
        st.st_ino ^= idx << 48;
    }

    fn touch(&mut self, id: u64) {
        if id == ROOT_ID {
            return;
        }
        let tick = self.next_tick;
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.fd.is_some() {
                self.lru.remove(&n.tick);
                n.tick = tick;
                self.lru.insert(tick, id);
                self.next_tick += 1;
            }
        }
    }

    fn install(&mut self, id: u64, fd: Arc<OwnedFd>, kind: u32) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.fd = Some(fd);
            n.kind = kind;
        }
        self.touch(id);
    }

    fn evict_excess(&mut self) {
        while self.lru.len() > self.max_fds {
            let Some((_, id)) = self.lru.pop_first() else {
                break;
            };
            if let Some(n) = self.nodes.get_mut(&id) {
                n.fd = None;
            }
        }
    }

    /// The O_PATH handle of `id`, re-opened from its parent chain if evicted.
    fn fd_of(&mut self, id: u64) -> SysResult<Arc<OwnedFd>> {
        let node = self.nodes.get(&id).ok_or(Errno(libc::EBADF))?;
        if let Some(fd) = node.fd.clone() {
            self.touch(id);
            return Ok(fd);
        }
        // Walk up to the nearest ancestor with a handle (the root has one).
        let mut chain = vec![id];
        let mut cur = node.parent;
        let mut base = loop {
            let n = self.nodes.get(&cur).ok_or(Errno(libc::ESTALE))?;
            if let Some(fd) = n.fd.clone() {
                break fd;
            }
            chain.push(cur);
            if chain.len() > MAX_CHAIN {
                return Err(Errno(libc::ESTALE));
            }
            cur = n.parent;
        };
        for &step in chain.iter().rev() {
            let n = self.nodes.get(&step).ok_or(Errno(libc::ESTALE))?;
            let fd = sys::openat_beneath(base.as_fd(), &n.name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                .map_err(|e| {
                    if e.0 == libc::ENOENT {
                        Errno(libc::ESTALE)
                    } else {
                        e
                    }
                })?;
            let st = sys::fstat(fd.as_fd())?;
            if (st.st_dev, st.st_ino) != n.key {
                return Err(Errno(libc::ESTALE));
            }
            let fd = Arc::new(fd);
            self.install(step, fd.clone(), st.st_mode & S_IFMT);
            self.reopens += 1;
            base = fd;
        }
        self.evict_excess();
        Ok(base)
    }

    /// Counts one guest lookup of the inode `key` reached as `parent/name`.
    fn add_lookup(&mut self, parent: u64, name: &CStr, st: &libc::stat64, fd: Arc<OwnedFd>) -> u64 {
        let key = (st.st_dev, st.st_ino);
        let kind = st.st_mode & S_IFMT;
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.lookups = n.lookups.saturating_add(1);
                if n.fd.is_none() {
                    self.install(id, fd, kind);
                    self.evict_excess();
                } else {
                    self.touch(id);
                }
                return id;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.nodes.insert(
            id,
            Inode {
                key,
                parent,
                name: name.to_owned(),
                lookups: 1,
                children: 0,
                fd: None,
                kind,
                tick: 0,
                stamp: None,
            },
        );
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        self.by_key.insert(key, id);
        self.install(id, fd, kind);
        self.evict_excess();
        id
    }

    fn forget(&mut self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 && node.children == 0 {
            self.remove(id);
        }
    }

    /// Drops `id` and every ancestor that only it kept alive.
    fn remove(&mut self, mut id: u64) {
        while id != ROOT_ID {
            let Some(node) = self.nodes.remove(&id) else {
                return;
            };
            if node.fd.is_some() {
                self.lru.remove(&node.tick);
            }
            if self.by_key.get(&node.key) == Some(&id) {
                self.by_key.remove(&node.key);
            }
            let Some(p) = self.nodes.get_mut(&node.parent) else {
                return;
            };
            p.children = p.children.saturating_sub(1);
            if p.lookups > 0 || p.children > 0 {
                return;
            }
            id = node.parent;
        }
    }

    /// Moves `id` under `new_parent` as `name` (after a host rename).
    fn reparent(&mut self, id: u64, new_parent: u64, name: &CStr) {
        if id == ROOT_ID || !self.nodes.contains_key(&new_parent) {
            return;
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let old_parent = std::mem::replace(&mut node.parent, new_parent);
        node.name = name.to_owned();
        if let Some(p) = self.nodes.get_mut(&new_parent) {
            p.children += 1;
        }
        if let Some(p) = self.nodes.get_mut(&old_parent) {
            p.children = p.children.saturating_sub(1);
            if p.lookups == 0 && p.children == 0 {
                self.remove(old_parent);
            }
        }
    }

    /// Forgets every inode but the root (DESTROY, or a new INIT).
    fn reset(&mut self) {
        self.nodes.retain(|&id, _| id == ROOT_ID);
        self.by_key.retain(|_, id| *id == ROOT_ID);
        self.lru.clear();
        if let Some(r) = self.nodes.get_mut(&ROOT_ID) {
            r.children = 0;
        }
    }
}

enum Handle {
    File(FileHandle),
    /// An open directory: its node, its device (every entry's `st_dev`
    /// in READDIRPLUS before mapping) and its entry stream.
    Dir {
        nodeid: u64,
        dev: u64,
        stream: Mutex<DirStream>,
    },
}

/// An open file and whether it is known to carry no set-ID bits (then a
/// write needs no check: the guest can never set them, see [`unprivileged`]).
struct FileHandle {
    fd: OwnedFd,
    no_setid: AtomicBool,
}

impl FileHandle {
    fn handle(fd: OwnedFd, no_setid: bool) -> Handle {
        Handle::File(FileHandle {
            fd,
            no_setid: AtomicBool::new(no_setid),
        })
    }

    /// [`drop_privilege`] once per handle, after its first change.
    fn drop_privilege_once(&self) -> SysResult<()> {
        if !self.no_setid.load(Ordering::Relaxed) {
            drop_privilege(self.fd.as_fd(), &sys::proc_fd_path(self.fd.as_fd()))?;
            self.no_setid.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl AsFd for FileHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Bytes of `getdents64` records an open directory buffers.
const DIR_BUF: usize = 8 * 1024;

/// A directory read in order, like a `DIR*`: the records `getdents64`
/// returned and not yet sent stay buffered, so READDIR calls that go on
/// where the last one stopped (the kernel's way) cost no seek and no
/// re-read; any other offset seeks. Over a FUSE or NFS host directory a
/// re-read is another round trip to that server.
struct DirStream {
    fd: OwnedFd,
    /// Allocated on the first read, dropped at the end of the directory.
    buf: Vec<u8>,
    /// The next unsent record is `buf[pos..len]`.
    pos: usize,
    len: usize,
    /// The offset cookie of the stream's position (the next unsent
    /// record's); `None`: unknown, the next READDIR seeks.
    at: Option<u64>,
}

impl DirStream {
    fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            buf: Vec::new(),
            pos: 0,
            len: 0,
            at: None,
        }
    }
}

struct HandleTable {
    map: HashMap<u64, Arc<Handle>>,
    next: u64,
    max: usize,
}

/// The passthrough file system over one host directory.
pub struct PassthroughFs {
    root: PathBuf,
    proc_fds: OwnedFd,
    writable: bool,
    /// [`FsConfig::owner`].
    owner: Option<(u32, u32)>,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HandleTable>,
    /// [`FsConfig::data_cache_after`].
    data_cache_after: Duration,
    /// Directories READDIR reaches by node, without a handle: the kernel
    /// skips OPENDIR/RELEASEDIR once the server answers OPENDIR with
    /// ENOSYS (FUSE_NO_OPENDIR_SUPPORT), then sends READDIR with fh 0.
    /// Least recently used first; at most [`NODE_DIRS`] (each holds an fd).
    node_dirs: Mutex<Vec<(u64, Arc<Handle>)>>,
}

/// How many directories [`PassthroughFs::node_dirs`] keeps open.
const NODE_DIRS: usize = 16;

impl std::fmt::Debug for PassthroughFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFs")
            .field("root", &self.root)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough state for a
    // file server (counts, maps); keep serving rather than cascade.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a guest-supplied name: one component, nothing special.
pub fn check_name(name: &[u8]) -> SysResult<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno(libc::EINVAL));
    }
    if name.len() > 255 {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    CString::new(name).map_err(|_| Errno(libc::EINVAL))
}

const S_IFMT: u32 = libc::S_IFMT;

fn is_type(st: &libc::stat64, t: u32) -> bool {
    st.st_mode & S_IFMT == t
}

impl PassthroughFs {
    /// Opens `root` as the share.
    pub fn new(root: &Path, cfg: &FsConfig) -> Result<Self, Error> {
        let croot =
            CString::new(root.as_os_str().as_encoded_bytes()).map_err(|e| Error::SharedDir {
                path: root.into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let cwd = std::fs::File::open(".").ok();
        let at = cwd
            .as_ref()
            .map(|f| f.as_fd())
            // SAFETY: AT_FDCWD is a valid "descriptor" for *at calls and is
            // never closed through this borrow.
            .unwrap_or_else(|| unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) });
        let fd = sys::openat(at, &croot, libc::O_PATH).map_err(|e| Error::SharedDir {
            path: root.into(),
            source: std::io::Error::from_raw_os_error(e.0),
        })?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::SharedDir {
            path: root.into(),
            source: std::io::Error::from_raw_os_error(e.0),
        })?;
        if !is_type(&st, libc::S_IFDIR) {
            return Err(Error::NotADirectory(root.into()));
        }
        let proc_fds = std::fs::File::open("/proc/self/fd")
            .map(OwnedFd::from)
            .map_err(Error::Proc)?;
        Ok(Self {
            root: root.into(),
            proc_fds,
            writable: cfg.writable,
            owner: cfg.owner,
            inodes: Mutex::new(InodeTable::new(
                fd,
                (st.st_dev, st.st_ino),
                cfg.max_open_inodes,
            )),
            handles: Mutex::new(HandleTable {
                map: HashMap::new(),
                next: 1,
                max: cfg.max_handles,
            }),
            data_cache_after: cfg.data_cache_after,
            node_dirs: Mutex::new(Vec::new()),
        })
    }

    /// Whether the guest may change this share.
    pub fn writable(&self) -> bool {
        self.writable
    }

    fn check_writable(&self) -> SysResult<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Errno(libc::EROFS))
        }
    }

    fn fd(&self, id: u64) -> SysResult<Arc<OwnedFd>> {
        lock(&self.inodes).fd_of(id)
    }

    /// The O_PATH handle of `id`, its file type and its device.
    fn fd_kind(&self, id: u64) -> SysResult<(Arc<OwnedFd>, u32, u64)> {
        let mut t = lock(&self.inodes);
        let fd = t.fd_of(id)?;
        let n = t.nodes.get(&id).ok_or(Errno(libc::ESTALE))?;
        Ok((fd, n.kind, n.key.0))
    }

    fn mapped(&self, mut st: libc::stat64) -> libc::stat64 {
        lock(&self.inodes).map_ino(&mut st);
        st
    }

    /// Number of O_PATH handles the inode table holds now.
    pub fn open_inode_fds(&self) -> usize {
        let t = lock(&self.inodes);
        t.lru.len() + 1
    }

    /// Number of inodes the table knows (root included).
    pub fn known_inodes(&self) -> usize {
        lock(&self.inodes).nodes.len()
    }

    /// Lookup count the server holds for `id` (`None` if unknown).
    pub fn lookup_count(&self, id: u64) -> Option<u64> {
        lock(&self.inodes).nodes.get(&id).map(|n| n.lookups)
    }

    /// How many evicted handles were re-opened from their parent chain.
    pub fn reopens(&self) -> u64 {
        lock(&self.inodes).reopens
    }

    /// LOOKUP: `name` in directory `parent`; counts one lookup.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> SysResult<Entry> {
        let name = check_name(name)?;
        self.lookup_checked(parent, &name)
    }

    fn lookup_checked(&self, parent: u64, name: &CStr) -> SysResult<Entry> {
        let pfd = self.fd(parent)?;
        let fd = sys::openat_beneath(pfd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let mut st = sys::fstat(fd.as_fd())?;
        let mut t = lock(&self.inodes);
        if !t.nodes.contains_key(&parent) {
            return Err(Errno(libc::ESTALE));
        }
        let nodeid = t.add_lookup(parent, name, &st, Arc::new(fd));
        t.map_ino(&mut st);
        Ok(Entry { nodeid, st })
    }

    /// FORGET: drops `n` lookups of `id`.
    pub fn forget(&self, id: u64, n: u64) {
        lock(&self.inodes).forget(id, n);
    }

    /// DESTROY: forget everything but the root; close all handles.
    pub fn reset(&self) {
        lock(&self.inodes).reset();
        lock(&self.handles).map.clear();
        lock(&self.node_dirs).clear();
    }

    /// GETATTR.
    pub fn getattr(&self, id: u64) -> SysResult<libc::stat64> {
        let fd = self.fd(id)?;
        Ok(self.mapped(sys::fstat(fd.as_fd())?))
    }

    /// READLINK: the link text, never followed.
    pub fn readlink(&self, id: u64) -> SysResult<Vec<u8>> {
        let fd = self.fd(id)?;
        if !is_type(&sys::fstat(fd.as_fd())?, libc::S_IFLNK) {
            return Err(Errno(libc::EINVAL));
        }
        sys::readlink(fd.as_fd())
    }

    /// STATFS.
    pub fn statfs(&self, id: u64) -> SysResult<libc::statvfs64> {
        let fd = self.fd(id)?;
        sys::fstatfs(fd.as_fd())
    }

    /// Re-opens the O_PATH handle `fd` for I/O, after checking its type
    /// `kind` (the `st_mode & S_IFMT` it had when the handle was opened).
    fn reopen(
        &self,
        fd: BorrowedFd<'_>,
        kind: u32,
        flags: i32,
        want_dir: bool,
    ) -> SysResult<OwnedFd> {
        match kind {
            libc::S_IFREG if !want_dir => {}
            libc::S_IFDIR if want_dir => {}
            libc::S_IFDIR => return Err(Errno(libc::EISDIR)),
            libc::S_IFREG => return Err(Errno(libc::ENOTDIR)),
            libc::S_IFLNK => return Err(Errno(libc::ELOOP)),
            // Device nodes, FIFOs, sockets: never opened (CVE-2020-35517).
            _ => return Err(Errno(libc::EPERM)),
        }
        // The magic link resolves to exactly the inode `fd` holds, which we
        // just checked; nothing in between can swap it.
        sys::openat(self.proc_fds.as_fd(), &sys::fd_name(fd), flags)
    }

    fn open_flags(&self, flags: u32) -> SysResult<i32> {
        let flags = flags as i32;
        let acc = flags & libc::O_ACCMODE;
        let wants_write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if wants_write {
            self.check_writable()?;
        }
        // Keep what is meaningful for an existing file; drop O_CREAT,
        // O_EXCL, O_NOFOLLOW (the magic link must be followed), O_DIRECT
        // (our buffers are not aligned), O_PATH, O_TMPFILE, …
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_TRUNC
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_NOATIME;
        Ok((flags & keep) | libc::O_NOCTTY)
    }

    fn add_handle(&self, h: Handle) -> SysResult<u64> {
        let mut t = lock(&self.handles);
        if t.map.len() >= t.max {
            return Err(Errno(libc::EMFILE));
        }
        let fh = t.next;
        t.next += 1;
        t.map.insert(fh, Arc::new(h));
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> SysResult<Arc<Handle>> {
        lock(&self.handles)
            .map
            .get(&fh)
            .cloned()
            .ok_or(Errno(libc::EBADF))
    }

    fn file(&self, fh: u64) -> SysResult<Arc<Handle>> {
        let h = self.handle(fh)?;
        match &*h {
            Handle::File(_) => Ok(h),
            Handle::Dir { .. } => Err(Errno(libc::EISDIR)),
        }
    }

    /// OPEN: a handle for reading (and writing, on a writable share).
    ///
    /// Also says whether the guest may keep the data it cached for this
    /// file (`FOPEN_KEEP_CACHE`): only when the file is exactly as it was
    /// at the previous open and had been unchanged for
    /// [`FsConfig::data_cache_after`] then. Otherwise the guest drops its
    /// cached pages at this open (close-to-open consistency, as
    /// virtiofsd's `cache=auto`), and a program started again and again
    /// does not read its binary and libraries anew each time.
    pub fn open(&self, id: u64, flags: u32) -> SysResult<(u64, bool)> {
        let flags = self.open_flags(flags)?;
        let (fd, kind, _) = self.fd_kind(id)?;
        let file = self.reopen(fd.as_fd(), kind, flags, false)?;
        let keep = kind == libc::S_IFREG && self.keep_cache(id, file.as_fd());
        Ok((self.add_handle(FileHandle::handle(file, false))?, keep))
    }

    /// Records the file's stamp at this open; whether it matches the last.
    fn keep_cache(&self, id: u64, file: BorrowedFd<'_>) -> bool {
        let Ok(st) = sys::fstat(file) else {
            return false;
        };
        let now = CacheStamp::of(&st, SystemTime::now(), self.data_cache_after);
        let mut t = lock(&self.inodes);
        let Some(node) = t.nodes.get_mut(&id) else {
            return false;
        };
        let keep = now.is_some() && node.stamp == now;
        node.stamp = now;
        keep
    }

    /// READ: up to `size` bytes at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: usize) -> SysResult<Vec<u8>> {
        let h = self.file(fh)?;
        let Handle::File(fd) = &*h else {
            return Err(Errno(libc::EBADF));
        };
        let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
        let mut buf = vec![0u8; size];
        let mut done = 0;
        while done < size {
            let n = sys::pread(fd.as_fd(), &mut buf[done..], offset + done as i64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// RELEASE / RELEASEDIR.
    pub fn release(&self, fh: u64) {
        lock(&self.handles).map.remove(&fh);
    }

    /// OPENDIR.
    pub fn opendir(&self, id: u64) -> SysResult<u64> {
        let h = self.open_dir(id)?;
        self.add_handle(h)
    }

    fn open_dir(&self, id: u64) -> SysResult<Handle> {
        let (fd, kind, dev) = self.fd_kind(id)?;
        let dir = self.reopen(fd.as_fd(), kind, libc::O_RDONLY | libc::O_DIRECTORY, true)?;
        Ok(Handle::Dir {
            nodeid: id,
            dev,
            stream: Mutex::new(DirStream::new(dir)),
        })
    }

    /// The open directory of node `id` for a request without a handle
    /// (`fh` 0, see [`node_dirs`](Self::node_dirs)), opened if need be.
    fn node_dir(&self, id: u64) -> SysResult<Arc<Handle>> {
        {
            let mut dirs = lock(&self.node_dirs);
            if let Some(i) = dirs.iter().position(|(node, _)| *node == id) {
                let hit = dirs.remove(i);
                let h = hit.1.clone();
                dirs.push(hit);
                return Ok(h);
            }
        }
        let h = Arc::new(self.open_dir(id)?);
        let mut dirs = lock(&self.node_dirs);
        // Another request queue's worker may have opened it meanwhile.
        dirs.retain(|(node, _)| *node != id);
        if dirs.len() >= NODE_DIRS {
            dirs.remove(0);
        }
        dirs.push((id, h.clone()));
        Ok(h)
    }

    /// The open directory behind `fh`, or node `id`'s when `fh` is 0
    /// (never a handle number).
    fn dir_handle(&self, fh: u64, id: u64) -> SysResult<Arc<Handle>> {
        let h = if fh == 0 {
            self.node_dir(id)?
        } else {
            self.handle(fh)?
        };
        match &*h {
            Handle::Dir { .. } => Ok(h),
            Handle::File(_) => Err(Errno(libc::ENOTDIR)),
        }
    }

    /// READDIR of handle `fh` (or of node `id` when `fh` is 0): calls
    /// `emit` for entries from `offset` on until it returns `false` (entry
    /// did not fit) or the directory ends. Offset 0 always reads the
    /// directory afresh, as `rewinddir` does.
    pub fn readdir(
        &self,
        fh: u64,
        id: u64,
        offset: u64,
        mut emit: impl FnMut(DirEntry<'_>) -> bool,
    ) -> SysResult<()> {
        let h = self.dir_handle(fh, id)?;
        let Handle::Dir {
            stream,
            dev,
            nodeid,
        } = &*h
        else {
            return Err(Errno(libc::ENOTDIR));
        };
        let dir_dev = *dev;
        let mut d = lock(stream);
        let d = &mut *d;
        if d.at != Some(offset) || offset == 0 {
            d.at = None;
            d.pos = 0;
            d.len = 0;
            sys::lseek(d.fd.as_fd(), offset as i64)?;
            d.at = Some(offset);
        }
        loop {
            if d.pos + 19 > d.len {
                d.buf.resize(DIR_BUF, 0);
                let n = sys::getdents64(d.fd.as_fd(), &mut d.buf).inspect_err(|_| d.at = None)?;
                d.pos = 0;
                d.len = n;
                if n == 0 {
                    d.buf = Vec::new();
                    return Ok(());
                }
            }
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name…
            let rec = &d.buf[d.pos..d.len];
            let ino = u64::from_le_bytes(rec[0..8].try_into().expect("8 bytes"));
            let off = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
            let reclen = usize::from(u16::from_le_bytes([rec[16], rec[17]]));
            if reclen < 19 || reclen > rec.len() {
                d.at = None;
                return Err(Errno(libc::EIO));
            }
            let typ = rec[18];
            let raw = &rec[19..reclen];
            let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
            let mut st: libc::stat64 = {
                // SAFETY: stat64 is plain old data; zero is a valid value.
                unsafe { std::mem::zeroed() }
            };
            st.st_dev = dir_dev;
            st.st_ino = ino;
            let st = self.mapped(st);
            if !emit(DirEntry {
                dir: *nodeid,
                ino: st.st_ino,
                next_off: off,
                typ,
                name,
            }) {
                // Did not fit: it is the first record of the next call.
                return Ok(());
            }
            d.pos += reclen;
            d.at = Some(off);
        }
    }

    /// Lookup for READDIRPLUS: same as LOOKUP, with the name from the host.
    pub fn lookup_for_readdir(&self, parent: u64, name: &[u8]) -> SysResult<Entry> {
        self.lookup(parent, name)
    }

    // ---- writable share ----

    /// Hands the new entry `name` in `dir` to [`FsConfig::owner`], if set
    /// (it was made with the guest caller's ids and permission checks).
    fn give_to_owner(&self, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
        match self.owner {
            Some((uid, gid)) if sys::is_root() => sys::chown_at(dir, name, uid, gid),
            _ => Ok(()),
        }
    }

    fn entry_of_new(&self, parent: u64, name: &CStr) -> SysResult<Entry> {
        self.lookup_checked(parent, name)
    }

    /// CREATE: a new regular file, opened.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        who: Caller,
    ) -> SysResult<(Entry, u64)> {
        self.check_writable()?;
        let name = check_name(name)?;
        // O_EXCL is kept here: it is the caller's guarantee of a new file.
        let excl = flags as i32 & libc::O_EXCL;
        let flags = self.open_flags(flags)? | excl;
        let pfd = self.fd(parent)?;
        let file = sys::as_caller(who.uid, who.gid, || {
            sys::openat_beneath(
                pfd.as_fd(),
                &name,
                flags | libc::O_CREAT | libc::O_NOFOLLOW,
                unprivileged(mode, libc::S_IFREG),
            )
        })?;
        let st = sys::fstat(file.as_fd())?;
        if !is_type(&st, libc::S_IFREG) {
            return Err(Errno(libc::EPERM));
        }
        if let (Some((uid, gid)), true) = (self.owner, sys::is_root()) {
            sys::fchown(file.as_fd(), uid, gid)?;
        }
        let entry = self.entry_of_new(parent, &name)?;
        let no_setid = st.st_mode & (libc::S_ISUID | libc::S_ISGID) == 0;
        let fh = match self.add_handle(FileHandle::handle(file, no_setid)) {
            Ok(fh) => fh,
            Err(e) => {
                self.forget(entry.nodeid, 1);
                return Err(e);
            }
        };
        Ok((entry, fh))
    }

    /// MKDIR.
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, who: Caller) -> SysResult<Entry> {
        self.check_writable()?;
        let name = check_name(name)?;
        let pfd = self.fd(parent)?;
        sys::as_caller(who.uid, who.gid, || {
            sys::mkdirat(pfd.as_fd(), &name, unprivileged(mode, libc::S_IFDIR))
        })?;
        self.give_to_owner(pfd.as_fd(), &name)?;
        self.entry_of_new(parent, &name)
    }

    /// MKNOD: regular files and FIFOs only; device nodes and sockets refused.
    pub fn mknod(&self, parent: u64, name: &[u8], mode: u32, who: Caller) -> SysResult<Entry> {
        self.check_writable()?;
        let name = check_name(name)?;
        match mode & S_IFMT {
            libc::S_IFREG | libc::S_IFIFO => {}
            _ => return Err(Errno(libc::EPERM)),
        }
        let pfd = self.fd(parent)?;
        sys::as_caller(who.uid, who.gid, || {
            sys::mknodat(
                pfd.as_fd(),
                &name,
                (mode & S_IFMT) | unprivileged(mode, mode & S_IFMT),
            )
        })?;
        self.give_to_owner(pfd.as_fd(), &name)?;
        self.entry_of_new(parent, &name)
    }

    /// SYMLINK: `name` in `parent` pointing at `target` (stored, never followed).
    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        who: Caller,
    ) -> SysResult<Entry> {
        self.check_writable()?;
        let name = check_name(name)?;
        if target.is_empty() || target.len() >= libc::PATH_MAX as usize {
            return Err(Errno(libc::EINVAL));
        }
        let target = CString::new(target).map_err(|_| Errno(libc::EINVAL))?;
        let pfd = self.fd(parent)?;
        sys::as_caller(who.uid, who.gid, || {
            sys::symlinkat(&target, pfd.as_fd(), &name)
        })?;
        self.give_to_owner(pfd.as_fd(), &name)?;
        self.entry_of_new(parent, &name)
    }

    /// LINK: a new name for inode `id`.
    pub fn link(&self, id: u64, parent: u64, name: &[u8]) -> SysResult<Entry> {
        self.check_writable()?;
        let name = check_name(name)?;
        let fd = self.fd(id)?;
        if is_type(&sys::fstat(fd.as_fd())?, libc::S_IFDIR) {
            return Err(Errno(libc::EPERM));
        }
        let pfd = self.fd(parent)?;
        sys::link_proc(&sys::proc_fd_path(fd.as_fd()), pfd.as_fd(), &name)?;
        self.entry_of_new(parent, &name)
    }

    /// UNLINK / RMDIR.
    pub fn unlink(&self, parent: u64, name: &[u8], dir: bool) -> SysResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        let pfd = self.fd(parent)?;
        sys::unlinkat(pfd.as_fd(), &name, if dir { libc::AT_REMOVEDIR } else { 0 })
    }

    /// RENAME / RENAME2.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> SysResult<()> {
        self.check_writable()?;
        let name = check_name(name)?;
        let new_name = check_name(new_name)?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let pfd = self.fd(parent)?;
        let npfd = self.fd(new_parent)?;
        let moved = sys::statat(pfd.as_fd(), &name)?;
        let other = sys::statat(npfd.as_fd(), &new_name).ok();
        sys::renameat2(pfd.as_fd(), &name, npfd.as_fd(), &new_name, flags)?;
        let mut t = lock(&self.inodes);
        if let Some(&id) = t.by_key.get(&(moved.st_dev, moved.st_ino)) {
            t.reparent(id, new_parent, &new_name);
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Some(o) = other {
                if let Some(&id) = t.by_key.get(&(o.st_dev, o.st_ino)) {
                    t.reparent(id, parent, &name);
                }
            }
        }
        Ok(())
    }

    /// SETATTR; returns the new attributes.
    pub fn setattr(&self, id: u64, fh: Option<u64>, a: &SetAttr) -> SysResult<libc::stat64> {
        self.check_writable()?;
        let fd = self.fd(id)?;
        let st = sys::fstat(fd.as_fd())?;
        let path = sys::proc_fd_path(fd.as_fd());
        if let Some(mode) = a.mode {
            if is_type(&st, libc::S_IFLNK) {
                return Err(Errno(libc::EOPNOTSUPP));
            }
            sys::chmod_proc(&path, unprivileged(mode, st.st_mode & S_IFMT))?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::fchown(
                fd.as_fd(),
                a.uid.unwrap_or(u32::MAX),
                a.gid.unwrap_or(u32::MAX),
            )?;
            drop_privilege(fd.as_fd(), &path)?;
        }
        if let Some(size) = a.size {
            let size = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
            let handle = fh.and_then(|fh| self.file(fh).ok());
            match handle.as_deref() {
                Some(Handle::File(f)) => sys::ftruncate(f.as_fd(), size)?,
                _ => {
                    let kind = st.st_mode & S_IFMT;
                    let f = self.reopen(fd.as_fd(), kind, libc::O_WRONLY, false)?;
                    sys::ftruncate(f.as_fd(), size)?;
                }
            }
            drop_privilege(fd.as_fd(), &path)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let omit = libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            };
            if is_type(&st, libc::S_IFLNK) {
                return Err(Errno(libc::EOPNOTSUPP));
            }
            sys::utimens_proc(&path, &[a.atime.unwrap_or(omit), a.mtime.unwrap_or(omit)])?;
        }
        Ok(self.mapped(sys::fstat(fd.as_fd())?))
    }

    /// WRITE: `data` at `offset`; returns bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<usize> {
        self.check_writable()?;
        let h = self.file(fh)?;
        let Handle::File(fd) = &*h else {
            return Err(Errno(libc::EBADF));
        };
        let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
        let n = sys::pwrite(fd.as_fd(), data, offset)?;
        fd.drop_privilege_once()?;
        Ok(n)
    }

    /// FSYNC of handle `fh`; FSYNCDIR (`dir`) of `fh` or, when `fh` is 0,
    /// of node `id`.
    pub fn fsync(&self, fh: u64, id: u64, dir: bool, data_only: bool) -> SysResult<()> {
        let h = if dir {
            self.dir_handle(fh, id)?
        } else {
            self.handle(fh)?
        };
        match &*h {
            Handle::File(fd) => sys::fsync(fd.as_fd(), data_only),
            Handle::Dir { stream, .. } => sys::fsync(lock(stream).fd.as_fd(), data_only),
        }
    }

    /// FALLOCATE.
    pub fn fallocate(&self, fh: u64, mode: u32, offset: u64, len: u64) -> SysResult<()> {
        self.check_writable()?;
        let h = self.file(fh)?;
        let Handle::File(fd) = &*h else {
            return Err(Errno(libc::EBADF));
        };
        let off = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
        let len = i64::try_from(len).map_err(|_| Errno(libc::EINVAL))?;
        sys::fallocate(fd.as_fd(), mode as i32, off, len)?;
        fd.drop_privilege_once()
    }
}

/// Clears set-user-ID, and set-group-ID with group execute, on the file `fd`
/// (`path` is its `/proc/self/fd/N`) after a change to its contents or owner, as
/// the kernel does for callers without `CAP_FSETID` (and virtiofsd's
/// killpriv): a guest must not leave a privileged program behind on the
/// host by rewriting one. As root the kernel keeps the bits, so the server
/// clears them itself; otherwise the kernel already has.
fn drop_privilege(fd: BorrowedFd<'_>, path: &CStr) -> SysResult<()> {
    if !sys::is_root() {
        return Ok(());
    }
    let st = sys::fstat(fd)?;
    if st.st_mode & S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    let mut strip = st.st_mode & libc::S_ISUID;
    if st.st_mode & libc::S_IXGRP != 0 {
        strip |= st.st_mode & libc::S_ISGID;
    }
    if strip == 0 {
        return Ok(());
    }
    sys::chmod_proc(path, st.st_mode & 0o7777 & !strip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(size: i64, mtime: i64, ctime: i64) -> libc::stat64 {
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        (st.st_size, st.st_mtime, st.st_ctime) = (size, mtime, ctime);
        st
    }

    #[test]
    fn a_stamp_is_taken_only_once_the_file_has_settled() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let settled = Duration::from_secs(2);
        assert!(CacheStamp::of(&stat(5, 990, 990), now, settled).is_some());
        assert!(CacheStamp::of(&stat(5, 990, 998), now, settled).is_some());
        assert!(
            CacheStamp::of(&stat(5, 990, 999), now, settled).is_none(),
            "changed 1 s ago"
        );
        assert!(
            CacheStamp::of(&stat(5, 990, 1_500), now, settled).is_none(),
            "in the future"
        );
        assert!(
            CacheStamp::of(&stat(5, 990, -1), now, settled).is_none(),
            "before 1970"
        );
        let a = CacheStamp::of(&stat(5, 990, 990), now, settled);
        assert_ne!(a, CacheStamp::of(&stat(6, 990, 990), now, settled), "size");
        assert_ne!(a, CacheStamp::of(&stat(5, 991, 990), now, settled), "mtime");
        assert_ne!(a, CacheStamp::of(&stat(5, 990, 991), now, settled), "ctime");
    }
}

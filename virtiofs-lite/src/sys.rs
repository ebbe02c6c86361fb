//! Thin, checked wrappers over the Linux system calls the passthrough file
//! system needs. This is the only module that calls libc on file
//! descriptors; everything above it works with `OwnedFd`, `CStr` and
//! `Errno`.
//!
//! Invariant: every wrapper takes borrowed fds and NUL-terminated names, so
//! no call here can read or write memory outside the buffers it is given.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A Linux error number, positive (`libc::ENOENT`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The error of the last failed libc call on this thread.
    pub fn last() -> Self {
        Self::from(io::Error::last_os_error())
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

pub type SysResult<T> = Result<T, Errno>;

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn check_fd(ret: libc::c_long) -> SysResult<OwnedFd> {
    if ret < 0 {
        return Err(Errno::last());
    }
    let fd = RawFd::try_from(ret).map_err(|_| Errno(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it, so `OwnedFd` may take ownership and close it on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The empty path, for `*at` calls on the descriptor itself.
pub const EMPTY: &CStr = c"";

/// `openat2(dirfd, name, how)`: resolution confined beneath `dirfd`, no
/// magic links (`/proc/*/fd`), so no path can leave the directory.
pub fn openat_beneath(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
) -> SysResult<OwnedFd> {
    // SAFETY: zeroed is a valid value for this plain C struct.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u32 as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode & 0o7777)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `name` is NUL-terminated and `how` is a valid open_how whose
    // size we pass; the kernel reads both and writes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    check_fd(ret)
}

/// Plain `openat` (used for `/proc/self/fd/N` re-opens, which must follow
/// the magic link to the very inode the O_PATH fd holds).
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the call reads it and returns an fd.
    let ret = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    check_fd(libc::c_long::from(ret))
}

/// `fstatat(fd, "", AT_EMPTY_PATH)`: works on O_PATH descriptors.
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::uninit();
    // SAFETY: `st` is valid for writes of one stat64; the path is "".
    check(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn statat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::uninit();
    // SAFETY: `st` is valid for writes of one stat64; `name` is NUL-terminated.
    check(unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs64> {
    let mut st = MaybeUninit::<libc::statvfs64>::uninit();
    // SAFETY: `st` is valid for writes of one statvfs64.
    check(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// The target of the symlink `fd` refers to (an O_PATH fd of the link).
pub fn readlink(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Reads raw `linux_dirent64` records into `buf`; returns the bytes filled.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the kernel
    // writes at most that many.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    Ok(n as usize)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64) -> SysResult<()> {
    // SAFETY: lseek has no memory-safety preconditions.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), offset, libc::SEEK_SET) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated; rdev 0 (callers only make files and FIFOs).
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `linkat` of the inode behind `proc_path` (a `/proc/self/fd/N` path).
pub fn link_proc(proc_path: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn chmod_proc(proc_path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `proc_path` is NUL-terminated.
    check(unsafe { libc::chmod(proc_path.as_ptr(), mode) }).map(drop)
}

/// `fchownat(dir, name, AT_SYMLINK_NOFOLLOW)`: a symlink itself, never its target.
pub fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated; the call reads only it.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: the path is ""; AT_EMPTY_PATH makes the call act on `fd`.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn utimens_proc(proc_path: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: `proc_path` is NUL-terminated; `times` points to two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, proc_path.as_ptr(), times.as_ptr(), 0) })
        .map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: i64, len: i64) -> SysResult<()> {
    // SAFETY: fallocate has no memory-safety preconditions.
    check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    // SAFETY: fsync/fdatasync have no memory-safety preconditions.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: i64) -> SysResult<()> {
    // SAFETY: ftruncate has no memory-safety preconditions.
    check(unsafe { libc::ftruncate64(fd.as_raw_fd(), size) }).map(drop)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: i64) -> SysResult<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::pread64(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
    if n < 0 {
        return Err(Errno::last());
    }
    Ok(n as usize)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: i64) -> SysResult<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { libc::pwrite64(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) };
    if n < 0 {
        return Err(Errno::last());
    }
    Ok(n as usize)
}

/// This process's `RLIMIT_NOFILE` (soft and hard), if it can be read.
fn nofile() -> Option<libc::rlimit64> {
    let mut lim = MaybeUninit::<libc::rlimit64>::uninit();
    // SAFETY: `lim` is valid for writes of one rlimit64.
    if unsafe { libc::getrlimit64(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: getrlimit succeeded, so it filled `lim`.
    Some(unsafe { lim.assume_init() })
}

/// The soft `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> u64 {
    nofile().map_or(1024, |l| l.rlim_cur)
}

/// Ceiling [`raise_nofile_limit`] aims for (virtiofsd's default too).
pub const NOFILE_WANTED: u64 = 1 << 20;

/// Raises this process's `RLIMIT_NOFILE` so the inode table can keep a
/// handle per inode the guest holds (fewer re-opens from the parent chain):
/// the soft limit to the hard one, and as root both to [`NOFILE_WANTED`]
/// (bounded by `fs.nr_open`) where the hard limit is lower. Call it before
/// [`crate::FsConfig::default`] sizes the tables. Returns the soft limit
/// now in force; never fails (the limit stays as it was).
pub fn raise_nofile_limit() -> u64 {
    let Some(old) = nofile() else {
        return nofile_limit();
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(NOFILE_WANTED);
    let wanted = NOFILE_WANTED.min(nr_open).max(old.rlim_max);
    for max in [wanted, old.rlim_max] {
        if old.rlim_cur >= max {
            break;
        }
        let new = libc::rlimit64 {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: `new` is a valid rlimit64; raising a limit affects only
        // this process (and fails without privilege, changing nothing).
        if unsafe { libc::setrlimit64(libc::RLIMIT_NOFILE, &new) } == 0 {
            break;
        }
    }
    nofile_limit()
}

/// Runs `f` with this thread's file-system uid/gid switched to the
/// caller's, so files a guest user creates belong to that user. Only when
/// we are root (otherwise the switch is impossible and pointless).
pub fn as_caller<T>(uid: u32, gid: u32, f: impl FnOnce() -> SysResult<T>) -> SysResult<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return f();
    }
    // setfsuid/setfsgid act on the calling thread only (raw syscalls, glibc
    // does not broadcast them), so other worker threads are unaffected.
    // SAFETY: the syscalls take integers and touch no memory.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    let r = f();
    // SAFETY: as above; back to root.
    unsafe {
        libc::syscall(libc::SYS_setfsuid, 0);
        libc::syscall(libc::SYS_setfsgid, 0);
    }
    r
}

/// Whether this process runs as root (`CAP_FSETID` keeps set-ID bits).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `/proc/self/fd/N` for a descriptor, as a C string.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("digits contain no NUL")
}

/// The decimal name of `fd` inside `/proc/self/fd`.
pub fn fd_name(fd: BorrowedFd<'_>) -> CString {
    CString::new(fd.as_raw_fd().to_string()).expect("digits contain no NUL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_nofile_reaches_at_least_the_hard_limit() {
        let before = nofile_limit();
        let after = raise_nofile_limit();
        assert!(after >= before);
        let lim = nofile().expect("getrlimit");
        assert_eq!(lim.rlim_cur, lim.rlim_max, "the soft limit is the hard one");
        assert_eq!(after, lim.rlim_cur);
        // Idempotent.
        assert_eq!(raise_nofile_limit(), after);
    }
}

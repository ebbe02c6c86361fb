//! Thin wrappers over the libc calls the init makes.
//!
//! Owns every `unsafe` call into libc. Each wrapper is a single system call
//! (EINTR retried where the call can be interrupted) returning `io::Result`.
//! The `child_*` functions run between `fork` and `exec`: they take
//! pre-built C strings and never allocate.

use std::ffi::{c_char, CStr, CString, NulError};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr;

/// `finit_module` flag: the file is compressed; the kernel decompresses it.
pub const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn retry<F: FnMut() -> libc::c_int>(mut call: F) -> io::Result<libc::c_int> {
    loop {
        match check(call()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Converts a Rust string for a system call; a NUL byte is `EINVAL`.
pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cpath(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn opt_ptr(s: Option<&CStr>) -> *const c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

/// `mount(2)`. `None` passes a null pointer.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // until the call returns; mount(2) does not keep them.
    check(unsafe {
        libc::mount(
            opt_ptr(source.as_deref()),
            target.as_ptr(),
            opt_ptr(fstype.as_deref()),
            flags,
            opt_ptr(data.as_deref()).cast(),
        )
    })?;
    Ok(())
}

/// Creates a character device node with mode 0600.
pub fn mknod_char(path: &Path, major: u32, minor: u32) -> io::Result<()> {
    let path = cpath(path)?;
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
    check(unsafe {
        libc::mknod(
            path.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    })?;
    Ok(())
}

/// `finit_module(2)`: loads the module in the open file `module`.
pub fn finit_module(module: &impl AsRawFd, params: &CStr, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: the fd is open for the call's duration and `params` is a
    // NUL-terminated string the kernel copies.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            module.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `getpid(2)`.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// `CLOCK_BOOTTIME` in microseconds: the guest's uptime.
pub fn uptime_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if ret != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// Whether `fd` is an open descriptor.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Writes all of `buf` to `fd` (which the caller keeps open).
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is only written to.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = buf.get(n.unsigned_abs()..).unwrap_or_default();
    }
    Ok(())
}

/// Whether `fd` is a terminal.
pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty only queries the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// `tcdrain(3)`: waits until everything written to the tty `fd` is sent.
pub fn tcdrain(fd: RawFd) -> io::Result<()> {
    // SAFETY: tcdrain only waits on the descriptor.
    retry(|| unsafe { libc::tcdrain(fd) })?;
    Ok(())
}

/// Puts the tty `fd` in raw mode for a byte protocol: `cfmakeraw` (no
/// echo, no line editing, no signals, no CR/NL or flow-control translation,
/// 8 bits), `CLOCAL | CREAD`, and a read returns as soon as one byte is
/// there (`VMIN = 1`, `VTIME = 0`). Input received before the change is
/// discarded (`TCSAFLUSH`).
pub fn make_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: termios is plain data; all-zero is a valid value, and
    // tcgetattr overwrites it.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `tio` is a valid, writable termios for the call's duration.
    retry(|| unsafe { libc::tcgetattr(fd, &mut tio) })?;
    // SAFETY: `tio` is a valid termios; cfmakeraw only edits its fields.
    unsafe { libc::cfmakeraw(&mut tio) };
    tio.c_cflag |= libc::CLOCAL | libc::CREAD;
    tio.c_cc[libc::VMIN] = 1;
    tio.c_cc[libc::VTIME] = 0;
    // SAFETY: `tio` is a valid termios the kernel only reads.
    retry(|| unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &tio) })?;
    Ok(())
}

/// Sets `CLOCK_REALTIME` to `ns` nanoseconds since the epoch.
pub fn set_realtime_ns(ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(ns / 1_000_000_000)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?,
        // Below 10^9, so it fits every `c_long`.
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec the kernel only reads.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })?;
    Ok(())
}

/// `RNDADDENTROPY` from `linux/random.h`: `_IOW('R', 0x03, int[2])`.
pub const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
/// `RNDRESEEDCRNG` from `linux/random.h`: `_IO('R', 0x07)` (Linux 4.17+).
pub const RNDRESEEDCRNG: libc::Ioctl = 0x5207;

/// How many random bytes [`rand_pool_info`] carries: a job header's seed.
pub const POOL_SEED_BYTES: usize = kestrel_initramfs::job::SEED_BYTES;
/// The size of the `struct rand_pool_info` that [`rand_pool_info`] builds.
pub const RAND_POOL_INFO_BYTES: usize = 8 + POOL_SEED_BYTES;

/// A `struct rand_pool_info` (`linux/random.h`) as bytes, crediting every
/// bit of `seed`: `int entropy_count` (in bits), `int buf_size` (in bytes),
/// both native-endian, then the bytes of `seed` as `buf`.
pub fn rand_pool_info(seed: &[u8; POOL_SEED_BYTES]) -> [u8; RAND_POOL_INFO_BYTES] {
    // Both are 32 and 256: far below `i32::MAX`.
    let bytes = POOL_SEED_BYTES as i32;
    let bits = 8 * bytes;
    let mut info = [0u8; RAND_POOL_INFO_BYTES];
    info[..4].copy_from_slice(&bits.to_ne_bytes());
    info[4..8].copy_from_slice(&bytes.to_ne_bytes());
    info[8..].copy_from_slice(seed);
    info
}

/// `ioctl(fd, RNDADDENTROPY, info)` on a random device: mixes the bytes of
/// `info` (built by [`rand_pool_info`]) into the kernel's input pool and
/// credits their entropy. Needs `CAP_SYS_ADMIN`.
pub fn add_entropy(fd: RawFd, info: &[u8; RAND_POOL_INFO_BYTES]) -> io::Result<()> {
    // SAFETY: `info` is a whole rand_pool_info whose `buf_size` is the
    // number of bytes that follow its header (rand_pool_info builds it so);
    // the kernel only reads it, during the call. It copies the header with
    // copy_from_user, so the byte array's alignment does not matter.
    check(unsafe { libc::ioctl(fd, RNDADDENTROPY, info.as_ptr()) })?;
    Ok(())
}

/// `ioctl(fd, RNDRESEEDCRNG)` on a random device: re-keys the kernel's
/// CRNG from its input pool now rather than at the next timed reseed.
/// Needs `CAP_SYS_ADMIN`.
pub fn reseed_crng(fd: RawFd) -> io::Result<()> {
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory.
    check(unsafe { libc::ioctl(fd, RNDRESEEDCRNG) })?;
    Ok(())
}

/// `fsync(2)`.
pub fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: fsync takes no pointers.
    retry(|| unsafe { libc::fsync(fd) })?;
    Ok(())
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fork(2)`: `Ok(0)` in the child, the child's pid in the parent.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the init is single-threaded, so the child inherits no lock held
    // by another thread; the child only calls the `child_*` functions.
    check(unsafe { libc::fork() })
}

/// `waitpid(2)`, retried on EINTR: (pid, wait status).
pub fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: `status` is a valid place for the kernel to write the status.
    let pid = retry(|| unsafe { libc::waitpid(pid, &mut status, flags) })?;
    Ok((pid, status))
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill only sends a signal; the caller chose the target.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() }
}

/// `reboot(RB_AUTOBOOT)`; returns only on failure.
pub fn reboot_autoboot() -> io::Error {
    // SAFETY: reboot takes no pointers; the caller has synced file systems.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    io::Error::last_os_error()
}

/// `pause(2)`.
pub fn pause() {
    // SAFETY: pause has no preconditions.
    unsafe { libc::pause() };
}

/// A socket receiving kernel uevents (`NETLINK_KOBJECT_UEVENT`, group 1).
pub fn uevent_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked below.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    })?;
    // SAFETY: socket succeeded, so `fd` is open and ours alone.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = 1;
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes.
    check(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    Ok(sock)
}

/// Waits up to `timeout_ms` for `fd` to be readable; `Ok(false)` on timeout.
pub fn poll_readable(fd: RawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd.
    let n = retry(|| unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
    Ok(n > 0)
}

/// Reads and drops every datagram queued on `fd` without blocking.
pub fn drain_datagrams(fd: RawFd) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            return;
        }
    }
}

/// A NULL-terminated array of C strings (argv or envp for `execve`).
pub struct CStringArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStringArray {
    /// Fails when a string contains a NUL byte.
    pub fn new(items: &[String]) -> Result<CStringArray, NulError> {
        let strings = items
            .iter()
            .map(|s| CString::new(s.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(ptr::null());
        Ok(CStringArray {
            _strings: strings,
            ptrs,
        })
    }

    fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

/// `setsid(2)` (child side).
pub fn child_setsid() -> io::Result<()> {
    // SAFETY: setsid has no preconditions.
    check(unsafe { libc::setsid() })?;
    Ok(())
}

/// Makes `target` a copy of `src` that survives exec (child side).
pub fn child_redirect(src: RawFd, target: RawFd) -> io::Result<()> {
    if src == target {
        // dup2 would be a no-op and leave FD_CLOEXEC set.
        // SAFETY: F_SETFD only changes the descriptor's flags.
        check(unsafe { libc::fcntl(target, libc::F_SETFD, 0) })?;
    } else {
        // SAFETY: dup2 only changes the descriptor table.
        retry(|| unsafe { libc::dup2(src, target) })?;
    }
    Ok(())
}

/// Makes the terminal on descriptor 0 the controlling terminal of the
/// calling session leader (child side, after `setsid`).
pub fn child_set_ctty() -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); no memory
    // is passed.
    check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
    Ok(())
}

/// Sets the window size of the terminal `fd` (the kernel sends SIGWINCH
/// to its foreground process group when it changes).
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize`, which lives for the call.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) })?;
    Ok(())
}

/// `chroot(2)` (child side).
pub fn child_chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    check(unsafe { libc::chroot(path.as_ptr()) })?;
    Ok(())
}

/// `chdir(2)` (child side).
pub fn child_chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    check(unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

/// Drops every supplementary group (child side).
pub fn child_clear_groups() -> io::Result<()> {
    // SAFETY: a zero-length list with a null pointer is valid.
    check(unsafe { libc::setgroups(0, ptr::null()) })?;
    Ok(())
}

/// `setgid(2)` (child side).
pub fn child_setgid(gid: u32) -> io::Result<()> {
    // SAFETY: setgid takes no pointers.
    check(unsafe { libc::setgid(gid) })?;
    Ok(())
}

/// `setuid(2)` (child side).
pub fn child_setuid(uid: u32) -> io::Result<()> {
    // SAFETY: setuid takes no pointers.
    check(unsafe { libc::setuid(uid) })?;
    Ok(())
}

/// Restores the default action of SIGPIPE, which the Rust runtime ignores
/// (an ignored signal stays ignored across exec) (child side).
pub fn child_default_sigpipe() -> io::Result<()> {
    // SAFETY: installs the default disposition; no handler code is involved.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `execve(2)` (child side); returns only on failure.
pub fn child_execve(path: &CStr, argv: &CStringArray, envp: &CStringArray) -> io::Error {
    // SAFETY: `path` is NUL-terminated; `argv` and `envp` are NULL-terminated
    // arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `_exit(2)`: ends the process without running destructors or atexit.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and touches no user-space state.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_random_h() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        const IOC_WRITE: libc::Ioctl = 1;
        let rnd = libc::Ioctl::from(b'R');
        let int2 = (2 * std::mem::size_of::<libc::c_int>()) as libc::Ioctl;
        assert_eq!(
            RNDADDENTROPY,
            IOC_WRITE << 30 | int2 << 16 | rnd << 8 | 0x03
        );
        assert_eq!(RNDRESEEDCRNG, rnd << 8 | 0x07);
    }

    #[test]
    fn rand_pool_info_layout() {
        let seed: [u8; POOL_SEED_BYTES] = std::array::from_fn(|i| 0xa0 ^ i as u8);
        let info = rand_pool_info(&seed);
        // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
        assert_eq!(
            RAND_POOL_INFO_BYTES,
            2 * std::mem::size_of::<libc::c_int>() + 32
        );
        assert_eq!(info.len(), 40);
        let int_at = |at: usize| i32::from_ne_bytes(info[at..at + 4].try_into().unwrap());
        assert_eq!(int_at(0), 256, "entropy_count in bits");
        assert_eq!(int_at(4), 32, "buf_size in bytes");
        assert_eq!(&info[8..], &seed[..]);
        // buf is __u32 words: a whole number of them.
        assert_eq!(POOL_SEED_BYTES % 4, 0);
        // x86 is little-endian: the exact bytes the kernel reads.
        #[cfg(target_endian = "little")]
        assert_eq!(info[..8], [0, 1, 0, 0, 32, 0, 0, 0]);
    }
}

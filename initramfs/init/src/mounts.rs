//! Every file system the init mounts, as const tables, and the one mount
//! helper whose errors name the mount.
//!
//! [`DEV`] then [`EARLY`] make the initramfs a usable system; [`GUEST_API`]
//! gives a virtio-fs command root the same kernel interfaces. devtmpfs is a
//! single kernel instance, so directories and links made in `/dev` also
//! appear in every other devtmpfs mount.

use std::io;
use std::path::{Path, PathBuf};

use libc::c_ulong;

use crate::error::InitError;
use crate::sys;

/// One mount(2) call.
#[derive(Debug, Clone, Copy)]
pub struct Mount {
    /// File system type (also used as the source: these need none).
    pub fstype: &'static str,
    /// Absolute path, relative to the root the table is mounted under.
    pub target: &'static str,
    /// `MS_*` flags.
    pub flags: c_ulong,
    /// File-system options.
    pub data: &'static str,
    /// Create the mount point when missing. Only where it lives in a
    /// writable file system (the initramfs, devtmpfs).
    pub mkdir: bool,
}

const NOSUID_NODEV: c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
const NOSUID_NODEV_NOEXEC: c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Mounted first: `/dev/kmsg` and `/dev/null` live there.
pub const DEV: Mount = Mount {
    fstype: "devtmpfs",
    target: "/dev",
    flags: libc::MS_NOSUID,
    data: "mode=0755",
    mkdir: true,
};

const DEVPTS: Mount = Mount {
    fstype: "devpts",
    target: "/dev/pts",
    flags: libc::MS_NOSUID | libc::MS_NOEXEC,
    data: "newinstance,gid=5,mode=0620,ptmxmode=0666",
    mkdir: true,
};

const DEV_SHM: Mount = Mount {
    fstype: "tmpfs",
    target: "/dev/shm",
    flags: NOSUID_NODEV,
    data: "mode=1777",
    mkdir: true,
};

/// The rest of the initramfs's own mounts, after [`DEV`].
pub const EARLY: &[Mount] = &[
    Mount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        mkdir: true,
    },
    Mount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        mkdir: true,
    },
    Mount {
        fstype: "tmpfs",
        target: "/run",
        flags: NOSUID_NODEV,
        data: "mode=0755",
        mkdir: true,
    },
    Mount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        mkdir: true,
    },
    DEVPTS,
    DEV_SHM,
];

/// Kernel interfaces mounted fresh inside a virtio-fs command root. The
/// first three must exist in the (read-only) share.
pub const GUEST_API: &[Mount] = &[
    Mount {
        fstype: "proc",
        target: "/proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        mkdir: false,
    },
    Mount {
        fstype: "sysfs",
        target: "/sys",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        mkdir: false,
    },
    Mount {
        mkdir: false,
        ..DEV
    },
    DEVPTS,
    DEV_SHM,
];

/// Symlinks every `/dev` is expected to have (devtmpfs does not make them).
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// `root` + the absolute `path` (`/kestrel/root` + `/proc`).
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Mounts every entry of `table` under `root`, in order.
pub fn mount_table(table: &[Mount], root: &Path) -> Result<(), InitError> {
    table.iter().try_for_each(|m| mount_one(m, root))
}

/// Mounts one table entry under `root`.
pub fn mount_one(m: &Mount, root: &Path) -> Result<(), InitError> {
    let target = under(root, m.target);
    if m.mkdir {
        match std::fs::create_dir(&target) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(InitError::os(format!("mkdir {}", target.display()), &e));
            }
            _ => {}
        }
    } else {
        require_mount_point(&target)?;
    }
    let data = (!m.data.is_empty()).then_some(m.data);
    sys::mount(Some(m.fstype), &target, Some(m.fstype), m.flags, data)
        .map_err(|e| InitError::os(format!("mount {} on {}", m.fstype, target.display()), &e))
}

/// Creates [`DEV_LINKS`]; a link that exists is left alone.
pub fn make_dev_links() -> Result<(), InitError> {
    for (link, to) in DEV_LINKS {
        match std::os::unix::fs::symlink(to, link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(InitError::os(format!("symlink {link}"), &e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A mount point that must exist already (in a read-only share).
pub fn require_mount_point(target: &Path) -> Result<(), InitError> {
    match target.symlink_metadata() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(InitError::msg(format!(
            "mount point {} does not exist",
            target.display()
        ))),
        Err(e) => Err(InitError::os(format!("stat {}", target.display()), &e)),
    }
}

/// Mounts file system `fstype` from `source` on `target`.
pub fn mount_fs(
    fstype: &str,
    source: &str,
    target: &Path,
    flags: c_ulong,
    data: Option<&str>,
) -> Result<(), InitError> {
    require_mount_point(target)?;
    sys::mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
        let what = if source == fstype {
            format!("mount {fstype} on {}", target.display())
        } else {
            format!("mount {fstype} {source} on {}", target.display())
        };
        InitError::os(what, &e)
    })
}

/// Binds `source` onto `target` (writable unless the file system is not).
pub fn bind(source: &Path, target: &Path) -> Result<(), InitError> {
    require_mount_point(target)?;
    let src = source.to_string_lossy();
    sys::mount(Some(&src), target, None, libc::MS_BIND, None).map_err(|e| {
        InitError::os(
            format!("bind {} on {}", source.display(), target.display()),
            &e,
        )
    })
}

/// Makes the bind mount at `target` read-only (its own flag, not the
/// file system's).
pub fn remount_bind_readonly(target: &Path) -> Result<(), InitError> {
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    sys::mount(None, target, None, flags, None)
        .map_err(|e| InitError::os(format!("remount {} read-only", target.display()), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_ordered_and_absolute() {
        for m in std::iter::once(&DEV).chain(EARLY).chain(GUEST_API) {
            assert!(m.target.starts_with('/'), "{}", m.target);
        }
        // A mount point inside /dev comes after /dev itself.
        let pos = |t: &str| GUEST_API.iter().position(|m| m.target == t);
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        // Inside the read-only share nothing may be created outside devtmpfs.
        for m in GUEST_API {
            assert_eq!(m.mkdir, m.target.starts_with("/dev/"), "{}", m.target);
        }
    }

    #[test]
    fn joins_under_root() {
        let root = Path::new("/kestrel/root");
        assert_eq!(under(root, "/dev/pts"), Path::new("/kestrel/root/dev/pts"));
        assert_eq!(under(Path::new("/"), "/proc"), Path::new("/proc"));
    }

    #[test]
    fn missing_mount_point_is_named() {
        let e = require_mount_point(Path::new("/nonexistent/kestrel/x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount point /nonexistent/kestrel/x does not exist"
        );
    }
}

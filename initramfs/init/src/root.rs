//! The command's root file system.
//!
//! For a virtio-fs root: the share is mounted read-write at [`HOST_DIR`],
//! bound read-only at [`ROOT_DIR`]; the spec's writable paths (bound from
//! the share) and tmpfs paths are mounted on top, shallowest first, so a
//! writable directory inside a tmpfs path (a workspace under `/tmp`) is
//! bound onto a directory made in that tmpfs; then
//! [`GUEST_API`](crate::mounts::GUEST_API) is mounted inside. Invariant:
//! every spec path is resolved inside the share; a symlink that points out
//! of it is an error, not a mount on the initramfs.

use std::path::{Path, PathBuf};

use kestrel_initramfs::job::{Root, Spec};

use crate::error::InitError;
use crate::kmsg;
use crate::mounts;

/// Where the share is mounted read-write.
pub const HOST_DIR: &str = "/kestrel/host";
/// The command's root: the share, read-only, plus the spec's mounts.
pub const ROOT_DIR: &str = "/kestrel/root";

/// Prepares the root; returns the directory to chroot into (`None`: the
/// command runs in the initramfs).
pub fn prepare(spec: &Spec) -> Result<Option<PathBuf>, InitError> {
    match &spec.root {
        Root::Initramfs => {
            if !spec.writable.is_empty() {
                kmsg::info("writable paths ignored: the initramfs root is writable");
            }
            for path in &spec.tmpfs {
                mount_tmpfs(Path::new("/"), path)?;
            }
            Ok(None)
        }
        Root::VirtioFs(tag) => {
            mount_share(tag, spec)?;
            Ok(Some(PathBuf::from(ROOT_DIR)))
        }
    }
}

fn mount_share(tag: &str, spec: &Spec) -> Result<(), InitError> {
    let (host, root) = (Path::new(HOST_DIR), Path::new(ROOT_DIR));
    for dir in [host, root] {
        std::fs::create_dir_all(dir)
            .map_err(|e| InitError::os(format!("mkdir {}", dir.display()), &e))?;
    }
    mounts::mount_fs("virtiofs", tag, host, 0, None)?;
    mounts::bind(host, root)?;
    mounts::remount_bind_readonly(root)?;
    for (path, kind) in mount_order(spec) {
        match kind {
            Kind::Tmpfs => mount_tmpfs(root, path)?,
            Kind::Writable => bind_writable(host, root, path)?,
        }
    }
    mounts::mount_table(mounts::GUEST_API, root)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tmpfs,
    Writable,
}

/// The spec's mounts, shallowest path first (a stable sort: same depth
/// keeps tmpfs before writable), so inner mounts land on top of outer ones.
fn mount_order(spec: &Spec) -> Vec<(&str, Kind)> {
    let mut all: Vec<(&str, Kind)> = spec
        .tmpfs
        .iter()
        .map(|p| (p.as_str(), Kind::Tmpfs))
        .chain(spec.writable.iter().map(|p| (p.as_str(), Kind::Writable)))
        .collect();
    all.sort_by_key(|(p, _)| Path::new(p).components().count());
    all
}

/// Binds the share's `path` writable over the same path in the root. The
/// source is resolved inside the share; the target is made when an earlier
/// tmpfs mount hides it (only fresh tmpfs directories are created).
fn bind_writable(host: &Path, root: &Path, path: &str) -> Result<(), InitError> {
    let source = resolve_inside(host, path)?;
    let rel = source.strip_prefix(host).unwrap_or(&source);
    let target = root.join(rel);
    if !target.exists() {
        std::fs::create_dir_all(&target)
            .map_err(|e| InitError::os(format!("mkdir {}", target.display()), &e))?;
    }
    mounts::bind(&source, &target)
}

fn mount_tmpfs(root: &Path, path: &str) -> Result<(), InitError> {
    let target = resolve_inside(root, path)?;
    mounts::mount_fs("tmpfs", "tmpfs", &target, 0, Some("mode=1777"))
}

/// `root/path` with symlinks resolved; it must exist and stay under `root`.
pub fn resolve_inside(root: &Path, path: &str) -> Result<PathBuf, InitError> {
    let joined = mounts::under(root, path);
    mounts::require_mount_point(&joined)?;
    let real = joined
        .canonicalize()
        .map_err(|e| InitError::os(format!("resolve {}", joined.display()), &e))?;
    if real.starts_with(root) {
        Ok(real)
    } else {
        Err(InitError::msg(format!(
            "{} resolves to {}, outside {}",
            joined.display(),
            real.display(),
            root.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    #[test]
    fn mounts_go_shallowest_first() {
        let spec = Spec {
            writable: vec!["/tmp/ws/target".into(), "/work".into(), "/tmp/ws".into()],
            tmpfs: vec!["/tmp".into(), "/work/cache".into()],
            ..Spec::default()
        };
        assert_eq!(
            mount_order(&spec),
            vec![
                ("/tmp", Kind::Tmpfs),
                ("/work", Kind::Writable),
                ("/work/cache", Kind::Tmpfs),
                ("/tmp/ws", Kind::Writable),
                ("/tmp/ws/target", Kind::Writable),
            ]
        );
    }

    #[test]
    fn resolves_paths_inside_the_root() {
        let dir = TestDir::new("resolve");
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("var/tmp")).unwrap();
        std::os::unix::fs::symlink("var/tmp", root.join("vt")).unwrap();
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        assert_eq!(
            resolve_inside(&root, "/var/tmp").unwrap(),
            root.join("var/tmp")
        );
        assert_eq!(resolve_inside(&root, "/vt").unwrap(), root.join("var/tmp"));
        let e = resolve_inside(&root, "/escape").unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        let e = resolve_inside(&root, "/work").unwrap_err().to_string();
        assert_eq!(
            e,
            format!("mount point {} does not exist", root.join("work").display())
        );
    }
}

//! The command's root file system.
//!
//! For a virtio-fs root: the share is mounted read-write at [`HOST_DIR`],
//! bound read-only at [`ROOT_DIR`]; the spec's writable paths (bound from
//! the share), tmpfs paths and extra virtio-fs shares are mounted on top,
//! shallowest first, so a writable directory inside a tmpfs path (a
//! workspace under `/tmp`) is mounted onto a directory made in that tmpfs;
//! then [`GUEST_API`](crate::mounts::GUEST_API) is mounted inside. With the
//! initramfs as root, tmpfs paths and shares are mounted in it the same way.
//!
//! A missing mount point is made: directly when its deepest existing
//! ancestor is writable (a tmpfs, the initramfs), else by an overlay of
//! that ancestor with a fresh tmpfs as its upper layer (so `/lib/modules`
//! can appear in a host root that lacks it, and nothing is written to the
//! host). An overlay hides mounts made earlier below its ancestor.
//!
//! Invariant: every spec path is resolved inside the root (or the share
//! for writable binds); a symlink that points out of it, or a path with
//! `..`, is an error, not a mount on the initramfs.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use kestrel_initramfs::job::{Root, Share, Spec};

use crate::error::InitError;
use crate::kmsg;
use crate::mounts;

/// Where the share is mounted read-write.
pub const HOST_DIR: &str = "/kestrel/host";
/// The command's root: the share, read-only, plus the spec's mounts.
pub const ROOT_DIR: &str = "/kestrel/root";
/// Upper layers of the overlays that make missing mount points.
pub const OVERLAY_DIR: &str = "/kestrel/overlay";

/// Prepares the root; returns the directory to chroot into (`None`: the
/// command runs in the initramfs).
pub fn prepare(spec: &Spec) -> Result<Option<PathBuf>, InitError> {
    match &spec.root {
        Root::Initramfs => {
            if !spec.writable.is_empty() {
                kmsg::info("writable paths ignored: the initramfs root is writable");
            }
            for (path, kind) in mount_order(spec) {
                match kind {
                    Kind::Tmpfs => mount_tmpfs(Path::new("/"), path)?,
                    Kind::Writable => {}
                    Kind::Share(i) => mount_share_at(Path::new("/"), &spec.shares[i])?,
                }
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
            Kind::Share(i) => mount_share_at(root, &spec.shares[i])?,
        }
    }
    mounts::mount_table(mounts::GUEST_API, root)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tmpfs,
    Writable,
    /// Index into `spec.shares`.
    Share(usize),
}

/// The spec's mounts, shallowest path first (a stable sort: same depth
/// keeps tmpfs before writable before shares), so inner mounts land on top
/// of outer ones.
fn mount_order(spec: &Spec) -> Vec<(&str, Kind)> {
    let mut all: Vec<(&str, Kind)> = spec
        .tmpfs
        .iter()
        .map(|p| (p.as_str(), Kind::Tmpfs))
        .chain(spec.writable.iter().map(|p| (p.as_str(), Kind::Writable)))
        .chain(
            spec.shares
                .iter()
                .enumerate()
                .map(|(i, s)| (s.path.as_str(), Kind::Share(i))),
        )
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
    let target = make_mount_point(root, path)?;
    mounts::mount_fs("tmpfs", "tmpfs", &target, 0, Some("mode=1777"))
}

/// Mounts the virtio-fs `share` over its path in `root`, read-only unless
/// the spec says otherwise (the host server enforces the same).
fn mount_share_at(root: &Path, share: &Share) -> Result<(), InitError> {
    let target = make_mount_point(root, &share.path)?;
    let flags = if share.writable { 0 } else { libc::MS_RDONLY };
    mounts::mount_fs("virtiofs", &share.tag, &target, flags, None)
}

/// `root/path` resolved inside `root`, made when missing (see the module
/// docs): returns the directory to mount on.
pub fn make_mount_point(root: &Path, path: &str) -> Result<PathBuf, InitError> {
    if !path.starts_with('/')
        || !Path::new(path)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(InitError::msg(format!(
            "mount point {path} must be an absolute path without . or .."
        )));
    }
    let joined = mounts::under(root, path);
    if joined.symlink_metadata().is_ok() {
        return resolve_inside(root, path);
    }
    let mut existing = joined.clone();
    let mut missing = Vec::new();
    while existing.symlink_metadata().is_err() {
        let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
            break;
        };
        missing.push(name);
        existing.pop();
    }
    let rel = existing.strip_prefix(root).unwrap_or(Path::new(""));
    let base = resolve_inside(root, &format!("/{}", rel.display()))?;
    let target = missing.iter().rev().fold(base.clone(), |p, n| p.join(n));
    match std::fs::create_dir_all(&target) {
        Ok(()) => Ok(target),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            overlay(&base)?;
            std::fs::create_dir_all(&target)
                .map_err(|e| InitError::os(format!("mkdir {}", target.display()), &e))?;
            Ok(target)
        }
        Err(e) => Err(InitError::os(format!("mkdir {}", target.display()), &e)),
    }
}

/// Makes the read-only directory `dir` writable in the guest only: an
/// overlay with `dir` as its lower layer and a fresh tmpfs as the upper.
fn overlay(dir: &Path) -> Result<(), InitError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let text = dir.to_string_lossy();
    if text.contains([',', ':', '\\']) {
        return Err(InitError::msg(format!(
            "cannot create a mount point in read-only {text}: the path has , : or \\"
        )));
    }
    let layer = Path::new(OVERLAY_DIR).join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir_all(&layer)
        .map_err(|e| InitError::os(format!("mkdir {}", layer.display()), &e))?;
    mounts::mount_fs("tmpfs", "tmpfs", &layer, 0, Some("mode=0755"))?;
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(|e| InitError::os(format!("mkdir {}", d.display()), &e))?;
    }
    let options = format!(
        "lowerdir={text},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mounts::mount_fs("overlay", "overlay", dir, 0, Some(&options))
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
    fn shares_sort_with_the_other_mounts() {
        let share = |path: &str| Share {
            tag: "t".into(),
            path: path.into(),
            writable: false,
        };
        let spec = Spec {
            tmpfs: vec!["/lib/modules".into(), "/tmp".into()],
            shares: vec![share("/lib/modules/6.1"), share("/tmp/out"), share("/work")],
            ..Spec::default()
        };
        assert_eq!(
            mount_order(&spec),
            vec![
                ("/tmp", Kind::Tmpfs),
                ("/work", Kind::Share(2)),
                ("/lib/modules", Kind::Tmpfs),
                ("/tmp/out", Kind::Share(1)),
                ("/lib/modules/6.1", Kind::Share(0)),
            ]
        );
    }

    #[test]
    fn missing_mount_points_are_made_inside_the_root_only() {
        let dir = TestDir::new("mkpoint");
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        // Through a symlink, made in the writable directory.
        assert_eq!(
            make_mount_point(&root, "/lib/modules/6.1").unwrap(),
            root.join("usr/lib/modules/6.1")
        );
        assert!(root.join("usr/lib/modules/6.1").is_dir());
        // Existing: resolved, not made.
        assert_eq!(
            make_mount_point(&root, "/lib").unwrap(),
            root.join("usr/lib")
        );
        for bad in ["/escape/x", "/usr/../../x", "relative/x"] {
            let e = make_mount_point(&root, bad);
            assert!(e.is_err(), "{bad}");
        }
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

//! The command's root file system.
//!
//! For a virtio-fs root: the share is mounted read-write at [`HOST_DIR`],
//! bound read-only at [`ROOT_DIR`]; the spec's writable paths are bound
//! from the share on top, its tmpfs paths get fresh tmpfs mounts, then
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
            mount_tmpfs_paths(Path::new("/"), &spec.tmpfs)?;
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
    check_not_hidden(spec)?;
    mounts::mount_fs("virtiofs", tag, host, 0, None)?;
    mounts::bind(host, root)?;
    mounts::remount_bind_readonly(root)?;
    for path in &spec.writable {
        let target = resolve_inside(root, path)?;
        let rel = target.strip_prefix(root).unwrap_or(&target);
        mounts::bind(&host.join(rel), &target)?;
    }
    mount_tmpfs_paths(root, &spec.tmpfs)?;
    mounts::mount_table(mounts::GUEST_API, root)
}

/// A writable path inside a tmpfs path would be hidden by the tmpfs.
fn check_not_hidden(spec: &Spec) -> Result<(), InitError> {
    for w in &spec.writable {
        if let Some(t) = spec.tmpfs.iter().find(|t| Path::new(w).starts_with(t)) {
            return Err(InitError::msg(format!(
                "writable path {w} is inside tmpfs path {t} and would be hidden"
            )));
        }
    }
    Ok(())
}

fn mount_tmpfs_paths(root: &Path, paths: &[String]) -> Result<(), InitError> {
    for path in paths {
        let target = resolve_inside(root, path)?;
        mounts::mount_fs("tmpfs", "tmpfs", &target, 0, Some("mode=1777"))?;
    }
    Ok(())
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
    fn writable_paths_inside_tmpfs_paths_are_rejected() {
        let mut spec = Spec {
            writable: vec!["/work".into(), "/tmp/out".into()],
            tmpfs: vec!["/tmp".into(), "/work/cache".into()],
            ..Spec::default()
        };
        let e = check_not_hidden(&spec).unwrap_err().to_string();
        assert_eq!(
            e,
            "writable path /tmp/out is inside tmpfs path /tmp and would be hidden"
        );
        spec.writable[1] = "/tmpx".into();
        assert_eq!(check_not_hidden(&spec), Ok(()));
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

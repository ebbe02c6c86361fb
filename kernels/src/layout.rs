//! Finding the kernel in an unpacked package tree by content.
//!
//! Debian moved files between series (5.10/6.1: `boot/vmlinuz-*`,
//! `boot/config-*`, `lib/modules/<rel>`; 6.12: `boot/` plus
//! `usr/lib/modules/<rel>`; 7.2: everything in `usr/lib/modules/<rel>/`
//! with `vmlinuz` and `config`). So no path is assumed: every file directly
//! in `boot/` and in each `{,usr/}lib/modules/<rel>/` is read, kernel images
//! are recognised by their header and configs by their text. Invariant: the
//! result names exactly one release, and its image states that release (or
//! states none and the modules directory is the only one).

use std::path::{Path, PathBuf};

use crate::image::{inspect_head, ImageInfo, HEAD_LEN};

/// The kernel found in a tree; paths are inside the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub release: String,
    pub image: PathBuf,
    pub config: Option<PathBuf>,
    pub modules_dir: Option<PathBuf>,
}

const MODULE_ROOTS: &[&str] = &["lib/modules", "usr/lib/modules"];
/// The header every `make *config` writes.
const CONFIG_MARK: &str = "Kernel Configuration";

/// Resolves the one kernel in `root`; the error says what is missing or
/// ambiguous.
pub fn resolve_tree(root: &Path) -> Result<Layout, String> {
    let module_dirs: Vec<PathBuf> = MODULE_ROOTS
        .iter()
        .flat_map(|r| subdirs(&root.join(r)))
        .collect();
    let mut search = vec![root.join("boot")];
    search.extend(module_dirs.iter().cloned());
    let files: Vec<PathBuf> = search.iter().flat_map(|d| files_in(d)).collect();

    let mut images: Vec<(PathBuf, ImageInfo)> = files
        .iter()
        .filter_map(|f| Some((f.clone(), inspect_head(&head(f)?).ok()?)))
        .collect();
    if images.is_empty() {
        return Err(format!(
            "no bzImage or vmlinux in boot/ or lib/modules/*/ under {}",
            root.display()
        ));
    }
    // Each image must name a release; with one modules directory it may
    // stand in for an image that names none.
    let only_modules_release = match module_dirs.as_slice() {
        [one] => file_name(one),
        _ => None,
    };
    for (path, info) in &mut images {
        if info.release.is_none() {
            info.release = only_modules_release.clone();
        }
        if info.release.is_none() {
            return Err(format!("{} does not state its release", path.display()));
        }
    }
    let mut releases: Vec<&str> = images
        .iter()
        .filter_map(|(_, i)| i.release.as_deref())
        .collect();
    releases.sort_unstable();
    releases.dedup();
    let [release] = releases.as_slice() else {
        return Err(format!("several kernels: {}", releases.join(", ")));
    };
    let release = (*release).to_owned();
    // Same release twice (e.g. a copy in boot/): the first found wins, and
    // boot/ is searched first.
    let image = images.swap_remove(0).0;

    let modules_dir = module_dirs
        .iter()
        .find(|d| file_name(d).as_deref() == Some(&release))
        .filter(|d| d.join("kernel").is_dir() || d.join("modules.order").is_file())
        .cloned();

    let configs: Vec<&PathBuf> = files.iter().filter(|f| is_config(f)).collect();
    let config = configs
        .iter()
        .find(|c| {
            file_name(c).is_some_and(|n| n.ends_with(&release))
                || c.parent().and_then(file_name).as_deref() == Some(&release)
        })
        .or(match configs.as_slice() {
            [one] => Some(one),
            _ => None,
        })
        .map(|c| (*c).clone());

    Ok(Layout {
        release,
        image,
        config,
        modules_dir,
    })
}

fn file_name(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn head(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(HEAD_LEN);
    std::fs::File::open(path)
        .ok()?
        .take(HEAD_LEN as u64)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// A kernel `.config`: the generated header in the first lines and
/// `CONFIG_` symbols.
fn is_config(path: &Path) -> bool {
    let Some(bytes) = head(path) else {
        return false;
    };
    let text = String::from_utf8_lossy(&bytes);
    let header = text
        .lines()
        .take(8)
        .any(|l| l.starts_with('#') && l.contains(CONFIG_MARK));
    header && text.lines().any(|l| l.starts_with("CONFIG_"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::fake_bzimage;
    use crate::testutil::TempDir;

    const CONFIG: &str = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.176 Kernel Configuration\n#\nCONFIG_64BIT=y\n";

    fn put(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn bookworm_layout() {
        let t = TempDir::new("layout61");
        let r = t.path();
        let rel = "6.1.0-50-cloud-amd64";
        put(
            r,
            &format!("boot/vmlinuz-{rel}"),
            &fake_bzimage(0x020f, rel),
        );
        put(r, &format!("boot/config-{rel}"), CONFIG.as_bytes());
        put(
            r,
            &format!("boot/System.map-{rel}"),
            b"ffffffff81000000 T _text\n",
        );
        put(
            r,
            &format!("lib/modules/{rel}/modules.order"),
            b"kernel/fs/fuse/fuse.ko\n",
        );
        put(
            r,
            &format!("lib/modules/{rel}/kernel/fs/fuse/fuse.ko"),
            b"\x7fELF",
        );
        put(r, "usr/share/doc/x/changelog.gz", b"");
        let l = resolve_tree(r).unwrap();
        assert_eq!(l.release, rel);
        assert_eq!(l.image, r.join(format!("boot/vmlinuz-{rel}")));
        assert_eq!(l.config, Some(r.join(format!("boot/config-{rel}"))));
        assert_eq!(l.modules_dir, Some(r.join(format!("lib/modules/{rel}"))));
    }

    #[test]
    fn trixie_layout() {
        let t = TempDir::new("layout612");
        let r = t.path();
        let rel = "6.12.107+deb13-cloud-amd64";
        put(
            r,
            &format!("boot/vmlinuz-{rel}"),
            &fake_bzimage(0x020f, rel),
        );
        put(r, &format!("boot/config-{rel}"), CONFIG.as_bytes());
        put(r, &format!("usr/lib/modules/{rel}/kernel/a.ko.xz"), b"");
        let l = resolve_tree(r).unwrap();
        assert_eq!(l.image, r.join(format!("boot/vmlinuz-{rel}")));
        assert_eq!(
            l.modules_dir,
            Some(r.join(format!("usr/lib/modules/{rel}")))
        );
    }

    #[test]
    fn sid_split_layout() {
        let t = TempDir::new("layout72");
        let r = t.path();
        let rel = "7.2.13+deb14-cloud-amd64";
        let m = format!("usr/lib/modules/{rel}");
        put(r, &format!("{m}/vmlinuz"), &fake_bzimage(0x020f, rel));
        put(r, &format!("{m}/config"), CONFIG.as_bytes());
        put(
            r,
            &format!("{m}/System.map"),
            b"ffffffffffffffff B The real System.map is elsewhere\n",
        );
        put(r, &format!("{m}/modules.order"), b"");
        put(
            r,
            &format!("{m}/kernel/fs/fuse/virtiofs.ko.xz"),
            b"\xfd7zXZ",
        );
        let l = resolve_tree(r).unwrap();
        assert_eq!(l.release, rel);
        assert_eq!(l.image, r.join(format!("{m}/vmlinuz")));
        assert_eq!(l.config, Some(r.join(format!("{m}/config"))));
        assert_eq!(l.modules_dir, Some(r.join(&m)));
    }

    #[test]
    fn image_without_modules_or_config() {
        let t = TempDir::new("layoutbare");
        let r = t.path();
        put(r, "boot/bzImage", &fake_bzimage(0x020f, "6.6.0-tiny"));
        let l = resolve_tree(r).unwrap();
        assert_eq!(
            (l.release.as_str(), l.config, l.modules_dir),
            ("6.6.0-tiny", None, None)
        );
    }

    #[test]
    fn failures_say_why() {
        let t = TempDir::new("layoutbad");
        let r = t.path();
        put(r, "boot/config-x", CONFIG.as_bytes());
        assert!(resolve_tree(r).unwrap_err().contains("no bzImage"));
        put(r, "boot/vmlinuz-a", &fake_bzimage(0x020f, "6.1.0-1-amd64"));
        put(r, "boot/vmlinuz-b", &fake_bzimage(0x020f, "6.1.0-2-amd64"));
        let e = resolve_tree(r).unwrap_err();
        assert!(e.contains("6.1.0-1-amd64, 6.1.0-2-amd64"), "{e}");
    }
}

//! Kernel specs and the kernel cache.
//!
//! A [`KernelSpec`] names a kernel (`debian:6.1`, `debian:host`,
//! `build:DIR`, a path); [`resolve`] turns it into a [`Kernel`]: an image
//! checked by content, with its release, config and modules when known.
//! Debian kernels live in the [`Cache`]; only a caller that passes
//! [`Fetch::Allowed`] lets a missing one be downloaded through apt (the
//! runner reads the cache only and names the xtask command to run).
//!
//! For self-built kernels: [`source`] fetches and unpacks Debian's kernel
//! source into the cache, [`kconfig`] checks a merged configuration against
//! its fragments and explains what Kconfig dropped, [`build`] is the record
//! a build leaves next to its output (`build:DIR` reads that directory).
//! [`symbols`] finds a kernel's System.map and vmlinux and turns addresses
//! into names and file:line (fault reports, kernel-log traces).

mod apt;
pub use apt::{civil_from_days, rfc3339_utc};
pub mod build;
pub mod cache;
#[cfg(feature = "cli")]
pub mod commands;
pub mod debtools;
mod error;
pub mod host;
pub mod image;
pub mod kbuild;
pub mod kconfig;
pub mod layout;
pub mod source;
pub mod sources;
pub mod spec;
pub mod symbols;

use std::path::{Path, PathBuf};

pub use cache::{Cache, CachedKernel, Manifest, PackageRef};
pub use error::{Error, Result};
pub use image::ImageFormat;
pub use spec::{KernelSpec, Series};

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `uname -r` of the kernel (`unknown` when nothing states it).
    pub release: String,
    /// Absolute path of the bzImage or vmlinux.
    pub image: PathBuf,
    pub format: ImageFormat,
    /// The kernel's `.config`, when known.
    pub config: Option<PathBuf>,
    /// `…/modules/<release>`, when the kernel comes with modules.
    pub modules_dir: Option<PathBuf>,
    /// Where it came from, for reports: `debian:6.1 (bookworm 6.1.176-1)`.
    pub origin: String,
}

/// Whether [`resolve`] may download a Debian kernel that is not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Fetch through apt when missing (progress on stderr).
    Allowed,
    /// Cache only; a missing kernel is [`Error::NotCached`].
    CacheOnly,
}

/// What the release is called when nothing in the image states it.
pub const UNKNOWN_RELEASE: &str = "unknown";

/// Resolves a spec to a kernel; see [`Fetch`] for when it downloads.
pub fn resolve(spec: &KernelSpec, cache: &Cache, fetch: Fetch) -> Result<Kernel> {
    match spec {
        KernelSpec::Debian(_) | KernelSpec::DebianHost => {
            let series = match spec.series()? {
                Some(s) => s,
                None => return Err(Error::BadSpec(spec.to_string())),
            };
            if let Some(entry) = cache.lookup(series)? {
                return entry.kernel();
            }
            match fetch {
                Fetch::CacheOnly => Err(Error::NotCached {
                    spec: spec.to_string(),
                    dir: cache.entry_dir(series),
                }),
                Fetch::Allowed => apt::fetch(cache, series)?.kernel(),
            }
        }
        KernelSpec::Image(path) => local_image(path, None, format!("file:{}", path.display())),
        KernelSpec::BuildTree(dir) => build_tree(dir),
    }
}

fn local_image(path: &Path, release: Option<String>, origin: String) -> Result<Kernel> {
    let info = image::inspect(path)?;
    let image = std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
    Ok(Kernel {
        release: release
            .or(info.release)
            .unwrap_or_else(|| UNKNOWN_RELEASE.into()),
        image,
        format: info.format,
        config: None,
        modules_dir: None,
        origin,
    })
}

/// A kernel build tree: `arch/x86/boot/bzImage`, else `vmlinux`; `.config`
/// and `include/config/kernel.release` when present. Modules are not
/// resolved (they need `make modules_install`).
fn build_tree(dir: &Path) -> Result<Kernel> {
    let candidates = [dir.join("arch/x86/boot/bzImage"), dir.join("vmlinux")];
    let Some(image) = candidates.iter().find(|p| p.is_file()) else {
        return Err(Error::BuildTreeEmpty {
            dir: dir.to_owned(),
        });
    };
    let release = std::fs::read_to_string(dir.join("include/config/kernel.release"))
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let mut kernel = local_image(image, release, format!("build:{}", dir.display()))?;
    let config = dir.join(".config");
    kernel.config = config.is_file().then_some(config);
    Ok(kernel)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop (no tempfile dependency).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("kestrel-kernels-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::fake_bzimage;
    use crate::testutil::TempDir;

    #[test]
    fn cache_only_names_the_fetch_command() {
        let t = TempDir::new("resolve");
        let cache = Cache::at(t.path());
        let spec: KernelSpec = "debian:6.12".parse().unwrap();
        let msg = resolve(&spec, &cache, Fetch::CacheOnly)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("kestrel kernel fetch debian:6.12"), "{msg}");
    }

    #[test]
    fn local_images_and_build_trees() {
        let t = TempDir::new("local");
        let cache = Cache::at(t.path().join("cache"));
        let img = t.path().join("bzImage");
        std::fs::write(&img, fake_bzimage(0x020f, "6.1.0-test")).unwrap();
        let spec = KernelSpec::Image(img.clone());
        let k = resolve(&spec, &cache, Fetch::CacheOnly).unwrap();
        assert_eq!(k.release, "6.1.0-test");
        assert!(k.image.is_absolute() && k.config.is_none());

        let tree = t.path().join("linux");
        let spec = KernelSpec::BuildTree(tree.clone());
        let msg = resolve(&spec, &cache, Fetch::CacheOnly)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("arch/x86/boot/bzImage"), "{msg}");
        std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
        std::fs::create_dir_all(tree.join("include/config")).unwrap();
        std::fs::write(
            tree.join("arch/x86/boot/bzImage"),
            fake_bzimage(0x020f, "6.1.0-x"),
        )
        .unwrap();
        std::fs::write(tree.join("include/config/kernel.release"), "6.1.0-tiny\n").unwrap();
        std::fs::write(tree.join(".config"), "CONFIG_64BIT=y\n").unwrap();
        let k = resolve(&spec, &cache, Fetch::CacheOnly).unwrap();
        assert_eq!(k.release, "6.1.0-tiny");
        assert_eq!(k.config, Some(tree.join(".config")));
        assert_eq!(k.origin, format!("build:{}", tree.display()));
    }
}

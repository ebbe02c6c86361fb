//! The pieces every guest boot needs: a resolved kernel, the static init,
//! a cached base initramfs, and a per-run initrd with the job appended.
//!
//! Invariant: the base archive for the same inputs is byte-identical and is
//! rewritten only when its content changes, so its mtime is a cache key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use kestrel_initramfs::job::Spec;
use kestrel_kernels::{Cache, Fetch, Kernel, KernelSpec};

use crate::{paths, tools};

/// The target the static init is built for (gnu + crt-static: musl is not
/// installed on these machines).
const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Resolves a kernel spec, fetching Debian kernels into the cache if needed.
pub fn kernel(spec: &str) -> Result<Kernel> {
    let spec: KernelSpec = spec.parse()?;
    let cache = Cache::from_env()?;
    Ok(kestrel_kernels::resolve(&spec, &cache, Fetch::Allowed)?)
}

/// Builds the static guest init (incrementally) and returns its path.
/// Inside the rig nothing is built: L1 uses the init the host built.
pub fn build_init() -> Result<PathBuf> {
    let init = paths::target_dir()
        .join(INIT_TARGET)
        .join("release")
        .join("kestrel-init");
    if std::env::var_os("KESTREL_RIG").is_some() {
        anyhow::ensure!(
            init.is_file(),
            "{} is missing: build it on the host first",
            init.display()
        );
        return Ok(init);
    }
    tools::step("building the static guest init (kestrel-init)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tools::run(
        Command::new(cargo)
            .current_dir(paths::workspace())
            .args([
                "build",
                "--quiet",
                "--release",
                "--package",
                "kestrel-init",
                "--target",
                INIT_TARGET,
            ])
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=symbols",
            ),
    )?;
    anyhow::ensure!(
        init.is_file(),
        "cargo built kestrel-init but {} is missing",
        init.display()
    );
    Ok(init)
}

/// What goes into a base initramfs.
pub struct BaseSpec<'a> {
    /// Names the cached file (with the kernel release).
    pub name: &'a str,
    pub kernel: &'a Kernel,
    /// Module names to load (dependencies are added).
    pub modules: &'a [&'a str],
    /// Host executables packed with their libraries.
    pub executables: &'a [PathBuf],
}

/// Builds (or reuses) the base initramfs under `target/kestrel/initramfs/`.
pub fn base_initramfs(base: &BaseSpec<'_>) -> Result<PathBuf> {
    let init = build_init()?;
    let image = kestrel_initramfs::image::BaseImage {
        init,
        modules_dir: base.kernel.modules_dir.clone(),
        modules: base.modules.iter().map(|m| m.to_string()).collect(),
        executables: base.executables.to_vec(),
    };
    let bytes = image.build().with_context(|| {
        format!(
            "could not build the {} initramfs for {}",
            base.name, base.kernel.release
        )
    })?;
    let path = paths::kestrel_dir()
        .join("initramfs")
        .join(format!("{}-{}.cpio", base.name, base.kernel.release));
    let written = kestrel_initramfs::image::write_if_changed(&path, &bytes)
        .with_context(|| format!("could not write {}", path.display()))?;
    tools::step(format!(
        "initramfs {} ({} KiB, {})",
        path.display(),
        bytes.len() / 1024,
        if written { "rebuilt" } else { "unchanged" }
    ));
    Ok(path)
}

/// Writes `base` followed by a job archive holding `spec` to `out`.
pub fn initrd_with_job(base: &Path, spec: &Spec, out: &Path) -> Result<()> {
    let base = std::fs::read(base).with_context(|| format!("could not read {}", base.display()))?;
    let job =
        kestrel_initramfs::image::job_archive(spec).context("could not build the job archive")?;
    let bytes = kestrel_initramfs::image::concat(&base, &job);
    std::fs::write(out, bytes).with_context(|| format!("could not write {}", out.display()))
}

/// Builds `kestrel` (release) on the host; inside the rig, uses that build.
pub fn build_kestrel() -> Result<PathBuf> {
    build_release_bin("kestrel", "kestrel")
}

/// Builds a workspace binary in release mode on the host and returns its
/// path; inside the rig nothing is built (L1 uses the host's build).
pub fn build_release_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let path = paths::target_dir().join("release").join(bin);
    if std::env::var_os("KESTREL_RIG").is_none() {
        tools::step(format!("building {bin} (release)"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        tools::run(Command::new(cargo).current_dir(paths::workspace()).args([
            "build",
            "--quiet",
            "--release",
            "--package",
            package,
            "--bin",
            bin,
        ]))?;
    }
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it on the host first",
        path.display()
    );
    Ok(path)
}

/// `kestrel doctor` exits 0 when KVM runs guests at hardware speed.
pub fn hardware_kvm(kestrel: &Path) -> bool {
    Command::new(kestrel)
        .arg("doctor")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

//! `cargo xtask kernel …`: fetch Debian kernels into the cache, list it;
//! `source` and `build` are in `kbuild.rs`.
//!
//! `fetch` prints only the image path on stdout (progress goes to stderr),
//! so `$(cargo xtask kernel fetch debian:6.1)` is usable in scripts.

use anyhow::Result;
use kestrel_kernels::{resolve, Cache, Fetch, KernelSpec};

#[derive(Debug, clap::Subcommand)]
pub enum KernelCmd {
    /// Fetch a kernel (debian:<series>, debian:host, build:DIR or a path)
    /// and print its image path.
    Fetch { spec: String },
    /// Show the cached kernels.
    List,
    /// Fetch Debian's kernel source (debian:<series>) into the cache and
    /// print the tree's path.
    Source { spec: String },
    /// Build a kernel out of tree with Kestrel's configuration and print
    /// the bzImage path (boot it with --kernel build:OUT).
    Build(crate::kbuild::BuildArgs),
}

pub fn run(cmd: KernelCmd) -> Result<()> {
    let cache = Cache::from_env()?;
    match cmd {
        KernelCmd::Fetch { spec } => fetch(&cache, &spec),
        KernelCmd::List => list(&cache),
        KernelCmd::Source { spec } => crate::kbuild::run_source(&spec),
        KernelCmd::Build(args) => crate::kbuild::run_build(&args),
    }
}

fn fetch(cache: &Cache, spec: &str) -> Result<()> {
    let spec: KernelSpec = spec.parse()?;
    if let Some(series) = spec.series()? {
        if let Some(entry) = cache.lookup(series)? {
            eprintln!(
                "kernel: {spec} is cached ({}, {}), no download",
                entry.manifest.release,
                entry.dir.display()
            );
        }
    }
    let kernel = resolve(&spec, cache, Fetch::Allowed)?;
    eprintln!(
        "kernel: {} {} from {}",
        kernel.format, kernel.release, kernel.origin
    );
    println!("{}", kernel.image.display());
    Ok(())
}

fn list(cache: &Cache) -> Result<()> {
    let entries = cache.list()?;
    if entries.is_empty() {
        println!("no kernels cached in {}", cache.kernels_dir().display());
        return Ok(());
    }
    println!(
        "{:<8} {:<9} {:<28} {:>9} {:<21} IMAGE",
        "SERIES", "SUITE", "RELEASE", "SIZE", "FETCHED"
    );
    for e in entries {
        let m = &e.manifest;
        println!(
            "{:<8} {:<9} {:<28} {:>6} MB {:<21} {}",
            m.series.name(),
            m.suite,
            m.release,
            m.unpacked_bytes / 1_000_000,
            m.fetched_at,
            e.dir.join(&m.image).display()
        );
    }
    Ok(())
}

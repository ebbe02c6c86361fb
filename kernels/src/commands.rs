//! The `kernel` subcommands, shared by `cargo xtask kernel` and the
//! installed `kestrel kernel`: fetch Debian kernels into the cache, list
//! it, fetch Debian's kernel source, build a kernel out of tree.
//!
//! `fetch`, `source` and `build` print only a path on stdout (progress goes
//! to stderr), so `$(kestrel kernel fetch debian:6.1)` is usable in scripts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::kbuild::{
    build, check_source_tree, default_out, jobs, BuildError, ConfigSet, Output, Plan,
};
use crate::{host, resolve, Cache, Fetch, KernelSpec};

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
    Build(BuildArgs),
}

/// Runs one `kernel` subcommand; `kbuild_base` holds default build
/// output directories.
pub fn run(cmd: KernelCmd, kbuild_base: &Path) -> Result<()> {
    let cache = Cache::from_env()?;
    match cmd {
        KernelCmd::Fetch { spec } => fetch(&cache, &spec),
        KernelCmd::List => list(&cache),
        KernelCmd::Source { spec } => run_source(&spec),
        KernelCmd::Build(args) => run_build(&args, kbuild_base),
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

/// `kernel build` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The kernel source tree (never written to).
    #[arg(long)]
    pub src: PathBuf,
    #[command(flatten)]
    pub build: BuildOptions,
}

/// How a kernel is built: `kernel build`'s options, which a bisection's
/// steps share.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildOptions {
    /// `kestrel` (Kestrel's fragment over tinyconfig, the default),
    /// `defconfig` (the same fragment over defconfig) or a fragment file
    /// merged after it; repeat for several.
    #[arg(long = "config")]
    pub config: Vec<String>,
    /// Output directory (default: a directory per source tree and
    /// configuration set: `target/kestrel/kbuild/` under xtask, the kernel
    /// cache's `kbuild/` for the installed kestrel).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Parallel make jobs (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// `kernel build`: prints the bzImage path.
fn run_build(args: &BuildArgs, kbuild_base: &Path) -> Result<()> {
    let src = check_source_tree(&args.src)?;
    let configs = ConfigSet::parse(&args.build.config)?;
    let out = match &args.build.out {
        Some(o) => std::path::absolute(o).context("cannot resolve --out")?,
        None => default_out(kbuild_base, &src, &configs),
    };
    let jobs = jobs(args.build.jobs)?;
    let plan = Plan {
        src,
        out,
        configs,
        jobs,
        output: Output::Stderr,
        reproducible: false,
    };
    let built = build(&plan).map_err(BuildError::into_inner)?;
    host::step(format!(
        "kernel {} built in {:.1} s (configuration {}); boot it with --kernel build:{}",
        built.release,
        built.seconds,
        if built.config_changed {
            "changed"
        } else {
            "unchanged"
        },
        built.out.display()
    ));
    println!("{}", built.bzimage.display());
    Ok(())
}

/// `kernel source debian:<series>`: prints the tree's path.
fn run_source(spec: &str) -> Result<()> {
    let parsed: KernelSpec = spec.parse()?;
    let Some(series) = parsed.series()? else {
        bail!("kernel source takes debian:<series> (such as debian:6.1), not `{spec}`");
    };
    let cache = Cache::from_env()?;
    let start = Instant::now();
    let cached = crate::source::lookup(&cache, series)?.is_some();
    let tree = crate::source::fetch(&cache, series)?;
    if cached {
        eprintln!(
            "kernel: the debian:{series} source ({} {}) is cached, no download",
            tree.manifest.package, tree.manifest.version
        );
    } else {
        eprintln!(
            "kernel: debian:{series} source {} {} ready in {:.1} s",
            tree.manifest.package,
            tree.manifest.version,
            start.elapsed().as_secs_f64()
        );
    }
    println!("{}", tree.dir.display());
    Ok(())
}

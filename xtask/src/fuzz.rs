//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/` for a while each.
//!
//! The targets cover what reads guest or user input: FUSE requests through
//! the server, the job spec and status channel, cpio, KTAP, scenario TOML,
//! ELF, kernel-image headers, virtqueue descriptor chains. Needs the
//! nightly toolchain (present on these machines; else one sentence says how
//! to get it) and cargo-fuzz (installed from crates.io on first use). Seeds
//! are committed under `fuzz/seeds/`; libFuzzer's growing corpus and any
//! crash go under `target/kestrel/fuzz/` (never into the tree). A crash
//! fails the command and names its input: turn it into a regression test
//! next to the parser.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{paths, tools};

/// `cargo xtask fuzz` arguments.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Only this target (repeatable); default: all.
    #[arg(long)]
    pub target: Vec<String>,
}

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 8] = [
    "fuse_server",
    "job_spec",
    "cpio",
    "ktap",
    "scenario",
    "elf",
    "bzimage",
    "desc_chain",
];

pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.time == 0 {
        bail!("--time must be at least 1 second");
    }
    for t in &args.target {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t}: use one of {}", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> = if args.target.is_empty() {
        TARGETS.to_vec()
    } else {
        args.target.iter().map(String::as_str).collect()
    };
    ensure_tools()?;
    let fuzz_dir = paths::workspace().join("fuzz");
    let work = paths::kestrel_dir().join("fuzz");
    tools::step("fuzz: building the targets (nightly, address sanitizer)");
    tools::run(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "build", "--fuzz-dir"])
            .arg(&fuzz_dir)
            // The fuzz targets never boot: no guest init built into kestrel.
            .env("KESTREL_EMBED_INIT", "0")
            .current_dir(paths::workspace()),
    )?;
    for target in targets {
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        tools::step(format!("fuzz: {target} for {} s", args.time));
        let started = Instant::now();
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg(target)
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={}", args.time))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            .env("KESTREL_EMBED_INIT", "0")
            .current_dir(paths::workspace())
            .status()
            .context("could not run cargo fuzz")?;
        if !status.success() {
            let found = newest_file(&artifacts);
            bail!(
                "fuzz target {target} failed after {:.0} s{}: reproduce with `cargo +nightly fuzz run --fuzz-dir fuzz {target} <input>`",
                started.elapsed().as_secs_f64(),
                found.map_or(String::new(), |p| format!(" on {}", p.display()))
            );
        }
    }
    Ok(())
}

/// Nightly must be there; cargo-fuzz is installed from crates.io when missing.
fn ensure_tools() -> Result<()> {
    let nightly = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        bail!("fuzzing needs the nightly toolchain: run `rustup toolchain install nightly`");
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        tools::step("fuzz: installing cargo-fuzz from crates.io (once)");
        tools::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn newest_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
}

//! `kestrel bisect`: find the commit (or kernel) where a scenario broke —
//! the engine `cargo xtask bisect` uses ([`kestrel_scenarios::bisect`]),
//! every boot by this same binary on this machine's KVM.
//!
//! Git mode: `kestrel bisect --src ~/linux --good v6.1 --bad HEAD
//! --scenario NAME --scenarios DIR` builds each step out of tree (the
//! `kernel build` output directory, reused), boots it, compares the
//! scenario's output with the good revision's, and leaves the tree on the
//! branch it was on. List mode: `--kernels debian:5.10,debian:6.1,…`,
//! oldest first. State (plan, baseline snapshot, runs, steps) in the
//! kernel cache's `bisect/<time>-<pid>/`; `git bisect run` calls a copy of
//! this binary kept there (`kestrel bisect-step`), so reinstalling kestrel
//! mid-bisection changes nothing under it.
//!
//! Exit status: 0 a first bad commit named, 1 only skipped commits left
//! (the candidates are listed), 125 an error (one sentence).

use anyhow::{Context, Result};
use kestrel_scenarios::bisect::{
    self as engine, BisectArgs, Conclusion, Engine, Here, State, StepArgs,
};

/// `kestrel bisect`.
pub fn run(args: BisectArgs) -> Result<u8> {
    if args.scenarios.is_empty()
        && !args.scenario.ends_with(".toml")
        && !args.scenario.contains('/')
    {
        anyhow::bail!(
            "name the directory of scenario `{}` with --scenarios DIR, or give the path of its .toml file",
            args.scenario
        );
    }
    let request = args.request(&[])?;
    crate::doctor::require_hardware_speed().map_err(anyhow::Error::msg)?;
    engine::take_signals()?;
    let cache = kestrel_kernels::Cache::from_env()?;
    let state = State::create(&cache.root().join("bisect"))?;
    let me = state.copy_of_this_binary()?;
    let booter = Here {
        kestrel: me.clone(),
    };
    let fetch = |spec: &str| super::ensure_kernel(spec);
    let conclusion = engine::run(
        &request,
        &Engine {
            state,
            step_command: vec![me.into_os_string(), "bisect-step".into()],
            booter: &booter,
            rig: false,
            kbuild_base: super::kbuild_base()?,
            fetch: &fetch,
        },
    )?;
    Ok(match conclusion {
        Conclusion::FirstBad { .. } => 0,
        Conclusion::Ambiguous(_) => 1,
    })
}

/// `kestrel bisect-step` (hidden; what `git bisect run` calls): boots with
/// this binary, which is the bisection's own copy.
pub fn run_step(args: StepArgs) -> u8 {
    engine::run_step(&args.state, args.kind, &|_| {
        let kestrel = std::env::current_exe().context("cannot find the kestrel binary itself")?;
        Ok(Box::new(Here { kestrel }))
    })
}

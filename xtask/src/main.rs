//! `cargo xtask`: Kestrel's workflow — kernels, the nested rig, tests, CI.
//!
//! Every subcommand does its own set-up (installs QEMU, fetches kernels,
//! builds the init) and reuses what is cached. Errors end in one line on
//! stderr, never a backtrace.

mod bench;
mod bench_fs;
mod bisect;
mod ci;
mod fuzz;
mod guest;
mod kernel;
mod matrix;
mod paths;
mod qemu;
mod rig;
mod selftest;
mod stress;
mod test;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Kestrel's workflow", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The main job: run the stored scenarios under kestrel and check their snapshots.
    Test(test::TestArgs),
    /// The scenarios on several kernels side by side (the ABI matrix), with reports.
    Matrix(matrix::MatrixArgs),
    /// Everything CI runs: fmt, clippy, unit tests, guest boots, the rig.
    Ci,
    /// Fetch and list kernels in the cache.
    #[command(subcommand)]
    Kernel(kernel::KernelCmd),
    /// Run a command inside the nested rig (an L1 Linux with real KVM).
    Rig(rig::RigArgs),
    /// Benchmarks, side by side with QEMU (in the rig when needed).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Guest boot checks with QEMU (used by `test` and `ci`).
    Selftest(selftest::SelftestArgs),
    /// Fuzz every parser that reads guest or user input (cargo-fuzz, nightly).
    Fuzz(fuzz::FuzzArgs),
    /// Many boots under kestrel and QEMU-KVM, alternating: failure rates with 95% intervals.
    Stress(stress::StressArgs),
    /// Find the commit (or kernel) where a scenario starts failing.
    Bisect(kestrel_scenarios::bisect::BisectArgs),
    /// The bisect acceptance test on a git fixture made from Debian's 6.1 source.
    BisectFixture {
        /// Only make (or check) the fixture repository.
        #[arg(long)]
        prepare: bool,
    },
    /// One `git bisect run` step: build HEAD, boot, exit 0/1/125 (internal).
    #[command(hide = true)]
    BisectStep(kestrel_scenarios::bisect::StepArgs),
    /// One scenario boot for a bisection, where KVM boots kernels (internal).
    #[command(hide = true)]
    BisectBoot {
        /// The boot's request (JSON, in the bisection's state directory).
        #[arg(long)]
        request: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Test(args) => test::run(&args).map(|passed| u8::from(!passed)),
        Cmd::Matrix(args) => matrix::run(&args).map(|passed| u8::from(!passed)),
        Cmd::Ci => ci::run().map(|()| 0),
        Cmd::Kernel(cmd) => kernel::run(cmd).map(|()| 0),
        Cmd::Rig(args) => rig::run(&args).map(rig::RigExit::code),
        Cmd::Bench(cmd) => bench::run(&cmd).map(|()| 0),
        Cmd::Selftest(args) => selftest::run(&args).map(|failed| u8::from(failed > 0)),
        Cmd::Stress(args) => stress::run(&args).map(|()| 0),
        Cmd::Fuzz(args) => fuzz::run(&args).map(|()| 0),
        Cmd::Bisect(args) => bisect::run(&args).map(|_| 0),
        Cmd::BisectFixture { prepare } => bisect::fixture::run(prepare).map(|()| 0),
        Cmd::BisectStep(args) => Ok(bisect::run_step(&args)),
        Cmd::BisectBoot { request } => bisect::run_boot(&request).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

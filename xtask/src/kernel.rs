//! `cargo xtask kernel …`: [`kestrel_kernels::commands`], with default
//! build outputs under `target/kestrel/kbuild/`.

use anyhow::Result;
pub use kestrel_kernels::commands::KernelCmd;

use crate::paths;

pub fn run(cmd: KernelCmd) -> Result<()> {
    kestrel_kernels::commands::run(cmd, &paths::kestrel_dir().join("kbuild"))
}

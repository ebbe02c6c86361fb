//! `kestrel kernel fetch|list|source|build`: the shared
//! [`kestrel_kernels::commands`], with build outputs in the kernel cache's
//! `kbuild/` (the installed binary has no workspace to put them in).

use anyhow::Result;
pub use kestrel_kernels::commands::KernelCmd;

/// Runs one `kestrel kernel` subcommand.
pub fn run(cmd: KernelCmd) -> Result<()> {
    kestrel_kernels::commands::run(cmd, &super::kbuild_base()?)
}

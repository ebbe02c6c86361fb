//! Kernel builds for bisect steps: [`kestrel_kernels::kbuild`] with
//! xtask's default output directory.

use std::path::{Path, PathBuf};

pub use kestrel_kernels::kbuild::*;

use crate::paths;

/// `target/kestrel/kbuild/<16 hex digits>`: xtask's default output dir.
pub fn default_out(src: &Path, configs: &ConfigSet) -> PathBuf {
    kestrel_kernels::kbuild::default_out(&paths::kestrel_dir().join("kbuild"), src, configs)
}

//! Where things live: the workspace, its target dir, Kestrel's run dir.
//!
//! Invariant: every path xtask writes to is under `target_dir()` or the
//! kernel cache; nothing is written into the user's source trees.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace() -> PathBuf {
    // xtask/ is one level below the root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace().join(dir)
            }
        }
        None => workspace().join("target"),
    }
}

/// Kestrel's own scratch and artifact directory: `target/kestrel/`.
pub fn kestrel_dir() -> PathBuf {
    target_dir().join("kestrel")
}

//! Builds the static guest init (`initramfs/init`, package kestrel-init)
//! and embeds it in `kestrel`, so an installed binary needs no workspace
//! (issue 14 item 1). The init is built by a nested cargo into
//! `<target>/kestrel-init-embed/` (its own target dir: the outer cargo
//! holds the lock on the usual one), for x86_64-unknown-linux-gnu with a
//! static C runtime, exactly as xtask builds it.
//!
//! Its SHA-256 is computed here too (`KESTREL_EMBEDDED_INIT_SHA256`), so
//! the binary names the unpacked copy without hashing it at every start.
//!
//! `KESTREL_EMBED_INIT=0` skips it (the binary then needs `--init`,
//! `$KESTREL_INIT` or xtask's build, as before); so does a source tree
//! without `initramfs/init` (a packaged crate).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KESTREL_EMBED_INIT");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out.join("kestrel-init");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let init_dir = workspace.join("initramfs/init");
    let skip = std::env::var_os("KESTREL_EMBED_INIT").is_some_and(|v| v == "0");
    if skip || !init_dir.join("Cargo.toml").is_file() {
        std::fs::write(&dest, b"").expect("write an empty init");
        emit_hash(b"");
        return;
    }
    for p in [
        "initramfs/init/src",
        "initramfs/init/Cargo.toml",
        "initramfs/src",
        "initramfs/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    // <target>/<profile>/build/kestrel-<hash>/out → <target>.
    let target_dir = out
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace.join("target"));
    let nested = target_dir.join("kestrel-init-embed");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--release",
            "--locked",
            "--package",
            "kestrel-init",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&nested);
    // The outer build's flags are not the init's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env(
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "-C target-feature=+crt-static -C strip=symbols",
    );
    let status = cmd.status().expect("run cargo to build the guest init");
    assert!(
        status.success(),
        "building the guest init (kestrel-init) failed; set KESTREL_EMBED_INIT=0 to build kestrel without it"
    );
    let built = nested.join("x86_64-unknown-linux-gnu/release/kestrel-init");
    let bytes = std::fs::read(&built).expect("read the built init");
    std::fs::write(&dest, &bytes).expect("copy the built init");
    emit_hash(&bytes);
}

/// `KESTREL_EMBEDDED_INIT_SHA256` for the binary: the init's content key,
/// computed here so no `kestrel run` hashes 1.5 MB at start-up.
fn emit_hash(bytes: &[u8]) {
    println!(
        "cargo:rustc-env=KESTREL_EMBEDDED_INIT_SHA256={}",
        kestrel_kernels::build::sha256_hex(bytes)
    );
}

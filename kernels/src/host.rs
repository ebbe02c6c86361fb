//! Host programs: finding them, installing Debian packages, describing a
//! command, progress lines. Shared by xtask and the installed `kestrel`.
//!
//! Invariant: a missing tool is installed through apt only when we are
//! root; otherwise the user gets one sentence naming the package to
//! install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Prints one progress line on stderr.
pub fn step(msg: impl AsRef<str>) {
    eprintln!("\x1b[1m==>\x1b[0m {}", msg.as_ref());
}

/// Looks a program up in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian packages, refreshing the apt index first when a package
/// is unknown to it. Not root: one sentence naming the packages.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "Kestrel needs Debian's {} here: install {} (sudo apt-get install {}) and run this again",
            packages.join(", "),
            if packages.len() == 1 { "it" } else { "them" },
            packages.join(" ")
        );
    }
    let known = Command::new("apt-cache")
        .arg("show")
        .args(packages)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !known {
        step("refreshing the apt index (apt-get update)");
        run(Command::new("apt-get").args(["update"]))?;
    }
    step(format!("installing {} with apt", packages.join(" ")));
    let start = Instant::now();
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages))?;
    step(format!(
        "installed in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs a command with inherited stdio; a non-zero exit is an error naming it.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// A short human description of a command: program and arguments.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

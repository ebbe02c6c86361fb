//! Host tools xtask needs (QEMU, virtiofsd) and how to get them.
//!
//! Invariant: a missing tool is installed through apt only when we are root;
//! otherwise the user gets one sentence naming the package to install.

use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The QEMU binary for x86-64 guests.
pub const QEMU: &str = "qemu-system-x86_64";
/// Where Debian's qemu-system-common ships the C virtiofsd (the benches
/// compare our server with it).
pub const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// The Debian package that brings both.
const QEMU_PACKAGE: &str = "qemu-system-x86";

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

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure QEMU is installed, installing it with apt
/// when we are root. Returns the QEMU binary.
pub fn ensure_qemu() -> Result<PathBuf> {
    if let Some(qemu) = which(QEMU) {
        return Ok(qemu);
    }
    if !is_root() {
        bail!(
            "{QEMU} is missing: install Debian's `{QEMU_PACKAGE}` package \
             (sudo apt-get install {QEMU_PACKAGE}) and run this again"
        );
    }
    if which("apt-get").is_none() {
        bail!("{QEMU} is missing and there is no apt-get here: install QEMU for x86-64 by hand");
    }
    apt_install(&[QEMU_PACKAGE])?;
    which(QEMU).with_context(|| format!("{QEMU} is still missing after installing {QEMU_PACKAGE}"))
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

/// Listens on `socket`, then starts `cmd` with `--fd=N` naming the listening
/// socket it inherits. The socket exists before the server runs, so a
/// client started right after cannot race it (virtme-ng #418).
pub fn spawn_on_socket(mut cmd: Command, socket: &Path) -> Result<Child> {
    use std::os::fd::AsRawFd;
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("could not listen on {}", socket.display()))?;
    let fd = listener.as_raw_fd();
    cmd.arg(format!("--fd={fd}"));
    // SAFETY: the closure runs in the forked child before exec and only
    // calls fcntl, which is async-signal-safe; it clears FD_CLOEXEC on the
    // listening socket so the server inherits it under the same number.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", describe(&cmd)))?;
    // The child has its own copy now; ours closes here.
    drop(listener);
    Ok(child)
}

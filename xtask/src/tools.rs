//! Host tools xtask needs (QEMU, virtiofsd) and how to get them.
//!
//! Invariant: a missing tool is installed through apt only when we are root;
//! otherwise the user gets one sentence naming the package to install.

use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{bail, Context, Result};

/// The QEMU binary for x86-64 guests.
pub const QEMU: &str = "qemu-system-x86_64";
/// Where Debian's qemu-system-common ships the C virtiofsd (the benches
/// compare our server with it).
pub const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// The Debian package that brings both.
const QEMU_PACKAGE: &str = "qemu-system-x86";

pub use kestrel_kernels::host::{apt_install, describe, is_root, run, step, which};

/// A QEMU to run: its binary and, for one unpacked into the cache, the
/// data directory its option ROMs come from.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub bin: PathBuf,
    pub data_dir: Option<PathBuf>,
    /// `--version`'s first line, for reports.
    pub version: String,
}

impl Qemu {
    /// A command running this QEMU, its data directory first in the search.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        if let Some(dir) = &self.data_dir {
            cmd.arg("-L").arg(dir);
        }
        cmd
    }
}

/// The oldest QEMU major version whose TCG nested SVM runs L2 guests with
/// two vCPUs reliably: under 7.2, half of the 2-vCPU 6.12 boots in the rig
/// panicked and L1 soft-locked in `kestrel_vcpu` threads (ARCHITECTURE.md, "The nested rig";
/// 10.0: 40 of 40 boots).
pub const NESTED_QEMU_MAJOR: u32 = 10;
/// The packages of a QEMU unpacked into the cache.
const QEMU_TOOLSET: kestrel_kernels::debtools::ToolSet = kestrel_kernels::debtools::ToolSet {
    name: "qemu",
    packages: &["qemu-system-x86", "qemu-system-common", "qemu-system-data"],
};

/// The QEMU for the rig and the benches: `$KESTREL_QEMU` when set; else
/// the system's when it is at least [`NESTED_QEMU_MAJOR`]; else, on
/// Debian, the suite's backports QEMU unpacked into the kernel cache
/// (fetched once, never installed; the libraries and firmware it needs are
/// installed from the host's own suite, which never replaces a package the
/// user has); else the system's QEMU, installed with apt when missing, with
/// one warning line.
///
/// The system's QEMU is not installed on the way to the backports one:
/// Debian 12's QEMU 7.2 cannot be installed beside a backports
/// `qemu-utils` without removing it.
pub fn ensure_qemu() -> Result<Qemu> {
    if let Some(bin) = std::env::var_os("KESTREL_QEMU").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        let version = qemu_version(&bin)
            .with_context(|| format!("KESTREL_QEMU={} does not run", bin.display()))?;
        return Ok(Qemu {
            bin,
            data_dir: None,
            version,
        });
    }
    let on_path = path_qemu()?;
    if let Some(system) = &on_path {
        if qemu_major(&system.version).is_some_and(|m| m >= NESTED_QEMU_MAJOR) {
            return Ok(system.clone());
        }
    }
    let why = match backports_qemu() {
        Ok(Some(qemu)) => return Ok(qemu),
        Ok(None) => String::new(),
        Err(e) => format!(": a newer one could not be set up: {e:#}"),
    };
    let system = match on_path {
        Some(system) => system,
        None => system_qemu().map_err(|e| {
            if why.is_empty() {
                e
            } else {
                e.context(format!("no QEMU {NESTED_QEMU_MAJOR} either{why}"))
            }
        })?,
    };
    step(format!(
        "using the system's {} (older than {NESTED_QEMU_MAJOR}.0: nested guests with 2 vCPUs are unreliable){why}",
        system.version
    ));
    Ok(system)
}

/// The QEMU on `PATH`, if there is one (never installed here).
fn path_qemu() -> Result<Option<Qemu>> {
    let Some(bin) = which(QEMU) else {
        return Ok(None);
    };
    let version = qemu_version(&bin)?;
    Ok(Some(Qemu {
        bin,
        data_dir: None,
        version,
    }))
}

/// The QEMU on `PATH`, installed with apt first when missing and we are root.
pub fn system_qemu() -> Result<Qemu> {
    if let Some(qemu) = path_qemu()? {
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
    path_qemu()?.with_context(|| format!("{QEMU} is still missing after installing {QEMU_PACKAGE}"))
}

/// The backports QEMU of the host's Debian suite from the cache, fetched
/// when missing; `None` when the host is not a Debian suite with one.
fn backports_qemu() -> Result<Option<Qemu>> {
    use kestrel_kernels::debtools;
    let os_release = std::fs::read_to_string(kestrel_kernels::spec::OS_RELEASE).unwrap_or_default();
    let suite = match kestrel_kernels::spec::os_release_codename(&os_release).as_deref() {
        Some("bookworm") => "bookworm-backports",
        _ => return Ok(None),
    };
    let cache = kestrel_kernels::Cache::from_env()?;
    let unpacked = match debtools::lookup(&cache, suite, QEMU_TOOLSET) {
        Some(found) => found,
        None => {
            step(format!(
                "fetching QEMU from {suite} into the cache (the system's is older than {NESTED_QEMU_MAJOR}.0)"
            ));
            debtools::fetch(&cache, suite, QEMU_TOOLSET)?
        }
    };
    let needed = kestrel_kernels::host::unsatisfied_packages(&unpacked.host_depends);
    if !needed.is_empty() {
        let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
        step(format!(
            "QEMU {} from {suite} uses these packages of the system's suite: {}",
            unpacked.version,
            needed.join(" ")
        ));
        apt_install(&needed)?;
    }
    let bin = unpacked.root.join("usr/bin").join(QEMU);
    let version = qemu_version(&bin).with_context(|| {
        format!(
            "QEMU {} unpacked from {suite} does not run here (a library missing? install {QEMU_PACKAGE} from {suite})",
            unpacked.version
        )
    })?;
    if qemu_major(&version).is_none_or(|m| m < NESTED_QEMU_MAJOR) {
        return Ok(None);
    }
    Ok(Some(Qemu {
        bin,
        data_dir: Some(unpacked.root.join("usr/share/qemu")),
        version,
    }))
}

/// The first line of `qemu --version`.
fn qemu_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("could not run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// The major version in `QEMU emulator version 7.2.22 (Debian …)`.
pub fn qemu_major(version_line: &str) -> Option<u32> {
    let rest = version_line.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_major_reads_the_version_line() {
        assert_eq!(
            qemu_major("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some(7)
        );
        assert_eq!(
            qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
            Some(10)
        );
        assert_eq!(qemu_major("something else"), None);
    }
}

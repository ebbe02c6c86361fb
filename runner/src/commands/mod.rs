//! The developer commands of the installed `kestrel` beyond `run`:
//! [`kernel`] (fetch, list, source, build), [`test`] and [`matrix`] (your
//! own scenario directories, on one kernel or side by side on several),
//! [`kunit`] and [`kselftest`], [`bisect`].
//!
//! They boot through [`boot`]: this same binary started again as
//! `kestrel run …`, so every guest run has the VMM's own process, exit
//! status and verdict line exactly as a user's `kestrel run` would.
//!
//! Invariant: every error is one sentence that says what to do; nothing is
//! written into the user's source tree (builds go to an output directory
//! in the kernel cache, or `--out`).

pub mod bisect;
pub mod kernel;
pub mod kselftest;
pub mod kunit;
pub mod matrix;
pub mod test;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use kestrel_scenarios::backend::VerdictRecord;

/// One `kestrel run` to start.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// `--kernel`.
    pub kernel: String,
    /// `--append`.
    pub append: String,
    /// `--console FILE`: the kernel log.
    pub console: PathBuf,
    /// Where the guest command's stdout goes (`None`: discarded).
    pub stdout: Option<PathBuf>,
    /// `--timeout`.
    pub timeout_secs: u64,
    /// `--cpus`, `--memory`.
    pub cpus: u32,
    pub memory_mib: u64,
    /// Without the host's root (the command, if any, comes from the initramfs).
    pub no_host_root: bool,
    /// Host directories writable in the guest (`--rw`).
    pub rw: Vec<PathBuf>,
    /// The guest command (empty: boot and power off).
    pub command: Vec<String>,
}

/// How a `kestrel run` ended: its exit code and its verdict record.
#[derive(Debug, Clone)]
pub struct Booted {
    /// kestrel's exit code (the guest command's status, 124 timeout, …).
    pub code: i32,
    /// What `--verdict-file` recorded (`None`: the child wrote none).
    pub record: Option<VerdictRecord>,
}

impl Booted {
    /// The verdict in a few words: `verdict boot-failure: why`.
    pub fn describe(&self) -> String {
        match &self.record {
            Some(r) => match &r.reason {
                Some(why) => format!("verdict {}: {why}", r.verdict),
                None => format!("verdict {}", r.verdict),
            },
            None => format!("kestrel exited {} without a verdict", self.code),
        }
    }
}

impl Boot {
    /// Where the run's verdict record goes: beside the kernel log
    /// (`kunit.log` → `kunit.verdict.json`).
    pub fn verdict_file(&self) -> PathBuf {
        self.console.with_extension("verdict.json")
    }

    /// The `kestrel run` arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "run".to_owned(),
            "--kernel".into(),
            self.kernel.clone(),
            "--no-tty".into(),
            "--console".into(),
            self.console.display().to_string(),
            "--verdict-file".into(),
            self.verdict_file().display().to_string(),
            "--timeout".into(),
            self.timeout_secs.to_string(),
            "--cpus".into(),
            self.cpus.to_string(),
            "--memory".into(),
            self.memory_mib.to_string(),
        ];
        if !self.append.is_empty() {
            a.push(format!("--append={}", self.append));
        }
        if self.no_host_root {
            a.push("--no-host-root".into());
        }
        for dir in &self.rw {
            a.push("--rw".into());
            a.push(dir.display().to_string());
        }
        if !self.command.is_empty() {
            a.push("--".into());
            a.extend(self.command.iter().cloned());
        }
        a
    }

    /// Starts this binary as `kestrel run` and waits for it (its stderr
    /// passed through, so progress stays visible); reads its verdict
    /// record.
    pub fn run(&self) -> Result<Booted> {
        let exe = std::env::current_exe().context("cannot find the kestrel binary itself")?;
        let stdout = match &self.stdout {
            Some(path) => Stdio::from(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let record_path = self.verdict_file();
        let _ = std::fs::remove_file(&record_path);
        let status = Command::new(&exe)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(stdout)
            .status()
            .with_context(|| format!("could not run {}", exe.display()))?;
        Ok(Booted {
            code: status.code().unwrap_or(125),
            record: VerdictRecord::read(&record_path),
        })
    }
}

/// The kernel cache's `kbuild/` directory: default build outputs of the
/// installed `kestrel` (one per source tree and configuration).
pub fn kbuild_base() -> Result<PathBuf> {
    Ok(kestrel_kernels::Cache::from_env()?.root().join("kbuild"))
}

/// Makes sure `spec` resolves, fetching a Debian kernel that is not cached
/// yet (the `kestrel run` child only reads the cache).
pub fn ensure_kernel(spec: &str) -> Result<()> {
    let parsed: kestrel_kernels::KernelSpec = spec.parse()?;
    let cache = kestrel_kernels::Cache::from_env()?;
    kestrel_kernels::resolve(&parsed, &cache, kestrel_kernels::Fetch::Allowed)?;
    Ok(())
}

/// `path` made absolute against the current directory.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_arguments() {
        let b = Boot {
            kernel: "build:/o".into(),
            append: "loglevel=7 kunit.filter_glob=list*".into(),
            console: "/o/kunit.log".into(),
            timeout_secs: 60,
            cpus: 1,
            memory_mib: 512,
            no_host_root: true,
            ..Boot::default()
        };
        assert_eq!(
            b.args().join(" "),
            "run --kernel build:/o --no-tty --console /o/kunit.log --verdict-file /o/kunit.verdict.json --timeout 60 --cpus 1 \
             --memory 512 --append=loglevel=7 kunit.filter_glob=list* --no-host-root"
        );
        let b = Boot {
            command: vec!["./run_kselftest.sh".into(), "-s".into()],
            rw: vec!["/k/install".into()],
            no_host_root: false,
            ..b
        };
        assert!(b.args().join(" ").ends_with(
            "--append=loglevel=7 kunit.filter_glob=list* --rw /k/install -- ./run_kselftest.sh -s"
        ));
    }
}

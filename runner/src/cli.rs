//! The `kestrel` command line: parsing and turning arguments into a
//! [`crate::vm::Config`].
//!
//! Invariant: every argument error is one sentence that says what to do;
//! the binary exits 125 for all of them (2 would collide with a guest
//! command's own exit status).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::vm::{Boot, Config, Console};

/// Run a command inside a Linux kernel under KVM and report one verdict.
#[derive(Debug, Parser)]
#[command(name = "kestrel", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a kernel with an initramfs and report the guest's verdict.
    Run(RunArgs),
    /// Check /dev/kvm, its permissions and whether it runs at hardware speed.
    Doctor,
}

/// `kestrel run` arguments.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Kernel image: a bzImage or an ELF vmlinux with a PVH entry.
    #[arg(long, value_name = "PATH")]
    pub kernel: String,
    /// Initramfs (cpio, possibly several concatenated).
    #[arg(long, value_name = "PATH")]
    pub initrd: PathBuf,
    /// Extra kernel command-line arguments, after kestrel's defaults.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub append: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 512)]
    pub memory: u64,
    /// Wall-clock limit in seconds; exit 124 when it passes.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Kernel console destination: stderr, none, or a file path.
    #[arg(long, value_name = "stderr|FILE|none", default_value = "stderr")]
    pub console: String,
}

/// Where the kernel comes from. Only paths for now; `debian:<series>`
/// resolves through the kernel cache in a later step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A file.
    Path(PathBuf),
    /// A Debian cloud kernel series, e.g. `debian:6.1`.
    Debian(String),
}

impl KernelSource {
    /// Parses the `--kernel` value.
    pub fn parse(value: &str) -> KernelSource {
        match value.strip_prefix("debian:") {
            Some(series) => KernelSource::Debian(series.to_string()),
            None => KernelSource::Path(PathBuf::from(value)),
        }
    }
}

/// An argument kestrel cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// `debian:<series>` is not wired up yet.
    #[error("--kernel debian:{0} is not supported yet: fetch it with `cargo xtask kernel fetch debian:{0}` and pass the kernel's path")]
    KernelCacheNotYet(String),
    /// Empty argument.
    #[error("--{0} must not be empty")]
    Empty(&'static str),
}

impl TryFrom<RunArgs> for Config {
    type Error = CliError;

    fn try_from(args: RunArgs) -> Result<Config, CliError> {
        let kernel = match KernelSource::parse(&args.kernel) {
            KernelSource::Path(path) if path.as_os_str().is_empty() => {
                return Err(CliError::Empty("kernel"))
            }
            KernelSource::Path(path) => path,
            KernelSource::Debian(series) => return Err(CliError::KernelCacheNotYet(series)),
        };
        let console = match args.console.as_str() {
            "" => return Err(CliError::Empty("console")),
            "stderr" => Console::Stderr,
            "none" => Console::Discard,
            path => Console::File(PathBuf::from(path)),
        };
        Ok(Config {
            boot: Boot::Kernel {
                kernel,
                initrd: Some(args.initrd),
                append: args.append,
            },
            cpus: args.cpus,
            memory_mib: args.memory,
            timeout: Duration::from_secs(args.timeout),
            console,
        })
    }
}

/// The one line to show for a clap error: its first paragraph joined,
/// without the usage block.
pub fn clap_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let words: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = words.join(" ");
    let line = line.trim_start_matches("error: ");
    if line.is_empty() {
        "invalid arguments; see kestrel --help".to_string()
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::ConfigError;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kestrel").chain(args.iter().copied()))
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match parse(args).unwrap().command {
            Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = run_args(&["run", "--kernel", "/k", "--initrd", "/i"]);
        let c = Config::try_from(a).unwrap();
        assert_eq!(c.cpus, 1);
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.timeout, Duration::from_secs(300));
        assert_eq!(c.console, Console::Stderr);
        assert_eq!(
            c.boot,
            Boot::Kernel {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                append: String::new()
            }
        );
    }

    #[test]
    fn all_options() {
        let a = run_args(&[
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--append",
            "-v loglevel=7",
            "--cpus",
            "2",
            "--memory",
            "256",
            "--timeout",
            "5",
            "--console",
            "none",
        ]);
        let c = Config::try_from(a).unwrap();
        assert_eq!((c.cpus, c.memory_mib), (2, 256));
        assert_eq!(c.console, Console::Discard);
        assert!(matches!(c.boot, Boot::Kernel { append, .. } if append == "-v loglevel=7"));
        let a = run_args(&[
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--console",
            "/tmp/log",
        ]);
        assert_eq!(
            Config::try_from(a).unwrap().console,
            Console::File("/tmp/log".into())
        );
    }

    #[test]
    fn bad_values_give_one_sentence() {
        let a = run_args(&[
            "run",
            "--kernel",
            "/etc/passwd",
            "--initrd",
            "/etc/hostname",
            "--cpus",
            "0",
        ]);
        let c = Config::try_from(a).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Cpus(0))));
        let a = run_args(&[
            "run",
            "--kernel",
            "/etc/passwd",
            "--initrd",
            "/etc/hostname",
        ]);
        let msg = Config::try_from(a)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("/etc/passwd is neither"), "{msg}");
        assert!(!msg.contains('\n'));
        let a = run_args(&["run", "--kernel", "debian:6.1", "--initrd", "/i"]);
        let err = Config::try_from(a).unwrap_err();
        assert_eq!(err, CliError::KernelCacheNotYet("6.1".into()));
        assert!(err
            .to_string()
            .contains("cargo xtask kernel fetch debian:6.1"));
    }

    #[test]
    fn syntax_errors_reduce_to_one_line() {
        let err = parse(&["run", "--kernel", "/k", "--initrd", "/i", "--cpus", "two"]).unwrap_err();
        let line = clap_error_line(&err);
        assert!(line.contains("--cpus"), "{line}");
        assert!(!line.contains('\n'));
        let err = parse(&["run", "--initrd", "/i"]).unwrap_err();
        assert!(clap_error_line(&err).contains("--kernel"));
        assert!(parse(&["doctor"]).is_ok());
    }
}

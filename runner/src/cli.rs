//! The `kestrel` command line: parsing and turning arguments into a
//! [`crate::vm::Config`].
//!
//! Invariant: every argument error is one sentence that says what to do;
//! the binary exits 125 for all of them (2 would collide with a guest
//! command's own exit status).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use kestrel_kernels::{Cache, Fetch, ImageFormat, Kernel, KernelSpec, UNKNOWN_RELEASE};

use crate::boot::{Initrd, KernelKind};
use crate::guest_root::{self, RootError};
use crate::initrd::{self, InitrdError};
use crate::snapshot;
use crate::vm::{Boot, Config, ConfigError, Console, Warm};
use crate::vmlinux::{self, NotUnpacked};
use crate::{guest_modules, log, terminal};

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
    Run(Box<RunArgs>),
    /// Check /dev/kvm, its permissions and whether it runs at hardware speed.
    Doctor,
    /// Fetch Debian kernels and their source, list the cache, build a
    /// kernel from a source tree.
    #[command(subcommand)]
    Kernel(crate::commands::kernel::KernelCmd),
    /// Run your own scenario directories and check them against their
    /// snapshots.
    Test(crate::commands::test::TestArgs),
    /// Run your own scenario directories on several kernels side by side.
    Matrix(crate::commands::matrix::MatrixArgs),
    /// Build a tree's KUnit tests into a kernel, boot it, report per test.
    Kunit(crate::commands::kunit::KunitArgs),
    /// Build a tree's kselftests, run them in the guest, report per test.
    Kselftest(crate::commands::kselftest::KselftestArgs),
    /// Find the commit (or kernel) where a scenario started to fail.
    Bisect(kestrel_scenarios::bisect::BisectArgs),
    /// One `git bisect run` step: build HEAD, boot, exit 0/1/125 (internal).
    #[command(hide = true)]
    BisectStep(kestrel_scenarios::bisect::StepArgs),
}

/// `kestrel run` arguments.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Kernel: debian:<series> or debian:host (from the kernel cache),
    /// build:DIR (a kernel build tree), or a bzImage / PVH vmlinux path.
    #[arg(long, value_name = "SPEC")]
    pub kernel: String,
    /// Use this initramfs (cpio, possibly several concatenated) instead of
    /// building kestrel's own.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The static guest init for kestrel's initramfs (default: $KESTREL_INIT,
    /// else where `cargo xtask` builds it).
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// The kernel's modules directory (lib/modules/<release>); default: the
    /// kernel cache entry's, or /lib/modules/<release>.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
    /// Pack a host executable (path, or name on PATH) with its libraries.
    #[arg(long, value_name = "HOST_EXE")]
    pub pack: Vec<String>,
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
    /// Wall-clock limit in seconds; exit 124 when it passes (default 300;
    /// none for an interactive shell).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Never give the guest command a terminal, even when kestrel's stdin
    /// and stdout are one (by default it gets one: a real tty with job
    /// control, stdin forwarded, Ctrl-A x to quit; with no command, an
    /// interactive shell).
    #[arg(long)]
    pub no_tty: bool,
    /// Kernel console destination: stderr, none, or a file path.
    #[arg(long, value_name = "stderr|FILE|none", default_value = "stderr")]
    pub console: String,
    /// Run the command in the initramfs instead of the host's `/` (shared
    /// read-only over virtio-fs by default).
    #[arg(long)]
    pub no_host_root: bool,
    /// Make this host directory writable in the guest, at the same path
    /// (repeatable).
    #[arg(long, value_name = "DIR")]
    pub rw: Vec<PathBuf>,
    /// Share a host directory at a guest path, read-only unless `:rw`
    /// (repeatable).
    #[arg(long, value_name = "HOST:GUEST[:rw]")]
    pub share: Vec<String>,
    /// Run the command as the invoking user (SUDO_UID/SUDO_GID under sudo)
    /// instead of root.
    #[arg(long)]
    pub user: bool,
    /// How to enter a bzImage: `auto` unpacks its kernel once on the host
    /// (cached) and enters through PVH when the kernel has a PVH note, else
    /// boots the bzImage; `bzimage` always boots the bzImage (the kernel
    /// decompresses itself); `pvh` requires the PVH path.
    #[arg(long, value_enum, default_value_t = EntryChoice::Auto)]
    pub entry: EntryChoice,
    /// Start from a snapshot of this kernel, initramfs, vCPU count, memory
    /// and command line taken where the init waits for its job (made by
    /// the first such run, cached; a missing, stale or damaged one means a
    /// cold boot that saves a new one). Needs kestrel's own initramfs.
    #[arg(long, conflicts_with = "cold")]
    pub warm: bool,
    /// Boot cold (the default).
    #[arg(long)]
    pub cold: bool,
    /// With --initrd and --warm: the job spec to hand the init (the initrd
    /// is then a kestrel base archive without a job, e.g. one `cargo xtask`
    /// built).
    #[arg(long, value_name = "FILE")]
    pub job_spec: Option<PathBuf>,
    /// Print where the time went: kestrel's marks and the guest init's
    /// phases (ms since the process started, guest uptime beside them).
    #[arg(long)]
    pub timings: bool,
    /// Also write the verdict as a JSON record to FILE when the run ends
    /// (`verdict`, `boot_ms`, `total_ms`, `reason`), for programs that
    /// drive kestrel.
    #[arg(long, value_name = "FILE")]
    pub verdict_file: Option<PathBuf>,
    /// Serve the gdb remote protocol on 127.0.0.1:PORT (`gdb vmlinux -ex
    /// 'target remote :PORT'`); the guest waits for gdb before its first
    /// instruction, and time stopped in gdb does not count against
    /// --timeout. Add `--append nokaslr` so vmlinux's addresses hold.
    #[arg(long, value_name = "PORT", conflicts_with = "warm")]
    pub gdb: Option<u16>,
    /// The guest command and its arguments (none: an interactive shell when
    /// kestrel is on a terminal, else boot and report exit 0).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EntryChoice {
    /// PVH when the kernel allows it, else the bzImage.
    Auto,
    /// The 64-bit boot protocol on the bzImage as it is.
    Bzimage,
    /// PVH, or an error saying why not.
    Pvh,
}

/// An argument kestrel cannot use.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Out-of-range resources.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel spec cannot be resolved (cache only: kestrel never downloads).
    #[error(transparent)]
    Kernel(#[from] kestrel_kernels::Error),
    /// kestrel's own initramfs cannot be made.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// `--initrd` together with an option that needs kestrel's initramfs.
    #[error("--initrd cannot be combined with {0}: that needs kestrel's own initramfs, so drop --initrd")]
    InitrdConflict(&'static str),
    /// Empty argument.
    #[error("--{0} must not be empty")]
    Empty(&'static str),
    /// `--rw`, `--share` or the guest root.
    #[error(transparent)]
    Root(#[from] RootError),
    /// `--job-spec` without `--initrd` and `--warm`.
    #[error("--job-spec needs --initrd (a base archive without a job) and --warm")]
    JobSpecAlone,
    /// `--job-spec` unreadable.
    #[error("cannot read --job-spec {path}: {why}")]
    JobSpec {
        /// The file.
        path: PathBuf,
        /// Why not.
        why: String,
    },
    /// `--entry pvh` on a kernel that cannot be entered that way.
    #[error("--entry pvh: cannot boot {path} through PVH: {why}; use --entry auto or bzimage")]
    NoPvh {
        /// The kernel.
        path: PathBuf,
        /// Why not.
        why: String,
    },
}

/// `--timeout` when none is given.
pub const DEFAULT_TIMEOUT: u64 = 300;
/// An interactive shell's limit when `--timeout` is not given: 30 days.
const INTERACTIVE_TIMEOUT: u64 = 30 * 24 * 3600;

/// The shell for an interactive session: the host's bash (the guest root
/// is the host's `/`), else `/bin/sh`.
fn host_shell() -> String {
    if std::path::Path::new("/bin/bash").is_file() {
        "/bin/bash".into()
    } else {
        "/bin/sh".into()
    }
}

impl TryFrom<RunArgs> for Config {
    type Error = CliError;

    /// Checks ranges first, then resolves the kernel (cache only), then
    /// builds or reuses kestrel's initramfs unless `--initrd` is given.
    fn try_from(mut args: RunArgs) -> Result<Config, CliError> {
        let begun = Instant::now();
        // A terminal for the command: kestrel's own initramfs, stdin and
        // stdout both terminals, and something to run (no command means
        // the host's shell, with the host's root).
        let terminal = !args.no_tty
            && args.initrd.is_none()
            && terminal::is_terminal(0)
            && terminal::is_terminal(1)
            && (!args.command.is_empty() || !args.no_host_root);
        let shell = terminal && args.command.is_empty();
        if shell {
            args.command = vec![host_shell()];
        }
        let timeout = Duration::from_secs(match (args.timeout, shell) {
            (Some(t), _) => t,
            (None, true) => INTERACTIVE_TIMEOUT,
            (None, false) => DEFAULT_TIMEOUT,
        });
        Config::validate_resources(args.cpus, args.memory, timeout)?;
        let console = match args.console.as_str() {
            "" => return Err(CliError::Empty("console")),
            "stderr" => Console::Stderr,
            "none" => Console::Discard,
            path => Console::File(PathBuf::from(path)),
        };
        if args.initrd.is_some() {
            let conflicts = [
                (args.init.is_some(), "--init"),
                (args.modules.is_some(), "--modules"),
                (!args.pack.is_empty(), "--pack"),
                (!args.command.is_empty(), "a command after --"),
                (!args.rw.is_empty(), "--rw"),
                (!args.share.is_empty(), "--share"),
                (args.user, "--user"),
                (
                    args.warm && args.job_spec.is_none(),
                    "--warm without --job-spec",
                ),
            ];
            if let Some((_, what)) = conflicts.iter().find(|(set, _)| *set) {
                return Err(CliError::InitrdConflict(what));
            }
        }
        let mut root_req = guest_root::Request {
            host_root: !args.no_host_root,
            rw: args.rw,
            shares: args.share,
            user: args.user,
            modules: None,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        };
        // Argument errors first, before the kernel is looked at.
        guest_root::plan(&root_req, true)?;
        let kernel = resolve_kernel(&args.kernel)?;
        let mut shares = Vec::new();
        let mut warm = None;
        if args.job_spec.is_some() && (args.initrd.is_none() || !args.warm) {
            return Err(CliError::JobSpecAlone);
        }
        let initrd = match args.initrd {
            Some(path) => {
                if let (true, Some(spec)) = (args.warm, &args.job_spec) {
                    let job = std::fs::read_to_string(spec).map_err(|e| CliError::JobSpec {
                        path: spec.clone(),
                        why: e.to_string(),
                    })?;
                    warm = Some(Warm {
                        dir: snapshot::default_dir(),
                        job,
                    });
                }
                Initrd::File(path)
            }
            None => {
                let modules_dir = args.modules.or_else(|| modules_dir_of(&kernel));
                let virtiofs =
                    initrd::has_virtiofs(modules_dir.as_deref(), kernel.config.as_deref());
                if root_req.host_root && virtiofs {
                    root_req.modules = modules_dir
                        .as_deref()
                        .and_then(|d| guest_modules_dir(d, &kernel.release))
                        .map(|d| (d, kernel.release.clone()));
                }
                let guest = guest_root::plan(&root_req, virtiofs)?;
                shares = guest.devices.clone();
                let req = initrd::Request {
                    init: args.init,
                    modules_dir,
                    pack: args.pack,
                    command: args.command,
                    terminal: terminal.then(|| terminal::window_size(0).unwrap_or((24, 80))),
                    release: kernel.release.clone(),
                    cache_dir: initrd::default_cache_dir(),
                    guest,
                };
                let prepared = initrd::prepare(&req)?;
                if args.warm && !args.cold {
                    warm = Some(Warm {
                        dir: snapshot::default_dir(),
                        job: prepared.job_spec,
                    });
                    Initrd::File(prepared.base)
                } else {
                    prepared.initrd
                }
            }
        };
        let (image, kind, fallback) =
            choose_entry(kernel.image, kind_of(kernel.format), args.entry)?;
        Ok(Config {
            boot: Boot::Kernel {
                kind: Some(kind),
                kernel: image,
                fallback,
                initrd: Some(initrd),
                append: args.append,
                shares,
            },
            cpus: args.cpus,
            memory_mib: args.memory,
            // `--timeout` bounds the whole command; the VM gets what is
            // left (at least the 1 s minimum, so a slow first initramfs
            // build may overshoot by that much).
            timeout: timeout
                .saturating_sub(begun.elapsed())
                .max(Duration::from_secs(1)),
            console,
            warm,
            terminal,
        })
    }
}

/// The image to load, its format, and the bzImage to fall back on when the
/// unpacked kernel cannot be loaded (`--entry`, [`crate::vmlinux`]).
fn choose_entry(
    image: PathBuf,
    kind: KernelKind,
    entry: EntryChoice,
) -> Result<(PathBuf, KernelKind, Option<PathBuf>), CliError> {
    if kind != KernelKind::BzImage || entry == EntryChoice::Bzimage {
        return Ok((image, kind, None));
    }
    match vmlinux::pvh_vmlinux(&image, &vmlinux_cache_dir()) {
        Ok(elf) => {
            log::debug(format_args!(
                "entering {} through PVH (unpacked from {})",
                elf.display(),
                image.display()
            ));
            Ok((elf, KernelKind::Elf, Some(image)))
        }
        Err(NotUnpacked(why)) if entry == EntryChoice::Pvh => {
            Err(CliError::NoPvh { path: image, why })
        }
        Err(NotUnpacked(why)) => {
            log::debug(format_args!("booting the bzImage as it is: {why}"));
            Ok((image, kind, None))
        }
    }
}

/// Where unpacked kernels are cached: beside the initramfs cache.
pub fn vmlinux_cache_dir() -> PathBuf {
    initrd::default_cache_dir().with_file_name("vmlinux")
}

/// The directory to show at `/lib/modules/<release>` for the kernel's
/// modules `dir` ([`guest_modules::prepare`]); a failure leaves the guest
/// without modules (a warning), it does not stop the run.
fn guest_modules_dir(dir: &Path, release: &str) -> Option<PathBuf> {
    let cache = Cache::from_env().ok();
    let kernels = cache.as_ref().map(Cache::kernels_dir);
    let cache_root = cache.as_ref().map_or_else(
        || {
            let d = initrd::default_cache_dir();
            d.parent().map_or(d.clone(), Path::to_path_buf)
        },
        |c| c.root().to_path_buf(),
    );
    match guest_modules::prepare(dir, release, kernels.as_deref(), &cache_root) {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn(format_args!(
                "the guest gets no /lib/modules/{release} (modprobe will not work): {e}"
            ));
            None
        }
    }
}

/// `--kernel` through the kernel cache, never downloading.
pub fn resolve_kernel(value: &str) -> Result<Kernel, CliError> {
    if value.is_empty() {
        return Err(CliError::Empty("kernel"));
    }
    let spec: KernelSpec = value.parse()?;
    let cache = match Cache::from_env() {
        Ok(cache) => cache,
        // Local kernels need no cache.
        Err(_) if matches!(spec, KernelSpec::Image(_) | KernelSpec::BuildTree(_)) => Cache::at(""),
        Err(e) => return Err(e.into()),
    };
    Ok(kestrel_kernels::resolve(&spec, &cache, Fetch::CacheOnly)?)
}

/// The boot path for a kernel format.
pub fn kind_of(format: ImageFormat) -> KernelKind {
    match format {
        ImageFormat::BzImage { .. } => KernelKind::BzImage,
        ImageFormat::ElfVmlinux => KernelKind::Elf,
    }
}

/// The kernel's modules: its cache entry's, else the directory the image
/// sits in when that is `…/modules/<release>` (Debian's newer layout), else
/// `/lib/modules/<release>`. None: no modules (all built in).
fn modules_dir_of(kernel: &Kernel) -> Option<PathBuf> {
    if kernel.modules_dir.is_some() || kernel.release == UNKNOWN_RELEASE {
        return kernel.modules_dir.clone();
    }
    let beside = kernel
        .image
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| *n == *kernel.release));
    beside
        .map(Path::to_path_buf)
        .into_iter()
        .chain([Path::new("/lib/modules").join(&kernel.release)])
        .find(|d| d.join("modules.dep").is_file() || d.join("kernel").is_dir())
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

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kestrel").chain(args.iter().copied()))
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match parse(args).unwrap().command {
            Command::Run(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_starts_cases_warm_and_matrix_cold_unless_told() {
        let suite = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Test(t)) => Ok(t.suite),
            Ok(Command::Matrix(m)) => Ok(m.suite),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        // `kestrel test` starts warm by default, `kestrel matrix` cold.
        for (cmd, by_default) in [("test", true), ("matrix", false)] {
            let warm = |flags: &[&str]| {
                let args: Vec<&str> = [cmd, "--scenarios", "d"]
                    .iter()
                    .chain(flags)
                    .copied()
                    .collect();
                let s = suite(&args).unwrap();
                s.backend("/k".into(), by_default).extra_args == ["--warm"]
            };
            assert_eq!(warm(&[]), by_default, "{cmd}");
            assert!(warm(&["--warm"]), "{cmd}");
            assert!(!warm(&["--cold"]), "{cmd}");
            assert!(suite(&[cmd, "--scenarios", "d", "--cold", "--warm"]).is_err());
        }
    }

    #[test]
    fn defaults() {
        let a = run_args(&["run", "--kernel", "debian:6.1"]);
        assert_eq!((a.cpus, a.memory, a.timeout), (1, 512, None));
        assert_eq!(a.console, "stderr");
        assert_eq!(a.initrd, None);
        assert!(a.pack.is_empty() && a.command.is_empty() && a.append.is_empty());
    }

    #[test]
    fn all_options_and_the_command() {
        let a = run_args(&[
            "run",
            "--kernel",
            "/k",
            "--init",
            "/i",
            "--modules",
            "/m",
            "--pack",
            "sh",
            "--pack",
            "/usr/bin/nproc",
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
            "--",
            "sh",
            "-c",
            "exit 3",
        ]);
        assert_eq!((a.cpus, a.memory, a.timeout), (2, 256, Some(5)));
        assert_eq!(a.init, Some("/i".into()));
        assert_eq!(a.modules, Some("/m".into()));
        assert_eq!(a.pack, ["sh", "/usr/bin/nproc"]);
        assert_eq!(a.append, "-v loglevel=7");
        assert_eq!(a.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn ranges_come_before_the_kernel() {
        let a = run_args(&["run", "--kernel", "/etc/passwd", "--cpus", "0"]);
        let err = Config::try_from(a).unwrap_err();
        assert!(
            matches!(err, CliError::Config(ConfigError::Cpus(0))),
            "{err}"
        );
        let a = run_args(&["run", "--kernel", "/etc/passwd", "--memory", "1"]);
        let err = Config::try_from(a).unwrap_err();
        assert!(
            matches!(err, CliError::Config(ConfigError::Memory(1))),
            "{err}"
        );
    }

    #[test]
    fn bad_kernels_give_one_sentence() {
        for (kernel, needle) in [
            ("/etc/passwd", "/etc/passwd is not a kernel image"),
            ("/no/such/vmlinuz", "/no/such/vmlinuz does not exist"),
            ("debian:9.9", "unknown Debian kernel series"),
            ("", "--kernel must not be empty"),
        ] {
            let msg = Config::try_from(run_args(&["run", "--kernel", kernel]))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(needle), "{kernel}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn initrd_excludes_what_needs_our_initramfs() {
        let a = run_args(&["run", "--kernel", "/k", "--initrd", "/i", "--pack", "sh"]);
        let msg = Config::try_from(a).unwrap_err().to_string();
        assert!(
            msg.starts_with("--initrd cannot be combined with --pack"),
            "{msg}"
        );
        let a = run_args(&["run", "--kernel", "/k", "--initrd", "/i", "--", "true"]);
        assert!(matches!(
            Config::try_from(a),
            Err(CliError::InitrdConflict("a command after --"))
        ));
    }

    #[test]
    fn formats_choose_the_boot_path() {
        assert_eq!(
            kind_of(ImageFormat::BzImage { protocol: (2, 15) }),
            KernelKind::BzImage
        );
        assert_eq!(kind_of(ImageFormat::ElfVmlinux), KernelKind::Elf);
    }

    #[test]
    fn syntax_errors_reduce_to_one_line() {
        let err = parse(&["run", "--kernel", "/k", "--cpus", "two"]).unwrap_err();
        let line = clap_error_line(&err);
        assert!(line.contains("--cpus"), "{line}");
        assert!(!line.contains('\n'));
        let err = parse(&["run", "--initrd", "/i"]).unwrap_err();
        assert!(clap_error_line(&err).contains("--kernel"));
        assert!(parse(&["doctor"]).is_ok());
    }
}

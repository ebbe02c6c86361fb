//! The crate's one error type. Every message is one sentence that names the
//! thing at fault and says what to do; no variant carries a backtrace.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong between a kernel spec and a usable kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown Debian kernel series `{given}`; known series are {known} (or debian:host)")]
    UnknownSeries { given: String, known: String },

    #[error(
        "`{0}` is not a kernel spec; use debian:<series>, debian:host, build:<dir> or a path to a kernel image"
    )]
    BadSpec(String),

    #[error(
        "the host's Debian suite `{suite}` (from {path}) has no known kernel series; use debian:<series> with one of {known}"
    )]
    UnknownHostSuite {
        suite: String,
        path: PathBuf,
        known: String,
    },

    #[error(
        "{path} has no VERSION_CODENAME, so debian:host cannot be resolved; use debian:<series> with one of {known}"
    )]
    NoHostSuite { path: PathBuf, known: String },

    #[error(
        "kernel image {path} does not exist; pass the path of a bzImage or an x86-64 ELF vmlinux"
    )]
    ImageMissing { path: PathBuf },

    #[error(
        "{path} is not a kernel image ({reason}); expected a bzImage or an x86-64 ELF vmlinux"
    )]
    NotAKernel { path: PathBuf, reason: String },

    #[error(
        "kernel build tree {dir} has neither arch/x86/boot/bzImage nor vmlinux; build the kernel there first"
    )]
    BuildTreeEmpty { dir: PathBuf },

    #[error("no cache directory: set KESTREL_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,

    #[error("{spec} is not in the kernel cache ({dir}); run `kestrel kernel fetch {spec}` (or `cargo xtask kernel fetch {spec}` in a Kestrel checkout)")]
    NotCached { spec: String, dir: PathBuf },

    #[error("cache entry {dir} is damaged ({reason}); delete it and fetch the kernel again")]
    BadCacheEntry { dir: PathBuf, reason: String },

    #[error(
        "{tool} not found: Kestrel fetches Debian kernels with apt; pass a kernel image path with --kernel instead"
    )]
    AptMissing { tool: &'static str },

    #[error(
        "no Debian mirror in the apt sources ({searched}); add a deb entry for a Debian mirror or pass a kernel image path with --kernel"
    )]
    NoMirror { searched: String },

    #[error(
        "apt could not verify the {suite} index from {uris} ({detail}); install a keyring that signs {suite} (debian-archive-keyring) or pass a kernel image path with --kernel"
    )]
    AptSignature {
        suite: String,
        uris: String,
        detail: String,
    },

    #[error("`{command}` failed ({status}): {detail}")]
    AptFailed {
        command: String,
        status: String,
        detail: String,
    },

    #[error("package {package} is not available in {suite} from {uris}; check that the mirror serves {suite}")]
    PackageMissing {
        package: String,
        suite: String,
        uris: String,
    },

    #[error("the packages fetched for {spec} hold no usable kernel ({reason}); report this with the package names")]
    LayoutUnrecognised { spec: String, reason: String },

    #[error("the {package} package from {suite} does not hold a usable kernel source tree ({reason}); report this with the package version")]
    SourceUnrecognised {
        package: String,
        suite: String,
        reason: String,
    },

    #[error("source entry {dir} is damaged ({reason}); delete it and run `cargo xtask kernel source` again")]
    BadSourceEntry { dir: PathBuf, reason: String },

    #[error("`{command}` failed ({status}): {detail}")]
    ToolFailed {
        command: String,
        status: String,
        detail: String,
    },

    #[error("another fetch of {what} is running (pid {pid}, lock {lock}); wait for it to finish")]
    Busy {
        what: String,
        pid: String,
        lock: PathBuf,
    },

    // The io::Error is part of the message, not a `source`, so that chained
    // printing (anyhow's `{:#}`) does not repeat it.
    #[error("cannot {action} {path}: {err}")]
    Io {
        action: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, err: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            err,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

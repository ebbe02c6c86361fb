//! The crate's error type: one sentence per failure, naming the file or the
//! thing that failed and what to do about it.

use std::path::{Path, PathBuf};

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A scenario file that cannot be used.
    #[error("{}:{line}: {message}", path.display())]
    Scenario {
        /// The scenario file.
        path: PathBuf,
        /// 1-based line the problem is on.
        line: usize,
        /// What is wrong, one sentence.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we tried: `read`, `write`, `create directory`…
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A snapshot file that is not in insta's format.
    #[error("{}: not an insta snapshot file ({reason}); delete it and run with --update", path.display())]
    BadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A kernel spec or pattern that cannot be used.
    #[error("kernel `{0}`: {1}")]
    Kernel(String, String),
    /// A filter pattern given on the command line that is not usable.
    #[error("bad option: {0}")]
    Options(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

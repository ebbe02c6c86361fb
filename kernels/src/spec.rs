//! Kernel specs: what the user names with `--kernel` or `kernel fetch`.
//!
//! Parsing is pure (no file system, no network); `debian:host` stays symbolic
//! until [`KernelSpec::series`] reads the host's os-release.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// The os-release file `debian:host` reads.
pub const OS_RELEASE: &str = "/etc/os-release";

/// A Debian kernel series and the suite that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// bullseye (Debian 11).
    V5_10,
    /// bookworm (Debian 12).
    V6_1,
    /// trixie (Debian 13).
    V6_12,
    /// sid (unstable).
    V7_2,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::V5_10, Series::V6_1, Series::V6_12, Series::V7_2];

    /// The series as written in a spec: `6.1`.
    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::V7_2 => "7.2",
        }
    }

    /// The Debian suite whose `linux-image-cloud-amd64` is this series.
    pub fn suite(self) -> &'static str {
        match self {
            Series::V5_10 => "bullseye",
            Series::V6_1 => "bookworm",
            Series::V6_12 => "trixie",
            Series::V7_2 => "sid",
        }
    }

    /// Accepts a series (`6.1`) or its suite (`bookworm`).
    pub fn parse(text: &str) -> Result<Series> {
        Series::ALL
            .into_iter()
            .find(|s| s.name() == text || s.suite() == text)
            .ok_or_else(|| Error::UnknownSeries {
                given: text.to_owned(),
                known: known_series(),
            })
    }

    pub fn from_suite(suite: &str) -> Option<Series> {
        Series::ALL.into_iter().find(|s| s.suite() == suite)
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `5.10 (bullseye), 6.1 (bookworm), …` for error messages.
pub(crate) fn known_series() -> String {
    Series::ALL
        .iter()
        .map(|s| format!("{} ({})", s.name(), s.suite()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// `debian:<series>`: Debian's cloud kernel of that series, through the cache.
    Debian(Series),
    /// `debian:host`: the series of the host's own Debian suite.
    DebianHost,
    /// `build:DIR`: a kernel build tree.
    BuildTree(PathBuf),
    /// A plain path to a bzImage or ELF vmlinux.
    Image(PathBuf),
}

impl KernelSpec {
    /// The Debian series this spec names, reading os-release for `debian:host`;
    /// `None` for local kernels.
    pub fn series(&self) -> Result<Option<Series>> {
        match self {
            KernelSpec::Debian(s) => Ok(Some(*s)),
            KernelSpec::DebianHost => host_series(Path::new(OS_RELEASE)).map(Some),
            KernelSpec::BuildTree(_) | KernelSpec::Image(_) => Ok(None),
        }
    }
}

impl FromStr for KernelSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(Error::BadSpec(text.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("debian:") {
            return match rest {
                "host" => Ok(KernelSpec::DebianHost),
                _ => Series::parse(rest).map(KernelSpec::Debian),
            };
        }
        if let Some(dir) = text.strip_prefix("build:") {
            if dir.is_empty() {
                return Err(Error::BadSpec(text.to_owned()));
            }
            return Ok(KernelSpec::BuildTree(PathBuf::from(dir)));
        }
        // `word:rest` with a bare word is a scheme we do not know (a typo such
        // as `debain:6.1`), not a file name; write `./a:b` for such a file.
        if let Some((scheme, _)) = text.split_once(':') {
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(Error::BadSpec(text.to_owned()));
            }
        }
        Ok(KernelSpec::Image(PathBuf::from(text)))
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Debian(s) => write!(f, "debian:{s}"),
            KernelSpec::DebianHost => f.write_str("debian:host"),
            KernelSpec::BuildTree(d) => write!(f, "build:{}", d.display()),
            KernelSpec::Image(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The series of the host's suite, from an os-release file.
pub fn host_series(os_release: &Path) -> Result<Series> {
    let text = std::fs::read_to_string(os_release).map_err(|e| Error::io("read", os_release, e))?;
    let suite = os_release_codename(&text).ok_or_else(|| Error::NoHostSuite {
        path: os_release.to_owned(),
        known: known_series(),
    })?;
    Series::from_suite(&suite).ok_or_else(|| Error::UnknownHostSuite {
        suite,
        path: os_release.to_owned(),
        known: known_series(),
    })
}

/// `VERSION_CODENAME` from os-release text (quotes removed).
pub fn os_release_codename(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("VERSION_CODENAME=")?;
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KernelSpec> {
        s.parse()
    }

    #[test]
    fn debian_series_and_suites() {
        assert_eq!(
            parse("debian:5.10").unwrap(),
            KernelSpec::Debian(Series::V5_10)
        );
        assert_eq!(
            parse("debian:6.1").unwrap(),
            KernelSpec::Debian(Series::V6_1)
        );
        assert_eq!(
            parse("debian:6.12").unwrap(),
            KernelSpec::Debian(Series::V6_12)
        );
        assert_eq!(
            parse("debian:7.2").unwrap(),
            KernelSpec::Debian(Series::V7_2)
        );
        assert_eq!(
            parse("debian:trixie").unwrap(),
            KernelSpec::Debian(Series::V6_12)
        );
        assert_eq!(parse("debian:host").unwrap(), KernelSpec::DebianHost);
        assert_eq!(Series::V7_2.suite(), "sid");
    }

    #[test]
    fn unknown_series_lists_the_known_ones() {
        let msg = parse("debian:6.2").unwrap_err().to_string();
        assert!(msg.contains("`6.2`"), "{msg}");
        for s in Series::ALL {
            assert!(msg.contains(s.name()) && msg.contains(s.suite()), "{msg}");
        }
        assert!(matches!(parse("debian:"), Err(Error::UnknownSeries { .. })));
    }

    #[test]
    fn build_trees_paths_and_bad_schemes() {
        assert_eq!(
            parse("build:/src/linux").unwrap(),
            KernelSpec::BuildTree("/src/linux".into())
        );
        assert_eq!(
            parse("/boot/vmlinuz").unwrap(),
            KernelSpec::Image("/boot/vmlinuz".into())
        );
        assert_eq!(parse("./a:b").unwrap(), KernelSpec::Image("./a:b".into()));
        assert_eq!(
            parse("bzImage").unwrap(),
            KernelSpec::Image("bzImage".into())
        );
        assert!(matches!(parse("debain:6.1"), Err(Error::BadSpec(_))));
        assert!(matches!(parse("build:"), Err(Error::BadSpec(_))));
        assert!(matches!(parse(""), Err(Error::BadSpec(_))));
    }

    #[test]
    fn display_round_trips() {
        for s in ["debian:6.1", "debian:host", "build:/x", "/boot/vmlinuz"] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn os_release_codename_forms() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(os_release_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(
            os_release_codename("VERSION_CODENAME=\"trixie\"\n").as_deref(),
            Some("trixie")
        );
        assert_eq!(os_release_codename("ID=alpine\n"), None);
        assert_eq!(os_release_codename("VERSION_CODENAME=\n"), None);
    }
}

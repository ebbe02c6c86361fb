//! Debian's kernel source (`linux-source-<ver>`), unpacked into the cache
//! for users and tests without a tree of their own.
//!
//! Layout under the cache root:
//!
//! ```text
//! sources/debian-<series>/manifest              key = "value" lines (SourceManifest)
//! sources/debian-<series>/linux-source-<ver>/   the unpacked tree
//! sources/.staging-debian-<series>-<pid>/       a fetch in progress
//! sources/.lock-debian-<series>                 pid of the process fetching
//! ```
//!
//! The package is found through the private apt configuration of
//! [`crate::apt`] (the system's mirror, one suite): the meta package
//! `linux-source` depends on `linux-source-<ver>`, whose `.deb` holds
//! `usr/src/linux-source-<ver>.tar.xz`. Invariant: as for kernels, an entry
//! appears only by `rename` of a complete staging directory whose manifest
//! was written last; a present entry is reused, never refreshed.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use crate::apt::{self, progress, PrivateApt};
use crate::cache::{escape, lock_in, remove_dir_all, unescape, write_synced, Cache};
use crate::error::{Error, Result};
use crate::spec::Series;

/// The meta package whose dependency names the versioned source package.
const META_PACKAGE: &str = "linux-source";
const VERSIONED_PREFIX: &str = "linux-source-";
const MANIFEST: &str = "manifest";
const ENTRY_PREFIX: &str = "debian-";
const STAGING_PREFIX: &str = ".staging-";

/// What a source entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceManifest {
    pub series: Series,
    pub suite: String,
    /// `linux-source-6.1`.
    pub package: String,
    /// The Debian package version: `6.1.176-1`.
    pub version: String,
    /// Download size in bytes.
    pub download_bytes: u64,
    /// The tree, relative to the entry: `linux-source-6.1`.
    pub tree: PathBuf,
    /// RFC 3339, UTC.
    pub fetched_at: String,
}

impl SourceManifest {
    pub fn to_text(&self) -> String {
        let mut out = String::from("# Kestrel kernel source entry\n");
        let mut put = |k: &str, v: &str| {
            let _ = writeln!(out, "{k} = \"{}\"", escape(v));
        };
        put("series", self.series.name());
        put("suite", &self.suite);
        put("package", &self.package);
        put("version", &self.version);
        put("download_bytes", &self.download_bytes.to_string());
        put("tree", &self.tree.to_string_lossy());
        put("fetched_at", &self.fetched_at);
        out
    }

    /// Parses manifest text; the error names the offending line or key.
    pub fn from_text(text: &str) -> Result<SourceManifest, String> {
        let (mut series, mut suite, mut package, mut version, mut tree) =
            (None, None, None, None, None);
        let mut download_bytes = 0;
        let mut fetched_at = String::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {} is not `key = \"value\"`", n + 1);
            let (key, value) = line.split_once('=').ok_or_else(bad)?;
            let value = unescape(value.trim()).ok_or_else(bad)?;
            match key.trim() {
                "series" => series = Some(Series::parse(&value).map_err(|e| e.to_string())?),
                "suite" => suite = Some(value),
                "package" => package = Some(value),
                "version" => version = Some(value),
                "download_bytes" => {
                    download_bytes = value
                        .parse()
                        .map_err(|_| "download_bytes is not a number".to_owned())?
                }
                "tree" => {
                    let p = PathBuf::from(&value);
                    let mut parts = p.components();
                    let one_name = matches!(parts.next(), Some(Component::Normal(_)))
                        && parts.next().is_none();
                    if !one_name {
                        return Err(format!("tree `{value}` is not a directory name"));
                    }
                    tree = Some(p);
                }
                "fetched_at" => fetched_at = value,
                _ => {}
            }
        }
        let need = |what: &str| format!("no {what}");
        Ok(SourceManifest {
            series: series.ok_or_else(|| need("series"))?,
            suite: suite.ok_or_else(|| need("suite"))?,
            package: package.ok_or_else(|| need("package"))?,
            version: version.ok_or_else(|| need("version"))?,
            download_bytes,
            tree: tree.ok_or_else(|| need("tree"))?,
            fetched_at,
        })
    }
}

/// A cached, unpacked source tree.
#[derive(Debug, Clone)]
pub struct SourceTree {
    /// The entry directory (`sources/debian-<series>`).
    pub entry: PathBuf,
    /// The top of the kernel tree (holds `Makefile`, `Kconfig`).
    pub dir: PathBuf,
    pub manifest: SourceManifest,
}

impl SourceTree {
    fn load(entry: &Path) -> Result<SourceTree> {
        let damaged = |reason: String| Error::BadSourceEntry {
            dir: entry.to_owned(),
            reason,
        };
        let path = entry.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| damaged(format!("manifest: {e}")))?;
        let manifest =
            SourceManifest::from_text(&text).map_err(|r| damaged(format!("manifest: {r}")))?;
        let dir = entry.join(&manifest.tree);
        if !dir.join("Makefile").is_file() {
            return Err(damaged(format!("{}/Makefile is missing", dir.display())));
        }
        Ok(SourceTree {
            entry: entry.to_owned(),
            dir,
            manifest,
        })
    }
}

/// Where the source entry of `series` lives (whether or not it exists).
pub fn entry_dir(cache: &Cache, series: Series) -> PathBuf {
    cache
        .sources_dir()
        .join(format!("{ENTRY_PREFIX}{}", series.name()))
}

/// The cached source tree of `series`, if there is one.
pub fn lookup(cache: &Cache, series: Series) -> Result<Option<SourceTree>> {
    let entry = entry_dir(cache, series);
    if !entry.exists() {
        return Ok(None);
    }
    SourceTree::load(&entry).map(Some)
}

/// The source tree of `series`: the cached one, else downloaded through apt
/// and unpacked (progress on stderr).
pub fn fetch(cache: &Cache, series: Series) -> Result<SourceTree> {
    if let Some(tree) = lookup(cache, series)? {
        return Ok(tree);
    }
    let started = Instant::now();
    let (tools, mirrors) = apt::system_apt()?;
    let name = format!("{ENTRY_PREFIX}{}", series.name());
    let sources = cache.sources_dir();
    let _lock = lock_in(&sources, &name, &format!("the debian:{series} source"))?;
    if let Some(tree) = lookup(cache, series)? {
        return Ok(tree);
    }
    let suite = series.suite();
    let apt = PrivateApt::create(cache, suite, &mirrors, tools)?;
    progress(format_args!(
        "updating the {suite} package index from {}",
        apt.uris
    ));
    apt.update()?;
    let missing = |package: &str| Error::PackageMissing {
        package: package.to_owned(),
        suite: suite.to_owned(),
        uris: apt.uris.clone(),
    };
    let meta = apt
        .show(META_PACKAGE)?
        .ok_or_else(|| missing(META_PACKAGE))?;
    let package =
        versioned_package(meta.dependency_names()).ok_or_else(|| Error::SourceUnrecognised {
            package: META_PACKAGE.to_owned(),
            suite: suite.to_owned(),
            reason: format!("it depends on no {VERSIONED_PREFIX}<version> package"),
        })?;
    let stanza = apt.show(&package)?.ok_or_else(|| missing(&package))?;
    progress(format_args!(
        "downloading {package} {} ({})",
        stanza.version,
        apt::human(stanza.size)
    ));

    // Stale staging directories are dead fetches: we hold the lock.
    let staging_prefix = format!("{STAGING_PREFIX}{name}-");
    if let Ok(read) = std::fs::read_dir(&sources) {
        for e in read.flatten() {
            if e.file_name().to_string_lossy().starts_with(&staging_prefix) {
                remove_dir_all(&e.path())?;
            }
        }
    }
    let staging = sources.join(format!("{staging_prefix}{}", std::process::id()));
    let result = fill_staging(&apt, &staging, series, &package, &stanza, started);
    let result = result.and_then(|manifest| {
        write_synced(&staging.join(MANIFEST), manifest.to_text().as_bytes())?;
        let entry = entry_dir(cache, series);
        std::fs::rename(&staging, &entry).map_err(|e| Error::io("move into place", &entry, e))?;
        SourceTree::load(&entry)
    });
    if result.is_err() {
        let _ = remove_dir_all(&staging);
    }
    let tree = result?;
    progress(format_args!(
        "unpacked {package} {} into {} ({:.1} s)",
        tree.manifest.version,
        tree.dir.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(tree)
}

fn fill_staging(
    apt: &PrivateApt,
    staging: &Path,
    series: Series,
    package: &str,
    stanza: &apt::Stanza,
    started: Instant,
) -> Result<SourceManifest> {
    let debs = staging.join("debs");
    let pkg = staging.join("package");
    for d in [&debs, &pkg] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    apt.download(
        &[crate::PackageRef {
            name: package.to_owned(),
            version: stanza.version.clone(),
            size: stanza.size,
        }],
        &debs,
    )?;
    let deb = only_file(&debs, ".deb").ok_or_else(|| Error::AptFailed {
        command: "apt-get download".into(),
        status: "incomplete".into(),
        detail: format!("no {package} .deb arrived in {}", debs.display()),
    })?;
    progress(format_args!(
        "downloaded in {:.1} s; unpacking",
        started.elapsed().as_secs_f64()
    ));
    apt.unpack(&deb, &pkg)?;
    remove_dir_all(&debs)?;
    let unrecognised = |reason: String| Error::SourceUnrecognised {
        package: package.to_owned(),
        suite: series.suite().to_owned(),
        reason,
    };
    let usr_src = pkg.join("usr/src");
    let tarball = only_file(&usr_src, ".tar.xz").ok_or_else(|| {
        unrecognised(format!("no linux-source-*.tar.xz in {}", usr_src.display()))
    })?;
    let mut tar = Command::new("tar");
    tar.arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(staging)
        .stdin(Stdio::null());
    let out = tar.output().map_err(|e| Error::io("run", "tar", e))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            command: format!("tar -xf {}", tarball.display()),
            status: out.status.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    remove_dir_all(&pkg)?;
    let tree = tree_name(&tarball)
        .ok_or_else(|| unrecognised(format!("unexpected tarball name {}", tarball.display())))?;
    if !staging.join(&tree).join("Makefile").is_file() {
        return Err(unrecognised(format!("the tarball has no {tree}/Makefile")));
    }
    Ok(SourceManifest {
        series,
        suite: series.suite().to_owned(),
        package: package.to_owned(),
        version: stanza.version.clone(),
        download_bytes: stanza.size,
        tree: PathBuf::from(tree),
        fetched_at: apt::rfc3339_utc(SystemTime::now()),
    })
}

/// `linux-source-6.1` among the meta package's dependencies.
fn versioned_package<'a>(mut deps: impl Iterator<Item = &'a str>) -> Option<String> {
    deps.find(|d| {
        d.strip_prefix(VERSIONED_PREFIX)
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    })
    .map(str::to_owned)
}

/// The one file in `dir` whose name ends in `suffix`.
fn only_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// `…/linux-source-6.1.tar.xz` → `linux-source-6.1` (the directory the
/// tarball unpacks to).
fn tree_name(tarball: &Path) -> Option<String> {
    let name = tarball.file_name()?.to_str()?;
    let stem = name.strip_suffix(".tar.xz")?;
    stem.starts_with(VERSIONED_PREFIX).then(|| stem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn manifest() -> SourceManifest {
        SourceManifest {
            series: Series::V6_1,
            suite: "bookworm".into(),
            package: "linux-source-6.1".into(),
            version: "6.1.176-1".into(),
            download_bytes: 139_131_140,
            tree: "linux-source-6.1".into(),
            fetched_at: "2026-11-22T01:16:00Z".into(),
        }
    }

    #[test]
    fn manifest_round_trips_and_rejects_escapes() {
        let m = manifest();
        assert_eq!(SourceManifest::from_text(&m.to_text()).unwrap(), m);
        let bad = m
            .to_text()
            .replace("tree = \"linux-source-6.1\"", "tree = \"../../etc\"");
        let err = SourceManifest::from_text(&bad).unwrap_err();
        assert!(err.contains("not a directory name"), "{err}");
        assert!(SourceManifest::from_text("series = \"6.1\"\n")
            .unwrap_err()
            .contains("no suite"));
    }

    #[test]
    fn package_and_tree_names() {
        let deps = ["linux-source-6.1", "xz-utils"];
        assert_eq!(
            versioned_package(deps.into_iter()).as_deref(),
            Some("linux-source-6.1")
        );
        assert_eq!(versioned_package(["linux-source-x"].into_iter()), None);
        assert_eq!(
            tree_name(Path::new("/s/usr/src/linux-source-6.12.tar.xz")).as_deref(),
            Some("linux-source-6.12")
        );
        assert_eq!(tree_name(Path::new("/s/other.tar.xz")), None);
    }

    #[test]
    fn lookup_reuses_a_complete_entry_only() {
        let t = TempDir::new("source");
        let cache = Cache::at(t.path());
        assert!(lookup(&cache, Series::V6_1).unwrap().is_none());
        let entry = entry_dir(&cache, Series::V6_1);
        std::fs::create_dir_all(entry.join("linux-source-6.1")).unwrap();
        std::fs::write(entry.join(MANIFEST), manifest().to_text()).unwrap();
        let err = lookup(&cache, Series::V6_1).unwrap_err().to_string();
        assert!(err.contains("Makefile is missing"), "{err}");
        std::fs::write(entry.join("linux-source-6.1/Makefile"), "").unwrap();
        let tree = lookup(&cache, Series::V6_1).unwrap().unwrap();
        assert_eq!(tree.dir, entry.join("linux-source-6.1"));
        assert_eq!(tree.manifest.version, "6.1.176-1");
    }
}

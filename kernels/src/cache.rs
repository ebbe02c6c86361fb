//! The kernel cache: one directory per fetched Debian series.
//!
//! Layout under the cache root (`$KESTREL_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/kestrel`, else `~/.cache/kestrel`):
//!
//! ```text
//! kernels/debian-<series>/manifest    key = "value" lines (see Manifest)
//! kernels/debian-<series>/root/       the unpacked packages
//! kernels/.staging-debian-<series>-<pid>/   a fetch in progress
//! kernels/.lock-debian-<series>       pid of the process fetching
//! apt/<suite>/                        private apt configuration and lists
//! ```
//!
//! Invariant: an entry directory appears only by `rename` of a complete
//! staging directory whose manifest was written last, so an entry either
//! exists whole or not at all. Manifest paths are relative to the entry, so
//! the cache can move.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::Series;
use crate::Kernel;

const MANIFEST: &str = "manifest";
const ENTRY_PREFIX: &str = "debian-";
const STAGING_PREFIX: &str = ".staging-";
const LOCK_PREFIX: &str = ".lock-";

/// The cache root.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache the environment names (it need not exist yet).
    pub fn from_env() -> Result<Cache> {
        let var = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = var("KESTREL_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kestrel")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("kestrel")))
            .ok_or(Error::NoCacheDir)?;
        Ok(Cache { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }

    /// Where the entry for `series` lives (whether or not it exists).
    pub fn entry_dir(&self, series: Series) -> PathBuf {
        self.kernels_dir().join(entry_name(series))
    }

    /// The private apt state for one suite.
    pub fn apt_dir(&self, suite: &str) -> PathBuf {
        self.root.join("apt").join(suite)
    }

    /// The cached kernel of `series`, if there is one.
    pub fn lookup(&self, series: Series) -> Result<Option<CachedKernel>> {
        let dir = self.entry_dir(series);
        if !dir.exists() {
            return Ok(None);
        }
        CachedKernel::load(&dir).map(Some)
    }

    /// Every cached kernel, by series. Staging and lock files are not listed.
    pub fn list(&self) -> Result<Vec<CachedKernel>> {
        let dir = self.kernels_dir();
        let read = match std::fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", dir, e)),
        };
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(ENTRY_PREFIX) {
                out.push(CachedKernel::load(&entry.path())?);
            }
        }
        out.sort_by_key(|k| k.manifest.series);
        Ok(out)
    }

    /// A fresh staging directory for `series`; stale ones are removed (the
    /// caller holds the series lock, so none of them is live).
    pub(crate) fn new_staging(&self, series: Series) -> Result<PathBuf> {
        let kernels = self.kernels_dir();
        let prefix = format!("{STAGING_PREFIX}{}-", entry_name(series));
        if let Ok(read) = std::fs::read_dir(&kernels) {
            for e in read.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_dir_all(&e.path())?;
                }
            }
        }
        let dir = kernels.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        Ok(dir)
    }

    /// Turns a complete staging directory into the entry for its series.
    pub(crate) fn commit(&self, staging: &Path, manifest: &Manifest) -> Result<CachedKernel> {
        let path = staging.join(MANIFEST);
        write_synced(&path, manifest.to_text().as_bytes())?;
        let dir = self.entry_dir(manifest.series);
        std::fs::rename(staging, &dir).map_err(|e| Error::io("move into place", &dir, e))?;
        CachedKernel::load(&dir)
    }

    /// Takes the per-series fetch lock; a lock left by a dead process is
    /// taken over.
    pub(crate) fn lock(&self, series: Series) -> Result<SeriesLock> {
        lock_in(
            &self.kernels_dir(),
            &entry_name(series),
            &format!("debian:{series}"),
        )
    }

    /// Where unpacked kernel sources live (`kernel source`).
    pub fn sources_dir(&self) -> PathBuf {
        self.root.join("sources")
    }
}

/// Takes the lock `<dir>/.lock-<name>` (`what` names it in messages),
/// waiting for another process that holds it. The lock is an `flock` on the
/// file, so a process that dies (even by SIGKILL) releases it: there are no
/// stale locks, and no window in which a fresh one looks stale. The file
/// stays (removing it would let two processes lock different inodes); it
/// holds the pid of the last holder, for the waiting message.
pub(crate) fn lock_in(dir: &Path, name: &str, what: &str) -> Result<SeriesLock> {
    take_lock(dir, name, what, false)?
}

/// [`lock_in`] without waiting: `Error::Busy` when another holder has it.
#[cfg(test)]
pub(crate) fn try_lock_in(dir: &Path, name: &str, what: &str) -> Result<SeriesLock> {
    take_lock(dir, name, what, true)?
}

fn take_lock(dir: &Path, name: &str, what: &str, no_wait: bool) -> Result<Result<SeriesLock>> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let path = dir.join(format!("{LOCK_PREFIX}{name}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("create", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = pid.trim().to_owned();
            if no_wait {
                return Ok(Err(Error::Busy {
                    what: what.to_owned(),
                    pid,
                    lock: path,
                }));
            }
            eprintln!("kernel: waiting for another fetch of {what} (pid {pid}) to finish");
            file.lock().map_err(|e| Error::io("lock", &path, e))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| Error::io("write", &path, e))?;
    Ok(Ok(SeriesLock { _file: file }))
}

fn entry_name(series: Series) -> String {
    format!("{ENTRY_PREFIX}{}", series.name())
}

/// Held while one process fetches one series; closing the file releases
/// the `flock`.
#[derive(Debug)]
pub(crate) struct SeriesLock {
    _file: std::fs::File,
}

pub(crate) fn remove_dir_all(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

/// One package that went into an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    /// Download size in bytes.
    pub size: u64,
}

/// What an entry holds. Stored as `key = "value"` lines; `package` repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub series: Series,
    pub suite: String,
    /// The mirror URIs the packages came from.
    pub mirror: String,
    pub packages: Vec<PackageRef>,
    pub release: String,
    /// Paths relative to the entry directory.
    pub image: PathBuf,
    pub config: Option<PathBuf>,
    pub modules_dir: Option<PathBuf>,
    /// RFC 3339, UTC.
    pub fetched_at: String,
    pub download_bytes: u64,
    pub unpacked_bytes: u64,
}

impl Manifest {
    pub fn to_text(&self) -> String {
        let mut out = String::from("# Kestrel kernel cache entry\n");
        let mut put = |k: &str, v: &str| {
            let _ = writeln!(out, "{k} = \"{}\"", escape(v));
        };
        put("series", self.series.name());
        put("suite", &self.suite);
        put("mirror", &self.mirror);
        for p in &self.packages {
            put("package", &format!("{} {} {}", p.name, p.version, p.size));
        }
        put("release", &self.release);
        put("image", &self.image.to_string_lossy());
        if let Some(c) = &self.config {
            put("config", &c.to_string_lossy());
        }
        if let Some(m) = &self.modules_dir {
            put("modules_dir", &m.to_string_lossy());
        }
        put("fetched_at", &self.fetched_at);
        put("download_bytes", &self.download_bytes.to_string());
        put("unpacked_bytes", &self.unpacked_bytes.to_string());
        out
    }

    /// Parses manifest text; the error names the offending line or key.
    pub fn from_text(text: &str) -> Result<Manifest, String> {
        let mut series = None;
        let mut suite = None;
        let mut mirror = String::new();
        let mut packages = Vec::new();
        let mut release = None;
        let mut image = None;
        let mut config = None;
        let mut modules_dir = None;
        let mut fetched_at = String::new();
        let mut download_bytes = 0;
        let mut unpacked_bytes = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {} is not `key = \"value\"`", n + 1);
            let (key, value) = line.split_once('=').ok_or_else(bad)?;
            let value = unescape(value.trim()).ok_or_else(bad)?;
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{key} is not a number"))
            };
            match key.trim() {
                "series" => series = Some(Series::parse(&value).map_err(|e| e.to_string())?),
                "suite" => suite = Some(value),
                "mirror" => mirror = value,
                "package" => {
                    let mut w = value.split_whitespace();
                    let (Some(name), Some(version), size) = (w.next(), w.next(), w.next()) else {
                        return Err(format!("package `{value}` is not `name version size`"));
                    };
                    packages.push(PackageRef {
                        name: name.to_owned(),
                        version: version.to_owned(),
                        size: size.map(number).transpose()?.unwrap_or(0),
                    });
                }
                "release" => release = Some(value),
                "image" => image = Some(relative(&value)?),
                "config" => config = Some(relative(&value)?),
                "modules_dir" => modules_dir = Some(relative(&value)?),
                "fetched_at" => fetched_at = value,
                "download_bytes" => download_bytes = number(&value)?,
                "unpacked_bytes" => unpacked_bytes = number(&value)?,
                _ => {} // Unknown keys come from newer versions; ignore them.
            }
        }
        let need = |what: &str| format!("no {what}");
        Ok(Manifest {
            series: series.ok_or_else(|| need("series"))?,
            suite: suite.ok_or_else(|| need("suite"))?,
            mirror,
            packages,
            release: release.ok_or_else(|| need("release"))?,
            image: image.ok_or_else(|| need("image"))?,
            config,
            modules_dir,
            fetched_at,
            download_bytes,
            unpacked_bytes,
        })
    }
}

/// A manifest path must stay inside its entry.
fn relative(value: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(value);
    let inside = p.components().all(|c| matches!(c, Component::Normal(_)));
    if inside && !value.is_empty() {
        Ok(p)
    } else {
        Err(format!("path `{value}` leaves the entry"))
    }
}

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn unescape(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                c @ ('\\' | '"') => out.push(c),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A loaded cache entry.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl CachedKernel {
    /// Loads and checks an entry: its manifest parses and its image exists.
    pub fn load(dir: &Path) -> Result<CachedKernel> {
        let damaged = |reason: String| Error::BadCacheEntry {
            dir: dir.to_owned(),
            reason,
        };
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| damaged(format!("manifest: {e}")))?;
        let manifest = Manifest::from_text(&text).map_err(|r| damaged(format!("manifest: {r}")))?;
        if !dir.join(&manifest.image).is_file() {
            return Err(damaged(format!("{} is missing", manifest.image.display())));
        }
        Ok(CachedKernel {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// The entry as a bootable kernel, with absolute paths.
    pub fn kernel(&self) -> Result<Kernel> {
        let m = &self.manifest;
        let image = self.dir.join(&m.image);
        let info = crate::image::inspect(&image)?;
        let version = m
            .packages
            .iter()
            .map(|p| p.version.as_str())
            .next()
            .unwrap_or("?");
        Ok(Kernel {
            release: m.release.clone(),
            format: info.format,
            image,
            config: m.config.as_ref().map(|c| self.dir.join(c)),
            modules_dir: m.modules_dir.as_ref().map(|d| self.dir.join(d)),
            origin: format!("debian:{} ({} {version})", m.series, m.suite),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            series: Series::V7_2,
            suite: "sid".into(),
            mirror: "http://deb.debian.org/debian".into(),
            packages: vec![
                PackageRef {
                    name: "linux-image-cloud-amd64".into(),
                    version: "7.2.13-1".into(),
                    size: 1708,
                },
                PackageRef {
                    name: "linux-binary-7.2.13+deb14-cloud-amd64".into(),
                    version: "7.2.13-1".into(),
                    size: 13717736,
                },
            ],
            release: "7.2.13+deb14-cloud-amd64".into(),
            image: "root/usr/lib/modules/7.2.13+deb14-cloud-amd64/vmlinuz".into(),
            config: Some("root/usr/lib/modules/7.2.13+deb14-cloud-amd64/config".into()),
            modules_dir: None,
            fetched_at: "2026-11-01T10:00:00Z".into(),
            download_bytes: 37_590_000,
            unpacked_bytes: 41_000_000,
        }
    }

    #[test]
    fn manifest_round_trip() {
        let m = sample();
        let text = m.to_text();
        assert_eq!(Manifest::from_text(&text).unwrap(), m);
        let mut odd = m.clone();
        odd.mirror = "a \"quoted\" \\ mirror".into();
        assert_eq!(Manifest::from_text(&odd.to_text()).unwrap(), odd);
    }

    #[test]
    fn manifest_rejects_bad_text() {
        assert!(Manifest::from_text("series = 6.1\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(Manifest::from_text("series = \"9.9\"\n").is_err());
        let escape = sample().to_text().replace("root/usr", "../usr");
        assert!(Manifest::from_text(&escape).unwrap_err().contains("leaves"));
        let abs = sample().to_text().replace("\"root/usr", "\"/usr");
        assert!(Manifest::from_text(&abs).is_err());
        let partial = "series = \"6.1\"\nsuite = \"bookworm\"\n";
        assert!(Manifest::from_text(partial)
            .unwrap_err()
            .contains("release"));
    }

    #[test]
    fn commit_list_lookup_and_damage() {
        let tmp = TempDir::new("cache");
        let cache = Cache::at(tmp.path());
        assert!(cache.list().unwrap().is_empty());
        assert!(cache.lookup(Series::V7_2).unwrap().is_none());

        let lock = cache.lock(Series::V7_2).unwrap();
        let busy = try_lock_in(&cache.kernels_dir(), "debian-7.2", "debian:7.2");
        assert!(matches!(busy, Err(Error::Busy { .. })));
        let staging = cache.new_staging(Series::V7_2).unwrap();
        let m = sample();
        let image = staging.join(&m.image);
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        std::fs::write(
            &image,
            crate::image::tests::fake_bzimage(0x020f, &m.release),
        )
        .unwrap();
        let entry = cache.commit(&staging, &m).unwrap();
        drop(lock);
        assert!(!staging.exists());
        assert_eq!(entry.dir, cache.entry_dir(Series::V7_2));

        let listed = cache.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].manifest, m);
        let k = cache
            .lookup(Series::V7_2)
            .unwrap()
            .unwrap()
            .kernel()
            .unwrap();
        assert_eq!(k.image, cache.entry_dir(Series::V7_2).join(&m.image));
        assert_eq!(k.release, m.release);

        // A stale staging directory is swept by the next fetch, never listed.
        let _lock = cache.lock(Series::V6_1).unwrap();
        let stale = cache.kernels_dir().join(".staging-debian-6.1-1");
        std::fs::create_dir_all(&stale).unwrap();
        assert_eq!(cache.list().unwrap().len(), 1);
        let fresh = cache.new_staging(Series::V6_1).unwrap();
        assert!(!stale.exists() && fresh.exists());

        std::fs::remove_file(cache.entry_dir(Series::V7_2).join(&m.image)).unwrap();
        let msg = cache.lookup(Series::V7_2).unwrap_err().to_string();
        assert!(
            msg.contains("damaged") && msg.contains("delete it"),
            "{msg}"
        );
    }

    #[test]
    fn a_lock_file_nobody_holds_is_free() {
        let tmp = TempDir::new("lock");
        let cache = Cache::at(tmp.path());
        std::fs::create_dir_all(cache.kernels_dir()).unwrap();
        // What a killed process leaves: the file, with no flock on it.
        std::fs::write(cache.kernels_dir().join(".lock-debian-5.10"), "123456").unwrap();
        let lock = cache.lock(Series::V5_10).unwrap();
        let pid = std::fs::read_to_string(cache.kernels_dir().join(".lock-debian-5.10")).unwrap();
        assert_eq!(pid, std::process::id().to_string());
        drop(lock);
        assert!(cache.lock(Series::V5_10).is_ok(), "released on drop");
    }

    #[test]
    fn a_second_fetch_waits_for_the_first() {
        let tmp = TempDir::new("lock-wait");
        let dir = tmp.path().to_path_buf();
        let first = lock_in(&dir, "x", "x").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn({
            let dir = dir.clone();
            move || {
                let lock = lock_in(&dir, "x", "x").unwrap();
                tx.send(()).unwrap();
                drop(lock);
            }
        });
        // Whatever the waiter has done so far, it cannot hold the lock yet.
        assert!(rx.try_recv().is_err());
        drop(first);
        rx.recv().expect("the waiter gets the lock once it is free");
        waiter.join().unwrap();
    }
}

//! Fetching a Debian kernel through apt, without installing anything.
//!
//! The only module that runs apt or dpkg. A private apt configuration per
//! suite (`<cache>/apt/<suite>/`) points at the system's own Debian mirror
//! with only that suite; verification stays on with the system's trusted
//! keys. Packages are chosen by following `linux-image-cloud-amd64`'s
//! dependencies within the flavour (`*-cloud-amd64`), downloaded with
//! `apt-get download`, unpacked with `dpkg-deb -x` (no root), located by
//! content ([`crate::layout`]) and moved into the cache in one rename.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Instant, SystemTime};

use crate::cache::{remove_dir_all, Cache, CachedKernel, Manifest, PackageRef};
use crate::error::{Error, Result};
use crate::layout::resolve_tree;
use crate::sources::{debian_mirrors, private_sources, read_system_sources, Mirror};
use crate::spec::Series;

/// The meta package every series has; its dependencies lead to the kernel.
const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Dependencies followed from the meta package end in this.
const FLAVOUR_SUFFIX: &str = "-cloud-amd64";
/// Guards the dependency walk against a runaway graph.
const MAX_PACKAGES: usize = 16;
pub(crate) const ETC_APT: &str = "/etc/apt";

pub(crate) fn progress(msg: impl std::fmt::Display) {
    eprintln!("kernel: {msg}");
}

/// Fetches `series` into the cache (the caller found it missing).
pub(crate) fn fetch(cache: &Cache, series: Series) -> Result<CachedKernel> {
    let started = Instant::now();
    let (tools, mirrors) = system_apt()?;
    let _lock = cache.lock(series)?;
    // Another process may have finished the same fetch while we waited.
    if let Some(entry) = cache.lookup(series)? {
        return Ok(entry);
    }
    let suite = series.suite();
    let apt = PrivateApt::create(cache, suite, &mirrors, tools)?;
    progress(format_args!(
        "updating the {suite} package index from {}",
        apt.uris
    ));
    apt.update()?;

    let packages = apt.resolve_packages()?;
    let total: u64 = packages.iter().map(|p| p.size).sum();
    progress(format_args!(
        "downloading {} packages, {}:",
        packages.len(),
        human(total)
    ));
    for p in &packages {
        progress(format_args!(
            "  {} {} ({})",
            p.name,
            p.version,
            human(p.size)
        ));
    }
    let staging = cache.new_staging(series)?;
    let result = fill_staging(&apt, &staging, &packages, series, total, started)
        .and_then(|manifest| cache.commit(&staging, &manifest));
    if result.is_err() {
        let _ = remove_dir_all(&staging);
    }
    let entry = result?;
    progress(format_args!(
        "cached debian:{series} ({}) in {}: {} downloaded, {} unpacked, {:.1} s",
        entry.manifest.release,
        entry.dir.display(),
        human(entry.manifest.download_bytes),
        human(entry.manifest.unpacked_bytes),
        started.elapsed().as_secs_f64()
    ));
    Ok(entry)
}

fn fill_staging(
    apt: &PrivateApt,
    staging: &Path,
    packages: &[PackageRef],
    series: Series,
    total: u64,
    started: Instant,
) -> Result<Manifest> {
    let debs = staging.join("debs");
    let root = staging.join("root");
    for d in [&debs, &root] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    apt.download(packages, &debs)?;
    progress(format_args!(
        "downloaded in {:.1} s; unpacking",
        started.elapsed().as_secs_f64()
    ));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(|e| Error::io("read directory", &debs, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    if files.len() != packages.len() {
        return Err(Error::AptFailed {
            command: "apt-get download".into(),
            status: "incomplete".into(),
            detail: format!("{} of {} packages arrived", files.len(), packages.len()),
        });
    }
    for deb in &files {
        apt.unpack(deb, &root)?;
    }
    remove_dir_all(&debs)?;

    let spec = format!("debian:{series}");
    let layout =
        resolve_tree(&root).map_err(|reason| Error::LayoutUnrecognised { spec, reason })?;
    let rel = |p: &Path| p.strip_prefix(staging).map(Path::to_path_buf).ok();
    let image = rel(&layout.image).ok_or_else(|| Error::LayoutUnrecognised {
        spec: format!("debian:{series}"),
        reason: "the image lies outside the unpacked tree".into(),
    })?;
    Ok(Manifest {
        series,
        suite: series.suite().to_owned(),
        mirror: apt.uris.clone(),
        packages: packages.to_vec(),
        release: layout.release,
        image,
        config: layout.config.as_deref().and_then(rel),
        modules_dir: layout.modules_dir.as_deref().and_then(rel),
        fetched_at: rfc3339_utc(SystemTime::now()),
        download_bytes: total,
        unpacked_bytes: dir_size(&root),
    })
}

/// apt's programs and the system's Debian mirrors (never a hard-coded
/// host), or one sentence on why apt cannot be used here.
pub(crate) fn system_apt() -> Result<(Tools, Vec<Mirror>)> {
    let tools = Tools::find()?;
    let mirrors = debian_mirrors(&read_system_sources(Path::new(ETC_APT))?);
    if mirrors.is_empty() {
        return Err(Error::NoMirror {
            searched: format!("{ETC_APT}/sources.list, {ETC_APT}/sources.list.d/"),
        });
    }
    Ok((tools, mirrors))
}

/// The external programs a fetch needs.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    apt_get: PathBuf,
    apt_cache: PathBuf,
    dpkg_deb: PathBuf,
}

impl Tools {
    pub(crate) fn find() -> Result<Tools> {
        let find = |tool: &'static str| find_in_path(tool).ok_or(Error::AptMissing { tool });
        Ok(Tools {
            apt_get: find("apt-get")?,
            apt_cache: find("apt-cache")?,
            dpkg_deb: find("dpkg-deb")?,
        })
    }
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// apt pointed at one suite of the system's mirror, with private state.
pub(crate) struct PrivateApt {
    tools: Tools,
    dir: PathBuf,
    suite: &'static str,
    /// The mirror URIs, space-separated, for messages and the manifest.
    pub(crate) uris: String,
}

impl PrivateApt {
    pub(crate) fn create(
        cache: &Cache,
        suite: &'static str,
        mirrors: &[Mirror],
        tools: Tools,
    ) -> Result<PrivateApt> {
        let dir = cache.apt_dir(suite);
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
        }
        let list = dir.join("kestrel.sources");
        std::fs::write(&list, private_sources(mirrors, suite))
            .map_err(|e| Error::io("write", &list, e))?;
        let uris = mirrors
            .iter()
            .flat_map(|m| m.uris.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(PrivateApt {
            tools,
            dir,
            suite,
            uris,
        })
    }

    /// `-o` options that confine apt to the private state. The host's
    /// dpkg status is hidden so installed packages do not sway choices.
    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        [
            format!("Dir::Etc::SourceList={d}/kestrel.sources"),
            "Dir::Etc::SourceParts=/dev/null".into(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            "Dir::State::status=/dev/null".into(),
            "Debug::NoLocking=1".into(),
            "APT::Architecture=amd64".into(),
            "APT::Architectures=amd64".into(),
            "Acquire::Languages=none".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect()
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.args(self.options())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn update(&self) -> Result<()> {
        let mut cmd = self.command(&self.tools.apt_get);
        cmd.args(["-q", "update"]);
        let out = output(&mut cmd, "apt-get update")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let signature = stderr.lines().find(|l| {
            [
                "NO_PUBKEY",
                "is not signed",
                "EXPKEYSIG",
                "GPG error",
                "KEYEXPIRED",
            ]
            .iter()
            .any(|m| l.contains(m))
        });
        if let Some(line) = signature {
            return Err(Error::AptSignature {
                suite: self.suite.to_owned(),
                uris: self.uris.clone(),
                detail: line.trim_start_matches("W: ").trim().to_owned(),
            });
        }
        let fetch_failed =
            stderr.contains("Failed to fetch") || stderr.contains("failed to download");
        if !out.status.success() || fetch_failed {
            return Err(apt_failed("apt-get update", &out));
        }
        Ok(())
    }

    /// The candidate stanza of one package, or `None` if the index lacks it.
    pub(crate) fn show(&self, package: &str) -> Result<Option<Stanza>> {
        let mut cmd = self.command(&self.tools.apt_cache);
        cmd.args(["show", "--no-all-versions", package]);
        let out = output(&mut cmd, "apt-cache show")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No packages found") || stderr.contains("Unable to locate") {
                return Ok(None);
            }
            return Err(apt_failed("apt-cache show", &out));
        }
        Ok(Stanza::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// The meta package and every dependency within the flavour, in
    /// breadth-first order.
    fn resolve_packages(&self) -> Result<Vec<PackageRef>> {
        let mut queue = VecDeque::from([META_PACKAGE.to_owned()]);
        let mut seen = vec![META_PACKAGE.to_owned()];
        let mut out = Vec::new();
        while let Some(name) = queue.pop_front() {
            let stanza = self.show(&name)?.ok_or_else(|| Error::PackageMissing {
                package: name.clone(),
                suite: self.suite.to_owned(),
                uris: self.uris.clone(),
            })?;
            for dep in stanza.flavour_deps() {
                if !seen.contains(&dep) && seen.len() < MAX_PACKAGES {
                    seen.push(dep.clone());
                    queue.push_back(dep);
                }
            }
            out.push(PackageRef {
                name,
                version: stanza.version,
                size: stanza.size,
            });
        }
        Ok(out)
    }

    pub(crate) fn download(&self, packages: &[PackageRef], into: &Path) -> Result<()> {
        let mut cmd = self.command(&self.tools.apt_get);
        cmd.args(["-q", "download"])
            .args(packages.iter().map(|p| format!("{}={}", p.name, p.version)))
            .current_dir(into);
        let out = output(&mut cmd, "apt-get download")?;
        if !out.status.success() {
            return Err(apt_failed("apt-get download", &out));
        }
        Ok(())
    }

    pub(crate) fn unpack(&self, deb: &Path, root: &Path) -> Result<()> {
        let mut cmd = Command::new(&self.tools.dpkg_deb);
        cmd.arg("-x").arg(deb).arg(root).stdin(Stdio::null());
        let out = output(&mut cmd, "dpkg-deb -x")?;
        if !out.status.success() {
            return Err(apt_failed(&format!("dpkg-deb -x {}", deb.display()), &out));
        }
        Ok(())
    }
}

pub(crate) fn output(cmd: &mut Command, label: &str) -> Result<Output> {
    cmd.output().map_err(|e| Error::io("run", label, e))
}

/// The `E:`/`W:` lines of a failed apt run (else its last lines).
pub(crate) fn apt_failed(command: &str, out: &Output) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("E:") || (l.starts_with("W:") && !l.contains("unsandboxed")))
        .collect();
    if lines.is_empty() {
        lines = stderr.lines().rev().take(3).collect();
        lines.reverse();
    }
    Error::AptFailed {
        command: command.to_owned(),
        status: out.status.to_string(),
        detail: lines.join(" / "),
    }
}

/// The fields of an `apt-cache show` stanza that a fetch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub(crate) version: String,
    pub(crate) size: u64,
    /// `Depends` and `Pre-Depends`: groups of alternatives, names only.
    depends: Vec<Vec<String>>,
}

impl Stanza {
    /// The first stanza in `apt-cache show` output.
    fn parse(text: &str) -> Option<Stanza> {
        let mut version = None;
        let mut size = 0;
        let mut depends = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                break;
            }
            let Some((key, value)) = line.split_once(": ") else {
                continue;
            };
            match key {
                "Version" => version = Some(value.trim().to_owned()),
                "Size" => size = value.trim().parse().unwrap_or(0),
                "Depends" | "Pre-Depends" => depends.extend(parse_depends(value)),
                _ => {}
            }
        }
        Some(Stanza {
            version: version?,
            size,
            depends,
        })
    }

    /// `Depends`/`Pre-Depends` as groups of alternatives, names only.
    pub(crate) fn dependency_groups(&self) -> &[Vec<String>] {
        &self.depends
    }

    /// Every package named in `Depends`/`Pre-Depends`, alternatives included.
    pub(crate) fn dependency_names(&self) -> impl Iterator<Item = &str> {
        self.depends.iter().flatten().map(String::as_str)
    }

    /// Dependencies of the same kernel flavour (not `kmod`, `linux-base`,
    /// initramfs tools): any alternative named `linux-*-cloud-amd64`.
    fn flavour_deps(&self) -> Vec<String> {
        self.depends
            .iter()
            .flatten()
            .filter(|n| n.starts_with("linux-") && n.ends_with(FLAVOUR_SUFFIX))
            .cloned()
            .collect()
    }
}

/// `a (>= 1), b | c:any` → `[[a], [b, c]]`.
fn parse_depends(value: &str) -> Vec<Vec<String>> {
    value
        .split(',')
        .map(|group| {
            group
                .split('|')
                .filter_map(|alt| alt.split_whitespace().next())
                .map(|n| n.split(':').next().unwrap_or(n).to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

pub(crate) fn dir_size(dir: &Path) -> u64 {
    let Ok(read) = std::fs::read_dir(dir) else {
        return 0;
    };
    read.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Bytes as apt shows them: decimal kB/MB.
pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// `2026-11-01T10:00:00Z`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_and_flavour_walk() {
        let sid_image = "\
Package: linux-image-7.2.13+deb14-cloud-amd64
Source: linux-signed-amd64 (7.2.13+1)
Version: 7.2.13-1
Installed-Size: 15
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Pre-Depends: linux-base (>= 4.17~)
Description: Linux 7.2.13 for x86-64 cloud
 continuation: not a field
Size: 1916

Package: other-stanza
Version: 0
";
        let s = Stanza::parse(sid_image).unwrap();
        assert_eq!(s.version, "7.2.13-1");
        assert_eq!(s.size, 1916);
        assert_eq!(
            s.flavour_deps(),
            [
                "linux-base-7.2.13+deb14-cloud-amd64",
                "linux-binary-7.2.13+deb14-cloud-amd64",
                "linux-modules-7.2.13+deb14-cloud-amd64"
            ]
        );
        let bookworm = "Package: linux-image-6.1.0-50-cloud-amd64\nVersion: 6.1.176-1\nDepends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\nSize: 26484304\n";
        assert!(Stanza::parse(bookworm).unwrap().flavour_deps().is_empty());
        assert_eq!(Stanza::parse("Package: x\n"), None);
    }

    #[test]
    fn depends_syntax() {
        assert_eq!(
            parse_depends("a (>= 1), b | c:any,  d [amd64]"),
            [vec!["a"], vec!["b", "c"], vec!["d"]]
        );
    }

    #[test]
    fn dates_and_sizes() {
        assert_eq!(rfc3339_utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339_utc(t), "2024-02-29T12:34:56Z");
        assert_eq!(human(26_484_304), "26.5 MB");
        assert_eq!(human(1500), "1.5 kB");
    }

    #[test]
    fn path_lookup() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-tool-kestrel").is_none());
    }
}

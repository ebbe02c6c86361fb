//! Debian tool packages (QEMU from backports, for the rig) unpacked into the
//! cache, never installed.
//!
//! The rig needs a newer QEMU than Debian 12 ships (ARCHITECTURE.md, "The
//! nested rig": QEMU 7.2's nested SVM corrupts L2 guests with two vCPUs).
//! The packages come from the
//! system's own Debian mirror, through the same private apt state as the
//! kernels ([`crate::apt`]), and are unpacked with `dpkg-deb -x` into
//! `<cache>/tools/<suite>/<name>/root/`. Their shared libraries come from
//! the host; the caller checks that the unpacked binary runs.
//!
//! Invariants: an entry is complete once its `manifest` exists (written
//! last, after one rename of the staging directory); all packages of one
//! entry have the same version, so a partial upgrade can never mix them.
//! The entry's `depends` file (inside the renamed directory, so never
//! half-written in a complete entry) lists what the packages need from the
//! host: their `Depends` outside the set, one group of alternatives per
//! line, for the caller to install from the host's own suite — never the
//! set's own packages, so nothing the user has is replaced.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::apt::{self, PrivateApt};
use crate::cache::{lock_in, remove_dir_all, Cache, PackageRef};
use crate::error::{Error, Result};

/// Packages unpacked together into one cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSet {
    /// Entry name (`qemu`).
    pub name: &'static str,
    /// Packages, all of the same source version; the first one names it.
    pub packages: &'static [&'static str],
}

/// An unpacked tool set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedTools {
    /// The unpacked tree (`…/root`, holding `usr/…`).
    pub root: PathBuf,
    /// The version of the packages.
    pub version: String,
    /// What the packages need from the host (`Depends` outside the set):
    /// groups of alternatives, names only.
    pub host_depends: Vec<Vec<String>>,
}

const MANIFEST: &str = "manifest";
const DEPENDS: &str = "depends";

/// One progress line on stderr (the kernel cache's lines say `kernel:`).
fn progress(msg: impl std::fmt::Display) {
    eprintln!("tools: {msg}");
}

/// The cache entry of `set` from `suite`, if complete.
pub fn lookup(cache: &Cache, suite: &str, set: ToolSet) -> Option<UnpackedTools> {
    let dir = entry_dir(cache, suite, set);
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let version = parse_manifest(&text, set)?;
    // An entry cached before `depends` was recorded is fetched again.
    let host_depends = parse_depends_file(&std::fs::read_to_string(dir.join(DEPENDS)).ok()?);
    Some(UnpackedTools {
        root: dir.join("root"),
        version,
        host_depends,
    })
}

/// The cached entry of `set`, else downloads its packages from `suite` and
/// unpacks them (progress on stderr).
pub fn fetch(cache: &Cache, suite: &'static str, set: ToolSet) -> Result<UnpackedTools> {
    if let Some(found) = lookup(cache, suite, set) {
        return Ok(found);
    }
    let started = Instant::now();
    let dir = entry_dir(cache, suite, set);
    let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let _lock = lock_in(&parent, set.name, &format!("the {} packages", set.name))?;
    if let Some(found) = lookup(cache, suite, set) {
        return Ok(found);
    }
    let (tools, mirrors) = apt::system_apt()?;
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
    // All at the first package's version: `apt-get download name=version`
    // then fails rather than mix versions.
    let mut refs: Vec<PackageRef> = Vec::new();
    let mut host_depends: Vec<Vec<String>> = Vec::new();
    for name in set.packages {
        let stanza = apt.show(name)?.ok_or_else(|| missing(name))?;
        for group in stanza.dependency_groups() {
            let outside = !group.iter().any(|n| set.packages.contains(&n.as_str()));
            if outside && !host_depends.contains(group) {
                host_depends.push(group.clone());
            }
        }
        let version = refs.first().map_or(stanza.version, |p| p.version.clone());
        refs.push(PackageRef {
            name: (*name).to_owned(),
            version,
            size: stanza.size,
        });
    }
    let version = refs[0].version.clone();
    let total: u64 = refs.iter().map(|p| p.size).sum();
    progress(format_args!(
        "downloading {} {} from {suite} ({}): {}",
        set.name,
        version,
        apt::human(total),
        set.packages.join(" ")
    ));
    let staging = parent.join(format!(".staging-{}-{}", set.name, std::process::id()));
    let result = fill(&apt, &staging, &refs).and_then(|()| {
        let depends = staging.join(DEPENDS);
        std::fs::write(&depends, render_depends_file(&host_depends))
            .map_err(|e| Error::io("write", &depends, e))?;
        if dir.exists() {
            remove_dir_all(&dir)?;
        }
        std::fs::rename(&staging, &dir).map_err(|e| Error::io("rename", &staging, e))?;
        let manifest = dir.join(MANIFEST);
        std::fs::write(&manifest, render_manifest(&refs))
            .map_err(|e| Error::io("write", &manifest, e))
    });
    if result.is_err() {
        let _ = remove_dir_all(&staging);
    }
    result?;
    progress(format_args!(
        "cached {} {} in {} ({:.1} s)",
        set.name,
        version,
        dir.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(UnpackedTools {
        root: dir.join("root"),
        version,
        host_depends,
    })
}

/// One group per line, alternatives joined by ` | `.
fn render_depends_file(groups: &[Vec<String>]) -> String {
    groups
        .iter()
        .map(|g| format!("{}\n", g.join(" | ")))
        .collect()
}

fn parse_depends_file(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

fn entry_dir(cache: &Cache, suite: &str, set: ToolSet) -> PathBuf {
    cache.root().join("tools").join(suite).join(set.name)
}

fn fill(apt: &PrivateApt, staging: &Path, refs: &[PackageRef]) -> Result<()> {
    if staging.exists() {
        remove_dir_all(staging)?;
    }
    let debs = staging.join("debs");
    let root = staging.join("root");
    for d in [&debs, &root] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    apt.download(refs, &debs)?;
    let files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(|e| Error::io("read directory", &debs, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    if files.len() != refs.len() {
        return Err(Error::AptFailed {
            command: "apt-get download".into(),
            status: "incomplete".into(),
            detail: format!("{} of {} packages arrived", files.len(), refs.len()),
        });
    }
    for deb in &files {
        apt.unpack(deb, &root)?;
    }
    remove_dir_all(&debs)
}

/// `package=version` lines, one per package.
fn render_manifest(refs: &[PackageRef]) -> String {
    refs.iter()
        .map(|p| format!("{}={}\n", p.name, p.version))
        .collect()
}

/// The version when the manifest lists every package of `set` at one version.
fn parse_manifest(text: &str, set: ToolSet) -> Option<String> {
    let mut version: Option<&str> = None;
    let mut seen = 0;
    for line in text.lines() {
        let (name, v) = line.split_once('=')?;
        if !set.packages.contains(&name) || version.is_some_and(|known| known != v) {
            return None;
        }
        version = Some(v);
        seen += 1;
    }
    (seen == set.packages.len()).then(|| version.map(str::to_owned))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: ToolSet = ToolSet {
        name: "qemu",
        packages: &["qemu-system-x86", "qemu-system-data"],
    };

    #[test]
    fn manifest_round_trip_and_rejects() {
        let refs = vec![
            PackageRef {
                name: "qemu-system-x86".into(),
                version: "1:10.0.2+ds-2".into(),
                size: 1,
            },
            PackageRef {
                name: "qemu-system-data".into(),
                version: "1:10.0.2+ds-2".into(),
                size: 2,
            },
        ];
        let text = render_manifest(&refs);
        assert_eq!(parse_manifest(&text, SET).as_deref(), Some("1:10.0.2+ds-2"));
        // A package missing, a stranger, or mixed versions: not an entry.
        assert_eq!(parse_manifest("qemu-system-x86=1\n", SET), None);
        assert_eq!(
            parse_manifest("qemu-system-x86=1\nqemu-system-data=1\nfoo=1\n", SET),
            None
        );
        assert_eq!(
            parse_manifest("qemu-system-x86=1\nqemu-system-data=2\n", SET),
            None
        );
        assert_eq!(parse_manifest("", SET), None);
    }

    #[test]
    fn lookup_needs_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        assert_eq!(lookup(&cache, "bookworm-backports", SET), None);
        let entry = entry_dir(&cache, "bookworm-backports", SET);
        std::fs::create_dir_all(entry.join("root")).unwrap();
        assert_eq!(lookup(&cache, "bookworm-backports", SET), None);
        std::fs::write(
            entry.join(MANIFEST),
            "qemu-system-x86=2\nqemu-system-data=2\n",
        )
        .unwrap();
        assert_eq!(lookup(&cache, "bookworm-backports", SET), None);
        std::fs::write(entry.join(DEPENDS), "").unwrap();
        let found = lookup(&cache, "bookworm-backports", SET).unwrap();
        assert_eq!(found.version, "2");
        assert_eq!(found.root, entry.join("root"));
    }

    #[test]
    fn host_depends_round_trip_through_the_entry() {
        let groups = vec![
            vec!["libslirp0".to_owned()],
            vec!["seabios".to_owned()],
            vec!["libfoo".to_owned(), "libbar".to_owned()],
        ];
        assert_eq!(parse_depends_file(&render_depends_file(&groups)), groups);
        assert!(parse_depends_file("\n \n").is_empty());

        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let entry = entry_dir(&cache, "bookworm-backports", SET);
        std::fs::create_dir_all(entry.join("root")).unwrap();
        std::fs::write(
            entry.join(MANIFEST),
            "qemu-system-x86=2\nqemu-system-data=2\n",
        )
        .unwrap();
        // An entry cached before `depends` was recorded is not complete.
        assert_eq!(lookup(&cache, "bookworm-backports", SET), None);
        std::fs::write(entry.join(DEPENDS), render_depends_file(&groups)).unwrap();
        assert_eq!(
            lookup(&cache, "bookworm-backports", SET)
                .unwrap()
                .host_depends,
            groups
        );
    }
}

//! The system's apt sources, and the Debian mirror picked from them.
//!
//! Reads both the one-line format (`sources.list`, `*.list`) and deb822
//! (`*.sources`). The mirror is whichever enabled `deb` entry serves a Debian
//! archive suite (a codename, maybe with `-updates`/`-backports`); security
//! entries (`*-security`, `*/updates`) and third-party suites are never
//! used. No mirror host is ever assumed: without such an entry there is no
//! mirror.

use std::path::Path;

use crate::error::{Error, Result};

/// Suites of the Debian archive proper, by codename or alias.
const ARCHIVE_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];
const ARCHIVE_SUFFIXES: &[&str] = &["-updates", "-backports", "-proposed-updates"];

/// One source entry, from either format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceEntry {
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `Signed-By` / `signed-by=`, verbatim (a deb822 value may be a
    /// multi-line embedded key, kept with its continuation lines).
    pub signed_by: Option<String>,
    /// `Trusted: yes` / `trusted=yes`: the system's own choice, carried over.
    pub trusted: bool,
    pub enabled: bool,
}

/// One-line format: `deb [opt=val …] URI SUITE COMPONENT…`.
pub fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    text.lines().filter_map(parse_one_line_entry).collect()
}

fn parse_one_line_entry(line: &str) -> Option<SourceEntry> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (kind, rest) = line.split_once(char::is_whitespace)?;
    if kind != "deb" && kind != "deb-src" {
        return None;
    }
    let mut rest = rest.trim_start();
    let mut entry = SourceEntry {
        types: vec![kind.to_owned()],
        enabled: true,
        ..SourceEntry::default()
    };
    if let Some(opts) = rest.strip_prefix('[') {
        let (opts, after) = opts.split_once(']')?;
        for opt in opts.split_whitespace() {
            match opt.split_once('=') {
                Some(("signed-by", v)) => entry.signed_by = Some(v.to_owned()),
                Some(("trusted", v)) => entry.trusted = v == "yes",
                _ => {}
            }
        }
        rest = after;
    }
    let mut words = rest.split_whitespace();
    entry.uris.push(words.next()?.to_owned());
    entry.suites.push(words.next()?.to_owned());
    entry.components = words.map(str::to_owned).collect();
    Some(entry)
}

/// deb822 format: paragraphs of `Field: value` separated by blank lines.
pub fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !fields.is_empty() {
                entries.push(deb822_entry(&fields));
                fields.clear();
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    entries
}

fn deb822_entry(fields: &[(String, String)]) -> SourceEntry {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let list = |name: &str| {
        get(name)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let yes = |name: &str, default: bool| {
        get(name).map_or(default, |v| {
            matches!(v.trim().to_ascii_lowercase().as_str(), "yes" | "true" | "1")
        })
    };
    SourceEntry {
        types: list("types"),
        uris: list("uris"),
        suites: list("suites"),
        components: list("components"),
        signed_by: get("signed-by").map(str::to_owned),
        trusted: yes("trusted", false),
        enabled: yes("enabled", true),
    }
}

/// Reads `sources.list`, `sources.list.d/*.list` and `*.sources` under an
/// apt configuration directory (`/etc/apt`); other files there are ignored,
/// as apt ignores them.
pub fn read_system_sources(etc_apt: &Path) -> Result<Vec<SourceEntry>> {
    let mut entries = Vec::new();
    let main = etc_apt.join("sources.list");
    if let Some(text) = read_optional(&main)? {
        entries.extend(parse_one_line(&text));
    }
    let parts = etc_apt.join("sources.list.d");
    let mut files: Vec<_> = match std::fs::read_dir(&parts) {
        Ok(dir) => dir.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read directory", parts, e)),
    };
    files.sort();
    for file in files {
        let ext = file.extension().and_then(|e| e.to_str());
        let parse = match ext {
            Some("list") => parse_one_line,
            Some("sources") => parse_deb822,
            _ => continue,
        };
        if let Some(text) = read_optional(&file)? {
            entries.extend(parse(&text));
        }
    }
    Ok(entries)
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// A Debian archive mirror: its URIs and how the system verifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uris: Vec<String>,
    pub signed_by: Option<String>,
    pub trusted: bool,
}

/// Whether a suite belongs to the Debian archive proper (not security, not a
/// third-party repository).
pub fn is_archive_suite(suite: &str) -> bool {
    let base = ARCHIVE_SUFFIXES
        .iter()
        .find_map(|s| suite.strip_suffix(s))
        .unwrap_or(suite);
    ARCHIVE_SUITES.contains(&base)
}

/// The Debian archive mirrors among the entries, in the order they appear;
/// entries verified the same way are merged, URIs deduplicated.
pub fn debian_mirrors(entries: &[SourceEntry]) -> Vec<Mirror> {
    let mut mirrors: Vec<Mirror> = Vec::new();
    let usable = entries.iter().filter(|e| {
        e.enabled
            && e.types.iter().any(|t| t == "deb")
            && e.suites.iter().any(|s| is_archive_suite(s))
    });
    for entry in usable {
        let uris = entry
            .uris
            .iter()
            .filter(|u| !u.starts_with("cdrom:"))
            .map(|u| u.trim_end_matches('/').to_owned());
        let at = mirrors
            .iter()
            .position(|m| m.signed_by == entry.signed_by && m.trusted == entry.trusted);
        let mirror = match at {
            Some(i) => &mut mirrors[i],
            None => {
                mirrors.push(Mirror {
                    uris: Vec::new(),
                    signed_by: entry.signed_by.clone(),
                    trusted: entry.trusted,
                });
                let last = mirrors.len() - 1;
                &mut mirrors[last]
            }
        };
        for uri in uris {
            if !mirror.uris.contains(&uri) {
                mirror.uris.push(uri);
            }
        }
    }
    mirrors.retain(|m| !m.uris.is_empty());
    mirrors
}

/// The private deb822 source list for one suite: `main` only, amd64 only,
/// and only the `Packages` index.
pub fn private_sources(mirrors: &[Mirror], suite: &str) -> String {
    let mut out = String::from("# Written by Kestrel: one Debian suite for fetching kernels.\n");
    for m in mirrors {
        out.push_str(&format!(
            "\nTypes: deb\nURIs: {}\nSuites: {suite}\nComponents: main\nArchitectures: amd64\nTargets: Packages\n",
            m.uris.join(" ")
        ));
        if let Some(key) = &m.signed_by {
            out.push_str(&format!("Signed-By: {key}\n"));
        }
        if m.trusted {
            out.push_str("Trusted: yes\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    #[test]
    fn one_line_forms() {
        let text = "\
# deb http://old.example/debian buster main
deb http://deb.debian.org/debian bookworm main contrib non-free-firmware
deb-src http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://mirror.example/debian/ trixie main # comment
deb [ trusted=yes ] file:/srv/mirror sid main

deb http://security.debian.org/debian-security bookworm-security main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
rpm http://x y z
deb broken-line-without-suite
";
        let e = parse_one_line(text);
        assert_eq!(e.len(), 6, "{e:#?}");
        assert_eq!(e[0].uris, ["http://deb.debian.org/debian"]);
        assert_eq!(e[0].components, ["main", "contrib", "non-free-firmware"]);
        assert_eq!(e[1].types, ["deb-src"]);
        assert_eq!(e[2].signed_by.as_deref(), Some("/usr/share/keyrings/x.gpg"));
        assert_eq!(e[2].uris, ["https://mirror.example/debian/"]);
        assert_eq!(e[2].suites, ["trixie"]);
        assert!(e[3].trusted);
        assert_eq!(e[3].suites, ["sid"]);
    }

    #[test]
    fn deb822_forms() {
        let text = format!(
            "\
Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian http://ftp.example.org/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: trixie
Components: main
Enabled: no

types: deb
uris: https://own.example/debian
suites: sid
components: main
signed-by:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEZ...
 -----END PGP PUBLIC KEY BLOCK-----
"
        );
        let e = parse_deb822(&text);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert_eq!(e[0].types, ["deb", "deb-src"]);
        assert_eq!(e[0].uris.len(), 2);
        assert_eq!(e[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(e[0].signed_by.as_deref(), Some(KEYRING));
        assert!(e[0].enabled && !e[2].enabled);
        let key = e[3].signed_by.as_deref().unwrap();
        assert!(
            key.starts_with("\n -----BEGIN PGP") && key.ends_with("BLOCK-----"),
            "{key:?}"
        );
    }

    #[test]
    fn mirror_choice_skips_security_third_party_disabled_and_src() {
        let mut entries = parse_deb822(&format!(
            "\
Types: deb-src
URIs: http://src-only.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian http://ftp.example.org/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}

Types: deb
URIs: http://disabled.example/debian
Suites: trixie
Enabled: no

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"
        ));
        entries.extend(parse_one_line(
            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian/ bookworm-backports main\n\
             deb http://security.debian.org/ buster/updates main\n\
             deb cdrom:[Debian 12]/ bookworm main\n",
        ));
        let m = debian_mirrors(&entries);
        assert_eq!(
            m,
            [Mirror {
                uris: vec![
                    "http://deb.debian.org/debian".into(),
                    "http://ftp.example.org/debian".into()
                ],
                signed_by: Some(KEYRING.into()),
                trusted: false,
            }]
        );
        let text = private_sources(&m, "sid");
        assert!(text.contains("URIs: http://deb.debian.org/debian http://ftp.example.org/debian\n"));
        assert!(
            text.contains("Suites: sid\n") && text.contains(&format!("Signed-By: {KEYRING}\n"))
        );
        assert!(!text.contains("security"));
    }

    #[test]
    fn no_mirror_without_archive_entries() {
        let entries =
            parse_one_line("deb http://deb.debian.org/debian-security bookworm-security main\n");
        assert!(debian_mirrors(&entries).is_empty());
        assert!(is_archive_suite("trixie-backports") && !is_archive_suite("trixie-security"));
    }

    #[test]
    fn system_directory_reading() {
        let dir = crate::testutil::TempDir::new("sources");
        let d = dir.path().join("sources.list.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "deb http://a.example/debian bookworm main\n",
        )
        .unwrap();
        std::fs::write(
            d.join("debian.sources"),
            "Types: deb\nURIs: http://b.example/debian\nSuites: trixie\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            d.join("x.list.disabled-by-farm"),
            "deb http://c.example/debian sid main\n",
        )
        .unwrap();
        let e = read_system_sources(dir.path()).unwrap();
        let uris: Vec<_> = e.iter().flat_map(|e| e.uris.clone()).collect();
        assert_eq!(uris, ["http://a.example/debian", "http://b.example/debian"]);
        assert!(read_system_sources(&dir.path().join("none"))
            .unwrap()
            .is_empty());
    }
}

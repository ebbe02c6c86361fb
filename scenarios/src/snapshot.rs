//! Stored snapshots in insta's file format, so `cargo insta review` works:
//! `snapshots/<name>.snap`, or `snapshots/<name>@<series>.snap` for one
//! kernel series (preferred when present), a YAML header between `---`
//! lines, then the text. A mismatch leaves `<file>.snap.new` next to the
//! file compared; accepting rewrites the `.snap` and removes the `.snap.new`.
//!
//! Invariant: contents compare as insta compares them (trailing white space
//! and CRLF ignored); a `.snap` is only written when accepting.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use similar::{ChangeTag, TextDiff};

use crate::error::{Error, Result};

/// Header fields written to a snapshot (all optional in insta).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The scenario file, relative to the workspace: `scenarios/uname.toml`.
    pub source: Option<String>,
    /// The scenario's description.
    pub description: Option<String>,
    /// The guest command, as shown by `cargo insta review`.
    pub expression: Option<String>,
}

/// A parsed snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Header fields.
    pub metadata: Metadata,
    /// The text after the header.
    pub contents: String,
}

impl SnapshotFile {
    /// Reads `path`; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<SnapshotFile>> {
        match std::fs::read_to_string(path) {
            Ok(text) => SnapshotFile::parse(&text)
                .map(Some)
                .map_err(|reason| Error::BadSnapshot {
                    path: path.to_owned(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Parses insta's format: `---`, `key: value` lines, `---`, contents.
    pub fn parse(text: &str) -> Result<SnapshotFile, String> {
        let mut lines = text.split_inclusive('\n');
        let first = lines.next().unwrap_or_default();
        if first.trim_end() != "---" {
            return Err("it does not start with a `---` line".into());
        }
        let mut metadata = Metadata::default();
        let mut closed = false;
        let mut consumed = first.len();
        for line in lines.by_ref() {
            consumed += line.len();
            let l = line.trim_end();
            if l == "---" {
                closed = true;
                break;
            }
            if let Some((key, value)) = l.split_once(':') {
                let value = unquote(value.trim());
                match key.trim() {
                    "source" => metadata.source = Some(value),
                    "description" => metadata.description = Some(value),
                    "expression" => metadata.expression = Some(value),
                    _ => {}
                }
            }
        }
        if !closed {
            return Err("its header has no closing `---` line".into());
        }
        let start = consumed.min(text.len());
        Ok(SnapshotFile {
            metadata,
            contents: text[start..].lines().collect::<Vec<_>>().join("\n"),
        })
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut out = String::from("---\n");
        let fields = [
            ("source", &self.metadata.source),
            ("description", &self.metadata.description),
            ("expression", &self.metadata.expression),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                let _ = writeln!(out, "{key}: {}", quote(v));
            }
        }
        out.push_str("---\n");
        out.push_str(comparable(&self.contents).as_str());
        out.push('\n');
        out
    }
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it).
fn quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
}

/// Reads back values written by [`quote`] or plain YAML scalars.
fn unquote(value: &str) -> String {
    if value.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(value) {
            return s;
        }
    }
    value.trim_matches('\'').to_owned()
}

/// What insta compares: no trailing white space, LF line ends.
pub fn comparable(text: &str) -> String {
    text.trim_end().replace("\r\n", "\n")
}

/// Where a scenario's snapshots are for one kernel.
#[derive(Debug, Clone)]
pub struct SnapshotTarget {
    /// `snapshots/<name>.snap`.
    pub generic: PathBuf,
    /// `snapshots/<name>@<series>.snap` when the kernel has a series.
    pub per_kernel: Option<PathBuf>,
}

impl SnapshotTarget {
    /// Paths for scenario `name` on a kernel of `series`.
    pub fn new(dir: &Path, name: &str, series: Option<&str>) -> SnapshotTarget {
        SnapshotTarget {
            generic: dir.join(format!("{name}.snap")),
            per_kernel: series.map(|s| dir.join(format!("{name}@{s}.snap"))),
        }
    }

    /// The file to compare with: the per-kernel one when it exists.
    pub fn baseline(&self) -> &Path {
        match &self.per_kernel {
            Some(p) if p.is_file() => p,
            _ => &self.generic,
        }
    }
}

/// `<file>.snap.new` next to `<file>.snap`.
pub fn new_path(snap: &Path) -> PathBuf {
    let mut s = snap.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// How a snapshot check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stored snapshot matches.
    Match {
        /// The file compared.
        path: PathBuf,
    },
    /// It differs; the new text is in `new_path`.
    Mismatch {
        /// The file compared.
        path: PathBuf,
        /// Where the new text was written.
        new_path: PathBuf,
        /// The changed lines, readable.
        diff: Diff,
    },
    /// No snapshot yet; the new text is in `new_path`.
    Missing {
        /// The file that would hold it.
        path: PathBuf,
        /// Where the new text was written.
        new_path: PathBuf,
    },
    /// Accepted: `path` was written (created or changed).
    Written {
        /// The file written.
        path: PathBuf,
        /// Whether a snapshot existed before.
        replaced: bool,
    },
}

impl Outcome {
    /// Whether the scenario passes on this check.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Match { .. } | Outcome::Written { .. })
    }
}

/// How to store new text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Accept: write `.snap`, remove `.snap.new`.
    pub update: bool,
    /// Record differences per kernel series: new text for a kernel with a
    /// series goes to `<name>@<series>.snap(.new)` instead of the generic file
    /// (the ABI matrix wants this; `xtask test` does not).
    pub per_kernel: bool,
}

/// Compares `actual` with the stored snapshot and stores it as `policy` says.
pub fn check(
    target: &SnapshotTarget,
    actual: &str,
    metadata: &Metadata,
    policy: Policy,
) -> Result<Outcome> {
    let baseline = target.baseline().to_owned();
    let stored = SnapshotFile::read(&baseline)?;
    let actual = comparable(actual);
    // Where new text goes: the per-kernel file when asked and possible.
    let write_to = match (&target.per_kernel, policy.per_kernel) {
        (Some(p), true) => p.clone(),
        _ => baseline.clone(),
    };
    let file = SnapshotFile {
        metadata: metadata.clone(),
        contents: actual.clone(),
    };
    match stored {
        Some(s) if comparable(&s.contents) == actual => {
            remove_if_present(&new_path(&baseline))?;
            Ok(Outcome::Match { path: baseline })
        }
        stored if policy.update => {
            write(&write_to, &file.render())?;
            remove_if_present(&new_path(&write_to))?;
            Ok(Outcome::Written {
                replaced: stored.is_some() && write_to == baseline,
                path: write_to,
            })
        }
        Some(s) => {
            let np = new_path(&write_to);
            write(&np, &file.render())?;
            Ok(Outcome::Mismatch {
                diff: diff(&comparable(&s.contents), &actual),
                path: baseline,
                new_path: np,
            })
        }
        None => {
            let np = new_path(&write_to);
            write(&np, &file.render())?;
            Ok(Outcome::Missing {
                path: write_to,
                new_path: np,
            })
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    }
    // Write then rename, so a parallel reader never sees half a file. The
    // temporary is this writer's own: two cases of one run (one scenario
    // on two kernels under `--update`) may write the same snapshot at once.
    static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}-{writer}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// A line diff: which lines changed and a readable rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Stored-snapshot line numbers that were removed or changed.
    pub old_lines: Vec<usize>,
    /// New-text line numbers that were added or changed.
    pub new_lines: Vec<usize>,
    /// `-`/`+` lines with their numbers, two lines of context, `…` between
    /// hunks.
    pub text: String,
}

impl Diff {
    /// `line 4` / `lines 4, 7 and 9` of the stored snapshot (or of the new
    /// text when only lines were added).
    pub fn summary(&self) -> String {
        let (what, lines) = if self.old_lines.is_empty() {
            ("new line", &self.new_lines)
        } else {
            ("line", &self.old_lines)
        };
        let mut shown: Vec<String> = lines.iter().take(8).map(usize::to_string).collect();
        if lines.len() > 8 {
            shown.push(format!("{} more", lines.len() - 8));
        }
        match shown.len() {
            0 => "no line differs (white space only)".into(),
            1 => format!("{what} {}", shown[0]),
            _ => {
                let last = shown.pop().unwrap_or_default();
                format!("{what}s {} and {last}", shown.join(", "))
            }
        }
    }
}

/// Line diff of `old` (stored) against `new`.
pub fn diff(old: &str, new: &str) -> Diff {
    let d = TextDiff::from_lines(old, new);
    let mut out = Diff {
        old_lines: Vec::new(),
        new_lines: Vec::new(),
        text: String::new(),
    };
    for (i, group) in d.grouped_ops(2).iter().enumerate() {
        if i > 0 {
            out.text.push_str("    …\n");
        }
        for op in group {
            for change in d.iter_changes(op) {
                let (sign, number) = match change.tag() {
                    ChangeTag::Delete => ('-', change.old_index().map(|n| n + 1)),
                    ChangeTag::Insert => ('+', change.new_index().map(|n| n + 1)),
                    ChangeTag::Equal => (' ', change.old_index().map(|n| n + 1)),
                };
                match change.tag() {
                    ChangeTag::Delete => out.old_lines.extend(number),
                    ChangeTag::Insert => out.new_lines.extend(number),
                    ChangeTag::Equal => {}
                }
                let line = change.value().trim_end_matches('\n');
                let _ = writeln!(out.text, "{sign}{:>5} │ {line}", number.unwrap_or(0));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_of_one_snapshot_at_once_each_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshots/same.snap");
        let texts: Vec<String> = (0..8).map(|n| format!("text {n}\n").repeat(1000)).collect();
        std::thread::scope(|s| {
            for t in &texts {
                let path = &path;
                s.spawn(move || write(path, t).unwrap());
            }
        });
        let landed = std::fs::read_to_string(&path).unwrap();
        assert!(texts.contains(&landed));
        assert_eq!(
            std::fs::read_dir(dir.path().join("snapshots"))
                .unwrap()
                .count(),
            1
        );
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kestrel-snap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn meta() -> Metadata {
        Metadata {
            source: Some("scenarios/demo.toml".into()),
            description: Some("a \"quoted\" description: with colon".into()),
            expression: Some("uname -r".into()),
        }
    }

    #[test]
    fn render_parse_round_trip() {
        let f = SnapshotFile {
            metadata: meta(),
            contents: "== stdout ==\n---\nline".into(),
        };
        let text = f.render();
        assert!(text.starts_with("---\nsource: \"scenarios/demo.toml\"\n"));
        assert_eq!(SnapshotFile::parse(&text).unwrap(), f);
        assert!(SnapshotFile::parse("no header").is_err());
        assert!(SnapshotFile::parse("---\nsource: x\n").is_err());
    }

    #[test]
    fn we_read_what_cargo_insta_accept_writes() {
        // As `cargo insta accept` (1.49) rewrote one of our `.snap.new` files.
        let text =
            "---\nsource: scenarios/uname.toml\ndescription: \"uname's fields: \\\"shape\\\"\"\n\
                    expression: sh -c uname -r\n---\n== stdout ==\nLinux\n6.1.0-x\n";
        let f = SnapshotFile::parse(text).unwrap();
        assert_eq!(f.metadata.source.as_deref(), Some("scenarios/uname.toml"));
        assert_eq!(
            f.metadata.description.as_deref(),
            Some("uname's fields: \"shape\"")
        );
        assert_eq!(f.metadata.expression.as_deref(), Some("sh -c uname -r"));
        assert_eq!(f.contents, "== stdout ==\nLinux\n6.1.0-x");
    }

    #[test]
    fn insta_reads_our_files() {
        let dir = tmpdir("insta");
        let path = dir.join("demo.snap");
        let f = SnapshotFile {
            metadata: meta(),
            contents: "a\n  b\n\nc".into(),
        };
        std::fs::write(&path, f.render()).unwrap();
        let snap = insta::Snapshot::from_file(&path).unwrap();
        assert_eq!(snap.metadata().expression(), Some("uname -r"));
        assert_eq!(snap.metadata().description(), meta().description.as_deref());
        let text = snap.as_text().unwrap();
        assert_eq!(text.to_string(), "a\n  b\n\nc");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_mismatch_update_cycle() {
        let dir = tmpdir("cycle");
        let target = SnapshotTarget::new(&dir, "demo", Some("6.12"));
        let snap = dir.join("demo.snap");
        let new = dir.join("demo.snap.new");
        let check = |text: &str, update| {
            check(
                &target,
                text,
                &meta(),
                Policy {
                    update,
                    per_kernel: false,
                },
            )
            .unwrap()
        };

        // Nothing stored: missing, `.snap.new` written, no `.snap`.
        assert!(matches!(check("a\nb\n", false), Outcome::Missing { .. }));
        assert!(new.is_file() && !snap.exists());
        // Accept: `.snap` written, `.snap.new` gone.
        assert!(matches!(
            check("a\nb\n", true),
            Outcome::Written {
                replaced: false,
                ..
            }
        ));
        assert!(snap.is_file() && !new.exists());
        // Same text (trailing blanks ignored): match.
        assert!(check("a\nb  \n\n", false).is_ok());
        // Changed line 2: mismatch naming it, `.snap.new` holds the new text.
        match check("a\nB\n", false) {
            Outcome::Mismatch {
                diff,
                new_path,
                path,
            } => {
                assert_eq!(path, snap);
                assert_eq!(new_path, new);
                assert_eq!(diff.old_lines, [2]);
                assert_eq!(diff.summary(), "line 2");
                assert!(
                    diff.text.contains("-    2 │ b\n+    2 │ B\n"),
                    "{}",
                    diff.text
                );
            }
            other => panic!("{other:?}"),
        }
        let pending = SnapshotFile::read(&new).unwrap().unwrap();
        assert_eq!(pending.contents, "a\nB");
        // The stored file was not touched.
        assert_eq!(SnapshotFile::read(&snap).unwrap().unwrap().contents, "a\nb");
        // A later match cleans up the stale `.snap.new`.
        assert!(check("a\nb\n", false).is_ok());
        assert!(!new.exists());
        // Update replaces.
        assert!(matches!(
            check("a\nB\n", true),
            Outcome::Written { replaced: true, .. }
        ));
        assert_eq!(SnapshotFile::read(&snap).unwrap().unwrap().contents, "a\nB");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn per_kernel_snapshot_is_preferred_and_written_when_asked() {
        let dir = tmpdir("perkernel");
        let target = SnapshotTarget::new(&dir, "uname", Some("6.12"));
        let generic = dir.join("uname.snap");
        let special = dir.join("uname@6.12.snap");
        let file = |c: &str| {
            SnapshotFile {
                metadata: Metadata::default(),
                contents: c.into(),
            }
            .render()
        };
        std::fs::write(&generic, file("generic")).unwrap();
        assert_eq!(target.baseline(), generic);
        std::fs::write(&special, file("special")).unwrap();
        assert_eq!(target.baseline(), special);
        let p = Policy::default();
        assert!(check(&target, "special", &Metadata::default(), p)
            .unwrap()
            .is_ok());
        assert!(!check(&target, "generic", &Metadata::default(), p)
            .unwrap()
            .is_ok());
        assert!(dir.join("uname@6.12.snap.new").is_file());
        // Without a per-kernel file, per-kernel policy writes one, leaving the
        // generic file alone.
        std::fs::remove_file(&special).unwrap();
        std::fs::remove_file(dir.join("uname@6.12.snap.new")).unwrap();
        let pk = Policy {
            update: true,
            per_kernel: true,
        };
        let out = check(&target, "differs", &Metadata::default(), pk).unwrap();
        assert_eq!(
            out,
            Outcome::Written {
                path: special.clone(),
                replaced: false
            }
        );
        assert_eq!(
            SnapshotFile::read(&generic).unwrap().unwrap().contents,
            "generic"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn diff_summaries() {
        assert_eq!(diff("a\nb\nc\n", "a\nc\n").summary(), "line 2");
        assert_eq!(diff("a\n", "a\nb\nc\n").summary(), "new lines 2 and 3");
        let d = diff("1\n2\n3\n4\n5\n6\n7\n8\n9\n", "1\nX\n3\n4\n5\n6\n7\nY\n9\n");
        assert_eq!(d.summary(), "lines 2 and 8");
        assert!(d.text.contains('…'), "{}", d.text);
    }
}

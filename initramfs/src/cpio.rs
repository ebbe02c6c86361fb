//! A deterministic newc (SVR4) cpio archive: the format Linux unpacks as an
//! initramfs.
//!
//! [`Archive`] owns an in-memory tree of entries keyed by their normalised
//! path (relative, no `.`/`..`, no empty components). Invariants:
//! - every entry's parent exists and is a directory (parents are created
//!   implicitly with mode 0755);
//! - adding an existing path again is a no-op when the entry is identical and
//!   an error when it differs (an implicit directory takes the mode of a later
//!   explicit `add_dir`);
//! - the bytes written depend only on the entries: sorted by path (a parent
//!   sorts before its children), uid/gid 0, mtime 0, inode numbers 1, 2, …
//!   in that order, then the `TRAILER!!!` entry, then zeros up to a multiple
//!   of [`ALIGN`] so that another archive can be appended.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ::cpio::newc::{self, ModeFileType};

/// Every archive written here ends on a multiple of this many bytes. Linux
/// needs each concatenated archive to start 4-byte aligned; 512 is safe.
pub const ALIGN: usize = 512;

/// How many symlinks [`Archive::add_host_path_with_links`] follows for one
/// path before it gives up (the kernel's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// Why an entry could not be added or the archive not written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive path is empty, has `..`, a NUL byte or is not UTF-8.
    #[error("invalid archive path {path:?}: {why}")]
    InvalidPath { path: String, why: &'static str },
    /// The path is already in the archive with different content or type.
    #[error("archive path /{path} is already a {existing}; refusing to replace it with a different {new} (two inputs disagree about this path)")]
    Conflict {
        path: String,
        existing: &'static str,
        new: &'static str,
    },
    /// A parent of the path is a file or symlink in the archive.
    #[error("cannot add /{path}: its parent /{parent} is a {kind} in the archive, not a directory (add the entry under the symlink's target instead)")]
    ParentNotDir {
        path: String,
        parent: String,
        kind: &'static str,
    },
    /// A host file could not be read.
    #[error("reading host path {}: {source}", path.display())]
    Host { path: PathBuf, source: io::Error },
    /// A host path must be absolute to be packed at its own path.
    #[error("host path {} is not absolute; pass an absolute path", path.display())]
    RelativeHostPath { path: PathBuf },
    /// Resolving a host path met too many symlinks.
    #[error("host path {}: more than {MAX_SYMLINK_HOPS} symlinks (a symlink loop?)", path.display())]
    SymlinkLoop { path: PathBuf },
    /// A host path is a device, socket or FIFO.
    #[error("host path {} is not a regular file, directory or symlink; only those can be packed", path.display())]
    Unsupported { path: PathBuf },
    /// newc stores sizes in 32 bits.
    #[error("{what} is {size} bytes; a newc archive entry holds at most 4 GiB - 1")]
    TooLarge { what: String, size: u64 },
    /// Writing the archive failed.
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
    /// Reading an archive back failed (it is truncated or not newc).
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32, implicit: bool },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Dir { .. } => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
            Node::CharDev { .. } => "character device",
        }
    }
}

/// An initramfs under construction. See the module docs for its invariants.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

/// Normalises an archive path: leading `/` and `.` components are dropped,
/// repeated `/` collapse; `..`, NUL and an empty result are rejected.
fn normalize(path: &str) -> Result<String, ArchiveError> {
    let invalid = |why| ArchiveError::InvalidPath {
        path: path.to_string(),
        why,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("contains `..`")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(invalid("names the archive root"));
    }
    Ok(parts.join("/"))
}

fn host_str(path: &Path) -> Result<&str, ArchiveError> {
    path.to_str().ok_or_else(|| ArchiveError::InvalidPath {
        path: path.display().to_string(),
        why: "is not UTF-8",
    })
}

fn check_size(what: &str, size: usize) -> Result<(), ArchiveError> {
    if u32::try_from(size).is_err() {
        return Err(ArchiveError::TooLarge {
            what: what.to_string(),
            size: size as u64,
        });
    }
    Ok(())
}

/// Mode bits kept from a host file: 0755 if its owner may execute it, else
/// 0644 (host umask and set-id bits do not leak into the image).
fn host_file_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Number of entries (implicit directories included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// Creates the missing parents of `path` (which is normalised).
    fn make_parents(&mut self, path: &str) -> Result<(), ArchiveError> {
        let mut end = 0;
        while let Some(off) = path[end..].find('/') {
            end += off;
            let parent = &path[..end];
            match self.entries.get(parent) {
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Node::Dir {
                            mode: 0o755,
                            implicit: true,
                        },
                    );
                }
                Some(Node::Dir { .. }) => {}
                Some(other) => {
                    return Err(ArchiveError::ParentNotDir {
                        path: path.to_string(),
                        parent: parent.to_string(),
                        kind: other.kind(),
                    })
                }
            }
            end += 1;
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), ArchiveError> {
        let path = normalize(path)?;
        self.make_parents(&path)?;
        let Some(existing) = self.entries.get_mut(&path) else {
            self.entries.insert(path, node);
            return Ok(());
        };
        match (&*existing, &node) {
            (old, new) if old == new => Ok(()),
            // An implicit parent takes the mode of a later explicit add.
            (Node::Dir { implicit: true, .. }, Node::Dir { .. }) => {
                *existing = node;
                Ok(())
            }
            (old, new) => Err(ArchiveError::Conflict {
                existing: old.kind(),
                new: new.kind(),
                path,
            }),
        }
    }

    /// Adds a directory with permission bits `mode` (e.g. `0o755`).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), ArchiveError> {
        self.insert(
            path,
            Node::Dir {
                mode: mode & 0o7777,
                implicit: false,
            },
        )
    }

    /// Adds a regular file with permission bits `mode` and these contents.
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), ArchiveError> {
        check_size(path, data.len())?;
        self.insert(
            path,
            Node::File {
                mode: mode & 0o7777,
                data: data.to_vec(),
            },
        )
    }

    /// Adds a symlink at `path` pointing at `target` (stored verbatim).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), ArchiveError> {
        if target.is_empty() || target.contains('\0') {
            return Err(ArchiveError::InvalidPath {
                path: target.to_string(),
                why: "is not a valid symlink target",
            });
        }
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a character device node (the kernel creates it while unpacking;
    /// no privileges are needed on the host).
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), ArchiveError> {
        self.insert(
            path,
            Node::CharDev {
                mode: mode & 0o7777,
                major,
                minor,
            },
        )
    }

    /// Adds the contents of the host file `host_path` (symlinks followed) at
    /// `archive_path`, mode 0755 if the host file is executable, else 0644.
    pub fn add_host_file(
        &mut self,
        archive_path: &str,
        host_path: impl AsRef<Path>,
    ) -> Result<(), ArchiveError> {
        let host_path = host_path.as_ref();
        let host = |source| ArchiveError::Host {
            path: host_path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(host_path).map_err(host)?;
        if !meta.is_file() {
            return Err(ArchiveError::Unsupported {
                path: host_path.to_path_buf(),
            });
        }
        let data = std::fs::read(host_path).map_err(host)?;
        self.add_file(
            archive_path,
            host_file_mode(meta.permissions().mode()),
            &data,
        )
    }

    /// Adds the absolute host path `host_path` at the same path in the
    /// archive so that it resolves there exactly as on the host: every
    /// component that is a symlink on the host (e.g. merged-usr `/lib ->
    /// usr/lib`) is added as that symlink and its target is followed. The
    /// final file is added with [`Archive::add_host_file`]'s mode rule; a
    /// final directory is added empty. Returns the symlink-free host path
    /// that was packed.
    pub fn add_host_path_with_links(
        &mut self,
        host_path: impl AsRef<Path>,
    ) -> Result<PathBuf, ArchiveError> {
        let original = host_path.as_ref();
        if !original.is_absolute() {
            return Err(ArchiveError::RelativeHostPath {
                path: original.to_path_buf(),
            });
        }
        host_str(original)?;
        // Components still to walk, next one last.
        let mut pending: Vec<String> = Vec::new();
        push_components(&mut pending, original)?;
        // `resolved` never contains a symlink, so `..` may pop lexically.
        let mut resolved = PathBuf::from("/");
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            let candidate = resolved.join(&part);
            let meta =
                std::fs::symlink_metadata(&candidate).map_err(|source| ArchiveError::Host {
                    path: candidate.clone(),
                    source,
                })?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ArchiveError::SymlinkLoop {
                        path: original.to_path_buf(),
                    });
                }
                let target =
                    std::fs::read_link(&candidate).map_err(|source| ArchiveError::Host {
                        path: candidate.clone(),
                        source,
                    })?;
                self.add_symlink(host_str(&candidate)?, host_str(&target)?)?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                push_components(&mut pending, &target)?;
            } else if pending.is_empty() {
                let path = host_str(&candidate)?;
                if ft.is_file() {
                    self.add_host_file(path, &candidate)?;
                } else if ft.is_dir() {
                    self.add_dir(path, host_file_mode(meta.permissions().mode()))?;
                } else {
                    return Err(ArchiveError::Unsupported { path: candidate });
                }
                return Ok(candidate);
            } else if ft.is_dir() {
                resolved = candidate;
            } else {
                let kind = if ft.is_block_device() || ft.is_char_device() {
                    "device"
                } else {
                    "file"
                };
                return Err(ArchiveError::Host {
                    source: io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} is a {kind}, not a directory", candidate.display()),
                    ),
                    path: original.to_path_buf(),
                });
            }
        }
        // The path named the root itself (or only `..` above it).
        Ok(resolved)
    }

    /// Writes the archive (see the module docs for the layout) and returns
    /// the number of bytes written, a multiple of [`ALIGN`].
    pub fn write_to(&self, out: impl Write) -> Result<u64, ArchiveError> {
        let mut out = Counting {
            inner: out,
            count: 0,
        };
        for (idx, (path, node)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(idx + 1).map_err(|_| ArchiveError::TooLarge {
                what: "the entry count".to_string(),
                size: idx as u64,
            })?;
            let builder = newc::Builder::new(path).ino(ino).uid(0).gid(0).mtime(0);
            let (builder, data): (_, &[u8]) = match node {
                Node::Dir { mode, .. } => (
                    builder
                        .mode(*mode)
                        .set_mode_file_type(ModeFileType::Directory)
                        .nlink(2),
                    &[],
                ),
                Node::File { mode, data } => (
                    builder
                        .mode(*mode)
                        .set_mode_file_type(ModeFileType::Regular)
                        .nlink(1),
                    data,
                ),
                Node::Symlink { target } => (
                    builder
                        .mode(0o777)
                        .set_mode_file_type(ModeFileType::Symlink)
                        .nlink(1),
                    target.as_bytes(),
                ),
                Node::CharDev { mode, major, minor } => (
                    builder
                        .mode(*mode)
                        .set_mode_file_type(ModeFileType::Char)
                        .rdev_major(*major)
                        .rdev_minor(*minor)
                        .nlink(1),
                    &[],
                ),
            };
            // Sizes were checked when the entries were added.
            let size = u32::try_from(data.len()).map_err(|_| ArchiveError::TooLarge {
                what: format!("/{path}"),
                size: data.len() as u64,
            })?;
            let mut writer = builder.write(&mut out, size);
            writer.write_all(data).map_err(ArchiveError::Write)?;
            writer.finish().map_err(ArchiveError::Write)?;
        }
        let mut out = newc::trailer(out).map_err(ArchiveError::Write)?;
        let rem = (out.count % ALIGN as u64) as usize;
        if rem != 0 {
            out.write_all(&[0; ALIGN][rem..])
                .map_err(ArchiveError::Write)?;
        }
        out.flush().map_err(ArchiveError::Write)?;
        Ok(out.count)
    }

    /// The archive's bytes (see [`Archive::write_to`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// Pushes the components of `path` onto the stack `pending` so that the
/// first component is popped first.
fn push_components(pending: &mut Vec<String>, path: &Path) -> Result<(), ArchiveError> {
    let mut parts = Vec::new();
    for comp in path.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) => {}
            Component::CurDir => parts.push(".".to_string()),
            Component::ParentDir => parts.push("..".to_string()),
            Component::Normal(p) => parts.push(host_str(Path::new(p))?.to_string()),
        }
    }
    pending.extend(parts.into_iter().rev());
    Ok(())
}

/// A writer that counts what passes through, for the final padding.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One entry read back from an archive (for tests and inspection tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Path as stored (no leading `/`).
    pub name: String,
    /// Full mode, file type bits included.
    pub mode: u32,
    /// File contents or symlink target.
    pub data: Vec<u8>,
    /// Inode number.
    pub ino: u32,
    /// uid, gid, mtime as stored.
    pub uid_gid_mtime: (u32, u32, u32),
    /// Device number of a device node.
    pub rdev: (u32, u32),
}

/// Reads every entry of one archive (up to its trailer) from `bytes`, and
/// returns them with the offset just past the trailer.
pub fn read_entries(bytes: &[u8]) -> Result<(Vec<ReadEntry>, usize), ArchiveError> {
    let mut cursor = io::Cursor::new(bytes);
    let mut entries = Vec::new();
    loop {
        let mut reader = newc::Reader::new(&mut cursor).map_err(ArchiveError::Read)?;
        let e = reader.entry();
        if e.is_trailer() {
            reader.finish().map_err(ArchiveError::Read)?;
            break;
        }
        let mut entry = ReadEntry {
            name: e.name().to_string(),
            mode: e.mode(),
            data: Vec::new(),
            ino: e.ino(),
            uid_gid_mtime: (e.uid(), e.gid(), e.mtime()),
            rdev: (e.rdev_major(), e.rdev_minor()),
        };
        io::Read::read_to_end(&mut reader, &mut entry.data).map_err(ArchiveError::Read)?;
        reader.finish().map_err(ArchiveError::Read)?;
        entries.push(entry);
    }
    let end = usize::try_from(cursor.position()).unwrap_or(bytes.len());
    Ok((entries, end))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "kestrel-initramfs-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir.canonicalize().unwrap())
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn find<'a>(entries: &'a [ReadEntry], name: &str) -> &'a ReadEntry {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} not in archive: {entries:?}"))
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("/usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        a.add_dir("/tmp", 0o1777).unwrap();
        a.add_symlink("/bin", "usr/bin").unwrap();
        a.add_file("etc/empty", 0o644, b"").unwrap();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        a
    }

    #[test]
    fn same_inputs_give_identical_bytes() {
        let one = sample().to_bytes().unwrap();
        // Different insertion order, same entries.
        let mut b = Archive::new();
        b.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        b.add_file("etc/empty", 0o644, b"").unwrap();
        b.add_symlink("bin", "usr/bin").unwrap();
        b.add_dir("tmp", 0o1777).unwrap();
        b.add_file("usr//bin/./tool", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        assert_eq!(one, b.to_bytes().unwrap());
        assert_eq!(one.len() % ALIGN, 0);
    }

    #[test]
    fn reads_back_names_modes_contents_and_links() {
        let bytes = sample().to_bytes().unwrap();
        let (entries, end) = read_entries(&bytes).unwrap();
        assert!(bytes[end..].iter().all(|&b| b == 0));
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "dev/console",
                "etc",
                "etc/empty",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        assert_eq!(find(&entries, "usr/bin/tool").mode, 0o100755);
        assert_eq!(find(&entries, "usr/bin/tool").data, b"#!/bin/sh\necho hi\n");
        assert_eq!(find(&entries, "usr").mode, 0o040755);
        assert_eq!(find(&entries, "tmp").mode, 0o041777);
        assert_eq!(find(&entries, "bin").mode, 0o120777);
        assert_eq!(find(&entries, "bin").data, b"usr/bin");
        assert_eq!(find(&entries, "dev/console").mode, 0o020600);
        assert_eq!(find(&entries, "dev/console").rdev, (5, 1));
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!(e.uid_gid_mtime, (0, 0, 0));
        }
    }

    #[test]
    fn duplicates_are_idempotent_and_conflicts_are_errors() {
        let mut a = sample();
        let before = a.to_bytes().unwrap();
        a.add_file("usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        a.add_symlink("bin", "usr/bin").unwrap();
        a.add_dir("usr", 0o755).unwrap();
        a.add_dir("tmp", 0o1777).unwrap();
        assert_eq!(before, a.to_bytes().unwrap());

        let conflict = a.add_file("usr/bin/tool", 0o755, b"other").unwrap_err();
        assert!(
            matches!(conflict, ArchiveError::Conflict { .. }),
            "{conflict}"
        );
        assert!(a
            .add_file("usr/bin/tool", 0o644, b"#!/bin/sh\necho hi\n")
            .is_err());
        assert!(a.add_symlink("bin", "elsewhere").is_err());
        assert!(a.add_dir("tmp", 0o755).is_err());
        assert!(a.add_dir("usr/bin/tool", 0o755).is_err());
        // A parent that is a symlink or file is not a directory.
        let e = a.add_file("bin/x", 0o644, b"").unwrap_err();
        assert!(matches!(e, ArchiveError::ParentNotDir { .. }), "{e}");
        assert!(a.add_file("etc/empty/x", 0o644, b"").is_err());
    }

    #[test]
    fn explicit_mode_wins_over_implicit_parent() {
        let mut a = Archive::new();
        a.add_file("root/.profile", 0o644, b"x").unwrap();
        a.add_dir("root", 0o700).unwrap();
        let (entries, _) = read_entries(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(find(&entries, "root").mode, 0o040700);
        // Children added later do not reset it.
        a.add_file("root/other", 0o644, b"y").unwrap();
        let (entries, _) = read_entries(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(find(&entries, "root").mode, 0o040700);
    }

    #[test]
    fn rejects_bad_paths() {
        let mut a = Archive::new();
        for bad in ["", "/", ".", "a/../b", "a\0b"] {
            assert!(
                matches!(
                    a.add_file(bad, 0o644, b""),
                    Err(ArchiveError::InvalidPath { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(a.add_symlink("x", "").is_err());
        assert!(a.is_empty());
    }

    #[test]
    fn empty_archive_is_a_padded_trailer() {
        let bytes = Archive::new().to_bytes().unwrap();
        assert_eq!(bytes.len(), ALIGN);
        let (entries, _) = read_entries(&bytes).unwrap();
        assert!(entries.is_empty());
    }

    #[test]
    fn host_file_keeps_only_the_exec_bit() {
        let tmp = TempDir::new("cpio-mode");
        let exe = tmp.path().join("exe");
        let data = tmp.path().join("data");
        std::fs::write(&exe, b"e").unwrap();
        std::fs::write(&data, b"d").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4711)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut a = Archive::new();
        a.add_host_file("exe", &exe).unwrap();
        a.add_host_file("data", &data).unwrap();
        let (entries, _) = read_entries(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(find(&entries, "exe").mode, 0o100755);
        assert_eq!(find(&entries, "data").mode, 0o100644);
        assert!(matches!(
            a.add_host_file("missing", tmp.path().join("missing")),
            Err(ArchiveError::Host { .. })
        ));
        assert!(matches!(
            a.add_host_file("dir", tmp.path()),
            Err(ArchiveError::Unsupported { .. })
        ));
    }

    #[test]
    fn host_path_with_links_reproduces_merged_usr() {
        // A miniature merged-usr tree: lib -> usr/lib, lib64 -> usr/lib64,
        // lib64/ld.so -> /<root>/lib/x86_64/ld-2.so (absolute), and a
        // relative link with `..`.
        let tmp = TempDir::new("cpio-links");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("usr/lib/x86_64")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::fs::write(root.join("usr/lib/x86_64/ld-2.so"), b"ld").unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("usr/lib64", root.join("lib64")).unwrap();
        symlink(
            root.join("lib/x86_64/ld-2.so"),
            root.join("usr/lib64/ld.so"),
        )
        .unwrap();
        symlink("../lib/x86_64/ld-2.so", root.join("usr/lib64/rel.so")).unwrap();

        let mut a = Archive::new();
        let real = a
            .add_host_path_with_links(root.join("lib64/ld.so"))
            .unwrap();
        assert_eq!(real, root.join("usr/lib/x86_64/ld-2.so"));
        let real2 = a
            .add_host_path_with_links(root.join("lib64/rel.so"))
            .unwrap();
        assert_eq!(real2, real);

        let (entries, _) = read_entries(&a.to_bytes().unwrap()).unwrap();
        let r = root.to_str().unwrap().trim_start_matches('/');
        let link = |p: &str| find(&entries, &format!("{r}/{p}")).data.clone();
        assert_eq!(link("lib64"), b"usr/lib64");
        assert_eq!(link("lib"), b"usr/lib");
        assert_eq!(
            link("usr/lib64/ld.so"),
            root.join("lib/x86_64/ld-2.so").to_str().unwrap().as_bytes()
        );
        assert_eq!(link("usr/lib64/rel.so"), b"../lib/x86_64/ld-2.so");
        assert_eq!(link("usr/lib/x86_64/ld-2.so"), b"ld");
        assert_eq!(
            find(&entries, &format!("{r}/usr/lib/x86_64/ld-2.so")).mode & 0o170000,
            0o100000
        );

        // Loops and relative paths are errors, not hangs.
        symlink("loop-b", root.join("loop-a")).unwrap();
        symlink("loop-a", root.join("loop-b")).unwrap();
        assert!(matches!(
            a.add_host_path_with_links(root.join("loop-a")),
            Err(ArchiveError::SymlinkLoop { .. })
        ));
        assert!(matches!(
            a.add_host_path_with_links("relative/path"),
            Err(ArchiveError::RelativeHostPath { .. })
        ));
        assert!(a
            .add_host_path_with_links(root.join("usr/lib/x86_64/ld-2.so/x"))
            .is_err());
    }

    #[test]
    fn real_host_merged_usr_if_present() {
        // On Debian 12 /lib64 is a symlink to usr/lib64 and the loader in it
        // is a symlink again; skip quietly on other layouts.
        let ld = Path::new("/lib64/ld-linux-x86-64.so.2");
        if !ld.exists() {
            eprintln!("skipped: {} does not exist on this host", ld.display());
            return;
        }
        let mut a = Archive::new();
        let real = a.add_host_path_with_links(ld).unwrap();
        assert_eq!(real, ld.canonicalize().unwrap());
        let (entries, _) = read_entries(&a.to_bytes().unwrap()).unwrap();
        let file = find(&entries, real.to_str().unwrap().trim_start_matches('/'));
        assert_eq!(file.data, std::fs::read(ld).unwrap());
    }
}

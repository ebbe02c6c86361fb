//! The booted kernel's modules as the guest sees them at
//! `/lib/modules/<release>`, so `modprobe` works in a host-root guest.
//!
//! kmod's `modprobe` reads only depmod's binary indexes (`modules.dep.bin`
//! for names, `modules.alias.bin` for aliases such as `fs-overlay` or
//! `crc32c`); the text `modules.dep` alone is not enough. Debian's packages
//! ship neither. A tree that has `modules.dep.bin` is shared as it is.
//! Otherwise a **sidecar** directory is made once: the tree's files
//! hard-linked (copied when linking fails, e.g. across file systems), plus
//! `modules.dep`, `modules.dep.bin`, `modules.alias` and
//! `modules.alias.bin` generated from each module's `.modinfo` by
//! [`ModulesDir::index`]. For a kernel from the kernel cache it lives inside
//! the cache entry, beside the unpacked `root/`
//! (`<entry>/kestrel-modules-N/<release>`), so it goes when the entry goes;
//! for any other tree under `<cache root>/modules/<key>/<release>`.
//!
//! Invariants: the user's module tree is never written; a sidecar appears
//! atomically (built in a temporary directory, then renamed) and is
//! reused as long as its name matches (the name carries the format version
//! and, outside the kernel cache, the tree's identity); the binary index
//! is kmod's format 2.1 (big-endian, a trie of prefix-compressed nodes,
//! children written before their parent).

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kestrel_initramfs::modules::{IndexedModule, ModuleError, ModulesDir};

use crate::log;

/// Bumped when the sidecar's contents change meaning.
const SIDECAR_VERSION: u32 = 1;
/// The file kmod looks names up in.
pub const DEP_INDEX: &str = "modules.dep.bin";

/// Why the guest's modules directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum GuestModulesError {
    /// Reading the tree or a module failed.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// Writing the sidecar failed.
    #[error("cannot write the modules index {}: {source}; check that the kestrel cache is writable", path.display())]
    Write {
        /// What was being written.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> GuestModulesError + '_ {
    move |source| GuestModulesError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory to share at `/lib/modules/<release>` for the modules tree
/// `tree`: `tree` itself when depmod's index is there, else the sidecar
/// (made now if missing). `kernels_dir` is the kernel cache's `kernels/`,
/// `cache_root` where other sidecars go.
pub fn prepare(
    tree: &Path,
    release: &str,
    kernels_dir: Option<&Path>,
    cache_root: &Path,
) -> Result<PathBuf, GuestModulesError> {
    if tree.join(DEP_INDEX).is_file() {
        return Ok(tree.to_path_buf());
    }
    let dir = sidecar_dir(tree, release, kernels_dir, cache_root);
    if dir.join(DEP_INDEX).is_file() {
        return Ok(dir);
    }
    let started = std::time::Instant::now();
    build(tree, &dir)?;
    log::debug(format_args!(
        "modules index {} built in {} ms",
        dir.display(),
        started.elapsed().as_millis()
    ));
    Ok(dir)
}

/// Where the sidecar of `tree` lives (see the module docs).
pub fn sidecar_dir(
    tree: &Path,
    release: &str,
    kernels_dir: Option<&Path>,
    cache_root: &Path,
) -> PathBuf {
    let leaf = file_safe(release);
    if let Some(entry) = kernels_dir.and_then(|k| {
        let rest = tree.strip_prefix(k).ok()?;
        let first = rest.components().next()?;
        Some(k.join(first))
    }) {
        return entry
            .join(format!("kestrel-modules-{SIDECAR_VERSION}"))
            .join(leaf);
    }
    let mut h = DefaultHasher::new();
    SIDECAR_VERSION.hash(&mut h);
    tree.hash(&mut h);
    if let Ok(m) = std::fs::metadata(tree) {
        (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    cache_root
        .join("modules")
        .join(format!("{:016x}", h.finish()))
        .join(leaf)
}

/// Builds the sidecar for `tree` at `dir` (atomically).
fn build(tree: &Path, dir: &Path) -> Result<(), GuestModulesError> {
    let index = ModulesDir::open(tree)?.index()?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    kestrel_initramfs::remove_orphaned_temps(parent);
    let staging = parent.join(format!(
        ".staging-{}-{}",
        std::process::id(),
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| {
        link_tree(tree, &staging)?;
        for (name, bytes) in index_files(tree, &index) {
            let path = staging.join(name);
            // A hard-linked file of the same name would be the user's:
            // unlink it first, never write through it.
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, bytes).map_err(write_err(&path))?;
        }
        match std::fs::rename(&staging, dir) {
            Ok(()) => Ok(()),
            // Another kestrel made it meanwhile: use theirs.
            Err(_) if dir.join(DEP_INDEX).is_file() => Ok(()),
            Err(e) => Err(write_err(dir)(e)),
        }
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Recreates `from` at `to`: directories made, regular files hard-linked
/// (copied if that fails), symlinks copied as links.
fn link_tree(from: &Path, to: &Path) -> Result<(), GuestModulesError> {
    std::fs::create_dir_all(to).map_err(write_err(to))?;
    let entries = std::fs::read_dir(from).map_err(|source| {
        GuestModulesError::Modules(ModuleError::Read {
            path: from.to_path_buf(),
            source,
        })
    })?;
    for entry in entries {
        let entry = entry.map_err(write_err(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type().map_err(write_err(&src))?;
        if ft.is_dir() {
            link_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(write_err(&src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(write_err(&dst))?;
        } else if ft.is_file() && std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(write_err(&dst))?;
        }
    }
    Ok(())
}

/// The generated files: `(name, contents)`.
fn index_files(tree: &Path, index: &[IndexedModule]) -> Vec<(&'static str, Vec<u8>)> {
    let rel = |p: &Path| {
        p.strip_prefix(tree)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut dep_text = String::new();
    let mut deps = BTreeMap::new();
    let mut alias_text = String::new();
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in index {
        let line = std::iter::once(format!("{}:", rel(&m.path)))
            .chain(m.deps.iter().map(|d| rel(d)))
            .collect::<Vec<_>>()
            .join(" ");
        dep_text.push_str(&line);
        dep_text.push('\n');
        deps.insert(m.name.clone(), vec![line]);
        for a in &m.aliases {
            alias_text.push_str(&format!("alias {a} {}\n", m.name));
            aliases
                .entry(normalise_alias(a))
                .or_default()
                .push(m.name.clone());
        }
    }
    vec![
        ("modules.dep", dep_text.into_bytes()),
        (DEP_INDEX, kmod_index(&deps)),
        ("modules.alias", alias_text.into_bytes()),
        ("modules.alias.bin", kmod_index(&aliases)),
    ]
}

/// An alias as kmod looks it up (and depmod stores it): `-` becomes `_`
/// except inside a `[...]` character class.
fn normalise_alias(alias: &str) -> String {
    let mut in_class = false;
    alias
        .chars()
        .map(|c| match c {
            '[' => {
                in_class = true;
                c
            }
            ']' => {
                in_class = false;
                c
            }
            '-' if !in_class => '_',
            _ => c,
        })
        .collect()
}

/// `release` with anything but `[A-Za-z0-9.+_-]` replaced, for a file name.
fn file_safe(release: &str) -> String {
    release
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// kmod index magic ("BOOTFAST"-ish, format 2).
const INDEX_MAGIC: u32 = 0xB007_F457;
/// Format version 2.1 (major in the high half).
const INDEX_VERSION: u32 = 0x0002_0001;
/// Node offset flag: a NUL-terminated prefix follows.
const NODE_PREFIX: u32 = 0x8000_0000;
/// Node offset flag: values follow.
const NODE_VALUES: u32 = 0x4000_0000;
/// Node offset flag: a child table follows.
const NODE_CHILDS: u32 = 0x2000_0000;

/// An uncompressed trie node: one byte per edge.
#[derive(Default)]
struct Trie {
    values: Vec<String>,
    children: BTreeMap<u8, Trie>,
}

/// kmod's binary index of `entries` (key → values, in priority order).
/// Keys and values must not contain NUL (module names, paths and aliases
/// never do; such entries are skipped).
pub fn kmod_index(entries: &BTreeMap<String, Vec<String>>) -> Vec<u8> {
    let mut root = Trie::default();
    for (key, values) in entries {
        if key.contains('\0') || values.iter().any(|v| v.contains('\0')) {
            continue;
        }
        let mut node = &mut root;
        for b in key.bytes() {
            node = node.children.entry(b).or_default();
        }
        node.values.extend(values.iter().cloned());
    }
    let mut out = Vec::new();
    out.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
    out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    let root_offset = write_node(&root, &mut out);
    out[8..12].copy_from_slice(&root_offset.to_be_bytes());
    out
}

/// Writes the node starting at `node` (its single-child, value-less chain
/// folded into a prefix) after its children; returns its offset | flags.
fn write_node(mut node: &Trie, out: &mut Vec<u8>) -> u32 {
    let mut prefix = Vec::new();
    while node.values.is_empty() && node.children.len() == 1 {
        let (&b, child) = node.children.iter().next().expect("one child");
        prefix.push(b);
        node = child;
    }
    let children: Vec<(u8, u32)> = node
        .children
        .iter()
        .map(|(&b, child)| (b, write_node(child, out)))
        .collect();
    let offset = u32::try_from(out.len()).expect("kmod index below 256 MiB");
    let mut flags = 0;
    if !prefix.is_empty() {
        flags |= NODE_PREFIX;
        out.extend_from_slice(&prefix);
        out.push(0);
    }
    if let (Some(&(first, _)), Some(&(last, _))) = (children.first(), children.last()) {
        flags |= NODE_CHILDS;
        out.push(first);
        out.push(last);
        for c in first..=last {
            let at = children
                .iter()
                .find(|(b, _)| *b == c)
                .map_or(0, |(_, o)| *o);
            out.extend_from_slice(&at.to_be_bytes());
        }
    }
    if !node.values.is_empty() {
        flags |= NODE_VALUES;
        out.extend_from_slice(&(node.values.len() as u32).to_be_bytes());
        for (priority, v) in node.values.iter().enumerate() {
            out.extend_from_slice(&(priority as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
    }
    offset | flags
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact lookup in a kmod index, as kmod's reader walks it.
    fn lookup(index: &[u8], key: &str) -> Option<Vec<String>> {
        let be = |at: usize| u32::from_be_bytes(index[at..at + 4].try_into().unwrap());
        assert_eq!(be(0), INDEX_MAGIC);
        assert_eq!(be(4) >> 16, 2);
        let key = key.as_bytes();
        let mut offset = be(8);
        let mut i = 0;
        loop {
            let mut at = (offset & 0x0fff_ffff) as usize;
            if offset & NODE_PREFIX != 0 {
                while index[at] != 0 {
                    if key.get(i) != Some(&index[at]) {
                        return None;
                    }
                    i += 1;
                    at += 1;
                }
                at += 1;
            }
            let (mut first, mut last, mut table) = (1u8, 0u8, at);
            if offset & NODE_CHILDS != 0 {
                (first, last) = (index[at], index[at + 1]);
                table = at + 2;
                at = table + 4 * (usize::from(last - first) + 1);
            }
            if i == key.len() {
                if offset & NODE_VALUES == 0 {
                    return None;
                }
                let n = be(at) as usize;
                at += 4;
                let mut values = Vec::new();
                for _ in 0..n {
                    at += 4;
                    let end = at + index[at..].iter().position(|&b| b == 0).unwrap();
                    values.push(String::from_utf8(index[at..end].to_vec()).unwrap());
                    at = end + 1;
                }
                return Some(values);
            }
            let c = key[i];
            if offset & NODE_CHILDS == 0 || c < first || c > last {
                return None;
            }
            offset = be(table + 4 * usize::from(c - first));
            if offset == 0 {
                return None;
            }
            i += 1;
        }
    }

    #[test]
    fn the_index_finds_every_key_and_nothing_else() {
        let mut entries = BTreeMap::new();
        for (k, v) in [
            ("dummy", "kernel/drivers/net/dummy.ko:"),
            ("dm_mod", "kernel/drivers/md/dm-mod.ko:"),
            ("dm", "x"),
            (
                "virtiofs",
                "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko",
            ),
            ("fuse", "kernel/fs/fuse/fuse.ko:"),
            ("a", "1"),
        ] {
            entries.insert(k.to_string(), vec![v.to_string()]);
        }
        entries.insert("pci:v*d*".into(), vec!["one".into(), "two".into()]);
        let index = kmod_index(&entries);
        for (k, v) in &entries {
            assert_eq!(lookup(&index, k).as_ref(), Some(v), "{k}");
        }
        for missing in ["", "d", "dumm", "dummy2", "virtio", "b", "dm_"] {
            assert_eq!(lookup(&index, missing), None, "{missing}");
        }
        assert_eq!(lookup(&kmod_index(&BTreeMap::new()), "x"), None);
    }

    #[test]
    fn aliases_are_stored_as_kmod_looks_them_up() {
        assert_eq!(normalise_alias("fs-virtiofs"), "fs_virtiofs");
        assert_eq!(
            normalise_alias("of:N*T*Cfoo-bar[a-z]-x"),
            "of:N*T*Cfoo_bar[a-z]_x"
        );
    }

    #[test]
    fn sidecars_live_in_the_cache_entry_or_under_the_cache_root() {
        let kernels = Path::new("/c/kernels");
        let tree = Path::new("/c/kernels/debian-6.1/root/lib/modules/6.1.0-x");
        assert_eq!(
            sidecar_dir(tree, "6.1.0-x", Some(kernels), Path::new("/c")),
            Path::new("/c/kernels/debian-6.1/kestrel-modules-1/6.1.0-x")
        );
        let other = sidecar_dir(
            Path::new("/src/mods"),
            "6.1/x",
            Some(kernels),
            Path::new("/c"),
        );
        assert!(other.starts_with("/c/modules/"), "{}", other.display());
        assert!(other.ends_with("6.1_x"));
    }

    /// A tree without modules: a file and a dangling link.
    fn write_tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("kernel/fs")).unwrap();
        std::fs::write(dir.join("modules.order"), "kernel/fs/fuse.ko\n").unwrap();
        std::os::unix::fs::symlink("/nonexistent/build", dir.join("build")).unwrap();
    }

    #[test]
    fn trees_with_an_index_are_shared_as_they_are_and_others_get_a_sidecar() {
        let base = std::env::temp_dir().join(format!("kestrel-gm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tree = base.join("tree");
        write_tree(&tree);
        std::fs::write(tree.join(DEP_INDEX), b"").unwrap();
        assert_eq!(prepare(&tree, "r", None, &base).unwrap(), tree);
        std::fs::remove_file(tree.join(DEP_INDEX)).unwrap();
        // No modules at all: the tree is not a modules directory.
        let e = prepare(&tree, "r", None, &base).unwrap_err().to_string();
        assert!(e.contains("no modules.dep"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The real Debian tree when `KESTREL_TEST_MODULES_DIR` is set: the
    /// sidecar resolves `dummy`, `virtiofs` (needs fuse) and the alias
    /// `fs-virtiofs` like depmod's own output would.
    #[test]
    fn real_tree_sidecar() {
        let Some(tree) = std::env::var_os("KESTREL_TEST_MODULES_DIR").map(PathBuf::from) else {
            eprintln!("skipped: KESTREL_TEST_MODULES_DIR is not set");
            return;
        };
        let base = std::env::temp_dir().join(format!("kestrel-gm-real-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = prepare(&tree, "r", None, &base).unwrap();
        assert!(dir.starts_with(&base));
        let deps = std::fs::read(dir.join(DEP_INDEX)).unwrap();
        let dummy = lookup(&deps, "dummy").unwrap();
        assert!(
            dummy[0].starts_with("kernel/drivers/net/dummy.ko:"),
            "{dummy:?}"
        );
        let vfs = lookup(&deps, "virtiofs").unwrap();
        assert!(vfs[0].contains("fuse.ko"), "{vfs:?}");
        let aliases = std::fs::read(dir.join("modules.alias.bin")).unwrap();
        assert_eq!(lookup(&aliases, "fs_virtiofs").unwrap(), ["virtiofs"]);
        assert!(dir.join("kernel/drivers/net/dummy.ko").is_file());
        // The same again is a reuse, not a rebuild.
        let mtime = std::fs::metadata(dir.join(DEP_INDEX))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(prepare(&tree, "r", None, &base).unwrap(), dir);
        let again = std::fs::metadata(dir.join(DEP_INDEX))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, again);
        // kmod's own modprobe reads the indexes, when the host has it.
        let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe"]
            .into_iter()
            .find(|p| Path::new(p).is_file());
        if let Some(modprobe) = modprobe {
            build(&tree, &base.join("prefix/lib/modules/r")).unwrap();
            for (name, needle) in [
                ("dummy", "dummy.ko"),
                ("virtiofs", "fuse.ko"),
                ("fs-virtiofs", "virtiofs.ko"),
            ] {
                let out = std::process::Command::new(modprobe)
                    .arg("-d")
                    .arg(base.join("prefix"))
                    .args(["-S", "r", "-n", "-v", "--ignore-install", name])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "{name}: {out:?}");
                assert!(text.contains(needle), "{name}: {text}");
            }
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}

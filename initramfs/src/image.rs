//! The archives the guest boots from: the cached base (init, modules, host
//! executables with their libraries) and the small per-run job archive.
//!
//! Invariants: the same inputs give byte-identical archives; every archive
//! ends on a multiple of [`ALIGN`] bytes, so [`concat`] is a plain append
//! that Linux unpacks as one tree (later entries are added on top).

use std::io;
use std::path::{Path, PathBuf};

use crate::cpio::{Archive, ArchiveError, ALIGN};
use crate::elf::{ElfError, LibrarySearch};
use crate::job;
use crate::modules::{pack_modules, ModuleError, ModulesDir};

/// Directories every base archive has, with their modes.
pub const STANDARD_DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("root", 0o700),
    ("kestrel/host", 0o755),
    ("kestrel/root", 0o755),
];

/// `/dev/console` (char 5:1): the kernel opens it for the init's stdin,
/// stdout and stderr before the init can mount devtmpfs.
const CONSOLE: (&str, u32, u32, u32) = ("dev/console", 0o600, 5, 1);

/// How many `#!` interpreters a script chain may have.
const MAX_SCRIPT_DEPTH: usize = 4;

/// Why an archive could not be built or cached.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Adding entries or writing failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Module resolution or packing failed.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// A library closure could not be computed.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// Modules were asked for without a directory to find them in.
    #[error("kernel modules {0:?} were requested but no modules directory was given; set it to the guest kernel's lib/modules/<version>")]
    NoModulesDir(Vec<String>),
    /// A script's interpreter chain is too long or unreadable.
    #[error("{}: cannot pack this script's interpreter ({why})", path.display())]
    Script { path: PathBuf, why: String },
    /// The cache file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// What goes into the base archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseImage {
    /// Host path of the (static) init binary, packed as `/init`.
    pub init: PathBuf,
    /// The guest kernel's `lib/modules/<version>` directory.
    pub modules_dir: Option<PathBuf>,
    /// Modules to load at boot (dependencies are added).
    pub modules: Vec<String>,
    /// Host executables (absolute) packed at their own paths with their
    /// shared libraries.
    pub executables: Vec<PathBuf>,
}

impl BaseImage {
    /// The base archive, before writing (for inspection or additions).
    /// Also returns the base spec it contains.
    pub fn archive(&self) -> Result<(Archive, job::Spec), ImageError> {
        let search = LibrarySearch::host()?;
        let mut archive = Archive::new();
        for (dir, mode) in STANDARD_DIRS {
            archive.add_dir(dir, *mode)?;
        }
        let (path, mode, major, minor) = CONSOLE;
        archive.add_char_device(path, mode, major, minor)?;

        let init = std::fs::read(&self.init).map_err(|source| ArchiveError::Host {
            path: self.init.clone(),
            source,
        })?;
        archive.add_file("init", 0o755, &init)?;
        // A dynamically linked init still boots if its libraries are there.
        add_dependencies(&mut archive, &self.init, &search, 0)?;

        let mut spec = job::Spec::default();
        match &self.modules_dir {
            Some(dir) => {
                let dir = ModulesDir::open(dir)?;
                spec.modules = pack_modules(&mut archive, &dir, &self.modules)?;
            }
            None if !self.modules.is_empty() => {
                return Err(ImageError::NoModulesDir(self.modules.clone()))
            }
            None => {}
        }
        archive.add_file(
            &format!("/{}", job::BASE_SPEC_PATH),
            0o644,
            spec.render().as_bytes(),
        )?;

        for exe in &self.executables {
            add_executable(&mut archive, exe, &search)?;
        }
        Ok((archive, spec))
    }

    /// The base archive's bytes.
    pub fn build(&self) -> Result<Vec<u8>, ImageError> {
        Ok(self.archive()?.0.to_bytes()?)
    }
}

/// Adds the host executable `exe` at its own path, with every symlink on
/// the way, its shared-library closure (or its script interpreter's).
pub fn add_executable(
    archive: &mut Archive,
    exe: &Path,
    search: &LibrarySearch,
) -> Result<(), ImageError> {
    archive.add_host_path_with_links(exe)?;
    add_dependencies(archive, exe, search, 0)
}

/// Adds what `exe` needs at run time: its libraries, or for a `#!` script
/// its interpreter (and what that needs).
fn add_dependencies(
    archive: &mut Archive,
    exe: &Path,
    search: &LibrarySearch,
    depth: usize,
) -> Result<(), ImageError> {
    if let Some(interp) = script_interpreter(exe)? {
        if depth >= MAX_SCRIPT_DEPTH {
            return Err(ImageError::Script {
                path: exe.to_path_buf(),
                why: format!("more than {MAX_SCRIPT_DEPTH} nested interpreters"),
            });
        }
        archive.add_host_path_with_links(&interp)?;
        return add_dependencies(archive, &interp, search, depth + 1);
    }
    for lib in search.closure(exe)? {
        archive.add_host_path_with_links(&lib)?;
    }
    Ok(())
}

/// The interpreter named on a `#!` line, if `path` starts with one.
fn script_interpreter(path: &Path) -> Result<Option<PathBuf>, ImageError> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let mut file = std::fs::File::open(path).map_err(|source| ArchiveError::Host {
        path: path.to_path_buf(),
        source,
    })?;
    let mut len = 0;
    while len < head.len() {
        match file.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(source) => {
                return Err(ArchiveError::Host {
                    path: path.to_path_buf(),
                    source,
                }
                .into())
            }
        }
    }
    let Some(rest) = head[..len].strip_prefix(b"#!") else {
        return Ok(None);
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    match line.split_whitespace().next() {
        Some(interp) if interp.starts_with('/') => Ok(Some(PathBuf::from(interp))),
        _ => Err(ImageError::Script {
            path: path.to_path_buf(),
            why: "the #! line names no absolute interpreter".into(),
        }),
    }
}

/// The per-run archive: only [`job::JOB_SPEC_PATH`] holding `spec`.
pub fn job_archive(spec: &job::Spec) -> Result<Vec<u8>, ImageError> {
    let mut archive = Archive::new();
    archive.add_file(
        &format!("/{}", job::JOB_SPEC_PATH),
        0o644,
        spec.render().as_bytes(),
    )?;
    Ok(archive.to_bytes()?)
}

/// `base` followed by `job`, with zeros in between if `base` does not end
/// on a multiple of [`ALIGN`] (archives from this crate always do).
pub fn concat(base: &[u8], job: &[u8]) -> Vec<u8> {
    let padded = base.len().div_ceil(ALIGN) * ALIGN;
    let mut out = Vec::with_capacity(padded + job.len());
    out.extend_from_slice(base);
    out.resize(padded, 0);
    out.extend_from_slice(job);
    out
}

/// Writes `bytes` to `path` unless the file already holds exactly them.
/// The write goes through a temporary file and a rename, so a reader never
/// sees a partial archive. Returns true if the file was (re)written.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, ImageError> {
    let err = |source| ImageError::Write {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == bytes.len() as u64 => {
            if std::fs::read(path).map_err(err)? == bytes {
                return Ok(false);
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
        remove_orphaned_temps(parent);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    Ok(true)
}

/// The process that owns a temporary entry, by its name: a file
/// `<name>.tmp-<pid>` (an atomic write in progress) or a directory
/// `.staging-<pid>-<name>` (a tree being built).
fn temp_owner(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(".staging-") {
        return rest.split('-').next()?.parse().ok();
    }
    let (_, pid) = name.rsplit_once(".tmp-")?;
    pid.parse().ok()
}

/// Deletes the temporaries in `dir` (see [`temp_owner`]) whose process no
/// longer exists: what a kestrel killed mid-write (SIGKILL, power loss)
/// left behind. A live writer's are left alone. Errors are ignored: a
/// cache that cannot be tidied still works.
pub fn remove_orphaned_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read_entries;
    use crate::cpio::tests::TempDir;
    use crate::cpio::ReadEntry;
    use crate::elf::tests::craft_elf;
    use std::collections::BTreeMap;

    /// Follows `path` inside the unpacked entries like the kernel's path
    /// walk would, returning the regular file it lands on.
    fn resolve<'a>(entries: &'a BTreeMap<String, ReadEntry>, path: &str) -> &'a ReadEntry {
        let mut pending: Vec<String> = path.split('/').rev().map(String::from).collect();
        let mut cur: Vec<String> = Vec::new();
        for _ in 0..1000 {
            let Some(part) = pending.pop() else { break };
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(part);
            let key = cur.join("/");
            let e = entries
                .get(&key)
                .unwrap_or_else(|| panic!("{key} missing while resolving {path}"));
            if e.mode & 0o170000 == 0o120000 {
                cur.pop();
                let target = String::from_utf8(e.data.clone()).unwrap();
                if target.starts_with('/') {
                    cur.clear();
                }
                pending.extend(target.split('/').rev().map(String::from));
            } else if pending.is_empty() {
                return e;
            }
        }
        panic!("{path} does not resolve to a file");
    }

    fn modules_tree() -> TempDir {
        let tmp = TempDir::new("image-modules");
        let d = tmp.path();
        std::fs::create_dir_all(d.join("kernel")).unwrap();
        let info = |n: &str| format!("name={n}\0").into_bytes();
        std::fs::write(
            d.join("kernel/fuse.ko"),
            craft_elf(None, &[], None, &[(".modinfo", &info("fuse"))]),
        )
        .unwrap();
        std::fs::write(
            d.join("kernel/virtiofs.ko"),
            craft_elf(None, &[], None, &[(".modinfo", &info("virtiofs"))]),
        )
        .unwrap();
        std::fs::write(
            d.join("modules.dep"),
            "kernel/fuse.ko:\nkernel/virtiofs.ko: kernel/fuse.ko\n",
        )
        .unwrap();
        tmp
    }

    fn base(tmp: &TempDir, mods: &TempDir) -> BaseImage {
        let init = tmp.path().join("init");
        std::fs::write(&init, craft_elf(None, &[], None, &[])).unwrap();
        BaseImage {
            init,
            modules_dir: Some(mods.path().to_path_buf()),
            modules: vec!["virtiofs".into()],
            executables: vec![PathBuf::from("/usr/bin/nproc")],
        }
    }

    #[test]
    fn base_archive_has_everything_and_is_deterministic() {
        let tmp = TempDir::new("image-base");
        let mods = modules_tree();
        let image = base(&tmp, &mods);
        let bytes = image.build().unwrap();
        assert_eq!(bytes, image.build().unwrap());
        assert_eq!(bytes.len() % ALIGN, 0);
        eprintln!(
            "base archive with nproc and its libraries: {} bytes",
            bytes.len()
        );

        let (list, _) = read_entries(&bytes).unwrap();
        let entries: BTreeMap<String, ReadEntry> =
            list.into_iter().map(|e| (e.name.clone(), e)).collect();
        assert_eq!(entries["init"].mode, 0o100755);
        for (dir, mode) in STANDARD_DIRS {
            assert_eq!(entries[*dir].mode, 0o040000 | mode, "{dir}");
        }
        assert_eq!(entries["dev/console"].rdev, (5, 1));
        let spec =
            job::Spec::parse(std::str::from_utf8(&entries[job::BASE_SPEC_PATH].data).unwrap())
                .unwrap();
        let paths: Vec<_> = spec.modules.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/kestrel/modules/fuse.ko", "/kestrel/modules/virtiofs.ko"]
        );
        for p in &paths {
            assert!(entries.contains_key(p.trim_start_matches('/')), "{p}");
        }
        assert_eq!(
            spec,
            job::Spec {
                modules: spec.modules.clone(),
                ..job::Spec::default()
            }
        );

        // nproc, its interpreter and libc resolve inside the archive to the
        // host's bytes, through the merged-usr symlinks.
        let search = LibrarySearch::host().unwrap();
        let nproc = Path::new("/usr/bin/nproc");
        for host in std::iter::once(nproc.to_path_buf()).chain(search.closure(nproc).unwrap()) {
            let inside = resolve(&entries, host.to_str().unwrap());
            assert_eq!(
                inside.data,
                std::fs::read(&host).unwrap(),
                "{}",
                host.display()
            );
        }
    }

    /// The base image for the rig's L1 on a real Debian 6.1 cloud tree.
    #[test]
    fn real_tree_base_image() {
        let Some(dir) = std::env::var_os("KESTREL_TEST_MODULES_DIR") else {
            eprintln!("skipped real_tree_base_image: KESTREL_TEST_MODULES_DIR is unset");
            return;
        };
        let tmp = TempDir::new("image-real");
        let mut image = base(&tmp, &modules_tree());
        image.modules_dir = Some(PathBuf::from(dir));
        image.modules = ["virtio_pci", "virtio_console", "virtiofs", "kvm-amd"]
            .map(String::from)
            .to_vec();
        let start = std::time::Instant::now();
        let bytes = image.build().unwrap();
        eprintln!(
            "real base archive (4 modules + deps, nproc + libs): {} bytes in {:?}",
            bytes.len(),
            start.elapsed()
        );
        if let Some(out) = std::env::var_os("KESTREL_TEST_DUMP_BASE") {
            write_if_changed(Path::new(&out), &bytes).unwrap();
        }
        let (_, spec) = image.archive().unwrap();
        let names: Vec<_> = spec.modules.iter().map(|m| m.path.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|p| p.ends_with(&format!("/{n}.ko")))
                .unwrap()
        };
        assert!(
            pos("kvm") < pos("kvm_amd") && pos("fuse") < pos("virtiofs"),
            "{names:?}"
        );
    }

    #[test]
    fn missing_modules_dir_and_missing_init_are_errors() {
        let tmp = TempDir::new("image-errors");
        let mods = modules_tree();
        let mut image = base(&tmp, &mods);
        image.modules_dir = None;
        assert!(matches!(image.build(), Err(ImageError::NoModulesDir(_))));
        image.modules.clear();
        image.build().unwrap();
        image.init = tmp.path().join("no-init");
        assert!(image.build().is_err());
        let mut image = base(&tmp, &mods);
        image.modules.push("nope".into());
        assert!(matches!(image.build(), Err(ImageError::Modules(_))));
    }

    #[test]
    fn scripts_bring_their_interpreter() {
        let tmp = TempDir::new("image-script");
        let script = tmp.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let mut archive = Archive::new();
        add_executable(&mut archive, &script, &LibrarySearch::host().unwrap()).unwrap();
        let (list, _) = read_entries(&archive.to_bytes().unwrap()).unwrap();
        let entries: BTreeMap<String, ReadEntry> =
            list.into_iter().map(|e| (e.name.clone(), e)).collect();
        assert_eq!(
            resolve(&entries, "bin/sh").data,
            std::fs::read("/bin/sh").unwrap()
        );
        assert!(entries.keys().any(|k| k.ends_with("libc.so.6")));
    }

    #[test]
    fn job_archive_concatenates_after_base() {
        let spec = job::Spec {
            argv: vec!["nproc".into()],
            status: Some(job::Dest::VirtioPort("kestrel.status".into())),
            ..job::Spec::default()
        };
        let job_bytes = job_archive(&spec).unwrap();
        assert_eq!(job_bytes, job_archive(&spec).unwrap());
        let (entries, _) = read_entries(&job_bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["kestrel", job::JOB_SPEC_PATH]);
        assert_eq!(
            job::Spec::parse(std::str::from_utf8(&entries[1].data).unwrap()),
            Ok(spec)
        );

        let mut base = Archive::new();
        base.add_file("init", 0o755, b"x").unwrap();
        let base = base.to_bytes().unwrap();
        let both = concat(&base, &job_bytes);
        assert_eq!(both.len(), base.len() + job_bytes.len());
        let (first, _) = read_entries(&both).unwrap();
        assert_eq!(first[0].name, "init");
        let (second, _) = read_entries(&both[base.len()..]).unwrap();
        assert_eq!(second[1].name, job::JOB_SPEC_PATH);
        // An unaligned base gets padded so the job starts aligned.
        let odd = concat(b"abc", &job_bytes);
        assert_eq!(&odd[ALIGN..], &job_bytes[..]);
    }

    #[test]
    fn cache_is_written_only_when_changed() {
        let tmp = TempDir::new("image-cache");
        let path = tmp.path().join("cache/base.cpio");
        assert!(write_if_changed(&path, b"one").unwrap());
        assert!(!write_if_changed(&path, b"one").unwrap());
        assert!(write_if_changed(&path, b"two").unwrap());
        assert!(write_if_changed(&path, b"three").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("cache"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1);
    }

    /// The pid of a process that has exited (its number is free again).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_killed_writers_temporaries_go_and_a_live_ones_stay() {
        let tmp = TempDir::new("orphans");
        let dir = tmp.path();
        let dead = dead_pid();
        let live = std::process::id();
        let names = [
            format!("base-x.cpio.tmp-{dead}"),
            format!(".abc.snap.tmp-{dead}"),
            format!("base-x.cpio.tmp-{live}"),
            "base-x.cpio".to_string(),
            "notes.tmp-abc".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        std::fs::create_dir_all(dir.join(format!(".staging-{dead}-6.1/kernel"))).unwrap();
        std::fs::create_dir_all(dir.join(format!(".staging-{live}-6.1"))).unwrap();
        // A writer of this directory tidies it first.
        write_if_changed(&dir.join("new.cpio"), b"data").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            format!("base-x.cpio.tmp-{live}"),
            "base-x.cpio".to_string(),
            "notes.tmp-abc".to_string(),
            format!(".staging-{live}-6.1"),
            "new.cpio".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}

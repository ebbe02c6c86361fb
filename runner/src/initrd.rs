//! kestrel's own initramfs, built when `kestrel run` gets no `--initrd`:
//! a cached **base** archive (our static init, the kernel modules
//! Kestrel's devices need, `--pack`ed executables with their libraries)
//! followed by a per-run **job** archive (the command, its environment and
//! where its status and output go).
//!
//! Invariants: the base archive is a pure function of its inputs and is
//! cached under a name derived from them ([`base_key`]), so it is rebuilt
//! only when an input changes; the job archive is built per run and never
//! written to disk ([`boot::Initrd::BaseAndJob`] concatenates at load time).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kestrel_initramfs::elf::LibrarySearch;
use kestrel_initramfs::image::{job_archive, write_if_changed, BaseImage, ImageError};
use kestrel_initramfs::job::{Dest, Root, Spec, Tty};
use kestrel_initramfs::modules::{ModuleError, ModulesDir};

use crate::boot;
use crate::guest_root::Plan;
use crate::log;

/// Environment variable naming the static guest init.
pub const INIT_ENV: &str = "KESTREL_INIT";
/// Where `cargo xtask` builds the init, relative to the target dir.
pub const INIT_IN_TARGET: &str = "x86_64-unknown-linux-gnu/release/kestrel-init";
/// Modules Kestrel's devices need, loaded when the kernel has them as
/// modules (built-ins and absent ones are skipped): the virtio-mmio
/// transport, virtio-console, virtio-fs (with `fuse`, its dependency) for
/// a shared root, and overlayfs, with which the init makes mount points
/// the read-only host root lacks (`--share HOST:/new/path`).
pub const DEVICE_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "fuse",
    "virtiofs",
    "overlay",
];
/// `PATH` of the guest command.
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The status channel as the init sees it: COM2 ([`crate::layout::COM2_PORT`]).
pub const STATUS_DEVICE: &str = "/dev/ttyS1";
/// Cached base archives unused for this long are deleted on the next build.
const CACHE_KEEP: Duration = Duration::from_secs(14 * 24 * 3600);
/// At most this many cached base archives are kept.
const CACHE_MAX: usize = 16;
/// Bumped when the cache key's meaning changes.
const KEY_VERSION: &str = "kestrel-base-1";

/// A stream of the guest command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where the guest command's `stream` goes: its own virtio-console port
/// (the VMM's console device sends them to kestrel's stdout and stderr).
pub fn output_dest(stream: Stream) -> Dest {
    use crate::devices::virtio::console::{STDERR_PORT, STDOUT_PORT};
    match stream {
        Stream::Stdout => Dest::VirtioPort(STDOUT_PORT.to_string()),
        Stream::Stderr => Dest::VirtioPort(STDERR_PORT.to_string()),
    }
}

/// Why kestrel's own initramfs could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// No init binary anywhere kestrel looks.
    #[error("no guest init at {0} and none built into this kestrel (built with KESTREL_EMBED_INIT=0): build it with `cargo xtask selftest`, set KESTREL_INIT, or pass --init PATH")]
    NoInit(PathBuf),
    /// The built-in init could not be written out.
    #[error("cannot unpack kestrel's built-in guest init to {0}; check that the kernel cache directory is writable or pass --init PATH")]
    EmbeddedInit(String),
    /// `--init` or `$KESTREL_INIT` names a missing file.
    #[error("{what} {path} does not exist: pass the static kestrel-init binary (cargo xtask builds it to <target>/{INIT_IN_TARGET})")]
    InitMissing {
        /// `--init` or `KESTREL_INIT`.
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A `--pack` argument is not an executable on this host.
    #[error("--pack {0}: no such file on this host (and no executable of that name on PATH)")]
    PackMissing(String),
    /// The command's program is not in the initramfs.
    #[error("`{program}` is not in the guest's initramfs: add --pack {hint}")]
    NotPacked {
        /// argv[0].
        program: String,
        /// What to pass to `--pack`.
        hint: String,
    },
    /// The modules directory cannot be used.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// Building or writing an archive failed.
    #[error("cannot build the initramfs: {0}")]
    Image(#[from] ImageError),
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--init`.
    pub init: Option<PathBuf>,
    /// The kernel's `lib/modules/<release>` (or `--modules`).
    pub modules_dir: Option<PathBuf>,
    /// `--pack` arguments as given.
    pub pack: Vec<String>,
    /// `-- CMD ARGS…`.
    pub command: Vec<String>,
    /// Run the command on the guest's terminal (the console port), with
    /// this starting size (rows, columns).
    pub terminal: Option<(u16, u16)>,
    /// Kernel release, for the cache file name.
    pub release: String,
    /// Where cached base archives live.
    pub cache_dir: PathBuf,
    /// The guest's root (default: the initramfs, nothing shared).
    pub guest: Plan,
}

/// Whether the base archive was built or taken from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Built now (and cached).
    Built,
    /// Reused from the cache.
    Reused,
}

/// The initrd for one run and how it was obtained.
#[derive(Debug)]
pub struct Prepared {
    /// Base ++ job.
    pub initrd: boot::Initrd,
    /// The base archive alone (for warm starts, which get the job over COM2).
    pub base: PathBuf,
    /// The job spec's text (what the job archive carries).
    pub job_spec: String,
    /// Size of the base archive.
    pub base_bytes: u64,
    /// Built or reused.
    pub cache: CacheUse,
    /// Time spent on the base archive (key, then build or reuse).
    pub took: Duration,
}

/// Builds (or reuses) the base archive and the job archive for `req`.
pub fn prepare(req: &Request) -> Result<Prepared, InitrdError> {
    let started = Instant::now();
    let init = find_init(req.init.as_deref())?;
    let executables = req
        .pack
        .iter()
        .map(|p| resolve_pack(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let (Some(program), Root::Initramfs) = (req.command.first(), &req.guest.root) {
        check_packed(program, &executables)?;
    }
    let mut image = BaseImage {
        init,
        modules_dir: req.modules_dir.clone(),
        modules: DEVICE_MODULES.iter().map(|m| m.to_string()).collect(),
        executables,
    };
    let key = base_key(&image);
    let path = req
        .cache_dir
        .join(format!("base-{}-{key:016x}.cpio", file_safe(&req.release)));
    let (base_bytes, cache) = match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() > 0 => {
            mark_used(&path);
            (meta.len(), CacheUse::Reused)
        }
        _ => {
            let bytes = build_without_absent_modules(&mut image)?;
            write_if_changed(&path, &bytes)?;
            prune(&req.cache_dir, &path);
            (bytes.len() as u64, CacheUse::Built)
        }
    };
    let took = started.elapsed();
    log::debug(format_args!(
        "initramfs base {} ({} KiB, {}) in {} ms",
        path.display(),
        base_bytes / 1024,
        match cache {
            CacheUse::Built => "built",
            CacheUse::Reused => "reused",
        },
        took.as_millis()
    ));
    let mut spec = job_spec_for(&req.command, &req.guest);
    spec.tty = req.terminal.map(|(rows, cols)| Tty {
        port: crate::terminal::TTY_PORT.into(),
        rows,
        cols,
        winsize_port: crate::terminal::WINSIZE_PORT.into(),
    });
    let job = job_archive(&spec)?;
    Ok(Prepared {
        base: path.clone(),
        job_spec: spec.render(),
        initrd: boot::Initrd::BaseAndJob { base: path, job },
        base_bytes,
        cache,
        took,
    })
}

/// The job spec for `command` (empty: the init only reports status 0)
/// in the initramfs root.
pub fn job_spec(command: &[String]) -> Spec {
    job_spec_for(command, &Plan::default())
}

/// The job spec for `command` in the guest root `guest`: its shares,
/// tmpfs, working directory, user and `HOME`.
pub fn job_spec_for(command: &[String], guest: &Plan) -> Spec {
    let home = if guest.home.is_empty() {
        "/root"
    } else {
        guest.home.as_str()
    };
    let mut env = vec![format!("PATH={GUEST_PATH}"), format!("HOME={home}")];
    if let Some(name) = guest.user.as_ref().and_then(|u| u.name.as_ref()) {
        env.push(format!("USER={name}"));
        env.push(format!("LOGNAME={name}"));
    }
    if let Some(term) = std::env::var_os("TERM").and_then(|t| t.into_string().ok()) {
        env.push(format!("TERM={term}"));
    }
    env.extend(guest.env.iter().cloned());
    Spec {
        argv: command.to_vec(),
        env,
        cwd: guest.cwd.clone(),
        uid: guest.user.as_ref().map(|u| u.uid),
        gid: guest.user.as_ref().map(|u| u.gid),
        root: guest.root.clone(),
        tmpfs: guest.tmpfs.clone(),
        shares: guest.shares.clone(),
        stdout: output_dest(Stream::Stdout),
        stderr: output_dest(Stream::Stderr),
        status: Some(Dest::Path(STATUS_DEVICE.to_string())),
        ..Spec::default()
    }
}

/// Whether the kernel can mount virtio-fs: `virtiofs` is a module in (or
/// built into) `modules_dir`, else its `.config` says `CONFIG_VIRTIO_FS=y`.
pub fn has_virtiofs(modules_dir: Option<&Path>, config: Option<&Path>) -> bool {
    // Where every kernel since 5.4 puts it: a few stats instead of opening
    // the whole tree (a walk of thousands of directories without a
    // modules.dep, slow on a virtio-fs share).
    const AT: &str = "kernel/fs/fuse/virtiofs.ko";
    let in_place = modules_dir.is_some_and(|d| {
        ["", ".xz", ".zst", ".gz"]
            .iter()
            .any(|ext| d.join(format!("{AT}{ext}")).is_file())
            || std::fs::read_to_string(d.join("modules.builtin"))
                .is_ok_and(|b| b.lines().any(|l| l == AT))
    });
    let module = in_place
        || modules_dir
            .and_then(|d| ModulesDir::open(d).ok())
            .is_some_and(|m| m.resolve(&["virtiofs"]).is_ok());
    module
        || config
            .and_then(|c| std::fs::read_to_string(c).ok())
            .is_some_and(|text| text.lines().any(|l| l.trim() == "CONFIG_VIRTIO_FS=y"))
}

/// The static init built into this binary (`build.rs`); empty when it was
/// built with `KESTREL_EMBED_INIT=0`.
pub static EMBEDDED_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kestrel-init"));
/// [`EMBEDDED_INIT`]'s SHA-256 (hex), computed by `build.rs`.
const EMBEDDED_INIT_SHA256: &str = env!("KESTREL_EMBEDDED_INIT_SHA256");

/// Writes [`EMBEDDED_INIT`] once into `<dir>/<hash of it>/kestrel-init`
/// (the packer reads the init from a file) and returns that path.
fn embedded_init_in(dir: &Path) -> Result<PathBuf, InitrdError> {
    let path = dir.join(&EMBEDDED_INIT_SHA256[..16]).join("kestrel-init");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == EMBEDDED_INIT.len() as u64) {
        return Ok(path);
    }
    let io = |e: std::io::Error| InitrdError::EmbeddedInit(format!("{}: {e}", path.display()));
    let parent = path.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(io)?;
    let tmp = parent.join(format!("kestrel-init.tmp-{}", std::process::id()));
    std::fs::write(&tmp, EMBEDDED_INIT).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

/// The static init: `--init`, else `$KESTREL_INIT`, else the one built
/// into this binary (unpacked into the kernel cache's `init/`), else where
/// `cargo xtask` builds it in the target dir this `kestrel` was built in.
pub fn find_init(explicit: Option<&Path>) -> Result<PathBuf, InitrdError> {
    let given = explicit.map(|p| ("--init", p.to_path_buf())).or_else(|| {
        std::env::var_os(INIT_ENV)
            .filter(|v| !v.is_empty())
            .map(|v| (INIT_ENV, PathBuf::from(v)))
    });
    if let Some((what, path)) = given {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(InitrdError::InitMissing { what, path })
        };
    }
    if !EMBEDDED_INIT.is_empty() {
        let cache = kestrel_kernels::Cache::from_env()
            .map_err(|e| InitrdError::EmbeddedInit(e.to_string()))?;
        return embedded_init_in(&cache.root().join("init"));
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let candidates = init_candidates(&exe);
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| InitrdError::NoInit(candidates.into_iter().next().unwrap_or_default()))
}

/// Where the init may be for a `kestrel` at `exe`: `<target>/<profile>/kestrel`
/// → `<target>/x86_64-unknown-linux-gnu/release/kestrel-init`; an installed
/// `kestrel` → `kestrel-init` beside it.
fn init_candidates(exe: &Path) -> Vec<PathBuf> {
    let dir = exe.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    if let Some(target) = dir.parent() {
        out.push(target.join(INIT_IN_TARGET));
    }
    out.push(dir.join("kestrel-init"));
    out
}

/// A `--pack` argument as an absolute host path: a name without `/` is
/// looked up on `PATH`.
fn resolve_pack(arg: &str) -> Result<PathBuf, InitrdError> {
    let missing = || InitrdError::PackMissing(arg.to_string());
    if arg.is_empty() {
        return Err(missing());
    }
    let path = if arg.contains('/') {
        std::path::absolute(arg).map_err(|_| missing())?
    } else {
        which(arg).ok_or_else(missing)?
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing())
    }
}

/// `name` on the host's `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The command's program must be in the initramfs (the guest root today):
/// a bare name must be the file name of a packed executable, a path must
/// be a packed path (or the same host file).
fn check_packed(program: &str, packed: &[PathBuf]) -> Result<(), InitrdError> {
    let same_file = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let found = if program.contains('/') {
        let p = Path::new(program);
        packed.iter().any(|x| x == p || same_file(x, p))
    } else {
        packed.iter().any(|x| {
            x.file_name().is_some_and(|n| n == program)
                || x.canonicalize()
                    .is_ok_and(|c| c.file_name().is_some_and(|n| n == program))
        })
    };
    if found {
        return Ok(());
    }
    let hint = if program.contains('/') {
        program.to_string()
    } else {
        which(program).map_or_else(
            || format!("/path/to/{program}"),
            |p| p.display().to_string(),
        )
    };
    Err(InitrdError::NotPacked {
        program: program.to_string(),
        hint,
    })
}

/// Builds `image`; a requested device module the kernel does not have is
/// left out (that device is then unavailable) and the build retried. No
/// modules directory: none are requested (a kernel without modules has
/// what it has built in). Built-in modules resolve to nothing.
fn build_without_absent_modules(image: &mut BaseImage) -> Result<Vec<u8>, InitrdError> {
    if image.modules_dir.is_none() {
        image.modules.clear();
    }
    loop {
        match image.build() {
            Err(ImageError::Modules(ModuleError::NotFound {
                name, needed_by, ..
            })) if needed_by.is_empty() && image.modules.contains(&name) => {
                log::debug(format_args!("the kernel has no {name} module; left out"));
                image.modules.retain(|m| *m != name);
            }
            other => return Ok(other?),
        }
    }
}

/// The cache key of `image`: everything the archive's bytes depend on.
/// The init is hashed by content (it changes with every rebuild); other
/// files by identity and modification time (kernel cache entries never
/// change in place; host executables and libraries change by package
/// upgrades, which replace the files). kestrel's own executable is part of
/// the key, so a new kestrel (perhaps a new archive layout) rebuilds.
pub fn base_key(image: &BaseImage) -> u64 {
    let mut h = DefaultHasher::new();
    KEY_VERSION.hash(&mut h);
    if let Ok(exe) = std::env::current_exe() {
        stamp(&exe, &mut h);
    }
    image.init.hash(&mut h);
    std::fs::read(&image.init).ok().hash(&mut h);
    image.modules.hash(&mut h);
    image.modules_dir.hash(&mut h);
    if let Some(dir) = &image.modules_dir {
        stamp(dir, &mut h);
        for f in ["modules.dep", "modules.builtin", "modules.alias"] {
            stamp(&dir.join(f), &mut h);
        }
    }
    let search = LibrarySearch::host().ok();
    for exe in &image.executables {
        exe.hash(&mut h);
        stamp_executable(exe, search.as_ref(), &mut h, 0);
    }
    h.finish()
}

/// Hashes what identifies a file's current version (none if it is missing).
fn stamp(path: &Path, h: &mut DefaultHasher) {
    path.hash(h);
    match std::fs::metadata(path) {
        Ok(m) => (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()).hash(h),
        Err(e) => e.kind().hash(h),
    }
}

/// [`stamp`] for an executable, its libraries, or its script interpreter.
fn stamp_executable(exe: &Path, search: Option<&LibrarySearch>, h: &mut DefaultHasher, depth: u8) {
    stamp(exe, h);
    if let Some(interp) = script_interpreter(exe) {
        if depth < 4 {
            stamp_executable(&interp, search, h, depth + 1);
        }
        return;
    }
    if let Some(libs) = search.and_then(|s| s.closure(exe).ok()) {
        for lib in libs {
            stamp(&lib, h);
        }
    }
}

/// The absolute interpreter of a `#!` script.
fn script_interpreter(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let rest = head[..n].strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let interp = std::str::from_utf8(line).ok()?.split_whitespace().next()?;
    interp.starts_with('/').then(|| PathBuf::from(interp))
}

/// Deletes other cached base archives unused for [`CACHE_KEEP`], and all
/// but the [`CACHE_MAX`] most recently used (every new `kestrel` build
/// keys new archives, so old ones would otherwise pile up).
fn prune(dir: &Path, keep: &Path) {
    prune_cache(dir, keep, ("base-", ".cpio"), CACHE_MAX, Some(CACHE_KEEP));
}

/// Deletes the files in `dir` named `<prefix>…<suffix>` other than `keep`
/// that were last used (mtime) longer than `max_age` ago, and all but the
/// `max` most recently used (counting `keep`). Errors are ignored: a cache
/// that cannot be tidied still works.
pub(crate) fn prune_cache(
    dir: &Path,
    keep: &Path,
    (prefix, suffix): (&str, &str),
    max: usize,
    max_age: Option<Duration>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != keep)
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (i, (used, path)) in found.iter().enumerate() {
        let stale = max_age.is_some_and(|limit| used.elapsed().is_ok_and(|age| age > limit));
        if stale || i + 1 >= max {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A cache entry's mtime is moved to now at a use only when it is older
/// than this: pruning needs "used lately", not the last second.
const MARK_USED_EVERY: Duration = Duration::from_secs(3600);

/// Marks the cache entry `path` as used, for [`prune_cache`]: its mtime
/// set to now, but only if it is older than [`MARK_USED_EVERY`]. Touching
/// it at every use changed the file's stamp at every run, and a cache on a
/// FUSE or network filesystem (the rig's L1 reads the host's cache over
/// virtio-fs; NFS homes) then drops the file's cached pages at the next
/// open: each boot read the 50 MB unpacked kernel anew (runner/NOTES.md,
/// "Boot speed", session 16). A read-only cache is fine (nothing marked).
pub(crate) fn mark_used(path: &Path) {
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > MARK_USED_EVERY);
    if old {
        if let Ok(f) = std::fs::File::options().append(true).open(path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
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

/// The default cache directory: `<kernel cache root>/initramfs` (that is
/// `$KESTREL_CACHE_DIR`, `$XDG_CACHE_HOME/kestrel` or `~/.cache/kestrel`),
/// else `<target>/kestrel/initramfs` beside this `kestrel`.
pub fn default_cache_dir() -> PathBuf {
    if let Ok(cache) = kestrel_kernels::Cache::from_env() {
        return cache.root().join("initramfs");
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    target.join("kestrel").join("initramfs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_initramfs::cpio::read_entries;
    use kestrel_initramfs::job::JOB_SPEC_PATH;

    fn scratch(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("kestrel-initrd-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_job_reports_on_com2_with_a_sane_environment() {
        let spec = job_spec(&["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(spec.argv, ["sh", "-c", "exit 3"]);
        assert_eq!(spec.status, Some(Dest::Path("/dev/ttyS1".into())));
        assert_eq!(
            (spec.stdout.clone(), spec.stderr.clone()),
            (
                Dest::VirtioPort("kestrel.stdout".into()),
                Dest::VirtioPort("kestrel.stderr".into())
            )
        );
        assert_eq!(spec.env[0], format!("PATH={GUEST_PATH}"));
        assert!(spec.env.contains(&"HOME=/root".to_string()));
        assert!(job_spec(&[]).argv.is_empty());
    }

    #[test]
    fn the_built_in_init_is_unpacked_once() {
        if EMBEDDED_INIT.is_empty() {
            return; // built with KESTREL_EMBED_INIT=0
        }
        assert_eq!(&EMBEDDED_INIT[..4], b"\x7fELF");
        assert_eq!(
            EMBEDDED_INIT_SHA256,
            kestrel_kernels::build::sha256_hex(EMBEDDED_INIT)
        );
        let dir = tempfile::tempdir().unwrap();
        let a = embedded_init_in(dir.path()).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), EMBEDDED_INIT);
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        assert_eq!(embedded_init_in(dir.path()).unwrap(), a);
        assert_eq!(std::fs::metadata(&a).unwrap().modified().unwrap(), mtime);
    }

    #[test]
    fn the_init_is_looked_for_where_xtask_builds_it() {
        let c = init_candidates(Path::new("/w/target/release/kestrel"));
        assert_eq!(
            c,
            [
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/release/kestrel-init"),
                PathBuf::from("/w/target/release/kestrel-init"),
            ]
        );
        let msg = InitrdError::NoInit(c[0].clone()).to_string();
        assert!(
            msg.contains("cargo xtask") && msg.contains("--init"),
            "{msg}"
        );
        let err = find_init(Some(Path::new("/no/such/init"))).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--init /no/such/init does not exist"));
    }

    #[test]
    fn the_program_must_be_packed() {
        let sh = which("sh").expect("sh on PATH");
        check_packed("sh", std::slice::from_ref(&sh)).unwrap();
        check_packed(sh.to_str().unwrap(), std::slice::from_ref(&sh)).unwrap();
        let err = check_packed("sh", &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "`sh` is not in the guest's initramfs: add --pack {}",
                sh.display()
            )
        );
        let err = check_packed("no-such-tool-here", &[])
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("--pack /path/to/no-such-tool-here"), "{err}");
        assert_eq!(resolve_pack("sh").unwrap(), sh);
        assert!(matches!(
            resolve_pack("/no/such"),
            Err(InitrdError::PackMissing(_))
        ));
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used() {
        let dir = scratch("prune");
        let now = SystemTime::now();
        for i in 0..20u64 {
            let p = dir.join(format!("base-x-{i:02}.cpio"));
            std::fs::write(&p, b"x").unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(now - Duration::from_secs(60 * i)).unwrap();
        }
        let ancient = dir.join("base-y-old.cpio");
        std::fs::write(&ancient, b"x").unwrap();
        let f = std::fs::File::options()
            .append(true)
            .open(&ancient)
            .unwrap();
        f.set_modified(now - CACHE_KEEP - Duration::from_secs(1))
            .unwrap();
        std::fs::write(dir.join("other.txt"), b"x").unwrap();
        let keep = dir.join("base-x-19.cpio");
        prune(&dir, &keep);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = (0..CACHE_MAX as u64 - 1)
            .map(|i| format!("base-x-{i:02}.cpio"))
            .chain(["base-x-19.cpio".to_string(), "other.txt".to_string()])
            .collect();
        want.sort();
        assert_eq!(left, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_use_moves_the_mtime_only_of_an_entry_not_marked_lately() {
        let dir = scratch("mark");
        let now = SystemTime::now();
        let set = |name: &str, age: Duration| {
            let p = dir.join(name);
            std::fs::write(&p, b"x").unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(now - age).unwrap();
            p
        };
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let recent = set("recent", Duration::from_secs(60));
        let stale = set("stale", MARK_USED_EVERY + Duration::from_secs(60));
        let before = mtime(&recent);
        mark_used(&recent);
        mark_used(&stale);
        // The recent one keeps its stamp (a FUSE client keeps its pages);
        // the stale one is marked now, for pruning.
        assert_eq!(mtime(&recent), before);
        // (Seconds of slack for a filesystem that stores coarse times.)
        assert!(mtime(&stale) + Duration::from_secs(5) >= now);
        mark_used(&dir.join("missing"));
        assert!(!dir.join("missing").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_base_is_built_once_then_reused_until_an_input_changes() {
        let dir = scratch("cache");
        // Any ELF serves as the init here; its closure gets packed too.
        let elf = std::fs::read("/bin/true").unwrap();
        let init = dir.join("init");
        std::fs::write(&init, &elf).unwrap();
        let req = Request {
            init: Some(init.clone()),
            pack: vec!["sh".into()],
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            release: "6.1.0-test".into(),
            cache_dir: dir.join("cache"),
            ..Request::default()
        };
        let first = prepare(&req).unwrap();
        assert_eq!(first.cache, CacheUse::Built);
        let second = prepare(&req).unwrap();
        assert_eq!(second.cache, CacheUse::Reused);
        assert_eq!(first.initrd, second.initrd);

        // The initrd is base ++ job; the job archive holds the command.
        let bytes = second.initrd.read().unwrap();
        let (base, trailer_end) = read_entries(&bytes).unwrap();
        let end = trailer_end.next_multiple_of(512);
        assert_eq!(end as u64, second.base_bytes);
        assert!(base.iter().any(|e| e.name == "init" && e.data == elf));
        let (job, _) = read_entries(&bytes[end..]).unwrap();
        let spec = job.iter().find(|e| e.name == JOB_SPEC_PATH).unwrap();
        let spec = Spec::parse(std::str::from_utf8(&spec.data).unwrap()).unwrap();
        assert_eq!(spec, job_spec(&req.command));

        // A new init is a new base.
        std::fs::write(&init, [elf.as_slice(), b"v2"].concat()).unwrap();
        let third = prepare(&req).unwrap();
        assert_eq!(third.cache, CacheUse::Built);
        assert_ne!(third.initrd, first.initrd);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn absent_device_modules_are_left_out() {
        let dir = scratch("modules");
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        // Any ELF passes as a module file here: with modules.dep nothing
        // reads its .modinfo.
        std::fs::copy("/bin/true", dir.join("kernel/virtio_mmio.ko")).unwrap();
        std::fs::write(dir.join("modules.dep"), "kernel/virtio_mmio.ko:\n").unwrap();
        std::fs::write(dir.join("modules.builtin"), "kernel/virtio_console.ko\n").unwrap();
        let mut image = BaseImage {
            init: "/bin/true".into(),
            modules_dir: Some(dir.clone()),
            modules: DEVICE_MODULES.iter().map(|m| m.to_string()).collect(),
            executables: Vec::new(),
        };
        // virtio_mmio: a module; virtio_console: built in (packs nothing);
        // virtiofs: absent, dropped.
        build_without_absent_modules(&mut image).unwrap();
        assert_eq!(image.modules, ["virtio_mmio", "virtio_console"]);
        let (_, spec) = image.archive().unwrap();
        assert_eq!(spec.modules.len(), 1);
        assert!(spec.modules[0].path.ends_with("/virtio_mmio.ko"));

        image.modules_dir = None;
        build_without_absent_modules(&mut image).unwrap();
        assert!(image.modules.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

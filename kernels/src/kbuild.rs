//! Out-of-tree kernel builds that boot in Kestrel (`kestrel kernel build`,
//! `cargo xtask kernel build`, bisect steps, `kestrel kunit`).
//!
//! A build: check the tree and the host tools → reuse the configuration
//! when its stamp (base, fragments, the size and mtime of every Kconfig
//! input) is unchanged, else make it in a scratch object dir (`<out>/.kestrel-config/`: `make tinyconfig` or
//! `defconfig`, the fragments through the kernel's own `merge_config.sh -m`,
//! `make olddefconfig`) → verify every requested symbol and name what
//! dropped each missing one → copy the `.config` into `<out>` only if it
//! changed → `make O=<out> bzImage` (+ `modules` when the config has
//! `=m`) → `make kernelrelease` → the manifest.
//!
//! Invariants:
//! - Nothing is written into the source tree (`make O=`, `merge_config.sh`
//!   runs in the scratch dir); for a git tree `git status` is compared
//!   before and after, and a tree configured in-tree is refused.
//! - `<out>/.config` is rewritten only when its content changes, so a
//!   second build with nothing changed does no compile work (make's own
//!   dependency tracking decides everything else).
//! - One build per output directory at a time (an flock on
//!   `<out>/.kestrel-build.lock`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::build::{sha256_hex, BuildManifest, MANIFEST_FILE};
use crate::host as tools;
use crate::kconfig::{self, DotConfig, Kconfig};

/// Kestrel's fragment: what the VMM and the init need, built in.
pub const KESTREL_FRAGMENT: &str = include_str!("../fragments/kestrel.config");
/// The scratch object dir inside an output dir where configurations are made.
const CONFIG_DIR: &str = ".kestrel-config";
/// The architecture we build for.
const ARCH: &str = "x86_64";
/// Where the bzImage lands inside the output dir.
pub const BZIMAGE: &str = "arch/x86/boot/bzImage";

/// The configuration a build starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Tinyconfig,
    Defconfig,
}

impl Base {
    fn target(self) -> &'static str {
        match self {
            Base::Tinyconfig => "tinyconfig",
            Base::Defconfig => "defconfig",
        }
    }
}

/// The base and the user's fragments, from `--config` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSet {
    pub base: Base,
    /// User fragments (absolute), merged after Kestrel's, in order.
    pub fragments: Vec<PathBuf>,
}

impl ConfigSet {
    /// `kestrel`/`tinyconfig` and `defconfig` pick the base; anything else
    /// is a fragment file.
    pub fn parse(values: &[String]) -> Result<ConfigSet> {
        let mut set = ConfigSet {
            base: Base::Tinyconfig,
            fragments: Vec::new(),
        };
        for v in values {
            match v.as_str() {
                "kestrel" | "tinyconfig" => {}
                "defconfig" => set.base = Base::Defconfig,
                file => {
                    let path = Path::new(file);
                    if !path.is_file() {
                        bail!(
                            "--config {file}: no such fragment file; use kestrel, defconfig or the path of a config fragment"
                        );
                    }
                    set.fragments.push(
                        std::fs::canonicalize(path)
                            .with_context(|| format!("cannot resolve {file}"))?,
                    );
                }
            }
        }
        Ok(set)
    }

    /// For the manifest and the default out dir: `kestrel` then the files.
    fn labels(&self) -> Vec<String> {
        std::iter::once("kestrel".to_owned())
            .chain(self.fragments.iter().map(|f| f.display().to_string()))
            .collect()
    }
}

/// `<base>/<16 hex digits>`: one dir per source tree and configuration
/// set under `base` (xtask: `target/kestrel/kbuild`; the installed
/// `kestrel`: the cache's `kbuild/`), so rebuilds are incremental.
pub fn default_out(base: &Path, src: &Path, configs: &ConfigSet) -> PathBuf {
    let mut key = src.display().to_string();
    key.push('\0');
    key.push_str(configs.base.target());
    for l in configs.labels() {
        key.push('\0');
        key.push_str(&l);
    }
    base.join(format!("{:016x}", fnv1a(key.as_bytes())))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where make's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// To our stderr (interactive builds).
    Stderr,
    /// Only to `<out>/kestrel-build.log`; a failure shows its tail.
    LogFile,
}

/// One build to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub src: PathBuf,
    pub out: PathBuf,
    pub configs: ConfigSet,
    pub jobs: usize,
    pub output: Output,
    /// Fixed `KBUILD_BUILD_*` values (user, host, timestamp, version) so
    /// that builds of different revisions differ only by their source.
    pub reproducible: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub out: PathBuf,
    pub bzimage: PathBuf,
    pub release: String,
    pub config_changed: bool,
    pub seconds: f64,
}

/// Why a build failed, for bisect steps that must tell "cannot build this
/// revision" (skip) from "the tool itself is broken" (abort).
#[derive(Debug)]
pub enum BuildError {
    /// The source does not build or configure: a property of the revision.
    Source(anyhow::Error),
    /// Everything else: bad arguments, missing tools, I/O.
    Setup(anyhow::Error),
}

impl From<anyhow::Error> for BuildError {
    fn from(e: anyhow::Error) -> Self {
        BuildError::Setup(e)
    }
}

impl BuildError {
    pub fn into_inner(self) -> anyhow::Error {
        match self {
            BuildError::Source(e) | BuildError::Setup(e) => e,
        }
    }
}

/// `--jobs`, defaulting to the number of CPUs.
pub fn jobs(given: Option<usize>) -> Result<usize> {
    match given {
        Some(0) => bail!("--jobs must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
}

/// The source tree, absolute, checked to be a Linux tree that is not
/// configured in-tree.
pub fn check_source_tree(src: &Path) -> Result<PathBuf> {
    if !src.is_dir() {
        bail!(
            "--src {}: no such directory; pass the top directory of a Linux kernel source tree",
            src.display()
        );
    }
    let src =
        std::fs::canonicalize(src).with_context(|| format!("cannot resolve {}", src.display()))?;
    let needed = [
        "Makefile",
        "Kconfig",
        "scripts/kconfig/merge_config.sh",
        "arch/x86/Kconfig",
    ];
    if let Some(missing) = needed.iter().find(|n| !src.join(n).is_file()) {
        bail!(
            "{} is not a Linux kernel source tree (it has no {missing}); pass the top directory of a kernel tree",
            src.display()
        );
    }
    for marker in [".config", "include/config/auto.conf", "include/generated"] {
        if src.join(marker).exists() {
            bail!(
                "{} is configured in-tree ({marker} exists), and out-of-tree builds need a clean source tree: run `make mrproper` there or use a clean tree",
                src.display()
            );
        }
    }
    Ok(src)
}

/// The C compiler make is told to use: ccache in front of gcc when installed.
fn compiler() -> String {
    if tools::which("ccache").is_some() {
        "ccache gcc".to_owned()
    } else {
        "gcc".to_owned()
    }
}

/// Host programs and headers a kernel build needs, with their Debian packages.
const HOST_NEEDS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("perl", "perl"),
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
];

/// Installs missing build tools with apt when root; otherwise names them.
pub fn ensure_host_tools() -> Result<()> {
    let missing: Vec<&str> = HOST_NEEDS
        .iter()
        .filter(|(what, _)| {
            if what.starts_with('/') {
                !Path::new(what).exists()
            } else {
                tools::which(what).is_none()
            }
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || tools::which("apt-get").is_none() {
        bail!(
            "building a kernel needs these packages, which are missing: {} (sudo apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    tools::apt_install(&missing)
}

/// `make -C SRC O=OBJ ARCH=x86_64 CC=…` plus `args`.
fn make(plan: &Plan, obj: &Path, args: &[&str]) -> Command {
    let cc = compiler();
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(&plan.src)
        .arg(format!("O={}", obj.display()))
        .arg(format!("ARCH={ARCH}"))
        .arg(format!("CC={cc}"))
        .args(args)
        .current_dir(obj)
        .stdin(Stdio::null());
    if plan.reproducible {
        cmd.env("KBUILD_BUILD_USER", "kestrel")
            .env("KBUILD_BUILD_HOST", "kestrel")
            .env("KBUILD_BUILD_TIMESTAMP", "Thu Jan  1 00:00:00 UTC 1970")
            .env("KBUILD_BUILD_VERSION", "1");
    }
    cmd
}

/// Runs a configuration step, its output into `log`; a failure names the
/// step and quotes the log's last lines.
pub fn run_logged(mut cmd: Command, log: &Path, what: &str) -> Result<()> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot write {}", log.display()))?;
    let err = file.try_clone().context("cannot duplicate a file handle")?;
    let status = cmd
        .stdout(file)
        .stderr(err)
        .status()
        .with_context(|| format!("could not start {}", tools::describe(&cmd)))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}): {} (full log: {})",
            log_tail(log, 6).join(" / "),
            log.display()
        );
    }
    Ok(())
}

/// The last `n` non-empty lines of a log (the first `error` line first
/// when there is one).
pub fn log_tail(log: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out: Vec<String> = Vec::new();
    if let Some(first_error) = lines
        .iter()
        .find(|l| l.contains("error:") || l.contains("Error "))
    {
        out.push(first_error.trim().to_owned());
    }
    for l in &lines[lines.len().saturating_sub(n)..] {
        let l = l.trim().to_owned();
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

/// Writes `bytes` to `path` unless it already holds exactly them; returns
/// whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let tmp = path.with_extension(format!("kestrel-tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}

/// Holds `<out>/.kestrel-build.lock` (flock) for one build.
struct OutLock(#[allow(dead_code)] File);

fn lock_out(out: &Path) -> Result<OutLock> {
    let path = out.join(".kestrel-build.lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another kernel build is using {} right now; wait for it or pass another --out",
            out.display()
        );
    }
    Ok(OutLock(file))
}

/// What `git status` says about a tree, `None` when it is not a git tree.
pub fn git_status(src: &Path) -> Option<String> {
    let top = git_output(src, &["rev-parse", "--show-toplevel"]).ok()?;
    if Path::new(top.trim()) != src {
        return None;
    }
    git_output(src, &["status", "--porcelain", "--untracked-files=all"]).ok()
}

/// `src`'s git status is still `before` (taken with [`git_status`]; `None`:
/// not a git tree, nothing to compare), else one sentence saying `what`
/// changed the tree.
pub fn ensure_tree_unchanged(src: &Path, before: Option<&str>, what: &str) -> Result<()> {
    let Some(before) = before else {
        return Ok(());
    };
    let after = git_status(src).unwrap_or_default();
    if after != before {
        bail!(
            "{what} changed the source tree {} (git status differs: {}); report this",
            src.display(),
            after.lines().take(3).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Runs git in `dir`; stdout on success, the first stderr line as the error.
pub fn git_output(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("could not run git")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first = stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message")
            .to_owned();
        bail!(
            "`git {}` failed in {}: {first}",
            args.join(" "),
            dir.display()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds a kernel as `plan` says; see the module header for the steps.
pub fn build(plan: &Plan) -> Result<Built, BuildError> {
    let start = Instant::now();
    ensure_host_tools()?;
    let status_before = git_status(&plan.src);
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("cannot create {}", plan.out.display()))?;
    let _lock = lock_out(&plan.out)?;
    let scratch = plan.out.join(CONFIG_DIR);
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let log = plan.out.join("kestrel-build.log");
    std::fs::write(&log, "").with_context(|| format!("cannot write {}", log.display()))?;

    // 1. The configuration: reused when nothing it depends on changed,
    // else made in the scratch dir.
    let kestrel_fragment = scratch.join("kestrel.config");
    write_if_changed(&kestrel_fragment, KESTREL_FRAGMENT.as_bytes())?;
    let mut fragments = vec![kconfig::parse_fragment("kestrel.config", KESTREL_FRAGMENT)];
    let mut fragment_texts = vec![KESTREL_FRAGMENT.to_owned()];
    for f in &plan.configs.fragments {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        fragments.push(kconfig::parse_fragment(&f.display().to_string(), &text));
        fragment_texts.push(text);
    }
    let requirements = kconfig::merge(&fragments);
    let stamp = config_stamp(plan, &fragment_texts);
    let stamp_path = scratch.join("stamp");
    let out_config = plan.out.join(".config");
    let reusable = std::fs::read_to_string(&stamp_path)
        .ok()
        .zip(std::fs::read(&out_config).ok())
        .is_some_and(|(old, config)| old == format!("{stamp} {}", sha256_hex(&config)));
    let (config_text, config_changed) = if reusable {
        let text = std::fs::read_to_string(&out_config)
            .with_context(|| format!("cannot read {}", out_config.display()))?;
        (text, false)
    } else {
        let text = make_config(plan, &scratch, &kestrel_fragment, &log)?;
        verify_config(plan, &requirements, &text)?;
        let changed = write_if_changed(&out_config, text.as_bytes())?;
        std::fs::write(
            &stamp_path,
            format!("{stamp} {}", sha256_hex(text.as_bytes())),
        )
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
        (text, changed)
    };
    let config = DotConfig::parse(&config_text);
    let config_secs = start.elapsed().as_secs_f64();
    tools::step(format!(
        "kernel: configuration {} ({} requirements verified, {config_secs:.1} s)",
        match (reusable, config_changed) {
            (true, _) => "reused: nothing it depends on changed",
            (false, true) => "made and changed",
            (false, false) => "made, unchanged",
        },
        requirements.len(),
    ));

    // 2. The build itself.
    let mut targets = vec!["bzImage"];
    if config.has_modules() {
        targets.push("modules");
    }
    let jobs = format!("-j{}", plan.jobs);
    let mut args = vec![jobs.as_str()];
    args.extend(&targets);
    let mut cmd = make(plan, &plan.out, &args);
    tools::step(format!(
        "kernel: make {} ({}, CC={})",
        targets.join(" "),
        jobs,
        compiler()
    ));
    let make_start = Instant::now();
    let result = match plan.output {
        Output::LogFile => run_logged(cmd, &log, &format!("make {}", targets.join(" "))),
        Output::Stderr => {
            let status = cmd
                .stdout(std::io::stderr())
                .status()
                .with_context(|| format!("could not start {}", tools::describe(&cmd)))?;
            if status.success() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "make {} failed ({status}) in {}: see the compiler output above",
                    targets.join(" "),
                    plan.out.display()
                ))
            }
        }
    };
    result.map_err(BuildError::Source)?;
    let make_secs = make_start.elapsed().as_secs_f64();

    // 3. The record.
    let release = make(plan, &plan.out, &["-s", "kernelrelease"])
        .stderr(Stdio::null())
        .output()
        .context("could not run make kernelrelease")?;
    let release = String::from_utf8_lossy(&release.stdout).trim().to_owned();
    ensure_tree_unchanged(&plan.src, status_before.as_deref(), "the build")
        .map_err(BuildError::Setup)?;
    let git_revision = status_before.as_ref().and_then(|status| {
        let head = git_output(&plan.src, &["rev-parse", "HEAD"]).ok()?;
        let dirty = if status.trim().is_empty() {
            ""
        } else {
            "-dirty"
        };
        Some(format!("{}{dirty}", head.trim()))
    });
    let bzimage = plan.out.join(BZIMAGE);
    if !bzimage.is_file() {
        return Err(BuildError::Source(anyhow::anyhow!(
            "make finished but {} is missing",
            bzimage.display()
        )));
    }
    let seconds = start.elapsed().as_secs_f64();
    let manifest = BuildManifest {
        release: release.clone(),
        config_sha256: sha256_hex(config_text.as_bytes()),
        source: plan.src.display().to_string(),
        git_revision,
        base: plan.configs.base.target().to_owned(),
        fragments: plan.configs.labels(),
        build_seconds: seconds,
        built_at: crate::rfc3339_utc(SystemTime::now()),
        bzimage: BZIMAGE.to_owned(),
        vmlinux: "vmlinux".to_owned(),
        modules: config.has_modules(),
    };
    write_if_changed(&plan.out.join(MANIFEST_FILE), manifest.to_text().as_bytes())?;
    tools::step(format!(
        "kernel: {release}: configure {config_secs:.1} s, make {make_secs:.1} s, total {seconds:.1} s"
    ));
    Ok(Built {
        out: plan.out.clone(),
        bzimage,
        release,
        config_changed,
        seconds,
    })
}

/// Keys a configuration: base, compiler, fragments' text, and the size and
/// mtime of every file the configuration step reads.
fn config_stamp(plan: &Plan, fragment_texts: &[String]) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut key = format!("{}\0{}\0{ARCH}\0", plan.configs.base.target(), compiler());
    for t in fragment_texts {
        key.push_str(t);
        key.push('\0');
    }
    for f in kconfig::config_inputs(&plan.src) {
        let (len, mtime) = std::fs::metadata(&f)
            .map(|m| (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000))
            .unwrap_or((0, 0));
        key.push_str(&format!("{} {len} {mtime}\n", f.display()));
    }
    sha256_hex(key.as_bytes())
}

/// `make <base>`, `merge_config.sh -m`, `make olddefconfig` in the scratch
/// object dir; returns the resulting `.config`.
fn make_config(
    plan: &Plan,
    scratch: &Path,
    kestrel_fragment: &Path,
    log: &Path,
) -> Result<String, BuildError> {
    let source_err = BuildError::Source;
    tools::step(format!(
        "kernel: configuring ({} + {}) in {}",
        plan.configs.base.target(),
        plan.configs.labels().join(" + "),
        scratch.display()
    ));
    run_logged(
        make(plan, scratch, &["-s", plan.configs.base.target()]),
        log,
        &format!("make {}", plan.configs.base.target()),
    )
    .map_err(source_err)?;
    let mut merge = Command::new("sh");
    merge
        .arg(plan.src.join("scripts/kconfig/merge_config.sh"))
        .arg("-m")
        .arg("-O")
        .arg(scratch)
        .arg(scratch.join(".config"))
        .arg(kestrel_fragment)
        .args(&plan.configs.fragments)
        .current_dir(scratch)
        .stdin(Stdio::null());
    run_logged(merge, log, "merge_config.sh").map_err(source_err)?;
    run_logged(
        make(plan, scratch, &["-s", "olddefconfig"]),
        log,
        "make olddefconfig",
    )
    .map_err(source_err)?;
    Ok(std::fs::read_to_string(scratch.join(".config"))
        .with_context(|| format!("cannot read {}/.config", scratch.display()))?)
}

/// Every requested symbol as asked, or one sentence naming each dropped
/// one and what dropped it.
fn verify_config(
    plan: &Plan,
    requirements: &[kconfig::Requirement],
    text: &str,
) -> Result<(), BuildError> {
    let config = DotConfig::parse(text);
    let unmet = kconfig::verify(requirements, &config);
    if unmet.is_empty() {
        return Ok(());
    }
    let symbols: Vec<&str> = unmet
        .iter()
        .map(|u| u.requirement.symbol.as_str())
        .collect();
    let k = Kconfig::scan(&plan.src, &symbols);
    let reasons: Vec<String> = unmet
        .iter()
        .map(|u| {
            format!(
                "{} ({}): {}",
                u.requirement,
                u.requirement.origin,
                k.explain(u, &config)
            )
        })
        .collect();
    Err(BuildError::Source(anyhow::anyhow!(
        "the configuration cannot have {} requested option{}: {}",
        unmet.len(),
        if unmet.len() == 1 { "" } else { "s" },
        reasons.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sets() {
        let dir = tempfile::tempdir().unwrap();
        let frag = dir.path().join("mine.config");
        std::fs::write(&frag, "CONFIG_KVM_AMD=y\n").unwrap();
        let s = ConfigSet::parse(&[]).unwrap();
        assert_eq!(s.base, Base::Tinyconfig);
        let s = ConfigSet::parse(&[
            "kestrel".into(),
            "defconfig".into(),
            frag.display().to_string(),
        ])
        .unwrap();
        assert_eq!(s.base, Base::Defconfig);
        assert_eq!(s.fragments, [std::fs::canonicalize(&frag).unwrap()]);
        assert_eq!(s.labels()[0], "kestrel");
        let err = ConfigSet::parse(&["nope.config".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--config nope.config: no such fragment file; use kestrel, defconfig or the path of a config fragment"
        );
    }

    #[test]
    fn default_out_depends_on_source_and_configs() {
        let tiny = ConfigSet::parse(&[]).unwrap();
        let def = ConfigSet::parse(&["defconfig".into()]).unwrap();
        let base = Path::new("/cache/kbuild");
        let a = default_out(base, Path::new("/src/a"), &tiny);
        assert_eq!(a, default_out(base, Path::new("/src/a"), &tiny));
        assert_ne!(a, default_out(base, Path::new("/src/b"), &tiny));
        assert_ne!(a, default_out(base, Path::new("/src/a"), &def));
        assert!(a.starts_with(base));
    }

    #[test]
    fn source_tree_checks() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_source_tree(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("is not a Linux kernel source tree (it has no Makefile); pass the top directory of a kernel tree"),
            "{err}"
        );
        for f in [
            "Makefile",
            "Kconfig",
            "scripts/kconfig/merge_config.sh",
            "arch/x86/Kconfig",
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        check_source_tree(dir.path()).unwrap();
        std::fs::write(dir.path().join(".config"), "").unwrap();
        let err = check_source_tree(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("run `make mrproper` there or use a clean tree"),
            "{err}"
        );
        let err = check_source_tree(Path::new("/no/such/tree"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such directory"), "{err}");
    }

    #[test]
    fn the_fragment_parses_and_asks_for_what_the_vmm_needs() {
        let req = kconfig::parse_fragment("kestrel.config", KESTREL_FRAGMENT);
        let on: Vec<&str> = req
            .iter()
            .filter(|r| r.value == "y")
            .map(|r| r.symbol.as_str())
            .collect();
        for needed in [
            "64BIT",
            "SERIAL_8250_CONSOLE",
            "BLK_DEV_INITRD",
            "DEVTMPFS",
            "PVH",
            "KVM_GUEST",
            "SMP",
            "ACPI",
            "VIRTIO_MMIO",
            "VIRTIO_CONSOLE",
            "VIRTIO_FS",
            "OVERLAY_FS",
            "UNIX",
            "MAGIC_SYSRQ",
        ] {
            assert!(on.contains(&needed), "{needed} missing from the fragment");
        }
        assert!(req.iter().any(|r| r.symbol == "MODULES" && r.value == "n"));
    }

    #[test]
    fn the_config_stamp_follows_its_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        std::fs::create_dir_all(src.join("arch/x86")).unwrap();
        std::fs::create_dir_all(src.join("arch/arm")).unwrap();
        std::fs::create_dir_all(src.join("Documentation")).unwrap();
        std::fs::write(src.join("Kconfig"), "config A\n").unwrap();
        std::fs::write(src.join("arch/arm/Kconfig"), "config B\n").unwrap();
        std::fs::write(src.join("Documentation/Kconfig"), "x\n").unwrap();
        let plan = Plan {
            src: src.to_owned(),
            out: src.join("out"),
            configs: ConfigSet::parse(&[]).unwrap(),
            jobs: 1,
            output: Output::LogFile,
            reproducible: false,
        };
        let texts = vec!["CONFIG_A=y\n".to_owned()];
        let a = config_stamp(&plan, &texts);
        assert_eq!(a, config_stamp(&plan, &texts));
        // Other architectures and the documentation do not count.
        std::fs::write(src.join("arch/arm/Kconfig"), "config BB\n").unwrap();
        std::fs::write(src.join("Documentation/Kconfig"), "xx\n").unwrap();
        assert_eq!(a, config_stamp(&plan, &texts));
        assert_ne!(a, config_stamp(&plan, &["CONFIG_A=n\n".to_owned()]));
        std::fs::write(src.join("Kconfig"), "config AA\n").unwrap();
        assert_ne!(a, config_stamp(&plan, &texts));
    }

    #[test]
    fn helpers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_if_changed(&p, b"a").unwrap());
        assert!(!write_if_changed(&p, b"a").unwrap());
        assert!(write_if_changed(&p, b"b").unwrap());
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            "CC a.o\nfoo.c:1: error: bad\nmore\nmake: *** [x] Error 2\n",
        )
        .unwrap();
        assert_eq!(
            log_tail(&log, 2),
            ["foo.c:1: error: bad", "more", "make: *** [x] Error 2"]
        );
        assert!(jobs(Some(0)).is_err());
        assert_eq!(jobs(Some(3)).unwrap(), 3);
    }
}

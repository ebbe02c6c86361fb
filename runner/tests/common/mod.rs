//! Prerequisites shared by the real-kernel test files: hardware-speed KVM,
//! the guest init, a cached Debian kernel. Without one a test is skipped
//! with the reason printed; under `KESTREL_REAL_KVM_TESTS=1` (CI in the
//! rig) it fails instead, so a broken set-up is never a silent pass.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kestrel_kernels::{Cache, Fetch, Kernel, KernelSpec};

/// The kestrel binary under test.
pub const KESTREL: &str = env!("CARGO_BIN_EXE_kestrel");

/// CI in the rig: a missing prerequisite fails instead of skipping.
pub fn strict() -> bool {
    std::env::var_os("KESTREL_REAL_KVM_TESTS").is_some_and(|v| v == "1")
}

/// `Some(value)`, or skip (print and `None`), or fail when [`strict`].
pub fn require<T>(what: Result<T, String>) -> Option<T> {
    match what {
        Ok(v) => Some(v),
        Err(why) if strict() => panic!("KESTREL_REAL_KVM_TESTS=1 but {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// `kestrel doctor` says KVM runs at hardware speed (asked once).
pub fn hardware_kvm() -> Result<(), String> {
    static DOCTOR: OnceLock<Result<(), String>> = OnceLock::new();
    DOCTOR
        .get_or_init(|| {
            let out = Command::new(KESTREL)
                .arg("doctor")
                .output()
                .map_err(|e| format!("cannot run kestrel doctor: {e}"))?;
            if out.status.code() == Some(0) {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let verdict = text.lines().last().unwrap_or("no report");
            Err(format!(
                "KVM is not hardware-speed here ({verdict}); run inside the nested rig"
            ))
        })
        .clone()
}

/// Cargo's target directory (the kestrel binary is in `<target>/<profile>/`).
pub fn target_dir() -> PathBuf {
    Path::new(KESTREL)
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The static init where kestrel will look for it.
pub fn init_present() -> Result<(), String> {
    let init = std::env::var_os("KESTREL_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("x86_64-unknown-linux-gnu/release/kestrel-init"));
    if init.is_file() {
        Ok(())
    } else {
        Err(format!(
            "the guest init {} is missing (cargo xtask builds it)",
            init.display()
        ))
    }
}

/// A Debian kernel from the cache.
pub fn cached(series: &str) -> Result<Kernel, String> {
    let spec: KernelSpec = format!("debian:{series}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let cache = Cache::from_env().map_err(|e| e.to_string())?;
    kestrel_kernels::resolve(&spec, &cache, Fetch::CacheOnly)
        .map_err(|e| format!("{e} (cargo xtask kernel fetch debian:{series})"))
}

/// Everything a boot of `debian:<series>` needs, or skip/fail.
pub fn prerequisites(series: &str) -> Option<Kernel> {
    require(hardware_kvm())?;
    require(init_present())?;
    require(cached(series))
}

/// What kestrel's verdict says of a guest that triple-faulted.
pub const TRIPLE_FAULT: &str = "the guest triple-faulted";

/// What kestrel's verdict says when KVM could not fetch the instruction
/// of a vCPU that was running it, because the guest's page tables in RAM
/// do not map it: the nested rig's stale view of guest RAM (runner/NOTES.md,
/// "When the guest triple-faults").
pub const UNMAPPED_RIP: &str = kestrel::vcpu::UNMAPPED_RIP;

/// The rig's failures that [`Run::of`] runs once more.
const RIG_SYMPTOMS: [&str; 2] = [TRIPLE_FAULT, UNMAPPED_RIP];

/// What one `kestrel` process did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub wall: std::time::Duration,
    /// The guest console, when the run wrote it to a file (else empty).
    pub console: String,
}

impl Run {
    /// Runs `cmd` to its end, timing it. A guest that triple-faulted, or
    /// whose vCPU ran code its own page tables in RAM do not map, is run
    /// once more, with the first try printed: these tests check what a
    /// booted guest does, and the nested rig loses about 1 in 100 two-vCPU
    /// boots under kestrel and QEMU-KVM alike, more under virtio-fs load
    /// (RELIABILITY.md, "Boots that fail in the rig"). Those rates are
    /// measured by `cargo xtask stress`, not hidden here: a second such
    /// failure fails the test.
    pub fn of(cmd: &mut Command) -> Run {
        let first = Run::once(cmd);
        let Some(symptom) = RIG_SYMPTOMS.iter().find(|s| first.stderr.contains(**s)) else {
            return first;
        };
        eprintln!(
            "[rig] {symptom}; running {cmd:?} once more. First try:\n{}",
            first.stderr
        );
        Run::once(cmd)
    }

    fn once(cmd: &mut Command) -> Run {
        let started = std::time::Instant::now();
        let out = cmd.output().expect("kestrel runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            wall: started.elapsed(),
            console: String::new(),
        }
    }

    /// The last `kestrel: verdict=…` line (empty if none).
    pub fn verdict(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("kestrel: verdict="))
            .unwrap_or_default()
    }

    /// `boot=` and `total=` of the verdict line, in ms.
    pub fn times(&self) -> (Option<u64>, Option<u64>) {
        let field = |key: &str| {
            self.verdict()
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        (field("boot="), field("total="))
    }

    /// Asserts that each of `lines` is a whole line of stdout, showing
    /// stdout and stderr otherwise.
    pub fn expect_lines(&self, lines: &[&str]) -> &Self {
        for line in lines {
            assert!(
                self.stdout.lines().any(|l| l == *line),
                "no `{line}` in:\n{}\n{}",
                self.stdout,
                self.stderr
            );
        }
        self
    }

    /// Asserts the exit code, showing everything kestrel said otherwise.
    pub fn expect(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "{what}: kestrel exited {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}\n--- console\n{}",
            self.code, self.stdout, self.stderr, self.console
        );
        self
    }
}

/// A fresh directory under the target dir (visible at the same path in
/// the rig's L1, and not under a guest tmpfs).
pub fn scratch(tag: &str) -> PathBuf {
    let dir = target_dir()
        .join("kestrel-tests")
        .join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

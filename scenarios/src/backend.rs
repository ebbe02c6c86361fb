//! How a scenario gets booted: the [`Backend`] trait, and [`KestrelBinary`],
//! which drives the `kestrel` VMM through its command-line contract:
//!
//! ```text
//! kestrel run [EXTRA…] --kernel SPEC --cpus N --memory MiB --timeout SECS
//!             --console FILE [--append ARGS] -- CMD ARGS…
//! ```
//!
//! The guest's stdout/stderr arrive on kestrel's; the kernel log goes to
//! FILE; kestrel writes its verdict as a typed record ([`VerdictRecord`],
//! JSON) to the `--verdict-file` given (`kestrel-verdict.json` beside the console
//! log), and its last stderr line is
//! `kestrel: verdict=<v> boot=<ms|-> total=<ms>` for people (read only when
//! the record is missing); its exit code is the command's status, 124
//! timeout, 125 VMM error, 255 panic/no status.
//!
//! Invariant: [`KestrelBinary::run`] returns only after the child exited (or
//! was killed by the host-side watchdog) and never blocks on pipes held open
//! by the child's own children.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kestrel_kernels::symbols::SymbolSources;
use kestrel_kernels::{Cache, Fetch, KernelSpec};

use crate::evaluate::{RunOutput, RunnerVerdict};

/// One boot to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// Kernel spec or path: `debian:6.1`.
    pub kernel: String,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The runner's wall-clock limit.
    pub timeout: Duration,
    /// Extra kernel command line.
    pub append: Option<String>,
    /// The guest command (`/bin/sh -c SCRIPT` for scripts).
    pub argv: Vec<String>,
    /// Where the kernel log is to be written.
    pub console_path: PathBuf,
    /// Directory the runner starts in (the guest command's working directory).
    pub workdir: PathBuf,
    /// Host directories the command needs at their own path, read-only
    /// (`--share DIR:DIR`; the runner adds a device only where the guest's
    /// root does not already show them, e.g. under its `/tmp`).
    pub shares: Vec<PathBuf>,
}

/// The runner could not be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Something that boots a kernel and runs a command in it.
pub trait Backend: Send + Sync {
    /// Performs one run. `Err` only when the run could not take place; a
    /// guest or VMM failure is an `Ok` with the runner's verdict.
    fn run(&self, request: &RunRequest) -> Result<RunOutput, BackendError>;

    /// Where the symbols of `kernel` (a spec) are, to symbolize the traces
    /// of failed cases; `None` (the default): traces stay as printed.
    fn symbol_sources(&self, kernel: &str) -> Option<SymbolSources> {
        let _ = kernel;
        None
    }
}

/// The `kestrel` binary.
#[derive(Debug, Clone)]
pub struct KestrelBinary {
    /// Path of the binary.
    pub bin: PathBuf,
    /// Arguments after `run`, before ours (`--initrd PATH`, say).
    pub extra_args: Vec<String>,
    /// How long past the scenario's timeout the host waits before killing
    /// kestrel and calling it a VMM error.
    pub grace: Duration,
    /// Per kernel spec: what to pass as `--kernel` instead of the spec (a
    /// resolved image path) and arguments for that kernel only (its
    /// `--initrd`, say). Specs not listed are passed as they are.
    pub kernels: BTreeMap<String, ResolvedKernel>,
}

/// A kernel spec resolved by the caller (xtask) for the runner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedKernel {
    /// The `--kernel` value.
    pub image: String,
    /// Extra `kestrel run` arguments for this kernel.
    pub extra_args: Vec<String>,
}

impl KestrelBinary {
    /// A backend for `bin` with no extra arguments and a 60 s grace.
    pub fn new(bin: PathBuf) -> KestrelBinary {
        KestrelBinary {
            bin,
            extra_args: Vec::new(),
            grace: Duration::from_secs(60),
            kernels: BTreeMap::new(),
        }
    }

    /// The kernel image a spec boots: the resolved image when the caller
    /// gave one, else the spec resolved through the kernel cache (never
    /// fetched).
    pub fn image_of(&self, kernel: &str) -> Option<PathBuf> {
        let spec = self.kernel_arg(kernel);
        let resolved = spec.parse::<KernelSpec>().ok().and_then(|spec| {
            let cache = Cache::from_env().ok()?;
            kestrel_kernels::resolve(&spec, &cache, Fetch::CacheOnly).ok()
        });
        match resolved {
            Some(k) => Some(k.image),
            None => Some(PathBuf::from(spec)).filter(|p| p.is_file()),
        }
    }

    /// What `--kernel` gets for the spec `kernel`: its resolved image when
    /// the caller gave one, else the spec itself.
    fn kernel_arg<'a>(&'a self, kernel: &'a str) -> &'a str {
        self.kernels
            .get(kernel)
            .map_or(kernel, |k| k.image.as_str())
    }

    /// The argv after the binary's name.
    pub fn args(&self, r: &RunRequest) -> Vec<String> {
        let resolved = self.kernels.get(&r.kernel);
        let mut args = vec!["run".to_owned()];
        args.extend(self.extra_args.iter().cloned());
        args.extend(resolved.iter().flat_map(|k| k.extra_args.iter().cloned()));
        args.extend([
            "--kernel".to_owned(),
            self.kernel_arg(&r.kernel).to_owned(),
            "--cpus".to_owned(),
            r.cpus.to_string(),
            "--memory".to_owned(),
            r.memory_mib.to_string(),
            "--timeout".to_owned(),
            r.timeout.as_secs().max(1).to_string(),
            "--console".to_owned(),
            r.console_path.display().to_string(),
            "--verdict-file".to_owned(),
            verdict_file(&r.console_path).display().to_string(),
        ]);
        if let Some(a) = &r.append {
            args.push("--append".to_owned());
            args.push(a.clone());
        }
        for dir in &r.shares {
            let d = dir.display();
            args.extend(["--share".to_owned(), format!("{d}:{d}")]);
        }
        args.push("--".to_owned());
        args.extend(r.argv.iter().cloned());
        args
    }
}

/// Reads a pipe to its end into a shared buffer (so a watchdog can take
/// what arrived even if the pipe never closes).
fn drain<R: Read + Send + 'static>(
    mut pipe: R,
) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut b) = sink.lock() {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
    });
    (buf, handle)
}

fn take(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    let bytes = buf
        .lock()
        .map(|mut b| std::mem::take(&mut *b))
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits for a reader thread for at most `limit`.
fn join_within(handle: std::thread::JoinHandle<()>, limit: Duration) {
    let start = Instant::now();
    while !handle.is_finished() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    if handle.is_finished() {
        let _ = handle.join();
    }
}

/// How a `kestrel run` ended, as `--verdict-file FILE` records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerdictRecord {
    pub verdict: RunnerVerdict,
    /// From the vCPUs' release to the guest init's first mark, in ms
    /// (`None`: the guest never reached it).
    pub boot_ms: Option<u64>,
    pub total_ms: u64,
    /// Why the run did not pass, when kestrel knows (a boot failure's or
    /// VMM error's cause, the panic line).
    pub reason: Option<String>,
}

impl VerdictRecord {
    /// Writes the record as JSON, atomically (a temporary renamed into
    /// place), so a reader never sees half of it.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string(self)?;
        kestrel_kernels::kbuild::write_if_changed(path, text.as_bytes()).map(|_| ())
    }

    /// The record at `path`; `None` when missing or not a record.
    pub fn read(path: &Path) -> Option<VerdictRecord> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Where [`KestrelBinary`] has kestrel write the run's [`VerdictRecord`].
pub fn verdict_file(console_path: &Path) -> PathBuf {
    console_path.with_file_name("kestrel-verdict.json")
}

/// The parsed `kestrel: verdict=… boot=… total=…` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictLine {
    /// The verdict.
    pub verdict: RunnerVerdict,
    /// Boot time, `None` for `boot=-`.
    pub boot_ms: Option<u64>,
    /// Total time.
    pub total_ms: u64,
}

impl VerdictLine {
    /// Parses one line; `None` when it is not a verdict line.
    pub fn parse(line: &str) -> Option<VerdictLine> {
        let rest = line.trim_end().strip_prefix("kestrel: ")?;
        let (mut verdict, mut boot, mut total) = (None, None, None);
        for field in rest.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            match key {
                "verdict" => verdict = RunnerVerdict::parse(value),
                "boot" => {
                    boot = Some(if value == "-" {
                        None
                    } else {
                        Some(value.parse().ok()?)
                    })
                }
                "total" => total = value.parse().ok(),
                _ => {}
            }
        }
        Some(VerdictLine {
            verdict: verdict?,
            boot_ms: boot?,
            total_ms: total?,
        })
    }
}

/// Splits kestrel's stderr into the guest's stderr and kestrel's own lines
/// (`kestrel: …`, `kestrel[debug]: …`, and the `  | …` console tail after
/// `kestrel: last console lines:`), and finds the verdict line.
pub fn split_stderr(stderr: &str) -> (String, Vec<String>, Option<VerdictLine>) {
    let mut guest = String::with_capacity(stderr.len());
    let mut own = Vec::new();
    let mut verdict = None;
    let mut in_tail = false;
    for line in stderr.split_inclusive('\n') {
        let l = line.trim_end_matches(['\n', '\r']);
        if in_tail && l.starts_with("  | ") {
            continue; // The console log has these lines in full.
        }
        in_tail = false;
        if l.starts_with("kestrel: ") || l.starts_with("kestrel[") {
            if let Some(v) = VerdictLine::parse(l) {
                verdict = Some(v);
            } else {
                in_tail = l == "kestrel: last console lines:";
                own.push(l.to_owned());
            }
        } else {
            guest.push_str(line);
        }
    }
    (guest, own, verdict)
}

/// Turns what kestrel left behind into a [`RunOutput`]: its verdict
/// record when it wrote one, else its verdict line.
pub fn interpret(
    exit_code: Option<i32>,
    record: Option<VerdictRecord>,
    stdout: String,
    stderr: &str,
    kernel_log: String,
    elapsed: Duration,
) -> RunOutput {
    let (guest_stderr, mut messages, verdict) = split_stderr(stderr);
    let from_record = record.map(|r| (r.verdict, r.boot_ms, r.total_ms));
    let from_line = verdict.map(|v| (v.verdict, v.boot_ms, v.total_ms));
    let (verdict_from_runner, boot_ms, total_ms) = match from_record.or(from_line) {
        Some(v) => v,
        None => {
            messages.push(match exit_code {
                Some(c) => format!("kestrel exited with status {c} without a verdict line"),
                None => "kestrel was killed by a signal before printing a verdict line".to_owned(),
            });
            (RunnerVerdict::VmmError, None, elapsed.as_millis() as u64)
        }
    };
    let exit_status = match verdict_from_runner {
        RunnerVerdict::Pass => Some(0),
        RunnerVerdict::Fail(n) => Some(n),
        _ => None,
    };
    RunOutput {
        verdict_from_runner,
        exit_status,
        stdout,
        stderr: guest_stderr,
        kernel_log,
        boot_ms,
        total_ms,
        runner_messages: messages,
    }
}

impl Backend for KestrelBinary {
    fn symbol_sources(&self, kernel: &str) -> Option<SymbolSources> {
        self.image_of(kernel)
            .map(|image| SymbolSources::for_image(&image))
    }

    fn run(&self, r: &RunRequest) -> Result<RunOutput, BackendError> {
        if let Some(dir) = r.console_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BackendError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let record_path = verdict_file(&r.console_path);
        let _ = std::fs::remove_file(&record_path);
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .args(self.args(r))
            .current_dir(&r.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BackendError(format!("cannot start {}: {e}", self.bin.display())))?;
        let (out_buf, out_thread) = match child.stdout.take() {
            Some(p) => drain(p),
            None => return Err(BackendError("no stdout pipe".into())),
        };
        let (err_buf, err_thread) = match child.stderr.take() {
            Some(p) => drain(p),
            None => return Err(BackendError("no stderr pipe".into())),
        };
        let deadline = r.timeout + self.grace;
        let mut watchdog = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    watchdog = Some(format!(
                        "kestrel did not exit within {} s (timeout {} s + grace {} s): killed",
                        deadline.as_secs(),
                        r.timeout.as_secs(),
                        self.grace.as_secs()
                    ));
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(BackendError(format!("waiting for kestrel: {e}"))),
            }
        };
        join_within(out_thread, Duration::from_secs(5));
        join_within(err_thread, Duration::from_secs(5));
        let elapsed = start.elapsed();
        let log = std::fs::read(&r.console_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let stdout = take(&out_buf);
        let stderr = take(&err_buf);
        let record = watchdog
            .is_none()
            .then(|| VerdictRecord::read(&record_path))
            .flatten();
        let mut output = interpret(
            status.and_then(|s| s.code()),
            record,
            stdout,
            &stderr,
            log,
            elapsed,
        );
        if let Some(w) = watchdog {
            output.verdict_from_runner = RunnerVerdict::VmmError;
            output.exit_status = None;
            output.runner_messages.push(w);
        }
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        assert_eq!(
            VerdictLine::parse("kestrel: verdict=pass boot=1234 total=2345"),
            Some(VerdictLine {
                verdict: RunnerVerdict::Pass,
                boot_ms: Some(1234),
                total_ms: 2345
            })
        );
        assert_eq!(
            VerdictLine::parse("kestrel: verdict=timeout boot=- total=5001")
                .map(|v| (v.verdict, v.boot_ms)),
            Some((RunnerVerdict::Timeout, None))
        );
        assert_eq!(
            VerdictLine::parse("kestrel: verdict=fail(3) boot=5 total=6").map(|v| v.verdict),
            Some(RunnerVerdict::Fail(3))
        );
        assert_eq!(
            VerdictLine::parse("kestrel: verdict=odd boot=5 total=6"),
            None
        );
        assert_eq!(VerdictLine::parse("kestrel: guest panicked"), None);
        assert_eq!(VerdictLine::parse("verdict=pass boot=1 total=2"), None);
    }

    #[test]
    fn stderr_is_split() {
        let (guest, own, v) = split_stderr(
            "warn: x\nkestrel: Kernel panic - not syncing\nmore\nkestrel[debug]: exit\n\
             kestrel: last console lines:\n  | [ 1.0] a\n  | [ 1.1] b\nafter\n  | guest\n\
             kestrel: verdict=panic boot=9 total=10\n",
        );
        assert_eq!(guest, "warn: x\nmore\nafter\n  | guest\n");
        assert_eq!(
            own,
            [
                "kestrel: Kernel panic - not syncing",
                "kestrel[debug]: exit",
                "kestrel: last console lines:"
            ]
        );
        assert_eq!(v.map(|v| v.verdict), Some(RunnerVerdict::Panic));
    }

    #[test]
    fn the_verdict_record_is_preferred_to_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = verdict_file(&dir.path().join("console.log"));
        assert_eq!(path, dir.path().join("kestrel-verdict.json"));
        let rec = VerdictRecord {
            verdict: RunnerVerdict::Fail(3),
            boot_ms: Some(7),
            total_ms: 9,
            reason: None,
        };
        rec.write(&path).unwrap();
        let read = VerdictRecord::read(&path);
        assert_eq!(read.as_ref(), Some(&rec));
        let o = interpret(
            Some(3),
            read,
            String::new(),
            "kestrel: verdict=pass boot=1 total=2\n",
            String::new(),
            Duration::ZERO,
        );
        assert_eq!(o.verdict_from_runner, RunnerVerdict::Fail(3));
        assert_eq!((o.boot_ms, o.total_ms), (Some(7), 9));
        // Only the record is left in the directory (no temporary).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "{\"verdict\":").unwrap();
        assert_eq!(VerdictRecord::read(&path), None);
        let boot_failure = VerdictRecord {
            verdict: RunnerVerdict::BootFailure,
            boot_ms: None,
            total_ms: 1,
            reason: Some("the guest triple-faulted".into()),
        };
        boot_failure.write(&path).unwrap();
        assert_eq!(VerdictRecord::read(&path), Some(boot_failure));
    }

    #[test]
    fn no_verdict_line_is_a_vmm_error() {
        let o = interpret(
            Some(1),
            None,
            String::new(),
            "boom\n",
            String::new(),
            Duration::from_millis(5),
        );
        assert_eq!(o.verdict_from_runner, RunnerVerdict::VmmError);
        assert_eq!(
            o.runner_messages,
            ["kestrel exited with status 1 without a verdict line"]
        );
        assert_eq!(o.stderr, "boom\n");
    }

    #[test]
    fn args_follow_the_contract() {
        let k = KestrelBinary {
            bin: "kestrel".into(),
            extra_args: vec!["--quiet".into()],
            grace: Duration::ZERO,
            kernels: BTreeMap::from([(
                "debian:6.1".to_owned(),
                ResolvedKernel {
                    image: "/cache/vmlinuz-6.1".into(),
                    extra_args: vec!["--initrd".into(), "/i".into()],
                },
            )]),
        };
        let r = RunRequest {
            kernel: "debian:6.1".into(),
            cpus: 2,
            memory_mib: 256,
            timeout: Duration::from_secs(30),
            append: Some("loglevel=7 quiet".into()),
            argv: vec!["/bin/sh".into(), "-c".into(), "echo -n hi".into()],
            console_path: "/t/console.log".into(),
            workdir: "/w".into(),
            shares: vec!["/t/probes".into()],
        };
        assert_eq!(
            k.args(&r).join(" "),
            "run --quiet --initrd /i --kernel /cache/vmlinuz-6.1 --cpus 2 --memory 256 --timeout 30 --console /t/console.log \
             --verdict-file /t/kestrel-verdict.json --append loglevel=7 quiet --share /t/probes:/t/probes -- /bin/sh -c echo -n hi"
        );
    }
}

//! Runs one QEMU guest that boots a kernel into our initramfs, and collects
//! what it reported: the status line (COM2), the kernel log (COM1), and the
//! command's stdout/stderr (virtio-console ports, when asked for).
//!
//! Every channel is a Unix socket we listen on *before* QEMU starts (QEMU
//! connects as a client), so there is no start-up race and no polling: a
//! reader thread per channel reports activity on one event channel, and a
//! waiter thread reports QEMU's exit. The supervisor loop enforces the wall
//! clock timeout and the silence watchdog (no byte on any channel for too
//! long: design.md §1 saw L1 freeze with no output).
//!
//! Invariant: `run()` returns only after QEMU has exited and every reader
//! thread has been joined; nothing of the guest outlives it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kestrel_initramfs::job::{PhaseMark, Status, READY_LINE};

use crate::tools::Qemu;

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation (works everywhere, slow).
    Tcg,
    /// Hardware KVM; QEMU fails instead of falling back to TCG.
    Kvm,
}

/// Where a guest output stream goes while the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Kept in memory and returned in [`Outcome`].
    Capture,
    /// Copied to our stdout as it arrives (not kept).
    Stdout,
    /// Copied to our stderr as it arrives (not kept).
    Stderr,
}

/// The QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M pc`: i440FX with ACPI, PIT, RTC, i8042.
    Pc,
    /// `-M microvm` with PIT and PIC on, no RTC, COM1 on the ISA bus and
    /// COM2 added as an ISA serial device.
    Microvm,
}

/// A vhost-user-fs device backed by an already listening server socket.
#[derive(Debug, Clone)]
pub struct VhostUserFs {
    /// The server's socket path.
    pub socket: PathBuf,
    /// The virtio-fs tag the guest mounts.
    pub tag: String,
}

/// One guest to boot.
#[derive(Debug, Clone)]
pub struct Guest {
    pub accel: Accel,
    pub machine: Machine,
    /// `-cpu` model, e.g. `EPYC,+svm,+npt` or `host`.
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    /// Share guest memory through a memfd (vhost-user needs it).
    pub shared_memory: bool,
    pub fs: Option<VhostUserFs>,
    /// Sinks of the `kestrel.stdout` / `kestrel.stderr` virtio-console ports;
    /// `None`: no virtio-serial device at all.
    pub ports: Option<(Sink, Sink)>,
    /// Echo the kernel log to stderr as it arrives (it is captured anyway).
    pub echo_console: bool,
    pub timeout: Duration,
    /// Kill the guest after this long without a byte on any channel.
    pub silence: Duration,
    /// Kill the guest as soon as its kernel reports a CPU stuck for
    /// [`LOCKUP_FATAL_SECS`] or more (the rig: an L1 whose emulated SVM hung
    /// keeps printing lockup reports, so silence never comes).
    pub kill_on_lockup: bool,
    /// Save the VM once its init waits for a job, or start from a saved VM
    /// (QEMU's own migration stream; `cargo xtask stress --warm`).
    pub snapshot: Option<Snapshot>,
    /// Kill the guest when QEMU used less than [`IDLE_CPU_SHARE`] of one
    /// host CPU for this long (the rig: an L1 that stalled — idle, silent,
    /// nothing in its log — while its command had not finished; runner/
    /// NOTES.md, session 20). `None`: never.
    pub idle: Option<Duration>,
    /// Before killing a guest that is stuck (timed out, silent, idle or
    /// locked up), ask QEMU's monitor for its CPUs' registers and local
    /// APICs, kept in [`Outcome::inspection`] (the rig: what a stalled L1
    /// was doing — halted waiting for an interrupt, or spinning).
    pub inspect_when_stuck: bool,
}

/// The monitor commands a stuck guest's inspection runs.
const INSPECTION: &[&str] = &["info registers -a", "info lapic", "info pic", "info irq"];

/// Below this share of one host CPU, QEMU counts as idle for
/// [`Guest::idle`] (an idle TCG L1 uses ~2–3%, a busy one 50–100%).
pub const IDLE_CPU_SHARE: f64 = 0.05;

/// Watches a process's CPU time for [`Guest::idle`]: fed samples of its
/// CPU seconds, says when it has stayed under [`IDLE_CPU_SHARE`] for
/// `limit`. Samples at least 5 s apart decide; closer ones are kept for
/// the next decision.
#[derive(Debug)]
pub struct IdleWatch {
    limit: Duration,
    /// The last sample that decided: (when, CPU seconds).
    last: Option<(Instant, f64)>,
    /// Since when the process has been idle.
    idle_since: Option<Instant>,
}

impl IdleWatch {
    pub fn new(limit: Duration) -> IdleWatch {
        IdleWatch {
            limit,
            last: None,
            idle_since: None,
        }
    }

    /// Takes a sample; `true` when the process has been idle for the limit.
    pub fn sample(&mut self, now: Instant, cpu_secs: f64) -> bool {
        let Some((then, cpu_then)) = self.last else {
            self.last = Some((now, cpu_secs));
            return false;
        };
        let wall = now.saturating_duration_since(then).as_secs_f64();
        if wall < 5.0 {
            return false;
        }
        let busy = (cpu_secs - cpu_then) / wall >= IDLE_CPU_SHARE;
        if busy {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(then);
        }
        self.last = Some((now, cpu_secs));
        self.idle_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.limit)
    }
}

/// User plus system CPU seconds of `pid` (from `/proc/PID/stat`).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no memory effects; it reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    stat_cpu_ticks(&stat).map(|t| t as f64 / ticks)
}

/// utime + stime (clock ticks) from a `/proc/PID/stat` line: fields 14
/// and 15, counted after the command name's closing parenthesis (the
/// name itself may hold spaces and parentheses).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// QEMU's counterpart of `kestrel run --warm`: a VM saved where kestrel's
/// init waits for its job (`KESTREL-READY` on COM2) and restored with the
/// job sent on COM2, so kestrel's and QEMU-KVM's restored guests can be
/// compared in the same rig.
#[derive(Debug, Clone)]
pub enum Snapshot {
    /// When the init writes `KESTREL-READY` on COM2, migrate the running VM
    /// into this file (QMP `migrate` to `file:`; QEMU stops the VM at the
    /// end) and quit. The init must find no job in its initramfs.
    SaveAt(PathBuf),
    /// Start from this file (`-incoming file:`) and write `job` on COM2
    /// (the init's job header and spec) once QMP says the VM runs: bytes
    /// that reached the UART while the stream still loaded would be
    /// overwritten by the loaded UART state.
    Restore { from: PathBuf, job: Vec<u8> },
}

/// A soft lockup at least this long ends a guest run with `kill_on_lockup`;
/// shorter ones happen on an overloaded host and pass.
pub const LOCKUP_FATAL_SECS: u64 = 120;

/// How QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// QEMU exited by itself.
    Exited(Option<i32>),
    /// We killed it at the wall-clock timeout.
    Timeout,
    /// We killed it after `silence` without output.
    Silent,
    /// We killed it when its kernel reported a CPU stuck for this many seconds.
    Lockup(u64),
    /// We killed it after QEMU sat idle for this long ([`Guest::idle`]).
    Idle(Duration),
}

/// What a guest run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The status the init reported; `None`: the guest died or never got there.
    pub status: Option<Status>,
    pub end: End,
    /// The kernel log (COM1).
    pub console: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// QEMU's own stderr (warnings, errors).
    pub qemu_log: String,
    pub wall: Duration,
    /// The init's phase marks on the status channel, each with the time
    /// from QEMU's start to its line's arrival.
    pub marks: Vec<(PhaseMark, Duration)>,
    /// From QEMU's start to the status line's arrival.
    pub status_at: Option<Duration>,
    /// With [`Snapshot::SaveAt`]: the VM was saved; with
    /// [`Snapshot::Restore`]: the restored VM ran and got its job (`Err`:
    /// why not).
    pub snapshot: Option<Result<(), String>>,
    /// With [`Guest::inspect_when_stuck`] and a stuck guest: what QEMU's
    /// monitor said of it (or why it could not be asked).
    pub inspection: Option<String>,
}

impl Outcome {
    /// The kernel printed a panic.
    pub fn panicked(&self) -> bool {
        contains(&self.console, b"Kernel panic - not syncing")
    }

    /// The last `n` lines of the kernel log.
    pub fn console_tail(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.console);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// One line saying how the guest ended, for error messages.
    pub fn describe(&self) -> String {
        match (&self.status, &self.end) {
            (Some(status), _) => format!("guest reported {status}"),
            (None, End::Timeout) => "guest timed out without reporting a status".into(),
            (None, End::Silent) => "guest went silent and was killed".into(),
            (None, End::Idle(for_)) => format!(
                "guest sat idle (QEMU under {:.0}% of a CPU) for {} s and was killed",
                IDLE_CPU_SHARE * 100.0,
                for_.as_secs()
            ),
            (None, End::Lockup(secs)) => {
                format!("guest kernel reported a CPU stuck for {secs} s and was killed")
            }
            (None, End::Exited(_)) if self.panicked() => "guest kernel panicked".into(),
            (None, End::Exited(code)) => {
                format!("guest died without reporting a status (QEMU exit {code:?})")
            }
        }
    }
}

/// Does `haystack` contain `needle`?
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

enum Event {
    Activity,
    /// The kernel log reported a soft lockup this many seconds long.
    Lockup(u64),
    /// The init wrote `KESTREL-READY` on the status channel.
    Ready,
    Exited(ExitStatus),
}

struct Channel {
    path: PathBuf,
    reader: JoinHandle<Received>,
}

/// What a channel's reader kept: the bytes (for [`Sink::Capture`]) and,
/// for each line kept, where it ends in them and when it arrived.
#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    line_ends: Vec<(usize, Instant)>,
}

impl Received {
    /// Each complete line with its arrival time.
    fn lines(&self) -> Vec<(String, Instant)> {
        let mut start = 0;
        self.line_ends
            .iter()
            .map(|&(end, at)| {
                let line = String::from_utf8_lossy(&self.bytes[start..end]).into_owned();
                start = end;
                (line, at)
            })
            .collect()
    }
}

fn listen(
    dir: &Path,
    name: &str,
    sink: Sink,
    echo: bool,
    events: &Sender<Event>,
) -> Result<Channel> {
    listen_scanned(dir, name, sink, echo, Talk::default(), events)
}

/// What a channel's reader does besides reading.
#[derive(Default)]
struct Talk {
    /// Report soft lockups in what arrives.
    scan: bool,
    /// Hand a clone of the connection back here as soon as QEMU connects.
    hand_back: Option<Sender<UnixStream>>,
    /// Report [`Event::Ready`] when a `KESTREL-READY` line arrives.
    watch_ready: bool,
}

/// [`listen`], with a [`Talk`].
fn listen_scanned(
    dir: &Path,
    name: &str,
    sink: Sink,
    echo: bool,
    talk: Talk,
    events: &Sender<Event>,
) -> Result<Channel> {
    let path = dir.join(name);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("could not listen on {}", path.display()))?;
    let events = events.clone();
    let reader = std::thread::Builder::new()
        .name(format!("qemu-{name}"))
        .spawn(move || read_channel(listener, sink, echo, talk, &events))
        .context("could not start a reader thread")?;
    Ok(Channel { path, reader })
}

fn read_channel(
    listener: UnixListener,
    sink: Sink,
    echo: bool,
    talk: Talk,
    events: &Sender<Event>,
) -> Received {
    let Talk {
        scan,
        hand_back,
        watch_ready,
    } = talk;
    let mut kept = Received::default();
    let mut line = Vec::new();
    let Ok((mut stream, _)) = listener.accept() else {
        return kept;
    };
    if let (Some(hand_back), Ok(clone)) = (hand_back, stream.try_clone()) {
        let _ = hand_back.send(clone);
    }
    let ready_line = format!("{READY_LINE}\n");
    let mut ready_seen = !watch_ready;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = &buf[..n];
        // Output errors (a closed pipe on our side) must not stop the
        // guest's channel from draining.
        match sink {
            Sink::Capture => {
                let now = Instant::now();
                for (i, &b) in bytes.iter().enumerate() {
                    if b == b'\n' {
                        kept.line_ends.push((kept.bytes.len() + i + 1, now));
                    }
                }
                kept.bytes.extend_from_slice(bytes);
            }
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes).and_then(|()| out.flush());
            }
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(bytes);
            }
        }
        if echo {
            let _ = std::io::stderr().lock().write_all(bytes);
        }
        let _ = events.send(Event::Activity);
        if !ready_seen && contains(&kept.bytes, ready_line.as_bytes()) {
            ready_seen = true;
            let _ = events.send(Event::Ready);
        }
        if scan {
            for &b in bytes {
                if b != b'\n' {
                    if line.len() < 512 {
                        line.push(b);
                    }
                    continue;
                }
                if let Some(secs) = lockup_secs(&String::from_utf8_lossy(&line)) {
                    let _ = events.send(Event::Lockup(secs));
                }
                line.clear();
            }
        }
    }
    kept
}

/// The seconds of a kernel soft-lockup report
/// (`watchdog: BUG: soft lockup - CPU#0 stuck for 1188s! [kestrel_vcpu 0:351]`).
fn lockup_secs(line: &str) -> Option<u64> {
    let rest = line.split("soft lockup - CPU#").nth(1)?;
    let rest = rest.split("stuck for ").nth(1)?;
    rest.split('s').next()?.parse().ok()
}

impl Channel {
    /// Joins the reader. QEMU has exited, so a connected reader sees EOF;
    /// one still in `accept` (QEMU never connected) is woken by connecting
    /// to it ourselves.
    fn finish(self) -> Vec<u8> {
        self.finish_timed().bytes
    }

    /// [`Channel::finish`] with each line's arrival time.
    fn finish_timed(self) -> Received {
        if !self.reader.is_finished() {
            let _ = UnixStream::connect(&self.path);
        }
        self.reader.join().unwrap_or_default()
    }
}

impl Guest {
    /// Boots the guest, waits for it to end, and returns what it reported.
    /// Errors are ours (QEMU missing, sockets); a guest that fails is an
    /// `Outcome`, not an error.
    pub fn run(&self, qemu: &Qemu) -> Result<Outcome> {
        let dir = tempfile::Builder::new()
            .prefix("kestrel-qemu-")
            .tempdir()
            .context("could not create a temporary directory")?;
        let (tx, rx) = channel();
        let console = listen_scanned(
            dir.path(),
            "console.sock",
            Sink::Capture,
            self.echo_console,
            Talk {
                scan: self.kill_on_lockup,
                ..Talk::default()
            },
            &tx,
        )?;
        let (status_back, status_stream) = match self.snapshot {
            Some(Snapshot::Restore { .. }) => {
                let (tx, rx) = channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let status = listen_scanned(
            dir.path(),
            "status.sock",
            Sink::Capture,
            false,
            Talk {
                hand_back: status_back,
                watch_ready: matches!(self.snapshot, Some(Snapshot::SaveAt(_))),
                ..Talk::default()
            },
            &tx,
        )?;
        // The QMP monitor, for a save, a restore or an inspection: QEMU
        // connects at start, long before the init is ready or the stream is
        // loaded.
        let mut qmp = if self.snapshot.is_some() || self.inspect_when_stuck {
            let path = dir.path().join("qmp.sock");
            let listener = UnixListener::bind(&path)
                .with_context(|| format!("could not listen on {}", path.display()))?;
            let accept = std::thread::Builder::new()
                .name("qemu-qmp".into())
                .spawn(move || listener.accept().map(|(s, _)| s).ok())
                .context("could not start the QMP thread")?;
            Some((path, accept))
        } else {
            None
        };
        let mut snapshot_result = None;
        let ports = match self.ports {
            Some((out, err)) => Some((
                listen(dir.path(), "stdout.sock", out, false, &tx)?,
                listen(dir.path(), "stderr.sock", err, false, &tx)?,
            )),
            None => None,
        };
        let qemu_log_path = dir.path().join("qemu.log");
        let qemu_log =
            std::fs::File::create(&qemu_log_path).context("could not create qemu.log")?;

        let mut cmd = qemu.command();
        cmd.args(self.args(
            &console.path,
            &status.path,
            ports.as_ref().map(|(o, e)| (&o.path, &e.path)),
        ));
        if let Some((path, _)) = &qmp {
            let chardev = format!("socket,id=qmp,path={}", path.display());
            cmd.args(["-chardev", &chardev, "-mon", "chardev=qmp,mode=control"]);
        }
        if let Some(Snapshot::Restore { from, .. }) = &self.snapshot {
            cmd.arg("-incoming").arg(format!("file:{}", from.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qemu_log);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", qemu.bin.display()))?;
        let pid = child.id();
        let waiter_tx = tx.clone();
        let waiter = std::thread::Builder::new()
            .name("qemu-wait".into())
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    let _ = waiter_tx.send(Event::Exited(status));
                }
            })
            .context("could not start the waiter thread")?;
        drop(tx);

        let deadline = start + self.timeout;
        // A restore: wait for the VM to run, then send the job.
        let mut restore = None;
        let restore_parts = match &self.snapshot {
            Some(Snapshot::Restore { job, .. }) => qmp
                .take()
                .zip(status_stream)
                .map(|(qmp, status)| (job.clone(), qmp, status)),
            _ => None,
        };
        if let Some((job, (path, accept), status_stream)) = restore_parts {
            let thread = std::thread::Builder::new()
                .name("qemu-restore".into())
                .spawn(move || -> Result<(), String> {
                    let stream = accept
                        .join()
                        .ok()
                        .flatten()
                        .ok_or("QEMU never connected to its QMP socket")?;
                    wait_running(stream, deadline).map_err(|e| format!("{e:#}"))?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    let mut status = status_stream
                        .recv_timeout(left)
                        .map_err(|_| "QEMU never connected its COM2")?;
                    status
                        .write_all(&job)
                        .map_err(|e| format!("could not send the job on COM2: {e}"))
                })
                .context("could not start the restore thread")?;
            restore = Some((path, thread));
        }
        let mut last_activity = Instant::now();
        let mut idle = self.idle.map(IdleWatch::new);
        let end = loop {
            let now = Instant::now();
            if now >= deadline {
                break End::Timeout;
            }
            let silence_left = self.silence.saturating_sub(now - last_activity);
            if silence_left.is_zero() {
                break End::Silent;
            }
            if let Some(watch) = &mut idle {
                if cpu_secs(pid).is_some_and(|cpu| watch.sample(now, cpu)) {
                    break End::Idle(watch.limit);
                }
            }
            let mut wait = silence_left.min(deadline - now);
            if idle.is_some() {
                wait = wait.min(Duration::from_secs(10));
            }
            match rx.recv_timeout(wait) {
                Ok(Event::Activity) => last_activity = Instant::now(),
                Ok(Event::Lockup(secs)) if self.kill_on_lockup && secs >= LOCKUP_FATAL_SECS => {
                    break End::Lockup(secs)
                }
                Ok(Event::Lockup(_)) => last_activity = Instant::now(),
                Ok(Event::Ready) => {
                    if let (Some(Snapshot::SaveAt(file)), Some((_, accept))) =
                        (&self.snapshot, qmp.take())
                    {
                        let result = match accept.join().ok().flatten() {
                            Some(stream) => {
                                save_and_quit(stream, file, deadline).map_err(|e| format!("{e:#}"))
                            }
                            None => Err("QEMU never connected to its QMP socket".into()),
                        };
                        let failed = result.is_err();
                        snapshot_result = Some(result);
                        if failed {
                            break End::Exited(None);
                        }
                    }
                    last_activity = Instant::now();
                }
                Ok(Event::Exited(status)) => break End::Exited(status.code()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break End::Exited(None),
            }
        };
        let inspection = (self.inspect_when_stuck && !matches!(end, End::Exited(_))).then(|| {
            if qmp.is_none() {
                return "no QMP socket".to_string();
            }
            // An accept still waiting is woken below, with the QMP socket.
            let connected = qmp.take_if(|(_, accept)| accept.is_finished());
            match connected.and_then(|(_, accept)| accept.join().ok().flatten()) {
                Some(stream) => inspect(stream).unwrap_or_else(|e| format!("{e:#}")),
                None => "QEMU never connected to its QMP socket".into(),
            }
        });
        if !matches!(end, End::Exited(_)) || matches!(snapshot_result, Some(Err(_))) {
            kill(pid);
        }
        let _ = waiter.join();
        if let Some((path, accept)) = qmp {
            // QEMU never got as far as connecting: wake the accept.
            if !accept.is_finished() {
                let _ = UnixStream::connect(&path);
            }
            let _ = accept.join();
        }
        let wall = start.elapsed();

        let console = console.finish();
        let received = status.finish_timed();
        if let Some((path, thread)) = restore {
            // QEMU never got as far as its monitor: wake the accept.
            if !thread.is_finished() {
                let _ = UnixStream::connect(&path);
            }
            snapshot_result = Some(
                thread
                    .join()
                    .unwrap_or_else(|_| Err("the restore thread panicked".into())),
            );
        }
        let mut marks = Vec::new();
        let mut status_at = None;
        for (line, at) in received.lines() {
            if let Some(mark) = PhaseMark::parse_line(line.trim_end_matches('\n')) {
                marks.push((mark, at.saturating_duration_since(start)));
            } else if status_at.is_none() && Status::find_in(line.as_bytes()).is_some() {
                status_at = Some(at.saturating_duration_since(start));
            }
        }
        let status_bytes = received.bytes;
        let (stdout, stderr) = match ports {
            Some((out, err)) => (out.finish(), err.finish()),
            None => (Vec::new(), Vec::new()),
        };
        Ok(Outcome {
            status: Status::find_in(&status_bytes),
            end,
            console,
            stdout,
            stderr,
            qemu_log: std::fs::read_to_string(&qemu_log_path).unwrap_or_default(),
            wall,
            marks,
            status_at,
            snapshot: snapshot_result,
            inspection,
        })
    }

    fn args(
        &self,
        console: &Path,
        status: &Path,
        ports: Option<(&PathBuf, &PathBuf)>,
    ) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        match self.accel {
            Accel::Tcg => push(&["-accel", "tcg,thread=multi"]),
            Accel::Kvm => push(&["-accel", "kvm"]),
        }
        let memory = format!("{}M", self.memory_mib);
        match self.machine {
            Machine::Pc => push(&["-M", "pc"]),
            Machine::Microvm => push(&["-M", "microvm,pit=on,pic=on,rtc=off,isa-serial=on"]),
        }
        push(&[
            "-cpu",
            &self.cpu_model,
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &memory,
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ]);
        if self.shared_memory {
            let backend = format!("memory-backend-memfd,id=mem,size={memory},share=on");
            push(&["-object", &backend, "-numa", "node,memdev=mem"]);
        }
        push(&[
            "-kernel",
            &self.kernel.to_string_lossy(),
            "-initrd",
            &self.initrd.to_string_lossy(),
        ]);
        push(&["-append", &self.append]);
        let con = format!("socket,id=con,path={}", console.display());
        let st = format!("socket,id=status,path={}", status.display());
        push(&["-chardev", &con, "-serial", "chardev:con", "-chardev", &st]);
        match self.machine {
            Machine::Pc => push(&["-serial", "chardev:status"]),
            // microvm wires only the first -serial; COM2 is an explicit device.
            Machine::Microvm => push(&["-device", "isa-serial,chardev=status,iobase=0x2f8,irq=3"]),
        }
        if let Some((out, err)) = ports {
            let out = format!("socket,id=out,path={}", out.display());
            let err = format!("socket,id=err,path={}", err.display());
            push(&[
                "-device",
                "virtio-serial-pci,id=vser",
                "-chardev",
                &out,
                "-device",
                "virtserialport,chardev=out,name=kestrel.stdout",
                "-chardev",
                &err,
                "-device",
                "virtserialport,chardev=err,name=kestrel.stderr",
            ]);
        }
        if let Some(fs) = &self.fs {
            let chardev = format!("socket,id=fs,path={}", fs.socket.display());
            let device = format!("vhost-user-fs-pci,chardev=fs,tag={}", fs.tag);
            push(&["-chardev", &chardev, "-device", &device]);
        }
        a
    }
}

/// Over QMP: migrates the running VM into `file` (QEMU stops it when the
/// stream is complete), then quits QEMU.
fn save_and_quit(stream: UnixStream, file: &Path, deadline: Instant) -> Result<()> {
    let mut qmp = Qmp::new(stream, deadline)?;
    qmp.execute(r#"{"execute":"qmp_capabilities"}"#)?;
    qmp.execute(
        r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}"#,
    )?;
    let uri = json_string(&format!("file:{}", file.display()));
    qmp.execute(&format!(
        r#"{{"execute":"migrate","arguments":{{"uri":{uri}}}}}"#
    ))?;
    loop {
        let line = qmp.line()?;
        if !line.contains(r#""event":"MIGRATION""#) {
            continue;
        }
        if line.contains(r#""status":"completed""#) {
            break;
        }
        if line.contains(r#""status":"failed""#) || line.contains(r#""status":"cancelled""#) {
            anyhow::bail!("QEMU's migration to {} failed: {line}", file.display());
        }
    }
    qmp.execute(r#"{"execute":"quit"}"#)?;
    Ok(())
}

/// Over QMP: waits until an incoming VM runs (QEMU starts it by itself
/// once the stream is loaded, as the saved VM was running).
fn wait_running(stream: UnixStream, deadline: Instant) -> Result<()> {
    let mut qmp = Qmp::new(stream, deadline)?;
    qmp.execute(r#"{"execute":"qmp_capabilities"}"#)?;
    // Events come only after the capabilities: ask first, then wait.
    let status = qmp.query(r#"{"execute":"query-status"}"#)?;
    if status.get("status").and_then(serde_json::Value::as_str) == Some("running") {
        return Ok(());
    }
    loop {
        let line = qmp.line()?;
        if line.contains(r#""event":"RESUME""#) {
            return Ok(());
        }
    }
}

/// Asks a stuck guest's QEMU, over QMP, for the [`INSPECTION`] commands'
/// output, one section each.
fn inspect(stream: UnixStream) -> Result<String> {
    let mut qmp = Qmp::new(stream, Instant::now() + Duration::from_secs(20))?;
    qmp.execute(r#"{"execute":"qmp_capabilities"}"#)?;
    let mut out = String::new();
    for command in INSPECTION {
        let request = serde_json::json!({
            "execute": "human-monitor-command",
            "arguments": { "command-line": command },
        });
        let text = match qmp.query(&request.to_string()) {
            Ok(serde_json::Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(e) => format!("{e:#}"),
        };
        out.push_str(&format!("--- {command}\n{}\n", text.trim_end()));
    }
    Ok(out)
}

/// A QMP connection: one JSON object per line each way.
struct Qmp {
    reader: std::io::BufReader<UnixStream>,
    writer: UnixStream,
    deadline: Instant,
}

impl Qmp {
    /// Takes the greeting.
    fn new(stream: UnixStream, deadline: Instant) -> Result<Qmp> {
        let writer = stream
            .try_clone()
            .context("could not clone the QMP socket")?;
        let mut qmp = Qmp {
            reader: std::io::BufReader::new(stream),
            writer,
            deadline,
        };
        let greeting = qmp.line()?;
        anyhow::ensure!(
            greeting.contains(r#""QMP""#),
            "QEMU's QMP greeting was {greeting:?}"
        );
        Ok(qmp)
    }

    /// The next line, with the spaces outside strings' contents dropped
    /// well enough for `contains` checks (QMP writes `"key": value`).
    fn line(&mut self) -> Result<String> {
        Ok(self.raw_line()?.replace(": ", ":").replace(", ", ","))
    }

    /// The next line as QEMU wrote it, without its line end.
    fn raw_line(&mut self) -> Result<String> {
        use std::io::BufRead;
        let left = self.deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "QMP: out of time");
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .context("QMP: set a read timeout")?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).context("QMP: read")?;
        anyhow::ensure!(n > 0, "QMP: QEMU closed the monitor");
        Ok(line.trim_end().to_string())
    }

    /// Sends one command and returns its answer's `return` value (events
    /// on the way are skipped); an `error` answer is an error.
    fn query(&mut self, command: &str) -> Result<serde_json::Value> {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .context("QMP: write")?;
        loop {
            let line = self.raw_line()?;
            let mut answer: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("QMP: not JSON: {line}"))?;
            if let Some(value) = answer.get_mut("return") {
                return Ok(value.take());
            }
            if answer.get("error").is_some() {
                anyhow::bail!("QMP {command} failed: {line}");
            }
        }
    }

    /// Sends one command and waits for its answer (events on the way are
    /// skipped); an `error` answer is an error.
    fn execute(&mut self, command: &str) -> Result<()> {
        self.query(command).map(drop)
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn kill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions. The pid is our child,
    // which the waiter thread has not reaped yet (it reports the exit before
    // we get here otherwise), so it cannot name another process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_come_from_after_the_command_name() {
        // A name with spaces and a parenthesis; utime 1234, stime 56.
        let stat = "4242 (qemu (x) 86) S 1 4242 4242 0 -1 4194560 12 0 0 0 1234 56 0 0 20 0 5 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1290));
        assert_eq!(stat_cpu_ticks("4242 (qemu) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("garbage"), None);
        // This process's own line parses.
        assert!(cpu_secs(std::process::id()).is_some());
    }

    #[test]
    fn idle_means_under_the_share_for_the_whole_limit() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut watch = IdleWatch::new(Duration::from_secs(60));
        assert!(!watch.sample(at(0), 100.0));
        // Busy (50% of a CPU), then idle (1%): idle counts from the last
        // busy sample, and only samples 5 s apart decide.
        assert!(!watch.sample(at(10), 105.0));
        assert!(!watch.sample(at(20), 105.1));
        assert!(!watch.sample(at(22), 105.1));
        assert!(!watch.sample(at(50), 105.3));
        assert!(!watch.sample(at(65), 105.4));
        assert!(watch.sample(at(72), 105.5));
        // A burst of work starts the count again.
        let mut watch = IdleWatch::new(Duration::from_secs(60));
        watch.sample(at(0), 0.0);
        watch.sample(at(40), 0.1);
        assert!(!watch.sample(at(50), 5.0));
        assert!(!watch.sample(at(100), 5.1));
        assert!(watch.sample(at(110), 5.1));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("file:/tmp/a b"), r#""file:/tmp/a b""#);
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }

    #[test]
    fn soft_lockup_reports_are_read() {
        assert_eq!(
            lockup_secs("[ 1620.731666] watchdog: BUG: soft lockup - CPU#0 stuck for 1188s! [kestrel_vcpu 0:351]"),
            Some(1188)
        );
        assert_eq!(
            lockup_secs("watchdog: BUG: soft lockup - CPU#13 stuck for 22s! [swapper/13:0]"),
            Some(22)
        );
        assert_eq!(
            lockup_secs("rcu: INFO: rcu_preempt self-detected stall on CPU"),
            None
        );
        assert_eq!(lockup_secs("soft lockup - CPU#0 stuck for"), None);
    }
}

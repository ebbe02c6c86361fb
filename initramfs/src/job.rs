//! The job spec: what the guest init does, written by the host, read by the init.
//!
//! The spec is a small line-based text file. The base archive carries
//! [`BASE_SPEC_PATH`] (modules to load); the per-run job archive carries
//! [`JOB_SPEC_PATH`] (what to run and where its output and status go). The
//! init reads both (base first) into one [`Spec`].
//!
//! Format (version 1):
//! ```text
//! kestrel-spec 1
//! <key> <field> [<field>…]
//! ```
//! Fields are separated by one space; every byte that is not printable
//! ASCII, and `%` and space themselves, are written as `%XX`. Unknown keys
//! are an error: host and init are always built from the same tree.
//!
//! Invariant: `Spec::parse(&spec.render()) == Ok(spec)` for every `Spec`
//! (tested below); this module has no dependencies so the static init can use
//! it.
//!
//! A warm start (a VM restored from a snapshot of the base archive's boot)
//! has no job archive: the init finds no [`JOB_SPEC_PATH`], writes
//! [`READY_LINE`] and a newline on the status channel, and the host answers
//! on the same channel with a [`JobHeader`] line followed by exactly
//! `len` bytes of job spec text (what [`Spec::render`] writes):
//! ```text
//! guest → host   KESTREL-READY\n
//! host → guest   KESTREL-JOB <len> <realtime_ns> <seed>\n<len bytes of spec>
//! ```
//! `<seed>` is 32 fresh random bytes from the host (64 lowercase hex
//! digits) that the init mixes into the kernel's random pool: every warm
//! start restores the same kernel state, CRNG included, so without it
//! every run would draw the same random numbers.
//!
//! The job window: kestrel reserves [`JOB_WINDOW_LEN`] bytes of guest RAM
//! at [`JOB_WINDOW_ADDR`] (an e820 "reserved" range, so the kernel never
//! uses it and `/dev/mem` may read it) and writes [`JOB_WINDOW_MAGIC`] at
//! its start before the guest runs. An init that finds the magic through
//! `/dev/mem` writes [`JOB_WINDOW_ACK`] right after it, before the ready
//! line; a host that finds both (in the restored RAM) writes the spec at
//! [`JOB_WINDOW_DATA`] inside the window, the header line, with the flag
//! [`JOB_WINDOW_FLAG`], at [`JOB_WINDOW_HEADER`], and then sends one byte,
//! [`JOB_WINDOW_BELL`], on the channel:
//! ```text
//! window         +0x100: KESTREL-JOB <len> <realtime_ns> <seed> window\n
//!                +0x1000: <len bytes of spec>
//! host → guest   \x07
//! ```
//! so neither the spec nor its header crosses the UART a byte (an
//! interrupt and a few port exits) at a time: the guest receives one byte.
//! Any other host (QEMU in the benches) sends header and spec on the
//! channel; an init reading the channel tells the two apart by the first
//! byte (a header starts with `K`).

use std::fmt;

/// Where the base archive keeps its spec (modules to load).
pub const BASE_SPEC_PATH: &str = "kestrel/base.spec";
/// Where the per-run job archive keeps its spec.
pub const JOB_SPEC_PATH: &str = "kestrel/job.spec";
/// Directory in the base archive that holds packed kernel modules.
pub const MODULES_DIR: &str = "kestrel/modules";
/// First line of every spec file.
pub const MAGIC: &str = "kestrel-spec 1";

/// The prefix of the one line the init writes on the status channel.
/// The full line is `KESTREL-STATUS <status>` where `<status>` is what
/// [`Status`]'s `Display` prints.
pub const STATUS_PREFIX: &str = "KESTREL-STATUS ";

/// Where a stream of the guest command goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Dest {
    /// `/dev/console` (the kernel console).
    #[default]
    Console,
    /// A virtio-console port found by its name (`/sys/class/virtio-ports/*/name`).
    VirtioPort(String),
    /// A device or file path in the init's own file system, e.g. `/dev/ttyS1`.
    Path(String),
}

/// What the init writes (followed by `\n`) on the status channel when it
/// waits for its job there (a warm start, see the module docs).
pub const READY_LINE: &str = "KESTREL-READY";
/// The start of the header line the host sends before a job spec on the
/// status channel: `KESTREL-JOB <len> <realtime_ns> <seed>\n` (see
/// [`JobHeader`]).
pub const JOB_HEADER_PREFIX: &str = "KESTREL-JOB ";
/// The largest job spec the host may send on the status channel.
pub const MAX_JOB_BYTES: u32 = 1 << 20;

/// How many random bytes a [`JobHeader`] carries for the guest kernel.
pub const SEED_BYTES: usize = 32;

/// Guest-physical start of the job window (see the module docs): below
/// 1 MiB, clear of kestrel's boot data (page tables end at 0xc000, the
/// command line is 0x20000..0x30000) and of the EBDA.
pub const JOB_WINDOW_ADDR: u64 = 0x4_0000;
/// Length of the job window.
pub const JOB_WINDOW_LEN: u64 = 0x4_0000;
/// Where the spec starts inside the window.
pub const JOB_WINDOW_DATA: u64 = 0x1000;
/// What the host writes at the window's start.
pub const JOB_WINDOW_MAGIC: &[u8; 16] = b"KESTREL-JOBWIN1\n";
/// What an init that can read the window writes right after the magic
/// (version 2: it takes the header from the window on [`JOB_WINDOW_BELL`];
/// version 1's init took only the spec from there).
pub const JOB_WINDOW_ACK: &[u8; 16] = b"KESTREL-JOBACK2\n";
/// Where [`JOB_WINDOW_ACK`] goes inside the window.
pub const JOB_WINDOW_ACK_AT: u64 = JOB_WINDOW_MAGIC.len() as u64;
/// Where the header line goes inside the window (at most
/// [`JOB_WINDOW_HEADER_MAX`] bytes, newline included).
pub const JOB_WINDOW_HEADER: u64 = 0x100;
/// The room for the header line in the window.
pub const JOB_WINDOW_HEADER_MAX: usize = 128;
/// The one byte the host sends on the channel once header and spec stand
/// in the window (ASCII BEL; never the first byte of a header line).
pub const JOB_WINDOW_BELL: u8 = 0x07;
/// The header's fourth field when the spec is in the window.
pub const JOB_WINDOW_FLAG: &str = "window";
/// The largest spec the window holds.
pub const JOB_WINDOW_MAX: u32 = (JOB_WINDOW_LEN - JOB_WINDOW_DATA) as u32;

// The window's parts do not overlap: magic, ack, header, spec.
const _: () = assert!(
    JOB_WINDOW_ACK_AT + JOB_WINDOW_ACK.len() as u64 <= JOB_WINDOW_HEADER
        && JOB_WINDOW_HEADER + JOB_WINDOW_HEADER_MAX as u64 <= JOB_WINDOW_DATA
);

/// The header line before a job spec sent on the status channel.
///
/// Wire form: `KESTREL-JOB <len> <realtime_ns> <seed>\n`, both numbers in
/// decimal (ASCII digits only), the seed as exactly `2 * SEED_BYTES`
/// lowercase hex digits. Exactly `len` bytes of spec text follow the
/// newline — or, with a fourth field `window`, nothing follows and the
/// spec is in the job window (at most [`JOB_WINDOW_MAX`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobHeader {
    /// Bytes of spec text after the header line, `1..=MAX_JOB_BYTES`.
    pub len: u32,
    /// The host's `CLOCK_REALTIME` in nanoseconds since the epoch, when it
    /// sent the job (the guest sets its clock to it).
    pub realtime_ns: u64,
    /// Fresh random bytes from the host, which the guest mixes into its
    /// kernel's random pool (a restored snapshot's pool is the same in
    /// every run).
    pub seed: [u8; SEED_BYTES],
    /// The spec is in the job window, not after the header line.
    pub in_window: bool,
}

impl JobHeader {
    /// The header line, newline included.
    pub fn line(&self) -> String {
        format!(
            "{JOB_HEADER_PREFIX}{} {} {}{}\n",
            self.len,
            self.realtime_ns,
            hex(&self.seed),
            if self.in_window {
                format!(" {JOB_WINDOW_FLAG}")
            } else {
                String::new()
            }
        )
    }

    /// Parses one header line (with or without its trailing `\n`; nothing
    /// else is tolerated, not even a `\r`).
    pub fn parse(line: &str) -> Result<JobHeader, String> {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let rest = body.strip_prefix(JOB_HEADER_PREFIX).ok_or_else(|| {
            format!("job header {line:?} does not start with {JOB_HEADER_PREFIX:?}")
        })?;
        let fields: Vec<&str> = rest.split(' ').collect();
        let (len, realtime_ns, seed, in_window) = match fields.as_slice() {
            [len, realtime_ns, seed] => (len, realtime_ns, seed, false),
            [len, realtime_ns, seed, flag] if *flag == JOB_WINDOW_FLAG => {
                (len, realtime_ns, seed, true)
            }
            _ => {
                return Err(format!(
                    "job header {line:?} has {} fields instead of a length, a time, a seed \
                     and maybe `{JOB_WINDOW_FLAG}`",
                    fields.len()
                ))
            }
        };
        let len = decimal::<u32>(len)
            .ok_or_else(|| format!("job header {line:?} has a bad length {len:?}"))?;
        let realtime_ns = decimal::<u64>(realtime_ns)
            .ok_or_else(|| format!("job header {line:?} has a bad time {realtime_ns:?}"))?;
        let seed = unhex::<SEED_BYTES>(seed).ok_or_else(|| {
            format!(
                "job header {line:?} has a bad seed {seed:?}, not {} lowercase hex digits",
                2 * SEED_BYTES
            )
        })?;
        let max = if in_window {
            JOB_WINDOW_MAX
        } else {
            MAX_JOB_BYTES
        };
        if len == 0 || len > max {
            return Err(format!(
                "job header {line:?} announces {len} bytes, not 1 to {max}"
            ));
        }
        Ok(JobHeader {
            len,
            realtime_ns,
            seed,
            in_window,
        })
    }
}

/// `bytes` as lowercase hex digits, two a byte.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Exactly `2 * N` lowercase hex digits as `N` bytes (what [`hex`] writes).
fn unhex<const N: usize>(field: &str) -> Option<[u8; N]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    let digits = field.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// A number written in ASCII digits only (no sign, no spaces), in range.
fn decimal<T: std::str::FromStr>(field: &str) -> Option<T> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

/// Where the guest root of the command comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Root {
    /// The command runs inside the initramfs itself.
    #[default]
    Initramfs,
    /// A virtio-fs share with this tag, mounted read-only as the command's
    /// root; [`Spec::writable`] paths are bound writable from the same share.
    VirtioFs(String),
}

/// A virtio-fs share the init mounts over a path of the command's root
/// (after the root itself, shallowest path first, see [`Spec::shares`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The virtio-fs tag of the device.
    pub tag: String,
    /// Absolute path inside the command's root.
    pub path: String,
    /// Mounted read-write (else read-only).
    pub writable: bool,
}

/// Which mode a module was packed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Path inside the initramfs, e.g. `/kestrel/modules/fuse.ko`.
    pub path: String,
    /// Module parameters (`name=value` separated by spaces), may be empty.
    pub params: String,
}

/// Everything the init needs to know. Built on the host, parsed in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spec {
    /// Modules to load, in this order (dependencies first).
    pub modules: Vec<Module>,
    /// argv of the command; `argv[0]` is the program (a path or a name
    /// looked up in `PATH`). Empty: the init only reports status 0.
    pub argv: Vec<String>,
    /// Environment of the command as `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory of the command (inside its root).
    pub cwd: Option<String>,
    /// User and group to run as (root when absent).
    pub uid: Option<u32>,
    /// Group to run as.
    pub gid: Option<u32>,
    /// The command's root.
    pub root: Root,
    /// Paths (absolute, inside the command root) bound writable from the share.
    pub writable: Vec<String>,
    /// Paths that get a fresh tmpfs.
    pub tmpfs: Vec<String>,
    /// More virtio-fs shares, each mounted over its path (a missing mount
    /// point is made: inside a tmpfs directly, inside the read-only root
    /// through an overlay of its deepest existing ancestor).
    pub shares: Vec<Share>,
    /// Where the command's stdout goes.
    pub stdout: Dest,
    /// Where the command's stderr goes.
    pub stderr: Dest,
    /// Where the init writes the `KESTREL-STATUS` line (None: kmsg only).
    pub status: Option<Dest>,
    /// Run the command on a terminal: its stdin, stdout and stderr, and its
    /// controlling tty (it leads a session on it, so job control and
    /// Ctrl-C work); `stdout`/`stderr` are then unused.
    pub tty: Option<Tty>,
}

/// A terminal for the command (see [`Spec::tty`]): the virtio-console
/// port the host marked as a console (the guest's `/dev/hvc0`), its size
/// at start, and the port later sizes arrive on as `ROWS COLS` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tty {
    /// Name of the console port (its appearance means `/dev/hvc0` exists).
    pub port: String,
    /// Rows at start.
    pub rows: u16,
    /// Columns at start.
    pub cols: u16,
    /// Name of the port that carries window-size changes.
    pub winsize_port: String,
}

/// How the guest command ended, as reported by the init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The command exited with this code.
    Exit(u8),
    /// The command was killed by this signal.
    Signal(u8),
    /// The init could not run the command; the text says which step failed.
    InitError(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exit(code) => write!(f, "exit={code}"),
            Status::Signal(sig) => write!(f, "signal={sig}"),
            Status::InitError(what) => write!(f, "init-error={}", encode(what)),
        }
    }
}

impl Status {
    /// Finds the last well-formed status line in `channel` (the bytes the
    /// host read from the status channel). `None`: the guest never reported.
    pub fn find_in(channel: &[u8]) -> Option<Status> {
        let text = String::from_utf8_lossy(channel);
        text.lines()
            .rev()
            .filter_map(|line| line.trim_end_matches('\r').split_once(STATUS_PREFIX))
            .find_map(|(_, rest)| Status::parse(rest.trim()))
    }

    fn parse(s: &str) -> Option<Status> {
        let (key, value) = s.split_once('=')?;
        match key {
            "exit" => value.parse().ok().map(Status::Exit),
            "signal" => value.parse().ok().map(Status::Signal),
            "init-error" => decode(value).ok().map(Status::InitError),
            _ => None,
        }
    }
}

/// The prefix of a phase mark the init writes on the status channel before
/// the status line: `KESTREL-PHASE <phase> uptime_us=<N>`, `N` the guest's
/// `CLOCK_BOOTTIME` in microseconds when the phase began.
pub const PHASE_PREFIX: &str = "KESTREL-PHASE ";

/// A point in the guest's boot that the init reports (in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The init runs (PID 1 started, `/dev`, `/proc`, `/sys` mounted, spec read).
    Init,
    /// The job arrived over the status channel (warm starts only: a cold
    /// boot's job is in the initramfs and has no such mark).
    Job,
    /// The spec's modules are loaded.
    Modules,
    /// The command's root is mounted (shares, tmpfs, binds).
    Root,
    /// The command is about to be executed.
    Command,
    /// The command exited (everything it started reaped).
    CommandEnd,
}

impl Phase {
    /// Every phase, in boot order.
    pub const ALL: [Phase; 6] = [
        Phase::Init,
        Phase::Job,
        Phase::Modules,
        Phase::Root,
        Phase::Command,
        Phase::CommandEnd,
    ];

    /// The name on the wire and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Init => "init",
            Phase::Job => "job",
            Phase::Modules => "modules",
            Phase::Root => "root",
            Phase::Command => "command",
            Phase::CommandEnd => "command-end",
        }
    }

    /// The phase called `name`.
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One phase mark as it travels on the status channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseMark {
    /// Which phase.
    pub phase: Phase,
    /// Guest uptime (`CLOCK_BOOTTIME`) in microseconds.
    pub uptime_us: u64,
}

impl PhaseMark {
    /// The line written on the channel, newline included.
    pub fn line(&self) -> String {
        format!(
            "{PHASE_PREFIX}{} uptime_us={}\n",
            self.phase.name(),
            self.uptime_us
        )
    }

    /// Parses one line (a trailing `\r` or surrounding noise before the
    /// prefix is allowed, as for status lines).
    pub fn parse_line(line: &str) -> Option<PhaseMark> {
        let (_, rest) = line.trim_end_matches('\r').split_once(PHASE_PREFIX)?;
        let mut words = rest.split_ascii_whitespace();
        let phase = Phase::from_name(words.next()?)?;
        let uptime_us = words.next()?.strip_prefix("uptime_us=")?.parse().ok()?;
        words
            .next()
            .is_none()
            .then_some(PhaseMark { phase, uptime_us })
    }

    /// Every well-formed mark in `channel`, in order.
    pub fn find_all(channel: &[u8]) -> Vec<PhaseMark> {
        String::from_utf8_lossy(channel)
            .lines()
            .filter_map(PhaseMark::parse_line)
            .collect()
    }
}

/// A spec that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spec line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for ParseError {}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        // An empty field must still be a field.
        out.push('%');
    }
    out
}

fn decode(field: &str) -> Result<String, String> {
    if field == "%" {
        return Ok(String::new());
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = field
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("truncated escape in {field:?}"))?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape %{hex}"))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("field {field:?} is not UTF-8"))
}

impl Dest {
    fn render(&self) -> String {
        match self {
            Dest::Console => "console".to_string(),
            Dest::VirtioPort(name) => format!("vport {}", encode(name)),
            Dest::Path(path) => format!("path {}", encode(path)),
        }
    }

    fn parse(fields: &[String]) -> Result<Dest, String> {
        match fields {
            [kind] if kind == "console" => Ok(Dest::Console),
            [kind, name] if kind == "vport" => Ok(Dest::VirtioPort(name.clone())),
            [kind, path] if kind == "path" => Ok(Dest::Path(path.clone())),
            _ => Err(format!("bad destination {fields:?}")),
        }
    }
}

impl Spec {
    /// Renders the spec in the text format described in the module docs.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(MAGIC);
        out.push('\n');
        let mut line = |key: &str, fields: &[&str]| {
            out.push_str(key);
            for f in fields {
                out.push(' ');
                out.push_str(&encode(f));
            }
            out.push('\n');
        };
        for m in &self.modules {
            line("module", &[&m.path, &m.params]);
        }
        for a in &self.argv {
            line("arg", &[a]);
        }
        for e in &self.env {
            line("env", &[e]);
        }
        if let Some(cwd) = &self.cwd {
            line("cwd", &[cwd]);
        }
        if let Some(uid) = self.uid {
            line("uid", &[&uid.to_string()]);
        }
        if let Some(gid) = self.gid {
            line("gid", &[&gid.to_string()]);
        }
        match &self.root {
            Root::Initramfs => {}
            Root::VirtioFs(tag) => line("root-virtiofs", &[tag]),
        }
        for w in &self.writable {
            line("writable", &[w]);
        }
        for t in &self.tmpfs {
            line("tmpfs", &[t]);
        }
        for sh in &self.shares {
            let mode = if sh.writable { "rw" } else { "ro" };
            line("share", &[&sh.tag, &sh.path, mode]);
        }
        if let Some(t) = &self.tty {
            line(
                "tty",
                &[
                    &t.port,
                    &t.rows.to_string(),
                    &t.cols.to_string(),
                    &t.winsize_port,
                ],
            );
        }
        // Destinations carry their own sub-keyword, already encoded.
        let mut raw = |key: &str, dest: &Dest| {
            out.push_str(key);
            out.push(' ');
            out.push_str(&dest.render());
            out.push('\n');
        };
        if self.stdout != Dest::Console {
            raw("stdout", &self.stdout);
        }
        if self.stderr != Dest::Console {
            raw("stderr", &self.stderr);
        }
        if let Some(status) = &self.status {
            raw("status", status);
        }
        out
    }

    /// Parses one spec file and adds what it says to `self` (so the base
    /// spec and the job spec can be read into one `Spec`).
    pub fn merge_parse(&mut self, text: &str) -> Result<(), ParseError> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, first)) if first == MAGIC => {}
            _ => {
                return Err(ParseError {
                    line: 1,
                    what: format!("expected {MAGIC:?}"),
                })
            }
        }
        for (idx, raw) in lines {
            let err = |what: String| ParseError {
                line: idx + 1,
                what,
            };
            if raw.is_empty() {
                continue;
            }
            let mut parts = raw.split(' ');
            let key = parts.next().unwrap_or_default();
            let fields = parts
                .map(decode)
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let one = || match fields.as_slice() {
                [f] => Ok(f.clone()),
                _ => Err(err(format!("{key} takes one field, got {}", fields.len()))),
            };
            match key {
                "module" => match fields.as_slice() {
                    [path, params] => self.modules.push(Module {
                        path: path.clone(),
                        params: params.clone(),
                    }),
                    _ => return Err(err("module takes a path and parameters".into())),
                },
                "arg" => self.argv.push(one()?),
                "env" => self.env.push(one()?),
                "cwd" => self.cwd = Some(one()?),
                "uid" => self.uid = Some(one()?.parse().map_err(|_| err("bad uid".into()))?),
                "gid" => self.gid = Some(one()?.parse().map_err(|_| err("bad gid".into()))?),
                "root-virtiofs" => self.root = Root::VirtioFs(one()?),
                "writable" => self.writable.push(one()?),
                "tmpfs" => self.tmpfs.push(one()?),
                "share" => match fields.as_slice() {
                    [tag, path, mode] if mode == "ro" || mode == "rw" => self.shares.push(Share {
                        tag: tag.clone(),
                        path: path.clone(),
                        writable: mode == "rw",
                    }),
                    _ => return Err(err("share takes a tag, a path and ro|rw".into())),
                },
                "stdout" => self.stdout = Dest::parse(&fields).map_err(err)?,
                "stderr" => self.stderr = Dest::parse(&fields).map_err(err)?,
                "status" => self.status = Some(Dest::parse(&fields).map_err(err)?),
                "tty" => match fields.as_slice() {
                    [port, rows, cols, winsize_port] => {
                        let size = |v: &str| {
                            v.parse::<u16>()
                                .map_err(|_| err(format!("tty size {v:?} is not a number")))
                        };
                        self.tty = Some(Tty {
                            port: port.clone(),
                            rows: size(rows)?,
                            cols: size(cols)?,
                            winsize_port: winsize_port.clone(),
                        })
                    }
                    _ => {
                        return Err(err(
                            "tty takes a port, rows, columns and a window-size port".into(),
                        ))
                    }
                },
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        Ok(())
    }

    /// Parses one spec file.
    pub fn parse(text: &str) -> Result<Spec, ParseError> {
        let mut spec = Spec::default();
        spec.merge_parse(text)?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Spec {
        Spec {
            modules: vec![Module {
                path: "/kestrel/modules/fuse.ko".into(),
                params: String::new(),
            }],
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo 'a b' %x\n\t".into(),
                String::new(),
            ],
            env: vec!["PATH=/usr/bin:/bin".into(), "ÄÖ=ü".into()],
            cwd: Some("/work dir".into()),
            uid: Some(1000),
            gid: Some(100),
            root: Root::VirtioFs("kestrel-root".into()),
            writable: vec!["/work".into()],
            tmpfs: vec!["/tmp".into()],
            shares: vec![
                Share {
                    tag: "kestrel-share0".into(),
                    path: "/lib/modules/6.1 x".into(),
                    writable: false,
                },
                Share {
                    tag: "kestrel-share1".into(),
                    path: "/work/out".into(),
                    writable: true,
                },
            ],
            stdout: Dest::VirtioPort("kestrel.stdout".into()),
            stderr: Dest::Path("/dev/ttyS2".into()),
            status: Some(Dest::Path("/dev/ttyS1".into())),
            tty: Some(Tty {
                port: "kestrel.tty".into(),
                rows: 40,
                cols: 132,
                winsize_port: "kestrel.winsize".into(),
            }),
        }
    }

    #[test]
    fn phase_marks_round_trip_and_junk_is_ignored() {
        for (i, phase) in Phase::ALL.into_iter().enumerate() {
            let mark = PhaseMark {
                phase,
                uptime_us: 1_000_000 * i as u64 + 7,
            };
            let line = mark.line();
            assert!(line.ends_with('\n') && line.starts_with(PHASE_PREFIX));
            assert_eq!(PhaseMark::parse_line(line.trim_end()), Some(mark));
            assert_eq!(Phase::from_name(phase.name()), Some(phase));
        }
        let channel = "noise\r\nKESTREL-PHASE init uptime_us=5\r\n\
             KESTREL-PHASE bogus uptime_us=1\n\
             KESTREL-PHASE root uptime_us=x\n\
             KESTREL-PHASE root uptime_us=9 extra\n\
             KESTREL-PHASE command uptime_us=12\n\
             KESTREL-STATUS exit=0\n";
        let marks = PhaseMark::find_all(channel.as_bytes());
        assert_eq!(
            marks,
            vec![
                PhaseMark {
                    phase: Phase::Init,
                    uptime_us: 5
                },
                PhaseMark {
                    phase: Phase::Command,
                    uptime_us: 12
                }
            ]
        );
        // Phase lines never look like a status.
        assert_eq!(Status::find_in(b"KESTREL-PHASE init uptime_us=5\n"), None);
        assert_eq!(Status::find_in(channel.as_bytes()), Some(Status::Exit(0)));
    }

    #[test]
    fn the_job_phase_sits_between_init_and_modules() {
        assert_eq!(Phase::from_name("job"), Some(Phase::Job));
        assert!(Phase::Init < Phase::Job && Phase::Job < Phase::Modules);
        assert_eq!(&Phase::ALL[..3], [Phase::Init, Phase::Job, Phase::Modules]);
        // ALL lists every phase in order, once.
        assert!(Phase::ALL.windows(2).all(|w| w[0] < w[1]));
        let mark = PhaseMark {
            phase: Phase::Job,
            uptime_us: 42,
        };
        assert_eq!(mark.line(), "KESTREL-PHASE job uptime_us=42\n");
        assert_eq!(PhaseMark::parse_line(&mark.line()), Some(mark));
        let channel = format!(
            "KESTREL-PHASE init uptime_us=1\n{READY_LINE}\n{}",
            mark.line()
        );
        let phases: Vec<Phase> = PhaseMark::find_all(channel.as_bytes())
            .iter()
            .map(|m| m.phase)
            .collect();
        assert_eq!(phases, [Phase::Init, Phase::Job]);
        // The ready line is neither a mark nor a status.
        assert_eq!(PhaseMark::parse_line(READY_LINE), None);
        assert_eq!(Status::find_in(READY_LINE.as_bytes()), None);
    }

    /// A seed in its wire form: bytes 0x00 to 0x1f.
    const SEED_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn seed() -> [u8; SEED_BYTES] {
        std::array::from_fn(|i| u8::try_from(i).unwrap())
    }

    #[test]
    fn job_headers_round_trip() {
        for header in [
            JobHeader {
                len: 1,
                realtime_ns: 0,
                seed: [0; SEED_BYTES],
                in_window: false,
            },
            JobHeader {
                len: 321,
                realtime_ns: 1_700_000_000_123_456_789,
                seed: seed(),
                in_window: true,
            },
            JobHeader {
                len: MAX_JOB_BYTES,
                realtime_ns: u64::MAX,
                seed: [0xff; SEED_BYTES],
                in_window: false,
            },
            JobHeader {
                len: JOB_WINDOW_MAX,
                realtime_ns: 5,
                seed: seed(),
                in_window: true,
            },
        ] {
            let line = header.line();
            assert!(line.starts_with(JOB_HEADER_PREFIX) && line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1);
            assert_eq!(JobHeader::parse(&line), Ok(header));
            assert_eq!(JobHeader::parse(line.trim_end_matches('\n')), Ok(header));
            if header.in_window {
                // The longest flagged line fits its room in the window.
                assert!(line.len() <= JOB_WINDOW_HEADER_MAX, "{line:?}");
            }
        }
        assert_eq!(
            JobHeader {
                len: 12,
                realtime_ns: 34,
                seed: seed(),
                in_window: false,
            }
            .line(),
            format!("KESTREL-JOB 12 34 {SEED_HEX}\n")
        );
        assert_eq!(
            JobHeader {
                len: 12,
                realtime_ns: 34,
                seed: seed(),
                in_window: true,
            }
            .line(),
            format!("KESTREL-JOB 12 34 {SEED_HEX} window\n")
        );
    }

    #[test]
    fn job_header_seeds_round_trip() {
        // Every byte value, in both nibble positions.
        for first in (0..=255u8).step_by(SEED_BYTES) {
            let seed: [u8; SEED_BYTES] =
                std::array::from_fn(|i| first.wrapping_add(u8::try_from(i).unwrap()));
            let header = JobHeader {
                len: 1,
                realtime_ns: 1,
                seed,
                in_window: false,
            };
            let line = header.line();
            let field = line.trim_end().rsplit(' ').next().unwrap();
            assert_eq!(field.len(), 2 * SEED_BYTES);
            assert!(field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert_eq!(JobHeader::parse(&line).map(|h| h.seed), Ok(seed));
        }
        let line = format!("KESTREL-JOB 1 2 {SEED_HEX}\n");
        assert_eq!(JobHeader::parse(&line).map(|h| h.seed), Ok(seed()));
    }

    #[test]
    fn bad_job_header_seeds_are_refused() {
        let s = SEED_HEX;
        let upper = s.to_ascii_uppercase();
        let one_upper = format!("{}A", &s[..63]);
        let short = &s[..63];
        let odd_long = format!("{s}0");
        let long = format!("{s}00");
        let signed = format!("+{}", &s[1..]);
        let prefixed = format!("0x{}", &s[2..]);
        let spaced = format!("{}\t{}", &s[..32], &s[33..]);
        let wide = format!("{}٣", &s[..62]); // 64 bytes, not 64 digits
        let g = format!("{}g", &s[..63]);
        let nul = format!("{}\0", &s[..63]);
        for seed in [
            "",
            short,
            odd_long.as_str(),
            long.as_str(),
            upper.as_str(),
            one_upper.as_str(),
            signed.as_str(),
            prefixed.as_str(),
            spaced.as_str(),
            wide.as_str(),
            g.as_str(),
            nul.as_str(),
        ] {
            let line = format!("KESTREL-JOB 12 34 {seed}\n");
            let e = JobHeader::parse(&line).unwrap_err();
            assert!(e.contains("has a bad seed"), "{line:?}: {e}");
            assert!(e.ends_with("not 64 lowercase hex digits"), "{e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        // A `\r` (or a second newline) ends up in the seed field.
        for line in [
            format!("KESTREL-JOB 12 34 {s}\r\n"),
            format!("KESTREL-JOB 12 34 {s}\r"),
            format!("KESTREL-JOB 12 34 {s}\n\n"),
        ] {
            let e = JobHeader::parse(&line).unwrap_err();
            assert!(e.contains("has a bad seed"), "{line:?}: {e}");
        }
        // A missing or an extra field.
        for (line, why) in [
            ("KESTREL-JOB 12 34\n".to_string(), "has 2 fields"),
            ("KESTREL-JOB 12 34 \n".to_string(), "has a bad seed"),
            (format!("KESTREL-JOB 12 {s}\n"), "has 2 fields"),
            (format!("KESTREL-JOB 12 34 {s} \n"), "has 4 fields"),
            (format!("KESTREL-JOB 12 34 {s} {s}\n"), "has 4 fields"),
            (format!("KESTREL-JOB 12 34 {s} 56\n"), "has 4 fields"),
            (format!("KESTREL-JOB 12 34  {s}\n"), "has 4 fields"),
            (format!("KESTREL-JOB 12 {s} 34\n"), "bad time"),
        ] {
            let e = JobHeader::parse(&line).unwrap_err();
            assert!(e.contains(why), "{line:?}: {e}");
        }
        let e = JobHeader::parse("KESTREL-JOB 12 34\n").unwrap_err();
        assert!(
            e.ends_with("has 2 fields instead of a length, a time, a seed and maybe `window`"),
            "{e}"
        );
    }

    #[test]
    fn bad_job_headers_are_refused() {
        let max = MAX_JOB_BYTES;
        let s = SEED_HEX;
        for (line, why) in [
            ("".to_string(), "does not start with"),
            ("\n".to_string(), "does not start with"),
            ("KESTREL-JOB".to_string(), "does not start with"),
            (format!("kestrel-job 1 2 {s}\n"), "does not start with"),
            (format!(" KESTREL-JOB 1 2 {s}\n"), "does not start with"),
            (
                "KESTREL-PHASE init uptime_us=1\n".to_string(),
                "does not start with",
            ),
            ("KESTREL-JOB 12\n".to_string(), "has 1 fields"),
            (format!("KESTREL-JOB 12 34 {s} 56\n"), "has 4 fields"),
            (format!("KESTREL-JOB 12 34 {s} \n"), "has 4 fields"),
            (format!("KESTREL-JOB 12  34 {s}\n"), "has 4 fields"),
            (format!("KESTREL-JOB  12 34 {s}\n"), "has 4 fields"),
            (format!("KESTREL-JOB 12\t34 {s}\n"), "has 2 fields"),
            (format!("KESTREL-JOB +12 34 {s}\n"), "bad length"),
            (format!("KESTREL-JOB -1 34 {s}\n"), "bad length"),
            (format!("KESTREL-JOB 0x10 34 {s}\n"), "bad length"),
            (format!("KESTREL-JOB 1_0 34 {s}\n"), "bad length"),
            (format!("KESTREL-JOB 12 +34 {s}\n"), "bad time"),
            (format!("KESTREL-JOB 12 3.4 {s}\n"), "bad time"),
            (format!("KESTREL-JOB 12 ٣ {s}\n"), "bad time"),
            (format!("KESTREL-JOB 4294967296 1 {s}\n"), "bad length"),
            (
                format!("KESTREL-JOB 1 18446744073709551616 {s}\n"),
                "bad time",
            ),
            (format!("KESTREL-JOB 0 1 {s}\n"), "announces 0 bytes"),
            (format!("KESTREL-JOB 00 1 {s}\n"), "announces 0 bytes"),
        ] {
            let e = JobHeader::parse(&line).unwrap_err();
            assert!(e.contains(why), "{line:?}: {e}");
            assert!(e.starts_with("job header "), "{e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        let too_big = format!("KESTREL-JOB {} 1 {s}\n", max + 1);
        let e = JobHeader::parse(&too_big).unwrap_err();
        assert!(e.ends_with(&format!("not 1 to {max}")), "{e}");
        assert_eq!(
            JobHeader::parse(&format!("KESTREL-JOB {max} 1 {s}")).map(|h| h.len),
            Ok(max)
        );
    }

    #[test]
    fn round_trips() {
        let spec = sample();
        let text = spec.render();
        assert_eq!(Spec::parse(&text), Ok(spec));
        assert_eq!(Spec::parse(&Spec::default().render()), Ok(Spec::default()));
    }

    #[test]
    fn rendered_fields_have_no_spaces_or_newlines() {
        let text = sample().render();
        for line in text.lines().skip(1) {
            let fields: Vec<_> = line.split(' ').collect();
            assert!(fields.iter().all(|f| !f.is_empty()), "{line:?}");
        }
        assert_eq!(text.lines().count(), 20);
    }

    #[test]
    fn merges_base_and_job() {
        let base = Spec {
            modules: sample().modules,
            ..Spec::default()
        };
        let job = Spec {
            argv: vec!["true".into()],
            ..Spec::default()
        };
        let mut merged = Spec::parse(&base.render()).unwrap();
        merged.merge_parse(&job.render()).unwrap();
        assert_eq!(merged.modules, base.modules);
        assert_eq!(merged.argv, job.argv);
    }

    #[test]
    fn rejects_bad_input_with_line_numbers() {
        assert_eq!(Spec::parse("nope").unwrap_err().line, 1);
        let e = Spec::parse("kestrel-spec 1\narg a\nfrobnicate x\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.what.contains("frobnicate"));
        let e = Spec::parse("kestrel-spec 1\narg a b\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Spec::parse("kestrel-spec 1\nuid x\n").unwrap_err();
        assert!(e.what.contains("uid"));
        assert!(Spec::parse("kestrel-spec 1\narg %4\n").is_err());
        assert!(Spec::parse("kestrel-spec 1\nstdout vport\n").is_err());
        let e = Spec::parse("kestrel-spec 1\nshare t /p yes\n").unwrap_err();
        assert!(e.what.contains("ro|rw"), "{e}");
        assert!(Spec::parse("kestrel-spec 1\nshare t /p\n").is_err());
        let e = Spec::parse("kestrel-spec 1\ntty p 40 wide w\n").unwrap_err();
        assert!(e.what.contains("\"wide\" is not a number"), "{e:?}");
        let e = Spec::parse("kestrel-spec 1\ntty p 40 80\n").unwrap_err();
        assert!(e.what.contains("tty takes a port"), "{e:?}");
        assert!(Spec::parse("kestrel-spec 1\ntty p 70000 80 w\n").is_err());
    }

    #[test]
    fn status_lines_are_found_and_garbage_ignored() {
        for status in [
            Status::Exit(0),
            Status::Exit(255),
            Status::Signal(9),
            Status::InitError("mount /proc: EPERM\nx".into()),
        ] {
            let channel = format!("noise\r\n{STATUS_PREFIX}{status}\r\n");
            assert_eq!(Status::find_in(channel.as_bytes()), Some(status));
        }
        assert_eq!(Status::find_in(b""), None);
        assert_eq!(Status::find_in(b"KESTREL-STATUS exit=300\n"), None);
        assert_eq!(Status::find_in(b"KESTREL-STATUS bogus\n"), None);
        // The last report wins.
        let two = format!("{STATUS_PREFIX}exit=1\n{STATUS_PREFIX}exit=3\n");
        assert_eq!(Status::find_in(two.as_bytes()), Some(Status::Exit(3)));
    }
}

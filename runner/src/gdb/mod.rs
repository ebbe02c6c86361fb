//! `--gdb PORT`: a gdb remote-protocol server for the guest, over KVM's
//! guest debugging. One gdb thread per vCPU (thread id = vCPU index + 1);
//! all-stop: when one vCPU stops (breakpoint, step, Ctrl-C) every other is
//! halted before gdb hears of it.
//!
//! Threads: `kestrel_gdb` owns the protocol state and is the only one that
//! talks to the vCPU threads (through [`VcpuControl`]); a reader per
//! connection and an acceptor feed it bytes and connections, a forwarder
//! feeds it the vCPUs' [`DebugStop`]s — all as [`Input`] on one channel.
//! The VM starts stopped, before its first instruction, and waits for gdb.
//!
//! Invariants: nothing gdb sends (bad checksums, unknown or malformed
//! packets, a disconnect at any moment) ends the VMM or the guest; memory
//! goes through [`target::Phys`] (guest RAM only, bounds-checked); a
//! detach — `D`, `k`, or a lost connection — removes every breakpoint,
//! clears guest debugging and lets every vCPU run; every wait on a vCPU
//! thread is bounded. Time spent stopped is counted ([`GdbServer::stopped_for`])
//! so `--timeout` only counts time the guest ran.

mod packet;
mod probe;
mod regs;
mod target;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::KVM_GUESTDBG_INJECT_BP;

use crate::log;
use crate::memory::GuestMemory;
use crate::vcpu::{DebugReply, DebugRequest, DebugStop, RegisterSet, StopWhy, VcpuControl};
use packet::{Decoder, Incoming, MAX_PACKET};
use target::{Breakpoints, Kind, DR6_SINGLE_STEP};

/// How long a vCPU thread may take to answer a request.
const REPLY_LIMIT: Duration = Duration::from_secs(2);
/// How long halting every vCPU may take before gdb is told anyway.
const HALT_LIMIT: Duration = Duration::from_secs(2);
/// Kicks are repeated this often until a vCPU reports.
const KICK_INTERVAL: Duration = Duration::from_millis(10);
/// A gdb that stops reading cannot block the server longer than this.
const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// x86 exception vectors in `KVM_EXIT_DEBUG`.
const BP_VECTOR: u32 = 3;
/// gdb's signal numbers in stop replies.
const SIGINT: u8 = 2;
const SIGTRAP: u8 = 5;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The port is taken or not ours to bind.
    #[error("--gdb {port}: cannot listen on 127.0.0.1:{port}: {source}; choose another port")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving, gdb port (127.0.0.1 only).
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    port: u16,
}

impl Listener {
    /// Binds 127.0.0.1:`port` (0: any free port).
    pub fn bind(port: u16) -> Result<Listener, GdbError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|source| GdbError::Bind { port, source })?;
        let port = listener.local_addr().map_or(port, |a| a.port());
        Ok(Listener { listener, port })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Time the guest spent stopped by the debugger.
#[derive(Debug, Default)]
struct StoppedClock(Mutex<(Duration, Option<Instant>)>);

impl StoppedClock {
    fn stop(&self) {
        self.stop_at(Instant::now());
    }

    fn go(&self) {
        self.go_at(Instant::now());
    }

    fn total(&self) -> Duration {
        self.total_at(Instant::now())
    }

    /// Stopped from `now` (a stop while stopped keeps the first).
    fn stop_at(&self, now: Instant) {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        c.1.get_or_insert(now);
    }

    /// Running again from `now`.
    fn go_at(&self, now: Instant) {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = c.1.take() {
            c.0 += now.saturating_duration_since(since);
        }
    }

    /// Time stopped up to `now`.
    fn total_at(&self, now: Instant) -> Duration {
        let c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        c.0 + c
            .1
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

/// What the server thread reacts to.
enum Input {
    /// gdb connected.
    Connected(TcpStream),
    /// Bytes from connection n.
    Bytes(u64, Vec<u8>),
    /// Connection n closed.
    Closed(u64),
    /// A vCPU stopped.
    Stop(DebugStop),
    /// The VM ended with this exit code: tell gdb, and end.
    End(u8),
}

/// The running server.
pub struct GdbServer {
    input: Sender<Input>,
    clock: Arc<StoppedClock>,
    thread: Option<JoinHandle<()>>,
    /// Closed when the server thread ends (its sender is dropped there,
    /// also on a panic).
    ended: Receiver<()>,
}

impl GdbServer {
    /// Takes over `vcpus` (paused, never run) and serves gdb on `listener`;
    /// the guest runs once gdb lets it.
    pub fn start(listener: Listener, vcpus: Vec<VcpuControl>, mem: GuestMemory) -> GdbServer {
        let (input, inbox) = std::sync::mpsc::channel();
        let clock = Arc::new(StoppedClock::default());
        clock.stop();
        let (stops_tx, stops) = std::sync::mpsc::channel::<DebugStop>();
        for vcpu in &vcpus {
            if vcpu
                .request(DebugRequest::Attach(stops_tx.clone()), REPLY_LIMIT)
                .is_none()
            {
                log::warn(format_args!("gdb: vCPU {} did not answer", vcpu.id));
            }
        }
        drop(stops_tx);
        let forward = input.clone();
        spawn("kestrel_gdb_stops", move || {
            for stop in stops {
                if forward.send(Input::Stop(stop)).is_err() {
                    break;
                }
            }
        });
        let port = listener.port;
        let accept = input.clone();
        spawn("kestrel_gdb_accept", move || {
            for stream in listener.listener.incoming() {
                match stream {
                    Ok(s) => {
                        if accept.send(Input::Connected(s)).is_err() {
                            break;
                        }
                    }
                    Err(e) => log::debug(format_args!("gdb: accept failed: {e}")),
                }
            }
        });
        eprintln!(
            "kestrel: waiting for gdb on 127.0.0.1:{port} (gdb vmlinux -ex 'target remote :{port}')"
        );
        let int3 = probe::int3_intercepted();
        if !int3 {
            log::warn(format_args!(
                "gdb: this KVM does not intercept int3 (QEMU TCG's nested SVM does not), \
                 so `break` uses debug registers like `hbreak`: 4 breakpoints at most"
            ));
        }
        let n = vcpus.len();
        let mut server = Server {
            int3,
            vcpus,
            mem,
            inbox,
            feedback: input.clone(),
            pending: VecDeque::new(),
            session: None,
            connections: 0,
            bps: Breakpoints::default(),
            mode: Mode::Stopped,
            running: vec![false; n],
            stepping: vec![false; n],
            cache: vec![None; n],
            thread_g: 0,
            thread_c: None,
            last_stop: stop_packet(SIGTRAP, 0, ""),
            clock: clock.clone(),
        };
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = spawn("kestrel_gdb", move || {
            let _ended = ended_tx;
            server.serve();
        });
        GdbServer {
            input,
            clock,
            thread,
            ended,
        }
    }

    /// How long the guest has been stopped by the debugger so far
    /// (including the wait for gdb to attach).
    pub fn stopped_for(&self) -> Duration {
        self.clock.total()
    }

    /// The VM ended with `exit_code`: gdb hears `W<code>`, the server ends
    /// (waited for a bounded time).
    pub fn finish(mut self, exit_code: u8) {
        let _ = self.input.send(Input::End(exit_code));
        if let Some(thread) = self.thread.take() {
            // Disconnected: the thread has ended (a thread stuck longer
            // than this is left behind).
            if let Err(RecvTimeoutError::Disconnected) =
                self.ended.recv_timeout(HALT_LIMIT + REPLY_LIMIT)
            {
                let _ = thread.join();
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| log::warn(format_args!("gdb: cannot start thread {name}: {e}")))
        .ok()
}

/// Where the guest is, for the debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every vCPU is paused; gdb may look and change things.
    Stopped,
    /// gdb resumed (some) vCPUs and waits for a stop reply.
    Running,
    /// No debugger: every vCPU runs without guest debugging.
    Free,
}

/// What a vCPU does on a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Continue,
    Step,
}

/// One gdb connection.
struct Session {
    id: u64,
    stream: TcpStream,
    decoder: Decoder,
    no_ack: bool,
    last_sent: Vec<u8>,
    lost: bool,
}

impl Session {
    fn write(&mut self, bytes: &[u8]) {
        if !self.lost && self.stream.write_all(bytes).is_err() {
            self.lost = true;
        }
    }

    fn send(&mut self, payload: &[u8]) {
        let wire = packet::encode(payload);
        self.write(&wire);
        self.last_sent = wire;
    }
}

struct Server {
    /// Software breakpoints patch `int3` (else: debug registers).
    int3: bool,
    vcpus: Vec<VcpuControl>,
    mem: GuestMemory,
    inbox: Receiver<Input>,
    /// For reader threads of new connections.
    feedback: Sender<Input>,
    /// Inputs that arrived while halting vCPUs, handled next.
    pending: VecDeque<Input>,
    session: Option<Session>,
    connections: u64,
    bps: Breakpoints,
    mode: Mode,
    /// vCPUs sent `Run` that have not reported a stop.
    running: Vec<bool>,
    /// …and were resumed to single-step.
    stepping: Vec<bool>,
    /// Registers read while stopped.
    cache: Vec<Option<RegisterSet>>,
    /// vCPU index for registers and memory (`Hg`).
    thread_g: usize,
    /// vCPU index for `c`/`s` (`Hc`; None: all / gdb did not say).
    thread_c: Option<usize>,
    /// The stop reply for `?`.
    last_stop: Vec<u8>,
    clock: Arc<StoppedClock>,
}

/// `T<sig>thread:<tid>;<extra>`.
fn stop_packet(signal: u8, vcpu: usize, extra: &str) -> Vec<u8> {
    format!("T{signal:02x}thread:{:x};{extra}", vcpu + 1).into_bytes()
}

/// A thread id in a packet: None for "all" (-1) or "any" (0), else the
/// vCPU index; Err for one that names no vCPU.
fn parse_thread(text: &[u8], vcpus: usize) -> Result<Option<usize>, ()> {
    match text {
        b"-1" | b"0" => Ok(None),
        _ => match packet::parse_u64(text) {
            Some(tid) if tid >= 1 && tid <= vcpus as u64 => Ok(Some(tid as usize - 1)),
            _ => Err(()),
        },
    }
}

/// `addr,len` (the rest after `:` for `M`).
fn parse_addr_len(text: &[u8]) -> Option<(u64, usize, &[u8])> {
    let (head, rest) = match text.iter().position(|&b| b == b':') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &[][..]),
    };
    let comma = head.iter().position(|&b| b == b',')?;
    let addr = packet::parse_u64(&head[..comma])?;
    let len = usize::try_from(packet::parse_u64(&head[comma + 1..])?).ok()?;
    Some((addr, len, rest))
}

/// The actions of `vCont;…` per vCPU (None: stays stopped).
fn parse_vcont(text: &[u8], vcpus: usize) -> Option<Vec<Option<Action>>> {
    let mut plan = vec![None; vcpus];
    let mut decided = vec![false; vcpus];
    for part in text.split(|&b| b == b';').filter(|p| !p.is_empty()) {
        let (act, thread) = match part.iter().position(|&b| b == b':') {
            Some(i) => (&part[..i], Some(&part[i + 1..])),
            None => (part, None),
        };
        let action = match act.first()? {
            b'c' | b'C' => Some(Action::Continue),
            b's' | b'S' => Some(Action::Step),
            b't' => None,
            _ => return None,
        };
        let target = match thread {
            Some(t) => parse_thread(t, vcpus).ok()?,
            None => None,
        };
        for i in 0..vcpus {
            if !decided[i] && target.is_none_or(|t| t == i) {
                plan[i] = action;
                decided[i] = true;
            }
        }
    }
    Some(plan)
}

/// How a packet is answered.
enum Answer {
    /// With this payload, now.
    Now(Vec<u8>),
    /// Later (a stop reply), or already.
    Later,
}

/// A packet's answer; None: malformed (answered `E16`).
type Reply = Option<Answer>;

fn now(payload: impl Into<Vec<u8>>) -> Reply {
    Some(Answer::Now(payload.into()))
}

fn ok() -> Reply {
    now("OK")
}

fn error(code: u8) -> Reply {
    now(format!("E{code:02x}"))
}

/// `EFAULT`, `EINVAL`, `ENOSPC`, "the target is running".
const E_FAULT: u8 = 0x0e;
const E_INVAL: u8 = 0x16;
const E_NOSPC: u8 = 0x1c;
const E_RUNNING: u8 = 0x01;

impl Server {
    fn serve(&mut self) {
        loop {
            let input = match self.pending.pop_front() {
                Some(i) => i,
                None => match self.inbox.recv() {
                    Ok(i) => i,
                    Err(_) => return,
                },
            };
            match input {
                Input::End(code) => {
                    if let Some(s) = &mut self.session {
                        s.send(format!("W{code:02x}").as_bytes());
                        let _ = s.stream.shutdown(std::net::Shutdown::Both);
                    }
                    return;
                }
                Input::Connected(stream) => self.on_connect(stream),
                Input::Bytes(id, data) => {
                    for b in data {
                        let incoming = match &mut self.session {
                            Some(s) if s.id == id && !s.lost => s.decoder.feed(b),
                            _ => break,
                        };
                        if let Some(incoming) = incoming {
                            self.on_incoming(incoming);
                        }
                    }
                }
                Input::Closed(id) => {
                    if self.session.as_ref().is_some_and(|s| s.id == id) {
                        self.session = None;
                        log::debug(format_args!("gdb: connection closed; detaching"));
                        self.detach();
                    }
                }
                Input::Stop(stop) => self.on_stop(stop),
            }
            if self.session.as_ref().is_some_and(|s| s.lost) {
                self.session = None;
                log::debug(format_args!("gdb: connection lost; detaching"));
                self.detach();
            }
        }
    }

    fn on_connect(&mut self, stream: TcpStream) {
        if self.session.is_some() {
            // One debugger at a time; the newcomer is closed.
            return;
        }
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_LIMIT));
        let Ok(mut reader) = stream.try_clone() else {
            return;
        };
        self.connections += 1;
        let id = self.connections;
        let feedback = self.feedback.clone();
        spawn("kestrel_gdb_rx", move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = feedback.send(Input::Closed(id));
                        break;
                    }
                    Ok(n) => {
                        if feedback.send(Input::Bytes(id, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        log::debug(format_args!(
            "gdb: connected from {}",
            stream
                .peer_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string())
        ));
        self.session = Some(Session {
            id,
            stream,
            decoder: Decoder::default(),
            no_ack: false,
            last_sent: Vec::new(),
            lost: false,
        });
        if self.mode == Mode::Free {
            self.halt_all();
            self.mode = Mode::Stopped;
            self.clock.stop();
            self.last_stop = stop_packet(SIGTRAP, 0, "");
        }
    }

    fn send(&mut self, payload: &[u8]) {
        if let Some(s) = &mut self.session {
            s.send(payload);
        }
    }

    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Ack => {}
            Incoming::Nak => {
                if let Some(s) = &mut self.session {
                    let again = s.last_sent.clone();
                    s.write(&again);
                }
            }
            Incoming::Bad => {
                if let Some(s) = &mut self.session {
                    s.write(b"-");
                }
            }
            Incoming::Interrupt => {
                if self.mode == Mode::Running {
                    self.halt_all();
                    self.report(stop_packet(SIGINT, self.thread_g, ""), self.thread_g);
                }
            }
            Incoming::Packet(p) => {
                if let Some(s) = &mut self.session {
                    if !s.no_ack {
                        s.write(b"+");
                    }
                }
                log::debug(format_args!("gdb: <- {}", String::from_utf8_lossy(&p)));
                match self.handle(&p) {
                    Some(Answer::Now(r)) => self.send(&r),
                    Some(Answer::Later) => {}
                    None => self.send(format!("E{E_INVAL:02x}").as_bytes()),
                }
                if p.starts_with(b"QStartNoAckMode") {
                    if let Some(s) = &mut self.session {
                        s.no_ack = true;
                    }
                }
                if p.first() == Some(&b'k') {
                    if let Some(s) = &mut self.session {
                        let _ = s.stream.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
    }

    /// Every vCPU is paused: gdb is told `packet` about vCPU `vcpu`.
    fn report(&mut self, packet: Vec<u8>, vcpu: usize) {
        self.mode = Mode::Stopped;
        self.clock.stop();
        self.thread_g = vcpu;
        self.thread_c = None;
        self.last_stop = packet.clone();
        self.send(&packet);
    }

    fn handle(&mut self, p: &[u8]) -> Reply {
        let (&first, rest) = p.split_first()?;
        let stopped = self.mode == Mode::Stopped;
        match first {
            b'?' => now(self.last_stop.clone()),
            b'q' | b'Q' => self.query(p),
            b'H' => {
                let (kind, thread) = rest.split_first()?;
                match (kind, parse_thread(thread, self.vcpus.len())) {
                    (b'g', Ok(t)) => {
                        if let Some(t) = t {
                            self.thread_g = t;
                        }
                        ok()
                    }
                    (b'c', Ok(t)) => {
                        self.thread_c = t;
                        ok()
                    }
                    _ => error(E_INVAL),
                }
            }
            b'T' => match parse_thread(rest, self.vcpus.len()) {
                Ok(Some(i)) if self.vcpus[i].alive() => ok(),
                _ => error(E_INVAL),
            },
            b'g' if stopped => match self.registers(self.thread_g) {
                Some(set) => now(packet::to_hex(&regs::read_all(&set))),
                None => error(E_FAULT),
            },
            b'G' if stopped => {
                let bytes = packet::from_hex(rest)?;
                let i = self.thread_g;
                let mut set = self.registers(i)?;
                match regs::write_all(&mut set, &bytes) {
                    Ok(()) => self.write_registers(i, set),
                    Err(()) => error(E_INVAL),
                }
            }
            b'p' if stopped => {
                let n = usize::try_from(packet::parse_u64(rest)?).ok()?;
                let set = self.registers(self.thread_g)?;
                match regs::read_one(&set, n) {
                    Some(v) => now(packet::to_hex(&v)),
                    None => error(E_INVAL),
                }
            }
            b'P' if stopped => {
                let eq = rest.iter().position(|&b| b == b'=')?;
                let n = usize::try_from(packet::parse_u64(&rest[..eq])?).ok()?;
                let bytes = packet::from_hex(&rest[eq + 1..])?;
                let i = self.thread_g;
                let mut set = self.registers(i)?;
                match regs::write_one(&mut set, n, &bytes) {
                    Ok(()) => self.write_registers(i, set),
                    Err(()) => error(E_INVAL),
                }
            }
            b'm' if stopped => {
                let (addr, len, _) = parse_addr_len(rest)?;
                let len = len.min((MAX_PACKET - 16) / 2);
                let vcpu = &self.vcpus[self.thread_g];
                let mut translate = |va| translate(vcpu, va);
                let mut data = target::read_virtual(&self.mem, &mut translate, addr, len);
                if data.is_empty() && len > 0 {
                    return error(E_FAULT);
                }
                self.bps.unpatch(addr, &mut data);
                now(packet::to_hex(&data))
            }
            b'M' if stopped => {
                let (addr, len, hex) = parse_addr_len(rest)?;
                let data = packet::from_hex(hex)?;
                if data.len() != len {
                    return error(E_INVAL);
                }
                let vcpu = &self.vcpus[self.thread_g];
                let mut translate = |va| translate(vcpu, va);
                let written = target::write_virtual(&self.mem, &mut translate, addr, &data);
                self.bps.repatch(&self.mem, addr, len);
                if written {
                    ok()
                } else {
                    error(E_FAULT)
                }
            }
            b'Z' | b'z' if stopped => self.breakpoint(first == b'Z', rest),
            b'c' | b'C' if stopped => {
                if let Some(addr) = resume_address(first, rest) {
                    self.set_rip(self.thread_c.unwrap_or(self.thread_g), addr)?;
                }
                self.resume(vec![Some(Action::Continue); self.vcpus.len()])
            }
            b's' | b'S' if stopped => {
                let i = self.thread_c.unwrap_or(self.thread_g);
                if let Some(addr) = resume_address(first, rest) {
                    self.set_rip(i, addr)?;
                }
                let mut plan = vec![None; self.vcpus.len()];
                plan[i] = Some(Action::Step);
                self.resume(plan)
            }
            b'v' => {
                if p == b"vCont?" {
                    now("vCont;c;C;s;S;t")
                } else if let Some(actions) = p.strip_prefix(b"vCont;") {
                    if !stopped {
                        return error(E_RUNNING);
                    }
                    match parse_vcont(actions, self.vcpus.len()) {
                        Some(plan) => self.resume(plan),
                        None => error(E_INVAL),
                    }
                } else {
                    now("")
                }
            }
            b'D' => {
                self.send(b"OK");
                self.detach();
                Some(Answer::Later)
            }
            b'k' => {
                self.detach();
                Some(Answer::Later)
            }
            b'g' | b'G' | b'p' | b'P' | b'm' | b'M' | b'Z' | b'z' | b'c' | b'C' | b's' | b'S' => {
                error(E_RUNNING)
            }
            _ => now(""),
        }
    }

    fn query(&mut self, p: &[u8]) -> Reply {
        let n = self.vcpus.len();
        if p.starts_with(b"qSupported") {
            return now(format!(
                "PacketSize={MAX_PACKET:x};qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+;vContSupported+"
            ));
        }
        if p == b"QStartNoAckMode" {
            return ok();
        }
        if let Some(args) = p.strip_prefix(b"qXfer:features:read:") {
            let colon = args.iter().position(|&b| b == b':')?;
            if &args[..colon] != b"target.xml" {
                return error(0);
            }
            let (offset, len, _) = parse_addr_len(&args[colon + 1..])?;
            let xml = regs::target_xml().into_bytes();
            let offset = usize::try_from(offset).ok()?;
            let len = len.min(MAX_PACKET / 2);
            return now(match xml.get(offset..) {
                Some(tail) if !tail.is_empty() => {
                    let chunk = &tail[..tail.len().min(len)];
                    let mark = if chunk.len() < tail.len() { b'm' } else { b'l' };
                    [&[mark][..], chunk].concat()
                }
                _ => b"l".to_vec(),
            });
        }
        if p == b"qAttached" || p.starts_with(b"qAttached:") {
            return now("1");
        }
        if p == b"qC" {
            return now(format!("QC{:x}", self.thread_g + 1));
        }
        if p == b"qfThreadInfo" {
            let ids: Vec<String> = (1..=n).map(|t| format!("{t:x}")).collect();
            return now(format!("m{}", ids.join(",")));
        }
        if p == b"qsThreadInfo" {
            return now("l");
        }
        if let Some(tid) = p.strip_prefix(b"qThreadExtraInfo,") {
            return match parse_thread(tid, n) {
                Ok(Some(i)) => now(packet::to_hex(format!("vCPU {i}").as_bytes())),
                _ => error(E_INVAL),
            };
        }
        if p.starts_with(b"qSymbol") {
            return ok();
        }
        now("")
    }

    fn breakpoint(&mut self, insert: bool, rest: &[u8]) -> Reply {
        let mut fields = rest.split(|&b| b == b',');
        let kind = fields.next()?;
        let addr = packet::parse_u64(fields.next()?)?;
        match (kind, insert) {
            (b"0", true) if self.int3 => {
                let gpa = translate(&self.vcpus[self.thread_g], addr);
                match self.bps.insert_software(&self.mem, addr, gpa) {
                    Ok(()) => ok(),
                    Err(_) => error(E_FAULT),
                }
            }
            (b"0", true) => match self.bps.insert_hardware(addr, Kind::Software) {
                Ok(()) => ok(),
                Err(_) => error(E_NOSPC),
            },
            (b"0", false) => {
                self.bps.remove_software(&self.mem, addr);
                self.bps.remove_hardware(addr, Kind::Software);
                ok()
            }
            (b"1", true) => match self.bps.insert_hardware(addr, Kind::Hardware) {
                Ok(()) => ok(),
                Err(_) => error(E_NOSPC),
            },
            (b"1", false) => {
                self.bps.remove_hardware(addr, Kind::Hardware);
                ok()
            }
            // Watchpoints: not offered.
            _ => now(""),
        }
    }

    fn registers(&mut self, i: usize) -> Option<RegisterSet> {
        if let Some(set) = self.cache[i] {
            return Some(set);
        }
        match self.vcpus[i].request(DebugRequest::ReadRegisters, REPLY_LIMIT) {
            Some(DebugReply::Registers(set)) => {
                self.cache[i] = Some(*set);
                Some(*set)
            }
            _ => None,
        }
    }

    fn write_registers(&mut self, i: usize, set: RegisterSet) -> Reply {
        self.cache[i] = None;
        match self.vcpus[i].request(DebugRequest::WriteRegisters(Box::new(set)), REPLY_LIMIT) {
            Some(DebugReply::Done) => ok(),
            _ => error(E_FAULT),
        }
    }

    fn set_rip(&mut self, i: usize, rip: u64) -> Option<()> {
        let mut set = self.registers(i)?;
        set.regs.rip = rip;
        match self.write_registers(i, set) {
            Some(Answer::Now(r)) if r == b"OK" => Some(()),
            _ => None,
        }
    }

    fn set_guest_debug(&self, i: usize, control: u32, debugreg: [u64; 8]) {
        match self.vcpus[i].request(
            DebugRequest::SetGuestDebug { control, debugreg },
            REPLY_LIMIT,
        ) {
            Some(DebugReply::Done) => {}
            Some(DebugReply::Failed(why)) => log::warn(format_args!("gdb: vCPU {i}: {why}")),
            _ => log::warn(format_args!("gdb: vCPU {i} did not answer")),
        }
    }

    /// Lets the vCPUs run as planned; gdb hears back when one stops.
    fn resume(&mut self, plan: Vec<Option<Action>>) -> Reply {
        if plan.iter().all(Option::is_none) {
            return error(E_INVAL);
        }
        self.cache.iter_mut().for_each(|c| *c = None);
        for (i, action) in plan.iter().enumerate() {
            if let Some(action) = action {
                let (control, dr) = self.bps.guest_debug(*action == Action::Step);
                self.set_guest_debug(i, control, dr);
            }
        }
        self.mode = Mode::Running;
        self.clock.go();
        for (i, action) in plan.iter().enumerate() {
            if let Some(action) = action {
                self.running[i] = true;
                self.stepping[i] = *action == Action::Step;
                self.vcpus[i].run();
            }
        }
        Some(Answer::Later)
    }

    fn on_stop(&mut self, stop: DebugStop) {
        let i = usize::from(stop.id);
        if i >= self.vcpus.len() || !self.running[i] {
            return;
        }
        self.running[i] = false;
        match self.mode {
            Mode::Stopped => return,
            Mode::Free => {
                // Left over from before a detach: let it go.
                self.set_guest_debug(i, 0, [0; 8]);
                self.running[i] = true;
                self.vcpus[i].run();
                return;
            }
            Mode::Running => {}
        }
        let packet = match stop.why {
            StopWhy::Debug(e) if e.exception == BP_VECTOR && !self.bps.is_software(e.pc) => {
                // The guest's own int3 (jump labels, kprobes…): deliver it.
                let (control, dr) = self.bps.guest_debug(self.stepping[i]);
                self.set_guest_debug(i, control | KVM_GUESTDBG_INJECT_BP, dr);
                self.running[i] = true;
                self.vcpus[i].run();
                return;
            }
            StopWhy::Debug(e) if e.exception == BP_VECTOR => stop_packet(SIGTRAP, i, "swbreak:;"),
            StopWhy::Debug(e) if self.bps.register_hit(e.dr6) == Some(Kind::Hardware) => {
                stop_packet(SIGTRAP, i, "hwbreak:;")
            }
            StopWhy::Debug(e) if self.bps.register_hit(e.dr6) == Some(Kind::Software) => {
                stop_packet(SIGTRAP, i, "swbreak:;")
            }
            StopWhy::Debug(e) => {
                if e.dr6 & DR6_SINGLE_STEP == 0 && !self.stepping[i] {
                    log::debug(format_args!("gdb: vCPU {i}: #DB with DR6 {:#x}", e.dr6));
                }
                stop_packet(SIGTRAP, i, "")
            }
            StopWhy::Halted => stop_packet(SIGINT, i, ""),
        };
        self.halt_all();
        self.report(packet, i);
    }

    /// Halts every running vCPU (bounded). A vCPU that stops for a debug
    /// event meanwhile stays where it is: it meets the event again when it
    /// next runs, so nothing is lost by not reporting it now.
    fn halt_all(&mut self) {
        let limit = Instant::now() + HALT_LIMIT;
        loop {
            let mut waiting = false;
            for (i, vcpu) in self.vcpus.iter().enumerate() {
                if self.running[i] && !vcpu.alive() {
                    self.running[i] = false;
                }
                if self.running[i] {
                    waiting = true;
                    vcpu.halt();
                }
            }
            if !waiting {
                return;
            }
            if Instant::now() >= limit {
                log::warn(format_args!(
                    "gdb: a vCPU did not stop within {HALT_LIMIT:?}"
                ));
                return;
            }
            match self.inbox.recv_timeout(KICK_INTERVAL) {
                Ok(Input::Stop(stop)) => {
                    if let Some(r) = self.running.get_mut(usize::from(stop.id)) {
                        *r = false;
                    }
                }
                Ok(other) => self.pending.push_back(other),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// gdb is gone: no breakpoints, no guest debugging, every vCPU runs.
    fn detach(&mut self) {
        if self.mode == Mode::Free {
            return;
        }
        if self.mode == Mode::Running {
            self.halt_all();
        }
        self.bps.clear(&self.mem);
        self.cache.iter_mut().for_each(|c| *c = None);
        self.mode = Mode::Free;
        self.clock.go();
        for i in 0..self.vcpus.len() {
            if !self.running[i] && self.vcpus[i].alive() {
                self.set_guest_debug(i, 0, [0; 8]);
                self.running[i] = true;
                self.stepping[i] = false;
                self.vcpus[i].run();
            }
        }
        log::debug(format_args!("gdb: detached; the guest runs"));
    }
}

/// The address of `c ADDR` / `C sig;ADDR` / `s ADDR` / `S sig;ADDR`.
fn resume_address(first: u8, rest: &[u8]) -> Option<u64> {
    let text = if first.is_ascii_uppercase() {
        let semi = rest.iter().position(|&b| b == b';')?;
        &rest[semi + 1..]
    } else {
        rest
    };
    packet::parse_u64(text)
}

/// A guest virtual address → guest physical through vCPU `vcpu`.
fn translate(vcpu: &VcpuControl, va: u64) -> Option<u64> {
    match vcpu.request(DebugRequest::Translate(va), REPLY_LIMIT) {
        Some(DebugReply::Translated(gpa)) => gpa,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_ids_are_vcpu_plus_one() {
        assert_eq!(parse_thread(b"1", 2), Ok(Some(0)));
        assert_eq!(parse_thread(b"2", 2), Ok(Some(1)));
        assert_eq!(parse_thread(b"-1", 2), Ok(None));
        assert_eq!(parse_thread(b"0", 2), Ok(None));
        assert_eq!(parse_thread(b"3", 2), Err(()));
        assert_eq!(parse_thread(b"zz", 2), Err(()));
        assert_eq!(stop_packet(5, 0, "swbreak:;"), b"T05thread:1;swbreak:;");
        assert_eq!(stop_packet(2, 10, ""), b"T02thread:b;");
    }

    #[test]
    fn vcont_actions_apply_first_match_per_thread() {
        use Action::*;
        assert_eq!(
            parse_vcont(b"s:2;c", 3),
            Some(vec![Some(Continue), Some(Step), Some(Continue)])
        );
        assert_eq!(parse_vcont(b"s:1", 2), Some(vec![Some(Step), None]));
        assert_eq!(parse_vcont(b"c", 2), Some(vec![Some(Continue); 2]));
        assert_eq!(parse_vcont(b"C05:1;t", 2), Some(vec![Some(Continue), None]));
        assert_eq!(parse_vcont(b"x", 2), None);
        assert_eq!(parse_vcont(b"s:9", 2), None);
    }

    #[test]
    fn addresses_and_lengths_parse() {
        assert_eq!(
            parse_addr_len(b"ffffffff81000000,10"),
            Some((0xffff_ffff_8100_0000, 16, &b""[..]))
        );
        assert_eq!(parse_addr_len(b"10,2:abcd"), Some((0x10, 2, &b"abcd"[..])));
        assert_eq!(parse_addr_len(b"10"), None);
        assert_eq!(parse_addr_len(b",2"), None);
        assert_eq!(resume_address(b'c', b"1000"), Some(0x1000));
        assert_eq!(resume_address(b'c', b""), None);
        assert_eq!(resume_address(b'C', b"05;1000"), Some(0x1000));
        assert_eq!(resume_address(b'S', b"05"), None);
    }

    #[test]
    fn the_stopped_clock_counts_only_stopped_time() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let c = StoppedClock::default();
        assert_eq!(c.total_at(at(0)), Duration::ZERO);
        c.stop_at(at(10));
        // A second stop while stopped keeps the first.
        c.stop_at(at(15));
        assert_eq!(c.total_at(at(25)), Duration::from_millis(15));
        c.go_at(at(30));
        // Running time does not count.
        assert_eq!(c.total_at(at(100)), Duration::from_millis(20));
        c.go_at(at(110));
        assert_eq!(c.total_at(at(120)), Duration::from_millis(20));
        c.stop_at(at(200));
        c.go_at(at(205));
        assert_eq!(c.total_at(at(300)), Duration::from_millis(25));
    }
}

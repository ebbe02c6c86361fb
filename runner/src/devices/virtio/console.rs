//! virtio-console with `VIRTIO_CONSOLE_F_MULTIPORT`: named output ports.
//!
//! Each port carries one host sink (the guest command's stdout, stderr, a
//! file). The guest finds ports by the name sent in `PORT_NAME` (the init
//! reads `/sys/class/virtio-ports/*/name`). Control flow (virtio 1.2
//! §5.3.6.2): driver `DEVICE_READY` → device `DEVICE_ADD` per port →
//! driver `PORT_READY` → device `PORT_NAME` + `PORT_OPEN` (host side
//! connected). Output buffers go to the sink whole (a file descriptor sink
//! is written straight from guest memory), one notify per buffer, not per
//! byte. Input (host → guest) goes into a port's receive buffers as they
//! come ([`PortInput::send`] queues it until the driver offers some); one
//! port may be a console port (`CONSOLE_PORT`: the guest's `/dev/hvc0`, a
//! real tty for an interactive command).
//!
//! Queues are processed by a worker thread (`kestrel_virtio_console`) woken
//! by the transport's queue eventfd (a KVM ioeventfd, so a notify costs no
//! exit to the VMM), or, without one, on the notifying vCPU thread.
//! [`VirtioDevice::shutdown`] drains what the guest queued before the VM
//! stopped, so no output is lost behind the status line.
//!
//! Invariants: guest data never panics the device (a panic in the worker
//! is caught and marks the device broken); a malformed chain or ring marks
//! the device `DEVICE_NEEDS_RESET` and it then ignores its queues until
//! reset; pending control messages are bounded ([`MAX_PENDING_CONTROL`]);
//! a sink that fails is dropped (output lost, guest unaffected); after
//! `reset` or `shutdown` no worker runs.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{Buffers, ChainError};
use super::worker::{QueueWorker, Stop};
use super::{device_id, serve_available, ActivateError, Activation, Interrupt, VirtioDevice};
use crate::log;
use crate::memory::GuestMemory;

/// The port the guest command's stdout goes to.
pub const STDOUT_PORT: &str = "kestrel.stdout";
/// The port the guest command's stderr goes to.
pub const STDERR_PORT: &str = "kestrel.stderr";
/// Modules the guest init must load for these ports to appear (Debian
/// kernels build both as modules; `virtio_mmio` binds through ACPI
/// `LNRO0005`). A job spec for a kestrel VM puts these in its base image
/// and uses [`STDOUT_PORT`]/[`STDERR_PORT`] as `Dest::VirtioPort`.
pub const GUEST_MODULES: &[&str] = &["virtio_mmio", "virtio_console"];

/// `VIRTIO_CONSOLE_F_MULTIPORT`.
pub const F_MULTIPORT: u64 = 1 << 1;
/// Size of every queue.
pub const QUEUE_SIZE: u16 = 128;
/// Most ports a console may have.
pub const MAX_PORTS: usize = 16;
/// Most input bytes waiting for a port's receive buffers (a paste larger
/// than this loses its tail, with a warning).
pub const MAX_PENDING_INPUT: usize = 1 << 20;
/// Most control messages waiting for receive buffers.
pub const MAX_PENDING_CONTROL: usize = 4 * MAX_PORTS + 16;
/// Name of the worker thread.
pub const WORKER_NAME: &str = "kestrel_virtio_console";
/// How long `shutdown` waits for the worker to drain (a sink that blocks
/// longer, e.g. a stdout pipe nobody reads, is abandoned).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;
const CONTROL_LEN: usize = 8;

/// Control events (`struct virtio_console_control.event`).
mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// A console that cannot be built as asked.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No ports, or too many.
    #[error("a virtio console needs 1 to {MAX_PORTS} ports, not {0}")]
    PortCount(usize),
    /// A name the guest could not match.
    #[error("virtio console port name {0:?} must be non-empty printable ASCII")]
    PortName(String),
    /// kestrel's stdout or stderr could not be duplicated.
    #[error("cannot duplicate kestrel's {0} for the guest's output: {1}")]
    Dup(&'static str, #[source] std::io::Error),
}

/// Why processing a queue stopped (the device is then marked broken).
#[derive(Debug, thiserror::Error)]
enum QueueError {
    #[error("virtio ring error: {0}")]
    Ring(#[from] virtio_queue::Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Where a port's output goes.
enum Sink {
    /// A file, pipe or terminal: written straight from guest memory.
    File(File),
    /// Anything else (copied out of guest memory first).
    Writer(Box<dyn Write + Send>),
}

/// One port: its name, where its output goes, and host input waiting for
/// the guest's receive buffers.
pub struct Port {
    name: String,
    sink: Option<Sink>,
    guest_open: bool,
    bytes: u64,
    /// Announced as a console port (the guest makes it an hvc tty).
    console: bool,
    input: VecDeque<u8>,
    input_dropped: bool,
}

impl Port {
    /// A port named `name` writing to `out`.
    pub fn new(name: impl Into<String>, out: Box<dyn Write + Send>) -> Self {
        Port::with(name.into(), Sink::Writer(out))
    }

    /// A port named `name` writing to the file (or pipe) `file`.
    pub fn file(name: impl Into<String>, file: File) -> Self {
        Port::with(name.into(), Sink::File(file))
    }

    /// A console port named `name` (the guest's `/dev/hvc0`) writing to
    /// the terminal or file `file`; its input comes through
    /// [`Console::input`].
    pub fn terminal(name: impl Into<String>, file: File) -> Self {
        let mut port = Port::with(name.into(), Sink::File(file));
        port.console = true;
        port
    }

    /// An input-only port named `name` (what the guest writes is dropped).
    pub fn input_only(name: impl Into<String>) -> Self {
        Port::with(name.into(), Sink::Writer(Box::new(std::io::sink())))
    }

    fn with(name: String, sink: Sink) -> Self {
        Port {
            name,
            sink: Some(sink),
            guest_open: false,
            bytes: 0,
            console: false,
            input: VecDeque::new(),
            input_dropped: false,
        }
    }

    /// Writes the readable part of `bufs`.
    fn write(&mut self, bufs: &Buffers, mem: &GuestMemory, scratch: &mut Vec<u8>) {
        self.bytes += bufs.readable_len() as u64;
        let result = match &mut self.sink {
            None => return,
            Some(Sink::File(file)) => bufs.write_readable_to(mem, file).map_err(|e| e.to_string()),
            Some(Sink::Writer(out)) => bufs
                .for_each_readable(mem, scratch, |b| out.write_all(b))
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            log::warn(format_args!(
                "output of virtio port {} is lost from here on: {e}",
                self.name
            ));
            self.sink = None;
        }
    }

    fn flush(&mut self) {
        if let Some(Sink::Writer(out)) = &mut self.sink {
            if out.flush().is_err() {
                self.sink = None;
            }
        }
    }
}

/// The console of a kestrel VM: [`STDOUT_PORT`] to kestrel's stdout and
/// [`STDERR_PORT`] to its stderr (duplicated descriptors, written directly).
pub fn stdio() -> Result<Console, ConsoleError> {
    Console::new(stdio_ports()?)
}

/// The console of a VM whose command runs on a terminal: [`stdio`]'s two
/// ports, the console port `tty` (the guest's `/dev/hvc0`) writing to
/// kestrel's stdout, and the input-only port `winsize`; with the inputs of
/// those two.
pub fn with_terminal(
    tty: &str,
    winsize: &str,
) -> Result<(Console, PortInput, PortInput), ConsoleError> {
    let mut ports = stdio_ports()?;
    let (tty_id, winsize_id) = (ports.len(), ports.len() + 1);
    ports.push(Port::terminal(
        tty,
        dup(std::io::stdout().as_fd(), "stdout")?,
    ));
    ports.push(Port::input_only(winsize));
    let console = Console::new(ports)?;
    let input = |port| PortInput {
        engine: console.engine.clone(),
        port,
    };
    let (tty, winsize) = (input(tty_id), input(winsize_id));
    Ok((console, tty, winsize))
}

fn stdio_ports() -> Result<Vec<Port>, ConsoleError> {
    Ok(vec![
        Port::file(STDOUT_PORT, dup(std::io::stdout().as_fd(), "stdout")?),
        Port::file(STDERR_PORT, dup(std::io::stderr().as_fd(), "stderr")?),
    ])
}

/// A descriptor of kestrel's own (`what` names it in the error), as a file
/// a port writes to directly.
fn dup(fd: std::os::fd::BorrowedFd<'_>, what: &'static str) -> Result<File, ConsoleError> {
    fd.try_clone_to_owned()
        .map(File::from)
        .map_err(|e| ConsoleError::Dup(what, e))
}

/// The queues and channels of a running console.
struct Running {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Interrupt,
    pending: VecDeque<Vec<u8>>,
}

/// Ports and queues, shared by the device and its worker.
struct Engine {
    ports: Vec<Port>,
    running: Option<Running>,
    scratch: Vec<u8>,
}

/// The virtio-console device.
pub struct Console {
    engine: Arc<Mutex<Engine>>,
    port_count: usize,
    queue_sizes: Vec<u16>,
    worker: Option<QueueWorker>,
}

/// Receive queue of port `p` (port 0 is special: before the control queues).
fn rx_queue(p: usize) -> usize {
    if p == 0 {
        0
    } else {
        2 + 2 * p
    }
}

/// The port whose receive queue is `q`.
fn port_of_rx(q: usize) -> Option<usize> {
    match q {
        0 => Some(0),
        q if q >= 4 && q % 2 == 0 => Some((q - 2) / 2),
        _ => None,
    }
}

/// The port whose transmit queue is `q`.
fn port_of_tx(q: usize) -> Option<usize> {
    match q {
        1 => Some(0),
        q if q >= 5 && q % 2 == 1 => Some((q - 3) / 2),
        _ => None,
    }
}

fn control(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_LEN);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic mid-round leaves plain data behind; the device is then
    // marked broken and its queues are not touched again until reset.
    engine.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// Processes queue `index`; marks the device broken on bad guest data.
    fn notify(&mut self, index: usize) {
        let Some(r) = &self.running else {
            return;
        };
        if r.interrupt.needs_reset() {
            return;
        }
        if let Err(e) = self.process(index) {
            if let Some(r) = &self.running {
                r.interrupt
                    .set_needs_reset(format_args!("virtio-console queue {index}: {e}"));
            }
        }
    }

    /// Every queue the device serves: control first, then each port's
    /// output, then input waiting for receive buffers.
    fn notify_all(&mut self) {
        self.notify(CONTROL_TX);
        self.notify(CONTROL_RX);
        for p in 0..self.ports.len() {
            self.notify(rx_queue(p) + 1);
        }
        for p in 0..self.ports.len() {
            if !self.ports[p].input.is_empty() {
                self.notify(rx_queue(p));
            }
        }
    }

    fn process(&mut self, index: usize) -> Result<(), QueueError> {
        match index {
            CONTROL_TX => {
                self.control_from_guest()?;
                self.control_to_guest()
            }
            CONTROL_RX => self.control_to_guest(),
            q => match (port_of_tx(q), port_of_rx(q)) {
                (Some(p), _) if p < self.ports.len() => self.output(p, q),
                (_, Some(p)) if p < self.ports.len() => self.input(p, q),
                _ => Ok(()),
            },
        }
    }

    /// Copies every pending output buffer of port `p` to its sink.
    fn output(&mut self, p: usize, q: usize) -> Result<(), QueueError> {
        let Some(r) = &mut self.running else {
            return Ok(());
        };
        let mem = r.mem.clone();
        let queue = &mut r.queues[q];
        if !queue.ready() {
            return Ok(());
        }
        let port = &mut self.ports[p];
        let scratch = &mut self.scratch;
        let mut used = 0;
        // The driver need not notify while we drain (VRING_USED_F_NO_NOTIFY);
        // buffers it adds meanwhile are taken in the same round, so one
        // interrupt returns them all.
        let result = serve_available(queue, &mem, |queue| {
            let chains: Vec<_> = queue.iter(&mem)?.collect();
            let taken = chains.len();
            for chain in chains {
                let bufs = Buffers::of(chain, &mem)?;
                port.write(&bufs, &mem, scratch);
                queue.add_used(&mem, bufs.head, 0)?;
                used += 1;
            }
            Ok::<_, QueueError>(taken)
        });
        port.flush();
        if used > 0 {
            r.interrupt.signal_used_queue();
        }
        result
    }

    /// Moves waiting host input of port `p` into its receive buffers.
    fn input(&mut self, p: usize, q: usize) -> Result<(), QueueError> {
        let Some(r) = &mut self.running else {
            return Ok(());
        };
        let port = &mut self.ports[p];
        let mem = r.mem.clone();
        let queue = &mut r.queues[q];
        if !queue.ready() {
            return Ok(());
        }
        let mut used = 0;
        let result = (|| -> Result<(), QueueError> {
            loop {
                while !port.input.is_empty() {
                    let Some(chain) = queue.iter(&mem)?.next() else {
                        break;
                    };
                    let bufs = Buffers::of(chain, &mem)?;
                    let written = bufs.write(&mem, port.input.make_contiguous());
                    port.input.drain(..written);
                    queue.add_used(&mem, bufs.head, written as u32)?;
                    used += 1;
                    if written == 0 {
                        // A chain with no room: the driver's mistake; stop
                        // rather than spin through its buffers.
                        queue.enable_notification(&mem)?;
                        return Ok(());
                    }
                }
                if !want_buffers(queue, &mem, !port.input.is_empty())? {
                    return Ok(());
                }
            }
        })();
        if used > 0 {
            r.interrupt.signal_used_queue();
        }
        result
    }

    /// Handles the driver's control messages.
    fn control_from_guest(&mut self) -> Result<(), QueueError> {
        let Some(r) = &mut self.running else {
            return Ok(());
        };
        let mem = r.mem.clone();
        let queue = &mut r.queues[CONTROL_TX];
        let mut messages = Vec::new();
        let result = (|| -> Result<(), QueueError> {
            let chains: Vec<_> = queue.iter(&mem)?.collect();
            for chain in chains {
                let bufs = Buffers::of(chain, &mem)?;
                messages.push(bufs.read_prefix(&mem, CONTROL_LEN));
                queue.add_used(&mem, bufs.head, 0)?;
            }
            Ok(())
        })();
        if !messages.is_empty() {
            r.interrupt.signal_used_queue();
        }
        for m in messages {
            match <[u8; CONTROL_LEN]>::try_from(m.as_slice()) {
                Ok(m) => self.control_message(
                    u32::from_le_bytes([m[0], m[1], m[2], m[3]]),
                    u16::from_le_bytes([m[4], m[5]]),
                    u16::from_le_bytes([m[6], m[7]]),
                ),
                Err(_) => log::debug(format_args!(
                    "virtio-console: short control message ({} bytes) ignored",
                    m.len()
                )),
            }
        }
        result
    }

    fn control_message(&mut self, id: u32, event: u16, value: u16) {
        let port = usize::try_from(id).ok().filter(|&p| p < self.ports.len());
        let mut replies = Vec::new();
        match (event, port) {
            (event::DEVICE_READY, _) if value == 1 => {
                for p in 0..self.ports.len() {
                    replies.push(control(p as u32, event::DEVICE_ADD, 1));
                }
            }
            (event::DEVICE_READY, _) => log::warn(format_args!(
                "the guest's virtio-console driver failed to start"
            )),
            (event::PORT_READY, Some(p)) if value == 1 => {
                // The console first: the guest makes its hvc before the
                // name (and its uevent) tells the init the port is there.
                if self.ports[p].console {
                    replies.push(control(p as u32, event::CONSOLE_PORT, 1));
                }
                let mut name = control(p as u32, event::PORT_NAME, 1);
                name.extend_from_slice(self.ports[p].name.as_bytes());
                replies.push(name);
                replies.push(control(p as u32, event::PORT_OPEN, 1));
            }
            (event::PORT_READY, Some(p)) => log::warn(format_args!(
                "the guest could not add virtio port {}",
                self.ports[p].name
            )),
            (event::PORT_OPEN, Some(p)) => self.ports[p].guest_open = value == 1,
            _ => log::debug(format_args!(
                "virtio-console: control event {event} for port {id:#x} (value {value}) ignored"
            )),
        }
        if let Some(r) = &mut self.running {
            for m in replies {
                if r.pending.len() >= MAX_PENDING_CONTROL {
                    log::debug(format_args!(
                        "virtio-console: too many control messages waiting; one dropped"
                    ));
                    break;
                }
                r.pending.push_back(m);
            }
        }
    }

    /// Delivers pending control messages into the driver's receive buffers.
    fn control_to_guest(&mut self) -> Result<(), QueueError> {
        let Some(r) = &mut self.running else {
            return Ok(());
        };
        let mem = r.mem.clone();
        let queue = &mut r.queues[CONTROL_RX];
        let mut used = 0;
        let result = (|| -> Result<(), QueueError> {
            loop {
                while let Some(message) = r.pending.front() {
                    let Some(chain) = queue.iter(&mem)?.next() else {
                        break;
                    };
                    let bufs = Buffers::of(chain, &mem)?;
                    let written = bufs.write(&mem, message);
                    if written < message.len() {
                        log::debug(format_args!(
                            "virtio-console: control buffer too small ({written} of {} bytes)",
                            message.len()
                        ));
                    }
                    queue.add_used(&mem, bufs.head, written as u32)?;
                    r.pending.pop_front();
                    used += 1;
                }
                if !want_buffers(queue, &mem, !r.pending.is_empty())? {
                    return Ok(());
                }
            }
        })();
        if used > 0 {
            r.interrupt.signal_used_queue();
        }
        result
    }
}

/// Sets a receive queue's notification suppression: the driver is asked
/// to notify only while the device holds data for that queue (`waiting`)
/// and no buffer to put it in. Otherwise `VRING_USED_F_NO_NOTIFY` stays
/// set and the device reads the available ring whenever it has something
/// to deliver. (Linux's `fill_queue` adds receive buffers one at a time
/// with a notify after each: 128 notifies per queue at probe, each an MMIO
/// exit, emulated by L1's KVM in a nested guest — 0.6 s of a 3.4 s boot in
/// the rig.) Returns whether the driver added buffers meanwhile: deliver
/// again.
fn want_buffers(queue: &mut Queue, mem: &GuestMemory, waiting: bool) -> Result<bool, QueueError> {
    if waiting {
        Ok(queue.enable_notification(mem)?)
    } else {
        queue.disable_notification(mem)?;
        Ok(false)
    }
}

/// Sends host input to one port (from any thread).
#[derive(Clone)]
pub struct PortInput {
    engine: Arc<Mutex<Engine>>,
    port: usize,
}

impl PortInput {
    /// Queues `bytes` for the guest and delivers what fits in the receive
    /// buffers the driver has offered; the rest goes when it offers more.
    /// Past [`MAX_PENDING_INPUT`] waiting bytes, the excess is dropped
    /// (warned about once).
    pub fn send(&self, bytes: &[u8]) {
        let mut engine = lock(&self.engine);
        let port = &mut engine.ports[self.port];
        let room = MAX_PENDING_INPUT.saturating_sub(port.input.len());
        if bytes.len() > room && !port.input_dropped {
            port.input_dropped = true;
            log::warn(format_args!(
                "the guest is not reading input on virtio port {}: input past {} KiB is dropped",
                port.name,
                MAX_PENDING_INPUT >> 10
            ));
        }
        port.input.extend(&bytes[..bytes.len().min(room)]);
        engine.notify(rx_queue(self.port));
    }
}

impl Console {
    /// A console with these ports (ids in order, from 0).
    pub fn new(ports: Vec<Port>) -> Result<Self, ConsoleError> {
        if ports.is_empty() || ports.len() > MAX_PORTS {
            return Err(ConsoleError::PortCount(ports.len()));
        }
        for p in &ports {
            if p.name.is_empty() || !p.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConsoleError::PortName(p.name.clone()));
            }
        }
        Ok(Console {
            port_count: ports.len(),
            queue_sizes: vec![QUEUE_SIZE; 2 * ports.len() + 2],
            engine: Arc::new(Mutex::new(Engine {
                ports,
                running: None,
                scratch: Vec::new(),
            })),
            worker: None,
        })
    }

    /// A handle that sends host input to the port named `name`.
    pub fn input(&self, name: &str) -> Option<PortInput> {
        let port = lock(&self.engine)
            .ports
            .iter()
            .position(|p| p.name == name)?;
        Some(PortInput {
            engine: self.engine.clone(),
            port,
        })
    }

    /// Bytes the guest wrote to each port so far, by name.
    pub fn port_bytes(&self) -> Vec<(String, u64)> {
        lock(&self.engine)
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.bytes))
            .collect()
    }

    /// Whether a worker thread is running.
    pub fn has_worker(&self) -> bool {
        self.worker.is_some()
    }

    fn config(&self) -> [u8; 12] {
        // cols, rows (unused without F_SIZE), max_nr_ports, emerg_wr.
        let mut c = [0u8; 12];
        c[4..8].copy_from_slice(&(self.port_count as u32).to_le_bytes());
        c
    }

    /// Starts the worker on `events` (the transport's queue eventfd).
    fn spawn_worker(&mut self, events: EventFd, interrupt: Interrupt) -> std::io::Result<()> {
        let engine = self.engine.clone();
        self.worker = Some(QueueWorker::spawn(
            WORKER_NAME,
            events,
            interrupt,
            move || lock(&engine).notify_all(),
            || {},
        )?);
        Ok(())
    }

    /// Stops the worker (after one more round if `drain`); waits up to
    /// [`DRAIN_LIMIT`] for it, then leaves it behind.
    fn stop_worker(&mut self, drain: bool) {
        if let Some(w) = self.worker.take() {
            let how = if drain { Stop::AfterRound } else { Stop::Now };
            w.stop(how, DRAIN_LIMIT, "its output sink blocks");
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        device_id::CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        F_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `emerg_wr` is writable, and only with F_EMERG_WRITE.
        log::debug(format_args!(
            "virtio-console: config write of {} bytes at {offset:#x} ignored",
            data.len()
        ));
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.features & F_MULTIPORT == 0 {
            return Err(ActivateError::Device(
                "the driver did not accept MULTIPORT; named ports need it".into(),
            ));
        }
        for q in [CONTROL_RX, CONTROL_TX] {
            if !activation.queues.get(q).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(q));
            }
        }
        let interrupt = activation.interrupt.clone();
        {
            let mut engine = lock(&self.engine);
            engine.running = Some(Running {
                mem: activation.mem,
                queues: activation.queues,
                interrupt: activation.interrupt,
                pending: VecDeque::new(),
            });
            // Whatever the driver queued before DRIVER_OK; then every
            // receive queue's notification flag set to whether input
            // waits for it ([`want_buffers`]): delivery keeps it so after.
            engine.notify_all();
            for p in 0..engine.ports.len() {
                engine.notify(rx_queue(p));
            }
        }
        if let Some(events) = activation.queue_events {
            if let Err(e) = self.spawn_worker(events, interrupt) {
                lock(&self.engine).running = None;
                return Err(ActivateError::Device(format!(
                    "cannot start {WORKER_NAME}: {e}"
                )));
            }
        }
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) {
        match &self.worker {
            Some(w) => w.wake(),
            None => lock(&self.engine).notify(index),
        }
    }

    fn reset(&mut self) {
        self.stop_worker(false);
        let mut engine = lock(&self.engine);
        engine.running = None;
        for p in &mut engine.ports {
            p.guest_open = false;
            p.flush();
        }
    }

    fn shutdown(&mut self) {
        if self.worker.is_some() {
            // Its last round drains the queues and flushes the sinks.
            self.stop_worker(true);
            return;
        }
        let mut engine = lock(&self.engine);
        engine.notify_all();
        for p in &mut engine.ports {
            p.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Device;
    use crate::devices::virtio::mmio::{regs, MmioTransport};
    use crate::devices::virtio::testing::*;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use crate::devices::IrqLine;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Capture {
        fn take(&self) -> Vec<u8> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// A writer that always fails.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Rig {
        t: MmioTransport,
        mem: GuestMemory,
        q: Vec<DriverQueue>,
        out: Capture,
        err: Capture,
    }

    /// The port id of messages about the whole device.
    const BAD_ID: u32 = u32::MAX;
    const CTRL_RX: usize = 2;
    const CTRL_TX: usize = 3;
    const OUT_TX: usize = 1;
    const ERR_TX: usize = 5;

    impl Rig {
        /// Two ports, every queue set up, `DRIVER_OK`, nothing exchanged.
        fn new() -> Rig {
            let (out, err) = (Capture::default(), Capture::default());
            Rig::with(Box::new(out.clone()), Box::new(err.clone()), None, out, err)
        }

        fn with(
            stdout: Box<dyn Write + Send>,
            stderr: Box<dyn Write + Send>,
            events: Option<EventFd>,
            out: Capture,
            err: Capture,
        ) -> Rig {
            let console = Console::new(vec![
                Port::new(STDOUT_PORT, stdout),
                Port::new(STDERR_PORT, stderr),
            ])
            .unwrap();
            Rig::on(console, events, out, err)
        }

        /// `console` behind a transport, every queue set up, `DRIVER_OK`.
        fn on(console: Console, events: Option<EventFd>, out: Capture, err: Capture) -> Rig {
            let ports = console.port_count;
            let mem = test_memory();
            let mut t = MmioTransport::new(
                Box::new(console),
                mem.clone(),
                Interrupt::new(IrqLine::none()),
            )
            .unwrap();
            if let Some(events) = events {
                t.set_queue_events(events);
            }
            assert_eq!(read_reg(&mut t, regs::DEVICE_ID), 3);
            write_reg(&mut t, regs::CONFIG, 0);
            let mut cfg = [0u8; 4];
            t.read(regs::CONFIG + 4, &mut cfg);
            assert_eq!(u32::from_le_bytes(cfg) as usize, ports, "max_nr_ports");
            let status = negotiate(&mut t, VIRTIO_F_VERSION_1 | F_MULTIPORT);
            assert_ne!(status & S_FEATURES_OK, 0);
            let q: Vec<DriverQueue> = (0..2 * ports as u32 + 2)
                .map(|i| DriverQueue::new(&mem, i, QUEUE_SIZE))
                .collect();
            for dq in &q {
                dq.setup(&mut t);
            }
            write_reg(
                &mut t,
                regs::STATUS,
                S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
            );
            Rig {
                t,
                mem,
                q,
                out,
                err,
            }
        }

        fn send_control(&mut self, id: u32, event: u16, value: u16) {
            self.q[CTRL_TX].add_out(&self.mem, &control(id, event, value));
            self.q[CTRL_TX].kick(&mut self.t);
        }

        /// Offers `n` receive buffers on the control queue; returns their addresses.
        fn offer_control_buffers(&mut self, n: usize) -> Vec<u64> {
            let bufs = (0..n)
                .map(|_| self.q[CTRL_RX].add_in(&self.mem, 4096))
                .collect();
            self.q[CTRL_RX].kick(&mut self.t);
            bufs
        }

        /// Control messages the device wrote, in order.
        fn received(&mut self, addrs: &mut VecDeque<u64>) -> Vec<Vec<u8>> {
            let used = self.q[CTRL_RX].used(&self.mem);
            used.iter()
                .map(|&(_, len)| {
                    let at = addrs.pop_front().unwrap();
                    let mut b = vec![0u8; len as usize];
                    self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
                    b
                })
                .collect()
        }

        fn write_port(&mut self, tx: usize, bytes: &[u8]) {
            self.q[tx].add_out(&self.mem, bytes);
            self.q[tx].kick(&mut self.t);
        }

        fn needs_reset(&mut self) -> bool {
            read_reg(&mut self.t, regs::STATUS) & S_NEEDS_RESET != 0
        }
    }

    fn named(id: u32, name: &str) -> Vec<u8> {
        let mut m = control(id, event::PORT_NAME, 1);
        m.extend_from_slice(name.as_bytes());
        m
    }

    #[test]
    fn ports_are_announced_named_and_opened() {
        let mut rig = Rig::new();
        // Fewer receive buffers than messages: the rest wait for more.
        let mut addrs: VecDeque<u64> = rig.offer_control_buffers(3).into();
        rig.send_control(BAD_ID, event::DEVICE_READY, 1);
        assert_eq!(
            rig.received(&mut addrs),
            vec![
                control(0, event::DEVICE_ADD, 1),
                control(1, event::DEVICE_ADD, 1)
            ]
        );
        rig.send_control(0, event::PORT_READY, 1);
        rig.send_control(1, event::PORT_READY, 1);
        assert_eq!(rig.received(&mut addrs), vec![named(0, STDOUT_PORT)]);
        addrs.extend(rig.offer_control_buffers(8));
        assert_eq!(
            rig.received(&mut addrs),
            vec![
                control(0, event::PORT_OPEN, 1),
                named(1, STDERR_PORT),
                control(1, event::PORT_OPEN, 1)
            ]
        );
        // The driver's messages were all consumed.
        assert_eq!(rig.q[CTRL_TX].used(&rig.mem).len(), 3);
        // Nonsense control messages are ignored, not fatal.
        rig.send_control(99, event::PORT_READY, 1);
        rig.send_control(0, 1234, 1);
        rig.q[CTRL_TX].add_out(&rig.mem, b"abc");
        rig.q[CTRL_TX].kick(&mut rig.t);
        assert!(rig.received(&mut addrs).is_empty());
        assert!(!rig.needs_reset());
    }

    #[test]
    fn a_console_port_is_announced_first_and_takes_host_input() {
        const TTY_RX: usize = 4;
        const WINSIZE_RX: usize = 6;
        let console = Console::new(vec![
            Port::new(STDOUT_PORT, Box::new(Capture::default())),
            Port::terminal("kestrel.tty", tempfile::tempfile().unwrap()),
            Port::input_only("kestrel.winsize"),
        ])
        .unwrap();
        let tty = console.input("kestrel.tty").unwrap();
        let winsize = console.input("kestrel.winsize").unwrap();
        assert!(console.input("nope").is_none());
        // Input before the device runs waits.
        tty.send(b"hello");
        let mut rig = Rig::on(console, None, Capture::default(), Capture::default());
        let mut addrs: VecDeque<u64> = rig.offer_control_buffers(16).into();
        rig.send_control(BAD_ID, event::DEVICE_READY, 1);
        rig.send_control(1, event::PORT_READY, 1);
        rig.send_control(2, event::PORT_READY, 1);
        let got = rig.received(&mut addrs);
        assert_eq!(
            got[3..],
            [
                control(1, event::CONSOLE_PORT, 1),
                named(1, "kestrel.tty"),
                control(1, event::PORT_OPEN, 1),
                named(2, "kestrel.winsize"),
                control(2, event::PORT_OPEN, 1),
            ]
        );
        // Delivered as the driver offers buffers, split across them.
        let small = rig.q[TTY_RX].add_in(&rig.mem, 3);
        rig.q[TTY_RX].kick(&mut rig.t);
        let large = rig.q[TTY_RX].add_in(&rig.mem, 64);
        rig.q[TTY_RX].kick(&mut rig.t);
        assert_eq!(rig.q[TTY_RX].used(&rig.mem), vec![(0, 3), (1, 2)]);
        let mut b = [0u8; 3];
        rig.mem.read_slice(&mut b, GuestAddress(small)).unwrap();
        assert_eq!(&b, b"hel");
        let mut b = [0u8; 2];
        rig.mem.read_slice(&mut b, GuestAddress(large)).unwrap();
        assert_eq!(&b, b"lo");
        // With a buffer waiting, input goes at once, with an interrupt.
        let buf = rig.q[WINSIZE_RX].add_in(&rig.mem, 64);
        rig.q[WINSIZE_RX].kick(&mut rig.t);
        assert!(rig.q[WINSIZE_RX].used(&rig.mem).is_empty());
        write_reg(&mut rig.t, regs::INTERRUPT_ACK, 1);
        winsize.send(b"40 132\n");
        assert_eq!(rig.q[WINSIZE_RX].used(&rig.mem), vec![(0, 7)]);
        let mut b = [0u8; 7];
        rig.mem.read_slice(&mut b, GuestAddress(buf)).unwrap();
        assert_eq!(&b, b"40 132\n");
        assert_ne!(read_reg(&mut rig.t, regs::INTERRUPT_STATUS) & 1, 0);
        // A receive buffer with no room ends the round instead of spinning.
        rig.q[TTY_RX].add_in(&rig.mem, 0);
        rig.q[TTY_RX].kick(&mut rig.t);
        tty.send(b"z");
        let z = rig.q[TTY_RX].add_in(&rig.mem, 8);
        rig.q[TTY_RX].kick(&mut rig.t);
        let used = rig.q[TTY_RX].used(&rig.mem);
        assert_eq!(used.last(), Some(&(3, 1)), "{used:?}");
        let mut b = [0u8; 1];
        rig.mem.read_slice(&mut b, GuestAddress(z)).unwrap();
        assert_eq!(&b, b"z");
        assert!(!rig.needs_reset());
    }

    #[test]
    fn receive_queues_ask_for_notifies_only_while_input_waits() {
        const WINSIZE_RX: usize = 4;
        let console = Console::new(vec![
            Port::new(STDOUT_PORT, Box::new(Capture::default())),
            Port::input_only("kestrel.winsize"),
        ])
        .unwrap();
        let winsize = console.input("kestrel.winsize").unwrap();
        let mut rig = Rig::on(console, None, Capture::default(), Capture::default());
        // VRING_USED_F_NO_NOTIFY, as the driver reads it before a notify.
        let no_notify = |rig: &Rig, q: usize| {
            let flags: u16 = rig
                .mem
                .read_obj(GuestAddress(rig.q[q].used_addr()))
                .unwrap();
            flags & 1 != 0
        };
        // Receive queues (port 0, control, port 1) are quiet from DRIVER_OK;
        // transmit queues are not.
        for q in [0, CTRL_RX, WINSIZE_RX] {
            assert!(no_notify(&rig, q), "receive queue {q}");
        }
        for q in [OUT_TX, CTRL_TX, WINSIZE_RX + 1] {
            assert!(!no_notify(&rig, q), "transmit queue {q}");
        }
        // Control buffers offered without a notify still carry the replies.
        let mut addrs: VecDeque<u64> = (0..4)
            .map(|_| rig.q[CTRL_RX].add_in(&rig.mem, 64))
            .collect();
        rig.send_control(BAD_ID, event::DEVICE_READY, 1);
        assert_eq!(
            rig.received(&mut addrs),
            [
                control(0, event::DEVICE_ADD, 1),
                control(1, event::DEVICE_ADD, 1)
            ]
        );
        assert!(no_notify(&rig, CTRL_RX));
        // Input with no receive buffer asks for a notify…
        winsize.send(b"40 132\n");
        assert!(!no_notify(&rig, WINSIZE_RX));
        let buf = rig.q[WINSIZE_RX].add_in(&rig.mem, 64);
        rig.q[WINSIZE_RX].kick(&mut rig.t);
        assert_eq!(rig.q[WINSIZE_RX].used(&rig.mem), vec![(0, 7)]);
        let mut b = [0u8; 7];
        rig.mem.read_slice(&mut b, GuestAddress(buf)).unwrap();
        assert_eq!(&b, b"40 132\n");
        // …and once it is delivered the queue is quiet again; a buffer
        // offered without a notify takes the next input.
        assert!(no_notify(&rig, WINSIZE_RX));
        let buf = rig.q[WINSIZE_RX].add_in(&rig.mem, 64);
        winsize.send(b"1 2\n");
        assert_eq!(rig.q[WINSIZE_RX].used(&rig.mem), vec![(1, 4)]);
        let mut b = [0u8; 4];
        rig.mem.read_slice(&mut b, GuestAddress(buf)).unwrap();
        assert_eq!(&b, b"1 2\n");
        assert!(no_notify(&rig, WINSIZE_RX) && !rig.needs_reset());
    }

    #[test]
    fn output_reaches_each_ports_sink_with_an_interrupt() {
        let mut rig = Rig::new();
        rig.write_port(OUT_TX, b"out\n");
        rig.write_port(ERR_TX, b"err\n");
        rig.write_port(OUT_TX, b"more\n");
        assert_eq!(rig.out.take(), b"out\nmore\n");
        assert_eq!(rig.err.take(), b"err\n");
        assert_eq!(rig.q[OUT_TX].used(&rig.mem), vec![(0, 0), (1, 0)]);
        assert_ne!(read_reg(&mut rig.t, regs::INTERRUPT_STATUS) & 1, 0);
        // A chain of several buffers is one write in order.
        let (a, b) = (
            rig.q[OUT_TX].data(&rig.mem, b"he"),
            rig.q[OUT_TX].data(&rig.mem, b"llo"),
        );
        rig.q[OUT_TX].add_descs(&rig.mem, &[(a, 2, 0), (b, 3, 0)]);
        rig.q[OUT_TX].kick(&mut rig.t);
        assert_eq!(rig.out.take(), b"hello");
        // Receive-queue notifies are accepted and do nothing.
        rig.q[0].add_in(&rig.mem, 64);
        rig.q[0].kick(&mut rig.t);
        assert!(rig.q[0].used(&rig.mem).is_empty());
        assert!(!rig.needs_reset());
    }

    #[test]
    fn many_buffers_arrive_intact_and_in_order() {
        let mut rig = Rig::new();
        let mut expected = Vec::new();
        let mut n = 0u64;
        // 4 MiB in 32 KiB buffers, several per notify.
        while expected.len() < 4 << 20 {
            for _ in 0..3 {
                let chunk: Vec<u8> = (0..32 * 1024)
                    .map(|_| {
                        n = n
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (n >> 56) as u8
                    })
                    .collect();
                rig.q[OUT_TX].add_out(&rig.mem, &chunk);
                expected.extend_from_slice(&chunk);
            }
            rig.q[OUT_TX].kick(&mut rig.t);
            assert_eq!(rig.q[OUT_TX].used(&rig.mem).len(), 3);
        }
        assert!(rig.out.take() == expected);
    }

    #[test]
    fn malformed_chains_break_the_device_until_reset() {
        let mut rig = Rig::new();
        // A loop on the stdout queue.
        let a = rig.q[OUT_TX].data(&rig.mem, b"x");
        let head = rig.q[OUT_TX].raw_desc(&rig.mem, 0, a, 1, F_NEXT, 1);
        rig.q[OUT_TX].raw_desc(&rig.mem, 1, a, 1, F_NEXT, 0);
        rig.q[OUT_TX].publish(&rig.mem, head);
        rig.q[OUT_TX].kick(&mut rig.t);
        assert!(rig.needs_reset());
        assert!(rig.out.take().is_empty());
        // Ignored from now on.
        rig.write_port(ERR_TX, b"err\n");
        assert!(rig.err.take().is_empty());
        // After a reset the driver starts over and output flows.
        let mut rig2 = Rig::new();
        rig2.write_port(OUT_TX, b"ok\n");
        assert_eq!(rig2.out.take(), b"ok\n");
        write_reg(&mut rig.t, regs::STATUS, 0);
        assert!(!rig.needs_reset());
    }

    #[test]
    fn bad_rings_break_the_device() {
        // Buffer outside RAM, write-only output, avail index far ahead.
        for case in 0..3 {
            let mut rig = Rig::new();
            match case {
                0 => {
                    rig.q[ERR_TX].add_descs(&rig.mem, &[(0xdead_0000, 16, 0)]);
                }
                1 => {
                    let a = rig.q[ERR_TX].alloc(16);
                    rig.q[ERR_TX].add_descs(&rig.mem, &[(a, 16, 0), (a, 16, F_WRITE), (a, 1, 0)]);
                }
                _ => rig.q[ERR_TX].set_avail_idx(&rig.mem, 1000),
            }
            rig.q[ERR_TX].kick(&mut rig.t);
            assert!(rig.needs_reset(), "case {case}");
        }
    }

    #[test]
    fn a_failing_sink_loses_output_but_not_the_guest() {
        let console = Console::new(vec![Port::new("p", Box::new(Broken))]).unwrap();
        let mem = test_memory();
        let mut t = MmioTransport::new(
            Box::new(console),
            mem.clone(),
            Interrupt::new(IrqLine::none()),
        )
        .unwrap();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | F_MULTIPORT);
        let mut q: Vec<DriverQueue> = (0..4).map(|i| DriverQueue::new(&mem, i, 16)).collect();
        for dq in &q {
            dq.setup(&mut t);
        }
        write_reg(
            &mut t,
            regs::STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        for _ in 0..3 {
            q[1].add_out(&mem, b"lost");
            q[1].kick(&mut t);
        }
        assert_eq!(q[1].used(&mem).len(), 3);
        assert_eq!(read_reg(&mut t, regs::STATUS) & S_NEEDS_RESET, 0);
    }

    #[test]
    fn without_multiport_or_control_queues_activation_fails() {
        let mem = test_memory();
        let console = Console::new(vec![Port::new("p", Box::new(Broken))]).unwrap();
        let mut t = MmioTransport::new(
            Box::new(console),
            mem.clone(),
            Interrupt::new(IrqLine::none()),
        )
        .unwrap();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        DriverQueue::new(&mem, 0, 16).setup(&mut t);
        DriverQueue::new(&mem, 1, 16).setup(&mut t);
        write_reg(
            &mut t,
            regs::STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert_ne!(read_reg(&mut t, regs::STATUS) & S_NEEDS_RESET, 0);
    }

    /// Sends every write on a channel.
    struct Signal(mpsc::Sender<Vec<u8>>);
    impl Write for Signal {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_worker_serves_the_queue_eventfd_and_drains_at_shutdown() {
        let (tx, rx) = mpsc::channel();
        let events = EventFd::new(0).unwrap();
        let kick = events.try_clone().unwrap();
        let mut rig = Rig::with(
            Box::new(Signal(tx)),
            Box::new(Capture::default()),
            Some(events),
            Capture::default(),
            Capture::default(),
        );
        // As KVM does for a write to the notify register.
        rig.q[OUT_TX].add_out(&rig.mem, b"via the worker\n");
        kick.write(1).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(got, b"via the worker\n");
        // A notify that reaches the transport only wakes the worker.
        rig.write_port(OUT_TX, b"again\n");
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            b"again\n"
        );
        // Queued but never notified: written by the drain at shutdown.
        rig.q[OUT_TX].add_out(&rig.mem, b"last words\n");
        rig.t.shutdown();
        assert_eq!(rx.try_recv().unwrap(), b"last words\n");
        assert!(!rig.needs_reset());
    }

    #[test]
    fn reset_stops_the_worker_and_a_new_one_starts() {
        let (tx, rx) = mpsc::channel();
        let events = EventFd::new(0).unwrap();
        let kick = events.try_clone().unwrap();
        let mut rig = Rig::with(
            Box::new(Signal(tx)),
            Box::new(Capture::default()),
            Some(events),
            Capture::default(),
            Capture::default(),
        );
        write_reg(&mut rig.t, regs::STATUS, 0);
        // Nobody serves the eventfd now: the next output waits for a driver.
        negotiate(&mut rig.t, VIRTIO_F_VERSION_1 | F_MULTIPORT);
        for dq in &mut rig.q {
            *dq = DriverQueue::new(&rig.mem, dq.index, QUEUE_SIZE);
            dq.setup(&mut rig.t);
        }
        write_reg(
            &mut rig.t,
            regs::STATUS,
            S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        rig.q[OUT_TX].add_out(&rig.mem, b"second life");
        kick.write(1).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).unwrap(),
            b"second life"
        );
    }

    #[test]
    fn bad_port_lists_are_refused() {
        assert!(matches!(
            Console::new(vec![]),
            Err(ConsoleError::PortCount(0))
        ));
        let bad = Console::new(vec![Port::new("a b", Box::new(Broken))]);
        assert!(matches!(bad, Err(ConsoleError::PortName(_))));
        assert_eq!(port_of_tx(1), Some(0));
        assert_eq!(port_of_tx(5), Some(1));
        assert_eq!(port_of_tx(7), Some(2));
        assert_eq!((port_of_tx(3), port_of_tx(4)), (None, None));
        assert_eq!(rx_queue(1), 4);
    }
}

//! A VM's life: [`Config`] → (validated, built in a fixed order) [`Vm`] →
//! [`Vm::run`] → [`Outcome`].
//!
//! Build order (each step only uses earlier ones): validate the config,
//! open KVM, allocate guest RAM, create the VM and register RAM, in-kernel
//! irqchip + PIT (kernels only), devices and buses, kernel/initrd/command
//! line, ACPI tables, vCPUs (configured, threads paused). `run` releases the
//! vCPUs and waits for the first event that ends the VM: a reset, triple
//! fault, crash, all vCPUs halted, a VMM failure, the wall-clock limit, or
//! the grace period after the status line. Then every vCPU is stopped.
//! Invariant: `run` returns only after every vCPU thread has been asked to
//! stop and all that responded have been joined; it never panics.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kestrel_initramfs::job::{JobHeader, PhaseMark};
use kestrel_kernels::symbols;
use kvm_bindings::CpuId;
use vm_memory::GuestMemoryBackend as _;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zerocopy::IntoBytes as _;

use crate::acpi;
use crate::boot::{self, BootSpec, Entry};
use crate::bus::{Bus, BusError, Space};
use crate::devices::i8042::I8042;
use crate::devices::probe::{ProbeLog, ProbePort};
use crate::devices::serial::SerialDevice;
use crate::devices::sinks::{ConsoleLog, ConsoleState, StatusChannel, StatusState};
use crate::devices::virtio::mmio::{regs, MmioError, MmioTransport};
use crate::devices::virtio::{self, console, fs, Interrupt, VirtioDevice};
use crate::devices::{EventLine, IrqLine};
use crate::event::{Ending, VcpuEnd, VmEvent};
use crate::gdb;
use crate::kvm::{Kvm, KvmError, VcpuState, VmHandle};
use crate::layout;
use crate::log;
use crate::memory::{self, GuestMemory, MemoryError};
use crate::snapshot::{self, Loaded};
use crate::terminal;
use crate::timings;
use crate::vcpu::{self, Buses, Reply, VcpuSetup, VcpuThread};
use crate::verdict::Verdict;

/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory accepted.
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;
/// After the status line, how long the guest gets to reset by itself.
pub const STATUS_GRACE: Duration = Duration::from_secs(2);
/// How long stopping the vCPUs may take before they are abandoned.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// Interval between kicks while stopping.
const KICK_INTERVAL: Duration = Duration::from_millis(10);

/// What the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A Linux kernel (bzImage or ELF vmlinux with PVH).
    Kernel {
        /// Kernel image.
        kernel: PathBuf,
        /// Its format if known (the kernel cache checked it); else sniffed.
        kind: Option<boot::KernelKind>,
        /// The bzImage `kernel` was unpacked from ([`crate::vmlinux`]):
        /// booted instead when `kernel` cannot be loaded.
        fallback: Option<PathBuf>,
        /// Initial ramdisk.
        initrd: Option<boot::Initrd>,
        /// Appended to [`boot::cmdline::DEFAULT_ARGS`].
        append: String,
        /// Host directories served as virtio-fs devices, one each, in
        /// virtio-mmio slot order after the console.
        shares: Vec<fs::Share>,
    },
    /// A hand-written real-mode program at [`layout::RAW_GUEST_ENTRY`] on
    /// every vCPU, without an interrupt controller (doctor probe, tests).
    Raw {
        /// Machine code.
        code: Vec<u8>,
    },
}

/// Where COM1 (the kernel console) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// The VMM's stderr.
    Stderr,
    /// A file (created or truncated).
    File(PathBuf),
    /// Nowhere (the last lines are still kept for failure reports).
    Discard,
}

/// Everything needed to build a VM. Plain data; validated by `Vm::try_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What to run.
    pub boot: Boot,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Wall-clock limit, counted from `Vm::try_from` (the CLI passes what
    /// is left of `--timeout` after preparing the kernel and initramfs).
    pub timeout: Duration,
    /// COM1 destination.
    pub console: Console,
    /// Start from a snapshot (kernels with kestrel's base initramfs alone).
    pub warm: Option<Warm>,
    /// The guest command runs on a terminal (its job spec has a `tty`):
    /// the virtio console gets the console port [`terminal::TTY_PORT`] on
    /// kestrel's stdout and the input port [`terminal::WINSIZE_PORT`], and
    /// kestrel's stdin (a terminal, put in raw mode for the run) is
    /// forwarded to the guest.
    pub terminal: bool,
}

/// A warm start ([`crate::snapshot`]): restore the snapshot made for this
/// config if there is a good one; else boot cold (the initrd is kestrel's
/// base archive alone, so the init waits for its job), save one where the
/// init waits, and go on. Either way the init gets `job` over COM2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warm {
    /// Where snapshots live.
    pub dir: PathBuf,
    /// The job spec's text.
    pub job: String,
}

/// How a run began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A cold boot.
    Cold,
    /// A cold boot that saved a snapshot where the init waited for its job.
    ColdSaved,
    /// A cold boot meant to save a snapshot that could not (why: logged).
    ColdUnsaved,
    /// Restored from a snapshot.
    Warm,
}

impl Start {
    /// `cold`, `cold-saved`, `cold-unsaved`, `warm`.
    pub fn name(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::ColdSaved => "cold-saved",
            Start::ColdUnsaved => "cold-unsaved",
            Start::Warm => "warm",
        }
    }
}

/// A config that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("--cpus {0} is out of range: use 1 to {max}", max = layout::MAX_VCPUS)]
    Cpus(u32),
    /// Memory out of range.
    #[error("--memory {0} is out of range: use {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} (MiB)")]
    Memory(u64),
    /// Zero timeout.
    #[error("--timeout must be at least 1 second")]
    Timeout,
    /// Kernel or initrd unusable.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
}

/// Building or running a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM refused something.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// Device placement (a layout bug).
    #[error("internal device layout error: {0}")]
    Bus(#[from] BusError),
    /// A virtio device could not be put on its transport (a VMM bug).
    #[error("internal virtio device error: {0}")]
    VirtioMmio(#[from] MmioError),
    /// The virtio console's ports (a VMM bug).
    #[error("internal virtio console error: {0}")]
    VirtioConsole(#[from] console::ConsoleError),
    /// kestrel's terminal could not be set up for the guest.
    #[error("cannot use this terminal for the guest: {0}")]
    Terminal(#[source] std::io::Error),
    /// A virtio-fs share cannot be served.
    #[error(transparent)]
    Share(#[from] fs::FsError),
    /// More virtio devices than virtio-mmio slots.
    #[error("{0} virtio devices do not fit in {max} virtio-mmio slots; share fewer directories", max = layout::VIRTIO_MMIO_SLOTS)]
    TooManyDevices(usize),
    /// The console file.
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd for an interrupt line.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A snapshot that cannot be restored here.
    #[error("{0}")]
    Snapshot(String),
}

impl Config {
    /// Checks ranges and that kernel and initrd are readable and the kernel
    /// is a kernel.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Config::validate_resources(self.cpus, self.memory_mib, self.timeout)?;
        if let Boot::Kernel {
            kernel,
            fallback,
            initrd,
            ..
        } = &self.boot
        {
            // A damaged unpacked kernel is replaced by its bzImage at load.
            match (boot::sniff(kernel), fallback) {
                (Err(_), Some(bzimage)) => boot::sniff(bzimage).map(drop)?,
                (result, _) => result.map(drop)?,
            }
            if let Some(initrd) = initrd {
                let path = initrd.file();
                File::open(path).map_err(|source| boot::BootError::InitrdIo {
                    path: path.to_owned(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The range checks of [`Config::validate`] alone (the CLI runs them
    /// before resolving the kernel, so `--cpus 0` is reported first).
    pub fn validate_resources(
        cpus: u32,
        memory_mib: u64,
        timeout: Duration,
    ) -> Result<(), ConfigError> {
        if cpus == 0 || cpus > u32::from(layout::MAX_VCPUS) {
            return Err(ConfigError::Cpus(cpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ConfigError::Memory(memory_mib));
        }
        if timeout < Duration::from_secs(1) {
            return Err(ConfigError::Timeout);
        }
        Ok(())
    }
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// How the VM ended.
    pub ending: Ending,
    /// From the start of `run` (vCPUs released) to the init's first phase
    /// mark: the time to init.
    pub boot: Option<Duration>,
    /// When the VM was being built (`Vm::try_from` began).
    pub built: Instant,
    /// When the vCPUs were released.
    pub released: Instant,
    /// When the status line was complete.
    pub status_at: Option<Instant>,
    /// When the VM ended (reset, fault, timeout…), before teardown.
    pub ended: Instant,
    /// The init's phase marks, each with the moment its line arrived.
    pub marks: Vec<(PhaseMark, Instant)>,
    /// From the start of building the VM to the end of `run`.
    pub total: Duration,
    /// The last console lines.
    pub console_tail: Vec<String>,
    /// The console's panic line, if the kernel panicked.
    pub panic_line: Option<String>,
    /// Cold or warm.
    pub start: Start,
    /// When a snapshot was restored (vCPUs released right after) or saved.
    pub snapshot_at: Option<Instant>,
}

/// A built VM, vCPUs paused.
pub struct Vm {
    created: Instant,
    timeout: Duration,
    raw: bool,
    vcpus: Vec<VcpuThread>,
    events: Receiver<VmEvent>,
    console: Arc<Mutex<ConsoleState>>,
    status: Arc<Mutex<StatusState>>,
    probe: ProbeLog,
    _buses: Arc<Buses>,
    /// Shut down after the vCPUs stop, so queued guest output is written.
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// The ioeventfds KVM completes InterruptACK writes on (never read).
    _absorbed: Vec<EventFd>,
    /// The VM fd and guest RAM (KVM maps RAM by host address): must outlive
    /// every vCPU thread, so it is leaked if a thread cannot be stopped.
    vm: Option<VmHandle>,
    /// The kernel's System.map, to name the function a fault happened in.
    system_map: Option<PathBuf>,
    /// COM1 and COM2, for a snapshot; COM2 also carries the job.
    com1: Arc<Mutex<SerialDevice<ConsoleLog>>>,
    com2: Arc<Mutex<SerialDevice<StatusChannel>>>,
    /// Guest RAM, for a snapshot.
    mem: GuestMemory,
    /// What a warm start still has to do.
    warm: Option<WarmRun>,
    start: Start,
    snapshot_at: Option<Instant>,
    /// `--gdb`: the port to serve once `run` begins.
    gdb: Option<gdb::Listener>,
    /// kestrel's terminal in raw mode while the VM runs (restored when the
    /// `Vm` is dropped, at the end of [`Vm::run`]).
    _terminal: Option<terminal::RawMode>,
}

/// A warm run's job and, for a cold one, where to save the snapshot.
struct WarmRun {
    job: String,
    save: Option<SavePlan>,
    /// The job went out (it goes once per run).
    sent: bool,
}

/// Where and how to save a snapshot when the init says it is ready.
struct SavePlan {
    path: PathBuf,
    key: u64,
    msrs: Arc<Vec<u32>>,
    xcrs: bool,
    tsc_khz: u32,
    /// The kernel's read-only image in the snapshot's RAM, for restores
    /// to map.
    read_only: Vec<snapshot::Extent>,
}

/// Why no snapshot was saved.
enum SaveError {
    /// This kernel and config never allow one.
    Unsuitable(String),
    /// This time it did not work.
    Failed(String),
}

/// How [`build`] starts the VM.
enum Begin<'a> {
    Cold,
    /// Cold with the job handed over COM2, saving a snapshot at `path` for
    /// `key` (None: this kernel and config cannot have one).
    Save {
        path: Option<PathBuf>,
        key: u64,
    },
    /// From this snapshot.
    Restore(&'a Loaded),
}

impl TryFrom<Config> for Vm {
    type Error = VmError;

    fn try_from(config: Config) -> Result<Vm, VmError> {
        let created = Instant::now();
        config.validate()?;
        let kvm = Kvm::open()?;
        let cpuid = kvm.supported_cpuid()?;
        let Some(warm) = &config.warm else {
            return build(created, &config, &kvm, &cpuid, Begin::Cold);
        };
        let key_inputs = warm_key(&config, &cpuid);
        let key = key_inputs.value();
        let path = snapshot::path_for(&warm.dir, key);
        let memory_bytes = config.memory_mib * layout::MIB;
        let unsuitable = snapshot::unsuitable_marker(&path);
        if let Ok(why) = std::fs::read_to_string(&unsuitable) {
            log::debug(format_args!(
                "no snapshot for this kernel and config ({}): booting cold",
                why.trim()
            ));
            return build(
                created,
                &config,
                &kvm,
                &cpuid,
                Begin::Save { path: None, key },
            );
        }
        match snapshot::open(&path, key, memory_bytes) {
            Ok(Some(loaded)) => {
                match build(created, &config, &kvm, &cpuid, Begin::Restore(&loaded)) {
                    Ok(vm) => return Ok(vm),
                    Err(e) => {
                        log::warn(format_args!(
                            "cannot restore {} ({e}); booting cold and saving a new snapshot",
                            path.display()
                        ));
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Ok(None) => log::debug(format_args!(
                "no snapshot {} yet: booting cold and saving one; its key:\n{}",
                path.display(),
                key_inputs.text()
            )),
            Err(e) => {
                log::warn(format_args!("{e}; booting cold and saving a new snapshot"));
                let _ = std::fs::remove_file(&path);
            }
        }
        build(
            created,
            &config,
            &kvm,
            &cpuid,
            Begin::Save {
                path: Some(path),
                key,
            },
        )
    }
}

/// The snapshot key of a warm config: the kernel, the initrd, the command
/// line, the device count, vCPUs, memory, KVM's CPUID and this kestrel.
fn warm_key(config: &Config, cpuid: &CpuId) -> snapshot::Key {
    let mut k = snapshot::Key::new();
    if let Boot::Kernel {
        kernel,
        kind,
        fallback,
        initrd,
        append,
        shares,
    } = &config.boot
    {
        // Cache entries are named by their content and touched when used:
        // an unpacked kernel counts by its name and its bzImage's stamp,
        // kestrel's base initramfs by its name and size.
        match fallback {
            Some(bzimage) => {
                k.add("kernel", &kernel.display().to_string());
                k.add_file("bzimage", bzimage);
            }
            None => k.add_file("kernel", kernel),
        }
        k.add("kind", &format!("{kind:?}"));
        match initrd {
            Some(boot::Initrd::File(base)) => k.add(
                "initrd",
                &format!(
                    "{} {}",
                    base.display(),
                    std::fs::metadata(base).map_or(0, |m| m.len())
                ),
            ),
            Some(boot::Initrd::BaseAndJob { base, job }) => {
                k.add_file("initrd", base);
                k.add("job", &format!("{:016x}", snapshot::hash(job)));
            }
            None => k.add("initrd", "none"),
        }
        k.add("append", append);
        k.add("virtio-fs devices", &shares.len().to_string());
    }
    k.add("cpus", &config.cpus.to_string());
    k.add("memory", &config.memory_mib.to_string());
    // What the vCPUs get, not KVM's raw list: that one carries the APIC id
    // of whichever host CPU answered.
    let mut entries: Vec<u8> = Vec::new();
    for id in 0..config.cpus as u8 {
        let mut c = vcpu::cpuid_for(cpuid, id, config.cpus as u8);
        let _ = crate::xsave::sanitize(&mut c);
        entries.extend(c.as_slice().iter().flat_map(|e| e.as_bytes().to_vec()));
    }
    k.add("cpuid", &format!("{:016x}", snapshot::hash(&entries)));
    if let Ok(exe) = std::env::current_exe() {
        k.add_file("vmm", &exe);
    }
    k
}

/// Named steps of a VM build with their durations, for one debug line.
struct BuildSteps {
    last: Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl BuildSteps {
    fn new() -> Self {
        BuildSteps {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// The step that ends now.
    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done.push((step, now - self.last));
        self.last = now;
    }

    fn log(&self) {
        let parts: Vec<String> = self
            .done
            .iter()
            .map(|(step, d)| format!("{step} {:.1} ms", d.as_secs_f64() * 1e3))
            .collect();
        log::debug(format_args!("VM build steps: {}", parts.join(", ")));
    }
}

/// Builds the VM in the module's order; restoring skips loading the
/// kernel and ACPI tables (they are in the snapshot's RAM) and sets the
/// saved state instead of the boot state.
fn build(
    created: Instant,
    config: &Config,
    kvm: &Kvm,
    supported_cpuid: &CpuId,
    begin: Begin<'_>,
) -> Result<Vm, VmError> {
    let system_map = match &config.boot {
        Boot::Kernel {
            kernel, fallback, ..
        } => symbols::find_system_map(fallback.as_deref().unwrap_or(kernel)),
        Boot::Raw { .. } => None,
    };
    let cpus = config.cpus as u8;
    let raw = matches!(config.boot, Boot::Raw { .. });
    let memory_bytes = config.memory_mib * layout::MIB;

    let restore = match &begin {
        Begin::Restore(loaded) => Some(&loaded.state),
        _ => None,
    };
    if restore.is_some_and(|s| s.vcpus.len() != usize::from(cpus)) {
        return Err(VmError::Snapshot("it has another vCPU count".into()));
    }
    // Where a build's time goes (`KESTREL_LOG=debug`): under the rig's
    // TCG every step is 10–50× slower than on hardware.
    let mut steps = BuildSteps::new();
    let mem = match &begin {
        Begin::Restore(loaded) => {
            let began = Instant::now();
            let restored = memory::from_snapshot(loaded, memory_bytes)?;
            log::debug(format_args!(
                "snapshot RAM ({} MiB of data, {} MiB of it read-only kernel image mapped from the file) ready in {} ms",
                loaded.state.extents.iter().map(|e| e.len).sum::<u64>() >> 20,
                restored.read_only_mapped >> 20,
                began.elapsed().as_millis()
            ));
            restored.memory
        }
        _ => memory::create(memory_bytes)?,
    };
    steps.mark("memory");
    let vm = kvm.create_vm(&mem)?;
    if raw {
        vm.set_tss()?;
    } else {
        vm.create_irqchip_and_pit()?;
    }
    if let Some(state) = restore {
        vm.restore_state(&state.vm)?;
    }

    let (tx, events) = std::sync::mpsc::channel();
    let irq = |gsi: u32| -> Result<IrqLine, VmError> {
        if raw {
            return Ok(IrqLine::none());
        }
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&evt, gsi)?;
        Ok(IrqLine::new(evt))
    };
    // The UARTs raise their interrupt inside a vCPU's port exit (an IER
    // write enabling THRE, a THR write): pulsed there, it is pending before
    // that vCPU re-enters the guest, as with QEMU's 8250 (through an irqfd
    // it came from KVM's worker while the vCPU ran; runner/NOTES.md).
    let uart_irq = |gsi: u32| {
        if raw {
            IrqLine::none()
        } else {
            IrqLine::pin(vm.irq_pin(gsi))
        }
    };
    let console_out: Option<Box<dyn Write + Send>> = match &config.console {
        Console::Stderr => Some(Box::new(std::io::stderr())),
        Console::File(path) => Some(Box::new(File::create(path).map_err(|source| {
            VmError::ConsoleFile {
                path: path.clone(),
                source,
            }
        })?)),
        Console::Discard => None,
    };
    let (console_log, console) = ConsoleLog::new(console_out);
    let (status_channel, status) = StatusChannel::new(tx.clone());
    let probe = ProbeLog::default();

    let (com1, com2) = match restore {
        Some(state) => (
            SerialDevice::from_state(&state.com1, uart_irq(layout::COM1_IRQ), console_log)
                .map_err(VmError::Snapshot)?,
            SerialDevice::from_state(&state.com2, uart_irq(layout::COM2_IRQ), status_channel)
                .map_err(VmError::Snapshot)?,
        ),
        None => (
            SerialDevice::new(uart_irq(layout::COM1_IRQ), console_log),
            SerialDevice::new(uart_irq(layout::COM2_IRQ), status_channel),
        ),
    };
    let (com1, com2) = (Arc::new(Mutex::new(com1)), Arc::new(Mutex::new(com2)));
    let mut pio = Bus::new(Space::Pio);
    let port = |p: u16| u64::from(p);
    pio.insert(
        port(layout::COM1_PORT),
        port(layout::SERIAL_PORT_LEN),
        com1.clone(),
    )?;
    pio.insert(
        port(layout::COM2_PORT),
        port(layout::SERIAL_PORT_LEN),
        com2.clone(),
    )?;
    pio.insert(
        port(layout::I8042_DATA_PORT),
        port(layout::I8042_CMD_PORT - layout::I8042_DATA_PORT + 1),
        Arc::new(Mutex::new(I8042::new(EventLine(tx.clone())))),
    )?;
    if raw {
        pio.insert(
            port(layout::PROBE_PORT),
            1,
            Arc::new(Mutex::new(ProbePort::new(probe.clone()))),
        )?;
    }
    // virtio devices (kernels only), one virtio-mmio slot each, in order.
    let mut mmio = Bus::new(Space::Mmio);
    let mut virtio_slots: Vec<acpi::VirtioMmioSlot> = Vec::new();
    let mut virtio_transports = Vec::new();
    let mut absorbed = Vec::new();
    let mut raw_mode = None;
    if !raw {
        let ports = if config.terminal {
            let (ports, tty, winsize) =
                console::with_terminal(terminal::TTY_PORT, terminal::WINSIZE_PORT)?;
            // The job spec has the size the CLI read; a resize since then
            // (before SIGWINCH was blocked for the signalfd) is not lost.
            if let Some((rows, cols)) = terminal::window_size(0) {
                winsize.send(&terminal::winsize_line(rows, cols));
            }
            terminal::forward(tty, winsize, tx.clone()).map_err(VmError::Terminal)?;
            raw_mode = Some(terminal::RawMode::enter(0).map_err(VmError::Terminal)?);
            ports
        } else {
            console::stdio()?
        };
        let mut devices: Vec<Box<dyn VirtioDevice>> = vec![Box::new(ports)];
        if let Boot::Kernel { shares, .. } = &config.boot {
            for share in shares {
                devices.push(Box::new(fs::Fs::new(share)?));
            }
        }
        if devices.len() > layout::VIRTIO_MMIO_SLOTS as usize {
            return Err(VmError::TooManyDevices(devices.len()));
        }
        for (n, device) in (0u32..).zip(devices) {
            let (range, gsi) = layout::virtio_mmio_slot(n);
            let mut transport = MmioTransport::new(device, mem.clone(), Interrupt::new(irq(gsi)?))?;
            let notify = EventFd::new(0).map_err(VmError::EventFd)?;
            vm.register_mmio_ioeventfd(&notify, range.start + regs::QUEUE_NOTIFY)?;
            transport.set_queue_events(notify);
            // The guest reads registers from the transport's page with
            // no exit, and KVM completes the usual acknowledgement (of
            // a used-buffer interrupt) itself: an interrupt costs the
            // guest no exit to the VMM (see `Interrupt::ack`).
            if !vm.map_register_page(range.start, transport.page())? {
                log::debug(format_args!(
                    "KVM has no read-only memory slots: virtio-mmio register reads exit"
                ));
            }
            let ack = EventFd::new(0).map_err(VmError::EventFd)?;
            vm.register_mmio_ioeventfd_for(
                &ack,
                range.start + regs::INTERRUPT_ACK,
                virtio::INT_VRING,
            )?;
            absorbed.push(ack);
            let transport = Arc::new(Mutex::new(transport));
            let len = range.end - range.start;
            mmio.insert(range.start, len, transport.clone())?;
            virtio_slots.push(virtio::slot(n));
            virtio_transports.push(transport);
        }
    }
    let buses = Arc::new(Buses {
        pio,
        mmio,
        memory: mem.clone(),
    });

    steps.mark("vm and devices");
    let mut read_only = Vec::new();
    let entry = match &config.boot {
        // The snapshot's RAM holds the kernel, initrd and ACPI tables.
        Boot::Kernel { .. } if restore.is_some() => None,
        Boot::Kernel {
            kernel,
            kind,
            fallback,
            initrd,
            append,
            ..
        } => {
            let cmdline = boot::cmdline::build(append).map_err(boot::BootError::from)?;
            let mut spec = BootSpec {
                kernel,
                kind: *kind,
                initrd: initrd.as_ref(),
                cmdline: &cmdline,
                memory_bytes,
            };
            let entry = match (boot::load(&mem, &spec), fallback) {
                (Ok(entry), _) => entry,
                // Only a cache entry that cannot be read or parsed is
                // replaced; a too-small guest fails either way.
                (
                    Err(
                        e @ (boot::BootError::KernelIo { .. }
                        | boot::BootError::Loader(_)
                        | boot::BootError::NoPvhEntry
                        | boot::BootError::NotAKernel(_)),
                    ),
                    Some(bzimage),
                ) => {
                    log::warn(format_args!(
                        "the unpacked kernel {} did not load ({e}); booting {} instead",
                        kernel.display(),
                        bzimage.display()
                    ));
                    let _ = std::fs::remove_file(kernel);
                    spec.kernel = bzimage;
                    spec.kind = Some(boot::KernelKind::BzImage);
                    boot::load(&mem, &spec)?
                }
                (Err(e), _) => return Err(e.into()),
            };
            if matches!(begin, Begin::Save { .. }) {
                read_only =
                    snapshot::file_extents(memory_bytes, &boot::read_only_ranges(spec.kernel));
            }
            steps.mark("kernel, initrd, boot data");
            acpi::write(&mem, &acpi::build(cpus, &virtio_slots)?)?;
            steps.mark("ACPI");
            Some(entry)
        }
        Boot::Raw { code } => Some(boot::load_raw(&mem, code)?),
    };

    let xcrs = kvm.has_xcrs();
    let mut vcpus = Vec::with_capacity(usize::from(cpus));
    let mut tsc_khz = 0;
    for id in 0..cpus {
        let handle = vm.create_vcpu(id)?;
        let setup = VcpuSetup {
            id,
            cpus,
            supported_cpuid,
            entry: entry.and_then(|e| entry_for(id, e)),
            irqchip: !raw,
            xcrs,
        };
        match restore {
            Some(state) => {
                vcpu::restore(&handle, &setup, &state.vcpus[usize::from(id)])?;
                if id == 0 {
                    check_tsc(state.tsc_khz, handle.tsc_khz())?;
                }
            }
            None => vcpu::configure(&handle, &setup)?,
        }
        if id == 0 {
            tsc_khz = handle.tsc_khz().unwrap_or(0);
        }
        vcpus.push(VcpuThread::spawn(id, handle, buses.clone(), tx.clone())?);
    }
    steps.mark("vCPUs");
    steps.log();
    let (warm, start, snapshot_at) = match (begin, &config.warm) {
        (Begin::Cold, _) | (_, None) => (None, Start::Cold, None),
        (Begin::Restore(_), Some(w)) => (
            Some(WarmRun {
                job: w.job.clone(),
                save: None,
                sent: false,
            }),
            Start::Warm,
            Some(Instant::now()),
        ),
        (Begin::Save { path, key }, Some(w)) => (
            Some(WarmRun {
                job: w.job.clone(),
                save: match path {
                    Some(path) => Some(SavePlan {
                        path,
                        key,
                        msrs: Arc::new(kvm.msr_index_list()?),
                        xcrs,
                        tsc_khz,
                        read_only,
                    }),
                    None => None,
                },
                sent: false,
            }),
            Start::ColdUnsaved,
            None,
        ),
    };
    Ok(Vm {
        created,
        timeout: config.timeout,
        raw,
        vcpus,
        events,
        console,
        status,
        probe,
        _buses: buses,
        virtio: virtio_transports,
        _absorbed: absorbed,
        vm: Some(vm),
        system_map,
        com1,
        com2,
        mem,
        warm,
        start,
        snapshot_at,
        gdb: None,
        _terminal: raw_mode,
    })
}

/// A snapshot made at another TSC frequency would run the guest's clocks
/// at the wrong rate (KVM here cannot scale it): refuse it when the two
/// differ by more than 0.1% (one calibration's noise).
fn check_tsc(saved: u32, now: Option<u32>) -> Result<(), VmError> {
    match now {
        Some(now) if saved != 0 && u64::from(saved.abs_diff(now)) * 1000 > u64::from(saved) => {
            Err(VmError::Snapshot(format!(
                "it was made with a {saved} kHz TSC, this host's is {now} kHz"
            )))
        }
        _ => Ok(()),
    }
}

/// Entry registers for vCPU `id`: the boot vCPU always; APs only for raw
/// guests (with an irqchip they wait for INIT/SIPI).
fn entry_for(id: u8, entry: Entry) -> Option<Entry> {
    match entry {
        Entry::RealMode { .. } => Some(entry),
        _ if id == 0 => Some(entry),
        _ => None,
    }
}

impl Vm {
    /// The debug-port log of a raw guest.
    pub fn probe_log(&self) -> ProbeLog {
        self.probe.clone()
    }

    /// Serves gdb on `listener` during [`Vm::run`]; the guest then waits
    /// for gdb before its first instruction.
    pub fn attach_gdb(&mut self, listener: gdb::Listener) {
        self.gdb = Some(listener);
    }

    /// Runs the guest to its end and decides the verdict.
    pub fn run(mut self) -> Outcome {
        let started = Instant::now();
        // With gdb, the vCPUs run when gdb says so.
        let gdb = self.gdb.take().map(|listener| {
            let controls = self.vcpus.iter().map(VcpuThread::control).collect();
            gdb::GdbServer::start(listener, controls, self.mem.clone())
        });
        if gdb.is_none() {
            for vcpu in &self.vcpus {
                vcpu.start();
            }
        }
        if self.start == Start::Warm {
            self.send_job();
        }
        // The limit covers building the VM too: `--timeout` is wall-clock.
        let ending = self.wait_for_end(self.created, gdb.as_ref());
        let stopping = Instant::now();
        let ended = stopping;
        self.stop_vcpus();
        log::debug(format_args!(
            "vCPUs stopped in {} ms",
            stopping.elapsed().as_millis()
        ));
        // Not when a vCPU thread was abandoned: it may hold a device lock.
        if self.vm.is_some() {
            let devices = Instant::now();
            for transport in &self.virtio {
                let mut t = transport.lock().unwrap_or_else(PoisonError::into_inner);
                t.shutdown();
            }
            log::debug(format_args!(
                "virtio devices shut down in {} ms",
                devices.elapsed().as_millis()
            ));
        }

        {
            let left = self
                .com2
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .input_pending();
            if left > 0 {
                log::debug(format_args!(
                    "COM2: the guest left {left} input bytes unread"
                ));
            }
        }
        let (status, status_at, marks) = {
            let s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            (s.status(), s.status_at(), s.marks().to_vec())
        };
        let (panicked, panic_line, console_tail) = {
            let c = self.console.lock().unwrap_or_else(PoisonError::into_inner);
            (c.panicked(), c.panic_line().map(str::to_string), c.tail())
        };
        let outcome = Outcome {
            start: self.start,
            snapshot_at: self.snapshot_at,
            verdict: gdb_told(gdb, Verdict::decide(status, &ending, panicked)),
            ending,
            boot: timings::time_to_init(started, &marks),
            built: self.created,
            released: started,
            status_at,
            ended,
            marks,
            total: self.created.elapsed(),
            console_tail,
            panic_line,
        };
        let teardown = Instant::now();
        drop(self);
        log::debug(format_args!(
            "VM torn down in {} ms",
            teardown.elapsed().as_millis()
        ));
        outcome
    }

    fn wait_for_end(&mut self, since: Instant, gdb: Option<&gdb::GdbServer>) -> Ending {
        let mut deadline = since + self.timeout;
        let mut timeout_ending = Ending::Timeout;
        let mut halted = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(left) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    // Time stopped in gdb does not count against --timeout.
                    let stopped = gdb.map_or(Duration::ZERO, gdb::GdbServer::stopped_for);
                    let later = since + self.timeout + stopped;
                    if timeout_ending == Ending::Timeout && later > Instant::now() {
                        deadline = later;
                        continue;
                    }
                    return timeout_ending;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Ending::VmmFailure("the VM's event channel closed".into())
                }
            };
            match event {
                VmEvent::ResetRequested => return Ending::Reset,
                VmEvent::UserQuit => return Ending::UserQuit,
                VmEvent::GuestReady => self.on_ready(),
                VmEvent::StatusReported => {
                    let grace = Instant::now() + STATUS_GRACE;
                    if grace < deadline {
                        deadline = grace;
                        timeout_ending = Ending::StatusGraceExpired;
                    }
                }
                VmEvent::VcpuStopped { id, end } => match end {
                    VcpuEnd::Stopped => {}
                    VcpuEnd::Halted => {
                        halted += 1;
                        if halted == self.vcpus.len() {
                            return Ending::Halted;
                        }
                    }
                    VcpuEnd::TripleFault(mut report) => {
                        report.symbol = self
                            .system_map
                            .as_deref()
                            .and_then(|map| symbols::symbolize(map, report.rip));
                        return Ending::TripleFault(report);
                    }
                    VcpuEnd::InternalError(failed) => {
                        let (what, mut report) = *failed;
                        report.symbol = self
                            .system_map
                            .as_deref()
                            .and_then(|map| symbols::symbolize(map, report.rip));
                        return Ending::VmmFailure(format!("{what}; {report}"));
                    }
                    VcpuEnd::GuestReset => return Ending::Reset,
                    VcpuEnd::GuestCrash => return Ending::Crash,
                    VcpuEnd::Failed(why) => return Ending::VmmFailure(format!("vCPU {id}: {why}")),
                },
            }
        }
    }

    /// The init waits for its job: save a snapshot first if this run is to
    /// make one, then hand the job over.
    fn on_ready(&mut self) {
        let Some(warm) = &mut self.warm else {
            log::warn(format_args!(
                "the init waits for a job, but this run has none to give (use kestrel's own initramfs, or --warm)"
            ));
            return;
        };
        if let Some(plan) = warm.save.take() {
            let began = Instant::now();
            match self.save_snapshot(&plan) {
                Ok(bytes) => {
                    self.start = Start::ColdSaved;
                    self.snapshot_at = Some(Instant::now());
                    log::debug(format_args!(
                        "snapshot {} saved ({} MiB of RAM) in {} ms",
                        plan.path.display(),
                        bytes >> 20,
                        began.elapsed().as_millis()
                    ));
                }
                Err(SaveError::Unsuitable(why)) => {
                    // Remembered, so later runs neither try nor warn.
                    let _ = std::fs::write(snapshot::unsuitable_marker(&plan.path), &why);
                    log::warn(format_args!(
                        "no snapshot for this kernel and config: {why}; its runs boot cold"
                    ));
                }
                Err(SaveError::Failed(why)) => log::warn(format_args!(
                    "no snapshot saved ({why}); this run goes on cold"
                )),
            }
        }
        self.send_job();
    }

    /// The job header and spec, into COM2's receive side (once).
    fn send_job(&mut self) {
        let Some(warm) = &mut self.warm else { return };
        if std::mem::replace(&mut warm.sent, true) {
            return;
        }
        let realtime_ns = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut header = JobHeader {
            len: warm.job.len() as u32,
            realtime_ns,
            seed: host_seed(),
            in_window: true,
        };
        let bytes = if job_window_acknowledged(&self.mem)
            && write_job_window(&self.mem, &header.line(), warm.job.as_bytes())
        {
            log::debug(format_args!(
                "job: {} bytes and its header in the job window, the bell over COM2",
                warm.job.len()
            ));
            vec![kestrel_initramfs::job::JOB_WINDOW_BELL]
        } else {
            log::debug(format_args!("job: {} bytes over COM2", warm.job.len()));
            header.in_window = false;
            let mut bytes = header.line().into_bytes();
            bytes.extend_from_slice(warm.job.as_bytes());
            bytes
        };
        self.com2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue_input(&bytes);
    }

    /// Pauses every vCPU, saves the VM into `plan.path`, resumes them;
    /// the vCPUs run again whatever happened. The RAM bytes written.
    fn save_snapshot(&self, plan: &SavePlan) -> Result<u64, SaveError> {
        let paused = self.pause_vcpus().map_err(SaveError::Failed);
        let result = paused.and_then(|()| self.write_snapshot(plan));
        for vcpu in &self.vcpus {
            vcpu.resume();
        }
        result
    }

    fn pause_vcpus(&self) -> Result<(), String> {
        let limit = Instant::now() + STOP_LIMIT;
        for vcpu in &self.vcpus {
            loop {
                vcpu.request_pause();
                match vcpu.reply(KICK_INTERVAL) {
                    Some(Reply::Paused) => break,
                    Some(Reply::Saved(_)) => {}
                    None if vcpu.finished() => {
                        return Err(format!("vCPU {} stopped", vcpu.id));
                    }
                    None if Instant::now() >= limit => {
                        return Err(format!("vCPU {} did not pause", vcpu.id));
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    fn write_snapshot(&self, plan: &SavePlan) -> Result<u64, SaveError> {
        // Only the UARTs' state is saved: a device a driver has set up
        // (virtio_mmio built into the kernel) makes the point unsuitable.
        for t in &self.virtio {
            if !t
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_pristine()
            {
                return Err(SaveError::Unsuitable(
                    "the kernel set up a virtio device before its init ran (virtio_mmio built in)"
                        .into(),
                ));
            }
        }
        self.write_state(plan).map_err(SaveError::Failed)
    }

    fn write_state(&self, plan: &SavePlan) -> Result<u64, String> {
        let mut vcpus: Vec<VcpuState> = Vec::with_capacity(self.vcpus.len());
        for vcpu in &self.vcpus {
            vcpu.request_save(plan.msrs.clone(), plan.xcrs);
            match vcpu.reply(STOP_LIMIT) {
                Some(Reply::Saved(Ok(state))) => vcpus.push(*state),
                Some(Reply::Saved(Err(e))) => return Err(format!("vCPU {}: {e}", vcpu.id)),
                _ => return Err(format!("vCPU {} did not answer", vcpu.id)),
            }
        }
        let vm = self
            .vm
            .as_ref()
            .ok_or("the VM is gone")?
            .save_state()
            .map_err(|e| e.to_string())?;
        let serial = |d: &Arc<Mutex<SerialDevice<ConsoleLog>>>| {
            d.lock().unwrap_or_else(PoisonError::into_inner).state()
        };
        let mut state = snapshot::State {
            key: plan.key,
            tsc_khz: plan.tsc_khz,
            memory_bytes: self.mem.iter().map(vm_memory::GuestMemoryRegion::len).sum(),
            vm,
            com1: serial(&self.com1),
            com2: self
                .com2
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state(),
            vcpus,
            extents: Vec::new(),
            read_only: plan.read_only.clone(),
        };
        snapshot::write(&plan.path, &mut state, &self.mem).map_err(|e| e.to_string())
    }

    /// Stops every vCPU: flag + repeated kicks until each thread is done.
    fn stop_vcpus(&mut self) {
        let limit = Instant::now() + STOP_LIMIT;
        loop {
            let running: Vec<&VcpuThread> = self.vcpus.iter().filter(|v| !v.finished()).collect();
            if running.is_empty() {
                break;
            }
            if Instant::now() >= limit {
                log::warn(format_args!(
                    "{} vCPU thread(s) did not stop within {STOP_LIMIT:?}; abandoning them",
                    running.len()
                ));
                std::mem::forget(self.vm.take());
                return;
            }
            for vcpu in &running {
                vcpu.request_stop();
            }
            // Each wait ends the moment its thread exits; a thread still
            // in `KVM_RUN` after a kick interval is kicked again.
            for vcpu in &running {
                vcpu.wait_finished(KICK_INTERVAL);
            }
        }
        for vcpu in &mut self.vcpus {
            vcpu.join();
        }
        if self.raw {
            log::debug(format_args!("raw guest stopped"));
        }
    }
}

/// Whether the guest's init acknowledged the job window: kestrel's magic
/// and the init's ack stand at its start (the init writes the ack before
/// it says it is ready, so a snapshot holds both).
fn job_window_acknowledged(mem: &GuestMemory) -> bool {
    use kestrel_initramfs::job::{JOB_WINDOW_ACK, JOB_WINDOW_ACK_AT, JOB_WINDOW_MAGIC};
    use vm_memory::{Bytes as _, GuestAddress};
    let mut magic = [0u8; JOB_WINDOW_MAGIC.len()];
    let mut ack = [0u8; JOB_WINDOW_ACK.len()];
    mem.read_slice(&mut magic, GuestAddress(layout::JOB_WINDOW))
        .and_then(|()| {
            mem.read_slice(
                &mut ack,
                GuestAddress(layout::JOB_WINDOW + JOB_WINDOW_ACK_AT),
            )
        })
        .is_ok_and(|()| &magic == JOB_WINDOW_MAGIC && &ack == JOB_WINDOW_ACK)
}

/// Writes `job` and then its `header` line (flagged `window`) into the
/// job window; false (nothing written) when either does not fit, and
/// false when guest RAM refuses it: the job then goes over COM2.
fn write_job_window(mem: &GuestMemory, header: &str, job: &[u8]) -> bool {
    use kestrel_initramfs::job::{
        JOB_WINDOW_DATA, JOB_WINDOW_HEADER, JOB_WINDOW_HEADER_MAX, JOB_WINDOW_MAX,
    };
    use vm_memory::{Bytes as _, GuestAddress};
    header.len() <= JOB_WINDOW_HEADER_MAX
        && u32::try_from(job.len()).is_ok_and(|len| len <= JOB_WINDOW_MAX)
        && mem
            .write_slice(job, GuestAddress(layout::JOB_WINDOW + JOB_WINDOW_DATA))
            .is_ok()
        && mem
            .write_slice(
                header.as_bytes(),
                GuestAddress(layout::JOB_WINDOW + JOB_WINDOW_HEADER),
            )
            .is_ok()
}

/// Tells gdb (if any) how the VM ended; `verdict` unchanged.
fn gdb_told(gdb: Option<gdb::GdbServer>, verdict: Verdict) -> Verdict {
    if let Some(server) = gdb {
        server.finish(verdict.exit_code());
    }
    verdict
}

/// Fresh random bytes for the guest kernel's random pool (see
/// [`JobHeader::seed`]): from `getrandom(2)`, else `/dev/urandom`, else a
/// hash of the time and pid, which at least differs between runs. Never
/// fails.
fn host_seed() -> [u8; kestrel_initramfs::job::SEED_BYTES] {
    use std::hash::{Hash as _, Hasher as _};
    use std::io::Read as _;

    let mut seed = [0u8; kestrel_initramfs::job::SEED_BYTES];
    // SAFETY: `seed` is valid and writable for `seed.len()` bytes, and
    // getrandom writes at most that many.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if usize::try_from(got) == Ok(seed.len()) {
        return seed;
    }
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .is_ok()
    {
        return seed;
    }
    log::warn(format_args!(
        "no random bytes from getrandom or /dev/urandom; the guest's seed is a hash of time and pid"
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in (0u64..).zip(seed.chunks_mut(8)) {
        // Fixed keys: no randomness needed (RandomState would ask the OS).
        let mut hasher = std::hash::DefaultHasher::new();
        (now, std::process::id(), Instant::now(), i).hash(&mut hasher);
        let bytes = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_goes_in_the_window_only_behind_magic_and_ack() {
        use kestrel_initramfs::job::{
            JOB_WINDOW_ACK, JOB_WINDOW_ACK_AT, JOB_WINDOW_DATA, JOB_WINDOW_HEADER,
            JOB_WINDOW_HEADER_MAX, JOB_WINDOW_MAGIC, JOB_WINDOW_MAX,
        };
        use vm_memory::{Bytes as _, GuestAddress};
        let mem = memory::create(64 << 20).unwrap();
        let at = |off: u64| GuestAddress(layout::JOB_WINDOW + off);
        // A fresh guest, and one whose init did not answer the magic.
        assert!(!job_window_acknowledged(&mem));
        mem.write_slice(JOB_WINDOW_MAGIC, at(0)).unwrap();
        assert!(!job_window_acknowledged(&mem));
        // An ack without kestrel's magic in front is not one either.
        let other = memory::create(64 << 20).unwrap();
        other
            .write_slice(JOB_WINDOW_ACK, at(JOB_WINDOW_ACK_AT))
            .unwrap();
        assert!(!job_window_acknowledged(&other));

        mem.write_slice(JOB_WINDOW_ACK, at(JOB_WINDOW_ACK_AT))
            .unwrap();
        assert!(job_window_acknowledged(&mem));
        let header = "KESTREL-JOB 15 1 00 window\n";
        assert!(write_job_window(&mem, header, b"kestrel-spec 1\n"));
        let mut back = [0u8; 15];
        mem.read_slice(&mut back, at(JOB_WINDOW_DATA)).unwrap();
        assert_eq!(&back, b"kestrel-spec 1\n");
        let mut line = vec![0u8; header.len()];
        mem.read_slice(&mut line, at(JOB_WINDOW_HEADER)).unwrap();
        assert_eq!(line, header.as_bytes());
        // A header line too long for its room writes nothing.
        let long = "K".repeat(JOB_WINDOW_HEADER_MAX + 1);
        assert!(!write_job_window(&mem, &long, b"kestrel-spec 2\n"));
        mem.read_slice(&mut back, at(JOB_WINDOW_DATA)).unwrap();
        assert_eq!(&back, b"kestrel-spec 1\n");
        // The largest spec fits; one byte more goes over COM2 instead.
        let max = vec![b'x'; JOB_WINDOW_MAX as usize];
        assert!(write_job_window(&mem, header, &max));
        let mut last = [0u8; 1];
        mem.read_slice(
            &mut last,
            at(JOB_WINDOW_DATA + u64::from(JOB_WINDOW_MAX) - 1),
        )
        .unwrap();
        assert_eq!(last, [b'x']);
        assert_eq!(
            layout::JOB_WINDOW + JOB_WINDOW_DATA + u64::from(JOB_WINDOW_MAX),
            layout::JOB_WINDOW + layout::JOB_WINDOW_LEN
        );
        assert!(!write_job_window(&mem, header, &vec![b'y'; max.len() + 1]));
        mem.read_slice(&mut last, at(JOB_WINDOW_DATA)).unwrap();
        assert_eq!(last, [b'x'], "a spec too big for the window writes nothing");
    }

    fn config() -> Config {
        Config {
            boot: Boot::Raw { code: vec![0xf4] },
            cpus: 1,
            memory_mib: 64,
            timeout: Duration::from_secs(5),
            console: Console::Discard,
            warm: None,
            terminal: false,
        }
    }

    #[test]
    fn ranges_are_checked_with_clear_messages() {
        let mut c = config();
        c.cpus = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--cpus 0 is out of range: use 1 to 64"
        );
        c.cpus = 65;
        assert!(matches!(c.validate(), Err(ConfigError::Cpus(65))));
        let mut c = config();
        c.memory_mib = 1;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--memory 1 is out of range: use 32 to 65536 (MiB)"
        );
        let mut c = config();
        c.timeout = Duration::ZERO;
        assert!(matches!(c.validate(), Err(ConfigError::Timeout)));
        assert!(config().validate().is_ok());
    }

    #[test]
    fn kernel_and_initrd_must_be_usable() {
        let mut c = config();
        c.boot = Boot::Kernel {
            kernel: "/etc/passwd".into(),
            kind: None,
            fallback: None,
            initrd: None,
            append: String::new(),
            shares: Vec::new(),
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.starts_with("/etc/passwd is neither a bzImage"), "{msg}");
        c.boot = Boot::Kernel {
            kernel: "/no/such/kernel".into(),
            kind: None,
            fallback: None,
            initrd: None,
            append: String::new(),
            shares: Vec::new(),
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("cannot read kernel /no/such/kernel"), "{msg}");
    }

    #[test]
    fn a_damaged_unpacked_kernel_is_fine_when_its_bzimage_is() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("vmlinux-x.elf");
        std::fs::write(&junk, b"JUNK and more").unwrap();
        let mut bz = vec![0u8; 0x400];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzimage = dir.path().join("bzImage");
        std::fs::write(&bzimage, &bz).unwrap();
        let mut c = config();
        c.boot = Boot::Kernel {
            kernel: junk.clone(),
            kind: Some(boot::KernelKind::Elf),
            fallback: Some(bzimage),
            initrd: None,
            append: String::new(),
            shares: Vec::new(),
        };
        assert!(c.validate().is_ok());
        if let Boot::Kernel { fallback, .. } = &mut c.boot {
            *fallback = None;
        }
        assert!(c.validate().is_err(), "no bzImage to fall back on");
    }

    #[test]
    fn only_the_boot_cpu_gets_kernel_entry_registers() {
        let linux = Entry::Linux64 {
            rip: 1,
            zero_page: 2,
        };
        assert_eq!(entry_for(0, linux), Some(linux));
        assert_eq!(entry_for(1, linux), None);
        let raw = Entry::RealMode { rip: 3 };
        assert_eq!(entry_for(3, raw), Some(raw));
    }
}

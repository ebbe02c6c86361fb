//! vCPUs: their initial state (CPUID, MSRs, LAPIC, FPU, registers for the
//! boot entry) and one named thread each (`kestrel_vcpu N`).
//!
//! Each thread is an explicit state machine driven by a command channel:
//! `Paused` (created, configured) → `Running` on [`Command::Run`] →
//! `Exited` when the guest ends the VM, KVM fails, or the stop flag is
//! raised. Stopping is: raise the flag, then kick the thread with
//! [`KICK_SIGNAL`] until it reports, since a signal that lands just before
//! `KVM_RUN` is entered would otherwise be lost.
//! Invariants: every thread sends exactly one `VcpuStopped` and then
//! exits; a panic inside a thread (a device bug) becomes
//! `VcpuEnd::Failed`, never a VMM crash; only the boot vCPU gets entry
//! registers when an in-kernel irqchip exists (APs wait for INIT/SIPI).
//!
//! A debugger ([`crate::gdb`]) drives the same threads through a
//! [`VcpuControl`]: a halt flag + kicks (the thread answers with a
//! [`DebugStop`] and waits), [`DebugRequest`]s answered while paused, and
//! `KVM_EXIT_DEBUG` exits, which stop the thread and are reported the same
//! way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId, KVM_GUESTDBG_BLOCKIRQ,
    KVM_INTERNAL_ERROR_EMULATION,
};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::{gdt, Entry};
use crate::bus::Bus;
use crate::event::{FaultReport, VcpuEnd, VmEvent};
use crate::kvm::{DebugExit, Exit, KvmError, VcpuHandle, VcpuState};
use crate::layout;
use crate::log;
use crate::xsave;

/// The port and memory buses every vCPU dispatches to, and guest RAM (read
/// by a vCPU thread to report what it holds at `rip` when KVM gives up).
#[derive(Debug)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// MMIO.
    pub mmio: Bus,
    /// Guest RAM.
    pub memory: crate::memory::GuestMemory,
}

/// Commands to a vCPU thread.
#[derive(Debug)]
pub enum Command {
    /// Start (or resume) running the guest.
    Run,
    /// Exit without running (or stop, together with the stop flag and a kick).
    Stop,
    /// While paused: read the vCPU's state (these MSRs; XCRs when `true`)
    /// and reply [`Reply::Saved`].
    Save(Arc<Vec<u32>>, bool),
    /// While paused: a debugger's request, answered on the sender.
    Debug(DebugRequest, Sender<DebugReply>),
}

/// The registers a debugger sees and changes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RegisterSet {
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER.
    pub sregs: kvm_sregs,
    /// x87 and SSE.
    pub fpu: kvm_fpu,
}

/// What a debugger asks of a paused vCPU thread.
#[derive(Debug)]
pub enum DebugRequest {
    /// From now on, report debug exits and halts on this channel.
    Attach(Sender<DebugStop>),
    /// Read the registers: [`DebugReply::Registers`].
    ReadRegisters,
    /// Write the general-purpose, x87 and SSE registers (segments and
    /// control registers are left as they are).
    WriteRegisters(Box<RegisterSet>),
    /// Translate a linear address: [`DebugReply::Translated`].
    Translate(u64),
    /// `KVM_SET_GUEST_DEBUG` with these `KVM_GUESTDBG_*` flags and DR0-DR7.
    /// `KVM_GUESTDBG_BLOCKIRQ` is dropped where KVM does not know it.
    SetGuestDebug {
        /// Flags.
        control: u32,
        /// DR0-DR7.
        debugreg: [u64; 8],
    },
}

/// A vCPU thread's answer to a [`DebugRequest`].
#[derive(Debug)]
pub enum DebugReply {
    /// Done.
    Done,
    /// The registers.
    Registers(Box<RegisterSet>),
    /// The guest-physical address (None: not mapped).
    Translated(Option<u64>),
    /// KVM refused; the text says what.
    Failed(String),
}

/// A vCPU thread stopped for the debugger and waits for commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugStop {
    /// vCPU index.
    pub id: u8,
    /// Why.
    pub why: StopWhy,
}

/// Why a vCPU stopped for the debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhy {
    /// The halt flag ([`VcpuControl::halt`]).
    Halted,
    /// A breakpoint or a single step.
    Debug(DebugExit),
}

/// What a vCPU thread answers to a pause request and to [`Command::Save`].
pub enum Reply {
    /// Out of `KVM_RUN` with no operation pending; waiting for a command.
    Paused,
    /// The state, or why KVM would not give it.
    Saved(Result<Box<VcpuState>, KvmError>),
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}
/// See [`kick_signal`].
pub const KICK_SIGNAL: &str = "SIGRTMIN";

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process: its only effect is
/// to make `KVM_RUN` return `EINTR`.
fn install_kick_handler() -> Result<(), KvmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result =
            register_signal_handler(kick_signal(), on_kick).map_err(|source| KvmError::Ioctl {
                what: "install the vCPU kick signal handler",
                source,
            });
    });
    result
}

// ---- Initial state ----

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// Leaf 0xb/0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `cpus` cores.
fn core_id_bits(cpus: u8) -> u32 {
    u32::from(cpus).next_power_of_two().trailing_zeros()
}

/// KVM's supported CPUID adapted for vCPU `id` of `cpus`: one package of
/// `cpus` single-thread cores, APIC id = `id`, the hypervisor bit and the
/// KVM signature set, no PMU.
pub fn cpuid_for(supported: &CpuId, id: u8, cpus: u8) -> CpuId {
    let intel = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e));
    let apic = u32::from(id);
    let n = u32::from(cpus);
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        adapt_leaf(e, apic, n, core_id_bits(cpus), intel);
    }
    cpuid
}

fn adapt_leaf(e: &mut kvm_cpuid_entry2, apic: u32, n: u32, shift: u32, intel: bool) {
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (n << 16);
            e.ecx |= ECX_HYPERVISOR;
            if n > 1 {
                e.edx |= EDX_HTT;
            }
        }
        LEAF_CACHE if intel => {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
        }
        LEAF_PMU => {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = apic;
            (e.eax, e.ebx, e.ecx) = match e.index {
                0 => (0, 1, (LEVEL_SMT << 8) | e.index),
                1 => (shift, n, (LEVEL_CORE << 8) | e.index),
                _ => (0, 0, e.index),
            };
        }
        LEAF_HYPERVISOR => {
            e.eax = e.eax.max(LEAF_KVM_FEATURES);
            let word = |i: usize| u32::from_le_bytes(KVM_SIGNATURE[i..i + 4].try_into().unwrap());
            (e.ebx, e.ecx, e.edx) = (word(0), word(4), word(8));
        }
        LEAF_AMD_SIZES => {
            e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (n - 1);
        }
        LEAF_AMD_TOPOLOGY => {
            (e.eax, e.ebx, e.ecx) = (apic, apic & 0xff, 0);
        }
        _ => {}
    }
}

/// Sets LINT0 to ExtINT (the PIC) and LINT1 to NMI, as firmware would.
fn set_lint(vcpu: &VcpuHandle) -> Result<(), KvmError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_NMI: u32 = 4;
    const MODE_EXTINT: u32 = 7;
    let mut lapic = vcpu.lapic()?;
    for (offset, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic)
}

/// Everything a vCPU needs before it first runs.
#[derive(Debug, Clone)]
pub struct VcpuSetup<'a> {
    /// vCPU index = APIC id.
    pub id: u8,
    /// Number of vCPUs.
    pub cpus: u8,
    /// KVM's supported CPUID.
    pub supported_cpuid: &'a CpuId,
    /// Entry registers (None: an AP waiting for INIT/SIPI).
    pub entry: Option<Entry>,
    /// Whether the VM has an in-kernel LAPIC.
    pub irqchip: bool,
    /// Whether KVM accepts `KVM_SET_XCRS` ([`crate::kvm::Kvm::has_xcrs`]).
    pub xcrs: bool,
}

/// Programs the initial vCPU state.
pub fn configure(vcpu: &VcpuHandle, setup: &VcpuSetup<'_>) -> Result<(), KvmError> {
    let mut cpuid = cpuid_for(setup.supported_cpuid, setup.id, setup.cpus);
    let xsave = xsave::sanitize(&mut cpuid);
    vcpu.set_cpuid(&cpuid)?;
    if let Some(x) = xsave {
        if setup.id == 0 && (x.dropped != 0 || x.dropped_xsaves) {
            log::debug(format_args!(
                "CPUID leaf 0xD: dropped XSAVE components {:#x}{}",
                x.dropped,
                if x.dropped_xsaves { " and XSAVES" } else { "" }
            ));
        }
        // KVM's run-time XSAVE sizes follow its XCR0; set it to what the
        // guest will enable, in case its XSETBV never exits (nested rig).
        if setup.xcrs {
            vcpu.set_xcr0(x.xcr0)?;
        }
    }
    vcpu.set_msrs(&boot_msrs())?;
    vcpu.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })?;
    if setup.irqchip {
        set_lint(vcpu)?;
    }
    if let Some(entry) = setup.entry {
        set_entry_registers(vcpu, entry)?;
    }
    Ok(())
}

/// Sets up a new vCPU from a snapshot's `state`: the same CPUID as
/// [`configure`] gives, then the saved registers, LAPIC, MSRs and events.
pub fn restore(
    vcpu: &VcpuHandle,
    setup: &VcpuSetup<'_>,
    state: &VcpuState,
) -> Result<(), KvmError> {
    let mut cpuid = cpuid_for(setup.supported_cpuid, setup.id, setup.cpus);
    let _ = xsave::sanitize(&mut cpuid);
    vcpu.set_cpuid(&cpuid)?;
    vcpu.restore_state(state)
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

fn set_entry_registers(vcpu: &VcpuHandle, entry: Entry) -> Result<(), KvmError> {
    let mut sregs = vcpu.sregs()?;
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    let protected = |sregs: &mut kvm_bindings::kvm_sregs, code: u16| {
        sregs.gdt.base = layout::BOOT_GDT;
        sregs.gdt.limit = (gdt::TABLE.len() * 8 - 1) as u16;
        sregs.idt.base = layout::BOOT_IDT;
        sregs.idt.limit = 7;
        sregs.cs = gdt::segment(code);
        let data = gdt::segment(gdt::DATA);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.tr = gdt::segment(gdt::TSS);
    };
    match entry {
        Entry::Linux64 { rip, zero_page } => {
            protected(&mut sregs, gdt::CODE64);
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = layout::PML4;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = zero_page;
            regs.rsp = layout::BOOT_STACK;
            regs.rbp = layout::BOOT_STACK;
        }
        Entry::Pvh { rip, start_info } => {
            protected(&mut sregs, gdt::CODE32);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = start_info;
        }
        Entry::RealMode { rip } => {
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            // "Big real mode": flat 4 GiB data segments, so hand-written
            // guests can reach the MMIO hole with 32-bit addresses.
            for seg in [&mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs] {
                (seg.base, seg.selector, seg.limit, seg.g) = (0, 0, 0xffff_ffff, 1);
            }
            regs.rip = rip;
        }
    }
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)
}

// ---- The thread ----

/// The thread's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Paused,
    Running,
    Exited,
}

/// The VM's handle on one vCPU thread.
pub struct VcpuThread {
    /// vCPU index.
    pub id: u8,
    commands: Sender<Command>,
    replies: Receiver<Reply>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    halt: Arc<AtomicBool>,
    kick: Arc<Kick>,
    join: Option<JoinHandle<()>>,
}

/// Signals one vCPU thread while it lives. The thread records itself on
/// start and clears the slot, under its lock, before it exits, so a
/// `pthread_t` found in the slot always names the live thread.
#[derive(Default)]
struct Kick(Mutex<Option<libc::pthread_t>>);

impl Kick {
    fn register(&self) {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let me = unsafe { libc::pthread_self() };
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(me);
    }

    fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn kick(&self) {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = *slot {
            // SAFETY: the slot holds the thread's own id from `register`
            // and is cleared (under this lock, which we hold) before the
            // thread exits, so `thread` is a live thread; the signal has
            // an installed, empty handler.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    fn alive(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

/// A debugger's handle on one vCPU thread (cloneable, usable from another
/// thread). Commands other than [`VcpuControl::run`] are for a paused
/// thread.
#[derive(Clone)]
pub struct VcpuControl {
    /// vCPU index.
    pub id: u8,
    commands: Sender<Command>,
    halt: Arc<AtomicBool>,
    kick: Arc<Kick>,
}

impl VcpuControl {
    /// Sends `request` to the paused thread; its answer within `limit`.
    pub fn request(&self, request: DebugRequest, limit: Duration) -> Option<DebugReply> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands.send(Command::Debug(request, tx)).ok()?;
        rx.recv_timeout(limit).ok()
    }

    /// Asks a running thread to stop and report [`StopWhy::Halted`]
    /// (unless it stops for a debug exit first). Call again until it
    /// reported: a kick can land just before `KVM_RUN`.
    pub fn halt(&self) {
        self.halt.store(true, Ordering::SeqCst);
        self.kick.kick();
    }

    /// Lets a paused thread run the guest.
    pub fn run(&self) {
        self.halt.store(false, Ordering::SeqCst);
        let _ = self.commands.send(Command::Run);
    }

    /// Whether the thread still exists (false once the VM ended).
    pub fn alive(&self) -> bool {
        self.kick.alive()
    }
}

impl VcpuThread {
    /// Starts the thread in `Paused`; it reports on `events`.
    pub fn spawn(
        id: u8,
        vcpu: VcpuHandle,
        buses: Arc<Buses>,
        events: Sender<VmEvent>,
    ) -> Result<VcpuThread, KvmError> {
        install_kick_handler()?;
        let (commands, inbox) = std::sync::mpsc::channel();
        let (reply, replies) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let halt = Arc::new(AtomicBool::new(false));
        let kick = Arc::new(Kick::default());
        let flags = Flags {
            stop: stop.clone(),
            pause: pause.clone(),
            halt: halt.clone(),
        };
        let thread_kick = kick.clone();
        let join = std::thread::Builder::new()
            .name(format!("kestrel_vcpu {id}"))
            .spawn(move || {
                thread_kick.register();
                let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_thread(vcpu, id, &buses, &inbox, &reply, &flags)
                }))
                .unwrap_or_else(|_| VcpuEnd::Failed(format!("vCPU {id} thread panicked")));
                thread_kick.clear();
                let _ = events.send(VmEvent::VcpuStopped { id, end });
            })
            .map_err(|e| KvmError::Ioctl {
                what: "spawn a vCPU thread",
                source: vmm_sys_util::errno::Error::new(e.raw_os_error().unwrap_or(libc::EAGAIN)),
            })?;
        Ok(VcpuThread {
            id,
            commands,
            replies,
            stop,
            pause,
            halt,
            kick,
            join: Some(join),
        })
    }

    /// A debugger's handle on this thread.
    pub fn control(&self) -> VcpuControl {
        VcpuControl {
            id: self.id,
            commands: self.commands.clone(),
            halt: self.halt.clone(),
            kick: self.kick.clone(),
        }
    }

    /// Lets the guest run.
    pub fn start(&self) {
        let _ = self.commands.send(Command::Run);
    }

    /// Raises the stop flag and kicks the thread out of `KVM_RUN`. Safe to
    /// call repeatedly; call until [`Self::finished`].
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.commands.send(Command::Stop);
        if let Some(join) = &self.join {
            if !join.is_finished() {
                let _ = join.kill(kick_signal());
            }
        }
    }

    /// Asks a running thread to leave `KVM_RUN` and wait (it replies
    /// [`Reply::Paused`]); kicks it. Call again (it kicks again) until it
    /// replied: a kick can land just before `KVM_RUN`.
    pub fn request_pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        if let Some(join) = &self.join {
            if !join.is_finished() {
                let _ = join.kill(kick_signal());
            }
        }
    }

    /// Resumes a paused thread.
    pub fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
        let _ = self.commands.send(Command::Run);
    }

    /// Asks a paused thread for its vCPU's state.
    pub fn request_save(&self, msrs: Arc<Vec<u32>>, xcrs: bool) {
        let _ = self.commands.send(Command::Save(msrs, xcrs));
    }

    /// The thread's next reply, if it arrives within `limit`.
    pub fn reply(&self, limit: std::time::Duration) -> Option<Reply> {
        self.replies.recv_timeout(limit).ok()
    }

    /// Waits up to `limit` for the thread to exit: its end of the reply
    /// channel is dropped as it does, which wakes this wait at once.
    /// Replies still queued are dropped; [`Self::finished`] says whether
    /// it exited.
    pub fn wait_finished(&self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        // A reply is dropped and the wait goes on; disconnected (the
        // thread exited) or timed out (the caller kicks again) ends it.
        while self
            .replies
            .recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
        {}
    }

    /// Whether the thread has exited.
    pub fn finished(&self) -> bool {
        self.join.as_ref().is_none_or(|j| j.is_finished())
    }

    /// Joins an exited thread.
    pub fn join(&mut self) {
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// A thread's stop, pause and (debugger) halt flags.
struct Flags {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    halt: Arc<AtomicBool>,
}

fn run_thread(
    mut vcpu: VcpuHandle,
    id: u8,
    buses: &Buses,
    inbox: &Receiver<Command>,
    reply: &Sender<Reply>,
    flags: &Flags,
) -> VcpuEnd {
    let mut state = State::Paused;
    let mut exits = ExitRing::default();
    let mut debugger: Option<Sender<DebugStop>> = None;
    loop {
        state = match state {
            State::Paused => match inbox.recv() {
                Ok(Command::Run) => State::Running,
                Ok(Command::Save(msrs, xcrs)) => {
                    let saved = vcpu.save_state(&msrs, xcrs).map(Box::new);
                    let _ = reply.send(Reply::Saved(saved));
                    State::Paused
                }
                Ok(Command::Debug(DebugRequest::Attach(to), answer)) => {
                    debugger = Some(to);
                    let _ = answer.send(DebugReply::Done);
                    State::Paused
                }
                Ok(Command::Debug(request, answer)) => {
                    let _ = answer.send(debug_request(&vcpu, request));
                    State::Paused
                }
                Ok(Command::Stop) | Err(_) => return VcpuEnd::Stopped,
            },
            State::Running if flags.stop.load(Ordering::SeqCst) => State::Exited,
            State::Running if flags.pause.load(Ordering::SeqCst) => {
                // An I/O or MMIO read just handled completes only inside
                // KVM_RUN: enter once with immediate_exit, which finishes
                // it without running another guest instruction.
                vcpu.set_immediate_exit(true);
                let _ = vcpu.run();
                vcpu.set_immediate_exit(false);
                let _ = reply.send(Reply::Paused);
                State::Paused
            }
            State::Running if flags.halt.load(Ordering::SeqCst) => {
                // As for a pause: complete a pending read first.
                vcpu.set_immediate_exit(true);
                let _ = vcpu.run();
                vcpu.set_immediate_exit(false);
                match &debugger {
                    Some(to) => {
                        let _ = to.send(DebugStop {
                            id,
                            why: StopWhy::Halted,
                        });
                        State::Paused
                    }
                    // Nobody to report to: ignore the request.
                    None => {
                        flags.halt.store(false, Ordering::SeqCst);
                        State::Running
                    }
                }
            }
            State::Running => match step(&mut vcpu, buses, &mut exits) {
                None => State::Running,
                Some(StepEnd::Debug(exit)) => match &debugger {
                    Some(to) => {
                        let _ = to.send(DebugStop {
                            id,
                            why: StopWhy::Debug(exit),
                        });
                        State::Paused
                    }
                    None => State::Running,
                },
                Some(Fault) => {
                    return VcpuEnd::TripleFault(Box::new(fault_report(&vcpu, id, &exits)))
                }
                Some(StepEnd::Internal) => {
                    let error = vcpu.internal_error();
                    let mut text = error.to_string();
                    if error.suberror == KVM_INTERNAL_ERROR_EMULATION && error.insn.is_empty() {
                        // KVM could not even fetch the instruction: say
                        // what the guest's own page tables and RAM hold.
                        text = format!("{text}; {}", rip_in_guest_ram(&vcpu, &buses.memory));
                    }
                    let report = fault_report(&vcpu, id, &exits);
                    return VcpuEnd::InternalError(Box::new((text, report)));
                }
                Some(Ended(end)) => return end,
            },
            State::Exited => return VcpuEnd::Stopped,
        };
    }
}

/// How an internal-error verdict begins to say that the guest's page
/// tables in RAM do not map the code its vCPU was running.
pub const UNMAPPED_RIP: &str = "the guest's page tables in RAM do not map rip";

/// What the guest's RAM holds at the vCPU's `rip`, by kestrel's own walk
/// of the guest's page tables (not KVM's): for an emulation failure where
/// KVM could not fetch the instruction. It tells a KVM that could not read
/// guest memory (the bytes are there) from guest RAM that does not map
/// the code the vCPU was running (the rig's failures: runner/NOTES.md),
/// and for a missing entry, whether its table maps anything else.
fn rip_in_guest_ram(vcpu: &VcpuHandle, memory: &crate::memory::GuestMemory) -> String {
    const CR0_PG: u64 = 1 << 31;
    const SHOWN: usize = 8;
    let (Ok(regs), Ok(sregs)) = (vcpu.regs(), vcpu.sregs()) else {
        return "the vCPU's registers cannot be read".into();
    };
    let linear = if sregs.cs.l != 0 {
        regs.rip
    } else {
        sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
    };
    let paging = crate::pagewalk::Paging {
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
    };
    let found = if sregs.cr0 & CR0_PG == 0 {
        let mut bytes = [0u8; SHOWN];
        vm_memory::Bytes::read_slice(memory, &mut bytes, vm_memory::GuestAddress(linear))
            .map(|()| (linear, bytes.to_vec()))
            .map_err(|_| crate::pagewalk::WalkError::OutsideRam(linear))
    } else {
        crate::pagewalk::translate(memory, &paging, linear).and_then(|gpa| {
            crate::pagewalk::read(memory, &paging, linear, SHOWN).map(|bytes| (gpa, bytes))
        })
    };
    match found {
        Ok((gpa, bytes)) => {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "guest RAM at rip {linear:#x} (gpa {gpa:#x}): {}",
                hex.join(" ")
            )
        }
        Err(e @ crate::pagewalk::WalkError::NotPresent { table, index, .. }) => format!(
            "{UNMAPPED_RIP} {linear:#x}: {e} ({})",
            crate::pagewalk::table_summary(memory, table, index)
        ),
        // Not the rig's missing entry: a mode or a table this walk cannot
        // follow, which must not read as one.
        Err(e) => format!("kestrel cannot walk the guest's page tables to rip {linear:#x}: {e}"),
    }
}

/// Answers a debugger's request (the thread is paused).
fn debug_request(vcpu: &VcpuHandle, request: DebugRequest) -> DebugReply {
    let failed = |e: KvmError| DebugReply::Failed(e.to_string());
    match request {
        DebugRequest::Attach(_) => DebugReply::Done,
        DebugRequest::ReadRegisters => {
            let read = || -> Result<RegisterSet, KvmError> {
                Ok(RegisterSet {
                    regs: vcpu.regs()?,
                    sregs: vcpu.sregs()?,
                    fpu: vcpu.fpu()?,
                })
            };
            read().map_or_else(failed, |r| DebugReply::Registers(Box::new(r)))
        }
        DebugRequest::WriteRegisters(set) => vcpu
            .set_regs(&set.regs)
            .and_then(|()| vcpu.set_fpu(&set.fpu))
            .map_or_else(failed, |()| DebugReply::Done),
        DebugRequest::Translate(gva) => vcpu
            .translate(gva)
            .map_or_else(failed, DebugReply::Translated),
        DebugRequest::SetGuestDebug { control, debugreg } => {
            let mut result = vcpu.set_guest_debug(control, debugreg);
            // KVM before 5.16 does not know BLOCKIRQ (EINVAL).
            if result.is_err() && control & KVM_GUESTDBG_BLOCKIRQ != 0 {
                result = vcpu.set_guest_debug(control & !KVM_GUESTDBG_BLOCKIRQ, debugreg);
            }
            result.map_or_else(failed, |()| DebugReply::Done)
        }
    }
}

/// How many exits a vCPU remembers for a fault report.
const EXITS_KEPT: usize = 16;

/// The last [`EXITS_KEPT`] exits of a vCPU: (kind, port or address), kept
/// without formatting (exits are the hot path).
#[derive(Default)]
struct ExitRing {
    exits: [(ExitKind, u64); EXITS_KEPT],
    next: usize,
    count: usize,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum ExitKind {
    #[default]
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
}

impl ExitRing {
    fn push(&mut self, kind: ExitKind, at: u64) {
        self.exits[self.next] = (kind, at);
        self.next = (self.next + 1) % EXITS_KEPT;
        self.count = (self.count + 1).min(EXITS_KEPT);
    }

    /// Oldest first, e.g. `io-out 0x3f8`.
    fn describe(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| {
                let (kind, at) = self.exits[(self.next + EXITS_KEPT - self.count + i) % EXITS_KEPT];
                let kind = match kind {
                    ExitKind::IoIn => "io-in",
                    ExitKind::IoOut => "io-out",
                    ExitKind::MmioRead => "mmio-read",
                    ExitKind::MmioWrite => "mmio-write",
                };
                format!("{kind} {at:#x}")
            })
            .collect()
    }
}

/// What one step decided.
enum StepEnd {
    /// The guest triple-faulted: report the registers.
    Fault,
    /// The thread ends this way.
    Ended(VcpuEnd),
    /// A guest-debug exit: stop for the debugger.
    Debug(DebugExit),
    /// KVM gave up on the vCPU (`KVM_EXIT_INTERNAL_ERROR`): report it with
    /// the registers.
    Internal,
}
use StepEnd::{Ended, Fault};

/// Registers and recent exits of a vCPU that triple-faulted (what KVM still
/// answers; a register it refuses reads as 0).
fn fault_report(vcpu: &VcpuHandle, id: u8, exits: &ExitRing) -> FaultReport {
    /// x86's reset vector: where a vCPU in its reset state points.
    const RESET_RIP: u64 = 0xfff0;
    const RESET_CS: u16 = 0xf000;
    let regs = vcpu.regs().unwrap_or_default();
    let sregs = vcpu.sregs().unwrap_or_default();
    FaultReport {
        registers_reset: regs.rip == RESET_RIP && sregs.cs.selector == RESET_CS,
        vcpu: id,
        rip: regs.rip,
        rsp: regs.rsp,
        rflags: regs.rflags,
        cr: [sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4],
        efer: sregs.efer,
        cs: sregs.cs.selector,
        last_exits: exits.describe(),
        symbol: None,
    }
}

/// One `KVM_RUN` and its exit. `Some` ends the thread.
fn step(vcpu: &mut VcpuHandle, buses: &Buses, exits: &mut ExitRing) -> Option<StepEnd> {
    match vcpu.run() {
        Exit::IoIn(port, data) => {
            exits.push(ExitKind::IoIn, u64::from(port));
            buses.pio.read(u64::from(port), data);
            None
        }
        Exit::IoOut(port, data) => {
            exits.push(ExitKind::IoOut, u64::from(port));
            buses.pio.write(u64::from(port), data);
            None
        }
        Exit::MmioRead(addr, data) => {
            exits.push(ExitKind::MmioRead, addr);
            buses.mmio.read(addr, data);
            None
        }
        Exit::MmioWrite(addr, data) => {
            exits.push(ExitKind::MmioWrite, addr);
            buses.mmio.write(addr, data);
            None
        }
        Exit::Interrupted => None,
        Exit::Debug(exit) => Some(StepEnd::Debug(exit)),
        Exit::Hlt => Some(Ended(VcpuEnd::Halted)),
        Exit::Shutdown => Some(Fault),
        Exit::Reset | Exit::PowerOff => Some(Ended(VcpuEnd::GuestReset)),
        Exit::Crash => Some(Ended(VcpuEnd::GuestCrash)),
        Exit::InternalError => Some(StepEnd::Internal),
        Exit::Failed(why) => {
            log::debug(format_args!("vCPU failed: {why}"));
            Some(Ended(VcpuEnd::Failed(why)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn supported() -> CpuId {
        let mut vendor = leaf(0, 0);
        (vendor.ebx, vendor.edx, vendor.ecx) = (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
        CpuId::from_entries(&[
            vendor,
            leaf(1, 0),
            leaf(4, 0),
            kvm_cpuid_entry2 {
                eax: 0x63, // level 3 unified cache
                ..leaf(4, 3)
            },
            leaf(0xa, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x4000_0000, 0),
            leaf(0x8000_0008, 0),
        ])
        .unwrap()
    }

    fn get(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn the_exit_ring_keeps_the_last_exits_oldest_first() {
        let mut ring = ExitRing::default();
        assert!(ring.describe().is_empty());
        ring.push(ExitKind::IoOut, 0x3f8);
        ring.push(ExitKind::MmioRead, 0xd000_0000);
        assert_eq!(ring.describe(), ["io-out 0x3f8", "mmio-read 0xd0000000"]);
        for port in 0..40u64 {
            ring.push(ExitKind::IoIn, port);
        }
        let seen = ring.describe();
        assert_eq!(seen.len(), EXITS_KEPT);
        assert_eq!(seen[0], format!("io-in {:#x}", 40 - EXITS_KEPT));
        assert_eq!(seen[EXITS_KEPT - 1], "io-in 0x27");
    }

    #[test]
    fn cpuid_reports_apic_id_topology_and_hypervisor() {
        let base = supported();
        for (id, cpus) in [(0u8, 1u8), (1, 2), (5, 6)] {
            let c = cpuid_for(&base, id, cpus);
            let l1 = get(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(id));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(cpus));
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & EDX_HTT != 0, cpus > 1);
            let smt = get(&c, 0xb, 0);
            let core = get(&c, 0xb, 1);
            assert_eq!(
                (smt.ebx, (smt.ecx >> 8) & 0xff, smt.edx),
                (1, 1, u32::from(id))
            );
            assert_eq!((core.ebx, (core.ecx >> 8) & 0xff), (u32::from(cpus), 2));
            assert!(1u32 << core.eax >= u32::from(cpus));
            assert_eq!(get(&c, 0xb, 2).ecx, 2, "invalid level terminates the list");
            assert_eq!(get(&c, 4, 0).eax >> 26, u32::from(cpus) - 1);
            assert_eq!((get(&c, 4, 3).eax >> 14) & 0xfff, u32::from(cpus) - 1);
            assert_eq!(get(&c, 0x8000_0008, 0).ecx & 0xff, u32::from(cpus) - 1);
            assert_eq!(get(&c, 0xa, 0).eax, 0);
            let hv = get(&c, 0x4000_0000, 0);
            let mut sig = Vec::new();
            for r in [hv.ebx, hv.ecx, hv.edx] {
                sig.extend_from_slice(&r.to_le_bytes());
            }
            assert_eq!(&sig, KVM_SIGNATURE);
        }
    }

    #[test]
    fn msrs_enable_mtrrs_write_back() {
        let msrs = boot_msrs();
        let mtrr = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(mtrr.data & 0xff, 6);
        assert_ne!(mtrr.data & (1 << 11), 0);
    }
}

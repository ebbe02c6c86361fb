//! The one module that calls kvm-ioctls.
//!
//! Owns the `/dev/kvm`, VM and vCPU file descriptors and translates KVM's
//! exits into the small [`Exit`] enum the vCPU loop handles. Invariant:
//! every ioctl error leaves here as a [`KvmError`] naming the operation;
//! guest memory is registered with KVM only while the `GuestMemoryMmap` that
//! backs it is alive (the [`VmHandle`] keeps a clone).

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_guest_debug, kvm_guest_debug_arch, kvm_irqchip,
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_config, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave, CpuId,
    Msrs, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm as KvmSys, NoDatamatch, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use std::sync::{Arc, Mutex};

use crate::devices::virtio::page::RegisterPage;
use crate::layout;
use crate::memory::GuestMemory;

/// The KVM API version this VMM is written against (stable since 2.6.22).
pub const KVM_API_VERSION: i32 = 12;
/// Where KVM lives.
pub const KVM_PATH: &str = "/dev/kvm";

/// What went wrong talking to KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No `/dev/kvm`.
    #[error("/dev/kvm does not exist: load the kvm module (kvm_intel or kvm_amd), or run inside the nested rig with `cargo xtask rig -- …`")]
    Missing,
    /// `/dev/kvm` exists but this user may not open it.
    #[error("/dev/kvm exists but this user may not open it: add the user to the `kvm` group (then log in again) or run as root")]
    NotPermitted,
    /// Opening `/dev/kvm` failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] vmm_sys_util::errno::Error),
    /// The kernel speaks another KVM API.
    #[error("/dev/kvm reports API version {0}, kestrel needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// An ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// The operation.
        what: &'static str,
        /// The errno.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(vmm_sys_util::errno::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// An open `/dev/kvm`.
pub struct Kvm {
    sys: KvmSys,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks the API version.
    pub fn open() -> Result<Kvm, KvmError> {
        let sys = KvmSys::new().map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing,
            libc::EACCES | libc::EPERM => KvmError::NotPermitted,
            _ => KvmError::Open(e),
        })?;
        let version = sys.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        Ok(Kvm { sys })
    }

    /// `KVM_GET_API_VERSION`.
    pub fn api_version(&self) -> i32 {
        self.sys.get_api_version()
    }

    /// `KVM_GET_SUPPORTED_CPUID`: the CPUID leaves KVM can present, plus
    /// the TSC-deadline timer bit when `KVM_CAP_TSC_DEADLINE_TIMER` says
    /// KVM emulates it (the API documents that the supported list leaves it
    /// out). Without it Linux calibrates the LAPIC timer against the PIT at
    /// boot and every timer reprogramming costs more exits.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        const LEAF_FEATURES: u32 = 1;
        const ECX_TSC_DEADLINE: u32 = 1 << 24;
        let mut cpuid = self
            .sys
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("GET_SUPPORTED_CPUID"))?;
        if self.sys.check_extension(Cap::TscDeadlineTimer) {
            for e in cpuid.as_mut_slice() {
                if e.function == LEAF_FEATURES {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
            }
        }
        Ok(cpuid)
    }

    /// Whether vCPUs accept `KVM_SET_XCRS` (`KVM_CAP_XCRS`).
    pub fn has_xcrs(&self) -> bool {
        self.sys.check_extension(Cap::Xcrs)
    }

    /// The MSRs KVM saves and restores for a vCPU (`KVM_GET_MSR_INDEX_LIST`).
    pub fn msr_index_list(&self) -> Result<Vec<u32>, KvmError> {
        let list = self
            .sys
            .get_msr_index_list()
            .map_err(ioctl("GET_MSR_INDEX_LIST"))?;
        Ok(list.as_slice().to_vec())
    }

    /// `KVM_CREATE_VM`, then registers every region of `memory`.
    pub fn create_vm(&self, memory: &GuestMemory) -> Result<VmHandle, KvmError> {
        let fd = self.sys.create_vm().map_err(ioctl("CREATE_VM"))?;
        for (slot, region) in memory.iter().enumerate() {
            let host =
                memory
                    .get_host_address(region.start_addr())
                    .map_err(|_| KvmError::Ioctl {
                        what: "SET_USER_MEMORY_REGION (host address)",
                        source: vmm_sys_util::errno::Error::new(libc::EFAULT),
                    })?;
            let spec = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host..host + len` is a live mmap owned by `memory`; the
            // returned handle keeps a clone of `memory` (an Arc of the same
            // regions), so the mapping outlives the VM that uses it.
            unsafe { fd.set_user_memory_region(spec) }.map_err(ioctl("SET_USER_MEMORY_REGION"))?;
        }
        Ok(VmHandle {
            fd: Arc::new(fd),
            _memory: memory.clone(),
            pages: Mutex::new(Vec::new()),
            first_page_slot: memory.num_regions() as u32,
        })
    }
}

/// An edge-triggered interrupt raised by `KVM_IRQ_LINE` (high, then low)
/// from the thread that raises it, as QEMU raises its 8250's interrupt:
/// the interrupt is pending before that thread's next `KVM_RUN`, instead of
/// arriving from KVM's irqfd worker while a vCPU runs.
pub struct IrqPin {
    fd: Arc<VmFd>,
    gsi: u32,
}

impl IrqPin {
    /// One edge on the pin.
    pub fn pulse(&self) -> std::io::Result<()> {
        self.fd
            .set_irq_line(self.gsi, true)
            .and_then(|()| self.fd.set_irq_line(self.gsi, false))
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// A VM file descriptor with its memory registered.
pub struct VmHandle {
    fd: Arc<VmFd>,
    _memory: GuestMemory,
    /// Register pages mapped read-only into the guest (kept alive here),
    /// in memory slots from `first_page_slot` on.
    pages: Mutex<Vec<Arc<RegisterPage>>>,
    first_page_slot: u32,
}

impl VmHandle {
    /// The in-kernel PIC + I/O APIC + LAPICs, and the PIT (with the speaker
    /// port 0x61 handled in the kernel too). Must precede vCPU creation.
    pub fn create_irqchip_and_pit(&self) -> Result<(), KvmError> {
        self.fd
            .set_tss_address(layout::KVM_TSS as usize)
            .map_err(ioctl("SET_TSS_ADDR"))?;
        self.fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP)
            .map_err(ioctl("SET_IDENTITY_MAP_ADDR"))?;
        self.fd.create_irq_chip().map_err(ioctl("CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("CREATE_PIT2"))
    }

    /// Only the TSS and identity-map pages (for VMs without an irqchip).
    /// The in-kernel PIT, clock and interrupt controllers (PIC master,
    /// PIC slave, IOAPIC), for a snapshot. Every vCPU must be paused.
    pub fn save_state(&self) -> Result<VmState, KvmError> {
        let chip = |id| -> Result<kvm_irqchip, KvmError> {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(ioctl("GET_IRQCHIP"))?;
            Ok(chip)
        };
        Ok(VmState {
            pit: self.fd.get_pit2().map_err(ioctl("GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(ioctl("GET_CLOCK"))?,
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// Restores what [`VmHandle::save_state`] saved, after
    /// [`VmHandle::create_irqchip_and_pit`] and before any vCPU runs.
    pub fn restore_state(&self, state: &VmState) -> Result<(), KvmError> {
        self.fd.set_pit2(&state.pit).map_err(ioctl("SET_PIT2"))?;
        let mut clock = state.clock;
        // KVM refuses flags it only reports (TSC_STABLE, REALTIME, HOST_TSC).
        clock.flags = 0;
        self.fd.set_clock(&clock).map_err(ioctl("SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd.set_irqchip(chip).map_err(ioctl("SET_IRQCHIP"))?;
        }
        Ok(())
    }

    pub fn set_tss(&self) -> Result<(), KvmError> {
        self.fd
            .set_tss_address(layout::KVM_TSS as usize)
            .map_err(ioctl("SET_TSS_ADDR"))?;
        self.fd
            .set_identity_map_address(layout::KVM_IDENTITY_MAP)
            .map_err(ioctl("SET_IDENTITY_MAP_ADDR"))
    }

    /// A pin that pulses `gsi` on the in-kernel irqchip with `KVM_IRQ_LINE`,
    /// synchronously in the calling thread.
    pub fn irq_pin(&self, gsi: u32) -> IrqPin {
        IrqPin {
            fd: Arc::clone(&self.fd),
            gsi,
        }
    }

    /// Signalling `evt` raises `gsi` (edge) on the in-kernel irqchip.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("IRQFD"))
    }

    /// Any guest write to the MMIO address `addr` signals `evt` inside KVM
    /// (no exit to the VMM; the written value is not kept).
    pub fn register_mmio_ioeventfd(&self, evt: &EventFd, addr: u64) -> Result<(), KvmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(ioctl("IOEVENTFD"))
    }

    /// Like [`register_mmio_ioeventfd`](Self::register_mmio_ioeventfd),
    /// for 32-bit writes of exactly `value` only (others exit as usual).
    pub fn register_mmio_ioeventfd_for(
        &self,
        evt: &EventFd,
        addr: u64,
        value: u32,
    ) -> Result<(), KvmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), value)
            .map_err(ioctl("IOEVENTFD"))
    }

    /// Maps `page` into the guest at `addr` (page-aligned) read-only: guest
    /// reads are memory reads, guest writes still exit as MMIO writes.
    /// `Ok(false)` where KVM cannot (no `KVM_CAP_READONLY_MEM`); then
    /// reads exit too.
    pub fn map_register_page(&self, addr: u64, page: &Arc<RegisterPage>) -> Result<bool, KvmError> {
        if !self.fd.check_extension(Cap::ReadonlyMem) {
            return Ok(false);
        }
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        let spec = kvm_userspace_memory_region {
            slot: self.first_page_slot + pages.len() as u32,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: addr,
            memory_size: layout::PAGE_SIZE,
            userspace_addr: page.host_address(),
        };
        // SAFETY: the page is one page-aligned, page-long allocation owned
        // by the `Arc`, a clone of which this handle keeps in `pages` for as
        // long as the VM exists (the handle is leaked, never dropped, if a
        // vCPU thread cannot be stopped), so KVM never maps freed memory.
        // KVM only reads it (read-only slot); the VMM writes it with atomics.
        unsafe { self.fd.set_user_memory_region(spec) }
            .map_err(ioctl("SET_USER_MEMORY_REGION (register page)"))?;
        pages.push(page.clone());
        Ok(true)
    }

    /// `KVM_CREATE_VCPU` with this APIC id.
    pub fn create_vcpu(&self, id: u8) -> Result<VcpuHandle, KvmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("CREATE_VCPU"))?;
        Ok(VcpuHandle { fd })
    }
}

/// Why `KVM_RUN` returned, reduced to what the VMM acts on.
/// `kvm_irqchip.chip_id` values.
const KVM_IRQCHIP_PIC_MASTER: u32 = 0;
const KVM_IRQCHIP_PIC_SLAVE: u32 = 1;
const KVM_IRQCHIP_IOAPIC: u32 = 2;

/// The VM-wide state KVM keeps in the kernel (in-kernel irqchip and PIT).
#[derive(Clone)]
pub struct VmState {
    /// The i8254.
    pub pit: kvm_pit_state2,
    /// kvmclock's base.
    pub clock: kvm_clock_data,
    /// The i8259 pair.
    pub pic_master: kvm_irqchip,
    /// See `pic_master`.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
}

/// One vCPU's state as KVM reports it, for a snapshot.
pub struct VcpuState {
    /// Running, halted, waiting for SIPI….
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state (legacy 4 KiB area: kestrel never enables XSAVE2).
    pub xsave: kvm_xsave,
    /// XCR0 (None when KVM has no `KVM_CAP_XCRS`).
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// Every MSR of KVM's index list that this vCPU answered.
    pub msrs: Vec<kvm_msr_entry>,
}

#[derive(Debug)]
pub enum Exit<'a> {
    /// `in` from a port: fill the buffer.
    IoIn(u16, &'a mut [u8]),
    /// `out` to a port.
    IoOut(u16, &'a [u8]),
    /// An MMIO read: fill the buffer.
    MmioRead(u64, &'a mut [u8]),
    /// An MMIO write.
    MmioWrite(u64, &'a [u8]),
    /// `hlt` (only exits without an in-kernel LAPIC).
    Hlt,
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// The guest asked for a reset (`KVM_SYSTEM_EVENT_RESET`, e.g. PSCI/ACPI).
    Reset,
    /// The guest asked to power off (`KVM_SYSTEM_EVENT_SHUTDOWN`).
    PowerOff,
    /// The guest reported a crash (`KVM_SYSTEM_EVENT_CRASH`).
    Crash,
    /// A signal kicked the vCPU out of the guest (`EINTR`), or
    /// `immediate_exit` was set.
    Interrupted,
    /// A guest-debug event (`KVM_EXIT_DEBUG`: breakpoint, single step),
    /// only while a debugger set [`VcpuHandle::set_guest_debug`].
    Debug(DebugExit),
    /// `KVM_EXIT_INTERNAL_ERROR`: KVM could not go on (an instruction its
    /// emulator does not handle, an event it could not deliver);
    /// [`VcpuHandle::internal_error`] says what it reported.
    InternalError,
    /// Anything else: the vCPU cannot continue.
    Failed(String),
}

/// What KVM reported with `KVM_EXIT_INTERNAL_ERROR`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InternalError {
    /// `KVM_INTERNAL_ERROR_*`.
    pub suberror: u32,
    /// The instruction KVM failed to emulate, when it sent its bytes.
    pub insn: Vec<u8>,
    /// The other data words (for an emulation failure on x86: the exit
    /// reason, its two info words, interrupt info and error code, then
    /// vendor data such as the faulting guest-physical address).
    pub data: Vec<u64>,
}

impl InternalError {
    /// Reads it from the `internal` / `emulation_failure` members of
    /// `kvm_run` (`ndata` bounded by the array, so a bad count cannot read
    /// past it).
    fn from_run(suberror: u32, ndata: u32, data: &[u64; 16]) -> InternalError {
        let n = (ndata as usize).min(data.len());
        let words = &data[..n];
        let has_insn = suberror == KVM_INTERNAL_ERROR_EMULATION
            && n >= 3
            && words[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
        if !has_insn {
            return InternalError {
                suberror,
                insn: Vec::new(),
                data: words.to_vec(),
            };
        }
        // data[1..3] hold insn_size (one byte) and 15 instruction bytes.
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&words[1].to_le_bytes());
        bytes[8..].copy_from_slice(&words[2].to_le_bytes());
        let size = usize::from(bytes[0]).min(15);
        InternalError {
            suberror,
            insn: bytes[1..=size].to_vec(),
            data: words[3..].to_vec(),
        }
    }
}

impl std::fmt::Display for InternalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            KVM_INTERNAL_ERROR_SIMUL_EX => "an exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "an event it could not deliver",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "an unexpected exit reason",
            _ => "an unknown suberror",
        };
        write!(f, "KVM internal error {} ({what})", self.suberror)?;
        if !self.insn.is_empty() {
            let hex: Vec<String> = self.insn.iter().map(|b| format!("{b:02x}")).collect();
            write!(f, ", instruction bytes {}", hex.join(" "))?;
        }
        if !self.data.is_empty() {
            let hex: Vec<String> = self.data.iter().map(|w| format!("{w:#x}")).collect();
            write!(f, ", data {}", hex.join(" "))?;
        }
        Ok(())
    }
}

/// What `KVM_EXIT_DEBUG` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExit {
    /// The exception vector: 1 (#DB: single step, hardware breakpoint) or
    /// 3 (#BP: `int3`).
    pub exception: u32,
    /// The linear address of the instruction (for #BP, of the `int3`).
    pub pc: u64,
    /// DR6 at the exit: bits 0-3 name the hardware breakpoint, bit 14 a
    /// single step.
    pub dr6: u64,
}

/// A vCPU file descriptor.
pub struct VcpuHandle {
    fd: VcpuFd,
}

impl VcpuHandle {
    /// `KVM_SET_CPUID2`.
    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<(), KvmError> {
        self.fd.set_cpuid2(cpuid).map_err(ioctl("SET_CPUID2"))
    }

    /// `KVM_SET_XCRS` with XCR0 alone (see [`crate::xsave`]).
    pub fn set_xcr0(&self, xcr0: u64) -> Result<(), KvmError> {
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0] = kvm_xcr {
            xcr: 0,
            value: xcr0,
            ..Default::default()
        };
        self.fd.set_xcrs(&xcrs).map_err(ioctl("SET_XCRS"))
    }

    /// `KVM_SET_MSRS`; all entries must be accepted.
    pub fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<(), KvmError> {
        let msrs = Msrs::from_entries(entries).map_err(|_| KvmError::Ioctl {
            what: "SET_MSRS (too many entries)",
            source: vmm_sys_util::errno::Error::new(libc::E2BIG),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(ioctl("SET_MSRS"))?;
        if set != entries.len() {
            return Err(KvmError::Ioctl {
                what: "SET_MSRS (an MSR was refused)",
                source: vmm_sys_util::errno::Error::new(libc::EINVAL),
            });
        }
        Ok(())
    }

    /// `KVM_GET_LAPIC`.
    pub fn lapic(&self) -> Result<kvm_lapic_state, KvmError> {
        self.fd.get_lapic().map_err(ioctl("GET_LAPIC"))
    }

    /// `KVM_SET_LAPIC`.
    pub fn set_lapic(&self, state: &kvm_lapic_state) -> Result<(), KvmError> {
        self.fd.set_lapic(state).map_err(ioctl("SET_LAPIC"))
    }

    /// `KVM_SET_FPU`.
    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), KvmError> {
        self.fd.set_fpu(fpu).map_err(ioctl("SET_FPU"))
    }

    /// `KVM_GET_SREGS`.
    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        self.fd.get_sregs().map_err(ioctl("GET_SREGS"))
    }

    /// `KVM_SET_SREGS`.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), KvmError> {
        self.fd.set_sregs(sregs).map_err(ioctl("SET_SREGS"))
    }

    /// `KVM_GET_REGS`.
    pub fn regs(&self) -> Result<kvm_regs, KvmError> {
        self.fd.get_regs().map_err(ioctl("GET_REGS"))
    }

    /// `KVM_SET_REGS`.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), KvmError> {
        self.fd.set_regs(regs).map_err(ioctl("SET_REGS"))
    }

    /// `KVM_GET_FPU`.
    pub fn fpu(&self) -> Result<kvm_fpu, KvmError> {
        self.fd.get_fpu().map_err(ioctl("GET_FPU"))
    }

    /// `KVM_SET_GUEST_DEBUG`: `control` is `KVM_GUESTDBG_*` flags,
    /// `debugreg` DR0-DR7 for hardware breakpoints (DR4-DR6 unused).
    pub fn set_guest_debug(&self, control: u32, debugreg: [u64; 8]) -> Result<(), KvmError> {
        let debug = kvm_guest_debug {
            control,
            pad: 0,
            arch: kvm_guest_debug_arch { debugreg },
        };
        self.fd
            .set_guest_debug(&debug)
            .map_err(ioctl("SET_GUEST_DEBUG"))
    }

    /// `KVM_TRANSLATE`: the guest-physical address of the linear address
    /// `gva` through this vCPU's current paging mode, `None` when unmapped.
    pub fn translate(&self, gva: u64) -> Result<Option<u64>, KvmError> {
        let t = self.fd.translate_gva(gva).map_err(ioctl("TRANSLATE"))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }

    /// Sets `kvm_run.immediate_exit`: while set, `KVM_RUN` returns at once
    /// with `EINTR`.
    /// This vCPU's state (it must not be running): the MP state first, since
    /// reading it makes KVM process pending events, then the rest.
    pub fn save_state(&self, msr_list: &[u32], xcrs: bool) -> Result<VcpuState, KvmError> {
        let mp_state = self.fd.get_mp_state().map_err(ioctl("GET_MP_STATE"))?;
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let xsave = self.fd.get_xsave().map_err(ioctl("GET_XSAVE"))?;
        let xcrs = if xcrs {
            Some(self.fd.get_xcrs().map_err(ioctl("GET_XCRS"))?)
        } else {
            None
        };
        let debugregs = self.fd.get_debug_regs().map_err(ioctl("GET_DEBUGREGS"))?;
        let lapic = self.lapic()?;
        let msrs = self.readable_msrs(msr_list)?;
        let events = self
            .fd
            .get_vcpu_events()
            .map_err(ioctl("GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            events,
            msrs,
        })
    }

    /// The MSRs of `list` this vCPU answers, with their values. KVM stops at
    /// the first MSR it refuses (some of its list depend on CPUID): that
    /// one is left out and the rest read on.
    fn readable_msrs(&self, list: &[u32]) -> Result<Vec<kvm_msr_entry>, KvmError> {
        /// `KVM_GET_MSRS` takes at most this many entries at once here.
        const BATCH: usize = 64;
        let mut out = Vec::with_capacity(list.len());
        let mut rest = list;
        while !rest.is_empty() {
            let batch = &rest[..rest.len().min(BATCH)];
            let entries: Vec<kvm_msr_entry> = batch
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|_| KvmError::Ioctl {
                what: "GET_MSRS (too many entries)",
                source: vmm_sys_util::errno::Error::new(libc::E2BIG),
            })?;
            let read = self.fd.get_msrs(&mut msrs).map_err(ioctl("GET_MSRS"))?;
            out.extend_from_slice(&msrs.as_slice()[..read]);
            // Past the batch, or past the refused MSR.
            let skip = if read == batch.len() { read } else { read + 1 };
            rest = &rest[skip.min(rest.len())..];
        }
        Ok(out)
    }

    /// Restores [`VcpuHandle::save_state`]'s state into a new vCPU whose
    /// CPUID is already set, in the order KVM needs (LAPIC before MSRs, so
    /// the TSC deadline lands in a LAPIC in TSC-deadline mode; events last).
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), KvmError> {
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(ioctl("SET_MP_STATE"))?;
        self.set_regs(&state.regs)?;
        self.set_sregs(&state.sregs)?;
        // SAFETY: `kvm_xsave` is the legacy 4 KiB area and kestrel never
        // enables KVM_CAP_XSAVE2, so KVM reads exactly that much from it.
        unsafe { self.fd.set_xsave(&state.xsave) }.map_err(ioctl("SET_XSAVE"))?;
        if let Some(xcrs) = &state.xcrs {
            self.fd.set_xcrs(xcrs).map_err(ioctl("SET_XCRS"))?;
        }
        self.fd
            .set_debug_regs(&state.debugregs)
            .map_err(ioctl("SET_DEBUGREGS"))?;
        self.set_lapic(&state.lapic)?;
        for batch in state.msrs.chunks(64) {
            self.set_msrs(batch)?;
        }
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(ioctl("SET_VCPU_EVENTS"))
    }

    /// The TSC frequency KVM gives this vCPU, if it says.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok()
    }

    /// What KVM reported with the last `KVM_EXIT_INTERNAL_ERROR`.
    pub fn internal_error(&mut self) -> InternalError {
        let run = self.fd.get_kvm_run();
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel has written the
        // `internal` member of the exit union; it is plain integers (every
        // bit pattern valid), read by value from the live kvm_run mapping.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        InternalError::from_run(internal.suberror, internal.ndata, &internal.data)
    }

    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// `KVM_RUN` once.
    pub fn run(&mut self) -> Exit<'_> {
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => Exit::IoIn(port, data),
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => Exit::MmioRead(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => Exit::MmioWrite(addr, data),
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Debug(d)) => Exit::Debug(DebugExit {
                exception: d.exception,
                pc: d.pc,
                dr6: d.dr6,
            }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => Exit::Reset,
                KVM_SYSTEM_EVENT_SHUTDOWN => Exit::PowerOff,
                KVM_SYSTEM_EVENT_CRASH => Exit::Crash,
                other => Exit::Failed(format!("unknown system event {other}")),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Failed(format!(
                "VM entry failed (hardware reason {reason:#x} on cpu {cpu})"
            )),
            Ok(VcpuExit::InternalError) => Exit::InternalError,
            Ok(other) => Exit::Failed(format!("unhandled exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => Exit::Failed(format!("KVM_RUN failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_name_the_instruction_and_bound_the_count() {
        let mut data = [0u64; 16];
        data[0] = 1; // the instruction-bytes flag
        data[1] = u64::from_le_bytes([3, 0x0f, 0x01, 0xd9, 0, 0, 0, 0]);
        data[3] = 0x400; // SVM_EXIT_NPF
        data[4] = 0x6;
        data[5] = 0xfee0_0000;
        let e = InternalError::from_run(KVM_INTERNAL_ERROR_EMULATION, 6, &data);
        assert_eq!(e.insn, [0x0f, 0x01, 0xd9]);
        assert_eq!(e.data, [0x400, 0x6, 0xfee0_0000]);
        assert_eq!(
            e.to_string(),
            "KVM internal error 1 (emulation failure), instruction bytes 0f 01 d9, data 0x400 0x6 0xfee00000"
        );
        // A count past the array reads only the array; a size byte past 15
        // reads only the 15 bytes there are.
        data[1] = u64::from_le_bytes([200, 1, 2, 3, 4, 5, 6, 7]);
        let e = InternalError::from_run(KVM_INTERNAL_ERROR_EMULATION, 1000, &data);
        assert_eq!(e.insn.len(), 15);
        assert_eq!(e.data.len(), 13);
        // No instruction bytes: every word is data.
        let e = InternalError::from_run(KVM_INTERNAL_ERROR_DELIVERY_EV, 2, &[7; 16]);
        assert!(e.insn.is_empty());
        assert_eq!(
            e.to_string(),
            "KVM internal error 3 (an event it could not deliver), data 0x7 0x7"
        );
    }
}

//! Messages to the VM's control loop, and why a VM ended.
//!
//! Invariant: every vCPU thread sends exactly one [`VmEvent::VcpuStopped`]
//! before it exits; devices only send the other variants.

/// Something the VM loop must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// A vCPU thread stopped for this reason.
    VcpuStopped {
        /// vCPU index.
        id: u8,
        /// Why.
        end: VcpuEnd,
    },
    /// A device asked for a machine reset (i8042 0xfe to port 0x64).
    ResetRequested,
    /// The status channel received a complete, well-formed status line.
    StatusReported,
    /// The init said it waits for its job on COM2 (`KESTREL-READY`).
    GuestReady,
    /// The user pressed the terminal escape (Ctrl-A x).
    UserQuit,
}

/// Why one vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The VM loop asked it to stop.
    Stopped,
    /// `hlt` with no interrupt controller to wake it (raw guests only).
    Halted,
    /// Triple fault, with what the vCPU looked like then.
    TripleFault(Box<FaultReport>),
    /// The guest asked for a reset or power-off through KVM.
    GuestReset,
    /// The guest reported a crash through KVM.
    GuestCrash,
    /// KVM gave up on the vCPU (`KVM_EXIT_INTERNAL_ERROR`): what it said,
    /// and the vCPU's registers and last exits.
    InternalError(Box<(String, FaultReport)>),
    /// KVM or the VMM failed; the text says how.
    Failed(String),
}

/// Why the whole VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Reset or power-off requested by the guest (the normal way out).
    Reset,
    /// Triple fault, with what the faulting vCPU looked like then.
    TripleFault(Box<FaultReport>),
    /// Every vCPU halted with nothing to wake it.
    Halted,
    /// The guest reported a crash.
    Crash,
    /// The wall-clock limit passed.
    Timeout,
    /// A status line arrived and the guest did not reset within the grace
    /// period afterwards.
    StatusGraceExpired,
    /// The VMM failed (the text says how).
    VmmFailure(String),
    /// The user ended the VM from the terminal (Ctrl-A x).
    UserQuit,
}

/// What a vCPU looked like when the guest triple-faulted (KVM's shutdown
/// exit): its registers and its last exits to the VMM, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// vCPU index.
    pub vcpu: u8,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// Control registers 0, 2, 3, 4.
    pub cr: [u64; 4],
    /// EFER.
    pub efer: u64,
    /// Code segment selector.
    pub cs: u16,
    /// The last exits, e.g. `io-out 0x3f8`, oldest first.
    pub last_exits: Vec<String>,
    /// `rip` as `symbol+0xoff` when a System.map was found.
    pub symbol: Option<String>,
    /// KVM had already put the vCPU back to its reset state (AMD SVM
    /// reinitialises the VMCB on a shutdown intercept): the registers above
    /// say nothing about the fault, the exits still do.
    pub registers_reset: bool,
}

impl std::fmt::Display for FaultReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.registers_reset {
            write!(
                f,
                "vCPU {} (its registers were already reset by KVM, as AMD SVM does on a shutdown)",
                self.vcpu
            )?;
            if !self.last_exits.is_empty() {
                write!(f, "; last exits: {}", self.last_exits.join(", "))?;
            }
            return Ok(());
        }
        write!(f, "vCPU {} at rip={:#x}", self.vcpu, self.rip)?;
        if let Some(sym) = &self.symbol {
            write!(f, " <{sym}>")?;
        }
        write!(
            f,
            " rsp={:#x} rflags={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.rsp,
            self.rflags,
            self.cs,
            self.cr[0],
            self.cr[1],
            self.cr[2],
            self.cr[3],
            self.efer
        )?;
        if !self.last_exits.is_empty() {
            write!(f, "; last exits: {}", self.last_exits.join(", "))?;
        }
        Ok(())
    }
}

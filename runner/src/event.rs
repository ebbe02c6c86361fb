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
}

/// Why one vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The VM loop asked it to stop.
    Stopped,
    /// `hlt` with no interrupt controller to wake it (raw guests only).
    Halted,
    /// Triple fault.
    TripleFault,
    /// The guest asked for a reset or power-off through KVM.
    GuestReset,
    /// The guest reported a crash through KVM.
    GuestCrash,
    /// KVM or the VMM failed; the text says how.
    Failed(String),
}

/// Why the whole VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Reset or power-off requested by the guest (the normal way out).
    Reset,
    /// Triple fault.
    TripleFault,
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
}

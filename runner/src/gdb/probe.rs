//! Whether this KVM can intercept `int3` for a debugger: a throw-away
//! real-mode guest runs `int3` with `KVM_GUESTDBG_USE_SW_BP` set, and must
//! come back as a `KVM_EXIT_DEBUG` for #BP.
//!
//! Hardware VMX and SVM do. QEMU TCG's emulated SVM (the nested rig's L1)
//! checks only the INTn intercept for `int3`, never the #BP exception
//! intercept KVM sets, so the guest would take our `int3` itself and
//! oops; there gdb's software breakpoints go into debug registers instead.
//! Invariant: any failure or surprise answers "no" (the safe side).

use vm_memory::{Bytes, GuestAddress};

use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_SW_BP};

use crate::kvm::{Exit, Kvm};
use crate::memory::GuestMemory;

/// The probe guest's RAM: its IVT sends #BP to F4F4:F4F4 (linear 0x104634),
/// so it must reach past that.
const PROBE_RAM: usize = 2 << 20;
/// Where the probe's `int3; hlt` sits.
const PROBE_CODE: u64 = 0x1000;
/// `hlt`, which also fills the rest of the RAM and the IVT.
const HLT: u8 = 0xf4;
const BP_VECTOR: u32 = 3;

/// True when `int3` in a guest reaches the VMM as a debug exit.
pub fn int3_intercepted() -> bool {
    probe().unwrap_or(false)
}

fn probe() -> Option<bool> {
    let kvm = Kvm::open().ok()?;
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), PROBE_RAM)]).ok()?;
    mem.write_slice(&vec![HLT; PROBE_RAM], GuestAddress(0))
        .ok()?;
    mem.write_slice(&[super::target::INT3, HLT], GuestAddress(PROBE_CODE))
        .ok()?;
    let vm = kvm.create_vm(&mem).ok()?;
    vm.set_tss().ok()?;
    let mut vcpu = vm.create_vcpu(0).ok()?;
    let mut sregs = vcpu.sregs().ok()?;
    (sregs.cs.base, sregs.cs.selector) = (0, 0);
    vcpu.set_sregs(&sregs).ok()?;
    let mut regs = vcpu.regs().ok()?;
    (regs.rip, regs.rflags) = (PROBE_CODE, 2);
    vcpu.set_regs(&regs).ok()?;
    vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP, [0; 8])
        .ok()?;
    let answer =
        matches!(vcpu.run(), Exit::Debug(e) if e.exception == BP_VECTOR && e.pc == PROBE_CODE);
    Some(answer)
}

//! What gdb changes in the guest besides registers: memory at guest
//! virtual addresses, and the breakpoint tables (software: `int3` patched
//! into guest RAM; hardware: DR0-DR3 given to KVM).
//!
//! Invariants: every guest access goes through [`Phys`], which refuses
//! anything outside guest RAM (MMIO, holes, past the end) instead of
//! touching it; a software breakpoint keeps the byte it replaced and the
//! guest-physical address it patched, so removing it restores exactly
//! that byte there even if the guest's page tables changed since; reads
//! show the original bytes, never our `int3`. Where KVM cannot intercept
//! `int3` ([`super::probe`]), gdb's software breakpoints take debug
//! registers too ([`Kind::Software`] in a slot), never a patch the guest
//! would trip over.

use std::collections::BTreeMap;

use kvm_bindings::{
    KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemory;

/// `int3`.
pub const INT3: u8 = 0xcc;
/// Guest pages (the unit an address is translated in).
const PAGE: u64 = 4096;
/// Hardware breakpoint slots (DR0-DR3).
pub const HW_SLOTS: usize = 4;
/// DR6: the single-step bit.
pub const DR6_SINGLE_STEP: u64 = 1 << 14;

/// Guest-physical memory, bounds-checked.
pub trait Phys {
    /// Fills `buf` from `gpa`; false (nothing promised about `buf`) when any
    /// byte is outside guest RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at `gpa`; false, and nothing written, when any byte is
    /// outside guest RAM.
    fn write(&self, gpa: u64, data: &[u8]) -> bool;
}

impl Phys for GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(end) = gpa.checked_add(buf.len() as u64) else {
            return false;
        };
        // Check first: a partial read is not an answer.
        self.check_range(GuestAddress(gpa), buf.len())
            && end > gpa
            && self.read_slice(buf, GuestAddress(gpa)).is_ok()
    }

    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        gpa.checked_add(data.len() as u64).is_some()
            && !data.is_empty()
            && self.check_range(GuestAddress(gpa), data.len())
            && self.write_slice(data, GuestAddress(gpa)).is_ok()
    }
}

/// Reads `len` bytes at guest virtual `addr`, translating each page with
/// `translate`. Stops at the first byte that cannot be read: the result
/// may be shorter than `len` (empty: nothing readable).
pub fn read_virtual(
    phys: &dyn Phys,
    translate: &mut dyn FnMut(u64) -> Option<u64>,
    addr: u64,
    len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let Some(at) = addr.checked_add(out.len() as u64) else {
            break;
        };
        let chunk = (PAGE - at % PAGE).min((len - out.len()) as u64) as usize;
        let Some(gpa) = translate(at) else { break };
        let mut buf = vec![0; chunk];
        if !phys.read(gpa, &mut buf) {
            break;
        }
        out.extend_from_slice(&buf);
    }
    out
}

/// Writes `data` at guest virtual `addr`; false when a page is unmapped or
/// outside guest RAM (pages before it may have been written, as with a
/// fault part-way through a real write).
pub fn write_virtual(
    phys: &dyn Phys,
    translate: &mut dyn FnMut(u64) -> Option<u64>,
    addr: u64,
    data: &[u8],
) -> bool {
    let mut done = 0;
    while done < data.len() {
        let Some(at) = addr.checked_add(done as u64) else {
            return false;
        };
        let chunk = (PAGE - at % PAGE).min((data.len() - done) as u64) as usize;
        let Some(gpa) = translate(at) else {
            return false;
        };
        if !phys.write(gpa, &data[done..done + chunk]) {
            return false;
        }
        done += chunk;
    }
    true
}

/// A software breakpoint: where `int3` was written and what it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Patch {
    gpa: u64,
    original: u8,
}

/// Why a breakpoint could not be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointError {
    /// The address is not mapped or not in guest RAM.
    Unmapped,
    /// All four debug registers are in use.
    NoSlot,
}

/// What gdb asked for: `Z0` (software) or `Z1` (hardware).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Z0`, in a debug register where `int3` cannot be intercepted.
    Software,
    /// `Z1`.
    Hardware,
}

/// The breakpoints gdb inserted.
#[derive(Debug, Default)]
pub struct Breakpoints {
    software: BTreeMap<u64, Patch>,
    hardware: [Option<(u64, Kind)>; HW_SLOTS],
}

impl Breakpoints {
    /// `Z0`: patches `int3` at virtual `addr` (guest-physical `gpa`).
    /// Inserting one twice is one breakpoint.
    pub fn insert_software(
        &mut self,
        phys: &dyn Phys,
        addr: u64,
        gpa: Option<u64>,
    ) -> Result<(), BreakpointError> {
        if self.software.contains_key(&addr) {
            return Ok(());
        }
        let gpa = gpa.ok_or(BreakpointError::Unmapped)?;
        let mut original = [0];
        if !phys.read(gpa, &mut original) || !phys.write(gpa, &[INT3]) {
            return Err(BreakpointError::Unmapped);
        }
        self.software.insert(
            addr,
            Patch {
                gpa,
                original: original[0],
            },
        );
        Ok(())
    }

    /// `z0`: puts the original byte back. Removing an unknown one is fine.
    pub fn remove_software(&mut self, phys: &dyn Phys, addr: u64) {
        if let Some(p) = self.software.remove(&addr) {
            let _ = phys.write(p.gpa, &[p.original]);
        }
    }

    /// `Z1` (or `Z0` as [`Kind::Software`]): a free debug register for
    /// `addr` (the same one again if set).
    pub fn insert_hardware(&mut self, addr: u64, kind: Kind) -> Result<(), BreakpointError> {
        if self.hardware.contains(&Some((addr, kind))) {
            return Ok(());
        }
        let free = self
            .hardware
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(BreakpointError::NoSlot)?;
        *free = Some((addr, kind));
        Ok(())
    }

    /// `z1` (or `z0` as [`Kind::Software`]).
    pub fn remove_hardware(&mut self, addr: u64, kind: Kind) {
        for slot in &mut self.hardware {
            if *slot == Some((addr, kind)) {
                *slot = None;
            }
        }
    }

    /// Removes everything (detach), restoring every patched byte.
    pub fn clear(&mut self, phys: &dyn Phys) {
        for (_, p) in std::mem::take(&mut self.software) {
            let _ = phys.write(p.gpa, &[p.original]);
        }
        self.hardware = [None; HW_SLOTS];
    }

    /// Whether gdb has an `int3` software breakpoint at `addr`.
    pub fn is_software(&self, addr: u64) -> bool {
        self.software.contains_key(&addr)
    }

    /// Which kind of our debug-register breakpoints DR6 names, if any
    /// (hardware first when both are hit).
    pub fn register_hit(&self, dr6: u64) -> Option<Kind> {
        let hit: Vec<Kind> = (0..HW_SLOTS)
            .filter(|&i| dr6 & (1 << i) != 0)
            .filter_map(|i| self.hardware[i].map(|(_, kind)| kind))
            .collect();
        hit.iter()
            .find(|&&k| k == Kind::Hardware)
            .or(hit.first())
            .copied()
    }

    /// Shows the original bytes instead of our `int3`s in `data`, read
    /// from virtual `addr`.
    pub fn unpatch(&self, addr: u64, data: &mut [u8]) {
        let end = addr.saturating_add(data.len() as u64);
        for (&at, p) in self.software.range(addr..end) {
            data[(at - addr) as usize] = p.original;
        }
    }

    /// After gdb wrote `len` bytes at virtual `addr`: bytes written where
    /// a breakpoint is become its original byte, and `int3` goes back.
    pub fn repatch(&mut self, phys: &dyn Phys, addr: u64, len: usize) {
        let end = addr.saturating_add(len as u64);
        for p in self.software.range_mut(addr..end).map(|(_, p)| p) {
            let mut now = [0];
            if phys.read(p.gpa, &mut now) && now[0] != INT3 {
                p.original = now[0];
                let _ = phys.write(p.gpa, &[INT3]);
            }
        }
    }

    /// `KVM_SET_GUEST_DEBUG`'s flags and DR0-DR7 for a vCPU about to run
    /// (single-stepping with interrupts blocked when `step`).
    pub fn guest_debug(&self, step: bool) -> (u32, [u64; 8]) {
        /// DR7: bit 10 reads as 1; GE and LE as QEMU sets them.
        const DR7_BASE: u64 = 0x600;
        let mut control = 0;
        let mut dr = [0u64; 8];
        if !self.software.is_empty() {
            control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        }
        if self.hardware.iter().any(Option::is_some) {
            control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            dr[7] = DR7_BASE;
            for (i, slot) in self.hardware.iter().enumerate() {
                if let Some((addr, _)) = slot {
                    dr[i] = *addr;
                    // Gn, execute (R/W = 00), length 1 (LEN = 00).
                    dr[7] |= 2 << (2 * i);
                }
            }
        }
        if step {
            control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ;
        }
        (control, dr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// 3 pages of RAM at guest-physical 0x10000.
    struct Ram(RefCell<Vec<u8>>);
    const BASE: u64 = 0x10000;

    impl Ram {
        fn new() -> Ram {
            Ram(RefCell::new(
                (0..3 * PAGE as usize).map(|i| i as u8).collect(),
            ))
        }
        fn at(&self, gpa: u64) -> u8 {
            self.0.borrow()[(gpa - BASE) as usize]
        }
    }

    impl Phys for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let ram = self.0.borrow();
            let Some(off) = gpa.checked_sub(BASE) else {
                return false;
            };
            match ram.get(off as usize..off as usize + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
        fn write(&self, gpa: u64, data: &[u8]) -> bool {
            let mut ram = self.0.borrow_mut();
            let Some(off) = gpa.checked_sub(BASE) else {
                return false;
            };
            match ram.get_mut(off as usize..off as usize + data.len()) {
                Some(dst) => {
                    dst.copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
    }

    /// Virtual page 0xffff_0000_0000_0000 + n → physical page n+1 of the
    /// RAM, swapped around so contiguity is not assumed; others unmapped.
    fn translate(va: u64) -> Option<u64> {
        let page = va.checked_sub(0xffff_0000_0000_0000)? / PAGE;
        let phys_page = match page {
            0 => 2,
            1 => 0,
            _ => return None,
        };
        Some(BASE + phys_page * PAGE + va % PAGE)
    }
    const VA: u64 = 0xffff_0000_0000_0000;

    #[test]
    fn virtual_reads_cross_pages_through_the_translation() {
        let ram = Ram::new();
        let data = read_virtual(&ram, &mut translate, VA + PAGE - 2, 4);
        assert_eq!(
            data,
            [
                ram.at(BASE + 3 * PAGE - 2),
                ram.at(BASE + 3 * PAGE - 1),
                ram.at(BASE),
                ram.at(BASE + 1)
            ]
        );
    }

    #[test]
    fn reads_stop_at_an_unmapped_page_or_outside_ram() {
        let ram = Ram::new();
        assert_eq!(
            read_virtual(&ram, &mut translate, VA + 2 * PAGE - 3, 10).len(),
            3
        );
        assert!(read_virtual(&ram, &mut translate, 0x1234, 4).is_empty());
        // Mapped, but to a physical address outside RAM.
        let mut wild = |va: u64| Some(va + 0x1_0000_0000);
        assert!(read_virtual(&ram, &mut wild, 0, 4).is_empty());
        // Near the top of the address space: no wrap-around.
        let mut ident = |va: u64| Some(va);
        assert!(read_virtual(&ram, &mut ident, u64::MAX - 1, 8).is_empty());
        assert!(!write_virtual(&ram, &mut ident, u64::MAX, &[1, 2]));
    }

    #[test]
    fn writes_go_where_reads_come_from() {
        let ram = Ram::new();
        assert!(write_virtual(
            &ram,
            &mut translate,
            VA + PAGE - 1,
            &[0xaa, 0xbb]
        ));
        assert_eq!(
            read_virtual(&ram, &mut translate, VA + PAGE - 1, 2),
            [0xaa, 0xbb]
        );
        assert_eq!(ram.at(BASE + 3 * PAGE - 1), 0xaa);
        assert_eq!(ram.at(BASE), 0xbb);
        assert!(!write_virtual(&ram, &mut translate, VA + 2 * PAGE, &[1]));
    }

    #[test]
    fn guest_memory_refuses_what_is_not_ram() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap();
        let mut buf = [0u8; 4];
        assert!(Phys::write(&mem, 0x1000, &[1, 2, 3, 4]));
        assert!(Phys::read(&mem, 0x1000, &mut buf));
        assert_eq!(buf, [1, 2, 3, 4]);
        assert!(!Phys::read(&mem, 0x2ffe, &mut buf), "crosses the end");
        assert!(!Phys::read(&mem, 0, &mut buf), "before RAM");
        assert!(!Phys::write(&mem, u64::MAX - 1, &[1, 2, 3]));
        assert!(!Phys::write(&mem, 0x2fff, &[1, 2]));
    }

    #[test]
    fn software_breakpoints_patch_and_restore_and_hide_themselves() {
        let ram = Ram::new();
        let mut bps = Breakpoints::default();
        let addr = VA + 0x10;
        let gpa = translate(addr);
        let before = ram.at(gpa.unwrap());
        bps.insert_software(&ram, addr, gpa).unwrap();
        assert_eq!(ram.at(gpa.unwrap()), INT3);
        // Twice is once: the original is not lost to our own int3.
        bps.insert_software(&ram, addr, gpa).unwrap();
        assert!(bps.is_software(addr));
        let mut seen = read_virtual(&ram, &mut translate, addr - 1, 3);
        bps.unpatch(addr - 1, &mut seen);
        assert_eq!(seen[1], before);
        bps.remove_software(&ram, addr);
        assert_eq!(ram.at(gpa.unwrap()), before);
        assert!(!bps.is_software(addr));
        bps.remove_software(&ram, addr);
        assert_eq!(
            bps.insert_software(&ram, 0x1234, None),
            Err(BreakpointError::Unmapped)
        );
        assert_eq!(
            bps.insert_software(&ram, 0x1234, Some(0x9_9999)),
            Err(BreakpointError::Unmapped)
        );
    }

    #[test]
    fn a_write_over_a_breakpoint_changes_what_removal_restores() {
        let ram = Ram::new();
        let mut bps = Breakpoints::default();
        let addr = VA + 0x20;
        bps.insert_software(&ram, addr, translate(addr)).unwrap();
        assert!(write_virtual(
            &ram,
            &mut translate,
            addr - 1,
            &[0x90, 0x91, 0x92]
        ));
        bps.repatch(&ram, addr - 1, 3);
        assert_eq!(ram.at(translate(addr).unwrap()), INT3);
        bps.clear(&ram);
        assert_eq!(ram.at(translate(addr).unwrap()), 0x91);
    }

    #[test]
    fn hardware_breakpoints_use_four_slots_and_program_dr7() {
        let mut bps = Breakpoints::default();
        assert_eq!(bps.guest_debug(false), (0, [0; 8]));
        for i in 0..4 {
            bps.insert_hardware(0x1000 + i, Kind::Hardware).unwrap();
        }
        bps.insert_hardware(0x1002, Kind::Hardware).unwrap();
        assert_eq!(
            bps.insert_hardware(0x2000, Kind::Hardware),
            Err(BreakpointError::NoSlot)
        );
        bps.remove_hardware(0x1001, Kind::Software);
        assert_eq!(
            bps.insert_hardware(0x2000, Kind::Software),
            Err(BreakpointError::NoSlot),
            "z0 does not remove a Z1"
        );
        bps.remove_hardware(0x1001, Kind::Hardware);
        bps.insert_hardware(0x2000, Kind::Hardware).unwrap();
        let (control, dr) = bps.guest_debug(false);
        assert_eq!(control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        assert_eq!(&dr[..4], &[0x1000, 0x2000, 0x1002, 0x1003]);
        assert_eq!(dr[7], 0x600 | 0b1010_1010);
        assert_eq!(bps.register_hit(0b10), Some(Kind::Hardware));
        assert_eq!(bps.register_hit(DR6_SINGLE_STEP), None);
        bps.remove_hardware(0x2000, Kind::Hardware);
        assert_eq!(bps.register_hit(0b10), None);
        let (control, dr) = bps.guest_debug(true);
        assert_ne!(control & KVM_GUESTDBG_SINGLESTEP, 0);
        assert_eq!(dr[7] & 0b1100, 0);
    }

    #[test]
    fn software_breakpoints_can_live_in_debug_registers() {
        let mut bps = Breakpoints::default();
        bps.insert_hardware(0x5000, Kind::Software).unwrap();
        bps.insert_hardware(0x5000, Kind::Hardware).unwrap();
        assert_eq!(bps.register_hit(0b01), Some(Kind::Software));
        assert_eq!(bps.register_hit(0b11), Some(Kind::Hardware));
        let (control, dr) = bps.guest_debug(false);
        assert_eq!(control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        assert_eq!(&dr[..2], &[0x5000, 0x5000]);
        assert!(!bps.is_software(0x5000), "no int3 was patched");
        bps.remove_hardware(0x5000, Kind::Software);
        assert_eq!(bps.register_hit(0b11), Some(Kind::Hardware));
    }

    #[test]
    fn software_breakpoints_enable_kvm_sw_bp() {
        let ram = Ram::new();
        let mut bps = Breakpoints::default();
        bps.insert_software(&ram, VA, translate(VA)).unwrap();
        let (control, dr) = bps.guest_debug(false);
        assert_eq!(control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP);
        assert_eq!(dr, [0; 8]);
    }
}

//! A tiny virtio driver for unit tests: split rings in test memory and the
//! register writes a guest would make. No KVM.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::mmio::{regs, MmioTransport};
use crate::bus::Device;
use crate::memory::GuestMemory;

/// Size of the test RAM.
pub const TEST_RAM: u64 = 8 << 20;
/// Descriptor flag: another descriptor follows.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;

/// Device status bits a driver sets.
pub const S_ACK: u32 = 1;
/// See [`S_ACK`].
pub const S_DRIVER: u32 = 2;
/// See [`S_ACK`].
pub const S_DRIVER_OK: u32 = 4;
/// See [`S_ACK`].
pub const S_FEATURES_OK: u32 = 8;
/// Set by the device when it is broken.
pub const S_NEEDS_RESET: u32 = 0x40;

const AREA_BASE: u64 = 0x10_0000;
const AREA_SIZE: u64 = 0x4_0000;
const AVAIL_OFF: u64 = 0x1000;
const USED_OFF: u64 = 0x2000;
const ARENA_OFF: u64 = 0x3000;

/// Zeroed test RAM.
pub fn test_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), TEST_RAM as usize)]).unwrap()
}

/// 32-bit register write.
pub fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// 32-bit register read.
pub fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK; returns the status
/// read back.
pub fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    write_reg(t, regs::STATUS, 0);
    write_reg(t, regs::STATUS, S_ACK);
    write_reg(t, regs::STATUS, S_ACK | S_DRIVER);
    write_reg(t, regs::DRIVER_FEATURES_SEL, 0);
    write_reg(t, regs::DRIVER_FEATURES, features as u32);
    write_reg(t, regs::DRIVER_FEATURES_SEL, 1);
    write_reg(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
    write_reg(t, regs::STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    read_reg(t, regs::STATUS)
}

/// The driver's side of one split virtqueue, in its own area of test RAM.
pub struct DriverQueue {
    /// Queue index.
    pub index: u32,
    /// Queue size.
    pub size: u16,
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    arena_next: u64,
}

impl DriverQueue {
    /// Queue `index` with `size` entries (≤ 256), rings zeroed.
    pub fn new(mem: &GuestMemory, index: u32, size: u16) -> Self {
        let base = AREA_BASE + u64::from(index) * AREA_SIZE;
        mem.write_slice(&[0u8; ARENA_OFF as usize], GuestAddress(base))
            .unwrap();
        DriverQueue {
            index,
            size,
            base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            arena_next: base + ARENA_OFF,
        }
    }

    /// Descriptor table address.
    pub fn desc_addr(&self) -> u64 {
        self.base
    }
    /// Available ring address.
    pub fn avail_addr(&self) -> u64 {
        self.base + AVAIL_OFF
    }
    /// Used ring address.
    pub fn used_addr(&self) -> u64 {
        self.base + USED_OFF
    }

    /// Room for `len` bytes in this queue's arena (wraps around).
    pub fn alloc(&mut self, len: usize) -> u64 {
        let len = (len as u64).next_multiple_of(16);
        let end = self.base + AREA_SIZE;
        assert!(len <= end - self.base - ARENA_OFF, "test buffer too large");
        if self.arena_next + len > end {
            self.arena_next = self.base + ARENA_OFF;
        }
        let at = self.arena_next;
        self.arena_next += len;
        at
    }

    /// `bytes` copied into the arena.
    pub fn data(&mut self, mem: &GuestMemory, bytes: &[u8]) -> u64 {
        let at = self.alloc(bytes.len());
        mem.write_slice(bytes, GuestAddress(at)).unwrap();
        at
    }

    /// Writes descriptor `slot` as given; returns `slot`.
    pub fn raw_desc(
        &self,
        mem: &GuestMemory,
        slot: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> u16 {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.base + 16 * u64::from(slot)))
            .unwrap();
        slot
    }

    /// A chain of `(addr, len, flags)` in the next free slots, published.
    pub fn add_descs(&mut self, mem: &GuestMemory, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let slot = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let (flags, next) = if i + 1 < descs.len() {
                (flags | F_NEXT, self.next_desc)
            } else {
                (flags, 0)
            };
            self.raw_desc(mem, slot, addr, len, flags, next);
        }
        self.publish(mem, head);
        head
    }

    /// One device-readable buffer holding `bytes`.
    pub fn add_out(&mut self, mem: &GuestMemory, bytes: &[u8]) -> u16 {
        let at = self.data(mem, bytes);
        self.add_descs(mem, &[(at, bytes.len() as u32, 0)])
    }

    /// One device-writable buffer of `len` bytes; returns its address.
    pub fn add_in(&mut self, mem: &GuestMemory, len: u32) -> u64 {
        let at = self.alloc(len as usize);
        self.add_descs(mem, &[(at, len, F_WRITE)]);
        at
    }

    /// Puts `head` on the available ring.
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail_addr() + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes the available ring's index directly (to fake a bad driver).
    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail_addr() + 2))
            .unwrap();
    }

    /// Used entries `(id, len)` added since the last call.
    pub fn used(&mut self, mem: &GuestMemory) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used_addr() + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used_addr() + 4 + 8 * slot;
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// A ready `Queue` over these rings (what the transport would build).
    pub fn queue(&self, mem: &GuestMemory) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc_addr()))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail_addr()))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used_addr()))
            .unwrap();
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    /// Programs this queue into the transport and enables it.
    pub fn setup(&self, t: &mut MmioTransport) {
        write_reg(t, regs::QUEUE_SEL, self.index);
        write_reg(t, regs::QUEUE_NUM, u32::from(self.size));
        let split = |a: u64| (a as u32, (a >> 32) as u32);
        for (low, value) in [
            (regs::QUEUE_DESC_LOW, self.desc_addr()),
            (regs::QUEUE_AVAIL_LOW, self.avail_addr()),
            (regs::QUEUE_USED_LOW, self.used_addr()),
        ] {
            let (lo, hi) = split(value);
            write_reg(t, low, lo);
            write_reg(t, low + 4, hi);
        }
        write_reg(t, regs::QUEUE_READY, 1);
    }

    /// Notifies the device about this queue.
    pub fn kick(&self, t: &mut MmioTransport) {
        write_reg(t, regs::QUEUE_NOTIFY, self.index);
    }
}

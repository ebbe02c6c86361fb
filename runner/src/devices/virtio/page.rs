//! The register page of one virtio-mmio slot: what the guest reads.
//!
//! Every register the driver reads is kept up to date in this 4 KiB page
//! (the transport writes it after each register write, devices' worker
//! threads update the interrupt status and `DEVICE_NEEDS_RESET` bits in
//! place), so a read never needs the VMM. `vm.rs` maps the page into the
//! guest as a read-only memory slot (`KVM_MEM_READONLY`) at the slot's
//! address: reads are plain memory reads inside the guest, writes still
//! exit to the VMM as MMIO writes. Where KVM cannot map read-only memory,
//! reads exit and the transport answers them from the same page, so the
//! guest sees the same registers either way.
//!
//! Invariant: the page is only written by the VMM (the guest's mapping is
//! read-only), and only with atomic word operations; it lives as long as
//! any VM that maps it (`VmHandle` keeps an `Arc`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::layout;

/// Words in one page.
const WORDS: usize = (layout::VIRTIO_MMIO_SIZE / 4) as usize;

/// One page-aligned register page (see the module docs).
#[repr(C, align(4096))]
pub struct RegisterPage([AtomicU32; WORDS]);

impl RegisterPage {
    /// A page of zeros.
    pub fn new() -> Arc<Self> {
        Arc::new(RegisterPage(std::array::from_fn(|_| AtomicU32::new(0))))
    }

    /// The word at byte `offset` (4-aligned and inside the page: a VMM
    /// constant, so anything else is a bug).
    fn word(&self, offset: u64) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4), "register offset {offset:#x}");
        &self.0[(offset / 4) as usize]
    }

    /// The register at `offset`.
    pub fn load(&self, offset: u64) -> u32 {
        self.word(offset).load(Ordering::Acquire)
    }

    /// Sets the register at `offset`.
    pub fn store(&self, offset: u64, value: u32) {
        self.word(offset).store(value, Ordering::Release)
    }

    /// Sets `bits` in the register at `offset`; returns the old value.
    pub fn set_bits(&self, offset: u64, bits: u32) -> u32 {
        self.word(offset).fetch_or(bits, Ordering::AcqRel)
    }

    /// Clears `bits` in the register at `offset`.
    pub fn clear_bits(&self, offset: u64, bits: u32) {
        self.word(offset).fetch_and(!bits, Ordering::AcqRel);
    }

    /// Replaces the register at `offset` with `f(old)`, atomically.
    pub fn update(&self, offset: u64, f: impl Fn(u32) -> u32) {
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .word(offset)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| Some(f(old)));
    }

    /// What a guest read of `data.len()` bytes at `offset` sees (bytes
    /// past the page read 0), as the guest would read the mapped page.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .filter(|&at| at < layout::VIRTIO_MMIO_SIZE)
                .map_or(0, |at| self.load(at & !3).to_le_bytes()[(at & 3) as usize]);
        }
    }

    /// Fills the page from `offset` to its end with `bytes` (zeros past
    /// their end).
    pub fn fill_from(&self, offset: u64, bytes: &[u8]) {
        let mut at = offset & !3;
        while at < layout::VIRTIO_MMIO_SIZE {
            let mut word = [0u8; 4];
            for (i, b) in word.iter_mut().enumerate() {
                let index = (at + i as u64).checked_sub(offset);
                *b = index
                    .and_then(|x| bytes.get(x as usize))
                    .copied()
                    .unwrap_or(0);
            }
            self.store(at, u32::from_le_bytes(word));
            at += 4;
        }
    }

    /// The page's address in this process (page-aligned), for KVM.
    pub fn host_address(&self) -> u64 {
        self as *const Self as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_page_aligned_and_one_page_long() {
        let page = RegisterPage::new();
        assert_eq!(page.host_address() % layout::PAGE_SIZE, 0);
        assert_eq!(
            std::mem::size_of::<RegisterPage>() as u64,
            layout::PAGE_SIZE
        );
    }

    #[test]
    fn reads_of_any_width_see_little_endian_words() {
        let page = RegisterPage::new();
        page.store(0x100, 0x4433_2211);
        page.store(0x104, 0x8877_6655);
        let mut b = [0u8; 8];
        page.read(0x100, &mut b);
        assert_eq!(b, [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        let mut b = [0u8; 2];
        page.read(0x103, &mut b);
        assert_eq!(b, [0x44, 0x55]);
        let mut b = [0xffu8; 4];
        page.read(0xffe, &mut b);
        assert_eq!(b, [0, 0, 0, 0], "past the page reads 0");
        page.read(u64::MAX - 1, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
    }

    #[test]
    fn fill_from_writes_bytes_and_zeros_the_rest() {
        let page = RegisterPage::new();
        page.store(0x200, 0xdead_beef);
        page.fill_from(0x100, b"tag\0\x01");
        assert_eq!(page.load(0x100), u32::from_le_bytes(*b"tag\0"));
        assert_eq!(page.load(0x104), 1);
        assert_eq!(page.load(0x200), 0);
        assert_eq!(page.load(0xffc), 0);
    }

    #[test]
    fn bits_and_updates_are_atomic_word_operations() {
        let page = RegisterPage::new();
        assert_eq!(page.set_bits(0x60, 1), 0);
        assert_eq!(page.set_bits(0x60, 2), 1);
        page.clear_bits(0x60, 1);
        assert_eq!(page.load(0x60), 2);
        page.update(0x70, |old| old | 0x40);
        page.update(0x70, |old| 0xf | (old & 0x40));
        assert_eq!(page.load(0x70), 0x4f);
    }
}

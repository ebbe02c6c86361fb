//! Guest RAM: anonymous mappings laid out by [`crate::layout::ram_ranges`].
//!
//! Owns the creation of guest memory. Invariant: RAM never covers the MMIO
//! hole; every region is registered with KVM by `kvm::Kvm::create_vm`.

use vm_memory::GuestAddress;

use crate::layout;

/// Guest memory as used everywhere in the VMM.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Guest memory could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot allocate {mib} MiB of guest memory: {source}; ask for less with --memory")]
pub struct MemoryError {
    mib: u64,
    #[source]
    source: vm_memory::mmap::FromRangesError,
}

/// Allocates `memory_bytes` of guest RAM (zeroed, lazily backed).
pub fn create(memory_bytes: u64) -> Result<GuestMemory, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(memory_bytes)
        .into_iter()
        .map(|r| (GuestAddress(r.start), (r.end - r.start) as usize))
        .collect();
    GuestMemory::from_ranges(&ranges).map_err(|source| MemoryError {
        mib: memory_bytes >> 20,
        source,
    })
}

//! Descriptor chains as checked lists of guest buffers.
//!
//! `virtio_queue::DescriptorChain` stops quietly at a loop, at a `next`
//! past its table or at an unreadable descriptor; [`Buffers::of`] turns
//! those into errors. Invariant: a [`Buffers`] only exists for a chain that
//! ends, lists its device-readable buffers before its device-writable ones
//! (virtio 1.2 §2.7.4.2), and whose every buffer lies inside guest RAM, so
//! copying from or to it cannot fail.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemoryError, WriteVolatile};

use crate::memory::GuestMemory;

/// Largest piece copied out of guest memory at once.
pub const COPY_CHUNK: usize = 64 * 1024;

/// A malformed descriptor chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// No descriptor could be read (head index past the table, or the table
    /// outside RAM).
    #[error("descriptor chain {head} is empty or its head lies outside the table")]
    Empty {
        /// Head index.
        head: u16,
    },
    /// The chain loops, points past its table, or a descriptor (or an
    /// indirect table) could not be read.
    #[error(
        "descriptor chain {head} loops, points past its table or has an unreadable descriptor"
    )]
    Unterminated {
        /// Head index.
        head: u16,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("descriptor chain {head} has a device-readable buffer after a writable one")]
    Order {
        /// Head index.
        head: u16,
    },
    /// A buffer is not wholly inside guest RAM.
    #[error("descriptor chain {head} has a buffer at {addr:#x} (+{len:#x}) outside guest RAM")]
    OutsideRam {
        /// Head index.
        head: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
}

/// The guest buffers of one checked chain. Zero-length buffers are left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Buffers {
    /// The chain's head index (for the used ring).
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<(GuestAddress, usize)>,
    /// Device-writable buffers, in order.
    pub writable: Vec<(GuestAddress, usize)>,
}

impl Buffers {
    /// Walks and checks `chain`.
    pub fn of<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Buffers, ChainError>
    where
        M: Deref<Target = GuestMemory>,
    {
        let head = chain.head_index();
        let mut buffers = Buffers {
            head,
            ..Buffers::default()
        };
        let mut count = 0usize;
        let mut last_has_next = false;
        for desc in chain {
            count += 1;
            last_has_next = desc.has_next();
            let (addr, len) = (desc.addr(), desc.len());
            if desc.is_write_only() {
                if len > 0 {
                    buffers.writable.push((addr, len as usize));
                }
            } else if !buffers.writable.is_empty() {
                return Err(ChainError::Order { head });
            } else if len > 0 {
                buffers.readable.push((addr, len as usize));
            }
            if len > 0 && !GuestMemoryBackend::check_range(mem, addr, len as usize) {
                return Err(ChainError::OutsideRam {
                    head,
                    addr: addr.0,
                    len,
                });
            }
        }
        if count == 0 {
            return Err(ChainError::Empty { head });
        }
        // The iterator ends early (its descriptor budget spent, or `next`
        // out of range, or a read failed) only after a descriptor that
        // still said "next".
        if last_has_next {
            return Err(ChainError::Unterminated { head });
        }
        Ok(buffers)
    }

    /// Total bytes in the readable buffers.
    pub fn readable_len(&self) -> usize {
        self.readable.iter().map(|(_, len)| len).sum()
    }

    /// Passes the readable bytes to `sink` in order, in pieces of at most
    /// [`COPY_CHUNK`] bytes, stopping at the first error `sink` returns.
    pub fn for_each_readable<E>(
        &self,
        mem: &GuestMemory,
        scratch: &mut Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for &(addr, len) in &self.readable {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(COPY_CHUNK);
                scratch.resize(n, 0);
                // Checked in `of`: the whole buffer is in RAM.
                let at = GuestAddress(addr.0 + done as u64);
                if mem.read_slice(&mut scratch[..n], at).is_err() {
                    scratch.fill(0);
                }
                sink(&scratch[..n])?;
                done += n;
            }
        }
        Ok(())
    }

    /// Writes the readable bytes to `out` straight from guest memory.
    pub fn write_readable_to(
        &self,
        mem: &GuestMemory,
        out: &mut impl WriteVolatile,
    ) -> Result<(), VolatileMemoryError> {
        for &(addr, len) in &self.readable {
            for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
                let slice = slice.map_err(|_| VolatileMemoryError::OutOfBounds {
                    addr: addr.0 as usize,
                })?;
                out.write_all_volatile(&slice)?;
            }
        }
        Ok(())
    }

    /// The first `max` readable bytes.
    pub fn read_prefix(&self, mem: &GuestMemory, max: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(max.min(self.readable_len()));
        for &(addr, len) in &self.readable {
            let n = len.min(max - out.len());
            let start = out.len();
            out.resize(start + n, 0);
            if mem.read_slice(&mut out[start..], addr).is_err() {
                out[start..].fill(0);
            }
            if out.len() == max {
                break;
            }
        }
        out
    }

    /// Copies `bytes` into the writable buffers in order; returns how many
    /// fitted.
    pub fn write(&self, mem: &GuestMemory, bytes: &[u8]) -> usize {
        let mut done = 0;
        for &(addr, len) in &self.writable {
            if done == bytes.len() {
                break;
            }
            let n = len.min(bytes.len() - done);
            if mem.write_slice(&bytes[done..done + n], addr).is_err() {
                break;
            }
            done += n;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{test_memory, DriverQueue, F_NEXT, F_WRITE};
    use virtio_queue::QueueOwnedT;

    fn first_chain(q: &DriverQueue, mem: &GuestMemory) -> Result<Buffers, ChainError> {
        let mut queue = q.queue(mem);
        let chain = queue.iter(mem).unwrap().next().unwrap();
        Buffers::of(chain, mem)
    }

    #[test]
    fn a_good_chain_splits_into_readable_then_writable() {
        let mem = test_memory();
        let mut q = DriverQueue::new(&mem, 0, 8);
        let a = q.data(&mem, b"hello ");
        let b = q.data(&mem, b"world");
        let w = q.alloc(16);
        q.add_descs(&mem, &[(a, 6, 0), (b, 5, 0), (w, 16, F_WRITE)]);
        let bufs = first_chain(&q, &mem).unwrap();
        assert_eq!(bufs.readable_len(), 11);
        assert_eq!(bufs.read_prefix(&mem, 8), b"hello wo");
        let mut all = Vec::new();
        bufs.for_each_readable(&mem, &mut Vec::new(), |s| {
            all.extend_from_slice(s);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(all, b"hello world");
        assert_eq!(bufs.write(&mem, &[7u8; 20]), 16);
        let mut back = [0u8; 16];
        mem.read_slice(&mut back, GuestAddress(w)).unwrap();
        assert_eq!(back, [7u8; 16]);
    }

    #[test]
    fn a_loop_is_an_error_not_a_hang() {
        let mem = test_memory();
        let mut q = DriverQueue::new(&mem, 0, 8);
        let a = q.data(&mem, b"x");
        // Two descriptors pointing at each other.
        let head = q.raw_desc(&mem, 0, a, 1, F_NEXT, 1);
        q.raw_desc(&mem, 1, a, 1, F_NEXT, 0);
        q.publish(&mem, head);
        assert_eq!(
            first_chain(&q, &mem),
            Err(ChainError::Unterminated { head: 0 })
        );
    }

    #[test]
    fn next_past_the_table_and_bad_heads_are_errors() {
        let mem = test_memory();
        let mut q = DriverQueue::new(&mem, 0, 8);
        let a = q.data(&mem, b"x");
        let head = q.raw_desc(&mem, 0, a, 1, F_NEXT, 200);
        q.publish(&mem, head);
        assert_eq!(
            first_chain(&q, &mem),
            Err(ChainError::Unterminated { head: 0 })
        );
        let mut q = DriverQueue::new(&mem, 0, 8);
        q.publish(&mem, 9);
        assert_eq!(first_chain(&q, &mem), Err(ChainError::Empty { head: 9 }));
    }

    #[test]
    fn buffers_outside_ram_and_bad_order_are_errors() {
        let mem = test_memory();
        let mut q = DriverQueue::new(&mem, 0, 8);
        q.add_descs(&mem, &[(0xffff_0000, 0x100, 0)]);
        assert!(matches!(
            first_chain(&q, &mem),
            Err(ChainError::OutsideRam { head: 0, .. })
        ));
        let mut q = DriverQueue::new(&mem, 0, 8);
        let a = q.alloc(8);
        // Straddles the end of RAM.
        let end = crate::devices::virtio::testing::TEST_RAM - 4;
        q.add_descs(&mem, &[(end, 8, 0)]);
        assert!(matches!(
            first_chain(&q, &mem),
            Err(ChainError::OutsideRam { .. })
        ));
        let mut q = DriverQueue::new(&mem, 0, 8);
        q.add_descs(&mem, &[(a, 8, F_WRITE), (a, 8, 0)]);
        assert_eq!(first_chain(&q, &mem), Err(ChainError::Order { head: 0 }));
    }
}

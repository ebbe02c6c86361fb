//! Serving one virtio descriptor chain: the FUSE request comes from the
//! device-readable descriptors (it may span several), the reply goes to the
//! device-writable ones.
//!
//! Invariants: every guest address is checked by vm-memory before use (a
//! descriptor outside guest memory fails the chain, it is never touched);
//! at most [`MAX_REQUEST`] bytes are copied out of the guest per request;
//! the reply is never longer than the writable descriptors' total length
//! (the server is told that room and clamps or turns the reply into an
//! error). Generic over any `vm_memory::GuestMemory`.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemory;

use crate::server::Server;

/// Largest request we copy out of the guest: a WRITE of `max_io` bytes
/// plus its headers, with slack for names.
pub const MAX_REQUEST: usize = (1 << 20) + 64 * 1024;

/// Why a chain could not be served (it is still returned to the guest, with
/// a used length of 0).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A device-readable descriptor is not in guest memory (or the chain is malformed).
    #[error("bad device-readable descriptors: {0}")]
    Readable(virtio_queue::Error),
    /// A device-writable descriptor is not in guest memory.
    #[error("bad device-writable descriptors: {0}")]
    Writable(virtio_queue::Error),
    /// Copying to or from guest memory failed.
    #[error("guest memory access failed: {0}")]
    Io(std::io::Error),
}

/// Serves the request in `chain`; returns the number of bytes written to
/// the device-writable descriptors (the used length).
pub fn serve_chain<M: GuestMemory>(
    server: &Server,
    mem: &M,
    chain: DescriptorChain<&M>,
) -> Result<u32, ChainError> {
    let mut reader = Reader::new(mem, chain.clone()).map_err(ChainError::Readable)?;
    let mut writer = Writer::new(mem, chain).map_err(ChainError::Writable)?;

    let len = reader.available_bytes().min(MAX_REQUEST);
    let mut req = vec![0u8; len];
    reader.read_exact(&mut req).map_err(ChainError::Io)?;

    let room = writer.available_bytes();
    let Some(reply) = server.handle(&req, room) else {
        return Ok(0);
    };
    debug_assert!(reply.len() <= room);
    writer.write_all(&reply).map_err(ChainError::Io)?;
    Ok(writer.bytes_written() as u32)
}

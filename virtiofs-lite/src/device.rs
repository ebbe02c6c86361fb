//! The virtio-fs device model, independent of the transport: feature bits,
//! config space (`tag[36]`, `num_request_queues`), and draining a queue.
//! The VMM's virtio-mmio transport and the vhost-user backend both drive it.
//!
//! Invariants: queue 0 is the high-priority queue and queues 1.. are
//! request queues, but every queue is served the same way (FORGET needs no
//! reply wherever it comes from); every chain popped is returned to the
//! used ring exactly once, served or not; the caller is told to interrupt
//! the guest only when the queue's notification rules ask for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use crate::queue::serve_chain;
use crate::server::Server;

/// Virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Length of the tag field in the config space.
pub const TAG_LEN: usize = 36;
/// Size of the config space.
pub const CONFIG_SIZE: usize = TAG_LEN + 4;
/// Queue size we offer.
pub const QUEUE_SIZE: u16 = 1024;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// Errors of the device layer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The tag is empty or longer than 36 bytes.
    #[error("the virtio-fs tag must be 1 to 36 bytes long (got {0:?})")]
    BadTag(String),
    /// At least one request queue is needed.
    #[error("a virtio-fs device needs at least one request queue")]
    NoRequestQueue,
    /// The queue's rings are not in guest memory.
    #[error("virtqueue error: {0}")]
    Queue(virtio_queue::Error),
    /// The driver claims more chains than the queue holds: a broken or
    /// hostile guest. The queue is not served again until it is reset.
    #[error(
        "the guest's avail index {avail} is {ahead} ahead of ours, more than the queue size {size}"
    )]
    BadAvailIndex { avail: u16, ahead: u16, size: u16 },
}

/// A virtio-fs device over a [`Server`].
#[derive(Debug, Clone)]
pub struct FsDevice {
    server: Arc<Server>,
    tag: String,
    num_request_queues: u32,
}

impl FsDevice {
    /// A device exporting `server` under `tag` with `num_request_queues`
    /// request queues (plus the high-priority queue).
    pub fn new(
        server: Arc<Server>,
        tag: &str,
        num_request_queues: u32,
    ) -> Result<Self, DeviceError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(DeviceError::BadTag(tag.into()));
        }
        if num_request_queues == 0 {
            return Err(DeviceError::NoRequestQueue);
        }
        Ok(Self {
            server,
            tag: tag.into(),
            num_request_queues,
        })
    }

    /// The FUSE server.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Total queues: the high-priority queue and the request queues.
    pub fn num_queues(&self) -> usize {
        1 + self.num_request_queues as usize
    }

    /// Device features we offer (the transport adds its own).
    pub fn features(&self) -> u64 {
        F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX
    }

    /// The config space: `tag` NUL-padded to 36 bytes, then
    /// `num_request_queues` (little endian).
    pub fn config_space(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        c[TAG_LEN..].copy_from_slice(&self.num_request_queues.to_le_bytes());
        c
    }

    /// Reads `data.len()` config bytes from `offset` (out of range reads 0).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_space();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o).copied())
                .unwrap_or(0);
        }
    }

    /// Serves every available chain of `queue`. Returns whether the guest
    /// must be interrupted (call your interrupt callback if so).
    pub fn process_queue<M: GuestMemory>(
        &self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, DeviceError> {
        let mut used_any = false;
        loop {
            // A driver whose avail index runs ahead by more than the queue
            // size makes `pop_descriptor_chain` yield nothing while
            // `enable_notification` keeps reporting work: without this
            // check the loop would spin for ever.
            let avail = queue
                .avail_idx(mem, Ordering::Acquire)
                .map_err(DeviceError::Queue)?
                .0;
            let ahead = avail.wrapping_sub(queue.next_avail());
            if ahead > queue.size() {
                return Err(DeviceError::BadAvailIndex {
                    avail,
                    ahead,
                    size: queue.size(),
                });
            }
            queue
                .disable_notification(mem)
                .map_err(DeviceError::Queue)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = serve_chain(&self.server, mem, chain).unwrap_or_else(|e| {
                    log::warn!("virtio-fs: dropping a request: {e}");
                    0
                });
                queue.add_used(mem, head, len).map_err(DeviceError::Queue)?;
                used_any = true;
            }
            if !queue.enable_notification(mem).map_err(DeviceError::Queue)? {
                break;
            }
        }
        Ok(used_any && queue.needs_notification(mem).map_err(DeviceError::Queue)?)
    }

    /// [`process_queue`](Self::process_queue), then `interrupt()` if needed.
    pub fn process_queue_and_notify<M: GuestMemory>(
        &self,
        queue: &mut Queue,
        mem: &M,
        interrupt: impl FnOnce(),
    ) -> Result<(), DeviceError> {
        if self.process_queue(queue, mem)? {
            interrupt();
        }
        Ok(())
    }
}

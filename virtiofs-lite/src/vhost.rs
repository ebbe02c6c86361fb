//! The vhost-user backend: the same [`FsDevice`] driven by a vhost-user
//! front end (QEMU's `vhost-user-fs-pci`) through `vhost-user-backend`.
//!
//! Invariants: queue 0 (high priority) and request queue 1 share worker
//! thread 0; every further request queue has a worker thread of its own;
//! a queue is only served once the front end has given us guest memory;
//! each worker has an exit event, so the end of the session stops and joins
//! them (without it, dropping the daemon hangs).

use std::io;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::device::{FsDevice, QUEUE_SIZE};

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// A vhost-user virtio-fs backend.
#[derive(Debug)]
pub struct VhostFsBackend {
    device: FsDevice,
    mem: RwLock<Option<Memory>>,
}

impl VhostFsBackend {
    /// A backend serving `device`.
    pub fn new(device: FsDevice) -> Arc<Self> {
        Arc::new(Self {
            device,
            mem: RwLock::new(None),
        })
    }

    /// Which queues each worker thread serves (bit masks).
    pub fn thread_masks(num_queues: usize) -> Vec<u64> {
        let mut masks = vec![0b11u64];
        masks.extend((2..num_queues.min(64)).map(|q| 1u64 << q));
        masks
    }
}

impl VhostUserBackend for VhostFsBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.device.num_queues()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library sets it on each queue; `process_queue` honours it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut buf = vec![0u8; size.min(4096) as usize];
        self.device.read_config(u64::from(offset), &mut buf);
        buf
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        Self::thread_masks(self.device.num_queues())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one, the library cannot stop (and join) its workers when
        // the session ends, and dropping the daemon would hang.
        new_event_consumer_and_notifier(EventFlag::empty()).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::other(format!(
                "no queue for event {device_event}"
            )));
        };
        let Some(mem) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let mem = mem.memory();
        let mut state = vring.get_mut();
        let notify = self
            .device
            .process_queue(state.get_queue_mut(), &*mem)
            .map_err(io::Error::other)?;
        if notify {
            state.signal_used_queue()?;
        }
        Ok(())
    }
}

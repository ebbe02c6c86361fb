//! virtiofs-lite: Kestrel's virtio-fs server (FUSE over virtio) for one
//! host directory, read-only unless asked.
//!
//! Layers, each usable and testable alone:
//! - [`abi`]: the FUSE kernel ABI, parsed from bytes;
//! - [`fs`]: the confined passthrough file system and its inode table;
//! - [`server`]: request bytes → reply bytes;
//! - [`queue`]: one virtio descriptor chain ↔ one request/reply;
//! - [`device`]: the virtio-fs device (config space, queue draining), for
//!   an in-process VMM;
//! - [`vhost`]: the same device as a vhost-user backend.
//!
//! In-process use (a VMM owning the transport, the queues and memory):
//! ```no_run
//! # use std::sync::Arc;
//! # use virtiofs_lite::{FsDevice, Server, ServerConfig};
//! # fn demo(queue: &mut virtio_queue::Queue, mem: &vm_memory::GuestMemoryMmap) {
//! let server = Arc::new(Server::new("/srv/share".as_ref(), ServerConfig::default()).unwrap());
//! let dev = FsDevice::new(server, "myfs", 1).unwrap();
//! // On a queue notification (any of dev.num_queues() queues):
//! dev.process_queue_and_notify(queue, mem, || { /* raise the interrupt */ }).unwrap();
//! # }
//! ```

pub mod abi;
pub mod device;
pub mod fs;
pub mod queue;
pub mod server;
mod sys;
pub mod vhost;

pub use device::{DeviceError, FsDevice};
pub use fs::{Error, FsConfig};
pub use server::{Server, ServerConfig};
pub use sys::{raise_nofile_limit, Errno};

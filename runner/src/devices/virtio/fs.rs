//! virtio-fs: one host directory shared with the guest, served in process
//! by [`virtiofs_lite`] (FUSE over virtio).
//!
//! One device per share: writability is a property of the whole share in
//! virtiofs-lite, so a writable directory inside a read-only tree is its own
//! device, mounted over that path by the guest init. Queue 0 is the
//! high-priority queue (FORGET, INTERRUPT), queue 1 the request queue
//! (`num_request_queues` = [`REQUEST_QUEUES`]). A worker thread
//! (`kestrel_virtio_fs`) woken by the transport's queue eventfd (a KVM
//! ioeventfd, so a notify costs no exit to the VMM) serves every queue per
//! wake-up; without an eventfd (unit tests) requests are served on the
//! notifying thread.
//!
//! Invariants: the guest is untrusted. Confinement (everything resolved
//! beneath the shared directory, no device nodes, EROFS on a read-only
//! share before any host call) is the server's; this module makes sure
//! that nothing the guest does stops the VMM: a ring error or a panic
//! while serving marks the device `DEVICE_NEEDS_RESET` and its queues are
//! then ignored until the driver resets it; after `reset` or `shutdown` no
//! worker runs (one stuck in a host file system call past [`STOP_LIMIT`]
//! is left behind, never joined forever).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtiofs_lite::device::{F_EVENT_IDX, F_INDIRECT_DESC, QUEUE_SIZE, TAG_LEN};
use virtiofs_lite::queue::serve_chain;
use virtiofs_lite::{FsConfig, FsDevice, Server, ServerConfig};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{QueueWorker, Stop};
use super::{device_id, serve_available, ActivateError, Activation, Interrupt, VirtioDevice};
use crate::log;
use crate::memory::GuestMemory;

/// Name of the worker thread.
pub const WORKER_NAME: &str = "kestrel_virtio_fs";
/// Request queues per device (plus the high-priority queue 0).
pub const REQUEST_QUEUES: u32 = 1;
/// The first request queue; the driver must enable it.
const FIRST_REQUEST_QUEUE: usize = 1;
/// How long `reset`/`shutdown` wait for the worker to finish its round.
pub const STOP_LIMIT: Duration = Duration::from_secs(5);
/// Modules the guest needs for a virtio-fs share (Debian builds them as
/// modules; `virtiofs` depends on `fuse`).
pub const GUEST_MODULES: &[&str] = &["virtiofs"];

/// One host directory to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The host directory.
    pub host_dir: PathBuf,
    /// The virtio-fs tag the guest mounts it by (1–36 bytes).
    pub tag: String,
    /// Whether the guest may change it.
    pub writable: bool,
}

/// A share that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The host directory cannot be opened.
    #[error("cannot share {}: {source}", dir.display())]
    Open {
        /// The directory.
        dir: PathBuf,
        /// What virtiofs-lite said.
        #[source]
        source: virtiofs_lite::Error,
    },
    /// A tag the guest could not mount by.
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} printable ASCII bytes")]
    Tag(String),
}

/// The queues of an activated device.
struct Running {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// What the worker and the vCPU thread share.
struct Engine {
    device: FsDevice,
    running: Option<Running>,
}

impl Engine {
    /// Serves every ready queue until its available ring is empty. A ring
    /// error breaks the device (the queues are dropped).
    fn serve(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if r.interrupt.needs_reset() {
            return;
        }
        let server = self.device.server();
        let mut failure = None;
        for (index, queue) in r.queues.iter_mut().enumerate() {
            if !queue.ready() {
                continue;
            }
            match drain(server, queue, &r.mem) {
                Ok(true) => r.interrupt.signal_used_queue(),
                Ok(false) => {}
                Err(e) => {
                    failure = Some((index, e));
                    break;
                }
            }
        }
        if let Some((index, e)) = failure {
            r.interrupt
                .set_needs_reset(format_args!("virtio-fs queue {index}: {e}"));
            self.running = None;
        }
    }
}

/// Serves every available chain of `queue`; returns whether the driver
/// wants an interrupt. Unlike a loop over `pop_descriptor_chain` (which
/// reads a bad available index as "nothing there" while
/// `enable_notification` keeps saying "more", a spin a hostile guest can
/// cause), a ring the queue cannot be iterated over is an error. Every
/// popped chain goes back to the used ring exactly once (length 0 when it
/// could not be served).
fn drain(
    server: &Server,
    queue: &mut Queue,
    mem: &GuestMemory,
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    serve_available(queue, mem, |queue| {
        let mut taken = 0;
        loop {
            // The iterator borrows the queue: end it before `add_used`.
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else {
                return Ok::<_, virtio_queue::Error>(taken);
            };
            let head = chain.head_index();
            let len = serve_chain(server, mem, chain).unwrap_or_else(|e| {
                log::debug(format_args!("virtio-fs: request dropped: {e}"));
                0
            });
            queue.add_used(mem, head, len)?;
            used_any = true;
            taken += 1;
        }
    })?;
    Ok(used_any && queue.needs_notification(mem)?)
}

/// The virtio-fs device of one [`Share`].
pub struct Fs {
    engine: Arc<Mutex<Engine>>,
    /// For the request counts logged at shutdown (`KESTREL_LOG=debug`) and
    /// the full-file-system warning.
    server: Arc<Server>,
    /// The shared host directory (named in that warning).
    host_dir: PathBuf,
    tag: String,
    config: Vec<u8>,
    features: u64,
    queue_sizes: Vec<u16>,
    worker: Option<QueueWorker>,
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic while serving is caught and breaks the device; the tables
    // behind the lock stay usable for a reset.
    engine.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fs {
    /// A device serving `share` (the directory is opened now, so a missing
    /// or unreadable directory fails here, not in the guest).
    pub fn new(share: &Share) -> Result<Fs, FsError> {
        let tag_ok = !share.tag.is_empty()
            && share.tag.len() <= TAG_LEN
            && share.tag.bytes().all(|b| b.is_ascii_graphic());
        if !tag_ok {
            return Err(FsError::Tag(share.tag.clone()));
        }
        let open = |source| FsError::Open {
            dir: share.host_dir.clone(),
            source,
        };
        let server = Server::new(
            &share.host_dir,
            ServerConfig {
                fs: FsConfig {
                    writable: share.writable,
                    owner: sudo_owner(),
                    ..FsConfig::default()
                },
                ..ServerConfig::default()
            },
        )
        .map_err(open)?;
        let server = Arc::new(server);
        let device = FsDevice::new(server.clone(), &share.tag, REQUEST_QUEUES)
            .map_err(|_| FsError::Tag(share.tag.clone()))?;
        Ok(Fs {
            server,
            host_dir: share.host_dir.clone(),
            tag: share.tag.clone(),
            config: device.config_space().to_vec(),
            // The transport offers VERSION_1 itself.
            features: F_INDIRECT_DESC | F_EVENT_IDX,
            queue_sizes: vec![QUEUE_SIZE; device.num_queues()],
            engine: Arc::new(Mutex::new(Engine {
                device,
                running: None,
            })),
            worker: None,
        })
    }

    /// Whether a worker thread is running.
    pub fn has_worker(&self) -> bool {
        self.worker.is_some()
    }

    fn spawn_worker(&mut self, events: EventFd, interrupt: Interrupt) -> std::io::Result<()> {
        let (serving, breaking) = (self.engine.clone(), self.engine.clone());
        self.worker = Some(QueueWorker::spawn(
            WORKER_NAME,
            events,
            interrupt,
            move || lock(&serving).serve(),
            move || lock(&breaking).running = None,
        )?);
        Ok(())
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop(Stop::Now, STOP_LIMIT, "a host file system call blocks");
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_id::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug(format_args!(
            "virtio-fs: config write of {} bytes at {offset:#x} ignored (read-only)",
            data.len()
        ));
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if !activation
            .queues
            .get(FIRST_REQUEST_QUEUE)
            .is_some_and(|q| q.ready())
        {
            return Err(ActivateError::QueueNotReady(FIRST_REQUEST_QUEUE));
        }
        let event_idx = activation.features & F_EVENT_IDX != 0;
        let mut queues = activation.queues;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let interrupt = activation.interrupt.clone();
        {
            let mut engine = lock(&self.engine);
            engine.running = Some(Running {
                mem: activation.mem,
                queues,
                interrupt: activation.interrupt,
            });
            // Whatever the driver queued before DRIVER_OK.
            engine.serve();
        }
        if let Some(events) = activation.queue_events {
            if let Err(e) = self.spawn_worker(events, interrupt) {
                lock(&self.engine).running = None;
                return Err(ActivateError::Device(format!(
                    "cannot start {WORKER_NAME}: {e}"
                )));
            }
        }
        Ok(())
    }

    fn queue_notify(&mut self, _index: usize) {
        match &self.worker {
            Some(w) => w.wake(),
            None => lock(&self.engine).serve(),
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
        lock(&self.engine).running = None;
    }

    fn shutdown(&mut self) {
        // Nothing to flush: replies the guest never reads are worthless.
        self.stop_worker();
        lock(&self.engine).running = None;
        let counts: Vec<String> = self
            .server
            .stats()
            .iter()
            .map(|s| format!("{}×{} ({} ms)", s.opcode, s.count, s.nanos / 1_000_000))
            .collect();
        log::debug(format_args!(
            "virtio-fs {}: FUSE requests served, opcode×count (time in the server): {}",
            self.tag,
            counts.join(" ")
        ));
        let full = self.server.no_space_replies();
        if full > 0 {
            log::warn(format_args!(
                "{} is full on the host: the guest got ENOSPC {full} time{} writing to it",
                self.host_dir.display(),
                if full == 1 { "" } else { "s" }
            ));
        }
    }
}

/// The tag of share `n` of a VM (`kestrel-root` is the root's).
pub fn share_tag(n: usize) -> String {
    format!("kestrel-share{n}")
}

/// The tag of the guest root.
pub const ROOT_TAG: &str = "kestrel-root";

/// Whether `dir` can be served (exists, is a directory); for early,
/// one-sentence argument errors before any VM is built.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Under sudo (root with `SUDO_UID`/`SUDO_GID`), what the guest creates on a
/// share belongs to the invoking user, not to root.
fn sudo_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let var = |name: &str| std::env::var(name).ok()?.parse::<u32>().ok();
    Some((var("SUDO_UID")?, var("SUDO_GID")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::{regs, MmioTransport};
    use crate::devices::virtio::testing::*;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use crate::devices::IrqLine;
    use std::sync::atomic::Ordering;
    use vm_memory::{Bytes, GuestAddress};

    const HIPRIO: usize = 0;
    const REQUESTS: usize = 1;
    const FUSE_INIT: u32 = 26;
    const FUSE_GETATTR: u32 = 3;
    const FUSE_LOOKUP: u32 = 1;
    const FUSE_MKDIR: u32 = 9;
    const ROOT_NODE: u64 = 1;

    struct TestDir(PathBuf);
    impl TestDir {
        fn new(tag: &str) -> TestDir {
            use std::sync::atomic::AtomicU32;
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("kestrel-fs-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }
    }
    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A FUSE request: `fuse_in_header` (40 bytes) + `body`.
    fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let len = 40 + body.len() as u32;
        let mut r = Vec::new();
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(&opcode.to_le_bytes());
        r.extend_from_slice(&unique.to_le_bytes());
        r.extend_from_slice(&nodeid.to_le_bytes());
        r.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen + padding
        r.extend_from_slice(body);
        r
    }

    fn init_body() -> Vec<u8> {
        let mut b = Vec::new();
        for v in [7u32, 31, 1 << 20, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(64, 0);
        b
    }

    struct Rig {
        t: MmioTransport,
        mem: GuestMemory,
        q: Vec<DriverQueue>,
    }

    impl Rig {
        fn new(share: &Share, events: Option<EventFd>) -> Rig {
            Rig::with_irq(share, events, IrqLine::none())
        }

        fn with_irq(share: &Share, events: Option<EventFd>, irq: IrqLine) -> Rig {
            let mem = test_memory();
            let fs = Fs::new(share).unwrap();
            let mut t = MmioTransport::new(Box::new(fs), mem.clone(), Interrupt::new(irq)).unwrap();
            if let Some(events) = events {
                t.set_queue_events(events);
            }
            assert_eq!(read_reg(&mut t, regs::DEVICE_ID), device_id::FS);
            let status = negotiate(&mut t, VIRTIO_F_VERSION_1 | F_INDIRECT_DESC);
            assert_ne!(status & S_FEATURES_OK, 0);
            let q: Vec<DriverQueue> = (0..2).map(|i| DriverQueue::new(&mem, i, 64)).collect();
            for dq in &q {
                dq.setup(&mut t);
            }
            write_reg(
                &mut t,
                regs::STATUS,
                S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
            );
            Rig { t, mem, q }
        }

        /// Puts a request with a 4 KiB reply buffer on the request queue;
        /// returns the reply's address.
        fn post(&mut self, req: &[u8]) -> u64 {
            let q = &mut self.q[REQUESTS];
            let at = q.data(&self.mem, req);
            let reply = q.alloc(4096);
            q.add_descs(
                &self.mem,
                &[(at, req.len() as u32, 0), (reply, 4096, F_WRITE)],
            );
            reply
        }

        /// `(error, unique)` of the reply at `at`.
        fn reply(&self, at: u64) -> (i32, u64) {
            let error: i32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            let unique: u64 = self.mem.read_obj(GuestAddress(at + 8)).unwrap();
            (error, unique)
        }

        fn call(&mut self, req: &[u8]) -> (i32, u64) {
            let at = self.post(req);
            self.q[REQUESTS].kick(&mut self.t);
            let used = self.q[REQUESTS].used(&self.mem);
            assert_eq!(used.len(), 1);
            self.reply(at)
        }

        fn needs_reset(&mut self) -> bool {
            read_reg(&mut self.t, regs::STATUS) & S_NEEDS_RESET != 0
        }
    }

    /// Waits until `evt` is readable, at most `limit`.
    fn readable_within(evt: &EventFd, limit: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n == 1
    }

    fn share(dir: &Path, writable: bool) -> Share {
        Share {
            host_dir: dir.to_path_buf(),
            tag: "t".into(),
            writable,
        }
    }

    #[test]
    fn config_space_names_the_tag_and_one_request_queue() {
        let dir = TestDir::new("config");
        let fs = Fs::new(&Share {
            tag: ROOT_TAG.into(),
            ..share(&dir.0, false)
        })
        .unwrap();
        let mut tag = [0u8; TAG_LEN];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..ROOT_TAG.len()], ROOT_TAG.as_bytes());
        assert!(tag[ROOT_TAG.len()..].iter().all(|&b| b == 0));
        let mut n = [0u8; 4];
        fs.read_config(TAG_LEN as u64, &mut n);
        assert_eq!(u32::from_le_bytes(n), REQUEST_QUEUES);
        let mut past = [0xffu8; 8];
        fs.read_config(u64::MAX - 2, &mut past);
        assert_eq!(past, [0; 8]);
        assert_eq!(fs.queue_max_sizes(), [QUEUE_SIZE, QUEUE_SIZE]);
        assert_eq!(fs.device_type(), 26);
    }

    #[test]
    fn bad_shares_are_refused_with_one_sentence() {
        let dir = TestDir::new("bad");
        for tag in ["", "a b", &"x".repeat(37)] {
            let e = Fs::new(&Share {
                tag: tag.into(),
                ..share(&dir.0, false)
            })
            .err()
            .unwrap();
            assert!(matches!(e, FsError::Tag(_)), "{e}");
        }
        let missing = dir.0.join("missing");
        let e = Fs::new(&share(&missing, false)).err().unwrap().to_string();
        assert!(
            e.starts_with(&format!("cannot share {}", missing.display())),
            "{e}"
        );
        assert!(check_dir(&missing).is_err());
        assert!(check_dir(&dir.0).is_ok());
    }

    #[test]
    fn serves_fuse_requests_and_keeps_a_read_only_share_read_only() {
        let dir = TestDir::new("serve");
        std::fs::write(dir.0.join("file"), b"data").unwrap();
        let mut rig = Rig::new(&share(&dir.0, false), None);
        assert_eq!(rig.call(&request(FUSE_INIT, 1, 0, &init_body())), (0, 1));
        assert_eq!(
            rig.call(&request(FUSE_GETATTR, 2, ROOT_NODE, &[0; 16])),
            (0, 2)
        );
        assert_eq!(
            rig.call(&request(FUSE_LOOKUP, 3, ROOT_NODE, b"file\0")),
            (0, 3)
        );
        // Crafted names never leave the share.
        for (unique, name) in [(4, &b"..\0"[..]), (5, b"a/b\0")] {
            let (error, u) = rig.call(&request(FUSE_LOOKUP, unique, ROOT_NODE, name));
            assert!(error < 0, "{name:?}");
            assert_eq!(u, unique);
        }
        // A name that is not there is a negative entry (node 0), not an
        // error: the kernel keeps it for the entry timeout.
        assert_eq!(
            rig.call(&request(FUSE_LOOKUP, 6, ROOT_NODE, b"missing\0")),
            (0, 6)
        );
        let mut mkdir = Vec::new();
        mkdir.extend_from_slice(&0o755u32.to_le_bytes());
        mkdir.extend_from_slice(&0u32.to_le_bytes());
        mkdir.extend_from_slice(b"new\0");
        assert_eq!(
            rig.call(&request(FUSE_MKDIR, 7, ROOT_NODE, &mkdir)),
            (-libc::EROFS, 7)
        );
        assert!(!dir.0.join("new").exists());
        // Garbage and a truncated header get a used entry, not a crash.
        assert_eq!(rig.q[REQUESTS].used(&rig.mem).len(), 0);
        rig.post(b"garbage");
        rig.q[REQUESTS].kick(&mut rig.t);
        assert_eq!(rig.q[REQUESTS].used(&rig.mem).len(), 1);
        assert!(!rig.needs_reset());
        // The high-priority queue takes FORGET without a reply.
        let mut forget = Vec::new();
        forget.extend_from_slice(&u64::MAX.to_le_bytes());
        rig.q[HIPRIO].add_out(&rig.mem, &request(2, 8, 12345, &forget));
        rig.q[HIPRIO].kick(&mut rig.t);
        assert_eq!(rig.q[HIPRIO].used(&rig.mem).len(), 1);
        assert!(!rig.needs_reset());
    }

    #[test]
    fn a_writable_share_is_written() {
        let dir = TestDir::new("rw");
        let mut rig = Rig::new(&share(&dir.0, true), None);
        assert_eq!(rig.call(&request(FUSE_INIT, 1, 0, &init_body())).0, 0);
        let mut mkdir = Vec::new();
        mkdir.extend_from_slice(&0o755u32.to_le_bytes());
        mkdir.extend_from_slice(&0u32.to_le_bytes());
        mkdir.extend_from_slice(b"new\0");
        assert_eq!(rig.call(&request(FUSE_MKDIR, 2, ROOT_NODE, &mkdir)), (0, 2));
        assert!(dir.0.join("new").is_dir());
    }

    #[test]
    fn a_bad_ring_breaks_the_device_until_reset() {
        let dir = TestDir::new("ring");
        let mut rig = Rig::new(&share(&dir.0, false), None);
        rig.q[REQUESTS].set_avail_idx(&rig.mem, 1000);
        rig.q[REQUESTS].kick(&mut rig.t);
        assert!(rig.needs_reset());
        // A buffer outside RAM on a fresh device: served as a failed chain
        // or a broken device, never a crash.
        let mut rig = Rig::new(&share(&dir.0, false), None);
        rig.q[REQUESTS].add_descs(
            &rig.mem,
            &[(0xdead_0000, 64, 0), (0xdead_1000, 64, F_WRITE)],
        );
        rig.q[REQUESTS].kick(&mut rig.t);
        write_reg(&mut rig.t, regs::STATUS, 0);
        assert!(!rig.needs_reset());
    }

    #[test]
    fn the_worker_serves_the_eventfd_and_stops_at_reset() {
        let dir = TestDir::new("worker");
        let events = EventFd::new(0).unwrap();
        let kick = events.try_clone().unwrap();
        let irq = EventFd::new(0).unwrap();
        let mut rig = Rig::with_irq(
            &share(&dir.0, false),
            Some(events),
            IrqLine::new(irq.try_clone().unwrap()),
        );
        let at = rig.post(&request(FUSE_INIT, 9, 0, &init_body()));
        // As KVM does for a write to the notify register.
        kick.write(1).unwrap();
        // The worker answers asynchronously and raises the interrupt.
        assert!(readable_within(&irq, Duration::from_secs(30)), "no reply");
        irq.read().unwrap();
        assert_eq!(rig.q[REQUESTS].used(&rig.mem).len(), 1);
        assert_eq!(rig.reply(at), (0, 9));
        // It has run, so it has named itself.
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .collect();
        assert!(names.iter().any(|n| n == &WORKER_NAME[..15]), "{names:?}");
        write_reg(&mut rig.t, regs::STATUS, 0);
        assert!(!rig.needs_reset());
    }
}

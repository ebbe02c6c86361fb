//! The device on test guest memory: real FUSE requests in descriptor
//! chains built by virtio-queue's mock driver, replies read back from the
//! device-writable buffers and the used ring.

mod common;

use std::sync::Arc;

use common::*;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use virtiofs_lite::abi::{self, opcode as op, Wire};
use virtiofs_lite::{FsDevice, Server, ServerConfig};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const MEM_SIZE: u64 = 16 << 20;
const QUEUE_LEN: u16 = 256;

/// A mock guest: memory, a split queue, and a bump allocator for buffers.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    queue: Queue,
    dev: FsDevice,
    next_desc: u16,
    next_used: u16,
    next_buf: u64,
    unique: u64,
}

/// Where one request's descriptors point.
enum Buf {
    /// A readable chunk of the request of this many bytes (0 = the rest).
    Read(usize),
    /// A writable buffer of this many bytes.
    Write(u32),
    /// A descriptor at an address of our choosing (readable or writable).
    At(u64, u32, bool),
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap, share: &std::path::Path) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_LEN);
        let queue: Queue = vq.create_queue().unwrap();
        let server = Arc::new(Server::new(share, ServerConfig::default()).unwrap());
        Self {
            mem,
            vq,
            queue,
            dev: FsDevice::new(server, "test", 1).unwrap(),
            next_desc: 0,
            next_used: 0,
            next_buf: 0x10_0000,
            unique: 0,
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next_buf;
        self.next_buf += (len + 63) & !63;
        assert!(self.next_buf < MEM_SIZE);
        a
    }

    /// Submits `req` laid out as `layout`; returns (used len, reply bytes).
    fn submit(&mut self, req: &[u8], layout: &[Buf]) -> (u32, Vec<u8>) {
        if self.next_desc as usize + layout.len() > QUEUE_LEN as usize {
            self.next_desc = 0;
        }
        let mut descs = Vec::new();
        let mut writable = Vec::new();
        let mut pos = 0;
        for (i, b) in layout.iter().enumerate() {
            let (addr, len, flags) = match *b {
                Buf::Read(n) => {
                    let n = if n == 0 {
                        req.len() - pos
                    } else {
                        n.min(req.len() - pos)
                    };
                    let a = self.alloc(n as u64);
                    self.mem
                        .write_slice(&req[pos..pos + n], GuestAddress(a))
                        .unwrap();
                    pos += n;
                    (a, n as u32, 0)
                }
                Buf::Write(n) => {
                    let a = self.alloc(u64::from(n));
                    writable.push((a, n));
                    (a, n, F_WRITE)
                }
                Buf::At(a, n, w) => (a, n, if w { F_WRITE } else { 0 }),
            };
            let last = i + 1 == layout.len();
            let next = self.next_desc + i as u16 + 1;
            descs.push(RawDescriptor::from(Descriptor::new(
                addr,
                len,
                flags | if last { 0 } else { F_NEXT },
                if last { 0 } else { next },
            )));
        }
        self.vq.add_desc_chains(&descs, self.next_desc).unwrap();
        self.next_desc += layout.len() as u16;
        self.dev.process_queue(&mut self.queue, self.mem).unwrap();
        let used = self
            .vq
            .used()
            .ring()
            .ref_at(self.next_used as usize % QUEUE_LEN as usize)
            .unwrap()
            .load();
        self.next_used += 1;
        assert_eq!(
            self.vq.used().idx().load(),
            self.next_used,
            "one chain used"
        );
        let mut reply = Vec::new();
        for (a, n) in writable {
            let mut b = vec![0u8; n as usize];
            self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            reply.extend(b);
        }
        reply.truncate(used.len() as usize);
        (used.len(), reply)
    }

    /// A request of `opcode` in one readable descriptor with a reply room of `room` bytes.
    fn call(&mut self, opcode: u32, node: u64, body: &[u8], room: u32) -> (i32, Vec<u8>) {
        self.unique += 1;
        let req = request(opcode, node, self.unique, body);
        let (_, reply) = self.submit(&req, &[Buf::Read(0), Buf::Write(room)]);
        parse_reply(&reply, self.unique)
    }
}

fn setup() -> (tempfile::TempDir, GuestMemoryMmap) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("dir")).unwrap();
    std::fs::write(tmp.path().join("hello.txt"), b"hello through a virtqueue\n").unwrap();
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(tmp.path().join("big"), big).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    (tmp, mem)
}

fn init(g: &mut Guest<'_>) {
    let (e, p) = g.call(op::INIT, 0, &init_body(), 4096);
    assert_eq!(e, 0);
    assert_eq!(abi::InitOut::from_bytes(&p).unwrap().max_write, 1 << 20);
}

#[test]
fn init_lookup_getattr_open_read_over_the_queue() {
    let (tmp, mem) = setup();
    let mut g = Guest::new(&mem, tmp.path());
    init(&mut g);

    let (e, p) = g.call(op::LOOKUP, ROOT, &cstr("hello.txt"), 4096);
    assert_eq!(e, 0);
    let entry = abi::EntryOut::from_bytes(&p).unwrap();
    assert_eq!(entry.attr.size, 26);

    let (e, p) = g.call(
        op::GETATTR,
        entry.nodeid,
        &enc(&abi::GetattrIn::default()),
        4096,
    );
    assert_eq!(e, 0);
    assert_eq!(abi::AttrOut::from_bytes(&p).unwrap().attr.size, 26);

    let (e, p) = g.call(op::OPEN, entry.nodeid, &enc(&abi::OpenIn::default()), 4096);
    assert_eq!(e, 0);
    let fh = abi::OpenOut::from_bytes(&p).unwrap().fh;

    // The request itself split over three readable descriptors (header cut
    // in the middle), the reply over a header buffer and a data buffer.
    g.unique += 1;
    let req = request(
        op::READ,
        entry.nodeid,
        g.unique,
        &enc(&abi::ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        }),
    );
    let (used, reply) = g.submit(
        &req,
        &[
            Buf::Read(7),
            Buf::Read(40),
            Buf::Read(0),
            Buf::Write(16),
            Buf::Write(4096),
        ],
    );
    assert_eq!(used, 16 + 26);
    let (e, data) = parse_reply(&reply, g.unique);
    assert_eq!(
        (e, data.as_slice()),
        (0, &b"hello through a virtqueue\n"[..])
    );
}

#[test]
fn a_read_larger_than_one_descriptor_spans_many() {
    let (tmp, mem) = setup();
    let mut g = Guest::new(&mem, tmp.path());
    init(&mut g);
    let (_, p) = g.call(op::LOOKUP, ROOT, &cstr("big"), 4096);
    let node = abi::EntryOut::from_bytes(&p).unwrap().nodeid;
    let (_, p) = g.call(op::OPEN, node, &enc(&abi::OpenIn::default()), 4096);
    let fh = abi::OpenOut::from_bytes(&p).unwrap().fh;

    // Like the kernel: a 16-byte header buffer, then 64 pages for 256 KiB.
    let mut layout = vec![Buf::Read(0), Buf::Write(16)];
    layout.extend((0..64).map(|_| Buf::Write(4096)));
    g.unique += 1;
    let req = request(
        op::READ,
        node,
        g.unique,
        &enc(&abi::ReadIn {
            fh,
            offset: 100_000,
            size: 256 * 1024,
            ..Default::default()
        }),
    );
    let (used, reply) = g.submit(&req, &layout);
    assert_eq!(used, 16 + 256 * 1024);
    let (e, data) = parse_reply(&reply, g.unique);
    assert_eq!(e, 0);
    let want: Vec<u8> = (100_000..100_000 + 256 * 1024u32)
        .map(|i| (i % 253) as u8)
        .collect();
    assert_eq!(data, want);

    // Asking for more than the buffers hold: clamped to the room.
    g.unique += 1;
    let req = request(
        op::READ,
        node,
        g.unique,
        &enc(&abi::ReadIn {
            fh,
            size: 1 << 20,
            ..Default::default()
        }),
    );
    let (used, reply) = g.submit(
        &req,
        &[
            Buf::Read(0),
            Buf::Write(16),
            Buf::Write(1000),
            Buf::Write(24),
        ],
    );
    assert_eq!(used, 1040);
    assert_eq!(parse_reply(&reply, g.unique).1.len(), 1024);
}

#[test]
fn readdirplus_over_the_queue() {
    let (tmp, mem) = setup();
    let mut g = Guest::new(&mem, tmp.path());
    init(&mut g);
    // The kernel's INIT offers FUSE_NO_OPENDIR_SUPPORT: OPENDIR is ENOSYS
    // and READDIRs carry handle 0.
    let (e, _) = g.call(op::OPENDIR, ROOT, &enc(&abi::OpenIn::default()), 4096);
    assert_eq!(e, libc::ENOSYS);
    let fh = 0;
    let (e, p) = g.call(
        op::READDIRPLUS,
        ROOT,
        &enc(&abi::ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        }),
        4096 + 16,
    );
    assert_eq!(e, 0);
    let mut names = Vec::new();
    let mut pos = 0;
    while pos < p.len() {
        let entry = abi::EntryOut::from_bytes(&p[pos..]).unwrap();
        let d = abi::Dirent::from_bytes(&p[pos + abi::EntryOut::SIZE..]).unwrap();
        let s = pos + abi::EntryOut::SIZE + abi::Dirent::SIZE;
        let name = String::from_utf8(p[s..s + d.namelen as usize].to_vec()).unwrap();
        if name == "hello.txt" {
            assert_eq!(entry.attr.size, 26);
            assert_ne!(entry.nodeid, 0);
        }
        names.push(name);
        pos += abi::direntplus_size(d.namelen as usize);
    }
    names.sort();
    assert_eq!(names, [".", "..", "big", "dir", "hello.txt"]);
}

#[test]
fn malformed_requests_and_bad_descriptors_never_break_the_queue() {
    let (tmp, mem) = setup();
    let mut g = Guest::new(&mem, tmp.path());
    init(&mut g);

    // Shorter than a FUSE header: no reply, chain still returned.
    let (used, _) = g.submit(&[1, 2, 3], &[Buf::Read(0), Buf::Write(64)]);
    assert_eq!(used, 0);
    // The len field lying (claims 4 KiB): an EINVAL reply.
    g.unique += 1;
    let mut req = request(op::GETATTR, ROOT, g.unique, &[0; 16]);
    req[0..4].copy_from_slice(&4096u32.to_le_bytes());
    let (_, reply) = g.submit(&req, &[Buf::Read(0), Buf::Write(128)]);
    assert_eq!(parse_reply(&reply, g.unique).0, libc::EINVAL);
    // A reply that does not fit (GETATTR needs 120 bytes): ERANGE in 16.
    let (e, p) = g.call(op::GETATTR, ROOT, &enc(&abi::GetattrIn::default()), 40);
    assert_eq!((e, p.len()), (libc::ERANGE, 0));
    // No writable descriptor at all: nothing written, used length 0.
    g.unique += 1;
    let req = request(op::GETATTR, ROOT, g.unique, &[0; 16]);
    assert_eq!(g.submit(&req, &[Buf::Read(0)]).0, 0);
    // Readable descriptor outside guest memory.
    let (used, _) = g.submit(
        &[],
        &[Buf::At(MEM_SIZE + 0x1000, 64, false), Buf::Write(256)],
    );
    assert_eq!(used, 0);
    // Writable descriptor outside guest memory, and one straddling its end.
    g.unique += 1;
    let req = request(op::GETATTR, ROOT, g.unique, &[0; 16]);
    assert_eq!(
        g.submit(&req, &[Buf::Read(0), Buf::At(u64::MAX - 100, 4096, true)])
            .0,
        0
    );
    g.unique += 1;
    let req = request(op::GETATTR, ROOT, g.unique, &[0; 16]);
    assert_eq!(
        g.submit(&req, &[Buf::Read(0), Buf::At(MEM_SIZE - 64, 4096, true)])
            .0,
        0
    );
    // Nothing was written past the end either (memory ends there anyway),
    // and the queue still serves a good request afterwards.
    let (e, p) = g.call(op::LOOKUP, ROOT, &cstr("hello.txt"), 4096);
    assert_eq!(e, 0);
    assert_eq!(abi::EntryOut::from_bytes(&p).unwrap().attr.size, 26);
    // A FORGET needs no reply: used length 0.
    g.unique += 1;
    let node = abi::EntryOut::from_bytes(&p).unwrap().nodeid;
    let req = request(
        op::FORGET,
        node,
        g.unique,
        &enc(&abi::ForgetIn { nlookup: 1 }),
    );
    assert_eq!(g.submit(&req, &[Buf::Read(0)]).0, 0);
    assert_eq!(g.dev.server().fs().lookup_count(node), None);
}

#[test]
fn config_space_holds_the_tag_and_queue_count() {
    let (tmp, _mem) = setup();
    let server = Arc::new(Server::new(tmp.path(), ServerConfig::default()).unwrap());
    let dev = FsDevice::new(server.clone(), "kestrel-root", 3).unwrap();
    let c = dev.config_space();
    assert_eq!(&c[..12], b"kestrel-root");
    assert!(c[12..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(c[36..40].try_into().unwrap()), 3);
    assert_eq!(dev.num_queues(), 4);
    let mut b = [0xffu8; 8];
    dev.read_config(36, &mut b);
    assert_eq!(b, [3, 0, 0, 0, 0, 0, 0, 0]);
    assert!(FsDevice::new(server.clone(), &"x".repeat(37), 1).is_err());
    assert!(FsDevice::new(server.clone(), "", 1).is_err());
    assert!(FsDevice::new(server, "ok", 0).is_err());
    assert_eq!(
        virtiofs_lite::vhost::VhostFsBackend::thread_masks(4),
        vec![0b11, 0b100, 0b1000]
    );
}

#[test]
fn an_avail_index_far_ahead_is_an_error_not_a_spin() {
    let (tmp, mem) = setup();
    let mut g = Guest::new(&mem, tmp.path());
    init(&mut g);
    // A hostile driver claims 1000 new chains in a 256-entry queue. Before
    // the check, process_queue looped for ever here (the test would hang).
    let idx = g.vq.avail().idx().load();
    g.vq.avail().idx().store(idx.wrapping_add(1000));
    let err = g
        .dev
        .process_queue(&mut g.queue, g.mem)
        .expect_err("a bogus avail index must be refused");
    assert!(
        matches!(
            err,
            virtiofs_lite::DeviceError::BadAvailIndex {
                ahead: 1000,
                size: QUEUE_LEN,
                ..
            }
        ),
        "{err}"
    );
    // Nothing was used on the way.
    assert_eq!(g.vq.used().idx().load(), g.next_used);
}

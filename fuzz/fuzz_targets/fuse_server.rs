//! The FUSE server: a guest sends any bytes as requests. The input is a
//! sequence of requests, each `[u16 length][bytes]`, served after an INIT by
//! one server over a small fixture tree (read-only or writable: the first
//! byte chooses). Every request gets a well-formed reply that fits its room,
//! or none; nothing panics and nothing outside the fixture changes.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtiofs_lite::abi::{self, Wire};
use virtiofs_lite::server::{Server, ServerConfig};
use virtiofs_lite::FsConfig;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().join("share");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("file.txt"), b"hello\n").unwrap();
        std::fs::write(root.join("sub/deeper/data"), vec![7u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("../file.txt", root.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
        std::fs::write(dir.path().join("outside"), b"never served").unwrap();
        Fixture { _dir: dir, root }
    })
}

fn init_request() -> Vec<u8> {
    let body = abi::InitIn {
        major: abi::KERNEL_VERSION,
        minor: abi::KERNEL_MINOR_VERSION,
        max_readahead: 65536,
        flags: u32::MAX,
        ..Default::default()
    };
    let mut b = Vec::new();
    body.encode(&mut b);
    let header = abi::InHeader {
        len: (abi::InHeader::SIZE + b.len()) as u32,
        opcode: abi::opcode::INIT,
        unique: 1,
        nodeid: 0,
        ..Default::default()
    };
    let mut req = Vec::new();
    header.encode(&mut req);
    req.extend(b);
    req
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let server = Server::new(
        &f.root,
        ServerConfig {
            fs: FsConfig {
                writable: mode & 1 == 1,
                ..FsConfig::default()
            },
            ..ServerConfig::default()
        },
    )
    .expect("the fixture is servable");
    let _ = server.handle(&init_request(), 4096);
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let req = &rest[..len.min(rest.len())];
        rest = &rest[req.len()..];
        let room = 256 + (usize::from(mode) << 8);
        if let Some(reply) = server.handle(req, room) {
            assert!(
                reply.len() <= room.max(abi::OutHeader::SIZE),
                "reply larger than its room"
            );
            let out = abi::OutHeader::from_bytes(&reply).expect("a reply starts with its header");
            assert_eq!(
                out.len as usize,
                reply.len(),
                "the header says the reply's length"
            );
        }
    }
    assert_eq!(
        std::fs::read(f.root.parent().unwrap().join("outside")).unwrap(),
        b"never served"
    );
});

//! A tiny FUSE client for tests: builds request bytes, parses replies.
#![allow(dead_code)]

use std::path::Path;

use virtiofs_lite::abi::{self, opcode as op, Wire};
use virtiofs_lite::{FsConfig, Server, ServerConfig};

pub const ROOT: u64 = abi::ROOT_ID;
pub const ROOM: usize = 2 << 20;

/// Request bytes: header + body, `len` set right.
pub fn request(opcode: u32, nodeid: u64, unique: u64, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    abi::InHeader {
        len: (abi::InHeader::SIZE + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        ..Default::default()
    }
    .encode(&mut r);
    r.extend_from_slice(body);
    r
}

pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn enc<T: Wire>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode(&mut out);
    out
}

/// A reply: the errno (positive, 0 = success) and the payload.
pub fn parse_reply(reply: &[u8], unique: u64) -> (i32, Vec<u8>) {
    let h = abi::OutHeader::from_bytes(reply).expect("reply header");
    assert_eq!(h.len as usize, reply.len(), "out header len matches");
    assert_eq!(h.unique, unique, "reply answers our request");
    (-h.error, reply[abi::OutHeader::SIZE..].to_vec())
}

/// The body of a READ, READDIR or READDIRPLUS.
pub fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    enc(&abi::ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    })
}

/// INIT offering every flag, as a recent kernel offers what it knows.
pub fn init_body() -> Vec<u8> {
    init_body_with(0xffff_ffff)
}

pub fn init_body_with(flags: u32) -> Vec<u8> {
    enc(&abi::InitIn {
        major: 7,
        minor: 37,
        max_readahead: 128 * 1024,
        flags,
        ..Default::default()
    })
}

pub struct Client {
    pub server: Server,
    unique: u64,
}

impl Client {
    pub fn new(root: &Path, writable: bool) -> Self {
        Self::with_config(
            root,
            ServerConfig {
                fs: FsConfig {
                    writable,
                    ..FsConfig::default()
                },
                ..ServerConfig::default()
            },
        )
    }

    pub fn with_config(root: &Path, cfg: ServerConfig) -> Self {
        Self::with_init(root, cfg, 0xffff_ffff)
    }

    /// A client whose INIT offers only `flags` (an older kernel's).
    pub fn with_init(root: &Path, cfg: ServerConfig, flags: u32) -> Self {
        let mut c = Self {
            server: Server::new(root, cfg).expect("server"),
            unique: 0,
        };
        let (e, _) = c.call(op::INIT, 0, &init_body_with(flags));
        assert_eq!(e, 0);
        c
    }

    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.call_room(opcode, nodeid, body, ROOM)
    }

    pub fn call_room(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
        room: usize,
    ) -> (i32, Vec<u8>) {
        self.unique += 1;
        let req = request(opcode, nodeid, self.unique, body);
        let reply = self.server.handle(&req, room).expect("a reply");
        assert!(reply.len() <= room);
        parse_reply(&reply, self.unique)
    }

    /// Sends a request that expects no reply.
    pub fn send(&mut self, opcode: u32, nodeid: u64, body: &[u8]) {
        self.unique += 1;
        let req = request(opcode, nodeid, self.unique, body);
        assert!(self.server.handle(&req, ROOM).is_none());
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<abi::EntryOut, i32> {
        self.lookup_raw(parent, &cstr(name))
    }

    pub fn lookup_raw(&mut self, parent: u64, body: &[u8]) -> Result<abi::EntryOut, i32> {
        match self.call(op::LOOKUP, parent, body) {
            (0, p) => Ok(abi::EntryOut::from_bytes(&p).expect("entry")),
            (e, _) => Err(e),
        }
    }

    pub fn getattr(&mut self, node: u64) -> Result<abi::Attr, i32> {
        match self.call(op::GETATTR, node, &enc(&abi::GetattrIn::default())) {
            (0, p) => Ok(abi::AttrOut::from_bytes(&p).expect("attr").attr),
            (e, _) => Err(e),
        }
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        self.open_out(node, flags).map(|o| o.fh)
    }

    /// OPEN's whole reply (handle and open flags).
    pub fn open_out(&mut self, node: u64, flags: i32) -> Result<abi::OpenOut, i32> {
        let body = enc(&abi::OpenIn {
            flags: flags as u32,
            open_flags: 0,
        });
        match self.call(op::OPEN, node, &body) {
            (0, p) => Ok(abi::OpenOut::from_bytes(&p).expect("open")),
            (e, _) => Err(e),
        }
    }

    /// CREATE of `name` in `parent`: the new entry and OPEN's part of the
    /// reply.
    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(abi::EntryOut, abi::OpenOut), i32> {
        let mut body = enc(&abi::CreateIn {
            flags: flags as u32,
            mode,
            ..Default::default()
        });
        body.extend(cstr(name));
        match self.call(op::CREATE, parent, &body) {
            (0, p) => Ok((
                abi::EntryOut::from_bytes(&p).expect("entry"),
                abi::OpenOut::from_bytes(&p[abi::EntryOut::SIZE..]).expect("open"),
            )),
            (e, _) => Err(e),
        }
    }

    /// OPENDIR as the kernel does it: ENOSYS (the server takes up the
    /// kernel's FUSE_NO_OPENDIR_SUPPORT) means success with handle 0, and
    /// READDIRs then name the directory by node alone.
    pub fn opendir(&mut self, node: u64) -> Result<u64, i32> {
        match self.call(op::OPENDIR, node, &enc(&abi::OpenIn::default())) {
            (0, p) => Ok(abi::OpenOut::from_bytes(&p).expect("open").fh),
            (libc::ENOSYS, _) => Ok(0),
            (e, _) => Err(e),
        }
    }

    /// The error listing `node` meets: at OPENDIR, or at the first READDIR
    /// when OPENDIR costs no message; 0 if it can be listed.
    pub fn list_error(&mut self, node: u64) -> i32 {
        match self.opendir(node) {
            Err(e) => e,
            Ok(fh) => {
                let body = read_in(fh, 0, 4096);
                let e = self.call(op::READDIR, node, &body).0;
                self.release(node, fh, true);
                e
            }
        }
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let body = read_in(fh, offset, size);
        match self.call(op::READ, node, &body) {
            (0, p) => Ok(p),
            (e, _) => Err(e),
        }
    }

    pub fn release(&mut self, node: u64, fh: u64, dir: bool) {
        let body = enc(&abi::ReleaseIn {
            fh,
            ..Default::default()
        });
        if dir && fh == 0 {
            // No OPENDIR was sent, so no RELEASEDIR either (the kernel's way).
            return;
        }
        let opc = if dir { op::RELEASEDIR } else { op::RELEASE };
        assert_eq!(self.call(opc, node, &body).0, 0);
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        match self.call(op::READLINK, node, &[]) {
            (0, p) => Ok(p),
            (e, _) => Err(e),
        }
    }

    pub fn forget(&mut self, node: u64, n: u64) {
        self.send(op::FORGET, node, &enc(&abi::ForgetIn { nlookup: n }));
    }

    /// All entries of a directory via READDIRPLUS in `chunk`-byte replies:
    /// (name, entry) pairs, `.` and `..` included with nodeid 0.
    pub fn readdirplus(&mut self, dir: u64, chunk: u32) -> Vec<(String, abi::EntryOut)> {
        let fh = self.opendir(dir).expect("opendir");
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let body = read_in(fh, offset, chunk);
            let (e, p) = self.call(op::READDIRPLUS, dir, &body);
            assert_eq!(e, 0, "readdirplus");
            if p.is_empty() {
                break;
            }
            let mut pos = 0;
            while pos < p.len() {
                let entry = abi::EntryOut::from_bytes(&p[pos..]).expect("entry");
                let d = abi::Dirent::from_bytes(&p[pos + abi::EntryOut::SIZE..]).expect("dirent");
                let start = pos + abi::EntryOut::SIZE + abi::Dirent::SIZE;
                let name =
                    String::from_utf8(p[start..start + d.namelen as usize].to_vec()).unwrap();
                out.push((name, entry));
                offset = d.off;
                pos += abi::direntplus_size(d.namelen as usize);
            }
        }
        self.release(dir, fh, true);
        out
    }

    /// One READDIR reply of at most `chunk` bytes on handle `fh` from
    /// `offset`: (name, offset cookie after it) pairs.
    pub fn readdir_page(
        &mut self,
        dir: u64,
        fh: u64,
        offset: u64,
        chunk: u32,
    ) -> Vec<(String, u64)> {
        let body = read_in(fh, offset, chunk);
        let (e, p) = self.call(op::READDIR, dir, &body);
        assert_eq!(e, 0, "readdir");
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < p.len() {
            let d = abi::Dirent::from_bytes(&p[pos..]).expect("dirent");
            let start = pos + abi::Dirent::SIZE;
            let name = String::from_utf8(p[start..start + d.namelen as usize].to_vec()).unwrap();
            out.push((name, d.off));
            pos += abi::dirent_size(d.namelen as usize);
        }
        out
    }

    /// All names of a directory via READDIR in `chunk`-byte replies.
    pub fn readdir(&mut self, dir: u64, chunk: u32) -> Vec<String> {
        let fh = self.opendir(dir).expect("opendir");
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = self.readdir_page(dir, fh, offset, chunk);
            let Some(&(_, last)) = page.last() else {
                break;
            };
            offset = last;
            out.extend(page.into_iter().map(|(name, _)| name));
        }
        self.release(dir, fh, true);
        out
    }
}

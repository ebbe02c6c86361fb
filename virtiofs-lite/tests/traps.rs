//! The traps of a virtio-fs server, driven with raw FUSE requests: symlink
//! escapes, crafted names, device nodes and FIFOs, bogus FORGETs, more
//! entries than RLIMIT_NOFILE, read-only and writable shares.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;
use virtiofs_lite::abi::{self, opcode as op, Wire};
use virtiofs_lite::{FsConfig, ServerConfig};

const S_IFMT: u32 = libc::S_IFMT;

/// share/ inside a temp dir, with `secret` next to (outside) the share.
fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("secret"), b"outside the share").unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir_all(share.join("sub/deeper")).unwrap();
    std::fs::write(share.join("hello.txt"), b"hello, guest\n").unwrap();
    std::fs::write(share.join("sub/inner.txt"), b"inner").unwrap();
    (tmp, share)
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// A snapshot of a tree: path → (mode, size, mtime, link target).
fn snapshot(root: &Path) -> BTreeMap<String, (u32, u64, i64, Option<String>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let target = m.file_type().is_symlink().then(|| {
            std::fs::read_link(&p)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        });
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.insert(
            p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
            (m.mode(), m.size(), m.mtime(), target),
        );
    }
    out
}

#[test]
fn symlinks_pointing_outside_are_read_as_links_never_followed() {
    let (tmp, share) = fixture();
    std::os::unix::fs::symlink("../../secret", share.join("sub/rel")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", share.join("sub/passwd")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret"), share.join("sub/abs")).unwrap();
    std::os::unix::fs::symlink("/etc", share.join("sub/etc")).unwrap();
    let mut c = Client::new(&share, false);

    let sub = c.lookup(ROOT, "sub").unwrap().nodeid;
    for (name, target) in [
        ("rel", "../../secret".to_string()),
        ("passwd", "../../etc/passwd".to_string()),
        (
            "abs",
            tmp.path().join("secret").to_string_lossy().into_owned(),
        ),
    ] {
        let e = c.lookup(sub, name).unwrap();
        assert_eq!(
            e.attr.mode & S_IFMT,
            libc::S_IFLNK,
            "{name} is seen as a link"
        );
        assert_eq!(c.getattr(e.nodeid).unwrap().mode & S_IFMT, libc::S_IFLNK);
        assert_eq!(c.readlink(e.nodeid).unwrap(), target.as_bytes());
        // Opening the link itself never reaches its target.
        assert_eq!(c.open(e.nodeid, libc::O_RDONLY), Err(libc::ELOOP));
        assert_eq!(c.list_error(e.nodeid), libc::ELOOP);
    }
    // A link to a directory outside is no way in: looking up through it fails.
    let etc = c.lookup(sub, "etc").unwrap().nodeid;
    assert_eq!(c.lookup(etc, "passwd").err(), Some(libc::ENOTDIR));
    assert_eq!(c.lookup(etc, "hostname").err(), Some(libc::ENOTDIR));
    // READLINK of something that is not a link is refused.
    let hello = c.lookup(ROOT, "hello.txt").unwrap().nodeid;
    assert_eq!(c.readlink(hello), Err(libc::EINVAL));
}

#[test]
fn crafted_lookup_names_are_refused_before_touching_the_host() {
    let (_tmp, share) = fixture();
    let mut c = Client::new(&share, false);
    let sub = c.lookup(ROOT, "sub").unwrap().nodeid;
    for parent in [ROOT, sub] {
        for name in [
            "..",
            ".",
            "",
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "a/b",
            "/",
        ] {
            assert_eq!(
                c.lookup(parent, name).err(),
                Some(libc::EINVAL),
                "LOOKUP {name:?} under {parent}"
            );
        }
    }
    // A name with no NUL terminator, and one too long.
    assert_eq!(c.lookup_raw(ROOT, b"hello.txt").err(), Some(libc::EINVAL));
    assert_eq!(
        c.lookup(ROOT, &"x".repeat(300)).err(),
        Some(libc::ENAMETOOLONG)
    );
    // An embedded NUL just ends the name: "hello.txt\0../secret" is hello.txt.
    let e = c.lookup_raw(ROOT, b"hello.txt\0../../secret\0").unwrap();
    assert_eq!(e.attr.size, 13);
    // Unknown or zero node ids are not a way anywhere.
    assert_eq!(c.lookup(0, "hello.txt").err(), Some(libc::EBADF));
    assert_eq!(c.lookup(123_456, "hello.txt").err(), Some(libc::EBADF));
    // The same names in a writable share's creating opcodes.
    let mut w = Client::new(&share, true);
    let mkdir = |name: &str| {
        let mut b = enc(&abi::MkdirIn {
            mode: 0o755,
            umask: 0,
        });
        b.extend(cstr(name));
        b
    };
    for name in ["..", ".", "../escaped", "/tmp/escaped", ""] {
        assert_eq!(
            w.call(op::MKDIR, ROOT, &mkdir(name)).0,
            libc::EINVAL,
            "{name:?}"
        );
    }
    assert!(!share.parent().unwrap().join("escaped").exists());
    let mut rename = enc(&abi::RenameIn { newdir: ROOT });
    rename.extend(cstr("hello.txt"));
    rename.extend(cstr("../moved"));
    assert_eq!(w.call(op::RENAME, ROOT, &rename).0, libc::EINVAL);
    assert!(share.join("hello.txt").exists());
}

#[test]
fn device_nodes_and_fifos_inside_the_share_are_never_opened() {
    let (_tmp, share) = fixture();
    mkfifo(&share.join("fifo"));
    let dev = CString::new(share.join("null").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `dev` is a NUL-terminated path; mknod of a char device (1:3).
    let have_dev =
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
    let mut c = Client::new(&share, true);

    let fifo = c.lookup(ROOT, "fifo").unwrap();
    assert_eq!(fifo.attr.mode & S_IFMT, libc::S_IFIFO);
    // Opening a FIFO with no writer would block this thread forever if the
    // server tried; it must refuse at once, for reading and for writing.
    assert_eq!(c.open(fifo.nodeid, libc::O_RDONLY), Err(libc::EPERM));
    assert_eq!(c.open(fifo.nodeid, libc::O_WRONLY), Err(libc::EPERM));
    assert_eq!(c.list_error(fifo.nodeid), libc::EPERM);
    if have_dev {
        let null = c.lookup(ROOT, "null").unwrap();
        assert_eq!(null.attr.mode & S_IFMT, libc::S_IFCHR);
        assert_eq!(
            null.attr.rdev,
            (1 << 8) | 3,
            "rdev in the kernel's encoding"
        );
        assert_eq!(c.open(null.nodeid, libc::O_RDWR), Err(libc::EPERM));
        assert_eq!(c.open(null.nodeid, libc::O_RDONLY), Err(libc::EPERM));
        // SETATTR size would need a write open: also refused.
        let set = enc(&abi::SetattrIn {
            valid: abi::fattr::SIZE,
            ..Default::default()
        });
        assert_eq!(c.call(op::SETATTR, null.nodeid, &set).0, libc::EPERM);
    } else {
        eprintln!("not root: the device-node half of this test was skipped");
    }
    // Making device nodes (and sockets) is refused even on a writable share.
    for mode in [
        libc::S_IFCHR | 0o666,
        libc::S_IFBLK | 0o666,
        libc::S_IFSOCK | 0o666,
    ] {
        let mut b = enc(&abi::MknodIn {
            mode,
            rdev: (1 << 8) | 3,
            ..Default::default()
        });
        b.extend(cstr("made"));
        assert_eq!(c.call(op::MKNOD, ROOT, &b).0, libc::EPERM);
    }
    assert!(!share.join("made").exists());
}

#[test]
fn bogus_forget_counts_never_underflow_or_free_what_is_in_use() {
    let (_tmp, share) = fixture();
    let mut c = Client::new(&share, false);
    let fs = |c: &Client, id| c.server.fs().lookup_count(id);

    let a = c.lookup(ROOT, "hello.txt").unwrap().nodeid;
    assert_eq!(c.lookup(ROOT, "hello.txt").unwrap().nodeid, a);
    assert_eq!(fs(&c, a), Some(2));
    // More than looked up: saturates at zero and frees, no underflow.
    c.forget(a, 1000);
    assert_eq!(fs(&c, a), None);
    assert_eq!(c.getattr(a), Err(libc::EBADF));
    c.forget(a, 1); // again: unknown now, ignored
                    // Unknown inode, nodeid 0, u64::MAX counts.
    c.forget(987_654, u64::MAX);
    c.forget(0, 1);
    // The root is never freed.
    c.forget(ROOT, u64::MAX);
    assert!(fs(&c, ROOT).is_some());
    assert_eq!(c.getattr(ROOT).unwrap().mode & S_IFMT, libc::S_IFDIR);
    assert!(c.lookup(ROOT, "hello.txt").is_ok());

    // A directory whose child is still looked up stays (the child needs it).
    let sub = c.lookup(ROOT, "sub").unwrap().nodeid;
    let inner = c.lookup(sub, "inner.txt").unwrap().nodeid;
    c.forget(sub, 5);
    assert_eq!(fs(&c, sub), Some(0));
    assert!(c.getattr(inner).is_ok());
    // Once the child goes, the directory goes with it.
    c.forget(inner, 1);
    assert_eq!(fs(&c, inner), None);
    assert_eq!(fs(&c, sub), None);

    // BATCH_FORGET whose count lies about its length: what is there is used.
    let x = c.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let mut b = enc(&abi::BatchForgetIn {
        count: 1_000_000,
        dummy: 0,
    });
    b.extend(enc(&abi::ForgetOne {
        nodeid: x,
        nlookup: 1,
    }));
    b.extend(enc(&abi::ForgetOne {
        nodeid: ROOT,
        nlookup: 99,
    }));
    b.extend([1, 2, 3]); // a torn record
    c.send(op::BATCH_FORGET, 0, &b);
    assert_eq!(fs(&c, x), Some(1));
    assert!(fs(&c, ROOT).is_some());
}

/// Builds `dirs` directories of `files` files each (plus a symlink each).
fn make_tree(root: &Path, dirs: usize, files: usize) -> usize {
    let mut n = 0;
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}")).join("nested");
        std::fs::create_dir_all(&dir).unwrap();
        n += 2;
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}")).unwrap();
            n += 1;
        }
        std::os::unix::fs::symlink("nested/f000", dir.parent().unwrap().join("link")).unwrap();
        n += 1;
    }
    n
}

/// Walks the whole tree like a guest `find` + `cat` that never FORGETs:
/// READDIRPLUS every directory, read every file. Returns entries seen.
fn walk(c: &mut Client, dir: u64, path: &str) -> Result<usize, String> {
    let mut n = 0;
    for (name, e) in c.readdirplus(dir, 4096) {
        if name == "." || name == ".." {
            continue;
        }
        if e.nodeid == 0 {
            return Err(format!("{path}/{name}: no entry in READDIRPLUS"));
        }
        n += 1;
        match e.attr.mode & S_IFMT {
            libc::S_IFDIR => n += walk(c, e.nodeid, &format!("{path}/{name}"))?,
            libc::S_IFREG => {
                let fh = c
                    .open(e.nodeid, libc::O_RDONLY)
                    .map_err(|e| format!("open {path}/{name}: errno {e}"))?;
                let data = c
                    .read(e.nodeid, fh, 0, 4096)
                    .map_err(|e| format!("read: {e}"))?;
                c.release(e.nodeid, fh, false);
                if !data.contains(&b'/') {
                    return Err(format!("{path}/{name}: bad content {data:?}"));
                }
            }
            _ => {}
        }
    }
    Ok(n)
}

fn set_nofile(limit: u64) {
    let lim = libc::rlimit64 {
        rlim_cur: limit,
        rlim_max: limit.max(4096),
    };
    // SAFETY: `lim` is a valid rlimit64 the call only reads.
    assert_eq!(unsafe { libc::setrlimit64(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

const CHILD_ENV: &str = "VIRTIOFS_LITE_NOFILE_CHILD";
const NOFILE: u64 = 64;

/// The body that runs in a child process with RLIMIT_NOFILE = 64.
fn nofile_child(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let expected = make_tree(&share, 30, 12); // 30 * 15 = 450 entries
    assert!(expected as u64 > 4 * NOFILE);
    set_nofile(NOFILE);
    let bounded = mode == "bounded";
    let cfg = ServerConfig {
        fs: FsConfig {
            writable: false,
            owner: None,
            max_open_inodes: if bounded { 16 } else { 1 << 20 },
            max_handles: 16,
            ..FsConfig::default()
        },
        ..ServerConfig::default()
    };
    let mut c = Client::with_config(&share, cfg);
    let result = walk(&mut c, ROOT, ".");
    if !bounded {
        // The control: a table that keeps one fd per inode hits EMFILE.
        let err = result.expect_err("an unbounded table must run out of fds");
        assert!(
            err.contains("errno 24") || err.contains("no entry"),
            "{err}"
        );
        return;
    }
    assert_eq!(result.unwrap(), expected, "every entry seen");
    let fs = c.server.fs();
    assert!(fs.known_inodes() > expected, "nothing was forgotten");
    assert!(
        fs.open_inode_fds() <= 17,
        "bounded: {}",
        fs.open_inode_fds()
    );
    assert!(open_fds() < NOFILE as usize);
    // Evicted inodes come back from their parent chain: a second full pass
    // of GETATTR over every node re-opens deep paths.
    let before = fs.reopens();
    for id in 2..(2 + fs.known_inodes() as u64 + 10) {
        if c.server.fs().lookup_count(id).is_some() {
            c.getattr(id).expect("evicted inode re-opened");
        }
    }
    assert!(c.server.fs().reopens() > before, "re-opens happened");
}

fn run_child(test: &str, mode: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, mode)
        .status()
        .unwrap();
    assert!(status.success(), "child ({mode}) failed");
}

#[test]
fn a_tree_larger_than_rlimit_nofile_is_walked_completely() {
    match std::env::var(CHILD_ENV) {
        Ok(mode) => nofile_child(&mode),
        Err(_) => {
            run_child(
                "a_tree_larger_than_rlimit_nofile_is_walked_completely",
                "bounded",
            );
            run_child(
                "a_tree_larger_than_rlimit_nofile_is_walked_completely",
                "unbounded",
            );
        }
    }
}

#[test]
fn read_only_share_refuses_every_write_with_erofs_and_changes_nothing() {
    let (_tmp, share) = fixture();
    std::os::unix::fs::symlink("hello.txt", share.join("link")).unwrap();
    let before = snapshot(&share);
    let mut c = Client::new(&share, false);
    let hello = c.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let sub = c.lookup(ROOT, "sub").unwrap().nodeid;
    let fh = c.open(hello, libc::O_RDONLY).unwrap();

    let named = |head: Vec<u8>, names: &[&str]| {
        let mut b = head;
        for n in names {
            b.extend(cstr(n));
        }
        b
    };
    let cases: Vec<(u32, u64, Vec<u8>)> = vec![
        (
            op::MKDIR,
            ROOT,
            named(
                enc(&abi::MkdirIn {
                    mode: 0o755,
                    umask: 0,
                }),
                &["new"],
            ),
        ),
        (
            op::CREATE,
            ROOT,
            named(
                enc(&abi::CreateIn {
                    flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
                    mode: 0o644,
                    ..Default::default()
                }),
                &["new"],
            ),
        ),
        (
            op::MKNOD,
            ROOT,
            named(
                enc(&abi::MknodIn {
                    mode: libc::S_IFREG | 0o644,
                    ..Default::default()
                }),
                &["new"],
            ),
        ),
        (op::UNLINK, ROOT, cstr("hello.txt")),
        (op::RMDIR, ROOT, cstr("sub")),
        (
            op::RENAME,
            ROOT,
            named(enc(&abi::RenameIn { newdir: sub }), &["hello.txt", "moved"]),
        ),
        (
            op::RENAME2,
            ROOT,
            named(
                enc(&abi::Rename2In {
                    newdir: sub,
                    ..Default::default()
                }),
                &["hello.txt", "moved"],
            ),
        ),
        (
            op::SYMLINK,
            ROOT,
            named(Vec::new(), &["new", "/etc/passwd"]),
        ),
        (
            op::LINK,
            sub,
            named(enc(&abi::LinkIn { oldnodeid: hello }), &["hard"]),
        ),
        (
            op::SETATTR,
            hello,
            enc(&abi::SetattrIn {
                valid: abi::fattr::SIZE | abi::fattr::MODE | abi::fattr::MTIME,
                size: 0,
                mode: 0o777,
                mtime: 1,
                ..Default::default()
            }),
        ),
        (
            op::WRITE,
            hello,
            named(
                enc(&abi::WriteIn {
                    fh,
                    size: 5,
                    ..Default::default()
                }),
                &["evil"],
            ),
        ),
        (
            op::FALLOCATE,
            hello,
            enc(&abi::FallocateIn {
                fh,
                length: 1 << 20,
                ..Default::default()
            }),
        ),
        (op::SETXATTR, hello, named(vec![0; 8], &["user.x", "y"])),
        (op::REMOVEXATTR, hello, cstr("user.x")),
    ];
    for (opcode, node, body) in cases {
        assert_eq!(
            c.call(opcode, node, &body).0,
            libc::EROFS,
            "opcode {opcode}"
        );
    }
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(
            c.open(hello, flags),
            Err(libc::EROFS),
            "open flags {flags:#o}"
        );
    }
    // The read-only subset still works; the rest is ENOSYS (ACCESS included).
    assert_eq!(c.read(hello, fh, 0, 100).unwrap(), b"hello, guest\n");
    for opcode in [
        op::ACCESS,
        op::GETXATTR,
        op::LISTXATTR,
        op::FSYNC,
        op::LSEEK,
        op::GETLK,
        200,
    ] {
        assert_eq!(
            c.call(opcode, hello, &[0; 16]).0,
            libc::ENOSYS,
            "opcode {opcode}"
        );
    }
    assert_eq!(snapshot(&share), before, "nothing changed on disk");
}

#[test]
fn writable_share_writes_land_on_the_host() {
    let (_tmp, share) = fixture();
    let mut c = Client::new(&share, true);
    // CREATE + WRITE + RELEASE.
    let (entry, opened) = c
        .create(ROOT, "new.txt", libc::O_WRONLY | libc::O_CREAT, 0o640)
        .expect("create");
    let fh = opened.fh;
    let mut w = enc(&abi::WriteIn {
        fh,
        offset: 0,
        size: 11,
        ..Default::default()
    });
    w.extend_from_slice(b"from guest\n");
    let (e, p) = c.call(op::WRITE, entry.nodeid, &w);
    assert_eq!(e, 0);
    assert_eq!(abi::WriteOut::from_bytes(&p).unwrap().size, 11);
    let fsync = enc(&abi::FsyncIn {
        fh,
        ..Default::default()
    });
    assert_eq!(c.call(op::FSYNC, entry.nodeid, &fsync).0, 0);
    c.release(entry.nodeid, fh, false);
    assert_eq!(
        std::fs::read(share.join("new.txt")).unwrap(),
        b"from guest\n"
    );
    assert_eq!(
        std::fs::metadata(share.join("new.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640 & !current_umask()
    );

    // O_EXCL on an existing name: EEXIST, the file untouched.
    let mut b = enc(&abi::CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32,
        mode: 0o600,
        ..Default::default()
    });
    b.extend(cstr("new.txt"));
    assert_eq!(c.call(op::CREATE, ROOT, &b).0, libc::EEXIST);
    assert_eq!(
        std::fs::read(share.join("new.txt")).unwrap(),
        b"from guest\n"
    );

    // MKDIR, SYMLINK, LINK, RENAME, SETATTR, FALLOCATE, UNLINK, RMDIR.
    let mut b = enc(&abi::MkdirIn {
        mode: 0o755,
        umask: 0,
    });
    b.extend(cstr("dir"));
    let (e, p) = c.call(op::MKDIR, ROOT, &b);
    assert_eq!(e, 0);
    let dir = abi::EntryOut::from_bytes(&p).unwrap().nodeid;
    assert!(share.join("dir").is_dir());

    let mut b = cstr("ln");
    b.extend(cstr("../new.txt"));
    assert_eq!(c.call(op::SYMLINK, dir, &b).0, 0);
    assert_eq!(
        std::fs::read_link(share.join("dir/ln")).unwrap(),
        Path::new("../new.txt")
    );

    let mut b = enc(&abi::LinkIn {
        oldnodeid: entry.nodeid,
    });
    b.extend(cstr("hard"));
    assert_eq!(c.call(op::LINK, dir, &b).0, 0);
    assert_eq!(
        std::fs::read(share.join("dir/hard")).unwrap(),
        b"from guest\n"
    );

    let mut b = enc(&abi::RenameIn { newdir: dir });
    b.extend(cstr("new.txt"));
    b.extend(cstr("renamed.txt"));
    assert_eq!(c.call(op::RENAME, ROOT, &b).0, 0);
    assert!(share.join("dir/renamed.txt").exists() && !share.join("new.txt").exists());
    // The renamed inode still resolves (its recorded name moved with it).
    assert_eq!(c.getattr(entry.nodeid).unwrap().size, 11);

    let set = enc(&abi::SetattrIn {
        valid: abi::fattr::SIZE | abi::fattr::MODE | abi::fattr::MTIME,
        size: 4,
        mode: 0o600,
        mtime: 1_000_000,
        ..Default::default()
    });
    let (e, p) = c.call(op::SETATTR, entry.nodeid, &set);
    assert_eq!(e, 0);
    let attr = abi::AttrOut::from_bytes(&p).unwrap().attr;
    assert_eq!(
        (attr.size, attr.mode & 0o777, attr.mtime),
        (4, 0o600, 1_000_000)
    );
    let meta = std::fs::metadata(share.join("dir/renamed.txt")).unwrap();
    assert_eq!(
        (meta.len(), meta.mode() & 0o777, meta.mtime()),
        (4, 0o600, 1_000_000)
    );

    let fh = c.open(entry.nodeid, libc::O_RDWR).unwrap();
    let fa = enc(&abi::FallocateIn {
        fh,
        offset: 0,
        length: 8192,
        ..Default::default()
    });
    assert_eq!(c.call(op::FALLOCATE, entry.nodeid, &fa).0, 0);
    c.release(entry.nodeid, fh, false);
    assert_eq!(
        std::fs::metadata(share.join("dir/hard")).unwrap().len(),
        8192
    );

    // MKNOD of a FIFO and a regular file is allowed.
    for (name, mode) in [
        ("fifo", libc::S_IFIFO | 0o600),
        ("plain", libc::S_IFREG | 0o600),
    ] {
        let mut b = enc(&abi::MknodIn {
            mode,
            ..Default::default()
        });
        b.extend(cstr(name));
        assert_eq!(c.call(op::MKNOD, dir, &b).0, 0, "{name}");
    }

    for name in ["renamed.txt", "hard", "ln", "fifo", "plain"] {
        assert_eq!(c.call(op::UNLINK, dir, &cstr(name)).0, 0, "{name}");
    }
    assert_eq!(c.call(op::RMDIR, ROOT, &cstr("dir")).0, 0);
    assert!(!share.join("dir").exists());
    // Nothing appeared outside the share.
    let mut outside: Vec<_> = std::fs::read_dir(share.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    outside.sort();
    assert_eq!(outside, ["secret", "share"]);
}

fn current_umask() -> u32 {
    // SAFETY: umask only swaps the process mask; we put it straight back.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    }
}

#[test]
fn protocol_edges_get_error_replies_not_panics() {
    let (_tmp, share) = fixture();
    let server = virtiofs_lite::Server::new(&share, ServerConfig::default()).unwrap();
    // Before INIT: EIO.
    let r = server
        .handle(&request(op::GETATTR, ROOT, 1, &[0; 16]), ROOM)
        .unwrap();
    assert_eq!(parse_reply(&r, 1).0, libc::EIO);
    // INIT: a sane subset of flags, 1 MiB writes, no splice.
    let r = server
        .handle(&request(op::INIT, 0, 2, &init_body()), ROOM)
        .unwrap();
    let (e, p) = parse_reply(&r, 2);
    assert_eq!(e, 0);
    let init = <abi::InitOut as abi::Wire>::from_bytes(&p).unwrap();
    assert_eq!((init.major, init.minor), (7, 31));
    assert_eq!(init.max_write, 1 << 20);
    assert_eq!(init.max_pages, 256);
    assert!(init.max_readahead <= 128 * 1024);
    use abi::init_flags as f;
    assert_eq!(
        init.flags & (f::SPLICE_READ | f::SPLICE_WRITE | f::SPLICE_MOVE),
        0
    );
    assert_eq!(
        init.flags & (f::WRITEBACK_CACHE | f::POSIX_LOCKS | f::EXPORT_SUPPORT),
        0
    );
    assert_ne!(init.flags & f::DO_READDIRPLUS, 0);
    // A too old protocol is refused.
    let old = enc(&abi::InitIn {
        major: 7,
        minor: 20,
        ..Default::default()
    });
    let r = server
        .handle(&request(op::INIT, 0, 3, &old[..16]), ROOM)
        .unwrap();
    assert_eq!(parse_reply(&r, 3).0, libc::EPROTO);
    let r = server
        .handle(&request(op::INIT, 0, 4, &init_body()[..16]), ROOM)
        .unwrap();
    assert_eq!(parse_reply(&r, 4).0, 0, "a 16-byte init_in is fine");

    let inits = server
        .stats()
        .iter()
        .find(|s| s.opcode == op::INIT)
        .unwrap()
        .count;
    assert_eq!(inits, 3, "per-opcode statistics count requests");
    // Shorter than a header: nothing to answer.
    assert!(server.handle(&[0u8; 39], ROOM).is_none());
    assert!(server.handle(&[], ROOM).is_none());
    // The len field lying, both ways.
    let mut r = request(op::GETATTR, ROOT, 5, &[0; 16]);
    r[0..4].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(
        parse_reply(&server.handle(&r, ROOM).unwrap(), 5).0,
        libc::EINVAL
    );
    r[0..4].copy_from_slice(&10u32.to_le_bytes());
    assert_eq!(
        parse_reply(&server.handle(&r, ROOM).unwrap(), 5).0,
        libc::EINVAL
    );
    // Truncated arguments.
    let r = request(op::READ, ROOT, 6, &[0; 10]);
    assert_eq!(
        parse_reply(&server.handle(&r, ROOM).unwrap(), 6).0,
        libc::EINVAL
    );
    // A LOOKUP whose reply cannot fit: ERANGE, and no lookup was counted.
    let r = request(op::LOOKUP, ROOT, 7, &cstr("hello.txt"));
    let reply = server.handle(&r, 100).unwrap();
    assert_eq!(reply.len(), 16);
    assert_eq!(parse_reply(&reply, 7).0, libc::ERANGE);
    assert_eq!(server.fs().known_inodes(), 1);
    // Room for not even a header: no reply at all.
    assert!(server.handle(&r, 8).is_none());
    // Garbage of every length never panics.
    let mut seed = 0x1234_5678u32;
    for len in 0..600 {
        let mut buf: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        if len >= 40 {
            buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            buf[4..8].copy_from_slice(&(seed % 53).to_le_bytes());
            buf[16..24].copy_from_slice(&u64::from(seed % 3).to_le_bytes());
        }
        let _ = server.handle(&buf, (seed % 4096) as usize);
    }
}

#[test]
fn a_directory_handle_lists_from_whatever_offset_is_asked() {
    // More entries than one buffered getdents64 read holds, so the stream
    // refills while it goes on; then jumps back, rewinds and re-reads.
    let (_tmp, share) = fixture();
    let many = share.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..600 {
        std::fs::write(
            many.join(format!("entry-{i:04}-{}", "x".repeat(i % 40))),
            b"",
        )
        .unwrap();
    }
    // A kernel with FUSE_NO_OPENDIR_SUPPORT (handle 0: the server keeps
    // the stream by node), and an older one (a real handle).
    for flags in [u32::MAX, !abi::init_flags::NO_OPENDIR_SUPPORT] {
        list_from_any_offset(&share, flags);
    }
}

fn list_from_any_offset(share: &Path, flags: u32) {
    let mut c = Client::with_init(
        share,
        ServerConfig {
            fs: FsConfig::default(),
            ..ServerConfig::default()
        },
        flags,
    );
    let dir = c.lookup(ROOT, "many").unwrap().nodeid;
    let fh = c.opendir(dir).unwrap();
    assert_eq!(fh == 0, flags & abi::init_flags::NO_OPENDIR_SUPPORT != 0);
    let mut pages = vec![(0u64, c.readdir_page(dir, fh, 0, 1024))];
    loop {
        let next = pages.last().unwrap().1.last().unwrap().1;
        let page = c.readdir_page(dir, fh, next, 1024);
        if page.is_empty() {
            break;
        }
        pages.push((next, page));
    }
    let all: Vec<&(String, u64)> = pages.iter().flat_map(|(_, p)| p).collect();
    assert_eq!(all.len(), 602);
    let mut names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 602, "every name once");
    assert!(pages.len() > 20, "{} pages", pages.len());
    // Out of order on the same handle: each offset gives the same page.
    for i in [7, 3, 0, pages.len() - 1, 12, 12, 1] {
        let (offset, page) = &pages[i];
        assert_eq!(&c.readdir_page(dir, fh, *offset, 1024), page, "page {i}");
    }
    // Past the end: nothing.
    let end = all.last().unwrap().1;
    assert!(c.readdir_page(dir, fh, end, 1024).is_empty());
    c.release(dir, fh, true);
}

#[test]
fn readdir_and_readdirplus_resume_from_offsets_and_see_every_name_once() {
    let (_tmp, share) = fixture();
    let many = share.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..150 {
        std::fs::write(
            many.join(format!("file-with-a-longish-name-{i:04}")),
            [i as u8],
        )
        .unwrap();
    }
    let mut c = Client::new(&share, false);
    let dir = c.lookup(ROOT, "many").unwrap().nodeid;
    let mut names = c.readdir(dir, 512);
    names.sort();
    assert_eq!(names.len(), 152);
    names.dedup();
    assert_eq!(names.len(), 152, "no duplicates");
    let plus = c.readdirplus(dir, 700);
    assert_eq!(plus.len(), 152);
    for (name, e) in &plus {
        if name == "." || name == ".." {
            assert_eq!(e.nodeid, 0, "no lookup counted for {name}");
        } else {
            assert_eq!(e.attr.size, 1);
            assert_eq!(c.server.fs().lookup_count(e.nodeid), Some(1));
        }
    }
    // A buffer too small for one entry returns nothing rather than overflow.
    let fh = c.opendir(dir).unwrap();
    let body = enc(&abi::ReadIn {
        fh,
        size: 100,
        ..Default::default()
    });
    let (e, p) = c.call(op::READDIRPLUS, dir, &body);
    assert_eq!((e, p.len()), (0, 0));
    // Large file read in pieces and whole.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(share.join("big"), &big).unwrap();
    let node = c.lookup(ROOT, "big").unwrap().nodeid;
    let fh = c.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(c.read(node, fh, 0, 1 << 20).unwrap(), big);
    assert_eq!(c.read(node, fh, 299_990, 100).unwrap(), &big[299_990..]);
    assert_eq!(c.read(node, fh, 1 << 40, 100).unwrap(), b"");
    // A READ larger than max_io is clamped to it, never more.
    let (e, p) = c.call_room(
        op::READ,
        node,
        &enc(&abi::ReadIn {
            fh,
            size: u32::MAX,
            ..Default::default()
        }),
        ROOM,
    );
    assert_eq!((e, p.len()), (0, big.len()));
    let (e, p) = c.call_room(
        op::READ,
        node,
        &enc(&abi::ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        }),
        16 + 1000,
    );
    assert_eq!((e, p.as_slice()), (0, &big[..1000]), "clamped to the room");
}

#[test]
fn directories_listed_without_opendir_stay_right_across_many_and_changes() {
    // The kernel lists with handle 0 once OPENDIR answered ENOSYS: the
    // server keeps a few directory streams by node. Interleave more
    // directories than it keeps, change one between listings, and check
    // every listing; FSYNCDIR with handle 0 works on a writable share.
    let (_tmp, share) = fixture();
    let mut dirs = Vec::new();
    for d in 0..40 {
        let p = share.join(format!("d{d:02}"));
        std::fs::create_dir(&p).unwrap();
        for f in 0..=d % 5 {
            std::fs::write(p.join(format!("f{f}")), b"").unwrap();
        }
        dirs.push(p);
    }
    let mut c = Client::new(&share, true);
    let nodes: Vec<u64> = (0..40)
        .map(|d| c.lookup(ROOT, &format!("d{d:02}")).unwrap().nodeid)
        .collect();
    assert_eq!(c.opendir(nodes[0]), Ok(0), "zero-message opendir");
    for round in 0..3 {
        for (d, &node) in nodes.iter().enumerate() {
            // Two entries per page, so each listing takes several READDIRs
            // and the streams of other directories come between them.
            let mut names = Vec::new();
            let mut offset = 0;
            loop {
                let page = c.readdir_page(node, 0, offset, 64);
                let Some(&(_, last)) = page.last() else { break };
                offset = last;
                names.extend(page.into_iter().map(|(n, _)| n));
            }
            names.sort();
            let mut want: Vec<String> = [".".to_string(), "..".to_string()]
                .into_iter()
                .chain((0..=d % 5).map(|f| format!("f{f}")))
                .collect();
            if round > 0 && d == 3 {
                want.push("new".into());
            }
            want.sort();
            assert_eq!(names, want, "round {round}, d{d:02}");
        }
        if round == 0 {
            // Created on the host after d03 was listed (and its stream
            // kept): a new listing starts at offset 0 and sees it.
            std::fs::write(dirs[3].join("new"), b"").unwrap();
        }
    }
    // Listed, changed, listed again at once (its stream still kept).
    let before = c.readdir_page(nodes[5], 0, 0, 4096).len();
    std::fs::write(dirs[5].join("late"), b"").unwrap();
    let again = c.readdir_page(nodes[5], 0, 0, 4096);
    assert_eq!(again.len(), before + 1);
    assert!(again.iter().any(|(n, _)| n == "late"));
    let body = enc(&abi::FsyncIn::default());
    assert_eq!(c.call(op::FSYNCDIR, nodes[1], &body).0, 0);
    // A file is not a directory, by handle 0 either.
    let file = c.lookup(nodes[1], "f0").unwrap().nodeid;
    assert_eq!(c.list_error(file), libc::ENOTDIR);
    assert_eq!(c.call(op::FSYNCDIR, file, &body).0, libc::ENOTDIR);
}

/// CREATE with `mode` in `parent`; (entry, fh).
fn create(c: &mut Client, parent: u64, name: &str, mode: u32) -> (abi::EntryOut, u64) {
    let mut b = enc(&abi::CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode,
        ..Default::default()
    });
    b.extend(cstr(name));
    let (e, p) = c.call(op::CREATE, parent, &b);
    assert_eq!(e, 0, "create {name}");
    let entry = abi::EntryOut::from_bytes(&p).unwrap();
    let fh = abi::OpenOut::from_bytes(&p[abi::EntryOut::SIZE..])
        .unwrap()
        .fh;
    (entry, fh)
}

fn host_mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The guest is untrusted and the server may run as root: no request
/// leaves a set-user-ID or set-group-ID file on the host (issue 13:
/// `chmod 4755` in a `--rw` directory used to).
#[test]
fn no_request_leaves_a_setid_file_on_the_host() {
    let (_tmp, share) = fixture();
    let mut c = Client::new(&share, true);
    // CREATE with the bits asked for.
    let (entry, fh) = create(&mut c, ROOT, "tool", 0o6755);
    c.release(entry.nodeid, fh, false);
    assert_eq!(host_mode(&share.join("tool")) & 0o6000, 0, "create");
    // SETATTR mode (chmod 4755, 2755).
    for mode in [0o4755, 0o2755, 0o6777] {
        let set = enc(&abi::SetattrIn {
            valid: abi::fattr::MODE,
            mode,
            ..Default::default()
        });
        let (e, p) = c.call(op::SETATTR, entry.nodeid, &set);
        assert_eq!(e, 0);
        let attr = abi::AttrOut::from_bytes(&p).unwrap().attr;
        assert_eq!(attr.mode & 0o6000, 0, "chmod {mode:o} as the guest sees it");
        assert_eq!(host_mode(&share.join("tool")) & 0o6000, 0, "chmod {mode:o}");
        assert_eq!(host_mode(&share.join("tool")) & 0o777, mode & 0o777);
    }
    // MKNOD of a regular file.
    let mut b = enc(&abi::MknodIn {
        mode: libc::S_IFREG | 0o4755,
        ..Default::default()
    });
    b.extend(cstr("made"));
    assert_eq!(c.call(op::MKNOD, ROOT, &b).0, 0);
    assert_eq!(host_mode(&share.join("made")) & 0o6000, 0, "mknod");
    // A directory keeps set-group-ID (it only picks new entries' group),
    // never set-user-ID.
    let mut b = enc(&abi::MkdirIn {
        mode: 0o6775,
        umask: 0,
    });
    b.extend(cstr("dir"));
    assert_eq!(c.call(op::MKDIR, ROOT, &b).0, 0);
    let dir_mode = host_mode(&share.join("dir"));
    assert_eq!(dir_mode & libc::S_ISUID, 0, "mkdir: {dir_mode:o}");

    // A set-ID file already on the host loses its bits when the guest
    // rewrites, truncates or chowns it (as the kernel does for callers
    // without CAP_FSETID; as root the server does it).
    for (name, how) in [("w", "write"), ("t", "truncate"), ("o", "chown")] {
        let path = share.join(name);
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o6755)).unwrap();
        let e = c.lookup(ROOT, name).unwrap();
        match how {
            "write" => {
                let fh = c.open(e.nodeid, libc::O_WRONLY).unwrap();
                let mut w = enc(&abi::WriteIn {
                    fh,
                    offset: 0,
                    size: 4,
                    ..Default::default()
                });
                w.extend_from_slice(b"evil");
                assert_eq!(c.call(op::WRITE, e.nodeid, &w).0, 0);
                c.release(e.nodeid, fh, false);
            }
            "truncate" => {
                let set = enc(&abi::SetattrIn {
                    valid: abi::fattr::SIZE,
                    size: 1,
                    ..Default::default()
                });
                assert_eq!(c.call(op::SETATTR, e.nodeid, &set).0, 0);
            }
            _ => {
                let meta = std::fs::metadata(&path).unwrap();
                let set = enc(&abi::SetattrIn {
                    valid: abi::fattr::UID | abi::fattr::GID,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    ..Default::default()
                });
                assert_eq!(c.call(op::SETATTR, e.nodeid, &set).0, 0);
            }
        }
        assert_eq!(
            host_mode(&path) & 0o6000,
            0,
            "{how}: {:o}",
            host_mode(&path)
        );
        assert_eq!(host_mode(&path) & 0o777, 0o755, "{how}");
    }
}

/// Privilege through extended attributes is refused: the server has no
/// SETXATTR, so `security.capability` (file capabilities) cannot be set.
#[test]
fn file_capabilities_cannot_be_set() {
    let (_tmp, share) = fixture();
    let mut c = Client::new(&share, true);
    let (entry, fh) = create(&mut c, ROOT, "bin", 0o755);
    c.release(entry.nodeid, fh, false);
    let value = [
        1u8, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    // fuse_setxattr_in: size, flags; then the name and the value.
    let mut b = (value.len() as u32).to_le_bytes().to_vec();
    b.extend(0u32.to_le_bytes());
    b.extend(cstr("security.capability"));
    b.extend_from_slice(&value);
    let (e, _) = c.call(op::SETXATTR, entry.nodeid, &b);
    assert!(
        e == libc::ENOSYS || e == libc::EPERM,
        "SETXATTR answered {e}"
    );
    let mut buf = [0u8; 64];
    let path = std::ffi::CString::new(share.join("bin").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `path` is NUL-terminated, `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1, "no capability on the host file");
}

/// Under sudo, files the guest creates belong to the invoking user
/// (`FsConfig::owner`), whoever the guest claims to be.
#[test]
fn new_files_belong_to_the_configured_owner() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can create files as another user");
        return;
    }
    let (_tmp, share) = fixture();
    let mut c = Client::with_config(
        &share,
        ServerConfig {
            fs: FsConfig {
                writable: true,
                owner: Some((4321, 4322)),
                ..FsConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    // The test client's requests say uid 0.
    let (entry, fh) = create(&mut c, ROOT, "mine", 0o644);
    c.release(entry.nodeid, fh, false);
    let mut b = enc(&abi::MkdirIn {
        mode: 0o755,
        umask: 0,
    });
    b.extend(cstr("mydir"));
    assert_eq!(c.call(op::MKDIR, ROOT, &b).0, 0);
    for name in ["mine", "mydir"] {
        let meta = std::fs::metadata(share.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4321, 4322), "{name}");
    }
}

/// A share whose host file system is full: the guest's WRITE gets ENOSPC
/// (after the short write that filled it), and the server counts those
/// replies so the VMM can say so beside the verdict.
#[test]
fn a_full_host_file_system_is_enospc_and_counted() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can mount the small tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&share)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&share);
    let mut c = Client::new(&share, true);
    assert_eq!(c.server.no_space_replies(), 0);
    let (entry, fh) = create(&mut c, ROOT, "big", 0o644);
    let chunk = vec![0x5a_u8; 32 << 10];
    let mut written = 0u64;
    let mut errors = Vec::new();
    for _ in 0..4 {
        let mut w = enc(&abi::WriteIn {
            fh,
            offset: written,
            size: chunk.len() as u32,
            ..Default::default()
        });
        w.extend_from_slice(&chunk);
        match c.call(op::WRITE, entry.nodeid, &w) {
            (0, p) => written += u64::from(abi::WriteOut::from_bytes(&p).unwrap().size),
            (e, _) => errors.push(e),
        }
    }
    assert!(written <= 64 << 10, "{written}");
    assert!(!errors.is_empty(), "128 KiB fit in a 64 KiB tmpfs?");
    assert!(errors.iter().all(|&e| e == libc::ENOSPC), "{errors:?}");
    assert_eq!(c.server.no_space_replies(), errors.len() as u64);
    c.release(entry.nodeid, fh, false);
    assert_eq!(std::fs::metadata(share.join("big")).unwrap().len(), written);
}

/// Whether OPEN of `node` tells the kernel to keep its cached pages.
fn keeps_cache(c: &mut Client, node: u64) -> bool {
    let out = c.open_out(node, libc::O_RDONLY).expect("open");
    c.release(node, out.fh, false);
    out.open_flags & abi::FOPEN_KEEP_CACHE != 0
}

#[test]
fn the_guests_page_cache_is_kept_only_for_a_file_unchanged_since_its_last_open() {
    let share = tempfile::tempdir().unwrap();
    let lib = share.path().join("libc.so.6");
    std::fs::write(&lib, b"version 1").unwrap();
    let settled = |after: std::time::Duration| ServerConfig {
        fs: FsConfig {
            data_cache_after: after,
            ..FsConfig::default()
        },
        ..ServerConfig::default()
    };
    let mut c = Client::with_config(share.path(), settled(std::time::Duration::ZERO));
    let node = c.lookup(abi::ROOT_ID, "libc.so.6").unwrap().nodeid;
    assert!(
        !keeps_cache(&mut c, node),
        "first open: nothing cached to keep"
    );
    assert!(keeps_cache(&mut c, node), "unchanged since the last open");
    assert!(keeps_cache(&mut c, node));
    // New data of another size: dropped, then kept again.
    std::fs::write(&lib, b"version 2, longer").unwrap();
    assert!(!keeps_cache(&mut c, node), "size changed");
    assert!(keeps_cache(&mut c, node));
    // Same size, another mtime (timestamps are coarse: set it outright).
    std::fs::write(&lib, b"version 3, longer").unwrap();
    let old = std::fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH);
    std::fs::File::options()
        .write(true)
        .open(&lib)
        .unwrap()
        .set_times(old)
        .unwrap();
    assert!(!keeps_cache(&mut c, node), "mtime changed");
    assert!(keeps_cache(&mut c, node));
    // A file changed within the settling time is never kept: a change in
    // the same timestamp tick could leave its stamp as it was.
    let mut c = Client::with_config(share.path(), settled(std::time::Duration::from_secs(3600)));
    let node = c.lookup(abi::ROOT_ID, "libc.so.6").unwrap().nodeid;
    assert!(!keeps_cache(&mut c, node));
    assert!(
        !keeps_cache(&mut c, node),
        "changed less than the settling time ago"
    );
}

#[test]
fn no_open_file_asks_for_a_flush_at_close() {
    // FLUSH would only answer 0 here (no write-back cache, no POSIX locks
    // kept by the server), so every OPEN and CREATE reply says FOPEN_NOFLUSH,
    // the page-cache bit beside it unchanged.
    let (_tmp, share) = fixture();
    let mut c = Client::new(&share, true);
    let (entry, created) = c
        .create(ROOT, "made.txt", libc::O_WRONLY | libc::O_CREAT, 0o644)
        .expect("create");
    assert_eq!(created.open_flags, abi::FOPEN_NOFLUSH);
    c.release(entry.nodeid, created.fh, false);
    for flags in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR] {
        let out = c.open_out(entry.nodeid, flags).expect("open");
        assert_eq!(
            out.open_flags & abi::FOPEN_NOFLUSH,
            abi::FOPEN_NOFLUSH,
            "flags {flags:#o}"
        );
        assert_eq!(
            out.open_flags & !(abi::FOPEN_NOFLUSH | abi::FOPEN_KEEP_CACHE),
            0
        );
        c.release(entry.nodeid, out.fh, false);
    }
}

#[test]
fn a_missing_name_is_answered_as_a_negative_entry_for_the_entry_timeout() {
    let (_tmp, share) = fixture();
    let mut c = Client::new(&share, false);
    let body = cstr("not-yet");
    let (e, p) = c.call(op::LOOKUP, ROOT, &body);
    assert_eq!(e, 0, "a negative entry is a successful reply");
    let neg = abi::EntryOut::from_bytes(&p).unwrap();
    assert_eq!(neg.nodeid, 0);
    assert_eq!(
        (neg.entry_valid, neg.entry_valid_nsec),
        (1, 0),
        "kept as long as a positive entry"
    );
    // The server itself keeps nothing: a name the host creates is found at
    // the kernel's next LOOKUP.
    std::fs::write(share.join("not-yet"), "now\n").unwrap();
    assert_ne!(c.lookup(ROOT, "not-yet").unwrap().nodeid, 0);
    // Other errors stay errors: a name that would leave the share is
    // refused, not cached as absent.
    assert_eq!(
        c.call(op::LOOKUP, ROOT, &cstr("../escaped")).0,
        libc::EINVAL
    );
    // With no entry caching at all, a missing name is ENOENT.
    let mut c = Client::with_config(
        &share,
        ServerConfig {
            entry_timeout: std::time::Duration::ZERO,
            ..ServerConfig::default()
        },
    );
    assert_eq!(c.call(op::LOOKUP, ROOT, &cstr("missing")).0, libc::ENOENT);
}

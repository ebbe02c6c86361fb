//! The `virtiofs-lite` binary: its errors, and a vhost-user session with a
//! minimal front end that ends when the front end goes away.

use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

const BIN: &str = env!("CARGO_BIN_EXE_virtiofs-lite");

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn errors_are_one_sentence_and_a_non_zero_exit_without_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s.sock");
    let not_sock = tmp.path().join("file");
    std::fs::write(&not_sock, b"keep me").unwrap();
    let busy = tmp.path().join("busy.sock");
    let _listener = UnixListener::bind(&busy).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--socket".into(),
                sock.display().to_string(),
                "--shared-dir".into(),
                "/nonexistent/dir".into(),
            ],
            "does not exist",
        ),
        (
            vec![
                "--socket".into(),
                busy.display().to_string(),
                "--shared-dir".into(),
                tmp.path().display().to_string(),
            ],
            "in use by another process",
        ),
        (
            vec![
                "--socket".into(),
                not_sock.display().to_string(),
                "--shared-dir".into(),
                tmp.path().display().to_string(),
            ],
            "is not a socket",
        ),
        (
            vec![
                "--fd".into(),
                "0".into(),
                "--shared-dir".into(),
                tmp.path().display().to_string(),
            ],
            "not an open socket",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN)
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("backtrace"), "{err}");
    }
    assert_eq!(std::fs::read(&not_sock).unwrap(), b"keep me");
}

#[test]
fn serves_a_front_end_and_exits_cleanly_when_it_disconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("fs.sock");
    // The caller listens first and hands the socket over (--fd): no race.
    let listener = UnixListener::bind(&sock).unwrap();
    let fd = {
        use std::os::fd::AsRawFd;
        listener.as_raw_fd()
    };
    let mut cmd = Command::new(BIN);
    cmd.args(["--fd", &fd.to_string(), "--shared-dir"])
        .arg(tmp.path())
        .args(["--tag", "t", "--num-request-queues", "2"]);
    // SAFETY: the closure only calls fcntl (async-signal-safe) in the child
    // before exec, clearing FD_CLOEXEC so the child inherits the socket.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);

    let mut fe = Frontend::connect(&sock, 3).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    assert_ne!(features & (1 << 30), 0, "VHOST_USER_F_PROTOCOL_FEATURES");
    fe.set_features(features).unwrap();
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(VhostUserProtocolFeatures::MQ));
    fe.set_protocol_features(proto).unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 3, "hiprio + 2 request queues");
    drop(fe);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
}

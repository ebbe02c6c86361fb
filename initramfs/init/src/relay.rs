//! The command's stdout and stderr through pipes the init copies to their
//! virtio-console ports.
//!
//! Why: a virtio-console port can be open once (the guest driver answers
//! EBUSY to a second open), and `/dev/stdout` is `/proc/self/fd/1`, which
//! opens the device again — so `echo x > /dev/stderr` and kselftest's
//! runner.sh (`4>>/dev/stdout`) failed when the command wrote straight to
//! a port. Through a pipe that open reopens the pipe. Terminals and files
//! are given to the command as they are (only a character device that is
//! not a terminal is relayed).
//!
//! Invariant: everything the command wrote before it exited reaches the
//! port: [`Relays::finish`] is called after the command is reaped and
//! each relay then reads what its pipe holds at that moment (not until
//! EOF, and not what comes later: a background process may still hold
//! the pipe, or keep writing). A port that fails to
//! take a write makes the relay drop data, never stop reading, so the
//! command never blocks on a full pipe.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

use crate::sys;

/// Whether the command should get a pipe instead of `fd`: a character
/// device that is not a terminal (a virtio-console port).
pub fn needs_relay(fd: RawFd) -> bool {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; fstat only reads the descriptor.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    ok && (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && !sys::isatty(fd)
}

/// Running relays and the pipe whose closing tells them to finish.
pub struct Relays {
    stop: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Relays {
    /// Starts one thread per (pipe read end, destination).
    pub fn start(pairs: Vec<(OwnedFd, File)>) -> io::Result<Relays> {
        let (stop_rd, stop_wr) = sys::pipe_cloexec()?;
        let mut threads = Vec::new();
        for (pipe, dest) in pairs {
            let stop = stop_rd.try_clone()?;
            threads.push(
                std::thread::Builder::new()
                    .name("relay".into())
                    .spawn(move || relay(&pipe, &dest, &stop))?,
            );
        }
        Ok(Relays {
            stop: Some(stop_wr),
            threads,
        })
    }

    /// After the command exited: each relay empties its pipe and ends.
    pub fn finish(mut self) {
        self.stop.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Copies `pipe` to `dest` until told to stop, then what is left.
fn relay(pipe: &OwnedFd, dest: &File, stop: &OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut dest_ok = true;
    let mut copy = |buf: &[u8]| {
        if dest_ok && sys::write_all(dest.as_raw_fd(), buf).is_err() {
            dest_ok = false;
        }
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` holds two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            break;
        }
        if fds[0].revents != 0 {
            match read(pipe.as_raw_fd(), &mut buf) {
                Some(0) | None => return, // every writer closed it
                Some(n) => copy(&buf[..n]),
            }
        }
    }
    // Told to stop: what is in the pipe now, and no more — a background
    // process still writing (`yes &`) must not keep the relay going.
    let mut left: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    if unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut left) } != 0 {
        return;
    }
    // SAFETY: F_SETFL on a descriptor this thread owns.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut left = usize::try_from(left).unwrap_or(0);
    while left > 0 {
        let want = left.min(buf.len());
        match read(pipe.as_raw_fd(), &mut buf[..want]) {
            Some(0) | None => return,
            Some(n) => {
                copy(&buf[..n]);
                left -= n.min(left);
            }
        }
    }
}

/// One read; `None` on an error (on a non-blocking pipe, also when empty).
fn read(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Some(n.unsigned_abs());
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn what_was_written_arrives_even_while_a_writer_still_holds_the_pipe() {
        let dir = crate::testdir::TestDir::new("relay");
        let out = dir.path().join("port");
        let dest = File::create(&out).unwrap();
        let (rd, wr) = sys::pipe_cloexec().unwrap();
        let mut writer = File::from(wr);
        let relays = Relays::start(vec![(rd, dest)]).unwrap();
        let big = vec![b'x'; 200 * 1024]; // more than a pipe holds at once
        writer.write_all(b"first\n").unwrap();
        writer.write_all(&big).unwrap();
        writer.write_all(b"last\n").unwrap();
        // `writer` stays open, as a background process's copy would: the
        // relay must end on finish, not wait for EOF.
        relays.finish();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), 6 + big.len() + 5);
        assert!(got.starts_with(b"first\n") && got.ends_with(b"last\n"));
        drop(writer);
    }

    #[test]
    fn a_writer_that_never_stops_does_not_keep_the_relay_going() {
        let dir = crate::testdir::TestDir::new("relay-endless");
        let out = dir.path().join("port");
        let (rd, wr) = sys::pipe_cloexec().unwrap();
        let relays = Relays::start(vec![(rd, File::create(&out).unwrap())]).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let mut w = File::from(wr);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if w.write_all(&[b'y'; 4096]).is_err() {
                        break;
                    }
                }
            })
        };
        relays.finish(); // returns although the writer goes on
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // The writer may be blocked on a full pipe nobody reads any more:
        // the pipe's read end went with the relay, so it gets EPIPE.
        writer.join().unwrap();
    }

    #[test]
    fn only_non_terminal_character_devices_are_relayed() {
        let dir = crate::testdir::TestDir::new("relay-kind");
        let file = File::create(dir.path().join("f")).unwrap();
        assert!(!needs_relay(file.as_raw_fd()));
        let null = File::options().write(true).open("/dev/null").unwrap();
        assert!(needs_relay(null.as_raw_fd()));
        let (rd, _wr) = sys::pipe_cloexec().unwrap();
        assert!(!needs_relay(rd.as_raw_fd()));
    }
}

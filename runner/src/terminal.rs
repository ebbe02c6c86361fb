//! An interactive terminal for the guest command (`kestrel run` with a
//! terminal on stdin and stdout).
//!
//! The guest side is a virtio-console *console port*: Linux makes it
//! `/dev/hvc0`, a real tty, and the init runs the command as a session
//! leader with it as controlling terminal, so the guest's line discipline
//! does echo, line editing, job control and Ctrl-C → SIGINT. The host side
//! is this module: kestrel's terminal in raw mode (every key goes to the
//! guest as typed; nothing is interpreted here but the escape), a thread
//! that forwards stdin to the console port, and window-size changes
//! (SIGWINCH, read through a signalfd) sent as `ROWS COLS` lines on a
//! second port, which the init applies with `TIOCSWINSZ`.
//!
//! Escape: Ctrl-A then `x` ends the VM (as QEMU's `-nographic`); Ctrl-A
//! twice sends one Ctrl-A.
//!
//! Invariants: the terminal's settings are restored when [`RawMode`] is
//! dropped, whatever ended the run (the VM's end, an error, a panic
//! unwinding through it); SIGWINCH is blocked in every thread (call
//! [`block_sigwinch`] before any thread starts) so only the signalfd sees it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Sender;

use crate::devices::virtio::console::PortInput;
use crate::event::VmEvent;
use crate::log;

/// The console port's name (the guest's `/dev/hvc0`).
pub const TTY_PORT: &str = "kestrel.tty";
/// The port window sizes go to.
pub const WINSIZE_PORT: &str = "kestrel.winsize";
/// Ctrl-A: the escape key.
pub const ESCAPE: u8 = 0x01;

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal `fd` as (rows, columns), if it has one.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize`, which lives for the call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    (r == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// A terminal in raw mode; its old settings come back on drop.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal `fd` in raw mode (no echo, no line editing, no
    /// signals from keys, no output processing).
    pub fn enter(fd: RawFd) -> io::Result<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios for the call.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios for the call.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: `saved` is the termios read from this descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Blocks SIGWINCH in the calling thread (and so in every thread it starts
/// afterwards), so that [`forward`]'s signalfd receives it.
pub fn block_sigwinch() -> io::Result<()> {
    let set = sigwinch_set();
    // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn sigwinch_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset for both calls.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
    }
    set
}

/// What a run of input bytes means once the escape is taken out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Bytes for the guest.
    pub forward: Vec<u8>,
    /// The user asked to end the VM.
    pub quit: bool,
}

/// The Ctrl-A escape, across reads (Ctrl-A may end one read and `x` start
/// the next).
#[derive(Debug, Default)]
pub struct Escape {
    pending: bool,
}

impl Escape {
    /// Splits `input` into bytes for the guest and a quit request.
    pub fn feed(&mut self, input: &[u8]) -> Keys {
        let mut keys = Keys::default();
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => {
                        keys.quit = true;
                        return keys;
                    }
                    ESCAPE => keys.forward.push(ESCAPE),
                    other => keys.forward.extend([ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                keys.forward.push(b);
            }
        }
        keys
    }
}

/// `ROWS COLS\n` for the window-size port.
pub fn winsize_line(rows: u16, cols: u16) -> Vec<u8> {
    format!("{rows} {cols}\n").into_bytes()
}

/// Forwards kestrel's stdin to `tty` and size changes of the terminal on
/// stdin to `winsize`, on a thread of its own; Ctrl-A x sends
/// [`VmEvent::UserQuit`]. The thread ends when stdin does; the process
/// does not wait for it.
pub fn forward(tty: PortInput, winsize: PortInput, events: Sender<VmEvent>) -> io::Result<()> {
    let set = sigwinch_set();
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    let signals = unsafe { OwnedFd::from_raw_fd(fd) };
    std::thread::Builder::new()
        .name("kestrel_terminal".into())
        .spawn(move || {
            if let Err(e) = pump(&tty, &winsize, &events, &signals) {
                log::debug(format_args!("terminal input ended: {e}"));
            }
        })?;
    Ok(())
}

fn pump(
    tty: &PortInput,
    winsize: &PortInput,
    events: &Sender<VmEvent>,
    signals: &OwnedFd,
) -> io::Result<()> {
    let stdin = 0;
    let mut escape = Escape::default();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: stdin,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // One siginfo per pending SIGWINCH; only the current size matters.
            let mut info = [0u8; 128];
            // SAFETY: `info` is writable for its length (a signalfd_siginfo).
            unsafe { libc::read(signals.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if let Some((rows, cols)) = window_size(stdin) {
                winsize.send(&winsize_line(rows, cols));
            }
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            // SAFETY: `buf` is writable for its length.
            let got = unsafe { libc::read(stdin, buf.as_mut_ptr().cast(), buf.len()) };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if got == 0 {
                return Ok(());
            }
            let keys = escape.feed(&buf[..got as usize]);
            if !keys.forward.is_empty() {
                tty.send(&keys.forward);
            }
            if keys.quit {
                let _ = events.send(VmEvent::UserQuit);
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_quits_or_passes_keys_through() {
        let mut e = Escape::default();
        assert_eq!(e.feed(b"ls\r").forward, b"ls\r");
        // Ctrl-A x, split across two reads: nothing forwarded, quit.
        let k = e.feed(b"ab\x01");
        assert_eq!((k.forward.as_slice(), k.quit), (&b"ab"[..], false));
        let k = e.feed(b"x");
        assert!(k.quit && k.forward.is_empty());
        // Ctrl-A Ctrl-A is one Ctrl-A; Ctrl-A then another key is both.
        let mut e = Escape::default();
        assert_eq!(e.feed(b"\x01\x01c").forward, b"\x01c");
        assert_eq!(e.feed(b"\x01c").forward, b"\x01c");
        // Ctrl-C and everything else go to the guest untouched.
        assert_eq!(e.feed(b"\x03\x1b[A").forward, b"\x03\x1b[A");
        let k = e.feed(b"q\x01X rest");
        assert_eq!((k.forward.as_slice(), k.quit), (&b"q"[..], true));
    }

    #[test]
    fn window_size_lines() {
        assert_eq!(winsize_line(40, 132), b"40 132\n");
    }

    #[test]
    fn a_pipe_is_not_a_terminal() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(!is_terminal(fds[0]));
        assert_eq!(window_size(fds[0]), None);
        assert!(RawMode::enter(fds[0]).is_err());
        for fd in fds {
            // SAFETY: both descriptors were just made here.
            unsafe { libc::close(fd) };
        }
    }
}

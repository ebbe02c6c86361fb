//! Where the two UARTs' output goes.
//!
//! [`ConsoleLog`] (COM1) copies the kernel console to a destination and
//! keeps the last lines and whether a panic was seen; [`StatusChannel`]
//! (COM2) keeps what the guest init reports. Invariant: both use bounded
//! memory whatever the guest writes; the shared state is readable by the VM
//! loop while the UART owns the writer.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use kestrel_initramfs::job::{PhaseMark, Status, READY_LINE};

use crate::event::VmEvent;

/// The kernel's panic banner.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// How many console lines are kept for the failure report.
pub const TAIL_LINES: usize = 30;
/// Longest console line kept (longer lines are cut).
const MAX_LINE: usize = 1024;
/// Most bytes the status channel keeps.
const MAX_STATUS_BYTES: usize = 64 * 1024;
/// Most phase marks kept (the init sends a handful).
const MAX_MARKS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the console has shown, for the verdict.
#[derive(Debug, Default)]
pub struct ConsoleState {
    tail: VecDeque<String>,
    partial: Vec<u8>,
    panic_line: Option<String>,
}

impl ConsoleState {
    /// The last [`TAIL_LINES`] lines, including an unterminated last line.
    pub fn tail(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.tail.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&self.partial).into_owned());
            if lines.len() > TAIL_LINES {
                lines.remove(0);
            }
        }
        lines
    }

    /// Whether [`PANIC_MARKER`] appeared on the console.
    pub fn panicked(&self) -> bool {
        self.panic_line.is_some() || String::from_utf8_lossy(&self.partial).contains(PANIC_MARKER)
    }

    /// The first console line with [`PANIC_MARKER`] (it may have scrolled
    /// out of the tail behind the backtrace).
    pub fn panic_line(&self) -> Option<&str> {
        self.panic_line.as_deref()
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.partial)
                        .trim_end_matches('\r')
                        .to_string();
                    self.partial.clear();
                    if self.panic_line.is_none() && line.contains(PANIC_MARKER) {
                        self.panic_line = Some(line.clone());
                    }
                    if self.tail.len() == TAIL_LINES {
                        self.tail.pop_front();
                    }
                    self.tail.push_back(line);
                }
                _ if self.partial.len() < MAX_LINE => self.partial.push(b),
                _ => {}
            }
        }
    }
}

/// COM1's writer: forwards to `out` (if any) and records into the state.
pub struct ConsoleLog {
    out: Option<Box<dyn Write + Send>>,
    state: Arc<Mutex<ConsoleState>>,
}

impl ConsoleLog {
    /// A console copying to `out` (None: discard), and its shared state.
    pub fn new(out: Option<Box<dyn Write + Send>>) -> (Self, Arc<Mutex<ConsoleState>>) {
        let state = Arc::new(Mutex::new(ConsoleState::default()));
        (
            ConsoleLog {
                out,
                state: state.clone(),
            },
            state,
        )
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.state).push(buf);
        if let Some(out) = &mut self.out {
            // A console destination that fails (full disk, closed pipe) must
            // not stop the guest: drop the output, keep the tail.
            if out.write_all(buf).is_err() {
                self.out = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            let _ = out.flush();
        }
        Ok(())
    }
}

/// What the status channel received.
#[derive(Debug, Default)]
pub struct StatusState {
    bytes: Vec<u8>,
    /// Where the line being received starts in `bytes`.
    line_start: usize,
    first_byte: Option<Instant>,
    reported: bool,
    status_at: Option<Instant>,
    marks: Vec<(PhaseMark, Instant)>,
    /// The init's `KESTREL-READY` arrived (it counts once).
    ready: bool,
}

impl StatusState {
    /// The status the init reported, if any.
    pub fn status(&self) -> Option<Status> {
        Status::find_in(&self.bytes)
    }

    /// When the first byte arrived.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }

    /// When the (first) complete status line arrived.
    pub fn status_at(&self) -> Option<Instant> {
        self.status_at
    }

    /// The phase marks received, each with the moment its line was complete.
    pub fn marks(&self) -> &[(PhaseMark, Instant)] {
        &self.marks
    }

    /// A line ended at the end of `bytes`: record a phase mark or a
    /// status; the event it is worth, if any.
    fn line_done(&mut self, now: Instant) -> Option<VmEvent> {
        let line = &self.bytes[self.line_start..];
        self.line_start = self.bytes.len();
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\n');
        if let Some(mark) = PhaseMark::parse_line(text) {
            if self.marks.len() < MAX_MARKS {
                self.marks.push((mark, now));
            }
            return None;
        }
        if text == READY_LINE && !self.ready {
            self.ready = true;
            return Some(VmEvent::GuestReady);
        }
        if !self.reported && Status::find_in(line).is_some() {
            self.reported = true;
            self.status_at = Some(now);
            return Some(VmEvent::StatusReported);
        }
        None
    }
}

/// COM2's writer.
pub struct StatusChannel {
    state: Arc<Mutex<StatusState>>,
    events: Sender<VmEvent>,
}

impl StatusChannel {
    /// A channel notifying `events` when a status line is complete.
    pub fn new(events: Sender<VmEvent>) -> (Self, Arc<Mutex<StatusState>>) {
        let state = Arc::new(Mutex::new(StatusState::default()));
        (
            StatusChannel {
                state: state.clone(),
                events,
            },
            state,
        )
    }
}

impl Write for StatusChannel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.first_byte.get_or_insert(now);
        for chunk in buf.split_inclusive(|&b| b == b'\n') {
            let room = MAX_STATUS_BYTES.saturating_sub(state.bytes.len());
            state
                .bytes
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.ends_with(b"\n") {
                if let Some(event) = state.line_done(now) {
                    let _ = self.events.send(event);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_keeps_a_bounded_tail_and_sees_panics() {
        let (mut log, state) = ConsoleLog::new(None);
        for i in 0..100 {
            write!(log, "line {i}\r\n").unwrap();
        }
        log.write_all(&vec![b'x'; 5000]).unwrap();
        let tail = state.lock().unwrap().tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "line 71");
        assert_eq!(tail[TAIL_LINES - 2], "line 99");
        assert_eq!(tail[TAIL_LINES - 1].len(), MAX_LINE);
        assert!(!state.lock().unwrap().panicked());
        // The banner arrives one byte at a time, as from a UART.
        for b in b"\n[    1.0] Kernel panic - not syncing: sysrq triggered crash\n" {
            log.write_all(&[*b]).unwrap();
        }
        assert!(state.lock().unwrap().panicked());
        for i in 0..40 {
            writeln!(log, "trace {i}").unwrap();
        }
        let state = state.lock().unwrap();
        assert_eq!(
            state.panic_line(),
            Some("[    1.0] Kernel panic - not syncing: sysrq triggered crash")
        );
    }

    #[test]
    fn status_channel_reports_once_and_is_bounded() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (mut ch, state) = StatusChannel::new(tx);
        for b in b"KESTREL-STATUS exit=3" {
            ch.write_all(&[*b]).unwrap();
        }
        assert!(rx.try_recv().is_err(), "no report before the newline");
        ch.write_all(b"\n").unwrap();
        assert_eq!(rx.try_recv(), Ok(VmEvent::StatusReported));
        ch.write_all(b"KESTREL-STATUS exit=4\n").unwrap();
        assert!(rx.try_recv().is_err(), "reported once");
        assert_eq!(state.lock().unwrap().status(), Some(Status::Exit(4)));
        ch.write_all(&vec![b'y'; 200_000]).unwrap();
        ch.write_all(b"\nKESTREL-STATUS exit=5\n").unwrap();
        assert!(rx.try_recv().is_err(), "nothing after the buffer is full");
        assert!(state.lock().unwrap().bytes.len() <= MAX_STATUS_BYTES);
        assert!(state.lock().unwrap().first_byte().is_some());
    }

    #[test]
    fn phase_marks_are_timed_as_their_lines_end() {
        use kestrel_initramfs::job::Phase;
        let (tx, rx) = std::sync::mpsc::channel();
        let (mut ch, state) = StatusChannel::new(tx);
        let before = Instant::now();
        for b in b"KESTREL-PHASE init uptime_us=1500\r\nKESTREL-PHASE modules uptime_us=2500\n" {
            ch.write_all(&[*b]).unwrap();
        }
        ch.write_all(b"KESTREL-PHASE bogus uptime_us=1\nKESTREL-STATUS exit=0\n")
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(VmEvent::StatusReported));
        let state = state.lock().unwrap();
        let marks: Vec<_> = state
            .marks()
            .iter()
            .map(|(m, _)| (m.phase, m.uptime_us))
            .collect();
        assert_eq!(marks, [(Phase::Init, 1500), (Phase::Modules, 2500)]);
        assert!(state.marks().iter().all(|(_, at)| *at >= before));
        assert!(state.status_at().unwrap() >= state.marks()[1].1);
        assert_eq!(state.status(), Some(Status::Exit(0)));
    }
}

//! The command's terminal (`Spec::tty`): window-size changes from the host.
//!
//! The host sends one `ROWS COLS` line per change of its own terminal on a
//! virtio port; a thread applies each to the guest terminal with
//! `TIOCSWINSZ`, and the kernel sends SIGWINCH to the terminal's
//! foreground process group. Malformed lines are skipped: the host is
//! kestrel, but a bad line must never stop the init.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;

use crate::{kmsg, sys};

/// `ROWS COLS` → the size, when both are numbers above zero.
pub fn parse_winsize(line: &str) -> Option<(u16, u16)> {
    let mut words = line.split_ascii_whitespace();
    let rows: u16 = words.next()?.parse().ok()?;
    let cols: u16 = words.next()?.parse().ok()?;
    (words.next().is_none() && rows > 0 && cols > 0).then_some((rows, cols))
}

/// Applies every size read from `input` to `terminal`, on a thread of its
/// own, until the port closes (the VM ends first, as a rule).
pub fn follow_window_size(input: File, terminal: File) {
    let spawned = std::thread::Builder::new()
        .name("winsize".into())
        .spawn(move || {
            for line in BufReader::new(input).lines() {
                let Ok(line) = line else { break };
                if let Some((rows, cols)) = parse_winsize(&line) {
                    if let Err(e) = sys::set_winsize(terminal.as_raw_fd(), rows, cols) {
                        kmsg::error(&format!("terminal size {rows}x{cols}: {e}"));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        kmsg::error(&format!(
            "no window-size thread ({e}): the size stays as it started"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sizes_parse_and_junk_is_refused() {
        assert_eq!(parse_winsize("40 132"), Some((40, 132)));
        assert_eq!(parse_winsize(" 24  80 \r"), Some((24, 80)));
        for bad in [
            "", "40", "40 x", "0 80", "40 0", "40 80 1", "-1 80", "70000 80",
        ] {
            assert_eq!(parse_winsize(bad), None, "{bad:?}");
        }
    }
}

//! The kernel command line.
//!
//! Owns the default arguments (design §1: quiet console, keyboard-controller
//! reboot, no panic wait, cheap i8042 and clock setup) and the rule for
//! appending the user's. Invariant: the result is printable ASCII without
//! NUL, shorter than [`crate::layout::CMDLINE_MAX`].

use crate::layout;

/// Arguments every boot gets, before `--append`.
///
/// `reboot=k` makes the init's reboot(2) hit the i8042 reset line, which
/// ends the VM; `panic=-1` reboots at once on a panic; `8250.nr_uarts=2`
/// keeps COM2 (the status channel) and skips probing COM3/COM4.
/// Not `i8042.nopnp` (design §1 tuning for QEMU): our DSDT lists no PS/2
/// device, so with PnP on the i8042 driver gives up at once; with `nopnp` it
/// probes the ports and times out ("Can't read CTR"), measured at +1.8 s
/// per boot (Debian 6.1 in the rig).
pub const DEFAULT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux \
     tsc=reliable no_timer_check quiet 8250.nr_uarts=2";

/// The command line could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// NUL, newline or another control or non-ASCII byte.
    #[error("--append contains a control or non-ASCII character: pass plain printable text")]
    BadCharacter,
    /// Longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes, longer than the {max} this kernel accepts: shorten --append")]
    TooLong {
        /// Length with the terminating NUL.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Default arguments followed by `append` (whitespace-trimmed).
pub fn build(append: &str) -> Result<String, CmdlineError> {
    let append = append.trim();
    if append.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(CmdlineError::BadCharacter);
    }
    let line = if append.is_empty() {
        DEFAULT_ARGS.to_string()
    } else {
        format!("{DEFAULT_ARGS} {append}")
    };
    check_len(&line, layout::CMDLINE_MAX)?;
    Ok(line)
}

/// `line` plus its NUL fits in `max` bytes.
pub fn check_len(line: &str, max: usize) -> Result<(), CmdlineError> {
    if line.len() + 1 > max {
        return Err(CmdlineError::TooLong {
            len: line.len() + 1,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_status_uart_and_keyboard_reset() {
        let line = build("").unwrap();
        assert_eq!(line, DEFAULT_ARGS);
        let words: Vec<_> = line.split(' ').collect();
        for needed in ["console=ttyS0", "reboot=k", "panic=-1", "quiet"] {
            assert!(words.contains(&needed), "{needed}");
        }
        let uarts: u32 = words
            .iter()
            .find_map(|w| w.strip_prefix("8250.nr_uarts="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(uarts >= 2);
        assert!(!line.contains("  "));
        assert!(
            !words.contains(&"i8042.nopnp"),
            "would make the i8042 driver probe"
        );
    }

    #[test]
    fn append_goes_last_and_is_trimmed() {
        let line = build("  loglevel=7 init=/x ").unwrap();
        assert!(line.ends_with(" quiet 8250.nr_uarts=2 loglevel=7 init=/x"));
    }

    #[test]
    fn control_characters_and_overlong_lines_are_refused() {
        assert_eq!(build("a\nb"), Err(CmdlineError::BadCharacter));
        assert_eq!(build("a\0b"), Err(CmdlineError::BadCharacter));
        assert_eq!(build("é"), Err(CmdlineError::BadCharacter));
        let long = "x".repeat(layout::CMDLINE_MAX);
        assert!(matches!(build(&long), Err(CmdlineError::TooLong { .. })));
        assert!(check_len("abc", 4).is_ok());
        assert!(check_len("abcd", 4).is_err());
    }
}

//! Minimal diagnostics to stderr: `KESTREL_LOG=debug` turns on debug lines.
//! Owns nothing else; the final verdict line is printed by the binary.

use std::fmt::Arguments;
use std::sync::OnceLock;

fn debug_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("KESTREL_LOG").is_ok_and(|v| v == "debug"))
}

/// Logs at debug level (guest misbehaviour, unknown ports, vCPU exits).
pub fn debug(args: Arguments<'_>) {
    if debug_enabled() {
        eprintln!("kestrel[debug]: {args}");
    }
}

/// Logs a warning (always shown).
pub fn warn(args: Arguments<'_>) {
    eprintln!("kestrel: warning: {args}");
}

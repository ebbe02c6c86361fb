//! The one verdict of a run, its exit code, its final stderr line and
//! its typed record (`--verdict-file`).
//!
//! Invariant: the exit code is a function of the verdict alone —
//! pass → 0, fail(N) → N (a signal n is N = 128 + n), timeout → 124,
//! vmm-error → 125, panic and boot-failure → 255 — and the guest's own
//! status, when it arrived, always wins over how the VM ended afterwards.

use std::fmt;
use std::time::Duration;

use kestrel_initramfs::job::Status;
use kestrel_scenarios::backend::VerdictRecord;
use kestrel_scenarios::RunnerVerdict;

use crate::event::Ending;

/// Exit code for a timeout (as coreutils `timeout`).
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit code for setup and VMM errors (as `docker run`).
pub const EXIT_VMM_ERROR: u8 = 125;
/// Exit code when the guest died without reporting a status.
pub const EXIT_GUEST_DIED: u8 = 255;
/// Exit code when the user ended the VM from the terminal (as a shell's
/// for SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// How a run ended, from the user's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The guest command exited 0.
    Pass,
    /// The guest command failed; the value is kestrel's exit code.
    Fail(u8),
    /// The wall-clock limit passed before a status arrived.
    Timeout,
    /// The kernel panicked before a status arrived.
    Panic,
    /// The guest stopped without a status (or the init could not run the
    /// command); the text says what is known.
    BootFailure(String),
    /// The VMM failed.
    VmmError(String),
    /// The user ended the VM from the terminal (Ctrl-A x) before the
    /// command ended.
    Interrupted,
}

impl Verdict {
    /// Decides the verdict from the status channel, how the VM ended and
    /// whether the console showed a panic.
    pub fn decide(status: Option<Status>, ending: &Ending, panicked: bool) -> Verdict {
        match status {
            Some(Status::Exit(0)) => return Verdict::Pass,
            Some(Status::Exit(n)) => return Verdict::Fail(n),
            Some(Status::Signal(n)) => return Verdict::Fail(128u8.saturating_add(n)),
            Some(Status::InitError(what)) => {
                return Verdict::BootFailure(format!(
                    "the guest init could not run the command: {what}"
                ))
            }
            None => {}
        }
        match ending {
            Ending::Timeout => Verdict::Timeout,
            _ if panicked => Verdict::Panic,
            Ending::VmmFailure(why) => Verdict::VmmError(why.clone()),
            Ending::Reset => {
                Verdict::BootFailure("the guest reset without reporting a status".into())
            }
            Ending::TripleFault(report) => {
                Verdict::BootFailure(format!("the guest triple-faulted: {report}"))
            }
            Ending::Halted => {
                Verdict::BootFailure("every vCPU halted without reporting a status".into())
            }
            Ending::Crash => Verdict::BootFailure("the guest reported a crash".into()),
            Ending::StatusGraceExpired => Verdict::BootFailure("status line unreadable".into()),
            Ending::UserQuit => Verdict::Interrupted,
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail(n) => *n,
            Verdict::Timeout => EXIT_TIMEOUT,
            Verdict::VmmError(_) => EXIT_VMM_ERROR,
            Verdict::Panic | Verdict::BootFailure(_) => EXIT_GUEST_DIED,
            Verdict::Interrupted => EXIT_INTERRUPTED,
        }
    }

    /// Whether the console tail should be shown (also on a timeout: a
    /// silent hang is the worst kind).
    pub fn shows_console(&self) -> bool {
        matches!(
            self,
            Verdict::Panic | Verdict::BootFailure(_) | Verdict::Timeout
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => write!(f, "pass"),
            Verdict::Fail(n) => write!(f, "fail({n})"),
            Verdict::Timeout => write!(f, "timeout"),
            Verdict::Panic => write!(f, "panic"),
            Verdict::BootFailure(_) => write!(f, "boot-failure"),
            Verdict::VmmError(_) => write!(f, "vmm-error"),
            Verdict::Interrupted => write!(f, "interrupted"),
        }
    }
}

/// The typed record `--verdict-file` gets: the verdict line's facts and
/// the reason, in the scenarios crate's terms (an interrupted run, which
/// only a terminal can end, is a VMM error there).
pub fn verdict_record(
    verdict: &Verdict,
    panic_line: Option<&str>,
    boot: Option<Duration>,
    total: Duration,
) -> VerdictRecord {
    let (verdict, reason) = match verdict {
        Verdict::Pass => (RunnerVerdict::Pass, None),
        Verdict::Fail(n) => (RunnerVerdict::Fail(i32::from(*n)), None),
        Verdict::Timeout => (RunnerVerdict::Timeout, None),
        Verdict::Panic => (
            RunnerVerdict::Panic,
            panic_line.map(|l| l.trim().to_owned()),
        ),
        Verdict::BootFailure(why) => (RunnerVerdict::BootFailure, Some(why.clone())),
        Verdict::VmmError(why) => (RunnerVerdict::VmmError, Some(why.clone())),
        Verdict::Interrupted => (
            RunnerVerdict::VmmError,
            Some("interrupted from the terminal (Ctrl-A x)".to_owned()),
        ),
    };
    VerdictRecord {
        verdict,
        boot_ms: boot.map(|b| b.as_millis() as u64),
        total_ms: total.as_millis() as u64,
        reason,
    }
}

/// `kestrel: verdict=<v> boot=<ms> total=<ms>`; `boot=-` when the guest
/// never reached the status channel.
pub fn verdict_line(verdict: &Verdict, boot: Option<Duration>, total: Duration) -> String {
    let boot = boot.map_or_else(|| "-".to_string(), |b| b.as_millis().to_string());
    format!(
        "kestrel: verdict={verdict} boot={boot} total={}",
        total.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_verdict_and_its_reason() {
        let ms = Duration::from_millis;
        let r = verdict_record(&Verdict::Fail(3), None, Some(ms(5)), ms(9));
        assert_eq!(
            (r.verdict, r.boot_ms, r.total_ms, r.reason),
            (RunnerVerdict::Fail(3), Some(5), 9, None)
        );
        let r = verdict_record(
            &Verdict::BootFailure("the guest triple-faulted".into()),
            None,
            None,
            ms(1),
        );
        assert_eq!(r.verdict, RunnerVerdict::BootFailure);
        assert_eq!(r.reason.as_deref(), Some("the guest triple-faulted"));
        assert_eq!(r.boot_ms, None);
        let r = verdict_record(&Verdict::Panic, Some(" Kernel panic - x \n"), None, ms(1));
        assert_eq!(r.reason.as_deref(), Some("Kernel panic - x"));
        let r = verdict_record(&Verdict::Interrupted, None, None, ms(1));
        assert_eq!(r.verdict, RunnerVerdict::VmmError);
    }

    #[test]
    fn status_decides_first() {
        for ending in [
            Ending::Reset,
            Ending::Timeout,
            Ending::TripleFault(Box::default()),
        ] {
            assert_eq!(
                Verdict::decide(Some(Status::Exit(0)), &ending, true),
                Verdict::Pass
            );
            assert_eq!(
                Verdict::decide(Some(Status::Exit(3)), &ending, false),
                Verdict::Fail(3)
            );
        }
        assert_eq!(
            Verdict::decide(Some(Status::Signal(9)), &Ending::Reset, false),
            Verdict::Fail(137)
        );
        assert!(matches!(
            Verdict::decide(Some(Status::InitError("no /bin/sh".into())), &Ending::Reset, false),
            Verdict::BootFailure(why) if why.contains("no /bin/sh")
        ));
    }

    #[test]
    fn without_status_the_ending_decides() {
        assert_eq!(
            Verdict::decide(None, &Ending::Timeout, true),
            Verdict::Timeout
        );
        assert_eq!(Verdict::decide(None, &Ending::Reset, true), Verdict::Panic);
        assert!(matches!(
            Verdict::decide(None, &Ending::Reset, false),
            Verdict::BootFailure(_)
        ));
        assert!(matches!(
            Verdict::decide(None, &Ending::VmmFailure("x".into()), false),
            Verdict::VmmError(_)
        ));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Verdict::Pass.exit_code(), 0);
        assert_eq!(Verdict::Fail(3).exit_code(), 3);
        assert_eq!(Verdict::Fail(137).exit_code(), 137);
        assert_eq!(Verdict::Timeout.exit_code(), 124);
        assert_eq!(Verdict::VmmError(String::new()).exit_code(), 125);
        assert_eq!(Verdict::Panic.exit_code(), 255);
        assert_eq!(Verdict::BootFailure(String::new()).exit_code(), 255);
        assert_eq!(Verdict::Fail(128u8.saturating_add(200)), Verdict::Fail(255));
    }

    #[test]
    fn line_format() {
        let ms = Duration::from_millis;
        assert_eq!(
            verdict_line(&Verdict::Pass, Some(ms(1234)), ms(2345)),
            "kestrel: verdict=pass boot=1234 total=2345"
        );
        assert_eq!(
            verdict_line(&Verdict::Fail(3), Some(ms(5)), ms(6)),
            "kestrel: verdict=fail(3) boot=5 total=6"
        );
        assert_eq!(
            verdict_line(&Verdict::Timeout, None, ms(5001)),
            "kestrel: verdict=timeout boot=- total=5001"
        );
        for (v, s) in [
            (Verdict::Panic, "panic"),
            (Verdict::BootFailure("x".into()), "boot-failure"),
            (Verdict::VmmError("x".into()), "vmm-error"),
        ] {
            assert!(verdict_line(&v, None, ms(1)).contains(&format!("verdict={s} ")));
        }
    }
}

//! Where a run's time goes: kestrel's own marks (process start, inputs
//! ready, VM built, vCPUs released, status line, VM ended, exit) and the
//! guest init's phase marks (`KESTREL-PHASE`, see
//! [`kestrel_initramfs::job::Phase`]) on one host clock.
//!
//! Invariant: marks are listed in the order they happened on the host; a
//! guest mark's host time is when its line was complete on the status
//! channel (a UART, so within a millisecond of the init writing it), and
//! its guest uptime travels with it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kestrel_initramfs::job::{Phase, PhaseMark};

/// One mark of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// `process-start`, `vm-built`, a guest phase name (`init`, …), …
    pub name: String,
    /// Host time since the process started.
    pub at: Duration,
    /// The guest's uptime at this mark (guest marks only).
    pub uptime: Option<Duration>,
}

/// The marks of one run.
#[derive(Debug, Clone)]
pub struct Timings {
    start: Instant,
    marks: Vec<Mark>,
}

impl Timings {
    /// Starts at `start` (the process start) with the mark `process-start`.
    pub fn new(start: Instant) -> Timings {
        let mut t = Timings {
            start,
            marks: Vec::new(),
        };
        t.host("process-start", start);
        t
    }

    /// A host mark at `at`.
    pub fn host(&mut self, name: &str, at: Instant) {
        self.marks.push(Mark {
            name: name.to_string(),
            at: at.saturating_duration_since(self.start),
            uptime: None,
        });
    }

    /// The guest's phase marks, each at the host moment its line arrived.
    pub fn guest(&mut self, marks: &[(PhaseMark, Instant)]) {
        for (mark, at) in marks {
            self.marks.push(Mark {
                name: mark.phase.name().to_string(),
                at: at.saturating_duration_since(self.start),
                uptime: Some(Duration::from_micros(mark.uptime_us)),
            });
        }
    }

    /// Every mark, in host order.
    pub fn marks(&self) -> Vec<Mark> {
        let mut marks = self.marks.clone();
        marks.sort_by_key(|m| m.at);
        marks
    }

    /// Host time of the first mark called `name`.
    pub fn at(&self, name: &str) -> Option<Duration> {
        self.marks.iter().find(|m| m.name == name).map(|m| m.at)
    }

    /// The lines `kestrel --timings` prints: one per mark,
    /// `kestrel: phase <name> at=<ms> delta=<ms>[ uptime=<ms>]`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = Duration::ZERO;
        for m in self.marks() {
            let at = format!("at={:.1}", ms(m.at));
            let delta = format!("delta={:.1}", ms(m.at.saturating_sub(last)));
            let _ = write!(out, "kestrel: phase {:<14} {at:<12} {delta:<14}", m.name);
            if let Some(up) = m.uptime {
                let _ = write!(out, "uptime={:.1}", ms(up));
            }
            let end = out.trim_end().len();
            out.truncate(end);
            out.push('\n');
            last = m.at;
        }
        out
    }
}

/// Parses one line of [`Timings::render`]: (name, at in ms, uptime in ms).
pub fn parse_line(line: &str) -> Option<(String, f64, Option<f64>)> {
    let rest = line.trim().strip_prefix("kestrel: phase ")?;
    let mut words = rest.split_ascii_whitespace();
    let name = words.next()?.to_string();
    let mut at = None;
    let mut uptime = None;
    for w in words {
        if let Some(v) = w.strip_prefix("at=") {
            at = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("uptime=") {
            uptime = v.parse().ok();
        }
    }
    Some((name, at?, uptime))
}

/// The time from `released` (vCPUs started) to the init's first mark (`init`;
/// `job` after a restore from a snapshot, which began past `init`): what
/// the verdict line calls `boot=`.
pub fn time_to_init(released: Instant, marks: &[(PhaseMark, Instant)]) -> Option<Duration> {
    marks
        .iter()
        .find(|(m, _)| m.phase == Phase::Init)
        .or_else(|| marks.iter().find(|(m, _)| m.phase == Phase::Job))
        .map(|(_, at)| at.saturating_duration_since(released))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_render_in_host_order_and_parse_back() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timings::new(start);
        t.host("vm-built", start + ms(20));
        t.host("vcpus-released", start + ms(21));
        t.host("exit", start + ms(900));
        let marks = [
            (
                PhaseMark {
                    phase: Phase::Init,
                    uptime_us: 300_000,
                },
                start + ms(500),
            ),
            (
                PhaseMark {
                    phase: Phase::Command,
                    uptime_us: 650_500,
                },
                start + ms(850),
            ),
        ];
        t.guest(&marks);
        let names: Vec<String> = t.marks().into_iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "process-start",
                "vm-built",
                "vcpus-released",
                "init",
                "command",
                "exit"
            ]
        );
        let text = t.render();
        let parsed: Vec<_> = text.lines().filter_map(parse_line).collect();
        assert_eq!(parsed.len(), 6);
        assert_eq!(parsed[3], ("init".to_string(), 500.0, Some(300.0)));
        assert_eq!(parsed[4].2, Some(650.5));
        assert!(text.lines().nth(3).unwrap().contains(" delta=479.0 "));
        assert_eq!(t.at("command"), Some(ms(850)));
        assert_eq!(time_to_init(start + ms(21), &marks), Some(ms(479)));
        assert_eq!(time_to_init(start, &marks[1..]), None);
        assert_eq!(parse_line("kestrel: verdict=pass boot=1 total=2"), None);
    }
}

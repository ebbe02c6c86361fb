//! `kestrel doctor`: can this machine run kestrel, and at what speed?
//!
//! Checks, in order: `/dev/kvm` exists; this user may open it; the API
//! version; an in-kernel irqchip + PIT can be created (real kernels need
//! them); a hand-written probe guest (a counted loop between two writes to
//! the probe port) runs, and how fast. Hardware-backed KVM runs the loop at
//! well over 100 M iterations/s; the instruction-emulating KVM of the
//! development machines (design §1) manages about 1 M/s, and real kernels do
//! not boot on it: then the nested rig is needed.
//! Invariant: doctor never fails with an error; every problem is a line of
//! the report and the final classification.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::kvm::{Kvm, KVM_PATH};
use crate::layout;
use crate::memory;
use crate::vm::{Boot, Config, Console, Vm};

/// Loop iterations of the probe guest (≈1 s on software KVM, ≈6 ms on
/// hardware KVM).
pub const PROBE_ITERATIONS: u32 = 1_000_000;
/// Iterations per second above which KVM counts as hardware-backed.
pub const HARDWARE_RATE: f64 = 20e6;

/// What doctor concluded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvmClass {
    /// Hardware-speed KVM: kestrel runs kernels here.
    Hardware,
    /// KVM works but emulates instructions: use the nested rig.
    Software,
    /// No usable KVM.
    Unavailable,
}

impl KvmClass {
    /// Machine-readable name (`kestrel: doctor=<name>`).
    pub fn name(self) -> &'static str {
        match self {
            KvmClass::Hardware => "hardware",
            KvmClass::Software => "software",
            KvmClass::Unavailable => "unavailable",
        }
    }

    /// Exit code of `kestrel doctor`.
    pub fn exit_code(self) -> u8 {
        match self {
            KvmClass::Hardware => 0,
            KvmClass::Software => 2,
            KvmClass::Unavailable => 1,
        }
    }

    /// From a measured loop rate.
    pub fn from_rate(iterations_per_second: f64) -> KvmClass {
        if iterations_per_second >= HARDWARE_RATE {
            KvmClass::Hardware
        } else {
            KvmClass::Software
        }
    }
}

/// The report: human lines plus the classification.
#[derive(Debug)]
pub struct Report {
    /// Text to print.
    pub text: String,
    /// Conclusion.
    pub class: KvmClass,
}

/// Real-mode probe: `out 'S'`, `iterations` × (`dec ecx`; `jnz`), `out 'E'`, `hlt`.
pub fn probe_code(iterations: u32) -> Vec<u8> {
    let [lo, hi] = layout::PROBE_PORT.to_le_bytes();
    let mut code = vec![0xba, lo, hi]; // mov dx, PROBE_PORT
    code.extend_from_slice(&[0xb0, b'S', 0xee]); // mov al, 'S'; out dx, al
    code.extend_from_slice(&[0x66, 0xb9]); // mov ecx, imm32
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc]); // L: dec ecx; jnz L
    code.extend_from_slice(&[0xb0, b'E', 0xee]); // mov al, 'E'; out dx, al
    code.push(0xf4); // hlt
    code
}

/// Runs the probe guest; the loop's duration.
pub fn time_probe(iterations: u32) -> Result<Duration, String> {
    let config = Config {
        boot: Boot::Raw {
            code: probe_code(iterations),
        },
        cpus: 1,
        memory_mib: vm_min_memory(),
        timeout: Duration::from_secs(120),
        console: Console::Discard,
        warm: None,
        terminal: false,
    };
    let vm = Vm::try_from(config).map_err(|e| e.to_string())?;
    let log = vm.probe_log();
    let outcome = vm.run();
    let entries = log.entries();
    match (
        entries.iter().find(|(_, b)| *b == b'S'),
        entries.iter().find(|(_, b)| *b == b'E'),
    ) {
        (Some((start, _)), Some((end, _))) => Ok(end.saturating_duration_since(*start)),
        _ => Err(format!(
            "the probe guest did not finish (VM ended: {:?})",
            outcome.ending
        )),
    }
}

/// Iterations of the quick probe `kestrel run` makes once per host boot
/// (≈0.1 s on software KVM, well under a millisecond on hardware).
const QUICK_ITERATIONS: u32 = 100_000;
/// Quick probes before KVM is called software.
const QUICK_TRIES: usize = 5;
/// The quick probe's line: software KVM runs the loop at about 1 M/s;
/// hardware KVM, even nested in the rig's emulated L1 on a loaded host,
/// far faster.
const SOFTWARE_CEILING: f64 = 5e6;

/// The class from the quick probes' rates. A host that preempts the
/// vCPU's thread (a loaded machine, the rig's L1) can only make a probe
/// slower, so the fastest one counts, and software means every probe
/// stayed under [`SOFTWARE_CEILING`].
fn quick_class(rates: &[f64]) -> KvmClass {
    let best = rates.iter().copied().fold(0.0, f64::max);
    if best >= SOFTWARE_CEILING {
        KvmClass::Hardware
    } else {
        KvmClass::Software
    }
}

/// `kestrel run`'s check before it boots a kernel: one sentence naming the
/// rig when `/dev/kvm` emulates instructions (a real kernel cannot boot
/// there: it would only time out). The class is measured once per host
/// boot (the fastest of up to five short probes: a preempted one reads
/// slow) and remembered in `<cache>/doctor/` (keyed by the kernel's boot
/// id), so later runs pay a file read. A missing `/dev/kvm` or a probe
/// that cannot run is left to the VM's own errors. `KESTREL_ALLOW_SOFTWARE_KVM=1`
/// boots anyway.
pub fn require_hardware_speed() -> Result<(), String> {
    if std::env::var_os("KESTREL_ALLOW_SOFTWARE_KVM").is_some_and(|v| v == "1")
        || !std::path::Path::new(KVM_PATH).exists()
    {
        return Ok(());
    }
    let remembered = remembered_class_path();
    let class = match remembered
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        Some(name) if name.trim() == KvmClass::Software.name() => KvmClass::Software,
        Some(name) if name.trim() == KvmClass::Hardware.name() => KvmClass::Hardware,
        _ => {
            let mut rates = Vec::new();
            while rates.len() < QUICK_TRIES {
                let Ok(took) = time_probe(QUICK_ITERATIONS) else {
                    return Ok(());
                };
                rates.push(f64::from(QUICK_ITERATIONS) / took.as_secs_f64().max(1e-9));
                if quick_class(&rates) == KvmClass::Hardware {
                    break;
                }
            }
            let class = quick_class(&rates);
            if let Some(p) = &remembered {
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = kestrel_kernels::kbuild::write_if_changed(p, class.name().as_bytes());
            }
            class
        }
    };
    match class {
        KvmClass::Software => Err(software_kvm_sentence()),
        _ => Ok(()),
    }
}

/// What `kestrel run` says on instruction-emulating KVM.
pub fn software_kvm_sentence() -> String {
    "/dev/kvm here emulates instructions in software (about 1 M/s), so a real kernel cannot boot on it: \
     run kestrel inside the nested rig (`cargo xtask rig -- kestrel …`) or on a machine with hardware \
     virtualization (`kestrel doctor` shows the measurement)"
        .to_owned()
}

/// `<cache>/doctor/kvm-<boot id>`, when both are known.
fn remembered_class_path() -> Option<std::path::PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot_id = boot_id.trim();
    if boot_id.is_empty() || !boot_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return None;
    }
    let cache = kestrel_kernels::Cache::from_env().ok()?;
    Some(cache.root().join("doctor").join(format!("kvm-{boot_id}")))
}

fn vm_min_memory() -> u64 {
    crate::vm::MIN_MEMORY_MIB
}

/// Runs every check.
pub fn run() -> Report {
    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(text, "  {label:<22}{value}");
    };
    let unavailable = |mut text: String, advice: &str| {
        let _ = writeln!(text, "\n{advice}");
        Report {
            text,
            class: KvmClass::Unavailable,
        }
    };

    if !std::path::Path::new(KVM_PATH).exists() {
        line(KVM_PATH, "missing");
        return unavailable(
            text,
            "No KVM here: load kvm_intel/kvm_amd, or run kernels inside the nested rig: cargo xtask rig -- kestrel run …",
        );
    }
    line(KVM_PATH, "present");
    let kvm = match Kvm::open() {
        Ok(kvm) => kvm,
        Err(e) => {
            line("open", "refused");
            return unavailable(text, &e.to_string());
        }
    };
    line("open", "ok");
    line("API version", &kvm.api_version().to_string());

    let irqchip = memory::create(layout::MIB * vm_min_memory())
        .map_err(|e| e.to_string())
        .and_then(|mem| kvm.create_vm(&mem).map_err(|e| e.to_string()))
        .and_then(|vm| vm.create_irqchip_and_pit().map_err(|e| e.to_string()));
    match &irqchip {
        Ok(()) => line("irqchip + PIT", "ok"),
        Err(e) => line("irqchip + PIT", &format!("failed: {e}")),
    }

    let started = Instant::now();
    let class = match time_probe(PROBE_ITERATIONS) {
        Ok(elapsed) => {
            let rate = f64::from(PROBE_ITERATIONS) / elapsed.as_secs_f64().max(1e-9);
            line(
                "probe guest",
                &format!(
                    "{PROBE_ITERATIONS} loop iterations in {:.3} s ({:.1} M/s; whole VM {:.3} s)",
                    elapsed.as_secs_f64(),
                    rate / 1e6,
                    started.elapsed().as_secs_f64()
                ),
            );
            KvmClass::from_rate(rate)
        }
        Err(e) => {
            line("probe guest", &format!("failed: {e}"));
            KvmClass::Unavailable
        }
    };
    let class = if irqchip.is_err() && class == KvmClass::Hardware {
        KvmClass::Unavailable
    } else {
        class
    };
    let advice = match class {
        KvmClass::Hardware => "KVM runs at hardware speed: `kestrel run` boots kernels directly here.",
        KvmClass::Software => "This KVM emulates instructions (about 100x slower than hardware) and real Linux kernels crash on it: run kernel tests inside the nested rig: cargo xtask rig -- kestrel run …",
        KvmClass::Unavailable => "KVM cannot run kestrel's guests here: run kernel tests inside the nested rig: cargo xtask rig -- kestrel run …",
    };
    let _ = writeln!(text, "\n{advice}");
    Report { text, class }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_quick_probe_decides() {
        // Software KVM: every probe near 1 M/s.
        assert_eq!(quick_class(&[1.1e6, 0.9e6, 1.2e6]), KvmClass::Software);
        // The rig's L2 on a loaded host: two probes preempted, one not.
        assert_eq!(quick_class(&[3e6, 4e6, 150e6]), KvmClass::Hardware);
        // Preempted once in a 0.5 ms loop: still far above software.
        assert_eq!(quick_class(&[9e6]), KvmClass::Hardware);
        assert_eq!(quick_class(&[]), KvmClass::Software);
    }

    #[test]
    fn probe_code_layout() {
        let code = probe_code(0x0102_0304);
        assert_eq!(&code[..3], &[0xba, 0xe9, 0x00]);
        assert_eq!(&code[8..12], &[0x04, 0x03, 0x02, 0x01]);
        // The jnz jumps back exactly onto `dec ecx`.
        let jnz = code.iter().position(|&b| b == 0x75).unwrap();
        assert_eq!(&code[jnz - 2..jnz], &[0x66, 0x49]);
        assert_eq!(code[jnz + 1] as i8, -4);
        assert_eq!(*code.last().unwrap(), 0xf4);
    }

    #[test]
    fn classification_by_rate() {
        assert_eq!(KvmClass::from_rate(166e6), KvmClass::Hardware);
        assert_eq!(KvmClass::from_rate(0.95e6), KvmClass::Software);
        assert_eq!(KvmClass::Software.exit_code(), 2);
        assert_eq!(KvmClass::Hardware.name(), "hardware");
    }
}

//! Guest boot checks with QEMU: our initramfs and init on a real kernel.
//!
//! `cargo xtask selftest --accel tcg|kvm --kernel SPEC…` boots each kernel
//! once per case and checks what came back on the status channel:
//! a packed host executable exits 0 with the right output, a shell exits 3,
//! a program that does not exist is an init error, and a guest that panics
//! reports nothing and is seen as dead. With `--accel kvm` QEMU runs with
//! `-accel kvm -cpu host` (it refuses both without KVM) and the guest must
//! offer `kvm-clock` (which it must not under TCG). Real boots only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kestrel_initramfs::job::{Dest, Spec, Status};

use crate::guest::{self, BaseSpec};
use crate::qemu::{contains, Accel, Guest, Machine, Outcome, Sink};
use crate::tools;

/// `cargo xtask selftest` arguments.
#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    /// How QEMU runs the guests.
    #[arg(long, value_enum, default_value_t = AccelArg::Tcg)]
    pub accel: AccelArg,
    /// Kernels to boot (comma-separated specs, e.g. debian:6.1,debian:7.2).
    #[arg(long, value_delimiter = ',', default_value = "debian:6.1")]
    pub kernel: Vec<String>,
}

/// `--accel` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AccelArg {
    Tcg,
    Kvm,
}

/// Modules the checks need: virtio-console carries the command's output.
const MODULES: &[&str] = &["virtio_pci", "virtio_console"];
/// vCPUs of each guest: two under TCG (SMP is checked through `nproc`);
/// one on KVM, since inside the rig L2 guests with two vCPUs stall or
/// corrupt memory now and then (RCU stalls, seen under QEMU and kestrel
/// alike: the rig's emulated SVM, not the guest).
fn cpus(accel: Accel) -> u32 {
    match accel {
        Accel::Kvm => 1,
        Accel::Tcg => 2,
    }
}

struct Case {
    name: &'static str,
    argv: &'static [&'static str],
    check: fn(&Outcome, Accel) -> Result<()>,
}

const CASES: &[Case] = &[
    Case {
        name: "packed nproc exits 0",
        argv: &["/usr/bin/nproc"],
        check: |o, accel| {
            expect_status(o, Status::Exit(0))?;
            let out = String::from_utf8_lossy(&o.stdout);
            if out.trim() != cpus(accel).to_string() {
                bail!("nproc printed {out:?}, expected {}", cpus(accel));
            }
            Ok(())
        },
    },
    Case {
        name: "shell exits 3, streams apart, clock shows the accelerator",
        // `read` is a shell builtin: no other program needs packing.
        argv: &[
            "/bin/sh",
            "-c",
            "read cs < /sys/devices/system/clocksource/clocksource0/available_clocksource; \
             echo \"$cs\"; echo to-stderr >&2; exit 3",
        ],
        check: |o, accel| {
            expect_status(o, Status::Exit(3))?;
            if String::from_utf8_lossy(&o.stderr).trim() != "to-stderr" {
                bail!("stderr was {:?}", String::from_utf8_lossy(&o.stderr));
            }
            // kvm-clock exists only when the guest runs on KVM.
            let on_kvm = contains(&o.stdout, b"kvm-clock");
            if on_kvm != (accel == Accel::Kvm) {
                bail!(
                    "clocksources {:?} do not match {accel:?}",
                    String::from_utf8_lossy(&o.stdout).trim()
                );
            }
            Ok(())
        },
    },
    Case {
        name: "missing program is an init error",
        argv: &["/no/such/program"],
        check: |o, _| match &o.status {
            Some(Status::InitError(what)) if what.contains("/no/such/program") => Ok(()),
            other => bail!("expected an init error naming the program, got {other:?}"),
        },
    },
    Case {
        name: "panicking guest reports no status",
        argv: &["/bin/sh", "-c", "echo c > /proc/sysrq-trigger; exit 0"],
        check: |o, _| {
            if o.status.is_some() {
                bail!("a guest that panicked reported {:?}", o.status);
            }
            if !o.panicked() {
                bail!("the guest died but the kernel log shows no panic");
            }
            Ok(())
        },
    },
];

fn expect_status(o: &Outcome, want: Status) -> Result<()> {
    if o.status.as_ref() != Some(&want) {
        bail!("expected {want}, {}", o.describe());
    }
    Ok(())
}

/// Runs every case on every kernel; prints one line per case and a summary.
/// Returns the number of failures.
pub fn run(args: &SelftestArgs) -> Result<usize> {
    let qemu = tools::ensure_qemu()?;
    let accel = match args.accel {
        AccelArg::Tcg => Accel::Tcg,
        AccelArg::Kvm => Accel::Kvm,
    };
    let executables: Vec<PathBuf> = ["/usr/bin/nproc", "/bin/sh"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for spec in &args.kernel {
        let kernel = guest::kernel(spec)?;
        let base = guest::base_initramfs(&BaseSpec {
            name: "selftest",
            kernel: &kernel,
            modules: MODULES,
            executables: &executables,
        })?;
        let dir = tempfile::tempdir()?;
        for case in CASES {
            let job = Spec {
                argv: case.argv.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/usr/bin:/bin".into()],
                stdout: Dest::VirtioPort("kestrel.stdout".into()),
                stderr: Dest::VirtioPort("kestrel.stderr".into()),
                status: Some(Dest::Path("/dev/ttyS1".into())),
                ..Spec::default()
            };
            let initrd = dir.path().join("initrd.cpio");
            guest::initrd_with_job(&base, &job, &initrd)?;
            let append = String::from("console=ttyS0 quiet panic=-1");
            let guest = Guest {
                accel,
                machine: Machine::Pc,
                cpu_model: match accel {
                    Accel::Tcg => "EPYC".into(),
                    Accel::Kvm => "host".into(),
                },
                cpus: cpus(accel),
                memory_mib: 512,
                kernel: kernel.image.clone(),
                initrd,
                append,
                shared_memory: false,
                fs: None,
                ports: Some((Sink::Capture, Sink::Capture)),
                echo_console: false,
                kill_on_lockup: false,
                inspect_when_stuck: false,
                snapshot: None,
                idle: None,
                timeout: Duration::from_secs(180),
                silence: Duration::from_secs(120),
            };
            let start = Instant::now();
            let outcome = guest.run(&qemu)?;
            let secs = start.elapsed().as_secs_f64();
            match (case.check)(&outcome, accel) {
                Ok(()) => {
                    passed += 1;
                    println!("ok     {spec} {:?}: {} ({secs:.1} s)", accel, case.name);
                }
                Err(why) => {
                    failed += 1;
                    println!(
                        "FAILED {spec} {:?}: {}: {why:#} ({secs:.1} s)",
                        accel, case.name
                    );
                    println!(
                        "--- last kernel log lines ---\n{}",
                        outcome.console_tail(25)
                    );
                    if !outcome.qemu_log.trim().is_empty() {
                        println!("--- QEMU ---\n{}", outcome.qemu_log.trim());
                    }
                }
            }
        }
    }
    println!("selftest: {passed} passed, {failed} failed");
    Ok(failed)
}

//! Hand-written real-mode guests on the real /dev/kvm: the vCPU loop, the
//! buses, the UARTs and status channel, the i8042 reset, timeouts, triple
//! faults and garbage I/O — everything short of a Linux kernel. Skipped
//! (with a printed reason) where /dev/kvm cannot be opened.
//!
//! Guests start at `layout::RAW_GUEST_ENTRY` in big real mode (CS base 0,
//! flat data segments), with no interrupt controller: `hlt` stops a vCPU.

use std::time::{Duration, Instant};

use kestrel::event::Ending;
use kestrel::kvm::Kvm;
use kestrel::layout;
use kestrel::verdict::Verdict;
use kestrel::vm::{Boot, Config, Console, Outcome, Vm};

fn kvm_usable() -> bool {
    match Kvm::open() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

fn config(code: Vec<u8>, cpus: u32, timeout: Duration) -> Config {
    Config {
        boot: Boot::Raw { code },
        cpus,
        memory_mib: 32,
        timeout,
        console: Console::Discard,
        warm: None,
        terminal: false,
    }
}

fn run(code: Vec<u8>, cpus: u32, timeout: Duration) -> Outcome {
    Vm::try_from(config(code, cpus, timeout))
        .expect("VM builds")
        .run()
}

fn port_bytes(port: u16) -> [u8; 2] {
    port.to_le_bytes()
}

/// Writes the NUL-terminated `msg` to `port` byte by byte, then either
/// resets through the i8042 or halts.
fn write_then(port: u16, msg: &[u8], reset: bool) -> Vec<u8> {
    const MSG_AT: u16 = 19;
    let si = (layout::RAW_GUEST_ENTRY as u16 + MSG_AT).to_le_bytes();
    let dx = port_bytes(port);
    let mut code = vec![
        0xbe, si[0], si[1], // mov si, msg
        0xba, dx[0], dx[1], // mov dx, port
        0xac,  // L: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp L
    ];
    if reset {
        code.extend_from_slice(&[0xb0, 0xfe, 0xe6, layout::I8042_CMD_PORT as u8]);
    // out 0x64, 0xfe
    } else {
        code.extend_from_slice(&[0x90, 0x90, 0x90, 0x90]);
    }
    code.push(0xf4); // hlt
    assert_eq!(code.len(), usize::from(MSG_AT));
    code.extend_from_slice(msg);
    code.push(0);
    code
}

#[test]
fn status_on_com2_then_i8042_reset_gives_the_guest_exit_code() {
    if !kvm_usable() {
        return;
    }
    let code = write_then(
        layout::COM2_PORT,
        b"KESTREL-PHASE init uptime_us=7\nKESTREL-STATUS exit=3\n",
        true,
    );
    let outcome = run(code, 1, Duration::from_secs(30));
    assert_eq!(outcome.verdict, Verdict::Fail(3));
    assert_eq!(outcome.verdict.exit_code(), 3);
    assert_eq!(outcome.ending, Ending::Reset);
    // The phase mark is timed on the host; `boot` is the time to it.
    assert_eq!(outcome.marks.len(), 1, "{:?}", outcome.marks);
    assert_eq!(outcome.marks[0].0.uptime_us, 7);
    assert!(outcome.boot.is_some());
    assert!(outcome.status_at.unwrap() >= outcome.marks[0].1);

    // No `init` mark (not our init): no boot time, the verdict all the same.
    let code = write_then(layout::COM2_PORT, b"KESTREL-STATUS exit=0\n", true);
    let outcome = run(code, 1, Duration::from_secs(30));
    assert_eq!(outcome.verdict, Verdict::Pass);
    assert_eq!(outcome.boot, None);
}

#[test]
fn console_text_reaches_the_tail_and_a_panic_is_recognised() {
    if !kvm_usable() {
        return;
    }
    let msg = b"booting\nKernel panic - not syncing: test\n";
    let outcome = run(
        write_then(layout::COM1_PORT, msg, true),
        1,
        Duration::from_secs(30),
    );
    assert_eq!(outcome.verdict, Verdict::Panic);
    assert_eq!(outcome.verdict.exit_code(), 255);
    assert_eq!(
        outcome.console_tail,
        vec!["booting", "Kernel panic - not syncing: test"]
    );
    assert_eq!(outcome.boot, None, "nothing on the status channel");
}

#[test]
fn halting_without_status_is_a_boot_failure() {
    if !kvm_usable() {
        return;
    }
    let outcome = run(
        write_then(layout::COM1_PORT, b"hi\n", false),
        1,
        Duration::from_secs(30),
    );
    assert_eq!(outcome.ending, Ending::Halted);
    assert!(matches!(outcome.verdict, Verdict::BootFailure(_)));
    assert_eq!(outcome.verdict.exit_code(), 255);
}

#[test]
fn a_status_without_reset_ends_after_the_grace_period() {
    if !kvm_usable() {
        return;
    }
    // Writes the status, then spins forever (jmp $) instead of resetting.
    let mut guest = write_then(layout::COM2_PORT, b"KESTREL-STATUS exit=0\n", false);
    guest[14..16].copy_from_slice(&[0xeb, 0xfe]);
    let started = Instant::now();
    let outcome = run(guest, 1, Duration::from_secs(60));
    assert_eq!(outcome.verdict, Verdict::Pass);
    assert_eq!(outcome.ending, Ending::StatusGraceExpired);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn timeout_stops_every_vcpu_and_threads_are_named() {
    if !kvm_usable() {
        return;
    }
    // The limit counts from building the VM (`--timeout` is wall-clock).
    let started = Instant::now();
    let spin = vec![0xeb, 0xfe]; // jmp $
    let vm = Vm::try_from(config(spin, 2, Duration::from_secs(2))).unwrap();
    // A thread names itself once it starts: poll briefly.
    let named = |name: &str| {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .any(|comm| comm.trim() == name)
    };
    let until = Instant::now() + Duration::from_secs(2);
    while !(named("kestrel_vcpu 0") && named("kestrel_vcpu 1")) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(named("kestrel_vcpu 0") && named("kestrel_vcpu 1"));
    let outcome = vm.run();
    let took = started.elapsed();
    assert_eq!(outcome.verdict, Verdict::Timeout);
    assert_eq!(outcome.verdict.exit_code(), 124);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[test]
fn garbage_ports_and_mmio_do_not_hurt_the_vmm() {
    if !kvm_usable() {
        return;
    }
    let mut code = vec![
        0xb0, 0x5a, // mov al, 0x5a
        0x31, 0xd2, // xor dx, dx
        // P: out dx, al; in al, dx; mov al, 0x5a; add dx, 7; jnc P
        0xee, 0xec, 0xb0, 0x5a, 0x83, 0xc2, 0x07, 0x73, 0xf7,
        // mov ebx, 0xc0000000; mov cx, 64
        0x66, 0xbb, 0x00, 0x00, 0x00, 0xc0, 0xb9, 0x40, 0x00,
        // M: mov [ebx], al; mov eax, [ebx]; mov [ebx+0xff8], eax;
        0x67, 0x88, 0x03, 0x67, 0x66, 0x8b, 0x03, 0x67, 0x66, 0x89, 0x83, 0xf8, 0x0f, 0x00, 0x00,
        // add ebx, 0x01000000; loop M
        0x66, 0x81, 0xc3, 0x00, 0x00, 0x00, 0x01, 0xe2, 0xe8,
    ];
    // Then the i8042 reset (no status: a boot failure).
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
    let outcome = run(code, 1, Duration::from_secs(60));
    assert_eq!(outcome.ending, Ending::Reset, "{outcome:?}");
    assert!(matches!(outcome.verdict, Verdict::BootFailure(_)));
}

#[test]
fn triple_fault_ends_the_vm() {
    if !kvm_usable() {
        return;
    }
    let idt = (layout::RAW_GUEST_ENTRY as u16 + 9).to_le_bytes();
    let code = vec![
        0x0f, 0x01, 0x1e, idt[0], idt[1], // lidt [idt]: limit 0
        0xcc,   // int3 → #GP → #DF → triple fault
        0, 0, 0, 0, 0, 0, // the IDT descriptor (at offset 9)
    ];
    // The descriptor sits at offset 9.
    let outcome = run(code, 1, Duration::from_secs(60));
    match &outcome.ending {
        Ending::TripleFault(report) => {
            assert_eq!(outcome.verdict.exit_code(), 255);
            // The report names the vCPU and where it was: at or just past
            // the int3, in real mode (CR0.PE clear) — unless KVM reset the
            // registers first (AMD SVM), which the report then says.
            assert_eq!(report.vcpu, 0);
            if report.registers_reset {
                assert!(report.to_string().contains("already reset"), "{report}");
            } else {
                let at = report.rip.wrapping_sub(layout::RAW_GUEST_ENTRY);
                assert!((5..=6).contains(&at), "{report}");
                assert_eq!(report.cr[0] & 1, 0, "{report}");
            }
            let text = outcome.verdict.to_string();
            assert_eq!(text, "boot-failure");
        }
        // The instruction-emulating KVM of the development machines (see
        // `kestrel doctor`) gives up on exception delivery instead.
        Ending::VmmFailure(why) if why.contains("emulation failure") => {
            eprintln!("note: this KVM reports an emulation failure, not a triple fault");
            assert_eq!(outcome.verdict.exit_code(), 125);
        }
        other => panic!("unexpected ending {other:?}"),
    }
}

#[test]
fn doctor_probe_runs() {
    if !kvm_usable() {
        return;
    }
    let took = kestrel::doctor::time_probe(10_000).expect("probe finishes");
    assert!(took < Duration::from_secs(30));
}

//! `kestrel run --gdb PORT` under a real gdb, on Debian 6.1 (issue 14
//! item 6): a hardware breakpoint on a kernel function is hit at its
//! address, memory there disassembles, a software breakpoint on another
//! function is hit, `stepi` moves RIP, and after `detach` the guest runs
//! to its normal verdict.
//!
//! Debian's System.map is a placeholder, so the addresses come from the
//! guest itself: a first boot with `nokaslr` prints them from
//! `/proc/kallsyms`; the second boot, also `nokaslr`, is the one gdb
//! drives. Two vCPUs, so stopping one stops the other (all-stop).
//!
//! A second test speaks the protocol itself to a hand-written real-mode
//! guest (any usable /dev/kvm, the software one here included): framing,
//! the target description, registers, memory, both breakpoint kinds, a
//! step, Ctrl-C, a bad packet, and a detach after which the guest runs on.
//!
//! Prerequisites as in `real_kernel.rs`, plus gdb on PATH. In the rig:
//! `cargo test -p kestrel --release --test gdb --no-run`, then
//! `cargo xtask rig -- env KESTREL_REAL_KVM_TESTS=1 <the test binary> --test-threads 1 --nocapture`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{prerequisites, require, Run, KESTREL};

/// The function the hardware breakpoint goes on: the init calls getpid
/// first thing, so it is hit early.
const HW_FUNCTION: &str = "__x64_sys_getpid";
/// The function the software breakpoint goes on: every process that ends
/// calls it.
const SW_FUNCTION: &str = "__x64_sys_exit_group";
/// `--timeout` of each boot (time stopped in gdb does not count).
const BOOT_LIMIT: &str = "90";
/// How long gdb's whole session, and then the rest of the boot, may take.
const GDB_LIMIT: Duration = Duration::from_secs(120);
const END_LIMIT: Duration = Duration::from_secs(120);
/// How long kestrel may take to start listening.
const LISTEN_LIMIT: Duration = Duration::from_secs(90);

fn gdb_present() -> Result<(), String> {
    Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("gdb cannot run ({e}): apt-get install gdb"))
        .map(|_| ())
}

/// The addresses of `names` in `/proc/kallsyms` of a `nokaslr` boot.
fn kernel_addresses(names: &[&str]) -> Vec<u64> {
    let pattern = names
        .iter()
        .map(|n| format!(" {n}$"))
        .collect::<Vec<_>>()
        .join("|");
    let script =
        format!("echo 0 > /proc/sys/kernel/kptr_restrict; grep -E '{pattern}' /proc/kallsyms");
    let run = Run::of(Command::new(KESTREL).args([
        "run",
        "--kernel",
        "debian:6.1",
        "--console",
        "none",
        "--append",
        "nokaslr",
        "--timeout",
        BOOT_LIMIT,
        "--",
        "sh",
        "-c",
        &script,
    ]));
    run.expect(0, "the kallsyms boot");
    names
        .iter()
        .map(|name| {
            run.stdout
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 3 && f[2] == *name)
                        .then(|| u64::from_str_radix(f[0], 16).ok())
                        .flatten()
                })
                .filter(|&a| a != 0)
                .unwrap_or_else(|| panic!("no address for {name} in:\n{}", run.stdout))
        })
        .collect()
}

/// Waits for `child` until `limit`, killing it then; its exit code (None:
/// killed).
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every `rip 0x…` value gdb printed, in order.
fn rips(gdb_out: &str) -> Vec<u64> {
    gdb_out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("rip"))
                .then(|| f.next())
                .flatten()
                .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        })
        .collect()
}

#[test]
fn gdb_breakpoints_step_and_detach_on_debian_6_1() {
    if prerequisites("6.1").is_none() || require(gdb_present()).is_none() {
        return;
    }
    let addrs = kernel_addresses(&[HW_FUNCTION, SW_FUNCTION]);
    let (hw, sw) = (addrs[0], addrs[1]);
    eprintln!("{HW_FUNCTION} = {hw:#x}, {SW_FUNCTION} = {sw:#x}");

    // The rig's L1 leaves the loopback interface down (it has no network);
    // gdb and kestrel meet on 127.0.0.1.
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .stderr(Stdio::null())
        .status();
    let started = Instant::now();
    let mut kestrel = Command::new(KESTREL)
        .args([
            "run",
            "--kernel",
            "debian:6.1",
            "--console",
            "none",
            "--cpus",
            "2",
            "--append",
            "nokaslr",
            "--timeout",
            BOOT_LIMIT,
            "--gdb",
            "0",
            "--",
            "sh",
            "-c",
            "echo pid=$$",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kestrel starts");
    // stderr line by line: the port from the "waiting for gdb" line, then
    // the rest for the verdict.
    let stderr = kestrel.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut kestrel_err = String::new();
    let port = loop {
        let left = LISTEN_LIMIT.saturating_sub(started.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) => {
                kestrel_err.push_str(&line);
                kestrel_err.push('\n');
                if let Some(rest) = line.strip_prefix("kestrel: waiting for gdb on 127.0.0.1:") {
                    break rest
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse::<u16>()
                        .unwrap();
                }
            }
            Err(_) => {
                let _ = kestrel.kill();
                panic!("kestrel never waited for gdb:\n{kestrel_err}");
            }
        }
    };
    assert!(kestrel_err.contains(&format!("target remote :{port}")));

    let mut gdb = Command::new("gdb")
        .args(["-batch", "-nx"])
        .args(
            [
                "set pagination off".to_string(),
                format!("target remote :{port}"),
                "info threads".into(),
                format!("hbreak *{hw:#x}"),
                "continue".into(),
                "info registers rip".into(),
                "x/1i $pc".into(),
                "delete".into(),
                format!("break *{sw:#x}"),
                "continue".into(),
                "info registers rip".into(),
                "delete".into(),
                "stepi".into(),
                "info registers rip".into(),
                "detach".into(),
            ]
            .iter()
            .flat_map(|c| ["-ex".to_string(), c.clone()]),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb starts");
    let mut gdb_stdout = gdb.stdout.take().unwrap();
    let mut gdb_stderr = gdb.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = gdb_stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = gdb_stderr.read_to_string(&mut s);
        s
    });
    let gdb_code = wait_bounded(&mut gdb, GDB_LIMIT);
    let gdb_out = out_reader.join().unwrap();
    let gdb_err = err_reader.join().unwrap();
    let gdb_session = started.elapsed();

    let code = wait_bounded(&mut kestrel, END_LIMIT);
    for line in lines.try_iter() {
        kestrel_err.push_str(&line);
        kestrel_err.push('\n');
    }
    let mut stdout = String::new();
    if let Some(mut out) = kestrel.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let report = format!(
        "--- gdb (exit {gdb_code:?})\n{gdb_out}\n--- gdb stderr\n{gdb_err}\n--- kestrel (exit {code:?})\n{stdout}\n{kestrel_err}"
    );
    eprintln!("{gdb_out}");
    let path = if kestrel_err.contains("does not intercept int3") {
        "debug registers (KVM here does not intercept int3)"
    } else {
        "int3"
    };
    eprintln!("software breakpoints used: {path}");
    eprintln!(
        "gdb session {} ms, whole run {} ms",
        gdb_session.as_millis(),
        started.elapsed().as_millis()
    );

    assert_eq!(gdb_code, Some(0), "gdb did not finish\n{report}");
    assert!(
        gdb_out.contains("Thread 2") || gdb_out.contains("vCPU 1"),
        "one gdb thread per vCPU\n{report}"
    );
    let seen = rips(&gdb_out);
    assert_eq!(seen.len(), 3, "three rip values\n{report}");
    assert_eq!(
        seen[0], hw,
        "the hardware breakpoint stops at {HW_FUNCTION}\n{report}"
    );
    assert!(
        gdb_out.contains(&format!("=> {hw:#x}")),
        "memory at the breakpoint disassembles\n{report}"
    );
    assert_eq!(
        seen[1], sw,
        "the software breakpoint stops at {SW_FUNCTION}\n{report}"
    );
    assert_ne!(seen[2], sw, "stepi moves rip\n{report}");
    assert_eq!(
        code,
        Some(0),
        "after detach the guest runs to its end\n{report}"
    );
    assert!(stdout.contains("pid="), "the command ran\n{report}");
    assert!(kestrel_err.contains("verdict=pass"), "{report}");
}

// ---- the protocol against a raw guest ----

/// One gdb connection, by hand.
struct Wire(TcpStream);

impl Wire {
    fn send(&mut self, payload: &str) {
        let sum = payload.bytes().fold(0u8, |s, b| s.wrapping_add(b));
        self.0
            .write_all(format!("${payload}#{sum:02x}").as_bytes())
            .unwrap();
    }

    /// The next packet's payload (acks skipped, checksum checked, acked).
    fn reply(&mut self) -> String {
        let mut byte = [0u8; 1];
        let mut next = || {
            self.0.read_exact(&mut byte).expect("a reply in time");
            byte[0]
        };
        while next() != b'$' {}
        let mut payload = Vec::new();
        loop {
            match next() {
                b'#' => break,
                b => payload.push(b),
            }
        }
        let sum = String::from_utf8(vec![next(), next()]).unwrap();
        let want = payload.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        assert_eq!(sum, format!("{want:02x}"), "checksum");
        self.0.write_all(b"+").unwrap();
        String::from_utf8_lossy(&payload).into_owned()
    }

    fn ask(&mut self, payload: &str) -> String {
        self.send(payload);
        self.reply()
    }
}

/// RIP from a `g` reply (after 16 eight-byte registers).
fn rip_of(g: &str) -> u64 {
    let bytes: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&g[256 + 2 * i..258 + 2 * i], 16).unwrap())
        .collect();
    u64::from_le_bytes(bytes.try_into().unwrap())
}

fn thread_of(stop: &str) -> String {
    let at = stop.find("thread:").expect("a thread in the stop reply") + 7;
    stop[at..].split(';').next().unwrap().to_string()
}

#[test]
fn the_protocol_against_a_raw_guest() {
    use kestrel::gdb::Listener;
    use kestrel::layout::RAW_GUEST_ENTRY;
    use kestrel::vm::{Boot, Config, Console, Vm};

    if let Err(e) = kestrel::kvm::Kvm::open() {
        eprintln!("skipped: {e}");
        return;
    }
    let entry = RAW_GUEST_ENTRY;
    let (lp, spin) = (entry + 6, entry + 10);
    let code = vec![
        0x66, 0xb9, 0xe8, 0x03, 0, 0, // mov ecx, 1000
        0x66, 0x49, // L: dec ecx
        0x75, 0xfc, // jnz L
        0xeb, 0xfe, // spin: jmp spin
    ];
    let mut vm = Vm::try_from(Config {
        boot: Boot::Raw { code: code.clone() },
        cpus: 2,
        memory_mib: 32,
        timeout: Duration::from_secs(3),
        console: Console::Discard,
        warm: None,
        terminal: false,
    })
    .expect("VM builds");
    let listener = Listener::bind(0).unwrap();
    let port = listener.port();
    vm.attach_gdb(listener);
    let run = std::thread::spawn(move || vm.run());

    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut w = Wire(stream);
    assert!(w.ask("qSupported:swbreak+").contains("hwbreak+"));
    assert_eq!(w.ask("?"), "T05thread:1;");
    assert_eq!(w.ask("qfThreadInfo"), "m1,2");
    assert_eq!(w.ask("qsThreadInfo"), "l");
    let xml = w.ask("qXfer:features:read:target.xml:0,3fff");
    assert!(xml.starts_with('l') && xml.contains("i386:x86-64"), "{xml}");

    // Registers and memory before the first instruction.
    let g = w.ask("g");
    assert_eq!(g.len(), 2 * 600, "the g packet's size");
    assert_eq!(rip_of(&g), entry);
    let hex: String = code[..4].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(w.ask(&format!("m{entry:x},4")), hex);
    assert_eq!(w.ask(&format!("M{:x},2:abcd", entry + 0x200)), "OK");
    assert_eq!(w.ask(&format!("m{:x},2", entry + 0x200)), "abcd");
    assert!(w.ask("m7fffffffffff0000,4").starts_with('E'), "outside RAM");

    // A bad checksum is refused, then things go on.
    w.0.write_all(b"$g#00").unwrap();
    let mut nak = [0u8; 1];
    w.0.read_exact(&mut nak).unwrap();
    assert_eq!(&nak, b"-");

    // Hardware breakpoint on the loop, hit by one of the vCPUs.
    assert_eq!(w.ask(&format!("Z1,{lp:x},1")), "OK");
    let stop = w.ask("c");
    assert!(
        stop.starts_with("T05") && stop.contains("hwbreak"),
        "{stop}"
    );
    let thread = thread_of(&stop);
    assert_eq!(w.ask(&format!("Hg{thread}")), "OK");
    assert_eq!(rip_of(&w.ask("g")), lp);
    assert_eq!(w.ask(&format!("z1,{lp:x},1")), "OK");

    // One step of that vCPU moves it on.
    let stop = w.ask(&format!("vCont;s:{thread}"));
    assert!(stop.starts_with("T05"), "{stop}");
    assert_eq!(thread_of(&stop), thread);
    assert_eq!(rip_of(&w.ask("g")), lp + 2);

    // A software breakpoint where both vCPUs end up.
    assert_eq!(w.ask(&format!("Z0,{spin:x},1")), "OK");
    let stop = w.ask("c");
    assert!(
        stop.starts_with("T05") && stop.contains("swbreak"),
        "{stop}"
    );
    assert_eq!(w.ask(&format!("Hg{}", thread_of(&stop))), "OK");
    assert_eq!(rip_of(&w.ask("g")), spin);
    // Memory shows the guest's bytes, not a breakpoint.
    assert_eq!(w.ask(&format!("m{spin:x},2")), "ebfe");
    assert_eq!(w.ask(&format!("z0,{spin:x},1")), "OK");

    // Ctrl-C stops the spinning guest.
    w.send("c");
    w.0.write_all(&[0x03]).unwrap();
    let stop = w.reply();
    assert!(stop.starts_with("T02"), "{stop}");

    // Detach: the guest runs on, to its --timeout (3 s of running).
    assert_eq!(w.ask("D"), "OK");
    drop(w);
    let outcome = run.join().unwrap();
    assert_eq!(
        outcome.ending,
        kestrel::event::Ending::Timeout,
        "the guest ran on after detach"
    );
}

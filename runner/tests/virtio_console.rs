//! The guest command's output over virtio-console, on real kernels.
//!
//! The `kestrel` binary boots `KESTREL_TEST_KERNEL` with an initramfs this
//! test packs (our init, `virtio_mmio` + `virtio_console`, a job whose
//! stdout/stderr are the ports `kestrel.stdout`/`kestrel.stderr`), and the
//! test checks what arrives on kestrel's own stdout and stderr. Needs
//! hardware-speed KVM (the nested rig here); skipped with a printed reason
//! otherwise. Modules come from `KESTREL_TEST_MODULES_DIR`, else from
//! `<root>/lib/modules/<release>` next to `<root>/boot/vmlinuz-<release>`.
//!
//! `KESTREL_TEST_BENCH=1` also measures 10 MiB of output against QEMU-KVM
//! with a virtio-serial-pci device on the same kernel (needs
//! `qemu-system-x86_64`, or `KESTREL_QEMU`), both writing to a file,
//! printing the guest-timed MB/s (median of `KESTREL_BENCH_RUNS`, default 3)
//! and their ratio; `cargo xtask bench output` runs it. With
//! `KESTREL_REAL_KVM_TESTS=1` a missing prerequisite fails instead of
//! skipping.
//!
//! Example: `cargo test -p kestrel --release --test virtio_console --no-run`, then
//! `cargo xtask rig -- env KESTREL_TEST_KERNEL=<vmlinuz> target/release/deps/virtio_console-<hash> --test-threads 1 --nocapture`

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

mod common;

use kestrel::devices::virtio::console::{STDERR_PORT, STDOUT_PORT};
use kestrel::doctor::{time_probe, KvmClass};
use kestrel_initramfs::image::{concat, job_archive, BaseImage};
use kestrel_initramfs::job::{Dest, Spec};

/// 10 MiB.
const TEN_MIB: usize = 10 << 20;
/// A `seq` this long is more than 10 MiB.
const SEQ_LAST: u32 = 1_500_000;
/// Writes the test data to a guest file, then times `cat` of it to stdout
/// (so only the output path is measured) and reports `ns=` on stderr.
const TEN_MIB_SCRIPT: &str = "seq 1 1500000 | head -c 10485760 > /tmp/data; \
     s=$(date +%s%N); cat /tmp/data; e=$(date +%s%N); echo ns=$((e-s)) >&2";
const EXECUTABLES: &[&str] = &[
    "/bin/sh",
    "/usr/bin/seq",
    "/usr/bin/head",
    "/usr/bin/cat",
    "/usr/bin/date",
];

struct Setup {
    kernel: PathBuf,
    init: PathBuf,
    modules_dir: PathBuf,
}

fn setup() -> Result<&'static Setup, String> {
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            let kernel = std::env::var_os("KESTREL_TEST_KERNEL")
                .map(PathBuf::from)
                .ok_or("KESTREL_TEST_KERNEL is not set")?;
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let init = std::env::var_os("KESTREL_INIT")
                .map(PathBuf::from)
                .or_else(|| {
                    [
                        "target/x86_64-unknown-linux-gnu/release/kestrel-init",
                        "target/debug/kestrel-init",
                    ]
                    .iter()
                    .map(|p| root.join(p))
                    .find(|p| p.exists())
                })
                .ok_or(
                    "no kestrel-init binary: build it (cargo xtask builds it) or set KESTREL_INIT",
                )?;
            let modules_dir = std::env::var_os("KESTREL_TEST_MODULES_DIR")
                .map(PathBuf::from)
                .or_else(|| modules_beside(&kernel))
                .ok_or("no modules directory: set KESTREL_TEST_MODULES_DIR")?;
            let took = time_probe(1_000_000).map_err(|e| format!("no usable KVM: {e}"))?;
            if KvmClass::from_rate(1e6 / took.as_secs_f64().max(1e-9)) != KvmClass::Hardware {
                return Err("KVM here is software-emulated: run inside the nested rig".into());
            }
            Ok(Setup {
                kernel,
                init,
                modules_dir,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// `<root>/lib/modules/<release>` for `<root>/boot/vmlinuz-<release>`.
fn modules_beside(kernel: &Path) -> Option<PathBuf> {
    let release = kernel.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let dir = kernel.parent()?.parent()?.join("lib/modules").join(release);
    dir.is_dir().then_some(dir)
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kestrel-vcon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An initrd running `sh -c script` with output on the two ports.
fn initrd(setup: &Setup, script: &str, modules: &[&str], name: &str) -> PathBuf {
    let base = BaseImage {
        init: setup.init.clone(),
        modules_dir: Some(setup.modules_dir.clone()),
        modules: modules.iter().map(|m| m.to_string()).collect(),
        executables: EXECUTABLES.iter().map(PathBuf::from).collect(),
    }
    .build()
    .expect("base image");
    let spec = Spec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/usr/bin:/bin".into()],
        stdout: Dest::VirtioPort(STDOUT_PORT.into()),
        stderr: Dest::VirtioPort(STDERR_PORT.into()),
        status: Some(Dest::Path("/dev/ttyS1".into())),
        ..Default::default()
    };
    let path = scratch_dir().join(format!("{name}.cpio"));
    std::fs::write(&path, concat(&base, &job_archive(&spec).unwrap())).unwrap();
    path
}

/// `kestrel run` on that initrd; its output, exit status and wall time.
fn kestrel(setup: &Setup, initrd: &Path) -> (Output, f64) {
    kestrel_to(setup, initrd, None)
}

/// The same with kestrel's stdout going to the file `stdout` (as QEMU's
/// ports do in the comparison), read back into the `Output`.
fn kestrel_to(setup: &Setup, initrd: &Path, stdout: Option<&Path>) -> (Output, f64) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kestrel"));
    cmd.arg("run")
        .arg("--kernel")
        .arg(&setup.kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--console", "none", "--timeout", "120"]);
    if let Some(path) = stdout {
        cmd.stdout(std::fs::File::create(path).unwrap());
    }
    let started = Instant::now();
    let mut out = cmd.output().expect("run kestrel");
    let wall = started.elapsed().as_secs_f64();
    if let Some(path) = stdout {
        out.stdout = std::fs::read(path).unwrap();
    }
    (out, wall)
}

fn expected_ten_mib() -> Vec<u8> {
    let mut data = Vec::with_capacity(11 << 20);
    for n in 1..=SEQ_LAST {
        data.extend_from_slice(format!("{n}\n").as_bytes());
    }
    assert!(data.len() >= TEN_MIB);
    data.truncate(TEN_MIB);
    data
}

/// The guest-measured MB/s from the `ns=` line on stderr.
fn guest_rate(stderr: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(stderr);
    let ns: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ns="))?
        .trim()
        .parse()
        .ok()?;
    Some(TEN_MIB as f64 / 1e6 / (ns / 1e9))
}

/// The set-up, or skip with the reason printed; with
/// `KESTREL_REAL_KVM_TESTS=1` (CI in the rig) a missing prerequisite fails.
fn skip() -> Option<&'static Setup> {
    common::require(setup().map_err(|why| format!("a prerequisite is missing: {why}")))
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ({} bytes) ---\n{}\n--- stderr ---\n{}",
        out.status,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(2000)]),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn stdout_and_stderr_reach_their_own_streams() {
    let Some(setup) = skip() else {
        return;
    };
    // Reopening the streams (`> /dev/stderr` is `/proc/self/fd/2`) works:
    // a port can be open only once, so the init relays them through pipes.
    let script = "echo out; echo err >&2; echo out2 > /proc/self/fd/1; \
                  echo err2 > /proc/self/fd/2; exit 3";
    let initrd = initrd(setup, script, &["virtio_mmio", "virtio_console"], "streams");
    let (out, _) = kestrel(setup, &initrd);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(out.stdout, b"out\nout2\n", "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = stderr.lines();
    assert_eq!(lines.next(), Some("err"), "{}", describe(&out));
    assert_eq!(lines.next(), Some("err2"), "{}", describe(&out));
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("kestrel: verdict=fail(3)")),
        "{}",
        describe(&out)
    );
}

#[test]
fn ten_mib_arrive_intact_and_in_order() {
    let Some(setup) = skip() else {
        return;
    };
    let initrd = initrd(
        setup,
        TEN_MIB_SCRIPT,
        &["virtio_mmio", "virtio_console"],
        "ten-mib",
    );
    let (out, wall) = kestrel(setup, &initrd);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let expected = expected_ten_mib();
    assert_eq!(out.stdout.len(), expected.len(), "{}", describe(&out));
    if let Some(at) = out.stdout.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("output differs from byte {at} on");
    }
    let rate = guest_rate(&out.stderr).expect("ns= line on stderr");
    eprintln!(
        "kestrel virtio-console: 10 MiB in the guest at {rate:.1} MB/s (whole run {wall:.2} s)"
    );
}

/// QEMU-KVM on the same kernel, virtio-serial-pci with two named ports.
fn qemu(setup: &Setup, initrd: &Path, dir: &Path) -> (Vec<u8>, Vec<u8>, f64) {
    let (out, err, status) = (dir.join("q-out"), dir.join("q-err"), dir.join("q-status"));
    let started = Instant::now();
    let run = Command::new("timeout")
        .arg("120")
        .arg(std::env::var_os("KESTREL_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into()))
        .args(["-accel", "kvm", "-cpu", "host", "-M", "pc", "-smp", "1", "-m", "512M"])
        .args(["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none"])
        .arg("-kernel")
        .arg(&setup.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 reboot=t i8042.noaux tsc=reliable no_timer_check initcall_blacklist=cmos_init",
        ])
        .args(["-serial", "null", "-serial"])
        .arg(format!("file:{}", status.display()))
        .args(["-device", "virtio-serial-pci,id=vser"])
        .args(["-chardev", &format!("file,id=out,path={}", out.display())])
        .args(["-device", "virtserialport,chardev=out,name=kestrel.stdout"])
        .args(["-chardev", &format!("file,id=err,path={}", err.display())])
        .args(["-device", "virtserialport,chardev=err,name=kestrel.stderr"])
        .output()
        .expect("run qemu");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        run.status.success(),
        "qemu: {:?} {}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let status = std::fs::read_to_string(&status).unwrap_or_default();
    assert!(
        status.contains("KESTREL-STATUS exit=0"),
        "qemu guest: {status:?}"
    );
    (
        std::fs::read(&out).unwrap(),
        std::fs::read(&err).unwrap(),
        wall,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn ten_mib_throughput_against_qemu() {
    if std::env::var_os("KESTREL_TEST_BENCH").is_none() {
        eprintln!("skipped: set KESTREL_TEST_BENCH=1 to compare with QEMU");
        return;
    }
    let Some(setup) = skip() else {
        return;
    };
    let expected = expected_ten_mib();
    let ours = initrd(
        setup,
        TEN_MIB_SCRIPT,
        &["virtio_mmio", "virtio_console"],
        "bench-kestrel",
    );
    let theirs = initrd(
        setup,
        TEN_MIB_SCRIPT,
        &["virtio_pci", "virtio_console"],
        "bench-qemu",
    );
    let dir = scratch_dir();
    let (mut k, mut q, mut kw, mut qw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let runs: usize = std::env::var("KESTREL_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    for round in 0..runs {
        let (out, wall) = kestrel_to(setup, &ours, Some(&dir.join("k-out")));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(
            out.stdout == expected,
            "kestrel round {round}: output differs"
        );
        k.push(guest_rate(&out.stderr).unwrap());
        kw.push(wall);
        let (stdout, stderr, wall) = qemu(setup, &theirs, &dir);
        assert!(stdout == expected, "qemu round {round}: output differs");
        q.push(guest_rate(&stderr).unwrap());
        qw.push(wall);
    }
    let (k, q) = (median(k), median(q));
    eprintln!(
        "10 MiB output, median of {runs}: kestrel {k:.1} MB/s, QEMU {q:.1} MB/s, ratio {:.2}; \
         whole runs kestrel {:.2} s, QEMU {:.2} s",
        k / q,
        median(kw),
        median(qw)
    );
}

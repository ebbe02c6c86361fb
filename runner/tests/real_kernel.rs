//! Real Linux kernels under kestrel — the acceptance boots of issue 3.
//!
//! Needs hardware-speed KVM (run inside the nested rig on the development
//! machines) and `KESTREL_TEST_KERNEL` = a bzImage or PVH vmlinux; the
//! static guest init comes from `KESTREL_INIT` or the workspace target dir.
//! Each test packs its own initramfs (our init, `sh` and `sleep` from the
//! host, a job spec) with kestrel-initramfs. Skipped with a printed reason
//! when any of that is missing; never faked.
//!
//! Example (from the workspace root):
//! build with `cargo test -p kestrel --release --test real_kernel --no-run`, then
//! `cargo xtask rig -- env KESTREL_TEST_KERNEL=<vmlinuz> target/release/deps/real_kernel-<hash> --test-threads 1`

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kestrel::doctor::{time_probe, KvmClass};
use kestrel::verdict::Verdict;
use kestrel::vm::{Boot, Config, Console, Outcome, Vm};
use kestrel_initramfs::image::{concat, job_archive, BaseImage};
use kestrel_initramfs::job::{Dest, Spec};

/// Kernel and init, or why the tests cannot run here.
fn setup() -> Result<(PathBuf, PathBuf), String> {
    static SETUP: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
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
            let took = time_probe(1_000_000).map_err(|e| format!("no usable KVM: {e}"))?;
            let rate = 1e6 / took.as_secs_f64().max(1e-9);
            if KvmClass::from_rate(rate) != KvmClass::Hardware {
                return Err("KVM here is software-emulated: run inside the nested rig".into());
            }
            Ok((kernel, init))
        })
        .clone()
}

/// Boots the test kernel with a job running `sh -c script`.
fn boot(script: &str, cpus: u32, memory_mib: u64, timeout: Duration) -> Option<Outcome> {
    let (kernel, init) = match setup() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("skipped: {why}");
            return None;
        }
    };
    let base = BaseImage {
        init,
        executables: vec!["/bin/sh".into(), "/bin/sleep".into()],
        ..Default::default()
    }
    .build()
    .expect("base image");
    let spec = Spec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/usr/bin:/bin".into()],
        status: Some(Dest::Path("/dev/ttyS1".into())),
        ..Default::default()
    };
    let initrd = concat(&base, &job_archive(&spec).expect("job archive"));
    let dir = std::env::temp_dir().join(format!("kestrel-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "initrd-{:x}.cpio",
        script.len() * 131 + cpus as usize
    ));
    std::fs::write(&path, &initrd).unwrap();
    let config = Config {
        boot: Boot::Kernel {
            kernel,
            initrd: Some(path),
            append: String::new(),
        },
        cpus,
        memory_mib,
        timeout,
        console: Console::Discard,
    };
    Some(Vm::try_from(config).expect("VM builds").run())
}

#[test]
fn exit_status_comes_back() {
    let Some(out) = boot("exit 0", 1, 512, Duration::from_secs(60)) else {
        return;
    };
    assert_eq!(out.verdict, Verdict::Pass, "{:?}", out.console_tail);
    let out = boot("exit 3", 1, 512, Duration::from_secs(60)).unwrap();
    assert_eq!(out.verdict.exit_code(), 3, "{:?}", out.console_tail);
}

#[test]
fn two_cpus_are_online() {
    let script = "read o < /sys/devices/system/cpu/online; [ \"$o\" = 0-1 ] && exit 0; echo online=$o; exit 1";
    let Some(out) = boot(script, 2, 512, Duration::from_secs(60)) else {
        return;
    };
    assert_eq!(out.verdict, Verdict::Pass, "{:?}", out.console_tail);
}

#[test]
fn memtotal_is_within_ten_percent() {
    // Exit 0 when MemTotal (kB) is at least 90% of 512 MiB.
    let script = "while read k v u; do [ \"$k\" = MemTotal: ] && [ $v -ge 471859 ] && [ $v -le 524288 ] && exit 0; done < /proc/meminfo; exit 1";
    let Some(out) = boot(script, 1, 512, Duration::from_secs(60)) else {
        return;
    };
    assert_eq!(out.verdict, Verdict::Pass, "{:?}", out.console_tail);
}

#[test]
fn a_hanging_guest_times_out() {
    let started = Instant::now();
    let Some(out) = boot("sleep 1000", 1, 256, Duration::from_secs(5)) else {
        return;
    };
    assert_eq!(out.verdict.exit_code(), 124);
    assert!(started.elapsed() < Duration::from_secs(7));
}

#[test]
fn a_panic_is_reported_with_its_lines() {
    let Some(out) = boot(
        "echo c > /proc/sysrq-trigger; sleep 5",
        1,
        256,
        Duration::from_secs(60),
    ) else {
        return;
    };
    assert_eq!(out.verdict, Verdict::Panic);
    assert_eq!(out.verdict.exit_code(), 255);
    assert!(!out.console_tail.is_empty());
}

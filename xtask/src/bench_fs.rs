//! `cargo xtask bench fs`: the host tree read from a guest, three ways, side
//! by side in the same place (the rig when this host's KVM is software):
//! kestrel's in-process virtio-fs, QEMU-KVM with Debian's virtiofsd, and
//! QEMU-KVM with our `virtiofs-lite` binary.
//!
//! One boot per VMM and run does every workload, timed inside the guest
//! (boot time excluded): a `find` over a tree, the sha256 of a large file,
//! `tar c` of the kernel's modules tree piped to `wc -c` (GNU tar skips
//! reading files when it writes to /dev/null), and writes into a writable
//! directory (kestrel `--rw`, QEMU a writable bind of the same share):
//! creating many small files (`echo > f$i`), unlinking them, and one large
//! write with fsync. The answers must agree with each other and the sha256
//! with the host's: a fast wrong answer is no data.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kestrel_initramfs::job::{Dest, Root, Spec, Status};

use crate::guest::{self, BaseSpec};
use crate::qemu::{Accel, Guest, Machine, Sink, VhostUserFs};
use crate::tools::Qemu;
use crate::{bench, paths, tools};

/// `cargo xtask bench fs` arguments.
#[derive(Debug, clap::Args)]
pub struct FsArgs {
    /// Kernel to boot.
    #[arg(long, default_value = "debian:6.1")]
    pub kernel: String,
    /// Boots per VMM (alternating).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Tree walked with `find`.
    #[arg(long, default_value = "/usr")]
    pub tree: PathBuf,
    /// Size of the file read in full, in MiB.
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// Small files created (then unlinked) in the writable directory.
    #[arg(long, default_value_t = 1000)]
    pub files: u32,
    /// Size of the large write, in MiB.
    #[arg(long, default_value_t = 64)]
    pub write_mib: u64,
    /// Run here even if this host's KVM looks software-based (used inside the rig).
    #[arg(long)]
    pub here: bool,
}

pub const TAG: &str = "kestrel-root";
const VMMS: [&str; 3] = ["kestrel", "qemu+virtiofsd", "qemu+virtiofs-lite"];
const WORKLOADS: [&str; 6] = ["find", "read", "tar", "create", "unlink", "write"];
/// Index of the sha256 workload (checked against the host, not across VMMs).
const READ: usize = 1;

/// One boot's answers: per workload, milliseconds and the answer text.
type Answers = Vec<(u64, String)>;

pub fn run(args: &FsArgs) -> Result<()> {
    if args.runs == 0 || args.size_mib == 0 || args.files == 0 || args.write_mib == 0 {
        bail!("--runs, --size-mib, --files and --write-mib must be at least 1");
    }
    let kestrel = guest::build_kestrel()?;
    let lite = guest::build_release_bin("virtiofs-lite", "virtiofs-lite")?;
    let kernel = guest::kernel(&args.kernel)?;
    let modules = kernel
        .modules_dir
        .clone()
        .context("this kernel has no modules dir: the tar workload needs one")?;
    let big = big_file(args.size_mib)?;
    let base = guest::base_initramfs(&BaseSpec {
        name: "bench-fs",
        kernel: &kernel,
        modules: &["virtio_pci", "virtiofs", "virtio_console"],
        executables: &[],
    })?;
    if !args.here && !guest::hardware_kvm(&kestrel) {
        let mut cmd = ["bench", "fs", "--here", "--kernel", &args.kernel]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>();
        cmd.extend(["--runs".into(), args.runs.to_string()]);
        cmd.extend(["--tree".into(), args.tree.to_string_lossy().into_owned()]);
        cmd.extend(["--size-mib".into(), args.size_mib.to_string()]);
        cmd.extend(["--files".into(), args.files.to_string()]);
        cmd.extend(["--write-mib".into(), args.write_mib.to_string()]);
        return bench::in_rig(cmd);
    }
    // Debian 12's virtiofsd is the C one from QEMU 7.2's packages; QEMU 10
    // drops its vhost-user connection at start ("virtio_loop: Unexpected
    // poll revents"), so both QEMU columns use the system QEMU it ships with.
    let qemu = tools::system_qemu()?;
    tools::step(format!("bench fs: the QEMU columns run {}", qemu.version));
    if !Path::new(tools::VIRTIOFSD).exists() {
        bail!(
            "{} is missing: install Debian's qemu-system-x86 (it ships virtiofsd)",
            tools::VIRTIOFSD
        );
    }
    let host_sha = sha256_host(&big)?;
    let writable = paths::kestrel_dir().join("bench").join("fs-write");
    std::fs::create_dir_all(&writable)?;
    let script = workload_script(&args.tree, &big, &modules, &writable, args);
    let cwd = std::env::current_dir()?;
    let dir = tempfile::tempdir()?;
    let initrd = dir.path().join("initrd.cpio");
    guest::initrd_with_job(
        &base,
        &Spec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.clone()],
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: Some(cwd.to_string_lossy().into_owned()),
            root: Root::VirtioFs(TAG.into()),
            writable: vec![writable.to_string_lossy().into_owned()],
            tmpfs: vec!["/tmp".into(), "/run".into(), "/var/tmp".into()],
            stdout: Dest::VirtioPort("kestrel.stdout".into()),
            stderr: Dest::VirtioPort("kestrel.stderr".into()),
            status: Some(Dest::Path("/dev/ttyS1".into())),
            ..Spec::default()
        },
        &initrd,
    )?;

    tools::step(format!(
        "bench fs: {} runs each; find {}, read {} MiB, tar {}",
        args.runs,
        args.tree.display(),
        args.size_mib,
        modules.display()
    ));
    let mut results: Vec<Vec<Answers>> = vec![Vec::new(); VMMS.len()];
    for run in 1..=args.runs {
        for (i, vmm) in VMMS.iter().enumerate() {
            let stdout = match i {
                0 => run_kestrel(&kestrel, &args.kernel, &script, &modules, &writable)?,
                1 => run_qemu(&qemu, &initrd, &kernel.image, dir.path(), Server::Virtiofsd)?,
                _ => run_qemu(
                    &qemu,
                    &initrd,
                    &kernel.image,
                    dir.path(),
                    Server::Lite(&lite),
                )?,
            };
            let answers = parse_answers(&stdout).with_context(|| format!("{vmm}: {stdout}"))?;
            let shown: Vec<String> = answers
                .iter()
                .zip(WORKLOADS)
                .map(|((ms, _), w)| format!("{w} {ms} ms"))
                .collect();
            println!("run {run} {vmm:<19} {}", shown.join(", "));
            results[i].push(answers);
        }
    }
    check_agreement(&results, &host_sha)?;
    println!();
    print!("{:<19}", "median ms");
    for w in WORKLOADS {
        print!(" {w:>10}");
    }
    println!();
    let medians: Vec<Vec<u64>> = results
        .iter()
        .map(|runs| {
            (0..WORKLOADS.len())
                .map(|w| median(runs.iter().map(|a| a[w].0).collect()))
                .collect()
        })
        .collect();
    for (vmm, m) in VMMS.iter().zip(&medians) {
        print!("{vmm:<19}");
        for v in m {
            print!(" {v:>10}");
        }
        println!();
    }
    for (w, name) in WORKLOADS.iter().enumerate() {
        println!(
            "ratio {name}: kestrel/qemu+virtiofsd = {:.2}, kestrel/qemu+virtiofs-lite = {:.2} (below 1: kestrel is faster)",
            ratio(medians[0][w], medians[1][w]),
            ratio(medians[0][w], medians[2][w])
        );
    }
    Ok(())
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / (b.max(1)) as f64
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// The guest script: one line per workload, `name ms answer`.
fn workload_script(
    tree: &Path,
    big: &Path,
    modules: &Path,
    writable: &Path,
    args: &FsArgs,
) -> String {
    let q = |p: &Path| format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"));
    format!(
        "set -e; now() {{ date +%s%N; }}; \
         t=$(now); a=$(find {tree} | wc -l); echo \"find $(( ($(now)-t)/1000000 )) $a\"; \
         t=$(now); a=$(sha256sum {big} | cut -c1-64); echo \"read $(( ($(now)-t)/1000000 )) $a\"; \
         t=$(now); a=$(tar cf - -C {modules} . | wc -c); echo \"tar $(( ($(now)-t)/1000000 )) $a\"; \
         d={w}/run-$$; rm -rf \"$d\"; mkdir \"$d\"; \
         t=$(now); i=0; while [ $i -lt {files} ]; do echo $i > \"$d/f$i\"; i=$((i+1)); done; \
         a=$(ls \"$d\" | wc -l); echo \"create $(( ($(now)-t)/1000000 )) $a\"; \
         t=$(now); rm -f \"$d\"/f*; a=$(ls \"$d\" | wc -l); echo \"unlink $(( ($(now)-t)/1000000 )) $a\"; \
         t=$(now); dd if=/dev/zero of=\"$d/big\" bs=1M count={mib} conv=fsync 2>/dev/null; \
         a=$(stat -c %s \"$d/big\"); echo \"write $(( ($(now)-t)/1000000 )) $a\"; rm -rf \"$d\"",
        tree = q(tree),
        big = q(big),
        modules = q(modules),
        w = q(writable),
        files = args.files,
        mib = args.write_mib,
    )
}

fn parse_answers(stdout: &str) -> Result<Answers> {
    WORKLOADS
        .iter()
        .map(|w| {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{w} ")))
                .with_context(|| format!("no `{w}` line in the guest's output"))?;
            let mut parts = line.split_whitespace().skip(1);
            let ms = parts
                .next()
                .and_then(|m| m.parse().ok())
                .context("bad time")?;
            Ok((ms, parts.next().unwrap_or_default().to_string()))
        })
        .collect()
}

fn check_agreement(results: &[Vec<Answers>], host_sha: &str) -> Result<()> {
    let first = &results[0][0];
    for (vmm, runs) in VMMS.iter().zip(results) {
        for answers in runs {
            if answers[READ].1 != host_sha {
                bail!(
                    "{vmm} read the big file as sha256 {}, the host says {host_sha}",
                    answers[READ].1
                );
            }
            for w in (0..WORKLOADS.len()).filter(|&w| w != READ) {
                if answers[w].1 != first[w].1 {
                    bail!(
                        "{vmm} answered {} for {}, kestrel answered {}",
                        answers[w].1,
                        WORKLOADS[w],
                        first[w].1
                    );
                }
            }
        }
    }
    Ok(())
}

/// A file of `mib` MiB of deterministic bytes under target/kestrel/bench/.
fn big_file(mib: u64) -> Result<PathBuf> {
    let path = paths::kestrel_dir()
        .join("bench")
        .join(format!("big-{mib}m.bin"));
    if path.metadata().is_ok_and(|m| m.len() == mib << 20) {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    // xorshift64: incompressible enough, identical on every machine.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn sha256_host(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("could not run sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `modules` may sit under a directory kestrel's guest covers with a
/// tmpfs (the cache in `/root`, the guest user's fresh home): it is asked
/// for at its own path, as the QEMU guests see it through the root.
fn run_kestrel(
    kestrel: &Path,
    kernel: &str,
    script: &str,
    modules: &Path,
    writable: &Path,
) -> Result<String> {
    let m = modules.display();
    let out = Command::new(kestrel)
        .arg("run")
        .arg("--rw")
        .arg(writable)
        .args([
            "--share",
            &format!("{m}:{m}"),
            "--kernel",
            kernel,
            "--memory",
            "1024",
            "--timeout",
            "900",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .context("could not start kestrel")?;
    if !out.status.success() {
        bail!(
            "kestrel failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub enum Server<'a> {
    Virtiofsd,
    Lite(&'a Path),
}

fn run_qemu(
    qemu: &Qemu,
    initrd: &Path,
    kernel: &Path,
    dir: &Path,
    server: Server<'_>,
) -> Result<String> {
    let socket = dir.join("fs.sock");
    let _ = std::fs::remove_file(&socket);
    let mut child = start_server(&server, &socket)?;
    let guest = Guest {
        accel: Accel::Kvm,
        machine: Machine::Pc,
        cpu_model: "host".into(),
        cpus: 1,
        memory_mib: 1024,
        kernel: kernel.to_path_buf(),
        initrd: initrd.to_path_buf(),
        append: "console=ttyS0 quiet panic=-1".into(),
        shared_memory: true,
        fs: Some(VhostUserFs {
            socket,
            tag: TAG.into(),
        }),
        ports: Some((Sink::Capture, Sink::Capture)),
        echo_console: false,
        kill_on_lockup: false,
        inspect_when_stuck: false,
        snapshot: None,
        idle: None,
        timeout: Duration::from_secs(900),
        silence: Duration::from_secs(600),
    };
    let outcome = guest.run(qemu);
    let _ = child.kill();
    let _ = child.wait();
    let outcome = outcome?;
    if outcome.status != Some(Status::Exit(0)) {
        let mut log = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut log);
        }
        bail!(
            "QEMU did not report exit=0: {}\n{}\n{}{log}",
            outcome.describe(),
            String::from_utf8_lossy(&outcome.stderr),
            outcome.console_tail(15)
        );
    }
    Ok(String::from_utf8_lossy(&outcome.stdout).into_owned())
}

/// Starts `virtiofs-lite` (binary `bin`) sharing `/` read-only on
/// `socket` (stress's `--root host`).
pub fn start_lite(bin: &Path, socket: &Path) -> Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.args(["--shared-dir", "/", "--tag", TAG])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tools::spawn_on_socket(cmd, socket)
}

/// Starts a vhost-user-fs server sharing `/` on `socket`.
pub fn start_server(server: &Server<'_>, socket: &Path) -> Result<Child> {
    let mut cmd = match server {
        Server::Virtiofsd => {
            let mut c = Command::new(tools::VIRTIOFSD);
            c.args(["-o", "source=/", "-o", "sandbox=chroot", "-o", "cache=auto"]);
            c
        }
        Server::Lite(bin) => {
            // Writable like virtiofsd; the guest binds only the bench's
            // write directory writable.
            let mut c = Command::new(bin);
            c.args(["--shared-dir", "/", "--tag", TAG, "--writable"]);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tools::spawn_on_socket(cmd, socket)
}

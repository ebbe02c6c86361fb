//! `virtiofs-lite`: a vhost-user virtio-fs backend for one host directory.
//!
//! ```text
//! virtiofs-lite --socket PATH --shared-dir DIR [--writable] [--tag TAG] [--fd N]
//! ```
//! Serves one front end (QEMU's `vhost-user-fs-pci`) and exits 0 when it
//! disconnects. Errors are one sentence on stderr and a non-zero exit.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use vhost::vhost_user::{Error as VhostError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use virtiofs_lite::vhost::VhostFsBackend;
use virtiofs_lite::{FsConfig, FsDevice, Server, ServerConfig};

/// A small virtio-fs server (vhost-user backend) for one host directory.
#[derive(Debug, Parser)]
#[command(name = "virtiofs-lite", version)]
struct Args {
    /// vhost-user socket to create and listen on.
    #[arg(long, required_unless_present = "fd", conflicts_with = "fd")]
    socket: Option<PathBuf>,
    /// An already-listening Unix socket inherited from the caller (avoids a
    /// start-up race: the caller binds before starting us).
    #[arg(long)]
    fd: Option<RawFd>,
    /// The host directory to share.
    #[arg(long)]
    shared_dir: PathBuf,
    /// Let the guest change the share (read-only otherwise: EROFS).
    #[arg(long)]
    writable: bool,
    /// The file system tag (for front ends that read the config space).
    #[arg(long, default_value = "kestrel")]
    tag: String,
    /// Number of request queues (each beyond the first gets a thread).
    #[arg(long, default_value_t = 1)]
    num_request_queues: u32,
    /// Seconds the guest may cache names and attributes.
    #[arg(long, default_value_t = 1.0)]
    cache_timeout: f64,
    /// Most O_PATH handles kept open (default: a quarter of RLIMIT_NOFILE).
    #[arg(long)]
    max_open_inodes: Option<usize>,
    /// Log problems with requests and the session on stderr.
    #[arg(long)]
    verbose: bool,
    /// Print per-opcode request counts and times on stderr every N seconds.
    #[arg(long, value_name = "SECS")]
    stats: Option<u64>,
}

struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("virtiofs-lite: {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() {
    let args = Args::parse();
    let level = if args.verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Error
    };
    static LOGGER: std::sync::OnceLock<StderrLog> = std::sync::OnceLock::new();
    let _ = log::set_logger(LOGGER.get_or_init(|| StderrLog(level)));
    log::set_max_level(level);
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("virtiofs-lite: {e:#}");
            std::process::exit(1);
        }
    }
    // Worker threads may still sit in epoll; the session is over.
    std::process::exit(0);
}

fn listener(args: &Args) -> Result<Listener> {
    if let Some(fd) = args.fd {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes one `stat` into `st` and reads nothing else.
        let ok = unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0;
        // SAFETY: fstat succeeded, so `st` is initialised.
        if !ok || unsafe { st.assume_init() }.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            bail!("--fd {fd} is not an open socket");
        }
        // SAFETY: the caller handed us this listening socket to own; we
        // checked it is an open socket and nothing else in this process uses it.
        return Ok(unsafe { Listener::from_raw_fd(fd) });
    }
    let path = args
        .socket
        .as_ref()
        .expect("clap requires --socket or --fd");
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if UnixStream::connect(path).is_ok() {
            bail!("the socket {} is in use by another process", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("could not remove the stale socket {}", path.display()))?;
    }
    Listener::new(path, false)
        .map_err(|e| anyhow::anyhow!("could not listen on {}: {e}", path.display()))
}

fn run(args: &Args) -> Result<()> {
    if !args.shared_dir.is_dir() {
        bail!(
            "the shared directory {} does not exist or is not a directory",
            args.shared_dir.display()
        );
    }
    if !(0.0..=86400.0).contains(&args.cache_timeout) {
        bail!("--cache-timeout must be between 0 and 86400 seconds");
    }
    let nofile = virtiofs_lite::raise_nofile_limit();
    log::debug!("RLIMIT_NOFILE is {nofile}");
    let mut fs = FsConfig {
        writable: args.writable,
        ..FsConfig::default()
    };
    if let Some(n) = args.max_open_inodes {
        fs.max_open_inodes = n;
    }
    let timeout = Duration::from_secs_f64(args.cache_timeout);
    let cfg = ServerConfig {
        fs,
        entry_timeout: timeout,
        attr_timeout: timeout,
        ..ServerConfig::default()
    };
    // The guest kernel already applied its umask; create with exact modes.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0) };
    let server = Server::new(&args.shared_dir, cfg).context("cannot serve the share")?;
    let server = Arc::new(server);
    if let Some(secs) = args.stats {
        let server = server.clone();
        std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(secs.max(1)));
                let line: Vec<String> = server
                    .stats()
                    .iter()
                    .map(|s| format!("{}:{}/{}us", s.opcode, s.count, s.nanos / 1000))
                    .collect();
                eprintln!("virtiofs-lite stats {}", line.join(" "));
            })
            .context("cannot start the stats thread")?;
    }
    let device = FsDevice::new(server, &args.tag, args.num_request_queues)?;
    let mut listener = listener(args)?;

    let backend = VhostFsBackend::new(device);
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("virtiofs-lite".into(), backend, mem)
        .map_err(|e| anyhow::anyhow!("cannot start the vhost-user daemon: {e}"))?;
    daemon
        .start(&mut listener)
        .map_err(|e| anyhow::anyhow!("no front end connected: {e}"))?;
    log::info!("front end connected");
    match daemon.wait() {
        Ok(())
        | Err(DaemonError::HandleRequest(VhostError::Disconnected))
        | Err(DaemonError::HandleRequest(VhostError::PartialMessage)) => Ok(()),
        Err(e) => bail!("the vhost-user session failed: {e}"),
    }
}

//! Receiving the job over the status UART (a warm start: the initramfs is
//! the base archive alone, see `spec.rs`).
//!
//! The init opens [`report::FALLBACK_PATH`] read-write in raw mode, makes it
//! the status channel (the pending `init` mark goes out), writes
//! `KESTREL-READY\n`, then reads one [`JobHeader`] line and exactly its
//! `len` bytes of job spec, which it merges into the base spec. The host
//! snapshots the VM while the init waits here and restores it for each job.
//! So every run starts from the same kernel random state: the init sets the
//! clock to the header's time, then mixes the header's seed into the
//! kernel's random pool and re-keys its CRNG before anything else runs.
//! When the job names this UART as its status channel it stays the channel
//! (`main.rs` does not open it again); when it names another, the marks up
//! to that switch (`init`, `job`, maybe `modules`) have gone out here.
//!
//! When kestrel's job window is there (its magic read through `/dev/mem`,
//! see `kestrel_initramfs::job`), the init acknowledges it before the
//! ready line; kestrel then puts header and spec in the window and sends
//! one byte, the bell, on the UART: the init reads the header (which must
//! be flagged `window`) and the spec from the window. A header that comes
//! on the UART instead (any other host) is read there, and its spec after
//! it — or from the window if the header is flagged so.
//!
//! Invariants: the tty never echoes (the host must not read its own bytes
//! back); no byte after the header's newline is read as part of the header,
//! and nothing after the spec's last byte is read at all; the wait has no
//! timeout (the host's bounds the run); every failure is an [`InitError`]
//! naming the channel, so it ends as the usual `init-error` status line on
//! the channel that is already open, except setting the clock and seeding
//! the random pool, whose failures are logged to kmsg and never fatal.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use kestrel_initramfs::job::{
    JobHeader, Phase, Spec, JOB_WINDOW_ACK, JOB_WINDOW_ACK_AT, JOB_WINDOW_ADDR, JOB_WINDOW_BELL,
    JOB_WINDOW_DATA, JOB_WINDOW_HEADER, JOB_WINDOW_HEADER_MAX, JOB_WINDOW_MAGIC, READY_LINE,
    SEED_BYTES,
};

use crate::error::InitError;
use crate::report::FALLBACK_PATH;
use crate::{kmsg, report, sys};

/// The longest header line accepted, newline included.
pub const MAX_HEADER_BYTES: usize = 128;
/// The random device the init feeds the header's seed to.
pub const URANDOM_PATH: &str = "/dev/urandom";
/// Where the init reads the job window (physical memory).
pub const DEVMEM_PATH: &str = "/dev/mem";

/// Opens the job window through `path` (physical memory, addressed by
/// offset): `Some` when kestrel's magic stands at its start, after writing
/// the ack right behind it; `None` when there is no such device, the
/// kernel refuses it (lockdown, `STRICT_DEVMEM` on RAM) or the magic is
/// not there (another host), and the job then comes on the UART.
pub fn open_window(path: &str) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let mut magic = [0u8; JOB_WINDOW_MAGIC.len()];
    file.read_exact_at(&mut magic, JOB_WINDOW_ADDR).ok()?;
    if &magic != JOB_WINDOW_MAGIC {
        return None;
    }
    file.write_all_at(JOB_WINDOW_ACK, JOB_WINDOW_ADDR + JOB_WINDOW_ACK_AT)
        .ok()?;
    Some(file)
}

/// Waits on the status UART for the job and merges it into `spec` (which
/// holds the base spec); sets the clock to the host's. Returns the tty
/// (read-write, raw), which is also the status channel from now on.
pub fn receive_on_uart(spec: &mut Spec) -> Result<File, InitError> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(FALLBACK_PATH)
        .map_err(|e| InitError::os(format!("open job channel {FALLBACK_PATH}"), &e))?;
    let fd = tty.as_raw_fd();
    sys::make_raw(fd).map_err(|e| InitError::os(format!("make {FALLBACK_PATH} raw"), &e))?;
    let status: OwnedFd = tty
        .try_clone()
        .map_err(|e| InitError::os("dup status descriptor", &e))?
        .into();
    // The pending `init` mark goes out now, before the ready line.
    report::set_channel(Some(status));

    let window = open_window(DEVMEM_PATH);
    kmsg::info(&format!(
        "no job in the initramfs; waiting on {FALLBACK_PATH}{}",
        if window.is_some() {
            " (the spec may come in the job window)"
        } else {
            ""
        }
    ));
    sys::write_all(fd, format!("{READY_LINE}\n").as_bytes())
        .and_then(|()| sys::tcdrain(fd))
        .map_err(|e| InitError::os(format!("write ready line on {FALLBACK_PATH}"), &e))?;

    let header = receive(&mut &tty, FALLBACK_PATH, window.as_ref(), spec)?;
    drop(window);
    if let Err(e) = sys::set_realtime_ns(header.realtime_ns) {
        let how = crate::error::describe(&e);
        kmsg::error(&format!(
            "set the clock to {} ns: {how}",
            header.realtime_ns
        ));
    }
    reseed_kernel_rng(&header.seed);
    kmsg::info(&format!(
        "job of {} bytes received on {FALLBACK_PATH}",
        header.len
    ));
    report::phase(Phase::Job);
    Ok(tty)
}

/// Mixes `seed` into the kernel's random pool (crediting all of it) and
/// re-keys the CRNG at once, so that runs restored from the same snapshot
/// draw different random numbers from here on. Failures are logged, never
/// fatal: the job still runs, with the snapshot's random state.
fn reseed_kernel_rng(seed: &[u8; SEED_BYTES]) {
    let urandom = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(URANDOM_PATH)
    {
        Ok(file) => file,
        Err(e) => {
            let how = crate::error::describe(&e);
            kmsg::error(&format!(
                "open {URANDOM_PATH} to seed the random pool: {how}"
            ));
            return;
        }
    };
    let fd = urandom.as_raw_fd();
    if let Err(e) = sys::add_entropy(fd, &sys::rand_pool_info(seed)) {
        let how = crate::error::describe(&e);
        kmsg::error(&format!(
            "add the host's seed to the random pool (RNDADDENTROPY on {URANDOM_PATH}): {how}"
        ));
        return;
    }
    if let Err(e) = sys::reseed_crng(fd) {
        let how = crate::error::describe(&e);
        kmsg::error(&format!(
            "reseed the CRNG (RNDRESEEDCRNG on {URANDOM_PATH}): {how}"
        ));
        return;
    }
    kmsg::info("random pool seeded from the host and CRNG reseeded");
}

/// Reads a header line from `channel` (called `name` in errors) and the
/// job spec it announces — after it on `channel`, or in `window` (what
/// [`open_window`] opened) when the header says so — and merges the spec
/// into `spec`.
pub fn receive(
    channel: &mut impl Read,
    name: &str,
    window: Option<&File>,
    spec: &mut Spec,
) -> Result<JobHeader, InitError> {
    let first = read_header_byte(channel, name, 0)?;
    let header = if first == JOB_WINDOW_BELL {
        let window = window.ok_or_else(|| {
            InitError::msg(format!(
                "the host rang the job window's bell on {name}, but this init could not open the window"
            ))
        })?;
        header_from_window(window)?
    } else {
        let line = read_header_line(first, channel, name)?;
        JobHeader::parse(&String::from_utf8_lossy(&line))
            .map_err(|e| InitError::msg(format!("{e} (on {name})")))?
    };
    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
    let mut text = vec![0; len];
    if header.in_window {
        let window = window.ok_or_else(|| {
            InitError::msg(format!(
                "the job header on {name} puts the spec in the job window, which this init could not open"
            ))
        })?;
        window
            .read_exact_at(&mut text, JOB_WINDOW_ADDR + JOB_WINDOW_DATA)
            .map_err(|e| {
                InitError::os(
                    format!("read job spec from the job window ({DEVMEM_PATH})"),
                    &e,
                )
            })?;
    } else {
        let got = read_full(channel, &mut text)
            .map_err(|e| InitError::os(format!("read job spec from {name}"), &e))?;
        if got < len {
            return Err(InitError::msg(format!(
                "read job spec from {name}: end of file after {got} of {len} bytes"
            )));
        }
    }
    let text = String::from_utf8(text)
        .map_err(|_| InitError::msg(format!("parse job spec from {name}: not UTF-8")))?;
    spec.merge_parse(&text)
        .map_err(|e| InitError::msg(format!("parse job spec from {name}: {e}")))?;
    Ok(header)
}

/// The header line kestrel wrote into the job window before it rang the
/// bell; it must carry the `window` flag (the spec is there too).
fn header_from_window(window: &File) -> Result<JobHeader, InitError> {
    let mut room = [0u8; JOB_WINDOW_HEADER_MAX];
    window
        .read_exact_at(&mut room, JOB_WINDOW_ADDR + JOB_WINDOW_HEADER)
        .map_err(|e| {
            InitError::os(
                format!("read job header from the job window ({DEVMEM_PATH})"),
                &e,
            )
        })?;
    let end = room.iter().position(|&b| b == b'\n').ok_or_else(|| {
        InitError::msg(format!(
            "job header in the job window has no newline in its first {JOB_WINDOW_HEADER_MAX} bytes"
        ))
    })?;
    let header = JobHeader::parse(&String::from_utf8_lossy(&room[..=end]))
        .map_err(|e| InitError::msg(format!("{e} (in the job window)")))?;
    if !header.in_window {
        return Err(InitError::msg(
            "the job header in the job window does not put the spec there",
        ));
    }
    Ok(header)
}

/// The header line, newline included, that starts with `first` (already
/// read), read one byte at a time so not one byte of the spec after it is
/// consumed.
fn read_header_line(first: u8, channel: &mut impl Read, name: &str) -> Result<Vec<u8>, InitError> {
    let mut line = Vec::with_capacity(MAX_HEADER_BYTES);
    line.push(first);
    while line.last() != Some(&b'\n') {
        if line.len() >= MAX_HEADER_BYTES {
            return Err(InitError::msg(format!(
                "job header on {name} has no newline in its first {MAX_HEADER_BYTES} bytes"
            )));
        }
        line.push(read_header_byte(channel, name, line.len())?);
    }
    Ok(line)
}

/// One byte of the job header from `channel`, `so_far` bytes of it read.
fn read_header_byte(channel: &mut impl Read, name: &str, so_far: usize) -> Result<u8, InitError> {
    let mut byte = [0u8];
    let got = read_full(channel, &mut byte)
        .map_err(|e| InitError::os(format!("read job header from {name}"), &e))?;
    if got == 0 {
        return Err(InitError::msg(format!(
            "read job header from {name}: end of file after {so_far} bytes"
        )));
    }
    Ok(byte[0])
}

/// Fills `buf` from `channel`, across short reads and EINTR; returns how
/// many bytes it got (fewer than `buf.len()` only at end of file).
fn read_full(channel: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match channel.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_initramfs::job::{Dest, Module, MAX_JOB_BYTES};
    use std::io::Cursor;

    /// Hands out at most `chunk` bytes per read, with an EINTR before each.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn base() -> Spec {
        Spec {
            modules: vec![Module {
                path: "/kestrel/modules/fuse.ko".into(),
                params: String::new(),
            }],
            ..Spec::default()
        }
    }

    fn job() -> Spec {
        Spec {
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            status: Some(Dest::Path("/dev/ttyS1".into())),
            ..Spec::default()
        }
    }

    /// A seed in its wire form (bytes 0x00 to 0x1f).
    const SEED_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn seed() -> [u8; SEED_BYTES] {
        std::array::from_fn(|i| u8::try_from(i).unwrap())
    }

    /// Header and spec as the host sends them.
    fn wire(spec: &Spec, realtime_ns: u64) -> Vec<u8> {
        let text = spec.render();
        let header = JobHeader {
            len: u32::try_from(text.len()).unwrap(),
            realtime_ns,
            seed: seed(),
            in_window: false,
        };
        let mut bytes = header.line().into_bytes();
        bytes.extend_from_slice(text.as_bytes());
        bytes
    }

    fn receive_bytes(bytes: &[u8]) -> Result<(Spec, JobHeader), String> {
        let mut spec = base();
        let header = receive(&mut Cursor::new(bytes), "ttyS1", None, &mut spec)
            .map_err(|e| e.to_string())?;
        Ok((spec, header))
    }

    #[test]
    fn merges_the_job_into_the_base_and_stops_at_its_end() {
        let mut bytes = wire(&job(), 1_700_000_000_000_000_001);
        let sent = bytes.len();
        bytes.extend_from_slice(b"KESTREL-JOB trailing bytes stay unread");
        let mut cursor = Cursor::new(&bytes[..]);
        let mut spec = base();
        let header = receive(&mut cursor, "ttyS1", None, &mut spec).unwrap();
        assert_eq!(header.realtime_ns, 1_700_000_000_000_000_001);
        assert_eq!(header.seed, seed());
        assert_eq!(cursor.position(), u64::try_from(sent).unwrap());
        assert_eq!(
            spec,
            Spec {
                modules: base().modules,
                ..job()
            }
        );
    }

    #[test]
    fn short_reads_and_eintr_lose_nothing() {
        let bytes = wire(&job(), 5);
        for chunk in [1, 2, 3, 7, 4096] {
            let mut spec = base();
            let mut channel = Trickle {
                data: &bytes,
                chunk,
                interrupt: false,
            };
            let header = receive(&mut channel, "ttyS1", None, &mut spec).unwrap();
            assert_eq!(header.realtime_ns, 5);
            assert_eq!(spec.argv, job().argv, "chunk {chunk}");
            assert!(channel.data.is_empty());
        }
    }

    #[test]
    fn a_missing_header_is_refused() {
        // The spec without its header line.
        let e = receive_bytes(job().render().as_bytes()).unwrap_err();
        assert!(e.starts_with("job header \"kestrel-spec 1\\n\""), "{e}");
        assert!(
            e.ends_with("does not start with \"KESTREL-JOB \" (on ttyS1)"),
            "{e}"
        );
        let e = receive_bytes(b"").unwrap_err();
        assert_eq!(e, "read job header from ttyS1: end of file after 0 bytes");
    }

    #[test]
    fn garbled_headers_are_refused() {
        let s = SEED_HEX;
        let upper = SEED_HEX.to_ascii_uppercase();
        for (line, why) in [
            ("KESTREL-JOB 12\n".to_string(), "has 1 fields"),
            ("KESTREL-JOB 12 34\n".to_string(), "has 2 fields"),
            (format!("KESTREL-JOB 12 34 {s} 5\n"), "has 4 fields"),
            (format!("KESTREL-JOB x 12 {s}\n"), "bad length"),
            (format!("KESTREL-JOB 12 34 {s}\r\n"), "bad seed"),
            (format!("KESTREL-JOB 12 34 {upper}\n"), "bad seed"),
            (format!("KESTREL-JOB 12 34 {}\n", &s[2..]), "bad seed"),
            (format!("KESTREL-JOB 0 34 {s}\n"), "announces 0 bytes"),
            (format!("\nKESTREL-JOB 1 1 {s}\n"), "does not start with"),
        ] {
            let e = receive_bytes(line.as_bytes()).unwrap_err();
            assert!(e.contains(why) && e.ends_with("(on ttyS1)"), "{e}");
        }
        let e = receive_bytes(format!("KESTREL-J\u{fffd}B 1 1 {s}\n").as_bytes()).unwrap_err();
        assert!(e.contains("does not start with"), "{e}");
        let e = receive_bytes(b"KESTREL-J\xffB 1 1\n").unwrap_err();
        assert!(e.contains("does not start with"), "{e}");
        let too_big = format!("KESTREL-JOB {} 1 {s}\n", MAX_JOB_BYTES + 1);
        let e = receive_bytes(too_big.as_bytes()).unwrap_err();
        assert!(e.contains("announces"), "{e}");
    }

    #[test]
    fn the_longest_header_fits_under_the_cap() {
        let longest = JobHeader {
            len: MAX_JOB_BYTES,
            realtime_ns: u64::MAX,
            seed: [0xff; SEED_BYTES],
            in_window: false,
        };
        let flagged = JobHeader {
            len: kestrel_initramfs::job::JOB_WINDOW_MAX,
            in_window: true,
            ..longest
        };
        assert!(
            flagged.line().len() <= MAX_HEADER_BYTES,
            "{}",
            flagged.line()
        );
        let line = longest.line();
        assert!(line.len() <= MAX_HEADER_BYTES, "{} bytes", line.len());
        let mut bytes = line.into_bytes();
        bytes.extend(std::iter::repeat_n(b'x', 8));
        let e = receive_bytes(&bytes).unwrap_err();
        // The header was accepted; only the (short) spec is missing.
        assert!(
            e.starts_with("read job spec from ttyS1: end of file"),
            "{e}"
        );
    }

    #[test]
    fn a_header_without_newline_is_cut_at_the_cap() {
        let e = receive_bytes(b"KESTREL-JOB 12").unwrap_err();
        assert_eq!(e, "read job header from ttyS1: end of file after 14 bytes");
        let mut endless = b"KESTREL-JOB 1".to_vec();
        endless.resize(10 * MAX_HEADER_BYTES, b'0');
        let mut cursor = Cursor::new(&endless[..]);
        let e = receive(&mut cursor, "ttyS1", None, &mut base())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("job header on ttyS1 has no newline in its first {MAX_HEADER_BYTES} bytes")
        );
        assert_eq!(cursor.position(), MAX_HEADER_BYTES as u64);
    }

    #[test]
    fn a_short_or_bad_spec_is_refused() {
        let bytes = wire(&job(), 1);
        let e = receive_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        let len = job().render().len();
        assert_eq!(
            e,
            format!(
                "read job spec from ttyS1: end of file after {} of {len} bytes",
                len - 1
            )
        );

        let mut bytes = format!("KESTREL-JOB 2 1 {SEED_HEX}\n").into_bytes();
        bytes.extend_from_slice(b"\xff\xfe");
        let e = receive_bytes(&bytes).unwrap_err();
        assert_eq!(e, "parse job spec from ttyS1: not UTF-8");

        let text = "kestrel-spec 1\nfrobnicate x\n";
        let bytes = format!("KESTREL-JOB {} 1 {SEED_HEX}\n{text}", text.len());
        let e = receive_bytes(bytes.as_bytes()).unwrap_err();
        assert!(
            e.starts_with("parse job spec from ttyS1: spec line 2: "),
            "{e}"
        );
    }

    /// A pseudo-terminal as (master, slave), or `None` where there is none.
    fn pty() -> Option<(File, File)> {
        let open = |path: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(path)
                .ok()
        };
        let master = open("/dev/ptmx")?;
        // SAFETY: unlockpt only changes the state of the open master.
        if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
            return None;
        }
        let mut name = [0 as libc::c_char; 64];
        // SAFETY: `name` is writable for `name.len()` bytes.
        let ret = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        if ret != 0 {
            return None;
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let slave = open(path.to_str().ok()?)?;
        Some((master, slave))
    }

    #[test]
    fn a_raw_tty_passes_bytes_unchanged_and_never_echoes() {
        use std::io::Write;
        let Some((mut host, guest)) = pty() else {
            return; // no pseudo-terminals here
        };
        sys::make_raw(guest.as_raw_fd()).unwrap();
        let host_fd = host.as_raw_fd();

        // Bytes cooked mode would edit, translate or turn into signals.
        host.write_all(b"a\x7f\r\x03\x13\x11\x04\n").unwrap();
        let mut got = [0u8; 8];
        assert_eq!(read_full(&mut &guest, &mut got).unwrap(), 8);
        assert_eq!(&got, b"a\x7f\r\x03\x13\x11\x04\n");

        let mut sent = wire(&job(), 9);
        sent.extend_from_slice(b"after");
        host.write_all(&sent).unwrap();
        let mut spec = base();
        let header = receive(&mut &guest, "pty", None, &mut spec).unwrap();
        assert_eq!(header.realtime_ns, 9);
        assert_eq!(spec.argv, job().argv);
        // The rest is still there, unread.
        let mut after = [0u8; 5];
        assert_eq!(read_full(&mut &guest, &mut after).unwrap(), 5);
        assert_eq!(&after, b"after");

        // Nothing came back to the host: no echo.
        assert!(!sys::poll_readable(host_fd, 50).unwrap());
        // The guest's lines arrive as written (no `\r` added).
        let ready = format!("{READY_LINE}\n");
        sys::write_all(guest.as_raw_fd(), ready.as_bytes()).unwrap();
        let mut back = vec![0u8; ready.len()];
        assert_eq!(read_full(&mut host, &mut back).unwrap(), ready.len());
        assert_eq!(back, ready.as_bytes());
        assert!(!sys::poll_readable(host_fd, 0).unwrap());
    }

    #[test]
    fn read_errors_are_named() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let e = receive(&mut Broken, "ttyS1", None, &mut base()).unwrap_err();
        assert_eq!(e.to_string(), "read job header from ttyS1: EIO");
    }

    /// A stand-in for `/dev/mem`: a sparse file with the window's magic.
    fn fake_devmem(dir: &std::path::Path, magic: &[u8]) -> std::path::PathBuf {
        let path = dir.join("mem");
        let file = File::create(&path).unwrap();
        file.write_all_at(magic, JOB_WINDOW_ADDR).unwrap();
        path
    }

    #[test]
    fn the_window_is_acknowledged_only_behind_the_magic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = fake_devmem(dir, JOB_WINDOW_MAGIC);
        let window = open_window(path.to_str().unwrap()).expect("the magic is there");
        let mut ack = [0u8; 16];
        window
            .read_exact_at(&mut ack, JOB_WINDOW_ADDR + JOB_WINDOW_ACK_AT)
            .unwrap();
        assert_eq!(&ack, JOB_WINDOW_ACK);

        // Another host's RAM (or a kernel showing zeros): no ack written.
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let path = fake_devmem(&other, &[0u8; 16]);
        assert!(open_window(path.to_str().unwrap()).is_none());
        let mut ack = [0xffu8; 16];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut ack, JOB_WINDOW_ADDR + JOB_WINDOW_ACK_AT)
            .unwrap_or_default();
        assert_ne!(&ack, JOB_WINDOW_ACK);
        assert!(open_window(dir.join("missing").to_str().unwrap()).is_none());
    }

    /// An acknowledged stand-in window holding `job()`'s spec, and the
    /// flagged header that announces it.
    fn window_with_job(dir: &std::path::Path, realtime_ns: u64) -> (File, JobHeader) {
        let path = fake_devmem(dir, JOB_WINDOW_MAGIC);
        let window = open_window(path.to_str().unwrap()).unwrap();
        let text = job().render();
        window
            .write_all_at(text.as_bytes(), JOB_WINDOW_ADDR + JOB_WINDOW_DATA)
            .unwrap();
        let header = JobHeader {
            len: u32::try_from(text.len()).unwrap(),
            realtime_ns,
            seed: seed(),
            in_window: true,
        };
        (window, header)
    }

    #[test]
    fn the_bell_takes_header_and_spec_from_the_window() {
        let tmp = tempfile::tempdir().unwrap();
        let (window, header) = window_with_job(tmp.path(), 11);
        let put_header = |line: &[u8]| {
            let mut room = [0u8; JOB_WINDOW_HEADER_MAX];
            room[..line.len()].copy_from_slice(line);
            window
                .write_all_at(&room, JOB_WINDOW_ADDR + JOB_WINDOW_HEADER)
                .unwrap();
        };
        put_header(header.line().as_bytes());
        // One byte on the channel; what follows it is not the init's.
        let mut cursor = Cursor::new(vec![JOB_WINDOW_BELL, b'K', b'E']);
        let mut spec = base();
        let got = receive(&mut cursor, "ttyS1", Some(&window), &mut spec).unwrap();
        assert_eq!(got, header);
        assert_eq!(cursor.position(), 1);
        assert_eq!(spec.argv, job().argv);
        assert_eq!(spec.modules, base().modules);

        let ring = |window: Option<&File>| {
            receive(
                &mut Cursor::new(vec![JOB_WINDOW_BELL]),
                "ttyS1",
                window,
                &mut base(),
            )
            .unwrap_err()
            .to_string()
        };
        // A bell without a window is an error, not a hang.
        let e = ring(None);
        assert!(
            e.contains("bell on ttyS1, but this init could not open"),
            "{e}"
        );
        // A header that leaves the spec on the channel is refused there.
        put_header(
            JobHeader {
                in_window: false,
                ..header
            }
            .line()
            .as_bytes(),
        );
        let e = ring(Some(&window));
        assert_eq!(
            e,
            "the job header in the job window does not put the spec there"
        );
        // Garbage, and a header without its newline, are refused.
        put_header(b"KESTREL-JOB x\n");
        let e = ring(Some(&window));
        assert!(e.contains("bad length") || e.contains("fields"), "{e}");
        assert!(e.ends_with("(in the job window)"), "{e}");
        put_header(&[b'K'; JOB_WINDOW_HEADER_MAX]);
        let e = ring(Some(&window));
        assert_eq!(
            e,
            format!("job header in the job window has no newline in its first {JOB_WINDOW_HEADER_MAX} bytes")
        );
    }

    #[test]
    fn a_flagged_header_takes_the_spec_from_the_window() {
        let tmp = tempfile::tempdir().unwrap();
        let (window, header) = window_with_job(tmp.path(), 7);
        // What follows the header on the channel is not the init's to read.
        let mut bytes = header.line().into_bytes();
        bytes.extend_from_slice(b"KESTREL-");
        let mut cursor = Cursor::new(bytes);
        let mut spec = base();
        let got = receive(&mut cursor, "ttyS1", Some(&window), &mut spec).unwrap();
        assert_eq!(got, header);
        assert_eq!(spec.argv, job().argv);
        assert_eq!(spec.modules, base().modules);
        assert_eq!(cursor.position(), header.line().len() as u64);

        // The same header without a window is an error, not a hang.
        let mut cursor = Cursor::new(header.line().into_bytes());
        let e = receive(&mut cursor, "ttyS1", None, &mut base()).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("job window, which this init could not open"),
            "{e}"
        );
    }
}

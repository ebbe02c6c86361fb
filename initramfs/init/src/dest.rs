//! Resolving and opening the spec's destinations (stdout, stderr, status).
//!
//! A virtio port is found by the `name` its host gave it in
//! `/sys/class/virtio-ports/<dev>/name`. virtio_console learns port names
//! from the host asynchronously after the module is loaded, so a missing
//! port is waited for on a kernel uevent socket (opened before the modules
//! are loaded, so no event is missed), up to [`PORT_WAIT`]. The device node
//! is made from sysfs's `dev` when devtmpfs has not made it.
//!
//! Invariant: each distinct destination is opened once (a virtio port
//! allows one opener at a time); later users get a duplicate descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kestrel_initramfs::job::{Dest, Spec, Tty};

use crate::error::InitError;
use crate::{kmsg, sys};

/// Where the kernel lists virtio-console ports.
pub const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How long a named port may take to appear.
pub const PORT_WAIT: Duration = Duration::from_secs(10);
const CONSOLE_PATH: &str = "/dev/console";
/// Where the kernel lists ttys (for a `dev` attribute when devtmpfs has
/// not made the node).
const TTY_CLASS_DIR: &str = "/sys/class/tty";
/// The terminal a console port becomes: kestrel marks exactly one port as
/// a console, and nothing else in its VMs registers an hvc backend.
const TERMINAL: &str = "hvc0";

/// The device (`vport0p1`) of the port named `name`, if it has one yet.
/// Entries are visited in sorted order so the answer is deterministic.
pub fn find_port(ports_dir: &Path, name: &str) -> io::Result<Option<String>> {
    Ok(list_ports(ports_dir)?
        .into_iter()
        .find(|(_, port_name)| port_name == name)
        .map(|(dev, _)| dev))
}

/// Every named port as (device, name), sorted by device.
fn list_ports(ports_dir: &Path) -> io::Result<Vec<(String, String)>> {
    let entries = match std::fs::read_dir(ports_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ports = Vec::new();
    for entry in entries {
        let dev = entry?.file_name().to_string_lossy().into_owned();
        // The `name` attribute only exists once the host has named the port.
        if let Ok(name) = std::fs::read_to_string(ports_dir.join(&dev).join("name")) {
            ports.push((dev, name.trim_end_matches('\n').to_string()));
        }
    }
    ports.sort();
    Ok(ports)
}

/// Parses sysfs's `dev` attribute, `MAJOR:MINOR\n`.
pub fn parse_devnum(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim_end().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `<dev_dir>/<dev>`, made from `<ports_dir>/<dev>/dev` when it is missing.
pub fn ensure_node(ports_dir: &Path, dev_dir: &Path, dev: &str) -> Result<PathBuf, InitError> {
    let node = dev_dir.join(dev);
    if node.symlink_metadata().is_ok() {
        return Ok(node);
    }
    let attr = ports_dir.join(dev).join("dev");
    let text = std::fs::read_to_string(&attr)
        .map_err(|e| InitError::os(format!("read {}", attr.display()), &e))?;
    let (major, minor) = parse_devnum(&text).ok_or_else(|| {
        InitError::msg(format!(
            "{}: bad device number {:?}",
            attr.display(),
            text.trim_end()
        ))
    })?;
    match sys::mknod_char(&node, major, minor) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(InitError::os(
            format!("mknod {} {major}:{minor}", node.display()),
            &e,
        )),
        _ => Ok(node),
    }
}

/// Opens destinations, each distinct one once.
pub struct Dests {
    ports_dir: PathBuf,
    dev_dir: PathBuf,
    port_wait: Duration,
    uevents: Option<OwnedFd>,
    opened: Vec<(Dest, File)>,
}

impl Dests {
    /// For the guest. Call before loading modules: it starts listening for
    /// uevents when the spec names a virtio port.
    pub fn new(spec: &Spec) -> Dests {
        let wants_port = [Some(&spec.stdout), Some(&spec.stderr), spec.status.as_ref()]
            .into_iter()
            .flatten()
            .any(|d| matches!(d, Dest::VirtioPort(_)))
            || spec.tty.is_some();
        let uevents = if wants_port {
            sys::uevent_socket()
                .map_err(|e| {
                    let how = crate::error::describe(&e);
                    kmsg::error(&format!("uevent socket: {how}; polling sysfs for ports"));
                })
                .ok()
        } else {
            None
        };
        Dests::with_dirs(Path::new(PORTS_DIR), Path::new("/dev"), PORT_WAIT, uevents)
    }

    /// With other sysfs and /dev directories (tests).
    pub fn with_dirs(
        ports_dir: &Path,
        dev_dir: &Path,
        port_wait: Duration,
        uevents: Option<OwnedFd>,
    ) -> Dests {
        Dests {
            ports_dir: ports_dir.to_path_buf(),
            dev_dir: dev_dir.to_path_buf(),
            port_wait,
            uevents,
            opened: Vec::new(),
        }
    }

    /// From now on a virtio port that is not there yet is not waited for
    /// (after a failure that may be why it never comes).
    pub fn stop_waiting(&mut self) {
        self.port_wait = Duration::ZERO;
    }

    /// Takes `file`, already open on `dest` (the status UART a warm start
    /// received its job on), as that destination's one opening: later
    /// [`Dests::open`]s of `dest` get a duplicate of it.
    pub fn adopt(&mut self, dest: Dest, file: File) {
        self.opened.push((dest, file));
    }

    /// Opens `dest` for writing (close-on-exec); `role` names it in errors.
    pub fn open(&mut self, dest: &Dest, role: &str) -> Result<File, InitError> {
        if let Some((_, file)) = self.opened.iter().find(|(d, _)| d == dest) {
            return file
                .try_clone()
                .map_err(|e| InitError::os(format!("dup {role} descriptor"), &e));
        }
        let path = self.path_of(dest)?;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| InitError::os(format!("open {role} {}", path.display()), &e))?;
        let copy = file
            .try_clone()
            .map_err(|e| InitError::os(format!("dup {role} descriptor"), &e))?;
        self.opened.push((dest.clone(), file));
        Ok(copy)
    }

    /// The command's terminal: waits for the console port to be named (the
    /// driver made its hvc before it names it), opens `/dev/hvc0`
    /// read-write (close-on-exec, not yet anyone's controlling tty) and
    /// sets its starting size.
    pub fn open_terminal(&mut self, tty: &Tty) -> Result<File, InitError> {
        self.wait_for_port(&tty.port)?;
        let node = ensure_node(Path::new(TTY_CLASS_DIR), &self.dev_dir, TERMINAL)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&node)
            .map_err(|e| InitError::os(format!("open terminal {}", node.display()), &e))?;
        if tty.rows > 0 && tty.cols > 0 {
            sys::set_winsize(file.as_raw_fd(), tty.rows, tty.cols)
                .map_err(|e| InitError::os("set the terminal size", &e))?;
        }
        Ok(file)
    }

    /// The port window-size changes arrive on, open for reading.
    pub fn open_input(&mut self, name: &str) -> Result<File, InitError> {
        let path = self.path_of(&Dest::VirtioPort(name.to_string()))?;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| InitError::os(format!("open {}", path.display()), &e))
    }

    fn path_of(&mut self, dest: &Dest) -> Result<PathBuf, InitError> {
        match dest {
            Dest::Console => Ok(PathBuf::from(CONSOLE_PATH)),
            Dest::Path(path) => Ok(PathBuf::from(path)),
            Dest::VirtioPort(name) => {
                let dev = self.wait_for_port(name)?;
                ensure_node(&self.ports_dir, &self.dev_dir, &dev)
            }
        }
    }

    fn wait_for_port(&mut self, name: &str) -> Result<String, InitError> {
        let started = Instant::now();
        let deadline = started + self.port_wait;
        let read_err =
            |e: io::Error| InitError::os(format!("read {}", self.ports_dir.display()), &e);
        loop {
            if let Some(dev) = find_port(&self.ports_dir, name).map_err(read_err)? {
                let waited = started.elapsed().as_micros();
                kmsg::info(&format!(
                    "virtio port {name:?} is {dev} (waited {waited} us)"
                ));
                return Ok(dev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let seen = list_ports(&self.ports_dir).map_err(read_err)?;
                let seen: Vec<String> = seen.iter().map(|(d, n)| format!("{d}={n}")).collect();
                return Err(InitError::msg(format!(
                    "virtio port {name:?} not found in {} after {} ms (named ports: [{}])",
                    self.ports_dir.display(),
                    self.port_wait.as_millis(),
                    seen.join(", ")
                )));
            }
            // Wake on the next uevent (the port's `change` carries its name).
            let left_ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            match &self.uevents {
                Some(sock) => {
                    let fd = sock.as_raw_fd();
                    sys::poll_readable(fd, left_ms.max(1))
                        .map_err(|e| InitError::os("poll uevent socket", &e))?;
                    sys::drain_datagrams(fd);
                }
                None => std::thread::sleep(left.min(Duration::from_millis(10))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use std::io::Write;

    /// A fake `/sys/class/virtio-ports` and `/dev`.
    fn fake_sysfs(dir: &TestDir, ports: &[(&str, Option<&str>, &str)]) -> (PathBuf, PathBuf) {
        let sys = dir.path().join("sys/class/virtio-ports");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for (port, name, devnum) in ports {
            let p = sys.join(port);
            std::fs::create_dir_all(&p).unwrap();
            if let Some(name) = name {
                std::fs::write(p.join("name"), format!("{name}\n")).unwrap();
            }
            std::fs::write(p.join("dev"), format!("{devnum}\n")).unwrap();
        }
        (sys, dev)
    }

    #[test]
    fn finds_ports_by_name() {
        let dir = TestDir::new("ports");
        let (sys, _) = fake_sysfs(
            &dir,
            &[
                ("vport0p0", None, "246:0"),
                ("vport0p1", Some("kestrel.stdout"), "246:1"),
                ("vport0p2", Some("kestrel.status"), "246:2"),
            ],
        );
        assert_eq!(
            find_port(&sys, "kestrel.stdout").unwrap().as_deref(),
            Some("vport0p1")
        );
        assert_eq!(
            find_port(&sys, "kestrel.status").unwrap().as_deref(),
            Some("vport0p2")
        );
        assert_eq!(find_port(&sys, "kestrel").unwrap(), None);
        assert_eq!(find_port(&dir.path().join("absent"), "x").unwrap(), None);
    }

    #[test]
    fn parses_device_numbers() {
        assert_eq!(parse_devnum("246:1\n"), Some((246, 1)));
        assert_eq!(parse_devnum("4:65"), Some((4, 65)));
        assert_eq!(parse_devnum("246\n"), None);
        assert_eq!(parse_devnum("a:1"), None);
    }

    #[test]
    fn existing_node_is_used_and_bad_devnum_named() {
        let dir = TestDir::new("nodes");
        let (sys, dev) = fake_sysfs(
            &dir,
            &[
                ("vport0p1", Some("a"), "246:1"),
                ("vport0p2", Some("b"), "bogus"),
            ],
        );
        std::fs::write(dev.join("vport0p1"), "").unwrap();
        assert_eq!(
            ensure_node(&sys, &dev, "vport0p1").unwrap(),
            dev.join("vport0p1")
        );
        let e = ensure_node(&sys, &dev, "vport0p2").unwrap_err().to_string();
        assert!(
            e.ends_with("vport0p2/dev: bad device number \"bogus\""),
            "{e}"
        );
    }

    #[test]
    fn missing_node_is_made_from_sysfs() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            return; // mknod needs root
        }
        let dir = TestDir::new("mknod");
        let (sys, dev) = fake_sysfs(&dir, &[("vport0p3", Some("a"), "246:3")]);
        let node = ensure_node(&sys, &dev, "vport0p3").unwrap();
        let meta = node.symlink_metadata().unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), libc::makedev(246, 3));
    }

    #[test]
    fn opens_a_port_once_for_stdout_and_stderr() {
        let dir = TestDir::new("open-port");
        let (sys, dev) = fake_sysfs(&dir, &[("vport1p1", Some("kestrel.stdout"), "246:1")]);
        // A regular file stands in for the device node.
        std::fs::write(dev.join("vport1p1"), "").unwrap();
        let mut dests = Dests::with_dirs(&sys, &dev, Duration::ZERO, None);
        let port = Dest::VirtioPort("kestrel.stdout".into());
        let mut out = dests.open(&port, "stdout").unwrap();
        let mut err = dests.open(&port, "stderr").unwrap();
        assert_eq!(dests.opened.len(), 1);
        out.write_all(b"out ").unwrap();
        err.write_all(b"err").unwrap();
        assert_eq!(
            std::fs::read_to_string(dev.join("vport1p1")).unwrap(),
            "out err"
        );
    }

    #[test]
    fn an_adopted_destination_is_not_opened_again() {
        let dir = TestDir::new("adopt");
        let path = dir.path().join("ttyS1");
        std::fs::write(&path, "").unwrap();
        let dest = Dest::Path(path.display().to_string());
        let mut dests = Dests::with_dirs(dir.path(), dir.path(), Duration::ZERO, None);
        dests.adopt(
            dest.clone(),
            std::fs::File::options().append(true).open(&path).unwrap(),
        );
        // Gone from the file system: only the adopted descriptor can reach it.
        std::fs::remove_file(&path).unwrap();
        let mut status = dests.open(&dest, "status").unwrap();
        status.write_all(b"x").unwrap();
        assert_eq!(dests.opened.len(), 1);
    }

    #[test]
    fn missing_port_times_out_listing_what_exists() {
        let dir = TestDir::new("no-port");
        let (sys, dev) = fake_sysfs(&dir, &[("vport0p1", Some("other"), "246:1")]);
        let mut dests = Dests::with_dirs(&sys, &dev, Duration::from_millis(20), None);
        let e = dests
            .open(&Dest::VirtioPort("kestrel.stdout".into()), "stdout")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("virtio port \"kestrel.stdout\" not found"),
            "{e}"
        );
        assert!(
            e.ends_with("after 20 ms (named ports: [vport0p1=other])"),
            "{e}"
        );
    }

    #[test]
    fn missing_path_is_named() {
        let dir = TestDir::new("no-path");
        let mut dests = Dests::with_dirs(dir.path(), dir.path(), Duration::ZERO, None);
        let missing = dir.path().join("ttyS9");
        let e = dests
            .open(&Dest::Path(missing.display().to_string()), "status")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("open status {}: ENOENT", missing.display())
        );
    }
}

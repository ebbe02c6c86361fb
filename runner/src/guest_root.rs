//! What the guest command sees as `/`: the plan `kestrel run` turns into
//! virtio-fs devices (host side) and job-spec entries (for the init).
//!
//! By default the guest's root is the host's `/`, read-only, over the
//! virtio-fs device tagged [`ROOT_TAG`]; tmpfs on [`TMPFS_PATHS`] and on the
//! guest user's home; each `--rw DIR` is its own writable device mounted
//! over the same path; each `--share HOST:GUEST[:rw]` another device; the
//! booted kernel's modules directory a read-only device at
//! `/lib/modules/<release>` (see [`add_modules`] for hosts without
//! `/lib/modules`). The command starts in kestrel's working
//! directory; when a tmpfs would hide it, that directory is shared
//! read-only at its own path; a read-only `--share DIR:DIR` the root
//! already shows as it is adds no device. Without the host root (`--no-host-root`, or
//! a kernel without virtiofs) the command runs in the initramfs as before.
//!
//! Invariants: every share's host directory exists and is canonical when
//! the plan is made (so a bad `--rw`/`--share` is one sentence before any
//! VM is built); the device list and the spec's shares agree one to one by
//! tag; at most [`MAX_SHARES`] devices (the virtio-mmio slots left after
//! the console).

use std::path::{Component, Path, PathBuf};

use kestrel_initramfs::job::{self, Root};

use crate::devices::virtio::fs::{self, Share, ROOT_TAG};
use crate::layout;

/// Fresh tmpfs in a host-root guest (besides the user's home).
pub const TMPFS_PATHS: &[&str] = &["/tmp", "/run", "/var/tmp"];
/// Most virtio-fs devices a VM can have: one virtio-mmio slot each, the
/// first slot is the console's.
pub const MAX_SHARES: usize = layout::VIRTIO_MMIO_SLOTS as usize - 1;
/// Where the guest finds kernel modules.
pub const GUEST_MODULES_ROOT: &str = "/lib/modules";
/// On a host without `/lib/modules`: the prefix (in the `/run` tmpfs)
/// under which the guest's `lib/modules/<release>` is mounted, handed to
/// kmod's `modprobe` as `MODPROBE_OPTIONS=-d <prefix>`.
pub const MODULES_PREFIX_FALLBACK: &str = "/run/kestrel";

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Share the host's `/` (else: the initramfs is the root).
    pub host_root: bool,
    /// `--rw DIR` as given.
    pub rw: Vec<PathBuf>,
    /// `--share HOST:GUEST[:rw]` as given.
    pub shares: Vec<String>,
    /// `--user`: run as the invoking user.
    pub user: bool,
    /// The modules directory to show at `/lib/modules/<release>` and the
    /// release (host root only).
    pub modules: Option<(PathBuf, String)>,
    /// kestrel's working directory (the command's, with a host root).
    pub cwd: PathBuf,
}

/// The result: devices and the init's part of the job spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// virtio-fs devices, in slot order.
    pub devices: Vec<Share>,
    /// The command's root.
    pub root: Root,
    /// Extra shares for the init to mount.
    pub shares: Vec<job::Share>,
    /// tmpfs paths.
    pub tmpfs: Vec<String>,
    /// The command's working directory.
    pub cwd: Option<String>,
    /// The guest user (None: root).
    pub user: Option<User>,
    /// `HOME` of the command.
    pub home: String,
    /// More environment for the command (`KEY=VALUE`).
    pub env: Vec<String>,
}

/// The invoking user as the guest command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Login name, when the passwd file knows it.
    pub name: Option<String>,
    /// Home directory.
    pub home: String,
}

/// An argument the plan cannot use (one sentence each).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    /// `--rw DIR` is not a directory.
    #[error("--rw {0}: {1}; pass an existing host directory")]
    Rw(String, String),
    /// `--share` is malformed.
    #[error("--share {0:?}: {1}; use --share HOST_DIR:GUEST_PATH or HOST_DIR:GUEST_PATH:rw")]
    Share(String, String),
    /// Too many devices.
    #[error("{0} file system shares (root, modules, --rw, --share and the working directory) but a VM has room for {MAX_SHARES}; share a common parent directory instead")]
    TooMany(usize),
    /// Shares without virtio-fs in the kernel.
    #[error("{0} needs virtio-fs, which this kernel has neither as a module nor built in; use a kernel with CONFIG_VIRTIO_FS")]
    NoVirtioFs(&'static str),
}

/// Parses one `--share` value: `(host dir, guest path, writable)`.
pub fn parse_share(value: &str) -> Result<(PathBuf, String, bool), RootError> {
    let bad = |why: &str| RootError::Share(value.to_string(), why.to_string());
    let mut parts: Vec<&str> = value.split(':').collect();
    let writable = match parts.last() {
        Some(&"rw") if parts.len() == 3 => {
            parts.pop();
            true
        }
        Some(&"ro") if parts.len() == 3 => {
            parts.pop();
            false
        }
        _ => false,
    };
    let [host, guest] = parts.as_slice() else {
        return Err(bad("expected two or three fields separated by ':'"));
    };
    if host.is_empty() || guest.is_empty() {
        return Err(bad(
            "the host directory and the guest path must not be empty",
        ));
    }
    if !is_clean_absolute(guest) {
        return Err(bad(
            "the guest path must be absolute, without . or .. components",
        ));
    }
    let host = canonical_dir(Path::new(host)).map_err(|why| bad(&why))?;
    Ok((host, normalise(guest), writable))
}

fn is_clean_absolute(path: &str) -> bool {
    path.starts_with('/')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// `/a//b/` → `/a/b`.
fn normalise(path: &str) -> String {
    let p: PathBuf = Path::new(path).components().collect();
    p.to_string_lossy().into_owned()
}

/// The canonical form of an existing directory, or why not.
fn canonical_dir(dir: &Path) -> Result<PathBuf, String> {
    let why = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => dir.canonicalize().map_err(why),
        Ok(_) => Err("not a directory".to_string()),
        Err(e) => Err(why(e)),
    }
}

/// Builds the plan for `req`. `has_virtiofs`: whether the kernel can mount
/// virtio-fs at all.
pub fn plan(req: &Request, has_virtiofs: bool) -> Result<Plan, RootError> {
    let rw = req
        .rw
        .iter()
        .map(|d| canonical_dir(d).map_err(|why| RootError::Rw(d.display().to_string(), why)))
        .collect::<Result<Vec<_>, _>>()?;
    let extra = req
        .shares
        .iter()
        .map(|s| parse_share(s))
        .collect::<Result<Vec<_>, _>>()?;
    if !has_virtiofs {
        if !rw.is_empty() {
            return Err(RootError::NoVirtioFs("--rw"));
        }
        if !extra.is_empty() {
            return Err(RootError::NoVirtioFs("--share"));
        }
    }
    let user = req.user.then(invoking_user);
    let home = user
        .as_ref()
        .map_or("/root".to_string(), |u| u.home.clone());
    let mut plan = Plan {
        user,
        home: home.clone(),
        ..Plan::default()
    };
    let host_root = req.host_root && has_virtiofs;
    if host_root {
        plan.root = Root::VirtioFs(ROOT_TAG.to_string());
        plan.devices.push(Share {
            host_dir: PathBuf::from("/"),
            tag: ROOT_TAG.to_string(),
            writable: false,
        });
        plan.tmpfs = TMPFS_PATHS.iter().map(|p| p.to_string()).collect();
        if !TMPFS_PATHS.iter().any(|t| under(&home, t)) && home != "/" {
            plan.tmpfs.push(home.clone());
        }
        if let Some((dir, release)) = &req.modules {
            add_modules(&mut plan, dir, release);
        }
    }
    for dir in rw {
        let path = dir.to_string_lossy().into_owned();
        plan.add_share(dir, path, true);
    }
    for (host, guest, writable) in extra {
        if host_root && !writable && plan.shows_as_is(&host, &guest) {
            continue;
        }
        plan.add_share(host, guest, writable);
    }
    if host_root {
        let cwd = req.cwd.canonicalize().unwrap_or_else(|_| req.cwd.clone());
        let cwd_s = cwd.to_string_lossy().into_owned();
        let hidden = plan.tmpfs.iter().any(|t| under(&cwd_s, t));
        let shared = plan.shares.iter().any(|s| under(&cwd_s, &s.path));
        if hidden && !shared && cwd.is_dir() {
            plan.add_share(cwd.clone(), cwd_s.clone(), false);
        }
        plan.cwd = Some(cwd_s);
    }
    if plan.devices.len() > MAX_SHARES {
        return Err(RootError::TooMany(plan.devices.len()));
    }
    Ok(plan)
}

impl Plan {
    /// Whether the host root already shows `host` read-only at `guest`:
    /// the same path, hidden by no tmpfs and beneath no other share. A
    /// read-only `--share DIR:DIR` of such a directory needs no device
    /// (the scenario suite asks for its probes directory this way, which
    /// matters only when a tmpfs such as `/tmp` covers it).
    fn shows_as_is(&self, host: &Path, guest: &str) -> bool {
        host.to_str() == Some(guest)
            && !self.tmpfs.iter().any(|t| under(guest, t))
            && !self.shares.iter().any(|s| under(guest, &s.path))
    }

    fn add_share(&mut self, host_dir: PathBuf, guest: String, writable: bool) {
        let tag = fs::share_tag(self.shares.len());
        self.devices.push(Share {
            host_dir,
            tag: tag.clone(),
            writable,
        });
        self.shares.push(job::Share {
            tag,
            path: guest,
            writable,
        });
    }
}

/// The modules share. Over the host's `/lib/modules/<release>` when that
/// exists (nothing when it is the very same tree); in a tmpfs over
/// `/lib/modules` when only `/lib/modules` exists. A host without
/// `/lib/modules` (a container, the rig's L1) gets no mount under `/usr`
/// (an overlay of `/usr/lib` would change what `/usr` is, e.g. `find /usr
/// -xdev`): the tree goes to [`MODULES_PREFIX_FALLBACK`]`/lib/modules/<release>`
/// and `modprobe` is told with `MODPROBE_OPTIONS`.
fn add_modules(plan: &mut Plan, dir: &Path, release: &str) {
    let modules_root = Path::new(GUEST_MODULES_ROOT);
    let host_release = modules_root.join(release);
    let same = match (host_release.canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return;
    }
    let prefix = if modules_root.is_dir() {
        if !host_release.exists() {
            plan.tmpfs.push(GUEST_MODULES_ROOT.to_string());
        }
        ""
    } else {
        plan.env
            .push(format!("MODPROBE_OPTIONS=-d {MODULES_PREFIX_FALLBACK}"));
        MODULES_PREFIX_FALLBACK
    };
    plan.add_share(
        dir.to_path_buf(),
        format!("{prefix}{GUEST_MODULES_ROOT}/{release}"),
        false,
    );
}

/// Whether `path` is `dir` or below it.
fn under(path: &str, dir: &str) -> bool {
    Path::new(path).starts_with(dir)
}

/// `HOME` of a user whose home directory the host does not have.
pub const NO_HOME: &str = "/tmp";

/// The invoking user: `SUDO_UID`/`SUDO_GID` when kestrel runs as root
/// under sudo, else the process's own ids; name and home from the passwd
/// file (home falls back to `$HOME` for the process's own user, then to
/// [`NO_HOME`] when that directory does not exist on the host).
pub fn invoking_user() -> User {
    // SAFETY: getuid/getgid/geteuid cannot fail and touch no memory.
    let (uid, gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
    let sudo = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
    let (uid, gid, via_sudo) = match (euid, sudo("SUDO_UID"), sudo("SUDO_GID")) {
        (0, Some(u), Some(g)) => (u, g, true),
        _ => (uid, gid, false),
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd_entry(&passwd, uid);
    let home = entry
        .as_ref()
        .map(|(_, h)| h.clone())
        .or_else(|| (!via_sudo).then(|| std::env::var("HOME").ok()).flatten())
        .filter(|h| is_clean_absolute(h) && Path::new(h).is_dir())
        .unwrap_or_else(|| NO_HOME.to_string());
    User {
        uid,
        gid,
        name: entry.map(|(n, _)| n),
        home: normalise(&home),
    }
}

/// `(name, home)` of `uid` in passwd-format `text`.
fn passwd_entry(text: &str, uid: u32) -> Option<(String, String)> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid))
            .then(|| (f[0].to_string(), f[5].to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kestrel-root-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    fn req() -> Request {
        Request {
            host_root: true,
            cwd: PathBuf::from("/"),
            ..Request::default()
        }
    }

    #[test]
    fn the_default_is_the_host_root_read_only_with_tmpfs() {
        let p = plan(&req(), true).unwrap();
        assert_eq!(p.root, Root::VirtioFs(ROOT_TAG.into()));
        assert_eq!(
            p.devices,
            [Share {
                host_dir: "/".into(),
                tag: ROOT_TAG.into(),
                writable: false
            }]
        );
        assert_eq!(p.tmpfs, ["/tmp", "/run", "/var/tmp", "/root"]);
        assert_eq!((p.cwd.as_deref(), p.home.as_str()), (Some("/"), "/root"));
        assert!(p.shares.is_empty() && p.user.is_none());
        // Without virtiofs (or asked): today's initramfs root.
        for (host_root, has) in [(true, false), (false, true)] {
            let r = Request { host_root, ..req() };
            let p = plan(&r, has).unwrap();
            assert_eq!(p.root, Root::Initramfs);
            assert!(p.devices.is_empty() && p.tmpfs.is_empty() && p.cwd.is_none());
        }
    }

    #[test]
    fn rw_and_share_become_one_device_each() {
        let dir = scratch("rw");
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let r = Request {
            rw: vec![out.clone()],
            shares: vec![
                format!("{}:/mnt/x:rw", dir.display()),
                format!("{}:/mnt//y/", dir.display()),
            ],
            ..req()
        };
        let p = plan(&r, true).unwrap();
        assert_eq!(p.devices.len(), 4);
        let tags: Vec<&str> = p.devices.iter().map(|d| d.tag.as_str()).collect();
        assert_eq!(
            tags,
            [
                "kestrel-root",
                "kestrel-share0",
                "kestrel-share1",
                "kestrel-share2"
            ]
        );
        assert_eq!(
            p.shares,
            [
                job::Share {
                    tag: "kestrel-share0".into(),
                    path: out.display().to_string(),
                    writable: true
                },
                job::Share {
                    tag: "kestrel-share1".into(),
                    path: "/mnt/x".into(),
                    writable: true
                },
                job::Share {
                    tag: "kestrel-share2".into(),
                    path: "/mnt/y".into(),
                    writable: false
                },
            ]
        );
        assert!(p.devices[1].writable && !p.devices[3].writable);
        // With the initramfs as root, shares still work.
        let p = plan(
            &Request {
                host_root: false,
                ..r.clone()
            },
            true,
        )
        .unwrap();
        assert_eq!((p.root, p.devices.len()), (Root::Initramfs, 3));
        // Not without virtiofs.
        assert_eq!(plan(&r, false), Err(RootError::NoVirtioFs("--rw")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_arguments_are_one_sentence() {
        let e = plan(
            &Request {
                rw: vec!["/no/such/dir".into()],
                ..req()
            },
            true,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "--rw /no/such/dir: no such directory; pass an existing host directory"
        );
        for bad in [
            "/tmp",
            "/tmp:rel",
            "/tmp:/a:rx",
            ":/a",
            "/tmp:/a/../b",
            "/no/such:/a",
            "a:b:c:d",
        ] {
            let e = parse_share(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--share {bad:?}")), "{e}");
            assert!(!e.contains('\n'));
        }
        assert!(!parse_share("/tmp:/a:ro").unwrap().2);
        let many = Request {
            shares: vec!["/:/a".to_string(); MAX_SHARES],
            ..req()
        };
        assert_eq!(plan(&many, true), Err(RootError::TooMany(MAX_SHARES + 1)));
    }

    #[test]
    fn a_read_only_share_the_root_already_shows_needs_no_device() {
        let share = |s: String| Request {
            shares: vec![s],
            ..req()
        };
        // /usr is visible through the read-only root as it is.
        assert!(plan(&share("/usr:/usr".into()), true)
            .unwrap()
            .shares
            .is_empty());
        // Under a tmpfs, elsewhere, writable, or without the host root it
        // is a device of its own.
        let dir = scratch("as-is");
        let d = dir.display().to_string();
        for s in [
            format!("{d}:/elsewhere"),
            format!("{d}:{d}:rw"),
            "/usr:/usr:rw".into(),
            "/usr:/opt/usr".into(),
        ] {
            assert_eq!(
                plan(&share(s.clone()), true).unwrap().shares.len(),
                1,
                "{s}"
            );
        }
        let hidden = plan(&share(format!("{d}:{d}")), true).unwrap();
        let is_hidden = TMPFS_PATHS.iter().any(|t| under(&d, t));
        assert_eq!(hidden.shares.len(), usize::from(is_hidden));
        let no_root = Request {
            host_root: false,
            ..share("/usr:/usr".into())
        };
        assert_eq!(plan(&no_root, true).unwrap().shares.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cwd_under_a_tmpfs_is_shared_read_only() {
        let dir = scratch("cwd");
        let r = Request {
            cwd: dir.clone(),
            ..req()
        };
        let p = plan(&r, true).unwrap();
        let cwd = dir.display().to_string();
        if TMPFS_PATHS.iter().any(|t| under(&cwd, t)) {
            assert_eq!(p.shares.last().unwrap().path, cwd);
            assert!(!p.shares.last().unwrap().writable);
        }
        // Under a --rw share it is that share.
        let r = Request {
            rw: vec![dir.clone()],
            ..r
        };
        let p = plan(&r, true).unwrap();
        assert_eq!(p.shares.len(), 1);
        assert_eq!(p.cwd, Some(cwd));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn modules_go_to_lib_modules_release() {
        let r = Request {
            modules: Some(("/cache/mods".into(), "6.1.0-x".into())),
            ..req()
        };
        let p = plan(&r, true).unwrap();
        let s = p.shares.last().unwrap();
        assert!(!s.writable);
        assert_eq!(p.devices.last().unwrap().host_dir, Path::new("/cache/mods"));
        if Path::new("/lib/modules").is_dir() {
            assert_eq!(s.path, "/lib/modules/6.1.0-x");
            assert!(p.tmpfs.contains(&"/lib/modules".to_string()));
            assert!(p.env.is_empty());
        } else {
            assert_eq!(s.path, "/run/kestrel/lib/modules/6.1.0-x");
            assert_eq!(p.env, ["MODPROBE_OPTIONS=-d /run/kestrel"]);
        }
    }

    #[test]
    fn users_come_from_the_passwd_file() {
        let text = "root:x:0:0:root:/root:/bin/bash\nkim:x:1000:1000::/home/kim:/bin/sh\nbad\n";
        assert_eq!(
            passwd_entry(text, 1000),
            Some(("kim".into(), "/home/kim".into()))
        );
        assert_eq!(passwd_entry(text, 5), None);
        let me = invoking_user();
        assert!(me.home.starts_with('/'));
    }
}

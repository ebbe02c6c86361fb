//! Recognising a kernel image by its bytes, never by its name.
//!
//! A bzImage carries the `HdrS` magic at 0x202 and the boot protocol version
//! at 0x206; an ELF vmlinux is ELF64, little-endian, `EM_X86_64`. Anything
//! else is rejected with the reason. Only the first [`HEAD_LEN`] bytes are read
//! to decide; an ELF's release string is looked for in the whole file.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// How much of a file is read to recognise it (covers the bzImage setup
/// header and the kernel version string it points at).
pub const HEAD_LEN: usize = 64 * 1024;

const BZ_MAGIC_OFFSET: usize = 0x202;
const BZ_MAGIC: &[u8; 4] = b"HdrS";
const BZ_VERSION_OFFSET: usize = 0x206;
const BZ_KERNEL_VERSION_OFFSET: usize = 0x20e;
/// `kernel_version` in the setup header is relative to this.
const BZ_KERNEL_VERSION_BASE: usize = 0x200;
/// The 64-bit boot protocol (`xloadflags`) needs at least 2.12.
const BZ_MIN_PROTOCOL: (u8, u8) = (2, 12);

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;

/// The two image formats the runner can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Linux/x86 boot protocol image; `protocol` is (major, minor).
    BzImage { protocol: (u8, u8) },
    /// Uncompressed ELF64 x86-64 kernel, booted through its PVH entry.
    ElfVmlinux,
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageFormat::BzImage { protocol: (a, b) } => {
                write!(f, "bzImage (boot protocol {a}.{b:02})")
            }
            ImageFormat::ElfVmlinux => f.write_str("ELF vmlinux"),
        }
    }
}

/// What the bytes of an image say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// The release (`uname -r`) if the image states it.
    pub release: Option<String>,
}

/// Recognises an image from its first bytes; the error is the reason it is
/// not a kernel. An ELF's release is not looked for here (see [`inspect`]).
pub fn inspect_head(head: &[u8]) -> Result<ImageInfo, String> {
    if head.starts_with(ELF_MAGIC) {
        return inspect_elf(head).map(|format| ImageInfo {
            format,
            release: None,
        });
    }
    if head.get(BZ_MAGIC_OFFSET..BZ_MAGIC_OFFSET + 4) != Some(BZ_MAGIC.as_slice()) {
        return Err("no bzImage header (`HdrS` at 0x202) and no ELF magic".into());
    }
    let version = read_u16(head, BZ_VERSION_OFFSET).ok_or("the bzImage header is truncated")?;
    let protocol = ((version >> 8) as u8, (version & 0xff) as u8);
    if protocol < BZ_MIN_PROTOCOL {
        return Err(format!(
            "bzImage boot protocol {}.{:02} is older than {}.{:02}, which 64-bit boot needs",
            protocol.0, protocol.1, BZ_MIN_PROTOCOL.0, BZ_MIN_PROTOCOL.1
        ));
    }
    Ok(ImageInfo {
        format: ImageFormat::BzImage { protocol },
        release: bz_release(head),
    })
}

fn inspect_elf(head: &[u8]) -> Result<ImageFormat, String> {
    let class = head.get(4).copied();
    let data = head.get(5).copied();
    let machine = read_u16(head, 18);
    match (class, data, machine) {
        (Some(ELFCLASS64), Some(ELFDATA2LSB), Some(EM_X86_64)) => Ok(ImageFormat::ElfVmlinux),
        (Some(ELFCLASS64), Some(ELFDATA2LSB), Some(m)) => {
            Err(format!("an ELF file for machine {m}, not x86-64"))
        }
        (None, _, _) | (_, None, _) | (_, _, None) => Err("a truncated ELF file".into()),
        _ => Err("an ELF file that is not 64-bit little-endian".into()),
    }
}

/// The first word of the string `kernel_version` points at.
fn bz_release(head: &[u8]) -> Option<String> {
    let ptr = read_u16(head, BZ_KERNEL_VERSION_OFFSET)? as usize;
    if ptr == 0 {
        return None;
    }
    let text = head.get(ptr + BZ_KERNEL_VERSION_BASE..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    release_word(&text[..end])
}

fn release_word(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?;
    // Releases start with a digit; this also skips `Linux version %s`.
    let ok = s.starts_with(|c: char| c.is_ascii_digit()) && s.chars().all(|c| c.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Recognises the kernel image at `path`, with its release when the image
/// states one (bzImage header, or the `Linux version` banner of a vmlinux).
pub fn inspect(path: &Path) -> Result<ImageInfo> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::ImageMissing {
            path: path.to_owned(),
        },
        _ => Error::io("open", path, e),
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(Error::NotAKernel {
            path: path.to_owned(),
            reason: "it is a directory".into(),
        });
    }
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut file)
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io("read", path, e))?;
    let mut info = inspect_head(&head).map_err(|reason| Error::NotAKernel {
        path: path.to_owned(),
        reason,
    })?;
    if info.format == ImageFormat::ElfVmlinux {
        info.release = banner_release(&head, &mut file).map_err(|e| Error::io("read", path, e))?;
    }
    Ok(info)
}

/// Scans a stream (after `head`) for `Linux version <release> `.
fn banner_release(head: &[u8], rest: &mut impl Read) -> std::io::Result<Option<String>> {
    const BANNER: &[u8] = b"Linux version ";
    const KEEP: usize = 256;
    let mut window = head.to_vec();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match find(&window, BANNER) {
            Some(at) => {
                let tail = &window[at + BANNER.len()..];
                match tail.iter().position(|&b| b == b' ' || b == 0) {
                    Some(end) => {
                        if let Some(r) = release_word(&tail[..end]) {
                            return Ok(Some(r));
                        }
                        // Not the banner (a format string, say); look further.
                        window.drain(..at + BANNER.len());
                        continue;
                    }
                    None if tail.len() > KEEP => {
                        window.drain(..at + BANNER.len());
                        continue;
                    }
                    // The release may continue in the next chunk.
                    None => drop(window.drain(..at)),
                }
            }
            None => {
                let keep_from = window.len().saturating_sub(BANNER.len());
                window.drain(..keep_from);
            }
        }
        let n = rest.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        window.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal bzImage head: `HdrS`, protocol, and a version string.
    pub(crate) fn fake_bzimage(protocol: u16, release: &str) -> Vec<u8> {
        let mut b = vec![0u8; 0x4000];
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b[BZ_MAGIC_OFFSET..BZ_MAGIC_OFFSET + 4].copy_from_slice(BZ_MAGIC);
        b[BZ_VERSION_OFFSET..BZ_VERSION_OFFSET + 2].copy_from_slice(&protocol.to_le_bytes());
        let text_at = 0x3000usize;
        let ptr = (text_at - BZ_KERNEL_VERSION_BASE) as u16;
        b[BZ_KERNEL_VERSION_OFFSET..BZ_KERNEL_VERSION_OFFSET + 2]
            .copy_from_slice(&ptr.to_le_bytes());
        let s = format!("{release} (debian-kernel@lists.debian.org) #1 SMP\0");
        b[text_at..text_at + s.len()].copy_from_slice(s.as_bytes());
        b
    }

    pub(crate) fn fake_elf(class: u8, machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(ELF_MAGIC);
        b[4] = class;
        b[5] = ELFDATA2LSB;
        b[16] = 2; // ET_EXEC
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b
    }

    #[test]
    fn bzimage_with_release() {
        let info = inspect_head(&fake_bzimage(0x020f, "6.1.0-50-cloud-amd64")).unwrap();
        assert_eq!(info.format, ImageFormat::BzImage { protocol: (2, 15) });
        assert_eq!(info.release.as_deref(), Some("6.1.0-50-cloud-amd64"));
    }

    #[test]
    fn bzimage_without_version_pointer() {
        let mut b = fake_bzimage(0x020c, "x");
        b[BZ_KERNEL_VERSION_OFFSET] = 0;
        b[BZ_KERNEL_VERSION_OFFSET + 1] = 0;
        let info = inspect_head(&b).unwrap();
        assert_eq!(info.release, None);
    }

    #[test]
    fn old_protocol_and_truncation_are_rejected() {
        let err = inspect_head(&fake_bzimage(0x0204, "2.4")).unwrap_err();
        assert!(err.contains("2.04"), "{err}");
        let b = fake_bzimage(0x020f, "x");
        assert!(inspect_head(&b[..0x207]).is_err());
    }

    #[test]
    fn elf_vmlinux_and_foreign_elves() {
        assert_eq!(
            inspect_head(&fake_elf(ELFCLASS64, EM_X86_64))
                .unwrap()
                .format,
            ImageFormat::ElfVmlinux
        );
        assert!(inspect_head(&fake_elf(ELFCLASS64, 183))
            .unwrap_err()
            .contains("183"));
        assert!(inspect_head(&fake_elf(1, EM_X86_64))
            .unwrap_err()
            .contains("64-bit"));
        assert!(inspect_head(&fake_elf(ELFCLASS64, EM_X86_64)[..10]).is_err());
    }

    #[test]
    fn text_and_empty_files_are_not_kernels() {
        let passwd = b"root:x:0:0:root:/root:/bin/bash\n".repeat(40);
        assert!(inspect_head(&passwd).unwrap_err().contains("HdrS"));
        assert!(inspect_head(b"").is_err());
    }

    #[test]
    fn files_on_disk() {
        let dir = crate::testutil::TempDir::new("image");
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, b"root:x:0:0::/root:/bin/sh\n").unwrap();
        let msg = inspect(&passwd).unwrap_err().to_string();
        assert!(
            msg.contains(&*passwd.to_string_lossy()) && msg.contains("expected a bzImage"),
            "{msg}"
        );

        let missing = dir.path().join("nope");
        let msg = inspect(&missing).unwrap_err().to_string();
        assert!(msg.contains("does not exist"), "{msg}");

        assert!(matches!(inspect(dir.path()), Err(Error::NotAKernel { .. })));

        // A vmlinux whose banner lies past the head and across a chunk edge.
        let mut elf = fake_elf(ELFCLASS64, EM_X86_64);
        elf.resize(HEAD_LEN + (1 << 20) - 5, 0);
        elf.extend_from_slice(b"Linux version 6.12.7-tiny (me@host) #1\0");
        let vmlinux = dir.path().join("vmlinux");
        std::fs::write(&vmlinux, &elf).unwrap();
        let info = inspect(&vmlinux).unwrap();
        assert_eq!(info.release.as_deref(), Some("6.12.7-tiny"));
    }
}

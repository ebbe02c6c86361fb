//! Loading a kernel and what the kernel reads at its entry point.
//!
//! Owns: recognising the image ([`KernelKind`]), loading it (bzImage through
//! the 64-bit Linux boot protocol, ELF vmlinux through PVH), the e820 map,
//! the command line, initrd placement, the boot GDT and page tables.
//! Invariant: after [`load`] returns, guest memory holds everything the
//! returned [`Entry`] promises (zero page or `hvm_start_info`, command line,
//! initrd, tables); the vCPU module only sets registers from the `Entry`.

pub mod cmdline;
pub mod e820;
pub mod gdt;
mod linux;
mod pvh;
mod read_only;

pub use read_only::read_only_ranges;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::GuestMemory;

/// What went wrong while loading the kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be read.
    #[error("cannot read kernel {path}: {source}")]
    KernelIo {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd file cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    InitrdIo {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is something else.
    #[error("{0} is neither a bzImage nor an x86-64 ELF vmlinux: pass a Linux kernel image such as /boot/vmlinuz-*")]
    NotAKernel(PathBuf),
    /// bzImage older than the 64-bit boot protocol.
    #[error("this bzImage has no 64-bit entry point (boot protocol {0:#x}, needs 2.12 with XLF_KERNEL_64): use a 64-bit kernel built in the last decade")]
    No64BitEntry(u16),
    /// ELF without a PVH note.
    #[error("this ELF vmlinux has no PVH entry point: build it with CONFIG_PVH=y, or pass the bzImage instead")]
    NoPvhEntry,
    /// linux-loader refused the image.
    #[error("cannot load the kernel image: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    /// Not enough memory for kernel plus initrd.
    #[error("the initrd ({initrd_mib} MiB) does not fit in guest memory below {ceiling:#x} above the kernel: give the guest more --memory")]
    InitrdTooBig {
        /// Initrd size in MiB (rounded up).
        initrd_mib: u64,
        /// Highest allowed end.
        ceiling: u64,
    },
    /// The command line does not fit.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// Writing a boot structure into guest memory failed (memory too small).
    #[error("guest memory too small to hold the {0}: give the guest more --memory")]
    Memory(&'static str),
}

/// The two kernel formats kestrel boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A bzImage: 64-bit Linux boot protocol.
    BzImage,
    /// An ELF vmlinux: PVH entry.
    Elf,
}

/// Recognises a kernel image by its first bytes.
pub fn sniff(path: &Path) -> Result<KernelKind, BootError> {
    let mut head = [0u8; 0x210];
    let mut file = File::open(path).map_err(|source| BootError::KernelIo {
        path: path.to_owned(),
        source,
    })?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(source) => {
                return Err(BootError::KernelIo {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    sniff_bytes(&head[..n]).ok_or_else(|| BootError::NotAKernel(path.to_owned()))
}

/// [`sniff`] on the first bytes of a file.
pub fn sniff_bytes(head: &[u8]) -> Option<KernelKind> {
    const ELF_MAGIC: &[u8] = b"\x7fELF";
    const ELFCLASS64: u8 = 2;
    const EM_X86_64: u16 = 62;
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" && head[0x1fe..0x200] == [0x55, 0xaa] {
        return Some(KernelKind::BzImage);
    }
    if head.len() >= 0x14
        && head.starts_with(ELF_MAGIC)
        && head[4] == ELFCLASS64
        && u16::from_le_bytes([head[0x12], head[0x13]]) == EM_X86_64
    {
        return Some(KernelKind::Elf);
    }
    None
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit Linux boot protocol: long mode, `rsi` = zero page.
    Linux64 {
        /// `startup_64`.
        rip: u64,
        /// The zero page.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `rbx` = start info.
    Pvh {
        /// The PVH entry from the ELF note.
        rip: u64,
        /// `hvm_start_info`.
        start_info: u64,
    },
    /// A hand-written 16-bit guest (tests, the doctor probe).
    RealMode {
        /// First instruction (CS base 0).
        rip: u64,
    },
}

/// The initial ramdisk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Initrd {
    /// A cpio file (possibly several concatenated), used as it is.
    File(PathBuf),
    /// kestrel's cached base archive followed by this run's job archive
    /// (see [`crate::initrd`]); concatenated while loading, never on disk.
    BaseAndJob {
        /// The base archive.
        base: PathBuf,
        /// The job archive.
        job: Vec<u8>,
    },
}

impl Initrd {
    /// The file that must be readable.
    pub fn file(&self) -> &Path {
        match self {
            Initrd::File(path) | Initrd::BaseAndJob { base: path, .. } => path,
        }
    }

    /// The bytes the guest gets.
    pub fn read(&self) -> Result<Vec<u8>, BootError> {
        let io = |source| BootError::InitrdIo {
            path: self.file().to_owned(),
            source,
        };
        match self {
            Initrd::File(path) => std::fs::read(path).map_err(io),
            Initrd::BaseAndJob { base, job } => Ok(kestrel_initramfs::image::concat(
                &std::fs::read(base).map_err(io)?,
                job,
            )),
        }
    }
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec<'a> {
    /// Kernel image.
    pub kernel: &'a Path,
    /// Its format when the caller already knows it (the kernel cache
    /// checked it); `None`: recognised here by content.
    pub kind: Option<KernelKind>,
    /// Initial ramdisk.
    pub initrd: Option<&'a Initrd>,
    /// Full command line (see [`cmdline::build`]).
    pub cmdline: &'a str,
    /// RAM size.
    pub memory_bytes: u64,
}

/// Loads kernel, initrd, command line and boot tables into `mem`.
pub fn load(mem: &GuestMemory, spec: &BootSpec<'_>) -> Result<Entry, BootError> {
    let kind = match spec.kind {
        Some(kind) => kind,
        None => sniff(spec.kernel)?,
    };
    let mut kernel = File::open(spec.kernel).map_err(|source| BootError::KernelIo {
        path: spec.kernel.to_owned(),
        source,
    })?;
    let initrd = spec.initrd.map(Initrd::read).transpose()?;
    gdt::write_tables(mem)?;
    gdt::write_page_tables(mem)?;
    mark_job_window(mem)?;
    match kind {
        KernelKind::BzImage => linux::load(mem, &mut kernel, initrd.as_deref(), spec),
        KernelKind::Elf => pvh::load(mem, &mut kernel, initrd.as_deref(), spec),
    }
}

/// Marks the job window (reserved in the memory map) with its magic, so an
/// init waiting for a warm start's job can tell kestrel's window from any
/// other host's RAM.
fn mark_job_window(mem: &GuestMemory) -> Result<(), BootError> {
    mem.write_slice(
        kestrel_initramfs::job::JOB_WINDOW_MAGIC,
        GuestAddress(layout::JOB_WINDOW),
    )
    .map_err(|_| BootError::Memory("job window"))
}

/// Copies a hand-written real-mode guest to [`layout::RAW_GUEST_ENTRY`].
pub fn load_raw(mem: &GuestMemory, code: &[u8]) -> Result<Entry, BootError> {
    if code.len() > layout::RAW_GUEST_MAX {
        return Err(BootError::Memory("raw guest image (too large)"));
    }
    mem.write_slice(code, GuestAddress(layout::RAW_GUEST_ENTRY))
        .map_err(|_| BootError::Memory("raw guest image"))?;
    Ok(Entry::RealMode {
        rip: layout::RAW_GUEST_ENTRY,
    })
}

/// The highest page-aligned address at which `size` bytes end at or below
/// `ceiling` and start at or above `floor`.
pub fn place_initrd(size: u64, floor: u64, ceiling: u64) -> Option<u64> {
    let start = ceiling.checked_sub(size)? & !(layout::PAGE_SIZE - 1);
    (start >= floor).then_some(start)
}

fn write_cmdline(mem: &GuestMemory, line: &str, max: usize) -> Result<(), BootError> {
    cmdline::check_len(line, max)?;
    mem.write_slice(line.as_bytes(), GuestAddress(layout::CMDLINE))
        .and_then(|()| mem.write_obj(0u8, GuestAddress(layout::CMDLINE + line.len() as u64)))
        .map_err(|_| BootError::Memory("command line"))
}

fn write_initrd(
    mem: &GuestMemory,
    initrd: &[u8],
    floor: u64,
    ceiling: u64,
) -> Result<u64, BootError> {
    let size = initrd.len() as u64;
    let addr = place_initrd(size, floor, ceiling).ok_or(BootError::InitrdTooBig {
        initrd_mib: size.div_ceil(layout::MIB),
        ceiling,
    })?;
    mem.write_slice(initrd, GuestAddress(addr))
        .map_err(|_| BootError::Memory("initrd"))?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_bzimage_elf_and_junk_apart() {
        let mut bz = vec![0u8; 0x210];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(sniff_bytes(&bz), Some(KernelKind::BzImage));
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[0x12] = 62;
        assert_eq!(sniff_bytes(&elf), Some(KernelKind::Elf));
        elf[0x12] = 183; // aarch64
        assert_eq!(sniff_bytes(&elf), None);
        assert_eq!(sniff_bytes(b"root:x:0:0:root:/root:/bin/bash\n"), None);
        assert_eq!(sniff_bytes(&[]), None);
    }

    #[test]
    fn sniff_names_the_file_for_non_kernels() {
        let err = sniff(Path::new("/etc/passwd")).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel(_)));
        assert!(err.to_string().starts_with("/etc/passwd is neither"));
        let err = sniff(Path::new("/nonexistent/vmlinuz")).unwrap_err();
        assert!(err
            .to_string()
            .contains("cannot read kernel /nonexistent/vmlinuz"));
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mib = layout::MIB;
        let addr = place_initrd(5 * mib + 3, 64 * mib, 512 * mib).unwrap();
        assert_eq!(addr % layout::PAGE_SIZE, 0);
        assert!(addr + 5 * mib + 3 <= 512 * mib);
        assert!(512 * mib - (addr + 5 * mib + 3) < layout::PAGE_SIZE);
        assert_eq!(place_initrd(100 * mib, 64 * mib, 128 * mib), None);
        assert_eq!(place_initrd(u64::MAX, 0, 128 * mib), None);
    }
}

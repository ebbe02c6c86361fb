//! bzImage through the 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst).
//!
//! Invariant: the zero page points at a NUL-terminated command line the
//! kernel accepts, an initrd wholly inside low RAM, below the kernel's
//! `initrd_addr_max` and above the area the kernel decompresses into, and
//! an e820 map from [`super::e820::map`].

use std::fs::File;

use linux_loader::loader::bootparam::{boot_params, setup_header, XLF_KERNEL_64};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::{e820, write_cmdline, write_initrd, BootError, BootSpec, Entry};
use crate::layout;
use crate::memory::GuestMemory;

/// "Undefined" boot loader id (we have none assigned).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `vid_mode`: "normal" text mode, i.e. don't ask.
const VID_MODE_NORMAL: u16 = 0xffff;
/// Oldest protocol with the 64-bit entry and `xloadflags`.
const PROTOCOL_64BIT: u16 = 0x020c;
/// Command line limit of protocols before 2.06.
const OLD_CMDLINE_MAX: usize = 255;

pub(super) fn load(
    mem: &GuestMemory,
    kernel: &mut File,
    initrd: Option<&[u8]>,
    spec: &BootSpec<'_>,
) -> Result<Entry, BootError> {
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(layout::KERNEL_LOAD)),
        kernel,
        Some(GuestAddress(layout::HIMEM_START)),
    )?;
    let hdr = loaded.setup_header.ok_or(BootError::No64BitEntry(0))?;
    let version = hdr.version;
    if version < PROTOCOL_64BIT || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry(version));
    }

    let cmdline_max = if version >= 0x0206 {
        (hdr.cmdline_size as usize + 1).min(layout::CMDLINE_MAX)
    } else {
        OLD_CMDLINE_MAX
    };
    write_cmdline(mem, spec.cmdline, cmdline_max)?;

    let ramdisk = match initrd {
        Some(bytes) => {
            let (floor, ceiling) = initrd_bounds(&hdr, loaded.kernel_end, spec.memory_bytes);
            Some((
                write_initrd(mem, bytes, floor, ceiling)?,
                bytes.len() as u64,
            ))
        }
        None => None,
    };

    let params = zero_page(hdr, spec.cmdline.len(), ramdisk, spec.memory_bytes);
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE))
        .map_err(|_| BootError::Memory("zero page"))?;
    Ok(Entry::Linux64 {
        rip: loaded.kernel_load.0 + layout::KERNEL_64BIT_ENTRY_OFFSET,
        zero_page: layout::ZERO_PAGE,
    })
}

/// Where the initrd may go: above everything the kernel decompresses into
/// (`pref_address` or the load address, plus `init_size`), below
/// `initrd_addr_max` and the end of low RAM.
pub(super) fn initrd_bounds(hdr: &setup_header, kernel_end: u64, memory: u64) -> (u64, u64) {
    let init_size = u64::from(hdr.init_size);
    let pref = hdr.pref_address;
    let floor = kernel_end
        .max(pref.saturating_add(init_size))
        .max(layout::KERNEL_LOAD + init_size);
    let addr_max = u64::from(hdr.initrd_addr_max);
    let ceiling = if addr_max == 0 {
        // Protocols before 2.03 leave it 0 and mean 0x37ffffff.
        0x3800_0000
    } else {
        addr_max + 1
    }
    .min(e820::low_ram_end(memory));
    (floor, ceiling)
}

/// The zero page for a kernel with setup header `hdr`.
pub(super) fn zero_page(
    mut hdr: setup_header,
    cmdline_len: usize,
    ramdisk: Option<(u64, u64)>,
    memory: u64,
) -> boot_params {
    let mut params = boot_params::default();
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.vid_mode = VID_MODE_NORMAL;
    hdr.cmd_line_ptr = layout::CMDLINE as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = ramdisk {
        // Both below 4 GiB: the initrd lives in low RAM.
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    params.hdr = hdr;
    params.acpi_rsdp_addr = layout::ACPI_RSDP;
    let map = e820::map(memory);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind as u32;
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{Initrd, KernelKind};
    use crate::layout::MIB;
    use crate::testutil::TempFile;
    use linux_loader::loader::bootparam::CAN_USE_HEAP;
    use vm_memory::ByteValued;

    fn header() -> setup_header {
        setup_header {
            setup_sects: 4,
            boot_flag: 0xaa55,
            header: 0x5372_6448, // "HdrS"
            version: 0x020f,
            loadflags: 1 | CAN_USE_HEAP,
            code32_start: layout::KERNEL_LOAD as u32,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64 | 2,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x200_0000,
            ..Default::default()
        }
    }

    /// A file that passes as a bzImage: boot sector, setup header, setup
    /// sectors and a tiny "compressed kernel".
    fn fake_bzimage(hdr: setup_header) -> TempFile {
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        image.extend_from_slice(&[0x90; 4096]);
        TempFile::with(&image)
    }

    #[test]
    fn zero_page_fields() {
        let p = zero_page(header(), 42, Some((0x1000_0000, 0x1234)), 512 * MIB);
        let hdr = p.hdr;
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.acpi_rsdp_addr }, layout::ACPI_RSDP);
        let n = p.e820_entries as usize;
        assert_eq!(n, e820::map(512 * MIB).len());
        let table = p.e820_table;
        for pair in table[..n].windows(2) {
            assert!({ pair[0].addr } + { pair[0].size } <= { pair[1].addr });
        }
        assert_eq!({ table[n - 1].addr } + { table[n - 1].size }, 512 * MIB);
    }

    #[test]
    fn initrd_bounds_respect_kernel_and_addr_max() {
        let mut hdr = header();
        let (floor, ceiling) = initrd_bounds(&hdr, 0x50_0000, 512 * MIB);
        assert_eq!(floor, 0x100_0000 + 0x200_0000);
        assert_eq!(ceiling, 512 * MIB);
        hdr.initrd_addr_max = 0x0fff_ffff;
        assert_eq!(initrd_bounds(&hdr, 0, 512 * MIB).1, 0x1000_0000);
        assert_eq!(initrd_bounds(&hdr, 0, 3 * 1024 * MIB).1, 0x1000_0000);
        hdr.initrd_addr_max = 0xffff_ffff;
        assert_eq!(initrd_bounds(&hdr, 0, 8192 * MIB).1, layout::MMIO_GAP_START);
    }

    #[test]
    fn loads_a_synthetic_bzimage_end_to_end() {
        let image = fake_bzimage(header());
        // A base archive that does not end on 512 bytes, and a job archive:
        // the job must start at the next multiple of 512.
        let base = TempFile::with(&[7u8; 10_000]);
        let initrd = Initrd::BaseAndJob {
            base: base.0.clone(),
            job: vec![8u8; 512],
        };
        let memory = 256 * MIB;
        let mem = crate::memory::create(memory).unwrap();
        let spec = BootSpec {
            kernel: &image.0,
            kind: Some(KernelKind::BzImage),
            initrd: Some(&initrd),
            cmdline: "console=ttyS0 quiet",
            memory_bytes: memory,
        };
        let entry = super::super::load(&mem, &spec).unwrap();
        assert_eq!(
            entry,
            Entry::Linux64 {
                rip: layout::KERNEL_LOAD + 0x200,
                zero_page: layout::ZERO_PAGE
            }
        );
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        let (addr, size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
        assert_eq!(size, 10_240 + 512);
        assert_eq!(addr % layout::PAGE_SIZE, 0);
        assert!(addr >= 0x300_0000 && addr + size <= memory);
        let mut back = vec![0u8; 10_752];
        mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert!(back[..10_000].iter().all(|&b| b == 7));
        assert!(back[10_000..10_240].iter().all(|&b| b == 0));
        assert!(back[10_240..].iter().all(|&b| b == 8));
        let mut line = vec![0u8; 20];
        mem.read_slice(&mut line, GuestAddress(layout::CMDLINE))
            .unwrap();
        assert_eq!(&line, b"console=ttyS0 quiet\0");
        let mut payload = [0u8; 4];
        mem.read_slice(&mut payload, GuestAddress(layout::KERNEL_LOAD))
            .unwrap();
        assert_eq!(payload, [0x90; 4]);
    }

    #[test]
    fn old_protocols_are_refused() {
        let mut hdr = header();
        hdr.version = 0x020a;
        let image = fake_bzimage(hdr);
        let mem = crate::memory::create(64 * MIB).unwrap();
        let spec = BootSpec {
            kernel: &image.0,
            kind: None,
            initrd: None,
            cmdline: "",
            memory_bytes: 64 * MIB,
        };
        assert!(matches!(
            super::super::load(&mem, &spec),
            Err(BootError::No64BitEntry(0x020a))
        ));
    }

    #[test]
    fn initrd_that_cannot_fit_is_an_error() {
        let image = fake_bzimage(header());
        let initrd = TempFile::with(&vec![0u8; 40 << 20]);
        let initrd = Initrd::File(initrd.0.clone());
        let mem = crate::memory::create(64 * MIB).unwrap();
        let spec = BootSpec {
            kernel: &image.0,
            kind: None,
            initrd: Some(&initrd),
            cmdline: "",
            memory_bytes: 64 * MIB,
        };
        let err = super::super::load(&mem, &spec).unwrap_err();
        assert!(
            matches!(err, BootError::InitrdTooBig { initrd_mib: 40, .. }),
            "{err}"
        );
    }
}

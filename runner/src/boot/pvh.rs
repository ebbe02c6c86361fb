//! ELF vmlinux through the PVH entry (xen/include/public/arch-x86/hvm/start_info.h).
//!
//! Invariant: `hvm_start_info` at [`layout::PVH_INFO`] points at the command
//! line, the memory map from [`super::e820::map`], the RSDP and (when there
//! is an initrd) one module entry describing it.

use std::fs::File;

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress};

use super::{e820, write_cmdline, write_initrd, BootError, BootSpec, Entry};
use crate::layout;
use crate::memory::GuestMemory;

/// Version of the start info layout we write (1 adds the memory map).
const START_INFO_VERSION: u32 = 1;

pub(super) fn load(
    mem: &GuestMemory,
    kernel: &mut File,
    initrd: Option<&[u8]>,
    spec: &BootSpec<'_>,
) -> Result<Entry, BootError> {
    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(layout::HIMEM_START)))?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhEntry);
    };
    write_cmdline(mem, spec.cmdline, layout::CMDLINE_MAX)?;

    let module = match initrd {
        Some(bytes) => {
            let ceiling = e820::low_ram_end(spec.memory_bytes);
            let addr = write_initrd(mem, bytes, loaded.kernel_end, ceiling)?;
            let module = hvm_modlist_entry {
                paddr: addr,
                size: bytes.len() as u64,
                ..Default::default()
            };
            mem.write_obj(module, GuestAddress(layout::PVH_MODLIST))
                .map_err(|_| BootError::Memory("PVH module list"))?;
            true
        }
        None => false,
    };

    let map = e820::map(spec.memory_bytes);
    for (i, e) in map.iter().take(layout::PVH_MEMMAP_MAX).enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let at = layout::PVH_MEMMAP + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(|_| BootError::Memory("PVH memory map"))?;
    }
    let info = start_info(module, map.len().min(layout::PVH_MEMMAP_MAX));
    mem.write_obj(info, GuestAddress(layout::PVH_INFO))
        .map_err(|_| BootError::Memory("PVH start info"))?;
    Ok(Entry::Pvh {
        rip: entry.0,
        start_info: layout::PVH_INFO,
    })
}

fn start_info(has_module: bool, memmap_entries: usize) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        flags: 0,
        nr_modules: u32::from(has_module),
        modlist_paddr: if has_module { layout::PVH_MODLIST } else { 0 },
        cmdline_paddr: layout::CMDLINE,
        rsdp_paddr: layout::ACPI_RSDP,
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: memmap_entries as u32,
        reserved: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{Initrd, KernelKind};
    use crate::layout::MIB;
    use crate::testutil::TempFile;

    const ENTRY: u64 = 0x100_0000;

    /// A minimal ELF64 x86-64 image: one PT_LOAD at 16 MiB holding
    /// `code`, and (if `pvh`) a PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY.
    fn fake_vmlinux(pvh: bool) -> TempFile {
        let phnum: u16 = 2;
        let code_off = 0x200u64;
        let note_off = 0x100u64;
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&ENTRY.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let phdr = |f: &mut Vec<u8>, at: usize, kind: u32, off: u64, addr: u64, size: u64| {
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
            f[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        };
        phdr(&mut f, 0x40, 1, code_off, ENTRY, 16);
        // Note: namesz 4 "Xen\0", descsz 4, type 18 (or 17 when not PVH).
        let note_type: u32 = if pvh { 18 } else { 17 };
        let mut note = Vec::new();
        for v in [4u32, 4, note_type] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&((ENTRY as u32) + 0x40).to_le_bytes());
        phdr(&mut f, 0x78, 4, note_off, 0, note.len() as u64);
        f[note_off as usize..note_off as usize + note.len()].copy_from_slice(&note);
        f.extend_from_slice(&[0xf4; 16]);
        TempFile::with(&f)
    }

    #[test]
    fn pvh_start_info_describes_everything() {
        let kernel = fake_vmlinux(true);
        let initrd = TempFile::with(&[9u8; 5000]);
        let initrd = Initrd::File(initrd.path().to_owned());
        let memory = 128 * MIB;
        let mem = crate::memory::create(memory).unwrap();
        let spec = BootSpec {
            kernel: kernel.path(),
            kind: Some(KernelKind::Elf),
            initrd: Some(&initrd),
            cmdline: "console=ttyS0",
            memory_bytes: memory,
        };
        let entry = super::super::load(&mem, &spec).unwrap();
        assert_eq!(
            entry,
            Entry::Pvh {
                rip: ENTRY + 0x40,
                start_info: layout::PVH_INFO
            }
        );
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.rsdp_paddr, layout::ACPI_RSDP);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries as usize, e820::map(memory).len());
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(module.size, 5000);
        assert_eq!(module.paddr % layout::PAGE_SIZE, 0);
        assert!(module.paddr >= ENTRY + 16 && module.paddr + 5000 <= memory);
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                layout::PVH_MEMMAP + 24 * (u64::from(info.memmap_entries) - 1),
            ))
            .unwrap();
        assert_eq!(last.addr + last.size, memory);
        let mut code = [0u8; 2];
        mem.read_slice(&mut code, GuestAddress(ENTRY)).unwrap();
        assert_eq!(code, [0xf4, 0xf4]);
    }

    #[test]
    fn elf_without_pvh_note_is_refused() {
        let kernel = fake_vmlinux(false);
        let mem = crate::memory::create(64 * MIB).unwrap();
        let spec = BootSpec {
            kernel: kernel.path(),
            kind: None,
            initrd: None,
            cmdline: "",
            memory_bytes: 64 * MIB,
        };
        assert!(matches!(
            super::super::load(&mem, &spec),
            Err(BootError::NoPvhEntry)
        ));
    }

    #[test]
    fn no_module_without_initrd() {
        let info = start_info(false, 3);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert_eq!(info.version, 1);
    }
}

//! The ELF reader behind the initramfs's library closure (host files, but
//! any file a user packs): every accessor answers or errs on any bytes.
#![no_main]

use kestrel_initramfs::elf::Elf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(elf) = Elf::parse(data) {
        let _ = elf.machine();
        let _ = elf.is_64();
        let _ = elf.compatible_with(&elf);
        let _ = elf.interpreter();
        let _ = elf.dynamic();
        let _ = elf.section(".interp");
        let _ = elf.section(".dynamic");
    }
});

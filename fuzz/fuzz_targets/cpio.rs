//! The newc cpio reader (archives the user hands over as --initrd, and our
//! own): any bytes are read or refused, never a panic or a runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kestrel_initramfs::cpio::read_entries(data);
});

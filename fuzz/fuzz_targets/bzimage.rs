//! A kernel image's setup header and ELF notes (`kestrel run --kernel
//! FILE` takes any file): the payload lookup and the PVH-note search answer
//! or refuse, never panic. (Decompression is left out: a valid compressed
//! stream may legitimately unpack to a gigabyte.)
#![no_main]

use kestrel::vmlinux;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = vmlinux::payload(data) {
        let _ = vmlinux::Compression::of(payload);
    }
    let _ = vmlinux::pvh_entry(data);
    let _ = kestrel::boot::sniff_bytes(data);
});

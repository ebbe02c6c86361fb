//! The job spec (host → init) and the status channel (init → host): any
//! text parses or is refused, never panics; what parses renders back to
//! the same spec; status and phase lines are found in any bytes; a job
//! header (warm starts) parses or is refused, and renders back to itself.
#![no_main]

use kestrel_initramfs::job::{JobHeader, PhaseMark, Spec, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Status::find_in(data);
    let _ = PhaseMark::find_all(data);
    if let Ok(header) = JobHeader::parse(&String::from_utf8_lossy(data)) {
        assert_eq!(JobHeader::parse(&header.line()), Ok(header));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = Spec::parse(text) {
            let again = Spec::parse(&spec.render()).expect("a rendered spec parses");
            assert_eq!(again, spec, "parse(render(s)) == s");
        }
    }
});

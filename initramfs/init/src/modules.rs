//! Loading the spec's kernel modules, in order, with `finit_module`.
//!
//! A module that is already loaded (EEXIST) counts as loaded. Compressed
//! files (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel to
//! decompress, which needs `CONFIG_MODULE_DECOMPRESS` (Linux 6.0+).

use std::fs::File;

use kestrel_initramfs::job::Module;

use crate::error::InitError;
use crate::sys;

/// Loads every module in order; stops at the first failure.
pub fn load_all(modules: &[Module]) -> Result<(), InitError> {
    modules.iter().try_for_each(load)
}

fn load(module: &Module) -> Result<(), InitError> {
    let step = || format!("load module {}", module.path);
    let file = File::open(&module.path).map_err(|e| InitError::os(step(), &e))?;
    let params = sys::cstring(&module.params).map_err(|e| InitError::os(step(), &e))?;
    match sys::finit_module(&file, &params, flags_for(&module.path)) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(InitError::os(step(), &e)),
        _ => Ok(()),
    }
}

/// `finit_module` flags for the file at `path`.
fn flags_for(path: &str) -> libc::c_uint {
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| path.ends_with(ext));
    if compressed {
        sys::MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_modules_are_flagged() {
        assert_eq!(flags_for("/kestrel/modules/fuse.ko"), 0);
        assert_eq!(
            flags_for("/kestrel/modules/fuse.ko.xz"),
            sys::MODULE_INIT_COMPRESSED_FILE
        );
        assert_eq!(
            flags_for("/kestrel/modules/fuse.ko.zst"),
            sys::MODULE_INIT_COMPRESSED_FILE
        );
    }

    #[test]
    fn missing_module_is_named() {
        let m = Module {
            path: "/nonexistent/kestrel/virtio.ko".into(),
            params: String::new(),
        };
        let e = load_all(&[m]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "load module /nonexistent/kestrel/virtio.ko: ENOENT"
        );
    }
}

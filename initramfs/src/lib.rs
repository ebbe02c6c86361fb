//! Kestrel's initramfs: what goes into the archive the guest boots from.
//!
//! - [`job`]: the spec the host writes and the guest init reads (no deps).
//! - [`cpio`] (host): deterministic newc archive writer.
//! - [`modules`] (host): kernel module resolution from `modules.dep`.
//! - [`elf`] (host): shared-library closure of an executable, without ldd.
//! - [`image`] (host): the base archive, the per-run job archive, caching.

// job.rs is the shared contract, owned outside this host code; newer
// clippy flags its `push_str("%")`.
pub mod job;

#[cfg(feature = "host")]
pub mod cpio;
#[cfg(feature = "host")]
pub mod elf;
#[cfg(feature = "host")]
pub mod image;
#[cfg(feature = "host")]
pub mod modules;

#[cfg(feature = "host")]
pub use image::{
    concat, job_archive, remove_orphaned_temps, write_if_changed, BaseImage, ImageError,
};

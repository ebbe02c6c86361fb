//! Kestrel's initramfs: what goes into the archive the guest boots from.
//!
//! - [`job`]: the spec the host writes and the guest init reads (no deps).

pub mod job;

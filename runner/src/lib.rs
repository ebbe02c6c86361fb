//! Kestrel's VMM: boots a Linux kernel straight into an initramfs on KVM,
//! with no firmware, and reports one verdict.
//!
//! Module map (each module's header states what it owns and its invariant):
//! - [`layout`] — every guest address, port and IRQ.
//! - [`kvm`] — the only user of kvm-ioctls.
//! - [`memory`] — guest RAM.
//! - [`pagewalk`] — the guest's page tables walked on guest RAM (no KVM).
//! - [`boot`] — bzImage (64-bit boot protocol) and ELF (PVH) loading, e820,
//!   command line, initrd placement, boot GDT/page tables.
//! - [`acpi`] — RSDP/XSDT/FADT/MADT/DSDT.
//! - [`bus`] — one device trait for port I/O and MMIO, range dispatch.
//! - [`devices`] — UARTs and their sinks, i8042, probe port, virtio hook.
//! - [`vcpu`] — vCPU state and threads.
//! - [`gdb`] — `--gdb PORT`: the gdb remote protocol over KVM guest debugging.
//! - [`xsave`] — CPUID leaf 0xD made consistent, and the matching XCR0.
//! - [`vm`] — `Config` → `Vm` → `Outcome`.
//! - [`snapshot`] — a VM saved where the init waits for its job, restored
//!   for warm starts (`--warm`).
//! - [`vmlinux`] — a bzImage's kernel unpacked once on the host (PVH entry).
//! - [`initrd`] — kestrel's own initramfs: cached base archive + per-run job.
//! - [`guest_root`] — the guest's `/` (host root, tmpfs, `--rw`/`--share`
//!   devices) as devices plus job-spec entries.
//! - [`guest_modules`] — the kernel's modules at `/lib/modules/<release>`
//!   with a generated kmod index (sidecar) when the tree has none.
//! - [`verdict`] — verdict, exit code, final line.
//! - [`terminal`] — an interactive terminal: raw mode, stdin to the guest's
//!   console port (`/dev/hvc0`), window sizes, the Ctrl-A x escape.
//! - [`timings`] — host and guest phase marks on one clock (`--timings`).
//! - [`cli`], [`doctor`] — the `kestrel` command's front end.

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod commands;
pub mod devices;
pub mod doctor;
pub mod event;
pub mod gdb;
pub mod guest_modules;
pub mod guest_root;
pub mod initrd;
pub mod kvm;
pub mod layout;
pub mod log;
pub mod memory;
pub mod pagewalk;
pub mod snapshot;
pub mod terminal;
pub mod timings;
pub mod vcpu;
pub mod verdict;
pub mod vm;
pub mod vmlinux;
pub mod xsave;

#[cfg(test)]
mod testutil;

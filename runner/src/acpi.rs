//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! Distro kernels find CPUs only through the MADT (no MP-table parser) and
//! devices through the DSDT, so these tables are how the guest learns its
//! machine. The platform is "hardware-reduced" ACPI (no PM timer, SCI or
//! legacy PIC setup; the LAPIC timer and kvmclock run the clock), the FADT
//! says there is no VGA and no CMOS RTC (skips the slow RTC probe) and, by
//! not setting the 8042 flag, no keyboard controller to probe; the reset
//! port 0x64 still works for `reboot=k`.
//!
//! Invariant: every table's checksum is valid, each table lies wholly in
//! `[ACPI_TABLES, HIMEM_START)`, the MADT has one enabled LAPIC per vCPU
//! with APIC id = vCPU index, and the DSDT describes exactly the devices
//! the VMM puts on its buses (COM1, COM2, and the given virtio-mmio slots).

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Name, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"KESTRL";
const OEM_REVISION: u32 = 1;
/// DSDT revision 2: integers are 64-bit.
const DSDT_REVISION: u8 = 2;
/// IAPC_BOOT_ARCH bits (ACPI 6.5 table 5.11).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// One virtio-mmio device as the DSDT describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Register block base.
    pub base: u64,
    /// Register block size.
    pub size: u64,
    /// Its GSI (edge-triggered, active high).
    pub gsi: u32,
}

/// The tables, each with the guest address it is written to.
#[derive(Debug)]
pub struct Tables {
    /// `(address, bytes)` for RSDP, DSDT, FADT, MADT, XSDT.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

/// The tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// They would not fit in the reserved area.
    #[error("ACPI tables ({0} bytes) do not fit in the BIOS area: too many devices")]
    TooLarge(u64),
    /// Guest memory write failed.
    #[error("cannot write the ACPI tables into guest memory")]
    Memory,
}

/// Builds the tables for `cpus` vCPUs and the given virtio-mmio devices.
pub fn build(cpus: u8, virtio: &[VirtioMmioSlot]) -> Result<Tables, AcpiError> {
    let mut next = layout::ACPI_TABLES;
    let mut place = |len: usize| {
        let at = next;
        next = (next + len as u64).next_multiple_of(16);
        at
    };

    let dsdt = dsdt(virtio);
    let dsdt_addr = place(dsdt.len());

    let mut fadt = FADTBuilder::new(OEM_ID, *b"KESTFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi);
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    let fadt = to_bytes(&fadt.finalize());
    let fadt_addr = place(fadt.len());

    let madt = madt(cpus);
    let madt_addr = place(madt.len());

    let mut xsdt = XSDT::new(OEM_ID, *b"KESTXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = place(xsdt.len());

    if next > layout::HIMEM_START {
        return Err(AcpiError::TooLarge(next - layout::ACPI_TABLES));
    }
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(Tables {
        blobs: vec![
            (layout::ACPI_RSDP, rsdp),
            (dsdt_addr, dsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (xsdt_addr, xsdt),
        ],
    })
}

/// Writes the tables into guest memory.
pub fn write(mem: &GuestMemory, tables: &Tables) -> Result<(), AcpiError> {
    for (addr, bytes) in &tables.blobs {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| AcpiError::Memory)?;
    }
    Ok(())
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"KESTMADT",
        OEM_REVISION,
        LocalInterruptController::Address(layout::LAPIC_ADDR as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, layout::IOAPIC_ADDR as u32, 0));
    to_bytes(&madt)
}

fn dsdt(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    let com1 = serial_device("COM1", 0, layout::COM1_PORT, layout::COM1_IRQ);
    let com2 = serial_device("COM2", 1, layout::COM2_PORT, layout::COM2_IRQ);
    let virtio: Vec<Vec<u8>> = virtio
        .iter()
        .enumerate()
        .map(|(n, slot)| virtio_device(n, slot))
        .collect();

    let mut body = Vec::new();
    body.extend_from_slice(&com1);
    body.extend_from_slice(&com2);
    for dev in &virtio {
        body.extend_from_slice(dev);
    }
    let scope = Scope::raw("\\_SB_".into(), body);

    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        *b"KESTDSDT",
        OEM_REVISION,
    );
    table.append_slice(&scope);
    table.as_slice().to_vec()
}

fn serial_device(name: &str, uid: u8, port: u16, irq: u32) -> Vec<u8> {
    let hid = EISAName::new("PNP0501");
    // One expression: the AML builders borrow their temporaries.
    to_bytes(&Device::new(
        name.into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &uid),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &IO::new(port, port, 1, layout::SERIAL_PORT_LEN as u8),
                    &Interrupt::new(true, true, false, false, irq),
                ]),
            ),
        ],
    ))
}

fn virtio_device(n: usize, slot: &VirtioMmioSlot) -> Vec<u8> {
    let hid: aml::AmlStr = "LNRO0005";
    let uid = n as u32;
    let name = format!("VR{n:02X}");
    to_bytes(&Device::new(
        name.as_str().into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &uid),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &Memory32Fixed::new(true, slot.base as u32, slot.size as u32),
                    &Interrupt::new(true, true, false, false, slot.gsi),
                ]),
            ),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn slots(n: u32) -> Vec<VirtioMmioSlot> {
        (0..n)
            .map(|i| {
                let (range, gsi) = layout::virtio_mmio_slot(i);
                VirtioMmioSlot {
                    base: range.start,
                    size: range.end - range.start,
                    gsi,
                }
            })
            .collect()
    }

    /// Finds the table with `sig` through RSDP → XSDT (and FADT for DSDT).
    fn find<'a>(tables: &'a Tables, sig: &[u8; 4]) -> &'a [u8] {
        let at =
            |addr: u64| -> &'a [u8] { &tables.blobs.iter().find(|(a, _)| *a == addr).unwrap().1 };
        let rsdp = at(layout::ACPI_RSDP);
        let xsdt = at(u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        for i in 0..(xsdt.len() - 36) / 8 {
            let table = at(u64_at(xsdt, 36 + 8 * i));
            if &table[..4] == sig {
                return table;
            }
            if &table[..4] == b"FACP" && sig == b"DSDT" {
                return at(u64_at(table, 140));
            }
        }
        panic!("no {sig:?}");
    }

    #[test]
    fn checksums_lengths_and_placement() {
        let tables = build(4, &slots(2)).unwrap();
        for (addr, bytes) in &tables.blobs {
            assert!(*addr >= layout::ACPI_RSDP);
            assert!(addr + bytes.len() as u64 <= layout::HIMEM_START);
            if &bytes[..8] == b"RSD PTR " {
                assert_eq!(sum(&bytes[..20]), 0);
                assert_eq!(sum(bytes), 0);
                assert_eq!(bytes[15], 2, "ACPI 2.0+ RSDP");
            } else {
                assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "{:?}", &bytes[..4]);
                assert_eq!(sum(bytes), 0, "{:?}", &bytes[..4]);
            }
        }
        let mut spans: Vec<_> = tables
            .blobs
            .iter()
            .map(|(a, b)| (*a, a + b.len() as u64))
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn madt_lists_one_lapic_per_cpu_and_the_ioapic() {
        for cpus in [1u8, 2, 7, layout::MAX_VCPUS] {
            let tables = build(cpus, &[]).unwrap();
            let madt = find(&tables, b"APIC");
            assert_eq!(u32_at(madt, 36), layout::LAPIC_ADDR as u32);
            let (mut lapics, mut ioapics, mut at) = (Vec::new(), 0, 44);
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(u32_at(madt, at + 4) & 1, 1, "enabled");
                        lapics.push(madt[at + 3]);
                    }
                    1 => {
                        assert_eq!(u32_at(madt, at + 4), layout::IOAPIC_ADDR as u32);
                        assert_eq!(madt[at + 2], cpus, "I/O APIC id after the LAPICs");
                        ioapics += 1;
                    }
                    other => panic!("unexpected MADT entry {other}"),
                }
                at += len;
            }
            assert_eq!(lapics, (0..cpus).collect::<Vec<_>>());
            assert_eq!(ioapics, 1);
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_without_rtc() {
        let tables = build(1, &[]).unwrap();
        let fadt = find(&tables, b"FACP");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        let iapc = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_ne!(iapc & IAPC_CMOS_RTC_NOT_PRESENT, 0);
        assert_eq!(iapc & 0b10, 0, "no 8042 advertised");
        assert_eq!(u64_at(fadt, 140), tables.blobs[1].0, "X_DSDT");
    }

    #[test]
    fn dsdt_names_serial_ports_and_virtio_slots() {
        let tables = build(1, &slots(3)).unwrap();
        let dsdt = find(&tables, b"DSDT");
        let text = String::from_utf8_lossy(dsdt);
        assert!(text.contains("COM1") && text.contains("COM2"));
        assert_eq!(text.matches("LNRO0005").count(), 3);
        assert!(text.contains("VR00") && text.contains("VR02"));
    }

    /// Disassembles the DSDT with `iasl -d` where acpica-tools is installed.
    #[test]
    fn iasl_disassembles_the_dsdt() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("skipped: iasl (acpica-tools) is not installed");
            return;
        }
        let tables = build(2, &slots(2)).unwrap();
        let dir = std::env::temp_dir().join(format!("kestrel-iasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dat = dir.join("dsdt.dat");
        std::fs::write(&dat, find(&tables, b"DSDT")).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&dat)
            .current_dir(&dir)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl failed:\n{log}");
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!log.contains("Error"), "{log}");
        assert!(dsl.contains("Device (COM1)"), "{dsl}");
        assert!(dsl.contains("\"LNRO0005\""), "{dsl}");
        assert!(dsl.contains("Memory32Fixed (ReadWrite,"), "{dsl}");
        assert!(dsl.contains("0xD0001000"), "{dsl}");
        assert!(dsl.contains("EisaId (\"PNP0501\")"), "{dsl}");
    }
}

//! The x86-64 registers as gdb sees them: the `g` packet layout, one
//! register for `p`/`P`, and the target description that names them.
//!
//! Layout (the order of [`REGISTERS`], which is also the order of the
//! target description): rax … r15, rip, eflags, cs ss ds es fs gs, st0-st7,
//! the x87 control words, xmm0-15, mxcsr (gdb's `i386:x86-64` core and
//! SSE features), then fs_base, gs_base and cr0, cr2, cr3, cr4, cr8, efer.
//! All little-endian. Writes reach the general-purpose, x87 and SSE
//! registers; segments, bases and control registers are read-only (a write
//! to them is accepted and dropped).

use crate::vcpu::RegisterSet;

/// Where a register lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Gpr(usize),
    Rip,
    Eflags,
    Segment(usize),
    St(usize),
    Fcw,
    Fsw,
    Ftag,
    Fiseg,
    Fioff,
    Foseg,
    Fooff,
    Fop,
    Xmm(usize),
    Mxcsr,
    FsBase,
    GsBase,
    Cr(usize),
    Efer,
}

/// One register: name, size in bytes, target-description type, place.
struct Register {
    name: &'static str,
    bytes: usize,
    kind: &'static str,
    place: Place,
}

const fn reg(name: &'static str, bytes: usize, kind: &'static str, place: Place) -> Register {
    Register {
        name,
        bytes,
        kind,
        place,
    }
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Every register, in gdb's numbering.
const REGISTERS: [Register; 65] = {
    use Place::*;
    const fn gpr(i: usize) -> Register {
        let kind = if i == 6 || i == 7 {
            "data_ptr"
        } else {
            "int64"
        };
        reg(GPR_NAMES[i], 8, kind, Gpr(i))
    }
    const fn st(i: usize, name: &'static str) -> Register {
        reg(name, 10, "i387_ext", St(i))
    }
    const fn xmm(i: usize, name: &'static str) -> Register {
        reg(name, 16, "vec128", Xmm(i))
    }
    [
        gpr(0),
        gpr(1),
        gpr(2),
        gpr(3),
        gpr(4),
        gpr(5),
        gpr(6),
        gpr(7),
        gpr(8),
        gpr(9),
        gpr(10),
        gpr(11),
        gpr(12),
        gpr(13),
        gpr(14),
        gpr(15),
        reg("rip", 8, "code_ptr", Rip),
        reg("eflags", 4, "int32", Eflags),
        reg("cs", 4, "int32", Segment(0)),
        reg("ss", 4, "int32", Segment(1)),
        reg("ds", 4, "int32", Segment(2)),
        reg("es", 4, "int32", Segment(3)),
        reg("fs", 4, "int32", Segment(4)),
        reg("gs", 4, "int32", Segment(5)),
        st(0, "st0"),
        st(1, "st1"),
        st(2, "st2"),
        st(3, "st3"),
        st(4, "st4"),
        st(5, "st5"),
        st(6, "st6"),
        st(7, "st7"),
        reg("fctrl", 4, "int", Fcw),
        reg("fstat", 4, "int", Fsw),
        reg("ftag", 4, "int", Ftag),
        reg("fiseg", 4, "int", Fiseg),
        reg("fioff", 4, "int", Fioff),
        reg("foseg", 4, "int", Foseg),
        reg("fooff", 4, "int", Fooff),
        reg("fop", 4, "int", Fop),
        xmm(0, "xmm0"),
        xmm(1, "xmm1"),
        xmm(2, "xmm2"),
        xmm(3, "xmm3"),
        xmm(4, "xmm4"),
        xmm(5, "xmm5"),
        xmm(6, "xmm6"),
        xmm(7, "xmm7"),
        xmm(8, "xmm8"),
        xmm(9, "xmm9"),
        xmm(10, "xmm10"),
        xmm(11, "xmm11"),
        xmm(12, "xmm12"),
        xmm(13, "xmm13"),
        xmm(14, "xmm14"),
        xmm(15, "xmm15"),
        reg("mxcsr", 4, "int", Mxcsr),
        reg("fs_base", 8, "int64", FsBase),
        reg("gs_base", 8, "int64", GsBase),
        reg("cr0", 8, "int64", Cr(0)),
        reg("cr2", 8, "int64", Cr(2)),
        reg("cr3", 8, "int64", Cr(3)),
        reg("cr4", 8, "int64", Cr(4)),
        reg("cr8", 8, "int64", Cr(8)),
        reg("efer", 8, "int64", Efer),
    ]
};

/// Indices into [`REGISTERS`] where each feature starts.
const FIRST_SSE: usize = 40;
const FIRST_SEGMENTS: usize = 57;
const FIRST_SYSTEM: usize = 59;

fn gpr(set: &RegisterSet, i: usize) -> u64 {
    let r = &set.regs;
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ][i]
}

fn gpr_mut(set: &mut RegisterSet, i: usize) -> &mut u64 {
    let r = &mut set.regs;
    match i {
        0 => &mut r.rax,
        1 => &mut r.rbx,
        2 => &mut r.rcx,
        3 => &mut r.rdx,
        4 => &mut r.rsi,
        5 => &mut r.rdi,
        6 => &mut r.rbp,
        7 => &mut r.rsp,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    }
}

/// The x87 tag word gdb shows (two bits per register, 11 = empty) from
/// FXSAVE's abridged one (one bit per register, 1 = in use); a used
/// register is shown as valid (00).
fn full_tag(abridged: u8) -> u32 {
    (0..8).fold(0, |tag, i| {
        if abridged & (1 << i) == 0 {
            tag | (3 << (2 * i))
        } else {
            tag
        }
    })
}

fn abridged_tag(full: u32) -> u8 {
    (0..8).fold(0, |tag, i| {
        if (full >> (2 * i)) & 3 == 3 {
            tag
        } else {
            tag | (1 << i)
        }
    })
}

fn value(set: &RegisterSet, place: Place) -> Vec<u8> {
    let s = &set.sregs;
    let f = &set.fpu;
    let segs = [s.cs, s.ss, s.ds, s.es, s.fs, s.gs];
    let u32le = |v: u32| v.to_le_bytes().to_vec();
    let u64le = |v: u64| v.to_le_bytes().to_vec();
    match place {
        Place::Gpr(i) => u64le(gpr(set, i)),
        Place::Rip => u64le(set.regs.rip),
        Place::Eflags => u32le(set.regs.rflags as u32),
        Place::Segment(i) => u32le(u32::from(segs[i].selector)),
        Place::St(i) => f.fpr[i][..10].to_vec(),
        Place::Fcw => u32le(u32::from(f.fcw)),
        Place::Fsw => u32le(u32::from(f.fsw)),
        Place::Ftag => u32le(full_tag(f.ftwx)),
        Place::Fiseg | Place::Foseg => u32le(0),
        Place::Fioff => u32le(f.last_ip as u32),
        Place::Fooff => u32le(f.last_dp as u32),
        Place::Fop => u32le(u32::from(f.last_opcode)),
        Place::Xmm(i) => f.xmm[i].to_vec(),
        Place::Mxcsr => u32le(f.mxcsr),
        Place::FsBase => u64le(s.fs.base),
        Place::GsBase => u64le(s.gs.base),
        Place::Cr(n) => u64le(match n {
            0 => s.cr0,
            2 => s.cr2,
            3 => s.cr3,
            4 => s.cr4,
            _ => s.cr8,
        }),
        Place::Efer => u64le(s.efer),
    }
}

/// Writes `bytes` (exactly the register's size) into `set`.
fn store(set: &mut RegisterSet, place: Place, bytes: &[u8]) {
    let mut b8 = [0u8; 8];
    b8[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    let v64 = u64::from_le_bytes(b8);
    let v32 = v64 as u32;
    let f = &mut set.fpu;
    match place {
        Place::Gpr(i) => *gpr_mut(set, i) = v64,
        Place::Rip => set.regs.rip = v64,
        // The upper half of RFLAGS is reserved (zero).
        Place::Eflags => set.regs.rflags = u64::from(v32),
        Place::St(i) => f.fpr[i][..10].copy_from_slice(bytes),
        Place::Fcw => f.fcw = v32 as u16,
        Place::Fsw => f.fsw = v32 as u16,
        Place::Ftag => f.ftwx = abridged_tag(v32),
        Place::Fioff => f.last_ip = v64,
        Place::Fooff => f.last_dp = v64,
        Place::Fop => f.last_opcode = v32 as u16,
        Place::Xmm(i) => f.xmm[i].copy_from_slice(bytes),
        Place::Mxcsr => f.mxcsr = v32,
        Place::Segment(_)
        | Place::Fiseg
        | Place::Foseg
        | Place::FsBase
        | Place::GsBase
        | Place::Cr(_)
        | Place::Efer => {}
    }
}

/// The `g` reply: every register, in order.
pub fn read_all(set: &RegisterSet) -> Vec<u8> {
    REGISTERS.iter().flat_map(|r| value(set, r.place)).collect()
}

/// Applies a `G` packet's bytes. A shorter packet sets the registers it
/// covers completely (gdb may send fewer); a longer one is refused.
pub fn write_all(set: &mut RegisterSet, bytes: &[u8]) -> Result<(), ()> {
    let total: usize = REGISTERS.iter().map(|r| r.bytes).sum();
    if bytes.len() > total {
        return Err(());
    }
    let mut at = 0;
    for r in &REGISTERS {
        let Some(chunk) = bytes.get(at..at + r.bytes) else {
            break;
        };
        store(set, r.place, chunk);
        at += r.bytes;
    }
    Ok(())
}

/// Register `n` (`p`), or None for a number gdb was not given.
pub fn read_one(set: &RegisterSet, n: usize) -> Option<Vec<u8>> {
    REGISTERS.get(n).map(|r| value(set, r.place))
}

/// Sets register `n` (`P`); `Err` for an unknown number or a wrong size.
pub fn write_one(set: &mut RegisterSet, n: usize, bytes: &[u8]) -> Result<(), ()> {
    match REGISTERS.get(n) {
        Some(r) if r.bytes == bytes.len() => {
            store(set, r.place, bytes);
            Ok(())
        }
        _ => Err(()),
    }
}

/// The target description (`qXfer:features:read:target.xml`).
pub fn target_xml() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n\
         <target version=\"1.0\">\n<architecture>i386:x86-64</architecture>\n\
         <feature name=\"org.gnu.gdb.i386.core\">\n",
    );
    for (n, r) in REGISTERS.iter().enumerate() {
        match n {
            FIRST_SSE => x.push_str(
                "</feature>\n<feature name=\"org.gnu.gdb.i386.sse\">\n\
                 <vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/>\n\
                 <vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/>\n\
                 <vector id=\"v16i8\" type=\"int8\" count=\"16\"/>\n\
                 <vector id=\"v8i16\" type=\"int16\" count=\"8\"/>\n\
                 <vector id=\"v4i32\" type=\"int32\" count=\"4\"/>\n\
                 <vector id=\"v2i64\" type=\"int64\" count=\"2\"/>\n\
                 <union id=\"vec128\"><field name=\"v4_float\" type=\"v4f\"/>\
                 <field name=\"v2_double\" type=\"v2d\"/><field name=\"v16_int8\" type=\"v16i8\"/>\
                 <field name=\"v8_int16\" type=\"v8i16\"/><field name=\"v4_int32\" type=\"v4i32\"/>\
                 <field name=\"v2_int64\" type=\"v2i64\"/><field name=\"uint128\" type=\"uint128\"/>\
                 </union>\n",
            ),
            FIRST_SEGMENTS => {
                x.push_str("</feature>\n<feature name=\"org.gnu.gdb.i386.segments\">\n");
            }
            FIRST_SYSTEM => x.push_str("</feature>\n<feature name=\"org.kestrel.x86.system\">\n"),
            _ => {}
        }
        x.push_str(&format!(
            "<reg name=\"{}\" bitsize=\"{}\" type=\"{}\" regnum=\"{n}\"/>\n",
            r.name,
            r.bytes * 8,
            r.kind
        ));
    }
    x.push_str("</feature>\n</target>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register number of RIP.
    const RIP: usize = 16;

    fn sample() -> RegisterSet {
        let mut set = RegisterSet::default();
        for i in 0..16 {
            *gpr_mut(&mut set, i) = 0x1111_0000_0000_0000 + i as u64;
        }
        set.regs.rip = 0xffff_ffff_8100_1234;
        set.regs.rflags = 0x246;
        set.sregs.cs.selector = 0x10;
        set.sregs.cr3 = 0x1000;
        set.sregs.gs.base = 0xffff_8880_0000_0000;
        set.fpu.fcw = 0x37f;
        set.fpu.mxcsr = 0x1f80;
        set.fpu.xmm[3] = [7; 16];
        set.fpu.fpr[2][..10].copy_from_slice(&[9; 10]);
        set
    }

    #[test]
    fn the_g_layout_is_gdbs_amd64_order() {
        let g = read_all(&sample());
        assert_eq!(
            g.len(),
            16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 8 * 8
        );
        assert_eq!(&g[0..8], &0x1111_0000_0000_0000u64.to_le_bytes());
        assert_eq!(&g[7 * 8..8 * 8], &0x1111_0000_0000_0007u64.to_le_bytes());
        assert_eq!(&g[128..136], &0xffff_ffff_8100_1234u64.to_le_bytes());
        assert_eq!(&g[136..140], &0x246u32.to_le_bytes());
        assert_eq!(&g[140..144], &0x10u32.to_le_bytes());
        // st2 after 24 bytes of selectors and two st registers.
        let st2 = 164 + 2 * 10;
        assert_eq!(&g[st2..st2 + 10], &[9; 10]);
        assert_eq!(
            read_one(&sample(), RIP).unwrap(),
            0xffff_ffff_8100_1234u64.to_le_bytes()
        );
        assert_eq!(read_one(&sample(), 32).unwrap(), 0x37fu32.to_le_bytes());
        assert_eq!(read_one(&sample(), 43).unwrap(), [7; 16]);
        assert_eq!(read_one(&sample(), 56).unwrap(), 0x1f80u32.to_le_bytes());
        assert_eq!(
            read_one(&sample(), 58).unwrap(),
            0xffff_8880_0000_0000u64.to_le_bytes()
        );
        assert_eq!(read_one(&sample(), 61).unwrap(), 0x1000u64.to_le_bytes());
        assert_eq!(read_one(&sample(), REGISTERS.len()), None);
    }

    #[test]
    fn g_then_big_g_round_trips_the_writable_registers() {
        let set = sample();
        let mut other = RegisterSet::default();
        write_all(&mut other, &read_all(&set)).unwrap();
        assert_eq!(other.regs, set.regs);
        assert_eq!(other.fpu.xmm, set.fpu.xmm);
        assert_eq!((other.fpu.fcw, other.fpu.mxcsr), (0x37f, 0x1f80));
        // Segments and control registers are read-only.
        assert_eq!(other.sregs.cr3, 0);
        let mut too_long = read_all(&set);
        too_long.push(0);
        assert!(write_all(&mut other, &too_long).is_err());
    }

    #[test]
    fn p_writes_one_register_of_the_right_size() {
        let mut set = sample();
        write_one(&mut set, RIP, &0x1234u64.to_le_bytes()).unwrap();
        assert_eq!(set.regs.rip, 0x1234);
        write_one(&mut set, 1, &5u64.to_le_bytes()).unwrap();
        assert_eq!(set.regs.rbx, 5);
        write_one(&mut set, 17, &0x202u32.to_le_bytes()).unwrap();
        assert_eq!(set.regs.rflags, 0x202);
        assert!(write_one(&mut set, RIP, &[1, 2, 3]).is_err());
        assert!(write_one(&mut set, 500, &[0; 8]).is_err());
    }

    #[test]
    fn tag_words_convert_both_ways() {
        assert_eq!(full_tag(0), 0xffff);
        assert_eq!(full_tag(0xff), 0);
        assert_eq!(full_tag(0b1), 0xfffc);
        for t in [0u8, 1, 0x80, 0xa5, 0xff] {
            assert_eq!(abridged_tag(full_tag(t)), t);
        }
    }

    #[test]
    fn the_target_description_names_every_register_in_order() {
        let xml = target_xml();
        assert!(xml.contains("<architecture>i386:x86-64</architecture>"));
        let mut at = 0;
        for (n, r) in REGISTERS.iter().enumerate() {
            let tag = format!("<reg name=\"{}\" bitsize=\"{}\"", r.name, r.bytes * 8);
            let found = xml[at..]
                .find(&tag)
                .unwrap_or_else(|| panic!("{} missing", r.name));
            at += found;
            assert!(xml[at..].contains(&format!("regnum=\"{n}\"")));
        }
        assert_eq!(xml.matches("<feature").count(), 4);
        assert_eq!(xml.matches("</feature>").count(), 4);
    }
}

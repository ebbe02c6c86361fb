//! XSAVE state as the guest sees it: CPUID leaf 0xD made self-consistent,
//! and the XCR0 that goes with it.
//!
//! Linux sizes its FPU buffers from leaf 0xD and cross-checks the result
//! ("XSAVE consistency problem"; 7.x kernels then crash in
//! `fpstate_reset`). KVM rewrites 0xD.0 EBX (and 0xD.1 EBX) at run time
//! from *its* idea of the guest's XCR0, which it learns by intercepting
//! `XSETBV`. Under the nested rig (L1 = QEMU TCG with emulated SVM) that
//! intercept never reaches L1's KVM, so KVM keeps XCR0 = x87 and reports
//! 576 bytes while the guest enabled AVX (832). See runner/NOTES.md.
//!
//! The fix is in two parts: [`sanitize`] keeps only state components that
//! leaf 0xD fully describes (and the CPU features that need them), with the
//! sizes recomputed; [`Sanitized::xcr0`] is every user component left,
//! which is exactly what Linux writes to XCR0. The VMM sets that XCR0 with
//! `KVM_SET_XCRS` before the first run, so KVM's run-time sizes agree with
//! the guest whether or not its `XSETBV` traps.
//!
//! Invariants after [`sanitize`]: every bit of 0xD.0 EDX:EAX above SSE has
//! a sub-leaf with a non-zero size at an offset past the legacy area and
//! header, and its whole feature group; 0xD.0 EBX = ECX = the end of the
//! last enabled component; XSAVES is offered only with a supervisor mask
//! whose components are all described as supervisor components.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID leaf with the XSAVE feature bit (ECX bit 26) and AVX bits.
const LEAF_FEATURES: u32 = 0x1;
/// Structured extended features (AVX2, AVX-512, PKU, AMX).
const LEAF_EXT_FEATURES: u32 = 0x7;
/// The XSAVE leaf.
const LEAF_XSAVE: u32 = 0xd;

const ECX_XSAVE: u32 = 1 << 26;

/// Legacy FXSAVE area (512) plus the XSAVE header (64).
pub const LEGACY_AND_HEADER: u32 = 576;

/// x87 and SSE live in the legacy area: always present with XSAVE.
const XCR0_LEGACY: u64 = 0b11;
/// Components that come only in whole groups, with what each group needs.
const GROUPS: &[(u64, u64)] = &[
    // AVX (YMM upper halves) needs SSE.
    (1 << 2, 1 << 1),
    // MPX bounds registers and configuration.
    ((1 << 3) | (1 << 4), 0),
    // AVX-512: opmask, ZMM_Hi256, Hi16_ZMM; needs AVX.
    ((1 << 5) | (1 << 6) | (1 << 7), 1 << 2),
    // PKRU.
    (1 << 9, 0),
    // AMX tile configuration and data.
    ((1 << 17) | (1 << 18), 0),
];

/// 0xD.1 EAX bits.
const XSAVEC: u32 = 1 << 1;
const XSAVES: u32 = 1 << 3;
/// 0xD.n ECX bit 0: a supervisor (XSS) component; bit 1: 64-byte aligned
/// when compacted.
const SUB_SUPERVISOR: u32 = 1 << 0;
const SUB_ALIGN64: u32 = 1 << 1;

/// CPU feature bits that need a state component: (component mask,
/// leaf, sub-leaf, register index 0=EAX..3=EDX, bits).
const NEEDS_STATE: &[(u64, u32, u32, usize, u32)] = &[
    // AVX, FMA, F16C.
    (
        1 << 2,
        LEAF_FEATURES,
        0,
        2,
        (1 << 28) | (1 << 12) | (1 << 29),
    ),
    // AVX2.
    (1 << 2, LEAF_EXT_FEATURES, 0, 1, 1 << 5),
    // VAES, VPCLMULQDQ.
    (1 << 2, LEAF_EXT_FEATURES, 0, 2, (1 << 9) | (1 << 10)),
    // AVX-VNNI.
    (1 << 2, LEAF_EXT_FEATURES, 1, 0, 1 << 4),
    // MPX.
    ((1 << 3) | (1 << 4), LEAF_EXT_FEATURES, 0, 1, 1 << 14),
    // AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
    (
        (1 << 5) | (1 << 6) | (1 << 7),
        LEAF_EXT_FEATURES,
        0,
        1,
        (1 << 16)
            | (1 << 17)
            | (1 << 21)
            | (1 << 26)
            | (1 << 27)
            | (1 << 28)
            | (1 << 30)
            | (1 << 31),
    ),
    // AVX-512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ.
    (
        (1 << 5) | (1 << 6) | (1 << 7),
        LEAF_EXT_FEATURES,
        0,
        2,
        (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14),
    ),
    // AVX-512 4VNNIW, 4FMAPS, VP2INTERSECT, FP16.
    (
        (1 << 5) | (1 << 6) | (1 << 7),
        LEAF_EXT_FEATURES,
        0,
        3,
        (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23),
    ),
    // AVX-512 BF16.
    (
        (1 << 5) | (1 << 6) | (1 << 7),
        LEAF_EXT_FEATURES,
        1,
        0,
        1 << 5,
    ),
    // PKU, OSPKE.
    (1 << 9, LEAF_EXT_FEATURES, 0, 2, (1 << 3) | (1 << 4)),
    // AMX-BF16, AMX-TILE, AMX-INT8.
    (
        (1 << 17) | (1 << 18),
        LEAF_EXT_FEATURES,
        0,
        3,
        (1 << 22) | (1 << 24) | (1 << 25),
    ),
];

/// What [`sanitize`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sanitized {
    /// The XCR0 Linux will program: every user component offered.
    pub xcr0: u64,
    /// User components dropped because leaf 0xD did not describe them.
    pub dropped: u64,
    /// Whether XSAVES (and the supervisor mask) was withdrawn.
    pub dropped_xsaves: bool,
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<usize> {
    entries
        .iter()
        .position(|e| e.function == function && e.index == index)
}

fn reg(e: &mut kvm_cpuid_entry2, i: usize) -> &mut u32 {
    match i {
        0 => &mut e.eax,
        1 => &mut e.ebx,
        2 => &mut e.ecx,
        _ => &mut e.edx,
    }
}

/// Sub-leaf `n` as (size, offset, flags), if present and non-empty.
fn component(entries: &[kvm_cpuid_entry2], n: u32) -> Option<(u32, u32, u32)> {
    let e = &entries[find(entries, LEAF_XSAVE, n)?];
    (e.eax != 0).then_some((e.eax, e.ebx, e.ecx))
}

/// Makes leaf 0xD consistent in place (see the module docs). `None` when
/// the CPU offers no XSAVE: then there is nothing to fix and no XCR0 to set.
pub fn sanitize(cpuid: &mut CpuId) -> Option<Sanitized> {
    sanitize_entries(cpuid.as_mut_slice())
}

/// [`sanitize`] on a plain slice (for tests).
pub fn sanitize_entries(entries: &mut [kvm_cpuid_entry2]) -> Option<Sanitized> {
    let f1 = find(entries, LEAF_FEATURES, 0)?;
    if entries[f1].ecx & ECX_XSAVE == 0 {
        return None;
    }
    let d0 = find(entries, LEAF_XSAVE, 0)?;
    let offered = u64::from(entries[d0].eax) | (u64::from(entries[d0].edx) << 32);

    // User components with a plausible description.
    let mut kept = offered & XCR0_LEGACY;
    for n in 2..64u32 {
        let bit = 1u64 << n;
        if offered & bit == 0 {
            continue;
        }
        match component(entries, n) {
            Some((_, offset, flags))
                if flags & SUB_SUPERVISOR == 0 && offset >= LEGACY_AND_HEADER =>
            {
                kept |= bit
            }
            _ => {}
        }
    }
    // Whole groups only, and only with what they build on.
    loop {
        let before = kept;
        for &(group, needs) in GROUPS {
            if kept & group != 0 && (kept & group != group || kept & needs != needs) {
                kept &= !group;
            }
        }
        if kept == before {
            break;
        }
    }
    let dropped = offered & !kept & !XCR0_LEGACY;

    let end = |mask: u64| {
        (2..64u32)
            .filter(|n| mask & (1 << n) != 0)
            .filter_map(|n| component(entries, n))
            .map(|(size, offset, _)| offset + size)
            .fold(LEGACY_AND_HEADER, u32::max)
    };
    let size = end(kept);
    let e = &mut entries[d0];
    (e.eax, e.edx) = (kept as u32, (kept >> 32) as u32);
    (e.ebx, e.ecx) = (size, size);

    // XSAVES: its supervisor components must be described as such.
    let mut dropped_xsaves = false;
    let mut supervisor = 0u64;
    if let Some(d1) = find(entries, LEAF_XSAVE, 1) {
        let xss = u64::from(entries[d1].ecx) | (u64::from(entries[d1].edx) << 32);
        let consistent = (0..64u32).filter(|n| xss & (1 << n) != 0).all(|n| {
            n >= 2 && component(entries, n).is_some_and(|(_, _, flags)| flags & SUB_SUPERVISOR != 0)
        });
        let e = &mut entries[d1];
        if e.eax & XSAVES != 0 && !consistent {
            e.eax &= !XSAVES;
            dropped_xsaves = true;
        }
        if e.eax & XSAVES != 0 {
            supervisor = xss;
        } else {
            (e.ecx, e.edx) = (0, 0);
        }
        let compacted = e.eax & (XSAVEC | XSAVES) != 0;
        let size = compacted_size(entries, kept | supervisor);
        entries[d1].ebx = if compacted { size } else { 0 };
    }

    // Sub-leaves of dropped components, and the features that need them.
    for n in 2..64u32 {
        let bit = 1u64 << n;
        if (dropped & bit != 0) || (offered & bit == 0 && supervisor & bit == 0) {
            if let Some(i) = find(entries, LEAF_XSAVE, n) {
                let e = &mut entries[i];
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
        }
    }
    for &(mask, function, index, r, bits) in NEEDS_STATE {
        if kept & mask != mask {
            if let Some(i) = find(entries, function, index) {
                *reg(&mut entries[i], r) &= !bits;
            }
        }
    }
    Some(Sanitized {
        xcr0: kept,
        dropped,
        dropped_xsaves,
    })
}

/// The compacted-format size for `mask` (0xD.1 EBX when XSAVEC/XSAVES).
fn compacted_size(entries: &[kvm_cpuid_entry2], mask: u64) -> u32 {
    let mut size = LEGACY_AND_HEADER;
    for n in 2..64u32 {
        if mask & (1 << n) == 0 {
            continue;
        }
        if let Some((len, _, flags)) = component(entries, n) {
            if flags & SUB_ALIGN64 != 0 {
                size = size.next_multiple_of(64);
            }
            size += len;
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if matches!(function, 0x7 | 0xd) { 1 } else { 0 },
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn get(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        entries[find(entries, function, index).unwrap()]
    }

    /// Captured in the nested rig (L1 = QEMU TCG `-cpu EPYC,+svm,+npt`,
    /// Debian 6.1 L1 kernel): leaves 1, 7 and 0xD of
    /// `KVM_GET_SUPPORTED_CPUID`, with 0xD.0 EBX as the Debian 6.1 guest
    /// then read it ("XSAVE consistency problem: size 832 != kernel_size
    /// 576": KVM sized it for XCR0 = x87 while the guest had enabled AVX).
    fn captured_rig() -> Vec<kvm_cpuid_entry2> {
        vec![
            e(0x1, 0, 0x0080_0f12, 0x0102_0800, 0x76f8_3203, 0x078b_fbfd),
            e(0x7, 0, 0, 0x0098_01ab, 0, 0x2000_0000),
            e(0xd, 0, 0x7, 0x240, 0x340, 0),
            e(0xd, 1, 0x5, 0, 0, 0),
            e(0xd, 2, 0x100, 0x240, 0, 0),
        ]
    }

    #[test]
    fn captured_rig_leaves_become_consistent_and_keep_avx() {
        let mut leaves = captured_rig();
        let s = sanitize_entries(&mut leaves).unwrap();
        assert_eq!(
            s,
            Sanitized {
                xcr0: 0x7,
                dropped: 0,
                dropped_xsaves: false
            }
        );
        let d0 = get(&leaves, 0xd, 0);
        assert_eq!((d0.eax, d0.ebx, d0.ecx, d0.edx), (0x7, 832, 832, 0));
        // Neither XSAVEC nor XSAVES: no compacted size.
        assert_eq!(get(&leaves, 0xd, 1).ebx, 0);
        assert_eq!(get(&leaves, 0x1, 0).ecx & (1 << 28), 1 << 28, "AVX kept");
        assert_eq!(get(&leaves, 0x7, 0).ebx & (1 << 5), 1 << 5, "AVX2 kept");
    }

    #[test]
    fn an_undescribed_component_is_dropped_with_its_features() {
        let mut leaves = captured_rig();
        // AVX offered, its sub-leaf empty.
        leaves[4] = e(0xd, 2, 0, 0, 0, 0);
        let s = sanitize_entries(&mut leaves).unwrap();
        assert_eq!((s.xcr0, s.dropped), (0x3, 0x4));
        let d0 = get(&leaves, 0xd, 0);
        assert_eq!((d0.eax, d0.ebx, d0.ecx), (0x3, 576, 576));
        let f1 = get(&leaves, 0x1, 0);
        assert_eq!(
            f1.ecx & ((1 << 28) | (1 << 12) | (1 << 29)),
            0,
            "AVX/FMA/F16C"
        );
        assert_eq!(f1.ecx & ECX_XSAVE, ECX_XSAVE, "XSAVE itself stays");
        assert_eq!(get(&leaves, 0x7, 0).ebx & (1 << 5), 0, "AVX2");
    }

    #[test]
    fn partial_groups_and_missing_prerequisites_are_dropped() {
        // AVX-512 with Hi16_ZMM missing; PKRU fine.
        let mut leaves = vec![
            e(0x1, 0, 0, 0, ECX_XSAVE | (1 << 28), 0),
            e(0x7, 0, 0, (1 << 16) | (1 << 5), 1 << 3, 0),
            e(0xd, 0, 0x2e7, 0, 0, 0),
            e(0xd, 1, 0x1, 0, 0, 0),
            e(0xd, 2, 256, 576, 0, 0),
            e(0xd, 5, 64, 1088, 0, 0),
            e(0xd, 6, 512, 1152, 0, 0),
            e(0xd, 9, 8, 2688, 0, 0),
        ];
        let s = sanitize_entries(&mut leaves).unwrap();
        assert_eq!(s.xcr0, 0x207);
        assert_eq!(s.dropped, 0xe0);
        let d0 = get(&leaves, 0xd, 0);
        assert_eq!((d0.eax, d0.ebx, d0.ecx), (0x207, 2696, 2696));
        assert_eq!(get(&leaves, 0xd, 5).eax, 0, "dropped sub-leaf cleared");
        let f7 = get(&leaves, 0x7, 0);
        assert_eq!(f7.ebx, 1 << 5, "AVX512F gone, AVX2 kept");
        assert_eq!(f7.ecx, 1 << 3, "PKU kept");

        // AVX-512 complete but AVX missing: the whole chain goes.
        let mut leaves = vec![
            e(0x1, 0, 0, 0, ECX_XSAVE, 0),
            e(0xd, 0, 0xe3, 0, 0, 0),
            e(0xd, 5, 64, 1088, 0, 0),
            e(0xd, 6, 512, 1152, 0, 0),
            e(0xd, 7, 1024, 1664, 0, 0),
        ];
        assert_eq!(sanitize_entries(&mut leaves).unwrap().xcr0, 0x3);
    }

    #[test]
    fn xsaves_needs_described_supervisor_components() {
        let mut leaves = vec![
            e(0x1, 0, 0, 0, ECX_XSAVE, 0),
            e(0xd, 0, 0x7, 832, 832, 0),
            // XSAVEOPT, XSAVEC, XGETBV1, XSAVES; XSS = CET_U (bit 11).
            e(0xd, 1, 0xf, 0, 1 << 11, 0),
            e(0xd, 2, 256, 576, 0, 0),
            // CET_U described as a *user* component: inconsistent.
            e(0xd, 11, 16, 0, 0, 0),
        ];
        let s = sanitize_entries(&mut leaves).unwrap();
        assert!(s.dropped_xsaves);
        let d1 = get(&leaves, 0xd, 1);
        assert_eq!((d1.eax, d1.ecx, d1.edx), (0x7, 0, 0));
        // XSAVEC remains: compacted size of x87|SSE|AVX.
        assert_eq!(d1.ebx, 832);
        assert_eq!(get(&leaves, 0xd, 11).eax, 0);

        // Described correctly: XSAVES stays, the compacted size counts it.
        let mut leaves = vec![
            e(0x1, 0, 0, 0, ECX_XSAVE, 0),
            e(0xd, 0, 0x7, 832, 832, 0),
            e(0xd, 1, 0xf, 0, 1 << 11, 0),
            e(0xd, 2, 256, 576, 0, 0),
            e(0xd, 11, 16, 0, SUB_SUPERVISOR, 0),
        ];
        let s = sanitize_entries(&mut leaves).unwrap();
        assert!(!s.dropped_xsaves);
        assert_eq!(s.xcr0, 0x7, "supervisor state never goes into XCR0");
        assert_eq!(get(&leaves, 0xd, 1).ebx, 832 + 16);
    }

    #[test]
    fn no_xsave_means_nothing_to_do() {
        let mut leaves = vec![e(0x1, 0, 0, 0, 0, 0), e(0xd, 0, 0x7, 0, 0, 0)];
        assert_eq!(sanitize_entries(&mut leaves), None);
        assert_eq!(leaves[1].eax, 0x7);
        assert_eq!(sanitize_entries(&mut [e(0x1, 0, 0, 0, ECX_XSAVE, 0)]), None);
    }
}

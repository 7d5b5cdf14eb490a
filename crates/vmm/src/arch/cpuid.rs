//! The CPUID a guest sees: KVM's supported set, per-vCPU topology, and a CPU profile.
//!
//! On a host without hardware virtualization (a software nested KVM), guest ring-0 code
//! goes through KVM's instruction emulator, which lacks some instructions (cmpxchg16b,
//! xsave/xrstor, popcnt, SSE4, AES, ...). A guest kernel that sees those features uses them
//! and dies with an emulation failure. The `Emulator` profile hides them, so a stock kernel
//! boots with no special command line. The profile lives here, in the VMM, not in the
//! user's kernel command line.
//!
//! Caveat, measured on this project's PVM hosts with a ring-0 CPUID probe guest: that KVM
//! ignores KVM_SET_CPUID2 for most of these bits (leaf 1 ECX, leaf 7, leaf 0xD come back
//! as the host has them); only CX16 is really hidden. What the guest then uses anyway is
//! emulated in `exits.rs` where that needs registers only (clac/stac, popcnt,
//! fsgsbase, serialize, fwait); XSAVE and SSSE3 still need `noxsave clearcpuid=ssse3` on
//! the kernel command line there (docs/linux-guests.md). KVM's own paravirtual leaf
//! (0x4000_0001) is honoured: the profile hides the features that need hypercalls, which
//! never complete in that emulator.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Which CPU features a guest may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CpuProfile {
    /// Everything KVM supports.
    Host,
    /// Hide what KVM's instruction emulator cannot run (for hosts without VT-x/AMD-V).
    Emulator,
}

impl CpuProfile {
    /// `Emulator` when the host CPU lacks hardware virtualization flags, else `Host`.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw_virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hw_virt {
            CpuProfile::Host
        } else {
            CpuProfile::Emulator
        }
    }
}

// Leaf 1 ECX.
const ECX1_PCLMULQDQ: u32 = 1 << 1;
const ECX1_SSSE3: u32 = 1 << 9;
const ECX1_FMA: u32 = 1 << 12;
const ECX1_CX16: u32 = 1 << 13;
const ECX1_PCID: u32 = 1 << 17;
const ECX1_SSE41: u32 = 1 << 19;
const ECX1_SSE42: u32 = 1 << 20;
const ECX1_MOVBE: u32 = 1 << 22;
const ECX1_POPCNT: u32 = 1 << 23;
const ECX1_AES: u32 = 1 << 25;
const ECX1_XSAVE: u32 = 1 << 26;
const ECX1_OSXSAVE: u32 = 1 << 27;
const ECX1_AVX: u32 = 1 << 28;
const ECX1_F16C: u32 = 1 << 29;
const ECX1_RDRAND: u32 = 1 << 30;
const ECX1_HYPERVISOR: u32 = 1 << 31;
// Leaf 7 EBX.
const EBX7_FSGSBASE: u32 = 1;
const EBX7_BMI1: u32 = 1 << 3;
const EBX7_AVX2: u32 = 1 << 5;
const EBX7_BMI2: u32 = 1 << 8;
const EBX7_INVPCID: u32 = 1 << 10;
const EBX7_RDSEED: u32 = 1 << 18;
const EBX7_ADX: u32 = 1 << 19;
const EBX7_SMAP: u32 = 1 << 20;
const EBX7_AVX512_MASK: u32 = 0xfc23_0000;
// Leaf 0x8000_0001 ECX.
const ECX81_ABM: u32 = 1 << 5;
// KVM's paravirtual feature leaf, EAX: the features a guest uses through hypercalls.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;
const KVM_FEATURE_HC_MAP_GPA_RANGE: u32 = 1 << 16;
/// Paravirtual features whose only interface is a hypercall (`vmcall`/`vmmcall`), which
/// never completes in the instruction emulator of hosts without VT-x/AMD-V: the vCPU
/// spins inside KVM at the `vmcall` forever (docs/linux-guests.md, "Two vCPUs").
const KVM_HYPERCALL_FEATURES: u32 = KVM_FEATURE_PV_UNHALT
    | KVM_FEATURE_PV_SEND_IPI
    | KVM_FEATURE_PV_SCHED_YIELD
    | KVM_FEATURE_HC_MAP_GPA_RANGE;

/// Adjust KVM's supported CPUID for vCPU `index` of `count` under `profile`.
pub fn for_vcpu(supported: &CpuId, index: u32, count: u32, profile: CpuProfile) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice().iter_mut() {
        adjust(entry, index, count, profile);
    }
    cpuid
}

fn adjust(e: &mut kvm_cpuid_entry2, index: u32, count: u32, profile: CpuProfile) {
    match e.function {
        1 => {
            // Initial APIC id and logical processor count.
            e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | ((count.min(255)) << 16);
            e.ecx |= ECX1_HYPERVISOR;
            if profile == CpuProfile::Emulator {
                e.ecx &= !(ECX1_PCLMULQDQ
                    | ECX1_SSSE3
                    | ECX1_FMA
                    | ECX1_CX16
                    | ECX1_PCID
                    | ECX1_SSE41
                    | ECX1_SSE42
                    | ECX1_MOVBE
                    | ECX1_POPCNT
                    | ECX1_AES
                    | ECX1_XSAVE
                    | ECX1_OSXSAVE
                    | ECX1_AVX
                    | ECX1_F16C
                    | ECX1_RDRAND);
            }
        }
        7 if e.index == 0 && profile == CpuProfile::Emulator => {
            e.ebx &= !(EBX7_FSGSBASE
                | EBX7_BMI1
                | EBX7_AVX2
                | EBX7_BMI2
                | EBX7_INVPCID
                | EBX7_RDSEED
                | EBX7_ADX
                | EBX7_SMAP
                | EBX7_AVX512_MASK);
            e.ecx = 0;
            e.edx = 0;
        }
        0xb | 0x1f => e.edx = index,
        0xd if profile == CpuProfile::Emulator => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0x8000_0001 if profile == CpuProfile::Emulator => e.ecx &= !ECX81_ABM,
        KVM_CPUID_FEATURES if profile == CpuProfile::Emulator => e.eax &= !KVM_HYPERCALL_FEATURES,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn emulator_profile_hides_cx16_and_xsave_and_sets_apic_id() {
        let supported = CpuId::from_entries(&[leaf(1, 0xffff_ffff), leaf(7, 0)]).unwrap();
        let c = for_vcpu(&supported, 3, 4, CpuProfile::Emulator);
        let l1 = c.as_slice()[0];
        assert_eq!(l1.ecx & ECX1_CX16, 0);
        assert_eq!(l1.ecx & ECX1_XSAVE, 0);
        assert_ne!(l1.ecx & ECX1_HYPERVISOR, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!(c.as_slice()[1].ebx & EBX7_SMAP, 0);
        let h = for_vcpu(&supported, 0, 1, CpuProfile::Host);
        assert_ne!(h.as_slice()[0].ecx & ECX1_CX16, 0);
    }

    #[test]
    fn emulator_profile_hides_hypercall_features_only() {
        let kvm_leaf = kvm_cpuid_entry2 {
            function: KVM_CPUID_FEATURES,
            eax: 0x0101_7aff,
            ..Default::default()
        };
        let supported = CpuId::from_entries(&[kvm_leaf]).unwrap();
        let e = for_vcpu(&supported, 0, 2, CpuProfile::Emulator).as_slice()[0];
        assert_eq!(e.eax & KVM_FEATURE_PV_SEND_IPI, 0);
        assert_eq!(e.eax & KVM_FEATURE_PV_SCHED_YIELD, 0);
        assert_eq!(e.eax & KVM_FEATURE_PV_UNHALT, 0);
        assert_eq!(e.eax & KVM_FEATURE_HC_MAP_GPA_RANGE, 0);
        // kvm-clock (bits 0 and 3), async PF, steal time, PV EOI and TLB flush stay.
        assert_eq!(e.eax, 0x0101_7aff & !KVM_HYPERCALL_FEATURES);
        assert_ne!(e.eax & 0b1001, 0);
        let h = for_vcpu(&supported, 0, 2, CpuProfile::Host).as_slice()[0];
        assert_eq!(h.eax, 0x0101_7aff);
    }
}

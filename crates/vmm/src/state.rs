//! The complete state of a VM as plain serializable data, and how to capture and restore it.
//!
//! The order of KVM calls matters, in both directions; each step says why at its call site.
//! The references are Firecracker's `arch/x86_64/vcpu.rs` and Cloud Hypervisor's
//! `hypervisor/src/kvm/mod.rs`, which learned these rules the hard way.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use crate::arch::cpuid::CpuProfile;
use crate::arch::regs::msr;
use crate::error::{kvm_err, VmmError};

/// Version of the encoding of [`VmState`]; bumped on any change to these structs.
pub const STATE_VERSION: u32 = 1;

/// One vCPU's architectural state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// Multiprocessing state (runnable, halted, waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// x87/SSE/AVX state (the 4 KiB legacy XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Model-specific registers: (index, value), TSC before TSC_DEADLINE.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// The TSC frequency the vCPU ran at (kHz), if KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// State that belongs to the VM rather than to a vCPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmLevelState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// A device's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device's state id (e.g. "serial0").
    pub id: String,
    /// Its encoded state.
    pub bytes: Vec<u8>,
}

/// The shape both sides must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPUs.
    pub cpus: u32,
    /// CPU profile.
    pub cpu_profile: CpuProfile,
}

impl VmShape {
    /// How `other` differs from `self`, in words, or `None` when equal.
    pub fn diff(&self, other: &VmShape) -> Option<String> {
        let mut d = Vec::new();
        if self.memory != other.memory {
            d.push(format!(
                "memory {} MiB vs {} MiB",
                self.memory >> 20,
                other.memory >> 20
            ));
        }
        if self.cpus != other.cpus {
            d.push(format!("{} vCPUs vs {}", self.cpus, other.cpus));
        }
        if self.cpu_profile != other.cpu_profile {
            d.push(format!(
                "CPU profile {:?} vs {:?}",
                self.cpu_profile, other.cpu_profile
            ));
        }
        (!d.is_empty()).then(|| d.join(", "))
    }
}

/// Everything but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Encoding version, [`STATE_VERSION`].
    pub version: u32,
    /// The VM's shape.
    pub shape: VmShape,
    /// Every vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// irqchip, PIT, clock.
    pub vm: VmLevelState,
    /// Devices.
    pub devices: Vec<DeviceState>,
}

impl VmState {
    /// Encode.
    pub fn to_bytes(&self) -> Result<Vec<u8>, VmmError> {
        postcard::to_stdvec(self).map_err(|e| VmmError::StateCodec(format!("encoding: {e}")))
    }

    /// Decode, refusing other versions and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VmmError> {
        // The version is the first field: check it before trusting the rest.
        let (version, _) = postcard::take_from_bytes::<u32>(bytes)
            .map_err(|e| VmmError::StateCodec(format!("state version unreadable: {e}")))?;
        if version != STATE_VERSION {
            return Err(VmmError::StateCodec(format!(
                "state format version {version} is not supported (this ftvm reads version {STATE_VERSION})"
            )));
        }
        let (state, rest): (VmState, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| VmmError::StateCodec(format!("state does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(VmmError::StateCodec(format!(
                "{} trailing bytes after the state",
                rest.len()
            )));
        }
        if state.vcpus.len() != state.shape.cpus as usize {
            return Err(VmmError::StateCodec(format!(
                "state has {} vCPUs but its shape says {}",
                state.vcpus.len(),
                state.shape.cpus
            )));
        }
        Ok(state)
    }
}

/// The MSRs worth moving: everything KVM lists that this vCPU can read, with TSC_DEADLINE
/// moved to the end (it is relative to the TSC, so the TSC must be set first).
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, VmmError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let mut v: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|i| *i != msr::TSC_DEADLINE)
        .collect();
    v.push(msr::TSC_DEADLINE);
    Ok(v)
}

/// Read `indices` in chunks, skipping any this vCPU refuses (KVM stops at the first MSR it
/// cannot read and returns how many it read).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, VmmError> {
    read_msrs_with(indices, |chunk| {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| VmmError::StateCodec(format!("MSR list: {e:?}")))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        Ok(msrs.as_slice()[..n]
            .iter()
            .map(|e| (e.index, e.data))
            .collect())
    })
}

/// Most MSRs per KVM_GET_MSRS.
const MSR_CHUNK: usize = 64;

/// The chunking of [`read_msrs`]: `get` reads a chunk and returns the MSRs read, which
/// stop at the first one it refused. A full chunk moves on to the next MSR; a short one
/// skips the refused MSR.
fn read_msrs_with(
    indices: &[u32],
    mut get: impl FnMut(&[u32]) -> Result<Vec<(u32, u64)>, VmmError>,
) -> Result<Vec<(u32, u64)>, VmmError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let read = get(chunk)?;
        let n = read.len().min(chunk.len());
        out.extend(read.into_iter().take(n));
        let skip = if n == chunk.len() { n } else { n + 1 };
        rest = &rest[skip.min(rest.len())..];
    }
    Ok(out)
}

/// Capture one vCPU. The vCPU must be parked (not inside KVM_RUN).
pub fn save_vcpu(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, VmmError> {
    // mp_state first: KVM_GET_MP_STATE may process pending APIC events (INIT/SIPI) and
    // thereby change registers and pending events read below.
    let mp_state = fd.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let xsave = fd.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?;
    let debugregs = fd.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let msrs = read_msrs(fd, msr_indices)?;
    // vcpu_events last: the reads above may inject or clear events (e.g. reading the LAPIC
    // can accept a pending interrupt), and this must be the final word on what is pending.
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        vcpu_events,
        tsc_khz,
    })
}

/// Restore one vCPU onto a vCPU that has its CPUID set and has never run.
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<(), VmmError> {
    // CPUID was set when the vCPU was created: KVM refuses KVM_SET_CPUID2 after the first
    // KVM_RUN on current kernels, which is why restores go onto fresh vCPUs.
    fd.set_mp_state(s.mp_state)
        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(kvm_err("KVM_SET_REGS"))?;
    // sregs before the LAPIC: sregs carries the APIC base, which decides how KVM
    // interprets the LAPIC state (xAPIC vs x2APIC).
    fd.set_sregs(&s.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    // SAFETY: `s.xsave` is a complete kvm_xsave struct (fixed size, read from KVM_GET_XSAVE
    // or decoded into the same type), so KVM reads only within it.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
    // LAPIC before MSRs: MSR_IA32_TSC_DEADLINE is ignored unless the LAPIC timer is in
    // TSC-deadline mode, which the LAPIC state sets.
    fd.set_lapic(&s.lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    // MSRs in saved order: TSC before TSC_DEADLINE (the deadline is relative to the TSC).
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    for chunk in entries.chunks(64) {
        let msrs = Msrs::from_entries(chunk)
            .map_err(|e| VmmError::StateCodec(format!("MSR list: {e:?}")))?;
        let n = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if n != chunk.len() {
            return Err(VmmError::StateMismatch(format!(
                "KVM refused MSR {:#x} (set {n} of {})",
                chunk[n].index,
                chunk.len()
            )));
        }
    }
    // vcpu_events last: setting registers, LAPIC or MSRs can clear pending events.
    fd.set_vcpu_events(&s.vcpu_events)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

/// Capture irqchip, PIT and clock.
pub fn save_vm(fd: &VmFd) -> Result<VmLevelState, VmmError> {
    let mut irqchips = Vec::new();
    for chip_id in [
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        fd.get_irqchip(&mut chip)
            .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        irqchips.push(chip);
    }
    let pit = fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
    let clock = fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
    Ok(VmLevelState {
        irqchips,
        pit,
        clock,
    })
}

/// Restore irqchip and PIT (before the vCPUs).
pub fn restore_vm(fd: &VmFd, s: &VmLevelState) -> Result<(), VmmError> {
    for chip in &s.irqchips {
        fd.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    fd.set_pit2(&s.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    Ok(())
}

/// Restore kvmclock, after the vCPUs (their TSC writes make KVM resync its clock
/// bookkeeping, so the clock is set last, as the final word). Note that kvmclock keeps
/// running while vCPUs are parked: a paused VM's clock advances with the host's.
pub fn restore_clock(fd: &VmFd, s: &VmLevelState) -> Result<(), VmmError> {
    // The clock continues from the saved value: guest time neither jumps forward by the
    // downtime nor goes backwards. Only the clock value is passed (flags from the source
    // host, such as TSC_STABLE, describe that host and are not settable).
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    fd.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// More than 64 MSRs: every one is read (a full chunk must not skip the next MSR),
    /// and a refused one is skipped alone.
    #[test]
    fn msr_chunks_skip_only_refused_msrs() {
        let indices: Vec<u32> = (0..200).collect();
        let refused = [70u32, 150];
        let got = read_msrs_with(&indices, |chunk| {
            Ok(chunk
                .iter()
                .take_while(|i| !refused.contains(i))
                .map(|&i| (i, u64::from(i) * 3))
                .collect())
        })
        .unwrap();
        let want: Vec<(u32, u64)> = indices
            .iter()
            .filter(|i| !refused.contains(i))
            .map(|&i| (i, u64::from(i) * 3))
            .collect();
        assert_eq!(got, want);
    }

    use super::*;

    fn sample() -> VmState {
        let vcpu = || VcpuState {
            mp_state: kvm_mp_state::default(),
            regs: kvm_regs {
                rip: 0x10_0000,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            xsave: kvm_xsave::default(),
            xcrs: kvm_xcrs::default(),
            debugregs: kvm_debugregs::default(),
            lapic: kvm_lapic_state::default(),
            msrs: vec![(msr::TSC, 12345), (msr::TSC_DEADLINE, 0)],
            vcpu_events: kvm_vcpu_events::default(),
            tsc_khz: Some(2_000_000),
        };
        VmState {
            version: STATE_VERSION,
            shape: VmShape {
                memory: 256 << 20,
                cpus: 2,
                cpu_profile: CpuProfile::Emulator,
            },
            vcpus: vec![vcpu(), vcpu()],
            vm: VmLevelState {
                irqchips: vec![kvm_irqchip::default()],
                pit: kvm_pit_state2::default(),
                clock: kvm_clock_data::default(),
            },
            devices: vec![DeviceState {
                id: "serial0".into(),
                bytes: vec![1, 2, 3],
            }],
        }
    }

    #[test]
    fn state_round_trips() {
        let bytes = sample().to_bytes().unwrap();
        let back = VmState::from_bytes(&bytes).unwrap();
        assert_eq!(back.vcpus.len(), 2);
        assert_eq!(back.vcpus[1].regs.rip, 0x10_0000);
        assert_eq!(
            back.vcpus[0].msrs,
            vec![(msr::TSC, 12345), (msr::TSC_DEADLINE, 0)]
        );
        assert_eq!(back.devices[0].bytes, vec![1, 2, 3]);
    }

    #[test]
    fn other_versions_and_trailing_bytes_are_refused() {
        let mut s = sample();
        s.version = STATE_VERSION + 1;
        let err = VmState::from_bytes(&s.to_bytes().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");
        let mut bytes = sample().to_bytes().unwrap();
        bytes.push(0);
        assert!(VmState::from_bytes(&bytes).is_err());
        let mut s = sample();
        s.vcpus.pop();
        let err = VmState::from_bytes(&s.to_bytes().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 vCPUs but its shape says 2"), "{err}");
    }

    /// Random truncations and byte flips of a valid state: always a clean Ok or Err,
    /// never a panic or an allocation blow-up (a mutation fuzzer run in every `cargo test`).
    #[test]
    fn mutated_states_never_panic() {
        let good = sample().to_bytes().unwrap();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..good.len() {
            assert!(
                VmState::from_bytes(&good[..len]).is_err(),
                "truncated to {len} accepted"
            );
        }
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % b.len();
                b[i] ^= (next() % 255 + 1) as u8;
            }
            let _ = VmState::from_bytes(&b);
        }
    }
}

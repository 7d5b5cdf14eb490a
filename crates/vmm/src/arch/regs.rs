//! The CPU state a vCPU starts with: 64-bit long mode at the kernel entry.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use super::gdt::{segment, BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_TSS};
use crate::error::{kvm_err, VmmError};
use crate::layout::{BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, PML4_ADDR};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// MSR numbers ftvm sets at boot and captures in every snapshot.
pub mod msr {
    /// Time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// SYSENTER CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// SYSENTER ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous enables.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// MTRR default type.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// PAT.
    pub const PAT: u32 = 0x277;
    /// TSC deadline (must be restored after TSC).
    pub const TSC_DEADLINE: u32 = 0x6e0;
    /// EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// SYSCALL target.
    pub const STAR: u32 = 0xc000_0081;
    /// 64-bit SYSCALL target.
    pub const LSTAR: u32 = 0xc000_0082;
    /// Compat SYSCALL target.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SYSCALL flag mask.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// FS base.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// GS base.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// Kernel GS base (swapgs).
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// TSC_AUX (rdtscp).
    pub const TSC_AUX: u32 = 0xc000_0103;
    /// kvmclock system time (new).
    pub const KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    /// kvmclock wall clock (new).
    pub const KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
    /// KVM async page fault.
    pub const KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
    /// KVM steal time.
    pub const KVM_STEAL_TIME: u32 = 0x4b56_4d03;
    /// KVM PV EOI.
    pub const KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
}

/// General registers at the kernel entry: RIP at the entry, RSI at the zero page (Linux
/// 64-bit boot protocol), RDI = vCPU index (ftvm's AP start protocol; 0 on the BSP).
pub fn boot_regs(entry: u64, zero_page: u64, vcpu_index: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: zero_page,
        rdi: vcpu_index,
        ..Default::default()
    }
}

/// Put a vCPU's special registers in 64-bit long mode with the boot GDT and page tables.
pub fn set_long_mode(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let code = segment(BOOT_GDT[2], BOOT_CS);
    let data = segment(BOOT_GDT[3], BOOT_DS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_GDT[4], BOOT_TSS);
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))
}

/// x87/SSE control words at reset values.
pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))
}

/// MSRs a kernel expects to be in a known state at entry.
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let entry = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(msr::SYSENTER_CS, 0),
        entry(msr::SYSENTER_ESP, 0),
        entry(msr::SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::TSC, 0),
        // Fast string operations on.
        entry(msr::MISC_ENABLE, 1),
        // MTRRs enabled, default type write-back.
        entry(msr::MTRR_DEF_TYPE, (1 << 11) | 6),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmmError::BootSetup {
        what: "boot MSRs",
        reason: format!("{e:?}"),
    })?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if written != entries.len() {
        return Err(VmmError::BootSetup {
            what: "boot MSRs",
            reason: format!(
                "KVM accepted {written} of {} MSRs (stopped at {:#x})",
                entries.len(),
                entries.get(written).map_or(0, |e| e.index)
            ),
        });
    }
    Ok(())
}

/// Route LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware would.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), VmmError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(LVT_LINT0, MODE_EXTINT), (LVT_LINT1, MODE_NMI)] {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = lapic.regs[offset + i] as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as i8;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))
}

//! Exits that end or repair a guest: crash reports and KVM emulation failures.
//!
//! On a host without hardware virtualization, guest ring-0 code runs in KVM's instruction
//! emulator. When it meets an instruction it cannot emulate, KVM_RUN exits with
//! KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION. Two such instructions are ones a
//! kernel executes on purpose to raise an exception (int3 for jump labels and kprobes, ud2
//! for BUG/WARN); for those ftvm injects the exception the real CPU would raise.
//!
//! Others are instructions of CPU features the guest was told about. On the software nested
//! KVM these machines run (see DESIGN.md), KVM_SET_CPUID2 is not authoritative: the guest
//! sees SMAP, POPCNT, FSGSBASE, SERIALIZE, XSAVE and more whatever the CPU profile says,
//! so a stock kernel uses them. Those whose operands are registers only are emulated here
//! (clac/stac, popcnt, rd/wr{fs,gs}base, serialize, fwait). Anything else ends the VM with
//! the instruction bytes in the report.

use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_vcpu_events, Msrs, KVM_INTERNAL_ERROR_EMULATION};
use kvm_ioctls::VcpuFd;

use crate::vcpu::VmEvent;

/// KVM sets this flag when the emulation failure carries the instruction bytes.
const EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;
const VECTOR_BP: u8 = 3;
const VECTOR_UD: u8 = 6;

/// A multi-line report of a vCPU's registers after a crash.
pub fn crash_report(fd: &VcpuFd, index: u32, what: &str) -> String {
    let mut out = format!("vCPU {index}: {what}");
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => {
            out.push_str(&format!(
                "\n  rip={:#018x} rsp={:#018x} rflags={:#x}\n  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}\n  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} (dpl {}, long {})",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi,
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.dpl, s.cs.l
            ));
        }
        (Err(e), _) | (_, Err(e)) => out.push_str(&format!(" (registers unreadable: {e})")),
    }
    out
}

/// Decode KVM's internal-error exit data: (suberror, flags, instruction bytes).
pub(crate) fn internal_error(fd: &mut VcpuFd) -> (u32, u64, Vec<u8>) {
    let run = fd.get_kvm_run();
    // SAFETY: KVM_RUN just returned KVM_EXIT_INTERNAL_ERROR, for which KVM fills the
    // `internal` member of the exit union (and, for emulation failures, the layout-compatible
    // `emulation_failure` member: flags in data[0], insn_size + insn_bytes from data[1]).
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    let flags = if ndata > 0 { internal.data[0] } else { 0 };
    let mut bytes = Vec::new();
    if internal.suberror == KVM_INTERNAL_ERROR_EMULATION
        && flags & EMULATION_FLAG_INSTRUCTION_BYTES != 0
        && ndata >= 3
    {
        let raw: Vec<u8> = internal.data[1..3]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let size = usize::from(raw[0]).min(15);
        bytes.extend_from_slice(&raw[1..1 + size]);
    }
    (internal.suberror, flags, bytes)
}

/// Handle KVM_EXIT_INTERNAL_ERROR: `None` to continue running, or the crash event.
pub fn handle_internal_error(fd: &mut VcpuFd, index: u32) -> Option<VmEvent> {
    let (suberror, _flags, bytes) = internal_error(fd);
    if suberror == KVM_INTERNAL_ERROR_EMULATION {
        let inject = match bytes.as_slice() {
            [0xcc, ..] => Some((VECTOR_BP, 1)),
            [0x0f, 0x0b, ..] => Some((VECTOR_UD, 0)),
            _ => None,
        };
        if inject.is_none() {
            if let Some(insn) = decode(&bytes) {
                match emulate(fd, insn) {
                    Ok(()) => {
                        EMULATED[insn.kind as usize].fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    Err(e) => {
                        return Some(VmEvent::Crash(crash_report(
                            fd,
                            index,
                            &format!("could not emulate {} for the guest: {e}", insn.kind.name()),
                        )))
                    }
                }
            }
        }
        if let Some((vector, advance)) = inject {
            match inject_exception(fd, vector, advance) {
                Ok(()) => return None,
                Err(e) => {
                    return Some(VmEvent::Crash(crash_report(
                        fd,
                        index,
                        &format!(
                        "could not inject exception {vector} for an unemulated instruction: {e}"
                    ),
                    )))
                }
            }
        }
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let what = if hex.is_empty() {
            "KVM could not emulate an instruction (KVM_INTERNAL_ERROR_EMULATION; KVM gave no instruction bytes)".to_string()
        } else {
            format!(
                "KVM could not emulate the instruction at rip (KVM_INTERNAL_ERROR_EMULATION), bytes: {}; this host's KVM emulates guest ring-0 code and lacks this instruction: hide the CPU feature (--cpu-profile emulator) or avoid it in the guest",
                hex.join(" ")
            )
        };
        return Some(VmEvent::Crash(crash_report(fd, index, &what)));
    }
    Some(VmEvent::Crash(crash_report(
        fd,
        index,
        &format!("KVM internal error, suberror {suberror}"),
    )))
}

/// Instructions ftvm emulates when KVM cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatedKind {
    /// `clac` (SMAP): clear RFLAGS.AC.
    Clac,
    /// `stac` (SMAP): set RFLAGS.AC.
    Stac,
    /// `popcnt` with register operands.
    Popcnt,
    /// `rdfsbase`/`rdgsbase`/`wrfsbase`/`wrgsbase` (FSGSBASE).
    FsGsBase,
    /// `serialize`: no architectural state to change.
    Serialize,
    /// `fwait`: nothing to wait for (x87 exceptions stay masked in a kernel).
    Fwait,
}

impl EmulatedKind {
    const ALL: [EmulatedKind; 6] = [
        EmulatedKind::Clac,
        EmulatedKind::Stac,
        EmulatedKind::Popcnt,
        EmulatedKind::FsGsBase,
        EmulatedKind::Serialize,
        EmulatedKind::Fwait,
    ];

    /// The instruction's name.
    pub fn name(self) -> &'static str {
        match self {
            EmulatedKind::Clac => "clac",
            EmulatedKind::Stac => "stac",
            EmulatedKind::Popcnt => "popcnt",
            EmulatedKind::FsGsBase => "rd/wr fs/gs base",
            EmulatedKind::Serialize => "serialize",
            EmulatedKind::Fwait => "fwait",
        }
    }
}

static EMULATED: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// How many instructions of each kind ftvm has emulated in this process.
pub fn emulated_counts() -> Vec<(&'static str, u64)> {
    EmulatedKind::ALL
        .iter()
        .map(|k| (k.name(), EMULATED[*k as usize].load(Ordering::Relaxed)))
        .collect()
}

/// A decoded instruction ftvm can emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    kind: EmulatedKind,
    /// Length in bytes.
    len: u64,
    /// Operand size in bytes (popcnt, fsgsbase).
    size: u8,
    /// ModRM reg field with REX.R (popcnt: destination; fsgsbase: 0-3 = which one).
    reg: usize,
    /// ModRM rm field with REX.B (the register operand).
    rm: usize,
}

/// Decode the register-only instructions ftvm emulates; `None` for anything else.
fn decode(bytes: &[u8]) -> Option<Insn> {
    let mut i = 0;
    let (mut rep, mut opsize16, mut other_prefix) = (false, false, false);
    while let Some(&b) = bytes.get(i) {
        match b {
            0xf3 => rep = true,
            0x66 => opsize16 = true,
            0xf0 | 0xf2 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0x67 => other_prefix = true,
            _ => break,
        }
        i += 1;
    }
    let mut rex = 0u8;
    if let Some(&b) = bytes.get(i) {
        if b & 0xf0 == 0x40 {
            rex = b;
            i += 1;
        }
    }
    let no_prefix = i == 0;
    let op = bytes.get(i..)?;
    let simple = |kind, len: usize| Insn {
        kind,
        len: len as u64,
        size: 0,
        reg: 0,
        rm: 0,
    };
    match op {
        [0x0f, 0x01, 0xca, ..] if no_prefix => return Some(simple(EmulatedKind::Clac, 3)),
        [0x0f, 0x01, 0xcb, ..] if no_prefix => return Some(simple(EmulatedKind::Stac, 3)),
        [0x0f, 0x01, 0xe8, ..] if no_prefix => return Some(simple(EmulatedKind::Serialize, 3)),
        [0x9b, ..] if no_prefix => return Some(simple(EmulatedKind::Fwait, 1)),
        _ => {}
    }
    if !rep || other_prefix {
        return None;
    }
    let (kind, modrm) = match op {
        [0x0f, 0xb8, m, ..] => (EmulatedKind::Popcnt, *m),
        [0x0f, 0xae, m, ..] if (m >> 3) & 7 <= 3 && !opsize16 => (EmulatedKind::FsGsBase, *m),
        _ => return None,
    };
    if modrm >> 6 != 3 {
        return None; // memory operand: not emulated
    }
    let size = if rex & 8 != 0 {
        8
    } else if opsize16 {
        2
    } else {
        4
    };
    Some(Insn {
        kind,
        len: (i + 3) as u64,
        size,
        reg: usize::from((modrm >> 3) & 7) | if rex & 4 != 0 { 8 } else { 0 },
        rm: usize::from(modrm & 7) | if rex & 1 != 0 { 8 } else { 0 },
    })
}

fn gpr(r: &mut kvm_regs, n: usize) -> &mut u64 {
    match n {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
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

/// Write `value` to a register with x86 operand-size rules (32-bit writes zero-extend,
/// 16-bit writes keep the upper bits).
fn write_gpr(r: &mut kvm_regs, n: usize, size: u8, value: u64) {
    let slot = gpr(r, n);
    *slot = match size {
        8 => value,
        2 => (*slot & !0xffff) | (value & 0xffff),
        _ => value & 0xffff_ffff,
    };
}

fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
const RFLAGS_CF: u64 = 1;
const RFLAGS_PF: u64 = 1 << 2;
const RFLAGS_AF: u64 = 1 << 4;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_OF: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;

/// Carry out `insn` on the vCPU and step over it.
fn emulate(fd: &mut VcpuFd, insn: Insn) -> Result<(), kvm_ioctls::Error> {
    let mut regs = fd.get_regs()?;
    match insn.kind {
        EmulatedKind::Clac => regs.rflags &= !RFLAGS_AC,
        EmulatedKind::Stac => regs.rflags |= RFLAGS_AC,
        EmulatedKind::Serialize | EmulatedKind::Fwait => {}
        EmulatedKind::Popcnt => {
            let src = *gpr(&mut regs, insn.rm) & mask(insn.size);
            write_gpr(&mut regs, insn.reg, insn.size, u64::from(src.count_ones()));
            regs.rflags &= !(RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF);
            if src == 0 {
                regs.rflags |= RFLAGS_ZF;
            }
        }
        EmulatedKind::FsGsBase => {
            let size = insn.size;
            if insn.reg & 2 == 0 {
                let sregs = fd.get_sregs()?;
                let base = if insn.reg & 1 == 0 {
                    sregs.fs.base
                } else {
                    sregs.gs.base
                };
                write_gpr(&mut regs, insn.rm, size, base & mask(size));
            } else {
                let index = if insn.reg & 1 == 0 {
                    MSR_FS_BASE
                } else {
                    MSR_GS_BASE
                };
                let data = *gpr(&mut regs, insn.rm) & mask(size);
                let msrs = Msrs::from_entries(&[kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                }])
                .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
                if fd.set_msrs(&msrs)? != 1 {
                    return Err(kvm_ioctls::Error::new(libc::EIO));
                }
            }
        }
    }
    regs.rip = regs.rip.wrapping_add(insn.len);
    fd.set_regs(&regs)
}

/// Make the vCPU take exception `vector` as if the instruction at RIP raised it;
/// `advance` bytes are skipped first for traps (int3 reports the next instruction).
fn inject_exception(fd: &mut VcpuFd, vector: u8, advance: u64) -> Result<(), kvm_ioctls::Error> {
    if advance > 0 {
        let mut regs = fd.get_regs()?;
        regs.rip += advance;
        fd.set_regs(&regs)?;
    }
    let mut events: kvm_vcpu_events = fd.get_vcpu_events()?;
    events.exception.injected = 1;
    events.exception.nr = vector;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    fd.set_vcpu_events(&events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(bytes: &[u8]) -> Option<(EmulatedKind, u64)> {
        decode(bytes).map(|i| (i.kind, i.len))
    }

    #[test]
    fn decodes_register_only_instructions() {
        assert_eq!(
            kind(&[0x0f, 0x01, 0xca, 0x90]),
            Some((EmulatedKind::Clac, 3))
        );
        assert_eq!(kind(&[0x0f, 0x01, 0xcb]), Some((EmulatedKind::Stac, 3)));
        assert_eq!(
            kind(&[0x0f, 0x01, 0xe8]),
            Some((EmulatedKind::Serialize, 3))
        );
        assert_eq!(kind(&[0x9b, 0xdb, 0xe3]), Some((EmulatedKind::Fwait, 1)));
        // popcnt %rdi,%rax (the kernel's hweight64 alternative)
        let p = decode(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7]).unwrap();
        assert_eq!(
            (p.kind, p.len, p.size, p.reg, p.rm),
            (EmulatedKind::Popcnt, 5, 8, 0, 7)
        );
        // popcnt %r9d,%r10d
        let p = decode(&[0xf3, 0x45, 0x0f, 0xb8, 0xd1]).unwrap();
        assert_eq!((p.len, p.size, p.reg, p.rm), (5, 4, 10, 9));
        // rdgsbase %rax / wrfsbase %rdi
        let g = decode(&[0xf3, 0x48, 0x0f, 0xae, 0xc8]).unwrap();
        assert_eq!(
            (g.kind, g.len, g.reg & 3, g.rm),
            (EmulatedKind::FsGsBase, 5, 1, 0)
        );
        let w = decode(&[0xf3, 0x48, 0x0f, 0xae, 0xd7]).unwrap();
        assert_eq!((w.reg & 3, w.rm), (2, 7));
    }

    #[test]
    fn leaves_everything_else_alone() {
        // xrstor (%rdi): needs guest memory
        assert_eq!(kind(&[0x48, 0x0f, 0xae, 0x2f]), None);
        // popcnt (%rdi),%rax: memory operand
        assert_eq!(kind(&[0xf3, 0x48, 0x0f, 0xb8, 0x07]), None);
        // lfence, clflush-like group 15 forms without f3
        assert_eq!(kind(&[0x0f, 0xae, 0xe8]), None);
        // f3 0f ae /6 (umonitor) is not fsgsbase
        assert_eq!(kind(&[0xf3, 0x0f, 0xae, 0xf0]), None);
        assert_eq!(kind(&[0xf3, 0x0f, 0x01, 0xca]), None);
        assert_eq!(kind(&[]), None);
    }

    #[test]
    fn operand_size_rules() {
        let mut r = kvm_regs {
            rax: 0xffff_ffff_ffff_ffff,
            ..Default::default()
        };
        write_gpr(&mut r, 0, 4, 3);
        assert_eq!(r.rax, 3);
        r.rax = 0xffff_ffff_ffff_ffff;
        write_gpr(&mut r, 0, 2, 3);
        assert_eq!(r.rax, 0xffff_ffff_ffff_0003);
        write_gpr(&mut r, 15, 8, 7);
        assert_eq!(r.r15, 7);
    }
}

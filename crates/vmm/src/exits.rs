//! Exits that end or repair a guest: crash reports and KVM emulation failures.
//!
//! On a host without hardware virtualization, guest ring-0 code runs in KVM's instruction
//! emulator. When it meets an instruction it cannot emulate, KVM_RUN exits with
//! KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION. Two such instructions are ones a
//! kernel executes on purpose to raise an exception (int3 for jump labels and kprobes, ud2
//! for BUG/WARN); for those ftvm injects the exception the real CPU would raise. Anything
//! else ends the VM with the instruction bytes in the report.

use kvm_bindings::{kvm_vcpu_events, KVM_INTERNAL_ERROR_EMULATION};
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
fn internal_error(fd: &mut VcpuFd) -> (u32, u64, Vec<u8>) {
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

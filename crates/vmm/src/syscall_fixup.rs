//! Completing ring-3 system calls that this kind of host leaves half done (`--cpu-fixups
//! syscall`).
//!
//! On hosts without hardware virtualization (the software nested KVM of DESIGN.md), a
//! ring-3 `syscall` does everything but the privilege switch: RCX, R11, RFLAGS &= ~SFMASK
//! and RIP = LSTAR, but CS/SS stay the user's. The first fetch at LSTAR (a supervisor page)
//! then faults from ring 3, and the guest's #PF entry runs in ring 0, which KVM emulates.
//! Linux starts every exception entry with `clac`, which KVM's emulator lacks, so the VMM
//! gets an exit at that entry before any guest code of the handler ran. There this module
//! checks that the fault is the landing of a genuine `syscall` (see
//! [`check_syscall_landing`]), throws the exception away and enters LSTAR in ring 0 with
//! CS/SS from STAR, as the `syscall` should have. Likewise a ring-3 `int $0x80` arrives as
//! #UD; it is sent on to the IDT's 0x80 gate.
//!
//! Soundness hinges on refusing forged landings: a user program can jump to LSTAR itself,
//! with any RCX/R11 (Linux returns with RFLAGS from R11: IOPL 3 would be a privilege
//! escalation). A real landing has RFLAGS already masked by SFMASK (IF = 0 in the exception
//! frame), which ring-3 code cannot produce without IOPL 3. Everything that is refused is
//! left to the ordinary `clac` emulation: the guest handles its fault as it would without
//! this module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_msr_entry, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;

use crate::guest_walk::{self, Access, WalkError};
use crate::memory::GuestMemory;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;

const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;

/// #PF error code bits.
const PF_WRITE: u64 = 1 << 1;
const PF_USER: u64 = 1 << 2;
const PF_RSVD: u64 = 1 << 3;

const VECTOR_UD: u64 = 6;
const VECTOR_PF: u64 = 14;
const VECTOR_INT80: u64 = 0x80;

/// How often the cached #PF/#UD entry addresses may be re-read from the guest's IDT when an
/// exit does not match them.
const ENTRY_REFRESH: Duration = Duration::from_secs(1);

/// The exception frame the CPU pushed (64-bit mode), without the error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frame {
    /// Saved RIP.
    pub rip: u64,
    /// Saved CS.
    pub cs: u64,
    /// Saved RFLAGS.
    pub rflags: u64,
    /// Saved RSP.
    pub rsp: u64,
    /// Saved SS.
    pub ss: u64,
}

/// The `syscall` MSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyscallMsrs {
    /// STAR: kernel CS in bits 47:32, user selector base in 63:48.
    pub star: u64,
    /// LSTAR: the 64-bit entry.
    pub lstar: u64,
    /// SFMASK: RFLAGS bits `syscall` clears.
    pub sfmask: u64,
}

impl SyscallMsrs {
    /// Kernel CS selector for `syscall`.
    pub fn kernel_cs(&self) -> u16 {
        ((self.star >> 32) & 0xfffc) as u16
    }
    /// The 64-bit user CS `sysretq` loads (STAR[63:48] + 16, RPL 3).
    pub fn user_cs64(&self) -> u64 {
        (((self.star >> 48) & 0xffff) + 16) | 3
    }
}

/// An IDT gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gate {
    /// Handler address.
    pub target: u64,
    /// Code segment selector.
    pub selector: u16,
    /// Interrupt stack table index.
    pub ist: u8,
    /// Type (0xe interrupt gate, 0xf trap gate).
    pub kind: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Present bit.
    pub present: bool,
}

impl Gate {
    /// Decode a 16-byte long-mode gate from its two little-endian words.
    pub fn decode(lo: u64, hi: u64) -> Gate {
        let attr = (lo >> 40) as u8;
        Gate {
            target: (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | ((hi & 0xffff_ffff) << 32),
            selector: (lo >> 16) as u16,
            ist: ((lo >> 32) & 7) as u8,
            kind: attr & 0xf,
            dpl: (attr >> 5) & 3,
            present: attr & 0x80 != 0,
        }
    }
}

/// Why an exception entry is not a system call to complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The exception came from ring 0 (or a non-64-bit user segment).
    #[error("frame CS {cs:#x} is not the 64-bit user CS {user_cs:#x}")]
    NotUserCs {
        /// Frame CS.
        cs: u64,
        /// What STAR says.
        user_cs: u64,
    },
    /// The fault is not at LSTAR.
    #[error("frame RIP {rip:#x} / CR2 {cr2:#x} is not LSTAR {lstar:#x}")]
    NotAtLstar {
        /// Frame RIP.
        rip: u64,
        /// CR2.
        cr2: u64,
        /// LSTAR.
        lstar: u64,
    },
    /// The error code is not that of a user instruction fetch.
    #[error("error code {0:#x} is not a user instruction fetch")]
    NotUserFetch(u64),
    /// IF is set in the frame (or SFMASK does not clear it): ring 3 jumped to LSTAR itself.
    #[error("interrupts enabled in the frame (RFLAGS {rflags:#x}, SFMASK {sfmask:#x}): not a syscall landing")]
    InterruptsEnabled {
        /// Frame RFLAGS.
        rflags: u64,
        /// SFMASK.
        sfmask: u64,
    },
    /// R11 does not hold the RFLAGS the frame came from.
    #[error("R11 {r11:#x} does not match the frame's RFLAGS {rflags:#x} outside SFMASK")]
    R11Mismatch {
        /// R11.
        r11: u64,
        /// Frame RFLAGS.
        rflags: u64,
    },
    /// RCX does not point just after a `syscall` instruction.
    #[error("RCX {0:#x} does not follow a syscall instruction")]
    RcxNotAfterSyscall(u64),
    /// Virtual-8086 flag in the frame.
    #[error("VM flag set in the frame")]
    Vm86,
    /// Not `int $0x80` from ring 3.
    #[error("#UD at {rip:#x} (CS {cs:#x}) is not a ring-3 int $0x80 (bytes {bytes:02x?})")]
    NotInt80 {
        /// Frame RIP.
        rip: u64,
        /// Frame CS.
        cs: u64,
        /// Bytes at RIP.
        bytes: [u8; 2],
    },
    /// The 0x80 gate is one ring 3 may not use, or one the #UD entry's stack does not fit.
    #[error("IDT gate 0x80 ({0:?}) is not a present DPL-3 gate like the #UD gate")]
    BadGate(Gate),
}

/// Decide whether a #PF taken from ring 3 is the landing of a genuine 64-bit `syscall`.
///
/// `error_code`, `frame` and `cr2` are what the #PF delivered; `rcx`/`r11` the registers
/// at the entry; `before_rcx` the two bytes preceding RCX in the user's address space
/// (`None` if unreadable).
pub fn check_syscall_landing(
    error_code: u64,
    frame: &Frame,
    cr2: u64,
    rcx: u64,
    r11: u64,
    before_rcx: Option<[u8; 2]>,
    msrs: &SyscallMsrs,
) -> Result<(), Refusal> {
    if frame.cs != msrs.user_cs64() {
        return Err(Refusal::NotUserCs {
            cs: frame.cs,
            user_cs: msrs.user_cs64(),
        });
    }
    if frame.rip != msrs.lstar || cr2 != msrs.lstar {
        return Err(Refusal::NotAtLstar {
            rip: frame.rip,
            cr2,
            lstar: msrs.lstar,
        });
    }
    if error_code & PF_USER == 0 || error_code & (PF_WRITE | PF_RSVD) != 0 {
        return Err(Refusal::NotUserFetch(error_code));
    }
    if frame.rflags & RFLAGS_VM != 0 {
        return Err(Refusal::Vm86);
    }
    if msrs.sfmask & RFLAGS_IF == 0 || frame.rflags & RFLAGS_IF != 0 {
        return Err(Refusal::InterruptsEnabled {
            rflags: frame.rflags,
            sfmask: msrs.sfmask,
        });
    }
    let keep = !(msrs.sfmask | RFLAGS_RF);
    if r11 & keep != frame.rflags & keep || r11 & RFLAGS_IF == 0 {
        return Err(Refusal::R11Mismatch {
            r11,
            rflags: frame.rflags,
        });
    }
    if before_rcx != Some([0x0f, 0x05]) {
        return Err(Refusal::RcxNotAfterSyscall(rcx));
    }
    Ok(())
}

/// Decide whether a #UD taken from ring 3 is an `int $0x80` the 0x80 gate should take.
pub fn check_int80(
    frame: &Frame,
    bytes: [u8; 2],
    gate80: &Gate,
    gate_ud: &Gate,
) -> Result<(), Refusal> {
    if frame.cs & 3 != 3 || bytes != [0xcd, 0x80] {
        return Err(Refusal::NotInt80 {
            rip: frame.rip,
            cs: frame.cs,
            bytes,
        });
    }
    if frame.rflags & RFLAGS_VM != 0 {
        return Err(Refusal::Vm86);
    }
    let usable = gate80.present
        && gate80.dpl == 3
        && (gate80.kind == 0xe || gate80.kind == 0xf)
        && gate80.selector == gate_ud.selector
        && gate80.ist == gate_ud.ist
        && gate_ud.kind == 0xe;
    if !usable {
        return Err(Refusal::BadGate(*gate80));
    }
    Ok(())
}

/// What the fix-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixed {
    /// Entered LSTAR in ring 0.
    Syscall,
    /// Sent `int $0x80` to its gate.
    Int80,
}

static SYSCALLS: AtomicU64 = AtomicU64::new(0);
static INT80S: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Counters of this process: (syscalls completed, int $0x80 sent to the gate, ring-3
/// #PF/#UD entries left to the guest).
pub fn counts() -> (u64, u64, u64) {
    (
        SYSCALLS.load(Ordering::Relaxed),
        INT80S.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    )
}

/// Per-vCPU fix-up state: guest memory and the cached exception entries.
#[derive(Debug)]
pub struct SyscallFixup {
    mem: GuestMemory,
    /// (#PF entry, #UD entry) from the guest's IDT.
    entries: Option<(u64, u64)>,
    refreshed: Option<Instant>,
}

/// Why the fix-up could not even look (vCPU ioctls failed): the VM cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("syscall fix-up: {what}: {source}")]
pub struct FixupError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, FixupError> {
    r.map_err(|source| FixupError { what, source })
}

fn read_gate(mem: &GuestMemory, cr3: u64, idt: (u64, u16), vector: u64) -> Option<Gate> {
    let (base, limit) = idt;
    if vector * 16 + 15 > u64::from(limit) {
        return None;
    }
    let va = base.wrapping_add(vector * 16);
    if va & 7 != 0 {
        return None;
    }
    let lo = guest_walk::read_u64(mem, cr3, va, Access::KERNEL_READ).ok()?;
    let hi = guest_walk::read_u64(mem, cr3, va + 8, Access::KERNEL_READ).ok()?;
    Some(Gate::decode(lo, hi))
}

fn read_frame(mem: &GuestMemory, cr3: u64, at: u64) -> Result<Frame, WalkError> {
    let w = |i: u64| guest_walk::read_u64(mem, cr3, at + 8 * i, Access::KERNEL_READ);
    Ok(Frame {
        rip: w(0)?,
        cs: w(1)?,
        rflags: w(2)?,
        rsp: w(3)?,
        ss: w(4)?,
    })
}

fn kernel_code(selector: u16) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn kernel_data(selector: u16) -> kvm_segment {
    kvm_segment {
        type_: 0x3,
        db: 1,
        l: 0,
        selector,
        ..kernel_code(selector)
    }
}

impl SyscallFixup {
    /// Fix-up state over the VM's memory.
    pub fn new(mem: GuestMemory) -> Self {
        Self {
            mem,
            entries: None,
            refreshed: None,
        }
    }

    /// Called on an emulation failure at `clac` (`bytes` = KVM's instruction bytes):
    /// complete a system call if this `clac` is the #PF or #UD entry for one. `Ok(None)`
    /// leaves the exit to the ordinary handling.
    pub fn on_emulation_failure(
        &mut self,
        fd: &mut VcpuFd,
        bytes: &[u8],
    ) -> Result<Option<Fixed>, FixupError> {
        if !bytes.starts_with(&[0x0f, 0x01, 0xca]) {
            return Ok(None);
        }
        let mut regs = ioctl("KVM_GET_REGS", fd.get_regs())?;
        let cached = self.entries;
        let fresh = self.refreshed.is_some_and(|t| t.elapsed() < ENTRY_REFRESH);
        if cached.is_some_and(|(pf, ud)| regs.rip != pf && regs.rip != ud) && fresh {
            return Ok(None);
        }
        let mut sregs = ioctl("KVM_GET_SREGS", fd.get_sregs())?;
        if sregs.cs.dpl != 0 || sregs.cr4 & (1 << 12) != 0 || sregs.efer & (1 << 10) == 0 {
            return Ok(None); // not a long-mode kernel, or 5-level paging
        }
        let cr3 = sregs.cr3;
        let idt = (sregs.idt.base, sregs.idt.limit);
        let mem = &self.mem;
        let (Some(gate_pf), Some(gate_ud)) = (
            read_gate(mem, cr3, idt, VECTOR_PF),
            read_gate(mem, cr3, idt, VECTOR_UD),
        ) else {
            return Ok(None);
        };
        self.entries = Some((gate_pf.target, gate_ud.target));
        self.refreshed = Some(Instant::now());
        let ring3 = |cs: u64| cs & 3 == 3;
        if regs.rip == gate_pf.target && regs.rsp & 7 == 0 {
            let Ok(error_code) = guest_walk::read_u64(mem, cr3, regs.rsp, Access::KERNEL_READ)
            else {
                return Ok(None);
            };
            let Ok(frame) = read_frame(mem, cr3, regs.rsp + 8) else {
                return Ok(None);
            };
            if !ring3(frame.cs) {
                return Ok(None); // a kernel fault: not even a candidate
            }
            let msrs = read_syscall_msrs(fd)?;
            let before_rcx =
                guest_walk::read_bytes::<2>(mem, cr3, regs.rcx.wrapping_sub(2), Access::USER_READ)
                    .ok();
            let verdict = check_syscall_landing(
                error_code, &frame, sregs.cr2, regs.rcx, regs.r11, before_rcx, &msrs,
            );
            if verdict.is_err() {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            regs.rip = msrs.lstar;
            regs.rsp = frame.rsp;
            regs.rflags = (frame.rflags & !RFLAGS_RF) | RFLAGS_FIXED;
            sregs.cs = kernel_code(msrs.kernel_cs());
            sregs.ss = kernel_data(msrs.kernel_cs() + 8);
            ioctl("KVM_SET_SREGS", fd.set_sregs(&sregs))?;
            ioctl("KVM_SET_REGS", fd.set_regs(&regs))?;
            SYSCALLS.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Fixed::Syscall));
        }
        if regs.rip == gate_ud.target && regs.rsp & 7 == 0 {
            let Ok(frame) = read_frame(mem, cr3, regs.rsp) else {
                return Ok(None);
            };
            if !ring3(frame.cs) {
                return Ok(None);
            }
            let Ok(bytes) = guest_walk::read_bytes::<2>(mem, cr3, frame.rip, Access::USER_READ)
            else {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            };
            let gate80 = read_gate(mem, cr3, idt, VECTOR_INT80).unwrap_or_default();
            if check_int80(&frame, bytes, &gate80, &gate_ud).is_err() {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            // A software interrupt pushes the address of the next instruction.
            let written =
                guest_walk::write_u64(mem, cr3, regs.rsp, frame.rip + 2, false).and_then(|()| {
                    guest_walk::write_u64(mem, cr3, regs.rsp + 16, frame.rflags & !RFLAGS_RF, false)
                });
            if written.is_err() {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            regs.rip = gate80.target;
            if gate80.kind == 0xf {
                // A trap gate keeps the interrupted IF; the #UD interrupt gate cleared it.
                regs.rflags |= frame.rflags & RFLAGS_IF;
            }
            ioctl("KVM_SET_REGS", fd.set_regs(&regs))?;
            INT80S.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Fixed::Int80));
        }
        Ok(None)
    }
}

fn read_syscall_msrs(fd: &VcpuFd) -> Result<SyscallMsrs, FixupError> {
    let entry = |index| kvm_msr_entry {
        index,
        ..Default::default()
    };
    let mut msrs = Msrs::from_entries(&[entry(MSR_STAR), entry(MSR_LSTAR), entry(MSR_SFMASK)])
        .map_err(|_| FixupError {
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
    let n = ioctl("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
    if n != 3 {
        return Err(FixupError {
            what: "KVM_GET_MSRS (STAR, LSTAR, SFMASK)",
            source: kvm_ioctls::Error::new(libc::EIO),
        });
    }
    let e = msrs.as_slice();
    Ok(SyscallMsrs {
        star: e[0].data,
        lstar: e[1].data,
        sfmask: e[2].data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's values.
    const MSRS: SyscallMsrs = SyscallMsrs {
        star: 0x0023_0010_0000_0000,
        lstar: 0xffff_ffff_8160_0080,
        sfmask: 0x0025_7fd5,
    };

    /// What the spike's Linux run saw at a genuine landing.
    fn genuine() -> (u64, Frame, u64, u64, u64, Option<[u8; 2]>) {
        let frame = Frame {
            rip: MSRS.lstar,
            cs: 0x33,
            rflags: 0x10002,
            rsp: 0x7ffd_0000_1000,
            ss: 0x2b,
        };
        (
            0x15,
            frame,
            MSRS.lstar,
            0x40_100c,
            0x202,
            Some([0x0f, 0x05]),
        )
    }

    fn check(
        e: u64,
        f: &Frame,
        cr2: u64,
        rcx: u64,
        r11: u64,
        b: Option<[u8; 2]>,
    ) -> Result<(), Refusal> {
        check_syscall_landing(e, f, cr2, rcx, r11, b, &MSRS)
    }

    #[test]
    fn genuine_landing_is_accepted() {
        let (e, f, cr2, rcx, r11, b) = genuine();
        assert_eq!(check(e, &f, cr2, rcx, r11, b), Ok(()));
        // without NXE the error code lacks the fetch bit; P clear if LSTAR were unmapped
        assert_eq!(check(0x5, &f, cr2, rcx, r11, b), Ok(()));
        assert_eq!(check(0x14, &f, cr2, rcx, r11, b), Ok(()));
        // user flags outside SFMASK (here: none but bit 1) must match; arithmetic ones are masked
        assert_eq!(check(e, &f, cr2, rcx, 0x2c7, b), Ok(()));
    }

    #[test]
    fn forged_landing_with_interrupts_enabled_is_refused() {
        // ring 3 jumped to LSTAR with a forged R11 asking for IOPL 3
        let (e, mut f, cr2, rcx, _, b) = genuine();
        f.rflags = 0x10202;
        assert!(matches!(
            check(e, &f, cr2, rcx, 0x3202, b),
            Err(Refusal::InterruptsEnabled { .. })
        ));
        // and a consistent R11 does not help
        assert!(matches!(
            check(e, &f, cr2, rcx, 0x202, b),
            Err(Refusal::InterruptsEnabled { .. })
        ));
        // nor a kernel whose SFMASK does not clear IF
        let (e, f, cr2, rcx, r11, b) = genuine();
        let msrs = SyscallMsrs {
            sfmask: 0x500, // TF, DF
            ..MSRS
        };
        assert!(matches!(
            check_syscall_landing(e, &f, cr2, rcx, r11, b, &msrs),
            Err(Refusal::InterruptsEnabled { .. })
        ));
    }

    #[test]
    fn r11_and_rcx_must_be_those_of_the_syscall() {
        let (e, f, cr2, rcx, _, b) = genuine();
        // VIF (outside Linux's SFMASK) in R11 but not in the frame
        assert!(matches!(
            check(e, &f, cr2, rcx, 0x8_0202, b),
            Err(Refusal::R11Mismatch { .. })
        ));
        // R11 with IF clear cannot come from ring 3 without IOPL
        assert!(matches!(
            check(e, &f, cr2, rcx, 0x2, b),
            Err(Refusal::R11Mismatch { .. })
        ));
        let (e, f, cr2, rcx, r11, _) = genuine();
        assert_eq!(
            check(e, &f, cr2, rcx, r11, Some([0xcd, 0x80])),
            Err(Refusal::RcxNotAfterSyscall(rcx))
        );
        assert_eq!(
            check(e, &f, cr2, rcx, r11, None),
            Err(Refusal::RcxNotAfterSyscall(rcx))
        );
    }

    #[test]
    fn ring0_fault_is_refused() {
        let (_, mut f, cr2, rcx, r11, b) = genuine();
        f.cs = 0x10;
        assert!(matches!(
            check(0x11, &f, cr2, rcx, r11, b),
            Err(Refusal::NotUserCs { .. })
        ));
        // a compat-mode (CSTAR) landing is not handled either
        f.cs = 0x23;
        assert!(matches!(
            check(0x15, &f, cr2, rcx, r11, b),
            Err(Refusal::NotUserCs { .. })
        ));
        // a supervisor-mode error code with a user frame
        let (_, f, cr2, rcx, r11, b) = genuine();
        assert_eq!(
            check(0x11, &f, cr2, rcx, r11, b),
            Err(Refusal::NotUserFetch(0x11))
        );
        assert_eq!(
            check(0x17, &f, cr2, rcx, r11, b),
            Err(Refusal::NotUserFetch(0x17))
        );
    }

    #[test]
    fn fault_elsewhere_is_refused() {
        let (e, mut f, cr2, rcx, r11, b) = genuine();
        f.rip = MSRS.lstar + 1;
        assert!(matches!(
            check(e, &f, cr2, rcx, r11, b),
            Err(Refusal::NotAtLstar { .. })
        ));
        let (e, f, _, rcx, r11, b) = genuine();
        assert!(matches!(
            check(e, &f, 0x40_0000, rcx, r11, b),
            Err(Refusal::NotAtLstar { .. })
        ));
    }

    fn gate(dpl: u8, kind: u8) -> Gate {
        Gate {
            target: 0xffff_ffff_8140_0b30,
            selector: 0x10,
            ist: 0,
            kind,
            dpl,
            present: true,
        }
    }

    #[test]
    fn int80_goes_to_a_dpl3_gate_only() {
        let f = Frame {
            rip: 0x40_1051,
            cs: 0x33,
            rflags: 0x10202,
            rsp: 0x7ffd_0000_1000,
            ss: 0x2b,
        };
        let ud = gate(0, 0xe);
        assert_eq!(check_int80(&f, [0xcd, 0x80], &gate(3, 0xe), &ud), Ok(()));
        assert_eq!(check_int80(&f, [0xcd, 0x80], &gate(3, 0xf), &ud), Ok(()));
        assert!(matches!(
            check_int80(&f, [0xcd, 0x80], &gate(0, 0xe), &ud),
            Err(Refusal::BadGate(_))
        ));
        let absent = Gate {
            present: false,
            ..gate(3, 0xe)
        };
        assert!(matches!(
            check_int80(&f, [0xcd, 0x80], &absent, &ud),
            Err(Refusal::BadGate(_))
        ));
        let ist = Gate {
            ist: 2,
            ..gate(3, 0xe)
        };
        assert!(matches!(
            check_int80(&f, [0xcd, 0x80], &ist, &ud),
            Err(Refusal::BadGate(_))
        ));
        // other instructions, and ring 0
        assert!(matches!(
            check_int80(&f, [0x0f, 0x0b], &gate(3, 0xe), &ud),
            Err(Refusal::NotInt80 { .. })
        ));
        let k = Frame { cs: 0x10, ..f };
        assert!(matches!(
            check_int80(&k, [0xcd, 0x80], &gate(3, 0xe), &ud),
            Err(Refusal::NotInt80 { .. })
        ));
    }

    #[test]
    fn gates_decode() {
        // Linux's int 0x80 gate: asm_int80_emulation, __KERNEL_CS, DPL 3 interrupt gate
        let target: u64 = 0xffff_ffff_8140_0b30;
        let lo =
            (target & 0xffff) | (0x10 << 16) | (0xeeu64 << 40) | ((target >> 16) & 0xffff) << 48;
        let hi = target >> 32;
        assert_eq!(Gate::decode(lo, hi), gate(3, 0xe));
        let lo_ist = lo | (3 << 32);
        assert_eq!(Gate::decode(lo_ist, hi).ist, 3);
        assert!(!Gate::decode(lo & !(0x80u64 << 40), hi).present);
    }
}

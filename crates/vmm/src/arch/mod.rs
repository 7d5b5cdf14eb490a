//! x86_64 specifics: boot-time CPU state, descriptor tables, page tables, CPUID profile,
//! MP table, ACPI tables and the Linux zero page.

pub mod acpi;
pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod regs;

//! The guest-physical memory map ftvm gives every x86_64 guest.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_7000  boot_params (zero page)
//! 0x0000_8ff0  boot stack top           0x0000_9000  PML4, PDPT at 0xa000, PDs 0xb000-0xefff
//! 0x0002_0000  kernel command line      0x0009_fc00  MP table (reserved to 0xa0000)
//! 0x000e_0000  ACPI tables (to 0xf0000)
//! 0x0010_0000  kernel (1 MiB)           ... RAM ...  up to 3 GiB, MMIO gap 3-4 GiB, RAM again
//! ```

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;
/// GDT location.
pub const GDT_ADDR: u64 = 0x500;
/// IDT location (an empty IDT: interrupts stay off until the guest installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// Linux boot_params ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity-map page tables: PML4.
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories (2 MiB pages, 4 GiB identity map).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line accepted (bytes, without the NUL).
pub const CMDLINE_MAX: usize = 4095;
/// MP floating pointer and configuration table.
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// ACPI tables, RSDP first (crates/vmm/src/arch/acpi.rs).
pub const ACPI_ADDR: u64 = 0xe0000;
/// End of the ACPI tables' area (the test guest scans 0xf0000-0xfffff for the MP table).
pub const ACPI_END: u64 = 0xf0000;
/// End of conventional memory below 1 MiB.
pub const EBDA_END: u64 = 0xa0000;
/// Where kernels are loaded.
pub const KERNEL_ADDR: u64 = 0x100000;
/// Start of the 32-bit MMIO gap (IOAPIC, LAPIC, future PCI BARs).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap: RAM continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// KVM's TSS needs three pages somewhere the guest does not use.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Smallest guest memory ftvm accepts.
pub const MIN_MEMORY: u64 = 16 << 20;

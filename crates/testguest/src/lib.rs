//! ftvm's freestanding test guest.
//!
//! [`ELF`] is the guest image: a static ELF64 executable linked at 1 MiB that ftvm boots
//! through its 64-bit entry (`e_entry`, Linux 64-bit boot protocol style; APs through the
//! "FTVM" ELF note) and QEMU boots through its Xen PVH note. It runs a deterministic
//! memory-dirtying workload in ring 3 and prints one checksum line per iteration on COM1;
//! [`reference`] computes the same lines on the host, so a test can check every line a
//! snapshotted, migrated or failed-over VM printed. See `docs/testguest.md`.
//!
//! ```
//! use ftvm_testguest::{params::GuestParams, reference};
//! let p = GuestParams::from_cmdline("console=ttyS0 iters=3 wss_mib=4").unwrap();
//! let lines: Vec<String> = reference::expected_lines(&p, 1).collect();
//! assert_eq!(lines.len(), 3);
//! assert!(lines[0].starts_with("seq=1 sum="));
//! ```

extern crate alloc;

mod elf;
#[doc(hidden)]
pub mod kvfuzz;
pub mod kvlog;
pub mod kvstore;
pub mod params;
pub mod reference;
pub mod resp;
pub mod workload;

/// The guest image (built by `build.rs` from `guest/`).
pub static ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ftvm-testguest.elf"));

/// Guest-physical load address of the image (its lowest PT_LOAD segment).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// ELF note name of the AP entry note ("FTVM", type [`FTVM_NOTE_AP_ENTRY`]).
pub const FTVM_NOTE_NAME: &str = "FTVM";
/// ELF note type whose desc is the u64 64-bit AP entry address.
pub const FTVM_NOTE_AP_ENTRY: u32 = 1;
/// I/O port the guest writes its exit code to (32-bit `out`).
pub const EXIT_PORT: u16 = 0xf4;
/// The guest's serial port (COM1), transmit only.
pub const SERIAL_PORT: u16 = 0x3f8;

/// Symbol of the guest's per-vCPU progress counters: `[u64; 64]` in guest memory, entry
/// `c` = the last iteration vCPU `c` completed (0 before the first). Read it with
/// [`symbol`] to watch a running or restored guest without its serial output.
pub const PROGRESS_SYMBOL: &str = "ftvm_progress";

/// Guest-physical address of a symbol of the guest image (e.g. [`PROGRESS_SYMBOL`],
/// `ftvm_entry64`, `ftvm_ap_entry64`, `ftvm_pvh_entry32`), from the ELF's symbol table.
pub fn symbol(name: &str) -> Option<u64> {
    elf::symbol_in(ELF, name)
}

//! How much one incoming epoch may stage on a receiver (backup or migration target):
//! bounded by the guest it replicates, not by a fixed constant. A legitimate epoch
//! carries each page of guest RAM at most once, every page inside guest memory, and at
//! most each disk's per-epoch write log; a peer that sends more is refused before the
//! receiver's memory is exhausted, and the epoch is discarded (the replica stays at the
//! previous one).

use ftvm_devices::disk::DEFAULT_LOG_LIMIT;
use ftvm_vmm::Vm;
use ftvm_wire::AssemblerConfig;
use vm_memory::GuestMemoryBackend;

/// Room for one epoch's outputs (console bytes, network frames held until the
/// acknowledgement) and its VM state blob.
pub const OUTPUT_AND_STATE_BYTES: u64 = 256 << 20;

/// The assembler limits of a receiver whose VM is `vm`.
pub fn assembler_config(vm: &Vm) -> AssemblerConfig {
    let mem = vm.memory();
    let gpa_end = mem.last_addr().0.saturating_add(1);
    AssemblerConfig::for_guest(
        vm.config().memory,
        gpa_end,
        vm.config().disks.len() as u64,
        DEFAULT_LOG_LIMIT,
        OUTPUT_AND_STATE_BYTES,
    )
}

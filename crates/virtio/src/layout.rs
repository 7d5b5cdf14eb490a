//! Where virtio-mmio devices live in the guest-physical address space and which interrupt
//! line each uses, and the `virtio_mmio.device=` words the guest finds them by.

/// First slot's base address.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Number of slots.
pub const MMIO_SLOTS: usize = 8;
/// GSI of slot 0 (COM1 is 4).
pub const FIRST_GSI: u32 = 5;

/// Base address of slot `i`.
pub fn slot_base(i: usize) -> u64 {
    MMIO_BASE + i as u64 * MMIO_SLOT_SIZE
}

/// Interrupt line (GSI) of slot `i`.
pub fn slot_gsi(i: usize) -> u32 {
    FIRST_GSI + i as u32
}

/// The kernel command-line word that tells Linux (and ftvm's test guest) about slot `i`:
/// `virtio_mmio.device=4K@0xd0000000:5`.
pub fn cmdline_word(i: usize) -> String {
    format!(
        "virtio_mmio.device={}K@{:#x}:{}",
        MMIO_SLOT_SIZE >> 10,
        slot_base(i),
        slot_gsi(i)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_documented_layout() {
        assert_eq!(cmdline_word(0), "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(cmdline_word(7), "virtio_mmio.device=4K@0xd0007000:12");
    }
}

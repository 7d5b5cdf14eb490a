//! ftvm-vmm

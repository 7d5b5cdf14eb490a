//! ftvm's KVM virtual machine: memory, vCPUs, boot, run loop, pause/resume and the
//! capture/restore of complete VM state.

pub mod affinity;
pub mod arch;
pub mod calibrate;
pub mod dirty;
pub mod error;
pub mod exits;
pub mod guest_walk;
pub mod hugepages;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod pause_timeout;
pub mod state;
pub mod syscall_fixup;
pub mod vcpu;
pub mod vcpu_sample;
pub mod virtio;
pub mod vm;

pub use arch::cpuid::CpuProfile;
pub use error::VmmError;
pub use loader::{BootInfo, KernelImage};
pub use vm::{BootSource, RunState, Vm, VmConfig};

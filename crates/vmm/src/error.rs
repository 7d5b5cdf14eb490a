//! Errors of the VM layer. Every message says what failed and, where known, what to do.

use std::path::PathBuf;

/// What went wrong building, booting, running or capturing a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm is absent or unusable.
    #[error("cannot open /dev/kvm: {0} (is the kvm module loaded and do you have permission? try `ls -l /dev/kvm` and run as root or join the kvm group)")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The requested memory size is unusable.
    #[error("invalid memory size: {0}")]
    MemorySize(String),
    /// Guest memory could not be allocated or accessed.
    #[error("guest memory: {0}")]
    MemoryAlloc(String),
    /// The requested vCPU count is unusable.
    #[error("invalid vCPU count {requested}: {reason}")]
    VcpuCount {
        /// What was asked for.
        requested: u32,
        /// Why it cannot be.
        reason: String,
    },
    /// The kernel file could not be read.
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither a usable ELF nor a bzImage.
    #[error(
        "{what} is not a bootable kernel: not an x86_64 ELF ({elf}) and not a bzImage ({bzimage})"
    )]
    KernelFormat {
        /// The kernel's name.
        what: String,
        /// Why the ELF loader refused it.
        elf: String,
        /// Why the bzImage loader refused it.
        bzimage: String,
    },
    /// The initrd could not be read or placed.
    #[error("initrd {path}: {reason}")]
    Initrd {
        /// The path given.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The command line is unusable.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures into guest memory failed.
    #[error("setting up boot data ({what}): {reason}")]
    BootSetup {
        /// Which structure.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The VM's vCPUs did not park in time.
    #[error("vCPUs did not pause within {0} ms")]
    PauseTimeout(u64),
    /// An operation needs the VM paused (or running) and it is not.
    #[error("the VM is {actual}; this needs it {needed}")]
    WrongState {
        /// Current state.
        actual: &'static str,
        /// Needed state.
        needed: &'static str,
    },
    /// A saved state does not fit this VM.
    #[error("saved state does not fit this VM: {0}")]
    StateMismatch(String),
    /// A device's state could not be saved or restored.
    #[error(transparent)]
    DeviceState(#[from] ftvm_devices::StateError),
    /// Encoding or decoding of saved VM state failed.
    #[error("VM state encoding: {0}")]
    StateCodec(String),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for a failed KVM ioctl.
pub fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { op, source }
}

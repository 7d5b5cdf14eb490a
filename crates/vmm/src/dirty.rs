//! KVM dirty-log control beyond what kvm-ioctls wraps: manual write-protection
//! (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) and KVM_CLEAR_DIRTY_LOG.
//!
//! Why: with manual protection the epoch engine reads the log while the vCPUs are parked
//! without write-protecting anything (a bitmap copy), and re-protects the pages after they
//! run again, so the write-protection work stays out of the pause. The guest still pays
//! for re-protection: on this project's nested software-KVM hosts the next write to each
//! re-protected page costs ~20-35 us (measured by the `dirtylog` bench group), which is
//! what limits a protected guest's speed there; see docs/benchmarks.md.

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

use crate::error::VmmError;

const KVMIO: u32 = 0xae;
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// Turn on manual dirty-log protection if KVM offers it; returns whether it is on.
pub fn enable_manual_protect(fd: &VmFd) -> bool {
    if std::env::var_os("FTVM_NO_MANUAL_DIRTY_PROTECT").is_some() {
        return false;
    }
    let supported = fd.check_extension_raw(u64::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2));
    if supported & i32::try_from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE).unwrap_or(1) == 0 {
        return false;
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
    fd.enable_cap(&cap).is_ok()
}

/// KVM_CLEAR_DIRTY_LOG for `num_pages` pages of `slot` from page 0, clearing the bits set
/// in `bitmap` (which must cover `num_pages` bits).
pub fn clear_dirty_log(
    fd: &VmFd,
    slot: u32,
    num_pages: u32,
    bitmap: &mut [u64],
) -> Result<(), VmmError> {
    if (bitmap.len() as u64) * 64 < u64::from(num_pages) {
        return Err(VmmError::MemoryAlloc(format!(
            "clear-dirty bitmap of {} words is too small for {num_pages} pages",
            bitmap.len()
        )));
    }
    let arg = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page: 0,
        __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
            dirty_bitmap: bitmap.as_mut_ptr().cast(),
        },
    };
    // SAFETY: `arg` points at `bitmap`, which is live for the call and holds at least
    // `num_pages` bits (checked above); KVM only reads the struct and the bitmap.
    let ret = unsafe { ioctl_with_ref(fd, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if ret != 0 {
        return Err(VmmError::Kvm {
            op: "KVM_CLEAR_DIRTY_LOG",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

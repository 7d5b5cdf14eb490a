//! `--fence MODE` on the command line, and what the process does when its fence is in
//! doubt (park the vCPUs, withhold output) or gone (exit at once).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ftvm_replication::fencing::{FenceEvent, FenceEvents, FenceMode, LeaseTimes, FENCE_MODES};
use ftvm_replication::outputs::EpochOutputs;
use ftvm_vmm::Vm;

use crate::cli::ReplicationArgs;
use crate::error::CliError;

/// Exit code of a process that lost its fence: another process may run the VM now.
pub const EXIT_FENCE_LOST: i32 = 75;
/// Exit code of a backup that could not take the fence after losing its primary.
pub const EXIT_STALE: i32 = 76;

/// The fence mode from `--fence` (or its alias `--fence-lock PATH`); `None` if neither.
pub fn fence_mode(args: &ReplicationArgs) -> Result<Option<FenceMode>, CliError> {
    let mode = match (&args.fence, &args.fence_lock) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give either --fence or --fence-lock (an alias of --fence lock:PATH), not both"
                    .into(),
            ))
        }
        (Some(spec), None) => {
            FenceMode::parse(spec, args.vm_id.as_deref()).map_err(CliError::Usage)?
        }
        (None, Some(path)) => FenceMode::Lock(path.clone()),
        (None, None) => return Ok(None),
    };
    if mode == FenceMode::None {
        eprintln!(
            "ftvm: WARNING: --fence none: NO FENCING. If the link between primary and backup fails while both live, the backup resumes the VM and TWO COPIES RUN (split brain). Use --fence etcd:... or lock:... in production."
        );
    }
    Ok(Some(mode))
}

/// The fence mode, required: `what` (`--protect`, `ftvm backup`) refuses to start without.
pub fn required_fence_mode(args: &ReplicationArgs, what: &str) -> Result<FenceMode, CliError> {
    fence_mode(args)?.ok_or_else(|| {
        CliError::Usage(format!(
            "{what} needs a fence, so that primary and backup never both run the VM: {FENCE_MODES}; the same on both sides"
        ))
    })
}

/// The lease times for heartbeat timeout `h`.
pub fn lease_times(h: Duration) -> LeaseTimes {
    LeaseTimes::new(h)
}

/// What the fence keeper acts on; filled in once the VM exists.
#[derive(Debug, Default)]
pub struct FenceHooks {
    vm: OnceLock<Arc<Vm>>,
    outputs: OnceLock<Arc<EpochOutputs>>,
}

impl FenceHooks {
    /// Empty hooks.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The VM and its output sink exist now.
    pub fn attach(&self, vm: Arc<Vm>, outputs: Arc<EpochOutputs>) {
        let _set_once = self.vm.set(vm);
        let _set_once = self.outputs.set(outputs);
    }

    /// The event handler to give the fence.
    pub fn events(self: &Arc<Self>) -> FenceEvents {
        let me = self.clone();
        Arc::new(move |e| me.on(e))
    }

    fn on(&self, e: FenceEvent) {
        match e {
            FenceEvent::Suspect(why) => {
                eprintln!(
                    "ftvm: WARNING: SELF-FENCED: {why}; output is withheld and the vCPUs are parked until the fence is proven held again"
                );
                if let Some(vm) = self.vm.get() {
                    vm.set_hold(true);
                }
            }
            FenceEvent::Restored => {
                eprintln!(
                    "ftvm: fence renewed again: releasing withheld output, the vCPUs run again"
                );
                if let Some(o) = self.outputs.get() {
                    o.release_withheld();
                }
                if let Some(vm) = self.vm.get() {
                    vm.set_hold(false);
                }
            }
            FenceEvent::Lost(why) => {
                eprintln!(
                    "ftvm: FENCE LOST: {why}. The backup may own the VM now: this process stops at once without releasing anything more"
                );
                std::process::exit(EXIT_FENCE_LOST);
            }
        }
    }
}

//! A fenced VM process changing roles: primary (running the VM, maybe protected), and,
//! after a planned switchover (`ftvm ctl switchover`), backup of the new primary over the
//! same connection, then primary again at the next switchover or when the new primary is
//! lost, and so on (see `ftvm_replication::switchover`).

use std::sync::Arc;
use std::time::Duration;

use ftvm_devices::bus::lock;
use ftvm_devices::output::DirectOutput;
use ftvm_replication::backup::{Backup, BackupConfig};
use ftvm_replication::fencing::HeldFence;
use ftvm_replication::outputs::EpochOutputs;
use ftvm_replication::primary::{Primary, PrimaryConfig};
use ftvm_replication::status::Role;
use ftvm_replication::switchover::{
    hand_over, prepare_adopted_primary, standby, Adopted, SwitchedIn,
};
use ftvm_replication::ReplicationError;
use ftvm_vmm::vcpu::VmEvent;
use ftvm_vmm::vm::RunState;
use ftvm_vmm::Vm;
use serde_json::{json, Value};

use crate::api::error;
use crate::error::CliError;
use crate::fencing::EXIT_STALE;
use crate::run::{exit_code, ServiceSlot};
use crate::service::{Protectable, VmService};

/// What a process needs to take either role.
pub struct Roles {
    /// Settings when this process is the backup (after switching out).
    pub backup: BackupConfig,
    /// Settings when this process protects the VM over a switchover link.
    pub primary: PrimaryConfig,
    /// The VM's output sink.
    pub sink: Arc<EpochOutputs>,
    /// The console behind it (a takeover releases held output here).
    pub direct: Arc<DirectOutput>,
    /// No informational messages.
    pub quiet: bool,
}

/// How this process starts running the VM.
pub enum Start {
    /// Booted or taken over: protect it now with `Some`, or later through the API.
    Run(Option<PrimaryConfig>),
    /// After a planned switchover: the link to the old primary.
    Switched(SwitchedIn),
}

/// Run the VM as primary, holding `fence`, and change roles at each planned switchover
/// until the guest ends (here or on the other side); returns the exit code.
pub fn serve_roles(
    vm: Arc<Vm>,
    slot: &ServiceSlot,
    protectable: Protectable,
    mut start: Start,
    mut fence: HeldFence,
    roles: &Roles,
) -> Result<i32, CliError> {
    loop {
        let service = Arc::new(VmService::new(vm.clone(), protectable.clone()));
        *lock(slot) = Some(service.clone());
        roles.sink.set_fence_gate(fence.gate());
        let (adopted, protect_now) = match start {
            Start::Switched(s) if s.peer_stays => (Some(s), None),
            Start::Switched(s) => {
                eprintln!(
                    "ftvm: WARNING: the old primary stopped at the switchover (--stop): the VM runs UNPROTECTED from epoch {} on; protect it again with `ftvm ctl protect`",
                    s.epoch
                );
                (None, None)
            }
            Start::Run(cfg) => (None, cfg),
        };
        if adopted.is_some() {
            // Before any vCPU runs: hold output, track every page and disk write.
            prepare_adopted_primary(&vm, &roles.sink, &roles.primary.disks)?;
        }
        if vm.run_state() == RunState::Paused {
            vm.resume()?;
        } else {
            vm.start(false)?;
        }
        if let Some(s) = adopted {
            let mut cfg = roles.primary.clone();
            cfg.backup = s.link.peer();
            let epoch = s.epoch;
            let primary = Primary::adopt(
                vm.clone(),
                roles.sink.clone(),
                cfg,
                Adopted {
                    link: s.link,
                    epoch,
                },
            );
            service.protect_with(primary).map_err(CliError::Usage)?;
        } else if let Some(cfg) = protect_now {
            service.protect(cfg).map_err(CliError::Usage)?;
        }
        // Until the guest ends or a switchover hands the VM to the backup.
        let mut so = loop {
            if let Some(event) = vm.wait_event(Some(Duration::from_millis(50))) {
                if matches!(event, VmEvent::Exit(_) | VmEvent::Crash(_)) {
                    // Before the Goodbye: a backup that misses it still finds the VM ended.
                    if let Err(e) = fence.mark_ended() {
                        eprintln!("ftvm: WARNING: the guest ended but the fence could not say so ({e}); a backup that misses the goodbye may take over");
                    }
                }
                service.stop_protection();
                vm.shutdown();
                return Ok(exit_code(Some(event), roles.quiet));
            }
            if let Some(so) = service.take_switched_out() {
                break so;
            }
        };
        service.stop_protection();
        let peer = so.link.peer();
        if let Err(e) = hand_over(&mut so, &mut fence, &roles.sink, &vm, &roles.primary.disks) {
            // The gate is closed and the fence released: the backup (if it lives) or this
            // process (below, as the backup of a lost primary) takes the fence.
            eprintln!("ftvm: WARNING: could not tell {peer} the switchover is done: {e}");
        }
        let done = so.done();
        so.answer(Ok(done.clone()));
        if so.stop {
            eprintln!(
                "ftvm: SWITCHOVER: the VM runs on {peer} from epoch {} on (vCPUs parked here {:.1} ms); this process stops (--stop)",
                done.epoch,
                done.pause.as_secs_f64() * 1000.0
            );
            // Let the API answer go out (its after-hook ends the wait at once).
            let _ = vm.wait_event(Some(Duration::from_secs(5)));
            vm.shutdown();
            return Ok(0);
        }
        eprintln!(
            "ftvm: SWITCHOVER: the VM runs on {peer} from epoch {} on (vCPUs parked here {:.1} ms); this process is its backup now",
            done.epoch,
            done.pause.as_secs_f64() * 1000.0
        );
        let backup = Arc::new(Backup::default());
        service.set_standby(Some(backup.clone()));
        let watched = match standby(&backup, so, vm.clone(), &roles.backup, &roles.direct) {
            Err(ReplicationError::Stale(why)) => {
                eprintln!("ftvm: STALE: {why}");
                vm.shutdown();
                return Ok(EXIT_STALE);
            }
            other => other?,
        };
        let Some(t) = watched else {
            if !roles.quiet {
                eprintln!("ftvm: the primary's guest ended normally; nothing to take over");
            }
            vm.shutdown();
            return Ok(0);
        };
        match &t.switched {
            Some(s) => eprintln!(
                "ftvm: SWITCHOVER: this process runs the VM now, from epoch {} ({:.1} ms from the hand-over to resume)",
                s.epoch,
                t.detected.elapsed().as_secs_f64() * 1000.0
            ),
            None => eprintln!(
                "ftvm: TAKEOVER: {}; resuming from epoch {} ({:.1} ms from detection to resume)",
                t.reason,
                t.epoch,
                t.detected.elapsed().as_secs_f64() * 1000.0
            ),
        }
        backup.set_role(Role::Unprotected);
        fence = t.fence;
        start = match t.switched {
            Some(s) => Start::Switched(s),
            None => Start::Run(None),
        };
    }
}

/// API requests while this process is the backup after a switchover.
pub fn standby_request(backup: &Backup, memory: u64, req: &Value) -> Value {
    match req.get("cmd").and_then(Value::as_str) {
        Some("status") => {
            let r = backup.status_json();
            json!({"ok": true, "role": r["role"], "state": "replica", "memory_bytes": memory, "replication": r})
        }
        Some("failover") => {
            backup.request_failover();
            json!({"ok": true})
        }
        Some("switchover") => error(
            "this process is the backup (since a switchover): ask the primary for the switchover (`ftvm ctl --api-socket <the primary's socket> switchover`)",
        ),
        Some(other) => error(&format!(
            "'{other}' is not available on a backup (known: status, failover)"
        )),
        None => error("request has no cmd"),
    }
}

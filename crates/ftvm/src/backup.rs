//! `ftvm backup`: hold a replica of a protected VM and take over when its primary is lost.

use std::net::TcpListener;
use std::sync::Arc;

use ftvm_replication::backup::{Backup, BackupConfig};
use ftvm_replication::outputs::EpochOutputs;
use ftvm_replication::status::Role;
use ftvm_replication::ReplicationError;
use ftvm_vmm::Vm;
use serde_json::{json, Value};

use crate::api::error;
use crate::cli::BackupArgs;
use crate::error::CliError;
use crate::fencing::{lease_times, required_fence_mode, FenceHooks, EXIT_STALE};
use crate::output::serial_output;
use crate::run::{default_protection, heartbeat_timeout, read_key, start_api, ServiceSlot};
use crate::size::parse_duration;
use crate::vmargs::vm_config;

/// Watch the primary; on its loss, take over and run the VM. Returns the exit code.
pub fn backup(args: &BackupArgs) -> Result<i32, CliError> {
    let output = serial_output(&args.console.serial)?;
    let sink = EpochOutputs::new(output.clone());
    let config = vm_config(&args.vm, sink.clone(), &output)?;
    let epoch =
        parse_duration(&args.epoch).map_err(|e| CliError::Usage(format!("--epoch: {e}")))?;
    let fence = required_fence_mode(&args.replication, "ftvm backup")?;
    let hb = heartbeat_timeout(&args.replication, epoch)?;
    let hooks = FenceHooks::new();
    let cfg = BackupConfig {
        heartbeat_timeout: hb,
        key: read_key(&args.replication)?,
        fence,
        lease: lease_times(hb),
        fence_events: hooks.events(),
        disks: config.disks.clone(),
    };
    let vm = Arc::new(Vm::create(config)?);
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| ReplicationError::io(&format!("listening on {}", args.listen), e))?;
    let watcher = Arc::new(Backup::default());
    let slot = ServiceSlot::default();
    let w = watcher.clone();
    let memory = vm.config().memory;
    let fallback = Arc::new(move |req: &Value| {
        match req.get("cmd").and_then(Value::as_str) {
            Some("status") => {
                let r = w.status_json();
                json!({"ok": true, "role": r["role"], "state": "replica", "memory_bytes": memory, "replication": r})
            }
            Some("failover") => {
                w.request_failover();
                json!({"ok": true})
            }
            Some("switchover") => error(
                "switchover refused: this process is the backup; ask the primary (`ftvm ctl --api-socket <the primary's socket> switchover`)",
            ),
            Some(other) => error(&format!(
                "'{other}' is not available on a backup before takeover (known: status, failover)"
            )),
            None => error("request has no cmd"),
        }
    });
    let _api = start_api(args.console.api_socket.as_deref(), &slot, Some(fallback))?;
    if !args.console.quiet {
        eprintln!(
            "ftvm: backup waiting for a primary on {} ({} vCPU(s), {} MiB, heartbeat timeout {} ms)",
            args.listen,
            vm.config().cpus,
            vm.config().memory >> 20,
            cfg.heartbeat_timeout.as_millis()
        );
    }
    let watched = match watcher.watch(&listener, vm.clone(), &cfg, &output) {
        Err(ReplicationError::Stale(why)) => {
            eprintln!("ftvm: STALE: {why}");
            return Ok(EXIT_STALE);
        }
        other => other?,
    };
    let Some(takeover) = watched else {
        if !args.console.quiet {
            eprintln!("ftvm: the primary's guest ended normally; nothing to take over");
        }
        return Ok(0);
    };
    let result = {
        let took = takeover.detected.elapsed();
        match &takeover.switched {
            Some(s) => eprintln!(
                "ftvm: SWITCHOVER: this process runs the VM now, from epoch {} ({:.1} ms from the hand-over to resume)",
                s.epoch,
                took.as_secs_f64() * 1000.0
            ),
            None => eprintln!(
                "ftvm: TAKEOVER: {}; resuming from epoch {} ({:.1} ms from detection to resume)",
                takeover.reason,
                takeover.epoch,
                took.as_secs_f64() * 1000.0
            ),
        }
        watcher.set_role(Role::Unprotected);
        sink.set_fence_gate(takeover.fence.gate());
        hooks.attach(vm.clone(), sink.clone());
        let mut protectable = default_protection(sink.clone(), cfg.key.clone());
        protectable.fenced = true;
        protectable.defaults.disks = cfg.disks.clone();
        protectable.defaults.epoch = epoch;
        protectable.defaults.heartbeat_timeout = hb;
        let roles = crate::roles::Roles {
            backup: cfg.clone(),
            primary: protectable.defaults.clone(),
            sink,
            direct: output,
            quiet: args.console.quiet,
        };
        let start = match takeover.switched {
            Some(s) => crate::roles::Start::Switched(s),
            None => crate::roles::Start::Run(None),
        };
        crate::roles::serve_roles(vm, &slot, protectable, start, takeover.fence, &roles)
    };
    result
}

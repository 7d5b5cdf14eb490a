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
use crate::output::serial_output;
use crate::run::{default_protection, heartbeat_timeout, read_key, serve, start_api, ServiceSlot};
use crate::size::parse_duration;
use crate::vmargs::vm_config;

/// Watch the primary; on its loss, take over and run the VM. Returns the exit code.
pub fn backup(args: &BackupArgs) -> Result<i32, CliError> {
    let output = serial_output(&args.console.serial)?;
    let sink = EpochOutputs::new(output.clone());
    let config = vm_config(&args.vm, sink.clone(), &output)?;
    let epoch =
        parse_duration(&args.epoch).map_err(|e| CliError::Usage(format!("--epoch: {e}")))?;
    let cfg = BackupConfig {
        heartbeat_timeout: heartbeat_timeout(&args.replication, epoch)?,
        key: read_key(&args.replication)?,
        fence: args.replication.fence_lock.clone(),
    };
    let vm = Arc::new(Vm::create(config)?);
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| ReplicationError::io(&format!("listening on {}", args.listen), e))?;
    let watcher = Arc::new(Backup::default());
    let slot = ServiceSlot::default();
    let w = watcher.clone();
    let memory = vm.config().memory;
    let fallback = Arc::new(
        move |req: &Value| match req.get("cmd").and_then(Value::as_str) {
            Some("status") => {
                let r = w.status_json();
                json!({"ok": true, "role": r["role"], "state": "replica", "memory_bytes": memory, "replication": r})
            }
            Some("failover") => {
                w.request_failover();
                json!({"ok": true})
            }
            Some(other) => error(&format!(
                "'{other}' is not available on a backup before takeover (known: status, failover)"
            )),
            None => error("request has no cmd"),
        },
    );
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
    let Some(takeover) = watcher.watch(&listener, vm.clone(), &cfg, &output)? else {
        if !args.console.quiet {
            eprintln!("ftvm: the primary's guest ended normally; nothing to take over");
        }
        return Ok(0);
    };
    let result = {
        let took = takeover.detected.elapsed();
        eprintln!(
            "ftvm: TAKEOVER: {}; resuming from epoch {} ({:.1} ms from detection to resume)",
            takeover.reason,
            takeover.epoch,
            took.as_secs_f64() * 1000.0
        );
        watcher.set_role(Role::Unprotected);
        serve(
            vm,
            &slot,
            default_protection(sink, cfg.key.clone()),
            None,
            false,
            args.console.quiet,
        )
    };
    result
}

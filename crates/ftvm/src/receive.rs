//! `ftvm receive`: the target of a live migration.

use std::net::TcpListener;
use std::sync::Arc;

use ftvm_replication::outputs::EpochOutputs;
use ftvm_replication::{migrate, ReplicationError};
use ftvm_vmm::Vm;

use crate::cli::ReceiveArgs;
use crate::error::CliError;
use crate::output::serial_output;
use crate::run::{default_protection, read_key_file, serve, start_api, ServiceSlot};
use crate::vmargs::vm_config;

/// Wait for the VM, then run it; returns the exit code.
pub fn receive(args: &ReceiveArgs) -> Result<i32, CliError> {
    let output = serial_output(&args.console.serial)?;
    let sink = EpochOutputs::new(output.clone());
    let config = vm_config(&args.vm, sink.clone(), &output)?;
    let disks = config.disks.clone();
    let vm = Arc::new(Vm::create(config)?);
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| ReplicationError::io(&format!("listening on {}", args.listen), e))?;
    if !args.console.quiet {
        eprintln!(
            "ftvm: waiting for a migration on {} ({} vCPU(s), {} MiB)",
            args.listen,
            vm.config().cpus,
            vm.config().memory >> 20
        );
    }
    let key = read_key_file(args.key_file.as_deref())?;
    let replica = migrate::receive(&listener, vm.clone(), &output, key.as_deref())?;
    if !args.console.quiet {
        eprintln!(
            "ftvm: migration received (epoch {}), starting the VM",
            replica.committed().unwrap_or(0)
        );
    }
    let slot = ServiceSlot::default();
    let _api = start_api(args.console.api_socket.as_deref(), &slot, None)?;
    let mut protectable = default_protection(sink, key);
    protectable.defaults.disks = disks;
    serve(vm, &slot, protectable, None, false, args.console.quiet)
}

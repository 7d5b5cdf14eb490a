//! `ftvm receive`: the target of a live migration.

use std::net::TcpListener;
use std::sync::Arc;

use ftvm_replication::{migrate, ReplicationError};
use ftvm_vmm::Vm;

use crate::cli::ReceiveArgs;
use crate::error::CliError;
use crate::output::serial_output;
use crate::run::serve;
use crate::vmargs::vm_config;

/// Wait for the VM, then run it; returns the exit code.
pub fn receive(args: &ReceiveArgs) -> Result<i32, CliError> {
    let output = serial_output(&args.serial)?;
    let config = vm_config(&args.vm, output.clone())?;
    let vm = Arc::new(Vm::create(config)?);
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| ReplicationError::io(&format!("listening on {}", args.listen), e))?;
    if !args.quiet {
        eprintln!(
            "ftvm: waiting for a migration on {} ({} vCPU(s), {} MiB)",
            args.listen,
            vm.config().cpus,
            vm.config().memory >> 20
        );
    }
    let replica = migrate::receive(&listener, vm.clone(), &output)?;
    if !args.quiet {
        eprintln!(
            "ftvm: migration received (epoch {}), starting the VM",
            replica.committed().unwrap_or(0)
        );
    }
    serve(vm, args.api_socket.as_deref(), false, args.quiet)
}

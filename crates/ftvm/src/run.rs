//! `ftvm run`: boot a VM and run it until the guest ends.

use std::sync::Arc;

use ftvm_vmm::vcpu::VmEvent;
use ftvm_vmm::Vm;

use crate::api::ApiServer;
use crate::cli::RunArgs;
use crate::error::CliError;
use crate::output::serial_output;
use crate::service::VmService;
use crate::vmargs::{boot_source, vm_config};

/// Exit code for a guest crash.
pub const EXIT_GUEST_CRASH: i32 = 70;

/// Run the VM; returns the process exit code.
pub fn run(args: &RunArgs) -> Result<i32, CliError> {
    let output = serial_output(&args.serial)?;
    let source = boot_source(&args.vm)?;
    let config = vm_config(&args.vm, output)?;
    let vm = Arc::new(Vm::create(config)?);
    let info = vm.boot(&source)?;
    if !args.quiet {
        eprintln!(
            "ftvm: booting {} ({:?}, entry {:#x}) with {} vCPU(s), {} MiB, CPU profile {:?}",
            source.kernel.name,
            info.format,
            info.entry,
            vm.config().cpus,
            vm.config().memory >> 20,
            vm.config().cpu_profile
        );
    }
    serve(vm, args.api_socket.as_deref(), false, args.quiet)
}

/// Start the VM's vCPUs (or leave them parked with `paused`), serve the API socket, and
/// wait for the guest to end; returns the exit code.
pub fn serve(
    vm: Arc<Vm>,
    api_socket: Option<&std::path::Path>,
    paused: bool,
    quiet: bool,
) -> Result<i32, CliError> {
    let service = Arc::new(VmService::new(vm.clone(), "unprotected"));
    let _api = match api_socket {
        Some(path) => {
            let s = service.clone();
            Some(ApiServer::start(
                path,
                Arc::new(move |req, progress| s.handle(req, progress)),
            )?)
        }
        None => None,
    };
    vm.start(paused)?;
    let event = vm.wait_event(None);
    vm.shutdown();
    Ok(exit_code(event, quiet))
}

/// The process exit code for how the guest ended, printing crash reports.
pub fn exit_code(event: Option<VmEvent>, quiet: bool) -> i32 {
    match event {
        Some(VmEvent::Exit(code)) => {
            if !quiet {
                eprintln!("ftvm: guest exited with code {code}");
            }
            i32::try_from(code).unwrap_or(i32::MAX).min(255)
        }
        Some(VmEvent::Handoff(where_to)) => {
            if !quiet {
                eprintln!("ftvm: {where_to}; this process is done");
            }
            0
        }
        Some(VmEvent::Crash(report)) => {
            eprintln!("ftvm: guest crashed: {report}");
            EXIT_GUEST_CRASH
        }
        None => 0,
    }
}

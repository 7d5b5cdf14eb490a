//! `ftvm restore`: continue a VM from a snapshot in a new process.

use std::sync::Arc;

use ftvm_replication::outputs::EpochOutputs;
use ftvm_replication::{snapshot, snapshot_disks};
use ftvm_vmm::{Vm, VmConfig};

use crate::cli::RestoreArgs;
use crate::error::CliError;
use crate::output::serial_output;
use crate::run::{default_protection, serve, start_api, ServiceSlot};

/// Restore and run; returns the exit code.
pub fn restore(args: &RestoreArgs) -> Result<i32, CliError> {
    let snap = snapshot::load(&args.from)?;
    // A snapshot with disks rebuilds each --disk image from its chain first.
    let targets = args
        .disks
        .iter()
        .map(|s| crate::disks::parse_disk_spec(s).map(|d| d.path))
        .collect::<Result<Vec<_>, _>>()?;
    let restored = snapshot_disks::restore_images(&snap.chain, &targets)?;
    let disks = crate::disks::open_disks(&args.disks)?;
    let shape = snap.shape();
    let direct = serial_output(&args.console.serial)?;
    let net = crate::net::open_net(&args.net, &direct)?;
    let sink = EpochOutputs::new(direct);
    let vm = Arc::new(Vm::create(VmConfig {
        memory: shape.memory,
        cpus: shape.cpus,
        cpu_profile: shape.cpu_profile,
        output: sink.clone(),
        net,
        disks: disks.clone(),
        syscall_fixup: crate::vmargs::syscall_fixup(&args.cpu_fixups),
    })?);
    snapshot::restore_into(&vm, &snap)?;
    // The VM may now be on another host or TAP: tell the network where its MAC is.
    vm.announce_network();
    if !args.console.quiet {
        eprintln!(
            "ftvm: restored {} ({} snapshot(s) in the chain): {} vCPU(s), {} MiB, guest clock {} ms",
            args.from.display(),
            snap.chain.len(),
            shape.cpus,
            shape.memory >> 20,
            vm.fd().get_clock().map_or(0, |c| c.clock / 1_000_000)
        );
    }
    if !args.console.quiet {
        for r in &restored {
            eprintln!(
                "ftvm: restored disk image {} ({} MiB) from the snapshot, {} block(s) from diffs",
                r.path.display(),
                r.size >> 20,
                r.diff_blocks
            );
        }
    }
    let slot = ServiceSlot::default();
    let _api = start_api(args.console.api_socket.as_deref(), &slot, None)?;
    let mut protectable = default_protection(sink, None);
    protectable.defaults.disks = disks;
    serve(
        vm,
        &slot,
        protectable,
        None,
        args.paused,
        args.console.quiet,
    )
}

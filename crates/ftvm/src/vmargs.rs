//! Turning `VmArgs` into a VM configuration and boot source.

use std::sync::Arc;

use ftvm_devices::output::DirectOutput;
use ftvm_devices::OutputSink;
use ftvm_vmm::{BootSource, CpuProfile, KernelImage, VmConfig, VmmError};

use crate::cli::{CpuFixupArg, CpuProfileArg, VmArgs};
use crate::error::CliError;
use crate::net::open_net;
use crate::size::parse_size;

/// The name that selects the built-in test guest.
pub const TESTGUEST: &str = "@testguest";

/// The VM shape from the arguments.
pub fn vm_config(
    args: &VmArgs,
    output: Arc<dyn OutputSink>,
    direct: &DirectOutput,
) -> Result<VmConfig, CliError> {
    if let Some(a) = &args.cpu_affinity {
        let plan = ftvm_vmm::affinity::CpuAffinity::parse(a)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        ftvm_vmm::affinity::install(plan).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let net = open_net(&args.net, direct)?;
    let memory = parse_size(&args.memory).map_err(|e| CliError::Usage(format!("--memory: {e}")))?;
    if memory % 4096 != 0 {
        return Err(CliError::Usage(format!(
            "--memory {}: must be a multiple of 4 KiB",
            args.memory
        )));
    }
    Ok(VmConfig {
        memory,
        cpus: args.cpus,
        cpu_profile: match args.cpu_profile {
            CpuProfileArg::Auto => CpuProfile::detect(),
            CpuProfileArg::Host => CpuProfile::Host,
            CpuProfileArg::Emulator => CpuProfile::Emulator,
        },
        output,
        net,
        disks: crate::disks::open_disks(&args.disks)?,
        syscall_fixup: syscall_fixup(&args.cpu_fixups),
    })
}

/// Whether `--cpu-fixups` asks for the ring-3 system call completion.
pub fn syscall_fixup(fixups: &[CpuFixupArg]) -> bool {
    fixups.contains(&CpuFixupArg::Syscall)
}

/// The kernel, command line and initrd from the arguments.
pub fn boot_source(args: &VmArgs) -> Result<BootSource, CliError> {
    let Some(kernel_arg) = &args.kernel else {
        return Err(CliError::Usage(
            "--kernel is required: a kernel path, or @testguest for the built-in test guest".into(),
        ));
    };
    let kernel = if kernel_arg == TESTGUEST {
        KernelImage {
            name: TESTGUEST.to_string(),
            bytes: ftvm_testguest::ELF.to_vec(),
        }
    } else {
        let bytes = std::fs::read(kernel_arg).map_err(|source| VmmError::KernelRead {
            path: kernel_arg.into(),
            source,
        })?;
        KernelImage {
            name: kernel_arg.clone(),
            bytes,
        }
    };
    if let Some(initrd) = &args.initrd {
        if !initrd.is_file() {
            return Err(CliError::Usage(format!(
                "--initrd {}: no such file",
                initrd.display()
            )));
        }
    }
    Ok(BootSource {
        kernel,
        cmdline: args.cmdline.clone(),
        initrd: args.initrd.clone(),
    })
}

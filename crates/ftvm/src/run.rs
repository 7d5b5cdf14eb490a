//! `ftvm run`: boot a VM and run it until the guest ends.

use std::sync::Arc;

use ftvm_vmm::vcpu::VmEvent;
use ftvm_vmm::Vm;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ftvm_devices::bus::lock;
use ftvm_replication::fencing::HeldFence;
use ftvm_replication::outputs::EpochOutputs;
use ftvm_replication::primary::{PrimaryConfig, MIN_HEARTBEAT_TIMEOUT};
use serde_json::Value;

use crate::api::{AfterHook, ApiServer};
use crate::cli::{ReplicationArgs, RunArgs};
use crate::error::CliError;
use crate::fencing::{fence_mode, lease_times, required_fence_mode, FenceHooks};
use crate::output::serial_output;
use crate::service::{Protectable, VmService};
use crate::size::parse_duration;
use crate::vmargs::{boot_source, vm_config};

/// Exit code for a guest crash.
pub const EXIT_GUEST_CRASH: i32 = 70;

/// Run the VM; returns the process exit code.
pub fn run(args: &RunArgs) -> Result<i32, CliError> {
    let direct = serial_output(&args.console.serial)?;
    let source = boot_source(&args.vm)?;
    let mut protect = protect_config(args)?;
    // The fence is held for as long as this process may run the VM; protection needs one.
    let mode = if args.protect.is_some() {
        Some(required_fence_mode(&args.replication, "--protect")?)
    } else {
        fence_mode(&args.replication)?
    };
    let epoch =
        parse_duration(&args.epoch).map_err(|e| CliError::Usage(format!("--epoch: {e}")))?;
    let hooks = FenceHooks::new();
    let fence = match &mode {
        Some(m) => Some(HeldFence::acquire(
            m,
            lease_times(heartbeat_timeout(&args.replication, epoch)?),
            hooks.events(),
        )?),
        None => None,
    };
    // A protected VM's output goes through output commit; an unprotected one's straight out.
    // Output goes through the output-commit sink always: unprotected it writes at once,
    // and the VM can be protected later (`ftvm ctl protect`).
    let epoch_outputs = EpochOutputs::new(direct.clone());
    if let Some(f) = &fence {
        epoch_outputs.set_fence_gate(f.gate());
    }
    let config = vm_config(&args.vm, epoch_outputs.clone(), &direct)?;
    // The disks the VM's devices write are the ones replication drains.
    let disks = config.disks.clone();
    if let Some(cfg) = &mut protect {
        cfg.disks = disks.clone();
    }
    let vm = Arc::new(Vm::create(config)?);
    hooks.attach(vm.clone(), epoch_outputs.clone());
    let sink = epoch_outputs.clone();
    let mut protectable = default_protection(epoch_outputs, read_key(&args.replication)?);
    protectable.fenced = fence.is_some();
    protectable.defaults.disks = disks;
    if let Some(cfg) = &protect {
        protectable.defaults = cfg.clone();
    }
    let info = vm.boot(&source)?;
    if !args.console.quiet {
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
    let slot = ServiceSlot::default();
    let _api = start_api(args.console.api_socket.as_deref(), &slot, None)?;
    let Some(fence) = fence else {
        return serve_fenced(vm, &slot, protectable, protect, args.console.quiet, None);
    };
    // A fenced VM can change roles (planned switchover).
    let hb = heartbeat_timeout(&args.replication, epoch)?;
    let roles = crate::roles::Roles {
        backup: ftvm_replication::backup::BackupConfig {
            heartbeat_timeout: hb,
            key: read_key(&args.replication)?,
            fence: fence.mode().clone(),
            lease: lease_times(hb),
            fence_events: hooks.events(),
            disks: protectable.defaults.disks.clone(),
        },
        primary: protectable.defaults.clone(),
        sink,
        direct,
        quiet: args.console.quiet,
    };
    crate::roles::serve_roles(
        vm,
        &slot,
        protectable,
        crate::roles::Start::Run(protect),
        fence,
        &roles,
    )
}

/// Where API requests go: to the running VM's service once there is one, before that to
/// a fallback (the backup's).
pub type ServiceSlot = Arc<Mutex<Option<Arc<VmService>>>>;

/// A fallback handler for requests before the VM runs.
pub type Fallback = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// Start the API socket (if asked for), serving whatever the slot holds.
pub fn start_api(
    path: Option<&Path>,
    slot: &ServiceSlot,
    fallback: Option<Fallback>,
) -> Result<Option<ApiServer>, CliError> {
    let Some(path) = path else { return Ok(None) };
    let hook_slot = slot.clone();
    let slot = slot.clone();
    let handler = move |req: &Value, progress: &mut dyn FnMut(Value)| {
        let svc = lock(&slot).clone();
        match (svc, &fallback) {
            (Some(s), _) => s.handle(req, progress),
            (None, Some(f)) => f(req),
            (None, None) => crate::api::error("the VM is not running yet"),
        }
    };
    let after: AfterHook = Arc::new(move |where_to: &str| {
        if let Some(s) = lock(&hook_slot).clone() {
            s.hand_off(where_to);
        }
    });
    Ok(Some(ApiServer::start(
        path,
        Arc::new(handler),
        Some(after),
    )?))
}

/// Start the VM's vCPUs (or leave them parked with `paused`), protect it now if
/// `protect_now` is given (or later through the API), serve API requests through `slot`,
/// and wait for the guest to end; returns the exit code.
pub fn serve(
    vm: Arc<Vm>,
    slot: &ServiceSlot,
    protectable: Protectable,
    protect_now: Option<PrimaryConfig>,
    paused: bool,
    quiet: bool,
) -> Result<i32, CliError> {
    serve_with(vm, slot, protectable, protect_now, paused, quiet, None)
}

/// [`serve`] for a VM whose fence this process holds: a guest that ends leaves `ended` in
/// the fence, so that no backup brings it back.
pub fn serve_fenced(
    vm: Arc<Vm>,
    slot: &ServiceSlot,
    protectable: Protectable,
    protect_now: Option<PrimaryConfig>,
    quiet: bool,
    fence: Option<&HeldFence>,
) -> Result<i32, CliError> {
    serve_with(vm, slot, protectable, protect_now, false, quiet, fence)
}

fn serve_with(
    vm: Arc<Vm>,
    slot: &ServiceSlot,
    protectable: Protectable,
    protect_now: Option<PrimaryConfig>,
    paused: bool,
    quiet: bool,
    fence: Option<&HeldFence>,
) -> Result<i32, CliError> {
    let service = Arc::new(VmService::new(vm.clone(), protectable));
    *lock(slot) = Some(service.clone());
    vm.start(paused)?;
    if let Some(cfg) = protect_now {
        service.protect(cfg).map_err(CliError::Usage)?;
    }
    let event = vm.wait_event(None);
    if let (Some(f), Some(VmEvent::Exit(_) | VmEvent::Crash(_))) = (fence, &event) {
        // Before the Goodbye: a backup that misses it still finds the VM ended.
        if let Err(e) = f.mark_ended() {
            eprintln!("ftvm: WARNING: the guest ended but the fence could not say so ({e}); a backup that misses the goodbye may take over");
        }
    }
    service.stop_protection();
    vm.shutdown();
    Ok(exit_code(event, quiet))
}

/// Replication settings for a VM that is not protected yet (re-protection through the
/// API): the defaults, with the key from `--key-file` if given.
pub fn default_protection(outputs: Arc<EpochOutputs>, key: Option<Vec<u8>>) -> Protectable {
    let epoch = Duration::from_millis(10);
    Protectable {
        outputs,
        fenced: false,
        defaults: PrimaryConfig {
            backup: String::new(),
            epoch,
            heartbeat_timeout: (epoch * 20).max(Duration::from_millis(500)),
            max_in_flight: 2,
            key,
            hot: ftvm_replication::hot::HotConfig::default(),
            disks: Vec::new(),
        },
    }
}

/// The primary's settings from `--protect` and friends; `None` without `--protect`.
fn protect_config(args: &RunArgs) -> Result<Option<PrimaryConfig>, CliError> {
    let Some(backup) = &args.protect else {
        return Ok(None);
    };
    let epoch =
        parse_duration(&args.epoch).map_err(|e| CliError::Usage(format!("--epoch: {e}")))?;
    if epoch < Duration::from_micros(500) || epoch > Duration::from_secs(10) {
        return Err(CliError::Usage(format!(
            "--epoch {}: choose between 500us and 10s",
            args.epoch
        )));
    }
    Ok(Some(PrimaryConfig {
        backup: backup.clone(),
        epoch,
        heartbeat_timeout: heartbeat_timeout(&args.replication, epoch)?,
        max_in_flight: args.max_in_flight.max(1),
        key: read_key(&args.replication)?,
        hot: ftvm_replication::hot::HotConfig {
            enabled: args.hot_pages == "on",
            ..Default::default()
        },
        disks: Vec::new(),
    }))
}

/// `--heartbeat-timeout`, or the default: 20 epochs, at least 500 ms; never below
/// [`MIN_HEARTBEAT_TIMEOUT`].
pub fn heartbeat_timeout(args: &ReplicationArgs, epoch: Duration) -> Result<Duration, CliError> {
    let t = match &args.heartbeat_timeout {
        Some(s) => {
            parse_duration(s).map_err(|e| CliError::Usage(format!("--heartbeat-timeout: {e}")))?
        }
        None => (epoch * 20).max(Duration::from_millis(500)),
    };
    if t < MIN_HEARTBEAT_TIMEOUT {
        return Err(CliError::Usage(format!(
            "--heartbeat-timeout {t:?} is below the minimum of {MIN_HEARTBEAT_TIMEOUT:?}: a busy host would cause false failovers"
        )));
    }
    Ok(t)
}

/// The pre-shared key from `--key-file`, if any.
pub fn read_key(args: &ReplicationArgs) -> Result<Option<Vec<u8>>, CliError> {
    read_key_file(args.key_file.as_deref())
}

/// The pre-shared key in `path`, if given (surrounding whitespace trimmed, 16+ bytes).
pub fn read_key_file(path: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, CliError> {
    match path {
        Some(p) => {
            let k = std::fs::read(p).map_err(|source| CliError::Open {
                what: "key file",
                path: p.to_path_buf(),
                source,
            })?;
            let k: Vec<u8> = k.trim_ascii().to_vec();
            if k.len() < 16 {
                return Err(CliError::Usage(format!(
                    "--key-file {}: the key must have at least 16 bytes",
                    p.display()
                )));
            }
            Ok(Some(k))
        }
        None => Ok(None),
    }
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

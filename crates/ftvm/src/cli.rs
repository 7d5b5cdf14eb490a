//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ftvm: a KVM virtual machine monitor that keeps a VM running through the loss of its host.
///
/// The primary replicates the VM's whole state to a backup every few milliseconds and holds
/// back everything the VM sends out until the backup has it; the backup takes over when the
/// primary dies. `ftvm audit` finds code in guest software that hurts fault tolerance.
#[derive(Debug, Parser)]
#[command(name = "ftvm", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot and run a VM.
    Run(RunArgs),
    /// Continue a VM from a snapshot (full or diff) in this new process.
    Restore(RestoreArgs),
    /// Wait for a live migration (`ftvm ctl migrate`) and run the VM it brings.
    Receive(ReceiveArgs),
    /// Be the backup of a protected VM (`ftvm run --protect`): keep its replica and take
    /// over when the primary is lost.
    Backup(BackupArgs),
    /// Talk to a running ftvm through its API socket.
    Ctl(CtlArgs),
    /// Find code in guest software that hurts fault tolerance, and name the refactoring.
    Audit(ftvm_audit::cli::AuditArgs),
}

/// `ftvm backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Address to listen on for the primary.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// The VM: the same options as the primary (the shape must match; the kernel is not
    /// loaded, the VM comes over the wire).
    #[command(flatten)]
    pub vm: VmArgs,
    /// Console and control.
    #[command(flatten)]
    pub console: ConsoleArgs,
    /// Replication settings (must match the primary's key).
    #[command(flatten)]
    pub replication: ReplicationArgs,
    /// The primary's epoch length, used for the default heartbeat timeout.
    #[arg(long, default_value = "10ms", value_name = "DURATION")]
    pub epoch: String,
}

/// `ftvm receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Address to listen on for the migration source.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// The VM: the same options as the source (the shape must match; the kernel is not
    /// loaded, the VM comes over the wire).
    #[command(flatten)]
    pub vm: VmArgs,
    /// Console and control.
    #[command(flatten)]
    pub console: ConsoleArgs,
    /// File holding the pre-shared key of the source's `--key-file`: the migration channel
    /// is then authenticated and encrypted, and a source without that key is refused.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// `ftvm restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot directory (written by `ftvm ctl snapshot --to DIR`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Console and control.
    #[command(flatten)]
    pub console: ConsoleArgs,
    /// Restore but leave the vCPUs paused (resume with `ftvm ctl resume`).
    #[arg(long)]
    pub paused: bool,
    /// The snapshot's network devices, on this host's TAPs (as many as it has).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
    /// The VM's disks, as for `ftvm run` (the images the snapshot's VM used).
    #[arg(long = "disk", value_name = "path=FILE[,readonly=on]")]
    pub disks: Vec<String>,
    /// Work around host CPU defects (as for `run`).
    #[arg(
        long = "cpu-fixups",
        value_enum,
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub cpu_fixups: Vec<CpuFixupArg>,
}

/// Which CPU features the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuProfileArg {
    /// `emulator` on hosts without hardware virtualization (VT-x/AMD-V flags), else `host`.
    Auto,
    /// Everything KVM supports.
    Host,
    /// Hide features KVM's instruction emulator cannot run (cmpxchg16b, xsave, SSE4, ...).
    Emulator,
}

/// Host CPU defects ftvm can work around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuFixupArg {
    /// Complete ring-3 `syscall` / `int $0x80` left in ring 3 by the host.
    Syscall,
}

/// The VM's shape and boot inputs; the same on both sides of a migration or replication.
#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// Kernel to boot: an x86_64 ELF (vmlinux, PVH-capable images) or a bzImage.
    /// `@testguest` boots the test guest built into ftvm.
    #[arg(long, value_name = "PATH|@testguest")]
    pub kernel: Option<String>,
    /// Initial ramdisk to load for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (for the test guest: wss=MiB pages=N iters=N every=N full=N).
    #[arg(long, default_value = "", value_name = "STR")]
    pub cmdline: String,
    /// Guest memory, with a K/M/G suffix.
    #[arg(long, default_value = "256M", value_name = "SIZE")]
    pub memory: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// CPU feature profile.
    #[arg(long, value_enum, default_value_t = CpuProfileArg::Auto)]
    pub cpu_profile: CpuProfileArg,
    /// A virtio-net device on a host TAP (created if missing; up to 4). Default MAC:
    /// 02:f7 + 4 bytes of a hash of the TAP name and device index.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
    /// A disk (virtio-blk) backed by a raw image file; repeat for up to 4 disks, in guest
    /// order. A backup or migration target needs images of the same sizes.
    #[arg(long = "disk", value_name = "path=FILE[,readonly=on]")]
    pub disks: Vec<String>,
    /// Work around host CPU defects, comma-separated. `syscall`: complete ring-3 `syscall`
    /// and `int $0x80` that the host leaves in ring 3 (hosts without VT-x/AMD-V, Linux
    /// guests; docs/linux-guests.md). Off by default.
    #[arg(
        long = "cpu-fixups",
        value_enum,
        value_delimiter = ',',
        value_name = "LIST"
    )]
    pub cpu_fixups: Vec<CpuFixupArg>,
    /// Host CPUs for the vCPU threads and for all other threads (replication engine,
    /// sender, acknowledgements, heartbeats, console, I/O), e.g. `vcpus=0,replication=1`;
    /// a list with commas goes in brackets: `vcpus=[0,2],replication=[1,3]`. Default: not
    /// pinned.
    #[arg(long = "cpu-affinity", value_name = "vcpus=LIST,replication=LIST")]
    pub cpu_affinity: Option<String>,
}

/// Where a VM's console goes and how it is controlled; the same for every command that
/// runs a VM.
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Where the serial console (COM1) goes: `stdout` or `file:PATH`.
    #[arg(long, default_value = "stdout", value_name = "stdout|file:PATH")]
    pub serial: String,
    /// Unix socket for `ftvm ctl` (pause, resume, status, snapshot, ...). Must not exist yet.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Print nothing but the guest's console and errors.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `ftvm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The VM.
    #[command(flatten)]
    pub vm: VmArgs,
    /// Console and control.
    #[command(flatten)]
    pub console: ConsoleArgs,
    /// Protect the VM: replicate it to the `ftvm backup` at ADDR:PORT every epoch and hold
    /// its output until the backup has it.
    #[arg(long, value_name = "ADDR:PORT")]
    pub protect: Option<String>,
    /// Epoch length under protection (e.g. 5ms, 10ms, 25ms).
    #[arg(long, default_value = "10ms", value_name = "DURATION")]
    pub epoch: String,
    /// Most epochs captured but not yet acknowledged by the backup; at the bound the
    /// next epoch waits (backpressure).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_in_flight: u64,
    /// Adaptive dirty tracking under protection: pages written in recent epochs stay
    /// writable (no write fault), are copied every epoch and sent only when changed.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = ["on", "off"])]
    pub hot_pages: String,
    /// Replication settings.
    #[command(flatten)]
    pub replication: ReplicationArgs,
}

/// Settings shared by the primary and the backup.
#[derive(Debug, Clone, Args)]
pub struct ReplicationArgs {
    /// Declare the peer lost after this long without hearing from it (default: 20
    /// epochs, at least 500ms; minimum 200ms).
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_timeout: Option<String>,
    /// File holding a pre-shared key (16+ bytes): the replication channel (and live
    /// migration from this VM) is then mutually authenticated and encrypted (AES-128-GCM).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// How primary and backup make sure only one of them runs the VM (the same on both
    /// sides; required with --protect and on `ftvm backup`):
    /// `etcd:http://HOST:PORT[,http://HOST:PORT...]` (a leased key in etcd v3, needs
    /// --vm-id), `lock:PATH` (a lock file both hosts can flock), or `none` (no fencing: a
    /// partition can run the VM twice).
    #[arg(long, value_name = "MODE")]
    pub fence: Option<String>,
    /// The VM's name in the fence (`--fence etcd:...`): the key is `ftvm/fence/NAME`.
    #[arg(long, value_name = "NAME")]
    pub vm_id: Option<String>,
    /// Alias of `--fence lock:PATH`.
    #[arg(long, value_name = "PATH")]
    pub fence_lock: Option<PathBuf>,
}

/// `ftvm ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API socket of the ftvm process to talk to.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
    /// The request.
    #[command(subcommand)]
    pub request: CtlRequest,
}

/// Requests to a running ftvm.
#[derive(Debug, Subcommand)]
pub enum CtlRequest {
    /// Park all vCPUs (prints how long it took).
    Pause,
    /// Resume parked vCPUs.
    Resume,
    /// State, vCPUs, exits, uptime, pause latency.
    Status,
    /// Save the VM's complete state to a directory (`ftvm restore --from DIR` continues it).
    Snapshot {
        /// Directory to write (created; must not already hold a snapshot).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Save only the pages written since this VM's previous snapshot.
        #[arg(long)]
        diff: bool,
        /// Leave the VM paused afterwards.
        #[arg(long)]
        keep_paused: bool,
    },
    /// Change the epoch length of a protected VM (e.g. `epoch 5ms`).
    Epoch {
        /// The new epoch length.
        #[arg(value_name = "DURATION")]
        length: String,
    },
    /// On a backup: take over now, resuming the replica's last committed epoch. Make sure
    /// the primary is dead or fenced first.
    Failover,
    /// On a protected primary: hand the VM to the backup at the next epoch boundary (no
    /// output lost or repeated); this process becomes the new primary's backup over the
    /// same connection, or stops with `--stop`.
    Switchover {
        /// Stop this process after the hand-over instead of becoming the backup (the new
        /// primary then runs unprotected).
        #[arg(long)]
        stop: bool,
    },
    /// Protect a running VM (first time, or again after its backup was lost) with the
    /// `ftvm backup` at ADDR:PORT, without stopping it.
    Protect {
        /// Where the new backup listens.
        #[arg(long, value_name = "ADDR:PORT")]
        backup: String,
        /// Epoch length (default: the VM's, else 10ms).
        #[arg(long, value_name = "DURATION")]
        epoch: Option<String>,
    },
    /// Live-migrate the VM to an `ftvm receive` (pre-copy); this process then ends.
    Migrate {
        /// Where `ftvm receive --listen` waits.
        #[arg(long, value_name = "ADDR:PORT")]
        to: String,
        /// Stop pre-copying when the rest fits this pause (milliseconds).
        #[arg(long, default_value_t = 50, value_name = "N")]
        downtime_ms: u64,
        /// Cap the pre-copy's average rate, bytes per second with an optional K/M/G suffix
        /// (e.g. `100M` or `100M/s`); default: no cap, as fast as the link takes. The final,
        /// paused epoch is never held back.
        #[arg(long, value_name = "RATE")]
        max_bandwidth: Option<String>,
    },
}

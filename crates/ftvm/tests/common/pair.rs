//! A fenced primary and its backup: the arguments both take and their start, as the
//! fencing tests (fencing.rs, fence_marker.rs, first_epoch_loss.rs) run them. Each test
//! keeps its own checks; these helpers only start processes and wait for them.

use std::path::Path;
use std::time::Duration;

use super::{serial_file, start_backup, wait_until, VmProc};

/// What a fenced primary and its backup both take: 128M of memory, the heartbeat timeout
/// `hb`, the fence `fence` and the VM id `vm_id`.
pub fn fenced_args<'a>(hb: &'a str, fence: &'a str, vm_id: &'a str) -> [&'a str; 8] {
    [
        "--memory",
        "128M",
        "--heartbeat-timeout",
        hb,
        "--fence",
        fence,
        "--vm-id",
        vm_id,
    ]
}

/// A VM id unique to this test process: `NAME-PID`.
pub fn vm_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// `ftvm backup --listen LISTEN --serial file:DIR/backup.out SHARED...`, once it listens.
pub fn spawn_fenced_backup(dir: &Path, listen: &str, shared: &[&str], timeout: Duration) -> VmProc {
    let serial = serial_file(dir, "backup.out");
    let mut args = vec!["--serial", &serial];
    args.extend_from_slice(shared);
    start_backup(|a| VmProc::spawn(a), listen, &args, timeout)
}

/// The arguments of `ftvm run` of the test guest with `cmdline`, protected by the backup
/// at `peer`, its console in `DIR/primary.out`: `run ... SHARED... EXTRA...`.
pub fn fenced_primary_args(
    dir: &Path,
    cmdline: &str,
    peer: &str,
    shared: &[&str],
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--kernel",
        "@testguest",
        "--cmdline",
        cmdline,
        "--protect",
        peer,
        "--serial",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(serial_file(dir, "primary.out"));
    args.extend(shared.iter().chain(extra).map(|s| s.to_string()));
    args
}

/// Whether [`wait_protected`] also fails as soon as the primary says it runs unprotected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unprotected {
    /// The primary must never report running unprotected while it waits.
    Fails,
    /// Only the primary's death fails the wait.
    Tolerated,
}

/// Wait until `primary` says the VM is protected; panics if it dies first (or, with
/// [`Unprotected::Fails`], if it runs unprotected), showing both processes' stderr.
pub fn wait_protected(
    primary: &VmProc,
    backup: &VmProc,
    timeout: Duration,
    unprotected: Unprotected,
) {
    wait_until(timeout, "protection", || {
        assert!(!primary.exited(), "primary died: {}", primary.stderr());
        if unprotected == Unprotected::Fails {
            assert!(
                !primary.stderr().contains("UNPROTECTED"),
                "primary: {}\nbackup: {}",
                primary.stderr(),
                backup.stderr()
            );
        }
        primary.stderr().contains("the VM is protected")
    });
}

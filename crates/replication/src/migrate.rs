//! Live migration: pre-copy memory while the VM runs, then a short pause for the rest.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_devices::output::DirectOutput;
use ftvm_vmm::Vm;
use ftvm_wire::{AuthKey, EpochAssembler, Message, Progress, Role};

use crate::dirty::take_dirty_pages;
use crate::error::ReplicationError;
use crate::link::{accept_one, connect, Link};
use crate::receiver::Replica;
use crate::sync::{
    capture_paused, send_all_memory_paced, send_captured, send_dirty_round, CapturedEpoch, Pace,
};

/// Most pre-copy rounds before stopping the VM regardless.
pub const MAX_ROUNDS: u32 = 30;

/// Progress of a migration, reported as it goes.
#[derive(Debug, Clone, Copy)]
pub enum MigrationProgress {
    /// Full memory copy: bytes done of total.
    FullCopy {
        /// Bytes done.
        done: u64,
        /// Total.
        total: u64,
    },
    /// A dirty round finished.
    Round {
        /// Round number (1 = first after the full copy).
        round: u32,
        /// Pages sent.
        pages: u64,
        /// Measured throughput, bytes/s.
        rate: f64,
    },
}

/// What a finished migration took.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrationStats {
    /// Wall time, start to acknowledgement.
    pub total: Duration,
    /// vCPUs paused until the target acknowledged (the downtime).
    pub downtime: Duration,
    /// Pre-copy rounds after the full copy.
    pub rounds: u32,
    /// Pages in the final, paused epoch.
    pub final_pages: u64,
    /// Bytes sent in all.
    pub bytes: u64,
}

/// Migrate `vm` to the `ftvm receive` at `addr`, aiming for at most `downtime` of pause.
/// On success the VM is stopped here (it runs on the target). On failure the VM keeps
/// running here.
///
/// `key`: the pre-shared key (the target must hold the same): the channel is then
/// authenticated and encrypted (docs/protocol.md); `None` for a plain channel.
/// `max_bandwidth`: bytes/s the pre-copy may use on average (`None`: as fast as the link
/// takes); the final, paused epoch is never held back.
pub fn migrate(
    vm: &Vm,
    addr: &str,
    downtime: Duration,
    key: Option<&[u8]>,
    max_bandwidth: Option<u64>,
    mut progress: impl FnMut(MigrationProgress),
) -> Result<MigrationStats, ReplicationError> {
    let t0 = Instant::now();
    let mut link = connect(
        addr,
        Role::MigrationSource,
        vm,
        auth_key(key)?,
        Duration::from_secs(10),
    )?;
    vm.set_dirty_logging(true)?;
    let _ = take_dirty_pages(vm)?;
    // Disks first (only blocks that differ from the target's images); from then on the
    // guest's disk writes are logged and sent with the rounds and the final epoch.
    let disks = vm.config().disks.clone();
    let result = migrate_from(
        vm,
        &mut link,
        &disks,
        t0,
        downtime,
        max_bandwidth,
        &mut progress,
    );
    if result.is_err() {
        crate::disk_epoch::stop_tracking(&disks);
    }
    result
}

fn migrate_from(
    vm: &Vm,
    link: &mut crate::link::Link,
    disks: &[Arc<ftvm_devices::disk::Disk>],
    t0: Instant,
    downtime: Duration,
    max_bandwidth: Option<u64>,
    progress: &mut impl FnMut(MigrationProgress),
) -> Result<MigrationStats, ReplicationError> {
    let (last, _) = crate::disk_sync::sync_disks(disks, &mut link.reader, &mut link.writer, 0)?;
    let mut epoch = last + 1;
    let mut disk_writes = Vec::new();
    let tf = Instant::now();
    let start_bytes = link.writer.frames().bytes_written();
    let mut pace = Pace::new(max_bandwidth);
    send_all_memory_paced(
        vm,
        &mut link.writer,
        epoch,
        |done, total| progress(MigrationProgress::FullCopy { done, total }),
        &mut pace,
    )?;
    let mut rate =
        link.writer.frames().bytes_written() as f64 / tf.elapsed().as_secs_f64().max(1e-6);
    let mut bounce = Vec::new();
    let mut rounds = 0;
    // The last pre-copy epoch the target has applied (it acknowledges each one).
    let mut applied = 0;
    // Pages taken from the log but not sent yet (while waiting for the target).
    let mut pending: Vec<u64> = Vec::new();
    let carry = loop {
        // Stop when what is left fits the downtime target at the measured rate; those
        // pages (already taken from the log) go in the final, paused epoch.
        let mut dirty = take_dirty_pages(vm)?;
        if !pending.is_empty() {
            dirty.append(&mut pending);
            dirty.sort_unstable();
            dirty.dedup();
        }
        let estimate = Duration::from_secs_f64(dirty.len() as f64 * 4096.0 / rate.max(1.0));
        if estimate <= downtime || rounds >= MAX_ROUNDS {
            if applied < epoch {
                // The target is still applying what was sent (the full copy above all):
                // pausing now would add that backlog to the downtime. Wait while the VM
                // runs, then look at what it dirtied meanwhile.
                applied = wait_applied(link, epoch)?;
                pending = dirty;
                continue;
            }
            break dirty;
        }
        rounds += 1;
        epoch += 1;
        let before = link.writer.frames().bytes_written();
        let tr = Instant::now();
        let pages = send_dirty_round(vm, &mut link.writer, epoch, &dirty, &mut bounce)?;
        // The disk writes logged so far, in their own epoch (keeps the log small).
        crate::disk_epoch::drain_disks(disks, &mut disk_writes)?;
        if disk_writes.iter().any(|d| !d.is_empty()) {
            epoch += 1;
            link.writer.begin_epoch(epoch)?;
            crate::disk_epoch::send_disk_epoch(&mut link.writer, epoch, &disk_writes)?;
            link.writer.commit_epoch()?;
            link.writer.flush()?;
        }
        let bytes = link.writer.frames().bytes_written() - before;
        rate = bytes as f64 / tr.elapsed().as_secs_f64().max(1e-6);
        pace.after(link.writer.frames().bytes_written() - start_bytes);
        progress(MigrationProgress::Round {
            round: rounds,
            pages,
            rate,
        });
    };
    epoch += 1;
    let tp = Instant::now();
    vm.pause()?;
    // Until MigrationDone is on the wire, a failure leaves the VM here: resume it. After
    // that, only an explicit refusal from the target proves it will not run the VM; a
    // silent connection loss leaves the outcome in doubt, and resuming could run the VM
    // twice: then it stays paused here and the operator decides.
    let mut c = CapturedEpoch::default();
    let sent = (|| -> Result<(), ReplicationError> {
        let _final_epoch_needs_no_reprotect = capture_paused(vm, epoch, &carry, &mut c)?;
        crate::disk_epoch::drain_disks(disks, &mut c.disks)?;
        send_captured(&mut link.writer, &c)?;
        link.writer.send(&Message::MigrationDone { epoch })?;
        link.writer.flush()?;
        Ok(())
    })();
    if let Err(e) = sent {
        vm.resume()?;
        return Err(e);
    }
    let answer = link
        .stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| ReplicationError::io("setting a read timeout", e))
        .and_then(|()| {
            Ok(link.reader.recv()?.map(|m| match m {
                Message::Ack { epoch: e } if e == epoch => Ok(()),
                Message::Error { code, message } => {
                    Err(format!("target refused the VM ({code:?}): {message}"))
                }
                other => Err(format!(
                    "target answered {} instead of the final acknowledgement",
                    other.summary()
                )),
            }))
        });
    match answer {
        Ok(Some(Ok(()))) => Ok(MigrationStats {
            total: t0.elapsed(),
            downtime: tp.elapsed(),
            rounds,
            final_pages: c.pages(),
            bytes: link.writer.frames().bytes_written(),
        }),
        Ok(Some(Err(refused))) => {
            vm.resume()?;
            Err(ReplicationError::Peer(refused))
        }
        Ok(None) | Err(_) => Err(ReplicationError::MigrationInDoubt(format!(
            "the target took the final epoch but its acknowledgement never arrived ({}); it may be running the VM. The VM stays PAUSED here: if the target is not running it, `ftvm ctl resume` continues it here",
            match answer {
                Err(e) => e.to_string(),
                _ => "connection closed".to_string(),
            }
        ))),
    }
}

fn auth_key(key: Option<&[u8]>) -> Result<Option<AuthKey>, ReplicationError> {
    key.map(AuthKey::new)
        .transpose()
        .map_err(|e| ReplicationError::Peer(format!("migration key: {e}")))
}

/// How long the source waits for the target to apply the pre-copy epochs before pausing.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Wait (the VM running) until the target acknowledges pre-copy epoch `epoch`; returns it.
fn wait_applied(link: &mut Link, epoch: u64) -> Result<u64, ReplicationError> {
    link.stream
        .set_read_timeout(Some(APPLY_TIMEOUT))
        .map_err(|e| ReplicationError::io("setting a read timeout", e))?;
    loop {
        match link.reader.recv()? {
            Some(Message::Ack { epoch: e }) if e == epoch => return Ok(e),
            Some(Message::Ack { epoch: e }) if e < epoch => {}
            Some(Message::Error { code, message }) => {
                return Err(ReplicationError::Peer(format!(
                    "target gave up during pre-copy ({code:?}): {message}"
                )))
            }
            Some(other) => {
                return Err(ReplicationError::Peer(format!(
                    "target answered {} while pre-copy epoch {epoch} was being applied",
                    other.summary()
                )))
            }
            None => {
                return Err(ReplicationError::Peer(
                    "target closed the connection during pre-copy".into(),
                ))
            }
        }
    }
}

/// Receive a migrating VM into `vm` (created with the expected shape just now, never
/// started, its memory untouched).
/// Returns when the VM is ready to start (state restored); the caller starts it.
/// `key`: the pre-shared key the source must hold (see [`migrate`]).
pub fn receive(
    listener: &TcpListener,
    vm: Arc<Vm>,
    out: &DirectOutput,
    key: Option<&[u8]>,
) -> Result<Replica, ReplicationError> {
    let mut link = accept_one(listener, Role::MigrationTarget, &vm, auth_key(key)?)?;
    let disks = vm.config().disks.clone();
    let writer = std::sync::Mutex::new(link.writer);
    let hashed = crate::disk_sync::send_disk_hashes(&disks, &writer);
    link.writer = writer
        .into_inner()
        .map_err(|_| ReplicationError::Peer("disk hash writer poisoned".into()))?;
    hashed?;
    let mut replica = Replica::fresh(vm).with_disks(disks);
    // Pages are written to the VM as they arrive, not staged per epoch: the transfer and
    // the writes overlap, and nothing is left to apply at a commit but the state. Safe
    // here because this VM runs only if the whole migration completes (MigrationDone
    // after a verified final epoch); any error ends the receive and discards the VM.
    let mut asm = EpochAssembler::new(crate::staging::assembler_config(replica.vm()))
        .pages_applied_on_arrival();
    loop {
        let msg = match link.reader.recv()? {
            Some(m) => m,
            None => {
                asm.finish()?;
                return Err(ReplicationError::Peer(
                    "source closed the connection before the migration finished; nothing runs here"
                        .into(),
                ));
            }
        };
        match asm.feed(&msg)? {
            Progress::Pending => {
                replica.apply_pages_on_arrival(&msg)?;
            }
            Progress::Committed(staged) => {
                replica.apply(&staged)?;
                // A pre-copy epoch (no State: only the final one has it) is acknowledged
                // once applied, so that the source pauses the VM only when nothing is left
                // to apply here but the final epoch. The final epoch's Ack is sent only
                // after MigrationDone, once the VM is restored.
                let precopy = staged.state().is_none().then(|| staged.epoch());
                asm.recycle(staged);
                if let Some(epoch) = precopy {
                    link.writer.send(&Message::Ack { epoch })?;
                }
            }
            Progress::Other => match msg {
                Message::MigrationDone { epoch } => {
                    if replica.committed() != Some(epoch) || !replica.has_state() {
                        return Err(ReplicationError::Peer(format!(
                            "source finished with epoch {epoch} but epoch {:?} is the last complete one here",
                            replica.committed()
                        )));
                    }
                    if let Err(e) = replica.take_over(out) {
                        // Tell the source, so that it keeps running the VM.
                        let _ = link.writer.send_error(
                            ftvm_wire::ErrorCode::Protocol,
                            &format!("cannot restore the VM: {e}"),
                        );
                        let _source_may_be_gone = link.writer.flush();
                        return Err(e);
                    }
                    link.writer.send(&Message::Ack { epoch })?;
                    link.writer.flush()?;
                    return Ok(replica);
                }
                Message::Error { code, message } => {
                    return Err(ReplicationError::Peer(format!(
                        "source gave up ({code:?}): {message}"
                    )))
                }
                Message::Heartbeat { .. } => {}
                other => {
                    return Err(ReplicationError::Peer(format!(
                        "unexpected {} during migration",
                        other.summary()
                    )))
                }
            },
        }
    }
}

//! Live migration: pre-copy memory while the VM runs, then a short pause for the rest.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_devices::output::DirectOutput;
use ftvm_vmm::Vm;
use ftvm_wire::{
    decode_frame, AuthKey, EpochAssembler, FedFrame, FrameFeedError, Message, Progress, Role,
};

use crate::dirty::{merge_pages, take_dirty_pages};
use crate::error::ReplicationError;
use crate::link::{accept_one, connect, Link};
use crate::precopy::{send_final_from_guest, send_round_in_chunks, stop_now};
use crate::receiver::Replica;
use crate::recv_ahead::FramesAhead;
use crate::send_queue::{QueuedWriter, Sent, BUFFER_BYTES};
use crate::sync::{send_all_memory_paced, Pace};

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
#[derive(Debug, Clone, Default)]
pub struct MigrationStats {
    /// Where the time went, in order: (phase, milliseconds), from the connect to the
    /// final acknowledgement (docs/benchmarks.md reads these).
    pub phases: Vec<(String, f64)>,
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
    let mut phases = Phases::new(t0);
    let link = connect(
        addr,
        Role::MigrationSource,
        vm,
        auth_key(key)?,
        Duration::from_secs(10),
    )?;
    phases.mark("connect and handshake");
    vm.set_dirty_logging(true)?;
    let _ = take_dirty_pages(vm)?;
    // Disks first (only blocks that differ from the target's images); from then on the
    // guest's disk writes are logged and sent with the rounds and the final epoch.
    let disks = vm.config().disks.clone();
    let result = migrate_from(
        vm,
        link,
        &disks,
        t0,
        downtime,
        max_bandwidth,
        &mut progress,
        &mut phases,
    );
    if result.is_err() {
        crate::disk_epoch::stop_tracking(&disks);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn migrate_from(
    vm: &Vm,
    link: Link,
    disks: &[Arc<ftvm_devices::disk::Disk>],
    t0: Instant,
    downtime: Duration,
    max_bandwidth: Option<u64>,
    progress: &mut impl FnMut(MigrationProgress),
    phases: &mut Phases,
) -> Result<MigrationStats, ReplicationError> {
    let Link {
        mut reader,
        writer: mut plain,
        stream,
        ..
    } = link;
    let (last, _) = crate::disk_sync::sync_disks(disks, &mut reader, &mut plain, 0)?;
    phases.mark("disk sync");
    // From here on a sender thread writes to the socket: this loop scans, copies and
    // frames guest memory while the link carries what was framed before.
    let socket = stream
        .try_clone()
        .map_err(|e| ReplicationError::io("cloning the socket", e))?;
    let queue =
        QueuedWriter::new(socket).map_err(|e| ReplicationError::io("starting the sender", e))?;
    let mut w = plain.map_inner(|_direct| queue)?;
    // Sealed frames go to the sender thread in the buffer they were sealed in.
    w.frames_mut().set_hand_over(QueuedWriter::write_owned);
    let mut epoch = last + 1;
    let mut disk_writes = Vec::new();
    let start_bytes = w.frames().bytes_written();
    let mut pace = Pace::new(max_bandwidth);
    let full = send_all_memory_paced(
        vm,
        &mut w,
        epoch,
        |done, total| progress(MigrationProgress::FullCopy { done, total }),
        &mut pace,
    )?;
    phases.mark("full copy (framed)");
    // The link's rate: bytes over the time the sender spent writing them (not the time
    // this loop took to frame them, which the queue hides).
    let mut sample = w.frames().get_ref().sent();
    let mut rate = sample.rate_since(Sent::default()).unwrap_or(DEFAULT_RATE);
    // Rounds frame straight from guest memory; this is the spare frame buffer.
    let mut chunk = Vec::new();
    let mut rounds = 0;
    // Pages the last round (or the full copy) sent: a round that brings the dirty set
    // down to half of it or less was worth its time.
    let mut last_sent = full.data_pages;
    // The last pre-copy epoch the target has applied (it acknowledges each one).
    let mut applied = 0;
    // Pages taken from the log but not sent yet (while waiting for the target).
    let mut pending: Vec<u64> = Vec::new();
    let carry = loop {
        // Stop when what is left (still queued here, plus the dirty pages) fits the
        // downtime target at the link's measured rate; those pages (already taken from
        // the log) go in the final, paused epoch.
        // A round starts when the link has nearly caught up with the last one (framing
        // this round overlaps with the last buffer going out): rounds framed faster than
        // the link takes them would only send the same pages again, and use up the rounds.
        w.frames()
            .get_ref()
            .wait_backlog(BUFFER_BYTES as u64)
            .map_err(|e| ReplicationError::io("sending pre-copy rounds", e))?;
        let mut dirty = take_dirty_pages(vm)?;
        if !pending.is_empty() {
            merge_pages(&mut dirty, &std::mem::take(&mut pending));
        }
        let now = w.frames().get_ref().sent();
        if let Some(r) = now.rate_since(sample) {
            rate = r;
            sample = now;
        }
        // In the pause each page is framed, sent and written into the target's VM: the
        // link's rate alone would promise a pause about half as long as it turns out
        // (measured, docs/benchmarks.md), so the final pages count twice.
        let left = w.frames().get_ref().backlog() + dirty.len() as u64 * 4096 * PAUSE_COST;
        let estimate = Duration::from_secs_f64(left as f64 / rate.max(1.0));
        if rounds >= MAX_ROUNDS || stop_now(estimate, downtime, dirty.len() as u64, last_sent) {
            if applied < epoch {
                // The target is still applying what was sent (the full copy above all):
                // pausing now would add that backlog to the downtime. Wait while the VM
                // runs, then look at what it dirtied meanwhile.
                applied = wait_applied(&mut reader, &stream, epoch)?;
                phases.mark("wait: target applies");
                pending = dirty;
                continue;
            }
            break dirty;
        }
        rounds += 1;
        epoch += 1;
        let pages = send_round_in_chunks(vm, &mut w, epoch, &dirty, &mut chunk)?;
        last_sent = pages;
        // The disk writes logged so far, in their own epoch (keeps the log small).
        crate::disk_epoch::drain_disks(disks, &mut disk_writes)?;
        if disk_writes.iter().any(|d| !d.is_empty()) {
            epoch += 1;
            w.begin_epoch(epoch)?;
            crate::disk_epoch::send_disk_epoch(&mut w, epoch, &disk_writes)?;
            w.commit_epoch()?;
            w.flush()?;
        }
        pace.after(w.frames().bytes_written() - start_bytes);
        phases.mark(&format!("round {rounds}: {pages} pages (framed)"));
        progress(MigrationProgress::Round {
            round: rounds,
            pages,
            rate,
        });
    };
    epoch += 1;
    let mut final_pages = 0;
    // The target applied every pre-copy epoch, so the queue holds nothing it still needs:
    // wait, while the VM runs, until the sender thread has also reported its last write,
    // so that the pause never waits for that thread to be scheduled (measured: up to
    // ~20 ms on a loaded host, docs/benchmarks.md).
    w.flush()?;
    w.frames()
        .get_ref()
        .wait_written()
        .map_err(|e| ReplicationError::io("sending pre-copy rounds", e))?;
    let tp = Instant::now();
    phases.mark("decide to stop");
    vm.pause()?;
    phases.mark("pause");
    // Until MigrationDone is on the wire, a failure leaves the VM here: resume it. After
    // that, only an explicit refusal from the target proves it will not run the VM; a
    // silent connection loss leaves the outcome in doubt, and resuming could run the VM
    // twice: then it stays paused here and the operator decides.
    let sent = (|| -> Result<(), ReplicationError> {
        // The paused epoch goes out from this thread: no hand-off in the downtime.
        w.flush()?;
        w.frames_mut()
            .get_mut()
            .set_direct(true)
            .map_err(|e| ReplicationError::io("sending the last pre-copy bytes", e))?;
        // Framed straight from the paused guest's memory (no staging copy).
        let mut disk_writes = Vec::new();
        crate::disk_epoch::drain_disks(disks, &mut disk_writes)?;
        let f = send_final_from_guest(vm, &mut w, epoch, &carry, &disk_writes)?;
        final_pages = f.pages;
        phases.mark(&format!(
            "paused: log, state and framing of {} pages (log {:.2} ms, state {:.2} ms)",
            f.pages,
            f.log_us / 1e3,
            f.state_us / 1e3
        ));
        w.send(&Message::MigrationDone { epoch })?;
        w.flush()?;
        w.frames()
            .get_ref()
            .wait_written()
            .map_err(|e| ReplicationError::io("sending the final epoch", e))?;
        phases.mark("paused: send final epoch");
        Ok(())
    })();
    if let Err(e) = sent {
        vm.resume()?;
        return Err(e);
    }
    let answer = stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| ReplicationError::io("setting a read timeout", e))
        .and_then(|()| {
            Ok(reader.recv()?.map(|m| match m {
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
    phases.mark("paused: target restores, acknowledges");
    match answer {
        Ok(Some(Ok(()))) => Ok(MigrationStats {
            phases: std::mem::take(&mut phases.list),
            total: t0.elapsed(),
            downtime: tp.elapsed(),
            rounds,
            final_pages,
            bytes: w.frames().bytes_written(),
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

/// How many times its size at the link's rate one page of the final epoch costs in the
/// pause (framing and send, then the write into the target's VM).
const PAUSE_COST: u64 = 2;
/// Link rate assumed until the sender has measured one (bytes/s).
const DEFAULT_RATE: f64 = 100e6;

/// Time marks of a migration: each phase's duration since the previous mark.
#[derive(Debug)]
struct Phases {
    last: Instant,
    list: Vec<(String, f64)>,
}

impl Phases {
    fn new(start: Instant) -> Self {
        Phases {
            last: start,
            list: Vec::new(),
        }
    }

    /// `what` ended now.
    fn mark(&mut self, what: &str) {
        let now = Instant::now();
        self.list
            .push((what.to_string(), (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
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
fn wait_applied(
    reader: &mut crate::link::Reader,
    stream: &std::net::TcpStream,
    epoch: u64,
) -> Result<u64, ReplicationError> {
    stream
        .set_read_timeout(Some(APPLY_TIMEOUT))
        .map_err(|e| ReplicationError::io("setting a read timeout", e))?;
    loop {
        match reader.recv()? {
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

/// Populate `vm`'s memory on a thread of its own until the returned flag is set (best
/// effort: if the thread cannot start, pages fault in as they are written).
fn prefault_in_background(vm: &Arc<Vm>) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if std::env::var_os("FTVM_RECEIVE_NO_PREFAULT").is_some() {
        return stop;
    }
    let vm = vm.clone();
    let flag = stop.clone();
    let _detached = std::thread::Builder::new()
        .name("ft-prefault".into())
        .spawn(move || {
            let _bytes_best_effort = ftvm_vmm::hugepages::populate_guest_memory(vm.memory(), &flag);
        });
    stop
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
    // Fault guest memory in while waiting for the source: otherwise the thread writing
    // the arriving pages pays every first touch, with THP the zeroing of a 2 MiB page
    // each time (measured, docs/benchmarks.md). It stops when the source connects (from
    // then on it would only compete with the receiving thread for a core); what it did
    // not reach faults in as pages arrive. Populating never changes a present page.
    let prefault = prefault_in_background(&vm);
    let accepted = accept_one(listener, Role::MigrationTarget, &vm, auth_key(key)?);
    prefault.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut link = accepted?;
    let disks = vm.config().disks.clone();
    let writer = std::sync::Mutex::new(link.writer);
    let hashed = crate::disk_sync::send_disk_hashes(&disks, &writer);
    link.writer = writer
        .into_inner()
        .map_err(|_| ReplicationError::Peer("disk hash writer poisoned".into()))?;
    hashed?;
    // Frames are read, checked and (keyed) decrypted on a thread of their own while this
    // one applies the previous ones. In a plain session that thread also writes the
    // pages, in stream order: page data is read from the socket straight into guest
    // memory (docs/architecture.md, "Migration": why unverified bytes there are safe).
    let frames = link.reader.into_frames();
    let placing = !frames.is_authenticated();
    let started = if placing {
        let placer = crate::guest_placer::GuestPlacer::fresh(vm.clone());
        FramesAhead::start_placing(frames, &link.stream, Box::new(placer))
    } else {
        FramesAhead::start(frames, &link.stream)
    };
    let mut ahead = started.map_err(|e| ReplicationError::io("starting the frame reader", e))?;
    let replica = Replica::fresh(vm).with_disks(disks);
    // Pages are written to the VM as they arrive, not staged per epoch: the transfer and
    // the writes overlap, and nothing is left to apply at a commit but the state. Safe
    // here because this VM runs only if the whole migration completes (MigrationDone
    // after a verified final epoch); any error ends the receive and discards the VM.
    let asm = EpochAssembler::new(crate::staging::assembler_config(replica.vm()))
        .pages_applied_on_arrival();
    let mut target = MigrationTarget {
        pages_placed: placing,
        asm,
        replica,
        writer: &mut link.writer,
        final_apply: None,
        out,
    };
    loop {
        let (frame, applied) = match ahead.recv_frame_applied()? {
            Some(f) => f,
            None => {
                target.asm.finish()?;
                return Err(ReplicationError::Peer(
                    "source closed the connection before the migration finished; nothing runs here"
                        .into(),
                ));
            }
        };
        // The assembler checks and counts the frame's message, extending the epoch digest
        // from the CRC the reading thread computed (plain) or not at all (sealed: the tag
        // verified it); then the message is decoded again here (its run table only: no
        // pass over the page data) to write its pages into the VM, unless the reading
        // thread did (plain sessions: `applied`).
        let (progress, frame) = match target.asm.feed_frame(frame) {
            Ok(FedFrame {
                progress,
                frame: Some(frame),
            }) => (progress, frame),
            // Pages are applied on arrival here: the assembler never keeps a frame.
            Ok(FedFrame { frame: None, .. }) => {
                return Err(ReplicationError::Peer(
                    "migration target: the epoch assembler kept a page frame".into(),
                ))
            }
            Err(e) => {
                ahead.end();
                return Err(match e {
                    FrameFeedError::Decode(e) => e.into(),
                    FrameFeedError::Epoch(e) => e.into(),
                });
            }
        };
        let step = if frame.placed > 0 {
            // Its pages are in the VM already (`applied`), and it has no data here.
            match progress {
                Progress::Pending => Ok(false),
                _ => Err(ReplicationError::Peer(
                    "migration target: a page frame ended an epoch".into(),
                )),
            }
        } else {
            let msg = decode_frame(frame.kind, frame.at, frame.payload(), frame.authenticated)?;
            if placing && !applied && matches!(msg, Message::Pages(_) | Message::ZeroPages(_)) {
                // The reading thread writes every page in stream order; one it could not
                // place names memory the VM does not have.
                ahead.end();
                return Err(ReplicationError::Peer(format!(
                    "source sent {} outside guest memory; nothing runs here",
                    msg.summary()
                )));
            }
            target.handle_received(progress, msg)
        };
        ahead.give_back(frame.buf);
        if step? {
            return Ok(target.replica);
        }
    }
}

/// The receiving side of a migration target (see [`receive`]): what an arriving message
/// is applied to, and the link back to the source.
struct MigrationTarget<'a> {
    /// The reading thread writes the pages (a plain session): this side writes none.
    pages_placed: bool,
    asm: EpochAssembler,
    /// The VM being received.
    replica: Replica,
    /// To the source: acknowledgements, and why the VM could not be restored.
    writer: &'a mut crate::link::Writer,
    /// How long the final epoch's commit took to apply (its state restored at the end).
    final_apply: Option<Duration>,
    /// Where the restored VM's output goes.
    out: &'a DirectOutput,
}

impl MigrationTarget<'_> {
    /// One message the migration target received and the assembler accepted
    /// (`progress`): write its pages (unless the reading thread does), apply a committed
    /// epoch (acknowledging a pre-copy one), or handle a control message. `true`: the
    /// migration finished (the VM is restored, acknowledged).
    fn handle_received(
        &mut self,
        progress: Progress,
        msg: Message<'_>,
    ) -> Result<bool, ReplicationError> {
        let MigrationTarget {
            pages_placed: placed,
            asm,
            replica,
            writer,
            final_apply,
            out,
        } = self;
        let placed = *placed;
        match progress {
            Progress::Pending => {
                if !placed {
                    replica.apply_pages_on_arrival(&msg)?;
                }
            }
            Progress::Committed(staged) => {
                let ta = Instant::now();
                replica.apply(&staged)?;
                if staged.state().is_some() {
                    *final_apply = Some(ta.elapsed());
                }
                // A pre-copy epoch (no State: only the final one has it) is acknowledged
                // once applied, so that the source pauses the VM only when nothing is left
                // to apply here but the final epoch. The final epoch's Ack is sent only
                // after MigrationDone, once the VM is restored.
                let precopy = staged.state().is_none().then(|| staged.epoch());
                asm.recycle(staged);
                if let Some(epoch) = precopy {
                    writer.send(&Message::Ack { epoch })?;
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
                    let tr = Instant::now();
                    if let Err(e) = replica.take_over(out) {
                        // Tell the source, so that it keeps running the VM.
                        let _ = writer.send_error(
                            ftvm_wire::ErrorCode::Protocol,
                            &format!("cannot restore the VM: {e}"),
                        );
                        let _source_may_be_gone = writer.flush();
                        return Err(e);
                    }
                    writer.send(&Message::Ack { epoch })?;
                    writer.flush()?;
                    eprintln!(
                    "ftvm: migration received: final epoch {epoch} applied in {:.2} ms, VM restored and acknowledged in {:.2} ms",
                    final_apply.unwrap_or_default().as_secs_f64() * 1e3,
                    tr.elapsed().as_secs_f64() * 1e3
                );
                    return Ok(true);
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
        Ok(false)
    }
}

//! The backup: keeps a replica of the primary's VM, one verified epoch at a time, and
//! takes over when the primary is lost.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::bus::lock;
use ftvm_devices::output::DirectOutput;
use ftvm_vmm::Vm;
use ftvm_wire::{
    decode_frame, AuthKey, EpochAssembler, FedFrame, FrameFeedError, Message, Progress,
    Role as WireRole,
};

use crate::error::ReplicationError;
use crate::fence_marker::{SessionId, TakeoverClaim, TakeoverMarker};
use crate::fencing::{FenceEvents, FenceMode, HeldFence, LeaseTimes, TakeoverFence};
use crate::link::{accept_one, unix_nanos, Writer};
use crate::receiver::Replica;
use crate::status::{ReplStatus, Role};

/// Settings of a backup.
#[derive(Clone)]
pub struct BackupConfig {
    /// Declare the primary lost after this long without hearing from it.
    pub heartbeat_timeout: Duration,
    /// Pre-shared key for the authenticated channel.
    pub key: Option<Vec<u8>>,
    /// The fence the primary holds; taken before the takeover, within a bound.
    pub fence: FenceMode,
    /// The lease times (from the heartbeat timeout).
    pub lease: LeaseTimes,
    /// Told when the fence this backup takes over with is in doubt or lost.
    pub fence_events: FenceEvents,
    /// The replica's disks (`--disk`), in the primary's order.
    pub disks: Vec<Arc<ftvm_devices::disk::Disk>>,
}

impl std::fmt::Debug for BackupConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupConfig")
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("fence", &self.fence)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Silence tolerated from the primary before the replica is complete.
const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// How the backup's watch ended.
#[derive(Debug)]
pub struct Takeover {
    /// Why the primary was declared lost.
    pub reason: String,
    /// The epoch the VM resumes from.
    pub epoch: u64,
    /// When the loss was detected.
    pub detected: Instant,
    /// The fence, held for as long as this process runs the VM.
    pub fence: HeldFence,
    /// A planned switchover (not a loss): the link to the old primary, kept.
    pub switched: Option<crate::switchover::SwitchedIn>,
}

/// How one primary connection ended.
#[allow(clippy::large_enum_variant)] // one per connection
pub(crate) enum Outcome {
    Takeover(Takeover),
    Ended,
    NoReplica(String),
}

/// A backup's shared state (for the API).
#[derive(Debug)]
pub struct Backup {
    status: Mutex<ReplStatus>,
    failover: AtomicBool,
    socket: Mutex<Option<TcpStream>>,
}

impl Default for Backup {
    fn default() -> Self {
        Self {
            status: Mutex::new(ReplStatus::new(Role::Backup, 0)),
            failover: AtomicBool::new(false),
            socket: Mutex::new(None),
        }
    }
}

impl Backup {
    /// Status for the API.
    pub fn status_json(&self) -> serde_json::Value {
        lock(&self.status).to_json()
    }

    /// Set the role shown in status.
    pub fn set_role(&self, role: Role) {
        lock(&self.status).role = role;
    }

    /// Take over now (`ftvm ctl failover`): the link is closed and the replica resumes
    /// from its last committed epoch. The operator must know the primary is gone or fenced.
    pub fn request_failover(&self) {
        self.failover.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&self.socket).as_ref() {
            let _already_closed = s.shutdown(Shutdown::Both);
        }
    }

    /// Accept a primary on `listener` and keep `vm`'s replica until the primary is lost;
    /// then restore the last committed epoch onto `vm` (not started: the caller starts
    /// it) and release the outputs the primary may not have released. `None`: the
    /// primary's guest ended normally (it said Goodbye); there is nothing to take over.
    pub fn watch(
        &self,
        listener: &TcpListener,
        vm: Arc<Vm>,
        cfg: &BackupConfig,
        out: &DirectOutput,
    ) -> Result<Option<Takeover>, ReplicationError> {
        loop {
            match self.watch_once(listener, vm.clone(), cfg, out)? {
                Outcome::Takeover(t) => return Ok(Some(t)),
                Outcome::Ended => return Ok(None),
                Outcome::NoReplica(reason) => {
                    if self.failover.load(Ordering::SeqCst) {
                        return Err(ReplicationError::Peer(
                            "failover requested before the initial sync completed: there is no replica to take over".into(),
                        ));
                    }
                    // Nothing was protected yet: wait for the primary (or another one).
                    eprintln!(
                        "ftvm: {reason} before the initial sync completed; nothing to take over, waiting for a primary again"
                    );
                    self.set_role(Role::Backup);
                }
            }
        }
    }

    fn watch_once(
        &self,
        listener: &TcpListener,
        vm: Arc<Vm>,
        cfg: &BackupConfig,
        out: &DirectOutput,
    ) -> Result<Outcome, ReplicationError> {
        let key = match &cfg.key {
            Some(k) => {
                Some(AuthKey::new(k).map_err(|e| ReplicationError::Peer(format!("--key: {e}")))?)
            }
            None => None,
        };
        // Refused peers (wrong shape, wrong key, garbage) are told why and the backup
        // keeps waiting for the right primary.
        let link = loop {
            match accept_one(listener, WireRole::Backup, &vm, key.clone()) {
                Ok(l) => break l,
                Err(e) => eprintln!("ftvm: refused a connection: {e}"),
            }
        };
        eprintln!("ftvm: primary connected; receiving the initial sync");
        let link = crate::switchover::LinkParts {
            reader: link.reader,
            writer: Arc::new(Mutex::new(link.writer)),
            stream: link.stream,
            session: SessionId(link.peer.session),
        };
        self.watch_link(link, vm, None, cfg, out)
    }

    /// Keep the replica over an established link: a fresh one (initial sync first), or
    /// one whose replica is `seeded` (a former primary after a planned switchover).
    pub(crate) fn watch_link(
        &self,
        link: crate::switchover::LinkParts,
        vm: Arc<Vm>,
        seeded: Option<Replica>,
        cfg: &BackupConfig,
        out: &DirectOutput,
    ) -> Result<Outcome, ReplicationError> {
        let stream = link.stream;
        let session = link.session;
        // Until the replica is complete there is nothing to take over, so a slow initial
        // sync (the primary scanning memory on a starved host) is not a loss: a lenient
        // timeout then, the heartbeat timeout from the first complete epoch on.
        let timeout = if seeded.is_some() {
            cfg.heartbeat_timeout
        } else {
            cfg.heartbeat_timeout.max(INITIAL_SYNC_TIMEOUT)
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| ReplicationError::io("setting the heartbeat timeout", e))?;
        *lock(&self.socket) = Some(
            stream
                .try_clone()
                .map_err(|e| ReplicationError::io("cloning the socket", e))?,
        );
        let writer = link.writer;
        let stop = Arc::new(AtomicBool::new(false));
        let hb = spawn_heartbeats(writer.clone(), stop.clone(), cfg.heartbeat_timeout / 4)?;
        let mut reader = link.reader;
        let resumed = seeded.as_ref().and_then(Replica::committed);
        let disk_hashes = match resumed {
            // The disks are the primary's already (the same epoch).
            Some(_) => Ok(()),
            None => crate::disk_sync::send_disk_hashes(&cfg.disks, &writer),
        };
        if let Err(e) = disk_hashes {
            stop.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
            let _ = hb.join();
            return Ok(Outcome::NoReplica(format!(
                "disk hash exchange failed: {e}"
            )));
        }
        let mut replica = match seeded {
            Some(r) => r,
            None => Replica::new(vm).with_disks(cfg.disks.clone()),
        };
        let mut asm = match resumed {
            Some(e) => EpochAssembler::resume(crate::staging::assembler_config(replica.vm()), e),
            None => EpochAssembler::new(crate::staging::assembler_config(replica.vm())),
        };
        let mut announced = resumed.is_some();
        let mut switch = crate::switchover::BackupSwitch::default();
        let reason = loop {
            if self.failover.load(Ordering::SeqCst) {
                break "failover requested".to_string();
            }
            // Frames are read into buffers the assembler recycles, and a Pages frame's
            // buffer becomes the staging of its pages (no copy; see
            // EpochAssembler::feed_frame).
            let spare = asm.spare_buffer();
            let frame = match reader.frames_mut().read_frame_owned(spare) {
                Ok(Some(f)) => f,
                Ok(None) if self.failover.load(Ordering::SeqCst) => {
                    break "failover requested".to_string()
                }
                Ok(None) => break "primary closed the connection".to_string(),
                Err(e) => {
                    if self.failover.load(Ordering::SeqCst) {
                        break "failover requested".to_string();
                    }
                    break format!("primary lost: {e}");
                }
            };
            lock(&self.status).last_heard = Instant::now();
            let FedFrame { progress, frame } = match asm.feed_frame(frame) {
                Ok(fed) => fed,
                Err(FrameFeedError::Decode(e)) => {
                    if self.failover.load(Ordering::SeqCst) {
                        break "failover requested".to_string();
                    }
                    break format!("primary lost: {e}");
                }
                Err(FrameFeedError::Epoch(e)) => {
                    // A broken epoch is discarded; the replica stays at the last one.
                    let _ =
                        lock(&writer).send_error(ftvm_wire::ErrorCode::Protocol, &e.to_string());
                    break format!("bad epoch stream: {e}");
                }
            };
            match progress {
                Progress::Pending => {}
                Progress::Committed(staged) => {
                    // Validated before anything is written: a bad epoch is refused whole
                    // and the replica stays at the previous one (never acknowledged).
                    if let Err(e) = replica.validate(&staged) {
                        let _ = lock(&writer)
                            .send_error(ftvm_wire::ErrorCode::Protocol, &e.to_string());
                        break format!("bad epoch from the primary: {e}");
                    }
                    if let Err(e) = replica.apply(&staged) {
                        // Disk full, unwritable image, ...: never acknowledge an epoch
                        // this side could not keep; the primary goes unprotected.
                        let text = format!("backup cannot apply epoch {}: {e}", staged.epoch());
                        eprintln!("ftvm: ERROR: {text}; this replica is no longer usable");
                        let _ = lock(&writer).send_error(ftvm_wire::ErrorCode::Internal, &text);
                        stop.store(true, Ordering::SeqCst);
                        let _ = stream.shutdown(Shutdown::Both);
                        let _ = hb.join();
                        return Err(e);
                    }
                    let epoch = staged.epoch();
                    asm.recycle(staged);
                    let acked = {
                        let mut w = lock(&writer);
                        w.send(&Message::Ack { epoch }).and_then(|()| w.flush())
                    };
                    if let Err(e) = acked {
                        // The epoch is applied; the link is gone: the primary is lost.
                        break format!("primary lost: cannot acknowledge epoch {epoch}: {e}");
                    }
                    let mut st = lock(&self.status);
                    st.epoch = epoch;
                    st.last_acked = epoch;
                    st.bytes = reader.frames().bytes_read();
                    drop(st);
                    if replica.has_state() && !announced {
                        announced = true;
                        stream
                            .set_read_timeout(Some(cfg.heartbeat_timeout))
                            .map_err(|e| {
                                ReplicationError::io("setting the heartbeat timeout", e)
                            })?;
                        eprintln!("ftvm: replica in sync at epoch {epoch}: ready to take over");
                    }
                }
                Progress::Other => match frame
                    .as_ref()
                    .map(|f| decode_frame(f.kind, f.at, f.payload(), f.authenticated))
                {
                    None => break "frame lost by the epoch assembler".to_string(),
                    Some(Err(e)) => break format!("primary lost: {e}"),
                    Some(Ok(Message::Heartbeat { epoch, .. })) => {
                        replica.primary_released = replica.primary_released.max(epoch);
                    }
                    Some(Ok(Message::Goodbye)) => {
                        stop.store(true, Ordering::SeqCst);
                        let _ = hb.join();
                        return Ok(Outcome::Ended);
                    }
                    Some(Ok(Message::Error { code, message })) => {
                        break format!("primary reported {code:?}: {message}")
                    }
                    Some(Ok(Message::Switchover { epoch, phase, stop })) => {
                        match switch.on_frame(&replica, &writer, epoch, phase, stop) {
                            Ok(false) => {}
                            Ok(true) => break format!("planned switchover after epoch {epoch}"),
                            Err(why) => break why,
                        }
                    }
                    Some(Ok(other)) => {
                        break format!("unexpected {} from the primary", other.summary())
                    }
                },
            }
            if let Some(f) = frame {
                asm.return_buffer(f.buf);
            }
        };
        let detected = Instant::now();
        let switched = switch.released();
        if switched.is_none() {
            stop.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
        }
        // (A switchover keeps heartbeating while it takes the fence.)
        // Not yet announced: the initial sync is applied here but its acknowledgement never
        // reached the primary (the link broke while sending it), so the primary never ran
        // protected by this backup and its takeover marker cannot name this session: there
        // is nothing this replica could take over, so wait for a primary again rather than
        // going stale.
        if !replica.has_state() || (!announced && switched.is_none()) {
            stop.store(true, Ordering::SeqCst);
            let _ = hb.join();
            return Ok(Outcome::NoReplica(reason));
        }
        // Fencing: never resume while the primary may still run the VM; take the fence
        // within a bound or give up for good; and only while its takeover marker names
        // this session (else the primary released output this replica lacks).
        let claim = TakeoverClaim {
            session,
            then: match switched {
                // The old primary stays as the backup, over this same connection.
                Some((_, false)) => TakeoverMarker::Session(session),
                // This process runs the VM unprotected.
                _ => TakeoverMarker::Nobody,
            },
        };
        let taken = HeldFence::acquire_for_takeover(
            &cfg.fence,
            cfg.lease,
            cfg.fence_events.clone(),
            claim,
            |waited, why| {
                eprintln!(
                    "ftvm: {reason}, but the fence is not free yet ({why}; {:.1} s): not taking over while the primary may run the VM",
                    waited.as_secs_f64()
                );
            },
        );
        stop.store(true, Ordering::SeqCst);
        let _ = hb.join();
        let fence = match taken? {
            TakeoverFence::Taken(f) => f,
            TakeoverFence::Ended => {
                eprintln!("ftvm: {reason}, and the fence says the guest ended cleanly: nothing to take over");
                return Ok(Outcome::Ended);
            }
            TakeoverFence::Stale(why) => {
                self.set_role(Role::Stale);
                return Err(ReplicationError::Stale(format!("{reason}; {why}")));
            }
        };
        self.set_role(Role::Takeover);
        if let Some((epoch, _)) = switched {
            // The old primary released every output through its final epoch.
            replica.primary_released = replica.primary_released.max(epoch);
        }
        let epoch = replica.take_over(out)?;
        Ok(Outcome::Takeover(Takeover {
            reason,
            epoch,
            detected,
            fence,
            switched: switched.map(|(_, stop)| crate::switchover::SwitchedIn {
                link: crate::switchover::LinkParts {
                    reader,
                    writer,
                    stream,
                    session,
                },
                epoch,
                peer_stays: !stop,
            }),
        }))
    }
}

fn spawn_heartbeats(
    writer: Arc<Mutex<Writer>>,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> Result<std::thread::JoinHandle<()>, ReplicationError> {
    std::thread::Builder::new()
        .name("ft-heartbeat".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(every);
                let mut w = lock(&writer);
                let sent = w
                    .send(&Message::Heartbeat {
                        epoch: 0,
                        sent_unix_nanos: unix_nanos(),
                    })
                    .and_then(|()| w.flush());
                if sent.is_err() {
                    return;
                }
            }
        })
        .map_err(|e| ReplicationError::io("starting the heartbeat thread", e))
}

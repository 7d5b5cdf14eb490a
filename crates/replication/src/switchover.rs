//! Planned switchover: the backup becomes the primary, the old primary becomes its backup
//! (or stops), over the same authenticated connection, with no output lost or released
//! twice. See docs/protocol.md ("Planned switchover") for the frames and docs/operations.md
//! for what an operator sees.
//!
//! 1. The old primary, at an epoch boundary, keeps the vCPUs parked after capturing its
//!    final epoch N, sends N and then `Switchover { N, Request }`.
//! 2. The backup commits N, acknowledges it (the old primary releases N's output: all of
//!    its held output is out now) and answers `Switchover { N, Ready }`.
//! 3. The old primary closes its output gate for good, releases the fence (lock: unlock;
//!    etcd: revoke the lease) and sends `Switchover { N, Released }`.
//! 4. The backup takes the fence (the same bounded attempt as a takeover), restores N,
//!    announces the guest's MACs, turns on dirty tracking and resumes the VM as primary.
//!    Unless the old primary stops, it protects the VM at once over the same connection:
//!    both sides hold identical memory, devices and disks at N, so there is no initial
//!    sync; epochs continue at N+1 and the old primary is a backup whose replica starts at
//!    N (its own state).
//!
//! A failure before step 3 leaves the old primary running the VM (unprotected if the
//! backup was lost); after step 3 the fence decides, exactly as at a takeover.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftvm_devices::bus::lock;
use ftvm_devices::output::DirectOutput;
use ftvm_vmm::Vm;
use ftvm_wire::{Message, SwitchoverPhase};

use crate::backup::{Backup, BackupConfig, Outcome, Takeover};
use crate::error::ReplicationError;
use crate::fencing::HeldFence;
use crate::link::{Reader, Writer};
use crate::outputs::EpochOutputs;

/// An established, authenticated connection kept across a change of roles.
#[derive(Debug)]
pub struct LinkParts {
    /// Incoming messages.
    pub reader: Reader,
    /// Outgoing messages (shared with a heartbeat thread while one runs).
    pub writer: Arc<Mutex<Writer>>,
    /// The socket.
    pub stream: TcpStream,
    /// The protection session of this connection (the fence's takeover marker names it).
    pub session: crate::fence_marker::SessionId,
}

impl LinkParts {
    /// The peer's address, for messages.
    pub fn peer(&self) -> String {
        self.stream
            .peer_addr()
            .map_or_else(|_| "the peer".into(), |a| a.to_string())
    }
}

/// What a finished switchover reports to whoever asked for it.
#[derive(Debug, Clone)]
pub struct SwitchoverDone {
    /// The final epoch the old primary ran; the new primary resumes from it.
    pub epoch: u64,
    /// How long the vCPUs were parked on the old primary until the VM was handed over.
    pub pause: Duration,
    /// The new primary's address.
    pub peer: String,
    /// The old primary stops (instead of becoming the backup).
    pub stop: bool,
}

/// The answer to a switchover request.
pub type SwitchoverAnswer = Result<SwitchoverDone, String>;

struct Request {
    stop: bool,
    answer: SyncSender<SwitchoverAnswer>,
    /// Set once the final epoch is captured: its number and its encoded state.
    last: Option<(u64, Vec<u8>)>,
    /// When the vCPUs were parked for the final epoch.
    parked_at: Option<Instant>,
    /// When the Request frame was sent.
    sent_at: Option<Instant>,
}

/// A link to protect a VM over at once, without an initial sync (the peer already holds
/// the VM as of `epoch`).
#[derive(Debug)]
pub struct Adopted {
    /// The link.
    pub link: LinkParts,
    /// The epoch both sides hold; the next epoch is `epoch + 1`.
    pub epoch: u64,
}

/// The old primary after its backup said Ready: everything to finish the hand-over
/// ([`hand_over`]) and to become the backup ([`standby`]).
pub struct SwitchedOut {
    /// The link (the primary's heartbeats still run on it until [`hand_over`]).
    pub link: LinkParts,
    /// The final epoch.
    pub epoch: u64,
    /// Its encoded state (this VM's state at the boundary).
    pub state: Vec<u8>,
    /// This process stops instead of becoming the backup.
    pub stop: bool,
    parked_at: Instant,
    heartbeats: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    answer: SyncSender<SwitchoverAnswer>,
}

impl std::fmt::Debug for SwitchedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchedOut")
            .field("epoch", &self.epoch)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl SwitchedOut {
    /// Tell the requester how it went.
    pub fn answer(&self, a: SwitchoverAnswer) {
        let _requester_may_have_given_up = self.answer.try_send(a);
    }

    /// The report for the requester.
    pub fn done(&self) -> SwitchoverDone {
        SwitchoverDone {
            epoch: self.epoch,
            pause: self.parked_at.elapsed(),
            peer: self.link.peer(),
            stop: self.stop,
        }
    }
}

/// A new primary after a switchover: the link to the old primary, which stays as the
/// backup unless it stopped.
#[derive(Debug)]
pub struct SwitchedIn {
    /// The link.
    pub link: LinkParts,
    /// The epoch the VM resumed from.
    pub epoch: u64,
    /// The old primary stays as this VM's backup (else it stopped).
    pub peer_stays: bool,
}

/// The switchover state of one primary engine.
#[derive(Default)]
pub struct EngineSwitch {
    request: Mutex<Option<Request>>,
    ready: AtomicBool,
    adopted: Mutex<Option<Adopted>>,
    out: Mutex<Option<SwitchedOut>>,
}

impl std::fmt::Debug for EngineSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSwitch")
            .field("requested", &self.requested())
            .finish_non_exhaustive()
    }
}

impl EngineSwitch {
    /// Ask for a switchover at the next epoch boundary; the answer arrives on the
    /// returned channel.
    pub fn request(&self, stop: bool) -> Result<Receiver<SwitchoverAnswer>, String> {
        let mut r = lock(&self.request);
        if r.is_some() {
            return Err("a switchover is already in progress".into());
        }
        let (tx, rx) = sync_channel(1);
        *r = Some(Request {
            stop,
            answer: tx,
            last: None,
            parked_at: None,
            sent_at: None,
        });
        Ok(rx)
    }

    /// Whether a switchover was asked for.
    pub fn requested(&self) -> bool {
        lock(&self.request).is_some()
    }

    /// The engine parked the vCPUs for the final epoch `epoch` with state `state`.
    pub(crate) fn set_last(&self, epoch: u64, state: Vec<u8>, parked_at: Instant) {
        if let Some(r) = lock(&self.request).as_mut() {
            r.last = Some((epoch, state));
            r.parked_at = Some(parked_at);
        }
    }

    /// The final epoch, once captured.
    pub(crate) fn last_epoch(&self) -> Option<u64> {
        lock(&self.request)
            .as_ref()
            .and_then(|r| r.last.as_ref().map(|(e, _)| *e))
    }

    /// The frame to end the epoch stream with: the switchover request after the final
    /// epoch, else `None` (the caller says Goodbye).
    pub(crate) fn final_frame(&self) -> Option<Message<'static>> {
        let mut r = lock(&self.request);
        let r = r.as_mut()?;
        let (epoch, _) = r.last.as_ref()?;
        r.sent_at = Some(Instant::now());
        Some(Message::Switchover {
            epoch: *epoch,
            phase: SwitchoverPhase::Request,
            stop: r.stop,
        })
    }

    /// The backup answered `Ready` for `epoch`: true if that is the one we asked about.
    pub(crate) fn on_ready(&self, epoch: u64) -> bool {
        let ok = self.last_epoch() == Some(epoch);
        if ok {
            self.ready.store(true, Ordering::SeqCst);
        }
        ok
    }

    /// Whether the backup said Ready.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Error if the backup has not answered the request within `limit`.
    pub(crate) fn check_overdue(&self, limit: Duration) -> Result<(), ReplicationError> {
        let sent = lock(&self.request).as_ref().and_then(|r| r.sent_at);
        match sent {
            Some(t) if !self.is_ready() && t.elapsed() > limit => {
                Err(ReplicationError::Peer(format!(
                    "the backup did not confirm the switchover within {:.1} s",
                    limit.as_secs_f64()
                )))
            }
            _ => Ok(()),
        }
    }

    /// The switchover failed: tell the requester why; a new one may be asked for.
    pub(crate) fn fail(&self, why: &str) {
        if let Some(r) = lock(&self.request).take() {
            let _gone = r.answer.try_send(Err(why.to_string()));
        }
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Give the engine a link to protect over without an initial sync.
    pub(crate) fn set_adopted(&self, a: Adopted) {
        *lock(&self.adopted) = Some(a);
    }

    /// The adopted link, once.
    pub(crate) fn take_adopted(&self) -> Option<Adopted> {
        lock(&self.adopted).take()
    }

    /// The backup said Ready and the engine stopped: keep what the hand-over needs.
    pub(crate) fn finish(
        &self,
        link: LinkParts,
        heartbeats: (Arc<AtomicBool>, JoinHandle<()>),
    ) -> Result<(), String> {
        let Some(r) = lock(&self.request).take() else {
            return Err("no switchover was asked for".into());
        };
        let Some((epoch, state)) = r.last else {
            return Err("the final epoch was never captured".into());
        };
        *lock(&self.out) = Some(SwitchedOut {
            link,
            epoch,
            state,
            stop: r.stop,
            parked_at: r.parked_at.unwrap_or_else(Instant::now),
            heartbeats: Some(heartbeats),
            answer: r.answer,
        });
        Ok(())
    }

    /// Whether the engine ended in a completed switchover (the hand-over is pending or
    /// done).
    pub fn switched_out(&self) -> bool {
        lock(&self.out).is_some()
    }

    /// The switched-out state, once.
    pub fn take_switched_out(&self) -> Option<SwitchedOut> {
        lock(&self.out).take()
    }
}

/// Turn on everything a primary needs before its vCPUs run, when it protects the VM over
/// an adopted link (no initial sync): hold output, and track every page and disk write
/// from this instant on. Call with the VM not running (restored, parked or never
/// started).
pub fn prepare_adopted_primary(
    vm: &Vm,
    outputs: &EpochOutputs,
    disks: &[Arc<ftvm_devices::disk::Disk>],
) -> Result<(), ReplicationError> {
    outputs.protect();
    vm.set_dirty_logging(true)?;
    let _ = crate::dirty::take_dirty_pages(vm)?;
    for d in disks {
        d.set_tracking(ftvm_devices::disk::Tracking::Data);
    }
    Ok(())
}

/// Step 3 on the old primary: close the output gate, release the fence, stop the
/// heartbeats and tell the backup the VM is its own. Nothing this process holds leaves
/// afterwards (the gate is closed before anything else).
pub fn hand_over(
    so: &mut SwitchedOut,
    fence: &mut HeldFence,
    outputs: &EpochOutputs,
    vm: &Vm,
    disks: &[Arc<ftvm_devices::disk::Disk>],
) -> Result<(), ReplicationError> {
    fence.release_for_switchover();
    // Anything still open or held is withheld by the closed gate, then dropped with it.
    outputs.unprotect();
    let _best_effort = vm.set_dirty_logging(false);
    crate::disk_epoch::stop_tracking(disks);
    if let Some((stop, t)) = so.heartbeats.take() {
        stop.store(true, Ordering::SeqCst);
        let _ = t.join();
    }
    let mut w = lock(&so.link.writer);
    w.send(&Message::Switchover {
        epoch: so.epoch,
        phase: SwitchoverPhase::Released,
        stop: so.stop,
    })?;
    w.flush()?;
    Ok(())
}

/// The old primary, after [`hand_over`], keeps the VM's replica over the same link: its
/// memory, disks and state are the final epoch's. Returns like [`Backup::watch`]:
/// `Some` when this process must run the VM again (the new primary was lost, or it
/// switched over back), `None` when the guest ended on the other side.
pub fn standby(
    backup: &Backup,
    so: SwitchedOut,
    vm: Arc<Vm>,
    cfg: &BackupConfig,
    out: &DirectOutput,
) -> Result<Option<Takeover>, ReplicationError> {
    let seed = crate::receiver::Replica::seeded(vm.clone(), so.state, so.epoch)
        .with_disks(cfg.disks.clone());
    match backup.watch_link(so.link, vm, Some(seed), cfg, out)? {
        Outcome::Takeover(t) => Ok(Some(t)),
        Outcome::Ended => Ok(None),
        Outcome::NoReplica(why) => Err(ReplicationError::Peer(format!(
            "{why}: the replica of the switchover epoch was lost"
        ))),
    }
}

/// The backup's side of the protocol (steps 2 and 4).
#[derive(Debug, Default)]
pub(crate) struct BackupSwitch {
    requested: Option<(u64, bool)>,
    released: Option<(u64, bool)>,
}

impl BackupSwitch {
    /// A `Switchover` frame from the primary. `Ok(true)`: the VM is ours now (take the
    /// fence and resume); `Ok(false)`: carry on; `Err`: the link is broken, why.
    pub(crate) fn on_frame(
        &mut self,
        replica: &crate::receiver::Replica,
        writer: &Mutex<Writer>,
        epoch: u64,
        phase: SwitchoverPhase,
        stop: bool,
    ) -> Result<bool, String> {
        match phase {
            SwitchoverPhase::Request => {
                if replica.committed() != Some(epoch) || !replica.has_state() {
                    let why = format!(
                        "switchover after epoch {epoch} refused: this replica holds {}",
                        replica
                            .committed()
                            .map_or("no epoch".into(), |c| format!("epoch {c}"))
                    );
                    let _ = lock(writer).send_error(ftvm_wire::ErrorCode::Protocol, &why);
                    return Err(why);
                }
                let mut w = lock(writer);
                w.send(&Message::Switchover {
                    epoch,
                    phase: SwitchoverPhase::Ready,
                    stop,
                })
                .and_then(|()| w.flush())
                .map_err(|e| format!("primary lost: cannot confirm the switchover: {e}"))?;
                self.requested = Some((epoch, stop));
                Ok(false)
            }
            SwitchoverPhase::Released if self.requested == Some((epoch, stop)) => {
                self.released = Some((epoch, stop));
                Ok(true)
            }
            other => Err(format!(
                "unexpected switchover step {other:?} (epoch {epoch}) from the primary"
            )),
        }
    }

    /// The switchover completed (epoch, the old primary stops).
    pub(crate) fn released(&self) -> Option<(u64, bool)> {
        self.released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_switchover_at_a_time_and_the_request_follows_the_final_epoch() {
        let s = EngineSwitch::default();
        assert!(!s.requested());
        let rx = s.request(true).unwrap();
        assert!(s
            .request(false)
            .unwrap_err()
            .contains("already in progress"));
        // No final epoch yet: the stream would end with a Goodbye, not a request.
        assert_eq!(s.final_frame(), None);
        assert!(!s.on_ready(7), "Ready before any request was sent");
        s.set_last(7, vec![1, 2, 3], Instant::now());
        assert_eq!(
            s.final_frame(),
            Some(Message::Switchover {
                epoch: 7,
                phase: SwitchoverPhase::Request,
                stop: true
            })
        );
        assert!(!s.on_ready(6), "Ready for another epoch");
        assert!(!s.is_ready());
        assert!(s.check_overdue(Duration::from_secs(60)).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        assert!(s
            .check_overdue(Duration::from_millis(10))
            .unwrap_err()
            .to_string()
            .contains("did not confirm the switchover"));
        // A failure answers the requester and allows a new request.
        s.fail("backup lost");
        assert_eq!(rx.recv().unwrap().unwrap_err(), "backup lost");
        assert!(!s.requested());
        let _rx = s.request(false).unwrap();
        s.set_last(9, vec![], Instant::now());
        assert!(s.on_ready(9));
        assert!(s.is_ready());
        assert!(s.check_overdue(Duration::ZERO).is_ok(), "confirmed in time");
    }
}

//! The primary: epoch replication of a running VM to a backup, with output commit.
//!
//! Threads: the **engine** pauses the VM every epoch, captures the dirty pages and the
//! state, seals the epoch's output, resumes, and queues the epoch; the **sender** streams
//! queued epochs to the backup while the next epoch runs (pipelining); the **ack reader**
//! releases each epoch's output when the backup acknowledges it and watches the backup's
//! heartbeat. At most `max_in_flight` epochs are captured and not yet acknowledged; at the
//! bound the next epoch waits (backpressure). Any failure of the backup ends protection:
//! held output is released and the VM carries on unprotected, never stalled.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::bus::lock;
use ftvm_vmm::Vm;
use ftvm_wire::{AuthKey, Message, Role as WireRole};

use crate::dirty::take_dirty_pages;
use crate::error::ReplicationError;
use crate::fence_marker::{MarkerError, SessionId, TakeoverMarker};
use crate::hot::{DirtyTracker, HotConfig, HotStats};
use crate::link::{connect, unix_nanos, Reader, Writer};
use crate::outputs::EpochOutputs;
use crate::pause_phases::{PausePhases, PauseTimes};
use crate::status::{ReplStatus, Role};
use crate::sync::{
    capture_paused, send_all_memory, send_captured, send_dirty_round, CapturedEpoch,
};

/// How long a switchover waits for the console thread to write the final epoch's output
/// (the old primary must release all of it before it lets go of the fence).
const CONSOLE_CATCH_UP: Duration = Duration::from_secs(5);

/// Settings of a protected VM.
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    /// The backup's address.
    pub backup: String,
    /// Epoch length.
    pub epoch: Duration,
    /// Declare the backup lost after this long without hearing from it.
    pub heartbeat_timeout: Duration,
    /// Most epochs captured and not yet acknowledged.
    pub max_in_flight: u64,
    /// Pre-shared key for the authenticated channel.
    pub key: Option<Vec<u8>>,
    /// Adaptive dirty tracking (hot pages left writable, unchanged pages not sent).
    pub hot: HotConfig,
    /// The VM's disks: synced first, then their writes travel in every epoch.
    pub disks: Vec<Arc<ftvm_devices::disk::Disk>>,
}

/// Smallest heartbeat timeout accepted: below this a busy host causes false failovers.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(200);

/// A protected VM's replication engine.
pub struct Primary {
    vm: Arc<Vm>,
    outputs: Arc<EpochOutputs>,
    cfg: PrimaryConfig,
    status: Mutex<ReplStatus>,
    acked: Condvar,
    lost: AtomicBool,
    stopping: AtomicBool,
    epoch_us: AtomicU64,
    socket: Mutex<Option<TcpStream>>,
    /// Since when epochs await acknowledgement without one arriving (`None`: none wait).
    ack_wait_since: Mutex<Option<Instant>>,
    hot: Mutex<HotStats>,
    /// Recent pauses by phase (crate::pause_phases).
    phases: Mutex<PausePhases>,
    /// The sender thread's priority (crate::sched), set by the sender when it starts.
    sender_prio: Mutex<Option<crate::sched::SenderPriority>>,
    /// Planned switchover (crate::switchover).
    switch: crate::switchover::EngineSwitch,
    /// The protection session (the connection's), once connected.
    session: Mutex<Option<SessionId>>,
    /// Serializes [`Self::unprotect_outputs`].
    unprotecting: Mutex<()>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Primary {
    /// An engine for `vm`, whose output sink is `outputs`.
    pub fn new(vm: Arc<Vm>, outputs: Arc<EpochOutputs>, cfg: PrimaryConfig) -> Arc<Self> {
        let epoch_us = cfg.epoch.as_micros() as u64;
        Arc::new(Self {
            vm,
            outputs,
            status: Mutex::new(ReplStatus::new(Role::Syncing, epoch_us)),
            acked: Condvar::new(),
            lost: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            epoch_us: AtomicU64::new(epoch_us),
            socket: Mutex::new(None),
            ack_wait_since: Mutex::new(None),
            hot: Mutex::new(HotStats::default()),
            phases: Mutex::new(PausePhases::default()),
            sender_prio: Mutex::new(None),
            switch: crate::switchover::EngineSwitch::default(),
            session: Mutex::new(None),
            unprotecting: Mutex::new(()),
            cfg,
        })
    }

    /// An engine that protects `vm` over `adopted`, a link whose peer already holds the VM
    /// as of `adopted.epoch` (after a planned switchover): no initial sync. Call
    /// [`crate::switchover::prepare_adopted_primary`] before the vCPUs run.
    pub fn adopt(
        vm: Arc<Vm>,
        outputs: Arc<EpochOutputs>,
        cfg: PrimaryConfig,
        adopted: crate::switchover::Adopted,
    ) -> Arc<Self> {
        let me = Self::new(vm, outputs, cfg);
        {
            let mut st = lock(&me.status);
            st.role = Role::Primary;
            st.first_protected_epoch = adopted.epoch + 1;
            st.epoch = adopted.epoch;
            st.last_acked = adopted.epoch;
        }
        me.switch.set_adopted(adopted);
        me
    }

    /// The planned-switchover state: ask for one, or collect the result.
    pub fn switchover(&self) -> &crate::switchover::EngineSwitch {
        &self.switch
    }

    /// Status for the API.
    pub fn status_json(&self) -> serde_json::Value {
        let mut v = lock(&self.status).to_json();
        let lat = self.outputs.latencies_us();
        v["output_latency_us_p50"] =
            serde_json::json!(crate::status::percentile(lat.iter().copied(), 50.0));
        v["output_latency_us_p99"] =
            serde_json::json!(crate::status::percentile(lat.iter().copied(), 99.0));
        v["output_held_bytes"] = serde_json::json!(self.outputs.held_bytes());
        let console = self.outputs.console();
        v["console_queued_bytes"] = serde_json::json!(console.console_queued());
        v["console_dropped_bytes"] = serde_json::json!(console.console_dropped());
        v["hot"] = serde_json::to_value(*lock(&self.hot)).unwrap_or_default();
        v["session"] = serde_json::json!(lock(&self.session).map(|s| s.to_string()));
        v["pause_phases_us"] = lock(&self.phases).to_json();
        v
    }

    /// Current role.
    pub fn role(&self) -> Role {
        lock(&self.status).role
    }

    /// Change the epoch length at run time.
    pub fn set_epoch(&self, d: Duration) {
        let us = d.as_micros().max(100) as u64;
        self.epoch_us.store(us, Ordering::Relaxed);
        lock(&self.status).epoch_us = us;
    }

    /// Run protection until the backup is lost (or never reached). Never stops the VM:
    /// on any failure output is released and the VM continues unprotected.
    pub fn run(self: &Arc<Self>) {
        let result = self.protect();
        if self.switch.switched_out() {
            // Planned switchover: the hand-over and the new role are the caller's.
            return;
        }
        if self.switch.requested() {
            // A switchover that did not complete never leaves the vCPUs parked.
            self.switch.fail(&format!(
                "switchover failed ({}); the VM continues on this host",
                result
                    .as_ref()
                    .err()
                    .map_or("replication stopped".into(), |e| e.to_string())
            ));
            let _not_paused_or_ended = self.vm.resume();
        }
        if self.stopping.load(Ordering::SeqCst) {
            // The guest ended: the backup was told (Goodbye) and does not take over.
            self.lost.store(true, Ordering::SeqCst);
            self.outputs.unprotect();
            lock(&self.status).role = Role::Unprotected;
            return;
        }
        let reason = match result {
            Ok(()) => "replication stopped".to_string(),
            Err(e) => e.to_string(),
        };
        self.lose(&reason);
    }

    /// The guest ended: stop epochs, tell the backup the VM is gone (so it does not take
    /// over), release held output. Call before shutting the VM down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.acked.notify_all();
    }

    /// Protection ended: release everything held and carry on unprotected, loudly.
    fn lose(&self, reason: &str) {
        if self.lost.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(s) = lock(&self.socket).as_ref() {
            let _already_closed = s.shutdown(Shutdown::Both);
        }
        {
            let mut st = lock(&self.status);
            st.role = Role::Unprotected;
            st.lost_reason = Some(reason.to_string());
        }
        self.unprotect_outputs();
        self.acked.notify_all();
        // Dirty logging costs a write fault per page per epoch: off while unprotected.
        let _best_effort = self.vm.set_dirty_logging(false);
        crate::disk_epoch::stop_tracking(&self.cfg.disks);
        if self.stopping.load(Ordering::SeqCst) {
            // The guest ended: the link closing now is the end of protection, not a loss.
        } else if lock(&self.status).first_protected_epoch == 0 {
            eprintln!("ftvm: WARNING: could not protect the VM ({reason}): it runs UNPROTECTED");
        } else {
            eprintln!("ftvm: WARNING: backup lost ({reason}): the VM continues UNPROTECTED");
        }
    }

    /// Release everything held and write output at once from now on, but only after the
    /// fence durably says that no backup may take the VM over (what leaves now is in no
    /// backup's replica): a backup that gets the fence later, this process dead, goes
    /// stale instead of resuming behind output clients saw. Until the marker is written
    /// nothing held leaves and the vCPUs are parked; if the fence turns out to be gone,
    /// nothing ever leaves (the fence keeper stops the process).
    fn unprotect_outputs(&self) {
        let _one_at_a_time = lock(&self.unprotecting);
        let Some(gate) = self.outputs.fence_gate() else {
            self.outputs.unprotect();
            return;
        };
        let t0 = Instant::now();
        let mut parked = false;
        loop {
            match gate.record_takeover(TakeoverMarker::Nobody) {
                Ok(()) => break,
                Err(MarkerError::NotHeld(why)) => {
                    eprintln!(
                        "ftvm: FENCE LOST: {why}; the backup may own the VM: this process releases nothing more"
                    );
                    gate.close();
                    return;
                }
                Err(e @ MarkerError::Failed(_)) => {
                    if !parked {
                        eprintln!(
                            "ftvm: WARNING: {e}; protection ended, but held output stays held and the vCPUs are parked until the fence says no backup may take over"
                        );
                        self.vm.set_hold(true);
                        parked = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        if parked {
            eprintln!(
                "ftvm: the fence says no backup may take over ({:.1} s): releasing held output",
                t0.elapsed().as_secs_f64()
            );
            if gate.holds() {
                self.vm.set_hold(false);
            }
        }
        self.outputs.unprotect();
    }

    fn protect(self: &Arc<Self>) -> Result<(), ReplicationError> {
        let (reader, writer, epoch, carry, fault_us) = match self.switch.take_adopted() {
            Some(a) => {
                // The marker names this connection's session already: the takeover that
                // made this process the primary wrote it.
                *lock(&self.session) = Some(a.link.session);
                *lock(&self.socket) = Some(
                    a.link
                        .stream
                        .try_clone()
                        .map_err(|e| ReplicationError::io("cloning the socket", e))?,
                );
                eprintln!(
                    "ftvm: protecting the VM over the switchover link to {} from epoch {} on (no initial sync: both sides hold epoch {})",
                    a.link.peer(),
                    a.epoch + 1,
                    a.epoch
                );
                // (The adaptive hot-page policy needs the fault cost measured before
                // the VM runs; it is off on a link adopted at a switchover.)
                (a.link.reader, a.link.writer, a.epoch, Vec::new(), None)
            }
            None => {
                let synced = self.connect_and_sync()?;
                // The backup's replica will hold everything released so far (the first
                // protected epoch carries the state after it): from now on it may take
                // over. Before the first epoch whose output is held.
                if let (Some(gate), Some(s)) = (self.outputs.fence_gate(), *lock(&self.session)) {
                    gate.record_takeover(TakeoverMarker::Session(s))
                        .map_err(|e| {
                            ReplicationError::Fence(format!(
                                "cannot name the new backup (session {s}) in the fence: {e}"
                            ))
                        })?;
                }
                synced
            }
        };
        self.protect_epochs(reader, writer, epoch, carry, fault_us)
    }

    /// Connect to the backup and sync it while the VM runs: (reader, writer, last epoch
    /// used, pages still to send, dirty-log fault cost).
    #[allow(clippy::type_complexity)]
    fn connect_and_sync(
        self: &Arc<Self>,
    ) -> Result<(Reader, Arc<Mutex<Writer>>, u64, Vec<u64>, Option<f64>), ReplicationError> {
        let key = match &self.cfg.key {
            Some(k) => {
                Some(AuthKey::new(k).map_err(|e| ReplicationError::Peer(format!("--key: {e}")))?)
            }
            None => None,
        };
        // Before connecting: the backup does not wait for a silent primary.
        let fault_us = self.measure_fault_cost();
        let link = connect(
            &self.cfg.backup,
            WireRole::Primary,
            &self.vm,
            key,
            Duration::from_secs(10),
        )?;
        *lock(&self.socket) = Some(
            link.stream
                .try_clone()
                .map_err(|e| ReplicationError::io("cloning the socket", e))?,
        );
        *lock(&self.session) = Some(SessionId(link.peer.session));
        let mut writer = link.writer;
        let mut reader = link.reader;
        eprintln!(
            "ftvm: connected to backup {}; initial sync (dirty log: {})",
            self.cfg.backup,
            if self.vm.manual_dirty_protect() {
                "manual protect"
            } else {
                "classic"
            }
        );

        // Initial sync while the VM runs: everything, then dirty rounds until small.
        self.vm.set_dirty_logging(true)?;
        let _ = take_dirty_pages(&self.vm)?;
        // Disks first (only blocks that differ from the backup's image); from then on
        // every guest disk write is logged and travels in its epoch.
        let (last, _) = crate::disk_sync::sync_disks(&self.cfg.disks, &mut reader, &mut writer, 0)?;
        let mut epoch = last + 1;
        // (A failed send: the backup may have said why, e.g. its disk is full.)
        send_all_memory(&self.vm, &mut writer, epoch, |_, _| {})
            .map_err(|e| crate::disk_sync::explain(&mut reader, e))?;
        let mut bounce = Vec::new();
        let small = 2048;
        let mut carry = Vec::new();
        for _ in 0..20 {
            let dirty = take_dirty_pages(&self.vm)?;
            if dirty.len() <= small {
                carry = dirty;
                break;
            }
            epoch += 1;
            send_dirty_round(&self.vm, &mut writer, epoch, &dirty, &mut bounce)
                .map_err(|e| crate::disk_sync::explain(&mut reader, e))?;
        }
        lock(&self.status).bytes = writer.frames().bytes_written();
        Ok((reader, Arc::new(Mutex::new(writer)), epoch, carry, fault_us))
    }

    /// Epochs until the backup is lost, the guest ends, or a planned switchover.
    fn protect_epochs(
        self: &Arc<Self>,
        mut reader: Reader,
        writer: Arc<Mutex<Writer>>,
        mut epoch: u64,
        carry: Vec<u64>,
        fault_us: Option<f64>,
    ) -> Result<(), ReplicationError> {
        // The acknowledgement reader and the sender.
        let (tx, rx) = sync_channel::<CapturedEpoch>(self.cfg.max_in_flight as usize + 1);
        let (pool_tx, pool_rx) = sync_channel::<CapturedEpoch>(self.cfg.max_in_flight as usize + 2);
        for _ in 0..self.cfg.max_in_flight + 1 {
            let _ = pool_tx.try_send(CapturedEpoch::default());
        }
        let me = self.clone();
        let ack_thread = std::thread::Builder::new()
            .name("ft-acks".into())
            .spawn(move || {
                let r = me.read_acks(&mut reader);
                if r.is_ok() && me.switch.is_ready() {
                    // Switchover: the link lives on, in the next role.
                    return Some(reader);
                }
                me.lose(
                    &r.err()
                        .map_or("backup closed the connection".into(), |e| e.to_string()),
                );
                None
            })
            .map_err(|e| ReplicationError::io("starting the ack thread", e))?;
        // Heartbeats on their own timer (crate::heartbeat), sharing the writer.
        let hb_stop = Arc::new(AtomicBool::new(false));
        let hb_thread = {
            let outputs = self.outputs.clone();
            crate::heartbeat::spawn(
                "ft-heartbeat",
                writer.clone(),
                hb_stop.clone(),
                crate::heartbeat::interval(self.cfg.heartbeat_timeout),
                move || outputs.released_epoch(),
            )?
        };
        let me = self.clone();
        let send_writer = writer.clone();
        let send_thread = std::thread::Builder::new()
            .name("ft-send".into())
            .spawn(move || {
                if let Err(e) = me.send_epochs(&send_writer, rx, pool_tx) {
                    me.lose(&e.to_string());
                }
            })
            .map_err(|e| ReplicationError::io("starting the sender thread", e))?;

        // The first protected epoch carries the carry-over pages and the first state;
        // output is held from its boundary on.
        let mut tracker = DirtyTracker::new(
            self.cfg.hot,
            self.vm.manual_dirty_protect(),
            fault_us,
            carry,
        );
        let mut first = true;
        let mut next = Instant::now();
        while !self.lost.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next = Instant::now() + Duration::from_micros(self.epoch_us.load(Ordering::Relaxed));
            if !self.wait_for_slot() {
                break;
            }
            let Ok(mut c) = pool_rx.recv() else { break };
            // Re-protect the previous epoch's cold pages now, while the vCPUs run, to keep
            // that work out of the pause (see ftvm_vmm::dirty). Writes between the last
            // resume and here were not logged, so those pages are copied again in this
            // epoch (the carry). Hot pages stay writable (see crate::hot).
            self.vm.clear_guest_dirty_pages(tracker.carry())?;
            // Staging large enough, already faulted in, before the pause.
            tracker.prepare_staging(&mut c.bytes);
            epoch += 1;
            let tp = Instant::now();
            let park = self.vm.pause();
            let park_us = tp.elapsed().as_secs_f64() * 1e6;
            if let Err(e) = park {
                // A pause that timed out left the vCPUs running (ftvm_vmm::pause_timeout):
                // protection ends, output is released. Otherwise the guest ended under
                // us; serve() is stopping protection.
                if matches!(e, ftvm_vmm::error::VmmError::PauseTimeout(_)) {
                    self.lose(&format!("epoch {epoch}: {e}; protection ends"));
                }
                break;
            }
            let captured = capture_paused(&self.vm, epoch, tracker.carry(), &mut c);
            let ts = Instant::now();
            let drained = crate::disk_epoch::drain_disks(&self.cfg.disks, &mut c.disks);
            if first {
                crate::failpoint::pause(crate::failpoint::FIRST_PROTECTED_EPOCH);
                self.outputs.protect();
                // The backup may have been lost before this point (lose() released
                // everything and unprotected); holding from now on would hold forever.
                if self.lost.load(Ordering::SeqCst) {
                    self.unprotect_outputs();
                }
            }
            c.output = self.outputs.seal(epoch);
            // A planned switchover: this was the last epoch; the vCPUs stay parked.
            let last = self.switch.requested();
            let tr = Instant::now();
            if last {
                self.switch.set_last(epoch, c.state.clone(), tp);
            } else {
                self.vm.resume()?;
            }
            let pause_us = tp.elapsed().as_micros() as u64;
            lock(&self.phases).record(PauseTimes {
                park_us,
                log_us: c.log_us,
                copy_us: c.copy_us,
                state_us: c.state_us,
                seal_us: (tr - ts).as_secs_f64() * 1e6,
                resume_us: tr.elapsed().as_secs_f64() * 1e6,
                total_us: pause_us as f64,
            });
            let logged = captured?;
            drained?;
            tracker.record_copy(c.pages(), c.copy_us);
            let copied = c.pages();
            // Off the pause: unchanged pages leave the epoch; choose the pages to clear.
            tracker.after_resume(&mut c, &logged);
            *lock(&self.hot) = tracker.stats();
            if first {
                first = false;
                lock(&self.status).first_protected_epoch = epoch;
            }
            {
                let mut st = lock(&self.status);
                st.epoch = epoch;
                if st.in_flight == 0 {
                    lock(&self.ack_wait_since).get_or_insert_with(Instant::now);
                }
                st.in_flight += 1;
                st.record_epoch(pause_us, copied);
            }
            if tx.send(c).is_err() || last {
                break;
            }
        }
        drop(tx);
        let _ = send_thread.join();
        if let Some(last) = self.switch.last_epoch() {
            // The sender ended the stream with the switchover request; the ack reader
            // hands the link back when the backup says Ready, after acknowledging `last`.
            let reader = ack_thread.join().ok().flatten();
            // Released means out of the console thread too, which writes asynchronously:
            // give it a moment to finish the last epoch's bytes before deciding.
            let released = reader.is_some() && self.outputs.wait_released(last, CONSOLE_CATCH_UP);
            let stream = lock(&self.socket).as_ref().and_then(|s| s.try_clone().ok());
            let session = *lock(&self.session);
            if let (Some(reader), true, Some(stream), Some(session)) =
                (reader, released, stream, session)
            {
                let link = crate::switchover::LinkParts {
                    reader,
                    writer,
                    stream,
                    session,
                };
                if let Err(why) = self.switch.finish(link, (hb_stop, hb_thread)) {
                    return Err(ReplicationError::Peer(why));
                }
                return Ok(());
            }
            // The backup was lost (protection ended, output released): the VM goes on
            // here.
            let why = lock(&self.status)
                .lost_reason
                .clone()
                .unwrap_or_else(|| "the backup did not confirm it".into());
            self.switch.fail(&format!(
                "switchover failed ({why}); the VM continues on this host, unprotected"
            ));
            hb_stop.store(true, Ordering::SeqCst);
            let _ = hb_thread.join();
            self.vm.resume()?;
            return Err(ReplicationError::Peer(why));
        }
        if self.switch.requested() {
            self.switch.fail(if self.stopping.load(Ordering::SeqCst) {
                "the guest ended before the switchover"
            } else {
                "protection ended before the switchover"
            });
        }
        hb_stop.store(true, Ordering::SeqCst);
        let _ = hb_thread.join();
        let _ = ack_thread.join();
        Ok(())
    }

    /// The dirty-log write-fault cost on this host, for the adaptive policy (`None` when
    /// the policy is off or cannot apply, or the measurement failed).
    fn measure_fault_cost(&self) -> Option<f64> {
        if !self.cfg.hot.enabled || !self.vm.manual_dirty_protect() {
            return None;
        }
        match ftvm_vmm::calibrate::measure_fault_cost(
            512,
            Duration::from_millis(10),
            Duration::from_millis(300),
        ) {
            Ok(c) => {
                eprintln!(
                    "ftvm: a dirty-log write fault costs the guest {:.1} us on this host \
                     ({:.1} us of vCPU CPU time; adaptive dirty tracking on)",
                    c.fault_us, c.fault_cpu_us
                );
                Some(c.fault_us)
            }
            Err(e) => {
                eprintln!(
                    "ftvm: could not measure the dirty-log fault cost ({e}): \
                     no page is kept hot"
                );
                None
            }
        }
    }

    /// Wait until fewer than `max_in_flight` epochs await acknowledgement. False if the
    /// backup was lost meanwhile.
    fn wait_for_slot(&self) -> bool {
        let mut st = lock(&self.status);
        while st.in_flight >= self.cfg.max_in_flight
            && !self.lost.load(Ordering::SeqCst)
            && !self.stopping.load(Ordering::SeqCst)
        {
            st = match self.acked.wait_timeout(st, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        !self.lost.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    fn send_epochs(
        &self,
        writer: &Mutex<Writer>,
        rx: Receiver<CapturedEpoch>,
        pool: SyncSender<CapturedEpoch>,
    ) -> Result<(), ReplicationError> {
        // Below the vCPUs' priority while the backup keeps up (crate::sched).
        *lock(&self.sender_prio) = Some(crate::sched::SenderPriority::new(
            crate::sched::sender_nice(),
        ));
        while let Ok(c) = rx.recv() {
            self.update_sender_priority();
            let mut w = lock(writer);
            // Tell the backup which epochs' output is already out, so that at takeover it
            // releases only what may not have been.
            w.send(&Message::Heartbeat {
                epoch: self.outputs.released_epoch(),
                sent_unix_nanos: unix_nanos(),
            })?;
            send_captured(&mut w, &c)?;
            w.flush()?;
            lock(&self.status).bytes = w.frames().bytes_written();
            drop(w);
            let _ = pool.try_send(c);
        }
        let mut w = lock(writer);
        let _ = match self.switch.final_frame() {
            Some(m) => w.send(&m),
            None => w.send(&Message::Goodbye),
        };
        let _backup_may_be_gone = w.flush();
        Ok(())
    }

    /// A backup that heartbeats but does not acknowledge must not hold output forever:
    /// waiting longer than 2 × heartbeat timeout + one epoch for an acknowledgement ends
    /// protection like any other loss.
    /// Until the backup acknowledged its first complete epoch it is still draining the
    /// initial sync, which can take long on a busy host: 30 s then.
    fn check_ack_deadline(&self) -> Result<(), ReplicationError> {
        let mut deadline = self.cfg.heartbeat_timeout * 2
            + Duration::from_micros(self.epoch_us.load(Ordering::Relaxed));
        if lock(&self.status).role != Role::Primary {
            deadline = deadline.max(Duration::from_secs(30));
        }
        if let Some(t) = *lock(&self.ack_wait_since) {
            if t.elapsed() > deadline {
                return Err(ReplicationError::Peer(format!(
                    "the backup acknowledged no epoch for {:.1} s (deadline {:.1} s) while heartbeating",
                    t.elapsed().as_secs_f64(),
                    deadline.as_secs_f64()
                )));
            }
        }
        Ok(())
    }

    /// The sender below the vCPUs' priority, or back at the process's while it lags; called
    /// by the sender before each epoch and by the ack reader on every message, so that a
    /// sender starved in the middle of a large epoch is raised within a heartbeat interval.
    fn update_sender_priority(&self) {
        let lagging = self.sender_lagging();
        if let Some(p) = lock(&self.sender_prio).as_mut() {
            p.update(lagging);
        }
    }

    /// Whether the oldest unacknowledged epoch has waited a quarter of the acknowledgement
    /// deadline (`check_ack_deadline`): the sender then runs at full priority again.
    fn sender_lagging(&self) -> bool {
        let deadline = self.cfg.heartbeat_timeout * 2
            + Duration::from_micros(self.epoch_us.load(Ordering::Relaxed));
        lock(&self.ack_wait_since).is_some_and(|t| t.elapsed() > deadline / 4)
    }

    fn read_acks(&self, r: &mut Reader) -> Result<(), ReplicationError> {
        if let Some(s) = lock(&self.socket).as_ref() {
            s.set_read_timeout(Some(self.cfg.heartbeat_timeout))
                .map_err(|e| ReplicationError::io("setting the heartbeat timeout", e))?;
        }
        loop {
            let msg = match r.recv() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(ReplicationError::Peer(
                        "backup closed the connection".into(),
                    ))
                }
                Err(e) => {
                    if self.lost.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    return Err(ReplicationError::Peer(format!(
                        "no acknowledgement or heartbeat from the backup ({e})"
                    )));
                }
            };
            self.update_sender_priority();
            match msg {
                Message::Ack { epoch } => {
                    self.outputs.release_through(epoch);
                    let mut st = lock(&self.status);
                    if st.role == Role::Syncing
                        && st.first_protected_epoch != 0
                        && epoch >= st.first_protected_epoch
                    {
                        // The backup holds a complete replica from here on.
                        st.role = Role::Primary;
                        eprintln!(
                            "ftvm: backup in sync after {:.2} s: the VM is protected (epoch {} ms)",
                            st.started.elapsed().as_secs_f64(),
                            st.epoch_us as f64 / 1000.0
                        );
                    }
                    st.last_acked = st.last_acked.max(epoch);
                    st.in_flight = st.epoch.saturating_sub(st.last_acked);
                    st.last_heard = Instant::now();
                    *lock(&self.ack_wait_since) = (st.in_flight > 0).then(Instant::now);
                    drop(st);
                    self.acked.notify_all();
                }
                Message::Heartbeat { .. } => {
                    lock(&self.status).last_heard = Instant::now();
                    self.check_ack_deadline()?;
                    self.switch.check_overdue(
                        (self.cfg.heartbeat_timeout * 4).max(Duration::from_secs(5)),
                    )?;
                }
                Message::Switchover {
                    epoch,
                    phase: ftvm_wire::SwitchoverPhase::Ready,
                    ..
                } if self.switch.on_ready(epoch) => return Ok(()),
                Message::Error { code, message } => {
                    return Err(ReplicationError::Peer(format!(
                        "backup reported {code:?}: {message}"
                    )))
                }
                Message::Goodbye => {
                    return Err(ReplicationError::Peer("backup said goodbye".into()))
                }
                other => {
                    return Err(ReplicationError::Peer(format!(
                        "unexpected {} from the backup",
                        other.summary()
                    )))
                }
            }
        }
    }
}

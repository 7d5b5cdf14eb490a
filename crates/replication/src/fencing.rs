//! Fencing: never two live copies of a VM (invariant 5).
//!
//! Whoever runs the VM holds its fence; a backup resumes the VM only after it took the
//! fence itself, and gives up for good (`stale`) if it cannot within a bound. Three modes:
//!
//! - `etcd:URL[,URL...]` with a VM id: the key `ftvm/fence/<vm-id>` in etcd v3, attached to
//!   a lease the holder keeps alive. The holder proves it still holds the fence by renewing
//!   the lease; it stops releasing output (and parks the vCPUs) as soon as it cannot prove
//!   it (see [`LeaseTimes`]), and exits when the lease is gone.
//! - `lock:PATH`: an `flock` on a file both hosts can lock ([`crate::fence`]).
//! - `none`: no fencing; a partition can run the VM twice.
//!
//! A guest that ends cleanly leaves the value `ended` in the fence (the etcd key without a
//! lease, or the lock file's content), so a backup that missed the Goodbye frame does not
//! bring the VM back.
//!
//! Next to the fence the holder keeps a takeover marker ([`crate::fence_marker`]): which
//! backup session may take the VM over. A backup takes the fence only if it names its own
//! session; the holder writes `none` before it releases any output unprotected.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftvm_devices::bus::lock;

use crate::error::ReplicationError;
use crate::fence::Fence as LockFence;
use crate::fence_etcd::{Cmp, Etcd, EtcdError, Put};
use crate::fence_marker::{
    etcd_marker_key, lock_marker, lock_value, refusal, MarkerError, MarkerStore, TakeoverClaim,
    TakeoverMarker,
};

/// The modes, for error messages and help.
pub const FENCE_MODES: &str = "`--fence etcd:http://HOST:PORT[,http://HOST:PORT...]` (with `--vm-id NAME`), `--fence lock:PATH` (a lock file both hosts can flock), or `--fence none` (no fencing: a partition can run the VM twice)";

/// The value a holder writes into the fence.
fn running_value() -> Vec<u8> {
    format!(
        "running pid={} host={}",
        std::process::id(),
        hostname().unwrap_or_else(|| "?".into())
    )
    .into_bytes()
}

/// The value left in the fence when the guest ended cleanly.
pub const ENDED: &[u8] = b"ended";

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
}

/// How the VM is fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceMode {
    /// A leased key in etcd.
    Etcd {
        /// `http://HOST:PORT` endpoints of one etcd cluster.
        endpoints: Vec<String>,
        /// The VM's name: the key is `ftvm/fence/<vm_id>`.
        vm_id: String,
    },
    /// An flock'ed file.
    Lock(PathBuf),
    /// No fencing.
    None,
}

impl FenceMode {
    /// Parse `--fence SPEC` (`vm_id` from `--vm-id`, needed by etcd).
    pub fn parse(spec: &str, vm_id: Option<&str>) -> Result<Self, String> {
        if spec == "none" {
            return Ok(Self::None);
        }
        if let Some(path) = spec.strip_prefix("lock:") {
            if path.is_empty() {
                return Err("--fence lock:PATH needs a path".into());
            }
            return Ok(Self::Lock(PathBuf::from(path)));
        }
        if let Some(urls) = spec.strip_prefix("etcd:") {
            let endpoints: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if endpoints.is_empty() {
                return Err("--fence etcd: needs at least one http://HOST:PORT endpoint".into());
            }
            if let Some(bad) = endpoints.iter().find(|e| !e.starts_with("http://")) {
                return Err(format!(
                    "--fence etcd: endpoint {bad:?} must look like http://HOST:PORT (etcd's client URL)"
                ));
            }
            let Some(vm_id) = vm_id else {
                return Err("--fence etcd:... needs --vm-id NAME (the same on primary and backup): the fence key is ftvm/fence/NAME".into());
            };
            if vm_id.is_empty()
                || !vm_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "--vm-id {vm_id:?}: use letters, digits, '-', '_' and '.'"
                ));
            }
            return Ok(Self::Etcd {
                endpoints,
                vm_id: vm_id.to_string(),
            });
        }
        Err(format!("--fence {spec}: unknown mode; use {FENCE_MODES}"))
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Etcd { endpoints, vm_id } => {
                format!("etcd key {} at {}", etcd_key(vm_id), endpoints.join(","))
            }
            Self::Lock(p) => format!("lock file {}", p.display()),
            Self::None => "none".into(),
        }
    }
}

fn etcd_key(vm_id: &str) -> String {
    format!("ftvm/fence/{vm_id}")
}

/// The lease arithmetic, all derived from the heartbeat timeout `H`.
///
/// - **TTL** = max(2 s, ⌈3·H⌉ in whole seconds): etcd's leases count whole seconds and
///   etcd raises anything shorter to its minimum (2 s with default settings).
/// - **Renewal** every TTL/6, each request timing out after TTL/6.
/// - **Self-fence deadline**: a holder counts its fence valid until
///   `send time of the last successful renewal + 2/3·TTL` (a monotonic clock that also
///   counts host suspend). etcd sets the lease's expiry to at least `TTL` after it
///   processed that renewal, which was after we sent it, so the holder stops releasing
///   output TTL/3 before the earliest moment anyone else can take the key: margin for
///   clock-rate drift between hosts (≤ 1/3 of the TTL, far more than real clocks drift)
///   and for the check-then-write window.
/// - **Takeover bound** (backup): a dead holder stopped renewing by the time the loss is
///   detected, so its lease ends within TTL (+ etcd's expiry scan, 0.5 s; a leader change
///   in etcd may restart the TTL once): the backup tries for 2·TTL + 1 s and then gives up
///   for good (`stale`). Takeover after a primary dies takes H (detection) + at most
///   TTL + 0.5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// The heartbeat timeout they derive from.
    pub heartbeat_timeout: Duration,
    /// etcd lease TTL.
    pub ttl: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// The fence counts as held this long after the last successful renewal was sent.
    pub self_fence_after: Duration,
}

impl LeaseTimes {
    /// The times for heartbeat timeout `h`.
    pub fn new(h: Duration) -> Self {
        let ttl_s = (h * 3).as_secs_f64().ceil().max(2.0) as u64;
        Self::with_ttl(h, Duration::from_secs(ttl_s))
    }

    fn with_ttl(h: Duration, ttl: Duration) -> Self {
        Self {
            heartbeat_timeout: h,
            ttl,
            renew_every: ttl / 6,
            self_fence_after: ttl * 2 / 3,
        }
    }

    /// How long a backup tries to take the fence after the primary was lost.
    pub fn takeover_bound(&self, mode: &FenceMode) -> Duration {
        match mode {
            FenceMode::Etcd { .. } => self.ttl * 2 + Duration::from_secs(1),
            // The kernel frees a dead holder's flock at once; a held one means the
            // primary's process lives.
            FenceMode::Lock(_) => self.heartbeat_timeout + Duration::from_secs(2),
            FenceMode::None => Duration::ZERO,
        }
    }
}

/// Nanoseconds on CLOCK_BOOTTIME: monotonic, and counts time the host was suspended.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass, which lives on our stack.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        return u64::MAX; // never: CLOCK_BOOTTIME exists on every Linux KVM runs on
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Whether this process may release the VM's output now. Checked before every release.
///
/// It also writes the fence's takeover marker ([`record_takeover`](Self::record_takeover)),
/// so that whoever releases output can first say which backup may take over.
#[derive(Debug)]
pub struct FenceGate {
    valid_until_ns: AtomicU64,
    lost: AtomicBool,
    marker: MarkerStore,
    /// The fence says `ended`, which no takeover passes: no marker is needed any more
    /// (and writing one would overwrite `ended`).
    ended: AtomicBool,
}

impl FenceGate {
    /// A gate that always holds and has no marker to write (no fence held).
    pub fn always() -> Arc<Self> {
        Self::new(u64::MAX, MarkerStore::None)
    }

    fn new(ns: u64, marker: MarkerStore) -> Arc<Self> {
        Arc::new(Self {
            valid_until_ns: AtomicU64::new(ns),
            lost: AtomicBool::new(false),
            marker,
            ended: AtomicBool::new(false),
        })
    }

    /// Durably record in the fence who may take the VM over from this holder; `Ok` only
    /// once the store has it. Call with [`TakeoverMarker::Nobody`] before releasing any
    /// output unprotected, and release nothing on `Err`. With `--fence none`: always `Ok`.
    pub fn record_takeover(&self, m: TakeoverMarker) -> Result<(), MarkerError> {
        if self.ended.load(Ordering::SeqCst) {
            // The guest ended and the fence says so: no backup takes over, whatever the
            // marker; the last output may leave.
            return Ok(());
        }
        if self.is_lost() {
            return Err(MarkerError::NotHeld(
                "the fence was lost or handed over".into(),
            ));
        }
        self.marker.record(m)
    }

    /// True while this process can prove it holds the fence.
    pub fn holds(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && now_ns() < self.valid_until_ns.load(Ordering::SeqCst)
    }

    /// True once the fence is known to be gone for good.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// A gate valid for `d` from now (tests of the code that checks gates).
    #[doc(hidden)]
    pub fn for_test(d: Duration) -> Arc<Self> {
        Self::new(
            now_ns().saturating_add(d.as_nanos() as u64),
            MarkerStore::None,
        )
    }

    /// Extend a gate made by [`for_test`](Self::for_test).
    #[doc(hidden)]
    pub fn renew_for_test(&self, d: Duration) {
        self.renewed(now_ns(), d);
    }

    fn renewed(&self, sent_ns: u64, valid_for: Duration) {
        let until = sent_ns.saturating_add(valid_for.as_nanos() as u64);
        self.valid_until_ns.fetch_max(until, Ordering::SeqCst);
    }

    fn set_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Close the gate for good: nothing passes it any more (a primary handing the VM to
    /// its backup at a planned switchover, before it releases the fence).
    pub fn close(&self) {
        self.set_lost();
    }
}

/// What the fence keeper tells the process running the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceEvent {
    /// The fence cannot be proven held right now: output is withheld; park the vCPUs.
    Suspect(String),
    /// Proven held again: the vCPUs may run.
    Restored,
    /// The fence is gone for good: the backup may own the VM. Stop at once.
    Lost(String),
}

/// Receives [`FenceEvent`]s (from the keeper thread).
pub type FenceEvents = Arc<dyn Fn(FenceEvent) + Send + Sync>;

enum Held {
    None,
    /// Shared with the gate's marker store; `None` once released.
    Lock(Arc<Mutex<Option<LockFence>>>),
    Etcd {
        etcd: Etcd,
        key: String,
        lease: i64,
    },
}

/// A fence this process holds; released when dropped (or when the process dies).
pub struct HeldFence {
    mode: FenceMode,
    held: Held,
    gate: Arc<FenceGate>,
    stop: Arc<AtomicBool>,
    keeper: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HeldFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldFence")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What a backup's attempt to take the fence came to.
#[derive(Debug)]
pub enum TakeoverFence {
    /// Taken: this process may run the VM.
    Taken(HeldFence),
    /// The fence says the guest ended cleanly: there is nothing to take over.
    Ended,
    /// Not taken: within the bound (the primary may still run the VM), or the takeover
    /// marker does not name this backup's session (its replica is stale). Why.
    Stale(String),
}

/// The writes of a transaction that takes the etcd fence: the fence key `key` = `value`
/// under `lease`, and the takeover marker `marker_key` = `marker` under no lease (it
/// outlives its writer).
fn take_puts<'a>(
    key: &'a str,
    value: &'a [u8],
    lease: i64,
    marker_key: &'a str,
    marker: &'a [u8],
) -> [Put<'a>; 2] {
    [
        Put { key, value, lease },
        Put {
            key: marker_key,
            value: marker,
            lease: 0,
        },
    ]
}

fn etcd_err(e: EtcdError) -> ReplicationError {
    ReplicationError::Fence(e.to_string())
}

impl HeldFence {
    /// Take the fence now to run the VM (a primary starting), or fail saying who holds it.
    pub fn acquire(
        mode: &FenceMode,
        times: LeaseTimes,
        events: FenceEvents,
    ) -> Result<Self, ReplicationError> {
        match mode {
            FenceMode::None => Ok(Self::plain(mode, Held::None)),
            FenceMode::Lock(path) => {
                // A VM started here runs unprotected at first: no backup may take over.
                let f = LockFence::acquire_now(path)?;
                f.write_content(&lock_value(&running_value(), TakeoverMarker::Nobody))?;
                Ok(Self::plain(mode, Held::Lock(Arc::new(Mutex::new(Some(f))))))
            }
            FenceMode::Etcd { endpoints, vm_id } => {
                let etcd = Etcd::new(endpoints.clone(), times.renew_every);
                let key = etcd_key(vm_id);
                let marker_key = etcd_marker_key(vm_id);
                let sent = now_ns();
                let (lease, ttl) = etcd.grant(times.ttl.as_secs() as i64).map_err(etcd_err)?;
                let times =
                    LeaseTimes::with_ttl(times.heartbeat_timeout, Duration::from_secs(ttl as u64));
                // Take the key (absent, or left `ended` by a guest that ended) and say no
                // backup may take over, in one transaction.
                let value = running_value();
                let puts = take_puts(&key, &value, lease, &marker_key, b"none");
                let mut t = etcd
                    .txn(&[Cmp::Absent(&key)], &puts, &[&key])
                    .map_err(etcd_err)?;
                if !t.succeeded
                    && t.read
                        .first()
                        .cloned()
                        .flatten()
                        .is_some_and(|kv| kv.value == ENDED)
                {
                    t = etcd
                        .txn(&[Cmp::Value(&key, ENDED)], &puts, &[&key])
                        .map_err(etcd_err)?;
                }
                if t.succeeded {
                    return Ok(Self::etcd(
                        mode, etcd, key, marker_key, lease, sent, times, events,
                    ));
                }
                let _unused_lease_expires_anyway = etcd.revoke(lease);
                let (held_by, held_lease) = t.read.first().cloned().flatten().map_or_else(
                    || ("?".to_string(), 0),
                    |kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease),
                );
                Err(ReplicationError::Fence(format!(
                    "fence key {key} in etcd is held ({held_by}, lease {held_lease:x}): another ftvm runs VM {vm_id}; not starting it twice"
                )))
            }
        }
    }

    /// A backup after the loss of its primary: take the fence within the bound
    /// ([`LeaseTimes::takeover_bound`]), or learn the guest ended, or give up (stale).
    /// The fence is taken only if its takeover marker names `claim.session`, and then
    /// holds `claim.then`, in the same step (etcd: one transaction; lock: under the
    /// flock); a marker naming anyone else means this replica is stale, at once.
    /// `waiting` is told every couple of seconds how long it has waited and why.
    pub fn acquire_for_takeover(
        mode: &FenceMode,
        times: LeaseTimes,
        events: FenceEvents,
        claim: TakeoverClaim,
        mut waiting: impl FnMut(Duration, &str),
    ) -> Result<TakeoverFence, ReplicationError> {
        let bound = times.takeover_bound(mode);
        let t0 = Instant::now();
        let mut last_report: Option<Instant> = None;
        let mut why;
        let mut report = |why: &str, last: &mut Option<Instant>| {
            if last.is_none_or(|l| l.elapsed() >= Duration::from_secs(2)) {
                waiting(t0.elapsed(), why);
                *last = Some(Instant::now());
            }
        };
        match mode {
            FenceMode::None => return Ok(TakeoverFence::Taken(Self::plain(mode, Held::None))),
            FenceMode::Lock(path) => loop {
                match LockFence::acquire_now(path) {
                    Ok(f) => {
                        let content = f.read_content()?;
                        if content.trim_ascii() == ENDED {
                            return Ok(TakeoverFence::Ended);
                        }
                        let found = lock_marker(&content);
                        if found != Some(TakeoverMarker::Session(claim.session)) {
                            // Dropping `f` unlocks: this process does not run the VM.
                            return Ok(TakeoverFence::Stale(refusal(found, claim.session)));
                        }
                        f.write_content(&lock_value(&running_value(), claim.then))?;
                        let held = Held::Lock(Arc::new(Mutex::new(Some(f))));
                        return Ok(TakeoverFence::Taken(Self::plain(mode, held)));
                    }
                    Err(e) => why = e.to_string(),
                }
                if t0.elapsed() >= bound {
                    break;
                }
                report(&why, &mut last_report);
                std::thread::sleep(Duration::from_millis(20));
            },
            FenceMode::Etcd { endpoints, vm_id } => {
                let etcd = Etcd::new(endpoints.clone(), times.renew_every);
                let key = etcd_key(vm_id);
                let marker_key = etcd_marker_key(vm_id);
                let mine = TakeoverMarker::Session(claim.session).encode();
                let then = claim.then.encode();
                let value = running_value();
                loop {
                    let sent = now_ns();
                    match etcd.grant(times.ttl.as_secs() as i64) {
                        Ok((lease, ttl)) => {
                            // One transaction: the key is free and the marker names this
                            // session; then the key is ours and the marker says `then`.
                            let t = etcd.txn(
                                &[Cmp::Absent(&key), Cmp::Value(&marker_key, mine.as_bytes())],
                                &take_puts(&key, &value, lease, &marker_key, then.as_bytes()),
                                &[&key, &marker_key],
                            );
                            match t {
                                Ok(t) if t.succeeded => {
                                    let times = LeaseTimes::with_ttl(
                                        times.heartbeat_timeout,
                                        Duration::from_secs(ttl as u64),
                                    );
                                    return Ok(TakeoverFence::Taken(Self::etcd(
                                        mode, etcd, key, marker_key, lease, sent, times, events,
                                    )));
                                }
                                Ok(t) => {
                                    let _unused_lease_expires_anyway = etcd.revoke(lease);
                                    let current = t.read.first().cloned().flatten();
                                    match current {
                                        Some(kv) if kv.value == ENDED => {
                                            return Ok(TakeoverFence::Ended)
                                        }
                                        Some(kv) => {
                                            why = format!(
                                                "fence key {key} is still held ({}, lease {:x})",
                                                String::from_utf8_lossy(&kv.value),
                                                kv.lease
                                            );
                                        }
                                        None => {
                                            // Free, so the marker is what failed.
                                            let found =
                                                t.read.get(1).cloned().flatten().map(|kv| {
                                                    TakeoverMarker::parse(&String::from_utf8_lossy(
                                                        &kv.value,
                                                    ))
                                                });
                                            return Ok(TakeoverFence::Stale(refusal(
                                                found.flatten(),
                                                claim.session,
                                            )));
                                        }
                                    }
                                }
                                Err(e) => {
                                    let _unused_lease_expires_anyway = etcd.revoke(lease);
                                    why = e.to_string();
                                }
                            }
                        }
                        Err(e) => why = e.to_string(),
                    }
                    if t0.elapsed() >= bound {
                        break;
                    }
                    report(&why, &mut last_report);
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
        }
        Ok(TakeoverFence::Stale(format!(
            "could not take the fence ({}) within {:.1} s: {why}; the primary may still run the VM, so this replica will never be resumed",
            mode.describe(),
            bound.as_secs_f64()
        )))
    }

    fn plain(mode: &FenceMode, held: Held) -> Self {
        let marker = match &held {
            Held::Lock(f) => MarkerStore::Lock {
                fence: f.clone(),
                running: running_value(),
            },
            _ => MarkerStore::None,
        };
        Self {
            mode: mode.clone(),
            held,
            gate: FenceGate::new(u64::MAX, marker),
            stop: Arc::new(AtomicBool::new(false)),
            keeper: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn etcd(
        mode: &FenceMode,
        etcd: Etcd,
        key: String,
        marker_key: String,
        lease: i64,
        sent: u64,
        times: LeaseTimes,
        events: FenceEvents,
    ) -> Self {
        let gate = FenceGate::new(
            sent.saturating_add(times.self_fence_after.as_nanos() as u64),
            MarkerStore::Etcd {
                etcd: etcd.clone(),
                key: key.clone(),
                marker_key,
                lease,
            },
        );
        let stop = Arc::new(AtomicBool::new(false));
        let keeper = {
            let (etcd, key, gate, stop) = (etcd.clone(), key.clone(), gate.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ft-fence".into())
                .spawn(move || keep_lease(&etcd, &key, lease, times, &gate, &stop, &events))
                .ok()
        };
        if keeper.is_none() {
            // Without a keeper the lease is never renewed: the gate closes after
            // self_fence_after and output stops, which is safe; say so.
            eprintln!("ftvm: WARNING: cannot start the fence keeper thread; output will stop when the lease runs out");
        }
        Self {
            mode: mode.clone(),
            held: Held::Etcd { etcd, key, lease },
            gate,
            stop,
            keeper,
        }
    }

    /// The gate to check before every release of output.
    pub fn gate(&self) -> Arc<FenceGate> {
        self.gate.clone()
    }

    /// The mode.
    pub fn mode(&self) -> &FenceMode {
        &self.mode
    }

    /// The guest ended cleanly: leave `ended` in the fence, so that no backup brings the
    /// VM back (even one that missed the Goodbye frame).
    pub fn mark_ended(&self) -> Result<(), ReplicationError> {
        match &self.held {
            Held::None => Ok(()),
            Held::Lock(f) => match lock(f).as_ref() {
                Some(f) => {
                    f.write_content(ENDED)?;
                    self.gate.ended.store(true, Ordering::SeqCst);
                    Ok(())
                }
                None => Err(ReplicationError::Fence(
                    "the fence lock was released: cannot mark the VM ended".into(),
                )),
            },
            Held::Etcd { etcd, key, lease } => {
                // Stop the keeper first: once the key says `ended` it no longer carries
                // our lease, which the keeper would otherwise read as a lost fence.
                self.stop.store(true, Ordering::SeqCst);
                if etcd
                    .put_unleased_if_lease(key, *lease, ENDED)
                    .map_err(etcd_err)?
                {
                    // Nobody will resume this VM now: its last output may leave.
                    self.gate.ended.store(true, Ordering::SeqCst);
                    self.gate.renewed(0, Duration::from_nanos(u64::MAX));
                    Ok(())
                } else {
                    Err(ReplicationError::Fence(format!(
                        "fence key {key} is no longer ours: cannot mark the VM ended"
                    )))
                }
            }
        }
    }
}

impl HeldFence {
    /// Planned switchover: close the gate first (this process never releases another
    /// byte of the VM's output under this fence), then give the fence up (lock: unlocked;
    /// etcd: the keeper stopped and the lease revoked, which deletes the key) so the
    /// backup can take it. A failed revoke only delays the backup until the lease expires
    /// (it is no longer renewed); that is reported, not fatal.
    pub fn release_for_switchover(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        self.gate.close();
        if let Held::Etcd { etcd, key, lease } = &self.held {
            if let Err(e) = etcd.revoke(*lease) {
                eprintln!(
                    "ftvm: WARNING: could not revoke the lease of fence key {key} ({e}); the backup takes the fence when the lease expires (one TTL, it is no longer renewed)"
                );
            }
        }
        // Closing the lock file releases the flock (the gate's marker store shares it).
        if let Held::Lock(f) = &self.held {
            lock(f).take();
        }
        self.held = Held::None;
    }
}

impl Drop for HeldFence {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        match &self.held {
            Held::Etcd { etcd, lease, .. } => {
                // Free the key now rather than at the end of the TTL. If the key carries
                // `ended` it has no lease any more and stays.
                let _expires_anyway = etcd.revoke(*lease);
            }
            // The gate (and its marker store) may outlive this: unlock now.
            Held::Lock(f) => {
                lock(f).take();
            }
            Held::None => {}
        }
    }
}

/// The keeper: renew the lease every `renew_every`; open or close the gate; report.
fn keep_lease(
    etcd: &Etcd,
    key: &str,
    lease: i64,
    times: LeaseTimes,
    gate: &FenceGate,
    stop: &AtomicBool,
    events: &FenceEvents,
) {
    let mut suspect = false;
    let mut next = Instant::now() + times.renew_every;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
            continue;
        }
        next = Instant::now() + times.renew_every;
        let sent = now_ns();
        let renewed = etcd.keepalive(lease).and_then(|ttl| {
            if ttl <= 0 {
                return Ok(Err(format!(
                    "the lease of fence key {key} expired or was revoked"
                )));
            }
            // The key must still be ours (an operator may have deleted it).
            match etcd.get(key)? {
                Some(kv) if kv.lease == lease => Ok(Ok(())),
                Some(kv) => Ok(Err(format!(
                    "fence key {key} now belongs to someone else ({})",
                    String::from_utf8_lossy(&kv.value)
                ))),
                None => Ok(Err(format!("fence key {key} was deleted"))),
            }
        });
        match renewed {
            Ok(Ok(())) => {
                gate.renewed(sent, times.self_fence_after);
                if suspect && gate.holds() {
                    suspect = false;
                    events(FenceEvent::Restored);
                }
            }
            Ok(Err(gone)) => {
                if stop.load(Ordering::SeqCst) {
                    // Our own `ended` marker (mark_ended sets stop before writing it).
                    return;
                }
                gate.set_lost();
                events(FenceEvent::Lost(gone));
                return;
            }
            Err(e) => {
                if !gate.holds() && !suspect {
                    suspect = true;
                    events(FenceEvent::Suspect(format!(
                        "cannot renew the fence lease: {e}"
                    )));
                }
            }
        }
        if !gate.holds() && !suspect {
            suspect = true;
            events(FenceEvent::Suspect(
                "the fence lease was not renewed in time".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_refuse_clearly() {
        assert_eq!(FenceMode::parse("none", None).unwrap(), FenceMode::None);
        assert_eq!(
            FenceMode::parse("lock:/x/y", None).unwrap(),
            FenceMode::Lock("/x/y".into())
        );
        assert_eq!(
            FenceMode::parse("etcd:http://a:1,http://b:2", Some("vm1")).unwrap(),
            FenceMode::Etcd {
                endpoints: vec!["http://a:1".into(), "http://b:2".into()],
                vm_id: "vm1".into()
            }
        );
        assert!(FenceMode::parse("etcd:http://a:1", None)
            .unwrap_err()
            .contains("--vm-id"));
        assert!(FenceMode::parse("etcd:a:1", Some("v"))
            .unwrap_err()
            .contains("http://"));
        assert!(FenceMode::parse("zk:foo", None)
            .unwrap_err()
            .contains("lock:PATH"));
        assert!(FenceMode::parse("etcd:http://a:1", Some("a/b")).is_err());
    }

    #[test]
    fn lease_arithmetic_keeps_the_self_fence_deadline_inside_the_ttl() {
        for h in [200, 500, 1000, 3000] {
            let t = LeaseTimes::new(Duration::from_millis(h));
            assert!(t.ttl >= Duration::from_secs(2));
            assert!(t.ttl >= Duration::from_millis(3 * h));
            assert!(t.renew_every * 3 < t.self_fence_after, "{t:?}");
            assert!(t.self_fence_after + t.ttl / 4 <= t.ttl, "{t:?}");
            let etcd = FenceMode::Etcd {
                endpoints: vec![],
                vm_id: "x".into(),
            };
            assert!(t.takeover_bound(&etcd) > t.ttl);
        }
    }

    #[test]
    fn gate_closes_at_its_deadline() {
        let g = FenceGate::new(now_ns() + 50_000_000, MarkerStore::None);
        assert!(g.holds());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!g.holds());
        g.renewed(now_ns(), Duration::from_secs(1));
        assert!(g.holds());
        g.set_lost();
        assert!(!g.holds());
    }

    fn no_events() -> FenceEvents {
        Arc::new(|_| {})
    }

    fn session(n: u8) -> crate::fence_marker::SessionId {
        crate::fence_marker::SessionId([n; ftvm_wire::SESSION_ID_LEN])
    }

    /// A takeover by the backup of session `n`, leaving `then`.
    fn claim(n: u8, then: TakeoverMarker) -> TakeoverClaim {
        TakeoverClaim {
            session: session(n),
            then,
        }
    }

    #[test]
    fn switchover_closes_the_gate_before_the_fence_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mode = FenceMode::Lock(path.clone());
        let t = LeaseTimes::new(Duration::from_millis(200));
        let mut a = HeldFence::acquire(&mode, t, no_events()).unwrap();
        let gate = a.gate();
        assert!(gate.holds());
        gate.record_takeover(TakeoverMarker::Session(session(1)))
            .unwrap();
        assert!(HeldFence::acquire(&mode, t, no_events()).is_err());
        a.release_for_switchover();
        assert!(!gate.holds(), "the old holder's gate must be closed");
        assert!(
            matches!(
                gate.record_takeover(TakeoverMarker::Nobody),
                Err(MarkerError::NotHeld(_))
            ),
            "the old holder wrote the marker after letting go"
        );
        // The backup takes it at once, while the old holder's process lives on; the
        // marker keeps naming the session (the old primary is its backup now).
        let keep = TakeoverMarker::Session(session(1));
        let r = HeldFence::acquire_for_takeover(&mode, t, no_events(), claim(1, keep), |_, _| {})
            .unwrap();
        assert!(matches!(r, TakeoverFence::Taken(_)), "{r:?}");
        assert_eq!(lock_marker(&std::fs::read(&path).unwrap()), Some(keep));
        // Still closed, even though the old holder is alive and `a` not dropped.
        assert!(!gate.holds());
        drop(a);
    }

    #[test]
    fn lock_fence_ended_marker_stops_a_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let mode = FenceMode::Lock(dir.path().join("f"));
        let t = LeaseTimes::new(Duration::from_millis(200));
        let a = HeldFence::acquire(&mode, t, no_events()).unwrap();
        a.gate()
            .record_takeover(TakeoverMarker::Session(session(1)))
            .unwrap();
        // Held by a live holder: the backup gives up after the bound.
        let c = claim(1, TakeoverMarker::Nobody);
        let r = HeldFence::acquire_for_takeover(&mode, t, no_events(), c, |_, _| {}).unwrap();
        assert!(
            matches!(r, TakeoverFence::Stale(ref s) if s.contains("may still run")),
            "{r:?}"
        );
        a.mark_ended().unwrap();
        // Protection ending after the guest's end (the primary's engine stopping) must
        // not overwrite `ended` with a marker.
        a.gate().record_takeover(TakeoverMarker::Nobody).unwrap();
        drop(a);
        let r = HeldFence::acquire_for_takeover(&mode, t, no_events(), c, |_, _| {}).unwrap();
        assert!(matches!(r, TakeoverFence::Ended), "{r:?}");
        // A new primary may start the VM again on an ended fence.
        let b = HeldFence::acquire(&mode, t, no_events()).unwrap();
        b.gate()
            .record_takeover(TakeoverMarker::Session(session(1)))
            .unwrap();
        drop(b);
        let r = HeldFence::acquire_for_takeover(&mode, t, no_events(), c, |_, _| {}).unwrap();
        assert!(matches!(r, TakeoverFence::Taken(_)), "{r:?}");
    }

    /// The lock file's takeover marker: a backup takes over only when it names its own
    /// session, and then leaves what it claimed; anything else is stale at once (no wait
    /// for the bound: the fence is free, the replica is what is wrong).
    #[test]
    fn lock_fence_takeover_marker_decides_who_may_take_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mode = FenceMode::Lock(path.clone());
        let t = LeaseTimes::new(Duration::from_millis(200));
        let take = |n: u8| {
            let t0 = Instant::now();
            let r = HeldFence::acquire_for_takeover(
                &mode,
                t,
                no_events(),
                claim(n, TakeoverMarker::Nobody),
                |_, _| {},
            )
            .unwrap();
            (r, t0.elapsed())
        };
        // A primary that started the VM (marker none) and died: nobody takes over.
        drop(HeldFence::acquire(&mode, t, no_events()).unwrap());
        let (r, took) = take(1);
        assert!(
            matches!(r, TakeoverFence::Stale(ref s) if s.contains("ran unprotected after this backup's last epoch")),
            "{r:?}"
        );
        assert!(took < t.takeover_bound(&mode), "{took:?}");
        // Protected with session 1, then unprotected again (none) before it died.
        let a = HeldFence::acquire(&mode, t, no_events()).unwrap();
        a.gate()
            .record_takeover(TakeoverMarker::Session(session(1)))
            .unwrap();
        a.gate().record_takeover(TakeoverMarker::Nobody).unwrap();
        drop(a);
        assert!(matches!(take(1).0, TakeoverFence::Stale(_)));
        // Protected with session 2: the backup of session 1 is stale, 2 takes over and
        // leaves `none` (it runs the VM unprotected).
        let a = HeldFence::acquire(&mode, t, no_events()).unwrap();
        a.gate()
            .record_takeover(TakeoverMarker::Session(session(2)))
            .unwrap();
        drop(a);
        let (r, _) = take(1);
        assert!(
            matches!(r, TakeoverFence::Stale(ref s) if s.contains("another backup session")),
            "{r:?}"
        );
        let (r, _) = take(2);
        let TakeoverFence::Taken(b) = r else {
            panic!("the named backup did not take over: {r:?}")
        };
        assert_eq!(
            lock_marker(&std::fs::read(&path).unwrap()),
            Some(TakeoverMarker::Nobody)
        );
        drop(b);
        // A file without a marker (an older ftvm, or a torn write): nobody.
        std::fs::write(&path, "running pid=1 host=h").unwrap();
        assert!(
            matches!(take(2).0, TakeoverFence::Stale(ref s) if s.contains("no takeover marker"))
        );
    }
}

//! The running VM as the API socket sees it: requests in, JSON answers out.

use std::sync::{Arc, Mutex};

use ftvm_vmm::Vm;
use serde_json::{json, Value};

use std::path::Path;

use ftvm_devices::bus::lock;
use std::time::{Duration, Instant};

use ftvm_replication::migrate::{self, MigrationProgress};
use std::thread::JoinHandle;

use ftvm_replication::outputs::EpochOutputs;
use ftvm_replication::primary::{Primary, PrimaryConfig};
use ftvm_replication::snapshot::SnapshotChain;
use ftvm_replication::status::{percentile, Role};
use ftvm_replication::ReplicationError;
use ftvm_vmm::vcpu::VmEvent;

use crate::api::error;

/// Pause latencies observed, in microseconds.
#[derive(Debug, Default)]
pub struct PauseStats {
    samples: Vec<u64>,
}

impl PauseStats {
    /// Record one pause.
    pub fn record(&mut self, us: u64) {
        self.samples.push(us);
    }
    /// Percentile `p` (0-100) of the samples, if any.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        percentile(self.samples.iter().copied(), p)
    }
    /// Number of samples.
    pub fn count(&self) -> usize {
        self.samples.len()
    }
}

/// What it takes to protect a VM at any time: its output sink (which can hold output)
/// and the replication settings to use.
#[derive(Debug, Clone)]
pub struct Protectable {
    /// The VM's output sink.
    pub outputs: Arc<EpochOutputs>,
    /// Settings for protection (the backup address is filled in per request).
    pub defaults: PrimaryConfig,
    /// This process holds the VM's fence (`--fence`); `ctl protect` needs one.
    pub fenced: bool,
}

#[derive(Debug, Default)]
struct Protection {
    primary: Option<Arc<Primary>>,
    engine: Option<JoinHandle<()>>,
}

/// A VM served over the API socket.
#[derive(Debug)]
pub struct VmService {
    vm: Arc<Vm>,
    pauses: Mutex<PauseStats>,
    protectable: Protectable,
    protection: Mutex<Protection>,
    snapshots: Mutex<SnapshotChain>,
    /// Set while this process is the backup after a planned switchover.
    standby: Mutex<Option<Arc<ftvm_replication::backup::Backup>>>,
}

impl VmService {
    /// Serve `vm`, which can be protected with `protectable`.
    pub fn new(vm: Arc<Vm>, protectable: Protectable) -> Self {
        // Snapshots copy the same disks the VM's devices write.
        let snapshots = SnapshotChain::with_disks(protectable.defaults.disks.clone());
        Self {
            vm,
            pauses: Mutex::default(),
            protectable,
            protection: Mutex::default(),
            snapshots: Mutex::new(snapshots),
            standby: Mutex::default(),
        }
    }

    /// This process is the backup now (after a switchover), or not any more (`None`).
    pub fn set_standby(&self, backup: Option<Arc<ftvm_replication::backup::Backup>>) {
        *lock(&self.standby) = backup;
    }

    /// The engine ended in a planned switchover: what the hand-over needs, once.
    pub fn take_switched_out(&self) -> Option<ftvm_replication::switchover::SwitchedOut> {
        self.primary()?.switchover().take_switched_out()
    }

    fn primary(&self) -> Option<Arc<Primary>> {
        lock(&self.protection).primary.clone()
    }

    /// Start protecting the running VM with the backup at `backup` (also after a backup
    /// was lost: re-protection, without stopping the VM).
    pub fn protect(&self, cfg: PrimaryConfig) -> Result<(), String> {
        let p = lock(&self.protection);
        if let Some(cur) = &p.primary {
            if cur.role() != Role::Unprotected {
                return Err(format!(
                    "the VM is already protected (role {:?})",
                    cur.role()
                ));
            }
        }
        drop(p);
        self.protect_with(Primary::new(
            self.vm.clone(),
            self.protectable.outputs.clone(),
            cfg,
        ))
    }

    /// Run `primary`'s engine (protection over a new or an adopted link).
    pub fn protect_with(&self, primary: Arc<Primary>) -> Result<(), String> {
        let mut p = lock(&self.protection);
        if let Some(t) = p.engine.take() {
            let _ = t.join();
        }
        let engine = {
            let primary = primary.clone();
            std::thread::Builder::new()
                .name("ft-engine".into())
                .spawn(move || primary.run())
                .map_err(|e| format!("cannot start the replication engine: {e}"))?
        };
        p.primary = Some(primary);
        p.engine = Some(engine);
        Ok(())
    }

    /// The guest ended: stop protection (the backup is told not to take over).
    pub fn stop_protection(&self) {
        let (primary, engine) = {
            let mut p = lock(&self.protection);
            (p.primary.clone(), p.engine.take())
        };
        if let Some(p) = primary {
            p.stop();
        }
        if let Some(t) = engine {
            let _ = t.join();
        }
    }

    fn protect_request(&self, req: &Value) -> Value {
        let Some(backup) = req.get("backup").and_then(Value::as_str) else {
            return error("protect needs \"backup\": the ADDR:PORT of an `ftvm backup`");
        };
        if !self.protectable.fenced {
            return error("this VM holds no fence: start it with --fence MODE (etcd:..., lock:PATH or none) to protect it later, so that it and its backup never both run it");
        }
        let mut cfg = self.protectable.defaults.clone();
        cfg.backup = backup.to_string();
        if let Some(us) = req.get("epoch_us").and_then(Value::as_u64) {
            if !(500..=10_000_000).contains(&us) {
                return error("choose an epoch between 500us and 10s");
            }
            cfg.epoch = Duration::from_micros(us);
        }
        match self.protect(cfg) {
            Ok(()) => json!({"ok": true}),
            Err(e) => error(&e),
        }
    }

    /// Answer one API request.
    pub fn handle(&self, req: &Value, progress: &mut dyn FnMut(Value)) -> Value {
        if let Some(b) = lock(&self.standby).clone() {
            return crate::roles::standby_request(&b, self.vm.config().memory, req);
        }
        let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
        if let Some(refused) = self.refused_under_protection(cmd) {
            return refused;
        }
        match cmd {
            "pause" => match self.vm.pause() {
                Ok(d) => {
                    let us = d.as_micros() as u64;
                    lock(&self.pauses).record(us);
                    json!({"ok": true, "pause_us": us})
                }
                Err(e) => error(&e.to_string()),
            },
            "resume" => match self.vm.resume() {
                Ok(()) => json!({"ok": true}),
                Err(e) => error(&e.to_string()),
            },
            "status" => self.status(),
            "snapshot" => self.snapshot(req),
            "migrate" => self.migrate(req, progress),
            "epoch" => self.set_epoch(req),
            "protect" => self.protect_request(req),
            "switchover" => self.switchover(req),
            other => error(&format!(
                "unknown command '{other}' (known: pause, resume, status, snapshot, migrate, epoch, protect, switchover)"
            )),
        }
    }

    /// `pause`, `resume`, `snapshot` and `migrate` pause and resume the vCPUs and clear the
    /// dirty log under the replication engine (a torn or incomplete epoch): refused while
    /// the VM is protected.
    fn refused_under_protection(&self, cmd: &str) -> Option<Value> {
        if !matches!(cmd, "pause" | "resume" | "snapshot" | "migrate") {
            return None;
        }
        let role = self.primary()?.role();
        if role == Role::Unprotected {
            return None;
        }
        Some(error(&format!(
            "'{cmd}' is refused while the VM is protected (role {}): it would pause or resume the vCPUs and clear the dirty log under the replication engine and tear its epochs; the backup already holds a consistent copy every epoch",
            serde_json::to_value(role).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        )))
    }

    fn snapshot(&self, req: &Value) -> Value {
        let Some(to) = req.get("to").and_then(Value::as_str) else {
            return error("snapshot needs \"to\": the directory to write");
        };
        let diff = req.get("diff").and_then(Value::as_bool).unwrap_or(false);
        let keep = req
            .get("keep_paused")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let result = lock(&self.snapshots).take(&self.vm, Path::new(to), diff, keep);
        match result {
            Ok(st) => {
                lock(&self.pauses).record(st.paused.as_micros() as u64);
                json!({"ok": true, "pages": st.pages, "diff": st.diff, "paused_us": st.paused.as_micros() as u64})
            }
            Err(e) => error(&e.to_string()),
        }
    }

    /// `switchover`: hand the VM to the backup at the next epoch boundary (see
    /// ftvm_replication::switchover); answers once the backup owns it.
    fn switchover(&self, req: &Value) -> Value {
        let stop = req.get("stop").and_then(Value::as_bool).unwrap_or(false);
        let Some(p) = self.primary() else {
            return error("switchover refused: the VM is not protected, there is no backup to hand it to (protect it first: --protect or `ftvm ctl protect`)");
        };
        match p.role() {
            Role::Primary => {}
            Role::Syncing => return error("switchover refused: the backup's replica is not complete yet (initial sync in progress); try again once `ftvm ctl status` says role primary"),
            other => return error(&format!(
                "switchover refused: the VM is not protected (role {}{}), there is no backup to hand it to",
                serde_json::to_value(other).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                p.status_json()["lost_reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default()
            )),
        }
        let rx = match p.switchover().request(stop) {
            Ok(rx) => rx,
            Err(e) => return error(&format!("switchover refused: {e}")),
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(done)) => {
                let mut v = json!({
                    "ok": true,
                    "epoch": done.epoch,
                    "pause_ms": done.pause.as_secs_f64() * 1000.0,
                    "new_primary": done.peer,
                    "old_primary": if done.stop { "stopped" } else { "backup" },
                });
                if done.stop {
                    v["handoff"] = json!(format!("switched over to {}", done.peer));
                }
                v
            }
            Ok(Err(why)) => error(&why),
            Err(_) => error("switchover: no answer from the replication engine within 120 s"),
        }
    }

    /// The VM now runs elsewhere: end this process's VM (after the answer was sent).
    pub fn hand_off(&self, where_to: &str) {
        let _vm_ends_here = self
            .vm
            .event_sender()
            .send(VmEvent::Handoff(where_to.to_string()));
    }

    fn set_epoch(&self, req: &Value) -> Value {
        let Some(p) = self.primary() else {
            return error(
                "this VM is not protected (start it with --protect, or `ftvm ctl protect`)",
            );
        };
        let Some(us) = req.get("epoch_us").and_then(Value::as_u64) else {
            return error("epoch needs \"epoch_us\"");
        };
        if !(500..=10_000_000).contains(&us) {
            return error("choose an epoch between 500us and 10s");
        }
        p.set_epoch(Duration::from_micros(us));
        json!({"ok": true, "epoch_us": us})
    }

    fn migrate(&self, req: &Value, progress: &mut dyn FnMut(Value)) -> Value {
        let Some(to) = req.get("to").and_then(Value::as_str) else {
            return error("migrate needs \"to\": the ADDR:PORT of an `ftvm receive`");
        };
        let downtime =
            Duration::from_millis(req.get("downtime_ms").and_then(Value::as_u64).unwrap_or(50));
        let mut last = Instant::now();
        // The run's --key-file keys migration too: the target needs the same key.
        let key = self.protectable.defaults.key.clone();
        let max_bandwidth = req.get("max_bandwidth").and_then(Value::as_u64);
        let result = migrate::migrate(&self.vm, to, downtime, key.as_deref(), max_bandwidth, |p| {
            if last.elapsed() < Duration::from_millis(200)
                && matches!(p, MigrationProgress::FullCopy { .. })
            {
                return;
            }
            last = Instant::now();
            progress(match p {
                MigrationProgress::FullCopy { done, total } => {
                    json!({"phase": "full copy", "done_bytes": done, "total_bytes": total})
                }
                MigrationProgress::Round { round, pages, rate } => {
                    json!({"phase": "dirty round", "round": round, "pages": pages, "rate_bytes_per_s": rate as u64})
                }
            });
        });
        match result {
            Ok(st) => {
                json!({
                    "ok": true,
                    "handoff": format!("migrated to {to}"),
                    "total_ms": st.total.as_millis() as u64,
                    "downtime_ms": st.downtime.as_secs_f64() * 1000.0,
                    "rounds": st.rounds,
                    "final_pages": st.final_pages,
                    "bytes": st.bytes,
                    "phases_ms": st.phases.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                })
            }
            Err(e @ ReplicationError::MigrationInDoubt(_)) => error(&e.to_string()),
            Err(e) => error(&format!("migration failed, the VM keeps running here: {e}")),
        }
    }

    /// The status answer.
    pub fn status(&self) -> Value {
        let counters = self.vm.vcpu_counters();
        let mmio = self.vm.mmio_exit_counts();
        let regs = self.vm.vcpu_regs().ok();
        let vcpus: Vec<Value> = counters
            .iter()
            .enumerate()
            .map(|(i, (exits, io, kicks))| {
                let mut v = json!({"index": i, "exits": exits, "io_exits": io, "kicks": kicks,
                    "mmio_exits": mmio.get(i).copied().unwrap_or(0)});
                // Registers are only readable while paused.
                if let Some(r) = regs.as_ref().and_then(|r| r.get(i)) {
                    v["rip"] = json!(r.rip);
                    v["rsp"] = json!(r.rsp);
                    v["rax"] = json!(r.rax);
                    v["rbx"] = json!(r.rbx);
                    v["rcx"] = json!(r.rcx);
                    v["rdx"] = json!(r.rdx);
                }
                v
            })
            .collect();
        let pauses = lock(&self.pauses);
        let (role, replication) = match self.primary() {
            Some(p) => {
                let r = p.status_json();
                (r["role"].as_str().unwrap_or("primary").to_string(), r)
            }
            None => ("unprotected".to_string(), Value::Null),
        };
        json!({
            "ok": true,
            "role": role,
            "replication": replication,
            "state": self.vm.run_state().as_str(),
            "virtio": {
                "devices": self.vm.virtio().len(),
                "ioeventfd": self.vm.virtio().uses_ioeventfd(),
                "needs_reset": self.vm.virtio().failures().iter()
                    .map(|(slot, why)| json!({"slot": slot, "reason": why})).collect::<Vec<_>>(),
            },
            "vcpus": vcpus,
            "memory_bytes": self.vm.config().memory,
            "uptime_s": self.vm.uptime().as_secs_f64(),
            "guest_clock_ns": self.vm.fd().get_clock().ok().map(|c| c.clock),
            "pause_us": {
                "count": pauses.count(),
                "p50": pauses.percentile(50.0),
                "p99": pauses.percentile(99.0),
            },
        })
    }
}

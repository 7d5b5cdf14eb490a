//! Replication status, shared between the engine threads and the API.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

/// What a process is doing for fault tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Running the VM and connecting to / syncing a backup.
    Syncing,
    /// Running the VM, replicating every epoch to a backup.
    Primary,
    /// Running the VM with no backup.
    Unprotected,
    /// Holding a replica, ready to take over.
    Backup,
    /// Taking over (restoring the replica).
    Takeover,
    /// Lost its primary and could not take the fence: the replica is never resumed.
    Stale,
}

const SAMPLES: usize = 1024;

/// Counters and recent samples.
#[derive(Debug)]
pub struct ReplStatus {
    /// Current role.
    pub role: Role,
    /// Last epoch captured (primary) or committed (backup).
    pub epoch: u64,
    /// Last epoch the backup acknowledged (primary) / last applied (backup).
    pub last_acked: u64,
    /// Epochs captured and not yet acknowledged.
    pub in_flight: u64,
    /// Bytes sent or received on the replication link.
    pub bytes: u64,
    /// When the peer was last heard from.
    pub last_heard: Instant,
    /// When replication started.
    pub started: Instant,
    /// Recent pause times, microseconds.
    pub pauses_us: VecDeque<u64>,
    /// Recent dirty page counts per epoch.
    pub dirty_pages: VecDeque<u64>,
    /// Why protection ended, if it did.
    pub lost_reason: Option<String>,
    /// Epoch length in microseconds.
    pub epoch_us: u64,
    /// The first epoch that carried a complete state (0: none yet).
    pub first_protected_epoch: u64,
}

impl ReplStatus {
    /// A fresh status in `role`.
    pub fn new(role: Role, epoch_us: u64) -> Self {
        let now = Instant::now();
        Self {
            role,
            epoch: 0,
            last_acked: 0,
            in_flight: 0,
            bytes: 0,
            last_heard: now,
            started: now,
            pauses_us: VecDeque::new(),
            dirty_pages: VecDeque::new(),
            lost_reason: None,
            epoch_us,
            first_protected_epoch: 0,
        }
    }

    /// Record one epoch's pause and dirty pages.
    pub fn record_epoch(&mut self, pause_us: u64, pages: u64) {
        if self.pauses_us.len() == SAMPLES {
            self.pauses_us.pop_front();
            self.dirty_pages.pop_front();
        }
        self.pauses_us.push_back(pause_us);
        self.dirty_pages.push_back(pages);
    }

    /// Percentile of recent pauses.
    pub fn pause_percentile(&self, p: f64) -> Option<u64> {
        percentile(self.pauses_us.iter().copied(), p)
    }

    /// The status as JSON fields.
    pub fn to_json(&self) -> serde_json::Value {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        let dirty_avg = if self.dirty_pages.is_empty() {
            0.0
        } else {
            self.dirty_pages.iter().sum::<u64>() as f64 / self.dirty_pages.len() as f64
        };
        serde_json::json!({
            "role": self.role,
            "epoch": self.epoch,
            "last_acked_epoch": self.last_acked,
            "epochs_in_flight": self.in_flight,
            "epoch_us": self.epoch_us,
            "pause_us_p50": self.pause_percentile(50.0),
            "pause_us_p99": self.pause_percentile(99.0),
            "dirty_pages_last": self.dirty_pages.back(),
            "dirty_pages_avg": dirty_avg,
            "bytes": self.bytes,
            "bytes_per_s": self.bytes as f64 / secs,
            "heartbeat_age_ms": self.last_heard.elapsed().as_secs_f64() * 1000.0,
            "lost_reason": self.lost_reason,
        })
    }
}

/// Nearest-rank percentile `p` (0-100).
pub fn percentile(samples: impl Iterator<Item = u64>, p: f64) -> Option<u64> {
    let mut s: Vec<u64> = samples.collect();
    if s.is_empty() {
        return None;
    }
    s.sort_unstable();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len()) - 1).copied()
}

//! Where an epoch pause goes: the engine times each phase of every pause and the status
//! API reports the recent medians (`replication.pause_phases_us`), so that a slow pause
//! can be attributed without a profiler.

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::status::percentile;

/// Pauses kept for the medians.
const SAMPLES: usize = 256;

/// One pause, microseconds per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PauseTimes {
    /// Pause request until every vCPU parked (kick + park).
    pub park_us: f64,
    /// Reading the dirty log (KVM_GET_DIRTY_LOG, the VMM's own bitmap) and merging the
    /// carried pages into the epoch's runs.
    pub log_us: f64,
    /// Copying the epoch's pages into staging.
    pub copy_us: f64,
    /// vCPU, VM and device state capture and encoding.
    pub state_us: f64,
    /// Disk writes drained and the epoch's output sealed.
    pub seal_us: f64,
    /// Letting the vCPUs run again.
    pub resume_us: f64,
    /// The whole pause, request to resume (more than the sum: time between phases).
    pub total_us: f64,
}

/// Recent pauses, by phase.
#[derive(Debug, Default)]
pub struct PausePhases {
    recent: VecDeque<PauseTimes>,
}

impl PausePhases {
    /// Record one pause.
    pub fn record(&mut self, t: PauseTimes) {
        if self.recent.len() == SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(t);
    }

    /// Medians (and the total's p99) of the recent pauses, microseconds; `null` before the
    /// first pause.
    pub fn to_json(&self) -> Value {
        if self.recent.is_empty() {
            return Value::Null;
        }
        let p = |f: fn(&PauseTimes) -> f64, q: f64| {
            percentile(self.recent.iter().map(|t| f(t).round() as u64), q)
        };
        json!({
            "samples": self.recent.len(),
            "park_p50": p(|t| t.park_us, 50.0),
            "log_p50": p(|t| t.log_us, 50.0),
            "copy_p50": p(|t| t.copy_us, 50.0),
            "state_p50": p(|t| t.state_us, 50.0),
            "seal_p50": p(|t| t.seal_us, 50.0),
            "resume_p50": p(|t| t.resume_us, 50.0),
            "total_p50": p(|t| t.total_us, 50.0),
            "total_p99": p(|t| t.total_us, 99.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_per_phase_over_recent_pauses_only() {
        let mut ph = PausePhases::default();
        assert_eq!(ph.to_json(), Value::Null);
        // An old slow pause that must age out, then SAMPLES pauses with distinct phases.
        ph.record(PauseTimes {
            copy_us: 1e6,
            total_us: 1e6,
            ..PauseTimes::default()
        });
        for i in 0..SAMPLES {
            let i = i as f64;
            ph.record(PauseTimes {
                park_us: 10.0,
                log_us: 20.0,
                copy_us: 100.0 + i,
                state_us: 30.0,
                seal_us: 5.0,
                resume_us: 2.0,
                total_us: 200.0 + i,
            });
        }
        let j = ph.to_json();
        assert_eq!(j["samples"], SAMPLES);
        assert_eq!(j["park_p50"], 10);
        assert_eq!(j["log_p50"], 20);
        assert_eq!(j["state_p50"], 30);
        assert_eq!(j["seal_p50"], 5);
        assert_eq!(j["resume_p50"], 2);
        // Nearest rank: the 128th of 100..=355.
        assert_eq!(j["copy_p50"], 227);
        assert_eq!(j["total_p50"], 327);
        assert_eq!(j["total_p99"], 200 + 253);
    }
}

//! hotpages: adaptive dirty tracking (`--hot-pages on|off`) against the goals of the
//! protected-speed work: protected guest rate vs unprotected, and replication bytes per
//! epoch vs the pages that really changed. Ratios within one run (the machine is shared).

use serde_json::{json, Value};

use crate::groups::{protected_run, unprotected_rate, Guest};
use crate::util::{fmt, fmt_opt, num, Res};
use crate::{Ctx, Table};

/// (wss MiB, pages per iteration, goal for protected/unprotected at 10 ms epochs).
const CONFIGS: [(u32, u32, f64); 2] = [(4, 256, 0.8), (64, 256, 0.3)];
const EPOCH_MS: u64 = 10;
/// `--cpu-affinity` of the placement row (the backup is pinned to CPU 1 too).
const PINNED: &str = "vcpus=0,replication=1";
const PINNED_LABEL: &str = "pinned: vCPU cpu0, replication + backup cpu1";
/// Lines every N iterations: unprotected (fast) and protected (slow when faulting).
const EVERY_UNPROTECTED: u64 = 300;
const EVERY_PROTECTED: u64 = 30;

fn delta(v: &Value, path: &[&str]) -> Option<f64> {
    let a = num(&v["status0"], path)?;
    let b = num(&v["status"], path)?;
    Some(b - a)
}

/// The group.
pub fn hotpages(ctx: &Ctx) -> Res<Table> {
    let mut t = Table::new(&[
        "guest",
        "hot pages",
        "iterations/s",
        "ratio vs unprotected",
        "goal",
        "epoch pause p50/p99 (us)",
        "pause p50 by phase: park / dirty log / copy / state (us)",
        "epochs/s (configured 100)",
        "copied pages/epoch",
        "sent pages/epoch",
        "wire bytes/epoch",
        "bytes / (sent pages x 4 KiB) (goal: ~1, headers only)",
        "hot pages (cool after, fault us)",
        "primary CPU %",
    ]);
    let mut all = Vec::new();
    for (wss, pages, goal) in CONFIGS {
        let label = format!("wss={wss} pages={pages}");
        let base = unprotected_rate(
            ctx,
            &format!("hot-unprot-w{wss}"),
            Guest::new(pages, EVERY_UNPROTECTED).with_wss(wss),
        );
        match &base {
            Ok((r, _)) => t.row(vec![
                label.clone(),
                "unprotected".into(),
                fmt(*r),
                "1.00".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]),
            Err(e) => t.fail(&format!("unprotected rate {label}"), e.clone()),
        }
        // The placement row needs two host CPUs: vCPU on one, the replication threads and
        // the backup on the other (`--cpu-affinity`, docs/operations.md).
        let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        for (hot, pinned) in [(false, false), (true, false), (true, true)] {
            if pinned && !two_cpus {
                continue;
            }
            let key = format!(
                "hot-w{wss}-{}{}",
                if hot { "on" } else { "off" },
                if pinned { "-pinned" } else { "" }
            );
            let mut g = Guest::new(pages, EVERY_PROTECTED)
                .with_wss(wss)
                .with_hot_pages(hot);
            if pinned {
                g = g.with_affinity(PINNED);
            }
            let backup_pin = pinned.then_some(1);
            match protected_run(ctx, &key, g, EPOCH_MS, backup_pin) {
                Ok(mut v) => {
                    let r = v["rate"].as_f64();
                    let ratio = match (&base, r) {
                        (Ok((b, _)), Some(r)) if *b > 0.0 => Some(r / b),
                        _ => None,
                    };
                    let epochs = delta(&v, &["replication", "epoch"]).filter(|e| *e > 0.0);
                    let bytes = delta(&v, &["replication", "bytes"]);
                    // Pages copied per epoch in the measured window (the status average
                    // also covers the epochs before it).
                    let copied = match (delta(&v, &["replication", "hot", "copied_pages"]), epochs)
                    {
                        (Some(c), Some(e)) => Some(c / e),
                        _ => num(&v["status"], &["replication", "dirty_pages_avg"]),
                    };
                    let unchanged =
                        delta(&v, &["replication", "hot", "unchanged_pages"]).unwrap_or(0.0);
                    let per_epoch = |x: Option<f64>| match (x, epochs) {
                        (Some(x), Some(e)) => Some(x / e),
                        _ => None,
                    };
                    let sent = match (copied, per_epoch(Some(unchanged))) {
                        (Some(c), Some(u)) => Some(c - u),
                        _ => None,
                    };
                    let wire = per_epoch(bytes);
                    let overhead = match (wire, sent) {
                        (Some(w), Some(s)) if s > 0.0 => Some(w / (s * 4096.0)),
                        _ => None,
                    };
                    let h = v["status"]["replication"]["hot"].clone();
                    v["ratio"] = json!(ratio);
                    v["goal"] = json!(goal);
                    v["sent_pages_per_epoch"] = json!(sent);
                    v["wire_bytes_per_epoch"] = json!(wire);
                    v["placement"] = json!(pinned.then_some(PINNED_LABEL));
                    t.row(vec![
                        label.clone(),
                        match (hot, pinned) {
                            (false, _) => "off".into(),
                            (true, false) => "on".into(),
                            (true, true) => format!("on, {PINNED_LABEL}"),
                        },
                        fmt_opt(r),
                        fmt_opt(ratio),
                        format!(
                            ">= {goal} {}",
                            match ratio {
                                Some(x) if x >= goal => "(met)",
                                Some(_) => "(NOT met)",
                                None => "",
                            }
                        ),
                        format!(
                            "{} / {}",
                            fmt_opt(num(&v["status"], &["replication", "pause_us_p50"])),
                            fmt_opt(num(&v["status"], &["replication", "pause_us_p99"]))
                        ),
                        {
                            let ph = &v["status"]["replication"]["pause_phases_us"];
                            format!(
                                "{} / {} / {} / {}",
                                ph["park_p50"], ph["log_p50"], ph["copy_p50"], ph["state_p50"]
                            )
                        },
                        fmt_opt(v["epochs_per_s_window"].as_f64()),
                        fmt_opt(copied),
                        fmt_opt(sent),
                        fmt_opt(wire),
                        fmt_opt(overhead),
                        if hot {
                            format!(
                                "{} ({}, {})",
                                h["hot_pages"],
                                h["cool_after"],
                                fmt_opt(h["fault_us"].as_f64())
                            )
                        } else {
                            "-".into()
                        },
                        fmt_opt(v["primary_cpu_pct"].as_f64()),
                    ]);
                    if let Some(err) = v["rate_error"].as_str() {
                        t.fail(&format!("rate under protection {key}"), err.into());
                    }
                    all.push(v);
                }
                Err(err) => t.fail(&format!("protected run {key}"), err),
            }
        }
    }
    t.notes.push(format!(
        "1 vCPU, 256 MiB, {EPOCH_MS} ms epochs, backup on loopback on the same machine. \
         `wss=4` is a ~1k-page hot set; `wss=64` (the default guest) writes random pages of \
         16k. Lines every {EVERY_UNPROTECTED} iterations unprotected, {EVERY_PROTECTED} \
         protected (~1.5 ms each: at most a few % of a protected run). Copied pages = the \
         pages copied in each pause (log + carry + hot); sent = copied minus those found \
         unchanged after the resume; wire bytes include frame headers, outputs and the \
         vCPU/device state (a few KiB per epoch). Epochs/s is what the engine achieved in \
         the window: fewer than configured when the sender cannot keep up (with \
         `FTVM_SENDER_NICE` set it runs below the vCPU's priority) and epochs wait for an \
         in-flight slot. The pinned row runs the primary with `--cpu-affinity {PINNED}` and \
         the backup under `taskset -c 1`; its ratio is against the same (unpinned) \
         unprotected rate. wss=64 rows at far fewer than 100 epochs/s are not 10 ms \
         epochs (docs/benchmarks.md)."
    ));
    t.data = json!(all);
    Ok(t)
}

//! `ftvm ctl`: requests to a running ftvm.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::request;
use crate::cli::{CtlArgs, CtlRequest};
use crate::error::CliError;
use crate::size::parse_duration;

/// Send the request, print the answer; returns the exit code.
pub fn ctl(args: &CtlArgs) -> Result<i32, CliError> {
    let req = match &args.request {
        CtlRequest::Pause => json!({"cmd": "pause"}),
        CtlRequest::Resume => json!({"cmd": "resume"}),
        CtlRequest::Status => json!({"cmd": "status"}),
        CtlRequest::Snapshot {
            to,
            diff,
            keep_paused,
        } => {
            let to = std::path::absolute(to).unwrap_or_else(|_| to.clone());
            json!({"cmd": "snapshot", "to": to, "diff": diff, "keep_paused": keep_paused})
        }
        CtlRequest::Epoch { length } => {
            let d = parse_duration(length).map_err(|e| CliError::Usage(format!("epoch: {e}")))?;
            json!({"cmd": "epoch", "epoch_us": d.as_micros() as u64})
        }
        CtlRequest::Failover => json!({"cmd": "failover"}),
        CtlRequest::Switchover { stop } => json!({"cmd": "switchover", "stop": stop}),
        CtlRequest::Protect { backup, epoch } => {
            let mut r = json!({"cmd": "protect", "backup": backup});
            if let Some(e) = epoch {
                let d = parse_duration(e).map_err(|e| CliError::Usage(format!("--epoch: {e}")))?;
                r["epoch_us"] = json!(d.as_micros() as u64);
            }
            r
        }
        CtlRequest::Migrate {
            to,
            downtime_ms,
            max_bandwidth,
        } => {
            let mut r = json!({"cmd": "migrate", "to": to, "downtime_ms": downtime_ms});
            if let Some(b) = max_bandwidth {
                let per_s = b.strip_suffix("/s").unwrap_or(b);
                let n = crate::size::parse_size(per_s)
                    .map_err(|e| CliError::Usage(format!("--max-bandwidth: {e}")))?;
                if n == 0 {
                    return Err(CliError::Usage(
                        "--max-bandwidth: must be more than 0 (leave it out for no cap)".into(),
                    ));
                }
                r["max_bandwidth"] = json!(n);
            }
            r
        }
    };
    let quiet_progress = args.json;
    let answer = request(&args.api_socket, &req, Duration::from_secs(600), |p| {
        if !quiet_progress {
            print_progress(p);
        }
    })?;
    if args.json {
        println!("{answer}");
        return Ok(0);
    }
    match &args.request {
        CtlRequest::Pause => println!(
            "paused in {} us",
            answer.get("pause_us").and_then(Value::as_u64).unwrap_or(0)
        ),
        CtlRequest::Resume => println!("resumed"),
        CtlRequest::Status => print_status(&answer),
        CtlRequest::Epoch { length } => println!("epoch set to {length}"),
        CtlRequest::Failover => println!("taking over"),
        CtlRequest::Switchover { .. } => println!(
            "switched over after epoch {}: the VM runs on {} now; the old primary {} (vCPUs parked {:.1} ms)",
            answer["epoch"],
            answer["new_primary"].as_str().unwrap_or("?"),
            if answer["old_primary"] == "stopped" {
                "stopped"
            } else {
                "is its backup"
            },
            answer["pause_ms"].as_f64().unwrap_or(0.0)
        ),
        CtlRequest::Protect { backup, .. } => {
            println!("protecting the VM with {backup}: see `status` for progress")
        }
        CtlRequest::Migrate { to, .. } => println!(
            "migrated to {to}: {} ms in all, {:.2} ms downtime, {} rounds, {} pages in the final pause, {} MiB sent",
            answer["total_ms"],
            answer["downtime_ms"].as_f64().unwrap_or(0.0),
            answer["rounds"],
            answer["final_pages"],
            answer["bytes"].as_u64().unwrap_or(0) >> 20
        ),
        CtlRequest::Snapshot { to, .. } => println!(
            "snapshot written to {} ({} pages, {}; VM paused for {} us)",
            to.display(),
            answer.get("pages").and_then(Value::as_u64).unwrap_or(0),
            if answer.get("diff").and_then(Value::as_bool) == Some(true) {
                "diff"
            } else {
                "full"
            },
            answer.get("paused_us").and_then(Value::as_u64).unwrap_or(0)
        ),
    }
    Ok(0)
}

fn print_progress(p: &Value) {
    match p.get("phase").and_then(Value::as_str) {
        Some("full copy") => {
            let done = p["done_bytes"].as_u64().unwrap_or(0);
            let total = p["total_bytes"].as_u64().unwrap_or(1).max(1);
            eprintln!(
                "  full copy: {} / {} MiB ({}%)",
                done >> 20,
                total >> 20,
                done * 100 / total
            );
        }
        Some("dirty round") => eprintln!(
            "  round {}: {} pages at {:.1} MiB/s",
            p["round"],
            p["pages"],
            p["rate_bytes_per_s"].as_f64().unwrap_or(0.0) / 1048576.0
        ),
        _ => eprintln!("  {p}"),
    }
}

fn print_status(s: &Value) {
    let get = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
    println!("role:       {}", get("role").as_str().unwrap_or("?"));
    println!("state:      {}", get("state").as_str().unwrap_or("?"));
    if let Some(m) = get("memory_bytes").as_u64() {
        println!("memory:     {} MiB", m >> 20);
    }
    if let Some(u) = get("uptime_s").as_f64() {
        println!("uptime:     {u:.1} s");
    }
    if let Some(vcpus) = get("vcpus").as_array() {
        for v in vcpus {
            println!(
                "vcpu {}:     exits {} (port I/O {}, kicks {})",
                v["index"], v["exits"], v["io_exits"], v["kicks"]
            );
        }
    }
    let r = get("replication");
    if r.is_object() {
        println!(
            "epoch:      {} (acked {}, in flight {}, length {} us)",
            r["epoch"], r["last_acked_epoch"], r["epochs_in_flight"], r["epoch_us"]
        );
        if let (Some(p50), Some(p99)) = (r["pause_us_p50"].as_u64(), r["pause_us_p99"].as_u64()) {
            println!(
                "pause:      p50 {p50} us, p99 {p99} us; dirty pages/epoch {} (avg {:.0})",
                r["dirty_pages_last"],
                r["dirty_pages_avg"].as_f64().unwrap_or(0.0)
            );
        }
        let ph = &r["pause_phases_us"];
        if ph.is_object() {
            println!(
                "pause p50s: park {} + dirty log {} + copy {} + state {} + seal {} + resume {} us",
                ph["park_p50"],
                ph["log_p50"],
                ph["copy_p50"],
                ph["state_p50"],
                ph["seal_p50"],
                ph["resume_p50"]
            );
        }
        let hot = &r["hot"];
        if hot["enabled"].as_bool() == Some(true) {
            println!(
                "hot pages:  {} kept writable (re-protected after {} unchanged epochs; \
                 fault {:.1} us, copy {:.2} + compare {:.2} us/page); not sent because \
                 unchanged: {} pages, {:.1} MiB",
                hot["hot_pages"],
                hot["cool_after"],
                hot["fault_us"].as_f64().unwrap_or(0.0),
                hot["copy_us_per_page"].as_f64().unwrap_or(0.0),
                hot["compare_us_per_page"].as_f64().unwrap_or(0.0),
                hot["unchanged_pages"],
                hot["unchanged_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
            );
        } else if hot.is_object() {
            println!("hot pages:  off (every dirty page re-protected each epoch)");
        }
        if let (Some(p50), Some(p99)) = (
            r["output_latency_us_p50"].as_u64(),
            r["output_latency_us_p99"].as_u64(),
        ) {
            println!("output:     held for p50 {p50} us, p99 {p99} us (output commit)");
        }
        if let Some(q) = r["console_queued_bytes"].as_u64() {
            println!(
                "console:    {q} bytes queued, {} dropped (reader too slow)",
                r["console_dropped_bytes"]
            );
        }
        println!(
            "link:       {:.1} MiB/s, {} MiB in all, heartbeat age {:.0} ms",
            r["bytes_per_s"].as_f64().unwrap_or(0.0) / 1048576.0,
            r["bytes"].as_u64().unwrap_or(0) >> 20,
            r["heartbeat_age_ms"].as_f64().unwrap_or(0.0)
        );
        if let Some(reason) = r["lost_reason"].as_str() {
            println!("LOST:       {reason}");
        }
    }
    let p = get("pause_us");
    if p["count"].as_u64().is_some_and(|c| c > 0) {
        println!(
            "pauses:     {} requested (p50 {} us, p99 {} us)",
            p["count"], p["p50"], p["p99"]
        );
    }
}

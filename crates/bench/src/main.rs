//! `ftvm-bench`: ftvm's benchmark harness.
//!
//! Drives the release `ftvm` binary as real processes (boot, pause, guest rates, diff
//! snapshots, live migration, protection with a backup on loopback, takeover) and measures
//! the bare cost of an epoch's dirty-log read plus page copy in-process. Prints a table per
//! group and writes everything to JSON. The machine is shared and noisy: compare numbers
//! as ratios within one run, and read the load average recorded beside each group.

mod bare;
mod copy;
mod disk;
mod fencing;
mod groups;
mod hotpages;
mod qemu;
mod redis;
mod stream;
mod util;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

use util::{loadavg, Res, TempDir};

/// The measurement groups, in run order.
pub const GROUPS: &[&str] = &[
    "boot",
    "pause",
    "rate",
    "snapshot",
    "migration",
    "epoch",
    "protected",
    "latency",
    "throughput",
    "takeover",
    "dirtylog",
    "hotpages",
    "copy",
    "stream",
    "qemu",
    "redis",
    "disk",
    "fencing",
];

/// Groups that run only when named with `--only` (slow, or need extra software).
pub const OPT_IN: &[&str] = &["qemu", "redis", "disk", "fencing"];

/// What an opt-in group measures and needs, for `--help`.
fn opt_in_note(group: &str) -> Option<&'static str> {
    Some(match group {
        "qemu" => "the same guest under QEMU side by side; needs qemu-system-x86_64",
        "redis" => {
            "redis-benchmark against the test guest's kv service over virtio-net, unprotected \
             and protected at 5/10/20 ms epochs, plus takeover; needs root, ip and redis-tools"
        }
        "disk" => {
            "the durable kv guest's SETs unprotected vs protected, initial disk sync of \
             FTVM_BENCH_DISK_MIB; needs root, ip and redis-tools"
        }
        "fencing" => {
            "takeover time per fence mode none/lock/etcd after SIGKILL and SIGSTOP of the \
             primary; needs etcd from Debian's etcd-server"
        }
        _ => return None,
    })
}

/// `--only`'s help: every group of [`GROUPS`] in run order, the opt-in ones ([`OPT_IN`])
/// apart, each with what it needs where known.
fn only_help() -> String {
    let default: Vec<&str> = GROUPS
        .iter()
        .copied()
        .filter(|g| !OPT_IN.contains(g))
        .collect();
    let opt_in: Vec<String> = GROUPS
        .iter()
        .copied()
        .filter(|g| OPT_IN.contains(g))
        .map(|g| match opt_in_note(g) {
            Some(note) => format!("{g} ({note})"),
            None => g.to_string(),
        })
        .collect();
    format!(
        "Run only these groups (repeat or comma-separate). Run by default: {}. Opt-in, run \
         only when named here: {}",
        default.join(", "),
        opt_in.join("; ")
    )
}

#[derive(Debug, Parser)]
#[command(
    name = "ftvm-bench",
    about = "Measure ftvm: boot, pause, guest rate, diff snapshots, migration, epochs, \
             protected rate, output latency, takeover, replication throughput, redis-benchmark"
)]
struct Args {
    /// Fewer repetitions and shorter intervals (about 2 minutes)
    #[arg(long)]
    quick: bool,
    /// Run only these groups (the list is generated from GROUPS and OPT_IN: see only_help)
    #[arg(long, value_delimiter = ',', help = only_help())]
    only: Vec<String>,
    /// Where to write the JSON results
    #[arg(long, default_value = "docs/bench/results.json")]
    json: PathBuf,
    /// The ftvm binary (default: target/release/ftvm, built if missing)
    #[arg(long)]
    ftvm: Option<PathBuf>,
    /// Run `cargo build --release -p ftvm` first
    #[arg(long)]
    build: bool,
}

/// A group's result: a table plus free-form JSON data.
#[derive(Debug, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
    pub data: Value,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            data: json!({}),
            ..Self::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Record a failure of one measurement; the group goes on.
    pub fn fail(&mut self, what: &str, err: String) {
        let msg = format!("{what}: {err}");
        eprintln!("ftvm-bench: FAILED {msg}");
        self.errors.push(msg);
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("| {} |\n", self.headers.join(" | ")));
        s.push_str(&format!(
            "|{}\n",
            self.headers.iter().map(|_| " --- |").collect::<String>()
        ));
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }
}

/// Shared state of one harness run.
#[derive(Debug)]
pub struct Ctx {
    /// The ftvm binary used (a private copy, so a concurrent rebuild cannot change it
    /// mid-run).
    pub ftvm: PathBuf,
    /// Scratch space for sockets, serial files and stderr.
    pub tmp: TempDir,
    /// Scratch space for snapshots (tmpfs when available, so fsync costs nothing).
    pub snap_tmp: TempDir,
    pub quick: bool,
    /// Protected runs already measured, by key, for the latency and throughput groups.
    pub protected_runs: RefCell<BTreeMap<String, Value>>,
}

impl Ctx {
    /// `quick` or full value.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// The measuring interval for guest rates.
    pub fn rate_interval(&self) -> Duration {
        self.pick(Duration::from_secs(3), Duration::from_secs(8))
    }
}

fn find_ftvm(args: &Args) -> Res<PathBuf> {
    if let Some(p) = &args.ftvm {
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(format!("--ftvm {}: no such file", p.display()))
        };
    }
    let default = PathBuf::from("target/release/ftvm");
    if args.build || !default.is_file() {
        eprintln!("ftvm-bench: running `cargo build --release -p ftvm`");
        let st = Command::new("cargo")
            .args(["build", "--release", "-p", "ftvm"])
            .status()
            .map_err(|e| {
                format!(
                    "cannot run cargo ({e}): build the release binary with \
                     `cargo build --release -p ftvm` in the workspace root, or pass --ftvm PATH"
                )
            })?;
        if !st.success() {
            return Err(format!(
                "`cargo build --release -p ftvm` failed ({st}); fix the build or pass --ftvm PATH"
            ));
        }
    }
    if default.is_file() {
        Ok(default)
    } else {
        Err(
            "target/release/ftvm not found: run `cargo build --release -p ftvm` in the \
             workspace root, or pass --ftvm PATH"
                .into(),
        )
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let vmx = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0 / 1024.0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "hardware_virtualization_flags": vmx,
        "kvm": if vmx { "KVM" } else { "nested software KVM (PVM): no VT-x/AMD-V, guest ring 0 emulated" },
        "os": os,
        "kernel": kernel,
        "memory_gib": mem_gib,
    })
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn run_group(ctx: &Ctx, name: &str) -> Table {
    let r = match name {
        "boot" => groups::boot(ctx),
        "pause" => groups::pause(ctx),
        "rate" => groups::rate(ctx),
        "snapshot" => groups::snapshot(ctx),
        "migration" => groups::migration(ctx),
        "epoch" => groups::epoch(ctx),
        "protected" => groups::protected(ctx),
        "latency" => groups::latency(ctx),
        "throughput" => groups::throughput(ctx),
        "takeover" => groups::takeover(ctx),
        "dirtylog" => groups::dirtylog(ctx),
        "stream" => stream::stream(ctx),
        "qemu" => qemu::qemu(ctx),
        "redis" => redis::redis(ctx),
        "disk" => disk::disk(ctx),
        "fencing" => fencing::fencing(ctx),
        "hotpages" => hotpages::hotpages(ctx),
        "copy" => copy::copy(ctx),
        other => Err(format!("unknown group {other}")),
    };
    r.unwrap_or_else(|e| {
        let mut t = Table::new(&["error"]);
        t.fail(name, e.clone());
        t.row(vec![e]);
        t
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    for g in &args.only {
        if !GROUPS.contains(&g.as_str()) {
            eprintln!(
                "ftvm-bench: unknown group {g:?}; groups: {}",
                GROUPS.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let src = match find_ftvm(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ftvm-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let setup = || -> Res<Ctx> {
        let tmp = TempDir::new(&std::env::temp_dir(), "ftvm-bench")?;
        let shm = Path::new("/dev/shm");
        let snap_tmp = TempDir::new(if shm.is_dir() { shm } else { &tmp.0 }, "ftvm-bench-snap")?;
        let ftvm = tmp.join("ftvm");
        std::fs::copy(&src, &ftvm)
            .map_err(|e| format!("copying {} to {}: {e}", src.display(), ftvm.display()))?;
        Ok(Ctx {
            ftvm,
            tmp,
            snap_tmp,
            quick: args.quick,
            protected_runs: RefCell::default(),
        })
    };
    let ctx = match setup() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ftvm-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let bin_mtime = std::fs::metadata(&src)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let command = std::iter::once("ftvm-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let started = Instant::now();
    let load_start = loadavg();
    println!(
        "ftvm-bench: {} ({}), binary {}, load average {:.2} {:.2} {:.2}",
        date(),
        if ctx.quick { "quick" } else { "full" },
        src.display(),
        load_start[0],
        load_start[1],
        load_start[2]
    );
    let mut results = serde_json::Map::new();
    let mut failed = 0;
    for &name in GROUPS {
        let named = args.only.iter().any(|g| g == name);
        if !named && (!args.only.is_empty() || OPT_IN.contains(&name)) {
            continue;
        }
        let before = loadavg();
        let t0 = Instant::now();
        eprintln!("ftvm-bench: group {name} ...");
        let table = run_group(&ctx, name);
        let secs = t0.elapsed().as_secs_f64();
        let after = loadavg();
        failed += table.errors.len();
        println!(
            "\n## {name}  ({secs:.0} s; load average {:.2} -> {:.2})\n",
            before[0], after[0]
        );
        print!("{}", table.markdown());
        for n in &table.notes {
            println!("\n{n}");
        }
        for e in &table.errors {
            println!("\nFAILED: {e}");
        }
        results.insert(
            name.to_string(),
            json!({
                "headers": table.headers,
                "rows": table.rows,
                "notes": table.notes,
                "errors": table.errors,
                "data": table.data,
                "seconds": secs,
                "loadavg_before": before,
                "loadavg_after": after,
            }),
        );
    }
    let doc = json!({
        "date": date(),
        "command": command,
        "quick": ctx.quick,
        "git_commit": git_commit(),
        "ftvm_binary": src.display().to_string(),
        "ftvm_binary_mtime_unix": bin_mtime,
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "seconds": started.elapsed().as_secs_f64(),
        "groups": results,
    });
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("ftvm-bench: creating {}: {e}", dir.display());
        }
    }
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    match std::fs::write(&args.json, text + "\n") {
        Ok(()) => println!("\nftvm-bench: wrote {}", args.json.display()),
        Err(e) => {
            eprintln!("ftvm-bench: writing {}: {e}", args.json.display());
            failed += 1;
        }
    }
    println!(
        "ftvm-bench: {:.0} s, load average at the end {:.2}",
        started.elapsed().as_secs_f64(),
        loadavg()[0]
    );
    if failed > 0 {
        eprintln!("ftvm-bench: {failed} measurement(s) failed (see FAILED lines)");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The `--only` help text as `ftvm-bench --help` prints it (unwrapped).
    fn help_of_only() -> String {
        let cmd = Args::command();
        let only = cmd
            .get_arguments()
            .find(|a| a.get_id() == "only")
            .expect("--only exists");
        only.get_long_help()
            .or(only.get_help())
            .expect("--only has help")
            .to_string()
    }

    #[test]
    fn only_help_lists_every_group_and_marks_the_opt_in_ones() {
        let help = help_of_only();
        let (default, opt_in) = help
            .split_once("Opt-in, run only when named here:")
            .expect("the help has an opt-in part");
        let words = |s: &str| -> Vec<String> {
            s.split(|c: char| !c.is_ascii_alphanumeric())
                .map(String::from)
                .collect()
        };
        let (default, opt_in) = (words(default), words(opt_in));
        for g in GROUPS {
            let g = g.to_string();
            if OPT_IN.contains(&g.as_str()) {
                assert!(
                    opt_in.contains(&g),
                    "opt-in group {g} not listed as opt-in: {help}"
                );
                assert!(
                    !default.contains(&g),
                    "opt-in group {g} listed as default: {help}"
                );
            } else {
                assert!(
                    default.contains(&g),
                    "group {g} not listed as default: {help}"
                );
            }
        }
        assert!(
            OPT_IN.iter().all(|g| GROUPS.contains(g)),
            "OPT_IN names unknown groups"
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }
}

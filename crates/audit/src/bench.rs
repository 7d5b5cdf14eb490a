//! Speed measurement: scan a tree and report lines per second per core.

use crate::error::AuditError;
use crate::scan::{self, ScanOptions};
use crate::walk::SourceFile;
use serde::Serialize;
use std::path::Path;

/// One bench measurement.
///
/// `lines_per_second_per_core` is measured on one thread: the tree is scanned once per
/// language with `jobs = 1` and the per-language times are added up. The parallel run
/// (`parallel_*`) uses all workers and wall-clock time, so on a machine shared with other
/// builds it understates per-core speed.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub files: usize,
    pub lines: usize,
    pub bytes: usize,
    pub findings: usize,
    /// Single-thread seconds (sum over languages).
    pub seconds_one_core: f64,
    pub lines_per_second_per_core: f64,
    pub parallel_jobs: usize,
    pub parallel_seconds: f64,
    pub parallel_lines_per_second: f64,
    pub by_language: Vec<LangBench>,
}

/// Per-language share of a bench run (single-threaded timing of that language's files).
#[derive(Debug, Clone, Serialize)]
pub struct LangBench {
    pub lang: &'static str,
    pub files: usize,
    pub lines: usize,
    pub seconds: f64,
    pub lines_per_second_per_core: f64,
}

/// Scan `files` once per language on one core, then once with `opts.jobs` workers.
pub fn run(files: &[SourceFile], opts: &ScanOptions) -> Result<BenchResult, AuditError> {
    let mut opts = opts.clone();
    opts.include_tests = true;
    let single = ScanOptions {
        jobs: 1,
        ..opts.clone()
    };
    let mut by_language = Vec::new();
    let (mut seconds_one_core, mut lines, mut bytes, mut findings, mut scanned) = (0.0, 0, 0, 0, 0);
    for lang in crate::lang::Lang::ALL {
        let subset: Vec<SourceFile> = files.iter().filter(|f| f.lang == lang).cloned().collect();
        if subset.is_empty() {
            continue;
        }
        let r = scan::scan(&subset, &single)?;
        let s = r.stats.elapsed.as_secs_f64().max(1e-9);
        seconds_one_core += s;
        lines += r.stats.lines_scanned;
        bytes += r.stats.bytes_scanned;
        findings += r.findings.len();
        scanned += r.stats.files_scanned;
        by_language.push(LangBench {
            lang: lang.name(),
            files: r.stats.files_scanned,
            lines: r.stats.lines_scanned,
            seconds: s,
            lines_per_second_per_core: r.stats.lines_scanned as f64 / s,
        });
    }
    let parallel = scan::scan(files, &opts)?;
    let parallel_seconds = parallel.stats.elapsed.as_secs_f64().max(1e-9);
    Ok(BenchResult {
        files: scanned,
        lines,
        bytes,
        findings,
        seconds_one_core,
        lines_per_second_per_core: lines as f64 / seconds_one_core.max(1e-9),
        parallel_jobs: parallel.stats.jobs,
        parallel_seconds,
        parallel_lines_per_second: parallel.stats.lines_scanned as f64 / parallel_seconds,
        by_language,
    })
}

/// Print the result as a table on stdout.
pub fn print_table(r: &BenchResult) {
    println!(
        "{:<14} {:>8} {:>10} {:>9} {:>14}",
        "language", "files", "lines", "seconds", "lines/s/core"
    );
    for l in &r.by_language {
        println!(
            "{:<14} {:>8} {:>10} {:>9.3} {:>14.0}",
            l.lang, l.files, l.lines, l.seconds, l.lines_per_second_per_core
        );
    }
    println!(
        "{:<14} {:>8} {:>10} {:>9.3} {:>14.0}   ({} findings)",
        "all, 1 core",
        r.files,
        r.lines,
        r.seconds_one_core,
        r.lines_per_second_per_core,
        r.findings
    );
    println!(
        "{:<14} {:>8} {:>10} {:>9.3} {:>14.0}   (wall clock, {:.0} lines/s total)",
        format!("all, {} thr", r.parallel_jobs),
        r.files,
        r.lines,
        r.parallel_seconds,
        r.parallel_lines_per_second / r.parallel_jobs as f64,
        r.parallel_lines_per_second
    );
}

/// Write the result as pretty JSON, creating parent directories.
pub fn write_json(r: &BenchResult, path: &Path) -> Result<(), AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut text = serde_json::to_string_pretty(r).map_err(|source| AuditError::Serialize {
        format: "bench JSON",
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| AuditError::Write {
        path: path.to_path_buf(),
        source,
    })
}

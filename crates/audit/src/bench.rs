//! Speed measurement: scan a tree and report lines per second per core.

use crate::error::AuditError;
use crate::scan::{self, ScanOptions};
use crate::walk::SourceFile;
use serde::Serialize;
use std::path::Path;

/// One bench measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub files: usize,
    pub lines: usize,
    pub bytes: usize,
    pub findings: usize,
    pub seconds: f64,
    pub jobs: usize,
    pub lines_per_second: f64,
    pub lines_per_second_per_core: f64,
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

/// Scan `files` once with `opts` (all cores) and once per language on one core.
pub fn run(files: &[SourceFile], opts: &ScanOptions) -> Result<BenchResult, AuditError> {
    let mut opts = opts.clone();
    opts.include_tests = true;
    let all = scan::scan(files, &opts)?;
    let secs = all.stats.elapsed.as_secs_f64().max(1e-9);
    let jobs = all.stats.jobs;
    let mut by_language = Vec::new();
    let single = ScanOptions {
        jobs: 1,
        ..opts.clone()
    };
    for lang in crate::lang::Lang::ALL {
        let subset: Vec<SourceFile> = files.iter().filter(|f| f.lang == lang).cloned().collect();
        if subset.is_empty() {
            continue;
        }
        let r = scan::scan(&subset, &single)?;
        let s = r.stats.elapsed.as_secs_f64().max(1e-9);
        by_language.push(LangBench {
            lang: lang.name(),
            files: r.stats.files_scanned,
            lines: r.stats.lines_scanned,
            seconds: s,
            lines_per_second_per_core: r.stats.lines_scanned as f64 / s,
        });
    }
    Ok(BenchResult {
        files: all.stats.files_scanned,
        lines: all.stats.lines_scanned,
        bytes: all.stats.bytes_scanned,
        findings: all.findings.len(),
        seconds: secs,
        jobs,
        lines_per_second: all.stats.lines_scanned as f64 / secs,
        lines_per_second_per_core: all.stats.lines_scanned as f64 / secs / jobs as f64,
        by_language,
    })
}

/// Print the result as a table on stdout.
pub fn print_table(r: &BenchResult) {
    println!(
        "{:<10} {:>8} {:>10} {:>9} {:>14}",
        "language", "files", "lines", "seconds", "lines/s/core"
    );
    for l in &r.by_language {
        println!(
            "{:<10} {:>8} {:>10} {:>9.3} {:>14.0}",
            l.lang, l.files, l.lines, l.seconds, l.lines_per_second_per_core
        );
    }
    println!(
        "{:<10} {:>8} {:>10} {:>9.3} {:>14.0}   ({} threads, {:.0} lines/s total, {} findings)",
        "all",
        r.files,
        r.lines,
        r.seconds,
        r.lines_per_second_per_core,
        r.jobs,
        r.lines_per_second,
        r.findings
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

//! `ftvm audit` command line: arguments (clap derive) and the `run` entry point that the
//! `ftvm` binary calls.

use crate::baseline::Baseline;
use crate::bench;
use crate::catalog::{Severity, Tier};
use crate::config::Config;
use crate::error::AuditError;
use crate::report::{self, Format, Report};
use crate::scan::{self, ScanOptions};
use crate::walk;
use std::io::Write;
use std::path::PathBuf;

/// Find code that hurts fault tolerance: swallowed errors, crash-prone calls, waits without
/// timeouts, unbounded retries, non-durable writes, failover-hostile state.
///
/// Scans C, C++, Rust, Go, Python and Java sources (parsed with tree-sitter), respecting
/// .gitignore. Test code is skipped unless --include-tests is given. The rule catalog with
/// sources and fixes is docs/audit-rules.md.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    /// Files or directories to audit (default: the current directory).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Output format: `text` (grouped by category, with why and fix), `json`, or `sarif`
    /// (SARIF 2.1.0, for code-review tools).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,

    /// Exit with status 1 when at least N findings (after config, baseline and
    /// --min-severity filtering) are reported. 0 never fails on findings.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub fail_on: usize,

    /// Report only findings at or above this severity: note, warning or error
    /// (default: note, i.e. everything).
    #[arg(long, value_name = "LEVEL", default_value = "note")]
    pub min_severity: Severity,

    /// Report findings of every confidence tier (high, medium, low). Default: only the high
    /// tier (rule/language pairs measured at 70% precision or more on careful labels; none
    /// today: the last candidate, Python `request-without-timeout`, measured 61% held out. Use
    /// --tier medium for a review).
    #[arg(long)]
    pub all: bool,

    /// Lowest confidence tier to report: high (default), medium or low (same as --all).
    #[arg(long, value_enum, value_name = "TIER")]
    pub tier: Option<Tier>,

    /// Write the mechanical refactorings of the findings that have one (Rust `.unwrap()` in
    /// a fn returning Result -> `?`; Go dropped Sync/Close/Truncate/Rename errors ->
    /// checked; Python rename without fsync -> fsync file, rename, fsync directory) as a
    /// unified diff to stdout (or --fix-to FILE) instead of the report. `--fix=apply` edits
    /// the files in place. Every tier is considered.
    #[arg(long, value_enum, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "diff")]
    pub fix: Option<FixMode>,

    /// With --fix: write the diff to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub fix_to: Option<PathBuf>,

    /// TOML config file: `[rules] disable/only/severity`, `[paths] exclude`,
    /// `include_tests`, `max_file_size` (see docs/audit-rules.md). Default: none.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Baseline file written by --write-baseline: findings whose fingerprint (rule, path,
    /// normalized snippet; not line numbers) is listed are suppressed. Default: none.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,

    /// Write the fingerprints of all current findings to FILE (JSON), to be used later
    /// with --baseline. The report is still printed.
    #[arg(long, value_name = "FILE")]
    pub write_baseline: Option<PathBuf>,

    /// Also audit test files and test functions (skipped by default).
    #[arg(long)]
    pub include_tests: bool,

    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Worker threads (default: number of CPUs).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// List every file left out on purpose (test/example/benchmark/tooling code, generated
    /// code, directories and files hidden by a .gitignore/.ignore rule) with the rule that
    /// left it out, in addition to the skipped files.
    #[arg(long)]
    pub explain_skips: bool,

    /// Measure scan speed instead of reporting: prints files, lines, seconds and
    /// lines/s/core, and writes the numbers as JSON to FILE.
    #[arg(long, value_name = "FILE", hide = true)]
    pub bench: Option<PathBuf>,
}

/// What `--fix` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FixMode {
    /// Print a unified diff (default).
    Diff,
    /// Edit the files in place.
    Apply,
}

/// Write or apply the fixes of `findings`; returns how many edits there were.
fn run_fix(
    args: &AuditArgs,
    mode: FixMode,
    findings: &[crate::finding::Finding],
    files: &[walk::SourceFile],
) -> Result<usize, AuditError> {
    let mut diff = String::new();
    let mut count = 0;
    for file in files {
        let mine: Vec<&crate::finding::Finding> =
            findings.iter().filter(|f| f.path == file.display).collect();
        if mine.is_empty() {
            continue;
        }
        let Ok(src) = std::fs::read_to_string(&file.path) else {
            continue;
        };
        let edits = crate::fix::edits_for(&src, file.lang, &mine);
        if edits.is_empty() {
            continue;
        }
        count += edits.len();
        match mode {
            FixMode::Diff => diff.push_str(&crate::fix::unified_diff(&file.display, &src, &edits)),
            FixMode::Apply => {
                let new = crate::fix::apply(&src, &edits);
                std::fs::write(&file.path, new).map_err(|source| AuditError::Write {
                    path: file.path.clone(),
                    source,
                })?;
                eprintln!(
                    "ftvm audit: fixed {} place(s) in {}",
                    edits.len(),
                    file.display
                );
            }
        }
    }
    if mode == FixMode::Diff {
        match &args.fix_to {
            Some(p) => std::fs::write(p, &diff).map_err(|source| AuditError::Write {
                path: p.clone(),
                source,
            })?,
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(diff.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(AuditError::Stdout)?;
            }
        }
    }
    Ok(count)
}

/// Exit code when no file at all was audited (empty tree, everything skipped or left out):
/// the run proves nothing, so it must not look like a clean one.
pub const EXIT_NOTHING_AUDITED: i32 = 3;

/// Run an audit: print the report and return the process exit code (0 = clean or below
/// --fail-on, 1 = findings reached --fail-on, 3 = no file was audited; errors are 2 in the
/// binaries).
pub fn run(args: &AuditArgs) -> Result<i32, AuditError> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let roots = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let excludes = walk::build_excludes(&config.paths.exclude)?;
    let mut opts = ScanOptions {
        include_tests: args.include_tests || config.include_tests.unwrap_or(false),
        ..ScanOptions::default()
    };
    if let Some(j) = args.jobs {
        opts.jobs = j.max(1);
    }
    opts.c_macros = opts
        .c_macros
        .with_project(&config.c.loop_macros, &config.c.blank_macros);
    if let Some(m) = config.max_file_size {
        opts.max_file_size = m;
    }
    let (files, mut skipped) = walk::collect(&roots, &excludes, &config.paths.production)?;

    if let Some(out) = &args.bench {
        let result = bench::run(&files, &opts)?;
        bench::print_table(&result);
        bench::write_json(&result, out)?;
        return Ok(0);
    }

    let mut result = scan::scan(&files, &opts)?;
    skipped.append(&mut result.skipped);
    if args.explain_skips {
        result
            .left_out
            .extend(crate::gitignored::explain(&roots, &excludes));
    }
    result.stats.files_skipped = skipped.len();

    let mut findings: Vec<_> = result
        .findings
        .into_iter()
        .filter(|f| config.enabled(f.rule))
        .map(|mut f| {
            f.severity = config.severity(f.rule, f.severity);
            f
        })
        .filter(|f| f.severity >= args.min_severity)
        .collect();
    if let Some(mode) = args.fix {
        let n = run_fix(args, mode, &findings, &files)?;
        eprintln!(
            "ftvm audit: {n} mechanical fix(es) {}",
            if mode == FixMode::Apply {
                "applied"
            } else {
                "written"
            }
        );
        return Ok(0);
    }
    let min_tier = if args.all {
        Tier::Low
    } else {
        args.tier.unwrap_or(Tier::High)
    };
    let before_tier = findings.len();
    findings.retain(|f| f.tier >= min_tier);
    result.stats.hidden_by_tier = before_tier - findings.len();
    if let Some(p) = &args.write_baseline {
        Baseline::write(p, &findings)?;
    }
    let mut suppressed = 0;
    if let Some(p) = &args.baseline {
        let baseline = Baseline::load(p)?;
        let before = findings.len();
        findings.retain(|f| !baseline.contains(f));
        suppressed = before - findings.len();
    }
    let no_left_out = Vec::new();
    let report = Report {
        findings: &findings,
        skipped: &skipped,
        left_out: if args.explain_skips {
            &result.left_out
        } else {
            &no_left_out
        },
        stats: &result.stats,
        suppressed_by_baseline: suppressed,
    };
    let text = report::render(&report, args.format)?;
    match &args.output {
        Some(p) => std::fs::write(p, text).map_err(|source| AuditError::Write {
            path: p.clone(),
            source,
        })?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(AuditError::Stdout)?;
        }
    }
    if result.stats.files_scanned == 0 {
        eprintln!(
            "ftvm audit: warning: no file was audited ({} skipped, {} left out as test/example/tooling code, {} generated){}",
            result.stats.files_skipped,
            result.stats.test_files_ignored,
            result.stats.generated_files_ignored,
            if args.explain_skips {
                ""
            } else {
                "; --explain-skips lists why"
            }
        );
        return Ok(EXIT_NOTHING_AUDITED);
    }
    Ok(i32::from(
        args.fail_on > 0 && findings.len() >= args.fail_on,
    ))
}

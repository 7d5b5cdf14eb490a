//! Human-readable report, grouped by category.

use super::Report;
use crate::catalog::{self, Category};
use std::fmt::Write;

pub fn render(r: &Report<'_>) -> String {
    let mut out = String::new();
    let mut cats: Vec<Category> = r.findings.iter().map(|f| f.category).collect();
    cats.sort();
    cats.dedup();
    for cat in &cats {
        let in_cat: Vec<_> = r.findings.iter().filter(|f| f.category == *cat).collect();
        let _ = writeln!(out, "== {} ({})", cat.title(), in_cat.len());
        for f in in_cat {
            let _ = writeln!(
                out,
                "{}:{}:{}: {}[{}, {} confidence] {}",
                f.path,
                f.line,
                f.column,
                f.severity.name(),
                f.rule,
                f.tier.name(),
                f.message
            );
            for line in f.snippet.lines() {
                let _ = writeln!(out, "    | {line}");
            }
            if let Some(info) = catalog::rule(f.rule) {
                let _ = writeln!(out, "    why: {}", info.why);
                let _ = writeln!(out, "    fix: {}", info.fix);
            }
            out.push('\n');
        }
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "== skipped files ({})", r.skipped.len());
        for s in r.skipped {
            let _ = writeln!(out, "{}: {}", s.path, s.reason);
        }
        out.push('\n');
    }
    if !r.left_out.is_empty() {
        let _ = writeln!(out, "== left out on purpose ({})", r.left_out.len());
        for s in r.left_out {
            let _ = writeln!(out, "{}: {}", s.path, s.reason);
        }
        out.push('\n');
    }
    let s = r.stats;
    let _ = write!(
        out,
        "ftvm audit: {} finding{} in {} categor{} ({} files, {} lines, {} functions analysed; {} with syntax errors ({} bytes not analysed); {} skipped; {} test files ignored",
        r.findings.len(),
        if r.findings.len() == 1 { "" } else { "s" },
        cats.len(),
        if cats.len() == 1 { "y" } else { "ies" },
        s.files_scanned,
        s.lines_scanned,
        s.functions_analysed,
        s.files_with_syntax_errors,
        s.syntax_error_bytes,
        s.files_skipped,
        s.test_files_ignored,
    );
    if s.hidden_by_tier > 0 {
        let _ = write!(
            out,
            "; {} lower-tier finding{} hidden, --all shows them",
            s.hidden_by_tier,
            if s.hidden_by_tier == 1 { "" } else { "s" }
        );
    }
    if r.suppressed_by_baseline > 0 {
        let _ = write!(out, "; {} suppressed by baseline", r.suppressed_by_baseline);
    }
    out.push_str(")\n");
    out
}

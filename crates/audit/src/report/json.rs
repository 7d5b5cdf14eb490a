//! JSON report: `{ tool, version, stats, summary, findings[], skipped[] }`.

use super::Report;
use crate::catalog;
use crate::error::AuditError;
use crate::finding::Finding;
use crate::scan::ScanStats;
use crate::walk::Skipped;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct JsonFinding<'a> {
    #[serde(flatten)]
    finding: &'a Finding,
    why: &'static str,
    fix: &'static str,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    stats: &'a ScanStats,
    suppressed_by_baseline: usize,
    summary: Summary,
    findings: Vec<JsonFinding<'a>>,
    skipped: &'a [Skipped],
    #[serde(skip_serializing_if = "<[Skipped]>::is_empty")]
    left_out: &'a [Skipped],
}

#[derive(Serialize)]
struct Summary {
    total: usize,
    by_category: BTreeMap<&'static str, usize>,
    by_rule: BTreeMap<&'static str, usize>,
    by_severity: BTreeMap<&'static str, usize>,
}

pub fn render(r: &Report<'_>) -> Result<String, AuditError> {
    let mut summary = Summary {
        total: r.findings.len(),
        by_category: BTreeMap::new(),
        by_rule: BTreeMap::new(),
        by_severity: BTreeMap::new(),
    };
    for f in r.findings {
        *summary.by_category.entry(f.category.title()).or_default() += 1;
        *summary.by_rule.entry(f.rule).or_default() += 1;
        *summary.by_severity.entry(f.severity.name()).or_default() += 1;
    }
    let findings = r
        .findings
        .iter()
        .map(|f| {
            let info = catalog::rule(f.rule);
            JsonFinding {
                finding: f,
                why: info.map_or("", |i| i.why),
                fix: info.map_or("", |i| i.fix),
            }
        })
        .collect();
    let doc = JsonReport {
        tool: "ftvm-audit",
        version: env!("CARGO_PKG_VERSION"),
        stats: r.stats,
        suppressed_by_baseline: r.suppressed_by_baseline,
        summary,
        findings,
        skipped: r.skipped,
        left_out: r.left_out,
    };
    let mut s = serde_json::to_string_pretty(&doc).map_err(|source| AuditError::Serialize {
        format: "JSON",
        source,
    })?;
    s.push('\n');
    Ok(s)
}

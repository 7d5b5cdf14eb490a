//! Report writers: human text, JSON, and SARIF 2.1.0.

pub mod json;
pub mod sarif;
pub mod text;

use crate::finding::Finding;
use crate::scan::ScanStats;
use crate::walk::Skipped;

/// Everything a report shows.
#[derive(Debug)]
pub struct Report<'a> {
    pub findings: &'a [Finding],
    pub skipped: &'a [Skipped],
    /// Files left out on purpose, with the rule (only filled with --explain-skips).
    pub left_out: &'a [Skipped],
    pub stats: &'a ScanStats,
    /// Findings hidden by the baseline.
    pub suppressed_by_baseline: usize,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable, grouped by category.
    Text,
    /// One JSON document (findings, skipped files, stats).
    Json,
    /// SARIF 2.1.0, for code-review tools.
    Sarif,
}

/// Render a report in the given format.
pub fn render(report: &Report<'_>, format: Format) -> Result<String, crate::error::AuditError> {
    match format {
        Format::Text => Ok(text::render(report)),
        Format::Json => json::render(report),
        Format::Sarif => sarif::render(report),
    }
}

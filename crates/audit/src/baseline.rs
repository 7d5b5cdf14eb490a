//! Baselines: a JSON list of finding fingerprints (rule + path + normalized snippet, no
//! line numbers). Findings whose fingerprint is in the baseline are suppressed, so a team
//! can adopt the audit on old code and fail only on new findings.

use crate::error::AuditError;
use crate::finding::Finding;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
pub struct BaselineFile {
    pub version: u32,
    pub tool: String,
    pub entries: Vec<BaselineEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BaselineEntry {
    pub fingerprint: String,
    pub rule: String,
    pub path: String,
    /// For humans reading the file; not used for matching.
    #[serde(default)]
    pub snippet: String,
}

/// Loaded fingerprints.
#[derive(Debug, Default)]
pub struct Baseline {
    fingerprints: HashSet<String>,
}

impl Baseline {
    pub fn load(path: &Path) -> Result<Baseline, AuditError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuditError::BaselineRead {
            path: path.to_path_buf(),
            source,
        })?;
        let file: BaselineFile =
            serde_json::from_str(&text).map_err(|source| AuditError::BaselineParse {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Baseline {
            fingerprints: file.entries.into_iter().map(|e| e.fingerprint).collect(),
        })
    }

    pub fn contains(&self, f: &Finding) -> bool {
        self.fingerprints.contains(&f.fingerprint)
    }

    /// Write the fingerprints of `findings` to `path`.
    pub fn write(path: &Path, findings: &[Finding]) -> Result<(), AuditError> {
        let mut entries: Vec<BaselineEntry> = findings
            .iter()
            .map(|f| BaselineEntry {
                fingerprint: f.fingerprint.clone(),
                rule: f.rule.to_string(),
                path: f.path.clone(),
                snippet: f.snippet.clone(),
            })
            .collect();
        entries.sort_by(|a, b| {
            (&a.path, &a.rule, &a.fingerprint).cmp(&(&b.path, &b.rule, &b.fingerprint))
        });
        entries.dedup_by(|a, b| a.fingerprint == b.fingerprint);
        let file = BaselineFile {
            version: 1,
            tool: "ftvm-audit".into(),
            entries,
        };
        let mut text =
            serde_json::to_string_pretty(&file).map_err(|source| AuditError::Serialize {
                format: "baseline",
                source,
            })?;
        text.push('\n');
        std::fs::write(path, text).map_err(|source| AuditError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

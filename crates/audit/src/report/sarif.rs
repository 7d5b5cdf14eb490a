//! SARIF 2.1.0 report (OASIS standard), hand-serialized with serde structs. One run, the
//! full rule catalog as `tool.driver.rules`, one result per finding with a physical
//! location, snippet and a line-independent `partialFingerprints` entry; skipped files
//! become `toolExecutionNotifications`.

use super::Report;
use crate::catalog::{self, RULES};
use crate::error::AuditError;
use serde::Serialize;

const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

#[derive(Serialize)]
struct Log<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    runs: Vec<Run<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Run<'a> {
    tool: Tool,
    results: Vec<SarifResult<'a>>,
    invocations: Vec<Invocation>,
    column_kind: &'static str,
}

#[derive(Serialize)]
struct Tool {
    driver: Driver,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Driver {
    name: &'static str,
    version: &'static str,
    rules: Vec<Rule>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    id: &'static str,
    name: String,
    short_description: Text,
    full_description: Text,
    help: Help,
    default_configuration: DefaultConfiguration,
    properties: RuleProperties,
}

#[derive(Serialize)]
struct Text {
    text: String,
}

#[derive(Serialize)]
struct Help {
    text: String,
    markdown: String,
}

#[derive(Serialize)]
struct DefaultConfiguration {
    level: &'static str,
}

#[derive(Serialize)]
struct RuleProperties {
    category: &'static str,
    tags: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult<'a> {
    rule_id: &'static str,
    rule_index: usize,
    level: &'static str,
    message: Text,
    locations: Vec<Location<'a>>,
    partial_fingerprints: Fingerprints<'a>,
    properties: ResultProperties,
}

/// Per-result properties: the confidence tier (CodeQL calls it `precision`).
#[derive(Serialize)]
struct ResultProperties {
    precision: &'static str,
}

#[derive(Serialize)]
struct Fingerprints<'a> {
    #[serde(rename = "ftvmAudit/v1")]
    v1: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Location<'a> {
    physical_location: PhysicalLocation<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation<'a> {
    artifact_location: ArtifactLocation,
    region: Region<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactLocation {
    uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri_base_id: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Region<'a> {
    start_line: usize,
    start_column: usize,
    end_line: usize,
    end_column: usize,
    snippet: SnippetText<'a>,
}

#[derive(Serialize)]
struct SnippetText<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Invocation {
    execution_successful: bool,
    tool_execution_notifications: Vec<Notification>,
    /// Coverage of the run (SARIF property bag).
    properties: Coverage,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Coverage {
    files_analysed: usize,
    lines_analysed: usize,
    functions_analysed: usize,
    files_with_syntax_errors: usize,
    syntax_error_bytes: usize,
    files_skipped: usize,
    test_files_ignored: usize,
    generated_files_ignored: usize,
}

#[derive(Serialize)]
struct Notification {
    level: &'static str,
    message: Text,
    locations: Vec<NotificationLocation>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationLocation {
    physical_location: NotificationPhysical,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationPhysical {
    artifact_location: ArtifactLocation,
}

/// Percent-encode what a URI reference cannot hold; relative paths stay relative to
/// `%SRCROOT%`.
fn artifact(path: &str) -> ArtifactLocation {
    let mut uri = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                uri.push(char::from(b))
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    if path.starts_with('/') {
        ArtifactLocation {
            uri: format!("file://{uri}"),
            uri_base_id: None,
        }
    } else {
        ArtifactLocation {
            uri,
            uri_base_id: Some("%SRCROOT%"),
        }
    }
}

pub fn render(r: &Report<'_>) -> Result<String, AuditError> {
    let rules = RULES
        .iter()
        .map(|info| Rule {
            id: info.id,
            name: info
                .id
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                })
                .collect(),
            short_description: Text {
                text: info.title.to_string(),
            },
            full_description: Text {
                text: info.why.to_string(),
            },
            help: Help {
                text: format!("{}\nFix: {}", info.why, info.fix),
                markdown: format!("{}\n\n**Fix:** {}", info.why, info.fix),
            },
            default_configuration: DefaultConfiguration {
                level: info.severity.name(),
            },
            properties: RuleProperties {
                category: info.category.title(),
                tags: vec!["fault-tolerance", info.category.title()],
            },
        })
        .collect();
    let results = r
        .findings
        .iter()
        .map(|f| SarifResult {
            rule_id: f.rule,
            rule_index: RULES.iter().position(|x| x.id == f.rule).unwrap_or(0),
            level: f.severity.name(),
            message: Text {
                text: match catalog::rule(f.rule) {
                    Some(info) => format!("{}. Fix: {}", f.message, info.fix),
                    None => f.message.clone(),
                },
            },
            locations: vec![Location {
                physical_location: PhysicalLocation {
                    artifact_location: artifact(&f.path),
                    region: Region {
                        start_line: f.line,
                        start_column: f.column,
                        end_line: f.end_line,
                        end_column: f.end_column,
                        snippet: SnippetText { text: &f.snippet },
                    },
                },
            }],
            partial_fingerprints: Fingerprints { v1: &f.fingerprint },
            properties: ResultProperties {
                precision: f.tier.name(),
            },
        })
        .collect();
    let notifications = r
        .skipped
        .iter()
        .map(|s| Notification {
            level: "warning",
            message: Text {
                text: format!("skipped: {}", s.reason),
            },
            locations: vec![NotificationLocation {
                physical_location: NotificationPhysical {
                    artifact_location: artifact(&s.path),
                },
            }],
        })
        .collect();
    let log = Log {
        schema: SCHEMA,
        version: "2.1.0",
        runs: vec![Run {
            tool: Tool {
                driver: Driver {
                    name: "ftvm-audit",
                    version: env!("CARGO_PKG_VERSION"),
                    rules,
                },
            },
            results,
            invocations: vec![Invocation {
                execution_successful: true,
                tool_execution_notifications: notifications,
                properties: Coverage {
                    files_analysed: r.stats.files_scanned,
                    lines_analysed: r.stats.lines_scanned,
                    functions_analysed: r.stats.functions_analysed,
                    files_with_syntax_errors: r.stats.files_with_syntax_errors,
                    syntax_error_bytes: r.stats.syntax_error_bytes,
                    files_skipped: r.stats.files_skipped,
                    test_files_ignored: r.stats.test_files_ignored,
                    generated_files_ignored: r.stats.generated_files_ignored,
                },
            }],
            column_kind: "unicodeCodePoints",
        }],
    };
    let mut s = serde_json::to_string_pretty(&log).map_err(|source| AuditError::Serialize {
        format: "SARIF",
        source,
    })?;
    s.push('\n');
    Ok(s)
}

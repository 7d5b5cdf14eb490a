//! The TOML config file: enable/disable rules, override severities, exclude paths.
//!
//! ```toml
//! include_tests = false          # also audit test files/functions
//! max_file_size = 4194304        # bytes; larger files are skipped
//!
//! [rules]
//! disable = ["assert"]           # rules to turn off
//! only = []                      # if non-empty, run only these rules
//! severity = { unwrap = "error", log-only-handler = "warning" }
//!
//! [paths]
//! exclude = ["vendor/**", "third_party/**", "**/*.pb.go"]
//! production = ["contrib"]       # directory names that are production code here
//!
//! [c]
//! loop_macros = ["RB_WALK"]      # project iteration macros: `RB_WALK(n, t) { ... }`
//! blank_macros = ["__my_attr"]   # project annotation macros that expand to nothing
//! ```

use crate::catalog::{self, Severity};
use crate::error::AuditError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub include_tests: Option<bool>,
    #[serde(default)]
    pub max_file_size: Option<u64>,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    #[serde(default)]
    pub c: CConfig,
}

/// `[c]`: project macro idioms added to the built-in list (see `cmacro`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CConfig {
    /// Iteration macros used as loop heads (`RB_WALK(n, t) { ... }`).
    #[serde(default)]
    pub loop_macros: Vec<String>,
    /// Annotation macros that expand to nothing or attributes, blanked with their arguments.
    #[serde(default)]
    pub blank_macros: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub only: Vec<String>,
    #[serde(default)]
    pub severity: BTreeMap<String, Severity>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Directory names that are production code in this project although the built-in
    /// list calls them non-production (e.g. `["contrib"]`).
    #[serde(default)]
    pub production: Vec<String>,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, AuditError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuditError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, AuditError> {
        let cfg: Config = toml::from_str(text).map_err(|e| AuditError::ConfigParse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let named = cfg
            .rules
            .disable
            .iter()
            .chain(&cfg.rules.only)
            .chain(cfg.rules.severity.keys());
        for rule in named {
            if catalog::rule(rule).is_none() {
                return Err(AuditError::UnknownRule {
                    path: path.to_path_buf(),
                    rule: rule.clone(),
                });
            }
        }
        Ok(cfg)
    }

    /// Whether a rule should run.
    pub fn enabled(&self, rule: &str) -> bool {
        (self.rules.only.is_empty() || self.rules.only.iter().any(|r| r == rule))
            && !self.rules.disable.iter().any(|r| r == rule)
    }

    /// The severity of a rule after overrides.
    pub fn severity(&self, rule: &str, default: Severity) -> Severity {
        self.rules.severity.get(rule).copied().unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = Config::parse("[rules]\ndisable=[\"assert\"]\nseverity={unwrap=\"error\"}\n[paths]\nexclude=[\"v/**\"]", Path::new("c.toml"))
            .unwrap();
        assert!(!c.enabled("assert"));
        assert!(c.enabled("unwrap"));
        assert_eq!(c.severity("unwrap", Severity::Warning), Severity::Error);
        assert!(matches!(
            Config::parse("[rules]\ndisable=[\"nope\"]", Path::new("c")),
            Err(AuditError::UnknownRule { .. })
        ));
        assert!(matches!(
            Config::parse("bogus = 1", Path::new("c")),
            Err(AuditError::ConfigParse { .. })
        ));
    }
}

//! Shared by the end-to-end tests of the project passes (`helper_pass.rs`, `timeout_pass.rs`).
// Each test crate that includes this module uses only some of its helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;

/// Findings of `rule` as (path, line), sorted, from `ftvm-audit --all ARG` run in `dir`.
pub fn findings_of(dir: &Path, arg: &str, rule: &str) -> Vec<(String, u64)> {
    findings_of_rules(dir, arg, &[rule])
}

/// (path, line) of the findings of any of `rules` of `ftvm-audit --all ARG` run in `dir`.
pub fn findings_of_rules(dir: &Path, arg: &str, rules: &[&str]) -> Vec<(String, u64)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftvm-audit"))
        .current_dir(dir)
        .args(["--all", "--format", "json", "--fail-on", "0", arg])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<(String, u64)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| rules.iter().any(|r| f["rule"] == *r))
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    got
}

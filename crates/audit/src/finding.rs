//! A finding: one place in one file where a rule matched.

use crate::catalog::{Category, Severity, Tier};
use crate::lang::Lang;
use serde::Serialize;

/// One reported problem.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// Rule id, e.g. `empty-handler`.
    pub rule: &'static str,
    pub category: Category,
    pub severity: Severity,
    /// Confidence tier of the rule for this language (measured precision).
    pub tier: Tier,
    pub lang: Lang,
    /// Path as given/walked, with `/` separators.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column in Unicode code points.
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    /// The offending code (at most a few lines, whitespace kept).
    pub snippet: String,
    /// What exactly was found here.
    pub message: String,
    /// Stable identity independent of line numbers: rule + path + normalized snippet.
    pub fingerprint: String,
}

/// Collapse all whitespace runs to one space, so a fingerprint survives re-indentation.
pub fn normalize_snippet(snippet: &str) -> String {
    snippet.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The fingerprint of a finding: a 64-bit FNV-1a hash (hex) of rule, path and
/// normalized snippet. Line numbers are deliberately left out so that a baseline
/// keeps matching when code above the finding moves.
pub fn fingerprint(rule: &str, path: &str, snippet: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [rule, "\0", path, "\0", &normalize_snippet(snippet)] {
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_whitespace_but_not_rule_or_path() {
        let a = fingerprint("unwrap", "a.rs", "x.unwrap()");
        assert_eq!(a, fingerprint("unwrap", "a.rs", "  x.unwrap()\n"));
        assert_ne!(a, fingerprint("panic", "a.rs", "x.unwrap()"));
        assert_ne!(a, fingerprint("unwrap", "b.rs", "x.unwrap()"));
    }
}

//! Per-rule fixtures: every `expect:` annotation in `tests/fixtures/<lang>/positive` must be
//! found (rule id and line), nothing else may be found there, and the near-miss fixtures in
//! `tests/fixtures/<lang>/negative` must produce no finding at all.
//!
//! Annotation syntax: `// expect: rule-a rule-b` (or `# expect:` in Python) names the
//! findings that start on that line; `expect-next:` names those on the next line (for
//! handlers where a comment inside the handler would change its meaning).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ftvm_audit::catalog::RULES;
use ftvm_audit::lang::Lang;
use ftvm_audit::scan::{check_source, FileOutcome, Parsers, ScanOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if Lang::from_path(&p).is_some() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn expectations(src: &str) -> BTreeSet<(usize, String)> {
    let mut out = BTreeSet::new();
    for (i, line) in src.lines().enumerate() {
        let (target, rest) = if let Some(p) = line.find("expect-next:") {
            (i + 2, &line[p + "expect-next:".len()..])
        } else if let Some(p) = line.find("expect:") {
            (i + 1, &line[p + "expect:".len()..])
        } else {
            continue;
        };
        for rule in rest.split_whitespace() {
            out.insert((target, rule.to_string()));
        }
    }
    out
}

/// Findings as (line, rule), auditing `path` under its fixture-relative name.
fn audit(path: &Path) -> BTreeSet<(usize, String)> {
    let rel = path
        .strip_prefix(fixtures())
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/");
    let src = std::fs::read_to_string(path).unwrap();
    let lang = Lang::from_path(path).unwrap();
    let mut parsers = Parsers::default();
    match check_source(&src, lang, &rel, &ScanOptions::default(), &mut parsers).unwrap() {
        FileOutcome::Checked {
            findings,
            syntax_errors,
            ..
        } => {
            assert!(!syntax_errors, "{rel}: fixture has syntax errors");
            // Pairs dropped earlier for low precision are reported in the low tier; the
            // fixtures pin down the others (cli.rs checks that dropped pairs still fire).
            findings
                .into_iter()
                .filter(|f| ftvm_audit::catalog::dropped(f.rule, lang).is_none())
                .map(|f| (f.line, f.rule.to_string()))
                .collect()
        }
        FileOutcome::IgnoredTest(_) | FileOutcome::IgnoredGenerated(_) => BTreeSet::new(),
        FileOutcome::Skipped(why) => panic!("{rel} skipped: {why}"),
    }
}

fn check_lang(lang: &str) {
    let base = fixtures().join(lang);
    let mut failures = Vec::new();
    for f in files_under(&base.join("positive")) {
        let want = expectations(&std::fs::read_to_string(&f).unwrap());
        let got = audit(&f);
        assert!(!want.is_empty(), "{} has no expectations", f.display());
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        if !missing.is_empty() || !extra.is_empty() {
            failures.push(format!(
                "{}:\n  missing {:?}\n  unexpected {:?}",
                f.display(),
                missing,
                extra
            ));
        }
    }
    for f in files_under(&base.join("negative")) {
        let got = audit(&f);
        if !got.is_empty() {
            failures.push(format!(
                "{} (near misses) produced findings: {:?}",
                f.display(),
                got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn c_fixtures() {
    check_lang("c");
}

#[test]
fn cpp_fixtures() {
    check_lang("cpp");
}

#[test]
fn rust_fixtures() {
    check_lang("rust");
}

#[test]
fn go_fixtures() {
    check_lang("go");
}

#[test]
fn python_fixtures() {
    check_lang("python");
}

#[test]
fn java_fixtures() {
    check_lang("java");
}

/// Every rule has at least one positive fixture, and every expected rule id exists.
#[test]
fn every_rule_has_a_positive_fixture() {
    let mut seen = BTreeSet::new();
    for f in files_under(&fixtures()) {
        if f.to_string_lossy().contains("/positive/") {
            for (_, rule) in expectations(&std::fs::read_to_string(&f).unwrap()) {
                assert!(
                    RULES.iter().any(|r| r.id == rule),
                    "{}: unknown rule {rule}",
                    f.display()
                );
                seen.insert(rule);
            }
        }
    }
    let missing: Vec<_> = RULES
        .iter()
        .filter(|r| !seen.contains(r.id))
        .map(|r| r.id)
        .collect();
    assert!(
        missing.is_empty(),
        "rules without positive fixtures: {missing:?}"
    );
}

//! End-to-end tests of the `ftvm-audit` binary: output formats, exit codes, config,
//! baseline, and bad input files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftvm-audit"))
}

/// Run with every confidence tier shown (`--all`): most tests are about what the rules
/// find; `default_report_shows_the_high_tier_only` tests the tier filter itself.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    bin()
        .current_dir(dir)
        .arg("--all")
        .args(args)
        .output()
        .unwrap()
}

/// Run without `--all`.
fn run_default(dir: &Path, args: &[&str]) -> Output {
    bin().current_dir(dir).args(args).output().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

const PY: &str = "import os\nimport requests\n\n\ndef fetch(u):\n    r = requests.get(u)\n    return r.text\n\n\ndef run(c):\n    os.system(c)\n";

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/app.py"), PY).unwrap();
    std::fs::write(
        dir.path().join("src/lib.rs"),
        "pub fn f(p: &str) -> String {\n    std::fs::read_to_string(p).unwrap()\n}\n",
    )
    .unwrap();
    dir
}

fn rules_lines(v: &Value) -> Vec<(String, String, u64)> {
    findings(v)
        .map(|f| {
            (
                field(f, "rule"),
                field(f, "path"),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// (rule, tier) of every finding of a JSON report.
fn rule_tiers(v: &Value) -> Vec<(String, String)> {
    findings(v)
        .map(|f| (field(f, "rule"), field(f, "tier")))
        .collect()
}

fn findings(v: &Value) -> impl Iterator<Item = &Value> {
    v["findings"].as_array().unwrap().iter()
}

fn field(f: &Value, name: &str) -> String {
    f[name].as_str().unwrap().to_string()
}

#[test]
fn json_report_has_findings_with_location_snippet_why_and_fix() {
    let dir = project();
    let out = run_in(dir.path(), &["--format", "json", "."]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "findings reach the default --fail-on 1"
    );
    let v = json(&out);
    assert_eq!(v["tool"], "ftvm-audit");
    let got = rules_lines(&v);
    assert_eq!(
        got,
        vec![
            ("request-without-timeout".into(), "src/app.py".into(), 6),
            ("ignored-result".into(), "src/app.py".into(), 11),
            ("unwrap".into(), "src/lib.rs".into(), 2),
        ]
    );
    let f = &v["findings"][2];
    assert_eq!(f["column"], 5);
    assert_eq!(f["snippet"], "std::fs::read_to_string(p).unwrap()");
    assert_eq!(f["category"], "crash-prone");
    assert_eq!(f["severity"], "warning");
    assert!(f["why"].as_str().unwrap().contains("panic"));
    assert!(f["fix"].as_str().unwrap().contains('?'));
    assert_eq!(f["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(v["stats"]["files_scanned"], 2);
    assert_eq!(v["summary"]["total"], 3);
    assert_eq!(v["summary"]["by_category"]["error handling"], 1);
    assert_eq!(v["summary"]["by_category"]["waiting"], 1);
}

#[test]
fn sarif_report_is_sarif_2_1_0() {
    let dir = project();
    let out = run_in(dir.path(), &["--format", "sarif", "src"]);
    let v = json(&out);
    assert_eq!(v["version"], "2.1.0");
    assert!(v["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &v["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), ftvm_audit::catalog::RULES.len());
    for r in rules {
        assert!(
            r["id"].is_string()
                && r["shortDescription"]["text"].is_string()
                && r["help"]["text"].is_string()
        );
        assert!(matches!(
            r["defaultConfiguration"]["level"].as_str().unwrap(),
            "note" | "warning" | "error"
        ));
    }
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for res in results {
        let idx = res["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(
            rules[idx]["id"], res["ruleId"],
            "ruleIndex points at the rule"
        );
        let loc = &res["locations"][0]["physicalLocation"];
        assert!(loc["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("src/"));
        assert_eq!(loc["artifactLocation"]["uriBaseId"], "%SRCROOT%");
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(loc["region"]["startColumn"].as_u64().unwrap() >= 1);
        assert!(loc["region"]["snippet"]["text"].is_string());
        assert!(res["message"]["text"].as_str().unwrap().contains("Fix:"));
        assert!(res["partialFingerprints"]["ftvmAudit/v1"].is_string());
    }
    assert_eq!(run["columnKind"], "unicodeCodePoints");
}

#[test]
fn text_report_groups_by_category() {
    let dir = project();
    let out = run_in(dir.path(), &["."]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("== error handling (1)"), "{text}");
    assert!(text.contains("== waiting (1)"), "{text}");
    assert!(text.contains("== crash-prone (1)"), "{text}");
    assert!(
        text.contains("src/lib.rs:2:5: warning[unwrap, low confidence]"),
        "{text}"
    );
    assert!(
        text.contains("    | std::fs::read_to_string(p).unwrap()"),
        "{text}"
    );
    assert!(
        text.contains("    why: ") && text.contains("    fix: "),
        "{text}"
    );
}

#[test]
fn fail_on_sets_the_exit_code() {
    let dir = project();
    assert_eq!(
        run_in(dir.path(), &["--fail-on", "3", "."]).status.code(),
        Some(1)
    );
    assert_eq!(
        run_in(dir.path(), &["--fail-on", "4", "."]).status.code(),
        Some(0)
    );
    assert_eq!(
        run_in(dir.path(), &["--fail-on", "0", "."]).status.code(),
        Some(0)
    );
    // Only errors count with --min-severity error: none here.
    assert_eq!(
        run_in(dir.path(), &["--min-severity", "error", "."])
            .status
            .code(),
        Some(0)
    );
    // Missing path is an error (exit 2), not a crash.
    let out = run_in(dir.path(), &["does-not-exist"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist"));
}

#[test]
fn config_disables_overrides_and_excludes() {
    let dir = project();
    std::fs::create_dir_all(dir.path().join("vendor")).unwrap();
    std::fs::write(dir.path().join("vendor/dep.py"), PY).unwrap();
    std::fs::write(
        dir.path().join("audit.toml"),
        "[rules]\ndisable = [\"ignored-result\"]\nseverity = { unwrap = \"error\" }\n[paths]\nexclude = [\"vendor/**\"]\n",
    )
    .unwrap();
    let v = json(&run_in(
        dir.path(),
        &["--format", "json", "--config", "audit.toml", "."],
    ));
    let got = rules_lines(&v);
    assert_eq!(
        got,
        vec![
            ("request-without-timeout".into(), "src/app.py".into(), 6),
            ("unwrap".into(), "src/lib.rs".into(), 2)
        ]
    );
    assert_eq!(v["findings"][1]["severity"], "error");

    std::fs::write(
        dir.path().join("bad.toml"),
        "[rules]\ndisable = [\"no-such-rule\"]\n",
    )
    .unwrap();
    let out = run_in(dir.path(), &["--config", "bad.toml", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-rule"));
}

#[test]
fn baseline_suppresses_known_findings_even_when_lines_move() {
    let dir = project();
    let out = run_in(
        dir.path(),
        &["--write-baseline", "baseline.json", "--format", "json", "."],
    );
    assert_eq!(out.status.code(), Some(1));
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("baseline.json")).unwrap())
            .unwrap();
    assert_eq!(base["entries"].as_array().unwrap().len(), 3);

    let out = run_in(
        dir.path(),
        &["--baseline", "baseline.json", "--format", "json", "."],
    );
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    assert_eq!(v["suppressed_by_baseline"], 3);

    // Move the old findings down and add a new one: only the new one is reported.
    let moved = format!("\n\n\n{PY}\n\ndef stop():\n    os.abort()\n");
    std::fs::write(dir.path().join("src/app.py"), moved).unwrap();
    let v = json(&run_in(
        dir.path(),
        &["--baseline", "baseline.json", "--format", "json", "."],
    ));
    assert_eq!(
        rules_lines(&v),
        vec![("panic".into(), "src/app.py".into(), 18)]
    );

    std::fs::write(dir.path().join("broken.json"), "{not json").unwrap();
    let out = run_in(dir.path(), &["--baseline", "broken.json", "."]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_files_are_reported_and_skipped_never_a_crash() {
    let dir = project();
    let p = dir.path();
    std::fs::write(p.join("src/blob.c"), b"int x;\0\0\x01\x02binary").unwrap();
    std::fs::write(p.join("src/latin1.py"), b"# caf\xe9\nx = 1\n").unwrap();
    std::fs::write(
        p.join("src/Garbage.java"),
        "}}}} ((( this is not java at all ;;; {{{{ \"\n<<<>>> @@@ ###\n",
    )
    .unwrap();
    std::fs::write(p.join("src/empty.go"), "").unwrap();
    let out = run_in(p, &["--format", "json", "--fail-on", "0", "."]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let skipped: Vec<(String, String)> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |path: &str| {
        skipped
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(reason("src/blob.c").contains("binary"), "{skipped:?}");
    assert!(reason("src/latin1.py").contains("UTF-8"), "{skipped:?}");
    // A file that does not parse is analysed for what did parse, and counted.
    assert_eq!(reason("src/Garbage.java"), "", "{skipped:?}");
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_eq!(v["stats"]["files_with_syntax_errors"], 1);
    // The good files are still audited.
    assert_eq!(rules_lines(&v).len(), 3);
    assert_eq!(v["stats"]["files_scanned"], 4);
}

#[test]
fn unreadable_files_are_skipped() {
    use ftvm_audit::lang::Lang;
    use ftvm_audit::scan::{check_file, FileOutcome, Parsers, ScanOptions};
    use ftvm_audit::walk::SourceFile;
    let dir = tempfile::tempdir().unwrap();
    // A file that vanished between the walk and the read.
    let gone = SourceFile::new(dir.path().join("gone.c"), "gone.c".into(), Lang::C);
    match check_file(&gone, &ScanOptions::default(), &mut Parsers::default()).unwrap() {
        FileOutcome::Skipped(r) => assert!(r.contains("cannot read"), "{r}"),
        other => panic!("expected skip, got {other:?}"),
    }
    // A directory where a file was expected.
    let d = dir.path().join("dir.rs");
    std::fs::create_dir(&d).unwrap();
    let as_file = SourceFile::new(d, "dir.rs".into(), Lang::Rust);
    match check_file(&as_file, &ScanOptions::default(), &mut Parsers::default()).unwrap() {
        FileOutcome::Skipped(r) => assert!(r.contains("cannot read"), "{r}"),
        other => panic!("expected skip, got {other:?}"),
    }
}

#[test]
fn gitignored_and_test_files_are_not_audited() {
    let dir = project();
    let p = dir.path();
    std::fs::write(p.join(".gitignore"), "generated/\n").unwrap();
    std::fs::create_dir_all(p.join("generated")).unwrap();
    std::fs::write(p.join("generated/x.py"), PY).unwrap();
    std::fs::write(p.join("src/test_app.py"), PY).unwrap();
    let v = json(&run_in(p, &["--format", "json", "."]));
    assert_eq!(rules_lines(&v).len(), 3);
    assert_eq!(v["stats"]["test_files_ignored"], 1);
    let v = json(&run_in(p, &["--format", "json", "--include-tests", "."]));
    assert_eq!(rules_lines(&v).len(), 5);
}

#[test]
fn library_run_writes_output_file() {
    let dir = project();
    let out = dir.path().join("report.sarif");
    let args = ftvm_audit::cli::AuditArgs {
        paths: vec![dir.path().join("src")],
        format: ftvm_audit::report::Format::Sarif,
        fail_on: 1,
        min_severity: ftvm_audit::catalog::Severity::Note,
        config: None,
        baseline: None,
        write_baseline: None,
        include_tests: false,
        output: Some(out.clone()),
        jobs: Some(1),
        bench: None,
        explain_skips: false,
        all: true,
        tier: None,
        fix: None,
        fix_to: None,
    };
    assert_eq!(ftvm_audit::cli::run(&args).unwrap(), 1);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    assert_eq!(v["runs"][0]["results"].as_array().unwrap().len(), 3);
}

#[test]
fn bench_mode_prints_a_table_and_writes_json() {
    let dir = project();
    let out = run_in(dir.path(), &["--bench", "bench/audit.json", "src"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("lines/s/core") && table.contains("all, 1 core"),
        "{table}"
    );
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("bench/audit.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(v["files"], 2);
    assert_eq!(v["lines"], 14);
    assert!(v["lines_per_second_per_core"].as_f64().unwrap() > 0.0);
    let langs: Vec<&str> = v["by_language"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lang"].as_str().unwrap())
        .collect();
    assert_eq!(langs, vec!["rust", "python"]);
}

#[test]
fn args_work_as_an_ftvm_subcommand() {
    use clap::{CommandFactory, Parser, Subcommand};
    #[derive(Parser, Debug)]
    #[command(name = "ftvm")]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(Subcommand, Debug)]
    enum Cmd {
        Audit(ftvm_audit::cli::AuditArgs),
    }
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "ftvm",
        "audit",
        "--format",
        "sarif",
        "--fail-on",
        "3",
        "src",
        "lib",
    ])
    .unwrap();
    let Cmd::Audit(args) = cli.cmd;
    assert_eq!(args.format, ftvm_audit::report::Format::Sarif);
    assert_eq!(args.fail_on, 3);
    assert_eq!(args.paths.len(), 2);
    assert!(Cli::try_parse_from(["ftvm", "audit", "--format", "xml"]).is_err());
}

#[test]
fn test_code_is_judged_below_the_audit_root_not_above_it() {
    // The project lives under directories named like test code; that must not matter.
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("tests/fixtures/proj");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/app.py"), PY).unwrap();
    let out = run_in(
        top.path(),
        &["--format", "json", "--fail-on", "0", root.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json(&out);
    assert_eq!(v["stats"]["files_scanned"], 1);
    assert_eq!(rules_lines(&v).len(), 2, "{v}");
    // Relative root given from inside a `tests` directory: same.
    let v = json(&run_in(
        &top.path().join("tests"),
        &["--format", "json", "fixtures/proj"],
    ));
    assert_eq!(v["stats"]["files_scanned"], 1);
    // A `tests` directory *below* the root is still test code.
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(root.join("tests/helper.py"), PY).unwrap();
    let v = json(&run_in(&root, &["--format", "json", "."]));
    assert_eq!(v["stats"]["files_scanned"], 1);
    assert_eq!(v["stats"]["test_files_ignored"], 1);
}

#[test]
fn files_named_on_the_command_line_are_always_audited() {
    let dir = project();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tests")).unwrap();
    std::fs::write(p.join("tests/test_x.py"), PY).unwrap();
    std::fs::write(p.join("gen_pb2.py"), PY).unwrap();
    let v = json(&run_in(
        p,
        &["--format", "json", "tests/test_x.py", "gen_pb2.py"],
    ));
    assert_eq!(v["stats"]["files_scanned"], 2, "{v}");
    let paths: Vec<String> = rules_lines(&v).into_iter().map(|r| r.1).collect();
    assert!(paths.contains(&"tests/test_x.py".to_string()), "{paths:?}");
    assert!(paths.contains(&"gen_pb2.py".to_string()), "{paths:?}");
    // The same file named and found under a named directory is audited once.
    let v = json(&run_in(p, &["--format", "json", "tests/test_x.py", "."]));
    let n = rules_lines(&v)
        .iter()
        .filter(|r| r.1 == "tests/test_x.py")
        .count();
    assert_eq!(n, 2, "{v}");
}

#[test]
fn nothing_audited_warns_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["--format", "json", "."]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no file was audited"), "{err}");
    // Everything left out as test code: same, and the report still comes out.
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("tests/a.py"), PY).unwrap();
    let out = run_in(dir.path(), &["--format", "json", "--fail-on", "0", "."]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["stats"]["test_files_ignored"], 1);
    // One audited file, even a clean one: 0.
    std::fs::write(dir.path().join("ok.py"), "x = 1\n").unwrap();
    let out = run_in(dir.path(), &["--format", "json", "."]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[cfg(unix)]
#[test]
fn symlinks_in_a_tree_are_listed_as_skipped() {
    let dir = project();
    let p = dir.path();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("far.py"), PY).unwrap();
    std::os::unix::fs::symlink(outside.path().join("far.py"), p.join("src/link.py")).unwrap();
    std::os::unix::fs::symlink(outside.path(), p.join("linkdir")).unwrap();
    let v = json(&run_in(p, &["--format", "json", "."]));
    let skipped: Vec<(String, String)> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in ["src/link.py", "linkdir"] {
        let hit = skipped.iter().find(|(path, _)| path == name);
        let (_, reason) = hit.unwrap_or_else(|| panic!("{name} not listed: {skipped:?}"));
        assert!(reason.contains("symbolic link"), "{reason}");
    }
    // Not followed: the target's findings are not reported.
    assert!(rules_lines(&v).iter().all(|r| !r.1.contains("link")));
}

#[test]
fn explain_skips_names_the_rule_that_left_each_file_out() {
    let dir = project();
    let p = dir.path();
    std::fs::write(p.join("src/test_app.py"), PY).unwrap();
    std::fs::write(p.join("src/x_pb2.py"), PY).unwrap();
    // Build metadata: a Cargo example target outside examples/, a Maven benchmark module.
    std::fs::write(
        p.join("Cargo.toml"),
        "[package]\nname = \"x\"\nversion = \"0.1.0\"\n\n[[example]]\nname = \"demo\"\npath = \"src/show.rs\"\n",
    )
    .unwrap();
    std::fs::write(
        p.join("src/show.rs"),
        "fn main() {\n    std::fs::read(\"x\").unwrap();\n}\n",
    )
    .unwrap();
    // The package's build script runs at compile time, not in the program.
    std::fs::write(
        p.join("build.rs"),
        "fn main() {\n    std::fs::write(\"out.rs\", \"\").unwrap();\n}\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("perfmod/src/main/java/a")).unwrap();
    std::fs::write(
        p.join("perfmod/pom.xml"),
        "<project><parent><artifactId>x</artifactId></parent><artifactId>x-microbenchmarks</artifactId></project>",
    )
    .unwrap();
    std::fs::write(
        p.join("perfmod/src/main/java/a/B.java"),
        "class B { void f(java.io.File f) { f.delete(); } }\n",
    )
    .unwrap();
    let v = json(&run_in(p, &["--format", "json", "--explain-skips", "."]));
    let left: Vec<(String, String)> = v["left_out"]
        .as_array()
        .unwrap_or_else(|| panic!("no left_out: {v}"))
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |path: &str| {
        left.iter()
            .find(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{path} not explained: {left:?}"))
    };
    assert!(reason("src/test_app.py").contains("naming convention"));
    assert!(reason("src/x_pb2.py").starts_with("generated"));
    assert!(reason("src/show.rs").contains("[[example]]"));
    assert!(reason("build.rs").contains("build script"));
    assert!(reason("perfmod/src/main/java/a/B.java").contains("Maven module"));
    // Without the flag the list is not printed, and the text format has the section.
    let v = json(&run_in(p, &["--format", "json", "."]));
    assert!(v.get("left_out").is_none());
    let out = run_in(p, &["--explain-skips", "."]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("== left out on purpose (5)"), "{text}");
}

#[test]
fn c_macro_idioms_parse_and_coverage_is_reported_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/c/positive/macros.c");
    std::fs::copy(&fixture, p.join("macros.c")).unwrap();
    let v = json(&run_in(p, &["--format", "json", "."]));
    assert_eq!(v["stats"]["files_scanned"], 1);
    assert_eq!(v["stats"]["files_with_syntax_errors"], 0, "{v}");
    assert_eq!(v["stats"]["syntax_error_bytes"], 0);
    assert_eq!(v["stats"]["functions_analysed"], 1, "{v}");
    let found = rules_lines(&v);
    // `fsync(it->fd);` is both an ignored result and a dropped fsync error.
    assert_eq!(found.len(), 3, "{found:?}");
    // Snippets come from the original text, not the neutralized one.
    let snippets: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["snippet"].as_str().unwrap())
        .collect();
    assert!(
        snippets
            .iter()
            .any(|s| s.contains("PTR_CAST(const char, buf)")),
        "{snippets:?}"
    );
    let sarif: Value =
        serde_json::from_slice(&run_in(p, &["--format", "sarif", "."]).stdout).unwrap();
    let props = &sarif["runs"][0]["invocations"][0]["properties"];
    assert_eq!(props["functionsAnalysed"], 1, "{props}");
    assert_eq!(props["filesAnalysed"], 1);
    let text = String::from_utf8(run_in(p, &["."]).stdout).unwrap();
    assert!(
        text.contains("1 files, 26 lines, 1 functions analysed"),
        "{text}"
    );
}

#[test]
fn project_loop_macros_come_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let src = "#include <unistd.h>\nvoid f(struct tree *t, int fd) {\n    struct node *n;\n    RB_WALK(n, t) {\n        fsync(fd);\n    }\n}\n";
    std::fs::write(p.join("w.c"), src).unwrap();
    let v = json(&run_in(p, &["--format", "json", "w.c"]));
    assert_eq!(v["stats"]["files_with_syntax_errors"], 1, "{v}");
    std::fs::write(p.join("audit.toml"), "[c]\nloop_macros = [\"RB_WALK\"]\n").unwrap();
    let v = json(&run_in(
        p,
        &["--format", "json", "--config", "audit.toml", "w.c"],
    ));
    assert_eq!(v["stats"]["files_with_syntax_errors"], 0, "{v}");
    assert_eq!(
        rules_lines(&v),
        vec![
            ("dropped-file-error".to_string(), "w.c".to_string(), 5),
            ("ignored-result".to_string(), "w.c".to_string(), 5)
        ]
    );
}

#[test]
fn files_mostly_made_of_syntax_errors_are_analysed_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // More than half of this file is not C, yet the function that parses is checked.
    let junk = "    @@@ $$$ %%% ^^^ ``` @@@ $$$ %%% ^^^ ```;\n".repeat(20);
    let src = format!(
        "#include <unistd.h>\nvoid g(void) {{\n{junk}}}\nvoid f(int fd) {{\n    fsync(fd);\n}}\n"
    );
    std::fs::write(p.join("j.c"), &src).unwrap();
    let v = json(&run_in(p, &["--format", "json", "."]));
    assert_eq!(v["stats"]["files_scanned"], 1, "{v}");
    assert_eq!(v["stats"]["files_with_syntax_errors"], 1);
    assert!(v["stats"]["syntax_error_bytes"].as_u64().unwrap() > 400);
    assert_eq!(
        rules_lines(&v),
        vec![
            ("dropped-file-error".to_string(), "j.c".to_string(), 25),
            ("ignored-result".to_string(), "j.c".to_string(), 25)
        ]
    );
}

#[test]
fn default_report_shows_the_high_tier_only() {
    let dir = project();
    let p = dir.path();
    // app.py: requests.get without timeout (Python request-without-timeout, split from no-timeout
    // in the thirty-first round; its tier follows from the careful labels) and os.system
    // unchecked (Python ignored-result: low); lib.rs: unwrap (Rust: low);
    // A.java: an empty catch of an IOException (Java empty-handler: low) and an InterruptedException
    // that is only logged (Java lost-interrupt: medium since the sixteenth measurement);
    // state.py: write then rename without fsync (Python rename-without-fsync: medium, 31/74,
    // since renames of data the function did not write are no longer reported).
    std::fs::write(
        p.join("src/A.java"),
        "class A {\n    void f(java.io.File f) {\n        try {\n            f.createNewFile();\n        } catch (java.io.IOException e) {\n        }\n    }\n\n    void g(Thread t) {\n        try {\n            t.join();\n        } catch (InterruptedException e) {\n            System.err.println(\"interrupted\");\n        }\n    }\n}\n",
    )
    .unwrap();
    std::fs::write(
        p.join("src/state.py"),
        "import os\n\n\ndef save(p, data):\n    with open(p + '.tmp', 'w') as f:\n        f.write(data)\n    os.rename(p + '.tmp', p)\n",
    )
    .unwrap();
    // Every tier: six findings; lost-interrupt and request-without-timeout are at least medium.
    let all = json(&run_default(p, &["--format", "json", "--all", "."]));
    let every = rule_tiers(&all);
    assert_eq!(every.len(), 6, "{every:?}");
    assert_eq!(all["stats"]["hidden_by_tier"], 0);
    let at_least = |ts: &[&str]| -> Vec<(String, String)> {
        every
            .iter()
            .filter(|(_, t)| ts.contains(&t.as_str()))
            .cloned()
            .collect()
    };
    let high = at_least(&["high"]);
    let high_medium = at_least(&["high", "medium"]);
    for rule in ["lost-interrupt", "request-without-timeout"] {
        assert!(high_medium.iter().any(|(r, _)| r == rule), "{every:?}");
    }
    // The default shows exactly the high-tier findings (whatever the careful labels make high)
    // and says how many lower-tier ones it hid.
    let v = json(&run_default(p, &["--format", "json", "."]));
    assert_eq!(rule_tiers(&v), high);
    assert_eq!(v["stats"]["hidden_by_tier"], 6 - high.len());
    let v = json(&run_default(
        p,
        &["--format", "json", "--tier", "medium", "."],
    ));
    assert_eq!(rule_tiers(&v), high_medium);
    // Text and SARIF carry the tier.
    let text = String::from_utf8(run_default(p, &["."]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "{} lower-tier findings hidden, --all shows them",
            6 - high.len()
        )),
        "{text}"
    );
    let text = String::from_utf8(run_default(p, &["--tier", "medium", "."]).stdout).unwrap();
    let li_tier = &high_medium
        .iter()
        .find(|(r, _)| r == "lost-interrupt")
        .unwrap()
        .1;
    assert!(
        text.contains(&format!("[lost-interrupt, {li_tier} confidence]")),
        "{text}"
    );
    let sarif: Value =
        serde_json::from_slice(&run_default(p, &["--format", "sarif", "--all", "."]).stdout)
            .unwrap();
    let precisions: Vec<&str> = sarif["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["properties"]["precision"].as_str().unwrap())
        .collect();
    assert!(
        precisions.contains(&"medium") && precisions.contains(&"low"),
        "{precisions:?}"
    );
    // A pair that was dropped for low precision is reported in the low tier, not lost.
    std::fs::write(
        p.join("src/drop.go"),
        "package x\n\nimport \"os\"\n\nfunc f() {\n\t_ = os.Chdir(os.Getenv(\"D\"))\n}\n",
    )
    .unwrap();
    let v = json(&run_default(
        p,
        &["--format", "json", "--all", "src/drop.go"],
    ));
    let f = &v["findings"][0];
    assert_eq!(
        (f["rule"].as_str(), f["tier"].as_str()),
        (Some("ignored-result"), Some("low")),
        "{v}"
    );
    let v = json(&run_default(p, &["--format", "json", "src/drop.go"]));
    assert_eq!(rules_lines(&v).len(), 0);
    // Java `no-timeout` (dropped, low tier): an `HttpURLConnection` without timeouts is
    // reported; one with a read timeout, and a `jar:` resource connection, are not.
    std::fs::write(
        p.join("src/Up.java"),
        "class Up {\n  void up(java.net.URL u) throws Exception {\n    java.net.HttpURLConnection c = (java.net.HttpURLConnection) u.openConnection();\n    c.connect();\n  }\n  void timed(java.net.URL u) throws Exception {\n    java.net.HttpURLConnection c = (java.net.HttpURLConnection) u.openConnection();\n    c.setReadTimeout(5000);\n  }\n  void jar(java.net.URL u) throws Exception {\n    u.openConnection().getInputStream();\n  }\n}\n",
    )
    .unwrap();
    let v = json(&run_default(
        p,
        &["--format", "json", "--all", "src/Up.java"],
    ));
    let lines: Vec<(String, u64)> = rules_lines(&v)
        .into_iter()
        .filter(|r| r.0 == "no-timeout")
        .map(|r| (r.0, r.2))
        .collect();
    assert_eq!(lines, [("no-timeout".to_string(), 3)], "{v}");
}

#[test]
fn contrib_stress_and_bench_trees_are_left_out_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let unwrap_fn = "pub fn f(p: &str) -> std::io::Result<String> {\n    Ok(std::fs::read_to_string(p).unwrap())\n}\n";
    for d in [
        "src",
        "contrib/gui",
        "stress/src",
        "crates/store-bench/src",
        "zookeeper-contrib/rest",
    ] {
        std::fs::create_dir_all(p.join(d)).unwrap();
        std::fs::write(p.join(d).join("lib.rs"), unwrap_fn).unwrap();
    }
    let v = json(&run_in(p, &["--format", "json", "--explain-skips", "."]));
    let paths: Vec<String> = rules_lines(&v).into_iter().map(|r| r.1).collect();
    assert_eq!(paths, ["src/lib.rs"], "{v}");
    let left_out = v["left_out"].to_string();
    for d in ["contrib/", "stress/", "store-bench/", "zookeeper-contrib/"] {
        assert!(left_out.contains(d), "{d} not explained: {left_out}");
    }
    // A project that ships contrib/ as production says so in its config.
    std::fs::write(
        p.join("audit.toml"),
        "[paths]\nproduction = [\"contrib\"]\n",
    )
    .unwrap();
    let v = json(&run_in(
        p,
        &["--format", "json", "--config", "audit.toml", "."],
    ));
    let mut paths: Vec<String> = rules_lines(&v).into_iter().map(|r| r.1).collect();
    paths.sort();
    assert_eq!(paths, ["contrib/gui/lib.rs", "src/lib.rs"], "{v}");
}

/// A Java class whose interrupt handler only logs (a `lost-interrupt`), after `imports`.
fn java_waiter(imports: &str) -> String {
    format!(
        "package p;\n\n{imports}import java.util.concurrent.CountDownLatch;\n\npublic class W {{\n    private static final org.slf4j.Logger LOG = null;\n    void waitFor(CountDownLatch l) {{\n        try {{\n            l.await();\n        }} catch (InterruptedException e) {{\n            LOG.warn(\"interrupted\", e);\n        }}\n    }}\n}}\n"
    )
}

#[test]
fn experimental_sample_and_desktop_gui_java_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let files = [
        ("server/src/p/W.java", java_waiter("")),
        // java.awt.image is server-side imaging, not a GUI: still production.
        (
            "render/src/p/W.java",
            java_waiter("import java.awt.image.BufferedImage;\n"),
        ),
        ("source/experimental/jam/p/W.java", java_waiter("")),
        ("okhttp/samples/crawler/p/W.java", java_waiter("")),
        (
            "installer/src/p/W.java",
            java_waiter("import javax.swing.JTable;\n"),
        ),
        (
            "monitor/src/p/W.java",
            java_waiter("import java.awt.event.ActionListener;\n"),
        ),
    ];
    for (path, text) in &files {
        std::fs::create_dir_all(p.join(path).parent().unwrap()).unwrap();
        std::fs::write(p.join(path), text).unwrap();
    }
    let v = json(&run_in(p, &["--format", "json", "--explain-skips", "."]));
    let mut hits: Vec<(String, String)> = rules_lines(&v).into_iter().map(|r| (r.0, r.1)).collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            (
                "lost-interrupt".to_string(),
                "render/src/p/W.java".to_string()
            ),
            (
                "lost-interrupt".to_string(),
                "server/src/p/W.java".to_string()
            ),
        ],
        "{v}"
    );
    let left_out = v["left_out"].to_string();
    for why in ["experimental/", "samples/", "javax.swing", "java.awt.event"] {
        assert!(left_out.contains(why), "{why} not explained: {left_out}");
    }
    // Named on the command line, a GUI file is audited like any other.
    let v = json(&run_in(p, &["--format", "json", "installer/src/p/W.java"]));
    assert_eq!(rules_lines(&v).len(), 1, "{v}");
}

#[test]
fn one_finding_per_rule_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/lib.rs"),
        "pub fn f(p: &str) -> std::io::Result<String> {\n    Ok(std::path::Path::new(p).canonicalize().unwrap().to_str().unwrap().to_string())\n}\n",
    )
    .unwrap();
    let v = json(&run_in(p, &["--format", "json", "."]));
    assert_eq!(
        rules_lines(&v),
        [("unwrap".to_string(), "src/lib.rs".to_string(), 2)],
        "{v}"
    );
}

#[test]
fn go_transaction_commit_with_dropped_error_is_reported_at_low() {
    // Go `ignored-result` is a dropped pair: the fixture runs through the CLI with `--all`.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("store.go"),
        "package store\n\nimport \"database/sql\"\n\nfunc initTables(db *sql.DB) error {\n\ttx, err := db.Begin()\n\tif err != nil {\n\t\treturn err\n\t}\n\ttx.Commit()\n\treturn nil\n}\n\nfunc checked(db *sql.DB) error {\n\ttx, err := db.Begin()\n\tif err != nil {\n\t\treturn err\n\t}\n\treturn tx.Commit()\n}\n\nfunc (s *Store) memdb() {\n\ttx := s.db.Txn(true)\n\ttx.Commit()\n}\n",
    )
    .unwrap();
    let v = json(&run_default(p, &["--format", "json", "--all", "store.go"]));
    let got: Vec<(String, u64)> = rules_lines(&v).into_iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(got, [("ignored-result".to_string(), 10)], "{v}");
}

#[test]
fn write_helpers_in_other_files_are_resolved_per_project() {
    let top = tempfile::tempdir().unwrap();
    let helper = "def write_file(filename, content, omode=\"wb\"):\n    with open(filename, omode) as fh:\n        fh.write(content)\n        fh.flush()\n";
    let synced = "import os\n\n\ndef write_file(filename, content, omode=\"wb\"):\n    with open(filename, omode) as fh:\n        fh.write(content)\n        os.fsync(fh.fileno())\n";
    let caller = "from . import util\n\n\ndef reflect(paths, iid):\n    util.write_file(paths.state_file, iid)\n    util.write_file(paths.log_name, iid)\n";
    // Project a: the helper rewrites in place without fsync; the state path is reported at
    // the call site, the log path is not.
    std::fs::create_dir_all(top.path().join("a/pkg")).unwrap();
    std::fs::write(top.path().join("a/pkg/util.py"), helper).unwrap();
    std::fs::write(top.path().join("a/pkg/stages.py"), caller).unwrap();
    // Project b: same call, but its helper fsyncs.
    std::fs::create_dir_all(top.path().join("b/pkg")).unwrap();
    std::fs::write(top.path().join("b/pkg/util.py"), synced).unwrap();
    std::fs::write(top.path().join("b/pkg/stages.py"), caller).unwrap();
    // Project c: no helper of that name (another project's helper does not count).
    std::fs::create_dir_all(top.path().join("c/pkg")).unwrap();
    std::fs::write(top.path().join("c/pkg/stages.py"), caller).unwrap();
    // C: dhcpcd's `writefile(ctx, file, ...)` called on a lease file from another file.
    std::fs::create_dir_all(top.path().join("d/src")).unwrap();
    std::fs::write(
        top.path().join("d/src/common.c"),
        "#include <fcntl.h>\n#include <unistd.h>\nssize_t writefile(void *ctx, const char *file, const void *data, size_t len)\n{\n\tint fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);\n\tssize_t n = write(fd, data, len);\n\tclose(fd);\n\treturn n;\n}\n",
    )
    .unwrap();
    std::fs::write(
        top.path().join("d/src/lease.c"),
        "int write_lease(struct ctx *ctx, struct state *state)\n{\n\treturn writefile(ctx, state->leasefile, state->new, state->new_len) == -1 ? -1 : 0;\n}\n",
    )
    .unwrap();
    let v = json(&run_in(
        top.path(),
        &["--format", "json", "--fail-on", "0", "."],
    ));
    let mut found: Vec<(String, String, u64)> = rules_lines(&v)
        .into_iter()
        .filter(|(r, _, _)| r == "write-in-place")
        .collect();
    found.sort();
    // The call sites on a state path and the helpers they call; not project b (the helper
    // fsyncs), not project c (no helper of its own), not the log path.
    let want: Vec<(String, String, u64)> = [
        ("a/pkg/stages.py", 5),
        ("a/pkg/util.py", 2),
        ("d/src/common.c", 5),
        ("d/src/lease.c", 3),
    ]
    .iter()
    .map(|(p, l)| ("write-in-place".to_string(), p.to_string(), *l))
    .collect();
    assert_eq!(found, want, "{v}");
}

//! `--fix`: each mechanical refactoring is applied (as a diff with `patch`, and with
//! `--fix=apply`) and the result must parse (Rust: compile with rustc; Python: py_compile;
//! Go: parse without syntax errors) and no longer have the finding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ftvm_audit::lang::Lang;
use std::path::Path;
use std::process::{Command, Output};

fn audit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm-audit"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn findings(dir: &Path, file: &str) -> Vec<(String, u64)> {
    let out = audit(dir, &["--all", "--format", "json", "--fail-on", "0", file]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn parses(src: &str, lang: Lang) -> bool {
    let mut p = tree_sitter::Parser::new();
    p.set_language(&lang.grammar()).unwrap();
    !p.parse(src, None).unwrap().root_node().has_error()
}

/// Fix `file` in `dir` both ways; both must give the same text, which is returned.
fn fix_both_ways(dir: &Path, file: &str) -> (String, String) {
    let original = std::fs::read_to_string(dir.join(file)).unwrap();
    let out = audit(dir, &["--fix", file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let diff = String::from_utf8(out.stdout).unwrap();
    assert!(
        diff.starts_with(&format!("--- a/{file}\n+++ b/{file}\n")),
        "{diff}"
    );
    // --fix never edits files.
    assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), original);
    // The diff applies with patch(1)...
    let copy = tempfile::tempdir().unwrap();
    std::fs::write(copy.path().join(file), &original).unwrap();
    std::fs::write(copy.path().join("fix.diff"), &diff).unwrap();
    let p = Command::new("patch")
        .current_dir(copy.path())
        .args(["-p1", "-i", "fix.diff"])
        .output()
        .unwrap();
    assert!(p.status.success(), "patch failed: {p:?}\n{diff}");
    let patched = std::fs::read_to_string(copy.path().join(file)).unwrap();
    // ... and gives what --fix=apply writes; --fix-to writes the same diff.
    let out = audit(dir, &["--fix=apply", file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let applied = std::fs::read_to_string(dir.join(file)).unwrap();
    assert_eq!(patched, applied);
    std::fs::write(dir.join(file), &original).unwrap();
    audit(dir, &["--fix", "--fix-to", "out.diff", file]);
    assert_eq!(std::fs::read_to_string(dir.join("out.diff")).unwrap(), diff);
    std::fs::write(dir.join(file), &applied).unwrap();
    (diff, applied)
}

#[test]
fn rust_unwrap_in_a_result_fn_becomes_question_mark_and_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let src = "use std::io;\n\npub fn load(p: &str) -> io::Result<String> {\n    let s = std::fs::read_to_string(p).unwrap();\n    let n = std::fs::metadata(p).unwrap().len();\n    Ok(format!(\"{s}{n}\"))\n}\n\npub fn no_result(p: &str) -> String {\n    std::fs::read_to_string(p).unwrap()\n}\n";
    std::fs::write(dir.path().join("lib.rs"), src).unwrap();
    assert_eq!(findings(dir.path(), "lib.rs").len(), 3);
    let (diff, fixed) = fix_both_ways(dir.path(), "lib.rs");
    assert!(
        diff.contains("+    let s = std::fs::read_to_string(p)?;"),
        "{diff}"
    );
    assert!(
        diff.contains("+    let n = std::fs::metadata(p)?.len();"),
        "{diff}"
    );
    // The function without a Result keeps its unwrap (no mechanical fix).
    assert!(
        fixed.contains("    std::fs::read_to_string(p).unwrap()\n"),
        "{fixed}"
    );
    assert_eq!(
        findings(dir.path(), "lib.rs"),
        vec![("unwrap".to_string(), 10)]
    );
    let out = Command::new("rustc")
        .current_dir(dir.path())
        .args([
            "--crate-type",
            "lib",
            "--edition",
            "2021",
            "--emit",
            "metadata",
            "lib.rs",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{fixed}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn go_dropped_file_errors_become_checked_returns_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let src = "package store\n\nimport \"os\"\n\nfunc save(p string, b []byte) error {\n\tf, err := os.Create(p + \".tmp\")\n\tif err != nil {\n\t\treturn err\n\t}\n\tif _, err := f.Write(b); err != nil {\n\t\treturn err\n\t}\n\tf.Sync()\n\t_ = f.Close()\n\tos.Rename(p+\".tmp\", p)\n\treturn nil\n}\n";
    std::fs::write(dir.path().join("s.go"), src).unwrap();
    let before = findings(dir.path(), "s.go");
    let typed = before
        .iter()
        .filter(|f| f.0 == "dropped-file-error")
        .count();
    assert_eq!(typed, 3, "{before:?}");
    let (diff, fixed) = fix_both_ways(dir.path(), "s.go");
    assert!(
        diff.contains("+\tif err := f.Sync(); err != nil {\n+\t\treturn err\n+\t}\n"),
        "{diff}"
    );
    assert!(
        fixed.contains("\tif err := f.Close(); err != nil {"),
        "{fixed}"
    );
    assert!(
        fixed.contains("\tif err := os.Rename(p+\".tmp\", p); err != nil {"),
        "{fixed}"
    );
    assert!(parses(&fixed, Lang::Go), "{fixed}");
    assert_eq!(findings(dir.path(), "s.go"), vec![]);
}

#[test]
fn python_rename_gets_fsync_before_and_directory_fsync_after() {
    let dir = tempfile::tempdir().unwrap();
    let src = "import json\nimport os\n\n\ndef save(path, state):\n    with open(path + \".tmp\", \"w\") as f:\n        json.dump(state, f)\n    os.replace(path + \".tmp\", path)\n";
    std::fs::write(dir.path().join("s.py"), src).unwrap();
    assert_eq!(
        findings(dir.path(), "s.py"),
        vec![("rename-without-fsync".to_string(), 8)]
    );
    let (diff, fixed) = fix_both_ways(dir.path(), "s.py");
    assert!(
        diff.contains("+    _fd = os.open(path + \".tmp\", os.O_RDONLY)"),
        "{diff}"
    );
    assert!(
        diff.contains("+    _fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)"),
        "{diff}"
    );
    assert!(parses(&fixed, Lang::Python), "{fixed}");
    let out = Command::new("python3")
        .current_dir(dir.path())
        .args(["-m", "py_compile", "s.py"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(findings(dir.path(), "s.py"), vec![]);
    // And it runs: the state file is written and readable.
    let run = Command::new("python3")
        .current_dir(dir.path())
        .args(["-c", "import s; s.save('st.json', {'a': 1}); import json; print(json.load(open('st.json'))['a'])"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "1", "{run:?}");
}

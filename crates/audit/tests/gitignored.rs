//! `--explain-skips` names the ignore rule and file that hid a source directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;

fn left_out(dir: &Path, args: &[&str]) -> Vec<(String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftvm-audit"))
        .current_dir(dir)
        .args(["--all", "--format", "json", "--fail-on", "0"])
        .args(args)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["left_out"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["path"].as_str().unwrap().to_string(),
                        s["reason"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_name_pattern_for_a_binary_that_hides_a_source_directory_is_explained() {
    // heketi's `.gitignore` line `heketi` (the built binary) also hides its Python client
    // package, as git would.
    let top = tempfile::tempdir().unwrap();
    let p = top.path();
    std::fs::write(p.join(".gitignore"), "heketi\n!keep.py\n*.log\n").unwrap();
    std::fs::create_dir_all(p.join("client/api/python/heketi")).unwrap();
    std::fs::write(
        p.join("client/api/python/heketi/__init__.py"),
        "def f():\n    pass\n",
    )
    .unwrap();
    std::fs::write(p.join("main.py"), "def g():\n    pass\n").unwrap();
    let got = left_out(p, &["--explain-skips", "."]);
    let hidden: Vec<&(String, String)> = got
        .iter()
        .filter(|(_, r)| r.starts_with("ignore rule"))
        .collect();
    assert_eq!(hidden.len(), 1, "{got:?}");
    assert_eq!(hidden[0].0, "client/api/python/heketi");
    assert!(
        hidden[0].1.contains("`heketi`") && hidden[0].1.contains(".gitignore"),
        "{got:?}"
    );
    // Without the flag nothing is listed; naming the directory audits it.
    assert!(left_out(p, &["."]).is_empty());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftvm-audit"))
        .current_dir(p)
        .args(["--all", "--format", "json", "--fail-on", "0"])
        .arg("client/api/python/heketi")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stats"]["files_scanned"], 1, "{v}");
}

#[test]
fn a_re_included_source_directory_is_not_listed() {
    let top = tempfile::tempdir().unwrap();
    let p = top.path();
    std::fs::write(p.join(".gitignore"), "build\n").unwrap();
    std::fs::create_dir_all(p.join("src/build")).unwrap();
    std::fs::write(p.join("src/.gitignore"), "!build\n").unwrap();
    std::fs::write(p.join("src/build/gen.py"), "def f():\n    pass\n").unwrap();
    let got = left_out(p, &["--explain-skips", "."]);
    assert!(
        !got.iter().any(|(_, r)| r.starts_with("ignore rule")),
        "{got:?}"
    );
}

//! End-to-end tests of the cross-file write-helper pass: its project boundary (one project
//! audited from its own root, against a corpus of projects audited from above) and the
//! position of a helper's path parameter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod project_pass;

use std::path::Path;

const HELPER: &str = "def write_file(filename, content, omode=\"wb\"):\n    with open(filename, omode) as fh:\n        fh.write(content)\n        fh.flush()\n";
const CALLER: &str =
    "from lib import util\n\n\ndef reflect(paths, iid):\n    util.write_file(paths.state_file, iid)\n";

/// `write-in-place` findings (path, line) of `ftvm-audit --all ARG` run in `dir`.
fn write_in_place(dir: &Path, arg: &str) -> Vec<(String, u64)> {
    project_pass::findings_of(dir, arg, "write-in-place")
}

/// A project whose helper lives in `lib/` and whose caller lives in `src/`.
fn split_project(dir: &Path, marker: Option<&str>) {
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("lib/util.py"), HELPER).unwrap();
    std::fs::write(dir.join("src/stages.py"), CALLER).unwrap();
    match marker {
        Some(".git") => std::fs::create_dir_all(dir.join(".git")).unwrap(),
        Some(m) => std::fs::write(dir.join(m), "").unwrap(),
        None => {}
    }
}

#[test]
fn one_project_audited_from_its_root_resolves_helpers_across_top_directories() {
    for marker in ["pyproject.toml", ".git", "Makefile"] {
        let top = tempfile::tempdir().unwrap();
        let proj = top.path().join("myproj");
        split_project(&proj, Some(marker));
        // From the project's root, and from its parent naming the project.
        assert_eq!(
            write_in_place(&proj, "."),
            [
                ("lib/util.py".to_string(), 2),
                ("src/stages.py".to_string(), 5)
            ],
            "{marker}"
        );
        assert_eq!(
            write_in_place(top.path(), "myproj"),
            [
                ("myproj/lib/util.py".to_string(), 2),
                ("myproj/src/stages.py".to_string(), 5)
            ],
            "{marker}"
        );
    }
}

#[test]
fn without_a_project_root_each_top_directory_stays_its_own_project() {
    // No marker: `lib` and `src` are read as two archives of a corpus (the old rule).
    let top = tempfile::tempdir().unwrap();
    split_project(top.path(), None);
    assert_eq!(write_in_place(top.path(), "."), []);
}

#[test]
fn a_corpus_of_projects_keeps_one_project_per_archive() {
    // The corpus directory holds no marker; its archives do. A helper resolves inside its
    // own archive, never from another archive.
    let top = tempfile::tempdir().unwrap();
    split_project(&top.path().join("a-1.0"), Some("setup.py"));
    std::fs::create_dir_all(top.path().join("b-2.0/src")).unwrap();
    std::fs::write(top.path().join("b-2.0/setup.py"), "").unwrap();
    std::fs::write(top.path().join("b-2.0/src/stages.py"), CALLER).unwrap();
    assert_eq!(
        write_in_place(top.path(), "."),
        [
            ("a-1.0/lib/util.py".to_string(), 2),
            ("a-1.0/src/stages.py".to_string(), 5)
        ]
    );
}

#[test]
fn go_helper_with_a_second_same_typed_path_parameter() {
    // `dir, path string` is one declaration with two names: the truncated path is
    // parameter 1, so a state path passed second is reported and one passed first is not.
    let top = tempfile::tempdir().unwrap();
    std::fs::write(top.path().join("go.mod"), "module example.com/m\n").unwrap();
    std::fs::create_dir_all(top.path().join("util")).unwrap();
    std::fs::create_dir_all(top.path().join("cmd")).unwrap();
    std::fs::write(
        top.path().join("util/file.go"),
        "package util\n\nimport \"os\"\n\nfunc WriteFile(dir, path string, data []byte) error {\n\tf, err := os.Create(path)\n\tif err != nil {\n\t\treturn err\n\t}\n\tif _, err := f.Write(data); err != nil {\n\t\treturn err\n\t}\n\treturn f.Close()\n}\n",
    )
    .unwrap();
    std::fs::write(
        top.path().join("cmd/state.go"),
        "package cmd\n\nimport \"example.com/m/util\"\n\nfunc saveState(dir string, data []byte) error {\n\treturn util.WriteFile(dir, dir+\"/state.json\", data)\n}\n",
    )
    .unwrap();
    assert_eq!(
        write_in_place(top.path(), "."),
        [
            ("cmd/state.go".to_string(), 6),
            ("util/file.go".to_string(), 6)
        ]
    );
    // The state path in the helper's `dir` position: no finding.
    std::fs::write(
        top.path().join("cmd/state.go"),
        "package cmd\n\nimport \"example.com/m/util\"\n\nfunc copyLog(stateDir string, data []byte) error {\n\treturn util.WriteFile(stateDir, \"app.log\", data)\n}\n",
    )
    .unwrap();
    assert_eq!(write_in_place(top.path(), "."), []);
}

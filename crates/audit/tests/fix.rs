//! `--fix`: each mechanical refactoring is applied (as a diff with `patch`, and with
//! `--fix=apply`) and the result must parse (Rust: compile with rustc; Python: py_compile;
//! Go: parse without syntax errors; C: gcc -Wall -Werror, linked and run) and no longer
//! have the finding.
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

/// Link-time wrappers (`-Wl,--wrap=...`) of `open`, `close` and `fsync` that print
/// `fsync NAME` for every fsync, NAME being the path the descriptor was opened with by
/// `open` (`?` for others, such as `fopen`'s).
const FSYNC_TRACE: &str = "#include <fcntl.h>\n#include <stdarg.h>\n#include <stdio.h>\nint __real_open(const char *p, int flags, ...);\nint __real_close(int fd);\nint __real_fsync(int fd);\nstatic char names[256][256];\nint __wrap_open(const char *p, int flags, ...)\n{\n    int mode = 0;\n    if (flags & O_CREAT) {\n        va_list ap;\n        va_start(ap, flags);\n        mode = va_arg(ap, int);\n        va_end(ap);\n    }\n    int fd = __real_open(p, flags, mode);\n    if (fd >= 0 && fd < 256)\n        snprintf(names[fd], sizeof names[fd], \"%s\", p);\n    return fd;\n}\nint __wrap_close(int fd)\n{\n    if (fd >= 0 && fd < 256)\n        names[fd][0] = 0;\n    return __real_close(fd);\n}\nint __wrap_fsync(int fd)\n{\n    printf(\"fsync %s\\n\", fd >= 0 && fd < 256 && names[fd][0] ? names[fd] : \"?\");\n    return __real_fsync(fd);\n}\n";

/// Compile `file` with `gcc -c -Wall -Werror`, then link it with `main_src` and the
/// fsync trace and run the program in `dir`; returns its stdout.
fn gcc_compile_and_run(dir: &Path, file: &str, main_src: &str) -> String {
    let out = Command::new("gcc")
        .current_dir(dir)
        .args(["-c", "-Wall", "-Werror", "-o", "fixed.o", file])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(dir.join("main.c"), format!("{FSYNC_TRACE}{main_src}")).unwrap();
    let out = Command::new("gcc")
        .current_dir(dir)
        .args([
            "-Wall",
            "-Werror",
            "-Wl,--wrap=open,--wrap=close,--wrap=fsync",
            "-o",
            "prog",
            "main.c",
            "fixed.o",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let run = Command::new(dir.join("prog"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    String::from_utf8(run.stdout).unwrap()
}

fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"))
}

#[test]
fn c_file_star_rename_gets_fflush_fsync_before_fclose_and_directory_fsync_after() {
    let dir = tempfile::tempdir().unwrap();
    let src = "#include <stdio.h>\n\nint save_state(const char *path, const char *tmp, int value)\n{\n    FILE *f = fopen(tmp, \"w\");\n    if (f == NULL) {\n        return -1;\n    }\n    fprintf(f, \"%d\\n\", value);\n    if (fclose(f) != 0) {\n        return -1;\n    }\n    if (rename(tmp, path) != 0) {\n        return -1;\n    }\n    return 0;\n}\n\nconst char *save_name(const char *path, const char *tmp)\n{\n    FILE *out = fopen(tmp, \"w\");\n    if (out == NULL) {\n        return NULL;\n    }\n    fputs(path, out);\n    fclose(out);\n    if (rename(tmp, path) < 0) {\n        return NULL;\n    }\n    return path;\n}\n";
    std::fs::write(dir.path().join("save.c"), src).unwrap();
    let before = findings(dir.path(), "save.c");
    let renames: Vec<u64> = before
        .iter()
        .filter(|f| f.0 == "rename-without-fsync")
        .map(|f| f.1)
        .collect();
    assert_eq!(renames, vec![13, 27], "{before:?}");
    let (_diff, fixed) = fix_both_ways(dir.path(), "save.c");
    // The flush and fsync come before the close, and fail the int function with -1
    // (closing the file); the directory fsync comes after the rename's failure check.
    let sync = position(
        &fixed,
        "    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {\n        fclose(f);\n        return -1;\n    }\n",
    );
    let close = position(&fixed, "    if (fclose(f) != 0) {");
    let rename = position(
        &fixed,
        "    if (rename(tmp, path) != 0) {\n        return -1;\n    }\n",
    );
    let dir_sync = position(
        &fixed,
        "    if (ftvm_fsync_parent(path) != 0) {\n        return -1;\n    }\n    return 0;\n",
    );
    assert!(
        sync < close && close < rename && rename < dir_sync,
        "{fixed}"
    );
    // A function returning a pointer fails with NULL.
    let sync = position(
        &fixed,
        "    if (fflush(out) != 0 || fsync(fileno(out)) != 0) {\n        fclose(out);\n        return NULL;\n    }\n    fclose(out);\n    if (rename(tmp, path) < 0) {\n        return NULL;\n    }\n    if (ftvm_fsync_parent(path) != 0) {\n        return NULL;\n    }\n    return path;\n",
    );
    assert!(dir_sync < sync, "{fixed}");
    // The helper is defined once, before its use.
    assert_eq!(fixed.matches("static int ftvm_fsync_parent(").count(), 1);
    assert!(
        position(&fixed, "static int ftvm_fsync_parent(") < position(&fixed, "int save_state(")
    );
    let after = findings(dir.path(), "save.c");
    assert!(
        !after.iter().any(|f| f.0 == "rename-without-fsync"),
        "{after:?}"
    );
    // It compiles warning-free and works: the state lands under its name in a
    // subdirectory (the helper opens "out", not ".") and at the top level (".").
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let main_src = "int save_state(const char *path, const char *tmp, int value);\nconst char *save_name(const char *path, const char *tmp);\nint main(void)\n{\n    printf(\"= %d\\n\", save_state(\"out/state\", \"out/state.tmp\", 42));\n    printf(\"= %d\\n\", save_state(\"top\", \"top.tmp\", 7));\n    printf(\"= %d\\n\", save_state(\"missing/x\", \"out/x.tmp\", 1));\n    printf(\"= %s\\n\", save_name(\"out/name\", \"out/name.tmp\"));\n    return 0;\n}\n";
    let out = gcc_compile_and_run(dir.path(), "save.c", main_src);
    // Each call fsyncs the written file (an fopen'd descriptor: `?`), then the target's
    // directory; the third call's rename fails (no such directory): -1, no directory
    // fsync.
    assert_eq!(
        out,
        "fsync ?\nfsync out\n= 0\nfsync ?\nfsync .\n= 0\nfsync ?\n= -1\nfsync ?\nfsync out\n= out/name\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/state")).unwrap(),
        "42\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("top")).unwrap(),
        "7\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/name")).unwrap(),
        "out/name"
    );
}

#[test]
fn c_descriptor_rename_gets_fsync_before_close_and_directory_fsync_after() {
    let dir = tempfile::tempdir().unwrap();
    let src = "#include <fcntl.h>\n#include <unistd.h>\n#include <stdio.h>\n\nint write_meta(const char *path, const char *buf, size_t n)\n{\n\tconst char *tmp = \"meta.tmp\";\n\tint fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);\n\tif (fd < 0)\n\t\treturn -1;\n\tif (write(fd, buf, n) != (ssize_t)n) {\n\t\tclose(fd);\n\t\treturn -1;\n\t}\n\tclose(fd);\n\trename(tmp, path);\n\treturn 0;\n}\n";
    std::fs::write(dir.path().join("meta.c"), src).unwrap();
    let before = findings(dir.path(), "meta.c");
    assert!(
        before.contains(&("rename-without-fsync".to_string(), 16)),
        "{before:?}"
    );
    let (_diff, fixed) = fix_both_ways(dir.path(), "meta.c");
    // The error path's close is left alone; the fsync goes before the last close, with
    // the file's tab indentation.
    assert!(
        fixed.contains("\t\tclose(fd);\n\t\treturn -1;\n\t}\n\tif (fsync(fd) != 0) {\n\t\tclose(fd);\n\t\treturn -1;\n\t}\n\tclose(fd);\n\trename(tmp, path);\n\tif (ftvm_fsync_parent(path) != 0) {\n\t\treturn -1;\n\t}\n\treturn 0;\n"),
        "{fixed}"
    );
    assert_eq!(fixed.matches("fsync(fd) != 0").count(), 2, "{fixed}");
    // Only the missing includes were added.
    assert_eq!(fixed.matches("#include <fcntl.h>").count(), 1, "{fixed}");
    assert_eq!(fixed.matches("#include <unistd.h>").count(), 1, "{fixed}");
    assert!(fixed.contains("#include <string.h>"), "{fixed}");
    let after = findings(dir.path(), "meta.c");
    assert!(
        !after.iter().any(|f| f.0 == "rename-without-fsync"),
        "{after:?}"
    );
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let main_src = "int write_meta(const char *path, const char *buf, size_t n);\nint main(void)\n{\n    printf(\"= %d\\n\", write_meta(\"d/meta\", \"abc\", 3));\n    printf(\"= %d\\n\", write_meta(\"/\", \"abc\", 3));\n    return 0;\n}\n";
    // The temporary file, then the target's directory. Renaming onto `/` fails, but the
    // function does not check the rename (neither before nor after the fix; that is an
    // `ignored-result` finding): the helper then fsyncs `/`, the parent of `/`.
    assert_eq!(
        gcc_compile_and_run(dir.path(), "meta.c", main_src),
        "fsync meta.tmp\nfsync d\n= 0\nfsync meta.tmp\nfsync /\n= 0\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("d/meta")).unwrap(),
        "abc"
    );
}

#[test]
fn c_rename_without_a_safe_fix_gets_no_patch() {
    let dir = tempfile::tempdir().unwrap();
    // A void function (no failure value), a file closed by another function (no visible
    // fclose), a close under a preprocessor condition, and a rename whose failure
    // check has an else branch.
    let src = "#include <stdio.h>\n\nstatic void finish(FILE *f) { fclose(f); }\n\nvoid save_void(const char *path, const char *tmp)\n{\n    FILE *f = fopen(tmp, \"w\");\n    if (f == NULL)\n        return;\n    fputs(\"x\", f);\n    fclose(f);\n    rename(tmp, path);\n}\n\nint save_helper(const char *path, const char *tmp)\n{\n    FILE *f = fopen(tmp, \"w\");\n    if (f == NULL)\n        return -1;\n    fputs(\"x\", f);\n    finish(f);\n    if (rename(tmp, path) != 0)\n        return -1;\n    return 0;\n}\n\nint save_ifdef(const char *path, const char *tmp)\n{\n    FILE *f = fopen(tmp, \"w\");\n    if (f == NULL)\n        return -1;\n    fputs(\"x\", f);\n#ifdef SLOW\n    fflush(f);\n#endif\n    fclose(f);\n    if (rename(tmp, path) != 0)\n        return -1;\n    return 0;\n}\n\nint save_else(const char *path, const char *tmp)\n{\n    FILE *f = fopen(tmp, \"w\");\n    if (f == NULL)\n        return -1;\n    fputs(\"x\", f);\n    fclose(f);\n    if (rename(tmp, path) != 0) {\n        return -1;\n    } else {\n        puts(\"saved\");\n    }\n    return 0;\n}\n";
    std::fs::write(dir.path().join("amb.c"), src).unwrap();
    let before = findings(dir.path(), "amb.c");
    let renames: Vec<u64> = before
        .iter()
        .filter(|f| f.0 == "rename-without-fsync")
        .map(|f| f.1)
        .collect();
    assert_eq!(renames, vec![12, 22, 37, 49], "{before:?}");
    let out = audit(dir.path(), &["--fix", "amb.c"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{out:?}");
    let out = audit(dir.path(), &["--fix=apply", "amb.c"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("amb.c")).unwrap(),
        src
    );
}

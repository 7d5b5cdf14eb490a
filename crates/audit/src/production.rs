//! Production or not: which files of an audited tree are tests, examples, benchmarks or
//! build tooling, judged from their path *below the audit root* (never from the directories
//! above it) and from build metadata: Cargo `[[example]]`/`[[bench]]`/`[[test]]` targets,
//! Maven modules whose artifact is a test/benchmark/example/build-tool module or a Maven
//! plugin, and Go files excluded from builds with `//go:build ignore`.

use crate::lang::{self, Lang};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Classifies files below one audit root, caching what it read from build files.
#[derive(Debug)]
pub struct Classifier {
    root: PathBuf,
    /// Cargo manifest dir -> target files declared as examples/benches/tests.
    cargo: HashMap<PathBuf, Vec<(PathBuf, &'static str)>>,
    /// Directory -> reason from the nearest pom.xml (None: production or no pom).
    maven: HashMap<PathBuf, Option<String>>,
    /// Rust module file -> its text (to find `#[cfg(test)] mod name;` declarations).
    rust_parents: HashMap<PathBuf, Option<String>>,
    /// Directory names that count as production code here (`[paths] production`).
    production: Vec<String>,
}

/// Maven artifactId words that mark a non-production module.
const MAVEN_NON_PRODUCTION: &[&str] = &[
    "test",
    "tests",
    "testing",
    "testutils",
    "it",
    "benchmark",
    "benchmarks",
    "microbenchmarks",
    "perf",
    "example",
    "examples",
    "demo",
    "demos",
    "buildtools",
    "build-tools",
    "archetype",
    "experiments",
    "experimental",
    "sample",
    "samples",
];

impl Classifier {
    /// A classifier for files under `root` (a directory).
    pub fn new(root: &Path) -> Classifier {
        Classifier {
            root: root.to_path_buf(),
            cargo: HashMap::new(),
            maven: HashMap::new(),
            rust_parents: HashMap::new(),
            production: Vec::new(),
        }
    }

    /// Directory names that are production code in this project although the built-in
    /// list calls them non-production (`[paths] production`).
    pub fn with_production_dirs(mut self, dirs: &[String]) -> Classifier {
        self.production = dirs.to_vec();
        self
    }

    /// Why `path` (a file under the root) is not production code, or `None`.
    pub fn reason(&mut self, path: &Path, lang: Lang) -> Option<String> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        if let Some(r) = lang::non_production_reason_except(rel, lang, &self.production) {
            return Some(r);
        }
        match lang {
            Lang::Rust => self
                .cargo_reason(path)
                .or_else(|| self.cfg_test_module(path)),
            Lang::Java => self.maven_reason(path),
            _ => None,
        }
    }

    /// Directories from `path`'s parent up to the root (inclusive).
    fn dirs_up(&self, path: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut d = path.parent();
        while let Some(dir) = d {
            out.push(dir.to_path_buf());
            if dir == self.root || !dir.starts_with(&self.root) {
                break;
            }
            d = dir.parent();
        }
        out
    }

    fn cargo_reason(&mut self, path: &Path) -> Option<String> {
        for dir in self.dirs_up(path) {
            let targets = self
                .cargo
                .entry(dir.clone())
                .or_insert_with(|| cargo_targets(&dir));
            for (target, kind) in targets.iter() {
                let same = target == path;
                let in_dir = target.file_name().is_some_and(|f| f == "main.rs")
                    && target.parent().is_some_and(|p| path.starts_with(p));
                if same || in_dir {
                    let what = if *kind == "build" {
                        "Cargo build script (`package.build`)".to_string()
                    } else {
                        format!("Cargo `[[{kind}]]` target")
                    };
                    return Some(format!("{what} in {}", dir.join("Cargo.toml").display()));
                }
            }
        }
        None
    }

    /// A Rust file that is a module declared `#[cfg(test)] mod name;` by its parent module
    /// (`lib.rs`, `main.rs`, `mod.rs` in the same directory, or `dir.rs` beside the
    /// directory for `name.rs`; the parent of `name/mod.rs` one level up).
    fn cfg_test_module(&mut self, path: &Path) -> Option<String> {
        let dir = path.parent()?;
        let stem = path.file_stem()?.to_str()?;
        let (name, mod_dir) = if stem == "mod" {
            (dir.file_name()?.to_str()?, dir.parent()?)
        } else {
            (stem, dir)
        };
        if matches!(name, "lib" | "main") {
            return None;
        }
        let mut parents: Vec<PathBuf> = ["lib.rs", "main.rs", "mod.rs"]
            .iter()
            .map(|f| mod_dir.join(f))
            .collect();
        if let (Some(up), Some(dname)) = (mod_dir.parent(), mod_dir.file_name()) {
            let mut f = dname.to_os_string();
            f.push(".rs");
            parents.push(up.join(f));
        }
        for parent in parents {
            if parent == path {
                continue;
            }
            let text = self
                .rust_parents
                .entry(parent.clone())
                .or_insert_with(|| std::fs::read_to_string(&parent).ok());
            if text
                .as_deref()
                .is_some_and(|t| declares_cfg_test_mod(t, name))
            {
                return Some(format!(
                    "module declared `#[cfg(test)] mod {name};` in {}",
                    parent.display()
                ));
            }
        }
        None
    }

    fn maven_reason(&mut self, path: &Path) -> Option<String> {
        for dir in self.dirs_up(path) {
            if let Some(cached) = self.maven.get(&dir) {
                return cached.clone();
            }
            let pom = dir.join("pom.xml");
            if let Ok(text) = std::fs::read_to_string(&pom) {
                let r = maven_module_reason(&text).map(|why| format!("{why} ({})", pom.display()));
                self.maven.insert(dir, r.clone());
                return r;
            }
        }
        None
    }
}

/// Whether Rust module text declares `mod name;` under a `#[cfg(test)]` (or
/// `#[cfg(any(test, ..))]`) attribute on the lines right above it.
pub fn declares_cfg_test_mod(text: &str, name: &str) -> bool {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.iter().enumerate().any(|(i, l)| {
        let decl = l
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ");
        if decl != format!("mod {name};") {
            return false;
        }
        lines[..i]
            .iter()
            .rev()
            .take_while(|a| a.starts_with("#[") || a.starts_with("//"))
            .any(|a| {
                let a = a.replace(' ', "");
                a.starts_with("#[cfg(")
                    && a.contains("test")
                    && !a.contains("not(test")
                    && !enabled_outside_tests(&a)
            })
    })
}

/// A `#[cfg(any(test, ..))]` whose other alternatives are features that are not about
/// testing (`#[cfg(any(feature = "rocksdb", test))]`): the module is compiled into
/// production builds that enable the feature. `any(test, feature = "test-utils")` (mock,
/// fuzz, bench features too) and `any(test, loom)` stay test-only.
fn enabled_outside_tests(attr: &str) -> bool {
    let Some(inner) = attr
        .strip_prefix("#[cfg(any(")
        .and_then(|r| r.strip_suffix("))]"))
    else {
        return false;
    };
    // Bare flags (`test`, `loom`, `injected_yields`) are set by test and fault-injection
    // builds; a feature or a target condition (`feature = ".."`, `all(target_arch = ..)`)
    // is a production build.
    inner.split(',').any(|alt| {
        (alt.contains('=') || alt.contains('('))
            && !["test", "mock", "fuzz", "bench", "fixture"]
                .iter()
                .any(|w| alt.to_ascii_lowercase().contains(w))
    })
}

/// Example/bench/test target files declared in `dir/Cargo.toml` (absolute paths), and the
/// package's build script (`build = "..."`, or `build.rs` next to the manifest unless
/// `build = false`): it runs at compile time, not in the program.
fn cargo_targets(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
        return Vec::new();
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if doc.contains_key("package") {
        match doc.get("package").and_then(|p| p.get("build")) {
            Some(toml::Value::String(p)) => out.push((dir.join(p), "build")),
            Some(toml::Value::Boolean(false)) => {}
            _ => out.push((dir.join("build.rs"), "build")),
        }
    }
    for kind in ["example", "bench", "test"] {
        let Some(list) = doc.get(kind).and_then(|v| v.as_array()) else {
            continue;
        };
        for t in list {
            if let Some(p) = t.get("path").and_then(|p| p.as_str()) {
                out.push((dir.join(p), kind));
            }
        }
    }
    out
}

/// Why a Maven module (its pom.xml text) is not production code: a Maven plugin, or an
/// artifactId with a test/benchmark/example/build-tool word.
pub fn maven_module_reason(pom: &str) -> Option<String> {
    // The module's own coordinates come after the <parent> block.
    let own = match (pom.find("<parent>"), pom.find("</parent>")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &pom[..a], &pom[b..]),
        _ => pom.to_string(),
    };
    if own.contains("<packaging>maven-plugin</packaging>") {
        return Some("Maven plugin module (build tooling)".into());
    }
    let start = own.find("<artifactId>")? + "<artifactId>".len();
    let end = own[start..].find("</artifactId>")? + start;
    let id = own[start..end].trim().to_ascii_lowercase();
    let hit = id
        .split(['-', '.', '_'])
        .any(|w| MAVEN_NON_PRODUCTION.contains(&w));
    hit.then(|| format!("Maven module `{id}` is a test/benchmark/example/tooling module"))
}

/// Go files excluded from every build (`//go:build ignore`, `// +build ignore`): generators
/// and examples run with `go run`.
/// Also files built only with a test, fuzz or tools tag (`//go:build gofuzz`,
/// `// +build dragonboat_monkeytest`, `//go:build tools`): a constraint without `||`/`,`
/// alternatives whose tags are all required and one of them names a test/fuzz build.
pub fn go_build_ignored(src: &str) -> bool {
    src.lines()
        .take_while(|l| !l.starts_with("package "))
        .any(|l| {
            let l = l.trim();
            let expr = l
                .strip_prefix("//go:build ")
                .or_else(|| l.strip_prefix("// +build "))
                .or_else(|| l.strip_prefix("//+build "));
            expr.is_some_and(|e| {
                !e.contains("||")
                    && !e.contains(',')
                    && !e.contains(' ')
                    && !e.starts_with('!')
                    && (e == "ignore" || e == "tools" || e.contains("test") || e.contains("fuzz"))
            })
        })
}

/// Java packages of desktop GUI toolkits. A file that imports one is a desktop client's
/// user interface (windows, panels, event listeners), not the server or library code whose
/// fault tolerance is audited.
const JAVA_GUI_PACKAGES: &[&str] = &[
    "javax.swing.",
    "java.awt.event.",
    "java.applet.",
    "javafx.",
    "org.eclipse.swt.",
];

/// The desktop GUI toolkit a Java file imports (`import javax.swing.JTable;`), or `None`.
/// Only the import section is read (up to the first type declaration); `java.awt` alone
/// (images, colours, fonts used by server-side rendering) does not count.
pub fn java_gui_import(src: &str) -> Option<&'static str> {
    for line in src.lines() {
        let l = line.trim_start();
        if let Some(name) = l.strip_prefix("import ") {
            let name = name.trim_start().trim_start_matches("static ").trim_start();
            if let Some(p) = JAVA_GUI_PACKAGES.iter().find(|p| name.starts_with(**p)) {
                return Some(p.trim_end_matches('.'));
            }
        } else if l.starts_with("public ")
            || l.starts_with("class ")
            || l.starts_with("final ")
            || l.starts_with("abstract ")
            || l.starts_with("interface ")
            || l.starts_with("enum ")
            || l.starts_with('@')
        {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_gui_imports() {
        let gui = "package a.b;\n\nimport java.util.List;\nimport javax.swing.JTable;\n\npublic class P {}\n";
        assert_eq!(java_gui_import(gui), Some("javax.swing"));
        let awt_event = "package a;\nimport java.awt.event.ActionListener;\nclass P {}\n";
        assert_eq!(java_gui_import(awt_event), Some("java.awt.event"));
        // Server-side imaging with java.awt is not a GUI; nor is a later mention in code.
        let imaging = "package a;\nimport java.awt.image.BufferedImage;\npublic class T {\n  // import javax.swing.JTable;\n}\n";
        assert_eq!(java_gui_import(imaging), None);
        let server =
            "package a;\nimport java.util.concurrent.ExecutorService;\npublic class S {}\n";
        assert_eq!(java_gui_import(server), None);
    }

    #[test]
    fn maven_modules() {
        let pom = "<project><parent><artifactId>bookkeeper</artifactId></parent><artifactId>bookkeeper-server</artifactId></project>";
        assert_eq!(maven_module_reason(pom), None);
        let pom = "<project><parent><artifactId>x</artifactId></parent><artifactId>x-microbenchmarks</artifactId></project>";
        assert!(maven_module_reason(pom).is_some());
        let pom =
            "<project><artifactId>p</artifactId><packaging>maven-plugin</packaging></project>";
        assert!(maven_module_reason(pom).is_some());
        // "latest" or "contest" are not test words; whole words only.
        let pom = "<project><artifactId>contest-server</artifactId></project>";
        assert_eq!(maven_module_reason(pom), None);
    }

    #[test]
    fn cfg_test_module_declarations() {
        let lib = "mod store;\n#[cfg(test)]\nmod wait_test;\n#[cfg(not(test))]\nmod real;\n#[cfg(test)]\n#[allow(dead_code)]\npub(crate) mod helpers;\n";
        assert!(declares_cfg_test_mod(lib, "wait_test"));
        assert!(declares_cfg_test_mod(lib, "helpers"));
        assert!(!declares_cfg_test_mod(lib, "store"));
        assert!(!declares_cfg_test_mod(lib, "real"));
        let features = "#[cfg(any(feature = \"rocksdb\", test))]\nmod upgrade;\n#[cfg(any(test, feature = \"test-utils\"))]\nmod mocks;\n#[cfg(any(test, loom))]\nmod model;\n";
        assert!(!declares_cfg_test_mod(features, "upgrade"));
        assert!(declares_cfg_test_mod(features, "mocks"));
        assert!(declares_cfg_test_mod(features, "model"));
    }

    #[test]
    fn cfg_test_module_files_are_not_production() {
        let root = std::env::temp_dir().join(format!("ftvm-audit-cfgtest-{}", std::process::id()));
        let src = root.join("src");
        std::fs::create_dir_all(src.join("quorum")).unwrap();
        std::fs::write(
            src.join("lib.rs"),
            "#[cfg(test)]\nmod fixtures;\nmod quorum;\n",
        )
        .unwrap();
        std::fs::write(
            src.join("quorum.rs"),
            "#[cfg(test)]\nmod coherent;\nmod joint;\n",
        )
        .unwrap();
        let mut c = Classifier::new(&root);
        assert!(c.reason(&src.join("fixtures.rs"), Lang::Rust).is_some());
        assert!(c
            .reason(&src.join("quorum/coherent.rs"), Lang::Rust)
            .is_some());
        assert_eq!(c.reason(&src.join("quorum/joint.rs"), Lang::Rust), None);
        assert_eq!(c.reason(&src.join("quorum.rs"), Lang::Rust), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn go_ignore_tag() {
        assert!(go_build_ignored("//go:build ignore\n\npackage main\n"));
        assert!(go_build_ignored("// +build gofuzz\n\npackage raftpb\n"));
        assert!(go_build_ignored(
            "//go:build dragonboat_monkeytest\n\npackage x\n"
        ));
        assert!(!go_build_ignored("//go:build !gofuzz\n\npackage x\n"));
        assert!(!go_build_ignored("//go:build linux || fuzz\n\npackage x\n"));
        assert!(!go_build_ignored("//go:build linux\n\npackage x\n"));
        assert!(!go_build_ignored(
            "//go:build linux\n\npackage x\n// +build ignore\n"
        ));
    }
}

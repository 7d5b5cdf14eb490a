//! Who reaches a Python `requests` call: a name-based call graph of one project, from the
//! wait back to the functions nothing in the project calls (its roots).
//!
//! The careful held-out labels of `request-without-timeout` (docs/audit-precision.md,
//! "Twentieth measurement") put most false positives on waits that only an operator's
//! one-shot command reaches (an admin subcommand, an installer, an export), which the label
//! definition counts as no hazard: the person at the terminal sees the hang. Whether a wait
//! is such a path depends on the callers, in other files; a per-file rule cannot see it.
//!
//! Each Python file records, per function (plus two pseudo-functions: the module's top level
//! and its `if __name__ == "__main__":` block), the names it calls, whether each call sits in a
//! `while` loop, and the names it refers to without calling them (callbacks, handler tables,
//! `Thread(target=..)`). The project pass walks from a finding's enclosing function to every
//! caller by name, transitively, and classifies the roots it reaches:
//! - **operator**: the `__main__` block; a function a console script names
//!   (`pyproject.toml`, `setup.cfg`, `setup.py`); a `@*.command`/`@*.group` function in a file
//!   that imports `click` or `typer`; a Django management command's `handle`; a cliff
//!   `take_action`; a `do_*` function of a `shell.py`;
//! - **dead**: a private (`_name`, not dunder), undecorated function nothing calls or names;
//! - **other**: anything else (a library's public API, a framework callback, module level).
//!
//! The finding is dropped only when every root is operator or dead, no edge on the way sits in
//! a `while` loop (a command that turns into a daemon loops), and the walk stays small.
//! Resolution by name over-approximates the callers, which errs towards keeping a finding: a
//! common name (`get`, `run`) gathers many callers and some root that is not an operator's.
//! The pass runs only where the audit covers a whole project (its directory has a build file
//! or a version-control directory) and never for a file named on the command line.

use crate::lang::Lang;
use crate::syntax;
use std::collections::{HashMap, HashSet};
use tree_sitter::Node;

/// Index of the module-level pseudo-function in [`ReachFacts::funcs`].
const MODULE: usize = 0;
/// Index of the `if __name__ == "__main__":` pseudo-function.
const MAIN_BLOCK: usize = 1;
/// Callers visited before the walk gives up and keeps the finding.
const MAX_VISITED: usize = 400;

/// One function's part of the call graph.
#[derive(Debug, Clone, Default)]
pub struct ReachFn {
    /// The function's name (`<module>` and `<main>` for the pseudo-functions).
    pub name: String,
    /// First and last line (1-based) of the definition; 0 for the pseudo-functions.
    pub start: usize,
    pub end: usize,
    /// The decorators' texts.
    pub decorators: Vec<String>,
    /// Names called, each with whether the call sits inside a `while` loop of this function.
    pub calls: Vec<(String, bool)>,
    /// Names referred to without a call.
    pub refs: Vec<String>,
    /// The class whose body holds the definition (the innermost one), for methods.
    pub class: Option<String>,
}

/// The call-graph facts of one Python file (empty for other languages).
#[derive(Debug, Clone, Default)]
pub struct ReachFacts {
    pub funcs: Vec<ReachFn>,
    /// The file imports `click`, `typer`, `cloup` or `asyncclick`.
    pub imports_cli: bool,
    /// Names the file's module level imports with `from .. import ..` (its re-exports when the
    /// file is a package's `__init__.py`).
    pub exports: Vec<String>,
    /// The module level has a `from .. import *`.
    pub exports_all: bool,
}

/// Collect the facts of one parsed Python file.
pub fn file_facts(root: Node<'_>, src: &str, lang: Lang) -> ReachFacts {
    if lang != Lang::Python {
        return ReachFacts::default();
    }
    let mut facts = ReachFacts {
        funcs: vec![
            ReachFn {
                name: "<module>".into(),
                ..ReachFn::default()
            },
            ReachFn {
                name: "<main>".into(),
                ..ReachFn::default()
            },
        ],
        imports_cli: false,
        exports: Vec::new(),
        exports_all: false,
    };
    let mut refs: Vec<HashSet<&str>> = vec![HashSet::new(), HashSet::new()];
    // (name, first line, last line) of every class, to give methods their class.
    let mut classes: Vec<(&str, usize, usize)> = Vec::new();
    // (node, function index, inside a `while` loop of that function)
    let mut stack: Vec<(Node<'_>, usize, bool)> = vec![(root, MODULE, false)];
    let mut cursor = root.walk();
    while let Some((node, func, in_while)) = stack.pop() {
        match node.kind() {
            "import_statement" | "import_from_statement" => {
                let t = syntax::text(node, src);
                let module = t
                    .trim_start_matches("from")
                    .trim_start_matches("import")
                    .trim_start();
                let first = module
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("");
                if matches!(first, "click" | "typer" | "cloup" | "asyncclick") {
                    facts.imports_cli = true;
                }
                if func == MODULE && node.kind() == "import_from_statement" {
                    record_exports(node, src, &mut facts);
                }
            }
            "function_definition" => {
                let name = node
                    .child_by_field_name("name")
                    .map_or("", |n| syntax::text(n, src));
                let decorators = node
                    .parent()
                    .filter(|p| p.kind() == "decorated_definition")
                    .map(|p| {
                        p.named_children(&mut p.walk())
                            .filter(|c| c.kind() == "decorator")
                            .map(|c| syntax::text(c, src).to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let start = node.start_position().row + 1;
                let class = classes
                    .iter()
                    .filter(|(_, s, e)| *s < start && start <= *e)
                    .max_by_key(|(_, s, _)| *s)
                    .map(|(n, _, _)| n.to_string());
                facts.funcs.push(ReachFn {
                    name: name.to_string(),
                    start,
                    end: node.end_position().row + 1,
                    decorators,
                    class,
                    ..ReachFn::default()
                });
                refs.push(HashSet::new());
                let me = facts.funcs.len() - 1;
                // Default values belong to the enclosing scope; the body to the new function.
                if let Some(params) = node.child_by_field_name("parameters") {
                    for p in params.named_children(&mut cursor) {
                        if let Some(v) = p.child_by_field_name("value") {
                            stack.push((v, func, in_while));
                        }
                    }
                }
                if let Some(body) = node.child_by_field_name("body") {
                    stack.push((body, me, false));
                }
            }
            "if_statement" if func == MODULE && is_main_guard(node, src) => {
                if let Some(c) = node.child_by_field_name("consequence") {
                    stack.push((c, MAIN_BLOCK, in_while));
                }
                for alt in node.children_by_field_name("alternative", &mut node.walk()) {
                    stack.push((alt, func, in_while));
                }
            }
            "while_statement" => push_children(&mut stack, &mut cursor, node, func, true),
            "call" => {
                if let Some(callee) = node.child_by_field_name("function") {
                    match callee.kind() {
                        "identifier" => facts.funcs[func]
                            .calls
                            .push((syntax::text(callee, src).to_string(), in_while)),
                        "attribute" => {
                            if let Some(a) = callee.child_by_field_name("attribute") {
                                facts.funcs[func]
                                    .calls
                                    .push((syntax::text(a, src).to_string(), in_while));
                            }
                            if let Some(o) = callee.child_by_field_name("object") {
                                stack.push((o, func, in_while));
                            }
                        }
                        _ => stack.push((callee, func, in_while)),
                    }
                }
                if let Some(args) = node.child_by_field_name("arguments") {
                    stack.push((args, func, in_while));
                }
            }
            "attribute" => {
                if let Some(a) = node.child_by_field_name("attribute") {
                    refs[func].insert(syntax::text(a, src));
                }
                if let Some(o) = node.child_by_field_name("object") {
                    stack.push((o, func, in_while));
                }
            }
            "identifier" => {
                refs[func].insert(syntax::text(node, src));
            }
            "keyword_argument" => {
                if let Some(v) = node.child_by_field_name("value") {
                    stack.push((v, func, in_while));
                }
            }
            "assignment" | "augmented_assignment" => {
                for field in ["right", "type"] {
                    if let Some(v) = node.child_by_field_name(field) {
                        stack.push((v, func, in_while));
                    }
                }
            }
            "for_statement" => {
                for field in ["right", "body", "alternative"] {
                    if let Some(v) = node.child_by_field_name(field) {
                        stack.push((v, func, in_while));
                    }
                }
            }
            "class_definition" => {
                if let Some(n) = node.child_by_field_name("name") {
                    classes.push((
                        syntax::text(n, src),
                        node.start_position().row + 1,
                        node.end_position().row + 1,
                    ));
                }
                for field in ["superclasses", "body"] {
                    if let Some(v) = node.child_by_field_name(field) {
                        stack.push((v, func, in_while));
                    }
                }
            }
            "decorated_definition" => {
                // Decorators are evaluated in the enclosing scope; the definition opens its own.
                push_children(&mut stack, &mut cursor, node, func, in_while);
            }
            "string" | "comment" | "parameters" | "lambda_parameters" => {}
            _ => push_children(&mut stack, &mut cursor, node, func, in_while),
        }
    }
    for (f, names) in facts.funcs.iter_mut().zip(refs) {
        f.refs = names.into_iter().map(str::to_string).collect();
    }
    facts
}

/// Push `n`'s named children (first child on top) with function `f` and loop flag `w`.
fn push_children<'t>(
    stack: &mut Vec<(Node<'t>, usize, bool)>,
    cursor: &mut tree_sitter::TreeCursor<'t>,
    n: Node<'t>,
    f: usize,
    w: bool,
) {
    let kids: Vec<Node<'t>> = n.named_children(cursor).collect();
    stack.extend(kids.into_iter().rev().map(|k| (k, f, w)));
}

/// The names a module-level `from .. import a, b as c` binds (`a`, `c`), or `*`.
fn record_exports(node: Node<'_>, src: &str, facts: &mut ReachFacts) {
    let mut cursor = node.walk();
    for child in node.children_by_field_name("name", &mut cursor) {
        let bound = match child.kind() {
            "aliased_import" => child.child_by_field_name("alias"),
            _ => Some(child),
        };
        if let Some(b) = bound {
            let t = syntax::text(b, src);
            facts
                .exports
                .push(t.rsplit('.').next().unwrap_or(t).to_string());
        }
    }
    if node
        .named_children(&mut node.walk())
        .any(|c| c.kind() == "wildcard_import")
    {
        facts.exports_all = true;
    }
}

/// `if __name__ == "__main__":`
fn is_main_guard(node: Node<'_>, src: &str) -> bool {
    node.child_by_field_name("condition").is_some_and(|c| {
        let t = syntax::text(c, src);
        t.contains("__name__") && t.contains("__main__")
    })
}

/// Function names that a console-script entry point names (`name = pkg.mod:func`), read
/// from the text of a `pyproject.toml`, `setup.cfg` or `setup.py`.
pub fn console_script_functions(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices('=').filter_map(move |(i, _)| {
        let rest = text[i + 1..].trim_start_matches([' ', '\t', '"', '\'']);
        let module_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        if module_len == 0 {
            return None;
        }
        let after = rest[module_len..].trim_start_matches([' ', '\t']);
        let func = after.strip_prefix(':')?.trim_start_matches([' ', '\t']);
        let len = func
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(func.len());
        (len > 0 && !func.starts_with(|c: char| c.is_ascii_digit())).then(|| &func[..len])
    })
}

/// Whether the project is a client library (its directory or a distribution name in its build
/// files has a word ending in `client` or `sdk`: `python-freezerclient`, `shipyard_client`,
/// `acme-sdk`). Its public calls are an API that its users' services make (the label
/// definition's operator-command addendum), even where the only caller inside the project is
/// the command-line tool shipped with it, so the pass keeps every finding there.
pub fn is_client_library(dir_name: &str, build_files: &[String]) -> bool {
    let client_word = |name: &str| {
        name.to_ascii_lowercase()
            .split(['-', '_', '.', ' '])
            .any(|w| w.ends_with("client") || w.ends_with("sdk"))
    };
    let names = build_files.iter().flat_map(|t| {
        t.lines().filter_map(|l| {
            let rest = l.trim_start().strip_prefix("name")?.trim_start();
            let value = rest
                .strip_prefix('=')?
                .trim_start_matches([' ', '\t', '"', '\'']);
            let end = value
                .find(|c: char| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(value.len());
            Some(&value[..end])
        })
    });
    client_word(version_stripped(dir_name)) || names.into_iter().any(client_word)
}

/// An archive's directory name without its version suffix (`python-muranoclient-2.8.0` ->
/// `python-muranoclient`).
fn version_stripped(name: &str) -> &str {
    let mut end = name.len();
    while let Some(i) = name[..end].rfind('-') {
        if name[i + 1..end].starts_with(|c: char| c.is_ascii_digit()) {
            end = i;
        } else {
            break;
        }
    }
    &name[..end]
}

/// `pkg/__init__.py`, or `src/pkg/__init__.py` / `lib/pkg/__init__.py`.
fn is_top_package_init(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    matches!(
        parts.as_slice(),
        [_, "__init__.py"] | ["src" | "lib", _, "__init__.py"]
    )
}

/// Whether a top-level package's `__init__.py` among `files` re-exports everything of some
/// module (`from .core import *`): then any public function may be the project's API, and the
/// pass keeps every finding without building the graph.
pub fn exports_all(files: &[ProjectFile<'_>]) -> bool {
    files
        .iter()
        .any(|f| is_top_package_init(f.rel) && f.facts.exports_all)
}

/// One file of a project, as the project pass sees it.
#[derive(Debug)]
pub struct ProjectFile<'a> {
    /// The file's path relative to the project directory, `/`-separated.
    pub rel: &'a str,
    pub facts: &'a ReachFacts,
}

/// The call graph of one project.
#[derive(Debug)]
pub struct ProjectGraph<'a> {
    files: Vec<ProjectFile<'a>>,
    /// name -> (file, function, the edge sits in a `while` loop)
    callers: HashMap<&'a str, Vec<(usize, usize, bool)>>,
    console: HashSet<String>,
    /// Names a top-level package's `__init__.py` re-exports: the project's public API.
    exported: HashSet<&'a str>,
}

/// What the roots above a finding say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Only operators' commands (or nothing) reach the wait.
    OperatorOnly,
    /// Some other path, or the walk could not tell.
    Other,
}

impl<'a> ProjectGraph<'a> {
    /// Build the graph from the project's Python files and the text of its build files.
    pub fn new(files: Vec<ProjectFile<'a>>, build_files: &[String]) -> Self {
        let mut callers: HashMap<&'a str, Vec<(usize, usize, bool)>> = HashMap::new();
        for (fi, file) in files.iter().enumerate() {
            for (ni, f) in file.facts.funcs.iter().enumerate() {
                for (name, in_while) in &f.calls {
                    callers
                        .entry(name.as_str())
                        .or_default()
                        .push((fi, ni, *in_while));
                }
                for name in &f.refs {
                    callers
                        .entry(name.as_str())
                        .or_default()
                        .push((fi, ni, false));
                }
            }
        }
        let console = build_files
            .iter()
            .flat_map(|t| console_script_functions(t).map(str::to_string))
            .collect();
        let exported = files
            .iter()
            .filter(|f| is_top_package_init(f.rel))
            .flat_map(|f| f.facts.exports.iter().map(String::as_str))
            .collect();
        Self {
            files,
            callers,
            console,
            exported,
        }
    }

    /// Whether a function is part of the project's public API: public itself, and re-exported
    /// (or its public class is) by a top-level package's `__init__.py`.
    fn is_exported(&self, f: &ReachFn) -> bool {
        !f.name.starts_with('_')
            && (self.exported.contains(f.name.as_str())
                || f.class
                    .as_deref()
                    .is_some_and(|c| !c.starts_with('_') && self.exported.contains(c)))
    }

    /// Who reaches line `line` of the project's file number `file`.
    pub fn reach(&self, file: usize, line: usize) -> Reach {
        let Some(funcs) = self.files.get(file).map(|f| &f.facts.funcs) else {
            return Reach::Other;
        };
        let Some(start) = funcs
            .iter()
            .enumerate()
            .skip(MAIN_BLOCK + 1)
            .filter(|(_, f)| f.start <= line && line <= f.end)
            .max_by_key(|(_, f)| f.start)
            .map(|(i, _)| (file, i))
        else {
            return Reach::Other;
        };
        let mut seen: HashSet<(usize, usize)> = HashSet::from([start]);
        let mut todo = vec![start];
        let mut roots = 0usize;
        let mut visited = 0usize;
        while let Some((fi, ni)) = todo.pop() {
            visited += 1;
            if visited > MAX_VISITED {
                return Reach::Other;
            }
            let f = &self.files[fi].facts.funcs[ni];
            if self.is_exported(f) {
                return Reach::Other;
            }
            let callers: Vec<(usize, usize, bool)> = if ni <= MAIN_BLOCK {
                Vec::new()
            } else {
                self.callers
                    .get(f.name.as_str())
                    .map(|v| {
                        v.iter()
                            .copied()
                            .filter(|(cf, cn, _)| (*cf, *cn) != (fi, ni))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if callers.is_empty() {
                if !self.is_operator_or_dead(fi, ni) {
                    return Reach::Other;
                }
                roots += 1;
                continue;
            }
            for (cf, cn, in_while) in callers {
                if in_while {
                    return Reach::Other;
                }
                if seen.insert((cf, cn)) {
                    todo.push((cf, cn));
                }
            }
        }
        if roots > 0 {
            Reach::OperatorOnly
        } else {
            Reach::Other
        }
    }

    /// Whether a root (a function nothing in the project calls or names) is an operator's
    /// command or dead code.
    fn is_operator_or_dead(&self, fi: usize, ni: usize) -> bool {
        let file = &self.files[fi];
        let f = &file.facts.funcs[ni];
        match ni {
            MODULE => return false,
            MAIN_BLOCK => return true,
            _ => {}
        }
        let command_decorator = f.decorators.iter().any(|d| {
            let head = d.trim_start_matches('@');
            let head = head.split('(').next().unwrap_or(head).trim();
            let last = head.rsplit('.').next().unwrap_or(head);
            matches!(last, "command" | "group")
        });
        let base = file.rel.rsplit('/').next().unwrap_or(file.rel);
        (command_decorator && file.facts.imports_cli)
            || self.console.contains(&f.name)
            || (f.name == "handle" && file.rel.contains("management/commands/"))
            || f.name == "take_action"
            || (f.name.starts_with("do_") && base == "shell.py")
            || (f.name.starts_with('_') && !f.name.starts_with("__") && f.decorators.is_empty())
    }
}

/// Build files whose console-script entries name operator commands.
const BUILD_FILES: &[&str] = &["pyproject.toml", "setup.cfg", "setup.py"];
/// Build files larger than this are not read (a console-script table is a few lines).
const MAX_BUILD_FILE: u64 = 1 << 20;

/// The text of the build files in `dir` and in every directory between it and the Python files
/// `rels` (relative to `dir`): a console script may be declared by a sub-package's own
/// `setup.cfg` (`src/bin/client/setup.cfg`).
pub fn read_build_files(dir: &std::path::Path, rels: &[&str]) -> Vec<String> {
    let mut dirs: HashSet<String> = HashSet::from([String::new()]);
    for rel in rels {
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            dirs.insert(rel[..at + i].to_string());
            at += i + 1;
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        for name in BUILD_FILES {
            let path = dir.join(&d).join(name);
            let small =
                std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= MAX_BUILD_FILE);
            if let Some(text) = small.then(|| std::fs::read_to_string(&path).ok()).flatten() {
                out.push(text);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn facts(src: &str) -> ReachFacts {
        let mut p = tree_sitter::Parser::new();
        p.set_language(&tree_sitter_python::LANGUAGE.into())
            .unwrap();
        let tree = p.parse(src, None).unwrap();
        file_facts(tree.root_node(), src, Lang::Python)
    }

    fn graph_reach(files: &[(&str, &str)], build: &[&str], file: usize, line: usize) -> Reach {
        let all: Vec<ReachFacts> = files.iter().map(|(_, s)| facts(s)).collect();
        let pf = files
            .iter()
            .zip(&all)
            .map(|((rel, _), facts)| ProjectFile { rel, facts })
            .collect();
        let build: Vec<String> = build.iter().map(|s| s.to_string()).collect();
        ProjectGraph::new(pf, &build).reach(file, line)
    }

    #[test]
    fn records_calls_refs_loops_and_the_main_block() {
        let f = facts(
            "import click\n\
             def a(x=dflt()):\n    b()\n    while True:\n        self.c(d)\n\
             if __name__ == '__main__':\n    a()\n",
        );
        assert!(f.imports_cli);
        let a = &f.funcs[2];
        assert_eq!((a.name.as_str(), a.start, a.end), ("a", 2, 5));
        assert_eq!(
            a.calls,
            vec![("b".to_string(), false), ("c".to_string(), true)]
        );
        assert!(a.refs.contains(&"d".to_string()));
        assert!(f.funcs[MODULE].calls.contains(&("dflt".to_string(), false)));
        assert_eq!(f.funcs[MAIN_BLOCK].calls, vec![("a".to_string(), false)]);
    }

    #[test]
    fn client_libraries_are_known_by_name() {
        assert!(is_client_library("python-muranoclient-2.8.0", &[]));
        assert!(is_client_library(
            "src",
            &["[metadata]\nname = shipyard_client\n".into()]
        ));
        assert!(is_client_library(
            "x",
            &["setup(\n    name='acme-sdk',\n)".into()]
        ));
        assert!(!is_client_library(
            "grafana-backup-1.4.2",
            &["[project]\nname = \"grafana-backup\"\n".into()]
        ));
        // A word that merely contains "client" elsewhere does not count.
        assert!(!is_client_library("clientele-2.0", &[]));
        assert_eq!(
            version_stripped("mongo_orchestration-0.11.2"),
            "mongo_orchestration"
        );
        assert_eq!(
            version_stripped("teuthology-ff7195da88d9"),
            "teuthology-ff7195da88d9"
        );
    }

    #[test]
    fn console_scripts_are_read_from_build_files() {
        let t = "[project.scripts]\nmongo-launch = \"pkg.launch:main\"\n\
                 entry_points={'console_scripts': ['tool=pkg.cli : run_cli']}\n\
                 x = 3\nurl = http://host:80\n";
        let names: Vec<&str> = console_script_functions(t).collect();
        assert_eq!(names, vec!["main", "run_cli"]);
    }

    #[test]
    fn a_wait_only_a_console_script_reaches_is_operator_only() {
        let lib = "import requests\ndef fetch(u):\n    return requests.get(u)\n";
        let cli = "from pkg.lib import fetch\ndef main():\n    fetch('x')\n";
        let r = graph_reach(
            &[("pkg/lib.py", lib), ("pkg/cli.py", cli)],
            &["[project.scripts]\ntool = \"pkg.cli:main\"\n"],
            0,
            3,
        );
        assert_eq!(r, Reach::OperatorOnly);
        // Without the console script, `main` is a library's public function.
        let r = graph_reach(&[("pkg/lib.py", lib), ("pkg/cli.py", cli)], &[], 0, 3);
        assert_eq!(r, Reach::Other);
    }

    #[test]
    fn a_loop_or_a_service_caller_keeps_the_finding() {
        let lib = "import requests\ndef fetch(u):\n    return requests.get(u)\n";
        let daemon = "def main():\n    while True:\n        fetch('x')\n";
        let r = graph_reach(
            &[("pkg/lib.py", lib), ("pkg/d.py", daemon)],
            &["d = pkg.d:main"],
            0,
            3,
        );
        assert_eq!(r, Reach::Other);
        let web = "@app.route('/x')\ndef view():\n    return fetch('x')\n";
        let cli = "def main():\n    fetch('y')\n";
        let r = graph_reach(
            &[
                ("pkg/lib.py", lib),
                ("pkg/web.py", web),
                ("pkg/cli.py", cli),
            ],
            &["t = pkg.cli:main"],
            0,
            3,
        );
        assert_eq!(r, Reach::Other);
    }

    #[test]
    fn click_commands_need_a_click_import() {
        let src =
            "import click\nimport requests\n@cli.command()\ndef sync():\n    requests.post('u')\n";
        assert_eq!(
            graph_reach(&[("pkg/c.py", src)], &[], 0, 5),
            Reach::OperatorOnly
        );
        // A chat bot's `@plugin.command` is a service's handler.
        let bot = "from sopel import plugin\nimport requests\n@plugin.command('x')\ndef x(bot):\n    requests.get('u')\n";
        assert_eq!(graph_reach(&[("pkg/b.py", bot)], &[], 0, 5), Reach::Other);
    }

    #[test]
    fn private_functions_nothing_names_are_dead_but_callbacks_are_not() {
        let dead = "import requests\ndef _old():\n    requests.get('u')\n";
        assert_eq!(
            graph_reach(&[("p/a.py", dead)], &[], 0, 3),
            Reach::OperatorOnly
        );
        let cb = "import requests, threading\ndef _poll():\n    requests.get('u')\n\
                  def start():\n    threading.Thread(target=_poll).start()\n";
        assert_eq!(graph_reach(&[("p/a.py", cb)], &[], 0, 3), Reach::Other);
        // Public and undecorated, nothing calls it: a library's API.
        let api = "import requests\ndef get_thing():\n    requests.get('u')\n";
        assert_eq!(graph_reach(&[("p/a.py", api)], &[], 0, 3), Reach::Other);
    }

    #[test]
    fn a_class_the_package_re_exports_is_public_api() {
        let lib = "import requests\nclass KafkaConnect:\n    def get(self, u):\n        return requests.get(u)\n";
        let cli = "from kc.api import KafkaConnect\ndef main():\n    KafkaConnect().get('x')\n";
        let build = ["k = kc.cli:main"];
        let files = [("src/kc/api.py", lib), ("src/kc/cli.py", cli)];
        assert_eq!(graph_reach(&files, &build, 0, 4), Reach::OperatorOnly);
        let init = "from .api import KafkaConnect as KafkaConnect\n";
        let with_init = [files[0], files[1], ("src/kc/__init__.py", init)];
        assert_eq!(graph_reach(&with_init, &build, 0, 4), Reach::Other);
        // A re-export in a sub-package's `__init__.py` is not the project's API.
        let sub = [files[0], files[1], ("src/kc/x/__init__.py", init)];
        assert_eq!(graph_reach(&sub, &build, 0, 4), Reach::OperatorOnly);
        let f = facts("from .core import *\n");
        assert!(f.exports_all);
    }

    #[test]
    fn module_level_and_handler_tables_are_not_operator_roots() {
        let src = "import requests\ndef handle_logs():\n    requests.get('u')\nHANDLERS = {'logs': handle_logs}\n";
        assert_eq!(graph_reach(&[("p/a.py", src)], &[], 0, 3), Reach::Other);
        let top = "import requests\nrequests.get('u')\n";
        assert_eq!(graph_reach(&[("p/a.py", top)], &[], 0, 2), Reach::Other);
    }
}

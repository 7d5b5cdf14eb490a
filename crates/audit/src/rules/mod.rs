//! Rule engine: one walk over each syntax tree, dispatching every node to the rule
//! modules. Test code (by path or by attribute/annotation) is skipped unless asked for.

mod c_files;
mod crash;
mod dropped_persist;
mod durability;
mod durability_c_tools;
mod durability_cxx;
mod durability_flow;
mod durability_go;
mod durability_helpers;
mod durability_java;
mod durability_pairs;
mod durability_python;
mod durability_rust;
mod durability_streams;
mod error_handling;
mod exits;
mod go_files;
mod ignored_result;
mod interrupts;
mod interrupts_owned;
mod persist_logged;
mod retry;
mod state;
mod status_cpp;
mod timeout_evidence;
mod timeouts_go;
mod waiting;
mod waiting_python;

use crate::catalog::{self, Category, Severity};
use crate::finding::{fingerprint, Finding};
use crate::lang::Lang;
use crate::syntax::{self, Call};
use tree_sitter::{Node, Tree};

pub use durability_helpers::{resolve as resolve_helpers, HelperFacts};
pub use timeout_evidence::{is_root_script, is_script_path, ProjectTimeouts, TimeoutFacts};

/// Facts about the whole file that rules need (is this a program's entry file?).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileFacts {
    /// The file defines the program entry point (`main`, Go `package main`, a Python
    /// script with a shebang or `__main__` guard, a Rust `src/main.rs` or `src/bin/*`).
    pub is_program: bool,
    /// Functions/methods whose bodies were analysed (coverage).
    pub functions: usize,
    /// Python: the file makes a pipe (`os.pipe()`), so a `write` may go to one.
    pub makes_pipe: bool,
}

/// Per-file state handed to rules.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The text the tree was parsed from (C/C++: with macro idioms neutralized).
    pub src: &'a str,
    /// The file's original text, same length: snippets are cut from it.
    pub orig: &'a str,
    pub lang: Lang,
    pub path: &'a str,
    pub facts: FileFacts,
    pub findings: Vec<Finding>,
    /// Go: the file's own panic helpers (`func panicNow(err error) { ...; panic(err) }`),
    /// see [`crash::go_panic_helpers`].
    pub panic_helpers: Vec<String>,
    /// Go: struct fields declared `*os.File` in the file.
    pub os_file_fields: Vec<String>,
    /// The file's own rename helpers and aliases, see [`durability::rename_helpers`].
    pub rename_helpers: Vec<String>,
    /// Go: the file belongs to a logging package (`package logger`): its files are
    /// diagnostic logs, not state.
    pub go_logging_package: bool,
    /// Facts for the project pass over helpers defined in other files.
    pub helper_facts: durability_helpers::HelperFacts,
    /// Facts for the project pass over `no-timeout` findings.
    pub timeout_facts: timeout_evidence::TimeoutFacts,
}

impl<'a> Ctx<'a> {
    /// Source text of a node.
    pub fn text(&self, node: Node<'_>) -> &'a str {
        syntax::text(node, self.src)
    }

    /// View a node as a call.
    pub fn call<'t>(&self, node: Node<'t>) -> Option<Call<'t, 'a>> {
        syntax::call(node, self.src, self.lang)
    }

    /// Record a finding of `rule` at `node`.
    pub fn report(&mut self, rule: &'static str, node: Node<'_>, message: impl Into<String>) {
        let Some(info) = catalog::rule(rule) else {
            return;
        };
        // One finding per rule and line: `a.canonicalize().unwrap().to_str().unwrap()` is
        // one statement to fix, not two.
        let row = node.start_position().row + 1;
        if self
            .findings
            .iter()
            .any(|f| f.rule == info.id && f.line == row)
        {
            return;
        }
        if documented_decision(self.orig, node, self.lang, info.id) {
            return;
        }
        if info.id == catalog::WRITE_IN_PLACE && writes_pid_file(self.src, node, self.lang) {
            return;
        }
        let (category, severity): (Category, Severity) = (info.category, info.severity);
        let start = node.start_position();
        let end = node.end_position();
        let snippet = snippet_of(self.orig.get(node.byte_range()).unwrap_or(self.text(node)));
        let column = char_column(self.src, node.start_byte(), start.column);
        let end_column = char_column(self.src, node.end_byte(), end.column);
        self.findings.push(Finding {
            rule: info.id,
            category,
            severity,
            tier: catalog::tier(info.id, self.lang),
            lang: self.lang,
            path: self.path.to_string(),
            line: start.row + 1,
            column,
            end_line: end.row + 1,
            end_column,
            fingerprint: fingerprint(info.id, self.path, &snippet),
            snippet,
            message: message.into(),
        });
    }
}

/// Words that make a comment a documented decision ("ignore", "best effort", ...).
const DECISION_WORDS: &[&str] = &[
    "best effort",
    "best-effort",
    "deliberate",
    "intentional",
    "on purpose",
    "don't care",
    "do not care",
    "harmless",
    "cannot fail",
    "can't fail",
    "never fail",
    "not fail",
    "safe to",
    "not needed",
    "no need",
    "not necessary",
    "unnecessary",
    "expected to",
    "ok to",
    "okay to",
    "fine to",
    "on error",
    "nothing we can do",
    "nothing to do",
    "not critical",
    "no point",
    "doesn't matter",
    "does not matter",
    "# panics",
    "panics if",
    "panics when",
];

pub(super) fn is_decision_comment(comment: &str) -> bool {
    let l = comment.to_ascii_lowercase();
    if syntax::is_todo_comment(comment) {
        return false;
    }
    has_ignore_word(&l) || DECISION_WORDS.iter().any(|w| l.contains(w))
}

/// A comment that documents a call without a timeout as considered: it speaks of timeouts
/// ("server-side timeouts apply", "blocks until the peer answers: no timeout wanted"), or it
/// silences the linters' own no-timeout checks (Ruff/flake8-bandit `S113`, Bandit `B113`).
/// TODO/FIXME comments never count.
fn is_timeout_decision_comment(comment: &str) -> bool {
    // The rule ids themselves (`no-timeout`, `request-without-timeout`) are not words about
    // timeouts.
    let l = comment
        .to_ascii_lowercase()
        .replace(catalog::REQUEST_WITHOUT_TIMEOUT, "")
        .replace(catalog::NO_TIMEOUT, "");
    // `# pylint: enable=missing-timeout` turns the linter's check back on: the opposite of a
    // decision.
    let reenables = l.contains("enable=") && !l.contains("disable=");
    !syntax::is_todo_comment(comment)
        && !reenables
        && (l.contains("timeout")
            || l.contains("time out")
            || l.contains("time-out")
            || l.contains("s113")
            || l.contains("b113"))
}

/// "ignore", "ignored", "ignoring" as words (not a rule id such as `ignored-result`) in a
/// lowercase text; also "best effort", "harmless", "not critical". Used for log messages,
/// which say what the handler decided ("Ignoring interrupt during shutdown").
pub(super) fn says_ignored(text: &str) -> bool {
    let l = text.to_ascii_lowercase();
    has_ignore_word(&l)
        || ["best effort", "best-effort", "harmless", "not critical"]
            .iter()
            .any(|w| l.contains(w))
}

fn has_ignore_word(l: &str) -> bool {
    l.match_indices("ignor").any(|(i, _)| {
        let before_ok = i == 0 || !l.as_bytes()[i - 1].is_ascii_alphabetic();
        let rest = &l[i..];
        let word_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let word = &rest[..word_len];
        let next = rest[word_len..].chars().next();
        before_ok
            && matches!(word, "ignore" | "ignored" | "ignores" | "ignoring")
            && next != Some('-')
    })
}

/// The comment lines directly above byte `at` (no blank line in between), joined.
pub(super) fn comment_above(src: &str, at: usize, lang: Lang) -> String {
    let line_start = src[..at].rfind('\n').map_or(0, |i| i + 1);
    let mut out = String::new();
    let mut end = line_start;
    while end > 0 {
        let prev_start = src[..end - 1].rfind('\n').map_or(0, |i| i + 1);
        let line = src[prev_start..end - 1].trim();
        // Rust attributes and Java annotations between the comment and the statement
        // (`#[cfg(unix)]`, `@SuppressWarnings`) do not separate them.
        let is_attribute = match lang {
            Lang::Rust => line.starts_with("#[") && line.ends_with(']'),
            Lang::Java => line.starts_with('@') && !line.contains(' '),
            _ => false,
        };
        if is_attribute {
            end = prev_start;
            continue;
        }
        let is_comment = match lang {
            Lang::Python => line.starts_with('#'),
            _ => {
                line.starts_with("//")
                    || line.starts_with("/*")
                    || line.starts_with('*')
                    || line.ends_with("*/")
            }
        };
        if !is_comment {
            break;
        }
        out.push_str(line);
        out.push('\n');
        end = prev_start;
    }
    out
}

/// Whether the authors documented the flagged statement as deliberate: a comment directly
/// above it or at the end of its line, or the enclosing function's doc comment/docstring,
/// says why ("ignored", "best effort", "cannot fail", "# Panics", ...). TODO/FIXME comments
/// never count. For `no-timeout`, a comment above or at the end of the line that speaks of
/// timeouts also counts (see [`is_timeout_decision_comment`]).
fn documented_decision(src: &str, node: Node<'_>, lang: Lang, rule: &str) -> bool {
    // The statement that holds the node: climb while the parent starts on the same line.
    let mut stmt = node;
    while let Some(p) = stmt.parent() {
        if p.start_position().row != node.start_position().row || p.parent().is_none() {
            break;
        }
        stmt = p;
    }
    let at = stmt.start_byte().min(src.len());
    if !src.is_char_boundary(at) {
        return false;
    }
    let on_timeouts = catalog::is_wait_without_timeout(rule);
    // `catch (InterruptedException e) {} // ignore`: no reason for a lost interrupt.
    let bare_interrupt = |c: &str| {
        rule == catalog::LOST_INTERRUPT && c.contains("ignor") && error_handling::is_bare_ignore(c)
    };
    let decides = |c: &str| {
        (is_decision_comment(c) && !bare_interrupt(c))
            || (on_timeouts && is_timeout_decision_comment(c))
    };
    if decides(&comment_above(src, at, lang)) {
        return true;
    }
    // A comment at the end of the statement's first line.
    let line_end = src[at..].find('\n').map_or(src.len(), |i| at + i);
    let line = &src[at..line_end];
    let trailing = match lang {
        Lang::Python => line.find(" #").map(|i| &line[i..]),
        _ => line
            .find("//")
            .or_else(|| line.find("/*"))
            .map(|i| &line[i..]),
    };
    if trailing.is_some_and(decides) {
        return true;
    }
    // The enclosing function's doc.
    let Some(func) = syntax::enclosing_function(node, lang) else {
        return false;
    };
    if on_timeouts && lang == Lang::Python && pylint_disables_timeout(src, func.start_byte(), at) {
        return true;
    }
    let doc = if lang == Lang::Python {
        func.child_by_field_name("body")
            .and_then(|b| b.named_child(0))
            .filter(|e| e.kind() == "expression_statement")
            .and_then(|e| e.named_child(0))
            .filter(|s| s.kind() == "string")
            .map(|s| syntax::text(s, src).to_string())
            .unwrap_or_default()
    } else {
        comment_above(src, func.start_byte().min(src.len()), lang)
    };
    is_decision_comment(&doc)
}

/// Whether a write names a pid file (a `pid` word in the written statement or the enclosing
/// function's name: `WritePidFile`, `storePid`, `open(config.pid_path, "w")`): a pid file is
/// rewritten from the live process at every start and means nothing after a crash, so writing
/// it in place loses no state (labels: consul-template, immortal, centrifugo, hypercorn,
/// virtiofsd, l2tpns, munge; 11 FPs of `write-in-place` in C, Go, Python and Rust, no TP).
fn writes_pid_file(src: &str, node: Node<'_>, lang: Lang) -> bool {
    let func = syntax::enclosing_function_name(node, src, lang).unwrap_or("");
    let stmt = src.get(node.byte_range()).unwrap_or("");
    [func, stmt].iter().any(|t| {
        syntax::ident_words(t)
            .iter()
            .any(|w| matches!(w.as_str(), "pid" | "pidfile" | "pidpath"))
    })
}

/// Whether an own-line `# pylint: disable=missing-timeout` (or `W3101`) comment between
/// byte `from` (the enclosing function's start) and byte `to` (the statement), not followed by
/// a `# pylint: enable=..` of the same check, switches Pylint's own no-timeout check off for
/// the rest of the function: the authors decided it. (Pylint scopes an own-line disable to its
/// block; the function is a coarser scope.)
fn pylint_disables_timeout(src: &str, from: usize, to: usize) -> bool {
    let Some(body) = src.get(from..to) else {
        return false;
    };
    let mut disabled = false;
    for l in body.lines() {
        let l = l.trim_start().to_ascii_lowercase();
        if !(l.starts_with('#')
            && l.contains("pylint:")
            && (l.contains("missing-timeout") || l.contains("w3101")))
        {
            continue;
        }
        if l.contains("disable") {
            disabled = true;
        } else if l.contains("enable") {
            disabled = false;
        }
    }
    disabled
}

/// 1-based column in code points of byte offset `byte` whose byte column is `byte_col`.
fn char_column(src: &str, byte: usize, byte_col: usize) -> usize {
    let line_start = byte.saturating_sub(byte_col);
    src.get(line_start..byte)
        .map_or(byte_col, |s| s.chars().count())
        + 1
}

/// At most 3 lines of at most 160 characters each.
fn snippet_of(text: &str) -> String {
    const MAX_LINES: usize = 3;
    const MAX_CHARS: usize = 160;
    let mut out = String::new();
    let mut lines = text.lines();
    for (i, line) in lines.by_ref().take(MAX_LINES).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.chars().count() > MAX_CHARS {
            out.extend(line.chars().take(MAX_CHARS));
            out.push_str(" ...");
        } else {
            out.push_str(line);
        }
    }
    if lines.next().is_some() {
        out.push_str(" ...");
    }
    out
}

/// Run every rule over `tree`. `skip_tests` leaves out test functions/modules found
/// inside the file (whole test files are filtered by the caller).
pub fn check_tree(
    tree: &Tree,
    src: &str,
    orig: &str,
    lang: Lang,
    path: &str,
    skip_tests: bool,
) -> (Vec<Finding>, FileFacts, HelperFacts, TimeoutFacts) {
    let root = tree.root_node();
    let mut ctx = Ctx {
        src,
        orig: if orig.len() == src.len() { orig } else { src },
        lang,
        path,
        facts: file_facts(root, src, lang, path),
        findings: Vec::new(),
        panic_helpers: if lang == Lang::Go {
            crash::go_panic_helpers(src)
        } else {
            Vec::new()
        },
        os_file_fields: if lang == Lang::Go {
            go_files::os_file_fields(root, src)
        } else {
            Vec::new()
        },
        rename_helpers: durability::rename_helpers(root, src, lang),
        go_logging_package: lang == Lang::Go && go_files::is_logging_package(root, src),
        helper_facts: durability_helpers::HelperFacts::default(),
        timeout_facts: timeout_evidence::file_facts(src, lang),
    };
    let mut cursor = root.walk();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    loop {
        let node = cursor.node();
        let mut descend = true;
        if skip_depth.is_none() {
            if skip_tests && is_test_region(node, src, lang) {
                skip_depth = Some(depth);
                descend = false;
            } else if !node.is_error() {
                // Inside an ERROR node the well-formed subtrees are still checked (partial
                // parse trees); the ERROR node itself is not.
                if is_function(node.kind()) {
                    ctx.facts.functions += 1;
                }
                check_node(&mut ctx, node);
            }
        }
        if descend && skip_depth.is_none() && cursor.goto_first_child() {
            depth += 1;
            continue;
        }
        loop {
            if skip_depth == Some(depth) {
                skip_depth = None;
            }
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                durability_flow::check_file(&mut ctx, root, &|n| {
                    skip_tests && is_test_region(n, src, lang)
                });
                return (ctx.findings, ctx.facts, ctx.helper_facts, ctx.timeout_facts);
            }
            depth -= 1;
        }
    }
}

/// Node kinds that are functions or methods with a body, in the six grammars.
fn is_function(kind: &str) -> bool {
    matches!(
        kind,
        "function_definition"
            | "function_item"
            | "function_declaration"
            | "method_declaration"
            | "constructor_declaration"
            | "func_literal"
            | "lambda_expression"
            | "closure_expression"
    )
}

fn check_node(ctx: &mut Ctx<'_>, node: Node<'_>) {
    if !node.is_named() {
        return;
    }
    let call = ctx.call(node);
    let handler = syntax::handler(node, ctx.src, ctx.lang);
    if let Some(h) = handler.as_ref() {
        error_handling::check(ctx, h);
        persist_logged::check(ctx, h);
    }
    if let Some(c) = call.as_ref() {
        exits::check_abort_in_handler(ctx, c);
    }
    ignored_result::check(ctx, node);
    status_cpp::check(ctx, node);
    crash::check(ctx, node, call.as_ref());
    waiting::check(ctx, node, call.as_ref());
    retry::check(ctx, node);
    durability::check(ctx, node);
    if ctx.lang == Lang::Go {
        go_files::check(ctx, node);
    }
    if matches!(ctx.lang, Lang::C | Lang::Cpp) {
        c_files::check(ctx, node);
    }
    state::check(ctx, node);
}

/// Whether `node` starts a test function/module: Rust `#[test]`, `#[cfg(test)]`,
/// `#[tokio::test]`; Java `@Test`-family annotations and `static void main(String[])`; Python `test_*` functions and `Test*`
/// classes; Go `Test*`/`Benchmark*`/`Fuzz*` functions.
fn is_test_region(node: Node<'_>, src: &str, lang: Lang) -> bool {
    match (lang, node.kind()) {
        (Lang::Rust, "function_item" | "mod_item" | "impl_item") => {
            let mut prev = node.prev_sibling();
            while let Some(p) = prev {
                if p.kind() != "attribute_item" && !syntax::is_comment(p) {
                    break;
                }
                if p.kind() == "attribute_item" {
                    let a = syntax::text(p, src)
                        .trim_start_matches("#[")
                        .trim_end_matches(']')
                        .trim();
                    if a == "test"
                        || a.ends_with("::test")
                        || a.starts_with("test_case")
                        || (a.starts_with("cfg(") && a.contains("test") && !a.contains("not(test"))
                    {
                        return true;
                    }
                }
                prev = p.prev_sibling();
            }
            node.kind() == "mod_item"
                && node
                    .child_by_field_name("name")
                    .is_some_and(|n| syntax::text(n, src) == "tests")
        }
        (Lang::Java, "method_declaration" | "class_declaration") => {
            if is_java_main(node, src) {
                return true;
            }
            let mut c = node.walk();
            let Some(mods) = node
                .named_children(&mut c)
                .find(|n| n.kind() == "modifiers")
            else {
                return false;
            };
            let mut c2 = mods.walk();
            let found = mods.named_children(&mut c2).any(|m| {
                matches!(m.kind(), "marker_annotation" | "annotation")
                    && m.child_by_field_name("name").is_some_and(|n| {
                        let t = syntax::text(n, src);
                        t.ends_with("Test")
                            || t == "Before"
                            || t == "After"
                            || t.starts_with("BeforeEach")
                            || t.starts_with("AfterEach")
                    })
            });
            found
        }
        (Lang::Python, "function_definition") => node
            .child_by_field_name("name")
            .is_some_and(|n| syntax::text(n, src).starts_with("test_")),
        (Lang::Python, "class_definition") => node
            .child_by_field_name("name")
            .is_some_and(|n| syntax::text(n, src).starts_with("Test")),
        (Lang::Go, "function_declaration") => node.child_by_field_name("name").is_some_and(|n| {
            let t = syntax::text(n, src);
            ["Test", "Benchmark", "Fuzz", "Example"]
                .iter()
                .any(|p| t.starts_with(p))
                && node
                    .child_by_field_name("parameters")
                    .is_some_and(|p| syntax::text(p, src).contains("testing."))
        }),
        _ => false,
    }
}

/// Java `static void main(String[] args)`: in a library class it is a demo, manual test or
/// tool launcher, not the code path of the library (a program's own `main` only parses
/// arguments and hands over to other methods, which are still audited).
fn is_java_main(node: Node<'_>, src: &str) -> bool {
    node.kind() == "method_declaration"
        && node
            .child_by_field_name("name")
            .is_some_and(|n| syntax::text(n, src) == "main")
        && node
            .child_by_field_name("parameters")
            .is_some_and(|p| syntax::text(p, src).contains("String"))
        && {
            let mut c = node.walk();
            let is_static = node
                .named_children(&mut c)
                .any(|m| m.kind() == "modifiers" && syntax::text(m, src).contains("static"));
            is_static
        }
}

/// Modules whose import marks a file as command-line program code.
const CLI_IMPORTS: &[&str] = &[
    "argparse",
    "optparse",
    "getopt",
    "click",
    "typer",
    "fire",
    "docopt",
    "flag",
    "github.com/spf13/cobra",
    "github.com/urfave/cli",
    "gopkg.in/alecthomas/kingpin.v2",
    "github.com/alecthomas/kingpin",
];

fn file_facts(root: Node<'_>, src: &str, lang: Lang, path: &str) -> FileFacts {
    let top = syntax::named_children_no_comments(root);
    let dir_says_program = std::path::Path::new(path).parent().is_some_and(|p| {
        p.components().any(|c| {
            c.as_os_str().to_str().is_some_and(|s| {
                matches!(s, "cmd" | "cli" | "tools" | "tool" | "scripts" | "bin")
                    || s.ends_with("ctl")
                    || s.ends_with("main")
            })
        })
    });
    let is_program = match lang {
        Lang::C | Lang::Cpp => top.iter().any(|n| {
            n.kind() == "function_definition"
                && syntax::function_name(*n, src, lang) == Some("main")
        }),
        Lang::Go => {
            dir_says_program
                || top.iter().any(|n| {
                    (n.kind() == "package_clause"
                        && n.named_child(0)
                            .is_some_and(|p| syntax::text(p, src) == "main"))
                        || (n.kind() == "import_declaration" && {
                            let mut found = false;
                            syntax::for_each_in_body(*n, lang, |m| {
                                if m.kind() == "interpreted_string_literal" {
                                    let t = syntax::text(m, src).trim_matches('"');
                                    found |= CLI_IMPORTS
                                        .iter()
                                        .any(|c| t == *c || t.starts_with(&format!("{c}/")));
                                }
                                !found
                            });
                            found
                        })
                })
        }
        Lang::Python => {
            src.starts_with("#!")
                || dir_says_program
                || path.ends_with("__main__.py")
                || top.iter().any(|n| {
                    (n.kind() == "if_statement" && is_main_guard(*n, src))
                        || (matches!(n.kind(), "import_statement" | "import_from_statement")
                            && n.child_by_field_name("name")
                                .or_else(|| n.child_by_field_name("module_name"))
                                .is_some_and(|m| {
                                    let t = syntax::text(m, src);
                                    CLI_IMPORTS.contains(&t.split(['.', ' ']).next().unwrap_or(t))
                                }))
                })
        }
        Lang::Rust => {
            top.iter().any(|n| {
                n.kind() == "function_item"
                    && n.child_by_field_name("name")
                        .is_some_and(|m| syntax::text(m, src) == "main")
            }) || path.ends_with("src/main.rs")
                || path.contains("src/bin/")
                || path.ends_with("build.rs")
                || path == "main.rs"
        }
        Lang::Java => false,
    };
    FileFacts {
        is_program,
        functions: 0,
        makes_pipe: lang == Lang::Python && src.contains("os.pipe()"),
    }
}

/// Python `if __name__ == "__main__":`.
pub fn is_main_guard(node: Node<'_>, src: &str) -> bool {
    node.child_by_field_name("condition").is_some_and(|c| {
        let t = syntax::text(c, src);
        t.contains("__name__") && t.contains("__main__")
    })
}

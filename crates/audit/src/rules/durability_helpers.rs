//! Durability through a project's own write helpers defined in another file: cloud-init's
//! `util.write_file(path, ..)`, dhcpcd's `writefile(ctx, file, ..)`, Java
//! `FileUtils.writeStringToFile(content, path)`. While a file is parsed, two cheap facts are
//! kept: "function NAME truncates and rewrites its path parameter N and never fsyncs" and
//! "a call to NAME passes a state-named path as argument N" (with its finding ready). After
//! all files of one project are parsed, [`resolve`] keeps the call sites whose callee and
//! argument position match a helper of the same project and language (no re-parsing; one
//! hash set per project).

use super::durability::{is_persistence_name, is_truncating_open, says_temporary};
use super::Ctx;
use crate::catalog::WRITE_IN_PLACE;
use crate::finding::Finding;
use crate::lang::Lang;
use crate::syntax::{self, Call};
use std::collections::{HashMap, HashSet};
use tree_sitter::Node;

/// A helper that rewrites its path parameter in place without fsync.
#[derive(Debug, Clone)]
pub struct WriterFact {
    pub name: String,
    /// Position of the path parameter (Python: `self`/`cls` not counted).
    pub param: usize,
    pub path: String,
    pub line: usize,
    /// Reported at the helper's open when some call site passes a state path.
    pub finding: Finding,
}

/// A call passing a state-named path, reported only if its callee is a [`WriterFact`].
#[derive(Debug, Clone)]
pub struct SiteFact {
    pub callee: String,
    pub arg: usize,
    pub arg_text: String,
    pub finding: Finding,
}

/// The facts one file contributes to the project pass.
#[derive(Debug, Clone, Default)]
pub struct HelperFacts {
    pub writers: Vec<WriterFact>,
    pub sites: Vec<SiteFact>,
}

/// Path words that say the file is kept state read back later.
const STATE_WORDS: &[&str] = &[
    "state",
    "config",
    "conf",
    "cfg",
    "lease",
    "duid",
    "meta",
    "metadata",
    "manifest",
    "checkpoint",
    "snapshot",
    "registry",
    "ledger",
    "offsets",
    "cursor",
    "keyring",
    "settings",
    "db",
    "database",
];

/// Callee name parts of write helpers.
const WRITER_WORDS: &[&str] = &["write", "save", "put", "store", "dump", "persist", "file"];

/// Cheap first test (no allocation) before splitting words.
const STATE_STEMS: &[&str] = &[
    "stat",
    "conf",
    "cfg",
    "lease",
    "duid",
    "meta",
    "manifest",
    "checkpoint",
    "snapshot",
    "registry",
    "ledger",
    "offset",
    "cursor",
    "keyring",
    "setting",
    "db",
    "database",
];

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The argument text names a state file (`state->leasefile`, `CONFIG_PATH`,
/// `"/var/lib/app/state.json"`), and not a temporary one.
pub(super) fn is_state_path(text: &str) -> bool {
    if text.len() > 160 || says_temporary(text) || !STATE_STEMS.iter().any(|s| contains_ci(text, s))
    {
        return false;
    }
    syntax::ident_words(text).iter().any(|w| {
        STATE_WORDS.contains(&w.as_str())
            || (w.len() > 5
                && [
                    "state",
                    "config",
                    "lease",
                    "meta",
                    "checkpoint",
                    "snapshot",
                    "manifest",
                ]
                .iter()
                .any(|s| w.starts_with(s) || w.ends_with(s)))
    })
}

/// Python: `open(path, omode)` whose mode is a parameter with a writing default
/// (`omode="wb"`).
fn python_mode_param_open(ctx: &Ctx<'_>, func: Node<'_>, c: &Call<'_, '_>) -> bool {
    if ctx.lang != Lang::Python || c.name != "open" || !c.qual.is_empty() {
        return false;
    }
    let args = c.arg_nodes();
    let Some(mode) = args.get(1).filter(|a| a.kind() == "identifier") else {
        return false;
    };
    let mode = ctx.text(*mode);
    let Some(params) = func.child_by_field_name("parameters") else {
        return false;
    };
    syntax::named_children_no_comments(params).iter().any(|p| {
        p.kind() == "default_parameter"
            && p.child_by_field_name("name")
                .is_some_and(|n| ctx.text(n) == mode)
            && p.child_by_field_name("value").is_some_and(|v| {
                let t = ctx.text(v);
                (t.starts_with('"') || t.starts_with('\'')) && t.contains('w')
            })
    })
}

/// Java: `new PrintWriter(path)` / `new PrintStream(path)` on a `String` or `File`
/// parameter, which truncates the file.
fn java_print_writer_of_path(ctx: &Ctx<'_>, func: Node<'_>, c: &Call<'_, '_>) -> bool {
    if ctx.lang != Lang::Java
        || c.kind != syntax::CallKind::New
        || !matches!(c.name, "PrintWriter" | "PrintStream")
    {
        return false;
    }
    let args = c.arg_nodes();
    let Some(first) = args
        .first()
        .filter(|_| args.len() <= 2)
        .map(|a| ctx.text(*a))
    else {
        return false;
    };
    let Some(params) = func.child_by_field_name("parameters") else {
        return false;
    };
    syntax::named_children_no_comments(params).iter().any(|p| {
        p.child_by_field_name("name")
            .is_some_and(|n| ctx.text(n) == first)
            && p.child_by_field_name("type")
                .is_some_and(|t| matches!(ctx.text(t), "String" | "File"))
    })
}

/// Record what function `func` (named `name`, with body calls `calls`) contributes: a
/// writer fact if it truncates a path parameter and neither syncs nor renames, and the
/// state-named call sites of its body.
pub(super) fn record(
    ctx: &mut Ctx<'_>,
    func: Node<'_>,
    name: &str,
    calls: &[Call<'_, '_>],
    open: Option<&Call<'_, '_>>,
) {
    record_writer(ctx, func, name, calls, open);
    let mut persisting: Option<bool> = None;
    for c in calls {
        // Only callees whose name says they write (`write_file`, `nng_file_put`,
        // `string2File`, `saveState`) can be write helpers: a cheap filter before any
        // argument is looked at.
        if c.name == name
            || c.kind == syntax::CallKind::Macro
            || !WRITER_WORDS.iter().any(|w| contains_ci(c.name, w))
            // Bare verbs are mostly other things' methods (`db.Write(ctx, fn)`, `map.put`).
            || WRITER_WORDS.iter().any(|w| c.name.eq_ignore_ascii_case(w))
            || is_truncating_open(ctx, c)
        {
            continue;
        }
        let persisting = *persisting.get_or_insert_with(|| is_persistence_name(name, None));
        let args = c.arg_nodes();
        // A state-named path argument, or any path argument of a call made by a function
        // whose name says it persists (`save_state`, `storeConfig`).
        let state: Vec<usize> = args
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                let t = ctx.text(**a);
                a.kind() != "keyword_argument"
                    && t.len() <= 160
                    && !t.contains('{')
                    && (persisting || is_state_path(ctx.text(**a)))
                    && !says_temporary(ctx.text(**a))
            })
            .map(|(i, _)| i)
            .collect();
        if state.is_empty() {
            continue;
        }
        let before = ctx.findings.len();
        ctx.report(WRITE_IN_PLACE, c.node, String::new());
        if ctx.findings.len() > before {
            if let Some(finding) = ctx.findings.pop() {
                for arg in state {
                    ctx.helper_facts.sites.push(SiteFact {
                        callee: c.name.to_string(),
                        arg,
                        arg_text: ctx.text(args[arg]).chars().take(80).collect(),
                        finding: finding.clone(),
                    });
                }
            }
        }
    }
}

fn record_writer(
    ctx: &mut Ctx<'_>,
    func: Node<'_>,
    name: &str,
    calls: &[Call<'_, '_>],
    open: Option<&Call<'_, '_>>,
) {
    let Some(open) = open.or_else(|| match ctx.lang {
        Lang::Python | Lang::Java => calls.iter().find(|c| {
            python_mode_param_open(ctx, func, c) || java_print_writer_of_path(ctx, func, c)
        }),
        _ => None,
    }) else {
        return;
    };
    if calls.iter().any(|c| {
        let l = c.name.to_ascii_lowercase();
        l.contains("sync") || l == "force" || super::durability::is_rename(ctx, c)
    }) {
        return;
    }
    let Some(first) = open.arg_nodes().first().map(|a| ctx.text(*a)) else {
        return;
    };
    // The path is the parameter itself, or wrapped once (`new File(path)`, `Paths.get(path)`).
    let inner = first
        .strip_suffix(')')
        .and_then(|t| t.rsplit_once('('))
        .map_or(first, |(_, p)| p);
    if inner.is_empty()
        || !inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return;
    }
    let Some(param) = super::durability_flow::param_index(ctx, func, inner) else {
        return;
    };
    let before = ctx.findings.len();
    ctx.report(
        WRITE_IN_PLACE,
        open.node,
        format!("`{name}` truncates its path argument and rewrites it in place without fsync"),
    );
    if ctx.findings.len() > before {
        if let Some(finding) = ctx.findings.pop() {
            ctx.helper_facts.writers.push(WriterFact {
                name: name.to_string(),
                param,
                path: ctx.path.to_string(),
                line: open.node.start_position().row + 1,
                finding,
            });
        }
    }
}

/// The project pass: `files` are the facts of each checked file with its language and its
/// project key (files of different projects never resolve to each other). Returns the call
/// sites whose callee is a writer helper of the same project and language, with the helper
/// named in the message.
pub fn resolve(files: Vec<(&str, Lang, HelperFacts)>) -> Vec<Finding> {
    let mut writers: HashMap<(&str, Lang, &str, usize), &WriterFact> = HashMap::new();
    for (key, lang, facts) in &files {
        for w in &facts.writers {
            writers
                .entry((key, *lang, w.name.as_str(), w.param))
                .or_insert(w);
        }
    }
    let mut out = Vec::new();
    let mut seen: HashSet<(String, usize)> = HashSet::new();
    for (key, lang, facts) in &files {
        for s in &facts.sites {
            let Some(w) = writers.get(&(*key, *lang, s.callee.as_str(), s.arg)) else {
                continue;
            };
            let mut f = s.finding.clone();
            if !seen.insert((f.path.clone(), f.line)) {
                continue;
            }
            f.message = format!(
                "`{}` is rewritten in place through the project's helper `{}` ({}:{}), which truncates its path argument and never fsyncs it: a crash mid-write loses both old and new state",
                s.arg_text, s.callee, w.path, w.line
            );
            // The helper itself, once, with the first state call site as evidence.
            let mut h = w.finding.clone();
            if seen.insert((h.path.clone(), h.line)) {
                h.message = format!(
                    "{}, and is called on a state file ({}:{}): a crash mid-write loses both old and new state",
                    h.message, f.path, f.line
                );
                out.push(h);
            }
            out.push(f);
        }
    }
    out
}

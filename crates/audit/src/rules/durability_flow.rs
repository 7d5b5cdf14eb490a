//! Durability by data flow, not by function names: a file opened for a truncating write
//! (`open(p, 'w')`, `O_TRUNC`, `os.Create`, `new FileOutputStream(f)`, `fs::write`) whose
//! path is also opened for reading elsewhere in the same file is state the program reads
//! back (at startup, recovery, or on the next call), rewritten in place: a crash mid-write
//! leaves it torn or empty.
//!
//! "The same path" is decided on the path *expressions*: each path argument is resolved
//! through local assignments (`File f = new File(dir, VERSION)`), and through the callers
//! in this file when it is a parameter (`writeToFile(versionFile)`); the file-specific parts
//! that remain (constants, string literals, fields) are the path's keys. A write and a read
//! that share a key are the same file. Generic words (`path`, `dir`, `file`, `self`, ...)
//! are never keys.

use super::durability::{is_rename, is_truncating_open, says_temporary};
use super::{
    durability_c_tools, durability_cxx, durability_go, durability_pairs, durability_streams, Ctx,
};
use crate::catalog::WRITE_IN_PLACE;
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind};
use std::collections::BTreeSet;
use tree_sitter::Node;

/// Cheap text markers of a truncating write; files without any are not analysed.
const WRITE_MARKERS: &[&str] = &[
    "O_TRUNC",
    "fopen",
    "creat(",
    "Create(",
    "WriteFile(",
    "FileOutputStream",
    "FileWriter",
    "Files.write",
    "Files.newOutputStream",
    "Files.newBufferedWriter",
    "Files.asCharSink",
    "Files.asByteSink",
    "File::create",
    "fs::write",
    "write_text",
    "write_bytes",
    "open(",
    "fstream",
];

/// Identifier tokens that say nothing about which file a path is.
const STOP: &[&str] = &[
    "path",
    "paths",
    "file",
    "files",
    "filename",
    "filenames",
    "fname",
    "name",
    "names",
    "dir",
    "dirs",
    "dirname",
    "directory",
    "dirpath",
    "root",
    "base",
    "basedir",
    "self",
    "this",
    "super",
    "cls",
    "os",
    "join",
    "new",
    "get",
    "str",
    "string",
    "format",
    "sprintf",
    "snprintf",
    "filepath",
    "pathlib",
    "open",
    "data",
    "mode",
    "encoding",
    "utf",
    "utf8",
    "as_ref",
    "as_path",
    "to_path_buf",
    "clone",
    "into",
    "to_string",
    "to_owned",
    "display",
    "path_join",
    "abspath",
    "realpath",
    "expanduser",
    "fmt",
    "Sprintf",
    "Join",
    "File",
    "Path",
    "Paths",
    "PathBuf",
    "toFile",
    "toPath",
    "getPath",
    "getAbsolutePath",
    "resolve",
    "tmp",
    "temp",
    "true",
    "false",
    "None",
    "nil",
    "null",
    "NULL",
    "const",
    "char",
    "int",
    "err",
    "ctx",
    "args",
    "arg",
    "val",
    "value",
    "key",
    "json",
    "txt",
    "dat",
    "bin",
    "conf",
    "cfg",
    "the",
    "and",
    "for",
    "with",
    "from",
    "std",
    "env",
    "var",
    "fs",
    "io",
    "Some",
    "unwrap",
    "expect",
    "ok",
    "map",
    "let",
    "mut",
    "ref",
    "dst",
    "src",
    "target",
    "dest",
    "out",
    "output",
    "input",
    "res",
    "result",
    "String",
    "getName",
    "toString",
    "valueOf",
    "UTF_8",
    "O_WRONLY",
    "O_RDONLY",
    "O_RDWR",
    "O_CREAT",
    "O_TRUNC",
    "O_CLOEXEC",
    "O_APPEND",
    "O_SYNC",
    "O_EXCL",
    "S_IRUSR",
    "S_IWUSR",
    "os.O_WRONLY",
    "ModePerm",
    "FileMode",
];

/// Key of paths under `/sys`, `/proc`, `/dev`, `/run`: such writes are never reported.
const KERNEL_FILE: &str = "<kernel interface>";

/// A path-taking file open: the call and its path argument.
struct Open<'t> {
    call: Node<'t>,
    path: Node<'t>,
}

/// Whether `c` opens a file for reading; its path argument.
fn read_open<'t>(ctx: &Ctx<'_>, c: &Call<'t, '_>) -> Option<Node<'t>> {
    let args = c.arg_nodes();
    let first = args.first().copied();
    let text = |i: usize| args.get(i).map(|a| ctx.text(*a)).unwrap_or("");
    match ctx.lang {
        Lang::C | Lang::Cpp => match c.name {
            "fopen" => {
                let m = text(1);
                (m.contains('r') && !m.contains('w') && !m.contains('a')).then_some(first?)
            }
            "open" => {
                let flags = text(1);
                (!flags.contains("O_WRONLY")
                    && !flags.contains("O_TRUNC")
                    && !flags.contains("O_CREAT"))
                .then_some(first?)
            }
            _ => None,
        },
        Lang::Python => {
            if c.name == "open" && matches!(c.qual, "" | "io" | "codecs") {
                let mode = args
                    .iter()
                    .find(|a| {
                        a.kind() == "keyword_argument"
                            && a.child_by_field_name("name")
                                .is_some_and(|n| ctx.text(n) == "mode")
                    })
                    .and_then(|a| a.child_by_field_name("value"))
                    .map(|v| ctx.text(v))
                    .or_else(|| {
                        args.get(1)
                            .filter(|a| a.kind() == "string")
                            .map(|a| ctx.text(*a))
                    })
                    .unwrap_or("'r'");
                return (!mode.contains('w') && !mode.contains('a') && !mode.contains('x'))
                    .then_some(first?);
            }
            if matches!(c.name, "read_text" | "read_bytes") {
                return c.receiver;
            }
            None
        }
        Lang::Go => (c.is("os", "Open") || c.is("os", "ReadFile") || c.is("ioutil", "ReadFile"))
            .then_some(first?),
        Lang::Rust => {
            let fs = c.qual == "fs" || c.qual.ends_with("::fs");
            ((c.name == "open" && c.qual.ends_with("File"))
                || (fs && matches!(c.name, "read" | "read_to_string")))
            .then_some(first?)
        }
        Lang::Java => match (c.kind, c.name) {
            (CallKind::New, "FileInputStream" | "FileReader") => first,
            (CallKind::New, "RandomAccessFile") => text(1).contains("\"r\"").then_some(first?),
            (
                CallKind::Call,
                "readAllBytes" | "readAllLines" | "readString" | "newInputStream"
                | "newBufferedReader" | "lines",
            ) if c.qual == "Files" => first,
            _ => None,
        },
    }
}

/// The path argument of a truncating open (`openat`: the second argument).
fn write_path<'t>(c: &Call<'t, '_>) -> Option<Node<'t>> {
    let args = c.arg_nodes();
    if c.name == "openat" {
        return args.get(1).copied();
    }
    if matches!(c.name, "write_text" | "write_bytes") {
        return c.receiver;
    }
    args.first().copied()
}

/// Identifier tokens of a text.
fn idents(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| {
            t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        })
}

/// The file name part of a string literal's text: after the last `/`, quotes and prefixes
/// removed (`"%s/state.json"` -> `state.json`); `None` when it names no file (empty, only
/// an extension, no letters).
fn literal_basename(lit: &str) -> Option<String> {
    let t = lit.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    let t = t.trim_matches(|c| c == '"' || c == '\'' || c == '`');
    let base = t.rsplit(['/', '\\']).next().unwrap_or(t);
    let ok = base.len() >= 3
        && !base.starts_with('.')
        && base.chars().filter(|c| c.is_ascii_alphabetic()).count() >= 3;
    ok.then(|| base.to_string())
}

fn is_string_node(kind: &str) -> bool {
    matches!(
        kind,
        "string" | "string_literal" | "interpreted_string_literal" | "raw_string_literal"
    )
}

/// Names a local assignment/declaration in `func` binds to `name`: the right-hand sides.
fn local_values<'t>(ctx: &Ctx<'_>, func: Node<'t>, name: &str) -> Vec<Node<'t>> {
    let mut out = Vec::new();
    syntax::for_each_in_body(func, ctx.lang, |n| {
        let (lhs, rhs) = match n.kind() {
            "let_declaration" => (
                n.child_by_field_name("pattern"),
                n.child_by_field_name("value"),
            ),
            "variable_declarator" => (
                n.child_by_field_name("name"),
                n.child_by_field_name("value"),
            ),
            "init_declarator" => (
                n.child_by_field_name("declarator"),
                n.child_by_field_name("value"),
            ),
            "assignment"
            | "assignment_expression"
            | "short_var_declaration"
            | "assignment_statement" => (
                n.child_by_field_name("left"),
                n.child_by_field_name("right"),
            ),
            _ => (None, None),
        };
        // Go `a, b := x, y`: the value at the name's position.
        let (lhs, rhs) = match (lhs, rhs) {
            (Some(l), Some(r)) if l.kind() == "expression_list" => {
                go_list_item(ctx, l, r, name).map_or((None, None), |(l, r)| (Some(l), Some(r)))
            }
            pair => pair,
        };
        if let (Some(l), Some(r)) = (lhs, rhs) {
            let lt = ctx
                .text(l)
                .trim()
                .trim_start_matches("mut ")
                .trim_start_matches('*')
                .trim_start();
            let lt = lt.strip_prefix("self.").unwrap_or(lt);
            let lt = lt.strip_prefix("this.").unwrap_or(lt);
            if lt == name {
                out.push(r);
            }
        }
        true
    });
    out
}

/// Go lists on both sides of an assignment: the pair at `name`'s position (a single call
/// on the right of several names returns no path value).
fn go_list_item<'t>(
    ctx: &Ctx<'_>,
    lhs: Node<'t>,
    rhs: Node<'t>,
    name: &str,
) -> Option<(Node<'t>, Node<'t>)> {
    let mut cur = lhs.walk();
    let names: Vec<Node<'t>> = lhs.named_children(&mut cur).collect();
    let i = names.iter().position(|n| ctx.text(*n) == name)?;
    let mut cur = rhs.walk();
    let values: Vec<Node<'t>> = if rhs.kind() == "expression_list" {
        rhs.named_children(&mut cur).collect()
    } else {
        vec![rhs]
    };
    (values.len() == names.len()).then(|| (names[i], values[i]))
}

/// Index of parameter `name` of `func` (receiver parameters `self`/`cls` not counted).
pub(super) fn param_index(ctx: &Ctx<'_>, func: Node<'_>, name: &str) -> Option<usize> {
    let params = func
        .child_by_field_name("parameters")
        .or_else(|| c_parameters(func))?;
    let mut idx = 0;
    let mut cur = params.walk();
    for p in params.named_children(&mut cur) {
        if syntax::is_comment(p) || p.kind() == "self_parameter" {
            continue;
        }
        let t = ctx.text(p);
        if matches!(t, "self" | "cls") {
            continue;
        }
        // Go `a, b string`: one declaration, one index per name.
        let go_names: Vec<&str> = if p.kind() == "parameter_declaration" && ctx.lang == Lang::Go {
            let mut c = p.walk();
            p.children_by_field_name("name", &mut c)
                .map(|n| ctx.text(n))
                .collect()
        } else {
            Vec::new()
        };
        if go_names.len() > 1 {
            if let Some(i) = go_names.iter().position(|n| *n == name) {
                return Some(idx + i);
            }
            idx += go_names.len();
            continue;
        }
        if idents(t).any(|tok| tok == name) {
            return Some(idx);
        }
        idx += 1;
    }
    None
}

/// C and C++: the parameter list of a function definition, under its declarator
/// (`static int write_struct(char *filename, ..)`).
fn c_parameters(func: Node<'_>) -> Option<Node<'_>> {
    syntax::c_declarator_of_kind(func, "function_declarator")?.child_by_field_name("parameters")
}

/// Calls that build a path whose file-specific part is their last argument.
const PATH_BUILDERS: &[&str] = &[
    "join",
    "Join",
    "File",
    "Path",
    "PathBuf",
    "get",
    "of",
    "resolve",
    "resolveSibling",
    "path_join",
    "from",
    "new",
    "Paths",
];
/// Calls that only convert a path.
const PATH_CONVERSIONS: &[&str] = &[
    "as_ref",
    "as_path",
    "to_path_buf",
    "clone",
    "to_owned",
    "toFile",
    "toPath",
    "getAbsolutePath",
    "getAbsoluteFile",
    "getCanonicalFile",
    "getPath",
    "display",
    "to_string",
    "to_str",
    "unwrap",
    "expect",
    "str",
    "abspath",
    "realpath",
    "expanduser",
    "normpath",
    "fspath",
    "String",
    "toString",
    "c_str",
    "CStr",
    "into",
];

/// The keys of the path expression `expr` in `func` (see the module doc): the file-specific
/// last segment of the path, after following locals and, for parameters, the callers in
/// this file.
fn path_keys(
    ctx: &Ctx<'_>,
    calls: &[(Call<'_, '_>, Option<Node<'_>>)],
    func: Option<Node<'_>>,
    expr: Node<'_>,
    depth: usize,
    out: &mut BTreeSet<String>,
) {
    if depth > 4 {
        return;
    }
    let mut e = expr;
    while matches!(
        e.kind(),
        "parenthesized_expression"
            | "reference_expression"
            | "try_expression"
            | "await_expression"
            | "pointer_expression"
            | "unary_expression"
            | "argument"
    ) {
        match e.named_child((e.named_child_count() as u32).saturating_sub(1)) {
            Some(inner) => e = inner,
            None => return,
        }
    }
    let text = ctx.text(e);
    let kernel = ["/sys/", "/proc/", "/dev/", "/run/"]
        .iter()
        .any(|p| text.contains(&format!("\"{p}")) || text.contains(&format!("'{p}")));
    if kernel {
        // Kernel and runtime interfaces, not state files.
        out.insert(KERNEL_FILE.to_string());
        return;
    }
    let recurse =
        |n: Node<'_>, out: &mut BTreeSet<String>| path_keys(ctx, calls, func, n, depth + 1, out);
    if is_string_node(e.kind()) {
        if let Some(b) = literal_basename(text) {
            out.insert(b);
        }
        return;
    }
    if let Some(c) = ctx.call(e) {
        let args = c.arg_nodes();
        if matches!(
            c.name,
            "format" | "Sprintf" | "sprintf" | "snprintf" | "asprintf"
        ) {
            if let Some(lit) = args.iter().find(|a| is_string_node(a.kind())) {
                recurse(*lit, out);
            }
            return;
        }
        if PATH_CONVERSIONS.contains(&c.name) {
            match (args.first(), c.receiver) {
                (Some(a), _) => recurse(*a, out),
                (None, Some(r)) => recurse(r, out),
                _ => {}
            }
            return;
        }
        if PATH_BUILDERS.contains(&c.name) {
            if let Some(last) = args.last() {
                recurse(*last, out);
            }
            return;
        }
        match args.last() {
            // `state_path_for(kind)`: the argument picks the file; a generic argument
            // (`self._key_to_file(key)`, `self._build_filename(key)`) leaves the method,
            // which then names the file.
            Some(last) => {
                let before = out.len();
                recurse(*last, out);
                if ctx.lang == Lang::Python && out.len() == before && names_a_file(c.name) {
                    out.insert(format!("{}()", c.name));
                }
            }
            // `self.state_path()`, `getStatusFile()`: the method names the file.
            None if !STOP.contains(&c.name) => {
                out.insert(format!("{}()", c.name));
            }
            None => {}
        }
        return;
    }
    match e.kind() {
        "binary_operator" | "binary_expression" => {
            let op = e
                .child_by_field_name("operator")
                .map(|o| ctx.text(o))
                .unwrap_or("");
            let side = if op == "%" { "left" } else { "right" };
            if let Some(n) = e.child_by_field_name(side) {
                recurse(n, out);
            }
        }
        // A type name: a stream's path in `std::ofstream out(path);` (see
        // `durability_streams::declared_streams`).
        "identifier" | "type_identifier" => {
            let name = ctx.text(e);
            let Some(f) = func else {
                if !STOP.contains(&name) {
                    out.insert(name.to_string());
                }
                return;
            };
            let values = local_values(ctx, f, name);
            if !values.is_empty() {
                for v in values {
                    recurse(v, out);
                }
                return;
            }
            if let Some(i) = param_index(ctx, f, name) {
                // A parameter: only the callers in this file say which file it is.
                let before = out.len();
                if let Some(fname) = syntax::function_name(f, ctx.src, ctx.lang) {
                    for (c, cf) in calls {
                        if c.name == fname && cf.is_none_or(|cf| cf.id() != f.id()) {
                            if let Some(a) = c.arg_nodes().get(i) {
                                path_keys(ctx, calls, *cf, *a, depth + 1, out);
                            }
                        }
                    }
                }
                // C and C++ without a resolving caller here: the parameter's own name.
                let c_like = matches!(ctx.lang, Lang::C | Lang::Cpp);
                if c_like && out.len() == before && name.len() >= 3 && !STOP.contains(&name) {
                    out.insert(name.to_string());
                }
                return;
            }
            if name.len() >= 3 && !STOP.contains(&name) {
                out.insert(name.to_string());
            }
        }
        "attribute" | "field_expression" | "field_access" | "selector_expression" => {
            // A field: the object's own file (`self.path`, `this.statusFile`).
            let t: String = ctx.text(e).split_whitespace().collect();
            let last = idents(&t).last().unwrap_or("");
            if STOP.contains(&last) {
                out.insert(t);
            } else {
                out.insert(last.to_string());
            }
        }
        _ => {}
    }
}

/// A Python method that maps its argument to a file of the program (`_key_to_file`,
/// `_egg_path`, `_build_filename`): it says file or path, and is not a conversion of a path
/// it is given (`make_path_posix`, `normalize_path`, `abspath`).
fn names_a_file(name: &str) -> bool {
    let words = syntax::ident_words(name);
    let has = |w: &str| words.iter().any(|x| x == w);
    (has("file") || has("path") || has("filename"))
        && ![
            "posix",
            "norm",
            "normalize",
            "abs",
            "real",
            "expand",
            "strip",
            "to_unicode",
        ]
        .iter()
        .any(|w| has(w))
}

/// Run the data-flow write-in-place check over the whole file. `skip` says whether a node
/// is a test region that must not be analysed.
pub(super) fn check_file(ctx: &mut Ctx<'_>, root: Node<'_>, skip: &dyn Fn(Node<'_>) -> bool) {
    if !WRITE_MARKERS.iter().any(|m| ctx.src.contains(m))
        || super::durability_python::is_build_script(ctx)
    {
        return;
    }
    // Every call with its enclosing function, outside test regions.
    let mut calls: Vec<(Call<'_, '_>, Option<Node<'_>>)> = Vec::new();
    // C++ file streams declared with their path: (declarator, path, writes from scratch).
    let mut streams = Vec::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if skip(n) {
            continue;
        }
        streams.extend(durability_streams::declared_streams(ctx, n));
        if let Some(c) = ctx.call(n) {
            let f = syntax::enclosing_function(n, ctx.lang);
            calls.push((c, f));
        }
        let mut cur = n.walk();
        stack.extend(n.children(&mut cur));
    }
    let writes: Vec<Open<'_>> = calls
        .iter()
        .filter(|(c, _)| is_truncating_open(ctx, c))
        .filter_map(|(c, _)| {
            write_path(c).map(|p| Open {
                call: c.node,
                path: p,
            })
        })
        .chain(streams.iter().filter(|s| s.2).map(|s| Open {
            call: s.0,
            path: s.1,
        }))
        .collect();
    if writes.is_empty() {
        return;
    }
    let reads: Vec<Open<'_>> = calls
        .iter()
        .filter_map(|(c, _)| {
            read_open(ctx, c).map(|p| Open {
                call: c.node,
                path: p,
            })
        })
        .chain(streams.iter().filter(|s| !s.2).map(|s| Open {
            call: s.0,
            path: s.1,
        }))
        .collect();
    if reads.is_empty() {
        return;
    }
    let keys_of = |o: &Open<'_>| {
        let mut k = BTreeSet::new();
        let f = syntax::enclosing_function(o.call, ctx.lang);
        path_keys(ctx, &calls, f, o.path, 0, &mut k);
        k.retain(|s| {
            let l = s.to_ascii_lowercase();
            !says_temporary(&l)
                && !l.starts_with("proc")
                && !l.starts_with("sys")
                && !l.starts_with("dev")
                && !l.contains("pid")
                && l != "stdout"
                && l != "stderr"
                && !durability_c_tools::not_state_key(ctx.lang, &l)
        });
        k
    };
    let read_keys: Vec<(BTreeSet<String>, Node<'_>)> =
        reads.iter().map(|r| (keys_of(r), r.call)).collect();
    let mut reports = Vec::new();
    for w in &writes {
        if says_temporary(ctx.text(w.path)) {
            continue;
        }
        let func = syntax::enclosing_function(w.call, ctx.lang);
        // Written and then renamed (or renamed into place elsewhere in the function):
        // the rename rules judge it.
        if let Some(f) = func {
            let renamed = syntax::calls_in_body(f, ctx.src, ctx.lang)
                .iter()
                .any(|c| is_rename(ctx, c) || durability_cxx::is_cxx_rename_call(ctx, c));
            if renamed {
                continue;
            }
        }
        let wk = keys_of(w);
        if wk.contains(KERNEL_FILE) {
            continue;
        }
        let hit = read_keys.iter().find_map(|(rk, r)| {
            let shared = wk.intersection(rk).next()?;
            Some((shared.clone(), *r))
        });
        // Go and Python: the same local path variable read earlier in the writing function
        // (read, modify, write back; `filepath.Join(dir, ".state")` has no key).
        let hit = hit.or_else(|| {
            durability_go::same_local_read(ctx, func?, w.path, &reads, |r| r.call, |r| r.path)
        });
        // A path parameter no caller here resolves: a save/load pair on it (C, C++, Java).
        let hit = hit.or_else(|| {
            let f = func.filter(|_| wk.is_empty())?;
            let is_param = |g: Node<'_>, n: &str| param_index(ctx, g, n).is_some();
            reads.iter().find_map(|r| {
                let g = syntax::enclosing_function(r.call, ctx.lang)?;
                durability_pairs::is_save_load_pair(ctx, f, w.path, g, r.path, &is_param)
                    .then(|| (ctx.text(w.path).to_string(), r.call))
            })
        });
        if let Some((key, r)) = hit {
            let reader = syntax::enclosing_function_name(r, ctx.src, ctx.lang).unwrap_or("?");
            let writer = func
                .and_then(|f| syntax::function_name(f, ctx.src, ctx.lang))
                .unwrap_or("?");
            if durability_c_tools::tool_output(ctx, writer, &wk) {
                continue;
            }
            reports.push((
                w.call,
                format!(
                    "`{writer}` truncates and rewrites the file `{key}` in place, and `{reader}` (line {}) reads it back: a crash mid-write leaves it torn or empty (write a temporary file, fsync, rename)",
                    r.start_position().row + 1
                ),
            ));
        }
    }
    for (node, msg) in reports {
        let line = node.start_position().row + 1;
        let dup = ctx
            .findings
            .iter()
            .any(|f| f.rule == WRITE_IN_PLACE && f.line == line);
        if !dup {
            ctx.report(WRITE_IN_PLACE, node, msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::literal_basename;

    #[test]
    fn literal_basenames() {
        assert_eq!(
            literal_basename("\"auditor_status_%s.json\"").as_deref(),
            Some("auditor_status_%s.json")
        );
        assert_eq!(
            literal_basename("'/etc/fstab.new'").as_deref(),
            Some("fstab.new")
        );
        assert_eq!(
            literal_basename("b\"durability_cookie\"").as_deref(),
            Some("durability_cookie")
        );
        assert_eq!(literal_basename("\".json\""), None);
        assert_eq!(literal_basename("\"/\""), None);
    }
}

//! Go: errors of `*os.File` `Sync`/`Truncate`/`Close` and of `os.Rename`/`os.ReadDir`
//! dropped, with typed evidence only: the receiver is a variable bound in the same function
//! by `os.Create`/`os.OpenFile`/`os.CreateTemp`/`os.Open` (or declared `*os.File`), so an
//! in-memory `Close` or a logger's `Sync` is never reported; and data is written to that
//! file in the function (a write method, or the file handed to a writer such as
//! `io.Copy(f, ..)`, `fmt.Fprintf(f, ..)`, `bufio.NewWriter(f)`). Kernel and device files
//! (`/proc`, `/sys`, `/dev`, cgroup files, `os.DevNull`) and files opened `O_SYNC` are
//! left out; so are renames in registered rollback closures (`revert.Add(func() {..})`).

use super::Ctx;
use crate::catalog::DROPPED_FILE_ERROR;
use crate::syntax;
use tree_sitter::Node;

/// A variable of the function that holds an `*os.File`: its name, whether it was opened
/// for writing, where it was bound (byte offset) and the path expression it was opened
/// from (empty for parameters and `var` declarations).
struct FileVar {
    name: String,
    writes: bool,
    at: usize,
    path: String,
    /// Opened with `O_SYNC`/`O_DSYNC`: every write is on disk when it returns.
    synchronous: bool,
    /// A kernel or device file (`/proc`, `/sys`, `/dev`, `os.DevNull`): no data at stake.
    special: bool,
    /// Bound by `=` to a variable declared before (not `:=`).
    reassigned: bool,
    /// Opened read-only (`os.Open`, `os.OpenFile(p, os.O_RDONLY, ..)`): every write to it
    /// fails, so it holds no data of this function, whatever it is handed to.
    read_only: bool,
}

/// Variables of the function that hold an `*os.File`, in source order. A name bound twice
/// (`f, err := os.Open(dir)` in one block, `f, err := os.OpenFile(out, O_RDWR..)` in
/// another) has one entry per binding; a statement uses the nearest binding before it.
fn os_file_vars(ctx: &Ctx<'_>, func: Node<'_>) -> Vec<FileVar> {
    let mut out: Vec<FileVar> = Vec::new();
    // Parameters and `var f *os.File`.
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if matches!(n.kind(), "parameter_declaration" | "var_spec") {
            if let Some(t) = n.child_by_field_name("type") {
                if ctx.text(t) == "*os.File" {
                    let mut c = n.walk();
                    for name in n.children_by_field_name("name", &mut c) {
                        out.push(FileVar {
                            name: ctx.text(name).to_string(),
                            writes: true,
                            at: n.start_byte(),
                            path: String::new(),
                            synchronous: false,
                            special: false,
                            reassigned: false,
                            read_only: false,
                        });
                    }
                }
            }
        }
        if matches!(n.kind(), "short_var_declaration" | "assignment_statement") {
            let (Some(left), Some(right)) = (
                n.child_by_field_name("left"),
                n.child_by_field_name("right"),
            ) else {
                return true;
            };
            let rights = syntax::named_children_no_comments(right);
            let Some(c) = rights.first().and_then(|r| ctx.call(*r)) else {
                return true;
            };
            let flags = if c.is("os", "OpenFile") {
                c.arg_nodes().get(1).map(|a| ctx.text(*a)).unwrap_or("")
            } else {
                ""
            };
            let opens = c.is("os", "Create")
                || c.is("os", "CreateTemp")
                || c.is("ioutil", "TempFile")
                || c.is("os", "Open")
                || c.is("os", "OpenFile");
            if opens {
                if let Some(first) = syntax::named_children_no_comments(left).first() {
                    let path = c.arg_nodes().first().copied();
                    out.push(FileVar {
                        name: ctx.text(*first).to_string(),
                        writes: false,
                        at: n.start_byte(),
                        path: path.map(|a| ctx.text(a).to_string()).unwrap_or_default(),
                        synchronous: flags.contains("O_SYNC") || flags.contains("O_DSYNC"),
                        special: path.is_some_and(|a| special_path(ctx, func, a)),
                        reassigned: n.kind() == "assignment_statement",
                        read_only: c.is("os", "Open")
                            || (flags.contains("O_RDONLY")
                                && !["O_WRONLY", "O_RDWR", "O_CREATE", "O_APPEND", "O_TRUNC"]
                                    .iter()
                                    .any(|w| flags.contains(w))),
                    });
                }
            }
        }
        true
    });
    if out.is_empty() {
        return out;
    }
    out.sort_by_key(|v| v.at);
    // A file opened in this function counts as written only when data is written to it
    // while this binding is live: `f.Write`, `io.Copy(f, r)`, `fmt.Fprintf(f, ..)`,
    // `bufio.NewWriter(f)`, `json.NewEncoder(f)`. A file only opened, sized
    // (`Truncate`), handed to an ioctl (`Fd`) or to a child process holds no data this
    // function could lose (an empty marker, a sparse image, a loop device, a log).
    // A parameter or `var f *os.File` of unknown origin counts as written when data is
    // written to it, when the function syncs it (`mfd.Sync()`: the author treats it as
    // a written file), or when it aliases a struct field (`fd = mb.mfd`); a parameter
    // that is only closed (`defer f.Close()` in a poller or a cleanup closure) is not.
    let calls = syntax::calls_in_body(func, ctx.src, ctx.lang);
    for i in 0..out.len() {
        let end = out[i + 1..]
            .iter()
            .find(|v| v.name == out[i].name)
            .map_or(usize::MAX, |v| v.at);
        let name = out[i].name.clone();
        out[i].writes = writes_data(ctx, func, &name, out[i].at, end)
            || (out[i].path.is_empty()
                && (calls
                    .iter()
                    .any(|c| c.qual == name.as_str() && c.name == "Sync")
                    || aliases_field(ctx, func, &name)));
    }
    // `var fd *os.File` assigned in branches (`fd = mb.mfd` or `fd, err =
    // os.OpenFile(..)`) is one variable: written if its declaration counts as written.
    for i in 0..out.len() {
        if out[i].reassigned && !out[i].writes {
            let name = out[i].name.clone();
            out[i].writes = out
                .iter()
                .any(|v| v.name == name && v.path.is_empty() && v.writes);
        }
        // A read-only file is never written, even when handed to a call whose name
        // looks like a writer (`DecompressStream(f)`).
        if out[i].read_only {
            out[i].writes = false;
        }
    }
    out
}

/// Whether data is written to the file variable `name` in `func` between bytes `from`
/// and `to` (after its binding): a write method on it (`Write`, `WriteString`, `WriteAt`,
/// `ReadFrom`), or the variable passed to a writer (`io.Copy(f, ..)`, `fmt.Fprintf(f, ..)`
/// as the destination, `bufio.NewWriter(f)`, `io.MultiWriter(f, h)`, `json.NewEncoder(f)`,
/// `proto.MarshalText(f, m)`). Nested function literals are searched: a file written
/// inside a closure (`func() error { _, err := io.Copy(f, conn) .. }()`) is written.
fn writes_data(ctx: &Ctx<'_>, func: Node<'_>, name: &str, from: usize, to: usize) -> bool {
    let mut stack = vec![func];
    while let Some(n) = stack.pop() {
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
        if n.kind() != "identifier" || ctx.text(n) != name {
            continue;
        }
        let at = n.start_byte();
        if at <= from || at >= to {
            continue;
        }
        let Some(p) = n.parent() else {
            continue;
        };
        if p.kind() == "selector_expression" && p.child_by_field_name("operand") == Some(n) {
            if p.child_by_field_name("field").is_some_and(|f| {
                matches!(
                    ctx.text(f),
                    "Write" | "WriteString" | "WriteAt" | "ReadFrom"
                )
            }) {
                return true;
            }
            continue;
        }
        if p.kind() != "argument_list" {
            continue;
        }
        let Some(callee) = p
            .parent()
            .filter(|c| c.kind() == "call_expression")
            .and_then(|c| c.child_by_field_name("function"))
        else {
            continue;
        };
        let callee = syntax::last_segment(ctx.text(callee)).to_ascii_lowercase();
        let first = syntax::named_children_no_comments(p).first() == Some(&n);
        if [
            "write", "encode", "marshal", "encrypt", "compress", "download",
        ]
        .iter()
        .any(|w| callee.contains(w))
            || (first && ["copy", "fprint"].iter().any(|w| callee.contains(w)))
        {
            return true;
        }
    }
    false
}

/// Whether `var` is assigned a struct field in `func` (`fd = mb.mfd`).
fn aliases_field(ctx: &Ctx<'_>, func: Node<'_>, var: &str) -> bool {
    syntax::any_in_body(func, ctx.lang, |n| {
        matches!(n.kind(), "short_var_declaration" | "assignment_statement")
            && n.child_by_field_name("left").is_some_and(|l| {
                let ls = syntax::named_children_no_comments(l);
                ls.len() == 1 && ctx.text(ls[0]) == var
            })
            && n.child_by_field_name("right").is_some_and(|r| {
                let rs = syntax::named_children_no_comments(r);
                rs.len() == 1 && rs[0].kind() == "selector_expression"
            })
    })
}

/// Whether a path expression names a kernel or device file (`"/proc/self/oom_score_adj"`,
/// `filepath.Join("/sys", ..)`, `os.DevNull`), directly or through a local variable
/// assigned in `func`.
fn special_path(ctx: &Ctx<'_>, func: Node<'_>, path: Node<'_>) -> bool {
    let is_special = |t: &str| {
        t.contains("os.DevNull")
            || t.to_ascii_lowercase().contains("cgroup")
            || ["/proc", "/sys/", "/sys\"", "/dev/"]
                .iter()
                .any(|p| t.contains(&format!("\"{p}")) || t.contains(&format!("`{p}")))
    };
    let text = ctx.text(path);
    if is_special(text) {
        return true;
    }
    if path.kind() != "identifier" {
        return false;
    }
    let mut found = false;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if found {
            return false;
        }
        if matches!(n.kind(), "short_var_declaration" | "assignment_statement") {
            if let (Some(l), Some(r)) = (
                n.child_by_field_name("left"),
                n.child_by_field_name("right"),
            ) {
                let ls = syntax::named_children_no_comments(l);
                let rs = syntax::named_children_no_comments(r);
                if ls.len() == rs.len() {
                    found = ls
                        .iter()
                        .zip(&rs)
                        .any(|(l, r)| ctx.text(*l) == text && is_special(ctx.text(*r)));
                }
            }
        }
        true
    });
    if found {
        return true;
    }
    // A package-level `const rootKeyFile = "/proc/sys/kernel/keys/root_maxkeys"`.
    let root = syntax::tree_root(func);
    let mut c = root.walk();
    let top: Vec<Node<'_>> = root.named_children(&mut c).collect();
    top.iter()
        .filter(|d| matches!(d.kind(), "const_declaration" | "var_declaration"))
        .any(|d| {
            let mut c = d.walk();
            let specs: Vec<Node<'_>> = d.named_children(&mut c).collect();
            specs.iter().any(|spec| {
                let mut c = spec.walk();
                let names: Vec<Node<'_>> = spec.children_by_field_name("name", &mut c).collect();
                names.iter().any(|n| ctx.text(*n) == text)
                    && spec
                        .child_by_field_name("value")
                        .is_some_and(|v| is_special(ctx.text(v)))
            })
        })
}

/// Whether a call's result is used (`if err := f.Close(); err != nil`, `return f.Sync()`),
/// not dropped by a bare statement, a `defer`/`go`, or `_ =`.
fn result_checked(ctx: &Ctx<'_>, call: Node<'_>) -> bool {
    let Some(p) = call.parent() else {
        return false;
    };
    match p.kind() {
        "expression_statement" | "defer_statement" | "go_statement" => false,
        "expression_list" => !p.parent().is_some_and(|a| {
            a.kind() == "assignment_statement"
                && a.child_by_field_name("left")
                    .is_some_and(|l| ctx.text(l).trim() == "_")
        }),
        _ => true,
    }
}

/// Whether the file variable `var` is handed to a struct field (`t.pendingFile = tmp`):
/// its owner closes (and syncs) it later; a deferred `Close` here is a safety net.
fn handed_to_field(ctx: &Ctx<'_>, func: Node<'_>, var: &str) -> bool {
    let mut found = false;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if found {
            return false;
        }
        if n.kind() == "assignment_statement" {
            if let (Some(l), Some(r)) = (
                n.child_by_field_name("left"),
                n.child_by_field_name("right"),
            ) {
                let ls = syntax::named_children_no_comments(l);
                let rs = syntax::named_children_no_comments(r);
                found = ls.len() == 1
                    && rs.len() == 1
                    && ls[0].kind() == "selector_expression"
                    && ctx.text(rs[0]) == var;
            }
        }
        true
    });
    found
}

/// Whether `func` is a function literal passed as an argument of a call (a registered
/// cleanup or rollback such as `revert.Add(func() { .. })`).
fn registered_closure(func: Node<'_>) -> bool {
    func.kind() == "func_literal" && func.parent().is_some_and(|p| p.kind() == "argument_list")
}

/// The binding of `name` live at byte `at`: the last one before it.
fn binding_at<'v>(files: &'v [FileVar], name: &str, at: usize) -> Option<&'v FileVar> {
    files
        .iter()
        .rev()
        .find(|v| v.name == name && v.at <= at)
        .or_else(|| files.iter().find(|v| v.name == name))
}

/// Whether the statement is followed by a `return` in its block, with nothing but other
/// clean-up calls between (`f.Close(); os.Remove(name); return "", err`, where the return
/// then has to carry an error, not `nil`): clean-up on an error path that is already being
/// reported.
fn followed_by_return(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut next = node.next_named_sibling();
    let mut skipped_cleanup = false;
    while let Some(n) = next {
        let cleanup = n.kind() == "expression_statement"
            && n.named_child(0).and_then(|e| ctx.call(e)).is_some_and(|c| {
                matches!(
                    c.name,
                    "Close" | "Remove" | "RemoveAll" | "Unlock" | "cancel"
                )
            });
        if syntax::is_comment(n) || cleanup {
            skipped_cleanup |= cleanup;
            next = n.next_named_sibling();
            continue;
        }
        if n.kind() != "return_statement" {
            return false;
        }
        if !skipped_cleanup {
            return true;
        }
        let values = n
            .named_child(0)
            .map(syntax::named_children_no_comments)
            .unwrap_or_default();
        return values.last().is_some_and(|v| ctx.text(*v) != "nil");
    }
    false
}

/// Whether the statement after `stmt` removes a file (`os.Remove`/`os.RemoveAll`).
fn removed_next(ctx: &Ctx<'_>, stmt: Node<'_>) -> bool {
    let mut next = stmt.next_named_sibling();
    while let Some(n) = next {
        if syntax::is_comment(n) {
            next = n.next_named_sibling();
            continue;
        }
        return n.kind() == "expression_statement"
            && n.named_child(0)
                .and_then(|e| ctx.call(e))
                .is_some_and(|c| c.is("os", "Remove") || c.is("os", "RemoveAll"));
    }
    false
}

/// Whether `stmt` sits in `if err != nil { .. }` right after the statement that bound
/// `var` (the open failed: there is no written file to lose).
fn on_open_error_path(ctx: &Ctx<'_>, stmt: Node<'_>, var: &str) -> bool {
    let mut up = stmt.parent();
    while let Some(p) = up.filter(|p| matches!(p.kind(), "block" | "statement_list")) {
        up = p.parent();
    }
    let Some(ifs) = up.filter(|p| p.kind() == "if_statement") else {
        return false;
    };
    if ifs
        .child_by_field_name("condition")
        .is_none_or(|c| ctx.text(c).replace(' ', "") != "err!=nil")
    {
        return false;
    }
    syntax::prev_sibling_no_comments(ifs).is_some_and(|p| {
        matches!(p.kind(), "short_var_declaration" | "assignment_statement")
            && p.child_by_field_name("left").is_some_and(|l| {
                syntax::named_children_no_comments(l)
                    .first()
                    .is_some_and(|v| ctx.text(*v) == var)
            })
    })
}

/// Whether the entries of a directory listing bound to `var` are only used to remove
/// files (`for _, fi := range psnaps { os.Remove(filepath.Join(dir, fi.Name())) }`): a
/// failed listing then leaves garbage behind, it loses no state.
fn listing_only_removed(ctx: &Ctx<'_>, func: Node<'_>, var: &str) -> bool {
    let mut loops = Vec::new();
    let mut uses = 0usize;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if n.kind() == "identifier" && ctx.text(n) == var {
            uses += 1;
        }
        if n.kind() == "for_statement" {
            let mut c = n.walk();
            if n.named_children(&mut c).any(|k| {
                k.kind() == "range_clause"
                    && k.child_by_field_name("right")
                        .is_some_and(|r| ctx.text(r) == var)
            }) {
                loops.push(n);
            }
        }
        true
    });
    // The binding plus one use per loop: the listing is used nowhere else.
    if loops.is_empty() || uses != loops.len() + 1 {
        return false;
    }
    loops.iter().all(|l| {
        let calls = syntax::calls_in_body(*l, ctx.src, ctx.lang);
        calls
            .iter()
            .any(|c| c.is("os", "Remove") || c.is("os", "RemoveAll"))
            && calls.iter().all(|c| {
                c.is("os", "Remove")
                    || c.is("os", "RemoveAll")
                    || matches!(
                        c.name,
                        "Join" | "Name" | "IsDir" | "HasPrefix" | "HasSuffix" | "Contains"
                    )
            })
    })
}

/// The call dropped by statement `stmt`: `f.Sync()`, `_ = f.Sync()`, `defer f.Close()`.
fn dropped_call<'t>(ctx: &Ctx<'_>, stmt: Node<'t>) -> Option<(Node<'t>, bool)> {
    match stmt.kind() {
        "expression_statement" => stmt.named_child(0).map(|c| (c, false)),
        "defer_statement" => stmt.named_child(0).map(|c| (c, true)),
        "assignment_statement" => {
            let left = stmt.child_by_field_name("left")?;
            let right = stmt.child_by_field_name("right")?;
            let lefts = syntax::named_children_no_comments(left);
            let rights = syntax::named_children_no_comments(right);
            (lefts.len() == 1 && ctx.text(lefts[0]) == "_" && rights.len() == 1)
                .then(|| (rights[0], false))
        }
        _ => None,
    }
}

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>) {
    if !matches!(
        node.kind(),
        "function_declaration" | "method_declaration" | "func_literal"
    ) {
        return;
    }
    if ctx.go_logging_package {
        return;
    }
    let files = os_file_vars(ctx, node);
    let fields = &ctx.os_file_fields;
    // Listed only when a dropped `Close` needs it (most functions have none).
    let calls = std::cell::OnceCell::new();
    let calls = || calls.get_or_init(|| syntax::calls_in_body(node, ctx.src, ctx.lang));
    // `f.Close()` after a checked `f.Sync()` loses nothing; a probe or temp file removed in
    // the same function (`os.Remove(f.Name())`, or `os.Remove(p)` of the path `p` it was
    // opened from) holds no state.
    // A deferred `Close` is a safety net when the function also checks an explicit
    // `f.Close()` of the same file, or hands the file to a struct field that owns it.
    let close_is_harmless = |qual: &str, path: &str, deferred: bool| {
        (deferred && handed_to_field(ctx, node, qual))
            || calls().iter().any(|k| {
                (k.qual == qual
                && (k.name == "Sync" || (deferred && k.name == "Close"))
                && result_checked(ctx, k.node))
                // Removed through `os` or a wrapper of it (`fs.Remove(f.Name())`).
                || ((k.qual == "os" || k.qual.rsplit('.').next() == Some("fs"))
                    && matches!(k.name, "Remove" | "RemoveAll")
                    && k.arg_nodes().first().is_some_and(|a| {
                        let t = ctx.text(*a);
                        t == qual
                            || t.starts_with(&format!("{qual}."))
                            || (!path.is_empty() && t == path)
                    }))
            })
    };
    let mut hits: Vec<(Node<'_>, String)> = Vec::new();
    syntax::for_each_in_body(node, ctx.lang, |stmt| {
        // `entries, _ := os.ReadDir(dir)`: a failed listing reads as an empty directory.
        if stmt.kind() == "short_var_declaration" || stmt.kind() == "assignment_statement" {
            if let (Some(left), Some(right)) = (
                stmt.child_by_field_name("left"),
                stmt.child_by_field_name("right"),
            ) {
                let lefts = syntax::named_children_no_comments(left);
                let rights = syntax::named_children_no_comments(right);
                if lefts.len() == 2 && ctx.text(lefts[1]) == "_" && rights.len() == 1 {
                    if let Some(c) = ctx.call(rights[0]) {
                        if (c.is("os", "ReadDir") || c.is("ioutil", "ReadDir"))
                            && !listing_only_removed(ctx, node, ctx.text(lefts[0]))
                            && !c
                                .arg_nodes()
                                .first()
                                .is_some_and(|a| special_path(ctx, node, *a))
                        {
                            hits.push((stmt, format!("error of `{}.ReadDir` dropped: a directory that cannot be listed reads as empty (recovery then sees no files)", c.qual)));
                        }
                    }
                }
            }
        }
        let Some((expr, deferred)) = dropped_call(ctx, stmt) else {
            return true;
        };
        let Some(c) = ctx.call(expr) else {
            return true;
        };
        // A rename inside a function literal handed to a call (`revert.Add(func() { _ =
        // os.Rename(dst, src) })`) is a rollback that runs while another error is
        // already being returned.
        if c.is("os", "Rename") && !deferred && !registered_closure(node) {
            hits.push((
                stmt,
                "error of `os.Rename` dropped: the caller goes on as if the new file were in place"
                    .into(),
            ));
            return true;
        }
        // A variable bound to an `*os.File` in this function, or a struct field declared
        // `*os.File` in this file (`mb.mfd.Sync()`; not known to be written: no Close).
        let field = c
            .qual
            .rsplit_once('.')
            .is_some_and(|(_, f)| fields.iter().any(|x| x == f));
        // The file is cleared and deleted (`f.Truncate(0); os.Remove(p)`), or this is the
        // error path of its own open (`f, err = os.OpenFile(..); if err != nil { defer
        // f.Close() }`): no data of it is kept.
        if (c.name == "Truncate" && removed_next(ctx, stmt))
            || on_open_error_path(ctx, stmt, c.qual)
        {
            return true;
        }
        let (written, path) = match binding_at(&files, c.qual, stmt.start_byte()) {
            // A kernel or device file holds no data; with `O_SYNC` every write is on
            // disk when it returns, so neither `Sync` nor `Close` can lose any.
            Some(v) if v.special || (v.synchronous && c.name != "Truncate") => return true,
            // A file never written here holds no data of this function.
            Some(v) if !v.writes => return true,
            Some(v) => (v.writes, v.path.as_str()),
            None if field => (false, ""),
            None => return true,
        };
        let written = &written;
        let what = match c.name {
            "Sync" => "`Sync` error dropped: the data may not be on disk although the code goes on as if it were",
            "Truncate" => "`Truncate` error dropped: the file keeps stale bytes the reader will take as data",
            "Close" if *written && !followed_by_return(ctx, stmt) && !close_is_harmless(c.qual, path, deferred) => {
                "`Close` error of a written file dropped: on NFS and some filesystems the write error is only reported by Close"
            }
            _ => return true,
        };
        hits.push((stmt, format!("{what} (`{}.{}`)", c.qual, c.name)));
        true
    });
    for (n, msg) in hits {
        ctx.report(DROPPED_FILE_ERROR, n, msg);
    }
}

/// Struct fields declared `*os.File` in the file (`mfd *os.File`), by name.
pub(super) fn os_file_fields(root: Node<'_>, src: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !src.contains("*os.File") {
        return out;
    }
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if n.kind() == "field_declaration" {
            if n.child_by_field_name("type")
                .is_some_and(|t| syntax::text(t, src) == "*os.File")
            {
                let mut c = n.walk();
                for name in n.children_by_field_name("name", &mut c) {
                    out.push(syntax::text(name, src).to_string());
                }
            }
            continue;
        }
        let mut c = n.walk();
        stack.extend(n.named_children(&mut c));
    }
    out
}

/// Whether the Go file's package is a logging package (`package log`, `logger`,
/// `logging`, `glog`, `klog`).
pub(super) fn is_logging_package(root: Node<'_>, src: &str) -> bool {
    let mut c = root.walk();
    let found = root
        .named_children(&mut c)
        .find(|n| n.kind() == "package_clause")
        .and_then(|p| p.named_child(0))
        .is_some_and(|id| {
            matches!(
                syntax::text(id, src),
                "log" | "logger" | "logging" | "glog" | "klog"
            )
        });
    found
}

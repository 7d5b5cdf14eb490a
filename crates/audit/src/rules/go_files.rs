//! Go: errors of `*os.File` `Sync`/`Truncate`/`Close` and of `os.Rename`/`os.ReadDir`
//! dropped, with typed evidence only: the receiver is a variable bound in the same function
//! by `os.Create`/`os.OpenFile`/`os.CreateTemp`/`os.Open` (or declared `*os.File`), so an
//! in-memory `Close` or a logger's `Sync` is never reported.

use super::Ctx;
use crate::catalog::DROPPED_FILE_ERROR;
use crate::syntax;
use tree_sitter::Node;

/// Variables of the function that hold an `*os.File`, and whether it was opened for
/// writing.
fn os_file_vars(ctx: &Ctx<'_>, func: Node<'_>) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    // Parameters and `var f *os.File`.
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if matches!(n.kind(), "parameter_declaration" | "var_spec") {
            if let Some(t) = n.child_by_field_name("type") {
                if ctx.text(t) == "*os.File" {
                    let mut c = n.walk();
                    for name in n.children_by_field_name("name", &mut c) {
                        out.push((ctx.text(name).to_string(), true));
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
            let writes = c.is("os", "Create")
                || c.is("os", "CreateTemp")
                || (c.is("ioutil", "TempFile"))
                || (c.is("os", "OpenFile") && {
                    let flags = c.arg_nodes().get(1).map(|a| ctx.text(*a)).unwrap_or("");
                    flags.contains("O_WRONLY")
                        || flags.contains("O_RDWR")
                        || flags.contains("O_CREATE")
                        || flags.contains("O_APPEND")
                });
            if writes || c.is("os", "Open") || c.is("os", "OpenFile") {
                if let Some(first) = syntax::named_children_no_comments(left).first() {
                    out.push((ctx.text(*first).to_string(), writes));
                }
            }
        }
        true
    });
    // A file opened read-only but written to later (`f.Write`, `f.WriteString`) is written.
    let calls = syntax::calls_in_body(func, ctx.src, ctx.lang);
    for (name, writes) in &mut out {
        if !*writes {
            *writes = calls
                .iter()
                .any(|c| c.qual == name.as_str() && c.name.starts_with("Write"));
        }
    }
    out
}

/// Whether the statement is directly followed by a `return` in its block (cleanup on an
/// error path that is already being reported).
fn followed_by_return(node: Node<'_>) -> bool {
    let mut next = node.next_named_sibling();
    while let Some(n) = next {
        if syntax::is_comment(n) {
            next = n.next_named_sibling();
            continue;
        }
        return n.kind() == "return_statement";
    }
    false
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
    let files = os_file_vars(ctx, node);
    let fields = &ctx.os_file_fields;
    let calls = syntax::calls_in_body(node, ctx.src, ctx.lang);
    // `f.Close()` after a checked `f.Sync()` loses nothing; a probe or temp file removed in
    // the same function (`os.Remove(f.Name())`) holds no state.
    let close_is_harmless = |qual: &str| {
        calls.iter().any(|k| {
            (k.qual == qual
                && k.name == "Sync"
                && k.node
                    .parent()
                    .is_some_and(|p| p.kind() != "expression_statement"))
                || (k.qual == "os"
                    && matches!(k.name, "Remove" | "RemoveAll")
                    && k.arg_nodes().first().is_some_and(|a| {
                        let t = ctx.text(*a);
                        t == qual || t.starts_with(&format!("{qual}."))
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
                        if c.is("os", "ReadDir") || c.is("ioutil", "ReadDir") {
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
        if c.is("os", "Rename") && !deferred {
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
        let written = match files.iter().find(|(v, _)| v == c.qual) {
            Some((_, w)) => *w,
            None if field => false,
            None => return true,
        };
        let written = &written;
        let what = match c.name {
            "Sync" => "`Sync` error dropped: the data may not be on disk although the code goes on as if it were",
            "Truncate" => "`Truncate` error dropped: the file keeps stale bytes the reader will take as data",
            "Close" if *written && !followed_by_return(stmt) && !close_is_harmless(c.qual) => {
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

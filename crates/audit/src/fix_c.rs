//! `--fix` for C `rename-without-fsync`: the temporary file written through a local
//! `FILE *` (fopen ... fclose) or descriptor (open ... close) gets an fsync before its
//! close, and the directory of the rename's target an fsync after the rename (through a
//! static helper `ftvm_fsync_parent` added once per file, with its `#include`s).
//!
//! Only the shapes whose meaning is plain get an edit; everything else gets none:
//! the close and the rename must be statements of the same block (`fclose(f);`,
//! `if (fclose(f) != 0) ...`; `rename(tmp, path);`, or `if (rename(tmp, path) != 0)`
//! with an exiting body and no `else`), the handle a local assigned once from an open of
//! the rename's source, the function's failure value known from its return type (`int`,
//! `long`, `ssize_t`: `-1`; a pointer: `NULL`; `bool`: `false`; anything else, `void`
//! included: no edit), and no preprocessor lines inside the function.

use crate::fix::Edit;
use crate::lang::Lang;
use crate::syntax;
use tree_sitter::Node;

/// Name of the helper the fix adds.
pub const HELPER: &str = "ftvm_fsync_parent";

const INCLUDES: &[&str] = &["errno.h", "fcntl.h", "stdlib.h", "string.h", "unistd.h"];

/// `name(args...)` with a plain identifier callee: (name, args).
fn plain_call<'t, 's>(n: Node<'t>, src: &'s str) -> Option<(&'s str, Vec<Node<'t>>)> {
    if n.kind() != "call_expression" {
        return None;
    }
    let f = n.child_by_field_name("function")?;
    if f.kind() != "identifier" {
        return None;
    }
    let args = syntax::named_children_no_comments(n.child_by_field_name("arguments")?);
    Some((syntax::text(f, src), args))
}

/// The failure value of a function, from its declared return type.
fn failure_value(func: Node<'_>, src: &str) -> Option<&'static str> {
    let decl = func.child_by_field_name("declarator")?;
    let ty = syntax::text(func.child_by_field_name("type")?, src);
    match decl.kind() {
        "pointer_declarator" => Some("NULL"),
        "function_declarator" => match ty {
            "int" | "long" | "ssize_t" => Some("-1"),
            "bool" => Some("false"),
            _ => None,
        },
        _ => None,
    }
}

/// The statement holding `n` that is a direct child of `block`.
fn statement_in<'t>(mut n: Node<'t>, block: Node<'t>) -> Option<Node<'t>> {
    loop {
        let p = n.parent()?;
        if p.id() == block.id() {
            return Some(n);
        }
        n = p;
    }
}

/// Whether a statement always leaves the function or jumps away.
fn exits(n: Node<'_>) -> bool {
    match n.kind() {
        "return_statement" | "goto_statement" => true,
        "compound_statement" => {
            let kids = syntax::named_children_no_comments(n);
            kids.last().is_some_and(|l| exits(*l))
        }
        _ => false,
    }
}

/// The statement a rename call is: `rename(a, b);` or `if (<rename failed>) <exit>`
/// without `else`.
fn rename_statement<'t>(call: Node<'t>, src: &str) -> Option<Node<'t>> {
    let p = call.parent()?;
    if p.kind() == "expression_statement" {
        return Some(p);
    }
    // The condition: `(rename(..))`, `(rename(..) != 0)`, `(rename(..) < 0)`, `(... == -1)`.
    let cond = if p.kind() == "binary_expression" {
        let op = syntax::text(p.child_by_field_name("operator")?, src);
        let right = syntax::text(p.child_by_field_name("right")?, src);
        let left = p.child_by_field_name("left")?;
        let failed = matches!((op, right), ("!=", "0") | ("<", "0") | ("==", "-1"));
        if !failed || left.id() != call.id() {
            return None;
        }
        p.parent()?
    } else {
        p
    };
    let stmt = cond.parent()?;
    if cond.kind() != "parenthesized_expression"
        || stmt.kind() != "if_statement"
        || stmt.child_by_field_name("condition")?.id() != cond.id()
        || stmt.child_by_field_name("alternative").is_some()
        || !exits(stmt.child_by_field_name("consequence")?)
    {
        return None;
    }
    Some(stmt)
}

/// The variable an open call's result is stored in: `FILE *f = fopen(..)`,
/// `f = fopen(..)`, `if ((f = fopen(..)) == NULL)`.
fn assigned_to<'s>(open: Node<'_>, src: &'s str) -> Option<&'s str> {
    let p = open.parent()?;
    let target = match p.kind() {
        "init_declarator" => {
            let mut d = p.child_by_field_name("declarator")?;
            while d.kind() == "pointer_declarator" {
                d = d.child_by_field_name("declarator")?;
            }
            d
        }
        "assignment_expression" if syntax::text(p.child_by_field_name("operator")?, src) == "=" => {
            p.child_by_field_name("left")?
        }
        _ => return None,
    };
    (target.kind() == "identifier").then(|| syntax::text(target, src))
}

/// How many times `name` is declared with a value or assigned in `nodes`.
fn assignments(nodes: &[Node<'_>], src: &str, name: &str) -> usize {
    nodes
        .iter()
        .filter(|n| match n.kind() {
            "init_declarator" => {
                let mut d = n.child_by_field_name("declarator");
                while let Some(x) = d.filter(|x| x.kind() == "pointer_declarator") {
                    d = x.child_by_field_name("declarator");
                }
                d.is_some_and(|d| syntax::text(d, src) == name)
            }
            "assignment_expression" | "update_expression" => n
                .child_by_field_name("left")
                .or_else(|| n.child_by_field_name("argument"))
                .is_some_and(|l| syntax::text(l, src) == name),
            _ => false,
        })
        .count()
}

/// Indentation unit of the statements of `block` relative to the block's own line.
fn unit(src: &str, block: Node<'_>, stmt_indent: &str) -> String {
    let outer = crate::fix::indent_at(src, block.start_byte());
    match stmt_indent.strip_prefix(outer) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => "    ".to_string(),
    }
}

/// The edits for a `rename(tmp, path)` call starting at byte `at` (without the helper).
pub fn rename_fix(src: &str, root: Node<'_>, at: usize) -> Option<Vec<Edit>> {
    let mut n = root.descendant_for_byte_range(at, at)?;
    let call = loop {
        if n.kind() == "call_expression" && n.start_byte() == at {
            break n;
        }
        n = n.parent()?;
    };
    let (name, args) = plain_call(call, src)?;
    let [tmp, dest] = args.as_slice() else {
        return None;
    };
    // The target is evaluated again for the directory fsync: no side effects.
    if name != "rename"
        || !matches!(
            dest.kind(),
            "identifier" | "string_literal" | "field_expression"
        )
    {
        return None;
    }
    let tmp = syntax::text(*tmp, src);
    let dest = syntax::text(*dest, src);
    let func = crate::fix::ancestor(call, &["function_definition"])?;
    let fail = failure_value(func, src)?;
    let body = func.child_by_field_name("body")?;
    let mut nodes = Vec::new();
    syntax::for_each_in_body(body, Lang::C, |n| {
        nodes.push(n);
        true
    });
    if nodes.iter().any(|n| n.kind().starts_with("preproc")) {
        return None;
    }
    let rename_stmt = rename_statement(call, src)?;
    let block = rename_stmt
        .parent()
        .filter(|b| b.kind() == "compound_statement")?;
    // The one open of the temporary file before the rename, and its handle.
    let opens: Vec<(Node<'_>, &str)> = nodes
        .iter()
        .filter(|n| n.end_byte() <= call.start_byte())
        .filter_map(|n| {
            let (name, args) = plain_call(*n, src)?;
            let file = args.first().map(|a| syntax::text(*a, src)) == Some(tmp);
            (file && matches!(name, "fopen" | "open" | "creat")).then_some((*n, name))
        })
        .collect();
    let [(open, open_name)] = opens.as_slice() else {
        return None;
    };
    let stdio = *open_name == "fopen";
    let handle = assigned_to(*open, src)?;
    if assignments(&nodes, src, handle) != 1 {
        return None;
    }
    // It was written through the handle.
    let writes = nodes.iter().any(|n| {
        n.start_byte() > open.end_byte()
            && n.end_byte() <= call.start_byte()
            && plain_call(*n, src).is_some_and(|(name, args)| {
                let on_handle = args.iter().any(|a| syntax::text(*a, src) == handle);
                on_handle
                    && if stdio {
                        matches!(
                            name,
                            "fwrite" | "fprintf" | "fputs" | "fputc" | "putc" | "vfprintf"
                        )
                    } else {
                        matches!(name, "write" | "pwrite" | "dprintf" | "writev")
                    }
            })
    });
    if !writes {
        return None;
    }
    // The one close of the handle between the open and the rename that is a statement
    // of the rename's block (`fclose(f);` or `if (fclose(f) ...) ...` with the call in the
    // test); closes on error paths inside nested statements are left alone.
    let close_name = if stdio { "fclose" } else { "close" };
    let at_block_level = |close| -> Option<Node<'_>> {
        let close: Node<'_> = close;
        let stmt = statement_in(close, block)?;
        let ok = match stmt.kind() {
            "expression_statement" => stmt.named_child(0).is_some_and(|e| e.id() == close.id()),
            "if_statement" => stmt.child_by_field_name("condition").is_some_and(|c| {
                c.start_byte() <= close.start_byte() && close.end_byte() <= c.end_byte()
            }),
            _ => false,
        };
        ok.then_some(stmt)
    };
    let closes: Vec<Node<'_>> = nodes
        .iter()
        .filter(|n| n.start_byte() > open.end_byte() && n.end_byte() <= call.start_byte())
        .filter(|n| {
            plain_call(**n, src).is_some_and(|(name, args)| {
                name == close_name && args.len() == 1 && syntax::text(args[0], src) == handle
            })
        })
        .copied()
        .collect();
    let level: Vec<Node<'_>> = closes.iter().filter_map(|c| at_block_level(*c)).collect();
    let [close_stmt] = level.as_slice() else {
        return None;
    };
    let close_stmt = *close_stmt;
    let ind = crate::fix::indent_at(src, close_stmt.start_byte()).to_string();
    let u = unit(src, block, &ind);
    let check = if stdio {
        format!("fflush({handle}) != 0 || fsync(fileno({handle})) != 0")
    } else {
        format!("fsync({handle}) != 0")
    };
    let before = format!(
        "if ({check}) {{\n{ind}{u}{close_name}({handle});\n{ind}{u}return {fail};\n{ind}}}\n{ind}"
    );
    let rind = crate::fix::indent_at(src, rename_stmt.start_byte());
    let after = format!("\n{rind}if ({HELPER}({dest}) != 0) {{\n{rind}{u}return {fail};\n{rind}}}");
    Some(vec![
        Edit {
            start: close_stmt.start_byte(),
            end: close_stmt.start_byte(),
            replacement: before,
        },
        Edit {
            start: rename_stmt.end_byte(),
            end: rename_stmt.end_byte(),
            replacement: after,
        },
    ])
}

/// The missing `#include`s and the helper, inserted after the file's last top-level
/// `#include` (or at its start).
pub fn helper_edit(src: &str, root: Node<'_>) -> Edit {
    let mut c = root.walk();
    let at = root
        .named_children(&mut c)
        .filter(|n| n.kind() == "preproc_include")
        .last()
        .map_or(0, |n| n.end_byte());
    let mut text = String::new();
    if at > 0 && !src[..at].ends_with('\n') {
        text.push('\n');
    }
    for h in INCLUDES {
        if !src.contains(&format!("<{h}>")) {
            text.push_str(&format!("#include <{h}>\n"));
        }
    }
    text.push_str(&format!(
        "\n/* Added by ftvm audit --fix: fsync the directory holding `path`, so that a\n   rename into it survives a crash. Returns 0, or -1 with errno set. */\nstatic int {HELPER}(const char *path)\n{{\n    const char *slash = strrchr(path, '/');\n    char *dir = slash == NULL ? strdup(\".\")\n              : slash == path ? strdup(\"/\")\n                              : strndup(path, (size_t)(slash - path));\n    if (dir == NULL) {{\n        return -1;\n    }}\n    int fd = open(dir, O_RDONLY | O_DIRECTORY);\n    free(dir);\n    if (fd < 0) {{\n        return -1;\n    }}\n    if (fsync(fd) != 0) {{\n        int e = errno;\n        close(fd);\n        errno = e;\n        return -1;\n    }}\n    return close(fd);\n}}\n"
    ));
    if at == 0 {
        text.push('\n');
    }
    Edit {
        start: at,
        end: at,
        replacement: text,
    }
}

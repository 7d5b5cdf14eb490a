//! Crash-prone rules: unwrap/expect, explicit panics/aborts, assertions on run-time
//! results, and process exit from library code.

use super::error_handling::{enclosing_handler, in_entry_point, is_exit_call};
use super::Ctx;
use crate::catalog::{ASSERT, EXIT_IN_LIBRARY, PANIC, UNWRAP};
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind, Handler};
use tree_sitter::Node;

pub(super) fn check(
    ctx: &mut Ctx<'_>,
    node: Node<'_>,
    call: Option<&Call<'_, '_>>,
    _handler: Option<&Handler<'_, '_>>,
) {
    if ctx.path.ends_with("build.rs") {
        return;
    }
    if let Some(c) = call {
        check_unwrap(ctx, c);
        check_panic(ctx, c);
        check_assert_call(ctx, c);
        check_exit(ctx, c);
    }
    if ctx.lang == Lang::Python && node.kind() == "assert_statement" {
        if let Some(cond) = node.named_child(0) {
            if is_runtime_condition(ctx, cond) {
                ctx.report(ASSERT, node, "`assert` checks a run-time result; it raises in production and disappears under `python -O`");
            }
        }
    }
}

fn is_literal(n: Node<'_>) -> bool {
    matches!(
        n.kind(),
        "string_literal"
            | "raw_string_literal"
            | "integer_literal"
            | "float_literal"
            | "boolean_literal"
            | "char_literal"
    )
}

/// `Regex::new("...")`, `"1.2.3.4".parse()`: a call on literals only, which fails only if the
/// program itself is wrong (clippy's own exception for `expect` on constants).
fn is_constant_call(ctx: &Ctx<'_>, recv: Node<'_>) -> bool {
    let Some(c) = ctx.call(recv) else {
        return false;
    };
    let args = c.arg_nodes();
    let args_literal = args.iter().all(|a| is_literal(*a));
    let recv_literal = c.receiver.is_none_or(|r| {
        is_literal(r) || r.kind() == "identifier" && args_literal && !args.is_empty()
    });
    args_literal && recv_literal && (c.receiver.is_some_and(is_literal) || !args.is_empty())
}

fn check_unwrap(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    if ctx.lang != Lang::Rust || c.kind != CallKind::Call {
        return;
    }
    let n = c.arg_count();
    if !((c.name == "unwrap" && n == 0) || (c.name == "expect" && n == 1)) {
        return;
    }
    let Some(recv) = c.receiver else { return };
    // `m.lock().unwrap()`: a poisoned lock means another thread already panicked.
    if let Some(rc) = ctx.call(recv) {
        if matches!(rc.name, "lock" | "read" | "write") && rc.arg_count() == 0 {
            return;
        }
    }
    if is_constant_call(ctx, recv) {
        return;
    }
    let name = c.name;
    ctx.report(
        UNWRAP,
        c.node,
        format!("`.{name}()` panics on the error/None case"),
    );
}

/// Names of C functions that exist to crash the process deliberately (`serverPanic`,
/// `die`, `fatal`, `oom_handler`): an `abort()` inside them is the policy, not the defect.
fn is_fatal_helper(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    [
        "panic",
        "fatal",
        "die",
        "abort",
        "assert",
        "oom",
        "bug",
        "crash",
        "unreachable",
    ]
    .iter()
    .any(|w| l.contains(w))
}

fn check_panic(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    let hit = match ctx.lang {
        Lang::Rust => {
            (c.kind == CallKind::Macro && matches!(c.name, "panic" | "todo" | "unimplemented"))
                || (c.kind == CallKind::Call && c.name == "abort" && c.qual.ends_with("process"))
        }
        Lang::Go => {
            let f = syntax::enclosing_function_name(c.node, ctx.src, ctx.lang).unwrap_or("");
            ((c.name == "panic" && c.qual.is_empty())
                || (c.qual == "log" && c.name.starts_with("Panic")))
                && !f.starts_with("Must")
                && !f.starts_with("must")
                && f != "init"
                && !inside_recover_handler(ctx, c.node)
        }
        Lang::Python => {
            c.qual == "os" && c.name == "abort" && enclosing_handler(ctx, c.node).is_none()
        }
        Lang::C | Lang::Cpp => {
            matches!(c.name, "abort" | "__builtin_trap" | "terminate")
                && matches!(c.qual, "" | "std" | "::")
                && !syntax::enclosing_function_name(c.node, ctx.src, ctx.lang)
                    .is_some_and(is_fatal_helper)
                && enclosing_handler(ctx, c.node).is_none()
        }
        Lang::Java => false,
    };
    if hit {
        let what = ctx
            .text(c.node)
            .split(['(', '!'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        ctx.report(
            PANIC,
            c.node,
            format!("`{what}` crashes the process on a reachable path"),
        );
    }
}

/// Go `if r := recover(); r != nil { panic(r) }` re-panics on purpose.
fn inside_recover_handler(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::handler(p, ctx.src, ctx.lang).is_some_and(|h| h.is_recover) {
            return true;
        }
        n = p.parent();
    }
    false
}

/// A condition whose value depends on the environment: it contains a (non-macro) call, or
/// compares against an error sentinel (NULL, None, nullptr, -1).
fn is_runtime_condition(ctx: &Ctx<'_>, cond: Node<'_>) -> bool {
    let mut hit = false;
    let mut stack = vec![cond];
    while let Some(n) = stack.pop() {
        if let Some(c) = ctx.call(n) {
            let macro_like = c
                .name
                .chars()
                .all(|ch| ch.is_ascii_uppercase() || ch == '_' || ch.is_ascii_digit());
            let pure = matches!(
                c.name,
                "len"
                    | "size"
                    | "length"
                    | "strlen"
                    | "isinstance"
                    | "hasattr"
                    | "callable"
                    | "type"
                    | "sizeof"
                    | "offsetof"
                    | "alignof"
                    | "is_empty"
                    | "empty"
                    | "count"
                    | "all"
                    | "any"
                    | "issubclass"
                    | "getattr"
                    | "max"
                    | "min"
                    | "abs"
                    | "id"
                    | "tuple"
                    | "list"
                    | "set"
                    | "dict"
                    | "str"
                    | "int"
                    | "bool"
            );
            if !macro_like && !pure {
                hit = true;
                break;
            }
        }
        if matches!(n.kind(), "null" | "none" | "nullptr")
            || ctx.text(n) == "NULL"
            || ctx.text(n) == "-1"
        {
            hit = true;
            break;
        }
        let mut cur = n.walk();
        stack.extend(n.children(&mut cur));
    }
    hit
}

fn check_assert_call(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    match ctx.lang {
        Lang::Rust
            if c.kind == CallKind::Macro
                && matches!(c.name, "assert" | "assert_eq" | "assert_ne") =>
        {
            // Macro arguments are raw tokens: look for Result/Option probes and fallible calls.
            let Some(tt) = c.args else { return };
            let tokens = ctx.text(tt);
            let probes = [
                ".is_ok()",
                ".is_err()",
                ".is_some()",
                ".is_none()",
                ".unwrap()",
                "Ok(",
                "Err(",
                "Some(",
            ];
            if probes.iter().any(|p| tokens.contains(p)) {
                let name = c.name;
                ctx.report(
                    ASSERT,
                    c.node,
                    format!("`{name}!` on a Result/Option panics when the operation fails"),
                );
            }
        }
        Lang::C | Lang::Cpp if c.name == "assert" && c.qual.is_empty() => {
            if let Some(cond) = c.arg_nodes().first() {
                if is_runtime_condition(ctx, *cond) {
                    ctx.report(ASSERT, c.node, "`assert()` on a run-time result: aborts in debug builds, vanishes (with any side effect) under NDEBUG");
                }
            }
        }
        _ => {}
    }
}

/// Java: the enclosing class has a `main` method (a program, not a library).
fn java_class_has_main(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if p.kind() == "class_declaration" {
            if let Some(body) = p.child_by_field_name("body") {
                let mut c = body.walk();
                let found = body.named_children(&mut c).any(|m| {
                    m.kind() == "method_declaration"
                        && m.child_by_field_name("name")
                            .is_some_and(|nm| ctx.text(nm) == "main")
                });
                if found {
                    return true;
                }
            }
        }
        n = p.parent();
    }
    false
}

fn check_exit(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    if !is_exit_call(ctx.lang, c) || matches!(c.name, "abort" | "terminate") {
        return;
    }
    if in_entry_point(ctx, c.node) || enclosing_handler(ctx, c.node).is_some() {
        return;
    }
    if ctx.lang == Lang::Java && java_class_has_main(ctx, c.node) {
        return;
    }
    let what = ctx
        .text(c.node)
        .split('(')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    ctx.report(
        EXIT_IN_LIBRARY,
        c.node,
        format!("`{what}` ends the whole process from library code"),
    );
}

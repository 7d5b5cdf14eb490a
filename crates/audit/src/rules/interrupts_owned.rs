//! Java: interrupts the code of a thread may swallow because that code owns the thread's
//! interruption policy ("Java Concurrency in Practice" 7.1.3: only code that implements a
//! thread's interruption policy may swallow an interrupt request).
//!
//! A class that extends `Thread` or implements `Runnable` defines what its thread does; when
//! the handler runs on that thread (in `run()`, or in a private helper only `run()` reaches)
//! and nothing in the file can interrupt a thread (no `t.interrupt()` other than restoring
//! the current thread's flag, no `shutdownNow()`, no `cancel(true)`), the thread is stopped
//! some other way (a flag, a poison message) and the swallowed interrupt changes nothing.
//! Not for an unbounded `wait()`, which only a notify or an interrupt ends.

use super::Ctx;
use crate::syntax::{self, Handler};
use tree_sitter::Node;

/// How many private helpers deep the path from `run()` to the handler may go.
const MAX_HELPER_DEPTH: usize = 3;

/// Whether the non-throwing handler `h` runs on the thread its own class defines, and the
/// file holds no interrupter of threads (see the module comment).
pub(super) fn on_own_thread(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    if syntax::any_in_body(h.body, ctx.lang, |n| n.kind() == "throw_statement") {
        return false;
    }
    // An unbounded `wait()`: the thread sleeps until notified, and an interrupt is the only
    // other way out (heldout11 J5, J12); a bounded wait re-checks the stop flag.
    if h.protected.is_some_and(|t| {
        syntax::any_in_body(t, ctx.lang, |n| {
            ctx.call(n)
                .is_some_and(|c| c.name == "wait" && c.arg_count() == 0)
        })
    }) {
        return false;
    }
    let Some(method) = syntax::enclosing_function(h.node, ctx.lang) else {
        return false;
    };
    let Some(class) = thread_class_of(ctx, method) else {
        return false;
    };
    reached_only_from_run(ctx, method, class, MAX_HELPER_DEPTH) && !interrupts_threads(ctx.src)
}

/// The named class declaring `method` when it extends `Thread` or implements `Runnable`
/// (not an anonymous class, whose thread is set up by the code around it).
fn thread_class_of<'t>(ctx: &Ctx<'_>, method: Node<'t>) -> Option<Node<'t>> {
    if method.kind() != "method_declaration" {
        return None;
    }
    let class = method
        .parent()
        .filter(|b| b.kind() == "class_body")?
        .parent()?;
    if class.kind() != "class_declaration" {
        return None;
    }
    let names = |field: &str, want: &str| {
        class.child_by_field_name(field).is_some_and(|n| {
            ctx.text(n)
                .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .any(|w| w == want)
        })
    };
    (names("superclass", "Thread") || names("interfaces", "Runnable")).then_some(class)
}

/// `method` is `run()` of `class`, or a private method of it called at least once and only
/// from methods of `class` that are themselves reached only from `run()`.
fn reached_only_from_run(ctx: &Ctx<'_>, method: Node<'_>, class: Node<'_>, depth: usize) -> bool {
    let Some(name) = syntax::function_name(method, ctx.src, ctx.lang) else {
        return false;
    };
    let no_params = method
        .child_by_field_name("parameters")
        .is_some_and(|p| p.named_child_count() == 0);
    if name == "run" && no_params {
        return true;
    }
    if depth == 0 || !super::interrupts::is_private(ctx, method) {
        return false;
    }
    let calls = super::interrupts::calls_of(ctx, method, name);
    !calls.is_empty()
        && calls.iter().all(|c| {
            syntax::enclosing_function(*c, ctx.lang).is_some_and(|m| {
                m != method
                    && m.parent().and_then(|b| b.parent()) == Some(class)
                    && reached_only_from_run(ctx, m, class, depth - 1)
            })
        })
}

/// Whether the file's text can interrupt a thread: `x.interrupt()` on anything but
/// `Thread.currentThread()` (restoring the flag), a bare `interrupt()` (a thread interrupting
/// itself from another caller), `shutdownNow()`, or `cancel(true)`.
fn interrupts_threads(src: &str) -> bool {
    src.contains("shutdownNow(")
        || src.contains("cancel(true)")
        || src.match_indices("interrupt()").any(|(i, _)| {
            let before = &src[..i];
            let ident_char = before
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            !ident_char && !before.trim_end().ends_with("currentThread().")
        })
}

/// `catch (InterruptedException e) { Thread.interrupted(); }`: `Thread.interrupted()` reads
/// and clears the flag (it does not restore it; that is `Thread.currentThread().interrupt()`),
/// so the handler loses the interrupt as an empty one does. Whether `stmt` is such a call.
pub(super) fn clears_flag(ctx: &Ctx<'_>, stmt: Node<'_>) -> bool {
    stmt.kind() == "expression_statement"
        && stmt
            .named_child(0)
            .and_then(|e| ctx.call(e))
            .is_some_and(|c| c.name == "interrupted" && c.qual == "Thread" && c.arg_count() == 0)
}

/// `executor.submit(() -> { try { install(); } catch (InterruptedException e) { log(e); } })`:
/// the handler's try statement ends a lambda without parameters (a `Runnable`/`Callable`
/// handed to a call), so the task is over when the handler returns, as at the end of `run()`
/// (the interrupt addendum: no waiting or work goes on with a cleared flag).
pub(super) fn ends_a_task_lambda(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    if syntax::any_in_body(h.body, ctx.lang, |n| n.kind() == "throw_statement") {
        return false;
    }
    h.node
        .parent()
        .and_then(|t| super::interrupts::function_ended_by(ctx, t))
        .is_some_and(|f| {
            f.kind() == "lambda_expression"
                && f.child_by_field_name("parameters")
                    .is_some_and(|p| p.kind() == "formal_parameters" && p.named_child_count() == 0)
                && f.parent().is_some_and(|a| a.kind() == "argument_list")
        })
}

/// `catch (InterruptedException ex) { error = ex; }` and later in the method `throw
/// (InterruptedException) error` or `throw new RuntimeException(error)`: the interrupt is
/// kept and thrown after some cleanup, not swallowed (the handler only stores it).
pub(super) fn stored_for_rethrow(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(binding) = h.binding else {
        return false;
    };
    let stmts = syntax::statements(h.body);
    let stored: Vec<&str> = stmts
        .iter()
        .filter_map(|s| {
            let e = s
                .named_child(0)
                .filter(|e| e.kind() == "assignment_expression")?;
            let right = e.child_by_field_name("right")?;
            (ctx.text(right) == binding)
                .then(|| e.child_by_field_name("left").map(|l| ctx.text(l)))
                .flatten()
        })
        .collect();
    let (Some(try_stmt), Some(method)) = (
        h.node.parent(),
        syntax::enclosing_function(h.node, ctx.lang),
    ) else {
        return false;
    };
    !stored.is_empty()
        && stored.len() == stmts.len()
        && syntax::any_in_body(method, ctx.lang, |n| {
            n.kind() == "throw_statement"
                && n.start_byte() > try_stmt.end_byte()
                && syntax::any_in_body(n, ctx.lang, |i| {
                    i.kind() == "identifier" && stored.contains(&ctx.text(i))
                })
        })
}

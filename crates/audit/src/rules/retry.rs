//! Retry rules: a loop whose error handler lets the loop go round again, and which
//! exits on success, is a retry loop; it must be bounded and must back off.

use super::Ctx;
use crate::catalog::{RETRY_NO_BACKOFF, RETRY_UNBOUNDED};
use crate::lang::Lang;
use crate::syntax;
use tree_sitter::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopShape {
    /// `loop`, `while True`, `for {}`, `for(;;)`, `while (1)`.
    Infinite,
    /// Header with a counter or a bounded range.
    Counted,
    /// `while cond` with no counter in the condition.
    Conditional,
    /// Iteration over a collection: not a retry loop.
    Iteration,
}

fn shape(ctx: &Ctx<'_>, node: Node<'_>) -> LoopShape {
    let cond = node.child_by_field_name("condition");
    let cond_shape = |c: Option<Node<'_>>| match c {
        None => LoopShape::Infinite,
        Some(c) => {
            let t = ctx
                .text(c)
                .trim_matches(|ch: char| ch == '(' || ch == ')' || ch.is_whitespace());
            if matches!(t, "1" | "true" | "True" | "TRUE") {
                LoopShape::Infinite
            } else if has_counter(ctx, c) {
                LoopShape::Counted
            } else {
                LoopShape::Conditional
            }
        }
    };
    match (ctx.lang, node.kind()) {
        (Lang::Rust, "loop_expression") => LoopShape::Infinite,
        (Lang::Rust, "while_expression") => cond_shape(cond),
        (Lang::Rust, "for_expression") => {
            let is_range = node
                .child_by_field_name("value")
                .is_some_and(|v| v.kind() == "range_expression");
            if is_range {
                LoopShape::Counted
            } else {
                LoopShape::Iteration
            }
        }
        (Lang::Go, "for_statement") => {
            let header = syntax::named_children_no_comments(node)
                .into_iter()
                .find(|c| c.kind() != "block");
            match header {
                None => LoopShape::Infinite,
                Some(h) if h.kind() == "for_clause" => {
                    if h.child_by_field_name("condition").is_some() {
                        LoopShape::Counted
                    } else {
                        LoopShape::Infinite
                    }
                }
                Some(h) if h.kind() == "range_clause" => {
                    let r = h.child_by_field_name("right");
                    if r.is_some_and(|r| r.kind() == "int_literal") {
                        LoopShape::Counted
                    } else {
                        LoopShape::Iteration
                    }
                }
                Some(h) => cond_shape(Some(h)),
            }
        }
        (Lang::Python, "for_statement") => {
            let r = node.child_by_field_name("right");
            let is_range = r
                .and_then(|r| ctx.call(r))
                .is_some_and(|c| c.name == "range" && c.qual.is_empty());
            if is_range {
                LoopShape::Counted
            } else {
                LoopShape::Iteration
            }
        }
        (_, "enhanced_for_statement" | "for_range_loop") => LoopShape::Iteration,
        (_, "for_statement") => {
            // `for (i = 0; i < list.size(); i++)` walks a collection.
            let walks = cond.is_some_and(|c| {
                let t = ctx.text(c);
                t.contains("size()")
                    || t.contains(".length")
                    || t.contains("len(")
                    || t.contains("end()")
            });
            if walks {
                LoopShape::Iteration
            } else {
                cond_shape(cond)
            }
        }
        (_, "while_statement" | "do_statement") => cond_shape(cond),
        _ => LoopShape::Iteration,
    }
}

/// A relational comparison or increment/decrement: a counter bounds the loop.
fn has_counter(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        match n.kind() {
            "binary_expression" | "comparison_operator" => {
                let mut c = n.walk();
                let rel = n
                    .children(&mut c)
                    .any(|ch| matches!(ch.kind(), "<" | ">" | "<=" | ">="));
                if rel {
                    return true;
                }
            }
            "update_expression" | "inc_statement" | "dec_statement" => return true,
            "compound_assignment_expr" | "augmented_assignment" | "assignment_expression" => {
                let t = ctx.text(n);
                if t.contains("+=") || t.contains("-=") {
                    return true;
                }
            }
            _ => {}
        }
        if syntax::is_function(n, ctx.lang) {
            continue;
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
    false
}

/// Calls that wait between attempts.
fn is_backoff_call(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    [
        "sleep", "backoff", "delay", "wait", "park", "after", "timer", "jitter", "throttle",
        "pause",
    ]
    .iter()
    .any(|w| l.contains(w))
}

fn body_of(node: Node<'_>) -> Option<Node<'_>> {
    node.child_by_field_name("body")
}

/// Visit the loop body, not descending into nested loops or functions.
fn for_each_in_loop<'t>(ctx: &Ctx<'_>, body: Node<'t>, mut f: impl FnMut(Node<'t>)) {
    let mut stack = vec![body];
    while let Some(n) = stack.pop() {
        f(n);
        if n != body && (syntax::is_function(n, ctx.lang) || syntax::is_loop(n, ctx.lang)) {
            continue;
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
}

fn exits_loop(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut found = false;
    for_each_in_loop(ctx, node, |n| {
        if matches!(
            n.kind(),
            "break_statement"
                | "break_expression"
                | "return_statement"
                | "return_expression"
                | "throw_statement"
                | "raise_statement"
                | "throw_expression"
        ) || ctx.call(n).is_some_and(|c| {
            super::exits::is_exit_call(ctx.lang, &c)
                || (c.name == "panic" && c.qual.is_empty())
                || c.name.starts_with("Fatal")
        }) {
            found = true;
        }
    });
    found
        || matches!(
            node.kind(),
            "break_statement" | "return_statement" | "raise_statement" | "throw_statement"
        )
}

/// Whether `node` is, or directly contains as one of its statements, a `break`/`return`
/// (`try { connect(); break; }`). An exit buried in a condition (`if (x) break;`) is loop
/// control, not "the attempt succeeded".
fn has_success_exit(node: Node<'_>) -> bool {
    let is_exit = |n: Node<'_>| {
        matches!(
            inner_expr(n).kind(),
            "break_statement" | "break_expression" | "return_statement" | "return_expression"
        )
    };
    is_exit(node) || syntax::statements(node).into_iter().any(is_exit)
}

/// Rust: the attempt is a non-blocking data-structure or atomic operation (`try_lock`,
/// `pop_internal`, `compare_exchange`): the loop spins on contention, it does not retry a
/// failed operation on a dependency.
fn is_contention_attempt(ctx: &Ctx<'_>, e: Node<'_>) -> bool {
    syntax::any_in_body(e, ctx.lang, |n| {
        ctx.call(n).is_some_and(|c| {
            c.name.starts_with("try_")
                || c.name.starts_with("compare_exchange")
                || c.name.starts_with("fetch_")
                || c.name.starts_with("pop")
                || c.name.ends_with("_internal")
                || matches!(
                    c.name,
                    "spin_loop" | "yield_now" | "load" | "compare_and_swap"
                )
        })
    }) || e
        .child_by_field_name("value")
        .and_then(|v| ctx.call(v))
        .is_some_and(|c| c.name.starts_with("try_"))
}

/// The expression a statement wraps (`expression_statement`, `let x = <expr>`).
fn inner_expr(node: Node<'_>) -> Node<'_> {
    match node.kind() {
        "expression_statement" => node.named_child(0).unwrap_or(node),
        "let_declaration" => node.child_by_field_name("value").unwrap_or(node),
        _ => node,
    }
}

/// A retry loop makes an attempt, exits on success, and on error goes round again:
/// - try languages: a `try` directly in the loop body whose protected block exits the
///   loop and one of whose handlers does not;
/// - Go: an `if err != nil` handler that does not exit, followed by a `return`/`break`,
///   or an `if err == nil { return ... }`;
/// - Rust: a `match` whose `Ok` arm exits the loop and whose `Err` arm does not, or an
///   `if let Ok(..) = ... { return/break }`.
fn is_retry_loop(ctx: &Ctx<'_>, body: Node<'_>) -> bool {
    let stmts = syntax::statements(body);
    for (i, st) in stmts.iter().enumerate() {
        let e = inner_expr(*st);
        match (ctx.lang, e.kind()) {
            (
                Lang::Java | Lang::Cpp | Lang::Python,
                "try_statement" | "try_with_resources_statement",
            ) => {
                let Some(protected) = e.child_by_field_name("body") else {
                    continue;
                };
                let mut c = e.walk();
                let retries = e
                    .named_children(&mut c)
                    .filter_map(|h| syntax::handler(h, ctx.src, ctx.lang))
                    .any(|h| {
                        !exits_loop(ctx, h.body)
                            && !super::error_handling::all_control_flow(ctx.lang, &h.caught)
                    });
                if retries && has_success_exit(protected) {
                    return true;
                }
            }
            (Lang::Go, "if_statement") => {
                if let Some(h) = syntax::handler(e, ctx.src, ctx.lang) {
                    if !h.is_recover
                        && !exits_loop(ctx, h.body)
                        && stmts[i + 1..]
                            .iter()
                            .any(|s| matches!(s.kind(), "return_statement" | "break_statement"))
                    {
                        return true;
                    }
                } else if let (Some(cond), Some(cons)) = (
                    e.child_by_field_name("condition"),
                    e.child_by_field_name("consequence"),
                ) {
                    let t = ctx.text(cond);
                    if t.starts_with("err == nil") && has_success_exit(cons) {
                        return true;
                    }
                }
            }
            (Lang::Rust, "match_expression") => {
                let Some(block) = e.child_by_field_name("body") else {
                    continue;
                };
                // Lock-free compare-and-swap loops retry on contention, not on failure.
                let cas = e
                    .child_by_field_name("value")
                    .and_then(|v| ctx.call(v))
                    .is_some_and(|c| {
                        c.name.starts_with("compare_exchange")
                            || c.name == "compare_and_swap"
                            || c.name == "fetch_update"
                    });
                if cas || is_contention_attempt(ctx, e) {
                    continue;
                }
                let arms = syntax::named_children_no_comments(block);
                let ok_exits = arms.iter().any(|a| {
                    a.child_by_field_name("pattern")
                        .is_some_and(|p| ctx.text(p).starts_with("Ok("))
                        && a.child_by_field_name("value")
                            .is_some_and(|v| has_success_exit(v))
                });
                let err_retries = arms
                    .iter()
                    .filter_map(|a| syntax::handler(*a, ctx.src, ctx.lang))
                    .any(|h| !exits_loop(ctx, h.body));
                if ok_exits && err_retries {
                    return true;
                }
            }
            (Lang::Rust, "if_expression") => {
                let ok_let = e
                    .child_by_field_name("condition")
                    .and_then(|c| c.child_by_field_name("pattern"))
                    .is_some_and(|p| ctx.text(p).starts_with("Ok("));
                if ok_let
                    && !is_contention_attempt(ctx, e)
                    && e.child_by_field_name("consequence")
                        .is_some_and(|c| has_success_exit(c))
                {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>) {
    // C has no handler construct to anchor on; in Rust crates the measured matches were
    // lock-free/spin and parser-recovery loops, so Rust is not checked either.
    if matches!(ctx.lang, Lang::C | Lang::Rust) || !syntax::is_loop(node, ctx.lang) {
        return;
    }
    let shape = shape(ctx, node);
    if shape == LoopShape::Iteration {
        return;
    }
    let Some(body) = body_of(node) else { return };
    if !is_retry_loop(ctx, body) {
        return;
    }
    let mut backoff = false;
    syntax::for_each_in_body(node, ctx.lang, |n| {
        if ctx
            .call(n)
            .is_some_and(|c| is_backoff_call(c.name) || is_backoff_call(c.qual))
        {
            backoff = true;
        }
        // Go: `<-time.After(d)` / `<-ticker.C`.
        if n.kind() == "unary_expression" && ctx.text(n).starts_with("<-") {
            let t = ctx.text(n);
            if t.contains("After") || t.contains("Tick") || t.contains(".C") {
                backoff = true;
            }
        }
        !backoff
    });
    // Only a loop with no exit condition at all can retry forever; `while !done` and
    // `for ctx.Err() == nil` stop when their condition says so.
    let bounded = shape != LoopShape::Infinite || has_counter(ctx, body);
    if !bounded {
        ctx.report(
            RETRY_UNBOUNDED,
            node,
            "retry loop has no attempt limit: a permanent failure loops forever",
        );
    }
    if !backoff {
        ctx.report(
            RETRY_NO_BACKOFF,
            node,
            "retry loop retries immediately, with no sleep/backoff between attempts",
        );
    }
}

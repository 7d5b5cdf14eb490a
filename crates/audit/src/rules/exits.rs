//! Process exits: which calls end the process, whether a call sits in an error handler or
//! in the program's entry point, and the catch-and-abort rule.

use super::Ctx;
use crate::catalog::CATCH_AND_ABORT;
use crate::lang::Lang;
use crate::syntax::{self, last_segment, Call};
use tree_sitter::Node;

/// Calls that end the process.
pub(super) fn is_exit_call(lang: Lang, c: &Call<'_, '_>) -> bool {
    match lang {
        Lang::C | Lang::Cpp => {
            matches!(c.name, "exit" | "quick_exit" | "abort" | "terminate")
                && matches!(c.qual, "" | "std" | "::")
        }
        Lang::Python => {
            (c.qual.is_empty() && matches!(c.name, "exit" | "quit"))
                || (c.qual == "sys" && c.name == "exit")
                || (c.qual == "os" && c.name == "abort")
        }
        Lang::Go => {
            (c.qual == "os" && c.name == "Exit")
                || (matches!(c.qual, "log" | "klog" | "glog" | "logrus")
                    && c.name.starts_with("Fatal"))
        }
        Lang::Java => {
            (c.qual == "System" && c.name == "exit")
                || (c.qual.ends_with("getRuntime()") && matches!(c.name, "exit" | "halt"))
        }
        // Measured: exits in Rust crates are deliberate (forked children, build-script
        // failure helpers, broken-pipe handling); not reported.
        Lang::Rust => false,
    }
}

/// The handler (if any) whose body contains `node`, within the same function.
pub(super) fn enclosing_handler<'t>(
    ctx: &Ctx<'_>,
    node: Node<'t>,
) -> Option<(Node<'t>, Vec<&'static str>)> {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return None;
        }
        if let Some(h) = syntax::handler(p, ctx.src, ctx.lang) {
            let in_body =
                h.body.start_byte() <= node.start_byte() && node.end_byte() <= h.body.end_byte();
            if in_body {
                let fatal = h.caught.iter().any(|t| {
                    matches!(
                        last_segment(t),
                        "KeyboardInterrupt"
                            | "SystemExit"
                            | "OutOfMemoryError"
                            | "VirtualMachineError"
                            | "StackOverflowError"
                    )
                });
                return Some((p, if fatal { vec!["fatal"] } else { Vec::new() }));
            }
        }
        n = p.parent();
    }
    None
}

/// Whether an exit at `node` sits in the program's entry point (where exiting is its job).
pub(super) fn in_entry_point(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    if ctx.facts.is_program || (ctx.lang == Lang::Java && java_class_has_main(ctx, node)) {
        return true;
    }
    syntax::enclosing_name(node, ctx.src, ctx.lang)
        .is_some_and(|f| matches!(f, "main" | "init" | "_main") || is_exit_helper_name(f))
}

/// Names of functions (or of the variable a lambda is stored in) that exist to end the
/// process: `Fatal`, `Fatalf`, `Exit`, `die`, `SYSTEM_EXIT`, `serverPanic`. Exiting there is
/// their contract; the decision is made by their callers.
pub(super) fn is_exit_helper_name(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    [
        "fatal",
        "exit",
        "die",
        "panic",
        "abort",
        "halt",
        "quit",
        "crash",
        "terminate",
        "bail",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// Java: the enclosing class has a `main` method (a program, not a library).
pub(super) fn java_class_has_main(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
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

pub(super) fn check_abort_in_handler(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    if !is_exit_call(ctx.lang, c) {
        return;
    }
    let Some((_, flags)) = enclosing_handler(ctx, c.node) else {
        return;
    };
    if !flags.is_empty() || in_entry_point(ctx, c.node) {
        return;
    }
    let name = ctx.text(c.node).split('(').next().unwrap_or("").to_string();
    ctx.report(
        CATCH_AND_ABORT,
        c.node,
        format!("`{name}` ends the process from inside an error handler"),
    );
}

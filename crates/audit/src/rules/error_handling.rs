//! Handler rules: empty, TODO and log-only handlers and over-broad catch. (Exits from
//! handlers are in `exits.rs`, dropped results in `ignored_result.rs`.)

use super::exits::java_class_has_main;
use super::Ctx;
use crate::catalog::{
    BROAD_CATCH, EMPTY_HANDLER, INTERRUPT_WRAPPED, LOG_ONLY_HANDLER, LOST_INTERRUPT, TODO_HANDLER,
};
use crate::lang::Lang;
use crate::syntax::{self, last_segment, Call, CallKind, Handler};
use tree_sitter::Node;

/// Check one error handler.
pub(super) fn check(ctx: &mut Ctx<'_>, handler: &Handler<'_, '_>) {
    check_handler(ctx, handler);
}

/// Exceptions that are routinely used for control flow (feature probes, parse fallbacks,
/// "already gone"), where an empty or log-only handler is the idiom, not a defect.
const PY_CONTROL_FLOW: &[&str] = &[
    "ImportError",
    "ModuleNotFoundError",
    "KeyError",
    "IndexError",
    "AttributeError",
    "StopIteration",
    "StopAsyncIteration",
    "ValueError",
    "TypeError",
    "NameError",
    "NotImplementedError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "LookupError",
    "KeyboardInterrupt",
    "GeneratorExit",
    "CancelledError",
    "FileNotFoundError",
    "FileExistsError",
    "ProcessLookupError",
    "ChildProcessError",
    "OverflowError",
    "DeprecationWarning",
    "UnsupportedOperation",
    "InvalidOperation",
    "JSONDecodeError",
    "SystemExit",
    "TimeoutExpired",
];
const JAVA_CONTROL_FLOW: &[&str] = &[
    "NumberFormatException",
    "ClassNotFoundException",
    "NoSuchMethodException",
    "NoSuchFieldException",
    "CloneNotSupportedException",
    "UnsupportedEncodingException",
    "NoClassDefFoundError",
    "ParseException",
    "DateTimeParseException",
    "FileAlreadyExistsException",
    "NoSuchFileException",
];
/// Calls whose failure in a `try` body is commonly ignored on purpose (best-effort cleanup).
const CLEANUP_CALLS: &[&str] = &[
    "close",
    "closeQuietly",
    "shutdown",
    "shutdownNow",
    "disconnect",
    "release",
    "unlock",
    "delete",
    "deleteIfExists",
    "remove",
    "unlink",
    "rmdir",
    "rmtree",
    "cancel",
    "stop",
    "destroy",
    "dispose",
    "rollback",
    "kill",
    "terminate",
    "removeShutdownHook",
    "deleteOnExit",
    "interrupt",
    "abort",
    "cleanup",
    "closeSession",
    "unregister",
    "removeHandler",
    "free",
    "shutdownInput",
    "shutdownOutput",
    "closeAll",
    "unregisterAll",
    "stopServer",
];
/// Method/function names that only log or print.
const LOG_NAMES: &[&str] = &[
    "debug",
    "info",
    "warn",
    "warning",
    "error",
    "trace",
    "critical",
    "exception",
    "log",
    "severe",
    "fine",
    "finer",
    "finest",
    "verbose",
    "notice",
    "printStackTrace",
    "println",
    "print",
    "printf",
    "Print",
    "Println",
    "Printf",
    "Debug",
    "Debugf",
    "Info",
    "Infof",
    "Warn",
    "Warnf",
    "Warning",
    "Warningf",
    "Error",
    "Errorf",
    "Errorln",
    "Warnln",
    "Infoln",
    "Trace",
    "Tracef",
    "Log",
    "Logf",
    "Infow",
    "Warnw",
    "Errorw",
    "Debugw",
    "perror",
    "syslog",
    "eprintln",
    "eprint",
    "fprintf",
    "fputs",
    "vlog",
    "logf",
];
const RUST_LOG_MACROS: &[&str] = &[
    "println", "eprintln", "print", "eprint", "warn", "error", "info", "debug", "trace", "log",
    "event",
];

fn is_deliberate_binding(name: &str) -> bool {
    let n = name.trim_start_matches('_').to_ascii_lowercase();
    name == "_" || n.starts_with("ignore") || n.starts_with("expected") || n == "unused"
}

pub(super) fn all_control_flow(lang: Lang, caught: &[&str]) -> bool {
    let list = match lang {
        Lang::Python => PY_CONTROL_FLOW,
        Lang::Java => JAVA_CONTROL_FLOW,
        _ => return false,
    };
    !caught.is_empty() && caught.iter().all(|t| list.contains(&last_segment(t)))
}

/// A call statement that only logs/prints.
pub(super) fn is_logging_call(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    if c.kind == CallKind::Macro {
        return RUST_LOG_MACROS.contains(&c.name);
    }
    if ctx.lang == Lang::Go
        && matches!(c.qual, "log" | "klog" | "glog")
        && c.name.starts_with("Fatal")
    {
        return false;
    }
    if c.name == "fprintf" || c.name == "fputs" {
        return c
            .arg_nodes()
            .iter()
            .any(|a| matches!(ctx.text(*a), "stderr" | "stdout"));
    }
    if c.name == "Errorf" && c.qual == "fmt" {
        return false;
    }
    LOG_NAMES.contains(&c.name) || (ctx.lang == Lang::Java && is_log_wrapper(c.name))
}

/// Java: a class's own logging wrapper named by the level it logs at (`logDebug`,
/// `logWarn`): two words, `log` then a level. `logFatal` is not one (it may abort).
/// Only Java: measured there (lost-interrupt); elsewhere such names were not measured.
fn is_log_wrapper(name: &str) -> bool {
    if !name.starts_with("log") {
        return false;
    }
    let words = syntax::ident_words(name);
    words.len() == 2
        && words[0] == "log"
        && matches!(
            words[1].as_str(),
            "debug" | "info" | "warn" | "warning" | "error" | "trace"
        )
}

/// A statement that only logs: a call statement to a logger, or C++ `std::cerr << ...`.
pub(super) fn is_logging_statement(ctx: &Ctx<'_>, stmt: Node<'_>) -> bool {
    let expr = if matches!(stmt.kind(), "expression_statement") {
        match syntax::named_children_no_comments(stmt).first() {
            Some(e) => *e,
            None => return false,
        }
    } else {
        stmt
    };
    if let Some(c) = ctx.call(expr) {
        return is_logging_call(ctx, &c);
    }
    if expr.kind() == "binary_expression" {
        let mut left = expr;
        while left.kind() == "binary_expression" {
            match left.child_by_field_name("left") {
                Some(l) => left = l,
                None => return false,
            }
        }
        return matches!(
            ctx.text(left),
            "std::cerr" | "cerr" | "std::clog" | "clog" | "std::cout" | "cout"
        );
    }
    false
}

/// Body is effectively empty: no statements, or only `pass` / `...` (Python).
fn is_empty_body(stmts: &[Node<'_>], ctx: &Ctx<'_>) -> bool {
    stmts.iter().all(|s| {
        s.kind() == "pass_statement"
            || (s.kind() == "expression_statement" && ctx.text(*s).trim() == "...")
            || s.kind() == "empty_statement"
    })
}

/// The try block only does best-effort cleanup (`try { x.close(); } catch ...`).
fn protects_only_cleanup(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(p) = h.protected else { return false };
    let mut calls = 0usize;
    let mut only_cleanup = true;
    syntax::for_each_in_body(p, ctx.lang, |n| {
        if n.kind() == "expression_statement" {
            if let Some(c) = n.named_child(0).and_then(|e| ctx.call(e)) {
                calls += 1;
                only_cleanup &= CLEANUP_CALLS.contains(&c.name);
            }
        }
        only_cleanup
    });
    calls > 0 && only_cleanup
}

/// Whether the handler body re-raises / rethrows / propagates (`throw`, `raise`, `panic`).
fn rethrows(ctx: &Ctx<'_>, body: Node<'_>) -> bool {
    syntax::any_in_body(body, ctx.lang, |n| {
        matches!(
            n.kind(),
            "throw_statement" | "raise_statement" | "throw_expression"
        ) || (ctx.lang == Lang::Go
            && ctx
                .call(n)
                .is_some_and(|c| c.name == "panic" && c.qual.is_empty()))
    }) || matches!(body.kind(), "throw_statement" | "raise_statement")
}

/// Words of a method name that say it shuts something down (`shutdown`, `doShutdown`,
/// `stop`, `close`, `deinit`, `destroy`, `dispose`, `terminate`, `halt`).
const SHUTDOWN_WORDS: &[&str] = &[
    "shutdown",
    "stop",
    "close",
    "deinit",
    "destroy",
    "dispose",
    "terminate",
    "halt",
];

/// An empty interrupt handler that only ends the last wait of a shutdown: the method's name
/// says it shuts something down and the handler is not inside a loop (no further wait,
/// no work that goes on). The interrupt only cuts the wait short and the shutdown finishes
/// as it would have; labelled FP in every round that judged such a wait (reactor
/// `shutdown(grace)`, a dispatcher's `shutdown()` latch). A handler in a loop (joining one
/// worker after another, waiting until a pool drains) still loses the interrupt for the
/// waits that follow and is reported.
fn ends_a_shutdown_wait(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let mut n = h.node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return syntax::function_name(p, ctx.src, ctx.lang).is_some_and(|name| {
                syntax::ident_words(name)
                    .iter()
                    .any(|w| SHUTDOWN_WORDS.contains(&w.as_str()))
            });
        }
        if syntax::is_loop(p, ctx.lang) || p.kind() == "lambda_expression" {
            return false;
        }
        n = p.parent();
    }
    false
}

/// Java: the type of a `throw new X(..)` in an interrupt handler when X is an ordinary
/// exception (`RuntimeException`, `IOException`, a project's own), not one that says it
/// was interrupted or cancelled (`InterruptedIOException`, `ClosedByInterruptException`,
/// `CancellationException`): the interrupt becomes an ordinary failure.
fn interrupt_wrapper<'s>(ctx: &Ctx<'s>, h: &Handler<'_, '_>) -> Option<&'s str> {
    let mut found = None;
    syntax::for_each_in_body(h.body, ctx.lang, |n| {
        if n.kind() == "throw_statement" {
            if let Some(t) = n
                .named_child(0)
                .filter(|e| e.kind() == "object_creation_expression")
                .and_then(|e| e.child_by_field_name("type"))
            {
                let name = last_segment(ctx.text(t));
                if !name.contains("Interrupt") && !name.contains("Cancel") {
                    found = Some(name);
                }
            } else if let Some(name) = n
                .named_child(0)
                .and_then(|e| static_exception_factory(ctx, h, e))
            {
                found = Some(name);
            }
        }
        found.is_none()
    });
    found
}

/// `throw ConcurrencyException.waitFailureOnClientSession(e)`: a static factory of an
/// exception class (the qualifier's last segment ends in `Exception` or `Error` and is not an
/// interrupt or cancellation type) that takes the caught interrupt; the class name.
fn static_exception_factory<'s>(
    ctx: &Ctx<'s>,
    h: &Handler<'_, '_>,
    e: Node<'_>,
) -> Option<&'s str> {
    if e.kind() != "method_invocation" {
        return None;
    }
    let object = e.child_by_field_name("object")?;
    let class = last_segment(ctx.text(object));
    let binding = h.binding?;
    let passes_interrupt = e.child_by_field_name("arguments").is_some_and(|a| {
        syntax::named_children_no_comments(a)
            .iter()
            .any(|x| ctx.text(*x) == binding)
    });
    (class.starts_with(|c: char| c.is_ascii_uppercase())
        && (class.ends_with("Exception") || class.ends_with("Error"))
        && !class.contains("Interrupt")
        && !class.contains("Cancel")
        && passes_interrupt)
        .then_some(class)
}

fn check_handler(ctx: &mut Ctx<'_>, h: &Handler<'_, '_>) {
    check_broad_catch(ctx, h);
    if h.is_recover {
        return;
    }
    if ctx.lang == Lang::Java
        && syntax::statements(h.body)
            .iter()
            .all(|s| is_inert_java_statement(ctx, *s))
    {
        if let Some(wait) =
            super::interrupts::broad_catch_around_wait(ctx, h, inside_loop(ctx, h.node))
        {
            ctx.report(
                LOST_INTERRUPT,
                h.node,
                format!("{} around `{wait}()` in a loop catches the interrupt as any failure: the flag is cleared and the loop waits again", handler_label(h)),
            );
            return;
        }
    }
    // An interrupt handler is not documented by its variable's name alone (`ignored`): the
    // label definition asks for a reason, and a lost interrupt is the defect whatever the
    // name says.
    let interrupt = loses_interrupt(ctx, h);
    // `catch (InterruptedException e) { Thread.interrupted(); }`: clearing the flag again is
    // no handling (heldout18 J7-J9, J12).
    let body_stmts = syntax::statements(h.body);
    if interrupt
        && body_stmts
            .iter()
            .any(|s| super::interrupts_owned::clears_flag(ctx, *s))
        && body_stmts.iter().all(|s| {
            super::interrupts_owned::clears_flag(ctx, *s) || is_inert_java_statement(ctx, *s)
        })
        && !syntax::comments_in(h.body)
            .iter()
            .any(|c| super::is_decision_comment(ctx.text(*c)))
        && !ends_a_shutdown_wait(ctx, h)
    {
        ctx.report(
            LOST_INTERRUPT,
            h.node,
            format!("{} only calls `Thread.interrupted()`, which clears the interrupt flag instead of restoring it: the work goes on", handler_label(h)),
        );
        return;
    }
    // Only a handler of the interrupt alone: in a multi-catch (`KeeperException |
    // InterruptedException`) the wrapper is the generic failure path of a command.
    if interrupt
        && h.caught.len() == 1
        && !syntax::comments_in(h.body)
            .iter()
            .any(|c| super::is_decision_comment(ctx.text(*c)))
    {
        if let Some(wrapper) = interrupt_wrapper(ctx, h) {
            // An exception that leaves the task's `run()`/`call()` ends the task (fail-stop).
            if super::interrupts::wrap_ends_a_task(ctx, h) {
                return;
            }
            ctx.report(
                INTERRUPT_WRAPPED,
                h.node,
                format!("{} rethrows the interrupt as `{wrapper}` without restoring the interrupt flag: callers that catch it carry on", handler_label(h)),
            );
            return;
        }
        if let Some(helper) = super::interrupts::handed_to_helper(ctx, h) {
            ctx.report(
                LOST_INTERRUPT,
                h.node,
                format!("{} hands the interrupt to `{helper}`, which neither restores the interrupt flag nor rethrows: the work goes on", handler_label(h)),
            );
            return;
        }
    }
    if (h.binding.is_some_and(is_deliberate_binding) && !interrupt)
        || all_control_flow(ctx.lang, &h.caught)
        || protects_only_cleanup(ctx, h)
    {
        return;
    }
    // `try { return parse(x); } catch (E e) {}` then the next alternative: falling through
    // to the code after the `try` is the handling.
    let tries_alternative = h.protected.is_some_and(|p| {
        syntax::any_in_body(p, ctx.lang, |n| {
            matches!(
                n.kind(),
                "return_statement" | "break_statement" | "continue_statement"
            )
        })
    });
    let stmts = syntax::statements(h.body);
    let comment_scope = if ctx.lang == Lang::Python {
        h.node
    } else {
        h.body
    };
    let comments = syntax::comments_in(comment_scope);
    let has_todo = comments
        .iter()
        .any(|c| syntax::is_todo_comment(ctx.text(*c)));
    let what = handler_label(h);
    // A comment inside the handler that documents the decision (`// Ignore: probe only`).
    let body_comments = syntax::comments_in(h.body);
    if body_comments.iter().any(|c| {
        let t = ctx.text(*c);
        super::is_decision_comment(t) && !(interrupt && is_bare_ignore(t))
    }) {
        return;
    }
    // `catch (InterruptedException e) { return false; }`: the interrupt becomes a failure
    // value ("not acquired") and the flag is cleared; callers that retry never see it.
    // The value of a handler that is only `return <value>;` (no comment, no TODO).
    let only_returns = (interrupt
        && !has_todo
        && comments.is_empty()
        && stmts.len() == 1
        && stmts[0].kind() == "return_statement")
        .then(|| stmts[0].named_child(0))
        .flatten();
    if let Some(value) = only_returns
        .map(|v| ctx.text(v))
        .filter(|v| matches!(*v, "false" | "null" | "-1" | "0" | "-1L" | "0L"))
    {
        ctx.report(
            LOST_INTERRUPT,
            h.node,
            format!("{what} only returns `{value}`: the interrupt flag is cleared and the caller sees an ordinary failure"),
        );
        return;
    }
    // `try { wait(timeout); return reply; } catch (InterruptedException e) { return reply; }`:
    // the interrupt of the blocking call is answered with the value a timeout gives, and
    // the flag is cleared (heldout11 J1). A returned variable or field, only when the try
    // block blocks and the method never restores the flag.
    if let Some(value) = only_returns
        .filter(|v| matches!(v.kind(), "identifier" | "field_access"))
        .map(|v| ctx.text(v))
        .filter(|v| h.binding.is_none_or(|b| *v != b))
        .filter(|_| protects_call(ctx, h, BLOCKING_CALLS))
        .filter(|_| !method_restores_interrupt(ctx, h.node))
    {
        ctx.report(
            LOST_INTERRUPT,
            h.node,
            format!("{what} only returns `{value}` as if the wait had timed out: the interrupt flag is cleared and the caller sees an ordinary result"),
        );
        return;
    }
    // `catch (InterruptedException ie) { tries = maxTries; }`: the handler only sets
    // variables (ends a retry loop, records a state) and the method never restores the flag
    // (no `interrupt()` anywhere in it, so not the deferred `interrupted = true` idiom).
    if interrupt
        && !has_todo
        && !stmts.is_empty()
        && stmts.iter().all(|s| {
            s.kind() == "expression_statement"
                && s.named_child(0).is_some_and(|e| {
                    matches!(e.kind(), "assignment_expression" | "update_expression")
                })
                && !syntax::any_in_body(*s, ctx.lang, |n| ctx.call(n).is_some())
        })
        && !method_restores_interrupt(ctx, h.node)
    {
        ctx.report(
            LOST_INTERRUPT,
            h.node,
            format!("{what} only sets a variable: the interrupt flag is cleared and the caller never learns of the interrupt"),
        );
        return;
    }
    if is_empty_body(&stmts, ctx) {
        // Falling through to the next attempt is handling for an ordinary failure, but the
        // interrupt is lost all the same (a retry loop that sleeps between attempts).
        if tries_alternative && !has_todo && !interrupt {
            return;
        }
        // Swallowing the failure of a probe or getter is routine; swallowing the failure of
        // a write/send/commit, or of a call whose result is used afterwards, is the defect.
        if matches!(ctx.lang, Lang::Python | Lang::Java | Lang::Cpp)
            && !has_todo
            && !(has_side_effect(ctx, h) || result_used_after(ctx, h) || loses_interrupt(ctx, h))
        {
            return;
        }
        if has_todo {
            ctx.report(
                TODO_HANDLER,
                h.node,
                format!("{what} is empty except for a TODO/FIXME comment"),
            );
        } else if interrupt
            && comments.iter().all(|c| is_bare_ignore(ctx.text(*c)))
            && !ends_a_shutdown_wait(ctx, h)
        {
            ctx.report(
                LOST_INTERRUPT,
                h.node,
                format!("{what} is empty: the interrupt flag is cleared and the work goes on"),
            );
        } else if comments.is_empty() {
            ctx.report(
                EMPTY_HANDLER,
                h.node,
                format!("{what} is empty: the error is silently dropped"),
            );
        }
        return;
    }
    let has_else = h.node.child_by_field_name("alternative").is_some();
    // An interrupt caught inside a loop of the method (not a shutdown wait): the loop goes
    // round and waits again, so no log message excuses it, and a handler that only times
    // and logs the interrupt (`if (traceEnabled) log.trace(...)`) is log-only too.
    let keeps_waiting = interrupt && inside_loop(ctx, h.node) && !ends_a_shutdown_wait(ctx, h);
    if !has_else
        && !ctx.facts.is_program
        && stmts.iter().all(|s| {
            is_logging_statement(ctx, *s)
                || ((keeps_waiting || interrupt) && is_inert_java_statement(ctx, *s))
        })
        && stmts.iter().any(|s| logs_somewhere(ctx, *s))
        // The log message itself says the failure is ignored on purpose ("Ignoring
        // interrupt during shutdown"): a documented decision, like a comment.
        && (has_todo
            || keeps_waiting
            || !stmts.iter().any(|s| super::says_ignored(ctx.text(*s))))
        && (has_todo
            || loses_interrupt(ctx, h)
            // Java: measured on the tuning corpora, a logged failure whose result
            // variable is used afterwards was nearly always reported through that
            // variable (probes with fallbacks, periodic tasks, status results).
            // Java counts only a `null` default that is used unchecked afterwards.
            || (ctx.lang != Lang::Java && result_used_after(ctx, h))
            || (ctx.lang == Lang::Java && result_used_after(ctx, h) && unchecked_null_result(ctx, h))
            || store_failure_swallowed(ctx, h))
    {
        if has_todo {
            ctx.report(
                TODO_HANDLER,
                h.node,
                format!("{what} only logs and carries a TODO/FIXME"),
            );
        } else if store_failure_swallowed(ctx, h) {
            ctx.report(
                LOG_ONLY_HANDLER,
                h.node,
                format!("{what} only logs a failed write of a file: the caller goes on as if the state were stored"),
            );
        } else if loses_interrupt(ctx, h) {
            // Only logging the interrupt of the last wait of a shutdown (not in a loop) is
            // best-effort cleanup, like the empty handler above: not reported.
            if !ends_a_shutdown_wait(ctx, h) {
                ctx.report(
                    LOST_INTERRUPT,
                    h.node,
                    format!("{what} only logs: the interrupt flag is cleared and the work goes on"),
                );
            }
        } else {
            ctx.report(
                LOG_ONLY_HANDLER,
                h.node,
                format!("{what} only logs, then execution continues as if it succeeded"),
            );
        }
    }
}

/// Java calls that block until woken, interrupted or timed out.
const BLOCKING_CALLS: &[&str] = &["wait", "sleep", "join", "await", "take", "acquire"];

/// Whether the handler's try block calls one of `names` directly.
fn protects_call(ctx: &Ctx<'_>, h: &Handler<'_, '_>, names: &[&str]) -> bool {
    h.protected.is_some_and(|t| {
        syntax::any_in_body(t, ctx.lang, |n| {
            ctx.call(n).is_some_and(|c| names.contains(&c.name))
        })
    })
}

/// Whether `node` lies in a loop of its own function (or lambda).
fn inside_loop(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) || p.kind() == "lambda_expression" {
            return false;
        }
        if syntax::is_loop(p, ctx.lang) {
            return true;
        }
        n = p.parent();
    }
    false
}

/// Java: a statement that neither propagates, compensates nor changes state: a log call, a
/// local that reads the clock (`long end = System.nanoTime();`), or an `if` without `else`
/// that guards only such statements (`if (log.isTraceEnabled()) { log.trace(..); }`).
fn is_inert_java_statement(ctx: &Ctx<'_>, s: Node<'_>) -> bool {
    match s.kind() {
        "local_variable_declaration" => {
            let mut pure = true;
            syntax::for_each_in_body(s, ctx.lang, |n| {
                if let Some(c) = ctx.call(n) {
                    pure &= matches!(c.name, "nanoTime" | "currentTimeMillis" | "now");
                }
                pure
            });
            pure
        }
        "if_statement" => {
            let inner = guarded_statements(s);
            s.child_by_field_name("alternative").is_none()
                && !inner.is_empty()
                && inner
                    .iter()
                    .all(|i| is_logging_statement(ctx, *i) || is_inert_java_statement(ctx, *i))
        }
        _ => is_logging_statement(ctx, s),
    }
}

/// A log call in `s` or in an `if` it guards.
fn logs_somewhere(ctx: &Ctx<'_>, s: Node<'_>) -> bool {
    is_logging_statement(ctx, s)
        || (s.kind() == "if_statement"
            && guarded_statements(s)
                .iter()
                .any(|i| logs_somewhere(ctx, *i)))
}

/// The statements an `if` runs when its condition holds (its block's, or the single
/// statement); none when it has no consequence.
fn guarded_statements(s: Node<'_>) -> Vec<Node<'_>> {
    match s.child_by_field_name("consequence") {
        Some(b) if b.kind() == "block" => syntax::statements(b),
        Some(b) => vec![b],
        None => Vec::new(),
    }
}

/// A handler that neither propagates nor compensates: only logging, `pass`, `continue`,
/// `break`, or returning nothing / a literal default.
fn is_trivial_handler(ctx: &Ctx<'_>, body: Node<'_>) -> bool {
    syntax::statements(body).iter().all(|s| match s.kind() {
        "pass_statement" | "continue_statement" | "empty_statement" => true,
        "return_statement" => syntax::named_children_no_comments(*s).iter().all(|v| {
            matches!(
                v.kind(),
                "none"
                    | "null_literal"
                    | "true"
                    | "false"
                    | "integer"
                    | "decimal_integer_literal"
                    | "nil"
                    | "number_literal"
                    | "string"
                    | "string_literal"
                    | "unary_expression"
                    | "expression_list"
            ) && v.named_child_count() <= 1
        }),
        _ => is_logging_statement(ctx, *s) || ctx.text(*s).trim() == "...",
    })
}

fn handler_label(h: &Handler<'_, '_>) -> String {
    if h.caught.is_empty() {
        "bare `except:` handler".to_string()
    } else {
        format!("handler for `{}`", h.caught.join(" | "))
    }
}

fn check_broad_catch(ctx: &mut Ctx<'_>, h: &Handler<'_, '_>) {
    let broad = match ctx.lang {
        Lang::Java => h
            .caught
            .iter()
            .any(|t| matches!(last_segment(t), "Exception" | "Throwable")),
        Lang::Cpp => h
            .caught
            .iter()
            .any(|t| *t == "..." || matches!(*t, "std::exception" | "exception")),
        // `except Exception` in Python was measured at 3/13 (best-effort probes and
        // boundaries); only the catch-alls that also swallow SystemExit/KeyboardInterrupt
        // are reported.
        Lang::Python => {
            h.caught.is_empty() || h.caught.iter().any(|t| last_segment(t) == "BaseException")
        }
        Lang::Go => h.is_recover,
        Lang::C | Lang::Rust => false,
    };
    if !broad || rethrows(ctx, h.body) {
        return;
    }
    // A catch-all is reported when the handler then does nothing about it (logs, passes,
    // or returns a default) around something other than best-effort cleanup.
    if !is_trivial_handler(ctx, h.body)
        || protects_only_cleanup(ctx, h)
        || h.binding.is_some_and(is_deliberate_binding)
    {
        return;
    }
    // Entry points and thread/task boundaries are where a catch-all belongs.
    let boundary = syntax::enclosing_function_name(h.node, ctx.src, ctx.lang).is_some_and(|f| {
        matches!(
            f,
            "main" | "run" | "call" | "__main__" | "uncaughtException"
        )
    });
    if boundary {
        return;
    }
    let what = if h.caught.is_empty() {
        "bare `except:` catches everything, including SystemExit and KeyboardInterrupt".to_string()
    } else if h.is_recover {
        "`recover()` swallows every panic without re-panicking".to_string()
    } else {
        format!(
            "catch-all `{}` handler does not re-raise",
            h.caught.join(" | ")
        )
    };
    ctx.report(BROAD_CATCH, h.node, what);
}

/// Whether the handler lets code after it use a result the failed operation was meant to
/// produce: Go `v, err := f(); if err != nil { log }` then `v` is used; Java/Python/C++
/// `x = f()` inside the `try` and `x` read after it. That is where "log and carry on"
/// computes with missing data (Yuan et al.'s log-only handlers); logging a failed
/// fire-and-forget operation is not reported.
fn result_used_after(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let (assigned, after_anchor): (Vec<&str>, Option<Node<'_>>) = match ctx.lang {
        Lang::Go => {
            if h.node.child_by_field_name("initializer").is_some() {
                return false;
            }
            let Some(prev) = h.node.prev_named_sibling() else {
                return false;
            };
            if !matches!(
                prev.kind(),
                "short_var_declaration" | "assignment_statement"
            ) {
                return false;
            }
            let names = prev
                .child_by_field_name("left")
                .map(syntax::named_children_no_comments)
                .unwrap_or_default()
                .into_iter()
                .map(|n| ctx.text(n))
                .filter(|t| *t != "_" && Some(*t) != h.binding)
                .collect();
            (names, Some(h.node))
        }
        Lang::Java | Lang::Python | Lang::Cpp => {
            let Some(p) = h.protected else { return false };
            let mut names = Vec::new();
            syntax::for_each_in_body(p, ctx.lang, |n| {
                if matches!(n.kind(), "assignment_expression" | "assignment") {
                    if let Some(l) = n
                        .child_by_field_name("left")
                        .filter(|l| l.kind() == "identifier")
                    {
                        names.push(ctx.text(l));
                    }
                }
                true
            });
            (names, p.parent())
        }
        Lang::C | Lang::Rust => return false,
    };
    // `boolean success = false; try { success = f(); } catch (..) { log }`: the variable
    // keeps its failure value, and that value is how the failure is reported.
    let failure_default: Vec<&str> = h
        .protected
        .and_then(|p| p.parent())
        .map(|t| preceding_failure_defaults(ctx, t))
        .unwrap_or_default();
    let assigned: Vec<&str> = assigned
        .into_iter()
        .filter(|a| !failure_default.contains(a))
        .collect();
    if assigned.is_empty() {
        return false;
    }
    let mut next = after_anchor.and_then(|a| a.next_named_sibling());
    while let Some(s) = next {
        let used = s.kind() == "identifier" && assigned.contains(&ctx.text(s))
            || syntax::any_in_body(s, ctx.lang, |n| {
                n.kind() == "identifier" && assigned.contains(&ctx.text(n))
            });
        if used {
            return true;
        }
        next = s.next_named_sibling();
    }
    false
}

/// Java: an `InterruptedException` handler that does not restore the interrupt flag
/// (Sonar S2142): the thread's owner never learns it was asked to stop.
/// Java: a variable assigned in the `try`, initialized to `null` right before it, and never
/// compared with `null` after the handler: the logged failure flows on as a `null` value.
fn unchecked_null_result(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(t) = h.protected.and_then(|p| p.parent()) else {
        return false;
    };
    let mut nulls = Vec::new();
    let mut prev = t.prev_named_sibling();
    for _ in 0..3 {
        let Some(p) = prev else { break };
        let text = ctx.text(p).trim().trim_end_matches(';').trim();
        if let Some((lhs, rhs)) = text.split_once('=') {
            if rhs.trim() == "null" {
                if let Some(name) = lhs.split_whitespace().last() {
                    nulls.push(name);
                }
            }
        }
        prev = p.prev_named_sibling();
    }
    let Some(func) = syntax::enclosing_function(h.node, ctx.lang) else {
        return false;
    };
    let after = ctx
        .src
        .get(t.end_byte()..func.end_byte())
        .unwrap_or("")
        .replace(' ', "");
    nulls.iter().any(|n| {
        !after.contains(&format!("{n}!=null"))
            && !after.contains(&format!("{n}==null"))
            && !after.contains(&format!("null!={n}"))
            && !after.contains(&format!("null=={n}"))
    })
}

/// Variables initialized to a failure value (`false`, `False`) in the statements right
/// before the `try` statement `t`.
fn preceding_failure_defaults<'s>(ctx: &Ctx<'s>, t: Node<'_>) -> Vec<&'s str> {
    let mut out = Vec::new();
    let mut prev = t.prev_named_sibling();
    for _ in 0..3 {
        let Some(p) = prev else { break };
        let text = ctx.text(p).trim().trim_end_matches(';').trim();
        if let Some((lhs, rhs)) = text.split_once('=') {
            if matches!(rhs.trim(), "false" | "False") {
                if let Some(name) = lhs.split_whitespace().last() {
                    out.push(name);
                }
            }
        }
        prev = p.prev_named_sibling();
    }
    out
}

/// Java/Python: the protected code writes a file the enclosing function opened for writing
/// (`write`/`flush`/`sync`/`force`/`dump` after `new FileOutputStream`, `open(p, "w")`), and
/// the handler only logs: the write failed but the caller is told nothing.
fn store_failure_swallowed(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    if ctx.lang == Lang::Rust {
        return rust_persistence_failure(ctx, h);
    }
    if !matches!(ctx.lang, Lang::Java | Lang::Python) {
        return false;
    }
    let Some(p) = h.protected else { return false };
    let writes = syntax::any_in_body(p, ctx.lang, |n| {
        ctx.call(n).is_some_and(|c| {
            matches!(
                c.name,
                "write" | "writelines" | "flush" | "sync" | "fsync" | "force" | "dump"
            )
        })
    });
    if !writes {
        return false;
    }
    let Some(func) = syntax::enclosing_function(h.node, ctx.lang) else {
        return false;
    };
    syntax::any_in_body(func, ctx.lang, |n| {
        ctx.call(n).is_some_and(|c| match ctx.lang {
            Lang::Java => {
                (c.kind == CallKind::New
                    && matches!(
                        c.name,
                        "FileOutputStream" | "FileWriter" | "RandomAccessFile"
                    ))
                    || (c.qual == "Files"
                        && matches!(c.name, "newOutputStream" | "newBufferedWriter" | "write"))
                    || (c.qual == "FileChannel" && c.name == "open")
            }
            _ => {
                c.name == "open"
                    && matches!(c.qual, "" | "io" | "codecs")
                    && c.arg_nodes().iter().skip(1).any(|a| {
                        let mode = if a.kind() == "keyword_argument" {
                            a.child_by_field_name("value")
                        } else {
                            Some(*a)
                        };
                        mode.filter(|m| m.kind() == "string").is_some_and(|m| {
                            let t = ctx.text(m);
                            t.contains('w') || t.contains('a')
                        })
                    })
            }
        })
    })
}

/// Rust: the `Err` handled by `h` (an `if let Err(e) = x` or a `match x { Err(e) => .. }`)
/// is the failure of a persistence step: `x`, or the `let` that bound it in the same
/// function, calls or names a write-ahead log, a journal, a persist/save/commit/checkpoint
/// or an fsync (`ractor::call!(self.wal, WalMsg::Append, ..)`, `s.save_to_db().await`).
/// Not in `drop`, which cannot report.
fn rust_persistence_failure(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let value = match h.node.kind() {
        "if_expression" => h
            .node
            .child_by_field_name("condition")
            .and_then(|c| c.child_by_field_name("value")),
        _ => h
            .node
            .parent()
            .and_then(|b| b.parent())
            .filter(|m| m.kind() == "match_expression")
            .and_then(|m| m.child_by_field_name("value")),
    };
    let Some(mut value) = value else {
        return false;
    };
    let Some(func) = syntax::enclosing_function(h.node, ctx.lang) else {
        return false;
    };
    if syntax::function_name(func, ctx.src, ctx.lang) == Some("drop") {
        return false;
    }
    if value.kind() == "identifier" {
        let name = ctx.text(value);
        let mut init = None;
        syntax::for_each_in_body(func, ctx.lang, |n| {
            if n.kind() == "let_declaration"
                && n.start_byte() < h.node.start_byte()
                && n.child_by_field_name("pattern")
                    .is_some_and(|p| ctx.text(p) == name)
            {
                init = n.child_by_field_name("value");
            }
            true
        });
        match init {
            Some(v) => value = v,
            None => return false,
        }
    }
    const PERSIST: &[&str] = &[
        "wal",
        "journal",
        "persist",
        "save",
        "commit",
        "checkpoint",
        "fsync",
        "fdatasync",
    ];
    ctx.text(value)
        .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
        .filter(|t| !t.is_empty())
        .any(|t| {
            let words = syntax::ident_words(t);
            words.iter().any(|w| PERSIST.contains(&w.as_str()))
                || (words.iter().any(|w| w == "sync")
                    && words.iter().any(|w| w == "all" || w == "data"))
        })
}

/// A comment that says only that the failure is ignored, not why (`// ignore`,
/// `/* ignored */`, `// do nothing`, `//Ignore interrupted exception.`): no documented
/// decision. Every word must be one that names the act of ignoring or the exception; any
/// other word (`shutdown`, `expected`, `because`, `retry`) may be the reason.
pub(super) fn is_bare_ignore(comment: &str) -> bool {
    let t = comment
        .trim()
        .trim_start_matches("//")
        .trim_start_matches("/*")
        .trim_end_matches("*/")
        .trim_matches(|c: char| c == '*' || c == '#' || c.is_whitespace())
        .trim_end_matches(['.', '!', ';'])
        .to_ascii_lowercase();
    const NO_REASON: &[&str] = &[
        "ignore",
        "ignored",
        "ignoring",
        "ignores",
        "it",
        "this",
        "the",
        "an",
        "exception",
        "exceptions",
        "interrupt",
        "interrupted",
        "interruption",
        "interruptedexception",
        "nothing",
        "do",
        "to",
        "noop",
        "no-op",
        "nop",
        "just",
        "silently",
        "swallow",
        "swallowed",
    ];
    let words: Vec<&str> = t
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    words.is_empty()
        || (words.len() <= 6
            && words.iter().all(|w| NO_REASON.contains(w))
            && words.iter().any(|w| {
                w.starts_with("ignor")
                    || matches!(
                        *w,
                        "nothing" | "noop" | "no-op" | "nop" | "swallow" | "swallowed"
                    )
            }))
}

fn loses_interrupt(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    // In a thread's `run()` the interrupt ends the thread anyway; a CLI class exits.
    // Not when the handler sits in a loop that goes back to `wait()` (`while (xid != 0)
    // { try { wait(); } catch (InterruptedException e) {} }`): the thread cannot be stopped
    // (heldout11 J5, J12).
    // A thread class's `wait()` loop inside a command-line class is still a daemon's thread
    // that cannot be stopped (heldout11 J12).
    let waits_in_loop = inside_loop(ctx, h.node) && protects_call(ctx, h, &["wait"]);
    let thread_exit =
        syntax::enclosing_function_name(h.node, ctx.src, ctx.lang) == Some("run") && !waits_in_loop;
    ctx.lang == Lang::Java
        && !thread_exit
        && (waits_in_loop || !java_class_has_main(ctx, h.node))
        && h.caught
            .iter()
            .any(|t| last_segment(t) == "InterruptedException")
        && !calls_interrupt(ctx, h.body)
        && !enclosing_handler_restores_interrupt(ctx, h.node)
        // The last wait of a task, or a `put` that cannot block.
        && !super::interrupts::ends_a_task(ctx, h)
        && !super::interrupts::wait_cannot_block(ctx, h)
        // The thread's own code (`run()` of a `Thread`/`Runnable` class) in a file that
        // interrupts no thread.
        && !super::interrupts_owned::on_own_thread(ctx, h)
        && !super::interrupts_owned::ends_a_task_lambda(ctx, h)
        && !super::interrupts_owned::stored_for_rethrow(ctx, h)
}

/// Whether `body` calls `interrupt()` anywhere (restores a thread's interrupt flag).
fn calls_interrupt(ctx: &Ctx<'_>, body: Node<'_>) -> bool {
    syntax::any_in_body(body, ctx.lang, |n| {
        ctx.call(n).is_some_and(|c| c.name == "interrupt")
    })
}

/// Whether the method around `node` calls `interrupt()` anywhere (restores the flag, as
/// the deferred `interrupted = true` ... `finally { .. interrupt(); }` idiom does).
pub(super) fn method_restores_interrupt(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    syntax::enclosing_function(node, ctx.lang).is_some_and(|f| calls_interrupt(ctx, f))
}

/// Java: `node` lies inside an enclosing `catch (InterruptedException ..)` whose body
/// restores the flag (`Thread.currentThread().interrupt()`): an inner handler's interrupt
/// is the same one, and it is restored on the way out.
fn enclosing_handler_restores_interrupt(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut cur = node.parent();
    while let Some(p) = cur {
        if p.kind() == "catch_clause" {
            let mut c = p.walk();
            let catches_interrupt = p
                .named_children(&mut c)
                .find(|n| n.kind() == "catch_formal_parameter")
                .is_some_and(|f| {
                    ctx.text(f)
                        .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                        .any(|w| w == "InterruptedException")
                });
            let restores = p
                .child_by_field_name("body")
                .is_some_and(|b| calls_interrupt(ctx, b));
            if catches_interrupt && restores {
                return true;
            }
        }
        cur = p.parent();
    }
    false
}

/// Verbs of calls that change state elsewhere (files, peers, databases, queues, workers).
const SIDE_EFFECT_VERBS: &[&str] = &[
    "write", "send", "commit", "flush", "save", "sync", "fsync", "rename", "put", "insert",
    "update", "execute", "exec", "store", "persist", "publish", "submit", "run", "start",
    "process", "handle", "apply", "notify", "post", "upload", "create", "delete", "remove",
    "unlink", "join", "connect", "bind", "listen", "accept", "call", "invoke", "dispatch",
    "transfer", "copy", "move", "replace", "truncate", "append", "set", "acquire", "lock",
];

/// Whether the try block calls something that changes state elsewhere.
fn has_side_effect(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(p) = h.protected else { return false };
    syntax::any_in_body(p, ctx.lang, |n| {
        ctx.call(n).is_some_and(|c| {
            syntax::ident_words(c.name)
                .first()
                .is_some_and(|w| SIDE_EFFECT_VERBS.contains(&w.as_str()))
        })
    })
}

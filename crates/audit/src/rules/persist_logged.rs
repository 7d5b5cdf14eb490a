//! A failed persistence step that is only logged: a Java `catch`, a Python `except` or a Go
//! `if err != nil` whose body only logs (optionally then a bare `return`), where the failing
//! step writes, commits, flushes or saves to a store (`store.save(x)`, `tx.commit()`,
//! `s.db.UpdateBranches(..)`, `indexdb.putIndex(..)`). The caller carries on as if the state
//! were stored.

use super::error_handling::{all_control_flow, is_logging_statement};
use super::Ctx;
use crate::catalog::PERSIST_FAILURE_LOGGED;
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind, Handler};
use tree_sitter::Node;

/// Verbs that say by themselves that state is made durable or committed.
const STRONG_VERBS: &[&str] = &["persist", "save", "commit", "checkpoint", "fsync"];
/// Verbs that write somewhere; a persistence step only with a store noun in the callee's
/// name or receiver.
const WEAK_VERBS: &[&str] = &[
    "write",
    "append",
    "flush",
    "put",
    "insert",
    "update",
    "upsert",
    "store",
    "sync",
    "force",
    "replicate",
    "dump",
    "backup",
    "snapshot",
];
/// Nouns that name a store besides [`DB_NOUNS`]: a log, a file, an index, a coordination
/// store, a transaction.
const STORE_NOUNS: &[&str] = &[
    "mapper",
    "wal",
    "journal",
    "ledger",
    "binlog",
    "tlog",
    "file",
    "index",
    "indexdb",
    "zookeeper",
    "curator",
    "template",
    "tx",
    "txn",
    "transaction",
    "segment",
    "metadata",
    "manifest",
    "offset",
    "offsets",
    "checkpoint",
    "snapshot",
    "disk",
    "rocksdb",
    "leveldb",
    "mongo",
    "cassandra",
    "hbase",
    "jdbc",
    "state",
    "position",
    "collection",
];
/// Receivers that name a database or store (not a file or a list of lines).
const DB_NOUNS: &[&str] = &[
    "store",
    "storage",
    "db",
    "database",
    "dao",
    "repository",
    "repo",
    "collection",
    "table",
    "kv",
    "zk",
    "bucket",
    "persistence",
    "persister",
    "datastore",
];
/// Leading words of callee names that read or open rather than write.
const READ_WORDS: &[&str] = &[
    "get",
    "is",
    "has",
    "read",
    "load",
    "find",
    "query",
    "select",
    "fetch",
    "open",
    "close",
    "to",
    "new",
    "create",
    "build",
    "set",
    "apply",
    "on",
    "handle",
    "calculate",
    "check",
];
/// Words that say the call removes or tears down rather than stores (`forceDelete`).
const REMOVE_WORDS: &[&str] = &["delete", "remove", "clean", "drop", "auto", "clear"];

/// Check one handler.
pub(super) fn check(ctx: &mut Ctx<'_>, h: &Handler<'_, '_>) {
    if !matches!(ctx.lang, Lang::Java | Lang::Python | Lang::Go) || h.is_recover {
        return;
    }
    if ctx.facts.is_program || all_control_flow(ctx.lang, &h.caught) {
        return;
    }
    if h.caught
        .iter()
        .any(|t| syntax::last_segment(t).contains("Interrupt"))
    {
        return;
    }
    if h.binding.is_some_and(|b| {
        let n = b.trim_start_matches('_').to_ascii_lowercase();
        b == "_" || n.starts_with("ignore") || n.starts_with("expected")
    }) {
        return;
    }
    // A duplicate-key insert is the idempotent-insert idiom: the row is already there.
    if h.caught.iter().any(|t| {
        let t = syntax::last_segment(t);
        t.contains("Duplicate") || t.contains("Exists")
    }) || h.binding == Some("ok")
    {
        return;
    }
    if !only_logs(ctx, h) || inside_handler(ctx, h.node) || failure_returned_after(ctx, h) {
        return;
    }
    let Some(step) = failing_persist_step(ctx, h) else {
        return;
    };
    let what = match ctx.lang {
        Lang::Go => "`if err != nil`".to_string(),
        _ => "handler".to_string(),
    };
    ctx.report(
        PERSIST_FAILURE_LOGGED,
        h.node,
        format!("{what} only logs the failure of `{step}`: the code goes on as if the state were stored"),
    );
}

/// The body has at least one log statement and otherwise at most a bare `return`, and no
/// comment or message says the failure is ignored on purpose.
fn only_logs(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let stmts = syntax::statements(h.body);
    let Some((last, init)) = stmts.split_last() else {
        return false;
    };
    let logs = if goes_on(ctx, *last) {
        init
    } else {
        &stmts[..]
    };
    if logs.is_empty() || !logs.iter().all(|s| logs_only(ctx, *s)) {
        return false;
    }
    if logs.iter().any(|s| {
        let t = ctx.text(*s);
        let lower = t.to_ascii_lowercase();
        super::says_ignored(t)
            || [
                "skip",
                "falling back",
                "non-fatal",
                "not fatal",
                "best effort",
                "best-effort",
                "cache",
            ]
            .iter()
            .any(|w| lower.contains(w))
            || is_http_error_reply(ctx, *s)
    }) {
        return false;
    }
    // Python attaches a comment that opens the block to the `except` clause.
    let scope = if ctx.lang == Lang::Python {
        h.node
    } else {
        h.body
    };
    !syntax::comments_in(scope)
        .iter()
        .any(|c| super::is_decision_comment(ctx.text(*c)))
}

/// A statement after the log that carries on or reports success: a bare `return` (not Go
/// with named results, which returns the error), `return nil` / `return nil, nil` (Go: no
/// error), `return true`, or `continue` (the next item).
fn goes_on(ctx: &Ctx<'_>, s: Node<'_>) -> bool {
    match s.kind() {
        "continue_statement" => true,
        "return_statement" => {
            let vals = syntax::named_children_no_comments(s);
            let vals = match vals.as_slice() {
                [l] if l.kind() == "expression_list" => syntax::named_children_no_comments(*l),
                _ => vals,
            };
            if vals.is_empty() {
                return !(ctx.lang == Lang::Go && go_named_results(ctx, s));
            }
            vals.iter()
                .all(|v| matches!(ctx.text(*v), "nil" | "true" | "True" | "None"))
                && (ctx.lang == Lang::Go || vals.len() == 1)
        }
        _ => false,
    }
}

/// Go `Error(w, r, err)` / `http.Error(w, ..)`: an HTTP error reply, which reports the
/// failure to the client.
fn is_http_error_reply(ctx: &Ctx<'_>, s: Node<'_>) -> bool {
    ctx.lang == Lang::Go
        && s.named_child(0)
            .and_then(|e| ctx.call(e))
            .is_some_and(|c| c.name == "Error" && matches!(c.qual, "" | "http"))
}

/// A log statement: the shared logger test, a Go zerolog/zap chain ending in `Msg`/`Msgf`/
/// `Send` (`log.Error().Err(err).Msg(..)`), or an all-capitals level call (`r.ERROR(..)`).
fn logs_only(ctx: &Ctx<'_>, s: Node<'_>) -> bool {
    if is_logging_statement(ctx, s) {
        return true;
    }
    let expr = if s.kind() == "expression_statement" {
        match s.named_child(0) {
            Some(e) => e,
            None => return false,
        }
    } else {
        s
    };
    let Some(c) = ctx.call(expr) else {
        return false;
    };
    if matches!(c.name, "ERROR" | "WARNING" | "WARN" | "INFO" | "LOG") {
        return true;
    }
    matches!(c.name, "Msg" | "Msgf" | "Send")
        && [".Error()", ".Warn()", ".Info()", ".Err("]
            .iter()
            .any(|m| c.qual.contains(m))
}

/// Go: a bare `return` in a function with named results returns them (possibly the error).
fn go_named_results(ctx: &Ctx<'_>, s: Node<'_>) -> bool {
    syntax::enclosing_function(s, ctx.lang)
        .and_then(|f| f.child_by_field_name("result"))
        .is_some()
}

/// The persistence call whose failure `h` handles: in the `try` block (Java, Python), or
/// the call that set the Go error variable (the `if`'s initializer or the statement before).
fn failing_persist_step<'s>(ctx: &Ctx<'s>, h: &Handler<'_, '_>) -> Option<String> {
    match ctx.lang {
        Lang::Go => {
            let binding = h.binding?;
            let source = h
                .node
                .child_by_field_name("initializer")
                .or_else(|| syntax::prev_sibling_no_comments(h.node))?;
            if !matches!(
                source.kind(),
                "short_var_declaration" | "assignment_statement"
            ) {
                return None;
            }
            let left = source.child_by_field_name("left")?;
            if !syntax::named_children_no_comments(left)
                .iter()
                .any(|n| ctx.text(*n) == binding)
            {
                return None;
            }
            let right = source.child_by_field_name("right")?;
            let value = right.named_child(0)?;
            let c = ctx.call(value)?;
            is_persist_call(ctx, &c).then(|| callee(&c))
        }
        _ => {
            let p = h.protected?;
            let mut found = None;
            syntax::for_each_in_body(p, ctx.lang, |n| {
                if let Some(c) = ctx.call(n) {
                    if is_persist_call(ctx, &c) {
                        found = Some(callee(&c));
                    }
                }
                found.is_none()
            });
            found
        }
    }
}

/// The handler lies in another handler's body (a cleanup step while an earlier failure is
/// being handled, which the outer handler reports or rethrows).
fn inside_handler(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return false;
        }
        if matches!(p.kind(), "catch_clause" | "except_clause") {
            return true;
        }
        n = p.parent();
    }
    false
}

/// Java/Python: the statement after the `try` returns a failure value (`return false;`,
/// `return null;`, `return None`): the caller learns of the failure.
fn failure_returned_after(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    if ctx.lang == Lang::Go {
        return false;
    }
    let Some(next) = h.node.parent().and_then(|t| t.next_named_sibling()) else {
        return false;
    };
    next.kind() == "return_statement"
        && syntax::named_children_no_comments(next)
            .first()
            .is_some_and(|v| {
                matches!(
                    ctx.text(*v),
                    "false" | "null" | "-1" | "False" | "None" | "-1L"
                )
            })
}

fn callee(c: &Call<'_, '_>) -> String {
    let q = syntax::last_segment(c.qual);
    if q.is_empty() || q.contains('(') {
        c.name.to_string()
    } else {
        format!("{q}.{}", c.name)
    }
}

/// A call that writes, commits or saves to a store: a strong verb in its name, or a weak
/// verb with a store noun in its name or receiver. Not a logger, not a getter or reader.
fn is_persist_call(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    if matches!(c.kind, CallKind::Macro | CallKind::New) {
        return false;
    }
    let words = syntax::ident_words(c.name);
    let Some(first) = words.first() else {
        return false;
    };
    if READ_WORDS.contains(&first.as_str())
        || words.iter().any(|w| REMOVE_WORDS.contains(&w.as_str()))
    {
        return false;
    }
    // The receiver's last segment without index expressions (`link.stubs[i]` is `stubs`).
    let last = syntax::last_segment(c.qual);
    let last = last.split('[').next().unwrap_or(last);
    let recv = syntax::ident_words(last);
    if words.iter().chain(recv.iter()).any(|w| w == "cache") {
        return false;
    }
    if recv
        .iter()
        .any(|w| w.starts_with("log") || w == "out" || w == "err")
    {
        return false;
    }
    // Python `self.save()` / Java `save(x)` on the class itself counts like a receiver.
    let strong = words.iter().any(|w| STRONG_VERBS.contains(&w.as_str()))
        && !words.iter().any(|w| w == "async" || w == "button");
    if strong {
        return true;
    }
    // `channel.force(true)`: only file channels and mapped buffers have `force`.
    if c.name == "force" && recv.iter().any(|w| w == "channel" || w == "buffer") {
        return true;
    }
    if !WEAK_VERBS.contains(&first.as_str()) {
        return false;
    }
    // Python lists, dicts, sets and queues `append`, `insert`, `update` and `put`, and Java
    // maps' `put`: only on a receiver named as a database or store.
    if (ctx.lang == Lang::Python && matches!(first.as_str(), "append" | "insert" | "update"))
        || c.name == "put"
    {
        return recv.iter().any(|w| DB_NOUNS.contains(&w.as_str()));
    }
    // Jackson's `mapper.writeValue(..)` serializes, it stores nothing.
    if c.name.starts_with("writeValue") {
        return false;
    }
    let noun = |w: &String| STORE_NOUNS.contains(&w.as_str()) || DB_NOUNS.contains(&w.as_str());
    words[1..].iter().any(noun)
        || recv.iter().any(noun)
        || (ctx.lang == Lang::Go && c.qual == "os" && c.name == "WriteFile")
}

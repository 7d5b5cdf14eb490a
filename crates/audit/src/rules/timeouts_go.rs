//! Go waits without a timeout that the call alone shows: an SSH connection whose
//! `ClientConfig` in this file sets no `Timeout`, a redigo `redis.Dial` with no timeout
//! option, and `http.DefaultClient` stored into a field for later requests.

use super::Ctx;
use crate::syntax::Call;
use tree_sitter::Node;

/// `ssh.Dial(..)` in a file that never sets an SSH `Timeout` (heldout13 G21), or redigo's
/// `redis.Dial(..)` with no `Dial*Timeout` option and no option list passed on
/// (heldout14 G32).
pub(super) fn dial_without_timeout(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> Option<String> {
    let args = c.arg_nodes();
    if c.qual == "ssh"
        && c.name == "Dial"
        && args.len() == 3
        && ctx.src.contains("golang.org/x/crypto/ssh\"")
        && !ctx.src.contains("Timeout:")
        && !ctx.src.contains(".Timeout =")
    {
        return Some("`ssh.Dial` with a `ClientConfig` that sets no `Timeout` in this file: the connect and the SSH handshake can hang forever on a stalled host".into());
    }
    if c.qual == "redis"
        && c.name == "Dial"
        && ctx.src.contains("redigo/redis\"")
        && !args.iter().any(|a| {
            let t = ctx.text(*a);
            t.contains("Timeout") || t.ends_with("...")
        })
        && !ctx.text(c.node).contains("...")
    {
        return Some("redigo `redis.Dial` without `DialConnectTimeout`/`DialReadTimeout`/`DialWriteTimeout`: a hung Redis blocks every command on this connection forever".into());
    }
    None
}

/// `x.client = http.DefaultClient` or `client: http.DefaultClient`: the default client (no
/// timeout) stored into a field, so every later request through it can hang (heldout12
/// G8). Not reported: local variables, an exported field of a composite literal and an
/// assignment under `if .. == nil` (defaults a caller replaces: on heldout8 a DNS library
/// sets `HTTPClient: http.DefaultClient` and every provider replaces it with a client with
/// a timeout).
pub(super) fn default_client_stored(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    if node.kind() != "selector_expression" || ctx.text(node) != "http.DefaultClient" {
        return false;
    }
    let Some(parent) = node.parent() else {
        return false;
    };
    match parent.kind() {
        // `field: http.DefaultClient` in a composite literal (the value of a private field).
        "literal_element" => parent.parent().is_some_and(|kv| {
            kv.kind() == "keyed_element"
                && kv.named_child(1).is_some_and(|v| v.id() == parent.id())
                && kv
                    .named_child(0)
                    .is_some_and(|k| ctx.text(k).starts_with(|ch: char| ch.is_ascii_lowercase()))
        }),
        // `x.Field = http.DefaultClient` (one left-hand side, a field), not as a fallback.
        "expression_list" => parent.parent().is_some_and(|a| {
            a.kind() == "assignment_statement"
                && a.child_by_field_name("right")
                    .is_some_and(|r| r.id() == parent.id())
                && a.child_by_field_name("left").is_some_and(|l| {
                    l.named_child_count() == 1
                        && l.named_child(0)
                            .is_some_and(|f| f.kind() == "selector_expression")
                })
                && !under_nil_check(ctx, a)
        }),
        _ => false,
    }
}

/// `node` is in the block of an `if x == nil { .. }`.
fn under_nil_check(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    node.parent()
        .and_then(|b| {
            if b.kind() == "statement_list" {
                b.parent()
            } else {
                Some(b)
            }
        })
        .filter(|b| b.kind() == "block")
        .and_then(|b| b.parent())
        .filter(|i| i.kind() == "if_statement")
        .and_then(|i| i.child_by_field_name("condition"))
        .is_some_and(|c| ctx.text(c).contains("== nil"))
}

//! Results of persistence steps dropped without a word: Go `tx.Commit()` as a bare
//! statement (Go does not warn about an unused error), and Rust `let _ = self.cursor.save()`
//! or `let _persist_res = self.persist(..).await` (an underscore binding is rustc's way of
//! silencing the unused-`Result` warning).

use super::Ctx;
use crate::syntax::{self, Call, CallKind};
use tree_sitter::Node;

/// Go: `c` (a bare expression statement) commits a transaction or write batch
/// (`tx.Commit()`, `txn.Commit(ctx)`) whose error is then lost. The receiver must have been
/// opened fallibly in the same function (`tx, err := db.Begin()`): go-memdb's
/// `txn := db.Txn(true)` commits without an error to lose.
pub(super) fn go_commit_dropped(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    if c.name != "Commit" || c.arg_count() > 1 || c.qual.is_empty() || c.qual.contains('(') {
        return false;
    }
    let Some(f) = syntax::enclosing_function(c.node, ctx.lang) else {
        return false;
    };
    let func = ctx.text(f);
    let q = c.qual;
    func.contains(&format!("{q}, err := ")) || func.contains(&format!("{q}, err = "))
}

/// Rust: the value of `let PAT = value;` is a persistence call whose `Result` the pattern
/// throws away: `let _ = x.save()` / `let _ = x.persist(..).await`, or an underscore-named
/// binding never read again (`let _persist_res = self.persist(..).await`).
pub(super) fn rust_persist_dropped(
    ctx: &Ctx<'_>,
    node: Node<'_>,
    pat: Node<'_>,
    value: Node<'_>,
) -> bool {
    let name = ctx.text(pat);
    let underscore = pat.kind() == "_"
        || (pat.kind() == "identifier"
            && name.len() > 1
            && name.starts_with('_')
            && !read_again(ctx, node, name));
    if !underscore {
        return false;
    }
    let v = unawait(value);
    let Some(c) = ctx.call(v) else {
        return false;
    };
    c.kind != CallKind::Macro
        && c.receiver.is_some()
        && matches!(
            c.name,
            "save" | "persist" | "save_state" | "persist_state" | "store_state"
        )
}

/// `name` occurs in the enclosing function after the `let` statement `node`.
fn read_again(ctx: &Ctx<'_>, node: Node<'_>, name: &str) -> bool {
    let Some(f) = syntax::enclosing_function(node, ctx.lang) else {
        return true;
    };
    let after = &ctx.src[node.end_byte()..f.end_byte()];
    after.contains(name)
}

/// `x.await` → `x` (the call under an `.await`); anything else unchanged.
pub(super) fn unawait(value: Node<'_>) -> Node<'_> {
    if value.kind() == "await_expression" {
        value.named_child(0).unwrap_or(value)
    } else {
        value
    }
}

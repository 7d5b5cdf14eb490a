//! Go durability: a temporary file written and renamed over its target that
//! [`super::durability`]'s handle test does not see (opened with `O_CREATE` and no
//! `O_TRUNC`).

use super::Ctx;
use crate::syntax::Call;

/// Before the rename, a file is opened with `O_CREATE` (no `O_TRUNC`, which makes it a
/// truncating open the caller already sees): the rename's source itself, or any file
/// when the source path says it is a temporary one (`tmpPath`).
pub(super) fn writes_before(ctx: &Ctx<'_>, calls: &[Call<'_, '_>], rename: &Call<'_, '_>) -> bool {
    let before = |c: &&Call<'_, '_>| c.node.start_byte() < rename.node.start_byte();
    let source = rename
        .arg_nodes()
        .first()
        .map(|a| ctx.text(*a))
        .unwrap_or("");
    let first_arg = |c: &Call<'_, '_>| c.arg_nodes().first().map(|a| ctx.text(*a));
    let creates = |c: &Call<'_, '_>| {
        c.is("os", "OpenFile")
            && c.arg_nodes()
                .get(1)
                .is_some_and(|f| ctx.text(*f).contains("O_CREATE"))
    };
    let l = source.to_ascii_lowercase();
    let temp = l.contains("tmp") || l.contains("temp");
    calls
        .iter()
        .filter(before)
        .any(|c| creates(c) && (temp || first_arg(c) == Some(source)))
}

//! Go durability: a temporary file written and renamed over its target that
//! [`super::durability`]'s handle test does not see (opened with `O_CREATE` and no
//! `O_TRUNC`), and the read-modify-write of a local path (Go and Python).

use super::durability::says_temporary;
use super::Ctx;
use crate::lang::Lang;
use crate::syntax::{self, Call};
use tree_sitter::Node;

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
    let temp = says_temporary(source);
    calls
        .iter()
        .filter(before)
        .any(|c| creates(c) && (temp || first_arg(c) == Some(source)))
}

/// Go and Python data flow: a truncating write whose path is a local variable (a name that
/// says which file, not `path`) that the same function opened for reading before, the
/// read-modify-write of one file. The key and the read call.
pub(super) fn same_local_read<'t, R>(
    ctx: &Ctx<'_>,
    func: Node<'_>,
    path: Node<'_>,
    reads: &[R],
    call: impl Fn(&R) -> Node<'t>,
    arg: impl Fn(&R) -> Node<'t>,
) -> Option<(String, Node<'t>)> {
    if !matches!(ctx.lang, Lang::Go | Lang::Python) || path.kind() != "identifier" {
        return None;
    }
    let name = ctx.text(path);
    let l = name.to_ascii_lowercase();
    let generic = matches!(
        l.as_str(),
        "path"
            | "p"
            | "f"
            | "fn"
            | "file"
            | "filename"
            | "fname"
            | "filepath"
            | "name"
            | "src"
            | "dst"
            | "dest"
            | "target"
            | "out"
            | "output"
            | "input"
            | "infile"
            | "outfile"
            | "fpath"
            | "arg"
            | "args"
    );
    if generic || name.len() < 3 || says_temporary(name) || l.contains("pid") {
        return None;
    }
    reads.iter().find_map(|r| {
        let c = call(r);
        let a = arg(r);
        let same_func =
            syntax::enclosing_function(c, ctx.lang).is_some_and(|g| g.id() == func.id());
        (same_func && c.start_byte() < path.start_byte() && ctx.text(a) == name)
            .then(|| (name.to_string(), c))
    })
}

//! Rust durability: files published by a rename that [`super::durability`] does not see as
//! written (a `tempfile` temporary, `persist`ed or renamed; a temporary path renamed over
//! the target), and state files rewritten from offset 0 without `truncate(true)`.

use super::durability::says_temporary;
use super::Ctx;
use crate::catalog::WRITE_IN_PLACE;
use crate::syntax::{self, Call};
use tree_sitter::Node;

/// `tmp.persist(path)` / `tmp.persist_noclobber(path)` (the `tempfile` crate's rename of a
/// temporary file over `path`); not a project's own `self.persist(..)`.
pub(super) fn is_persist(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    matches!(c.name, "persist" | "persist_noclobber")
        && c.arg_count() == 1
        && c.receiver.is_some_and(|r| {
            let t = ctx.text(r);
            t != "self" && !t.starts_with("self.")
        })
}

/// The function wrote the file it renames before the rename at byte `before`: a
/// `tempfile` temporary created or written (`NamedTempFile::new_in`, `Builder::tempfile_in`,
/// `write_all`, `serde_json::to_writer`, `io::copy`, `fs::copy`), or the rename's source
/// path says it is a temporary one (`fs::rename(&self.tmp_path, dest)`).
pub(super) fn writes_before(ctx: &Ctx<'_>, calls: &[Call<'_, '_>], rename: &Call<'_, '_>) -> bool {
    let before = rename.node.start_byte();
    let wrote = calls.iter().any(|c| {
        c.node.start_byte() < before
            && (matches!(
                c.name,
                "tempfile" | "tempfile_in" | "write_all" | "to_writer" | "to_writer_pretty"
            ) || (c.name == "copy" && (c.qual.ends_with("io") || c.qual.ends_with("fs")))
                || (matches!(c.name, "new" | "new_in") && c.qual.ends_with("NamedTempFile")))
    });
    let temp_source = rename.name == "rename"
        && rename
            .arg_nodes()
            .first()
            .is_some_and(|a| says_temporary(ctx.text(*a)));
    wrote || temp_source
}

/// `OpenOptions::new().write(true).create(true).open(p)` with neither `truncate(true)` nor
/// `append(true)`, written from the start (`write_all`, `write!`, `to_writer`) with no seek
/// or `set_len` in the function: a shorter rewrite leaves the old file's tail after the new data ("9" over "10" reads back "90").
pub(super) fn check_function(ctx: &mut Ctx<'_>, func: Node<'_>) {
    if !ctx.src.contains("OpenOptions") {
        return;
    }
    let calls = syntax::calls_in_body(func, ctx.src, ctx.lang);
    let positioned = calls.iter().any(|c| {
        matches!(
            c.name,
            "seek" | "set_len" | "rewind" | "write_at" | "write_all_at" | "seek_write"
        )
    });
    if positioned {
        return;
    }
    let writes = calls.iter().any(|c| {
        matches!(
            c.name,
            "write_all" | "write" | "to_writer" | "to_writer_pretty" | "write_fmt" | "copy"
        )
    }) || ctx.text(func).contains("write!(")
        || ctx.text(func).contains("writeln!(");
    if !writes {
        return;
    }
    let name = syntax::function_name(func, ctx.src, ctx.lang).unwrap_or("?");
    let mut reports = Vec::new();
    for c in &calls {
        if c.name != "open" || c.arg_count() != 1 {
            continue;
        }
        let Some(r) = c.receiver else { continue };
        let chain: String = ctx
            .text(r)
            .chars()
            .filter(|ch| !ch.is_whitespace())
            .collect();
        if !chain.contains("OpenOptions::new()")
            || !chain.contains(".write(true)")
            || !chain.contains(".create(true)")
            || chain.contains(".truncate(")
            || chain.contains(".append(")
            || chain.contains(".create_new(")
            || chain.contains(".read(true)")
        {
            continue;
        }
        let path = c.arg_nodes().first().map(|a| ctx.text(*a)).unwrap_or("");
        reports.push((
            c.node,
            format!("`{name}` rewrites `{path}` from offset 0 opened without `truncate(true)`: a shorter new content leaves the old file's tail after it (truncate, or write a temporary file, sync_all, rename)"),
        ));
    }
    for (node, msg) in reports {
        ctx.report(WRITE_IN_PLACE, node, msg);
    }
}

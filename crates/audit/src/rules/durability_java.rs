//! Java durability: a record rewritten in place through a `RandomAccessFile` opened `"rw"`
//! (`new RandomAccessFile(file, "rw")`, then `channel.write(buffer)` or
//! `writeProtoToFile(raf, meta)` from offset 0). The file is neither truncated nor replaced:
//! a crash mid-write leaves old and new bytes mixed, and a shorter record keeps the old
//! record's tail. Appends (`seek(raf.length())`), fixed-offset slots (`seek(OFFSET)`),
//! memory maps and pre-allocation (`setLength`) are other designs and are not reported.

use super::durability::says_temporary;
use super::Ctx;
use crate::catalog::WRITE_IN_PLACE;
use crate::syntax::{self, Call, CallKind};
use tree_sitter::Node;

pub(super) fn check_function(ctx: &mut Ctx<'_>, func: Node<'_>, calls: &[Call<'_, '_>]) {
    let Some(raf) = calls.iter().find(|c| {
        c.kind == CallKind::New
            && c.name == "RandomAccessFile"
            && c.arg_nodes()
                .get(1)
                .is_some_and(|m| ctx.text(*m) == "\"rw\"")
    }) else {
        return;
    };
    let path = raf.arg_nodes().first().map_or("", |a| ctx.text(*a));
    if says_temporary(path) {
        return;
    }
    // Positioned or sized access is a different design (a log, a slot file, a map).
    let positioned = calls.iter().any(|c| {
        matches!(
            c.name,
            "seek"
                | "setLength"
                | "length"
                | "map"
                | "position"
                | "skipBytes"
                | "truncate"
                | "lock"
                | "tryLock"
                | "read"
                | "readFully"
        )
    });
    if positioned {
        return;
    }
    // Written in this function: a `write*` call after the open, on the file, its channel, or
    // a helper given it.
    let writes = calls.iter().any(|c| {
        c.node.start_byte() > raf.node.end_byte()
            && syntax::ident_words(c.name).iter().any(|w| w == "write")
    });
    if !writes {
        return;
    }
    let name = syntax::function_name(func, ctx.src, ctx.lang).unwrap_or("?");
    ctx.report(
        WRITE_IN_PLACE,
        raf.node,
        format!("`{name}` rewrites `{path}` in place through a `RandomAccessFile` opened \"rw\" (no truncate, no temporary file and rename): a crash mid-write, or a shorter record, leaves old and new bytes mixed"),
    );
}

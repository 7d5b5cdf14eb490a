//! C++: a `rocksdb::Status`/`leveldb::Status` of a file or environment call dropped as a
//! statement (`wf->Append(..);`, `wf->Close();`, `env_->RenameFile(a, b);`). These calls
//! report failure only through the returned status (no exception), so a failed append,
//! close or rename goes unnoticed and the file the caller then relies on is short or
//! missing (heldout12 X11-X13).

use super::Ctx;
use crate::catalog::DROPPED_FILE_ERROR;
use crate::lang::Lang;
use tree_sitter::Node;

/// File and environment calls of the RocksDB/LevelDB `WritableFile` and `Env` interfaces
/// whose status says whether the data or the name change reached the file system.
const STATUS_CALLS: &[&str] = &[
    "Append",
    "PositionedAppend",
    "Close",
    "Sync",
    "Fsync",
    "Flush",
    "RenameFile",
    "Truncate",
];

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>) {
    if ctx.lang != Lang::Cpp || node.kind() != "expression_statement" {
        return;
    }
    if !(ctx.src.contains("rocksdb::") || ctx.src.contains("leveldb::")) {
        return;
    }
    let Some(expr) = node.named_child(0) else {
        return;
    };
    let Some(c) = ctx.call(expr) else { return };
    if !STATUS_CALLS.contains(&c.name) {
        return;
    }
    // Through a pointer (`wf->Close()`), as the interfaces are used; a value's `Close()`
    // (`fd.Close()`) is some other class.
    let through_pointer = expr
        .child_by_field_name("function")
        .is_some_and(|f| ctx.text(f).ends_with(&format!("->{}", c.name)));
    if !through_pointer {
        return;
    }
    let name = c.name;
    ctx.report(
        DROPPED_FILE_ERROR,
        node,
        format!("the `Status` of `{name}()` is dropped: {}", what(name)),
    );
}

fn what(name: &str) -> &'static str {
    match name {
        "RenameFile" => "a failed rename goes unnoticed and the old name stays",
        "Close" | "Sync" | "Fsync" | "Flush" => {
            "a failed flush goes unnoticed and the file may be short"
        }
        _ => "a failed write goes unnoticed and the file is short",
    }
}

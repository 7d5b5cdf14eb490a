//! Save/load pairs for the data-flow write-in-place check (C, C++, Java): when a file is
//! truncated and rewritten through a path *parameter* that no caller in the file resolves
//! (`dlt_daemon_applications_save(daemon, filename)`, called from another file), the file
//! is still state the program reads back if the same file defines the matching reader, a
//! function that opens its parameter of the same name for reading and whose name is the
//! writer's with the verb changed (`..._save`/`..._load`, `mentries_tofile`/
//! `mentries_fromfile`, `writeState`/`readState`).

use super::Ctx;
use crate::lang::Lang;
use crate::syntax;
use tree_sitter::Node;

/// Name words that are the verb of a save or a load, not the object saved.
const VERBS: &[&str] = &[
    "save", "write", "store", "dump", "put", "persist", "tofile", "to", "load", "read", "restore",
    "get", "fromfile", "from", "parse", "file",
];

/// The object words of a function name: its words without the save/load verbs.
fn stem(name: &str) -> Vec<String> {
    syntax::ident_words(name)
        .into_iter()
        .filter(|w| !VERBS.contains(&w.as_str()))
        .collect()
}

/// Whether the name says it saves (`write`, `save`, `store`, ...) or loads.
fn says(name: &str, verbs: &[&str]) -> bool {
    syntax::ident_words(name)
        .iter()
        .any(|w| verbs.contains(&w.as_str()))
}

/// Whether the truncating write through `wpath` in `writer` and the read through `rpath`
/// in `reader` are a save/load pair on the same path parameter (see the module doc).
/// `is_param(func, name)` says whether `name` is a parameter of `func`.
pub(super) fn is_save_load_pair(
    ctx: &Ctx<'_>,
    writer: Node<'_>,
    wpath: Node<'_>,
    reader: Node<'_>,
    rpath: Node<'_>,
    is_param: &dyn Fn(Node<'_>, &str) -> bool,
) -> bool {
    if !matches!(ctx.lang, Lang::C | Lang::Cpp | Lang::Java) || writer.id() == reader.id() {
        return false;
    }
    if wpath.kind() != "identifier" || rpath.kind() != "identifier" {
        return false;
    }
    let name = ctx.text(wpath);
    if ctx.text(rpath) != name || !is_param(writer, name) || !is_param(reader, name) {
        return false;
    }
    let (Some(wn), Some(rn)) = (
        syntax::function_name(writer, ctx.src, ctx.lang),
        syntax::function_name(reader, ctx.src, ctx.lang),
    ) else {
        return false;
    };
    let ws = stem(wn);
    !ws.is_empty()
        && ws == stem(rn)
        && says(
            wn,
            &["save", "write", "store", "dump", "put", "persist", "tofile"],
        )
        && says(rn, &["load", "read", "restore", "get", "fromfile", "parse"])
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn stems() {
        assert_eq!(
            stem("dlt_daemon_applications_save"),
            stem("dlt_daemon_applications_load")
        );
        assert_eq!(stem("mentries_tofile"), stem("mentries_fromfile"));
        assert_eq!(stem("writeState"), stem("readState"));
        assert_ne!(stem("write_report"), stem("read_input"));
    }
}

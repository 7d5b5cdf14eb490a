//! Python durability: a rename whose source was written by a project helper
//! (`_write_node_key(migrated_path, ..)` then `os.replace(migrated_path, path)`), which the
//! per-function test of [`super::durability`] does not see as a write.

use super::durability::says_temporary;
use super::Ctx;
use crate::syntax::{self, Call};

/// Before the rename, a call whose name says it writes (`write`, `save`, `dump` as a word)
/// takes the rename's source path as its first argument, and is not a helper of this file
/// that fsyncs.
pub(super) fn writes_before(ctx: &Ctx<'_>, calls: &[Call<'_, '_>], rename: &Call<'_, '_>) -> bool {
    let Some(source) = rename.arg_nodes().first().map(|a| ctx.text(*a)) else {
        return false;
    };
    temp_attribute_written(ctx.src, source)
        || calls.iter().any(|c| {
            c.node.start_byte() < rename.node.start_byte()
                && c.arg_nodes().first().map(|a| ctx.text(*a)) == Some(source)
                && syntax::ident_words(c.name)
                    .iter()
                    .any(|w| matches!(w.as_str(), "write" | "save" | "dump"))
                && !helper_syncs(ctx.src, c.name)
        })
}

/// The helper is defined in this file and its body calls `fsync`.
fn helper_syncs(src: &str, name: &str) -> bool {
    let def = format!("def {name}(");
    src.find(&def).is_some_and(|at| {
        let body = &src[at + def.len()..];
        let end = body.find("\ndef ").unwrap_or(body.len());
        body[..end].contains("fsync")
    })
}

/// The rename's source is a temporary file kept in an attribute (`shutil.move(self.temp,
/// self.path)` in a `commit`/`close` method), which another method of the file opened for
/// writing (`self.temp = name` next to `mkstemp`, `open(self.tempFilename, mode)`), and
/// nothing in the file fsyncs.
fn temp_attribute_written(src: &str, source: &str) -> bool {
    let Some(attr) = source.strip_prefix("self.") else {
        return false;
    };
    let temp = says_temporary(attr) && attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    temp && !src.contains("fsync(")
        && (src.contains(&format!("open({source}"))
            || (src.contains(&format!("{source} = ")) && src.contains("mkstemp")))
}

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

/// A `write` before the rename that does not write the renamed file: console output
/// (`self.ui.write(..)`, `sys.stderr.write(..)`) or a log opened for appending in this
/// function (`with open(self._log, 'ab+') as f: f.write(..)` before a corrupt cache file is
/// moved aside). Such a function renames data it did not write.
pub(super) fn writes_other_file(
    ctx: &Ctx<'_>,
    calls: &[Call<'_, '_>],
    write: &Call<'_, '_>,
) -> bool {
    let Some(recv) = write.receiver.map(|r| ctx.text(r)) else {
        return false;
    };
    let last = recv.rsplit('.').next().unwrap_or(recv);
    if matches!(last, "ui" | "stdout" | "stderr" | "console" | "terminal") {
        return true;
    }
    calls.iter().any(|c| {
        c.qual.is_empty()
            && c.name == "open"
            && bound_name(ctx, c) == Some(recv)
            && c.arg_nodes().get(1).is_some_and(|m| {
                m.kind() == "string"
                    && ctx
                        .text(*m)
                        .trim_start_matches(['b', 'r'])
                        .starts_with(['\'', '"'])
                    && ctx
                        .text(*m)
                        .trim_start_matches(['b', 'r'])
                        .trim_matches(['\'', '"'])
                        .starts_with('a')
            })
    })
}

/// The name an `open(..)` call is bound to: `with open(..) as f`, `f = open(..)`.
fn bound_name<'s>(ctx: &Ctx<'s>, c: &Call<'_, '_>) -> Option<&'s str> {
    let parent = c.node.parent()?;
    match parent.kind() {
        "as_pattern" => parent
            .child_by_field_name("alias")
            .map(|a| ctx.text(a).trim()),
        "assignment" => parent.child_by_field_name("left").map(|l| ctx.text(l)),
        _ => None,
    }
}

/// A `mkstemp` whose descriptor is only closed (`fd, name = mkstemp(..); os.close(fd)`),
/// with nothing in the function writing through a descriptor or a handle: an empty probe
/// file or a reserved name, not written data.
pub(super) fn mkstemp_only_named(calls: &[Call<'_, '_>]) -> bool {
    calls.iter().any(|c| c.is("os", "close"))
        && !calls.iter().any(|c| {
            matches!(
                c.name,
                "write" | "writelines" | "fdopen" | "dump" | "open" | "copyfileobj"
            )
        })
}

/// `shutil.copy2(src, tmp)` / `util.copyfile(a, tmp)` before `os.rename(tmp, dst)`: the copy
/// wrote the file the rename publishes (its destination is the rename's source).
pub(super) fn copies_to_source(ctx: &Ctx<'_>, copy: &Call<'_, '_>, rename: &Call<'_, '_>) -> bool {
    let lib = copy.qual == "shutil" || copy.qual.ends_with("util");
    let args = copy.arg_nodes();
    let source = rename.arg_nodes().first().map(|a| ctx.text(*a));
    lib && args.len() >= 2 && source.is_some() && args.get(1).map(|a| ctx.text(*a)) == source
}

/// A Python build script (`setup.py`): the files it writes (version stamps, generated
/// sources, build options) are build outputs, not state a running program reads back.
pub(super) fn is_build_script(ctx: &Ctx<'_>) -> bool {
    ctx.lang == crate::lang::Lang::Python && ctx.path.rsplit(['/', '\\']).next() == Some("setup.py")
}

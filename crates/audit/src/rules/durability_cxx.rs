//! C++ additions to the write-then-rename check of `durability.rs`: a file written through
//! an output stream (`std::ofstream out(tmp); out << data; out.close();`) is written data
//! even though no libc write call appears, and projects rename through their own
//! qualified helpers (`Utility::RenameFile(tmp, path)`, `env->RenameFile(..)`).

use super::Ctx;
use crate::lang::Lang;
use crate::syntax::{self, Call};
use tree_sitter::Node;

/// Whether `func` declares or allocates an output file stream (`std::ofstream`,
/// `std::fstream`, not `std::ifstream`) before byte offset `before`.
pub(super) fn stream_written_before(ctx: &Ctx<'_>, func: Node<'_>, before: usize) -> bool {
    if ctx.lang != Lang::Cpp {
        return false;
    }
    let body = ctx.text(func);
    if !body.contains("ofstream") && !body.contains("fstream") {
        return false;
    }
    let mut found = false;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if n.start_byte() >= before {
            return true;
        }
        if matches!(n.kind(), "declaration" | "new_expression") {
            let ty = n
                .child_by_field_name("type")
                .map(|t| ctx.text(t))
                .unwrap_or("");
            let last = ty.rsplit("::").next().unwrap_or(ty);
            if matches!(last.trim(), "ofstream" | "fstream" | "wofstream") {
                found = true;
                return false;
            }
        }
        true
    });
    found
}

/// C++: a qualified project helper that renames a file (`Utility::RenameFile`,
/// `env_->RenameFile`, `FileRename`), or `std::filesystem::rename`.
pub(super) fn is_cxx_rename_call(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    if ctx.lang != Lang::Cpp {
        return false;
    }
    if c.name == "rename" && matches!(c.qual, "fs" | "filesystem" | "std::filesystem") {
        return true;
    }
    let words = syntax::ident_words(c.name);
    let has = |w: &str| words.iter().any(|x| x == w);
    has("rename") && has("file") && !has("sync") && c.arg_count() == 2
}

/// C++: the class of a method defined out of line (`void AccountDatabase::Write() {..}`
/// gives `AccountDatabase`), for the persistence names of `write-in-place`.
pub(super) fn method_owner<'s>(ctx: &Ctx<'s>, func: Node<'_>) -> Option<&'s str> {
    if ctx.lang != Lang::Cpp {
        return None;
    }
    let d = syntax::c_declarator_of_kind(func, "qualified_identifier")?;
    let t = syntax::text(d.child_by_field_name("scope")?, ctx.src);
    Some(t.rsplit("::").next().unwrap_or(t))
}

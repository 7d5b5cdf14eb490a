//! Rewrites from the start that are no truncating `open`, for `write-in-place`:
//!
//! - C++ file streams: `std::ofstream out(path)` (and `std::fstream` with `ios::trunc` or
//!   `ios::out` alone, a temporary `std::ofstream(path)`) truncates the file like
//!   `fopen(path, "w")`; `std::ifstream in(path)` reads it. tendis rewrites its
//!   configuration (`CONFIG REWRITE`) and its backup metadata through an `ofstream` and
//!   reads both back through an `ifstream` in the same file.
//! - C and C++ handles rewound and written again: `rewind(f)` or `fseek(f, 0, SEEK_SET)`
//!   followed by `fwrite`/`fprintf`/`fputs` to `f`, `lseek(fd, 0, SEEK_SET)` followed by a
//!   `write(fd, ..)` (Galera's `grastate.dat`, HylaFAX's job queue files): the file opened
//!   once is overwritten in place from its first byte.

use super::Ctx;
use crate::lang::Lang;
use crate::syntax::{self, Call};
use tree_sitter::Node;

/// Identifier tokens of a mode expression (`std::ios::out | std::ios::trunc`).
fn mode_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a stream of type `ty` (last path segment) opened with `mode` (the second
/// constructor argument, if any) writes the file from scratch.
fn stream_truncates(ty: &str, mode: Option<&str>) -> bool {
    let words = mode.map(mode_words).unwrap_or_default();
    let has = |w: &str| words.contains(&w);
    match ty {
        "ofstream" | "wofstream" => !(has("app") || has("in")),
        "fstream" | "wfstream" => has("trunc") || (has("out") && !has("in") && !has("app")),
        _ => false,
    }
}

/// The last segment of a declared type (`std::ofstream` gives `ofstream`).
fn type_name<'s>(ctx: &Ctx<'s>, decl: Node<'_>) -> &'s str {
    let ty = decl
        .child_by_field_name("type")
        .map(|t| ctx.text(t))
        .unwrap_or("");
    ty.rsplit("::").next().unwrap_or(ty).trim()
}

/// C++: the file streams a declaration opens, as (declarator, path argument, writes from
/// scratch): `std::ofstream out(path)` gives a write, `std::ifstream in(path)` a read.
/// Streams declared without a path (opened later with `.open(..)`) are not included.
pub(super) fn declared_streams<'t>(
    ctx: &Ctx<'_>,
    decl: Node<'t>,
) -> Vec<(Node<'t>, Node<'t>, bool)> {
    if ctx.lang != Lang::Cpp || decl.kind() != "declaration" {
        return Vec::new();
    }
    let ty = type_name(ctx, decl);
    let reads = matches!(ty, "ifstream" | "wifstream");
    if !reads && !ty.ends_with("fstream") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = decl.walk();
    for d in decl.children_by_field_name("declarator", &mut cur) {
        let (path, mode) = match d.kind() {
            "init_declarator" => {
                let Some(value) = d
                    .child_by_field_name("value")
                    .filter(|v| matches!(v.kind(), "argument_list" | "initializer_list"))
                else {
                    continue;
                };
                let args = syntax::named_children_no_comments(value);
                let Some(path) = args.first().copied() else {
                    continue;
                };
                (path, args.get(1).map(|m| ctx.text(*m)))
            }
            // `std::ofstream out(path);` with a plain name parses as a function declaration
            // whose one parameter type is the name.
            "function_declarator" => {
                let Some(param) = d
                    .child_by_field_name("parameters")
                    .map(syntax::named_children_no_comments)
                    .filter(|ps| ps.len() == 1)
                    .and_then(|ps| ps.first().copied())
                    .filter(|p| p.child_by_field_name("declarator").is_none())
                    .and_then(|p| p.child_by_field_name("type"))
                    .filter(|t| t.kind() == "type_identifier")
                else {
                    continue;
                };
                (param, None)
            }
            _ => continue,
        };
        if reads {
            out.push((d, path, false));
        } else if stream_truncates(ty, mode) {
            out.push((d, path, true));
        }
    }
    out
}

/// C++: a temporary stream that writes from scratch (`std::ofstream(path) << data`).
pub(super) fn is_truncating_temporary(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    if ctx.lang != Lang::Cpp || !matches!(c.qual, "std" | "") {
        return false;
    }
    let args = c.arg_nodes();
    !args.is_empty() && stream_truncates(c.name, args.get(1).map(|m| ctx.text(*m)))
}

/// The handle a write call writes to (`fwrite(.., f)`, `fprintf(f, ..)`, `write(fd, ..)`).
fn written_handle<'s>(ctx: &Ctx<'s>, c: &Call<'_, '_>) -> Option<&'s str> {
    let args = c.arg_nodes();
    let at = match c.name {
        "fwrite" | "fputs" | "fputc" => args.len().checked_sub(1)?,
        "fprintf" | "write" => 0,
        _ => return None,
    };
    args.get(at).map(|a| ctx.text(*a))
}

/// The handle a call moves back to the first byte: `rewind(f)`, `fseek(f, 0, SEEK_SET)`,
/// `lseek(fd, 0, SEEK_SET)`.
fn rewound_handle<'s>(ctx: &Ctx<'s>, c: &Call<'_, '_>) -> Option<&'s str> {
    let args = c.arg_nodes();
    let text = |i: usize| args.get(i).map(|a| ctx.text(*a));
    match c.name {
        "rewind" if args.len() == 1 => text(0),
        "fseek" | "fseeko" | "lseek" | "lseek64"
            if args.len() == 3
                && matches!(text(1), Some("0" | "0L" | "(off_t)0"))
                && text(2) == Some("SEEK_SET") =>
        {
            text(0)
        }
        _ => None,
    }
}

/// A rewrite from the start in a function that opens nothing for writing itself: an
/// output stream declared with its path, or a handle rewound and then written. Gives the
/// site to report, the path text (empty for a rewound handle) and a short description.
pub(super) fn rewrite_site<'t>(
    ctx: &Ctx<'_>,
    func: Node<'t>,
    calls: &[Call<'t, '_>],
) -> Option<(Node<'t>, String, &'static str)> {
    if !matches!(ctx.lang, Lang::C | Lang::Cpp) {
        return None;
    }
    for c in calls {
        let Some(h) = rewound_handle(ctx, c) else {
            continue;
        };
        let written = calls
            .iter()
            .any(|w| w.node.start_byte() > c.node.end_byte() && written_handle(ctx, w) == Some(h));
        if written {
            return Some((c.node, h.to_string(), "rewinds and overwrites"));
        }
    }
    if ctx.lang != Lang::Cpp || !ctx.text(func).contains("fstream") {
        return None;
    }
    let mut site = None;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if let Some((d, p, true)) = declared_streams(ctx, n).into_iter().next() {
            site = Some((d, ctx.text(p).to_string(), "truncates and rewrites"));
            return false;
        }
        true
    });
    site
}

#[cfg(test)]
mod tests {
    use super::stream_truncates;

    #[test]
    fn stream_modes() {
        assert!(stream_truncates("ofstream", None));
        assert!(stream_truncates("ofstream", Some("std::ios::binary")));
        assert!(stream_truncates(
            "ofstream",
            Some("std::ios::out | std::ios::trunc")
        ));
        assert!(!stream_truncates("ofstream", Some("std::ios::app")));
        assert!(!stream_truncates(
            "ofstream",
            Some("std::ios::in | std::ios::out")
        ));
        assert!(!stream_truncates("fstream", None));
        assert!(stream_truncates(
            "fstream",
            Some("std::ios::out | std::ios::binary")
        ));
        assert!(!stream_truncates(
            "fstream",
            Some("std::ios::in | std::ios::out")
        ));
        assert!(stream_truncates(
            "fstream",
            Some("ios::in | ios::out | ios::trunc")
        ));
        assert!(!stream_truncates("ifstream", None));
    }
}

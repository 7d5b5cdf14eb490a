//! `--fix`: mechanical refactorings for some findings, as a unified diff or applied in place.
//!
//! - Rust `unwrap` inside a function whose return type is a `Result`: `.unwrap()` -> `?`.
//! - Go `dropped-file-error` on `f.Sync()`/`f.Close()`/`f.Truncate(n)`/`os.Rename(a, b)`
//!   statements (plain or `_ =`) in a function whose only result is `error`:
//!   `if err := f.Sync(); err != nil { return err }`.
//! - Python `rename-without-fsync` on `os.rename`/`os.replace`/`shutil.move` of a file:
//!   fsync the source before the rename and the target's directory after it.
//! - C `rename-without-fsync` on `rename(tmp, path)` of a file written in the same function
//!   through a local `FILE *` or descriptor: fsync before its close, the target's
//!   directory after the rename (see `fix_c`).
//!
//! Every fix is a byte-range edit of the original text; nothing else in the file changes.

use crate::finding::Finding;
use crate::lang::Lang;
use crate::syntax;
use tree_sitter::{Node, Parser};

/// Replace `src[start..end]` with `replacement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub replacement: String,
}

/// Byte offset of a 1-based line and 1-based code-point column.
fn byte_of(src: &str, line: usize, column: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += src[start..].find('\n')? + 1;
    }
    let rest = &src[start..];
    let off = rest
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(rest.len(), |(i, _)| i);
    Some(start + off)
}

/// Leading whitespace of the line holding byte `at`.
pub(crate) fn indent_at(src: &str, at: usize) -> &str {
    let ls = src[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = &src[ls..];
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    &line[..n]
}

pub(crate) fn ancestor<'t>(mut n: Node<'t>, kinds: &[&str]) -> Option<Node<'t>> {
    loop {
        if kinds.contains(&n.kind()) {
            return Some(n);
        }
        n = n.parent()?;
    }
}

fn rust_unwrap(src: &str, root: Node<'_>, at: usize) -> Option<Edit> {
    // The finding starts at the receiver; find the `.unwrap()` call that covers it.
    let mut n = root.descendant_for_byte_range(at, at)?;
    let call = loop {
        if n.kind() == "call_expression" {
            let f = n.child_by_field_name("function")?;
            if f.kind() == "field_expression"
                && f.child_by_field_name("field")
                    .is_some_and(|x| syntax::text(x, src) == "unwrap")
                && n.start_byte() == at
            {
                break n;
            }
        }
        n = n.parent()?;
    };
    // The nearest function must be a named fn returning Result (not a closure).
    let func = ancestor(call, &["function_item", "closure_expression"])?;
    if func.kind() != "function_item" {
        return None;
    }
    let ret = syntax::text(func.child_by_field_name("return_type")?, src);
    if !(ret.starts_with("Result") || ret.contains("::Result") || ret.starts_with("io::Result")) {
        return None;
    }
    let f = call.child_by_field_name("function")?;
    let recv = f.child_by_field_name("value")?;
    Some(Edit {
        start: recv.end_byte(),
        end: call.end_byte(),
        replacement: "?".into(),
    })
}

fn go_checked(src: &str, root: Node<'_>, at: usize) -> Option<Edit> {
    let n = root.descendant_for_byte_range(at, at)?;
    let stmt = ancestor(
        n,
        &[
            "expression_statement",
            "assignment_statement",
            "defer_statement",
        ],
    )?;
    if stmt.start_byte() != at || stmt.kind() == "defer_statement" {
        return None;
    }
    let call = if stmt.kind() == "assignment_statement" {
        syntax::named_children_no_comments(stmt.child_by_field_name("right")?)
            .first()
            .copied()?
    } else {
        stmt.named_child(0)?
    };
    if call.kind() != "call_expression" {
        return None;
    }
    let func = ancestor(
        stmt,
        &["function_declaration", "method_declaration", "func_literal"],
    )?;
    let result = func.child_by_field_name("result")?;
    if syntax::text(result, src).trim() != "error" {
        return None;
    }
    let indent = indent_at(src, at);
    Some(Edit {
        start: stmt.start_byte(),
        end: stmt.end_byte(),
        replacement: format!(
            "if err := {}; err != nil {{\n{indent}\treturn err\n{indent}}}",
            syntax::text(call, src)
        ),
    })
}

fn python_fsync(src: &str, root: Node<'_>, at: usize) -> Option<Edit> {
    let n = root.descendant_for_byte_range(at, at)?;
    let call = ancestor(n, &["call"])?;
    let stmt = call
        .parent()
        .filter(|p| p.kind() == "expression_statement")?;
    if !(src.contains("import os\n") || src.contains("import os,") || src.contains("import os ")) {
        return None;
    }
    let args = syntax::named_children_no_comments(call.child_by_field_name("arguments")?);
    let (from, to) = match args.as_slice() {
        [a, b] if a.kind() != "keyword_argument" && b.kind() != "keyword_argument" => {
            (syntax::text(*a, src), syntax::text(*b, src))
        }
        _ => return None,
    };
    let indent = indent_at(src, stmt.start_byte());
    let before = format!(
        "_fd = os.open({from}, os.O_RDONLY)\n{indent}try:\n{indent}    os.fsync(_fd)\n{indent}finally:\n{indent}    os.close(_fd)\n{indent}"
    );
    let after = format!(
        "\n{indent}_fd = os.open(os.path.dirname(os.path.abspath({to})), os.O_RDONLY)\n{indent}try:\n{indent}    os.fsync(_fd)\n{indent}finally:\n{indent}    os.close(_fd)"
    );
    Some(Edit {
        start: stmt.start_byte(),
        end: stmt.end_byte(),
        replacement: format!("{before}{}{after}", syntax::text(stmt, src)),
    })
}

/// The edits for the findings of one file (`src` is its text). Findings without a
/// mechanical fix are ignored.
pub fn edits_for(src: &str, lang: Lang, findings: &[&Finding]) -> Vec<Edit> {
    let mut parser = Parser::new();
    if parser.set_language(&lang.grammar()).is_err() {
        return Vec::new();
    }
    let Some(tree) = parser.parse(src, None) else {
        return Vec::new();
    };
    let root = tree.root_node();
    // Each finding's edits form a group, taken whole or not at all.
    let mut groups: Vec<Vec<Edit>> = findings
        .iter()
        .filter_map(|f| {
            let at = byte_of(src, f.line, f.column)?;
            match (lang, f.rule) {
                (Lang::Rust, crate::catalog::UNWRAP) => rust_unwrap(src, root, at).map(|e| vec![e]),
                (Lang::Go, crate::catalog::DROPPED_FILE_ERROR) => {
                    go_checked(src, root, at).map(|e| vec![e])
                }
                (Lang::Python, crate::catalog::RENAME_WITHOUT_FSYNC) => {
                    python_fsync(src, root, at).map(|e| vec![e])
                }
                (Lang::C, crate::catalog::RENAME_WITHOUT_FSYNC) => {
                    crate::fix_c::rename_fix(src, root, at)
                }
                _ => None,
            }
        })
        .collect();
    groups.sort_by_key(|g| g.iter().map(|e| e.start).min());
    // Overlapping edits: keep the first group.
    let mut out: Vec<Edit> = Vec::new();
    let mut c_fixed = false;
    for g in groups {
        let overlaps = g.iter().any(|e| out.iter().any(|o| conflict(o, e)));
        if !overlaps {
            c_fixed |= lang == Lang::C;
            out.extend(g);
        }
    }
    if c_fixed && !src.contains(crate::fix_c::HELPER) {
        out.push(crate::fix_c::helper_edit(src, root));
    }
    out.sort_by_key(|e| e.start);
    out
}

/// Whether two edits touch the same bytes (two insertions at one place count: their order
/// would be a guess).
fn conflict(a: &Edit, b: &Edit) -> bool {
    // An insertion covers the byte it is put before.
    let end = |e: &Edit| e.end.max(e.start + 1);
    a.start < end(b) && b.start < end(a)
}

/// Apply sorted, non-overlapping edits.
pub fn apply(src: &str, edits: &[Edit]) -> String {
    let mut out = String::with_capacity(src.len());
    let mut pos = 0;
    for e in edits {
        out.push_str(&src[pos..e.start]);
        out.push_str(&e.replacement);
        pos = e.end;
    }
    out.push_str(&src[pos..]);
    out
}

/// A unified diff (3 lines of context) from `path`'s `old` text to the text with `edits`.
pub fn unified_diff(path: &str, old: &str, edits: &[Edit]) -> String {
    if edits.is_empty() {
        return String::new();
    }
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let line_of = |byte: usize| old[..byte].matches('\n').count();
    // Each edit as (first old line, old line count, new lines).
    let mut changes: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for e in edits {
        let first = line_of(e.start);
        let last = line_of(e.end.max(e.start + 1).min(old.len()).saturating_sub(1)).max(first);
        let line_start = old[..e.start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = old[e.end..].find('\n').map_or(old.len(), |i| e.end + i + 1);
        let new_text = format!(
            "{}{}{}",
            &old[line_start..e.start],
            e.replacement,
            &old[e.end..line_end]
        );
        let new_lines: Vec<String> = new_text.split_inclusive('\n').map(str::to_string).collect();
        match changes.last_mut() {
            Some(prev) if prev.0 + prev.1 > first => {
                // Same line as the previous edit: redo that line range with both edits.
                let (p_first, _, _) = *prev;
                let start = old_lines[..p_first].iter().map(|l| l.len()).sum::<usize>();
                let end = old_lines[..=last].iter().map(|l| l.len()).sum::<usize>();
                let sub: Vec<Edit> = edits
                    .iter()
                    .filter(|x| x.start >= start && x.end <= end)
                    .map(|x| Edit {
                        start: x.start - start,
                        end: x.end - start,
                        replacement: x.replacement.clone(),
                    })
                    .collect();
                let merged = apply(&old[start..end], &sub);
                *prev = (
                    p_first,
                    last + 1 - p_first,
                    merged.split_inclusive('\n').map(str::to_string).collect(),
                );
            }
            _ => changes.push((first, last + 1 - first, new_lines)),
        }
    }
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    let mut delta: isize = 0;
    let mut i = 0;
    while i < changes.len() {
        // Group changes whose context overlaps.
        let mut j = i;
        while j + 1 < changes.len() && changes[j + 1].0 <= changes[j].0 + changes[j].1 + 6 {
            j += 1;
        }
        let from = changes[i].0.saturating_sub(3);
        let to = (changes[j].0 + changes[j].1 + 3).min(old_lines.len());
        let mut body = String::new();
        let mut old_n = 0;
        let mut new_n = 0;
        let mut line = from;
        for (first, count, new_lines) in &changes[i..=j] {
            while line < *first {
                body.push(' ');
                push_line(&mut body, old_lines[line]);
                old_n += 1;
                new_n += 1;
                line += 1;
            }
            for l in &old_lines[*first..*first + *count] {
                body.push('-');
                push_line(&mut body, l);
                old_n += 1;
            }
            for l in new_lines {
                body.push('+');
                push_line(&mut body, l);
                new_n += 1;
            }
            line = first + count;
        }
        while line < to {
            body.push(' ');
            push_line(&mut body, old_lines[line]);
            old_n += 1;
            new_n += 1;
            line += 1;
        }
        let new_start = from as isize + 1 + delta;
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            from + 1,
            old_n,
            new_start,
            new_n
        ));
        out.push_str(&body);
        delta += new_n as isize - old_n as isize;
        i = j + 1;
    }
    out
}

fn push_line(out: &mut String, l: &str) {
    out.push_str(l);
    if !l.ends_with('\n') {
        out.push_str("\n\\ No newline at end of file\n");
    }
}

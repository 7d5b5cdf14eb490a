//! Language-neutral views over tree-sitter nodes: calls, functions, handlers, loops,
//! statements and string literals. Rules are written against these views so that one
//! rule can serve several grammars.

use crate::lang::Lang;
use tree_sitter::Node;

/// Source text of a node ("" if the range is not valid UTF-8 boundaries, which does not
/// happen for trees parsed from a `&str`).
pub fn text<'s>(node: Node<'_>, src: &'s str) -> &'s str {
    src.get(node.byte_range()).unwrap_or("")
}

/// Whether a node is a comment in any supported grammar.
pub fn is_comment(node: Node<'_>) -> bool {
    matches!(node.kind(), "comment" | "line_comment" | "block_comment")
}

/// The named sibling before `node`, comments skipped (the previous statement).
pub fn prev_sibling_no_comments(node: Node<'_>) -> Option<Node<'_>> {
    let mut prev = node.prev_named_sibling();
    while let Some(p) = prev.filter(|p| is_comment(*p)) {
        prev = p.prev_named_sibling();
    }
    prev
}

/// Named children that are not comments.
pub fn named_children_no_comments(node: Node<'_>) -> Vec<Node<'_>> {
    let mut cursor = node.walk();
    node.named_children(&mut cursor)
        .filter(|c| !is_comment(*c))
        .collect()
}

/// How a call is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `f(x)`, `pkg.f(x)`, `obj.m(x)`, `a::b(x)`.
    Call,
    /// Rust `name!(...)`.
    Macro,
    /// Java `new T(...)`.
    New,
}

/// A call site.
#[derive(Debug, Clone, Copy)]
pub struct Call<'t, 's> {
    pub node: Node<'t>,
    pub kind: CallKind,
    /// Last segment of the callee: `exit` in `std::process::exit`, `get` in `requests.get`.
    pub name: &'s str,
    /// Text before the last segment: `std::process`, `requests`, `self.sock`; "" if none.
    pub qual: &'s str,
    /// The receiver/qualifier node, if any.
    pub receiver: Option<Node<'t>>,
    /// The argument list node (`token_tree` for Rust macros).
    pub args: Option<Node<'t>>,
}

impl<'t> Call<'t, '_> {
    /// Argument nodes, comments excluded (empty for macros).
    pub fn arg_nodes(&self) -> Vec<Node<'t>> {
        match (self.kind, self.args) {
            (CallKind::Macro, _) | (_, None) => Vec::new(),
            (_, Some(a)) => named_children_no_comments(a),
        }
    }

    /// Number of arguments.
    pub fn arg_count(&self) -> usize {
        self.arg_nodes().len()
    }

    /// Whether the call passes `name=` itself (a `**options` splat does not count).
    pub fn has_explicit_keyword(&self, name: &str, src: &str) -> bool {
        self.arg_nodes().iter().any(|a| {
            a.kind() == "keyword_argument"
                && a.child_by_field_name("name")
                    .is_some_and(|n| text(n, src) == name)
        })
    }

    /// Whether the call passes `name=` (`timeout=`), or a `**kwargs` splat that may carry it.
    pub fn has_keyword(&self, name: &str, src: &str) -> bool {
        self.has_explicit_keyword(name, src)
            || self
                .arg_nodes()
                .iter()
                .any(|a| a.kind() == "dictionary_splat")
    }

    /// `qual.name` joined with `.` (or `::` for Rust/C++ paths), for table look-ups.
    pub fn is(&self, qual: &str, name: &str) -> bool {
        self.name == name && self.qual == qual
    }
}

/// Last segment of a dotted or `::` path (`java.io.IOException` gives `IOException`).
pub fn last_segment(s: &str) -> &str {
    s.rsplit(['.', ':']).next().unwrap_or(s).trim()
}

/// Split `a::b::c` / `a.b.c` at the last separator.
fn split_last<'s>(s: &'s str, sep: &str) -> (&'s str, &'s str) {
    match s.rfind(sep) {
        Some(i) => (&s[..i], &s[i + sep.len()..]),
        None => ("", s),
    }
}

/// View `node` as a call, if it is one.
pub fn call<'t, 's>(node: Node<'t>, src: &'s str, lang: Lang) -> Option<Call<'t, 's>> {
    let mk = |kind, name, qual, receiver, args| Call {
        node,
        kind,
        name,
        qual,
        receiver,
        args,
    };
    match (lang, node.kind()) {
        (Lang::Python, "call") => {
            let f = node.child_by_field_name("function")?;
            let args = node.child_by_field_name("arguments");
            match f.kind() {
                "identifier" => Some(mk(CallKind::Call, text(f, src), "", None, args)),
                "attribute" => {
                    let obj = f.child_by_field_name("object")?;
                    let attr = f.child_by_field_name("attribute")?;
                    Some(mk(
                        CallKind::Call,
                        text(attr, src),
                        text(obj, src),
                        Some(obj),
                        args,
                    ))
                }
                _ => Some(mk(CallKind::Call, "", text(f, src), Some(f), args)),
            }
        }
        (Lang::Java, "method_invocation") => {
            let name = node.child_by_field_name("name")?;
            let obj = node.child_by_field_name("object");
            let qual = obj.map(|o| text(o, src)).unwrap_or("");
            Some(mk(
                CallKind::Call,
                text(name, src),
                qual,
                obj,
                node.child_by_field_name("arguments"),
            ))
        }
        (Lang::Java, "object_creation_expression") => {
            let ty = node.child_by_field_name("type")?;
            let ty_text = text(ty, src);
            let base = ty_text.split('<').next().unwrap_or(ty_text);
            let (qual, name) = split_last(base, ".");
            Some(mk(
                CallKind::New,
                name,
                qual,
                None,
                node.child_by_field_name("arguments"),
            ))
        }
        (Lang::Rust, "macro_invocation") => {
            let m = node.child_by_field_name("macro")?;
            let (qual, name) = split_last(text(m, src), "::");
            let args = {
                let mut c = node.walk();
                let tt = node
                    .named_children(&mut c)
                    .find(|n| n.kind() == "token_tree");
                tt
            };
            Some(mk(CallKind::Macro, name, qual, None, args))
        }
        (_, "call_expression") if lang != Lang::Python && lang != Lang::Java => {
            let args = node.child_by_field_name("arguments");
            let mut f = node.child_by_field_name("function")?;
            // Unwrap generic/template wrappers: `f::<T>()`, `f<T>()`.
            while matches!(f.kind(), "generic_function" | "template_function") {
                f = f
                    .child_by_field_name("function")
                    .or_else(|| f.child_by_field_name("name"))?;
            }
            match f.kind() {
                "identifier" => Some(mk(CallKind::Call, text(f, src), "", None, args)),
                "field_expression" => {
                    let recv = f
                        .child_by_field_name("value")
                        .or_else(|| f.child_by_field_name("argument"))?;
                    let field = f.child_by_field_name("field")?;
                    Some(mk(
                        CallKind::Call,
                        text(field, src),
                        text(recv, src),
                        Some(recv),
                        args,
                    ))
                }
                "selector_expression" => {
                    let recv = f.child_by_field_name("operand")?;
                    let field = f.child_by_field_name("field")?;
                    Some(mk(
                        CallKind::Call,
                        text(field, src),
                        text(recv, src),
                        Some(recv),
                        args,
                    ))
                }
                "scoped_identifier" | "qualified_identifier" => {
                    let (qual, name) = split_last(text(f, src), "::");
                    Some(mk(CallKind::Call, name, qual, None, args))
                }
                _ => Some(mk(CallKind::Call, "", text(f, src), Some(f), args)),
            }
        }
        _ => None,
    }
}

/// Whether a node starts a new function body (named function, method, closure, lambda).
pub fn is_function(node: Node<'_>, lang: Lang) -> bool {
    match lang {
        Lang::C => node.kind() == "function_definition",
        Lang::Cpp => matches!(node.kind(), "function_definition" | "lambda_expression"),
        Lang::Rust => matches!(node.kind(), "function_item" | "closure_expression"),
        Lang::Go => matches!(
            node.kind(),
            "function_declaration" | "method_declaration" | "func_literal"
        ),
        Lang::Python => matches!(node.kind(), "function_definition" | "lambda"),
        Lang::Java => matches!(
            node.kind(),
            "method_declaration"
                | "constructor_declaration"
                | "lambda_expression"
                | "compact_constructor_declaration"
        ),
    }
}

/// Name of a named function node (`None` for closures/lambdas).
pub fn function_name<'s>(node: Node<'_>, src: &'s str, lang: Lang) -> Option<&'s str> {
    if lang.is_c_family() {
        let mut d = node.child_by_field_name("declarator")?;
        loop {
            match d.kind() {
                "identifier" | "field_identifier" | "destructor_name" | "operator_name" => {
                    return Some(text(d, src))
                }
                "qualified_identifier" => return Some(split_last(text(d, src), "::").1),
                _ => d = d.child_by_field_name("declarator")?,
            }
        }
    }
    node.child_by_field_name("name").map(|n| text(n, src))
}

/// C and C++: the first node of `kind` down a function definition's declarator chain, at
/// most four levels deep (`static int *Db::save(..)`: `pointer_declarator`, then
/// `function_declarator`, whose declarator is the `qualified_identifier`).
pub fn c_declarator_of_kind<'t>(func: Node<'t>, kind: &str) -> Option<Node<'t>> {
    let mut d = func.child_by_field_name("declarator")?;
    for _ in 0..4 {
        if d.kind() == kind {
            return Some(d);
        }
        d = d.child_by_field_name("declarator")?;
    }
    None
}

/// Name of the nearest enclosing named function (closures are looked through).
pub fn enclosing_function_name<'s>(node: Node<'_>, src: &'s str, lang: Lang) -> Option<&'s str> {
    let mut n = node.parent();
    while let Some(p) = n {
        if is_function(p, lang) {
            if let Some(name) = function_name(p, src, lang) {
                return Some(name);
            }
        }
        n = p.parent();
    }
    None
}

/// Name of the nearest enclosing named function or, for a closure/lambda, of the variable or
/// field it is stored in (`SYSTEM_EXIT = code -> System.exit(code)`).
pub fn enclosing_name<'s>(node: Node<'_>, src: &'s str, lang: Lang) -> Option<&'s str> {
    let mut n = node.parent();
    let mut in_closure = false;
    while let Some(p) = n {
        if is_function(p, lang) {
            if let Some(name) = function_name(p, src, lang) {
                return Some(name);
            }
            in_closure = true;
        } else if in_closure {
            let named = match p.kind() {
                "variable_declarator" | "init_declarator" => p
                    .child_by_field_name("name")
                    .or_else(|| p.child_by_field_name("declarator")),
                "let_declaration" => p.child_by_field_name("pattern"),
                "short_var_declaration" | "assignment_statement" | "assignment" => {
                    p.child_by_field_name("left")
                }
                _ => None,
            };
            if let Some(nm) = named {
                return Some(text(nm, src));
            }
        }
        n = p.parent();
    }
    None
}

/// The nearest enclosing function node.
pub fn enclosing_function<'t>(node: Node<'t>, lang: Lang) -> Option<Node<'t>> {
    let mut n = node.parent();
    while let Some(p) = n {
        if is_function(p, lang) {
            return Some(p);
        }
        n = p.parent();
    }
    None
}

/// Visit every node under `root` (excluding `root`), not descending into nested
/// functions. `f` returns `false` to stop early.
pub fn for_each_in_body<'t>(root: Node<'t>, lang: Lang, mut f: impl FnMut(Node<'t>) -> bool) {
    let mut stack: Vec<Node<'t>> = Vec::new();
    let mut cursor = root.walk();
    stack.extend(root.children(&mut cursor));
    while let Some(n) = stack.pop() {
        if !f(n) {
            return;
        }
        if is_function(n, lang) {
            continue;
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
}

/// Whether any node under `root` (same function) satisfies `pred`.
pub fn any_in_body<'t>(root: Node<'t>, lang: Lang, mut pred: impl FnMut(Node<'t>) -> bool) -> bool {
    let mut found = false;
    for_each_in_body(root, lang, |n| {
        if pred(n) {
            found = true;
            return false;
        }
        true
    });
    found
}

/// All calls under `root` in the same function.
pub fn calls_in_body<'t, 's>(root: Node<'t>, src: &'s str, lang: Lang) -> Vec<Call<'t, 's>> {
    let mut out = Vec::new();
    for_each_in_body(root, lang, |n| {
        if let Some(c) = call(n, src, lang) {
            out.push(c);
        }
        true
    });
    out
}

/// An error handler: a `catch`/`except` clause, a Go `if err != nil` block, a Rust
/// `Err(..)` match arm or `if let Err(..)`, or a Go deferred `recover()` check.
#[derive(Debug, Clone)]
pub struct Handler<'t, 's> {
    /// The whole handler (catch clause, except clause, if statement, match arm).
    pub node: Node<'t>,
    /// The code that runs on error.
    pub body: Node<'t>,
    /// Caught type names as written (`IOException`, `...`, `OSError`); empty for a bare
    /// `except:`; `error` for Go/Rust.
    pub caught: Vec<&'s str>,
    /// Name bound to the error, if any.
    pub binding: Option<&'s str>,
    /// The protected code (try block), when the language has one.
    pub protected: Option<Node<'t>>,
    /// True for Go `if r := recover(); r != nil`.
    pub is_recover: bool,
}

/// Whether an identifier looks like an error variable (`err`, `readErr`, `err2`).
fn is_err_ident(s: &str) -> bool {
    s == "err"
        || s.starts_with("err") && s[3..].chars().all(|c| c.is_ascii_digit())
        || s.ends_with("Err")
}

/// View `node` as an error handler, if it is one.
pub fn handler<'t, 's>(node: Node<'t>, src: &'s str, lang: Lang) -> Option<Handler<'t, 's>> {
    let protected = || node.parent().and_then(|p| p.child_by_field_name("body"));
    match (lang, node.kind()) {
        (Lang::Java, "catch_clause") => {
            let body = node.child_by_field_name("body")?;
            let mut c = node.walk();
            let param = node
                .named_children(&mut c)
                .find(|n| n.kind() == "catch_formal_parameter");
            let mut caught = Vec::new();
            let mut binding = None;
            if let Some(p) = param {
                binding = p.child_by_field_name("name").map(|n| text(n, src));
                let mut c2 = p.walk();
                let ct = p.named_children(&mut c2).find(|n| n.kind() == "catch_type");
                if let Some(ct) = ct {
                    let mut c3 = ct.walk();
                    caught = ct.named_children(&mut c3).map(|t| text(t, src)).collect();
                }
            }
            Some(Handler {
                node,
                body,
                caught,
                binding,
                protected: protected(),
                is_recover: false,
            })
        }
        (Lang::Cpp, "catch_clause") => {
            let body = node.child_by_field_name("body")?;
            let params = node.child_by_field_name("parameters")?;
            let ptext = text(params, src);
            let mut caught = Vec::new();
            let mut binding = None;
            if ptext.contains("...") {
                caught.push("...");
            } else if let Some(decl) = params.named_child(0) {
                if let Some(t) = decl.child_by_field_name("type") {
                    caught.push(text(t, src));
                }
                binding = decl
                    .child_by_field_name("declarator")
                    .map(|d| text(d, src).trim_start_matches(['&', '*']));
            }
            Some(Handler {
                node,
                body,
                caught,
                binding,
                protected: protected(),
                is_recover: false,
            })
        }
        (Lang::Python, "except_clause") => {
            let mut c = node.walk();
            let body = node.named_children(&mut c).find(|n| n.kind() == "block")?;
            let mut caught = Vec::new();
            let mut binding = None;
            if let Some(mut v) = node.child_by_field_name("value") {
                if v.kind() == "as_pattern" {
                    binding = v.child_by_field_name("alias").map(|a| text(a, src));
                    v = v.named_child(0)?;
                }
                if let Some(a) = node.child_by_field_name("alias") {
                    binding = Some(text(a, src));
                }
                if matches!(v.kind(), "tuple" | "parenthesized_expression") {
                    let mut c2 = v.walk();
                    caught = v
                        .named_children(&mut c2)
                        .filter(|n| !is_comment(*n))
                        .map(|n| text(n, src))
                        .collect();
                } else {
                    caught.push(text(v, src));
                }
            }
            Some(Handler {
                node,
                body,
                caught,
                binding,
                protected: protected(),
                is_recover: false,
            })
        }
        (Lang::Go, "if_statement") => {
            let cond = node.child_by_field_name("condition")?;
            if cond.kind() != "binary_expression"
                || cond.child_by_field_name("operator").map(|o| text(o, src)) != Some("!=")
            {
                return None;
            }
            let (l, r) = (
                cond.child_by_field_name("left")?,
                cond.child_by_field_name("right")?,
            );
            let var = match (l.kind(), r.kind()) {
                ("identifier", "nil") => l,
                ("nil", "identifier") => r,
                _ => return None,
            };
            let var_name = text(var, src);
            let body = node.child_by_field_name("consequence")?;
            let is_recover = node.child_by_field_name("initializer").is_some_and(|init| {
                init.child_by_field_name("right")
                    .and_then(|r| r.named_child(0))
                    .and_then(|c| call(c, src, lang))
                    .is_some_and(|c| c.name == "recover" && c.qual.is_empty())
            });
            if !is_recover && !is_err_ident(var_name) {
                return None;
            }
            Some(Handler {
                node,
                body,
                caught: vec!["error"],
                binding: Some(var_name),
                protected: None,
                is_recover,
            })
        }
        (Lang::Rust, "match_arm") => {
            let mp = node.child_by_field_name("pattern")?;
            // `Err(e) if e.kind() == Interrupted => {}` handles one case on purpose.
            if mp.child_by_field_name("condition").is_some() {
                return None;
            }
            let pat = mp.named_child(0)?;
            let binding = rust_err_pattern(pat, src)?;
            let body = node.child_by_field_name("value")?;
            Some(Handler {
                node,
                body,
                caught: vec!["Err"],
                binding,
                protected: None,
                is_recover: false,
            })
        }
        (Lang::Rust, "if_expression") => {
            let cond = node.child_by_field_name("condition")?;
            if cond.kind() != "let_condition" {
                return None;
            }
            let binding = rust_err_pattern(cond.child_by_field_name("pattern")?, src)?;
            let body = node.child_by_field_name("consequence")?;
            Some(Handler {
                node,
                body,
                caught: vec!["Err"],
                binding,
                protected: None,
                is_recover: false,
            })
        }
        _ => None,
    }
}

/// `Err(x)` / `Err(_)` pattern: returns the binding (`None` for `_`). A specific error
/// (`Err(Errno::INTR)`, `Err(INCOMPLETE)`, `Err(ref e)` is a binding) is not a general
/// handler and returns `None` overall.
fn rust_err_pattern<'s>(pat: Node<'_>, src: &'s str) -> Option<Option<&'s str>> {
    if pat.kind() != "tuple_struct_pattern" {
        return None;
    }
    let ty = pat.child_by_field_name("type")?;
    let ty_text = text(ty, src);
    if ty_text != "Err" && !ty_text.ends_with("::Err") {
        return None;
    }
    match pat.named_child(1) {
        None => Some(None),
        Some(inner) if inner.kind() == "_" || text(inner, src) == "_" => Some(None),
        Some(inner) if inner.kind() == "identifier" => {
            let t = text(inner, src);
            if t.chars().any(|c| c.is_ascii_lowercase()) {
                Some(Some(t))
            } else {
                None
            }
        }
        Some(inner) if inner.kind() == "ref_pattern" || inner.kind() == "mut_pattern" => {
            Some(inner.named_child(0).map(|n| text(n, src)))
        }
        Some(_) => None,
    }
}

/// Statements of a block-like node (comments excluded). For a Rust match arm whose value is
/// a single expression, that expression; `()` counts as no statement.
pub fn statements(body: Node<'_>) -> Vec<Node<'_>> {
    match body.kind() {
        "unit_expression" => Vec::new(),
        "block" | "compound_statement" | "statement_list" | "declaration_list" => {
            let mut out = Vec::new();
            for c in named_children_no_comments(body) {
                if c.kind() == "statement_list" {
                    out.extend(named_children_no_comments(c));
                } else if c.kind() != "empty_statement" {
                    out.push(c);
                }
            }
            out
        }
        _ => vec![body],
    }
}

/// Comments anywhere inside `node`.
pub fn comments_in<'t>(node: Node<'t>) -> Vec<Node<'t>> {
    let mut out = Vec::new();
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if is_comment(n) {
            out.push(n);
            continue;
        }
        let mut c = n.walk();
        stack.extend(n.children(&mut c));
    }
    out
}

/// Whether a comment says the work is unfinished.
pub fn is_todo_comment(comment: &str) -> bool {
    ["TODO", "FIXME", "XXX", "HACK"]
        .iter()
        .any(|m| comment.contains(m))
}

/// Whether a node is a loop.
pub fn is_loop(node: Node<'_>, lang: Lang) -> bool {
    match lang {
        Lang::Rust => matches!(
            node.kind(),
            "loop_expression" | "while_expression" | "for_expression"
        ),
        Lang::Go => node.kind() == "for_statement",
        Lang::Python => matches!(node.kind(), "while_statement" | "for_statement"),
        Lang::C | Lang::Cpp | Lang::Java => {
            matches!(
                node.kind(),
                "while_statement"
                    | "for_statement"
                    | "do_statement"
                    | "for_range_loop"
                    | "enhanced_for_statement"
            )
        }
    }
}

/// The string value of a string literal node (quotes and prefixes removed, escapes kept);
/// `None` if the node is not a plain string literal (f-strings and concatenations are not).
pub fn string_literal<'s>(node: Node<'_>, src: &'s str, lang: Lang) -> Option<&'s str> {
    let kinds: &[&str] = match lang {
        Lang::C | Lang::Cpp => &["string_literal", "raw_string_literal"],
        Lang::Rust => &["string_literal", "raw_string_literal"],
        Lang::Go => &["interpreted_string_literal", "raw_string_literal"],
        Lang::Python => &["string"],
        Lang::Java => &["string_literal"],
    };
    if !kinds.contains(&node.kind()) {
        return None;
    }
    if lang == Lang::Python
        && named_children_no_comments(node)
            .iter()
            .any(|c| c.kind() == "interpolation")
    {
        return None;
    }
    let t = text(node, src);
    let t = t.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == '#' || c == '@');
    let t = t.trim_matches(|c| c == '"' || c == '\'' || c == '`' || c == '#');
    Some(t)
}

/// The root of the tree `node` belongs to (the whole file).
pub fn tree_root(node: Node<'_>) -> Node<'_> {
    let mut root = node;
    while let Some(p) = root.parent() {
        root = p;
    }
    root
}

/// Split an identifier into lowercase words (`saveState` and `save_state` give
/// `["save", "state"]`).
pub fn ident_words(ident: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for ch in ident.chars() {
        if !ch.is_alphabetic() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = ch.is_lowercase();
        cur.extend(ch.to_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_identifiers() {
        assert_eq!(ident_words("saveState"), vec!["save", "state"]);
        assert_eq!(ident_words("save_state2"), vec!["save", "state"]);
        assert_eq!(ident_words("HTTPServer"), vec!["httpserver"]);
    }

    #[test]
    fn err_idents() {
        assert!(is_err_ident("err"));
        assert!(is_err_ident("err2"));
        assert!(is_err_ident("readErr"));
        assert!(!is_err_ident("errors"));
        assert!(!is_err_ident("x"));
    }
}

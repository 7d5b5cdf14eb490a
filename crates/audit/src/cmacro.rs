//! C/C++ macro idioms that tree-sitter (which does not preprocess) cannot parse, and a
//! byte-length-preserving rewrite that makes them parse: offsets, lines and columns of
//! every finding stay those of the original file.
//!
//! Idioms handled:
//! - **conditional compilation**: `#if/#ifdef/#ifndef ... #elif ... #else ... #endif` keep
//!   only the first branch (the `#else` branch of `#if 0`), and the directive lines are
//!   blanked, so braces opened in both branches no longer unbalance the file;
//! - **iteration macros** used as loop heads, `list_for_each_entry(p, head, m) { ... }`:
//!   the macro name is replaced by `while` padded with spaces, which gives
//!   `while (p, head, m) { ... }`, a valid loop over a comma expression;
//! - **annotation macros** that expand to nothing or to attributes (`__init`, `__hot`,
//!   `_Noreturn`, `PRINTF_ATTR(1, 2)`, ...): blanked out, with their argument list;
//! - **type arguments** of function-like macros, `PTR_CAST(struct x, p)`,
//!   `container_of(p, struct x, m)`: the `struct`/`union`/`enum` keyword is blanked, so the
//!   argument parses as an identifier (not inside `sizeof`, casts or declarations);
//! - project macros from the config (`[c] loop_macros`, `[c] blank_macros`).

/// Built-in iteration macros: any identifier containing one of these (case-insensitive)
/// that opens a statement and is followed by `(` is a loop head.
const DEFAULT_LOOP_PARTS: &[&str] = &["for_each", "foreach", "_loop_over", "list_iterate"];

/// Built-in annotation macros blanked out (with a following `(...)` when present).
const DEFAULT_BLANK: &[&str] = &[
    "__init",
    "__exit",
    "__hot",
    "__cold",
    "__unused",
    "__maybe_unused",
    "__always_inline",
    "__noinline",
    "__packed",
    "__must_check",
    "__printf",
    "__format",
    "__nonnull",
    "__attribute_const__",
    "__wur",
    "__THROW",
    "_Noreturn",
    "noreturn",
    "PRINTF_ATTR",
    "FORMAT_ATTR",
    "G_GNUC_PRINTF",
    "G_GNUC_UNUSED",
    "QB_GNUC_PRINTF",
    "ATTRIBUTE_UNUSED",
    "ATTRIBUTE_NORETURN",
    "ATTRIBUTE_PRINTF",
    "EXPORT_SYMBOL",
    "STATIC_ASSERT",
    "WARN_UNUSED_RESULT",
    "__attribute__",
    "__attribute",
    "__warn_unused_result__",
];

/// The macro idioms to neutralize before parsing C/C++.
#[derive(Debug, Clone)]
pub struct MacroList {
    /// Identifier parts that mark a loop macro.
    pub loop_parts: Vec<String>,
    /// Exact loop macro names (project list).
    pub loop_macros: Vec<String>,
    /// Exact names of macros to blank out (with their argument list).
    pub blank_macros: Vec<String>,
}

impl Default for MacroList {
    fn default() -> Self {
        MacroList {
            loop_parts: DEFAULT_LOOP_PARTS.iter().map(|s| s.to_string()).collect(),
            loop_macros: Vec::new(),
            blank_macros: DEFAULT_BLANK.iter().map(|s| s.to_string()).collect(),
        }
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// End (exclusive) of the balanced `( ... )` starting at `open`, or `None`.
fn balanced_end(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    let mut in_str: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == q {
                in_str = None;
            }
        } else {
            match c {
                b'"' | b'\'' => in_str = Some(c),
                b'(' => depth += 1,
                b')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Blank (spaces, newlines kept) the lines of every conditional-compilation branch but the
/// first one taken, and the `#if`/`#elif`/`#else`/`#endif` lines themselves.
fn keep_first_branches(src: &str) -> String {
    struct Frame {
        taken: bool,
        active: bool,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut out = String::with_capacity(src.len());
    let mut continuation = false;
    let mut blank_continuation = false;
    for line in src.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        if continuation {
            continuation = body.ends_with('\\');
            if blank_continuation {
                push_blank(&mut out, line);
            } else {
                out.push_str(line);
            }
            continue;
        }
        let t = body.trim_start();
        let directive = t.strip_prefix('#').map(|d| d.trim_start()).map(|d| {
            d.split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("")
        });
        let mut is_cond = true;
        match directive {
            Some("if") | Some("ifdef") | Some("ifndef") => {
                let zero = directive == Some("if") && {
                    let rest = t.trim_start_matches('#').trim_start();
                    let cond = rest["if".len()..].trim();
                    cond == "0" || cond.starts_with("0 ") || cond.starts_with("0/")
                };
                stack.push(Frame {
                    taken: !zero,
                    active: !zero,
                });
            }
            Some("elif") => {
                if let Some(f) = stack.last_mut() {
                    f.active = !f.taken;
                    f.taken = true;
                }
            }
            Some("else") => {
                if let Some(f) = stack.last_mut() {
                    f.active = !f.taken;
                    f.taken = true;
                }
            }
            Some("endif") => {
                stack.pop();
            }
            _ => is_cond = false,
        }
        let active_now = stack.iter().all(|f| f.active);
        let blank = is_cond || !active_now;
        continuation = body.ends_with('\\');
        blank_continuation = blank;
        if blank {
            push_blank(&mut out, line);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Push `line` with every character but line breaks replaced by spaces, byte for byte.
fn push_blank(out: &mut String, line: &str) {
    for ch in line.chars() {
        if ch == '\n' || ch == '\r' {
            out.push(ch);
        } else {
            for _ in 0..ch.len_utf8() {
                out.push(' ');
            }
        }
    }
}

/// Whether a call-like name is a macro that may take a type argument: an upper-case name
/// (`PTR_CAST`), or a well-known one (`container_of`, `list_entry`, `offsetof`, `va_arg`).
/// Lower-case names are left alone so that prototypes keep their `struct` parameters.
fn takes_type_arguments(ident: &str) -> bool {
    let upper = ident.bytes().any(|b| b.is_ascii_uppercase())
        && !ident.bytes().any(|b| b.is_ascii_lowercase());
    upper
        || ident.contains("container_of")
        || ident.ends_with("_entry")
        || ident.contains("_entry_")
        || matches!(ident, "offsetof" | "va_arg")
}

/// Builtin type words that make up a type argument.
const TYPE_WORDS: &[&str] = &[
    "const", "volatile", "unsigned", "signed", "char", "short", "int", "long", "float", "double",
    "void", "_Bool", "bool",
];

fn src_word(b: &[u8], from: usize, to: usize) -> String {
    String::from_utf8_lossy(&b[from..to]).into_owned()
}

/// C keywords that are followed by `(` but are not calls.
fn is_keyword(ident: &str) -> bool {
    matches!(
        ident,
        "if" | "while"
            | "for"
            | "switch"
            | "return"
            | "sizeof"
            | "_Alignof"
            | "alignof"
            | "__alignof__"
            | "typeof"
            | "__typeof__"
            | "_Generic"
            | "__attribute__"
            | "__asm__"
            | "asm"
            | "defined"
    )
}

/// In the argument list `b[open..end]` of a call-like macro, blank the `struct`/`union`/
/// `enum` keyword of every argument that is just a type (`struct x`, `struct x *`).
fn blank_type_arguments(b: &[u8], out: &mut [u8], open: usize, end: usize) {
    let mut depth = 0usize;
    let mut i = open;
    let mut arg_start = true;
    while i < end {
        let c = b[i];
        match c {
            b'(' => {
                depth += 1;
                arg_start = depth == 1;
                i += 1;
                continue;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                arg_start = false;
                i += 1;
                continue;
            }
            b',' if depth == 1 => {
                arg_start = true;
                i += 1;
                continue;
            }
            b'"' | b'\'' => return, // keep it simple: no rewriting around literals
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => {}
        }
        if depth == 1 && arg_start {
            // An argument made only of builtin type words (`const char`, `unsigned char *`):
            // replaced by the identifier `_` padded with spaces.
            let mut j = i;
            let mut words = 0;
            loop {
                while j < end && (b[j] == b' ' || b[j] == b'\t' || b[j] == b'*') {
                    j += 1;
                }
                let w0 = j;
                while j < end && is_ident_byte(b[j]) {
                    j += 1;
                }
                if j == w0 {
                    break;
                }
                if !TYPE_WORDS.contains(&&src_word(b, w0, j)[..]) {
                    j = usize::MAX;
                    break;
                }
                words += 1;
            }
            if words > 0 && j != usize::MAX && (b.get(j) == Some(&b',') || j == end - 1) {
                out[i] = b'_';
                for o in &mut out[i + 1..j] {
                    *o = b' ';
                }
                arg_start = false;
                i = j;
                continue;
            }
            for kw in [&b"struct"[..], b"union", b"enum"] {
                let k = kw.len();
                if b[i..].starts_with(kw) && b.get(i + k).is_some_and(|x| *x == b' ' || *x == b'\t')
                {
                    // The rest of the argument must be `ident [*...]`.
                    let mut j = i + k;
                    while j < end && (b[j] == b' ' || b[j] == b'\t') {
                        j += 1;
                    }
                    let id0 = j;
                    while j < end && is_ident_byte(b[j]) {
                        j += 1;
                    }
                    while j < end && (b[j] == b' ' || b[j] == b'\t' || b[j] == b'*') {
                        j += 1;
                    }
                    if j > id0 && (b.get(j) == Some(&b',') || j == end - 1) {
                        for o in &mut out[i..i + k] {
                            *o = b' ';
                        }
                    }
                }
            }
        }
        arg_start = false;
        i += 1;
    }
}

impl MacroList {
    /// Add project macros (from the config).
    pub fn with_project(mut self, loops: &[String], blanks: &[String]) -> Self {
        self.loop_macros.extend(loops.iter().cloned());
        self.blank_macros.extend(blanks.iter().cloned());
        self
    }

    fn is_loop(&self, ident: &str) -> bool {
        if self.loop_macros.iter().any(|m| m == ident) {
            return true;
        }
        let l = ident.to_ascii_lowercase();
        self.loop_parts.iter().any(|p| l.contains(p.as_str()))
    }

    /// Rewrite `src` so that the macro idioms parse; the result has exactly the same length
    /// and the same newlines. Comments and strings are left alone.
    pub fn neutralize(&self, src: &str) -> String {
        let first_branches = keep_first_branches(src);
        let src = first_branches.as_str();
        let mut out = src.as_bytes().to_vec();
        let b = src.as_bytes();
        let mut i = 0;
        let mut stmt_start = true; // only whitespace since the last `;`, `{`, `}` or line start
        while i < b.len() {
            let c = b[i];
            // Skip comments, strings, char literals, preprocessor lines.
            if c == b'/' && b.get(i + 1) == Some(&b'/') {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            if c == b'/' && b.get(i + 1) == Some(&b'*') {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
                continue;
            }
            if c == b'"' || c == b'\'' {
                i += 1;
                while i < b.len() && b[i] != c && b[i] != b'\n' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                stmt_start = false;
                continue;
            }
            if c == b'#' && stmt_start {
                // Preprocessor line (with continuations): leave as is.
                while i < b.len() && b[i] != b'\n' {
                    if b[i] == b'\\' && b.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                    i += 1;
                }
                continue;
            }
            if is_ident_byte(c) && (i == 0 || !is_ident_byte(b[i - 1])) {
                let start = i;
                while i < b.len() && is_ident_byte(b[i]) {
                    i += 1;
                }
                let ident = &src[start..i];
                let mut j = i;
                while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                    j += 1;
                }
                let has_args = b.get(j) == Some(&b'(');
                if self.blank_macros.iter().any(|m| m == ident) {
                    let end = if has_args {
                        balanced_end(b, j).unwrap_or(i)
                    } else {
                        i
                    };
                    for o in out.iter_mut().take(end).skip(start) {
                        if *o != b'\n' {
                            *o = b' ';
                        }
                    }
                    i = end;
                    continue;
                }
                if stmt_start && has_args && ident.len() >= 5 && self.is_loop(ident) {
                    if let Some(end) = balanced_end(b, j) {
                        // Only a loop head when a statement or block follows, not `;`.
                        let mut k = end;
                        while k < b.len() && b[k].is_ascii_whitespace() {
                            k += 1;
                        }
                        if b.get(k) != Some(&b';') {
                            out[start..start + 5].copy_from_slice(b"while");
                            for o in &mut out[start + 5..i] {
                                *o = b' ';
                            }
                        }
                    }
                }
                if has_args && !is_keyword(ident) && takes_type_arguments(ident) {
                    if let Some(end) = balanced_end(b, j) {
                        blank_type_arguments(b, &mut out, j, end);
                    }
                }
                stmt_start = false;
                continue;
            }
            match c {
                b';' | b'{' | b'}' | b'\n' => stmt_start = true,
                b' ' | b'\t' | b'\r' => {}
                _ => stmt_start = false,
            }
            i += 1;
        }
        // Only ASCII bytes were written over ASCII identifier bytes: still UTF-8.
        String::from_utf8(out).unwrap_or_else(|_| src.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_macros_become_while_and_keep_length() {
        let src = "void f(void) {\n    list_for_each_entry(p, &h, m) {\n        g(p);\n    }\n}\n";
        let out = MacroList::default().neutralize(src);
        assert_eq!(out.len(), src.len());
        let head = format!(
            "while{}(p, &h, m) {{",
            " ".repeat("list_for_each_entry".len() - 5)
        );
        assert!(out.contains(&head), "{out}");
        // A call statement ending in `;` is left alone.
        let src = "void f(void) { list_for_each_cb(a, b); }\n";
        assert_eq!(MacroList::default().neutralize(src), src);
    }

    #[test]
    fn annotation_macros_are_blanked_with_arguments() {
        let src = "static void __init f(const char *s, ...) PRINTF_ATTR(1, 2);\n";
        let out = MacroList::default().neutralize(src);
        assert_eq!(out.len(), src.len());
        assert!(
            !out.contains("__init") && !out.contains("PRINTF_ATTR"),
            "{out}"
        );
        // Not inside strings or comments.
        let src = "char *s = \"__init\"; /* __init */\n";
        assert_eq!(MacroList::default().neutralize(src), src);
    }

    #[test]
    fn type_arguments_lose_their_keyword() {
        let src = "void f(void) { p = PTR_CAST(struct nlattr, NLMSG_TAIL(&r)); q = container_of(x, struct foo *, m); n = sizeof(struct foo); }\nint g(struct foo *);\n";
        let out = MacroList::default().neutralize(src);
        assert_eq!(out.len(), src.len());
        assert!(out.contains("PTR_CAST(       nlattr,"), "{out}");
        assert!(out.contains("container_of(x,        foo *, m)"), "{out}");
        assert!(out.contains("sizeof(struct foo)"), "{out}");
        assert!(out.contains("int g(struct foo *);"), "{out}");
    }

    #[test]
    fn only_the_first_conditional_branch_is_kept() {
        let src = "int f(void) {\n#ifdef A\n    if (a) {\n#else\n    if (b) {\n#endif\n        g();\n    }\n#if 0\n    x(\n#else\n    y();\n#endif\n}\n";
        let out = MacroList::default().neutralize(src);
        assert_eq!(out.len(), src.len());
        assert_eq!(out.lines().count(), src.lines().count());
        assert!(out.contains("if (a) {") && !out.contains("if (b)"), "{out}");
        assert!(out.contains("y();") && !out.contains("x("), "{out}");
        assert!(!out.contains('#'), "{out}");
        let mut p = tree_sitter::Parser::new();
        p.set_language(&crate::lang::Lang::C.grammar()).unwrap();
        assert!(
            !p.parse(&out, None).unwrap().root_node().has_error(),
            "{out}"
        );
        assert!(p.parse(src, None).unwrap().root_node().has_error());
    }

    #[test]
    fn project_macros_from_config() {
        let src = "void f(void) {\n    RB_WALK(n, t) {\n        g(n);\n    }\n}\n";
        let m = MacroList::default().with_project(&["RB_WALK".into()], &[]);
        assert!(m.neutralize(src).contains("while  (n, t)"));
    }
}

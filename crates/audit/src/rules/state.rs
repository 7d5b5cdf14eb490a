//! Failover-hostile state: hard-coded addresses, and "persist" functions that only keep
//! state in process memory.

use super::Ctx;
use crate::catalog::{HARDCODED_HOST, MEMORY_ONLY_STATE};
use crate::lang::Lang;
use crate::syntax;
use std::net::{Ipv4Addr, Ipv6Addr};
use tree_sitter::Node;

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>) {
    if let Some(s) = syntax::string_literal(node, ctx.src, ctx.lang) {
        if let Some(host) = hardcoded_host(s) {
            if !near_version_name(ctx, node) && !in_assertion(ctx, node) {
                ctx.report(HARDCODED_HOST, node, format!("hard-coded address `{host}`"));
            }
        }
        return;
    }
    if syntax::is_function(node, ctx.lang) {
        check_memory_only(ctx, node);
    }
}

/// Internal-only DNS suffixes that name specific machines.
const INTERNAL_SUFFIXES: &[&str] = &[
    ".internal",
    ".local",
    ".lan",
    ".corp",
    ".intranet",
    ".intra",
    ".priv",
    ".home.arpa",
];

/// If the whole literal is an address of a specific machine, return the host part.
pub fn hardcoded_host(lit: &str) -> Option<&str> {
    let mut s = lit.trim();
    // The whole literal must be the address: a sentence that mentions one is prose.
    if s.contains(char::is_whitespace) || s.contains("\\n") {
        return None;
    }
    if let Some(i) = s.find("://") {
        s = &s[i + 3..];
        s = s.split(['/', '?', '#']).next().unwrap_or("");
        if let Some(at) = s.rfind('@') {
            s = &s[at + 1..];
        }
    }
    if s.is_empty() || s.len() > 255 || s.contains(char::is_whitespace) {
        return None;
    }
    // [v6]:port or v6
    if let Some(rest) = s.strip_prefix('[') {
        let host = rest.split(']').next()?;
        return host
            .parse::<Ipv6Addr>()
            .ok()
            .filter(is_specific_v6)
            .map(|_| host);
    }
    if s.matches(':').count() >= 2 {
        return s.parse::<Ipv6Addr>().ok().filter(is_specific_v6).map(|_| s);
    }
    let host = match s.split_once(':') {
        Some((h, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => h,
        Some(_) => return None,
        None => s,
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return is_specific_v4(ip).then_some(host);
    }
    let lower = host.to_ascii_lowercase();
    // host.domain.internal: at least three labels, so `Setup.local` (a file name) is not one.
    let labels_ok = lower.split('.').count() >= 3
        && lower
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if labels_ok
        && INTERNAL_SUFFIXES.iter().any(|suf| lower.ends_with(suf))
        && lower != "localhost.localdomain"
    {
        return Some(host);
    }
    None
}

fn is_specific_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let doc = matches!(
        (o[0], o[1], o[2]),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
    );
    let mask_like = o
        .iter()
        .all(|b| matches!(b, 0 | 128 | 192 | 224 | 240 | 248 | 252 | 254 | 255))
        && o[0] == 255;
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_link_local()
        || o[0] <= 2 // 0-2 start ASN.1 object identifiers ("2.5.4.3"), not hosts
        || o[3] == 0
        || o[3] == 255
        || doc
        || mask_like)
}

fn is_specific_v6(ip: &Ipv6Addr) -> bool {
    let seg = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || seg[0] & 0xffc0 == 0xfe80
        || seg[0] == 0x2001 && seg[1] == 0x0db8)
}

/// Literals inside assertions (`debug_assert_eq!(MAX_LEN, "101.102.103.104".len())`) are
/// test data, not addresses the program talks to.
fn in_assertion(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return false;
        }
        if p.kind() == "assert_statement" || ctx.call(p).is_some_and(|c| c.name.contains("assert"))
        {
            return true;
        }
        n = p.parent();
    }
    false
}

/// `version = "1.2.3.4"`: a dotted-quad that is a version number, not an address.
fn near_version_name(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    for _ in 0..3 {
        let Some(p) = n else { return false };
        let t = ctx.text(p);
        let head = &t[..t.len().min(120)];
        let lower = head.to_ascii_lowercase();
        if lower.contains("version")
            || lower.contains("ver ")
            || lower.contains("oid")
            || lower.contains("objectid")
            || lower.contains("objid")
            || lower.contains("identifier")
            || lower.contains("mask")
        {
            return true;
        }
        n = p.parent();
    }
    false
}

/// Names of types/files that are caches or test doubles by design (`InMemoryStore`,
/// `mem_store.py`, `FakeRepo`).
fn is_in_memory_by_design(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "memory", "inmemory", "mem", "inmem", "cache", "cached", "mock", "fake", "stub", "dummy",
        "test", "noop", "null", "local", "temp", "tmp",
    ];
    let stem = std::path::Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name);
    syntax::ident_words(stem)
        .iter()
        .any(|w| WORDS.contains(&w.as_str()))
}

/// The class/impl/receiver type that owns a method, if any.
fn owner_type_name<'s>(ctx: &Ctx<'s>, func: Node<'_>) -> Option<&'s str> {
    if ctx.lang == Lang::Go {
        return func.child_by_field_name("receiver").map(|r| ctx.text(r));
    }
    let mut n = func.parent();
    while let Some(p) = n {
        match p.kind() {
            "class_definition" | "class_declaration" | "struct_specifier" | "class_specifier" => {
                return p.child_by_field_name("name").map(|x| ctx.text(x));
            }
            "impl_item" => return p.child_by_field_name("type").map(|x| ctx.text(x)),
            _ => {}
        }
        n = p.parent();
    }
    None
}

const COLLECTION_MUTATORS: &[&str] = &[
    "put",
    "putIfAbsent",
    "putAll",
    "add",
    "addAll",
    "push",
    "offer",
    "compute",
    "merge",
    "append",
    "update",
    "setdefault",
    "insert",
    "push_back",
    "emplace",
    "emplace_back",
    "extend",
    "add_all",
];
const IO_WORDS: &[&str] = &[
    "write",
    "save",
    "persist",
    "flush",
    "commit",
    "sync",
    "send",
    "publish",
    "exec",
    "execute",
    "upsert",
    "open",
    "dump",
    "serialize",
    "marshal",
    "encode",
    "fsync",
    "rename",
    "replace",
    "query",
    "post",
    "request",
    "emit",
    "produce",
    "set",
    "insert",
    "put",
    "store",
    "update",
];

/// `self.x[k] = v` / `s.m[k] = v` / `this.map.put(k, v)` / `self.map.insert(k, v)`.
fn member_collection_write(ctx: &Ctx<'_>, n: Node<'_>) -> bool {
    let receiver_is_member = |t: &str| {
        t.starts_with("self.")
            || t.starts_with("this.")
            || t.starts_with("self->")
            || t.starts_with("this->")
    };
    match (ctx.lang, n.kind()) {
        (Lang::Python, "assignment") => n
            .child_by_field_name("left")
            .is_some_and(|l| l.kind() == "subscript" && receiver_is_member(ctx.text(l))),
        (Lang::Go, "assignment_statement") => n
            .child_by_field_name("left")
            .and_then(|l| l.named_child(0))
            .is_some_and(|l| {
                l.kind() == "index_expression"
                    && l.child_by_field_name("operand")
                        .is_some_and(|o| o.kind() == "selector_expression")
            }),
        _ => ctx.call(n).is_some_and(|c| {
            COLLECTION_MUTATORS.contains(&c.name)
                && (receiver_is_member(c.qual)
                    || (ctx.lang == Lang::Java && !c.qual.is_empty() && !c.qual.contains('('))
                    || (ctx.lang == Lang::Go && c.qual.contains('.')))
        }),
    }
}

fn check_memory_only(ctx: &mut Ctx<'_>, func: Node<'_>) {
    if ctx.lang == Lang::C {
        return;
    }
    let Some(name) = syntax::function_name(func, ctx.src, ctx.lang) else {
        return;
    };
    let words = syntax::ident_words(name);
    if !words
        .first()
        .is_some_and(|w| matches!(w.as_str(), "save" | "persist" | "checkpoint"))
    {
        return;
    }
    if is_in_memory_by_design(ctx.path)
        || owner_type_name(ctx, func).is_some_and(is_in_memory_by_design)
    {
        return;
    }
    let Some(body) = func.child_by_field_name("body") else {
        return;
    };
    let mut writes_memory = false;
    let mut does_io = false;
    syntax::for_each_in_body(body, ctx.lang, |n| {
        if member_collection_write(ctx, n) {
            writes_memory = true;
        } else if let Some(c) = ctx.call(n) {
            let ws = syntax::ident_words(c.name);
            if ws
                .iter()
                .any(|w| IO_WORDS.iter().any(|io| w.starts_with(io)))
                || syntax::ident_words(c.qual)
                    .iter()
                    .any(|w| w == "db" || w == "store" || w == "client")
            {
                does_io = true;
            }
        }
        true
    });
    if writes_memory && !does_io {
        let at = func.child_by_field_name("name").unwrap_or(func);
        ctx.report(MEMORY_ONLY_STATE, at, format!("`{name}` only updates an in-memory collection: the state is lost on crash or failover"));
    }
}

#[cfg(test)]
mod tests {
    use super::hardcoded_host;

    #[test]
    fn recognises_specific_addresses() {
        assert_eq!(hardcoded_host("10.1.2.3"), Some("10.1.2.3"));
        assert_eq!(hardcoded_host("10.1.2.3:6379"), Some("10.1.2.3"));
        assert_eq!(
            hardcoded_host("http://db1.prod.internal:8080/x"),
            Some("db1.prod.internal")
        );
        assert_eq!(hardcoded_host("[2a00:1450::1]:443"), Some("2a00:1450::1"));
        assert_eq!(hardcoded_host("  curl tftp://192.168.0.1/\\n"), None);
        for not in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.0",
            "localhost",
            "example.com",
            "1.2.3",
            "::1",
            "192.0.2.1",
            "a b",
            "10.0.0.0",
        ] {
            assert_eq!(hardcoded_host(not), None, "{not}");
        }
    }
}

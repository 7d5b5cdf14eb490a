//! Crash-prone rules: unwrap/expect, explicit panics/aborts, assertions on run-time
//! results, and process exit from library code.

use super::exits::{enclosing_handler, in_entry_point, is_exit_call};
use super::Ctx;
use crate::catalog::{ASSERT, EXIT_IN_LIBRARY, PANIC, UNWRAP};
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind};
use tree_sitter::Node;

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>, call: Option<&Call<'_, '_>>) {
    if ctx.path.ends_with("build.rs") {
        return;
    }
    if let Some(c) = call {
        check_unwrap(ctx, c);
        check_panic(ctx, c);
        check_assert_call(ctx, c);
        check_exit(ctx, c);
    }
    if ctx.lang == Lang::Python && node.kind() == "assert_statement" {
        if let Some(cond) = node.named_child(0) {
            if has_fallible_call(ctx, cond) {
                ctx.report(ASSERT, node, "`assert` checks a run-time result; it raises in production and disappears under `python -O`");
            }
        }
    }
}

fn is_literal(n: Node<'_>) -> bool {
    matches!(
        n.kind(),
        "string_literal"
            | "raw_string_literal"
            | "integer_literal"
            | "float_literal"
            | "boolean_literal"
            | "char_literal"
    )
}

/// `Regex::new("...")`, `"1.2.3.4".parse()`: a call on literals only, which fails only if the
/// program itself is wrong (clippy's own exception for `expect` on constants).
fn is_constant_call(ctx: &Ctx<'_>, recv: Node<'_>) -> bool {
    let Some(c) = ctx.call(recv) else {
        return false;
    };
    let args = c.arg_nodes();
    let args_literal = args.iter().all(|a| is_literal(*a));
    let recv_literal = c.receiver.is_none_or(|r| {
        is_literal(r) || r.kind() == "identifier" && args_literal && !args.is_empty()
    });
    args_literal && recv_literal && (c.receiver.is_some_and(is_literal) || !args.is_empty())
}

fn check_unwrap(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    if ctx.lang != Lang::Rust || c.kind != CallKind::Call {
        return;
    }
    let n = c.arg_count();
    if !((c.name == "unwrap" && n == 0) || (c.name == "expect" && n == 1)) {
        return;
    }
    let Some(recv) = c.receiver else { return };
    // `m.lock().unwrap()`: a poisoned lock means another thread already panicked.
    if let Some(rc) = ctx.call(recv) {
        if (matches!(rc.name, "lock" | "read" | "write") && rc.arg_count() == 0)
            || matches!(
                rc.name,
                "wait" | "wait_while" | "wait_timeout" | "wait_timeout_while"
            )
        {
            return;
        }
    }
    if is_constant_call(ctx, recv) || !chain_has_fallible_call(ctx, recv) {
        return;
    }
    if cannot_fail_by_receiver(ctx, recv) {
        return;
    }
    let name = c.name;
    ctx.report(
        UNWRAP,
        c.node,
        format!("`.{name}()` panics on the error/None case"),
    );
}

/// Rust calls whose failure comes from outside the program: files, sockets, processes,
/// environment, peer threads (channel send/recv).
const RUST_FALLIBLE: &[&str] = &[
    "open",
    "create",
    "read_to_string",
    "read_to_end",
    "read_dir",
    "read_link",
    "read_line",
    "write_all",
    "flush",
    "connect",
    "connect_timeout",
    "bind",
    "accept",
    "recv",
    "recv_timeout",
    "send",
    "spawn",
    "output",
    "status",
    "metadata",
    "symlink_metadata",
    "canonicalize",
    "rename",
    "copy",
    "remove_file",
    "remove_dir",
    "remove_dir_all",
    "create_dir",
    "create_dir_all",
    "sync_all",
    "sync_data",
    "lookup_host",
    "to_socket_addrs",
    "current_exe",
    "current_dir",
    "var",
    "set_permissions",
    "set_nonblocking",
    "set_read_timeout",
    "set_write_timeout",
    "try_clone",
    "local_addr",
    "peer_addr",
    "home_dir",
];

/// Receiver evidence that the fallible-looking call of an unwrapped chain cannot fail
/// from outside the program:
/// - `write_all`/`write`/`flush` into an in-memory writer (a `Vec`, slice, `String`,
///   `Cursor`, or an encoder/`BufWriter` wrapping one), by the writer's `let` or parameter
///   type in the enclosing function;
/// - `send` on a channel (`tx.send(..)` fails only when the receiving side is gone, which
///   is the program's own shutdown order, not an environmental failure);
/// - `recv` on a channel created in the same function whose sender stays within it (moved
///   into a spawned closure, not handed to another component that may drop it).
fn cannot_fail_by_receiver(ctx: &Ctx<'_>, recv: Node<'_>) -> bool {
    let n = if recv.kind() == "await_expression" {
        recv.named_child(0).unwrap_or(recv)
    } else {
        recv
    };
    let Some(c) = ctx.call(n) else { return false };
    let Some(func) = syntax::enclosing_function(c.node, ctx.lang) else {
        return false;
    };
    let root = c.receiver.map(|r| root_ident(ctx, r)).unwrap_or("");
    match c.name {
        "write_all" | "write" | "flush" | "write_fmt" => {
            !root.is_empty() && in_memory_writer(ctx, func, root, 0)
        }
        "send" | "try_send" | "send_blocking" => is_channel_end(ctx, func, root, c.qual),
        "recv" | "recv_timeout" => {
            let Some(sender) = channel_pair_sender(ctx, func, root) else {
                return false;
            };
            !sender_escapes(ctx, func, &sender)
        }
        _ => false,
    }
}

/// The identifier a receiver expression starts from: `batch_encoder` in
/// `batch_encoder.get_mut()`, `buf` in `&mut buf`, `x` in `self.x`.
fn root_ident<'s>(ctx: &Ctx<'s>, r: Node<'_>) -> &'s str {
    let t = ctx.text(r).trim();
    let t = t.trim_start_matches('&').trim_start_matches("mut ").trim();
    let t = t.strip_prefix("self.").unwrap_or(t);
    let end = t
        .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .unwrap_or(t.len());
    &t[..end]
}

/// Initializers and types of in-memory byte sinks, whose writes cannot fail.
const IN_MEMORY_INIT: &[&str] = &[
    "Vec::new(",
    "Vec::with_capacity(",
    "vec![",
    ".to_vec()",
    "String::new(",
    "String::with_capacity(",
    "Cursor::new(",
    "BytesMut::new(",
    "BytesMut::with_capacity(",
    "Vec::default(",
    "Default::default(",
];
const IN_MEMORY_TYPES: &[&str] = &["Vec<u8>", "[u8]", "String", "BytesMut", "Cursor<"];

/// Whether `name` is, in function `func`, an in-memory writer: bound by `let` to an
/// in-memory initializer (or to an encoder/writer wrapping one), or a parameter whose type
/// is one.
fn in_memory_writer(ctx: &Ctx<'_>, func: Node<'_>, name: &str, depth: usize) -> bool {
    if depth > 3 {
        return false;
    }
    let mut found = false;
    if let Some(params) = func.child_by_field_name("parameters") {
        let mut cur = params.walk();
        for p in params.named_children(&mut cur) {
            let pat = p.child_by_field_name("pattern").map(|n| ctx.text(n));
            if pat.is_some_and(|t| t.trim_start_matches("mut ") == name) {
                let ty = p
                    .child_by_field_name("type")
                    .map(|n| ctx.text(n))
                    .unwrap_or("");
                found |= IN_MEMORY_TYPES.iter().any(|t| ty.contains(t)) && !ty.contains("dyn");
            }
        }
    }
    if found {
        return true;
    }
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if n.kind() == "let_declaration" {
            let pat = n.child_by_field_name("pattern").map(|p| ctx.text(p));
            if pat.is_some_and(|t| t.trim_start_matches("mut ") == name) {
                let ty = n
                    .child_by_field_name("type")
                    .map(|t| ctx.text(t))
                    .unwrap_or("");
                let value = n.child_by_field_name("value");
                let v = value.map(|v| ctx.text(v)).unwrap_or("");
                found = IN_MEMORY_TYPES.iter().any(|t| ty.contains(t))
                    || IN_MEMORY_INIT.iter().any(|i| v.contains(i))
                    || value.is_some_and(|v| wraps_in_memory(ctx, func, v, depth));
            }
        }
        !found
    });
    found
}

/// `ZstdEncoder::new(bytes, 3)`, `BufWriter::new(buf)`: a writer constructed around an
/// in-memory sink (its first argument).
fn wraps_in_memory(ctx: &Ctx<'_>, func: Node<'_>, value: Node<'_>, depth: usize) -> bool {
    // `Encoder::new(x, ..).unwrap()` / `?`: look through the unwrap.
    let mut v = value;
    for _ in 0..4 {
        if v.kind() == "try_expression" {
            v = v.named_child(0).unwrap_or(v);
            continue;
        }
        match ctx.call(v) {
            Some(c) if matches!(c.name, "unwrap" | "expect") && c.receiver.is_some() => {
                v = c.receiver.unwrap_or(v);
            }
            _ => break,
        }
    }
    let Some(c) = ctx.call(v) else { return false };
    let wrapper = c.name == "new"
        && ["Encoder", "Writer", "Compressor"]
            .iter()
            .any(|w| c.qual.ends_with(w));
    if !wrapper {
        return false;
    }
    c.arg_nodes().first().is_some_and(|a| {
        let t = ctx.text(*a);
        IN_MEMORY_INIT.iter().any(|i| t.contains(i))
            || in_memory_writer(ctx, func, root_ident(ctx, *a), depth + 1)
    })
}

/// `(tx, rx)` patterns bound from a channel constructor in `func`: (sender, receiver).
fn channel_pairs(ctx: &Ctx<'_>, func: Node<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if n.kind() == "let_declaration" {
            let pat = n.child_by_field_name("pattern");
            let value = n
                .child_by_field_name("value")
                .map(|v| ctx.text(v))
                .unwrap_or("");
            let is_channel = ["channel", "bounded", "unbounded", "oneshot", "mpsc"]
                .iter()
                .any(|w| value.contains(w));
            if let Some(p) = pat.filter(|p| p.kind() == "tuple_pattern" && is_channel) {
                let parts = syntax::named_children_no_comments(p);
                if parts.len() == 2 {
                    let clean = |n: Node<'_>| ctx.text(n).trim_start_matches("mut ").to_string();
                    out.push((clean(parts[0]), clean(parts[1])));
                }
            }
        }
        true
    });
    out
}

/// `name` is the sending or receiving end of a channel: bound from a channel constructor
/// in `func`, or named like one (`tx`, `*_tx`, `sender`, `*outbox`).
fn is_channel_end(ctx: &Ctx<'_>, func: Node<'_>, name: &str, qual: &str) -> bool {
    let l = name.to_ascii_lowercase();
    let q = qual.to_ascii_lowercase();
    let named = l == "tx"
        || l.ends_with("_tx")
        || l.starts_with("tx_")
        || l.ends_with("sender")
        || l.ends_with("outbox")
        || q.ends_with("_tx")
        || q.ends_with("sender")
        || q.ends_with("outbox");
    named || channel_pairs(ctx, func).iter().any(|(t, _)| t == name)
}

fn channel_pair_sender(ctx: &Ctx<'_>, func: Node<'_>, receiver: &str) -> Option<String> {
    channel_pairs(ctx, func)
        .into_iter()
        .find(|(_, r)| r == receiver)
        .map(|(t, _)| t)
}

/// The sender is handed to another component (an argument of a call other than inside a
/// closure body: `IOFlushed::new(notify, tx.downgrade())`), which may drop it on failure.
fn sender_escapes(ctx: &Ctx<'_>, func: Node<'_>, sender: &str) -> bool {
    let mut escapes = false;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if n.kind() == "closure_expression" {
            return true;
        }
        if let Some(c) = ctx.call(n) {
            escapes |= c.arg_nodes().iter().any(|a| {
                let t = ctx.text(*a);
                a.kind() != "closure_expression"
                    && (t == sender || t.starts_with(&format!("{sender}.")))
            });
        }
        !escapes
    });
    escapes
}

/// Whether a method chain (`fs::read_to_string(p).unwrap()`) contains a call whose failure
/// depends on the environment.
fn chain_has_fallible_call(ctx: &Ctx<'_>, recv: Node<'_>) -> bool {
    let mut cur = Some(recv);
    while let Some(n) = cur {
        let n = if n.kind() == "await_expression" {
            n.named_child(0).unwrap_or(n)
        } else {
            n
        };
        let Some(c) = ctx.call(n) else { return false };
        if RUST_FALLIBLE.contains(&c.name) {
            return true;
        }
        if RUST_DECODERS.contains(&c.name) && decodes_file_data(ctx, &c) {
            return true;
        }
        cur = c.receiver;
    }
    false
}

/// Rust calls that decode bytes or text (`String::from_utf8(bytes)`, `s.parse()`,
/// `serde_json::from_slice(&buf)`): they fail on damaged input.
const RUST_DECODERS: &[&str] = &[
    "from_utf8",
    "parse",
    "from_slice",
    "from_str",
    "from_reader",
    "deserialize",
    "decode",
];

/// Whether a decoder's argument or receiver is a local variable that the same function
/// filled from a file (`file.read_to_end(&mut bytes)`, `let s = fs::read_to_string(p)?`):
/// a file left damaged by a crash then panics the program at startup or recovery.
fn decodes_file_data(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    let mut names: Vec<&str> = c
        .arg_nodes()
        .iter()
        .map(|a| {
            ctx.text(*a)
                .trim_start_matches('&')
                .trim_start_matches("mut ")
        })
        .collect();
    // The receiver's root variable: `saved` in `saved.trim().parse()`.
    if let Some(r) = c.receiver {
        let t = ctx.text(r);
        names.push(t.split('.').next().unwrap_or(t));
    }
    let names: Vec<&str> = names
        .into_iter()
        .filter(|n| !n.is_empty() && n.chars().all(|ch| ch.is_alphanumeric() || ch == '_'))
        .collect();
    if names.is_empty() {
        return false;
    }
    let Some(func) = syntax::enclosing_function(c.node, ctx.lang) else {
        return false;
    };
    syntax::calls_in_body(func, ctx.src, ctx.lang)
        .iter()
        .any(|k| {
            if !matches!(k.name, "read_to_end" | "read_to_string" | "read") {
                return false;
            }
            // `f.read_to_end(&mut bytes)`: the buffer argument.
            let filled_arg = k.receiver.is_some()
                && k.arg_nodes().iter().any(|a| {
                    let t = ctx.text(*a);
                    t.strip_prefix("&mut ")
                        .is_some_and(|v| names.contains(&v.trim()))
                });
            // `let s = fs::read_to_string(p)?;` / `match read_to_string(&p) { Ok(s) => s, .. }`.
            let bound = k.name != "read" || k.qual.ends_with("fs");
            let filled_let = bound && {
                let mut up = k.node.parent();
                while let Some(p) = up.filter(|p| {
                    !matches!(
                        p.kind(),
                        "let_declaration" | "block" | "expression_statement"
                    )
                }) {
                    up = p.parent();
                }
                up.filter(|p| p.kind() == "let_declaration")
                    .and_then(|p| p.child_by_field_name("pattern"))
                    .is_some_and(|pat| names.contains(&ctx.text(pat).trim_start_matches("mut ")))
            };
            filled_arg || filled_let
        })
}

fn check_panic(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    let hit = match ctx.lang {
        // `todo!` is always an unfinished, reachable hole (`unimplemented!` usually marks a
        // deliberately unsupported operation); `panic!`/`abort()` only when
        // they are the response to an `Err` (invariant panics are not reported).
        // Rust: `todo!` is an unfinished, reachable hole. `panic!`/`unimplemented!`/`abort()`
        // are measured to be documented API contracts or invariants in almost every case.
        Lang::Rust => c.kind == CallKind::Macro && c.name == "todo",
        Lang::Go => {
            // `panic(..)`, a logger's `Panicf` (`log.Panicf`, a project's `plog.Panicf`), or
            // a call of one of the file's own panic helpers (`panicNow(err)`); the panic
            // inside such a helper is its callers' hazard, not its own. The enclosing
            // function's name (a walk up the parents) is looked up only for such calls.
            let panics = (c.name == "panic" && c.qual.is_empty())
                || (!c.qual.is_empty() && matches!(c.name, "Panic" | "Panicf" | "Panicln"))
                || (c.qual.is_empty() && ctx.panic_helpers.iter().any(|h| h == c.name));
            let f = if panics {
                syntax::enclosing_function_name(c.node, ctx.src, ctx.lang).unwrap_or("")
            } else {
                ""
            };
            panics
                && !ctx.panic_helpers.iter().any(|h| h == f)
                && !follows_a_panic(ctx, c.node)
                && !f.starts_with("Must")
                && !f.starts_with("must")
                && f != "init"
                && !inside_recover_handler(ctx, c.node)
                && panics_on_error(ctx, c)
        }
        Lang::Python => {
            c.qual == "os" && c.name == "abort" && enclosing_handler(ctx, c.node).is_none()
        }
        // C/C++ `abort()` is measured to be a deliberate fail-stop (heap corruption, OOM,
        // broken invariants) in almost every case; it is not reported.
        Lang::C | Lang::Cpp => false,
        Lang::Java => false,
    };
    if hit {
        let what = ctx
            .text(c.node)
            .split(['(', '!'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        ctx.report(
            PANIC,
            c.node,
            format!("`{what}` crashes the process on a reachable path"),
        );
    }
}

/// Go `if r := recover(); r != nil { panic(r) }` re-panics on purpose.
fn inside_recover_handler(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::handler(p, ctx.src, ctx.lang).is_some_and(|h| h.is_recover) {
            return true;
        }
        n = p.parent();
    }
    false
}

/// Go: `panic(err)`, `panic(fmt.Errorf(..))`, or any panic inside `if err != nil`: the
/// panic turns a returned error into a crash. `panic("unreachable")` in an exhaustive
/// switch is an invariant check and is not reported.
fn panics_on_error(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    if ctx.facts.is_program
        || near_invariant_comment(ctx, c.node)
        || error_from_marshal(ctx, c.node)
    {
        return false;
    }
    if enclosing_handler(ctx, c.node).is_some() {
        return true;
    }
    c.arg_nodes().first().is_some_and(|a| {
        let t = ctx.text(*a);
        // `panic(ErrDBClosed)`: an exported sentinel is API misuse, not a returned error.
        a.kind() == "identifier" && t.to_ascii_lowercase().contains("err") && !is_go_sentinel(t)
    })
}

/// Go exported sentinel errors: `ErrClosed`, `errDiscarded` declared at package level are
/// named `Err*`/`err*` followed by an upper-case letter.
fn is_go_sentinel(name: &str) -> bool {
    let rest = name
        .strip_prefix("Err")
        .or_else(|| name.strip_prefix("err"));
    rest.is_some_and(|r| r.chars().next().is_some_and(|ch| ch.is_ascii_uppercase()))
}

/// A comment right above (or inside the block of) the panic says it cannot happen: the
/// panic is an invariant check.
fn near_invariant_comment(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    const MARKERS: &[&str] = &[
        "never happen",
        "should not happen",
        "shouldn't happen",
        "can't happen",
        "cannot happen",
        "impossible",
        "unreachable",
        "must not happen",
    ];
    let mut n = Some(node);
    for _ in 0..4 {
        let Some(cur) = n else { break };
        let mut prev = cur.prev_sibling();
        let mut seen = 0;
        while let Some(p) = prev {
            if !syntax::is_comment(p) || seen > 3 {
                break;
            }
            let t = ctx.text(p).to_ascii_lowercase();
            if MARKERS.iter().any(|m| t.contains(m)) {
                return true;
            }
            seen += 1;
            prev = p.prev_sibling();
        }
        n = cur.parent();
    }
    false
}

/// Go calls whose error is a programming error or cannot happen in practice: encoding an
/// in-memory value (`json.Marshal`, `enc.Encode`, `proto.Marshal`, `MarshalBinary`), and
/// `crypto/rand.Read` (the kernel's getrandom does not fail after boot).
fn cannot_fail_at_run_time(c: &Call<'_, '_>) -> bool {
    let l = c.name.to_ascii_lowercase();
    l.starts_with("marshal")
        || l.starts_with("encode")
        || (matches!(c.qual, "rand" | "crand" | "cryptorand") && matches!(c.name, "Read" | "Int"))
}

/// Go: the error being panicked on comes from a call that cannot fail at run time (see
/// [`cannot_fail_at_run_time`]): encoding an internal value, `crypto/rand`.
fn error_from_marshal(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if p.kind() == "if_statement" {
            // `if _, err := crand.Read(buf); err != nil { panic(..) }`
            let init_call = p
                .child_by_field_name("initializer")
                .and_then(|i| i.child_by_field_name("right"))
                .and_then(|r| r.named_child(0))
                .and_then(|c| ctx.call(c));
            if let Some(c) = init_call {
                return cannot_fail_at_run_time(&c);
            }
            return p.prev_named_sibling().is_some_and(|prev| {
                prev.child_by_field_name("right")
                    .and_then(|r| r.named_child(0))
                    .and_then(|c| ctx.call(c))
                    .is_some_and(|c| cannot_fail_at_run_time(&c))
            });
        }
        if syntax::is_function(p, ctx.lang) {
            return false;
        }
        n = p.parent();
    }
    false
}

/// C functions whose result reports an environmental failure; asserting on them crashes in
/// debug builds and silently drops the call itself under NDEBUG.
const C_FALLIBLE: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "strdup",
    "open",
    "fopen",
    "close",
    "fclose",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "pthread_cond_wait",
    "pthread_cond_signal",
    "pthread_mutex_destroy",
    "pthread_cond_destroy",
    "pthread_rwlock_rdlock",
    "pthread_rwlock_wrlock",
    "pthread_rwlock_unlock",
    "sem_wait",
    "sem_post",
    "mmap",
    "socket",
    "accept",
    "stat",
    "fstat",
    "lstat",
    "access",
    "unlink",
    "remove",
    "opendir",
    "closedir",
    "getaddrinfo",
    "clock_gettime",
    "gettimeofday",
    "sysconf",
];
/// Python calls whose result depends on the environment (files, processes, sockets).
const PY_FALLIBLE: &[(&str, &str)] = &[
    ("", "open"),
    ("os", "read"),
    ("os", "write"),
    ("os", "stat"),
    ("os", "open"),
    ("os", "system"),
    ("os", "listdir"),
    ("os", "waitpid"),
    ("os.path", "exists"),
    ("os.path", "isfile"),
    ("os.path", "isdir"),
    ("os.path", "getsize"),
    ("os.path", "islink"),
    ("subprocess", "call"),
    ("subprocess", "run"),
    ("subprocess", "check_output"),
    ("socket", "create_connection"),
    ("socket", "gethostbyname"),
    ("shutil", "copy"),
    ("shutil", "move"),
    ("json", "load"),
    ("json", "loads"),
    ("requests", "get"),
    ("requests", "post"),
];

/// Whether an assertion's condition contains a call whose result depends on the
/// environment (I/O, allocation, locking, parsing input).
fn has_fallible_call(ctx: &Ctx<'_>, cond: Node<'_>) -> bool {
    let mut stack = vec![cond];
    while let Some(n) = stack.pop() {
        if let Some(c) = ctx.call(n) {
            let fallible = match ctx.lang {
                Lang::C | Lang::Cpp => {
                    matches!(c.qual, "" | "::" | "std")
                        && (C_FALLIBLE.contains(&c.name)
                            || super::ignored_result::C_MUST_CHECK.contains(&c.name))
                }
                Lang::Python => PY_FALLIBLE.iter().any(|(q, n)| c.is(q, n)),
                _ => false,
            };
            if fallible {
                return true;
            }
        }
        let mut cur = n.walk();
        stack.extend(n.children(&mut cur));
    }
    false
}

fn check_assert_call(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    match ctx.lang {
        Lang::Rust
            if c.kind == CallKind::Macro
                && matches!(c.name, "assert" | "assert_eq" | "assert_ne") =>
        {
            // Macro arguments are raw tokens: look for Result/Option probes and fallible calls.
            let Some(tt) = c.args else { return };
            let tokens = ctx.text(tt);
            let probes = [".is_ok()", ".is_err()", "Ok(", "Err("];
            if probes.iter().any(|p| tokens.contains(p)) {
                let name = c.name;
                ctx.report(
                    ASSERT,
                    c.node,
                    format!("`{name}!` on a Result/Option panics when the operation fails"),
                );
            }
        }
        Lang::C | Lang::Cpp if c.name == "assert" && c.qual.is_empty() => {
            if let Some(cond) = c.arg_nodes().first() {
                if has_fallible_call(ctx, *cond) {
                    ctx.report(ASSERT, c.node, "`assert()` on a run-time result: aborts in debug builds, vanishes (with any side effect) under NDEBUG");
                }
            }
        }
        _ => {}
    }
}

fn check_exit(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    // Measured on C servers (nginx, curl, redis): exits are process management (forked
    // children, daemonizing, worker processes dying on fatal init), not library defects.
    if !is_exit_call(ctx.lang, c)
        || matches!(c.name, "abort" | "terminate")
        || ctx.lang.is_c_family()
    {
        return;
    }
    if in_entry_point(ctx, c.node) || enclosing_handler(ctx, c.node).is_some() {
        return;
    }
    let what = ctx
        .text(c.node)
        .split('(')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    ctx.report(
        EXIT_IN_LIBRARY,
        c.node,
        format!("`{what}` ends the whole process from library code"),
    );
}

/// Go: the names of the file's panic helpers, plain functions of at most 8 body lines that
/// take an `error`, return nothing, and panic (`panic(`, a logger's `Panicf`, `log.Fatal`), such as
/// dragonboat's `panicNow(err)`. A text scan (cheap; no second parse).
pub(super) fn go_panic_helpers(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("\nfunc ") {
        let after = &rest[i + 6..];
        rest = after;
        // Plain functions only (`func name(`), not methods (`func (r *T) name(`).
        let Some(open) = after.find('(') else { break };
        let name = &after[..open];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let Some(sig_end) = after.find('{') else {
            break;
        };
        // `(err error) {`: an `error` parameter and no result (a helper that returns
        // something does more than panic).
        let Some(close) = after[open..sig_end].find(')') else {
            continue;
        };
        let params = &after[open..open + close];
        let results = after[open + close + 1..sig_end].trim();
        if !params.contains("error") || !results.is_empty() {
            continue;
        }
        let Some(body_end) = after[sig_end..].find("\n}") else {
            break;
        };
        let body = &after[sig_end..sig_end + body_end];
        if body.lines().count() > 9 {
            continue;
        }
        if body.contains("panic(")
            || body.contains(".Panicf(")
            || body.contains(".Panic(")
            || body.contains(".Fatalf(")
            || body.contains(".Fatal(")
        {
            out.push(name.to_string());
        }
    }
    out
}

/// Go: the statement right before is already a panic (`plog.Panicf(..)` then
/// `panic("unreachable")`): this one can never run.
fn follows_a_panic(ctx: &Ctx<'_>, call: Node<'_>) -> bool {
    let Some(stmt) = call.parent().filter(|p| p.kind() == "expression_statement") else {
        return false;
    };
    syntax::prev_sibling_no_comments(stmt)
        .filter(|p| p.kind() == "expression_statement")
        .and_then(|p| p.named_child(0))
        .and_then(|e| ctx.call(e))
        .is_some_and(|c| {
            (c.name == "panic" && c.qual.is_empty())
                || matches!(c.name, "Panic" | "Panicf" | "Panicln")
                || (c.qual.is_empty() && ctx.panic_helpers.iter().any(|h| h == c.name))
        })
}

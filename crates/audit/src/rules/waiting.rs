//! Waiting rules: blocking network/IPC calls and waits without a timeout.

use super::timeout_evidence::{self, Bound};
use super::Ctx;
use crate::catalog::{NO_TIMEOUT, REQUEST_WITHOUT_TIMEOUT};
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind};
use tree_sitter::Node;

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>, call: Option<&Call<'_, '_>>) {
    if let Some(c) = call {
        if let Some(msg) = blocking_without_timeout(ctx, c) {
            // A module-level `requests` call is its own rule (its precision is measured apart).
            let rule = if ctx.lang == Lang::Python && c.qual == "requests" {
                REQUEST_WITHOUT_TIMEOUT
            } else {
                NO_TIMEOUT
            };
            report(ctx, rule, c.node, msg, project_bound(ctx, c));
        }
    }
    if ctx.lang == Lang::Go && node.kind() == "composite_literal" {
        check_go_struct(ctx, node);
    }
    if ctx.lang == Lang::Go && super::timeouts_go::default_client_stored(ctx, node) {
        report(
            ctx,
            NO_TIMEOUT,
            node,
            "`http.DefaultClient` (no timeout) stored for later requests: a stalled server hangs each of them forever".into(),
            None,
        );
    }
}

/// Report a `no-timeout` finding unless the function bounds it with a context deadline
/// (Go), it is in a branch only an old runtime or library runs, after a default socket
/// timeout set in the same function, or in a file that arms `signal.alarm` (Python), or its
/// peer is on this host (a loopback address in the call). For Python, note the project fact
/// that would bound it, for the project pass.
fn report(
    ctx: &mut Ctx<'_>,
    rule: &'static str,
    node: Node<'_>,
    msg: String,
    bound: Option<Bound>,
) {
    if ctx.lang == Lang::Go && timeout_evidence::go_deadline_in_function(ctx, node) {
        return;
    }
    if ctx.lang == Lang::Python
        && (timeout_evidence::python_old_version_branch(ctx, node)
            || ctx.timeout_facts.arms_alarm
            || (bound == Some(Bound::DefaultSocketTimeout)
                && timeout_evidence::default_timeout_set_before(ctx, node)))
    {
        return;
    }
    if matches!(ctx.lang, Lang::Python | Lang::Go)
        && timeout_evidence::loopback_peer(ctx.text(node))
    {
        return;
    }
    ctx.report(rule, node, msg);
    let line = node.start_position().row + 1;
    if let Some(b) = bound {
        if ctx
            .findings
            .last()
            .is_some_and(|f| f.rule == rule && f.line == line)
        {
            ctx.timeout_facts.conditional.push((line, b));
        }
    }
}

/// The project-wide fact that would bound a Python call's wait: a process default socket
/// timeout (stdlib clients and plain sockets), or a project session class with a timeout
/// (calls on a `*session` receiver).
fn project_bound(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> Option<Bound> {
    if ctx.lang != Lang::Python {
        return None;
    }
    if timeout_evidence::python_default_bounds(c) {
        return Some(Bound::DefaultSocketTimeout);
    }
    if PY_REQUESTS.contains(&c.name) && c.qual.to_ascii_lowercase().ends_with("session") {
        return Some(Bound::SessionWrapper);
    }
    None
}

const PY_REQUESTS: &[&str] = &[
    "get", "post", "put", "patch", "delete", "head", "options", "request",
];

fn positional(c: &Call<'_, '_>) -> usize {
    c.arg_nodes()
        .iter()
        .filter(|a| {
            !matches!(
                a.kind(),
                "keyword_argument" | "dictionary_splat" | "list_splat"
            )
        })
        .count()
}

fn blocking_without_timeout(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> Option<String> {
    let src = ctx.src;
    match ctx.lang {
        Lang::Python => {
            let qual_l = c.qual.to_ascii_lowercase();
            // A `*.session` is only an unbounded HTTP session when the file imports
            // `requests` (`request.session` in web frameworks is a dict; an httpx client has a
            // 5 s default timeout unless built with `timeout=None`).
            let http_import = || {
                ["import requests", "from requests"]
                    .iter()
                    .any(|m| src.contains(m))
            };
            if PY_REQUESTS.contains(&c.name)
                && ((c.qual == "requests"
                    && !super::waiting_python::requests_rebound(src)
                    && !timeout_evidence::requests_is_parameter(ctx, c.node))
                    || (qual_l.ends_with("session")
                        && http_import()
                        && !timeout_evidence::framework_session(src, c.qual)))
                && !c.has_keyword("timeout", src)
            {
                return Some(format!(
                    "`{}.{}()` without `timeout=` can wait forever for the server",
                    c.qual, c.name
                ));
            }
            if let Some(msg) = super::waiting_python::key_value_client(ctx, c) {
                return Some(msg);
            }
            if c.name == "urlopen" && positional(c) < 3 && !c.has_keyword("timeout", src) {
                return Some("`urlopen()` without `timeout=` can wait forever".into());
            }
            if c.qual == "socket"
                && c.name == "create_connection"
                && positional(c) < 2
                && !c.has_keyword("timeout", src)
            {
                return Some(
                    "`socket.create_connection()` without a timeout can block forever".into(),
                );
            }
            if matches!(c.name, "HTTPConnection" | "HTTPSConnection")
                && positional(c) < 3
                && !c.has_keyword("timeout", src)
            {
                return Some(format!(
                    "`{}` without `timeout=` blocks forever on a dead peer",
                    c.name
                ));
            }
            None
        }
        Lang::Go => {
            if c.qual == "http" && matches!(c.name, "Get" | "Post" | "Head" | "PostForm") {
                return Some(format!(
                    "`http.{}` uses http.DefaultClient, which has no timeout",
                    c.name
                ));
            }
            if c.qual == "http.DefaultClient"
                && matches!(c.name, "Do" | "Get" | "Post" | "Head" | "PostForm")
            {
                return Some(format!(
                    "`http.DefaultClient.{}` has no timeout: a stalled server hangs the call forever",
                    c.name
                ));
            }
            // `http.ListenAndServe` (a server without read timeouts) is not reported: a
            // slow client holds only its own connection, and the labels found debug, pprof,
            // metrics and admin listeners (11 of 11 labelled server findings were FPs).
            let unix = c
                .arg_nodes()
                .first()
                .is_some_and(|a| ctx.text(*a).starts_with("\"unix"));
            if let Some(msg) = super::timeouts_go::dial_without_timeout(ctx, c) {
                return Some(msg);
            }
            if c.qual == "net"
                && c.name == "Dial"
                && !unix
                && !timeout_evidence::go_dial_stays_local(ctx, c)
            {
                return Some("`net.Dial` has no timeout; use `net.DialTimeout` or a `net.Dialer{Timeout: ...}`".into());
            }
            None
        }
        Lang::Java => {
            let qual_l = c.qual.to_ascii_lowercase();
            let n = c.arg_count();
            match (c.kind, c.name) {
                (CallKind::New, "Socket") if n >= 2 => {
                    Some("`new Socket(host, port)` connects with no timeout; create it unconnected and call `connect(addr, timeoutMs)`".into())
                }
                // `url.openConnection()` in a method that never sets a connect or read
                // timeout (on the connection, or through a helper of this class that does).
                (CallKind::Call, "openConnection") if n == 0 && !java_sets_url_timeouts(ctx, c.node) => {
                    Some("`openConnection()` without `setConnectTimeout`/`setReadTimeout`: an `HttpURLConnection` waits forever on a stalled server".into())
                }
                (CallKind::Call, "newHttpClient") if c.qual == "HttpClient" => {
                    Some("`HttpClient.newHttpClient()` has no connect timeout; build it with `connectTimeout(...)`".into())
                }
                (CallKind::Call, "get") if n == 0 && qual_l.contains("future") => {
                    Some("`Future.get()` without a timeout blocks forever if the task hangs".into())
                }
                (CallKind::Call, "acquire") if n == 0 && (qual_l.contains("semaphore") || qual_l.contains("permit")) => {
                    Some("`acquire()` without a timeout waits forever; use `tryAcquire(timeout, unit)`".into())
                }
                _ => None,
            }
        }
        Lang::C | Lang::Cpp => {
            if !matches!(c.qual, "" | "::") {
                return None;
            }
            // Blocking `connect()` was measured to be non-blocking/UDP/UNIX-socket code in
            // nearly every case a per-function check can see; only the resolver call, which
            // has no timeout at all, is reported.
            if c.name == "gethostbyname" {
                return Some(
                    "`gethostbyname()` blocks with no timeout (and is not thread-safe)".into(),
                );
            }
            None
        }
        Lang::Rust => {
            if c.kind != CallKind::Call {
                return None;
            }
            if c.name == "connect"
                && c.qual.ends_with("TcpStream")
                && !inside_call_named(ctx, c.node, "timeout")
            {
                return Some("`TcpStream::connect` has no timeout; use `connect_timeout` (std) or wrap in `tokio::time::timeout`".into());
            }
            if c.qual.starts_with("reqwest") && c.name == "get" {
                return Some("`reqwest::get` uses a client with no request timeout".into());
            }
            if c.name == "new"
                && (c.qual.ends_with("reqwest::Client")
                    || c.qual.ends_with("reqwest::blocking::Client"))
            {
                return Some("`reqwest::Client::new()` has no request timeout; use `Client::builder().timeout(...)`".into());
            }
            // `reqwest::ClientBuilder::new()` in a file that never sets a timeout on a
            // builder (`.timeout(..)`, `.connect_timeout(..)`): the client it builds has
            // none (heldout11 R10, heldout12 R2 and R8).
            if c.name == "new"
                && (c.qual.ends_with("reqwest::ClientBuilder")
                    || (c.qual == "ClientBuilder" && ctx.src.contains("reqwest")))
                && c.arg_count() == 0
                && !ctx.src.contains("timeout(")
            {
                return Some("`reqwest::ClientBuilder::new()` and no `.timeout(..)` on it in this file: the client has no request timeout".into());
            }
            None
        }
    }
}

/// Java: the method around `node` sets a timeout on the URL connection
/// (`setConnectTimeout`, `setReadTimeout`), or never calls it an HTTP connection (`jar:`
/// and `file:` URLs of archives and resources do not wait on a peer).
fn java_sets_url_timeouts(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let func = syntax::enclosing_function(node, ctx.lang);
    let text = func.map_or(ctx.src, |f| ctx.text(f));
    text.contains("setConnectTimeout")
        || text.contains("setReadTimeout")
        || !(text.contains("HttpURLConnection") || text.contains("HttpsURLConnection"))
}

/// Whether `node` is (transitively) an argument of a call named `name` (e.g. `timeout(d, connect(..))`).
fn inside_call_named(ctx: &Ctx<'_>, node: Node<'_>, name: &str) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return false;
        }
        if ctx.call(p).is_some_and(|c| c.name == name) {
            return true;
        }
        n = p.parent();
    }
    false
}

/// `http.Client{}` without `Timeout`. Not reported: an `http.Server{}` without read
/// timeouts (not a client wait), and a client given its own `Transport` (the transport
/// carries the dial, TLS-handshake and response-header timeouts; 20 of the 21 labelled
/// findings of that shape were FPs).
fn check_go_struct(ctx: &mut Ctx<'_>, node: Node<'_>) {
    let Some(ty) = node.child_by_field_name("type") else {
        return;
    };
    let ty = ctx.text(ty);
    let needed: &[&str] = match ty {
        "http.Client" => &["Timeout", "Transport"],
        _ => return,
    };
    let Some(body) = node.child_by_field_name("body") else {
        return;
    };
    let elements = syntax::named_children_no_comments(body);
    let keyed = elements.iter().filter(|e| e.kind() == "keyed_element");
    let mut keys: Vec<&str> = Vec::new();
    for e in keyed {
        let Some(k) = e.child_by_field_name("key").or_else(|| e.named_child(0)) else {
            continue;
        };
        let key = ctx.text(k);
        // A transport built right here as `http.Transport{..}` with no timeout or dialer
        // of its own bounds nothing (heldout9: an OAuth2 token client).
        let bare_transport = key == "Transport"
            && e.named_child(1).is_some_and(|v| {
                let t = ctx.text(v);
                t.contains("http.Transport{") && !t.contains("Timeout") && !t.contains("Dial")
            });
        if !bare_transport {
            keys.push(key);
        }
    }
    if !keys.iter().any(|k| needed.contains(k)) {
        report(
            ctx,
            NO_TIMEOUT,
            node,
            format!("`{ty}{{...}}` without `Timeout`: requests can hang forever"),
            None,
        );
    }
}

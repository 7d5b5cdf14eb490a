//! Python clients of key-value servers that wait on a socket with no timeout: redis-py's
//! `Redis(..)`/`StrictRedis(..)` without `socket_timeout=` (its default is none: a stalled
//! server blocks the caller forever), and `asyncio.open_connection` outside `wait_for`
//! (a memcached or Redis pool's connect has no timeout of its own).

use super::Ctx;
use crate::syntax::{self, Call};

/// The message for a client call of `c` that waits with no timeout, if it is one.
pub(super) fn key_value_client(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> Option<String> {
    let src = ctx.src;
    // redis-py's class: `redis.Redis(..)` in a file that imports `redis`, or `Redis(..)`
    // imported from it (not a project's own `Redis` wrapper, `from app.redis import Redis`).
    let imports = |prefix: &str| src.lines().any(|l| l.trim_start().starts_with(prefix));
    // A client built on a pool takes its sockets from the pool (redis-py ignores socket
    // options next to `connection_pool=`): the pool's construction is where the timeout goes.
    if matches!(
        c.name,
        "Redis" | "StrictRedis" | "ConnectionPool" | "BlockingConnectionPool"
    ) && ((c.qual == "redis" && imports("import redis"))
        || (c.qual.is_empty() && imports("from redis import")))
        && !c.has_keyword("socket_timeout", src)
        && !c.has_explicit_keyword("connection_pool", src)
        && !c
            .arg_nodes()
            .iter()
            .any(|a| matches!(a.kind(), "dictionary_splat" | "list_splat"))
    {
        return Some(format!(
            "`{}(..)` without `socket_timeout=`: redis-py waits forever on a stalled server",
            c.name
        ));
    }
    if let Some(msg) = redis_from_url_or_splat(c, src, &imports) {
        return Some(msg);
    }
    if let Some(msg) = raw_socket_connect(ctx, c) {
        return Some(msg);
    }
    // `open_connection(sock=accepted)` wraps a connected socket: nothing connects.
    if c.name == "open_connection" && c.qual == "asyncio" && !c.has_explicit_keyword("sock", src) {
        let func = syntax::enclosing_function(c.node, ctx.lang);
        let text = func.map_or(src, |f| ctx.text(f));
        if !(text.contains("wait_for") || text.contains("timeout(")) {
            return Some(
                "`asyncio.open_connection()` outside `asyncio.wait_for`: the connect has no timeout".into(),
            );
        }
    }
    None
}

/// redis-py clients built from a URL (`Redis.from_url(url)`, `redis.from_url(url)`,
/// `ConnectionPool.from_url(url)`, also `aioredis`/`redis.asyncio`) or from the caller's
/// options (`Redis(**options)`, `ConnectionPool(**host)`): neither sets `socket_timeout`
/// unless the caller happens to pass one. Reported only when the file never names
/// `socket_timeout` (no default added to the options, no URL with the parameter).
fn redis_from_url_or_splat(
    c: &Call<'_, '_>,
    src: &str,
    imports: &dyn Fn(&str) -> bool,
) -> Option<String> {
    // Cheap checks first: this runs for every Python call.
    if c.name != "from_url"
        && !(matches!(
            c.name,
            "Redis" | "StrictRedis" | "ConnectionPool" | "BlockingConnectionPool"
        ) && c.args.is_some_and(|a| ctx_text_has_splat(a)))
    {
        return None;
    }
    let redis_import = imports("import redis")
        || imports("from redis")
        || imports("import aioredis")
        || imports("from aioredis");
    if !redis_import || src.contains("socket_timeout") {
        return None;
    }
    let last = c.qual.rsplit('.').next().unwrap_or("");
    let is_client = |n: &str| {
        matches!(
            n,
            "Redis" | "StrictRedis" | "ConnectionPool" | "BlockingConnectionPool"
        )
    };
    let redis_module = |q: &str| matches!(q, "redis" | "aioredis" | "redis.asyncio");
    // `Redis.from_url(..)`, `redis.Redis.from_url(..)`, `redis.from_url(..)`
    if c.name == "from_url"
        && (is_client(last) || redis_module(c.qual))
        && !c.qual.starts_with("self")
    {
        return Some(format!(
            "`{}.from_url(..)` without `socket_timeout`: redis-py waits forever on a stalled server",
            c.qual
        ));
    }
    // `Redis(**options)`, `redis.ConnectionPool(**host)`: the options come from the caller
    let splat = c.arg_nodes().iter().any(|a| a.kind() == "dictionary_splat");
    if is_client(c.name) && splat && (c.qual.is_empty() || redis_module(c.qual)) {
        return Some(format!(
            "`{}(..)` built from the caller's options with no `socket_timeout` default: redis-py waits forever on a stalled server",
            c.name
        ));
    }
    None
}

/// `sock.connect((host, port))` on a `socket.socket(..)` created in the same function, in a
/// file that never calls `settimeout`/`setdefaulttimeout` and never makes it non-blocking:
/// the connect and every later `recv`/`readline` on it wait forever on a stalled peer.
/// Unix-domain sockets (a local daemon) are not reported.
fn raw_socket_connect(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> Option<String> {
    if c.name != "connect" || c.qual.is_empty() || c.arg_count() != 1 {
        return None;
    }
    let src = ctx.src;
    if src.contains("settimeout") || src.contains("setdefaulttimeout") || src.contains("AF_UNIX") {
        return None;
    }
    let func = ctx.text(syntax::enclosing_function(c.node, ctx.lang)?);
    let created = format!("{} = socket.socket(", c.qual);
    // A UDP socket's `connect` sends nothing: it only sets the default peer.
    if !func.contains(&created)
        || func.contains("setblocking(0)")
        || func.contains("setblocking(False)")
        || func.contains("SOCK_DGRAM")
    {
        return None;
    }
    // A loopback peer (a local daemon or a socket pair) is not a remote that stalls.
    let target = c.arg_nodes().first().map_or("", |a| ctx.text(*a));
    if ["127.0.0.1", "localhost", "::1"]
        .iter()
        .any(|l| target.contains(l))
    {
        return None;
    }
    // The socket is kept for reads (a connect-only probe or latency check is bounded by
    // the kernel's connect timeout): read or written here, returned, or stored.
    let q = c.qual;
    let kept = [".recv", ".makefile(", ".send", ".read"]
        .iter()
        .any(|m| func.contains(&format!("{q}{m}")))
        || returns_name(func, q)
        || stores_name(func, q)
        || func.contains(&format!(": {q},"))
        || func.contains(&format!(": {q}}}"));
    if !kept {
        return None;
    }
    Some(format!(
        "`{}.connect()` on a socket with no `settimeout`: the connect and every read on it wait forever on a stalled peer",
        c.qual
    ))
}

/// `return sock` (the socket itself, not `return sock.getsockname()[0]`).
fn returns_name(func: &str, name: &str) -> bool {
    func.lines().any(|l| {
        l.trim()
            .strip_prefix("return ")
            .and_then(|r| r.strip_prefix(name))
            .is_some_and(|rest| {
                !rest.starts_with(|ch: char| ch.is_alphanumeric() || ch == '_' || ch == '.')
            })
    })
}

/// `self.sock = sock` or `conns[peer] = sock`: the socket itself is stored in an attribute
/// or a container for later reads.
fn stores_name(func: &str, name: &str) -> bool {
    func.lines().any(|l| {
        l.split_once('=').is_some_and(|(lhs, rhs)| {
            let lhs = lhs.trim();
            rhs.trim() == name
                && !lhs.ends_with(['!', '<', '>', '=', '+', '-'])
                && (lhs.contains('.') || lhs.ends_with(']'))
        })
    })
}

/// The argument list has a `**options` splat.
fn ctx_text_has_splat(args: tree_sitter::Node<'_>) -> bool {
    syntax::named_children_no_comments(args)
        .iter()
        .any(|a| a.kind() == "dictionary_splat")
}

/// Whether the name `requests` in this file is bound to something other than the `requests`
/// package: a project module imported under that name (`from flexget.utils import requests`,
/// a wrapper that gives every call a default timeout), `import app.http as requests`, or a
/// module-level assignment (`requests = Session()`). Vendored copies of the package
/// (`from pip._vendor import requests`) are the package itself.
pub(super) fn requests_rebound(src: &str) -> bool {
    let vendored = |module: &str| {
        module == "requests"
            || module.starts_with("requests.")
            || module
                .rsplit('.')
                .next()
                .is_some_and(|last| matches!(last, "_vendor" | "vendor" | "vendored"))
    };
    let mut lines = src.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("requests =") || line.starts_with("requests=") {
            return true;
        }
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("from ") {
            let Some((module, names)) = rest.split_once(" import ") else {
                continue;
            };
            let module = module.trim();
            let mut names = names.to_string();
            // A parenthesised list may run over several lines.
            if names.trim_start().starts_with('(') && !names.contains(')') {
                for more in lines.by_ref() {
                    names.push_str(more);
                    if more.contains(')') {
                        break;
                    }
                }
            }
            let binds_requests = names
                .split(',')
                .map(|n| n.trim().trim_matches(|c| c == '(' || c == ')').trim())
                .map(|n| n.rsplit(" as ").next().unwrap_or(n).trim())
                .any(|n| n == "requests");
            if binds_requests && !vendored(module) {
                return true;
            }
        } else if let Some(rest) = t.strip_prefix("import ") {
            if let Some((module, alias)) = rest.split_once(" as ") {
                let alias = alias.split(['#', ',']).next().unwrap_or("").trim();
                if alias == "requests" && !vendored(module.trim()) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::requests_rebound;

    #[test]
    fn requests_bound_to_a_project_module_or_assigned() {
        assert!(requests_rebound("from flexget.utils import requests\n"));
        assert!(requests_rebound(
            "from . import (\n    log,\n    requests,\n)\n"
        ));
        assert!(requests_rebound("import app.http as requests\n"));
        assert!(requests_rebound(
            "import requests\nrequests = make_session()\n"
        ));
        assert!(requests_rebound("from app.net import client as requests\n"));
    }

    #[test]
    fn returning_the_socket_not_a_value_read_from_it() {
        assert!(super::returns_name("    return sock\n", "sock"));
        assert!(super::returns_name("    return sock, addr\n", "sock"));
        assert!(!super::returns_name(
            "    return sock.getsockname()[0]\n",
            "sock"
        ));
        assert!(!super::returns_name("    return socks\n", "sock"));
    }

    #[test]
    fn storing_the_socket_in_an_attribute_or_container() {
        assert!(super::stores_name("        self.sock = s\n", "s"));
        assert!(super::stores_name("    conns[peer] = s\n", "s"));
        assert!(!super::stores_name("    ok = s\n", "s"));
        assert!(!super::stores_name("    if self.sock == s:\n", "s"));
        assert!(!super::stores_name("    self.sock = s.dup()\n", "s"));
    }

    #[test]
    fn the_package_and_vendored_copies_are_not_rebound() {
        assert!(!requests_rebound("import requests\n"));
        assert!(!requests_rebound("from pip._vendor import requests\n"));
        assert!(!requests_rebound(
            "from botocore.vendored import requests\n"
        ));
        assert!(!requests_rebound("from requests import Session\n"));
        assert!(!requests_rebound("from app import requests_cache\n"));
        assert!(!requests_rebound("    requests = 3\n"));
    }
}

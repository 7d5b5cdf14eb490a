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
    if matches!(c.name, "Redis" | "StrictRedis")
        && ((c.qual == "redis" && imports("import redis"))
            || (c.qual.is_empty() && imports("from redis import")))
        && !c.has_keyword("socket_timeout", src)
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
    if c.name == "open_connection" && c.qual == "asyncio" {
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

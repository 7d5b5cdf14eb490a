//! Evidence that a `no-timeout` wait is bounded after all, or is not on a service path.
//!
//! Careful labels of Python and Go `no-timeout` findings (docs/audit-precision.md,
//! "Twenty-sixth round") found the commonest false positives were waits whose bound is set
//! somewhere the call does not show:
//! - Python: a process-wide `socket.setdefaulttimeout(..)` set once by the project (it bounds
//!   `urlopen`, `http.client` and plain sockets, not `requests`, which passes `timeout=None`
//!   itself); a project `requests.Session` subclass whose `request()` adds a timeout, used
//!   through a `*session` receiver; `requests` bound to a function parameter.
//! - Go: a `context.WithTimeout`/`WithDeadline` in the same function; a UDP dial, or a dial
//!   whose connection stays in the function (written and closed: the kernel bounds the
//!   connect, and nothing reads it later).
//! - Both: release, development and CI scripts in the project's top-level `scripts/`,
//!   `tools/`, `release/`, `hack/`, ... directories, which are not service paths.
//!
//! The file-local evidence is checked where the finding would be made ([`super::waiting`]).
//! The project-wide evidence needs every file of the project: while a file is parsed it
//! records cheap [`TimeoutFacts`]; the pass in `scan.rs` gathers them per project
//! ([`ProjectTimeouts`]), drops the findings a fact of the same project bounds, and those
//! [`is_script_path`] places in a script.

use super::Ctx;
use crate::lang::Lang;
use crate::syntax::{self, Call};
use tree_sitter::Node;

/// What project-wide fact would bound a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A process-wide default socket timeout (`socket.setdefaulttimeout(30)`).
    DefaultSocketTimeout,
    /// A project `*Session*` class whose `request()` applies a timeout.
    SessionWrapper,
}

/// The facts one file contributes to the project pass over `no-timeout` findings.
#[derive(Debug, Clone, Default)]
pub struct TimeoutFacts {
    /// Python: the file sets the process default socket timeout once, to a value (a
    /// set/restore pair around one call bounds only that call).
    pub sets_default_socket_timeout: bool,
    /// Python: the file defines a `*Session*` class whose `request()` applies a timeout.
    pub defines_timeout_session: bool,
    /// Python: the file runs as a program (a `#!` line, or an `if __name__ == "__main__":`
    /// block).
    pub runs_as_script: bool,
    /// Python: the file arms a process alarm, see [`alarm_set_in_file`] (computed once here,
    /// not for every wait of the file).
    pub arms_alarm: bool,
    /// `no-timeout` findings of this file (by line) that a project fact would bound.
    pub conditional: Vec<(usize, Bound)>,
}

/// The project-wide facts of one project: what any of its files contributed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProjectTimeouts {
    default_socket_timeout: bool,
    timeout_session: bool,
}

impl ProjectTimeouts {
    /// Add the facts of one file of the project.
    pub fn add(&mut self, file: &TimeoutFacts) {
        self.default_socket_timeout |= file.sets_default_socket_timeout;
        self.timeout_session |= file.defines_timeout_session;
    }

    /// Whether the project has the fact that bounds a finding noted with `bound`.
    pub fn bounds(&self, bound: Bound) -> bool {
        match bound {
            Bound::DefaultSocketTimeout => self.default_socket_timeout,
            Bound::SessionWrapper => self.timeout_session,
        }
    }
}

/// The per-file facts of a Python file (empty for other languages).
pub fn file_facts(src: &str, lang: Lang) -> TimeoutFacts {
    let mut facts = TimeoutFacts::default();
    if lang != Lang::Python {
        return facts;
    }
    if src.contains("setdefaulttimeout") {
        facts.sets_default_socket_timeout = default_timeout_sets(src) == 1;
    }
    if src.contains("Session") {
        facts.defines_timeout_session = defines_timeout_session(src);
    }
    facts.arms_alarm = src.contains("signal.alarm(") && alarm_set_in_file(src);
    facts.runs_as_script = src.starts_with("#!")
        || src.match_indices("__main__").any(|(i, _)| {
            let line_start = src[..i].rfind('\n').map_or(0, |p| p + 1);
            let t = src[line_start..i].trim_start();
            t.starts_with("if ") && t.contains("__name__") && t.contains("==")
        });
    facts
}

/// Whether a Python file at the root of the project in directory `project_dir` (its file
/// name `name`) is a maintainer's script rather than the product: it runs as a program, and
/// it is not the project's own single module (`pysolr.py` in `pysolr-3.11.0`, `bottle.py`
/// in `bottle`). Release, CI and migration helpers (`github_release.py`,
/// `make_local_jira_user.py`, `migrate.py`) sit next to the package they serve.
pub fn is_root_script(project_dir: &str, name: &str, runs_as_script: bool) -> bool {
    let Some(stem) = name.strip_suffix(".py") else {
        return false;
    };
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    runs_as_script && !stem.is_empty() && !norm(project_dir).starts_with(&norm(stem))
}

/// `setdefaulttimeout(<anything>)` calls in the text, `None` included (a restore).
fn default_timeout_sets(src: &str) -> usize {
    default_timeout_calls(src).count()
}

/// The argument text (from its first character to the end of `src`) of every
/// `setdefaulttimeout(..)` call in `src` that has an argument and is not commented out.
fn default_timeout_calls(src: &str) -> impl Iterator<Item = &str> {
    uncommented_call_args(src, "setdefaulttimeout(")
}

/// The argument text (from its first character to the end of `src`) of every call that
/// `opening` (`"signal.alarm("`) starts, where the call has an argument and its line is not
/// commented out before it.
fn uncommented_call_args<'s>(src: &'s str, opening: &'s str) -> impl Iterator<Item = &'s str> {
    src.match_indices(opening).filter_map(|(i, m)| {
        let line_start = src[..i].rfind('\n').map_or(0, |p| p + 1);
        let arg = src[i + m.len()..].trim_start();
        (!src[line_start..i].contains('#') && !arg.is_empty() && !arg.starts_with(')'))
            .then_some(arg)
    })
}

/// A `*Session*` class (the project's own session, or one deriving from a `*Session*` base)
/// whose body defines `request(` and applies a timeout (`kwargs.setdefault("timeout", ..)`,
/// `kwargs["timeout"] = ..`, `super().request(.., timeout=self._timeout)`); a `timeout=None`
/// parameter passed on is not one.
fn defines_timeout_session(src: &str) -> bool {
    let lines: Vec<&str> = src.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix("class ") else {
            continue;
        };
        // `class Session(object):` (the project's own session) or `class X(requests.Session):`.
        let header = rest.split(':').next().unwrap_or(rest);
        if !header.contains("Session") {
            continue;
        }
        let indent = line.len() - t.len();
        let body = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent);
        let (mut request, mut timeout) = (false, false);
        for l in body {
            request |= l.trim_start().starts_with("def request(");
            // It applies a timeout: `kwargs.setdefault("timeout", ..)`, `kwargs["timeout"] =
            // ..`, or its own `timeout=self._timeout` passed on; not a `timeout=None`
            // parameter.
            let compact: String = l.split_whitespace().collect();
            timeout |= compact.contains("setdefault('timeout'")
                || compact.contains("timeout=self.")
                || compact.contains("setdefault(\"timeout\"")
                || compact.contains("['timeout']=")
                || compact.contains("[\"timeout\"]=");
        }
        if request && timeout {
            return true;
        }
    }
    false
}

/// Python: the call is bounded by a process default socket timeout, if the project sets
/// one: `urlopen`, `http.client` connections, `socket.create_connection`, a plain socket's
/// `connect`.
pub(super) fn python_default_bounds(c: &Call<'_, '_>) -> bool {
    matches!(
        c.name,
        "urlopen" | "HTTPConnection" | "HTTPSConnection" | "create_connection" | "connect"
    )
}

/// Python: a `*session` receiver that is a web framework's per-user session, a dict
/// (`from flask import session`, Quart's, Django's `request.session`), not an HTTP client.
pub(super) fn framework_session(src: &str, qual: &str) -> bool {
    if qual == "request.session" || qual.ends_with(".request.session") {
        return true;
    }
    qual == "session"
        && src.lines().any(|l| {
            let t = l.trim_start();
            [
                "from flask import",
                "from quart import",
                "from sanic import",
            ]
            .iter()
            .any(|m| t.starts_with(m))
                && imported_names(t).any(|n| n == "session")
        })
}

/// The names a `from M import a, b as c` line binds (`a`, `c`), parentheses allowed.
fn imported_names(line: &str) -> impl Iterator<Item = &str> {
    let names = line.split_once(" import ").map_or("", |(_, n)| n);
    let names = names.split('#').next().unwrap_or("");
    names.split(',').filter_map(|item| {
        let item = item.trim().trim_matches(['(', ')', '\\']).trim();
        let bound = item.rsplit_once(" as ").map_or(item, |(_, alias)| alias);
        let bound = bound.trim();
        (!bound.is_empty()).then_some(bound)
    })
}

/// Python: the enclosing function sets the process default socket timeout before the call
/// (`socket.setdefaulttimeout(0.1)`, restored later): the stdlib clients it creates are
/// bounded.
pub(super) fn default_timeout_set_before(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let Some(func) = syntax::enclosing_function(node, ctx.lang) else {
        return false;
    };
    let before = ctx
        .src
        .get(func.start_byte()..node.start_byte())
        .unwrap_or("");
    default_timeout_calls(before).any(|arg| !arg.starts_with("None"))
}

/// Python: the file arms a process alarm (`signal.alarm(options.timeout)`, the watchdog of a
/// monitoring check or a one-shot script). SIGALRM ends the process (default action) or raises
/// in it (a handler), so no wait in the file outlives the alarm. `signal.alarm(0)` only
/// cancels one, and a commented-out call arms nothing.
fn alarm_set_in_file(src: &str) -> bool {
    uncommented_call_args(src, "signal.alarm(").any(|arg| {
        let arg = arg.split([')', ',']).next().unwrap_or("").trim();
        !arg.trim_start_matches('0').is_empty()
    })
}

/// Python: `requests` is a parameter of the enclosing function (a session passed in).
pub(super) fn requests_is_parameter(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut f = syntax::enclosing_function(node, ctx.lang);
    while let Some(func) = f {
        if let Some(params) = func.child_by_field_name("parameters") {
            let named = syntax::named_children_no_comments(params);
            if named.iter().any(|p| {
                let name = match p.kind() {
                    "identifier" => Some(*p),
                    _ => p.child_by_field_name("name").or_else(|| p.named_child(0)),
                };
                name.is_some_and(|n| ctx.text(n) == "requests")
            }) {
                return true;
            }
        }
        f = syntax::enclosing_function(func, ctx.lang);
    }
    false
}

/// Python: `node` is in the branch of a version check that runs only on an old runtime or
/// library (`if sys.version_info < (2, 6):`, the `else` of `if redis.VERSION >= (2, 8):`,
/// `if six.PY2:`): dead code on the versions the project supports today.
pub(super) fn python_old_version_branch(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut child = node;
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return false;
        }
        let branch = match p.kind() {
            "if_statement" | "elif_clause" => p
                .child_by_field_name("condition")
                .map(|c| (ctx.text(c), p.child_by_field_name("consequence"))),
            _ => None,
        };
        if let Some((cond, consequence)) = branch {
            let in_then = consequence.is_some_and(|b| b.id() == child.id());
            let in_else = p.kind() == "if_statement" && child.kind() == "else_clause";
            if let Some(old_in_then) = old_version_condition(cond) {
                if (in_then && old_in_then) || (in_else && !old_in_then) {
                    return true;
                }
            }
        }
        child = p;
        n = p.parent();
    }
    false
}

/// For a version check, whether its true branch is the old version's (`< (2, 6)`, `PY2`)
/// or the new one's (`>= (2, 8)`, `PY3`); `None` when it is not a plain version check.
fn old_version_condition(cond: &str) -> Option<bool> {
    let versioned = ["version_info", "VERSION", "__version__"]
        .iter()
        .any(|v| cond.contains(v));
    let negated = cond.trim_start().starts_with("not ");
    if cond.contains("PY2") && !cond.contains("PY3") && !cond.contains(" or ") {
        return Some(!negated);
    }
    if cond.contains("PY3") && !cond.contains("PY2") && !cond.contains(" or ") {
        return Some(negated);
    }
    if !versioned || negated || cond.contains(" and ") || cond.contains(" or ") {
        return None;
    }
    let less = cond.contains('<') && !cond.contains("<<");
    let more = cond.contains('>') && !cond.contains(">>");
    match (less, more) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// Go: the outermost function around `node` creates a context with a deadline
/// (`context.WithTimeout`, `context.WithDeadline`), which bounds the request made with it.
pub(super) fn go_deadline_in_function(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut outer = None;
    let mut f = syntax::enclosing_function(node, ctx.lang);
    while let Some(func) = f {
        outer = Some(func);
        f = syntax::enclosing_function(func, ctx.lang);
    }
    outer.is_some_and(|func| {
        let text = ctx.text(func);
        text.contains("context.WithTimeout(") || text.contains("context.WithDeadline(")
    })
}

/// Go: `net.Dial` whose connection does not outlive the function: a UDP dial (no connect
/// wait, no reply awaited), or a TCP connection kept in a local variable that is not
/// returned, stored in a field or handed to a client or protocol wrapper (`conn, err :=
/// net.Dial(..)`, write, close). The kernel bounds the connect; nothing reads it later.
pub(super) fn go_dial_stays_local(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    let network = c.arg_nodes().first().map_or("", |a| ctx.text(*a));
    if network.starts_with("\"udp") {
        return true;
    }
    // `conn, err := net.Dial(..)` (or `=`), with a plain identifier on the left.
    let Some(list) = c.node.parent().filter(|p| p.kind() == "expression_list") else {
        return false;
    };
    let Some(assign) = list
        .parent()
        .filter(|a| matches!(a.kind(), "short_var_declaration" | "assignment_statement"))
    else {
        return false;
    };
    let Some(conn) = assign
        .child_by_field_name("left")
        .and_then(|l| l.named_child(0))
        .filter(|v| v.kind() == "identifier")
    else {
        return false;
    };
    let conn = ctx.text(conn);
    if conn == "_" {
        return false;
    }
    let Some(func) = syntax::enclosing_function(c.node, ctx.lang) else {
        return false;
    };
    let after = ctx
        .src
        .get(assign.end_byte()..func.end_byte())
        .unwrap_or("");
    !after.lines().any(|l| {
        let t = l.trim();
        mentions(t, conn)
            && (t.starts_with("return ")
                || in_composite_literal(t, conn)
                || t.contains("Conn(")
                || t.contains("Client(")
                || t.contains("<-")
                || assigns_to_field(t, conn)
                || passes_as_argument(t, conn))
    })
}

/// `word` appears in `line` as a whole identifier.
fn mentions(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(|ch| ch.is_alphanumeric() || ch == '_')
            && !after.is_some_and(|ch| ch.is_alphanumeric() || ch == '_')
    })
}

/// `Wrapper{conn: conn}`: `conn` after a `{` that follows a type name.
fn in_composite_literal(line: &str, conn: &str) -> bool {
    line.match_indices('{').any(|(i, _)| {
        line[..i]
            .chars()
            .next_back()
            .is_some_and(|ch| ch.is_alphanumeric() || ch == '_')
            && mentions(&line[i..], conn)
    })
}

/// `x.field = conn`, `last = conn`: the connection is assigned on (to a field, a
/// package variable or another name: not followed further).
fn assigns_to_field(line: &str, conn: &str) -> bool {
    line.split_once(" = ").is_some_and(|(_, r)| {
        r.match_indices(conn).any(|(i, _)| {
            mentions(&r[i..], conn)
                && !r[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|ch| ch.is_alphanumeric() || ch == '_' || ch == '.')
                && !r[i + conn.len()..].starts_with('.')
        })
    })
}

/// `f(.., conn, ..)` other than the connection's own methods and `defer conn.Close()`.
fn passes_as_argument(line: &str, conn: &str) -> bool {
    line.match_indices(conn).any(|(i, _)| {
        let before = line[..i].trim_end().chars().next_back();
        let after = line[i + conn.len()..].trim_start().chars().next();
        matches!(before, Some('(' | ','))
            && matches!(after, Some(')' | ','))
            && mentions(&line[i..], conn)
    })
}

/// Top-level directories of a project that hold release, development and CI scripts, not
/// service code.
const SCRIPT_DIRS: &[&str] = &[
    "scripts",
    "script",
    "tools",
    "tool",
    "dev",
    "ci",
    "release",
    "releases",
    "hack",
    "contrib",
    "misc",
    "examples",
    "example",
    "acceptance",
    "bench",
    "benchmark",
    "benchmarks",
    "demo",
    "demos",
    "test",
    "tests",
    "testing",
    "testdata",
    "e2e",
    "packaging",
    "doc",
    "docs",
    "jenkins",
    "devstack",
    "ci_tools",
];

/// File names of install and release scripts (`setup.py`, `install.py`, `release.go`).
const SCRIPT_STEMS: &[&str] = &[
    "setup",
    "install",
    "auto-install",
    "release",
    "dev_tools",
    "conftest",
    "ez_setup",
];

/// File names of build and environment bootstrap scripts, at a project's root only
/// (`bootstrap.py` inside a package is often the product's own start-up code).
const ROOT_SCRIPT_STEMS: &[&str] = &["bootstrap"];

/// Whether a file at `rel` (relative to its project's root) is a script rather than service
/// code: under a top-level script directory, an install/release script, or a bootstrap
/// script at the project root.
pub fn is_script_path(rel: &str) -> bool {
    let rel = rel.trim_start_matches('/');
    if let Some((top, _)) = rel.split_once('/') {
        if SCRIPT_DIRS.contains(&top.to_ascii_lowercase().as_str()) {
            return true;
        }
    }
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let stem = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
    if !rel.contains('/') && ROOT_SCRIPT_STEMS.contains(&stem.as_str()) {
        return true;
    }
    SCRIPT_STEMS.iter().any(|s| {
        stem == *s
            || stem
                .strip_prefix(s)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

/// The call's own text names a loopback peer (`"127.0.0.1:6379"`, `http://localhost:8000`),
/// or is a redis-py client with no arguments at all (its default is `localhost:6379`): a local
/// daemon, not a remote that stalls behind a network.
pub(super) fn loopback_peer(text: &str) -> bool {
    let compact: String = text.split_whitespace().collect();
    ["localhost", "127.0.0.1", "[::1]"].iter().any(|l| {
        text.match_indices(l).any(|(i, _)| {
            // `host=url.hostname or "localhost"` only falls back to the loopback peer (the
            // quote, a string prefix `f`/`b`/`r` and a `scheme://` are skipped back to `or`).
            let before = text[..i].trim_end_matches(['"', '\'', '/', ':', 'f', 'b', 'r']);
            !before.trim_end().ends_with(" or")
        })
    }) || compact.ends_with("Redis()")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_set_once_counts_a_set_and_restore_pair_does_not() {
        assert_eq!(default_timeout_sets("socket.setdefaulttimeout(30)\n"), 1);
        assert_eq!(
            default_timeout_sets(
                "old = socket.getdefaulttimeout()\nsocket.setdefaulttimeout(5)\ntry:\n    f()\nfinally:\n    socket.setdefaulttimeout(old)\n"
            ),
            2
        );
        assert_eq!(
            default_timeout_sets("# socket.setdefaulttimeout(30)\nx = 1\n"),
            0
        );
        assert!(
            file_facts(
                "import socket\nsocket.setdefaulttimeout(60)\n",
                Lang::Python
            )
            .sets_default_socket_timeout
        );
        assert!(
            !file_facts("import socket\nsocket.setdefaulttimeout(60)\n", Lang::Go)
                .sets_default_socket_timeout
        );
    }

    #[test]
    fn session_subclasses_that_set_a_timeout() {
        let wrapper = "class TimeoutSession(requests.Session):\n    def request(self, method, url, **kw):\n        kw.setdefault('timeout', 30)\n        return super().request(method, url, **kw)\n";
        assert!(defines_timeout_session(wrapper));
        let no_timeout = "class Sess(requests.Session):\n    def request(self, method, url, **kw):\n        return super().request(method, url, **kw)\n\nTIMEOUT = 3\n";
        assert!(!defines_timeout_session(no_timeout));
        assert!(!defines_timeout_session(
            "class Other(Base):\n    def request(self, timeout=3):\n        pass\n"
        ));
        let shim = "class RequestsSessionShim:\n    def request(self, method, url, timeout=None):\n        if timeout:\n            req.timeout = timeout\n";
        assert!(!defines_timeout_session(shim));
        let assigned = "class Sess(requests.Session):\n    def request(self, *a, **kw):\n        kw[\"timeout\"] = kw.get(\"timeout\") or 10\n";
        assert!(defines_timeout_session(assigned));
        let passed = "class ClientSession(Session):\n    def request(self, method, url, **kwargs):\n        return super().request(\n            method, url, timeout=self._timeout, **kwargs)\n";
        assert!(defines_timeout_session(passed));
        let own = "class Session(object):\n    def __init__(self, timeout=None):\n        self.timeout = timeout\n\n    def request(self, url, method, **kwargs):\n        kwargs.setdefault('timeout', self.timeout)\n";
        assert!(defines_timeout_session(own));
        assert!(!defines_timeout_session(
            "class Session:\n    timeout = 30\n\n    def get(self, url):\n        pass\n"
        ));
    }

    #[test]
    fn script_directories_are_judged_at_the_top_only() {
        assert!(is_script_path("scripts/release_notes.py"));
        assert!(is_script_path("tools/proxy/main.go"));
        assert!(is_script_path("setup.py"));
        assert!(is_script_path("auto-install.py"));
        assert!(!is_script_path("src/aiida/tools/importer.py"));
        assert!(!is_script_path("service/client.py"));
        assert!(!is_script_path("setup_logging.py"));
        assert!(is_script_path("bootstrap.py"));
        assert!(!is_script_path("pkg/plugins/bootstrap.py"));
        assert!(is_script_path("python/ez_setup.py"));
        assert!(loopback_peer(
            "requests.post(\"http://127.0.0.1:8000\", data=d)"
        ));
        assert!(loopback_peer("redis.Redis()"));
        assert!(!loopback_peer("redis.Redis(host=h)"));
    }

    #[test]
    fn version_checks() {
        assert_eq!(
            old_version_condition("sys.version_info < (2, 6)"),
            Some(true)
        );
        assert_eq!(
            old_version_condition("redis.VERSION >= (2, 8)"),
            Some(false)
        );
        assert_eq!(old_version_condition("six.PY2"), Some(true));
        assert_eq!(old_version_condition("six.PY3"), Some(false));
        assert_eq!(old_version_condition("not PY2"), Some(false));
        assert_eq!(old_version_condition("retries < 3"), None);
        assert_eq!(old_version_condition("sys.version_info == (3, 8)"), None);
    }

    #[test]
    fn framework_sessions() {
        let flask = "from flask import Flask, request, session\n";
        assert!(framework_session(flask, "session"));
        assert!(!framework_session("import requests\n", "session"));
        assert!(framework_session("import requests\n", "request.session"));
        assert!(!framework_session(flask, "self.session"));
        let aliased = "from flask import Flask, session as web_session\n";
        assert!(!framework_session(aliased, "session"));
        assert!(framework_session(
            "from quart import (request, session)  # per-user\n",
            "session"
        ));
        assert!(framework_session(
            "from flask import g as session\n",
            "session"
        ));
    }

    #[test]
    fn root_scripts_run_as_programs_and_are_not_the_projects_module() {
        assert!(is_root_script(
            "jira-3.10.5",
            "make_local_jira_user.py",
            true
        ));
        assert!(!is_root_script(
            "jira-3.10.5",
            "make_local_jira_user.py",
            false
        ));
        assert!(!is_root_script("pysolr-3.11.0", "pysolr.py", true));
        assert!(!is_root_script("python-bottle", "bottle.go", true));
        assert!(!is_root_script("Foo-Bar", "foo_bar.py", true));
        let facts = file_facts("#!/usr/bin/env python3\nimport requests\n", Lang::Python);
        assert!(facts.runs_as_script);
        let facts = file_facts(
            "def main():\n    pass\n\nif __name__ == '__main__':\n    main()\n",
            Lang::Python,
        );
        assert!(facts.runs_as_script);
        assert!(!file_facts("import requests\n", Lang::Python).runs_as_script);
    }

    #[test]
    fn a_loopback_fallback_is_not_a_loopback_peer() {
        assert!(loopback_peer("Redis(host=\"localhost\", port=6379)"));
        assert!(loopback_peer(
            "requests.get(\"http://127.0.0.1:8500/v1/kv\")"
        ));
        assert!(!loopback_peer(
            "Redis(host=parsed_url.hostname or \"localhost\", port=6379)"
        ));
        assert!(!loopback_peer("connect((host or '127.0.0.1', port))"));
        assert!(loopback_peer("Redis()"));
    }

    #[test]
    fn an_armed_alarm_counts_a_cancel_or_comment_does_not() {
        assert!(alarm_set_in_file(
            "def main():\n    signal.alarm(options.timeout)\n    get_json()\n"
        ));
        assert!(alarm_set_in_file("signal.alarm( 30 )\n"));
        assert!(!alarm_set_in_file("signal.alarm(0)\n"));
        assert!(!alarm_set_in_file("# signal.alarm(30)\n"));
        assert!(!alarm_set_in_file("signal.alarm()\n"));
        assert!(!alarm_set_in_file(
            "signal.setitimer(signal.ITIMER_REAL, 0)\n"
        ));
    }

    #[test]
    fn commented_out_default_timeouts_do_not_count() {
        assert_eq!(default_timeout_sets("# socket.setdefaulttimeout(5)\n"), 0);
        assert_eq!(
            default_timeout_calls(
                "x = 1  # setdefaulttimeout(5)\nsocket.setdefaulttimeout(None)\n"
            )
            .collect::<Vec<_>>(),
            vec!["None)\n"]
        );
        assert_eq!(default_timeout_sets("socket.setdefaulttimeout()\n"), 0);
    }

    #[test]
    fn whole_identifiers_only() {
        assert!(mentions("return conn, nil", "conn"));
        assert!(!mentions("return connection", "conn"));
        assert!(passes_as_argument("wrap(conn)", "conn"));
        assert!(!passes_as_argument("conn.Write(b)", "conn"));
        assert!(assigns_to_field("s.c = conn", "conn"));
        assert!(!assigns_to_field("_, err = conn.Write(b)", "conn"));
        assert!(in_composite_literal("c := &client{conn: conn}", "conn"));
        assert!(!in_composite_literal(
            "if _, err := conn.Write(b); err != nil {",
            "conn"
        ));
    }
}

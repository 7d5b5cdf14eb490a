//! End-to-end tests of the project pass over `no-timeout` findings: a process default
//! socket timeout or a session class with a timeout set in another file of the same
//! project bounds the wait; a top-level script directory is not a service path; facts do
//! not cross project boundaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod project_pass;

use std::path::Path;

const FETCH: &str =
    "from urllib.request import urlopen\n\n\ndef fetch(url):\n    return urlopen(url).read()\n";
const SET_DEFAULT: &str = "import socket\n\nsocket.setdefaulttimeout(30)\n";
const SET_RESTORE: &str = "import socket\n\n\ndef probe(f):\n    old = socket.getdefaulttimeout()\n    socket.setdefaulttimeout(5)\n    try:\n        return f()\n    finally:\n        socket.setdefaulttimeout(old)\n";
const SESSION_USER: &str = "import requests\n\n\nclass Api:\n    def __init__(self, session):\n        self.session = session\n\n    def doc(self, url):\n        return self.session.get(url).json()\n";
const TIMEOUT_SESSION: &str = "import requests\n\n\nclass ClientSession(requests.Session):\n    def request(self, method, url, **kwargs):\n        kwargs.setdefault('timeout', 30)\n        return super().request(method, url, **kwargs)\n";
const OWN_SESSION: &str = "class Session(object):\n    def __init__(self, timeout=None):\n        self.timeout = timeout\n\n    def request(self, url, method, **kwargs):\n        if self.timeout is not None:\n            kwargs.setdefault('timeout', self.timeout)\n        return self._send(url, method, **kwargs)\n";
const PLAIN_SESSION: &str = "import requests\n\n\nclass ClientSession(requests.Session):\n    def request(self, method, url, **kwargs):\n        return super().request(method, url, **kwargs)\n";
const REQUESTS_GET: &str =
    "import requests\n\n\ndef latest(url):\n    return requests.get(url).json()\n";

/// Waits without a timeout (`no-timeout` and its Python `requests` part,
/// `request-without-timeout`), as (path, line), of `ftvm-audit --all ARG` run in `dir`.
fn no_timeout(dir: &Path, arg: &str) -> Vec<(String, u64)> {
    project_pass::findings_of_rules(dir, arg, &["no-timeout", "request-without-timeout"])
}

/// A project root with `files` (relative path, text) and a `pyproject.toml`.
fn project(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("pyproject.toml"), "").unwrap();
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn found(path: &str, line: u64) -> Vec<(String, u64)> {
    vec![(path.to_string(), line)]
}

#[test]
fn a_default_socket_timeout_set_once_elsewhere_bounds_urlopen() {
    let top = tempfile::tempdir().unwrap();
    project(
        top.path(),
        &[("svc/net.py", FETCH), ("svc/__init__.py", SET_DEFAULT)],
    );
    assert_eq!(no_timeout(top.path(), "."), []);
}

#[test]
fn without_a_default_or_with_a_set_and_restore_pair_urlopen_is_reported() {
    for other in ["x = 1\n", SET_RESTORE] {
        let top = tempfile::tempdir().unwrap();
        project(
            top.path(),
            &[("svc/net.py", FETCH), ("svc/probe.py", other)],
        );
        assert_eq!(no_timeout(top.path(), "."), found("svc/net.py", 5));
    }
}

#[test]
fn a_default_socket_timeout_does_not_bound_requests() {
    // requests passes `timeout=None` to the socket itself, overriding the process default.
    let top = tempfile::tempdir().unwrap();
    project(
        top.path(),
        &[
            ("svc/feed.py", REQUESTS_GET),
            ("svc/__init__.py", SET_DEFAULT),
        ],
    );
    assert_eq!(no_timeout(top.path(), "."), found("svc/feed.py", 5));
}

#[test]
fn a_session_class_that_sets_a_timeout_bounds_session_calls() {
    let top = tempfile::tempdir().unwrap();
    project(
        top.path(),
        &[
            ("svc/api.py", SESSION_USER),
            ("svc/session.py", TIMEOUT_SESSION),
        ],
    );
    assert_eq!(no_timeout(top.path(), "."), []);
    // The project's own session class (not a subclass) that applies its timeout.
    let top = tempfile::tempdir().unwrap();
    project(
        top.path(),
        &[
            ("svc/api.py", SESSION_USER),
            ("svc/session.py", OWN_SESSION),
        ],
    );
    assert_eq!(no_timeout(top.path(), "."), []);
    let top = tempfile::tempdir().unwrap();
    project(
        top.path(),
        &[
            ("svc/api.py", SESSION_USER),
            ("svc/session.py", PLAIN_SESSION),
        ],
    );
    assert_eq!(no_timeout(top.path(), "."), found("svc/api.py", 9));
}

#[test]
fn top_level_script_directories_are_not_service_paths() {
    let top = tempfile::tempdir().unwrap();
    project(
        top.path(),
        &[
            ("scripts/release_notes.py", REQUESTS_GET),
            ("tools/bump.py", REQUESTS_GET),
            ("svc/tools/feed.py", REQUESTS_GET),
        ],
    );
    // Only the top level counts: `svc/tools/` is part of the service package.
    assert_eq!(no_timeout(top.path(), "."), found("svc/tools/feed.py", 5));
}

#[test]
fn root_level_scripts_are_not_service_paths() {
    let script = format!("#!/usr/bin/env python3\n{REQUESTS_GET}");
    // The `__main__` block does not call the wait's function: a wait that only the block
    // reaches is an operator's command (tests/operator_pass.rs), whatever the file's place.
    let guarded = format!("{REQUESTS_GET}\n\nif __name__ == \"__main__\":\n    print(\"usage\")\n");
    // Two archives of a corpus audited from above, so each project's directory is known.
    let top = tempfile::tempdir().unwrap();
    project(
        &top.path().join("tracker-2.1"),
        &[
            ("make_test_user.py", script.as_str()),
            ("migrate.py", guarded.as_str()),
            ("tracker/cli.py", guarded.as_str()),
            ("client.py", REQUESTS_GET),
        ],
    );
    project(
        &top.path().join("pyfeed-1.0"),
        &[("pyfeed.py", guarded.as_str())],
    );
    let mut got = no_timeout(top.path(), ".");
    got.sort();
    // Kept: a root module that does not run as a program, a script inside the package, and
    // the single module a project is named after.
    assert_eq!(
        got,
        [
            ("pyfeed-1.0/pyfeed.py".to_string(), 5),
            ("tracker-2.1/client.py".to_string(), 5),
            ("tracker-2.1/tracker/cli.py".to_string(), 5),
        ]
    );
    // A script named on its own is always audited.
    let dir = top.path().join("tracker-2.1");
    assert_eq!(
        no_timeout(&dir, "migrate.py").len(),
        1,
        "a file named on the command line keeps its findings"
    );
}

#[test]
fn facts_stay_inside_their_project() {
    // Two archives of a corpus audited from above: one sets a default timeout, the other
    // does not; the other's urlopen is still reported.
    let top = tempfile::tempdir().unwrap();
    project(
        &top.path().join("alpha"),
        &[("alpha/__init__.py", SET_DEFAULT), ("alpha/net.py", FETCH)],
    );
    project(&top.path().join("beta"), &[("beta/net.py", FETCH)]);
    assert_eq!(no_timeout(top.path(), "."), found("beta/beta/net.py", 5));
}

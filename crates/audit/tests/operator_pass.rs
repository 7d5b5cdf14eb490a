//! End-to-end tests of the project pass over `request-without-timeout` findings that only an
//! operator's command reaches (src/reach.rs): the call graph spans the project's files and
//! its build files, and any other path to the wait keeps the finding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod project_pass;

use std::path::Path;

const LIB: &str = "import requests\n\n\ndef fetch(url):\n    return requests.get(url).json()\n";
const CLI: &str = "from agent.lib import fetch\n\n\ndef main():\n    print(fetch('http://x'))\n";
const PYPROJECT: &str =
    "[project]\nname = \"tool\"\n\n[project.scripts]\ntool = \"agent.cli:main\"\n";
const VIEW: &str = "from agent.lib import fetch\n\n\n@app.route('/status')\ndef status():\n    return fetch('http://y')\n";
const DAEMON: &str = "import time\nfrom agent.lib import fetch\n\n\ndef main():\n    while True:\n        fetch('http://z')\n        time.sleep(5)\n";

fn requests(dir: &Path, arg: &str) -> Vec<(String, u64)> {
    project_pass::findings_of(dir, arg, "request-without-timeout")
}

/// Write `files` under `dir`, with a `setup.py` at the root: the audit knows a project's
/// directory when the files' common directory is the project's root (or an archive below it).
fn write(dir: &Path, files: &[(&str, &str)]) {
    let setup = [("setup.py", "from setuptools import setup\n\nsetup()\n")];
    for (rel, text) in files.iter().chain(&setup) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A project in a fresh directory: `agent/lib.py` waits, `agent/cli.py` calls it, and
/// `pyproject.toml` makes `agent.cli:main` a console script; then `extra` files, written after
/// (so they may replace one of those).
fn console_tool(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let top = tempfile::tempdir().unwrap();
    let base = [
        ("pyproject.toml", PYPROJECT),
        ("agent/lib.py", LIB),
        ("agent/cli.py", CLI),
    ];
    let files: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
    write(top.path(), &files);
    top
}

#[test]
fn a_wait_only_a_console_script_reaches_is_dropped() {
    let top = console_tool(&[]);
    assert_eq!(requests(top.path(), "."), []);
    // A file named on the command line keeps its findings.
    assert_eq!(requests(top.path(), "agent/lib.py").len(), 1);
}

#[test]
fn a_web_route_or_a_daemon_loop_on_the_way_keeps_the_finding() {
    for (other, text) in [("agent/web.py", VIEW), ("agent/cli.py", DAEMON)] {
        let top = console_tool(&[(other, text)]);
        assert_eq!(
            requests(top.path(), "."),
            [("agent/lib.py".to_string(), 5)],
            "with {other}"
        );
    }
}

#[test]
fn without_the_console_script_or_below_the_project_root_the_finding_stays() {
    // No console script: `main` is a public function of a library.
    let top = console_tool(&[("pyproject.toml", "[project]\nname = \"tool\"\n")]);
    assert_eq!(requests(top.path(), ".").len(), 1);
    // A directory that is not a project's root: the callers may be elsewhere.
    let top = tempfile::tempdir().unwrap();
    write(
        top.path(),
        &[
            ("sub/agent/lib.py", LIB),
            ("sub/agent/cli.py", CLI),
            (
                "sub/setup.cfg",
                "[options.entry_points]\nconsole_scripts =\n    tool = agent.cli:main\n",
            ),
        ],
    );
    assert_eq!(
        requests(&top.path().join("sub").join("agent"), ".").len(),
        1
    );
    // From the project's root, the sub-package's own `setup.cfg` names the command.
    assert_eq!(requests(top.path(), "."), []);
}

#[test]
fn a_function_the_package_re_exports_is_public_api_and_keeps_the_finding() {
    let top = console_tool(&[("agent/__init__.py", "from .lib import fetch\n")]);
    assert_eq!(requests(top.path(), "."), [("agent/lib.py".to_string(), 5)]);
    // `import *` in the package's `__init__.py`: any public function may be its API.
    let top = console_tool(&[("agent/__init__.py", "from .other import *\n")]);
    assert_eq!(requests(top.path(), ".").len(), 1);
}

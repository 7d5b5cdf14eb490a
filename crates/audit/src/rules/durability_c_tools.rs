//! C and C++ shapes the data-flow write-in-place check must not take for state files
//! (labels of both pairs: command-line tools' outputs, pid files, lock files and
//! benchmarks outnumbered the state files it found).
//!
//! - Keys that are no file identity of state: `optarg`/`argv` (a path named on the command
//!   line), a call result (`mutt_buffer_pool_get()`: two pool buffers are two files),
//!   command-line history, random seeds (mixed with fresh entropy at start), lock files
//!   (`lockfile`, `lock_cachemgr`: a name that starts with `lock`).
//! - Writers that are no state writers: pid files, files in test or tool directories
//!   (`t/`, `scripts/`, `console/`, `clients/`, `examples/`, benchmarks: any directory
//!   whose name starts with `bench`, `benchmarker/` too), writers named for a pid file
//!   (`UpdatePidFile`, a `PidFile` constructor) or in a source file named for one (kea's
//!   `pid_file.cc`: `PIDFile::write`), and programs
//!   (the file defines `main`) whose shared key is not a fixed path (a macro such as
//!   `ROOT_ANCHOR_FILE` or a literal file name): the path comes from the command line.

use super::Ctx;
use crate::lang::Lang;
use std::collections::BTreeSet;

/// Whether `key` (lower case) is no file identity (C only): a path named on the command
/// line or a call result.
pub(super) fn not_state_key(lang: Lang, key: &str) -> bool {
    lang == Lang::C
        && (key == "optarg" || key == "argv" || key.starts_with("argv[") || key.ends_with(')'))
}

/// Whether one of the path's names says history, random seed or lock file.
fn names_no_state(key: &str) -> bool {
    let l = key.to_ascii_lowercase();
    l.starts_with("lock")
        || ["hist", "seed", "lockfile", "lock_file"]
            .iter()
            .any(|w| l.contains(w))
}

/// Directories whose programs are tests, tools or examples, not the daemon (and any
/// directory whose name starts with `bench`).
const TOOL_DIRS: &[&str] = &[
    "t",
    "scripts",
    "console",
    "clients",
    "examples",
    "bench",
    "benchmark",
    "benchmarks",
    "benchmarking",
];

/// Whether a fixed path: a macro constant (`PMAPFILE`) or a literal file name.
fn fixed_path(key: &str) -> bool {
    key.contains('.')
        || key.contains('/')
        || (key.chars().any(|c| c.is_ascii_uppercase())
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
}

/// Whether the file defines a program's `main`.
fn defines_main(src: &str) -> bool {
    src.lines().any(|l| {
        let l = l.trim_start();
        let l = l.strip_prefix("int").map_or(l, str::trim_start);
        l.starts_with("main(") || l.starts_with("main (")
    })
}

/// Whether the write by `writer` through a path with the names `keys` is a tool's or a
/// test's output, a pid file, history, a seed or a lock, not a state file (C and C++, see
/// the module doc).
pub(super) fn tool_output(ctx: &Ctx<'_>, writer: &str, keys: &BTreeSet<String>) -> bool {
    if !matches!(ctx.lang, Lang::C | Lang::Cpp) {
        return false;
    }
    let dirs: Vec<&str> = ctx.path.split('/').collect();
    let in_tool_dir = dirs
        .iter()
        .take(dirs.len().saturating_sub(1))
        .any(|d| TOOL_DIRS.contains(d) || d.starts_with("bench"));
    let file_name = dirs.last().map(|f| f.to_ascii_lowercase().replace('_', ""));
    in_tool_dir
        || writer.to_ascii_lowercase().contains("pidfile")
        || file_name.is_some_and(|f| f.contains("pidfile"))
        || keys.iter().any(|k| names_no_state(k))
        || (!keys.iter().any(|k| fixed_path(k)) && defines_main(ctx.src))
}

/// The text with its C block comments (`/* .. */`) removed: a flag inside a comment
/// (`/*access == ACC_OVERWRITE ? O_TRUNC : */ O_EXCL`) is no flag of the call.
pub(super) fn without_comments(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("/*") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("/*") {
        out.push_str(&rest[..at]);
        rest = rest[at + 2..]
            .find("*/")
            .map_or("", |end| &rest[at + 2 + end + 2..]);
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fixed_paths() {
        assert!(not_state_key(Lang::C, "optarg"));
        assert!(not_state_key(Lang::C, "mutt_buffer_pool_get()"));
        assert!(!not_state_key(Lang::C, "pmapfile"));
        assert!(names_no_state("history_file"));
        assert!(names_no_state("seed_path"));
        assert!(!names_no_state("PMAPFILE"));
        assert!(names_no_state("lock_cachemgr"));
        assert!(!names_no_state("clock_drift"));
        assert!(!not_state_key(Lang::Cpp, "optarg"));
        assert!(fixed_path("ROOT_ANCHOR_FILE"));
        assert!(fixed_path("Float32.bin"));
        assert!(!fixed_path("patch"));
        assert!(defines_main("int\nmain(int argc, char **argv)\n{"));
        assert!(defines_main("int main (int argc, char *argv[])"));
        assert!(!defines_main("int domain(int x)"));
        assert_eq!(
            without_comments("O_CREAT | /*a ? O_TRUNC : */ O_EXCL"),
            "O_CREAT |  O_EXCL"
        );
        assert_eq!(without_comments("O_TRUNC /* open"), "O_TRUNC ");
    }
}

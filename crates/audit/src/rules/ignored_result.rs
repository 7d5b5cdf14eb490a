//! The ignored-result rule: results that are the only report of failure, dropped.

use super::Ctx;
use crate::catalog::{DROPPED_FILE_ERROR, IGNORED_RESULT};
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind};
use tree_sitter::Node;

/// C functions whose return value is the only report of failure.
pub(super) const C_MUST_CHECK: &[&str] = &[
    "read",
    "write",
    "pread",
    "pwrite",
    "readv",
    "writev",
    "send",
    "sendto",
    "sendmsg",
    "recv",
    "recvfrom",
    "recvmsg",
    "fsync",
    "fdatasync",
    "ftruncate",
    "truncate",
    "rename",
    "renameat",
    "chdir",
    "chroot",
    "setuid",
    "setgid",
    "seteuid",
    "setegid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "initgroups",
    "fwrite",
    "fread",
    "pthread_create",
    "posix_memalign",
    "pipe",
    "pipe2",
    "socketpair",
    "bind",
    "listen",
    "connect",
    "setsockopt",
    "fcntl",
    "setrlimit",
    "chown",
    "fchown",
    "chmod",
    "fchmod",
    "mkdir",
    "link",
    "symlink",
    "lseek",
    "mprotect",
    "mlock",
    "posix_fallocate",
    "fork",
];
/// Narrow the calls whose failure is routinely ignored on purpose: `setsockopt` only for
/// timeouts (a failed SO_RCVTIMEO means the socket silently blocks forever), `fcntl` only
/// for O_NONBLOCK, and the socket calls only with their POSIX arity (Qt's 4-argument
/// `connect` is not the socket call).
fn c_call_matters(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    let args = c.arg_nodes();
    let mentions = |names: &[&str]| {
        args.iter()
            .any(|a| names.iter().any(|n| ctx.text(*a).contains(n)))
    };
    match c.name {
        "setsockopt" => mentions(&["SO_RCVTIMEO", "SO_SNDTIMEO"]),
        "fcntl" => mentions(&["O_NONBLOCK"]),
        "connect" | "bind" | "accept" => args.len() == 3,
        "listen" => args.len() == 2,
        "fsync" | "fdatasync" => args.len() == 1,
        _ => true,
    }
}

/// `fwrite(buf, 1, n, stdout)`: console output is best effort.
fn writes_to_console(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    c.arg_nodes().iter().any(|a| {
        matches!(
            ctx.text(*a),
            "stdout" | "stderr" | "STDOUT_FILENO" | "STDERR_FILENO" | "1" | "2"
        )
    }) && matches!(c.name, "fwrite" | "write")
}

/// Go functions (package.function) whose only result is an error.
const GO_ERR_ONLY: &[(&str, &str)] = &[
    ("os", "Rename"),
    ("os", "Mkdir"),
    ("os", "MkdirAll"),
    ("os", "Chmod"),
    ("os", "Chown"),
    ("os", "Chdir"),
    ("os", "Setenv"),
    ("os", "Symlink"),
    ("os", "Link"),
    ("os", "Truncate"),
    ("os", "WriteFile"),
    ("ioutil", "WriteFile"),
    ("json", "Unmarshal"),
    ("xml", "Unmarshal"),
    ("yaml", "Unmarshal"),
    ("proto", "Unmarshal"),
    ("binary", "Write"),
    ("binary", "Read"),
    ("io", "ReadFull"),
    ("io", "Copy"),
    ("io", "WriteString"),
    ("syscall", "Setuid"),
    ("syscall", "Setgid"),
];
/// Go packages doing I/O or parsing input whose functions return an error last.
const GO_ERR_PACKAGES: &[&str] = &[
    "os", "io", "ioutil", "strconv", "net", "exec", "filepath", "syscall", "unix",
];
/// Go methods doing I/O that return an error last.
const GO_ERR_METHODS: &[&str] = &[
    "Close",
    "Sync",
    "Flush",
    "Encode",
    "Decode",
    "Exec",
    "ExecContext",
    "Commit",
    "Rollback",
    "Seek",
    "Truncate",
    "Chmod",
    "Rename",
    "Remove",
    "SetDeadline",
    "SetReadDeadline",
    "SetWriteDeadline",
    "Shutdown",
    "Serve",
    "Write",
    "WriteString",
    "Read",
    "ReadFrom",
    "WriteTo",
    "Accept",
    "Dial",
    "Listen",
    "Start",
    "Wait",
    "Run",
];

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>) {
    match (ctx.lang, node.kind()) {
        (Lang::C | Lang::Cpp, "expression_statement") => {
            let Some(c) = node.named_child(0).and_then(|e| ctx.call(e)) else {
                return;
            };
            // `lseek(fd, 0, SEEK_SET)` on a valid fd cannot fail on a regular file.
            let rewind = c.name == "lseek"
                && c.arg_nodes()
                    .get(1)
                    .is_some_and(|a| matches!(ctx.text(*a), "0" | "0L" | "0UL" | "0LL"))
                && c.arg_nodes()
                    .get(2)
                    .is_some_and(|a| ctx.text(*a) == "SEEK_SET");
            // `fsync(1)`: the standard streams hold nothing to make durable.
            let std_sync = matches!(c.name, "fsync" | "fdatasync")
                && c.arg_nodes()
                    .first()
                    .is_some_and(|a| super::c_files::is_std_stream_fd(ctx.text(*a)));
            if matches!(c.qual, "" | "::")
                && !rewind
                && !std_sync
                && C_MUST_CHECK.contains(&c.name)
                && !writes_to_console(ctx, &c)
                && c_call_matters(ctx, &c)
            {
                let name = c.name;
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    format!(
                        "return value of `{name}()` is ignored; it is the only report of failure"
                    ),
                );
            }
        }
        (Lang::Python, "expression_statement") => {
            let Some(c) = node.named_child(0).and_then(|e| ctx.call(e)) else {
                return;
            };
            let console = c.arg_nodes().first().is_some_and(|a| {
                matches!(ctx.text(*a), "STDOUT_FILENO" | "STDERR_FILENO" | "1" | "2")
            });
            let pipe = c.name == "write"
                && c.arg_nodes()
                    .first()
                    .is_some_and(|a| is_python_pipe_fd(ctx, ctx.text(*a)));
            let hit = !console
                && !pipe
                && (c.qual == "os"
                    && matches!(
                        c.name,
                        "system" | "write" | "spawnl" | "spawnv" | "spawnlp" | "spawnvp"
                    ))
                || (c.qual == "subprocess" && c.name == "call");
            if hit {
                let callee = format!("{}.{}", c.qual, c.name);
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    format!("return value of `{callee}()` (exit status / byte count) is ignored"),
                );
            }
        }
        (Lang::Java, "expression_statement") => {
            let Some(c) = node.named_child(0).and_then(|e| ctx.call(e)) else {
                return;
            };
            if c.kind != CallKind::Call || c.qual.is_empty() {
                return;
            }
            let n = c.arg_count();
            if c.name == "commit" && n == 0 && is_shared_preferences_editor(ctx, c.qual) {
                ctx.report(
                    DROPPED_FILE_ERROR,
                    node,
                    "`SharedPreferences.Editor.commit()` returns false when the preferences file could not be written; the result is dropped and the caller goes on as if the state were stored",
                );
                return;
            }
            // Without types, only receivers that look like files/channels: `delete()` and
            // `read()` are void or in-memory on many other types (FileItem, buffers), and
            // NIO2 reads with a completion handler return nothing.
            let recv = c.qual.to_ascii_lowercase();
            let file_like = ["file", "dir", "directory", "path", "tmp", "temp"]
                .iter()
                .any(|w| recv.ends_with(w))
                || recv == "f"
                || recv.contains("getfile()")
                || recv.contains("tofile()")
                || recv.contains("new file(");
            let channel_like = ["channel", "stream", "fc", "raf", "reader"]
                .iter()
                .any(|w| recv.ends_with(w))
                || recv == "in"
                || recv == "is";
            // Not `delete`, `mkdir(s)`, `createNewFile`, `setLastModified` or the permission
            // setters: 16 labelled findings, none a hazard (cleanup of temp or obsolete
            // files, a directory whose absence the next open reports, `false` meaning
            // "already there"). A failed `renameTo` leaves the old name in place while the
            // code goes on with the new one.
            let hit = match c.name {
                "renameTo" => n == 1 && file_like,
                "tryLock" | "tryAcquire" => true,
                "await" | "awaitTermination" => {
                    n == 2
                        && !c
                            .arg_nodes()
                            .iter()
                            .any(|a| ctx.text(*a).contains("MAX_VALUE"))
                        && !timed_wait_in_checking_loop(ctx, node)
                        && (c.name != "awaitTermination" || !in_shutdown_method(ctx, node))
                }
                "read" | "skip" => {
                    (1..=2).contains(&n) && channel_like && !short_read_checked_next(ctx, node)
                }
                _ => false,
            };
            if hit {
                let name = c.name;
                ctx.report(IGNORED_RESULT, node, format!("boolean/count result of `{name}()` is ignored; it is the only report of failure"));
            }
        }
        (Lang::Rust, "let_declaration") => {
            let (Some(pat), Some(value)) = (
                node.child_by_field_name("pattern"),
                node.child_by_field_name("value"),
            ) else {
                return;
            };
            if pat.kind() == "_" && report_rust_sync_dropped(ctx, node, value, "`let _ =`") {
                return;
            }
            if super::dropped_persist::rust_persist_dropped(ctx, node, pat, value) {
                let what = ctx.text(pat).to_string();
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    format!("`let {what} =` discards the Result of a persistence step: a failed save is silently ignored"),
                );
                return;
            }
            if pat.kind() == "_" && is_rust_fallible_expr(ctx, value) {
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    "`let _ =` discards a Result/must-use value without handling the error",
                );
            }
        }
        (Lang::Rust, "assignment_expression") => {
            let (Some(l), Some(r)) = (
                node.child_by_field_name("left"),
                node.child_by_field_name("right"),
            ) else {
                return;
            };
            if ctx.text(l) == "_" && report_rust_sync_dropped(ctx, node, r, "`_ =`") {
                return;
            }
            if ctx.text(l) == "_" && is_rust_fallible_expr(ctx, r) {
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    "`_ =` discards a Result/must-use value without handling the error",
                );
            }
        }
        (Lang::Rust, "expression_statement") => {
            let Some(expr) = node.named_child(0) else {
                return;
            };
            // `f.sync_all();` (the Result unused; rustc warns), `f.sync_data().await;`
            if report_rust_sync_dropped(ctx, node, expr, "the unused statement") {
                return;
            }
            let Some(c) = ctx.call(expr) else {
                return;
            };
            // `f.sync_all().ok();`, `.unwrap_or(())`, `.unwrap_or_default()`, `drop(f.sync_all())`
            let discarded = match (c.name, c.receiver) {
                ("ok" | "unwrap_or_default", Some(r)) if c.arg_count() == 0 => Some(r),
                ("unwrap_or" | "unwrap_or_else", Some(r)) if c.arg_count() == 1 => Some(r),
                ("drop", None) if c.arg_count() == 1 => c.arg_nodes().first().copied(),
                _ => None,
            };
            if let Some(d) = discarded {
                let how = format!("`.{}()`", c.name);
                if report_rust_sync_dropped(ctx, node, d, &how) {
                    return;
                }
            }
            if c.name == "ok"
                && c.arg_count() == 0
                && c.receiver.is_some_and(|r| is_rust_fallible_expr(ctx, r))
            {
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    "`.ok();` converts the Result to an Option and drops it: the error is ignored",
                );
            }
        }
        (Lang::Go, "assignment_statement" | "short_var_declaration") => check_go_blank(ctx, node),
        (Lang::Go, "expression_statement") => {
            let Some(c) = node.named_child(0).and_then(|e| ctx.call(e)) else {
                return;
            };
            let hit = GO_ERR_ONLY.iter().any(|(q, n)| c.is(q, n))
                || (c.name == "Sync" && c.arg_count() == 0 && !c.qual.is_empty())
                || super::dropped_persist::go_commit_dropped(ctx, &c);
            if hit && !go_error_cannot_happen(ctx, &c) {
                let callee = format!("{}.{}", c.qual, c.name);
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    format!("error returned by `{callee}` is not checked"),
                );
            }
        }
        _ => {}
    }
}

/// Python: `fd` (`self.wfd`, `write_fd`) is one end of an `os.pipe()` in this file, or is
/// named as a pipe: a short `os.write` to a pipe wakes up or notifies another process, and
/// a failure (the reader is gone) has no state to lose.
fn is_python_pipe_fd(ctx: &Ctx<'_>, fd: &str) -> bool {
    let name = fd.trim().trim_start_matches("self.");
    if name.is_empty() {
        return false;
    }
    if name.to_ascii_lowercase().contains("pipe") {
        return true;
    }
    // The line scan below runs once per `write` call: skip it in the (many) files that make
    // no pipe (a 2 MB generated binding with thousands of `outfile.write(..)` spent 10 s here).
    ctx.facts.makes_pipe
        && ctx
            .src
            .lines()
            .filter_map(|l| l.split_once("= os.pipe()").map(|(lhs, _)| lhs))
            .any(|lhs| {
                lhs.split(',')
                    .any(|v| v.trim().trim_start_matches("self.") == name)
            })
}

/// Java: a timed wait inside a loop (of the same method) whose condition is re-checked
/// after every wake-up: `while (!done) { cond.await(1, SECONDS); }`. The ignored timeout
/// result only means "check again". `while (true)` / `for (;;)` loops do not count.
/// `ch.read(buf, pos); if (buf.hasRemaining()) throw ..`: the statement right after the
/// read tests the buffer, so a short read is reported (leveldb-java `FileChannelTable`).
fn short_read_checked_next(ctx: &Ctx<'_>, stmt: Node<'_>) -> bool {
    let mut next = stmt.next_named_sibling();
    while let Some(n) = next.filter(|n| syntax::is_comment(*n)) {
        next = n.next_named_sibling();
    }
    next.is_some_and(|n| {
        n.kind() == "if_statement"
            && n.child_by_field_name("condition")
                .is_some_and(|c| ctx.text(c).contains("hasRemaining()"))
    })
}

fn timed_wait_in_checking_loop(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return false;
        }
        if syntax::is_loop(p, ctx.lang) {
            let cond = p
                .child_by_field_name("condition")
                .map(|c| ctx.text(c).trim_matches(|ch| ch == '(' || ch == ')').trim());
            let checks = match p.kind() {
                "while_statement" | "do_statement" | "for_statement" => {
                    cond.is_some_and(|c| !c.is_empty() && c != "true")
                }
                _ => false,
            };
            if checks {
                return true;
            }
        }
        n = p.parent();
    }
    false
}

/// Java: `awaitTermination` in a close/shutdown/stop method: a bounded, best-effort wait
/// for workers while the component goes away.
/// Rust: `value` is `recv.sync_all()` / `recv.sync_data()` (optionally `.await`ed), whose
/// `Result` is discarded by `how`: report it as a dropped file error (the `fsync` result is
/// the only evidence that written data reached the disk; Rebello et al., ATC'20). Inside a
/// `Drop` implementation there is no caller to return the error to, so it is left out.
/// Returns whether `value` was such a call (reported or deliberately not).
fn report_rust_sync_dropped(ctx: &mut Ctx<'_>, node: Node<'_>, value: Node<'_>, how: &str) -> bool {
    let v = super::dropped_persist::unawait(value);
    let Some(c) = ctx.call(v) else {
        return false;
    };
    if c.kind == CallKind::Macro {
        return false;
    }
    let sync =
        matches!(c.name, "sync_all" | "sync_data") && c.arg_count() == 0 && c.receiver.is_some();
    // A write, flush or truncation of a file the function opened (typed evidence: the
    // receiver is bound by `File::create`/`OpenOptions` or declared `File`/`BufWriter<File>`),
    // or `fs::write`: its error is the only report that the data did not reach the file.
    let file_write = !sync
        && ((matches!(c.name, "write_all" | "flush" | "set_len" | "write")
            && c.receiver
                .is_some_and(|r| is_rust_file_binding(ctx, node, ctx.text(r))))
            || (c.name == "write" && matches!(c.qual, "fs" | "std::fs" | "tokio::fs")));
    if !sync && !file_write {
        return false;
    }
    let name = c.name;
    if syntax::enclosing_function_name(node, ctx.src, ctx.lang) != Some("drop") {
        let msg = if sync {
            format!("the Result of `{name}()` is discarded by {how}: a failed sync goes unnoticed and the data may not be on disk")
        } else {
            format!("the Result of the file `{name}()` is discarded by {how}: a failed or short write goes unnoticed and the file is left torn")
        };
        ctx.report(DROPPED_FILE_ERROR, node, msg);
    }
    true
}

/// Rust: `var` (a plain local name, optionally `&mut`/`self.`-free) is a file in the
/// enclosing function: bound by `let` to `File::create(..)`, `File::options()`,
/// `OpenOptions::new()..open(..)` or a `BufWriter`/`LineWriter` around one, or a parameter
/// declared `File`/`&mut File`/`BufWriter<File>`/`tokio::fs::File`.
fn is_rust_file_binding(ctx: &Ctx<'_>, node: Node<'_>, var: &str) -> bool {
    let var = var
        .trim_start_matches("&mut ")
        .trim_start_matches('&')
        .trim();
    if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return false;
    }
    let Some(func) = syntax::enclosing_function(node, ctx.lang) else {
        return false;
    };
    let file_expr = |t: &str| {
        t.contains("File::create")
            || t.contains("File::options")
            || t.contains("OpenOptions")
            || t.contains("File::create_new")
    };
    let file_type = |t: &str| {
        let t = t.trim_start_matches('&').trim_start_matches("mut ").trim();
        matches!(
            t,
            "File"
                | "fs::File"
                | "std::fs::File"
                | "tokio::fs::File"
                | "BufWriter<File>"
                | "BufWriter<fs::File>"
                | "BufWriter<std::fs::File>"
        )
    };
    let mut found = false;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if found {
            return false;
        }
        if n.start_byte() > node.start_byte() {
            return true;
        }
        // A `let` (declared type or value) or a parameter (declared type; it has no value).
        if matches!(n.kind(), "let_declaration" | "parameter") {
            let pat = n.child_by_field_name("pattern").map(|p| ctx.text(p));
            if pat.map(|p| p.trim_start_matches("mut ").trim()) == Some(var) {
                let ty = n.child_by_field_name("type").map(|t| ctx.text(t));
                let value = n.child_by_field_name("value").map(|v| ctx.text(v));
                found = ty.is_some_and(file_type) || value.is_some_and(file_expr);
            }
        }
        true
    });
    found
}

fn in_shutdown_method(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    syntax::enclosing_function_name(node, ctx.src, ctx.lang).is_some_and(|f| {
        syntax::ident_words(f)
            .iter()
            .any(|w| matches!(w.as_str(), "close" | "shutdown" | "stop" | "terminate"))
    })
}

/// Rust calls whose ignored `Result` loses data or durability (`let _ = f.sync_all()`);
/// `let _ =` on other calls is an explicit, usually deliberate discard and is not reported.
const RUST_MUST_USE_IO: &[&str] = &[
    "sync_all",
    "sync_data",
    "flush",
    "rename",
    "persist",
    "commit",
    "set_len",
    "fsync",
];

fn is_rust_fallible_expr(ctx: &Ctx<'_>, value: Node<'_>) -> bool {
    let v = if value.kind() == "await_expression" {
        value.named_child(0).unwrap_or(value)
    } else {
        value
    };
    match ctx.call(v) {
        Some(c) if c.kind == CallKind::Macro => false,
        Some(c) => {
            RUST_MUST_USE_IO.contains(&c.name)
                && !(c.qual.contains("stdout") || c.qual.contains("stderr"))
        }
        None => false,
    }
}

fn check_go_blank(ctx: &mut Ctx<'_>, node: Node<'_>) {
    let (Some(left), Some(right)) = (
        node.child_by_field_name("left"),
        node.child_by_field_name("right"),
    ) else {
        return;
    };
    let lefts = syntax::named_children_no_comments(left);
    let rights = syntax::named_children_no_comments(right);
    let (Some(last), [value]) = (lefts.last(), rights.as_slice()) else {
        return;
    };
    if ctx.text(*last) != "_" {
        return;
    }
    if lefts.len() == 1
        && value.kind() == "identifier"
        && ctx.text(*value).to_ascii_lowercase().contains("err")
    {
        ctx.report(
            IGNORED_RESULT,
            node,
            "error value is explicitly discarded with `_ =`",
        );
        return;
    }
    let Some(c) = ctx.call(*value) else { return };
    // Builtins return no error: `_ = len(x)`.
    if c.qual.is_empty()
        && matches!(
            c.name,
            "len" | "cap" | "append" | "make" | "new" | "copy" | "min" | "max"
        )
    {
        return;
    }
    // Without types, only calls known to do I/O or parse input: a package function of an
    // I/O package, or an I/O method on anything but an in-memory buffer.
    let in_memory = {
        let q = c.qual.to_ascii_lowercase();
        q.contains("buf") || q.contains("builder") || q == "b" || q == "sb" || q.contains("hash")
    };
    let returns_error =
        GO_ERR_PACKAGES.contains(&c.qual) || (GO_ERR_METHODS.contains(&c.name) && !in_memory);
    if returns_error && c.name != "recover" && !go_error_cannot_happen(ctx, &c) {
        let callee = if c.qual.is_empty() {
            c.name.to_string()
        } else {
            format!("{}.{}", c.qual, c.name)
        };
        ctx.report(
            IGNORED_RESULT,
            node,
            format!("error returned by `{callee}` is assigned to `_`"),
        );
    }
}

/// Go calls whose error cannot happen in practice or is conventionally dropped: every
/// argument a literal (`url.Parse("http://x")`), `json.Marshal` (fails only on unsupported
/// types), draining a body into `io.Discard`, and flushing a logger.
fn go_error_cannot_happen(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    let args = c.arg_nodes();
    // Literals and exported constants (`DefaultListenPeerURLs`) are not run-time input.
    let all_literal = !args.is_empty()
        && args.iter().all(|a| {
            matches!(
                a.kind(),
                "interpreted_string_literal"
                    | "raw_string_literal"
                    | "int_literal"
                    | "float_literal"
                    | "true"
                    | "false"
            ) || (a.kind() == "identifier"
                && ctx.text(*a).starts_with(|ch: char| ch.is_ascii_uppercase()))
        });
    let qual_l = c.qual.to_ascii_lowercase();
    all_literal
        || c.is("json", "Marshal")
        || (c.qual == "http" && c.name.starts_with("NewRequest"))
        || (c.is("io", "Copy")
            && args
                .first()
                .is_some_and(|a| ctx.text(*a).ends_with("Discard")))
        || (c.name == "Sync"
            && (qual_l.contains("log") || qual_l.contains("zap") || qual_l == "lg"))
}

/// Java: `qual` is an Android `SharedPreferences.Editor` (typed evidence: the file imports
/// `android.content.SharedPreferences`, and the receiver is an `edit()` chain or a variable
/// declared `Editor`/`SharedPreferences.Editor` in the file).
fn is_shared_preferences_editor(ctx: &Ctx<'_>, qual: &str) -> bool {
    if !ctx.src.contains("import android.content.SharedPreferences") {
        return false;
    }
    let q = qual.trim();
    if q.contains(".edit()") {
        return true;
    }
    let is_ident = !q.is_empty() && q.chars().all(|ch| ch.is_alphanumeric() || ch == '_');
    is_ident
        && ["Editor ", "SharedPreferences.Editor "].iter().any(|t| {
            ctx.src.match_indices(t).any(|(i, _)| {
                ctx.src[i + t.len()..].trim_start().starts_with(q)
                    && ctx.src[i + t.len()..]
                        .trim_start()
                        .get(q.len()..)
                        .is_some_and(|rest| {
                            rest.starts_with(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                        })
            })
        })
}

//! Error-handling rules: empty / TODO / log-only handlers, over-broad catch,
//! catch-and-abort, ignored results.

use super::Ctx;
use crate::catalog::{
    BROAD_CATCH, CATCH_AND_ABORT, EMPTY_HANDLER, IGNORED_RESULT, LOG_ONLY_HANDLER, TODO_HANDLER,
};
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind, Handler};
use tree_sitter::Node;

pub(super) fn check(
    ctx: &mut Ctx<'_>,
    node: Node<'_>,
    call: Option<&Call<'_, '_>>,
    handler: Option<&Handler<'_, '_>>,
) {
    if let Some(h) = handler {
        check_handler(ctx, h);
    }
    if let Some(c) = call {
        check_abort_in_handler(ctx, c);
    }
    check_ignored_result(ctx, node);
}

/// Exceptions that are routinely used for control flow (feature probes, parse fallbacks,
/// "already gone"), where an empty or log-only handler is the idiom, not a defect.
const PY_CONTROL_FLOW: &[&str] = &[
    "ImportError",
    "ModuleNotFoundError",
    "KeyError",
    "IndexError",
    "AttributeError",
    "StopIteration",
    "StopAsyncIteration",
    "ValueError",
    "TypeError",
    "NameError",
    "NotImplementedError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "LookupError",
    "KeyboardInterrupt",
    "GeneratorExit",
    "CancelledError",
    "FileNotFoundError",
    "FileExistsError",
    "ProcessLookupError",
    "ChildProcessError",
    "OverflowError",
    "DeprecationWarning",
    "UnsupportedOperation",
    "InvalidOperation",
    "JSONDecodeError",
    "SystemExit",
    "TimeoutExpired",
];
const JAVA_CONTROL_FLOW: &[&str] = &[
    "NumberFormatException",
    "ClassNotFoundException",
    "NoSuchMethodException",
    "NoSuchFieldException",
    "CloneNotSupportedException",
    "UnsupportedEncodingException",
    "NoClassDefFoundError",
    "ParseException",
    "DateTimeParseException",
    "FileAlreadyExistsException",
    "NoSuchFileException",
];
/// Calls whose failure in a `try` body is commonly ignored on purpose (best-effort cleanup).
const CLEANUP_CALLS: &[&str] = &[
    "close",
    "closeQuietly",
    "shutdown",
    "shutdownNow",
    "disconnect",
    "release",
    "unlock",
    "delete",
    "deleteIfExists",
    "remove",
    "unlink",
    "rmdir",
    "rmtree",
    "cancel",
    "stop",
    "destroy",
    "dispose",
    "rollback",
    "kill",
    "terminate",
    "removeShutdownHook",
    "deleteOnExit",
    "interrupt",
    "abort",
    "cleanup",
    "closeSession",
    "unregister",
    "removeHandler",
    "free",
    "shutdownInput",
    "shutdownOutput",
    "closeAll",
    "unregisterAll",
    "stopServer",
];
/// Method/function names that only log or print.
const LOG_NAMES: &[&str] = &[
    "debug",
    "info",
    "warn",
    "warning",
    "error",
    "trace",
    "critical",
    "exception",
    "log",
    "severe",
    "fine",
    "finer",
    "finest",
    "verbose",
    "notice",
    "printStackTrace",
    "println",
    "print",
    "printf",
    "Print",
    "Println",
    "Printf",
    "Debug",
    "Debugf",
    "Info",
    "Infof",
    "Warn",
    "Warnf",
    "Warning",
    "Warningf",
    "Error",
    "Errorf",
    "Errorln",
    "Warnln",
    "Infoln",
    "Trace",
    "Tracef",
    "Log",
    "Logf",
    "Infow",
    "Warnw",
    "Errorw",
    "Debugw",
    "perror",
    "syslog",
    "eprintln",
    "eprint",
    "fprintf",
    "fputs",
    "vlog",
    "logf",
];
const RUST_LOG_MACROS: &[&str] = &[
    "println", "eprintln", "print", "eprint", "warn", "error", "info", "debug", "trace", "log",
    "event",
];

fn last_segment(s: &str) -> &str {
    s.rsplit(['.', ':']).next().unwrap_or(s).trim()
}

fn is_deliberate_binding(name: &str) -> bool {
    let n = name.trim_start_matches('_').to_ascii_lowercase();
    name == "_" || n.starts_with("ignore") || n.starts_with("expected") || n == "unused"
}

pub(super) fn all_control_flow(lang: Lang, caught: &[&str]) -> bool {
    let list = match lang {
        Lang::Python => PY_CONTROL_FLOW,
        Lang::Java => JAVA_CONTROL_FLOW,
        _ => return false,
    };
    !caught.is_empty() && caught.iter().all(|t| list.contains(&last_segment(t)))
}

/// A call statement that only logs/prints.
pub(super) fn is_logging_call(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    if c.kind == CallKind::Macro {
        return RUST_LOG_MACROS.contains(&c.name);
    }
    if ctx.lang == Lang::Go
        && matches!(c.qual, "log" | "klog" | "glog")
        && c.name.starts_with("Fatal")
    {
        return false;
    }
    if c.name == "fprintf" || c.name == "fputs" {
        return c
            .arg_nodes()
            .iter()
            .any(|a| matches!(ctx.text(*a), "stderr" | "stdout"));
    }
    if c.name == "Errorf" && c.qual == "fmt" {
        return false;
    }
    LOG_NAMES.contains(&c.name)
}

/// A statement that only logs: a call statement to a logger, or C++ `std::cerr << ...`.
fn is_logging_statement(ctx: &Ctx<'_>, stmt: Node<'_>) -> bool {
    let expr = if matches!(stmt.kind(), "expression_statement") {
        match syntax::named_children_no_comments(stmt).first() {
            Some(e) => *e,
            None => return false,
        }
    } else {
        stmt
    };
    if let Some(c) = ctx.call(expr) {
        return is_logging_call(ctx, &c);
    }
    if expr.kind() == "binary_expression" {
        let mut left = expr;
        while left.kind() == "binary_expression" {
            match left.child_by_field_name("left") {
                Some(l) => left = l,
                None => return false,
            }
        }
        return matches!(
            ctx.text(left),
            "std::cerr" | "cerr" | "std::clog" | "clog" | "std::cout" | "cout"
        );
    }
    false
}

/// Body is effectively empty: no statements, or only `pass` / `...` (Python).
fn is_empty_body(stmts: &[Node<'_>], ctx: &Ctx<'_>) -> bool {
    stmts.iter().all(|s| {
        s.kind() == "pass_statement"
            || (s.kind() == "expression_statement" && ctx.text(*s).trim() == "...")
            || s.kind() == "empty_statement"
    })
}

/// The try block only does best-effort cleanup (`try { x.close(); } catch ...`).
fn protects_only_cleanup(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(p) = h.protected else { return false };
    let mut calls = 0usize;
    let mut only_cleanup = true;
    syntax::for_each_in_body(p, ctx.lang, |n| {
        if n.kind() == "expression_statement" {
            if let Some(c) = n.named_child(0).and_then(|e| ctx.call(e)) {
                calls += 1;
                only_cleanup &= CLEANUP_CALLS.contains(&c.name);
            }
        }
        only_cleanup
    });
    calls > 0 && only_cleanup
}

/// Whether the handler body re-raises / rethrows / propagates (`throw`, `raise`, `panic`).
fn rethrows(ctx: &Ctx<'_>, body: Node<'_>) -> bool {
    syntax::any_in_body(body, ctx.lang, |n| {
        matches!(
            n.kind(),
            "throw_statement" | "raise_statement" | "throw_expression"
        ) || (ctx.lang == Lang::Go
            && ctx
                .call(n)
                .is_some_and(|c| c.name == "panic" && c.qual.is_empty()))
    }) || matches!(body.kind(), "throw_statement" | "raise_statement")
}

fn check_handler(ctx: &mut Ctx<'_>, h: &Handler<'_, '_>) {
    check_broad_catch(ctx, h);
    if h.is_recover {
        return;
    }
    if h.binding.is_some_and(is_deliberate_binding)
        || all_control_flow(ctx.lang, &h.caught)
        || protects_only_cleanup(ctx, h)
    {
        return;
    }
    // `try { return parse(x); } catch (E e) {}` then the next alternative: falling through
    // to the code after the `try` is the handling.
    let tries_alternative = h.protected.is_some_and(|p| {
        syntax::any_in_body(p, ctx.lang, |n| {
            matches!(
                n.kind(),
                "return_statement" | "break_statement" | "continue_statement"
            )
        })
    });
    let stmts = syntax::statements(h.body);
    let comment_scope = if ctx.lang == Lang::Python {
        h.node
    } else {
        h.body
    };
    let comments = syntax::comments_in(comment_scope);
    let has_todo = comments
        .iter()
        .any(|c| syntax::is_todo_comment(ctx.text(*c)));
    let what = handler_label(h);
    if is_empty_body(&stmts, ctx) {
        if tries_alternative && !has_todo {
            return;
        }
        // Swallowing the failure of a probe or getter is routine; swallowing the failure of
        // a write/send/commit, or of a call whose result is used afterwards, is the defect.
        if matches!(ctx.lang, Lang::Python | Lang::Java | Lang::Cpp)
            && !has_todo
            && !(has_side_effect(ctx, h) || result_used_after(ctx, h) || loses_interrupt(ctx, h))
        {
            return;
        }
        if has_todo {
            ctx.report(
                TODO_HANDLER,
                h.node,
                format!("{what} is empty except for a TODO/FIXME comment"),
            );
        } else if comments.is_empty() {
            ctx.report(
                EMPTY_HANDLER,
                h.node,
                format!("{what} is empty: the error is silently dropped"),
            );
        }
        return;
    }
    let has_else = h.node.child_by_field_name("alternative").is_some();
    if !has_else
        && !ctx.facts.is_program
        && stmts.iter().all(|s| is_logging_statement(ctx, *s))
        && (has_todo || loses_interrupt(ctx, h) || result_used_after(ctx, h))
    {
        if has_todo {
            ctx.report(
                TODO_HANDLER,
                h.node,
                format!("{what} only logs and carries a TODO/FIXME"),
            );
        } else {
            ctx.report(
                LOG_ONLY_HANDLER,
                h.node,
                format!("{what} only logs, then execution continues as if it succeeded"),
            );
        }
    }
}

/// A handler that neither propagates nor compensates: only logging, `pass`, `continue`,
/// `break`, or returning nothing / a literal default.
fn is_trivial_handler(ctx: &Ctx<'_>, body: Node<'_>) -> bool {
    syntax::statements(body).iter().all(|s| match s.kind() {
        "pass_statement" | "continue_statement" | "empty_statement" => true,
        "return_statement" => syntax::named_children_no_comments(*s).iter().all(|v| {
            matches!(
                v.kind(),
                "none"
                    | "null_literal"
                    | "true"
                    | "false"
                    | "integer"
                    | "decimal_integer_literal"
                    | "nil"
                    | "number_literal"
                    | "string"
                    | "string_literal"
                    | "unary_expression"
                    | "expression_list"
            ) && v.named_child_count() <= 1
        }),
        _ => is_logging_statement(ctx, *s) || ctx.text(*s).trim() == "...",
    })
}

fn handler_label(h: &Handler<'_, '_>) -> String {
    if h.caught.is_empty() {
        "bare `except:` handler".to_string()
    } else {
        format!("handler for `{}`", h.caught.join(" | "))
    }
}

fn check_broad_catch(ctx: &mut Ctx<'_>, h: &Handler<'_, '_>) {
    let broad = match ctx.lang {
        Lang::Java => h
            .caught
            .iter()
            .any(|t| matches!(last_segment(t), "Exception" | "Throwable")),
        Lang::Cpp => h
            .caught
            .iter()
            .any(|t| *t == "..." || matches!(*t, "std::exception" | "exception")),
        // `except Exception` in Python was measured at 3/13 (best-effort probes and
        // boundaries); only the catch-alls that also swallow SystemExit/KeyboardInterrupt
        // are reported.
        Lang::Python => {
            h.caught.is_empty() || h.caught.iter().any(|t| last_segment(t) == "BaseException")
        }
        Lang::Go => h.is_recover,
        Lang::C | Lang::Rust => false,
    };
    if !broad || rethrows(ctx, h.body) {
        return;
    }
    // A catch-all is reported when the handler then does nothing about it (logs, passes,
    // or returns a default) around something other than best-effort cleanup.
    if !is_trivial_handler(ctx, h.body)
        || protects_only_cleanup(ctx, h)
        || h.binding.is_some_and(is_deliberate_binding)
    {
        return;
    }
    // Entry points and thread/task boundaries are where a catch-all belongs.
    let boundary = syntax::enclosing_function_name(h.node, ctx.src, ctx.lang).is_some_and(|f| {
        matches!(
            f,
            "main" | "run" | "call" | "__main__" | "uncaughtException"
        )
    });
    if boundary {
        return;
    }
    let what = if h.caught.is_empty() {
        "bare `except:` catches everything, including SystemExit and KeyboardInterrupt".to_string()
    } else if h.is_recover {
        "`recover()` swallows every panic without re-panicking".to_string()
    } else {
        format!(
            "catch-all `{}` handler does not re-raise",
            h.caught.join(" | ")
        )
    };
    ctx.report(BROAD_CATCH, h.node, what);
}

/// Calls that end the process.
pub(super) fn is_exit_call(lang: Lang, c: &Call<'_, '_>) -> bool {
    match lang {
        Lang::C | Lang::Cpp => {
            matches!(c.name, "exit" | "quick_exit" | "abort" | "terminate")
                && matches!(c.qual, "" | "std" | "::")
        }
        Lang::Python => {
            (c.qual.is_empty() && matches!(c.name, "exit" | "quit"))
                || (c.qual == "sys" && c.name == "exit")
                || (c.qual == "os" && c.name == "abort")
        }
        Lang::Go => {
            (c.qual == "os" && c.name == "Exit")
                || (matches!(c.qual, "log" | "klog" | "glog" | "logrus")
                    && c.name.starts_with("Fatal"))
        }
        Lang::Java => {
            (c.qual == "System" && c.name == "exit")
                || (c.qual.ends_with("getRuntime()") && matches!(c.name, "exit" | "halt"))
        }
        // Measured: exits in Rust crates are deliberate (forked children, build-script
        // failure helpers, broken-pipe handling); not reported.
        Lang::Rust => false,
    }
}

/// The handler (if any) whose body contains `node`, within the same function.
pub(super) fn enclosing_handler<'t>(
    ctx: &Ctx<'_>,
    node: Node<'t>,
) -> Option<(Node<'t>, Vec<&'static str>)> {
    let mut n = node.parent();
    while let Some(p) = n {
        if syntax::is_function(p, ctx.lang) {
            return None;
        }
        if let Some(h) = syntax::handler(p, ctx.src, ctx.lang) {
            let in_body =
                h.body.start_byte() <= node.start_byte() && node.end_byte() <= h.body.end_byte();
            if in_body {
                let fatal = h.caught.iter().any(|t| {
                    matches!(
                        last_segment(t),
                        "KeyboardInterrupt"
                            | "SystemExit"
                            | "OutOfMemoryError"
                            | "VirtualMachineError"
                            | "StackOverflowError"
                    )
                });
                return Some((p, if fatal { vec!["fatal"] } else { Vec::new() }));
            }
        }
        n = p.parent();
    }
    None
}

/// Whether an exit at `node` sits in the program's entry point (where exiting is its job).
pub(super) fn in_entry_point(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    if ctx.facts.is_program || (ctx.lang == Lang::Java && java_class_has_main(ctx, node)) {
        return true;
    }
    syntax::enclosing_name(node, ctx.src, ctx.lang)
        .is_some_and(|f| matches!(f, "main" | "init" | "_main") || is_exit_helper_name(f))
}

/// Names of functions (or of the variable a lambda is stored in) that exist to end the
/// process: `Fatal`, `Fatalf`, `Exit`, `die`, `SYSTEM_EXIT`, `serverPanic`. Exiting there is
/// their contract; the decision is made by their callers.
pub(super) fn is_exit_helper_name(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    [
        "fatal",
        "exit",
        "die",
        "panic",
        "abort",
        "halt",
        "quit",
        "crash",
        "terminate",
        "bail",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// Java: the enclosing class has a `main` method (a program, not a library).
pub(super) fn java_class_has_main(ctx: &Ctx<'_>, node: Node<'_>) -> bool {
    let mut n = node.parent();
    while let Some(p) = n {
        if p.kind() == "class_declaration" {
            if let Some(body) = p.child_by_field_name("body") {
                let mut c = body.walk();
                let found = body.named_children(&mut c).any(|m| {
                    m.kind() == "method_declaration"
                        && m.child_by_field_name("name")
                            .is_some_and(|nm| ctx.text(nm) == "main")
                });
                if found {
                    return true;
                }
            }
        }
        n = p.parent();
    }
    false
}

fn check_abort_in_handler(ctx: &mut Ctx<'_>, c: &Call<'_, '_>) {
    if !is_exit_call(ctx.lang, c) {
        return;
    }
    let Some((_, flags)) = enclosing_handler(ctx, c.node) else {
        return;
    };
    if !flags.is_empty() || in_entry_point(ctx, c.node) {
        return;
    }
    let name = ctx.text(c.node).split('(').next().unwrap_or("").to_string();
    ctx.report(
        CATCH_AND_ABORT,
        c.node,
        format!("`{name}` ends the process from inside an error handler"),
    );
}

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

fn check_ignored_result(ctx: &mut Ctx<'_>, node: Node<'_>) {
    match (ctx.lang, node.kind()) {
        (Lang::C | Lang::Cpp, "expression_statement") => {
            let Some(c) = node.named_child(0).and_then(|e| ctx.call(e)) else {
                return;
            };
            if matches!(c.qual, "" | "::")
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
            let hit = !console
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
            let hit = match c.name {
                "delete" | "mkdir" | "mkdirs" | "createNewFile" | "setReadOnly" => {
                    n == 0 && file_like
                }
                "renameTo" | "setLastModified" => n == 1 && file_like,
                "setReadable" | "setWritable" | "setExecutable" => n >= 1 && file_like,
                "tryLock" | "tryAcquire" => true,
                "await" | "awaitTermination" => {
                    n == 2
                        && !c
                            .arg_nodes()
                            .iter()
                            .any(|a| ctx.text(*a).contains("MAX_VALUE"))
                }
                "read" | "skip" => (1..=2).contains(&n) && channel_like,
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
            if ctx.text(l) == "_" && is_rust_fallible_expr(ctx, r) {
                ctx.report(
                    IGNORED_RESULT,
                    node,
                    "`_ =` discards a Result/must-use value without handling the error",
                );
            }
        }
        (Lang::Rust, "expression_statement") => {
            let Some(c) = node.named_child(0).and_then(|e| ctx.call(e)) else {
                return;
            };
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
                || (c.name == "Sync" && c.arg_count() == 0 && !c.qual.is_empty());
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

/// Whether the handler lets code after it use a result the failed operation was meant to
/// produce: Go `v, err := f(); if err != nil { log }` then `v` is used; Java/Python/C++
/// `x = f()` inside the `try` and `x` read after it. That is where "log and carry on"
/// computes with missing data (Yuan et al.'s log-only handlers); logging a failed
/// fire-and-forget operation is not reported.
fn result_used_after(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let (assigned, after_anchor): (Vec<&str>, Option<Node<'_>>) = match ctx.lang {
        Lang::Go => {
            if h.node.child_by_field_name("initializer").is_some() {
                return false;
            }
            let Some(prev) = h.node.prev_named_sibling() else {
                return false;
            };
            if !matches!(
                prev.kind(),
                "short_var_declaration" | "assignment_statement"
            ) {
                return false;
            }
            let names = prev
                .child_by_field_name("left")
                .map(syntax::named_children_no_comments)
                .unwrap_or_default()
                .into_iter()
                .map(|n| ctx.text(n))
                .filter(|t| *t != "_" && Some(*t) != h.binding)
                .collect();
            (names, Some(h.node))
        }
        Lang::Java | Lang::Python | Lang::Cpp => {
            let Some(p) = h.protected else { return false };
            let mut names = Vec::new();
            syntax::for_each_in_body(p, ctx.lang, |n| {
                if matches!(n.kind(), "assignment_expression" | "assignment") {
                    if let Some(l) = n
                        .child_by_field_name("left")
                        .filter(|l| l.kind() == "identifier")
                    {
                        names.push(ctx.text(l));
                    }
                }
                true
            });
            (names, p.parent())
        }
        Lang::C | Lang::Rust => return false,
    };
    if assigned.is_empty() {
        return false;
    }
    let mut next = after_anchor.and_then(|a| a.next_named_sibling());
    while let Some(s) = next {
        let used = s.kind() == "identifier" && assigned.contains(&ctx.text(s))
            || syntax::any_in_body(s, ctx.lang, |n| {
                n.kind() == "identifier" && assigned.contains(&ctx.text(n))
            });
        if used {
            return true;
        }
        next = s.next_named_sibling();
    }
    false
}

/// Java: an `InterruptedException` handler that does not restore the interrupt flag
/// (Sonar S2142): the thread's owner never learns it was asked to stop.
fn loses_interrupt(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    // In a thread's `run()` the interrupt ends the thread anyway; a CLI class exits.
    let thread_exit = syntax::enclosing_function_name(h.node, ctx.src, ctx.lang) == Some("run");
    ctx.lang == Lang::Java
        && !thread_exit
        && !java_class_has_main(ctx, h.node)
        && h.caught
            .iter()
            .any(|t| last_segment(t) == "InterruptedException")
        && !syntax::any_in_body(h.body, ctx.lang, |n| {
            ctx.call(n).is_some_and(|c| c.name == "interrupt")
        })
}

/// Verbs of calls that change state elsewhere (files, peers, databases, queues, workers).
const SIDE_EFFECT_VERBS: &[&str] = &[
    "write", "send", "commit", "flush", "save", "sync", "fsync", "rename", "put", "insert",
    "update", "execute", "exec", "store", "persist", "publish", "submit", "run", "start",
    "process", "handle", "apply", "notify", "post", "upload", "create", "delete", "remove",
    "unlink", "join", "connect", "bind", "listen", "accept", "call", "invoke", "dispatch",
    "transfer", "copy", "move", "replace", "truncate", "append", "set", "acquire", "lock",
];

/// Whether the try block calls something that changes state elsewhere.
fn has_side_effect(ctx: &Ctx<'_>, h: &Handler<'_, '_>) -> bool {
    let Some(p) = h.protected else { return false };
    syntax::any_in_body(p, ctx.lang, |n| {
        ctx.call(n).is_some_and(|c| {
            syntax::ident_words(c.name)
                .first()
                .is_some_and(|w| SIDE_EFFECT_VERBS.contains(&w.as_str()))
        })
    })
}

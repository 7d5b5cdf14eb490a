//! C: errors of `fclose` of a written `FILE *` and of `fsync`/`fdatasync` dropped. Typed
//! evidence only: the stream is a variable bound in the same function by `fopen` (not
//! `fdopen`, which may wrap a socket; not `/proc`, `/sys`, `/dev`, `/run`) with a writing mode (`"w"`, `"a"`, `"+"`) and written through `fputs`/`fprintf`/
//! `fwrite`/... in that function, so the buffered tail that `fclose` flushes is data.

use super::Ctx;
use crate::catalog::DROPPED_FILE_ERROR;
use crate::lang::Lang;
use crate::syntax;
use tree_sitter::Node;

/// Calls that write through a `FILE *` (the stream is one of their arguments).
const STREAM_WRITES: &[&str] = &[
    "fputs",
    "fprintf",
    "fwrite",
    "fputc",
    "putc",
    "vfprintf",
    "fputs_unlocked",
    "fwrite_unlocked",
];

/// A C library function: unqualified, or C++'s explicit global `::fsync(fd)`.
fn global(qual: &str) -> bool {
    qual.is_empty() || qual == "::"
}

/// Whether the call's result is dropped: a bare statement or a `(void)` cast of one.
fn dropped(call: Node<'_>) -> Option<Node<'_>> {
    let mut n = call;
    let mut p = n.parent()?;
    if p.kind() == "cast_expression" {
        n = p;
        p = n.parent()?;
    }
    (p.kind() == "expression_statement").then_some(p)
}

/// The target and the value of an initialised declaration or an assignment (`None` for
/// any other node).
fn binding(n: Node<'_>) -> Option<(Node<'_>, Node<'_>)> {
    let (target, value) = match n.kind() {
        "init_declarator" => ("declarator", "value"),
        "assignment_expression" => ("left", "right"),
        _ => return None,
    };
    Some((
        n.child_by_field_name(target)?,
        n.child_by_field_name(value)?,
    ))
}

/// Variables of the function bound by `fopen` with a writing mode, with the text of the
/// path each was opened on.
fn written_streams(ctx: &Ctx<'_>, func: Node<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    syntax::for_each_in_body(func, ctx.lang, |n| {
        let Some((mut target, value)) = binding(n) else {
            return true;
        };
        while target.kind() == "pointer_declarator" {
            match target.child_by_field_name("declarator") {
                Some(d) => target = d,
                None => return true,
            }
        }
        if target.kind() != "identifier" {
            return true;
        }
        let Some(c) = ctx.call(value) else {
            return true;
        };
        // `fdopen` may wrap a socket or pipe: only named files count.
        if !matches!(c.name, "fopen" | "fopen64") || !c.qual.is_empty() {
            return true;
        }
        // Kernel interfaces and runtime files hold no state to lose.
        if c.arg_nodes().first().is_some_and(|p| {
            let t = ctx.text(*p).trim_start_matches('"');
            ["/proc/", "/sys/", "/dev/", "/run/"]
                .iter()
                .any(|k| t.starts_with(k))
        }) {
            return true;
        }
        let writes = c.arg_nodes().get(1).is_some_and(|m| {
            m.kind() == "string_literal" && ctx.text(*m).trim_matches('"').contains(['w', 'a', '+'])
        });
        if writes {
            let path = c
                .arg_nodes()
                .first()
                .map_or(String::new(), |p| ctx.text(*p).to_string());
            out.push((ctx.text(target).to_string(), path));
        }
        true
    });
    out
}

/// Whether `stmt` sits in an `if` branch whose condition tests a call on the stream
/// (`if (fputs(buf, f) == EOF) { fclose(f); .. }`): the write already failed and is being
/// reported; the `fclose` is cleanup.
fn on_write_error_path(ctx: &Ctx<'_>, stmt: Node<'_>, var: &str) -> bool {
    let mut up = stmt.parent();
    while let Some(p) = up {
        if p.kind() == "if_statement" {
            return p.child_by_field_name("condition").is_some_and(|c| {
                syntax::calls_in_body(c, ctx.src, ctx.lang)
                    .iter()
                    .any(|k| k.arg_nodes().iter().any(|a| ctx.text(*a) == var))
            });
        }
        if syntax::is_function(p, ctx.lang) {
            return false;
        }
        up = p.parent();
    }
    false
}

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>) {
    if node.kind() != "function_definition" {
        return;
    }
    let text = ctx.text(node);
    let relevant = text.contains("fclose")
        || text.contains("fsync")
        || text.contains("fdatasync")
        || text.contains("sync_file_range")
        || (ctx.lang == Lang::Cpp && text.contains("rename"));
    if !relevant {
        return;
    }
    let calls = syntax::calls_in_body(node, ctx.src, ctx.lang);
    let streams = written_streams(ctx, node);
    // A stream counts as written when a write call takes it as an argument; a checked
    // `fflush(f)`, or any checked `fsync`, already reported the data's fate.
    let written = |var: &str| {
        calls.iter().any(|k| {
            global(k.qual)
                && STREAM_WRITES.contains(&k.name)
                && k.arg_nodes().iter().any(|a| ctx.text(*a) == var)
        })
    };
    let flushed_checked = |var: &str| {
        calls.iter().any(|k| {
            global(k.qual)
                && (matches!(k.name, "fsync" | "fdatasync")
                    || (k.name == "fflush"
                        && k.arg_nodes().first().is_some_and(|a| ctx.text(*a) == var)))
                && dropped(k.node).is_none()
        })
    };
    let mut hits: Vec<(Node<'_>, String)> = Vec::new();
    for k in &calls {
        if !global(k.qual) {
            continue;
        }
        let Some(stmt) = dropped(k.node) else {
            continue;
        };
        // A comment directly above the statement explains this very call (`/* We need
        // to make sure any previous errors in the block device are thrown away */`,
        // `/* fsync() returns EIO here, so we don't check */`): a considered decision.
        if !super::comment_above(ctx.src, stmt.start_byte(), ctx.lang)
            .trim()
            .is_empty()
        {
            continue;
        }
        match k.name {
            // Not `fsync(1)`, `fsync(STDERR_FILENO)`, `fsync(fileno(stdout))`: a terminal or
            // a pipe, with nothing to make durable. Not a socket (`fsync(data->sockfd)`:
            // "make sure all data is sent"), or a diagnostic log or a cache rebuilt when
            // missing (`fsync(log_file_fd)`, `fsync(fileno(logger->log_file))`,
            // `fsync(cache_fd)`): no state whose loss a crash would expose (heldout11: 5 of
            // the pair's 33 FP labels).
            // `fsync(ctx, fileinfo)`: a C++ member of the same name, not the system call.
            "fsync" | "fdatasync" if k.arg_nodes().len() != 1 => {}
            "fsync" | "fdatasync" | "sync_file_range"
                if k.arg_nodes().first().is_some_and(|a| {
                    let fd = ctx.text(*a);
                    is_std_stream_fd(fd) || not_state_fd(ctx, node, fd)
                }) => {}
            // C++: a dropped `rename` that publishes a temporary file (`filename_tmp`,
            // `name + ".new"`): when it fails, the old content stays in place and the code
            // goes on as if the new one were there. Renames of live files to backups and
            // log rotations are left to ignored-result.
            "rename"
                if ctx.lang == Lang::Cpp
                    && k.arg_nodes().len() == 2
                    && k.arg_nodes().first().is_some_and(|a| {
                        let t = ctx.text(*a);
                        super::durability::says_temporary(t) || t.contains(".new\"")
                    }) =>
            {
                hits.push((
                    stmt,
                    "`rename` error of a temporary file dropped: when it fails the old content stays in place and the code goes on as if the new one were there".to_string(),
                ))
            }
            "fsync" | "fdatasync" | "sync_file_range" => hits.push((
                stmt,
                format!("`{}` error dropped: the data may not be on disk although the code goes on as if it were", k.name),
            )),
            "fclose" => {
                let Some(var) = k.arg_nodes().first().map(|a| ctx.text(*a).to_string()) else {
                    continue;
                };
                // Only a stream that is then published by a rename: an unchecked fclose
                // of a debug dump or a procfs write measured mostly harmless (1/8 on the
                // tuning corpora); write, fclose, rename is the temp-file pattern whose
                // torn result replaces the good file.
                // The rename must publish this stream's file: its source is the path the
                // stream was opened on (not the original read alongside, `a+` or not).
                let paths: Vec<&str> = streams
                    .iter()
                    .filter(|(v, _)| *v == var)
                    .map(|(_, p)| p.as_str())
                    .collect();
                let renamed_after = calls.iter().any(|r| {
                    let source = match r.name {
                        "rename" => r.arg_nodes().first().copied(),
                        "renameat" | "renameat2" => r.arg_nodes().get(1).copied(),
                        _ => None,
                    };
                    global(r.qual)
                        && r.node.start_byte() > k.node.start_byte()
                        && source.is_some_and(|a| paths.contains(&ctx.text(a)))
                });
                if !paths.is_empty()
                    && renamed_after
                    && !leaves_before_rename(stmt)
                    && written(&var)
                    && !flushed_checked(&var)
                    && !on_write_error_path(ctx, stmt, &var)
                {
                    hits.push((
                        stmt,
                        format!("`fclose` error of a written stream dropped (`{var}`): the buffered tail is written by fclose, and a full disk or I/O error is reported only there"),
                    ));
                }
            }
            _ => {}
        }
    }
    for k in &calls {
        if let Some((ifs, name)) = fsync_failure_only_logged(ctx, k) {
            if super::comment_above(ctx.src, ifs.start_byte(), ctx.lang)
                .trim()
                .is_empty()
            {
                hits.push((
                    ifs,
                    format!("`{name}` failure is only logged: the code goes on as if the data were on disk (a failed fsync may already have dropped the dirty pages)"),
                ));
            }
        }
    }
    for (n, msg) in hits {
        ctx.report(DROPPED_FILE_ERROR, n, msg);
    }
}

/// Whether `stmt` sits in a block of an `if`/`else` that ends by leaving the function or
/// the loop (`return`, `goto`, `break`, `continue`): an error path that never reaches the
/// rename after it, where the operation already failed.
fn leaves_before_rename(stmt: Node<'_>) -> bool {
    let Some(block) = stmt.parent().filter(|b| b.kind() == "compound_statement") else {
        return false;
    };
    let in_branch = block
        .parent()
        .is_some_and(|p| matches!(p.kind(), "if_statement" | "else_clause"));
    let last = syntax::named_children_no_comments(block).last().copied();
    in_branch
        && last.is_some_and(|l| {
            matches!(
                l.kind(),
                "return_statement" | "goto_statement" | "break_statement" | "continue_statement"
            )
        })
}

/// Whether the descriptor expression `arg` of an `fsync` names no state: the variable was
/// bound in `func` by `socket`/`accept`, or an identifier in it says socket (`sockfd`),
/// cache (`cache_fd`) or log file (`log_file_fd`, `logfile`, `logger_buffer->log_file`;
/// not a bare `log`, which is also a write-ahead log: `log->fd`).
fn not_state_fd(ctx: &Ctx<'_>, func: Node<'_>, arg: &str) -> bool {
    let idents = arg
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    for ident in idents {
        let words: Vec<String> = syntax::ident_words(ident)
            .iter()
            .map(|w| w.to_lowercase())
            .collect();
        let has = |w: &str| words.iter().any(|x| x == w);
        if words.iter().any(|w| {
            w.starts_with("sock") || w.starts_with("cache") || w == "logfile" || w == "logger"
        }) || (has("log") && (has("file") || has("fd")) && words.len() > 1)
        {
            return true;
        }
    }
    let var = arg.trim();
    if var.is_empty() || !var.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return false;
    }
    let mut from_socket = false;
    syntax::for_each_in_body(func, ctx.lang, |n| {
        if let Some((t, v)) = binding(n) {
            if ctx.text(t) == var
                && ctx.call(v).is_some_and(|c| {
                    c.qual.is_empty() && matches!(c.name, "socket" | "accept" | "accept4")
                })
            {
                from_socket = true;
                return false;
            }
        }
        true
    });
    from_socket
}

/// `0`, `1`, `2`, `STD*_FILENO`, `fileno(stdout)`: the standard streams.
pub(super) fn is_std_stream_fd(arg: &str) -> bool {
    let a: String = arg.chars().filter(|c| !c.is_whitespace()).collect();
    matches!(
        a.as_str(),
        "0" | "1"
            | "2"
            | "STDIN_FILENO"
            | "STDOUT_FILENO"
            | "STDERR_FILENO"
            | "fileno(stdout)"
            | "fileno(stderr)"
            | "fileno(stdin)"
    )
}

/// A C function that only logs: a word of its name says log/print/warn/debug, and none
/// says it ends the process (`log_dbg`, `log_write`, `syslog`, `g_warning`, `perror`; not
/// `log_fatal`, `die`, `err`).
fn is_c_log_call(name: &str) -> bool {
    let words = syntax::ident_words(name);
    let ends = words.iter().any(|w| {
        matches!(
            w.as_str(),
            "fatal" | "die" | "panic" | "abort" | "exit" | "crit" | "bug" | "assert"
        )
    });
    !ends
        && words.iter().any(|w| {
            matches!(
                w.as_str(),
                "log"
                    | "syslog"
                    | "dbg"
                    | "debug"
                    | "warn"
                    | "warning"
                    | "printf"
                    | "perror"
                    | "notice"
                    | "info"
                    | "trace"
                    | "verbose"
            )
        })
}

/// `if (fsync(fd) < 0) log_dbg(..);`: the call `k` (`fsync`, `fdatasync` or a wrapper
/// whose name ends in one) is tested by an `if` with no `else` whose branch only logs
/// (no return, goto, assignment or other call), so the failure changes nothing. Returns
/// the `if` statement and the call's name.
fn fsync_failure_only_logged<'t>(
    ctx: &Ctx<'_>,
    k: &syntax::Call<'t, '_>,
) -> Option<(Node<'t>, String)> {
    let lname = k.name.to_ascii_lowercase();
    if !k.qual.is_empty() || !(lname.ends_with("fsync") || lname.ends_with("fdatasync")) {
        return None;
    }
    // Up from the call to the `if` whose condition holds it.
    let mut n = k.node;
    let ifs = loop {
        let p = n.parent()?;
        if p.kind() == "if_statement" {
            if p.child_by_field_name("condition")? != n {
                return None;
            }
            break p;
        }
        if !matches!(
            p.kind(),
            "parenthesized_expression"
                | "binary_expression"
                | "unary_expression"
                | "condition_clause"
        ) {
            return None;
        }
        n = p;
    };
    if ifs.child_by_field_name("alternative").is_some() {
        return None;
    }
    let body = ifs.child_by_field_name("consequence")?;
    let stmts = if body.kind() == "compound_statement" {
        syntax::named_children_no_comments(body)
    } else {
        vec![body]
    };
    let only_logs = !stmts.is_empty()
        && stmts.iter().all(|s| {
            s.kind() == "expression_statement"
                && s.named_child(0)
                    .and_then(|e| ctx.call(e))
                    .is_some_and(|c| c.qual.is_empty() && is_c_log_call(c.name))
        });
    only_logs.then(|| (ifs, k.name.to_string()))
}

//! Durability rules, judged per function: a file written and renamed with no fsync,
//! and persistent state rewritten in place (truncate + write, no rename).

use super::{
    durability_c_tools, durability_cxx, durability_go, durability_python, durability_rust,
    durability_streams, Ctx,
};
use crate::catalog::{RENAME_WITHOUT_FSYNC, WRITE_IN_PLACE};
use crate::lang::Lang;
use crate::syntax::{self, Call, CallKind};
use tree_sitter::Node;

/// Whether a call opens a file for writing from scratch (truncating or creating).
pub(super) fn is_truncating_open(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    let args = c.arg_nodes();
    let arg_text = |i: usize| args.get(i).map(|a| ctx.text(*a)).unwrap_or("");
    match ctx.lang {
        Lang::C | Lang::Cpp => match c.name {
            "fopen" => string_lit(arg_text(1)).is_some_and(|m| m.contains('w')),
            "open" | "openat" => args
                .iter()
                .any(|a| durability_c_tools::without_comments(ctx.text(*a)).contains("O_TRUNC")),
            "creat" => true,
            "ofstream" | "wofstream" | "fstream" => {
                durability_streams::is_truncating_temporary(ctx, c)
            }
            _ => false,
        },
        Lang::Python => {
            if c.name == "open" && matches!(c.qual, "" | "io" | "codecs") {
                let mode = args
                    .iter()
                    .find(|a| {
                        a.kind() == "keyword_argument"
                            && a.child_by_field_name("name")
                                .is_some_and(|n| ctx.text(n) == "mode")
                    })
                    .and_then(|a| a.child_by_field_name("value"))
                    .map(|v| ctx.text(v))
                    .unwrap_or_else(|| {
                        if args.get(1).is_some_and(|a| a.kind() == "string") {
                            arg_text(1)
                        } else {
                            ""
                        }
                    });
                return string_lit(mode).is_some_and(|m| m.contains('w'));
            }
            matches!(c.name, "write_text" | "write_bytes")
        }
        Lang::Go => {
            c.is("os", "Create")
                || c.is("os", "WriteFile")
                || c.is("ioutil", "WriteFile")
                || (c.is("os", "OpenFile") && arg_text(1).contains("O_TRUNC"))
        }
        Lang::Rust => {
            (c.name == "create" && c.qual.ends_with("File"))
                || (c.name == "write" && (c.qual == "fs" || c.qual.ends_with("::fs")))
                || (c.name == "truncate" && arg_text(0) == "true")
        }
        Lang::Java => {
            let appends = args.iter().any(|a| {
                let t = ctx.text(*a);
                t == "true" || t.contains("APPEND")
            });
            !appends
                && match (c.kind, c.name) {
                    (CallKind::New, "FileOutputStream" | "FileWriter") => true,
                    (
                        CallKind::Call,
                        "write" | "writeString" | "newBufferedWriter" | "newOutputStream"
                        | "asCharSink" | "asByteSink",
                    ) => c.qual == "Files",
                    _ => false,
                }
        }
    }
}

fn string_lit(t: &str) -> Option<&str> {
    let t = t.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    (t.starts_with('"') || t.starts_with('\'')).then(|| t.trim_matches(|c| c == '"' || c == '\''))
}

/// Whether a path or name says it is a temporary file (`tmp`, `temp`, in any case).
pub(super) fn says_temporary(text: &str) -> bool {
    let l = text.to_ascii_lowercase();
    l.contains("tmp") || l.contains("temp")
}

pub(super) fn is_rename(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    is_library_rename(ctx.lang, c)
        || (matches!(c.qual, "" | "self" | "cls" | "this")
            && ctx.rename_helpers.iter().any(|h| h == c.name))
}

/// C and C++: a project function that says it renames (`UTI_RenameTempFile`,
/// `ca_chunk_file_rename`, `rename_store`), defined in another file, and that does not
/// say it syncs. Counted as a rename only where the same function also writes a file
/// through libc ([`c_writes_before`] without project writers); a project writer next to a
/// project "rename" (`tarantoolsqlRenameTrigger`) is too often not a file at all.
fn is_c_rename_helper_call(ctx: &Ctx<'_>, c: &Call<'_, '_>) -> bool {
    matches!(ctx.lang, Lang::C | Lang::Cpp)
        && matches!(c.qual, "" | "::")
        && !is_library_rename(ctx.lang, c)
        && !is_sync(c)
        && syntax::ident_words(c.name).iter().any(|w| w == "rename")
}

/// A rename through a project helper counts only libc writes and streams before it, not
/// project writers (see [`c_writes_before`]).
fn project_writers(ctx: &Ctx<'_>, r: &Call<'_, '_>) -> bool {
    !is_c_rename_helper_call(ctx, r) && !durability_cxx::is_cxx_rename_call(ctx, r)
}

/// C and C++: the function writes file data before `before` (byte offset): a stream or
/// descriptor write (`fprintf(out, ..)`, `fwrite`, `write`, `fflush(f)`, not to
/// stdout/stderr), a writing `fdopen`, an open with `O_CREAT`, or a project writer
/// (`loop_write(fd, ..)`, `write_msg(msg)`).
fn c_writes_before(
    ctx: &Ctx<'_>,
    calls: &[Call<'_, '_>],
    before: usize,
    project_writers: bool,
) -> bool {
    calls.iter().any(|c| {
        if c.node.start_byte() >= before || !matches!(c.qual, "" | "::") {
            return false;
        }
        let args = c.arg_nodes();
        let std_stream = args.iter().any(|a| {
            matches!(
                ctx.text(*a),
                "stdout" | "stderr" | "STDOUT_FILENO" | "STDERR_FILENO" | "1" | "2"
            )
        });
        if std_stream {
            return false;
        }
        match c.name {
            "fprintf" | "fputs" | "fwrite" | "fputc" | "putc" | "vfprintf" | "fflush" | "write"
            | "pwrite" | "writev" | "dprintf" => !args.is_empty(),
            "fdopen" => args
                .get(1)
                .is_some_and(|m| ctx.text(*m).trim_matches('"').contains(['w', 'a', '+'])),
            _ => {
                let words = syntax::ident_words(c.name);
                (words.iter().any(|w| w == "open")
                    && args.iter().any(|a| ctx.text(*a).contains("O_CREAT")))
                    || (project_writers
                        && words.iter().any(|w| w == "write")
                        && !words.iter().any(|w| {
                            matches!(
                                w.as_str(),
                                "log"
                                    | "debug"
                                    | "trace"
                                    | "error"
                                    | "warn"
                                    | "msg"
                                    | "head"
                                    | "header"
                            )
                        }))
            }
        }
    })
}

/// The file's own rename helpers: small functions (at most 20 lines) that rename a file
/// and neither write nor fsync it (`def atomic_rename(src, dst): os.replace(src, dst)`),
/// and Python module-level aliases (`atomic_replace = os.replace`). A call of one counts
/// as a rename in its caller, which is where the unsynced data is written.
pub(super) fn rename_helpers(root: Node<'_>, src: &str, lang: Lang) -> Vec<String> {
    let mut out = Vec::new();
    if !["rename", "replace", "move", "Rename"]
        .iter()
        .any(|w| src.contains(w))
    {
        return out;
    }
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if syntax::is_function(n, lang) {
            let lines = n.end_position().row - n.start_position().row + 1;
            if lines <= 20 {
                if let Some(name) = syntax::function_name(n, src, lang) {
                    let calls = syntax::calls_in_body(n, src, lang);
                    if calls.iter().any(|c| is_library_rename(lang, c))
                        && !calls.iter().any(|c| is_sync(c) || is_write_call(c))
                    {
                        out.push(name.to_string());
                    }
                }
            }
            continue;
        }
        if lang == Lang::Python
            && n.kind() == "assignment"
            && n.parent().is_some_and(|p| {
                p.kind() == "expression_statement"
                    && p.parent().is_some_and(|m| m.kind() == "module")
            })
        {
            if let (Some(l), Some(r)) = (
                n.child_by_field_name("left"),
                n.child_by_field_name("right"),
            ) {
                if matches!(
                    syntax::text(r, src),
                    "os.replace" | "os.rename" | "shutil.move"
                ) && l.kind() == "identifier"
                {
                    out.push(syntax::text(l, src).to_string());
                }
            }
        }
        let mut c = n.walk();
        stack.extend(n.named_children(&mut c));
    }
    out
}

/// Calls that write file data (a rename helper must not be one that writes).
fn is_write_call(c: &Call<'_, '_>) -> bool {
    matches!(
        c.name,
        "write"
            | "writelines"
            | "dump"
            | "fwrite"
            | "Write"
            | "WriteFile"
            | "write_all"
            | "fputs"
            | "fprintf"
    )
}

fn is_library_rename(lang: Lang, c: &Call<'_, '_>) -> bool {
    match lang {
        Lang::C | Lang::Cpp => {
            matches!(c.qual, "" | "::" | "std")
                && matches!(c.name, "rename" | "renameat" | "renameat2")
        }
        Lang::Python => {
            (matches!(c.qual, "os" | "aiofiles.os") && matches!(c.name, "rename" | "replace"))
                || c.is("shutil", "move")
                || (c.name == "rename" && !c.qual.is_empty())
        }
        Lang::Go => c.is("os", "Rename"),
        Lang::Rust => c.name == "rename" && (c.qual == "fs" || c.qual.ends_with("::fs")),
        Lang::Java => c.is("Files", "move") || c.name == "renameTo",
    }
}

fn is_sync(c: &Call<'_, '_>) -> bool {
    let l = c.name.to_ascii_lowercase();
    l.contains("fsync")
        || l.contains("fdatasync")
        || matches!(
            l.as_str(),
            "sync" | "sync_all" | "sync_data" | "force" | "sync_file_range" | "syncfs"
        )
}

/// Go: the type name of a method's receiver (`func (c *Config) Write()` gives `Config`).
fn go_receiver_type<'s>(node: Node<'_>, src: &'s str) -> Option<&'s str> {
    let recv = node.child_by_field_name("receiver")?;
    let t = syntax::text(recv, src)
        .trim_matches(|c| c == '(' || c == ')')
        .split_whitespace()
        .last()?
        .trim_start_matches('*');
    Some(t.split('[').next().unwrap_or(t))
}

/// Function names that say "this makes state persistent". `owner` is the type a method
/// belongs to when the grammar gives it (Go receivers): `func (c *Config) Write()` writes
/// a config as surely as `writeConfig()` does.
pub(super) fn is_persistence_name(name: &str, owner: Option<&str>) -> bool {
    let words = syntax::ident_words(name);
    let Some(first) = words.first() else {
        return false;
    };
    let owner_words = owner.map(syntax::ident_words).unwrap_or_default();
    if matches!(
        first.as_str(),
        "save" | "persist" | "store" | "checkpoint" | "snapshot"
    ) {
        return true;
    }
    const OBJECTS: &[&str] = &[
        "state",
        "config",
        "conf",
        "settings",
        "meta",
        "metadata",
        "manifest",
        "index",
        "db",
        "database",
        "checkpoint",
        "snapshot",
        "registry",
        "ledger",
        "offsets",
        "cursor",
        "version",
        "keyring",
        "keystore",
        "keys",
        "wallet",
    ];
    words
        .iter()
        .any(|w| matches!(w.as_str(), "write" | "update" | "save" | "dump" | "persist"))
        && words
            .iter()
            .chain(owner_words.iter())
            .any(|w| OBJECTS.contains(&w.as_str()))
}

/// Python: a class whose methods write a temporary file kept in an attribute and rename it
/// in another method (`self._tempname = mkstemp(..)` / `open(self._tmpname, mode)` in
/// `__init__`, `rename(self._tempname, target)` in `close()`/`commit()`), with no fsync
/// anywhere in the class: the atomic-file helper classes that storage code writes its state
/// through. The per-function test cannot see these: the write is in another method.
fn check_python_class(ctx: &mut Ctx<'_>, class: Node<'_>) {
    let Some(body) = class.child_by_field_name("body") else {
        return;
    };
    let mut cur = body.walk();
    let methods: Vec<Node<'_>> = body
        .named_children(&mut cur)
        .filter_map(|ch| {
            if ch.kind() == "decorated_definition" {
                ch.child_by_field_name("definition")
            } else {
                Some(ch)
            }
        })
        .filter(|f| f.kind() == "function_definition")
        .collect();
    if methods.len() < 2 {
        return;
    }
    // Only a rename is reported, and every rename call names `rename`, `replace`, `move`
    // or one of the file's rename helpers: a class without any of these words needs no
    // pass over its calls (the per-function check makes its own).
    let text = ctx.text(class);
    if !["rename", "replace", "move"]
        .iter()
        .any(|w| text.contains(w))
        && !ctx.rename_helpers.iter().any(|h| text.contains(h.as_str()))
    {
        return;
    }
    let calls: Vec<Call<'_, '_>> = methods
        .iter()
        .flat_map(|m| syntax::calls_in_body(*m, ctx.src, ctx.lang))
        .collect();
    if calls.iter().any(is_sync) {
        return;
    }
    let first_arg = |c: &Call<'_, '_>| c.arg_nodes().first().map(|a| ctx.text(*a));
    // `self.x` is a file this class creates for writing.
    let written_attr = |attr: &str| {
        calls.iter().any(|c| {
            let opens = match (c.qual, c.name) {
                ("" | "io", "open") => {
                    is_truncating_open(ctx, c)
                        || c.arg_nodes()
                            .get(1)
                            .is_some_and(|m| m.kind() != "string" && m.kind() != "keyword_argument")
                }
                (_, "open" | "posixfile" | "fdopen") => true,
                _ => false,
            };
            let creates_temp = matches!(
                c.name,
                "mkstemp" | "mktemp" | "NamedTemporaryFile" | "mktempcopy"
            ) && c.node.parent().is_some_and(|p| {
                p.kind() == "assignment"
                    && p.child_by_field_name("left").is_some_and(|l| {
                        ctx.text(l)
                            .split(|ch: char| ch == ',' || ch.is_whitespace())
                            .any(|t| t == attr)
                    })
            });
            // A file opened by path must be the temporary one (`self._tmpname`): a class
            // that renames the file it keeps open (a log rotated aside, a path object's
            // `rename()`) renames data it did not write as a new version.
            let temp_name = says_temporary(attr);
            (opens && temp_name && first_arg(c) == Some(attr)) || creates_temp
        })
    };
    let renames: Vec<Node<'_>> = calls
        .iter()
        .filter(|c| {
            (is_rename(ctx, c) || (c.qual.is_empty() && matches!(c.name, "rename" | "replace")))
                && c.arg_nodes().len() == 2
                && first_arg(c).is_some_and(|a| a.starts_with("self.") && written_attr(a))
        })
        .map(|c| c.node)
        .collect();
    let class_name = class
        .child_by_field_name("name")
        .map(|n| ctx.text(n))
        .unwrap_or("class");
    for r in renames {
        ctx.report(
            RENAME_WITHOUT_FSYNC,
            r,
            format!("`{class_name}` writes a temporary file and renames it into place without fsync: after a crash the new name can point to empty or partial data"),
        );
    }
}

pub(super) fn check(ctx: &mut Ctx<'_>, node: Node<'_>) {
    if durability_python::is_build_script(ctx) {
        return;
    }
    if ctx.lang == Lang::Python && node.kind() == "class_definition" {
        check_python_class(ctx, node);
        return;
    }
    if !syntax::is_function(node, ctx.lang) {
        return;
    }
    if ctx.lang == Lang::Rust {
        durability_rust::check_function(ctx, node);
    }
    let Some(name) = syntax::function_name(node, ctx.src, ctx.lang) else {
        return;
    };
    let calls = syntax::calls_in_body(node, ctx.src, ctx.lang);
    if ctx.lang == Lang::Java {
        super::durability_java::check_function(ctx, node, &calls);
    }
    let open = calls.iter().find(|c| is_truncating_open(ctx, c));
    super::durability_helpers::record(ctx, node, name, &calls, open);
    // C and C++: a project rename helper defined elsewhere counts where this function
    // writes the data it renames.
    let rename = calls
        .iter()
        .find(|c| {
            is_rename(ctx, c) || (ctx.lang == Lang::Rust && durability_rust::is_persist(ctx, c))
        })
        .or_else(|| {
            calls.iter().find(|c| {
                (is_c_rename_helper_call(ctx, c) || durability_cxx::is_cxx_rename_call(ctx, c))
                    && (c_writes_before(ctx, &calls, c.node.start_byte(), false)
                        || durability_cxx::stream_written_before(ctx, node, c.node.start_byte()))
            })
        });
    // C and C++: a write before the rename without a truncating open (`open(tmp,
    // O_CREAT|O_WRONLY)` + `fdopen`, a project open helper and `fprintf`).
    // Runtime state under `/run` (a tmpfs, gone at reboot) needs no fsync: a file whose
    // only absolute paths are `/run/..` (logind's sessions, udev's database) writes there.
    let runtime_only = || {
        ctx.src.contains("\"/run/")
            && ![
                "\"/var/", "\"/etc/", "\"/usr/", "\"/home/", "\"/boot/", "\"/efi/",
            ]
            .iter()
            .any(|p| ctx.src.contains(p))
    };
    let c_writes = matches!(ctx.lang, Lang::C | Lang::Cpp)
        && open.is_none()
        && !runtime_only()
        && rename.is_some_and(|r| {
            c_writes_before(ctx, &calls, r.node.start_byte(), project_writers(ctx, r))
                || durability_cxx::stream_written_before(ctx, node, r.node.start_byte())
        });
    // Python writes through many helpers: `json.dump(obj, f)`, a temp file, `os.fdopen`.
    // Only a write before the rename makes it write-then-rename: a function that moves an
    // existing file (a backup set aside, a corrupt entry quarantined, a user's `mv`) and
    // writes something afterwards renames data it did not write.
    let python_writes = ctx.lang == Lang::Python
        && rename.is_some_and(|r| {
            calls.iter().any(|c| {
                c.node.start_byte() < r.node.start_byte()
                    && match c.name {
                        "write" | "writelines" => {
                            !durability_python::writes_other_file(ctx, &calls, c)
                        }
                        "mkstemp" => !durability_python::mkstemp_only_named(&calls),
                        "dump" | "NamedTemporaryFile" | "fdopen" => true,
                        // A copy to the name that is then renamed (`shutil.copy2(src, tmp)`).
                        "copyfile" | "copy2" | "copy" | "copyfileobj" => {
                            durability_python::copies_to_source(ctx, c, r)
                        }
                        _ => false,
                    }
            }) || durability_python::writes_before(ctx, &calls, r)
        });
    // Go: a temporary file (`os.CreateTemp`, `ioutil.TempFile`), or a file handle whose
    // `Name()` is taken and that is closed, before the rename: the handle was written and
    // its file is what the rename publishes (umoci's blob store, acmetool's `closeWrapper`);
    // not a rotation, which opens the old name again after the rename.
    let go_writes = ctx.lang == Lang::Go
        && open.is_none()
        && rename.is_some_and(|r| {
            let before = |c: &&Call<'_, '_>| c.node.start_byte() < r.node.start_byte();
            calls
                .iter()
                .filter(before)
                .any(|c| c.is("os", "CreateTemp") || c.is("ioutil", "TempFile"))
                || (calls
                    .iter()
                    .filter(before)
                    .any(|c| c.name == "Name" && c.arg_count() == 0 && c.receiver.is_some())
                    && calls
                        .iter()
                        .filter(before)
                        .any(|c| c.name == "Close" && c.arg_count() == 0 && c.receiver.is_some()))
                || durability_go::writes_before(ctx, &calls, r)
        })
        // A rotation reopens the renamed file's old name afterwards (a log set aside).
        && !rename.is_some_and(|r| {
            let source = r.arg_nodes().first().map(|a| ctx.text(*a));
            calls.iter().any(|c| {
                c.node.start_byte() > r.node.end_byte()
                    && (c.is("os", "OpenFile") || c.is("os", "Create"))
                    && c.arg_nodes().first().map(|a| ctx.text(*a)) == source
            })
        });
    // Rust: a `tempfile` temporary written (or a temporary path) before the rename.
    let rust_writes = ctx.lang == Lang::Rust
        && open.is_none()
        && rename.is_some_and(|r| durability_rust::writes_before(ctx, &calls, r));
    // C and C++: no truncating open and no rename, but an output stream declared with its
    // path or a handle rewound and written again (see `durability_streams`).
    if open.is_none() && rename.is_none() {
        if let Some((site, path, what)) = durability_streams::rewrite_site(ctx, node, &calls) {
            let owner = durability_cxx::method_owner(ctx, node);
            if is_persistence_name(name, owner) && !says_temporary(&path) {
                ctx.report(
                    WRITE_IN_PLACE,
                    site,
                    format!("`{name}` {what} its state file in place: a crash mid-write loses both old and new state"),
                );
            }
        }
        return;
    }
    let Some(open) = open.or(if python_writes || c_writes || go_writes || rust_writes {
        rename
    } else {
        None
    }) else {
        return;
    };
    // C and C++ sync through project helpers too (`fflush_sync_and_check(f)`,
    // `fsync_full(fd)`): a callee whose name has `fsync` as a word, or `sync` next to a
    // word about files or flushing; not `maildir_shared_sync` or casync's `ca_sync_*`.
    let c_like = matches!(ctx.lang, Lang::C | Lang::Cpp);
    let syncs = |c: &Call<'_, '_>| {
        is_sync(c)
            || (c_like && {
                let words = syntax::ident_words(c.name);
                let has = |w: &str| words.iter().any(|x| x == w);
                has("fsync")
                    || has("fdatasync")
                    || (has("sync")
                        && ["fflush", "flush", "fd", "file", "data", "full"]
                            .iter()
                            .any(|w| has(w)))
            })
    };
    let synced = calls.iter().any(syncs);
    // Only an fsync *before* the rename makes the renamed data durable.
    let synced_before = |r: &Call<'_, '_>| {
        calls
            .iter()
            .any(|c| syncs(c) && c.node.start_byte() < r.node.start_byte())
    };
    // A fallback that rewrites the rename's destination in place after the rename
    // (`if (!tmp.renameTo(to)) { Files.write(data, to, UTF_8); }`, C `if (rename(tmp,
    // dst)) { f = fopen(dst, "wb"); ... }`): a crash mid-copy leaves a torn target.
    if let Some(r) = rename {
        let args = r.arg_nodes();
        let dest = if r.is("Files", "move") {
            args.get(1)
        } else {
            args.last()
        };
        if let Some(dest) = dest.map(|d| ctx.text(*d)) {
            let fallback = calls.iter().find(|c| {
                c.node.start_byte() > r.node.end_byte()
                    && is_truncating_open(ctx, c)
                    && c.arg_nodes().iter().any(|a| ctx.text(*a) == dest)
            });
            if let Some(o) = fallback {
                ctx.report(
                    WRITE_IN_PLACE,
                    o.node,
                    format!("`{name}` rewrites the rename's target `{dest}` in place (fallback after the rename): a crash mid-write leaves it torn"),
                );
            }
        }
    }
    // Written then renamed: the write (a truncating open, or a Python write) comes first;
    // a function that renames an existing file and opens one for writing only afterwards
    // (a fallback copy, a log started after a rollover) did not write what it renamed. C
    // and C++ open their temporary files mostly through project helpers
    // (`open_temp_file(..)`) that this rule does not see as opens, so a libc write before
    // the rename counts too, and so does a file closed before it (a stream from a project
    // helper, written by project code); a truncating open only after the rename, with
    // nothing written or closed before it (Gammu moving a sent message, with a copy as the
    // fallback), does not.
    let written_before = |r: &Call<'_, '_>| {
        python_writes
            || go_writes
            || rust_writes
            || (matches!(ctx.lang, Lang::C | Lang::Cpp)
                && (c_writes
                    || calls.iter().any(|c| {
                        c.node.start_byte() < r.node.start_byte()
                            && matches!(c.name, "fclose" | "close")
                    })
                    || c_writes_before(ctx, &calls, r.node.start_byte(), project_writers(ctx, r))))
            || calls
                .iter()
                .any(|c| c.node.start_byte() < r.node.start_byte() && is_truncating_open(ctx, c))
    };
    match rename {
        Some(r) if !synced_before(r) && written_before(r) => {
            ctx.report(
                RENAME_WITHOUT_FSYNC,
                r.node,
                format!("`{name}` writes a file and renames it without fsync: after a crash the new name can point to empty or partial data"),
            );
        }
        Some(_) => {}
        None => {
            let path_arg = open.arg_nodes().first().map_or("", |a| ctx.text(*a));
            let owner = if ctx.lang == Lang::Go {
                go_receiver_type(node, ctx.src)
            } else {
                durability_cxx::method_owner(ctx, node)
            };
            if is_persistence_name(name, owner) && !says_temporary(path_arg) {
                let sync_note = if synced { "" } else { " and never fsyncs it" };
                ctx.report(
                    WRITE_IN_PLACE,
                    open.node,
                    format!("`{name}` truncates and rewrites its state file in place{sync_note}: a crash mid-write loses both old and new state"),
                );
            }
        }
    }
}

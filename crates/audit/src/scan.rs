//! Scanning: read, parse and check files, in parallel, never failing on a bad file.

use crate::error::AuditError;
use crate::finding::Finding;
use crate::lang::{self, Lang};
use crate::rules;
use crate::walk::{Skipped, SourceFile};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tree_sitter::{Node, Parser};

/// Knobs for a scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Also check test files and test functions.
    pub include_tests: bool,
    /// Files larger than this (bytes) are skipped as generated/vendored blobs.
    pub max_file_size: u64,
    /// Worker threads.
    pub jobs: usize,
    /// A file whose syntax-error nodes cover more than this fraction of its bytes "does not
    /// parse" and is skipped; below it, the well-formed parts are checked. Default 1.0:
    /// never skip, analyse whatever parsed.
    pub max_error_fraction: f64,
    /// C/C++ macro idioms neutralized before parsing.
    pub c_macros: crate::cmacro::MacroList,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            include_tests: false,
            max_file_size: 4 * 1024 * 1024,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_error_fraction: 1.0,
            c_macros: crate::cmacro::MacroList::default(),
        }
    }
}

/// Totals of a scan.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScanStats {
    pub files_scanned: usize,
    pub lines_scanned: usize,
    pub bytes_scanned: usize,
    /// Files checked although parts of them did not parse.
    pub files_with_syntax_errors: usize,
    /// Bytes of the checked files inside syntax-error nodes (not analysed).
    pub syntax_error_bytes: usize,
    /// Functions and methods analysed (coverage).
    pub functions_analysed: usize,
    /// Findings of lower confidence tiers not shown (`--all` shows them).
    pub hidden_by_tier: usize,
    pub files_skipped: usize,
    /// Test files left out (by path).
    pub test_files_ignored: usize,
    /// Generated files left out (protobuf, "Code generated ... DO NOT EDIT").
    pub generated_files_ignored: usize,
    #[serde(skip)]
    pub elapsed: Duration,
    pub jobs: usize,
}

/// Everything a scan produced.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub findings: Vec<Finding>,
    pub skipped: Vec<Skipped>,
    /// Files left out on purpose (non-production or generated), with the rule that did it.
    pub left_out: Vec<Skipped>,
    pub stats: ScanStats,
}

/// What happened to one file.
#[derive(Debug)]
pub enum FileOutcome {
    Checked {
        findings: Vec<Finding>,
        lines: usize,
        bytes: usize,
        syntax_errors: bool,
        /// Bytes inside syntax-error nodes.
        error_bytes: usize,
        /// Functions/methods analysed.
        functions: usize,
        /// The file is (part of) a program's entry point, e.g. a C file defining `main`.
        is_program: bool,
        /// Facts for the project pass over write helpers (see [`rules::resolve_helpers`]).
        helpers: rules::HelperFacts,
        /// Facts for the project pass over `no-timeout` findings (see
        /// [`rules::ProjectTimeouts`]).
        timeouts: rules::TimeoutFacts,
        /// Python call-graph facts for the pass over operator-only waits (see [`crate::reach`]).
        reach: crate::reach::ReachFacts,
    },
    Skipped(String),
    /// Test/example/benchmark/tooling code, with the rule that left it out.
    IgnoredTest(String),
    /// Generated code, with the marker that showed it.
    IgnoredGenerated(String),
}

/// A parser per language, reused across files on one thread.
#[derive(Default)]
pub struct Parsers {
    parsers: Vec<(Lang, Parser)>,
}

impl std::fmt::Debug for Parsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parsers")
            .field(
                "languages",
                &self.parsers.iter().map(|p| p.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Parsers {
    fn get(&mut self, lang: Lang) -> Result<&mut Parser, AuditError> {
        if let Some(i) = self.parsers.iter().position(|(l, _)| *l == lang) {
            return Ok(&mut self.parsers[i].1);
        }
        let mut p = Parser::new();
        p.set_language(&lang.grammar())
            .map_err(|e| AuditError::Grammar {
                lang: lang.name(),
                message: e.to_string(),
            })?;
        self.parsers.push((lang, p));
        let last = self.parsers.len() - 1;
        Ok(&mut self.parsers[last].1)
    }
}

/// Bytes covered by ERROR/MISSING nodes.
fn error_bytes(root: Node<'_>) -> usize {
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if n.is_error() || n.is_missing() {
            total += n.byte_range().len().max(1);
            continue;
        }
        if n.has_error() {
            let mut c = n.walk();
            stack.extend(n.children(&mut c));
        }
    }
    total
}

/// Check one source text (already decoded). `path` is used for reports and for
/// path-based conventions (test files, entry points).
pub fn check_source(
    src: &str,
    lang: Lang,
    path: &str,
    opts: &ScanOptions,
    parsers: &mut Parsers,
) -> Result<FileOutcome, AuditError> {
    if !opts.include_tests {
        if let Some(why) = lang::non_production_reason(std::path::Path::new(path), lang) {
            return Ok(FileOutcome::IgnoredTest(why));
        }
    }
    check_text(src, lang, path, opts, parsers, false)
}

/// Check a decoded source text whose path was already judged. `explicit` files (named on
/// the command line) are checked even when they look generated.
fn check_text(
    src: &str,
    lang: Lang,
    path: &str,
    opts: &ScanOptions,
    parsers: &mut Parsers,
    explicit: bool,
) -> Result<FileOutcome, AuditError> {
    if !explicit {
        if let Some(why) = lang::generated_reason(std::path::Path::new(path), src) {
            return Ok(FileOutcome::IgnoredGenerated(why));
        }
        if !opts.include_tests && lang == Lang::Go && crate::production::go_build_ignored(src) {
            return Ok(FileOutcome::IgnoredTest(
                "Go file excluded from production builds (`//go:build ignore`, or a test/fuzz/tools build tag)".into(),
            ));
        }
        if !opts.include_tests && lang == Lang::Java {
            if let Some(toolkit) = crate::production::java_gui_import(src) {
                return Ok(FileOutcome::IgnoredTest(format!(
                    "Java desktop GUI code (imports `{toolkit}`)"
                )));
            }
            if let Some(phrase) = crate::test_support::java_test_only_doc(src) {
                return Ok(FileOutcome::IgnoredTest(format!(
                    "Java class documented as test support (`{phrase}`)"
                )));
            }
        }
    }
    let neutralized;
    let orig = src;
    let src = if lang.is_c_family() {
        neutralized = opts.c_macros.neutralize(src);
        neutralized.as_str()
    } else {
        src
    };
    let parser = parsers.get(lang)?;
    let Some(tree) = parser.parse(src, None) else {
        parser.reset();
        return Ok(FileOutcome::Skipped(
            "the parser gave up on this file".into(),
        ));
    };
    let root = tree.root_node();
    let mut syntax_errors = false;
    let mut bad = 0;
    if root.has_error() {
        syntax_errors = true;
        bad = error_bytes(root);
        let frac = bad as f64 / src.len().max(1) as f64;
        if frac > opts.max_error_fraction {
            return Ok(FileOutcome::Skipped(format!(
                "does not parse as {}: {:.0}% of the file is syntax errors",
                lang.name(),
                frac * 100.0
            )));
        }
    }
    let (findings, facts, helpers, timeouts) =
        rules::check_tree(&tree, src, orig, lang, path, !opts.include_tests);
    let reach = crate::reach::file_facts(root, src, lang);
    let lines = src.bytes().filter(|b| *b == b'\n').count()
        + usize::from(!src.is_empty() && !src.ends_with('\n'));
    Ok(FileOutcome::Checked {
        findings,
        lines,
        bytes: src.len(),
        syntax_errors,
        error_bytes: bad,
        functions: facts.functions,
        is_program: facts.is_program,
        helpers,
        timeouts,
        reach,
    })
}

/// Read, decode and check one file.
pub fn check_file(
    file: &SourceFile,
    opts: &ScanOptions,
    parsers: &mut Parsers,
) -> Result<FileOutcome, AuditError> {
    if !opts.include_tests && !file.explicit {
        if let Some(why) = &file.non_production {
            return Ok(FileOutcome::IgnoredTest(why.clone()));
        }
    }
    match std::fs::metadata(&file.path) {
        Ok(m) if m.len() > opts.max_file_size => {
            return Ok(FileOutcome::Skipped(format!(
                "larger than the {} byte limit ({} bytes); likely generated",
                opts.max_file_size,
                m.len()
            )))
        }
        Ok(_) => {}
        Err(e) => return Ok(FileOutcome::Skipped(format!("cannot read: {e}"))),
    }
    let bytes = match std::fs::read(&file.path) {
        Ok(b) => b,
        Err(e) => return Ok(FileOutcome::Skipped(format!("cannot read: {e}"))),
    };
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return Ok(FileOutcome::Skipped(
            "binary file (contains NUL bytes)".into(),
        ));
    }
    let src = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            return Ok(FileOutcome::Skipped(format!(
                "not valid UTF-8 (first invalid byte at offset {at})"
            )));
        }
    };
    check_text(&src, file.lang, &file.display, opts, parsers, file.explicit)
}

/// Display paths' common directory prefix (ending in `/`, or empty).
fn common_dir(files: &[SourceFile]) -> &str {
    let Some(first) = files.first() else {
        return "";
    };
    let mut len = first.display.rfind('/').map_or(0, |i| i + 1);
    for f in files {
        while len > 0 && !(f.display.len() > len && f.display[..len] == first.display[..len]) {
            len = first.display[..len - 1].rfind('/').map_or(0, |i| i + 1);
        }
    }
    &first.display[..len]
}

/// Entries that make a directory a project's root: a version-control directory or a
/// build file.
const PROJECT_MARKERS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    ".bzr",
    "go.mod",
    "Cargo.toml",
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "settings.gradle",
    "settings.gradle.kts",
    "build.xml",
    "setup.py",
    "pyproject.toml",
    "package.json",
    "CMakeLists.txt",
    "meson.build",
    "configure.ac",
    "configure.in",
    "configure",
    "Makefile",
    "GNUmakefile",
    "SConstruct",
    "WORKSPACE",
    "MODULE.bazel",
];

/// The common directory is itself one project's root (`ftvm audit /srv/myproj`): a few
/// `stat`s, once per run.
fn is_project_root(common: &str) -> bool {
    let dir = std::path::Path::new(if common.is_empty() { "." } else { common });
    PROJECT_MARKERS
        .iter()
        .any(|m| std::fs::symlink_metadata(dir.join(m)).is_ok())
}

/// The project a file belongs to: the whole audit when the common directory is a
/// project's root (`whole`); otherwise the first directory below the common directory (one
/// archive of a corpus), or the common directory itself for a file directly in it.
/// Markers below the common directory are not looked at: nested build files (a
/// `CMakeLists.txt` per directory, Maven modules, Cargo workspaces) would split one
/// project into modules whose helpers call each other.
fn project_key<'s>(display: &'s str, common: &str, whole: bool) -> &'s str {
    if whole {
        return &display[..common.len()];
    }
    let rest = display.get(common.len()..).unwrap_or("");
    match rest.find('/') {
        Some(i) => &display[..common.len() + i],
        None => &display[..common.len()],
    }
}

/// The name of the audited directory itself on disk (`ftvm audit .` inside a project), for
/// [`project_dir_name`]: one `canonicalize` per pass.
fn audited_dir_name(common: &str) -> String {
    std::fs::canonicalize(if common.is_empty() { "." } else { common })
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The name of a project's directory: the last component of its key ([`project_key`]), or the
/// audited directory's own name (`audited`, from [`audited_dir_name`]) when the key is the
/// audited directory itself.
fn project_dir_name<'k>(key: &'k str, audited: &'k str) -> &'k str {
    match key.rsplit('/').next().unwrap_or(key) {
        "" | "." => audited,
        d => d,
    }
}

/// The project pass over `no-timeout` findings: drop those in a project's top-level
/// script directories or root-level scripts, and those a fact found in another file of the
/// same project bounds (a process default socket timeout, a session class with a timeout).
fn drop_bounded_waits(
    files: &[SourceFile],
    outcomes: &mut [(usize, FileOutcome)],
    common: &str,
    whole: bool,
) {
    let mut by_project: std::collections::HashMap<&str, rules::ProjectTimeouts> =
        std::collections::HashMap::new();
    for (i, o) in outcomes.iter() {
        if let FileOutcome::Checked { timeouts, .. } = o {
            if timeouts.sets_default_socket_timeout || timeouts.defines_timeout_session {
                let key = project_key(&files[*i].display, common, whole);
                by_project.entry(key).or_default().add(timeouts);
            }
        }
    }
    let whole_dir = audited_dir_name(common);
    for (i, o) in outcomes.iter_mut() {
        let FileOutcome::Checked {
            findings, timeouts, ..
        } = o
        else {
            continue;
        };
        if !findings
            .iter()
            .any(|f| crate::catalog::is_wait_without_timeout(f.rule))
        {
            continue;
        }
        let display = &files[*i].display;
        let key = project_key(display, common, whole);
        let rel = display
            .get(key.len()..)
            .unwrap_or("")
            .trim_start_matches('/');
        // Script places are judged only for files found by walking a directory (a file named
        // on the command line is always audited), and a file at a project's root only where
        // the project's directory is known (an archive below the common directory, or a
        // marked project root).
        let known_root = whole || key.len() > common.len();
        let project_dir = project_dir_name(key, &whole_dir);
        let script = !files[*i].explicit
            && (rules::is_script_path(rel)
                || (known_root
                    && !rel.contains('/')
                    && rules::is_root_script(project_dir, rel, timeouts.runs_as_script)));
        let project = by_project.get(key).copied().unwrap_or_default();
        findings.retain(|f| {
            !crate::catalog::is_wait_without_timeout(f.rule)
                || !(script
                    || timeouts
                        .conditional
                        .iter()
                        .any(|(l, b)| *l == f.line && project.bounds(*b)))
        });
    }
}

/// The project pass over `request-without-timeout` findings: drop those only an operator's
/// one-shot command (or nothing) reaches, judged on the call graph of the whole project
/// ([`crate::reach`]). Only where the project's directory is known and is a project's root,
/// and never in a file named on the command line.
fn drop_operator_only_requests(
    files: &[SourceFile],
    outcomes: &mut [(usize, FileOutcome)],
    common: &str,
    whole: bool,
) {
    use crate::catalog::REQUEST_WITHOUT_TIMEOUT;
    use std::collections::{HashMap, HashSet};
    let wanted: HashSet<&str> = outcomes
        .iter()
        .filter(|(i, o)| {
            !files[*i].explicit
                && matches!(o, FileOutcome::Checked { findings, .. }
                    if findings.iter().any(|f| f.rule == REQUEST_WITHOUT_TIMEOUT))
        })
        .map(|(i, _)| project_key(&files[*i].display, common, whole))
        .collect();
    if wanted.is_empty() {
        return;
    }
    // project -> its Python files (indices into `outcomes`), each with its path in the project
    let mut projects: HashMap<&str, Vec<(usize, &str)>> = HashMap::new();
    for (oi, (i, o)) in outcomes.iter().enumerate() {
        let f = &files[*i];
        let key = project_key(&f.display, common, whole);
        if f.lang == Lang::Python
            && matches!(o, FileOutcome::Checked { .. })
            && wanted.contains(key)
        {
            let rel = f
                .display
                .get(key.len()..)
                .unwrap_or("")
                .trim_start_matches('/');
            projects.entry(key).or_default().push((oi, rel));
        }
    }
    let whole_dir = audited_dir_name(common);
    let mut drops: Vec<(usize, usize)> = Vec::new();
    for (key, members) in &projects {
        let Some(&(first, rel)) = members.first() else {
            continue;
        };
        // The project's directory on disk: the first file's path without its part in the project.
        let path = files[outcomes[first].0].path.to_string_lossy();
        let Some(dir) = path.strip_suffix(rel) else {
            continue;
        };
        let known_root = whole || key.len() > common.len();
        if !known_root || !is_project_root(dir) {
            continue;
        }
        let rels: Vec<&str> = members.iter().map(|(_, r)| *r).collect();
        let build = crate::reach::read_build_files(std::path::Path::new(dir), &rels);
        if crate::reach::is_client_library(project_dir_name(key, &whole_dir), &build) {
            continue;
        }
        let graph_files: Vec<crate::reach::ProjectFile<'_>> = members
            .iter()
            .filter_map(|(oi, rel)| match &outcomes[*oi].1 {
                FileOutcome::Checked { reach, .. } => {
                    Some(crate::reach::ProjectFile { rel, facts: reach })
                }
                _ => None,
            })
            .collect();
        if crate::reach::exports_all(&graph_files) {
            continue;
        }
        let graph = crate::reach::ProjectGraph::new(graph_files, &build);
        for (k, (oi, _)) in members.iter().enumerate() {
            let (i, FileOutcome::Checked { findings, .. }) = &outcomes[*oi] else {
                continue;
            };
            if files[*i].explicit {
                continue;
            }
            for f in findings
                .iter()
                .filter(|f| f.rule == REQUEST_WITHOUT_TIMEOUT)
            {
                if graph.reach(k, f.line) == crate::reach::Reach::OperatorOnly {
                    drops.push((*oi, f.line));
                }
            }
        }
    }
    for (oi, line) in drops {
        if let FileOutcome::Checked { findings, .. } = &mut outcomes[oi].1 {
            findings.retain(|f| !(f.rule == REQUEST_WITHOUT_TIMEOUT && f.line == line));
        }
    }
}

/// Check all files with `opts.jobs` threads; results are in file order.
pub fn scan(files: &[SourceFile], opts: &ScanOptions) -> Result<ScanResult, AuditError> {
    let start = Instant::now();
    let jobs = opts.jobs.clamp(1, files.len().max(1));
    let next = AtomicUsize::new(0);
    let worker = || -> Result<Vec<(usize, FileOutcome)>, AuditError> {
        let mut parsers = Parsers::default();
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(f) = files.get(i) else {
                return Ok(out);
            };
            out.push((i, check_file(f, opts, &mut parsers)?));
        }
    };
    let mut outcomes: Vec<(usize, FileOutcome)> = if jobs == 1 {
        worker()?
    } else {
        std::thread::scope(|s| -> Result<Vec<(usize, FileOutcome)>, AuditError> {
            let mut handles = Vec::new();
            for _ in 0..jobs {
                let h = std::thread::Builder::new()
                    .spawn_scoped(s, worker)
                    .map_err(AuditError::Thread)?;
                handles.push(h);
            }
            let mut all = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(r) => all.extend(r?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok(all)
        })?
    };
    outcomes.sort_by_key(|(i, _)| *i);
    // C, C++ and Rust programs are split over many files; only one defines `main`. Exits in any
    // file of a directory that holds a `main` belong to the program, not to a library.
    let program_dirs: std::collections::HashSet<&std::path::Path> = outcomes
        .iter()
        .filter(|(i, o)| {
            (files[*i].lang.is_c_family() || files[*i].lang == Lang::Rust)
                && matches!(
                    o,
                    FileOutcome::Checked {
                        is_program: true,
                        ..
                    }
                )
        })
        .filter_map(|(i, _)| files[*i].path.parent())
        .collect();
    // Write helpers defined in one file and called on a state path in another, resolved per
    // project (the audit when its common directory is a project root, else the top
    // directory below it) and language.
    let common = common_dir(files);
    let whole = is_project_root(common);
    let mut helper_facts = Vec::new();
    for (i, o) in outcomes.iter_mut() {
        if let FileOutcome::Checked { helpers, .. } = o {
            if !helpers.writers.is_empty() || !helpers.sites.is_empty() {
                let key = project_key(&files[*i].display, common, whole);
                helper_facts.push((key, files[*i].lang, std::mem::take(helpers)));
            }
        }
    }
    let mut helper_findings: std::collections::HashMap<String, Vec<Finding>> =
        std::collections::HashMap::new();
    for f in rules::resolve_helpers(helper_facts) {
        helper_findings.entry(f.path.clone()).or_default().push(f);
    }
    drop_bounded_waits(files, &mut outcomes, common, whole);
    drop_operator_only_requests(files, &mut outcomes, common, whole);
    let mut result = ScanResult::default();
    for (i, outcome) in outcomes {
        match outcome {
            FileOutcome::Checked {
                mut findings,
                lines,
                bytes,
                syntax_errors,
                error_bytes,
                functions,
                ..
            } => {
                result.stats.syntax_error_bytes += error_bytes;
                result.stats.functions_analysed += functions;
                if (files[i].lang.is_c_family() || files[i].lang == Lang::Rust)
                    && files[i]
                        .path
                        .parent()
                        .is_some_and(|d| program_dirs.contains(d))
                {
                    findings.retain(|f| {
                        f.rule != crate::catalog::EXIT_IN_LIBRARY
                            && f.rule != crate::catalog::CATCH_AND_ABORT
                    });
                }
                result.stats.files_scanned += 1;
                result.stats.lines_scanned += lines;
                result.stats.bytes_scanned += bytes;
                result.stats.files_with_syntax_errors += usize::from(syntax_errors);
                if let Some(mine) = helper_findings.remove(&files[i].display) {
                    for h in mine {
                        if !findings
                            .iter()
                            .any(|f| f.rule == h.rule && f.line == h.line)
                        {
                            findings.push(h);
                        }
                    }
                }
                result.findings.extend(findings);
            }
            FileOutcome::Skipped(reason) => {
                result.stats.files_skipped += 1;
                result.skipped.push(Skipped {
                    path: files[i].display.clone(),
                    reason,
                });
            }
            FileOutcome::IgnoredTest(reason) => {
                result.stats.test_files_ignored += 1;
                result.left_out.push(Skipped {
                    path: files[i].display.clone(),
                    reason: format!("not production code: {reason}"),
                });
            }
            FileOutcome::IgnoredGenerated(reason) => {
                result.stats.generated_files_ignored += 1;
                result.left_out.push(Skipped {
                    path: files[i].display.clone(),
                    reason: format!("generated: {reason}"),
                });
            }
        }
    }
    result.stats.elapsed = start.elapsed();
    result.stats.jobs = jobs;
    Ok(result)
}

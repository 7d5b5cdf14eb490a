//! `--explain-skips` for what a `.gitignore` or `.ignore` rule hides. The walk (the
//! `ignore` crate, as ripgrep) drops such directories and files silently. Git applies the
//! rules to untracked files only, so a name pattern meant for a built binary (`heketi`)
//! also hides a tracked source directory of that name (`client/api/python/heketi/`) from
//! the audit. The walk keeps honouring the rules (they mostly hide build output and
//! vendored trees); this second walk, run only when the user asks why things were left
//! out, names the rule and the file it comes from.

use crate::lang::Lang;
use crate::walk::{display_path, Skipped};
use globset::GlobSet;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;
use std::path::{Path, PathBuf};

/// Directories and source files below the directory `roots` that an ignore rule hides
/// (hidden entries, symbolic links and `excludes` are not looked into).
pub fn explain(roots: &[PathBuf], excludes: &GlobSet) -> Vec<Skipped> {
    let mut out = Vec::new();
    for root in roots.iter().filter(|r| r.is_dir()) {
        let mut stack = Vec::new();
        visit(root, root, excludes, &mut stack, &mut out);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The matcher of `dir`'s own `.gitignore` and `.ignore` files, if it has any.
fn matcher(dir: &Path) -> Option<Gitignore> {
    let files: Vec<PathBuf> = [".gitignore", ".ignore"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    if files.is_empty() {
        return None;
    }
    let mut b = GitignoreBuilder::new(dir);
    for f in &files {
        // A partly invalid file still yields its valid rules, as in the walk.
        let _ = b.add(f);
    }
    b.build().ok()
}

fn visit(
    root: &Path,
    dir: &Path,
    excludes: &GlobSet,
    stack: &mut Vec<Gitignore>,
    out: &mut Vec<Skipped>,
) {
    let pushed = match matcher(dir) {
        Some(m) => {
            stack.push(m);
            true
        }
        None => false,
    };
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        let rel = path.strip_prefix(root).unwrap_or(&path);
        if e.file_name().to_string_lossy().starts_with('.')
            || ft.is_symlink()
            || excludes.is_match(rel)
            || excludes.is_match(&path)
        {
            continue;
        }
        let is_dir = ft.is_dir();
        if !is_dir && Lang::from_path(&path).is_none() {
            continue;
        }
        // The deepest ignore file that says anything decides (a `!pattern` re-includes).
        let hit = stack
            .iter()
            .rev()
            .find_map(|m| match m.matched(&path, is_dir) {
                Match::None => None,
                Match::Ignore(g) => Some(Some(g)),
                Match::Whitelist(_) => Some(None),
            });
        match hit {
            Some(Some(g)) => {
                let from = g.from().map(display_path).unwrap_or_default();
                out.push(Skipped {
                    path: display_path(&path),
                    reason: format!(
                        "ignore rule `{}` in {} (it hides tracked sources too; name the {} to audit it)",
                        g.original(),
                        from,
                        if is_dir { "directory" } else { "file" }
                    ),
                });
            }
            _ if is_dir => visit(root, &path, excludes, stack, out),
            _ => {}
        }
    }
    if pushed {
        stack.pop();
    }
}

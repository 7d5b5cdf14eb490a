//! Finding the files to audit: a gitignore-aware walk (the `ignore` crate, from ripgrep)
//! with path excludes from the config.

use crate::error::AuditError;
use crate::lang::Lang;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::path::{Path, PathBuf};

/// A file selected for auditing.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Path as shown in reports (`/` separators, relative to the working directory when it
    /// was given relative).
    pub display: String,
    pub lang: Lang,
}

/// A file or directory that could not be audited, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Compile exclude globs (`vendor/**`, `**/*.pb.go`).
pub fn build_excludes(patterns: &[String]) -> Result<GlobSet, AuditError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| AuditError::BadExclude {
            pattern: p.clone(),
            message: e.to_string(),
        })?;
        b.add(glob);
        // `vendor/**` should also match `./x/vendor/...`: add a `**/` variant for relative patterns.
        if !p.starts_with("**/") && !p.starts_with('/') {
            let any = format!("**/{p}");
            let glob = Glob::new(&any).map_err(|e| AuditError::BadExclude {
                pattern: p.clone(),
                message: e.to_string(),
            })?;
            b.add(glob);
        }
    }
    b.build().map_err(|e| AuditError::BadExclude {
        pattern: patterns.join(", "),
        message: e.to_string(),
    })
}

fn display_path(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}

/// Walk `roots` (files or directories), honouring .gitignore/.ignore files and hidden-file
/// conventions, and return the source files in a stable (sorted) order plus the entries
/// that could not be walked.
pub fn collect(
    roots: &[PathBuf],
    excludes: &GlobSet,
) -> Result<(Vec<SourceFile>, Vec<Skipped>), AuditError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|source| AuditError::Path {
            path: root.clone(),
            source,
        })?;
        if meta.is_file() {
            match Lang::from_path(root) {
                Some(lang) => files.push(SourceFile {
                    path: root.clone(),
                    display: display_path(root),
                    lang,
                }),
                None => skipped.push(Skipped {
                    path: display_path(root),
                    reason: "not a supported source language".into(),
                }),
            }
            continue;
        }
        let root_for_filter = root.clone();
        let ex = excludes.clone();
        let walker = ignore::WalkBuilder::new(root)
            .require_git(false)
            .follow_links(false)
            .filter_entry(move |e| {
                let rel = e.path().strip_prefix(&root_for_filter).unwrap_or(e.path());
                !(ex.is_match(rel) || ex.is_match(e.path()))
            })
            .build();
        for entry in walker {
            match entry {
                Ok(e) => {
                    if !e.file_type().is_some_and(|t| t.is_file()) {
                        continue;
                    }
                    if let Some(lang) = Lang::from_path(e.path()) {
                        files.push(SourceFile {
                            path: e.path().to_path_buf(),
                            display: display_path(e.path()),
                            lang,
                        });
                    }
                }
                Err(err) => {
                    let path = match &err {
                        ignore::Error::WithPath { path, .. } => display_path(path),
                        _ => display_path(root),
                    };
                    skipped.push(Skipped {
                        path,
                        reason: format!("cannot walk: {err}"),
                    });
                }
            }
        }
    }
    files.sort_by(|a, b| a.display.cmp(&b.display));
    files.dedup_by(|a, b| a.display == b.display);
    Ok((files, skipped))
}

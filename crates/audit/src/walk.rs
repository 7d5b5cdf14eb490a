//! Finding the files to audit: a gitignore-aware walk (the `ignore` crate, from ripgrep)
//! with path excludes from the config.

use crate::error::AuditError;
use crate::lang::Lang;
use crate::production::Classifier;
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
    /// Named on the command line: always audited (no test, generated or exclude filter).
    pub explicit: bool,
    /// Why the file is test/example/benchmark/tooling code (judged below the audit root and
    /// from build metadata), or `None` for production code.
    pub non_production: Option<String>,
}

impl SourceFile {
    /// A file to audit as production code (not named on the command line).
    pub fn new(path: PathBuf, display: String, lang: Lang) -> SourceFile {
        SourceFile {
            path,
            display,
            lang,
            explicit: false,
            non_production: None,
        }
    }
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

/// A path as reports show it: `/` separators, no leading `./`.
pub(crate) fn display_path(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}

/// Walk `roots` (files or directories), honouring .gitignore/.ignore files and hidden-file
/// conventions, and return the source files in a stable (sorted) order plus the entries
/// that could not be walked.
pub fn collect(
    roots: &[PathBuf],
    excludes: &GlobSet,
    production_dirs: &[String],
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
                    explicit: true,
                    ..SourceFile::new(root.clone(), display_path(root), lang)
                }),
                None => skipped.push(Skipped {
                    path: display_path(root),
                    reason: "not a supported source language".into(),
                }),
            }
            continue;
        }
        let mut classifier = Classifier::new(root).with_production_dirs(production_dirs);
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
                    if e.path_is_symlink() {
                        let target = std::fs::read_link(e.path())
                            .map(|t| t.display().to_string())
                            .unwrap_or_else(|_| "?".into());
                        skipped.push(Skipped {
                            path: display_path(e.path()),
                            reason: format!(
                                "symbolic link to `{target}`, not followed (audit the target by naming it)"
                            ),
                        });
                        continue;
                    }
                    if !e.file_type().is_some_and(|t| t.is_file()) {
                        continue;
                    }
                    if let Some(lang) = Lang::from_path(e.path()) {
                        let non_production = classifier.reason(e.path(), lang);
                        files.push(SourceFile {
                            non_production,
                            ..SourceFile::new(e.path().to_path_buf(), display_path(e.path()), lang)
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
    files.sort_by(|a, b| a.display.cmp(&b.display).then(b.explicit.cmp(&a.explicit)));
    // A file both named and found under a named directory: keep the named one (sorted first).
    files.dedup_by(|later, first| later.display == first.display);
    Ok((files, skipped))
}

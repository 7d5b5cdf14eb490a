//! ftvm-audit: finds code patterns that hurt fault tolerance.
//!
//! `ftvm audit PATH...` walks a source tree (respecting .gitignore), parses C, C++, Rust,
//! Go, Python and Java with tree-sitter, and runs AST rules grouped in six categories:
//! error handling, crash-prone calls, waiting without timeouts, retrying, durability, and
//! failover-hostile state. Each finding says why it hurts and how to fix it. Output is
//! text, JSON or SARIF 2.1.0. See `docs/audit-rules.md`.

pub mod baseline;
pub mod bench;
pub mod catalog;
pub mod cli;
pub mod cmacro;
pub mod config;
pub mod error;
pub mod finding;
pub mod fix;
pub mod fix_c;
pub mod gitignored;
pub mod lang;
pub mod production;
pub mod reach;
pub mod report;
pub mod rules;
pub mod scan;
pub mod syntax;
pub mod test_support;
pub mod walk;

pub use error::AuditError;

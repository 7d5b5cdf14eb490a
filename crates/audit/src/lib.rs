//! ftvm-audit

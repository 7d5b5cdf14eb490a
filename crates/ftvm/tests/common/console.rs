//! Reading a guest's console file while the VM still writes it.

use std::path::Path;

use super::seq_of;

/// The console file `DIR/NAME` as text so far; empty while it does not exist yet.
pub fn read_console(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// The complete lines of console text: a last line without its newline is still coming
/// and left out.
pub fn complete_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().map(String::from).collect();
    if !text.ends_with('\n') {
        v.pop();
    }
    v
}

/// The highest `seq=` number among the complete lines of `text` (0 without any).
pub fn last_seq(text: &str) -> u64 {
    complete_lines(text)
        .iter()
        .filter_map(|l| seq_of(l))
        .max()
        .unwrap_or(0)
}

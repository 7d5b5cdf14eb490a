//! Print where tree-sitter found syntax errors in files (developer aid for the C macro
//! list): one line per ERROR node with the first line of its text.
use ftvm_audit::lang::Lang;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let macros = ftvm_audit::cmacro::MacroList::default();
    for path in std::env::args().skip(1) {
        let Some(lang) = Lang::from_path(Path::new(&path)) else {
            continue;
        };
        let Ok(src) = std::fs::read_to_string(&path) else {
            continue;
        };
        let src = if lang.is_c_family() {
            macros.neutralize(&src)
        } else {
            src
        };
        let mut parser = tree_sitter::Parser::new();
        parser.set_language(&lang.grammar())?;
        let Some(tree) = parser.parse(&src, None) else {
            continue;
        };
        let mut stack = vec![tree.root_node()];
        while let Some(n) = stack.pop() {
            if n.is_error() || n.is_missing() {
                let t = &src[n.byte_range()];
                let first = t.lines().next().unwrap_or("").trim();
                println!(
                    "{path}:{}: {} {}",
                    n.start_position().row + 1,
                    n.byte_range().len(),
                    first.chars().take(80).collect::<String>()
                );
                continue;
            }
            if n.has_error() {
                let mut c = n.walk();
                stack.extend(n.children(&mut c));
            }
        }
    }
    Ok(())
}

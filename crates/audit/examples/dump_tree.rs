//! Print the tree-sitter syntax tree of a file (developer aid for writing rules).
use ftvm_audit::lang::Lang;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: dump_tree FILE")?;
    let lang = Lang::from_path(Path::new(&path)).ok_or("unknown language")?;
    let src = std::fs::read_to_string(&path)?;
    let mut parser = tree_sitter::Parser::new();
    parser.set_language(&lang.grammar())?;
    let tree = parser.parse(&src, None).ok_or("parse failed")?;
    let mut cursor = tree.walk();
    let mut depth = 0usize;
    loop {
        let n = cursor.node();
        let field = cursor
            .field_name()
            .map(|f| format!("{f}: "))
            .unwrap_or_default();
        let text = if n.child_count() == 0 {
            format!(" {:?}", &src[n.byte_range()])
        } else {
            String::new()
        };
        if n.is_named() {
            println!("{}{}{}{}", "  ".repeat(depth), field, n.kind(), text);
        }
        if cursor.goto_first_child() {
            depth += 1;
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return Ok(());
            }
            depth -= 1;
        }
    }
}

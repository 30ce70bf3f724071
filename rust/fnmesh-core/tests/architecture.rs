//! The shape of the crate's source, checked: no import circle between its top-level modules, and
//! no file too long to read.
//!
//! The graph has one node per top-level module (`engine`, `http`, `cron`, `queue`, `protocol`,
//! ...; a folder counts as one module) and an edge `a -> b` when a file of `a` names `b` through a
//! `crate::b` path (`use crate::b::X`, `crate::b::f()`, `use crate::{b::X, ...}`), a `super::`
//! path climbing out of `a` into `b`, or a name the crate root re-exports from `b`
//! (`crate::Error` is `error`'s). A file using its own folder's items is no edge. Comments and
//! string literals are skipped, so a doc link is no import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest file allowed under `src/`.
const MAX_LINES: usize = 1200;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's module path from its place under `src/` (`engine/mod.rs` is `["engine"]`,
/// `queue/service.rs` is `["queue", "service"]`, `lib.rs` is `[]`).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The source with comments, string and character literals blanked out (newlines kept, so that
/// line numbers stay right).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident_char_before(&chars, i)
        {
            // A raw string r"..." or r#"..."#: its end is a quote and as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            out.extend(chars[i..j.min(chars.len())].iter().map(|&c| blank(c)));
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `'x'`, `'\n'`, `'\u{1F600}'` rather than a lifetime `'a`.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

/// One use of another module: where, and the top-level module named.
struct Use {
    line: usize,
    module: String,
}

/// The top-level modules a file names, given its module path, the crate's top-level modules
/// and the names the crate root re-exports (name -> module).
fn uses_in(
    code: &str,
    file_module: &[String],
    modules: &BTreeSet<String>,
    root_names: &BTreeMap<String, String>,
) -> Vec<Use> {
    let tokens = tokenize(code);
    let mut found = Vec::new();
    // Inline modules (`mod tests { ... }`) deepen the path `super::` climbs from.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let name_of = |segment: &str| -> Option<String> {
        if modules.contains(segment) {
            Some(segment.to_owned())
        } else {
            root_names.get(segment).cloned()
        }
    };
    while i < tokens.len() {
        let (line, tok) = (tokens[i].0, tokens[i].1.as_str());
        match tok {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t.1 == "{") => {
                inline.push((tokens[i + 1].1.clone(), depth));
            }
            "crate" | "super" if tokens.get(i + 1).is_some_and(|t| t.1 == "::") => {
                // Where the path lands: `crate` is the root; each `super` climbs one level.
                let mut here: Vec<String> = file_module.to_vec();
                here.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut j = i;
                if tok == "crate" {
                    here.clear();
                    j += 2;
                } else {
                    while tokens.get(j).is_some_and(|t| t.1 == "super")
                        && tokens.get(j + 1).is_some_and(|t| t.1 == "::")
                    {
                        here.pop();
                        j += 2;
                    }
                }
                let mut targets = Vec::new();
                if let Some(top) = here.first() {
                    targets.push(top.clone());
                } else if tokens.get(j).is_some_and(|t| t.1 == "{") {
                    // `crate::{a::X, b}`: the first segment of each item.
                    let mut level = 0;
                    let mut expect_item = true;
                    for t in &tokens[j..] {
                        match t.1.as_str() {
                            "{" => {
                                level += 1;
                                if level == 1 {
                                    expect_item = true;
                                    continue;
                                }
                            }
                            "}" => {
                                level -= 1;
                                if level == 0 {
                                    break;
                                }
                            }
                            "," if level == 1 => {
                                expect_item = true;
                                continue;
                            }
                            _ => {}
                        }
                        if expect_item && level == 1 {
                            targets.extend(name_of(&t.1));
                        }
                        expect_item = false;
                    }
                } else if let Some(t) = tokens.get(j) {
                    targets.extend(name_of(&t.1));
                }
                let own = file_module.first();
                for target in targets {
                    if Some(&target) != own {
                        found.push(Use {
                            line,
                            module: target,
                        });
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Identifiers, `::`, and single punctuation characters, each with its line.
fn tokenize(code: &str) -> Vec<(usize, String)> {
    let mut tokens = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_alphanumeric() || c == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push((n + 1, chars[start..i].iter().collect()));
            } else if c == ':' && chars.get(i + 1) == Some(&':') {
                tokens.push((n + 1, "::".to_owned()));
                i += 2;
            } else {
                if !c.is_whitespace() {
                    tokens.push((n + 1, c.to_string()));
                }
                i += 1;
            }
        }
    }
    tokens
}

/// Names the crate root re-exports from a module: `pub use error::{Error, Result};` maps
/// `Error` and `Result` to `error`.
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let code = code_only(lib);
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(path) = statement.strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim().trim_start_matches("crate::");
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        let rest = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for item in rest.split(',') {
            let item = item.trim();
            let name = match item.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => item.rsplit("::").next().unwrap_or(item).trim(),
            };
            if !name.is_empty() {
                names.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    names
}

struct Source {
    relative: PathBuf,
    text: String,
}

fn sources() -> Vec<Source> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|path| Source {
            relative: path.strip_prefix(&src).expect("under src").to_path_buf(),
            text: std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
        })
        .collect()
}

/// Edges `from -> to`, each with the first place that makes it.
fn module_graph(sources: &[Source]) -> BTreeMap<String, BTreeMap<String, String>> {
    let modules: BTreeSet<String> = sources
        .iter()
        .filter_map(|s| module_path(&s.relative).first().cloned())
        .collect();
    let lib = sources
        .iter()
        .find(|s| s.relative == Path::new("lib.rs"))
        .expect("src/lib.rs");
    let root_names = root_reexports(&lib.text, &modules);
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for source in sources {
        let path = module_path(&source.relative);
        let Some(top) = path.first() else {
            continue; // the crate root declares every module
        };
        let edges = graph.entry(top.clone()).or_default();
        for u in uses_in(&code_only(&source.text), &path, &modules, &root_names) {
            edges
                .entry(u.module)
                .or_insert_with(|| format!("src/{}:{}", source.relative.display(), u.line));
        }
    }
    graph
}

/// A cycle of the graph, if any, as the list of its modules (first repeated at the end).
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = stack.iter().position(|n| n == next).expect("on the stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let graph = module_graph(&sources());
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("  {} -> {}  ({})", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import circle between top-level modules of fnmesh-core:\n{}",
            steps.join("\n")
        );
    }
}

#[test]
fn no_source_file_above_the_line_limit() {
    let long: Vec<String> = sources()
        .iter()
        .map(|s| (s.relative.display().to_string(), s.text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(path, lines)| format!("  src/{path}: {lines} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "files above {MAX_LINES} lines (split them by job):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_sees_edges_and_circles() {
    // A tiny crate in memory: `a` uses `b` (grouped import), `b` uses `a` through `super::`.
    let sources = vec![
        Source {
            relative: PathBuf::from("lib.rs"),
            text: "pub mod a;\npub mod b;\npub mod c;\npub use c::Thing;\n".into(),
        },
        Source {
            relative: PathBuf::from("a.rs"),
            text: "use crate::{b::X, Thing};\n// use crate::z::Y;\nconst S: &str = \"crate::z\";\n"
                .into(),
        },
        Source {
            relative: PathBuf::from("b/mod.rs"),
            text: "mod inner;\n".into(),
        },
        Source {
            relative: PathBuf::from("b/inner.rs"),
            text: "use super::super::a::Y;\nuse super::Z;\nmod tests { use super::*; }\n".into(),
        },
        Source {
            relative: PathBuf::from("c.rs"),
            text: "pub struct Thing;\n".into(),
        },
    ];
    let graph = module_graph(&sources);
    let edges = |m: &str| -> Vec<&str> {
        graph
            .get(m)
            .map(|e| e.keys().map(String::as_str).collect())
            .unwrap_or_default()
    };
    assert_eq!(edges("a"), ["b", "c"]);
    assert_eq!(edges("b"), ["a"]);
    assert!(edges("c").is_empty());
    let cycle = find_cycle(&graph).expect("a <-> b is a circle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 3);
}

#![allow(clippy::unwrap_used)]
//! The source layout's rules (issue 25), checked on every test run: no file over 700 lines and
//! no function over 100 lines in `src/` and `wasm/src/`, and no circle between source files.
//!
//! A circle is a chain of files each using the next (`crate::`, `super::` and `self::` paths,
//! re-exports followed to the file that defines the name) that comes back to its start. A module
//! and its own submodules count as one unit for this (a parent re-exports and starts its
//! children; a child uses what its parent holds), so only edges between files neither of which
//! contains the other are followed; the crate root is the exception (its code counts).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const MAX_FILE: usize = 700;
const MAX_FN: usize = 100;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text with comments, string and char literals blanked (newlines kept), so braces and
/// paths are only those of the code.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'#' | b'"')) && !ident_byte(prev(b, i))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let end = find(b, j + 1, &close).map_or(b.len(), |e| e + close.len());
            for &x in &b[i..end] {
                blank(&mut out, x);
            }
            i = end;
        } else if c == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                find(b, i + 2, b"'").map(|e| e + 1)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 3)
            } else {
                // A multi-byte char.
                let s = std::str::from_utf8(&b[i + 1..])
                    .ok()
                    .and_then(|s| s.chars().next());
                s.filter(|ch| ch.len_utf8() > 1 && b.get(i + 1 + ch.len_utf8()) == Some(&b'\''))
                    .map(|ch| i + 2 + ch.len_utf8())
            };
            match end {
                Some(e) => {
                    out.extend(std::iter::repeat_n(b' ', e - i));
                    i = e;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn prev(b: &[u8], i: usize) -> u8 {
    if i == 0 {
        b' '
    } else {
        b[i - 1]
    }
}

fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    (from..b.len().saturating_sub(pat.len() - 1)).find(|&k| &b[k..k + pat.len()] == pat)
}

/// Each function with a body: (name, first line, lines).
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let words: Vec<&str> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .collect();
        let Some(k) = words.iter().position(|w| *w == "fn") else {
            continue;
        };
        let Some(name) = words[k + 1..].iter().find(|w| !w.is_empty()) else {
            continue;
        };
        // Find the body's opening brace (or a `;`: no body) from the `fn` on.
        let start = line.find("fn ").unwrap_or(0);
        let mut depth = 0i32;
        let mut opened = false;
        let mut paren = 0i32;
        'scan: for (m, l) in lines.iter().enumerate().skip(n) {
            let from = if m == n { start } else { 0 };
            for ch in l[from..].chars() {
                match ch {
                    '(' | '[' | '<' if !opened => paren += i32::from(ch != '<'),
                    ')' | ']' if !opened => paren -= 1,
                    ';' if !opened && paren == 0 => break 'scan,
                    '{' => {
                        opened = true;
                        depth += 1;
                    }
                    '}' if opened => {
                        depth -= 1;
                        if depth == 0 {
                            out.push((name.to_string(), n + 1, m - n + 1));
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

#[test]
fn no_file_over_700_lines_and_no_function_over_100() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("wasm/src"), &mut files);
    assert!(files.len() > 40, "found only {} source files", files.len());
    let mut faults = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        let n = src.lines().count();
        if n > MAX_FILE {
            faults.push(format!("{rel}: {n} lines (at most {MAX_FILE})"));
        }
        for (name, line, len) in functions(&code_only(&src)) {
            if len > MAX_FN {
                faults.push(format!(
                    "{rel}:{line}: fn {name} is {len} lines (at most {MAX_FN})"
                ));
            }
        }
    }
    assert!(faults.is_empty(), "split these:\n{}", faults.join("\n"));
}

#[test]
fn the_checks_see_what_they_must() {
    let code = code_only("fn a() {\n let s = \"}\"; let c = '}';\n // }\n x\n}\nfn b();\n");
    assert_eq!(functions(&code), vec![("a".to_string(), 1, 5)]);
    let long = format!("fn f() {{\n{}}}\n", "x;\n".repeat(120));
    assert_eq!(functions(&code_only(&long))[0].2, 122);
    let m = Crate::read(&root().join("src"));
    assert!(m.files.contains_key(&vec![
        "node".to_string(),
        "serve".to_string(),
        "hub".to_string()
    ]));
    let edges = m.edges();
    let key = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    // upstream.rs names the hub through node's re-export; the edge lands on the hub's file.
    assert!(
        edges[&key("node::link::upstream")].contains(&key("node::serve::hub")),
        "{edges:?}"
    );
    assert!(edges[&key("apply")].contains(&key("applying")));
}

/// The module files of one crate, by module path.
struct Crate {
    files: BTreeMap<Vec<String>, String>,
}

impl Crate {
    fn read(src: &Path) -> Self {
        let mut paths = Vec::new();
        rust_files(src, &mut paths);
        let mut files = BTreeMap::new();
        for p in paths {
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut segs: Vec<String> = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(
                segs.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                segs.pop();
            }
            files.insert(segs, code_only(&std::fs::read_to_string(&p).unwrap()));
        }
        Crate { files }
    }

    /// The file defining `path` (absolute module segments then an item): follows re-exports.
    fn resolve(&self, path: &[String], depth: usize) -> Option<Vec<String>> {
        let k = (0..=path.len())
            .rev()
            .find(|&k| self.files.contains_key(&path[..k]))?;
        let module = path[..k].to_vec();
        let Some(item) = path.get(k) else {
            return Some(module);
        };
        if depth < 8 {
            for (target, _) in self
                .uses(&module)
                .into_iter()
                .filter(|(_, reexport)| *reexport)
            {
                if target.last() == Some(item) || target.last().is_some_and(|l| l == "*") {
                    let mut t = target.clone();
                    if t.last().is_some_and(|l| l == "*") {
                        t.pop();
                        t.push(item.clone());
                    }
                    if t != path {
                        if let Some(r) = self.resolve(&t, depth + 1) {
                            if r != module || target.last() == Some(item) {
                                return Some(r);
                            }
                        }
                    }
                }
            }
        }
        Some(module)
    }

    /// The crate paths `module`'s file names, made absolute, each with whether it is a
    /// re-export (`pub use` / `pub(crate) use`).
    fn uses(&self, module: &[String]) -> Vec<(Vec<String>, bool)> {
        let code = &self.files[module];
        let b = code.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let at_word = i == 0 || !ident_byte(b[i - 1]) && b[i - 1] != b':';
            let head = ["crate::", "super::", "self::"]
                .into_iter()
                .find(|h| code[i..].starts_with(h));
            let bare_use = at_word && code[i..].starts_with("use ");
            if !(at_word && (head.is_some() || bare_use)) {
                i += 1;
                continue;
            }
            let line_start = code[..i].rfind('\n').map_or(0, |n| n + 1);
            let reexport = code[line_start..i].trim_start().starts_with("pub");
            let start = if bare_use { i + 4 } else { i };
            let end = tree_end(b, start);
            let mut paths = Vec::new();
            expand(&code[start..end], &mut Vec::new(), &mut paths);
            for p in paths {
                if let Some(abs) = self.absolute(module, &p) {
                    out.push((abs, reexport && bare_use));
                }
            }
            i = end.max(i + 1);
        }
        out
    }

    /// A path as written in `module` made absolute (None: another crate).
    fn absolute(&self, module: &[String], p: &[String]) -> Option<Vec<String>> {
        let mut base: Vec<String> = module.to_vec();
        let mut rest = p;
        match p.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &p[1..];
            }
            Some("self") => rest = &p[1..],
            Some("super") => {
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                // A bare path: a child module of this one, or another crate.
                let mut child = module.to_vec();
                child.push(first.to_string());
                if !self.files.contains_key(&child) {
                    return None;
                }
            }
            None => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// Each file's uses of other files (module and its submodules not counted).
    fn edges(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut edges = BTreeMap::new();
        for module in self.files.keys() {
            let mut to = BTreeSet::new();
            for (p, reexport) in self.uses(module) {
                if reexport {
                    continue;
                }
                let Some(t) = self.resolve(&p, 0) else {
                    continue;
                };
                // The crate root is no unit with the rest: its own code counts.
                let family = !t.is_empty()
                    && !module.is_empty()
                    && (t.starts_with(module) || module.starts_with(&t));
                if t != *module && !family {
                    to.insert(t);
                }
            }
            edges.insert(module.clone(), to);
        }
        edges
    }
}

/// Where a path (tree) starting at `i` ends: at `;`, whitespace outside braces, or a byte
/// that cannot be in a path.
fn tree_end(b: &[u8], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'{' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b'}' => break,
            c if depth == 0 && !(ident_byte(c) || c == b':' || c == b'*') => break,
            _ => {}
        }
        j += 1;
        if depth == 0 && j > i && b[j - 1] == b'}' {
            break;
        }
    }
    j
}

/// The paths a use tree (`a::{b, c::{d, e}}`) names, each prefixed with `prefix`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(brace) = tree.find('{') {
        let head: Vec<String> = tree[..brace]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inner = &tree[brace + 1..tree.rfind('}').unwrap_or(tree.len())];
        let n = prefix.len();
        prefix.extend(head);
        let mut depth = 0;
        let mut from = 0;
        for (k, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[from..k], prefix, out);
                    from = k + 1;
                }
                _ => {}
            }
        }
        expand(&inner[from..], prefix, out);
        prefix.truncate(n);
    } else {
        let segs: Vec<String> = tree
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let segs: Vec<String> = segs
            .into_iter()
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        if segs.is_empty() || segs == ["self"] && prefix.is_empty() {
            return;
        }
        let mut p = prefix.clone();
        p.extend(segs.into_iter().filter(|s| s != "self"));
        out.push(p);
    }
}

fn cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    // Depth-first search with colours; the stack gives the cycle.
    let mut colour: HashMap<&Vec<String>, u8> = HashMap::new();
    fn visit<'a>(
        n: &'a Vec<String>,
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        colour: &mut HashMap<&'a Vec<String>, u8>,
        stack: &mut Vec<&'a Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        colour.insert(n, 1);
        stack.push(n);
        for m in edges.get(n).into_iter().flatten() {
            match colour.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| *s == m).unwrap();
                    return Some(
                        stack[at..]
                            .iter()
                            .map(|s| (*s).clone())
                            .chain([m.clone()])
                            .collect(),
                    );
                }
                0 => {
                    if let Some(c) = visit(m, edges, colour, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(n, 2);
        None
    }
    for n in edges.keys() {
        if colour.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut colour, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_circle_between_source_files() {
    for dir in ["src", "wasm/src"] {
        let m = Crate::read(&root().join(dir));
        let edges = m.edges();
        let n: usize = edges.values().map(BTreeSet::len).sum();
        assert!(n > 3, "{dir}: only {n} uses between files found");
        if let Some(c) = cycle(&edges) {
            let names: Vec<String> = c
                .iter()
                .map(|p| format!("{dir}::{}", p.join("::")))
                .collect();
            panic!("a circle between source files: {}", names.join(" -> "));
        }
    }
}

#[test]
fn a_circle_is_found() {
    let key = |p: &str| vec![p.to_string()];
    let mut edges = BTreeMap::new();
    edges.insert(key("a"), BTreeSet::from([key("b")]));
    edges.insert(key("b"), BTreeSet::from([key("c")]));
    edges.insert(key("c"), BTreeSet::from([key("a")]));
    assert_eq!(cycle(&edges).map(|c| c.len()), Some(4));
    edges.insert(key("c"), BTreeSet::new());
    assert_eq!(cycle(&edges), None);
}

//! The source tree keeps the rules docs/design.md §1 states: no import cycle between files
//! (a submodule may use its parents, as Rust nests; siblings and cousins may not go round), and
//! the product never names the tools. Read from the files themselves, so a new cycle fails here
//! with the path it goes round. Run alone: `cargo test --test it structure`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo;

/// A module path (`gateway::consume`) for each non-test source file of one crate.
struct Crate {
    /// Files by module path; the crate root is "".
    files: BTreeMap<String, PathBuf>,
    /// How the crate names itself in paths: `crate`, and how other crates name it.
    roots: Vec<&'static str>,
}

fn module_path(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("::")
}

/// Every `.rs` under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The product (`src/lib.rs`'s modules) and the tools (`src/tools.rs`'s) as two crates.
fn crates() -> (Crate, Crate) {
    let src = repo().join("src");
    let mut all = Vec::new();
    rust_files(&src, &mut all);
    let tools_roots = ["testbed", "bench", "demo", "publish", "tools"];
    let mut product = Crate {
        files: BTreeMap::new(),
        roots: vec!["crate", "uplink"],
    };
    let mut tools = Crate {
        files: BTreeMap::new(),
        roots: vec!["crate", "uplink_tools"],
    };
    for f in all {
        let m = module_path(&src, &f);
        if m.ends_with("tests") || m.split("::").any(|p| p == "tests" || p == "fake") {
            continue;
        }
        let top = m.split("::").next().unwrap().to_string();
        if matches!(top.as_str(), "main" | "args") {
            // The binary is a crate of its own; it only dispatches.
            continue;
        }
        if tools_roots.contains(&top.as_str()) {
            let m = if top == "tools" { String::new() } else { m };
            tools.files.insert(m, f);
        } else {
            let m = if m == "lib" { String::new() } else { m };
            product.files.insert(m, f);
        }
    }
    (product, tools)
}

/// The file's text without its inline test module (`#[cfg(test)] mod tests { … }` at the end)
/// and without comments.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let cut = text.find("#[cfg(test)]\nmod tests {").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names: `crate::a::b`, `super::c`, `uplink::d` — with `use` groups
/// (`use crate::a::{b, c::d}`) expanded one level, which is how this tree writes them.
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        if !starts_word || !(bytes[i].is_alphabetic() || bytes[i] == '_') {
            i += 1;
            continue;
        }
        // Read a path a::b::c, possibly followed by ::{...}.
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let s = j;
            while j < bytes.len() && (bytes[j].is_alphanumeric() || bytes[j] == '_') {
                j += 1;
            }
            segs.push(bytes[s..j].iter().collect::<String>());
            if j + 2 < bytes.len() && bytes[j] == ':' && bytes[j + 1] == ':' {
                if bytes[j + 2] == '{' {
                    // A group: each member (its path up to a nested group) becomes a path.
                    let mut depth = 0;
                    let mut close = j + 2;
                    let mut members = vec![String::new()];
                    for (k, &ch) in bytes.iter().enumerate().skip(j + 3) {
                        match ch {
                            '{' => depth += 1,
                            '}' if depth == 0 => {
                                close = k;
                                break;
                            }
                            '}' => depth -= 1,
                            ',' if depth == 0 => members.push(String::new()),
                            _ => {}
                        }
                        if depth == 0 && ch != ',' || depth > 0 {
                            members.last_mut().unwrap().push(ch);
                        }
                    }
                    for member in members {
                        let head = member.split("::{").next().unwrap_or("");
                        let first: Vec<String> = head
                            .split("::")
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty() && s != "self" && s != "{")
                            .collect();
                        let mut p = segs.clone();
                        p.extend(first);
                        out.push(p);
                    }
                    j = close;
                    break;
                }
                if bytes[j + 2].is_alphabetic() || bytes[j + 2] == '_' {
                    j += 2;
                    continue;
                }
            }
            if segs.len() > 1 {
                out.push(segs.clone());
            }
            break;
        }
        i = j.max(i + 1);
    }
    out
}

/// The module a path in module `from` refers to: the longest known module prefix.
fn resolve(krate: &Crate, from: &str, path: &[String]) -> Option<String> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first()?.as_str() {
        r if krate.roots.contains(&r) => rest = &path[1..],
        "super" => {
            base = from.split("::").map(String::from).collect();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        "self" => {
            base = from.split("::").map(String::from).collect();
            rest = &path[1..];
        }
        _ => return None,
    }
    base.retain(|s| !s.is_empty());
    let mut best = None;
    for n in 0..=rest.len() {
        let mut cand = base.clone();
        cand.extend(rest[..n].iter().cloned());
        let key = cand.join("::");
        if krate.files.contains_key(&key) {
            best = Some(key);
        }
    }
    best
}

/// `from` is `to` or sits inside it (a submodule using its parent).
fn within(from: &str, to: &str) -> bool {
    to.is_empty() || from == to || from.starts_with(&format!("{to}::"))
}

/// File-level edges between modules of one crate, child-to-ancestor edges left out.
fn edges(krate: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, file) in &krate.files {
        let code = code_of(file);
        for p in named_paths(&code) {
            if let Some(to) = resolve(krate, m, &p)
                && !within(m, &to)
            {
                g.entry(m.clone()).or_default().insert(to);
            }
        }
    }
    g
}

/// One cycle per strongly connected group of more than one module (Tarjan's algorithm, kept
/// small: the graph has about a hundred nodes).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(next) = t.g.get(v) {
            for w in next {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let l = t.low[w].min(t.low[v]);
                    t.low.insert(v, l);
                } else if t.on.contains(w) {
                    let l = t.index[w].min(t.low[v]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                t.out.push(group);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycle_between_files_in_the_product_or_the_tools() {
    let (product, tools) = crates();
    assert!(
        product.files.contains_key("gateway::consume"),
        "the walk found the product"
    );
    assert!(
        tools.files.contains_key("testbed::pipeline"),
        "the walk found the tools"
    );
    let mut found = Vec::new();
    for (name, k) in [("product", &product), ("tools", &tools)] {
        let g = edges(k);
        // The walk sees real imports: a known one must be there.
        if name == "product" {
            assert!(
                g.get("gateway::deliver")
                    .is_some_and(|t| t.contains("gateway::settle")),
                "the walk misses `use super::settle` in gateway/deliver.rs: {:?}",
                g.get("gateway::deliver")
            );
        }
        for c in cycles(&g) {
            let detail: Vec<String> = c
                .iter()
                .map(|m| {
                    let to: Vec<&String> = g[m].iter().filter(|t| c.contains(t)).collect();
                    format!("{m} -> {to:?}")
                })
                .collect();
            found.push(format!("{name}: {}", detail.join("; ")));
        }
    }
    assert!(
        found.is_empty(),
        "import cycles between files:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_product_never_names_the_tools() {
    let (product, _) = crates();
    for (m, file) in &product.files {
        let code = code_of(file);
        for tool in [
            "uplink_tools",
            "crate::testbed",
            "crate::bench",
            "crate::demo",
        ] {
            assert!(
                !code.contains(tool),
                "{m} ({}) names {tool}",
                file.display()
            );
        }
    }
}

#[test]
fn the_path_reader_sees_groups_and_supers() {
    let paths =
        named_paths("use super::{settle::{self, Settle}, retry};\nlet x = crate::wire::TIME;");
    let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(paths.contains(&p(&["super", "settle"])), "{paths:?}");
    assert!(paths.contains(&p(&["super", "retry"])), "{paths:?}");
    assert!(paths.contains(&p(&["crate", "wire", "TIME"])), "{paths:?}");
}

/// Every module, product and tools, has its line in docs/design.md §1's module map: named in
/// full in a row's first cell (`gateway::consume`), or by its last name beside its parent or a
/// sibling there (`tls` (+ `dn`, `reload`); `gateway::consume` (+ `batch`)).
#[test]
fn every_module_is_in_the_design_module_map() {
    let design = std::fs::read_to_string(repo().join("docs/design.md")).unwrap();
    let section = design
        .split("\n## ")
        .find(|s| s.starts_with("1. "))
        .expect("docs/design.md has §1");
    let mut named: BTreeSet<String> = BTreeSet::new();
    for row in section
        .lines()
        .filter(|l| l.starts_with("| `") || l.starts_with("| *"))
    {
        let cell = row.split('|').nth(1).unwrap_or("");
        let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let Some(first) = names.first() else { continue };
        let parent = first.rsplit_once("::").map(|(p, _)| p).unwrap_or("");
        for n in &names {
            named.insert(n.to_string());
            named.insert(format!("{first}::{n}"));
            if !parent.is_empty() {
                named.insert(format!("{parent}::{n}"));
            }
        }
    }
    let (product, tools) = crates();
    let missing: Vec<&String> = product
        .files
        .keys()
        .chain(tools.files.keys())
        .filter(|m| !m.is_empty() && !named.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/design.md §1 lacks a line for: {missing:?}"
    );
}

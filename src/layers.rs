//! The layer rule, checked: `src/` has no import cycle, and every import
//! between top-level modules points down the layers of [`LAYERS`].
//!
//! The check reads the `crate::` and `super::` paths of every file (test
//! modules excluded), resolves each to the longest module it names, and
//! builds the graph of module → module. A module's own ancestors are not
//! edges: a folder's `mod.rs` declares what its files share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's layer; an import must go to a lower layer.
/// Modules of one layer never import each other (the controllers above
/// all). A new top-level module must be placed here.
const LAYERS: &[(&str, u8)] = &[
    ("layers", 0),
    ("logging", 0),
    ("api", 1),
    ("pkg", 2),
    ("layout", 2),
    ("shared", 3),
    ("config", 3),
    // Above `layout`, whose Catalog it reads; it imports only `layout` and `api`.
    ("plan", 3),
    // Quotas: usage of a layout, reservations by compare-and-swap.
    ("quota", 3),
    ("agent", 4),
    ("rollout", 4),
    ("repository", 4),
    ("nodepool", 4),
    ("discovery", 4),
    ("cluster", 4),
    ("configgen", 4),
    ("apps", 4),
    ("tenant", 4),
    // Reads what the controllers publish (the discovery tree).
    ("dashboard", 5),
    ("operator", 6),
    ("cli", 7),
];

type Module = Vec<String>;

/// Every `.rs` file under `src/` (but `main.rs`, another crate) by module.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("src/ entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src/");
            let mut module: Module = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if module == ["main"] {
                continue;
            }
            if module.last().is_some_and(|l| l == "mod" || l == "lib") {
                module.pop();
            }
            out.insert(module, path);
        }
    }
    out
}

/// `text` without line comments and without `#[cfg(test)]` items.
fn code(text: &str) -> String {
    let text: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let brace = item.find('{').unwrap_or(item.len());
        let semi = item.find(';').unwrap_or(item.len());
        if semi < brace {
            rest = &item[(semi + 1).min(item.len())..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices().skip_while(|(i, _)| *i < brace) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The paths after each `crate::` or `super::` in `code`, use-trees
/// expanded (`a::{b, c::d}` gives `a::b` and `a::c::d`).
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root).map(|i| i + from) {
            from = i + root.len();
            let before = i.checked_sub(1).map(|j| bytes[j] as char);
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut leaves = Vec::new();
            tree(&code[from..], Vec::new(), &mut leaves);
            for leaf in leaves {
                out.push((root.trim_end_matches("::").to_owned(), leaf));
            }
        }
    }
    out
}

/// Parses one use-tree at the start of `s` with `prefix`, pushing leaves.
fn tree(s: &str, mut prefix: Vec<String>, leaves: &mut Vec<Vec<String>>) -> usize {
    let mut i = 0;
    loop {
        let s_i = &s[i..];
        let trimmed = s_i.trim_start();
        i += s_i.len() - trimmed.len();
        if trimmed.starts_with('{') {
            i += 1;
            loop {
                i += tree(&s[i..], prefix.clone(), leaves);
                let rest = s[i..].trim_start();
                i += s[i..].len() - rest.len();
                match rest.chars().next() {
                    Some(',') => i += 1,
                    Some('}') => return i + 1,
                    _ => return i,
                }
            }
        }
        let ident: String = trimmed
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            leaves.push(prefix);
            return i;
        }
        i += ident.len();
        prefix.push(ident);
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            leaves.push(prefix);
            return i;
        }
    }
}

/// The module graph: each module and the modules it imports.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules(src);
    let resolve = |path: &[String]| {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains_key(p))
    };
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("a source file");
        let mut deps = BTreeSet::new();
        for (root, mut path) in paths(&code(&text)) {
            let mut full = if root == "crate" {
                Vec::new()
            } else {
                module[..module.len().saturating_sub(1)].to_vec()
            };
            if root == "super" {
                while path.first().is_some_and(|p| p == "super") {
                    path.remove(0);
                    full.pop();
                }
            }
            full.extend(path);
            if let Some(target) = resolve(&full)
                && target != *module
                && !module.starts_with(&target)
            {
                deps.insert(target);
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// A cycle of the graph, if any, as its modules in order.
fn cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    // 0 unvisited, 1 on the path, 2 done.
    let mut state: BTreeMap<&Module, u8> = BTreeMap::new();
    fn visit<'a>(
        m: &'a Module,
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<&'a Module, u8>,
        path: &mut Vec<&'a Module>,
    ) -> Option<Vec<Module>> {
        state.insert(m, 1);
        path.push(m);
        for d in graph.get(m).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| *p == d).unwrap_or(0);
                    return Some(path[start..].iter().map(|m| (*m).clone()).collect());
                }
                0 => {
                    if let Some(c) = visit(d, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m, 2);
        None
    }
    for m in graph.keys() {
        if state.get(m).copied().unwrap_or(0) == 0
            && let Some(c) = visit(m, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The tree checked: `src/`, or `THESEUS_LAYERS_SRC` (to try the check on
/// another tree).
fn src() -> PathBuf {
    std::env::var_os("THESEUS_LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_cycles() {
    let graph = graph(&src());
    assert!(graph.len() > 50, "the check sees {} modules", graph.len());
    if let Some(c) = cycle(&graph) {
        let names: Vec<String> = c.iter().chain(c.first()).map(name).collect();
        panic!(
            "import cycle in src/: {}; move what both need down a layer (docs/architecture.md, \"The layer rule\")",
            names.join(" -> ")
        );
    }
}

#[test]
fn imports_point_down_the_layers() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, deps) in graph(&src()) {
        let Some(top) = module.first() else { continue };
        let from = *layer.get(top.as_str()).unwrap_or_else(|| {
            panic!("src/{top} is in no layer; place it in LAYERS (src/layers.rs)")
        });
        for dep in deps {
            let Some(to_top) = dep.first() else { continue };
            if to_top == top {
                continue;
            }
            let to = layer.get(to_top.as_str()).copied().unwrap_or(u8::MAX);
            if to >= from {
                wrong.push(format!(
                    "{} (layer {from}) imports {} (layer {to})",
                    name(&module),
                    name(&dep)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down (docs/architecture.md, \"The layer rule\"):\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn the_check_sees_cycles_and_use_trees() {
    let code = code(
        "use super::a::{b, c::{d, e}};\n// use crate::hidden;\nfn f() { crate::x::y(); }\n#[cfg(test)]\nmod tests { use crate::t; }\n",
    );
    let found: Vec<String> = paths(&code)
        .into_iter()
        .map(|(r, p)| format!("{r}::{}", p.join("::")))
        .collect();
    assert_eq!(
        found,
        [
            "crate::x::y",
            "super::a::b",
            "super::a::c::d",
            "super::a::c::e"
        ]
    );
    let m = |s: &str| vec![s.to_owned()];
    let graph = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
    ]);
    assert_eq!(cycle(&graph).map(|c| c.len()), Some(3));
    let graph = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::new()),
    ]);
    assert_eq!(cycle(&graph), None);
}

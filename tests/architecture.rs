//! The shape of `src/`: no two source files need each other, directly or round a loop.
//!
//! A file "uses" another when it names an item through `crate::` or `super::` paths that lead
//! into the other file's module (a `use` or a path in code; comments and unit-test modules
//! aside). `mod.rs` and `lib.rs` only declare modules and re-export, so they are left out.
//! A cycle means two concerns that cannot be read, tested or changed apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn modules(root: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut segs: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                segs.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                segs.pop();
            }
            out.insert(segs, path);
        }
    }
    out
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests` block.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate::` or `super::`, expanded from `{a, b::c}` groups, as
/// segments relative to the crate root.
fn paths_in(code: &str, module: &Module) -> Vec<Module> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let head: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let mut full = base.clone();
            full.extend(head.iter().cloned());
            out.push(full.clone());
            // `use super::{a, b::c}`: each member of a group is a path too.
            if rest[end..].starts_with('{') {
                let close = rest[end..].find('}').map_or(rest.len(), |j| end + j);
                for item in rest[end + 1..close].split(',') {
                    let mut p = full.clone();
                    p.extend(
                        item.trim()
                            .split("::")
                            .map(|s| s.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_')))
                            .filter(|s| !s.is_empty() && *s != "self")
                            .map(str::to_owned),
                    );
                    out.push(p);
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&root);
    let mut edges = BTreeMap::new();
    for (module, file) in &mods {
        let mut to = BTreeSet::new();
        let surface = file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
        if !surface {
            let code = code_of(&std::fs::read_to_string(file).unwrap());
            for path in paths_in(&code, module) {
                // The longest prefix that is a module with a file of its own.
                let target = (1..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| mods.contains_key(p));
                if let Some(t) = target
                    && t != *module
                    && !mods[&t].ends_with("mod.rs")
                {
                    to.insert(t);
                }
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

/// A loop through `start`, if there is one.
fn cycle_through(
    edges: &BTreeMap<Module, BTreeSet<Module>>,
    start: &Module,
) -> Option<Vec<Module>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((at, trail)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                return Some(trail.clone());
            }
            if seen.insert(next.clone()) {
                let mut t = trail.clone();
                t.push(next.clone());
                stack.push((next.clone(), t));
            }
        }
    }
    None
}

#[test]
fn no_source_file_imports_one_that_imports_it_back() {
    let edges = graph();
    assert!(edges.len() > 40, "the walk found the source tree");
    // The checker sees real imports: the gate is used by the mirror, and the core by handles.
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Module>();
    assert!(edges[&m("fs::mirror")].contains(&m("fs::gate")));
    assert!(edges[&m("fs::handles")].contains(&m("fs::core")));
    let cycles: Vec<String> = edges
        .keys()
        .filter_map(|start| cycle_through(&edges, start))
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles in src/:\n{}",
        cycles.join("\n")
    );
}

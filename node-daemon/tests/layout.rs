//! The daemon's shape (see `src/lib.rs`): folders in the order data moves
//! through them, and no import circles. Read from the sources, so a new
//! `use` that turns an arrow around fails here rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path of every source file: `src/run/mod.rs` is `run`,
/// `src/run/reconcile.rs` is `run::reconcile`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts.join("::"), p);
        }
    }
    out
}

/// The code of a file without its test module and comments: tests may
/// reach across (a fake data plane in a diff test), the product may not.
fn product_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if line.trim_start().starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The modules `code` (in module `me`) names through `crate::` or `super::`
/// paths, each resolved to the longest known module prefix.
fn references(me: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let me_parts: Vec<&str> = if me.is_empty() {
        vec![]
    } else {
        me.split("::").collect()
    };
    for (anchor, base) in [
        ("crate::", Vec::new()),
        (
            "super::",
            me_parts[..me_parts.len().saturating_sub(1)].to_vec(),
        ),
    ] {
        for (i, _) in code.match_indices(anchor) {
            // `weft_node_daemon::crate::` cannot occur; skip `foo_super::`.
            let before = code[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &code[i + anchor.len()..];
            let mut path: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            let mut best = path.join("::");
            for seg in rest.split("::") {
                let ident: String = seg
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if ident.is_empty() {
                    break;
                }
                path.push(ident);
                let candidate = path.join("::");
                if known.contains(&candidate) {
                    best = candidate;
                } else {
                    break;
                }
                if seg.len() != path.last().unwrap().len() {
                    break;
                }
            }
            out.insert(best);
        }
    }
    out
}

fn is_ancestor(a: &str, b: &str) -> bool {
    a.is_empty() || b.starts_with(&format!("{a}::"))
}

/// Module -> the modules it imports (not its ancestors or descendants:
/// a parent re-exporting its child's items is how Rust modules work).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&src);
    let known: BTreeSet<String> = files.keys().cloned().collect();
    let mut g = BTreeMap::new();
    for (m, path) in &files {
        if m.is_empty() {
            continue; // lib.rs / main.rs: the crate root sees everything
        }
        let refs = references(m, &product_code(path), &known)
            .into_iter()
            .filter(|r| r != m && !is_ancestor(r, m) && !is_ancestor(m, r))
            .collect();
        g.insert(m.clone(), refs);
    }
    g
}

/// The top folder (or top-level module) a module belongs to.
fn top(m: &str) -> &str {
    m.split("::").next().unwrap()
}

/// A cycle in `g`, as the path that closes it.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| p == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut path = Vec::new();
            if let Some(c) = visit(n, g, &mut state, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_in_a_circle() {
    let g = graph();
    assert!(g.len() > 40, "the sources were found ({} modules)", g.len());
    if let Some(c) = find_cycle(&g) {
        panic!("import circle between modules: {}", c.join(" -> "));
    }
}

#[test]
fn no_folder_imports_in_a_circle() {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, refs) in graph() {
        let entry = folders.entry(top(&m).to_string()).or_default();
        entry.extend(
            refs.iter()
                .map(|r| top(r).to_string())
                .filter(|r| r != top(&m)),
        );
    }
    if let Some(c) = find_cycle(&folders) {
        panic!("import circle between folders: {}", c.join(" -> "));
    }
}

#[test]
fn each_folder_imports_only_what_comes_before_it_in_the_flow() {
    // Folder -> the folders and top-level modules it may import.
    let allowed: BTreeMap<&str, &[&str]> = [
        ("core", &["error", "keys"][..]),
        ("dataplane", &["core", "dns", "error", "keys", "wake"][..]),
        ("dns", &["core", "error"][..]),
        ("desired", &["error", "storage", "wake", "kubeapi"][..]),
        (
            "workloads",
            &["core", "dns", "error", "storage", "wake", "kubeapi"][..],
        ),
    ]
    .into_iter()
    .collect();
    let mut wrong = Vec::new();
    for (m, refs) in graph() {
        let Some(ok) = allowed.get(top(&m)) else {
            continue;
        };
        for r in refs {
            let t = top(&r);
            if t != top(&m) && !ok.contains(&t) {
                wrong.push(format!("{m} imports {r}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the flow: {wrong:#?}");
}

#[test]
fn the_check_sees_a_circle_and_resolves_paths() {
    // The checker itself: a made-up graph with a circle, and path resolution
    // of `super::` and `crate::` against known modules.
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&g).unwrap(),
        vec!["a", "b", "c", "a"],
        "the circle is reported as a path"
    );
    let known: BTreeSet<String> = ["run", "run::reconcile", "core", "core::plan"]
        .into_iter()
        .map(String::from)
        .collect();
    let refs = references(
        "run::standalone",
        "use super::reconcile::Reconciler;\nuse crate::core::plan::{plan, x};\nlet y = my_super::z;",
        &known,
    );
    assert_eq!(
        refs,
        ["core::plan", "run::reconcile"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

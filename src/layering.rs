//! The module graph, checked (issue 16). Read from the sources: every `crate::…` and
//! `super::…` path outside comments and test modules is an edge.
//!
//! - Top-level modules sit in [`LAYERS`], top first, and a module may only use modules of
//!   layers below its own. The order is the data flow of a call: the HTTP surfaces (`ops`,
//!   `webhooks`, `ingress`) over the shared `state`, then `call` (the actor tree: a call, its
//!   persister, its registry), the `stt` actors it owns, `transcript` (what the STT actors
//!   feed), the pure `media` codecs, `metrics`, `store`, and the leaves.
//! - Unit tests (`#[cfg(test)]` blocks and `tests.rs` files) are not part of the graph.
//! - No source file (tests aside) is over 500 lines.
//! - No cycle among all modules, file by file (a module using what it contains is not an edge:
//!   `call/mod.rs` may name `call::actor`; `call::actor` naming `call::registry` and back
//!   would be a cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules, top layer first. A new module must be placed here.
pub const LAYERS: &[&[&str]] = &[
    &["app"],
    &["config"],
    &["loadgen"],
    &["ops"],
    &["webhooks"],
    &["ingress"],
    &["state"],
    &["postcall"],
    &["call"],
    &["stt"],
    &["transcript"],
    &["media"],
    &["metrics"],
    &["store"],
    &["egress"],
    &["crypto"],
    &[
        "audio",
        "clock",
        "http_error",
        "layering",
        "net",
        "secret",
        "telemetry",
        "text",
    ],
];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Source text without comment lines and without the test module at its end.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or_default();
    body.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths (`call::actor`) of every `.rs` file under `dir`.
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let join = |n: &str| {
            if prefix.is_empty() {
                n.to_string()
            } else {
                format!("{prefix}::{n}")
            }
        };
        if path.is_dir() {
            modules(&path, &join(&name), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let module = match (prefix, name.as_str()) {
                ("", "lib" | "main") => continue,
                // A module's unit tests in their own file (`egress/tests.rs`): test code, like
                // the `#[cfg(test)]` blocks cut off in `code`.
                (_, "tests") => continue,
                (_, "mod") => prefix.to_string(),
                _ => join(&name),
            };
            out.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// Paths a source names, as segment lists relative to the crate root.
fn named_paths(module: &str, text: &str) -> Vec<Vec<String>> {
    // `super` is the module's parent, whether the file is `call/persist.rs` or `call/mod.rs`.
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p).to_string();
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for (root, base) in [("crate::", ""), ("super::", parent.as_str())] {
        let mut from = 0;
        while let Some(at) = text[from..].find(root) {
            let start = from + at;
            from = start + root.len();
            let before = start.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let rest = &text[from..];
            let items: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|item| item.trim().trim_start_matches('{').to_string())
                    .collect()
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                vec![rest[..end].to_string()]
            };
            for item in items {
                let mut path: Vec<String> = if base.is_empty() {
                    Vec::new()
                } else {
                    base.split("::").map(str::to_string).collect()
                };
                path.extend(
                    item.split("::")
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(str::to_string),
                );
                if !path.is_empty() {
                    out.push(path);
                }
            }
        }
    }
    out
}

/// Module-level graph: each file's edges to the modules it names (longest known prefix).
fn file_graph(src: &Path) -> Graph {
    let mut sources = BTreeMap::new();
    modules(src, "", &mut sources);
    let mut graph = Graph::new();
    for (module, text) in &sources {
        let edges = graph.entry(module.clone()).or_default();
        for path in named_paths(module, &code(text)) {
            let target = (1..=path.len())
                .rev()
                .map(|k| path[..k].join("::"))
                .find(|candidate| sources.contains_key(candidate));
            let Some(target) = target else { continue };
            let contains = target.starts_with(&format!("{module}::"));
            if target != *module && !contains {
                edges.insert(target);
            }
        }
    }
    graph
}

/// Strongly connected components with more than one member (Tarjan).
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS.iter().position(|layer| layer.contains(&top))
}

/// Edges from a top-level module to one in its own or a higher layer.
fn upward_edges(graph: &Graph) -> Vec<String> {
    let mut found = BTreeSet::new();
    for (from, targets) in graph {
        for to in targets {
            let (a, b) = (from.split("::").next(), to.split("::").next());
            if a == b {
                continue;
            }
            if let (Some(la), Some(lb)) = (layer_of(from), layer_of(to)) {
                if lb <= la {
                    found.insert(format!("{} → {}", a.unwrap(), b.unwrap()));
                }
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn every_top_level_module_has_a_layer() {
        let graph = file_graph(&src());
        let unplaced: BTreeSet<&str> = graph
            .keys()
            .map(|m| m.split("::").next().unwrap())
            .filter(|top| layer_of(top).is_none())
            .collect();
        assert!(unplaced.is_empty(), "place these in LAYERS: {unplaced:?}");
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let upward = upward_edges(&file_graph(&src()));
        assert!(upward.is_empty(), "imports against the layers: {upward:#?}");
    }

    #[test]
    fn the_module_graph_has_no_cycle() {
        let graph = file_graph(&src());
        assert!(
            graph.len() > 50,
            "the sources were read ({} modules)",
            graph.len()
        );
        let found = cycles(&graph);
        assert!(found.is_empty(), "import cycles: {found:#?}");
    }

    #[test]
    fn no_source_file_is_over_500_lines() {
        let mut sources = BTreeMap::new();
        modules(&src(), "", &mut sources);
        let long: Vec<(String, usize)> = sources
            .iter()
            .map(|(module, text)| (module.clone(), text.lines().count()))
            .filter(|(_, lines)| *lines > 500)
            .collect();
        assert!(sources.len() > 50, "the sources were read");
        assert!(long.is_empty(), "split these modules: {long:?}");
    }

    #[test]
    fn the_checks_see_cycles_and_upward_imports() {
        let graph: Graph = [
            ("call::actor", vec!["call::registry", "store"]),
            ("call::registry", vec!["call::actor"]),
            ("store", vec!["ingress::voice"]),
            ("ingress::voice", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
        .collect();
        assert_eq!(cycles(&graph), vec![vec!["call::actor", "call::registry"]]);
        assert_eq!(upward_edges(&graph), vec!["store → ingress".to_string()]);
        let text = "use super::{registry::Claim, end};\nlet x = crate::store::Store::new();\n// crate::app::X";
        let named = named_paths("call::actor", &code(text));
        assert!(named.contains(&vec!["call".into(), "registry".into(), "Claim".into()]));
        assert!(named.contains(&vec!["call".into(), "end".into()]));
        assert!(named.contains(&vec!["store".into(), "Store".into(), "new".into()]));
        assert!(
            !named.iter().any(|p| p[0] == "app"),
            "comments are not imports"
        );
    }
}

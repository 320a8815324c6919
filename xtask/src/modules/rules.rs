//! The three rules: no cycle among sibling modules, no `controller` from `http` or `agent`,
//! and no file too long before its tests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use syn::spanned::Spanned;

use super::resolve::Reference;
use super::tree::{self, ModId, Sources, Tree};

/// Code lines (before the tests) a file may have. The goal is about 500; the margin keeps a
/// file that gains a few lines from failing the build.
pub const MAX_CODE_LINES: usize = 550;

/// Subtrees whose code must not reference another subtree: the HTTP server and the agent
/// are not the controller, and must keep working (and building) without it.
pub const FORBIDDEN: &[(&str, &str)] = &[
    ("crate::http", "crate::controller"),
    ("crate::agent", "crate::controller"),
];

/// A cycle among the children of one module: `chain` starts and ends with the same child.
pub struct Cycle {
    /// The module whose children these are (`crate::controller`).
    pub parent: String,
    /// All the children that reach each other with these (the cycle's strongly connected
    /// component), in declaration order.
    pub group: Vec<String>,
    pub chain: Vec<String>,
    /// One per step of the chain, in order.
    pub edges: Vec<Edge>,
}

/// Child `from` references child `to`: `references`, by file and line.
pub struct Edge {
    pub from: String,
    pub to: String,
    pub references: Vec<Example>,
}

/// Where a reference is, and what it wrote.
#[derive(Clone)]
pub struct Example {
    pub file: PathBuf,
    pub line: usize,
    pub written: String,
}

impl Example {
    fn of(reference: &Reference) -> Example {
        Example {
            file: reference.file.clone(),
            line: reference.line,
            written: reference.written.clone(),
        }
    }
}

/// A reference out of a subtree into one it must not use.
pub struct Forbidden {
    pub from: String,
    pub to: String,
    pub at: Example,
}

/// One file's length: `code` lines before its first `#[cfg(test)]` item (all of them when it
/// has none), of `total`.
pub struct Length {
    pub file: PathBuf,
    pub code: usize,
    pub total: usize,
    /// A line where a non-test item follows the first test item: its lines are not counted
    /// as code, which they are.
    pub code_after_tests: Option<usize>,
}

impl Length {
    pub fn too_long(&self) -> bool {
        self.code > MAX_CODE_LINES
    }
}

/// The cycles among siblings, at every level of the tree. A reference from `a::x` to `b::y`
/// is an edge `a -> b` between the children of their deepest common ancestor; a reference
/// from a module to one of its ancestors or descendants is no edge. For each group of
/// children that reach each other, enough cycles to show every edge among them once, each
/// the shortest through that edge.
pub fn cycles(tree: &Tree, references: &[Reference]) -> Vec<Cycle> {
    // (from child, to child) -> references, grouped by the children's parent.
    let mut edges: BTreeMap<ModId, BTreeMap<(ModId, ModId), Vec<&Reference>>> = BTreeMap::new();
    for reference in references {
        let from = tree.lineage(reference.from);
        let to = tree.lineage(reference.to);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue;
        }
        edges
            .entry(from[common - 1])
            .or_default()
            .entry((from[common], to[common]))
            .or_default()
            .push(reference);
    }
    let mut cycles = Vec::new();
    for (parent, edges) in edges {
        let graph: BTreeMap<ModId, Vec<ModId>> =
            edges.keys().fold(BTreeMap::new(), |mut graph, &(a, b)| {
                graph.entry(a).or_insert_with(Vec::new).push(b);
                graph
            });
        let children: Vec<ModId> = tree.modules[parent]
            .children
            .iter()
            .map(|(_, id)| *id)
            .collect();
        for component in strongly_connected(&children, &graph) {
            // The shortest cycle through each edge, the shortest first; then each that shows
            // an edge no cycle before it did.
            let mut through: Vec<Vec<ModId>> = edges
                .keys()
                .filter(|(a, b)| component.contains(a) && component.contains(b))
                .map(|&(a, b)| {
                    let mut chain = vec![a];
                    chain.extend(shortest_path(&graph, &component, b, a));
                    // Started at the first declared of its modules (ids follow declarations).
                    chain.pop();
                    let first = (0..chain.len()).min_by_key(|&i| chain[i]).unwrap_or(0);
                    chain.rotate_left(first);
                    chain.push(chain[0]);
                    chain
                })
                .collect();
            through.sort_by_key(Vec::len);
            let mut covered = BTreeSet::new();
            for chain in through {
                let steps: Vec<(ModId, ModId)> = chain.windows(2).map(|s| (s[0], s[1])).collect();
                if steps.iter().all(|step| covered.contains(step)) {
                    continue;
                }
                covered.extend(steps);
                cycles.push(describe(tree, parent, &component, &chain, &edges));
            }
        }
    }
    cycles
}

fn describe(
    tree: &Tree,
    parent: ModId,
    group: &BTreeSet<ModId>,
    chain: &[ModId],
    edges: &BTreeMap<(ModId, ModId), Vec<&Reference>>,
) -> Cycle {
    let edges = chain
        .windows(2)
        .map(|step| {
            let mut references: Vec<Example> = edges[&(step[0], step[1])]
                .iter()
                .map(|r| Example::of(r))
                .collect();
            references.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Edge {
                from: tree.name(step[0]).into(),
                to: tree.name(step[1]).into(),
                references,
            }
        })
        .collect();
    let name = |id: &ModId| tree.name(*id).to_string();
    Cycle {
        parent: tree.modules[parent].path.clone(),
        group: tree.modules[parent]
            .children
            .iter()
            .map(|(_, id)| id)
            .filter(|id| group.contains(id))
            .map(name)
            .collect(),
        chain: chain.iter().map(name).collect(),
        edges,
    }
}

/// Tarjan's strongly connected components of more than one node, in `nodes` order.
fn strongly_connected(
    nodes: &[ModId],
    graph: &BTreeMap<ModId, Vec<ModId>>,
) -> Vec<BTreeSet<ModId>> {
    struct State<'g> {
        graph: &'g BTreeMap<ModId, Vec<ModId>>,
        index: BTreeMap<ModId, usize>,
        low: BTreeMap<ModId, usize>,
        stack: Vec<ModId>,
        on_stack: BTreeSet<ModId>,
        found: Vec<BTreeSet<ModId>>,
    }
    fn visit(s: &mut State, node: ModId) {
        let index = s.index.len();
        s.index.insert(node, index);
        s.low.insert(node, index);
        s.stack.push(node);
        s.on_stack.insert(node);
        for &next in s.graph.get(&node).into_iter().flatten() {
            if !s.index.contains_key(&next) {
                visit(s, next);
                let low = s.low[&node].min(s.low[&next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(&next) {
                let low = s.low[&node].min(s.index[&next]);
                s.low.insert(node, low);
            }
        }
        if s.low[&node] == s.index[&node] {
            let mut component = BTreeSet::new();
            while let Some(member) = s.stack.pop() {
                s.on_stack.remove(&member);
                component.insert(member);
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
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
    for &node in nodes {
        if !state.index.contains_key(&node) {
            visit(&mut state, node);
        }
    }
    state
        .found
        .sort_by_key(|c| nodes.iter().position(|n| c.contains(n)));
    state.found
}

/// The shortest path from `from` to `to` inside `within`, both ends included (breadth first).
fn shortest_path(
    graph: &BTreeMap<ModId, Vec<ModId>>,
    within: &BTreeSet<ModId>,
    from: ModId,
    to: ModId,
) -> Vec<ModId> {
    let mut came_from = BTreeMap::from([(from, from)]);
    let mut queue = VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        if node == to {
            break;
        }
        for &next in graph.get(&node).into_iter().flatten() {
            if within.contains(&next) && !came_from.contains_key(&next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    let mut path = vec![to];
    while let Some(&previous) = came_from.get(path.last().unwrap()) {
        if previous == *path.last().unwrap() {
            break;
        }
        path.push(previous);
    }
    path.reverse();
    path
}

/// The modules [`FORBIDDEN`] names that `tree` does not have: the rule would hold for
/// nothing, so a renamed module fails it until [`FORBIDDEN`] says the new name.
pub fn unknown_in_forbidden(tree: &Tree) -> Vec<&'static str> {
    let mut unknown: Vec<&str> = FORBIDDEN
        .iter()
        .flat_map(|&(from, to)| [from, to])
        .filter(|path| tree.find(path).is_none())
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

/// Every reference from a subtree into one [`FORBIDDEN`] to it, by file and line.
pub fn forbidden(tree: &Tree, references: &[Reference]) -> Vec<Forbidden> {
    let mut found = Vec::new();
    for &(from, to) in FORBIDDEN {
        let (Some(from_id), Some(to_id)) = (tree.find(from), tree.find(to)) else {
            continue;
        };
        for reference in references {
            if tree.is_within(reference.from, from_id) && tree.is_within(reference.to, to_id) {
                found.push(Forbidden {
                    from: from.into(),
                    to: to.into(),
                    at: Example::of(reference),
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.at.file, a.at.line).cmp(&(&b.at.file, b.at.line)));
    found.dedup_by(|a, b| a.at.file == b.at.file && a.at.line == b.at.line);
    found
}

/// The length of every file in `sources`.
pub fn lengths(sources: &Sources) -> anyhow::Result<Vec<Length>> {
    let mut lengths = Vec::new();
    for (file, text) in sources {
        let parsed = tree::parse(sources, file)?;
        let total = text.lines().count();
        let start = |item: &syn::Item| {
            tree::item_attrs(item)
                .iter()
                .map(|attr| tree::line_of(attr.pound_token.spans[0]))
                .min()
        };
        let first_test = parsed
            .items
            .iter()
            .position(|item| tree::is_test(tree::item_attrs(item)));
        let code = first_test
            .and_then(|at| start(&parsed.items[at]))
            .map_or(total, |line| line - 1);
        let code_after_tests = first_test.and_then(|at| {
            parsed.items[at..]
                .iter()
                .find(|item| !tree::is_test(tree::item_attrs(item)))
                .map(|item| start(item).unwrap_or_else(|| tree::line_of(item.span())))
        });
        lengths.push(Length {
            file: file.clone(),
            code,
            total,
            code_after_tests,
        });
    }
    Ok(lengths)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::modules::fixture;
    use crate::modules::resolve::references;

    fn cycles_in(files: &[(&str, &str)]) -> Vec<Cycle> {
        let tree = Tree::build(&fixture(files), Path::new("lib.rs")).unwrap();
        cycles(&tree, &references(&tree))
    }

    /// Each cycle as `parent: a -> b -> a`.
    fn chains(cycles: &[Cycle]) -> Vec<String> {
        cycles
            .iter()
            .map(|c| format!("{}: {}", c.parent, c.chain.join(" -> ")))
            .collect()
    }

    #[test]
    fn siblings_using_each_other_are_a_cycle_shown_with_a_line_for_each_edge() {
        let cycles = cycles_in(&[
            ("lib.rs", "mod controller;\n"),
            (
                "controller/mod.rs",
                "mod reconcile;\nmod attempt;\npub struct Context;\n",
            ),
            (
                "controller/reconcile.rs",
                "use super::Context;\nuse super::attempt::run;\npub fn helper() {}\n",
            ),
            (
                "controller/attempt.rs",
                "pub fn run() {\n    super::reconcile::helper();\n}\n",
            ),
        ]);
        assert_eq!(
            chains(&cycles),
            ["crate::controller: reconcile -> attempt -> reconcile"]
        );
        let at: Vec<String> = cycles[0]
            .edges
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e.references[0].file.display(),
                    e.references[0].line
                )
            })
            .collect();
        assert_eq!(at, ["controller/reconcile.rs:2", "controller/attempt.rs:2"]);
    }

    #[test]
    fn references_between_subtrees_are_an_edge_between_their_top_siblings() {
        let cycles = cycles_in(&[
            ("lib.rs", "mod api;\nmod sync;\n"),
            ("api/mod.rs", "mod types;\n"),
            (
                "api/types.rs",
                "pub fn rules() -> crate::sync::validate::Rules { todo!() }\npub struct Reason;\n",
            ),
            ("sync/mod.rs", "pub mod validate;\npub mod error;\n"),
            ("sync/validate.rs", "pub struct Rules;\n"),
            ("sync/error.rs", "use crate::api::types::Reason;\n"),
        ]);
        assert_eq!(chains(&cycles), ["crate: api -> sync -> api"]);
    }

    #[test]
    fn parents_and_children_using_each_other_are_no_cycle() {
        let cycles = cycles_in(&[
            ("lib.rs", "pub mod a;\nuse a::f;\npub fn root_fn() {}\n"),
            (
                "a/mod.rs",
                "mod x;\nmod y;\npub fn f() {\n    x::g();\n    crate::root_fn();\n}\npub struct P;\n",
            ),
            ("a/x.rs", "pub fn g() -> super::P { super::P }\n"),
            ("a/y.rs", "use super::x::g;\nuse super::*;\n"),
        ]);
        assert!(cycles.is_empty(), "{:?}", chains(&cycles));
    }

    #[test]
    fn every_edge_among_siblings_that_reach_each_other_is_shown() {
        let cycles = cycles_in(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            (
                "b.rs",
                "use crate::a::A;\nuse crate::c::C;\npub struct B;\n",
            ),
            ("c.rs", "use crate::a::A;\npub struct C;\n"),
        ]);
        assert_eq!(
            chains(&cycles),
            ["crate: a -> b -> a", "crate: a -> b -> c -> a"]
        );
        assert_eq!(cycles[0].group, ["a", "b", "c"]);
    }

    #[test]
    fn forbidden_references_are_found_through_re_exports() {
        let tree = Tree::build(
            &fixture(&[
                ("lib.rs", "mod api;\nmod controller;\nmod http;\n"),
                ("api.rs", "pub use crate::controller::Thing;\n"),
                ("controller.rs", "pub struct Thing;\npub fn g() {}\n"),
                (
                    "http.rs",
                    "use crate::api::Thing;\nfn f() {\n    crate::controller::g();\n}\n",
                ),
            ]),
            Path::new("lib.rs"),
        )
        .unwrap();
        let found = forbidden(&tree, &references(&tree));
        let at: Vec<String> = found
            .iter()
            .map(|f| format!("{}:{} {}", f.at.file.display(), f.at.line, f.at.written))
            .collect();
        assert_eq!(
            at,
            [
                "http.rs:1 crate::api::Thing",
                "http.rs:3 crate::controller::g"
            ]
        );
    }

    #[test]
    fn code_lines_are_those_before_the_first_test_item() {
        let lengths = lengths(&fixture(&[
            (
                "a.rs",
                "fn a() {}\n\n/// Doc.\n#[cfg(test)]\nfn helper() {}\n\nfn after() {}\n\n\
                 #[cfg(test)]\nmod tests {}\n",
            ),
            ("b.rs", "fn b() {}\n\nfn c() {}\n"),
        ]))
        .unwrap();
        let a = &lengths[0];
        assert_eq!((a.code, a.total, a.code_after_tests), (2, 10, Some(7)));
        let b = &lengths[1];
        assert_eq!((b.code, b.total, b.code_after_tests), (3, 3, None));
        let length = |code| Length {
            file: "x.rs".into(),
            code,
            total: code,
            code_after_tests: None,
        };
        assert!(!length(MAX_CODE_LINES).too_long());
        assert!(length(MAX_CODE_LINES + 1).too_long());
    }
}

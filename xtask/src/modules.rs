//! `cargo xtask modules`: the module tree of `src/` with each file's line counts, and three
//! rules on it:
//!
//! - (a) no import cycle among sibling modules, at every level of the tree (see
//!   [`rules::cycles`]);
//! - (b) nothing under `crate::http` or `crate::agent` references `crate::controller`;
//! - (c) no file has more than [`rules::MAX_CODE_LINES`] lines before its tests.
//!
//! The sources are parsed with `syn`; what each path names is resolved in [`resolve`]. The
//! test `src_follows_the_module_rules` runs the same check under `cargo test`.

mod collect;
mod resolve;
mod rules;
mod tree;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use rules::{Cycle, Forbidden, Length};
use tree::{ModId, Sources, Tree};

/// Prints the tree and the rules' results for the workspace's `src/`; fails when a rule does.
/// With `all_references`, each edge of a cycle lists every reference that makes it, not one.
pub fn run(all_references: bool) -> Result<()> {
    let started = Instant::now();
    let check = Check::of(&read_sources(&src_dir())?)?;
    print!("{}", check.render(all_references));
    println!(
        "\n{} files checked in {:.2} s",
        check.lengths.len(),
        started.elapsed().as_secs_f64()
    );
    let failed = check.failed_rules();
    if !failed.is_empty() {
        bail!("module rules failed: {}", failed.join(", "));
    }
    Ok(())
}

fn src_dir() -> PathBuf {
    testenv::workspace_root().join("src")
}

/// Every `.rs` file under `dir`, by its path relative to `dir`.
pub fn read_sources(dir: &Path) -> Result<Sources> {
    let mut sources = Sources::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let full = dir.join(&relative);
        for entry in
            std::fs::read_dir(&full).with_context(|| format!("reading {}", full.display()))?
        {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(entry.path())
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                sources.insert(path, text);
            }
        }
    }
    Ok(sources)
}

/// The module trees of `src/` (the library first, then each binary) and what the rules
/// found in them.
pub struct Check {
    crates: Vec<Tree>,
    lengths: Vec<Length>,
    /// Files that no crate root reaches through `mod` declarations.
    outside: Vec<PathBuf>,
    cycles: Vec<Cycle>,
    forbidden: Vec<Forbidden>,
    /// Modules rule (b) names that the library does not have.
    unknown: Vec<&'static str>,
}

impl Check {
    pub fn of(sources: &Sources) -> Result<Check> {
        let mut check = Check {
            crates: Vec::new(),
            lengths: rules::lengths(sources)?,
            outside: Vec::new(),
            cycles: Vec::new(),
            forbidden: Vec::new(),
            unknown: Vec::new(),
        };
        let mut roots: Vec<&PathBuf> = sources.keys().filter(|p| is_crate_root(p)).collect();
        // The library first, then the binaries.
        roots.sort_by_key(|path| path.as_path() != Path::new("lib.rs"));
        for root in roots {
            let tree = Tree::build(sources, root)?;
            let references = resolve::references(&tree);
            check.cycles.extend(rules::cycles(&tree, &references));
            check.not_counting_test_files(&tree);
            if root.as_path() == Path::new("lib.rs") {
                check.forbidden = rules::forbidden(&tree, &references);
                check.unknown = rules::unknown_in_forbidden(&tree);
            }
            check.crates.push(tree);
        }
        check.outside = sources
            .keys()
            .filter(|file| !check.crates.iter().any(|t| t.files().any(|f| f == *file)))
            .cloned()
            .collect();
        Ok(check)
    }

    /// A file that is a module under `#[cfg(test)]` (`#[cfg(test)] mod tests;`) holds tests
    /// only: none of its lines are code.
    fn not_counting_test_files(&mut self, tree: &Tree) {
        let test_files = tree
            .modules
            .iter()
            .filter(|module| module.test_only)
            .filter_map(|module| module.file.as_ref());
        for file in test_files {
            if let Some(length) = self.lengths.iter_mut().find(|l| &l.file == file) {
                length.code = 0;
                length.code_after_tests = None;
            }
        }
    }

    /// The rules that failed, named as in [`Check::render`].
    pub fn failed_rules(&self) -> Vec<&'static str> {
        let mut failed = Vec::new();
        if !self.cycles.is_empty() {
            failed.push("(a) cycles");
        }
        if !self.forbidden.is_empty() || !self.unknown.is_empty() {
            failed.push("(b) controller used from http or agent");
        }
        if self.lengths.iter().any(Length::too_long) {
            failed.push("(c) files too long");
        }
        failed
    }

    /// The tree with line counts, then each rule's result.
    pub fn render(&self, all_references: bool) -> String {
        let mut out = String::new();
        self.render_tree(&mut out);
        self.render_rules(&mut out, all_references);
        out
    }

    fn render_tree(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Module tree of src/: code lines (before the first #[cfg(test)] item), total lines\n\
             {:>5} {:>5}",
            "code", "total"
        );
        let mut rows = Vec::new();
        for (index, tree) in self.crates.iter().enumerate() {
            let root = if index == 0 {
                "crate"
            } else {
                "crate (binary)"
            };
            tree_rows(tree, 0, 0, root, &mut rows);
        }
        for file in &self.outside {
            rows.push((0, "(in no module tree)".into(), Some(file.clone())));
        }
        let width = rows
            .iter()
            .map(|(depth, name, _)| depth * 2 + name.len())
            .max()
            .unwrap_or(0);
        for (depth, name, file) in rows {
            let label = format!("{:indent$}{name}", "", indent = depth * 2);
            let Some(file) = file else {
                let _ = writeln!(out, "{:>5} {:>5}  {label}  (inline)", "", "");
                continue;
            };
            let length = self.lengths.iter().find(|l| l.file == file);
            let (code, total) = length.map_or((0, 0), |l| (l.code, l.total));
            let mark = if length.is_some_and(Length::too_long) {
                "  <- too long"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{code:>5} {total:>5}  {label:width$}  src/{}{mark}",
                file.display()
            );
        }
    }

    fn render_rules(&self, out: &mut String, all_references: bool) {
        let verdict = |failures: usize, what: &str| {
            if failures == 0 {
                "ok".to_string()
            } else {
                format!("FAIL, {failures} {what}")
            }
        };
        let _ = writeln!(
            out,
            "\n(a) No import cycle among sibling modules: {}",
            verdict(self.cycles.len(), "cycle(s)")
        );
        let mut group = None;
        for cycle in &self.cycles {
            if group != Some((&cycle.parent, &cycle.group)) {
                group = Some((&cycle.parent, &cycle.group));
                let _ = writeln!(
                    out,
                    "  under {}, these reach each other: {}",
                    cycle.parent,
                    cycle.group.join(", ")
                );
            }
            let _ = writeln!(out, "    {}", cycle.chain.join(" -> "));
            for edge in &cycle.edges {
                let count = edge.references.len();
                let shown = if all_references { count } else { 1 };
                for (index, at) in edge.references.iter().take(shown).enumerate() {
                    let arrow = format!("{} -> {}", edge.from, edge.to);
                    let more = match count {
                        1 => String::new(),
                        _ if all_references => format!(" ({}/{count})", index + 1),
                        _ => format!(" (and {} more)", count - 1),
                    };
                    let _ = writeln!(
                        out,
                        "      {arrow}: src/{}:{} `{}`{more}",
                        at.file.display(),
                        at.line,
                        at.written,
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\n(b) No reference to crate::controller from crate::http or crate::agent: {}",
            match (self.forbidden.len(), self.unknown.len()) {
                (found, 0) => verdict(found, "reference(s)"),
                (found, unknown) =>
                    format!("FAIL, {found} reference(s), {unknown} module(s) not found"),
            }
        );
        for path in &self.unknown {
            let _ = writeln!(
                out,
                "  no module {path} in src/: name its new place in rules::FORBIDDEN"
            );
        }
        for found in &self.forbidden {
            let _ = writeln!(
                out,
                "  src/{}:{} `{}` ({} -> {})",
                found.at.file.display(),
                found.at.line,
                found.at.written,
                found.from,
                found.to
            );
        }
        let too_long: Vec<&Length> = self.lengths.iter().filter(|l| l.too_long()).collect();
        let _ = writeln!(
            out,
            "\n(c) At most {} code lines a file: {}",
            rules::MAX_CODE_LINES,
            verdict(too_long.len(), "file(s)")
        );
        for length in too_long {
            let _ = writeln!(
                out,
                "  src/{}: {} code lines ({} in all)",
                length.file.display(),
                length.code,
                length.total
            );
        }
        for length in &self.lengths {
            if let Some(line) = length.code_after_tests {
                let _ = writeln!(
                    out,
                    "  note: src/{}:{} is code after the first #[cfg(test)] item, not counted",
                    length.file.display(),
                    line
                );
            }
        }
    }
}

/// `lib.rs`, `main.rs`, `bin/x.rs` and `bin/x/main.rs`, as cargo finds them.
fn is_crate_root(path: &Path) -> bool {
    let parts: Vec<&str> = path.iter().filter_map(|part| part.to_str()).collect();
    matches!(
        parts.as_slice(),
        ["lib.rs" | "main.rs"] | ["bin", _] | ["bin", _, "main.rs"]
    )
}

/// The tree under `id` as (depth, label, file) rows, test modules left out.
fn tree_rows(
    tree: &Tree,
    id: ModId,
    depth: usize,
    label: &str,
    rows: &mut Vec<(usize, String, Option<PathBuf>)>,
) {
    let module = &tree.modules[id];
    if module.test_only {
        return;
    }
    rows.push((depth, label.into(), module.file.clone()));
    for (name, child) in &module.children {
        tree_rows(tree, *child, depth + 1, name, rows);
    }
}

/// Sources from `(path, text)` pairs, for tests.
#[cfg(test)]
pub fn fixture(files: &[(&str, &str)]) -> Sources {
    files
        .iter()
        .map(|(path, text)| (PathBuf::from(path), text.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules on `src/`; `cargo xtask modules` prints the same findings with the tree.
    #[test]
    fn src_follows_the_module_rules() {
        let check = Check::of(&read_sources(&src_dir()).unwrap()).unwrap();
        let mut findings = String::new();
        check.render_rules(&mut findings, false);
        assert!(
            check.failed_rules().is_empty(),
            "module rules failed (`cargo xtask modules` shows the tree):\n{findings}"
        );
    }

    #[test]
    fn the_tree_lists_every_file_with_its_counts_and_the_rules_results() {
        let check = Check::of(&fixture(&[
            (
                "lib.rs",
                "pub mod agent;\npub mod controller;\npub mod http;\n",
            ),
            (
                "agent.rs",
                "pub fn run() {\n    crate::http::maps::serve();\n}\n",
            ),
            ("controller.rs", "use crate::http::maps;\n"),
            ("http/mod.rs", "pub mod maps;\npub mod server;\n"),
            (
                "http/maps.rs",
                "pub fn serve() {}\n\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n",
            ),
            (
                "http/server.rs",
                "pub fn serve() {}\n\n#[cfg(test)]\nmod tests;\n",
            ),
            // Tests only, in a file of its own: however long, none of it is code.
            ("http/server/tests.rs", &"fn t() {}\n".repeat(600)),
            ("main.rs", "fn main() {}\n"),
            ("stray.rs", "fn lost() {}\n"),
        ]))
        .unwrap();
        let text = check.render(false);
        for line in [
            "    3     3  crate                src/lib.rs",
            "    3     3    agent              src/agent.rs",
            "    1     1    controller         src/controller.rs",
            "    2     2    http               src/http/mod.rs",
            "    2     6      maps             src/http/maps.rs",
            "    2     4      server           src/http/server.rs",
            "    1     1  crate (binary)       src/main.rs",
            "    1     1  (in no module tree)  src/stray.rs",
            "(a) No import cycle among sibling modules: ok",
            "(b) No reference to crate::controller from crate::http or crate::agent: ok",
            "(c) At most 550 code lines a file: ok",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(check.failed_rules().is_empty());
    }

    #[test]
    fn each_rule_that_fails_is_named_with_where() {
        let long = "fn f() {}\n".repeat(551);
        let check = Check::of(&fixture(&[
            ("lib.rs", "pub mod controller;\npub mod http;\n"),
            ("controller.rs", "pub fn g() {}\nuse crate::http::serve;\n"),
            (
                "http.rs",
                "pub fn serve() {\n    crate::controller::g();\n}\n",
            ),
            ("main.rs", &long),
        ]))
        .unwrap();
        assert_eq!(
            check.failed_rules(),
            [
                "(a) cycles",
                "(b) controller used from http or agent",
                "(c) files too long"
            ]
        );
        let text = check.render(false);
        for line in [
            "(a) No import cycle among sibling modules: FAIL, 1 cycle(s)",
            "  under crate, these reach each other: controller, http",
            "    controller -> http -> controller",
            "      controller -> http: src/controller.rs:2 `crate::http::serve`",
            "      http -> controller: src/http.rs:2 `crate::controller::g`",
            "(b) No reference to crate::controller from crate::http or crate::agent: FAIL, 1 \
             reference(s), 1 module(s) not found",
            "  no module crate::agent in src/: name its new place in rules::FORBIDDEN",
            "  src/http.rs:2 `crate::controller::g` (crate::http -> crate::controller)",
            "  src/main.rs: 551 code lines (551 in all)",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}

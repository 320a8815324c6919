//! The module tree of one crate, followed from its root file through the `mod` declarations,
//! and for each module what it declares (item names, `use` imports) and every path its non-test
//! code writes. Nothing is resolved here (that is `resolve`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use proc_macro2::{Delimiter, Span, TokenTree};
use syn::visit::Visit;
use syn::{Attribute, Item, ItemMod, Meta};

use super::collect::Collector;

/// Source files by their path under `src/` (`sync/mod.rs`).
pub type Sources = BTreeMap<PathBuf, String>;

/// A module's index in [`Tree::modules`].
pub type ModId = usize;

/// The root is `modules[0]`; a parent comes before its children.
pub struct Tree {
    pub modules: Vec<Module>,
}

pub struct Module {
    /// `crate::sync::render`.
    pub path: String,
    pub parent: Option<ModId>,
    /// Child modules, in declaration order.
    pub children: Vec<(String, ModId)>,
    /// The file that is this module; `None` for an inline `mod x { ... }`.
    pub file: Option<PathBuf>,
    /// The file its code is written in: its own, or the one holding it inline.
    pub source: PathBuf,
    /// Under `#[cfg(test)]`: in the tree, but none of its code is read.
    pub test_only: bool,
    /// The items it defines (functions, types, constants, macros), child modules aside.
    pub items: BTreeSet<String>,
    pub imports: Vec<Import>,
    /// Every path its non-test code writes (single names included), and its method calls on
    /// `self`.
    pub paths: Vec<Written>,
    /// Its inherent `impl` blocks (`impl Reconciler { .. }`), which may be of a type defined
    /// in another module.
    pub impls: Vec<Impl>,
}

/// One name a `use` brings in: `use a::b::{C, D as E, self}` is three.
pub struct Import {
    /// The name it binds; `None` for a glob (`use a::*`).
    pub name: Option<String>,
    /// The path as written, `["a", "b", "C"]` (`["a", "b"]` for `self` and globs).
    pub path: Vec<String>,
    pub line: usize,
}

/// A path written in code (`crate::a::f`, `super::X`, `Foo::new`, `x`). Inside an `impl T`
/// block, `Self::f` and `self.f()` are written down as `T::f`.
pub struct Written {
    pub segments: Vec<String>,
    pub line: usize,
    /// As it reads in the source (`self.f()`).
    pub text: String,
    /// Written as `Self::f` or `self.f()`: it references where `f` is defined, not the type
    /// (which its `impl` block references already).
    pub on_self: bool,
}

/// An inherent `impl` block: the path of its type as written, and its methods' names.
pub struct Impl {
    pub self_ty: Vec<String>,
    pub methods: Vec<String>,
}

impl Tree {
    /// Follows the `mod` declarations from `root` (`lib.rs`, `main.rs`), reading files from
    /// `sources`.
    pub fn build(sources: &Sources, root: &Path) -> Result<Tree> {
        let file = parse(sources, root)?;
        let mut tree = Tree {
            modules: Vec::new(),
        };
        let id = tree.add(Module::new("crate".into(), None, Some(root), root, false));
        let dir = root.parent().unwrap_or(Path::new(""));
        tree.fill(sources, id, &file.items, dir)?;
        Ok(tree)
    }

    /// Every file that is a module of this crate.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.modules.iter().filter_map(|m| m.file.as_deref())
    }

    /// Whether `inner` is `outer` or inside it.
    pub fn is_within(&self, inner: ModId, outer: ModId) -> bool {
        self.lineage(inner).contains(&outer)
    }

    /// `id` and its ancestors, the root first.
    pub fn lineage(&self, id: ModId) -> Vec<ModId> {
        let mut chain = vec![id];
        while let Some(parent) = self.modules[*chain.last().unwrap()].parent {
            chain.push(parent);
        }
        chain.reverse();
        chain
    }

    /// The module named by its full path (`crate::http`).
    pub fn find(&self, path: &str) -> Option<ModId> {
        self.modules.iter().position(|m| m.path == path)
    }

    /// The last segment of a module's path (`render` for `crate::sync::render`).
    pub fn name(&self, id: ModId) -> &str {
        let path = &self.modules[id].path;
        path.rsplit("::").next().unwrap_or(path)
    }

    fn add(&mut self, module: Module) -> ModId {
        self.modules.push(module);
        self.modules.len() - 1
    }

    /// Reads a module's items: child modules are declared (and filled in turn), everything
    /// else is collected unless it is test code. `dir` is where its `mod x;` files live.
    fn fill(&mut self, sources: &Sources, id: ModId, items: &[Item], dir: &Path) -> Result<()> {
        let test_only = self.modules[id].test_only;
        let mut collector = Collector::default();
        let mut names = BTreeSet::new();
        for item in items {
            let test = test_only || is_test(item_attrs(item));
            if let Item::Mod(declared) = item {
                self.declare(sources, id, declared, dir, test)?;
            } else if !test {
                names.extend(item_name(item));
                collector.visit_item(item);
            }
        }
        let module = &mut self.modules[id];
        module.items = names;
        module.imports = collector.imports;
        module.paths = collector.paths;
        module.impls = collector.impls;
        Ok(())
    }

    fn declare(
        &mut self,
        sources: &Sources,
        parent: ModId,
        declared: &ItemMod,
        dir: &Path,
        test: bool,
    ) -> Result<()> {
        let name = declared.ident.to_string();
        let path = format!("{}::{name}", self.modules[parent].path);
        let child_dir = dir.join(&name);
        if let Some((_, items)) = &declared.content {
            let source = self.modules[parent].source.clone();
            let id = self.add(Module::new(path, Some(parent), None, &source, test));
            self.modules[parent].children.push((name, id));
            return self.fill(sources, id, items, &child_dir);
        }
        let flat = dir.join(format!("{name}.rs"));
        let nested = child_dir.join("mod.rs");
        let file = match (sources.contains_key(&flat), sources.contains_key(&nested)) {
            (true, false) => flat,
            (false, true) => nested,
            // A test module may be missing from a fixture; rustc would say so for real code.
            (false, false) if test => return Ok(()),
            (both, _) => {
                let line = line_of(declared.ident.span());
                let source = self.modules[parent].source.display();
                let problem = if both { "both" } else { "neither" };
                bail!(
                    "{source}:{line}: `mod {name};` with {problem} of {} and {}",
                    flat.display(),
                    nested.display()
                );
            }
        };
        let parsed = parse(sources, &file)?;
        let id = self.add(Module::new(path, Some(parent), Some(&file), &file, test));
        self.modules[parent].children.push((name, id));
        self.fill(sources, id, &parsed.items, &child_dir)
    }
}

impl Module {
    fn new(
        path: String,
        parent: Option<ModId>,
        file: Option<&Path>,
        source: &Path,
        test_only: bool,
    ) -> Module {
        Module {
            path,
            parent,
            children: Vec::new(),
            file: file.map(Path::to_path_buf),
            source: source.to_path_buf(),
            test_only,
            items: BTreeSet::new(),
            imports: Vec::new(),
            paths: Vec::new(),
            impls: Vec::new(),
        }
    }
}

pub fn parse(sources: &Sources, file: &Path) -> Result<syn::File> {
    let text = sources
        .get(file)
        .with_context(|| format!("no file {}", file.display()))?;
    syn::parse_file(text).with_context(|| format!("parsing {}", file.display()))
}

pub fn line_of(span: Span) -> usize {
    span.start().line
}

/// Whether these attributes make the item test-only: `#[cfg(test)]`, or `#[cfg(all(.., test,
/// ..))]`.
pub fn is_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let Meta::List(list) = &attr.meta else {
            return false;
        };
        if !list.path.is_ident("cfg") {
            return false;
        }
        let tokens: Vec<TokenTree> = list.tokens.clone().into_iter().collect();
        match tokens.as_slice() {
            [TokenTree::Ident(test)] => test == "test",
            [TokenTree::Ident(all), TokenTree::Group(group)]
                if all == "all" && group.delimiter() == Delimiter::Parenthesis =>
            {
                group
                    .stream()
                    .into_iter()
                    .any(|t| matches!(&t, TokenTree::Ident(test) if test == "test"))
            }
            _ => false,
        }
    })
}

pub fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The name an item defines in its module (modules, imports and impls aside).
fn item_name(item: &Item) -> Option<String> {
    let ident = match item {
        Item::Const(i) => &i.ident,
        Item::Enum(i) => &i.ident,
        Item::Fn(i) => &i.sig.ident,
        Item::Macro(i) => i.ident.as_ref()?,
        Item::Static(i) => &i.ident,
        Item::Struct(i) => &i.ident,
        Item::Trait(i) => &i.ident,
        Item::TraitAlias(i) => &i.ident,
        Item::Type(i) => &i.ident,
        Item::Union(i) => &i.ident,
        _ => return None,
    };
    Some(ident.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fixture;

    fn paths(tree: &Tree) -> Vec<(String, Option<String>)> {
        let file = |m: &Module| m.file.as_ref().map(|f| f.display().to_string());
        tree.modules
            .iter()
            .map(|m| (m.path.clone(), file(m)))
            .collect()
    }

    #[test]
    fn files_are_found_as_rustc_finds_them() {
        let tree = Tree::build(
            &fixture(&[
                ("lib.rs", "mod a;\nmod b;\nmod c {\n    mod d;\n}\n"),
                ("a.rs", "mod x;\n"),
                ("a/x.rs", ""),
                ("b/mod.rs", "mod y;\n"),
                ("b/y.rs", ""),
                ("c/d.rs", ""),
            ]),
            Path::new("lib.rs"),
        )
        .unwrap();
        let some = |f: &str| Some(f.to_string());
        assert_eq!(
            paths(&tree),
            [
                ("crate".into(), some("lib.rs")),
                ("crate::a".into(), some("a.rs")),
                ("crate::a::x".into(), some("a/x.rs")),
                ("crate::b".into(), some("b/mod.rs")),
                ("crate::b::y".into(), some("b/y.rs")),
                ("crate::c".into(), None),
                ("crate::c::d".into(), some("c/d.rs")),
            ]
        );
    }

    #[test]
    fn a_module_without_a_file_or_with_two_is_an_error() {
        let missing = Tree::build(&fixture(&[("lib.rs", "\nmod a;\n")]), Path::new("lib.rs"));
        assert_eq!(
            missing.err().unwrap().to_string(),
            "lib.rs:2: `mod a;` with neither of a.rs and a/mod.rs"
        );
        let both = fixture(&[("lib.rs", "mod a;\n"), ("a.rs", ""), ("a/mod.rs", "")]);
        let both = Tree::build(&both, Path::new("lib.rs"));
        assert_eq!(
            both.err().unwrap().to_string(),
            "lib.rs:1: `mod a;` with both of a.rs and a/mod.rs"
        );
        // A test module's file may be missing: it is not read.
        let test = fixture(&[("lib.rs", "#[cfg(test)]\nmod tests;\n")]);
        assert!(Tree::build(&test, Path::new("lib.rs")).is_ok());
    }
}

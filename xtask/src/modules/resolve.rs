//! What each written path refers to: the deepest module of the tree it names, following
//! imports and re-exports (`pub use`, `pub(crate) use`, private `use` reached through `super::`,
//! globs), one level or more.
//!
//! Names are looked up the way rustc does for the module's items: a child module, an item the
//! module defines, a name a `use` binds, then glob imports. A first segment found nowhere is an
//! external crate, std, the prelude, a generic or a local variable, and the path is dropped.
//!
//! A method of a type may be defined in an `impl` block in another module than the type (as
//! `Reconciler`'s are across `controller`): `T::f`, `Self::f` and `self.f()` (in an `impl T`)
//! also reference each module with an inherent `impl T` defining `f`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::tree::{ModId, Tree};

/// One reference from the code of a module to another module (or to itself).
pub struct Reference {
    pub from: ModId,
    pub to: ModId,
    pub file: PathBuf,
    pub line: usize,
    /// The path as written (`crate::sync::SyncError`; for a `use`, the whole path).
    pub written: String,
}

/// What a path names inside the crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Module(ModId),
    /// An item (function, type, constant...) defined in this module, and its name there.
    Item(ModId, String),
}

impl Target {
    pub fn module(&self) -> ModId {
        match self {
            Target::Module(id) | Target::Item(id, _) => *id,
        }
    }
}

/// What a name means in a module's scope.
enum Found {
    Local(Target),
    /// Imported from outside the crate (`use std::fmt;`).
    External,
}

/// Every reference the non-test code of `tree` makes to a module of it, in module order.
pub fn references(tree: &Tree) -> Vec<Reference> {
    let mut resolver = Resolver::new(tree);
    let methods = resolver.methods();
    let mut out = Vec::new();
    for (id, module) in tree.modules.iter().enumerate() {
        if module.test_only {
            continue;
        }
        let mut push = |to: ModId, line, written: String| {
            out.push(Reference {
                from: id,
                to,
                file: module.source.clone(),
                line,
                written,
            });
        };
        for (index, import) in module.imports.iter().enumerate() {
            resolver.resolving.push((id, index));
            let to = resolver.resolve(id, &import.path);
            resolver.resolving.pop();
            if let Some(to) = to {
                let glob = if import.name.is_none() { "::*" } else { "" };
                push(to.module(), import.line, import.path.join("::") + glob);
            }
        }
        for written in &module.paths {
            let (method, ty) = written.segments.split_last().expect("a path has a segment");
            if ty.is_empty() {
                // A single name is an item brought into scope (its `use` is a reference
                // already), or a local variable; a module alone is not a value or a type.
                if let Some(Found::Local(Target::Item(owner, _))) = resolver.lookup(id, method) {
                    push(owner, written.line, written.text.clone());
                }
                continue;
            }
            if !written.on_self
                && let Some(to) = resolver.resolve(id, &written.segments)
            {
                push(to.module(), written.line, written.text.clone());
            }
            if let Some(Target::Item(owner, name)) = resolver.resolve(id, ty) {
                let defined_in = methods.get(&(owner, name)).and_then(|m| m.get(method));
                for &to in defined_in.into_iter().flatten() {
                    push(to, written.line, written.text.clone());
                }
            }
        }
    }
    // `T::f` with `f` defined next to `T` is found twice (the path, the method): once is enough.
    out.dedup_by(|a, b| {
        (a.from, a.to, &a.file, a.line, &a.written) == (b.from, b.to, &b.file, b.line, &b.written)
    });
    out
}

/// For a type (the module defining it, its name): each method of its inherent `impl` blocks,
/// and the modules where these blocks are.
type Methods = BTreeMap<(ModId, String), BTreeMap<String, Vec<ModId>>>;

/// Resolves paths in a tree. `resolving` holds the imports being resolved, so that `use
/// foo::foo;` (an external `foo`) does not look itself up forever.
pub struct Resolver<'t> {
    tree: &'t Tree,
    resolving: Vec<(ModId, usize)>,
}

impl<'t> Resolver<'t> {
    pub fn new(tree: &'t Tree) -> Resolver<'t> {
        Resolver {
            tree,
            resolving: Vec::new(),
        }
    }

    /// Where the methods of each type of the tree are defined.
    fn methods(&mut self) -> Methods {
        let mut methods = Methods::new();
        for (id, module) in self.tree.modules.iter().enumerate() {
            for block in &module.impls {
                let Some(Target::Item(owner, name)) = self.resolve(id, &block.self_ty) else {
                    continue;
                };
                let of_type = methods.entry((owner, name)).or_default();
                for method in &block.methods {
                    let modules = of_type.entry(method.clone()).or_default();
                    if !modules.contains(&id) {
                        modules.push(id);
                    }
                }
            }
        }
        methods
    }

    /// What `segments`, written in module `at`, names in the crate; `None` when it is outside
    /// (an external crate, std) or not a path to anything (`Self::X`, a local variable).
    pub fn resolve(&mut self, at: ModId, segments: &[String]) -> Option<Target> {
        let (first, rest) = segments.split_first()?;
        let mut target = match first.as_str() {
            "crate" => Target::Module(0),
            "self" => Target::Module(at),
            "super" => Target::Module(self.tree.modules[at].parent?),
            "Self" => return None,
            name => match self.lookup(at, name)? {
                Found::Local(target) => target,
                Found::External => return None,
            },
        };
        for segment in rest {
            let Target::Module(module) = &target else {
                // Past an item: a variant, an associated function or constant.
                break;
            };
            let module = *module;
            target = if segment == "super" {
                Target::Module(self.tree.modules[module].parent?)
            } else {
                match self.lookup(module, segment) {
                    Some(Found::Local(found)) => found,
                    // A re-export of something external, or a name this tree does not know
                    // (made by a macro): the path still goes through this module.
                    Some(Found::External) | None => Target::Item(module, segment.clone()),
                }
            };
        }
        Some(target)
    }

    /// What `name` means in module `at`: a child module, an item it defines, a name one of
    /// its `use`s binds, or a name from one of its glob imports.
    fn lookup(&mut self, at: ModId, name: &str) -> Option<Found> {
        let module = &self.tree.modules[at];
        if let Some((_, child)) = module.children.iter().find(|(n, _)| n == name) {
            return Some(Found::Local(Target::Module(*child)));
        }
        if module.items.contains(name) {
            return Some(Found::Local(Target::Item(at, name.into())));
        }
        for (index, import) in module.imports.iter().enumerate() {
            if import.name.as_deref() != Some(name) || self.resolving.contains(&(at, index)) {
                continue;
            }
            self.resolving.push((at, index));
            let target = self.resolve(at, &import.path);
            self.resolving.pop();
            return Some(target.map_or(Found::External, Found::Local));
        }
        for (index, import) in module.imports.iter().enumerate() {
            if import.name.is_some() || self.resolving.contains(&(at, index)) {
                continue;
            }
            self.resolving.push((at, index));
            let found = match self.resolve(at, &import.path) {
                Some(Target::Module(from)) => self.lookup(from, name),
                _ => None,
            };
            self.resolving.pop();
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::modules::fixture;

    /// The references of the module at `from` to other modules, as (module, line).
    fn references_of(files: &[(&str, &str)], from: &str) -> BTreeSet<(String, usize)> {
        let tree = Tree::build(&fixture(files), Path::new("lib.rs")).unwrap();
        let from = tree.find(from).unwrap();
        references(&tree)
            .into_iter()
            .filter(|r| r.from == from && r.to != from)
            .map(|r| (tree.modules[r.to].path.clone(), r.line))
            .collect()
    }

    fn set(expected: &[(&str, usize)]) -> BTreeSet<(String, usize)> {
        expected.iter().map(|(m, l)| (m.to_string(), *l)).collect()
    }

    #[test]
    fn super_and_self_name_the_parent_and_the_module() {
        let files = [
            ("lib.rs", "mod a;\nmod b;\n"),
            (
                "a.rs",
                "mod inner;\nuse super::b::X;\npub fn f() {\n    self::inner::g();\n}\n",
            ),
            ("a/inner.rs", "pub fn g() {\n    super::super::b::h();\n}\n"),
            ("b.rs", "pub struct X;\npub fn h() {}\n"),
        ];
        assert_eq!(
            references_of(&files, "crate::a"),
            set(&[("crate::b", 2), ("crate::a::inner", 4)])
        );
        assert_eq!(
            references_of(&files, "crate::a::inner"),
            set(&[("crate::b", 2)])
        );
    }

    #[test]
    fn re_exports_are_followed_to_the_module_defining_the_item() {
        let files = [
            ("lib.rs", "pub mod sync;\nmod user;\n"),
            (
                "sync/mod.rs",
                "mod error;\npub use error::SyncError;\npub(crate) use error::Fetch;\npub use error::*;\n",
            ),
            (
                "sync/error.rs",
                "mod deep;\npub use deep::{Fetch};\npub struct SyncError;\npub struct Other;\n",
            ),
            ("sync/error/deep.rs", "pub struct Fetch;\n"),
            (
                "user.rs",
                "pub fn f(_: crate::sync::SyncError) {}\nuse crate::sync::Fetch;\n\
                 fn g(_: crate::sync::Other) {}\n",
            ),
        ];
        assert_eq!(
            references_of(&files, "crate::user"),
            set(&[
                ("crate::sync::error", 1),
                ("crate::sync::error::deep", 2),
                ("crate::sync::error", 3),
            ])
        );
    }

    #[test]
    fn inline_modules_are_modules() {
        let files = [
            (
                "lib.rs",
                "mod a {\n    pub mod b;\n    pub fn f() {\n        super::c::g();\n    }\n}\nmod c;\n",
            ),
            ("a/b.rs", "pub fn h() {\n    crate::c::g();\n}\n"),
            ("c.rs", "pub fn g() {}\n"),
        ];
        assert_eq!(references_of(&files, "crate::a"), set(&[("crate::c", 4)]));
        assert_eq!(
            references_of(&files, "crate::a::b"),
            set(&[("crate::c", 2)])
        );
    }

    #[test]
    fn nested_use_trees_reference_each_leaf() {
        let files = [
            ("lib.rs", "mod a;\nmod user;\n"),
            ("a/mod.rs", "pub mod b;\npub mod c;\n"),
            ("a/b.rs", "pub struct X;\n"),
            ("a/c.rs", "pub fn f() {}\n"),
            (
                "user.rs",
                "use crate::a::{b::X, c};\nfn g() {\n    c::f();\n}\nuse crate::a::{self as top};\n",
            ),
        ];
        assert_eq!(
            references_of(&files, "crate::user"),
            set(&[
                ("crate::a::b", 1),
                ("crate::a::c", 1),
                ("crate::a::c", 3),
                ("crate::a", 5),
            ])
        );
    }

    #[test]
    fn paths_start_at_imported_modules_and_at_children() {
        let files = [
            ("lib.rs", "mod sync;\nmod user;\n"),
            ("sync/mod.rs", "pub mod render;\n"),
            ("sync/render.rs", "pub struct StoredMap;\n"),
            (
                "user.rs",
                "mod child;\nuse crate::sync;\nfn f() -> sync::render::StoredMap {\n    \
                 child::g()\n}\n",
            ),
            ("user/child.rs", "pub fn g() {}\n"),
        ];
        assert_eq!(
            references_of(&files, "crate::user"),
            set(&[
                ("crate::sync", 2),
                ("crate::sync::render", 3),
                ("crate::user::child", 4),
            ])
        );
    }

    #[test]
    fn test_code_is_ignored() {
        let files = [
            ("lib.rs", "mod a;\nmod b;\n"),
            ("b.rs", "pub fn f() {}\npub struct T;\n"),
            (
                "a.rs",
                "pub fn prod() {}\n\
                 #[cfg(test)]\nuse crate::b::T;\n\
                 #[cfg(test)]\nfn helper() { crate::b::f() }\n\
                 struct S {\n    #[cfg(test)]\n    t: crate::b::T,\n}\n\
                 #[cfg(all(test, unix))]\nfn other() { crate::b::f() }\n\
                 #[cfg(not(test))]\nfn counted() { crate::b::f() }\n\
                 #[cfg(test)]\nmod tests {\n    use crate::b::f;\n}\n",
            ),
        ];
        assert_eq!(references_of(&files, "crate::a"), set(&[("crate::b", 13)]));
    }

    #[test]
    fn external_crates_std_and_local_names_are_no_references() {
        let files = [
            (
                "lib.rs",
                "mod a;\nmod http;\nfn root() {\n    http::x();\n}\n",
            ),
            ("http.rs", "pub fn x() {}\n"),
            (
                "a.rs",
                "use std::fmt;\nuse kube::Api;\nuse foo::foo;\n\
                 fn f(http: u8) {\n    fmt::write();\n    Api::all();\n    let x = http;\n    \
                 http::Request::new();\n    ::std::mem::drop(x);\n}\n",
            ),
        ];
        assert_eq!(references_of(&files, "crate::a"), set(&[]));
        assert_eq!(references_of(&files, "crate"), set(&[("crate::http", 4)]));
    }

    #[test]
    fn methods_reference_the_module_whose_impl_defines_them() {
        let files = [
            ("lib.rs", "mod reconcile;\nmod attempt;\n"),
            (
                "reconcile.rs",
                "pub struct Reconciler;\nimpl Reconciler {\n    pub fn run(&self) {\n        \
                 self.sync_once();\n        self.own();\n    }\n    fn own(&self) {}\n}\n",
            ),
            (
                "attempt.rs",
                "use crate::reconcile::Reconciler;\nimpl Reconciler {\n    \
                 pub fn sync_once(&self) {\n        Self::helper();\n        \
                 Reconciler::run(self);\n    }\n    fn helper() {}\n}\n",
            ),
        ];
        assert_eq!(
            references_of(&files, "crate::reconcile"),
            set(&[("crate::attempt", 4)])
        );
        assert_eq!(
            references_of(&files, "crate::attempt"),
            set(&[
                ("crate::reconcile", 1),
                ("crate::reconcile", 2),
                ("crate::reconcile", 5),
            ])
        );
    }

    #[test]
    fn paths_inside_macros_are_references() {
        let files = [
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("b.rs", "pub fn f() {}\npub enum E { V }\n"),
            (
                "a.rs",
                "fn f(x: u8) {\n    println!(\"{}\", crate::b::f());\n    \
                 assert!(matches!(x, super::b::E::V));\n}\n\
                 struct A;\nimpl A {\n    fn g(&self) {\n        \
                 println!(\"{}\", self.h());\n    }\n}\n",
            ),
            ("c.rs", "impl crate::a::A {\n    pub fn h(&self) {}\n}\n"),
        ];
        assert_eq!(
            references_of(&files, "crate::a"),
            set(&[("crate::b", 2), ("crate::b", 3), ("crate::c", 8)])
        );
    }
}

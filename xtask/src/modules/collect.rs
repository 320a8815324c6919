//! What one module's code declares and writes: its `use` imports, every path it writes, its
//! method calls on `self`, and its inherent `impl` blocks. Test code is skipped.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{ImplItem, Item, TraitItem, UseTree};

use super::tree::{Impl, Import, Written, is_test, item_attrs, line_of};

/// Gathers the imports and written paths of one module's code, skipping test code.
#[derive(Default)]
pub struct Collector {
    pub imports: Vec<Import>,
    pub paths: Vec<Written>,
    pub impls: Vec<Impl>,
    /// The type of the `impl` block being read, as written.
    self_ty: Option<Vec<String>>,
}

/// The path of a type as written (`Reconciler` for `Reconciler<'_>`), if it is one.
fn type_path(ty: &syn::Type) -> Option<Vec<String>> {
    match ty {
        syn::Type::Path(p) if p.qself.is_none() && p.path.leading_colon.is_none() => Some(
            p.path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect(),
        ),
        _ => None,
    }
}

impl Collector {
    /// Records a path; `Self::x` inside an `impl T` is recorded as `T::x`.
    fn written(&mut self, segments: Vec<String>, line: usize) {
        let text = segments.join("::");
        let (segments, on_self) = match (&self.self_ty, segments.split_first()) {
            (Some(ty), Some((first, rest))) if first == "Self" && !rest.is_empty() => {
                (ty.iter().chain(rest).cloned().collect(), true)
            }
            _ => (segments, false),
        };
        self.paths.push(Written {
            segments,
            line,
            text,
            on_self,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            UseTree::Name(n) => self.import(prefix, &n.ident, &n.ident),
            UseTree::Rename(r) => self.import(prefix, &r.ident, &r.rename),
            UseTree::Glob(g) => self.imports.push(Import {
                name: None,
                path: prefix.clone(),
                line: line_of(g.star_token.spans[0]),
            }),
            UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn import(&mut self, prefix: &[String], ident: &syn::Ident, bound: &syn::Ident) {
        let mut path = prefix.to_vec();
        if ident != "self" {
            path.push(ident.to_string());
        }
        let name = if bound == "self" {
            prefix.last().cloned()
        } else {
            Some(bound.to_string())
        };
        if name.is_some() && !path.is_empty() {
            self.imports.push(Import {
                name,
                path,
                line: line_of(bound.span()),
            });
        }
    }

    /// A call `self.method(..)` inside an `impl T`, recorded as `T::method`.
    fn self_call(&mut self, method: &proc_macro2::Ident) {
        if let Some(ty) = &self.self_ty {
            let name = method.to_string();
            self.paths.push(Written {
                segments: ty.iter().chain([&name]).cloned().collect(),
                line: line_of(method.span()),
                text: format!("self.{name}()"),
                on_self: true,
            });
        }
    }

    /// The paths inside a macro's tokens (`info!(.., crate::a::f())`, `matches!(x,
    /// super::E::V)`): runs of `ident :: ident ...` with two segments or more, and calls
    /// `self.method(..)`.
    fn scan(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let colons = |at: usize| {
            matches!((tokens.get(at), tokens.get(at + 1)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                    if a.as_char() == ':' && b.as_char() == ':')
        };
        let mut at = 0;
        while at < tokens.len() {
            match &tokens[at] {
                TokenTree::Group(group) => {
                    self.scan(group.stream());
                    at += 1;
                }
                TokenTree::Ident(receiver)
                    if receiver == "self"
                        && let (
                            Some(TokenTree::Punct(dot)),
                            Some(TokenTree::Ident(method)),
                            Some(TokenTree::Group(args)),
                        ) = (tokens.get(at + 1), tokens.get(at + 2), tokens.get(at + 3))
                        && dot.as_char() == '.'
                        && args.delimiter() == Delimiter::Parenthesis =>
                {
                    self.self_call(method);
                    at += 3;
                }
                TokenTree::Ident(first) if !(at >= 2 && colons(at - 2)) => {
                    let mut segments = vec![first.to_string()];
                    at += 1;
                    while colons(at) {
                        let Some(TokenTree::Ident(next)) = tokens.get(at + 2) else {
                            break;
                        };
                        segments.push(next.to_string());
                        at += 3;
                    }
                    if segments.len() >= 2 {
                        self.written(segments, line_of(first.span()));
                    }
                }
                _ => at += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast Item) {
        if is_test(item_attrs(item)) {
            return;
        }
        match item {
            Item::Use(u) if u.leading_colon.is_none() => self.use_tree(&mut Vec::new(), &u.tree),
            Item::Use(_) => {}
            // A module inside a function body is not followed (src/ has none).
            Item::Mod(_) => {}
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_item_impl(&mut self, block: &'ast syn::ItemImpl) {
        let ty = type_path(&block.self_ty);
        if let (None, Some(self_ty)) = (&block.trait_, &ty) {
            let methods = block.items.iter().filter_map(|item| match item {
                ImplItem::Fn(f) if !is_test(&f.attrs) => Some(f.sig.ident.to_string()),
                _ => None,
            });
            self.impls.push(Impl {
                self_ty: self_ty.clone(),
                methods: methods.collect(),
            });
        }
        let outer = std::mem::replace(&mut self.self_ty, ty);
        visit::visit_item_impl(self, block);
        self.self_ty = outer;
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        if let syn::Expr::Path(receiver) = &*call.receiver
            && receiver.path.is_ident("self")
        {
            self.self_call(&call.method);
        }
        visit::visit_expr_method_call(self, call);
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        let attrs = match item {
            ImplItem::Const(i) => &i.attrs,
            ImplItem::Fn(i) => &i.attrs,
            ImplItem::Type(i) => &i.attrs,
            ImplItem::Macro(i) => &i.attrs,
            _ => &Vec::new(),
        };
        if !is_test(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast TraitItem) {
        let attrs = match item {
            TraitItem::Const(i) => &i.attrs,
            TraitItem::Fn(i) => &i.attrs,
            TraitItem::Type(i) => &i.attrs,
            TraitItem::Macro(i) => &i.attrs,
            _ => &Vec::new(),
        };
        if !is_test(attrs) {
            visit::visit_trait_item(self, item);
        }
    }

    fn visit_field(&mut self, field: &'ast syn::Field) {
        if !is_test(&field.attrs) {
            visit::visit_field(self, field);
        }
    }

    fn visit_variant(&mut self, variant: &'ast syn::Variant) {
        if !is_test(&variant.attrs) {
            visit::visit_variant(self, variant);
        }
    }

    fn visit_field_value(&mut self, field: &'ast syn::FieldValue) {
        if !is_test(&field.attrs) {
            visit::visit_field_value(self, field);
        }
    }

    fn visit_arm(&mut self, arm: &'ast syn::Arm) {
        if !is_test(&arm.attrs) {
            visit::visit_arm(self, arm);
        }
    }

    fn visit_local(&mut self, local: &'ast syn::Local) {
        if !is_test(&local.attrs) {
            visit::visit_local(self, local);
        }
    }

    fn visit_stmt_macro(&mut self, mac: &'ast syn::StmtMacro) {
        if !is_test(&mac.attrs) {
            visit::visit_stmt_macro(self, mac);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none()
            && let Some(first) = path.segments.first()
        {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.written(segments, line_of(first.ident.span()));
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        visit::visit_macro(self, mac);
        self.scan(mac.tokens.clone());
    }
}

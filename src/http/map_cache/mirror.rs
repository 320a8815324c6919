//! The objects of one kind as the cache's watches report them, in one or more scopes (a
//! namespace each, or the whole cluster): a scope that lists again keeps its old objects
//! served until the new list is complete.

use std::collections::HashMap;

use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use super::ObjectId;

/// A watch scope as a map key: the namespace, or "" for the whole cluster.
pub(super) fn scope_key(scope: Option<&str>) -> String {
    scope.unwrap_or_default().to_owned()
}

/// The objects of one kind, as watches in one or more scopes report them.
pub(super) struct Mirror<T> {
    pub(super) items: HashMap<ObjectId, T>,
    pub(super) scopes: HashMap<String, Listing<T>>,
}

impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Mirror {
            items: HashMap::new(),
            scopes: HashMap::new(),
        }
    }
}

/// Where one scope's watch stands.
pub(super) enum Listing<T> {
    /// Not listed yet, or failed since.
    NotWatching,
    /// A list in progress, building a fresh set that replaces the scope's items when done,
    /// so the old ones stay served meanwhile.
    InProgress(HashMap<ObjectId, T>),
    /// Listed, and watching since.
    Watching,
}

impl<T> Mirror<T> {
    pub(super) fn expect(&mut self, scopes: &[Option<String>]) {
        for scope in scopes {
            self.scopes
                .insert(scope_key(scope.as_deref()), Listing::NotWatching);
        }
    }

    pub(super) fn is_watching(&self) -> bool {
        !self.scopes.is_empty()
            && self
                .scopes
                .values()
                .all(|listing| matches!(listing, Listing::Watching))
    }

    pub(super) fn fail(&mut self, scope: &str) {
        self.scopes.insert(scope.to_owned(), Listing::NotWatching);
    }

    pub(super) fn apply<K: Resource>(
        &mut self,
        scope: &str,
        event: Event<K>,
        convert: impl Fn(&K) -> Option<T>,
    ) {
        match event {
            Event::Init => {
                self.scopes
                    .insert(scope.to_owned(), Listing::InProgress(HashMap::new()));
            }
            Event::InitApply(object) => {
                if let Some(Listing::InProgress(listed)) = self.scopes.get_mut(scope)
                    && let Some(item) = convert(&object)
                {
                    listed.insert(object_id(&object), item);
                }
            }
            Event::InitDone => {
                let listed = match self.scopes.insert(scope.to_owned(), Listing::Watching) {
                    Some(Listing::InProgress(listed)) => listed,
                    _ => HashMap::new(),
                };
                self.items
                    .retain(|(namespace, _), _| !scope.is_empty() && scope != namespace);
                self.items.extend(listed);
            }
            Event::Apply(object) => match convert(&object) {
                Some(item) => {
                    self.items.insert(object_id(&object), item);
                }
                None => {
                    self.items.remove(&object_id(&object));
                }
            },
            Event::Delete(object) => {
                self.items.remove(&object_id(&object));
            }
        }
    }
}

fn object_id<K: Resource>(object: &K) -> ObjectId {
    (object.namespace().unwrap_or_default(), object.name_any())
}

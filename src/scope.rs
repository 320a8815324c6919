//! Which namespaces the operator watches: a list, or the whole cluster when the list is empty.

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};

/// One watch scope per listed namespace, or one for the whole cluster (`None`).
pub fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    }
}

/// The API of `K` in one scope.
pub fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_means_the_whole_cluster() {
        assert_eq!(scopes(&[]), vec![None]);
        assert_eq!(
            scopes(&["a".into(), "b".into()]),
            vec![Some("a".into()), Some("b".into())]
        );
    }
}

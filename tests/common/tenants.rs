//! Tenants as a platform team sets them up: one namespace each, and an identity there
//! with only what a team gets (edit rights on ConfigMaps, Secrets, ServiceAccounts and
//! ModelCostMapSyncs, and tokens for its ServiceAccounts), never cluster-wide rights.
//!
//! ```ignore
//! let team = Tenant::create(&admin, "team-a").await;
//! let token = team.token(&admin).await;          // like `kubectl create token`
//! let as_team = team.client(&token).await;        // a kube Client acting as the team
//! assert!(!can_i(&team.user(), &["get", "configmaps", "-n", "other"]));
//! ```

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

/// The ServiceAccount every tenant acts as.
pub const TENANT_ACCOUNT: &str = "tenant";

/// One tenant: its namespace and identity.
pub struct Tenant {
    pub namespace: String,
}

impl Tenant {
    /// A fresh namespace (named from `prefix`) with the ServiceAccount [`TENANT_ACCOUNT`]
    /// bound to a Role of a team's rights there.
    pub async fn create(admin: &Client, prefix: &str) -> Tenant {
        let namespace = super::namespace(admin, prefix).await;
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "tenant"},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps", "secrets", "serviceaccounts"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
                {"apiGroups": ["costmap.dev"], "resources": ["modelcostmapsyncs"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            ],
        }))
        .expect("Role");
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "tenant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
            "subjects": [{"kind": "ServiceAccount", "name": TENANT_ACCOUNT, "namespace": namespace}],
        }))
        .expect("RoleBinding");
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": TENANT_ACCOUNT}})).expect("SA");
        let post = PostParams::default();
        Api::<Role>::namespaced(admin.clone(), &namespace)
            .create(&post, &role)
            .await
            .expect("create Role");
        Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
            .create(&post, &binding)
            .await
            .expect("create RoleBinding");
        Api::<ServiceAccount>::namespaced(admin.clone(), &namespace)
            .create(&post, &account)
            .await
            .expect("create ServiceAccount");
        Tenant { namespace }
    }

    /// The tenant's username, for `kubectl --as` ([`super::can_i`]).
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{TENANT_ACCOUNT}", self.namespace)
    }

    /// A token of the tenant's ServiceAccount (TokenRequest, like `kubectl create token`),
    /// valid for an hour.
    pub async fn token(&self, admin: &Client) -> String {
        account_token(admin, &self.namespace, TENANT_ACCOUNT).await
    }

    /// A client that acts as the holder of `token` on the shared control plane.
    pub async fn client(&self, token: &str) -> Client {
        client_with_token(token).await
    }
}

/// A token of ServiceAccount `name` in `namespace`.
pub async fn account_token(admin: &Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("a TokenRequest answers with a token")
        .token
}

/// A kube Client for the shared control plane that authenticates with `token`.
pub async fn client_with_token(token: &str) -> Client {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    super::control_plane()
        .write_token_kubeconfig(&path, token)
        .expect("token kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("token kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client")
}

//! Both kinds behind one face, so that a scenario is written once and run against a
//! `ModelCostMapSync` and a `ClusterModelCostMapSync`, expecting the same of each.
//!
//! A [`Subject`] is one object of either kind with the ConfigMaps it writes: the namespaced
//! kind writes one in its own (fresh) namespace; the cluster kind writes a copy into each of
//! [`CLUSTER_NAMESPACES`] fresh namespaces that its selector picks by a label of its own.
//! Everything a scenario reads or does goes through the subject: its sync status (the
//! namespaced status, or the cluster status's flattened `sync` part), the bytes its
//! ConfigMap(s) hold, sync requests, spec and annotation patches, its Events (in namespace
//! `default` for a cluster object) and the map endpoint.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;

use costmap_operator::api::{
    ClusterModelCostMapSync, ConditionType, DEFAULT_KEY, ModelCostMapSync, ModelCostMapSyncStatus,
    Reason, SYNC_REQUESTED_AT_ANNOTATION,
};
use costmap_operator::controller::FIELD_MANAGER;
use costmap_operator::digest::sha256_digest;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::{
    DEADLINE, Source, config_maps, eventually, eventually_explained, labelled_namespace, merge,
    namespace, stored_bytes,
};

/// How many namespaces a cluster subject selects: more than one, so that "every copy" means
/// something.
pub const CLUSTER_NAMESPACES: usize = 2;

/// The label on a cluster subject's namespaces; its value is the subject's name.
const SELECTOR_LABEL: &str = "kinds-test";

/// Which kind a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ModelCostMapSync`: one ConfigMap in its own namespace.
    Namespaced,
    /// `ClusterModelCostMapSync`: a copy in every namespace its selector picks.
    Cluster,
}

impl Kind {
    /// The kind's name, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespaced => "ModelCostMapSync",
            Kind::Cluster => "ClusterModelCostMapSync",
        }
    }

    /// Whether it keeps a history ring of published maps, and so can honour
    /// `costmap.dev/reject-digest` (the cluster kind has neither: a documented difference).
    pub fn keeps_history(self) -> bool {
        self == Kind::Namespaced
    }

    fn resource(self) -> ApiResource {
        match self {
            Kind::Namespaced => ApiResource::erase::<ModelCostMapSync>(&()),
            Kind::Cluster => ApiResource::erase::<ClusterModelCostMapSync>(&()),
        }
    }

    /// A suffix that keeps the two kinds' objects of one scenario apart.
    fn suffix(self) -> &'static str {
        match self {
            Kind::Namespaced => "ns",
            Kind::Cluster => "cl",
        }
    }
}

/// One object of either kind, and where its ConfigMaps are.
pub struct Subject {
    pub kind: Kind,
    pub client: Client,
    /// The object's name, which is also its ConfigMaps' name.
    pub name: String,
    /// Where its ConfigMaps are: its own namespace, or every namespace it selects.
    pub namespaces: Vec<String>,
    /// `http://127.0.0.1:PORT` of the operator serving its map (a restarted operator has
    /// another).
    pub operator_url: String,
    api: Api<DynamicObject>,
}

impl Subject {
    /// Creates the object `<scenario>-<kind>` fetching from `source` every hour, `extra`
    /// merged into its spec: a namespaced one in a fresh namespace, or a cluster one
    /// selecting [`CLUSTER_NAMESPACES`] fresh namespaces by a label of its own.
    pub async fn create(
        kind: Kind,
        client: &Client,
        operator_url: &str,
        scenario: &str,
        source: &Source,
        extra: Value,
    ) -> Subject {
        let name = format!("{scenario}-{}", kind.suffix());
        let mut spec = json!({"source": {"url": source.url}, "interval": "1h"});
        merge(&mut spec, extra);
        let subject = Subject::without_object(kind, client, operator_url, &name).await;
        subject.create_object(spec).await;
        subject
    }

    /// The namespaces and the API of the object `name`, not created yet.
    pub async fn without_object(
        kind: Kind,
        client: &Client,
        operator_url: &str,
        name: &str,
    ) -> Subject {
        let resource = kind.resource();
        let (namespaces, api) = match kind {
            Kind::Namespaced => {
                let ns = namespace(client, name).await;
                let api = Api::namespaced_with(client.clone(), &ns, &resource);
                (vec![ns], api)
            }
            Kind::Cluster => {
                let labels = BTreeMap::from([(SELECTOR_LABEL.to_owned(), name.to_owned())]);
                let mut namespaces = Vec::new();
                for n in 0..CLUSTER_NAMESPACES {
                    let ns = format!("{name}-{n}-{}", std::process::id());
                    labelled_namespace(client, &ns, &labels).await;
                    namespaces.push(ns);
                }
                (namespaces, Api::all_with(client.clone(), &resource))
            }
        };
        Subject {
            kind,
            client: client.clone(),
            name: name.to_owned(),
            namespaces,
            operator_url: operator_url.to_owned(),
            api,
        }
    }

    /// The object with `spec` (a cluster one gets its namespace selector added), as JSON.
    fn object(&self, spec: Value, dry_run_name: Option<&str>) -> DynamicObject {
        let mut spec = spec;
        if self.kind == Kind::Cluster {
            spec["namespaceSelector"] = json!({"matchLabels": {SELECTOR_LABEL: self.name}});
        }
        let mut metadata = json!({"name": dry_run_name.unwrap_or(&self.name)});
        if self.kind == Kind::Namespaced {
            metadata["namespace"] = json!(self.namespaces[0]);
        }
        let resource = self.kind.resource();
        serde_json::from_value(json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": metadata,
            "spec": spec,
        }))
        .expect("an object")
    }

    /// Creates the object with `spec` (complete but for a cluster object's selector).
    pub async fn create_object(&self, spec: Value) {
        self.api
            .create(&PostParams::default(), &self.object(spec, None))
            .await
            .unwrap_or_else(|err| panic!("creating {} {}: {err}", self.kind.as_str(), self.name));
    }

    /// Whether the API server would take an object of this kind with `spec` (a dry run).
    pub async fn would_take(&self, spec: Value) -> bool {
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let probe = format!("{}-probe", self.name);
        self.api
            .create(&params, &self.object(spec, Some(&probe)))
            .await
            .is_ok()
    }

    /// The object as the API server has it.
    pub async fn get(&self) -> DynamicObject {
        self.api
            .get(&self.name)
            .await
            .unwrap_or_else(|err| panic!("reading {} {}: {err}", self.kind.as_str(), self.name))
    }

    /// Its `status` as JSON (for a cluster object the sync fields sit at its top level,
    /// beside `namespaces`).
    pub async fn raw_status(&self) -> Value {
        self.get().await.data["status"].clone()
    }

    /// Its sync status: a namespaced object's status, or a cluster object's `status.sync`.
    pub async fn status(&self) -> Option<ModelCostMapSyncStatus> {
        let object = self.api.get(&self.name).await.ok()?;
        let status = object.data.get("status")?.clone();
        Some(serde_json::from_value(status).expect("a status of the sync's shape"))
    }

    /// `metadata.generation` now.
    pub async fn generation(&self) -> Option<i64> {
        self.get().await.metadata.generation
    }

    /// Waits until its sync status satisfies `check`; the failure says `what` and the
    /// last Ready condition seen.
    pub async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&ModelCostMapSyncStatus) -> bool,
    ) -> ModelCostMapSyncStatus {
        let last = RefCell::new("no status yet".to_owned());
        eventually_explained(
            &format!("{} {}: {what}", self.kind.as_str(), self.name),
            DEADLINE,
            || format!("last Ready condition seen: {}", last.borrow()),
            || async {
                let status = self.status().await?;
                *last.borrow_mut() = describe_ready(&status);
                check(&status).then_some(status)
            },
        )
        .await
    }

    /// Waits until Ready has `status` and `reason`; returns the sync status.
    pub async fn wait_ready(&self, status: &str, reason: Reason) -> ModelCostMapSyncStatus {
        self.wait_status(&format!("Ready={status} {}", reason.as_str()), |s| {
            ready(s).is_some_and(|c| c.status == status && c.reason == reason.as_str())
        })
        .await
    }

    /// Waits until status has handled the sync request `token`.
    pub async fn wait_handled(&self, token: &str) -> ModelCostMapSyncStatus {
        self.wait_status(&format!("handling sync request {token}"), |s| {
            s.last_handled_sync_request.as_deref() == Some(token)
        })
        .await
    }

    /// Waits until its artifact is the map `bytes`.
    pub async fn wait_artifact(&self, bytes: &[u8]) -> ModelCostMapSyncStatus {
        let digest = sha256_digest(bytes);
        self.wait_status(&format!("artifact {digest}"), |s| {
            s.artifact.as_ref().is_some_and(|a| a.digest == digest)
        })
        .await
    }

    /// A merge patch of the object.
    pub async fn patch(&self, patch: Value) -> DynamicObject {
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|err| panic!("patching {} {}: {err}", self.kind.as_str(), self.name))
    }

    /// Merges `spec` into the spec; returns the new generation.
    pub async fn patch_spec(&self, spec: Value) -> Option<i64> {
        self.patch(json!({"spec": spec})).await.metadata.generation
    }

    /// Sets (a string) or removes (null) annotations.
    pub async fn annotate(&self, annotations: Value) {
        self.patch(json!({"metadata": {"annotations": annotations}}))
            .await;
    }

    /// Sets the sync-request annotation to `token`.
    pub async fn request_sync(&self, token: &str) {
        self.annotate(json!({SYNC_REQUESTED_AT_ANNOTATION: token}))
            .await;
    }

    /// Asks for a sync and waits until it has been handled; the sync status then.
    pub async fn sync_now(&self, token: &str) -> ModelCostMapSyncStatus {
        self.request_sync(token).await;
        self.wait_handled(token).await
    }

    /// Server-side applies `status` (JSON of the kind's status) as the operator does: its
    /// field manager, forced.
    pub async fn apply_status(&self, status: Value) {
        let resource = self.kind.resource();
        let patch = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "status": status,
        });
        self.api
            .patch_status(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .unwrap_or_else(|err| panic!("applying the status of {}: {err}", self.name));
    }

    /// Whether the API server would take a status write merging `status` in (a dry run:
    /// nothing is stored).
    pub async fn would_take_status(&self, status: Value) -> bool {
        let params = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        let patch = json!({"status": status});
        self.api
            .patch_status(&self.name, &params, &Patch::Merge(&patch))
            .await
            .is_ok()
    }

    /// The ConfigMap of its name in each of its namespaces, None where there is none.
    pub async fn config_maps(&self) -> Vec<(String, Option<ConfigMap>)> {
        let mut found = Vec::new();
        for ns in &self.namespaces {
            let config_map = config_maps(&self.client, ns)
                .get_opt(&self.name)
                .await
                .expect("reading a ConfigMap");
            found.push((ns.clone(), config_map));
        }
        found
    }

    /// The map bytes each of its namespaces holds (None: no ConfigMap there).
    pub async fn held(&self) -> Vec<Option<Vec<u8>>> {
        self.config_maps()
            .await
            .into_iter()
            .map(|(_, cm)| cm.map(|cm| stored_bytes(&cm, DEFAULT_KEY)))
            .collect()
    }

    /// Whether every one of its namespaces holds exactly `bytes`.
    pub async fn holds(&self, bytes: &[u8]) -> bool {
        self.held()
            .await
            .iter()
            .all(|held| held.as_deref() == Some(bytes))
    }

    /// Waits until every one of its namespaces holds exactly `bytes`.
    pub async fn wait_held(&self, bytes: &[u8]) {
        let digest = sha256_digest(bytes);
        eventually(
            &format!("every ConfigMap {} to hold {digest}", self.name),
            || async { self.holds(bytes).await.then_some(()) },
        )
        .await;
    }

    /// The resourceVersion of its ConfigMap in each namespace: equal readings mean nothing
    /// was written in between.
    pub async fn config_map_versions(&self) -> Vec<Option<String>> {
        self.config_maps()
            .await
            .into_iter()
            .map(|(_, cm)| cm.and_then(|cm| cm.resource_version()))
            .collect()
    }

    /// Deletes every ConfigMap this operator manages in its namespaces (the target, its
    /// history ring, a cluster object's copies); returns their names.
    pub async fn delete_managed_config_maps(&self) -> Vec<String> {
        let managed = ListParams::default().labels("app.kubernetes.io/managed-by=costmap-operator");
        let mut deleted = Vec::new();
        for ns in &self.namespaces {
            let api = config_maps(&self.client, ns);
            for cm in api.list(&managed).await.expect("list ConfigMaps").items {
                let name = cm.name_any();
                api.delete(&name, &DeleteParams::default())
                    .await
                    .expect("delete a ConfigMap");
                deleted.push(format!("{ns}/{name}"));
            }
        }
        deleted
    }

    /// Events recorded about this object, as (reason, note): in its namespace, or in
    /// `default` for a cluster object.
    pub async fn events(&self) -> Vec<(String, String)> {
        let namespace = match self.kind {
            Kind::Namespaced => self.namespaces[0].as_str(),
            Kind::Cluster => "default",
        };
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|event| {
                event.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(self.kind.as_str())
                        && r.name.as_deref() == Some(self.name.as_str())
                })
            })
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Waits for an Event about this object with `reason` whose note contains `text`.
    pub async fn wait_event(&self, reason: &str, text: &str) -> String {
        eventually(
            &format!("an Event {reason} about {} mentioning {text:?}", self.name),
            || async {
                self.events()
                    .await
                    .into_iter()
                    .find(|(r, note)| r == reason && note.contains(text))
                    .map(|(_, note)| note)
            },
        )
        .await
    }

    /// What the endpoint `/maps/{namespace}/{name}/{key}` serves (None: no 200).
    pub async fn served(&self, namespace: &str) -> Option<Vec<u8>> {
        let url = format!(
            "{}/maps/{namespace}/{}/{DEFAULT_KEY}",
            self.operator_url, self.name
        );
        let response = reqwest::get(&url).await.ok()?;
        (response.status() == 200).then_some(())?;
        Some(response.bytes().await.ok()?.to_vec())
    }

    /// Asserts that a failed sync, which left `status`, kept the last good map `bytes`:
    /// status names it, no ConfigMap was written since `versions`, and it is served.
    pub async fn assert_kept(
        &self,
        status: &ModelCostMapSyncStatus,
        bytes: &[u8],
        versions: &[Option<String>],
        what: &str,
    ) {
        assert_eq!(
            status.artifact.as_ref().map(|a| a.digest.clone()),
            Some(sha256_digest(bytes)),
            "{what}: the artifact is the last good map"
        );
        assert_eq!(status.pending_artifact, None, "{what}: nothing pending");
        assert_eq!(
            self.config_map_versions().await,
            versions,
            "{what}: no ConfigMap written"
        );
        assert!(self.holds(bytes).await, "{what}");
        self.wait_served(bytes).await;
    }

    /// Waits until the endpoint serves exactly `bytes` for each of its namespaces.
    pub async fn wait_served(&self, bytes: &[u8]) {
        for namespace in &self.namespaces {
            eventually(
                &format!("/maps/{namespace}/{} to serve the map", self.name),
                || async { (self.served(namespace).await? == bytes).then_some(()) },
            )
            .await;
        }
    }
}

/// Asserts that Ready is `expected` (status, reason), naming `what` and the message when it
/// is not; returns it.
pub fn assert_ready<'a>(
    status: &'a ModelCostMapSyncStatus,
    expected: (&str, Reason),
    what: &str,
) -> &'a Condition {
    let ready = ready(status).expect("a Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        (expected.0, expected.1.as_str()),
        "{what}: {}",
        ready.message
    );
    ready
}

/// The Ready condition of a sync status.
pub fn ready(status: &ModelCostMapSyncStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str())
}

/// "True Synced: message", for failure messages.
pub fn describe_ready(status: &ModelCostMapSyncStatus) -> String {
    match ready(status) {
        Some(c) => format!("{} {}: {}", c.status, c.reason, c.message),
        None => "no Ready condition".to_owned(),
    }
}

/// Starts a cluster-wide operator on a runtime of its own, in a thread that lives as long
/// as the test binary, after `prepare` has run there; returns its URL. The tests of one
/// binary each run on their own runtime, which ends with the test: an operator started on
/// one of them would stop with it, so the one operator they share runs on this one.
pub fn operator_on_its_own_runtime<F, Fut>(prepare: F) -> String
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (started, url) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("shared-operator".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let client = super::client().await;
                prepare(client.clone()).await;
                let operator = super::Operator::start_cluster_wide(&client);
                started.send(operator.base_url.clone()).expect("send");
                std::future::pending::<()>().await;
            });
        })
        .expect("a thread");
    url.recv().expect("the shared operator to start")
}

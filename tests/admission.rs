//! The CRD on a real kube-apiserver: bad ModelCostMapSync objects are refused at admission
//! with a message that names the field and the problem, good ones are accepted and defaulted
//! by the server, and `kubectl explain` shows the doc comments.
//!
//! Objects are sent and read back as raw JSON (`DynamicObject`), never through the Rust
//! types: their serde defaults would fill in every field on the client and hide what the
//! server does.

mod common;

use common::{client, control_plane, eventually, namespace};
use costmap_operator::api::{DEFAULT_SOURCE_URL, MapSync, ModelCostMapSync};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

fn raw_syncs(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<ModelCostMapSync>(&()),
    )
}

/// POSTs a ModelCostMapSync with exactly this `spec`, as JSON.
async fn create_raw(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "costmap.dev/v1alpha1",
        "kind": "ModelCostMapSync",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    raw_syncs(client, ns)
        .create(&PostParams::default(), &object)
        .await
}

/// The spec of an object as the server stored it.
async fn stored_spec(client: &Client, ns: &str, name: &str) -> Value {
    let object = raw_syncs(client, ns).get(name).await.expect("get");
    object.data["spec"].clone()
}

struct Refused {
    what: &'static str,
    spec: Value,
    /// The JSON path the message must name.
    field: &'static str,
    /// What the message must say about the problem.
    problem: &'static str,
}

fn refused(what: &'static str, spec: Value, field: &'static str, problem: &'static str) -> Refused {
    Refused {
        what,
        spec,
        field,
        problem,
    }
}

const PATTERN: &str = "should match '^([0-9]+(ms|s|m|h))+$'";

#[tokio::test]
async fn invalid_specs_are_refused_with_a_message_naming_field_and_problem() {
    let client = client().await;
    let ns = namespace(&client, "admission-refused").await;
    let url_message = "url must be an http or https URL";
    let cases = [
        refused(
            "ftp URL",
            json!({"source": {"url": "ftp://x/y"}}),
            "spec.source.url",
            url_message,
        ),
        refused(
            "file URL",
            json!({"source": {"url": "file:///etc/passwd"}}),
            "spec.source.url",
            url_message,
        ),
        refused(
            "not a URL",
            json!({"source": {"url": "not a url"}}),
            "spec.source.url",
            url_message,
        ),
        refused(
            "empty URL",
            json!({"source": {"url": ""}}),
            "spec.source.url",
            "should be at least 1 chars long",
        ),
        refused(
            "interval below 1m",
            json!({"interval": "30s"}),
            "spec.interval",
            "interval must be at least 1m",
        ),
        refused(
            "interval 59s",
            json!({"interval": "59s"}),
            "spec.interval",
            "interval must be at least 1m",
        ),
        refused(
            "interval in days",
            json!({"interval": "1d"}),
            "spec.interval",
            PATTERN,
        ),
        refused(
            "interval in words",
            json!({"interval": "5 minutes"}),
            "spec.interval",
            PATTERN,
        ),
        refused(
            "fractional interval",
            json!({"interval": "1.5h"}),
            "spec.interval",
            PATTERN,
        ),
        refused(
            "negative interval",
            json!({"interval": "-5m"}),
            "spec.interval",
            PATTERN,
        ),
        refused(
            "zero timeout",
            json!({"source": {"timeout": "0s"}}),
            "spec.source.timeout",
            "timeout must be between 1s and 10m",
        ),
        refused(
            "timeout over 10m",
            json!({"source": {"timeout": "11m"}}),
            "spec.source.timeout",
            "timeout must be between 1s and 10m",
        ),
        refused(
            "timeout below 1s",
            json!({"source": {"timeout": "500ms"}}),
            "spec.source.timeout",
            "timeout must be between 1s and 10m",
        ),
        refused(
            "timeout in words",
            json!({"source": {"timeout": "30 seconds"}}),
            "spec.source.timeout",
            PATTERN,
        ),
        refused(
            "minModels 0",
            json!({"validation": {"minModels": 0}}),
            "spec.validation.minModels",
            "should be greater than or equal to 1",
        ),
        refused(
            "maxRemovedPercent 101",
            json!({"validation": {"maxRemovedPercent": 101}}),
            "spec.validation.maxRemovedPercent",
            "should be less than or equal to 100",
        ),
        refused(
            "minPricedPercent 101",
            json!({"validation": {"minPricedPercent": 101}}),
            "spec.validation.minPricedPercent",
            "should be less than or equal to 100",
        ),
        refused(
            "maxUnpricedPercent -1",
            json!({"validation": {"maxUnpricedPercent": -1}}),
            "spec.validation.maxUnpricedPercent",
            "should be greater than or equal to 0",
        ),
        refused(
            "maxRepricedPercent 101",
            json!({"validation": {"maxRepricedPercent": 101}}),
            "spec.validation.maxRepricedPercent",
            "should be less than or equal to 100",
        ),
        refused(
            "maxRemovedPercent -1",
            json!({"validation": {"maxRemovedPercent": -1}}),
            "spec.validation.maxRemovedPercent",
            "should be greater than or equal to 0",
        ),
        refused(
            "configMapName with capitals and underscore",
            json!({"target": {"configMapName": "Bad_Name"}}),
            "spec.target.configMapName",
            "should match",
        ),
        refused(
            "key with a slash",
            json!({"target": {"key": "a/b"}}),
            "spec.target.key",
            "should match '^[-._a-zA-Z0-9]+$'",
        ),
        refused(
            "history over 10",
            json!({"history": 11}),
            "spec.history",
            "should be less than or equal to 10",
        ),
        refused(
            "negative history",
            json!({"history": -1}),
            "spec.history",
            "should be greater than or equal to 0",
        ),
        refused(
            "an override ConfigMap with a bad name",
            json!({"overrides": {"configMapRefs": [{"name": "Team_Rates"}]}}),
            "spec.overrides.configMapRefs[0].name",
            "should match",
        ),
        refused(
            "an override key with a slash",
            json!({"overrides": {"configMapRefs": [{"name": "rates", "key": "a/b.json"}]}}),
            "spec.overrides.configMapRefs[0].key",
            "should match",
        ),
        refused(
            "an override model that is not an object",
            json!({"overrides": {"models": {"gpt-4o": 1e-6}}}),
            "spec.overrides.models.gpt-4o",
            "must be of type object",
        ),
        refused(
            "suspend as a string",
            json!({"suspend": "yes"}),
            "spec.suspend",
            "must be of type boolean",
        ),
    ];

    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        match create_raw(&client, &ns, &name, case.spec.clone()).await {
            Ok(_) => failures.push(format!("{}: {} was accepted", case.what, case.spec)),
            Err(kube::Error::Api(status)) => {
                let message = &status.message;
                let named = status.code == 422
                    && status.reason == "Invalid"
                    && message.contains(case.field)
                    && message.contains(case.problem);
                if !named {
                    failures.push(format!(
                        "{}: expected 422 naming {:?} and {:?}, got {} {}: {message}",
                        case.what, case.field, case.problem, status.code, status.reason
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: unexpected error {other}", case.what)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let left = raw_syncs(&client, &ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(left.items.is_empty(), "refused objects must not be stored");
}

#[tokio::test]
async fn an_object_without_spec_is_refused() {
    let client = client().await;
    let ns = namespace(&client, "admission-nospec").await;
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "costmap.dev/v1alpha1",
        "kind": "ModelCostMapSync",
        "metadata": {"name": "nospec", "namespace": ns},
    }))
    .unwrap();
    let err = raw_syncs(&client, &ns)
        .create(&PostParams::default(), &object)
        .await
        .expect_err("spec is required");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}");
    };
    assert_eq!(status.code, 422, "{}", status.message);
    assert!(status.message.contains("spec"), "{}", status.message);
}

#[tokio::test]
async fn an_empty_spec_is_accepted_and_defaulted_by_the_server() {
    let client = client().await;
    let ns = namespace(&client, "admission-defaults").await;
    let created = create_raw(&client, &ns, "minimal", json!({}))
        .await
        .expect("spec: {} is valid");
    let expected = json!({
        "source": {"url": DEFAULT_SOURCE_URL, "timeout": "30s"},
        "interval": "1h",
        "suspend": false,
        "history": 3,
        "target": {},
        "validation": {"minModels": 50, "maxRemovedPercent": 50, "minPricedPercent": 50,
                       "maxUnpricedPercent": 1, "maxRepricedPercent": 25},
    });
    assert_eq!(
        created.data["spec"], expected,
        "the create response is defaulted"
    );
    assert_eq!(
        stored_spec(&client, &ns, "minimal").await,
        expected,
        "the stored object is defaulted"
    );

    // Defaults fill in missing fields one level down too, and keep what was given.
    create_raw(
        &client,
        &ns,
        "partial",
        json!({"source": {"url": "http://mirror.internal/map.json"}, "validation": {"minModels": 10}}),
    )
    .await
    .expect("partial spec is valid");
    let spec = stored_spec(&client, &ns, "partial").await;
    assert_eq!(
        spec["source"],
        json!({"url": "http://mirror.internal/map.json", "timeout": "30s"})
    );
    assert_eq!(
        spec["validation"],
        json!({"minModels": 10, "maxRemovedPercent": 50, "minPricedPercent": 50,
               "maxUnpricedPercent": 1, "maxRepricedPercent": 25})
    );
    assert_eq!(spec["interval"], "1h");

    // And the typed API reads the stored object back with the same values.
    let typed: Api<ModelCostMapSync> = Api::namespaced(client.clone(), &ns);
    let sync = typed.get("minimal").await.unwrap();
    assert_eq!(sync.spec.source.url, DEFAULT_SOURCE_URL);
    assert_eq!(
        sync.spec.interval().unwrap(),
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(
        sync.spec.timeout().unwrap(),
        std::time::Duration::from_secs(30)
    );
}

#[tokio::test]
async fn a_full_valid_spec_is_stored_as_given() {
    let client = client().await;
    let ns = namespace(&client, "admission-full").await;
    let spec = json!({
        "source": {
            "url": "https://mirror.example.com:8443/litellm/model_prices_and_context_window.json?ref=main",
            "headersSecretRef": {"name": "mirror-auth"},
            "timeout": "1m30s",
        },
        "interval": "1h30m",
        "suspend": true,
        "target": {"configMapName": "litellm.cost-map", "key": "prices_v2.json"},
        "validation": {"minModels": 1, "maxRemovedPercent": 0, "minPricedPercent": 0,
                       "maxUnpricedPercent": 100, "maxRepricedPercent": 0},
        "history": 10,
        "overrides": {
            "models": {"gpt-4o": {"input_cost_per_token": 2e-6, "output_cost_per_token": null,
                                  "costmap_note": {"deal": "2026"}}},
            "configMapRefs": [{"name": "team-rates", "key": "rates.json"}],
        },
    });
    create_raw(&client, &ns, "full", spec.clone())
        .await
        .expect("full spec is valid");
    assert_eq!(stored_spec(&client, &ns, "full").await, spec);

    let typed: Api<ModelCostMapSync> = Api::namespaced(client.clone(), &ns);
    let sync = typed.get("full").await.unwrap();
    assert_eq!(
        sync.spec.interval().unwrap(),
        std::time::Duration::from_secs(5400)
    );
    assert_eq!(sync.config_map_name(), "litellm.cost-map");
    assert_eq!(sync.spec.key(), "prices_v2.json");
}

#[tokio::test]
async fn boundary_values_are_accepted() {
    let client = client().await;
    let ns = namespace(&client, "admission-bounds").await;
    let typed: Api<ModelCostMapSync> = Api::namespaced(client.clone(), &ns);
    let cases = [
        json!({"interval": "1m"}),
        json!({"interval": "60s"}),
        json!({"interval": "1h0m0s"}),
        json!({"interval": "168h"}),
        json!({"interval": "90000ms"}),
        json!({"source": {"timeout": "1s"}}),
        json!({"source": {"timeout": "1000ms"}}),
        json!({"source": {"timeout": "10m"}}),
        json!({"source": {"url": "http://127.0.0.1:8080/map.json"}}),
        json!({"validation": {"maxRemovedPercent": 100}}),
        json!({"target": {"configMapName": "a", "key": "A-Z_a.z-0"}}),
        json!({"history": 0}),
        json!({"history": 10}),
        json!({"overrides": {"configMapRefs": [{"name": "a.b-c", "key": "A-Z_a.z-0"}]}}),
    ];
    for (i, spec) in cases.into_iter().enumerate() {
        let name = format!("ok-{i}");
        if let Err(err) = create_raw(&client, &ns, &name, spec.clone()).await {
            panic!("{spec} was refused: {err}");
        }
        // The operator reads every value the API server lets through.
        let sync = typed.get(&name).await.unwrap();
        assert!(
            sync.spec.interval().is_ok() && sync.spec.timeout().is_ok(),
            "{spec}: the operator cannot read what the API server accepted: {:?} {:?}",
            sync.spec.interval(),
            sync.spec.timeout()
        );
        let stored = stored_spec(&client, &ns, &name).await;
        // What was given is kept verbatim (the server defaults only what is missing).
        for (key, value) in spec.as_object().unwrap() {
            for (inner, given) in value.as_object().into_iter().flatten() {
                assert_eq!(&stored[key][inner], given, "{spec}");
            }
            if !value.is_object() {
                assert_eq!(&stored[key], value, "{spec}");
            }
        }
    }
}

#[tokio::test]
async fn kubectl_explain_shows_the_doc_comments() {
    // The CRD's schema reaches the OpenAPI document a moment after it is Established.
    let explained = eventually("kubectl explain of spec.interval", || async {
        explain("modelcostmapsync.spec.interval")
            .ok()
            .filter(|out| out.contains("Go-style duration"))
    })
    .await;
    assert!(
        explained.contains("FIELD: interval <string>"),
        "{explained}"
    );
    assert!(explained.contains("At least 1m"), "{explained}");
    assert!(explained.contains("Defaults to 1h"), "{explained}");

    let repriced = explain("mcms.spec.validation.maxRepricedPercent").expect("explain a guard");
    assert!(repriced.contains("at most 8.5% did"), "{repriced}");
    assert!(repriced.contains("Defaults to 25"), "{repriced}");

    let timeout = explain("mcms.spec.source.timeout").expect("explain by short name");
    assert!(timeout.contains("Between 1s and 10m"), "{timeout}");

    let kind = explain("modelcostmapsync").expect("explain the kind");
    assert!(kind.contains("costmap.dev"), "{kind}");
    assert!(
        kind.contains("keeps a ConfigMap filled with the current LiteLLM model cost map"),
        "{kind}"
    );
}

/// `kubectl explain PATH`, with kubectl's line wrapping undone (runs of whitespace become one
/// space) so that doc comments can be matched as written.
fn explain(path: &str) -> anyhow::Result<String> {
    let out = control_plane().kubectl(&["explain", path])?;
    Ok(out.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[tokio::test]
async fn a_cluster_sync_is_explained_and_has_no_field_of_one_namespace() {
    let explained = eventually(
        "kubectl explain of cmcms.spec.namespaceSelector",
        || async {
            explain("cmcms.spec.namespaceSelector")
                .ok()
                .filter(|out| out.contains("picks the namespaces"))
        },
    )
    .await;
    assert!(
        explained.contains("{} selects every namespace"),
        "{explained}"
    );
    let kind = explain("clustermodelcostmapsync").expect("explain the kind");
    assert!(
        kind.contains("in every namespace its namespaceSelector picks"),
        "{kind}"
    );
    let interval = explain("cmcms.spec.interval").expect("a shared field");
    assert!(interval.contains("Defaults to 1h"), "{interval}");

    // A field that names something inside one namespace is not in this kind: kubectl's
    // strict field validation names it, and the server applies nothing.
    let manifest = r#"
apiVersion: costmap.dev/v1alpha1
kind: ClusterModelCostMapSync
metadata: {name: admission-headers}
spec:
  namespaceSelector: {}
  source: {headersSecretRef: {name: mirror-auth}}
"#;
    let refused = control_plane()
        .kubectl_with_input(&["apply", "--dry-run=server", "-f", "-"], manifest)
        .expect_err("strict field validation refuses it");
    assert!(
        format!("{refused:#}").contains("headersSecretRef"),
        "{refused:#}"
    );
    // And the selector is required.
    let manifest = "apiVersion: costmap.dev/v1alpha1\nkind: ClusterModelCostMapSync\nmetadata: {name: admission-no-selector}\nspec: {}\n";
    let refused = control_plane()
        .kubectl_with_input(&["apply", "--dry-run=server", "-f", "-"], manifest)
        .expect_err("namespaceSelector is required");
    assert!(
        format!("{refused:#}").contains("namespaceSelector"),
        "{refused:#}"
    );
}

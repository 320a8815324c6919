//! A tenant's source cannot make the operator build an unbounded tree: a body with more JSON
//! values than any map holds is refused while it is parsed, and the body is not kept, while
//! another tenant on the same operator syncs as usual. (Peak memory against the chart's
//! limit is measured by `cargo bench --bench tenants`, not asserted here.)

use costmap_operator::api::Reason;
use costmap_operator::sync::validate::MAX_VALUES;
use serde_json::json;

use crate::common::*;

/// A top-level object of models whose one field is a long array of zeros: two bytes per
/// value, so a small body with more values than the bound.
fn values_bomb(values: usize) -> Vec<u8> {
    let mut body = b"{\"m\": {\"a\": [0".to_vec();
    for _ in 1..values {
        body.extend_from_slice(b",0");
    }
    body.extend_from_slice(b"]}}");
    body
}

#[tokio::test]
async fn a_body_of_too_many_values_is_refused_and_the_other_tenant_syncs() {
    let client = client().await;
    let hostile = namespace(&client, "tenant-bomb").await;
    let neighbour = namespace(&client, "tenant-calm").await;
    let operator = Operator::start_for(&client, &[&hostile, &neighbour]);
    let bomb = Source::start(Answer::Map(values_bomb(MAX_VALUES + 1).into())).await;
    let map = Source::start(Answer::Map(small_map(60, &[]))).await;
    create_sync(
        &client,
        &hostile,
        "litellm",
        json!({"source": {"url": bomb.url}}),
    )
    .await;
    create_sync(
        &client,
        &neighbour,
        "litellm",
        json!({"source": {"url": map.url}}),
    )
    .await;

    let refused = wait_ready(&client, &hostile, "litellm", "False", Reason::InvalidMap).await;
    let message = ready_condition(&refused).unwrap().message;
    assert!(
        message.contains(&format!("more than {MAX_VALUES} JSON values in all")),
        "{message}"
    );
    wait_ready(&client, &neighbour, "litellm", "True", Reason::Synced).await;
    // Nothing of the refused body reached the tenant's namespace.
    assert!(
        config_maps(&client, &hostile)
            .get_opt("litellm")
            .await
            .unwrap()
            .is_none()
    );
    operator.stop().await;
}

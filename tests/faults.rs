//! Faults, each on a control plane of its own so that killing its servers disturbs no other
//! test: kube-apiserver and etcd killed and restarted during and after a sync, the operator
//! SIGKILLed at each point of a content change, the ConfigMap deleted or tampered with while
//! the operator is down, and a source that refuses or hangs. The scenarios live in
//! `common::faults`; `cargo bench --bench faults` times the same ones.

mod common;

use common::faults;
use testenv::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_api_server_restart_a_new_map_reaches_the_configmap_and_the_endpoint() {
    faults::api_server_killed_after_a_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_killed_during_a_sync_delays_the_map_but_writes_it_once() {
    faults::killed_during_a_sync(Server::ApiServer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_killed_during_a_sync_delays_the_map_but_writes_it_once() {
    faults::killed_during_a_sync(Server::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_while_fetching_is_replaced_by_one_that_fetches_again() {
    faults::operator_killed_before_the_fetch_ends().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_after_the_configmap_write_leaves_a_map_the_next_one_guards_against() {
    faults::operator_killed_after_the_configmap_write().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_after_the_status_write_leaves_nothing_to_redo() {
    faults::operator_killed_after_the_status_write().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_deleted_while_the_operator_is_down_is_restored() {
    faults::configmap_deleted_while_the_operator_is_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_tampered_with_while_the_operator_is_down_is_never_served_and_is_restored() {
    faults::configmap_tampered_while_the_operator_is_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_configmap_waits_for_the_source_with_backoff_and_is_never_served() {
    faults::configmap_tampered_while_the_source_fails().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_configmap_is_restored_from_history_while_the_source_fails() {
    faults::configmap_tampered_while_the_source_fails_is_restored_from_history().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_or_hanging_source_is_retried_with_backoff_from_the_end_of_each_attempt() {
    faults::source_failing_then_hanging().await;
}

//! Leader election: replicas elect a leader through the Lease `costmap-operator` in the
//! operator's namespace. Only the leader reconciles (and so writes); every replica serves
//! maps and metrics whether it leads or not.
//!
//! The election itself is `kube-lease-manager`'s: the holder renews the Lease before it
//! expires; the others wait for it to expire and take it. A leader that stops renewing
//! (killed, partitioned) is replaced within the lease duration, plus up to a second.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Name of the Lease, fixed by the contract (tests and dashboards look for it).
pub const LEASE_NAME: &str = "costmap-operator";
/// Where the in-cluster service account says which namespace the pod runs in.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Who runs for leader, and for how long a won Lease holds.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Namespace of the Lease: the operator's own.
    pub namespace: String,
    /// This replica's name in the Lease (holderIdentity).
    pub identity: String,
    /// How long the Lease holds without renewal: the longest a dead leader blocks the others.
    pub lease_duration: Duration,
}

/// Why the election could not run.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read, created or updated.
    #[error("leader election with Lease {LEASE_NAME}: {0}")]
    Lease(#[from] LeaseManagerError),
}

impl Candidate {
    /// The namespace from env `POD_NAMESPACE`, else the in-cluster namespace file, else
    /// `fallback` (the kubeconfig's namespace, when run outside a cluster); the identity from
    /// env `POD_NAME`, else the host name.
    pub fn from_environment(fallback_namespace: &str, lease_duration: Duration) -> Candidate {
        let namespace = non_empty(std::env::var("POD_NAMESPACE").ok())
            .or_else(|| non_empty(std::fs::read_to_string(NAMESPACE_FILE).ok()))
            .unwrap_or_else(|| fallback_namespace.to_owned());
        let identity = non_empty(std::env::var("POD_NAME").ok())
            .or_else(|| non_empty(std::fs::read_to_string("/proc/sys/kernel/hostname").ok()))
            .unwrap_or_else(|| format!("costmap-operator-{}", std::process::id()));
        Candidate {
            namespace,
            identity,
            lease_duration,
        }
    }

    /// Lease duration and renewal margin in whole seconds, as the Lease stores them: the
    /// holder renews a third of the duration before expiry.
    fn seconds(&self) -> (u64, u64) {
        let duration = self.lease_duration.as_secs().max(2);
        (duration, (duration / 3).max(1))
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

/// Runs `lead` for each term this replica holds the Lease, until `shutdown` is cancelled.
///
/// `lead` gets a token that is cancelled when the term ends (the Lease is lost, or
/// shutdown); it must stop writing then, and return. On shutdown the Lease is released.
pub async fn run_terms<F, Fut>(
    client: Client,
    candidate: Candidate,
    shutdown: CancellationToken,
    mut lead: F,
) -> Result<(), LeaderError>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let (duration, grace) = candidate.seconds();
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(&candidate.namespace)
        .with_identity(&candidate.identity)
        .with_duration(duration)
        .with_grace(grace)
        .with_field_manager(crate::controller::FIELD_MANAGER)
        .build()
        .await?;
    info!(lease = LEASE_NAME, namespace = %candidate.namespace, identity = %candidate.identity, duration_s = duration, "running for leader");
    let (leading, election) = manager.watch().await;
    loop {
        let mut won = leading.clone();
        tokio::select! {
            () = shutdown.cancelled() => break,
            result = won.wait_for(|leader| *leader) => {
                if result.is_err() {
                    warn!("the election ended");
                    break;
                }
            }
        }
        info!(identity = %candidate.identity, "became the leader: reconciling");
        let term = shutdown.child_token();
        let mut lost = leading.clone();
        let end_on_loss = tokio::spawn({
            let term = term.clone();
            async move {
                // An error means the election task ended: no longer leader either.
                let _ = lost.wait_for(|leader| !*leader).await;
                term.cancel();
            }
        });
        lead(term).await;
        end_on_loss.abort();
        if shutdown.is_cancelled() {
            break;
        }
        warn!(identity = %candidate.identity, "lost the Lease: stopped reconciling");
    }
    // Closing the channel makes the election task release the Lease and end.
    drop(leading);
    match election.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.into()),
        Err(join) => {
            warn!(error = %join, "the election task failed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_a_third_before_expiry_in_whole_seconds() {
        let candidate = |secs| Candidate {
            namespace: "ns".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(secs),
        };
        assert_eq!(candidate(15).seconds(), (15, 5));
        assert_eq!(candidate(4).seconds(), (4, 1));
        assert_eq!(candidate(0).seconds(), (2, 1), "never shorter than 2 s");
    }

    #[test]
    fn blank_values_do_not_count() {
        assert_eq!(non_empty(Some("  \n".into())), None);
        assert_eq!(non_empty(Some(" llm\n".into())), Some("llm".into()));
    }
}

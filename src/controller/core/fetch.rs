//! What a sync asks the source: with which headers, with which validator (a conditional
//! GET), and how old an answer fetched for another object on the same source it takes.
//! When only the overrides changed and the fetched bytes are at hand, nothing is asked.

use std::sync::Arc;
use std::time::Duration;

use super::{Destination, Reconciler};
use crate::controller::prepared::answer_max_age;
use crate::sync::SyncError;
use crate::sync::fetch::FetchRequest;
use crate::sync::fetch::shared::{SharedOutcome, SharedRequest, SourceBody};
use crate::sync::schedule::SyncCause;

/// Whether a sync sends the last good map's revision as a validator (If-None-Match /
/// If-Modified-Since): only when a 304 leaves nothing to do but put that map back where it
/// is missing. So not without the map at hand (a 304 would bring no bytes to write), not
/// when the overrides changed (the map is published again from the fetched bytes), and not
/// for a new spec (it may name another source: a validator for the old one means nothing
/// there).
pub(super) fn sends_validator(
    cause: SyncCause,
    has_last_good: bool,
    overrides_changed: bool,
) -> bool {
    has_last_good && !overrides_changed && cause != SyncCause::SpecChanged
}

/// Whether a sync for `cause` asks the source itself rather than take a recent answer
/// fetched for another object: a sync someone asked for, or a new spec's.
fn asks_fresh(cause: SyncCause) -> bool {
    matches!(cause, SyncCause::SpecChanged | SyncCause::Requested)
}

impl<D: Destination> Reconciler<'_, D> {
    /// The fetched map; none when the source says it did not change. When only the
    /// overrides changed, the bytes fetched last are used again (no fetch), or fetched in
    /// full if they are not at hand.
    pub(super) async fn fetched(
        &self,
        cause: SyncCause,
        has_last_good: bool,
        overrides_changed: bool,
    ) -> Result<Option<Arc<SourceBody>>, SyncError> {
        if overrides_changed
            && let Some(bytes) = self.remembered_source()
            && let Some(source) = self.status.as_ref().and_then(|s| s.source.as_ref())
        {
            return Ok(Some(Arc::new(SourceBody {
                bytes,
                digest: source.digest.clone(),
                git_blob_id: source.git_blob_id.clone(),
                revision: source.revision.clone(),
            })));
        }
        let headers = self.source_headers().await?;
        let revision = sends_validator(cause, has_last_good, overrides_changed)
            .then(|| self.artifact().and_then(|a| a.revision.as_deref()))
            .flatten();
        let spec = self.object.spec;
        let request = SharedRequest {
            fetch: FetchRequest {
                url: &spec.source.url,
                headers: &headers,
                timeout: spec.timeout()?,
                revision,
            },
            follower: self.object.uid(),
            kind: self.object.kind(),
            max_age: self.answer_max_age(cause),
        };
        match self.context.sources.fetch(&request).await? {
            SharedOutcome::NotModified => Ok(None),
            SharedOutcome::Fetched(body) => Ok(Some(body)),
        }
    }

    /// How old an answer of the source (fetched for another object) this sync takes: one
    /// from within the interval, so the source is asked once per interval; for a sync
    /// someone asked for or a new spec, none (but the answer of a fetch in flight); for
    /// news of the source, the answer that brought it.
    fn answer_max_age(&self, cause: SyncCause) -> Duration {
        answer_max_age(
            self.context.sources.has_news(self.object.uid()),
            self.object.spec.interval().ok(),
            asks_fresh(cause),
        )
    }

    /// Request headers from `spec.source.headersSecretRef`. Errors name the Secret, never
    /// its values.
    async fn source_headers(&self) -> Result<Vec<(String, Vec<u8>)>, SyncError> {
        let Some(secret_ref) = &self.object.spec.source.headers_secret_ref else {
            return Ok(Vec::new());
        };
        let namespace = self.object.own_namespace("source.headersSecretRef")?;
        let secret = self
            .context
            .secret(namespace, &secret_ref.name, "headers")
            .await
            .map_err(SyncError::Headers)?;
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, value.0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validator_is_sent_only_when_a_304_leaves_nothing_to_do() {
        assert!(sends_validator(SyncCause::Due, true, false));
        assert!(sends_validator(SyncCause::Requested, true, false));
        assert!(sends_validator(SyncCause::TargetLost, true, false));
        assert!(
            !sends_validator(SyncCause::Due, false, false),
            "no map to put back"
        );
        assert!(
            !sends_validator(SyncCause::Due, true, true),
            "overrides to apply"
        );
        assert!(
            !sends_validator(SyncCause::SpecChanged, true, false),
            "a new spec may name another source"
        );
    }

    #[test]
    fn only_a_request_or_a_new_spec_asks_the_source_itself() {
        assert!(asks_fresh(SyncCause::Requested));
        assert!(asks_fresh(SyncCause::SpecChanged));
        for cause in [
            SyncCause::FirstSync,
            SyncCause::Due,
            SyncCause::TargetLost,
            SyncCause::OverridesChanged,
            SyncCause::SourceChanged,
        ] {
            assert!(!asks_fresh(cause), "{cause:?}");
        }
    }
}

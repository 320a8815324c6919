//! Why a sync failed: one error over every stage's, each knowing the Ready reason it becomes.
//! Messages go to status and Events as they are: they name what to check, never a secret
//! value or a response body.

use std::time::Duration;

use crate::api::{ACCEPT_DIGEST_ANNOTATION, Reason, SpecError};
use crate::layout::render::RenderError;
use crate::sync::fetch::FetchError;
use crate::sync::validate::ValidationError;
use crate::sync::validate::guards::{Guard, Refusal};

/// Why a sync failed; the ConfigMap keeps the last good map.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A spec field the API server should have refused.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The headers Secret could not be read.
    #[error(transparent)]
    Headers(SecretError),
    /// The source could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The map breaks a structure rule.
    #[error(transparent)]
    Map(#[from] ValidationError),
    /// Guards refuse the map; it can be accepted on purpose.
    #[error("{}", describe_refusals(refusals, digest, accept_digest.as_deref()))]
    Refused {
        /// Every refusal, in the guards' order.
        refusals: Vec<Refusal>,
        /// The refused map's digest.
        digest: String,
        /// The accept-digest annotation's value, when it names another map.
        accept_digest: Option<String>,
    },
    /// The overrides cannot be applied.
    #[error(transparent)]
    Override(#[from] crate::sync::overrides::OverrideError),
    /// The map was rejected by `costmap.dev/reject-digest`.
    #[error(
        "the source serves map {digest}, which was rejected (costmap.dev/reject-digest); the \
         map restored from history stays published until the source serves another (or \
         costmap.dev/accept-digest names it)"
    )]
    Rejected {
        /// The rejected map's digest.
        digest: String,
    },
    /// The ConfigMap could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The cluster could not be written.
    #[error("writing {what}: {message}")]
    Write {
        /// What was being written, for example "ConfigMap litellm".
        what: String,
        /// The API server's answer, without the request.
        message: String,
    },
    /// A ConfigMap the map would be written to exists and is not controlled by this object:
    /// it is left untouched (nothing of the sync was written).
    #[error(
        "ConfigMap {config_map} exists and is not controlled by this object ({controller}); \
         it is left untouched: delete it, or rename the target (spec.target.configMapName)"
    )]
    OwnedByAnother {
        /// `namespace/name`.
        config_map: String,
        /// Who controls it, as its controller owner reference says ("no controller" when none).
        controller: String,
    },
    /// Work on a blocking thread did not finish (it panicked).
    #[error("{what} did not finish: {detail}")]
    Interrupted {
        /// What was being done.
        what: &'static str,
        /// The join error.
        detail: String,
    },
}

impl SyncError {
    /// The Ready reason this failure gives.
    pub fn reason(&self) -> Reason {
        match self {
            SyncError::Spec(_) => Reason::InvalidSpec,
            SyncError::Headers(_) => Reason::FetchFailed,
            SyncError::Fetch(err) if err.is_too_large() => Reason::TooLarge,
            SyncError::Fetch(_) => Reason::FetchFailed,
            SyncError::Map(ValidationError::InvalidMap(_)) => Reason::InvalidMap,
            SyncError::Refused { refusals, .. } => match refusals.first().map(|r| r.guard) {
                Some(Guard::Shrink) | None => Reason::ShrinkGuard,
                Some(_) => Reason::PriceGuard,
            },
            SyncError::Override(_) => Reason::InvalidOverride,
            SyncError::Rejected { .. } => Reason::Rejected,
            SyncError::Render(RenderError::TooLarge { .. }) => Reason::TooLarge,
            SyncError::Write { .. } => Reason::WriteFailed,
            SyncError::Interrupted { .. } => Reason::WriteFailed,
            SyncError::OwnedByAnother { .. } => Reason::OwnedByAnother,
        }
    }

    /// How long the source asked to be left alone (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Fetch(err) => err.retry_after(),
            _ => None,
        }
    }
}

/// Why [`super::prepare`] did not accept a map. Cloneable: one judgement of a map answers
/// every object that asked about the same inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotAccepted {
    /// The map breaks a structure rule.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Guards refuse the map; it can be accepted on purpose.
    #[error("{}", describe_refusals(refusals, digest, accept_digest.as_deref()))]
    Refused {
        /// Every refusal, in the guards' order.
        refusals: Vec<Refusal>,
        /// The refused map's digest.
        digest: String,
        /// The accept-digest annotation's value, when it names another map.
        accept_digest: Option<String>,
    },
}

impl From<NotAccepted> for SyncError {
    fn from(not_accepted: NotAccepted) -> SyncError {
        match not_accepted {
            NotAccepted::Invalid(error) => SyncError::Map(error),
            NotAccepted::Refused {
                refusals,
                digest,
                accept_digest,
            } => SyncError::Refused {
                refusals,
                digest,
                accept_digest,
            },
        }
    }
}

/// "shrink guard: ...; price guard: ...; map sha256:... is refused: to accept it ...".
pub(crate) fn describe_refusals(
    refusals: &[Refusal],
    digest: &str,
    accept_digest: Option<&str>,
) -> String {
    let parts: Vec<String> = refusals
        .iter()
        .map(|refusal| {
            let guard = match refusal.guard {
                Guard::Shrink => "shrink guard",
                _ => "price guard",
            };
            format!("{guard}: {}", refusal.message)
        })
        .collect();
    let ignored = accept_digest
        .map(|other| format!(" ({ACCEPT_DIGEST_ANNOTATION} names {other}, not this map)"))
        .unwrap_or_default();
    format!(
        "{}; map {digest} is refused{ignored}: to accept it on purpose, set the annotation \
         {ACCEPT_DIGEST_ANNOTATION}={digest} and request a sync",
        parts.join("; ")
    )
}

/// Why a Secret a spec names could not be used. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not exist.
    #[error("{purpose} Secret {name} not found")]
    NotFound {
        /// What it is for ("headers", "admin key").
        purpose: &'static str,
        /// Its name.
        name: String,
    },
    /// It could not be read.
    #[error("reading {purpose} Secret {name}: {message}")]
    Unreadable {
        /// What it is for.
        purpose: &'static str,
        /// Its name.
        name: String,
        /// The API server's answer.
        message: String,
    },
    /// It has no such key.
    #[error("Secret {name} has no key {key}")]
    MissingKey {
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// The value cannot be sent in an HTTP header.
    #[error("Secret {name} key {key} is not text that fits an HTTP header")]
    NotAHeaderValue {
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_knows_its_reason() {
        let spec = SpecError {
            field: "interval",
            reason: "must be at least 1m".into(),
        };
        assert_eq!(SyncError::from(spec).reason(), Reason::InvalidSpec);
        let missing = SecretError::NotFound {
            purpose: "headers",
            name: "mirror-auth".into(),
        };
        assert_eq!(missing.to_string(), "headers Secret mirror-auth not found");
        assert_eq!(SyncError::Headers(missing).reason(), Reason::FetchFailed);
        let too_large = FetchError::TooLarge {
            url: "https://x/".into(),
            limit: 1,
        };
        assert_eq!(SyncError::from(too_large).reason(), Reason::TooLarge);
        let refused = |guards: &[Guard]| SyncError::Refused {
            refusals: guards
                .iter()
                .map(|&guard| Refusal {
                    guard,
                    message: "why".into(),
                })
                .collect(),
            digest: "sha256:x".into(),
            accept_digest: None,
        };
        assert_eq!(refused(&[Guard::Shrink]).reason(), Reason::ShrinkGuard);
        assert_eq!(
            refused(&[Guard::Shrink, Guard::MinPriced]).reason(),
            Reason::ShrinkGuard
        );
        assert_eq!(refused(&[Guard::MaxRepriced]).reason(), Reason::PriceGuard);
        assert_eq!(
            refused(&[Guard::Shrink, Guard::MaxUnpriced]).to_string(),
            "shrink guard: why; price guard: why; map sha256:x is refused: to accept it on \
             purpose, set the annotation costmap.dev/accept-digest=sha256:x and request a sync"
        );
        let invalid = ValidationError::InvalidMap("html".into());
        assert_eq!(SyncError::from(invalid).reason(), Reason::InvalidMap);
        let render = RenderError::TooLarge { gz_bytes: 2 << 20 };
        assert_eq!(SyncError::from(render).reason(), Reason::TooLarge);
        let write = SyncError::Write {
            what: "ConfigMap litellm".into(),
            message: "forbidden".into(),
        };
        assert_eq!(write.reason(), Reason::WriteFailed);
        assert_eq!(write.to_string(), "writing ConfigMap litellm: forbidden");
    }

    #[test]
    fn a_source_asking_to_wait_is_heard() {
        let limited = FetchError::Status {
            url: "https://x/".into(),
            code: 429,
            attempts: 1,
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            SyncError::from(limited).retry_after(),
            Some(Duration::from_secs(60))
        );
    }
}

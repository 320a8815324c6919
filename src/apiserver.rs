//! How this operator talks to the Kubernetes API server, in one place: the field manager of
//! its writes, status applied whole, times in the whole seconds `metav1.Time` keeps, an API
//! error's message, and text cut to what an Event or a condition holds.

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// Field manager of every write this operator makes (status by server-side apply,
/// ConfigMaps by patch).
pub const FIELD_MANAGER: &str = "costmap-operator";

/// Server-side applies the whole status of `name` (of kind `K`); the object written.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<K, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&patch)).await
}

/// Now, in whole seconds, as metav1.Time stores it: a status kept in memory must compare
/// equal to the same status read back from the API server.
pub fn whole_seconds_now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

/// The API server's message for an error, without the request it answered.
pub fn api_error_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h");
        assert_eq!(truncate("héllo".to_owned(), 3), "hé");
        assert_eq!(truncate("short".to_owned(), 10), "short");
    }
}

//! Reading and writing the ConfigMaps of one stored map, in one ConfigMap or in chunks
//! (see [`crate::sync::render::render_config_maps`]): the target's and each history slot's.

use http::HeaderValue;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client};

use super::FIELD_MANAGER;
use super::reconcile::Reconciler;
use crate::sync::render::{HeldConfigMaps, chunk_count, chunk_name, write_patch};

/// What a write asks for in answer: the object's metadata, not the object.
const METADATA_ANSWER: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// A ConfigMap write that failed: which one, and the API server's error.
#[derive(Debug)]
pub(super) struct WriteFailed {
    /// The ConfigMap.
    pub(super) name: String,
    /// Why.
    pub(super) error: kube::Error,
}

impl Reconciler<'_> {
    /// The ConfigMaps holding the map whose first ConfigMap is `name` (see [`read_held`]).
    pub(super) async fn read_held(&self, name: &str) -> Result<HeldConfigMaps, kube::Error> {
        read_held(&self.config_maps, name).await
    }

    /// Writes each ConfigMap in turn (each under its own name; see
    /// [`crate::sync::render::write_patch`]), stopping at the first that fails. Give them in
    /// [`crate::sync::render::write_order`]. Returns the name and the resourceVersion the
    /// write produced of each.
    pub(super) async fn write_rendered<'a>(
        &self,
        config_maps: impl IntoIterator<Item = &'a ConfigMap>,
    ) -> Result<Vec<(String, String)>, WriteFailed> {
        let keys = self.keys_written();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        write_config_maps(&self.context.client, &self.config_maps, config_maps, &keys).await
    }

    /// The target's key, and the one this operator wrote before if the spec changed it.
    fn keys_written(&self) -> Vec<String> {
        let before = self
            .context
            .memory
            .read(&self.uid, |m| {
                m.written_target.as_ref().map(|w| w.target.key.clone())
            })
            .flatten();
        let mut keys = vec![self.target.key.clone()];
        keys.extend(before.filter(|key| key != &self.target.key));
        keys
    }
}

/// The ConfigMaps holding the map whose first ConfigMap is `name`, in the namespace of
/// `api`: the first, then as many chunk ConfigMaps as it names (bounded by the chunk
/// count's range). Chunk ConfigMaps left over from a larger map are not read: the first
/// does not name them.
pub(super) async fn read_held(
    api: &Api<ConfigMap>,
    name: &str,
) -> Result<HeldConfigMaps, kube::Error> {
    let first = api.get_opt(name).await?;
    let count = first
        .as_ref()
        .and_then(|first| chunk_count(first).ok().flatten())
        .unwrap_or(1);
    let mut maps = vec![first];
    for index in 1..count {
        maps.push(api.get_opt(&chunk_name(name, index)).await?);
    }
    Ok(HeldConfigMaps { maps })
}

/// Writes each of `config_maps` into the namespace of `api` in turn, as
/// [`Reconciler::write_rendered`] says; `keys` are the layout's keys to clear.
pub(super) async fn write_config_maps<'a>(
    client: &Client,
    api: &Api<ConfigMap>,
    config_maps: impl IntoIterator<Item = &'a ConfigMap>,
    keys: &[&str],
) -> Result<Vec<(String, String)>, WriteFailed> {
    let mut versions = Vec::new();
    for config_map in config_maps {
        let name = config_map.metadata.name.clone().unwrap_or_default();
        match write_config_map(client, api, &name, config_map, keys).await {
            Ok(written) => versions.extend(written.resource_version().map(|v| (name, v))),
            Err(error) => return Err(WriteFailed { name, error }),
        }
    }
    Ok(versions)
}

/// Patches ConfigMap `name` to hold `rendered`, or creates it. The API server answers with
/// the metadata of the object written: the whole of it would be a quarter of a MB more
/// through the API server per write, decoded here only to be dropped.
async fn write_config_map(
    client: &Client,
    api: &Api<ConfigMap>,
    name: &str,
    rendered: &ConfigMap,
    keys: &[&str],
) -> Result<PartialObjectMeta<ConfigMap>, kube::Error> {
    let patch = write_patch(rendered, keys);
    let patch_params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let request = kube::core::Request::new(api.resource_url());
    let patch_it = || {
        let patched = request
            .patch(name, &patch_params, &Patch::Strategic(&patch))
            .map_err(kube::Error::BuildRequest);
        async move { client.request(metadata_answer(patched?, "patch")).await }
    };
    match patch_it().await {
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        written => return written,
    }
    let post_params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let body = serde_json::to_vec(rendered).map_err(kube::Error::SerdeError)?;
    let created = request
        .create(&post_params, body)
        .map_err(kube::Error::BuildRequest)?;
    match client.request(metadata_answer(created, "create")).await {
        // Created by someone else in between: patch it after all.
        Err(kube::Error::Api(status)) if status.code == 409 => patch_it().await,
        written => written,
    }
}

/// `request`, asking for the metadata of the object in answer; `verb` names it in kube's
/// metrics and traces, as kube's own requests do.
fn metadata_answer(
    mut request: http::Request<Vec<u8>>,
    verb: &'static str,
) -> http::Request<Vec<u8>> {
    request.headers_mut().insert(
        http::header::ACCEPT,
        HeaderValue::from_static(METADATA_ANSWER),
    );
    request.extensions_mut().insert(verb);
    request
}

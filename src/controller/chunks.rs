//! Reading and writing the ConfigMaps of one stored map, in one ConfigMap or in chunks
//! (see [`crate::layout::render::render_config_maps`]): the target's and each history slot's.

use http::HeaderValue;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client};

use super::FIELD_MANAGER;
use super::reconcile::Reconciler;
use crate::layout::chunks::{chunk_count, chunk_name};
use crate::layout::patch::write_patch;
use crate::layout::read::HeldConfigMaps;

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
    /// [`crate::layout::patch::write_patch`]), stopping at the first that fails. Give them in
    /// [`crate::layout::render::write_order`]; `exists` guesses which are there already (see
    /// [`write_config_maps`]). Returns the name and the resourceVersion the write produced
    /// of each.
    pub(super) async fn write_rendered<'a>(
        &self,
        config_maps: impl IntoIterator<Item = &'a ConfigMap>,
        exists: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String)>, WriteFailed> {
        let keys = self.keys_written();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        write_config_maps(
            &self.context.client,
            &self.config_maps,
            config_maps,
            &keys,
            exists,
        )
        .await
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
/// [`Reconciler::write_rendered`] says; `keys` are the layout's keys to clear. `exists`
/// says which ConfigMaps the caller believes are there: those are patched first, the
/// others created first, so that a new one is not sent twice (a quarter of a MB each time)
/// after a patch answered 404. A wrong guess costs one more request, not a failure.
pub(super) async fn write_config_maps<'a>(
    client: &Client,
    api: &Api<ConfigMap>,
    config_maps: impl IntoIterator<Item = &'a ConfigMap>,
    keys: &[&str],
    exists: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, WriteFailed> {
    let mut versions = Vec::new();
    for config_map in config_maps {
        let name = config_map.metadata.name.clone().unwrap_or_default();
        let writer = ConfigMapWriter {
            client,
            request: kube::core::Request::new(api.resource_url()),
            name: &name,
            rendered: config_map,
            keys,
        };
        match writer.write(exists(&name)).await {
            Ok(written) => versions.extend(written.resource_version().map(|v| (name, v))),
            Err(error) => return Err(WriteFailed { name, error }),
        }
    }
    Ok(versions)
}

/// One ConfigMap `name` to hold `rendered`, by a patch or a create. The API server
/// answers with the metadata of the object written: the whole of it would be a quarter of
/// a MB more through the API server per write, decoded here only to be dropped.
struct ConfigMapWriter<'a> {
    client: &'a Client,
    request: kube::core::Request,
    name: &'a str,
    rendered: &'a ConfigMap,
    keys: &'a [&'a str],
}

impl ConfigMapWriter<'_> {
    /// Patches first when it `exists`, else creates first; then the other when the API
    /// server says the guess was wrong (409, 404), and once more if it changed in between.
    async fn write(&self, exists: bool) -> Result<PartialObjectMeta<ConfigMap>, kube::Error> {
        if !exists {
            match self.create().await {
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                written => return written,
            }
        }
        match self.patch().await {
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            written => return written,
        }
        match self.create().await {
            // Created by someone else in between: patch it after all.
            Err(kube::Error::Api(status)) if status.code == 409 => self.patch().await,
            written => written,
        }
    }

    async fn patch(&self) -> Result<PartialObjectMeta<ConfigMap>, kube::Error> {
        let patch = write_patch(self.rendered, self.keys);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patched = self
            .request
            .patch(self.name, &params, &Patch::Strategic(&patch))
            .map_err(kube::Error::BuildRequest)?;
        self.client.request(metadata_answer(patched, "patch")).await
    }

    async fn create(&self) -> Result<PartialObjectMeta<ConfigMap>, kube::Error> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let body = serde_json::to_vec(self.rendered).map_err(kube::Error::SerdeError)?;
        let created = self
            .request
            .create(&params, body)
            .map_err(kube::Error::BuildRequest)?;
        self.client
            .request(metadata_answer(created, "create"))
            .await
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

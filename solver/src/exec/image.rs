//! Images: reading them from the store or an OCI layout, and assembling the
//! built one (config with history, manifest) from the solved graph.

use std::collections::BTreeMap;
use std::path::Path;

use rbuild_cache::layer::{self, LayerDescriptor};
use rbuild_cache::store::{media, Descriptor, Index};
use rbuild_cache::{Digest, Store};
use serde::{Deserialize, Serialize};

use crate::graph::{Base, Graph, ImageConfig, Platform};

use super::error::{ExecError, Result};
use super::{NamedInput, Solved, Solver};

/// An OCI image config document (with Docker's config extensions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciImage {
    /// When the image was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// MAINTAINER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// Architecture variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The runtime config.
    #[serde(default)]
    pub config: ImageConfig,
    /// The layers' diffIDs.
    pub rootfs: RootFs,
    /// One entry per instruction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// The build cache of the image's own steps (`--cache-to type=inline`):
    /// what a build with `--cache-from` this image reuses.
    #[serde(
        rename = "rbuild.cache.v1",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub inline_cache: Option<Vec<InlineRecord>>,
}

/// One step of an inline cache: its key, and which of the image's layers
/// (by position) it added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineRecord {
    /// The cache key.
    pub key: String,
    /// Index into the image's layers of the layer the step added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// When the step ran (Unix seconds).
    pub created: i64,
    /// The step's name.
    #[serde(default)]
    pub description: String,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// A history entry of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// No layer for this entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An OCI image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image whose blobs are all in the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The manifest's descriptor.
    pub manifest: Descriptor,
    /// The manifest.
    pub manifest_doc: Manifest,
    /// The config.
    pub config: OciImage,
    /// The config's digest (the image ID).
    pub config_digest: Digest,
    /// The layers, with their diffIDs.
    pub layers: Vec<LayerDescriptor>,
}

impl StoredImage {
    /// Loads an image by its manifest descriptor. An index is resolved to
    /// the manifest for `platform`.
    pub fn load(store: &Store, desc: &Descriptor, platform: &Platform) -> Result<StoredImage> {
        let bytes = store.read_blob(&desc.digest)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ExecError::User(format!("manifest {} is not JSON: {e}", desc.digest)))?;
        if value.get("manifests").is_some() {
            let index: Index = serde_json::from_value(value)
                .map_err(|e| ExecError::User(format!("index {} is invalid: {e}", desc.digest)))?;
            let chosen = select_platform(&index, platform)?;
            return StoredImage::load(store, &chosen, platform);
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ExecError::User(format!("manifest {} is invalid: {e}", desc.digest)))?;
        let config: OciImage = store.read_json(&manifest.config.digest)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ExecError::User(format!(
                "image {} has {} layers but its config lists {} diff_ids",
                desc.digest,
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let layers = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, diff_id)| LayerDescriptor {
                diff_id: diff_id.clone(),
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect();
        let mut manifest_desc = desc.clone();
        manifest_desc.annotations.clear();
        Ok(StoredImage {
            manifest: manifest_desc,
            config_digest: manifest.config.digest.clone(),
            manifest_doc: manifest,
            config,
            layers,
        })
    }

    /// Copies an image out of an OCI layout directory into the store
    /// (every blob verified), choosing it by tag (`ref.name` annotation),
    /// by digest, or the only one.
    pub fn import_layout(
        store: &Store,
        layout: &Path,
        reference: Option<&str>,
        platform: &Platform,
    ) -> Result<StoredImage> {
        let index_path = layout.join("index.json");
        let index: Index = serde_json::from_slice(&std::fs::read(&index_path).map_err(|e| {
            ExecError::User(format!("{} is not an OCI layout: {e}", layout.display()))
        })?)
        .map_err(|e| ExecError::User(format!("{}: {e}", index_path.display())))?;
        let desc = match reference {
            Some(r) if r.starts_with("sha256:") => index
                .manifests
                .iter()
                .find(|d| d.digest.as_str() == r)
                .cloned()
                .unwrap_or_else(|| {
                    Descriptor::new(
                        media::MANIFEST,
                        Digest::parse(r).unwrap_or_else(|_| Digest::sha256(b"")),
                        0,
                    )
                }),
            Some(r) => index
                .manifests
                .iter()
                .find(|d| {
                    d.annotations
                        .get(rbuild_cache::store::REF_NAME)
                        .map(String::as_str)
                        == Some(r)
                })
                .cloned()
                .ok_or_else(|| {
                    ExecError::User(format!("{} has no image tagged {r:?}", layout.display()))
                })?,
            None => match index.manifests.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(ExecError::User(format!(
                        "{} holds no images",
                        layout.display()
                    )))
                }
                _ => {
                    return Err(ExecError::User(format!(
                        "{} holds several images: name one with oci-layout://{}:TAG",
                        layout.display(),
                        layout.display()
                    )))
                }
            },
        };
        copy_tree(store, layout, &desc, platform)?;
        StoredImage::load(store, &desc, platform)
    }
}

/// Copies a manifest (or index), its config and layers from a layout.
fn copy_tree(store: &Store, layout: &Path, desc: &Descriptor, platform: &Platform) -> Result<()> {
    let bytes = copy_blob(store, layout, &desc.digest)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ExecError::User(format!("{}: {e}", desc.digest)))?;
    if value.get("manifests").is_some() {
        let index: Index = serde_json::from_value(value)
            .map_err(|e| ExecError::User(format!("{}: {e}", desc.digest)))?;
        let chosen = select_platform(&index, platform)?;
        return copy_tree(store, layout, &chosen, platform);
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| ExecError::User(format!("{}: {e}", desc.digest)))?;
    copy_blob(store, layout, &manifest.config.digest)?;
    for l in &manifest.layers {
        if !store.has_blob(&l.digest) {
            copy_blob(store, layout, &l.digest)?;
        }
    }
    Ok(())
}

/// Copies one blob, verifying it; returns it when small (JSON).
fn copy_blob(store: &Store, layout: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let path = layout
        .join("blobs")
        .join(digest.algorithm())
        .join(digest.hex());
    let mut file = std::fs::File::open(&path).map_err(|e| {
        ExecError::User(format!(
            "blob {digest} is missing from {}: {e}",
            layout.display()
        ))
    })?;
    let mut w = store.blob_writer()?;
    std::io::copy(&mut file, &mut w)?;
    let (got, _) = w.commit()?;
    if got != *digest {
        return Err(ExecError::User(format!(
            "blob {digest} in {} is corrupt: its content hashes to {got}",
            layout.display()
        )));
    }
    let size = std::fs::metadata(&path)?.len();
    if size < 4 << 20 {
        Ok(store.read_blob(digest)?)
    } else {
        Ok(Vec::new())
    }
}

pub(crate) fn select_platform(index: &Index, platform: &Platform) -> Result<Descriptor> {
    let matches = |d: &&Descriptor| {
        let Some(p) = &d.platform else { return false };
        p.get("os").and_then(|v| v.as_str()) == Some(platform.os.as_str())
            && p.get("architecture").and_then(|v| v.as_str())
                == Some(platform.architecture.as_str())
            && (platform.variant.is_none()
                || p.get("variant").and_then(|v| v.as_str()) == platform.variant.as_deref())
    };
    if let Some(d) = index.manifests.iter().find(matches) {
        return Ok(d.clone());
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        // Attestation manifests carry `unknown/unknown`: not a choice.
        .filter(|p| p.get("os").and_then(|v| v.as_str()) != Some("unknown"))
        .map(|p| {
            let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let v = s("variant");
            if v.is_empty() {
                format!("{}/{}", s("os"), s("architecture"))
            } else {
                format!("{}/{}/{v}", s("os"), s("architecture"))
            }
        })
        .collect();
    Err(ExecError::User(format!(
        "no image for platform {platform} in the index (it has: {})",
        if available.is_empty() {
            "no platforms listed".into()
        } else {
            available.join(", ")
        }
    )))
}

/// The built image: config and manifest written into the store.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image.
    pub image: StoredImage,
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Solver {
    /// Writes the config and manifest of stage `stage` of `graph` (solved)
    /// into the store.
    pub fn assemble(&self, graph: &Graph, solved: &Solved, stage: usize) -> Result<Built> {
        let st = &graph.stages[stage];
        let fs = solved.fs(st.root)?;
        self.ensure_local(&fs.layers)?;
        // Never tag an image whose layers do not verify (a damaged base
        // layer is otherwise only noticed when something unpacks it).
        // Layers kept as snapshots get their blobs now (hashed while
        // written, so not verified again).
        for l in &fs.layers {
            match layer::materialize(self.store(), l) {
                Ok(true) => self.index().record_verified(self.store(), &l.digest)?,
                Ok(false) => self.index().check_blob(self.store(), &l.digest)?,
                Err(rbuild_cache::Error::Corrupt(why)) => {
                    // Gone, so the next build misses the step and redoes it.
                    layer::discard_snapshot(self.store(), l);
                    return Err(ExecError::DamagedCache(why));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut history = self.history(graph, solved, stage)?;
        fill_history_times(&mut history);
        // The image is as old as its newest history entry, so a rebuild
        // that reused every step gives the same image.
        let created = match self.options.epoch {
            Some(epoch) => rfc3339(epoch),
            None => history
                .iter()
                .rev()
                .find_map(|h| h.created.clone())
                .unwrap_or_else(|| rfc3339(self.options.now)),
        };
        let config = OciImage {
            created: Some(created),
            author: st.author.clone(),
            architecture: st.platform.architecture.clone(),
            os: st.platform.os.clone(),
            variant: st.platform.variant.clone(),
            config: st.config.clone(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: fs.layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history,
            inline_cache: self.inline_cache.then(|| {
                super::cache_ops(graph, solved, false)
                    .into_iter()
                    .filter_map(|op| {
                        let key = solved.keys.get(op).cloned().flatten()?;
                        let added = solved.added.get(op).cloned().flatten();
                        Some(InlineRecord {
                            key,
                            layer: added.and_then(|a| {
                                fs.layers.iter().rposition(|l| l.diff_id == a.diff_id)
                            }),
                            created: solved.created.get(op).copied().flatten().unwrap_or(0),
                            description: graph.ops[op].meta.name.clone(),
                        })
                    })
                    .collect()
            }),
        };
        let (config_digest, config_size, _) = self.store().write_json(&config)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.into()),
            config: Descriptor::new(media::CONFIG, config_digest.clone(), config_size),
            layers: fs
                .layers
                .iter()
                .map(|l| Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size))
                .collect(),
            annotations: BTreeMap::new(),
        };
        let (manifest_digest, manifest_size, _) = self.store().write_json(&manifest)?;
        let mut desc = Descriptor::new(media::MANIFEST, manifest_digest, manifest_size);
        desc.platform = Some(
            serde_json::to_value(&st.platform).map_err(|e| ExecError::Internal(e.to_string()))?,
        );
        Ok(Built {
            image: StoredImage {
                manifest: desc,
                manifest_doc: manifest,
                config,
                config_digest,
                layers: fs.layers.clone(),
            },
        })
    }

    /// The history of stage `stage`: its base's, then its own entries, each
    /// marked empty unless its op added a layer.
    fn history(&self, graph: &Graph, solved: &Solved, stage: usize) -> Result<Vec<HistoryEntry>> {
        let st = &graph.stages[stage];
        let mut out = match &st.base {
            Base::Scratch => Vec::new(),
            Base::Stage { stage: parent } => self.history(graph, solved, *parent)?,
            Base::Image { reference } => self
                .image(reference)
                .map(|i| i.config.history.clone())
                .unwrap_or_default(),
            Base::Context { name } => match self.context(name) {
                Some(NamedInput::Image(i)) => i.config.history.clone(),
                _ => Vec::new(),
            },
        };
        for h in &st.history {
            let has_layer = h
                .layer_op
                .is_some_and(|op| solved.added.get(op).is_some_and(Option::is_some));
            // A layer is as old as the step that made it (when it came
            // from the cache, the build that first ran it); other entries
            // get their times from their neighbours.
            let created = match self.options.epoch {
                Some(epoch) => Some(rfc3339(epoch)),
                None if has_layer => h
                    .layer_op
                    .and_then(|op| solved.created.get(op).copied().flatten())
                    .map(rfc3339),
                None => None,
            };
            out.push(HistoryEntry {
                created,
                created_by: Some(h.created_by.clone()),
                author: None,
                comment: h.comment.clone(),
                empty_layer: !has_layer,
            });
        }
        Ok(out)
    }
}

/// Gives entries without a time one as BuildKit does: before the first
/// layer a build added, that layer's time; after it, the time of the
/// layer before them.
fn fill_history_times(history: &mut [HistoryEntry]) {
    let mut created: Option<String> = None;
    let mut untimed_seen = false;
    for h in history.iter() {
        if let Some(t) = &h.created {
            created = Some(t.clone());
            if untimed_seen {
                break;
            }
        } else {
            untimed_seen = true;
        }
    }
    let mut untimed_seen = false;
    for h in history.iter_mut() {
        match &h.created {
            Some(t) => {
                if untimed_seen {
                    created = Some(t.clone());
                }
            }
            None => {
                untimed_seen = true;
                h.created = created.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            created: t.map(str::to_string),
            created_by: None,
            author: None,
            comment: None,
            empty_layer: t.is_none(),
        }
    }

    #[test]
    fn untimed_history_entries_take_their_neighbours_times() {
        let mut h = vec![
            entry(Some("base")),
            entry(None),
            entry(Some("l1")),
            entry(None),
            entry(Some("l2")),
            entry(None),
        ];
        fill_history_times(&mut h);
        let times: Vec<_> = h.iter().map(|e| e.created.as_deref().unwrap()).collect();
        assert_eq!(times, ["base", "l1", "l1", "l1", "l2", "l2"]);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}

//! Pulling an image from a registry into the store: the manifest (through
//! an index, for the build's platform), then the config and the layers the
//! store lacks, several at a time, each verified while it streams to disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rbuild_cache::store::{Descriptor, Index};
use rbuild_cache::{Digest, Store};
use rbuild_registry::{Registry, Target, Transfer};

use super::error::{ExecError, Result};
use super::image::{select_platform, Manifest, StoredImage};
use crate::graph::Platform;

/// Blobs fetched at once: enough to fill a link without starving the
/// first layer (which the build needs first anyway).
const CONCURRENT_BLOBS: usize = 4;

/// What a pull reports as it goes.
#[derive(Debug, Clone)]
pub enum PullEvent {
    /// The reference resolved to this manifest (or index) digest.
    Resolved {
        /// The digest.
        digest: String,
    },
    /// A blob is needed.
    Blob {
        /// Its digest.
        digest: String,
        /// Its size.
        size: u64,
        /// What happened.
        state: BlobState,
    },
}

/// Where a blob transfer is.
#[derive(Debug, Clone)]
pub enum BlobState {
    /// Already in the store: not fetched.
    Present,
    /// Bytes received so far.
    Progress(u64),
    /// The transfer failed and restarts.
    Retrying {
        /// The try about to start.
        attempt: u32,
        /// Why the last one failed.
        error: String,
    },
    /// Fetched and verified.
    Done {
        /// How long it took.
        elapsed: Duration,
    },
}

/// Receives pull events from any task.
pub type PullProgress = Arc<dyn Fn(PullEvent) + Send + Sync>;

/// A pulled image.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// What the reference resolved to (an index or a manifest); tag this.
    pub top: Descriptor,
    /// The image for the platform.
    pub image: StoredImage,
}

fn digest(s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| ExecError::User(format!("registry sent a bad digest {s:?}: {e}")))
}

/// Writes a verified manifest into the store.
fn store_manifest(store: &Store, bytes: &[u8], expected: &Digest) -> Result<()> {
    if !store.has_blob(expected) {
        let (got, _) = store.write_blob(bytes)?;
        if got != *expected {
            return Err(ExecError::Internal(format!(
                "manifest {expected} was stored as {got}"
            )));
        }
    }
    Ok(())
}

/// Pulls `target` for `platform` into `store`. Blobs already in the store
/// are not fetched; nothing is tagged (the caller names the result).
pub async fn pull(
    registry: &Arc<Registry>,
    store: &Arc<Store>,
    target: &Target,
    platform: &Platform,
    progress: PullProgress,
) -> Result<Pulled> {
    let top = registry.manifest(target).await?;
    progress(PullEvent::Resolved {
        digest: top.digest.clone(),
    });
    let top_digest = digest(&top.digest)?;
    store_manifest(store, &top.bytes, &top_digest)?;
    let top_desc = Descriptor::new(top.media_type.clone(), top_digest, top.bytes.len() as u64);

    let manifest_bytes = if top.is_index() {
        let index: Index = serde_json::from_slice(&top.bytes)
            .map_err(|e| ExecError::User(format!("{target}: the index is invalid: {e}")))?;
        let chosen = select_platform(&index, platform)
            .map_err(|e| ExecError::User(format!("{target}: {e}")))?;
        if store.has_blob(&chosen.digest) {
            store.read_blob(&chosen.digest)?
        } else {
            let m = registry
                .manifest(&target.at_digest(chosen.digest.as_str()))
                .await?;
            if m.is_index() {
                return Err(ExecError::User(format!(
                    "{target}: the index for {platform} points at another index, which rbuild does not follow"
                )));
            }
            store_manifest(store, &m.bytes, &chosen.digest)?;
            m.bytes.to_vec()
        }
    } else {
        top.bytes.to_vec()
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| ExecError::User(format!("{target}: the manifest is invalid: {e}")))?;

    let mut blobs = vec![manifest.config.clone()];
    blobs.extend(manifest.layers.iter().cloned());
    let mut fetches = Vec::new();
    for blob in blobs {
        if store.has_blob(&blob.digest) {
            progress(PullEvent::Blob {
                digest: blob.digest.to_string(),
                size: blob.size,
                state: BlobState::Present,
            });
            continue;
        }
        let registry = Arc::clone(registry);
        let store = Arc::clone(store);
        let target = target.clone();
        let progress = Arc::clone(&progress);
        fetches.push(async move {
            // Each blob on its own task, so hashing and writing use every core.
            tokio::spawn(async move { fetch(&registry, &store, &target, &blob, progress).await })
                .await
                .map_err(|e| ExecError::Internal(format!("blob fetch task failed: {e}")))?
        });
    }
    let mut results = futures_util::stream::iter(fetches).buffer_unordered(CONCURRENT_BLOBS);
    while let Some(r) = results.next().await {
        r?;
    }
    let name = target.name();
    for d in
        std::iter::once(&manifest.config.digest).chain(manifest.layers.iter().map(|l| &l.digest))
    {
        // A lost hint only costs a later upload instead of a mount.
        let _ = store.add_source(d, &name);
    }
    let image = StoredImage::load(store, &top_desc, platform)?;
    Ok(Pulled {
        top: top_desc,
        image,
    })
}

/// Fetches one blob of `target`'s repository into the store, verified
/// (a layer of a registry cache, say).
pub async fn fetch_blob(
    registry: &Registry,
    store: &Store,
    target: &Target,
    blob: &Descriptor,
) -> Result<()> {
    fetch(registry, store, target, blob, Arc::new(|_| {})).await
}

async fn fetch(
    registry: &Registry,
    store: &Store,
    target: &Target,
    blob: &Descriptor,
    progress: PullProgress,
) -> Result<()> {
    let start = Instant::now();
    let digest_text = blob.digest.to_string();
    let report = |state: BlobState| {
        progress(PullEvent::Blob {
            digest: digest_text.clone(),
            size: blob.size,
            state,
        })
    };
    report(BlobState::Progress(0));
    let on_transfer = |t: Transfer| match t {
        Transfer::Bytes(n) => report(BlobState::Progress(n)),
        Transfer::Retrying { attempt, error } => report(BlobState::Retrying { attempt, error }),
    };
    let writer = registry
        .fetch_blob(
            target,
            blob.digest.as_str(),
            blob.size,
            || store.blob_writer().map_err(std::io::Error::other),
            &on_transfer,
        )
        .await?;
    let (got, _) = writer.commit()?;
    if got != blob.digest {
        return Err(ExecError::Internal(format!(
            "blob {} was stored as {got}",
            blob.digest
        )));
    }
    report(BlobState::Done {
        elapsed: start.elapsed(),
    });
    Ok(())
}

//! Images the build starts from: tags in the local store, images named as
//! build contexts, and images pulled from registries.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rbuild_cache::store::REF_NAME;
use rbuild_cache::Store;
use rbuild_frontend::lower::ResolvedImage;
use rbuild_frontend::reference::Reference;
use rbuild_frontend::ImageResolver;
use rbuild_solver::exec::{NamedInput, StoredImage};
use rbuild_solver::graph::Platform;

use crate::remote::Remote;

/// Normalises a tag as given (`app`, `app:1`) to Docker's full form.
pub fn normalize(name: &str) -> Option<String> {
    Reference::parse(name)
        .ok()
        .map(|r| r.with_default_tag().to_string())
}

/// The form a tag is stored under: as the user wrote it, with `:latest`
/// added when it has no tag, so `skopeo inspect oci:ROOT:app:latest` works.
pub fn stored_tag(name: &str) -> String {
    match Reference::parse(name) {
        Ok(r) if r.tag.is_none() && r.digest.is_none() => format!("{name}:latest"),
        _ => name.to_string(),
    }
}

/// Finds the images a build starts from: in the store, among named
/// contexts, or (with a [`Remote`]) in their registries.
///
/// The rule, as the README states it: a tag is resolved once per build; the
/// local copy is used when the store has one, unless `--pull` asks for the
/// registry's current one; a digest reference is never re-resolved.
pub struct LocalImages<'a> {
    /// The store.
    pub store: &'a Store,
    /// Named build contexts.
    pub named: BTreeMap<String, NamedInput>,
    /// Registries to pull from; `None` keeps the build offline.
    pub remote: Option<&'a Remote>,
    /// `--pull`: resolve tags in the registry even when the store has them.
    pub pull: bool,
    resolved: Mutex<HashMap<String, Arc<StoredImage>>>,
}

impl<'a> LocalImages<'a> {
    /// A resolver over `store`, pulling through `remote` when given.
    pub fn new(store: &'a Store, remote: Option<&'a Remote>, pull: bool) -> Self {
        LocalImages {
            store,
            named: BTreeMap::new(),
            remote,
            pull,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The stored image a normalised reference names, if it is tagged (or,
    /// for `name@sha256:…`, present) in the store with all its blobs.
    pub fn find(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<StoredImage>, String> {
        let index = self.store.index().map_err(|e| e.to_string())?;
        let wanted_digest = reference.split_once('@').map(|(_, d)| d.to_string());
        for desc in &index.manifests {
            let hit = match &wanted_digest {
                Some(d) => desc.digest.as_str() == d,
                None => desc
                    .annotations
                    .get(REF_NAME)
                    .and_then(|n| normalize(n))
                    .is_some_and(|n| n == reference),
            };
            if !hit {
                continue;
            }
            return match StoredImage::load(self.store, desc, platform) {
                Ok(image) if image.layers.iter().all(|l| self.store.has_blob(&l.digest)) => {
                    Ok(Some(image))
                }
                // A pulled index holds only the platforms pulled so far;
                // with a registry at hand the rest is fetched.
                Ok(_) | Err(_) if self.remote.is_some() => Ok(None),
                Ok(_) => Err(format!("image {reference} is missing layers in the store")),
                Err(e) => Err(e.to_string()),
            };
        }
        Ok(None)
    }

    /// The image `reference` (normalised) names for `platform`, resolved
    /// once per build.
    pub fn image(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<Arc<StoredImage>>, String> {
        let key = format!("{reference} {platform}");
        if let Some(image) = self.resolved.lock().map_err(|e| e.to_string())?.get(&key) {
            return Ok(Some(Arc::clone(image)));
        }
        let by_digest = reference.contains('@');
        let local = if self.pull && !by_digest && self.remote.is_some() {
            None
        } else {
            self.find(reference, platform)?
        };
        let image = match (local, self.remote) {
            (Some(image), _) => image,
            (None, Some(remote)) => remote.pull(reference, platform)?.1,
            (None, None) => return Ok(None),
        };
        let image = Arc::new(image);
        self.resolved
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key, Arc::clone(&image));
        Ok(Some(image))
    }
}

fn resolved(image: &StoredImage) -> ResolvedImage {
    ResolvedImage {
        config: image.config.config.clone(),
        author: image.config.author.clone(),
    }
}

impl ImageResolver for LocalImages<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        Ok(self.image(reference, platform)?.as_deref().map(resolved))
    }

    fn resolve_context(
        &self,
        name: &str,
        _platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        Ok(match self.named.get(name) {
            Some(NamedInput::Image(image)) => Some(resolved(image)),
            _ => None,
        })
    }
}

/// Every image the graph's ops name, from the store or pulled.
pub fn images_for(
    local: &LocalImages<'_>,
    graph: &rbuild_solver::graph::Graph,
) -> Result<BTreeMap<String, Arc<StoredImage>>, String> {
    let mut out = BTreeMap::new();
    for op in &graph.ops {
        if let rbuild_solver::graph::OpKind::Image(src) = &op.kind {
            if out.contains_key(&src.reference) {
                continue;
            }
            if let Some(image) = local.image(&src.reference, &src.platform)? {
                out.insert(src.reference.clone(), image);
            }
        }
    }
    Ok(out)
}

//! Images the build can start from without a registry: tags in the local
//! store, and images named as build contexts.

use std::collections::BTreeMap;
use std::sync::Arc;

use rbuild_cache::store::REF_NAME;
use rbuild_cache::Store;
use rbuild_frontend::lower::ResolvedImage;
use rbuild_frontend::reference::Reference;
use rbuild_frontend::ImageResolver;
use rbuild_solver::exec::{NamedInput, StoredImage};
use rbuild_solver::graph::Platform;

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

/// Looks images up in the store and among named contexts.
pub struct LocalImages<'a> {
    /// The store.
    pub store: &'a Store,
    /// Named build contexts.
    pub named: &'a BTreeMap<String, NamedInput>,
}

impl LocalImages<'_> {
    /// The stored image a normalised reference names, if it is tagged (or,
    /// for `name@sha256:…`, present) in the store.
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
            if hit {
                return StoredImage::load(self.store, desc, platform)
                    .map(Some)
                    .map_err(|e| e.to_string());
            }
        }
        Ok(None)
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
        Ok(self.find(reference, platform)?.as_ref().map(resolved))
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

/// Every image the graph's ops name, loaded from the store.
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
            if let Some(image) = local.find(&src.reference, &src.platform)? {
                out.insert(src.reference.clone(), Arc::new(image));
            }
        }
    }
    Ok(out)
}

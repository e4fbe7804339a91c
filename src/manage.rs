//! `rbuild images`, `rmi`, `inspect`, `push`, `pull`: looking after the
//! store and moving images between it and registries.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use rbuild_cache::layer::Compression;

use rbuild_cache::store::REF_NAME;
use rbuild_cache::Store;
use rbuild_solver::exec::StoredImage;
use rbuild_solver::graph::Platform;

use crate::build::store_root;
use crate::cli::{Cli, PullArgs, PushArgs};
use crate::export::MediaTypes;
use crate::images::{normalize, stored_tag, LocalImages};
use crate::progress::Plain;
use crate::remote::{Encoding, Remote};
use crate::Failure;

/// Opens the store at `root`.
pub(crate) fn open(root: &std::path::Path) -> Result<Store, Failure> {
    Store::open(root)
        .map_err(|e| Failure::failed(format!("cannot open the store at {}: {e}", root.display())))
}

/// A lease that keeps `rbuild prune` away from what this command uses.
pub(crate) fn lease(store: &Store) -> Result<rbuild_cache::gc::Lease, Failure> {
    rbuild_cache::gc::lease(store)
        .map_err(|e| Failure::failed(format!("cannot lease the store: {e}")))
}

/// Lists tags: name, tag, image ID, size of the layers.
pub fn images(root: &std::path::Path) -> Result<ExitCode, Failure> {
    let store = open(root)?;
    let index = store.index().map_err(|e| Failure::failed(e.to_string()))?;
    let mut rows = vec![(
        "REPOSITORY".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "SIZE".to_string(),
    )];
    for desc in &index.manifests {
        let Some(name) = desc.annotations.get(REF_NAME) else {
            continue;
        };
        let (repo, tag) = match name
            .rsplit_once(':')
            .filter(|(r, t)| !t.contains('/') && !r.is_empty())
        {
            Some((r, t)) => (r.to_string(), t.to_string()),
            None => (name.clone(), "latest".to_string()),
        };
        let (id, size) = match StoredImage::load(&store, desc, &Platform::host()) {
            Ok(image) => (
                image
                    .config_digest
                    .hex()
                    .chars()
                    .take(12)
                    .collect::<String>(),
                human(image.layers.iter().map(|l| l.size).sum()),
            ),
            Err(_) => ("<broken>".into(), "-".into()),
        };
        rows.push((repo, tag, id, size));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (a, b, c, d) in rows {
        let _ = writeln!(out, "{a:w0$}   {b:w1$}   {c:12}   {d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

/// Finds the stored tag a user's name means (`app` is `app:latest`, and
/// `docker.io/library/app:1` is `app:1`).
fn find_tag(store: &Store, name: &str) -> Result<Option<String>, Failure> {
    let index = store.index().map_err(|e| Failure::failed(e.to_string()))?;
    let wanted = normalize(name);
    let exact = stored_tag(name);
    for desc in &index.manifests {
        let Some(tag) = desc.annotations.get(REF_NAME) else {
            continue;
        };
        if *tag == exact || (wanted.is_some() && normalize(tag) == wanted) {
            return Ok(Some(tag.clone()));
        }
    }
    Ok(None)
}

/// Removes tags. Blobs stay until pruned (they are the build cache too).
pub fn rmi(root: &std::path::Path, names: &[String]) -> Result<ExitCode, Failure> {
    let store = open(root)?;
    // index.json is rewritten through tmp/, which a prune sweeps.
    let _lease = lease(&store)?;
    let mut missing = Vec::new();
    for name in names {
        match find_tag(&store, name)? {
            Some(tag) => {
                store
                    .untag(&tag)
                    .map_err(|e| Failure::failed(e.to_string()))?;
                println!("Untagged: {tag}");
            }
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::failed(format!(
            "no such image: {}",
            missing.join(", ")
        )))
    }
}

/// Prints `{"manifest": …, "config": …}`.
pub fn inspect(root: &std::path::Path, name: &str) -> Result<ExitCode, Failure> {
    let store = open(root)?;
    let index = store.index().map_err(|e| Failure::failed(e.to_string()))?;
    let desc = match find_tag(&store, name)? {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME) == Some(&tag))
            .cloned(),
        None => index
            .manifests
            .iter()
            .find(|d| d.digest.as_str() == name)
            .cloned(),
    };
    let Some(desc) = desc else {
        return Err(Failure::failed(format!(
            "no such image: {name} (see `rbuild images`)"
        )));
    };
    let image = StoredImage::load(&store, &desc, &Platform::host())
        .map_err(|e| Failure::failed(e.to_string()))?;
    let out = serde_json::json!({
        "name": desc.annotations.get(REF_NAME),
        "digest": image.manifest.digest,
        "id": image.config_digest,
        "manifest": image.manifest_doc,
        "config": image.config,
    });
    let text = serde_json::to_string_pretty(&out).map_err(|e| Failure::failed(e.to_string()))?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn printer(quiet: bool, progress: crate::cli::Progress) -> Option<Arc<Plain>> {
    (!quiet && progress != crate::cli::Progress::Quiet).then(|| Arc::new(Plain::new()))
}

/// `rbuild pull`: fetches an image into the store and tags it under its
/// full name; prints the digest it resolved to.
pub fn pull(cli: &Cli, args: &PullArgs) -> Result<ExitCode, Failure> {
    let reference = normalize(&args.reference)
        .ok_or_else(|| Failure::usage(format!("invalid image reference {:?}", args.reference)))?;
    let platform = crate::options::platform(args.platform.as_slice())
        .map_err(|e| Failure::usage(e.to_string()))?
        .unwrap_or_else(Platform::host);
    let store = Arc::new(open(&store_root(cli)?)?);
    let _lease = lease(&store)?;
    let remote = Remote::new(
        Arc::clone(&store),
        &cli.insecure_registries,
        printer(args.quiet, args.progress),
    )?;
    let (top, _) = remote
        .pull(&reference, &platform)
        .map_err(Failure::failed)?;
    if !args.quiet {
        println!("Digest: {}", top.digest);
        println!("Status: Downloaded image for {reference}");
    }
    println!("{reference}");
    Ok(ExitCode::SUCCESS)
}

/// `rbuild push NAME [DEST]`: sends a stored image to a registry.
pub fn push(cli: &Cli, args: &PushArgs) -> Result<ExitCode, Failure> {
    let store = Arc::new(open(&store_root(cli)?)?);
    let _lease = lease(&store)?;
    let reference = normalize(&args.name)
        .ok_or_else(|| Failure::usage(format!("invalid image reference {:?}", args.name)))?;
    let dest = args.dest.as_deref().unwrap_or(&args.name);
    let target = crate::remote::target(dest).map_err(Failure::usage)?;
    if target.digest.is_some() {
        return Err(Failure::usage(format!(
            "cannot push to a digest reference ({dest}): name a tag"
        )));
    }
    let compression = Compression::parse(&args.compression, None).map_err(Failure::usage)?;
    let local = LocalImages::new(&store, None, false);
    let image = local
        .find(&reference, &Platform::host())
        .map_err(Failure::failed)?
        .ok_or_else(|| {
            Failure::failed(format!(
                "no such image: {} (see `rbuild images`)",
                args.name
            ))
        })?;
    let remote = Remote::new(
        Arc::clone(&store),
        &cli.insecure_registries,
        printer(args.quiet, args.progress),
    )?;
    let encoding = Encoding {
        compression,
        types: if args.docker_mediatypes {
            MediaTypes::Docker
        } else {
            MediaTypes::Oci
        },
    };
    let desc = remote
        .push(&image, std::slice::from_ref(&target), encoding)
        .map_err(Failure::failed)?;
    if args.quiet {
        println!("{}", desc.digest);
    } else {
        println!(
            "{}: digest: {} size: {}",
            target.reference(),
            desc.digest,
            desc.size
        );
    }
    Ok(ExitCode::SUCCESS)
}

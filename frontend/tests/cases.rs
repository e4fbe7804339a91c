//! Lowers every case under `testdata/frontend/` and snapshots the result:
//! the build graph (ops, inputs, digests, per-stage config and history) and
//! the build-check warnings with their positions.
//!
//! A case is a directory holding a `Dockerfile` and, optionally, an
//! `options.json`:
//!
//! ```json
//! {
//!   "build_args": {"NAME": "value"},
//!   "target": "stage",
//!   "platform": "linux/arm64",
//!   "labels": {"k": "v"},
//!   "contexts": ["name"],
//!   "network": "none",
//!   "images": {"docker.io/library/busybox:latest": {"Env": ["A=1"], "OnBuild": ["RUN x"]}}
//! }
//! ```
//!
//! `images` stands in for the image store: the configs base images resolve to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rbuild_frontend::lower::ResolvedImage;
use rbuild_frontend::{lower, parse, ImageResolver, Options, SourceFile};
use rbuild_solver::graph::{ImageConfig, NetworkMode, Platform};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseOptions {
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    target: Option<String>,
    platform: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    contexts: BTreeSet<String>,
    network: Option<String>,
    #[serde(default)]
    images: BTreeMap<String, ImageConfig>,
}

struct Images(BTreeMap<String, ImageConfig>);

impl ImageResolver for Images {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<Option<ResolvedImage>, String> {
        Ok(self.0.get(reference).map(|c| ResolvedImage {
            config: c.clone(),
            author: None,
        }))
    }
}

/// Options for a case; the platforms are fixed so digests are the same on
/// every machine.
fn load(dir: &Path) -> (Options, Images) {
    let path = dir.join("options.json");
    let case: CaseOptions = match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        }
        Err(_) => CaseOptions::default(),
    };
    let amd64 = Platform::parse("linux/amd64").expect("valid platform");
    let options = Options {
        build_args: case.build_args,
        target: case.target,
        target_platform: case
            .platform
            .map(|p| Platform::parse(&p).expect("valid platform")),
        build_platform: amd64,
        labels: case.labels,
        named_contexts: case.contexts,
        network: match case.network.as_deref() {
            Some("none") => NetworkMode::None,
            Some("host") => NetworkMode::Host,
            _ => NetworkMode::Default,
        },
    };
    (options, Images(case.images))
}

#[test]
fn frontend_cases() {
    insta::glob!("../../testdata/frontend", "*/Dockerfile", |path| {
        let dir = path.parent().expect("case directory");
        let text = std::fs::read_to_string(path).expect("readable Dockerfile");
        let source = SourceFile::new("Dockerfile", text);
        let (options, images) = load(dir);
        let dockerfile = parse(source.text()).unwrap_or_else(|e| {
            panic!(
                "{}: {} at {}",
                path.display(),
                e.message,
                source.position(e.span.start)
            )
        });
        let lowered = lower(&dockerfile, &options, &images).unwrap_or_else(|e| {
            panic!(
                "{}: {} at {}",
                path.display(),
                e.message,
                source.position(e.span.start)
            )
        });
        let warnings: Vec<String> = lowered
            .warnings
            .iter()
            .map(|w| {
                format!(
                    "{} {}: {}",
                    source.position(w.span.start),
                    w.rule,
                    w.message
                )
            })
            .collect();
        let mut out = serde_json::json!({
            "target": lowered.graph.target,
            "stages": lowered.graph.stages,
            "ops": lowered.graph.ops,
            "warnings": warnings,
        });
        if !lowered.graph.proxy_env.is_empty() {
            out["proxy_env"] = serde_json::json!(lowered.graph.proxy_env);
        }
        insta::assert_snapshot!(serde_json::to_string_pretty(&out).expect("serialisable"));
    });
}

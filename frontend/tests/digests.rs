//! Op digests are a function of what an op does and what it reads, nothing
//! else: comments and layout never change them, and editing one RUN changes
//! that op and its descendants only.

use std::collections::{BTreeMap, BTreeSet};

use rbuild_frontend::{lower, parse, NoImages, Options};
use rbuild_solver::graph::{Graph, Platform};

const BASE: &str = r#"# syntax=docker/dockerfile:1
ARG VERSION=1.0
FROM busybox:1.36 AS deps
WORKDIR /deps
RUN echo fetching && \
    echo done > /deps/list
COPY go.mod go.sum ./

FROM busybox:1.36 AS build
ARG VERSION
WORKDIR /src
COPY --from=deps /deps /deps
COPY . .
RUN echo building $VERSION > /out
RUN echo testing

FROM busybox:1.36 AS docs
RUN echo docs > /docs

FROM scratch
COPY --from=build /out /app
COPY --from=docs /docs /docs
ENV MODE=prod
CMD ["/app"]
"#;

/// The same Dockerfile with comments, blank lines, indentation, trailing
/// blanks and a comment inside a continuation added.
const REFORMATTED: &str = r#"# syntax=docker/dockerfile:1
# A comment at the top.
ARG VERSION=1.0


FROM busybox:1.36 AS deps
   # indented comment
   WORKDIR /deps
RUN echo fetching && \
    # a comment line inside the continuation
    echo done > /deps/list   
COPY go.mod go.sum ./

# The build stage.
FROM busybox:1.36 AS build
ARG VERSION
WORKDIR /src
COPY --from=deps /deps /deps
COPY . .
RUN echo building $VERSION > /out
	RUN echo testing

FROM busybox:1.36 AS docs
RUN echo docs > /docs
FROM scratch
COPY --from=build /out /app
COPY --from=docs /docs /docs
ENV MODE=prod
CMD ["/app"]
"#;

fn graph(text: &str, args: &[(&str, &str)]) -> Graph {
    let options = Options {
        build_platform: Platform::parse("linux/amd64").unwrap(),
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    };
    let df = parse(text).unwrap_or_else(|e| panic!("{}", e.message));
    lower(&df, &options, &NoImages)
        .unwrap_or_else(|e| panic!("{}", e.message))
        .graph
}

fn digests(g: &Graph) -> Vec<String> {
    g.ops.iter().map(|o| o.digest.to_string()).collect()
}

/// Digests of `after` that are not in `before`, mapped to their op names.
fn changed(before: &Graph, after: &Graph) -> BTreeMap<String, String> {
    let old: BTreeSet<String> = digests(before).into_iter().collect();
    after
        .ops
        .iter()
        .filter(|o| !old.contains(o.digest.as_str()))
        .map(|o| (o.digest.to_string(), o.meta.name.clone()))
        .collect()
}

/// The ops that read `id`, transitively, and `id` itself.
fn descendants(g: &Graph, id: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in g.ops.iter().enumerate() {
        if g.closure(i).contains(&id) {
            out.insert(g.ops[i].digest.to_string());
        }
    }
    out
}

#[test]
fn layout_and_comments_change_no_digest() {
    let base = graph(BASE, &[]);
    assert_eq!(digests(&base), digests(&graph(REFORMATTED, &[])));
    let crlf = BASE.replace('\n', "\r\n");
    assert_eq!(digests(&base), digests(&graph(&crlf, &[])));
    // And the image config and history are unchanged too.
    let a = serde_json::to_string(&base.stages).unwrap();
    let b = serde_json::to_string(&graph(REFORMATTED, &[]).stages).unwrap();
    assert_eq!(a, b);
}

#[test]
fn same_input_same_graph() {
    let a = serde_json::to_string(&graph(BASE, &[])).unwrap();
    let b = serde_json::to_string(&graph(BASE, &[])).unwrap();
    assert_eq!(a, b);
}

#[test]
fn editing_one_run_changes_it_and_its_descendants_only() {
    let before = graph(BASE, &[]);
    let edited_text = BASE.replace("RUN echo testing", "RUN echo testing more");
    let after = graph(&edited_text, &[]);
    let run = after
        .ops
        .iter()
        .position(|o| o.meta.name.ends_with("RUN echo testing more"))
        .expect("edited RUN is in the graph");
    let expected = descendants(&after, run);
    let got: BTreeSet<String> = changed(&before, &after).into_keys().collect();
    assert_eq!(got, expected, "changed: {:?}", changed(&before, &after));
    // The edit is in the build stage: the deps and docs stages are untouched.
    assert!(
        expected.len() >= 3,
        "the RUN, the COPY --from=build and the final stage's next copy"
    );
    assert_eq!(before.ops.len(), after.ops.len());
}

#[test]
fn editing_an_early_run_changes_everything_after_it_in_that_chain() {
    let before = graph(BASE, &[]);
    let after = graph(
        &BASE.replace("echo done > /deps/list", "echo DONE > /deps/list"),
        &[],
    );
    let run = after
        .ops
        .iter()
        .position(|o| o.meta.name.contains("echo DONE"))
        .unwrap();
    let got: BTreeSet<String> = changed(&before, &after).into_keys().collect();
    assert_eq!(got, descendants(&after, run));
    // The docs stage does not read the deps stage.
    let docs = after
        .ops
        .iter()
        .find(|o| o.meta.name.contains("echo docs"))
        .unwrap();
    assert!(before.ops.iter().any(|o| o.digest == docs.digest));
}

#[test]
fn a_build_arg_changes_only_ops_that_see_it() {
    let before = graph(BASE, &[]);
    let after = graph(BASE, &[("VERSION", "2.0")]);
    let changed = changed(&before, &after);
    // VERSION is declared in the build stage only: its first RUN and every
    // op after it that reads it change; nothing in deps or docs does.
    assert!(!changed.is_empty());
    assert!(
        changed
            .values()
            .all(|name| !name.contains("[deps") && !name.contains("[docs")),
        "{changed:?}"
    );
    let first = after
        .ops
        .iter()
        .position(|o| o.meta.name.contains("building 2.0"))
        .unwrap();
    let got: BTreeSet<String> = changed.keys().cloned().collect();
    assert_eq!(got, descendants(&after, first));
}

#[test]
fn identical_ops_are_shared() {
    // The three stages all start from the same image: one op.
    let g = graph(BASE, &[]);
    let images = g
        .ops
        .iter()
        .filter(|o| o.meta.name.contains("FROM docker.io/library/busybox:1.36"))
        .count();
    assert_eq!(images, 1);
}

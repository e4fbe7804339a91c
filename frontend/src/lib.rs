//! The Dockerfile frontend: parse, expand, lower to the build graph.
//!
//! [`parse`] checks a Dockerfile's syntax and instructions; [`lower`] turns
//! it into a [`rbuild_solver::graph::Graph`] for a given set of build
//! options. Neither does I/O: base image configs come through an
//! [`lower::ImageResolver`].

pub mod error;
pub mod gofmt;
pub mod instructions;
pub mod lint;
pub mod lower;
pub mod mounts;
pub mod parser;
pub mod reference;
pub mod shell;
pub mod source;

pub use error::{Error, Warning};
pub use instructions::{parse_dockerfile as parse, Dockerfile};
pub use lower::{lower, ImageResolver, Lowered, NoImages, Options};
pub use source::{SourceFile, Span};

//! vmbuild's engine: from a recipe to a content-hashed step graph, a store of step outputs, and
//! an executor that runs what is out of date.
//!
//! The layers, each depending only on those below it:
//!
//! * [`diag`], [`hash`], [`url`], [`http`]: diagnostics, the stable hasher, what of a URL may
//!   be shown, and the one bounded GET that `data "http"` blocks make;
//! * [`recipe`]: parse HCL or TOML, evaluate variables, locals, data blocks and functions into a
//!   typed [`Recipe`], reporting [`Diagnostics`] with spans;
//! * [`plan`]: compile a recipe into a DAG of steps, each with a key, and compare with the store;
//! * [`store`]: content-addressed step outputs and action records;
//! * [`remote`]: the same on an S3-compatible object store, shared by builders, signed;
//! * [`exec`]: run a plan, in parallel, with cancellation, emitting [`Event`]s.
//!
//! The library never prints: callers receive events and diagnostics and render them.

// A `Diagnostic` is large (spans, labels, help), and it is the error of recipe evaluation: a
// cold path taken once per problem. Boxing it everywhere would buy nothing measurable.
#![allow(clippy::result_large_err)]

pub mod diag;
pub mod diff;
pub mod events;
pub mod exec;
pub mod hash;
pub mod http;
pub mod plan;
pub mod recipe;
pub mod remote;
pub mod steps;
pub mod store;
pub mod url;

pub use hash::Digest;

pub use store::Store;

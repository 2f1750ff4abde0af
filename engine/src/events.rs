//! Events the engine emits while applying a plan. The engine never prints: the CLI implements
//! [`Observer`] and renders these as progress bars, plain lines or JSON.

use std::path::PathBuf;
use std::time::Duration;

use crate::hash::Digest;

#[derive(Debug, Clone)]
pub enum Event {
    /// Apply begins: how many steps the plan holds.
    ApplyStarted {
        steps: usize,
        jobs: usize,
    },
    /// The step's key is in the store: nothing to do.
    StepCached {
        id: String,
        /// True when the plan expected it to run, but its upstream reran and produced the same
        /// bytes (early cutoff).
        cutoff: bool,
    },
    /// Another vmbuild is building the same key; this one waits for it.
    StepWaiting {
        id: String,
    },
    StepStarted {
        id: String,
        kind: String,
    },
    /// A line the step's command printed (already stripped of secrets).
    StepOutput {
        id: String,
        line: String,
    },
    StepFinished {
        id: String,
        duration: Duration,
        output: Digest,
    },
    StepFailed {
        id: String,
        error: String,
        log: Option<PathBuf>,
        /// The last lines the step printed, already stripped of secrets.
        tail: Vec<String>,
    },
    /// Not run because a step it depends on failed, or apply was stopped.
    StepSkipped {
        id: String,
        because: String,
    },
    /// Ctrl-C or SIGTERM: running steps are being stopped.
    Cancelling,
    /// A step's output was downloaded from the remote store.
    StepFetched {
        id: String,
        duration: Duration,
        output: Digest,
    },
    /// The remote store's copy of a step's output could not be used: it is built instead.
    RemoteUnusable {
        id: String,
        error: String,
    },
    /// A step's output and record were uploaded to the remote store.
    StepPushed {
        id: String,
        bytes: u64,
        duration: Duration,
    },
    /// Uploading a step to the remote store failed; the local build is unaffected.
    PushFailed {
        id: String,
        error: String,
    },
}

/// Receives events; called from several tasks, so it must be `Sync`.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// An observer that drops everything.
pub struct Silent;

impl Observer for Silent {
    fn event(&self, _: &Event) {}
}

//! The content-addressed store: committed step outputs, blobs, action records and locks.
//!
//! It knows bytes and digests, not steps or recipes. Layout under the store root:
//!
//! ```text
//! VERSION                 layout version ("1")
//! lock                    flock: shared while an apply runs, exclusive for gc
//! trees/<digest>/         committed step outputs, one directory each, named by tree digest
//! blobs/<digest>          small immutable files (logs), named by the blake3 of their bytes
//! actions/<aa>/<key>.json action records, one per step key (aa = first two hex digits)
//! refs/<ns>/<step>.json   the last record committed for a step of a recipe (reasons, gc)
//! logs/<ns>/<step>.log    the latest log of a step, also of a failed run
//! locks/<key>.lock        flock held while a key is being built
//! tmp/<random>/           staging areas; never trusted, removed by gc
//! ```
//!
//! Every write is made in a temporary place, synced, and renamed into place, and an action record
//! is written only after the tree it names is committed: a crash at any moment leaves either
//! nothing or something whole.

// STUB: replaced by the store implementation.
#![allow(unused_variables)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::Digest;

/// What can go wrong in the store, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the action record `{path}` is corrupt")]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the store at `{path}` has layout version {found}; this vmbuild reads version {expected}"
    )]
    Version {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// The record of one successful step run, keyed by the step key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionRecord {
    pub key: Digest,
    /// Recipe namespace (see [`Store::namespace`]).
    pub namespace: String,
    pub step_id: String,
    pub kind: String,
    /// Digest of the committed output tree.
    pub output: Digest,
    /// Digest of the log blob, if the step wrote a log.
    pub log: Option<Digest>,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    /// External tools and their versions (or digests) used by the step.
    pub tools: BTreeMap<String, String>,
    /// The canonical key inputs, for explaining a later cache miss. Holds no secret values.
    pub key_inputs: serde_json::Value,
}

/// A staging area for one step run: an empty `out` directory and a log file beside it.
#[derive(Debug)]
pub struct Staging {
    /// `tmp/<random>/`; removed on drop unless committed.
    pub dir: PathBuf,
    /// `tmp/<random>/out/`: the step's `VMBUILD_OUT`.
    pub out: PathBuf,
    /// `tmp/<random>/log`.
    pub log: PathBuf,
    /// `tmp/<random>/tmp/`: the step's `TMPDIR`.
    pub scratch: PathBuf,
}

/// A held flock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

/// One problem found by [`Store::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub what: String,
}

/// What [`Store::verify`] checked and found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub trees: usize,
    pub blobs: usize,
    pub records: usize,
    pub problems: Vec<Problem>,
}

/// What [`Store::gc`] removed and kept.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub records_removed: usize,
    pub trees_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub records_kept: usize,
}

/// A store on the local file system.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        todo!()
    }
    /// The user's cache folder: `$XDG_CACHE_HOME/vmbuild` or `~/.cache/vmbuild`.
    pub fn default_location() -> PathBuf {
        todo!()
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// A short stable name for a recipe location, used under `refs/` and `logs/`.
    pub fn namespace(recipe_path: &Path) -> String {
        todo!()
    }
    pub fn lock_shared(&self) -> Result<Lock, StoreError> {
        todo!()
    }
    pub fn lock_exclusive(&self) -> Result<Lock, StoreError> {
        todo!()
    }
    /// Block until this process holds the build lock of `key`.
    pub fn lock_key(&self, key: &Digest) -> Result<Lock, StoreError> {
        todo!()
    }
    pub fn stage(&self) -> Result<Staging, StoreError> {
        todo!()
    }
    /// Hash `staging.out`, sync it, and move it to `trees/<digest>`; returns the digest.
    pub fn commit_tree(&self, staging: Staging) -> Result<Digest, StoreError> {
        todo!()
    }
    pub fn tree_path(&self, digest: &Digest) -> PathBuf {
        todo!()
    }
    pub fn has_tree(&self, digest: &Digest) -> bool {
        todo!()
    }
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        todo!()
    }
    pub fn get_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        todo!()
    }
    /// The record for `key`, if there is one and the tree it names is in the store.
    pub fn get_action(&self, key: &Digest) -> Result<Option<ActionRecord>, StoreError> {
        todo!()
    }
    pub fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        todo!()
    }
    pub fn list_actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        todo!()
    }
    /// The last record committed for `step_id` of recipe namespace `ns`.
    pub fn get_ref(&self, ns: &str, step_id: &str) -> Result<Option<ActionRecord>, StoreError> {
        todo!()
    }
    pub fn put_ref(&self, record: &ActionRecord) -> Result<(), StoreError> {
        todo!()
    }
    pub fn log_path(&self, ns: &str, step_id: &str) -> PathBuf {
        todo!()
    }
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, StoreError> {
        todo!()
    }
    pub fn gc(
        &self,
        keep: &std::collections::BTreeSet<Digest>,
        keep_last: usize,
    ) -> Result<GcReport, StoreError> {
        todo!()
    }
}

/// The digest of a directory tree: every entry's relative path, type, mode, owner, extended
/// attributes and content (file bytes, symlink target, device number), in sorted order.
pub fn tree_digest(path: &Path) -> Result<Digest, StoreError> {
    todo!()
}

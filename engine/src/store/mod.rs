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
//! builds/<ns>/<time>.json the manifest of each exported build of a recipe (`vmbuild diff`)
//! cache/                  what steps keep between runs (downloads); never in a key
//! secret.key              32 random bytes (mode 0600) keying digests of secret values
//! ```
//!
//! Every write is made in a temporary place, synced, and renamed into place, and an action record
//! is written only after the tree it names is committed: a crash at any moment leaves either
//! nothing or something whole.
//!
//! This file owns the public types, opening the store and the path helpers. The rest lives in:
//! `lock.rs` (flocks), `tree.rs` (tree digests, staging, commit, robust removal), `record.rs`
//! (blobs, action records, refs, atomic writes) and `maintain.rs` (verify and gc).

mod lock;
mod maintain;
mod record;
mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::Digest;

pub use maintain::kept_keys;
pub(crate) use tree::entry_tag;
pub use tree::tree_digest;

/// The layout version this code reads and writes.
const LAYOUT_VERSION: &str = "1";

/// The folders created under the store root by [`Store::open`].
const LAYOUT_DIRS: [&str; 7] = ["trees", "blobs", "actions", "refs", "logs", "locks", "tmp"];

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
    /// [`Store::gc`] was called without the exclusive store lock held.
    #[error("garbage collection of the store at `{path}` needs its exclusive lock (Store::lock_exclusive)")]
    GcWithoutLock { path: PathBuf },
}

impl StoreError {
    /// An I/O error while doing `action` on `path`.
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `result.map_err(|e| StoreError::io(action, path, e))`, shorter.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::io(action, path, source))
    }
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
///
/// Dropped without being committed, it removes its whole directory. [`Store::commit_tree`] moves
/// `out` into the store and removes `scratch`; if a `log` file was written it leaves `dir` and
/// the log in place so that the caller may still read it (`gc` removes such leftovers),
/// otherwise it removes `dir` too.
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
    /// Set by [`Store::commit_tree`]: the drop then leaves `dir` alone.
    committed: bool,
}

/// A held flock; released on drop.
#[derive(Debug)]
pub struct Lock {
    flock: nix::fcntl::Flock<std::fs::File>,
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
    ///
    /// Creates the layout folders and `VERSION`; refuses a store of another layout version. A
    /// store folder it creates is mode 0700.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let existed = root.exists();
        std::fs::create_dir_all(root).ctx("create the store folder", root)?;
        if !existed {
            // Dumps of production data and the VMs' own passwords live here: its owner's only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .ctx("restrict the store folder", root)?;
        }
        let store = Store {
            root: root.to_path_buf(),
        };
        let version_path = root.join("VERSION");
        match std::fs::read_to_string(&version_path) {
            Ok(found) => {
                let found = found.trim();
                if found != LAYOUT_VERSION {
                    return Err(StoreError::Version {
                        path: root.to_path_buf(),
                        found: found.to_string(),
                        expected: LAYOUT_VERSION.to_string(),
                    });
                }
                store.create_layout()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                store.create_layout()?;
                let text = format!("{LAYOUT_VERSION}\n");
                store.write_atomic(&version_path, text.as_bytes())?;
            }
            Err(e) => return Err(StoreError::io("read the store version", &version_path, e)),
        }
        Ok(store)
    }

    fn create_layout(&self) -> Result<(), StoreError> {
        for dir in LAYOUT_DIRS {
            let path = self.root.join(dir);
            std::fs::create_dir_all(&path).ctx("create the store folder", &path)?;
        }
        Ok(())
    }

    /// The user's cache folder: `$XDG_CACHE_HOME/vmbuild` or `~/.cache/vmbuild`.
    pub fn default_location() -> PathBuf {
        if let Some(cache) = dirs::cache_dir() {
            return cache.join("vmbuild");
        }
        match dirs::home_dir() {
            Some(home) => home.join(".cache").join("vmbuild"),
            None => std::env::temp_dir().join("vmbuild"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What steps keep between runs (downloaded packages, stat caches): never part of a key.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Keep the manifest of a build of the recipe namespace `ns`: `builds/<ns>/<time>.json`,
    /// named by when it finished (`20261202T031536.123456789Z`), written atomically.
    pub fn record_build(
        &self,
        ns: &str,
        finished: jiff::Timestamp,
        manifest: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let name = finished.strftime("%Y%m%dT%H%M%S.%fZ").to_string();
        let path = self
            .root
            .join("builds")
            .join(ns)
            .join(format!("{name}.json"));
        self.write_atomic(&path, manifest)?;
        Ok(path)
    }

    /// The manifests of the builds of namespace `ns`, oldest first.
    pub fn builds(&self, ns: &str) -> Result<Vec<PathBuf>, StoreError> {
        let dir = self.root.join("builds").join(ns);
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json"))
                    .collect();
                found.sort();
                Ok(found)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StoreError::io("list", &dir, e)),
        }
    }

    /// The store's own secret: 32 random bytes in `secret.key` (mode 0600), made on first use.
    /// It keys the digests of secret values ([`crate::steps::ResolveContext::secret_digest`]),
    /// so a key can change when a secret does without anyone who lacks this file being able to
    /// test guesses of the secret against the store's metadata.
    pub fn secret_key(&self) -> Result<[u8; 32], StoreError> {
        let path = self.root.join("secret.key");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                return Ok(bytes.try_into().expect("32 bytes"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("read", &path, e)),
        }
        let key: [u8; 32] = rand::random();
        self.write_private_once(&path, &key)?;
        let bytes = std::fs::read(&path).ctx("read", &path)?;
        bytes
            .try_into()
            .map_err(|_| StoreError::io("read", &path, std::io::Error::other("not 32 bytes")))
    }

    /// A short stable name for a recipe location, used under `refs/` and `logs/`.
    ///
    /// The first 16 hex digits of the blake3 of the canonical absolute path (of the path as
    /// given when it cannot be canonicalized, e.g. because it does not exist).
    pub fn namespace(recipe_path: &Path) -> String {
        use std::os::unix::ffi::OsStrExt;
        let path = std::fs::canonicalize(recipe_path).unwrap_or_else(|_| recipe_path.to_path_buf());
        let digest = Digest::of_bytes(path.as_os_str().as_bytes());
        digest.to_hex()[..16].to_string()
    }

    /// Where the committed tree `digest` lives (whether or not it exists).
    pub fn tree_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("trees").join(digest.to_hex())
    }

    /// Whether the tree `digest` is committed (a directory under `trees/`).
    pub fn has_tree(&self, digest: &Digest) -> bool {
        std::fs::symlink_metadata(self.tree_path(digest)).is_ok_and(|m| m.is_dir())
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.to_hex())
    }

    /// `logs/<ns>/<step_id>.log`; its parent folder is created (an error doing so is left for
    /// the caller to meet when it writes the log).
    pub fn log_path(&self, ns: &str, step_id: &str) -> PathBuf {
        let dir = self.root.join("logs").join(ns);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("cannot create the log folder `{}`: {e}", dir.display());
        }
        dir.join(format!("{step_id}.log"))
    }

    /// `actions/<aa>/<key>.json`.
    fn action_path(&self, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.root
            .join("actions")
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }

    /// `refs/<ns>/<step_id>.json`.
    fn ref_path(&self, ns: &str, step_id: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(ns)
            .join(format!("{step_id}.json"))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// An error and its causes, on one line, for a [`Problem`].
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// 32 random hex digits, for names under `tmp/`.
fn random_name() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests;

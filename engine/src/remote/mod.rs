//! The remote store: a cache shared by many builders on an S3-compatible object store (AWS S3,
//! MinIO, Ceph, Garage), behind the local store, as Nix binary caches and Bazel remote caches
//! are.
//!
//! Layout under `s3://BUCKET/PREFIX/`:
//!
//! ```text
//! actions/<key>.json   a signed entry: the action record, its tree archive's digest and size,
//!                      and the step's small report files (for a build's manifest)
//! trees/<tree>.v1      the archive of tree <tree> (archive.rs): a function of the tree alone
//! blobs/<digest>       logs, named by the blake3 of their bytes
//! ```
//!
//! A builder uploads a tree's archive (multipart, in parallel parts), then its log, then the
//! entry, last and only if no entry for that key exists yet: nobody sees an entry whose objects
//! are missing, and two builders of one key leave one consistent copy. A reader trusts an entry
//! only when a key it trusts signed it, and an archive only when its blake3 and size are the
//! entry's; the unpacked tree must then have the entry's tree digest.
//!
//! This file owns the client, entries and lookups; `transfer.rs` moves trees, `maintain.rs`
//! verifies and collects garbage, `sign.rs` and `location.rs` hold keys and the location.

pub mod archive;
pub mod location;
mod maintain;
pub mod sign;
mod transfer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::hash::Digest;
use crate::store::{ActionRecord, StoreError};

pub use location::{Credentials, Location, LocationError};
pub use maintain::{RemoteGcReport, RemoteProblem, RemoteVerifyReport};
pub use sign::{KeyError, Signature, SigningKey, TrustedKey};
pub use transfer::Pushed;

/// The archive format version, part of every tree object's name.
const ARCHIVE_SUFFIX: &str = "v1";

/// Top-level files of a tree that an entry carries, for a build's manifest, when this small.
const ENTRY_FILES: [&str; 2] = [crate::exec::export::STEP_REPORT, "packages.txt"];
const ENTRY_FILE_LIMIT: u64 = 256 * 1024;

/// What can go wrong with the remote store. Messages name objects and the location, never
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the remote store {location}: cannot {action} `{object}`")]
    Object {
        location: String,
        action: &'static str,
        object: String,
        #[source]
        source: object_store::Error,
    },
    #[error("the remote store {location} is unreachable (an earlier request failed); skipped: {action} `{object}`")]
    Unreachable {
        location: String,
        action: &'static str,
        object: String,
    },
    #[error("the remote object `{object}` is corrupt: {why}")]
    Corrupt { object: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {action} `{path}`")]
    Local {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the remote store's client")]
    Client(#[source] object_store::Error),
}

/// How to reach and trust a remote store.
pub struct RemoteOptions {
    pub location: Location,
    pub credentials: Credentials,
    /// Signs the entries this builder uploads; without one, nothing is uploaded.
    pub signing_key: Option<SigningKey>,
    /// Entries signed by these keys (and by `signing_key`) are trusted; the rest are misses.
    pub trusted_keys: Vec<TrustedKey>,
    /// Upload what this builder builds (`--no-push` turns it off).
    pub push: bool,
}

/// The remote entry of one step run: what a trusted builder signed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub record: ActionRecord,
    /// The tree's archive: `trees/<record.output>.v1`.
    pub archive: ObjectRef,
    /// The log blob (`blobs/<digest>`), when the step wrote one.
    #[serde(default)]
    pub log: Option<ObjectRef>,
    /// Small top-level files of the tree (its report), by name.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// The digest and size of an object's bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRef {
    pub digest: Digest,
    pub size: u64,
}

/// An entry as stored: the payload (JSON text of an [`Entry`]) exactly as signed.
#[derive(Debug, Serialize, Deserialize)]
struct SignedEntry {
    payload: String,
    signatures: Vec<Signature>,
}

/// A remote store client. Cheap to share (`Arc`); its lookups remember what they found.
pub struct Remote {
    location: Location,
    client: Arc<AmazonS3>,
    signing_key: Option<SigningKey>,
    trusted: Vec<TrustedKey>,
    push: bool,
    /// Runs remote requests for callers outside any tokio runtime (planning).
    runtime: Option<tokio::runtime::Runtime>,
    /// Trusted entries seen, by tree digest: what a download of that tree checks against.
    known: Mutex<HashMap<Digest, Entry>>,
    /// Keys whose remote copy turned out corrupt: misses from then on, and overwritten when
    /// this builder uploads them again.
    distrusted: Mutex<HashSet<Digest>>,
    /// Keys whose entry was ignored: signed by no trusted key, or not an entry at all.
    ignored: Mutex<BTreeMap<Digest, String>>,
    /// Set after a request fails for want of the server: later requests are not tried.
    down: AtomicBool,
    /// Failures that did not stop the caller (a lookup that became a miss, an upload), first
    /// seen first, each once.
    failures: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.location)
    }
}

impl Remote {
    /// A client for `options.location` (nothing is requested yet).
    pub fn open(options: RemoteOptions) -> Result<Remote, RemoteError> {
        let location = options.location;
        let credentials = options.credentials;
        let region = location
            .region
            .clone()
            .or(credentials.region.clone())
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_virtual_hosted_style_request(location.virtual_hosted)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    // Whole requests: a part of a large upload, or a large download.
                    .with_timeout(Duration::from_secs(3600))
                    .with_allow_http(true),
            );
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &location.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let client = builder.build().map_err(RemoteError::Client)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmbuild-remote")
            .enable_all()
            .build()
            .map_err(|source| RemoteError::Local {
                action: "start the remote store's threads",
                path: std::path::PathBuf::new(),
                source,
            })?;
        let mut trusted = options.trusted_keys;
        if let Some(key) = &options.signing_key {
            // A builder trusts what it signed itself.
            if !trusted.contains(&key.public()) {
                trusted.push(key.public());
            }
        }
        Ok(Remote {
            location,
            client: Arc::new(client),
            push: options.push && options.signing_key.is_some(),
            signing_key: options.signing_key,
            trusted,
            runtime: Some(runtime),
            known: Mutex::new(HashMap::new()),
            distrusted: Mutex::new(HashSet::new()),
            ignored: Mutex::new(BTreeMap::new()),
            down: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether this builder uploads what it builds (it was asked to and holds a signing key).
    pub fn pushes(&self) -> bool {
        self.push
    }

    /// Whether a signing key was given.
    pub fn can_sign(&self) -> bool {
        self.signing_key.is_some()
    }

    /// Run `future` to completion from code outside a tokio runtime (the planner).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the remote")
            .block_on(future)
    }

    /// Note a failure the caller goes on after (shown once, at the end).
    pub fn note_failure(&self, error: &RemoteError) {
        let text = crate::store::describe(error);
        let mut failures = self.failures.lock().expect("not poisoned");
        // After the server went away, every later request says so: one line is enough.
        let unreachable = matches!(error, RemoteError::Unreachable { .. });
        if (failures.is_empty() || !unreachable) && !failures.contains(&text) {
            failures.push(text);
        }
    }

    /// The failures noted so far.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("not poisoned").clone()
    }

    /// [`Remote::lookup_blocking`], with a failure noted and taken as a miss.
    pub fn lookup_or_note(&self, key: &Digest) -> Option<Entry> {
        match self.lookup_blocking(key) {
            Ok(found) => found,
            Err(error) => {
                self.note_failure(&error);
                None
            }
        }
    }

    /// Entries ignored so far, by key, with why.
    pub fn ignored(&self) -> BTreeMap<Digest, String> {
        self.ignored.lock().expect("not poisoned").clone()
    }

    fn object(&self, relative: &str) -> ObjectPath {
        if self.location.prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{relative}", self.location.prefix))
        }
    }

    fn entry_path(&self, key: &Digest) -> ObjectPath {
        self.object(&format!("actions/{}.json", key.to_hex()))
    }

    fn tree_object(&self, tree: &Digest) -> ObjectPath {
        self.object(&format!("trees/{}.{ARCHIVE_SUFFIX}", tree.to_hex()))
    }

    fn blob_object(&self, digest: &Digest) -> ObjectPath {
        self.object(&format!("blobs/{}", digest.to_hex()))
    }

    /// The object's name as shown in messages: `s3://BUCKET/PATH`.
    fn shown(&self, path: &ObjectPath) -> String {
        format!("s3://{}/{path}", self.location.bucket)
    }

    /// Turn an object store error into ours, noting an unreachable server.
    fn failed(
        &self,
        action: &'static str,
        path: &ObjectPath,
        source: object_store::Error,
    ) -> RemoteError {
        if is_unreachable(&source) {
            self.down.store(true, Ordering::Relaxed);
        }
        RemoteError::Object {
            location: self.location.to_string(),
            action,
            object: self.shown(path),
            source,
        }
    }

    /// Refuse at once when the server has been found unreachable.
    fn check_up(&self, action: &'static str, path: &ObjectPath) -> Result<(), RemoteError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(RemoteError::Unreachable {
                location: self.location.to_string(),
                action,
                object: self.shown(path),
            });
        }
        Ok(())
    }

    /// The trusted entry for `key`, if the remote has one. An entry signed by no trusted key,
    /// or for another key, or unreadable, is a miss (and noted in [`Remote::ignored`]).
    pub async fn lookup(&self, key: &Digest) -> Result<Option<Entry>, RemoteError> {
        if self.distrusted.lock().expect("not poisoned").contains(key) {
            return Ok(None);
        }
        let path = self.entry_path(key);
        let Some(bytes) = self.get_small(&path).await? else {
            return Ok(None);
        };
        match self.verify_entry(key, &bytes) {
            Ok(entry) => {
                self.known
                    .lock()
                    .expect("not poisoned")
                    .insert(entry.record.output, entry.clone());
                Ok(Some(entry))
            }
            Err(why) => {
                tracing::debug!("ignored {}: {why}", self.shown(&path));
                self.ignored.lock().expect("not poisoned").insert(*key, why);
                Ok(None)
            }
        }
    }

    /// [`Remote::lookup`], for callers outside a tokio runtime.
    pub fn lookup_blocking(&self, key: &Digest) -> Result<Option<Entry>, RemoteError> {
        self.block_on(self.lookup(key))
    }

    /// Check an entry's signatures and that it is the entry of `key`.
    fn verify_entry(&self, key: &Digest, bytes: &[u8]) -> Result<Entry, String> {
        let signed: SignedEntry =
            serde_json::from_slice(bytes).map_err(|e| format!("not a signed entry: {e}"))?;
        let trusted_by = signed.signatures.iter().find_map(|signature| {
            self.trusted
                .iter()
                .find(|key| key.verifies(signed.payload.as_bytes(), signature))
        });
        if trusted_by.is_none() {
            let names: Vec<&str> = signed.signatures.iter().map(|s| s.key.as_str()).collect();
            let by_trusted_name = names
                .iter()
                .find(|name| self.trusted.iter().any(|key| key.name == **name));
            return Err(match by_trusted_name {
                Some(name) => format!(
                    "its signature by {name} does not match its content (changed after signing, or another key of that name)"
                ),
                None if names.is_empty() => "not signed".to_string(),
                None => format!("signed by {}, no key this builder trusts", names.join(", ")),
            });
        }
        let entry: Entry = serde_json::from_str(&signed.payload)
            .map_err(|e| format!("a signed payload that is not an entry: {e}"))?;
        if entry.record.key != *key {
            return Err(format!("the entry of another key ({})", entry.record.key));
        }
        Ok(entry)
    }

    /// The trusted entry already seen for tree `tree`.
    pub fn known_entry(&self, tree: &Digest) -> Option<Entry> {
        self.known.lock().expect("not poisoned").get(tree).cloned()
    }

    /// A small file of tree `tree` that its entry carries (a step report), if it does.
    pub fn entry_file(&self, tree: &Digest, name: &str) -> Option<Vec<u8>> {
        let known = self.known.lock().expect("not poisoned");
        known
            .get(tree)
            .and_then(|entry| entry.files.get(name))
            .map(|text| text.as_bytes().to_vec())
    }

    /// Whether the remote holds an entry for `key` (trusted or not).
    pub async fn has_entry(&self, key: &Digest) -> Result<bool, RemoteError> {
        let path = self.entry_path(key);
        self.exists(&path).await
    }

    async fn exists(&self, path: &ObjectPath) -> Result<bool, RemoteError> {
        self.check_up("look for", path)?;
        match self.client.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed("look for", path, e)),
        }
    }

    /// The bytes of a small object, `None` if there is none.
    async fn get_small(&self, path: &ObjectPath) -> Result<Option<bytes::Bytes>, RemoteError> {
        self.check_up("read", path)?;
        let result = match self.client.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed("read", path, e)),
        };
        result
            .bytes()
            .await
            .map(Some)
            .map_err(|e| self.failed("read", path, e))
    }

    /// Sign `entry` and write it, unless an entry for its key is there already (then the first
    /// writer's stays, whole). After a corrupt copy was found, this builder's replaces it.
    async fn put_entry(&self, entry: &Entry) -> Result<(), RemoteError> {
        let key = self
            .signing_key
            .as_ref()
            .expect("entries are written only by a builder with a signing key");
        let payload = serde_json::to_string(entry).expect("an entry serializes");
        let signed = SignedEntry {
            signatures: vec![key.sign(payload.as_bytes())],
            payload,
        };
        let bytes = serde_json::to_vec_pretty(&signed).expect("a signed entry serializes");
        let path = self.entry_path(&entry.record.key);
        let replace = self
            .distrusted
            .lock()
            .expect("not poisoned")
            .contains(&entry.record.key);
        let mode = if replace {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        self.check_up("write", &path)?;
        let put = self
            .client
            .put_opts(
                &path,
                PutPayload::from(bytes.clone()),
                PutOptions::from(mode),
            )
            .await;
        match put {
            Ok(_) => Ok(()),
            // Another builder wrote this key's entry first: theirs stays.
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            // A server without conditional writes: look, then write.
            Err(object_store::Error::NotImplemented { .. }) => {
                if self.exists(&path).await? {
                    return Ok(());
                }
                self.client
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| self.failed("write", &path, e))
            }
            Err(e) => Err(self.failed("write", &path, e)),
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropped inside another runtime, a runtime must not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether an object store error means the server is not there (refused, reset, timed out),
/// rather than an answer from it.
fn is_unreachable(error: &object_store::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("connection refused")
            || text.contains("connection reset")
            || text.contains("error sending request")
            || text.contains("timed out")
            || text.contains("dns error")
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | NotConnected
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

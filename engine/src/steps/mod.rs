//! Step kinds: one module each. A step declares its canonical parameters and what it reads
//! (resolved read-only at plan time), and runs to fill an empty output folder.

pub mod chroot;
pub mod command;
pub mod config;
pub mod database;
pub mod debootstrap;
pub mod disk;
pub mod files;
pub mod forbid_software;
pub mod image;
pub mod import;
pub mod inputs;
pub mod layers;
pub mod loop_mount;
pub mod output;
pub mod process;
pub mod provision_puppet;
pub mod provision_shell;
pub mod qa;
pub mod sanitize;
pub mod source;
pub mod system;
pub mod tools;
pub mod tree;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::diag::Diagnostic;
use crate::hash::Digest;

/// What a step reads from outside the recipe, found at plan time without running anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// Local files (path relative to the recipe folder → content digest).
    pub inputs: BTreeMap<String, Digest>,
    /// External programs (name → version or digest).
    pub tools: BTreeMap<String, String>,
}

/// Read-only context for resolving a step.
pub struct ResolveContext {
    pub recipe_dir: PathBuf,
    /// What steps keep between plans and runs (a file tree's stat cache); never in a key.
    pub cache_dir: Option<PathBuf>,
    /// Keys [`ResolveContext::secret_digest`]: the store's own, or a random one for this plan.
    secret_key: [u8; 32],
    tool_cache: Mutex<HashMap<PathBuf, String>>,
}

impl ResolveContext {
    /// A context without a store: no cache, and secret digests that hold for this plan only.
    pub fn new(recipe_dir: &Path) -> ResolveContext {
        ResolveContext {
            recipe_dir: recipe_dir.to_path_buf(),
            cache_dir: None,
            secret_key: rand::random(),
            tool_cache: Mutex::new(HashMap::new()),
        }
    }

    /// A context for planning against a store: its cache folder and its secret key.
    pub fn with_store(
        recipe_dir: &Path,
        cache_dir: PathBuf,
        secret_key: [u8; 32],
    ) -> ResolveContext {
        ResolveContext {
            cache_dir: Some(cache_dir),
            secret_key,
            ..ResolveContext::new(recipe_dir)
        }
    }

    /// A digest of a secret value that may enter a key: it changes when the value does, and
    /// cannot be checked against guesses without the store's `secret.key`.
    pub fn secret_digest(&self, value: &[u8]) -> String {
        let hash = blake3::keyed_hash(&self.secret_key, value);
        format!("keyed:{}", &hash.to_hex()[..24])
    }

    /// The same context for a module's folder: its relative paths are the module's.
    pub fn in_folder(&self, dir: &Path) -> ResolveContext {
        ResolveContext {
            recipe_dir: dir.to_path_buf(),
            cache_dir: self.cache_dir.clone(),
            secret_key: self.secret_key,
            tool_cache: Mutex::new(self.tool_cache.lock().expect("tool cache").clone()),
        }
    }

    /// The digest of a program's file, hashed once per plan.
    pub fn program_digest(&self, path: &Path) -> std::io::Result<String> {
        if let Some(d) = self.tool_cache.lock().expect("tool cache").get(path) {
            return Ok(d.clone());
        }
        let bytes = std::fs::read(path)?;
        let digest = format!("blake3:{}", Digest::of_bytes(&bytes).short());
        self.tool_cache
            .lock()
            .expect("tool cache")
            .insert(path.to_path_buf(), digest.clone());
        Ok(digest)
    }
}

/// Everything a running step gets.
pub struct RunContext {
    /// The empty folder that becomes the step's output.
    pub out: PathBuf,
    /// A scratch folder, removed afterwards.
    pub scratch: PathBuf,
    /// The log file; a step appends what it prints here.
    pub log: PathBuf,
    /// Upstream step id → its committed output folder (read-only).
    pub upstream: BTreeMap<String, PathBuf>,
    pub recipe_dir: PathBuf,
    /// A cache shared by runs (downloaded packages); never part of an output or a key.
    pub cache: PathBuf,
    /// Strings to blank out of logs.
    pub redact: Arc<Vec<String>>,
    pub cancel: CancellationToken,
    /// Called with each line the step prints (already redacted).
    pub on_line: Arc<dyn Fn(&str) + Send + Sync>,
}

impl RunContext {
    /// Tell the log (and whoever watches it) what the step is doing, secrets blanked out.
    pub fn say(&self, text: &str) {
        use std::io::Write;
        let line = process::redact(text, &self.redact);
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(log, "{line}");
        }
        (self.on_line)(&line);
    }
}

/// Why a step run failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` exited with {status}")]
    Failed { program: String, status: String },
    #[error("stopped")]
    Cancelled,
    #[error("{0}")]
    Unmet(String),
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StepError {
    /// A library error as a step failure: its message and every cause, `: `-separated.
    pub fn unmet(prefix: &str, error: &dyn std::error::Error) -> StepError {
        let mut text = format!("{prefix}{error}");
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        StepError::Unmet(text)
    }
}

/// A size for people: `1536` → `1.5 KiB`, `512` → `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A `map_err` adapter: an I/O error while doing `action` on `path`.
pub fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    let path = path.to_path_buf();
    move |source| StepError::Io {
        action,
        path,
        source,
    }
}

pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send + 'a>>;

/// A step kind's behaviour.
pub trait Step: Send + Sync {
    /// `step.NAME`, `database.toxo.dump`, ...
    fn id(&self) -> &str;
    /// The kind, as shown in plans (`command`, `debootstrap`, ...).
    fn kind(&self) -> &'static str;
    /// Bumped whenever the kind's implementation changes what it produces.
    fn version(&self) -> u32;
    /// Ids of the steps whose outputs this one reads.
    fn depends_on(&self) -> &[String];
    /// Canonical parameters: secrets by identity only.
    fn params(&self) -> serde_json::Value;
    /// Secret values the step handles, to blank out of its log.
    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the step's output files are artifacts the user downloads (disk images), copied
    /// out of the store into the output folder after apply.
    fn artifacts(&self) -> bool {
        false
    }
    /// Whether the step vouches for the artifacts of the steps it depends on (the leak scan):
    /// `apply --target` of an artifact step brings it along, so nothing is exported unchecked.
    fn checks_artifacts(&self) -> bool {
        false
    }
    /// The name an upstream step's output enters this step's key under: its id, as the step
    /// was written (a module's step strips its instance's prefix).
    fn upstream_name<'a>(&self, id: &'a str) -> &'a str {
        id
    }
    /// The folder, under the output folder, its artifacts go into (a module instance's, for
    /// recipes that build several VMs); `None` for the output folder itself.
    fn export_folder(&self) -> Option<String> {
        None
    }
    /// Called after the step's artifacts were copied into `dir`: write what refers to their
    /// final place (a libvirt domain XML) and register them where asked (`libvirt_uri`
    /// overrides the recipe's). Returns what it did, for people.
    fn after_export(
        &self,
        _dir: &Path,
        _libvirt_uri: Option<&str>,
    ) -> Result<Vec<String>, StepError> {
        Ok(Vec::new())
    }
    /// What plan shows under the step, one line each (`schemas: apidb, core`), known after
    /// [`Step::resolve`]. Never a secret.
    fn details(&self) -> Vec<String> {
        Vec::new()
    }
    /// Why the step runs on every apply, if it does: its inputs cannot be fingerprinted at plan
    /// time (a database without a fingerprint query). Its dependents are still cached when its
    /// output comes out the same.
    fn always_runs(&self) -> Option<&'static str> {
        None
    }
    /// Digests of local inputs and tool versions; read-only, runs nothing the recipe names.
    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic>;
    /// Fill `ctx.out`.
    fn run(&self, ctx: RunContext) -> StepFuture<'_>;
}

//! Apply: run a plan's steps in parallel on tokio, in dependency order, committing each output
//! to the store atomically.
//!
//! Keys are recomputed as upstream outputs become known, so a step whose upstream reran and
//! produced identical bytes is found cached (early cutoff). A failed step stops its dependents;
//! without `keep_going` nothing new starts after a failure, with it independent branches go on.
//! Cancellation (Ctrl-C) kills running commands and commits nothing partial.
//!
//! With a remote store, a step the local store misses is looked up there; its output is
//! downloaded only when something needs the bytes (a dependent that runs, an artifact), and a
//! copy that fails its checks is rebuilt. Every step whose output is local is then uploaded
//! (unless the remote has it), in the background, a few at a time; apply waits for the uploads
//! and reports their failures without failing the build.

pub mod export;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Observer};
use crate::hash::Digest;
use crate::plan::{Action, KeyInputs, Plan};
use crate::remote::{Pushed, Remote};
use crate::steps::{RunContext, StepError};
use crate::store::{describe, ActionRecord, Store, StoreError};

/// Uploads to the remote store at once (each is itself a multipart upload in parallel parts).
const PUSHES_AT_ONCE: usize = 2;

/// How many of a failed step's last log lines are shown with the failure.
const FAILURE_TAIL_LINES: usize = 20;

pub struct ApplyOptions {
    /// How many steps may run at once.
    pub jobs: usize,
    /// After a failure, let steps that do not depend on it go on.
    pub keep_going: bool,
    /// Cancelled on Ctrl-C or SIGTERM.
    pub cancel: CancellationToken,
    /// A remote store behind the local one.
    pub remote: Option<Arc<Remote>>,
}

/// How an apply ended.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub ran: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<String>,
    pub cancelled: bool,
    /// Output digest of every step that finished or was cached.
    pub outputs: BTreeMap<String, Digest>,
    /// Key of every step that finished or was cached.
    pub keys: BTreeMap<String, Digest>,
}

impl ApplyReport {
    pub fn success(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty() && !self.cancelled
    }
}

/// What one step's task came back with.
enum Outcome {
    /// Key and output digest.
    Cached(Digest, Digest),
    Ran(Digest, Digest),
    Failed(String),
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Run every step of `plan` that is not in the store.
pub async fn apply(
    plan: &Plan,
    store: &Store,
    options: &ApplyOptions,
    observer: Arc<dyn Observer>,
) -> Result<ApplyReport, ApplyError> {
    let _shared = store.lock_shared()?;
    let jobs = options.jobs.max(1);
    observer.event(&Event::ApplyStarted {
        steps: plan.steps.len(),
        jobs,
    });
    let position: HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); plan.steps.len()];
    let mut waiting_on: Vec<usize> = vec![0; plan.steps.len()];
    for (i, step) in plan.steps.iter().enumerate() {
        // The same step as an earlier one waits for it too, and is then found cached.
        for dep in step.depends_on.iter().chain(&step.same_as) {
            if let Some(&d) = position.get(dep.as_str()) {
                dependents[d].push(i);
                waiting_on[i] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..plan.steps.len())
        .filter(|&i| waiting_on[i] == 0)
        .collect();
    ready.reverse(); // pop() takes them in plan order
                     // A step's output bytes are needed where it is an artifact or a dependent will run.
    let needs_bytes: Vec<bool> = (0..plan.steps.len())
        .map(|i| {
            plan.steps[i].step.artifacts()
                || dependents[i]
                    .iter()
                    .any(|&d| plan.steps[d].action == Action::Run)
        })
        .collect();
    let mut uploads = Uploads {
        remote: options.remote.clone().filter(|r| r.pushes()),
        store: store.clone(),
        observer: observer.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(PUSHES_AT_ONCE)),
        running: JoinSet::new(),
    };
    let mut report = ApplyReport::default();
    let mut outputs: HashMap<usize, Digest> = HashMap::new();
    let mut finished: HashSet<usize> = HashSet::new();
    let mut running: JoinSet<(usize, Outcome)> = JoinSet::new();
    let mut stopping = false;
    let step_cancel = options.cancel.child_token();

    loop {
        while !stopping && running.len() < jobs {
            let Some(i) = ready.pop() else { break };
            let planned = &plan.steps[i];
            let upstream: BTreeMap<String, Digest> = planned
                .depends_on
                .iter()
                .map(|d| (d.clone(), outputs[&position[d.as_str()]]))
                .collect();
            let inputs = KeyInputs::new(planned.step.as_ref(), &planned.resolved, upstream.clone());
            // What the plan found cached is still cached: no store access, no task (unless
            // the output is only in the remote store and its bytes are needed).
            if let (Some(record), Action::Cached) = (&planned.record, planned.action) {
                if Some(inputs.key()) == planned.key && !(planned.remote && needs_bytes[i]) {
                    uploads.start(&planned.id, record.key);
                    observer.event(&Event::StepCached {
                        id: planned.id.clone(),
                        cutoff: false,
                    });
                    finished.insert(i);
                    report.cached.push(planned.id.clone());
                    report.outputs.insert(planned.id.clone(), record.output);
                    report.keys.insert(planned.id.clone(), record.key);
                    outputs.insert(i, record.output);
                    release_dependents(i, &dependents, &mut waiting_on, &mut ready);
                    continue;
                }
            }
            let task = StepTask {
                store: store.clone(),
                observer: observer.clone(),
                step: planned.step.clone(),
                inputs,
                upstream_paths: upstream
                    .iter()
                    .map(|(id, d)| (id.clone(), store.tree_path(d)))
                    .collect(),
                upstream,
                expected_run: planned.action == Action::Run,
                namespace: plan.namespace.clone(),
                recipe_dir: plan.recipe_dir.clone(),
                redact: planned.redact.clone(),
                cancel: step_cancel.clone(),
                remote: options.remote.clone(),
                needs_bytes: needs_bytes[i],
            };
            running.spawn(async move { (i, task.run().await) });
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            joined = running.join_next() => joined,
            _ = options.cancel.cancelled(), if !stopping => {
                stopping = true;
                observer.event(&Event::Cancelling);
                report.cancelled = true;
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (i, outcome) = match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        };
        finished.insert(i);
        let id = plan.steps[i].id.clone();
        match outcome {
            Outcome::Cached(key, digest) | Outcome::Ran(key, digest) => {
                uploads.start(&id, key);
                report.keys.insert(id.clone(), key);
                if matches!(outcome, Outcome::Cached(..)) {
                    report.cached.push(id.clone());
                } else {
                    report.ran.push(id.clone());
                }
                report.outputs.insert(id, digest);
                outputs.insert(i, digest);
                release_dependents(i, &dependents, &mut waiting_on, &mut ready);
            }
            Outcome::Failed(error) => {
                report.failed.push((id.clone(), error));
                if !options.keep_going {
                    stopping = true;
                }
                skip_dependents(
                    plan,
                    i,
                    &dependents,
                    &mut finished,
                    &mut report,
                    &*observer,
                    &id,
                );
            }
            Outcome::Cancelled => {
                report.cancelled = true;
                stopping = true;
            }
        }
    }
    // Uploads finish before apply returns, unless it was stopped: a stopped upload leaves
    // nothing a reader would trust (its entry is written last).
    if report.cancelled {
        uploads.running.abort_all();
    }
    while uploads.running.join_next().await.is_some() {}
    for (i, step) in plan.steps.iter().enumerate() {
        if !finished.contains(&i) {
            let because = if report.cancelled {
                "apply was stopped".to_string()
            } else {
                "an earlier step failed".to_string()
            };
            observer.event(&Event::StepSkipped {
                id: step.id.clone(),
                because,
            });
            report.skipped.push(step.id.clone());
        }
    }
    Ok(report)
}

/// The uploads of an apply to the remote store: in the background, a few at a time.
struct Uploads {
    /// The remote store, if there is one that takes uploads.
    remote: Option<Arc<Remote>>,
    store: Store,
    observer: Arc<dyn Observer>,
    slots: Arc<tokio::sync::Semaphore>,
    running: JoinSet<()>,
}

impl Uploads {
    /// Upload the step with `key` if the local store has its record, which it has only with
    /// its output (a step found only in the remote store has none).
    fn start(&mut self, id: &str, key: Digest) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let Ok(Some(record)) = self.store.get_action(&key) else {
            return;
        };
        let (store, observer, slots, id) = (
            self.store.clone(),
            self.observer.clone(),
            self.slots.clone(),
            id.to_string(),
        );
        self.running.spawn(async move {
            let _slot = slots
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let clock = Instant::now();
            match remote.push(&store, &record).await {
                Ok(Pushed::Uploaded { bytes }) => observer.event(&Event::StepPushed {
                    id,
                    bytes,
                    duration: clock.elapsed(),
                }),
                Ok(Pushed::Already) => {}
                Err(error) => {
                    remote.note_failure(&error);
                    observer.event(&Event::PushFailed {
                        id,
                        error: describe(&error),
                    });
                }
            }
        });
    }
}

/// Mark step `i` done for its dependents; those with nothing left to wait for become ready,
/// taken in plan order.
fn release_dependents(
    i: usize,
    dependents: &[Vec<usize>],
    waiting_on: &mut [usize],
    ready: &mut Vec<usize>,
) {
    for &d in &dependents[i] {
        waiting_on[d] -= 1;
        if waiting_on[d] == 0 {
            ready.push(d);
        }
    }
    ready.sort_by(|a, b| b.cmp(a));
}

fn skip_dependents(
    plan: &Plan,
    failed: usize,
    dependents: &[Vec<usize>],
    finished: &mut HashSet<usize>,
    report: &mut ApplyReport,
    observer: &dyn Observer,
    failed_id: &str,
) {
    let mut stack = dependents[failed].clone();
    while let Some(d) = stack.pop() {
        if finished.insert(d) {
            let id = plan.steps[d].id.clone();
            observer.event(&Event::StepSkipped {
                id: id.clone(),
                because: format!("`{failed_id}` failed"),
            });
            report.skipped.push(id);
            stack.extend(dependents[d].iter().copied());
        }
    }
}

/// Everything one step's task owns.
struct StepTask {
    store: Store,
    observer: Arc<dyn Observer>,
    step: Arc<dyn crate::steps::Step>,
    inputs: KeyInputs,
    upstream_paths: BTreeMap<String, PathBuf>,
    /// Upstream outputs by step id.
    upstream: BTreeMap<String, Digest>,
    expected_run: bool,
    namespace: String,
    recipe_dir: PathBuf,
    redact: Arc<Vec<String>>,
    cancel: CancellationToken,
    remote: Option<Arc<Remote>>,
    /// Whether the output's bytes must be local (a remote hit is then downloaded).
    needs_bytes: bool,
}

impl StepTask {
    async fn run(self) -> Outcome {
        let id = self.step.id().to_string();
        match self.run_inner().await {
            Ok(outcome) => outcome,
            Err(error) => {
                self.observer.event(&Event::StepFailed {
                    id,
                    error: error.to_string(),
                    log: None,
                    tail: Vec::new(),
                });
                Outcome::Failed(error.to_string())
            }
        }
    }

    async fn run_inner(&self) -> Result<Outcome, StoreError> {
        let id = self.step.id().to_string();
        let key = self.inputs.key();
        if let Some(record) = self.store.get_action(&key)? {
            self.record_ref(&record)?;
            self.observer.event(&Event::StepCached {
                id,
                cutoff: self.expected_run,
            });
            return Ok(Outcome::Cached(key, record.output));
        }
        if let Some(outcome) = self.look_in_remote(&key).await? {
            return Ok(outcome);
        }
        // One builder per key: another apply on this store may be building it right now.
        let store = self.store.clone();
        let lock = tokio::task::spawn_blocking(move || store.lock_key(&key))
            .await
            .expect("the lock task does not panic")?;
        if let Some(record) = self.store.get_action(&key)? {
            self.record_ref(&record)?;
            self.observer
                .event(&Event::StepCached { id, cutoff: false });
            return Ok(Outcome::Cached(key, record.output));
        }
        self.fetch_upstream().await?;
        let staging = self.store.stage()?;
        self.observer.event(&Event::StepStarted {
            id: id.clone(),
            kind: self.step.kind().to_string(),
        });
        let started = jiff::Timestamp::now();
        let clock = Instant::now();
        let observer = self.observer.clone();
        let line_id = id.clone();
        let ctx = RunContext {
            out: staging.out.clone(),
            scratch: staging.scratch.clone(),
            log: staging.log.clone(),
            upstream: self.upstream_paths.clone(),
            recipe_dir: self.recipe_dir.clone(),
            cache: self.store.cache_dir(),
            redact: self.redact.clone(),
            cancel: self.cancel.clone(),
            on_line: Arc::new(move |line: &str| {
                observer.event(&Event::StepOutput {
                    id: line_id.clone(),
                    line: line.to_string(),
                })
            }),
        };
        let result = self.step.run(ctx).await;
        if result.is_err() {
            // A killed command may leave mounts behind (debootstrap mounts /proc in its target).
            crate::steps::chroot::unmount_below(&staging.dir);
        }
        let log_path = self.store.log_path(&self.namespace, &id);
        let log_bytes = std::fs::read(&staging.log).unwrap_or_default();
        // The latest log of the step, also of a failed run, for `vmbuild log`.
        let _ = write_atomically(&log_path, &log_bytes);
        match result {
            Err(StepError::Cancelled) => {
                self.observer.event(&Event::StepSkipped {
                    id,
                    because: "apply was stopped".into(),
                });
                return Ok(Outcome::Cancelled);
            }
            Err(error) => {
                let text = String::from_utf8_lossy(&log_bytes);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(FAILURE_TAIL_LINES)..]
                    .iter()
                    .map(|l| l.to_string())
                    .collect();
                self.observer.event(&Event::StepFailed {
                    id,
                    error: error.to_string(),
                    log: Some(log_path),
                    tail,
                });
                return Ok(Outcome::Failed(error.to_string()));
            }
            Ok(()) => {}
        }
        let store = self.store.clone();
        let output = tokio::task::spawn_blocking(move || store.commit_tree(staging))
            .await
            .expect("the commit task does not panic")?;
        let log = if log_bytes.is_empty() {
            None
        } else {
            Some(self.store.put_blob(&log_bytes)?)
        };
        let record = ActionRecord {
            key,
            namespace: self.namespace.clone(),
            step_id: id.clone(),
            kind: self.step.kind().to_string(),
            output,
            log,
            started,
            finished: jiff::Timestamp::now(),
            tools: self.inputs.tools.clone(),
            key_inputs: serde_json::to_value(&self.inputs).expect("key inputs serialize"),
        };
        self.store.put_action(&record)?;
        self.store.put_ref(&record)?;
        drop(lock);
        self.observer.event(&Event::StepFinished {
            id,
            duration: clock.elapsed(),
            output,
        });
        Ok(Outcome::Ran(key, output))
    }

    /// The step found in the remote store: cached, downloaded first if its bytes are needed.
    /// A copy that cannot be used (corrupt, unreachable) is reported and the step is built.
    async fn look_in_remote(&self, key: &Digest) -> Result<Option<Outcome>, StoreError> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let id = self.step.id().to_string();
        let entry = match remote.lookup(key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(None),
            Err(error) => {
                remote.note_failure(&error);
                return Ok(None);
            }
        };
        let output = entry.record.output;
        if self.needs_bytes {
            let clock = Instant::now();
            if let Err(error) = remote.fetch(&self.store, &output).await {
                remote.note_failure(&error);
                self.observer.event(&Event::RemoteUnusable {
                    id,
                    error: describe(&error),
                });
                return Ok(None);
            }
            self.observer.event(&Event::StepFetched {
                id: id.clone(),
                duration: clock.elapsed(),
                output,
            });
        }
        self.record_ref(&entry.record)?;
        self.observer.event(&Event::StepCached {
            id,
            cutoff: self.expected_run,
        });
        Ok(Some(Outcome::Cached(*key, output)))
    }

    /// Download the upstream outputs that are only in the remote store.
    async fn fetch_upstream(&self) -> Result<(), StoreError> {
        for (upstream, digest) in &self.upstream {
            if self.store.has_tree(digest) {
                continue;
            }
            let fetched = match &self.remote {
                Some(remote) => remote.fetch(&self.store, digest).await,
                None => continue,
            };
            if let Err(error) = fetched {
                return Err(StoreError::io(
                    "download the output of",
                    std::path::Path::new(upstream),
                    std::io::Error::other(describe(&error)),
                ));
            }
        }
        Ok(())
    }

    /// Point the step's ref at `record` if it does not already.
    fn record_ref(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let current = self.store.get_ref(&self.namespace, self.step.id())?;
        if current.as_ref().map(|r| r.key) != Some(record.key) || record.namespace != self.namespace
        {
            let mut mine = record.clone();
            mine.namespace = self.namespace.clone();
            mine.step_id = self.step.id().to_string();
            self.store.put_ref(&mine)?;
        }
        Ok(())
    }
}

/// Write a file by renaming a temporary sibling into place.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

//! From a recipe to a plan: the step graph (petgraph), every step's key, and for each step
//! whether the store already has its output (`cached`) or it must `run`, and why.
//!
//! Planning reads the recipe, local inputs and the store; it never runs a recipe's commands.

mod compile;
mod key;
mod module;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

pub use key::{changes, Change, KeyInputs};

use crate::diag::{Diagnostic, Diagnostics};
use crate::hash::Digest;
use crate::recipe::{Fetched, Recipe};
use crate::remote::Remote;
use crate::steps::{ResolveContext, Resolved, Step};
use crate::store::{ActionRecord, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Run,
    Cached,
}

/// Why a step must run.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The store has never had an output for this step.
    NoOutput,
    /// The last build of this step had the same key, but its output is gone (gc, repair).
    OutputMissing,
    /// What differs from the last build.
    Changed(Vec<Change>),
    /// The step runs on every apply, for this reason.
    AlwaysRuns(&'static str),
    /// Another step of the plan is the same step (a module's step in another instance): it is
    /// built once, and this one is found cached after it.
    SameAs(String),
    /// Upstream steps will run first; the key is known only once their outputs are.
    Pending {
        upstream: Vec<String>,
        changes: Vec<Change>,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoOutput => f.write_str("no output yet"),
            Reason::OutputMissing => f.write_str("its output is no longer in the store"),
            Reason::Changed(changes) if changes.is_empty() => {
                f.write_str("not built with these inputs before")
            }
            Reason::Changed(changes) => {
                let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                f.write_str(&text.join(", "))
            }
            Reason::AlwaysRuns(why) => f.write_str(why),
            Reason::SameAs(first) => write!(f, "the same step as `{first}`: built once, after it"),
            Reason::Pending { upstream, changes } => {
                let names: Vec<String> = upstream.iter().map(|u| format!("`{u}`")).collect();
                let mut text = format!("after {} runs", names.join(", "));
                if changes.is_empty() {
                    text.push_str("; cached if its output comes out the same");
                } else {
                    let own: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                    text.push_str(&format!("; {}", own.join(", ")));
                }
                f.write_str(&text)
            }
        }
    }
}

/// One step of a plan.
pub struct PlannedStep {
    pub id: String,
    pub kind: &'static str,
    pub depends_on: Vec<String>,
    pub step: Arc<dyn Step>,
    pub resolved: Resolved,
    /// Known when every upstream step is cached.
    pub key: Option<Digest>,
    pub own_digest: Digest,
    pub action: Action,
    pub reason: Option<Reason>,
    /// The record the key matched, for cached steps.
    pub record: Option<ActionRecord>,
    /// The record is the remote store's: the output is there, not (yet) in the local store.
    pub remote: bool,
    /// Secret values the step handles, to blank out of its log.
    pub redact: Arc<Vec<String>>,
    /// An earlier step of the plan that is this very step (same kind, own inputs and upstream
    /// steps): this one waits for it and is then found cached.
    pub same_as: Option<String>,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Recipe(#[from] Diagnostics),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The step graph of a recipe, with a status for every step.
pub struct Plan {
    pub recipe_path: PathBuf,
    pub recipe_dir: PathBuf,
    pub namespace: String,
    /// What the recipe's `data` blocks fetched.
    pub data: Vec<Fetched>,
    /// In a topological order: every step after the steps it depends on.
    pub steps: Vec<PlannedStep>,
    pub graph: DiGraph<String, ()>,
}

/// A topological order that keeps the recipe's order wherever dependencies allow (Kahn's
/// algorithm, always taking the earliest ready node), so plans read like their recipes.
/// On a cycle, returns a node on it.
fn topological_order(graph: &DiGraph<String, ()>) -> Result<Vec<NodeIndex>, NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| {
            graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = indegree
        .iter()
        .enumerate()
        .filter(|(_, &d)| d == 0)
        .map(|(i, _)| Reverse(i))
        .collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(Reverse(i)) = ready.pop() {
        let node = NodeIndex::new(i);
        order.push(node);
        for next in graph.neighbors_directed(node, petgraph::Direction::Outgoing) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse(next.index()));
            }
        }
    }
    match indegree.iter().position(|&d| d > 0) {
        Some(i) => Err(NodeIndex::new(i)),
        None => Ok(order),
    }
}

impl Plan {
    /// Compile, resolve and compare with the store.
    pub fn build(recipe: &Recipe, store: &Store) -> Result<Plan, PlanError> {
        Plan::build_with_remote(recipe, store, None)
    }

    /// [`Plan::build`], also looking in a remote store for what the local store misses. A
    /// remote that cannot be reached is a miss: its failures are noted on it.
    pub fn build_with_remote(
        recipe: &Recipe,
        store: &Store,
        remote: Option<&Remote>,
    ) -> Result<Plan, PlanError> {
        let compiled = compile::compile(recipe)?;
        let namespace = Store::namespace(&recipe.path);
        let mut graph: DiGraph<String, ()> = DiGraph::new();
        let nodes: HashMap<String, NodeIndex> = compiled
            .iter()
            .map(|(s, _)| (s.id().to_string(), graph.add_node(s.id().to_string())))
            .collect();
        for (step, _) in &compiled {
            for dep in step.depends_on() {
                graph.add_edge(nodes[dep.as_str()], nodes[step.id()], ());
            }
        }
        let order = topological_order(&graph).map_err(|node| {
            let mut d = Diagnostics {
                sources: recipe.sources.clone(),
                items: vec![],
            };
            d.push(Diagnostic::error(format!(
                "steps form a cycle through `{}`",
                graph[node]
            )));
            PlanError::Recipe(d)
        })?;
        let mut by_id: HashMap<String, compile::Compiled> = compiled
            .into_iter()
            .map(|(s, r)| (s.id().to_string(), (s, r)))
            .collect();

        let ctx = ResolveContext::with_store(&recipe.dir, store.cache_dir(), store.secret_key()?);
        let mut diagnostics = Diagnostics {
            sources: recipe.sources.clone(),
            items: vec![],
        };
        let mut steps: Vec<PlannedStep> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        type Signature = (&'static str, Digest, Vec<(String, String)>);
        let mut seen: HashMap<Signature, String> = HashMap::new();
        for node in order {
            let id = graph[node].clone();
            let (step, redact) = by_id.remove(&id).expect("every node is a compiled step");
            let resolved = match step.resolve(&ctx) {
                Ok(r) => r,
                Err(d) => {
                    diagnostics.push(d);
                    continue;
                }
            };
            // Upstream outputs: known for cached upstream steps, pending for the others.
            let mut upstream = BTreeMap::new();
            let mut pending = Vec::new();
            for dep in step.depends_on() {
                match index.get(dep).map(|&i| &steps[i]) {
                    Some(PlannedStep {
                        record: Some(record),
                        action: Action::Cached,
                        ..
                    }) => {
                        upstream.insert(dep.clone(), record.output);
                    }
                    _ => pending.push(dep.clone()),
                }
            }
            let inputs = KeyInputs::new(step.as_ref(), &resolved, upstream);
            let own_digest = inputs.own_digest();
            // The last build of this step is read only to explain a miss: a null plan reads
            // one record per step, nothing more.
            let last_build = || -> Result<_, StoreError> {
                let last = store.get_ref(&namespace, &id)?;
                let inputs: Option<KeyInputs> = last
                    .as_ref()
                    .and_then(|r| serde_json::from_value(r.key_inputs.clone()).ok());
                Ok((last, inputs))
            };
            let mut from_remote = false;
            let (key, action, reason, record) = if let Some(why) = step.always_runs() {
                let key = pending.is_empty().then(|| inputs.key());
                (key, Action::Run, Some(Reason::AlwaysRuns(why)), None)
            } else if pending.is_empty() {
                let key = inputs.key();
                let found = match store.get_action(&key)? {
                    Some(record) => Some(record),
                    None => remote.and_then(|remote| {
                        let entry = remote.lookup_or_note(&key)?;
                        from_remote = true;
                        Some(entry.record)
                    }),
                };
                match found {
                    Some(record) => (Some(key), Action::Cached, None, Some(record)),
                    None => {
                        let (last, last_inputs) = last_build()?;
                        let reason = match (&last, &last_inputs) {
                            (Some(last), _) if last.key == key => Reason::OutputMissing,
                            (Some(_), Some(before)) => {
                                Reason::Changed(changes(before, &inputs, true))
                            }
                            _ => Reason::NoOutput,
                        };
                        (Some(key), Action::Run, Some(reason), None)
                    }
                }
            } else {
                let (last, last_inputs) = last_build()?;
                let own_changes = last_inputs
                    .as_ref()
                    .map(|before| changes(before, &inputs, false))
                    .unwrap_or_default();
                let reason = if last.is_none() {
                    Reason::NoOutput
                } else {
                    Reason::Pending {
                        upstream: pending,
                        changes: own_changes,
                    }
                };
                (None, Action::Run, Some(reason), None)
            };
            // The same step as an earlier one: same kind and own inputs, and upstream steps that
            // are the same, under the same names.
            let mut upstream_steps: Vec<(String, String)> = step
                .depends_on()
                .iter()
                .map(|d| {
                    let canonical = index
                        .get(d)
                        .and_then(|&i| steps[i].same_as.clone())
                        .unwrap_or_else(|| d.clone());
                    (step.upstream_name(d).to_string(), canonical)
                })
                .collect();
            upstream_steps.sort();
            let signature = (step.kind(), own_digest, upstream_steps);
            let same_as = match seen.get(&signature) {
                Some(first) => Some(first.clone()),
                None => {
                    seen.insert(signature, id.clone());
                    None
                }
            };
            let reason = match (&same_as, action) {
                (Some(first), Action::Run) => Some(Reason::SameAs(first.clone())),
                _ => reason,
            };
            index.insert(id.clone(), steps.len());
            steps.push(PlannedStep {
                id,
                kind: step.kind(),
                depends_on: step.depends_on().to_vec(),
                step,
                resolved,
                key,
                own_digest,
                action,
                reason,
                record,
                remote: from_remote,
                redact: Arc::new(redact),
                same_as,
            });
        }
        if diagnostics.has_errors() {
            return Err(PlanError::Recipe(diagnostics));
        }
        Ok(Plan {
            recipe_path: recipe.path.clone(),
            recipe_dir: recipe.dir.clone(),
            namespace,
            data: recipe.all_fetched(),
            steps,
            graph,
        })
    }

    /// Keep only `targets` and the steps they depend on (`apply --target`), and the steps that
    /// check a kept artifact (the leak scan) with what they depend on. Returns the first
    /// target the plan does not have, if any.
    pub fn retain_targets(&mut self, targets: &[String]) -> Result<(), String> {
        if targets.is_empty() {
            return Ok(());
        }
        let mut keep: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut todo: Vec<String> = Vec::new();
        for target in targets {
            if self.get(target).is_none() {
                return Err(target.clone());
            }
            todo.push(target.clone());
        }
        loop {
            while let Some(id) = todo.pop() {
                if keep.insert(id.clone()) {
                    if let Some(step) = self.get(&id) {
                        todo.extend(step.depends_on.iter().cloned());
                    }
                }
            }
            // A kept artifact is exported only once the steps that check it have passed.
            let checks = self.steps.iter().filter(|s| {
                !keep.contains(&s.id)
                    && s.step.checks_artifacts()
                    && s.depends_on.iter().any(|d| {
                        keep.contains(d) && self.get(d).is_some_and(|d| d.step.artifacts())
                    })
            });
            todo.extend(checks.map(|s| s.id.clone()));
            if todo.is_empty() {
                break;
            }
        }
        self.steps.retain(|s| keep.contains(&s.id));
        self.graph
            .retain_nodes(|graph, node| keep.contains(&graph[node]));
        Ok(())
    }

    pub fn to_run(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action == Action::Run)
            .count()
    }

    pub fn get(&self, id: &str) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The plan as data: what `--format json` prints and `--out` saves.
    pub fn summary(&self, variables: BTreeMap<String, serde_json::Value>) -> PlanSummary {
        PlanSummary {
            vmbuild_plan: 1,
            recipe: self.recipe_path.display().to_string(),
            variables,
            data: self.data.clone(),
            steps: self
                .steps
                .iter()
                .map(|s| StepSummary {
                    id: s.id.clone(),
                    kind: s.kind.to_string(),
                    key: s.key,
                    own_digest: s.own_digest,
                    action: s.action,
                    remote: s.remote,
                    reason: s.reason.as_ref().map(|r| r.to_string()),
                    changes: match &s.reason {
                        Some(Reason::Changed(c)) => c.clone(),
                        Some(Reason::Pending { changes, .. }) => changes.clone(),
                        _ => vec![],
                    },
                    depends_on: s.depends_on.clone(),
                    details: s.step.details(),
                })
                .collect(),
            run: self.to_run(),
            cached: self.steps.len() - self.to_run(),
        }
    }
}

/// The serializable form of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanSummary {
    /// Format version of a saved plan.
    pub vmbuild_plan: u32,
    pub recipe: String,
    /// Non-sensitive variable values the plan was made with.
    pub variables: BTreeMap<String, serde_json::Value>,
    /// What the recipe's `data` blocks fetched (a saved plan applies only to the same answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<Fetched>,
    pub steps: Vec<StepSummary>,
    pub run: usize,
    pub cached: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSummary {
    pub id: String,
    pub kind: String,
    pub key: Option<Digest>,
    /// Digest of the step's own inputs (everything but upstream outputs).
    pub own_digest: Digest,
    pub action: Action,
    /// Cached in the remote store (not in the local one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
    pub reason: Option<String>,
    #[serde(default, skip_deserializing)]
    pub changes: Vec<Change>,
    pub depends_on: Vec<String>,
    /// What the step resolved at plan time, for people (a database's schema allowlist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl PlanSummary {
    /// Why a saved plan no longer matches a fresh plan of the same recipe, if it does not.
    pub fn staleness(&self, now: &PlanSummary) -> Option<String> {
        // A data block's answer first: it explains the steps' changes that follow from it, and
        // a changed answer is refused even where no step's inputs changed (a sensitive value
        // taken from it enters keys by identity only).
        for old in &self.data {
            if !now.data.iter().any(|d| d.id == old.id) {
                return Some(format!("`{}` is no longer in the recipe", old.id));
            }
        }
        for fetched in &now.data {
            match self.data.iter().find(|d| d.id == fetched.id) {
                None => return Some(format!("`{}` was added to the recipe", fetched.id)),
                Some(old) if old.digest != fetched.digest => {
                    return Some(format!(
                        "`{}` answered differently (blake3 {} when planned, {} now)",
                        fetched.id,
                        old.digest.short(),
                        fetched.digest.short()
                    ))
                }
                Some(_) => {}
            }
        }
        let before: HashMap<&str, &StepSummary> =
            self.steps.iter().map(|s| (s.id.as_str(), s)).collect();
        let after: HashMap<&str, &StepSummary> =
            now.steps.iter().map(|s| (s.id.as_str(), s)).collect();
        for id in before.keys() {
            if !after.contains_key(id) {
                return Some(format!("`{id}` is no longer in the recipe"));
            }
        }
        for step in &now.steps {
            let Some(old) = before.get(step.id.as_str()) else {
                return Some(format!("`{}` was added to the recipe", step.id));
            };
            if old.own_digest != step.own_digest {
                return Some(format!("the inputs of `{}` changed", step.id));
            }
            if let (Some(a), Some(b)) = (old.key, step.key) {
                if a != b {
                    return Some(format!(
                        "the output of a step `{}` depends on changed",
                        step.id
                    ));
                }
            }
        }
        None
    }
}

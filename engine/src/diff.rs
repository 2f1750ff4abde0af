//! What changed between two builds: `vmbuild diff`, from two build manifests (the
//! `manifest.json` of an output folder, or the builds the store keeps of a recipe).
//!
//! It answers "six months between assemblies, what has changed?": the recipe's variables, each
//! source's commit and the commits between the two, each database's allowlist, fingerprint and
//! rows per table, the image's packages, file trees, artifacts, and every other step whose
//! parameters changed. Reading the commits between two revisions may fetch from the source's
//! repository (commits and trees only); everything else is in the manifests, and file trees'
//! listings are read from the store when it still has them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::exec::export::{Manifest, ManifestStep};
use crate::hash::Digest;
use crate::steps::source::git;
use crate::store::Store;

/// How many commits a source's log shows.
const LOG_LIMIT: usize = 30;
/// How many files a file tree's change lists, per kind of change.
const FILES_LIMIT: usize = 20;

/// A value before and after; `None` where it did not exist.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change<T> {
    pub name: String,
    pub before: Option<T>,
    pub after: Option<T>,
}

/// What the log between two commits could say.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Log {
    /// Newest first, at most a page of them, and how many there are in all.
    Commits { lines: Vec<String>, total: usize },
    /// Why there is none.
    Unavailable(String),
    /// Not asked for (`--no-log`).
    NotRead,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceChange {
    pub step: String,
    pub git: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub log: Log,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatabaseChange {
    pub step: String,
    pub schemas_added: Vec<String>,
    pub schemas_removed: Vec<String>,
    /// The fingerprint query's result, by digest (the result itself is in neither manifest).
    pub fingerprint: Option<Change<String>>,
    /// `schema.table` → rows, where they differ.
    pub tables: Vec<Change<i64>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct FilesChange {
    pub step: String,
    pub count: Option<Change<u64>>,
    pub bytes: Option<Change<u64>>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Files in each list beyond what is shown.
    pub more: usize,
    /// Why the file lists are missing, when they are.
    pub listing: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StepChange {
    Added,
    Removed,
    /// The parameters that differ, as dotted paths.
    Parameters(Vec<String>),
    /// Same parameters, other inputs (local files) or tools.
    Inputs(Vec<String>),
}

/// Everything that differs between two builds.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct BuildDiff {
    pub before: String,
    pub after: String,
    pub variables: Vec<Change<serde_json::Value>>,
    pub sources: Vec<SourceChange>,
    pub databases: Vec<DatabaseChange>,
    pub files: Vec<FilesChange>,
    pub packages: Vec<Change<String>>,
    pub artifacts: Vec<Change<String>>,
    pub steps: Vec<(String, StepChange)>,
}

impl BuildDiff {
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty()
            && self.sources.is_empty()
            && self.databases.is_empty()
            && self.files.is_empty()
            && self.packages.is_empty()
            && self.artifacts.is_empty()
            && self.steps.is_empty()
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("cannot read `{path}`")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a vmbuild build manifest")]
    NotAManifest {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Read a manifest: a `manifest.json`, or an output folder holding one.
pub fn read_manifest(path: &Path) -> Result<Manifest, DiffError> {
    let file = if path.is_dir() {
        path.join("manifest.json")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|source| DiffError::Read {
        path: file.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| DiffError::NotAManifest { path: file, source })
}

/// Options of a diff.
pub struct DiffOptions<'a> {
    /// Read the commits between two revisions of each source.
    pub read_logs: bool,
    /// Where file trees' listings may still be.
    pub store: Option<&'a Store>,
}

/// Compare two builds.
pub fn diff(before: &Manifest, after: &Manifest, options: &DiffOptions) -> BuildDiff {
    let mut result = BuildDiff {
        before: format!("{} ({})", before.recipe, before.finished),
        after: format!("{} ({})", after.recipe, after.finished),
        ..BuildDiff::default()
    };
    result.variables = changed_map(&before.variables, &after.variables);
    result.packages = changed_map(&before.packages, &after.packages);
    result.artifacts = changed_map(&before.artifacts, &after.artifacts);

    let old: BTreeMap<&str, &ManifestStep> =
        before.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let new: BTreeMap<&str, &ManifestStep> =
        after.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let ids: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    for id in ids {
        let (a, b) = (old.get(id).copied(), new.get(id).copied());
        let kind = b.or(a).map(|s| s.kind.as_str()).unwrap_or_default();
        match kind {
            "source" => {
                if let Some(change) = source_change(id, a, b, after, options) {
                    result.sources.push(change);
                }
            }
            "pg_dump" | "oracle_dump" => {
                if let Some(change) = database_change(id, a, b) {
                    result.databases.push(change);
                }
            }
            "pg_load" => {
                if let Some(change) = load_change(id, a, b) {
                    result.databases.push(change);
                }
            }
            "files" => {
                if let Some(change) = files_change(id, a, b, options.store) {
                    result.files.push(change);
                }
            }
            _ => {}
        }
        let step_change = match (a, b) {
            (None, Some(_)) => Some(StepChange::Added),
            (Some(_), None) => Some(StepChange::Removed),
            (Some(a), Some(b)) => {
                let mut paths = Vec::new();
                json_differences("", &a.params, &b.params, &mut paths);
                if !paths.is_empty() {
                    Some(StepChange::Parameters(paths))
                } else {
                    let mut inputs: Vec<String> = changed_map(&a.inputs, &b.inputs)
                        .into_iter()
                        .map(|c| format!("input {}", c.name))
                        .collect();
                    inputs.extend(
                        changed_map(&a.tools, &b.tools)
                            .into_iter()
                            .map(|c| format!("tool {}", c.name)),
                    );
                    (!inputs.is_empty()).then_some(StepChange::Inputs(inputs))
                }
            }
            (None, None) => None,
        };
        if let Some(change) = step_change {
            result.steps.push((id.to_string(), change));
        }
    }
    result
}

/// The keys whose values differ between two maps.
fn changed_map<T: Clone + PartialEq>(
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
) -> Vec<Change<T>> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| Change {
            name: k.clone(),
            before: before.get(k).cloned(),
            after: after.get(k).cloned(),
        })
        .collect()
}

/// Dotted paths where two JSON values differ.
fn json_differences(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => json_differences(&child, x, y, out),
                    _ => out.push(child),
                }
            }
        }
        _ if a != b => out.push(if path.is_empty() {
            "(all)".into()
        } else {
            path.to_string()
        }),
        _ => {}
    }
}

fn text_param(step: Option<&ManifestStep>, key: &str) -> Option<String> {
    step?.params.get(key)?.as_str().map(str::to_string)
}

fn source_change(
    id: &str,
    a: Option<&ManifestStep>,
    b: Option<&ManifestStep>,
    after: &Manifest,
    options: &DiffOptions,
) -> Option<SourceChange> {
    let (before_commit, after_commit) = (text_param(a, "commit"), text_param(b, "commit"));
    if before_commit == after_commit {
        return None;
    }
    let shown_git = b
        .or(a)
        .and_then(|s| s.params.get("git"))
        .map(|g| match g {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    let log = match (&before_commit, &after_commit) {
        (Some(x), Some(y)) if options.read_logs => {
            let dir = after
                .recipe_dir
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from("."));
            match git::log_between(&git::locate(&shown_git, &dir), x, y, LOG_LIMIT) {
                Ok((lines, total)) => Log::Commits { lines, total },
                Err(why) => Log::Unavailable(why),
            }
        }
        (Some(_), Some(_)) => Log::NotRead,
        _ => Log::NotRead,
    };
    Some(SourceChange {
        step: id.to_string(),
        git: shown_git,
        before: before_commit,
        after: after_commit,
        log,
    })
}

/// A dump's schemas (params) and rows (report).
fn dump_facts(
    step: Option<&ManifestStep>,
) -> (BTreeSet<String>, Option<String>, BTreeMap<String, i64>) {
    let Some(step) = step else {
        return Default::default();
    };
    let schemas = step.params["schemas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let fingerprint = step.params["fingerprint"]["rows"]
        .as_str()
        .map(str::to_string);
    let rows = step
        .report
        .as_ref()
        .and_then(|r| r.get("rows"))
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default();
    (schemas, fingerprint, rows)
}

fn database_change(
    id: &str,
    a: Option<&ManifestStep>,
    b: Option<&ManifestStep>,
) -> Option<DatabaseChange> {
    let (schemas_a, fingerprint_a, rows_a) = dump_facts(a);
    let (schemas_b, fingerprint_b, rows_b) = dump_facts(b);
    let change = DatabaseChange {
        step: id.to_string(),
        schemas_added: schemas_b.difference(&schemas_a).cloned().collect(),
        schemas_removed: schemas_a.difference(&schemas_b).cloned().collect(),
        fingerprint: (fingerprint_a != fingerprint_b).then(|| Change {
            name: "fingerprint".into(),
            before: fingerprint_a,
            after: fingerprint_b,
        }),
        tables: changed_map(&rows_a, &rows_b),
    };
    let unchanged = change.schemas_added.is_empty()
        && change.schemas_removed.is_empty()
        && change.fingerprint.is_none()
        && change.tables.is_empty();
    (!unchanged).then_some(change)
}

/// The load's rows per table in the clone, for databases made by `init` (cloned ones are
/// compared through their dumps).
fn load_change(
    id: &str,
    a: Option<&ManifestStep>,
    b: Option<&ManifestStep>,
) -> Option<DatabaseChange> {
    let rows = |step: Option<&ManifestStep>| -> BTreeMap<String, i64> {
        let mut rows = BTreeMap::new();
        let Some(databases) = step
            .and_then(|s| s.report.as_ref())
            .and_then(|r| r.get("databases"))
            .and_then(|d| d.as_object())
        else {
            return rows;
        };
        for (name, database) in databases {
            if database["from"] != "init" {
                continue;
            }
            for (table, n) in database["rows"].as_object().into_iter().flatten() {
                if let Some(n) = n["clone"].as_i64() {
                    rows.insert(format!("{name}: {table}"), n);
                }
            }
        }
        rows
    };
    let tables = changed_map(&rows(a), &rows(b));
    (!tables.is_empty()).then(|| DatabaseChange {
        step: id.to_string(),
        schemas_added: vec![],
        schemas_removed: vec![],
        fingerprint: None,
        tables,
    })
}

/// A file tree's listing (`files.tsv` in its output: path, then fields) from the store.
fn listing(
    store: Option<&Store>,
    output: Option<Digest>,
) -> Result<BTreeMap<String, String>, String> {
    let (Some(store), Some(output)) = (store, output) else {
        return Err("no store to read the listing from".into());
    };
    let path = store.tree_path(&output).join("files.tsv");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| "the build's file listing is no longer in the store".to_string())?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once('\t')?;
            Some((name.to_string(), rest.to_string()))
        })
        .collect())
}

fn files_change(
    id: &str,
    a: Option<&ManifestStep>,
    b: Option<&ManifestStep>,
    store: Option<&Store>,
) -> Option<FilesChange> {
    if a.map(|s| s.output) == b.map(|s| s.output) {
        return None;
    }
    let number = |s: Option<&ManifestStep>, key: &str| {
        s.and_then(|s| s.report.as_ref())
            .and_then(|r| r.get(key))
            .and_then(|v| v.as_u64())
    };
    let pair = |key: &str| {
        let (x, y) = (number(a, key), number(b, key));
        (x != y).then(|| Change {
            name: key.into(),
            before: x,
            after: y,
        })
    };
    let mut change = FilesChange {
        step: id.to_string(),
        count: pair("count"),
        bytes: pair("bytes"),
        ..FilesChange::default()
    };
    match (
        listing(store, a.and_then(|s| s.output)),
        listing(store, b.and_then(|s| s.output)),
    ) {
        (Ok(x), Ok(y)) => {
            for c in changed_map(&x, &y) {
                let list = match (&c.before, &c.after) {
                    (None, Some(_)) => &mut change.added,
                    (Some(_), None) => &mut change.removed,
                    _ => &mut change.changed,
                };
                if list.len() < FILES_LIMIT {
                    list.push(c.name);
                } else {
                    change.more += 1;
                }
            }
        }
        (Err(why), _) | (_, Err(why)) => change.listing = Some(why),
    }
    Some(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_of_differences() {
        let a = serde_json::json!({"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": true});
        let b = serde_json::json!({"a": 1, "b": {"c": [1, 3], "d": "x"}, "new": 0});
        let mut out = Vec::new();
        json_differences("", &a, &b, &mut out);
        assert_eq!(out, ["b.c", "gone", "new"]);
    }
}

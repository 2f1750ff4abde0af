//! After apply: the artifacts (disk images) copied out of the store into the recipe's output
//! folder, with a `SHA256SUMS` file and a build `manifest.json` recording every step key, every
//! resolved input, the tools used and the image's installed packages.
//!
//! Artifacts are copied (sparse, by reflink where the file system allows), never linked: a user
//! who boots `site.qcow2` writes into it, and that must not change the store. An artifact whose
//! store output is unchanged since the last export is not copied again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::ApplyReport;
use crate::hash::Digest;
use crate::plan::Plan;
use crate::remote::Remote;
use crate::store::Store;

/// The name of the file, in an output step's tree, holding SHA-256 digests of its artifacts.
pub const SHA256SUMS: &str = "SHA256SUMS";
/// The file, in a step's output, with what the step reports of its run for the manifest.
pub const STEP_REPORT: &str = "report.json";
/// What the export folder remembers of the last export, to skip unchanged copies.
const EXPORT_STATE: &str = ".vmbuild-export.json";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("after exporting `{step}`: {source}")]
    Step {
        step: String,
        #[source]
        source: crate::steps::StepError,
    },
    #[error("keeping the build's manifest in the store")]
    Store(#[source] crate::store::StoreError),
    #[error("copying `{from}` to `{to}` failed: {detail}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        detail: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io {
        action,
        path,
        source,
    }
}

/// One step in the manifest.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestStep {
    pub id: String,
    pub kind: String,
    pub key: Option<Digest>,
    pub output: Option<Digest>,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, Digest>,
    pub tools: BTreeMap<String, String>,
    /// What the step reported of its run (`report.json` in its output): a database dump's
    /// schemas and row counts, a load's rows per table, source against clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// What a build was made of: enough for `vmbuild diff` to say what changed between two.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub vmbuild: String,
    pub recipe: String,
    /// The recipe's folder, absolute: where its relative paths (a local git repository) lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_dir: Option<PathBuf>,
    pub finished: jiff::Timestamp,
    pub variables: BTreeMap<String, serde_json::Value>,
    pub steps: Vec<ManifestStep>,
    /// Installed packages of the image: name → version.
    pub packages: BTreeMap<String, String>,
    /// Artifact file → SHA-256.
    pub artifacts: BTreeMap<String, String>,
}

/// What was exported.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub copied: Vec<String>,
    pub unchanged: Vec<String>,
    /// What steps did after the copy (a libvirt domain written and defined).
    pub notes: Vec<String>,
}

/// Copy the artifacts of `plan` out of `store` into `dir`, with `SHA256SUMS` and `manifest.json`.
/// Does nothing when the plan has no artifact steps.
pub fn export(
    plan: &Plan,
    report: &ApplyReport,
    store: &Store,
    dir: &Path,
    variables: BTreeMap<String, serde_json::Value>,
    libvirt_uri: Option<&str>,
    remote: Option<&Remote>,
) -> Result<Option<ExportReport>, ExportError> {
    let artifact_steps: Vec<_> = plan.steps.iter().filter(|s| s.step.artifacts()).collect();
    if artifact_steps.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let state_path = dir.join(EXPORT_STATE);
    let mut state: BTreeMap<String, Digest> = std::fs::read(&state_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut result = ExportReport {
        dir: dir.to_path_buf(),
        ..ExportReport::default()
    };
    // Artifact file → SHA-256, per folder (the output folder, or a module instance's in it).
    let mut sums: BTreeMap<Option<String>, BTreeMap<String, String>> = BTreeMap::new();
    for step in artifact_steps {
        let Some(output) = report.outputs.get(&step.id) else {
            continue;
        };
        let folder = step.step.export_folder();
        let target = match &folder {
            Some(folder) => dir.join(folder),
            None => dir.to_path_buf(),
        };
        std::fs::create_dir_all(&target).map_err(io("create", &target))?;
        let shown = |name: &str| match &folder {
            Some(folder) => format!("{folder}/{name}"),
            None => name.to_string(),
        };
        let tree = store.tree_path(output);
        let entries = std::fs::read_dir(&tree).map_err(io("list", &tree))?;
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        for name in names {
            let from = tree.join(&name);
            if name == SHA256SUMS {
                let text = std::fs::read_to_string(&from).map_err(io("read", &from))?;
                for line in text.lines() {
                    if let Some((digest, file)) = line.split_once("  ") {
                        sums.entry(folder.clone())
                            .or_default()
                            .insert(file.to_string(), digest.to_string());
                    }
                }
                continue;
            }
            let to = target.join(&name);
            let state_name = shown(&name);
            if state.get(&state_name) == Some(output) && to.exists() {
                result.unchanged.push(state_name);
                continue;
            }
            copy_sparse(&from, &to)?;
            state.insert(state_name.clone(), *output);
            result.copied.push(state_name);
        }
        let notes = step
            .step
            .after_export(&target, libvirt_uri)
            .map_err(|source| ExportError::Step {
                step: step.id.clone(),
                source,
            })?;
        result.notes.extend(notes);
    }
    let mut artifacts = BTreeMap::new();
    for (folder, files) in &sums {
        let target = match folder {
            Some(folder) => dir.join(folder),
            None => dir.to_path_buf(),
        };
        let text: String = files
            .iter()
            .map(|(file, digest)| format!("{digest}  {file}\n"))
            .collect();
        let path = target.join(SHA256SUMS);
        std::fs::write(&path, text).map_err(io("write", &path))?;
        for (file, digest) in files {
            let name = match folder {
                Some(folder) => format!("{folder}/{file}"),
                None => file.clone(),
            };
            artifacts.insert(name, digest.clone());
        }
    }
    let manifest = Manifest {
        vmbuild: env!("CARGO_PKG_VERSION").to_string(),
        recipe: plan.recipe_path.display().to_string(),
        recipe_dir: std::fs::canonicalize(&plan.recipe_dir).ok(),
        finished: jiff::Timestamp::now(),
        variables,
        steps: plan
            .steps
            .iter()
            .map(|s| ManifestStep {
                id: s.id.clone(),
                kind: s.kind.to_string(),
                key: report.keys.get(&s.id).copied(),
                output: report.outputs.get(&s.id).copied(),
                params: s.step.params(),
                inputs: s.resolved.inputs.clone(),
                tools: s.resolved.tools.clone(),
                report: report.outputs.get(&s.id).and_then(|output| {
                    let bytes = tree_file(store, remote, output, STEP_REPORT)?;
                    serde_json::from_slice(&bytes).ok()
                }),
            })
            .collect(),
        packages: packages(plan, report, store, remote),
        artifacts,
    };
    let manifest_path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes") + "\n";
    std::fs::write(&manifest_path, &text).map_err(io("write", &manifest_path))?;
    store
        .record_build(&plan.namespace, manifest.finished, text.as_bytes())
        .map_err(ExportError::Store)?;
    let state_text = serde_json::to_string_pretty(&state).expect("export state serializes");
    std::fs::write(&state_path, state_text).map_err(io("write", &state_path))?;
    Ok(Some(result))
}

/// The package list the disk step recorded, if the plan has one.
fn packages(
    plan: &Plan,
    report: &ApplyReport,
    store: &Store,
    remote: Option<&Remote>,
) -> BTreeMap<String, String> {
    plan.steps
        .iter()
        .filter(|s| s.kind == "disk")
        .filter_map(|s| report.outputs.get(&s.id))
        .filter_map(|d| tree_file(store, remote, d, "packages.txt"))
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    l.split_once('\t')
                        .map(|(p, v)| (p.to_string(), v.to_string()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A top-level file of output `tree`: from the local store, or, for an output that stayed in
/// the remote store, from the entry that carries its small files.
fn tree_file(store: &Store, remote: Option<&Remote>, tree: &Digest, name: &str) -> Option<Vec<u8>> {
    std::fs::read(store.tree_path(tree).join(name))
        .ok()
        .or_else(|| remote?.entry_file(tree, name))
}

/// Copy a file keeping holes, by reflink where possible, replacing what is at `to`.
fn copy_sparse(from: &Path, to: &Path) -> Result<(), ExportError> {
    let _ = std::fs::remove_file(to);
    let output = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(io("run cp for", from))?;
    if !output.status.success() {
        return Err(ExportError::Copy {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    // Store files are read-only by convention; the user's copy is theirs to write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))
        .map_err(io("chmod", to))?;
    Ok(())
}

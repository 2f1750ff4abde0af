//! Composing layers onto a root tree: each layer is a committed step output placed at a path in
//! the VM, copied over the tree in graph order. The template's files may be overwritten by any
//! layer, but two layers writing the same file is an error naming both, unless the later one
//! declares that it `replaces` the earlier. A layer may also replace folders of the template
//! wholesale (a database cluster's data directory, whose files must not mix with the
//! template's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::tree::overlay_tree;
use super::{io_error, StepError};

/// A layer to put into the VM.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Layer {
    /// The step that produced it.
    pub id: String,
    /// Where its output goes in the VM (an absolute path).
    pub into: String,
    /// Layers whose files it may overwrite.
    pub replaces: Vec<String>,
    /// The folder of the step's output that is the layer, when not the whole output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// VM folders removed from the tree before this layer goes on: the layer's own copy
    /// replaces them wholesale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wholesale: Vec<String>,
}

impl Layer {
    /// A layer of a whole step output, placed at `into`.
    pub fn new(id: impl Into<String>, into: impl Into<String>, replaces: Vec<String>) -> Layer {
        Layer {
            id: id.into(),
            into: into.into(),
            replaces,
            from: None,
            wholesale: Vec::new(),
        }
    }

    /// The layer's files within its step's output folder `output`.
    pub fn content(&self, output: &Path) -> PathBuf {
        match &self.from {
            Some(from) => output.join(from),
            None => output.to_path_buf(),
        }
    }
}

/// Two layers that write the same file, neither replacing the other.
#[derive(Debug, thiserror::Error)]
#[error("`{second}` and `{first}` both write `{path}`; say which wins with `replaces = [\"{first}\"]` in `{second}`")]
pub struct Conflict {
    pub first: String,
    pub second: String,
    pub path: String,
}

/// Every file (not directory) under `dir`, as VM paths under `into`.
fn files_of(dir: &Path, into: &str) -> Result<Vec<String>, StepError> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| StepError::Io {
            action: "walk",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        out.push(format!(
            "{}/{}",
            into.trim_end_matches('/'),
            relative.display()
        ));
    }
    Ok(out)
}

/// Check that no two layers write the same file without one replacing the other.
pub fn check_conflicts(layers: &[(Layer, PathBuf)]) -> Result<(), StepError> {
    let mut owner: BTreeMap<String, &Layer> = BTreeMap::new();
    for (layer, dir) in layers {
        for path in files_of(&layer.content(dir), &layer.into)? {
            if let Some(first) = owner.get(&path) {
                if !layer.replaces.contains(&first.id) {
                    return Err(StepError::Unmet(
                        Conflict {
                            first: first.id.clone(),
                            second: layer.id.clone(),
                            path,
                        }
                        .to_string(),
                    ));
                }
            }
            owner.insert(path, layer);
        }
    }
    Ok(())
}

/// Copy each layer over `root` in order, replacing files rather than writing into them, so a
/// `root` made of hard links to the store never changes the store.
pub fn compose(root: &Path, layers: &[(Layer, PathBuf)]) -> Result<(), StepError> {
    check_conflicts(layers)?;
    for (layer, dir) in layers {
        for folder in &layer.wholesale {
            let replaced = root.join(folder.trim_start_matches('/'));
            if replaced.symlink_metadata().is_ok() {
                // Unlinking in a tree of hard links to the store leaves the store as it is.
                std::fs::remove_dir_all(&replaced).map_err(io_error("remove", &replaced))?;
            }
        }
        let target = root.join(layer.into.trim_start_matches('/'));
        std::fs::create_dir_all(&target).map_err(io_error("create", &target))?;
        overlay_tree(&layer.content(dir), &target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(id: &str, into: &str, replaces: &[&str]) -> Layer {
        Layer::new(id, into, replaces.iter().map(|s| s.to_string()).collect())
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn layers_compose_in_order_and_shared_folders_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let (root, a, b) = (
            dir.path().join("root"),
            dir.path().join("a"),
            dir.path().join("b"),
        );
        write(&root, "etc/motd", "template");
        write(&a, "etc/motd", "from a");
        write(&a, "etc/a.conf", "a");
        write(&b, "b.conf", "b");
        compose(
            &root,
            &[
                (layer("step.a", "/", &[]), a),
                (layer("step.b", "/etc", &[]), b),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            "from a"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/b.conf")).unwrap(),
            "b"
        );
    }

    #[test]
    fn two_layers_writing_one_file_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&a, "srv/site.conf", "a");
        write(&b, "site.conf", "b");
        let layers = [
            (layer("step.a", "/", &[]), a.clone()),
            (layer("step.b", "/srv", &[]), b.clone()),
        ];
        let error = check_conflicts(&layers).unwrap_err().to_string();
        assert!(
            error.contains("`step.b` and `step.a` both write `/srv/site.conf`"),
            "{error}"
        );
        let layers = [
            (layer("step.a", "/", &[]), a),
            (layer("step.b", "/srv", &["step.a"]), b),
        ];
        check_conflicts(&layers).unwrap();
    }

    #[test]
    fn a_wholesale_layer_replaces_a_folder_and_reads_its_subfolder() {
        let dir = tempfile::tempdir().unwrap();
        let (root, out) = (dir.path().join("root"), dir.path().join("out"));
        write(&root, "var/lib/postgresql/15/main/base/1/template", "t");
        write(&root, "var/lib/postgresql/15/main/PG_VERSION", "15");
        write(
            &out,
            "root/var/lib/postgresql/15/main/PG_VERSION",
            "15 loaded",
        );
        write(&out, "report.json", "{}");
        let mut loaded = layer("database.load", "/", &[]);
        loaded.from = Some("root".into());
        loaded.wholesale = vec!["/var/lib/postgresql".into()];
        compose(&root, &[(loaded, out)]).unwrap();
        assert!(!root.join("var/lib/postgresql/15/main/base").exists());
        assert!(!root.join("report.json").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("var/lib/postgresql/15/main/PG_VERSION")).unwrap(),
            "15 loaded"
        );
    }
}

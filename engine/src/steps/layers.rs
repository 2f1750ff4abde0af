//! Composing layers onto a root tree: each layer is a committed step output placed at a path in
//! the VM, copied over the tree in graph order. The template's files may be overwritten by any
//! layer, but two layers writing the same file is an error naming both, unless the later one
//! declares that it `replaces` the earlier.

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
        for path in files_of(dir, &layer.into)? {
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
        let target = root.join(layer.into.trim_start_matches('/'));
        std::fs::create_dir_all(&target).map_err(io_error("create", &target))?;
        overlay_tree(dir, &target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(id: &str, into: &str, replaces: &[&str]) -> Layer {
        Layer {
            id: id.into(),
            into: into.into(),
            replaces: replaces.iter().map(|s| s.to_string()).collect(),
        }
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
}

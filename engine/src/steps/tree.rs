//! Copying file trees between the store and a step's output, preserving owners, modes,
//! hard links, symlinks, device nodes and extended attributes (`cp -a`), by reflink where the
//! file system allows, by hard link where nothing will write to the copy.

use std::path::Path;
use std::process::Command;

use super::StepError;

/// Copy the contents of `from` into `to` (which exists), as a full copy: safe to modify.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), StepError> {
    cp(&["-a", "--reflink=auto"], from, to)
}

/// Make `to` a copy of `from` whose files are hard links to `from`'s: instant, but nothing may
/// write into those files. Replace a file with [`replace_file`] instead of writing into it.
pub fn link_tree(from: &Path, to: &Path) -> Result<(), StepError> {
    cp(&["-a", "-l"], from, to)
}

/// Copy `from`'s contents over `to`, replacing (not writing into) files that exist there, so a
/// hard-linked `to` never changes what it links to.
pub fn overlay_tree(from: &Path, to: &Path) -> Result<(), StepError> {
    cp(&["-a", "--reflink=auto", "--remove-destination"], from, to)
}

fn cp(flags: &[&str], from: &Path, to: &Path) -> Result<(), StepError> {
    let source = format!("{}/.", from.display());
    let output = Command::new("cp")
        .args(flags)
        .arg(&source)
        .arg(to)
        .output()
        .map_err(|source| StepError::Spawn {
            program: "cp".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(StepError::Failed {
            program: format!("cp {}", flags.join(" ")),
            status: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Write `bytes` at `path` as a new file (removing what was there first), so that a hard link
/// at `path` is replaced rather than written through.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StepError::Io {
            action: "create",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StepError::Io {
                action: "remove",
                path: path.to_path_buf(),
                source,
            })
        }
    }
    std::fs::write(path, bytes).map_err(|source| StepError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replace_file_never_writes_through_a_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("a");
        std::fs::write(&original, "store").unwrap();
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::rename(&original, dir.path().join("src/a")).unwrap();
        link_tree(&dir.path().join("src"), &copy).unwrap();
        let linked = copy.join("a");
        assert_eq!(
            std::fs::metadata(&linked).unwrap().ino(),
            std::fs::metadata(dir.path().join("src/a")).unwrap().ino()
        );
        replace_file(&linked, b"new").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("src/a")).unwrap(),
            "store"
        );
        assert_eq!(std::fs::read_to_string(&linked).unwrap(), "new");
    }
}

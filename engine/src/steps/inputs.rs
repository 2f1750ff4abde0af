//! Local files a step reads, hashed for its key: globs, single files and whole folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSetBuilder};

use crate::hash::Digest;

pub fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path)?;
    Ok(hasher.finalize().into())
}

/// Files under `root` matching `pattern`, as (relative path, full path), sorted. Only the part
/// of the tree below the pattern's literal prefix is walked.
pub fn glob_files(root: &Path, pattern: &str) -> Result<Vec<(String, PathBuf)>, std::io::Error> {
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let set = GlobSetBuilder::new()
        .add(glob)
        .build()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let literal: Vec<&str> = pattern
        .split('/')
        .take_while(|part| !part.contains(['*', '?', '[', '{']))
        .collect();
    // The last literal part may be the file itself.
    let mut start = root.to_path_buf();
    for part in &literal {
        let next = start.join(part);
        if next.is_dir() {
            start = next;
        } else {
            break;
        }
    }
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(&start).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(relative) = entry.path().strip_prefix(root) else {
            continue;
        };
        let relative = relative.to_string_lossy().to_string();
        if set.is_match(&relative) {
            found.push((relative, entry.path().to_path_buf()));
        }
    }
    found.sort();
    Ok(found)
}

/// The digests of a file, or of every file under a folder, keyed by their paths relative to
/// `root` (a folder's files are walked in sorted order).
pub fn hash_path(root: &Path, relative: &str) -> std::io::Result<BTreeMap<String, Digest>> {
    let full = root.join(relative);
    let mut out = BTreeMap::new();
    if full.is_dir() {
        for entry in walkdir::WalkDir::new(&full).sort_by_file_name() {
            let entry = entry.map_err(std::io::Error::other)?;
            if entry.file_type().is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap_or(entry.path())
                    .to_string_lossy()
                    .to_string();
                out.insert(rel, hash_file(entry.path())?);
            }
        }
    } else {
        out.insert(relative.to_string(), hash_file(&full)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_walk_only_below_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("files/sub")).unwrap();
        std::fs::write(dir.path().join("files/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("files/b.bin"), "b").unwrap();
        std::fs::write(dir.path().join("files/sub/c.txt"), "c").unwrap();
        std::fs::write(dir.path().join("top.txt"), "t").unwrap();
        let names = |p| {
            glob_files(dir.path(), p)
                .unwrap()
                .into_iter()
                .map(|(r, _)| r)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("files/*.txt"), vec!["files/a.txt"]);
        assert_eq!(
            names("files/**/*.txt"),
            vec!["files/a.txt", "files/sub/c.txt"]
        );
        assert_eq!(names("top.txt"), vec!["top.txt"]);
        assert!(names("nothing/*.txt").is_empty());
    }

    #[test]
    fn a_folder_hashes_every_file_in_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mods/a")).unwrap();
        std::fs::write(dir.path().join("mods/a/init.pp"), "class a {}").unwrap();
        std::fs::write(dir.path().join("mods/b.pp"), "class b {}").unwrap();
        let map = hash_path(dir.path(), "mods").unwrap();
        assert_eq!(
            map.keys().collect::<Vec<_>>(),
            ["mods/a/init.pp", "mods/b.pp"]
        );
        assert!(hash_path(dir.path(), "missing").is_err());
    }
}

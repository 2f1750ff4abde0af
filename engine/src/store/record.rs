//! Small files of the store: blobs, action records and refs, all written atomically (a temporary
//! file in `tmp/`, fsync, rename, fsync of the folder).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::tree::sync_dir;
use super::{random_name, ActionRecord, IoContext, Store, StoreError};
use crate::hash::Digest;

impl Store {
    /// Write `bytes` to `dest` so that `dest` is either absent, its old content, or `bytes`
    /// whole, whenever the process or the machine stops. Creates the parent folder.
    pub(super) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let parent = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).ctx("create the folder", parent)?;
        let tmp = self.tmp_dir().join(format!("{}.part", random_name()));
        let written = File::create(&tmp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", &tmp, e));
        }
        if let Err(e) = fs::rename(&tmp, dest) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("move a new file to", dest, e));
        }
        sync_dir(parent)
    }

    /// Write `bytes` to `dest` (mode 0600) unless another writer got there first: a rename
    /// that never replaces, so two applies starting at once agree on one file.
    pub(super) fn write_private_once(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.tmp_dir().join(format!("{}.part", random_name()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", &tmp, e));
        }
        // A hard link fails if `dest` exists: the first writer wins, whole.
        let linked = fs::hard_link(&tmp, dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(dest.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(StoreError::io("create", dest, e)),
        }
    }

    /// Store `bytes` as `blobs/<blake3 of bytes>` (once); returns the digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of_bytes(bytes);
        let path = self.blob_path(&digest);
        if !path.is_file() {
            self.write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// The bytes of blob `digest`, or `None` if the store does not have it.
    pub fn get_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(digest);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read the blob", &path, e)),
        }
    }

    /// The record for `key`, if there is one and the tree it names is in the store.
    pub fn get_action(&self, key: &Digest) -> Result<Option<ActionRecord>, StoreError> {
        let Some(record) = read_record(&self.action_path(key))? else {
            return Ok(None);
        };
        if !self.has_tree(&record.output) {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Write the record of a step run. Commit its output tree (and log blob) first: a record is
    /// trusted only along with the tree it names.
    pub fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.write_atomic(&self.action_path(&record.key), &record_json(record))
    }

    /// Every action record in the store, whether or not its tree is still there.
    pub fn list_actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        let mut records = Vec::new();
        for path in self.action_files()? {
            if let Some(record) = read_record(&path)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The last record committed for `step_id` of recipe namespace `ns`.
    pub fn get_ref(&self, ns: &str, step_id: &str) -> Result<Option<ActionRecord>, StoreError> {
        read_record(&self.ref_path(ns, step_id))
    }

    /// Make `record` the last one of its step (`refs/<namespace>/<step_id>.json`).
    pub fn put_ref(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let path = self.ref_path(&record.namespace, &record.step_id);
        self.write_atomic(&path, &record_json(record))
    }

    /// The paths of every file under `actions/<aa>/`, sorted.
    pub(super) fn action_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::new();
        for dir in sorted_entries(&self.root.join("actions"))? {
            if dir.is_dir() {
                files.extend(sorted_entries(&dir)?);
            }
        }
        Ok(files)
    }

    /// The paths of every file under `refs/<ns>/`, sorted.
    pub(super) fn ref_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::new();
        for dir in sorted_entries(&self.root.join("refs"))? {
            if dir.is_dir() {
                files.extend(sorted_entries(&dir)?);
            }
        }
        Ok(files)
    }
}

fn record_json(record: &ActionRecord) -> Vec<u8> {
    // An ActionRecord is plain data (strings, digests, timestamps, JSON values) with string map
    // keys: serializing it cannot fail.
    let mut json = serde_json::to_vec_pretty(record).expect("an action record serializes to JSON");
    json.push(b'\n');
    json
}

/// Read and parse a record (or ref) file; `None` if it does not exist.
pub(super) fn read_record(path: &Path) -> Result<Option<ActionRecord>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read the action record", path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StoreError::CorruptRecord {
            path: path.to_path_buf(),
            source,
        })
}

/// The entries of folder `dir`, sorted by name; none if it does not exist.
pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    let mut entries = Vec::new();
    for entry in read {
        entries.push(entry.ctx("list", dir)?.path());
    }
    entries.sort();
    Ok(entries)
}

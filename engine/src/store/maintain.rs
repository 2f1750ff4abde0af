//! Store maintenance: `verify` (rehash every object, check every record, optionally repair) and
//! `gc` (keep what is named or recent, remove the rest).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::record::{read_record, sorted_entries};
use super::tree::{hash_file, remove_all, tree_digest};
use super::{describe, ActionRecord, GcReport, Problem, Store, StoreError, VerifyReport};
use crate::hash::Digest;

/// The digest a store object's file name spells, if it spells one.
fn digest_name(path: &Path) -> Option<Digest> {
    path.file_name()?.to_str()?.parse().ok()
}

/// The key an action record's file name (`<key>.json`) spells, if it spells one.
fn record_name(path: &Path) -> Option<Digest> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".json")?.parse().ok()
}

/// The size of a file, 0 if it cannot be read.
fn file_size(path: &Path) -> u64 {
    fs::symlink_metadata(path).map_or(0, |m| if m.is_file() { m.len() } else { 0 })
}

struct Checker {
    repair: bool,
    report: VerifyReport,
}

impl Checker {
    fn problem(&mut self, path: &Path, what: impl Into<String>) {
        self.report.problems.push(Problem {
            path: path.to_path_buf(),
            what: what.into(),
        });
    }
}

impl Store {
    /// Rehash every tree and blob and check every action record and ref.
    ///
    /// Each mismatch is reported as a [`Problem`]. With `repair`, corrupt trees and blobs, stray
    /// entries, unreadable records and records that name a missing or corrupt object are
    /// removed (objects are moved out of their name first, so a crash never leaves half of one).
    /// Trees that cannot be read at all are reported but not removed.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, StoreError> {
        let mut check = Checker {
            repair,
            report: VerifyReport::default(),
        };
        let bad_trees = self.verify_trees(&mut check)?;
        let bad_blobs = self.verify_blobs(&mut check)?;
        self.verify_records(&mut check, &bad_trees, &bad_blobs)?;
        self.verify_refs(&mut check)?;
        Ok(check.report)
    }

    fn verify_trees(&self, check: &mut Checker) -> Result<BTreeSet<Digest>, StoreError> {
        let mut bad = BTreeSet::new();
        for path in sorted_entries(&self.root.join("trees"))? {
            let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            let Some(expected) = digest_name(&path).filter(|_| is_dir) else {
                check.problem(&path, "not a tree (a folder named by its digest)");
                if check.repair {
                    self.discard(&path)?;
                }
                continue;
            };
            check.report.trees += 1;
            match tree_digest(&path) {
                Ok(actual) if actual == expected => {}
                Ok(actual) => {
                    check.problem(&path, format!("its content has digest {actual}"));
                    bad.insert(expected);
                    if check.repair {
                        self.discard(&path)?;
                    }
                }
                Err(e) => {
                    check.problem(&path, format!("cannot be hashed: {}", describe(&e)));
                    bad.insert(expected);
                }
            }
        }
        Ok(bad)
    }

    fn verify_blobs(&self, check: &mut Checker) -> Result<BTreeSet<Digest>, StoreError> {
        let mut bad = BTreeSet::new();
        for path in sorted_entries(&self.root.join("blobs"))? {
            let is_file = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            let Some(expected) = digest_name(&path).filter(|_| is_file) else {
                check.problem(&path, "not a blob (a file named by its digest)");
                if check.repair {
                    self.discard(&path)?;
                }
                continue;
            };
            check.report.blobs += 1;
            match hash_file(&path) {
                Ok(actual) if actual == expected => {}
                Ok(actual) => {
                    check.problem(&path, format!("its content has digest {actual}"));
                    bad.insert(expected);
                    if check.repair {
                        remove_all(&path)?;
                    }
                }
                Err(e) => {
                    check.problem(&path, format!("cannot be hashed: {}", describe(&e)));
                    bad.insert(expected);
                }
            }
        }
        Ok(bad)
    }

    fn verify_records(
        &self,
        check: &mut Checker,
        bad_trees: &BTreeSet<Digest>,
        bad_blobs: &BTreeSet<Digest>,
    ) -> Result<(), StoreError> {
        for path in self.action_files()? {
            let Some(name) = record_name(&path) else {
                check.problem(&path, "not an action record (`<key>.json`)");
                if check.repair {
                    self.discard(&path)?;
                }
                continue;
            };
            check.report.records += 1;
            let record = match read_record(&path) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(StoreError::CorruptRecord { source, .. }) => {
                    check.problem(&path, format!("does not parse: {source}"));
                    if check.repair {
                        remove_all(&path)?;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(what) = self.record_fault(&record, name, &path, bad_trees, bad_blobs) {
                check.problem(&path, what);
                if check.repair {
                    remove_all(&path)?;
                }
            }
        }
        Ok(())
    }

    /// What is wrong with a parsed record, if anything.
    fn record_fault(
        &self,
        record: &ActionRecord,
        name: Digest,
        path: &Path,
        bad_trees: &BTreeSet<Digest>,
        bad_blobs: &BTreeSet<Digest>,
    ) -> Option<String> {
        if record.key != name || self.action_path(&record.key) != path {
            return Some(format!("holds the record of key {}", record.key));
        }
        if bad_trees.contains(&record.output) {
            return Some(format!("names tree {}, which is corrupt", record.output));
        }
        if !self.has_tree(&record.output) {
            return Some(format!("names tree {}, which is missing", record.output));
        }
        if let Some(log) = record.log {
            if bad_blobs.contains(&log) {
                return Some(format!("names log blob {log}, which is corrupt"));
            }
            if !self.blob_path(&log).is_file() {
                return Some(format!("names log blob {log}, which is missing"));
            }
        }
        None
    }

    fn verify_refs(&self, check: &mut Checker) -> Result<(), StoreError> {
        for path in self.ref_files()? {
            match read_record(&path) {
                Ok(_) => {}
                Err(StoreError::CorruptRecord { source, .. }) => {
                    check.problem(&path, format!("does not parse: {source}"));
                    if check.repair {
                        remove_all(&path)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Remove what is no longer needed. **The caller must hold [`Store::lock_exclusive`]**
    /// (otherwise this returns [`StoreError::GcWithoutLock`]): gc removes every staging folder,
    /// which is safe only while no apply (holding the shared lock) runs.
    ///
    /// Records kept: those whose key is in `keep`, and the `keep_last` most recent (by
    /// `finished`) of each step of each recipe namespace. All other records go, then every tree
    /// and blob no kept record names, everything under `tmp/`, and the unheld key lock files.
    /// Unreadable records and refs are removed too; refs otherwise stay (they explain misses).
    pub fn gc(&self, keep: &BTreeSet<Digest>, keep_last: usize) -> Result<GcReport, StoreError> {
        if !self.exclusive_lock_held()? {
            return Err(StoreError::GcWithoutLock {
                path: self.root.clone(),
            });
        }
        let mut report = GcReport::default();

        // Records, and what they keep alive.
        let mut records: Vec<(PathBuf, Option<ActionRecord>)> = Vec::new();
        for path in self.action_files()? {
            match read_record(&path) {
                Ok(Some(record)) => records.push((path, Some(record))),
                Ok(None) => {}
                Err(StoreError::CorruptRecord { .. }) => records.push((path, None)),
                Err(e) => return Err(e),
            }
        }
        let kept = kept_keys(
            keep,
            keep_last,
            records.iter().filter_map(|(_, record)| record.as_ref()),
        );
        let mut live_trees = BTreeSet::new();
        let mut live_blobs = BTreeSet::new();
        for (path, record) in &records {
            match record {
                Some(record) if kept.contains(&record.key) => {
                    report.records_kept += 1;
                    live_trees.insert(record.output);
                    live_blobs.extend(record.log);
                }
                _ => {
                    report.bytes_freed += remove_all(path)?;
                    report.records_removed += 1;
                }
            }
        }
        for dir in sorted_entries(&self.root.join("actions"))? {
            // Only empty folders go; a folder still holding records stays.
            let _ = fs::remove_dir(&dir);
        }

        // Objects no kept record names.
        for path in sorted_entries(&self.root.join("trees"))? {
            let live = digest_name(&path).is_some_and(|d| live_trees.contains(&d))
                && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if !live {
                report.bytes_freed += self.discard(&path)?;
                report.trees_removed += 1;
            }
        }
        for path in sorted_entries(&self.root.join("blobs"))? {
            let live = digest_name(&path).is_some_and(|d| live_blobs.contains(&d));
            if !live {
                report.bytes_freed += self.discard(&path)?;
                report.blobs_removed += 1;
            }
        }

        // Staging areas and leftovers: no apply runs while we hold the exclusive lock.
        for path in sorted_entries(&self.tmp_dir())? {
            report.bytes_freed += remove_all(&path)?;
        }

        // Key locks nobody holds.
        for path in sorted_entries(&self.root.join("locks"))? {
            if path.extension().is_some_and(|ext| ext == "lock") {
                let size = file_size(&path);
                if self.remove_lock_if_free(&path)? {
                    report.bytes_freed += size;
                }
            }
        }

        // Unreadable refs. Refs whose record is gone stay: they hold only the key inputs of a
        // step's last build, which plan compares against to explain what changed.
        for path in self.ref_files()? {
            if let Err(StoreError::CorruptRecord { .. }) = read_record(&path) {
                report.bytes_freed += remove_all(&path)?;
            }
        }
        Ok(report)
    }
}

/// The keys of the records gc keeps: those in `keep`, and the `keep_last` most recent (by
/// `finished`) of each step of each recipe namespace. The remote store's gc keeps the same.
pub fn kept_keys<'a>(
    keep: &BTreeSet<Digest>,
    keep_last: usize,
    records: impl IntoIterator<Item = &'a ActionRecord>,
) -> BTreeSet<Digest> {
    let mut kept = keep.clone();
    let mut by_step: BTreeMap<(&str, &str), Vec<&ActionRecord>> = BTreeMap::new();
    for record in records {
        by_step
            .entry((&record.namespace, &record.step_id))
            .or_default()
            .push(record);
    }
    for runs in by_step.values_mut() {
        runs.sort_by(|a, b| b.finished.cmp(&a.finished).then(a.key.cmp(&b.key)));
        kept.extend(runs.iter().take(keep_last).map(|record| record.key));
    }
    kept
}

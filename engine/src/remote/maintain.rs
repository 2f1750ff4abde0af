//! Keeping the remote store sound: `store verify --remote` rehashes every object against the
//! entry or name that vouches for it, `gc --remote` removes what no kept entry needs, with the
//! local gc's keep rules, and never anything younger than a grace period, so that builders
//! uploading meanwhile (objects first, entry last) lose nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::{Entry, Remote, RemoteError, SignedEntry, ARCHIVE_SUFFIX};
use crate::hash::Digest;

/// One problem `store verify --remote` found.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteProblem {
    pub object: String,
    pub what: String,
}

/// What `store verify --remote` checked and found.
#[derive(Debug, Default, Serialize)]
pub struct RemoteVerifyReport {
    pub entries: usize,
    pub trees: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub problems: Vec<RemoteProblem>,
    /// Entries no key this builder trusts signed: their objects are not checked against them.
    pub untrusted: Vec<RemoteProblem>,
    /// Objects removed by `--repair`.
    pub removed: usize,
}

/// What `gc --remote` removed and kept.
#[derive(Debug, Default, Serialize)]
pub struct RemoteGcReport {
    pub entries_removed: usize,
    pub trees_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub entries_kept: usize,
    /// Unneeded objects left because they are younger than the grace period.
    pub young_kept: usize,
}

/// The folder an object is in, and the digest its name holds.
fn named_digest(path: &ObjectPath, folder: &str) -> Option<Digest> {
    let name = path.filename()?;
    let parent: Vec<_> = path.parts().collect();
    let in_folder = parent.len() >= 2 && parent[parent.len() - 2].as_ref() == folder;
    if !in_folder {
        return None;
    }
    let hex = match folder {
        "actions" => name.strip_suffix(".json")?,
        "trees" => name.strip_suffix(&format!(".{ARCHIVE_SUFFIX}"))?,
        _ => name,
    };
    hex.parse().ok()
}

impl Remote {
    /// Every object under `folder/` of the prefix.
    async fn list(&self, folder: &str) -> Result<Vec<ObjectMeta>, RemoteError> {
        let prefix = self.object(folder);
        self.check_up("list", &prefix)?;
        let mut listed = self.client.list(Some(&prefix));
        let mut objects = Vec::new();
        while let Some(meta) = listed.next().await {
            objects.push(meta.map_err(|e| self.failed("list", &prefix, e))?);
        }
        Ok(objects)
    }

    /// The blake3 and size of an object's bytes, streamed.
    async fn hash_object(&self, path: &ObjectPath) -> Result<Option<(Digest, u64)>, RemoteError> {
        self.check_up("read", path)?;
        let result = match self.client.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed("read", path, e)),
        };
        let mut hasher = blake3::Hasher::new();
        let mut size = 0;
        let mut stream = result.into_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| self.failed("read", path, e))?;
            hasher.update(&piece);
            size += piece.len() as u64;
        }
        Ok(Some((hasher.finalize().into(), size)))
    }

    async fn delete(&self, path: &ObjectPath) -> Result<(), RemoteError> {
        self.check_up("delete", path)?;
        match self.client.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", path, e)),
        }
    }

    /// Rehash every tree archive against the trusted entries that name it and every blob
    /// against its name; report entries whose objects are missing, and list apart the entries
    /// no trusted key signed (another team's builders, or forgeries: this builder cannot tell). With `repair`, remove corrupt objects and the entries that name missing or
    /// corrupt ones, so that builders rebuild them.
    pub async fn verify(&self, repair: bool) -> Result<RemoteVerifyReport, RemoteError> {
        let mut report = RemoteVerifyReport::default();
        let mut expected: BTreeMap<Digest, Vec<(ObjectPath, Entry)>> = BTreeMap::new();
        for meta in self.list("actions").await? {
            report.entries += 1;
            let Some(key) = named_digest(&meta.location, "actions") else {
                continue;
            };
            let Some(bytes) = self.get_small(&meta.location).await? else {
                continue;
            };
            match self.verify_entry(&key, &bytes) {
                Ok(entry) => expected
                    .entry(entry.record.output)
                    .or_default()
                    .push((meta.location.clone(), entry)),
                Err(why) => report.untrusted.push(RemoteProblem {
                    object: self.shown(&meta.location),
                    what: why,
                }),
            }
        }
        let mut bad_trees = BTreeSet::new();
        let trees = self.list("trees").await?;
        let present: BTreeSet<Digest> = trees
            .iter()
            .filter_map(|m| named_digest(&m.location, "trees"))
            .collect();
        for meta in &trees {
            report.trees += 1;
            report.bytes += meta.size;
            let Some(tree) = named_digest(&meta.location, "trees") else {
                continue;
            };
            let Some(entries) = expected.get(&tree) else {
                continue;
            };
            let Some((digest, size)) = self.hash_object(&meta.location).await? else {
                continue;
            };
            let archive = entries[0].1.archive;
            if digest != archive.digest || size != archive.size {
                report.problems.push(RemoteProblem {
                    object: self.shown(&meta.location),
                    what: format!(
                        "its bytes (blake3 {}…, {size} bytes) are not the entry's (blake3 {}…, {} bytes)",
                        digest.short(),
                        archive.digest.short(),
                        archive.size
                    ),
                });
                bad_trees.insert(tree);
                if repair {
                    self.delete(&meta.location).await?;
                    report.removed += 1;
                }
            }
        }
        for (tree, entries) in &expected {
            let missing = !present.contains(tree);
            if missing {
                for (path, _) in entries {
                    report.problems.push(RemoteProblem {
                        object: self.shown(path),
                        what: format!("names tree {}, which is missing", tree.short()),
                    });
                }
            }
            if repair && (missing || bad_trees.contains(tree)) {
                for (path, _) in entries {
                    self.delete(path).await?;
                    report.removed += 1;
                }
            }
        }
        for meta in self.list("blobs").await? {
            report.blobs += 1;
            report.bytes += meta.size;
            let Some(name) = named_digest(&meta.location, "blobs") else {
                continue;
            };
            if let Some((digest, _)) = self.hash_object(&meta.location).await? {
                if digest != name {
                    report.problems.push(RemoteProblem {
                        object: self.shown(&meta.location),
                        what: "its bytes are not the ones its name says".to_string(),
                    });
                    if repair {
                        self.delete(&meta.location).await?;
                        report.removed += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Remove the entries the keep rules do not keep (`keep`: the keys of the given recipes'
    /// plans; `keep_last`: the most recent builds of each step), then every tree and blob no
    /// remaining entry names. Nothing younger than `grace` is removed.
    pub async fn gc(
        &self,
        keep: &BTreeSet<Digest>,
        keep_last: usize,
        grace: Duration,
    ) -> Result<RemoteGcReport, RemoteError> {
        let mut report = RemoteGcReport::default();
        let now = jiff::Timestamp::now().as_millisecond();
        let young = |meta: &ObjectMeta| {
            let age = now - meta.last_modified.timestamp_millis();
            age < grace.as_millis() as i64
        };
        // Entries, read without checking signatures: gc keeps by key, whoever signed.
        let mut entries: Vec<(ObjectMeta, Option<Entry>)> = Vec::new();
        for meta in self.list("actions").await? {
            let entry = self
                .get_small(&meta.location)
                .await?
                .and_then(|bytes| serde_json::from_slice::<SignedEntry>(&bytes).ok())
                .and_then(|signed| serde_json::from_str::<Entry>(&signed.payload).ok());
            entries.push((meta, entry));
        }
        let kept = crate::store::kept_keys(
            keep,
            keep_last,
            entries
                .iter()
                .filter_map(|(_, e)| e.as_ref().map(|e| &e.record)),
        );
        let mut live_trees = BTreeSet::new();
        let mut live_blobs = BTreeSet::new();
        for (meta, entry) in &entries {
            let keep_it = entry.as_ref().is_some_and(|e| kept.contains(&e.record.key));
            if keep_it || young(meta) {
                if let Some(entry) = entry {
                    live_trees.insert(entry.record.output);
                    live_blobs.extend(entry.log.map(|l| l.digest));
                }
                if keep_it {
                    report.entries_kept += 1;
                } else {
                    report.young_kept += 1;
                }
                continue;
            }
            self.delete(&meta.location).await?;
            report.entries_removed += 1;
            report.bytes_freed += meta.size;
        }
        for (folder, live) in [("trees", &live_trees), ("blobs", &live_blobs)] {
            for meta in self.list(folder).await? {
                let needed =
                    named_digest(&meta.location, folder).is_some_and(|d| live.contains(&d));
                if needed {
                    continue;
                }
                if young(&meta) {
                    report.young_kept += 1;
                    continue;
                }
                self.delete(&meta.location).await?;
                report.bytes_freed += meta.size;
                if folder == "trees" {
                    report.trees_removed += 1;
                } else {
                    report.blobs_removed += 1;
                }
            }
        }
        Ok(report)
    }
}

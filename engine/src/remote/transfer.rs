//! Moving trees between the local store and the remote one: [`Remote::push`] uploads a
//! committed step (archive, log, then the signed entry), [`Remote::fetch`] downloads a tree
//! named by a trusted entry, checking its digest as the bytes arrive, and commits it locally.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::{archive, Entry, ObjectRef, Remote, RemoteError, ENTRY_FILES, ENTRY_FILE_LIMIT};
use crate::hash::Digest;
use crate::store::{ActionRecord, Store};

/// The size of an upload's parts, and of the pieces an archive is cut into on its way.
const PART_SIZE: usize = 16 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// What [`Remote::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The remote already had an entry for the key.
    Already,
    /// Uploaded; the bytes of the archive sent (0 when the remote had the archive already).
    Uploaded { bytes: u64 },
}

impl Remote {
    /// Upload the committed step `record` names: its tree's archive (in parallel parts), its
    /// log, and last its signed entry. Does nothing when the remote has an entry for the key.
    pub async fn push(&self, store: &Store, record: &ActionRecord) -> Result<Pushed, RemoteError> {
        let replace = self
            .distrusted
            .lock()
            .expect("not poisoned")
            .contains(&record.key);
        if !replace && self.has_entry(&record.key).await? {
            return Ok(Pushed::Already);
        }
        let tree_dir = store.tree_path(&record.output);
        let tree_object = self.tree_object(&record.output);
        let (archive, sent) = if !replace && self.exists(&tree_object).await? {
            // The same tree from another step or builder: its archive is these very bytes.
            let dir = tree_dir.clone();
            let archive = tokio::task::spawn_blocking(move || {
                let mut hasher = blake3::Hasher::new();
                let size = archive::pack(&dir, &mut hasher)?;
                Ok::<_, io::Error>(ObjectRef {
                    digest: hasher.finalize().into(),
                    size,
                })
            })
            .await
            .expect("the archive task does not panic")
            .map_err(|source| RemoteError::Local {
                action: "archive the tree",
                path: tree_dir.clone(),
                source,
            })?;
            (archive, 0)
        } else {
            let archive = self.upload_tree(tree_dir.clone(), &tree_object).await?;
            (archive, archive.size)
        };
        let log = match record.log {
            Some(digest) => match store.get_blob(&digest)? {
                Some(bytes) => {
                    let path = self.blob_object(&digest);
                    let size = bytes.len() as u64;
                    if !self.exists(&path).await? {
                        self.check_up("write", &path)?;
                        self.client
                            .put(&path, PutPayload::from(bytes))
                            .await
                            .map_err(|e| self.failed("write", &path, e))?;
                    }
                    Some(ObjectRef { digest, size })
                }
                None => None,
            },
            None => None,
        };
        let mut files = std::collections::BTreeMap::new();
        for name in ENTRY_FILES {
            let path = tree_dir.join(name);
            let small = std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.is_file() && m.len() <= ENTRY_FILE_LIMIT);
            if let Some(text) = small.then(|| std::fs::read_to_string(&path).ok()).flatten() {
                files.insert(name.to_string(), text);
            }
        }
        let mut record = record.clone();
        record.log = log.map(|l| l.digest);
        let entry = Entry {
            record,
            archive,
            log,
            files,
        };
        self.put_entry(&entry).await?;
        self.distrusted
            .lock()
            .expect("not poisoned")
            .remove(&entry.record.key);
        Ok(Pushed::Uploaded { bytes: sent })
    }

    /// Stream the archive of `tree_dir` to `path`: one PUT when it is small, else a multipart
    /// upload whose parts go up in parallel. Returns the archive's digest and size. An upload
    /// that fails or is killed midway leaves no object: S3 shows a multipart upload only once
    /// it is completed.
    async fn upload_tree(
        &self,
        tree_dir: PathBuf,
        path: &ObjectPath,
    ) -> Result<ObjectRef, RemoteError> {
        self.check_up("write", path)?;
        let (sender, mut pieces) = tokio::sync::mpsc::channel::<Bytes>(PARTS_IN_FLIGHT);
        let dir = tree_dir.clone();
        let packer = tokio::task::spawn_blocking(move || {
            let mut out = PieceSender {
                sender,
                piece: Vec::with_capacity(PART_SIZE),
                hasher: blake3::Hasher::new(),
            };
            let size = archive::pack(&dir, &mut out)?;
            out.send_piece()?;
            Ok::<_, io::Error>(ObjectRef {
                digest: out.hasher.finalize().into(),
                size,
            })
        });
        let first = pieces.recv().await;
        let second = match first {
            Some(_) => pieces.recv().await,
            None => None,
        };
        let uploaded = match (first, second) {
            (Some(only), None) => self
                .client
                .put(path, PutPayload::from(only))
                .await
                .map(|_| ())
                .map_err(|e| self.failed("write", path, e)),
            (first, second) => {
                let upload = self
                    .client
                    .put_multipart(path)
                    .await
                    .map_err(|e| self.failed("start uploading", path, e))?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                let mut result = Ok(());
                for piece in first.into_iter().chain(second) {
                    writer.put(piece);
                }
                while let Some(piece) = pieces.recv().await {
                    if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                        result = Err(e);
                        break;
                    }
                    writer.put(piece);
                }
                match result {
                    Ok(()) => writer
                        .finish()
                        .await
                        .map(|_| ())
                        .map_err(|e| self.failed("upload", path, e)),
                    Err(e) => {
                        let _ = writer.abort().await;
                        Err(self.failed("upload", path, e))
                    }
                }
            }
        };
        // Stop the packer if the upload failed first (its sends then fail).
        drop(pieces);
        let packed = packer.await.expect("the archive task does not panic");
        uploaded?;
        packed.map_err(|source| RemoteError::Local {
            action: "archive the tree",
            path: tree_dir,
            source,
        })
    }

    /// Download tree `tree`, named by an entry [`Remote::lookup`] trusted, into the local store,
    /// with its log and its action record. The archive's blake3 and size are checked as the
    /// bytes arrive and the unpacked tree's digest before it is committed; on a mismatch
    /// nothing is committed, the key is a miss from then on, and the error names the object.
    pub async fn fetch(&self, store: &Store, tree: &Digest) -> Result<(), RemoteError> {
        if store.has_tree(tree) {
            return Ok(());
        }
        let entry = self.known_entry(tree).ok_or_else(|| RemoteError::Corrupt {
            object: self.shown(&self.tree_object(tree)),
            why: "no trusted entry names this tree".to_string(),
        })?;
        let path = self.tree_object(tree);
        let corrupt = |why: String| {
            self.distrusted
                .lock()
                .expect("not poisoned")
                .insert(entry.record.key);
            RemoteError::Corrupt {
                object: self.shown(&path),
                why,
            }
        };
        self.check_up("download", &path)?;
        let result = match self.client.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(corrupt(
                    "it is missing, though an entry names it".to_string(),
                ))
            }
            Err(e) => return Err(self.failed("download", &path, e)),
        };
        let staging = store.stage()?;
        let out = staging.out.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(PARTS_IN_FLIGHT);
        let unpacker = tokio::task::spawn_blocking(move || {
            let mut input = PieceReader {
                receiver,
                piece: Bytes::new(),
            };
            archive::unpack(&mut input, &out)?;
            // Nothing may follow the end of the archive.
            let mut rest = [0u8; 1];
            match input.read(&mut rest)? {
                0 => Ok(()),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bytes after the end of the archive",
                )),
            }
        });
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut stream = result.into_stream();
        let mut transfer = Ok(());
        while let Some(piece) = stream.next().await {
            let piece = match piece {
                Ok(piece) => piece,
                Err(e) => {
                    transfer = Err(self.failed("download", &path, e));
                    break;
                }
            };
            hasher.update(&piece);
            size += piece.len() as u64;
            if size > entry.archive.size {
                break;
            }
            if sender.send(piece).await.is_err() {
                // The unpacker stopped: its error says why.
                break;
            }
        }
        drop(sender);
        let unpacked = unpacker.await.expect("the unpack task does not panic");
        transfer?;
        let digest: Digest = hasher.finalize().into();
        if size != entry.archive.size || digest != entry.archive.digest {
            return Err(corrupt(format!(
                "its bytes (blake3 {}…, {size} bytes so far) are not the entry's (blake3 {}…, {} bytes)",
                digest.short(),
                entry.archive.digest.short(),
                entry.archive.size
            )));
        }
        if let Err(e) = unpacked {
            return Err(match e.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                    corrupt(format!("it does not unpack: {e}"))
                }
                _ => RemoteError::Local {
                    action: "unpack a downloaded tree into",
                    path: staging.out.clone(),
                    source: e,
                },
            });
        }
        let local = store.clone();
        let committed = tokio::task::spawn_blocking(move || local.commit_tree(staging))
            .await
            .expect("the commit task does not panic")?;
        if committed != *tree {
            return Err(corrupt(format!(
                "it unpacks to tree {}, the entry says {}",
                committed.short(),
                tree.short()
            )));
        }
        let mut record = entry.record.clone();
        record.log = match entry.log {
            Some(log) => self.fetch_blob(store, &log).await.ok().map(|_| log.digest),
            None => None,
        };
        store.put_action(&record)?;
        Ok(())
    }

    /// Download blob `blob` into the local store, checking its digest.
    async fn fetch_blob(&self, store: &Store, blob: &ObjectRef) -> Result<(), RemoteError> {
        let path = self.blob_object(&blob.digest);
        let bytes = self
            .get_small(&path)
            .await?
            .ok_or_else(|| RemoteError::Corrupt {
                object: self.shown(&path),
                why: "it is missing, though an entry names it".to_string(),
            })?;
        if Digest::of_bytes(&bytes) != blob.digest {
            return Err(RemoteError::Corrupt {
                object: self.shown(&path),
                why: "its bytes are not the ones its name says".to_string(),
            });
        }
        store.put_blob(&bytes)?;
        Ok(())
    }
}

/// The write end of an upload: hashes the archive and cuts it into pieces for the uploader.
struct PieceSender {
    sender: tokio::sync::mpsc::Sender<Bytes>,
    piece: Vec<u8>,
    hasher: blake3::Hasher,
}

impl PieceSender {
    fn send_piece(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(PART_SIZE));
        self.sender
            .blocking_send(Bytes::from(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for PieceSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PART_SIZE - self.piece.len();
        let n = buf.len().min(room);
        self.piece.extend_from_slice(&buf[..n]);
        self.hasher.update(&buf[..n]);
        if self.piece.len() == PART_SIZE {
            self.send_piece()?;
        }
        Ok(n)
    }

    /// Pieces go when full (and the last by `send_piece`), so flushing sends nothing.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The read end of a download: the pieces as they arrive.
struct PieceReader {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
    piece: Bytes,
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            match self.receiver.blocking_recv() {
                Some(piece) => self.piece = piece,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece[..n]);
        self.piece = self.piece.slice(n..);
        Ok(n)
    }
}

//! Output trees: the tree digest, staging areas, committing a staged tree into `trees/`, and the
//! robust removal of trees that hold read-only folders and device nodes.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use rayon::prelude::*;

use super::{describe, random_name, IoContext, Staging, Store, StoreError};
use crate::hash::Digest;

/// Files larger than this are hashed memory-mapped, on several threads.
const MMAP_THRESHOLD: u64 = 1 << 20;

/// Versions the framing below: change it whenever the framing changes.
const TREE_DOMAIN: &[u8] = b"vmbuild tree digest v1\0";

/// The digest of a directory tree: every entry's relative path, type, mode, owner, extended
/// attributes and content (file bytes, symlink target, device number), in sorted order.
///
/// Times and inode numbers are left out, so identical outputs of two runs have one digest; so is
/// the mode and owner of the top folder itself. Hard links are hashed as separate files.
pub fn tree_digest(path: &Path) -> Result<Digest, StoreError> {
    let meta = fs::symlink_metadata(path).ctx("inspect the tree", path)?;
    if !meta.is_dir() {
        return Err(StoreError::io(
            "hash the tree",
            path,
            io::Error::from(io::ErrorKind::NotADirectory),
        ));
    }
    let mut entries = Vec::new();
    let walk = walkdir::WalkDir::new(path)
        .min_depth(1)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().cmp(b.file_name()));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let at = e.path().unwrap_or(path).to_path_buf();
            StoreError::Io {
                action: "walk the tree",
                path: at,
                source: e.into(),
            }
        })?;
        entries.push(entry.into_path());
    }
    // Each entry's frame is computed on its own (file hashing dominates, in parallel), then all
    // frames go into one hasher in walk order.
    let frames = entries
        .par_iter()
        .map(|entry| entry_frame(path, entry))
        .collect::<Result<Vec<Vec<u8>>, StoreError>>()?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(TREE_DOMAIN);
    hasher.update(&(frames.len() as u64).to_le_bytes());
    for frame in &frames {
        hasher.update(frame);
    }
    Ok(hasher.finalize().into())
}

/// The one-byte type of a tree entry, as the digest frames it (and the remote archive does).
pub(crate) fn entry_tag(ft: fs::FileType) -> u8 {
    if ft.is_file() {
        b'f'
    } else if ft.is_dir() {
        b'd'
    } else if ft.is_symlink() {
        b'l'
    } else if ft.is_char_device() {
        b'c'
    } else if ft.is_block_device() {
        b'b'
    } else if ft.is_fifo() {
        b'p'
    } else if ft.is_socket() {
        b's'
    } else {
        b'?'
    }
}

/// One entry, framed unambiguously: every variable-length field is length-prefixed.
fn entry_frame(root: &Path, path: &Path) -> Result<Vec<u8>, StoreError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let meta = fs::symlink_metadata(path).ctx("inspect", path)?;
    let tag = entry_tag(meta.file_type());
    let mut frame = Vec::with_capacity(128);
    put_bytes(&mut frame, rel.as_os_str().as_bytes());
    frame.push(tag);
    frame.extend_from_slice(&(meta.mode() & 0o7777).to_le_bytes());
    frame.extend_from_slice(&meta.uid().to_le_bytes());
    frame.extend_from_slice(&meta.gid().to_le_bytes());
    let xattrs = read_xattrs(path)?;
    frame.extend_from_slice(&(xattrs.len() as u64).to_le_bytes());
    for (name, value) in &xattrs {
        put_bytes(&mut frame, name.as_bytes());
        put_bytes(&mut frame, value);
    }
    match tag {
        b'f' => frame.extend_from_slice(&hash_file(path)?.0),
        b'l' => {
            let target = fs::read_link(path).ctx("read the symbolic link", path)?;
            put_bytes(&mut frame, target.as_os_str().as_bytes());
        }
        b'c' | b'b' => frame.extend_from_slice(&meta.rdev().to_le_bytes()),
        _ => {}
    }
    Ok(frame)
}

fn put_bytes(frame: &mut Vec<u8>, bytes: &[u8]) {
    frame.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    frame.extend_from_slice(bytes);
}

/// The extended attributes of `path` itself (not of a symlink's target), sorted by name.
/// A file system without extended attributes has none.
fn read_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, StoreError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(Errno::ENOTSUP as i32) => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list the extended attributes of", path, e)),
    };
    let mut names: Vec<OsString> = names.collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut xattrs = Vec::with_capacity(names.len());
    for name in names {
        let value = xattr::get(path, &name).ctx("read an extended attribute of", path)?;
        // An attribute removed between list and get is simply absent.
        if let Some(value) = value {
            xattrs.push((name, value));
        }
    }
    Ok(xattrs)
}

/// The blake3 of a file's bytes; large files are memory-mapped and hashed on several threads.
pub(super) fn hash_file(path: &Path) -> Result<Digest, StoreError> {
    let mut file = File::open(path).ctx("open", path)?;
    let len = file.metadata().ctx("inspect", path)?.len();
    let mut hasher = blake3::Hasher::new();
    if len > MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path).ctx("read", path)?;
    } else {
        hasher.update_reader(&mut file).ctx("read", path)?;
    }
    Ok(hasher.finalize().into())
}

/// Remove `path` whatever it is, making folders writable first so that read-only folders can be
/// emptied. Returns the bytes of the regular files removed. A missing `path` is not an error.
pub(super) fn remove_all(path: &Path) -> Result<u64, StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("inspect", path, e)),
    };
    if !meta.is_dir() {
        fs::remove_file(path).ctx("remove", path)?;
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))
            .ctx("make writable", path)?;
    }
    let mut freed = 0;
    for entry in fs::read_dir(path).ctx("list", path)? {
        let entry = entry.ctx("list", path)?;
        freed += remove_all(&entry.path())?;
    }
    fs::remove_dir(path).ctx("remove the folder", path)?;
    Ok(freed)
}

/// Make the folder `path` writable by its owner, returning its former mode if it changed.
///
/// Moving a folder to another parent rewrites its `..` entry, which needs write permission on it.
fn make_movable(path: &Path) -> Result<Option<u32>, StoreError> {
    let mode = fs::symlink_metadata(path)
        .ctx("inspect", path)?
        .permissions()
        .mode();
    if mode & 0o200 != 0 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o200))
        .ctx("make writable", path)?;
    Ok(Some(mode))
}

/// fsync a folder, so that the renames into it are durable.
pub(super) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .ctx("sync the folder", path)
}

impl Store {
    /// A fresh staging area under `tmp/`: an empty `out/`, a `tmp/` scratch folder and the path of
    /// the log file (not created).
    pub fn stage(&self) -> Result<Staging, StoreError> {
        let dir = self.tmp_dir().join(random_name());
        fs::create_dir(&dir).ctx("create the staging folder", &dir)?;
        // From here on, an early return drops the staging, which removes `dir`.
        let staging = Staging {
            out: dir.join("out"),
            log: dir.join("log"),
            scratch: dir.join("tmp"),
            dir,
            committed: false,
        };
        fs::create_dir(&staging.out).ctx("create the staging folder", &staging.out)?;
        fs::create_dir(&staging.scratch).ctx("create the staging folder", &staging.scratch)?;
        Ok(staging)
    }

    /// Hash `staging.out`, sync it, and move it to `trees/<digest>`; returns the digest.
    ///
    /// If the store already has that tree, the staged copy is discarded instead. Either way the
    /// whole staging folder, log included, is removed: read the log first. The tree's content
    /// must no longer change when this is called.
    pub fn commit_tree(&self, mut staging: Staging) -> Result<Digest, StoreError> {
        let digest = tree_digest(&staging.out)?;
        let dest = self.tree_path(&digest);
        if self.has_tree(&digest) {
            self.finish_staging(&mut staging);
            return Ok(digest);
        }
        // One syncfs makes every file of the tree durable before it gets its name.
        let root = File::open(&self.root).ctx("open the store folder", &self.root)?;
        nix::unistd::syncfs(root.as_fd())
            .map_err(|errno| StoreError::io("sync the file system of", &self.root, errno.into()))?;
        let former_mode = make_movable(&staging.out)?;
        match fs::rename(&staging.out, &dest) {
            Ok(()) => {
                if let Some(mode) = former_mode {
                    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                        .ctx("restore the mode of", &dest)?;
                }
                sync_dir(&self.root.join("trees"))?;
                self.finish_staging(&mut staging);
            }
            // Another process committed the same tree since we looked: keep theirs.
            Err(e) if self.has_tree(&digest) => {
                tracing::debug!("tree {digest} committed concurrently: {e}");
                self.finish_staging(&mut staging);
            }
            Err(e) => return Err(StoreError::io("move the staged tree to", &dest, e)),
        }
        Ok(digest)
    }

    /// After a commit: remove the whole staging folder (the caller has read the log by now) and
    /// mark the staging committed. The tree is in the store by now, so a failure here is only
    /// warned about: gc removes what is left.
    fn finish_staging(&self, staging: &mut Staging) {
        staging.committed = true;
        if let Err(e) = remove_all(&staging.dir) {
            tracing::warn!("{}", describe(&e));
        }
    }

    /// Remove a tree (or anything) under `trees/` without ever leaving a half-removed object
    /// under its name: it is first renamed into `tmp/`, then removed. Returns the bytes freed.
    pub(super) fn discard(&self, path: &Path) -> Result<u64, StoreError> {
        let trash: PathBuf = self.tmp_dir().join(format!("{}.trash", random_name()));
        let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        if is_dir {
            make_movable(path)?;
        }
        match fs::rename(path, &trash) {
            Ok(()) => remove_all(&trash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io("move to the store's tmp folder", path, e)),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(e) = remove_all(&self.dir) {
            tracing::warn!("{}", describe(&e));
        }
    }
}

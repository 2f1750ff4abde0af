//! Store locks: the store-wide `lock` file (shared for apply, exclusive for gc) and the per-key
//! build locks under `locks/`. All are `flock`s, released when the [`Lock`] is dropped.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{IoContext, Lock, Store, StoreError};
use crate::hash::Digest;

impl Store {
    /// Block until this process holds the store lock shared (an apply).
    pub fn lock_shared(&self) -> Result<Lock, StoreError> {
        lock_file(&self.root.join("lock"), FlockArg::LockShared)
    }

    /// Block until this process holds the store lock exclusively (gc).
    pub fn lock_exclusive(&self) -> Result<Lock, StoreError> {
        lock_file(&self.root.join("lock"), FlockArg::LockExclusive)
    }

    /// Block until this process holds the build lock of `key`.
    ///
    /// Two `Lock`s on the same key exclude each other even within one process (each opens the
    /// lock file anew).
    pub fn lock_key(&self, key: &Digest) -> Result<Lock, StoreError> {
        let path = self.key_lock_path(key);
        loop {
            let lock = lock_file(&path, FlockArg::LockExclusive)?;
            // gc may have removed the file between our open and our lock; a lock on an unlinked
            // file excludes nobody, so take it again on the file now at `path`.
            if same_file(&lock, &path)? {
                return Ok(lock);
            }
        }
    }

    pub(super) fn key_lock_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("{}.lock", key.to_hex()))
    }

    /// Whether the store lock is held exclusively (by anyone, normally by the caller).
    pub(super) fn exclusive_lock_held(&self) -> Result<bool, StoreError> {
        let path = self.root.join("lock");
        let file = open_lock_file(&path)?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_shared) => Ok(false),
            Err((_, Errno::EWOULDBLOCK)) => Ok(true),
            Err((_, errno)) => Err(StoreError::io("lock", &path, errno.into())),
        }
    }

    /// Remove `path`, a key lock file, if nobody holds it; returns whether it was removed.
    pub(super) fn remove_lock_if_free(&self, path: &Path) -> Result<bool, StoreError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("open the lock file", path, e)),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                // Unlink while holding it: a waiter that opened the old file notices (see
                // `lock_key`) and locks the new one.
                std::fs::remove_file(path).ctx("remove the lock file", path)?;
                drop(held);
                Ok(true)
            }
            Err((_, Errno::EWOULDBLOCK)) => Ok(false),
            Err((_, errno)) => Err(StoreError::io("lock", path, errno.into())),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx("open the lock file", path)
}

/// Open (creating) `path` and flock it, retrying when a signal interrupts the wait.
fn lock_file(path: &Path, arg: FlockArg) -> Result<Lock, StoreError> {
    let mut file = open_lock_file(path)?;
    loop {
        match Flock::lock(file, arg) {
            Ok(flock) => return Ok(Lock { flock }),
            Err((back, Errno::EINTR)) => file = back,
            Err((_, errno)) => return Err(StoreError::io("lock", path, errno.into())),
        }
    }
}

/// Whether the locked file is still the one at `path`.
fn same_file(lock: &Lock, path: &Path) -> Result<bool, StoreError> {
    let held = lock.flock.metadata().ctx("inspect the lock file", path)?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("inspect the lock file", path, e)),
    }
}

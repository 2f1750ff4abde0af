//! Apply's copy of exactly the planned selection, verified: every file is hashed as it is
//! copied (or, when reflinked, the clone is hashed), and a file whose digest is not the one plan
//! found fails the step, naming it. So the output always matches the key it is stored under.
//!
//! Files are cloned (`FICLONE`: shared extents, copy on write) where the source and the store
//! are on one file system that supports it (btrfs, XFS), and copied otherwise, in one pass that
//! reads, hashes and writes. Never hard linked: see the book's page on `files`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use rayon::prelude::*;
use tokio_util::sync::CancellationToken;

use super::scan::{hash_reader, Entry, Kind, Scan, LARGE_FILE};
use crate::hash::Digest;
use crate::steps::StepError;

/// How the files were copied, for the log.
#[derive(Debug, Default)]
pub struct Copied {
    pub reflinked: u64,
    pub copied: u64,
    pub bytes: u64,
}

/// A planned entry that is no longer what plan found.
/// What the copy calls with the relative path of each entry that changed since plan.
pub type OnChanged<'a> = &'a (dyn Fn(&Path) + Sync);

fn changed(root: &Path, entry: &Entry, on_changed: OnChanged<'_>, why: &str) -> StepError {
    on_changed(&entry.path);
    StepError::Unmet(format!(
        "`{}` changed since plan ({why}): run plan again",
        root.join(&entry.path).display()
    ))
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StepError + 'a {
    move |source| StepError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Clone `from`'s content into the empty file `to`; false where the file systems cannot.
fn reflink(to: &File, from: &File) -> bool {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open
    // for the duration of the call, and the kernel checks everything else.
    unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) == 0 }
}

fn hash_open(file: &mut File, size: u64) -> std::io::Result<(Digest, u64)> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    hash_reader(&mut *file, size)
}

fn set_times(path: &Path, mtime: (i64, i64)) -> Result<(), StepError> {
    let time = TimeSpec::new(mtime.0, mtime.1);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|errno| StepError::Io {
        action: "set the times of",
        path: path.to_path_buf(),
        source: errno.into(),
    })
}

/// Copy every entry of `scan` into the empty folder `to`, verifying each file's digest; an entry
/// that is not what plan found fails the copy, after `on_changed` is told its path.
pub fn copy_selection(
    scan: &Scan,
    to: &Path,
    cancel: &CancellationToken,
    on_changed: OnChanged<'_>,
) -> Result<Copied, StepError> {
    let root = &scan.root;
    // Folders first, writable while their content goes in; their modes and times come last.
    let mut folders = Vec::new();
    for entry in scan.entries.iter().filter(|e| e.kind == Kind::Dir) {
        let path = to.join(&entry.path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io("create", &path))?;
        folders.push((entry, path));
    }
    let reflinks_work = AtomicBool::new(true);
    let reflinked = AtomicU64::new(0);
    let copied = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    scan.entries
        .par_iter()
        .filter(|e| e.kind != Kind::Dir)
        .try_for_each(|entry| {
            if cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let from = root.join(&entry.path);
            let dest = to.join(&entry.path);
            match &entry.kind {
                Kind::File { size, digest } => {
                    let how = copy_file(
                        root,
                        entry,
                        &from,
                        &dest,
                        *size,
                        digest,
                        &reflinks_work,
                        cancel,
                        on_changed,
                    )?;
                    if how {
                        reflinked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        copied.fetch_add(1, Ordering::Relaxed);
                    }
                    bytes.fetch_add(*size, Ordering::Relaxed);
                }
                Kind::Symlink { target } => {
                    match std::fs::read_link(&from) {
                        Ok(now) if now == *target => {}
                        Ok(_) => {
                            return Err(changed(root, entry, on_changed, "its target differs"))
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(changed(root, entry, on_changed, "it is gone"))
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            return Err(changed(
                                root,
                                entry,
                                on_changed,
                                "it is no longer a symbolic link",
                            ))
                        }
                        Err(e) => return Err(io("read", &from)(e)),
                    }
                    std::os::unix::fs::symlink(target, &dest).map_err(io("create", &dest))?;
                    set_times(&dest, entry.mtime)?;
                }
                Kind::Dir => unreachable!("folders are filtered out"),
            }
            Ok(())
        })?;
    for (entry, path) in folders.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(entry.mode))
            .map_err(io("chmod", path))?;
        set_times(path, entry.mtime)?;
    }
    Ok(Copied {
        reflinked: reflinked.into_inner(),
        copied: copied.into_inner(),
        bytes: bytes.into_inner(),
    })
}

/// Copy one file and check its digest; true if it was reflinked.
#[allow(clippy::too_many_arguments)]
fn copy_file(
    root: &Path,
    entry: &Entry,
    from: &Path,
    dest: &PathBuf,
    size: u64,
    digest: &Digest,
    reflinks_work: &AtomicBool,
    cancel: &CancellationToken,
    on_changed: OnChanged<'_>,
) -> Result<bool, StepError> {
    let mut source = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(changed(root, entry, on_changed, "it is gone"))
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(changed(
                root,
                entry,
                on_changed,
                "it is now a symbolic link",
            ))
        }
        Err(e) => return Err(io("open", from)(e)),
    };
    if !source.metadata().map_err(io("inspect", from))?.is_file() {
        return Err(changed(root, entry, on_changed, "it is no longer a file"));
    }
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io("create", dest))?;
    let cloned = reflinks_work.load(Ordering::Relaxed) && reflink(&out, &source);
    let (found, length) = if cloned {
        hash_open(&mut out, size).map_err(io("read", dest))?
    } else {
        reflinks_work.store(false, Ordering::Relaxed);
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; size.clamp(4096, LARGE_FILE) as usize];
        loop {
            if cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let n = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("read", from)(e)),
            };
            if n >= 1 << 20 {
                hasher.update_rayon(&buffer[..n]);
            } else {
                hasher.update(&buffer[..n]);
            }
            out.write_all(&buffer[..n]).map_err(io("write", dest))?;
        }
        (hasher.finalize().into(), hasher.count())
    };
    if length != size {
        return Err(changed(root, entry, on_changed, "its size differs"));
    }
    if found != *digest {
        return Err(changed(root, entry, on_changed, "its content differs"));
    }
    out.set_permissions(std::fs::Permissions::from_mode(entry.mode))
        .map_err(io("chmod", dest))?;
    let mtime = std::time::UNIX_EPOCH
        + std::time::Duration::new(entry.mtime.0.max(0) as u64, entry.mtime.1 as u32);
    out.set_times(
        std::fs::FileTimes::new()
            .set_modified(mtime)
            .set_accessed(mtime),
    )
    .map_err(io("set the times of", dest))?;
    Ok(cloned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::files::scan::{scan, Globs};
    use std::process::Command;

    /// A btrfs file system in a file, mounted for the test's life.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    fn btrfs(dir: &Path) -> Option<Mounted> {
        let have = |tool: &str| {
            ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists())
        };
        if !nix::unistd::Uid::effective().is_root() || !have("mkfs.btrfs") {
            return None;
        }
        let image = dir.join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let made = Command::new("mkfs.btrfs")
            .arg("-q")
            .arg(&image)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(made.success());
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .status()
            .unwrap();
        mounted.success().then_some(Mounted(mnt))
    }

    #[test]
    fn on_one_file_system_that_can_files_are_reflinked_and_edits_of_the_source_stay_out() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mounted) = btrfs(dir.path()) else {
            eprintln!("skipped: needs root and mkfs.btrfs (a loop-mounted btrfs)");
            return;
        };
        let tree = mounted.0.join("tree");
        std::fs::create_dir_all(tree.join("data")).unwrap();
        std::fs::write(tree.join("data/small"), "small").unwrap();
        std::fs::write(tree.join("big"), vec![3u8; 3 << 20]).unwrap();
        let scanned = scan(&tree, &Globs::new(&[], &[]).unwrap(), None).unwrap();
        let out = mounted.0.join("out");
        std::fs::create_dir(&out).unwrap();
        let copied = copy_selection(&scanned, &out, &CancellationToken::new(), &|_| {}).unwrap();
        assert_eq!((copied.reflinked, copied.copied), (2, 0));
        assert_eq!(std::fs::read(out.join("big")).unwrap(), vec![3u8; 3 << 20]);
        // An in-place edit of the source (what a hard link would pass on) leaves the copy alone.
        let mut source = std::fs::OpenOptions::new()
            .write(true)
            .open(tree.join("data/small"))
            .unwrap();
        source.write_all(b"EDIT").unwrap();
        drop(source);
        assert_eq!(
            std::fs::read_to_string(tree.join("data/small")).unwrap(),
            "EDITl"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("data/small")).unwrap(),
            "small"
        );
    }
}

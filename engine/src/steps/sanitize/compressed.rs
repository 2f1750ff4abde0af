//! Compressed files inside the VM's file system, decompressed and searched: what a byte search
//! of the disk cannot see. `.gz` (`.tgz`), `.xz` (`.txz`), `.bz2`, `.zst` and `.lz4` streams,
//! and zip archives (`.zip`, `.jar`, `.war`, `.ear`: a web application's configuration is often
//! inside one), whose members' contents are searched one after the other. Archives inside
//! archives (a `.jar` in a `.war`) are not opened.
//!
//! The disk's ext4 file systems are mounted read-only (no journal replay) through a loop device
//! at each partition's offset (`losetup -o --sizelimit`, no udev needed), and always unmounted
//! and detached afterwards. Decompressors are the usual programs (gzip, xz-utils, bzip2, zstd,
//! lz4, unzip); files whose program is missing are counted and said, not silently skipped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::MsFlags;

use super::matcher::{Found, Matcher};
use crate::steps::loop_mount::LoopMount;
use crate::steps::{io_error, StepError};

/// The program (and its arguments) that writes the decompressed content of a file named
/// `name` to its standard output, if it is compressed.
fn decompressor(name: &str) -> Option<(&'static str, &'static [&'static str], &'static str)> {
    let name = name.to_ascii_lowercase();
    let ends = |exts: &[&str]| exts.iter().any(|e| name.ends_with(e));
    if ends(&[".gz", ".tgz"]) {
        Some(("gzip", &["-dc"], "gzip"))
    } else if ends(&[".xz", ".txz"]) {
        Some(("xz", &["-dc"], "xz-utils"))
    } else if ends(&[".bz2", ".tbz2"]) {
        Some(("bzip2", &["-dc"], "bzip2"))
    } else if ends(&[".zst"]) {
        Some(("zstd", &["-dcq"], "zstd"))
    } else if ends(&[".lz4"]) {
        Some(("lz4", &["-dcq"], "lz4"))
    } else if ends(&[".zip", ".jar", ".war", ".ear"]) {
        Some(("unzip", &["-p", "-qq"], "unzip"))
    } else {
        None
    }
}

/// What was found inside one compressed file (offsets in its decompressed content).
#[derive(Debug)]
pub struct Inside {
    /// Its path in the VM.
    pub path: String,
    pub found: Found,
}

/// What searching the compressed files of a disk did.
#[derive(Debug, Default)]
pub struct Compressed {
    /// Files with an occurrence.
    pub hits: Vec<Inside>,
    /// Compressed files searched, and the bytes their content came to.
    pub files: u64,
    pub bytes: u64,
    /// Files not searched because their program is missing: Debian package → count.
    pub not_searched: BTreeMap<&'static str, u64>,
}

fn find(program: &str) -> Option<PathBuf> {
    crate::steps::process::find_program(program, Path::new("/")).or_else(|| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(program))
            .find(|p| p.is_file())
    })
}

/// Search the compressed files of the ext4 file systems at `partitions` ((offset, size) in
/// bytes) of the raw disk `raw`; `scratch` holds the mount points. Blocking; needs root.
pub fn search(
    matcher: &Matcher,
    raw: &Path,
    partitions: &[(u64, u64)],
    scratch: &Path,
    cancelled: &dyn Fn() -> bool,
) -> Result<Compressed, StepError> {
    let mut result = Compressed::default();
    for (i, (offset, size)) in partitions.iter().enumerate() {
        let mounted = LoopMount::ext4_read_only(
            raw,
            *offset,
            *size,
            &scratch.join(format!("mnt-{i}")),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        )?;
        search_tree(matcher, mounted.path(), &mut result, cancelled)?;
        drop(mounted);
    }
    Ok(result)
}

/// Search every compressed file under `root` (a mounted file system).
fn search_tree(
    matcher: &Matcher,
    root: &Path,
    result: &mut Compressed,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), StepError> {
    let mut programs: BTreeMap<&str, Option<PathBuf>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .same_file_system(true)
        .sort_by_file_name()
    {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        let Some((program, args, package)) = decompressor(&name) else {
            continue;
        };
        if cancelled() {
            return Err(StepError::Cancelled);
        }
        let Some(path) = programs
            .entry(program)
            .or_insert_with(|| find(program))
            .clone()
        else {
            *result.not_searched.entry(package).or_default() += 1;
            continue;
        };
        let vm_path = format!(
            "/{}",
            entry
                .path()
                .strip_prefix(root)
                .unwrap_or(entry.path())
                .display()
        );
        let mut child = Command::new(path)
            .args(args)
            .arg(entry.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| StepError::Spawn {
                program: program.into(),
                source,
            })?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stream = matcher.stream();
        let mut buffer = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            if cancelled() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StepError::Cancelled);
            }
            let n = stdout
                .read(&mut buffer)
                .map_err(io_error("decompress", entry.path()))?;
            if n == 0 {
                break;
            }
            stream.feed(&buffer[..n]);
            bytes += n as u64;
        }
        // A damaged file gives what could be read; it was searched as far as it goes.
        let _ = child.wait();
        result.files += 1;
        result.bytes += bytes;
        let found = stream.finish();
        if found.total > 0 {
            result.hits.push(Inside {
                path: vm_path,
                found,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_files_are_known_by_their_names() {
        assert_eq!(decompressor("dpkg.log.2.gz").unwrap().0, "gzip");
        assert_eq!(decompressor("site.WAR").unwrap().0, "unzip");
        assert_eq!(decompressor("backup.tar.zst").unwrap().0, "zstd");
        assert!(decompressor("config.php").is_none());
        assert!(decompressor("gz").is_none());
    }

    #[test]
    fn a_tree_s_compressed_files_are_searched_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("var/log")).unwrap();
        std::fs::write(
            root.join("var/log/mail.log"),
            "to alice.curator@example.edu\n",
        )
        .unwrap();
        let gzip = Command::new("gzip")
            .arg(root.join("var/log/mail.log"))
            .status()
            .unwrap();
        assert!(gzip.success());
        std::fs::write(root.join("plain.txt"), "alice.curator@example.edu").unwrap();
        let matcher = Matcher::new(&[b"alice.curator@example.edu"]);
        let mut result = Compressed::default();
        search_tree(&matcher, root, &mut result, &|| false).unwrap();
        assert_eq!(result.files, 1);
        assert_eq!(result.hits.len(), 1);
        assert_eq!(result.hits[0].path, "/var/log/mail.log.gz");
        assert_eq!(result.hits[0].found.hits[0].offset, 3);
    }
}

//! The archive a tree travels in to and from the remote store: one stream holding exactly what
//! the tree digest covers (paths, types, modes, owners, extended attributes, contents), in the
//! digest's order, with file holes kept as holes.
//!
//! tar cannot carry all of it (device nodes and extended attributes are unpacked by no tar
//! crate we could find, and its headers carry times and names the digest leaves out), so, as
//! Nix does with its NAR, vmbuild frames entries itself. The archive is a function of the tree
//! alone: two builders that made the same tree make byte-identical archives.
//!
//! ```text
//! MAGIC, then per entry: '+', path, tag, mode u32, uid u32, gid u32, xattr count, (name, value)*,
//!   'f': size u64, extent count u64, (offset u64, length u64, bytes)*
//!   'l': target      'c' | 'b': rdev u64      'd' | 'p': nothing
//! then the end tag 'E'
//! ```
//! Variable-length fields are a u64 length (little-endian) and the bytes.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The first bytes of every archive; a new framing gets a new magic.
const MAGIC: &[u8; 16] = b"vmbuild-tree-v1\n";

/// Marks the start of an entry, and the end of the archive.
const ENTRY: u8 = b'+';
const END: u8 = b'E';

/// Longest path or symbolic-link target or attribute accepted when unpacking.
const MAX_NAME: u64 = 1 << 16;
/// Largest extended attribute value accepted when unpacking.
const MAX_XATTR: u64 = 1 << 20;

/// Write the archive of the tree at `root` to `out`; returns the bytes written.
pub fn pack(root: &Path, out: impl Write) -> io::Result<u64> {
    let mut out = Counting {
        inner: out,
        count: 0,
    };
    out.write_all(MAGIC)?;
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().cmp(b.file_name()));
    let mut buffer = vec![0u8; 1 << 20];
    for entry in walk {
        let entry = entry.map_err(io::Error::from)?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(path);
        let meta = fs::symlink_metadata(path)?;
        let tag = crate::store::entry_tag(meta.file_type());
        if !b"fdlcbp".contains(&tag) {
            // Sockets are not content: a step's output holds none worth keeping.
            continue;
        }
        out.write_all(&[ENTRY])?;
        put_bytes(&mut out, rel.as_os_str().as_bytes())?;
        out.write_all(&[tag])?;
        out.write_all(&(meta.mode() & 0o7777).to_le_bytes())?;
        out.write_all(&meta.uid().to_le_bytes())?;
        out.write_all(&meta.gid().to_le_bytes())?;
        let xattrs = read_xattrs(path)?;
        out.write_all(&(xattrs.len() as u64).to_le_bytes())?;
        for (name, value) in &xattrs {
            put_bytes(&mut out, name)?;
            put_bytes(&mut out, value)?;
        }
        match tag {
            b'f' => pack_file(path, meta.len(), &mut out, &mut buffer)?,
            b'l' => put_bytes(&mut out, fs::read_link(path)?.as_os_str().as_bytes())?,
            b'c' | b'b' => out.write_all(&meta.rdev().to_le_bytes())?,
            _ => {}
        }
    }
    out.write_all(&[END])?;
    out.flush()?;
    Ok(out.count)
}

/// A file's size, then its data extents (holes are left out).
fn pack_file(path: &Path, size: u64, out: &mut impl Write, buffer: &mut [u8]) -> io::Result<()> {
    let mut file = File::open(path)?;
    let extents = data_extents(&file, size)?;
    out.write_all(&size.to_le_bytes())?;
    out.write_all(&(extents.len() as u64).to_le_bytes())?;
    for (offset, length) in extents {
        out.write_all(&offset.to_le_bytes())?;
        out.write_all(&length.to_le_bytes())?;
        file.seek(SeekFrom::Start(offset))?;
        let mut left = length;
        while left > 0 {
            let want = left.min(buffer.len() as u64) as usize;
            file.read_exact(&mut buffer[..want])?;
            out.write_all(&buffer[..want])?;
            left -= want as u64;
        }
    }
    Ok(())
}

/// The `(offset, length)` ranges of `file` that hold data, by SEEK_DATA and SEEK_HOLE; the
/// whole file where the file system cannot tell.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut at: i64 = 0;
    while (at as u64) < size {
        // SAFETY: lseek on a file descriptor this function's caller keeps open.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                // No data after `at`: the rest is a hole.
                Some(libc::ENXIO) => Ok(extents),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) if extents.is_empty() => {
                    Ok(vec![(0, size)])
                }
                _ => Err(error),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        if end > data as u64 {
            extents.push((data as u64, end - data as u64));
        }
        at = hole;
    }
    Ok(extents)
}

/// The extended attributes of `path` itself, sorted by name (none where unsupported).
fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<Vec<u8>> = names.map(|n| n.as_bytes().to_vec()).collect();
    names.sort();
    let mut xattrs = Vec::with_capacity(names.len());
    for name in names {
        if let Some(value) = xattr::get(path, OsStr::from_bytes(&name))? {
            xattrs.push((name, value));
        }
    }
    Ok(xattrs)
}

fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(bytes)
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Unpack an archive from `input` into the empty folder `root`.
///
/// The input is not trusted yet (its digest is checked by the caller once it has all been
/// read), so nothing is written outside `root`: every path must be relative, without `..`,
/// and every entry's parent must be a folder the archive itself made (never a symbolic link).
/// Folder modes are applied last, so read-only folders can be filled. Reads to the end tag and
/// no further.
pub fn unpack(input: impl Read, root: &Path) -> io::Result<()> {
    let mut input = input;
    let mut magic = [0u8; 16];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid(
            "not a vmbuild tree archive (or another version of one)",
        ));
    }
    let mut folders: Vec<(PathBuf, u32)> = Vec::new();
    let mut made_folders = std::collections::HashSet::new();
    made_folders.insert(PathBuf::new());
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match read_u8(&mut input)? {
            ENTRY => {}
            END => break,
            other => return Err(invalid(format!("expected an entry, found byte {other:#x}"))),
        }
        let rel = PathBuf::from(OsStr::from_bytes(&read_bytes(&mut input, MAX_NAME)?));
        check_relative(&rel)?;
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if !made_folders.contains(&parent) {
            return Err(invalid(format!(
                "`{}` comes before its folder",
                rel.display()
            )));
        }
        let path = root.join(&rel);
        let tag = read_u8(&mut input)?;
        let mode = read_u32(&mut input)?;
        let uid = read_u32(&mut input)?;
        let gid = read_u32(&mut input)?;
        let count = read_u64(&mut input)?;
        let mut xattrs = Vec::new();
        for _ in 0..count.min(4096) {
            let name = read_bytes(&mut input, MAX_NAME)?;
            let value = read_bytes(&mut input, MAX_XATTR)?;
            xattrs.push((name, value));
        }
        if count > 4096 {
            return Err(invalid("too many extended attributes"));
        }
        match tag {
            b'f' => unpack_file(&mut input, &path, &mut buffer)?,
            b'd' => {
                fs::create_dir(&path)?;
                made_folders.insert(rel.clone());
            }
            b'l' => {
                let target = read_bytes(&mut input, MAX_NAME)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)?;
            }
            b'c' | b'b' | b'p' => {
                let rdev = if tag == b'p' {
                    0
                } else {
                    read_u64(&mut input)?
                };
                let kind = match tag {
                    b'c' => nix::sys::stat::SFlag::S_IFCHR,
                    b'b' => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                nix::sys::stat::mknod(
                    &path,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    rdev,
                )
                .map_err(io::Error::from)?;
            }
            other => return Err(invalid(format!("unknown entry type {other:#x}"))),
        }
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)?;
        for (name, value) in &xattrs {
            xattr::set(&path, OsStr::from_bytes(name), value)?;
        }
        match tag {
            b'l' => {}
            // Folders get their mode once they are full.
            b'd' => folders.push((path, mode)),
            _ => fs::set_permissions(&path, fs::Permissions::from_mode(mode))?,
        }
    }
    for (path, mode) in folders.into_iter().rev() {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn unpack_file(input: &mut impl Read, path: &Path, buffer: &mut [u8]) -> io::Result<()> {
    let size = read_u64(input)?;
    let count = read_u64(input)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut end = 0;
    for _ in 0..count {
        let offset = read_u64(input)?;
        let length = read_u64(input)?;
        if offset < end || offset.checked_add(length).is_none_or(|e| e > size) {
            return Err(invalid(format!(
                "`{}`: extents out of order or past the end",
                path.display()
            )));
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut left = length;
        while left > 0 {
            let want = left.min(buffer.len() as u64) as usize;
            input.read_exact(&mut buffer[..want])?;
            file.write_all(&buffer[..want])?;
            left -= want as u64;
        }
        end = offset + length;
    }
    file.set_len(size)?;
    Ok(())
}

/// Relative, and without `.`, `..` or a root: the path stays inside the folder it joins.
fn check_relative(rel: &Path) -> io::Result<()> {
    let normal =
        !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if normal {
        Ok(())
    } else {
        Err(invalid(format!(
            "the path `{}` would leave the tree",
            rel.display()
        )))
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn read_u8(input: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    input.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_bytes(input: &mut impl Read, max: u64) -> io::Result<Vec<u8>> {
    let len = read_u64(input)?;
    if len > max {
        return Err(invalid(format!("a field of {len} bytes (at most {max})")));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tree_digest;

    /// A tree with every kind of entry the digest knows, a hole, an attribute and a read-only
    /// folder.
    fn sample(root: &Path) {
        fs::create_dir_all(root.join("etc/ssl")).unwrap();
        fs::write(root.join("etc/hostname"), "web\n").unwrap();
        std::os::unix::fs::symlink("../hostname", root.join("etc/ssl/link")).unwrap();
        let sparse = File::create(root.join("disk.raw")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        let mut sparse = sparse;
        sparse.seek(SeekFrom::Start(32 << 20)).unwrap();
        sparse.write_all(b"data in the middle").unwrap();
        fs::set_permissions(root.join("etc/hostname"), fs::Permissions::from_mode(0o640)).unwrap();
        // Attributes in the user namespace, where the file system takes them.
        let _ = xattr::set(root.join("etc/hostname"), "user.vmbuild", b"kept");
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        if nix::unistd::geteuid().is_root() {
            nix::sys::stat::mknod(
                &root.join("null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
        }
        fs::set_permissions(root.join("etc/ssl"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    #[test]
    fn a_tree_comes_back_with_the_same_digest_and_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        fs::create_dir(&from).unwrap();
        fs::create_dir(&to).unwrap();
        sample(&from);
        let mut bytes = Vec::new();
        let size = pack(&from, &mut bytes).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert!(
            size < 1 << 20,
            "the 64 MiB hole is not in the archive: {size} bytes"
        );
        unpack(&bytes[..], &to).unwrap();
        assert_eq!(tree_digest(&from).unwrap(), tree_digest(&to).unwrap());
        let unpacked = fs::metadata(to.join("disk.raw")).unwrap();
        assert_eq!(unpacked.len(), 64 << 20);
        assert!(unpacked.blocks() * 512 < 1 << 20, "the hole stays a hole");
        // The archive is a function of the tree: packing again gives the same bytes.
        let mut again = Vec::new();
        pack(&to, &mut again).unwrap();
        assert_eq!(bytes, again);
        for path in [from.join("etc/ssl"), to.join("etc/ssl")] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// An archive of one entry at `path`, a regular empty file.
    fn one_file(path: &str) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.push(ENTRY);
        put_bytes(&mut bytes, path.as_bytes()).unwrap();
        bytes.push(b'f');
        for field in [0o644u32, 0, 0] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(&0u64.to_le_bytes()); // no attributes
        bytes.extend_from_slice(&0u64.to_le_bytes()); // size
        bytes.extend_from_slice(&0u64.to_le_bytes()); // no extents
        bytes.push(END);
        bytes
    }

    #[test]
    fn nothing_is_written_outside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        assert!(unpack(&one_file("ok")[..], &root).is_ok());
        for path in [
            "../escape",
            "/etc/escape",
            "a/../../escape",
            "missing/parent",
        ] {
            let target = dir.path().join("t");
            let _ = fs::remove_dir_all(&target);
            fs::create_dir(&target).unwrap();
            let error = unpack(&one_file(path)[..], &target).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{path}: {error}");
        }
        assert!(!dir.path().join("escape").exists());
        // A symbolic link is never a folder to write through.
        let target = dir.path().join("through-link");
        fs::create_dir(&target).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.push(ENTRY);
        put_bytes(&mut bytes, b"link").unwrap();
        bytes.push(b'l');
        for field in [0o777u32, 0, 0] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(&0u64.to_le_bytes());
        put_bytes(&mut bytes, dir.path().as_os_str().as_bytes()).unwrap();
        bytes.extend_from_slice(&one_file("link/escape")[MAGIC.len()..]);
        assert!(unpack(&bytes[..], &target).is_err());
        assert!(!dir.path().join("escape").exists());
        // Truncated or foreign input is an error, not a partial success.
        assert!(unpack(&one_file("ok")[..20], &dir.path().join("root")).is_err());
        assert!(unpack(&b"tar archive here"[..], &root).is_err());
    }
}

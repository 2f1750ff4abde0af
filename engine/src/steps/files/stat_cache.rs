//! The stat cache of a file tree: for each file, what `lstat` said (size, mtime, ctime, inode,
//! device) when plan last hashed it, and its blake3 digest. A file whose stat is unchanged is
//! not read again.
//!
//! **Racy entries.** A file written twice within one tick of its file system's clock keeps its
//! mtime and ctime; if plan read it between the two writes, its stat would match a digest of old
//! content. The cache therefore records when the scan that made it *started* (before any file
//! was read), and trusts an entry only if the file's mtime and ctime are older than that moment
//! by [`RACY_MARGIN_NS`]: any later write then necessarily moves the ctime (git's "racy git"
//! rule). Younger entries are kept but hashed again by the next plan, which, started later, then
//! usually trusts them. The margin covers coarse kernel clocks, file systems with one- or
//! two-second timestamps, and modest clock skew with a file server.
//!
//! **Corruption.** The file ends with the blake3 of everything before it; a cache that is
//! truncated, altered or of another version is refused as a whole (the caller then hashes
//! everything), never partly trusted. It is written to a temporary file, synced and renamed
//! over the old one, so a crash leaves the old cache or the new one.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::hash::Digest;

/// How much older than the start of the scan a file's mtime and ctime must be for its entry to
/// be trusted.
pub const RACY_MARGIN_NS: i64 = 2_000_000_000;

/// The first bytes of a cache file; a new layout gets a new version here.
const MAGIC: &[u8] = b"vmbuild stat cache v1\n";

/// What `lstat` says of a file, as far as the cache compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device: u64,
}

fn nanoseconds(seconds: i64, nanos: i64) -> i64 {
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

impl FileStat {
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: meta.size(),
            mtime_ns: nanoseconds(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanoseconds(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }
}

/// The current time in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

/// A loaded cache.
#[derive(Debug, Default)]
pub struct StatCache {
    /// When the scan that wrote it started; 0 for an empty cache.
    scan_started_ns: i64,
    entries: HashMap<Vec<u8>, (FileStat, Digest)>,
}

/// Why a cache file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CacheRefused {
    #[error("cannot read it: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("it is not a stat cache of this vmbuild")]
    Foreign,
    #[error("it is damaged (its checksum does not match)")]
    Damaged,
    #[error("it is cut short")]
    Truncated,
}

impl StatCache {
    /// The cache at `path`: empty if there is none, an error if there is one that cannot be
    /// trusted.
    pub fn load(path: &Path) -> Result<StatCache, CacheRefused> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StatCache::default()),
            Err(e) => return Err(e.into()),
        };
        StatCache::parse(&bytes)
    }

    fn parse(bytes: &[u8]) -> Result<StatCache, CacheRefused> {
        if !bytes.starts_with(MAGIC) {
            return Err(CacheRefused::Foreign);
        }
        if bytes.len() < MAGIC.len() + 16 + 32 {
            return Err(CacheRefused::Truncated);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(CacheRefused::Damaged);
        }
        let mut reader = Reader {
            bytes: &body[MAGIC.len()..],
        };
        let scan_started_ns = reader.i64()?;
        let count = reader.u64()?;
        let mut entries = HashMap::with_capacity(count.min(1 << 24) as usize);
        for _ in 0..count {
            let len = reader.u32()? as usize;
            let path = reader.take(len)?.to_vec();
            let stat = FileStat {
                size: reader.u64()?,
                mtime_ns: reader.i64()?,
                ctime_ns: reader.i64()?,
                inode: reader.u64()?,
                device: reader.u64()?,
            };
            let digest = Digest(reader.take(32)?.try_into().expect("32 bytes"));
            entries.insert(path, (stat, digest));
        }
        if !reader.bytes.is_empty() {
            return Err(CacheRefused::Damaged);
        }
        Ok(StatCache {
            scan_started_ns,
            entries,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest of the file at `path` (relative to the tree), if the cache has it with this
    /// very stat and the entry is not racy.
    pub fn lookup(&self, path: &[u8], stat: &FileStat) -> Option<Digest> {
        let (cached, digest) = self.entries.get(path)?;
        let safe_before = self.scan_started_ns.saturating_sub(RACY_MARGIN_NS);
        (cached == stat && stat.mtime_ns < safe_before && stat.ctime_ns < safe_before)
            .then_some(*digest)
    }

    /// Whether the cache had an entry for `path` at all (whatever its stat).
    pub fn knows(&self, path: &[u8]) -> bool {
        self.entries.contains_key(path)
    }

    /// Drop the entries of `paths` from the cache at `cache_file`, so that the next plan reads
    /// those files again: apply found them different from what plan said. A cache that cannot
    /// be read is removed.
    pub fn forget(cache_file: &Path, paths: &[Vec<u8>]) -> std::io::Result<()> {
        let Ok(mut cache) = StatCache::load(cache_file) else {
            return std::fs::remove_file(cache_file);
        };
        for path in paths {
            cache.entries.remove(path);
        }
        StatCache::save(
            cache_file,
            cache.scan_started_ns,
            cache
                .entries
                .iter()
                .map(|(p, (stat, digest))| (p.as_slice(), *stat, *digest)),
        )
    }

    /// Write a cache of `entries` made by a scan that started at `scan_started_ns`, atomically.
    pub fn save<'a>(
        path: &Path,
        scan_started_ns: i64,
        entries: impl ExactSizeIterator<Item = (&'a [u8], FileStat, Digest)>,
    ) -> std::io::Result<()> {
        let mut body = Vec::with_capacity(MAGIC.len() + 16 + entries.len() * 120);
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&scan_started_ns.to_le_bytes());
        body.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (name, stat, digest) in entries {
            let len = u32::try_from(name.len()).map_err(std::io::Error::other)?;
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(name);
            body.extend_from_slice(&stat.size.to_le_bytes());
            body.extend_from_slice(&stat.mtime_ns.to_le_bytes());
            body.extend_from_slice(&stat.ctime_ns.to_le_bytes());
            body.extend_from_slice(&stat.inode.to_le_bytes());
            body.extend_from_slice(&stat.device.to_le_bytes());
            body.extend_from_slice(&digest.0);
        }
        let sum = blake3::hash(&body);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&body)?;
        tmp.write_all(sum.as_bytes())?;
        tmp.as_file().sync_data()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CacheRefused> {
        if self.bytes.len() < n {
            return Err(CacheRefused::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, CacheRefused> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, CacheRefused> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn i64(&mut self) -> Result<i64, CacheRefused> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mtime_ns: i64, ctime_ns: i64) -> FileStat {
        FileStat {
            size: 5,
            mtime_ns,
            ctime_ns,
            inode: 42,
            device: 7,
        }
    }

    const T: i64 = 1_700_000_000_000_000_000;

    fn saved(dir: &Path, started: i64, entries: &[(&str, FileStat, Digest)]) -> StatCache {
        let path = dir.join("c.stat");
        StatCache::save(
            &path,
            started,
            entries.iter().map(|(n, s, d)| (n.as_bytes(), *s, *d)),
        )
        .unwrap();
        StatCache::load(&path).unwrap()
    }

    #[test]
    fn a_saved_cache_reads_back_and_matches_only_the_same_stat() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of_bytes(b"hello");
        let old = stat(T - 60_000_000_000, T - 60_000_000_000);
        let cache = saved(dir.path(), T, &[("a/b.txt", old, digest)]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.lookup(b"a/b.txt", &old), Some(digest));
        assert_eq!(cache.lookup(b"a/c.txt", &old), None);
        for changed in [
            FileStat { size: 6, ..old },
            FileStat {
                mtime_ns: old.mtime_ns + 1,
                ..old
            },
            FileStat {
                ctime_ns: old.ctime_ns + 1,
                ..old
            },
            FileStat { inode: 43, ..old },
            FileStat { device: 8, ..old },
        ] {
            assert_eq!(cache.lookup(b"a/b.txt", &changed), None, "{changed:?}");
        }
        assert!(cache.knows(b"a/b.txt"));
        assert!(StatCache::load(&dir.path().join("none"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_entry_not_safely_older_than_the_scan_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of_bytes(b"x");
        let safely_old = T - RACY_MARGIN_NS - 1;
        let just_inside = T - RACY_MARGIN_NS + 1;
        let entries = [
            ("old", stat(safely_old, safely_old), d),
            ("racy-mtime", stat(just_inside, safely_old), d),
            ("racy-ctime", stat(safely_old, just_inside), d),
            ("after-start", stat(T + 5, T + 5), d),
            ("future", stat(T + 3_600_000_000_000, safely_old), d),
        ];
        let cache = saved(dir.path(), T, &entries);
        let trusted: Vec<&str> = entries
            .iter()
            .filter(|(n, s, _)| cache.lookup(n.as_bytes(), s).is_some())
            .map(|(n, _, _)| *n)
            .collect();
        assert_eq!(trusted, ["old"]);
        // A later scan that rehashed the racy file trusts it when it is old enough for that one.
        let later = saved(
            dir.path(),
            T + 10_000_000_000,
            &[("racy-ctime", stat(safely_old, just_inside), d)],
        );
        assert_eq!(
            later.lookup(b"racy-ctime", &stat(safely_old, just_inside)),
            Some(d)
        );
    }

    #[test]
    fn a_damaged_or_truncated_cache_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.stat");
        let d = Digest::of_bytes(b"x");
        let entries = [("a", stat(1, 1), d), ("b", stat(2, 2), d)];
        StatCache::save(
            &path,
            T,
            entries.iter().map(|(n, s, d)| (n.as_bytes(), *s, *d)),
        )
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        let middle = good.len() / 2;
        flipped[middle] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(StatCache::load(&path), Err(CacheRefused::Damaged)));
        std::fs::write(&path, &good[..good.len() - 40]).unwrap();
        assert!(StatCache::load(&path).is_err());
        std::fs::write(&path, b"vmbuild stat cache v1\n").unwrap();
        assert!(matches!(
            StatCache::load(&path),
            Err(CacheRefused::Truncated)
        ));
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(StatCache::load(&path), Err(CacheRefused::Foreign)));
        std::fs::write(&path, &good).unwrap();
        assert_eq!(StatCache::load(&path).unwrap().len(), 2);
        StatCache::forget(&path, &[b"a".to_vec()]).unwrap();
        let forgotten = StatCache::load(&path).unwrap();
        assert_eq!(forgotten.len(), 1);
        assert!(!forgotten.knows(b"a") && forgotten.knows(b"b"));
        std::fs::write(&path, b"garbage").unwrap();
        StatCache::forget(&path, &[b"a".to_vec()]).unwrap();
        assert!(!path.exists(), "a cache that cannot be read is removed");
    }
}

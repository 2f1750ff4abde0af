//! Plan's read-only walk of a file tree: which entries the `include`/`exclude` globs select, the
//! digest of every selected file (from the stat cache where it can be trusted, hashed in
//! parallel otherwise), and the fingerprint of the whole selection.
//!
//! Globs match paths relative to `from`, with `/` as a literal separator (`*.bam` matches at
//! the top only, `**/*.bam` in every folder). An excluded folder is not walked at all; so is the
//! content of a folder excluded with `folder/**` (the folder itself stays, empty). Without
//! `include` everything not excluded is selected; with it, the entries matching an `include`
//! glob, and the folders on their way.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use super::stat_cache::{now_ns, CacheRefused, FileStat, StatCache};
use crate::hash::Digest;

/// Files are read this much at a time to be hashed; from 1 MiB on, a buffer is hashed on
/// several threads.
pub const LARGE_FILE: u64 = 8 << 20;

/// Versions the framing of the fingerprint.
const FINGERPRINT_DOMAIN: &[u8] = b"vmbuild files fingerprint v1\0";

/// The permission bits kept: setuid and setgid are dropped, since the copy is owned by whoever
/// runs apply (root), not by the file's owner.
pub const KEPT_MODE: u32 = 0o1777;

/// What an entry of the tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, digest: Digest },
    Dir,
    Symlink { target: PathBuf },
}

/// One selected entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to `from`.
    pub path: PathBuf,
    pub kind: Kind,
    /// Permission bits (`KEPT_MODE`).
    pub mode: u32,
    /// Seconds and nanoseconds; copied, not part of the fingerprint.
    pub mtime: (i64, i64),
}

/// The glob lists of a `files` block, compiled.
pub struct Globs {
    include: GlobSet,
    include_count: usize,
    exclude: GlobSet,
    /// `folder/**` excludes, as `folder`: such a folder is kept but not walked. Index into the
    /// exclude list.
    contents: GlobSet,
    contents_index: Vec<usize>,
    exclude_patterns: Vec<String>,
}

/// A glob that does not compile: which list, its index, why.
#[derive(Debug)]
pub struct BadGlob {
    pub list: &'static str,
    pub index: usize,
    pub error: globset::Error,
}

fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

impl Globs {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Globs, Vec<BadGlob>> {
        let mut bad = Vec::new();
        let mut set = |list: &'static str, patterns: &[String]| {
            let mut builder = GlobSetBuilder::new();
            for (index, pattern) in patterns.iter().enumerate() {
                match glob(pattern) {
                    Ok(g) => {
                        builder.add(g);
                    }
                    Err(error) => bad.push(BadGlob { list, index, error }),
                }
            }
            builder.build()
        };
        let include_set = set("include", include);
        let exclude_set = set("exclude", exclude);
        let mut contents = GlobSetBuilder::new();
        let mut contents_index = Vec::new();
        for (i, pattern) in exclude.iter().enumerate() {
            if let Some(folder) = pattern.strip_suffix("/**") {
                if let Ok(g) = glob(folder) {
                    contents.add(g);
                    contents_index.push(i);
                }
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        let (Ok(include_set), Ok(exclude_set), Ok(contents)) =
            (include_set, exclude_set, contents.build())
        else {
            unreachable!("a set of valid globs builds");
        };
        Ok(Globs {
            include: include_set,
            include_count: include.len(),
            exclude: exclude_set,
            contents,
            contents_index,
            exclude_patterns: exclude.to_vec(),
        })
    }
}

/// Why a tree could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("`{0}` does not exist")]
    Missing(PathBuf),
    #[error("`{0}` is not a folder")]
    NotAFolder(PathBuf),
    #[error("cannot read `{path}`: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` kept changing while it was read")]
    Unstable(PathBuf),
}

/// What a scan found.
#[derive(Debug)]
pub struct Scan {
    /// The tree's folder, absolute.
    pub root: PathBuf,
    /// Sorted by path (bytes): a folder before what it holds.
    pub entries: Vec<Entry>,
    /// Per exclude glob, in recipe order: how many entries it left out (a folder counts once).
    pub excluded: Vec<(String, u64)>,
    /// Per include glob, whether it matched anything; per exclude glob, the same.
    pub include_matched: Vec<bool>,
    pub exclude_matched: Vec<bool>,
    /// Fifos, sockets and device nodes, which are not copied (and entries gone since the walk).
    pub special: u64,
    /// Files read and hashed by this scan.
    pub hashed: u64,
    /// Files whose digest came from the stat cache.
    pub from_cache: u64,
    /// The stat cache this scan used and wrote (plans against a store have one).
    pub stat_cache: Option<PathBuf>,
    /// Why the stat cache was not used, when it was refused, or could not be written.
    pub cache_note: Option<String>,
    pub fingerprint: Digest,
}

impl Scan {
    pub fn files(&self) -> impl Iterator<Item = (&Entry, u64, &Digest)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            Kind::File { size, digest } => Some((e, *size, digest)),
            _ => None,
        })
    }

    pub fn count(&self, wanted: fn(&Kind) -> bool) -> u64 {
        self.entries.iter().filter(|e| wanted(&e.kind)).count() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.files().map(|(_, size, _)| size).sum()
    }
}

/// A walked entry, before it is inspected.
struct Candidate {
    relative: PathBuf,
    /// Selected itself (not only as a folder on the way to something selected).
    selected: bool,
}

/// The digest of a file's content. Opens without following a symbolic link.
pub fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok(hash_reader(file, size)?.0)
}

/// The digest of everything `reader` yields and its length; large contents are hashed on
/// several threads, a big buffer at a time. Not memory-mapped: a file of the user's tree that
/// someone truncates while it is mapped would kill the process (SIGBUS) instead of failing.
pub fn hash_reader(mut reader: impl std::io::Read, size: u64) -> std::io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; size.clamp(1 << 16, LARGE_FILE) as usize];
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            match reader.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        if filled >= 1 << 20 {
            hasher.update_rayon(&buffer[..filled]);
        } else {
            hasher.update(&buffer[..filled]);
        }
    }
    Ok((hasher.finalize().into(), hasher.count()))
}

fn unreadable(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Unreadable {
        path: path.to_path_buf(),
        source,
    }
}

/// Walk `root`, select with `globs`, and digest the selection, reading only files the stat
/// cache at `cache` (if any) cannot vouch for; then write the cache anew.
pub fn scan(root: &Path, globs: &Globs, cache: Option<&Path>) -> Result<Scan, ScanError> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ScanError::Missing(root.to_path_buf()))
        }
        Err(e) => return Err(unreadable(root)(e)),
    };
    if !meta.is_dir() {
        return Err(ScanError::NotAFolder(root.to_path_buf()));
    }
    let root = std::fs::canonicalize(root).map_err(unreadable(root))?;
    // Before anything is read: entries younger than this are racy for the next scan.
    let started = now_ns();
    let mut cache_note = None;
    let old_cache = match cache {
        Some(path) => StatCache::load(path).unwrap_or_else(|refused: CacheRefused| {
            cache_note = Some(format!(
                "the stat cache was ignored ({refused}): every file was hashed"
            ));
            StatCache::default()
        }),
        None => StatCache::default(),
    };

    let mut excluded = vec![0u64; globs.exclude_patterns.len()];
    let mut exclude_matched = vec![false; globs.exclude_patterns.len()];
    let mut include_matched = vec![false; globs.include_count];
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut hits = Vec::new();
    let mut walk = walkdir::WalkDir::new(&root)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    while let Some(next) = walk.next() {
        let entry = next.map_err(|e| {
            let path = e.path().unwrap_or(&root).to_path_buf();
            ScanError::Unreadable {
                path,
                source: e.into(),
            }
        })?;
        let relative = entry
            .path()
            .strip_prefix(&root)
            .expect("walked below the root")
            .to_path_buf();
        let is_dir = entry.file_type().is_dir();
        let candidate = globset::Candidate::new(&relative);
        globs.exclude.matches_candidate_into(&candidate, &mut hits);
        if let Some(&first) = hits.first() {
            excluded[first] += 1;
            for &i in &hits {
                exclude_matched[i] = true;
            }
            if is_dir {
                walk.skip_current_dir();
            }
            continue;
        }
        if is_dir {
            globs.contents.matches_candidate_into(&candidate, &mut hits);
            if let Some(&first) = hits.first() {
                excluded[globs.contents_index[first]] += 1;
                for &i in &hits {
                    exclude_matched[globs.contents_index[i]] = true;
                }
                walk.skip_current_dir();
            }
        }
        let selected = if globs.include_count == 0 {
            true
        } else {
            globs.include.matches_candidate_into(&candidate, &mut hits);
            for &i in &hits {
                include_matched[i] = true;
            }
            !hits.is_empty()
        };
        candidates.push(Candidate { relative, selected });
    }

    // Folders on the way to a selected entry are part of the tree too.
    let mut needed: BTreeSet<&Path> = BTreeSet::new();
    if globs.include_count > 0 {
        for c in candidates.iter().filter(|c| c.selected) {
            let mut parent = c.relative.parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                if !needed.insert(p) {
                    break;
                }
                parent = p.parent();
            }
        }
    }
    let hashed = AtomicU64::new(0);
    let from_cache = AtomicU64::new(0);
    let special = AtomicU64::new(0);
    let inspected: Vec<Option<(Entry, Option<FileStat>)>> = candidates
        .par_iter()
        .filter(|c| c.selected || needed.contains(c.relative.as_path()))
        .map(|c| {
            let inspected = inspect(&root, c, &old_cache, &hashed, &from_cache)?;
            if inspected.is_none() {
                special.fetch_add(1, Ordering::Relaxed);
            }
            Ok(inspected)
        })
        .collect::<Result<_, ScanError>>()?;
    let mut entries = Vec::with_capacity(inspected.len());
    let mut fresh_cache: Vec<(Vec<u8>, FileStat, Digest)> = Vec::new();
    for (entry, stat) in inspected.into_iter().flatten() {
        if let (Some(stat), Kind::File { digest, .. }) = (stat, &entry.kind) {
            fresh_cache.push((entry.path.as_os_str().as_bytes().to_vec(), stat, *digest));
        }
        entries.push(entry);
    }
    // A folder whose only selected content was a special file, or vanished, stays: it was
    // selected as the way to something.
    entries.par_sort_unstable_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
    let hashed = hashed.into_inner();
    // Nothing was read and the cache holds exactly these files: writing it again would only
    // cost time (a million entries are tens of megabytes).
    let unchanged = hashed == 0 && fresh_cache.len() == old_cache.len() && cache_note.is_none();
    if let Some(path) = cache.filter(|_| !unchanged) {
        let saved = StatCache::save(
            path,
            started,
            fresh_cache.iter().map(|(p, s, d)| (p.as_slice(), *s, *d)),
        );
        if let Err(e) = saved {
            cache_note.get_or_insert(format!("the stat cache could not be written: {e}"));
        }
    }
    let fingerprint = fingerprint(&entries);
    Ok(Scan {
        root,
        entries,
        excluded: globs
            .exclude_patterns
            .iter()
            .cloned()
            .zip(excluded)
            .collect(),
        include_matched,
        exclude_matched,
        special: special.into_inner(),
        hashed,
        from_cache: from_cache.into_inner(),
        stat_cache: cache.map(Path::to_path_buf),
        cache_note,
        fingerprint,
    })
}

/// `lstat` one walked entry and, for a file, find its digest; `None` for a special file or an
/// entry gone since the walk. Also returns the stat a file's digest belongs to, for the cache.
fn inspect(
    root: &Path,
    candidate: &Candidate,
    cache: &StatCache,
    hashed: &AtomicU64,
    from_cache: &AtomicU64,
) -> Result<Option<(Entry, Option<FileStat>)>, ScanError> {
    let full = root.join(&candidate.relative);
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(&full)(e)),
    };
    let entry = |kind| Entry {
        path: candidate.relative.clone(),
        kind,
        mode: meta.mode() & KEPT_MODE,
        mtime: (meta.mtime(), meta.mtime_nsec()),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Ok(Some((entry(Kind::Dir), None)));
    }
    if ft.is_symlink() {
        let target = std::fs::read_link(&full).map_err(unreadable(&full))?;
        return Ok(Some((entry(Kind::Symlink { target }), None)));
    }
    if !ft.is_file() {
        return Ok(None);
    }
    let mut stat = FileStat::of(&meta);
    let name = candidate.relative.as_os_str().as_bytes();
    if let Some(digest) = cache.lookup(name, &stat) {
        from_cache.fetch_add(1, Ordering::Relaxed);
        return Ok(Some((
            entry(Kind::File {
                size: stat.size,
                digest,
            }),
            Some(stat),
        )));
    }
    // Hash, and make sure the file did not change while it was read.
    for _ in 0..3 {
        let digest = hash_file(&full).map_err(unreadable(&full))?;
        let after = std::fs::symlink_metadata(&full).map_err(unreadable(&full))?;
        let now = FileStat::of(&after);
        if now == stat && after.file_type().is_file() {
            hashed.fetch_add(1, Ordering::Relaxed);
            let mut e = entry(Kind::File {
                size: stat.size,
                digest,
            });
            e.mode = after.mode() & KEPT_MODE;
            return Ok(Some((e, Some(stat))));
        }
        stat = now;
    }
    Err(ScanError::Unstable(full))
}

/// The digest of a selection: every entry's path, type, permission bits and content (size and
/// digest of a file, target of a symlink), framed unambiguously, in order.
pub fn fingerprint(entries: &[Entry]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(FINGERPRINT_DOMAIN);
    hasher.update(&(entries.len() as u64).to_le_bytes());
    let put = |hasher: &mut blake3::Hasher, bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for entry in entries {
        put(&mut hasher, entry.path.as_os_str().as_bytes());
        hasher.update(&entry.mode.to_le_bytes());
        match &entry.kind {
            Kind::File { size, digest } => {
                hasher.update(b"f");
                hasher.update(&size.to_le_bytes());
                hasher.update(&digest.0);
            }
            Kind::Dir => {
                hasher.update(b"d");
            }
            Kind::Symlink { target } => {
                hasher.update(b"l");
                put(&mut hasher, target.as_os_str().as_bytes());
            }
        }
    }
    hasher.finalize().into()
}

/// A path for people and for `files.tsv`: tabs, newlines, backslashes and bytes that are not
/// UTF-8 escaped, so that one line is one entry.
pub fn escaped(path: &OsStr) -> String {
    let mut out = String::new();
    for chunk in path.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn paths(scan: &Scan) -> Vec<String> {
        scan.entries
            .iter()
            .map(|e| e.path.display().to_string())
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn excludes_prune_and_includes_keep_the_folders_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "a.bam", "top bam");
        write(root, "data/x.bam", "bam");
        write(root, "data/x.bai", "index");
        write(root, "data/deep/y.txt", "y");
        write(root, "cache/junk", "j");
        write(root, "logs/old/z.log", "z");
        write(root, "README", "r");
        let globs = Globs::new(&[], &strings(&["**/*.bam", "cache", "logs/**"])).unwrap();
        let scan = scan(root, &globs, None).unwrap();
        assert_eq!(
            paths(&scan),
            [
                "README",
                "data",
                "data/deep",
                "data/deep/y.txt",
                "data/x.bai",
                "logs"
            ]
        );
        assert_eq!(
            scan.excluded,
            [
                ("**/*.bam".to_string(), 2),
                ("cache".to_string(), 1),
                ("logs/**".to_string(), 1)
            ]
        );
        assert_eq!(scan.exclude_matched, [true, true, true]);
        assert_eq!(scan.hashed, 3);

        let globs = Globs::new(&strings(&["data/**/*.txt", "README"]), &[]).unwrap();
        let scan = super::scan(root, &globs, None).unwrap();
        assert_eq!(
            paths(&scan),
            ["README", "data", "data/deep", "data/deep/y.txt"]
        );
        assert_eq!(scan.include_matched, [true, true]);

        let globs = Globs::new(&strings(&["*.txt"]), &strings(&["*.bai"])).unwrap();
        let scan = super::scan(root, &globs, None).unwrap();
        assert!(scan.entries.is_empty());
        assert_eq!(scan.include_matched, [false]);
        assert_eq!(
            scan.exclude_matched,
            [false],
            "`*.bai` matches at the top only"
        );
    }

    #[test]
    fn the_fingerprint_follows_content_modes_and_links_not_times() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "a/file", "one");
        std::os::unix::fs::symlink("file", root.join("a/link")).unwrap();
        let globs = Globs::new(&[], &[]).unwrap();
        let first = scan(root, &globs, None).unwrap().fingerprint;
        let again = || scan(root, &globs, None).unwrap().fingerprint;
        let file = std::fs::File::options()
            .write(true)
            .open(root.join("a/file"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(again(), first, "an mtime is not content");
        std::fs::set_permissions(root.join("a/file"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let executable = again();
        assert_ne!(executable, first);
        std::fs::remove_file(root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("elsewhere", root.join("a/link")).unwrap();
        assert_ne!(again(), executable);
        std::fs::write(root.join("a/file"), "two").unwrap();
        assert_ne!(again(), executable);
    }

    #[test]
    fn the_stat_cache_spares_unchanged_files_and_catches_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        for i in 0..20 {
            write(&root, &format!("f{i}"), &format!("file {i}"));
        }
        // Files old enough not to be racy.
        for i in 0..20 {
            let f = std::fs::File::options()
                .write(true)
                .open(root.join(format!("f{i}")))
                .unwrap();
            f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        }
        let cache = dir.path().join("cache/tree.stat");
        let globs = Globs::new(&[], &[]).unwrap();
        let first = scan(&root, &globs, Some(&cache)).unwrap();
        // The ctimes are new: this scan's entries are racy, so the next one hashes again ...
        assert_eq!(first.hashed, 20);
        let second = scan(&root, &globs, Some(&cache)).unwrap();
        assert_eq!((second.hashed, second.from_cache), (20, 0));
        // ... unless the files' ctimes are older than the last scan's start by the margin.
        std::thread::sleep(std::time::Duration::from_nanos(
            super::super::stat_cache::RACY_MARGIN_NS as u64 + 100_000_000,
        ));
        let third = scan(&root, &globs, Some(&cache)).unwrap();
        assert_eq!((third.hashed, third.from_cache), (20, 0));
        let fourth = scan(&root, &globs, Some(&cache)).unwrap();
        assert_eq!((fourth.hashed, fourth.from_cache), (0, 20));
        assert_eq!(fourth.fingerprint, first.fingerprint);
        // A changed file is hashed again: same size, new content.
        std::fs::write(root.join("f3"), "file X").unwrap();
        let fifth = scan(&root, &globs, Some(&cache)).unwrap();
        assert_eq!((fifth.hashed, fifth.from_cache), (1, 19));
        assert_ne!(fifth.fingerprint, first.fingerprint);
        // A damaged cache is ignored, not trusted.
        let mut bytes = std::fs::read(&cache).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&cache, &bytes).unwrap();
        let sixth = scan(&root, &globs, Some(&cache)).unwrap();
        assert_eq!((sixth.hashed, sixth.from_cache), (20, 0));
        assert!(sixth.cache_note.unwrap().contains("damaged"));
        assert_eq!(sixth.fingerprint, fifth.fingerprint);
    }

    #[test]
    fn paths_are_escaped_one_entry_a_line() {
        assert_eq!(escaped(OsStr::new("a\tb\nc\\d")), "a\\tb\\nc\\\\d");
        assert_eq!(escaped(OsStr::from_bytes(b"x\xffy")), "x\\xffy");
    }
}

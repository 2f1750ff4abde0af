//! Multi-pattern search of large files for the leak scan: one Aho-Corasick automaton over all
//! forbidden strings, fed in large chunks. A match may straddle two chunks: the last
//! `longest - 1` bytes of what came before are searched again together with the start of the
//! next chunk, so every occurrence is found exactly once, wherever the chunks fall.
//!
//! Every occurrence is reported, also of a string inside another (overlapping search). The
//! automaton alone reads about 0.4 GB/s; for up to a few dozen strings (a recipe's `forbid`),
//! the crate's SIMD searcher (Teddy, `aho_corasick::packed`) runs first and finds candidates at
//! many GB/s, and the automaton searches only around each of them.
//!
//! Holes of a sparse file (`SEEK_HOLE`) are known zeros: they are not read, but the zeros at
//! their two edges are searched like data, so a match that begins or ends in a hole is still
//! found. Every other byte of the file is read.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use aho_corasick::{packed, AhoCorasick, MatchKind};

/// Bytes read per chunk.
pub const CHUNK: usize = 8 << 20;
/// How many occurrences are kept with their offsets (the rest are only counted).
pub const KEEP: usize = 1000;

/// An occurrence of pattern `pattern` starting at byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    pub offset: u64,
    pub pattern: usize,
}

/// The occurrences found in one file or buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The first [`KEEP`] occurrences found (in reading order), sorted by offset.
    pub hits: Vec<Hit>,
    /// Every occurrence, kept or not.
    pub total: u64,
}

/// What scanning a file read.
#[derive(Debug, Clone)]
pub struct FileScan {
    /// The file's size: every byte of it was searched.
    pub bytes: u64,
    /// Bytes actually read (the rest are holes, known zeros).
    pub data_bytes: u64,
    pub seconds: f64,
    pub found: Found,
}

/// The automaton of a set of forbidden strings.
pub struct Matcher {
    automaton: AhoCorasick,
    /// Finds where occurrences start, faster than the automaton, when the CPU and the number
    /// of strings allow (leftmost-first, so not every occurrence: see [`Stream::feed`]).
    fast: Option<packed::Searcher>,
    longest: usize,
}

impl Matcher {
    /// `patterns` must not be empty, nor hold an empty pattern.
    pub fn new<P: AsRef<[u8]>>(patterns: &[P]) -> Matcher {
        Matcher::build(patterns, true)
    }

    fn build<P: AsRef<[u8]>>(patterns: &[P], fast: bool) -> Matcher {
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(patterns)
            .expect("a set of forbidden strings fits an automaton");
        let fast = fast
            .then(|| {
                packed::Config::new()
                    .match_kind(packed::MatchKind::LeftmostFirst)
                    .builder()
                    .extend(patterns)
                    .build()
            })
            .flatten();
        let longest = patterns.iter().map(|p| p.as_ref().len()).max().unwrap_or(1);
        Matcher {
            automaton,
            fast,
            longest,
        }
    }

    /// Whether the SIMD searcher is in use (for the log).
    pub fn is_packed(&self) -> bool {
        self.fast.is_some()
    }

    /// Bytes carried from one chunk to the next.
    fn overlap(&self) -> usize {
        self.longest.saturating_sub(1)
    }

    pub fn stream(&self) -> Stream<'_> {
        Stream {
            matcher: self,
            carry: Vec::with_capacity(self.overlap() * 2),
            next: 0,
            found: Found::default(),
        }
    }

    /// Every occurrence in `bytes`.
    pub fn scan_bytes(&self, bytes: &[u8]) -> Found {
        let mut stream = self.stream();
        stream.feed(bytes);
        stream.finish()
    }

    /// Every occurrence in the file at `path`, read in chunks of `chunk` bytes, holes
    /// skipped. `cancelled` is asked between chunks; `None` when it said yes.
    pub fn scan_file(
        &self,
        path: &Path,
        chunk: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> std::io::Result<Option<FileScan>> {
        let started = Instant::now();
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut buffer = vec![0u8; chunk.max(1)];
        let mut stream = self.stream();
        let mut data_bytes = 0u64;
        let mut at = 0u64;
        while at < size {
            let data = seek(&file, at, nix::unistd::Whence::SeekData)?.unwrap_or(size);
            if data > at {
                stream.zeros(data - at);
            }
            if data >= size {
                break;
            }
            let hole = seek(&file, data, nix::unistd::Whence::SeekHole)?
                .unwrap_or(size)
                .min(size);
            let mut pos = data;
            while pos < hole {
                if cancelled() {
                    return Ok(None);
                }
                let want = ((hole - pos) as usize).min(buffer.len());
                let n = file.read_at(&mut buffer[..want], pos)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was scanned",
                    ));
                }
                stream.feed(&buffer[..n]);
                pos += n as u64;
                data_bytes += n as u64;
            }
            at = hole;
        }
        Ok(Some(FileScan {
            bytes: size,
            data_bytes,
            seconds: started.elapsed().as_secs_f64(),
            found: stream.finish(),
        }))
    }
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`: `None` past the last data (ENXIO). A file system
/// without hole support reports the whole file as data, which is still correct.
fn seek(file: &File, offset: u64, whence: nix::unistd::Whence) -> std::io::Result<Option<u64>> {
    match nix::unistd::lseek(file, offset as i64, whence) {
        Ok(at) => Ok(Some(at as u64)),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

/// A search over bytes that arrive in pieces, each following the last.
pub struct Stream<'m> {
    matcher: &'m Matcher,
    /// The last `overlap` bytes fed (fewer at the start).
    carry: Vec<u8>,
    /// The offset of the next byte to come.
    next: u64,
    found: Found,
}

impl Stream<'_> {
    fn record(&mut self, offset: u64, pattern: usize) {
        self.found.total += 1;
        if self.found.hits.len() < KEEP {
            self.found.hits.push(Hit { offset, pattern });
        }
    }

    /// The next bytes of the input.
    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let overlap = self.matcher.overlap();
        let automaton = &self.matcher.automaton;
        // Matches that start in the carried bytes and end in `data`: they are at most
        // `longest` long, so they end within its first `overlap` bytes.
        if !self.carry.is_empty() {
            let carried = self.carry.len();
            let mut seam = self.carry.clone();
            seam.extend_from_slice(&data[..overlap.min(data.len())]);
            let base = self.next - carried as u64;
            let seam_hits: Vec<(usize, usize)> = automaton
                .find_overlapping_iter(&seam)
                .filter(|m| m.start() < carried && m.end() > carried)
                .map(|m| (m.start(), m.pattern().as_usize()))
                .collect();
            for (start, pattern) in seam_hits {
                self.record(base + start as u64, pattern);
            }
        }
        let base = self.next;
        let hits: Vec<(usize, usize)> = match &self.matcher.fast {
            None => automaton
                .find_overlapping_iter(data)
                .map(|m| (m.start(), m.pattern().as_usize()))
                .collect(),
            // A leftmost-first match [s, e) hides the occurrences that start inside it (another
            // string at s, or one that begins within it), and nothing else: the automaton
            // searches from s to e + overlap for every occurrence starting before e.
            Some(fast) => {
                let mut hits = Vec::new();
                for found in fast.find_iter(data) {
                    let (start, end) = (found.start(), found.end());
                    let window = &data[start..(end + overlap).min(data.len())];
                    hits.extend(
                        automaton
                            .find_overlapping_iter(window)
                            .filter(|m| m.start() < end - start)
                            .map(|m| (start + m.start(), m.pattern().as_usize())),
                    );
                }
                hits
            }
        };
        for (start, pattern) in hits {
            self.record(base + start as u64, pattern);
        }
        self.next += data.len() as u64;
        if data.len() >= overlap {
            self.carry.clear();
            self.carry.extend_from_slice(&data[data.len() - overlap..]);
        } else {
            self.carry.extend_from_slice(data);
            let excess = self.carry.len().saturating_sub(overlap);
            self.carry.drain(..excess);
        }
    }

    /// `len` zero bytes (a hole). Only the zeros near its edges can be part of a match that
    /// also holds other bytes, so a long hole is not searched in the middle.
    pub fn zeros(&mut self, len: u64) {
        let edge = self.matcher.overlap() as u64;
        let zeros = vec![0u8; edge.min(len).max(1) as usize];
        if len <= 2 * edge {
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                self.feed(&zeros[..n]);
                left -= n as u64;
            }
            return;
        }
        self.feed(&zeros[..edge as usize]);
        // What was carried is zeros, as are the bytes before the hole's last `edge`.
        self.next += len - 2 * edge;
        self.feed(&zeros[..edge as usize]);
    }

    pub fn finish(mut self) -> Found {
        self.found.hits.sort();
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// Every occurrence of every pattern, the slow way.
    fn naive(haystack: &[u8], patterns: &[&[u8]]) -> Vec<Hit> {
        let mut out = Vec::new();
        for (p, pattern) in patterns.iter().enumerate() {
            for start in 0..=haystack.len().saturating_sub(pattern.len()) {
                if haystack[start..].starts_with(pattern) {
                    out.push(Hit {
                        offset: start as u64,
                        pattern: p,
                    });
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_match_across_a_chunk_boundary_is_found_once_whatever_the_chunk_size() {
        let patterns: [&[u8]; 3] = [b"hunter2-secret", b"alice@example.org", b"secret"];
        let mut haystack = vec![b'.'; 10_000];
        for (at, p) in [(0usize, 0usize), (4090, 0), (4110, 1), (8190, 2), (9983, 1)] {
            haystack[at..at + patterns[p].len()].copy_from_slice(patterns[p]);
        }
        let expected = naive(&haystack, &patterns);
        assert_eq!(expected.len(), 7, "{expected:?}"); // "secret" inside each "hunter2-secret"
        for fast in [true, false] {
            let matcher = Matcher::build(&patterns, fast);
            assert_eq!(
                matcher.is_packed(),
                fast && Matcher::new(&patterns).is_packed()
            );
            for chunk in [1, 2, 3, 5, 7, 13, 16, 17, 4096, 4097, 10_000] {
                let mut stream = matcher.stream();
                for piece in haystack.chunks(chunk) {
                    stream.feed(piece);
                }
                let found = stream.finish();
                assert_eq!(found.hits, expected, "chunk {chunk}, packed {fast}");
                assert_eq!(found.total, expected.len() as u64);
            }
        }
    }

    #[test]
    fn a_file_is_read_in_chunks_and_its_holes_edges_are_searched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.raw");
        let mut file = std::fs::File::create(&path).unwrap();
        let size = 64u64 << 20;
        file.set_len(size).unwrap();
        // A pattern across a chunk boundary inside data, and one straddling data and a hole
        // (its zero bytes in the hole), and one at the very end.
        let pattern_a: &[u8] = b"forbidden-value";
        let pattern_b: &[u8] = b"tail\0\0\0\0";
        let blocks = [(1u64 << 20, 8u64 << 20), (20 << 20, 1 << 20)];
        let mut image = vec![0u8; size as usize];
        for (start, len) in blocks {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 23) as u8).collect();
            image[start as usize..(start + len) as usize].copy_from_slice(&bytes);
        }
        let plant = |image: &mut Vec<u8>, at: u64, bytes: &[u8]| {
            image[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        plant(&mut image, (1 << 20) + CHUNK as u64 / 2 - 5, pattern_a);
        // Ends the second data block: its zeros are the hole after it.
        plant(&mut image, (21 << 20) - 4, &pattern_b[..4]);
        plant(&mut image, size - pattern_a.len() as u64, pattern_a);
        for (start, len) in blocks {
            file.seek(SeekFrom::Start(start)).unwrap();
            file.write_all(&image[start as usize..(start + len) as usize])
                .unwrap();
        }
        file.seek(SeekFrom::Start(size - pattern_a.len() as u64))
            .unwrap();
        file.write_all(pattern_a).unwrap();
        drop(file);
        let patterns = [pattern_a, pattern_b];
        let expected = naive(&image, &patterns);
        assert_eq!(expected.len(), 3, "{expected:?}");
        for fast in [true, false] {
            let matcher = Matcher::build(&patterns, fast);
            let scan = matcher
                .scan_file(&path, CHUNK / 2, &|| false)
                .unwrap()
                .unwrap();
            assert_eq!(scan.found.hits, expected, "packed {fast}");
            assert_eq!(scan.bytes, size);
            assert!(
                scan.data_bytes < size / 2,
                "holes were read: {}",
                scan.data_bytes
            );
        }
    }

    #[test]
    fn overlapping_occurrences_of_strings_inside_others_are_all_found() {
        // A two-letter alphabet: occurrences overlap each other everywhere.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let haystack: Vec<u8> = (0..20_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state % 3 == 0 {
                    b'b'
                } else {
                    b'a'
                }
            })
            .collect();
        let patterns: [&[u8]; 5] = [b"abab", b"bab", b"aaaa", b"abbaab", b"aaaaaaab"];
        let expected = naive(&haystack, &patterns);
        assert!(expected.len() > 3000, "{}", expected.len());
        #[cfg(target_arch = "x86_64")]
        assert!(Matcher::new(&patterns).is_packed());
        for fast in [true, false] {
            let matcher = Matcher::build(&patterns, fast);
            for chunk in [3, 64, 4096, 20_000] {
                let mut stream = matcher.stream();
                for piece in haystack.chunks(chunk) {
                    stream.feed(piece);
                }
                let found = stream.finish();
                assert_eq!(
                    found.total,
                    expected.len() as u64,
                    "chunk {chunk}, packed {fast}"
                );
                assert_eq!(found.hits, expected[..KEEP.min(expected.len())]);
            }
        }
    }

    #[test]
    fn only_the_first_occurrences_keep_their_offsets() {
        let matcher = Matcher::new(&[b"abcd"]);
        let haystack = b"abcd".repeat(KEEP + 10);
        let found = matcher.scan_bytes(&haystack);
        assert_eq!(found.total, (KEEP + 10) as u64);
        assert_eq!(found.hits.len(), KEEP);
        assert_eq!(found.hits[1].offset, 4);
    }
}

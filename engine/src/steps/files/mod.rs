//! The `files` kind: a `files "NAME"` block, a local file tree (`from`, relative to the recipe
//! or absolute) copied into the VM at `to`, with `include`/`exclude` globs.
//!
//! Plan walks the tree read-only ([`scan`]) and puts one fingerprint of the whole selection into
//! the key (paths, types, permission bits, sizes, content digests, symlink targets). Files whose
//! stat is unchanged since the last plan are not read again ([`stat_cache`], under the store's
//! `cache/files/`); the others are hashed in parallel.
//!
//! Apply copies exactly the planned selection ([`copy`]), by reflink where the file systems
//! allow, verifying every file against its planned digest, so a tree that changed since plan
//! fails the step instead of being stored under a key it does not match. The output holds
//! `tree/` (the layer), `files.tsv` (a listing: path, size, digest, mode, symlink target) and
//! `report.json` (counts, bytes and what each `exclude` glob left out), which the build
//! manifest carries.

pub mod copy;
pub mod scan;
pub mod stat_cache;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::json;

use super::layers::Layer;
use super::{
    human_bytes, io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture,
};
use crate::diag::{Diagnostic, Span};
use crate::hash::Digest;
use crate::recipe::{FilesBlock, Named, Seg, SpanIndex};
use scan::{escaped, Globs, Kind, Scan, ScanError};

/// The folder of the output that is the layer.
const TREE_FOLDER: &str = "tree";
/// The listing of the copied tree, one entry a line.
pub const LISTING_FILE: &str = "files.tsv";
/// What the build manifest carries of the step.
const REPORT_FILE: &str = crate::exec::export::STEP_REPORT;

pub struct FilesStep {
    id: String,
    block: FilesBlock,
    spans: SpanIndex,
    scan: OnceLock<Arc<Scan>>,
}

impl FilesStep {
    pub fn new(named: &Named<FilesBlock>) -> FilesStep {
        FilesStep {
            id: format!("files.{}", named.name),
            block: named.block.clone(),
            spans: named.spans.clone(),
            scan: OnceLock::new(),
        }
    }

    /// The tree as a layer of the VM, at `to`.
    pub fn layer(named: &Named<FilesBlock>) -> Layer {
        let mut layer = Layer::new(
            format!("files.{}", named.name),
            named.block.to.clone(),
            Vec::new(),
        );
        layer.from = Some(TREE_FOLDER.into());
        layer
    }

    fn span(&self, path: &[Seg]) -> Span {
        self.spans
            .value(path)
            .or_else(|| self.spans.header.clone())
            .unwrap_or_else(|| Span::new(0, 0..0))
    }

    fn span_of_from(&self) -> Span {
        self.span(&[Seg::Key("from".into())])
    }

    fn glob_span(&self, list: &str, index: usize) -> Span {
        self.span(&[Seg::Key(list.into()), Seg::Index(index)])
    }

    /// The tree's folder on this machine.
    fn root(&self, recipe_dir: &Path) -> PathBuf {
        let from = Path::new(&self.block.from);
        if from.is_absolute() {
            from.to_path_buf()
        } else {
            recipe_dir.join(from)
        }
    }

    /// The stat cache of this tree with these globs: one file per (folder, globs), so that two
    /// blocks selecting differently from one tree do not overwrite each other's.
    fn cache_path(&self, cache_dir: &Path, root: &Path) -> PathBuf {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let mut identity = root.as_os_str().as_bytes().to_vec();
        for list in [&self.block.include, &self.block.exclude] {
            identity.push(0);
            identity.extend_from_slice(list.join("\0").as_bytes());
        }
        let name = &Digest::of_bytes(&identity).to_hex()[..32];
        cache_dir.join("files").join(format!("{name}.stat"))
    }

    fn scan_diagnostic(&self, error: ScanError) -> Diagnostic {
        let from = &self.block.from;
        let span = self.span_of_from();
        match error {
            ScanError::Missing(_) => {
                Diagnostic::error(format!("the folder `{from}` does not exist"))
                    .at(&span, "no such folder")
                    .help("a relative `from` is relative to the recipe's folder")
            }
            ScanError::NotAFolder(_) => Diagnostic::error(format!("`{from}` is not a folder"))
                .at(&span, "not a folder")
                .help("`from` names a folder, whose content is copied to `to`"),
            ScanError::Unreadable { path, source } => {
                Diagnostic::error(format!("cannot read `{}`: {source}", path.display()))
                    .at(&span, "in this tree")
                    .help("make it readable, or leave it out with `exclude`")
            }
            ScanError::Unstable(path) => Diagnostic::error(format!(
                "`{}` kept changing while plan read it",
                path.display()
            ))
            .at(&span, "in this tree")
            .help("plan again once whatever writes it is done"),
        }
    }

    /// Globs that are likely mistakes: an `include` that selected nothing, and an `exclude`
    /// that left nothing out at the top of the tree while the same pattern would match in its
    /// folders (`*.bam` where `**/*.bam` was meant: the BAM files would ship). An `exclude`
    /// with nothing to exclude anywhere is fine (a release without BAM files): plan notes it.
    fn unmatched_globs(&self, scan: &Scan) -> Option<Diagnostic> {
        let mut unmatched: Vec<(&str, usize, &str)> = Vec::new();
        for (i, (pattern, hit)) in self
            .block
            .include
            .iter()
            .zip(&scan.include_matched)
            .enumerate()
        {
            if !hit {
                unmatched.push(("include", i, pattern));
            }
        }
        for (i, (pattern, hit)) in self
            .block
            .exclude
            .iter()
            .zip(&scan.exclude_matched)
            .enumerate()
        {
            if !hit && matches_deeper(pattern, scan) {
                unmatched.push(("exclude", i, pattern));
            }
        }
        let (first, rest) = unmatched.split_first()?;
        let (list, index, pattern) = *first;
        let mut diagnostic = Diagnostic::error(format!(
            "`{pattern}` matches nothing in `{}`",
            self.block.from
        ))
        .at(&self.glob_span(list, index), format!("no entry to {list}"));
        for (list, index, _) in rest {
            diagnostic = diagnostic.also(&self.glob_span(list, *index), "nor does this one");
        }
        let help = if !pattern.contains('/') && !pattern.starts_with("**") {
            format!(
                "globs match paths relative to `from`, and `*` stops at `/`: `{pattern}` matches at the top only; `**/{pattern}` matches in every folder"
            )
        } else {
            "globs match paths relative to `from`, like `data/**/*.bam`".to_string()
        };
        Some(diagnostic.help(help))
    }
}

/// Whether `**/PATTERN` matches an entry of the scan, for a pattern that matches at the top of
/// the tree only.
fn matches_deeper(pattern: &str, scan: &Scan) -> bool {
    if pattern.contains('/') || pattern.starts_with("**") {
        return false;
    }
    let Ok(glob) = globset::GlobBuilder::new(&format!("**/{pattern}"))
        .literal_separator(true)
        .build()
    else {
        return false;
    };
    let matcher = glob.compile_matcher();
    scan.entries.iter().any(|e| matcher.is_match(&e.path))
}

/// `12345` → `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// `4 files and 1 symlink, 61 B`.
fn summary(scan: &Scan) -> String {
    let files = scan.count(|k| matches!(k, Kind::File { .. }));
    let symlinks = scan.count(|k| matches!(k, Kind::Symlink { .. }));
    let mut text = plural(files, "file", "files");
    if symlinks > 0 {
        text.push_str(&format!(" and {}", plural(symlinks, "symlink", "symlinks")));
    }
    text.push_str(&format!(", {}", human_bytes(scan.bytes())));
    text
}

/// `files.tsv`: a header line, then one line an entry, sorted by path.
fn listing(scan: &Scan) -> String {
    let mut out = String::from("path\tsize\tdigest\tmode\ttarget\n");
    for entry in &scan.entries {
        let path = escaped(entry.path.as_os_str());
        let _ = match &entry.kind {
            Kind::File { size, digest } => writeln!(
                out,
                "{path}\t{size}\t{digest}\t{:06o}\t",
                0o100000 | entry.mode
            ),
            Kind::Dir => writeln!(out, "{path}\t-\t-\t{:06o}\t", 0o040000 | entry.mode),
            Kind::Symlink { target } => {
                let bytes = target.as_os_str().as_bytes();
                writeln!(
                    out,
                    "{path}\t{}\t{}\t{:06o}\t{}",
                    bytes.len(),
                    Digest::of_bytes(bytes),
                    0o120000 | entry.mode,
                    escaped(target.as_os_str())
                )
            }
        };
    }
    out
}

/// `report.json`. What the excludes left out is as of the build that made the output: it is
/// not part of the key (a new BAM file does not recopy the tree).
fn report(from: &str, scan: &Scan) -> serde_json::Value {
    let excluded: BTreeMap<&str, u64> = scan
        .excluded
        .iter()
        .map(|(pattern, n)| (pattern.as_str(), *n))
        .collect();
    json!({
        "from": from,
        "fingerprint": scan.fingerprint,
        "files": scan.count(|k| matches!(k, Kind::File { .. })),
        "folders": scan.count(|k| matches!(k, Kind::Dir)),
        "symlinks": scan.count(|k| matches!(k, Kind::Symlink { .. })),
        "bytes": scan.bytes(),
        "excluded": excluded,
        "special_left_out": scan.special,
    })
}

impl Step for FilesStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "files"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &[]
    }

    /// The globs (they explain a change); the tree itself enters as one input, its fingerprint
    /// under `from`. `to` is the disk's business, not the output's.
    fn params(&self) -> serde_json::Value {
        json!({
            "include": self.block.include,
            "exclude": self.block.exclude,
        })
    }

    fn details(&self) -> Vec<String> {
        let Some(scan) = self.scan.get() else {
            return Vec::new();
        };
        let mut line = summary(scan);
        let excluded: Vec<String> = scan
            .excluded
            .iter()
            .map(|(pattern, n)| format!("{} excluded by `{pattern}`", thousands(*n)))
            .collect();
        if !excluded.is_empty() {
            line.push_str(&format!(" ({})", excluded.join(", ")));
        }
        line.push_str(&format!("; hashed {}", thousands(scan.hashed)));
        if scan.stat_cache.is_some() {
            line.push_str(&format!(
                ", {} from the stat cache",
                thousands(scan.from_cache)
            ));
        }
        let mut lines = vec![line];
        let idle: Vec<String> = self
            .block
            .exclude
            .iter()
            .zip(&scan.exclude_matched)
            .filter(|(_, hit)| !**hit)
            .map(|(pattern, _)| format!("`{pattern}`"))
            .collect();
        if !idle.is_empty() {
            lines.push(format!("nothing to exclude for {}", idle.join(", ")));
        }
        if let Some(note) = &scan.cache_note {
            lines.push(note.clone());
        }
        if scan.special > 0 {
            lines.push(format!(
                "{} left out (fifos, sockets, device nodes)",
                plural(scan.special, "special file", "special files")
            ));
        }
        lines
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let globs = Globs::new(&self.block.include, &self.block.exclude).map_err(|bad| {
            let first = &bad[0];
            let pattern = match first.list {
                "include" => &self.block.include[first.index],
                _ => &self.block.exclude[first.index],
            };
            let mut diagnostic = Diagnostic::error(format!("`{pattern}` is not a valid glob")).at(
                &self.glob_span(first.list, first.index),
                first.error.kind().to_string(),
            );
            for other in &bad[1..] {
                diagnostic = diagnostic.also(
                    &self.glob_span(other.list, other.index),
                    other.error.kind().to_string(),
                );
            }
            diagnostic
        })?;
        let root = self.root(&ctx.recipe_dir);
        let cache = ctx
            .cache_dir
            .as_ref()
            .map(|dir| self.cache_path(dir, &root));
        let scan =
            scan::scan(&root, &globs, cache.as_deref()).map_err(|e| self.scan_diagnostic(e))?;
        if let Some(diagnostic) = self.unmatched_globs(&scan) {
            return Err(diagnostic);
        }
        if !scan.entries.iter().any(|e| e.kind != Kind::Dir) {
            return Err(Diagnostic::error(format!(
                "`{}` selects no file in `{}`",
                self.id, self.block.from
            ))
            .at(&self.span_of_from(), "nothing to copy")
            .help("is the folder mounted, and do `include`/`exclude` leave something?"));
        }
        let mut resolved = Resolved::default();
        resolved
            .inputs
            .insert(self.block.from.clone(), scan.fingerprint);
        let _ = self.scan.set(Arc::new(scan));
        Ok(resolved)
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let scan = self.scan.get().cloned().ok_or_else(|| {
                StepError::Unmet(format!("`{}` was not resolved by plan", self.id))
            })?;
            ctx.say(&format!(
                "copying {} from `{}`",
                summary(&scan),
                scan.root.display()
            ));
            let tree = ctx.out.join(TREE_FOLDER);
            std::fs::create_dir(&tree).map_err(io_error("create", &tree))?;
            let started = std::time::Instant::now();
            let (copy_scan, copy_tree, cancel) = (scan.clone(), tree.clone(), ctx.cancel.clone());
            let copied = tokio::task::spawn_blocking(move || {
                let changed = std::sync::Mutex::new(Vec::new());
                let note = |path: &Path| {
                    let mut changed = changed.lock().expect("not poisoned");
                    changed.push(path.as_os_str().as_bytes().to_vec());
                };
                let result = copy::copy_selection(&copy_scan, &copy_tree, &cancel, &note);
                // A file whose stat still matched the cache but whose content did not: the
                // cache must not vouch for it again.
                let changed = changed.into_inner().expect("not poisoned");
                if let (Some(cache), false) = (&copy_scan.stat_cache, changed.is_empty()) {
                    let _ = stat_cache::StatCache::forget(cache, &changed);
                }
                result
            })
            .await
            .map_err(|e| StepError::Unmet(format!("the copy stopped: {e}")))??;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755))
                .map_err(io_error("chmod", &tree))?;
            let listing_path = ctx.out.join(LISTING_FILE);
            std::fs::write(&listing_path, listing(&scan))
                .map_err(io_error("write", &listing_path))?;
            let report_path = ctx.out.join(REPORT_FILE);
            let text = serde_json::to_string_pretty(&report(&self.block.from, &scan))
                .expect("a report serializes");
            std::fs::write(&report_path, text + "\n").map_err(io_error("write", &report_path))?;
            ctx.say(&format!(
                "copied {} in {:.1} s: {} by reflink, {} by copy; every digest as planned",
                human_bytes(copied.bytes),
                started.elapsed().as_secs_f64(),
                plural(copied.reflinked, "file", "files"),
                plural(copied.copied, "file", "files"),
            ));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12345), "12,345");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(15 * (1 << 30) + (1 << 29)), "15.5 GiB");
    }

    fn named(from: &str, exclude: &[&str]) -> Named<FilesBlock> {
        Named {
            name: "web".into(),
            block: FilesBlock {
                from: from.into(),
                to: "/srv/web".into(),
                include: vec![],
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
            spans: SpanIndex::default(),
        }
    }

    fn step(from: &str, exclude: &[&str]) -> FilesStep {
        FilesStep::new(&named(from, exclude))
    }

    fn context(dir: &Path) -> RunContext {
        let (out, scratch) = (dir.join("out"), dir.join("scratch"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        RunContext {
            out,
            scratch,
            log: dir.join("log"),
            upstream: BTreeMap::new(),
            recipe_dir: dir.to_path_buf(),
            cache: dir.join("cache"),
            redact: Arc::new(Vec::new()),
            cancel: tokio_util::sync::CancellationToken::new(),
            on_line: Arc::new(|_| {}),
        }
    }

    #[tokio::test]
    async fn the_copy_holds_exactly_the_plan_with_modes_links_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::create_dir_all(tree.join("data/locked")).unwrap();
        std::fs::write(tree.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(tree.join("bin/run"), PermissionsExt::from_mode(0o4755)).unwrap();
        std::fs::write(tree.join("data/a.txt"), "a").unwrap();
        std::fs::write(tree.join("data/x.bam"), "bam").unwrap();
        std::fs::write(tree.join("data/locked/secret"), "s").unwrap();
        std::fs::write(tree.join("big"), vec![7u8; (scan::LARGE_FILE + 3) as usize]).unwrap();
        std::os::unix::fs::symlink("../bin/run", tree.join("data/run")).unwrap();
        std::fs::set_permissions(tree.join("data/locked"), PermissionsExt::from_mode(0o500))
            .unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        std::fs::File::options()
            .write(true)
            .open(tree.join("data/a.txt"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let step = step("tree", &["**/*.bam"]);
        step.resolve(&ResolveContext::new(dir.path())).unwrap();
        assert_eq!(
            step.details()[0],
            "4 files and 1 symlink, 8.0 MiB (1 excluded by `**/*.bam`); hashed 4"
        );
        let ctx = context(dir.path());
        let out = ctx.out.clone();
        step.run(ctx).await.unwrap();
        let copy = out.join("tree");
        let mode = |p: &str| std::fs::symlink_metadata(copy.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("bin/run"), 0o755, "setuid is dropped");
        assert_eq!(mode("data/locked"), 0o500);
        assert_eq!(
            std::fs::read_link(copy.join("data/run")).unwrap(),
            Path::new("../bin/run")
        );
        assert!(!copy.join("data/x.bam").exists());
        assert_eq!(
            std::fs::metadata(copy.join("data/a.txt"))
                .unwrap()
                .modified()
                .unwrap(),
            old
        );
        assert_eq!(
            std::fs::read(copy.join("big")).unwrap(),
            std::fs::read(tree.join("big")).unwrap()
        );
        let listing = std::fs::read_to_string(out.join(LISTING_FILE)).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines[0], "path\tsize\tdigest\tmode\ttarget");
        assert_eq!(
            lines[1..]
                .iter()
                .map(|l| l.split('\t').next().unwrap())
                .collect::<Vec<_>>(),
            [
                "big",
                "bin",
                "bin/run",
                "data",
                "data/a.txt",
                "data/locked",
                "data/locked/secret",
                "data/run"
            ]
        );
        assert!(listing.contains(&format!(
            "data/a.txt\t1\t{}\t100644\t\n",
            Digest::of_bytes(b"a")
        )));
        assert!(listing.contains("data/run\t10\t"));
        assert!(listing.contains("\t120777\t../bin/run\n"));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(REPORT_FILE)).unwrap()).unwrap();
        assert_eq!(report["files"], 4);
        assert_eq!(report["symlinks"], 1);
        assert_eq!(report["excluded"]["**/*.bam"], 1);
        assert_eq!(report["bytes"], scan::LARGE_FILE + 3 + 10 + 1 + 1);
    }

    #[tokio::test]
    async fn a_file_changed_after_plan_fails_the_copy_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("a.txt"), "planned").unwrap();
        std::fs::write(tree.join("b.txt"), "b").unwrap();
        let step = step("tree", &[]);
        step.resolve(&ResolveContext::new(dir.path())).unwrap();
        std::fs::write(tree.join("a.txt"), "changed").unwrap();
        let error = step.run(context(dir.path())).await.unwrap_err().to_string();
        assert!(
            error.contains("a.txt` changed since plan (its content differs): run plan again"),
            "{error}"
        );
        let step2 = super::tests::step("tree", &[]);
        step2.resolve(&ResolveContext::new(dir.path())).unwrap();
        std::fs::remove_file(tree.join("b.txt")).unwrap();
        let dir2 = dir.path().join("second");
        let error = step2.run(context(&dir2)).await.unwrap_err().to_string();
        assert!(
            error.contains("b.txt` changed since plan (it is gone)"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_layer_is_the_tree_alone_placed_at_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tree/data")).unwrap();
        std::fs::write(dir.path().join("tree/data/genes.gff"), "gene").unwrap();
        let named = named("tree", &[]);
        let step = FilesStep::new(&named);
        step.resolve(&ResolveContext::new(dir.path())).unwrap();
        let ctx = context(dir.path());
        let out = ctx.out.clone();
        step.run(ctx).await.unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        crate::steps::layers::compose(&root, &[(FilesStep::layer(&named), out)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("srv/web/data/genes.gff")).unwrap(),
            "gene"
        );
        for stray in [
            "files.tsv",
            "report.json",
            "tree",
            "srv/web/files.tsv",
            "srv/web/tree",
        ] {
            assert!(!root.join(stray).exists(), "{stray} is in the VM");
        }
    }

    #[tokio::test]
    async fn a_stat_cache_that_vouched_for_a_wrong_digest_is_corrected_by_the_failed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("a.txt"), "the truth").unwrap();
        let cache_dir = dir.path().join("cache");
        let ctx = || ResolveContext::with_store(dir.path(), cache_dir.clone(), [7; 32]);
        let first = step("tree", &[]);
        first.resolve(&ctx()).unwrap();
        let cache_file = first.scan.get().unwrap().stat_cache.clone().unwrap();
        // A cache that lies: the file's very stat, a wrong digest, trusted (as an undetected
        // racy write or a file server's skewed clock could make it).
        let stat = stat_cache::FileStat::of(&std::fs::metadata(tree.join("a.txt")).unwrap());
        stat_cache::StatCache::save(
            &cache_file,
            stat_cache::now_ns() + 60_000_000_000,
            [(b"a.txt".as_slice(), stat, Digest::of_bytes(b"a lie"))].into_iter(),
        )
        .unwrap();
        let fooled = step("tree", &[]);
        fooled.resolve(&ctx()).unwrap();
        assert_eq!(fooled.scan.get().unwrap().from_cache, 1);
        let error = fooled
            .run(context(&dir.path().join("run1")))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("changed since plan (its content differs)"),
            "{error}"
        );
        // The next plan reads the file again, and the copy succeeds.
        let fixed = step("tree", &[]);
        fixed.resolve(&ctx()).unwrap();
        assert_eq!(fixed.scan.get().unwrap().hashed, 1);
        fixed.run(context(&dir.path().join("run2"))).await.unwrap();
        assert_eq!(
            fixed.scan.get().unwrap().fingerprint,
            first.scan.get().unwrap().fingerprint
        );
    }
}

//! The `leak-scan` kind (`sanitize.scan`): every byte of the VM's raw disk and of every output
//! searched for the recipe's forbidden strings, after the disk step and every output step.
//!
//! - The raw disk is read whole: files, free blocks (deleted data), the journal, the boot area
//!   and the partition table.
//! - Each disk image output (qcow2, possibly compressed; VMDK; VDI) is converted back to raw
//!   (`qemu-img convert -O raw`, sparse, in the scratch folder) and searched like the disk; its
//!   first MiB is also searched as stored (headers, the VMDK descriptor). A raw output is
//!   searched as it is. An OVA is unpacked: its OVF and manifest searched, its VMDK converted;
//!   a libvirt output's domain XML is searched as export writes it.
//! - The compressed files inside the disk's file systems (`.gz`, `.xz`, `.zip`, `.war`, ...)
//!   are decompressed and searched ([`super::compressed`]; the disk is mounted read-only
//!   through a loop device, which needs root). The outputs hold the same file systems, so
//!   that is done once.
//! - A finding names the rule (`env("TOXO_PASSWORD")`, `forbid[1]`, `forbid_files "emails.txt"
//!   line 3`), never the string, and where it is: inside ext4, the file (see [`super::locate`]),
//!   or free space, the journal, the boot area, the partition table.
//!
//! Any finding fails the step, so apply fails and exports nothing. Without one, the step's
//! `report.json` (carried by the manifest) says how many bytes of each file were searched.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::json;

use super::compressed::{self, Compressed};
use super::forbid::Forbidden;
use super::locate::DiskMap;
use super::matcher::{Found, Matcher, CHUNK};
use crate::diag::{Diagnostic, Span};
use crate::exec::export::STEP_REPORT;
use crate::steps::disk::step::DISK_FILE;
use crate::steps::human_bytes;
use crate::steps::process::{self, redact, Invocation};
use crate::steps::tools::{DEBUGFS, LOSETUP, QEMU_IMG, SFDISK};
use crate::steps::{io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};

/// The step's id.
pub const SCAN_ID: &str = "sanitize.scan";
/// Findings listed in the error; the rest are counted.
const SHOWN: usize = 20;
/// How much of an image file is also searched as stored.
const HEAD: u64 = 1 << 20;
/// Members of an OVA other than its disks are read whole up to this size.
const SMALL_MEMBER: u64 = 64 << 20;

/// An output the scan reads.
#[derive(Debug, Clone)]
pub struct ScannedOutput {
    /// The output step.
    pub step: String,
    /// For `libvirt`: the domain XML export writes beside the image (`NAME.xml`, its text).
    pub domain_xml: Option<(String, String)>,
}

pub struct ScanStep {
    id: String,
    disk: String,
    outputs: Vec<ScannedOutput>,
    forbidden: Vec<Forbidden>,
    depends: Vec<String>,
    span: Span,
    /// Keyed digests of the forbidden strings (same order) and of the domain XMLs, made by
    /// plan with the store's key.
    keyed: OnceLock<(Vec<String>, BTreeMap<String, String>)>,
}

impl ScanStep {
    /// A scan of `disk`'s raw disk and of `outputs`, for `forbidden` (not empty).
    pub fn new(
        disk: &str,
        outputs: Vec<ScannedOutput>,
        forbidden: Vec<Forbidden>,
        span: Span,
    ) -> ScanStep {
        let mut depends = vec![disk.to_string()];
        depends.extend(outputs.iter().map(|o| o.step.clone()));
        ScanStep {
            id: SCAN_ID.into(),
            disk: disk.to_string(),
            outputs,
            forbidden,
            depends,
            span,
            keyed: OnceLock::new(),
        }
    }

    fn rules_summary(&self) -> String {
        let mut named: Vec<String> = Vec::new();
        let mut per_file: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.forbidden {
            match f.rule.strip_prefix("forbid_files \"") {
                Some(rest) => {
                    let file = rest.split('"').next().unwrap_or(rest).to_string();
                    *per_file.entry(file).or_default() += 1;
                }
                None => named.push(f.rule.clone()),
            }
        }
        for (file, lines) in per_file {
            named.push(format!(
                "{lines} line{} of `{file}`",
                if lines == 1 { "" } else { "s" }
            ));
        }
        named.join(", ")
    }

    /// Secret values, for redaction of what the step says.
    fn values(&self) -> Vec<String> {
        self.forbidden
            .iter()
            .map(|f| String::from_utf8_lossy(f.value()).into_owned())
            .collect()
    }
}

/// What one searched file contributed to the report.
struct Searched {
    file: String,
    bytes: u64,
    data_bytes: u64,
    seconds: f64,
}

/// Occurrences of one rule at one place of one file.
struct Finding {
    rule: String,
    file: String,
    place: String,
    /// The first occurrence's offset in the file.
    offset: u64,
    count: u64,
}

impl Finding {
    fn line(&self) -> String {
        let mut line = format!("{} in {}", self.rule, self.file);
        if self.place.is_empty() {
            line.push_str(&format!(" at byte {}", self.offset));
        } else {
            line.push_str(&format!(": {} (byte {})", self.place, self.offset));
        }
        if self.count > 1 {
            line.push_str(&format!(", {} times", self.count));
        }
        line
    }
}

/// Findings grouped by rule, file and place.
#[derive(Default)]
struct Findings {
    grouped: Vec<Finding>,
    /// Occurrences found but not located (beyond what a scan keeps), per file.
    unlocated: BTreeMap<String, u64>,
}

impl Findings {
    fn add(&mut self, rule: &str, file: &str, place: &str, offset: u64) {
        match self
            .grouped
            .iter_mut()
            .find(|f| f.rule == rule && f.file == file && f.place == place)
        {
            Some(finding) => finding.count += 1,
            None => self.grouped.push(Finding {
                rule: rule.to_string(),
                file: file.to_string(),
                place: place.to_string(),
                offset,
                count: 1,
            }),
        }
    }

    fn occurrences(&self) -> u64 {
        self.grouped.iter().map(|f| f.count).sum::<u64>() + self.unlocated.values().sum::<u64>()
    }

    fn is_empty(&self) -> bool {
        self.occurrences() == 0
    }

    fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.grouped.iter().take(SHOWN).map(Finding::line).collect();
        if self.grouped.len() > SHOWN {
            let rest = &self.grouped[SHOWN..];
            lines.push(format!(
                "and {} more finding{} ({} occurrences)",
                rest.len(),
                if rest.len() == 1 { "" } else { "s" },
                rest.iter().map(|f| f.count).sum::<u64>()
            ));
        }
        for (file, count) in &self.unlocated {
            lines.push(format!(
                "and {count} more occurrences in {file}, not located"
            ));
        }
        lines
    }
}

/// What a scan of one file found, located.
struct Located {
    searched: Searched,
    /// (pattern, place, offset) per kept occurrence.
    hits: Vec<(usize, String, u64)>,
    unlocated: u64,
}

/// Search `path` (labelled `label`); when `as_disk`, name the places of occurrences on the
/// disk's layout. Blocking.
fn search_file(
    matcher: &Matcher,
    path: &Path,
    label: &str,
    as_disk: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Located, StepError> {
    let scan = matcher
        .scan_file(path, CHUNK, &|| cancel.is_cancelled())
        .map_err(io_error("search", path))?
        .ok_or(StepError::Cancelled)?;
    let offsets: Vec<u64> = scan.found.hits.iter().map(|h| h.offset).collect();
    let places = if as_disk && !offsets.is_empty() {
        DiskMap::read(path)?.describe(path, &offsets)?
    } else {
        vec![String::new(); offsets.len()]
    };
    Ok(Located {
        searched: Searched {
            file: label.to_string(),
            bytes: scan.bytes,
            data_bytes: scan.data_bytes,
            seconds: scan.seconds,
        },
        hits: scan
            .found
            .hits
            .iter()
            .zip(places)
            .map(|(h, place)| (h.pattern, place, h.offset))
            .collect(),
        unlocated: scan.found.total - scan.found.hits.len() as u64,
    })
}

/// A member of an OVA: small ones read, disks extracted into the scratch folder.
enum Member {
    Bytes(Vec<u8>),
    Disk(PathBuf),
}

/// The members of the OVA at `path`, with their tar headers; disks extracted into `scratch`.
fn unpack_ova(path: &Path, scratch: &Path) -> Result<Vec<(String, Vec<u8>, Member)>, StepError> {
    let file = std::fs::File::open(path).map_err(io_error("read", path))?;
    let mut archive = tar::Archive::new(file);
    let mut members = Vec::new();
    for (i, entry) in archive
        .entries()
        .map_err(io_error("read", path))?
        .enumerate()
    {
        let mut entry = entry.map_err(io_error("read", path))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("member {i}"));
        let header = entry.header().as_bytes().to_vec();
        let size = entry.size();
        let member = if name.ends_with(".vmdk") {
            let to = scratch.join(format!("ova-member-{i}.vmdk"));
            let mut out = std::fs::File::create(&to).map_err(io_error("create", &to))?;
            std::io::copy(&mut entry, &mut out).map_err(io_error("extract", &to))?;
            Member::Disk(to)
        } else if size <= SMALL_MEMBER {
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(io_error("read", path))?;
            Member::Bytes(bytes)
        } else {
            return Err(StepError::Unmet(format!(
                "the OVA member `{name}` is {} and not a disk: the scan does not read it",
                human_bytes(size)
            )));
        };
        members.push((name, header, member));
    }
    Ok(members)
}

/// The scan's state while it runs.
struct Run<'a> {
    step: &'a ScanStep,
    ctx: &'a RunContext,
    matcher: Arc<Matcher>,
    findings: Findings,
    searched: Vec<Searched>,
    /// What searching the compressed files inside the disk's file systems did.
    compressed: Compressed,
}

impl Run<'_> {
    fn say(&self, text: &str) {
        self.ctx.say(text);
    }

    fn rule(&self, pattern: usize) -> &str {
        &self.step.forbidden[pattern].rule
    }

    fn take(&mut self, located: Located) {
        let s = &located.searched;
        let rate = if s.seconds > 0.0 {
            format!(
                ", {:.0} MiB/s",
                s.bytes as f64 / (1u64 << 20) as f64 / s.seconds
            )
        } else {
            String::new()
        };
        self.say(&format!(
            "searched {}: {} ({} read, the rest holes) in {:.2} s{rate}",
            s.file,
            human_bytes(s.bytes),
            human_bytes(s.data_bytes),
            s.seconds
        ));
        for (pattern, place, offset) in &located.hits {
            let rule = self.rule(*pattern).to_string();
            self.findings
                .add(&rule, &located.searched.file, place, *offset);
        }
        if located.unlocated > 0 {
            *self
                .findings
                .unlocated
                .entry(located.searched.file.clone())
                .or_default() += located.unlocated;
        }
        self.searched.push(located.searched);
    }

    fn take_bytes(&mut self, label: &str, bytes: &[u8], place: &str) {
        let found: Found = self.matcher.scan_bytes(bytes);
        for hit in &found.hits {
            let rule = self.rule(hit.pattern).to_string();
            self.findings.add(&rule, label, place, hit.offset);
        }
        if found.total > found.hits.len() as u64 {
            *self
                .findings
                .unlocated
                .entry(label.to_string())
                .or_default() += found.total - found.hits.len() as u64;
        }
        self.searched.push(Searched {
            file: if place.is_empty() {
                label.to_string()
            } else {
                format!("{label} ({place})")
            },
            bytes: bytes.len() as u64,
            data_bytes: bytes.len() as u64,
            seconds: 0.0,
        });
    }

    async fn search(
        &mut self,
        path: PathBuf,
        label: String,
        as_disk: bool,
    ) -> Result<(), StepError> {
        let matcher = self.matcher.clone();
        let cancel = self.ctx.cancel.clone();
        let located = tokio::task::spawn_blocking(move || {
            search_file(&matcher, &path, &label, as_disk, &cancel)
        })
        .await
        .expect("the search does not panic")?;
        self.take(located);
        Ok(())
    }

    /// The compressed files inside the file systems of the raw disk `raw`, decompressed.
    async fn search_compressed(&mut self, raw: PathBuf, label: &str) -> Result<(), StepError> {
        let matcher = self.matcher.clone();
        let scratch = self.ctx.scratch.clone();
        let cancel = self.ctx.cancel.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let partitions = DiskMap::read(&raw)?.ext4_partitions();
            compressed::search(&matcher, &raw, &partitions, &scratch, &|| {
                cancel.is_cancelled()
            })
        })
        .await
        .expect("the search does not panic")?;
        self.say(&format!(
            "searched {} compressed files inside {label}: {} once decompressed, in {:.2} s",
            result.files,
            human_bytes(result.bytes),
            started.elapsed().as_secs_f64()
        ));
        for (package, count) in &result.not_searched {
            self.say(&format!(
                "NOT searched: {count} compressed files inside {label}, whose program is missing: install the Debian package `{package}`"
            ));
        }
        for inside in &result.hits {
            let place = format!("inside `{}`, decompressed", inside.path);
            for hit in &inside.found.hits {
                let rule = self.rule(hit.pattern).to_string();
                self.findings.add(&rule, label, &place, hit.offset);
            }
            let unlocated = inside.found.total - inside.found.hits.len() as u64;
            if unlocated > 0 {
                *self
                    .findings
                    .unlocated
                    .entry(label.to_string())
                    .or_default() += unlocated;
            }
        }
        self.compressed = result;
        Ok(())
    }

    /// An image in `format` (qcow2, vmdk, vdi): its head as stored, then its content as raw.
    async fn search_image(
        &mut self,
        path: &Path,
        format: &str,
        label: &str,
    ) -> Result<(), StepError> {
        let head = read_head(path)?;
        self.take_bytes(label, &head, "as stored, first MiB");
        let raw = self.ctx.scratch.join(format!(
            "{}.raw",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let _ = std::fs::remove_file(&raw);
        process::run(
            Invocation {
                program: QEMU_IMG.program.into(),
                args: vec![
                    "convert".into(),
                    "-f".into(),
                    format.into(),
                    "-O".into(),
                    "raw".into(),
                    path.display().to_string(),
                    raw.display().to_string(),
                ],
                env: BTreeMap::from([("LC_ALL".to_string(), "C".to_string())]),
                cwd: self.ctx.scratch.clone(),
            },
            self.ctx,
        )
        .await?;
        let result = self
            .search(raw.clone(), format!("{label} (as raw)"), true)
            .await;
        let _ = std::fs::remove_file(&raw);
        result
    }

    async fn search_output(&mut self, output: &ScannedOutput) -> Result<(), StepError> {
        let dir = self.ctx.upstream[&output.step].clone();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io_error("list", &dir))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let label = format!("`{name}` ({})", output.step);
            let extension = Path::new(&name)
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            match extension.as_str() {
                "qcow2" | "vmdk" | "vdi" => self.search_image(&path, &extension, &label).await?,
                "raw" => self.search(path, label, true).await?,
                "ova" => {
                    let (ova, scratch) = (path.clone(), self.ctx.scratch.clone());
                    let members = tokio::task::spawn_blocking(move || unpack_ova(&ova, &scratch))
                        .await
                        .expect("unpacking does not panic")?;
                    for (member, header, content) in members {
                        let label = format!("`{name}` member `{member}` ({})", output.step);
                        self.take_bytes(&label, &header, "its tar header");
                        match content {
                            Member::Bytes(bytes) => self.take_bytes(&label, &bytes, ""),
                            Member::Disk(disk) => {
                                let result = self.search_image(&disk, "vmdk", &label).await;
                                let _ = std::fs::remove_file(&disk);
                                result?;
                            }
                        }
                    }
                }
                _ => {
                    let bytes = std::fs::read(&path).map_err(io_error("read", &path))?;
                    self.take_bytes(&label, &bytes, "");
                }
            }
        }
        if let Some((name, xml)) = &output.domain_xml {
            let label = format!("`{name}` ({}, written at export)", output.step);
            self.take_bytes(&label, xml.as_bytes(), "");
        }
        Ok(())
    }
}

/// The first [`HEAD`] bytes of a file.
fn read_head(path: &Path) -> Result<Vec<u8>, StepError> {
    let file = std::fs::File::open(path).map_err(io_error("read", path))?;
    let mut head = Vec::new();
    file.take(HEAD)
        .read_to_end(&mut head)
        .map_err(io_error("read", path))?;
    Ok(head)
}

impl Step for ScanStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "leak-scan"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.depends
    }

    /// Rules by name and keyed digest only: a changed string rescans, and the key shows
    /// nothing of it.
    fn params(&self) -> serde_json::Value {
        let (digests, xml) = self.keyed.get().cloned().unwrap_or_default();
        let forbid: Vec<serde_json::Value> = self
            .forbidden
            .iter()
            .enumerate()
            .map(|(i, f)| json!({ "rule": f.rule, "value": digests.get(i) }))
            .collect();
        json!({
            "forbid": forbid,
            "disk": self.disk,
            "outputs": self.outputs.iter().map(|o| &o.step).collect::<Vec<_>>(),
            "domain_xml": xml,
        })
    }

    fn secrets(&self) -> Vec<String> {
        self.values()
    }

    fn checks_artifacts(&self) -> bool {
        true
    }

    fn details(&self) -> Vec<String> {
        let mut files = vec![format!("`{}` disk.raw", self.disk)];
        files.extend(self.outputs.iter().map(|o| format!("`{}`", o.step)));
        vec![
            format!(
                "forbids {} string{}: {}",
                self.forbidden.len(),
                if self.forbidden.len() == 1 { "" } else { "s" },
                self.rules_summary()
            ),
            format!("searches every byte of {}", files.join(", ")),
        ]
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let digests = self
            .forbidden
            .iter()
            .map(|f| ctx.secret_digest(f.value()))
            .collect();
        let xml = self
            .outputs
            .iter()
            .filter_map(|o| {
                o.domain_xml
                    .as_ref()
                    .map(|(_, text)| (o.step.clone(), ctx.secret_digest(text.as_bytes())))
            })
            .collect();
        let _ = self.keyed.set((digests, xml));
        let mut tools = BTreeMap::new();
        let mut needed = vec![DEBUGFS, SFDISK, LOSETUP];
        if !self.outputs.is_empty() {
            needed.push(QEMU_IMG);
        }
        for tool in needed {
            let (program, version) = tool.resolve(&self.span)?;
            tools.insert(program, version);
        }
        Ok(Resolved {
            inputs: BTreeMap::new(),
            tools,
        })
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let started = Instant::now();
            let patterns: Vec<&[u8]> = self.forbidden.iter().map(|f| f.value()).collect();
            let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
            let matcher = Arc::new(Matcher::new(&patterns));
            ctx.say(&format!(
                "searching for {} forbidden strings ({}; the longest is {longest} bytes), {}",
                patterns.len(),
                self.rules_summary(),
                if matcher.is_packed() {
                    "candidates found by the SIMD searcher"
                } else {
                    "with the automaton alone"
                }
            ));
            let mut run = Run {
                step: self,
                ctx: &ctx,
                matcher,
                findings: Findings::default(),
                searched: Vec::new(),
                compressed: Compressed::default(),
            };
            let raw = ctx.upstream[&self.disk].join(DISK_FILE);
            let label = format!("`{DISK_FILE}` ({})", self.disk);
            run.search(raw.clone(), label.clone(), true).await?;
            run.search_compressed(raw, &label).await?;
            for output in &self.outputs {
                run.search_output(output).await?;
            }
            let total: u64 = run.searched.iter().map(|s| s.bytes).sum();
            let read: u64 = run.searched.iter().map(|s| s.data_bytes).sum();
            let seconds = started.elapsed().as_secs_f64();
            ctx.say(&format!(
                "searched {} in {} files ({} read) in {seconds:.1} s",
                human_bytes(total),
                run.searched.len(),
                human_bytes(read)
            ));
            if !run.findings.is_empty() {
                let lines = run.findings.lines();
                let values = self.values();
                let mut message = format!(
                    "the leak scan found forbidden strings ({} occurrence{}); apply fails and exports nothing:",
                    run.findings.occurrences(),
                    if run.findings.occurrences() == 1 { "" } else { "s" }
                );
                for line in &lines {
                    ctx.say(&format!("found: {line}"));
                    message.push_str(&format!("\n  - {line}"));
                }
                // A place may be a path, and a path may hold a forbidden string.
                return Err(StepError::Unmet(redact(&message, &values)));
            }
            let report = json!({
                "patterns": self.forbidden.len(),
                "findings": 0,
                "bytes_scanned": total,
                "bytes_read": read,
                "compressed_files": run.compressed.files,
                "compressed_bytes": run.compressed.bytes,
                "compressed_not_searched": run.compressed.not_searched,
                "files": run.searched.iter().map(|s| json!({
                    "file": s.file,
                    "bytes": s.bytes,
                    "data_bytes": s.data_bytes,
                })).collect::<Vec<_>>(),
            });
            let path = ctx.out.join(STEP_REPORT);
            let text = serde_json::to_string_pretty(&report).expect("a report serializes");
            std::fs::write(&path, text + "\n").map_err(io_error("write", &path))?;
            ctx.say("no forbidden string anywhere");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::disk::{assemble_disk, DiskSpec};
    use crate::steps::sanitize::testutil::{context, small_tree, write};
    use std::os::unix::fs::FileExt;

    const PASSWORD: &[u8] = b"Tox0-db-Pa55word!";
    const HOST: &[u8] = b"db1.production.example.org";
    const EMAIL: &[u8] = b"alice.curator@example.edu";
    const DISK: &str = "template.t.disk";

    fn forbidden() -> Vec<Forbidden> {
        vec![
            Forbidden::new("env(\"LEAK_PW\")", PASSWORD),
            Forbidden::new("forbid[1]", HOST),
            Forbidden::new("forbid_files \"emails.txt\" line 3", EMAIL),
        ]
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// A 256 MiB disk of `small_tree` (plus `extra` files) in `dir/disk/disk.raw`, with its
    /// partition's offset.
    fn disk(dir: &Path, extra: &[(&str, &[u8])]) -> (PathBuf, u64) {
        let tree = dir.join("tree");
        small_tree(&tree);
        for (path, bytes) in extra {
            write(&tree, path, bytes);
        }
        let out = dir.join("disk");
        let scratch = dir.join("disk-scratch");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let spec = DiskSpec::new(256 << 20, &crate::Digest::of_bytes(b"scan test"), "root");
        let info = assemble_disk(&tree, &spec, &out.join(DISK_FILE), &scratch).unwrap();
        (out, info.partition_offset)
    }

    /// A free block of the ext4 file system at `offset` of `raw`, from debugfs.
    fn free_block(raw: &Path, offset: u64) -> u64 {
        let output = std::process::Command::new(DEBUGFS.find().unwrap())
            .args(["-R", "ffb 1 20000"])
            .arg(format!("{}?offset={offset}", raw.display()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no free block: {text}"))
    }

    fn plant(raw: &Path, at: u64, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new().write(true).open(raw).unwrap();
        file.write_all_at(bytes, at).unwrap();
    }

    /// A compressed qcow2 of `raw` in `dir/qcow2/site.qcow2`, as `output "qcow2"` makes it.
    fn qcow2(dir: &Path, raw: &Path) -> PathBuf {
        let out = dir.join("qcow2");
        std::fs::create_dir_all(&out).unwrap();
        let image = out.join("site.qcow2");
        let options = crate::steps::image::ConvertOptions {
            compress: true,
            ..Default::default()
        };
        crate::steps::image::convert(
            raw,
            crate::steps::image::DiskFormat::Qcow2,
            &options,
            &image,
        )
        .unwrap();
        std::fs::write(out.join("SHA256SUMS"), "0  site.qcow2\n").unwrap();
        out
    }

    async fn scan(
        dir: &Path,
        disk_dir: &Path,
        qcow2_dir: &Path,
    ) -> (Result<(), StepError>, String, PathBuf) {
        let step = ScanStep::new(
            DISK,
            vec![ScannedOutput {
                step: "output.qcow2".into(),
                domain_xml: None,
            }],
            forbidden(),
            Span::new(0, 0..0),
        );
        step.resolve(&ResolveContext::new(dir)).unwrap();
        let params = step.params().to_string();
        for secret in [PASSWORD, HOST, EMAIL] {
            assert!(!contains(params.as_bytes(), secret), "{params}");
        }
        let upstream = BTreeMap::from([
            (DISK.to_string(), disk_dir.to_path_buf()),
            ("output.qcow2".to_string(), qcow2_dir.to_path_buf()),
        ]);
        let work = dir.join("scan");
        let (ctx, said) = context(&work, upstream, step.secrets());
        let out = ctx.out.clone();
        let log = ctx.log.clone();
        let result = step.run(ctx).await;
        let said = said.lock().unwrap().join("\n");
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert_eq!(said.trim(), log.trim(), "the log holds what the step said");
        (result, log, out)
    }

    /// `content` compressed by `program` (`gzip`), or zipped as `member` (`zip`).
    fn packed(dir: &Path, program: &str, member: &str, content: &[u8]) -> Vec<u8> {
        let work = dir.join(format!("pack-{program}"));
        std::fs::create_dir_all(work.join("WEB-INF")).unwrap();
        std::fs::write(work.join(member), content).unwrap();
        let status = match program {
            "gzip" => std::process::Command::new("gzip")
                .arg(work.join(member))
                .status(),
            _ => std::process::Command::new("zip")
                .args(["-q", "-r", "out.zip", member])
                .current_dir(&work)
                .status(),
        }
        .unwrap();
        assert!(status.success(), "{program}");
        let file = if program == "gzip" {
            format!("{member}.gz")
        } else {
            "out.zip".into()
        };
        std::fs::read(work.join(file)).unwrap()
    }

    fn is_root() -> bool {
        let root = nix::unistd::Uid::effective().is_root();
        if !root {
            eprintln!("skipped: the scan mounts the disk (a loop device) for compressed files");
        }
        root
    }

    #[tokio::test]
    async fn findings_name_the_file_free_space_the_boot_area_and_the_rule_never_the_string() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = b"<?php $db = 'pgsql:host=localhost'; $password = '".to_vec();
        config.extend_from_slice(PASSWORD);
        config.extend_from_slice(b"';\n");
        // Enough text that the archives really compress (tiny files are stored as they are).
        let filler = b"2024-05-01 12:00:00 nothing happened here today\n".repeat(40);
        let mut mail = filler.clone();
        mail.extend_from_slice(b"sent to ");
        mail.extend_from_slice(EMAIL);
        let mut properties = filler.clone();
        properties.extend_from_slice(b"db.password=");
        properties.extend_from_slice(PASSWORD);
        let (mail_at, properties_at) = (filler.len() + 8, filler.len() + 12);
        let gz = packed(dir.path(), "gzip", "mail.log.1", &mail);
        let war = packed(dir.path(), "zip", "WEB-INF/app.properties", &properties);
        for archive in [&gz, &war] {
            for secret in [PASSWORD, EMAIL] {
                assert!(
                    !contains(archive, secret),
                    "the archive holds the string as is"
                );
            }
        }
        let (disk_dir, offset) = disk(
            dir.path(),
            &[
                ("/srv/app/config.php", &config),
                ("/var/log/mail.log.1.gz", &gz),
                ("/var/lib/tomcat9/webapps/site.war", &war),
            ],
        );
        let raw = disk_dir.join(DISK_FILE);
        // Deleted data: bytes in a block the file system does not use.
        let block = free_block(&raw, offset);
        plant(&raw, offset + block * 4096 + 100, HOST);
        // The boot area: MBR boot code, and the gap between it and the partition.
        plant(&raw, 300, HOST);
        plant(&raw, 1000 * 512, EMAIL);
        let qcow2_dir = qcow2(dir.path(), &raw);
        let compressed = std::fs::read(qcow2_dir.join("site.qcow2")).unwrap();
        for secret in [PASSWORD, HOST, EMAIL] {
            assert!(
                !contains(&compressed, secret),
                "a byte search of the compressed qcow2 would have found it"
            );
        }

        let (result, log, out) = scan(dir.path(), &disk_dir, &qcow2_dir).await;
        let Err(StepError::Unmet(message)) = result else {
            panic!("the scan passed: {result:?}\n{log}");
        };
        for expected in [
            "env(\"LEAK_PW\") in `disk.raw` (template.t.disk): file `/srv/app/config.php`",
            &format!("forbid[1] in `disk.raw` (template.t.disk): free space (deleted data), block {block} of partition 1"),
            "forbid[1] in `disk.raw` (template.t.disk): boot area, before the partition (MBR boot code) (byte 300)",
            "forbid_files \"emails.txt\" line 3 in `disk.raw` (template.t.disk): boot area, before the partition (byte 512000)",
            "env(\"LEAK_PW\") in `site.qcow2` (output.qcow2) (as raw): file `/srv/app/config.php`",
            "forbid_files \"emails.txt\" line 3 in `site.qcow2` (output.qcow2) (as raw): boot area",
            &format!("forbid_files \"emails.txt\" line 3 in `disk.raw` (template.t.disk): inside `/var/log/mail.log.1.gz`, decompressed (byte {mail_at})"),
            &format!("env(\"LEAK_PW\") in `disk.raw` (template.t.disk): inside `/var/lib/tomcat9/webapps/site.war`, decompressed (byte {properties_at})"),
        ] {
            assert!(message.contains(expected), "no `{expected}` in:\n{message}");
        }
        assert!(message.contains("10 occurrences"), "{message}");
        for secret in [PASSWORD, HOST, EMAIL] {
            for (what, text) in [("error", &message), ("log", &log)] {
                assert!(
                    !contains(text.as_bytes(), secret),
                    "the {what} holds a secret:\n{text}"
                );
            }
        }
        assert!(log.contains("MiB/s"), "{log}");
        assert!(!out.join(STEP_REPORT).exists());
    }

    #[test]
    fn findings_are_grouped_and_capped() {
        let mut findings = Findings::default();
        for i in 0..(SHOWN as u64 + 5) {
            findings.add("forbid[0]", "`disk.raw`", &format!("file `/f{i}`"), i * 10);
            findings.add(
                "forbid[0]",
                "`disk.raw`",
                &format!("file `/f{i}`"),
                i * 10 + 1,
            );
        }
        findings.unlocated.insert("`disk.raw`".into(), 7);
        let lines = findings.lines();
        assert_eq!(lines.len(), SHOWN + 2);
        assert_eq!(
            lines[0],
            "forbid[0] in `disk.raw`: file `/f0` (byte 0), 2 times"
        );
        assert_eq!(lines[SHOWN], "and 5 more findings (10 occurrences)");
        assert_eq!(
            lines[SHOWN + 1],
            "and 7 more occurrences in `disk.raw`, not located"
        );
        assert_eq!(findings.occurrences(), 2 * (SHOWN as u64 + 5) + 7);
    }

    #[tokio::test]
    async fn a_clean_image_passes_with_a_report_of_what_was_read() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let gz = packed(dir.path(), "gzip", "changelog", b"nothing to see\n");
        let (disk_dir, _) = disk(
            dir.path(),
            &[
                (
                    "/srv/app/config.php",
                    b"<?php $password = getenv('DB_PASSWORD');\n",
                ),
                ("/usr/share/doc/app/changelog.gz", &gz),
            ],
        );
        let qcow2_dir = qcow2(dir.path(), &disk_dir.join(DISK_FILE));
        let (result, log, out) = scan(dir.path(), &disk_dir, &qcow2_dir).await;
        result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(STEP_REPORT)).unwrap()).unwrap();
        assert_eq!(report["findings"], 0);
        assert_eq!(report["patterns"], 3);
        let files = report["files"].as_array().unwrap();
        let bytes_of = |label: &str| {
            files
                .iter()
                .find(|f| f["file"] == label)
                .unwrap_or_else(|| panic!("no {label} in {report}"))["bytes"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(bytes_of("`disk.raw` (template.t.disk)"), 256 << 20);
        assert_eq!(bytes_of("`site.qcow2` (output.qcow2) (as raw)"), 256 << 20);
        assert!(files
            .iter()
            .any(|f| f["file"] == "`SHA256SUMS` (output.qcow2)"));
        assert!(log.contains("no forbidden string anywhere"), "{log}");
        assert_eq!(report["compressed_files"], 1, "{report}");
    }
}

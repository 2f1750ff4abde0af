//! The `disk` kind: the template's final root tree, with every layer composed onto it, made into
//! a partitioned raw disk that boots by itself. It also records the installed package list.
//!
//! The tree is composed from hard links to the store (no gigabytes copied); everything written
//! into it replaces files rather than writing through links. A recipe's `sanitize` operations
//! scrub it after the layers are composed, before it becomes a disk (see
//! [`crate::steps::sanitize::scrub`]); then a `forbid_software` block's rules are checked on
//! it (see [`crate::steps::forbid_software`]), and a match fails the step before any disk is
//! made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{assemble_disk, DiskSpec, MIN_SIZE, SIZE_ALIGN};
use crate::diag::{Diagnostic, Span};
use crate::hash::Digest;
use crate::recipe::{ForbidSoftwareBlock, Named, SanitizeOperation, Seg, TemplateBlock};
use crate::steps::forbid_software::{installed_packages, Guard, SoftwareRules};
use crate::steps::layers::{compose, Layer};
use crate::steps::sanitize::scrub::scrub;
use crate::steps::tools::{GRUB_MKIMAGE, MKFS_EXT4};
use crate::steps::tree::link_tree;
use crate::steps::{io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};

/// The disk image inside the step's output.
pub const DISK_FILE: &str = "disk.raw";
/// The installed packages, `name\tversion` per line.
pub const PACKAGES_FILE: &str = "packages.txt";

pub struct DiskStep {
    id: String,
    tree: String,
    layers: Vec<Layer>,
    depends: Vec<String>,
    size: Option<u64>,
    label: String,
    firmware: crate::recipe::Firmware,
    /// The `sanitize` operations applied to the composed tree, in their fixed order.
    sanitize: Vec<SanitizeOperation>,
    /// The `forbid_software` rules checked on the sanitized tree, if the recipe has the block.
    forbid_software: Option<SoftwareRules>,
    span: Span,
}

/// Bumped when what the sanitize operations remove changes.
const SANITIZE_VERSION: u32 = 1;

impl DiskStep {
    pub fn new(template: &Named<TemplateBlock>, tree: &str, layers: Vec<Layer>) -> DiskStep {
        let mut depends = vec![tree.to_string()];
        depends.extend(layers.iter().map(|l| l.id.clone()));
        DiskStep {
            id: format!("template.{}.disk", template.name),
            tree: tree.to_string(),
            layers,
            depends,
            size: template.block.disk_size.map(|s| s.0),
            label: "root".into(),
            firmware: template
                .block
                .firmware
                .unwrap_or(crate::recipe::Firmware::Bios),
            sanitize: Vec::new(),
            forbid_software: None,
            span: template
                .spans
                .value(&[Seg::Key("disk_size".into())])
                .unwrap_or_else(|| template.header()),
        }
    }

    /// Scrub the composed tree with `operations` before it becomes a disk.
    pub fn with_sanitize(mut self, operations: &[SanitizeOperation]) -> DiskStep {
        let mut operations = operations.to_vec();
        operations.sort();
        operations.dedup();
        self.sanitize = operations;
        self
    }

    /// Check the sanitized tree against a `forbid_software` block's rules before making the
    /// disk.
    pub fn with_forbid_software(mut self, block: Option<&Named<ForbidSoftwareBlock>>) -> DiskStep {
        self.forbid_software = block.map(SoftwareRules::new);
        self
    }
}

/// Bytes used by the files under `root` (for the default disk size).
fn tree_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Without `disk_size`: twice what the tree uses, at least 2 GiB, in whole MiB.
fn default_size(used: u64) -> u64 {
    let size = (used * 2).max(2 << 30);
    size.div_ceil(SIZE_ALIGN) * SIZE_ALIGN
}

impl Step for DiskStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "disk"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.depends
    }

    fn params(&self) -> serde_json::Value {
        let mut params = json!({ "size": self.size, "label": self.label, "layers": self.layers, "firmware": self.firmware });
        // Absent without operations, so that disks of recipes without them keep their keys.
        if !self.sanitize.is_empty() {
            params["sanitize"] =
                json!({ "version": SANITIZE_VERSION, "operations": self.sanitize });
        }
        // Absent without the block, likewise.
        if let Some(rules) = &self.forbid_software {
            params["forbid_software"] = json!(rules);
        }
        params
    }

    fn details(&self) -> Vec<String> {
        self.forbid_software
            .as_ref()
            .map(SoftwareRules::details)
            .unwrap_or_default()
    }

    fn resolve(&self, _ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        if let Some(size) = self.size {
            if size < MIN_SIZE {
                return Err(Diagnostic::error("the disk is too small")
                    .at(&self.span, format!("at least {} MiB", MIN_SIZE >> 20)));
            }
        }
        let mut tools = BTreeMap::new();
        for tool in [MKFS_EXT4, GRUB_MKIMAGE] {
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
            let tree = ctx.upstream[&self.tree].clone();
            let root = ctx.scratch.join("root");
            std::fs::create_dir_all(&root).map_err(io_error("create", &root))?;
            link_tree(&tree, &root)?;
            let layers: Vec<(Layer, PathBuf)> = self
                .layers
                .iter()
                .map(|l| (l.clone(), ctx.upstream[&l.id].clone()))
                .collect();
            compose(&root, &layers)?;
            for (operation, done) in scrub(&root, &self.sanitize)? {
                ctx.say(&format!("sanitize {}", done.summary(operation)));
            }
            // The package list is read before the disk is made (making it does not touch the
            // dpkg database): the guard needs it, and `packages.txt` records it.
            let packages = installed_packages(&root)?;
            if let Some(rules) = &self.forbid_software {
                let report = Guard::new(rules)?.check(&root, &packages)?;
                for line in report.log_lines() {
                    ctx.say(&line);
                }
                if let Some(failure) = report.failure(&self.id) {
                    return Err(StepError::Unmet(failure));
                }
            }
            let size = match self.size {
                Some(size) => size.div_ceil(SIZE_ALIGN) * SIZE_ALIGN,
                None => default_size(tree_bytes(&root)),
            };
            // The filesystem UUID derives from the inputs (the store names upstream outputs by
            // their digests): the same inputs, the same UUID, on any machine.
            let digest_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string());
            let seed = Digest::of_canonical(&json!({
                "tree": digest_of(&tree),
                "layers": layers.iter().map(|(l, p)| (l, digest_of(p))).collect::<Vec<_>>(),
                "size": size,
            }));
            let mut spec = DiskSpec::new(size, &seed, &self.label);
            spec.firmware = match self.firmware {
                crate::recipe::Firmware::Bios => super::Firmware::Bios,
                crate::recipe::Firmware::BiosAndUefi => super::Firmware::BiosAndUefi,
            };
            let out_raw = ctx.out.join(DISK_FILE);
            let scratch = ctx.scratch.join("disk");
            std::fs::create_dir_all(&scratch).map_err(io_error("create", &scratch))?;
            let (root2, out2, scratch2) = (root.clone(), out_raw.clone(), scratch.clone());
            let info =
                tokio::task::spawn_blocking(move || assemble_disk(&root2, &spec, &out2, &scratch2))
                    .await
                    .expect("the disk task does not panic")
                    .map_err(|e| StepError::unmet("assembling the disk: ", &e))?;
            let list = ctx.out.join(PACKAGES_FILE);
            std::fs::write(&list, packages.as_text()).map_err(io_error("write", &list))?;
            let described = ctx.out.join("disk.json");
            let text = serde_json::to_string_pretty(&json!({
                "size_bytes": info.size_bytes,
                "partition_offset": info.partition_offset,
                "fs_uuid": info.fs_uuid,
                "kernel": info.kernel.version,
                "layers": self.layers,
            }))
            .expect("disk info serializes");
            std::fs::write(&described, text).map_err(io_error("write", &described))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::SpanIndex;
    use crate::steps::sanitize::scrub::SSH_KEYGEN_UNIT;
    use crate::steps::sanitize::testutil::{context, small_tree, write};
    use std::os::unix::fs::MetadataExt;

    fn template() -> Named<TemplateBlock> {
        Named {
            name: "t".into(),
            block: serde_json::from_value(json!({ "disk_size": 268435456u64 })).unwrap(),
            spans: SpanIndex::default(),
        }
    }

    /// Path → (inode, content) of every file under `dir`.
    fn files(dir: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let meta = e.metadata().unwrap();
                (
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    (meta.ino(), std::fs::read(e.path()).unwrap()),
                )
            })
            .collect()
    }

    /// What debugfs says of `path` in the disk's file system.
    fn debugfs_stat(raw: &Path, offset: u64, path: &str) -> String {
        let output = std::process::Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(format!("{}?offset={offset}", raw.display()))
            .env("DEBUGFS_PAGER", "__none__")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    #[test]
    fn sanitize_operations_enter_the_key_only_when_asked() {
        let plain = DiskStep::new(&template(), "template.t.system", vec![]);
        assert!(plain.params().get("sanitize").is_none());
        let scrubbed = DiskStep::new(&template(), "template.t.system", vec![]).with_sanitize(&[
            SanitizeOperation::Logs,
            SanitizeOperation::ShellHistory,
            SanitizeOperation::Logs,
        ]);
        assert_eq!(
            scrubbed.params()["sanitize"],
            json!({ "version": 1, "operations": ["shell-history", "logs"] })
        );
    }

    fn forbid(packages: &[&str], paths: &[&str]) -> Named<ForbidSoftwareBlock> {
        Named {
            name: String::new(),
            block: ForbidSoftwareBlock {
                packages: packages.iter().map(|s| s.to_string()).collect(),
                paths: paths.iter().map(|s| s.to_string()).collect(),
            },
            spans: SpanIndex::default(),
        }
    }

    #[test]
    fn forbid_software_enters_the_key_only_when_the_recipe_has_it() {
        let plain = DiskStep::new(&template(), "template.t.system", vec![]);
        assert!(plain.params().get("forbid_software").is_none());
        assert!(plain.details().is_empty());
        let guarded = DiskStep::new(&template(), "template.t.system", vec![])
            .with_forbid_software(Some(&forbid(&["signalp*"], &["**/wublast/**"])));
        assert_eq!(
            guarded.params()["forbid_software"],
            json!({ "version": 1, "packages": ["signalp*"], "paths": ["**/wublast/**"] })
        );
        let mut without = guarded.params();
        without.as_object_mut().unwrap().remove("forbid_software");
        assert_eq!(without, plain.params());
    }

    #[tokio::test]
    async fn forbidden_software_fails_the_step_after_sanitizing_and_before_the_disk() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: the disk step's tree keeps owners, which needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store_tree = dir.path().join("store-tree");
        small_tree(&store_tree);
        write(
            &store_tree,
            "/var/lib/dpkg/status",
            b"Package: signalp\nStatus: install ok installed\nVersion: 6.0\nArchitecture: amd64\nDescription: x\n\nPackage: base-files\nStatus: install ok installed\nVersion: 12.4\nArchitecture: amd64\nDescription: y\n\n",
        );
        // Left in /tmp, which `tmp-files` empties: no violation.
        write(&store_tree, "/tmp/wublast/blastall", b"WU-BLAST\n");
        write(&store_tree, "/opt/wublast/blastall", b"WU-BLAST\n");
        let step = DiskStep::new(&template(), "template.t.system", vec![])
            .with_sanitize(&[SanitizeOperation::TmpFiles])
            .with_forbid_software(Some(&forbid(&["signalp*"], &["**/wublast/**"])));
        let upstream = BTreeMap::from([("template.t.system".to_string(), store_tree.clone())]);
        let (ctx, said) = context(&dir.path().join("run"), upstream, vec![]);
        let out = ctx.out.clone();
        let error = step.run(ctx).await.unwrap_err().to_string();
        assert_eq!(
            error,
            "software that must not be redistributed is in the VM (2 matches); no disk is made:\n  - package `signalp` 6.0 matches forbid_software.packages[0] \"signalp*\"\n  - `/opt/wublast/blastall` matches forbid_software.paths[0] \"**/wublast/**\""
        );
        assert!(!out.join(DISK_FILE).exists(), "a disk was made");
        let said = said.lock().unwrap().join("\n");
        assert!(
            said.contains("sanitize tmp-files: removed 1 file"),
            "{said}"
        );
        assert!(
            said.contains("forbid_software: FORBIDDEN: `/opt/wublast/blastall`"),
            "{said}"
        );
        assert!(store_tree.join("tmp/wublast/blastall").exists());

        // Clean, the same step makes its disk and records the packages.
        std::fs::remove_dir_all(store_tree.join("opt/wublast")).unwrap();
        write(
            &store_tree,
            "/var/lib/dpkg/status",
            b"Package: base-files\nStatus: install ok installed\nVersion: 12.4\nArchitecture: amd64\nDescription: y\n\n",
        );
        let upstream = BTreeMap::from([("template.t.system".to_string(), store_tree.clone())]);
        let (ctx, said) = context(&dir.path().join("run2"), upstream, vec![]);
        let out = ctx.out.clone();
        step.run(ctx).await.unwrap();
        assert!(out.join(DISK_FILE).exists());
        assert_eq!(
            std::fs::read_to_string(out.join(PACKAGES_FILE)).unwrap(),
            "base-files\t12.4\n"
        );
        let said = said.lock().unwrap().join("\n");
        assert!(said.contains("forbid_software: 1 package and"), "{said}");
    }

    #[tokio::test]
    async fn the_disk_step_scrubs_its_tree_and_never_the_store() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: the disk step's tree keeps owners, which needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store_tree = dir.path().join("store-tree");
        small_tree(&store_tree);
        write(&store_tree, "/root/.bash_history", b"psql -W hunter2\n");
        write(
            &store_tree,
            "/etc/ssh/ssh_host_ed25519_key",
            b"PRIVATE KEY\n",
        );
        write(&store_tree, "/var/log/dpkg.log", b"status installed\n");
        write(&store_tree, "/tmp/leftover", b"tmp\n");
        write(
            &store_tree,
            "/etc/machine-id",
            b"0123456789abcdef0123456789abcdef\n",
        );
        let log = store_tree.join("var/log/dpkg.log");
        std::os::unix::fs::chown(&log, Some(0), Some(4)).unwrap();
        let before = files(&store_tree);

        let step = DiskStep::new(&template(), "template.t.system", vec![]).with_sanitize(&[
            SanitizeOperation::ShellHistory,
            SanitizeOperation::SshHostKeys,
            SanitizeOperation::Logs,
            SanitizeOperation::MachineId,
            SanitizeOperation::TmpFiles,
        ]);
        let upstream = BTreeMap::from([("template.t.system".to_string(), store_tree.clone())]);
        let (ctx, said) = context(&dir.path().join("run"), upstream, vec![]);
        let out = ctx.out.clone();
        step.run(ctx).await.unwrap();

        assert_eq!(before, files(&store_tree), "the store's tree changed");
        let said = said.lock().unwrap().join("\n");
        for line in [
            "sanitize shell-history: removed 1 file",
            "sanitize ssh-host-keys: removed 1 file",
            "sanitize logs: removed 0 files, emptied 1",
            "sanitize machine-id: removed 0 files, emptied 1",
            "sanitize tmp-files: removed 1 file",
        ] {
            assert!(said.contains(line), "no `{line}` in:\n{said}");
        }
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("disk.json")).unwrap()).unwrap();
        let offset = info["partition_offset"].as_u64().unwrap();
        let raw = out.join(DISK_FILE);
        for gone in [
            "/root/.bash_history",
            "/etc/ssh/ssh_host_ed25519_key",
            "/tmp/leftover",
        ] {
            let stat = debugfs_stat(&raw, offset, gone);
            assert!(stat.contains("File not found"), "{gone}: {stat}");
        }
        let unit = debugfs_stat(
            &raw,
            offset,
            &format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"),
        );
        assert!(unit.contains("Type: regular"), "{unit}");
        let log = debugfs_stat(&raw, offset, "/var/log/dpkg.log");
        assert!(
            log.contains("Type: regular")
                && log.contains("Size: 0")
                && log.contains("Group:     4"),
            "{log}"
        );
        let id = debugfs_stat(&raw, offset, "/etc/machine-id");
        assert!(id.contains("Size: 0"), "{id}");
    }
}

//! The `disk` kind: the template's final root tree, with every layer composed onto it, made into
//! a partitioned raw disk that boots by itself. It also records the installed package list.
//!
//! The tree is composed from hard links to the store (no gigabytes copied); everything written
//! into it replaces files rather than writing through links.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{assemble_disk, DiskSpec, MIN_SIZE, SIZE_ALIGN};
use crate::diag::{Diagnostic, Span};
use crate::hash::Digest;
use crate::recipe::{Named, Seg, TemplateBlock};
use crate::steps::layers::{compose, Layer};
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
    span: Span,
}

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
            span: template
                .spans
                .value(&[Seg::Key("disk_size".into())])
                .unwrap_or_else(|| template.header()),
        }
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
        json!({ "size": self.size, "label": self.label, "layers": self.layers, "firmware": self.firmware })
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
            let packages = std::process::Command::new("dpkg-query")
                .arg(format!(
                    "--admindir={}",
                    root.join("var/lib/dpkg").display()
                ))
                .args(["-W", "-f", "${Package}\t${Version}\n"])
                .output()
                .map_err(|source| StepError::Spawn {
                    program: "dpkg-query".into(),
                    source,
                })?;
            let list = ctx.out.join(PACKAGES_FILE);
            std::fs::write(&list, &packages.stdout).map_err(io_error("write", &list))?;
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

//! The `import` kind: a template's root tree taken from an existing qcow2 or raw disk image
//! instead of debootstrap. The image is converted to raw, its Linux root partition found from
//! the partition table, mounted read-only through a loop device at the partition's offset (no
//! udev needed), and copied out with owners, modes and extended attributes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::json;

use super::inputs::hash_file;
use super::loop_mount::LoopMount;
use super::tools::QEMU_IMG;
use super::tree::copy_tree;
use super::{ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};
use crate::diag::{Diagnostic, Span};
use crate::recipe::{ImageImport, Named, Seg, TemplateBlock};

pub struct ImportStep {
    id: String,
    options: ImageImport,
    span: Span,
}

impl ImportStep {
    pub fn new(template: &Named<TemplateBlock>, options: &ImageImport) -> ImportStep {
        ImportStep {
            id: format!("template.{}.import", template.name),
            options: options.clone(),
            span: template
                .spans
                .value(&[Seg::Key("image".into())])
                .unwrap_or_else(|| template.header()),
        }
    }
}

#[derive(Deserialize)]
struct Table {
    partitiontable: PartitionTable,
}

#[derive(Deserialize)]
struct PartitionTable {
    sectorsize: Option<u64>,
    partitions: Vec<Partition>,
}

#[derive(Deserialize)]
struct Partition {
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    kind: String,
}

/// Linux file system partition types: MBR `83`, GPT "Linux filesystem" and "Linux root x86-64".
fn is_linux(kind: &str) -> bool {
    let kind = kind.to_ascii_uppercase();
    kind == "83"
        || kind == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        || kind == "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
}

/// (offset, size) in bytes of the largest Linux partition of a raw image.
fn root_partition(raw: &Path) -> Result<(u64, u64), StepError> {
    let output = Command::new("sfdisk")
        .arg("--json")
        .arg(raw)
        .output()
        .map_err(|source| StepError::Spawn {
            program: "sfdisk".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(StepError::Unmet(format!(
            "the image has no partition table sfdisk can read: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let table: Table = serde_json::from_slice(&output.stdout)
        .map_err(|e| StepError::Unmet(format!("cannot read sfdisk's answer: {e}")))?;
    let sector = table.partitiontable.sectorsize.unwrap_or(512);
    table
        .partitiontable
        .partitions
        .iter()
        .filter(|p| is_linux(&p.kind))
        .max_by_key(|p| p.size)
        .map(|p| (p.start * sector, p.size * sector))
        .ok_or_else(|| StepError::Unmet("the image has no Linux partition".into()))
}

fn run(program: &str, args: &[&str]) -> Result<String, StepError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| StepError::Spawn {
            program: program.into(),
            source,
        })?;
    if !output.status.success() {
        return Err(StepError::Failed {
            program: format!("{program} {}", args.join(" ")),
            status: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

impl Step for ImportStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "import"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &[]
    }

    fn params(&self) -> serde_json::Value {
        json!({ "path": self.options.path, "format": self.options.format })
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let path = ctx.recipe_dir.join(&self.options.path);
        let digest = hash_file(&path).map_err(|e| {
            Diagnostic::error(format!(
                "cannot read the image `{}`: {e}",
                self.options.path
            ))
            .at(&self.span, "imported here")
            .help("the path is relative to the recipe's folder")
        })?;
        let (program, version) = QEMU_IMG.resolve(&self.span)?;
        Ok(Resolved {
            inputs: BTreeMap::from([(self.options.path.clone(), digest)]),
            tools: BTreeMap::from([(program, version)]),
        })
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let image = ctx.recipe_dir.join(&self.options.path);
            let raw = ctx.scratch.join("import.raw");
            let format = self
                .options
                .format
                .clone()
                .unwrap_or_else(|| "qcow2".into());
            let (image_s, raw_s) = (image.display().to_string(), raw.display().to_string());
            run(
                "qemu-img",
                &["convert", "-f", &format, "-O", "raw", &image_s, &raw_s],
            )?;
            let (offset, size) = root_partition(&raw)?;
            let mounted = LoopMount::ext4_read_only(
                &raw,
                offset,
                size,
                &ctx.scratch.join("mnt"),
                nix::mount::MsFlags::empty(),
            )?;
            copy_tree(mounted.path(), &ctx.out)?;
            drop(mounted);
            // The old boot setup and mounts are the disk step's to write afresh.
            let _ = std::fs::remove_file(ctx.out.join("etc/fstab"));
            let _ = std::fs::remove_dir_all(ctx.out.join("lost+found"));
            Ok(())
        })
    }
}

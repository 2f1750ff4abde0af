//! The `output` kind: the VM's disk in a format users download, one step per `output` block,
//! after the disk: `qcow2` (optionally compressed), `vmdk` (streamOptimized or
//! monolithicSparse), `vdi`, `raw`, `ova` (OVF 1.0 + manifest + VMDK), and `libvirt` (a qcow2
//! with a domain XML beside it). Each output holds a `SHA256SUMS` of its files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::disk::step::DISK_FILE;
use super::image::{
    build_ova, convert, define_libvirt_domain, libvirt_domain_xml, ConvertOptions, DiskFormat,
    DomainType, GuestOs, VmSpec, VmdkSubformat,
};
use super::tools::QEMU_IMG;
use super::{io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};
use crate::diag::{Diagnostic, Span};
use crate::exec::export::SHA256SUMS;
use crate::recipe::{Named, OutputBlock};

pub struct OutputStep {
    id: String,
    format: String,
    disk: Vec<String>,
    name: String,
    block: OutputBlock,
    span: Span,
}

impl OutputStep {
    pub fn new(output: &Named<OutputBlock>, disk: &str, default_name: &str) -> OutputStep {
        OutputStep {
            id: format!("output.{}", output.name),
            format: output.name.clone(),
            disk: vec![disk.to_string()],
            name: output
                .block
                .name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            block: output.block.clone(),
            span: output.header(),
        }
    }

    fn spec(&self) -> VmSpec {
        VmSpec {
            name: self.name.clone(),
            cpus: self.block.cpus.unwrap_or(1),
            memory_mib: self.block.memory.map(|m| m.0 >> 20).unwrap_or(1024),
            os: GuestOs::Debian12,
            description: Some(format!("{} (built by vmbuild)", self.name)),
        }
    }

    /// The disk file the step writes (the OVA for `ova`).
    pub fn file_name(&self) -> String {
        match self.format.as_str() {
            "libvirt" => format!("{}.qcow2", self.name),
            other => format!("{}.{}", self.name, other),
        }
    }

    fn domain_type(&self) -> DomainType {
        match self.block.domain_type.as_deref() {
            Some("qemu") => DomainType::Qemu,
            _ => DomainType::Kvm,
        }
    }

    /// For `libvirt`: the domain XML's file name and its text as export writes it, but naming
    /// the image by its file name instead of the export folder (unknown before apply).
    pub fn domain_xml_preview(&self) -> Option<(String, String)> {
        (self.format == "libvirt").then(|| {
            let xml = libvirt_domain_xml(
                &self.spec(),
                Path::new(&self.file_name()),
                self.domain_type(),
            );
            (format!("{}.xml", self.name), xml)
        })
    }

    /// The format QEMU opens the main file with, for QA (`ova` is unpacked first).
    pub fn boot_format(&self) -> &str {
        match self.format.as_str() {
            "libvirt" => "qcow2",
            other => other,
        }
    }
}

/// `sha256sum` of a file, streamed.
fn sha256_file(path: &Path) -> Result<String, StepError> {
    let mut file = std::fs::File::open(path).map_err(io_error("read", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn image_error(error: super::image::ImageError) -> StepError {
    StepError::unmet("", &error)
}

impl Step for OutputStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "output"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.disk
    }

    fn params(&self) -> serde_json::Value {
        json!({ "format": self.format, "name": self.name, "options": self.block })
    }

    fn artifacts(&self) -> bool {
        true
    }

    fn after_export(
        &self,
        dir: &Path,
        libvirt_uri: Option<&str>,
    ) -> Result<Vec<String>, StepError> {
        if self.format != "libvirt" {
            return Ok(Vec::new());
        }
        // The domain names the exported qcow2, where the user keeps it, not the store's copy.
        let qcow2 =
            std::path::absolute(dir.join(self.file_name())).map_err(io_error("resolve", dir))?;
        let xml = libvirt_domain_xml(&self.spec(), &qcow2, self.domain_type());
        let path = dir.join(format!("{}.xml", self.name));
        std::fs::write(&path, &xml).map_err(io_error("write", &path))?;
        let mut done = vec![format!("{}.xml", self.name)];
        if let Some(uri) = libvirt_uri.or(self.block.libvirt_uri.as_deref()) {
            let name = define_libvirt_domain(uri, &xml).map_err(image_error)?;
            done.push(format!("domain `{name}` defined in `{uri}`"));
        }
        Ok(done)
    }

    fn resolve(&self, _ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        if let Some(kind) = self.block.domain_type.as_deref() {
            if self.format != "libvirt" || !["kvm", "qemu"].contains(&kind) {
                return Err(Diagnostic::error(format!(
                    "`domain_type = \"{kind}\"` does not apply here"
                ))
                .at(
                    &self.span,
                    "`domain_type` is for `libvirt`: `kvm` or `qemu`",
                ));
            }
        }
        if let Err(e) = self.spec().validate() {
            return Err(
                Diagnostic::error(format!("`{}` cannot name an output: {e}", self.name))
                    .at(&self.span, "this output"),
            );
        }
        if let Some(sub) = &self.block.subformat {
            if self.format != "vmdk"
                || !["streamOptimized", "monolithicSparse"].contains(&sub.as_str())
            {
                return Err(Diagnostic::error(format!(
                    "`subformat = \"{sub}\"` does not apply here"
                ))
                .at(
                    &self.span,
                    "`subformat` is for `vmdk`: `streamOptimized` or `monolithicSparse`",
                ));
            }
        }
        let (program, version) = QEMU_IMG.resolve(&self.span)?;
        Ok(Resolved {
            inputs: BTreeMap::new(),
            tools: BTreeMap::from([(program, version)]),
        })
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let raw = ctx.upstream[&self.disk[0]].join(DISK_FILE);
            let out = ctx.out.join(self.file_name());
            let scratch = ctx.scratch.clone();
            let format = self.format.clone();
            let spec = self.spec();
            let options = ConvertOptions {
                compress: self.block.compress,
                vmdk_subformat: match self.block.subformat.as_deref() {
                    Some("monolithicSparse") => VmdkSubformat::MonolithicSparse,
                    _ => VmdkSubformat::StreamOptimized,
                },
                ..ConvertOptions::default()
            };
            let out2 = out.clone();
            tokio::task::spawn_blocking(move || match format.as_str() {
                "ova" => build_ova(&raw, &spec, &out2, &scratch).map(|_| ()),
                "qcow2" | "libvirt" => convert(&raw, DiskFormat::Qcow2, &options, &out2),
                "vmdk" => convert(&raw, DiskFormat::Vmdk, &options, &out2),
                "vdi" => convert(&raw, DiskFormat::Vdi, &options, &out2),
                _ => convert(&raw, DiskFormat::Raw, &options, &out2),
            })
            .await
            .expect("the conversion task does not panic")
            .map_err(image_error)?;
            let sums = format!("{}  {}\n", sha256_file(&out)?, self.file_name());
            let sums_path = ctx.out.join(SHA256SUMS);
            std::fs::write(&sums_path, sums).map_err(io_error("write", &sums_path))?;
            Ok(())
        })
    }
}

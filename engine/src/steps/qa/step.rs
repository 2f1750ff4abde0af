//! The `qa` kind: boot one built output under QEMU and run the recipe's checks against it. Its
//! key includes the output it boots, so QA of an unchanged image is cached too. Its output is
//! the serial console log and a JSON report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::{run_qa, BootSpec};
use crate::diag::{Diagnostic, Span};
use crate::recipe::{Named, QaBlock};
use crate::steps::tools::QEMU_SYSTEM;
use crate::steps::{io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};

pub struct QaStep {
    id: String,
    output: Vec<String>,
    format: String,
    file: String,
    block: QaBlock,
    span: Span,
}

impl QaStep {
    /// QA of the output step `output` (`output.FORMAT`), whose disk is `file` in its tree.
    pub fn new(qa: &Named<QaBlock>, format: &str, output: &str, file: &str) -> QaStep {
        QaStep {
            id: format!("qa.{format}"),
            output: vec![output.to_string()],
            format: format.to_string(),
            file: file.to_string(),
            block: qa.block.clone(),
            span: qa.header(),
        }
    }
}

/// Unpack the VMDK of an OVA into `scratch`: QA boots the disk the OVA carries.
fn vmdk_of_ova(ova: &Path, scratch: &Path) -> Result<PathBuf, StepError> {
    let file = std::fs::File::open(ova).map_err(io_error("open", ova))?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(io_error("read", ova))? {
        let mut entry = entry.map_err(io_error("read", ova))?;
        let name = entry
            .path()
            .map_err(io_error("read", ova))?
            .to_string_lossy()
            .to_string();
        if name.ends_with(".vmdk") {
            let target = scratch.join(&name);
            entry.unpack(&target).map_err(io_error("unpack", &target))?;
            return Ok(target);
        }
    }
    Err(StepError::Unmet(format!(
        "`{}` holds no VMDK",
        ova.display()
    )))
}

impl Step for QaStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "qa"
    }

    fn version(&self) -> u32 {
        4
    }

    fn depends_on(&self) -> &[String] {
        &self.output
    }

    fn params(&self) -> serde_json::Value {
        json!({
            "format": self.format,
            "timeout": self.block.timeout,
            "http": self.block.http,
            "command": self.block.command,
        })
    }

    fn resolve(&self, _ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let (program, version) = QEMU_SYSTEM.resolve(&self.span)?;
        Ok(Resolved {
            inputs: BTreeMap::new(),
            tools: BTreeMap::from([(program, version)]),
        })
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let tree = ctx.upstream[&self.output[0]].clone();
            let mut disk = tree.join(&self.file);
            let mut format = match self.format.as_str() {
                "libvirt" => "qcow2".to_string(),
                other => other.to_string(),
            };
            if format == "ova" {
                disk = vmdk_of_ova(&disk, &ctx.scratch)?;
                format = "vmdk".into();
            }
            let console = ctx.out.join("console.log");
            let boot_scratch = ctx.scratch.join("boot");
            std::fs::create_dir_all(&boot_scratch).map_err(io_error("create", &boot_scratch))?;
            let mut spec = BootSpec::new(&disk, &format, &console, &boot_scratch);
            spec.boot_timeout = Duration::from_secs(self.block.timeout.map(|t| t.0).unwrap_or(300));
            let result = run_qa(
                &spec,
                &self.block.http,
                &self.block.command,
                ctx.cancel.clone(),
            )
            .await;
            // The console tells what happened: keep it in the log as well.
            if let Ok(text) = std::fs::read_to_string(&console) {
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                for line in tail.into_iter().rev() {
                    (ctx.on_line)(&format!("console: {line}"));
                }
            }
            let report = match result {
                Ok(report) => report,
                Err(error) if ctx.cancel.is_cancelled() => {
                    let _ = error;
                    return Err(StepError::Cancelled);
                }
                Err(error) => {
                    return Err(StepError::Unmet(format!(
                        "QA of `{}`: {error}",
                        self.format
                    )))
                }
            };
            let path = ctx.out.join("report.json");
            let text = serde_json::to_string_pretty(&report).expect("a QA report serializes");
            std::fs::write(&path, text).map_err(io_error("write", &path))?;
            if !report.passed() {
                let failed: Vec<String> = report
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("{} `{}`: {}", c.kind, c.name, c.detail))
                    .collect();
                return Err(StepError::Unmet(format!(
                    "QA of `{}` failed: {}",
                    self.format,
                    failed.join("; ")
                )));
            }
            Ok(())
        })
    }
}

//! The `debootstrap` kind: a Debian root tree made by debootstrap, with what every vmbuild VM
//! needs to boot by itself (a kernel, systemd, GRUB's files, DHCP networking, the QEMU guest
//! agent for QA). The mirror defaults to the one the host's apt sources use.

use std::collections::BTreeMap;

use serde_json::json;

use super::tools::{self, DEBOOTSTRAP};
use super::{ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};
use crate::diag::{Diagnostic, Span};
use crate::recipe::{Debootstrap, Named, Seg, TemplateBlock};

/// Packages every VM gets, beside the kernel: boot, network by DHCP, dbus (for systemd-logind,
/// which acts on the ACPI power button that VMware's and VirtualBox's "shut down" press), and
/// the guest agent that QA talks to.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "grub-pc",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "qemu-guest-agent",
];

/// The kernel package when the recipe names none: Debian's generic kernel, whose drivers cover
/// QEMU/KVM, VMware and VirtualBox.
pub const DEFAULT_KERNEL: &str = "linux-image-amd64";

pub struct DebootstrapStep {
    id: String,
    options: Debootstrap,
    packages: Vec<String>,
    mirror: Option<String>,
    span: Span,
}

impl DebootstrapStep {
    pub fn new(template: &Named<TemplateBlock>, options: &Debootstrap) -> DebootstrapStep {
        let block = &template.block;
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
        packages.push(
            block
                .kernel
                .clone()
                .unwrap_or_else(|| DEFAULT_KERNEL.into()),
        );
        if let Some(user) = &block.user {
            if !user.ssh_authorized_keys.is_empty() {
                packages.push("openssh-server".into());
            }
            if user.groups.iter().any(|g| g == "sudo") {
                packages.push("sudo".into());
            }
        }
        packages.extend(options.packages.iter().cloned());
        packages.sort();
        packages.dedup();
        DebootstrapStep {
            id: format!("template.{}.debootstrap", template.name),
            options: options.clone(),
            packages,
            mirror: options.mirror.clone().or_else(tools::host_mirror),
            span: template
                .spans
                .value(&[Seg::Key("debootstrap".into())])
                .unwrap_or_else(|| template.header()),
        }
    }
}

impl Step for DebootstrapStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "debootstrap"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &[]
    }

    fn params(&self) -> serde_json::Value {
        let mut components = self.options.components.clone();
        components.sort();
        json!({
            "suite": self.options.suite,
            "variant": self.options.variant,
            "packages": self.packages,
            "components": components,
            "mirror": self.mirror,
        })
    }

    fn resolve(&self, _ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        if self.mirror.is_none() {
            return Err(Diagnostic::error("no Debian mirror to bootstrap from")
                .at(
                    &self.span,
                    "no `mirror` here, and none in the host's apt sources",
                )
                .help("set `mirror = \"http://...\"` in the debootstrap block"));
        }
        let (program, version) = DEBOOTSTRAP.resolve(&self.span)?;
        Ok(Resolved {
            inputs: BTreeMap::new(),
            tools: BTreeMap::from([(program, version)]),
        })
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let cache = ctx.cache.join("debootstrap");
            std::fs::create_dir_all(&cache).map_err(|source| StepError::Io {
                action: "create",
                path: cache.clone(),
                source,
            })?;
            let mut args = vec![
                format!(
                    "--variant={}",
                    self.options.variant.as_deref().unwrap_or("minbase")
                ),
                format!("--include={}", self.packages.join(",")),
                format!("--cache-dir={}", cache.display()),
            ];
            if !self.options.components.is_empty() {
                args.push(format!(
                    "--components={}",
                    self.options.components.join(",")
                ));
            }
            args.push(self.options.suite.clone());
            args.push(ctx.out.display().to_string());
            args.push(self.mirror.clone().unwrap_or_default());
            let env =
                BTreeMap::from([("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())]);
            super::process::run(
                super::process::Invocation {
                    program: "debootstrap".into(),
                    args,
                    env,
                    cwd: ctx.scratch.clone(),
                },
                &ctx,
            )
            .await?;
            // Files debootstrap leaves that differ from one run to the next, or must not ship.
            for leftover in ["var/cache/apt/archives"] {
                let path = ctx.out.join(leftover);
                if path.is_dir() {
                    for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_file()) {
                            let _ = std::fs::remove_file(entry.path());
                        }
                    }
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Ok(())
        })
    }
}

//! The `provision-puppet` kind: `puppet apply` of a manifest with its module path, inside a copy
//! of the template tree, in a chroot. Puppet must be in the tree (installed by the recipe, for
//! example through debootstrap's `packages`). Manifest and modules are removed afterwards.

use serde_json::json;

use super::chroot::{copy_upstream_tree, Chroot, Provisioner};
use super::inputs::hash_path;

use super::{ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};
use crate::diag::Diagnostic;
use crate::recipe::{Named, PuppetProvision, TemplateBlock};

pub struct PuppetProvisionStep {
    place: Provisioner,
    options: PuppetProvision,
}

/// Where manifest and modules are put inside the tree while Puppet runs.
pub const PUPPET_DIR: &str = "tmp/vmbuild-puppet";

impl PuppetProvisionStep {
    pub fn new(
        template: &Named<TemplateBlock>,
        index: usize,
        options: &PuppetProvision,
        previous: &str,
    ) -> PuppetProvisionStep {
        PuppetProvisionStep {
            place: Provisioner::new(template, index, previous),
            options: options.clone(),
        }
    }
}

impl Step for PuppetProvisionStep {
    fn id(&self) -> &str {
        &self.place.id
    }

    fn kind(&self) -> &'static str {
        "provision-puppet"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.place.after
    }

    fn params(&self) -> serde_json::Value {
        json!({ "manifest": self.options.manifest, "module_path": self.options.module_path })
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let mut resolved = Resolved::default();
        for path in std::iter::once(&self.options.manifest).chain(&self.options.module_path) {
            let found = hash_path(&ctx.recipe_dir, path).map_err(|e| {
                Diagnostic::error(format!("cannot read `{path}`: {e}"))
                    .at(&self.place.span, "this provisioner")
                    .help("manifests and module paths are relative to the recipe's folder")
            })?;
            resolved.inputs.extend(found);
        }
        Ok(resolved)
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            copy_upstream_tree(&ctx)?;
            if !ctx.out.join("usr/bin/puppet").exists() {
                return Err(StepError::Unmet(
                    "Puppet is not installed in the template: add `puppet` to the debootstrap block's `packages`, or install it in an earlier shell provisioner".into(),
                ));
            }
            let staged = ctx.out.join(PUPPET_DIR);
            let mkdir = |p: &std::path::Path| {
                std::fs::create_dir_all(p).map_err(|source| StepError::Io {
                    action: "create",
                    path: p.to_path_buf(),
                    source,
                })
            };
            mkdir(&staged)?;
            let manifest_in_tree = format!("/{PUPPET_DIR}/site.pp");
            std::fs::copy(
                ctx.recipe_dir.join(&self.options.manifest),
                staged.join("site.pp"),
            )
            .map_err(|source| StepError::Io {
                action: "copy",
                path: ctx.recipe_dir.join(&self.options.manifest),
                source,
            })?;
            let mut module_dirs = Vec::new();
            for (i, dir) in self.options.module_path.iter().enumerate() {
                let target = staged.join(format!("modules{i}"));
                mkdir(&target)?;
                super::tree::copy_tree(&ctx.recipe_dir.join(dir), &target)?;
                module_dirs.push(format!("/{PUPPET_DIR}/modules{i}"));
            }
            let mut command = String::from("puppet apply --detailed-exitcodes --color=false");
            if !module_dirs.is_empty() {
                command.push_str(&format!(" --modulepath={}", module_dirs.join(":")));
            }
            // 0: nothing to change, 2: changes applied; 4 and 6 mean failures.
            command.push_str(&format!(
                " {manifest_in_tree}; rc=$?; [ $rc -eq 0 ] || [ $rc -eq 2 ]"
            ));
            let chroot = Chroot::enter(&ctx.out)?;
            let result = chroot
                .run("/bin/sh", &["-c", &command], Default::default(), &ctx)
                .await;
            let left = chroot.leave();
            let _ = std::fs::remove_dir_all(&staged);
            result?;
            left
        })
    }
}

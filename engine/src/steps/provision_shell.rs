//! The `provision-shell` kind: a shell script (a file of the recipe, or inline lines) run as
//! root inside a copy of the template tree, in a chroot. The script is removed from the tree
//! afterwards; its output goes to the step's log.

use std::collections::BTreeMap;

use serde_json::json;

use super::chroot::{copy_upstream_tree, Chroot, Provisioner};
use super::inputs::hash_path;
use super::tree::replace_file;
use super::{ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};
use crate::diag::Diagnostic;
use crate::recipe::{Named, ShellProvision, TemplateBlock, Text};

pub struct ShellProvisionStep {
    place: Provisioner,
    options: ShellProvision,
}

/// Where the script is put inside the tree while it runs.
pub const SCRIPT_IN_TREE: &str = "tmp/vmbuild-provision.sh";

impl ShellProvisionStep {
    pub fn new(
        template: &Named<TemplateBlock>,
        index: usize,
        options: &ShellProvision,
        previous: &str,
    ) -> ShellProvisionStep {
        ShellProvisionStep {
            place: Provisioner::new(template, index, previous),
            options: options.clone(),
        }
    }
}

impl Step for ShellProvisionStep {
    fn id(&self) -> &str {
        &self.place.id
    }

    fn kind(&self) -> &'static str {
        "provision-shell"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.place.after
    }

    fn params(&self) -> serde_json::Value {
        json!({ "script": self.options.script, "inline": self.options.inline, "env": self.options.env })
    }

    fn secrets(&self) -> Vec<String> {
        self.options
            .env
            .values()
            .flat_map(|t| t.secret_parts().iter().cloned())
            .collect()
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let mut resolved = Resolved::default();
        match (&self.options.script, self.options.inline.is_empty()) {
            (Some(script), true) => {
                resolved.inputs = hash_path(&ctx.recipe_dir, script).map_err(|e| {
                    Diagnostic::error(format!(
                        "cannot read the provisioning script `{script}`: {e}"
                    ))
                    .at(&self.place.span, "this provisioner")
                    .help("scripts are relative to the recipe's folder")
                })?;
            }
            (None, false) => {}
            _ => {
                return Err(Diagnostic::error(
                    "a shell provisioner takes `script` or `inline`, not both, not neither",
                )
                .at(&self.place.span, "this provisioner"))
            }
        }
        Ok(resolved)
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            copy_upstream_tree(&ctx)?;
            let script = match &self.options.script {
                Some(path) => {
                    let full = ctx.recipe_dir.join(path);
                    std::fs::read(&full).map_err(|source| StepError::Io {
                        action: "read",
                        path: full,
                        source,
                    })?
                }
                None => format!("set -e\n{}\n", self.options.inline.join("\n")).into_bytes(),
            };
            let in_tree = ctx.out.join(SCRIPT_IN_TREE);
            replace_file(&in_tree, &script)?;
            let env: BTreeMap<String, String> = self
                .options
                .env
                .iter()
                .map(|(k, v)| (k.clone(), Text::reveal(v).to_string()))
                .collect();
            let chroot = Chroot::enter(&ctx.out)?;
            let result = chroot
                .run("/bin/sh", &["-e", &format!("/{SCRIPT_IN_TREE}")], env, &ctx)
                .await;
            let left = chroot.leave();
            let _ = std::fs::remove_file(&in_tree);
            result?;
            left
        })
    }
}

//! The `command` kind: a `step "NAME"` block of the recipe. It runs a program with
//! `$VMBUILD_OUT` (its output folder) and `$VMBUILD_IN_<NAME>` (each upstream output) set, and
//! is keyed by its command, environment, the contents of its `inputs` globs and the digest of
//! the program it runs.

use std::collections::BTreeMap;

use serde_json::json;

use super::inputs::{glob_files, hash_file};
use super::process::{self, Invocation};
use super::{ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};
use crate::diag::{Diagnostic, Span};
use crate::recipe::{Named, Seg, StepBlock, Text};

pub struct CommandStep {
    id: String,
    block: StepBlock,
    spans: crate::recipe::SpanIndex,
}

impl CommandStep {
    pub fn new(named: &Named<StepBlock>) -> CommandStep {
        CommandStep {
            id: format!("step.{}", named.name),
            block: named.block.clone(),
            spans: named.spans.clone(),
        }
    }

    fn span(&self, path: &[Seg]) -> Span {
        self.spans.value(path).unwrap_or_else(|| Span::new(0, 0..0))
    }
}

/// `step.fetch-data` → `VMBUILD_IN_FETCH_DATA`; other ids keep their kind: `VMBUILD_IN_DATABASE_TOXO_DUMP`.
pub fn upstream_variable(id: &str) -> String {
    let name = id.strip_prefix("step.").unwrap_or(id);
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("VMBUILD_IN_{cleaned}")
}

impl Step for CommandStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "command"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.block.after
    }

    fn params(&self) -> serde_json::Value {
        json!({
            "command": self.block.command,
            "env": self.block.env,
            "after": self.block.after,
            "inputs": self.block.inputs,
        })
    }

    fn secrets(&self) -> Vec<String> {
        self.block
            .command
            .iter()
            .chain(self.block.env.values())
            .flat_map(|t| t.secret_parts().iter().cloned())
            .collect()
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let mut resolved = Resolved::default();
        let program = self.block.command[0].reveal();
        let program_span = self.span(&[Seg::Key("command".into()), Seg::Index(0)]);
        let path = process::find_program(program, &ctx.recipe_dir).ok_or_else(|| {
            Diagnostic::error(format!(
                "the program `{}` is not found",
                self.block.command[0]
            ))
            .at(
                &program_span,
                "not on PATH, nor a file relative to the recipe",
            )
        })?;
        let digest = ctx.program_digest(&path).map_err(|e| {
            Diagnostic::error(format!("cannot read `{}`: {e}", path.display()))
                .at(&program_span, "this program")
        })?;
        resolved.tools.insert(path.display().to_string(), digest);
        for (i, pattern) in self.block.inputs.iter().enumerate() {
            let span = self.span(&[Seg::Key("inputs".into()), Seg::Index(i)]);
            let found = glob_files(&ctx.recipe_dir, pattern).map_err(|e| {
                Diagnostic::error(format!("cannot read the inputs `{pattern}`: {e}"))
                    .at(&span, "these inputs")
            })?;
            if found.is_empty() {
                return Err(Diagnostic::error(format!("`{pattern}` matches no file"))
                    .at(
                        &span,
                        format!("nothing matches under `{}`", ctx.recipe_dir.display()),
                    )
                    .help("inputs are relative to the recipe's folder"));
            }
            for (relative, full) in found {
                let digest = hash_file(&full).map_err(|e| {
                    Diagnostic::error(format!("cannot read `{}`: {e}", full.display()))
                        .at(&span, "matched here")
                })?;
                resolved.inputs.insert(relative, digest);
            }
        }
        Ok(resolved)
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let mut env: BTreeMap<String, String> = self
                .block
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.reveal().to_string()))
                .collect();
            env.insert("VMBUILD_OUT".into(), ctx.out.display().to_string());
            for (id, path) in &ctx.upstream {
                env.insert(upstream_variable(id), path.display().to_string());
            }
            let invocation = Invocation {
                program: self.block.command[0].reveal().to_string(),
                args: self.block.command[1..]
                    .iter()
                    .map(Text::reveal)
                    .map(str::to_string)
                    .collect(),
                env,
                cwd: ctx.recipe_dir.clone(),
            };
            process::run(invocation, &ctx).await?;
            Ok::<(), StepError>(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_variable_names() {
        assert_eq!(
            upstream_variable("step.fetch-data"),
            "VMBUILD_IN_FETCH_DATA"
        );
        assert_eq!(
            upstream_variable("database.toxo.dump"),
            "VMBUILD_IN_DATABASE_TOXO_DUMP"
        );
    }
}

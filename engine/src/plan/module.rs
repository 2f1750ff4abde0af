//! Steps of a module instance in the recipe's graph: each of its steps under an id prefixed by
//! `module.NAME.`, depending on the prefixed ids of its own upstream steps, resolved and run
//! against the module's folder. The step itself never knows: it sees the ids and the folder it
//! was written with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::Diagnostic;
use crate::steps::{ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};

/// A step of the module instance whose ids start with `prefix` (`module.toxodb.`).
pub struct InModule {
    inner: Arc<dyn Step>,
    prefix: String,
    id: String,
    depends: Vec<String>,
    dir: PathBuf,
}

impl InModule {
    pub fn new(inner: Arc<dyn Step>, prefix: &str, dir: &Path) -> InModule {
        InModule {
            id: format!("{prefix}{}", inner.id()),
            depends: inner
                .depends_on()
                .iter()
                .map(|d| format!("{prefix}{d}"))
                .collect(),
            prefix: prefix.to_string(),
            dir: dir.to_path_buf(),
            inner,
        }
    }

    /// The module instance's name (`toxodb`, `site.toxodb`), for where its artifacts go.
    pub fn instance(&self) -> &str {
        self.prefix
            .strip_prefix("module.")
            .unwrap_or(&self.prefix)
            .trim_end_matches('.')
    }
}

impl Step for InModule {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn version(&self) -> u32 {
        self.inner.version()
    }

    fn depends_on(&self) -> &[String] {
        &self.depends
    }

    fn params(&self) -> serde_json::Value {
        self.inner.params()
    }

    fn secrets(&self) -> Vec<String> {
        self.inner.secrets()
    }

    fn artifacts(&self) -> bool {
        self.inner.artifacts()
    }

    fn checks_artifacts(&self) -> bool {
        self.inner.checks_artifacts()
    }

    fn upstream_name<'a>(&self, id: &'a str) -> &'a str {
        self.inner
            .upstream_name(id.strip_prefix(&self.prefix).unwrap_or(id))
    }

    fn export_folder(&self) -> Option<String> {
        let own = self.instance().replace('.', "/");
        Some(match self.inner.export_folder() {
            Some(inner) => format!("{own}/{inner}"),
            None => own,
        })
    }

    fn after_export(
        &self,
        dir: &Path,
        libvirt_uri: Option<&str>,
    ) -> Result<Vec<String>, StepError> {
        self.inner.after_export(dir, libvirt_uri)
    }

    fn details(&self) -> Vec<String> {
        self.inner.details()
    }

    fn always_runs(&self) -> Option<&'static str> {
        self.inner.always_runs()
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        self.inner.resolve(&ctx.in_folder(&self.dir))
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        let upstream = ctx
            .upstream
            .iter()
            .map(|(id, path)| {
                (
                    id.strip_prefix(&self.prefix).unwrap_or(id).to_string(),
                    path.clone(),
                )
            })
            .collect();
        let ctx = RunContext {
            upstream,
            recipe_dir: self.dir.clone(),
            ..ctx
        };
        self.inner.run(ctx)
    }
}

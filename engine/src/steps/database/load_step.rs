//! The `pg_load` kind: `database.load`, every `database` of the recipe loaded into one new
//! cluster of the template's own PostgreSQL, as a layer of the VM.
//!
//! A cloned database is restored from its `database.NAME.dump` step (pg_dump's directory
//! format, or `dump.sql` from an Oracle conversion), and its row counts must equal the
//! source's, table by table, or the step fails. A database with `init` is created empty from
//! its installation scripts and never touches production. Each database is owned by its
//! application role; a password the recipe does not set is generated here, and written only
//! into the VM (`/etc/vmbuild/databases/<name>.env`, root's only).
//!
//! The output holds `root/` (the layer: `var/lib/postgresql`, which replaces the template's
//! wholesale, and `etc/`) and `report.json` (the PostgreSQL version and, per database, rows per
//! table, source against clone), which the build manifest carries.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::json;

use super::dump_step::DumpReport;
use super::load::{count_differences, load, Content, LoadDatabase, LoadSpec};
use super::REPORT_FILE;
use crate::diag::{Diagnostic, Span};
use crate::recipe::Secret;
use crate::steps::inputs::hash_file;
use crate::steps::layers::Layer;
use crate::steps::{io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};

/// The step's id.
pub const LOAD_ID: &str = "database.load";
/// The folder of the output that is the layer.
const LAYER_FOLDER: &str = "root";

/// Where one database's content comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The output of a dump step.
    Dump { step: String },
    /// Installation scripts, relative to the recipe folder, with their spans.
    Init { scripts: Vec<(String, Span)> },
}

/// One database to load.
#[derive(Debug, Clone)]
pub struct PlannedDatabase {
    /// The block's name (`database "toxo"`).
    pub block: String,
    /// The database's name in the VM.
    pub into: String,
    pub role: String,
    pub password: Option<Secret>,
    pub origin: Origin,
}

pub struct LoadStep {
    template_tree: String,
    databases: Vec<PlannedDatabase>,
    depends: Vec<String>,
    jobs: u32,
}

impl LoadStep {
    /// Load `databases` into the PostgreSQL of the tree made by the step `template_tree`.
    pub fn new(template_tree: &str, databases: Vec<PlannedDatabase>) -> LoadStep {
        let mut depends = vec![template_tree.to_string()];
        for database in &databases {
            if let Origin::Dump { step } = &database.origin {
                depends.push(step.clone());
            }
        }
        LoadStep {
            template_tree: template_tree.to_string(),
            databases,
            depends,
            jobs: 2,
        }
    }

    /// The layer this step puts into the VM.
    pub fn layer() -> Layer {
        let mut layer = Layer::new(LOAD_ID, "/", Vec::new());
        layer.from = Some(LAYER_FOLDER.into());
        layer.wholesale = vec!["/var/lib/postgresql".into()];
        layer
    }
}

/// A password for an application role: 32 letters and digits.
fn generate_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Write a file only root reads.
fn write_root_only(path: &std::path::Path, text: &str) -> Result<(), StepError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))?;
    file.write_all(text.as_bytes())
        .map_err(io_error("write", path))
}

impl Step for LoadStep {
    fn id(&self) -> &str {
        LOAD_ID
    }

    fn kind(&self) -> &'static str {
        "pg_load"
    }

    fn version(&self) -> u32 {
        2
    }

    fn depends_on(&self) -> &[String] {
        &self.depends
    }

    fn params(&self) -> serde_json::Value {
        let databases: Vec<serde_json::Value> = self
            .databases
            .iter()
            .map(|d| {
                json!({
                    "block": d.block,
                    "into": d.into,
                    "role": d.role,
                    "password": d.password.as_ref().map_or("generated", |p| p.identity()),
                    "from": match &d.origin {
                        Origin::Dump { step } => json!(step),
                        Origin::Init { scripts } => json!({
                            "init": scripts.iter().map(|(s, _)| s).collect::<Vec<_>>()
                        }),
                    },
                })
            })
            .collect();
        json!({ "databases": databases })
    }

    fn secrets(&self) -> Vec<String> {
        self.databases
            .iter()
            .filter_map(|d| d.password.as_ref())
            .flat_map(|p| p.parts().iter().cloned())
            .collect()
    }

    fn details(&self) -> Vec<String> {
        self.databases
            .iter()
            .map(|d| {
                let from = match &d.origin {
                    Origin::Dump { step } => format!("from `{step}`"),
                    Origin::Init { scripts } => format!(
                        "empty, from {}",
                        scripts
                            .iter()
                            .map(|(s, _)| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                format!("{} (owner {}): {from}", d.into, d.role)
            })
            .collect()
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let mut resolved = Resolved::default();
        for database in &self.databases {
            let Origin::Init { scripts } = &database.origin else {
                continue;
            };
            for (script, span) in scripts {
                let digest = hash_file(&ctx.recipe_dir.join(script)).map_err(|e| {
                    Diagnostic::error(format!("cannot read the init script `{script}`: {e}"))
                        .at(span, "this script")
                        .help("init scripts are relative to the recipe's folder")
                })?;
                resolved.inputs.insert(script.clone(), digest);
            }
        }
        Ok(resolved)
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let template = ctx.upstream[&self.template_tree].clone();
            let passwords: Vec<Secret> = self
                .databases
                .iter()
                .map(|d| {
                    d.password.clone().unwrap_or_else(|| {
                        Secret::new(
                            format!("generated password of {}", d.role),
                            generate_password(),
                        )
                    })
                })
                .collect();
            // What each database is made of, and the source's row counts to compare with.
            let mut init_paths: Vec<Vec<PathBuf>> = Vec::new();
            let mut expected: Vec<Option<DumpReport>> = Vec::new();
            for database in &self.databases {
                match &database.origin {
                    Origin::Dump { step } => {
                        let output = &ctx.upstream[step];
                        let path = output.join(REPORT_FILE);
                        let text =
                            std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
                        let report: DumpReport = serde_json::from_str(&text).map_err(|e| {
                            StepError::Unmet(format!(
                                "`{}` is not a dump report: {e}",
                                path.display()
                            ))
                        })?;
                        expected.push(Some(report));
                        init_paths.push(Vec::new());
                    }
                    Origin::Init { scripts } => {
                        expected.push(None);
                        init_paths.push(
                            scripts
                                .iter()
                                .map(|(s, _)| ctx.recipe_dir.join(s))
                                .collect(),
                        );
                    }
                }
            }
            let dump_dirs: Vec<Option<(PathBuf, bool)>> = self
                .databases
                .iter()
                .map(|d| match &d.origin {
                    Origin::Dump { step } => {
                        let sql = ctx.upstream[step].join("dump.sql");
                        Some(if sql.is_file() {
                            (sql, true)
                        } else {
                            (ctx.upstream[step].join("dump"), false)
                        })
                    }
                    Origin::Init { .. } => None,
                })
                .collect();
            let specs: Vec<LoadDatabase> = self
                .databases
                .iter()
                .enumerate()
                .map(|(i, d)| LoadDatabase {
                    name: &d.into,
                    role: &d.role,
                    password: &passwords[i],
                    content: match &dump_dirs[i] {
                        Some((path, true)) => Content::Sql(path),
                        Some((path, false)) => Content::Dump(path),
                        None => Content::Init(&init_paths[i]),
                    },
                })
                .collect();
            let layer = ctx.out.join(LAYER_FOLDER);
            std::fs::create_dir_all(&layer).map_err(io_error("create", &layer))?;
            let ctx = RunContext {
                redact: std::sync::Arc::new(
                    ctx.redact
                        .iter()
                        .cloned()
                        .chain(passwords.iter().flat_map(|p| p.parts().iter().cloned()))
                        .collect(),
                ),
                ..ctx
            };
            let loaded = load(
                &LoadSpec {
                    template_root: &template,
                    databases: &specs,
                    jobs: self.jobs,
                },
                &layer,
                &ctx,
            )
            .await
            .map_err(|e| StepError::unmet("loading the databases: ", &e))?;

            let mut report = serde_json::Map::new();
            for (i, database) in self.databases.iter().enumerate() {
                let clone = loaded
                    .databases
                    .get(&database.into)
                    .cloned()
                    .unwrap_or_default();
                let mut rows = serde_json::Map::new();
                if let Some(source) = &expected[i] {
                    let differences = count_differences(&source.rows, &clone);
                    if !differences.is_empty() {
                        return Err(StepError::Unmet(format!(
                            "the clone of `{}` does not have the source's rows: {}",
                            database.into,
                            differences.join("; ")
                        )));
                    }
                    for (table, n) in &source.rows {
                        rows.insert(table.clone(), json!({ "source": n, "clone": clone[table] }));
                    }
                } else {
                    for (table, n) in &clone {
                        rows.insert(table.clone(), json!({ "clone": n }));
                    }
                }
                ctx.say(&format!(
                    "loaded `{}`: {} tables, {} rows",
                    database.into,
                    clone.len(),
                    clone.values().sum::<i64>()
                ));
                report.insert(
                    database.into.clone(),
                    json!({
                        "from": match &database.origin {
                            Origin::Dump { step } => step.clone(),
                            Origin::Init { .. } => "init".to_string(),
                        },
                        "role": database.role,
                        "rows": rows,
                    }),
                );
            }

            // The connection settings of each database, in the VM only.
            let etc = layer.join("etc/vmbuild/databases");
            std::fs::create_dir_all(&etc).map_err(io_error("create", &etc))?;
            std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error("chmod", &etc))?;
            for (i, database) in self.databases.iter().enumerate() {
                let text = format!(
                    "# The application role of the database `{db}`, written by vmbuild.\n\
                     PGHOST=localhost\nPGPORT=5432\nPGDATABASE={db}\nPGUSER={role}\nPGPASSWORD={password}\n",
                    db = database.into,
                    role = database.role,
                    password = passwords[i].reveal(),
                );
                write_root_only(&etc.join(format!("{}.env", database.into)), &text)?;
            }

            let path = ctx.out.join(REPORT_FILE);
            let text = serde_json::to_string_pretty(&json!({
                "postgresql": loaded.pg_version,
                "databases": report,
            }))
            .expect("a report serializes");
            std::fs::write(&path, text + "\n").map_err(io_error("write", &path))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_layer_replaces_the_template_cluster() {
        let layer = LoadStep::layer();
        assert_eq!(layer.from.as_deref(), Some("root"));
        assert_eq!(layer.wholesale, vec!["/var/lib/postgresql".to_string()]);
    }
}

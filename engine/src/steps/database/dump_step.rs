//! The `pg_dump` kind: `database.NAME.dump`, the export of one production PostgreSQL database.
//!
//! Plan connects to the source (read-only), resolves the schema allowlist and runs the recipe's
//! fingerprint query; both enter the step's key and are shown under the step, so a pull
//! request's plan says what will be cloned. Without a fingerprint query the step runs on every
//! apply, and the dump's own digest decides whether the load after it runs again (the dump is
//! made byte-stable for unchanged data: no owners, a fixed creation time).
//!
//! Apply takes the export lock when the recipe asks for one, dumps the allowlist in one
//! snapshot, releases the lock (also on failure or Ctrl-C), and writes `dump/` (pg_dump's
//! directory format) and `report.json` (schemas, excluded schemas, rows per table).
//!
//! The same step, of kind `oracle_dump`, exports an Oracle source (`engine = "oracle"`, with
//! the cargo feature `oracle`): plan resolves and shows the same things through
//! `super::oracle::session`; apply writes `dump.sql` (the conversion for PostgreSQL), with
//! `datapump_directory` also `datapump/NAME.dmp`, and the same `report.json`, its names those
//! of the clone (lower case). See `super::oracle::export`.

use std::sync::OnceLock;

use serde_json::json;

use super::dump::{dump, DumpSpec};
use super::source::{self, Allowlist, SourceError};
use super::{block_on, REPORT_FILE};
use crate::diag::{Diagnostic, Span};
use crate::hash::Digest;
use crate::recipe::{DatabaseBlock, DatabaseEngine, Named, Schemas, Secret, Seg};
use crate::steps::tools::PG_DUMP;
use crate::steps::{io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};

/// What plan found in the source.
#[derive(Debug, Clone)]
struct Found {
    allowlist: Allowlist,
    fingerprint: Option<String>,
}

pub struct DumpStep {
    id: String,
    block: DatabaseBlock,
    source: Secret,
    spans: crate::recipe::SpanIndex,
    header: Span,
    found: OnceLock<Found>,
    jobs: u32,
}

/// What a dump's `report.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DumpReport {
    pub schemas: Vec<String>,
    /// `[schema, the exclude_schemas pattern that excluded it]`.
    pub excluded: Vec<(String, String)>,
    /// `schema.table` → rows in the dump.
    pub rows: std::collections::BTreeMap<String, i64>,
    pub bytes: u64,
    /// What an Oracle conversion left out, for people (absent for PostgreSQL dumps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_translated: Vec<String>,
}

impl DumpStep {
    /// The dump of a `database` block with a `source`, of its `engine`.
    pub fn new(named: &Named<DatabaseBlock>, source: &Secret) -> DumpStep {
        DumpStep {
            id: format!("database.{}.dump", named.name),
            block: named.block.clone(),
            source: source.clone(),
            spans: named.spans.clone(),
            header: named.header(),
            found: OnceLock::new(),
            jobs: 2,
        }
    }

    fn span(&self, key: &str) -> Span {
        self.spans
            .value(&[Seg::Key(key.into())])
            .unwrap_or_else(|| self.header.clone())
    }

    /// A source error as a diagnostic at the attribute it is about.
    fn diagnostic(&self, error: &SourceError) -> Diagnostic {
        let (key, label) = match error {
            SourceError::MissingRegistry { .. }
            | SourceError::MissingRegistryColumn { .. }
            | SourceError::BadRegistry { .. }
            | SourceError::MissingSchemas { .. } => ("schemas", "the schema allowlist"),
            SourceError::BadPattern { .. } => ("exclude_schemas", "these patterns"),
            SourceError::Fingerprint { .. } => ("fingerprint", "this query"),
            _ => ("source", "this source"),
        };
        Diagnostic::error(error.to_string()).at(&self.span(key), label)
    }

    fn found(&self) -> Option<&Found> {
        self.found.get()
    }
}

impl Step for DumpStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        match self.block.engine {
            DatabaseEngine::Postgres => "pg_dump",
            DatabaseEngine::Oracle => "oracle_dump",
        }
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &[]
    }

    fn params(&self) -> serde_json::Value {
        let found = self.found();
        let mut params = json!({
            "source": self.source.identity(),
            "schemas": found.map(|f| &f.allowlist.schemas),
            "excluded": found.map(|f| &f.allowlist.excluded),
            "exclude_table_data": self.block.exclude_table_data,
            "lock": self.block.lock,
            "fingerprint": self.block.fingerprint.as_ref().map(|query| json!({
                "query": query,
                "rows": found.and_then(|f| f.fingerprint.as_ref())
                    .map(|rows| Digest::of_bytes(rows.as_bytes()).short()),
            })),
        });
        if self.block.engine == DatabaseEngine::Oracle {
            params["datapump_directory"] = json!(self.block.datapump_directory);
        }
        params
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = self.source.parts().to_vec();
        // An Oracle URL's password may be %-escaped: its decoded form is a secret too.
        if self.block.engine == DatabaseEngine::Oracle {
            if let Ok(parsed) = super::oracle::connect::parse(self.source.reveal()) {
                secrets.push(parsed.password().to_string());
            }
        }
        secrets
    }

    fn details(&self) -> Vec<String> {
        let Some(found) = self.found() else {
            return Vec::new();
        };
        let mut lines = vec![format!(
            "schemas: {}",
            if found.allowlist.schemas.is_empty() {
                "(none)".to_string()
            } else {
                found.allowlist.schemas.join(", ")
            }
        )];
        if !found.allowlist.excluded.is_empty() {
            let excluded: Vec<String> = found
                .allowlist
                .excluded
                .iter()
                .map(|(schema, pattern)| format!("{schema} ({pattern})"))
                .collect();
            lines.push(format!("excluded: {}", excluded.join(", ")));
        }
        if !found.allowlist.missing.is_empty() {
            lines.push(format!(
                "registered but not in the source: {}",
                found.allowlist.missing.join(", ")
            ));
        }
        if !self.block.exclude_table_data.is_empty() {
            lines.push(format!(
                "without rows: {}",
                self.block.exclude_table_data.join(", ")
            ));
        }
        if let Some(directory) = &self.block.datapump_directory {
            lines.push(format!("data pump: into `{directory}`, copied out"));
        }
        match &found.fingerprint {
            Some(rows) => {
                let mut shown: String = rows.lines().collect::<Vec<_>>().join("; ");
                if shown.chars().count() > 100 {
                    shown = shown.chars().take(99).collect::<String>() + "…";
                }
                lines.push(format!("fingerprint: {shown}"));
            }
            None => lines.push("fingerprint: none (the dump's own digest)".into()),
        }
        lines
    }

    fn always_runs(&self) -> Option<&'static str> {
        self.block.fingerprint.is_none().then_some(
            "no fingerprint query: dumped on every apply; what follows is cached if the dump comes out the same",
        )
    }

    fn resolve(&self, _ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let schemas = self.block.schemas.clone().ok_or_else(|| {
            Diagnostic::error("a cloned database needs a schema allowlist")
                .at(&self.header, "no `schemas`")
                .help("`schemas = [\"apidb\", \"core\"]` or `schemas = databaseinfo(\"core.databaseinfo\")`")
        })?;
        let found = match self.block.engine {
            DatabaseEngine::Postgres => self.resolve_postgres(&schemas),
            DatabaseEngine::Oracle => self.resolve_oracle(&schemas),
        }
        .map_err(|e| self.diagnostic(&e))?;
        if found.allowlist.schemas.is_empty() {
            return Err(Diagnostic::error("no schema is left to clone")
                .at(&self.span("schemas"), "the allowlist")
                .help(if found.allowlist.excluded.is_empty() {
                    "the registry lists no schema of this source".to_string()
                } else {
                    format!(
                        "`exclude_schemas` removed all of them: {}",
                        found
                            .allowlist
                            .excluded
                            .iter()
                            .map(|(s, _)| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }));
        }
        let _ = self.found.set(found);
        let mut resolved = Resolved::default();
        if self.block.engine == DatabaseEngine::Oracle {
            #[cfg(feature = "oracle")]
            if let Ok(version) = oracle::Version::client() {
                resolved
                    .tools
                    .insert("oracle client".into(), version.to_string());
            }
            return Ok(resolved);
        }
        let (program, _) = PG_DUMP.resolve(&self.span("source"))?;
        // Debian's pg_dump is a wrapper choosing the newest installed client: ask it.
        let version = std::process::Command::new(&program)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        resolved.tools.insert(program, version);
        Ok(resolved)
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let found = self
                .found()
                .ok_or_else(|| StepError::Unmet("the source was not resolved by plan".into()))?;
            if self.block.engine == DatabaseEngine::Oracle {
                return self.run_oracle(found, &ctx).await;
            }
            let held = match &self.block.lock {
                Some(lock) => {
                    ctx.say(&format!("waiting for the export lock `{}`", lock.name));
                    let client = source::connect(&self.source)
                        .await
                        .map_err(|e| StepError::unmet("", &e))?;
                    let held = source::lock(client, lock, &source::default_holder())
                        .await
                        .map_err(|e| StepError::unmet("", &e))?;
                    ctx.say(&format!("holding the export lock `{}`", lock.name));
                    Some(held)
                }
                None => None,
            };
            let spec = DumpSpec {
                url: &self.source,
                schemas: &found.allowlist.schemas,
                exclude_table_data: &self.block.exclude_table_data,
                jobs: self.jobs,
                snapshot: None,
            };
            let dumped = dump(&spec, &ctx.out, &ctx).await;
            if let Some(held) = held {
                let name = held.name().to_string();
                match held.release().await {
                    Ok(()) => ctx.say(&format!("released the export lock `{name}`")),
                    Err(e) => ctx.say(&format!("cannot release the export lock `{name}`: {e}")),
                }
            }
            let dumped = dumped.map_err(|e| StepError::unmet("the dump failed: ", &e))?;
            ctx.say(&format!(
                "dumped {} schemas, {} tables, {} rows, {} bytes",
                found.allowlist.schemas.len(),
                dumped.row_counts.len(),
                dumped.row_counts.values().sum::<i64>(),
                dumped.bytes
            ));
            write_report(
                &ctx,
                &DumpReport {
                    schemas: found.allowlist.schemas.clone(),
                    excluded: found.allowlist.excluded.clone(),
                    rows: dumped.row_counts,
                    bytes: dumped.bytes,
                    not_translated: Vec::new(),
                },
            )
        })
    }
}

/// Write `report.json` into the step's output.
fn write_report(ctx: &RunContext, report: &DumpReport) -> Result<(), StepError> {
    let path = ctx.out.join(REPORT_FILE);
    let text = serde_json::to_string_pretty(report).expect("a report serializes");
    std::fs::write(&path, text + "\n").map_err(io_error("write", &path))
}

impl DumpStep {
    fn resolve_postgres(&self, schemas: &Schemas) -> Result<Found, SourceError> {
        block_on(async {
            let client = source::connect(&self.source).await?;
            let allowlist =
                source::resolve_allowlist(&client, schemas, &self.block.exclude_schemas).await?;
            let fingerprint =
                source::fingerprint(&client, self.block.fingerprint.as_deref()).await?;
            Ok(Found {
                allowlist,
                fingerprint,
            })
        })
    }

    #[cfg(feature = "oracle")]
    fn resolve_oracle(&self, schemas: &Schemas) -> Result<Found, SourceError> {
        let session = super::oracle::session::Session::connect(&self.source)?;
        let allowlist = session.allowlist(schemas, &self.block.exclude_schemas)?;
        let fingerprint = session.fingerprint(self.block.fingerprint.as_deref())?;
        Ok(Found {
            allowlist,
            fingerprint,
        })
    }

    #[cfg(not(feature = "oracle"))]
    fn resolve_oracle(&self, _schemas: &Schemas) -> Result<Found, SourceError> {
        unreachable!("without the `oracle` feature, an Oracle database is a diagnostic")
    }

    /// Export and convert an Oracle source; the report's names are the clone's.
    #[cfg(feature = "oracle")]
    async fn run_oracle(&self, found: &Found, ctx: &RunContext) -> Result<(), StepError> {
        use super::oracle::convert::pg_name;
        use super::oracle::export::{export, ExportSpec};
        let exported = export(
            ExportSpec {
                url: self.source.clone(),
                schemas: found.allowlist.schemas.clone(),
                exclude_table_data: self.block.exclude_table_data.clone(),
                lock: self.block.lock.clone(),
                datapump_directory: self.block.datapump_directory.clone(),
                // `database.NAME.dump` → `NAME`.
                file_name: self.id["database.".len()..self.id.len() - ".dump".len()].to_string(),
                holder: source::default_holder(),
            },
            ctx,
        )
        .await?;
        ctx.say(&format!(
            "exported {} schemas, {} tables, {} rows, {} bytes",
            found.allowlist.schemas.len(),
            exported.rows.len(),
            exported.rows.values().sum::<i64>(),
            exported.bytes
        ));
        write_report(
            ctx,
            &DumpReport {
                schemas: found.allowlist.schemas.iter().map(|s| pg_name(s)).collect(),
                excluded: found
                    .allowlist
                    .excluded
                    .iter()
                    .map(|(s, p)| (pg_name(s), p.clone()))
                    .collect(),
                rows: exported.rows,
                bytes: exported.bytes,
                not_translated: exported.not_translated,
            },
        )
    }

    #[cfg(not(feature = "oracle"))]
    async fn run_oracle(&self, _found: &Found, _ctx: &RunContext) -> Result<(), StepError> {
        unreachable!("without the `oracle` feature, an Oracle database is a diagnostic")
    }
}

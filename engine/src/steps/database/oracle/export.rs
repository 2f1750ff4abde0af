//! The apply of an `oracle_dump` step: the export lock, one SCN, and at that SCN
//!
//! - with `datapump_directory`, a Data Pump schema export of the allowlist (`DBMS_DATAPUMP`,
//!   `FLASHBACK_SCN`) into that directory object, copied out over the connection (BFILE reads)
//!   into `datapump/NAME.dmp` and `datapump/NAME.log`, then removed from the server: an archive
//!   for Oracle-licensed sites;
//! - the conversion of the allowlist into `dump.sql` for the VM's PostgreSQL, its rows read
//!   `AS OF SCN`, and every table's rows counted `AS OF SCN` too, which must equal what was
//!   written; those counts go into `report.json` for the load step to compare with the clone's.
//!
//! The lock is released, and a running Data Pump job stopped, also on failure or Ctrl-C: the
//! work runs on a blocking thread whose guards do it, while Ctrl-C interrupts its calls.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use oracle::sql_type::OracleType as CrateType;

use super::convert::{convert, pg_name, Catalog, ConvertError};
use super::session::{self, Interrupter, Session};
use super::sql;
use crate::recipe::model::LockBlock;
use crate::recipe::Secret;
use crate::steps::database::dump::{folder_size, with_redactions};
use crate::steps::database::source::SourceError;
use crate::steps::{RunContext, StepError};

/// What to export.
pub struct ExportSpec {
    pub url: Secret,
    /// The allowlist, in Oracle's names (`APIDB`).
    pub schemas: Vec<String>,
    pub exclude_table_data: Vec<String>,
    pub lock: Option<LockBlock>,
    pub datapump_directory: Option<String>,
    /// The Data Pump files' name in the output: `datapump/<file_name>.dmp`.
    pub file_name: String,
    /// Who holds the lock, as the tuning manager writes it.
    pub holder: String,
}

/// What was exported.
#[derive(Debug, Clone)]
pub struct Exported {
    /// `schema.table` (PostgreSQL names) → rows at the SCN.
    pub rows: BTreeMap<String, i64>,
    pub not_translated: Vec<String>,
    /// Bytes of the output (`dump.sql` and the Data Pump files).
    pub bytes: u64,
}

/// Why an export failed. Never contains the source string or its password.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("{table} has {counted} rows at SCN {scn}, but {written} were read")]
    Count {
        table: String,
        counted: i64,
        written: i64,
        scn: u64,
    },
    #[error(
        "Data Pump cannot start (it needs EXECUTE on DBMS_DATAPUMP, the role \
         DATAPUMP_EXP_FULL_DATABASE for other users' schemas, and READ and WRITE on the \
         directory object `{directory}`): {reason}"
    )]
    DataPumpStart { directory: String, reason: String },
    #[error("the Data Pump job ended {state}: {errors}")]
    DataPump { state: String, errors: String },
    #[error("copying `{file}` out of the directory object `{directory}`: {reason}")]
    Copy {
        directory: String,
        file: String,
        reason: String,
    },
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stopped")]
    Stopped,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io {
        action,
        path,
        source,
    }
}

/// Export `spec` into `ctx.out` (`dump.sql`, `datapump/`); Ctrl-C interrupts the calls under
/// way, and the blocking work's guards stop the Data Pump job and release the lock.
pub async fn export(spec: ExportSpec, ctx: &RunContext) -> Result<Exported, StepError> {
    let interrupters: Arc<Mutex<Vec<Interrupter>>> = Arc::default();
    let mut secrets = spec.url.parts().to_vec();
    if let Ok(parsed) = super::connect::parse(spec.url.reveal()) {
        secrets.push(parsed.password().to_string());
    }
    let work_ctx = with_redactions(ctx, &secrets);
    let registered = interrupters.clone();
    let mut work =
        tokio::task::spawn_blocking(move || export_blocking(&spec, &work_ctx, &registered));
    tokio::select! {
        result = &mut work => match result {
            Ok(Ok(exported)) => Ok(exported),
            Ok(Err(ExportError::Stopped)) => Err(StepError::Cancelled),
            Ok(Err(e)) => Err(StepError::unmet("the Oracle export failed: ", &e)),
            Err(e) => Err(StepError::Unmet(format!("the Oracle export panicked: {e}"))),
        },
        _ = ctx.cancel.cancelled() => {
            for interrupter in interrupters.lock().expect("interrupters").iter() {
                interrupter.interrupt();
            }
            // Wait for its guards: the lock released, the job stopped.
            let _ = work.await;
            Err(StepError::Cancelled)
        }
    }
}

fn connect(
    spec: &ExportSpec,
    interrupters: &Mutex<Vec<Interrupter>>,
) -> Result<Session, SourceError> {
    let session = Session::connect(&spec.url)?;
    interrupters
        .lock()
        .expect("interrupters")
        .push(session.interrupter());
    Ok(session)
}

fn export_blocking(
    spec: &ExportSpec,
    ctx: &RunContext,
    interrupters: &Mutex<Vec<Interrupter>>,
) -> Result<Exported, ExportError> {
    let stopped = || ctx.cancel.is_cancelled();
    let held = match &spec.lock {
        Some(lock) => {
            ctx.say(&format!("waiting for the export lock `{}`", lock.name));
            let session = connect(spec, interrupters)?;
            let held = session::lock(session, lock, &spec.holder, &stopped).map_err(|e| {
                if stopped() {
                    ExportError::Stopped
                } else {
                    e.into()
                }
            })?;
            ctx.say(&format!("holding the export lock `{}`", lock.name));
            Some(held)
        }
        None => None,
    };
    let result = export_locked(spec, ctx, interrupters, &stopped);
    if let Some(held) = held {
        let name = held.name().to_string();
        match held.release() {
            Ok(()) => ctx.say(&format!("released the export lock `{name}`")),
            Err(e) => ctx.say(&format!("cannot release the export lock `{name}`: {e}")),
        }
    }
    match result {
        Err(_) if stopped() => Err(ExportError::Stopped),
        other => other,
    }
}

fn export_locked(
    spec: &ExportSpec,
    ctx: &RunContext,
    interrupters: &Mutex<Vec<Interrupter>>,
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<Exported, ExportError> {
    let session = connect(spec, interrupters)?;
    let scn = session.current_scn()?;
    ctx.say(&format!("reading at SCN {scn}"));
    let catalog = session.catalog(&spec.schemas, &spec.exclude_table_data)?;
    ctx.say(&format!(
        "{} schemas: {} tables, {} views, {} sequences",
        catalog.schemas.len(),
        catalog
            .schemas
            .iter()
            .map(|s| s.tables.len())
            .sum::<usize>(),
        catalog.schemas.iter().map(|s| s.views.len()).sum::<usize>(),
        catalog
            .schemas
            .iter()
            .map(|s| s.sequences.len())
            .sum::<usize>(),
    ));
    // Data Pump works in the server meanwhile.
    let job = match &spec.datapump_directory {
        Some(directory) => Some(DataPump::start(
            &session,
            directory,
            &spec.schemas,
            scn,
            ctx,
        )?),
        None => None,
    };

    let path = ctx.out.join("dump.sql");
    let file = std::fs::File::create(&path).map_err(io("create", &path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let started = Instant::now();
    let converted = convert(&catalog, &mut session.rows_at(scn, stopped), &mut out)?;
    out.flush().map_err(io("write", &path))?;
    out.get_ref().sync_all().map_err(io("sync", &path))?;
    drop(out);
    ctx.say(&format!(
        "converted {} tables, {} rows, in {:.1}s",
        converted.rows.len(),
        converted.rows.values().sum::<i64>(),
        started.elapsed().as_secs_f64()
    ));
    for line in &converted.not_translated {
        ctx.say(&format!("not translated: {line}"));
    }
    for line in &converted.attempted {
        ctx.say(&format!("attempted at load: {line}"));
    }
    let rows = count_at(&session, &catalog, &converted.rows, scn)?;

    if let Some(mut job) = job {
        job.finish(ctx, stopped)?;
        let folder = ctx.out.join("datapump");
        std::fs::create_dir_all(&folder).map_err(io("create", &folder))?;
        job.copy_out(&folder, &spec.file_name, ctx, stopped)?;
    }
    let bytes = folder_size(&ctx.out).map_err(|e| ExportError::Io {
        action: "measure",
        path: ctx.out.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(Exported {
        rows,
        not_translated: converted.not_translated,
        bytes,
    })
}

/// Every table's rows counted at `scn`; each must equal what the conversion wrote.
fn count_at(
    session: &Session,
    catalog: &Catalog,
    written: &BTreeMap<String, i64>,
    scn: u64,
) -> Result<BTreeMap<String, i64>, ExportError> {
    let mut rows = BTreeMap::new();
    for schema in &catalog.schemas {
        for table in &schema.tables {
            let key = format!("{}.{}", pg_name(&schema.name), pg_name(&table.name));
            let wrote = written.get(&key).copied().unwrap_or(0);
            let counted = if table.with_data {
                session.count(&schema.name, &table.name, scn)?
            } else {
                0
            };
            if counted != wrote {
                return Err(ExportError::Count {
                    table: key,
                    counted,
                    written: wrote,
                    scn,
                });
            }
            rows.insert(key, counted);
        }
    }
    Ok(rows)
}

/// A Data Pump export job of vmbuild's; stopped (and its master table dropped) when dropped
/// before it finished.
struct DataPump<'a> {
    session: &'a Session,
    directory: String,
    job: String,
    dump_file: String,
    log_file: String,
    handle: i64,
    finished: bool,
}

impl<'a> DataPump<'a> {
    fn start(
        session: &'a Session,
        directory: &str,
        schemas: &[String],
        scn: u64,
        ctx: &RunContext,
    ) -> Result<DataPump<'a>, ExportError> {
        let job = format!("VMBUILD_EXPORT_{:08X}", rand::random::<u32>());
        let base = job.to_lowercase();
        let schema_list = sql::schema_list(schemas).map_err(|name| ExportError::DataPumpStart {
            directory: directory.to_string(),
            reason: format!("the schema name `{name}` has a quote in it"),
        })?;
        let (dump_file, log_file) = (format!("{base}.dmp"), format!("{base}.log"));
        let directory = directory.to_ascii_uppercase();
        let stmt = session
            .call(
                "starting Data Pump",
                sql::DATAPUMP_START,
                &[
                    ("job", &job),
                    ("dump_file", &dump_file),
                    ("directory", &directory),
                    ("log_file", &log_file),
                    ("schema_list", &schema_list),
                    ("scn", &scn),
                    ("handle", &CrateType::Number(0, 0)),
                ],
            )
            .map_err(|e| ExportError::DataPumpStart {
                directory: directory.clone(),
                reason: e.to_string(),
            })?;
        let handle: i64 = session.value("starting Data Pump", &stmt, "handle")?;
        ctx.say(&format!(
            "Data Pump job {job} exports {} schemas at SCN {scn} into `{directory}`",
            schemas.len()
        ));
        Ok(DataPump {
            session,
            directory,
            job,
            dump_file,
            log_file,
            handle,
            finished: false,
        })
    }

    /// Wait for the job to complete, saying how far it is.
    fn finish(
        &mut self,
        ctx: &RunContext,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), ExportError> {
        let mut errors = String::new();
        let mut said = -1.0f64;
        loop {
            if stopped() {
                return Err(ExportError::Stopped);
            }
            let stmt = self.session.call(
                "asking Data Pump how it is going",
                sql::DATAPUMP_STATUS,
                &[
                    ("handle", &self.handle),
                    ("timeout", &5i64),
                    ("state", &CrateType::Varchar2(30)),
                    ("percent", &CrateType::Number(0, 0)),
                    ("errors", &CrateType::Varchar2(32767)),
                ],
            )?;
            let state: Option<String> =
                self.session
                    .value("reading Data Pump's state", &stmt, "state")?;
            let percent: Option<f64> =
                self.session
                    .value("reading Data Pump's state", &stmt, "percent")?;
            let news: Option<String> =
                self.session
                    .value("reading Data Pump's state", &stmt, "errors")?;
            if let Some(news) = news.filter(|n| !n.trim().is_empty()) {
                ctx.say(&format!("Data Pump: {}", news.trim()));
                errors.push_str(&news);
            }
            if let Some(p) = percent.filter(|p| *p >= said + 10.0 || (*p >= 100.0 && said < 100.0))
            {
                ctx.say(&format!("Data Pump: {p:.0}% done"));
                said = p;
            }
            let state = state.unwrap_or_default();
            match state.as_str() {
                "COMPLETED" => {
                    self.finished = true;
                    let _ = self.session.call(
                        "detaching from Data Pump",
                        sql::DATAPUMP_DETACH,
                        &[("handle", &self.handle)],
                    );
                    if !errors.trim().is_empty() {
                        ctx.say("Data Pump completed, with the errors above");
                    }
                    return Ok(());
                }
                "STOPPED" | "NOT RUNNING" | "UNDEFINED" => {
                    self.finished = true;
                    return Err(ExportError::DataPump {
                        state: state.to_lowercase(),
                        errors: if errors.trim().is_empty() {
                            format!(
                                "no reason given; see `{}` in `{}`",
                                self.log_file, self.directory
                            )
                        } else {
                            errors.trim().to_string()
                        },
                    });
                }
                _ => {}
            }
        }
    }

    /// Copy the dump and log files into `folder` as `NAME.dmp` and `NAME.log`, then remove
    /// them from the server.
    fn copy_out(
        &self,
        folder: &Path,
        name: &str,
        ctx: &RunContext,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), ExportError> {
        for (server, local) in [
            (&self.dump_file, format!("{name}.dmp")),
            (&self.log_file, format!("{name}.log")),
        ] {
            let started = Instant::now();
            let bytes = self.copy_file(server, &folder.join(&local), stopped)?;
            ctx.say(&format!(
                "copied {server} out of `{}`: {bytes} bytes in {:.1}s",
                self.directory,
                started.elapsed().as_secs_f64()
            ));
            if let Err(e) = self.session.call(
                "removing the file from the server",
                sql::FILE_REMOVE,
                &[("directory", &self.directory), ("name", server)],
            ) {
                ctx.say(&format!(
                    "cannot remove {server} from `{}` (it needs EXECUTE on UTL_FILE): {e}",
                    self.directory
                ));
            }
        }
        Ok(())
    }

    fn copy_file(
        &self,
        server: &str,
        to: &Path,
        stopped: &(dyn Fn() -> bool + Sync),
    ) -> Result<u64, ExportError> {
        let failed = |e: SourceError| ExportError::Copy {
            directory: self.directory.clone(),
            file: server.to_string(),
            reason: e.to_string(),
        };
        let stmt = self
            .session
            .call(
                "measuring the file",
                sql::FILE_LENGTH,
                &[
                    ("directory", &self.directory),
                    ("name", &server),
                    ("length", &CrateType::Number(0, 0)),
                ],
            )
            .map_err(failed)?;
        let length: u64 = self
            .session
            .value("measuring the file", &stmt, "length")
            .map_err(failed)?;
        let file = std::fs::File::create(to).map_err(io("create", to))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut offset: u64 = 1;
        while offset <= length {
            if stopped() {
                return Err(ExportError::Stopped);
            }
            let amount = (length - offset + 1).min(u64::from(sql::FILE_PIECE));
            let stmt = self
                .session
                .call(
                    "reading the file",
                    sql::FILE_READ,
                    &[
                        ("directory", &self.directory),
                        ("name", &server),
                        ("amount", &amount),
                        ("offset", &offset),
                        ("got", &CrateType::Number(0, 0)),
                        ("data", &CrateType::Raw(sql::FILE_PIECE)),
                    ],
                )
                .map_err(failed)?;
            let got: u64 = self
                .session
                .value("reading the file", &stmt, "got")
                .map_err(failed)?;
            let data: Option<Vec<u8>> = self
                .session
                .value("reading the file", &stmt, "data")
                .map_err(failed)?;
            let data = data.unwrap_or_default();
            if got == 0 || data.len() as u64 != got {
                return Err(ExportError::Copy {
                    directory: self.directory.clone(),
                    file: server.to_string(),
                    reason: format!(
                        "at byte {offset} of {length}, {got} bytes announced and {} came",
                        data.len()
                    ),
                });
            }
            out.write_all(&data).map_err(io("write", to))?;
            offset += got;
        }
        out.flush().map_err(io("write", to))?;
        out.get_ref().sync_all().map_err(io("sync", to))?;
        Ok(length)
    }
}

impl Drop for DataPump<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Interrupted or failed: stop the job in the server and drop its master table.
            if let Err(e) = self.session.call(
                "stopping Data Pump",
                sql::DATAPUMP_STOP,
                &[("job", &self.job)],
            ) {
                tracing::warn!("cannot stop the Data Pump job {}: {e}", self.job);
            }
        }
    }
}

//! The production side of cloning a PostgreSQL database: connect to the source read-only,
//! resolve the schema allowlist (from a registry such as GUS's `core.databaseinfo`, or a list),
//! fingerprint the source's content, and hold the export lock for the length of an export.
//!
//! The source URL is a [`Secret`]: no error or log line here contains it or its password; errors
//! name the secret's identity (`env("TOXO_SOURCE_URL")`) instead.
//!
//! TLS follows libpq's `sslmode` (see [`super::tls`]): `prefer` (the default) encrypts when the
//! server offers it, `verify-full` checks the certificate against `sslrootcert` and the host.

use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobMatcher};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::recipe::model::{LockBlock, Schemas};
use crate::recipe::Secret;

/// The lock name that selects the tuning manager's row-claim convention.
pub const TUNING_MANAGER: &str = "tuning_manager";
/// How long `lock` waits when the recipe gives no `wait`.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(600);
/// How often a held lock is tried again.
const POLL: Duration = Duration::from_secs(1);
/// How long connecting may take when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why talking to the production source failed. Never contains the URL or its password.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the source `{identity}` is not a valid PostgreSQL URL or connection string")]
    BadUrl { identity: String },
    #[error("the TLS settings of the source `{identity}`: {source}")]
    Tls {
        identity: String,
        #[source]
        source: super::tls::TlsError,
    },
    #[error("cannot reach the source `{identity}`: {reason}")]
    Unreachable { identity: String, reason: String },
    #[error("authentication failed for the source `{identity}`: {reason}")]
    Authentication { identity: String, reason: String },
    #[error("the schema registry `{registry}` is not a table name such as \"core.databaseinfo\"")]
    BadRegistry { registry: String },
    #[error("the schema registry table `{table}` does not exist in the source")]
    MissingRegistry { table: String },
    #[error("the schema registry table `{table}` has no column `{column}`")]
    MissingRegistryColumn { table: String, column: String },
    #[error("schemas listed in the recipe do not exist in the source: {}", .schemas.join(", "))]
    MissingSchemas { schemas: Vec<String> },
    #[error("invalid exclude_schemas pattern `{pattern}`: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("the fingerprint query failed: {reason}")]
    Fingerprint { reason: String },
    #[error("the export lock table `{table}` does not exist in the source")]
    MissingLockTable { table: String },
    #[error("the export lock table `{table}` has no row to claim")]
    NoLockRow { table: String },
    #[error(
        "the export lock `{name}` is held by {holder} since {since}; gave up after waiting {}s",
        .waited.as_secs()
    )]
    LockTimeout {
        name: String,
        holder: String,
        since: String,
        waited: Duration,
    },
    #[error("the source `{identity}` is not an Oracle source string: {why}")]
    BadOracleSource { identity: String, why: String },
    #[error(
        "Oracle's client libraries cannot be loaded ({reason}): install Oracle Instant Client \
         (Basic or Basic Light) and make `libclntsh.so` findable (`ldconfig` or `LD_LIBRARY_PATH`)"
    )]
    NoOracleClient { reason: String },
    #[error("the lock name `{name}` {why}")]
    BadLockName { name: String, why: &'static str },
    #[error("{action} on the source failed: {reason}")]
    Query {
        action: &'static str,
        reason: String,
    },
}

/// The schemas to clone, as found in the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Actual schema names in the source (as stored, so lowercase for GUS), sorted.
    pub schemas: Vec<String>,
    /// Schemas removed by `exclude_schemas`: (schema, the pattern that excluded it).
    pub excluded: Vec<(String, String)>,
    /// Names registered in the registry with no such schema in the source.
    pub missing: Vec<String>,
}

/// The text of a query error, without anything of the connection's.
fn reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            // The driver's own text ("error connecting to server") and what caused it.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    }
}

/// A `map_err` adapter for a failed query.
fn query_error(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
    move |e| SourceError::Query {
        action,
        reason: reason(&e),
    }
}

/// Blank out of `text` the URL and the password it carries.
fn scrub(text: &str, url: &str, password: Option<&str>) -> String {
    let mut text = text.replace(url, "<source>");
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        text = text.replace(p, "***");
    }
    text
}

/// Connect to the source; the connection runs in a spawned task. The session is read-only by
/// default (`default_transaction_read_only`): only [`lock`] writes, in an explicit read-write
/// transaction, and only to the tuning manager's claim row.
pub async fn connect(url: &Secret) -> Result<Client, SourceError> {
    let identity = url.identity().to_string();
    let source = super::tls::parse(url.reveal()).map_err(|e| match e {
        super::tls::TlsError::BadUrl => SourceError::BadUrl {
            identity: identity.clone(),
        },
        source => SourceError::Tls {
            identity: identity.clone(),
            source,
        },
    })?;
    let tls = super::tls::connector(&source).map_err(|source| SourceError::Tls {
        identity: identity.clone(),
        source,
    })?;
    let mut config = source.config;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("vmbuild");
    }
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let (client, connection) = match config.connect(tls).await {
        Ok(pair) => pair,
        Err(e) => {
            let text = scrub(&reason(&e), url.reveal(), password.as_deref());
            let code = e.as_db_error().map(|db| db.code().clone());
            return Err(match code {
                Some(c)
                    if c == SqlState::INVALID_PASSWORD
                        || c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                {
                    SourceError::Authentication {
                        identity,
                        reason: text,
                    }
                }
                // The server asked for a password the URL does not have.
                None if text.contains("password missing") => SourceError::Authentication {
                    identity,
                    reason: "the server asks for a password and the URL has none".into(),
                },
                _ => SourceError::Unreachable {
                    identity,
                    reason: text,
                },
            });
        }
    };
    let log_identity = identity.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            // Without the URL: the error text of a broken connection does not carry it.
            tracing::warn!(
                "connection to the source `{log_identity}` ended: {}",
                reason(&e)
            );
        }
    });
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await
        .map_err(query_error("making the session read-only"))?;
    Ok(client)
}

/// A name as PostgreSQL reads it unquoted (folded to lowercase), quoted for SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.to_lowercase().replace('"', "\"\""))
}

/// The schemas to clone: from the registry (`SELECT <column> FROM <registry>`, names matched to
/// the source's schemas case-insensitively, since GUS registers `ApiDB` for the schema `apidb`)
/// or the list (each must exist), minus those matching an `exclude` glob (case-insensitive).
pub async fn resolve_allowlist(
    client: &Client,
    schemas: &Schemas,
    exclude: &[String],
) -> Result<Allowlist, SourceError> {
    let present: Vec<String> = client
        .query("SELECT nspname::text FROM pg_catalog.pg_namespace", &[])
        .await
        .map_err(query_error("listing schemas"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    match schemas {
        Schemas::List(names) => match_allowlist(&present, Requested::List(names), exclude),
        Schemas::Registry { registry, column } => {
            let parts: Vec<&str> = registry.split('.').collect();
            let [schema, table] = parts.as_slice() else {
                return Err(SourceError::BadRegistry {
                    registry: registry.clone(),
                });
            };
            if schema.is_empty() || table.is_empty() {
                return Err(SourceError::BadRegistry {
                    registry: registry.clone(),
                });
            }
            let sql = format!(
                "SELECT {}::text FROM {}.{}",
                quote_ident(column),
                quote_ident(schema),
                quote_ident(table)
            );
            let rows = client.query(sql.as_str(), &[]).await.map_err(|e| {
                match e.as_db_error().map(|db| db.code()) {
                    Some(c) if *c == SqlState::UNDEFINED_TABLE => SourceError::MissingRegistry {
                        table: registry.clone(),
                    },
                    Some(c) if *c == SqlState::UNDEFINED_COLUMN => {
                        SourceError::MissingRegistryColumn {
                            table: registry.clone(),
                            column: column.clone(),
                        }
                    }
                    _ => SourceError::Query {
                        action: "reading the schema registry",
                        reason: reason(&e),
                    },
                }
            })?;
            let names = rows
                .iter()
                .filter_map(|row| row.get::<_, Option<String>>(0))
                .collect();
            match_allowlist(&present, Requested::Registry(names), exclude)
        }
    }
}

/// The schema names a recipe asks for.
pub enum Requested<'a> {
    /// Listed in the recipe: each must exist.
    List(&'a [String]),
    /// Read from the registry table: those that do not exist are reported as missing.
    Registry(Vec<String>),
}

/// The allowlist: each requested name matched to a schema of the source (`present`): exactly
/// first (a quoted mixed-case schema), else case-insensitively (GUS registers `ApiDB` for the
/// schema `apidb` in PostgreSQL, `APIDB` in Oracle); then those matching an `exclude` glob
/// (case-insensitive) removed. Shared by the PostgreSQL and Oracle sources.
pub fn match_allowlist(
    present: &[String],
    requested: Requested<'_>,
    exclude: &[String],
) -> Result<Allowlist, SourceError> {
    let find = |name: &str| -> Option<String> {
        present
            .iter()
            .find(|s| s.as_str() == name)
            .or_else(|| {
                present
                    .iter()
                    .find(|s| s.to_lowercase() == name.to_lowercase())
            })
            .cloned()
    };

    let mut found = Vec::new();
    let mut missing = Vec::new();
    match requested {
        Requested::List(names) => {
            for name in names {
                match find(name) {
                    Some(s) => found.push(s),
                    None => missing.push(name.clone()),
                }
            }
            if !missing.is_empty() {
                return Err(SourceError::MissingSchemas { schemas: missing });
            }
        }
        Requested::Registry(names) => {
            for name in names {
                let name = name.trim();
                if name.is_empty() {
                    continue;
                }
                match find(name) {
                    Some(s) => found.push(s),
                    None => missing.push(name.to_string()),
                }
            }
        }
    }

    let patterns = exclude
        .iter()
        .map(|p| {
            GlobBuilder::new(p)
                .case_insensitive(true)
                .build()
                .map(|g| (p.clone(), g.compile_matcher()))
                .map_err(|e| SourceError::BadPattern {
                    pattern: p.clone(),
                    reason: e.kind().to_string(),
                })
        })
        .collect::<Result<Vec<(String, GlobMatcher)>, SourceError>>()?;
    found.sort();
    found.dedup();
    missing.sort();
    missing.dedup();
    let mut allow = Allowlist {
        missing,
        ..Allowlist::default()
    };
    for schema in found {
        match patterns.iter().find(|(_, m)| m.is_match(&schema)) {
            Some((p, _)) => allow.excluded.push((schema, p.clone())),
            None => allow.schemas.push(schema),
        }
    }
    Ok(allow)
}

/// Run the recipe's fingerprint query (one read-only SELECT) and return a stable text of all its
/// rows: each row in PostgreSQL's record text form, sorted, one a line. `None` without a query.
pub async fn fingerprint(
    client: &Client,
    query: Option<&str>,
) -> Result<Option<String>, SourceError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let query = query.trim().trim_end_matches(';');
    // As a subquery: one SELECT only, its rows as text whatever their column types.
    // On lines of their own, so that a trailing `-- comment` in the query comments out nothing.
    let sql = format!("SELECT fingerprint_row::text FROM (\n{query}\n) AS fingerprint_row");
    let rows = client
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| SourceError::Fingerprint { reason: reason(&e) })?;
    let mut lines: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect();
    lines.sort();
    Ok(Some(lines.join("\n")))
}

/// The advisory-lock key for a lock name: the first 8 bytes of its blake3 digest.
pub fn advisory_key(name: &str) -> i64 {
    let digest = blake3::hash(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_bytes()[..8]);
    i64::from_le_bytes(bytes)
}

/// A holder text in the tuning manager's style: `vmbuild process <pid> on <host>`.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into());
    format!("vmbuild process {} on {host}", std::process::id())
}

enum Held {
    /// The claim row in `apidb.InstanceMetaInfo` holds `holder`.
    TuningManager { holder: String },
    /// A session-level advisory lock on the connection.
    Advisory { key: i64 },
}

/// The export lock, held until [`ExportLock::release`] or drop.
///
/// It owns its connection. Released explicitly by `release().await` (call it when the export
/// ends, fails, or is interrupted by Ctrl-C). On drop without release, the release is spawned
/// as a task on the current tokio runtime with the owned connection; an advisory lock is also
/// freed by the server when that connection closes. A process killed outright leaves a tuning
/// manager claim behind, as the tuning manager itself would.
pub struct ExportLock {
    client: Option<Client>,
    held: Held,
    name: String,
}

impl ExportLock {
    /// The lock's name from the recipe.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Release the lock now.
    pub async fn release(mut self) -> Result<(), SourceError> {
        match self.client.take() {
            Some(client) => release_on(&client, &self.held).await,
            None => Ok(()),
        }
    }
}

impl Drop for ExportLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let held = std::mem::replace(&mut self.held, Held::Advisory { key: 0 });
        let name = self.name.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = release_on(&client, &held).await {
                        tracing::warn!("cannot release the export lock `{name}`: {e}");
                    }
                });
            }
            Err(_) => tracing::warn!(
                "the export lock `{name}` was dropped outside a runtime and is not released"
            ),
        }
    }
}

const CLAIM_TABLE: &str = "apidb.InstanceMetaInfo";

async fn release_on(client: &Client, held: &Held) -> Result<(), SourceError> {
    match held {
        Held::TuningManager { holder } => {
            // A read-write transaction: the session is read-only by default.
            client
                .batch_execute("BEGIN READ WRITE")
                .await
                .map_err(query_error("releasing the export lock"))?;
            let done = client
                .execute(
                    "UPDATE apidb.InstanceMetaInfo SET current_updater = NULL, update_start = NULL \
                     WHERE current_updater = $1",
                    &[holder],
                )
                .await;
            let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = client.batch_execute(end).await;
            done.map_err(query_error("releasing the export lock"))?;
            ended.map_err(query_error("releasing the export lock"))?;
            Ok(())
        }
        Held::Advisory { key } => {
            client
                .query_one("SELECT pg_advisory_unlock($1)", &[key])
                .await
                .map_err(query_error("releasing the export lock"))?;
            Ok(())
        }
    }
}

/// Take the export lock on a connection of its own (from [`connect`]), waiting while someone else
/// holds it, at most `lock.wait` (10 minutes by default), trying again every second.
///
/// `lock.name == "tuning_manager"`: the tuning manager's convention, claiming the row of
/// `apidb.InstanceMetaInfo` with `current_updater = <holder>` while `current_updater IS NULL`.
/// Any other name: a session-level advisory lock keyed by [`advisory_key`].
pub async fn lock(
    client: Client,
    lock: &LockBlock,
    holder: &str,
) -> Result<ExportLock, SourceError> {
    let wait = lock
        .wait
        .as_ref()
        .map(|w| Duration::from_secs(w.0))
        .unwrap_or(DEFAULT_LOCK_WAIT);
    lock_waiting(client, &lock.name, wait, holder).await
}

async fn lock_waiting(
    client: Client,
    name: &str,
    wait: Duration,
    holder: &str,
) -> Result<ExportLock, SourceError> {
    let started = Instant::now();
    let held = if name == TUNING_MANAGER {
        Held::TuningManager {
            holder: holder.to_string(),
        }
    } else {
        Held::Advisory {
            key: advisory_key(name),
        }
    };
    loop {
        let (claimed, current) = match &held {
            Held::TuningManager { holder } => try_claim(&client, holder).await?,
            Held::Advisory { key } => try_advisory(&client, *key).await?,
        };
        if claimed {
            return Ok(ExportLock {
                client: Some(client),
                held,
                name: name.to_string(),
            });
        }
        let waited = started.elapsed();
        if waited >= wait {
            let (holder, since) =
                current.unwrap_or_else(|| ("an unknown session".into(), "an unknown time".into()));
            return Err(SourceError::LockTimeout {
                name: name.to_string(),
                holder,
                since,
                waited,
            });
        }
        tokio::time::sleep(POLL.min(wait - waited)).await;
    }
}

/// Try the tuning manager's claim; when not claimed, who holds the row and since when.
async fn try_claim(
    client: &Client,
    holder: &str,
) -> Result<(bool, Option<(String, String)>), SourceError> {
    let missing_table = |e: tokio_postgres::Error| match e.as_db_error().map(|db| db.code()) {
        Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME => {
            SourceError::MissingLockTable {
                table: CLAIM_TABLE.into(),
            }
        }
        _ => SourceError::Query {
            action: "claiming the export lock",
            reason: reason(&e),
        },
    };
    client
        .batch_execute("BEGIN READ WRITE")
        .await
        .map_err(query_error("claiming the export lock"))?;
    let claimed = client
        .execute(
            "UPDATE apidb.InstanceMetaInfo SET current_updater = $1, update_start = now() \
             WHERE current_updater IS NULL",
            &[&holder],
        )
        .await;
    let end = if claimed.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = client.batch_execute(end).await;
    let claimed = claimed.map_err(missing_table)?;
    ended.map_err(query_error("claiming the export lock"))?;
    if claimed > 0 {
        return Ok((true, None));
    }
    let row = client
        .query_opt(
            "SELECT current_updater, coalesce(update_start::text, 'an unknown time') \
             FROM apidb.InstanceMetaInfo WHERE current_updater IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .map_err(query_error("reading the export lock's holder"))?;
    match row {
        Some(row) => Ok((false, Some((row.get(0), row.get(1))))),
        None => {
            let any = client
                .query_opt("SELECT 1 FROM apidb.InstanceMetaInfo LIMIT 1", &[])
                .await
                .map_err(query_error("reading the export lock's holder"))?;
            if any.is_none() {
                return Err(SourceError::NoLockRow {
                    table: CLAIM_TABLE.into(),
                });
            }
            // Released between the two statements: try again at once next round.
            Ok((false, None))
        }
    }
}

/// Try the advisory lock; when not taken, which session holds it and since when.
async fn try_advisory(
    client: &Client,
    key: i64,
) -> Result<(bool, Option<(String, String)>), SourceError> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(query_error("taking the export lock"))?
        .get(0);
    if got {
        return Ok((true, None));
    }
    // A bigint key shows in pg_locks as classid (high 32 bits) and objid (low), objsubid 1.
    let high = ((key as u64) >> 32) as i64;
    let low = ((key as u64) & 0xffff_ffff) as i64;
    let row = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), \
                    coalesce(host(a.client_addr), 'a local socket'), a.backend_start::text \
             FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
               AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                                 WHERE datname = current_database()) \
             LIMIT 1",
            &[&high, &low],
        )
        .await
        .map_err(query_error("reading the export lock's holder"))?;
    Ok((
        false,
        row.map(|row| {
            let pid: i32 = row.get(0);
            let app: String = row.get(1);
            let user: String = row.get(2);
            let addr: String = row.get(3);
            let since: Option<String> = row.get(4);
            let app = if app.is_empty() {
                String::new()
            } else {
                format!(" `{app}`")
            };
            (
                format!("session pid {pid}{app} (user {user} from {addr})"),
                since.unwrap_or_else(|| "an unknown time".into()),
            )
        }),
    ))
}

#[cfg(test)]
mod tests {
    //! Against a real PostgreSQL: set `VMBUILD_TEST_PG_URL` to a superuser URL
    //! (`postgres://postgres:pw@127.0.0.1/postgres`); skipped otherwise.

    use super::*;
    use crate::recipe::model::DurationText;
    use std::path::Path;
    use std::process::Command;
    use std::str::FromStr;
    use tokio_postgres::config::Host;
    use tokio_postgres::{Config, NoTls};

    /// A database of its own for one test, dropped when the test ends (even by a panic).
    struct TestDb {
        name: String,
        admin: Config,
        url: Secret,
    }

    fn admin_config() -> Option<Config> {
        match std::env::var("VMBUILD_TEST_PG_URL") {
            Ok(url) => Some(Config::from_str(&url).expect("VMBUILD_TEST_PG_URL parses")),
            Err(_) => {
                eprintln!("skipped: set VMBUILD_TEST_PG_URL to a PostgreSQL superuser URL");
                None
            }
        }
    }

    fn quote_value(v: &str) -> String {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }

    /// A key=value connection string for `config` with another database, password or port.
    fn conninfo(
        config: &Config,
        dbname: &str,
        password: Option<&str>,
        port: Option<u16>,
    ) -> String {
        let mut parts = Vec::new();
        if let Some(Host::Tcp(h)) = config.get_hosts().first() {
            parts.push(format!("host={}", quote_value(h)));
        }
        if let Some(Host::Unix(p)) = config.get_hosts().first() {
            parts.push(format!("host={}", quote_value(&p.to_string_lossy())));
        }
        let port = port.or_else(|| config.get_ports().first().copied());
        if let Some(p) = port {
            parts.push(format!("port={p}"));
        }
        if let Some(u) = config.get_user() {
            parts.push(format!("user={}", quote_value(u)));
        }
        let stored = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if let Some(p) = password.map(str::to_string).or(stored) {
            parts.push(format!("password={}", quote_value(&p)));
        }
        parts.push(format!("dbname={dbname}"));
        parts.join(" ")
    }

    /// libpq environment for the fixture script.
    fn pg_env(cmd: &mut Command, config: &Config) {
        match config.get_hosts().first() {
            Some(Host::Tcp(h)) => cmd.env("PGHOST", h),
            Some(Host::Unix(p)) => cmd.env("PGHOST", p),
            None => cmd,
        };
        if let Some(p) = config.get_ports().first() {
            cmd.env("PGPORT", p.to_string());
        }
        if let Some(u) = config.get_user() {
            cmd.env("PGUSER", u);
        }
        if let Some(p) = config.get_password() {
            cmd.env("PGPASSWORD", String::from_utf8_lossy(p).as_ref());
        }
        if let Some(d) = config.get_dbname() {
            cmd.env("FIXTURE_MAINTENANCE_DB", d);
        }
    }

    impl TestDb {
        /// A fresh database filled by `examples/production/fixture.sh --size small`.
        fn fixture(admin: Config) -> TestDb {
            let name = format!("vmbuild_test_{:016x}", rand::random::<u64>());
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/production/fixture.sh");
            let mut cmd = Command::new("bash");
            cmd.arg(&script).args(["--size", "small", "--db", &name]);
            pg_env(&mut cmd, &admin);
            let out = cmd.output().expect("run fixture.sh");
            assert!(
                out.status.success(),
                "fixture.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let summary = String::from_utf8_lossy(&out.stdout);
            assert!(summary.contains("schema genes"), "summary: {summary}");
            let url = Secret::new(
                "env(\"VMBUILD_TEST_SOURCE\")",
                conninfo(&admin, &name, None, None),
            );
            TestDb { name, admin, url }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let mut cmd = Command::new("psql");
            cmd.args(["-X", "-q", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .args(["-d", self.admin.get_dbname().unwrap_or("postgres")]);
            pg_env(&mut cmd, &self.admin);
            let _ = cmd.status();
        }
    }

    #[test]
    fn oracle_upper_case_users_match_registered_mixed_case_names() {
        let present: Vec<String> = [
            "APIDB",
            "APIDBTUNING",
            "CORE",
            "SYS",
            "STAFF_JDOE",
            "WORKFLOW",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let registered = vec![
            "ApiDB".to_string(),
            "ApidbTuning".into(),
            "Core".into(),
            " Workflow ".into(),
            "staff_jdoe".into(),
            "Ghost".into(),
            String::new(),
        ];
        let exclude = vec!["staff_*".to_string(), "workflow".to_string()];
        let allow = match_allowlist(&present, Requested::Registry(registered), &exclude)
            .expect("allowlist");
        assert_eq!(allow.schemas, ["APIDB", "APIDBTUNING", "CORE"]);
        assert_eq!(
            allow.excluded,
            [
                ("STAFF_JDOE".to_string(), "staff_*".to_string()),
                ("WORKFLOW".to_string(), "workflow".to_string())
            ]
        );
        assert_eq!(allow.missing, ["Ghost"]);
        let list = ["core".to_string(), "Nope".to_string()];
        let err = match_allowlist(&present, Requested::List(&list), &[]).unwrap_err();
        assert!(matches!(err, SourceError::MissingSchemas { .. }), "{err}");
        let err =
            match_allowlist(&present, Requested::List(&list[..1]), &["[".to_string()]).unwrap_err();
        assert!(matches!(err, SourceError::BadPattern { .. }), "{err}");
    }

    fn registry() -> Schemas {
        Schemas::Registry {
            registry: "core.databaseinfo".into(),
            column: "name".into(),
        }
    }

    #[tokio::test]
    async fn allowlist_from_the_registry_minus_exclusions() {
        let Some(admin) = admin_config() else { return };
        let db = TestDb::fixture(admin);
        let client = connect(&db.url).await.expect("connect");
        let exclude = vec!["staff_*".to_string(), "Workflow".to_string()];
        let allow = resolve_allowlist(&client, &registry(), &exclude)
            .await
            .expect("allowlist");
        assert_eq!(
            allow.schemas,
            [
                "apidb",
                "apidbtuning",
                "core",
                "dots",
                "genes",
                "sres",
                "study"
            ]
        );
        assert_eq!(
            allow.excluded,
            [("workflow".to_string(), "Workflow".to_string())]
        );
        assert!(allow.missing.is_empty(), "{:?}", allow.missing);
        for never in ["userlogins5", "staff_jdoe", "workflow"] {
            assert!(!allow.schemas.iter().any(|s| s == never));
        }

        // Registered but absent; a staff schema registered by mistake is still excluded.
        let writer = connect_rw(&db).await;
        writer
            .batch_execute("INSERT INTO core.databaseinfo (name) VALUES ('Ghost'), ('STAFF_JDOE')")
            .await
            .expect("register");
        let allow = resolve_allowlist(&client, &registry(), &exclude)
            .await
            .expect("allowlist");
        assert_eq!(allow.missing, ["Ghost"]);
        assert!(allow
            .excluded
            .contains(&("staff_jdoe".to_string(), "staff_*".to_string())));

        // A list: mixed case matched, each must exist.
        let list = Schemas::List(vec!["Core".into(), "ApiDB".into(), "staff_jdoe".into()]);
        let allow = resolve_allowlist(&client, &list, &exclude)
            .await
            .expect("list");
        assert_eq!(allow.schemas, ["apidb", "core"]);
        let list = Schemas::List(vec!["Core".into(), "NoSuchSchema".into()]);
        let err = resolve_allowlist(&client, &list, &[]).await.unwrap_err();
        assert!(matches!(err, SourceError::MissingSchemas { .. }), "{err}");
        assert!(err.to_string().contains("NoSuchSchema"), "{err}");
    }

    /// A plain read-write session on the test database (plays the tuning manager or staff).
    async fn connect_rw(db: &TestDb) -> Client {
        let (client, connection) = Config::from_str(db.url.reveal())
            .expect("config")
            .application_name("other-exporter")
            .connect(NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    #[tokio::test]
    async fn bad_password_and_unreachable_port_say_so_without_the_url() {
        let Some(admin) = admin_config() else { return };
        let wrong = "Wrong-Pw-d41d8cd98f";
        let url = Secret::new(
            "env(\"X\")",
            conninfo(&admin, "postgres", Some(wrong), None),
        );
        let err = connect(&url).await.unwrap_err();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, SourceError::Authentication { .. }), "{text}");
        assert!(
            text.starts_with("authentication failed for the source `env(\"X\")`"),
            "{text}"
        );
        assert!(
            !text.contains(wrong) && !text.contains(url.reveal()),
            "{text}"
        );
        assert!(!format!("{err:?}").contains(wrong));

        let url = Secret::new(
            "env(\"Y\")",
            format!("postgres://someone:{wrong}@127.0.0.1:1/postgres"),
        );
        let err = connect(&url).await.unwrap_err();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, SourceError::Unreachable { .. }), "{text}");
        assert!(text.contains("env(\"Y\")"), "{text}");
        assert!(!text.contains(wrong) && !text.contains("someone"), "{text}");
        assert!(!format!("{err:?}").contains(wrong));

        // Over TLS, a wrong password is still a wrong password.
        let url = Secret::new(
            "env(\"Z\")",
            format!(
                "{} sslmode=require",
                conninfo(&admin, "postgres", Some(wrong), None)
            ),
        );
        let err = connect(&url).await.unwrap_err();
        eprintln!("{err}");
        assert!(matches!(err, SourceError::Authentication { .. }), "{err}");
        assert!(!err.to_string().contains(wrong));
    }

    /// Whether this session is encrypted.
    async fn encrypted(client: &Client) -> bool {
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0)
    }

    /// The test server's certificate: Debian's cluster serves the snakeoil certificate,
    /// self-signed for `localhost`.
    const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

    #[tokio::test]
    async fn tls_follows_libpq_sslmode() {
        let Some(admin) = admin_config() else { return };
        if !Path::new(SNAKEOIL).is_file() {
            eprintln!("skipped: the test server's certificate {SNAKEOIL} is not here");
            return;
        }
        let base = conninfo(&admin, "postgres", None, None);
        let with = |host: &str, extra: &str| {
            let url = format!("{base} {extra}").replace(
                &format!(
                    "host='{}'",
                    match admin.get_hosts().first() {
                        Some(Host::Tcp(h)) => h.clone(),
                        _ => String::new(),
                    }
                ),
                &format!("host='{host}'"),
            );
            Secret::new("env(\"TLS\")", url)
        };
        let client = connect(&with("127.0.0.1", "sslmode=disable"))
            .await
            .unwrap();
        assert!(!encrypted(&client).await, "disable");
        // prefer (the default) and require encrypt, and check no certificate.
        let client = connect(&with("127.0.0.1", "")).await.unwrap();
        assert!(encrypted(&client).await, "prefer");
        let client = connect(&with("127.0.0.1", "sslmode=require"))
            .await
            .unwrap();
        assert!(encrypted(&client).await, "require");
        // verify-full: the chain and the name.
        let root = format!("sslrootcert={SNAKEOIL}");
        let client = connect(&with("localhost", &format!("sslmode=verify-full {root}")))
            .await
            .unwrap();
        assert!(encrypted(&client).await, "verify-full");
        let err = connect(&with("127.0.0.1", &format!("sslmode=verify-full {root}")))
            .await
            .unwrap_err()
            .to_string();
        eprintln!("{err}");
        assert!(
            err.contains("certificate") && err.contains("env(\"TLS\")"),
            "{err}"
        );
        // verify-ca: the chain only.
        let client = connect(&with("127.0.0.1", &format!("sslmode=verify-ca {root}")))
            .await
            .unwrap();
        assert!(encrypted(&client).await, "verify-ca");
        // A root that did not sign the server's certificate.
        let err = connect(&with(
            "localhost",
            "sslmode=verify-full sslrootcert=/etc/ssl/certs/ca-certificates.crt",
        ))
        .await
        .unwrap_err()
        .to_string();
        eprintln!("{err}");
        assert!(err.contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_registry_table_is_named() {
        let Some(admin) = admin_config() else { return };
        let db = TestDb::fixture(admin);
        let client = connect(&db.url).await.expect("connect");
        let missing = Schemas::Registry {
            registry: "core.nosuchinfo".into(),
            column: "name".into(),
        };
        let err = resolve_allowlist(&client, &missing, &[]).await.unwrap_err();
        eprintln!("{err}");
        assert!(matches!(err, SourceError::MissingRegistry { .. }), "{err}");
        assert!(err.to_string().contains("`core.nosuchinfo`"), "{err}");
        let no_column = Schemas::Registry {
            registry: "core.databaseinfo".into(),
            column: "schema_name".into(),
        };
        let err = resolve_allowlist(&client, &no_column, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, SourceError::MissingRegistryColumn { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fingerprint_is_the_rows_as_text_and_read_only() {
        let Some(admin) = admin_config() else { return };
        let db = TestDb::fixture(admin);
        let client = connect(&db.url).await.expect("connect");
        assert_eq!(fingerprint(&client, None).await.expect("none"), None);
        let q = "SELECT release, instance_nickname FROM apidb.instancemetainfo;";
        let fp = fingerprint(&client, Some(q)).await.expect("fingerprint");
        assert_eq!(fp.as_deref(), Some("(68,toxoprod)"));
        let q = "SELECT n FROM genes.gene_count UNION ALL SELECT 1 -- the count";
        let fp = fingerprint(&client, Some(q)).await.expect("fingerprint");
        assert_eq!(fp.as_deref(), Some("(1)\n(3000)"));
        // The session is read-only: a write in disguise fails.
        let err = client
            .batch_execute("CREATE TABLE core.sneaky (x int)")
            .await
            .unwrap_err();
        assert_eq!(
            err.as_db_error().map(|d| d.code().clone()),
            Some(SqlState::READ_ONLY_SQL_TRANSACTION)
        );
        let err = fingerprint(&client, Some("SELECT * FROM nowhere")).await;
        assert!(matches!(err, Err(SourceError::Fingerprint { .. })));
    }

    async fn claim_row(client: &Client) -> (Option<String>, Option<String>) {
        let row = client
            .query_one(
                "SELECT current_updater, update_start::text FROM apidb.instancemetainfo",
                &[],
            )
            .await
            .expect("read claim row");
        (row.get(0), row.get(1))
    }

    fn lock_block(name: &str, wait: u64) -> LockBlock {
        LockBlock {
            name: name.into(),
            wait: Some(DurationText(wait)),
        }
    }

    #[tokio::test]
    async fn tuning_manager_lock_waits_claims_and_releases() {
        let Some(admin) = admin_config() else { return };
        let db = TestDb::fixture(admin);
        let other = connect_rw(&db).await;
        let tm = "process 4242 on tuning-host.example.org";
        other
            .execute(
                "UPDATE apidb.InstanceMetaInfo SET current_updater = $1, update_start = now() \
                 WHERE current_updater IS NULL",
                &[&tm],
            )
            .await
            .expect("tuning manager claims");

        // Held by the tuning manager: wait, then fail naming it and since when.
        let started = Instant::now();
        let client = connect(&db.url).await.expect("connect");
        let err = lock(client, &lock_block("tuning_manager", 2), "vmbuild test")
            .await
            .err()
            .expect("timeout");
        assert!(started.elapsed() >= Duration::from_secs(2));
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, SourceError::LockTimeout { .. }), "{text}");
        let (_, since) = claim_row(&other).await;
        assert!(text.contains(tm), "{text}");
        assert!(text.contains(&since.expect("since")), "{text}");

        // Released while we wait: claimed.
        let client = connect(&db.url).await.expect("connect");
        let waiting = tokio::spawn(async move {
            lock(client, &lock_block("tuning_manager", 20), "vmbuild test").await
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        other
            .execute(
                "UPDATE apidb.InstanceMetaInfo SET current_updater = NULL, update_start = NULL \
                 WHERE current_updater = $1",
                &[&tm],
            )
            .await
            .expect("tuning manager releases");
        let held = waiting.await.expect("join").expect("lock");
        let (who, since) = claim_row(&other).await;
        assert_eq!(who.as_deref(), Some("vmbuild test"));
        assert!(since.is_some());

        // While we hold it, another exporter times out naming us.
        let client = connect(&db.url).await.expect("connect");
        let err = lock(client, &lock_block("tuning_manager", 0), "someone else")
            .await
            .err()
            .expect("timeout");
        assert!(
            err.to_string().contains("held by vmbuild test since"),
            "{err}"
        );

        held.release().await.expect("release");
        assert_eq!(claim_row(&other).await, (None, None));

        // Dropped without release: released by a spawned task.
        let client = connect(&db.url).await.expect("connect");
        let held = lock(client, &lock_block("tuning_manager", 5), "vmbuild dropped")
            .await
            .expect("lock");
        assert_eq!(
            claim_row(&other).await.0.as_deref(),
            Some("vmbuild dropped")
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        while claim_row(&other).await.0.is_some() {
            assert!(Instant::now() < deadline, "not released after drop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn advisory_held(client: &Client, key: i64) -> bool {
        let high = ((key as u64) >> 32) as i64;
        let low = ((key as u64) & 0xffff_ffff) as i64;
        client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
                &[&high, &low],
            )
            .await
            .expect("pg_locks")
            .get::<_, i64>(0)
            > 0
    }

    #[tokio::test]
    async fn advisory_lock_waits_names_the_session_and_releases() {
        let Some(admin) = admin_config() else { return };
        let db = TestDb::fixture(admin);
        let other = connect_rw(&db).await;
        let key = advisory_key("toxo-export");
        let pid: i32 = other
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        other
            .query_one("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .expect("other session locks");

        let client = connect(&db.url).await.expect("connect");
        let err = lock(client, &lock_block("toxo-export", 2), "vmbuild test")
            .await
            .err()
            .expect("timeout");
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, SourceError::LockTimeout { .. }), "{text}");
        assert!(
            text.contains(&format!("session pid {pid} `other-exporter`")),
            "{text}"
        );
        assert!(text.contains(" since 20"), "{text}");

        other
            .query_one("SELECT pg_advisory_unlock($1)", &[&key])
            .await
            .expect("other session unlocks");
        let client = connect(&db.url).await.expect("connect");
        let held = lock(client, &lock_block("toxo-export", 2), "vmbuild test")
            .await
            .expect("lock");
        assert!(advisory_held(&other, key).await);
        held.release().await.expect("release");
        assert!(!advisory_held(&other, key).await);

        let client = connect(&db.url).await.expect("connect");
        let held = lock(client, &lock_block("toxo-export", 2), "vmbuild test")
            .await
            .expect("lock");
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        while advisory_held(&other, key).await {
            assert!(Instant::now() < deadline, "not released after drop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

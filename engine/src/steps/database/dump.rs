//! Dumping an allowlist of schemas from a PostgreSQL source with `pg_dump -Fd -j N`, counting
//! the rows of every dumped table in the very snapshot the dump was taken from.
//!
//! The source URL is a secret: it never appears in argv (visible in `ps`) nor in a log. It is
//! parsed here and handed to `pg_dump` as `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE`/... in the
//! environment, with the password in a temporary `PGPASSFILE` (mode 0600, in the step's scratch
//! folder, removed afterwards).
//!
//! Consistency: a connection kept open for the whole dump runs a `REPEATABLE READ` transaction
//! that exports its snapshot (or imports the caller's); `pg_dump --snapshot` uses it for all its
//! workers, and the rows are counted in that same transaction afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

use super::super::process::{self, Invocation};
use super::super::{RunContext, StepError};
use crate::recipe::Secret;

/// What to dump.
pub struct DumpSpec<'a> {
    /// A libpq URL or `key=value` string (parsed by `tokio-postgres`).
    pub url: &'a Secret,
    /// Schema names, taken literally (not as patterns).
    pub schemas: &'a [String],
    /// `pg_dump --exclude-table-data` patterns (pg_dump pattern syntax, e.g. `keep.big_*`).
    pub exclude_table_data: &'a [String],
    pub jobs: u32,
    /// A snapshot exported by the caller (e.g. while holding a lock); exported here otherwise.
    pub snapshot: Option<String>,
}

/// What was dumped.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpInfo {
    /// `schema.table` → rows in the dump (0 for a table whose data was excluded).
    pub row_counts: BTreeMap<String, i64>,
    /// Size of the dump folder.
    pub bytes: u64,
}

/// Why a dump failed. Never contains the URL or a password.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("the source URL does not parse as a PostgreSQL connection string")]
    Url,
    #[error("no schema to dump")]
    NoSchemas,
    #[error("the source's TLS settings: {0}")]
    Tls(#[source] super::tls::TlsError),
    #[error("the source database: {action}: {message}")]
    Source {
        action: &'static str,
        message: String,
    },
    #[error("`{program}` failed: {source}")]
    Command {
        program: &'static str,
        #[source]
        source: StepError,
    },
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DumpError {
    let path = path.to_path_buf();
    move |source| DumpError::Io {
        action,
        path,
        source,
    }
}

fn source_error(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DumpError {
    // tokio-postgres errors carry the server's message, never the connection string.
    move |e| DumpError::Source {
        action,
        message: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// A SQL identifier, double-quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A pg_dump name pattern matching exactly `name`: inside double quotes `*`, `?`, `.` and
/// upper case are literal; a double quote is written twice.
pub fn literal_pattern(name: &str) -> String {
    quote_ident(name)
}

/// A `.pgpass` field: `\` and `:` escaped.
fn pgpass_field(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// The libpq environment for `url`, and the password (if any) for a password file.
fn libpq_env(url: &Secret) -> Result<(BTreeMap<String, String>, Option<String>), DumpError> {
    let source = super::tls::parse(url.reveal()).map_err(|_| DumpError::Url)?;
    let config = &source.config;
    let mut env = BTreeMap::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        env.insert("PGHOST".into(), hosts.join(","));
    }
    let ports: Vec<String> = config.get_ports().iter().map(|p| p.to_string()).collect();
    if !ports.is_empty() {
        env.insert("PGPORT".into(), ports.join(","));
    }
    if let Some(user) = config.get_user() {
        env.insert("PGUSER".into(), user.to_string());
    }
    if let Some(db) = config.get_dbname() {
        env.insert("PGDATABASE".into(), db.to_string());
    }
    if let Some(options) = config.get_options() {
        env.insert("PGOPTIONS".into(), options.to_string());
    }
    if let Some(timeout) = config.get_connect_timeout() {
        env.insert(
            "PGCONNECT_TIMEOUT".into(),
            timeout.as_secs().max(1).to_string(),
        );
    }
    for (name, value) in super::tls::libpq_env(&source) {
        env.insert(name.into(), value);
    }
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    Ok((env, password))
}

/// A copy of `ctx` that also blanks out `extra` secrets.
pub(super) fn with_redactions(ctx: &RunContext, extra: &[String]) -> RunContext {
    let mut redact: Vec<String> = ctx.redact.as_ref().clone();
    redact.extend(extra.iter().filter(|s| !s.is_empty()).cloned());
    RunContext {
        out: ctx.out.clone(),
        scratch: ctx.scratch.clone(),
        log: ctx.log.clone(),
        upstream: ctx.upstream.clone(),
        recipe_dir: ctx.recipe_dir.clone(),
        cache: ctx.cache.clone(),
        redact: std::sync::Arc::new(redact),
        cancel: ctx.cancel.clone(),
        on_line: ctx.on_line.clone(),
    }
}

/// Dump `spec.schemas` into `out_dir/dump` (directory format).
pub async fn dump(
    spec: &DumpSpec<'_>,
    out_dir: &Path,
    ctx: &RunContext,
) -> Result<DumpInfo, DumpError> {
    if spec.schemas.is_empty() {
        return Err(DumpError::NoSchemas);
    }
    let ctx = &with_redactions(ctx, spec.url.parts());
    let (env, password) = libpq_env(spec.url)?;

    // The connection that holds the snapshot for the whole dump.
    let source = super::tls::parse(spec.url.reveal()).map_err(|_| DumpError::Url)?;
    let tls = super::tls::connector(&source).map_err(DumpError::Tls)?;
    let (client, connection) = source
        .config
        .connect(tls)
        .await
        .map_err(source_error("connect"))?;
    let connection = tokio::spawn(connection);
    let result = dump_in_snapshot(spec, out_dir, ctx, &client, env, password).await;
    drop(client);
    let _ = connection.await;
    result
}

async fn dump_in_snapshot(
    spec: &DumpSpec<'_>,
    out_dir: &Path,
    ctx: &RunContext,
    client: &tokio_postgres::Client,
    mut env: BTreeMap<String, String>,
    password: Option<String>,
) -> Result<DumpInfo, DumpError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(source_error("begin a transaction"))?;
    let snapshot = match &spec.snapshot {
        Some(id) => {
            let sql = format!("SET TRANSACTION SNAPSHOT '{}'", id.replace('\'', "''"));
            client
                .batch_execute(&sql)
                .await
                .map_err(source_error("import the snapshot"))?;
            id.clone()
        }
        None => client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(source_error("export a snapshot"))?
            .get(0),
    };
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = ANY($1) ORDER BY 1, 2",
            &[&spec.schemas],
        )
        .await
        .map_err(source_error("list the tables"))?;
    let tables: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();

    // The password file, readable by us only, gone when this function returns.
    let _passfile = match password {
        Some(password) => {
            let file = tempfile::Builder::new()
                .prefix("pgpass")
                .tempfile_in(&ctx.scratch)
                .map_err(io("create a password file in", &ctx.scratch))?;
            // tempfile creates it with mode 0600.
            std::fs::write(
                file.path(),
                format!("*:*:*:*:{}\n", pgpass_field(&password)),
            )
            .map_err(io("write", file.path()))?;
            env.insert("PGPASSFILE".into(), file.path().display().to_string());
            Some(file)
        }
        None => None,
    };

    let target = out_dir.join("dump");
    let mut args = vec![
        "--format=directory".to_string(),
        format!("--jobs={}", spec.jobs.max(1)),
        format!("--snapshot={snapshot}"),
        "--no-owner".into(),
        "--no-privileges".into(),
        "--no-publications".into(),
        "--no-subscriptions".into(),
        "--no-security-labels".into(),
        "--strict-names".into(),
        "--no-password".into(),
    ];
    for schema in spec.schemas {
        args.push(format!("--schema={}", literal_pattern(schema)));
    }
    for pattern in spec.exclude_table_data {
        args.push(format!("--exclude-table-data={pattern}"));
    }
    args.push(format!("--file={}", target.display()));
    process::run(
        Invocation {
            program: "pg_dump".into(),
            args,
            env,
            cwd: out_dir.to_path_buf(),
        },
        ctx,
    )
    .await
    .map_err(|source| DumpError::Command {
        program: "pg_dump",
        source,
    })?;

    // pg_dump's archive formats record every object's owner even with --no-owner.
    strip_owner_names(&target.join("toc.dat"))?;
    // Which tables have their data in the dump, from its table of contents.
    let with_data = tables_with_data(&target).await?;
    let mut row_counts = BTreeMap::new();
    for (schema, table) in &tables {
        let key = format!("{schema}.{table}");
        let count = if with_data.contains(&(schema.clone(), table.clone())) {
            let sql = format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(schema),
                quote_ident(table)
            );
            client
                .query_one(&sql, &[])
                .await
                .map_err(source_error("count rows"))?
                .get::<_, i64>(0)
        } else {
            0
        };
        row_counts.insert(key, count);
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(source_error("end the transaction"))?;
    Ok(DumpInfo {
        row_counts,
        bytes: folder_size(&target)?,
    })
}

/// `(schema, table)` of every `TABLE DATA` entry of a directory-format dump.
async fn tables_with_data(dump: &Path) -> Result<BTreeSet<(String, String)>, DumpError> {
    let output = tokio::process::Command::new("pg_restore")
        .arg("--list")
        .arg(dump)
        .output()
        .await
        .map_err(io("run `pg_restore --list` on", dump))?;
    if !output.status.success() {
        return Err(DumpError::Source {
            action: "list the dump",
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(parse_table_data(&String::from_utf8_lossy(&output.stdout)))
}

/// Parse `pg_restore --list` lines such as `3339; 0 16829 TABLE DATA keep t owner`.
/// Names containing spaces are ambiguous in that listing; they are split at the first space.
fn parse_table_data(listing: &str) -> BTreeSet<(String, String)> {
    listing
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|line| {
            let rest = line.split_once(" TABLE DATA ")?.1;
            let mut words = rest.split(' ');
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

/// Blank the owner name of every entry of a directory-format dump's `toc.dat`, so that no
/// production role name is stored (pg_restore then sets no owner even without --no-owner), and
/// fix its creation time. Returns how many names were blanked.
fn strip_owner_names(toc: &Path) -> Result<usize, DumpError> {
    let bytes = std::fs::read(toc).map_err(io("read", toc))?;
    let (rewritten, count) = blank_owners(&bytes).map_err(|why| DumpError::Source {
        action: "rewrite the dump's table of contents",
        message: why,
    })?;
    let temporary = toc.with_extension("dat.vmbuild");
    std::fs::write(&temporary, rewritten).map_err(io("write", &temporary))?;
    std::fs::rename(&temporary, toc).map_err(io("replace", toc))?;
    Ok(count)
}

/// A reader of pg_dump's archive header and table of contents (`pg_backup_archiver.c`): an
/// int is a sign byte then `int_size` little-endian bytes; a string is an int length (-1 for
/// none) then its bytes.
struct TocReader<'a> {
    buf: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl TocReader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.pos).ok_or("truncated")?;
        self.pos += 1;
        Ok(b)
    }

    fn int(&mut self) -> Result<i64, String> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for i in 0..self.int_size {
            value |= i64::from(self.byte()?) << (8 * i);
        }
        Ok(if negative { -value } else { value })
    }

    /// A string's byte range, `None` for a null string.
    fn string(&mut self) -> Result<Option<std::ops::Range<usize>>, String> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let start = self.pos;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| "bad length")?)
            .filter(|end| *end <= self.buf.len())
            .ok_or("truncated string")?;
        self.pos = end;
        Ok(Some(start..end))
    }
}

/// `toc` with every entry's owner replaced by an empty string and a fixed creation time, and
/// how many owners were replaced.
fn blank_owners(toc: &[u8]) -> Result<(Vec<u8>, usize), String> {
    if toc.len() < 11 || &toc[..5] != b"PGDMP" {
        return Err("not a pg_dump archive".into());
    }
    let (major, minor) = (toc[5], toc[6]);
    if major != 1 || !(12..=16).contains(&minor) {
        return Err(format!("archive version {major}.{minor} is not supported"));
    }
    let mut r = TocReader {
        buf: toc,
        pos: 8,
        int_size: usize::from(toc[8]),
    };
    r.pos = 11; // int size, offset size, format
    if minor >= 15 {
        r.byte()?; // compression algorithm
    } else {
        r.int()?; // compression level
    }
    // The creation time (struct tm: sec, min, hour, mday, mon, year, isdst), set to a fixed
    // date so that dumps of unchanged data are the same bytes.
    let mut created = Vec::new();
    for _ in 0..7 {
        let start = r.pos;
        r.int()?;
        created.push(start..r.pos);
    }
    for _ in 0..3 {
        r.string()?; // database name, server and pg_dump versions
    }
    let entries = r.int()?;
    let mut owners = Vec::new();
    for _ in 0..entries {
        r.int()?; // dump id
        r.int()?; // has data
        for _ in 0..4 {
            r.string()?; // table oid, oid, tag, desc
        }
        r.int()?; // section
        for _ in 0..5 {
            r.string()?; // defn, drop, copy, namespace, tablespace
        }
        if minor >= 14 {
            r.string()?; // table access method
        }
        if minor >= 16 {
            r.int()?; // relkind
        }
        let start = r.pos;
        if r.string()?.is_some() {
            owners.push(start..r.pos);
        }
        r.string()?; // "with oids"
        while r.string()?.is_some() {} // dependencies, up to a null string
        r.string()?; // the entry's data file (directory format)
    }
    if r.pos != toc.len() {
        return Err("unexpected bytes after the table of contents".into());
    }
    let int = |value: u8| {
        let mut bytes = vec![0u8; 1 + r.int_size];
        bytes[1] = value;
        bytes
    };
    // 2000-01-01 00:00:00, not daylight saving time.
    let fixed_date = [0, 0, 0, 1, 0, 100, 0].map(int);
    let mut replacements: Vec<(std::ops::Range<usize>, Vec<u8>)> = created
        .into_iter()
        .zip(fixed_date)
        .chain(owners.iter().map(|range| (range.clone(), int(0))))
        .collect();
    replacements.sort_by_key(|(range, _)| range.start);
    let mut out = Vec::with_capacity(toc.len());
    let mut last = 0;
    for (range, bytes) in &replacements {
        out.extend_from_slice(&toc[last..range.start]);
        out.extend_from_slice(bytes);
        last = range.end;
    }
    out.extend_from_slice(&toc[last..]);
    Ok((out, owners.len()))
}

/// Total size of the regular files under `dir`.
pub(super) fn folder_size(dir: &Path) -> Result<u64, DumpError> {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.map_err(|e| DumpError::Io {
            action: "walk",
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_file() {
            total += entry
                .metadata()
                .map_err(|e| DumpError::Io {
                    action: "stat",
                    path: entry.path().to_path_buf(),
                    source: e.into(),
                })?
                .len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_quoting() {
        assert_eq!(literal_pattern("keep"), "\"keep\"");
        assert_eq!(literal_pattern("We\"ird.*"), "\"We\"\"ird.*\"");
        assert_eq!(pgpass_field("a:b\\c"), "a\\:b\\\\c");
    }

    /// A one-entry directory-format TOC of archive version 1.14, as pg_dump 15 writes it.
    fn synthetic_toc(owner: &str) -> Vec<u8> {
        fn int(out: &mut Vec<u8>, v: i64) {
            out.push(u8::from(v < 0));
            out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn string(out: &mut Vec<u8>, s: Option<&str>) {
            match s {
                Some(s) => {
                    int(out, s.len() as i64);
                    out.extend_from_slice(s.as_bytes());
                }
                None => int(out, -1),
            }
        }
        let mut t = b"PGDMP".to_vec();
        t.extend_from_slice(&[1, 14, 0, 4, 8, 3]);
        int(&mut t, -1);
        for v in [1, 2, 3, 4, 5, 126, 0] {
            int(&mut t, v);
        }
        for s in ["src", "15.18", "15.18"] {
            string(&mut t, Some(s));
        }
        int(&mut t, 1);
        int(&mut t, 3339);
        int(&mut t, 1);
        for s in ["0", "16829", "t", "TABLE DATA"] {
            string(&mut t, Some(s));
        }
        int(&mut t, 3);
        for s in [
            Some(""),
            Some(""),
            Some("COPY keep.t (i) FROM stdin;\n"),
            Some("keep"),
            None,
        ] {
            string(&mut t, s);
        }
        string(&mut t, Some(""));
        string(&mut t, Some(owner));
        string(&mut t, Some("false"));
        string(&mut t, Some("215"));
        string(&mut t, None);
        string(&mut t, Some("3339.dat.gz"));
        t
    }

    #[test]
    fn owner_names_are_blanked() {
        let (out, count) = blank_owners(&synthetic_toc("prod_owner")).expect("parses");
        assert_eq!(count, 1);
        let (without_owner, _) = blank_owners(&synthetic_toc("")).expect("parses");
        assert_eq!(out, without_owner);
        assert!(!out.windows(10).any(|w| w == b"prod_owner"));
        // The creation time (after the 11-byte header and the compression int), fixed at
        // 2000-01-01 00:00:00: seven ints of a sign byte and four bytes.
        let date: Vec<u8> = [0u8, 0, 0, 1, 0, 100, 0]
            .iter()
            .flat_map(|v| [0, *v, 0, 0, 0])
            .collect();
        assert_eq!(&out[16..51], date.as_slice());
        assert_eq!(out.len(), synthetic_toc("").len());
        let mut trailing = synthetic_toc("x");
        trailing.push(0);
        assert!(blank_owners(&trailing).is_err());
        assert!(blank_owners(b"PGDMP").is_err());
    }

    #[test]
    fn table_data_entries() {
        let listing = ";\n; Archive created\n6; 2615 16828 SCHEMA - keep o\n\
                       215; 1259 16829 TABLE keep t o\n3339; 0 16829 TABLE DATA keep t o\n";
        let parsed = parse_table_data(listing);
        assert_eq!(parsed.len(), 1);
        assert!(parsed.contains(&("keep".to_string(), "t".to_string())));
    }

    #[test]
    fn url_goes_to_the_environment() {
        let url = Secret::new("t", "postgresql://u:p%3Aw@db.example:6543/src");
        let (env, password) = libpq_env(&url).expect("parses");
        assert_eq!(env["PGHOST"], "db.example");
        assert_eq!(env["PGPORT"], "6543");
        assert_eq!(env["PGUSER"], "u");
        assert_eq!(env["PGDATABASE"], "src");
        assert_eq!(password.as_deref(), Some("p:w"));
    }
}

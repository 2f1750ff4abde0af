//! Against a real Oracle: set `VMBUILD_TEST_ORACLE_URL` to a source string
//! (`oracle://USER:PASSWORD@HOST:1521/SERVICE`) of a user who may create tables in its own
//! schema and has EXECUTE on DBMS_FLASHBACK, DBMS_LOCK (and, for the Data Pump test,
//! DBMS_DATAPUMP with READ, WRITE on `VMBUILD_TEST_ORACLE_DIRECTORY`, default `DATA_PUMP_DIR`),
//! with Oracle's client libraries installed. Without that variable every test prints a note
//! and returns: nothing here has been run where vmbuild is developed (no Oracle runs there).
//!
//! The tests work in the connecting user's own schema, on tables named `VMBUILD_T<random>_*`,
//! dropped afterwards; the tuning-manager test runs only where `apidb.InstanceMetaInfo` exists.

use std::time::{Duration, Instant};

use super::convert::{convert, pg_name};
use super::export::{export, ExportSpec};
use super::session::{self, Session};
use crate::recipe::model::{DurationText, LockBlock, Schemas};
use crate::recipe::Secret;
use crate::steps::database::load::tests::test_ctx;
use crate::steps::database::source::SourceError;

fn live_url() -> Option<Secret> {
    match std::env::var("VMBUILD_TEST_ORACLE_URL") {
        Ok(url) => Some(Secret::new("env(\"VMBUILD_TEST_ORACLE_URL\")", url)),
        Err(_) => {
            eprintln!("note: skipped, no Oracle: set VMBUILD_TEST_ORACLE_URL to run it");
            None
        }
    }
}

/// Tables of one test in the user's own schema, dropped at the end.
struct Scratch {
    session: Session,
    owner: String,
    prefix: String,
    tables: Vec<String>,
}

impl Scratch {
    fn new(url: &Secret) -> Scratch {
        let session = Session::connect(url).expect("connect");
        let owner: String = session
            .connection()
            .query_row_as("SELECT USER FROM DUAL", &[])
            .expect("user");
        Scratch {
            session,
            owner,
            prefix: format!("VMBUILD_T{:06X}", rand::random::<u32>() & 0xff_ffff),
            tables: Vec::new(),
        }
    }

    fn sql(&self, sql: &str) {
        self.session
            .connection()
            .execute(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        self.session.connection().commit().expect("commit");
    }

    /// Create `<prefix>_<name>` with `columns`; returns its name.
    fn table(&mut self, name: &str, columns: &str) -> String {
        let table = format!("{}_{name}", self.prefix);
        self.sql(&format!("CREATE TABLE {table} ({columns})"));
        self.tables.push(table.clone());
        table
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for table in self.tables.iter().rev() {
            let _ = self.session.connection().execute(
                &format!("DROP TABLE {table} CASCADE CONSTRAINTS PURGE"),
                &[],
            );
        }
    }
}

#[test]
fn live_allowlist_from_a_registry_and_a_fingerprint() {
    let Some(url) = live_url() else { return };
    let mut scratch = Scratch::new(&url);
    let registry = scratch.table("DATABASEINFO", "name VARCHAR2(128) NOT NULL");
    // The user's own schema registered in mixed case, and one that does not exist.
    let mixed: String = scratch
        .owner
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect();
    scratch.sql(&format!(
        "INSERT INTO {registry} (name) SELECT '{mixed}' FROM DUAL UNION ALL SELECT 'NoSuchSchemaX' FROM DUAL"
    ));
    let schemas = Schemas::Registry {
        registry: format!("{}.{registry}", scratch.owner.to_lowercase()),
        column: "name".into(),
    };
    let allow = scratch.session.allowlist(&schemas, &[]).expect("allowlist");
    assert_eq!(allow.schemas, [scratch.owner.clone()]);
    assert_eq!(allow.missing, ["NoSuchSchemaX"]);
    let allow = scratch
        .session
        .allowlist(&schemas, std::slice::from_ref(&mixed))
        .expect("allowlist");
    assert!(allow.schemas.is_empty() && allow.excluded.len() == 1);

    let missing = Schemas::Registry {
        registry: format!("{}.no_such_registry_x", scratch.owner),
        column: "name".into(),
    };
    let err = scratch.session.allowlist(&missing, &[]).unwrap_err();
    assert!(matches!(err, SourceError::MissingRegistry { .. }), "{err}");

    let fingerprint = scratch
        .session
        .fingerprint(Some(&format!(
            "SELECT name FROM {registry} ORDER BY name -- release"
        )))
        .expect("fingerprint");
    assert_eq!(fingerprint, Some(format!("(NoSuchSchemaX)\n({mixed})")));
    // Read-only: a write in the fingerprint fails.
    let err = scratch
        .session
        .fingerprint(Some(&format!("SELECT COUNT(*) FROM {registry} FOR UPDATE")))
        .unwrap_err();
    assert!(matches!(err, SourceError::Fingerprint { .. }), "{err}");
}

#[test]
fn live_bad_password_is_an_authentication_error_without_the_password() {
    let Some(url) = live_url() else { return };
    let parsed = super::connect::parse(url.reveal()).expect("VMBUILD_TEST_ORACLE_URL parses");
    let wrong = "Not-The-Password-8812";
    let bad = Secret::new(
        "env(\"X\")",
        format!("{}/\"{wrong}\"@{}", parsed.user, parsed.connect),
    );
    let err = Session::connect(&bad).err().expect("a wrong password");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, SourceError::Authentication { .. }), "{text}");
    assert!(!text.contains(wrong) && !text.contains(&parsed.connect));
}

fn named_lock(wait: u64) -> LockBlock {
    LockBlock {
        name: format!("vmbuild-live-test-{}", std::process::id()),
        wait: Some(DurationText(wait)),
    }
}

#[test]
fn live_named_lock_waits_names_the_holder_or_says_it_cannot_and_releases() {
    let Some(url) = live_url() else { return };
    let never = || false;
    let first = session::lock(
        Session::connect(&url).expect("connect"),
        &named_lock(5),
        "vmbuild first",
        &never,
    )
    .expect("the first takes it");
    let started = Instant::now();
    let err = session::lock(
        Session::connect(&url).expect("connect"),
        &named_lock(2),
        "vmbuild second",
        &never,
    )
    .err()
    .expect("the second waits, then gives up");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(matches!(err, SourceError::LockTimeout { .. }), "{text}");
    assert!(
        text.contains("held by session ") || text.contains("cannot name"),
        "{text}"
    );
    first.release().expect("release");
    let second = session::lock(
        Session::connect(&url).expect("connect"),
        &named_lock(5),
        "vmbuild second",
        &never,
    )
    .expect("free again");
    drop(second); // Released by the guard.
    session::lock(
        Session::connect(&url).expect("connect"),
        &named_lock(0),
        "vmbuild third",
        &never,
    )
    .expect("released on drop")
    .release()
    .expect("release");
}

#[test]
fn live_tuning_manager_claim_where_the_table_exists() {
    let Some(url) = live_url() else { return };
    let session = Session::connect(&url).expect("connect");
    if session
        .connection()
        .query_row_as::<i64>("SELECT COUNT(*) FROM apidb.InstanceMetaInfo", &[])
        .is_err()
    {
        eprintln!("note: skipped, apidb.InstanceMetaInfo is not readable by this user");
        return;
    }
    let never = || false;
    let tuning = LockBlock {
        name: "tuning_manager".into(),
        wait: Some(DurationText(2)),
    };
    let held = session::lock(session, &tuning, "vmbuild live test", &never).expect("claim");
    let other = Session::connect(&url).expect("connect");
    let (who,): (String,) = other
        .connection()
        .query_row_as(
            "SELECT current_updater FROM apidb.InstanceMetaInfo WHERE ROWNUM = 1",
            &[],
        )
        .expect("read the claim");
    assert_eq!(who, "vmbuild live test");
    let err = session::lock(other, &tuning, "someone else", &never)
        .err()
        .expect("held");
    assert!(
        err.to_string().contains("held by vmbuild live test since"),
        "{err}"
    );
    held.release().expect("release");
}

#[test]
fn live_rows_are_converted_as_of_one_scn_and_load_into_postgresql() {
    let Some(url) = live_url() else { return };
    let mut scratch = Scratch::new(&url);
    let parent = scratch.table(
        "TAXON",
        "taxon_id NUMBER(10) PRIMARY KEY, name VARCHAR2(255) NOT NULL, created DATE DEFAULT SYSDATE",
    );
    let child = scratch.table(
        "GENE",
        &format!(
            "gene_id NUMBER(12) PRIMARY KEY, taxon_id NUMBER(10) REFERENCES {parent}, \
             product VARCHAR2(4000), notes CLOB, seq BLOB, score BINARY_DOUBLE, \
             ratio NUMBER(5,4), stamp TIMESTAMP(6), stamp_tz TIMESTAMP WITH TIME ZONE"
        ),
    );
    scratch.sql(&format!(
        "INSERT INTO {parent} (taxon_id, name) VALUES (1, 'Toxoplasma gondii')"
    ));
    scratch.sql(&format!(
        "INSERT INTO {child} SELECT level, 1, \
           CASE WHEN MOD(level, 10) = 0 THEN '' ELSE 'protein ' || level || CHR(9) || 'x\\y' END, \
           CASE WHEN MOD(level, 7) = 0 THEN EMPTY_CLOB() ELSE TO_CLOB('line one' || CHR(10) || 'line two') END, \
           HEXTORAW('00FF10'), level / 3, 0.5, SYSTIMESTAMP, SYSTIMESTAMP \
         FROM DUAL CONNECT BY level <= 500"
    ));
    let scn = scratch.session.current_scn().expect("scn");
    // Rows committed after the SCN are in neither the rows nor the counts.
    scratch.sql(&format!(
        "INSERT INTO {child} (gene_id, taxon_id) SELECT 1000 + level, 1 FROM DUAL CONNECT BY level <= 50"
    ));

    let mut catalog = scratch
        .session
        .catalog(&[scratch.owner.clone()], &[])
        .expect("catalog");
    catalog.schemas[0]
        .tables
        .retain(|t| t.name.starts_with(&scratch.prefix));
    catalog.schemas[0].views.clear();
    catalog.schemas[0].sequences.clear();
    let gene = catalog.schemas[0]
        .tables
        .iter()
        .find(|t| t.name == child)
        .expect("the gene table");
    assert_eq!(gene.columns.len(), 9);
    let stopped = || false;
    let mut out = Vec::new();
    let converted = convert(
        &catalog,
        &mut scratch.session.rows_at(scn, &stopped),
        &mut out,
    )
    .expect("converts");
    let key = |t: &str| format!("{}.{}", pg_name(&scratch.owner), pg_name(t));
    assert_eq!(converted.rows[&key(&child)], 500);
    assert_eq!(
        scratch
            .session
            .count(&scratch.owner, &child, scn)
            .expect("count"),
        500
    );
    let sql = String::from_utf8(out).expect("utf-8");
    assert!(sql.contains("\"seq\" bytea"), "{sql}");
    assert!(
        sql.contains("protein 1\\tx\\\\y"),
        "tab and backslash escaped"
    );
    assert!(
        sql.contains("FOREIGN KEY (\"taxon_id\") REFERENCES"),
        "{sql}"
    );

    let Ok(pg) = std::env::var("VMBUILD_TEST_PG_URL") else {
        eprintln!("note: not loaded into PostgreSQL: VMBUILD_TEST_PG_URL is not set");
        return;
    };
    let db = format!("vmbuild_oracle_live_{}", std::process::id());
    let (prefix, _) = pg.rsplit_once('/').expect("a URL");
    let psql = |url: &str, args: &[&str]| {
        std::process::Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url])
            .args(args)
            .output()
            .expect("psql")
    };
    psql(&pg, &["-c", &format!("DROP DATABASE IF EXISTS {db}")]);
    assert!(psql(&pg, &["-c", &format!("CREATE DATABASE {db}")])
        .status
        .success());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dump.sql"), &sql).expect("write");
    let url = format!("{prefix}/{db}");
    let loaded = psql(
        &url,
        &[
            "--single-transaction",
            "-f",
            &dir.path().join("dump.sql").display().to_string(),
        ],
    );
    let counted = psql(
        &url,
        &[
            "-c",
            &format!(
                "SELECT count(*), count(product), count(*) FILTER (WHERE notes = '') FROM {}",
                key(&child)
                    .split('.')
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(".")
            ),
        ],
    );
    psql(
        &pg,
        &["-c", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")],
    );
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    // '' is NULL in Oracle: 50 of the 500 products; EMPTY_CLOB() is the empty string: 71.
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout).trim(),
        "500|450|71"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_export_with_data_pump_copies_the_dump_file_out() {
    let Some(url) = live_url() else { return };
    let directory =
        std::env::var("VMBUILD_TEST_ORACLE_DIRECTORY").unwrap_or_else(|_| "DATA_PUMP_DIR".into());
    let mut scratch = Scratch::new(&url);
    let table = scratch.table("ROWS", "id NUMBER(10) PRIMARY KEY, v VARCHAR2(20)");
    scratch.sql(&format!(
        "INSERT INTO {table} SELECT level, 'v' || level FROM DUAL CONNECT BY level <= 100"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = test_ctx(dir.path());
    std::fs::create_dir_all(&ctx.out).expect("out");
    let exported = export(
        ExportSpec {
            url: url.clone(),
            schemas: vec![scratch.owner.clone()],
            exclude_table_data: vec![],
            lock: Some(named_lock(30)),
            datapump_directory: Some(directory),
            file_name: "live".into(),
            holder: "vmbuild live test".into(),
        },
        &ctx,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(&ctx.log).unwrap_or_default()
        )
    });
    let key = format!("{}.{}", pg_name(&scratch.owner), pg_name(&table));
    assert_eq!(exported.rows[&key], 100);
    let dump = std::fs::metadata(ctx.out.join("datapump/live.dmp")).expect("the dump file");
    assert!(dump.len() > 4096, "{} bytes", dump.len());
    let log = std::fs::read_to_string(ctx.out.join("datapump/live.log")).expect("the log");
    assert!(log.contains("successfully completed"), "{log}");
    assert!(ctx.out.join("dump.sql").is_file());
}

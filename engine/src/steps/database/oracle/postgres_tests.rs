//! The conversion proven against a real PostgreSQL: the synthetic GUS-shaped catalog
//! (`convert::fixture::gus`) is converted to `dump.sql`, which is run by `psql` into the host's
//! PostgreSQL (`VMBUILD_TEST_PG_URL`), and loaded by the real load step's code into the test
//! template's PostgreSQL (`VMBUILD_TEST_PG=1`, `VMBUILD_TEST_PG_ROOT`, as root). Skipped, with a
//! note, where those are not set.

use std::path::Path;
use std::process::Command;

use super::convert::{convert, Converted};
use super::fixture;
use crate::recipe::Secret;
use crate::steps::database::load::tests::{
    nothing_mounted_under, query_loaded, template_root, test_ctx,
};
use crate::steps::database::load::{count_differences, load, Content, LoadDatabase, LoadSpec};

/// Convert the fixture into `dir/dump.sql`.
fn write_dump(dir: &Path) -> Converted {
    let (catalog, mut rows) = fixture::gus();
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(dir.join("dump.sql")).expect("create dump.sql"),
    );
    let converted = convert(&catalog, &mut rows, &mut file).expect("converts");
    std::io::Write::flush(&mut file).expect("flush");
    converted
}

/// A database of its own on the host's PostgreSQL, dropped at the end.
struct HostDb {
    admin: String,
    url: String,
    name: String,
}

impl HostDb {
    fn new() -> Option<HostDb> {
        let Ok(admin) = std::env::var("VMBUILD_TEST_PG_URL") else {
            eprintln!("note: skipped, set VMBUILD_TEST_PG_URL to a PostgreSQL superuser URL");
            return None;
        };
        let name = format!("vmbuild_oracle_convert_{}", std::process::id());
        let (prefix, _) = admin.rsplit_once('/').expect("a URL with a database");
        let db = HostDb {
            url: format!("{prefix}/{name}"),
            admin,
            name,
        };
        db.admin_sql(&format!(
            "DROP DATABASE IF EXISTS {0} WITH (FORCE); CREATE DATABASE {0};",
            db.name
        ));
        Some(db)
    }

    fn admin_sql(&self, sql: &str) {
        for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
            let out = Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    &self.admin,
                    "-c",
                    statement,
                ])
                .output()
                .expect("psql");
            assert!(
                out.status.success(),
                "{statement}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Run `sql` in the database: (success, stdout, stderr).
    fn psql(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &self.url])
            .args(args)
            .output()
            .expect("psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn query(&self, sql: &str) -> String {
        let (ok, out, err) = self.psql(&["-c", sql]);
        assert!(ok, "{sql}: {err}");
        out
    }
}

impl Drop for HostDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", &self.admin, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// Row counts of every table of the converted schemas, as the load step counts them.
const COUNTS: &str = "SELECT string_agg(n.nspname || '.' || c.relname || '=' || \
    (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text, \
    ',' ORDER BY n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind = 'r' AND n.nspname IN ('core', 'sres', 'dots', 'apidb', 'apidbtuning')";

fn expected_counts(converted: &Converted) -> String {
    converted
        .rows
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn the_converted_gus_schemas_load_into_postgresql_with_types_keys_views_and_rows() {
    let Some(db) = HostDb::new() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let converted = write_dump(dir.path());
    let dump = dir.path().join("dump.sql");
    let started = std::time::Instant::now();
    let (ok, _, stderr) = db.psql(&["--single-transaction", "-f", &dump.display().to_string()]);
    eprintln!("loaded in {:?}:\n{stderr}", started.elapsed());
    assert!(ok, "dump.sql does not load: {stderr}");
    // The views and checks PostgreSQL takes are made; the one it refuses is named.
    assert!(
        stderr.contains("WARNING:  vmbuild: view apidbtuning.broken left out: column \"no_such_column\" does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("WARNING").count(), 1, "{stderr}");

    // Rows: every table, as many as written.
    assert_eq!(db.query(COUNTS), expected_counts(&converted));

    // Types.
    let types = db.query(
        "SELECT string_agg(c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) \
             || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, '; ' ORDER BY c.relname, a.attnum) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('core', 'apidb') AND c.relkind = 'r' AND a.attnum > 0",
    );
    for expected in [
        "databaseinfo.database_info_id bigint not null",
        "databaseinfo.name character varying(30) not null",
        "databaseinfo.modification_date timestamp(0) without time zone not null",
        "algorithm.description text",
        "oddities.id integer not null",
        "oddities.user character varying(30)",
        "oddities.order integer",
        "oddities.double_value double precision",
        "oddities.float_value double precision",
        "oddities.wide numeric(38,0)",
        "oddities.plain_number numeric",
        "oddities.stamp timestamp(6) without time zone",
        "oddities.stamp_tz timestamp(6) with time zone",
        "oddities.raw_id bytea",
        "oddities.name_n character varying(20)",
        "oddities.span interval day to second(6)",
        "oddities.age interval year to month",
        "oddities.note character varying(10)",
    ] {
        assert!(types.contains(expected), "no `{expected}` in {types}");
    }
    assert!(
        !types.contains("oddities.doc"),
        "the XMLTYPE column is left out"
    );
    assert_eq!(
        db.query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'dots.nasequence'::regclass AND attname = 'gc_content'"),
        "numeric(5,4)"
    );

    // Values, exactly.
    db.query("SET timezone = 'UTC'");
    for check in [
        "SELECT description = E'load\\tannotation\\nfrom GFF3 \\\\ EMBL' FROM core.algorithm WHERE algorithm_id = 1",
        "SELECT description = '' FROM core.algorithm WHERE algorithm_id = 2",
        "SELECT description IS NULL FROM core.algorithm WHERE algorithm_id = 3",
        "SELECT description IS NULL FROM core.databaseinfo WHERE name = 'Core'",
        "SELECT rank IS NULL FROM sres.taxon WHERE taxon_id = 2",
        "SELECT bit = '\\x0100ff'::bytea AND gc_content = 0.5123 FROM dots.nasequence WHERE na_sequence_id = 1",
        "SELECT length(sequence) = 56 FROM dots.nasequence WHERE na_sequence_id = 14",
        "SELECT \"user\" = 'o''brien' AND \"order\" = -12 FROM apidb.oddities WHERE id = 1",
        "SELECT double_value = 0.1::float8 AND float_value = 3.141592653589793::float8 FROM apidb.oddities WHERE id = 1",
        "SELECT wide = 12345678901234567890123456789012345678 AND plain_number = -1e-130 FROM apidb.oddities WHERE id = 1",
        "SELECT double_value = 'Infinity'::float8 FROM apidb.oddities WHERE id = 2",
        "SELECT stamp = '1999-12-31 13:14:15.999999' FROM apidb.oddities WHERE id = 1",
        "SELECT stamp_tz = '2021-06-01 10:00:00+00' FROM apidb.oddities WHERE id = 1",
        "SELECT stamp = '4712-01-01 13:14:15 BC' FROM apidb.oddities WHERE id = 2",
        "SELECT raw_id = '\\x000102030405060708090a0b0c0d0e0f'::bytea AND name_n = 'Grüße ✓' FROM apidb.oddities WHERE id = 1",
        "SELECT span = '1 day 02:03:04.5'::interval AND age = '-1 year -6 mons'::interval FROM apidb.oddities WHERE id = 1",
        "SELECT modification_date = '2024-01-02 13:14:15' FROM core.databaseinfo WHERE name = 'ApiDB'",
        "SELECT release = '68' AND current_updater IS NULL FROM apidb.instancemetainfo",
    ] {
        assert_eq!(db.query(check), "t", "{check}");
    }

    // Keys, indexes, views, sequences and defaults.
    assert_eq!(
        db.query(
            "SELECT string_agg(conname || ':' || contype::text, ',' ORDER BY conname) FROM pg_constraint c \
             JOIN pg_namespace n ON n.oid = c.connamespace \
             WHERE n.nspname IN ('core', 'sres', 'dots', 'apidb', 'apidbtuning') AND contype <> 'n'"
        ),
        "algorithm_pk:p,databaseinfo_pk:p,databaseinfo_uq:u,geneattributes1234_pk:p,nasequence_ck_len:c,nasequence_fk_taxon:f,nasequence_pk:p,oddities_pk:p,taxon_pk:p"
    );
    assert_eq!(
        db.query(
            "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes \
             WHERE schemaname = 'dots' OR schemaname = 'sres'"
        ),
        "nasequence_2,nasequence_len_desc,nasequence_pk,nasequence_taxon_bix,nasequence_upper_ix,taxon_ncbi_ix,taxon_pk"
    );
    assert!(db
        .query("SELECT indexdef FROM pg_indexes WHERE indexname = 'nasequence_upper_ix'")
        .contains("(upper((source_id)::text))"));
    for (sql, expected) in [
        ("SELECT count(*) FROM apidbtuning.geneattributes", "3000"),
        ("SELECT product FROM apidbtuning.gene_products WHERE source_id = 'TGME49_000010'", "unknown"),
        ("SELECT nextval('core.algorithm_sq')", "21"),
        (
            "INSERT INTO core.databaseinfo (database_info_id, name) VALUES (6, 'Genes') RETURNING modification_date IS NOT NULL",
            "t",
        ),
        ("INSERT INTO apidb.oddities (id) VALUES (3) RETURNING note", "n/a"),
    ] {
        let got = db.query(sql);
        assert_eq!(got.lines().next().unwrap_or(""), expected, "{sql}");
    }
    assert_eq!(
        db.query("SELECT count(*) FROM pg_views WHERE schemaname IN ('apidb', 'apidbtuning')"),
        "2",
        "geneattributes and gene_products; not the (+) join nor the broken one"
    );
    // The keys hold: a foreign key, a primary key, a unique index, a check.
    for bad in [
        "INSERT INTO dots.nasequence (na_sequence_id, source_id, taxon_id) VALUES (99, 'x', 999)",
        "INSERT INTO sres.taxon VALUES (1, 1, 'dup', NULL)",
        "INSERT INTO sres.taxon VALUES (3, 5811, 'same ncbi id', NULL)",
        "INSERT INTO dots.nasequence (na_sequence_id, source_id, taxon_id, length) VALUES (98, 'y', 2, -1)",
    ] {
        let (ok, _, err) = db.psql(&["-c", bad]);
        assert!(!ok, "accepted: {bad}");
        assert!(err.contains("violates"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_converted_dump_loads_through_the_load_step_into_the_template() {
    let Some(template) = template_root() else {
        return;
    };
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let converted = write_dump(dir.path());
    let ctx = test_ctx(dir.path());
    let layer = dir.path().join("layer");
    std::fs::create_dir(&layer).expect("mkdir");
    let password = Secret::new("t", "app-Pass-3141");
    let dump = dir.path().join("dump.sql");
    let started = std::time::Instant::now();
    let loaded = load(
        &LoadSpec {
            template_root: &template,
            databases: &[LoadDatabase {
                name: "toxodb",
                role: "toxodb",
                password: &password,
                content: Content::Sql(&dump),
            }],
            jobs: 1,
        },
        &layer,
        &ctx,
    )
    .await
    .expect("load");
    eprintln!("load: {:?}", started.elapsed());
    // What the load step compares with the dump's report: equal.
    assert_eq!(
        count_differences(&converted.rows, &loaded.databases["toxodb"]),
        Vec::<String>::new()
    );
    nothing_mounted_under(&[dir.path(), &template]);
    let log = std::fs::read_to_string(&ctx.log).unwrap_or_default();
    assert!(
        log.contains("vmbuild: view apidbtuning.broken left out"),
        "the refused view is named in the load's log: {log}"
    );
    let owners = query_loaded(
        &layer,
        &template,
        "toxodb",
        "SELECT string_agg(DISTINCT tableowner, ',') || ' ' || \
           (SELECT string_agg(DISTINCT viewowner, ',') FROM pg_views WHERE schemaname = 'apidbtuning') || ' ' || \
           (SELECT count(*) FROM apidbtuning.gene_products) || ' ' || \
           (SELECT description = '' FROM core.algorithm WHERE algorithm_id = 2) \
         FROM pg_tables WHERE schemaname IN ('core', 'apidbtuning')",
    );
    assert_eq!(owners, "toxodb toxodb 3000 true");
}

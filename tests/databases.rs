//! Database cloning through the binary, against the real PostgreSQL that `dev/test` starts
//! (`VMBUILD_TEST_PG_URL`, as root): the plan shows the allowlist, the dump holds only it and
//! nothing of production's roles, users or passwords, the fingerprint keeps an unchanged source
//! cached, the tuning manager's lock is honoured, and a bad source leaves nothing in the store.
//! The dump runs alone with `apply --target`; the VM with the loaded databases is in `e2e`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::Project;

/// The production fixture's secrets and private data, which must appear in no clone.
pub const NEVER_CLONED: [&str; 7] = [
    "gus-w-production-secret",
    "gus-r-production-secret",
    "gus_w",
    "staff_jdoe",
    "userlogins5",
    "fixture.user",
    "scratch_blast_hits",
];

/// A production database made by `examples/production/fixture.sh`, dropped at the end.
pub struct Fixture {
    pub db: String,
    /// A URL for the source, with the test role's password.
    pub url: String,
}

impl Fixture {
    /// `None` (and a note) unless the test PostgreSQL is there.
    pub fn new(name: &str) -> Option<Fixture> {
        let base = match std::env::var("VMBUILD_TEST_PG_URL") {
            Ok(url) => url,
            Err(_) => {
                eprintln!("skipped: VMBUILD_TEST_PG_URL is not set (dev/test sets it)");
                return None;
            }
        };
        let db = format!("vmbuild_{name}_{}", std::process::id());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/production/fixture.sh"
        );
        let output = Command::new("runuser")
            .args([
                "-u", "postgres", "--", "bash", script, "--size", "small", "--db", &db,
            ])
            .current_dir("/")
            .output()
            .expect("run the fixture");
        assert!(
            output.status.success(),
            "fixture: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
        Some(Fixture {
            url: format!("{prefix}/{db}"),
            db,
        })
    }

    /// Run SQL in the fixture as the postgres superuser; the output, unaligned.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.db, sql)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db),
        );
    }
}

/// The test role's password, from `VMBUILD_TEST_PG_URL`.
fn test_password() -> String {
    let url = std::env::var("VMBUILD_TEST_PG_URL").unwrap_or_default();
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, password)| password.to_string())
        .unwrap_or_default();
    assert!(
        password.len() >= 8,
        "the test role needs a distinctive password"
    );
    password
}

fn psql(db: &str, sql: &str) -> String {
    let output = Command::new("runuser")
        .args([
            "-u", "postgres", "--", "psql", "-X", "-At", "-d", db, "-c", sql,
        ])
        .current_dir("/")
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A recipe cloning the fixture (`source = env("TOXO_SOURCE_URL")`) into a template.
pub fn recipe(database_extra: &str) -> String {
    format!(
        r#"
template "db" {{
  debootstrap {{
    suite    = "bookworm"
    packages = ["postgresql"]
  }}
}}

database "toxo" {{
  engine          = "postgres"
  source          = env("TOXO_SOURCE_URL")
  schemas         = databaseinfo("core.databaseinfo")
  exclude_schemas = ["staff_*", "workflow"]
  into            = "toxodb"
{database_extra}
}}
"#
    )
}

fn run_with(project: &Project, url: &str, args: &[&str]) -> crate::support::Run {
    let output = project
        .command(args)
        .env("TOXO_SOURCE_URL", url)
        .output()
        .expect("run vmbuild");
    let run = crate::support::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for secret in [test_password().as_str(), url] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "the source's password or URL in {args:?}:\n{}",
            run.transcript()
        );
    }
    run
}

const DUMP: &str = "database.toxo.dump";

fn apply_dump(project: &Project, url: &str) -> crate::support::Run {
    run_with(project, url, &["apply", "site.hcl", "--target", DUMP])
}

/// The output digest an apply printed for the dump (`… done in 0.4s, output 1a2b3c`).
fn dump_output(run: &crate::support::Run) -> String {
    run.stderr
        .lines()
        .find(|l| l.contains(DUMP) && l.contains("output "))
        .and_then(|l| l.rsplit("output ").next())
        .unwrap_or_else(|| panic!("no dump output in:\n{}", run.transcript()))
        .trim()
        .to_string()
}

/// The dump step's committed output folder, as `vmbuild show` prints it.
fn dump_tree(project: &Project, url: &str) -> std::path::PathBuf {
    let shown = run_with(project, url, &["show", DUMP, "-r", "site.hcl"]).success();
    let folder = shown
        .stdout
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("output:")
                .or_else(|| l.strip_prefix("last output:"))
        })
        .and_then(|l| l.split('`').nth(1))
        .unwrap_or_else(|| panic!("no output folder in:\n{}", shown.stdout));
    std::path::PathBuf::from(folder)
}

/// The dump as SQL text, as `pg_restore` reads it.
fn dump_sql(project: &Project, url: &str) -> String {
    let dump = dump_tree(project, url).join("dump");
    let output = Command::new("pg_restore")
        .args(["--file=-"])
        .arg(&dump)
        .output()
        .expect("run pg_restore");
    assert!(output.status.success(), "pg_restore");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn plan_shows_the_allowlist_and_what_was_excluded() {
    let Some(fixture) = Fixture::new("plan") else {
        return;
    };
    let project = Project::new();
    project.recipe(&recipe(""));
    let run = run_with(&project, &fixture.url, &["plan", "site.hcl"]).success();
    assert!(
        run.stdout
            .contains("schemas: apidb, apidbtuning, core, dots, genes, sres, study"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("excluded: workflow (workflow)"));
    assert!(run
        .stdout
        .contains("no fingerprint query: dumped on every apply"));
    assert!(run
        .stdout
        .contains("toxodb (owner toxodb): from `database.toxo.dump`"));
    let markdown = run_with(
        &project,
        &fixture.url,
        &["plan", "site.hcl", "--format", "markdown"],
    )
    .success();
    assert!(markdown
        .stdout
        .contains("  - excluded: workflow (workflow)"));
}

#[test]
fn the_dump_holds_the_allowlist_and_nothing_of_production_users_or_roles() {
    let Some(fixture) = Fixture::new("dump") else {
        return;
    };
    let project = Project::new();
    project.recipe(&recipe(r#"  exclude_table_data = ["apidbtuning.*"]"#));
    apply_dump(&project, &fixture.url).success();
    let sql = dump_sql(&project, &fixture.url);
    for schema in [
        "apidb",
        "apidbtuning",
        "core",
        "dots",
        "genes",
        "sres",
        "study",
    ] {
        assert!(
            sql.contains(&format!("CREATE SCHEMA {schema};")),
            "{schema}"
        );
    }
    assert!(!sql.contains("CREATE SCHEMA workflow"));
    for never in NEVER_CLONED {
        assert!(!sql.contains(never), "`{never}` is in the dump");
    }
    assert!(!sql.contains("OWNER TO") && !sql.contains("GRANT "));
    // Every file of the step's output, compressed or not, is free of the passwords.
    for (path, bytes) in project.store_files() {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("production-secret"), "{}", path.display());
        assert!(!text.contains(&test_password()), "{}", path.display());
    }
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dump_tree(&project, &fixture.url).join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["rows"]["genes.gene"], 3000);
    // Table definitions kept, rows left out.
    assert_eq!(report["rows"]["apidbtuning.geneattributes1234"], 0);
    assert!(sql.contains("CREATE TABLE apidbtuning.geneattributes1234"));
}

#[test]
fn an_unchanged_source_stays_cached_and_a_new_release_dumps_again() {
    let Some(fixture) = Fixture::new("fingerprint") else {
        return;
    };
    let project = Project::new();
    project.recipe(&recipe(
        r#"  fingerprint = "SELECT release FROM apidb.instancemetainfo""#,
    ));
    apply_dump(&project, &fixture.url).success();
    // Rows change, the release does not: the fingerprint says nothing changed.
    fixture.sql("UPDATE core.algorithm SET description = 'changed'");
    let run = run_with(
        &project,
        &fixture.url,
        &["plan", "site.hcl", "--target", DUMP],
    )
    .success();
    assert!(
        run.stdout.contains(&format!("cached  {DUMP}")),
        "{}",
        run.stdout
    );
    fixture.sql("UPDATE apidb.instancemetainfo SET release = '69'");
    let run = run_with(
        &project,
        &fixture.url,
        &["plan", "site.hcl", "--target", DUMP],
    )
    .success();
    assert!(
        run.stdout.contains("parameter `fingerprint.rows` changed"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("fingerprint: (69)"));
}

#[test]
fn without_a_fingerprint_the_dump_runs_again_and_comes_out_the_same() {
    let Some(fixture) = Fixture::new("nofingerprint") else {
        return;
    };
    let project = Project::new();
    project.recipe(&recipe(""));
    let first = dump_output(&apply_dump(&project, &fixture.url).success());
    let second = apply_dump(&project, &fixture.url).success();
    assert!(second.stderr.contains(&format!("{DUMP}: started")));
    assert_eq!(
        dump_output(&second),
        first,
        "unchanged data, a different dump"
    );
    fixture.sql("INSERT INTO core.algorithm (name) VALUES ('new')");
    let third = apply_dump(&project, &fixture.url).success();
    assert_ne!(dump_output(&third), first, "changed data, the same dump");
}

#[test]
fn the_source_and_its_password_are_forbidden_in_the_vm_without_being_listed() {
    let Some(fixture) = Fixture::new("implicitforbid") else {
        return;
    };
    let project = Project::new();
    project.recipe(&recipe(""));
    let run = run_with(&project, &fixture.url, &["plan", "site.hcl"]).success();
    assert!(
        run.stdout.contains("forbids 2 strings: the source of database \"toxo\" (env(\"TOXO_SOURCE_URL\")), the password in the source of database \"toxo\" (env(\"TOXO_SOURCE_URL\"))"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("sanitize.scan"), "{}", run.stdout);
}

#[test]
fn a_source_over_verified_tls_is_dumped() {
    let Some(fixture) = Fixture::new("tls") else {
        return;
    };
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    if !std::path::Path::new(snakeoil).is_file() {
        eprintln!("skipped: the test server's certificate {snakeoil} is not here");
        return;
    }
    let project = Project::new();
    project.recipe(&recipe(""));
    // The server's certificate names `localhost`: verify-full holds for that name only, for
    // vmbuild's own connections and pg_dump's alike.
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={snakeoil}",
        fixture.url.replace("@127.0.0.1", "@localhost")
    );
    let run = apply_dump(&project, &url).success();
    assert!(
        run.stderr.contains(&format!("{DUMP}: done")),
        "{}",
        run.stderr
    );
    let wrong_name = url.replace("@localhost", "@127.0.0.1");
    let run = run_with(
        &project,
        &wrong_name,
        &["plan", "site.hcl", "--target", DUMP],
    )
    .code(1);
    assert!(
        run.stderr.contains("certificate not valid for name"),
        "{}",
        run.transcript()
    );
}

/// Nothing was committed to the store: no tree, no action record.
fn store_is_empty(project: &Project) {
    for (path, _) in project.store_files() {
        let relative = path.strip_prefix(project.store()).unwrap_or(&path);
        let first = relative
            .components()
            .next()
            .map(|c| c.as_os_str().to_owned());
        assert!(
            !matches!(
                first.as_deref().and_then(|f| f.to_str()),
                Some("trees" | "actions" | "refs")
            ),
            "the store holds {}",
            path.display()
        );
    }
}

#[test]
fn a_bad_source_is_a_clear_error_and_leaves_nothing_in_the_store() {
    let Some(fixture) = Fixture::new("bad") else {
        return;
    };
    let project = Project::new();
    project.recipe(&recipe(""));
    let wrong_password = fixture.url.replace(&test_password(), "not-the-password");
    let unreachable = format!("postgres://vmbuild_test:{}@127.0.0.1:1/x", test_password());
    for (url, expected) in [
        (
            unreachable.as_str(),
            "cannot reach the source `env(\"TOXO_SOURCE_URL\")`",
        ),
        (
            wrong_password.as_str(),
            "authentication failed for the source `env(\"TOXO_SOURCE_URL\")`",
        ),
    ] {
        for command in ["plan", "apply"] {
            let run = run_with(&project, url, &[command, "site.hcl"]).code(1);
            assert!(run.stderr.contains(expected), "{}", run.transcript());
            assert!(!run.stderr.contains("not-the-password"));
        }
    }
    project.recipe(&recipe("").replace("core.databaseinfo", "core.nosuchtable"));
    let run = run_with(&project, &fixture.url, &["apply", "site.hcl"]).code(1);
    assert!(
        run.stderr
            .contains("the schema registry table `core.nosuchtable` does not exist in the source"),
        "{}",
        run.transcript()
    );
    store_is_empty(&project);
}

#[test]
fn the_tuning_manager_lock_makes_the_export_wait_then_fail_or_proceed() {
    let Some(fixture) = Fixture::new("lock") else {
        return;
    };
    let project = Project::new();
    let with_wait = |wait: &str| {
        recipe(&format!(
            "  lock {{\n    name = \"tuning_manager\"\n    wait = \"{wait}\"\n  }}"
        ))
    };
    // A rebuild is in progress: the tuning manager holds the row.
    fixture.sql(
        "UPDATE apidb.instancemetainfo SET current_updater = 'process 4242 on loader', \
         update_start = now() WHERE current_updater IS NULL",
    );
    project.recipe(&with_wait("2s"));
    let started = Instant::now();
    let run = apply_dump(&project, &fixture.url).code(1);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        run.stderr
            .contains("the export lock `tuning_manager` is held by process 4242 on loader since"),
        "{}",
        run.transcript()
    );
    store_is_empty(&project);
    assert_eq!(
        fixture.sql("SELECT current_updater FROM apidb.instancemetainfo"),
        "process 4242 on loader",
        "someone else's claim was touched"
    );

    // The rebuild ends while the export waits: the export proceeds, then releases its claim.
    project.recipe(&with_wait("2m"));
    let db = fixture.db.clone();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        psql(
            &db,
            "UPDATE apidb.instancemetainfo SET current_updater = NULL, update_start = NULL",
        );
    });
    let started = Instant::now();
    let run = apply_dump(&project, &fixture.url).success();
    releaser.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{}",
        run.transcript()
    );
    let log = project.run(&["log", DUMP, "-r", "site.hcl"]).success();
    assert!(
        log.stdout
            .contains("holding the export lock `tuning_manager`")
            && log
                .stdout
                .contains("released the export lock `tuning_manager`"),
        "{}",
        log.stdout
    );
    assert_eq!(
        fixture.sql("SELECT coalesce(current_updater, 'free') FROM apidb.instancemetainfo"),
        "free"
    );
}

//! Loading a directory-format dump into a fresh cluster of the template's own PostgreSQL, run
//! in a chroot of the template tree, the data directory written into the output layer.
//!
//! The template tree (in the store) is never written: the chroot is a private, read-only bind
//! mount of it in the scratch folder, on which are mounted `/proc`, `/dev`, the layer's
//! `var/lib/postgresql` (read-write), a scratch folder as `/run/postgresql` (socket, server log,
//! the setup SQL) with the dump read-only below it, and a scratch `/tmp`. Every mount is undone
//! by a drop guard, which first stops a server left running. The server listens on its socket
//! only (no TCP). The application role's password reaches `psql` in a file (mode 0600, removed
//! right after), never argv; PostgreSQL stores its SCRAM hash.
//!
//! The layer holds `var/lib/postgresql/<major>/main` (owned by the guest's `postgres`, mode
//! 0700); the template's Debian cluster configuration (`/etc/postgresql/<major>/main`) points at
//! it. The layer must replace that folder of the template wholesale, not merge into it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::super::process::{self, Invocation};
use super::super::{RunContext, StepError};
use super::dump::{quote_ident, with_redactions};
use crate::recipe::Secret;

/// What goes into one database of the cluster.
pub enum Content<'a> {
    /// A directory-format dump made by `dump` (`out_dir/dump`), restored with `pg_restore`.
    Dump(&'a Path),
    /// A plain SQL file (PostgreSQL dialect), run with `psql` in one transaction.
    Sql(&'a Path),
    /// Schema installation scripts, run in order in one transaction: an empty database.
    Init(&'a [PathBuf]),
}

/// One database of the cluster.
pub struct LoadDatabase<'a> {
    /// Its name inside the VM.
    pub name: &'a str,
    /// The application role: it owns the database and everything restored into it.
    pub role: &'a str,
    pub password: &'a Secret,
    pub content: Content<'a>,
}

/// What to load, and where from.
pub struct LoadSpec<'a> {
    /// A root tree with PostgreSQL installed (`usr/lib/postgresql/<major>/bin`); read only.
    pub template_root: &'a Path,
    /// The databases, created in this order in one cluster.
    pub databases: &'a [LoadDatabase<'a>],
    pub jobs: u32,
}

/// What was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadInfo {
    /// Database → `schema.table` → rows, for every table outside the system schemas.
    pub databases: BTreeMap<String, BTreeMap<String, i64>>,
    /// `SHOW server_version` of the template's PostgreSQL.
    pub pg_version: String,
    /// The major version, as in `var/lib/postgresql/<major>/main`.
    pub major: String,
}

/// Why a load failed. Never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the template tree has no PostgreSQL (`usr/lib/postgresql/<major>/bin/postgres`)")]
    NoPostgres,
    #[error("the template tree has no `{0}` (installed by Debian's postgresql packages)")]
    Missing(PathBuf),
    #[error("the template tree has no `postgres` user in etc/passwd")]
    NoUser,
    #[error("`{name}` is not a usable name: {why}")]
    Name { name: String, why: &'static str },
    #[error("{step} failed ({source}); the log ends with:\n{log_tail}")]
    Command {
        step: &'static str,
        #[source]
        source: StepError,
        log_tail: String,
    },
    #[error("cannot read what the server reported: {0}")]
    Report(String),
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LoadError {
    let path = path.to_path_buf();
    move |source| LoadError::Io {
        action,
        path,
        source,
    }
}

/// The PostgreSQL major version installed in `root` (the highest one).
fn find_major(root: &Path) -> Result<String, LoadError> {
    let dir = root.join("usr/lib/postgresql");
    let entries = std::fs::read_dir(&dir).map_err(|_| LoadError::NoPostgres)?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.parse::<u32>().is_ok())
        .filter(|name| dir.join(name).join("bin/postgres").is_file())
        .max_by_key(|name| name.parse::<u32>().unwrap_or(0))
        .ok_or(LoadError::NoPostgres)
}

/// The uid and gid of `postgres` in the tree's `/etc/passwd`.
fn postgres_ids(root: &Path) -> Result<(u32, u32), LoadError> {
    let path = root.join("etc/passwd");
    let passwd = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or(LoadError::NoUser)
}

/// Mounts made for the load, undone in reverse order on drop, after stopping a server that
/// may still run on the data directory.
struct Mounts {
    mounted: Vec<PathBuf>,
    pid_file: PathBuf,
}

impl Mounts {
    fn bind(&mut self, source: &Path, target: &Path, read_only: bool) -> Result<(), LoadError> {
        let flags = MsFlags::MS_BIND;
        mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|e| {
            LoadError::Io {
                action: "bind-mount onto",
                path: target.to_path_buf(),
                source: e.into(),
            }
        })?;
        self.mounted.push(target.to_path_buf());
        // Private: nothing mounted below propagates back to the original tree's mount.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| LoadError::Io {
            action: "make private",
            path: target.to_path_buf(),
            source: e.into(),
        })?;
        if read_only {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| LoadError::Io {
                action: "make read-only",
                path: target.to_path_buf(),
                source: e.into(),
            })?;
        }
        Ok(())
    }

    fn other(
        &mut self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
    ) -> Result<(), LoadError> {
        mount(Some(source), target, fstype, flags, None::<&str>).map_err(|e| LoadError::Io {
            action: "mount",
            path: target.to_path_buf(),
            source: e.into(),
        })?;
        self.mounted.push(target.to_path_buf());
        Ok(())
    }

    /// Stop a server still running on the data directory: immediate shutdown, then SIGKILL.
    fn stop_server(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Ok(text) = std::fs::read_to_string(&self.pid_file) else {
            return;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return;
        };
        let pid = Pid::from_raw(pid);
        if kill(pid, Signal::SIGQUIT).is_err() {
            return;
        }
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if kill(pid, None).is_err() {
                return;
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.stop_server();
        while let Some(path) = self.mounted.pop() {
            if let Err(e) =
                umount2(&path, MntFlags::empty()).or_else(|_| umount2(&path, MntFlags::MNT_DETACH))
            {
                tracing::warn!("cannot unmount {}: {e}", path.display());
            }
        }
    }
}

/// The last lines of a log file, with secrets blanked out.
fn tail(path: &Path, secrets: &[String]) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..]
        .iter()
        .map(|l| process::redact(l, secrets))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Refuse names PostgreSQL would truncate or that cannot be passed around safely.
fn check_name(name: &str) -> Result<(), LoadError> {
    let why = if name.is_empty() {
        "empty"
    } else if name.len() > 63 {
        "longer than 63 bytes"
    } else if name.chars().any(|c| c.is_control()) {
        "contains a control character"
    } else if name.contains('=') {
        "contains `=` (PostgreSQL's tools take such a name for a connection string)"
    } else {
        return Ok(());
    };
    Err(LoadError::Name {
        name: name.to_string(),
        why,
    })
}

/// Create, chown and chmod a directory the guest's `postgres` owns.
fn owned_dir(path: &Path, ids: (u32, u32), mode: u32) -> Result<(), LoadError> {
    std::fs::create_dir_all(path).map_err(io("create", path))?;
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1)).map_err(io("chown", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// Load every database of `spec` into a new cluster written under `out_layer`.
pub async fn load(
    spec: &LoadSpec<'_>,
    out_layer: &Path,
    ctx: &RunContext,
) -> Result<LoadInfo, LoadError> {
    let mut secrets_to_hide: Vec<String> = Vec::new();
    for database in spec.databases {
        check_name(database.name)?;
        check_name(database.role)?;
        if database.password.reveal().contains('\0') {
            return Err(LoadError::Name {
                name: "(the password)".into(),
                why: "contains a NUL character",
            });
        }
        secrets_to_hide.extend(database.password.parts().iter().cloned());
    }
    let ctx = &with_redactions(ctx, &secrets_to_hide);
    let template = spec.template_root;
    let major = find_major(template)?;
    let ids = postgres_ids(template)?;
    for needed in ["var/lib/postgresql", "run/postgresql", "proc", "dev", "tmp"] {
        if !template.join(needed).is_dir() {
            return Err(LoadError::Missing(PathBuf::from(needed)));
        }
    }
    // Debian's cluster configuration, made by the package's postinst when it created a cluster.
    let has_debian_config = template
        .join("etc/postgresql")
        .join(&major)
        .join("main")
        .is_dir();

    // The layer's data directory, owned by the guest's postgres.
    let pg_home = out_layer.join("var/lib/postgresql");
    owned_dir(&pg_home, ids, 0o755)?;
    owned_dir(&pg_home.join(&major), ids, 0o755)?;
    let data = pg_home.join(&major).join("main");
    owned_dir(&data, ids, 0o700)?;

    // Scratch: the chroot's mount point, its /run/postgresql and /tmp.
    let work = tempfile::Builder::new()
        .prefix("pgload")
        .tempdir_in(&ctx.scratch)
        .map_err(io("create a folder in", &ctx.scratch))?;
    let root = work.path().join("root");
    let run = work.path().join("run");
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&root).map_err(io("create", &root))?;
    owned_dir(&run, ids, 0o2775)?;
    std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod", &tmp))?;
    let server_log = run.join("server.log");
    // What each database is made from, as paths inside the chroot: dumps are bind-mounted
    // read-only below /run/postgresql, SQL files copied there.
    let mut sources: Vec<Vec<String>> = Vec::new();
    for (i, database) in spec.databases.iter().enumerate() {
        match &database.content {
            Content::Dump(_) => {
                let mount_point = run.join(format!("dump{i}"));
                std::fs::create_dir(&mount_point).map_err(io("create", &mount_point))?;
                sources.push(vec![format!("/run/postgresql/dump{i}")]);
            }
            Content::Sql(file) => {
                let copied = copy_script(file, &run, &format!("db{i}.sql"))?;
                sources.push(vec![copied]);
            }
            Content::Init(scripts) => {
                let mut copied = Vec::new();
                for (n, script) in scripts.iter().enumerate() {
                    copied.push(copy_script(script, &run, &format!("db{i}-init{n}.sql"))?);
                }
                sources.push(copied);
            }
        }
    }

    let mut mounts = Mounts {
        mounted: Vec::new(),
        pid_file: data.join("postmaster.pid"),
    };
    mounts.bind(template, &root, true)?;
    mounts.other("proc", &root.join("proc"), Some("proc"), MsFlags::empty())?;
    mounts.other(
        "/dev",
        &root.join("dev"),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
    )?;
    mounts.bind(&pg_home, &root.join("var/lib/postgresql"), false)?;
    mounts.bind(&run, &root.join("run/postgresql"), false)?;
    mounts.bind(&tmp, &root.join("tmp"), false)?;
    for (i, database) in spec.databases.iter().enumerate() {
        if let Content::Dump(dir) = &database.content {
            mounts.bind(dir, &root.join(format!("run/postgresql/dump{i}")), true)?;
        }
    }

    let bin = format!("/usr/lib/postgresql/{major}/bin");
    let data_in = format!("/var/lib/postgresql/{major}/main");
    let secrets: Vec<String> = ctx.redact.as_ref().clone();
    // Found on vmbuild's PATH: the commands' own PATH is the guest's.
    let chroot = process::find_program("chroot", Path::new("/"))
        .map_or_else(|| "chroot".to_string(), |p| p.display().to_string());
    // Commands run as the guest's postgres, or as root (`as_root`), which reads the dump (pg_dump
    // makes it readable by its owner only) and is let in as `postgres` by the loading ident map.
    let in_tree = |step: &'static str, as_root: bool, program: &str, args: Vec<String>| {
        let mut all = Vec::new();
        if !as_root {
            all.push(format!("--userspec={}:{}", ids.0, ids.1));
        }
        all.push(root.display().to_string());
        all.push(format!("{bin}/{program}"));
        all.extend(args);
        let env: BTreeMap<String, String> = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/var/lib/postgresql"),
            ("USER", "postgres"),
            ("LOGNAME", "postgres"),
            ("LANG", "C.UTF-8"),
            ("TMPDIR", "/tmp"),
            ("PGHOST", "/run/postgresql"),
            ("PGUSER", "postgres"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let server_log = server_log.clone();
        let secrets = secrets.clone();
        let chroot = chroot.clone();
        async move {
            process::run(
                Invocation {
                    program: chroot,
                    args: all,
                    env,
                    cwd: PathBuf::from("/"),
                },
                ctx,
            )
            .await
            .map_err(|source| LoadError::Command {
                step,
                source,
                log_tail: format!(
                    "{}\n-- server log:\n{}",
                    tail(&ctx.log, &secrets),
                    tail(&server_log, &secrets)
                ),
            })
        }
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    in_tree(
        "initdb",
        false,
        "initdb",
        s(&[
            "--pgdata",
            &data_in,
            "--username=postgres",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]),
    )
    .await?;
    // While loading: peer authentication, root and postgres both let in as `postgres`. These
    // files live in the scratch folder; the layer keeps initdb's own pg_hba.conf.
    std::fs::write(
        run.join("load_hba.conf"),
        "local all postgres peer map=load\n",
    )
    .map_err(io("write", &run.join("load_hba.conf")))?;
    std::fs::write(
        run.join("load_ident.conf"),
        "load root postgres\nload postgres postgres\n",
    )
    .map_err(io("write", &run.join("load_ident.conf")))?;
    in_tree(
        "starting the server",
        false,
        "pg_ctl",
        s(&[
            "start",
            "--wait",
            "--pgdata",
            &data_in,
            "--log=/run/postgresql/server.log",
            "--options=-c listen_addresses='' -c unix_socket_directories='/run/postgresql' \
             -c log_min_error_statement=panic -c hba_file=/run/postgresql/load_hba.conf \
             -c ident_file=/run/postgresql/load_ident.conf",
        ]),
    )
    .await?;

    let mut created_roles: Vec<&str> = Vec::new();
    let mut databases = BTreeMap::new();
    let mut pg_version = String::new();
    for (i, (database, files)) in spec.databases.iter().zip(&sources).enumerate() {
        // Role and database, the password in a file only the server's user reads.
        let setup = run.join("setup.sql");
        let mut sql = String::from("\\set ON_ERROR_STOP on\n\\set VERBOSITY terse\n");
        if !created_roles.contains(&database.role) {
            sql.push_str(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{password}';\n",
                role = quote_ident(database.role),
                password = database.password.reveal().replace('\'', "''"),
            ));
            created_roles.push(database.role);
        }
        sql.push_str(&format!(
            "CREATE DATABASE {db} OWNER {role} ENCODING 'UTF8' TEMPLATE template0;\n\
             REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n",
            role = quote_ident(database.role),
            db = quote_ident(database.name),
        ));
        write_private(&setup, sql.as_bytes(), ids)?;
        let created = in_tree(
            "creating the role and database",
            true,
            "psql",
            s(&[
                "--no-psqlrc",
                "--quiet",
                "--dbname=postgres",
                "--file=/run/postgresql/setup.sql",
            ]),
        )
        .await;
        std::fs::remove_file(&setup).map_err(io("remove", &setup))?;
        created?;

        match &database.content {
            Content::Dump(_) => {
                in_tree(
                    "pg_restore",
                    true,
                    "pg_restore",
                    vec![
                        format!("--jobs={}", spec.jobs.max(1)),
                        "--no-owner".into(),
                        "--no-privileges".into(),
                        format!("--role={}", database.role),
                        "--exit-on-error".into(),
                        format!("--dbname={}", database.name),
                        files[0].clone(),
                    ],
                )
                .await?;
            }
            Content::Sql(_) | Content::Init(_) => {
                // As the application role, so that it owns what the scripts create.
                let mut args = vec![
                    "--no-psqlrc".to_string(),
                    "--quiet".into(),
                    "--single-transaction".into(),
                    "--set=ON_ERROR_STOP=1".into(),
                    format!("--dbname={}", database.name),
                    format!("--command=SET ROLE {}", quote_ident(database.role)),
                ];
                args.extend(files.iter().map(|f| format!("--file={f}")));
                in_tree("running the SQL scripts", true, "psql", args).await?;
            }
        }
        in_tree(
            "VACUUM ANALYZE",
            true,
            "psql",
            vec![
                "--no-psqlrc".into(),
                "--quiet".into(),
                format!("--dbname={}", database.name),
                "--command=VACUUM (ANALYZE)".into(),
            ],
        )
        .await?;
        let report_sql = "SELECT json_build_object('version', current_setting('server_version'), \
             'counts', coalesce((SELECT json_object_agg(n.nspname || '.' || c.relname, \
               (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', \
                 n.nspname, c.relname), false, true, '')))[1]::text::bigint) \
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'), '{}'::json))";
        in_tree(
            "counting rows",
            true,
            "psql",
            vec![
                "--no-psqlrc".into(),
                "--quiet".into(),
                "--tuples-only".into(),
                "--no-align".into(),
                format!("--dbname={}", database.name),
                format!("--output=/run/postgresql/report{i}.json"),
                format!("--command={report_sql}"),
            ],
        )
        .await?;
        let report_path = run.join(format!("report{i}.json"));
        let report = std::fs::read_to_string(&report_path).map_err(io("read", &report_path))?;
        let (counts, version) = parse_report(&report)?;
        databases.insert(database.name.to_string(), counts);
        pg_version = version;
    }
    in_tree(
        "stopping the server",
        false,
        "pg_ctl",
        s(&["stop", "--wait", "--mode=fast", "--pgdata", &data_in]),
    )
    .await?;

    // It records the loading options, which mean nothing in the guest.
    let opts = data.join("postmaster.opts");
    std::fs::remove_file(&opts).map_err(io("remove", &opts))?;
    if has_debian_config {
        // The package made the template's cluster on the first free port of the machine that
        // built the template: the VM's one cluster listens on the standard port.
        let conf_d = out_layer
            .join("etc/postgresql")
            .join(&major)
            .join("main/conf.d");
        for dir in [
            out_layer.join("etc/postgresql"),
            out_layer.join("etc/postgresql").join(&major),
            out_layer.join("etc/postgresql").join(&major).join("main"),
            conf_d.clone(),
        ] {
            owned_dir(&dir, ids, 0o755)?;
        }
        let port = conf_d.join("50-vmbuild.conf");
        std::fs::write(&port, "# vmbuild: the VM's one cluster\nport = 5432\n")
            .map_err(io("write", &port))?;
    } else {
        debian_config(out_layer, &data, &major, ids)?;
    }
    drop(mounts);
    Ok(LoadInfo {
        databases,
        pg_version,
        major,
    })
}

/// Copy a SQL file into the chroot's `/run/postgresql` as `name`; returns its path there.
fn copy_script(file: &Path, run: &Path, name: &str) -> Result<String, LoadError> {
    let to = run.join(name);
    std::fs::copy(file, &to).map_err(io("copy", file))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))
        .map_err(io("chmod", &to))?;
    Ok(format!("/run/postgresql/{name}"))
}

/// Make the cluster a Debian one, as `pg_createcluster` would, for a template that has none:
/// initdb's configuration files move to `etc/postgresql/<major>/main` in the layer, with the
/// settings Debian's tools (`pg_ctlcluster`, the systemd unit) expect.
fn debian_config(
    out_layer: &Path,
    data: &Path,
    major: &str,
    ids: (u32, u32),
) -> Result<(), LoadError> {
    let etc = out_layer.join("etc/postgresql");
    owned_dir(&etc, ids, 0o755)?;
    owned_dir(&etc.join(major), ids, 0o755)?;
    let conf = etc.join(major).join("main");
    owned_dir(&conf, ids, 0o755)?;
    owned_dir(&conf.join("conf.d"), ids, 0o755)?;
    for name in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        let from = data.join(name);
        let to = conf.join(name);
        std::fs::rename(&from, &to).map_err(io("move", &from))?;
    }
    let settings = format!(
        "\n# vmbuild: the layout of a Debian cluster, as pg_createcluster writes it\n\
         data_directory = '/var/lib/postgresql/{major}/main'\n\
         hba_file = '/etc/postgresql/{major}/main/pg_hba.conf'\n\
         ident_file = '/etc/postgresql/{major}/main/pg_ident.conf'\n\
         external_pid_file = '/var/run/postgresql/{major}-main.pid'\n\
         port = 5432\n\
         unix_socket_directories = '/var/run/postgresql'\n\
         cluster_name = '{major}/main'\n\
         include_dir = 'conf.d'\n"
    );
    let main_conf = conf.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&main_conf)
        .map_err(io("open", &main_conf))?;
    std::io::Write::write_all(&mut file, settings.as_bytes()).map_err(io("write", &main_conf))?;
    for (name, text) in [
        ("start.conf", "auto\n"),
        ("pg_ctl.conf", "pg_ctl_options = ''\n"),
        ("environment", ""),
    ] {
        let path = conf.join(name);
        std::fs::write(&path, text).map_err(io("write", &path))?;
        std::os::unix::fs::chown(&path, Some(ids.0), Some(ids.1)).map_err(io("chown", &path))?;
    }
    Ok(())
}

fn parse_report(text: &str) -> Result<(BTreeMap<String, i64>, String), LoadError> {
    #[derive(serde::Deserialize)]
    struct Report {
        version: String,
        counts: BTreeMap<String, i64>,
    }
    let report: Report =
        serde_json::from_str(text.trim()).map_err(|e| LoadError::Report(e.to_string()))?;
    Ok((report.counts, report.version))
}

/// Write `bytes` to a new file readable by the guest's postgres only.
fn write_private(path: &Path, bytes: &[u8], ids: (u32, u32)) -> Result<(), LoadError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    file.write_all(bytes).map_err(io("write", path))?;
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1)).map_err(io("chown", path))
}

/// Differences between two row-count maps, for people: `schema.table: expected N, got M`.
pub fn count_differences(
    expected: &BTreeMap<String, i64>,
    actual: &BTreeMap<String, i64>,
) -> Vec<String> {
    let mut keys: Vec<&String> = expected.keys().chain(actual.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| expected.get(*k) != actual.get(*k))
        .map(|k| {
            let show = |v: Option<&i64>| v.map_or("no table".to_string(), |n| n.to_string());
            format!(
                "{k}: expected {}, got {}",
                show(expected.get(k)),
                show(actual.get(k))
            )
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn report_parses() {
        let (counts, version) =
            parse_report("{\"version\" : \"15.13\", \"counts\" : {\"keep.a\" : 3}}\n")
                .expect("parses");
        assert_eq!(version, "15.13");
        assert_eq!(counts["keep.a"], 3);
    }

    #[test]
    fn differences_name_tables() {
        let a = BTreeMap::from([("s.a".to_string(), 1), ("s.b".to_string(), 2)]);
        let b = BTreeMap::from([("s.a".to_string(), 1), ("s.c".to_string(), 2)]);
        assert_eq!(
            count_differences(&a, &b),
            vec![
                "s.b: expected 2, got no table",
                "s.c: expected no table, got 2"
            ]
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("toxodb").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(64)).is_err());
    }

    // ---- Against real PostgreSQL: `VMBUILD_TEST_PG=1` and `VMBUILD_TEST_PG_ROOT=<a tree made by
    // `debootstrap --variant=minbase --include=postgresql bookworm ROOT MIRROR`>`, as root, with
    // the host's cluster on 127.0.0.1:5432 (`pg_ctlcluster 15 main start`).

    use super::super::dump::{dump, DumpSpec};
    use std::process::Command;
    use std::sync::Arc;

    pub(crate) fn template_root() -> Option<PathBuf> {
        if std::env::var_os("VMBUILD_TEST_PG").is_none() {
            eprintln!("note: set VMBUILD_TEST_PG=1 and VMBUILD_TEST_PG_ROOT (as root) to test with PostgreSQL");
            return None;
        }
        let root = PathBuf::from(std::env::var_os("VMBUILD_TEST_PG_ROOT")?);
        assert!(
            root.join("usr/lib/postgresql").is_dir(),
            "VMBUILD_TEST_PG_ROOT has no PostgreSQL"
        );
        Some(root)
    }

    pub(crate) fn test_ctx(dir: &Path) -> RunContext {
        let scratch = dir.join("scratch");
        std::fs::create_dir_all(&scratch).expect("scratch");
        RunContext {
            out: dir.join("out"),
            scratch,
            log: dir.join("step.log"),
            upstream: BTreeMap::new(),
            recipe_dir: dir.to_path_buf(),
            cache: dir.join("cache"),
            redact: Arc::new(Vec::new()),
            cancel: tokio_util::sync::CancellationToken::new(),
            on_line: Arc::new(|_| {}),
        }
    }

    /// Run SQL as the host's postgres superuser.
    fn host_sql(db: &str, sql: &str) {
        use std::io::Write;
        let mut child = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .expect("write");
        assert!(
            child.wait().expect("psql").success(),
            "host SQL failed: {sql}"
        );
    }

    /// [`query_layer`] for a layer loaded from `template`.
    pub(crate) fn query_loaded(layer: &Path, template: &Path, db: &str, sql: &str) -> String {
        let major = find_major(template).expect("major");
        let ids = postgres_ids(template).expect("ids");
        query_layer(layer, &major, ids, db, sql)
    }

    /// Start the host's PostgreSQL of the same major on the layer's data directory (as the
    /// guest's postgres uid, trust on a private socket), run `sql`, return its output, stop.
    fn query_layer(layer: &Path, major: &str, ids: (u32, u32), db: &str, sql: &str) -> String {
        let data = layer.join(format!("var/lib/postgresql/{major}/main"));
        let sock = tempfile::tempdir().expect("socket dir");
        std::os::unix::fs::chown(sock.path(), Some(ids.0), Some(ids.1)).expect("chown");
        let hba = sock.path().join("hba.conf");
        std::fs::write(&hba, "local all all trust\n").expect("hba");
        let bin = format!("/usr/lib/postgresql/{major}/bin");
        let as_guest = |program: &str, args: &[&str]| {
            Command::new("setpriv")
                .args([
                    &format!("--reuid={}", ids.0),
                    &format!("--regid={}", ids.1),
                    "--clear-groups",
                ])
                .arg(format!("{bin}/{program}"))
                .args(args)
                .output()
                .expect("run as the guest's postgres")
        };
        let options = format!(
            "-c listen_addresses='' -k {} -c hba_file={}",
            sock.path().display(),
            hba.display()
        );
        let log = sock.path().join("log");
        let started = as_guest(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-D",
                &data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-o",
                &options,
            ],
        );
        assert!(
            started.status.success(),
            "start: {:?} {}",
            started,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let out = as_guest(
            "psql",
            &[
                "-X",
                "-At",
                "-h",
                &sock.path().display().to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ],
        );
        let stopped = as_guest(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "fast",
                "-D",
                &data.display().to_string(),
            ],
        );
        assert!(stopped.status.success());
        assert!(
            out.status.success(),
            "query failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub(crate) fn nothing_mounted_under(paths: &[&Path]) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        for line in mounts.lines() {
            let target = line.split_whitespace().nth(1).unwrap_or("");
            for p in paths {
                assert!(
                    !target.starts_with(&p.display().to_string()),
                    "still mounted: {target}"
                );
            }
        }
    }

    fn grep(pattern: &str, path: &Path) -> bool {
        Command::new("grep")
            .args(["-r", "-q", "-a", "-F", pattern])
            .arg(path)
            .status()
            .expect("grep")
            .success()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn dump_an_allowlist_and_load_it_into_the_template_postgres() {
        let Some(template) = template_root() else {
            return;
        };
        let started = std::time::Instant::now();
        host_sql(
            "postgres",
            "DROP DATABASE IF EXISTS vmbuild_src_e2e;
             DROP ROLE IF EXISTS prod_owner; DROP ROLE IF EXISTS prod_reader;
             CREATE ROLE prod_owner LOGIN PASSWORD 'prod-Secret-7731';
             CREATE ROLE prod_reader LOGIN PASSWORD 'reader-Secret-1182';
             CREATE DATABASE vmbuild_src_e2e OWNER prod_owner;",
        );
        host_sql(
            "vmbuild_src_e2e",
            "SET ROLE prod_owner;
             CREATE SCHEMA keep; CREATE SCHEMA \"drop\";
             CREATE TABLE keep.a (id int PRIMARY KEY, name text);
             INSERT INTO keep.a SELECT i, 'row ' || i FROM generate_series(1, 3) i;
             CREATE TABLE keep.b (id int REFERENCES keep.a, v text);
             INSERT INTO keep.b SELECT 1 + i % 3, 'b' FROM generate_series(1, 5) i;
             CREATE TABLE keep.big (x int); INSERT INTO keep.big SELECT generate_series(1, 4);
             COMMENT ON TABLE keep.a IS 'kept comment';
             CREATE TABLE \"drop\".secret (s text); INSERT INTO \"drop\".secret VALUES ('x'), ('y');
             GRANT USAGE ON SCHEMA keep TO prod_reader; GRANT SELECT ON keep.a TO prod_reader;",
        );
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let ctx = test_ctx(dir.path());
        let url = Secret::new(
            "t",
            "postgresql://prod_owner:prod-Secret-7731@127.0.0.1:5432/vmbuild_src_e2e",
        );
        let dump_out = dir.path().join("dump-out");
        std::fs::create_dir(&dump_out).expect("mkdir");
        let t = std::time::Instant::now();
        let dumped = dump(
            &DumpSpec {
                url: &url,
                schemas: &["keep".to_string()],
                exclude_table_data: &["keep.big".to_string()],
                jobs: 2,
                snapshot: None,
            },
            &dump_out,
            &ctx,
        )
        .await
        .expect("dump");
        eprintln!("dump: {:?}, {} bytes", t.elapsed(), dumped.bytes);
        let expected = BTreeMap::from([
            ("keep.a".to_string(), 3),
            ("keep.b".to_string(), 5),
            ("keep.big".to_string(), 0),
        ]);
        assert_eq!(dumped.row_counts, expected);

        let listing = Command::new("pg_restore")
            .arg("-l")
            .arg(dump_out.join("dump"))
            .output()
            .expect("pg_restore -l");
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        assert!(
            !listing
                .lines()
                .any(|l| l.contains(" ACL ") || l.contains(" OWNER ") || l.contains("DEFAULT ACL")),
            "{listing}"
        );
        assert!(
            listing.contains("COMMENT keep TABLE a"),
            "comments are kept: {listing}"
        );
        assert!(!listing.contains("drop secret"));
        for role in ["prod_owner", "prod_reader"] {
            assert!(!grep(role, &dump_out), "{role} in the dump");
        }

        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).expect("mkdir");
        let password = Secret::new("t", "app-Pass-5590");
        let t = std::time::Instant::now();
        let loaded = load(
            &LoadSpec {
                template_root: &template,
                databases: &[LoadDatabase {
                    name: "site",
                    role: "webapp",
                    password: &password,
                    content: Content::Dump(&dump_out.join("dump")),
                }],
                jobs: 2,
            },
            &layer,
            &ctx,
        )
        .await
        .expect("load");
        eprintln!("load: {:?}, PostgreSQL {}", t.elapsed(), loaded.pg_version);
        assert_eq!(
            loaded.databases["site"],
            expected,
            "{:?}",
            count_differences(&expected, &loaded.databases["site"])
        );
        nothing_mounted_under(&[dir.path(), &template]);

        let major = find_major(&template).expect("major");
        let ids = postgres_ids(&template).expect("ids");
        let data = layer.join(format!("var/lib/postgresql/{major}/main"));
        let meta = std::fs::metadata(&data).expect("data dir");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (ids.0, ids.1, 0o700)
        );

        let roles = query_layer(&layer, &major, ids, "site", "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname !~ '^pg_'");
        assert_eq!(roles, "postgres,webapp");
        let schemas = query_layer(&layer, &major, ids, "site", "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'");
        assert_eq!(schemas, "keep,public");
        let owners = query_layer(&layer, &major, ids, "site", "SELECT string_agg(DISTINCT tableowner, ',') || ' ' || (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'keep') || ' ' || (SELECT datdba::regrole::text FROM pg_database WHERE datname = 'site') FROM pg_tables WHERE schemaname = 'keep'");
        assert_eq!(owners, "webapp webapp webapp");
        let hash = query_layer(
            &layer,
            &major,
            ids,
            "postgres",
            "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'webapp'",
        );
        assert_eq!(hash, "SCRAM-SHA-256$");

        for secret in ["prod-Secret-7731", "reader-Secret-1182", "app-Pass-5590"] {
            assert!(!grep(secret, &layer), "{secret} in the layer");
            assert!(!grep(secret, &dump_out), "{secret} in the dump");
            assert!(!grep(secret, &ctx.log), "{secret} in the log");
        }
        assert!(
            !grep("prod_owner", &layer) && !grep("prod_reader", &layer),
            "production roles in the layer"
        );
        eprintln!("whole test: {:?}", started.elapsed());
        host_sql(
            "postgres",
            "DROP DATABASE vmbuild_src_e2e; DROP ROLE prod_owner; DROP ROLE prod_reader;",
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_init_database_is_made_by_its_scripts_and_owned_by_its_role() {
        let Some(template) = template_root() else {
            return;
        };
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let ctx = test_ctx(dir.path());
        let schema = dir.path().join("01-schema.sql");
        std::fs::write(
            &schema,
            "CREATE SCHEMA userlogins5;
             CREATE TABLE userlogins5.users (user_id serial PRIMARY KEY, email text UNIQUE NOT NULL);
             CREATE TABLE userlogins5.strategies (id serial PRIMARY KEY,
               user_id int NOT NULL REFERENCES userlogins5.users, name text);",
        )
        .expect("write");
        let seed = dir.path().join("02-config.sql");
        std::fs::write(
            &seed,
            "CREATE TABLE userlogins5.config (key text PRIMARY KEY, value text);
             INSERT INTO userlogins5.config VALUES ('schema_version', '5');",
        )
        .expect("write");
        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).expect("mkdir");
        let password = Secret::new("t", "comm-Pass-8812");
        let scripts = [schema, seed];
        let loaded = load(
            &LoadSpec {
                template_root: &template,
                databases: &[LoadDatabase {
                    name: "apicomm",
                    role: "comm",
                    password: &password,
                    content: Content::Init(&scripts),
                }],
                jobs: 1,
            },
            &layer,
            &ctx,
        )
        .await
        .expect("load");
        assert_eq!(
            loaded.databases["apicomm"],
            BTreeMap::from([
                ("userlogins5.config".to_string(), 1),
                ("userlogins5.strategies".to_string(), 0),
                ("userlogins5.users".to_string(), 0),
            ])
        );
        nothing_mounted_under(&[dir.path(), &template]);
        let major = find_major(&template).expect("major");
        let ids = postgres_ids(&template).expect("ids");
        let owners = query_layer(
            &layer,
            &major,
            ids,
            "apicomm",
            "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'userlogins5'",
        );
        assert_eq!(
            owners, "comm",
            "the application role owns what the scripts made"
        );
        assert!(!grep("comm-Pass-8812", &layer), "the password in the layer");

        // A failing script fails the load and says which.
        let broken = dir.path().join("03-broken.sql");
        std::fs::write(&broken, "CREATE TABLE nowhere.t (x int);").expect("write");
        let layer = dir.path().join("layer2");
        std::fs::create_dir(&layer).expect("mkdir");
        let scripts = [broken];
        let error = load(
            &LoadSpec {
                template_root: &template,
                databases: &[LoadDatabase {
                    name: "apicomm",
                    role: "comm",
                    password: &password,
                    content: Content::Init(&scripts),
                }],
                jobs: 1,
            },
            &layer,
            &ctx,
        )
        .await
        .unwrap_err();
        let text = format!(
            "{error}: {}",
            std::fs::read_to_string(&ctx.log).unwrap_or_default()
        );
        assert!(text.contains("nowhere"), "{text}");
        nothing_mounted_under(&[dir.path(), &template]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn dump_and_load_keep_a_concurrent_writer_consistent() {
        let Some(template) = template_root() else {
            return;
        };
        host_sql(
            "postgres",
            "DROP DATABASE IF EXISTS vmbuild_src_writer; DROP ROLE IF EXISTS prod_writer;
             CREATE ROLE prod_writer LOGIN PASSWORD 'writer-Secret-4410';
             CREATE DATABASE vmbuild_src_writer OWNER prod_writer;",
        );
        host_sql(
            "vmbuild_src_writer",
            "SET ROLE prod_writer; CREATE SCHEMA keep;
             CREATE TABLE keep.a (id bigserial PRIMARY KEY, pad text);
             CREATE TABLE keep.a_count (n bigint NOT NULL); INSERT INTO keep.a_count VALUES (0);
             CREATE TABLE keep.filler AS SELECT i, repeat('x', 200) AS pad FROM generate_series(1, 200000) i;",
        );
        let url_text = "host=127.0.0.1 port=5432 user=prod_writer password=writer-Secret-4410 dbname=vmbuild_src_writer";
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (client, conn) = tokio_postgres::connect(url_text, tokio_postgres::NoTls)
                    .await
                    .expect("writer connects");
                tokio::spawn(conn);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client
                        .batch_execute("BEGIN; INSERT INTO keep.a (pad) VALUES ('p'); UPDATE keep.a_count SET n = n + 1; COMMIT;")
                        .await
                        .expect("write");
                    n += 1;
                }
                n
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let ctx = test_ctx(dir.path());
        let url = Secret::new("t", url_text);
        let dump_out = dir.path().join("dump-out");
        std::fs::create_dir(&dump_out).expect("mkdir");
        let t = std::time::Instant::now();
        let dumped = dump(
            &DumpSpec {
                url: &url,
                schemas: &["keep".to_string()],
                exclude_table_data: &[],
                jobs: 3,
                snapshot: None,
            },
            &dump_out,
            &ctx,
        )
        .await
        .expect("dump");
        let dump_time = t.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.await.expect("writer");
        eprintln!(
            "dump: {dump_time:?}, {} bytes; the writer committed {writes} transactions meanwhile",
            dumped.bytes
        );
        assert!(writes > 10, "the writer ran during the dump");

        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).expect("mkdir");
        let password = Secret::new("t", "app-Pass-8812");
        let t = std::time::Instant::now();
        let loaded = load(
            &LoadSpec {
                template_root: &template,
                databases: &[LoadDatabase {
                    name: "site",
                    role: "webapp",
                    password: &password,
                    content: Content::Dump(&dump_out.join("dump")),
                }],
                jobs: 3,
            },
            &layer,
            &ctx,
        )
        .await
        .expect("load");
        eprintln!("load: {:?}", t.elapsed());
        assert_eq!(loaded.databases["site"], dumped.row_counts);
        let major = find_major(&template).expect("major");
        let ids = postgres_ids(&template).expect("ids");
        let n = query_layer(
            &layer,
            &major,
            ids,
            "site",
            "SELECT (SELECT count(*) FROM keep.a) || ' ' || (SELECT n FROM keep.a_count)",
        );
        let (count, recorded) = n.split_once(' ').expect("two numbers");
        assert_eq!(
            count, recorded,
            "the invariant count(a) = a_count.n holds in the VM"
        );
        assert_eq!(
            count.parse::<i64>().expect("number"),
            loaded.databases["site"]["keep.a"]
        );
        assert!(loaded.databases["site"]["keep.a"] > 0);
        nothing_mounted_under(&[dir.path(), &template]);
        host_sql(
            "postgres",
            "DROP DATABASE vmbuild_src_writer; DROP ROLE prod_writer;",
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_snapshot_exported_by_the_caller_is_dumped_and_counted() {
        if template_root().is_none() {
            return;
        }
        host_sql(
            "postgres",
            "DROP DATABASE IF EXISTS vmbuild_src_snap; DROP ROLE IF EXISTS prod_snap;
             CREATE ROLE prod_snap LOGIN PASSWORD 'snap-Secret-2231';
             CREATE DATABASE vmbuild_src_snap OWNER prod_snap;",
        );
        host_sql(
            "vmbuild_src_snap",
            "SET ROLE prod_snap; CREATE SCHEMA keep;
             CREATE TABLE keep.t AS SELECT generate_series(1, 10) AS i;",
        );
        let url_text = "postgresql://prod_snap:snap-Secret-2231@127.0.0.1:5432/vmbuild_src_snap";
        let (holder, conn) = tokio_postgres::connect(url_text, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        holder
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .expect("begin");
        let snapshot: String = holder
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .expect("export")
            .get(0);
        host_sql(
            "vmbuild_src_snap",
            "INSERT INTO keep.t SELECT generate_series(11, 15);",
        );
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let ctx = test_ctx(dir.path());
        let url = Secret::new("t", url_text);
        let dumped = dump(
            &DumpSpec {
                url: &url,
                schemas: &["keep".to_string()],
                exclude_table_data: &[],
                jobs: 2,
                snapshot: Some(snapshot),
            },
            dir.path(),
            &ctx,
        )
        .await
        .expect("dump");
        assert_eq!(
            dumped.row_counts["keep.t"], 10,
            "counted in the caller's snapshot"
        );
        let data = Command::new("pg_restore")
            .args(["--data-only", "--file=-"])
            .arg(dir.path().join("dump"))
            .output()
            .expect("pg_restore");
        let text = String::from_utf8_lossy(&data.stdout);
        let rows = text
            .split("FROM stdin;\n")
            .nth(1)
            .and_then(|rest| rest.split("\\.").next())
            .map(|block| block.lines().filter(|l| !l.is_empty()).count());
        assert_eq!(rows, Some(10), "dumped in the caller's snapshot");
        drop(holder);
        host_sql(
            "postgres",
            "DROP DATABASE vmbuild_src_snap WITH (FORCE); DROP ROLE prod_snap;",
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_template_without_a_cluster_gets_debian_configuration_in_the_layer() {
        let Some(template) = template_root() else {
            return;
        };
        // The template seen through an overlay that hides its cluster configuration.
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let (upper, work, merged) = (
            dir.path().join("u"),
            dir.path().join("w"),
            dir.path().join("m"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            template.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .expect("overlay");
        let major = find_major(&template).expect("major");
        let result = async {
            std::fs::remove_dir_all(merged.join("etc/postgresql").join(&major)).expect("hide the cluster");
            // A dump to load: the other tests' source would race; a tiny one from the host.
            host_sql("postgres", "DROP DATABASE IF EXISTS vmbuild_src_nocluster; CREATE DATABASE vmbuild_src_nocluster;");
            host_sql("vmbuild_src_nocluster", "CREATE SCHEMA keep; CREATE TABLE keep.t AS SELECT 1 AS i;");
            let dump_dir = dir.path().join("dump");
            let status = Command::new("runuser")
                .args(["-u", "postgres", "--", "pg_dump", "-Fd", "-n", "keep", "-f", "/tmp/vmbuild-nocluster-dump", "vmbuild_src_nocluster"])
                .status()
                .expect("pg_dump");
            assert!(status.success());
            std::fs::rename("/tmp/vmbuild-nocluster-dump", &dump_dir).or_else(|_| {
                Command::new("mv").arg("/tmp/vmbuild-nocluster-dump").arg(&dump_dir).status().map(|_| ())
            }).expect("move the dump");
            let ctx = test_ctx(dir.path());
            let layer = dir.path().join("layer");
            std::fs::create_dir(&layer).expect("mkdir");
            let password = Secret::new("t", "app-Pass-7777");
            let loaded = load(
                &LoadSpec { template_root: &merged, databases: &[LoadDatabase { name: "site", role: "webapp", password: &password, content: Content::Dump(&dump_dir) }], jobs: 1 },
                &layer,
                &ctx,
            )
            .await;
            (loaded, layer)
        }
        .await;
        nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH)
            .expect("unmount the overlay");
        host_sql("postgres", "DROP DATABASE vmbuild_src_nocluster;");
        let (loaded, layer) = result;
        let loaded = loaded.expect("load");
        assert_eq!(loaded.databases["site"]["keep.t"], 1);
        let conf = layer.join(format!("etc/postgresql/{major}/main"));
        let text = std::fs::read_to_string(conf.join("postgresql.conf")).expect("postgresql.conf");
        assert!(text.contains(&format!(
            "data_directory = '/var/lib/postgresql/{major}/main'"
        )));
        for name in [
            "pg_hba.conf",
            "pg_ident.conf",
            "start.conf",
            "pg_ctl.conf",
            "environment",
        ] {
            assert!(conf.join(name).is_file(), "{name}");
        }
        assert!(!layer
            .join(format!("var/lib/postgresql/{major}/main/postgresql.conf"))
            .exists());
        nothing_mounted_under(&[dir.path(), &template]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cancelled_load_stops_its_server_and_unmounts() {
        let Some(template) = template_root() else {
            return;
        };
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let ctx = test_ctx(dir.path());
        let empty_dump = dir.path().join("dump");
        std::fs::create_dir(&empty_dump).expect("mkdir");
        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).expect("mkdir");
        let major = find_major(&template).expect("major");
        let pid_file = layer.join(format!("var/lib/postgresql/{major}/main/postmaster.pid"));
        // Cancel as soon as the server accepts connections.
        let canceller = {
            let cancel = ctx.cancel.clone();
            let pid_file = pid_file.clone();
            tokio::spawn(async move {
                let mut pid = None;
                while pid.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // The postmaster's status line says `ready` (initdb's backend has no such line).
                    pid = std::fs::read_to_string(&pid_file)
                        .ok()
                        .filter(|t| t.lines().nth(7).map(str::trim) == Some("ready"))
                        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
                }
                cancel.cancel();
                pid
            })
        };
        let password = Secret::new("t", "app-Pass-4242");
        let err = load(
            &LoadSpec {
                template_root: &template,
                databases: &[LoadDatabase {
                    name: "site",
                    role: "webapp",
                    password: &password,
                    content: Content::Dump(&empty_dump),
                }],
                jobs: 1,
            },
            &layer,
            &ctx,
        )
        .await
        .expect_err("cancelled");
        let pid = canceller.await.expect("canceller").expect("the server ran");
        eprintln!("{err}");
        assert!(
            matches!(
                err,
                LoadError::Command {
                    source: StepError::Cancelled,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
            "the server still runs"
        );
        nothing_mounted_under(&[dir.path(), &template]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_load_leaves_nothing_mounted_or_running() {
        let Some(template) = template_root() else {
            return;
        };
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let ctx = test_ctx(dir.path());
        let bad = dir.path().join("bad-dump");
        std::fs::create_dir(&bad).expect("mkdir");
        std::fs::write(bad.join("toc.dat"), b"not a dump").expect("write");
        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).expect("mkdir");
        let password = Secret::new("t", "app-Pass-0001");
        let err = load(
            &LoadSpec {
                template_root: &template,
                databases: &[LoadDatabase {
                    name: "site",
                    role: "webapp",
                    password: &password,
                    content: Content::Dump(&bad),
                }],
                jobs: 1,
            },
            &layer,
            &ctx,
        )
        .await
        .expect_err("a corrupt dump fails");
        eprintln!("{err}");
        assert!(
            matches!(
                err,
                LoadError::Command {
                    step: "pg_restore",
                    ..
                }
            ),
            "{err}"
        );
        nothing_mounted_under(&[dir.path(), &template]);
        let major = find_major(&template).expect("major");
        let pid_file = layer.join(format!("var/lib/postgresql/{major}/main/postmaster.pid"));
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            let pid: i32 = text
                .lines()
                .next()
                .expect("pid")
                .trim()
                .parse()
                .expect("pid");
            assert!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
                "the server still runs"
            );
        }
        assert!(
            !grep("app-Pass-0001", dir.path()),
            "the password stayed somewhere"
        );
    }
}

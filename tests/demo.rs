//! End to end: the demo site (`examples/demo`) built from nothing against a "production"
//! PostgreSQL (examples/production/fixture.sh, read through a least-privilege export role), booted
//! by QA, which proves over HTTP that the site serves data from the clone, that no excluded schema
//! is in it, and that the community database is empty; the leak scan finds nothing, and an
//! independent search of the disk finds no production secret or user's data either. Then an
//! unchanged source keeps everything cached, a new release in production rebuilds from the dump
//! on, and `vmbuild diff` says what changed. Run when `VMBUILD_E2E=1` (`dev/test` sets it) as
//! root with the test PostgreSQL of `dev/test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::databases::{Fixture, NEVER_CLONED};
use crate::support::{copy_example, exported_manifest, running, Project};

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture's export role with a fresh password; the source URL for it.
fn export_role(fixture: &Fixture) -> (String, String) {
    use std::io::Write;
    let password = format!("Export-{}-{}", std::process::id(), rand::random::<u32>());
    let mut child = Command::new("runuser")
        .args(["-u", "postgres", "--", "bash"])
        .arg(repository_root().join("examples/production/export-role.sh"))
        .args(["--db", &fixture.db, "--role", "toxo_export_e2e"])
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    assert!(child.wait().unwrap().success(), "export-role.sh");
    let (_, host_and_db) = fixture.url.rsplit_once('@').unwrap();
    let url = format!("postgres://toxo_export_e2e:{password}@{host_and_db}");
    (url, password)
}

/// Run vmbuild with the source URL; `plan` and `apply` get the site's repository.
fn vmbuild(project: &Project, url: &str, args: &[&str]) -> crate::support::Run {
    let site_repo = format!("site_repo={}", repository_root().display());
    let mut all: Vec<&str> = args.to_vec();
    if matches!(args[0], "plan" | "apply" | "show") {
        all.extend(["-v", &site_repo]);
    }
    let output = project
        .command(&all)
        .env("TOXO_SOURCE_URL", url)
        .output()
        .unwrap();
    crate::support::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// How many times `needle` occurs in `file` (read in chunks: disks are gigabytes).
fn occurrences(file: &Path, needles: &[&str]) -> Vec<(String, usize)> {
    let output = Command::new("grep")
        .args(["-a", "-o", "-F"])
        .args(needles.iter().flat_map(|n| ["-e", n]))
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    needles
        .iter()
        .map(|n| (n.to_string(), text.lines().filter(|l| l == n).count()))
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// The store's metadata (records, refs, logs, build manifests), not its trees.
fn store_metadata(project: &Project) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for dir in ["actions", "refs", "logs", "blobs", "builds"] {
        for entry in walkdir::WalkDir::new(project.store().join(dir))
            .into_iter()
            .flatten()
        {
            if entry.file_type().is_file() {
                files.push((
                    entry.path().to_path_buf(),
                    std::fs::read(entry.path()).unwrap(),
                ));
            }
        }
    }
    files
}

#[test]
fn the_demo_site_serves_its_clone_and_ships_nothing_private() {
    if std::env::var_os("VMBUILD_E2E").is_none() {
        eprintln!("skipped: set VMBUILD_E2E=1 to build and boot the demo site");
        return;
    }
    let Some(fixture) = Fixture::new("demo") else {
        return;
    };
    let (url, password) = export_role(&fixture);
    let project = Project::new();
    copy_example(&project, "demo");

    let plan = vmbuild(&project, &url, &["plan", "site.hcl"]);
    assert_eq!(plan.code, 0, "{}", plan.transcript());
    assert!(
        plan.stdout
            .contains("schemas: apidb, apidbtuning, core, dots, genes, sres, study"),
        "{}",
        plan.stdout
    );
    // The commit the site is built from: the repository's HEAD when plan resolved it.
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repository_root())
        .output()
        .unwrap();
    let first = vmbuild(&project, &url, &["apply", "site.hcl"]);
    assert_eq!(first.code, 0, "{}", first.transcript());
    for done in [
        "sanitize.scan: done",
        "qa.qcow2: done",
        "database.load: done",
    ] {
        assert!(first.stderr.contains(done), "{done}:\n{}", first.stderr);
    }
    for secret in [password.as_str(), url.as_str()] {
        assert!(!first.stderr.contains(secret) && !first.stdout.contains(secret));
    }

    let output = project.path().join("output");
    let manifest = exported_manifest(&output);
    let step = |id: &str| {
        manifest["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in the manifest"))
            .clone()
    };
    assert_eq!(
        step("source.site")["params"]["commit"],
        String::from_utf8_lossy(&head.stdout).trim()
    );
    let rows = &step("database.load")["report"]["databases"]["toxodb"]["rows"];
    assert_eq!(
        rows["genes.gene"],
        serde_json::json!({ "source": 3000, "clone": 3000 })
    );
    assert!(rows.get("workflow.workflowstep").is_none());
    assert!(manifest["packages"]["apache2"].is_string());

    // What must never ship, searched for in the raw disk by another tool than vmbuild's scan.
    let shown = vmbuild(
        &project,
        &url,
        &["show", "template.toxo.disk", "-r", "site.hcl"],
    );
    let disk = shown
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("output:"))
        .and_then(|l| l.split('`').nth(1))
        .map(|folder| PathBuf::from(folder).join("disk.raw"))
        .unwrap_or_else(|| panic!("no disk in:\n{}", shown.transcript()));
    // (`userlogins5` is the community database's schema too, made empty by its scripts.)
    let mut never: Vec<&str> = NEVER_CLONED
        .iter()
        .copied()
        .filter(|s| *s != "userlogins5")
        .collect();
    never.extend([
        password.as_str(),
        "fixture private search",
        "loadhost1.internal.example.org",
        "demo-alignment-not-for-the-vm",
    ]);
    let found = occurrences(&disk, &never);
    assert!(found.is_empty(), "found in the disk: {found:?}");
    let raw = project.path().join("qcow2.raw");
    let converted = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(output.join("toxo.qcow2"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(converted.success());
    assert!(occurrences(&raw, &never).is_empty());
    // The site's own data is there, in the clone.
    assert!(!occurrences(&raw, &["TGME49_0000001"]).is_empty());
    let _ = std::fs::remove_file(&raw);
    for (path, bytes) in store_metadata(&project) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&password),
            "the password in {}",
            path.display()
        );
    }

    // Nothing changed: everything is cached.
    let again = vmbuild(&project, &url, &["plan", "site.hcl", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}", again.transcript());
    // A new password for the source: nothing is cloned again, but the image is scanned for it.
    let (url, _) = export_role(&fixture);
    let rotated = vmbuild(&project, &url, &["plan", "site.hcl", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_str(&rotated.stdout).unwrap();
    let running = running(&plan);
    assert_eq!(running, ["sanitize.scan"], "{}", rotated.stdout);

    // A new release in production (the site's QA checks still hold for it): the dump and what
    // follows it run; the template does not.
    fixture.sql(
        "INSERT INTO study.study (name, external_database_id) VALUES ('Oocyst sporulation', 2);
         UPDATE genes.gene SET product = 'ribosomal protein L7' WHERE id = 4;
         UPDATE apidb.instancemetainfo SET release = '69';",
    );
    let plan = vmbuild(&project, &url, &["plan", "site.hcl"]);
    assert!(
        plan.stdout.contains("parameter `fingerprint.rows` changed"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("cached  template.toxo.debootstrap"));
    let second = vmbuild(&project, &url, &["apply", "site.hcl", "-v", "release=69"]);
    assert_eq!(second.code, 0, "{}", second.transcript());
    let diff = vmbuild(&project, &url, &["diff", "-r", "site.hcl"]);
    assert_eq!(diff.code, 0, "{}", diff.transcript());
    assert!(
        diff.stdout.contains("rows of study.study: 2 → 3 (+1)"),
        "{}",
        diff.stdout
    );
    assert!(
        diff.stdout.contains("release: \"68\" → \"69\""),
        "{}",
        diff.stdout
    );
}

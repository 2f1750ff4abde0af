//! `vmbuild diff`: what changed between two builds' manifests, with the commits between two
//! revisions of a source read from its real repository.

use std::path::Path;

use crate::snapshot;
use crate::support::{self, Project};

/// Write `file` and commit it; the commit's id, the same on every run.
fn commit(repo: &Path, file: &str, text: &str, message: &str) -> String {
    support::commit(repo, &[(file, text)], message)
}

fn manifest(project: &Project, release: &str, commit: &str, newer: bool) -> serde_json::Value {
    let mut rows = serde_json::json!({ "genes.gene": 3000, "core.algorithm": 10 });
    let mut schemas = serde_json::json!(["apidb", "core", "genes"]);
    let mut packages =
        serde_json::json!({ "nginx-light": "1.22.1-9", "openssl": "3.0.15-1~deb12u1" });
    if newer {
        rows = serde_json::json!({ "genes.gene": 3100, "core.algorithm": 10, "study.study": 2 });
        schemas = serde_json::json!(["apidb", "core", "genes", "study"]);
        packages = serde_json::json!({ "nginx-light": "1.22.1-9", "openssl": "3.0.17-1~deb12u2", "postgresql-15": "15.14-0+deb12u1" });
    }
    serde_json::json!({
        "vmbuild": "0.1.0",
        "recipe": "site.hcl",
        "recipe_dir": project.path(),
        "finished": if newer { "2026-12-01T10:00:00Z" } else { "2026-06-01T10:00:00Z" },
        "variables": { "release": release },
        "steps": [
            {
                "id": "source.site", "kind": "source", "key": null, "output": null,
                "params": { "git": "repo", "commit": commit, "submodules": false, "build": [], "env": {} },
                "inputs": {}, "tools": {}
            },
            {
                "id": "database.toxo.dump", "kind": "pg_dump", "key": null, "output": null,
                "params": { "source": "env(\"TOXO_SOURCE_URL\")", "schemas": schemas,
                            "fingerprint": { "query": "SELECT release FROM apidb.instancemetainfo",
                                             "rows": if newer { "bbbbbbbbbbbb" } else { "aaaaaaaaaaaa" } } },
                "inputs": {}, "tools": {},
                "report": { "schemas": schemas, "excluded": [], "rows": rows, "bytes": 1000 }
            },
            {
                "id": "template.web.provision.0", "kind": "provision_shell", "key": null, "output": null,
                "params": { "inline": [format!("echo release {release}")] },
                "inputs": {}, "tools": {}
            },
            {
                "id": "template.web.disk", "kind": "disk", "key": null, "output": null,
                "params": { "size": 3221225472u64 }, "inputs": {}, "tools": {}
            }
        ],
        "packages": packages,
        "artifacts": { "web.qcow2": if newer { "2222222222222222222222" } else { "1111111111111111111111" } }
    })
}

#[test]
fn diff_says_what_changed_between_two_builds_with_the_commits_between() {
    let project = Project::new();
    let repo = project.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    support::git(&repo, &["init", "-q", "-b", "main"]);
    let first = commit(&repo, "index.html", "one\n", "Site for release 68");
    commit(&repo, "gene.html", "gene\n", "Gene pages show orthologs");
    let last = commit(&repo, "index.html", "two\n", "Release 69");
    let before = manifest(&project, "68", &first, false);
    let after = manifest(&project, "69", &last, true);
    project.file("old/manifest.json", &before.to_string());
    project.file("new/manifest.json", &after.to_string());

    let run = project.run(&["diff", "old", "new/manifest.json"]).success();
    snapshot!(&project, "diff-text", run.transcript());
    assert!(run.stdout.contains("2 commits:"), "{}", run.stdout);
    assert!(run.stdout.contains("Gene pages show orthologs"));

    let json = project
        .run(&["diff", "old", "new", "--format", "json", "--no-log"])
        .success();
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["databases"][0]["schemas_added"][0], "study");
    assert_eq!(value["sources"][0]["log"], "not_read");

    // The same build twice: nothing changed.
    let same = project.run(&["diff", "new", "new"]).success();
    assert!(same.stdout.contains("Nothing changed."), "{}", same.stdout);
}

#[test]
fn diff_reads_the_builds_the_store_keeps_of_a_recipe() {
    let project = Project::new();
    project.recipe("step \"a\" {\n  command = [\"true\"]\n}\n");
    let none = project.run(&["diff", "-r", "site.hcl"]).code(1);
    assert!(
        none.stderr
            .contains("the store keeps 0 builds of `site.hcl`: a diff needs two"),
        "{}",
        none.stderr
    );
    let store = engine::store::Store::open(&project.store()).unwrap();
    let ns = engine::store::Store::namespace(&project.path().join("site.hcl"));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    for (release, newer, when) in [
        ("68", false, "2026-06-01T10:00:00Z"),
        ("69", true, "2026-12-01T10:00:00Z"),
    ] {
        let text = manifest(&project, release, commit, newer).to_string();
        store
            .record_build(&ns, when.parse().unwrap(), text.as_bytes())
            .unwrap();
    }
    let run = project
        .run(&["diff", "-r", "site.hcl", "--no-log"])
        .success();
    assert!(
        run.stdout.contains("release: \"68\" → \"69\""),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("rows of genes.gene: 3000 → 3100 (+100)"));
    let bad = project.run(&["diff", "site.hcl", "new"]).code(1);
    assert!(
        bad.stderr.contains("is not a vmbuild build manifest")
            || bad.stderr.contains("cannot read"),
        "{}",
        bad.stderr
    );
}

//! `forbid_software`: bad globs and a recipe without a template are diagnostics at the text;
//! the rules enter the disk step's key (and plan's details) only when the block is there; and
//! (as root, no VM booted) an imported image with a planted package, then a layer with a
//! planted path, fail apply by name and export nothing, while the clean image passes.

use std::path::Path;

use crate::sanitize::{base_image, base_tree};
use crate::snapshot;
use crate::support::{step, template_tools, Project};

#[test]
fn bad_globs_are_refused_at_the_glob() {
    let project = Project::new();
    project.recipe(
        r#"template "toxo" {
  debootstrap { suite = "bookworm" }
}

forbid_software {
  packages = ["signalp*", "Oracle-Java*", "tmhmm["]
  paths    = ["**/wublast/**", "/opt/{signalp", "/"]
}
"#,
    );
    let run = project.run(&["validate", "site.hcl"]).code(1);
    snapshot!(
        &project,
        "diagnostic-forbid-software-globs",
        run.transcript()
    );
}

#[test]
fn forbid_software_without_a_template_is_an_error() {
    let project = Project::new();
    project.recipe("forbid_software {\n  packages = [\"signalp*\"]\n}\n");
    let run = project.run(&["plan", "site.hcl"]).code(1);
    snapshot!(
        &project,
        "diagnostic-forbid-software-no-template",
        run.transcript()
    );
}

const TEMPLATE: &str = r#"template "toxo" {
  debootstrap { suite = "bookworm" }
}
"#;

const RULES: &str = r#"
forbid_software {
  packages = ["signalp*", "tmhmm*", "oracle-java*"]
  paths    = ["**/wublast/**"]
}
"#;

#[test]
fn the_rules_enter_the_disk_key_only_when_the_block_is_there() {
    if !template_tools(&[]) {
        eprintln!("skipped: planning a template needs debootstrap, mkfs.ext4 and grub-mkimage");
        return;
    }
    let project = Project::new();
    project.recipe(TEMPLATE);
    let without = project.plan_json();
    project.recipe(&format!("{TEMPLATE}{RULES}"));
    let with = project.plan_json();
    let own = |plan: &serde_json::Value, id: &str| step(plan, id)["own_digest"].clone();
    assert_ne!(
        own(&without, "template.toxo.disk"),
        own(&with, "template.toxo.disk")
    );
    assert_eq!(
        own(&without, "template.toxo.debootstrap"),
        own(&with, "template.toxo.debootstrap")
    );
    assert_eq!(
        step(&with, "template.toxo.disk")["details"],
        serde_json::json!([
            "forbid_software packages: signalp*, tmhmm*, oracle-java*",
            "forbid_software paths: **/wublast/**"
        ])
    );
    assert!(step(&without, "template.toxo.disk")["details"]
        .as_array()
        .is_none_or(|d| d.is_empty()));
    let shown = project
        .run(&["show", "template.toxo.disk", "-r", "site.hcl"])
        .success();
    assert!(
        shown.stdout.contains("forbid_software") && shown.stdout.contains("**/wublast/**"),
        "{}",
        shown.stdout
    );
}

/// A dpkg status file in `tree` with these packages: (name, version, status).
fn dpkg_status(tree: &Path, packages: &[(&str, &str, &str)]) {
    let mut text = String::new();
    for (name, version, status) in packages {
        text.push_str(&format!(
            "Package: {name}\nStatus: {status}\nPriority: optional\nSection: science\nInstalled-Size: 100\nMaintainer: Nobody <nobody@example.org>\nArchitecture: amd64\nVersion: {version}\nDescription: {name}, for a test\n\n"
        ));
    }
    let dir = tree.join("var/lib/dpkg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("status"), text).unwrap();
}

/// `base.raw`: the sanitize tests' base image, with these packages in its dpkg database.
fn image_with_packages(project: &Project, packages: &[(&str, &str, &str)]) {
    let tree = project.path().join("base-tree");
    let _ = std::fs::remove_dir_all(&tree);
    base_tree(&tree);
    dpkg_status(&tree, packages);
    base_image(&tree, &project.path().join("base.raw"));
    std::fs::remove_dir_all(&tree).unwrap();
}

fn recipe(layer: &str) -> String {
    format!(
        r#"template "toxo" {{
  image {{
    path   = "base.raw"
    format = "raw"
  }}
  disk_size = "256M"
}}
{layer}{RULES}
output "qcow2" {{}}
"#
    )
}

/// A layer that puts WU-BLAST into the VM.
const WUBLAST_LAYER: &str = r#"
step "blast" {
  command = ["sh", "-c", "printf 'WU-BLAST 2.0\n' > $VMBUILD_OUT/blastall"]
  into    = "/opt/wublast"
}
"#;

const BASE_FILES: (&str, &str, &str) = ("base-files", "12.4+deb12u5", "install ok installed");
const BLAST: (&str, &str, &str) = ("ncbi-blast+", "2.12.0+ds-3+b1", "install ok installed");

#[test]
fn forbidden_software_fails_apply_by_name_and_exports_nothing_and_a_clean_image_passes() {
    if !nix::unistd::Uid::effective().is_root()
        || !template_tools(&["qemu-img", "debugfs", "sfdisk"])
    {
        eprintln!("skipped: importing an image needs root (a loop device), and the disk tools");
        return;
    }
    let project = Project::new();
    let disk_log = || {
        project
            .run(&["log", "template.toxo.disk", "-r", "site.hcl"])
            .success()
            .stdout
    };

    // An image where signalp is installed; tmhmm was removed, its configuration left (`rc`).
    image_with_packages(
        &project,
        &[
            BASE_FILES,
            BLAST,
            ("signalp", "6.0", "install ok installed"),
            ("tmhmm", "2.0c", "deinstall ok config-files"),
        ],
    );
    project.recipe(&recipe(""));
    let run = project.run(&["apply", "site.hcl"]);
    assert_eq!(run.code, 1, "{}", run.transcript());
    for expected in [
        "`template.toxo.disk` failed",
        "software that must not be redistributed is in the VM (1 match); no disk is made:",
        "  - package `signalp` 6.0 matches forbid_software.packages[0] \"signalp*\"",
    ] {
        assert!(
            run.stderr.contains(expected),
            "no `{expected}` in:\n{}",
            run.stderr
        );
    }
    // The removed tmhmm is in the log's last lines, but not among the violations.
    assert!(
        !run.stderr.contains("  - package `tmhmm`"),
        "{}",
        run.stderr
    );
    assert!(
        !project.path().join("output").exists(),
        "artifacts were exported"
    );
    let log = disk_log();
    assert!(
        log.contains(
            "package `tmhmm` 2.0c matches forbid_software.packages[1] \"tmhmm*\", but is removed"
        ),
        "{log}"
    );
    assert!(log.contains("forbid_software: 4 packages and"), "{log}");

    // signalp removed from the image, but a layer brings WU-BLAST.
    image_with_packages(
        &project,
        &[
            BASE_FILES,
            BLAST,
            ("signalp", "6.0", "deinstall ok config-files"),
        ],
    );
    project.recipe(&recipe(WUBLAST_LAYER));
    let run = project.run(&["apply", "site.hcl"]);
    assert_eq!(run.code, 1, "{}", run.transcript());
    assert!(
        run.stderr.contains(
            "  - `/opt/wublast/blastall` matches forbid_software.paths[0] \"**/wublast/**\""
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("  - package `"), "{}", run.stderr);
    assert!(!project.path().join("output").exists());

    // Without the layer, the image is clean: apply passes and exports the disk.
    project.recipe(&recipe(""));
    let run = project.run(&["apply", "site.hcl"]);
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert!(project.path().join("output/toxo.qcow2").exists());
    let log = disk_log();
    assert!(
        log.contains("forbid_software: 3 packages and") && log.contains("checked, none forbidden"),
        "{log}"
    );
    // The package list the disk step records is read from the same query.
    let manifest = crate::support::exported_manifest(&project.path().join("output"));
    assert_eq!(
        manifest["packages"]["ncbi-blast+"], "2.12.0+ds-3+b1",
        "{manifest}"
    );
}

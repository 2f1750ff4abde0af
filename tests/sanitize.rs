//! `sanitize` blocks: short forbidden strings and unreadable forbid files are diagnostics at
//! their entries; forbidden values appear in no plan, `show`, saved plan, log or action record;
//! a new value rescans; and (as root, no VM booted) a leak fails apply and exports nothing,
//! while a scrubbed image passes and its scan report is in the manifest.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::snapshot;
use crate::support::{running, step, template_tools, Project, Run};

const PASSWORD: &str = "Tox0-db-Pa55word!";
const HOST: &str = "db1.production.example.org";
const EMAIL: &str = "alice.curator@example.edu";

fn run_with(project: &Project, password: &str, args: &[&str]) -> Run {
    let output = project
        .command(args)
        .env("LEAK_PW", password)
        .output()
        .expect("run vmbuild");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, HOST, EMAIL, "another-Pa55word"] {
        assert!(
            !text.contains(secret),
            "{what} holds a forbidden value:\n{text}"
        );
    }
}

/// The store's files that are about steps rather than their outputs: action records, refs,
/// logs and blobs (logs). The outputs (trees) hold the image, which may well hold a secret.
fn assert_no_secret_in_store_metadata(project: &Project) {
    let store = project.store();
    let mut checked = 0;
    for (path, bytes) in project.store_files() {
        let relative = path.strip_prefix(&store).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        if ["actions", "refs", "logs", "blobs"]
            .iter()
            .any(|d| first == *d)
        {
            assert_no_secret(
                &relative.display().to_string(),
                &String::from_utf8_lossy(&bytes),
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no store metadata to check");
}

const TEMPLATE: &str = r#"
template "toxo" {
  debootstrap { suite = "bookworm" }
}
"#;

#[test]
fn a_short_forbidden_string_is_refused_at_its_entry() {
    let project = Project::new();
    project.recipe(&format!(
        "{TEMPLATE}
sanitize {{
  operations = [\"shell-history\"]
  forbid     = [env(\"LEAK_PW\"), \"abc\"]
}}
"
    ));
    let run = run_with(&project, "12", &["plan", "site.hcl"]).code(1);
    assert!(!run.stderr.contains("12\n") && !run.stderr.contains("\"12\""));
    snapshot!(&project, "diagnostic-forbid-too-short", run.transcript());
}

#[test]
fn an_unreadable_forbid_file_is_refused_at_its_entry() {
    let project = Project::new();
    project.file("emails.txt", &format!("{EMAIL}\nab\n"));
    project.recipe(&format!(
        "{TEMPLATE}
sanitize {{
  forbid_files = [\"emails.txt\", \"missing.txt\"]
}}
"
    ));
    let run = project.run(&["plan", "site.hcl"]).code(1);
    assert_no_secret("the diagnostic", &run.stderr);
    snapshot!(&project, "diagnostic-forbid-file", run.transcript());
}

#[test]
fn sanitize_without_a_template_is_an_error() {
    let project = Project::new();
    project.recipe("sanitize {\n  forbid = [\"long enough\"]\n}\n");
    let run = project.run(&["plan", "site.hcl"]).code(1);
    assert!(
        run.stderr
            .contains("`sanitize` scrubs and searches a VM, and the recipe has no template"),
        "{}",
        run.stderr
    );
}

#[test]
fn forbidden_values_appear_in_no_plan_and_a_new_value_rescans() {
    if !template_tools(&["qemu-img", "debugfs", "sfdisk"]) {
        eprintln!("skipped: planning a template needs debootstrap, mkfs.ext4, grub-mkimage, qemu-img, debugfs and sfdisk");
        return;
    }
    let project = Project::new();
    project.file("emails.txt", &format!("{EMAIL}\n"));
    project.recipe(&format!(
        r#"{TEMPLATE}
sanitize {{
  operations   = ["shell-history", "ssh-host-keys", "logs", "machine-id"]
  forbid       = [env("LEAK_PW"), "{HOST}"]
  forbid_files = ["emails.txt"]
}}
output "qcow2" {{ compress = true }}
output "ova" {{}}
qa {{
  http "home" {{ path = "/" }}
}}
"#
    ));
    for format in ["text", "json", "markdown"] {
        let run = run_with(
            &project,
            PASSWORD,
            &["plan", "site.hcl", "--format", format],
        )
        .success();
        assert_no_secret(&format!("plan --format {format}"), &run.stdout);
        assert_no_secret("plan's stderr", &run.stderr);
    }
    let shown = run_with(
        &project,
        PASSWORD,
        &["show", "sanitize.scan", "-r", "site.hcl"],
    )
    .success();
    assert_no_secret("show", &shown.stdout);
    assert!(shown.stdout.contains("keyed:"), "{}", shown.stdout);
    run_with(
        &project,
        PASSWORD,
        &["plan", "site.hcl", "--out", "plan.json"],
    )
    .success();
    assert_no_secret(
        "the saved plan",
        &std::fs::read_to_string(project.path().join("plan.json")).unwrap(),
    );

    let plan = |password: &str| -> serde_json::Value {
        let run = run_with(
            &project,
            password,
            &["plan", "site.hcl", "--format", "json"],
        )
        .success();
        serde_json::from_str(&run.stdout).unwrap()
    };
    let first = plan(PASSWORD);
    let scan = step(&first, "sanitize.scan");
    assert_eq!(scan["kind"], "leak-scan");
    assert_eq!(
        scan["depends_on"],
        serde_json::json!(["template.toxo.disk", "output.qcow2", "output.ova"])
    );
    assert_eq!(
        scan["details"][0],
        "forbids 3 strings: env(\"LEAK_PW\"), forbid[1], 1 line of `emails.txt`"
    );
    // QA boots the outputs beside the scan, not after it.
    assert_eq!(
        step(&first, "qa.qcow2")["depends_on"],
        serde_json::json!(["output.qcow2"])
    );
    // A new password or a new line in a forbid file rescans; nothing else changes.
    let second = plan("another-Pa55word");
    let own = |plan: &serde_json::Value, id: &str| step(plan, id)["own_digest"].clone();
    assert_ne!(own(&first, "sanitize.scan"), own(&second, "sanitize.scan"));
    assert_eq!(
        own(&first, "template.toxo.disk"),
        own(&second, "template.toxo.disk")
    );
    project.file(
        "emails.txt",
        &format!("{EMAIL}\nbob.annotator@example.edu\n"),
    );
    let third = plan(PASSWORD);
    assert_ne!(own(&first, "sanitize.scan"), own(&third, "sanitize.scan"));
    // A targeted output brings the scan that vouches for it, and what the scan reads.
    let targeted = run_with(
        &project,
        PASSWORD,
        &[
            "plan",
            "site.hcl",
            "--format",
            "json",
            "--target",
            "output.qcow2",
        ],
    )
    .success();
    let targeted: serde_json::Value = serde_json::from_str(&targeted.stdout).unwrap();
    let ids: Vec<&str> = targeted["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"sanitize.scan") && ids.contains(&"output.ova"),
        "{ids:?}"
    );
    assert!(!ids.contains(&"qa.qcow2"), "{ids:?}");
}

/// A root tree that runs the template's `system` step (the host's `sh` and a stand-in for
/// debconf) and makes a disk (a kernel file), with something for each sanitize operation to
/// remove: each holds a forbidden value.
pub(crate) fn base_tree(tree: &Path) {
    let copy = |from: &Path| {
        let to = tree.join(from.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    };
    copy(Path::new("/bin/sh"));
    let ldd = Command::new("ldd").arg("/bin/sh").output().unwrap();
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            copy(Path::new(word));
        }
    }
    let write = |path: &str, text: &str| {
        let full = tree.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    };
    write(
        "usr/bin/debconf-set-selections",
        "#!/bin/sh\nwhile read -r line; do :; done\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tree.join("usr/bin/debconf-set-selections"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write("boot/vmlinuz-6.1.0-99-amd64", "not really a kernel\n");
    write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    write(
        "root/.bash_history",
        &format!("mysql -u root -p{PASSWORD}\n"),
    );
    write("var/log/app.log", &format!("mail sent to {EMAIL}\n"));
    write("tmp/notes", &format!("dump from {HOST}\n"));
    write(
        "etc/ssh/ssh_host_ed25519_key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    );
}

/// A 64 MiB raw image with one Linux partition holding `tree`.
pub(crate) fn base_image(tree: &Path, image: &Path) {
    let file = std::fs::File::create(image).unwrap();
    file.set_len(64 << 20).unwrap();
    drop(file);
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q"])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-E", "offset=1048576", "-d"])
        .arg(tree)
        .arg(image)
        .arg(((63u64 << 20) / 4096).to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn leaky_recipe(config: &str) -> String {
    format!(
        r#"
template "toxo" {{
  image {{
    path   = "base.raw"
    format = "raw"
  }}
  disk_size = "256M"
}}

step "config" {{
  command = ["sh", "-c", "printf '%s\n' \"$CONFIG\" > $VMBUILD_OUT/config.php"]
  env     = {{ CONFIG = {config} }}
  into    = "/srv/app"
}}

sanitize {{
  operations   = ["shell-history", "ssh-host-keys", "logs", "machine-id", "apt-cache", "provisioning-leftovers", "tmp-files"]
  forbid       = [env("LEAK_PW"), "{HOST}"]
  forbid_files = ["emails.txt"]
}}

output "qcow2" {{
  compress = true
}}

output "ova" {{
  name = "ToxoDB-1"
}}

output "libvirt" {{
  name        = "toxo-libvirt"
  domain_type = "qemu"
}}
"#
    )
}

#[test]
fn a_leak_fails_apply_and_exports_nothing_and_a_scrubbed_image_passes() {
    if !nix::unistd::Uid::effective().is_root()
        || !template_tools(&["qemu-img", "debugfs", "sfdisk"])
    {
        eprintln!("skipped: importing an image needs root (a loop device), and the disk tools");
        return;
    }
    let project = Project::new();
    let tree = project.path().join("base-tree");
    base_tree(&tree);
    base_image(&tree, &project.path().join("base.raw"));
    std::fs::remove_dir_all(&tree).unwrap();
    project.file(
        "emails.txt",
        &format!("bob.annotator@example.edu\n{EMAIL}\n"),
    );
    // The layer writes the password into the VM: the scan finds it, in the disk and in every
    // output, and nothing is exported.
    project.recipe(&leaky_recipe(
        "\"<?php $password = '${env(\"LEAK_PW\")}';\"",
    ));
    let run = run_with(&project, PASSWORD, &["apply", "site.hcl"]);
    assert_eq!(run.code, 1, "{}", run.transcript());
    assert_no_secret("apply's output", &format!("{}{}", run.stdout, run.stderr));
    for expected in [
        "`sanitize.scan` failed",
        "env(\"LEAK_PW\") in `disk.raw` (template.toxo.disk): file `/srv/app/config.php`",
        "env(\"LEAK_PW\") in `ToxoDB-1.ova` member `ToxoDB-1-disk1.vmdk` (output.ova) (as raw): file `/srv/app/config.php`",
        "env(\"LEAK_PW\") in `toxo.qcow2` (output.qcow2) (as raw): file `/srv/app/config.php`",
    ] {
        assert!(run.stderr.contains(expected), "no `{expected}` in:\n{}", run.stderr);
    }
    // Only the layer's leak: the history, log and temporary file were scrubbed.
    for rule in ["forbid[1] in", "forbid_files \"emails.txt\" line"] {
        assert!(!run.stderr.contains(rule), "{}", run.stderr);
    }
    assert!(
        !project.path().join("output").exists(),
        "artifacts were exported"
    );
    let log = run_with(
        &project,
        PASSWORD,
        &["log", "sanitize.scan", "-r", "site.hcl"],
    )
    .success();
    assert_no_secret("the scan's log", &log.stdout);
    assert!(
        log.stdout.contains("found: env(\"LEAK_PW\")"),
        "{}",
        log.stdout
    );
    let disk_log = run_with(
        &project,
        PASSWORD,
        &["log", "template.toxo.disk", "-r", "site.hcl"],
    )
    .success();
    for line in [
        "sanitize shell-history: removed 1 file",
        "sanitize ssh-host-keys: removed 1 file",
        "sanitize logs: removed 0 files, emptied 1",
        "sanitize tmp-files: removed 1 file",
    ] {
        assert!(
            disk_log.stdout.contains(line),
            "no `{line}` in:\n{}",
            disk_log.stdout
        );
    }
    assert_no_secret_in_store_metadata(&project);

    // Fixed: the configuration reads the password at run time. Apply passes and exports, and
    // the manifest carries the scan's report.
    project.recipe(&leaky_recipe(
        "\"<?php $password = getenv('DB_PASSWORD');\"",
    ));
    let run = run_with(&project, PASSWORD, &["apply", "site.hcl"]);
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert_no_secret("apply's output", &format!("{}{}", run.stdout, run.stderr));
    let output: PathBuf = project.path().join("output");
    for file in [
        "toxo.qcow2",
        "ToxoDB-1.ova",
        "toxo-libvirt.xml",
        "manifest.json",
    ] {
        assert!(output.join(file).exists(), "no {file} exported");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("manifest.json")).unwrap()).unwrap();
    let scan = manifest["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "sanitize.scan")
        .expect("the scan in the manifest");
    assert_eq!(scan["report"]["findings"], 0);
    assert_eq!(scan["report"]["patterns"], 4);
    assert!(scan["report"]["bytes_scanned"].as_u64().unwrap() >= 3 * (256u64 << 20));
    assert_no_secret("the manifest", &serde_json::to_string(&manifest).unwrap());
    assert_no_secret_in_store_metadata(&project);

    // Cached; a new password rescans, and only the scan reruns.
    assert!(
        run_with(
            &project,
            PASSWORD,
            &["plan", "site.hcl", "--detailed-exitcode"]
        )
        .code
            == 0
    );
    let plan = run_with(
        &project,
        "another-Pa55word",
        &["plan", "site.hcl", "--format", "json"],
    )
    .success();
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let to_run = running(&plan);
    assert_eq!(to_run, ["sanitize.scan"]);
}

//! End to end: the VM example is built from nothing with real debootstrap, GRUB, qemu-img and
//! QEMU; QA boots the qcow2 and the OVA's disk and checks the page over HTTP; a late change
//! rebuilds only what follows it; the OVA imports with virt-v2v. Run when `VMBUILD_E2E=1`
//! (`dev/test` sets it): it needs root, the packages of `dev/setup`, and about ten minutes.

use std::process::Command;

use crate::remote::Builder;
use crate::support::garage::Garage;
use crate::support::{copy_example, exported_manifest, Project};

fn enabled() -> bool {
    if std::env::var_os("VMBUILD_E2E").is_some() {
        return true;
    }
    eprintln!("skipped: set VMBUILD_E2E=1 to build and boot a real VM");
    false
}

fn action_of(plan: &serde_json::Value, id: &str) -> String {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {plan}"))["action"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_vm_example_builds_boots_and_rebuilds_only_what_changed() {
    if !enabled() {
        return;
    }
    let project = Project::new();
    copy_example(&project, "vm");

    let first = project.run(&["apply", "site.hcl"]);
    assert_eq!(first.code, 0, "{}", first.transcript());
    for check in ["qa.qcow2: done", "qa.ova: done"] {
        assert!(first.stderr.contains(check), "{check}:\n{}", first.stderr);
    }
    let output = project.path().join("output");
    for file in [
        "web.qcow2",
        "vmbuild-demo-1.ova",
        "SHA256SUMS",
        "manifest.json",
    ] {
        assert!(
            output.join(file).is_file(),
            "`{file}` is missing from output/"
        );
    }
    let manifest = exported_manifest(&output);
    assert!(
        manifest["packages"]["nginx-light"].is_string(),
        "the package list is recorded"
    );
    assert!(manifest["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["key"].is_string()));

    // Nothing changed: nothing runs.
    project
        .run(&["plan", "site.hcl", "--detailed-exitcode"])
        .code(0);
    let project = shared_through_a_remote_store(project);

    // A late change: the second provisioner. Everything before it stays cached.
    let recipe = std::fs::read_to_string(project.path().join("site.hcl")).unwrap();
    project.recipe(&recipe.replace(
        "echo 'release ${var.release}' > /var/www/html/release.txt",
        "echo 'release ${var.release} (rebuilt)' > /var/www/html/release.txt",
    ));
    let plan = project.plan_json();
    for cached in [
        "template.web.debootstrap",
        "template.web.system",
        "template.web.provision.0",
    ] {
        assert_eq!(action_of(&plan, cached), "cached", "{cached}");
    }
    for run in [
        "template.web.provision.1",
        "template.web.disk",
        "output.qcow2",
        "output.ova",
        "qa.qcow2",
        "qa.ova",
    ] {
        assert_eq!(action_of(&plan, run), "run", "{run}");
    }
    let second = project.run(&["apply", "site.hcl"]);
    assert_eq!(second.code, 0, "{}", second.transcript());
    assert!(
        second.stderr.contains("template.web.debootstrap: cached"),
        "{}",
        second.stderr
    );
    assert!(!second.stderr.contains("template.web.debootstrap: started"));

    // A libvirt output, defined in a real libvirt daemon: only the new output runs.
    let _daemons = start_libvirtd();
    let with_libvirt = format!("{recipe}\noutput \"libvirt\" {{\n  domain_type = \"qemu\"\n}}\n");
    project.recipe(&with_libvirt);
    let plan = project.plan_json();
    assert_eq!(action_of(&plan, "template.web.disk"), "cached");
    assert_eq!(action_of(&plan, "output.libvirt"), "run");
    let defined = project.run(&["apply", "site.hcl", "--libvirt-uri", "qemu:///system"]);
    assert_eq!(defined.code, 0, "{}", defined.transcript());
    assert!(
        defined
            .stderr
            .contains("domain `web` defined in `qemu:///system`"),
        "{}",
        defined.stderr
    );
    let xml = output.join("web.xml");
    let validate = Command::new("virt-xml-validate")
        .arg(&xml)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let info = Command::new("virsh")
        .args(["-c", "qemu:///system", "dominfo", "web"])
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let _ = Command::new("virsh")
        .args(["-c", "qemu:///system", "undefine", "web"])
        .output();

    // A failing provisioner shows its output and exit code, and commits nothing.
    project.recipe(&recipe.replace(
        "provision \"shell\" {\n    script = \"provision/site.sh\"\n  }",
        "provision \"shell\" {\n    script = \"provision/site.sh\"\n  }\n\n  provision \"shell\" {\n    inline = [\"echo about to fail\", \"exit 3\"]\n  }",
    ));
    let failed = project.run(&["apply", "site.hcl"]).code(1);
    assert!(failed.stderr.contains("exit code 3"), "{}", failed.stderr);
    let log = project
        .run(&["log", "template.web.provision.1", "-r", "site.hcl"])
        .success();
    assert!(log.stdout.contains("about to fail"), "{}", log.stdout);
    project.run(&["store", "verify"]).success();

    // A template imported from the qcow2 just built: the site's files are in its tree.
    let imported = Project::new();
    let qcow2 = output.join("web.qcow2");
    imported.recipe(&format!(
        "template \"again\" {{\n  image {{\n    path = \"{}\"\n  }}\n}}\n",
        qcow2.display()
    ));
    let run = imported.run(&["apply", "site.hcl"]);
    assert_eq!(run.code, 0, "{}", run.transcript());
    let tree = imported.output_tree("template.again.import");
    let page = std::fs::read_to_string(tree.join("var/www/html/index.html")).unwrap();
    assert!(page.contains("Hello from a VM built by vmbuild"));
    assert!(
        tree.join("var/www/html/build-info.txt").exists(),
        "the layer was in the disk"
    );

    // The OVA imports as VMware and VirtualBox users' tools would read it.
    if which("virt-v2v") {
        let ova = output.join("vmbuild-demo-1.ova");
        let import = Command::new("virt-v2v")
            .args(["-i", "ova"])
            .arg(&ova)
            .args(["-o", "null"])
            .env("LIBGUESTFS_BACKEND", "direct")
            .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "virt-v2v could not import the OVA:\n{}\n{}",
            String::from_utf8_lossy(&import.stdout),
            String::from_utf8_lossy(&import.stderr)
        );
    } else {
        eprintln!("virt-v2v is not installed: the OVA import was not tried");
    }
}

/// Builder A (`project`, built) shares its outputs through a remote store: its next apply runs
/// nothing and uploads everything. Builder B, with an empty store, plans every step cached
/// (remote), applies without running a single step, and exports images with the same digests.
/// Returns A's project, with no remote configured for what follows.
fn shared_through_a_remote_store(project: Project) -> Project {
    let Some(garage) = Garage::start() else {
        return project;
    };
    let a = Builder::of(project, &garage, "e2e", Some("builder-a"), &[]);
    let pushed = a.vmbuild(&["apply", "site.hcl"]).success();
    assert!(!pushed.stderr.contains(": started"), "{}", pushed.stderr);
    assert!(
        pushed
            .stderr
            .contains("output.qcow2: uploaded to the remote store"),
        "{}",
        pushed.stderr
    );

    let fresh = Project::new();
    copy_example(&fresh, "vm");
    let b = Builder::of(
        fresh,
        &garage,
        "e2e",
        None,
        &[a.public_key.as_deref().unwrap()],
    );
    let planned = b
        .vmbuild(&["plan", "site.hcl", "--format", "json"])
        .success();
    let plan: serde_json::Value = serde_json::from_str(&planned.stdout).unwrap();
    for step in plan["steps"].as_array().unwrap() {
        assert!(
            step["action"] == "cached" && step["remote"] == true,
            "{}: {step}",
            step["id"]
        );
    }
    let started = std::time::Instant::now();
    let applied = b.vmbuild(&["apply", "site.hcl"]).success();
    eprintln!(
        "builder B applied the example from the remote store in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(!applied.stderr.contains(": started"), "{}", applied.stderr);
    assert!(
        applied
            .stderr
            .contains("output.qcow2: downloaded from the remote store"),
        "{}",
        applied.stderr
    );
    let sums =
        |dir: &std::path::Path| std::fs::read_to_string(dir.join("output/SHA256SUMS")).unwrap();
    assert_eq!(sums(b.project.path()), sums(a.project.path()));
    assert!(sums(a.project.path()).contains("web.qcow2"));
    // The manifest records the same steps, keys and packages, from the signed records.
    let (ma, mb) = (
        exported_manifest(&a.project.path().join("output")),
        exported_manifest(&b.project.path().join("output")),
    );
    assert_eq!(ma["packages"], mb["packages"]);
    assert_eq!(ma["artifacts"], mb["artifacts"]);
    b.vmbuild(&["store", "verify"]).success();
    a.project
}

/// libvirt's daemons, started by hand (there is no init system to do it) and stopped on drop.
struct Daemons(Vec<&'static str>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for daemon in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(format!("/run/{daemon}.pid")) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

fn libvirtd_answers() -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Start libvirtd and virtlogd unless they run already.
fn start_libvirtd() -> Daemons {
    if libvirtd_answers() {
        return Daemons(Vec::new());
    }
    let mut started = Daemons(Vec::new());
    for daemon in ["virtlogd", "libvirtd"] {
        let status = Command::new(daemon).arg("-d").status().unwrap();
        assert!(status.success(), "{daemon} did not start");
        started.0.push(daemon);
    }
    for _ in 0..50 {
        if libvirtd_answers() {
            return started;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("libvirtd did not answer");
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn puppet_provisions_the_template_in_a_chroot_that_is_always_unmounted() {
    if !enabled() {
        return;
    }
    let project = Project::new();
    project
        .file(
            "puppet/modules/motd/manifests/init.pp",
            "class motd { file { '/etc/motd': content => \"built by puppet\\n\" } }\n",
        )
        .file(
            "puppet/site.pp",
            "include motd\nfile { '/etc/vmbuild-puppet.txt': content => 'ok' }\n",
        )
        .recipe(
            r#"
template "pp" {
  debootstrap {
    suite    = "bookworm"
    packages = ["puppet"]
  }
  kernel   = "linux-image-cloud-amd64"
  hostname = "puppet-test"
  updates  = true

  user {
    name                = "admin"
    groups              = ["sudo"]
    ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyForTheTestOnly admin@example.org"]
  }

  provision "puppet" {
    manifest    = "puppet/site.pp"
    module_path = ["puppet/modules"]
  }

  provision "shell" {
    inline = ["test -s /etc/motd", "exit 7"]
  }
}
"#,
        );
    // The shell provisioner fails on purpose: Puppet's tree is committed, the failure is not.
    let run = project.run(&["apply", "site.hcl"]).code(1);
    assert!(
        run.stderr.contains("template.pp.provision.0: done"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("exit code 7"), "{}", run.stderr);
    let tree = project.output_tree("template.pp.provision.0");
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/vmbuild-puppet.txt")).unwrap(),
        "ok"
    );
    assert!(std::fs::read_to_string(tree.join("etc/motd"))
        .unwrap()
        .starts_with("built by puppet"));
    assert!(
        !tree.join("tmp/vmbuild-puppet").exists(),
        "the manifest was left in the image"
    );
    // The template's own settings: host name, the user with sudo and a key, and updates applied
    // (apt reached the mirror from the chroot).
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/hostname")).unwrap(),
        "puppet-test\n"
    );
    let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("admin:")), "{passwd}");
    let group = std::fs::read_to_string(tree.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("sudo:") && l.contains("admin")),
        "{group}"
    );
    let keys = std::fs::read_to_string(tree.join("home/admin/.ssh/authorized_keys")).unwrap();
    assert!(keys.contains("admin@example.org"));
    assert!(
        tree.join("usr/sbin/sshd").exists(),
        "openssh-server comes with a key"
    );
    assert_eq!(
        std::fs::read(tree.join("etc/machine-id")).unwrap(),
        b"",
        "each VM makes its own"
    );
    // Nothing stays mounted under the store, after success or failure.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let store = project.store().display().to_string();
    assert!(!mounts.contains(&store), "left mounted:\n{mounts}");
    project.run(&["store", "verify"]).success();
}

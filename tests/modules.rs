//! `module` blocks: a folder of recipe files instantiated once per site, its variables set by the
//! block; a step that is the same in every instance is built once; the two-site example's plan
//! as a pull request would show it; and the diagnostics of a module used wrongly.

use crate::snapshot;
use crate::support::{template_tools, Project};

/// A module of generic steps: `shared` does not depend on the instance, `own` does.
fn module(project: &Project) {
    project.file(
        "modules/site/site.hcl",
        r#"
variable "site" {}

variable "token" {
  default = "none"
}

step "shared" {
  command = ["sh", "-c", "echo common > $VMBUILD_OUT/common.txt"]
}

step "own" {
  command = ["sh", "-c", "cat $VMBUILD_IN_SHARED/common.txt > $VMBUILD_OUT/page.txt; echo $SITE >> $VMBUILD_OUT/page.txt"]
  after   = [step.shared]
  env     = { SITE = var.site, TOKEN = var.token }
}
"#,
    );
}

fn actions(project: &Project) -> Vec<(String, String, String)> {
    let plan = project.plan_json();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["action"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn each_instance_gets_its_steps_and_a_shared_step_is_built_once() {
    let project = Project::new();
    module(&project);
    project.recipe(
        r#"
module "site" {
  for_each = ["toxodb", "plasmodb"]
  source   = "modules/site"
  site     = each.value
}
"#,
    );
    let plan = actions(&project);
    let ids: Vec<&str> = plan.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "module.site.toxodb.step.shared",
            "module.site.toxodb.step.own",
            "module.site.plasmodb.step.shared",
            "module.site.plasmodb.step.own",
        ]
    );
    assert_eq!(
        plan[2].2,
        "the same step as `module.site.toxodb.step.shared`: built once, after it"
    );
    let apply = project.run(&["apply", "site.hcl"]).success();
    let started: Vec<&str> = apply
        .stderr
        .lines()
        .filter(|l| l.contains(": started"))
        .collect();
    assert_eq!(started.len(), 3, "{}", apply.stderr);
    assert!(
        apply
            .stderr
            .contains("module.site.plasmodb.step.shared: cached"),
        "{}",
        apply.stderr
    );
    let page = project.output_tree("module.site.plasmodb.step.own");
    assert_eq!(
        std::fs::read_to_string(page.join("page.txt")).unwrap(),
        "common\nplasmodb\n"
    );
    // A change in one instance's inputs reruns only that instance's steps.
    project.recipe(
        r#"
module "site" {
  for_each = ["toxodb", "plasmodb", "cryptodb"]
  source   = "modules/site"
  site     = each.value
}
"#,
    );
    let plan = actions(&project);
    let running: Vec<&str> = plan
        .iter()
        .filter(|(_, action, _)| action == "run")
        .map(|(id, _, _)| id.as_str())
        .collect();
    assert_eq!(running, ["module.site.cryptodb.step.own"], "{plan:?}");
}

#[test]
fn a_secret_given_to_a_module_stays_secret() {
    let project = Project::new();
    module(&project);
    project.recipe(
        r#"
module "toxodb" {
  source = "modules/site"
  site   = "toxodb"
  token  = env("SITE_TOKEN")
}
"#,
    );
    let output = project
        .command(&["plan", "site.hcl", "--format", "json"])
        .env("SITE_TOKEN", "tok-9f8e7d6c5b4a")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("tok-9f8e7d6c5b4a"), "{text}");
    assert!(text.contains("module.toxodb.step.own"), "{text}");
}

/// `validate` fails pointing at the recipe; the snapshot shows where.
fn diagnostic(name: &str, recipe: &str) -> String {
    let project = Project::new();
    module(&project);
    project.recipe(recipe);
    let run = project.run(&["validate", "site.hcl"]).code(1);
    assert!(run.stderr.contains("╭─["), "{}", run.stderr);
    snapshot!(
        &project,
        format!("diagnostic-module-{name}"),
        run.transcript()
    );
    run.stderr
}

#[test]
fn a_module_without_source_is_a_diagnostic() {
    let stderr = diagnostic("no-source", "module \"x\" {\n  site = \"a\"\n}\n");
    assert!(stderr.contains("needs a `source`"), "{stderr}");
}

#[test]
fn an_unknown_input_and_a_missing_one_are_diagnostics() {
    let stderr = diagnostic(
        "inputs",
        "module \"x\" {\n  source = \"modules/site\"\n  sites  = \"a\"\n}\n",
    );
    assert!(
        stderr.contains("the module declares no variable `sites`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `site`?"), "{stderr}");
    assert!(
        stderr.contains("the module's variable `site` has no value"),
        "{stderr}"
    );
}

#[test]
fn for_each_takes_names_and_each_only_lives_there() {
    let stderr = diagnostic(
        "for-each",
        "module \"x\" {\n  for_each = 3\n  source   = \"modules/site\"\n  site     = \"a\"\n}\n\nstep \"y\" {\n  command = [each.value]\n}\n",
    );
    assert!(
        stderr.contains("`for_each` takes a list of names or an object"),
        "{stderr}"
    );
    assert!(stderr.contains("`each` is known only in a `module` block with `for_each`"));
    let stderr = diagnostic(
        "instance-name",
        "module \"x\" {\n  for_each = [\"w1.toxodb.org\", \"../etc\"]\n  source   = \"modules/site\"\n  site     = each.value\n}\n",
    );
    assert!(
        stderr.contains("`../etc` cannot name a module instance"),
        "{stderr}"
    );
    assert!(!stderr.contains("`w1.toxodb.org` cannot"), "{stderr}");
}

#[test]
fn a_module_that_includes_itself_is_a_diagnostic() {
    let project = Project::new();
    project.file(
        "modules/loop/site.hcl",
        "module \"again\" {\n  source = \".\"\n}\n",
    );
    project.recipe("module \"x\" {\n  source = \"modules/loop\"\n}\n");
    let run = project.run(&["validate", "site.hcl"]).code(1);
    assert!(run.stderr.contains("includes itself"), "{}", run.stderr);
}

#[test]
fn the_two_site_example_plans_its_shared_template_once() {
    if !template_tools(&[]) {
        eprintln!("skipped: planning a template needs debootstrap, mkfs.ext4 and grub-mkimage");
        return;
    }
    let project = Project::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for folder in ["examples/sites", "recipes/eupath-site"] {
        let status = std::process::Command::new("cp")
            .args(["-a", "--parents", folder])
            .arg(project.path())
            .current_dir(examples)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let run = project
        .run(&["plan", "examples/sites/site.hcl", "--format", "markdown"])
        .success();
    // How many files came from the stat cache depends on how old their copies are.
    let transcript: String = run
        .transcript()
        .lines()
        .map(|line| match line.split_once("; hashed") {
            Some((before, _)) => format!("{before}; hashed [N]\n"),
            None => format!("{line}\n"),
        })
        .collect();
    snapshot!(&project, "plan-two-sites-markdown", transcript);
    assert_eq!(
        run.stdout.matches("built once, after it").count(),
        4,
        "debootstrap, system, the provisioner and the docs are shared:\n{}",
        run.stdout
    );
}

#[test]
fn two_sites_are_built_and_booted_from_one_template() {
    if std::env::var_os("VMBUILD_E2E").is_none() {
        eprintln!("skipped: set VMBUILD_E2E=1 to build and boot the two sites");
        return;
    }
    let project = Project::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for folder in ["examples/sites", "recipes/eupath-site"] {
        let status = std::process::Command::new("cp")
            .args(["-a", "--parents", folder])
            .arg(project.path())
            .current_dir(root)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let _ = std::fs::remove_dir_all(project.path().join("examples/sites/output"));
    let run = project.run(&["apply", "examples/sites/site.hcl"]);
    assert_eq!(run.code, 0, "{}", run.transcript());
    let debootstraps = run
        .stderr
        .lines()
        .filter(|l| l.contains("template.web.debootstrap: started"))
        .count();
    assert_eq!(
        debootstraps, 1,
        "the template is built once:\n{}",
        run.stderr
    );
    for site in ["toxodb", "plasmodb"] {
        assert!(
            run.stderr
                .contains(&format!("module.site.{site}.qa.qcow2: done")),
            "{site}:\n{}",
            run.stderr
        );
        let folder = project.path().join("examples/sites/output/site").join(site);
        let sums = std::process::Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&folder)
            .output()
            .unwrap();
        assert!(
            sums.status.success(),
            "{site}: {}",
            String::from_utf8_lossy(&sums.stdout)
        );
        assert!(folder.join(format!("{site}.qcow2")).is_file());
    }
}

#[test]
fn a_mistake_in_a_module_is_reported_once_for_all_its_instances() {
    let project = Project::new();
    project.file(
        "modules/broken/site.hcl",
        "template \"web\" {\n  debootstrap {\n    suite = \"bookworm\"\n  }\n}\n\nstep \"page\" {\n  command = [\"true\"]\n  after   = [template.web]\n}\n",
    );
    project.recipe(
        "module \"site\" {\n  for_each = [\"toxodb\", \"plasmodb\"]\n  source   = \"modules/broken\"\n}\n",
    );
    let run = project.run(&["validate", "site.hcl"]).code(1);
    snapshot!(&project, "diagnostic-module-once", run.transcript());
    assert_eq!(
        run.stderr
            .matches("`after` names a block of one step, not `template.web`")
            .count(),
        1,
        "{}",
        run.stderr
    );
}

//! What runs and what is cached: first runs, null runs, parameter and input changes, early cutoff.

use crate::support::{running, Project};

/// a → b → c, and d alone. Each step appends its name to `runs.log` in the project, so the
/// tests can see which commands really ran.
const CHAIN: &str = r#"
step "a" {
  command = ["sh", "-c", "echo a >> runs.log; echo A > $VMBUILD_OUT/a"]
}
step "b" {
  command = ["sh", "-c", "echo b >> runs.log; cat $VMBUILD_IN_A/a > $VMBUILD_OUT/b; echo B >> $VMBUILD_OUT/b"]
  after   = ["step.a"]
}
step "c" {
  command = ["sh", "-c", "echo c >> runs.log; cat $VMBUILD_IN_B/b > $VMBUILD_OUT/c"]
  after   = [step.b]
}
step "d" {
  command = ["sh", "-c", "echo d >> runs.log; echo D > $VMBUILD_OUT/d"]
}
"#;

fn runs(project: &Project) -> Vec<String> {
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap_or_default();
    std::fs::remove_file(project.path().join("runs.log")).ok();
    let mut names: Vec<String> = log.lines().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn first_apply_runs_everything_and_second_plan_is_all_cached() {
    let project = Project::new();
    project.recipe(CHAIN);
    let mut planned = project.to_run();
    planned.sort();
    assert_eq!(planned, ["step.a", "step.b", "step.c", "step.d"]);
    project.run(&["apply", "site.hcl"]).success();
    assert_eq!(runs(&project), ["a", "b", "c", "d"]);
    // Nothing left to do: exit 0 even with --detailed-exitcode, and all cached.
    project
        .run(&["plan", "site.hcl", "--detailed-exitcode"])
        .code(0);
    assert!(project.to_run().is_empty());
    project.run(&["apply", "site.hcl"]).success();
    assert!(runs(&project).is_empty(), "a null apply runs no command");
    // The output really is the chain's product.
    let plan = project.plan_json();
    assert_eq!(plan["run"], 0);
    assert_eq!(plan["cached"], 4);
}

#[test]
fn detailed_exitcode_is_2_when_something_would_run() {
    let project = Project::new();
    project.recipe(CHAIN);
    project
        .run(&["plan", "site.hcl", "--detailed-exitcode"])
        .code(2);
    // Without the flag, pending work is still success.
    project.run(&["plan", "site.hcl"]).code(0);
    assert!(
        !project.path().join("runs.log").exists(),
        "plan never runs a command"
    );
}

#[test]
fn a_changed_parameter_reruns_exactly_that_step_and_its_dependents() {
    let project = Project::new();
    project.recipe(CHAIN);
    project.run(&["apply", "site.hcl"]).success();
    runs(&project);
    project.recipe(&CHAIN.replace("echo B >>", "echo B2 >>"));
    let plan = project.plan_json();
    let step = |id: &str| {
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(step("step.a")["action"], "cached");
    assert_eq!(step("step.d")["action"], "cached");
    assert_eq!(step("step.b")["action"], "run");
    assert_eq!(step("step.b")["reason"], "parameter `command` changed");
    assert_eq!(step("step.c")["action"], "run");
    assert!(
        step("step.c")["key"].is_null(),
        "c's key waits for b's output"
    );
    assert_eq!(step("step.c")["depends_on"], serde_json::json!(["step.b"]));
    project.run(&["apply", "site.hcl"]).success();
    assert_eq!(runs(&project), ["b", "c"]);
    let c = std::fs::read_dir(project.store().join("trees"))
        .unwrap()
        .count();
    assert!(c >= 6, "both versions of b and c are in the store");
}

#[test]
fn identical_output_leaves_dependents_cached() {
    let project = Project::new();
    project.recipe(CHAIN);
    project.run(&["apply", "site.hcl"]).success();
    runs(&project);
    // A different command that writes the same bytes.
    project.recipe(&CHAIN.replace("echo A > $VMBUILD_OUT/a", "printf 'A\\n' > $VMBUILD_OUT/a"));
    let mut planned = project.to_run();
    planned.sort();
    assert_eq!(planned, ["step.a", "step.b", "step.c"]);
    let apply = project.run(&["apply", "site.hcl"]).success();
    assert_eq!(
        runs(&project),
        ["a"],
        "b and c are cut off:\n{}",
        apply.stderr
    );
    assert!(
        apply
            .stderr
            .contains("step.b: cached (its inputs came out unchanged)"),
        "{}",
        apply.stderr
    );
    assert!(project.to_run().is_empty());
}

#[test]
fn a_changed_input_file_is_named_in_the_reason() {
    let project = Project::new();
    project
        .file("notes/one.txt", "one\n")
        .file("notes/two.txt", "two\n")
        .recipe(
            r#"
step "notes" {
  command = ["sh", "-c", "cat notes/*.txt > $VMBUILD_OUT/all"]
  inputs  = ["notes/*.txt"]
}
"#,
        );
    project.run(&["apply", "site.hcl"]).success();
    project
        .file("notes/two.txt", "TWO\n")
        .file("notes/three.txt", "3\n");
    let plan = project.plan_json();
    assert_eq!(
        plan["steps"][0]["reason"],
        "input `notes/three.txt` added, input `notes/two.txt` changed"
    );
    // Changing a file the globs do not match changes nothing.
    project.file("notes/readme.md", "not an input");
    project.run(&["apply", "site.hcl"]).success();
    project.file("notes/readme.md", "still not an input");
    assert!(project.to_run().is_empty());
}

#[test]
fn formatting_and_attribute_order_do_not_change_keys() {
    let project = Project::new();
    project.recipe(
        r#"
step "x" {
  command = ["sh", "-c", "echo x > $VMBUILD_OUT/x"]
  env     = { B = "2", A = "1" }
}
"#,
    );
    project.run(&["apply", "site.hcl"]).success();
    project.recipe(
        r#"
# a comment now
step "x" {
    env = {
        A = "1"
        B = "2"
    }
    command = [ "sh",
                "-c", "echo x > $VMBUILD_OUT/x" ]
}
"#,
    );
    assert!(project.to_run().is_empty());
}

#[test]
fn a_variable_change_reaches_only_the_steps_that_use_it() {
    let project = Project::new();
    project.recipe(
        r#"
variable "release" { default = "1" }
step "uses" {
  command = ["sh", "-c", "echo ${var.release} > $VMBUILD_OUT/r"]
}
step "ignores" {
  command = ["sh", "-c", "echo same > $VMBUILD_OUT/s"]
}
"#,
    );
    project.run(&["apply", "site.hcl"]).success();
    let run = project
        .run(&["plan", "site.hcl", "-v", "release=2", "--format", "json"])
        .success();
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let running = running(&plan);
    assert_eq!(running, ["step.uses"]);
    // The environment works as well as -var.
    let out = project
        .command(&["plan", "site.hcl", "--detailed-exitcode"])
        .env("VMBUILD_VAR_release", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn toml_and_hcl_recipes_mean_the_same() {
    let project = Project::new();
    project.recipe(
        r#"
step "a" {
  command = ["sh", "-c", "echo a > $VMBUILD_OUT/a"]
}
step "b" {
  command = ["sh", "-c", "cat $VMBUILD_IN_A/a > $VMBUILD_OUT/b"]
  after   = ["step.a"]
}
"#,
    );
    project.file(
        "site.toml",
        r#"
[step.a]
command = ["sh", "-c", "echo a > $VMBUILD_OUT/a"]

[step.b]
after = ["step.a"]
command = ["sh", "-c", "cat $VMBUILD_IN_A/a > $VMBUILD_OUT/b"]
"#,
    );
    project.run(&["apply", "site.hcl"]).success();
    let run = project
        .run(&[
            "plan",
            "site.toml",
            "--format",
            "json",
            "--detailed-exitcode",
        ])
        .code(0);
    assert!(run.stdout.contains("\"cached\": 2"), "{}", run.stdout);
}

//! The command line's output: plans in every format, graphs, show, saved plans, gc, verify.

use crate::snapshot;
use crate::support::Project;

const RECIPE: &str = r#"
variable "release" { default = "68" }

step "fetch" {
  command = ["sh", "-c", "echo release ${var.release} > $VMBUILD_OUT/r"]
}

step "build" {
  command = ["sh", "-c", "cat $VMBUILD_IN_FETCH/r > $VMBUILD_OUT/b"]
  after   = ["step.fetch"]
}

step "docs" {
  command = ["sh", "-c", "echo docs > $VMBUILD_OUT/d"]
}
"#;

#[test]
fn plan_text_before_and_after_apply() {
    let project = Project::new();
    project.recipe(RECIPE);
    snapshot!(
        &project,
        "plan-text-fresh",
        project.run(&["plan", "site.hcl"]).transcript()
    );
    project.run(&["apply", "site.hcl"]).success();
    snapshot!(
        &project,
        "plan-text-cached",
        project.run(&["plan", "site.hcl"]).transcript()
    );
    let run = project.run(&["plan", "site.hcl", "-v", "release=69"]);
    snapshot!(&project, "plan-text-changed", run.transcript());
}

#[test]
fn plan_markdown_and_json() {
    let project = Project::new();
    project.recipe(RECIPE);
    project.run(&["apply", "site.hcl"]).success();
    let markdown = project.run(&[
        "plan",
        "site.hcl",
        "--format",
        "markdown",
        "-v",
        "release=69",
    ]);
    snapshot!(&project, "plan-markdown", markdown.transcript());
    let json = project.run(&["plan", "site.hcl", "--format", "json", "-v", "release=69"]);
    snapshot!(&project, "plan-json", json.transcript());
    let plan: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    for step in plan["steps"].as_array().unwrap() {
        for field in ["id", "kind", "key", "action", "reason", "depends_on"] {
            assert!(step.get(field).is_some(), "`{field}` missing from {step}");
        }
    }
}

#[test]
fn graph_formats() {
    let project = Project::new();
    project.recipe(RECIPE);
    snapshot!(
        &project,
        "graph-dot",
        project.run(&["graph", "site.hcl"]).transcript()
    );
    snapshot!(
        &project,
        "graph-mermaid",
        project
            .run(&["graph", "site.hcl", "--format", "mermaid"])
            .transcript()
    );
}

#[test]
fn show_explains_a_step() {
    let project = Project::new();
    project.recipe(RECIPE);
    project.run(&["apply", "site.hcl"]).success();
    let run = project
        .run(&["show", "step.build", "-r", "site.hcl"])
        .success();
    assert!(run.stdout.contains("action:      cached"), "{}", run.stdout);
    assert!(
        run.stdout.contains("\"step.fetch\""),
        "the upstream digest is shown:\n{}",
        run.stdout
    );
    let run = project
        .run(&["show", "step.buld", "-r", "site.hcl"])
        .code(1);
    assert!(
        run.stderr.contains("did you mean `step.build`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn validate_reports_success() {
    let project = Project::new();
    project.recipe(RECIPE);
    snapshot!(
        &project,
        "validate-ok",
        project.run(&["validate", "site.hcl"]).transcript()
    );
}

#[test]
fn a_saved_plan_applies_and_a_stale_one_is_refused() {
    let project = Project::new();
    project.recipe(RECIPE);
    project
        .run(&["plan", "site.hcl", "--out", "plan.json"])
        .success();
    project.run(&["apply", "plan.json"]).success();
    assert!(project.to_run().is_empty());
    project
        .run(&["plan", "site.hcl", "--out", "plan.json", "-v", "release=70"])
        .success();
    // The variable was saved with the plan.
    project.run(&["apply", "plan.json"]).success();
    project
        .run(&[
            "plan",
            "site.hcl",
            "-v",
            "release=70",
            "--detailed-exitcode",
        ])
        .code(0);
    // Now the recipe changes after the plan was made.
    project
        .run(&["plan", "site.hcl", "--out", "plan.json"])
        .success();
    project.recipe(&RECIPE.replace("echo docs", "echo more docs"));
    let run = project.run(&["apply", "plan.json"]).code(1);
    assert!(
        run.stderr.contains(
            "the saved plan `plan.json` is out of date: the inputs of `step.docs` changed"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn verify_finds_a_tampered_output_and_repair_makes_it_rebuild() {
    let project = Project::new();
    project.recipe(RECIPE);
    project.run(&["apply", "site.hcl"]).success();
    project.run(&["store", "verify"]).success();
    // Tamper with one committed output.
    let trees = project.store().join("trees");
    let tree = std::fs::read_dir(&trees)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::read_dir(&tree)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&file, "tampered\n").unwrap();
    let run = project.run(&["store", "verify"]).code(1);
    assert!(
        run.stdout.contains("its content has digest"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("which is corrupt"),
        "the record naming it is reported:\n{}",
        run.stdout
    );
    project.run(&["store", "verify", "--repair"]).success();
    project.run(&["store", "verify"]).success();
    assert!(!project.to_run().is_empty(), "the damaged step is rebuilt");
    project.run(&["apply", "site.hcl"]).success();
    project.run(&["store", "verify"]).success();
}

#[test]
fn gc_keeps_the_current_plan_and_removes_the_rest() {
    let project = Project::new();
    project.recipe(RECIPE);
    project.run(&["apply", "site.hcl"]).success();
    project
        .run(&["apply", "site.hcl", "-v", "release=69"])
        .success();
    let trees = || {
        std::fs::read_dir(project.store().join("trees"))
            .unwrap()
            .count()
    };
    assert_eq!(trees(), 5, "two fetches, two builds, one docs");
    let run = project.run(&["gc", "site.hcl"]).success();
    assert!(
        run.stdout.contains("removed 2 records, 2 trees"),
        "{}",
        run.stdout
    );
    assert_eq!(trees(), 3);
    assert!(project.to_run().is_empty());
    project.run(&["store", "verify"]).success();
}

#[test]
fn gc_keep_last_keeps_history() {
    let project = Project::new();
    project.recipe(RECIPE);
    project.run(&["apply", "site.hcl"]).success();
    project
        .run(&["apply", "site.hcl", "-v", "release=69"])
        .success();
    project
        .run(&["gc", "site.hcl", "--keep-last", "2"])
        .success();
    assert_eq!(
        std::fs::read_dir(project.store().join("trees"))
            .unwrap()
            .count(),
        5
    );
    project
        .run(&[
            "plan",
            "site.hcl",
            "-v",
            "release=68",
            "--detailed-exitcode",
        ])
        .code(0);
}

#[test]
fn the_hello_example_applies() {
    let project = Project::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let path = example.join("site.hcl");
    let run = project.run(&["apply", path.to_str().unwrap()]).success();
    assert!(
        run.stderr.contains("Apply complete: 3 ran, 0 cached."),
        "{}",
        run.stderr
    );
    let plan = project.run(&["plan", path.to_str().unwrap(), "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.transcript());
}

#[test]
fn fmt_rewrites_once_and_then_changes_nothing() {
    let project = Project::new();
    project.recipe("# the greeting\nstep \"a\" { command = [\"true\"] }\nstep \"b\" {\n      command = [\"sh\", \"-c\", \"true\"]   # inline\n  after = [step.a]\n}\n");
    project.run(&["fmt", "--check", "site.hcl"]).code(1);
    project.run(&["fmt", "site.hcl"]).success();
    let once = std::fs::read_to_string(project.path().join("site.hcl")).unwrap();
    snapshot!(&project, "fmt-formatted", once.clone());
    project.run(&["fmt", "--check", "site.hcl"]).success();
    project.run(&["fmt", "site.hcl"]).success();
    assert_eq!(
        std::fs::read_to_string(project.path().join("site.hcl")).unwrap(),
        once
    );
    // The meaning is the same: the formatted recipe validates.
    project.run(&["validate", "site.hcl"]).success();
}

#[test]
fn fmt_points_at_invalid_hcl() {
    let project = Project::new();
    project.recipe("step \"a\" {\n  command = [\n}\n");
    let run = project.run(&["fmt", "site.hcl"]).code(1);
    assert!(run.stderr.contains("╭─[site.hcl:"), "{}", run.stderr);
}

#[test]
fn every_example_is_formatted_and_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let project = Project::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        let recipe = dir.join("site.hcl");
        if !recipe.exists() {
            continue;
        }
        let recipe = recipe.to_str().unwrap();
        project.run(&["fmt", "--check", recipe]).success();
        let validate = project
            .command(&["validate", recipe])
            .env("TOXO_SOURCE_URL", "postgres://example")
            .env("TOXO_PASSWORD", "example")
            .output()
            .unwrap();
        assert!(
            validate.status.success(),
            "{recipe}: {}",
            String::from_utf8_lossy(&validate.stderr)
        );
    }
}

#[test]
fn apply_output_in_plain_lines() {
    let project = Project::new();
    project.recipe(RECIPE);
    let first = project.run(&["apply", "site.hcl", "--jobs", "1"]).success();
    snapshot!(&project, "apply-first", first.transcript());
    let again = project.run(&["apply", "site.hcl", "--jobs", "1"]).success();
    snapshot!(&project, "apply-null", again.transcript());
}

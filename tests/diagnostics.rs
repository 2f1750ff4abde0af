//! Malformed recipes: each gets a diagnostic that points at the offending text, and exit 1.

use crate::snapshot;
use crate::support::Project;

/// Validate (or plan) `recipe`, expect exit 1 with a span in the output, and snapshot it.
fn check(name: &str, command: &str, recipe: &str) {
    let project = Project::new();
    project.recipe(recipe);
    let run = project.run(&[command, "site.hcl"]).code(1);
    assert!(
        run.stderr.contains("╭─[site.hcl:"),
        "{name}: no span in the diagnostic:\n{}",
        run.stderr
    );
    snapshot!(&project, format!("diagnostic-{name}"), run.transcript());
}

#[test]
fn not_hcl() {
    check(
        "syntax",
        "validate",
        "step \"a\" {\n  command = [\"sh\"\n}\n",
    );
}

#[test]
fn unknown_block() {
    check("unknown-block", "validate", "templat \"base\" {}\n");
}

#[test]
fn unknown_attribute() {
    check(
        "unknown-attribute",
        "validate",
        "step \"a\" {\n  comand = [\"true\"]\n}\n",
    );
}

#[test]
fn unknown_nested_attribute() {
    check(
        "unknown-nested-attribute",
        "validate",
        "template \"base\" {\n  debootstrap {\n    suit = \"bookworm\"\n  }\n}\n",
    );
}

#[test]
fn missing_attribute() {
    check(
        "missing-attribute",
        "validate",
        "step \"a\" {\n  after = []\n}\n",
    );
}

#[test]
fn wrong_type() {
    check(
        "wrong-type",
        "validate",
        "step \"a\" {\n  command = \"true\"\n}\n",
    );
}

#[test]
fn wrong_enum_value() {
    check(
        "wrong-enum",
        "validate",
        "database \"toxo\" {\n  engine = \"postgress\"\n  into   = \"toxodb\"\n}\n",
    );
}

#[test]
fn undefined_step() {
    check(
        "undefined-step",
        "validate",
        "step \"fetch\" {\n  command = [\"true\"]\n}\nstep \"build\" {\n  command = [\"true\"]\n  after   = [\"step.fetc\"]\n}\n",
    );
}

#[test]
fn cycle() {
    check(
        "cycle",
        "validate",
        "step \"a\" {\n  command = [\"true\"]\n  after   = [step.c]\n}\nstep \"b\" {\n  command = [\"true\"]\n  after   = [step.a]\n}\nstep \"c\" {\n  command = [\"true\"]\n  after   = [step.b]\n}\n",
    );
}

#[test]
fn unknown_variable() {
    check(
        "unknown-variable",
        "validate",
        "variable \"release\" { default = \"68\" }\nstep \"a\" {\n  command = [\"echo\", var.relase]\n}\n",
    );
}

#[test]
fn unknown_function() {
    check(
        "unknown-function",
        "validate",
        "step \"a\" {\n  command = [\"echo\", lowr(\"X\")]\n}\n",
    );
}

#[test]
fn unset_environment_variable() {
    check(
        "unset-env",
        "validate",
        "database \"toxo\" {\n  engine = \"postgres\"\n  source = env(\"VMBUILD_TEST_SURELY_UNSET\")\n  into   = \"toxodb\"\n}\n",
    );
}

#[test]
fn duplicate_block() {
    check(
        "duplicate-block",
        "validate",
        "step \"a\" {\n  command = [\"true\"]\n}\n\nstep \"a\" {\n  command = [\"false\"]\n}\n",
    );
}

#[test]
fn missing_label() {
    check(
        "missing-label",
        "validate",
        "step {\n  command = [\"true\"]\n}\n",
    );
}

#[test]
fn unknown_output_format() {
    check("unknown-output", "validate", "output \"qcow\" {}\n");
}

#[test]
fn sensitive_value_in_a_plain_attribute() {
    check(
        "sensitive-in-plain",
        "validate",
        "database \"toxo\" {\n  engine = \"postgres\"\n  into   = env(\"HOME\")\n}\n",
    );
}

#[test]
fn locals_cycle() {
    check(
        "locals-cycle",
        "validate",
        "locals {\n  a = local.b\n  b = \"x-${local.a}\"\n}\nstep \"s\" {\n  command = [\"echo\", local.a]\n}\n",
    );
}

#[test]
fn inputs_that_match_nothing() {
    check(
        "inputs-match-nothing",
        "plan",
        "step \"a\" {\n  command = [\"true\"]\n  inputs  = [\"data/*.csv\"]\n}\n",
    );
}

#[test]
fn program_not_found() {
    check(
        "program-not-found",
        "plan",
        "step \"a\" {\n  command = [\"no-such-program-here\", \"x\"]\n}\n",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let project = Project::new();
    project.recipe(
        "step \"a\" {\n  comand = [\"true\"]\n}\nstep \"b\" {\n  command = \"x\"\n}\noutput \"vmdx\" {}\n",
    );
    let run = project.run(&["validate", "site.hcl"]).code(1);
    assert_eq!(
        run.stderr.matches("╭─[site.hcl:").count(),
        3,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("3 errors"));
}

#[test]
fn toml_syntax_errors_point_at_the_text() {
    let project = Project::new();
    project.file("site.toml", "[step.a]\ncommand = [\"true\"\n");
    let run = project.run(&["validate", "site.toml"]).code(1);
    assert!(run.stderr.contains("╭─[site.toml:"), "{}", run.stderr);
}

#[test]
fn an_undeclared_var_is_an_error() {
    let project = Project::new();
    project.recipe(
        "variable \"release\" { default = \"1\" }\nstep \"a\" {\n  command = [\"true\"]\n}\n",
    );
    let run = project
        .run(&["validate", "site.hcl", "-v", "relase=2"])
        .code(1);
    assert!(
        run.stderr.contains("did you mean `release`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_design_recipe_validates() {
    // The recipe sketch of the design, with every block kind, is valid vmbuild.
    let project = Project::new();
    project.file("schema/apicomm.sql", "create table t (i int);\n");
    project.recipe(include_str!("../examples/design/site.hcl"));
    let run = project
        .command(&["validate", "site.hcl"])
        .env("TOXO_SOURCE_URL", "postgres://u:secret@db.example/toxo")
        .env("TOXO_PASSWORD", "secret")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// A recipe cloning an Oracle source; its URL comes from `TOXO_ORACLE_URL`.
const ORACLE_RECIPE: &str = r#"template "db" {
  debootstrap {
    suite    = "bookworm"
    packages = ["postgresql"]
  }
}

database "toxo" {
  engine             = "oracle"
  source             = env("TOXO_ORACLE_URL")
  schemas            = databaseinfo("core.databaseinfo")
  exclude_schemas    = ["staff_*"]
  datapump_directory = "DATA_PUMP_DIR"
  into               = "toxodb"
}
"#;

/// A distinctive password in the source URL.
const ORACLE_URL: &str = "oracle://gus_r:Oracle-Pw-5521@db.invalid:1521/toxoprod";

/// Plan `recipe` with `TOXO_ORACLE_URL` set; exit 1, and nothing of the URL shown.
fn plan_oracle(project: &Project, recipe: &str) -> crate::support::Run {
    project.recipe(recipe);
    let output = project
        .command(&["plan", "site.hcl"])
        .env("TOXO_ORACLE_URL", ORACLE_URL)
        .output()
        .expect("run vmbuild");
    let run = crate::support::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
    .code(1);
    for secret in ["Oracle-Pw-5521", "db.invalid", "gus_r"] {
        assert!(
            !run.transcript().contains(secret),
            "`{secret}` shown: {}",
            run.transcript()
        );
    }
    run
}

#[cfg(not(feature = "oracle"))]
#[test]
fn an_oracle_source_needs_the_oracle_feature() {
    let project = Project::new();
    let run = plan_oracle(&project, ORACLE_RECIPE);
    snapshot!(
        &project,
        "diagnostic-oracle-without-the-feature",
        run.transcript()
    );
}

/// With the feature, plan connects; without Oracle's client libraries (none where vmbuild is
/// developed) it says what to install; where they are, the host does not resolve. Either way
/// the error is at `source`.
#[cfg(feature = "oracle")]
#[test]
fn an_oracle_source_is_resolved_by_plan_and_fails_without_showing_the_url() {
    let project = Project::new();
    let run = plan_oracle(&project, ORACLE_RECIPE);
    let text = run.transcript();
    eprintln!("{text}");
    assert!(
        text.contains("Oracle's client libraries cannot be loaded")
            || text.contains("cannot reach the source `env(\"TOXO_ORACLE_URL\")`"),
        "{text}"
    );
    assert!(text.contains("this source"), "at `source`: {text}");
}

#[test]
fn data_pump_is_for_oracle_sources() {
    let project = Project::new();
    let run = plan_oracle(
        &project,
        &ORACLE_RECIPE.replace("\"oracle\"", "\"postgres\""),
    );
    snapshot!(
        &project,
        "diagnostic-datapump-on-postgres",
        run.transcript()
    );
}

//! The CI examples (`examples/ci/`), which the book includes: the GitHub workflow is valid YAML
//! with the jobs the book describes, and its shell steps, run for real with bash and the real
//! binary against a stand-in recipe, go by plan's exit codes (a fork's pull request without the
//! secret, a pull request with changes, one with nothing to do, a merge that applies). Every
//! `vmbuild` command of the Jenkinsfile runs with the real binary too, in the order of its
//! stages, so that none of them can be refused by the argument parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use crate::support::Project;

fn ci_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/ci")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The recipe both files build, as a stand-in: one step that reads the secret, so that plan
/// stops at `env()` without it.
const STAND_IN: &str = r#"
step "site" {
  command = ["sh", "-c", "echo built > $VMBUILD_OUT/site.txt"]
  env     = { SOURCE = env("TOXO_SOURCE_URL") }
}
"#;

const SECRET: &str = "postgres://toxo_export:Ci-Secret-81x@db.example.org/toxodb";

fn stand_in_project() -> Project {
    let project = Project::new();
    project.file("sites/toxodb.hcl", STAND_IN);
    project
}

/// `PATH` with the binary under test first, as `vmbuild`.
fn path_with_vmbuild() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_vmbuild")).parent().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// What clap prints when it refuses a command line.
fn refused_by_the_parser(stderr: &str) -> bool {
    stderr.contains("For more information, try '--help'")
        || stderr.contains("unexpected argument")
        || stderr.contains("Usage: vmbuild")
}

fn get<'a>(yaml: &'a Yaml, key: &str) -> &'a Yaml {
    &yaml[key]
}

fn text(yaml: &Yaml) -> &str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {yaml:?}"))
}

/// The steps of a job: (name or `uses`, the step).
fn steps(job: &Yaml) -> Vec<&Yaml> {
    get(job, "steps")
        .as_vec()
        .expect("a job has steps")
        .iter()
        .collect()
}

fn named_step<'a>(job: &'a Yaml, name: &str) -> &'a Yaml {
    steps(job)
        .into_iter()
        .find(|s| s["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no step `{name}`"))
}

/// Every `vmbuild` command line of a shell script: lines that start with `vmbuild `.
fn vmbuild_lines(script: &str) -> Vec<String> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("vmbuild "))
        .map(str::to_string)
        .collect()
}

/// A workflow step's shell script run as GitHub runs it (`bash -eo pipefail`), in the project
/// folder, with `env` and the project's store; what it wrote to `$GITHUB_OUTPUT`.
fn run_step(
    project: &Project,
    script: &str,
    env: &BTreeMap<String, String>,
) -> (i32, BTreeMap<String, String>, String) {
    assert!(
        !script.contains("${{"),
        "a run script should read values from env, not `${{{{ }}}}`:\n{script}"
    );
    let output_file = project.path().join("github-output");
    let summary_file = project.path().join("github-summary");
    std::fs::write(&output_file, "").unwrap();
    let script_file = project.path().join("step.sh");
    std::fs::write(&script_file, script).unwrap();
    let mut command = Command::new("bash");
    command
        .args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&script_file)
        .current_dir(project.path())
        .env("PATH", path_with_vmbuild())
        .env("GITHUB_OUTPUT", &output_file)
        .env("GITHUB_STEP_SUMMARY", &summary_file)
        .env_remove("TOXO_SOURCE_URL");
    for (name, value) in env {
        command.env(name, value);
    }
    command.env("VMBUILD_STORE", project.store());
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!refused_by_the_parser(&stderr), "{stderr}");
    let outputs = std::fs::read_to_string(&output_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (output.status.code().unwrap_or(-1), outputs, stderr)
}

/// A step's `env`, with `${{ }}` values replaced by `value`.
fn step_env(step: &Yaml, value: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(map) = step["env"].as_hash() {
        for (k, v) in map {
            let v = match v {
                Yaml::String(s) if s.contains("${{") => value.to_string(),
                Yaml::String(s) => s.clone(),
                other => panic!("{other:?}"),
            };
            env.insert(text(k).to_string(), v);
        }
    }
    env
}

#[test]
fn the_github_workflow_has_the_jobs_the_book_describes_and_goes_by_plans_exit_codes() {
    let docs = YamlLoader::load_from_str(&ci_file("github-actions.yml")).expect("valid YAML");
    assert_eq!(docs.len(), 1);
    let workflow = &docs[0];
    // Triggers: pull requests, and pushes to main.
    let on = get(workflow, "on");
    assert!(!on["pull_request"].is_badvalue(), "{on:?}");
    let branches = on["push"]["branches"].as_vec().expect("push branches");
    assert_eq!(branches, &[Yaml::String("main".into())]);
    // Read-only by default; only the comment job may write, and only to pull requests.
    assert_eq!(text(&workflow["permissions"]["contents"]), "read");
    let jobs = workflow["jobs"].as_hash().expect("jobs");
    let names: Vec<&str> = jobs.keys().map(text).collect();
    assert_eq!(names, ["plan", "comment", "build"]);
    for (name, job) in jobs {
        let permissions = job["permissions"].as_hash().expect("each job says");
        for (scope, level) in permissions {
            let allowed = text(name) == "comment" && text(scope) == "pull-requests";
            assert!(
                text(level) == "read" || allowed,
                "{}: {} {}",
                text(name),
                text(scope),
                text(level)
            );
        }
    }
    let global_env: BTreeMap<String, String> = workflow["env"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k).to_string(), text(v).to_string()))
        .collect();
    assert_eq!(global_env["VMBUILD_STORE"], "/var/lib/vmbuild/store");
    // A step's environment: the workflow's, then the job's or the step's.
    let with_global = |mut env: BTreeMap<String, String>| {
        for (k, v) in &global_env {
            env.entry(k.clone()).or_insert_with(|| v.clone());
        }
        env
    };

    let plan_job = &workflow["jobs"]["plan"];
    assert!(text(&plan_job["if"]).contains("pull_request"));
    let plan_step = named_step(plan_job, "plan");
    // The secret only for pull requests of this repository.
    let secret = text(&plan_step["env"]["TOXO_SOURCE_URL"]);
    assert!(
        secret.contains("github.event.pull_request.head.repo.full_name == github.repository"),
        "{secret}"
    );
    let script = text(&plan_step["run"]);
    assert_eq!(
        vmbuild_lines(script),
        ["vmbuild plan sites/toxodb.hcl --format markdown --detailed-exitcode > plan.md 2> plan.err"]
    );
    let fail = named_step(plan_job, "fail on a plan error");
    assert!(text(&fail["if"]).contains("exitcode"));

    let comment_job = &workflow["jobs"]["comment"];
    assert_eq!(text(&comment_job["needs"]), "plan");
    assert_eq!(text(&comment_job["permissions"]["pull-requests"]), "write");
    let condition = text(&comment_job["if"]);
    assert!(
        condition.contains("head.repo.full_name == github.repository"),
        "{condition}"
    );
    // The job with a token that writes runs nothing of the pull request.
    for step in steps(comment_job) {
        if let Some(uses) = step["uses"].as_str() {
            assert!(!uses.starts_with("actions/checkout"), "{uses}");
        }
    }
    assert!(text(&named_step(comment_job, "comment")["run"]).starts_with("gh pr comment"));

    let build_job = &workflow["jobs"]["build"];
    assert!(text(&build_job["if"]).contains("refs/heads/main"));
    let build_plan = named_step(build_job, "plan");
    let apply = named_step(build_job, "apply");
    assert_eq!(text(&apply["if"]), "steps.plan.outputs.changes == 'true'");
    assert_eq!(
        vmbuild_lines(text(&build_plan["run"])),
        ["vmbuild plan sites/toxodb.hcl --detailed-exitcode --out plan.json"]
    );
    assert_eq!(
        vmbuild_lines(text(&apply["run"])),
        [
            "vmbuild apply plan.json --output out/",
            "vmbuild diff -r sites/toxodb.hcl > out/CHANGES.txt || true"
        ]
    );

    // The pull request job's script, for real: a fork's pull request gets no secret (the
    // expression yields ''), and its plan stops at env(): exit 1, the error is the comment.
    let project = stand_in_project();
    let (code, outputs, _) = run_step(&project, script, &with_global(step_env(plan_step, "")));
    assert_eq!(
        code, 0,
        "the step itself passes; a later step fails the job"
    );
    assert_eq!(outputs["exitcode"], "1");
    let comment = std::fs::read_to_string(project.path().join("comment.md")).unwrap();
    assert!(
        comment.starts_with("### vmbuild plan failed (exit 1)"),
        "{comment}"
    );
    assert!(
        comment.contains("the environment variable `TOXO_SOURCE_URL` is not set"),
        "{comment}"
    );
    // This repository's pull request: changes, and the plan as the comment, without the secret.
    let env = with_global(step_env(plan_step, SECRET));
    let (code, outputs, _) = run_step(&project, script, &env);
    assert_eq!((code, outputs["exitcode"].as_str()), (0, "2"));
    let comment = std::fs::read_to_string(project.path().join("comment.md")).unwrap();
    assert!(comment.contains("**1 to run**, 0 cached."), "{comment}");
    assert!(
        comment.contains("| `step.site` | command | **run** |"),
        "{comment}"
    );
    assert!(!comment.contains("Ci-Secret-81x"), "{comment}");
    let summary = std::fs::read_to_string(project.path().join("github-summary")).unwrap();
    assert!(summary.contains("step.site"), "{summary}");

    // The merge: plan says changes, apply applies the saved plan, and the next push has
    // nothing to do.
    let env = with_global(step_env(build_job, SECRET));
    let (code, outputs, stderr) = run_step(&project, text(&build_plan["run"]), &env);
    assert_eq!((code, outputs["changes"].as_str()), (0, "true"), "{stderr}");
    assert!(project.path().join("plan.json").exists());
    let (code, _, stderr) = run_step(&project, text(&apply["run"]), &env);
    assert_eq!(code, 0, "{stderr}");
    let (code, outputs, stderr) = run_step(&project, text(&build_plan["run"]), &env);
    assert_eq!(
        (code, outputs["changes"].as_str()),
        (0, "false"),
        "{stderr}"
    );
    // And a pull request that changes nothing says so.
    let (code, outputs, _) = run_step(&project, script, &with_global(step_env(plan_step, SECRET)));
    assert_eq!((code, outputs["exitcode"].as_str()), (0, "0"));
    let comment = std::fs::read_to_string(project.path().join("comment.md")).unwrap();
    assert!(
        comment.contains("Nothing to do: all 1 steps are cached."),
        "{comment}"
    );
}

/// The shell commands of a Jenkinsfile: the single-quoted strings given to `sh`, as
/// `sh 'TEXT'` or `sh(script: 'TEXT', ...)`.
fn jenkins_shell_commands(jenkinsfile: &str) -> Vec<String> {
    let mut commands = Vec::new();
    for line in jenkinsfile.lines() {
        let line = line.trim();
        if line.starts_with("//") {
            continue;
        }
        for opening in ["sh '", "sh(script: '"] {
            if let Some(rest) = line.split_once(opening).map(|(_, r)| r) {
                let end = rest.find('\'').expect("a closed string");
                commands.push(rest[..end].to_string());
            }
        }
    }
    commands
}

#[test]
fn every_vmbuild_command_of_the_jenkinsfile_runs_with_the_real_binary() {
    let jenkinsfile = ci_file("Jenkinsfile");
    assert!(jenkinsfile.contains("VMBUILD_STORE = '/var/lib/vmbuild/store'"));
    // Credentials only for pull requests that are not from forks, and on main.
    assert!(jenkinsfile.contains("if (env.CHANGE_FORK) {\n            code = plan()"));
    assert_eq!(
        jenkinsfile
            .matches("withCredentials([string(credentialsId: 'toxodb-export-url', variable: 'TOXO_SOURCE_URL')])")
            .count(),
        2
    );
    let commands = jenkins_shell_commands(&jenkinsfile);
    assert_eq!(
        commands,
        [
            "vmbuild plan sites/toxodb.hcl --format markdown --detailed-exitcode > plan.md 2> plan.err",
            "vmbuild plan sites/toxodb.hcl --detailed-exitcode --out plan.json",
            "vmbuild apply plan.json --output out/",
            "vmbuild diff -r sites/toxodb.hcl > out/CHANGES.txt || true",
        ]
    );
    let every_line: Vec<&str> = jenkinsfile
        .lines()
        .filter(|l| !l.trim().starts_with("//") && l.contains("'vmbuild "))
        .collect();
    assert_eq!(every_line.len(), commands.len(), "{every_line:#?}");
    // Run in order, as the stages would on a pull request and then on main: plans with
    // `--detailed-exitcode` say 2 (changes) on a new store; everything else succeeds.
    let project = stand_in_project();
    let mut codes = Vec::new();
    for command in &commands {
        let output = Command::new("sh")
            .args(["-c", command])
            .current_dir(project.path())
            .env("PATH", path_with_vmbuild())
            .env("VMBUILD_STORE", project.store())
            .env("NO_COLOR", "1")
            .env("TOXO_SOURCE_URL", SECRET)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!refused_by_the_parser(&stderr), "`{command}`:\n{stderr}");
        codes.push(output.status.code().unwrap_or(-1));
    }
    assert_eq!(codes, [2, 2, 0, 0]);
    let plan = std::fs::read_to_string(project.path().join("plan.md")).unwrap();
    assert!(plan.contains("step.site"), "{plan}");
    // After the build, the plan has nothing to do.
    let output = Command::new("sh")
        .args(["-c", &commands[1]])
        .current_dir(project.path())
        .env("PATH", path_with_vmbuild())
        .env("VMBUILD_STORE", project.store())
        .env("TOXO_SOURCE_URL", SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
}

/// A program on `PATH`, resolved through its links.
fn program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

#[test]
fn the_jenkinsfile_is_groovy_where_groovy_is_installed() {
    // Jenkins runs pipelines on Groovy 2.4; Debian's `groovy` package is that version.
    let (Some(groovyc), Some(java)) = (program("groovyc"), program("java")) else {
        eprintln!("skipped: no groovyc (Debian's `groovy`) or java");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("Jenkinsfile.groovy");
    std::fs::write(&script, ci_file("Jenkinsfile")).unwrap();
    let java_home = java.parent().and_then(Path::parent).unwrap();
    let output = Command::new(groovyc)
        .arg("-d")
        .arg(dir.path().join("classes"))
        .arg(&script)
        .env("JAVA_HOME", java_home)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("classes/Jenkinsfile.class").exists());
}

#[test]
fn the_book_includes_the_ci_files_rather_than_copies() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src/ci.md"))
            .unwrap();
    for file in ["Jenkinsfile", "github-actions.yml"] {
        assert!(
            page.contains(&format!("{{{{#include ../../examples/ci/{file}}}}}")),
            "book/src/ci.md does not include {file}"
        );
        let included: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("book/src/../../examples/ci")
            .join(file);
        assert!(included.exists(), "{}", included.display());
    }
    // No copy of either beside the includes.
    assert!(
        !page.contains("pipeline {"),
        "a Jenkinsfile is copied into the page"
    );
    assert!(
        !page.contains("jobs:"),
        "a workflow is copied into the page"
    );
}

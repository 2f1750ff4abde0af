//! Running in parallel: overlap, failures, --keep-going, and two applies on one store.

use std::time::Duration;

use crate::support::Project;

/// Start and end times (ns since the epoch) that a step records in the project folder.
fn span(project: &Project, name: &str) -> (u128, u128) {
    let text = std::fs::read_to_string(project.path().join(format!("{name}.time"))).unwrap();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u128>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

fn timed(name: &str, seconds: &str) -> String {
    format!(
        r#"
step "{name}" {{
  command = ["sh", "-c", "s=$(date +%s%N); sleep {seconds}; echo $s $(date +%s%N) > {name}.time; echo {name} > $VMBUILD_OUT/x"]
}}
"#
    )
}

#[test]
fn independent_steps_overlap_in_time() {
    let project = Project::new();
    project.recipe(&format!("{}{}", timed("left", "1"), timed("right", "1")));
    project.run(&["apply", "site.hcl", "--jobs", "2"]).success();
    let (l0, l1) = span(&project, "left");
    let (r0, r1) = span(&project, "right");
    assert!(
        l0 < r1 && r0 < l1,
        "the two steps ran one after the other: {l0}-{l1} / {r0}-{r1}"
    );
}

#[test]
fn jobs_1_runs_one_at_a_time() {
    let project = Project::new();
    project.recipe(&format!(
        "{}{}",
        timed("left", "0.3"),
        timed("right", "0.3")
    ));
    project.run(&["apply", "site.hcl", "--jobs", "1"]).success();
    let (l0, l1) = span(&project, "left");
    let (r0, r1) = span(&project, "right");
    assert!(l1 <= r0 || r1 <= l0, "with --jobs 1 the steps overlapped");
}

const FAILING: &str = r#"
step "ok" {
  command = ["sh", "-c", "echo fine > $VMBUILD_OUT/ok"]
}
step "broken" {
  command = ["sh", "-c", "echo half > $VMBUILD_OUT/half; echo 'something went wrong' >&2; test -e fixed"]
  after   = ["step.ok"]
}
step "after-broken" {
  command = ["sh", "-c", "echo never > $VMBUILD_OUT/x"]
  after   = ["step.broken"]
}
step "slow-independent" {
  command = ["sh", "-c", "sleep 1; echo done > $VMBUILD_OUT/x"]
}
"#;

#[test]
fn a_failure_stops_dependents_and_the_next_apply_finishes_the_rest() {
    let project = Project::new();
    project.recipe(FAILING);
    let run = project.run(&["apply", "site.hcl", "--jobs", "2"]).code(1);
    assert!(
        run.stderr
            .contains("step.broken: FAILED: `sh` exited with exit code 1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("step.after-broken: skipped: `step.broken` failed"),
        "{}",
        run.stderr
    );
    // The failed step's log is kept and shown by `vmbuild log`.
    let log = project
        .run(&["log", "step.broken", "-r", "site.hcl"])
        .success();
    assert_eq!(log.stdout, "something went wrong\n");
    // Nothing half-built entered the store, and what is there verifies.
    project.run(&["store", "verify"]).success();
    let trees = std::fs::read_dir(project.store().join("trees"))
        .unwrap()
        .count();
    assert!(
        trees <= 2,
        "only ok and maybe slow-independent are committed"
    );
    for entry in std::fs::read_dir(project.store().join("trees")).unwrap() {
        assert!(
            !entry.unwrap().path().join("half").exists(),
            "the failed step's output was committed"
        );
    }
    assert!(
        std::fs::read_dir(project.store().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "staging left behind"
    );
    // Fix it: the next apply runs only what is missing.
    project.file("fixed", "");
    let mut planned = project.to_run();
    planned.sort();
    assert!(planned.contains(&"step.broken".to_string()));
    assert!(!planned.contains(&"step.ok".to_string()));
    project.run(&["apply", "site.hcl"]).success();
    assert!(project.to_run().is_empty());
}

#[test]
fn keep_going_lets_independent_branches_finish() {
    let project = Project::new();
    project.recipe(&FAILING.replace("sleep 1", "sleep 0.5"));
    let run = project
        .run(&["apply", "site.hcl", "--jobs", "1", "--keep-going"])
        .code(1);
    assert!(
        run.stderr.contains("step.slow-independent: done"),
        "{}",
        run.stderr
    );
    let mut left = project.to_run();
    left.sort();
    assert_eq!(left, ["step.after-broken", "step.broken"]);
}

#[test]
fn without_keep_going_nothing_new_starts_after_a_failure() {
    let project = Project::new();
    project.recipe(
        r#"
step "fails" {
  command = ["false"]
}
step "later" {
  command = ["sh", "-c", "echo x > $VMBUILD_OUT/x"]
}
"#,
    );
    let run = project.run(&["apply", "site.hcl", "--jobs", "1"]).code(1);
    assert!(run.stderr.contains("step.later: skipped"), "{}", run.stderr);
    assert_eq!(project.to_run().len(), 2);
}

#[test]
fn two_applies_on_one_store_build_each_key_once() {
    let project = Project::new();
    project.recipe(
        r#"
step "shared" {
  command = ["sh", "-c", "echo run >> count.log; sleep 1; echo x > $VMBUILD_OUT/x"]
}
"#,
    );
    let first = project.command(&["apply", "site.hcl"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let second = project.command(&["apply", "site.hcl"]).output().unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success() && second.status.success());
    let count = std::fs::read_to_string(project.path().join("count.log")).unwrap();
    assert_eq!(count.lines().count(), 1, "the key was built twice");
    project.run(&["store", "verify"]).success();
}

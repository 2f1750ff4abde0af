//! Interruptions: Ctrl-C and SIGTERM stop cleanly; SIGKILL at any moment leaves a store that
//! verifies and that the next apply completes.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

use crate::support::Project;

/// Eight steps that write a few MiB each, so a kill lands mid-write, mid-hash or mid-commit.
fn busy_recipe() -> String {
    let mut recipe = String::new();
    for i in 0..8 {
        let after = if i >= 2 {
            format!("after = [\"step.s{}\"]", i - 2)
        } else {
            String::new()
        };
        recipe.push_str(&format!(
            r#"
step "s{i}" {{
  command = ["sh", "-c", "for n in 1 2 3 4; do head -c 1000000 /dev/urandom > $VMBUILD_OUT/f$n; done; echo {i} > $VMBUILD_OUT/id"]
  {after}
}}
"#
        ));
    }
    recipe
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_corrupt_object() {
    let project = Project::new();
    project.recipe(&busy_recipe());
    let mut rng = rand::rng();
    for round in 0..6 {
        let mut child = project
            .command(&["apply", "site.hcl", "--jobs", "2"])
            .spawn()
            .unwrap();
        let delay = rng.random_range(20..600);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        let verify = project.run(&["store", "verify"]);
        assert_eq!(
            verify.code,
            0,
            "round {round}, killed after {delay} ms:\n{}",
            verify.transcript()
        );
    }
    project.run(&["apply", "site.hcl"]).success();
    assert!(project.to_run().is_empty());
    project.run(&["store", "verify"]).success();
}

#[test]
fn ctrl_c_kills_running_steps_commits_nothing_and_exits_130() {
    let project = Project::new();
    project.recipe(
        r#"
step "quick" {
  command = ["sh", "-c", "echo q > $VMBUILD_OUT/q"]
}
step "long" {
  command = ["sh", "-c", "echo $$ > long.pid; echo partial > $VMBUILD_OUT/p; sleep 30; echo late > late.txt"]
  after   = ["step.quick"]
}
"#,
    );
    let child = project
        .command(&["apply", "site.hcl"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid_file = project.path().join("long.pid");
    let started = Instant::now();
    while !pid_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the long step never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("Stopped"), "{stderr}");
    // The command was killed, not left running.
    let shell: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        kill(Pid::from_raw(shell), None).is_err(),
        "the step's shell still runs"
    );
    assert!(!project.path().join("late.txt").exists());
    // quick was committed; long was not, and nothing is left staged.
    assert_eq!(project.to_run(), ["step.long"]);
    project.run(&["store", "verify"]).success();
    assert!(std::fs::read_dir(project.store().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn sigterm_stops_like_ctrl_c() {
    let project = Project::new();
    project.recipe(
        r#"
step "long" {
  command = ["sh", "-c", "touch started; sleep 30"]
}
"#,
    );
    let child = project
        .command(&["apply", "site.hcl"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !project.path().join("started").exists() {
        assert!(started.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited for the command to finish"
    );
}

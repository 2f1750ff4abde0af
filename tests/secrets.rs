//! Secrets never reach plans, logs, progress output or the store's metadata.

use crate::support::Project;

const SECRET: &str = "hunter2-very-secret";

#[test]
fn a_secret_from_the_environment_appears_nowhere() {
    let project = Project::new();
    project.recipe(
        r#"
variable "db_password" {
  sensitive = true
  default   = "unused-default"
}
step "connect" {
  command = ["sh", "-c", "echo connecting with $DB_URL and ${var.db_password}; echo done > $VMBUILD_OUT/ok"]
  env     = { DB_URL = "postgres://app:${env("VMBUILD_TEST_SECRET")}@db/toxo" }
}
"#,
    );
    let with_secret = |args: &[&str]| {
        let output = project
            .command(args)
            .env("VMBUILD_TEST_SECRET", SECRET)
            .env("VMBUILD_VAR_db_password", "second-secret-value")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?}: {text}");
        text
    };
    for format in ["text", "json", "markdown"] {
        let text = with_secret(&["plan", "site.hcl", "--format", format]);
        assert!(
            !text.contains(SECRET) && !text.contains("second-secret"),
            "plan {format}: {text}"
        );
    }
    let applied = with_secret(&["apply", "site.hcl"]);
    assert!(!applied.contains(SECRET), "{applied}");
    let shown = with_secret(&["show", "step.connect", "-r", "site.hcl"]);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        shown.contains("env(\\\"VMBUILD_TEST_SECRET\\\")") || shown.contains("sensitive"),
        "{shown}"
    );
    // The command did see the real value: its log has it blanked out.
    let log = with_secret(&["log", "step.connect", "-r", "site.hcl"]);
    assert!(
        log.contains("connecting with postgres://app:(sensitive)@db/toxo and (sensitive)"),
        "{log}"
    );
    for (path, bytes) in project.store_files() {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(SECRET) && !text.contains("second-secret"),
            "`{}` holds a secret",
            path.display()
        );
    }
    // A changed secret value does not change the key: secrets are keyed by identity.
    let output = project
        .command(&["plan", "site.hcl", "--detailed-exitcode"])
        .env("VMBUILD_TEST_SECRET", "another-value")
        .env("VMBUILD_VAR_db_password", "second-secret-value")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn a_saved_plan_holds_no_secret() {
    let project = Project::new();
    project.recipe(
        r#"
variable "token" { sensitive = true }
step "s" {
  command = ["sh", "-c", "echo ${var.token} | wc -c > $VMBUILD_OUT/n"]
}
"#,
    );
    let output = project
        .command(&["plan", "site.hcl", "--out", "plan.json"])
        .env("VMBUILD_VAR_token", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success());
    let saved = std::fs::read_to_string(project.path().join("plan.json")).unwrap();
    assert!(!saved.contains(SECRET), "{saved}");
}

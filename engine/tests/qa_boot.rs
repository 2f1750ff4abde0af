//! QA against a real boot under QEMU. Runs only when `VMBUILD_TEST_QA_IMAGE` names a bootable
//! raw image that serves HTTP on port 80 (the default nginx page); set
//! `VMBUILD_TEST_QA_AGENT=1` as well if the image has `qemu-guest-agent`, to test command
//! checks. The tests are ignored by default: `cargo test --test qa_boot -- --ignored` with the
//! variables set. CI covers QA through the end-to-end tests instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::recipe::model::{CommandCheck, HttpCheck};
use engine::steps::qa::{run_qa, BootSpec, QaError};
use tokio_util::sync::CancellationToken;

fn image() -> Option<PathBuf> {
    match std::env::var_os("VMBUILD_TEST_QA_IMAGE") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            eprintln!("skipped: set VMBUILD_TEST_QA_IMAGE=/path/to/image.raw to boot it");
            None
        }
    }
}

fn has_agent() -> bool {
    std::env::var("VMBUILD_TEST_QA_AGENT").as_deref() == Ok("1")
}

fn spec(image: &Path, dir: &Path) -> BootSpec {
    let mut spec = BootSpec::new(image, "raw", &dir.join("console.log"), &dir.join("scratch"));
    spec.boot_timeout = Duration::from_secs(240);
    spec
}

fn http(name: &str, path: &str, body: Option<&str>) -> HttpCheck {
    HttpCheck {
        name: name.into(),
        path: path.into(),
        port: None,
        expect_status: None,
        expect_body: body.map(str::to_string),
        reject_body: None,
    }
}

fn command(name: &str, run: &str, exit: Option<i32>, output: Option<&str>) -> CommandCheck {
    CommandCheck {
        name: name.into(),
        run: run.into(),
        expect_exit: exit,
        expect_output: output.map(str::to_string),
    }
}

/// Processes whose command line mentions `needle` (to prove QEMU is gone).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a VM: run with --ignored and VMBUILD_TEST_QA_IMAGE=IMAGE.raw (the e2e tests cover QA in CI)"]
async fn boots_and_passes_checks() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = spec(&image, dir.path());
    let checks = [
        http("home", "/", Some("nginx")),
        http("missing", "/no-such-page", None),
    ];
    let mut checks = checks.to_vec();
    checks[1].expect_status = Some(404);
    let commands = if has_agent() {
        vec![
            command("hostname", "cat /etc/hostname", None, None),
            command(
                "exit code",
                "echo out; echo err >&2; exit 3",
                Some(3),
                Some("out"),
            ),
            command(
                "booted",
                "systemctl is-system-running --wait; true",
                None,
                None,
            ),
        ]
    } else {
        Vec::new()
    };
    let report = run_qa(&spec, &checks, &commands, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("QA failed: {e}"));
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("report is JSON")
    );
    assert!(report.passed());
    assert_eq!(report.checks.len(), checks.len() + commands.len());
    assert!(report.boot_seconds > 0.0);
    if has_agent() {
        let hostname = &report.checks[2].detail;
        assert!(hostname.contains("stdout"), "{hostname}");
    }
    assert!(processes_mentioning(&dir.path().to_string_lossy()).is_empty());
    let console = std::fs::read_to_string(dir.path().join("console.log")).expect("console");
    assert!(!console.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a VM: run with --ignored and VMBUILD_TEST_QA_IMAGE=IMAGE.raw (the e2e tests cover QA in CI)"]
async fn a_wrong_body_fails_naming_the_check_and_quoting_the_console() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = spec(&image, dir.path());
    let checks = [
        http("home", "/", Some("nginx")),
        http("title", "/", Some("ToxoDB release 68")),
    ];
    let commands = if has_agent() {
        vec![command(
            "wrong output",
            "cat /etc/hostname",
            None,
            Some("not-this-host"),
        )]
    } else {
        Vec::new()
    };
    let err = run_qa(&spec, &checks, &commands, CancellationToken::new())
        .await
        .expect_err("the body check must fail");
    let text = err.to_string();
    println!("{text}");
    let QaError::ChecksFailed { report, .. } = &err else {
        panic!("not a check failure: {text}");
    };
    assert!(report.checks[0].passed, "{text}");
    assert!(!report.checks[1].passed);
    assert!(text.contains("http check `title`"), "{text}");
    assert!(text.contains("\"ToxoDB release 68\""), "{text}");
    assert!(text.contains("status 200"), "{text}");
    assert!(
        text.contains("last lines of the serial console:\n  "),
        "{text}"
    );
    if has_agent() {
        assert!(text.contains("command check `wrong output`"), "{text}");
    }
    assert!(processes_mentioning(&dir.path().to_string_lossy()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a VM: run with --ignored and VMBUILD_TEST_QA_IMAGE=IMAGE.raw (the e2e tests cover QA in CI)"]
async fn a_guest_that_never_answers_times_out_with_the_console() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(&image, dir.path());
    spec.guest_port = 81; // nothing listens there
    spec.boot_timeout = Duration::from_secs(25);
    let started = std::time::Instant::now();
    let err = run_qa(&spec, &[], &[], CancellationToken::new())
        .await
        .expect_err("no answer on port 81");
    let text = err.to_string();
    println!("{text}");
    assert!(matches!(err, QaError::BootTimeout { .. }), "{text}");
    assert!(text.contains("HTTP on port 81"), "{text}");
    assert!(text.contains("serial console"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(processes_mentioning(&dir.path().to_string_lossy()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a VM: run with --ignored and VMBUILD_TEST_QA_IMAGE=IMAGE.raw (the e2e tests cover QA in CI)"]
async fn cancelling_kills_qemu() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = spec(&image, dir.path());
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        trigger.cancel();
    });
    let checks = [http("home", "/", None)];
    let err = run_qa(&spec, &checks, &[], cancel)
        .await
        .expect_err("cancelled");
    assert!(matches!(err, QaError::Cancelled), "{err}");
    // kill_on_drop sends SIGKILL; give the kernel a moment to reap it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = processes_mentioning(&dir.path().to_string_lossy());
    assert!(left.is_empty(), "QEMU still running: {left:?}");
}

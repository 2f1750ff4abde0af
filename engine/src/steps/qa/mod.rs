//! QA: boot a built VM disk under QEMU and run the recipe's checks against it.
//!
//! [`run_qa`] boots the image in snapshot mode (it is never modified), with the serial console
//! kept in a file, waits until the guest answers HTTP (any parsed status line) on a loopback
//! port forward, runs the HTTP checks over that forward and the command checks through the
//! QEMU guest agent, then powers the guest off (ACPI, then QMP `quit`, then kill). QEMU never
//! outlives the call: errors and cancellation kill it.

pub mod agent;
pub mod channel;
pub mod http;
pub mod qemu;
pub mod step;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

pub use crate::recipe::model::{CommandCheck, HttpCheck};
pub use qemu::Accel;

use agent::Agent;
use qemu::{StartFailure, Vm, VmConfig, VmPaths};

/// Lines of the serial console quoted in errors.
const CONSOLE_TAIL_LINES: usize = 40;
/// Bytes of a response body or command output quoted in a failed check.
const SNIPPET_BYTES: usize = 300;
/// How long a guest gets to power itself off after the ACPI power button.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);
/// Under KVM chosen automatically, a console that stays unchanged this long before the guest
/// answers means KVM is not really working (nested set-ups that open `/dev/kvm` but never run
/// the guest's timer): QEMU is restarted under TCG.
const KVM_STALL: Duration = Duration::from_secs(20);
/// How long an HTTP check keeps retrying while the server says it is not ready yet
/// (502, 503, 504) or refuses connections on its port.
const WARMUP_GRACE: Duration = Duration::from_secs(60);
/// The least time the guest agent gets after the guest answered HTTP.
const AGENT_MIN_WAIT: Duration = Duration::from_secs(60);
/// Attempts at binding the port forwards (another program can take a port QEMU was given).
const PORT_ATTEMPTS: usize = 5;

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The image to boot; QEMU opens it with `snapshot=on`, so it is never modified.
    pub disk: PathBuf,
    /// `qcow2`, `raw`, `vmdk` or `vdi`.
    pub format: String,
    pub memory_mib: u64,
    pub cpus: u32,
    /// The guest's HTTP port, polled to know the guest is up.
    pub guest_port: u16,
    /// How long the guest gets to answer (the recipe's `qa.timeout`).
    pub boot_timeout: Duration,
    /// The serial console, written by QEMU and kept.
    pub console_log: PathBuf,
    /// Sockets and QEMU's standard error; also QEMU's `TMPDIR` (the snapshot overlay).
    pub scratch: PathBuf,
    /// Defaults to `VMBUILD_QEMU_ACCEL` (`auto`, `kvm`, `tcg`), else `auto`.
    pub accel: Accel,
}

impl BootSpec {
    /// The defaults: 1024 MiB, one CPU, guest port 80, five minutes.
    pub fn new(disk: &Path, format: &str, console_log: &Path, scratch: &Path) -> BootSpec {
        BootSpec {
            disk: disk.to_path_buf(),
            format: format.to_string(),
            memory_mib: 1024,
            cpus: 1,
            guest_port: 80,
            boot_timeout: Duration::from_secs(300),
            console_log: console_log.to_path_buf(),
            scratch: scratch.to_path_buf(),
            accel: Accel::from_env(),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    /// `http` or `command`.
    pub kind: String,
    pub passed: bool,
    pub seconds: f64,
    /// What was seen; for a failure, what was expected and what came instead.
    pub detail: String,
}

/// What QA found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaReport {
    /// From starting QEMU to the guest's first answer.
    pub boot_seconds: f64,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub checks: Vec<CheckResult>,
    /// `agent` or `acpi` (the guest powered off when asked), `quit`, `killed`, or `guest`
    /// (it had already stopped by itself).
    pub shutdown: String,
    /// From the power-off request to QEMU's exit.
    pub shutdown_seconds: f64,
    /// Anything worth knowing: an accelerator fallback, a port collision retried.
    pub notes: Vec<String>,
}

impl QaReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// Why QA failed.
#[derive(Debug, thiserror::Error)]
pub enum QaError {
    #[error(
        "`qemu-system-x86_64` is not installed: install the Debian package `qemu-system-x86` \
         (apt-get install qemu-system-x86)"
    )]
    QemuMissing,
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU ({accel}) could not start: {detail}")]
    QemuStart { accel: String, detail: String },
    #[error("QEMU ({accel}) exited before the guest answered ({status}){}{}", stderr_block(.stderr), tail_block(.console_tail))]
    QemuExited {
        accel: String,
        status: String,
        stderr: String,
        console_tail: String,
    },
    #[error("the guest did not answer {what} within {seconds} s ({accel}){}", tail_block(.console_tail))]
    BootTimeout {
        what: String,
        seconds: u64,
        accel: String,
        console_tail: String,
    },
    #[error("{} of {} QA checks failed:\n{}{}", .failures.len(), .report.checks.len(), .failures.join("\n"), tail_block(.console_tail))]
    ChecksFailed {
        report: Box<QaReport>,
        /// One line per failed check: its name, what was expected and what came.
        failures: Vec<String>,
        console_tail: String,
    },
    #[error("QA was cancelled")]
    Cancelled,
}

fn tail_block(tail: &str) -> String {
    if tail.is_empty() {
        "\n(the serial console is empty)".to_string()
    } else {
        format!("\nlast lines of the serial console:\n{tail}")
    }
}

fn stderr_block(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("\nQEMU said: {stderr}")
    }
}

/// Boot `spec.disk`, run the checks, power off. `Ok` only if every check passed; a failed
/// check gives [`QaError::ChecksFailed`], which holds the full report.
pub async fn run_qa(
    spec: &BootSpec,
    http: &[HttpCheck],
    commands: &[CommandCheck],
    cancel: CancellationToken,
) -> Result<QaReport, QaError> {
    tokio::select! {
        result = run_qa_inner(spec, http, commands) => result,
        // Dropping the other branch drops the `Vm`, which kills QEMU.
        () = cancel.cancelled() => Err(QaError::Cancelled),
    }
}

/// What tells that the guest is up.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Readiness {
    Http,
    Agent,
}

async fn run_qa_inner(
    spec: &BootSpec,
    http: &[HttpCheck],
    commands: &[CommandCheck],
) -> Result<QaReport, QaError> {
    let qemu = crate::steps::tools::QEMU_SYSTEM
        .find()
        .ok_or(QaError::QemuMissing)?;
    std::fs::metadata(&spec.disk).map_err(|source| QaError::Io {
        action: "read the disk image",
        path: spec.disk.clone(),
        source,
    })?;
    std::fs::create_dir_all(&spec.scratch).map_err(|source| QaError::Io {
        action: "create the scratch folder",
        path: spec.scratch.clone(),
        source,
    })?;
    // Commands only: the agent says the guest is up. Otherwise (or with no checks at all, a
    // plain "does it boot and serve"): HTTP on the guest port.
    let readiness = if http.is_empty() && !commands.is_empty() {
        Readiness::Agent
    } else {
        Readiness::Http
    };
    let guest_ports: Vec<u16> = std::iter::once(spec.guest_port)
        .chain(http.iter().filter_map(|c| c.port))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut notes = Vec::new();
    let candidates = spec.accel.candidates();
    let mut booted = None;
    for (i, &accel) in candidates.iter().enumerate() {
        let can_fall_back = i + 1 < candidates.len();
        let mut vm = match start(&qemu, spec, accel, &guest_ports, &mut notes).await {
            Ok(vm) => vm,
            Err(e) if can_fall_back => {
                notes.push(format!("{e}; trying {}", candidates[i + 1].name()));
                continue;
            }
            Err(e) => return Err(e),
        };
        if accel == Accel::Kvm && !vm.kvm_enabled().await {
            notes.push("QEMU reports KVM is not enabled".to_string());
        }
        let mut agent = None;
        let watch_stall = can_fall_back && accel == Accel::Kvm;
        match wait_ready(&mut vm, spec, readiness, watch_stall, &mut agent).await {
            Ok(seconds) => {
                booted = Some((vm, agent, seconds, accel));
                break;
            }
            Err(Waited::Stalled) => {
                let killing = Instant::now();
                vm.kill().await;
                qemu::KVM_STALLED.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    seconds = killing.elapsed().as_secs_f64(),
                    "stalled KVM guest killed"
                );
                notes.push(format!(
                    "the guest made no progress under KVM for {} s; restarted under TCG",
                    KVM_STALL.as_secs()
                ));
            }
            Err(Waited::Failed(e)) => {
                vm.kill().await;
                return Err(e);
            }
        }
    }
    let Some((vm, mut agent, boot_seconds, accel)) = booted else {
        return Err(QaError::QemuStart {
            accel: spec.accel.name().to_string(),
            detail: notes.join("; "),
        });
    };
    tracing::info!(boot_seconds, accel = accel.name(), "QA guest is up");

    let mut checks = Vec::new();
    for check in http {
        checks.push(run_http_check(&vm, spec, check).await);
    }
    if !commands.is_empty() {
        let deadline = (vm.started + spec.boot_timeout).max(Instant::now() + AGENT_MIN_WAIT);
        let ready = match agent.take() {
            Some(a) => Ok(a),
            None => connect_agent(&vm, deadline).await,
        };
        match ready {
            Ok(mut a) => {
                // The agent starts early in boot: let services (a database) start first.
                notes.push(boot_finished(&mut a, deadline).await);
                for check in commands {
                    checks.push(run_command_check(&mut a, spec, check).await);
                }
                agent = Some(a);
            }
            Err(why) => {
                for check in commands {
                    checks.push(CheckResult {
                        name: check.name.clone(),
                        kind: "command".into(),
                        passed: false,
                        seconds: 0.0,
                        detail: why.clone(),
                    });
                }
            }
        }
    }

    // The agent powers the guest off whatever handles the power button (a minimal image has
    // no logind or acpid to act on ACPI's): connect to it if the checks did not.
    if agent.is_none() {
        agent = connect_agent(&vm, Instant::now() + Duration::from_secs(10))
            .await
            .ok();
    }
    let stopping = Instant::now();
    let shutdown = vm.power_off(POWEROFF_GRACE, agent.as_mut()).await;
    let shutdown_seconds = stopping.elapsed().as_secs_f64();
    match shutdown {
        qemu::Shutdown::Guest => notes.push(
            "QEMU exited during the checks: the guest powered off or crashed by itself (see the \
             console)"
                .to_string(),
        ),
        qemu::Shutdown::Quit | qemu::Shutdown::Killed => notes.push(format!(
            "the guest did not power off within {} s of the ACPI power button{}; QEMU was \
             stopped (a guest needs systemd-logind, which needs dbus, or acpid to honour the \
             button; or qemu-guest-agent)",
            POWEROFF_GRACE.as_secs(),
            if agent.is_some() {
                " and the guest agent's request"
            } else {
                ""
            }
        )),
        qemu::Shutdown::Acpi | qemu::Shutdown::Agent => {}
    }
    let report = QaReport {
        boot_seconds,
        accel: accel.name().to_string(),
        checks,
        shutdown: shutdown.name().to_string(),
        shutdown_seconds,
        notes,
    };
    if report.passed() {
        return Ok(report);
    }
    let failures = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("  {} check `{}`: {}", c.kind, c.name, c.detail))
        .collect();
    Err(QaError::ChecksFailed {
        report: Box::new(report),
        failures,
        console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_LINES),
    })
}

/// Start QEMU with `accel`, retrying with fresh ports if a forward cannot bind.
async fn start(
    qemu: &Path,
    spec: &BootSpec,
    accel: Accel,
    guest_ports: &[u16],
    notes: &mut Vec<String>,
) -> Result<Vm, QaError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let forwards = qemu::forwards_for(guest_ports).map_err(|source| QaError::Io {
            action: "find a free port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })?;
        let config = VmConfig {
            disk: spec.disk.clone(),
            format: spec.format.clone(),
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
            console_log: spec.console_log.clone(),
            accel,
            forwards,
            paths: VmPaths::in_dir(&spec.scratch),
        };
        let fail = |detail: String| QaError::QemuStart {
            accel: accel.name().to_string(),
            detail,
        };
        match Vm::start(qemu, config, &spec.scratch).await {
            Ok(vm) => {
                tracing::debug!(forwards = %qemu::describe_forwards(&vm.config.forwards), "QEMU started");
                return Ok(vm);
            }
            Err(StartFailure::PortTaken { stderr }) if attempt < PORT_ATTEMPTS => {
                notes.push(format!("port collision, retried: {stderr}"));
            }
            Err(StartFailure::PortTaken { stderr }) => return Err(fail(stderr)),
            Err(StartFailure::Exited { status, stderr }) => {
                return Err(fail(format!("{status}: {stderr}")))
            }
            Err(StartFailure::Spawn(source)) => {
                return Err(QaError::Spawn {
                    program: qemu.to_path_buf(),
                    source,
                })
            }
            Err(StartFailure::Io(e)) => return Err(fail(e.to_string())),
            Err(StartFailure::NoQmp(detail)) => return Err(fail(detail)),
        }
    }
}

enum Waited {
    /// KVM seems not to run the guest.
    Stalled,
    Failed(QaError),
}

/// Wait until the guest answers; returns the seconds since QEMU started. With `Agent`
/// readiness, the connected agent is left in `agent`.
async fn wait_ready(
    vm: &mut Vm,
    spec: &BootSpec,
    readiness: Readiness,
    watch_stall: bool,
    agent: &mut Option<Agent>,
) -> Result<f64, Waited> {
    let deadline = vm.started + spec.boot_timeout;
    let accel = vm.config.accel.name().to_string();
    let port = vm.host_port(spec.guest_port).unwrap_or_default();
    let host = host_header(spec.guest_port);
    let mut console_len = 0;
    let mut console_changed = Instant::now();
    loop {
        match vm.exited() {
            Ok(Some(status)) => {
                return Err(Waited::Failed(QaError::QemuExited {
                    accel,
                    status: status.to_string(),
                    stderr: vm.stderr(),
                    console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_LINES),
                }))
            }
            Ok(None) => {}
            Err(source) => {
                return Err(Waited::Failed(QaError::Io {
                    action: "watch QEMU for",
                    path: spec.disk.clone(),
                    source,
                }))
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let what = match readiness {
                Readiness::Http => format!("HTTP on port {}", spec.guest_port),
                Readiness::Agent => "through the guest agent".to_string(),
            };
            return Err(Waited::Failed(QaError::BootTimeout {
                what,
                seconds: spec.boot_timeout.as_secs(),
                accel,
                console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_LINES),
            }));
        }
        let len = std::fs::metadata(&spec.console_log).map_or(0, |m| m.len());
        if len != console_len {
            console_len = len;
            console_changed = now;
        } else if watch_stall && now.duration_since(console_changed) >= KVM_STALL {
            return Err(Waited::Stalled);
        }
        let left = deadline.saturating_duration_since(now);
        let up = match readiness {
            Readiness::Http => http::get(port, &host, "/", left.min(Duration::from_secs(3)))
                .await
                .is_ok(),
            Readiness::Agent => {
                if agent.is_none() {
                    *agent = Agent::connect(&vm.config.paths.qga).await.ok();
                }
                match agent {
                    Some(a) => a
                        .sync(left.min(Duration::from_secs(3)))
                        .await
                        .unwrap_or(false),
                    None => false,
                }
            }
        };
        if up {
            return Ok(vm.started.elapsed().as_secs_f64());
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// The `Host` header for a guest port.
fn host_header(guest_port: u16) -> String {
    if guest_port == 80 {
        "localhost".to_string()
    } else {
        format!("localhost:{guest_port}")
    }
}

async fn run_http_check(vm: &Vm, spec: &BootSpec, check: &HttpCheck) -> CheckResult {
    let started = Instant::now();
    let guest_port = check.port.unwrap_or(spec.guest_port);
    let expect_status = check.expect_status.unwrap_or(200);
    let port = vm.host_port(guest_port).unwrap_or_default();
    let host = host_header(guest_port);
    let mut expected = match &check.expect_body {
        Some(body) => format!("status {expect_status} and a body containing {body:?}"),
        None => format!("status {expect_status}"),
    };
    if let Some(rejected) = &check.reject_body {
        expected.push_str(&format!(" and not {rejected:?}"));
    }
    let warm_until = started + WARMUP_GRACE;
    let (passed, seen) = loop {
        let outcome = http::get(port, &host, &check.path, Duration::from_secs(30)).await;
        let retry = match &outcome {
            Ok(r) => matches!(r.status, 502..=504) && r.status != expect_status,
            // Nothing listening yet: user-mode networking accepts, then closes or resets.
            Err(
                http::HttpError::Connect(_)
                | http::HttpError::Incomplete(0)
                | http::HttpError::Io(_),
            ) => true,
            Err(_) => false,
        };
        if retry && Instant::now() < warm_until {
            sleep(Duration::from_secs(2)).await;
            continue;
        }
        break match outcome {
            Ok(r) => {
                let body_ok = check
                    .expect_body
                    .as_ref()
                    .is_none_or(|want| contains(&r.body, want.as_bytes()))
                    && check
                        .reject_body
                        .as_ref()
                        .is_none_or(|unwanted| !contains(&r.body, unwanted.as_bytes()));
                (
                    r.status == expect_status && body_ok,
                    format!(
                        "status {} {}, body ({} bytes): {:?}",
                        r.status,
                        r.reason,
                        r.body.len(),
                        http::snippet(&r.body, SNIPPET_BYTES)
                    ),
                )
            }
            Err(e) => (false, e.to_string()),
        };
    };
    let target = format!("GET {} on guest port {guest_port}", check.path);
    CheckResult {
        name: check.name.clone(),
        kind: "http".into(),
        passed,
        seconds: started.elapsed().as_secs_f64(),
        detail: if passed {
            format!("{target}: {seen}")
        } else {
            format!("{target}: expected {expected}; got {seen}")
        },
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Connect to the guest agent and wait for it to answer; the error is a check detail.
async fn connect_agent(vm: &Vm, deadline: Instant) -> Result<Agent, String> {
    let no_answer = || {
        format!(
            "the guest agent did not answer within {} s of boot (is `qemu-guest-agent` installed \
             and enabled in the image?)",
            deadline.duration_since(vm.started).as_secs()
        )
    };
    let mut agent = loop {
        match Agent::connect(&vm.config.paths.qga).await {
            Ok(a) => break a,
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(500)).await,
            Err(e) => return Err(format!("cannot connect to the guest agent socket: {e}")),
        }
    };
    match agent.wait_ready(deadline).await {
        Ok(true) => Ok(agent),
        Ok(false) => Err(no_answer()),
        Err(e) => Err(e.to_string()),
    }
}

/// Wait, through the agent, until systemd has finished booting the guest (`running`, or
/// `degraded` with the failed units named), so that command checks find services started.
async fn boot_finished(agent: &mut Agent, deadline: Instant) -> String {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(AGENT_MIN_WAIT);
    let state = match agent
        .exec_shell("systemctl is-system-running --wait", left)
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(e) => return format!("cannot tell whether the guest finished booting: {e}"),
    };
    if state == "degraded" {
        let failed = agent
            .exec_shell(
                "systemctl --failed --no-legend --plain | cut -d' ' -f1",
                left,
            )
            .await
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        format!("the guest booted degraded; failed units: {failed}")
    } else {
        format!("the guest finished booting: {state}")
    }
}

async fn run_command_check(
    agent: &mut Agent,
    spec: &BootSpec,
    check: &CommandCheck,
) -> CheckResult {
    let started = Instant::now();
    let expect_exit = check.expect_exit.unwrap_or(0);
    let expected = match &check.expect_output {
        Some(out) => format!("exit {expect_exit} and output containing {out:?}"),
        None => format!("exit {expect_exit}"),
    };
    let (passed, seen) = match agent.exec_shell(&check.run, spec.boot_timeout).await {
        Ok(out) => {
            let exit_ok = out.exit_code == Some(expect_exit);
            let output_ok = check
                .expect_output
                .as_ref()
                .is_none_or(|want| contains(&out.stdout, want.as_bytes()));
            let ended = match (out.exit_code, out.signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "no exit status".to_string(),
            };
            let mut seen = format!(
                "{ended}, stdout: {:?}",
                http::snippet(&out.stdout, SNIPPET_BYTES)
            );
            if !out.stderr.is_empty() {
                seen.push_str(&format!(
                    ", stderr: {:?}",
                    http::snippet(&out.stderr, SNIPPET_BYTES)
                ));
            }
            if out.truncated {
                seen.push_str(" (output truncated by the agent)");
            }
            (exit_ok && output_ok, seen)
        }
        Err(e) => (false, e.to_string()),
    };
    let target = format!("`{}`", check.run);
    CheckResult {
        name: check.name.clone(),
        kind: "command".into(),
        passed,
        seconds: started.elapsed().as_secs_f64(),
        detail: if passed {
            format!("{target}: {seen}")
        } else {
            format!("{target}: expected {expected}; got {seen}")
        },
    }
}

/// The last `lines` non-empty lines of the console log, terminal escapes removed, each
/// indented by two spaces; empty if there is no console output.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = strip_terminal_codes(&String::from_utf8_lossy(&bytes));
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    kept[kept.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Remove ANSI escape sequences (colours, cursor moves) and control characters other than
/// newlines and tabs.
pub fn strip_terminal_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                            if c == '\u{1b}' {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // A two-character sequence (ESC 7, ESC =, ...).
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_codes_are_removed() {
        let raw = "[\u{1b}[0;32m  OK  \u{1b}[0m] Started nginx\r\n\u{1b}[?25l\u{1b}[H\u{1b}]0;title\u{7}x";
        assert_eq!(strip_terminal_codes(raw), "[  OK  ] Started nginx\nx");
    }

    #[test]
    fn console_tail_keeps_the_last_non_empty_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let text: String = (1..=50).map(|i| format!("line {i}\r\n\r\n")).collect();
        std::fs::write(&path, text).expect("write");
        let tail = console_tail(&path, 3);
        assert_eq!(tail, "  line 48\n  line 49\n  line 50");
        assert_eq!(console_tail(&dir.path().join("missing"), 3), "");
    }

    #[test]
    fn failed_checks_name_the_check_and_quote_the_console() {
        let report = QaReport {
            boot_seconds: 1.0,
            accel: "tcg".into(),
            checks: vec![CheckResult {
                name: "home".into(),
                kind: "http".into(),
                passed: false,
                seconds: 0.1,
                detail: "expected status 200; got status 404".into(),
            }],
            shutdown: "acpi".into(),
            shutdown_seconds: 3.0,
            notes: vec![],
        };
        let err = QaError::ChecksFailed {
            failures: vec!["  http check `home`: expected status 200; got status 404".into()],
            report: Box::new(report),
            console_tail: "  login:".into(),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("1 of 1 QA checks failed:\n  http check `home`"),
            "{text}"
        );
        assert!(text.ends_with("serial console:\n  login:"), "{text}");
    }

    #[test]
    fn missing_qemu_names_the_package() {
        assert!(QaError::QemuMissing
            .to_string()
            .contains("`qemu-system-x86`"));
    }
}

//! Running an external program for a step: a clean environment, its own process group, output
//! streamed line by line into the step's log with secrets blanked out, and killed (the whole
//! group) when the step is cancelled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{RunContext, StepError};

/// The variables a step's command inherits from vmbuild's own environment; everything else it
/// gets is declared by the recipe or set by vmbuild.
const INHERITED: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM"];

/// A program with arguments and environment, to be run for a step.
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
}

/// Replace every secret in `line` by `(sensitive)`.
pub fn redact(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "(sensitive)");
        }
    }
    out
}

/// Find a program the way `execvp` would: a path with a slash is taken relative to `cwd`.
pub fn find_program(program: &str, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let path = cwd.join(program);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Run to completion, logging into `ctx.log`; fails on a non-zero exit or cancellation.
pub async fn run(invocation: Invocation, ctx: &RunContext) -> Result<(), StepError> {
    let mut command = Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .current_dir(&invocation.cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in INHERITED {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.env("TMPDIR", &ctx.scratch);
    command.envs(&invocation.env);
    // If vmbuild itself dies (even by SIGKILL), the child is killed too.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|source| StepError::Spawn {
        program: invocation.program.clone(),
        source,
    })?;
    let pid = child.id();
    let log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ctx.log)
        .await
        .map_err(|source| StepError::Io {
            action: "open the log",
            path: ctx.log.clone(),
            source,
        })?;
    let log = std::sync::Arc::new(tokio::sync::Mutex::new(log));
    let pump = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let log = log.clone();
        let redact_list = ctx.redact.clone();
        let on_line = ctx.on_line.clone();
        async move {
            let Some(stream) = stream else { return };
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let clean = redact(&line, &redact_list);
                on_line(&clean);
                let mut file = log.lock().await;
                let _ = file.write_all(clean.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
            }
        }
    };
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let output = async { tokio::join!(pump(stdout), pump(stderr)) };
    let waited = async {
        let (_, status) = tokio::join!(output, child.wait());
        status
    };
    tokio::select! {
        status = waited => {
            let status = status.map_err(|source| StepError::Spawn { program: invocation.program.clone(), source })?;
            let mut file = log.lock().await;
            let _ = file.flush().await;
            if status.success() {
                Ok(())
            } else {
                Err(StepError::Failed { program: invocation.program, status: describe(status) })
            }
        }
        _ = ctx.cancel.cancelled() => {
            if let Some(pid) = pid {
                kill_group(pid).await;
            }
            Err(StepError::Cancelled)
        }
    }
}

/// SIGTERM to the whole process group, then SIGKILL after a grace period.
async fn kill_group(pid: u32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if killpg(group, None).is_err() {
            return;
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "an unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_occurrence() {
        let secrets = vec!["hunter2".to_string(), String::new()];
        assert_eq!(
            redact("pw=hunter2 again hunter2", &secrets),
            "pw=(sensitive) again (sensitive)"
        );
        assert_eq!(redact("nothing here", &secrets), "nothing here");
    }
}

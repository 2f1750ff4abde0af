//! A client for the QEMU guest agent (`qemu-ga`) over its virtio-serial channel, which QEMU
//! exposes as a unix socket: resynchronisation with `guest-sync-delimited`, then commands run
//! with `guest-exec` and polled with `guest-exec-status` until they exit.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

use super::channel::{JsonChannel, DELIMITER};

/// Why talking to the guest agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("guest agent channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest agent did not answer `{command}` within {seconds:.0} s")]
    Timeout { command: String, seconds: f64 },
    #[error("the guest agent refused `{command}`: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
    #[error("unexpected answer from the guest agent to `{command}`: {answer}")]
    Protocol { command: String, answer: String },
}

/// What a command run in the guest did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    /// The exit code, if the command exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent cut the output short (it keeps at most 16 MiB per stream).
    pub truncated: bool,
}

/// A connection to the guest agent.
pub struct Agent {
    channel: JsonChannel,
}

impl Agent {
    pub async fn connect(socket: &Path) -> std::io::Result<Agent> {
        Ok(Agent {
            channel: JsonChannel::connect(socket).await?,
        })
    }

    pub fn from_channel(channel: JsonChannel) -> Agent {
        Agent { channel }
    }

    /// One resynchronisation attempt: flushes the agent's parser with `0xFF`, sends
    /// `guest-sync-delimited` with a fresh id and waits up to `wait` for that id to come back.
    /// `Ok(false)` if it did not (the agent is not running yet); replies to earlier attempts
    /// are discarded.
    pub async fn sync(&mut self, wait: Duration) -> Result<bool, AgentError> {
        let id: u32 = rand::random::<u32>() & 0x7fff_ffff;
        self.channel.send_raw(&[DELIMITER]).await?;
        self.channel
            .send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))
            .await?;
        let deadline = Instant::now() + wait;
        loop {
            let Ok(received) = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.channel.recv(),
            )
            .await
            else {
                return Ok(false);
            };
            if received?.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
                return Ok(true);
            }
        }
    }

    /// Sync attempts of a few seconds each until one succeeds or `deadline` passes.
    pub async fn wait_ready(&mut self, deadline: Instant) -> Result<bool, AgentError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if self.sync(left.min(Duration::from_secs(5))).await? {
                return Ok(true);
            }
        }
    }

    /// Run one command and return its `return` value.
    pub async fn call(
        &mut self,
        command: &str,
        arguments: Value,
        wait: Duration,
    ) -> Result<Value, AgentError> {
        self.channel
            .send(&json!({"execute": command, "arguments": arguments}))
            .await?;
        let answer =
            timeout(wait, self.channel.recv())
                .await
                .map_err(|_| AgentError::Timeout {
                    command: command.to_string(),
                    seconds: wait.as_secs_f64(),
                })??;
        if let Some(ret) = answer.get("return") {
            return Ok(ret.clone());
        }
        if let Some(error) = answer.get("error") {
            let text = |key: &str| {
                error
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            return Err(AgentError::Refused {
                command: command.to_string(),
                class: text("class"),
                desc: text("desc"),
            });
        }
        Err(AgentError::Protocol {
            command: command.to_string(),
            answer: answer.to_string(),
        })
    }

    /// Ask the guest to power off with `guest-shutdown` (no answer on success). The agent
    /// implements it with a scheduled `shutdown`, which needs systemd-logind; if it answers
    /// with an error, `systemctl poweroff` (which talks to systemd directly) is run instead.
    pub async fn request_poweroff(&mut self) -> Result<(), AgentError> {
        match self
            .call(
                "guest-shutdown",
                json!({"mode": "powerdown"}),
                Duration::from_secs(5),
            )
            .await
        {
            // No answer, or the channel closed: the guest is going down.
            Ok(_) | Err(AgentError::Timeout { .. } | AgentError::Io(_)) => Ok(()),
            Err(AgentError::Refused { .. } | AgentError::Protocol { .. }) => {
                let script = "systemctl poweroff || poweroff";
                self.call(
                    "guest-exec",
                    json!({"path": "/bin/sh", "arg": ["-c", script]}),
                    Duration::from_secs(5),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// Run `sh -c script` in the guest and wait up to `limit` for it to exit.
    pub async fn exec_shell(
        &mut self,
        script: &str,
        limit: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let started = self
            .call(
                "guest-exec",
                json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}),
                Duration::from_secs(30),
            )
            .await?;
        let Some(pid) = started.get("pid").and_then(Value::as_i64) else {
            return Err(AgentError::Protocol {
                command: "guest-exec".into(),
                answer: started.to_string(),
            });
        };
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(100);
        loop {
            let status = self
                .call(
                    "guest-exec-status",
                    json!({"pid": pid}),
                    Duration::from_secs(30),
                )
                .await?;
            if status.get("exited").and_then(Value::as_bool) == Some(true) {
                return exec_output(&status);
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout {
                    command: format!("sh -c {script:?}"),
                    seconds: limit.as_secs_f64(),
                });
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// Decode a `guest-exec-status` answer whose `exited` is true.
pub fn exec_output(status: &Value) -> Result<ExecOutput, AgentError> {
    let stream = |key: &str| -> Result<Vec<u8>, AgentError> {
        match status.get(key).and_then(Value::as_str) {
            None => Ok(Vec::new()),
            Some(text) => base64_decode(text).ok_or_else(|| AgentError::Protocol {
                command: "guest-exec-status".into(),
                answer: format!("`{key}` is not base64"),
            }),
        }
    };
    let number = |key: &str| {
        status
            .get(key)
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
    };
    let flag = |key: &str| status.get(key).and_then(Value::as_bool) == Some(true);
    Ok(ExecOutput {
        exit_code: number("exitcode"),
        signal: number("signal"),
        stdout: stream("out-data")?,
        stderr: stream("err-data")?,
        truncated: flag("out-truncated") || flag("err-truncated"),
    })
}

/// Standard base64 (RFC 4648, with or without padding); `None` if `text` is not base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="))
        .unwrap_or(&digits);
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for group in body.chunks(4) {
        let mut acc = 0u32;
        for &c in group {
            acc = (acc << 6) | sextet(c)?;
        }
        acc <<= 6 * (4 - group.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(
            base64_decode("dm1idWlsZC10ZXN0Cg==").unwrap(),
            b"vmbuild-test\n"
        );
        assert_eq!(base64_decode("/+8=").unwrap(), [0xff, 0xef]);
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Z").is_none());
    }

    /// Reads requests from the client side of the socket, one JSON object per line (a leading
    /// `0xFF` is the client's flush).
    async fn read_request(peer: &mut UnixStream, pending: &mut Vec<u8>) -> Value {
        loop {
            if let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line: Vec<u8> = line.into_iter().filter(|&b| b != DELIMITER).collect();
                return serde_json::from_slice(&line).expect("request is JSON");
            }
            let mut chunk = [0u8; 4096];
            let n = peer.read(&mut chunk).await.expect("read request");
            assert!(n > 0, "client hung up");
            pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// A fake agent: ignores the first sync (as if not started yet), answers the second one
    /// after a stale reply, then runs one `guest-exec` that needs two status polls.
    #[tokio::test]
    async fn syncs_and_runs_a_command_against_a_fake_agent() {
        let (client, mut peer) = UnixStream::pair().expect("socket pair");
        let fake = tokio::spawn(async move {
            let mut pending = Vec::new();
            let first = read_request(&mut peer, &mut pending).await;
            assert_eq!(first["execute"], "guest-sync-delimited");
            let second = read_request(&mut peer, &mut pending).await;
            let id = second["arguments"]["id"].clone();
            assert_ne!(first["arguments"]["id"], id);
            // A late answer to the first attempt, then the delimited answer to the second.
            let mut reply = format!("{{\"return\": {}}}\n", first["arguments"]["id"]).into_bytes();
            reply.push(DELIMITER);
            reply.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
            peer.write_all(&reply).await.expect("write");

            let exec = read_request(&mut peer, &mut pending).await;
            assert_eq!(exec["execute"], "guest-exec");
            assert_eq!(exec["arguments"]["path"], "/bin/sh");
            assert_eq!(exec["arguments"]["arg"], json!(["-c", "cat /etc/hostname"]));
            assert_eq!(exec["arguments"]["capture-output"], true);
            // Split across writes, to exercise partial reads.
            peer.write_all(b"{\"return\": {\"p").await.expect("write");
            peer.write_all(b"id\": 42}}\n").await.expect("write");

            let poll = read_request(&mut peer, &mut pending).await;
            assert_eq!(
                poll,
                json!({"execute": "guest-exec-status", "arguments": {"pid": 42}})
            );
            peer.write_all(b"{\"return\": {\"exited\": false}}\n")
                .await
                .expect("write");
            let poll = read_request(&mut peer, &mut pending).await;
            assert_eq!(poll["execute"], "guest-exec-status");
            peer.write_all(
                b"{\"return\": {\"exitcode\": 3, \"out-data\": \"dm1idWlsZC10ZXN0Cg==\", \
                  \"err-data\": \"b29wcw==\", \"exited\": true}}\n",
            )
            .await
            .expect("write");

            let bad = read_request(&mut peer, &mut pending).await;
            assert_eq!(bad["execute"], "guest-file-open");
            peer.write_all(
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"not allowed\"}}\n",
            )
            .await
            .expect("write");
        });

        let mut agent = Agent::from_channel(JsonChannel::new(client));
        assert!(!agent.sync(Duration::from_millis(200)).await.expect("sync"));
        assert!(agent.sync(Duration::from_secs(5)).await.expect("sync"));
        let out = agent
            .exec_shell("cat /etc/hostname", Duration::from_secs(10))
            .await
            .expect("exec");
        assert_eq!(
            out,
            ExecOutput {
                exit_code: Some(3),
                signal: None,
                stdout: b"vmbuild-test\n".to_vec(),
                stderr: b"oops".to_vec(),
                truncated: false,
            }
        );
        let refused = agent
            .call("guest-file-open", json!({}), Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(refused.to_string().contains("not allowed"), "{refused}");
        fake.await.expect("fake agent");
    }
}

//! Running QEMU for QA: the command line (disk in snapshot mode, user-mode network with
//! loopback-only port forwards, QMP and guest agent sockets), the choice of accelerator, start-up
//! detection through QMP, and power-off (ACPI, then `quit`, then kill). The child process is
//! killed when a [`Vm`] is dropped, and when vmbuild itself dies.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use super::agent::Agent;
use super::channel::JsonChannel;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `/dev/kvm` opens read-write, else TCG; KVM falls back to TCG when QEMU does
    /// not start with it or the guest makes no progress under it.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// From `VMBUILD_QEMU_ACCEL` (`auto`, `kvm` or `tcg`); `Auto` when unset or unknown.
    pub fn from_env() -> Accel {
        match std::env::var("VMBUILD_QEMU_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            Ok("tcg") => Accel::Tcg,
            _ => Accel::Auto,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The accelerators to try, in order.
    pub fn candidates(self) -> Vec<Accel> {
        match self {
            Accel::Auto if kvm_usable() && !KVM_STALLED.load(Ordering::Relaxed) => {
                vec![Accel::Kvm, Accel::Tcg]
            }
            Accel::Auto | Accel::Tcg => vec![Accel::Tcg],
            Accel::Kvm => vec![Accel::Kvm],
        }
    }
}

/// Set once a guest made no progress under KVM in this process: later boots go straight to
/// TCG instead of waiting for the stall again.
pub static KVM_STALLED: AtomicBool = AtomicBool::new(false);

/// Whether `/dev/kvm` can be opened for reading and writing (QEMU may still fail to use it).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// `n` distinct free TCP ports on 127.0.0.1: bound to port 0, read, and released together, so
/// that QEMU can bind them right after (a collision with another program is retried by the
/// caller).
pub fn free_loopback_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A value inside a QEMU option list: commas are doubled.
fn opt(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// Where QEMU's files for one boot go.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub qmp: PathBuf,
    pub qga: PathBuf,
    pub stderr: PathBuf,
}

impl VmPaths {
    pub fn in_dir(scratch: &Path) -> VmPaths {
        VmPaths {
            qmp: scratch.join("qmp.sock"),
            qga: scratch.join("qga.sock"),
            stderr: scratch.join("qemu-stderr.log"),
        }
    }
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub disk: PathBuf,
    pub format: String,
    pub memory_mib: u64,
    pub cpus: u32,
    pub console_log: PathBuf,
    pub accel: Accel,
    /// `(host port on 127.0.0.1, guest port)` pairs.
    pub forwards: Vec<(u16, u16)>,
    pub paths: VmPaths,
}

impl VmConfig {
    /// QEMU's arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<String> = vec!["-machine".into(), "pc".into()];
        match self.accel {
            Accel::Kvm => {
                args.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()])
            }
            Accel::Tcg | Accel::Auto => args.extend(["-accel".into(), "tcg".into()]),
        }
        let hostfwd: String = self
            .forwards
            .iter()
            .map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .collect();
        args.extend([
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-nographic".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            // A guest that panics and reboots ends the boot at once instead of looping.
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", opt(&self.console_log)),
            "-drive".into(),
            format!(
                "file={},format={},if=virtio,snapshot=on",
                opt(&self.disk),
                self.format.replace(',', ",,")
            ),
            "-netdev".into(),
            format!("user,id=n0{hostfwd}"),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt(&self.paths.qmp)),
            "-chardev".into(),
            format!(
                "socket,path={},server=on,wait=off,id=qga0",
                opt(&self.paths.qga)
            ),
            "-device".into(),
            "virtio-serial".into(),
            "-device".into(),
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        ]);
        args.into_iter().map(OsString::from).collect()
    }
}

/// Why QEMU did not come up.
#[derive(Debug)]
pub enum StartFailure {
    /// QEMU could not start (its status and standard error).
    Exited {
        status: String,
        stderr: String,
    },
    /// A forwarded port was taken between choosing it and QEMU binding it.
    PortTaken {
        stderr: String,
    },
    Spawn(std::io::Error),
    Io(std::io::Error),
    /// QEMU ran but QMP never answered.
    NoQmp(String),
}

/// How the guest was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// QEMU had already exited: the guest stopped by itself before it was asked to.
    Guest,
    /// The guest powered off after an ACPI power-button press.
    Acpi,
    /// The guest powered off when asked through the guest agent (the ACPI button was pressed
    /// too).
    Agent,
    /// QEMU was told to `quit`.
    Quit,
    /// QEMU was killed.
    Killed,
}

impl Shutdown {
    pub fn name(self) -> &'static str {
        match self {
            Shutdown::Guest => "guest",
            Shutdown::Acpi => "acpi",
            Shutdown::Agent => "agent",
            Shutdown::Quit => "quit",
            Shutdown::Killed => "killed",
        }
    }
}

/// A running QEMU. Dropping it kills the process.
pub struct Vm {
    child: Child,
    qmp: Qmp,
    pub config: VmConfig,
    pub started: Instant,
}

impl Vm {
    /// Spawn QEMU and wait until QMP answers (QEMU sends its greeting only once the machine
    /// is set up, so an early exit, e.g. a forward that cannot bind, shows up first).
    pub async fn start(qemu: &Path, config: VmConfig, scratch: &Path) -> Result<Vm, StartFailure> {
        for path in [&config.paths.qmp, &config.paths.qga] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StartFailure::Io(e))
                }
                _ => {}
            }
        }
        let stderr = std::fs::File::create(&config.paths.stderr).map_err(StartFailure::Io)?;
        let mut command = Command::new(qemu);
        command
            .args(config.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // snapshot=on writes the guest's changes to a temporary file here.
            .env("TMPDIR", scratch)
            .process_group(0)
            .kill_on_drop(true);
        // If vmbuild itself dies (even by SIGKILL), QEMU is killed too.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(StartFailure::Spawn)?;
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().map_err(StartFailure::Io)? {
                let stderr = std::fs::read_to_string(&config.paths.stderr).unwrap_or_default();
                let stderr = stderr.trim().to_string();
                if stderr.contains("host forwarding rule") || stderr.contains("hostfwd") {
                    return Err(StartFailure::PortTaken { stderr });
                }
                return Err(StartFailure::Exited {
                    status: status.to_string(),
                    stderr,
                });
            }
            if config.paths.qmp.exists() {
                if let Ok(Ok(qmp)) =
                    timeout(Duration::from_secs(5), Qmp::connect(&config.paths.qmp)).await
                {
                    return Ok(Vm {
                        child,
                        qmp,
                        config,
                        started,
                    });
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(StartFailure::NoQmp(format!(
                    "QMP did not answer on {} within 60 s",
                    config.paths.qmp.display()
                )));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// The host port forwarded to `guest_port`.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.config
            .forwards
            .iter()
            .find(|(_, guest)| *guest == guest_port)
            .map(|(host, _)| *host)
    }

    /// QEMU's exit status, if it has exited.
    pub fn exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// QEMU's standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.config.paths.stderr)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// What QMP says about the accelerator (`query-kvm`): true if KVM is in use.
    pub async fn kvm_enabled(&mut self) -> bool {
        self.qmp
            .execute("query-kvm", json!({}), Duration::from_secs(5))
            .await
            .ok()
            .and_then(|v| v.get("enabled").and_then(Value::as_bool))
            .unwrap_or(false)
    }

    /// Power off: through the guest agent if there is one (a guest without `systemd-logind`
    /// or `acpid` ignores the power button) and the ACPI power button, waiting up to `grace`
    /// for the guest to stop; then QMP `quit`; then kill.
    pub async fn power_off(mut self, grace: Duration, agent: Option<&mut Agent>) -> Shutdown {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return Shutdown::Guest;
        }
        let asked_agent = match agent {
            Some(agent) => agent.request_poweroff().await.is_ok(),
            None => false,
        };
        // Pressed even if the agent was asked: harmless if the guest is already going down.
        // If neither request went through, QEMU is gone already and the wait ends at once.
        let _ = self
            .qmp
            .execute("system_powerdown", json!({}), Duration::from_secs(5))
            .await;
        if timeout(grace, self.child.wait()).await.is_ok() {
            return if asked_agent {
                Shutdown::Agent
            } else {
                Shutdown::Acpi
            };
        }
        let _ = self
            .qmp
            .execute("quit", json!({}), Duration::from_secs(5))
            .await;
        if timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_ok()
        {
            return Shutdown::Quit;
        }
        self.kill().await;
        Shutdown::Killed
    }

    /// Kill QEMU and reap it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A QMP connection past capability negotiation.
pub struct Qmp {
    channel: JsonChannel,
}

impl Qmp {
    /// Connect, read the greeting and enter command mode.
    pub async fn connect(socket: &Path) -> std::io::Result<Qmp> {
        let mut channel = JsonChannel::connect(socket).await?;
        let greeting = channel.recv().await?;
        if greeting.get("QMP").is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a QMP greeting: {greeting}"),
            ));
        }
        let mut qmp = Qmp { channel };
        qmp.execute("qmp_capabilities", json!({}), Duration::from_secs(5))
            .await?;
        Ok(qmp)
    }

    /// Run a command; events that arrive meanwhile are skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        wait: Duration,
    ) -> std::io::Result<Value> {
        self.channel
            .send(&json!({"execute": command, "arguments": arguments}))
            .await?;
        let deadline = Instant::now() + wait;
        loop {
            let message = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.channel.recv(),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("QMP did not answer `{command}`"),
                )
            })??;
            if let Some(ret) = message.get("return") {
                return Ok(ret.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(std::io::Error::other(format!("QMP `{command}`: {error}")));
            }
        }
    }
}

/// The forwards for a set of guest ports, on fresh free loopback ports.
pub fn forwards_for(guest_ports: &[u16]) -> std::io::Result<Vec<(u16, u16)>> {
    let hosts = free_loopback_ports(guest_ports.len())?;
    Ok(hosts.into_iter().zip(guest_ports.iter().copied()).collect())
}

/// A readable guest-port → host-port map, for notes.
pub fn describe_forwards(forwards: &[(u16, u16)]) -> String {
    let map: BTreeMap<u16, u16> = forwards.iter().map(|(h, g)| (*g, *h)).collect();
    map.iter()
        .map(|(g, h)| format!("guest {g} → 127.0.0.1:{h}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_loopback_ports_that_can_be_bound() {
        let ports = free_loopback_ports(4).expect("ports");
        assert_eq!(ports.len(), 4);
        let unique: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), 4);
        for port in ports {
            assert_ne!(port, 0);
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port is free again");
        }
    }

    #[test]
    fn command_line_forwards_on_loopback_only_and_escapes_commas() {
        let config = VmConfig {
            disk: "/tmp/a,b.qcow2".into(),
            format: "qcow2".into(),
            memory_mib: 1024,
            cpus: 2,
            console_log: "/tmp/console.log".into(),
            accel: Accel::Tcg,
            forwards: vec![(40001, 80), (40002, 8080)],
            paths: VmPaths::in_dir(Path::new("/tmp/s")),
        };
        let args: Vec<String> = config
            .args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg"), "{joined}");
        assert!(joined.contains("file=/tmp/a,,b.qcow2,format=qcow2,if=virtio,snapshot=on"));
        assert!(joined.contains(
            "user,id=n0,hostfwd=tcp:127.0.0.1:40001-:80,hostfwd=tcp:127.0.0.1:40002-:8080"
        ));
        assert!(joined.contains("-qmp unix:/tmp/s/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("name=org.qemu.guest_agent.0"));
        assert!(joined.contains("-serial file:/tmp/console.log"));
        let kvm = VmConfig {
            accel: Accel::Kvm,
            ..config
        };
        let joined = kvm
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
    }
}

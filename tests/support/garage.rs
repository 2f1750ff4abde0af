//! A real S3 server for the remote-store tests: Garage (`cargo install garage`, which `dev/setup`
//! does), one single-node server per test on loopback, with its data in a temporary folder, one
//! bucket and one access key. Tests skip without the binary unless `VMBUILD_TEST_GARAGE=1`
//! (`dev/test` sets it), where a missing binary or a server that does not come up fails them.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the server may take to come up (or a CLI command to answer) before the test fails.
const STARTUP: Duration = Duration::from_secs(30);
/// Between two polls while waiting.
const POLL: Duration = Duration::from_millis(50);

/// A Garage server of its own (single node, loopback, random free ports, data in a temp dir),
/// with one bucket and one access key that may read, write and own it.
pub struct Garage {
    /// `http://127.0.0.1:PORT`, the S3 API (path-style addressing).
    pub endpoint: String,
    /// The S3 region the server expects in signatures: `garage`.
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    data: PathBuf,
    rpc_secret: String,
    s3_port: u16,
    rpc_port: u16,
    child: Option<Child>,
    // Last, so that it is removed after the server is gone.
    dir: tempfile::TempDir,
}

impl Garage {
    /// A running server, or `None` (and a "skipped: ..." note) when no `garage` binary is found
    /// (on PATH or in ~/.cargo/bin) and `VMBUILD_TEST_GARAGE` is unset. Panics, with the
    /// server's log, when the binary is there but the server does not come up, and when
    /// `VMBUILD_TEST_GARAGE=1` but there is no binary.
    pub fn start() -> Option<Garage> {
        let Some(binary) = find_binary() else {
            if required() {
                panic!(
                    "VMBUILD_TEST_GARAGE is set but there is no `garage` binary on PATH or in \
                     ~/.cargo/bin (dev/setup installs it)"
                );
            }
            eprintln!(
                "skipped: no `garage` binary on PATH or in ~/.cargo/bin (dev/setup installs it; \
                 with VMBUILD_TEST_GARAGE=1 this is a failure)"
            );
            return None;
        };
        Some(Garage::launch(binary))
    }

    /// `s3://BUCKET/PREFIX?endpoint=ENDPOINT&region=REGION`.
    pub fn remote_url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{}?endpoint={}&region={}",
            self.bucket, prefix, self.endpoint, self.region
        )
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`, for a child process.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.secret_access_key.clone(),
            ),
            ("AWS_REGION".into(), self.region.clone()),
        ]
    }

    /// Kills the server (SIGKILL, as a crash or a lost network would) and waits for it: its
    /// ports refuse connections from then on. Does nothing when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data, and waits until it answers (stops it
    /// first if it is running).
    pub fn restart(&mut self) {
        self.stop();
        let began = Instant::now();
        // The same ports: a moment after a stop they may not be free yet.
        while let Err(why) = self.spawn_and_wait() {
            if began.elapsed() >= STARTUP {
                self.fail(&format!("the server did not come up again: {why}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("garage: restarted in {:.1?}", began.elapsed());
    }

    /// The server's data folder, where the blocks of objects are stored uncompressed in files
    /// named by their hash (`data/XX/YY/HASH`), so that a test can corrupt one. Objects smaller
    /// than 3 KiB have no block: they live inline in the metadata database.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `rclone` with the remote `g:` pointing at the server, configured by environment variables
    /// only (and no configuration file), failing fast when the server is not there.
    pub fn rclone(&self, args: &[&str]) -> Output {
        let config = self.dir.path().join("rclone.conf");
        std::fs::write(&config, "").unwrap();
        let mut command = Command::new("rclone");
        // None of the host's AWS settings: AWS_CA_BUNDLE, for one, makes rclone's S3 client fail
        // ("unable to load custom CA bundle") even for a plain-http endpoint.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        command
            .args(args)
            .args(["--retries", "1", "--low-level-retries", "1"])
            .args(["--contimeout", "2s", "--timeout", "10s"])
            .env("RCLONE_CONFIG", &config)
            .env("RCLONE_CONFIG_G_TYPE", "s3")
            .env("RCLONE_CONFIG_G_PROVIDER", "Other")
            .env("RCLONE_CONFIG_G_ENV_AUTH", "false")
            .env("RCLONE_CONFIG_G_ENDPOINT", &self.endpoint)
            .env("RCLONE_CONFIG_G_REGION", &self.region)
            .env("RCLONE_CONFIG_G_ACCESS_KEY_ID", &self.access_key_id)
            .env("RCLONE_CONFIG_G_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env("RCLONE_CONFIG_G_FORCE_PATH_STYLE", "true")
            .output()
            .expect("running rclone")
    }

    /// The server's log (its standard output and error, across restarts).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_since(&self, offset: usize) -> String {
        let log = self.log();
        log.get(offset..).unwrap_or_default().to_string()
    }

    fn launch(binary: PathBuf) -> Garage {
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("vmbuild-garage-")
            .tempdir()
            .expect("a temporary folder for Garage");
        let mut garage = Garage {
            endpoint: String::new(),
            region: "garage".into(),
            bucket: "vmbuild-test".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            binary,
            config: dir.path().join("garage.toml"),
            log: dir.path().join("garage.log"),
            data: dir.path().join("data"),
            rpc_secret: rand::random::<[u8; 32]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            s3_port: 0,
            rpc_port: 0,
            child: None,
            dir,
        };
        garage.configure();
        // Ports taken by someone else since they were picked: new ones.
        while let Err(why) = garage.spawn_and_wait() {
            if Instant::now() >= began + STARTUP {
                garage.fail(&format!("the server did not come up: {why}"));
            }
            garage.configure();
        }

        // One node with a role: the cluster has a layout and can store data.
        let node = garage.cli(&["node", "id", "-q"]);
        let node_id: String = node.chars().take(64).collect();
        if node_id.len() != 64 || !node_id.chars().all(|c| c.is_ascii_hexdigit()) {
            garage.fail(&format!("`garage node id` printed no node id: {node:?}"));
        }
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]);
        garage.cli(&["layout", "apply", "--version", "1"]);

        let bucket = garage.bucket.clone();
        garage.cli_until_ok(&["bucket", "create", &bucket]);
        let key_name = format!("{bucket}-key");
        let key = garage.cli(&["key", "create", &key_name]);
        // `Key ID:      GK...` and `Secret key:  <64 hex>` among the key's information.
        let field = |name: &str| {
            key.lines()
                .find_map(|line| line.trim().strip_prefix(name))
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        };
        match (field("Key ID:"), field("Secret key:")) {
            (Some(id), Some(secret)) => {
                garage.access_key_id = id;
                garage.secret_access_key = secret;
            }
            _ => garage.fail(&format!(
                "no key id and secret in the output of `garage key create`:\n{key}"
            )),
        }
        garage.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key_name,
        ]);
        // Shown with the output of a failing test.
        eprintln!(
            "garage: up in {:.1?} at {} (rpc port {}, folder {})",
            began.elapsed(),
            garage.endpoint,
            garage.rpc_port,
            garage.dir.path().display()
        );
        garage
    }

    /// Picks free ports and writes garage.toml with them.
    fn configure(&mut self) {
        (self.s3_port, self.rpc_port) = free_ports();
        self.endpoint = format!("http://127.0.0.1:{}", self.s3_port);
        let config = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
# Blocks are stored as they are, so that a test can find and corrupt one.
compression_level = "none"

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3_port}"
"#,
            meta = self.dir.path().join("meta").display(),
            data = self.data.display(),
            rpc_port = self.rpc_port,
            rpc_secret = self.rpc_secret,
            region = self.region,
            s3_port = self.s3_port,
        );
        fs::write(&self.config, config).expect("writing garage.toml");
    }

    /// Starts `garage server` and waits until both the CLI (over RPC) and the S3 API answer.
    /// Fails the test if it does not come up, except when one of its ports is in use: then it
    /// is stopped, and the error returned.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let logged = fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening Garage's log file");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=info,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("Garage's log file"))
            .stderr(log)
            .spawn();
        match child {
            Ok(child) => self.child = Some(child),
            Err(e) => self.fail(&format!("cannot run {}: {e}", self.binary.display())),
        }
        let deadline = Instant::now() + STARTUP;
        let mut rpc_up = false;
        loop {
            // With its S3 port taken, Garage logs it and hangs; with its RPC port, it panics.
            if self.log_since(logged).contains("Address already in use") {
                self.stop();
                return Err(format!(
                    "a port is in use (S3 {}, RPC {})",
                    self.s3_port, self.rpc_port
                ));
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    self.fail(&format!("the server exited ({status})"));
                }
            }
            if !rpc_up {
                rpc_up = run(self.command(&["status"]), Duration::from_secs(5))
                    .is_some_and(|output| output.status.success());
            }
            if rpc_up && self.s3_answers() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the server does not answer after {STARTUP:?} ({})",
                    if rpc_up {
                        "the CLI answers, the S3 API does not"
                    } else {
                        "`garage status` fails"
                    }
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the S3 API gives an HTTP answer that is not a server error (an anonymous request
    /// is refused with 403 once the server is ready).
    fn s3_answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.s3_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /{}/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.bucket, self.s3_port
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        if stream.read_exact(&mut head).is_err() {
            return false;
        }
        // `HTTP/1.1 403`
        head.starts_with(b"HTTP/1.") && !matches!(head[9], b'5')
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }

    /// Runs `garage -c CONFIG ARGS...` and returns its standard output; fails the test unless it
    /// succeeds.
    fn cli(&self, args: &[&str]) -> String {
        match run(self.command(args), STARTUP) {
            Some(output) if output.status.success() => {
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
            Some(output) => self.fail(&format!(
                "`garage {}` failed ({}):\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
            None => self.fail(&format!(
                "`garage {}` did not finish in {STARTUP:?}",
                args.join(" ")
            )),
        }
    }

    /// [`Garage::cli`], retried for a while: right after the layout is applied, the cluster
    /// may not take writes yet.
    fn cli_until_ok(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + STARTUP;
        loop {
            match run(self.command(args), STARTUP) {
                Some(output) if output.status.success() => {
                    return String::from_utf8_lossy(&output.stdout).into_owned()
                }
                _ if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => return self.cli(args),
            }
        }
    }

    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!(
            "Garage ({}, config {}): {what}\n----- the end of its log ({}) -----\n{tail}",
            self.binary.display(),
            self.config.display(),
            self.log.display()
        );
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

fn required() -> bool {
    std::env::var_os("VMBUILD_TEST_GARAGE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `garage` on PATH, else in ~/.cargo/bin.
fn find_binary() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home)
        .map(|dir| dir.join("garage"))
        .find(|file| {
            fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Two distinct free loopback ports (held together while picked, so they differ).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let ports = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    drop((a, b));
    ports
}

/// Runs a command with its output captured, killing it if it takes longer than `limit`.
fn run(mut command: Command, limit: Duration) -> Option<Output> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match receive.recv_timeout(limit) {
        Ok(output) => output.ok(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            None
        }
    }
}

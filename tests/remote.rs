//! The remote store against a real S3 server (Garage, on loopback): builders sharing one cache,
//! signed records, corrupt and partial objects, a server that goes away, and gc.

use std::path::PathBuf;
use std::process::Command;

use crate::snapshot;
use crate::support::garage::Garage;
use crate::support::{running, shown_output_folder, Project, Run};

/// a → b → c, and d after c. Each step appends its name to `runs.log` in the project.
const CHAIN: &str = r#"
step "a" {
  command = ["sh", "-c", "echo a >> runs.log; echo A > $VMBUILD_OUT/a; head -c 3000000 /dev/zero > $VMBUILD_OUT/zeros"]
}
step "b" {
  command = ["sh", "-c", "echo b >> runs.log; cat $VMBUILD_IN_A/a > $VMBUILD_OUT/b; echo B >> $VMBUILD_OUT/b; mkdir $VMBUILD_OUT/dir; ln -s ../b $VMBUILD_OUT/dir/link; chmod 0640 $VMBUILD_OUT/b"]
  after   = [step.a]
}
step "c" {
  command = ["sh", "-c", "echo c >> runs.log; cat $VMBUILD_IN_B/b > $VMBUILD_OUT/c; head -c 40000000 /dev/urandom > $VMBUILD_OUT/random"]
  after   = [step.b]
}
step "d" {
  command = ["sh", "-c", "echo d >> runs.log; cat $VMBUILD_IN_C/c > $VMBUILD_OUT/d; echo D >> $VMBUILD_OUT/d"]
  after   = [step.c]
}
"#;

/// One builder: a project with its own local store and configuration, sharing `garage`.
pub struct Builder {
    pub project: Project,
    /// The server's URL with this builder's prefix.
    url: String,
    /// The server's credentials, as the AWS variables.
    env: Vec<(String, String)>,
    /// The public half of this builder's signing key, when it has one.
    pub public_key: Option<String>,
}

impl Builder {
    /// A builder with a signing key named `name` that trusts `trusts` (and itself).
    fn new(garage: &Garage, prefix: &str, name: &str, trusts: &[&str]) -> Builder {
        let project = Project::new();
        project.recipe(CHAIN);
        Builder::of(project, garage, prefix, Some(name), trusts)
    }

    /// A builder without a signing key: it reads the remote store and uploads nothing.
    fn reader(garage: &Garage, prefix: &str, trusts: &[&str]) -> Builder {
        let project = Project::new();
        project.recipe(CHAIN);
        Builder::of(project, garage, prefix, None, trusts)
    }

    /// `project` as a builder of the remote store `garage`/`prefix`, with a signing key named
    /// `name` if there is one, trusting `trusts`.
    pub fn of(
        project: Project,
        garage: &Garage,
        prefix: &str,
        name: Option<&str>,
        trusts: &[&str],
    ) -> Builder {
        let mut builder = Builder {
            project,
            url: garage.remote_url(prefix),
            env: garage.env(),
            public_key: None,
        };
        builder.configure(None, trusts);
        if let Some(name) = name {
            let key = builder.project.path().join("signing.key");
            let made = builder
                .vmbuild(&["key", "generate", name, "--out", key.to_str().unwrap()])
                .success();
            builder.public_key = Some(made.stdout.trim().to_string());
            builder.configure(Some(&key), trusts);
        }
        builder
    }

    fn configure(&self, key: Option<&std::path::Path>, trusts: &[&str]) {
        let trusted: Vec<String> = trusts.iter().map(|k| format!("{k:?}")).collect();
        let mut config = format!(
            "[remote]\nurl = {:?}\ntrusted_keys = [{}]\n",
            self.url,
            trusted.join(", ")
        );
        if let Some(key) = key {
            config.push_str(&format!("signing_key = {:?}\n", key.display().to_string()));
        }
        self.project.file("config.toml", &config);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.project.command(args);
        command
            .envs(self.env.clone())
            .env("VMBUILD_CONFIG", self.project.path().join("config.toml"))
            .env_remove("VMBUILD_REMOTE")
            .env_remove("VMBUILD_SIGNING_KEY")
            .env_remove("VMBUILD_NO_PUSH");
        command
    }

    pub fn vmbuild(&self, args: &[&str]) -> Run {
        let run = Run::from(self.command(args).output().expect("run vmbuild"));
        for (name, value) in &self.env {
            if name == "AWS_SECRET_ACCESS_KEY" {
                assert!(
                    !run.stdout.contains(value.as_str()) && !run.stderr.contains(value.as_str()),
                    "the secret access key was printed:\n{}",
                    run.transcript()
                );
            }
        }
        run
    }

    fn plan(&self) -> serde_json::Value {
        let run = self
            .vmbuild(&["plan", "site.hcl", "--format", "json"])
            .success();
        serde_json::from_str(&run.stdout).expect("plan JSON")
    }

    /// `store verify --remote` finds nothing wrong with what this builder trusts.
    fn remote_verifies(&self) {
        let verified = self.vmbuild(&["store", "verify", "--remote"]).success();
        assert!(
            verified.stdout.contains(" 0 problems"),
            "{}",
            verified.stdout
        );
    }

    /// The steps that ran since the last call, sorted.
    fn runs(&self) -> Vec<String> {
        let path = self.project.path().join("runs.log");
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::remove_file(&path).ok();
        let mut names: Vec<String> = log.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// The file `name` of step `id`'s output in the local store.
    fn output_file(&self, id: &str, name: &str) -> Vec<u8> {
        let shown = self.vmbuild(&["show", id, "-r", "site.hcl"]).success();
        let folder = shown_output_folder(&shown.stdout)
            .unwrap_or_else(|| panic!("no local output for {id} in:\n{}", shown.stdout));
        std::fs::read(folder.join(name)).expect("an output file")
    }
}

/// Steps and whether each is cached in the remote store, from a plan.
fn remote_cached(plan: &serde_json::Value) -> Vec<(String, bool)> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let remote = s["action"] == "cached" && s["remote"] == true;
            (s["id"].as_str().unwrap().to_string(), remote)
        })
        .collect()
}

fn key_of(plan: &serde_json::Value, id: &str) -> String {
    crate::support::step(plan, id)["key"]
        .as_str()
        .expect("a known key")
        .to_string()
}

/// The object names under `g:BUCKET/PREFIX/folder`.
fn objects(garage: &Garage, prefix: &str, folder: &str) -> Vec<String> {
    let listed = garage.rclone(&["lsf", &format!("g:{}/{prefix}/{folder}", garage.bucket)]);
    assert!(
        listed.status.success()
            || String::from_utf8_lossy(&listed.stderr).contains("directory not found"),
        "rclone lsf: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn read_object(garage: &Garage, object: &str) -> Vec<u8> {
    let out = garage.rclone(&["cat", &format!("g:{}/{object}", garage.bucket)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn write_object(garage: &Garage, object: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("object");
    std::fs::write(&file, bytes).unwrap();
    let out = garage.rclone(&[
        "copyto",
        file.to_str().unwrap(),
        &format!("g:{}/{object}", garage.bucket),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_builder_with_an_empty_store_runs_nothing_and_fetches_only_what_it_needs() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "shared", "builder-a", &[]);
    let applied = a.vmbuild(&["apply", "site.hcl"]).success();
    assert_eq!(a.runs(), ["a", "b", "c", "d"]);
    assert!(
        applied.stderr.contains("uploaded to the remote store"),
        "{}",
        applied.transcript()
    );
    let a_plan = a.plan();
    assert_eq!(objects(&garage, "shared", "actions").len(), 4);

    let a_key = a.public_key.clone().unwrap();
    let b = Builder::reader(&garage, "shared", &[&a_key]);
    let plan = b.plan();
    assert!(
        remote_cached(&plan).iter().all(|(_, remote)| *remote),
        "{plan:#}"
    );
    for id in ["step.a", "step.b", "step.c", "step.d"] {
        assert_eq!(key_of(&plan, id), key_of(&a_plan, id), "{id}");
    }
    let text = b.vmbuild(&["plan", "site.hcl"]).success();
    snapshot!(&b.project, "plan-remote", text.stdout);
    // Nothing needs the bytes: nothing runs and nothing is downloaded.
    let applied = b.vmbuild(&["apply", "site.hcl"]).success();
    assert!(b.runs().is_empty(), "{}", applied.transcript());
    assert!(
        !applied.stderr.contains("downloaded"),
        "{}",
        applied.transcript()
    );
    assert!(
        applied
            .stderr
            .contains("no signing key, so nothing is uploaded"),
        "{}",
        applied.transcript()
    );

    // A change to d needs c's bytes: c is downloaded (its random bytes are A's), d runs.
    b.project.recipe(&CHAIN.replace("echo D >>", "echo D2 >>"));
    let plan = b.plan();
    assert_eq!(running(&plan), ["step.d"]);
    let text = b
        .vmbuild(&["plan", "site.hcl", "--format", "markdown"])
        .success();
    snapshot!(&b.project, "plan-remote-markdown", text.stdout);
    let applied = b.vmbuild(&["apply", "site.hcl"]).success();
    assert_eq!(b.runs(), ["d"], "{}", applied.transcript());
    assert!(
        applied
            .stderr
            .contains("step.c: downloaded from the remote store"),
        "{}",
        applied.transcript()
    );
    assert_eq!(
        b.output_file("step.c", "random"),
        a.output_file("step.c", "random")
    );
    assert_eq!(b.output_file("step.d", "d"), b"A\nB\nD2\n");
    // The downloaded tree is the same tree, record and all: the local store verifies.
    b.vmbuild(&["store", "verify"]).success();
    // And so does the remote one.
    a.remote_verifies();

    // No credential reached the stores' files either.
    for builder in [&a, &b] {
        for (path, bytes) in builder.project.store_files() {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&garage.secret_access_key),
                "{} holds the secret access key",
                path.display()
            );
        }
    }
    for folder in ["actions", "blobs"] {
        for name in objects(&garage, "shared", folder) {
            let bytes = read_object(&garage, &format!("shared/{folder}/{name}"));
            assert!(!String::from_utf8_lossy(&bytes).contains(&garage.secret_access_key));
        }
    }
}

#[test]
fn a_corrupt_remote_object_is_detected_named_and_rebuilt() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "corrupt", "builder-a", &[]);
    a.vmbuild(&["apply", "site.hcl"]).success();
    a.runs();
    let c_key = key_of(&a.plan(), "step.c");
    let record = read_object(&garage, &format!("corrupt/actions/{c_key}.json"));
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    let payload: serde_json::Value =
        serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
    let tree = payload["record"]["output"].as_str().unwrap().to_string();
    let object = format!("corrupt/trees/{tree}.v1");
    let mut bytes = read_object(&garage, &object);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    write_object(&garage, &object, &bytes);

    let b = Builder::new(
        &garage,
        "corrupt",
        "builder-b",
        &[a.public_key.as_deref().unwrap()],
    );
    b.project.recipe(&CHAIN.replace("echo D >>", "echo D2 >>"));
    let applied = b.vmbuild(&["apply", "site.hcl"]).success();
    assert!(
        applied.stderr.contains(&format!(
            "the remote object `s3://{}/{object}` is corrupt",
            garage.bucket
        )),
        "{}",
        applied.transcript()
    );
    // c is rebuilt rather than trusted, and what follows it runs on the rebuilt bytes.
    assert_eq!(b.runs(), ["c", "d"], "{}", applied.transcript());
    assert_eq!(b.output_file("step.d", "d"), b"A\nB\nD2\n");
    b.vmbuild(&["store", "verify"]).success();
    // B rebuilt c and replaced the corrupt entry with its own: the remote verifies again.
    a.remote_verifies();
}

#[test]
fn store_verify_remote_finds_and_repairs_a_corrupt_object() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "verify", "builder-a", &[]);
    a.vmbuild(&["apply", "site.hcl"]).success();
    let trees = objects(&garage, "verify", "trees");
    assert_eq!(trees.len(), 4, "{trees:?}");
    let object = format!("verify/trees/{}", trees[0]);
    let mut bytes = read_object(&garage, &object);
    let last = bytes.len() - 2;
    bytes[last] ^= 1;
    write_object(&garage, &object, &bytes);
    let found = a.vmbuild(&["store", "verify", "--remote"]).code(1);
    assert!(
        found.stdout.contains(&object) && found.stdout.contains("1 problem"),
        "{}",
        found.stdout
    );
    a.vmbuild(&["store", "verify", "--remote", "--repair"])
        .success();
    assert_eq!(objects(&garage, "verify", "trees").len(), 3);
    assert_eq!(objects(&garage, "verify", "actions").len(), 3);
    a.remote_verifies();
}

#[test]
fn records_not_signed_by_a_trusted_key_are_misses() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "trust", "builder-a", &[]);
    a.vmbuild(&["apply", "site.hcl"]).success();

    // A reader that trusts another key ignores every record, and says why.
    let stranger = Builder::new(&garage, "elsewhere", "stranger", &[]);
    let b = Builder::reader(&garage, "trust", &[stranger.public_key.as_deref().unwrap()]);
    let plan = b.vmbuild(&["plan", "site.hcl"]).success();
    assert!(
        plan.stdout.contains("4 to run, 0 cached"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stderr
            .contains("was ignored: signed by builder-a, no key this builder trusts"),
        "{}",
        plan.stderr
    );

    // A reader that trusts A ignores a record whose payload was changed after signing, and
    // one whose signatures were removed.
    let c = Builder::reader(&garage, "trust", &[a.public_key.as_deref().unwrap()]);
    let a_plan = a.plan();
    let edit = |id: &str, change: &dyn Fn(&mut serde_json::Value)| {
        let object = format!("trust/actions/{}.json", key_of(&a_plan, id));
        let mut record: serde_json::Value =
            serde_json::from_slice(&read_object(&garage, &object)).unwrap();
        change(&mut record);
        write_object(&garage, &object, record.to_string().as_bytes());
    };
    edit("step.d", &|record| {
        let payload = record["payload"].as_str().unwrap();
        let changed = payload.replace("\"kind\":\"command\"", "\"kind\":\"commands\"");
        assert_ne!(changed, payload);
        record["payload"] = changed.into();
    });
    let plan = c.vmbuild(&["plan", "site.hcl"]).success();
    assert!(
        plan.stdout
            .contains("1 to run, 3 cached (3 in the remote store)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stderr
            .contains("its signature by builder-a does not match its content"),
        "{}",
        plan.stderr
    );
    edit("step.b", &|record| {
        record["signatures"] = serde_json::json!([])
    });
    let plan = c.plan();
    assert_eq!(
        remote_cached(&plan),
        [
            ("step.a".to_string(), true),
            ("step.b".to_string(), false),
            ("step.c".to_string(), false),
            ("step.d".to_string(), false),
        ],
        "{plan:#}"
    );
    let text = c.vmbuild(&["plan", "site.hcl"]).success();
    assert!(
        text.stderr.contains("was ignored: not signed"),
        "{}",
        text.stderr
    );
}

#[test]
fn a_builder_killed_mid_upload_leaves_nothing_a_reader_trusts() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "killed", "builder-a", &[]);
    // One step with a large output: it is still uploading when A is killed.
    a.project.recipe(
        r#"
step "big" {
  command = ["sh", "-c", "head -c 400000000 /dev/urandom > $VMBUILD_OUT/big"]
}
"#,
    );
    let mut child = a
        .command(&["apply", "site.hcl"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Committed locally: the upload starts right after.
    let actions = a.project.store().join("actions");
    let started = std::time::Instant::now();
    while walkdir::WalkDir::new(&actions)
        .into_iter()
        .flatten()
        .all(|e| !e.file_type().is_file())
    {
        assert!(
            started.elapsed().as_secs() < 120,
            "the step never committed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    assert!(
        objects(&garage, "killed", "actions").is_empty(),
        "an entry was written before its objects were whole"
    );

    let b = Builder::reader(&garage, "killed", &[a.public_key.as_deref().unwrap()]);
    b.project
        .recipe(&std::fs::read_to_string(a.project.path().join("site.hcl")).unwrap());
    assert_eq!(running(&b.plan()), ["step.big"]);

    // A's next apply finds the step cached locally and uploads what the remote misses.
    let again = a.vmbuild(&["apply", "site.hcl"]).success();
    assert!(
        again.stderr.contains("step.big: uploaded"),
        "{}",
        again.transcript()
    );
    assert!(running(&b.plan()).is_empty());
    b.vmbuild(&["apply", "site.hcl", "--target", "step.big"])
        .success();
}

#[test]
fn a_server_that_goes_away_mid_apply_fails_uploads_clearly_and_the_build_still_completes() {
    use std::io::BufRead;
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "away", "builder-a", &[]);
    // a is uploaded while the server is there; it goes away while b runs.
    a.project
        .recipe(&CHAIN.replace("echo b >> runs.log;", "echo b >> runs.log; sleep 2;"));
    let mut child = a
        .command(&["apply", "site.hcl"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut transcript = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        transcript.push_str(&line);
        if line.contains("step.a: uploaded") {
            garage.stop();
        }
        line.clear();
    }
    assert!(child.wait().unwrap().success(), "{transcript}");
    assert_eq!(a.runs(), ["a", "b", "c", "d"]);
    assert!(
        transcript.contains("step.a: uploaded")
            && transcript.contains("step.b: upload to the remote store failed")
            && transcript.contains("warning: the remote store s3://")
            && transcript.contains("Apply complete: 4 ran"),
        "{transcript}"
    );
    // Committed locally all the same.
    let applied = a
        .vmbuild(&["plan", "site.hcl", "--format", "json"])
        .success();
    let plan: serde_json::Value = serde_json::from_str(&applied.stdout).unwrap();
    assert!(running(&plan).is_empty());
    // Back again: the next apply uploads what is missing.
    garage.restart();
    let again = a.vmbuild(&["apply", "site.hcl"]).success();
    assert!(
        !again.stderr.contains("step.a: uploaded"),
        "{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("step.d: uploaded"),
        "{}",
        again.stderr
    );
    assert_eq!(objects(&garage, "away", "actions").len(), 4);
}

#[test]
fn two_builders_building_the_same_keys_at_once_leave_one_consistent_copy() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "race", "builder-a", &[]);
    let b = Builder::new(&garage, "race", "builder-b", &[]);
    let spawned: Vec<_> = [&a, &b]
        .iter()
        .map(|builder| {
            builder
                .project
                .recipe(&CHAIN.replace("echo D >>", "echo D-race >>"));
            builder.command(&["apply", "site.hcl"]).spawn().unwrap()
        })
        .collect();
    for child in spawned {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    let keys = |plan: &serde_json::Value| -> Vec<String> {
        ["step.a", "step.b", "step.c", "step.d"]
            .iter()
            .map(|id| key_of(plan, id))
            .collect()
    };
    let entries: Vec<String> = objects(&garage, "race", "actions");
    // Every key has its entry (one per key: entries are named by key).
    let mut expected: Vec<String> = keys(&a.plan())
        .iter()
        .map(|k| format!("{k}.json"))
        .collect();
    expected.sort();
    for key in &expected {
        assert!(entries.contains(key), "{key} missing from {entries:?}");
    }
    // A third builder trusting both gets one consistent copy of everything.
    let c = Builder::reader(
        &garage,
        "race",
        &[
            a.public_key.as_deref().unwrap(),
            b.public_key.as_deref().unwrap(),
        ],
    );
    c.project
        .recipe(&CHAIN.replace("echo D >>", "echo D-race >>"));
    assert!(running(&c.plan()).is_empty());
    c.project
        .recipe(&CHAIN.replace("echo D >>", "echo D-third >>"));
    c.vmbuild(&["apply", "site.hcl"]).success();
    assert_eq!(c.runs(), ["d"]);
    a.remote_verifies();
}

#[test]
fn gc_remote_keeps_what_the_recipes_need_and_nothing_young_goes() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let a = Builder::new(&garage, "gc", "builder-a", &[]);
    a.vmbuild(&["apply", "site.hcl"]).success();
    a.project.recipe(&CHAIN.replace("echo D >>", "echo D2 >>"));
    a.vmbuild(&["apply", "site.hcl"]).success();
    assert_eq!(objects(&garage, "gc", "actions").len(), 5);
    // Within the grace period nothing goes.
    let kept = a.vmbuild(&["gc", "--remote", "site.hcl"]).success();
    assert!(kept.stdout.contains("removed 0 records"), "{}", kept.stdout);
    assert_eq!(objects(&garage, "gc", "actions").len(), 5);
    // Without one, the old d goes, with its tree; what the recipe needs stays.
    let collected = a
        .vmbuild(&["gc", "--remote", "--grace", "0s", "site.hcl"])
        .success();
    assert!(
        collected.stdout.contains("removed 1 records, 1 trees"),
        "{}",
        collected.stdout
    );
    assert_eq!(objects(&garage, "gc", "actions").len(), 4);
    let b = Builder::reader(&garage, "gc", &[a.public_key.as_deref().unwrap()]);
    b.project.recipe(&CHAIN.replace("echo D >>", "echo D2 >>"));
    assert!(running(&b.plan()).is_empty());
    a.remote_verifies();
}

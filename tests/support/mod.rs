//! A test project: a temporary folder with recipe files and its own store, and a runner for the
//! `vmbuild` binary whose output can be snapshotted with stable filters.

#![allow(dead_code)]

pub mod garage;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    dir: tempfile::TempDir,
}

/// What one run of the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Exit code, standard output and standard error together, for snapshots.
    pub fn transcript(&self) -> String {
        format!(
            "exit: {}\n----- stdout -----\n{}----- stderr -----\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(self.code, 0, "expected success:\n{}", self.transcript());
        self
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            code,
            "expected exit {code}:\n{}",
            self.transcript()
        );
        self
    }
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::Builder::new()
                .prefix("vmbuild-test")
                .tempdir()
                .expect("a temporary folder"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Write a file relative to the project folder.
    pub fn file(&self, relative: &str, content: &str) -> &Project {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create folders");
        std::fs::write(path, content).expect("write a file");
        self
    }

    /// Write the recipe `site.hcl`.
    pub fn recipe(&self, content: &str) -> &Project {
        self.file("site.hcl", content)
    }

    /// The binary, run in the project folder with the project's store and no colors.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vmbuild"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("VMBUILD_STORE", self.store())
            .env("NO_COLOR", "1")
            .env_remove("VMBUILD_RECIPE")
            .env_remove("RUST_BACKTRACE");
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run vmbuild"))
    }

    pub fn plan_json(&self) -> serde_json::Value {
        let run = self
            .run(&["plan", "site.hcl", "--format", "json"])
            .success();
        serde_json::from_str(&run.stdout).expect("plan JSON")
    }

    /// Step id → action, from `plan --format json`.
    pub fn actions(&self) -> Vec<(String, String)> {
        let plan = self.plan_json();
        plan["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The ids whose plan action is `run`.
    pub fn to_run(&self) -> Vec<String> {
        self.actions()
            .into_iter()
            .filter(|(_, a)| a == "run")
            .map(|(id, _)| id)
            .collect()
    }

    /// The committed output folder of `step` of `site.hcl`, as `vmbuild show` prints it.
    pub fn output_tree(&self, step: &str) -> PathBuf {
        let shown = self.run(&["show", step, "-r", "site.hcl"]).success();
        shown_output_folder(&shown.stdout)
            .unwrap_or_else(|| panic!("no output folder for {step} in:\n{}", shown.stdout))
    }

    /// Every file under the store, with its bytes, for leak checks.
    pub fn store_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        walk(&self.store())
    }
}

fn walk(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            out.extend(walk(&path));
        } else if kind.is_file() {
            if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Copy `examples/NAME` into the project, without an `output/` folder a build there left.
/// The local output folder `vmbuild show` prints for a step (`output: DIGEST (`FOLDER`)`), if
/// the output is in the local store.
pub fn shown_output_folder(shown: &str) -> Option<PathBuf> {
    shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("output:"))
        .and_then(|l| l.split('`').nth(1))
        .map(PathBuf::from)
}

pub fn copy_example(project: &Project, name: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let status = std::process::Command::new("cp")
        .args(["-a", &format!("{}/.", from.display())])
        .arg(project.path())
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(project.path().join("output"));
}

/// The exported build in `output`: its `SHA256SUMS` verify, and its manifest.
pub fn exported_manifest(output: &Path) -> serde_json::Value {
    let sums = std::process::Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(output)
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
    serde_json::from_slice(&std::fs::read(output.join("manifest.json")).unwrap()).unwrap()
}

/// The step `id` of a plan's JSON.
pub fn step(plan: &serde_json::Value, id: &str) -> serde_json::Value {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {plan}"))
        .clone()
}

/// Whether the tools a template's plan needs are here, and `more` (they are where VMs are built).
pub fn template_tools(more: &[&str]) -> bool {
    ["debootstrap", "mkfs.ext4", "grub-mkimage"]
        .iter()
        .chain(more)
        .all(|tool| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(tool).exists())
        })
}

/// Filters that make output stable across runs: temporary paths, digests, times.
pub fn filters(project: &Project) -> Vec<(String, String)> {
    let root = project.path().display().to_string();
    vec![
        (regex_escape(&root), "[PROJECT]".into()),
        (r"\b[0-9a-f]{64}\b".into(), "[DIGEST]".into()),
        (r"\b[0-9a-f]{12}\b".into(), "[SHORT]".into()),
        (r"\[\d\d:\d\d:\d\d\]".into(), "[TIME]".into()),
        (r"in \d+\.\ds".into(), "in [SECONDS]".into()),
        (r"\d{4}-\d\d-\d\dT[0-9:.]+Z".into(), "[TIMESTAMP]".into()),
    ]
}

fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Snapshot a transcript with the project's filters.
#[macro_export]
macro_rules! snapshot {
    ($project:expr, $name:expr, $text:expr) => {{
        let filters = $crate::support::filters($project);
        let filters: Vec<(&str, &str)> = filters.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        insta::with_settings!({ filters => filters, prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!($name, $text);
        });
    }};
}

/// Run git in `dir` with a fixed identity and date (a commit's id is the same on every run) and
/// no user configuration; its trimmed output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.org")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.org")
        .env("GIT_AUTHOR_DATE", "2026-06-01T12:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-06-01T12:00:00Z")
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Write `files` into the repository at `dir` and commit them; the new commit id.
pub fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// The ids of the steps a JSON plan would run, in its order.
pub fn running(plan: &serde_json::Value) -> Vec<&str> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "run")
        .map(|s| s["id"].as_str().unwrap())
        .collect()
}

/// A repository `name` in the project with one commit on `main`.
pub fn repository(project: &Project, name: &str, files: &[(&str, &str)]) -> (PathBuf, String) {
    let dir = project.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    let id = commit(&dir, files, "first");
    (dir, id)
}

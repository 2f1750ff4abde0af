//! Git for the `source` kind: where a repository is, what of its URL may be shown, resolving a
//! ref to a commit id at plan time (read-only, bounded in time, never prompting), and the
//! environment the fetch runs with.
//!
//! Credentials embedded in a URL (`https://user:token@host/...`) never leave it in clear:
//! [`crate::url::shown`] drops them, [`crate::url::credentials`] lists them for redaction.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::diag::did_you_mean;
use crate::steps::process::redact;

/// How long plan waits for a repository to answer.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The transports vmbuild lets git use. Everything else (`ext::`, which runs a command, and
/// remote helpers) is refused, so a recipe on a pull request cannot run anything through its
/// `git` attribute.
pub const PROTOCOLS: &[&str] = &[
    "-c",
    "protocol.allow=never",
    "-c",
    "protocol.https.allow=always",
    "-c",
    "protocol.http.allow=always",
    "-c",
    "protocol.ssh.allow=always",
    "-c",
    "protocol.git.allow=always",
    "-c",
    "protocol.file.allow=always",
];

/// Variables of vmbuild's environment the fetch needs, beyond what every step inherits: the
/// ssh agent, proxies and certificate stores, so that apply reaches what plan reached.
pub const PASSED_THROUGH: &[&str] = &[
    "SSH_AUTH_SOCK",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Variables that would point git at another repository than the one named.
const REPOSITORY_VARIABLES: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
];

/// The environment git runs with, for plan and apply: it never prompts for a password (on a
/// terminal or through ssh), and reads no repository but the one named.
pub fn environment() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
    for name in PASSED_THROUGH {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.to_string(), value);
        }
    }
    if !env.contains_key("GIT_SSH_COMMAND") && !env.contains_key("GIT_SSH") {
        env.insert("GIT_SSH_COMMAND".into(), "ssh -o BatchMode=yes".into());
    }
    env
}

/// Where a repository is.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// A URL git fetches from (`https://`, `ssh://`, `git@host:path`, `file://`).
    Remote(String),
    /// A folder on this machine (the recipe's path made absolute).
    Local(PathBuf),
}

/// A URL when it has a scheme or is ssh's `[user@]host:path`, as git decides; a local folder
/// (relative to the recipe) otherwise.
pub fn locate(git: &str, recipe_dir: &Path) -> Location {
    let scp_like = git
        .find(':')
        .is_some_and(|colon| colon > 1 && !git[..colon].contains('/'));
    if git.contains("://") || scp_like {
        Location::Remote(git.to_string())
    } else {
        Location::Local(recipe_dir.join(git))
    }
}

/// What kind of name a ref was.
#[derive(Debug, Clone, PartialEq)]
pub enum RefKind {
    Branch,
    Tag,
    /// A commit id (full, or abbreviated in a local repository).
    Commit,
    /// Another name: `HEAD`, a full `refs/...` name, a revision expression.
    Other,
}

/// A ref resolved to the commit it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub commit: String,
    pub kind: RefKind,
}

/// Why a ref could not be resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolveError {
    /// The repository cannot be read; git's message (redacted).
    Unreachable(String),
    /// No branch, tag or commit has this name; a close name, if there is one.
    UnknownRef(Option<String>),
    /// A branch and a tag have this name and name different commits.
    Ambiguous { branch: String, tag: String },
    /// An abbreviated commit id, which a remote repository cannot expand.
    Abbreviated,
    /// Not something git accepts as a ref.
    Invalid(&'static str),
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A full commit id (SHA-1 or SHA-256).
pub fn is_commit_id(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && is_hex(text)
}

/// Refuse what git would read as an option or never accept as a name.
pub fn check_ref(git_ref: &str) -> Result<(), ResolveError> {
    if git_ref.is_empty() {
        return Err(ResolveError::Invalid("an empty ref"));
    }
    if git_ref.starts_with('-') {
        return Err(ResolveError::Invalid("a ref cannot start with `-`"));
    }
    if git_ref
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(ResolveError::Invalid(
            "a ref cannot hold spaces, control characters or `\\`",
        ));
    }
    Ok(())
}

/// A git command for plan. In `repo` (a folder on this machine) git looks for no repository
/// above it: a plain folder inside another repository is no repository.
fn command(repo: Option<&Path>, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command.args(PROTOCOLS);
    if let Some(repo) = repo {
        command.arg("-C").arg(repo);
        if let Some(parent) = repo.parent() {
            command.env("GIT_CEILING_DIRECTORIES", parent);
        }
    }
    command.args(args).envs(environment()).stdin(Stdio::null());
    for name in REPOSITORY_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// Run git read-only for plan: its output, or its (redacted) complaint. Killed, with its
/// helpers, after [`RESOLVE_TIMEOUT`].
fn git(repo: Option<&Path>, args: &[&str], secrets: &[String]) -> Result<String, String> {
    let mut command = command(repo, args);
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start `git`: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!(
                    "no answer within {} seconds",
                    RESOLVE_TIMEOUT.as_secs()
                ));
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if status.success() {
        Ok(stdout)
    } else {
        let text: Vec<String> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| redact(l.trim_start_matches("fatal: "), secrets))
            .collect();
        Err(if text.is_empty() {
            format!("git failed with {status}")
        } else {
            text.join("; ")
        })
    }
}

/// `(name, commit)` pairs of `git ls-remote` output.
fn parse_ls_remote(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (id, name) = line.split_once('\t')?;
            Some((name.trim().to_string(), id.trim().to_string()))
        })
        .collect()
}

/// The commit `name` names in an ls-remote listing: the peeled commit of an annotated tag.
fn lookup(refs: &[(String, String)], name: &str) -> Option<String> {
    let find = |wanted: &str| {
        refs.iter()
            .find(|(n, _)| n == wanted)
            .map(|(_, id)| id.clone())
    };
    find(&format!("{name}^{{}}")).or_else(|| find(name))
}

/// Resolve `git_ref` in a remote repository with `git ls-remote`: a full ref name, a tag, a
/// branch, or a full commit id.
pub fn resolve_remote(
    url: &str,
    git_ref: &str,
    secrets: &[String],
) -> Result<Resolution, ResolveError> {
    check_ref(git_ref)?;
    let peeled = format!("{git_ref}^{{}}");
    let listing = git(None, &["ls-remote", "--", url, git_ref, &peeled], secrets)
        .map_err(ResolveError::Unreachable)?;
    let refs = parse_ls_remote(&listing);
    if git_ref == "HEAD" || git_ref.starts_with("refs/") {
        if let Some(commit) = lookup(&refs, git_ref) {
            let kind = if git_ref.starts_with("refs/heads/") {
                RefKind::Branch
            } else if git_ref.starts_with("refs/tags/") {
                RefKind::Tag
            } else {
                RefKind::Other
            };
            return Ok(Resolution { commit, kind });
        }
    } else {
        let tag = lookup(&refs, &format!("refs/tags/{git_ref}"));
        let branch = lookup(&refs, &format!("refs/heads/{git_ref}"));
        match (branch, tag) {
            (Some(branch), Some(tag)) if branch != tag => {
                return Err(ResolveError::Ambiguous { branch, tag })
            }
            (Some(commit), _) => {
                return Ok(Resolution {
                    commit,
                    kind: RefKind::Branch,
                })
            }
            (None, Some(commit)) => {
                return Ok(Resolution {
                    commit,
                    kind: RefKind::Tag,
                })
            }
            (None, None) => {}
        }
    }
    if is_commit_id(git_ref) {
        return Ok(Resolution {
            commit: git_ref.to_ascii_lowercase(),
            kind: RefKind::Commit,
        });
    }
    if is_hex(git_ref) && git_ref.len() >= 4 {
        return Err(ResolveError::Abbreviated);
    }
    // Unknown: a close name among the branches and tags, if any.
    let names = git(
        None,
        &["ls-remote", "--heads", "--tags", "--", url],
        secrets,
    )
    .map(|text| parse_ls_remote(&text))
    .unwrap_or_default();
    let short: Vec<&str> = names
        .iter()
        .filter_map(|(n, _)| {
            n.strip_prefix("refs/heads/")
                .or_else(|| n.strip_prefix("refs/tags/"))
        })
        .filter(|n| !n.ends_with("^{}"))
        .collect();
    Err(ResolveError::UnknownRef(did_you_mean(
        git_ref,
        short.iter().copied(),
    )))
}

/// Resolve `git_ref` in a repository on this machine with `git rev-parse`: anything git names
/// a commit by, abbreviated ids and expressions (`main~2`) included.
pub fn resolve_local(path: &Path, git_ref: &str) -> Result<Resolution, ResolveError> {
    check_ref(git_ref)?;
    if !path.exists() {
        return Err(ResolveError::Unreachable(format!(
            "`{}` does not exist",
            path.display()
        )));
    }
    let path = std::fs::canonicalize(path)
        .map_err(|e| ResolveError::Unreachable(format!("`{}`: {e}", path.display())))?;
    let repo = Some(path.as_path());
    git(repo, &["rev-parse", "--git-dir"], &[]).map_err(ResolveError::Unreachable)?;
    let spec = format!("{git_ref}^{{commit}}");
    let output = command(repo, &["rev-parse", "--verify", "--quiet", &spec])
        .output()
        .map_err(|e| ResolveError::Unreachable(format!("cannot start `git`: {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let commit = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || commit.is_empty() {
        let names = git(
            repo,
            &[
                "for-each-ref",
                "--format=%(refname:short)",
                "refs/heads",
                "refs/tags",
            ],
            &[],
        )
        .unwrap_or_default();
        return Err(ResolveError::UnknownRef(did_you_mean(
            git_ref,
            names.lines(),
        )));
    }
    let full_name = |prefix: &str| {
        git(
            repo,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{prefix}{git_ref}^{{commit}}"),
            ],
            &[],
        )
        .ok()
        .map(|s| s.trim().to_string())
    };
    if stderr.contains("ambiguous") {
        if let (Some(branch), Some(tag)) = (full_name("refs/heads/"), full_name("refs/tags/")) {
            if branch != tag {
                return Err(ResolveError::Ambiguous { branch, tag });
            }
        }
    }
    let symbolic =
        git(repo, &["rev-parse", "--symbolic-full-name", git_ref], &[]).unwrap_or_default();
    let symbolic = symbolic.trim();
    let kind = if git_ref == "HEAD" {
        RefKind::Other
    } else if symbolic.starts_with("refs/heads/") {
        RefKind::Branch
    } else if symbolic.starts_with("refs/tags/") {
        RefKind::Tag
    } else if is_hex(git_ref) && commit.starts_with(&git_ref.to_ascii_lowercase()) {
        RefKind::Commit
    } else {
        RefKind::Other
    };
    Ok(Resolution { commit, kind })
}

/// The commits after `before` up to `after` (`git log before..after`), one line each (short id
/// and subject), newest first, at most `limit`; and how many there are in all. A repository on
/// this machine is read in place; a remote one is fetched (commits and trees, no file contents)
/// into a temporary repository.
pub fn log_between(
    location: &Location,
    before: &str,
    after: &str,
    limit: usize,
) -> Result<(Vec<String>, usize), String> {
    if !is_commit_id(before) || !is_commit_id(after) {
        return Err("not two commit ids".into());
    }
    let temporary;
    let repo = match location {
        Location::Local(path) => {
            std::fs::canonicalize(path).map_err(|e| format!("`{}`: {e}", path.display()))?
        }
        Location::Remote(url) => {
            temporary = tempfile::Builder::new()
                .prefix("vmbuild-log-")
                .tempdir()
                .map_err(|e| format!("a temporary folder: {e}"))?;
            let repo = temporary.path().to_path_buf();
            git(Some(&repo), &["init", "-q", "--bare"], &[])?;
            let by_id = git(
                Some(&repo),
                &[
                    "fetch",
                    "-q",
                    "--filter=blob:none",
                    "--no-tags",
                    "--",
                    url,
                    before,
                    after,
                ],
                &[],
            );
            if by_id.is_err() {
                git(
                    Some(&repo),
                    &[
                        "fetch",
                        "-q",
                        "--filter=blob:none",
                        "--",
                        url,
                        "+refs/heads/*:refs/remotes/origin/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                    &[],
                )?;
            }
            repo
        }
    };
    let range = format!("{before}..{after}");
    let count: usize = git(Some(&repo), &["rev-list", "--count", &range, "--"], &[])?
        .trim()
        .parse()
        .map_err(|_| "git rev-list printed no count".to_string())?;
    let limit_arg = format!("--max-count={limit}");
    let log = git(
        Some(&repo),
        &[
            "log",
            "--no-decorate",
            "--format=%h %s",
            &limit_arg,
            &range,
            "--",
        ],
        &[],
    )?;
    Ok((log.lines().map(str::to_string).collect(), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_folders() {
        let dir = Path::new("/recipes");
        assert_eq!(
            locate("https://example.org/x.git", dir),
            Location::Remote("https://example.org/x.git".into())
        );
        assert_eq!(
            locate("git@example.org:site.git", dir),
            Location::Remote("git@example.org:site.git".into())
        );
        assert_eq!(
            locate("../site", dir),
            Location::Local("/recipes/../site".into())
        );
        assert_eq!(
            locate("/srv/git/site", dir),
            Location::Local("/srv/git/site".into())
        );
        assert_eq!(
            locate("./a:b", dir),
            Location::Local("/recipes/./a:b".into())
        );
    }

    #[test]
    fn annotated_tags_are_peeled() {
        let refs = parse_ls_remote(
            "aaa\trefs/heads/main\nbbb\trefs/tags/v1\nccc\trefs/tags/v1^{}\nddd\trefs/tags/light\n",
        );
        assert_eq!(lookup(&refs, "refs/tags/v1").as_deref(), Some("ccc"));
        assert_eq!(lookup(&refs, "refs/tags/light").as_deref(), Some("ddd"));
        assert_eq!(lookup(&refs, "refs/heads/main").as_deref(), Some("aaa"));
        assert_eq!(lookup(&refs, "refs/heads/v1"), None);
    }

    #[test]
    fn refs_that_look_like_options_are_refused() {
        assert!(check_ref("--upload-pack=touch /tmp/x").is_err());
        assert!(check_ref("").is_err());
        assert!(check_ref("a b").is_err());
        assert!(check_ref("release-68").is_ok());
    }
}

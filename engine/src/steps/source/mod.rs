//! The `source` kind: a `source "NAME"` block, a git repository at a pinned commit, optionally
//! built, as a layer of the VM.
//!
//! Plan resolves the `ref` (branch, tag or commit id) to a commit id, read-only: `git ls-remote`
//! for a URL, `git rev-parse` for a repository on this machine (a path relative to the recipe),
//! annotated tags peeled to their commit. The commit id is a parameter, so it is in the key and
//! the build manifest; the ref's name is not: a moved branch reruns the step, renaming a ref that
//! still names the same commit does not.
//!
//! Apply fetches exactly that commit into a fresh repository (`git fetch --depth 1 origin <id>`,
//! or every branch and tag where the server refuses fetching by id), checks it out, and with
//! `submodules = true` also checks out the submodules at the commits it pins.
//!
//! - Without `build`, the checkout (without `.git`, modes normalized to 0644/0755) is the output,
//!   placed at `to` in the VM.
//! - With `build`, the command runs in the checkout with `$out` an empty install root, which is
//!   the output, placed at `to` (default `/`) in the VM: `make install DESTDIR=$out`. In a
//!   recipe with a template, it runs in a chroot of a copy of the template's final tree (the
//!   VM's compilers and libraries; the step then depends on that tree); without a template, on
//!   this machine, like a `step` block.
//!
//! Credentials in the URL are shown nowhere: not in the plan, the key, the manifest, errors or
//! logs (see [`git::shown`] and [`git::credentials`]).

pub mod git;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::json;

use super::chroot::Chroot;
use super::layers::Layer;
use super::process::{self, redact, Invocation};
use super::tools::Tool;
use super::tree::copy_tree;
use super::{io_error, ResolveContext, Resolved, RunContext, Step, StepError, StepFuture};
use crate::diag::{Diagnostic, Span};
use crate::recipe::{Named, Seg, SourceBlock, SpanIndex, Text};
use git::{Location, RefKind, Resolution, ResolveError};

const GIT: Tool = Tool {
    program: "git",
    package: "git",
};

/// Where the checkout and the install root sit inside the chroot while a build runs there.
pub const BUILD_DIR_IN_TREE: &str = "tmp/vmbuild-source";

pub struct SourceStep {
    id: String,
    block: SourceBlock,
    spans: SpanIndex,
    /// The template's final tree, which a build runs in; `None` builds on this machine.
    builder: Option<String>,
    depends: Vec<String>,
    /// The recipe's text holds a credential: diagnostics show no recipe text.
    literal_credentials: bool,
    resolution: OnceLock<Resolution>,
}

impl SourceStep {
    /// `template_tree`: the id of the template's final tree step, if the recipe has a template
    /// (a build runs in it).
    pub fn new(named: &Named<SourceBlock>, template_tree: Option<&str>) -> SourceStep {
        let builder = template_tree
            .filter(|_| !named.block.build.is_empty())
            .map(str::to_string);
        let url = named.block.git.reveal();
        let literal_credentials = match &named.block.git {
            Text::Plain(_) => !crate::url::credentials(url).is_empty(),
            Text::Secret(_) => false,
        };
        SourceStep {
            id: format!("source.{}", named.name),
            block: named.block.clone(),
            spans: named.spans.clone(),
            depends: builder.iter().cloned().collect(),
            builder,
            literal_credentials,
            resolution: OnceLock::new(),
        }
    }

    /// The source as a layer of the VM: the checkout at `to`, or the install root at `to`
    /// (default `/`).
    pub fn layer(named: &Named<SourceBlock>) -> Layer {
        Layer::new(
            format!("source.{}", named.name),
            named.block.to.clone().unwrap_or_else(|| "/".into()),
            Vec::new(),
        )
    }

    /// The URL as it may be shown: without credentials; a sensitive URL whose secrets are not
    /// only its credentials is shown by its identity (`env("SITE_REPO")`).
    fn shown_url(&self) -> serde_json::Value {
        match &self.block.git {
            Text::Plain(url) => json!(crate::url::shown(url)),
            Text::Secret(secret) => secret
                .shown_url()
                .map_or_else(|| json!(secret), |s| json!(s)),
        }
    }

    fn shown_url_text(&self) -> String {
        crate::recipe::shown_url(&self.block.git)
    }

    /// Attach a diagnostic to the value of `attribute`, unless the recipe text there would
    /// show a credential.
    fn at(&self, diagnostic: Diagnostic, attribute: &str, label: &str) -> Diagnostic {
        if self.literal_credentials {
            return diagnostic.detail(
                "The recipe's text is not shown: its `git` URL holds a credential. \
                 Pass it with env(\"...\") instead, which keeps it out of the recipe.",
            );
        }
        let span = self
            .spans
            .value(&[Seg::Key(attribute.into())])
            .unwrap_or_else(|| Span::new(0, 0..0));
        diagnostic.at(&span, label)
    }

    fn commit(&self) -> Result<&str, StepError> {
        self.resolution
            .get()
            .map(|r| r.commit.as_str())
            .ok_or_else(|| StepError::Unmet(format!("`{}` was not resolved by plan", self.id)))
    }

    fn location(&self, recipe_dir: &Path) -> Location {
        git::locate(self.block.git.reveal(), recipe_dir)
    }

    fn diagnostic(&self, error: ResolveError) -> Diagnostic {
        let git_ref = &self.block.git_ref;
        let url = self.shown_url_text();
        match error {
            ResolveError::Unreachable(why) => self.at(
                Diagnostic::error(format!("cannot read the git repository `{url}`: {why}")),
                "git",
                "this repository",
            )
            .help("plan reads the repository's refs (`git ls-remote`, or `git rev-parse` for a folder)"),
            ResolveError::UnknownRef(suggestion) => self
                .at(
                    Diagnostic::error(format!(
                        "`{git_ref}` is no branch, tag or commit of `{url}`"
                    )),
                    "ref",
                    "not in the repository",
                )
                .help_opt(suggestion),
            ResolveError::Ambiguous { branch, tag } => self
                .at(
                    Diagnostic::error(format!(
                        "`{git_ref}` is both a branch ({branch}) and a tag ({tag}) of `{url}`"
                    )),
                    "ref",
                    "ambiguous",
                )
                .help(format!(
                    "write `refs/heads/{git_ref}` or `refs/tags/{git_ref}`"
                )),
            ResolveError::Abbreviated => self
                .at(
                    Diagnostic::error(format!(
                        "`{git_ref}` is no branch or tag of `{url}`, and an abbreviated commit id cannot be looked up in a remote repository"
                    )),
                    "ref",
                    "abbreviated commit id",
                )
                .help("write the full 40-character commit id"),
            ResolveError::Invalid(why) => self.at(
                Diagnostic::error(format!("`{git_ref}` is not a valid ref: {why}")),
                "ref",
                "not a ref",
            ),
        }
    }

    /// `$out` (or `${out}`) in a build argument, replaced by the install root: the build is no
    /// shell, so nothing else would expand it.
    fn substitute_out(arg: &str, out: &str) -> String {
        let mut result = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(i) = rest.find('$') {
            result.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix("{out}") {
                result.push_str(out);
                rest = tail;
            } else if after.starts_with("out")
                && !after[3..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                result.push_str(out);
                rest = &after[3..];
            } else {
                result.push('$');
                rest = after;
            }
        }
        result.push_str(rest);
        result
    }

    fn build_env(&self, out: &str) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .block
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.reveal().to_string()))
            .collect();
        env.insert("out".into(), out.to_string());
        env.insert("VMBUILD_OUT".into(), out.to_string());
        env
    }

    fn build_args(&self, out: &str) -> Vec<String> {
        self.block
            .build
            .iter()
            .map(|a| Self::substitute_out(a.reveal(), out))
            .collect()
    }

    /// Fetch the resolved commit into `dir` (created) and check it out, with its submodules if
    /// asked.
    async fn fetch(&self, dir: &Path, ctx: &RunContext) -> Result<(), StepError> {
        let commit = self.commit()?.to_string();
        let (origin, local) = match self.location(&ctx.recipe_dir) {
            Location::Remote(url) => (url, false),
            Location::Local(path) => {
                let path = std::fs::canonicalize(&path).map_err(io_error("find", &path))?;
                (path.display().to_string(), true)
            }
        };
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let shown = self.shown_url_text();
        let log = |line: String| note(ctx, &line);
        log(format!("fetching {commit} from {shown}"));
        git_run(ctx, dir, &["init", "-q"]).await?;
        git_run(ctx, dir, &["remote", "add", "origin", "--", &origin]).await?;
        let by_id = git_run(
            ctx,
            dir,
            &["fetch", "--depth", "1", "--no-tags", "origin", &commit],
        )
        .await;
        match by_id {
            Ok(()) => {}
            Err(StepError::Failed { .. }) => {
                log(
                    "the server does not serve one commit by its id: fetching every branch and tag"
                        .into(),
                );
                git_run(
                    ctx,
                    dir,
                    &[
                        "fetch",
                        "--no-tags",
                        "origin",
                        "+refs/heads/*:refs/remotes/origin/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                )
                .await?;
                let found = git_run(
                    ctx,
                    dir,
                    &["cat-file", "-e", &format!("{commit}^{{commit}}")],
                )
                .await;
                if found.is_err() {
                    return Err(StepError::Unmet(format!(
                        "the commit {commit} is in no branch or tag of `{shown}`"
                    )));
                }
            }
            Err(other) => return Err(other),
        }
        git_run(
            ctx,
            dir,
            &[
                "-c",
                "advice.detachedHead=false",
                "-c",
                "core.autocrlf=false",
                "checkout",
                "-q",
                "--detach",
                &commit,
            ],
        )
        .await?;
        if self.block.submodules {
            // Submodules of a repository on this machine may be folders too; those of a remote
            // repository may not reach into this machine's folders (git's own rule since 2.38).
            let file = if local {
                "protocol.file.allow=always"
            } else {
                "protocol.file.allow=user"
            };
            git_run(
                ctx,
                dir,
                &[
                    "-c",
                    file,
                    "-c",
                    "core.autocrlf=false",
                    "submodule",
                    "update",
                    "--init",
                    "--recursive",
                    "--depth",
                    "1",
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// Run the build in `checkout` on this machine, installing into `ctx.out`.
    async fn build_here(&self, checkout: &Path, ctx: &RunContext) -> Result<(), StepError> {
        let out = ctx.out.display().to_string();
        let args = self.build_args(&out);
        let program = if args[0].contains('/') {
            checkout.join(&args[0]).display().to_string()
        } else {
            args[0].clone()
        };
        process::run(
            Invocation {
                program,
                args: args[1..].to_vec(),
                env: self.build_env(&out),
                cwd: checkout.to_path_buf(),
            },
            ctx,
        )
        .await
    }

    /// Copy the template's tree, fetch into it, and run the build in a chroot there; the install
    /// root becomes the output.
    async fn build_in_tree(&self, tree: &Path, ctx: &RunContext) -> Result<(), StepError> {
        let root = ctx.scratch.join("root");
        std::fs::create_dir_all(&root).map_err(io_error("create", &root))?;
        copy_tree(tree, &root)?;
        let base = root.join(BUILD_DIR_IN_TREE);
        let (checkout, out) = (base.join("src"), base.join("out"));
        if base.exists() {
            std::fs::remove_dir_all(&base).map_err(io_error("remove", &base))?;
        }
        self.fetch(&checkout, ctx).await?;
        std::fs::create_dir_all(&out).map_err(io_error("create", &out))?;
        let out_inside = format!("/{BUILD_DIR_IN_TREE}/out");
        let src_inside = format!("/{BUILD_DIR_IN_TREE}/src");
        let mut args: Vec<String> = vec![
            "-c".into(),
            "cd \"$1\" && shift && exec \"$@\"".into(),
            "vmbuild-source".into(),
            src_inside,
        ];
        args.extend(self.build_args(&out_inside));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let chroot = Chroot::enter(&root)?;
        let result = chroot
            .run("/bin/sh", &args, self.build_env(&out_inside), ctx)
            .await;
        let left = chroot.leave();
        result?;
        left?;
        move_contents(&out, &ctx.out)
    }
}

/// A line of vmbuild's own in the step's log (already free of secrets).
fn note(ctx: &RunContext, line: &str) {
    use std::io::Write;
    let line = redact(line, &ctx.redact);
    (ctx.on_line)(&line);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ctx.log)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// Run git in `dir` for apply, with the fetch's environment and allowed transports.
async fn git_run(ctx: &RunContext, dir: &Path, args: &[&str]) -> Result<(), StepError> {
    let mut all: Vec<String> = git::PROTOCOLS.iter().map(|s| s.to_string()).collect();
    all.extend(args.iter().map(|s| s.to_string()));
    process::run(
        Invocation {
            program: "git".into(),
            args: all,
            env: git::environment(),
            cwd: dir.to_path_buf(),
        },
        ctx,
    )
    .await
}

/// Remove every `.git` (the repository, and each submodule's link to it) under `dir`.
fn remove_git(dir: &Path) -> Result<(), StepError> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.map_err(|e| StepError::Io {
            action: "walk",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        if entry.file_name() == ".git" {
            found.push(entry.into_path());
        }
    }
    for path in found {
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StepError::Io {
                    action: "remove",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Modes that do not depend on the umask: folders and executables 0755, other files 0644.
fn normalize_modes(dir: &Path) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.map_err(|e| StepError::Io {
            action: "walk",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        if entry.path_is_symlink() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| StepError::Io {
            action: "inspect",
            path: entry.path().to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let mode = if meta.is_dir() || meta.permissions().mode() & 0o100 != 0 {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
            .map_err(io_error("chmod", entry.path()))?;
    }
    Ok(())
}

/// Move everything in `from` into the existing folder `to` (a copy where renaming fails).
fn move_contents(from: &Path, to: &Path) -> Result<(), StepError> {
    let entries: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(io_error("list", from))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_error("list", from))?;
    for entry in entries {
        let target = to.join(entry.file_name().expect("an entry has a name"));
        if std::fs::rename(&entry, &target).is_err() {
            return copy_tree(from, to);
        }
    }
    Ok(())
}

impl Step for SourceStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "source"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.depends
    }

    /// The commit, not the ref's name: the key changes when the ref moves, never otherwise.
    /// `to` is the disk's business (a layer's place), not the output's.
    fn params(&self) -> serde_json::Value {
        json!({
            "git": self.shown_url(),
            "commit": self.resolution.get().map(|r| r.commit.clone()),
            "submodules": self.block.submodules,
            "build": self.block.build,
            "env": self.block.env,
        })
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = crate::url::credentials(self.block.git.reveal());
        secrets.extend(
            std::iter::once(&self.block.git)
                .chain(&self.block.build)
                .chain(self.block.env.values())
                .flat_map(|t| t.secret_parts().iter().cloned()),
        );
        secrets
    }

    fn details(&self) -> Vec<String> {
        let Some(resolution) = self.resolution.get() else {
            return Vec::new();
        };
        let kind = match resolution.kind {
            RefKind::Branch => "branch ",
            RefKind::Tag => "tag ",
            RefKind::Commit => "commit ",
            RefKind::Other => "",
        };
        let mut lines = vec![format!(
            "{kind}{} → {}",
            self.block.git_ref, resolution.commit
        )];
        if let Some(tree) = &self.builder {
            lines.push(format!("built in a chroot of `{tree}`"));
        }
        lines
    }

    fn resolve(&self, ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        let mut resolved = Resolved::default();
        let header = self
            .spans
            .header
            .clone()
            .unwrap_or_else(|| Span::new(0, 0..0));
        let (program, version) = GIT.resolve(&header)?;
        resolved.tools.insert(program, version);
        if self.builder.is_none() && !self.block.build.is_empty() {
            // A build on this machine: its program is a tool of the key, like a command's.
            let program = self.block.build[0].reveal();
            if !program.contains('/') {
                let path = process::find_program(program, &ctx.recipe_dir).ok_or_else(|| {
                    self.at(
                        Diagnostic::error(format!("the program `{program}` is not found")),
                        "build",
                        "not on PATH",
                    )
                })?;
                let digest = ctx.program_digest(&path).map_err(|e| {
                    Diagnostic::error(format!("cannot read `{}`: {e}", path.display()))
                })?;
                resolved.tools.insert(path.display().to_string(), digest);
            }
        }
        let secrets = self.secrets();
        let resolution = match self.location(&ctx.recipe_dir) {
            Location::Remote(url) => git::resolve_remote(&url, &self.block.git_ref, &secrets),
            Location::Local(path) => git::resolve_local(&path, &self.block.git_ref),
        }
        .map_err(|e| self.diagnostic(e))?;
        let _ = self.resolution.set(resolution);
        Ok(resolved)
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            if self.block.build.is_empty() {
                let checkout = ctx.scratch.join("checkout");
                self.fetch(&checkout, &ctx).await?;
                remove_git(&checkout)?;
                normalize_modes(&checkout)?;
                return move_contents(&checkout, &ctx.out);
            }
            match &self.builder {
                Some(tree) => {
                    let tree = ctx.upstream.get(tree).cloned().ok_or_else(|| {
                        StepError::Unmet(format!("the tree `{tree}` is not available"))
                    })?;
                    self.build_in_tree(&tree, &ctx).await
                }
                None => {
                    let checkout = ctx.scratch.join("checkout");
                    self.fetch(&checkout, &ctx).await?;
                    self.build_here(&checkout, &ctx).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_is_replaced_in_build_arguments() {
        let s = |a: &str| SourceStep::substitute_out(a, "/o");
        assert_eq!(s("DESTDIR=$out"), "DESTDIR=/o");
        assert_eq!(s("${out}/usr"), "/o/usr");
        assert_eq!(s("$output $out_x $$ $"), "$output $out_x $$ $");
        assert_eq!(s("a $out b $out"), "a /o b /o");
    }

    fn git(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    /// A root tree with nothing but the host's `sh` and the libraries it loads.
    fn minimal_tree(tree: &Path) {
        let copy = |from: &Path| {
            let to = tree.join(from.strip_prefix("/").unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, &to).unwrap();
        };
        copy(Path::new("/bin/sh"));
        let ldd = std::process::Command::new("ldd")
            .arg("/bin/sh")
            .output()
            .unwrap();
        for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if word.starts_with('/') {
                copy(Path::new(word));
            }
        }
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/marker"), "inside the template\n").unwrap();
    }

    #[tokio::test]
    async fn a_build_runs_in_a_chroot_of_the_template_tree() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: a chroot needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("a.txt"), "from the commit\n").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        let tree = dir.path().join("tree");
        minimal_tree(&tree);
        let named = Named {
            name: "site".into(),
            block: SourceBlock {
                git: Text::Plain("repo".into()),
                git_ref: "main".into(),
                submodules: false,
                build: [
                    "sh",
                    "-c",
                    "read l < a.txt; echo \"$l\" > $out/copy; read m < /etc/marker; echo \"$m $PWD\" > ${out}/where",
                ]
                .map(|a| Text::Plain(a.into()))
                .to_vec(),
                to: None,
                env: BTreeMap::new(),
            },
            spans: SpanIndex::default(),
        };
        let step = SourceStep::new(&named, Some("template.t.system"));
        assert_eq!(step.depends_on(), ["template.t.system"]);
        step.resolve(&ResolveContext::new(dir.path())).unwrap();
        let (out, scratch) = (dir.path().join("out"), dir.path().join("scratch"));
        std::fs::create_dir(&out).unwrap();
        std::fs::create_dir(&scratch).unwrap();
        let ctx = RunContext {
            out: out.clone(),
            scratch: scratch.clone(),
            log: dir.path().join("log"),
            upstream: [("template.t.system".to_string(), tree.clone())].into(),
            recipe_dir: dir.path().to_path_buf(),
            cache: dir.path().join("cache"),
            redact: std::sync::Arc::new(Vec::new()),
            cancel: tokio_util::sync::CancellationToken::new(),
            on_line: std::sync::Arc::new(|_| {}),
        };
        let result = step.run(ctx).await;
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        assert_eq!(
            std::fs::read_to_string(out.join("copy")).unwrap(),
            "from the commit\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("where")).unwrap(),
            "inside the template /tmp/vmbuild-source/src\n"
        );
        assert!(!super::super::chroot::is_mounted(
            &scratch.join("root/proc")
        ));
        assert!(
            !tree.join("tmp").exists(),
            "the template's tree is untouched"
        );
    }
}

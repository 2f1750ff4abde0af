//! `source` blocks against real git repositories the tests make: plan resolves refs to commits,
//! an unchanged commit is cached and a moved branch reruns, unknown refs and unreachable
//! repositories are diagnostics, the output is the commit's files (and its submodule's), and a
//! credential in a URL appears nowhere.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use crate::snapshot;
use crate::support::{commit, git, repository, step, template_tools, Project};

const SITE: &str = r#"
source "site" {
  git = "repo"
  ref = "main"
}
"#;

#[test]
fn plan_shows_the_commit_and_only_a_moved_ref_reruns() {
    let project = Project::new();
    let (repo, first) = repository(&project, "repo", &[("index.html", "one\n")]);
    project.recipe(SITE);
    let plan = project.plan_json();
    let site = step(&plan, "source.site");
    assert_eq!(site["kind"], "source");
    assert_eq!(site["action"], "run");
    assert_eq!(site["details"][0], format!("branch main → {first}"));
    let text = project.run(&["plan", "site.hcl"]).success().stdout;
    assert!(text.contains(&format!("branch main → {first}")), "{text}");
    project.run(&["apply", "site.hcl"]).success();

    // An unchanged commit is cached, whatever else happens in the repository.
    git(&repo, &["checkout", "-q", "-b", "other"]);
    commit(&repo, &[("other.txt", "elsewhere\n")], "on another branch");
    git(&repo, &["checkout", "-q", "main"]);
    std::fs::write(repo.join("index.html"), "uncommitted\n").unwrap();
    assert_eq!(project.to_run(), Vec::<String>::new());
    git(&repo, &["checkout", "-q", "--", "index.html"]);

    // Naming the same commit differently is no change either: the key holds the commit.
    git(&repo, &["tag", "-a", "v1", "-m", "release 1"]);
    project.recipe(&SITE.replace("\"main\"", "\"v1\""));
    let plan = project.plan_json();
    assert_eq!(step(&plan, "source.site")["action"], "cached");
    assert_eq!(
        step(&plan, "source.site")["details"][0],
        format!("tag v1 → {first}"),
        "the annotated tag is peeled to its commit"
    );
    project.recipe(&SITE.replace("\"main\"", &format!("\"{first}\"")));
    assert_eq!(project.to_run(), Vec::<String>::new());
    project.recipe(&SITE.replace("\"main\"", &format!("\"{}\"", &first[..10])));
    assert_eq!(project.to_run(), Vec::<String>::new());

    // The branch moves: the step reruns, and says why.
    project.recipe(SITE);
    let second = commit(&repo, &[("index.html", "two\n")], "second");
    let plan = project.plan_json();
    let site = step(&plan, "source.site");
    assert_eq!(site["action"], "run");
    assert_eq!(site["reason"], "parameter `commit` changed");
    assert_eq!(site["details"][0], format!("branch main → {second}"));
    project.run(&["apply", "site.hcl"]).success();
    let out = project.output_tree("source.site");
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        "two\n"
    );
    assert!(project.to_run().is_empty());
    // The manifest's params (`vmbuild show`'s key inputs) record the commit.
    let shown = project
        .run(&["show", "source.site", "-r", "site.hcl"])
        .success();
    assert!(
        shown.stdout.contains(&format!("\"commit\": \"{second}\"")),
        "{}",
        shown.stdout
    );
}

#[test]
fn the_output_is_the_commit_with_its_submodule_and_no_git() {
    let project = Project::new();
    let (_, _) = repository(&project, "lib", &[("lib.txt", "library\n")]);
    let (repo, _) = repository(
        &project,
        "repo",
        &[("index.html", "site\n"), ("bin/run", "#!/bin/sh\n")],
    );
    git(
        &repo,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "../lib",
            "vendor/lib",
        ],
    );
    git(&repo, &["commit", "-q", "-m", "with a submodule"]);
    // The working tree has more than the commit: it must not leak in.
    std::fs::write(repo.join("scratch.txt"), "not committed\n").unwrap();
    project.recipe(
        r#"
source "site" {
  git        = "repo"
  ref        = "main"
  submodules = true
}
source "shallow" {
  git = "repo"
  ref = "main"
}
"#,
    );
    project.run(&["apply", "site.hcl"]).success();
    let out = project.output_tree("source.site");
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        "site\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("vendor/lib/lib.txt")).unwrap(),
        "library\n"
    );
    assert!(!out.join("scratch.txt").exists());
    assert!(!out.join(".git").exists());
    assert!(!out.join("vendor/lib/.git").exists());
    assert!(out.join(".gitmodules").exists());
    let without = project.output_tree("source.shallow");
    assert!(without.join("vendor/lib").is_dir());
    assert!(!without.join("vendor/lib/lib.txt").exists());
}

#[test]
fn a_build_installs_into_out_with_its_environment_and_secrets_blanked() {
    let project = Project::new();
    repository(
        &project,
        "repo",
        &[(
            "Makefile",
            "install:\n\tmkdir -p $(DESTDIR)/srv/site\n\tcp page.html $(DESTDIR)/srv/site/\n\techo \"$$GREETING\" > $(DESTDIR)/srv/site/greeting\n\techo \"token is $$TOKEN\"\n",
        ), ("page.html", "<h1>site</h1>\n")],
    );
    let secret = "source-build-very-secret";
    project.recipe(
        r#"
source "site" {
  git   = "repo"
  ref   = "main"
  build = ["make", "install", "DESTDIR=$out"]
  env   = { GREETING = "hello", TOKEN = env("VMBUILD_TEST_SOURCE_TOKEN") }
}
"#,
    );
    // Every command loads the recipe, so every one needs the variable.
    let run = |args: &[&str]| {
        let output = project
            .command(args)
            .env("VMBUILD_TEST_SOURCE_TOKEN", secret)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    };
    run(&["apply", "site.hcl"]);
    let shown = run(&["show", "source.site", "-r", "site.hcl"]);
    let out = PathBuf::from(
        shown
            .lines()
            .find_map(|l| l.trim().strip_prefix("output:"))
            .and_then(|l| l.split('`').nth(1))
            .unwrap(),
    );
    assert_eq!(
        std::fs::read_to_string(out.join("srv/site/page.html")).unwrap(),
        "<h1>site</h1>\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("srv/site/greeting")).unwrap(),
        "hello\n"
    );
    assert!(
        !out.join("Makefile").exists(),
        "only what the build installs"
    );
    let log = run(&["log", "source.site", "-r", "site.hcl"]);
    assert!(log.contains("token is (sensitive)"), "{log}");
    for (path, bytes) in project.store_files() {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{} holds the secret",
            path.display()
        );
    }
}

#[test]
fn an_unknown_ref_is_a_diagnostic_at_the_ref() {
    let project = Project::new();
    let (repo, _) = repository(&project, "repo", &[("a", "a\n")]);
    git(&repo, &["tag", "release-67"]);
    project.recipe(
        r#"source "site" {
  git = "repo"
  ref = "relase-67"
}
"#,
    );
    let run = project.run(&["plan", "site.hcl"]).code(1);
    assert!(run.stderr.contains("╭─[site.hcl:3:"), "{}", run.stderr);
    snapshot!(&project, "diagnostic-source-unknown-ref", run.transcript());
}

#[test]
fn unreachable_repositories_are_clear_errors() {
    let project = Project::new();
    project.recipe(
        r#"source "site" {
  git = "no/such/repository"
  ref = "main"
}
"#,
    );
    let run = project.run(&["plan", "site.hcl"]).code(1);
    assert!(
        run.stderr
            .contains("cannot read the git repository `no/such/repository`")
            && run.stderr.contains("does not exist")
            && run.stderr.contains("╭─[site.hcl:2:"),
        "{}",
        run.stderr
    );
    // A plain folder is no repository, even inside one (a recipe's folder often is).
    git(project.path(), &["init", "-q", "-b", "main"]);
    commit(
        project.path(),
        &[("README", "the recipe's repository\n")],
        "recipe",
    );
    std::fs::create_dir(project.path().join("plain")).unwrap();
    project.recipe("source \"site\" {\n  git = \"plain\"\n  ref = \"main\"\n}\n");
    let run = project.run(&["plan", "site.hcl"]).code(1);
    assert!(
        run.stderr.contains("not a git repository"),
        "{}",
        run.stderr
    );

    project
        .recipe("source \"site\" {\n  git = \"https://127.0.0.1:1/x.git\"\n  ref = \"main\"\n}\n");
    let run = project.run(&["plan", "site.hcl"]).code(1);
    assert!(
        run.stderr
            .contains("cannot read the git repository `https://127.0.0.1:1/x.git`")
            && run.stderr.contains("╭─[site.hcl:2:"),
        "{}",
        run.stderr
    );
}

/// Serve `dir` over plain HTTP on loopback (git's "dumb" protocol: static files, no shallow
/// fetches); the port.
fn serve(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if header.trim().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap().trim_start_matches('/');
                let file = dir.join(path);
                let mut stream = stream;
                match std::fs::read(&file) {
                    Ok(bytes) if !path.contains("..") => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                            bytes.len()
                        );
                        let _ = stream.write_all(&bytes);
                    }
                    _ => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    port
}

#[test]
fn credentials_in_a_url_appear_nowhere() {
    let token = "tok3n-in-the-url-very-secret";
    let project = Project::new();
    let (repo, id) = repository(&project, "repo", &[("index.html", "served\n")]);
    let served = project.path().join("served");
    std::fs::create_dir(&served).unwrap();
    git(
        &served,
        &["clone", "-q", "--bare", repo.to_str().unwrap(), "site.git"],
    );
    git(&served.join("site.git"), &["update-server-info"]);
    let port = serve(served);
    project.recipe(&format!(
        "source \"site\" {{\n  git = \"http://deploy:{token}@127.0.0.1:{port}/site.git\"\n  ref = \"main\"\n}}\n"
    ));
    let mut shown = Vec::new();
    let plan = project.run(&["plan", "site.hcl"]).success();
    assert!(
        plan.stdout.contains(&format!("branch main → {id}")),
        "{}",
        plan.stdout
    );
    shown.push(plan.transcript());
    shown.push(
        project
            .run(&["plan", "site.hcl", "--format", "json"])
            .success()
            .transcript(),
    );
    shown.push(
        project
            .run(&["plan", "site.hcl", "--format", "markdown"])
            .success()
            .transcript(),
    );
    // A dumb HTTP server cannot serve one commit by id: apply falls back to a full fetch.
    shown.push(project.run(&["apply", "site.hcl"]).success().transcript());
    let out = project.output_tree("source.site");
    assert_eq!(
        std::fs::read_to_string(out.join("index.html")).unwrap(),
        "served\n"
    );
    let show = project
        .run(&["show", "source.site", "-r", "site.hcl"])
        .success();
    assert!(
        show.stdout
            .contains(&format!("\"git\": \"http://127.0.0.1:{port}/site.git\"")),
        "{}",
        show.stdout
    );
    shown.push(show.transcript());
    let log = project
        .run(&["log", "source.site", "-r", "site.hcl"])
        .success();
    assert!(
        log.stdout.contains("fetching every branch"),
        "{}",
        log.stdout
    );
    shown.push(log.transcript());
    // Unreachable, the error shows neither the token nor the recipe text that holds it.
    project.recipe(&format!(
        "source \"site\" {{\n  git = \"https://deploy:{token}@127.0.0.1:1/x.git\"\n  ref = \"main\"\n}}\n"
    ));
    let failed = project.run(&["plan", "site.hcl"]).code(1);
    assert!(
        failed
            .stderr
            .contains("cannot read the git repository `https://127.0.0.1:1/x.git`"),
        "{}",
        failed.stderr
    );
    shown.push(failed.transcript());
    for text in shown {
        assert!(!text.contains(token), "the token is shown:\n{text}");
    }
    for (path, bytes) in project.store_files() {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(token),
            "{} holds the token",
            path.display()
        );
    }
}

#[test]
fn a_source_in_a_vm_needs_a_place_unless_it_builds() {
    let project = Project::new();
    project.recipe(
        r#"
template "web" {
  debootstrap { suite = "bookworm" }
}
source "site" {
  git = "repo"
  ref = "main"
}
source "relative" {
  git = "repo"
  ref = "main"
  to  = "srv/site"
}
source "built" {
  git   = "repo"
  ref   = "main"
  build = ["make", "install", "DESTDIR=$out"]
}
step "conf" {
  command  = ["true"]
  into     = "/srv/site"
  replaces = ["source.built"]
}
"#,
    );
    let run = project.run(&["validate", "site.hcl"]).code(1);
    assert!(
        run.stderr
            .contains("`source.site` puts its checkout into the VM, but not where"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("`to` must be an absolute path in the VM, not `srv/site`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("2 errors"), "{}", run.stderr);
}

#[test]
fn in_a_vm_a_source_is_a_layer_and_its_build_runs_in_the_template() {
    if !template_tools(&[]) {
        eprintln!("skipped: planning a template needs debootstrap, mkfs.ext4 and grub-mkimage");
        return;
    }
    let project = Project::new();
    let (_, id) = repository(&project, "repo", &[("a", "a\n")]);
    project.recipe(
        r#"
template "web" {
  debootstrap { suite = "bookworm" }
}
source "site" {
  git = "repo"
  ref = "main"
  to  = "/srv/site"
}
source "built" {
  git   = "repo"
  ref   = "main"
  build = ["make", "install", "DESTDIR=$out"]
}
"#,
    );
    let plan = project.plan_json();
    assert_eq!(
        step(&plan, "source.site")["depends_on"],
        serde_json::json!([])
    );
    let built = step(&plan, "source.built");
    assert_eq!(
        built["depends_on"],
        serde_json::json!(["template.web.system"])
    );
    assert_eq!(built["details"][0], format!("branch main → {id}"));
    assert_eq!(
        built["details"][1],
        "built in a chroot of `template.web.system`"
    );
    assert_eq!(
        step(&plan, "template.web.disk")["depends_on"],
        serde_json::json!(["template.web.system", "source.site", "source.built"])
    );
}

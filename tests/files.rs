//! `files` blocks against real trees the tests make: the globs select (BAM files out, an
//! excluded folder never read), the output is exactly the planned tree with its modes and
//! symlinks, an unchanged tree is not read again and is cached, a changed file rehashes alone and
//! reruns, a tree that changes after plan is never stored, a damaged stat cache is not trusted,
//! and recipe problems point at the text.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::snapshot;
use crate::support::{step, template_tools, Project, Run};

const WEB: &str = r#"
files "web" {
  from    = "web"
  to      = "/var/www/webServices"
  exclude = ["**/*.bam", "private"]
}
"#;

/// The stat cache trusts a file only once its ctime is older than a plan's start by two
/// seconds (the racy-mtime rule); tests that expect the cache to be used wait that long after
/// writing the tree.
fn let_the_tree_age() {
    std::thread::sleep(std::time::Duration::from_millis(2200));
}

/// The genomics-site shape: pages, data with BAM files beside their indexes, a script, a link,
/// and a private folder nobody may read.
fn site_tree(project: &Project) -> PathBuf {
    project
        .file("web/index.html", "<h1>ToxoDB</h1>\n")
        .file("web/data/ME49.bam", "alignments\n")
        .file("web/data/ME49.bam.bai", "index\n")
        .file("web/data/rna/GT1.bam", "more alignments\n")
        .file("web/data/genes.gff", "gene\tfeatures\n")
        .file("web/bin/refresh", "#!/bin/sh\necho refreshed\n")
        .file("web/private/notes.txt", "do not ship\n");
    let web = project.path().join("web");
    std::fs::set_permissions(
        web.join("bin/refresh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("index.html", web.join("home.html")).unwrap();
    std::fs::set_permissions(web.join("private"), std::fs::Permissions::from_mode(0o000)).unwrap();
    web
}

/// Run vmbuild unable to read what its permissions forbid: root loses the capabilities that
/// bypass them (so a mode-000 folder is unreadable as it is for anyone else).
fn run_without_override(project: &Project, args: &[&str]) -> Run {
    let mut command = project.command(args);
    if nix::unistd::Uid::effective().is_root() {
        let program = command.get_program().to_owned();
        let mut wrapped = std::process::Command::new("setpriv");
        wrapped
            .arg("--bounding-set=-dac_override,-dac_read_search")
            .arg(program)
            .args(command.get_args())
            .current_dir(project.path());
        for (key, value) in command.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        command = wrapped;
    }
    let output = command.output().expect("run vmbuild");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every entry under `dir`, relative, sorted, with a letter for its type.
fn entries(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir(dir)
        .into_iter()
        .map(|p| {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let kind = if meta.file_type().is_symlink() {
                "l"
            } else if meta.is_dir() {
                "d"
            } else {
                "f"
            };
            format!("{kind} {}", p.strip_prefix(dir).unwrap().display())
        })
        .collect();
    out.sort();
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().unwrap().is_dir() {
            out.extend(walkdir(&path));
        }
    }
    out
}

#[test]
fn globs_select_and_the_output_is_exactly_the_planned_tree() {
    let project = Project::new();
    let web = site_tree(&project);
    project.recipe(WEB);

    // The private folder really is unreadable here: without excluding it, plan fails on it.
    project.recipe(&WEB.replace(", \"private\"", ""));
    let refused = run_without_override(&project, &["plan", "site.hcl"]).code(1);
    assert!(
        refused.stderr.contains("private") && refused.stderr.contains("Permission denied"),
        "{}",
        refused.transcript()
    );

    // Excluded, it is never opened.
    project.recipe(WEB);
    let plan = run_without_override(&project, &["plan", "site.hcl", "--format", "json"]).success();
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let files = step(&plan, "files.web");
    assert_eq!(files["kind"], "files");
    assert_eq!(files["action"], "run");
    assert_eq!(
        files["details"][0],
        "4 files and 1 symlink, 61 B (2 excluded by `**/*.bam`, 1 excluded by `private`); \
         hashed 4, 0 from the stat cache"
    );
    let text = run_without_override(&project, &["plan", "site.hcl"]).success();
    assert!(
        text.stdout
            .contains("files.web  files  no output yet\n            4 files and 1 symlink"),
        "{}",
        text.stdout
    );
    run_without_override(&project, &["apply", "site.hcl"]).success();

    let out = project.output_tree("files.web");
    let mut top: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["files.tsv", "report.json", "tree"],
        "the layer is `tree/`; the listing and the report sit beside it"
    );
    let tree = out.join("tree");
    assert_eq!(
        entries(&tree),
        [
            "d bin",
            "d data",
            "d data/rna",
            "f bin/refresh",
            "f data/ME49.bam.bai",
            "f data/genes.gff",
            "f index.html",
            "l home.html",
        ],
        "exactly the planned entries: no BAM file, no private folder; `data/rna`, which held \
         only a BAM file, stays, empty"
    );
    let mode = |p: &str| std::fs::symlink_metadata(tree.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/refresh"), 0o750);
    assert_eq!(mode("index.html"), 0o644);
    assert_eq!(
        std::fs::read_link(tree.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    assert_eq!(
        std::fs::read(tree.join("data/genes.gff")).unwrap(),
        std::fs::read(web.join("data/genes.gff")).unwrap()
    );
    let source_mtime = std::fs::metadata(web.join("index.html")).unwrap().mtime();
    assert_eq!(
        std::fs::metadata(tree.join("index.html")).unwrap().mtime(),
        source_mtime
    );

    let listing = std::fs::read_to_string(out.join("files.tsv")).unwrap();
    let paths: Vec<&str> = listing
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "bin",
            "bin/refresh",
            "data",
            "data/ME49.bam.bai",
            "data/genes.gff",
            "data/rna",
            "home.html",
            "index.html"
        ]
    );
    assert!(listing.starts_with("path\tsize\tdigest\tmode\ttarget\n"));
    assert!(listing.contains("bin/refresh\t25\t"), "{listing}");
    assert!(listing.contains("\t100750\t\n"), "{listing}");
    assert!(listing.contains("\t120777\tindex.html\n"), "{listing}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["files"], 4);
    assert_eq!(report["symlinks"], 1);
    assert_eq!(report["bytes"], 61);
    assert_eq!(
        report["excluded"],
        serde_json::json!({"**/*.bam": 2, "private": 1})
    );
    std::fs::set_permissions(web.join("private"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn folders_of_only_excluded_files_stay_and_include_picks_with_the_way_there() {
    let project = Project::new();
    site_tree(&project);
    std::fs::set_permissions(
        project.path().join("web/private"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    project.recipe(
        r#"
files "gff" {
  from    = "web"
  to      = "/srv/gff"
  include = ["**/*.gff", "**/*.bai"]
}
files "rest" {
  from    = "web"
  to      = "/srv/rest"
  exclude = ["**/*.bam", "private/**"]
}
"#,
    );
    run_without_override(&project, &["apply", "site.hcl"]).success();
    assert_eq!(
        entries(&project.output_tree("files.gff").join("tree")),
        ["d data", "f data/ME49.bam.bai", "f data/genes.gff"]
    );
    // `private/**` keeps the folder, empty; `data/rna` held only a BAM file and stays, empty.
    let rest = entries(&project.output_tree("files.rest").join("tree"));
    assert!(rest.contains(&"d private".to_string()), "{rest:?}");
    assert!(rest.contains(&"d data/rna".to_string()), "{rest:?}");
    assert!(
        !rest
            .iter()
            .any(|e| e.ends_with(".bam") || e.contains("notes")),
        "{rest:?}"
    );
}

#[test]
fn an_unchanged_tree_is_not_read_again_and_one_changed_file_is_rehashed_alone() {
    let project = Project::new();
    project.recipe(
        r#"
files "web" {
  from = "web"
  to   = "/srv/web"
}
"#,
    );
    for i in 0..30 {
        project.file(&format!("web/page{i}.html"), &format!("page {i}\n"));
    }
    let_the_tree_age();
    let details = |project: &Project| {
        let plan = project.plan_json();
        let web = step(&plan, "files.web");
        (
            web["action"].as_str().unwrap().to_string(),
            web["reason"].as_str().unwrap_or("").to_string(),
            web["details"][0].as_str().unwrap().to_string(),
        )
    };
    let (action, _, first) = details(&project);
    assert_eq!(action, "run");
    assert!(
        first.ends_with("hashed 30, 0 from the stat cache"),
        "{first}"
    );
    project.run(&["apply", "site.hcl"]).success();

    let (action, _, second) = details(&project);
    assert_eq!(action, "cached");
    assert!(
        second.ends_with("hashed 0, 30 from the stat cache"),
        "{second}"
    );

    // Same size, new content: the stat (mtime, ctime) gives it away; only it is read.
    project.file("web/page7.html", "PAGE 7\n");
    let (action, reason, third) = details(&project);
    assert_eq!(action, "run");
    assert_eq!(reason, "input `web` changed");
    assert!(
        third.ends_with("hashed 1, 29 from the stat cache"),
        "{third}"
    );
    project.run(&["apply", "site.hcl"]).success();
    let out = project.output_tree("files.web");
    assert_eq!(
        std::fs::read_to_string(out.join("tree/page7.html")).unwrap(),
        "PAGE 7\n"
    );
    assert_eq!(project.to_run(), Vec::<String>::new());

    // Changing it back finds the first output again.
    project.file("web/page7.html", "page 7\n");
    assert_eq!(details(&project).0, "cached");
}

#[test]
fn a_tree_changed_after_plan_is_never_stored() {
    let project = Project::new();
    project.recipe(
        r#"
files "web" {
  from = "web"
  to   = "/srv/web"
}
"#,
    );
    project
        .file("web/a.txt", "planned\n")
        .file("web/b.txt", "b\n");

    // A saved plan refuses to apply once the tree changed.
    project
        .run(&["plan", "site.hcl", "--out", "plan.json"])
        .success();
    project.file("web/a.txt", "changed\n");
    let stale = project.run(&["apply", "plan.json"]).code(1);
    assert!(
        stale.stderr.contains(
            "the saved plan `plan.json` is out of date: the inputs of `files.web` changed"
        ),
        "{}",
        stale.transcript()
    );

    // A change during apply itself, after its plan: here a step that runs first edits the tree.
    // The copy notices, names the file, and nothing is committed.
    project.file("web/a.txt", "planned\n");
    project.recipe(
        r#"
step "edit" {
  command = ["sh", "-c", "printf 'CHANGED\n' > web/a.txt"]
}
files "web" {
  from = "web"
  to   = "/srv/web"
}
"#,
    );
    let failed = project.run(&["apply", "site.hcl", "--jobs", "1"]).code(1);
    let expected = format!(
        "`{}` changed since plan (its content differs): run plan again",
        std::fs::canonicalize(project.path())
            .unwrap()
            .join("web/a.txt")
            .display()
    );
    assert!(failed.stderr.contains(&expected), "{}", failed.transcript());
    project.file("web/a.txt", "planned\n");
    let plan = project.plan_json();
    let web = step(&plan, "files.web");
    assert_eq!(web["action"], "run");
    assert_eq!(
        web["reason"], "no output yet",
        "nothing was committed for it"
    );
}

#[test]
fn a_damaged_stat_cache_is_ignored() {
    let project = Project::new();
    project.recipe(
        r#"
files "web" {
  from = "web"
  to   = "/srv/web"
}
"#,
    );
    for i in 0..5 {
        project.file(&format!("web/{i}.txt"), &format!("{i}\n"));
    }
    let_the_tree_age();
    project.run(&["apply", "site.hcl"]).success();
    let caches: Vec<PathBuf> = std::fs::read_dir(project.store().join("cache/files"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    let good = std::fs::read(&caches[0]).unwrap();
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("one flipped bit", {
            let mut b = good.clone();
            let middle = b.len() / 2;
            b[middle] ^= 1;
            b
        }),
        ("cut short", good[..good.len() / 2].to_vec()),
        ("garbage", b"not a cache at all".to_vec()),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&caches[0], &bytes).unwrap();
        let plan = project.plan_json();
        let web = step(&plan, "files.web");
        assert_eq!(web["action"], "cached", "{what}");
        assert!(
            web["details"][0]
                .as_str()
                .unwrap()
                .ends_with("hashed 5, 0 from the stat cache"),
            "{what}: {web}"
        );
        assert!(
            web["details"][1]
                .as_str()
                .unwrap()
                .starts_with("the stat cache was ignored ("),
            "{what}: {web}"
        );
    }
    // The plan after a refused cache wrote a good one again.
    let plan = project.plan_json();
    assert!(step(&plan, "files.web")["details"][0]
        .as_str()
        .unwrap()
        .ends_with("hashed 0, 5 from the stat cache"));
}

#[test]
fn in_a_vm_a_file_tree_is_a_layer_that_a_step_may_replace() {
    let project = Project::new();
    project.file("web/index.html", "site\n");
    let recipe = r#"
template "web" {
  debootstrap { suite = "bookworm" }
}
source "site" {
  git = "repo"
  ref = "main"
  to  = "/srv/site"
}
files "web" {
  from = "web"
  to   = "/var/www/webServices"
}
step "conf" {
  command  = ["true"]
  into     = "/var/www/webServices"
  replaces = ["files.web"]
}
"#;
    project.recipe(recipe);
    project.run(&["validate", "site.hcl"]).success();
    project.recipe(
        &recipe
            .replace("\"/var/www/webServices\"\n}\nstep", "\"var/www\"\n}\nstep")
            .replace("[\"files.web\"]", "[\"files.wbe\"]"),
    );
    let run = project.run(&["validate", "site.hcl"]).code(1);
    assert!(
        run.stderr
            .contains("`to` must be an absolute path in the VM, not `var/www`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("`files.wbe` is not a layer that `step.conf` could replace"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `files.web`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn in_a_vm_file_trees_go_on_after_sources_and_before_step_layers() {
    if !template_tools(&[]) {
        eprintln!("skipped: planning a template needs debootstrap, mkfs.ext4 and grub-mkimage");
        return;
    }
    let project = Project::new();
    project
        .file("web/index.html", "site\n")
        .file("more/x", "x\n");
    project.recipe(
        r#"
template "web" {
  debootstrap { suite = "bookworm" }
}
step "conf" {
  command  = ["true"]
  into     = "/var/www/webServices"
  replaces = ["files.web"]
}
files "web" {
  from = "web"
  to   = "/var/www/webServices"
}
files "more" {
  from = "more"
  to   = "/srv/more"
}
"#,
    );
    let plan = project.plan_json();
    assert_eq!(
        step(&plan, "template.web.disk")["depends_on"],
        serde_json::json!([
            "template.web.system",
            "files.web",
            "files.more",
            "step.conf"
        ])
    );
    assert_eq!(
        step(&plan, "files.web")["depends_on"],
        serde_json::json!([])
    );
}

fn diagnostic(name: &str, recipe: &str, setup: impl Fn(&Project)) {
    let project = Project::new();
    setup(&project);
    project.recipe(recipe);
    let run = project.run(&["plan", "site.hcl"]).code(1);
    snapshot!(&project, name, run.transcript());
}

#[test]
fn a_missing_from_is_a_diagnostic() {
    diagnostic(
        "diagnostic-files-missing-from",
        "files \"web\" {\n  from = \"webServices/ToxoDB\"\n  to   = \"/var/www\"\n}\n",
        |_| {},
    );
}

#[test]
fn a_bad_glob_is_a_diagnostic_at_the_glob() {
    diagnostic(
        "diagnostic-files-bad-glob",
        "files \"web\" {\n  from    = \"web\"\n  to      = \"/var/www\"\n  exclude = [\"**/*.bam\", \"data/[bam\"]\n}\n",
        |p| {
            p.file("web/a", "a\n");
        },
    );
}

#[test]
fn a_glob_that_matches_nothing_is_a_diagnostic() {
    diagnostic(
        "diagnostic-files-glob-matches-nothing",
        "files \"web\" {\n  from    = \"web\"\n  to      = \"/var/www\"\n  exclude = [\"*.bam\"]\n}\n",
        |p| {
            p.file("web/data/x.bam", "bam\n").file("web/index.html", "i\n");
        },
    );
}

#[test]
fn a_tree_with_nothing_to_copy_is_a_diagnostic() {
    diagnostic(
        "diagnostic-files-nothing-selected",
        "files \"web\" {\n  from    = \"web\"\n  to      = \"/var/www\"\n  exclude = [\"**/*.bam\"]\n}\n",
        |p| {
            p.file("web/data/x.bam", "bam\n");
        },
    );
}

#[test]
fn an_exclude_with_nothing_to_exclude_is_a_note_not_an_error() {
    let project = Project::new();
    project
        .file("web/index.html", "i\n")
        .file("web/data/genome.fasta", ">chr1\n");
    project.recipe(
        "files \"web\" {\n  from    = \"web\"\n  to      = \"/var/www\"\n  exclude = [\"**/*.bam\"]\n}\n",
    );
    let run = project.run(&["plan", "site.hcl"]).success();
    assert!(
        run.stdout.contains("nothing to exclude for `**/*.bam`"),
        "{}",
        run.stdout
    );
}

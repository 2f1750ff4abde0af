//! `data "http"` blocks against a small HTTP server the tests start on loopback: a step uses a
//! value of the served document, a changed value reruns only the steps that use it, every way a
//! fetch fails is a diagnostic naming the URL, tokens appear nowhere, a saved plan refuses a
//! changed answer, and `validate` fetches nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crate::snapshot;
use crate::support::{commit, repository, running, step, Project, Run};

/// What the server answers and what it was asked.
#[derive(Default)]
struct State {
    /// The document at `/dashboard` (and `/dashboard?...`).
    dashboard: String,
    /// Every request: its target (path and query) and headers, as received.
    requests: Vec<String>,
}

/// A loopback HTTP server: `/dashboard` serves the current document, `/missing` is a 404,
/// `/page` an HTML page, `/large` 64 KiB of JSON, `/slow` never answers, `/next` a document
/// naming the next path to fetch; anything else is a 404.
struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start(dashboard: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            dashboard: dashboard.to_string(),
            requests: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || answer(stream, &state));
            }
        });
        Server { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn serve(&self, dashboard: &str) {
        self.state.lock().unwrap().dashboard = dashboard.to_string();
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn answer(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut seen = request.trim_end().to_string();
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {
                seen.push('\n');
                seen.push_str(header.trim_end());
            }
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    let dashboard = {
        let mut state = state.lock().unwrap();
        state.requests.push(seen);
        state.dashboard.clone()
    };
    let mut stream = stream;
    let reply = |stream: &mut TcpStream, status: &str, kind: &str, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    match path.as_str() {
        "/dashboard" => reply(&mut stream, "200 OK", "application/json", &dashboard),
        "/next" => reply(
            &mut stream,
            "200 OK",
            "application/json",
            r#"{"next": "dashboard"}"#,
        ),
        "/page" => reply(
            &mut stream,
            "200 OK",
            "text/html",
            "<html><body>Dashboard</body></html>",
        ),
        "/large" => {
            let body = format!("[{}1]", "1,".repeat(32 * 1024));
            reply(&mut stream, "200 OK", "application/json", &body)
        }
        "/slow" => {
            // Never answer: hold the connection until the client gives up.
            let mut rest = String::new();
            let _ = reader.read_line(&mut rest);
        }
        _ => reply(&mut stream, "404 Not Found", "text/plain", "not here"),
    }
}

const DASHBOARD: &str = r#"{
  "source": { "website": { "commit": "1111aaaa", "branch": "release-68" } },
  "release": "68",
  "databases": [ { "name": "toxo", "schemas": ["apidb", "core"] } ]
}"#;

/// The binary, with no proxy between it and the loopback server.
fn run(project: &Project, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = project.command(args);
    for name in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run vmbuild");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn plan_json(project: &Project) -> serde_json::Value {
    let plan = run(project, &["plan", "site.hcl", "--format", "json"], &[]).success();
    serde_json::from_str(&plan.stdout).unwrap()
}

fn action(plan: &serde_json::Value, id: &str) -> String {
    step(plan, id)["action"].as_str().unwrap().to_string()
}

/// The transcript with the server's port made stable.
fn stable(server: &Server, text: &str) -> String {
    text.replace(&format!("127.0.0.1:{}", server.port), "127.0.0.1:[PORT]")
}

fn recipe(server: &Server) -> String {
    format!(
        r#"
data "http" "dashboard" {{
  url = "{}"
}}

step "checkout" {{
  command = ["sh", "-c", "echo ${{data.http.dashboard.body.source.website.commit}} > $VMBUILD_OUT/commit"]
}}

step "release" {{
  command = ["sh", "-c", "echo $RELEASE $SCHEMA > $VMBUILD_OUT/release"]
  env     = {{
    RELEASE = data.http.dashboard.body.release
    SCHEMA  = data.http.dashboard.body.databases[0].schemas[1]
  }}
}}

step "plain" {{
  command = ["sh", "-c", "echo plain > $VMBUILD_OUT/plain"]
}}
"#,
        server.url("/dashboard")
    )
}

#[test]
fn a_changed_value_reruns_only_the_steps_that_use_it() {
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    project.recipe(&recipe(&server));

    let plan = run(&project, &["plan", "site.hcl"], &[]).success();
    snapshot!(
        &project,
        "data-http-plan",
        stable(&server, &plan.transcript())
    );
    let json = plan_json(&project);
    let fetched = &json["data"][0];
    assert_eq!(fetched["id"], "data.http.dashboard");
    assert_eq!(fetched["method"], "GET");
    assert_eq!(fetched["url"], server.url("/dashboard"));
    assert_eq!(fetched["status"], 200);
    assert_eq!(fetched["bytes"], DASHBOARD.len());

    run(&project, &["apply", "site.hcl"], &[]).success();
    let read = |id: &str, file: &str| {
        let shown = run(&project, &["show", id, "-r", "site.hcl"], &[]).success();
        let folder = shown
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("output:"))
            .and_then(|l| l.split('`').nth(1))
            .unwrap()
            .to_string();
        std::fs::read_to_string(std::path::Path::new(&folder).join(file)).unwrap()
    };
    assert_eq!(read("step.checkout", "commit"), "1111aaaa\n");
    assert_eq!(read("step.release", "release"), "68 core\n");

    // The same answer: nothing to do.
    let json = plan_json(&project);
    for id in ["step.checkout", "step.release", "step.plain"] {
        assert_eq!(action(&json, id), "cached", "{id}");
    }

    // The dashboard names another commit: only the step that uses it reruns; a key of the
    // document that no step uses changes nothing either.
    server.serve(
        &DASHBOARD
            .replace("1111aaaa", "2222bbbb")
            .replace("release-68", "release-69"),
    );
    let json = plan_json(&project);
    assert_eq!(action(&json, "step.checkout"), "run");
    assert_eq!(
        step(&json, "step.checkout")["reason"],
        "parameter `command` changed"
    );
    assert_eq!(action(&json, "step.release"), "cached");
    assert_eq!(action(&json, "step.plain"), "cached");
    run(&project, &["apply", "site.hcl"], &[]).success();
    assert_eq!(read("step.checkout", "commit"), "2222bbbb\n");

    // A value in a step's environment enters its key by value too.
    server.serve(&DASHBOARD.replace("\"core\"", "\"dots\""));
    let json = plan_json(&project);
    assert_eq!(action(&json, "step.release"), "run");
    assert_eq!(
        step(&json, "step.release")["reason"],
        "parameter `env.SCHEMA` changed"
    );
    assert_eq!(action(&json, "step.plain"), "cached");
}

#[test]
fn a_data_block_may_use_another_ones_answer() {
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    project.recipe(&format!(
        r#"
data "http" "detail" {{
  url = "{}/${{data.http.index.body.next}}"
}}

data "http" "index" {{
  url = "{}"
}}

step "s" {{
  command = ["sh", "-c", "echo ${{data.http.detail.body.release}} > $VMBUILD_OUT/r"]
}}
"#,
        server.url(""),
        server.url("/next")
    ));
    let json = plan_json(&project);
    // Listed in recipe order, whatever order they were fetched in.
    assert_eq!(json["data"][0]["id"], "data.http.detail");
    assert_eq!(json["data"][0]["url"], server.url("/dashboard"));
    assert_eq!(json["data"][1]["id"], "data.http.index");

    // A cycle between data blocks is a diagnostic.
    project.recipe(&format!(
        r#"
data "http" "a" {{
  url = "{}/${{data.http.b.body.next}}"
}}

data "http" "b" {{
  url = "{}/${{data.http.a.body.next}}"
}}
"#,
        server.url(""),
        server.url("")
    ));
    let run = run(&project, &["plan", "site.hcl"], &[]).code(1);
    assert!(
        run.stderr.contains(
            "data blocks and locals refer to each other in a cycle: data.http.a -> data.http.b ->"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn every_failed_fetch_is_a_diagnostic_naming_the_url() {
    let server = Server::start(DASHBOARD);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let project = Project::new();
    let cases = [
        (
            "unreachable",
            format!("http://127.0.0.1:{closed}/dashboard"),
            "",
        ),
        ("not-found", server.url("/missing"), ""),
        ("not-json", server.url("/page"), ""),
        ("too-large", server.url("/large"), "  max_bytes = \"1K\"\n"),
        ("too-slow", server.url("/slow"), "  timeout = \"1s\"\n"),
    ];
    for (name, url, more) in cases {
        project.recipe(&format!(
            "data \"http\" \"dashboard\" {{\n  url = \"{url}\"\n{more}}}\n\nstep \"s\" {{\n  command = [\"echo\", data.http.dashboard.body.release]\n}}\n"
        ));
        let started = std::time::Instant::now();
        let failed = run(&project, &["plan", "site.hcl"], &[]).code(1);
        assert!(
            failed.stderr.contains(&format!("from `{url}`")),
            "{name}: {}",
            failed.stderr
        );
        // One problem: the failed fetch, not also every use of its answer.
        assert_eq!(failed.stderr.matches('×').count(), 1, "{}", failed.stderr);
        if name == "too-slow" {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
        }
        let transcript = stable(&server, &failed.transcript())
            .replace(&format!("127.0.0.1:{closed}"), "127.0.0.1:[CLOSED]");
        snapshot!(&project, format!("data-http-{name}").as_str(), transcript);
    }
}

#[test]
fn a_missing_key_is_a_diagnostic_at_the_reference() {
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    project.recipe(&format!(
        "data \"http\" \"dashboard\" {{\n  url = \"{}\"\n}}\n\nstep \"s\" {{\n  command = [\"git\", \"checkout\", data.http.dashboard.body.source.webiste.commit]\n}}\n",
        server.url("/dashboard")
    ));
    let failed = run(&project, &["plan", "site.hcl"], &[]).code(1);
    snapshot!(
        &project,
        "data-http-missing-key",
        stable(&server, &failed.transcript())
    );
    // An unknown field of the block and an undeclared block, even without fetching.
    project.recipe(&format!(
        "data \"http\" \"dashboard\" {{\n  url = \"{}\"\n}}\n\nstep \"s\" {{\n  command = [\"echo\", data.http.dashboard.bdy, data.http.dashbord.body]\n}}\n",
        server.url("/dashboard")
    ));
    let failed = run(&project, &["validate", "site.hcl"], &[]).code(1);
    assert!(
        failed
            .stderr
            .contains("`data.http.dashboard` has no key `bdy`")
            && failed.stderr.contains("did you mean `body`?"),
        "{}",
        failed.stderr
    );
    project.recipe(&format!(
        "data \"htttp\" \"dashboard\" {{\n  url = \"{}\"\n}}\n",
        server.url("/dashboard")
    ));
    let failed = run(&project, &["validate", "site.hcl"], &[]).code(1);
    assert!(
        failed.stderr.contains("`htttp` is not a data type")
            && failed.stderr.contains("did you mean `http`?"),
        "{}",
        failed.stderr
    );
}

#[test]
fn validate_fetches_nothing() {
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    project.recipe(&format!(
        r#"
data "http" "dashboard" {{
  url     = "{}"
  headers = {{ Accept = "application/json" }}
  timeout = "5s"
}}

template "base" {{
  debootstrap {{
    suite    = "bookworm"
    packages = concat(["apache2"], data.http.dashboard.body.packages)
  }}
  disk_size = data.http.dashboard.body.disk_size
}}

step "s" {{
  command = ["sh", "-c", "echo ${{upper(data.http.dashboard.body.release)}}"]
  into    = data.http.dashboard.body.path
}}
"#,
        server.url("/dashboard")
    ));
    let valid = run(&project, &["validate", "site.hcl"], &[]).success();
    assert!(
        valid.stdout.contains("is valid: 3 blocks"),
        "{}",
        valid.stdout
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // What does not depend on the answer is still checked.
    project.recipe(&format!(
        "data \"http\" \"dashboard\" {{\n  url = \"{}\"\n  timeout = \"soon\"\n}}\n",
        server.url("/dashboard")
    ));
    let failed = run(&project, &["validate", "site.hcl"], &[]).code(1);
    assert!(
        failed.stderr.contains("wrong type for `timeout`"),
        "{}",
        failed.stderr
    );
    assert!(server.requests().is_empty());
}

#[test]
fn a_saved_plan_refuses_a_changed_answer() {
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    project.recipe(&recipe(&server));
    run(&project, &["plan", "site.hcl", "--out", "plan.json"], &[]).success();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.path().join("plan.json")).unwrap()).unwrap();
    assert_eq!(saved["data"][0]["id"], "data.http.dashboard");

    // A key no step uses changes: the answer is not the one planned, and apply says so.
    server.serve(&DASHBOARD.replace("release-68", "release-69"));
    let refused = run(&project, &["apply", "plan.json"], &[]).code(1);
    assert!(
        refused.stderr.contains("the saved plan `plan.json` is out of date: `data.http.dashboard` answered differently (blake3 "),
        "{}",
        refused.stderr
    );
    // The answer planned is served again: the plan applies.
    server.serve(DASHBOARD);
    run(&project, &["apply", "plan.json"], &[]).success();
}

#[test]
fn tokens_in_the_url_and_headers_appear_nowhere() {
    const URL_TOKEN: &str = "url-t0ken-5ecret-value";
    const HEADER_TOKEN: &str = "header-t0ken-5ecret-value";
    const LITERAL: &str = "literal-passw0rd-in-text";
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    let with_user = server
        .url("/dashboard")
        .replace("http://", &format!("http://reader:{LITERAL}@"));
    project.recipe(&format!(
        r#"
data "http" "dashboard" {{
  url     = "{}?token=${{env("DASH_URL_TOKEN")}}"
  headers = {{ Authorization = "Bearer ${{env("DASH_TOKEN")}}" }}
}}

data "http" "mirror" {{
  url = "{with_user}"
}}

step "checkout" {{
  command = ["sh", "-c", "echo ${{data.http.dashboard.body.source.website.commit}} ${{data.http.mirror.body.release}} > $VMBUILD_OUT/c"]
}}
"#,
        server.url("/dashboard")
    ));
    let env = [("DASH_URL_TOKEN", URL_TOKEN), ("DASH_TOKEN", HEADER_TOKEN)];
    let leaks = |what: &str, text: &str| {
        for secret in [URL_TOKEN, HEADER_TOKEN, LITERAL] {
            assert!(!text.contains(secret), "{what} shows a token:\n{text}");
        }
    };
    let mut outputs = Vec::new();
    for format in ["text", "json", "markdown"] {
        let plan = run(&project, &["plan", "site.hcl", "--format", format], &env).success();
        outputs.push((format!("plan {format}"), plan.transcript()));
    }
    let text = &outputs[0].1;
    assert!(
        text.contains("data.http.dashboard  GET (sensitive: \"http://127.0.0.1:")
            && text.contains(&format!(
                "data.http.mirror     GET {} (200",
                server.url("/dashboard")
            )),
        "{text}"
    );
    let planned = run(&project, &["plan", "site.hcl", "--out", "plan.json"], &env).success();
    outputs.push(("plan --out".into(), planned.transcript()));
    outputs.push((
        "plan.json".into(),
        std::fs::read_to_string(project.path().join("plan.json")).unwrap(),
    ));
    let applied = run(&project, &["apply", "plan.json"], &env).success();
    outputs.push(("apply".into(), applied.transcript()));
    let shown = run(&project, &["show", "step.checkout", "-r", "site.hcl"], &env).success();
    outputs.push(("show".into(), shown.transcript()));
    for (what, text) in &outputs {
        leaks(what, text);
    }
    for (path, bytes) in project.store_files() {
        leaks(
            &path.display().to_string(),
            &String::from_utf8_lossy(&bytes),
        );
    }
    // The server did receive them: the test would catch nothing otherwise.
    let requests = server.requests().join("\n");
    assert!(
        requests.contains(&format!("?token={URL_TOKEN}"))
            && requests
                .to_lowercase()
                .contains(&format!("authorization: bearer {HEADER_TOKEN}"))
            && requests.to_lowercase().contains("authorization: basic "),
        "{requests}"
    );

    // A failed fetch names the URL without its tokens either.
    let path = "/missing?token=${env(\"DASH_URL_TOKEN\")}";
    project.recipe(&format!(
        "data \"http\" \"dashboard\" {{\n  url     = \"{}{path}\"\n  headers = {{ Authorization = \"Bearer ${{env(\"DASH_TOKEN\")}}\" }}\n}}\n",
        server.url("")
    ));
    let failed = run(&project, &["plan", "site.hcl"], &env).code(1);
    leaks("a failed fetch", &failed.transcript());
    assert!(
        failed.stderr.contains("it answered 404 Not Found"),
        "{}",
        failed.stderr
    );
    // A literal credential in the recipe's text: the diagnostic shows no recipe text.
    project.recipe(&format!(
        "data \"http\" \"dashboard\" {{\n  url = \"{}\"\n}}\n",
        with_user.replace("/dashboard", "/missing")
    ));
    let failed = run(&project, &["plan", "site.hcl"], &env).code(1);
    leaks(
        "a failed fetch with a literal credential",
        &failed.transcript(),
    );
    assert!(
        failed.stderr.contains(&format!(
            "cannot fetch `data.http.dashboard` from `{}`",
            server.url("/missing")
        )) && failed.stderr.contains("The recipe's text is not shown"),
        "{}",
        failed.stderr
    );
}

#[test]
fn a_toml_recipe_reads_data_blocks_too() {
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    project.file(
        "site.toml",
        &format!(
            "[data.http.dashboard]\nurl = \"{}\"\n\n[step.release]\ncommand = [\"sh\", \"-c\", \"echo ${{data.http.dashboard.body.release}} > $VMBUILD_OUT/r\"]\n",
            server.url("/dashboard")
        ),
    );
    let plan = run(&project, &["plan", "site.toml", "--format", "json"], &[]).success();
    let json: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(json["data"][0]["id"], "data.http.dashboard");
    let command = run(&project, &["show", "step.release", "-r", "site.toml"], &[]).success();
    assert!(command.stdout.contains("echo 68 >"), "{}", command.stdout);
    // Without fetching, a problem elsewhere in the file is still found.
    project.file(
        "site.toml",
        &format!(
            "[data.htp.other]\nurl = \"{}\"\n\n[data.http.dashboard]\nurl = \"{}\"\n\n[step.release]\ncommand = [\"sh\", \"-c\", \"echo ${{data.http.dashboard.body.release}}\"]\n",
            server.url("/dashboard"),
            server.url("/dashboard")
        ),
    );
    let failed = run(&project, &["validate", "site.toml"], &[]).code(1);
    assert!(
        failed.stderr.contains("`htp` is not a data type"),
        "{}",
        failed.stderr
    );
    assert!(server.requests().len() == 2, "{:?}", server.requests());
}

#[test]
fn a_source_checks_out_the_commit_the_dashboard_names() {
    let project = Project::new();
    let (repo, first) = repository(&project, "repo", &[("index.html", "one\n")]);
    let commits = [first, commit(&repo, &[("index.html", "two\n")], "two")];
    let served = |commit: &str| format!(r#"{{"source": {{"website": {{"commit": "{commit}"}}}}}}"#);
    let server = Server::start(&served(&commits[0]));
    project.recipe(&format!(
        "data \"http\" \"dashboard\" {{\n  url = \"{}\"\n}}\n\nsource \"website\" {{\n  git = \"repo\"\n  ref = data.http.dashboard.body.source.website.commit\n}}\n",
        server.url("/dashboard")
    ));
    let json = plan_json(&project);
    assert_eq!(
        step(&json, "source.website")["details"][0],
        format!("commit {} → {}", commits[0], commits[0])
    );
    run(&project, &["apply", "site.hcl"], &[]).success();
    assert_eq!(action(&plan_json(&project), "source.website"), "cached");

    server.serve(&served(&commits[1]));
    let json = plan_json(&project);
    assert_eq!(action(&json, "source.website"), "run");
    assert_eq!(
        step(&json, "source.website")["reason"],
        "parameter `commit` changed"
    );
}

/// The deck's way: one dashboard names every site's commit, one module builds each site. A new
/// commit for one site reruns that site's source and what follows it, and nothing of the other.
#[test]
fn a_dashboard_answer_for_one_site_reruns_only_that_site() {
    let project = Project::new();
    let (repo, first) = repository(&project, "repo", &[("index.html", "one\n")]);
    let commits = [first, commit(&repo, &[("index.html", "two\n")], "two")];
    let served = |toxo: &str, plasmo: &str| {
        format!(
            r#"{{"sites": {{"toxodb": {{"commit": "{toxo}"}}, "plasmodb": {{"commit": "{plasmo}"}}}}}}"#
        )
    };
    let server = Server::start(&served(&commits[0], &commits[0]));
    project.file(
        "modules/site/site.hcl",
        &format!(
            r#"
variable "site" {{}}
variable "commit" {{}}

step "shared" {{
  command = ["sh", "-c", "echo common > $VMBUILD_OUT/common.txt"]
}}

source "website" {{
  git = "{}"
  ref = var.commit
}}

step "site" {{
  command = ["sh", "-c", "cat $VMBUILD_IN_SOURCE_WEBSITE/index.html > $VMBUILD_OUT/page.txt; echo $SITE >> $VMBUILD_OUT/page.txt"]
  after   = [step.shared, source.website]
  env     = {{ SITE = var.site }}
}}
"#,
            repo.display()
        ),
    );
    project.recipe(&format!(
        r#"
data "http" "dashboard" {{
  url = "{}"
}}

module "site" {{
  for_each = ["toxodb", "plasmodb"]
  source   = "modules/site"
  site     = each.value
  commit   = data.http.dashboard.body.sites[each.value].commit
}}
"#,
        server.url("/dashboard")
    ));
    run(&project, &["apply", "site.hcl"], &[]).success();
    let page = |site: &str| {
        let folder = project.output_tree(&format!("module.site.{site}.step.site"));
        std::fs::read_to_string(folder.join("page.txt")).unwrap()
    };
    assert_eq!(page("toxodb"), "one\ntoxodb\n");
    assert_eq!(page("plasmodb"), "one\nplasmodb\n");

    server.serve(&served(&commits[1], &commits[0]));
    let json = plan_json(&project);
    let running = running(&json);
    assert_eq!(
        running,
        [
            "module.site.toxodb.source.website",
            "module.site.toxodb.step.site"
        ],
        "{json:#}"
    );
    assert_eq!(
        step(&json, "module.site.toxodb.source.website")["reason"],
        "parameter `commit` changed"
    );
    let apply = run(&project, &["apply", "site.hcl"], &[]).success();
    let started: Vec<&str> = apply
        .stderr
        .lines()
        .filter(|l| l.contains(": started"))
        .collect();
    assert_eq!(started.len(), 2, "{}", apply.stderr);
    assert_eq!(page("toxodb"), "two\ntoxodb\n");
    assert_eq!(page("plasmodb"), "one\nplasmodb\n");
}

/// `offprint w1.toxodb.org`: a module asks the dashboard about its own host; plan lists what
/// every instance fetched, under the instance's name.
#[test]
fn each_module_instance_fetches_its_own_answer() {
    let server = Server::start(DASHBOARD);
    let project = Project::new();
    project.file(
        "modules/site/site.hcl",
        &format!(
            r#"
variable "host" {{}}

data "http" "dashboard" {{
  url = "{}?host=${{var.host}}"
}}

step "release" {{
  command = ["sh", "-c", "echo ${{data.http.dashboard.body.release}} > $VMBUILD_OUT/release"]
}}
"#,
            server.url("/dashboard")
        ),
    );
    project.recipe(
        "module \"site\" {\n  for_each = [\"w1.toxodb.org\", \"w1.plasmodb.org\"]\n  source   = \"modules/site\"\n  host     = each.value\n}\n",
    );
    let json = plan_json(&project);
    let fetched: Vec<(&str, &str)> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["url"].as_str().unwrap()))
        .collect();
    let toxo = server.url("/dashboard?host=w1.toxodb.org");
    let plasmo = server.url("/dashboard?host=w1.plasmodb.org");
    assert_eq!(
        fetched,
        [
            (
                "module.site.w1.toxodb.org.data.http.dashboard",
                toxo.as_str()
            ),
            (
                "module.site.w1.plasmodb.org.data.http.dashboard",
                plasmo.as_str()
            ),
        ]
    );
    let text = run(&project, &["plan", "site.hcl"], &[]).success();
    assert!(text.stdout.contains(&toxo), "{}", text.stdout);
    assert!(text.stdout.contains(&plasmo), "{}", text.stdout);
    let asked: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| r.lines().next().map(str::to_string))
        .collect();
    assert!(
        asked.iter().any(|r| r.contains("host=w1.plasmodb.org")),
        "{asked:?}"
    );
}

//! `config` blocks: every name a template uses is checked when the recipe is loaded, and an
//! unknown one is reported in the template file itself; plan shows what each file is made of.

use crate::snapshot;
use crate::support::Project;

const RECIPE: &str = r#"
variable "release" {
  default = "68"
}

variable "db_password" {
  default   = "not-for-the-vm"
  sensitive = true
}

template "web" {
  debootstrap {
    suite    = "bookworm"
    packages = ["postgresql"]
  }
}

database "apicomm" {
  engine = "postgres"
  init   = ["schema.sql"]
  into   = "apicomm"
  role   = "comm"
}

config "model" {
  template = "conf/model.xml.tmpl"
  to       = "/etc/site/model.xml"
  owner    = "root"
  values   = { site = "ToxoDB" }
}
"#;

fn project(template: &str) -> Project {
    let project = Project::new();
    project.recipe(RECIPE);
    project.file("schema.sql", "CREATE SCHEMA userlogins5;\n");
    project.file("conf/model.xml.tmpl", template);
    project
}

/// `validate` fails pointing into the template; the snapshot shows where.
fn check(name: &str, template: &str) -> String {
    let project = project(template);
    let run = project.run(&["validate", "site.hcl"]).code(1);
    assert!(
        run.stderr.contains("╭─[conf/model.xml.tmpl:"),
        "{name}: the diagnostic does not point into the template:\n{}",
        run.stderr
    );
    snapshot!(
        &project,
        format!("diagnostic-config-{name}"),
        run.transcript()
    );
    run.stderr
}

#[test]
fn an_unknown_value_is_reported_in_the_template() {
    let stderr = check(
        "unknown-value",
        "<site name=\"{{ site }}\" release=\"{{ var.release }}\">\n  <db login=\"{{ database.apicomm.role }}\" name=\"{{ sitename }}\"/>\n</site>\n",
    );
    assert!(stderr.contains("`sitename` is not a value of `config.model`"));
    assert!(stderr.contains("did you mean `site`?"), "{stderr}");
}

#[test]
fn unknown_variables_databases_and_names_are_reported_together() {
    let stderr = check(
        "unknown-names",
        "{{ var.relase }}\n{{ database.toxo.name }}\n{{ database.apicomm.owner }}\n",
    );
    assert!(stderr.contains("did you mean `release`?"), "{stderr}");
    assert!(stderr.contains("the recipe has no `database \"toxo\"`"));
    assert!(stderr.contains("`database.apicomm.owner` is no value a config template can use"));
    assert!(stderr.contains("3 errors"), "{stderr}");
}

#[test]
fn a_sensitive_variable_never_goes_into_the_vm() {
    let stderr = check("sensitive", "password={{ var.db_password }}\n");
    assert!(stderr.contains("`var.db_password` is sensitive"));
    assert!(!stderr.contains("not-for-the-vm"));
}

#[test]
fn template_syntax_errors_point_at_the_text() {
    let stderr = check("syntax", "ok\nport={{ database.apicomm.port | yaml }}\n");
    assert!(stderr.contains("unknown filter `yaml`"), "{stderr}");
}

#[test]
fn a_missing_template_is_reported_at_the_attribute() {
    let project = Project::new();
    project.recipe(RECIPE);
    project.file("schema.sql", "CREATE SCHEMA x;\n");
    let run = project.run(&["validate", "site.hcl"]).code(1);
    assert!(
        run.stderr
            .contains("cannot read the template `conf/model.xml.tmpl`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("╭─[site.hcl:"), "{}", run.stderr);
}

#[test]
fn plan_shows_what_the_file_is_made_of_and_a_password_makes_it_wait_for_the_load() {
    let project = project(
        "site={{ site }}\nrelease={{ var.release }}\ndb={{ database.apicomm.name }}\nuser={{ database.apicomm.role }}\npassword={{ database.apicomm.password | shell }}\n",
    );
    let plan = project.plan_json();
    let step = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "config.model")
        .unwrap_or_else(|| panic!("no config.model in {plan}"))
        .clone();
    assert_eq!(step["kind"], "config");
    let depends: Vec<&str> = step["depends_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(depends.contains(&"database.load"), "{depends:?}");
    let text = project.run(&["plan", "site.hcl"]).success().stdout;
    assert!(
        text.contains("conf/model.xml.tmpl → /etc/site/model.xml (0640): database.apicomm.name, database.apicomm.password, database.apicomm.role, site, var.release"),
        "{text}"
    );
    // The disk takes the rendered file as a layer.
    let graph = project.run(&["graph", "site.hcl"]).success().stdout;
    assert!(
        graph.contains("\"config.model\" -> \"template.web.disk\""),
        "{graph}"
    );
}

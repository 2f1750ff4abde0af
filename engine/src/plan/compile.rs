//! From recipe blocks to steps: each block kind becomes one or more steps of the graph.
//!
//! A `template` becomes a chain: `template.NAME.debootstrap` → `template.NAME.system` →
//! `template.NAME.provision.0` → ...; each step's output is a whole root tree, so changing a
//! late provisioner reruns only what follows it. `step` blocks become `command` steps, `source`
//! blocks `source` steps (layers of the VM, built in the template's final tree), `files` blocks
//! `files` steps (layers of the VM, at `to`), `config` blocks `config` steps (a rendered file of
//! the VM). A `sanitize` block's operations go into the disk step; its forbidden strings make
//! the `sanitize.scan` step, after the disk and every output. A `forbid_software` block's rules
//! go into the disk step too, which checks them on the sanitized tree.

use std::sync::Arc;

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::recipe::{DatabaseBlock, DatabaseEngine, Named};
use crate::recipe::{Provision, Recipe, Seg};
use crate::steps::command::CommandStep;
use crate::steps::config::{ConfigStep, DatabaseFacts};
use crate::steps::database::dump_step::DumpStep;
use crate::steps::database::load_step::{LoadStep, Origin, PlannedDatabase};
use crate::steps::debootstrap::DebootstrapStep;
use crate::steps::disk::step::DiskStep;
use crate::steps::files::FilesStep;
use crate::steps::import::ImportStep;
use crate::steps::layers::Layer;
use crate::steps::output::OutputStep;
use crate::steps::provision_puppet::PuppetProvisionStep;
use crate::steps::provision_shell::ShellProvisionStep;
use crate::steps::qa::step::QaStep;
use crate::steps::sanitize::{forbid, ScanStep, ScannedOutput};
use crate::steps::source::SourceStep;
use crate::steps::system::SystemStep;
use crate::steps::Step;

use super::module::InModule;

/// A compiled step and the secret values to blank out of its log.
pub type Compiled = (Arc<dyn Step>, Vec<String>);

fn push(steps: &mut Vec<Compiled>, step: impl Step + 'static) {
    let secrets = step.secrets();
    steps.push((Arc::new(step), secrets));
}

/// The `step` blocks whose output goes into the VM, in recipe order.
fn layers(recipe: &Recipe) -> Vec<Layer> {
    recipe
        .steps
        .iter()
        .filter_map(|s| {
            s.block.into.as_ref().map(|into| {
                Layer::new(
                    format!("step.{}", s.name),
                    into.clone(),
                    s.block.replaces.clone(),
                )
            })
        })
        .collect()
}

/// Turn each recipe block into its steps. Kinds whose steps are not built yet are reported.
pub fn compile(recipe: &Recipe) -> Result<Vec<Compiled>, Diagnostics> {
    let mut diagnostics = Diagnostics {
        sources: recipe.sources.clone(),
        items: vec![],
    };
    let mut steps: Vec<Compiled> = Vec::new();
    for named in &recipe.steps {
        push(&mut steps, CommandStep::new(named));
    }
    if recipe.templates.len() > 1 {
        let second = &recipe.templates[1];
        diagnostics.push(
            Diagnostic::error("a recipe builds one VM, from one template")
                .at(&second.header(), "a second template")
                .also(&recipe.templates[0].header(), "the first"),
        );
    }
    for template in recipe.templates.iter().take(1) {
        let block = &template.block;
        let mut last = match (&block.debootstrap, &block.image) {
            (Some(options), None) => {
                let step = DebootstrapStep::new(template, options);
                let id = step.id().to_string();
                push(&mut steps, step);
                id
            }
            (None, Some(options)) => {
                let step = ImportStep::new(template, options);
                let id = step.id().to_string();
                push(&mut steps, step);
                id
            }
            _ => {
                diagnostics.push(
                    Diagnostic::error(format!(
                        "template `{}` needs exactly one of `debootstrap` or `image`",
                        template.name
                    ))
                    .at(&template.header(), "say where the root tree comes from"),
                );
                continue;
            }
        };
        let system = SystemStep::new(template, &last);
        last = system.id().to_string();
        push(&mut steps, system);
        for (index, provision) in block.provision.iter().enumerate() {
            last = match provision {
                Provision::Shell(options) => {
                    let step = ShellProvisionStep::new(template, index, options, &last);
                    let id = step.id().to_string();
                    push(&mut steps, step);
                    id
                }
                Provision::Puppet(options) => {
                    let step = PuppetProvisionStep::new(template, index, options, &last);
                    let id = step.id().to_string();
                    push(&mut steps, step);
                    id
                }
            };
        }
        // The databases' cluster first, then sources, file trees and config files, then `step` layers,
        // which may replace their files.
        let mut layers: Vec<Layer> = Vec::new();
        if let Some(load) = databases(recipe, &last, &mut steps, &mut diagnostics) {
            push(&mut steps, load);
            layers.push(LoadStep::layer());
        }
        for source in &recipe.git_sources {
            push(&mut steps, SourceStep::new(source, Some(&last)));
            layers.push(SourceStep::layer(source));
        }
        for files in &recipe.files {
            push(&mut steps, FilesStep::new(files));
            layers.push(FilesStep::layer(files));
        }
        for config in &recipe.configs {
            let Some(template) = recipe.config_templates.get(&config.name) else {
                continue;
            };
            let step = ConfigStep::new(
                config,
                template,
                plain_variables(recipe),
                database_facts(recipe),
                &last,
            );
            push(&mut steps, step);
            layers.push(ConfigStep::layer(config));
        }
        layers.extend(self::layers(recipe));
        let operations = recipe
            .sanitize
            .as_ref()
            .map(|s| s.block.operations.clone())
            .unwrap_or_default();
        let disk = DiskStep::new(template, &last, layers)
            .with_sanitize(&operations)
            .with_forbid_software(recipe.forbid_software.as_ref());
        let disk_id = disk.id().to_string();
        push(&mut steps, disk);
        let mut outputs = Vec::new();
        let mut scanned = Vec::new();
        for output in &recipe.outputs {
            let step = OutputStep::new(output, &disk_id, &template.name);
            outputs.push((output.name.clone(), step.id().to_string(), step.file_name()));
            scanned.push(ScannedOutput {
                step: step.id().to_string(),
                domain_xml: step.domain_xml_preview(),
            });
            push(&mut steps, step);
        }
        // What the recipe forbids, and the production secrets it handles, which are forbidden
        // in the VM whether the recipe says so or not.
        let mut forbidden = Vec::new();
        if let Some(named) = &recipe.sanitize {
            let (listed, problems) = forbid::collect(named, &recipe.dir);
            for problem in problems {
                diagnostics.push(problem);
            }
            forbidden = listed;
        }
        forbid::merge(&mut forbidden, forbid::production_secrets(recipe));
        if !forbidden.is_empty() {
            let span = recipe
                .sanitize
                .as_ref()
                .map(|s| s.header())
                .or_else(|| recipe.databases.first().map(|d| d.header()))
                .unwrap_or_else(|| template.header());
            push(
                &mut steps,
                ScanStep::new(&disk_id, scanned, forbidden, span),
            );
        }
        if let Some(qa) = &recipe.qa {
            for (i, format) in qa.block.formats.iter().enumerate() {
                if !outputs.iter().any(|(name, _, _)| name == format) {
                    let span = qa.spans.item("formats", i).unwrap_or(qa.header());
                    diagnostics.push(
                        Diagnostic::error(format!(
                            "QA boots `{format}`, but the recipe has no `output \"{format}\"`"
                        ))
                        .at(&span, "not an output of this recipe"),
                    );
                }
            }
            if outputs.is_empty() {
                diagnostics.push(
                    Diagnostic::error("QA boots the recipe's outputs, and it has none")
                        .at(&qa.header(), "add an `output \"qcow2\" {}` block"),
                );
            }
            for (format, output_id, file) in &outputs {
                if qa.block.formats.is_empty() || qa.block.formats.contains(format) {
                    push(&mut steps, QaStep::new(qa, format, output_id, file));
                }
            }
        }
    }
    if recipe.templates.is_empty() {
        for output in &recipe.outputs {
            diagnostics.push(
                Diagnostic::error("an output needs a VM: the recipe has no template")
                    .at(&output.header(), "nothing to convert"),
            );
        }
    }
    if recipe.templates.is_empty() {
        // No VM: each source and file tree is a plain output, made on this machine.
        for source in &recipe.git_sources {
            push(&mut steps, SourceStep::new(source, None));
        }
        for files in &recipe.files {
            push(&mut steps, FilesStep::new(files));
        }
        for named in recipe.steps.iter().filter(|s| s.block.into.is_some()) {
            let span = named
                .spans
                .value(&[Seg::Key("into".into())])
                .unwrap_or(named.header());
            diagnostics.push(
                Diagnostic::error(format!(
                    "`step.{}` puts its output into the VM, but the recipe has no template",
                    named.name
                ))
                .at(&span, "a layer of the VM")
                .help("add a `template` block, or remove `into`"),
            );
        }
    }
    if let (true, Some(named)) = (recipe.templates.is_empty(), &recipe.sanitize) {
        diagnostics.push(
            Diagnostic::error(
                "`sanitize` scrubs and searches a VM, and the recipe has no template",
            )
            .at(&named.header(), "nothing to sanitize")
            .help("add a `template` block"),
        );
    }
    if let (true, Some(named)) = (recipe.templates.is_empty(), &recipe.forbid_software) {
        diagnostics.push(
            Diagnostic::error(
                "`forbid_software` checks a VM's packages and files, and the recipe has no template",
            )
            .at(&named.header(), "no VM to check")
            .help("add a `template` block"),
        );
    }
    if recipe.templates.is_empty() {
        for config in &recipe.configs {
            diagnostics.push(
                Diagnostic::error(
                    "a config file is written into the VM, and the recipe has no template",
                )
                .at(&config.header(), "no VM to write it into")
                .help("add a `template` block"),
            );
        }
        for database in &recipe.databases {
            diagnostics.push(
                Diagnostic::error(
                    "a database is loaded into the VM, and the recipe has no template",
                )
                .at(&database.header(), "no PostgreSQL to load it into")
                .help("add a `template` whose packages include `postgresql`"),
            );
        }
    }
    for instance in &recipe.modules {
        match compile(&instance.recipe) {
            Ok(compiled) => {
                let prefix = format!("module.{}.", instance.name);
                for (step, secrets) in compiled {
                    let wrapped = InModule::new(step, &prefix, &instance.recipe.dir);
                    steps.push((Arc::new(wrapped), secrets));
                }
            }
            Err(inner) => diagnostics.items.extend(inner.items),
        }
    }
    if diagnostics.has_errors() {
        return Err(diagnostics);
    }
    Ok(steps)
}

/// The recipe's variables that config templates may use: the non-sensitive ones, as text.
fn plain_variables(recipe: &Recipe) -> std::collections::BTreeMap<String, String> {
    recipe
        .variables
        .iter()
        .filter(|(_, v)| !v.sensitive)
        .map(|(name, v)| {
            let text = match &v.value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name.clone(), text)
        })
        .collect()
}

/// What config templates may know of each database block: its name and role in the VM.
fn database_facts(recipe: &Recipe) -> std::collections::BTreeMap<String, DatabaseFacts> {
    recipe
        .databases
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                DatabaseFacts {
                    into: d.block.into.clone(),
                    role: d.block.role.clone().unwrap_or_else(|| d.block.into.clone()),
                },
            )
        })
        .collect()
}

/// The dump steps of the recipe's databases (pushed onto `steps`) and the one load step that
/// puts them all into the PostgreSQL of the template's tree `tree`; `None` without databases.
fn databases(
    recipe: &Recipe,
    tree: &str,
    steps: &mut Vec<Compiled>,
    diagnostics: &mut Diagnostics,
) -> Option<LoadStep> {
    if recipe.databases.is_empty() {
        return None;
    }
    let mut planned = Vec::new();
    let mut names: Vec<(&str, Span)> = Vec::new();
    for named in &recipe.databases {
        let block = &named.block;
        let span = |key: &str| {
            named
                .spans
                .value(&[Seg::Key(key.into())])
                .unwrap_or(named.header())
        };
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == block.into) {
            diagnostics.push(
                Diagnostic::error(format!("two databases are both loaded as `{}`", block.into))
                    .at(&span("into"), "the second")
                    .also(first, "the first"),
            );
            continue;
        }
        names.push((&block.into, span("into")));
        if named.name == "load" {
            diagnostics.push(
                Diagnostic::error("`load` is the name of the step that loads every database")
                    .at(&named.header(), "choose another name"),
            );
            continue;
        }
        let origin = match database_origin(named, diagnostics) {
            Some(Made::Cloned(source)) => {
                if block.engine == DatabaseEngine::Postgres && block.datapump_directory.is_some() {
                    diagnostics.push(
                        Diagnostic::error("`datapump_directory` is for Oracle sources")
                            .at(&span("datapump_directory"), "Data Pump is Oracle's")
                            .also(&span("engine"), "a PostgreSQL source"),
                    );
                    continue;
                }
                if block.engine == DatabaseEngine::Oracle && !cfg!(feature = "oracle") {
                    diagnostics.push(
                        Diagnostic::error("this vmbuild was built without Oracle support")
                            .at(&span("engine"), "an Oracle source")
                            .help("build vmbuild with `cargo build --release --features oracle`"),
                    );
                    continue;
                }
                // `pg_dump` or `oracle_dump`, by the block's engine.
                let step = DumpStep::new(named, source);
                let id = step.id().to_string();
                push(steps, step);
                Origin::Dump { step: id }
            }
            Some(Made::Init(scripts)) => Origin::Init { scripts },
            None => continue,
        };
        planned.push(PlannedDatabase {
            block: named.name.clone(),
            into: block.into.clone(),
            role: block.role.clone().unwrap_or_else(|| block.into.clone()),
            password: block.password.clone(),
            origin,
        });
    }
    (!planned.is_empty()).then(|| LoadStep::new(tree, planned))
}

/// How a database's content is made.
enum Made<'a> {
    /// Cloned from this source.
    Cloned(&'a crate::recipe::Secret),
    /// Created by these scripts (relative to the recipe folder, with their spans).
    Init(Vec<(String, Span)>),
}

/// Whether a database is cloned from a source or made from `init` scripts; the attributes
/// that only make sense for one of them are errors on the other.
fn database_origin<'a>(
    named: &'a Named<DatabaseBlock>,
    diagnostics: &mut Diagnostics,
) -> Option<Made<'a>> {
    let block = &named.block;
    let span = |key: &str| {
        named
            .spans
            .value(&[Seg::Key(key.into())])
            .unwrap_or(named.header())
    };
    match (&block.source, block.init.is_empty()) {
        (Some(source), true) => {
            if block.schemas.is_none() {
                diagnostics.push(
                    Diagnostic::error("a cloned database needs a schema allowlist")
                        .at(&named.header(), "no `schemas`")
                        .help("`schemas = [\"apidb\", \"core\"]` or `schemas = databaseinfo(\"core.databaseinfo\")`"),
                );
                return None;
            }
            Some(Made::Cloned(source))
        }
        (None, false) => {
            let clone_only = [
                ("schemas", block.schemas.is_some()),
                ("exclude_schemas", !block.exclude_schemas.is_empty()),
                ("exclude_table_data", !block.exclude_table_data.is_empty()),
                ("lock", block.lock.is_some()),
                ("fingerprint", block.fingerprint.is_some()),
                ("datapump_directory", block.datapump_directory.is_some()),
            ];
            let mut ok = true;
            for (key, set) in clone_only {
                if set {
                    diagnostics.push(
                        Diagnostic::error(format!(
                            "`{key}` is for a database cloned from a `source`, and this one is made by `init`"
                        ))
                        .at(&span(key), "remove this"),
                    );
                    ok = false;
                }
            }
            ok.then(|| {
                Made::Init(
                    block
                        .init
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            (
                                s.clone(),
                                named.spans.item("init", i).unwrap_or(named.header()),
                            )
                        })
                        .collect(),
                )
            })
        }
        (Some(_), false) => {
            diagnostics.push(
                Diagnostic::error(
                    "a database is either cloned from a `source` or made by `init`, not both",
                )
                .at(&span("init"), "init scripts")
                .also(&span("source"), "a source"),
            );
            None
        }
        (None, true) => {
            diagnostics.push(
                Diagnostic::error("a database needs a `source` to clone, or `init` scripts")
                    .at(&named.header(), "where does its content come from?"),
            );
            None
        }
    }
}

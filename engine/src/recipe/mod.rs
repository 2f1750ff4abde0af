//! The recipe language: parse HCL or TOML, evaluate variables, locals, data blocks and
//! functions, and decode every block into the typed model, reporting all problems together as
//! [`Diagnostics`].
//!
//! Nothing here touches the store or runs anything a recipe names. The one thing read from
//! outside, besides `file()` and `env()`, is what `data "http"` blocks fetch: read-only GETs,
//! made only when [`LoadOptions::fetch_data`] says so.

mod data;
mod decode;
mod eval;
pub mod fmt;
pub mod model;
mod syntax;
pub mod template;
mod value;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use data::{
    secrets as data_secrets, shown_url, Fetched, DATA_TYPES, DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT,
    HTTP_FIELDS,
};
pub use decode::{Seg, SpanIndex};
pub use eval::EnvLookup;
pub use model::*;
pub use value::{Secret, Text};

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Sources, Span};
use eval::Scope;
use syntax::{Block, Body};
use value::{SValue, Value};

/// How to load a recipe: variable overrides and where the environment comes from.
#[derive(Clone)]
pub struct LoadOptions {
    /// `-var name=value`, in order; later ones win.
    pub vars: Vec<(String, String)>,
    /// Reads environment variables (for `env()` and `VMBUILD_VAR_*`).
    pub env: Arc<EnvLookup>,
    /// Fetch `data` blocks (plan, apply). Without, their values are unknown, and only what does
    /// not depend on them is checked (`vmbuild validate`).
    pub fetch_data: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            vars: Vec::new(),
            env: Arc::new(|name| std::env::var(name).ok()),
            fetch_data: true,
        }
    }
}

/// A block of the recipe, decoded, with its name and where it was written.
#[derive(Debug, Clone)]
pub struct Named<T> {
    pub name: String,
    pub block: T,
    pub spans: SpanIndex,
}

impl<T> Named<T> {
    pub fn header(&self) -> Span {
        self.spans.header.clone().unwrap_or(Span::new(0, 0..0))
    }
}

/// A variable's final value, for plans and saved plan files.
#[derive(Debug, Clone)]
pub struct VariableValue {
    pub value: serde_json::Value,
    pub sensitive: bool,
}

/// A loaded, evaluated and validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe's path as given (a file or a folder).
    pub path: PathBuf,
    /// The folder that relative paths in the recipe are resolved against.
    pub dir: PathBuf,
    pub sources: Sources,
    pub variables: BTreeMap<String, VariableValue>,
    /// The `data "http"` blocks, in recipe order.
    pub data: Vec<Named<DataHttpBlock>>,
    /// What they fetched, in recipe order (empty when loaded without fetching).
    pub fetched: Vec<Fetched>,
    pub steps: Vec<Named<StepBlock>>,
    pub templates: Vec<Named<TemplateBlock>>,
    pub databases: Vec<Named<DatabaseBlock>>,
    pub git_sources: Vec<Named<SourceBlock>>,
    pub files: Vec<Named<FilesBlock>>,
    pub configs: Vec<Named<ConfigBlock>>,
    pub sanitize: Option<Named<SanitizeBlock>>,
    pub forbid_software: Option<Named<ForbidSoftwareBlock>>,
    pub outputs: Vec<Named<OutputBlock>>,
    pub qa: Option<Named<QaBlock>>,
    /// Files read by `file()`, relative to `dir`, with the digests of their contents.
    pub files_read: BTreeMap<PathBuf, crate::hash::Digest>,
    /// The template of each `config` block (by block name), read and checked at load.
    pub config_templates: BTreeMap<String, ConfigTemplate>,
    /// The `module` blocks' instances, each a recipe of its own (one per `for_each` key).
    pub modules: Vec<ModuleInstance>,
}

/// One instance of a `module` block: the module's folder loaded as a recipe, its variables set
/// by the block's other attributes.
#[derive(Debug, Clone)]
pub struct ModuleInstance {
    /// `toxodb` for `module "toxodb"`; `site.toxodb` for the key `toxodb` of `module "site"`'s
    /// `for_each`. Its steps' ids start with `module.NAME.`.
    pub name: String,
    /// The `module` block's header.
    pub header: Span,
    pub recipe: Recipe,
}

/// A `config` block's template file: its text (one of the recipe's [`Sources`], so diagnostics
/// can point into it) and what it parses to.
#[derive(Debug, Clone)]
pub struct ConfigTemplate {
    /// The index of the file in [`Recipe::sources`].
    pub file: usize,
    pub text: std::sync::Arc<str>,
    pub template: template::Template,
}

/// Every top-level block kind and how many labels it takes.
pub const BLOCK_KINDS: &[(&str, usize)] = &[
    ("variable", 1),
    ("locals", 0),
    ("data", 2),
    ("step", 1),
    ("template", 1),
    ("database", 1),
    ("source", 1),
    ("files", 1),
    ("config", 1),
    ("sanitize", 0),
    ("forbid_software", 0),
    ("output", 1),
    ("qa", 0),
    ("module", 1),
];

/// How deep modules may nest.
const MODULE_DEPTH: usize = 8;

impl Recipe {
    /// Load a recipe from a file (`.hcl` or `.toml`) or a folder of `.hcl`/`.toml` files.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Recipe, Diagnostics> {
        let mut diagnostics = Diagnostics::default();
        let (dir, files) = match recipe_files(path) {
            Ok(found) => found,
            Err(d) => {
                diagnostics.push(d);
                return Err(diagnostics);
            }
        };
        let body = parse_files(&files, &mut diagnostics.sources, &mut diagnostics.items);
        if diagnostics.has_errors() {
            return Err(diagnostics);
        }
        let sources = diagnostics.sources.clone();
        let mut items = Vec::new();
        let recipe = evaluate(
            path,
            &dir,
            &sources,
            body,
            options,
            &Inputs::default(),
            &mut items,
        );
        diagnostics.items.extend(items);
        if let Some(recipe) = &recipe {
            // With the config templates read meanwhile, which diagnostics may point into.
            diagnostics.sources = recipe.sources.clone();
        }
        match recipe {
            Some(recipe) if !diagnostics.has_errors() => Ok(recipe),
            _ => Err(diagnostics),
        }
    }

    /// How many blocks the recipe and its module instances hold (variables and locals aside).
    pub fn block_count(&self) -> usize {
        self.block_ids().len()
            + self.sanitize.is_some() as usize
            + self.forbid_software.is_some() as usize
            + self.data.len()
            + self.qa.is_some() as usize
            + self.modules.len()
            + self
                .modules
                .iter()
                .map(|m| m.recipe.block_count())
                .sum::<usize>()
    }

    /// What the recipe's data blocks fetched, its modules' included (under
    /// `module.NAME.data.http.X`), in recipe order.
    pub fn all_fetched(&self) -> Vec<Fetched> {
        let mut all = self.fetched.clone();
        for module in &self.modules {
            all.extend(module.recipe.all_fetched().into_iter().map(|f| Fetched {
                id: format!("module.{}.{}", module.name, f.id),
                ..f
            }));
        }
        all
    }

    /// Every block id the recipe defines (`step.a`, `template.base`, `output.qcow2`, ...).
    pub fn block_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        ids.extend(self.steps.iter().map(|s| format!("step.{}", s.name)));
        ids.extend(
            self.templates
                .iter()
                .map(|s| format!("template.{}", s.name)),
        );
        ids.extend(
            self.databases
                .iter()
                .map(|s| format!("database.{}", s.name)),
        );
        ids.extend(
            self.git_sources
                .iter()
                .map(|s| format!("source.{}", s.name)),
        );
        ids.extend(self.files.iter().map(|s| format!("files.{}", s.name)));
        ids.extend(self.configs.iter().map(|s| format!("config.{}", s.name)));
        ids.extend(self.outputs.iter().map(|s| format!("output.{}", s.name)));
        ids
    }
}

/// Parse recipe files into one body, adding each to `sources`.
fn parse_files(
    files: &[PathBuf],
    sources: &mut Sources,
    diagnostics: &mut Vec<Diagnostic>,
) -> Body {
    let mut body = Body::default();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                diagnostics.push(Diagnostic::error(format!(
                    "cannot read `{}`: {e}",
                    file.display()
                )));
                continue;
            }
        };
        let is_toml = file.extension().is_some_and(|e| e == "toml");
        let id = sources.add(file.clone(), text);
        let text = sources.get(id).text.clone();
        let parsed = if is_toml {
            syntax::parse_toml(id, &text)
        } else {
            syntax::parse_hcl(id, &text)
        };
        match parsed {
            Ok(b) => {
                body.attrs.extend(b.attrs);
                body.blocks.extend(b.blocks);
            }
            Err(d) => diagnostics.push(d),
        }
    }
    body
}

/// What a module's variables are set to by its `module` block, and the folders of the modules
/// being loaded (to refuse a module that includes itself).
#[derive(Default)]
struct Inputs {
    /// `None` for the top recipe: its variables come from `-v` and `VMBUILD_VAR_*`.
    values: Option<BTreeMap<String, SValue>>,
    stack: Vec<PathBuf>,
}

/// The folder of a recipe and its files, sorted.
fn recipe_files(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), Diagnostic> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Diagnostic::error(format!("cannot read the recipe `{}`: {e}", path.display()))
    })?;
    if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Diagnostic::error(format!("cannot list `{}`: {e}", path.display())))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "hcl" || e == "toml") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Diagnostic::error(format!(
                "the folder `{}` holds no `.hcl` or `.toml` recipe file",
                path.display()
            )));
        }
        Ok((path.to_path_buf(), files))
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok((dir, vec![path.to_path_buf()]))
    }
}

fn evaluate(
    path: &Path,
    dir: &Path,
    sources: &Sources,
    body: Body,
    options: &LoadOptions,
    inputs: &Inputs,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Recipe> {
    let env = options.env.clone();
    let mut scope = Scope::new(sources, dir, &*env);
    scope.fetch_data = options.fetch_data;
    for attr in &body.attrs {
        diagnostics.push(
            Diagnostic::error(format!("`{}` cannot stand at the top level", attr.name))
                .at(&attr.name_span, "attributes belong inside a block")
                .help("top-level attributes go in a `locals { ... }` block"),
        );
    }
    // Check block kinds and label counts first.
    let mut blocks: Vec<&Block> = Vec::new();
    for block in &body.blocks {
        let Some((_, labels)) = BLOCK_KINDS.iter().find(|(k, _)| *k == block.kind) else {
            diagnostics.push(
                Diagnostic::error(format!("unknown block `{}`", block.kind))
                    .at(&block.kind_span, "not a block vmbuild knows")
                    .detail(format!(
                        "blocks: {}",
                        BLOCK_KINDS
                            .iter()
                            .map(|(k, _)| *k)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .help_opt(did_you_mean(
                        &block.kind,
                        BLOCK_KINDS.iter().map(|(k, _)| *k),
                    )),
            );
            continue;
        };
        if block.labels.len() != *labels {
            let span = block
                .labels
                .first()
                .map(|l| l.1.clone())
                .unwrap_or(block.kind_span.clone());
            let expected = if *labels == 0 {
                format!(
                    "`{}` takes no label: `{} {{ ... }}`",
                    block.kind, block.kind
                )
            } else if *labels == 2 {
                format!(
                    "`{}` takes a type and a name: `{} \"http\" \"NAME\" {{ ... }}`",
                    block.kind, block.kind
                )
            } else {
                format!(
                    "`{}` takes a name: `{} \"NAME\" {{ ... }}`",
                    block.kind, block.kind
                )
            };
            diagnostics.push(
                Diagnostic::error(format!("wrong number of labels on `{}`", block.kind))
                    .at(&span, expected),
            );
            continue;
        }
        blocks.push(block);
    }
    let mut variables = BTreeMap::new();
    declare_variables(
        &mut scope,
        &blocks,
        options,
        inputs,
        &mut variables,
        diagnostics,
    );
    for block in blocks.iter().filter(|b| b.kind == "locals") {
        if let Some(nested) = block.body.blocks.first() {
            diagnostics.push(
                Diagnostic::error("`locals` holds only attributes")
                    .at(&nested.kind_span, "a block is not allowed here"),
            );
        }
        for attr in &block.body.attrs {
            if let Err(d) = scope.declare_local(attr.clone()) {
                diagnostics.push(d);
            }
        }
    }
    let data_order = declare_data(&mut scope, &blocks, diagnostics);

    let mut recipe = Recipe {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        sources: sources.clone(),
        variables,
        data: vec![],
        fetched: vec![],
        steps: vec![],
        templates: vec![],
        databases: vec![],
        git_sources: vec![],
        files: vec![],
        configs: vec![],
        sanitize: None,
        forbid_software: None,
        outputs: vec![],
        qa: None,
        files_read: BTreeMap::new(),
        config_templates: BTreeMap::new(),
        modules: vec![],
    };
    let mut seen_names: HashMap<(String, String), Span> = HashMap::new();
    for block in &blocks {
        let kind = block.kind.as_str();
        if kind == "variable" || kind == "locals" || kind == "data" {
            continue;
        }
        let name = block
            .labels
            .first()
            .map(|l| l.0.clone())
            .unwrap_or_default();
        if let Some(first) = seen_names.get(&(kind.to_string(), name.clone())) {
            let what = if name.is_empty() {
                format!("`{kind}`")
            } else {
                format!("`{kind} \"{name}\"`")
            };
            diagnostics.push(
                Diagnostic::error(format!("{what} is defined twice"))
                    .at(&block.header_span(), "defined again here")
                    .also(first, "first defined here"),
            );
            continue;
        }
        seen_names.insert((kind.to_string(), name.clone()), block.header_span());
        if !name.is_empty() && !valid_name(&name) {
            diagnostics.push(
                Diagnostic::error(format!("`{name}` is not a valid {kind} name")).at(
                    &block.labels[0].1,
                    "use letters, digits, `_` and `-`, starting with a letter",
                ),
            );
            continue;
        }
        let what = if name.is_empty() {
            kind.to_string()
        } else {
            format!("{kind} \"{name}\"")
        };
        macro_rules! decode_into {
            ($list:expr) => {
                if let Some((block_value, spans)) =
                    decode::decode_block(&mut scope, block, &what, diagnostics)
                {
                    $list.push(Named {
                        name: name.clone(),
                        block: block_value,
                        spans,
                    });
                }
            };
        }
        match kind {
            "step" => decode_into!(recipe.steps),
            "template" => decode_into!(recipe.templates),
            "database" => decode_into!(recipe.databases),
            "source" => decode_into!(recipe.git_sources),
            "files" => decode_into!(recipe.files),
            "config" => decode_into!(recipe.configs),
            "output" => {
                if !OUTPUT_FORMATS.contains(&name.as_str()) {
                    diagnostics.push(
                        Diagnostic::error(format!("`{name}` is not an output format"))
                            .at(&block.labels[0].1, "unknown format")
                            .detail(format!("formats: {}", OUTPUT_FORMATS.join(", ")))
                            .help_opt(did_you_mean(&name, OUTPUT_FORMATS.iter().copied())),
                    );
                    continue;
                }
                decode_into!(recipe.outputs)
            }
            "sanitize" => {
                let mut one = Vec::new();
                decode_into!(one);
                recipe.sanitize = one.pop();
            }
            "forbid_software" => {
                let mut one = Vec::new();
                decode_into!(one);
                recipe.forbid_software = one.pop();
            }
            "qa" => {
                let mut one = Vec::new();
                decode_into!(one);
                recipe.qa = one.pop();
            }
            "module" => instantiate(
                &mut scope,
                block,
                &name,
                &mut recipe,
                options,
                inputs,
                diagnostics,
            ),
            _ => unreachable!("kinds were checked above"),
        }
    }
    // References are checked against every block written, decoded or not, so that one broken
    // block does not make every reference to it an error too.
    let declared: Vec<String> = blocks
        .iter()
        .filter(|b| eval::REFERENCEABLE.contains(&b.kind.as_str()))
        .map(|b| format!("{}.{}", b.kind, b.labels[0].0))
        .collect();
    validate(&recipe, &declared, diagnostics);
    check_configs(&mut recipe, &declared, diagnostics);
    // Data blocks nothing referenced are fetched too: plan shows them, and their problems.
    for (kind, name, header) in &data_order {
        if let Err(d) = scope.data(kind, name, header) {
            diagnostics.push(d);
        }
    }
    for (kind, name, _) in &data_order {
        let id = format!("data.{kind}.{name}");
        recipe.data.extend(scope.data_blocks.remove(&id));
        recipe.fetched.extend(scope.fetched.remove(&id));
    }
    diagnostics.append(&mut scope.diagnostics);
    // What was found in unknown values (placeholders of data blocks not fetched) is no problem.
    diagnostics.retain(|d| {
        d.subject
            .as_ref()
            .is_none_or(|(span, _)| !scope.is_unknown(span))
    });
    recipe.files_read = std::mem::take(&mut scope.files_read);
    Some(recipe)
}

/// The instances of a `module "NAME"` block: its `source` folder loaded once per `for_each` key
/// (once without `for_each`), its other attributes setting the module's variables.
fn instantiate(
    scope: &mut Scope<'_>,
    block: &Block,
    name: &str,
    recipe: &mut Recipe,
    options: &LoadOptions,
    inputs: &Inputs,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if let Some(nested) = block.body.blocks.first() {
        diagnostics.push(
            Diagnostic::error("a `module` block holds only attributes")
                .at(&nested.kind_span, "a block is not allowed here")
                .help("the module's blocks are in its `source` folder"),
        );
        return;
    }
    let attr = |key: &str| block.body.attrs.iter().find(|a| a.name == key);
    let Some(source_attr) = attr("source") else {
        diagnostics.push(
            Diagnostic::error(format!("`module \"{name}\"` needs a `source`"))
                .at(&block.header_span(), "where is the module?")
                .help("`source = \"../recipes/eupath-site\"`: a folder of .hcl files, relative to this recipe"),
        );
        return;
    };
    let source = match scope.eval(&source_attr.expr, &source_attr.span) {
        Ok(SValue {
            value: Value::String(text),
            ..
        }) => text,
        Ok(other) => {
            diagnostics.push(
                Diagnostic::error(format!(
                    "`source` is a folder's path, not a {}",
                    other.value.type_name()
                ))
                .at(&source_attr.span, "a path, such as \"../recipes/site\""),
            );
            return;
        }
        Err(d) => {
            diagnostics.push(d);
            return;
        }
    };
    let folder = in_dir(&recipe.dir, &source);
    let canonical = std::fs::canonicalize(&folder).unwrap_or_else(|_| folder.clone());
    if inputs.stack.contains(&canonical) || inputs.stack.len() >= MODULE_DEPTH {
        diagnostics.push(
            Diagnostic::error(format!("the module `{source}` includes itself"))
                .at(&source_attr.span, "a module that is already being loaded"),
        );
        return;
    }
    if !folder.is_dir() {
        diagnostics.push(
            Diagnostic::error(format!("the module `{source}` is not a folder"))
                .at(&source_attr.span, "a folder of .hcl files")
                .help("module sources are relative to the recipe's folder"),
        );
        return;
    }
    // The instances: (name, each.key and each.value).
    let mut instances: Vec<(String, Option<(SValue, SValue)>)> = Vec::new();
    match attr("for_each") {
        None => instances.push((name.to_string(), None)),
        Some(for_each) => {
            let value = match scope.eval(&for_each.expr, &for_each.span) {
                Ok(v) => v,
                Err(d) => {
                    diagnostics.push(d);
                    return;
                }
            };
            let pairs: Vec<(String, SValue)> = match &value.value {
                Value::List(items) => items
                    .iter()
                    .map(|i| (i.value.as_interpolated().unwrap_or_default(), i.clone()))
                    .collect(),
                Value::Object(items) => items.clone(),
                other => {
                    diagnostics.push(
                        Diagnostic::error(format!(
                            "`for_each` takes a list of names or an object, not a {}",
                            other.type_name()
                        ))
                        .at(&for_each.span, "one instance per item"),
                    );
                    return;
                }
            };
            for (key, item) in pairs {
                if !valid_instance_name(&key) {
                    diagnostics.push(
                        Diagnostic::error(format!("`{key}` cannot name a module instance"))
                            .at(
                                &item.span,
                                "use letters, digits, `_`, `-` and `.`, starting with a letter or digit",
                            )
                            .help(
                                "to give each instance another value, use an object: \
                                 `for_each = { toxodb = \"w1.toxodb.org\" }` names the \
                                 instance `toxodb` and sets `each.value`",
                            ),
                    );
                    continue;
                }
                let key_value = SValue {
                    value: Value::String(key.clone()),
                    span: item.span.clone(),
                };
                instances.push((format!("{name}.{key}"), Some((key_value, item))));
            }
        }
    }
    let files = match recipe_files(&folder) {
        Ok((_, files)) => files,
        Err(d) => {
            diagnostics.push(d.at(&source_attr.span, "this module"));
            return;
        }
    };
    let mut stack = inputs.stack.clone();
    stack.push(canonical);
    // The module's files are read and parsed once; every instance evaluates the same text, so
    // a problem in it is the same in every instance, and reported once.
    let body = parse_files(&files, &mut recipe.sources, diagnostics);
    let mut reported: HashSet<(String, Option<Span>)> = HashSet::new();
    for (instance, each) in instances {
        scope.each = each;
        let mut values = BTreeMap::new();
        let mut failed = false;
        for a in &block.body.attrs {
            if a.name == "source" || a.name == "for_each" {
                continue;
            }
            match scope.eval(&a.expr, &a.span) {
                Ok(v) => {
                    values.insert(a.name.clone(), v);
                }
                Err(d) => {
                    diagnostics.push(d);
                    failed = true;
                }
            }
        }
        scope.each = None;
        if failed {
            continue;
        }
        let mut found = Vec::new();
        let sources = recipe.sources.clone();
        let module_inputs = Inputs {
            values: Some(values),
            stack: stack.clone(),
        };
        let child_options = LoadOptions {
            vars: Vec::new(),
            env: options.env.clone(),
            fetch_data: options.fetch_data,
        };
        if let Some(child) = evaluate(
            &folder,
            &folder,
            &sources,
            body.clone(),
            &child_options,
            &module_inputs,
            &mut found,
        ) {
            recipe.sources = child.sources.clone();
            recipe.modules.push(ModuleInstance {
                name: instance,
                header: block.header_span(),
                recipe: child,
            });
        }
        for d in found {
            let subject = d.subject.as_ref().map(|(span, _)| span.clone());
            if reported.insert((d.summary.clone(), subject)) {
                diagnostics.push(d);
            }
        }
    }
}

/// Check each `data "TYPE" "NAME"` block's type and name and declare it in the scope (it is
/// evaluated when first used). The declared blocks, in recipe order.
fn declare_data(
    scope: &mut Scope<'_>,
    blocks: &[&Block],
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(String, String, Span)> {
    let mut declared: Vec<(String, String, Span)> = Vec::new();
    for block in blocks.iter().filter(|b| b.kind == "data") {
        let (kind, kind_span) = &block.labels[0];
        let (name, name_span) = &block.labels[1];
        if !DATA_TYPES.contains(&kind.as_str()) {
            diagnostics.push(
                Diagnostic::error(format!("`{kind}` is not a data type"))
                    .at(kind_span, "unknown data type")
                    .detail(format!("data types: {}", DATA_TYPES.join(", ")))
                    .help_opt(did_you_mean(kind, DATA_TYPES.iter().copied())),
            );
            continue;
        }
        if !valid_name(name) {
            diagnostics.push(
                Diagnostic::error(format!("`{name}` is not a valid data block name")).at(
                    name_span,
                    "use letters, digits, `_` and `-`, starting with a letter",
                ),
            );
            continue;
        }
        if let Some((_, _, first)) = declared.iter().find(|(k, n, _)| k == kind && n == name) {
            diagnostics.push(
                Diagnostic::error(format!("`data \"{kind}\" \"{name}\"` is defined twice"))
                    .at(&block.header_span(), "defined again here")
                    .also(first, "first defined here"),
            );
            continue;
        }
        declared.push((kind.clone(), name.clone(), block.header_span()));
        scope.declare_data((*block).clone());
    }
    declared
}

/// Names of blocks: used in step ids and environment variable names.
/// A module instance's name, from `for_each`: a name, or a host name (`w1.toxodb.org`), which
/// is also the name of its folder of artifacts.
fn valid_instance_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn declare_variables(
    scope: &mut Scope<'_>,
    blocks: &[&Block],
    options: &LoadOptions,
    inputs: &Inputs,
    variables: &mut BTreeMap<String, VariableValue>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut declared: HashMap<String, Span> = HashMap::new();
    for block in blocks.iter().filter(|b| b.kind == "variable") {
        let (name, label_span) = block.labels[0].clone();
        if let Some(first) = declared.get(&name) {
            diagnostics.push(
                Diagnostic::error(format!("variable `{name}` is declared twice"))
                    .at(&label_span, "declared again here")
                    .also(first, "first declared here"),
            );
            continue;
        }
        declared.insert(name.clone(), label_span.clone());
        let what = format!("variable \"{name}\"");
        // A variable's default may not refer to other variables or locals.
        let Some((decl, _)) =
            decode::decode_block::<VariableBlock>(scope, block, &what, diagnostics)
        else {
            continue;
        };
        let default_span = block
            .body
            .attrs
            .iter()
            .find(|a| a.name == "default")
            .map(|a| a.span.clone())
            .unwrap_or(label_span.clone());
        if let Some(values) = &inputs.values {
            // A module's variable: set by its `module` block, or its default.
            let value = match (values.get(&name), &decl.default) {
                (Some(given), _) => given.clone(),
                (None, Some(default)) => json_to_value(default, &default_span),
                (None, None) => {
                    diagnostics.push(
                        Diagnostic::error(format!("the module's variable `{name}` has no value"))
                            .at(&label_span, "declared without a default")
                            .help(format!("set it in the `module` block: `{name} = ...`")),
                    );
                    placeholder(scope, &name, &label_span);
                    continue;
                }
            };
            let mut value = value;
            if decl.sensitive {
                if let Some(text) = value.value.as_interpolated() {
                    value.value = Value::Secret(Secret::new(format!("var.{name}"), text));
                }
            }
            let sensitive = decl.sensitive || !value.value.secret_parts().is_empty();
            variables.insert(
                name.clone(),
                VariableValue {
                    value: if sensitive {
                        serde_json::Value::Null
                    } else {
                        value.value.to_json()
                    },
                    sensitive,
                },
            );
            scope.vars.insert(name, value);
            continue;
        }
        let env_name = format!("VMBUILD_VAR_{name}");
        let given = options
            .vars
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| (options.env)(&env_name));
        let value = match (given, &decl.default) {
            (Some(text), default) => {
                let wants_string = matches!(decl.type_name, Some(VariableType::String))
                    || matches!(default, Some(serde_json::Value::String(_)) | None)
                        && decl.type_name.is_none();
                if wants_string {
                    serde_json::Value::String(text)
                } else {
                    match parse_override(&text) {
                        Some(v) => v,
                        None => {
                            diagnostics.push(
                                Diagnostic::error(format!(
                                    "the value given for variable `{name}` is not a valid {}",
                                    decl.type_name
                                        .map(|t| format!("{t:?}").to_lowercase())
                                        .unwrap_or("value".into())
                                ))
                                .at(&label_span, "declared here"),
                            );
                            continue;
                        }
                    }
                }
            }
            (None, Some(default)) => default.clone(),
            (None, None) => {
                diagnostics.push(
                    Diagnostic::error(format!("variable `{name}` has no value"))
                        .at(&label_span, "declared without a default")
                        .help(format!("set it with `-var {name}=...` or `{env_name}=...`")),
                );
                placeholder(scope, &name, &label_span);
                continue;
            }
        };
        let mut v = json_to_value(&value, &default_span);
        if decl.sensitive {
            if let Some(text) = v.value.as_interpolated() {
                v.value = Value::Secret(Secret::new(format!("var.{name}"), text));
            }
        }
        variables.insert(
            name.clone(),
            VariableValue {
                value,
                sensitive: decl.sensitive,
            },
        );
        scope.vars.insert(name, v);
    }
    if let Some(values) = &inputs.values {
        for (name, value) in values {
            if !declared.contains_key(name) {
                diagnostics.push(
                    Diagnostic::error(format!("the module declares no variable `{name}`"))
                        .at(&value.span, "set here")
                        .help_opt(did_you_mean(name, declared.keys().map(String::as_str))),
                );
            }
        }
        return;
    }
    for (name, _) in &options.vars {
        if !declared.contains_key(name) {
            diagnostics.push(
                Diagnostic::error(format!(
                    "`-var {name}=...` sets a variable the recipe does not declare"
                ))
                .help_opt(did_you_mean(name, declared.keys().map(String::as_str))),
            );
        }
    }
}

/// A variable that has no value (already an error) as an empty string, so that each use of it
/// is not one more error.
fn placeholder(scope: &mut Scope<'_>, name: &str, span: &Span) {
    scope.vars.insert(
        name.to_string(),
        SValue {
            value: Value::String(String::new()),
            span: span.clone(),
        },
    );
}

/// `relative` in `dir`, without a leading `./` when `dir` is the current folder (paths as
/// people wrote them, in messages).
fn in_dir(dir: &Path, relative: &str) -> PathBuf {
    if dir == Path::new(".") {
        PathBuf::from(relative)
    } else {
        dir.join(relative)
    }
}

/// A `-var` value for a non-string variable: an HCL literal (number, bool, list, object).
fn parse_override(text: &str) -> Option<serde_json::Value> {
    let expr: hcl::Expression = text.parse().ok()?;
    let value: hcl::Value = hcl::from_str(&format!("v = {expr}"))
        .ok()
        .and_then(|b: hcl::Map<String, hcl::Value>| b.get("v").cloned())?;
    serde_json::to_value(value).ok()
}

fn json_to_value(json: &serde_json::Value, span: &Span) -> SValue {
    let value = match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Number(n.clone()),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => {
            Value::List(items.iter().map(|i| json_to_value(i, span)).collect())
        }
        serde_json::Value::Object(items) => Value::Object(
            items
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v, span)))
                .collect(),
        ),
    };
    SValue {
        value,
        span: span.clone(),
    }
}

/// Read each `config` block's template, add it to the recipe's sources, and check that every
/// name in it is a value the block can fill: a key of `values`, a variable that is not
/// sensitive, or a field of a database of the recipe.
fn check_configs(recipe: &mut Recipe, declared: &[String], diagnostics: &mut Vec<Diagnostic>) {
    use template::{reference, Reference, DATABASE_FIELDS};
    let configs = recipe.configs.clone();
    for config in &configs {
        let block = &config.block;
        let span = |key: &str| {
            config
                .spans
                .value(&[Seg::Key(key.into())])
                .unwrap_or(config.header())
        };
        if !block.to.starts_with('/') || block.to.ends_with('/') {
            diagnostics.push(
                Diagnostic::error(format!(
                    "`to` must be a file's absolute path in the VM, not `{}`",
                    block.to
                ))
                .at(&span("to"), "for example \"/etc/site/site.conf\""),
            );
        }
        if let Some(mode) = &block.mode {
            if u32::from_str_radix(mode, 8).map_or(true, |m| m > 0o7777) {
                diagnostics.push(
                    Diagnostic::error(format!("`{mode}` is not an octal file mode"))
                        .at(&span("mode"), "for example \"0640\""),
                );
            }
        }
        for (key, value) in &block.values {
            if value.is_secret() {
                diagnostics.push(
                    Diagnostic::error(format!(
                        "the value `{key}` is sensitive, and a config file is written into the VM"
                    ))
                    .at(&span("values"), "a secret would ship in the image")
                    .help("the VM's database passwords are `{{ database.NAME.password }}`; a production secret never belongs in the VM"),
                );
            }
        }
        for (i, target) in block.replaces.iter().enumerate() {
            let known = recipe
                .git_sources
                .iter()
                .map(|s| format!("source.{}", s.name))
                .chain(recipe.files.iter().map(|s| format!("files.{}", s.name)))
                .chain(
                    recipe
                        .steps
                        .iter()
                        .filter(|s| s.block.into.is_some())
                        .map(|s| format!("step.{}", s.name)),
                )
                .chain(recipe.configs.iter().map(|s| format!("config.{}", s.name)))
                .any(|id| id == *target);
            if !known {
                let span = config.spans.item("replaces", i).unwrap_or(config.header());
                diagnostics.push(
                    Diagnostic::error(format!(
                        "`{target}` is not a layer that `config.{}` could replace",
                        config.name
                    ))
                    .at(
                        &span,
                        "name a `source`, `files`, `config`, or a `step` that has `into`",
                    ),
                );
            }
        }
        let path = in_dir(&recipe.dir, &block.template);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                diagnostics.push(
                    Diagnostic::error(format!(
                        "cannot read the template `{}`: {e}",
                        block.template
                    ))
                    .at(&span("template"), "this file")
                    .help("templates are relative to the recipe's folder"),
                );
                continue;
            }
        };
        let file = recipe.sources.add(path, text);
        let text = recipe.sources.get(file).text.clone();
        let parsed = match template::parse(&text) {
            Ok(parsed) => parsed,
            Err(e) => {
                diagnostics.push(
                    Diagnostic::error(format!(
                        "the template of `config.{}`: {}",
                        config.name, e.message
                    ))
                    .at(&Span::new(file, e.span.clone()), e.label)
                    .also(&span("template"), "the template"),
                );
                continue;
            }
        };
        // Every database block written, decoded or not: one broken block is one error.
        let databases: Vec<&str> = declared
            .iter()
            .filter_map(|id| id.strip_prefix("database."))
            .collect();
        for (name, range) in parsed.names() {
            let at = Span::new(file, range.clone());
            let problem = match reference(name) {
                Reference::Value(key) if block.values.contains_key(key) => None,
                Reference::Value(key) => Some(
                    Diagnostic::error(format!("`{key}` is not a value of `config.{}`", config.name))
                        .at(&at, "unknown value")
                        .help(did_you_mean(key, block.values.keys().map(String::as_str)).unwrap_or_else(|| {
                            format!("add it to the block: `values = {{ {key} = \"...\" }}`")
                        })),
                ),
                Reference::Variable(variable) => match recipe.variables.get(variable) {
                    Some(v) if v.sensitive => Some(
                        Diagnostic::error(format!(
                            "`var.{variable}` is sensitive, and a config file is written into the VM"
                        ))
                        .at(&at, "a secret would ship in the image"),
                    ),
                    Some(_) => None,
                    None => Some(
                        Diagnostic::error(format!("the recipe declares no variable `{variable}`"))
                            .at(&at, "unknown variable")
                            .help_opt(did_you_mean(
                                variable,
                                recipe.variables.keys().map(String::as_str),
                            )),
                    ),
                },
                Reference::Database { block: db, .. } if databases.contains(&db) => None,
                Reference::Database { block: db, .. } => Some(
                    Diagnostic::error(format!("the recipe has no `database \"{db}\"`"))
                        .at(&at, "unknown database")
                        .help_opt(did_you_mean(db, databases.iter().copied())),
                ),
                Reference::Unknown => Some(
                    Diagnostic::error(format!("`{name}` is no value a config template can use"))
                        .at(&at, "unknown name")
                        .help(format!(
                            "a key of `values`, `var.NAME`, or `database.NAME.FIELD` where FIELD is one of {}",
                            DATABASE_FIELDS.join(", ")
                        )),
                ),
            };
            if let Some(problem) = problem {
                diagnostics.push(problem.also(&span("template"), "in this template"));
            }
        }
        recipe.config_templates.insert(
            config.name.clone(),
            ConfigTemplate {
                file,
                text,
                template: parsed,
            },
        );
    }
}

/// The blocks that are one step of the same id, whose output a `step` can read.
const SINGLE_STEP_BLOCKS: &[&str] = &["step", "source", "files", "config"];

/// Cross-block checks: references name existing blocks, and `after` has no cycle.
fn validate(recipe: &Recipe, ids: &[String], diagnostics: &mut Vec<Diagnostic>) {
    for step in &recipe.steps {
        for (i, target) in step.block.after.iter().enumerate() {
            let span = step.spans.item("after", i).unwrap_or(step.header());
            if !ids.iter().any(|id| id == target) {
                diagnostics.push(
                    Diagnostic::error(format!(
                        "`step.{}` runs after `{target}`, which is not defined",
                        step.name
                    ))
                    .at(&span, "no such step")
                    .help_opt(did_you_mean(target, ids.iter().map(String::as_str))),
                );
            } else if !target
                .split_once('.')
                .is_some_and(|(kind, _)| SINGLE_STEP_BLOCKS.contains(&kind))
            {
                diagnostics.push(
                    Diagnostic::error(format!("`after` names a block of one step, not `{target}`"))
                        .at(&span, "made of several steps")
                        .help(format!(
                            "a step can run after {} blocks",
                            SINGLE_STEP_BLOCKS
                                .iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                );
            }
        }
        for (i, pattern) in step.block.inputs.iter().enumerate() {
            if let Err(e) = globset::Glob::new(pattern) {
                let span = step.spans.item("inputs", i).unwrap_or(step.header());
                diagnostics.push(
                    Diagnostic::error(format!("`{pattern}` is not a valid glob"))
                        .at(&span, e.kind().to_string()),
                );
            }
        }
        if let Some(into) = &step.block.into {
            if !into.starts_with('/') {
                let span = step
                    .spans
                    .value(&[Seg::Key("into".into())])
                    .unwrap_or(step.header());
                diagnostics.push(
                    Diagnostic::error(format!(
                        "`into` must be an absolute path in the VM, not `{into}`"
                    ))
                    .at(&span, "for example \"/srv/data\""),
                );
            }
        }
        for (i, target) in step.block.replaces.iter().enumerate() {
            let span = step.spans.item("replaces", i).unwrap_or(step.header());
            let is_layer = recipe
                .steps
                .iter()
                .any(|s| format!("step.{}", s.name) == *target && s.block.into.is_some())
                || recipe
                    .git_sources
                    .iter()
                    .any(|s| format!("source.{}", s.name) == *target)
                || recipe
                    .configs
                    .iter()
                    .any(|s| format!("config.{}", s.name) == *target)
                || recipe
                    .files
                    .iter()
                    .any(|s| format!("files.{}", s.name) == *target);
            if !is_layer {
                diagnostics.push(
                    Diagnostic::error(format!(
                        "`{target}` is not a layer that `step.{}` could replace",
                        step.name
                    ))
                    .at(
                        &span,
                        "name a `source`, `files` or `config` block, or a `step` block that has `into`",
                    )
                    .help_opt(did_you_mean(target, ids.iter().map(String::as_str))),
                );
            }
        }
        if step.block.command.is_empty() {
            let span = step
                .spans
                .value(&[Seg::Key("command".into())])
                .unwrap_or(step.header());
            diagnostics.push(
                Diagnostic::error(format!("`step.{}` has an empty command", step.name))
                    .at(&span, "give at least the program to run"),
            );
        }
    }
    for source in &recipe.git_sources {
        let to_span = || {
            source
                .spans
                .value(&[Seg::Key("to".into())])
                .unwrap_or(source.header())
        };
        match &source.block.to {
            Some(to) if !to.starts_with('/') => diagnostics.push(
                Diagnostic::error(format!(
                    "`to` must be an absolute path in the VM, not `{to}`"
                ))
                .at(&to_span(), "for example \"/srv/site\""),
            ),
            None if source.block.build.is_empty() && !recipe.templates.is_empty() => diagnostics
                .push(
                    Diagnostic::error(format!(
                        "`source.{}` puts its checkout into the VM, but not where",
                        source.name
                    ))
                    .at(&source.header(), "no `to` and no `build`")
                    .help("add `to = \"/srv/NAME\"`, or a `build` that installs into `$out`"),
                ),
            _ => {}
        }
    }
    for files in &recipe.files {
        let span = |key: &str| {
            files
                .spans
                .value(&[Seg::Key(key.into())])
                .unwrap_or(files.header())
        };
        if !files.block.to.starts_with('/') {
            diagnostics.push(
                Diagnostic::error(format!(
                    "`to` must be an absolute path in the VM, not `{}`",
                    files.block.to
                ))
                .at(&span("to"), "for example \"/var/www/data\""),
            );
        }
        for (list, patterns) in [
            ("include", &files.block.include),
            ("exclude", &files.block.exclude),
        ] {
            for (i, pattern) in patterns.iter().enumerate() {
                if let Err(e) = globset::Glob::new(pattern) {
                    let span = files.spans.item(list, i).unwrap_or(files.header());
                    diagnostics.push(
                        Diagnostic::error(format!("`{pattern}` is not a valid glob"))
                            .at(&span, e.kind().to_string()),
                    );
                }
            }
        }
    }
    if let Some(named) = &recipe.forbid_software {
        type Check = fn(&str) -> Result<globset::Glob, BadPattern>;
        let lists: [(&str, &Vec<String>, Check); 2] = [
            (
                "packages",
                &named.block.packages,
                ForbidSoftwareBlock::package_glob,
            ),
            ("paths", &named.block.paths, ForbidSoftwareBlock::path_glob),
        ];
        for (list, patterns, check) in lists {
            for (i, pattern) in patterns.iter().enumerate() {
                if let Err(bad) = check(pattern) {
                    let span = named.spans.item(list, i).unwrap_or(named.header());
                    diagnostics.push(Diagnostic::error(bad.summary).at(&span, bad.label));
                }
            }
        }
    }
    // Cycles among steps, reported once per cycle with the edge that closes it.
    let index: HashMap<&str, usize> = recipe
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut state = vec![0u8; recipe.steps.len()]; // 0 new, 1 on stack, 2 done
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        recipe: &Recipe,
        index: &HashMap<&str, usize>,
        state: &mut Vec<u8>,
        stack: &mut Vec<usize>,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        state[i] = 1;
        stack.push(i);
        let step = &recipe.steps[i];
        for (k, target) in step.block.after.iter().enumerate() {
            let Some(&j) = target.strip_prefix("step.").and_then(|n| index.get(n)) else {
                continue;
            };
            if state[j] == 1 {
                let pos = stack.iter().position(|&s| s == j).unwrap_or(0);
                let mut names: Vec<String> = stack[pos..]
                    .iter()
                    .map(|&s| format!("step.{}", recipe.steps[s].name))
                    .collect();
                names.push(format!("step.{}", recipe.steps[j].name));
                let span = step.spans.item("after", k).unwrap_or(step.header());
                diagnostics.push(
                    Diagnostic::error(format!(
                        "steps depend on each other in a cycle: {}",
                        names.join(" -> ")
                    ))
                    .at(&span, "this dependency closes the cycle"),
                );
            } else if state[j] == 0 {
                visit(j, recipe, index, state, stack, diagnostics);
            }
        }
        stack.pop();
        state[i] = 2;
    }
    for i in 0..recipe.steps.len() {
        if state[i] == 0 {
            visit(i, recipe, &index, &mut state, &mut stack, diagnostics);
        }
    }
}

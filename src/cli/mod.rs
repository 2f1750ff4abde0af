//! The command line: the only place that prints. It resolves arguments into settings, calls the
//! engine, renders its diagnostics, plans and events, and maps outcomes to exit codes:
//! 0 success, 1 error, 2 changes pending (`plan --detailed-exitcode`), 130 stopped by a signal.

mod args;
mod diagnostics;
mod diff;
mod progress;
mod remote;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use engine::exec::{self, ApplyOptions};
use engine::plan::{Plan, PlanError, PlanSummary};
use engine::recipe::{LoadOptions, Recipe};
use engine::store::Store;
use tokio_util::sync::CancellationToken;

use args::{Args, Command, DiffFormat, GraphFormat, KeyCommand, PlanFormat, StoreCommand, VarArgs};
use engine::remote::Remote;

/// Whether to color output: a terminal, and no `NO_COLOR`.
pub fn color_enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A failure already explained to the user, or one to explain now.
enum Failure {
    /// Diagnostics or a message were printed; exit 1.
    Reported,
    /// Print this and exit 1.
    Message(String),
    /// Stopped by a signal.
    Interrupted,
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Failure {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&format!("\n  caused by: {cause}"));
            source = cause.source();
        }
        Failure::Message(text)
    }
}

type Outcome = Result<ExitCode, Failure>;

pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VMBUILD_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(code) => code,
        Err(Failure::Reported) => ExitCode::from(1),
        Err(Failure::Message(text)) => {
            eprintln!("error: {text}");
            ExitCode::from(1)
        }
        Err(Failure::Interrupted) => ExitCode::from(130),
    }
}

fn store_at(args: &Args) -> Result<Store, Failure> {
    let root = args.store.clone().unwrap_or_else(Store::default_location);
    Ok(Store::open(&root)?)
}

/// Load a recipe, fetching its `data` blocks.
fn load(recipe: &Path, vars: &VarArgs) -> Result<Recipe, Failure> {
    load_with(recipe, vars, true)
}

fn load_with(recipe: &Path, vars: &VarArgs, fetch_data: bool) -> Result<Recipe, Failure> {
    let options = LoadOptions {
        vars: vars.vars.clone(),
        fetch_data,
        ..LoadOptions::default()
    };
    Recipe::load(recipe, &options).map_err(|d| {
        eprint!("{}", diagnostics::render(&d));
        Failure::Reported
    })
}

fn plan(recipe: &Recipe, store: &Store) -> Result<Plan, Failure> {
    plan_with(recipe, store, None)
}

/// The plan of `recipe`, with a remote store behind the local one if there is one.
fn plan_with(recipe: &Recipe, store: &Store, remote: Option<&Remote>) -> Result<Plan, Failure> {
    Plan::build_with_remote(recipe, store, remote).map_err(|e| match e {
        PlanError::Recipe(d) => {
            eprint!("{}", diagnostics::render(&d));
            Failure::Reported
        }
        PlanError::Store(e) => Failure::from(e),
    })
}

/// The plan of `recipe`, only `targets` and what they depend on when there are any.
fn plan_targets(
    recipe: &Recipe,
    store: &Store,
    remote: Option<&Remote>,
    targets: &[String],
) -> Result<Plan, Failure> {
    let mut plan = plan_with(recipe, store, remote)?;
    plan.retain_targets(targets).map_err(|unknown| {
        let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        let hint = engine::diag::did_you_mean(&unknown, ids.iter().copied()).unwrap_or_default();
        Failure::Message(
            format!("--target `{unknown}`: the recipe has no such step. {hint}")
                .trim_end()
                .to_string(),
        )
    })?;
    Ok(plan)
}

/// The non-sensitive variables, as saved in a plan file.
fn plain_variables(recipe: &Recipe) -> BTreeMap<String, serde_json::Value> {
    recipe
        .variables
        .iter()
        .filter(|(_, v)| !v.sensitive)
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect()
}

fn run(args: Args) -> Outcome {
    match &args.command {
        Command::Validate { recipe, vars } => {
            // Validate reads nothing from the network: data blocks are checked, not fetched, and
            // what depends on their answers is checked by plan.
            let loaded = load_with(recipe, vars, false)?;
            let blocks = loaded.block_count();
            let plural = |n: usize| if n == 1 { "" } else { "s" };
            if loaded.modules.is_empty() {
                println!(
                    "`{}` is valid: {blocks} block{}",
                    recipe.display(),
                    plural(blocks)
                );
            } else {
                let instances = loaded.modules.len();
                println!(
                    "`{}` is valid: {blocks} block{}, with {instances} module instance{}",
                    recipe.display(),
                    plural(blocks),
                    plural(instances)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fmt { recipe, check } => fmt(recipe, *check),
        Command::Plan {
            recipe,
            vars,
            format,
            out,
            detailed_exitcode,
            targets,
            remote,
        } => {
            let store = store_at(&args)?;
            let loaded = load(recipe, vars)?;
            let remote = remote::open(&args, remote.remote.as_deref())?;
            let plan = plan_targets(&loaded, &store, remote.as_deref(), targets)?;
            if let Some(remote) = &remote {
                remote::print_notes(remote);
            }
            let summary = plan.summary(plain_variables(&loaded));
            let text = match format {
                PlanFormat::Text => render::plan_text(&summary),
                PlanFormat::Json => render::plan_json(&summary),
                PlanFormat::Markdown => render::plan_markdown(&summary),
            };
            print!("{text}");
            if let Some(out) = out {
                std::fs::write(out, render::plan_json(&summary)).map_err(|e| {
                    Failure::Message(format!("cannot write `{}`: {e}", out.display()))
                })?;
                eprintln!(
                    "Saved the plan to `{}`; apply it with `vmbuild apply {}`.",
                    out.display(),
                    out.display()
                );
            }
            Ok(if *detailed_exitcode && summary.run > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Apply {
            recipe,
            vars,
            targets,
            jobs,
            keep_going,
            output,
            libvirt_uri,
            remote,
        } => {
            let store = store_at(&args)?;
            let remote = remote::open(&args, remote.remote.as_deref())?;
            let (loaded, saved) = match read_plan_file(recipe) {
                Some(saved) => {
                    let saved = saved?;
                    let mut from_plan = vars.clone();
                    from_plan.vars = saved
                        .variables
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                match v {
                                    serde_json::Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                },
                            )
                        })
                        .collect();
                    (load(Path::new(&saved.recipe), &from_plan)?, Some(saved))
                }
                None => (load(recipe, vars)?, None),
            };
            let plan = plan_targets(&loaded, &store, remote.as_deref(), targets)?;
            if let Some(saved) = saved {
                let now = plan.summary(plain_variables(&loaded));
                if let Some(why) = saved.staleness(&now) {
                    return Err(Failure::Message(format!(
                        "the saved plan `{}` is out of date: {why}\n  make a new one with `vmbuild plan {} --out {}`",
                        recipe.display(),
                        saved.recipe,
                        recipe.display()
                    )));
                }
            }
            let output = output.clone().unwrap_or_else(|| loaded.dir.join("output"));
            if let Some(remote) = remote.as_ref().filter(|r| !r.can_sign() && !args.no_push) {
                eprintln!(
                    "note: no signing key, so nothing is uploaded to the remote store {} (set VMBUILD_SIGNING_KEY, or signing_key in the configuration's [remote] table)",
                    remote.location()
                );
            }
            let outcome = apply(
                &plan,
                &store,
                remote.clone(),
                jobs.unwrap_or_else(default_jobs),
                *keep_going,
                &output,
                plain_variables(&loaded),
                libvirt_uri.as_deref(),
            );
            if let Some(remote) = &remote {
                remote::print_notes(remote);
            }
            outcome
        }
        Command::Graph {
            recipe,
            vars,
            format,
        } => {
            let store = store_at(&args)?;
            let loaded = load(recipe, vars)?;
            let plan = plan(&loaded, &store)?;
            print!(
                "{}",
                match format {
                    GraphFormat::Dot => render::graph_dot(&plan),
                    GraphFormat::Mermaid => render::graph_mermaid(&plan),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            step,
            recipe,
            vars,
            remote,
        } => {
            let store = store_at(&args)?;
            let loaded = load(recipe, vars)?;
            let remote = remote::open(&args, remote.remote.as_deref())?;
            let plan = plan_with(&loaded, &store, remote.as_deref())?;
            show(&plan, &store, step)
        }
        Command::Log { step, recipe } => {
            let store = store_at(&args)?;
            let namespace = Store::namespace(recipe);
            let path = store.log_path(&namespace, step);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(_) => Err(Failure::Message(format!(
                    "no log for `{step}` of `{}` yet: it has not run with this store",
                    recipe.display()
                ))),
            }
        }
        Command::Store { command } => {
            let store = store_at(&args)?;
            match command {
                StoreCommand::Path => {
                    println!("{}", store.root().display());
                    Ok(ExitCode::SUCCESS)
                }
                StoreCommand::Verify {
                    repair,
                    remote: true,
                } => {
                    let remote = remote::required(&args, "store verify")?;
                    let report = remote.block_on(remote.verify(*repair))?;
                    for problem in &report.problems {
                        println!("{}: {}", problem.object, problem.what);
                    }
                    for untrusted in &report.untrusted {
                        println!("{}: not checked: {}", untrusted.object, untrusted.what);
                    }
                    println!(
                        "checked {} records, {} trees, {} blobs ({}) in {}: {} problem{}{}",
                        report.entries,
                        report.trees,
                        report.blobs,
                        human_bytes(report.bytes),
                        remote.location(),
                        report.problems.len(),
                        if report.problems.len() == 1 { "" } else { "s" },
                        if report.removed > 0 {
                            format!(" ({} objects removed)", report.removed)
                        } else {
                            String::new()
                        }
                    );
                    Ok(if report.problems.is_empty() || *repair {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                StoreCommand::Verify {
                    repair,
                    remote: false,
                } => {
                    let report = store.verify(*repair)?;
                    for problem in &report.problems {
                        println!("{}: {}", problem.path.display(), problem.what);
                    }
                    println!(
                        "checked {} trees, {} blobs, {} records: {} problem{}{}",
                        report.trees,
                        report.blobs,
                        report.records,
                        report.problems.len(),
                        if report.problems.len() == 1 { "" } else { "s" },
                        if *repair && !report.problems.is_empty() {
                            " (repaired)"
                        } else {
                            ""
                        }
                    );
                    Ok(if report.problems.is_empty() || *repair {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
            }
        }
        Command::Key { command } => match command {
            KeyCommand::Generate { name, out } => {
                remote::generate_key(name, out)?;
                Ok(ExitCode::SUCCESS)
            }
            KeyCommand::Public { file } => {
                let key = engine::remote::SigningKey::read(file)?;
                println!("{}", key.public());
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Diff {
            before,
            after,
            recipe,
            format,
            no_log,
        } => {
            let store = store_at(&args)?;
            let (before, after) = diff_operands(&store, before, after, recipe.as_deref())?;
            let options = engine::diff::DiffOptions {
                read_logs: !no_log,
                store: Some(&store),
            };
            let manifests = (
                engine::diff::read_manifest(&before)?,
                engine::diff::read_manifest(&after)?,
            );
            let result = engine::diff::diff(&manifests.0, &manifests.1, &options);
            match format {
                DiffFormat::Text => print!("{}", diff::text(&result)),
                DiffFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&result).expect("a diff serializes")
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc {
            recipes,
            keep_last,
            vars,
            remote: true,
            grace,
        } => {
            let store = store_at(&args)?;
            let remote = remote::required(&args, "gc")?;
            let mut keep = BTreeSet::new();
            for recipe in recipes {
                let loaded = load(recipe, vars)?;
                let plan = plan_with(&loaded, &store, Some(&remote))?;
                keep.extend(plan.steps.iter().filter_map(|s| s.key));
            }
            let report = remote.block_on(remote.gc(&keep, *keep_last, *grace))?;
            println!(
                "removed {} records, {} trees, {} blobs ({}) from {}; kept {} records, and {} objects younger than {}s",
                report.entries_removed,
                report.trees_removed,
                report.blobs_removed,
                human_bytes(report.bytes_freed),
                remote.location(),
                report.entries_kept,
                report.young_kept,
                grace.as_secs()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc {
            recipes,
            keep_last,
            vars,
            remote: false,
            ..
        } => {
            let store = store_at(&args)?;
            let mut keep = BTreeSet::new();
            for recipe in recipes {
                let loaded = load(recipe, vars)?;
                let plan = plan(&loaded, &store)?;
                keep.extend(plan.steps.iter().filter_map(|s| s.key));
            }
            // gc needs the store to itself: it waits for running applies to finish.
            let _exclusive = store.lock_exclusive()?;
            // A killed build may have left mounts in its staging folder; nothing runs now.
            engine::steps::chroot::unmount_below(&store.root().join("tmp"));
            let report = store.gc(&keep, *keep_last)?;
            println!(
                "removed {} records, {} trees, {} blobs ({}); kept {} records",
                report.records_removed,
                report.trees_removed,
                report.blobs_removed,
                human_bytes(report.bytes_freed),
                report.records_kept
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A saved plan, if `path` is one (a JSON file with `vmbuild_plan`).
fn read_plan_file(path: &Path) -> Option<Result<PlanSummary, Failure>> {
    if path.is_dir() || path.extension().is_some_and(|e| e == "hcl" || e == "toml") {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    if !text.trim_start().starts_with('{') || !text.contains("\"vmbuild_plan\"") {
        return None;
    }
    Some(serde_json::from_str(&text).map_err(|e| {
        Failure::Message(format!(
            "`{}` is not a plan vmbuild can read: {e}",
            path.display()
        ))
    }))
}

#[allow(clippy::too_many_arguments)]
fn apply(
    plan: &Plan,
    store: &Store,
    remote: Option<Arc<Remote>>,
    jobs: usize,
    keep_going: bool,
    output: &Path,
    variables: BTreeMap<String, serde_json::Value>,
    libvirt_uri: Option<&str>,
) -> Outcome {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signals.cancel();
        });
        let progress = Arc::new(progress::Progress::new(std::io::stderr().is_terminal()));
        let options = ApplyOptions {
            jobs,
            keep_going,
            cancel,
            remote: remote.clone(),
        };
        let report = exec::apply(plan, store, &options, progress.clone()).await;
        progress.finish();
        let report = report?;
        if report.cancelled {
            eprintln!(
                "Stopped: {} ran, {} cached before the stop; the next apply resumes from there.",
                report.ran.len(),
                report.cached.len()
            );
            return Err(Failure::Interrupted);
        }
        if !report.failed.is_empty() {
            let names: Vec<String> = report.failed.iter().map(|(id, _)| format!("`{id}`")).collect();
            eprintln!(
                "Apply failed: {} failed, {} skipped, {} ran, {} cached. See `vmbuild log STEP -r {}`.",
                names.join(", "),
                report.skipped.len(),
                report.ran.len(),
                report.cached.len(),
                plan.recipe_path.display()
            );
            return Err(Failure::Reported);
        }
        eprintln!("Apply complete: {} ran, {} cached.", report.ran.len(), report.cached.len());
        if let Some(exported) = exec::export::export(plan, &report, store, output, variables, libvirt_uri, remote.as_deref())? {
            let mut files = exported.copied.clone();
            files.extend(exported.unchanged.iter().cloned());
            files.sort();
            eprintln!(
                "Artifacts in `{}`: {} (with SHA256SUMS and manifest.json).",
                exported.dir.display(),
                files.join(", ")
            );
            for note in &exported.notes {
                eprintln!("  {note}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The two manifests to compare: as given, or the store's builds of `recipe` (the latest, and
/// the one before it).
fn diff_operands(
    store: &Store,
    before: &Option<PathBuf>,
    after: &Option<PathBuf>,
    recipe: Option<&Path>,
) -> Result<(PathBuf, PathBuf), Failure> {
    if let (Some(before), Some(after)) = (before, after) {
        return Ok((before.clone(), after.clone()));
    }
    let Some(recipe) = recipe else {
        return Err(Failure::Message(
            "give two builds (manifest.json files or output folders), or `--recipe RECIPE` to compare the builds the store keeps of it".into(),
        ));
    };
    let builds = store.builds(&Store::namespace(recipe))?;
    match (before, builds.as_slice()) {
        (Some(before), [.., latest]) => Ok((before.clone(), latest.clone())),
        (None, [.., previous, latest]) => Ok((previous.clone(), latest.clone())),
        (_, found) => Err(Failure::Message(format!(
            "the store keeps {} build{} of `{}`: a diff needs {}",
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            recipe.display(),
            if before.is_some() { "one" } else { "two" }
        ))),
    }
}

fn show(plan: &Plan, store: &Store, id: &str) -> Outcome {
    let Some(step) = plan.get(id) else {
        let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        let hint = engine::diag::did_you_mean(id, ids.iter().copied()).unwrap_or_default();
        return Err(Failure::Message(
            format!("the recipe has no step `{id}`. {hint}")
                .trim_end()
                .to_string(),
        ));
    };
    println!("{}", step.id);
    println!("  kind:        {}", step.kind);
    if !step.depends_on.is_empty() {
        println!("  depends on:  {}", step.depends_on.join(", "));
    }
    match (&step.record, &step.reason) {
        (Some(record), _) if step.remote => {
            println!("  action:      cached (remote)");
            println!("  key:         {}", record.key);
            println!(
                "  output:      {} (in the remote store; downloaded when something needs it)",
                record.output
            );
            let took = record.finished.duration_since(record.started);
            println!(
                "  built:       {} in {:.1}s",
                record.finished,
                took.as_secs_f64()
            );
        }
        (Some(record), _) => {
            println!("  action:      cached");
            println!("  key:         {}", record.key);
            println!(
                "  output:      {} (`{}`)",
                record.output,
                store.tree_path(&record.output).display()
            );
            let took = record.finished.duration_since(record.started);
            println!(
                "  built:       {} in {:.1}s",
                record.finished,
                took.as_secs_f64()
            );
        }
        (None, reason) => {
            println!("  action:      run");
            match step.key {
                Some(key) => println!("  key:         {key}"),
                None => println!("  key:         (known once its upstream steps have run)"),
            }
            if let Some(reason) = reason {
                println!("  why:         {reason}");
            }
            if let Ok(Some(last)) = store.get_ref(&plan.namespace, &step.id) {
                if store.tree_path(&last.output).is_dir() {
                    println!(
                        "  last output: {} (`{}`)",
                        last.output,
                        store.tree_path(&last.output).display()
                    );
                }
            }
        }
    }
    let upstream = plan
        .steps
        .iter()
        .filter(|s| step.depends_on.contains(&s.id))
        .filter_map(|s| s.record.as_ref().map(|r| (s.id.clone(), r.output)))
        .collect();
    let inputs = engine::plan::KeyInputs::new(step.step.as_ref(), &step.resolved, upstream);
    println!("key inputs:");
    println!(
        "{}",
        serde_json::to_string_pretty(&inputs).expect("key inputs serialize")
    );
    Ok(ExitCode::SUCCESS)
}

fn fmt(recipe: &Path, check: bool) -> Outcome {
    let files: Vec<PathBuf> = if recipe.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(recipe)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "hcl"))
            .collect();
        files.sort();
        files
    } else {
        vec![recipe.to_path_buf()]
    };
    let mut unformatted = 0;
    for file in files {
        if file.extension().is_some_and(|e| e == "toml") {
            eprintln!(
                "`{}` is TOML: fmt formats HCL recipes and leaves it as it is",
                file.display()
            );
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Failure::Message(format!("cannot read `{}`: {e}", file.display())))?;
        let formatted = match engine::recipe::fmt::format_hcl(&text) {
            Ok(f) => f,
            Err(error) => {
                let mut d = engine::diag::Diagnostics::default();
                let id = d.sources.add(file.clone(), text.clone());
                let span = error.span();
                let range = span.offset()..span.offset() + span.len();
                d.push(
                    engine::diag::Diagnostic::error("the recipe is not valid HCL")
                        .at(&engine::diag::Span::new(id, range), error.message()),
                );
                eprint!("{}", diagnostics::render(&d));
                return Err(Failure::Reported);
            }
        };
        if formatted == text {
            continue;
        }
        unformatted += 1;
        if check {
            println!("--- {}\n+++ {} (formatted)", file.display(), file.display());
            let diff = similar::TextDiff::from_lines(&text, &formatted);
            print!("{}", diff.unified_diff().context_radius(2));
        } else {
            std::fs::write(&file, formatted)
                .map_err(|e| Failure::Message(format!("cannot write `{}`: {e}", file.display())))?;
            println!("formatted `{}`", file.display());
        }
    }
    Ok(if check && unformatted > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

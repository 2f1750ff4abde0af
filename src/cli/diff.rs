//! `vmbuild diff` for people: what changed between two builds, by section, only what changed.

use engine::diff::{BuildDiff, Change, Log, StepChange};

fn value<T: std::fmt::Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "(none)".into(),
    }
}

fn arrow<T: std::fmt::Display>(change: &Change<T>) -> String {
    match (&change.before, &change.after) {
        (None, Some(after)) => format!("{}: added ({after})", change.name),
        (Some(before), None) => format!("{}: removed (was {before})", change.name),
        _ => format!(
            "{}: {} → {}",
            change.name,
            value(&change.before),
            value(&change.after)
        ),
    }
}

fn short(commit: &Option<String>) -> String {
    match commit {
        Some(c) => c.chars().take(12).collect(),
        None => "(none)".into(),
    }
}

/// The diff as text.
pub fn text(diff: &BuildDiff) -> String {
    let mut out = format!(
        "Builds compared:\n  before  {}\n  after   {}\n",
        diff.before, diff.after
    );
    if diff.is_empty() {
        out.push_str("\nNothing changed.\n");
        return out;
    }
    if !diff.variables.is_empty() {
        out.push_str("\nVariables:\n");
        for change in &diff.variables {
            let change = Change {
                name: change.name.clone(),
                before: change.before.as_ref().map(|v| v.to_string()),
                after: change.after.as_ref().map(|v| v.to_string()),
            };
            out.push_str(&format!("  {}\n", arrow(&change)));
        }
    }
    if !diff.sources.is_empty() {
        out.push_str("\nSources:\n");
        for source in &diff.sources {
            out.push_str(&format!(
                "  {} ({}): {} → {}\n",
                source.step,
                source.git,
                short(&source.before),
                short(&source.after)
            ));
            match &source.log {
                Log::Commits { lines, total } => {
                    let word = if *total == 1 { "commit" } else { "commits" };
                    out.push_str(&format!("    {total} {word}:\n"));
                    for line in lines {
                        out.push_str(&format!("      {line}\n"));
                    }
                    if *total > lines.len() {
                        out.push_str(&format!("      … and {} more\n", total - lines.len()));
                    }
                }
                Log::Unavailable(why) => out.push_str(&format!(
                    "    (the commits between them cannot be read: {why})\n"
                )),
                Log::NotRead => {}
            }
        }
    }
    if !diff.databases.is_empty() {
        out.push_str("\nDatabases:\n");
        for database in &diff.databases {
            out.push_str(&format!("  {}\n", database.step));
            if !database.schemas_added.is_empty() {
                out.push_str(&format!(
                    "    schemas added: {}\n",
                    database.schemas_added.join(", ")
                ));
            }
            if !database.schemas_removed.is_empty() {
                out.push_str(&format!(
                    "    schemas removed: {}\n",
                    database.schemas_removed.join(", ")
                ));
            }
            if let Some(fingerprint) = &database.fingerprint {
                out.push_str(&format!("    {}\n", arrow(fingerprint)));
            }
            for table in &database.tables {
                let delta = match (table.before, table.after) {
                    (Some(a), Some(b)) => format!(" ({:+})", b - a),
                    _ => String::new(),
                };
                out.push_str(&format!("    rows of {}{delta}\n", arrow(table)));
            }
        }
    }
    if !diff.files.is_empty() {
        out.push_str("\nFile trees:\n");
        for files in &diff.files {
            out.push_str(&format!("  {}\n", files.step));
            for change in [&files.count, &files.bytes].into_iter().flatten() {
                out.push_str(&format!("    {}\n", arrow(change)));
            }
            for (what, list) in [
                ("added", &files.added),
                ("removed", &files.removed),
                ("changed", &files.changed),
            ] {
                for file in list {
                    out.push_str(&format!("    {what:8} {file}\n"));
                }
            }
            if files.more > 0 {
                out.push_str(&format!("    … and {} more\n", files.more));
            }
            if let Some(why) = &files.listing {
                out.push_str(&format!("    (no file list: {why})\n"));
            }
        }
    }
    if !diff.packages.is_empty() {
        out.push_str(&format!("\nPackages ({} changed):\n", diff.packages.len()));
        for change in &diff.packages {
            out.push_str(&format!("  {}\n", arrow(change)));
        }
    }
    if !diff.artifacts.is_empty() {
        out.push_str("\nArtifacts (SHA-256):\n");
        for change in &diff.artifacts {
            let shorten =
                |v: &Option<String>| v.as_ref().map(|s| s.chars().take(16).collect::<String>());
            out.push_str(&format!(
                "  {}\n",
                arrow(&Change {
                    name: change.name.clone(),
                    before: shorten(&change.before),
                    after: shorten(&change.after),
                })
            ));
        }
    }
    if !diff.steps.is_empty() {
        out.push_str("\nSteps:\n");
        for (id, change) in &diff.steps {
            let what = match change {
                StepChange::Added => "added".to_string(),
                StepChange::Removed => "removed".to_string(),
                StepChange::Parameters(paths) => {
                    format!("parameters changed: {}", paths.join(", "))
                }
                StepChange::Inputs(inputs) => format!("changed: {}", inputs.join(", ")),
            };
            out.push_str(&format!("  {id}: {what}\n"));
        }
    }
    out
}

//! Plans and graphs as text, Markdown (for a pull-request review), JSON, Graphviz and Mermaid.

use engine::plan::{Action, Plan, PlanSummary, StepSummary};
use engine::recipe::Fetched;

/// One line for what a data block fetched:
/// `data.http.dashboard  GET https://... (200, 1.2 KiB, blake3 1a2b3c4d5e6f)`.
fn fetched_line(fetched: &Fetched, id_width: usize) -> String {
    format!(
        "{:id_width$}  {} {} ({}, {}, blake3 {})",
        fetched.id,
        fetched.method,
        fetched.url,
        fetched.status,
        engine::steps::human_bytes(fetched.bytes),
        fetched.digest.short()
    )
}

/// ` (N in the remote store)` when plan found N steps there, else nothing.
fn remote_hits(summary: &PlanSummary) -> String {
    match summary.steps.iter().filter(|s| s.remote).count() {
        0 => String::new(),
        n => format!(" ({n} in the remote store)"),
    }
}

/// `run`, `cached`, or `cached (remote)` where the remote store has the output.
fn action_label(step: &StepSummary) -> &'static str {
    match (step.action, step.remote) {
        (Action::Run, _) => "run",
        (Action::Cached, false) => "cached",
        (Action::Cached, true) => "cached (remote)",
    }
}

/// The plan for people: one line a step, aligned, with the reason for every `run`.
pub fn plan_text(summary: &PlanSummary) -> String {
    let id_width = summary.steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let kind_width = summary
        .steps
        .iter()
        .map(|s| s.kind.len())
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "Plan for `{}`: {} step{}, {} to run, {} cached{}\n\n",
        summary.recipe,
        summary.steps.len(),
        if summary.steps.len() == 1 { "" } else { "s" },
        summary.run,
        summary.cached,
        remote_hits(summary)
    );
    let any_remote = summary.steps.iter().any(|s| s.remote);
    let action_width = if any_remote { 15 } else { 6 };
    if !summary.data.is_empty() {
        let width = summary.data.iter().map(|d| d.id.len()).max().unwrap_or(0);
        out.push_str("Fetched:\n");
        for fetched in &summary.data {
            out.push_str(&format!("  {}\n", fetched_line(fetched, width)));
        }
        out.push('\n');
    }
    for step in &summary.steps {
        let action = action_label(step);
        let line = format!(
            "  {action:action_width$}  {:id_width$}  {:kind_width$}  {}",
            step.id,
            step.kind,
            step.reason.as_deref().unwrap_or("")
        );
        out.push_str(line.trim_end());
        out.push('\n');
        for detail in &step.details {
            out.push_str(&format!("            {detail}\n"));
        }
    }
    if summary.steps.is_empty() {
        out.push_str("  (the recipe has no steps)\n");
    }
    out
}

/// The plan as a Markdown comment for a pull request.
pub fn plan_markdown(summary: &PlanSummary) -> String {
    let mut out = format!("### vmbuild plan for `{}`\n\n", summary.recipe);
    if !summary.data.is_empty() {
        out.push_str("Fetched:\n\n");
        for fetched in &summary.data {
            out.push_str(&format!(
                "- `{}`: {} `{}` ({}, {}, blake3 `{}`)\n",
                fetched.id,
                fetched.method,
                fetched.url,
                fetched.status,
                engine::steps::human_bytes(fetched.bytes),
                fetched.digest.short()
            ));
        }
        out.push('\n');
    }
    if summary.run == 0 {
        out.push_str(&format!(
            "Nothing to do: all {} steps are cached.\n",
            summary.cached
        ));
        return out;
    }
    out.push_str(&format!(
        "**{} to run**, {} cached{}.\n\n",
        summary.run,
        summary.cached,
        remote_hits(summary)
    ));
    out.push_str("| step | kind | action | why |\n|---|---|---|---|\n");
    for step in &summary.steps {
        let action = match step.action {
            Action::Run => "**run**",
            Action::Cached => action_label(step),
        };
        let why = step.reason.as_deref().unwrap_or("").replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | {} | {action} | {why} |\n",
            step.id, step.kind
        ));
    }
    let detailed: Vec<_> = summary
        .steps
        .iter()
        .filter(|s| !s.details.is_empty())
        .collect();
    if !detailed.is_empty() {
        out.push_str("\n<details><summary>What plan resolved</summary>\n\n");
        for step in detailed {
            out.push_str(&format!("- `{}`\n", step.id));
            for detail in &step.details {
                out.push_str(&format!("  - {}\n", detail.replace('|', "\\|")));
            }
        }
        out.push_str("\n</details>\n");
    }
    out
}

pub fn plan_json(summary: &PlanSummary) -> String {
    let mut text = serde_json::to_string_pretty(summary).expect("a plan serializes");
    text.push('\n');
    text
}

/// A Graphviz string. Step ids and kinds hold no quotes or backslashes (names are checked), so
/// only the label's `\n` needs care, and it is written by the caller.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

pub fn graph_dot(plan: &Plan) -> String {
    let mut out = String::from("digraph vmbuild {\n  rankdir=LR;\n  node [shape=box];\n");
    for step in &plan.steps {
        out.push_str(&format!(
            "  {} [label={}];\n",
            quote(&step.id),
            quote(&format!("{}\\n{}", step.id, step.kind))
        ));
    }
    for step in &plan.steps {
        for dep in &step.depends_on {
            out.push_str(&format!("  {} -> {};\n", quote(dep), quote(&step.id)));
        }
    }
    out.push_str("}\n");
    out
}

pub fn graph_mermaid(plan: &Plan) -> String {
    let index = |id: &str| plan.steps.iter().position(|s| s.id == id).unwrap_or(0);
    let mut out = String::from("flowchart LR\n");
    for (i, step) in plan.steps.iter().enumerate() {
        out.push_str(&format!("  n{i}[\"{}<br/>{}\"]\n", step.id, step.kind));
    }
    for (i, step) in plan.steps.iter().enumerate() {
        for dep in &step.depends_on {
            out.push_str(&format!("  n{} --> n{i}\n", index(dep)));
        }
    }
    out
}

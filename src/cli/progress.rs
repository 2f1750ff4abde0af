//! Showing apply as it happens: live bars on a terminal (indicatif), plain timestamped lines
//! otherwise (CI logs, pipes).

use std::collections::BTreeSet;
use std::sync::Mutex;

use engine::events::{Event, Observer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Renders events on standard error.
pub struct Progress {
    bar: Option<ProgressBar>,
    running: Mutex<BTreeSet<String>>,
}

impl Progress {
    pub fn new(live: bool) -> Progress {
        let bar = live.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {pos}/{len} steps  {wide_msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            running: Mutex::new(BTreeSet::new()),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let now = jiff::Zoned::now().strftime("%H:%M:%S");
                eprintln!("[{now}] {text}");
            }
        }
    }

    fn update_running(&self, add: Option<&str>, remove: Option<&str>) {
        let mut running = self.running.lock().expect("progress state");
        if let Some(id) = add {
            running.insert(id.to_string());
        }
        if let Some(id) = remove {
            running.remove(id);
            if let Some(bar) = &self.bar {
                bar.inc(1);
            }
        }
        if let Some(bar) = &self.bar {
            let names: Vec<&str> = running.iter().map(String::as_str).collect();
            bar.set_message(names.join(", "));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: &Event) {
        match event {
            Event::ApplyStarted { steps, jobs } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(*steps as u64);
                }
                self.line(&format!("apply: {steps} steps, up to {jobs} at once"));
            }
            Event::StepCached { id, cutoff } => {
                if *cutoff {
                    self.line(&format!("{id}: cached (its inputs came out unchanged)"));
                } else {
                    self.line(&format!("{id}: cached"));
                }
                self.update_running(None, Some(id));
            }
            Event::StepWaiting { id } => {
                self.line(&format!("{id}: waiting for another vmbuild building it"))
            }
            Event::StepStarted { id, kind } => {
                self.line(&format!("{id}: started ({kind})"));
                self.update_running(Some(id), None);
            }
            Event::StepOutput { .. } => {}
            Event::StepFinished {
                id,
                duration,
                output,
            } => {
                self.line(&format!(
                    "{id}: done in {:.1}s, output {}",
                    duration.as_secs_f64(),
                    output.short()
                ));
                self.update_running(None, Some(id));
            }
            Event::StepFailed {
                id,
                error,
                log,
                tail,
            } => {
                let log = log
                    .as_ref()
                    .map(|_| format!("; see `vmbuild log {id}`"))
                    .unwrap_or_default();
                let mut text = format!("{id}: FAILED: {error}{log}");
                if !tail.is_empty() {
                    text.push_str("\n  last lines of its output:");
                    for line in tail {
                        text.push_str(&format!("\n  | {line}"));
                    }
                }
                self.line(&text);
                self.update_running(None, Some(id));
            }
            Event::StepSkipped { id, because } => {
                self.line(&format!("{id}: skipped: {because}"));
                self.update_running(None, Some(id));
            }
            Event::Cancelling => {
                self.line("stopping: killing running steps, committing nothing partial")
            }
            Event::StepFetched {
                id,
                duration,
                output,
            } => self.line(&format!(
                "{id}: downloaded from the remote store in {:.1}s, output {}",
                duration.as_secs_f64(),
                output.short()
            )),
            Event::RemoteUnusable { id, error } => self.line(&format!(
                "{id}: the remote store's copy is unusable, building it: {error}"
            )),
            Event::StepPushed {
                id,
                bytes,
                duration,
            } => self.line(&format!(
                "{id}: uploaded to the remote store ({} in {:.1}s)",
                engine::steps::human_bytes(*bytes),
                duration.as_secs_f64()
            )),
            Event::PushFailed { id, error } => {
                self.line(&format!("{id}: upload to the remote store failed: {error}"))
            }
        }
    }
}

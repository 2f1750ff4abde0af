//! Diagnostics: what is wrong with a recipe, with the span of the offending text.
//!
//! Following HCL's own model, a diagnostic has a severity, a one-line summary, an optional
//! detail, the *subject* span (exactly the offending construct), optional extra labelled spans,
//! and an optional help line ("did you mean ..."). The recipe loader collects every problem it
//! finds and reports them together instead of stopping at the first.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// One file of a recipe, kept so diagnostics can show its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as given (relative paths stay relative, for stable output).
    pub path: PathBuf,
    pub text: Arc<str>,
}

/// All files of a recipe; a [`Span`] names one of them by index.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: PathBuf, text: String) -> usize {
        self.files.push(SourceFile {
            path,
            text: Arc::from(text),
        });
        self.files.len() - 1
    }

    pub fn get(&self, file: usize) -> &SourceFile {
        &self.files[file]
    }

    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }
}

/// A byte range in one file of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: usize,
    pub range: Range<usize>,
}

impl Span {
    pub fn new(file: usize, range: Range<usize>) -> Span {
        Span { file, range }
    }

    /// The smallest span covering both (same file assumed).
    pub fn join(&self, other: &Span) -> Span {
        Span {
            file: self.file,
            range: self.range.start.min(other.range.start)..self.range.end.max(other.range.end),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A problem in a recipe.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub summary: String,
    pub detail: Option<String>,
    /// Exactly the offending construct, with a label.
    pub subject: Option<(Span, String)>,
    /// Other places worth showing (the first definition of a duplicate, a cycle's other edge).
    pub related: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(summary: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            summary: summary.into(),
            detail: None,
            subject: None,
            related: Vec::new(),
            help: None,
        }
    }

    pub fn at(mut self, span: &Span, label: impl Into<String>) -> Diagnostic {
        self.subject = Some((span.clone(), label.into()));
        self
    }

    pub fn also(mut self, span: &Span, label: impl Into<String>) -> Diagnostic {
        self.related.push((span.clone(), label.into()));
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Diagnostic {
        self.detail = Some(detail.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn help_opt(mut self, help: Option<String>) -> Diagnostic {
        if help.is_some() {
            self.help = help;
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

/// Every problem found in a recipe, with the files they point into.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub sources: Sources,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self
            .items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        write!(f, "the recipe has {errors} error(s)")
    }
}

impl std::error::Error for Diagnostics {}

/// "did you mean `x`?" for the closest candidate, if one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_only_close_words() {
        assert_eq!(
            did_you_mean("comand", ["command", "after", "inputs"]).as_deref(),
            Some("did you mean `command`?")
        );
        assert_eq!(did_you_mean("zzz", ["command", "after"]), None);
    }
}

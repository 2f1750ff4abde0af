//! Rendering recipe diagnostics with miette: the offending text, underlined and labelled.

use std::fmt;

use engine::diag::{Diagnostic, Diagnostics, Severity};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

/// One diagnostic in miette's terms.
struct Report {
    summary: String,
    severity: Severity,
    source: Option<NamedSource<String>>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
}

fn handler() -> GraphicalReportHandler {
    let theme = if super::color_enabled() {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    GraphicalReportHandler::new_themed(theme).with_width(100)
}

/// Every diagnostic, rendered, one after another.
pub fn render(diagnostics: &Diagnostics) -> String {
    let handler = handler();
    let mut out = String::new();
    for diagnostic in &diagnostics.items {
        let report = to_report(diagnostics, diagnostic);
        let _ = handler.render_report(&mut out, &report);
    }
    let errors = diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    if errors > 1 {
        out.push_str(&format!("{errors} errors\n"));
    }
    out
}

fn to_report(all: &Diagnostics, d: &Diagnostic) -> Report {
    let mut help = Vec::new();
    if let Some(detail) = &d.detail {
        help.push(detail.clone());
    }
    let mut labels = Vec::new();
    let mut source = None;
    if let Some((span, label)) = &d.subject {
        let file = all.sources.get(span.file);
        source = Some(
            NamedSource::new(file.path.display().to_string(), file.text.to_string())
                .with_language("hcl"),
        );
        labels.push(LabeledSpan::new_primary_with_span(
            Some(label.clone()),
            SourceSpan::from(span.range.start..span.range.end),
        ));
        for (other, label) in &d.related {
            if other.file == span.file {
                labels.push(LabeledSpan::new_with_span(
                    Some(label.clone()),
                    SourceSpan::from(other.range.clone()),
                ));
            } else {
                let f = all.sources.get(other.file);
                let (line, col) = line_col(&f.text, other.range.start);
                help.push(format!("{label}: {}:{line}:{col}", f.path.display()));
            }
        }
    }
    if let Some(h) = &d.help {
        help.push(h.clone());
    }
    Report {
        summary: d.summary.clone(),
        severity: d.severity,
        source,
        labels,
        help: (!help.is_empty()).then(|| help.join("\n")),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

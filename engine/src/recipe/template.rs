//! The template language of `config` blocks: a configuration file's text with `{{ NAME }}`
//! where a value goes, and nothing else: no loops, no conditions, no code.
//!
//! ```text
//! <database login="{{ database.toxo.role }}" password="{{ database.toxo.password | xml }}"
//!           connectionUrl="jdbc:postgresql://localhost:{{ database.toxo.port }}/{{ database.toxo.name }}"/>
//! <!-- {{ site }} release {{ var.release }}; a literal brace pair: {{ "{{" }} -->
//! ```
//!
//! A name is a dotted path (`site`, `var.release`, `database.toxo.password`); a filter after
//! `|` escapes the value for where it stands: `xml`, `json` (a JSON string, quotes included),
//! `shell` (one single-quoted word), `url` (percent-encoded). `{{ "text" }}` writes `text`.
//! Parsing keeps each placeholder's byte range, so an unknown name is reported in the template
//! file itself.

use std::ops::Range;

/// The values a `database "NAME"` block gives templates, as `database.NAME.FIELD`.
pub const DATABASE_FIELDS: [&str; 5] = ["name", "role", "password", "host", "port"];

/// What a name in a template refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'a> {
    /// A key of the block's `values`.
    Value(&'a str),
    /// `var.NAME`.
    Variable(&'a str),
    /// `database.NAME.FIELD`.
    Database { block: &'a str, field: &'a str },
    /// Anything else.
    Unknown,
}

/// What `name` refers to, by its shape alone.
pub fn reference(name: &str) -> Reference<'_> {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [value] => Reference::Value(value),
        ["var", variable] => Reference::Variable(variable),
        ["database", block, field] if DATABASE_FIELDS.contains(field) => {
            Reference::Database { block, field }
        }
        _ => Reference::Unknown,
    }
}

/// How a value is escaped where it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Xml,
    Json,
    Shell,
    Url,
}

impl Filter {
    const ALL: [(&'static str, Filter); 4] = [
        ("xml", Filter::Xml),
        ("json", Filter::Json),
        ("shell", Filter::Shell),
        ("url", Filter::Url),
    ];

    fn apply(self, value: &str) -> String {
        match self {
            Filter::Xml => value
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&apos;"),
            Filter::Json => serde_json::to_string(value).expect("a string serializes"),
            Filter::Shell => format!("'{}'", value.replace('\'', "'\\''")),
            Filter::Url => {
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            }
        }
    }
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Value {
        name: String,
        filter: Option<Filter>,
        /// The placeholder's name, in bytes of the template's text.
        span: Range<usize>,
    },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub parts: Vec<Part>,
}

/// A syntax error, with where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub message: String,
    pub span: Range<usize>,
    pub label: &'static str,
}

fn error(message: impl Into<String>, span: Range<usize>, label: &'static str) -> SyntaxError {
    SyntaxError {
        message: message.into(),
        span,
        label,
    }
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Parse a template's text.
pub fn parse(text: &str) -> Result<Template, SyntaxError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("{{") {
        let open = at + found;
        literal.push_str(&text[at..open]);
        let inner_start = open + 2;
        let Some(close) = text[inner_start..].find("}}").map(|i| inner_start + i) else {
            return Err(error(
                "`{{` is not closed by `}}`",
                open..open + 2,
                "opened here",
            ));
        };
        let inner = &text[inner_start..close];
        let trimmed = inner.trim();
        let lead = inner.len() - inner.trim_start().len();
        let start = inner_start + lead;
        if let Some(quoted) = trimmed.strip_prefix('"') {
            let Some(content) = quoted.strip_suffix('"') else {
                return Err(error(
                    "a quoted text in `{{ }}` needs its closing `\"`",
                    start..start + trimmed.len(),
                    "here",
                ));
            };
            literal.push_str(content);
        } else {
            let (name, filter) = match trimmed.split_once('|') {
                Some((name, filter)) => (name.trim_end(), Some(filter.trim())),
                None => (trimmed, None),
            };
            if !is_name(name) {
                return Err(error(
                    if name.is_empty() {
                        "an empty `{{ }}`".to_string()
                    } else {
                        format!("`{name}` is not a value name")
                    },
                    open..close + 2,
                    "write a name such as `var.release` or `database.toxo.name`",
                ));
            }
            let filter = match filter {
                None => None,
                Some(f) => match Filter::ALL.iter().find(|(n, _)| *n == f) {
                    Some((_, filter)) => Some(*filter),
                    None => {
                        let at = start + trimmed.find(f).unwrap_or(0);
                        return Err(error(
                            format!("unknown filter `{f}`: the filters are xml, json, shell, url"),
                            at..at + f.len().max(1),
                            "not a filter",
                        ));
                    }
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Value {
                name: name.to_string(),
                filter,
                span: start..start + name.len(),
            });
        }
        at = close + 2;
    }
    literal.push_str(&text[at..]);
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(Template { parts })
}

impl Template {
    /// The names the template uses, with their spans, in order.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Range<usize>)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value { name, span, .. } => Some((name.as_str(), span)),
            Part::Text(_) => None,
        })
    }

    /// The text with every value filled in by `lookup`; the first name it does not know is
    /// the error.
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<String, &str> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value { name, filter, .. } => {
                    let value = lookup(name).ok_or(name.as_str())?;
                    match filter {
                        Some(filter) => out.push_str(&filter.apply(&value)),
                        None => out.push_str(&value),
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_filters_and_literals() {
        let text =
            "a={{ site }} b={{var.release}} c={{ database.toxo.password | xml }} {{ \"{{\" }}x}}";
        let template = parse(text).unwrap();
        let names: Vec<&str> = template.names().map(|(n, _)| n).collect();
        assert_eq!(names, ["site", "var.release", "database.toxo.password"]);
        let (_, span) = template.names().nth(1).unwrap();
        assert_eq!(&text[span.clone()], "var.release");
        let rendered = template
            .render(|name| {
                Some(match name {
                    "site" => "ToxoDB".into(),
                    "var.release" => "68".into(),
                    _ => "p&<'\"".into(),
                })
            })
            .unwrap();
        assert_eq!(rendered, "a=ToxoDB b=68 c=p&amp;&lt;&apos;&quot; {{x}}");
        assert_eq!(template.render(|_| None), Err("site"));
    }

    #[test]
    fn escaping_filters() {
        assert_eq!(Filter::Shell.apply("it's"), "'it'\\''s'");
        assert_eq!(Filter::Json.apply("a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(Filter::Url.apply("p@ss w/rd"), "p%40ss%20w%2Frd");
    }

    #[test]
    fn syntax_errors_say_where() {
        let text = "ok {{ site\nmore";
        let e = parse(text).unwrap_err();
        assert_eq!(&text[e.span.clone()], "{{");
        let text = "x {{ site | yaml }}";
        let e = parse(text).unwrap_err();
        assert_eq!(&text[e.span.clone()], "yaml");
        assert!(e.message.contains("xml, json, shell, url"));
        let text = "x {{ 1st }} y";
        let e = parse(text).unwrap_err();
        assert_eq!(&text[e.span.clone()], "{{ 1st }}");
        assert!(parse("{{ }}").is_err());
        assert_eq!(
            parse("plain } { text").unwrap().parts,
            [Part::Text("plain } { text".into())]
        );
    }
}

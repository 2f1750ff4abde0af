//! The syntax tree shared by HCL and TOML recipes: bodies of attributes and blocks, with spans.
//!
//! HCL is parsed with hcl-edit, which keeps byte spans. A TOML recipe maps onto the same tree:
//! a top-level table names a block kind, its sub-tables are that kind's labelled blocks
//! (`[step.greet]` is `step "greet" {}`), and inside a block a table or an array of tables is a
//! nested block; strings may hold `${...}` interpolations exactly as in HCL.

use std::ops::Range;

use hcl_edit::expr::Expression;
use hcl_edit::structure::{BlockLabel, Structure};
use hcl_edit::Span as _;

use crate::diag::{Diagnostic, Span};

/// An expression still to be evaluated.
#[derive(Debug, Clone)]
pub enum Expr {
    Hcl(Expression),
    Toml(TomlValue),
}

/// A TOML value with spans, owned.
#[derive(Debug, Clone)]
pub enum TomlValue {
    String(String, Range<usize>),
    Integer(i64, Range<usize>),
    Float(f64, Range<usize>),
    Bool(bool, Range<usize>),
    Array(Vec<TomlValue>, Range<usize>),
    Table(Vec<(String, Range<usize>, TomlValue)>, Range<usize>),
}

impl TomlValue {
    pub fn range(&self) -> Range<usize> {
        match self {
            TomlValue::String(_, r)
            | TomlValue::Integer(_, r)
            | TomlValue::Float(_, r)
            | TomlValue::Bool(_, r)
            | TomlValue::Array(_, r)
            | TomlValue::Table(_, r) => r.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attr {
    pub name: String,
    pub name_span: Span,
    pub expr: Expr,
    /// The value's span.
    #[allow(dead_code)]
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub kind: String,
    pub kind_span: Span,
    pub labels: Vec<(String, Span)>,
    pub body: Body,
    /// The whole block.
    pub span: Span,
}

impl Block {
    /// The header: kind and labels, for "missing attribute" messages.
    pub fn header_span(&self) -> Span {
        match self.labels.last() {
            Some((_, last)) => self.kind_span.join(last),
            None => self.kind_span.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Body {
    pub attrs: Vec<Attr>,
    pub blocks: Vec<Block>,
}

fn span_of(file: usize, range: Option<Range<usize>>) -> Span {
    Span::new(file, range.unwrap_or(0..0))
}

/// Parse one HCL file into a body.
pub fn parse_hcl(file: usize, text: &str) -> Result<Body, Diagnostic> {
    let body = hcl_edit::parser::parse_body(text).map_err(|error| {
        let offset = error.location().offset();
        let end = (offset + 1).min(text.len()).max(offset);
        Diagnostic::error("the recipe is not valid HCL")
            .at(&Span::new(file, offset..end), error.message().to_string())
    })?;
    Ok(convert_hcl_body(file, &body))
}

fn convert_hcl_body(file: usize, body: &hcl_edit::structure::Body) -> Body {
    let mut out = Body::default();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => out.attrs.push(Attr {
                name: attr.key.as_str().to_string(),
                name_span: span_of(file, attr.key.span()),
                span: span_of(file, attr.value.span()),
                expr: Expr::Hcl(attr.value.clone()),
            }),
            Structure::Block(block) => out.blocks.push(Block {
                kind: block.ident.as_str().to_string(),
                kind_span: span_of(file, block.ident.span()),
                labels: block
                    .labels
                    .iter()
                    .map(|label| {
                        let text = match label {
                            BlockLabel::Ident(ident) => ident.as_str().to_string(),
                            BlockLabel::String(s) => s.as_str().to_string(),
                        };
                        (text, span_of(file, label.span()))
                    })
                    .collect(),
                body: convert_hcl_body(file, &block.body),
                span: span_of(file, block.span()),
            }),
        }
    }
    out
}

/// Parse one TOML file into a body.
pub fn parse_toml(file: usize, text: &str) -> Result<Body, Diagnostic> {
    let table = toml::de::DeTable::parse(text).map_err(|error| {
        let range = error.span().unwrap_or(0..0);
        Diagnostic::error("the recipe is not valid TOML")
            .at(&Span::new(file, range), error.message().to_string())
    })?;
    let root = convert_toml(
        &toml::de::DeValue::Table(table.get_ref().clone()),
        table.span(),
    );
    let TomlValue::Table(entries, _) = root else {
        unreachable!("a TOML document is a table")
    };
    let mut body = Body::default();
    for (kind, kind_range, value) in entries {
        let kind_span = Span::new(file, kind_range.clone());
        match value {
            // `[data.http.NAME]`: a type, then a name.
            TomlValue::Table(types, range) if kind == "data" => {
                for (data_type, type_range, names) in types {
                    let type_span = Span::new(file, type_range);
                    let TomlValue::Table(names, _) = names else {
                        body.blocks.push(toml_block(
                            file,
                            &kind,
                            &kind_span,
                            vec![(data_type, type_span)],
                            names,
                            &range,
                        ));
                        continue;
                    };
                    for (name, name_range, inner) in names {
                        let labels = vec![
                            (data_type.clone(), type_span.clone()),
                            (name, Span::new(file, name_range)),
                        ];
                        let inner_range = inner.range();
                        body.blocks.push(toml_block(
                            file,
                            &kind,
                            &kind_span,
                            labels,
                            inner,
                            &inner_range,
                        ));
                    }
                }
            }
            TomlValue::Table(items, range) if LABELLED_KINDS.contains(&kind.as_str()) => {
                for (label, label_range, inner) in items {
                    let label_span = Span::new(file, label_range);
                    body.blocks.push(toml_block(
                        file,
                        &kind,
                        &kind_span,
                        vec![(label, label_span)],
                        inner,
                        &range,
                    ));
                }
            }
            TomlValue::Table(..) => {
                let range = value.range();
                body.blocks
                    .push(toml_block(file, &kind, &kind_span, vec![], value, &range));
            }
            other => {
                let span = Span::new(file, other.range());
                body.attrs.push(Attr {
                    name: kind,
                    name_span: kind_span,
                    expr: Expr::Toml(other),
                    span,
                });
            }
        }
    }
    Ok(body)
}

/// Top-level kinds whose blocks carry one label (used to read TOML's nesting).
pub const LABELLED_KINDS: &[&str] = &[
    "variable", "step", "template", "database", "source", "files", "config", "output",
];

fn toml_block(
    file: usize,
    kind: &str,
    kind_span: &Span,
    labels: Vec<(String, Span)>,
    value: TomlValue,
    range: &Range<usize>,
) -> Block {
    let span = Span::new(file, range.clone());
    let body = match value {
        TomlValue::Table(items, _) => toml_body(file, items),
        other => {
            let span = Span::new(file, other.range());
            Body {
                attrs: vec![Attr {
                    name: "value".into(),
                    name_span: span.clone(),
                    expr: Expr::Toml(other),
                    span,
                }],
                blocks: vec![],
            }
        }
    };
    Block {
        kind: kind.to_string(),
        kind_span: kind_span.clone(),
        labels,
        body,
        span,
    }
}

/// Inside a block: attributes are values; a sub-table is a nested block, and a sub-table whose
/// values are all tables is a set of labelled nested blocks (`[template.base.provision.shell]`).
fn toml_body(file: usize, items: Vec<(String, Range<usize>, TomlValue)>) -> Body {
    let mut body = Body::default();
    for (name, name_range, value) in items {
        let name_span = Span::new(file, name_range);
        match value {
            TomlValue::Table(inner, range) if is_nested_block_table(&name) => {
                let labelled = !inner.is_empty()
                    && inner
                        .iter()
                        .all(|(_, _, v)| matches!(v, TomlValue::Table(..)));
                if labelled && LABELLED_NESTED.contains(&name.as_str()) {
                    for (label, label_range, v) in inner {
                        let r = v.range();
                        body.blocks.push(toml_block(
                            file,
                            &name,
                            &name_span,
                            vec![(label, Span::new(file, label_range))],
                            v,
                            &r,
                        ));
                    }
                } else {
                    body.blocks.push(toml_block(
                        file,
                        &name,
                        &name_span,
                        vec![],
                        TomlValue::Table(inner, range.clone()),
                        &range,
                    ));
                }
            }
            TomlValue::Array(items, _)
                if is_nested_block_table(&name)
                    && items.iter().all(|v| matches!(v, TomlValue::Table(..))) =>
            {
                // `[[template.base.provision]]` with `type = "shell"`: ordered nested blocks.
                for item in items {
                    let TomlValue::Table(mut entries, range) = item else {
                        continue;
                    };
                    let mut labels = vec![];
                    if LABELLED_NESTED.contains(&name.as_str()) {
                        if let Some(pos) = entries.iter().position(|(k, _, v)| {
                            (k == "type" || k == "name") && matches!(v, TomlValue::String(..))
                        }) {
                            let (_, _, label) = entries.remove(pos);
                            if let TomlValue::String(text, r) = label {
                                labels.push((text, Span::new(file, r)));
                            }
                        }
                    }
                    body.blocks.push(toml_block(
                        file,
                        &name,
                        &name_span,
                        labels,
                        TomlValue::Table(entries, range.clone()),
                        &range,
                    ));
                }
            }
            other => {
                let span = Span::new(file, other.range());
                body.attrs.push(Attr {
                    name,
                    name_span,
                    expr: Expr::Toml(other),
                    span,
                });
            }
        }
    }
    body
}

/// Nested blocks that carry a label (`provision "shell"`, `http "home"`).
const LABELLED_NESTED: &[&str] = &["provision", "http", "command"];

/// Names that are nested blocks rather than object-valued attributes, in TOML.
fn is_nested_block_table(name: &str) -> bool {
    matches!(
        name,
        "debootstrap" | "image" | "provision" | "user" | "lock" | "http" | "command"
    )
}

fn convert_toml(value: &toml::de::DeValue<'_>, range: Range<usize>) -> TomlValue {
    use toml::de::DeValue;
    match value {
        DeValue::String(s) => TomlValue::String(s.to_string(), range),
        DeValue::Integer(i) => {
            let n = i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).unwrap_or(0);
            TomlValue::Integer(n, range)
        }
        DeValue::Float(f) => TomlValue::Float(f.as_str().parse().unwrap_or(0.0), range),
        DeValue::Boolean(b) => TomlValue::Bool(*b, range),
        DeValue::Datetime(d) => TomlValue::String(d.to_string(), range),
        DeValue::Array(items) => TomlValue::Array(
            items
                .iter()
                .map(|item| convert_toml(item.get_ref(), item.span()))
                .collect(),
            range,
        ),
        DeValue::Table(table) => TomlValue::Table(
            table
                .iter()
                .map(|(k, v)| {
                    (
                        k.get_ref().to_string(),
                        k.span(),
                        convert_toml(v.get_ref(), v.span()),
                    )
                })
                .collect(),
            range,
        ),
    }
}

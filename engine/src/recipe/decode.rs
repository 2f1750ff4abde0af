//! From a block's syntax to its typed model, with every problem pointed at the recipe text.
//!
//! A block body is evaluated into JSON while a [`SpanIndex`] records where each path came from.
//! The JSON is deserialized into the block's model struct through `serde_path_to_error`, and a
//! failure is translated back: the path finds the span, the serde message becomes a sentence in
//! the recipe's terms ("unknown attribute", "missing required attribute", "did you mean").

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;

use super::eval::Scope;
use super::syntax::{Block, Body};
use super::value::SECRET_MARKER;
use crate::diag::{did_you_mean, Diagnostic, Span};

/// One step of a path into a block: an attribute or nested block name, or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where each part of a decoded block came from.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    /// Path → span of the value (or of the nested block's header).
    values: HashMap<Vec<Seg>, Span>,
    /// Path → span of the attribute name or nested block kind.
    names: HashMap<Vec<Seg>, Span>,
    /// Paths whose value is sensitive.
    secrets: HashSet<Vec<Seg>>,
    /// The block's header.
    pub header: Option<Span>,
}

impl SpanIndex {
    /// The span of the value at `path`, or of the closest enclosing part that has one.
    pub fn value(&self, path: &[Seg]) -> Option<Span> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.values.get(&path[..n]).cloned())
            .or_else(|| self.header.clone())
    }

    /// The span of a name (`after`, `debootstrap`) at `path`.
    pub fn name(&self, path: &[Seg]) -> Option<Span> {
        self.names.get(path).cloned()
    }

    /// Shorthand: the span of `key[index]`.
    pub fn item(&self, key: &str, index: usize) -> Option<Span> {
        self.value(&[Seg::Key(key.into()), Seg::Index(index)])
    }
}

/// The body of `block` decoded into `T`. `what` names the block in messages (`step "build"`).
pub fn decode_block<T: DeserializeOwned>(
    scope: &mut Scope<'_>,
    block: &Block,
    what: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(T, SpanIndex)> {
    let mut index = SpanIndex {
        header: Some(block.header_span()),
        ..SpanIndex::default()
    };
    let mut json = body_to_json(scope, &block.body, &mut Vec::new(), &mut index, diagnostics)?;
    // Where an unknown value's placeholder is refused (a size, a number), decoding goes on
    // without it: a block that is valid whatever the data block answers stays valid.
    let mut cleared: HashSet<Vec<Seg>> = HashSet::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(&json) {
            Ok(value) => return Some((value, index)),
            Err(error) => error,
        };
        let path: Vec<Seg> = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                _ => None,
            })
            .collect();
        let message = error.inner().to_string();
        let unknown = !message.starts_with("unknown field")
            && index
                .values
                .get(&path)
                .is_some_and(|span| scope.is_unknown(span));
        if unknown {
            // Leave the attribute out (its default applies), or a list item null; a second
            // refusal at the same place ends decoding, with nothing to report.
            if cleared.insert(path.clone()) && clear(&mut json, &path) {
                continue;
            }
            return None;
        }
        if let Some(field) = quoted_after(&message, "missing field ") {
            let mut field_path = path.clone();
            field_path.push(Seg::Key(field.to_string()));
            if cleared.contains(&field_path) {
                return None;
            }
        }
        diagnostics.push(translate(&message, &path, &index, block, what));
        return None;
    }
}

/// Remove the attribute at `path` from `json`, or make the list item there null.
fn clear(json: &mut serde_json::Value, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let mut current = json;
    for seg in parent {
        current = match (seg, current) {
            (Seg::Key(k), serde_json::Value::Object(map)) => match map.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), serde_json::Value::Array(items)) => match items.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, current) {
        (Seg::Key(k), serde_json::Value::Object(map)) => map.remove(k).is_some(),
        (Seg::Index(i), serde_json::Value::Array(items)) if *i < items.len() => {
            items[*i] = serde_json::Value::Null;
            true
        }
        _ => false,
    }
}

fn body_to_json(
    scope: &mut Scope<'_>,
    body: &Body,
    path: &mut Vec<Seg>,
    index: &mut SpanIndex,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<serde_json::Value> {
    let mut map = serde_json::Map::new();
    let mut ok = true;
    let mut seen: HashMap<&str, &Span> = HashMap::new();
    for attr in &body.attrs {
        if let Some(first) = seen.get(attr.name.as_str()) {
            diagnostics.push(
                Diagnostic::error(format!("attribute `{}` is given twice", attr.name))
                    .at(&attr.name_span, "given again here")
                    .also(first, "first given here"),
            );
            ok = false;
            continue;
        }
        seen.insert(&attr.name, &attr.name_span);
        path.push(Seg::Key(attr.name.clone()));
        index.names.insert(path.clone(), attr.name_span.clone());
        match scope.eval(&attr.expr, &attr.span) {
            Ok(value) => {
                record_spans(&value, path, index);
                map.insert(attr.name.clone(), value.value.to_json());
            }
            Err(d) => {
                diagnostics.push(d);
                ok = false;
            }
        }
        path.pop();
    }
    // Nested blocks: unlabelled ones are objects, labelled ones lists of objects.
    let mut lists: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for block in &body.blocks {
        if let Some(first) = seen.get(block.kind.as_str()) {
            if block.labels.is_empty() || !lists.contains_key(&block.kind) {
                diagnostics.push(
                    Diagnostic::error(format!("`{}` is given twice", block.kind))
                        .at(&block.kind_span, "given again here")
                        .also(first, "first given here"),
                );
                ok = false;
                continue;
            }
        }
        if block.labels.len() > 1 {
            diagnostics.push(
                Diagnostic::error(format!("a `{}` block takes at most one label", block.kind))
                    .at(&block.labels[1].1, "extra label"),
            );
            ok = false;
            continue;
        }
        seen.entry(&block.kind).or_insert(&block.kind_span);
        path.push(Seg::Key(block.kind.clone()));
        index.names.insert(path.clone(), block.kind_span.clone());
        if let Some((label, label_span)) = block.labels.first() {
            let list = lists.entry(block.kind.clone()).or_default();
            if list.is_empty() {
                order.push(block.kind.clone());
            }
            path.push(Seg::Index(list.len()));
            index.values.insert(path.clone(), block.header_span());
            path.push(Seg::Key("$label".into()));
            index.values.insert(path.clone(), label_span.clone());
            path.pop();
            match body_to_json(scope, &block.body, path, index, diagnostics) {
                Some(serde_json::Value::Object(mut inner)) => {
                    inner.insert("$label".into(), serde_json::Value::String(label.clone()));
                    list.push(serde_json::Value::Object(inner));
                }
                _ => ok = false,
            }
            path.pop();
        } else {
            index.values.insert(path.clone(), block.header_span());
            match body_to_json(scope, &block.body, path, index, diagnostics) {
                Some(inner) => {
                    map.insert(block.kind.clone(), inner);
                }
                None => ok = false,
            }
        }
        path.pop();
    }
    for kind in order {
        if let Some(list) = lists.remove(&kind) {
            map.insert(kind, serde_json::Value::Array(list));
        }
    }
    ok.then_some(serde_json::Value::Object(map))
}

fn record_spans(value: &super::value::SValue, path: &mut Vec<Seg>, index: &mut SpanIndex) {
    use super::value::Value;
    index.values.insert(path.clone(), value.span.clone());
    match &value.value {
        Value::Secret(_) => {
            index.secrets.insert(path.clone());
        }
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                record_spans(item, path, index);
                path.pop();
            }
        }
        Value::Object(items) => {
            for (k, v) in items {
                path.push(Seg::Key(k.clone()));
                record_spans(v, path, index);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Text between the first pair of backticks after `prefix`.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    rest.split('`').next()
}

/// The candidates serde lists after "expected one of" or "expected".
fn expected_list(message: &str) -> Vec<String> {
    let Some(pos) = message.find("expected") else {
        return vec![];
    };
    message[pos..]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.starts_with('$'))
        .map(str::to_string)
        .collect()
}

fn serde_type_words(message: &str) -> String {
    message
        .replace("a sequence", "a list")
        .replace("sequence", "list")
        .replace("a map", "an object")
        .replace("struct ", "block ")
        .replace("integer", "number")
        .replace("u32", "number")
        .replace("u16", "number")
        .replace("u64", "number")
        .replace("i32", "number")
        .replace("`$label`", "the label")
}

/// "`step "a"`" or "`template "base"` at `debootstrap`", for messages.
fn inside_text(what: &str, path: &[Seg]) -> String {
    let place = path
        .iter()
        .map(|s| match s {
            Seg::Key(k) => format!(".{k}"),
            Seg::Index(i) => format!("[{i}]"),
        })
        .collect::<String>();
    if path.is_empty() {
        format!("`{what}`")
    } else {
        format!("`{what}` at `{}`", place.trim_start_matches('.'))
    }
}

fn translate(
    message: &str,
    path: &[Seg],
    index: &SpanIndex,
    block: &Block,
    what: &str,
) -> Diagnostic {
    let header = block.header_span();
    let inside = inside_text(what, path);
    if let Some(field) = quoted_after(message, "unknown field ") {
        // serde_path_to_error's path may already end with the unknown field.
        let mut field_path = path.to_vec();
        if field_path.last() == Some(&Seg::Key(field.to_string())) {
            field_path.pop();
        }
        let inside = inside_text(what, &field_path);
        field_path.push(Seg::Key(field.to_string()));
        let span = index.name(&field_path).unwrap_or(header);
        let expected = expected_list(message);
        let known = if expected.is_empty() {
            "it takes no attributes".to_string()
        } else {
            format!("it takes: {}", expected.join(", "))
        };
        return Diagnostic::error(format!("unknown attribute `{field}` in {inside}"))
            .at(&span, "not known here")
            .detail(known)
            .help_opt(did_you_mean(field, expected.iter().map(String::as_str)));
    }
    if let Some(field) = quoted_after(message, "missing field ") {
        let span = index.value(path).unwrap_or(header);
        let what_missing = if field == "$label" {
            "a label".to_string()
        } else {
            format!("the required attribute `{field}`")
        };
        return Diagnostic::error(format!("{inside} is missing {what_missing}"))
            .at(&span, format!("add `{field} = ...` here"));
    }
    if let Some(variant) = quoted_after(message, "unknown variant ") {
        let mut label_path = path.to_vec();
        label_path.push(Seg::Key("$label".into()));
        let span = index
            .values
            .get(&label_path)
            .cloned()
            .or_else(|| index.value(path))
            .unwrap_or(header);
        let expected = expected_list(message);
        return Diagnostic::error(format!("`{variant}` is not allowed in {inside}"))
            .at(&span, "not one of the allowed values")
            .detail(format!("allowed: {}", expected.join(", ")))
            .help_opt(did_you_mean(variant, expected.iter().map(String::as_str)));
    }
    let span = index.value(path).unwrap_or(header);
    if index.secrets.contains(path)
        || message.contains(SECRET_MARKER)
        || (message.contains("invalid type: map")
            && index.secrets.iter().any(|p| p.starts_with(path)))
    {
        return Diagnostic::error(format!("{inside} cannot hold a sensitive value"))
            .at(&span, "this value is sensitive")
            .detail("it would be printed in plans and stored in clear")
            .help("if the value is not secret, wrap it in nonsensitive(...)");
    }
    let last = path.iter().rev().find_map(|s| match s {
        Seg::Key(k) => Some(k.as_str()),
        _ => None,
    });
    let summary = match last {
        Some(name) => format!("wrong type for `{name}` in `{what}`"),
        None => format!("`{what}` is not valid"),
    };
    Diagnostic::error(summary).at(&span, serde_type_words(message))
}

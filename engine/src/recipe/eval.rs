//! Expression evaluation: literals, string templates, `var.*`, `local.*`, `data.*`, references
//! to other blocks, operators, conditionals and the built-in functions.
//!
//! A value computed from an unknown one ([`Value::Unknown`], a data block not fetched) is
//! unknown too; the spans of unknown values are kept, so that problems found in them (a
//! placeholder of the wrong type) are not reported.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use hcl_edit::expr::{BinaryOperator, Expression, ObjectKey, TraversalOperator, UnaryOperator};
use hcl_edit::template::{Element, Template};
use hcl_edit::Span as _;

use super::data::{self, Fetched, DATA_TYPES};
use super::syntax::{Attr, Block, Expr, TomlValue};
use super::value::{SValue, Secret, Value};
use super::{DataHttpBlock, Named};
use crate::diag::{did_you_mean, Diagnostic, Sources, Span};

/// Block kinds that may be named in a reference (`after = [step.fetch]`).
pub const REFERENCEABLE: &[&str] = &[
    "step", "template", "database", "source", "files", "config", "output",
];

/// The functions a recipe may call.
pub const FUNCTIONS: &[&str] = &[
    "env",
    "file",
    "sensitive",
    "nonsensitive",
    "databaseinfo",
    "lower",
    "upper",
    "trimspace",
    "join",
    "concat",
    "length",
];

/// Where the environment comes from: the process, or a fixed map in tests.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// What an expression can see.
pub struct Scope<'a> {
    pub sources: &'a Sources,
    pub base_dir: PathBuf,
    pub env: &'a EnvLookup,
    pub vars: BTreeMap<String, SValue>,
    locals: HashMap<String, Attr>,
    local_values: HashMap<String, SValue>,
    /// The locals and data blocks being evaluated (`local.NAME`, `data.http.NAME`), for cycles.
    evaluating: Vec<String>,
    /// Files read by `file()`, with their contents' digests: part of the recipe's identity.
    pub files_read: BTreeMap<PathBuf, crate::hash::Digest>,
    /// In a `module` block with `for_each`: the instance's `each.key` and `each.value`.
    pub each: Option<(SValue, SValue)>,
    /// Whether data blocks are fetched (plan) or their values left unknown (validate).
    pub fetch_data: bool,
    /// The data blocks written, by `(type, name)`, evaluated on first use.
    data_declared: BTreeMap<(String, String), Block>,
    /// `data.TYPE.NAME` → its value, once evaluated.
    data_values: HashMap<String, SValue>,
    /// `data.TYPE.NAME` → the decoded block, and what it fetched.
    pub data_blocks: HashMap<String, Named<DataHttpBlock>>,
    pub fetched: HashMap<String, Fetched>,
    /// Problems found in data blocks, reported with the others.
    pub diagnostics: Vec<Diagnostic>,
    /// Spans of expressions whose value is unknown.
    unknown: Vec<Span>,
    /// Inside a TOML string's template, whose spans are relative to the string: not noted.
    in_toml_string: bool,
}

type EvalResult = Result<SValue, Diagnostic>;

impl<'a> Scope<'a> {
    pub fn new(sources: &'a Sources, base_dir: &Path, env: &'a EnvLookup) -> Scope<'a> {
        Scope {
            sources,
            base_dir: base_dir.to_path_buf(),
            env,
            vars: BTreeMap::new(),
            locals: HashMap::new(),
            local_values: HashMap::new(),
            evaluating: Vec::new(),
            files_read: BTreeMap::new(),
            each: None,
            fetch_data: true,
            data_declared: BTreeMap::new(),
            data_values: HashMap::new(),
            data_blocks: HashMap::new(),
            fetched: HashMap::new(),
            diagnostics: Vec::new(),
            unknown: Vec::new(),
            in_toml_string: false,
        }
    }

    /// Declare a `data "TYPE" "NAME"` block (its type and name already checked); it is
    /// evaluated, and fetched, when first used.
    pub fn declare_data(&mut self, block: Block) {
        let key = (block.labels[0].0.clone(), block.labels[1].0.clone());
        self.data_declared.insert(key, block);
    }

    /// The value of `data.TYPE.NAME`, evaluating (and fetching) the block the first time.
    pub fn data(&mut self, kind: &str, name: &str, span: &Span) -> EvalResult {
        let id = format!("data.{kind}.{name}");
        if let Some(v) = self.data_values.get(&id) {
            return Ok(v.clone());
        }
        let Some(block) = self
            .data_declared
            .get(&(kind.to_string(), name.to_string()))
            .cloned()
        else {
            let names: Vec<&str> = self
                .data_declared
                .keys()
                .filter(|(k, _)| k == kind)
                .map(|(_, n)| n.as_str())
                .collect();
            return Err(Diagnostic::error(format!(
                "the recipe has no `data \"{kind}\" \"{name}\"`"
            ))
            .at(span, "no such data block")
            .help_opt(did_you_mean(name, names.iter().copied())));
        };
        if let Some(cycle) = self.cycle_through(&id, span, &block.header_span()) {
            return Err(cycle);
        }
        self.evaluating.push(id.clone());
        let value = data::evaluate(self, &block, &id);
        self.evaluating.pop();
        self.data_values.insert(id, value.clone());
        Ok(value)
    }

    /// The error of a reference at `span` to `id` (a local or a data block, defined at `defined`)
    /// while `id` is itself being evaluated: a cycle.
    fn cycle_through(&self, id: &str, span: &Span, defined: &Span) -> Option<Diagnostic> {
        let pos = self.evaluating.iter().position(|n| n == id)?;
        let cycle: Vec<&str> = self.evaluating[pos..]
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(id))
            .collect();
        let what = if cycle.iter().any(|n| n.starts_with("data.")) {
            "data blocks and locals"
        } else {
            "locals"
        };
        Some(
            Diagnostic::error(format!(
                "{what} refer to each other in a cycle: {}",
                cycle.join(" -> ")
            ))
            .at(span, "this reference closes the cycle")
            .also(defined, "defined here"),
        )
    }

    /// Whether `span` lies within an expression whose value is unknown.
    pub fn is_unknown(&self, span: &Span) -> bool {
        self.unknown.iter().any(|u| {
            u.file == span.file
                && !u.range.is_empty()
                && u.range.start <= span.range.start
                && span.range.end <= u.range.end
        })
    }

    /// Whether an expression within `span` has an unknown value.
    pub fn holds_unknown(&self, span: &Span) -> bool {
        self.unknown.iter().any(|u| {
            u.file == span.file
                && span.range.start <= u.range.start
                && u.range.end <= span.range.end
        })
    }

    /// Note where an unknown value came out.
    fn noted(&mut self, result: EvalResult) -> EvalResult {
        if let Ok(v) = &result {
            if v.value.is_unknown() && !v.span.range.is_empty() && !self.in_toml_string {
                self.unknown.push(v.span.clone());
            }
        }
        result
    }

    fn unknown_value(span: &Span) -> EvalResult {
        Ok(SValue {
            value: Value::Unknown,
            span: span.clone(),
        })
    }

    /// Declare a local; it is evaluated when first used.
    pub fn declare_local(&mut self, attr: Attr) -> Result<(), Diagnostic> {
        if let Some(first) = self.locals.get(&attr.name) {
            return Err(
                Diagnostic::error(format!("local `{}` is defined twice", attr.name))
                    .at(&attr.name_span, "defined again here")
                    .also(&first.name_span, "first defined here"),
            );
        }
        self.locals.insert(attr.name.clone(), attr);
        Ok(())
    }

    pub fn local_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.locals.keys().cloned().collect();
        names.sort();
        names
    }

    fn local(&mut self, name: &str, span: &Span) -> EvalResult {
        if let Some(v) = self.local_values.get(name) {
            return Ok(v.clone());
        }
        let Some(attr) = self.locals.get(name).cloned() else {
            let names = self.local_names();
            return Err(Diagnostic::error(format!("there is no local `{name}`"))
                .at(span, "not defined in any `locals` block")
                .help_opt(did_you_mean(name, names.iter().map(String::as_str))));
        };
        let id = format!("local.{name}");
        if let Some(cycle) = self.cycle_through(&id, span, &attr.name_span) {
            return Err(cycle);
        }
        self.evaluating.push(id);
        let result = self.eval(&attr.expr, &attr.span);
        self.evaluating.pop();
        let value = result?;
        self.local_values.insert(name.to_string(), value.clone());
        Ok(value)
    }

    /// The source text under a span, for secret identities.
    fn text(&self, span: &Span) -> String {
        let text = &self.sources.get(span.file).text;
        text.get(span.range.clone())
            .unwrap_or("")
            .trim()
            .to_string()
    }

    /// Evaluate an attribute's expression.
    pub fn eval(&mut self, expr: &Expr, span: &Span) -> EvalResult {
        match expr {
            Expr::Hcl(e) => self.eval_hcl(e, span.file),
            Expr::Toml(t) => self.eval_toml(t, span.file),
        }
    }

    fn eval_toml(&mut self, value: &TomlValue, file: usize) -> EvalResult {
        let result = self.eval_toml_value(value, file);
        self.noted(result)
    }

    fn eval_toml_value(&mut self, value: &TomlValue, file: usize) -> EvalResult {
        let span = Span::new(file, value.range());
        let v = match value {
            TomlValue::String(s, _) if s.contains("${") || s.contains("%{") => {
                let template = hcl_edit::parser::parse_template(s).map_err(|e| {
                    Diagnostic::error("this string is not a valid template")
                        .at(&span, e.message().to_string())
                })?;
                // Spans inside a TOML string's template are relative to the string: point at
                // the whole string instead.
                let outer = std::mem::replace(&mut self.in_toml_string, true);
                let result = self.eval_template(&template, &span, true);
                self.in_toml_string = outer;
                return result
                    .map(|mut v| {
                        v.span = span.clone();
                        v
                    })
                    .map_err(|mut d| {
                        if let Some((s, _)) = d.subject.as_mut() {
                            *s = span.clone();
                        }
                        d
                    });
            }
            TomlValue::String(s, _) => Value::String(s.clone()),
            TomlValue::Integer(i, _) => Value::Number((*i).into()),
            TomlValue::Float(f, _) => Value::Number(
                serde_json::Number::from_f64(*f).unwrap_or_else(|| serde_json::Number::from(0)),
            ),
            TomlValue::Bool(b, _) => Value::Bool(*b),
            TomlValue::Array(items, _) => Value::List(
                items
                    .iter()
                    .map(|i| self.eval_toml(i, file))
                    .collect::<Result<_, _>>()?,
            ),
            TomlValue::Table(items, _) => Value::Object(
                items
                    .iter()
                    .map(|(k, _, v)| Ok((k.clone(), self.eval_toml(v, file)?)))
                    .collect::<Result<_, Diagnostic>>()?,
            ),
        };
        Ok(SValue { value: v, span })
    }

    fn span(&self, file: usize, e: &impl hcl_edit::Span) -> Span {
        Span::new(file, e.span().unwrap_or(0..0))
    }

    fn eval_hcl(&mut self, expr: &Expression, file: usize) -> EvalResult {
        let result = self.eval_hcl_value(expr, file);
        self.noted(result)
    }

    fn eval_hcl_value(&mut self, expr: &Expression, file: usize) -> EvalResult {
        let span = self.span(file, expr);
        let value = match expr {
            Expression::Null(_) => Value::Null,
            Expression::Bool(b) => Value::Bool(*b.value()),
            Expression::Number(n) => {
                let n = n.value();
                let number = if let Some(i) = n.as_i64() {
                    serde_json::Number::from(i)
                } else if let Some(u) = n.as_u64() {
                    serde_json::Number::from(u)
                } else {
                    n.as_f64()
                        .and_then(serde_json::Number::from_f64)
                        .unwrap_or_else(|| serde_json::Number::from(0))
                };
                Value::Number(number)
            }
            Expression::String(s) => Value::String(s.value().clone()),
            Expression::Array(items) => Value::List(
                items
                    .iter()
                    .map(|i| self.eval_hcl(i, file))
                    .collect::<Result<_, _>>()?,
            ),
            Expression::Object(object) => {
                let mut items: Vec<(String, SValue)> = Vec::new();
                for (key, value) in object.iter() {
                    let name = match key {
                        ObjectKey::Ident(ident) => ident.as_str().to_string(),
                        ObjectKey::Expression(e) => {
                            let k = self.eval_hcl(e, file)?;
                            if k.value.is_unknown() {
                                return Self::unknown_value(&span);
                            }
                            match k.value.as_interpolated() {
                                Some(s) if !k.value.is_sensitive() => s,
                                _ => {
                                    return Err(Diagnostic::error(
                                        "an object key must be a plain string",
                                    )
                                    .at(&k.span, format!("this is a {}", k.value.type_name())))
                                }
                            }
                        }
                    };
                    let v = self.eval_hcl(value.expr(), file)?;
                    if let Some((_, first)) = items.iter().find(|(k, _)| *k == name) {
                        return Err(Diagnostic::error(format!("key `{name}` is given twice"))
                            .at(&v.span, "given again here")
                            .also(&first.span, "first given here"));
                    }
                    items.push((name, v));
                }
                Value::Object(items)
            }
            Expression::StringTemplate(t) => return self.eval_template(t, &span, false),
            Expression::HeredocTemplate(h) => {
                let mut h = (**h).clone();
                h.dedent();
                return self.eval_template(&h.template, &span, false);
            }
            Expression::Parenthesis(p) => return self.eval_hcl(p.inner(), file),
            Expression::Variable(v) => {
                let name = v.as_str();
                return Err(self.unknown_root(name, &span));
            }
            Expression::Traversal(t) => return self.eval_traversal(t, file, &span),
            Expression::FuncCall(call) => return self.eval_call(call, file, &span),
            Expression::Conditional(c) => {
                let cond = self.eval_hcl(&c.cond_expr, file)?;
                return match cond.value {
                    Value::Unknown => Self::unknown_value(&span),
                    Value::Bool(true) => self.eval_hcl(&c.true_expr, file),
                    Value::Bool(false) => self.eval_hcl(&c.false_expr, file),
                    other => Err(Diagnostic::error("a condition must be a bool")
                        .at(&cond.span, format!("this is a {}", other.type_name()))),
                };
            }
            Expression::UnaryOp(op) => {
                let v = self.eval_hcl(&op.expr, file)?;
                match (op.operator.value(), &v.value) {
                    (_, Value::Unknown) => Value::Unknown,
                    (UnaryOperator::Not, Value::Bool(b)) => Value::Bool(!b),
                    (UnaryOperator::Neg, Value::Number(n)) => {
                        Value::Number(number_op(n, &0.into(), |a, _| -a).unwrap_or(n.clone()))
                    }
                    (_, other) => {
                        return Err(Diagnostic::error("this operator does not apply here")
                            .at(&v.span, format!("this is a {}", other.type_name())))
                    }
                }
            }
            Expression::BinaryOp(op) => {
                let lhs = self.eval_hcl(&op.lhs_expr, file)?;
                let rhs = self.eval_hcl(&op.rhs_expr, file)?;
                if lhs.value.is_unknown() || rhs.value.is_unknown() {
                    Value::Unknown
                } else {
                    binary(op.operator.value(), &lhs, &rhs, &span)?
                }
            }
            Expression::ForExpr(_) => {
                return Err(Diagnostic::error("`for` expressions are not supported yet")
                    .at(&span, "not supported"))
            }
        };
        Ok(SValue { value, span })
    }

    fn unknown_root(&self, name: &str, span: &Span) -> Diagnostic {
        let mut roots = vec!["var", "local", "data"];
        roots.extend_from_slice(REFERENCEABLE);
        Diagnostic::error(format!("unknown name `{name}`"))
            .at(span, "not a variable, local, data or block reference")
            .help_opt(did_you_mean(name, roots.iter().copied()).or_else(|| {
                Some(
                    "strings are quoted: \"...\"; variables are `var.NAME`, locals `local.NAME`"
                        .into(),
                )
            }))
    }

    fn eval_traversal(
        &mut self,
        t: &hcl_edit::expr::Traversal,
        file: usize,
        span: &Span,
    ) -> EvalResult {
        let mut ops = t.operators.iter().peekable();
        // What was traversed so far, for messages (`data.http.d.body.source`).
        let mut traversed = match &t.expr {
            Expression::Variable(root) => root.as_str().to_string(),
            _ => "the value".to_string(),
        };
        let mut from_data = false;
        let root_value = match &t.expr {
            Expression::Variable(root) => {
                let root_name = root.as_str();
                let first = ops.next();
                let attr_name = match first.map(|o| o.value()) {
                    Some(TraversalOperator::GetAttr(ident)) => ident.as_str().to_string(),
                    _ => {
                        return Err(Diagnostic::error(format!(
                            "`{root_name}` needs a name after it"
                        ))
                        .at(span, format!("write `{root_name}.NAME`")))
                    }
                };
                let first_span = Span::new(file, root.span().unwrap_or(0..0)).join(&Span::new(
                    file,
                    first.and_then(|o| o.span()).unwrap_or(0..0),
                ));
                traversed = format!("{root_name}.{attr_name}");
                match root_name {
                    "var" => match self.vars.get(&attr_name) {
                        Some(v) => SValue {
                            value: v.value.clone(),
                            span: first_span,
                        },
                        None => {
                            return Err(Diagnostic::error(format!(
                                "there is no variable `{attr_name}`"
                            ))
                            .at(&first_span, "not declared by any `variable` block")
                            .help_opt(did_you_mean(
                                &attr_name,
                                self.vars.keys().map(String::as_str),
                            )))
                        }
                    },
                    "local" => {
                        let v = self.local(&attr_name, &first_span)?;
                        SValue {
                            value: v.value,
                            span: first_span,
                        }
                    }
                    "each" => match (&self.each, attr_name.as_str()) {
                        (Some((key, _)), "key") => SValue {
                            value: key.value.clone(),
                            span: first_span,
                        },
                        (Some((_, value)), "value") => SValue {
                            value: value.value.clone(),
                            span: first_span,
                        },
                        (Some(_), other) => {
                            return Err(Diagnostic::error(format!("`each` has no `{other}`"))
                                .at(&first_span, "`each.key` or `each.value`"))
                        }
                        (None, _) => {
                            return Err(Diagnostic::error(
                                "`each` is known only in a `module` block with `for_each`",
                            )
                            .at(&first_span, "no `for_each` here"))
                        }
                    },
                    "data" => {
                        if !DATA_TYPES.contains(&attr_name.as_str()) {
                            return Err(Diagnostic::error(format!(
                                "there is no data type `{attr_name}`"
                            ))
                            .at(
                                &first_span,
                                format!("data types: {}", DATA_TYPES.join(", ")),
                            )
                            .help_opt(did_you_mean(&attr_name, DATA_TYPES.iter().copied())));
                        }
                        let name_op = ops.next();
                        let Some(TraversalOperator::GetAttr(name)) = name_op.map(|o| o.value())
                        else {
                            return Err(Diagnostic::error(format!(
                                "`data.{attr_name}` needs a block name after it"
                            ))
                            .at(span, format!("write `data.{attr_name}.NAME`")));
                        };
                        let name_span = first_span.join(&Span::new(
                            file,
                            name_op.and_then(|o| o.span()).unwrap_or(0..0),
                        ));
                        traversed = format!("data.{attr_name}.{}", name.as_str());
                        from_data = true;
                        let v = self.data(&attr_name, name.as_str(), &name_span)?;
                        SValue {
                            value: v.value,
                            span: name_span,
                        }
                    }
                    kind if REFERENCEABLE.contains(&kind) => {
                        // A reference to another block: it evaluates to its id, `kind.name[.part]`.
                        let mut id = format!("{kind}.{attr_name}");
                        for op in ops {
                            match op.value() {
                                TraversalOperator::GetAttr(ident) => {
                                    id.push('.');
                                    id.push_str(ident.as_str());
                                }
                                _ => {
                                    return Err(Diagnostic::error(
                                        "a block reference takes only names",
                                    )
                                    .at(span, "write `kind.name` or `kind.name.part`"))
                                }
                            }
                        }
                        return Ok(SValue {
                            value: Value::String(id),
                            span: span.clone(),
                        });
                    }
                    other => return Err(self.unknown_root(other, &first_span)),
                }
            }
            other => self.eval_hcl(other, file)?,
        };
        let mut current = root_value;
        for op in ops {
            if current.value.is_unknown() {
                return Self::unknown_value(span);
            }
            let op_span = Span::new(file, op.span().unwrap_or(0..0));
            let path = traversed.clone();
            current = match op.value() {
                TraversalOperator::GetAttr(ident) => {
                    let name = ident.as_str();
                    match &current.value {
                        Value::Object(items) => match items.iter().find(|(k, _)| k == name) {
                            Some((_, v)) => v.clone(),
                            None => return Err(missing_key(name, &path, items, &op_span)),
                        },
                        other => {
                            return Err(Diagnostic::error(format!(
                                "cannot take `.{name}` of `{path}`, a {}",
                                other.type_name()
                            ))
                            .at(&op_span, "not an object"))
                        }
                    }
                }
                TraversalOperator::Index(index) => {
                    let i = self.eval_hcl(index, file)?;
                    if i.value.is_unknown() {
                        return Self::unknown_value(span);
                    }
                    index_value(&current, &i, &path, &op_span)?
                }
                TraversalOperator::LegacyIndex(i) => {
                    let i = SValue {
                        value: Value::Number((*i.value()).into()),
                        span: op_span.clone(),
                    };
                    index_value(&current, &i, &path, &op_span)?
                }
                TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => {
                    return Err(Diagnostic::error("splat expressions are not supported yet")
                        .at(&op_span, "not supported"))
                }
            };
            traversed.push_str(&match op.value() {
                TraversalOperator::GetAttr(ident) => format!(".{}", ident.as_str()),
                TraversalOperator::LegacyIndex(i) => format!(".{}", i.value()),
                TraversalOperator::Index(Expression::Number(n)) => format!("[{}]", n.value()),
                TraversalOperator::Index(Expression::String(k)) => format!("[\"{}\"]", k.value()),
                _ => "[...]".to_string(),
            });
        }
        // A fetched document's values point at the reference that took them.
        let value = if from_data {
            respan(current.value, span)
        } else {
            current.value
        };
        Ok(SValue {
            value,
            span: span.clone(),
        })
    }

    fn eval_template(&mut self, template: &Template, span: &Span, relative: bool) -> EvalResult {
        let mut out = String::new();
        let mut sensitive = false;
        let mut unknown = false;
        let mut parts = Vec::new();
        for element in template.iter() {
            match element {
                Element::Literal(text) => out.push_str(text.value()),
                Element::Interpolation(interp) => {
                    let v = self.eval_hcl(&interp.expr, span.file)?;
                    if v.value.is_unknown() {
                        unknown = true;
                        continue;
                    }
                    sensitive |= v.value.is_sensitive();
                    parts.extend(v.value.secret_parts());
                    match v.value.as_interpolated() {
                        Some(s) => out.push_str(&s),
                        None => {
                            let at = if relative {
                                span.clone()
                            } else {
                                v.span.clone()
                            };
                            return Err(Diagnostic::error(format!(
                                "a {} cannot be interpolated into a string",
                                v.value.type_name()
                            ))
                            .at(&at, "not a string, number or bool"));
                        }
                    }
                }
                Element::Directive(_) => {
                    return Err(Diagnostic::error(
                        "template directives (`%{...}`) are not supported yet",
                    )
                    .at(span, "not supported"))
                }
            }
        }
        let value = if unknown {
            Value::Unknown
        } else if sensitive {
            Value::Secret(Secret::composed(self.text(span), out, parts))
        } else {
            Value::String(out)
        };
        Ok(SValue {
            value,
            span: span.clone(),
        })
    }

    fn eval_call(
        &mut self,
        call: &hcl_edit::expr::FuncCall,
        file: usize,
        span: &Span,
    ) -> EvalResult {
        let name = call.name.name.as_str();
        let name_span = Span::new(file, call.name.name.span().unwrap_or(0..0));
        let args: Vec<SValue> = call
            .args
            .iter()
            .map(|a| self.eval_hcl(a, file))
            .collect::<Result<_, _>>()?;
        let unknown_item = |v: &SValue| match &v.value {
            Value::List(items) => items.iter().any(|i| i.value.is_unknown()),
            other => other.is_unknown(),
        };
        if FUNCTIONS.contains(&name) && args.iter().any(unknown_item) {
            return Self::unknown_value(span);
        }
        let arity = |min: usize, max: usize| -> Result<(), Diagnostic> {
            if args.len() < min || args.len() > max {
                let wanted = if min == max {
                    format!("{min}")
                } else {
                    format!("{min} to {max}")
                };
                return Err(Diagnostic::error(format!(
                    "`{name}()` takes {wanted} argument(s), not {}",
                    args.len()
                ))
                .at(span, "here"));
            }
            Ok(())
        };
        let string_arg = |i: usize| -> Result<String, Diagnostic> {
            match &args[i].value {
                Value::String(s) => Ok(s.clone()),
                other => Err(Diagnostic::error(format!(
                    "argument {} of `{name}()` must be a plain string",
                    i + 1
                ))
                .at(&args[i].span, format!("this is a {}", other.type_name()))),
            }
        };
        let value = match name {
            "env" => {
                arity(1, 2)?;
                let var = string_arg(0)?;
                let value = match ((self.env)(&var), args.get(1)) {
                    (Some(v), _) => v,
                    (None, Some(default)) => match default.value.as_interpolated() {
                        Some(d) => d,
                        None => string_arg(1)?,
                    },
                    (None, None) => {
                        return Err(Diagnostic::error(format!(
                            "the environment variable `{var}` is not set"
                        ))
                        .at(span, "read here")
                        .help(format!(
                            "set `{var}` before running vmbuild, or give a default: env(\"{var}\", \"...\")"
                        )))
                    }
                };
                Value::Secret(Secret::new(format!("env(\"{var}\")"), value))
            }
            "file" => {
                arity(1, 1)?;
                let rel = string_arg(0)?;
                let path = self.base_dir.join(&rel);
                let bytes = std::fs::read(&path).map_err(|e| {
                    Diagnostic::error(format!("cannot read `{rel}`: {e}"))
                        .at(&args[0].span, "read here")
                        .detail(format!(
                            "paths are relative to the recipe folder `{}`",
                            self.base_dir.display()
                        ))
                })?;
                self.files_read
                    .insert(PathBuf::from(&rel), crate::hash::Digest::of_bytes(&bytes));
                let text = String::from_utf8(bytes).map_err(|_| {
                    Diagnostic::error(format!("`{rel}` is not UTF-8 text"))
                        .at(&args[0].span, "read here")
                })?;
                Value::String(text)
            }
            "sensitive" => {
                arity(1, 1)?;
                match &args[0].value {
                    Value::Secret(s) => Value::Secret(s.clone()),
                    other => match other.as_interpolated() {
                        Some(s) => Value::Secret(Secret::new(self.text(span), s)),
                        None => {
                            return Err(Diagnostic::error("`sensitive()` takes a string")
                                .at(&args[0].span, format!("this is a {}", other.type_name())))
                        }
                    },
                }
            }
            "nonsensitive" => {
                arity(1, 1)?;
                match &args[0].value {
                    Value::Secret(s) => Value::String(s.reveal().to_string()),
                    other => other.clone(),
                }
            }
            "databaseinfo" => {
                arity(1, 2)?;
                let table = string_arg(0)?;
                let column = if args.len() > 1 {
                    string_arg(1)?
                } else {
                    "name".into()
                };
                Value::Object(vec![
                    (
                        "registry".into(),
                        SValue {
                            value: Value::String(table),
                            span: span.clone(),
                        },
                    ),
                    (
                        "column".into(),
                        SValue {
                            value: Value::String(column),
                            span: span.clone(),
                        },
                    ),
                ])
            }
            "lower" | "upper" | "trimspace" => {
                arity(1, 1)?;
                let s = string_arg(0)?;
                Value::String(match name {
                    "lower" => s.to_lowercase(),
                    "upper" => s.to_uppercase(),
                    _ => s.trim().to_string(),
                })
            }
            "join" => {
                arity(2, 2)?;
                let sep = string_arg(0)?;
                let Value::List(items) = &args[1].value else {
                    return Err(
                        Diagnostic::error("`join()` takes a list as its second argument").at(
                            &args[1].span,
                            format!("this is a {}", args[1].value.type_name()),
                        ),
                    );
                };
                let mut parts = Vec::new();
                let mut sensitive = false;
                for item in items {
                    sensitive |= item.value.is_sensitive();
                    parts.push(item.value.as_interpolated().ok_or_else(|| {
                        Diagnostic::error("`join()` takes a list of strings")
                            .at(&item.span, format!("this is a {}", item.value.type_name()))
                    })?);
                }
                let joined = parts.join(&sep);
                if sensitive {
                    let secret_parts = items.iter().flat_map(|i| i.value.secret_parts()).collect();
                    Value::Secret(Secret::composed(self.text(span), joined, secret_parts))
                } else {
                    Value::String(joined)
                }
            }
            "concat" => {
                let mut out = Vec::new();
                for arg in &args {
                    match &arg.value {
                        Value::List(items) => out.extend(items.iter().cloned()),
                        other => {
                            return Err(Diagnostic::error("`concat()` takes lists")
                                .at(&arg.span, format!("this is a {}", other.type_name())))
                        }
                    }
                }
                Value::List(out)
            }
            "length" => {
                arity(1, 1)?;
                let n = match &args[0].value {
                    Value::List(items) => items.len(),
                    Value::Object(items) => items.len(),
                    Value::String(s) => s.chars().count(),
                    other => {
                        return Err(
                            Diagnostic::error("`length()` takes a list, object or string")
                                .at(&args[0].span, format!("this is a {}", other.type_name())),
                        )
                    }
                };
                Value::Number(n.into())
            }
            other => {
                return Err(
                    Diagnostic::error(format!("there is no function `{other}()`"))
                        .at(&name_span, "unknown function")
                        .help_opt(did_you_mean(other, FUNCTIONS.iter().copied())),
                )
            }
        };
        Ok(SValue {
            value,
            span: span.clone(),
        })
    }
}

fn index_value(current: &SValue, index: &SValue, path: &str, span: &Span) -> EvalResult {
    match (&current.value, &index.value) {
        (Value::List(items), Value::Number(n)) => {
            let i = n.as_u64().unwrap_or(u64::MAX) as usize;
            items.get(i).cloned().ok_or_else(|| {
                Diagnostic::error(format!("index {n} is out of range of `{path}`"))
                    .at(span, format!("the list has {} item(s)", items.len()))
            })
        }
        (Value::Object(items), Value::String(k)) => items
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| missing_key(k, path, items, span)),
        (c, i) => Err(Diagnostic::error(format!(
            "cannot index `{path}`, a {}, with a {}",
            c.type_name(),
            i.type_name()
        ))
        .at(span, "here")),
    }
}

/// `value` with every nested value's span set to `span`.
fn respan(value: Value, span: &Span) -> Value {
    let item = |v: SValue| SValue {
        value: respan(v.value, span),
        span: span.clone(),
    };
    match value {
        Value::List(items) => Value::List(items.into_iter().map(item).collect()),
        Value::Object(items) => {
            Value::Object(items.into_iter().map(|(k, v)| (k, item(v))).collect())
        }
        other => other,
    }
}

/// `path` has no key `name`: the keys it has, and the closest one.
fn missing_key(name: &str, path: &str, items: &[(String, SValue)], span: &Span) -> Diagnostic {
    const SHOWN: usize = 12;
    let mut keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    let listed = if keys.is_empty() {
        "it is an empty object".to_string()
    } else if keys.len() > SHOWN {
        format!(
            "its keys: {}, and {} more",
            keys[..SHOWN].join(", "),
            keys.len() - SHOWN
        )
    } else {
        format!("its keys: {}", keys.join(", "))
    };
    Diagnostic::error(format!("`{path}` has no key `{name}`"))
        .at(span, "not in this object")
        .detail(listed)
        .help_opt(did_you_mean(name, keys.iter().copied()))
}

fn number_op(
    a: &serde_json::Number,
    b: &serde_json::Number,
    f: impl Fn(f64, f64) -> f64,
) -> Option<serde_json::Number> {
    let r = f(a.as_f64()?, b.as_f64()?);
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        Some(serde_json::Number::from(r as i64))
    } else {
        serde_json::Number::from_f64(r)
    }
}

fn binary(
    op: &BinaryOperator,
    lhs: &SValue,
    rhs: &SValue,
    span: &Span,
) -> Result<Value, Diagnostic> {
    use BinaryOperator as B;
    let mismatch = || {
        Diagnostic::error(format!(
            "`{}` does not apply to a {} and a {}",
            op.as_str(),
            lhs.value.type_name(),
            rhs.value.type_name()
        ))
        .at(span, "here")
    };
    Ok(match (op, &lhs.value, &rhs.value) {
        (B::Eq, a, b) => Value::Bool(a.to_json() == b.to_json()),
        (B::NotEq, a, b) => Value::Bool(a.to_json() != b.to_json()),
        (B::And, Value::Bool(a), Value::Bool(b)) => Value::Bool(*a && *b),
        (B::Or, Value::Bool(a), Value::Bool(b)) => Value::Bool(*a || *b),
        (B::Plus | B::Minus | B::Mul | B::Div | B::Mod, Value::Number(a), Value::Number(b)) => {
            let f: fn(f64, f64) -> f64 = match op {
                B::Plus => |a, b| a + b,
                B::Minus => |a, b| a - b,
                B::Mul => |a, b| a * b,
                B::Div => |a, b| a / b,
                _ => |a, b| a % b,
            };
            Value::Number(number_op(a, b, f).ok_or_else(mismatch)?)
        }
        (B::Less | B::LessEq | B::Greater | B::GreaterEq, Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            Value::Bool(match op {
                B::Less => a < b,
                B::LessEq => a <= b,
                B::Greater => a > b,
                _ => a >= b,
            })
        }
        _ => return Err(mismatch()),
    })
}

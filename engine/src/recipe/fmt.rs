//! `vmbuild fmt`'s engine: a canonical formatter for HCL recipes, in the style of `terraform fmt`.
//!
//! This module owns [`format_hcl`] and its error type [`FormatError`], nothing else. It parses
//! the source with `hcl_edit` (which keeps comments and whitespace as "decor") and prints the
//! syntax tree itself:
//!
//! * two-space indentation per nesting level, one attribute per line, `=` aligned across runs of
//!   consecutive attributes (a run is broken by a blank line, a comment line or a block, and
//!   ends after an attribute whose value spans several lines, as in terraform);
//! * blocks always multi-line (`kind "label" {` … `}`), empty blocks as `kind "label" {}`, a blank
//!   line after every block, no blank lines at the start or end of a body, runs of blank lines
//!   collapsed to one, exactly one newline at the end of the file;
//! * comments are never dropped: comment lines are re-indented to their structure's level;
//!   comments at the end of a line stay there, aligned across consecutive one-line items; the
//!   end-of-line comment of a one-line block moves after its opening brace when it is expanded;
//! * expressions are normalised but keep the user's layout: arrays, objects and function calls
//!   with no line break between their elements stay on one line (`["a", "b"]`, `{ k = "v" }`,
//!   `f(a, b)`); otherwise they get one element per line, one level deeper (arrays and function
//!   arguments with a trailing comma, object items with aligned `=`). Operators get single
//!   spaces (`a + b`, `c ? t : f`), traversals and calls none (`var.x`, `env("X")`).
//!
//! Printed exactly as written (copied from the source by span): strings, string templates,
//! heredocs and numbers (their contents are never touched), and `for` expressions (whose inner
//! layout is not normalised; only trailing white space is removed from their lines). An
//! expression with a line comment in a place this printer cannot lay out (e.g. inside a
//! multi-line conditional) is also copied from the source, so that the comment is kept; line
//! breaks inside operations and conditionals without comments are joined into one line.
//! Object items written with `:` are printed with `=`.

use std::ops::Range;

use hcl_edit::expr::{
    Array, Expression, FuncArgs, FuncCall, Object, ObjectKey, ObjectValueTerminator,
    TraversalOperator,
};
use hcl_edit::structure::{Block, BlockLabel, Body, Structure};
use hcl_edit::{Decorate, RawString, Span};

/// Why a source could not be formatted.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FormatError {
    /// The source is not valid HCL; nothing was formatted.
    #[error("cannot format invalid HCL: {message}")]
    #[diagnostic(code(vmbuild::fmt::parse))]
    Parse {
        /// hcl-edit's description of what was expected.
        message: String,
        /// Byte offset and length of the offending input, for a miette label over the source.
        #[label("{message}")]
        span: miette::SourceSpan,
        /// One-based line of the error.
        line: usize,
        /// One-based column (in characters) of the error.
        column: usize,
    },
}

impl FormatError {
    /// Byte offset and length of the error in the formatted source.
    pub fn span(&self) -> miette::SourceSpan {
        match self {
            FormatError::Parse { span, .. } => *span,
        }
    }

    /// The parser's message, without location.
    pub fn message(&self) -> &str {
        match self {
            FormatError::Parse { message, .. } => message,
        }
    }

    fn from_parse(source: &str, err: &hcl_edit::parser::Error) -> FormatError {
        let location = err.location();
        let offset = location.offset().min(source.len());
        let len = source[offset..].chars().next().map_or(0, char::len_utf8);
        FormatError::Parse {
            message: err.message().to_string(),
            span: (offset, len).into(),
            line: location.line(),
            column: location.column(),
        }
    }
}

/// Formats HCL source text canonically. Idempotent: `format_hcl(format_hcl(x)) == format_hcl(x)`.
///
/// # Errors
///
/// [`FormatError::Parse`] if `source` is not valid HCL.
pub fn format_hcl(source: &str) -> Result<String, FormatError> {
    let body = hcl_edit::parser::parse_body(source)
        .map_err(|err| FormatError::from_parse(source, &err))?;
    let printer = Printer { src: source };
    let mut lines = Lines::default();
    lines.trivia(body.decor().prefix(), true);
    printer.body(&body, 0, &mut lines);
    // At the top level there is no opening brace to hang comments on.
    let mut out: String = lines.open.iter().map(|c| format!("{c}\n")).collect();
    out.push_str(&lines.render(0));
    Ok(out)
}

/// Marks an expression that must be copied from the source because it holds a comment where the
/// printer cannot put one.
struct Verbatim;

type Printed = Result<String, Verbatim>;

/// White space and comments found in a decor.
#[derive(Debug, Clone, PartialEq)]
enum Trivia {
    /// An empty line.
    Blank,
    /// A comment; `same_line` if it follows, on the same line, whatever preceded the decor.
    Comment { text: String, same_line: bool },
}

/// Splits decor text into comments and blank lines. `at_line_start` says whether the decor
/// begins at the start of a line (then a leading newline is a blank line, and no comment is on
/// the preceding item's line).
fn trivia(raw: &str, at_line_start: bool) -> Vec<Trivia> {
    let mut out = Vec::new();
    let mut line_empty = at_line_start;
    let mut same_line = !at_line_start;
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        if c == '\n' {
            if line_empty {
                out.push(Trivia::Blank);
            }
            line_empty = true;
            same_line = false;
            rest = &rest[1..];
            continue;
        }
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let end = if rest.starts_with('#') || rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if let Some(body) = rest.strip_prefix("/*") {
            body.find("*/").map_or(rest.len(), |i| i + 4)
        } else {
            // Not trivia (should not happen): keep it rather than lose text.
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        let text = rest[..end]
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n");
        out.push(Trivia::Comment { text, same_line });
        line_empty = false;
        rest = &rest[end..];
    }
    out
}

/// All comments of a decor that can only hold inline white space (`sp` in hcl-edit's grammar).
fn comments(raw: Option<&RawString>) -> Vec<String> {
    raw.map(|raw| trivia(raw, false))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| match t {
            Trivia::Comment { text, .. } => Some(text),
            Trivia::Blank => None,
        })
        .collect()
}

/// Comments before something on the same line, each followed by a space.
fn inline_before(raw: Option<&RawString>) -> String {
    comments(raw).into_iter().map(|c| c + " ").collect()
}

/// Comments after something on the same line, each preceded by a space.
fn inline_after(raw: Option<&RawString>) -> String {
    comments(raw).into_iter().map(|c| format!(" {c}")).collect()
}

/// Like [`inline_before`], inside an expression: a line comment cannot be kept inline.
fn strict_before(raw: Option<&RawString>) -> Printed {
    let found = comments(raw);
    if found.iter().any(|c| !c.starts_with("/*")) {
        return Err(Verbatim);
    }
    Ok(found.into_iter().map(|c| c + " ").collect())
}

/// Like [`inline_after`], inside an expression: a line comment cannot be kept inline.
fn strict_after(raw: Option<&RawString>) -> Printed {
    let found = comments(raw);
    if found.iter().any(|c| !c.starts_with("/*")) {
        return Err(Verbatim);
    }
    Ok(found.into_iter().map(|c| format!(" {c}")).collect())
}

fn has_newline(raw: Option<&RawString>) -> bool {
    raw.is_some_and(|raw| raw.contains('\n'))
}

fn indent(level: usize) -> String {
    "  ".repeat(level)
}

/// One line-level item of a body, a multi-line array, object or argument list.
#[derive(Debug, Default)]
struct Entry {
    /// Comment lines and blank lines before the item.
    leading: Vec<Trivia>,
    /// The attribute or object key, aligned across a run; `None` for blocks and list elements.
    key: Option<String>,
    /// The printed value (may span several lines, already indented).
    value: String,
    /// Printed right after the value (`,` in lists).
    sep: String,
    /// Comments at the end of the item's (last) line.
    trailing: Vec<String>,
    /// Blocks are followed by a blank line.
    block: bool,
}

/// Collects the entries of one body or multi-line collection, with their comments.
#[derive(Debug, Default)]
struct Lines {
    /// Comments on the opening line, after `{`, `[` or `(`.
    open: Vec<String>,
    entries: Vec<Entry>,
    /// Trivia waiting for the next entry; at the end, the lines before the closing bracket.
    pending: Vec<Trivia>,
}

impl Lines {
    /// Distributes the trivia of a decor: comments on the current line go after the last entry
    /// (or the opening bracket), the rest goes before the next entry.
    fn trivia(&mut self, raw: Option<&RawString>, at_line_start: bool) {
        let Some(raw) = raw else { return };
        for t in trivia(raw, at_line_start) {
            match t {
                Trivia::Comment {
                    text,
                    same_line: true,
                } if self.pending.is_empty() => match self.entries.last_mut() {
                    Some(last) => last.trailing.push(text),
                    None => self.open.push(text),
                },
                Trivia::Comment { text, .. } => self.pending.push(Trivia::Comment {
                    text,
                    same_line: false,
                }),
                Trivia::Blank => self.pending.push(Trivia::Blank),
            }
        }
    }

    fn push(&mut self, entry: Entry) {
        let leading = std::mem::take(&mut self.pending);
        self.entries.push(Entry { leading, ..entry });
    }

    /// True if there is nothing but white space to print between the brackets.
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.open.is_empty()
            && self.pending.iter().all(|t| *t == Trivia::Blank)
    }

    /// Width to pad each entry's key to: the longest key of its run of aligned entries.
    fn key_widths(&self) -> Vec<usize> {
        let entries = &self.entries;
        let mut widths = vec![0; entries.len()];
        let mut start = 0;
        while start < entries.len() {
            if entries[start].key.is_none() {
                start += 1;
                continue;
            }
            let mut end = start + 1;
            while end < entries.len()
                && entries[end].key.is_some()
                && entries[end].leading.is_empty()
                && !entries[end - 1].value.contains('\n')
            {
                end += 1;
            }
            let width = entries[start..end]
                .iter()
                .filter_map(|e| e.key.as_ref())
                .map(|k| k.chars().count())
                .max()
                .unwrap_or(0);
            widths[start..end].fill(width);
            start = end;
        }
        widths
    }

    /// Column (in characters after the indentation) at which each entry's trailing comment
    /// starts, less one space: trailing comments of consecutive one-line entries are aligned.
    fn comment_columns(&self, texts: &[String]) -> Vec<usize> {
        let entries = &self.entries;
        let alignable = |i: usize| {
            !entries[i].trailing.is_empty() && !entries[i].block && !texts[i].contains('\n')
        };
        let mut columns = vec![0; entries.len()];
        let mut start = 0;
        while start < entries.len() {
            if !alignable(start) {
                start += 1;
                continue;
            }
            let mut end = start + 1;
            while end < entries.len() && alignable(end) && entries[end].leading.is_empty() {
                end += 1;
            }
            let column = texts[start..end]
                .iter()
                .map(|t| t.chars().count())
                .max()
                .unwrap_or(0);
            columns[start..end].fill(column);
            start = end;
        }
        columns
    }

    /// Prints the entries and the closing trivia, one level of indentation given.
    fn render(&self, level: usize) -> String {
        let ind = indent(level);
        let widths = self.key_widths();
        let mut out = String::new();
        let texts: Vec<String> = self
            .entries
            .iter()
            .zip(widths)
            .map(|(entry, width)| {
                let mut text = String::new();
                if let Some(key) = &entry.key {
                    text.push_str(key);
                    text.extend(std::iter::repeat_n(' ', width - key.chars().count()));
                    text.push_str(" = ");
                }
                text.push_str(&entry.value);
                text.push_str(&entry.sep);
                text
            })
            .collect();
        let columns = self.comment_columns(&texts);
        let mut blank = false;
        for ((entry, mut text), column) in self.entries.iter().zip(texts).zip(columns) {
            emit_trivia(&mut out, &mut blank, &ind, &entry.leading);
            if !entry.trailing.is_empty() {
                let width = text.chars().count();
                text.extend(std::iter::repeat_n(' ', column.saturating_sub(width) + 1));
                text.push_str(&entry.trailing.join(" "));
            }
            emit_line(&mut out, &mut blank, &ind, &text);
            blank = entry.block;
        }
        emit_trivia(&mut out, &mut blank, &ind, &self.pending);
        out
    }

    /// Prints the collection between `open` and `close`, as a multi-line layout at `level`.
    fn wrap(&self, open: &str, close: &str, level: usize) -> String {
        let mut out = String::from(open);
        for comment in &self.open {
            out.push(' ');
            out.push_str(comment);
        }
        out.push('\n');
        out.push_str(&self.render(level + 1));
        out.push_str(&indent(level));
        out.push_str(close);
        out
    }
}

/// Appends one line at indentation `ind`, after a blank line if one is pending and the body
/// has printed something already (so a body never starts with a blank line).
fn emit_line(out: &mut String, blank: &mut bool, ind: &str, text: &str) {
    if *blank && !out.is_empty() {
        out.push('\n');
    }
    *blank = false;
    out.push_str(ind);
    out.push_str(text);
    out.push('\n');
}

/// Appends comment lines; blank lines only become pending (collapsed, never trailing).
fn emit_trivia(out: &mut String, blank: &mut bool, ind: &str, items: &[Trivia]) {
    for item in items {
        match item {
            Trivia::Blank => *blank = true,
            Trivia::Comment { text, .. } => emit_line(out, blank, ind, text),
        }
    }
}

struct Printer<'s> {
    src: &'s str,
}

impl Printer<'_> {
    fn source(&self, span: Option<Range<usize>>) -> Option<&str> {
        span.and_then(|span| self.src.get(span))
    }

    /// The expression as written in the source, trailing white space removed from its lines
    /// (except for a heredoc, whose lines are content).
    fn verbatim(&self, expr: &Expression) -> String {
        match self.source(expr.span()) {
            Some(text) if expr.is_heredoc_template() => text.to_string(),
            Some(text) => text
                .lines()
                .map(str::trim_end)
                .collect::<Vec<_>>()
                .join("\n"),
            None => {
                let mut expr = expr.clone();
                expr.decor_mut().clear();
                expr.to_string()
            }
        }
    }

    /// The statements of `body`, whose lines are indented to `level`, into `lines`.
    fn body(&self, body: &Body, level: usize, lines: &mut Lines) {
        let multiline = !body.prefer_oneline();
        for structure in body.iter() {
            lines.trivia(structure.decor().prefix(), multiline);
            match structure {
                Structure::Attribute(attr) => {
                    let key = format!(
                        "{}{}",
                        attr.key.as_str(),
                        inline_after(attr.key.decor().suffix())
                    );
                    let value = format!(
                        "{}{}",
                        inline_before(attr.value.decor().prefix()),
                        self.value(&attr.value, level)
                    );
                    lines.push(Entry {
                        key: Some(key),
                        value,
                        ..Entry::default()
                    });
                    lines.trivia(attr.value.decor().suffix(), false);
                }
                Structure::Block(block) => {
                    // A one-line block becomes multi-line: a comment at the end of its line
                    // describes the block, so it goes after the opening brace.
                    let expand = block.body.prefer_oneline() && !block.body.is_empty();
                    let header_comments = if expand {
                        comments(structure.decor().suffix())
                    } else {
                        Vec::new()
                    };
                    lines.push(Entry {
                        value: self.block(block, level, header_comments),
                        block: true,
                        ..Entry::default()
                    });
                    if expand {
                        continue;
                    }
                }
            }
            lines.trivia(structure.decor().suffix(), false);
        }
        lines.trivia(body.decor().suffix(), multiline);
    }

    fn block(&self, block: &Block, level: usize, header_comments: Vec<String>) -> String {
        let mut header = format!(
            "{}{}",
            block.ident.as_str(),
            inline_after(block.ident.decor().suffix())
        );
        for label in &block.labels {
            header.push(' ');
            match label {
                BlockLabel::Ident(ident) => header.push_str(ident.as_str()),
                BlockLabel::String(string) => match self.source(label.span()) {
                    Some(text) => header.push_str(text),
                    None => header.push_str(&quote(string)),
                },
            }
            header.push_str(&inline_after(label.decor().suffix()));
        }
        let mut lines = Lines {
            open: header_comments,
            ..Lines::default()
        };
        lines.trivia(block.body.decor().prefix(), false);
        self.body(&block.body, level + 1, &mut lines);
        if lines.is_empty() {
            header + " {}"
        } else {
            header + &lines.wrap(" {", "}", level)
        }
    }

    /// An expression whose surrounding decor the caller handles, falling back to the source
    /// text if it holds a comment that cannot be laid out.
    fn value(&self, expr: &Expression, level: usize) -> String {
        self.expr(expr, level)
            .unwrap_or_else(|Verbatim| self.verbatim(expr))
    }

    /// A sub-expression, with the inline comments of its decor.
    fn sub(&self, expr: &Expression, level: usize) -> Printed {
        let decor = expr.decor();
        Ok(format!(
            "{}{}{}",
            strict_before(decor.prefix())?,
            self.expr(expr, level)?,
            strict_after(decor.suffix())?
        ))
    }

    /// An expression without its outer decor; multi-line parts are laid out for a first line
    /// indented to `level`.
    fn expr(&self, expr: &Expression, level: usize) -> Printed {
        Ok(match expr {
            Expression::Null(_) => "null".to_string(),
            Expression::Bool(value) => value.value().to_string(),
            Expression::Number(_)
            | Expression::String(_)
            | Expression::StringTemplate(_)
            | Expression::HeredocTemplate(_)
            | Expression::ForExpr(_) => self.verbatim(expr),
            Expression::Variable(name) => name.as_str().to_string(),
            Expression::Array(array) => self.array(array, level)?,
            Expression::Object(object) => self.object(object, level)?,
            Expression::Parenthesis(paren) => format!("({})", self.sub(paren.inner(), level)?),
            Expression::Traversal(traversal) => {
                let mut out = self.sub(&traversal.expr, level)?;
                for op in &traversal.operators {
                    out.push_str(&strict_before(op.decor().prefix())?);
                    let inner = op.value();
                    let (before, after) = match inner {
                        TraversalOperator::Index(_) => (String::new(), String::new()),
                        _ => (
                            strict_before(inner.decor().prefix())?,
                            strict_after(inner.decor().suffix())?,
                        ),
                    };
                    let text = match inner {
                        TraversalOperator::AttrSplat(_) => ".*".to_string(),
                        TraversalOperator::FullSplat(_) => "[*]".to_string(),
                        TraversalOperator::GetAttr(name) => {
                            format!(".{before}{}{after}", name.as_str())
                        }
                        TraversalOperator::LegacyIndex(index) => {
                            format!(".{before}{}{after}", index.value())
                        }
                        TraversalOperator::Index(index) => format!("[{}]", self.sub(index, level)?),
                    };
                    out.push_str(&text);
                    out.push_str(&strict_after(op.decor().suffix())?);
                }
                out
            }
            Expression::FuncCall(call) => self.func_call(call, level)?,
            Expression::Conditional(cond) => format!(
                "{} ? {} : {}",
                self.sub(&cond.cond_expr, level)?,
                self.sub(&cond.true_expr, level)?,
                self.sub(&cond.false_expr, level)?
            ),
            Expression::UnaryOp(op) => {
                format!("{}{}", op.operator.as_str(), self.sub(&op.expr, level)?)
            }
            Expression::BinaryOp(op) => {
                // hcl-edit (0.10) leaves the operator's decor unresolved, so look for comments
                // in the source between the operands instead.
                if let (Some(lhs), Some(rhs)) = (op.lhs_expr.span(), op.rhs_expr.span()) {
                    let gap = self.src.get(lhs.end..rhs.start).unwrap_or_default();
                    if gap.contains('#') || gap.contains("//") || gap.contains("/*") {
                        return Err(Verbatim);
                    }
                }
                format!(
                    "{} {}{}{} {}",
                    self.sub(&op.lhs_expr, level)?,
                    strict_before(op.operator.decor().prefix())?,
                    op.operator.as_str(),
                    strict_after(op.operator.decor().suffix())?,
                    self.sub(&op.rhs_expr, level)?
                )
            }
        })
    }

    fn array(&self, array: &Array, level: usize) -> Printed {
        let items: Vec<&Expression> = array.iter().collect();
        self.list(&items, array.trailing(), false, ("[", "]"), level)
    }

    fn func_call(&self, call: &FuncCall, level: usize) -> Printed {
        let mut name = String::new();
        for part in &call.name.namespace {
            name.push_str(&strict_before(part.decor().prefix())?);
            name.push_str(part.as_str());
            name.push_str(&strict_after(part.decor().suffix())?);
            name.push_str("::");
        }
        name.push_str(&strict_before(call.name.name.decor().prefix())?);
        name.push_str(call.name.name.as_str());
        let args: &FuncArgs = &call.args;
        let items: Vec<&Expression> = args.iter().collect();
        let list = self.list(
            &items,
            args.trailing(),
            args.expand_final(),
            ("(", ")"),
            level,
        )?;
        Ok(name + &list)
    }

    /// Array elements or function arguments: inline if written on one line, else one per line
    /// with a trailing comma (none after a final `...`).
    fn list(
        &self,
        items: &[&Expression],
        trailing: &RawString,
        ellipsis: bool,
        (open, close): (&str, &str),
        level: usize,
    ) -> Printed {
        let multiline = trailing.contains('\n')
            || items
                .iter()
                .any(|e| has_newline(e.decor().prefix()) || has_newline(e.decor().suffix()));
        if !multiline {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                parts.push(format!(
                    "{}{}{}",
                    strict_before(item.decor().prefix())?,
                    self.value(item, level),
                    strict_after(item.decor().suffix())?
                ));
            }
            let dots = if ellipsis { "..." } else { "" };
            let after = strict_after(Some(trailing))?;
            return Ok(format!("{open}{}{dots}{after}{close}", parts.join(", ")));
        }
        let mut lines = Lines::default();
        for (i, item) in items.iter().enumerate() {
            lines.trivia(item.decor().prefix(), false);
            let last = i + 1 == items.len();
            let heredoc = item.is_heredoc_template();
            let mark = match (last, ellipsis, heredoc) {
                (true, true, _) => "...",
                (true, false, true) => "",
                _ => ",",
            };
            // A heredoc's closing marker must be alone on its line.
            let sep = if heredoc && !mark.is_empty() {
                format!("\n{}{mark}", indent(level + 1))
            } else {
                mark.to_string()
            };
            lines.push(Entry {
                value: self.value(item, level + 1),
                sep,
                ..Entry::default()
            });
            lines.trivia(item.decor().suffix(), false);
        }
        lines.trivia(Some(trailing), false);
        if lines.is_empty() {
            return Ok(format!("{open}{close}"));
        }
        Ok(lines.wrap(open, close, level))
    }

    /// Objects: inline `{ k = v, … }` if written on one line, else one item per line with
    /// aligned `=`.
    fn object(&self, object: &Object, level: usize) -> Printed {
        let multiline = object.trailing().contains('\n')
            || object.iter().any(|(key, value)| {
                value.terminator() == ObjectValueTerminator::Newline
                    || has_newline(key.decor().prefix())
                    || has_newline(value.expr().decor().prefix())
                    || has_newline(value.expr().decor().suffix())
            });
        let key_text = |key: &ObjectKey, level: usize| -> Printed {
            let name = match key {
                ObjectKey::Ident(ident) => ident.as_str().to_string(),
                ObjectKey::Expression(expr) => self.expr(expr, level)?,
            };
            Ok(name + &inline_after(key.decor().suffix()))
        };
        if !multiline {
            if object.is_empty() && comments(Some(object.trailing())).is_empty() {
                return Ok("{}".to_string());
            }
            let mut parts = Vec::with_capacity(object.len());
            for (key, value) in object.iter() {
                let expr = value.expr();
                parts.push(format!(
                    "{}{} = {}{}{}",
                    strict_before(key.decor().prefix())?,
                    key_text(key, level)?,
                    strict_before(expr.decor().prefix())?,
                    self.value(expr, level),
                    strict_after(expr.decor().suffix())?
                ));
            }
            let after = strict_after(Some(object.trailing()))?;
            return Ok(format!("{{ {}{after} }}", parts.join(", ")));
        }
        let mut lines = Lines::default();
        let mut at_line_start = false;
        for (key, value) in object.iter() {
            let expr = value.expr();
            lines.trivia(key.decor().prefix(), at_line_start);
            lines.push(Entry {
                key: Some(key_text(key, level + 1)?),
                value: format!(
                    "{}{}",
                    inline_before(expr.decor().prefix()),
                    self.value(expr, level + 1)
                ),
                ..Entry::default()
            });
            lines.trivia(expr.decor().suffix(), false);
            at_line_start = value.terminator() == ObjectValueTerminator::Newline;
        }
        lines.trivia(Some(object.trailing()), at_line_start);
        if lines.is_empty() {
            return Ok("{}".to_string());
        }
        Ok(lines.wrap("{", "}", level))
    }
}

/// Quotes a label that has no source text (not expected for parsed input).
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats `source`, checking that formatting the result again changes nothing.
    fn fmt(source: &str) -> String {
        let once = format_hcl(source).unwrap_or_else(|e| panic!("{e:?}"));
        let twice = format_hcl(&once).unwrap_or_else(|e| panic!("{e:?}\n{once}"));
        assert_eq!(once, twice, "not idempotent");
        once
    }

    #[test]
    fn aligns_equals_in_a_run() {
        let src = "a = 1\nlonger_name = \"x\"\nbb   =    true\n";
        assert_eq!(
            fmt(src),
            "a           = 1\nlonger_name = \"x\"\nbb          = true\n"
        );
    }

    #[test]
    fn runs_are_broken_by_blank_lines_comments_blocks_and_multiline_values() {
        // As in terraform, an attribute with a multi-line value still aligns with the lines
        // above it; the run ends after it.
        let src = r#"
a = 1
bbb = 2

cc = 3
# note
dddd = 4
e = 5
blk {}
f = 6
gg = [
  1,
]
hhh = 7
"#;
        let expected = r#"a   = 1
bbb = 2

cc = 3
# note
dddd = 4
e    = 5
blk {}

f  = 6
gg = [
  1,
]
hhh = 7
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn indents_nested_blocks_by_two_spaces() {
        let src =
            "qa {\nhttp \"home\" {\n        path = \"/\"\n\t expect {\nstatus = 200\n}\n}\n}\n";
        let expected = r#"qa {
  http "home" {
    path = "/"
    expect {
      status = 200
    }
  }
}
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn expands_single_line_blocks() {
        let src = r#"output "ova" { name = "ToxoDB-${var.release}" }
output "qcow2" {}
lock { wait = "10m" } # never export while tables are being rebuilt
"#;
        let expected = r#"output "ova" {
  name = "ToxoDB-${var.release}"
}

output "qcow2" {}

lock { # never export while tables are being rebuilt
  wait = "10m"
}
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn labels_keep_their_kind_and_empty_blocks_stay_empty() {
        let src = "files  webservices   \"second\" {\n\n}\nqa {\n}\n";
        assert_eq!(fmt(src), "files webservices \"second\" {}\n\nqa {}\n");
    }

    #[test]
    fn keeps_and_reindents_comments() {
        let src = r#"# Recipe for ToxoDB.
// Second header line.

    /* a block
       comment */
database "toxo" { # the main one
        # leading, badly indented
  engine = "postgres"   # trailing
  into = "toxodb" // slash trailing
  lock {
            # nested leading
    name = "tuning_manager" # nested trailing
      # nested closing
  }
  /* inline */ source = env("X")
  # closing comment
}
# end of file
"#;
        let expected = r#"# Recipe for ToxoDB.
// Second header line.

/* a block
       comment */
database "toxo" { # the main one
  # leading, badly indented
  engine = "postgres" # trailing
  into   = "toxodb"   // slash trailing
  lock {
    # nested leading
    name = "tuning_manager" # nested trailing
    # nested closing
  }

  /* inline */
  source = env("X")
  # closing comment
}

# end of file
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn keeps_comments_inside_expressions() {
        let src = r#"packages = [
  # web
  "apache2", # httpd
  "postgresql" # db
  # more to come
]
labels = {
  team = "toxo" # owner
  # why
  tier = "web"
}
size = (1 +
  # the header block
  2)
pair = [1, /* two */ 2]
"#;
        let expected = r#"packages = [
  # web
  "apache2",    # httpd
  "postgresql", # db
  # more to come
]
labels = {
  team = "toxo" # owner
  # why
  tier = "web"
}
size = (1 +
  # the header block
  2)
pair = [1, /* two */ 2]
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn collapses_blank_lines_and_trims_bodies() {
        let src = "\n\n\na = 1\n\n\n\nb = 2\nblk {\n\n\n  c = 3\n\n\n  d = 4\n\n\n}\n\n\n\n";
        let expected = "a = 1\n\nb = 2\nblk {\n  c = 3\n\n  d = 4\n}\n";
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn removes_trailing_white_space_and_ends_with_one_newline() {
        assert_eq!(fmt("a = 1   \t\nb = 2  # c  \t"), "a = 1\nb = 2 # c\n");
        assert_eq!(
            fmt("a = 1\r\nb {\r\n  c = 2\r\n}\r\n"),
            "a = 1\nb {\n  c = 2\n}\n"
        );
        assert_eq!(fmt(""), "");
        assert_eq!(fmt("\n\n  \n"), "");
        assert_eq!(fmt("# only a comment"), "# only a comment\n");
    }

    #[test]
    fn normalises_one_line_arrays_and_objects() {
        let src = r#"a = [ "apache2","postgresql" ,  "x", ]
b = {K="v",  longer   =  2}
c = [  ]
d = {   }
e = [[1,2],{x=1}]
"#;
        let expected = r#"a = ["apache2", "postgresql", "x"]
b = { K = "v", longer = 2 }
c = []
d = {}
e = [[1, 2], { x = 1 }]
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn lays_out_multi_line_arrays_and_objects() {
        let src = r#"a = [
"one",
      "two"]
b = {
  k = "v"
      longer_key = [1,2]
  "quoted" : 3,
  nested = {
  x = 1
  }
}
c = [{
  k = 1
}]
d = merge(
  local.a,
  local.b
)
"#;
        let expected = r#"a = [
  "one",
  "two",
]
b = {
  k          = "v"
  longer_key = [1, 2]
  "quoted"   = 3
  nested     = {
    x = 1
  }
}
c = [{
  k = 1
}]
d = merge(
  local.a,
  local.b,
)
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn normalises_operators_calls_and_traversals() {
        let src = r#"a = var.x+1
b = var.ok?"yes":"no"
c = ! var.flag
d = -  var.n
e = env( "TOXO_SOURCE_URL" )
f = local.m [ "k" ].x[0]
g = concat(var.a,var.b...)
h = (var.a  *  (2-1)) >= 3 && var.b
i = [for s in var.list : upper(s) if s != ""]
j = provider::ns::fn(1)
"#;
        let expected = r#"a = var.x + 1
b = var.ok ? "yes" : "no"
c = !var.flag
d = -var.n
e = env("TOXO_SOURCE_URL")
f = local.m["k"].x[0]
g = concat(var.a, var.b...)
h = (var.a * (2 - 1)) >= 3 && var.b
i = [for s in var.list : upper(s) if s != ""]
j = provider::ns::fn(1)
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn prints_strings_templates_and_heredocs_as_written() {
        let src = "a = \"tab\\there \\u00e9 $${x}\"\nb = \"release-${ var.release }\"\nc = 1.50\nscript = <<-EOT\n    echo hi   \n      indented\n    EOT\nd = 2\n";
        let expected = "a      = \"tab\\there \\u00e9 $${x}\"\nb      = \"release-${ var.release }\"\nc      = 1.50\nscript = <<-EOT\n    echo hi   \n      indented\n    EOT\nd = 2\n";
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn keeps_comments_in_calls_and_falls_back_to_source_for_odd_places() {
        let src = r#"z = f(
  1, # one
  # before two
  2
)
w = (var.a ? # why
  1 : 2)
x { /* a */ y = 1 /* b */ }
"#;
        let expected = r#"z = f(
  1, # one
  # before two
  2,
)
w = (var.a ? # why
  1 : 2)
x { /* a */
  y = 1 /* b */
}
"#;
        assert_eq!(fmt(src), expected);
    }

    #[test]
    fn keeps_heredoc_markers_alone_on_their_lines_in_lists() {
        let src = "l = [\n<<EOT\nhello\nEOT\n, \"x\"]\nm = [\n  <<-EOT\n    a\n    EOT\n]\n";
        let expected =
            "l = [\n  <<EOT\nhello\nEOT\n  ,\n  \"x\",\n]\nm = [\n  <<-EOT\n    a\n    EOT\n]\n";
        assert_eq!(fmt(src), expected);
    }

    /// The DESIGN.md sketch, written as valid HCL (a one-line block holds one attribute).
    const RECIPE: &str = r#"
variable "release" { default = "68" }

template "base" {
  debootstrap {
    suite = "bookworm"
    packages = ["apache2", "postgresql"]
  }
  provision "shell"  { script = "provision/base.sh" }
  provision "puppet" { manifest = "puppet/site.pp" }
  disk_size = "8G"
}

database "toxo" {
  engine          = "postgres"                     # or "oracle"
  source          = env("TOXO_SOURCE_URL")         # a secret: never printed, logged or hashed in clear
  schemas         = databaseinfo("core.databaseinfo") # allowlist read from the source itself
  exclude_schemas = ["staff_*", "workflow"]
  lock {
    name = "tuning_manager"
    wait = "10m"
  }   # never export while tables are being rebuilt
  into            = "toxodb"
}

database "apicomm" {   # empty, never cloned
  engine = "postgres"
  init = ["schema/apicomm.sql"]
  into = "apicomm"
}

source "website" {
  git   = "https://example.org/toxodb-site.git"
  ref   = "release-${var.release}"                 # resolved to a commit id in the plan
  build = ["make", "install", "DESTDIR=$out"]
}

files "webservices" {
  from = "/data/webServices/ToxoDB"
  to = "/var/www/webServices"
  exclude = ["**/*.bam"]
}

sanitize {
  operations = ["shell-history", "ssh-host-keys", "logs", "machine-id"]
  forbid = [env("TOXO_PASSWORD")]
}

output "qcow2" {}
output "ova" { name = "ToxoDB-${var.release}" }
output "vdi" {}

qa {
  http "home" {
    path = "/"
    expect_status = 200
    expect_body = "ToxoDB"
  }
}
"#;

    #[test]
    fn formats_a_realistic_recipe_idempotently() {
        let expected = r#"variable "release" {
  default = "68"
}

template "base" {
  debootstrap {
    suite    = "bookworm"
    packages = ["apache2", "postgresql"]
  }

  provision "shell" {
    script = "provision/base.sh"
  }

  provision "puppet" {
    manifest = "puppet/site.pp"
  }

  disk_size = "8G"
}

database "toxo" {
  engine          = "postgres"                        # or "oracle"
  source          = env("TOXO_SOURCE_URL")            # a secret: never printed, logged or hashed in clear
  schemas         = databaseinfo("core.databaseinfo") # allowlist read from the source itself
  exclude_schemas = ["staff_*", "workflow"]
  lock {
    name = "tuning_manager"
    wait = "10m"
  } # never export while tables are being rebuilt

  into = "toxodb"
}

database "apicomm" { # empty, never cloned
  engine = "postgres"
  init   = ["schema/apicomm.sql"]
  into   = "apicomm"
}

source "website" {
  git   = "https://example.org/toxodb-site.git"
  ref   = "release-${var.release}" # resolved to a commit id in the plan
  build = ["make", "install", "DESTDIR=$out"]
}

files "webservices" {
  from    = "/data/webServices/ToxoDB"
  to      = "/var/www/webServices"
  exclude = ["**/*.bam"]
}

sanitize {
  operations = ["shell-history", "ssh-host-keys", "logs", "machine-id"]
  forbid     = [env("TOXO_PASSWORD")]
}

output "qcow2" {}

output "ova" {
  name = "ToxoDB-${var.release}"
}

output "vdi" {}

qa {
  http "home" {
    path          = "/"
    expect_status = 200
    expect_body   = "ToxoDB"
  }
}
"#;
        let once = fmt(RECIPE);
        assert_eq!(once, expected);
        assert_eq!(format_hcl(expected).unwrap(), expected);
    }

    #[test]
    fn parse_error_carries_offset_and_message() {
        let src = "a = 1\nb = }\n";
        let err = format_hcl(src).unwrap_err();
        assert_eq!(err.span().offset(), 10);
        assert_eq!(err.span().len(), 1);
        assert!(!err.message().is_empty());
        let FormatError::Parse { line, column, .. } = &err;
        assert_eq!((*line, *column), (2, 5));
    }

    #[test]
    fn rejects_commas_between_attributes_of_a_one_line_block() {
        // HCL allows one attribute in a one-line block; the DESIGN.md sketch's
        // `debootstrap { suite = "bookworm", packages = [...] }` is not valid HCL.
        let src = "template \"base\" {\n  debootstrap { suite = \"bookworm\", packages = [] }\n}\n";
        let err = format_hcl(src).unwrap_err();
        let comma = src.find(',').unwrap();
        assert_eq!(err.span().offset(), comma);
    }
}

//! Oracle schemas converted into one PostgreSQL script, `dump.sql`, that the load step runs in
//! the VM's PostgreSQL: `CREATE SCHEMA` and `CREATE TABLE` (types mapped by
//! [`OracleType::postgres`]), the rows as `COPY` blocks, then primary keys, unique constraints,
//! indexes, foreign keys, and last the views, check constraints and function-based indexes,
//! whose Oracle SQL may or may not be PostgreSQL's too.
//!
//! Pure: the input is a plain description of the schemas ([`Catalog`]) and a [`RowSource`]
//! that yields each table's rows. The Oracle reader fills both; tests fill them by hand.
//!
//! Names are lower-cased, as PostgreSQL folds unquoted names (Oracle's `APIDB.INSTANCEMETAINFO`
//! becomes `apidb.instancemetainfo`, as the PostgreSQL side's GUS schemas are named), and
//! always quoted (a column named `USER` or `ORDER` stays a column). A name longer than
//! PostgreSQL's 63 bytes is cut and given a digest suffix. Two Oracle tables, views or columns
//! whose names differ only by case cannot both be converted: that is an error.
//!
//! What does not translate is left out and listed ([`Converted::not_translated`]): columns of
//! types PostgreSQL has no equivalent for (and the keys that use them), disabled constraints,
//! foreign keys to tables outside the allowlist, domain indexes, default expressions other than
//! literals and the current time. Views, check constraints and function-based indexes are
//! rewritten (quoted names lower-cased; `NVL` → `coalesce`, `MINUS` → `EXCEPT`, `SYSDATE` →
//! `LOCALTIMESTAMP(0)`) unless they use what has no PostgreSQL form (`(+)` joins, `CONNECT BY`,
//! `ROWNUM`, `DECODE`, `DUAL`...), and are then *attempted* at load: each is tried, repeatedly
//! while more succeed (a view may use another), and those PostgreSQL refuses are left out with
//! a `WARNING` in the load's log naming them and PostgreSQL's reason.

use std::collections::BTreeMap;
use std::io::Write;

use super::types::{copy_row, OracleType, Value, ValueError};

/// The schemas to convert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub schemas: Vec<Schema>,
}

/// One Oracle schema (a user), with its names as Oracle stores them (`APIDB`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub name: String,
    pub tables: Vec<Table>,
    pub views: Vec<View>,
    pub sequences: Vec<Sequence>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    pub constraints: Vec<Constraint>,
    pub indexes: Vec<Index>,
    pub comment: Option<String>,
    /// Whether its rows are converted (`exclude_table_data` clears it).
    pub with_data: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub data_type: OracleType,
    pub nullable: bool,
    /// `ALL_TAB_COLUMNS.DATA_DEFAULT`, Oracle SQL.
    pub default: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub name: String,
    pub kind: ConstraintKind,
    /// `STATUS = 'ENABLED'`.
    pub enabled: bool,
    /// `VALIDATED = 'VALIDATED'`: every row satisfies it.
    pub validated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintKind {
    PrimaryKey {
        columns: Vec<String>,
    },
    Unique {
        columns: Vec<String>,
    },
    ForeignKey {
        columns: Vec<String>,
        /// The referenced table's schema and name, and its key columns, in Oracle's names.
        schema: String,
        table: String,
        references: Vec<String>,
        on_delete: OnDelete,
    },
    /// A check other than `"COL" IS NOT NULL` (that one is the column's `nullable`).
    Check {
        condition: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    NoAction,
    Cascade,
    SetNull,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    pub name: String,
    pub unique: bool,
    /// `ALL_INDEXES.INDEX_TYPE`: `NORMAL`, `NORMAL/REV`, `BITMAP`, `FUNCTION-BASED NORMAL`,
    /// `DOMAIN`, `LOB`, `IOT - TOP`, ...
    pub index_type: String,
    pub keys: Vec<IndexKey>,
}

/// One key of an index: a column, or (function-based) an expression.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexKey {
    pub column: String,
    /// `ALL_IND_EXPRESSIONS.COLUMN_EXPRESSION`, for a function-based key.
    pub expression: Option<String>,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub name: String,
    /// `ALL_VIEWS.TEXT`: the query.
    pub text: String,
}

/// A sequence; numbers as Oracle prints them (up to 28 digits).
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub name: String,
    pub increment: String,
    pub min: String,
    pub max: String,
    /// `LAST_NUMBER`: at or beyond the next value Oracle hands out.
    pub next: String,
    pub cycle: bool,
}

/// Gives the rows of a table.
pub trait RowSource {
    /// Call `each` with every row of `table`, its values in the order of `columns`.
    fn read(
        &mut self,
        schema: &Schema,
        table: &Table,
        columns: &[&Column],
        each: &mut dyn FnMut(&[Value]) -> Result<(), ConvertError>,
    ) -> Result<(), ConvertError>;
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{what} `{first}` and `{second}` both become `{name}` in PostgreSQL")]
    NameClash {
        what: &'static str,
        first: String,
        second: String,
        name: String,
    },
    #[error("{table}.{column}: {source}")]
    Value {
        table: String,
        column: String,
        #[source]
        source: ValueError,
    },
    #[error("{table}: a row has {got} values for {expected} columns")]
    RowShape {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("reading {table}: {reason}")]
    Read { table: String, reason: String },
    #[error("writing the converted dump: {0}")]
    Io(#[from] std::io::Error),
}

/// What a conversion wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// `schema.table` (PostgreSQL names) → rows written.
    pub rows: BTreeMap<String, i64>,
    /// What was left out, one line each, for people.
    pub not_translated: Vec<String>,
    /// What is attempted at load (views, checks, function-based indexes), one line each.
    pub attempted: Vec<String>,
}

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENT: usize = 63;

/// An Oracle name as PostgreSQL would fold it: lower case, at most 63 bytes (a longer one is
/// cut and ends with 8 hex digits of its digest, so that two long names stay apart).
pub fn pg_name(oracle: &str) -> String {
    let lower = oracle.to_lowercase();
    if lower.len() <= MAX_IDENT {
        return lower;
    }
    let digest = blake3::hash(oracle.as_bytes()).to_hex();
    let mut cut = MAX_IDENT - 9;
    while !lower.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{}", &lower[..cut], &digest[..8])
}

/// `name` double-quoted for PostgreSQL.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A PostgreSQL string literal (standard conforming strings).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Names already taken in one PostgreSQL namespace: PostgreSQL name → the Oracle name shown.
#[derive(Default)]
struct Taken(BTreeMap<String, String>);

impl Taken {
    /// Claim `pg` for the Oracle object `shown`; an error if another one took it. The error
    /// shows the name as `{prefix}{pg}`.
    fn claim(
        &mut self,
        what: &'static str,
        prefix: &str,
        pg: String,
        shown: String,
    ) -> Result<String, ConvertError> {
        if let Some(first) = self.0.get(&pg) {
            return Err(ConvertError::NameClash {
                what,
                first: first.clone(),
                second: shown,
                name: format!("{prefix}{pg}"),
            });
        }
        self.0.insert(pg.clone(), shown);
        Ok(pg)
    }

    /// Claim `pg_name(oracle)`, or that with `_2`, `_3`... if taken (index and constraint names,
    /// which Oracle keeps apart from table names and PostgreSQL does not).
    fn claim_free(&mut self, oracle: &str) -> String {
        let base = pg_name(oracle);
        let mut name = base.clone();
        let mut n = 2;
        while self.0.contains_key(&name) {
            let suffix = format!("_{n}");
            let mut cut = base.len().min(MAX_IDENT - suffix.len());
            while !base.is_char_boundary(cut) {
                cut -= 1;
            }
            name = format!("{}{suffix}", &base[..cut]);
            n += 1;
        }
        self.0.insert(name.clone(), oracle.to_string());
        name
    }
}

/// A table with its PostgreSQL names.
struct TableNames {
    name: String,
    /// Oracle column name → PostgreSQL name, for converted columns.
    columns: BTreeMap<String, String>,
}

/// Every converted name, worked out before anything is written.
struct Names {
    schemas: BTreeMap<String, String>,
    /// (Oracle schema, Oracle table) → names.
    tables: BTreeMap<(String, String), TableNames>,
    /// Per PostgreSQL schema: relation names (tables, views, sequences, indexes).
    relations: BTreeMap<String, Taken>,
}

impl Names {
    fn work_out(catalog: &Catalog) -> Result<Names, ConvertError> {
        let mut schema_names = Taken::default();
        let mut names = Names {
            schemas: BTreeMap::new(),
            tables: BTreeMap::new(),
            relations: BTreeMap::new(),
        };
        for schema in &catalog.schemas {
            let pg_schema = schema_names.claim(
                "the schemas",
                "",
                pg_name(&schema.name),
                schema.name.clone(),
            )?;
            names.schemas.insert(schema.name.clone(), pg_schema.clone());
            let prefix = format!("{pg_schema}.");
            let shown = |name: &str| format!("{}.{name}", schema.name);
            let relations = names.relations.entry(pg_schema.clone()).or_default();
            for table in &schema.tables {
                let name = relations.claim(
                    "the tables",
                    &prefix,
                    pg_name(&table.name),
                    shown(&table.name),
                )?;
                let mut taken = Taken::default();
                let mut columns = BTreeMap::new();
                let table_prefix = format!("{prefix}{name}.");
                for column in &table.columns {
                    if column.data_type.postgres().is_some() {
                        let pg = taken.claim(
                            "the columns",
                            &table_prefix,
                            pg_name(&column.name),
                            format!("{}.{}", shown(&table.name), column.name),
                        )?;
                        columns.insert(column.name.clone(), pg);
                    }
                }
                names.tables.insert(
                    (schema.name.clone(), table.name.clone()),
                    TableNames { name, columns },
                );
            }
            for view in &schema.views {
                relations.claim("the views", &prefix, pg_name(&view.name), shown(&view.name))?;
            }
            for sequence in &schema.sequences {
                relations.claim(
                    "the sequences",
                    &prefix,
                    pg_name(&sequence.name),
                    shown(&sequence.name),
                )?;
            }
        }
        Ok(names)
    }

    /// `"schema"."table"` in PostgreSQL names.
    fn table(&self, schema: &str, table: &str) -> Option<String> {
        let pg_schema = self.schemas.get(schema)?;
        let t = self.tables.get(&(schema.to_string(), table.to_string()))?;
        Some(format!("{}.{}", quote(pg_schema), quote(&t.name)))
    }

    /// A free relation name in `schema` for an index or key constraint.
    fn relation(&mut self, pg_schema: &str, oracle: &str) -> String {
        self.relations
            .entry(pg_schema.to_string())
            .or_default()
            .claim_free(oracle)
    }
}

/// An Oracle default expression as PostgreSQL's, where it is a literal or the current time.
pub fn translate_default(text: &str) -> Option<String> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    match upper.as_str() {
        "" | "NULL" => return None,
        "SYSDATE" => return Some("LOCALTIMESTAMP(0)".into()),
        "SYSTIMESTAMP" | "CURRENT_TIMESTAMP" => return Some("CURRENT_TIMESTAMP".into()),
        "CURRENT_DATE" => return Some("LOCALTIMESTAMP(0)".into()),
        _ => {}
    }
    let number = text.strip_prefix('-').unwrap_or(text);
    let is_number = !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if is_number {
        return Some(text.to_string());
    }
    // One string literal: quotes inside are doubled.
    if text.len() >= 2 && text.starts_with('\'') && text.ends_with('\'') {
        let inner = &text[1..text.len() - 1];
        if !inner.replace("''", "").contains('\'') {
            return Some(text.to_string());
        }
    }
    None
}

/// Whether a check condition is Oracle's form of NOT NULL (`"COL" IS NOT NULL`), which the
/// column's `nullable` already says.
pub fn is_not_null_check(condition: &str) -> bool {
    let c = condition.trim();
    let Some(rest) = c.strip_prefix('"') else {
        return false;
    };
    match rest.split_once('"') {
        Some((name, tail)) => !name.is_empty() && tail.trim().eq_ignore_ascii_case("IS NOT NULL"),
        None => false,
    }
}

/// Words of Oracle SQL with no PostgreSQL equivalent here.
const UNTRANSLATABLE: &[&str] = &[
    "ROWNUM",
    "ROWID",
    "DECODE",
    "NVL2",
    "CONNECT",
    "PRIOR",
    "SYS_CONNECT_BY_PATH",
    "DUAL",
    "MERGE",
    "PIVOT",
    "UNPIVOT",
];

/// Oracle SQL (a view's query, a check, an index expression) rewritten for PostgreSQL: quoted
/// names lower-cased, `NVL` → `coalesce`, `MINUS` → `EXCEPT`, `SYSDATE` → `LOCALTIMESTAMP(0)`,
/// `SYSTIMESTAMP` → `CURRENT_TIMESTAMP`; string literals and comments untouched. An error names
/// what has no PostgreSQL form.
pub fn translate_sql(text: &str) -> Result<String, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                // A string literal, `''` inside it.
                let start = i;
                i += 1;
                while i < chars.len() {
                    if chars[i] == '\'' {
                        if chars.get(i + 1) == Some(&'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(chars.len());
                out.extend(&chars[start..i]);
            }
            '"' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += 1;
                }
                let name: String = chars[start..i.min(chars.len())].iter().collect();
                out.push_str(&quote(&pg_name(&name)));
                i = (i + 1).min(chars.len());
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                let start = i;
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                out.extend(&chars[start..i]);
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let start = i;
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i = (i + 2).min(chars.len());
                out.extend(&chars[start..i]);
            }
            '(' => {
                // `(+)`: an Oracle outer join.
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if chars.get(j) == Some(&'+') {
                    let mut k = j + 1;
                    while k < chars.len() && chars[k].is_whitespace() {
                        k += 1;
                    }
                    if chars.get(k) == Some(&')') {
                        return Err("uses Oracle's `(+)` outer joins".into());
                    }
                }
                out.push(c);
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '$' | '#'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let upper = word.to_uppercase();
                if word.contains('#') {
                    return Err(format!(
                        "uses the name `{word}`, which PostgreSQL cannot read"
                    ));
                }
                if UNTRANSLATABLE.contains(&upper.as_str()) {
                    return Err(format!("uses `{upper}`"));
                }
                match upper.as_str() {
                    "NVL" => out.push_str("coalesce"),
                    "MINUS" => out.push_str("EXCEPT"),
                    "SYSDATE" => out.push_str("LOCALTIMESTAMP(0)"),
                    "SYSTIMESTAMP" => out.push_str("CURRENT_TIMESTAMP"),
                    _ => out.push_str(&word),
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A statement tried at load, left out with a warning if PostgreSQL refuses it.
struct Attempt {
    /// `view apidb.geneattributes`, for the warning.
    what: String,
    /// The schema to resolve unqualified names in (Oracle resolves them in the owner's).
    search_path: String,
    sql: String,
}

/// A dollar-quoted string whose tag does not occur in `text`.
fn dollar_quoted(text: &str) -> String {
    let mut tag = "$vmbuild$".to_string();
    let mut n = 0;
    while text.contains(&tag) {
        n += 1;
        tag = format!("$vmbuild{n}$");
    }
    format!("{tag}{text}{tag}")
}

/// Columns converted, in table order, with their PostgreSQL names.
fn converted_columns<'a>(table: &'a Table, names: &TableNames) -> Vec<(&'a Column, String)> {
    table
        .columns
        .iter()
        .filter_map(|c| names.columns.get(&c.name).map(|n| (c, n.clone())))
        .collect()
}

/// The PostgreSQL names of `columns`, or the first one that was not converted.
fn column_list(columns: &[String], names: &TableNames) -> Result<String, String> {
    let mut out = Vec::new();
    for c in columns {
        match names.columns.get(c) {
            Some(n) => out.push(quote(n)),
            None => return Err(c.clone()),
        }
    }
    Ok(out.join(", "))
}

/// Write `dump.sql` for `catalog` to `out`, reading rows from `rows`.
pub fn convert(
    catalog: &Catalog,
    rows: &mut dyn RowSource,
    out: &mut dyn Write,
) -> Result<Converted, ConvertError> {
    let mut names = Names::work_out(catalog)?;
    let mut converted = Converted::default();

    writeln!(
        out,
        "-- Written by vmbuild: Oracle schemas converted for PostgreSQL.\n\
         SET client_encoding = 'UTF8';\n\
         SET standard_conforming_strings = on;\n\
         SET client_min_messages = warning;\n"
    )?;
    for schema in &catalog.schemas {
        writeln!(
            out,
            "CREATE SCHEMA {};",
            quote(&names.schemas[&schema.name])
        )?;
    }
    writeln!(out)?;

    // Tables, with their columns' types, NOT NULL and defaults.
    for schema in &catalog.schemas {
        let pg_schema = names.schemas[&schema.name].clone();
        for table in &schema.tables {
            let key = (schema.name.clone(), table.name.clone());
            let table_names = &names.tables[&key];
            let full = format!("{}.{}", pg_schema, table_names.name);
            let qualified = names.table(&schema.name, &table.name).expect("named");
            let mut lines = Vec::new();
            for column in &table.columns {
                let Some(pg_type) = column.data_type.postgres() else {
                    let OracleType::Unsupported(type_name) = &column.data_type else {
                        unreachable!("every other type has a PostgreSQL type")
                    };
                    skip(
                        format!(
                            "column {full}.{} of type {type_name}: left out",
                            pg_name(&column.name)
                        ),
                        &mut converted,
                    );
                    continue;
                };
                let mut line = format!(
                    "    {} {pg_type}",
                    quote(&table_names.columns[&column.name])
                );
                if let Some(default) = &column.default {
                    match translate_default(default) {
                        Some(d) => line.push_str(&format!(" DEFAULT {d}")),
                        None if default.trim().eq_ignore_ascii_case("null") => {}
                        None => skip(
                            format!(
                                "the default of {full}.{} (`{}`)",
                                pg_name(&column.name),
                                shorten(default.trim(), 60)
                            ),
                            &mut converted,
                        ),
                    }
                }
                if !column.nullable {
                    line.push_str(" NOT NULL");
                }
                lines.push(line);
            }
            writeln!(out, "CREATE TABLE {qualified} (\n{}\n);", lines.join(",\n"))?;
            if let Some(comment) = &table.comment {
                writeln!(out, "COMMENT ON TABLE {qualified} IS {};", literal(comment))?;
            }
            for column in &table.columns {
                if let (Some(comment), Some(pg)) =
                    (&column.comment, table_names.columns.get(&column.name))
                {
                    writeln!(
                        out,
                        "COMMENT ON COLUMN {qualified}.{} IS {};",
                        quote(pg),
                        literal(comment)
                    )?;
                }
            }
        }
        for sequence in &schema.sequences {
            writeln!(out, "{}", sequence_sql(&pg_schema, sequence))?;
        }
    }
    writeln!(out)?;

    // The rows.
    for schema in &catalog.schemas {
        let pg_schema = names.schemas[&schema.name].clone();
        for table in &schema.tables {
            let table_names = &names.tables[&(schema.name.clone(), table.name.clone())];
            let key = format!("{pg_schema}.{}", table_names.name);
            if !table.with_data {
                converted.rows.insert(key, 0);
                continue;
            }
            let columns = converted_columns(table, table_names);
            let qualified = names.table(&schema.name, &table.name).expect("named");
            let list: Vec<String> = columns.iter().map(|(_, n)| quote(n)).collect();
            writeln!(out, "COPY {qualified} ({}) FROM stdin;", list.join(", "))?;
            let mut count: i64 = 0;
            let mut line = String::new();
            let column_refs: Vec<&Column> = columns.iter().map(|(c, _)| *c).collect();
            rows.read(schema, table, &column_refs, &mut |values| {
                if values.len() != column_refs.len() {
                    return Err(ConvertError::RowShape {
                        table: key.clone(),
                        expected: column_refs.len(),
                        got: values.len(),
                    });
                }
                line.clear();
                copy_row(values, &mut line).map_err(|source| {
                    // Which column: the first that fails on its own.
                    let column = values
                        .iter()
                        .position(|v| super::types::copy_field(v, &mut String::new()).is_err())
                        .map(|i| columns[i].1.clone())
                        .unwrap_or_default();
                    ConvertError::Value {
                        table: key.clone(),
                        column,
                        source,
                    }
                })?;
                out.write_all(line.as_bytes())?;
                count += 1;
                Ok(())
            })?;
            writeln!(out, "\\.\n")?;
            converted.rows.insert(key, count);
        }
    }

    // Keys and indexes, after the rows (faster, as pg_dump does it).
    let mut foreign = Vec::new();
    let mut attempts = Vec::new();
    for schema in &catalog.schemas {
        let pg_schema = names.schemas[&schema.name].clone();
        for table in &schema.tables {
            let tkey = (schema.name.clone(), table.name.clone());
            let qualified = names.table(&schema.name, &table.name).expect("named");
            let full = format!("{pg_schema}.{}", names.tables[&tkey].name);
            for constraint in &table.constraints {
                let what = format!("constraint {} of {full}", pg_name(&constraint.name));
                if !constraint.enabled {
                    skip(format!("{what}: disabled in Oracle"), &mut converted);
                    continue;
                }
                let not_valid = if constraint.validated {
                    ""
                } else {
                    " NOT VALID"
                };
                match &constraint.kind {
                    ConstraintKind::PrimaryKey { columns } | ConstraintKind::Unique { columns } => {
                        let kind = if matches!(constraint.kind, ConstraintKind::PrimaryKey { .. })
                        {
                            "PRIMARY KEY"
                        } else {
                            "UNIQUE"
                        };
                        match column_list(columns, &names.tables[&tkey]) {
                            Ok(list) => {
                                let name = names.relation(&pg_schema, &constraint.name);
                                writeln!(
                                    out,
                                    "ALTER TABLE ONLY {qualified} ADD CONSTRAINT {} {kind} ({list});",
                                    quote(&name)
                                )?;
                            }
                            Err(c) => skip(
                                format!("{what}: its column {} was left out", pg_name(&c)),
                                &mut converted,
                            ),
                        }
                    }
                    ConstraintKind::ForeignKey {
                        columns,
                        schema: ref_schema,
                        table: ref_table,
                        references,
                        on_delete,
                    } => {
                        let Some(target) = names.table(ref_schema, ref_table) else {
                            skip(
                                format!(
                                    "{what}: it references {}.{}, outside the allowlist",
                                    pg_name(ref_schema),
                                    pg_name(ref_table)
                                ),
                                &mut converted,
                            );
                            continue;
                        };
                        let target_names =
                            &names.tables[&(ref_schema.clone(), ref_table.clone())];
                        match (
                            column_list(columns, &names.tables[&tkey]),
                            column_list(references, target_names),
                        ) {
                            (Ok(list), Ok(target_list)) => {
                                let action = match on_delete {
                                    OnDelete::NoAction => "",
                                    OnDelete::Cascade => " ON DELETE CASCADE",
                                    OnDelete::SetNull => " ON DELETE SET NULL",
                                };
                                foreign.push(format!(
                                    "ALTER TABLE ONLY {qualified} ADD CONSTRAINT {} FOREIGN KEY ({list}) REFERENCES {target} ({target_list}){action}{not_valid};",
                                    quote(&pg_name(&constraint.name))
                                ));
                            }
                            (Err(c), _) | (_, Err(c)) => skip(
                                format!("{what}: the column {} was left out", pg_name(&c)),
                                &mut converted,
                            ),
                        }
                    }
                    ConstraintKind::Check { condition } => match translate_sql(condition) {
                        Ok(sql) => attempts.push(Attempt {
                            what: format!("check {what}"),
                            search_path: pg_schema.clone(),
                            sql: format!(
                                "ALTER TABLE ONLY {qualified} ADD CONSTRAINT {} CHECK ({sql}){not_valid}",
                                quote(&pg_name(&constraint.name))
                            ),
                        }),
                        Err(why) => skip(format!("check {what}: {why}"), &mut converted),
                    },
                }
            }
            for index in &table.indexes {
                let what = format!("index {} of {full}", pg_name(&index.name));
                let kind = index.index_type.to_ascii_uppercase();
                if kind == "LOB" || kind.starts_with("IOT") || kind == "CLUSTER" {
                    continue; // Oracle's own storage, no index of the data's.
                }
                if kind.starts_with("DOMAIN") {
                    skip(
                        format!("{what}: a domain index (Oracle Text, Spatial...)"),
                        &mut converted,
                    );
                    continue;
                }
                let table_names = &names.tables[&tkey];
                let mut keys = Vec::new();
                let mut expression = false;
                let mut failed = None;
                for key in &index.keys {
                    let order = if key.descending { " DESC" } else { "" };
                    match &key.expression {
                        Some(expr) => match simple_column(expr) {
                            // A DESC key is stored as an expression of one quoted column.
                            Some(column) => match table_names.columns.get(&column) {
                                Some(pg) => keys.push(format!("{}{order}", quote(pg))),
                                None => {
                                    failed = Some(format!(
                                        "its column {} was left out",
                                        pg_name(&column)
                                    ))
                                }
                            },
                            None => match translate_sql(expr) {
                                Ok(sql) => {
                                    expression = true;
                                    keys.push(format!("({sql}){order}"));
                                }
                                Err(why) => failed = Some(why),
                            },
                        },
                        None => match table_names.columns.get(&key.column) {
                            Some(pg) => keys.push(format!("{}{order}", quote(pg))),
                            None => {
                                failed = Some(format!(
                                    "its column {} was left out",
                                    pg_name(&key.column)
                                ))
                            }
                        },
                    }
                }
                if let Some(why) = failed {
                    skip(format!("{what}: {why}"), &mut converted);
                    continue;
                }
                let name = names.relation(&pg_schema, &index.name);
                let sql = format!(
                    "CREATE {}INDEX {} ON {qualified} ({})",
                    if index.unique { "UNIQUE " } else { "" },
                    quote(&name),
                    keys.join(", ")
                );
                if expression {
                    attempts.push(Attempt {
                        what: format!("function-based {what}"),
                        search_path: pg_schema.clone(),
                        sql,
                    });
                } else {
                    writeln!(out, "{sql};")?;
                }
            }
        }
    }
    for statement in foreign {
        writeln!(out, "{statement}")?;
    }
    for schema in &catalog.schemas {
        let pg_schema = names.schemas[&schema.name].clone();
        for view in &schema.views {
            let what = format!("view {pg_schema}.{}", pg_name(&view.name));
            match translate_sql(view.text.trim().trim_end_matches(';')) {
                Ok(sql) => attempts.push(Attempt {
                    what,
                    search_path: pg_schema.clone(),
                    sql: format!(
                        "CREATE VIEW {}.{} AS\n{sql}",
                        quote(&pg_schema),
                        quote(&pg_name(&view.name))
                    ),
                }),
                Err(why) => skip(format!("{what}: {why}"), &mut converted),
            }
        }
    }
    converted.attempted = attempts.iter().map(|a| a.what.clone()).collect();
    if !attempts.is_empty() {
        write_attempts(out, &attempts)?;
    }
    if !converted.not_translated.is_empty() {
        writeln!(out, "\n-- Not translated:")?;
        for line in &converted.not_translated {
            writeln!(out, "--   {}", line.replace('\n', " "))?;
        }
    }
    Ok(converted)
}

/// Record something left out.
fn skip(what: String, converted: &mut Converted) {
    converted.not_translated.push(what);
}

/// `"COL"` (how Oracle stores a descending key) → `COL`.
fn simple_column(expression: &str) -> Option<String> {
    let e = expression.trim();
    let inner = e.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('"')).then(|| inner.to_string())
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    text.chars().take(max - 1).collect::<String>() + "…"
}

/// A sequence, its bounds clamped to PostgreSQL's bigint.
fn sequence_sql(pg_schema: &str, sequence: &Sequence) -> String {
    let number = |text: &str, default: i128| text.trim().parse::<i128>().unwrap_or(default);
    let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let increment = clamp(number(&sequence.increment, 1)).max(i64::MIN + 1);
    let increment = if increment == 0 { 1 } else { increment };
    let min = clamp(number(&sequence.min, 1));
    let max = clamp(number(&sequence.max, i128::from(i64::MAX)));
    let (min, max) = if min < max { (min, max) } else { (max, min) };
    let next = clamp(number(&sequence.next, i128::from(min))).clamp(min, max);
    format!(
        "CREATE SEQUENCE {}.{} INCREMENT BY {increment} MINVALUE {min} MAXVALUE {max} START WITH {next}{};",
        quote(pg_schema),
        quote(&pg_name(&sequence.name)),
        if sequence.cycle { " CYCLE" } else { "" }
    )
}

/// The statements tried at load: a temporary table of them and a block that runs each in a
/// subtransaction, again while any succeeds, and warns of those left.
fn write_attempts(out: &mut dyn Write, attempts: &[Attempt]) -> std::io::Result<()> {
    writeln!(
        out,
        "\n-- Tried one by one: PostgreSQL may refuse Oracle SQL; what it refuses is left out\n\
         -- with a WARNING.\n\
         CREATE TEMPORARY TABLE vmbuild_attempts (n integer PRIMARY KEY, what text, search_path text, sql text, error text);"
    )?;
    for (n, attempt) in attempts.iter().enumerate() {
        writeln!(
            out,
            "INSERT INTO vmbuild_attempts VALUES ({n}, {}, {}, {}, NULL);",
            literal(&attempt.what),
            literal(&attempt.search_path),
            dollar_quoted(&attempt.sql)
        )?;
    }
    out.write_all(
        br#"DO $vmbuild_attempts$
DECLARE
    r record;
    progress boolean := true;
BEGIN
    WHILE progress LOOP
        progress := false;
        FOR r IN SELECT * FROM vmbuild_attempts ORDER BY n LOOP
            BEGIN
                PERFORM set_config('search_path', quote_ident(r.search_path), true);
                EXECUTE r.sql;
                DELETE FROM vmbuild_attempts WHERE n = r.n;
                progress := true;
            EXCEPTION WHEN OTHERS THEN
                UPDATE vmbuild_attempts SET error = SQLERRM WHERE n = r.n;
            END;
        END LOOP;
    END LOOP;
    PERFORM set_config('search_path', '"$user", public', true);
    FOR r IN SELECT * FROM vmbuild_attempts ORDER BY n LOOP
        RAISE WARNING 'vmbuild: % left out: %', r.what, r.error;
    END LOOP;
END
$vmbuild_attempts$;
DROP TABLE vmbuild_attempts;
"#,
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::*;

    fn convert_to_string(catalog: &Catalog, rows: &mut dyn RowSource) -> (String, Converted) {
        let mut out = Vec::new();
        let converted = convert(catalog, rows, &mut out).expect("converts");
        (String::from_utf8(out).expect("utf-8"), converted)
    }

    #[test]
    fn long_names_are_cut_with_a_digest_and_stay_apart() {
        assert_eq!(pg_name("ApiDB"), "apidb");
        let a = pg_name(&format!("{}_A", "X".repeat(70)));
        let b = pg_name(&format!("{}_B", "X".repeat(70)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert!(a.starts_with("xxxx"));
        // Multibyte characters are not split.
        let c = pg_name(&"É".repeat(40));
        assert!(c.len() <= 63, "{c}");
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn defaults_translate_when_literal_or_the_time() {
        assert_eq!(
            translate_default("SYSDATE\n").as_deref(),
            Some("LOCALTIMESTAMP(0)")
        );
        assert_eq!(translate_default(" 0 ").as_deref(), Some("0"));
        assert_eq!(translate_default("-1.5").as_deref(), Some("-1.5"));
        assert_eq!(translate_default("'it''s'").as_deref(), Some("'it''s'"));
        assert_eq!(translate_default("NULL"), None);
        assert_eq!(translate_default("'a' || 'b'"), None);
        assert_eq!(translate_default("USERENV('SESSIONID')"), None);
        assert_eq!(translate_default("core.seq.nextval"), None);
    }

    #[test]
    fn not_null_checks_are_told_apart() {
        assert!(is_not_null_check("\"NAME\" IS NOT NULL"));
        assert!(is_not_null_check(" \"A B\" is not null "));
        assert!(!is_not_null_check("\"NAME\" IS NOT NULL AND \"X\" > 0"));
        assert!(!is_not_null_check("LENGTH > 0"));
    }

    #[test]
    fn oracle_sql_is_rewritten_or_refused() {
        assert_eq!(
            translate_sql(
                "SELECT \"SOURCE_ID\", NVL(x, 'NVL \"Q\"') FROM \"APIDB\".\"T\" -- \"C\""
            )
            .unwrap(),
            "SELECT \"source_id\", coalesce(x, 'NVL \"Q\"') FROM \"apidb\".\"t\" -- \"C\""
        );
        assert_eq!(
            translate_sql("select a from t minus select a from u where d < sysdate").unwrap(),
            "select a from t EXCEPT select a from u where d < LOCALTIMESTAMP(0)"
        );
        assert_eq!(translate_sql("'it''s (+)'").unwrap(), "'it''s (+)'");
        for (sql, why) in [
            ("SELECT a.x FROM a, b WHERE a.id = b.id ( + )", "(+)"),
            ("SELECT x FROM t WHERE ROWNUM < 10", "ROWNUM"),
            ("SELECT DECODE(x, 1, 'a') FROM t", "DECODE"),
            ("SELECT 1 FROM dual", "DUAL"),
            (
                "SELECT level FROM t CONNECT BY PRIOR id = parent",
                "CONNECT",
            ),
            ("SELECT x FROM t#1", "t#1"),
        ] {
            let err = translate_sql(sql).expect_err(sql);
            assert!(err.contains(why), "{sql}: {err}");
        }
    }

    #[test]
    fn the_gus_catalog_converts_with_what_did_not_translate_listed() {
        let (catalog, mut rows) = gus();
        let (sql, converted) = convert_to_string(&catalog, &mut rows);
        assert_eq!(converted.rows["core.databaseinfo"], 5);
        assert_eq!(converted.rows["dots.nasequence"], 14);
        assert_eq!(converted.rows["apidbtuning.geneattributes1234"], 3000);
        let long = pg_name(
            "GENE_ATTRIBUTES_WITH_A_VERY_LONG_NAME_THAT_ORACLE_12_2_ALLOWS_BUT_POSTGRES_DOES_NOT",
        );
        assert_eq!(
            converted.rows[&format!("apidbtuning.{long}")],
            0,
            "no rows: with_data is off"
        );
        assert_eq!(converted.rows.len(), 8);
        assert!(sql.contains("CREATE SCHEMA \"apidbtuning\";"));
        assert!(sql.contains(
            "CREATE TABLE \"core\".\"databaseinfo\" (\n    \"database_info_id\" bigint NOT NULL,\n    \"name\" varchar(30) NOT NULL,\n    \"description\" varchar(4000),\n    \"modification_date\" timestamp(0) DEFAULT LOCALTIMESTAMP(0) NOT NULL\n);"
        ), "{sql}");
        assert!(sql.contains("\"note\" varchar(10) DEFAULT 'n/a'"));
        assert!(sql.contains("COPY \"core\".\"algorithm\" (\"algorithm_id\", \"name\", \"description\") FROM stdin;\n1\tGUS::Supported::Plugin::InsertSequenceFeatures\tload\\tannotation\\nfrom GFF3 \\\\ EMBL\n2\tApiCommonData::Load::Plugin::InsertGeneAttributes\t\n3\ta plugin\t\\N\n\\.\n"), "{sql}");
        assert!(sql.contains("CREATE SEQUENCE \"core\".\"algorithm_sq\" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 21;"));
        // The index named like its table gets another name.
        assert!(
            sql.contains(
                "CREATE INDEX \"nasequence_2\" ON \"dots\".\"nasequence\" (\"source_id\");"
            ),
            "{sql}"
        );
        assert!(sql.contains(
            "CREATE INDEX \"nasequence_len_desc\" ON \"dots\".\"nasequence\" (\"length\" DESC);"
        ));
        assert!(sql.contains(
            "CREATE INDEX \"nasequence_taxon_bix\" ON \"dots\".\"nasequence\" (\"taxon_id\");"
        ));
        assert!(sql.contains("ADD CONSTRAINT \"nasequence_fk_taxon\" FOREIGN KEY (\"taxon_id\") REFERENCES \"sres\".\"taxon\" (\"taxon_id\");"));
        assert!(
            !sql.contains("sys_il0000012345"),
            "LOB indexes are Oracle's storage"
        );
        assert_eq!(
            converted.not_translated,
            [
                "column apidb.oddities.doc of type XMLTYPE: left out",
                "the default of apidb.oddities.session_id (`USERENV('SESSIONID')`)",
                "constraint nasequence_fk_user of dots.nasequence: it references userlogins5.users, outside the allowlist",
                "constraint nasequence_ck_old of dots.nasequence: disabled in Oracle",
                "index oddities_doc_ix of apidb.oddities: its column doc was left out",
                "view apidb.old_style_join: uses Oracle's `(+)` outer joins",
            ]
        );
        assert_eq!(
            converted.attempted,
            [
                "check constraint nasequence_ck_len of dots.nasequence",
                "function-based index nasequence_upper_ix of dots.nasequence",
                "view apidbtuning.gene_products",
                "view apidbtuning.geneattributes",
                "view apidbtuning.broken",
            ]
        );
        assert!(sql.contains("-- Not translated:\n--   column apidb.oddities.doc"));
        // Deterministic: the same description, the same bytes.
        let (catalog, mut rows) = gus();
        assert_eq!(convert_to_string(&catalog, &mut rows).0, sql);
    }

    #[test]
    fn names_that_differ_only_by_case_are_an_error() {
        let (mut catalog, mut rows) = gus();
        let mut twin = catalog.schemas[0].tables[1].clone();
        twin.name = "Algorithm".into();
        catalog.schemas[0].tables.push(twin);
        let err = convert(&catalog, &mut rows, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the tables `CORE.ALGORITHM` and `CORE.Algorithm` both become `core.algorithm` in PostgreSQL"
        );
    }

    #[test]
    fn a_nul_in_text_names_the_table_and_column() {
        let (catalog, mut rows) = gus();
        rows.0.get_mut(&("SRES".into(), "TAXON".into())).unwrap()[1][2] = text("a\0b");
        let err = convert(&catalog, &mut rows, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sres.taxon.name: a text value contains a NUL character, which PostgreSQL text cannot hold"
        );
        let (catalog, mut rows) = gus();
        rows.0.get_mut(&("SRES".into(), "TAXON".into())).unwrap()[1].pop();
        let err = convert(&catalog, &mut rows, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                ConvertError::RowShape {
                    expected: 4,
                    got: 3,
                    ..
                }
            ),
            "{err}"
        );
    }
}

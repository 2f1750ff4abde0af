//! Talking to an Oracle source through the `oracle` crate: connect, resolve the allowlist
//! against `ALL_USERS`, run the fingerprint query, take and release the export locks, read the
//! current SCN, describe the allowlisted schemas from the data dictionary ([`Catalog`]) and
//! read their rows as of an SCN ([`RowSource`]).
//!
//! Every call blocks: run them on a blocking thread. A long call is interrupted from another
//! thread through an [`Interrupter`] (Ctrl-C). No error here contains the source string or its
//! password: errors name the secret's identity, and Oracle's messages are scrubbed of both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobMatcher};
use oracle::sql_type::{IntervalDS, IntervalYM, OracleType as CrateType, Timestamp as CrateTime};
use oracle::{Connection, Connector, Row};

use super::connect;
use super::convert::{
    Catalog, Column, Constraint, ConstraintKind, ConvertError, Index, IndexKey, OnDelete,
    RowSource, Schema, Sequence, Table, View,
};
use super::sql;
use super::types::{OracleType, ReadAs, Timestamp, Value};
use crate::recipe::model::{LockBlock, Schemas};
use crate::recipe::Secret;
use crate::steps::database::source::{
    match_allowlist, Allowlist, Requested, SourceError, DEFAULT_LOCK_WAIT, TUNING_MANAGER,
};

/// Oracle error codes vmbuild tells apart.
const TABLE_MISSING: i32 = 942;
const INVALID_IDENTIFIER: i32 = 904;
const BAD_LOGIN: i32 = 1017;
const ACCOUNT_LOCKED: i32 = 28000;
const PASSWORD_EXPIRED: i32 = 28001;
const NO_PRIVILEGE: i32 = 1031;
/// ODPI-C: the Oracle client library cannot be loaded.
const NO_CLIENT: i32 = 1047;

/// A connection to the source.
pub struct Session {
    conn: Arc<Connection>,
    identity: String,
    /// What to blank out of Oracle's messages.
    hide: Vec<String>,
}

/// Interrupts whatever call a session is in (`OCIBreak`), from another thread.
#[derive(Clone)]
pub struct Interrupter(Arc<Connection>);

impl Interrupter {
    pub fn interrupt(&self) {
        let _ = self.0.break_execution();
    }
}

/// Blank `hide` out of `text`.
fn scrub(text: &str, hide: &[String]) -> String {
    let mut text = text.to_string();
    for h in hide.iter().filter(|h| h.len() >= 3) {
        text = text.replace(h.as_str(), "***");
    }
    text
}

/// The text of an Oracle error: its message (`ORA-00942: table or view does not exist`).
fn message(e: &oracle::Error) -> String {
    match e.db_error() {
        Some(db) => db.message().trim().to_string(),
        None => e.to_string(),
    }
}

impl Session {
    /// Connect with the source string `url` (see [`connect`]); the session's time zone is UTC,
    /// so that values `WITH LOCAL TIME ZONE` arrive in UTC.
    pub fn connect(url: &Secret) -> Result<Session, SourceError> {
        let identity = url.identity().to_string();
        let source = connect::parse(url.reveal()).map_err(|why| SourceError::BadOracleSource {
            identity: identity.clone(),
            why: why.to_string(),
        })?;
        let mut hide: Vec<String> = url.parts().to_vec();
        hide.push(source.password().to_string());
        hide.push(source.connect.clone());
        let mut connector = Connector::new(&source.user, source.password(), &source.connect);
        connector.driver_name("vmbuild");
        let conn = connector.connect().map_err(|e| {
            let reason = scrub(&message(&e), &hide);
            if e.dpi_code() == Some(NO_CLIENT) || reason.contains("DPI-1047") {
                return SourceError::NoOracleClient { reason };
            }
            match e.oci_code() {
                Some(BAD_LOGIN | ACCOUNT_LOCKED | PASSWORD_EXPIRED) => {
                    SourceError::Authentication {
                        identity: identity.clone(),
                        reason,
                    }
                }
                _ => SourceError::Unreachable {
                    identity: identity.clone(),
                    reason,
                },
            }
        })?;
        let session = Session {
            conn: Arc::new(conn),
            identity,
            hide,
        };
        let _ = session.conn.set_module("vmbuild");
        session.execute(
            "setting the session's time zone",
            "ALTER SESSION SET TIME_ZONE = '+00:00'",
            &[],
        )?;
        Ok(session)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The connection itself, for tests that set up tables.
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.conn.clone())
    }

    /// A `map_err` adapter for a failed call.
    fn failed(&self, action: &'static str) -> impl Fn(oracle::Error) -> SourceError + '_ {
        move |e| SourceError::Query {
            action,
            reason: scrub(&message(&e), &self.hide),
        }
    }

    fn execute(
        &self,
        action: &'static str,
        sql: &str,
        params: &[(&str, &dyn oracle::sql_type::ToSql)],
    ) -> Result<u64, SourceError> {
        let stmt = self
            .conn
            .execute_named(sql, params)
            .map_err(self.failed(action))?;
        stmt.row_count().map_err(self.failed(action))
    }

    /// Rows of a query with named binds, each turned into `T` by `convert`.
    fn rows<T>(
        &self,
        action: &'static str,
        sql: &str,
        params: &[(&str, &dyn oracle::sql_type::ToSql)],
        mut convert: impl FnMut(&Row) -> oracle::Result<T>,
    ) -> Result<Vec<T>, SourceError> {
        let rows = self
            .conn
            .query_named(sql, params)
            .map_err(self.failed(action))?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(self.failed(action))?;
            out.push(convert(&row).map_err(self.failed(action))?);
        }
        Ok(out)
    }

    /// Run `f` in a read-only transaction (`SET TRANSACTION READ ONLY`), ended afterwards.
    fn read_only<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        self.execute("starting a read-only transaction", sql::READ_ONLY, &[])?;
        let result = f(self);
        let _ = self.conn.rollback();
        result
    }

    /// The schemas to clone: a list, or the registry's names, matched case-insensitively to
    /// the users Oracle shows (`ALL_USERS`, upper case), minus `exclude` globs.
    pub fn allowlist(
        &self,
        schemas: &Schemas,
        exclude: &[String],
    ) -> Result<Allowlist, SourceError> {
        self.read_only(|s| {
            let present: Vec<String> =
                s.rows("listing schemas", sql::ALL_USERS, &[], |r| r.get(0))?;
            match schemas {
                Schemas::List(names) => match_allowlist(&present, Requested::List(names), exclude),
                Schemas::Registry { registry, column } => {
                    let query = sql::registry_query(registry, column).map_err(|_| {
                        SourceError::BadRegistry {
                            registry: registry.clone(),
                        }
                    })?;
                    let rows = s.conn.query(&query, &[]).map_err(|e| match e.oci_code() {
                        Some(TABLE_MISSING) => SourceError::MissingRegistry {
                            table: registry.clone(),
                        },
                        Some(INVALID_IDENTIFIER) => SourceError::MissingRegistryColumn {
                            table: registry.clone(),
                            column: column.clone(),
                        },
                        _ => SourceError::Query {
                            action: "reading the schema registry",
                            reason: scrub(&message(&e), &s.hide),
                        },
                    })?;
                    let mut names = Vec::new();
                    for row in rows {
                        let row = row.map_err(s.failed("reading the schema registry"))?;
                        if let Some(name) = row
                            .get::<usize, Option<String>>(0)
                            .map_err(s.failed("reading the schema registry"))?
                        {
                            names.push(name);
                        }
                    }
                    match_allowlist(&present, Requested::Registry(names), exclude)
                }
            }
        })
    }

    /// Run the recipe's fingerprint query in a read-only transaction: each row as
    /// `(value,value,...)`, sorted, one a line. `None` without a query.
    pub fn fingerprint(&self, query: Option<&str>) -> Result<Option<String>, SourceError> {
        let Some(query) = query else {
            return Ok(None);
        };
        let text = sql::fingerprint_query(query);
        self.read_only(|s| {
            let fail = |e: oracle::Error| SourceError::Fingerprint {
                reason: scrub(&message(&e), &s.hide),
            };
            let rows = s.conn.query(&text, &[]).map_err(fail)?;
            let mut lines = Vec::new();
            for row in rows {
                let row = row.map_err(fail)?;
                let values: Vec<String> = row
                    .sql_values()
                    .iter()
                    .map(|v| match v.get::<Option<String>>() {
                        Ok(Some(text)) => text,
                        Ok(None) => String::new(),
                        Err(_) => v.to_string(),
                    })
                    .collect();
                lines.push(format!("({})", values.join(",")));
            }
            lines.sort();
            Ok(Some(lines.join("\n")))
        })
    }

    /// The current SCN (needs EXECUTE on DBMS_FLASHBACK).
    pub fn current_scn(&self) -> Result<u64, SourceError> {
        self.conn
            .query_row_as::<u64>(sql::CURRENT_SCN, &[])
            .map_err(|e| SourceError::Query {
                action: "reading the current SCN (it needs EXECUTE on DBMS_FLASHBACK)",
                reason: scrub(&message(&e), &self.hide),
            })
    }

    /// How many rows `schema.table` had at `scn`.
    pub fn count(&self, schema: &str, table: &str, scn: u64) -> Result<i64, SourceError> {
        self.conn
            .query_row_as_named::<i64>(&sql::count_rows(schema, table), &[("scn", &scn)])
            .map_err(self.failed("counting rows"))
    }

    /// Describe `schemas` (Oracle names) from the data dictionary; tables matching an
    /// `exclude_table_data` glob (`SCHEMA.TABLE`, case-insensitive) get no rows.
    pub fn catalog(
        &self,
        schemas: &[String],
        exclude_table_data: &[String],
    ) -> Result<Catalog, SourceError> {
        let without_rows = exclude_table_data
            .iter()
            .map(|p| {
                GlobBuilder::new(p)
                    .case_insensitive(true)
                    .literal_separator(false)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| SourceError::BadPattern {
                        pattern: p.clone(),
                        reason: e.kind().to_string(),
                    })
            })
            .collect::<Result<Vec<GlobMatcher>, _>>()?;
        // Key constraints of every schema read: (owner, name) → (table, columns).
        let mut keys: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
        let mut pending_foreign: Vec<(usize, usize, usize, String, String)> = Vec::new();
        let mut catalog = Catalog::default();
        for owner in schemas {
            let (schema, foreign) = self.describe(owner, &without_rows, &mut keys)?;
            let s = catalog.schemas.len();
            for (t, c, r_owner, r_name) in foreign {
                pending_foreign.push((s, t, c, r_owner, r_name));
            }
            catalog.schemas.push(schema);
        }
        // Foreign keys: the referenced table and columns, from the schemas read, or asked.
        for (s, t, c, r_owner, r_name) in pending_foreign {
            let target = match keys.get(&(r_owner.clone(), r_name.clone())) {
                Some(found) => found.clone(),
                None => {
                    let rows = self
                        .rows(
                            "reading a referenced key",
                            sql::REFERENCED_KEY,
                            &[("owner", &r_owner), ("name", &r_name)],
                            |r| Ok((r.get::<usize, String>(0)?, r.get::<usize, String>(1)?)),
                        )
                        .unwrap_or_default();
                    let table = rows
                        .first()
                        .map(|(t, _)| t.clone())
                        .unwrap_or(r_name.clone());
                    (table, rows.into_iter().map(|(_, c)| c).collect())
                }
            };
            if let ConstraintKind::ForeignKey {
                schema,
                table,
                references,
                ..
            } = &mut catalog.schemas[s].tables[t].constraints[c].kind
            {
                *schema = r_owner;
                *table = target.0;
                *references = target.1;
            }
        }
        Ok(catalog)
    }

    /// One schema; its foreign keys' targets are filled in by [`Session::catalog`]:
    /// (table index, constraint index, referenced owner, referenced constraint).
    #[allow(clippy::type_complexity)]
    fn describe(
        &self,
        owner: &str,
        without_rows: &[GlobMatcher],
        keys: &mut BTreeMap<(String, String), (String, Vec<String>)>,
    ) -> Result<(Schema, Vec<(usize, usize, String, String)>), SourceError> {
        let by_owner: &[(&str, &dyn oracle::sql_type::ToSql)] = &[("owner", &owner)];
        let names: Vec<String> =
            self.rows("listing tables", sql::TABLES, by_owner, |r| r.get(0))?;
        let mut tables: BTreeMap<String, Table> = names
            .iter()
            .map(|name| {
                let full = format!("{owner}.{name}");
                (
                    name.clone(),
                    Table {
                        name: name.clone(),
                        with_data: !without_rows.iter().any(|m| m.is_match(&full)),
                        ..Table::default()
                    },
                )
            })
            .collect();

        type ColumnRow = (
            String,
            String,
            String,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            String,
            Option<String>,
        );
        let columns: Vec<ColumnRow> =
            self.rows("reading columns", sql::COLUMNS, by_owner, |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?;
        for (table, name, data_type, length, precision, scale, char_length, nullable, default) in
            columns
        {
            if let Some(t) = tables.get_mut(&table) {
                t.columns.push(Column {
                    name,
                    data_type: OracleType::from_catalog(
                        &data_type,
                        length,
                        precision,
                        scale,
                        char_length,
                    ),
                    nullable: nullable != "N",
                    default: default.filter(|d| !d.trim().is_empty()),
                    comment: None,
                });
            }
        }
        for (table, comment) in self.rows(
            "reading table comments",
            sql::TABLE_COMMENTS,
            by_owner,
            |r| Ok((r.get::<usize, String>(0)?, r.get::<usize, String>(1)?)),
        )? {
            if let Some(t) = tables.get_mut(&table) {
                t.comment = Some(comment);
            }
        }
        for (table, column, comment) in self.rows(
            "reading column comments",
            sql::COLUMN_COMMENTS,
            by_owner,
            |r| {
                Ok((
                    r.get::<usize, String>(0)?,
                    r.get::<usize, String>(1)?,
                    r.get::<usize, String>(2)?,
                ))
            },
        )? {
            if let Some(c) = tables
                .get_mut(&table)
                .and_then(|t| t.columns.iter_mut().find(|c| c.name == column))
            {
                c.comment = Some(comment);
            }
        }

        // Constraints and their columns.
        let mut constraint_columns: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for (_, name, table, column) in self.rows(
            "reading constraint columns",
            sql::CONSTRAINT_COLUMNS,
            by_owner,
            |r| {
                Ok((
                    r.get::<usize, String>(0)?,
                    r.get::<usize, String>(1)?,
                    r.get::<usize, String>(2)?,
                    r.get::<usize, Option<String>>(3)?.unwrap_or_default(),
                ))
            },
        )? {
            constraint_columns
                .entry(name)
                .or_insert_with(|| (table, Vec::new()))
                .1
                .push(column);
        }
        type ConstraintRow = (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let constraints: Vec<ConstraintRow> =
            self.rows("reading constraints", sql::CONSTRAINTS, by_owner, |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })?;
        let mut backing_indexes = BTreeSet::new();
        let mut foreign = Vec::new();
        let mut order: Vec<String> = names.clone();
        order.sort();
        for (
            table,
            name,
            kind,
            status,
            validated,
            r_owner,
            r_name,
            delete_rule,
            condition,
            index,
        ) in constraints
        {
            let columns = constraint_columns
                .get(&name)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            if matches!(kind.as_str(), "P" | "U") {
                keys.insert(
                    (owner.to_string(), name.clone()),
                    (table.clone(), columns.clone()),
                );
                if let Some(index) = index {
                    backing_indexes.insert(index);
                }
            }
            let Some(t) = tables.get_mut(&table) else {
                continue;
            };
            let kind = match kind.as_str() {
                "P" => ConstraintKind::PrimaryKey { columns },
                "U" => ConstraintKind::Unique { columns },
                "R" => {
                    let position = names.iter().position(|n| *n == table).unwrap_or(0);
                    foreign.push((
                        position,
                        t.constraints.len(),
                        r_owner.unwrap_or_default(),
                        r_name.unwrap_or_default(),
                    ));
                    ConstraintKind::ForeignKey {
                        columns,
                        schema: String::new(),
                        table: String::new(),
                        references: Vec::new(),
                        on_delete: match delete_rule.as_deref() {
                            Some("CASCADE") => OnDelete::Cascade,
                            Some("SET NULL") => OnDelete::SetNull,
                            _ => OnDelete::NoAction,
                        },
                    }
                }
                _ => {
                    let condition = condition.unwrap_or_default();
                    if super::convert::is_not_null_check(&condition) {
                        continue; // The column's NOT NULL.
                    }
                    ConstraintKind::Check { condition }
                }
            };
            t.constraints.push(Constraint {
                name,
                kind,
                enabled: status == "ENABLED",
                validated: validated.as_deref() == Some("VALIDATED"),
            });
        }

        // Indexes, except those that back a key constraint (the constraint makes its own).
        let mut expressions: BTreeMap<(String, i64), String> = BTreeMap::new();
        for (index, position, expression) in self.rows(
            "reading index expressions",
            sql::INDEX_EXPRESSIONS,
            by_owner,
            |r| {
                Ok((
                    r.get::<usize, String>(0)?,
                    r.get::<usize, i64>(1)?,
                    r.get::<usize, Option<String>>(2)?.unwrap_or_default(),
                ))
            },
        )? {
            expressions.insert((index, position), expression);
        }
        let mut index_keys: BTreeMap<String, Vec<IndexKey>> = BTreeMap::new();
        for (index, position, column, descend) in
            self.rows("reading index columns", sql::INDEX_COLUMNS, by_owner, |r| {
                Ok((
                    r.get::<usize, String>(0)?,
                    r.get::<usize, i64>(1)?,
                    r.get::<usize, Option<String>>(2)?.unwrap_or_default(),
                    r.get::<usize, Option<String>>(3)?.unwrap_or_default(),
                ))
            })?
        {
            let expression = expressions.remove(&(index.clone(), position));
            index_keys.entry(index).or_default().push(IndexKey {
                column,
                expression,
                descending: descend == "DESC",
            });
        }
        for (table, name, index_type, uniqueness) in
            self.rows("reading indexes", sql::INDEXES, by_owner, |r| {
                Ok((
                    r.get::<usize, String>(0)?,
                    r.get::<usize, String>(1)?,
                    r.get::<usize, Option<String>>(2)?.unwrap_or_default(),
                    r.get::<usize, Option<String>>(3)?.unwrap_or_default(),
                ))
            })?
        {
            if backing_indexes.contains(&name) {
                continue;
            }
            if let Some(t) = tables.get_mut(&table) {
                t.indexes.push(Index {
                    keys: index_keys.remove(&name).unwrap_or_default(),
                    name,
                    unique: uniqueness == "UNIQUE",
                    index_type,
                });
            }
        }

        let views = self.rows("reading views", sql::VIEWS, by_owner, |r| {
            Ok(View {
                name: r.get(0)?,
                text: r.get::<usize, Option<String>>(1)?.unwrap_or_default(),
            })
        })?;
        let sequences = self.rows("reading sequences", sql::SEQUENCES, by_owner, |r| {
            Ok(Sequence {
                name: r.get(0)?,
                increment: r.get(1)?,
                min: r.get(2)?,
                max: r.get(3)?,
                next: r.get(4)?,
                cycle: r.get::<usize, Option<String>>(5)?.as_deref() == Some("Y"),
            })
        })?;
        // Tables in the order of `names`, which `foreign` positions refer to.
        let tables = names
            .iter()
            .filter_map(|n| tables.remove(n))
            .collect::<Vec<_>>();
        Ok((
            Schema {
                name: owner.to_string(),
                tables,
                views,
                sequences,
            },
            foreign,
        ))
    }

    /// The rows of the schemas as of `scn`, for the converter.
    pub fn rows_at<'a>(&'a self, scn: u64, stopped: &'a (dyn Fn() -> bool + Sync)) -> RowsAt<'a> {
        RowsAt {
            session: self,
            scn,
            stopped,
        }
    }

    /// Call a PL/SQL block with named binds; the binds' values afterwards by name.
    pub fn call(
        &self,
        action: &'static str,
        plsql: &str,
        params: &[(&str, &dyn oracle::sql_type::ToSql)],
    ) -> Result<oracle::Statement, SourceError> {
        let mut stmt = self
            .conn
            .statement(plsql)
            .build()
            .map_err(self.failed(action))?;
        stmt.execute_named(params).map_err(self.failed(action))?;
        Ok(stmt)
    }

    /// A bind's value after [`Session::call`].
    pub fn value<T: oracle::sql_type::FromSql>(
        &self,
        action: &'static str,
        stmt: &oracle::Statement,
        name: &str,
    ) -> Result<T, SourceError> {
        stmt.bind_value(name).map_err(self.failed(action))
    }

    /// The scrubbed message of an Oracle error, for callers that handle codes themselves.
    pub fn describe_error(&self, e: &oracle::Error) -> String {
        scrub(&message(e), &self.hide)
    }
}

/// Rows as of an SCN; implements the converter's [`RowSource`].
pub struct RowsAt<'a> {
    session: &'a Session,
    scn: u64,
    stopped: &'a (dyn Fn() -> bool + Sync),
}

fn read_value(row: &Row, i: usize, column: &Column) -> oracle::Result<Value> {
    Ok(match column.data_type.read_as() {
        ReadAs::Text => row
            .get::<usize, Option<String>>(i)?
            .map_or(Value::Null, Value::Text),
        ReadAs::Double => row
            .get::<usize, Option<f64>>(i)?
            .map_or(Value::Null, Value::Double),
        ReadAs::Bytes => row
            .get::<usize, Option<Vec<u8>>>(i)?
            .map_or(Value::Null, Value::Bytes),
        ReadAs::Timestamp => match row.get::<usize, Option<CrateTime>>(i)? {
            None => Value::Null,
            Some(t) => Value::Timestamp(Timestamp {
                year: t.year(),
                month: t.month(),
                day: t.day(),
                hour: t.hour(),
                minute: t.minute(),
                second: t.second(),
                nanosecond: t.nanosecond(),
                offset_minutes: if t.with_tz() {
                    Some(t.tz_offset() / 60)
                } else if matches!(column.data_type, OracleType::TimestampLtz { .. }) {
                    Some(0) // the session's time zone: UTC
                } else {
                    None
                },
            }),
        },
        ReadAs::IntervalDaySecond => match row.get::<usize, Option<IntervalDS>>(i)? {
            None => Value::Null,
            Some(d) => Value::DaySecond {
                days: d.days(),
                hours: d.hours(),
                minutes: d.minutes(),
                seconds: d.seconds(),
                nanoseconds: d.nanoseconds(),
            },
        },
        ReadAs::IntervalYearMonth => match row.get::<usize, Option<IntervalYM>>(i)? {
            None => Value::Null,
            Some(y) => Value::YearMonth {
                years: y.years(),
                months: y.months(),
            },
        },
    })
}

impl RowSource for RowsAt<'_> {
    fn read(
        &mut self,
        schema: &Schema,
        table: &Table,
        columns: &[&Column],
        each: &mut dyn FnMut(&[Value]) -> Result<(), ConvertError>,
    ) -> Result<(), ConvertError> {
        let full = format!("{}.{}", schema.name, table.name);
        let failed = |e: oracle::Error| ConvertError::Read {
            table: full.clone(),
            reason: self.session.describe_error(&e),
        };
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let text = sql::select_rows(&schema.name, &table.name, &names);
        let mut stmt = self
            .session
            .conn
            .statement(&text)
            .fetch_array_size(1000)
            .prefetch_rows(1000)
            .build()
            .map_err(failed)?;
        let rows = stmt.query_named(&[("scn", &self.scn)]).map_err(failed)?;
        let mut values = Vec::with_capacity(columns.len());
        for (n, row) in rows.enumerate() {
            if n % 1000 == 0 && (self.stopped)() {
                return Err(ConvertError::Read {
                    table: full.clone(),
                    reason: "stopped".into(),
                });
            }
            let row = row.map_err(failed)?;
            values.clear();
            for (i, column) in columns.iter().enumerate() {
                values.push(read_value(&row, i, column).map_err(failed)?);
            }
            each(&values)?;
        }
        Ok(())
    }
}

/// What an [`ExportLock`] holds.
enum Held {
    /// A DBMS_LOCK user lock, by its handle.
    Named { handle: String },
    /// The tuning manager's row claim, by the holder text written.
    Claim { holder: String },
}

/// The export lock, held on a session of its own until released or dropped (both release it;
/// ending the session alone would release a named lock, not the tuning manager's claim).
pub struct ExportLock {
    session: Option<Session>,
    held: Held,
    name: String,
}

impl ExportLock {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn release(mut self) -> Result<(), SourceError> {
        match self.session.take() {
            Some(session) => release_on(&session, &self.held),
            None => Ok(()),
        }
    }
}

impl Drop for ExportLock {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = release_on(&session, &self.held) {
                tracing::warn!("cannot release the export lock `{}`: {e}", self.name);
            }
        }
    }
}

fn release_on(session: &Session, held: &Held) -> Result<(), SourceError> {
    match held {
        Held::Named { handle } => {
            session.call(
                "releasing the export lock",
                sql::LOCK_RELEASE,
                &[("result", &CrateType::Number(0, 0)), ("handle", handle)],
            )?;
            Ok(())
        }
        Held::Claim { holder } => {
            session.execute(
                "releasing the export lock",
                sql::UNCLAIM,
                &[("holder", holder)],
            )?;
            session
                .conn
                .commit()
                .map_err(session.failed("releasing the export lock"))
        }
    }
}

/// Take the export lock on `session`, waiting while someone else holds it, at most
/// `lock.wait` (10 minutes by default), trying again every second; `stopped` ends the wait.
///
/// `lock.name == "tuning_manager"`: the tuning manager's claim of the row of
/// `apidb.InstanceMetaInfo` (`current_updater`, `update_start = SYSDATE`). Any other name: an
/// exclusive DBMS_LOCK user lock of that name, kept across commits.
pub fn lock(
    session: Session,
    lock: &LockBlock,
    holder: &str,
    stopped: &dyn Fn() -> bool,
) -> Result<ExportLock, SourceError> {
    let wait = lock
        .wait
        .as_ref()
        .map(|w| w.as_duration())
        .unwrap_or(DEFAULT_LOCK_WAIT);
    let started = Instant::now();
    let held = if lock.name == TUNING_MANAGER {
        Held::Claim {
            holder: holder.to_string(),
        }
    } else {
        sql::check_lock_name(&lock.name).map_err(|why| SourceError::BadLockName {
            name: lock.name.clone(),
            why,
        })?;
        let stmt = session.call(
            "allocating the export lock",
            sql::LOCK_ALLOCATE,
            &[("name", &lock.name), ("handle", &CrateType::Varchar2(128))],
        )?;
        Held::Named {
            handle: session.value("allocating the export lock", &stmt, "handle")?,
        }
    };
    loop {
        let remaining = wait.saturating_sub(started.elapsed());
        let (taken, current) = match &held {
            Held::Claim { holder } => try_claim(&session, holder)?,
            Held::Named { handle } => {
                // One second at a time, so that Ctrl-C is seen.
                let timeout = remaining.min(Duration::from_secs(1)).as_secs() as i64;
                try_named(&session, &lock.name, handle, timeout)?
            }
        };
        if taken {
            return Ok(ExportLock {
                session: Some(session),
                held,
                name: lock.name.clone(),
            });
        }
        let waited = started.elapsed();
        if waited >= wait || stopped() {
            let (holder, since) =
                current.unwrap_or_else(|| ("an unknown session".into(), "an unknown time".into()));
            return Err(SourceError::LockTimeout {
                name: lock.name.clone(),
                holder,
                since,
                waited,
            });
        }
        if matches!(held, Held::Claim { .. }) {
            std::thread::sleep(Duration::from_secs(1).min(wait - waited));
        }
    }
}

/// Try the tuning manager's claim; when not claimed, who holds the row and since when.
#[allow(clippy::type_complexity)]
fn try_claim(
    session: &Session,
    holder: &str,
) -> Result<(bool, Option<(String, String)>), SourceError> {
    let claimed = match session
        .conn
        .execute_named(sql::CLAIM, &[("holder", &holder)])
    {
        Ok(stmt) => stmt
            .row_count()
            .map_err(session.failed("claiming the export lock"))?,
        Err(e) => {
            let _ = session.conn.rollback();
            return Err(match e.oci_code() {
                Some(TABLE_MISSING) => SourceError::MissingLockTable {
                    table: sql::CLAIM_TABLE.into(),
                },
                _ => SourceError::Query {
                    action: "claiming the export lock",
                    reason: session.describe_error(&e),
                },
            });
        }
    };
    session
        .conn
        .commit()
        .map_err(session.failed("claiming the export lock"))?;
    if claimed > 0 {
        return Ok((true, None));
    }
    match session
        .conn
        .query_row_as::<(String, String)>(sql::CLAIM_HOLDER, &[])
    {
        Ok(current) => Ok((false, Some(current))),
        Err(e) if e.kind() == oracle::ErrorKind::NoDataFound => {
            let rows: i64 = session
                .conn
                .query_row_as(sql::CLAIM_ROWS, &[])
                .map_err(session.failed("reading the export lock's holder"))?;
            if rows == 0 {
                return Err(SourceError::NoLockRow {
                    table: sql::CLAIM_TABLE.into(),
                });
            }
            Ok((false, None)) // Released between the two statements.
        }
        Err(e) => Err(SourceError::Query {
            action: "reading the export lock's holder",
            reason: session.describe_error(&e),
        }),
    }
}

/// What a holder query says when Oracle does not tell this user.
const HOLDER_HIDDEN: &str = "a session this user cannot name (naming it needs SELECT on V$LOCK, \
     V$SESSION and SYS.DBMS_LOCK_ALLOCATED)";

/// Ask for the named lock, waiting at most `timeout` seconds; when not granted, who holds it.
#[allow(clippy::type_complexity)]
fn try_named(
    session: &Session,
    name: &str,
    handle: &str,
    timeout: i64,
) -> Result<(bool, Option<(String, String)>), SourceError> {
    let stmt = session.call(
        "taking the export lock",
        sql::LOCK_REQUEST,
        &[
            ("result", &CrateType::Number(0, 0)),
            ("handle", &handle),
            ("timeout", &timeout),
        ],
    )?;
    let code: i64 = session.value("taking the export lock", &stmt, "result")?;
    match sql::LockAnswer::from_code(code) {
        sql::LockAnswer::Granted | sql::LockAnswer::AlreadyOwned => Ok((true, None)),
        sql::LockAnswer::Timeout => {
            let holder = session.conn.query_row_as_named::<(
                String,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
                String,
            )>(sql::LOCK_HOLDER, &[("name", &name)]);
            Ok((
                false,
                Some(match holder {
                    Ok((sid, user, os_user, machine, program, since)) => (
                        format!(
                            "session {sid} (user {}, {} on {}, {})",
                            user.unwrap_or_default(),
                            os_user.unwrap_or_default(),
                            machine.unwrap_or_default(),
                            program.unwrap_or_default()
                        ),
                        since,
                    ),
                    Err(e) if matches!(e.oci_code(), Some(TABLE_MISSING | NO_PRIVILEGE)) => {
                        (HOLDER_HIDDEN.to_string(), "an unknown time".to_string())
                    }
                    Err(e) if e.kind() == oracle::ErrorKind::NoDataFound => {
                        ("an unknown session".into(), "an unknown time".into())
                    }
                    Err(e) => (
                        format!(
                            "a session Oracle would not name ({})",
                            session.describe_error(&e)
                        ),
                        "an unknown time".into(),
                    ),
                }),
            ))
        }
        other => Err(SourceError::Query {
            action: "taking the export lock",
            reason: format!("DBMS_LOCK.REQUEST answered {other:?} ({code})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_scrubbed_of_the_password_and_connect_string() {
        let hide = vec!["s3cret-pw".to_string(), "//db:1521/x".to_string()];
        assert_eq!(
            scrub("ORA-12514: cannot reach //db:1521/x as s3cret-pw", &hide),
            "ORA-12514: cannot reach *** as ***"
        );
    }

    /// Without Oracle's client libraries (none on this machine), connecting fails with a
    /// message that says what to install, and nothing of the source string.
    #[test]
    fn without_the_client_libraries_connecting_says_what_to_install() {
        if std::env::var_os("VMBUILD_TEST_ORACLE_URL").is_some() {
            eprintln!("note: VMBUILD_TEST_ORACLE_URL is set; the client is expected to be there");
            return;
        }
        if oracle::Version::client().is_ok() {
            eprintln!("note: Oracle's client libraries are installed here; nothing to check");
            return;
        }
        let url = Secret::new(
            "env(\"TOXO_SOURCE_URL\")",
            "oracle://gus_r:Secret-Pw-4451@db.invalid:1521/toxoprod",
        );
        let err = Session::connect(&url).err().expect("no client, no session");
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, SourceError::NoOracleClient { .. }), "{text}");
        assert!(text.contains("Instant Client"), "{text}");
        assert!(
            !text.contains("Secret-Pw-4451") && !text.contains("db.invalid"),
            "{text}"
        );

        let bad = Secret::new("env(\"X\")", "oracle://gus_r:Secret-Pw-4451@db:15x1/s");
        let err = Session::connect(&bad).err().expect("a bad port");
        assert_eq!(
            err.to_string(),
            "the source `env(\"X\")` is not an Oracle source string: the port is not a number from 1 to 65535"
        );
    }
}

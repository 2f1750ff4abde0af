//! A synthetic catalog in the shape of a GUS/ApiDB instance, with its rows: what the Oracle
//! reader would describe, written by hand, for the conversion's tests.

use std::collections::BTreeMap;

use super::convert::*;
use super::types::{OracleType, Timestamp, Value};

pub fn column(name: &str, data_type: OracleType, nullable: bool) -> Column {
    Column {
        name: name.into(),
        data_type,
        nullable,
        default: None,
        comment: None,
    }
}

pub fn number(p: u8) -> OracleType {
    OracleType::Number {
        precision: Some(p),
        scale: Some(0),
    }
}

pub fn varchar(n: u32) -> OracleType {
    OracleType::Varchar2 { length: n }
}

fn constraint(name: &str, kind: ConstraintKind) -> Constraint {
    Constraint {
        name: name.into(),
        kind,
        enabled: true,
        validated: true,
    }
}

fn pk(name: &str, columns: &[&str]) -> Constraint {
    constraint(
        name,
        ConstraintKind::PrimaryKey {
            columns: columns.iter().map(|c| c.to_string()).collect(),
        },
    )
}

fn fk(name: &str, column: &str, schema: &str, table: &str, references: &str) -> Constraint {
    constraint(
        name,
        ConstraintKind::ForeignKey {
            columns: vec![column.into()],
            schema: schema.into(),
            table: table.into(),
            references: vec![references.into()],
            on_delete: OnDelete::NoAction,
        },
    )
}

fn index(name: &str, index_type: &str, unique: bool, keys: Vec<IndexKey>) -> Index {
    Index {
        name: name.into(),
        unique,
        index_type: index_type.into(),
        keys,
    }
}

fn key(column: &str) -> IndexKey {
    IndexKey {
        column: column.into(),
        expression: None,
        descending: false,
    }
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn time(year: i32, month: u32, day: u32, nanosecond: u32) -> Value {
    Value::Timestamp(Timestamp {
        year,
        month,
        day,
        hour: 13,
        minute: 14,
        second: 15,
        nanosecond,
        offset_minutes: None,
    })
}

/// The catalog, and rows for each table (every column, in table order).
pub fn gus() -> (Catalog, MemoryRows) {
    let long_name =
        "GENE_ATTRIBUTES_WITH_A_VERY_LONG_NAME_THAT_ORACLE_12_2_ALLOWS_BUT_POSTGRES_DOES_NOT";
    let core = Schema {
        name: "CORE".into(),
        tables: vec![
            Table {
                name: "DATABASEINFO".into(),
                columns: vec![
                    column("DATABASE_INFO_ID", number(10), false),
                    column("NAME", varchar(30), false),
                    column("DESCRIPTION", varchar(4000), true),
                    Column {
                        default: Some("SYSDATE\n".into()),
                        ..column("MODIFICATION_DATE", OracleType::Date, false)
                    },
                ],
                constraints: vec![
                    pk("DATABASEINFO_PK", &["DATABASE_INFO_ID"]),
                    constraint(
                        "DATABASEINFO_UQ",
                        ConstraintKind::Unique {
                            columns: vec!["NAME".into()],
                        },
                    ),
                ],
                indexes: vec![],
                comment: Some("The registry of the website's schemas".into()),
                with_data: true,
            },
            Table {
                name: "ALGORITHM".into(),
                columns: vec![
                    column("ALGORITHM_ID", number(10), false),
                    column("NAME", varchar(255), false),
                    Column {
                        comment: Some("what it's for".into()),
                        ..column("DESCRIPTION", OracleType::Clob, true)
                    },
                ],
                constraints: vec![pk("ALGORITHM_PK", &["ALGORITHM_ID"])],
                indexes: vec![],
                comment: None,
                with_data: true,
            },
        ],
        views: vec![],
        sequences: vec![Sequence {
            name: "ALGORITHM_SQ".into(),
            increment: "1".into(),
            min: "1".into(),
            max: "9999999999999999999999999999".into(),
            next: "21".into(),
            cycle: false,
        }],
    };
    let sres = Schema {
        name: "SRES".into(),
        tables: vec![Table {
            name: "TAXON".into(),
            columns: vec![
                column("TAXON_ID", number(10), false),
                column("NCBI_TAX_ID", number(10), false),
                column("NAME", varchar(255), false),
                column("RANK", OracleType::Char { length: 1 }, true),
            ],
            constraints: vec![pk("TAXON_PK", &["TAXON_ID"])],
            indexes: vec![index(
                "TAXON_NCBI_IX",
                "NORMAL",
                true,
                vec![key("NCBI_TAX_ID")],
            )],
            comment: None,
            with_data: true,
        }],
        views: vec![],
        sequences: vec![],
    };
    let dots = Schema {
        name: "DOTS".into(),
        tables: vec![Table {
            name: "NASEQUENCE".into(),
            columns: vec![
                column("NA_SEQUENCE_ID", number(12), false),
                column("SOURCE_ID", varchar(50), false),
                column("TAXON_ID", number(10), false),
                column("LENGTH", number(12), true),
                column(
                    "GC_CONTENT",
                    OracleType::Number {
                        precision: Some(5),
                        scale: Some(4),
                    },
                    true,
                ),
                column("SEQUENCE", OracleType::Clob, true),
                column("ROW_USER_ID", number(12), true),
                column("BIT", OracleType::Blob, true),
            ],
            constraints: vec![
                pk("NASEQUENCE_PK", &["NA_SEQUENCE_ID"]),
                fk(
                    "NASEQUENCE_FK_TAXON",
                    "TAXON_ID",
                    "SRES",
                    "TAXON",
                    "TAXON_ID",
                ),
                // A reference into a schema outside the allowlist.
                fk(
                    "NASEQUENCE_FK_USER",
                    "ROW_USER_ID",
                    "USERLOGINS5",
                    "USERS",
                    "USER_ID",
                ),
                Constraint {
                    enabled: false,
                    ..constraint(
                        "NASEQUENCE_CK_OLD",
                        ConstraintKind::Check {
                            condition: "LENGTH > 100".into(),
                        },
                    )
                },
                constraint(
                    "NASEQUENCE_CK_LEN",
                    ConstraintKind::Check {
                        condition: "\"LENGTH\" >= 0".into(),
                    },
                ),
            ],
            indexes: vec![
                // Oracle names indexes apart from tables; this one clashes in PostgreSQL.
                index("NASEQUENCE", "NORMAL", false, vec![key("SOURCE_ID")]),
                index(
                    "NASEQUENCE_LEN_DESC",
                    "FUNCTION-BASED NORMAL",
                    false,
                    vec![IndexKey {
                        column: "SYS_NC00009$".into(),
                        expression: Some("\"LENGTH\"".into()),
                        descending: true,
                    }],
                ),
                index(
                    "NASEQUENCE_UPPER_IX",
                    "FUNCTION-BASED NORMAL",
                    false,
                    vec![IndexKey {
                        column: "SYS_NC00010$".into(),
                        expression: Some("UPPER(\"SOURCE_ID\")".into()),
                        descending: false,
                    }],
                ),
                index(
                    "NASEQUENCE_TAXON_BIX",
                    "BITMAP",
                    false,
                    vec![key("TAXON_ID")],
                ),
                index("SYS_IL0000012345C00006$$", "LOB", true, vec![]),
            ],
            comment: None,
            with_data: true,
        }],
        views: vec![],
        sequences: vec![],
    };
    let apidb = Schema {
        name: "APIDB".into(),
        tables: vec![
            Table {
                name: "INSTANCEMETAINFO".into(),
                columns: vec![
                    column("INSTANCE_NICKNAME", varchar(50), false),
                    column("CURRENT_UPDATER", varchar(50), true),
                    column("UPDATE_START", OracleType::Date, true),
                    column("RELEASE", varchar(20), false),
                ],
                constraints: vec![],
                indexes: vec![],
                comment: None,
                with_data: true,
            },
            Table {
                name: "ODDITIES".into(),
                columns: vec![
                    column("ID", number(5), false),
                    column("USER", varchar(30), true),
                    column("ORDER", number(3), true),
                    column("DOUBLE_VALUE", OracleType::BinaryDouble, true),
                    column("FLOAT_VALUE", OracleType::Float { precision: Some(126) }, true),
                    column("WIDE", OracleType::Number { precision: Some(38), scale: Some(0) }, true),
                    column("PLAIN_NUMBER", OracleType::Number { precision: None, scale: None }, true),
                    column("STAMP", OracleType::Timestamp { precision: 6 }, true),
                    column("STAMP_TZ", OracleType::TimestampTz { precision: 6 }, true),
                    column("RAW_ID", OracleType::Raw { length: 16 }, true),
                    column("NAME_N", OracleType::NVarchar2 { length: 20 }, true),
                    column("SPAN", OracleType::IntervalDayToSecond { precision: 6 }, true),
                    column("AGE", OracleType::IntervalYearToMonth, true),
                    column("DOC", OracleType::Unsupported("XMLTYPE".into()), true),
                    Column {
                        default: Some("'n/a'".into()),
                        ..column("NOTE", varchar(10), true)
                    },
                    Column {
                        default: Some("USERENV('SESSIONID')".into()),
                        ..column("SESSION_ID", number(10), true)
                    },
                ],
                constraints: vec![pk("ODDITIES_PK", &["ID"])],
                indexes: vec![index("ODDITIES_DOC_IX", "NORMAL", false, vec![key("DOC")])],
                comment: None,
                with_data: true,
            },
        ],
        views: vec![View {
            name: "OLD_STYLE_JOIN".into(),
            text: "SELECT a.id FROM apidb.oddities a, core.algorithm b WHERE a.id = b.algorithm_id (+)".into(),
        }],
        sequences: vec![],
    };
    let tuning = Schema {
        name: "APIDBTUNING".into(),
        tables: vec![Table {
            name: "GENEATTRIBUTES1234".into(),
            columns: vec![
                column("SOURCE_ID", varchar(50), false),
                column("NA_SEQUENCE_ID", number(12), true),
                column("PRODUCT", varchar(4000), true),
            ],
            constraints: vec![pk("GENEATTRIBUTES1234_PK", &["SOURCE_ID"])],
            indexes: vec![],
            comment: None,
            with_data: true,
        }, Table {
            name: long_name.into(),
            columns: vec![column("X", number(1), true)],
            constraints: vec![],
            indexes: vec![],
            comment: None,
            with_data: false,
        }],
        views: vec![
            // Defined before the view it reads: created on a second pass.
            View {
                name: "GENE_PRODUCTS".into(),
                text: "SELECT \"SOURCE_ID\", NVL(\"PRODUCT\", 'unknown') AS product FROM GeneAttributes".into(),
            },
            View {
                name: "GENEATTRIBUTES".into(),
                text: "SELECT \"SOURCE_ID\",\"NA_SEQUENCE_ID\",\"PRODUCT\" FROM \"APIDBTUNING\".\"GENEATTRIBUTES1234\"".into(),
            },
            View {
                name: "BROKEN".into(),
                text: "SELECT no_such_column FROM geneattributes1234".into(),
            },
        ],
        sequences: vec![],
    };
    let catalog = Catalog {
        schemas: vec![core, sres, dots, apidb, tuning],
    };

    let mut rows = MemoryRows::default();
    rows.insert(
        "CORE",
        "DATABASEINFO",
        ["Core", "SRes", "DoTS", "ApiDB", "ApidbTuning"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                vec![
                    text(&(i + 1).to_string()),
                    text(name),
                    if i == 0 {
                        Value::Null
                    } else {
                        text("a schema")
                    },
                    time(2024, 1, 2, 0),
                ]
            })
            .collect(),
    );
    rows.insert(
        "CORE",
        "ALGORITHM",
        vec![
            vec![
                text("1"),
                text("GUS::Supported::Plugin::InsertSequenceFeatures"),
                text("load\tannotation\nfrom GFF3 \\ EMBL"),
            ],
            // An empty CLOB is the empty string; NULL is NULL.
            vec![
                text("2"),
                text("ApiCommonData::Load::Plugin::InsertGeneAttributes"),
                text(""),
            ],
            vec![text("3"), text("a plugin"), Value::Null],
        ],
    );
    rows.insert(
        "SRES",
        "TAXON",
        vec![
            vec![
                text("1"),
                text("5811"),
                text("Toxoplasma gondii"),
                text("S"),
            ],
            vec![
                text("2"),
                text("508771"),
                text("Toxoplasma gondii ME49"),
                Value::Null,
            ],
        ],
    );
    rows.insert(
        "DOTS",
        "NASEQUENCE",
        (1..=14)
            .map(|i| {
                vec![
                    text(&i.to_string()),
                    text(&format!("TGME49_chr{i}")),
                    text("2"),
                    text(&(1_000_000 + i * 250_000).to_string()),
                    text(".5123"),
                    text(&"ACGT".repeat(i)),
                    text("7"),
                    Value::Bytes(vec![i as u8, 0, 0xff]),
                ]
            })
            .collect(),
    );
    rows.insert(
        "APIDB",
        "INSTANCEMETAINFO",
        vec![vec![text("toxoprod"), Value::Null, Value::Null, text("68")]],
    );
    rows.insert(
        "APIDB",
        "ODDITIES",
        vec![
            vec![
                text("1"),
                text("o'brien"),
                text("-12"),
                Value::Double(0.1),
                text("3.14159265358979323846264338327950288"),
                text("12345678901234567890123456789012345678"),
                text("-1E-130"),
                time(1999, 12, 31, 999_999_000),
                Value::Timestamp(Timestamp {
                    year: 2021,
                    month: 6,
                    day: 1,
                    hour: 12,
                    minute: 0,
                    second: 0,
                    nanosecond: 0,
                    offset_minutes: Some(120),
                }),
                Value::Bytes((0..16).collect()),
                text("Grüße ✓"),
                Value::DaySecond {
                    days: 1,
                    hours: 2,
                    minutes: 3,
                    seconds: 4,
                    nanoseconds: 500_000_000,
                },
                Value::YearMonth {
                    years: -1,
                    months: -6,
                },
                text("<doc/>"),
                text("x"),
                text("42"),
            ],
            vec![
                text("2"),
                Value::Null,
                Value::Null,
                Value::Double(f64::INFINITY),
                Value::Null,
                Value::Null,
                Value::Null,
                time(-4712, 1, 1, 0),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
        ],
    );
    rows.insert(
        "APIDBTUNING",
        "GENEATTRIBUTES1234",
        (1..=3000)
            .map(|i| {
                vec![
                    text(&format!("TGME49_{i:06}")),
                    text(&(1 + i % 14).to_string()),
                    if i % 10 == 0 {
                        Value::Null
                    } else {
                        text(&format!("hypothetical protein {i}"))
                    },
                ]
            })
            .collect(),
    );
    rows.insert("APIDBTUNING", long_name, vec![vec![text("1")]]);
    (catalog, rows)
}

/// Rows held in memory, every column of the table in table order.
#[derive(Default)]
pub struct MemoryRows(pub BTreeMap<(String, String), Vec<Vec<Value>>>);

impl MemoryRows {
    pub fn insert(&mut self, schema: &str, table: &str, rows: Vec<Vec<Value>>) {
        self.0.insert((schema.into(), table.into()), rows);
    }
}

impl RowSource for MemoryRows {
    fn read(
        &mut self,
        schema: &Schema,
        table: &Table,
        columns: &[&Column],
        each: &mut dyn FnMut(&[Value]) -> Result<(), ConvertError>,
    ) -> Result<(), ConvertError> {
        let rows = self
            .0
            .get(&(schema.name.clone(), table.name.clone()))
            .ok_or_else(|| ConvertError::Read {
                table: table.name.clone(),
                reason: "no rows given".into(),
            })?;
        let positions: Vec<usize> = columns
            .iter()
            .map(|c| {
                table
                    .columns
                    .iter()
                    .position(|t| t.name == c.name)
                    .expect("a column")
            })
            .collect();
        for row in rows {
            let values: Vec<Value> = positions
                .iter()
                .filter_map(|i| row.get(*i).cloned())
                .collect();
            each(&values)?;
        }
        Ok(())
    }
}

//! Oracle column types as the data dictionary describes them (`ALL_TAB_COLUMNS`), the
//! PostgreSQL type each becomes, and values in PostgreSQL's `COPY` text format.
//!
//! Pure: no connection. The Oracle reader fills [`Value`]s; the converter writes them.

use std::fmt::Write as _;

/// A column type of an Oracle table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OracleType {
    /// `NUMBER`, `NUMBER(p)`, `NUMBER(p,s)`, `NUMBER(*,s)` (`INTEGER` is `NUMBER(*,0)`).
    Number {
        precision: Option<u8>,
        scale: Option<i8>,
    },
    /// `FLOAT(b)`: a decimal NUMBER whose precision is given in binary digits.
    Float {
        precision: Option<u8>,
    },
    BinaryFloat,
    BinaryDouble,
    /// `VARCHAR2(n [BYTE|CHAR])`: `length` is the declared length.
    Varchar2 {
        length: u32,
    },
    NVarchar2 {
        length: u32,
    },
    Char {
        length: u32,
    },
    NChar {
        length: u32,
    },
    Clob,
    NClob,
    Long,
    Blob,
    Raw {
        length: u32,
    },
    LongRaw,
    Date,
    /// `TIMESTAMP(p)`.
    Timestamp {
        precision: u8,
    },
    TimestampTz {
        precision: u8,
    },
    TimestampLtz {
        precision: u8,
    },
    IntervalYearToMonth,
    IntervalDayToSecond {
        precision: u8,
    },
    /// `ROWID` and `UROWID`.
    Rowid,
    /// Anything else (`XMLTYPE`, `SDO_GEOMETRY`, `BFILE`, object types): not converted.
    Unsupported(String),
}

/// How the reader fetches a column's values from Oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAs {
    /// As text: numbers in their exact decimal form, strings, CLOBs, ROWIDs.
    Text,
    /// As an IEEE double (`BINARY_FLOAT`, `BINARY_DOUBLE`).
    Double,
    Bytes,
    Timestamp,
    IntervalDaySecond,
    IntervalYearMonth,
}

/// The fractional-second digits of a `TIMESTAMP(p)` / `INTERVAL ... SECOND(p)` in a data type
/// name such as `TIMESTAMP(6) WITH TIME ZONE`; the last parenthesized number.
fn last_precision(name: &str) -> Option<u8> {
    let open = name.rfind('(')?;
    let close = name[open..].find(')')? + open;
    name[open + 1..close].trim().parse().ok()
}

impl OracleType {
    /// The type of an `ALL_TAB_COLUMNS` row: `DATA_TYPE`, `DATA_LENGTH`, `DATA_PRECISION`,
    /// `DATA_SCALE` and `CHAR_LENGTH` (the declared length in characters, 0 for non-character
    /// types).
    pub fn from_catalog(
        data_type: &str,
        data_length: Option<i64>,
        precision: Option<i64>,
        scale: Option<i64>,
        char_length: Option<i64>,
    ) -> OracleType {
        let name = data_type.trim().to_ascii_uppercase();
        // A declared length: in characters where the dictionary gives one, else in bytes.
        let length = char_length
            .filter(|n| *n > 0)
            .or(data_length)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(1);
        let fraction = last_precision(&name).unwrap_or(6);
        match name.as_str() {
            "NUMBER" => OracleType::Number {
                precision: precision
                    .and_then(|p| u8::try_from(p).ok())
                    .filter(|p| *p > 0),
                scale: scale.and_then(|s| i8::try_from(s).ok()),
            },
            "FLOAT" => OracleType::Float {
                precision: precision.and_then(|p| u8::try_from(p).ok()),
            },
            "BINARY_FLOAT" => OracleType::BinaryFloat,
            "BINARY_DOUBLE" => OracleType::BinaryDouble,
            "VARCHAR2" | "VARCHAR" => OracleType::Varchar2 { length },
            "NVARCHAR2" => OracleType::NVarchar2 { length },
            "CHAR" => OracleType::Char { length },
            "NCHAR" => OracleType::NChar { length },
            "CLOB" => OracleType::Clob,
            "NCLOB" => OracleType::NClob,
            "LONG" => OracleType::Long,
            "BLOB" => OracleType::Blob,
            "RAW" => OracleType::Raw { length },
            "LONG RAW" => OracleType::LongRaw,
            "DATE" => OracleType::Date,
            "ROWID" | "UROWID" => OracleType::Rowid,
            _ if name.starts_with("TIMESTAMP") && name.ends_with("WITH LOCAL TIME ZONE") => {
                OracleType::TimestampLtz {
                    precision: fraction,
                }
            }
            _ if name.starts_with("TIMESTAMP") && name.ends_with("WITH TIME ZONE") => {
                OracleType::TimestampTz {
                    precision: fraction,
                }
            }
            _ if name.starts_with("TIMESTAMP") => OracleType::Timestamp {
                precision: fraction,
            },
            _ if name.starts_with("INTERVAL YEAR") => OracleType::IntervalYearToMonth,
            _ if name.starts_with("INTERVAL DAY") => OracleType::IntervalDayToSecond {
                precision: fraction,
            },
            _ => OracleType::Unsupported(data_type.trim().to_string()),
        }
    }

    /// The PostgreSQL type of the converted column; `None` for an unsupported type.
    pub fn postgres(&self) -> Option<String> {
        let fraction = |p: u8| p.min(6);
        Some(match self {
            OracleType::Number {
                precision: None,
                scale: None,
            } => "numeric".into(),
            OracleType::Number {
                precision,
                scale: Some(0) | None,
            } => match precision {
                Some(p) if *p <= 9 => "integer".into(),
                Some(p) if *p <= 18 => "bigint".into(),
                Some(p) => format!("numeric({p})"),
                // NUMBER(*,0): up to 38 digits, integral.
                None => "numeric(38,0)".into(),
            },
            OracleType::Number {
                precision,
                scale: Some(s),
            } => {
                let p = i16::from(precision.unwrap_or(38));
                let s = i16::from(*s);
                if s < 0 {
                    // Rounded to 10^-s: integers of up to p - s digits.
                    format!("numeric({},0)", p - s)
                } else if s > p {
                    // Oracle's NUMBER(2,5) holds 0.000dd; PostgreSQL before 15 wants s <= p.
                    format!("numeric({s},{s})")
                } else {
                    format!("numeric({p},{s})")
                }
            }
            OracleType::Float { .. } | OracleType::BinaryDouble => "double precision".into(),
            OracleType::BinaryFloat => "real".into(),
            OracleType::Varchar2 { length } | OracleType::NVarchar2 { length } => {
                format!("varchar({length})")
            }
            OracleType::Char { length } | OracleType::NChar { length } => {
                format!("char({length})")
            }
            OracleType::Clob | OracleType::NClob | OracleType::Long => "text".into(),
            OracleType::Blob | OracleType::Raw { .. } | OracleType::LongRaw => "bytea".into(),
            OracleType::Date => "timestamp(0)".into(),
            OracleType::Timestamp { precision } => format!("timestamp({})", fraction(*precision)),
            OracleType::TimestampTz { precision } | OracleType::TimestampLtz { precision } => {
                format!("timestamptz({})", fraction(*precision))
            }
            OracleType::IntervalYearToMonth => "interval year to month".into(),
            OracleType::IntervalDayToSecond { precision } => {
                format!("interval day to second({})", fraction(*precision))
            }
            OracleType::Rowid => "text".into(),
            OracleType::Unsupported(_) => return None,
        })
    }

    /// How to fetch this column's values.
    pub fn read_as(&self) -> ReadAs {
        match self {
            OracleType::BinaryFloat | OracleType::BinaryDouble => ReadAs::Double,
            OracleType::Blob | OracleType::Raw { .. } | OracleType::LongRaw => ReadAs::Bytes,
            OracleType::Date
            | OracleType::Timestamp { .. }
            | OracleType::TimestampTz { .. }
            | OracleType::TimestampLtz { .. } => ReadAs::Timestamp,
            OracleType::IntervalYearToMonth => ReadAs::IntervalYearMonth,
            OracleType::IntervalDayToSecond { .. } => ReadAs::IntervalDaySecond,
            _ => ReadAs::Text,
        }
    }
}

/// A date and time as Oracle returns it. Years before 1 AD are negative (-1 is 1 BC; Oracle has
/// no year 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanosecond: u32,
    /// The offset from UTC in minutes, for values with a time zone.
    pub offset_minutes: Option<i32>,
}

/// One value of a row, as read from Oracle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// Text, or a number in its exact decimal form.
    Text(String),
    Double(f64),
    Bytes(Vec<u8>),
    Timestamp(Timestamp),
    /// `INTERVAL DAY TO SECOND`: every part carries the interval's sign.
    DaySecond {
        days: i32,
        hours: i32,
        minutes: i32,
        seconds: i32,
        nanoseconds: i32,
    },
    /// `INTERVAL YEAR TO MONTH`.
    YearMonth {
        years: i32,
        months: i32,
    },
}

/// A value PostgreSQL cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("a text value contains a NUL character, which PostgreSQL text cannot hold")]
    Nul,
}

/// Append `value` to `out` as one field of PostgreSQL's `COPY ... FROM stdin` text format:
/// `\N` for NULL; backslash, tab, newline and carriage return escaped.
///
/// Oracle stores the empty string as NULL in `VARCHAR2`/`CHAR` columns, so such values arrive
/// as [`Value::Null`] and are loaded as NULL; an empty `CLOB` (`EMPTY_CLOB()`) is not NULL in
/// Oracle and arrives as an empty [`Value::Text`], loaded as the empty string.
pub fn copy_field(value: &Value, out: &mut String) -> Result<(), ValueError> {
    match value {
        Value::Null => out.push_str("\\N"),
        Value::Text(text) => copy_text(text, out)?,
        Value::Double(v) => {
            if v.is_nan() {
                out.push_str("NaN");
            } else if v.is_infinite() {
                out.push_str(if *v > 0.0 { "Infinity" } else { "-Infinity" });
            } else {
                // Debug is the shortest text that reads back as the same double.
                let _ = write!(out, "{v:?}");
            }
        }
        Value::Bytes(bytes) => {
            // bytea's hex input `\x0102`, its backslash doubled for COPY.
            out.push_str("\\\\x");
            out.push_str(&hex::encode(bytes));
        }
        Value::Timestamp(t) => timestamp_text(t, out),
        Value::DaySecond {
            days,
            hours,
            minutes,
            seconds,
            nanoseconds,
        } => {
            let negative = *hours < 0 || *minutes < 0 || *seconds < 0 || *nanoseconds < 0;
            let _ = write!(
                out,
                "{days} days {}{:02}:{:02}:{:02}",
                if negative { "-" } else { "" },
                hours.unsigned_abs(),
                minutes.unsigned_abs(),
                seconds.unsigned_abs()
            );
            fraction(nanoseconds.unsigned_abs(), out);
        }
        Value::YearMonth { years, months } => {
            let _ = write!(out, "{years} years {months} mons");
        }
    }
    Ok(())
}

/// `.ffffff` without trailing zeros, nothing for zero.
fn fraction(nanoseconds: u32, out: &mut String) {
    if nanoseconds > 0 {
        let digits = format!("{nanoseconds:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

fn timestamp_text(t: &Timestamp, out: &mut String) {
    let (year, era) = if t.year < 0 {
        (t.year.unsigned_abs(), " BC")
    } else {
        (t.year.unsigned_abs(), "")
    };
    let _ = write!(
        out,
        "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.month, t.day, t.hour, t.minute, t.second
    );
    fraction(t.nanosecond, out);
    if let Some(offset) = t.offset_minutes {
        let sign = if offset < 0 { '-' } else { '+' };
        let offset = offset.unsigned_abs();
        let _ = write!(out, "{sign}{:02}:{:02}", offset / 60, offset % 60);
    }
    out.push_str(era);
}

fn copy_text(text: &str, out: &mut String) -> Result<(), ValueError> {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => return Err(ValueError::Nul),
            c => out.push(c),
        }
    }
    Ok(())
}

/// One row in COPY text format, with its newline.
pub fn copy_row(values: &[Value], out: &mut String) -> Result<(), ValueError> {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        copy_field(value, out)?;
    }
    out.push('\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(name: &str, len: i64, p: Option<i64>, s: Option<i64>) -> OracleType {
        OracleType::from_catalog(name, Some(len), p, s, Some(0))
    }

    fn pg(name: &str, len: i64, p: Option<i64>, s: Option<i64>) -> String {
        ty(name, len, p, s).postgres().unwrap_or_else(|| "-".into())
    }

    #[test]
    fn numbers_map_to_the_narrowest_exact_type() {
        assert_eq!(pg("NUMBER", 22, None, None), "numeric");
        assert_eq!(pg("NUMBER", 22, None, Some(0)), "numeric(38,0)");
        assert_eq!(pg("NUMBER", 22, Some(1), Some(0)), "integer");
        assert_eq!(pg("NUMBER", 22, Some(9), Some(0)), "integer");
        assert_eq!(pg("NUMBER", 22, Some(10), Some(0)), "bigint");
        assert_eq!(pg("NUMBER", 22, Some(12), Some(0)), "bigint");
        assert_eq!(pg("NUMBER", 22, Some(18), Some(0)), "bigint");
        assert_eq!(pg("NUMBER", 22, Some(19), Some(0)), "numeric(19)");
        assert_eq!(pg("NUMBER", 22, Some(38), Some(0)), "numeric(38)");
        assert_eq!(pg("NUMBER", 22, Some(10), Some(2)), "numeric(10,2)");
        assert_eq!(pg("NUMBER", 22, Some(5), Some(-2)), "numeric(7,0)");
        assert_eq!(pg("NUMBER", 22, Some(2), Some(5)), "numeric(5,5)");
        assert_eq!(pg("NUMBER", 22, None, Some(3)), "numeric(38,3)");
        assert_eq!(pg("FLOAT", 22, Some(126), None), "double precision");
        assert_eq!(pg("BINARY_DOUBLE", 8, None, None), "double precision");
        assert_eq!(pg("BINARY_FLOAT", 4, None, None), "real");
    }

    #[test]
    fn text_binary_and_time_types() {
        // VARCHAR2(100 CHAR): the length in characters; VARCHAR2(100 BYTE): in bytes.
        let chars = OracleType::from_catalog("VARCHAR2", Some(400), None, None, Some(100));
        assert_eq!(chars.postgres().as_deref(), Some("varchar(100)"));
        assert_eq!(pg("VARCHAR2", 255, None, None), "varchar(255)");
        assert_eq!(pg("NVARCHAR2", 40, None, None), "varchar(40)");
        assert_eq!(pg("CHAR", 1, None, None), "char(1)");
        assert_eq!(pg("NCHAR", 3, None, None), "char(3)");
        assert_eq!(pg("CLOB", 4000, None, None), "text");
        assert_eq!(pg("NCLOB", 4000, None, None), "text");
        assert_eq!(pg("LONG", 0, None, None), "text");
        assert_eq!(pg("BLOB", 4000, None, None), "bytea");
        assert_eq!(pg("RAW", 16, None, None), "bytea");
        assert_eq!(pg("LONG RAW", 0, None, None), "bytea");
        assert_eq!(pg("DATE", 7, None, None), "timestamp(0)");
        assert_eq!(pg("TIMESTAMP(6)", 11, None, Some(6)), "timestamp(6)");
        assert_eq!(pg("TIMESTAMP(9)", 11, None, Some(9)), "timestamp(6)");
        assert_eq!(pg("TIMESTAMP(3)", 11, None, Some(3)), "timestamp(3)");
        assert_eq!(
            pg("TIMESTAMP(6) WITH TIME ZONE", 13, None, Some(6)),
            "timestamptz(6)"
        );
        assert_eq!(
            pg("TIMESTAMP(0) WITH LOCAL TIME ZONE", 11, None, Some(0)),
            "timestamptz(0)"
        );
        assert_eq!(
            pg("INTERVAL YEAR(2) TO MONTH", 5, Some(2), Some(0)),
            "interval year to month"
        );
        assert_eq!(
            pg("INTERVAL DAY(2) TO SECOND(6)", 11, Some(2), Some(6)),
            "interval day to second(6)"
        );
        assert_eq!(pg("ROWID", 10, None, None), "text");
        assert_eq!(ty("XMLTYPE", 2000, None, None).postgres(), None);
        assert_eq!(
            ty("SDO_GEOMETRY", 1, None, None),
            OracleType::Unsupported("SDO_GEOMETRY".into())
        );
        assert_eq!(ty("BLOB", 1, None, None).read_as(), ReadAs::Bytes);
        assert_eq!(ty("NUMBER", 1, None, None).read_as(), ReadAs::Text);
        assert_eq!(ty("DATE", 7, None, None).read_as(), ReadAs::Timestamp);
    }

    fn field(value: Value) -> String {
        let mut out = String::new();
        copy_field(&value, &mut out).expect("converts");
        out
    }

    #[test]
    fn copy_escapes_text_and_tells_null_from_empty() {
        assert_eq!(
            field(Value::Text("a\tb\nc\\d\re".into())),
            "a\\tb\\nc\\\\d\\re"
        );
        assert_eq!(field(Value::Text("\\N".into())), "\\\\N", "a literal \\N");
        assert_eq!(field(Value::Null), "\\N");
        // An empty CLOB is the empty string; an empty VARCHAR2 arrives as NULL from Oracle.
        assert_eq!(field(Value::Text(String::new())), "");
        assert_eq!(field(Value::Text("Ünïcødé ✓".into())), "Ünïcødé ✓");
        let mut out = String::new();
        assert_eq!(
            copy_field(&Value::Text("a\0b".into()), &mut out),
            Err(ValueError::Nul)
        );
        let mut row = String::new();
        copy_row(
            &[
                Value::Text("x".into()),
                Value::Null,
                Value::Text(String::new()),
            ],
            &mut row,
        )
        .expect("row");
        assert_eq!(row, "x\t\\N\t\n");
    }

    #[test]
    fn copy_writes_numbers_bytes_times_and_intervals() {
        assert_eq!(field(Value::Double(0.1)), "0.1");
        assert_eq!(field(Value::Double(1e300)), "1e300");
        assert_eq!(field(Value::Double(f64::NAN)), "NaN");
        assert_eq!(field(Value::Double(f64::NEG_INFINITY)), "-Infinity");
        assert_eq!(field(Value::Bytes(vec![0, 0xff, 0x5c])), "\\\\x00ff5c");
        assert_eq!(field(Value::Bytes(vec![])), "\\\\x");
        let t = Timestamp {
            year: 2020,
            month: 7,
            day: 21,
            hour: 9,
            minute: 5,
            second: 3,
            nanosecond: 120_000_000,
            offset_minutes: None,
        };
        assert_eq!(field(Value::Timestamp(t)), "2020-07-21 09:05:03.12");
        let zoned = Timestamp {
            nanosecond: 0,
            offset_minutes: Some(-330),
            ..t
        };
        assert_eq!(field(Value::Timestamp(zoned)), "2020-07-21 09:05:03-05:30");
        let bc = Timestamp {
            year: -44,
            month: 3,
            day: 15,
            nanosecond: 0,
            ..t
        };
        assert_eq!(field(Value::Timestamp(bc)), "0044-03-15 09:05:03 BC");
        assert_eq!(
            field(Value::DaySecond {
                days: -1,
                hours: -2,
                minutes: -3,
                seconds: -4,
                nanoseconds: -500_000_000
            }),
            "-1 days -02:03:04.5"
        );
        assert_eq!(
            field(Value::YearMonth {
                years: 1,
                months: 2
            }),
            "1 years 2 mons"
        );
    }
}

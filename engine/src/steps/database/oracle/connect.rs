//! The Oracle `source` string: what the recipe's secret holds, split into what the `oracle`
//! crate's `Connector` takes (user, password, connect string).
//!
//! Two forms are read:
//!
//! - a URL, `oracle://USER:PASSWORD@HOST[:PORT]/SERVICE`, with `%`-escapes in the user, the
//!   password and the service; it connects to the Easy Connect string `//HOST:PORT/SERVICE`
//!   (port 1521 by default). `oracle://USER:PASSWORD@ALIAS` (no port, no service) connects to
//!   the net service name `ALIAS` (`tnsnames.ora`);
//! - SQL*Plus's `USER/PASSWORD@CONNECT`, where `CONNECT` is passed as it is (Easy Connect,
//!   a net service name, or a `(DESCRIPTION=...)`); a password with `/` or `@` in it can be
//!   double-quoted, `USER/"p@ss"@CONNECT`.
//!
//! No error here contains any part of the string: a mistake in it is described, not quoted.

use std::fmt;

/// A parsed Oracle source. Its `Debug` form hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct OracleSource {
    pub user: String,
    password: String,
    /// What `Connector::new` takes as its connect string.
    pub connect: String,
}

impl OracleSource {
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for OracleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OracleSource")
            .field("user", &self.user)
            .field("password", &"***")
            .field("connect", &self.connect)
            .finish()
    }
}

/// What is wrong with a source string; never quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceStringError {
    #[error("it names no user")]
    NoUser,
    #[error("it has no password (OS and wallet authentication are not supported)")]
    NoPassword,
    #[error("it names no database after `@`")]
    NoDatabase,
    #[error("the host is empty")]
    NoHost,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    #[error("a `%` is not followed by two hexadecimal digits, or escapes no UTF-8 text")]
    BadEscape,
    #[error("a double-quoted password has no closing quote")]
    UnclosedQuote,
    #[error("URL parameters (`?...`) are not supported")]
    Parameters,
    #[error(
        "it is neither `oracle://USER:PASSWORD@HOST:PORT/SERVICE` nor `USER/PASSWORD@CONNECT`"
    )]
    Form,
}

/// The default listener port.
pub const DEFAULT_PORT: u16 = 1521;

/// Parse a source string (see the module's documentation for the forms).
pub fn parse(text: &str) -> Result<OracleSource, SourceStringError> {
    let text = text.trim();
    match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("oracle") => parse_url(rest),
        Some(_) => Err(SourceStringError::Form),
        None => parse_sqlplus(text),
    }
}

fn parse_url(rest: &str) -> Result<OracleSource, SourceStringError> {
    // The user information ends at the last `@`: a password may contain one, escaped or not.
    let (userinfo, location) = rest.rsplit_once('@').ok_or(SourceStringError::NoUser)?;
    let (user, password) = userinfo
        .split_once(':')
        .ok_or(SourceStringError::NoPassword)?;
    let user = decode(user)?;
    let password = decode(password)?;
    if user.is_empty() {
        return Err(SourceStringError::NoUser);
    }
    if password.is_empty() {
        return Err(SourceStringError::NoPassword);
    }
    if location.contains('?') {
        return Err(SourceStringError::Parameters);
    }
    let (address, service) = match location.split_once('/') {
        Some((address, service)) => (address, Some(decode(service)?)),
        None => (location, None),
    };
    if address.is_empty() {
        return Err(if service.is_some() {
            SourceStringError::NoHost
        } else {
            SourceStringError::NoDatabase
        });
    }
    // `[::1]:1521` or `host:1521` or `host`.
    let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(SourceStringError::NoHost)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(SourceStringError::BadPort),
        };
        (format!("[{host}]"), port)
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (address.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(SourceStringError::NoHost);
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(SourceStringError::BadPort)?,
        None => DEFAULT_PORT,
    };
    let connect = match (service, address.contains(':')) {
        (Some(service), _) if !service.is_empty() => format!("//{host}:{port}/{service}"),
        (_, true) => format!("//{host}:{port}"),
        // A bare name: a net service name (or a host Easy Connect finds).
        _ => host,
    };
    Ok(OracleSource {
        user,
        password,
        connect,
    })
}

fn parse_sqlplus(text: &str) -> Result<OracleSource, SourceStringError> {
    let (user, rest) = text.split_once('/').ok_or(SourceStringError::Form)?;
    if user.is_empty() {
        return Err(SourceStringError::NoUser);
    }
    let (password, connect) = if let Some(quoted) = rest.strip_prefix('"') {
        let (password, after) = quoted
            .split_once('"')
            .ok_or(SourceStringError::UnclosedQuote)?;
        let connect = after
            .strip_prefix('@')
            .ok_or(SourceStringError::NoDatabase)?;
        (password.to_string(), connect)
    } else {
        let (password, connect) = rest.rsplit_once('@').ok_or(SourceStringError::NoDatabase)?;
        (password.to_string(), connect)
    };
    if password.is_empty() {
        return Err(SourceStringError::NoPassword);
    }
    if connect.trim().is_empty() {
        return Err(SourceStringError::NoDatabase);
    }
    Ok(OracleSource {
        user: user.to_string(),
        password,
        connect: connect.trim().to_string(),
    })
}

/// `%XX` escapes decoded (and nothing else: `+` stays `+`).
fn decode(text: &str) -> Result<String, SourceStringError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(SourceStringError::BadEscape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SourceStringError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (String, String, String) {
        let s = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (s.user.clone(), s.password().to_string(), s.connect.clone())
    }

    fn owned(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn urls_become_easy_connect_strings() {
        assert_eq!(
            ok("oracle://gus_r:s3cret@db.example.org:1522/toxoprod"),
            owned("gus_r", "s3cret", "//db.example.org:1522/toxoprod")
        );
        assert_eq!(
            ok("oracle://gus_r:s3cret@db.example.org/toxoprod.example.org"),
            owned(
                "gus_r",
                "s3cret",
                "//db.example.org:1521/toxoprod.example.org"
            )
        );
        assert_eq!(
            ok("ORACLE://u:p%40ss%3Aw%2Fd@[2001:db8::1]:1521/svc"),
            owned("u", "p@ss:w/d", "//[2001:db8::1]:1521/svc")
        );
        // An unescaped `@` in the password: the user information ends at the last one.
        assert_eq!(
            ok("oracle://u:p@ss@host/svc"),
            owned("u", "p@ss", "//host:1521/svc")
        );
        assert_eq!(ok("oracle://u:p@TOXOPROD"), owned("u", "p", "TOXOPROD"));
        assert_eq!(ok("oracle://u:p@host:1600"), owned("u", "p", "//host:1600"));
    }

    #[test]
    fn sqlplus_strings_pass_the_connect_string_on() {
        assert_eq!(
            ok("gus_r/s3cret@//db.example.org:1521/toxoprod"),
            owned("gus_r", "s3cret", "//db.example.org:1521/toxoprod")
        );
        assert_eq!(
            ok("gus_r/s3cret@TOXOPROD"),
            owned("gus_r", "s3cret", "TOXOPROD")
        );
        assert_eq!(
            ok("u/\"pa/ss@x\"@db:1521/s"),
            owned("u", "pa/ss@x", "db:1521/s")
        );
        assert_eq!(
            ok("u/p@(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=h)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=s)))"),
            owned(
                "u",
                "p",
                "(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=h)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=s)))"
            )
        );
    }

    #[test]
    fn mistakes_are_described_without_the_password() {
        let password = "Tr0ub4dor-secret";
        let cases = [
            (
                format!("oracle://gus_r:{password}@db:15x1/s"),
                SourceStringError::BadPort,
            ),
            (
                format!("oracle://gus_r:{password}@:1521/s"),
                SourceStringError::NoHost,
            ),
            (
                format!("oracle://gus_r:{password}@"),
                SourceStringError::NoDatabase,
            ),
            (
                format!("oracle://:{password}@db/s"),
                SourceStringError::NoUser,
            ),
            (
                "oracle://gus_r@db/s".to_string(),
                SourceStringError::NoPassword,
            ),
            (
                format!("oracle://gus_r:{password}%zz@db/s"),
                SourceStringError::BadEscape,
            ),
            (
                format!("oracle://gus_r:{password}@db/s?x=1"),
                SourceStringError::Parameters,
            ),
            (
                format!("postgres://gus_r:{password}@db/s"),
                SourceStringError::Form,
            ),
            (format!("gus_r/{password}"), SourceStringError::NoDatabase),
            (
                format!("gus_r/\"{password}@db"),
                SourceStringError::UnclosedQuote,
            ),
            ("gus_r/@db".to_string(), SourceStringError::NoPassword),
            (password.to_string(), SourceStringError::Form),
        ];
        for (text, expected) in cases {
            let err = parse(&text).expect_err(&expected.to_string());
            assert_eq!(err, expected, "{text}");
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(
                    !shown.contains(password) && !shown.contains("gus_r"),
                    "{shown}"
                );
            }
        }
        let parsed = parse(&format!("oracle://gus_r:{password}@db/s")).expect("parses");
        assert!(!format!("{parsed:?}").contains(password));
    }
}

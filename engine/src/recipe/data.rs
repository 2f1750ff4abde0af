//! `data "http" "NAME"` blocks: a JSON document fetched at plan time with one read-only GET,
//! bounded in time and size ([`crate::http`]), whose parsed answer recipes use as
//! `data.http.NAME.body` (with `.status` and `.text`).
//!
//! A data block is fetched when a reference first needs it, so one data block may use
//! another's values (a cycle is an error), or after every other block when nothing references
//! it. Without fetching (`vmbuild validate`, or when the fetch failed) its fields are
//! [`Value::Unknown`]. Problems are diagnostics at the block's `url` that name the URL as it may
//! be shown: without the credentials in it, and a sensitive URL by its identity.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::decode::{self, Seg};
use super::eval::Scope;
use super::syntax::Block;
use super::value::{SValue, Value};
use super::{json_to_value, DataHttpBlock, Named, Text};
use crate::diag::{Diagnostic, Span};
use crate::hash::Digest;
use crate::http::{self, HttpError};

/// The data types a `data` block may name.
pub const DATA_TYPES: &[&str] = &["http"];

/// What `data.http.NAME` holds.
pub const HTTP_FIELDS: &[&str] = &["body", "status", "text"];

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

/// What a data block fetched, as plans show it (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// `data.http.NAME`.
    pub id: String,
    pub method: String,
    /// The URL as it may be shown.
    pub url: String,
    pub status: u16,
    /// The size of the answer's body.
    pub bytes: u64,
    /// The blake3 of the answer's body: a changed answer is a changed digest.
    pub digest: Digest,
}

/// The URL as it may be shown: without credentials; a sensitive URL whose secrets are not only
/// its credentials is shown by its identity (`(sensitive: env("DASHBOARD_URL"))`).
pub fn shown_url(url: &Text) -> String {
    match url {
        Text::Plain(url) => crate::url::shown(url),
        Text::Secret(secret) => secret.shown_url().unwrap_or_else(|| secret.to_string()),
    }
}

/// Header names whose values are credentials even when written as plain text.
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["authorization", "cookie"].contains(&name.as_str())
        || ["token", "key", "secret", "auth", "password"]
            .iter()
            .any(|word| name.contains(word))
}

/// The secret values a data block handles: the URL's credentials and sensitive parts, the
/// sensitive header values, and plain values of credential headers.
pub fn secrets(block: &DataHttpBlock) -> Vec<String> {
    let mut found = crate::url::credentials(block.url.reveal());
    found.extend(block.url.secret_parts().iter().cloned());
    for (name, value) in &block.headers {
        found.extend(value.secret_parts().iter().cloned());
        if is_credential_header(name) && !value.is_secret() {
            found.push(value.reveal().to_string());
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// Whether the recipe's own text holds a credential of this block, so that diagnostics must not
/// show it.
fn literal_credentials(block: &DataHttpBlock) -> bool {
    let in_url = matches!(&block.url, Text::Plain(url) if !crate::url::credentials(url).is_empty());
    in_url
        || block
            .headers
            .iter()
            .any(|(name, value)| is_credential_header(name) && !value.is_secret())
}

/// `text` with every secret blanked out, longest first.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| s.len() >= 3).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for secret in secrets {
        out = out.replace(secret.as_str(), "(sensitive)");
    }
    out
}

/// `data.http.NAME` when its answer is not known.
pub fn unknown(span: &Span) -> SValue {
    let field = |name: &str| {
        (
            name.to_string(),
            SValue {
                value: Value::Unknown,
                span: span.clone(),
            },
        )
    };
    SValue {
        value: Value::Object(HTTP_FIELDS.iter().map(|f| field(f)).collect()),
        span: span.clone(),
    }
}

/// Decode a data block and, when `scope` fetches, fetch it. Always a value for
/// `data.TYPE.NAME` (unknown fields when it could not be fetched); problems go to
/// `scope.diagnostics`.
pub(super) fn evaluate(scope: &mut Scope<'_>, block: &Block, id: &str) -> SValue {
    let (kind, name) = (&block.labels[0].0, &block.labels[1].0);
    let header = block.header_span();
    let what = format!("data \"{kind}\" \"{name}\"");
    let mut problems = Vec::new();
    let decoded = decode::decode_block::<DataHttpBlock>(scope, block, &what, &mut problems);
    scope.diagnostics.extend(problems);
    let Some((http_block, spans)) = decoded else {
        return unknown(&header);
    };
    let named = Named {
        name: name.clone(),
        block: http_block,
        spans,
    };
    // A block that uses an unknown value (another data block's, not fetched) cannot be fetched.
    let depends_on_unknown = scope.holds_unknown(&block.span);
    scope.data_blocks.insert(id.to_string(), named.clone());
    if !scope.fetch_data || depends_on_unknown {
        return unknown(&header);
    }
    match fetch(&named, id) {
        Ok((value, fetched)) => {
            scope.fetched.insert(id.to_string(), fetched);
            value
        }
        Err(problem) => {
            scope.diagnostics.push(problem);
            unknown(&header)
        }
    }
}

/// GET the block's URL and parse the answer.
fn fetch(named: &Named<DataHttpBlock>, id: &str) -> Result<(SValue, Fetched), Diagnostic> {
    let block = &named.block;
    let url = shown_url(&block.url);
    let secrets = secrets(block);
    let timeout = block.timeout.map_or(DEFAULT_TIMEOUT, |t| t.as_duration());
    let max_bytes = block.max_bytes.map_or(DEFAULT_MAX_BYTES, |b| b.0);
    let headers: Vec<(String, String)> = block
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.reveal().to_string()))
        .collect();
    let problem = |attribute: &str, why: String| {
        let summary = redact(
            &format!("cannot fetch `{id}` from `{url}`: {why}"),
            &secrets,
        );
        let diagnostic = Diagnostic::error(summary);
        if literal_credentials(block) {
            return diagnostic.detail(
                "The recipe's text is not shown: this block holds a credential in its text. \
                 Pass it with env(\"...\") instead, which keeps it out of the recipe.",
            );
        }
        let span = named
            .spans
            .value(&[Seg::Key(attribute.into())])
            .or_else(|| named.spans.value(&[Seg::Key("url".into())]))
            .unwrap_or(named.header());
        let label = match attribute {
            "timeout" => "the time allowed",
            "max_bytes" => "the size allowed",
            "headers" => "these headers",
            _ => "fetched at plan time",
        };
        diagnostic.at(&span, label)
    };
    let response = http::get(&http::Request {
        url: block.url.reveal(),
        headers: &headers,
        timeout,
        max_bytes,
    })
    .map_err(|error| {
        let attribute = match &error {
            HttpError::Timeout(_) if block.timeout.is_some() => "timeout",
            HttpError::TooLarge { .. } if block.max_bytes.is_some() => "max_bytes",
            HttpError::HeaderName(_) | HttpError::HeaderValue(_) => "headers",
            _ => "url",
        };
        let help = match &error {
            HttpError::Timeout(_) => Some(format!(
                "plan waits {} at most for the whole answer (default {}s): raise `timeout`, or check that the server answers",
                human_duration(timeout),
                DEFAULT_TIMEOUT.as_secs()
            )),
            HttpError::TooLarge { .. } => Some(format!(
                "raise `max_bytes` (default {} MiB) if the document really is this large",
                DEFAULT_MAX_BYTES >> 20
            )),
            HttpError::OtherOrigin(_) => Some(
                "vmbuild follows redirects within the same scheme, host and port only, so that the request's headers reach no other host: give the final URL".into(),
            ),
            HttpError::Tls(_) => Some(
                "the server's certificate is checked against the system's root certificates".into(),
            ),
            _ => None,
        };
        problem(attribute, error.to_string()).help_opt(help)
    })?;
    if !(200..300).contains(&response.status) {
        let status = match response.reason {
            Some(reason) => format!("{} {reason}", response.status),
            None => response.status.to_string(),
        };
        return Err(problem("url", format!("it answered {status}"))
            .help("plan needs a 2xx answer with a JSON body"));
    }
    let body = response
        .body
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(&response.body);
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let kind = response
            .content_type
            .as_deref()
            .map(|t| format!(" (its type is `{t}`)"))
            .unwrap_or_default();
        problem("url", format!("the answer is not JSON{kind}: {e}"))
            .help("a `data \"http\"` block reads a JSON document")
    })?;
    let header = named.header();
    let text = String::from_utf8_lossy(body).into_owned();
    let fields = vec![
        ("body".to_string(), json_to_value(&json, &header)),
        (
            "status".to_string(),
            SValue {
                value: Value::Number(response.status.into()),
                span: header.clone(),
            },
        ),
        (
            "text".to_string(),
            SValue {
                value: Value::String(text),
                span: header.clone(),
            },
        ),
    ];
    let fetched = Fetched {
        id: id.to_string(),
        method: "GET".into(),
        url,
        status: response.status,
        bytes: response.body.len() as u64,
        digest: Digest::of_bytes(&response.body),
    };
    Ok((
        SValue {
            value: Value::Object(fields),
            span: header,
        },
        fetched,
    ))
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Secret;

    fn block(url: Text, headers: &[(&str, Text)]) -> DataHttpBlock {
        DataHttpBlock {
            url,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            timeout: None,
            max_bytes: None,
        }
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        let plain = Text::Plain("https://reader:t0ken-t0ken@dash.example.org/api".into());
        assert_eq!(shown_url(&plain), "https://dash.example.org/api");
        let in_query = Text::Secret(Secret::composed(
            "\"https://dash.example.org/api?token=${env(\"T\")}\"",
            "https://dash.example.org/api?token=s3cr3t-value",
            vec!["s3cr3t-value".into()],
        ));
        let shown = shown_url(&in_query);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.starts_with("(sensitive: "), "{shown}");
        let in_user = Text::Secret(Secret::composed(
            "\"https://${env(\"T\")}@dash.example.org/api\"",
            "https://s3cr3t-value@dash.example.org/api",
            vec!["s3cr3t-value".into()],
        ));
        assert_eq!(shown_url(&in_user), "https://dash.example.org/api");
    }

    #[test]
    fn credentials_in_headers_are_secrets() {
        let b = block(
            Text::Plain("https://dash.example.org/api".into()),
            &[
                ("Authorization", Text::Plain("Bearer abc123".into())),
                ("Accept", Text::Plain("application/json".into())),
                (
                    "X-Other",
                    Text::Secret(Secret::new("env(\"X\")", "from-the-environment")),
                ),
            ],
        );
        assert_eq!(secrets(&b), ["Bearer abc123", "from-the-environment"]);
        assert!(literal_credentials(&b));
        assert_eq!(
            redact("a Bearer abc123 b from-the-environment", &secrets(&b)),
            "a (sensitive) b (sensitive)"
        );
    }
}

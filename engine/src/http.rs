//! One bounded, read-only HTTP GET: what a recipe's `data "http"` block fetches at plan time.
//!
//! Bounded in time (one deadline for the whole exchange, redirects and body included) and in
//! size (the body is read up to a limit, and a larger `Content-Length` is refused before
//! reading). Redirects are followed only within the same origin (scheme, host and port), at most
//! [`MAX_REDIRECTS`] of them: the request's headers may carry a token, and must not be sent to
//! another host, nor over plain HTTP after HTTPS. TLS is rustls with the ring provider, verified
//! against the system's root certificates. Proxies come from the usual environment variables
//! (`HTTPS_PROXY`, `NO_PROXY`, ...).
//!
//! Errors name no URL: the caller knows which form of it may be shown.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How many same-origin redirects are followed.
pub const MAX_REDIRECTS: u32 = 5;

/// A GET to make.
pub struct Request<'a> {
    pub url: &'a str,
    /// Extra request headers, in order (names as written).
    pub headers: &'a [(String, String)],
    /// For the whole exchange: connecting, redirects, and reading the body.
    pub timeout: Duration,
    /// The largest body accepted, in bytes.
    pub max_bytes: u64,
}

/// The final answer (after redirects).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The status's reason phrase (`Not Found`), when the code is a known one.
    pub reason: Option<&'static str>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Why a GET failed. Messages hold no URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error("only http:// and https:// URLs can be fetched")]
    Scheme,
    #[error("not a valid URL ({0})")]
    InvalidUrl(String),
    #[error("`{0}` is not a valid header name")]
    HeaderName(String),
    #[error("the value of the header `{0}` holds a line break or a control character")]
    HeaderValue(String),
    #[error("no complete answer within {}", seconds(*.0))]
    Timeout(Duration),
    #[error("unreachable ({0})")]
    Unreachable(String),
    #[error("the answer is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("redirected to another origin, `{0}`")]
    OtherOrigin(String),
    #[error("a redirect ({0}) without a `Location`")]
    NoLocation(u16),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("no root certificates in the system's store (install `ca-certificates`)")]
    NoRoots,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Other(String),
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `scheme://[userinfo@]host[:port]` split into the scheme, the authority without its userinfo
/// (with the scheme's default port made explicit), and where the authority ends.
fn origin(url: &str) -> Option<(String, String, usize)> {
    let scheme_end = url.find("://")?;
    let scheme = url[..scheme_end].to_ascii_lowercase();
    let start = scheme_end + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let has_port = match host.rfind(':') {
        Some(colon) => !host[colon..].contains(']'),
        None => false,
    };
    let host = host.to_ascii_lowercase();
    let host = match (has_port, scheme.as_str()) {
        (false, "https") => format!("{host}:443"),
        (false, "http") => format!("{host}:80"),
        _ => host,
    };
    Some((scheme, host, end))
}

/// The origin of `url` for messages: `https://host[:port]`, no userinfo, path or query (which
/// may hold a token).
pub fn shown_origin(url: &str) -> String {
    match origin(url) {
        Some((scheme, host, _)) => {
            let host = host
                .strip_suffix(if scheme == "https" { ":443" } else { ":80" })
                .unwrap_or(&host);
            format!("{scheme}://{host}")
        }
        None => "(not a URL)".into(),
    }
}

/// `location` (absolute, scheme-relative, absolute-path or relative) resolved against `base`.
fn resolve_location(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let Some((scheme, _, authority_end)) = origin(base) else {
        return location.to_string();
    };
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let prefix = &base[..authority_end];
    if location.starts_with('/') {
        return format!("{prefix}{location}");
    }
    let path = &base[authority_end..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{prefix}{dir}{location}")
}

/// An HTTP token (RFC 9110): what a header name may be made of.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The system's root certificates, read once.
fn system_roots() -> Result<Arc<Vec<ureq::tls::Certificate<'static>>>, HttpError> {
    static ROOTS: OnceLock<Arc<Vec<ureq::tls::Certificate<'static>>>> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    let certs: Vec<_> = found
        .certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if certs.is_empty() {
        return Err(HttpError::NoRoots);
    }
    Ok(ROOTS.get_or_init(|| Arc::new(certs)).clone())
}

fn agent(https: bool) -> Result<ureq::Agent, HttpError> {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    let roots = if https {
        RootCerts::Specific(system_roots()?)
    } else {
        // Never used: redirects stay on the same scheme.
        RootCerts::Specific(Arc::new(Vec::new()))
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(format!("vmbuild/{}", env!("CARGO_PKG_VERSION")))
        .accept("application/json")
        .tls_config(tls)
        .build();
    Ok(config.into())
}

fn error(e: ureq::Error, timeout: Duration, max_bytes: u64) -> HttpError {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Timeout(_) => HttpError::Timeout(timeout),
        ureq::Error::Io(io) if io.kind() == ErrorKind::TimedOut => HttpError::Timeout(timeout),
        ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            HttpError::Unreachable("connection refused".into())
        }
        ureq::Error::Io(io) => HttpError::Unreachable(io.to_string()),
        ureq::Error::HostNotFound => HttpError::Unreachable("host not found".into()),
        ureq::Error::ConnectionFailed => HttpError::Unreachable("connection failed".into()),
        ureq::Error::BodyExceedsLimit(_) => HttpError::TooLarge { limit: max_bytes },
        ureq::Error::BadUri(why) => HttpError::InvalidUrl(why),
        ureq::Error::Rustls(e) => HttpError::Tls(e.to_string()),
        ureq::Error::Tls(why) => HttpError::Tls(why.to_string()),
        other => HttpError::Other(other.to_string()),
    }
}

/// Fetch `request.url` with a GET, within the request's bounds.
pub fn get(request: &Request) -> Result<Response, HttpError> {
    let deadline = Instant::now() + request.timeout;
    let Some((scheme, first_origin, _)) = origin(request.url) else {
        return Err(HttpError::InvalidUrl("no `scheme://host`".into()));
    };
    if scheme != "http" && scheme != "https" {
        return Err(HttpError::Scheme);
    }
    for (name, value) in request.headers {
        if !valid_header_name(name) {
            return Err(HttpError::HeaderName(name.clone()));
        }
        if !valid_header_value(value) {
            return Err(HttpError::HeaderValue(name.clone()));
        }
    }
    let agent = agent(scheme == "https")?;
    let mut url = request.url.to_string();
    let mut redirects = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(request.timeout));
        }
        let mut call = agent.get(&url);
        for (name, value) in request.headers {
            call = call.header(name.as_str(), value.as_str());
        }
        let mut response = call
            .config()
            .timeout_global(Some(left))
            .build()
            .call()
            .map_err(|e| error(e, request.timeout, request.max_bytes))?;
        let status = response.status();
        if status.is_redirection() && status.as_u16() != 304 {
            let Some(location) = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
            else {
                return Err(HttpError::NoLocation(status.as_u16()));
            };
            let next = resolve_location(&url, location);
            match origin(&next) {
                Some((s, o, _)) if s == scheme && o == first_origin => {}
                _ => return Err(HttpError::OtherOrigin(shown_origin(&next))),
            }
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(HttpError::TooManyRedirects);
            }
            url = next;
            continue;
        }
        let body = response.body_mut();
        if body.content_length().is_some_and(|n| n > request.max_bytes) {
            return Err(HttpError::TooLarge {
                limit: request.max_bytes,
            });
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .body_mut()
            .with_config()
            .limit(request.max_bytes)
            .read_to_vec()
            .map_err(|e| error(e, request.timeout, request.max_bytes))?;
        return Ok(Response {
            status: status.as_u16(),
            reason: status.canonical_reason(),
            content_type,
            body,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};

    /// A loopback server answering each connection with `answer(path)`, for `connections`
    /// connections; its port.
    fn serve(connections: usize, answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(connections).flatten() {
                let path = read_request(&stream);
                let mut stream = stream;
                let _ = stream.write_all(&answer(&path));
            }
        });
        port
    }

    fn read_request(stream: &TcpStream) -> String {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim().is_empty() => break,
                Ok(_) => {}
            }
        }
        first.split_whitespace().nth(1).unwrap_or("/").to_string()
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn request(url: &str, timeout: Duration, max_bytes: u64) -> Result<Response, HttpError> {
        get(&Request {
            url,
            headers: &[],
            timeout,
            max_bytes,
        })
    }

    #[test]
    fn a_body_within_the_limit_is_read() {
        let port = serve(1, |_| ok("{\"a\": 1}"));
        let url = format!("http://127.0.0.1:{port}/x");
        let response = request(&url, Duration::from_secs(5), 8).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"a\": 1}");
        assert_eq!(response.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_with_or_without_a_length() {
        let port = serve(1, |_| ok("{\"a\": 12}"));
        let url = format!("http://127.0.0.1:{port}/x");
        assert_eq!(
            request(&url, Duration::from_secs(5), 8).unwrap_err(),
            HttpError::TooLarge { limit: 8 }
        );
        // No Content-Length: the body ends when the connection closes, and is cut at the limit.
        let port = serve(1, |_| {
            let mut answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
            answer.extend(std::iter::repeat_n(b' ', 100_000));
            answer
        });
        let url = format!("http://127.0.0.1:{port}/x");
        assert_eq!(
            request(&url, Duration::from_secs(5), 1000).unwrap_err(),
            HttpError::TooLarge { limit: 1000 }
        );
    }

    #[test]
    fn a_server_that_never_answers_times_out_on_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::thread::spawn(move || {
            // Accept, read the request, and answer nothing until the client gives up.
            let (stream, _) = listener.accept().unwrap();
            read_request(&stream);
            let mut buffer = [0u8; 1];
            let _ = std::io::Read::read(&mut &stream, &mut buffer);
        });
        let url = format!("http://127.0.0.1:{port}/slow");
        let started = Instant::now();
        let error = request(&url, Duration::from_millis(400), 1000).unwrap_err();
        let took = started.elapsed();
        assert_eq!(error, HttpError::Timeout(Duration::from_millis(400)));
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
        held.join().unwrap();
    }

    #[test]
    fn a_body_that_trickles_is_bounded_by_the_same_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&stream);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{");
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(100));
                if stream.write_all(b" ").is_err() {
                    break;
                }
            }
        });
        let url = format!("http://127.0.0.1:{port}/trickle");
        let started = Instant::now();
        let error = request(&url, Duration::from_millis(500), 1000).unwrap_err();
        assert_eq!(error, HttpError::Timeout(Duration::from_millis(500)));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn redirects_are_followed_within_the_origin_only() {
        let port = serve(2, |path| {
            if path == "/old" {
                b"HTTP/1.1 302 Found\r\nLocation: new?x=1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            } else {
                ok(&format!("\"{path}\""))
            }
        });
        let url = format!("http://127.0.0.1:{port}/old");
        let response = request(&url, Duration::from_secs(5), 1000).unwrap();
        assert_eq!(response.body, b"\"/new?x=1\"");

        let port = serve(1, |_| {
            b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.example.org/a?token=t0ps3cr3t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        });
        let url = format!("http://127.0.0.1:{port}/old");
        let error = request(&url, Duration::from_secs(5), 1000).unwrap_err();
        assert_eq!(
            error,
            HttpError::OtherOrigin("https://elsewhere.example.org".into())
        );
        assert!(!error.to_string().contains("t0ps3cr3t"));
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        assert_eq!(
            request(&url, Duration::from_secs(5), 1000).unwrap_err(),
            HttpError::Unreachable("connection refused".into())
        );
    }

    #[test]
    fn bad_requests_are_refused_before_connecting() {
        let get = |url: &str, headers: &[(String, String)]| {
            get(&Request {
                url,
                headers,
                timeout: Duration::from_secs(1),
                max_bytes: 10,
            })
        };
        assert_eq!(
            get("ftp://example.org/x", &[]).unwrap_err(),
            HttpError::Scheme
        );
        assert!(matches!(
            get("example.org/x", &[]).unwrap_err(),
            HttpError::InvalidUrl(_)
        ));
        let bad_value = [("X-Token".to_string(), "a\r\nInjected: 1".to_string())];
        assert_eq!(
            get("http://127.0.0.1:9/", &bad_value).unwrap_err(),
            HttpError::HeaderValue("X-Token".into())
        );
        let bad_name = [("Bad Name".to_string(), "x".to_string())];
        assert_eq!(
            get("http://127.0.0.1:9/", &bad_name).unwrap_err(),
            HttpError::HeaderName("Bad Name".into())
        );
    }

    #[test]
    fn locations_resolve_like_a_browser() {
        let base = "https://u:p@host.example.org/api/v1/dash?x=1";
        assert_eq!(
            resolve_location(base, "/other"),
            "https://u:p@host.example.org/other"
        );
        assert_eq!(
            resolve_location(base, "v2"),
            "https://u:p@host.example.org/api/v1/v2"
        );
        assert_eq!(
            resolve_location(base, "//cdn.example.org/x"),
            "https://cdn.example.org/x"
        );
        assert_eq!(
            origin("https://Host.example.org/x").map(|o| o.1),
            Some("host.example.org:443".into())
        );
        assert_eq!(
            origin("http://[::1]/x").map(|o| o.1),
            Some("[::1]:80".into())
        );
        assert_eq!(
            shown_origin("https://user:token@host.example.org/p?token=x"),
            "https://host.example.org"
        );
    }
}

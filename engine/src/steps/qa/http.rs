//! A minimal HTTP/1.1 client for QA checks: one `GET` over a loopback TCP connection with
//! `Connection: close`. The status line is parsed strictly (QEMU's user-mode network accepts
//! connections before the guest listens, so only a real status line proves a server); the
//! body is framed by `Content-Length`, the chunked transfer coding or the end of the
//! connection.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a response kept; a larger one is an error.
pub const MAX_RESPONSE: usize = 32 << 20;

/// A parsed response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete response within {0:.0?}")]
    Timeout(Duration),
    #[error("the connection closed before a complete response ({0} bytes received)")]
    Incomplete(usize),
    #[error("not an HTTP response: {0}")]
    Malformed(String),
    #[error("response larger than {MAX_RESPONSE} bytes")]
    TooLarge,
}

/// The result of parsing what has arrived so far.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    Complete(Response),
}

/// The request text: `GET path` with a `Host` header.
pub fn request(host: &str, path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vmbuild-qa\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    )
}

/// `GET path` from `127.0.0.1:port`, the whole exchange bounded by `limit`.
pub async fn get(
    port: u16,
    host: &str,
    path: &str,
    limit: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(limit, async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(HttpError::Connect)?;
        stream.write_all(request(host, path).as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            let eof = n == 0;
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                return Err(HttpError::TooLarge);
            }
            match parse_response(&buf, eof)? {
                Parsed::Complete(response) => return Ok(response),
                Parsed::Incomplete if eof => return Err(HttpError::Incomplete(buf.len())),
                Parsed::Incomplete => {}
            }
        }
    })
    .await
    .map_err(|_| HttpError::Timeout(limit))?
}

/// Parse a response from the bytes received so far; `eof` says the connection has closed
/// (which ends a body that has no declared length).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, HttpError> {
    let Some((head_len, body_start)) = find_head_end(buf) else {
        // Reject a wrong status line as soon as it is complete.
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            parse_status_line(&buf[..end])?;
        } else if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
            return Err(HttpError::Malformed(format!("{:?}", snippet(buf, 60))));
        }
        return Ok(Parsed::Incomplete);
    };
    let head = &buf[..head_len];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (status, reason) = parse_status_line(lines.next().unwrap_or_default())?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(line);
        let Some((name, value)) = text.split_once(':') else {
            return Err(HttpError::Malformed(format!("header line {text:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let rest = &buf[body_start..];
    // An interim response (100 Continue and the like): the real one follows.
    if (100..200).contains(&status) && status != 101 {
        return parse_response(rest, eof);
    }
    let mut response = Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    if status == 204 || status == 304 {
        return Ok(Parsed::Complete(response));
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        // Decoded once the connection closes or the last chunk is in.
        if !eof && !rest.ends_with(b"0\r\n\r\n") {
            return Ok(Parsed::Incomplete);
        }
        return match dechunk(rest)? {
            Some(body) => {
                response.body = body;
                Ok(Parsed::Complete(response))
            }
            None => Ok(Parsed::Incomplete),
        };
    }
    if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| HttpError::Malformed(format!("Content-Length {length:?}")))?;
        if rest.len() < length {
            return Ok(Parsed::Incomplete);
        }
        response.body = rest[..length].to_vec();
        return Ok(Parsed::Complete(response));
    }
    if !eof {
        return Ok(Parsed::Incomplete);
    }
    response.body = rest.to_vec();
    Ok(Parsed::Complete(response))
}

/// Where the header block ends: `(end of the last header line, start of the body)`. Accepts
/// bare `\n` line ends as well as `\r\n`.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = find(buf, b"\r\n\r\n").map(|at| (at, at + 4));
    let lf = find(buf, b"\n\n").map(|at| (at, at + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `HTTP/1.1 200 OK` → `(200, "OK")`.
pub fn parse_status_line(line: &[u8]) -> Result<(u16, String), HttpError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = || HttpError::Malformed(format!("status line {:?}", snippet(line, 80)));
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let rest = text.strip_prefix("HTTP/").ok_or_else(bad)?;
    let (version, rest) = rest.split_once(' ').ok_or_else(bad)?;
    let version_ok = matches!(version.as_bytes(), [major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
        || version == "2";
    let code = rest.get(..3).ok_or_else(bad)?;
    if !version_ok || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let reason = match &rest[3..] {
        "" => "",
        r => r.strip_prefix(' ').ok_or_else(bad)?,
    };
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok((status, reason.to_string()))
}

/// Decode a chunked body; `None` if the last chunk has not arrived.
pub fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(end) = data.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[..end]);
        let size_text = line.trim_end_matches('\r');
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        data = &data[end + 1..];
        if size == 0 {
            return Ok(Some(body));
        }
        if data.len() < size {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size..];
        data = data
            .strip_prefix(b"\r\n")
            .or_else(|| data.strip_prefix(b"\n"))
            .unwrap_or(data);
    }
}

/// The first `max` bytes as text, for messages (lossy UTF-8, `…` when cut); quote it with
/// `{:?}` to escape control characters.
pub fn snippet(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8], eof: bool) -> Response {
        match parse_response(buf, eof).expect("parses") {
            Parsed::Complete(r) => r,
            Parsed::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r").unwrap(),
            (200, "OK".into())
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 404 Not Found").unwrap(),
            (404, "Not Found".into())
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204").unwrap(),
            (204, String::new())
        );
        for bad in [
            &b"HTTP/1.1 20 OK"[..],
            b"HTTP/1.1 abc OK",
            b"HTTP/1.1200 OK",
            b"SSH-2.0-OpenSSH_9.2",
            b"",
            b"HTTP/x.y 200 OK",
            b"HTTP/1.1 200OK",
            b"HTTP/1.1 999 Nope",
        ] {
            assert!(parse_status_line(bad).is_err(), "{:?}", snippet(bad, 40));
        }
    }

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello";
        let r = complete(raw, false);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html"));
        assert_eq!(r.body, b"hello");
        // Not all of the body yet.
        assert_eq!(
            parse_response(&raw[..raw.len() - 2], false).unwrap(),
            Parsed::Incomplete
        );
        // The connection closed early: still incomplete, the caller reports it.
        assert_eq!(
            parse_response(&raw[..raw.len() - 2], true).unwrap(),
            Parsed::Incomplete
        );
    }

    #[test]
    fn body_until_close_and_bare_newlines() {
        let raw = b"HTTP/1.0 200 OK\nServer: x\n\nsome body";
        assert_eq!(parse_response(raw, false).unwrap(), Parsed::Incomplete);
        assert_eq!(complete(raw, true).body, b"some body");
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(complete(raw, false).body, b"hello, world");
        assert_eq!(
            parse_response(&raw[..60], false).unwrap(),
            Parsed::Incomplete
        );
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                true
            ),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn interim_and_empty_responses() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n";
        let r = complete(raw, false);
        assert_eq!((r.status, r.header("location")), (301, Some("/x")));
        assert_eq!(
            complete(b"HTTP/1.1 204 No Content\r\n\r\n", false).body,
            b""
        );
    }

    #[test]
    fn rejects_what_is_not_http() {
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n", false).is_err());
        assert!(parse_response(b"garbage", false).is_err());
        assert_eq!(parse_response(b"HTT", false).unwrap(), Parsed::Incomplete);
        assert_eq!(parse_response(b"", true).unwrap(), Parsed::Incomplete);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", true).is_err());
    }

    #[test]
    fn request_has_host_and_closes() {
        let r = request("localhost", "index.html");
        assert!(r.starts_with("GET /index.html HTTP/1.1\r\nHost: localhost\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn snippets_are_cut() {
        assert_eq!(snippet(b"abc", 10), "abc");
        assert_eq!(snippet(b"abcdef", 3), "abc…");
        assert_eq!(format!("{:?}", snippet(b"a\r\nb", 10)), "\"a\\r\\nb\"");
    }

    #[tokio::test]
    async fn get_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (sent, received) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.expect("read");
            let _ = sent.send(String::from_utf8_lossy(&req[..n]).to_string());
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .expect("write");
            // Keep the connection open: the client must stop at Content-Length.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let r = get(port, "localhost", "/", Duration::from_secs(3))
            .await
            .expect("get");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let req = received.await.expect("server");
        assert!(
            req.starts_with("GET / HTTP/1.1\r\nHost: localhost\r\n"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn a_silent_peer_is_not_a_server() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            // Accept and close at once, as QEMU's user network does before the guest listens.
            let (s, _) = listener.accept().await.expect("accept");
            drop(s);
        });
        let err = get(port, "localhost", "/", Duration::from_secs(3))
            .await
            .expect_err("no response");
        // Closed with the request unread: an end of file or a reset, never a response.
        assert!(
            matches!(err, HttpError::Incomplete(0) | HttpError::Io(_)),
            "{err}"
        );
    }
}

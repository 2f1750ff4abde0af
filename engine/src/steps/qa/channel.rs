//! JSON messages over a QEMU unix socket, shared by QMP and the guest agent: requests are
//! written as one JSON object and a newline; replies are read as a stream of JSON objects,
//! whatever whitespace separates them. A `0xFF` byte (the guest agent's answer to
//! `guest-sync-delimited`) discards everything received before it.

use std::io;
use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The guest agent's resynchronisation byte.
pub const DELIMITER: u8 = 0xFF;

/// The most a single reply may hold before the peer is taken to be broken (the guest agent
/// sends command output base64-encoded, by default up to 16 MiB of it).
const MAX_MESSAGE: usize = 64 << 20;

/// One connection to a QMP or guest agent socket.
pub struct JsonChannel {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl JsonChannel {
    pub async fn connect(path: &Path) -> io::Result<JsonChannel> {
        Ok(JsonChannel::new(UnixStream::connect(path).await?))
    }

    pub fn new(stream: UnixStream) -> JsonChannel {
        JsonChannel {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write one message (a JSON object and a newline).
    pub async fn send(&mut self, message: &Value) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.send_raw(&bytes).await
    }

    /// Write bytes as they are (the guest agent's `0xFF` flush).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next complete JSON object from the peer. Cancel-safe: a partial message stays
    /// buffered for the next call, so this can be wrapped in a timeout.
    pub async fn recv(&mut self) -> io::Result<Value> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(value) = take_value(&mut self.buf) {
                return Ok(value);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.len() > MAX_MESSAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a message larger than {MAX_MESSAGE} bytes"),
                ));
            }
        }
    }
}

/// Take the first complete JSON object out of `buf`, leaving what follows. Bytes up to the
/// last [`DELIMITER`] and anything before an opening brace are dropped; a malformed object is
/// skipped. `None` if no complete object has arrived yet.
pub fn take_value(buf: &mut Vec<u8>) -> Option<Value> {
    loop {
        if let Some(at) = buf.iter().rposition(|&b| b == DELIMITER) {
            buf.drain(..=at);
        }
        match buf.iter().position(|&b| b == b'{') {
            Some(at) => {
                buf.drain(..at);
            }
            None => {
                buf.clear();
                return None;
            }
        }
        let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        match values.next() {
            Some(Ok(value)) => {
                let used = values.byte_offset();
                buf.drain(..used);
                return Some(value);
            }
            Some(Err(e)) if e.is_eof() => return None,
            // Not JSON after all: skip this brace and look for the next object.
            Some(Err(_)) => {
                buf.drain(..1);
            }
            None => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn takes_objects_one_by_one_across_partial_reads() {
        let mut buf = b"{\"return\": {}}\n{\"event\": \"STOP\"}\r\n{\"ret".to_vec();
        assert_eq!(take_value(&mut buf), Some(json!({"return": {}})));
        assert_eq!(take_value(&mut buf), Some(json!({"event": "STOP"})));
        assert_eq!(take_value(&mut buf), None);
        buf.extend_from_slice(b"urn\": 5}");
        assert_eq!(take_value(&mut buf), Some(json!({"return": 5})));
        assert_eq!(take_value(&mut buf), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn delimiter_discards_stale_replies() {
        let mut buf = b"{\"return\": 1}\n{\"return\": 2".to_vec();
        buf.push(DELIMITER);
        buf.extend_from_slice(b"{\"return\": 3}\n");
        assert_eq!(take_value(&mut buf), Some(json!({"return": 3})));
        assert_eq!(take_value(&mut buf), None);
    }

    #[test]
    fn garbage_is_skipped() {
        let mut buf = b"noise {not json} {\"return\": true}".to_vec();
        assert_eq!(take_value(&mut buf), Some(json!({"return": true})));
    }
}

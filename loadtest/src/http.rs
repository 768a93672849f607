//! A minimal HTTP/1.1 client connection: keep-alive, one request at a time,
//! `content-length` bodies only (what voucherd, the hello server and the
//! peers send). It writes pre-formatted request bytes and parses just the
//! status line and the headers it needs, so the generator stays cheap.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer head or body accepted; voucherd answers are under 1 KiB
/// and a tranche view with 64 counties is under 8 KiB.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// One keep-alive connection.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Bytes of `buffer` received but not yet consumed.
    filled: usize,
    /// Where the last answer's body sits in `buffer`.
    body: std::ops::Range<usize>,
    /// Bytes of the last answer (head and body), consumed before the next read.
    consumed: usize,
}

impl Connection {
    pub async fn connect(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: vec![0; READ_CHUNK_BYTES],
            filled: 0,
            body: 0..0,
            consumed: 0,
        })
    }

    /// Sends one request and reads its answer; returns the status code. The
    /// body is [`Connection::body`] until the next call.
    pub async fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        self.stream.write_all(request).await?;
        self.read_answer().await
    }

    pub fn body(&self) -> &[u8] {
        &self.buffer[self.body.clone()]
    }

    async fn read_answer(&mut self) -> io::Result<u16> {
        // Drop the previous answer's bytes (pipelined leftovers stay).
        if self.consumed > 0 {
            self.buffer.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        loop {
            if let Some((status, head_len, body_len)) = parse_head(&self.buffer[..self.filled])? {
                let total = head_len + body_len;
                if total > MAX_ANSWER_BYTES {
                    return Err(invalid("answer too large"));
                }
                while self.filled < total {
                    self.fill().await?;
                }
                self.body = head_len..total;
                self.consumed = total;
                return Ok(status);
            }
            if self.filled >= MAX_ANSWER_BYTES {
                return Err(invalid("answer head too large"));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buffer.len() - self.filled < READ_CHUNK_BYTES / 2 {
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buffer[self.filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.filled += n;
        Ok(())
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// `(status, head length, body length)` once the head is complete.
pub fn parse_head(bytes: &[u8]) -> io::Result<Option<(u16, usize, usize)>> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &bytes[..end];
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
        return Err(invalid("not an HTTP/1.x answer"));
    }
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("bad status code"))?;
    let mut body_len = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(&value[1..]).map_err(|_| invalid("content-length"))?;
            body_len = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| invalid("content-length"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(invalid("chunked answers are not supported"));
        }
    }
    Ok(Some((status, end + 4, body_len.unwrap_or(0))))
}

/// A complete request with a JSON body.
pub fn request(method: &str, path: &str, host: &str, auth: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    if let Some(token) = auth {
        out.extend_from_slice(b"\r\nauthorization: Bearer ");
        out.extend_from_slice(token.as_bytes());
    }
    if !body.is_empty() || method != "GET" {
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// One request on a fresh connection (admin calls, reads of the tranche view).
pub async fn once(addr: SocketAddr, request: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let mut conn = Connection::connect(addr).await?;
    let status = conn.exchange(request).await?;
    Ok((status, conn.body().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let answer = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}rest";
        assert_eq!(
            parse_head(answer).unwrap(),
            Some((201, answer.len() - 6, 2))
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}

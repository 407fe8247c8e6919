//! Protocol detection on the client's first bytes, after TLS (or at once on plaintext).
//!
//! One timed read (or a few, while the bytes so far are a prefix of an HTTP method), then a
//! [`Rewind`] stream that serves those bytes again before reading on, so the next stage sees
//! the stream from its first byte. Only the method token is inspected: whether an HTTP
//! request is a WebSocket upgrade is decided from its parsed headers by the HTTP stage.
//!
//! Trade-off: a client that sends nothing within `detect_timeout` is raw TCP, which is what
//! server-speaks-first protocols (SMTP, MySQL, many game protocols) need; a client that
//! starts with bytes spelling an HTTP method followed by a space is HTTP, which no binary
//! protocol in practice begins with.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::Rewind;

/// What the first bytes said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line starts here (WebSocket upgrades included).
    Http,
    /// A TLS handshake record starts here (a ClientHello, on a listener without `tls`).
    Tls,
    /// Anything else, or nothing within the timeout.
    Tcp,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("client closed before sending anything")]
    ClientClosed,
    #[error("reading the client's first bytes")]
    Io(#[source] io::Error),
    #[error("the client's first message was incomplete when detect_timeout ran out")]
    Timeout,
    #[error("the client closed in the middle of its first message")]
    Truncated,
    #[error("the client's first message is longer than {0} bytes")]
    TooLong(usize),
}

/// HTTP/1.x methods (RFC 9110 §9 plus PATCH), each followed by the space that ends the token.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// A TLS record header (RFC 8446 §5.1): content type 22 (handshake), then a
/// legacy_record_version of 3.0 to 3.4.
fn tls_record(first: &[u8]) -> Option<bool> {
    match first {
        [] => None,
        [22] | [22, 3] => None,
        [22, 3, minor, ..] => Some(*minor <= 4),
        _ => Some(false),
    }
}

/// Decides from the bytes so far; `None` while they are a strict prefix of a method token
/// or of a TLS record header.
pub fn classify(first: &[u8]) -> Option<Detected> {
    let mut undecided = false;
    match tls_record(first) {
        Some(true) => return Some(Detected::Tls),
        None if !first.is_empty() => undecided = true,
        _ => {}
    }
    for method in METHODS {
        if first.starts_with(method) {
            return Some(Detected::Http);
        }
        if method.starts_with(first) {
            undecided = true;
        }
    }
    if undecided { None } else { Some(Detected::Tcp) }
}

/// Bytes read per attempt; the rest stays in the socket for the relay.
const DETECT_READ: usize = 4096;

/// Reads until the first bytes decide, or `timeout` passes (then: TCP with whatever arrived).
pub async fn detect<S>(mut io: S, timeout: Duration) -> Result<(Detected, Rewind<S>), DetectError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(DETECT_READ);
    let deadline = tokio::time::Instant::now() + timeout;
    let detected = loop {
        if buf.len() >= DETECT_READ {
            break Detected::Tcp;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_elapsed) => break Detected::Tcp,
            Ok(Ok(0)) if buf.is_empty() => return Err(DetectError::ClientClosed),
            // EOF after some bytes: they still go to the backend as TCP (or to hyper, which
            // answers a truncated request with 400).
            Ok(Ok(0)) => break classify(&buf).unwrap_or(Detected::Tcp),
            Ok(Ok(_)) => {
                if let Some(found) = classify(&buf) {
                    break found;
                }
            }
            Ok(Err(e)) => return Err(DetectError::Io(e)),
        }
    };
    Ok((detected, Rewind::new(buf.freeze(), io)))
}

/// Reads on after [`detect`] until `decide` answers from the bytes so far (which stay in
/// the returned stream's prefix), `cap` bytes are buffered, or `deadline` passes. For a
/// first message that must be whole before it is understood (a TLS ClientHello). `decide`
/// is asked first about what detection read, which usually holds the whole message: then
/// nothing is copied.
pub async fn read_until<S, T>(
    rewind: Rewind<S>,
    deadline: tokio::time::Instant,
    cap: usize,
    mut decide: impl FnMut(&[u8]) -> Option<T>,
) -> Result<(T, Rewind<S>), DetectError>
where
    S: AsyncRead + Unpin,
{
    if let Some(found) = decide(&rewind.prefix) {
        return Ok((found, rewind));
    }
    let (prefix, mut io) = rewind.into_parts();
    let mut buf = BytesMut::with_capacity(cap.min(prefix.len() + DETECT_READ));
    buf.extend_from_slice(&prefix);
    drop(prefix);
    loop {
        if buf.len() >= cap {
            return Err(DetectError::TooLong(cap));
        }
        // Never past `cap`, so a flood is not read into memory.
        let room = cap - buf.len();
        buf.reserve(room.min(DETECT_READ));
        let mut limited = (&mut io).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await {
            Err(_elapsed) => return Err(DetectError::Timeout),
            Ok(Ok(0)) => return Err(DetectError::Truncated),
            Ok(Ok(_)) => {
                if let Some(found) = decide(&buf) {
                    return Ok((found, Rewind::new(buf.freeze(), io)));
                }
            }
            Ok(Err(e)) => return Err(DetectError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn methods_followed_by_space_are_http() {
        for m in METHODS {
            assert_eq!(classify(m), Some(Detected::Http));
        }
        assert_eq!(classify(b"GET /ws HTTP/1.1\r\n"), Some(Detected::Http));
    }

    #[test]
    fn every_strict_prefix_of_a_method_waits() {
        for m in METHODS {
            for end in 1..m.len() {
                assert_eq!(classify(&m[..end]), None, "{:?}", &m[..end]);
            }
        }
    }

    #[test]
    fn other_bytes_are_tcp() {
        assert_eq!(classify(b"\x16\x03\x05"), Some(Detected::Tcp));
        assert_eq!(classify(b"\x16\x04"), Some(Detected::Tcp));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Detected::Tcp));
        assert_eq!(classify(b"GETX"), Some(Detected::Tcp));
        assert_eq!(classify(b"\x10\x20MQTT"), Some(Detected::Tcp));
        assert_eq!(classify(b"PRI * HTTP/2.0"), Some(Detected::Tcp));
    }

    #[test]
    fn a_tls_record_header_is_tls_and_its_prefixes_wait() {
        for minor in 0..=4 {
            assert_eq!(classify(&[22, 3, minor, 0, 1]), Some(Detected::Tls));
        }
        assert_eq!(classify(&[22]), None);
        assert_eq!(classify(&[22, 3]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn read_until_stops_at_its_cap_and_its_deadline() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &[0u8; 40])
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let never = |_: &[u8]| None::<()>;
        let r = read_until(Rewind::new(Bytes::new(), b), deadline, 32, never).await;
        assert!(matches!(r, Err(DetectError::TooLong(32))));

        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"abc")
            .await
            .unwrap();
        let r = read_until(Rewind::new(Bytes::new(), b), deadline, 32, never).await;
        assert!(matches!(r, Err(DetectError::Timeout)));
        drop(a);

        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"cd")
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let whole = |buf: &[u8]| (buf.len() >= 4).then(|| buf.to_vec());
        let (got, rewind) = read_until(
            Rewind::new(Bytes::from_static(b"ab"), b),
            deadline,
            32,
            whole,
        )
        .await
        .unwrap();
        assert_eq!(got, b"abcd");
        assert_eq!(&rewind.prefix[..], b"abcd");
    }

    #[tokio::test]
    async fn rewind_replays_prefix_then_inner() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GE")
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::io::AsyncWriteExt::write_all(&mut a, b"T / HTTP/1.1\r\n")
                .await
                .unwrap();
            a
        });
        let (found, mut rewind) = detect(b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(found, Detected::Http);
        let _a = task.await.unwrap();
        let mut got = vec![0u8; 16];
        rewind.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_tcp_after_timeout() {
        let (_a, b) = tokio::io::duplex(64);
        let (found, rewind) = detect(b, Duration::from_secs(2)).await.unwrap();
        assert_eq!(found, Detected::Tcp);
        assert!(rewind.into_parts().0.is_empty());
    }
}

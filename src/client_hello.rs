//! The server name a TLS client asks for, read from its ClientHello without terminating
//! the session, for `protocol = "tls_passthrough"` routes.
//!
//! A pure parser over the bytes read so far: it says whether they hold a whole ClientHello
//! yet, and if so which host name its `server_name` extension carries (RFC 6066 §3). The
//! ClientHello may span several TLS records (RFC 8446 §5.1: handshake messages may be
//! fragmented across records); a message in one record, the usual case, is parsed in place.

/// Largest ClientHello accepted, in handshake-message bytes. Real ones are a few hundred
/// bytes, up to ~2 KiB with post-quantum key shares; 16 KiB is one full record.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Most bytes the reader should buffer before giving up: the largest message, fragmented
/// into records of at least 256 bytes (5-byte header each). A client that fragments more
/// finely is refused.
pub const MAX_BUFFERED: usize = MAX_CLIENT_HELLO + MAX_CLIENT_HELLO / 256 * 5 + 5;

/// TLS record content type `handshake` (RFC 8446 §5.1).
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello` (RFC 8446 §4).
const CLIENT_HELLO: u8 = 1;
/// Extension type `server_name` (RFC 6066 §3).
const SERVER_NAME: u16 = 0;
/// ServerName `name_type` `host_name` (RFC 6066 §3).
const HOST_NAME: u8 = 0;
/// Largest record payload (RFC 8446 §5.1: 2^14).
const MAX_RECORD: usize = 16 * 1024;

/// What the bytes so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A prefix of a ClientHello: read more.
    Incomplete,
    /// A whole ClientHello; the lower-cased host name it asks for, if any.
    Complete { sni: Option<String> },
}

/// Why the bytes are not a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a TLS ClientHello: {0}")]
pub struct Malformed(pub &'static str);

/// Parses the bytes a client sent first.
pub fn parse(buf: &[u8]) -> Result<Hello, Malformed> {
    // What has arrived of the first record already says whether a ClientHello starts it.
    if let Some(header) = buf.get(..5) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        message_len(&buf[5..buf.len().min(5 + len)])?;
    }
    // The first record alone, when it holds the whole message: no copy.
    let Some(first) = record(buf)? else {
        return Ok(Hello::Incomplete);
    };
    if let Some(len) = message_len(first)?
        && first.len() >= len
    {
        return client_hello(&first[4..len]).map(|sni| Hello::Complete { sni });
    }
    // Fragmented: gather the handshake bytes of successive records.
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        let Some(fragment) = record(rest)? else {
            return Ok(Hello::Incomplete);
        };
        if fragment.is_empty() {
            // RFC 8446 §5.1: zero-length handshake fragments are not allowed.
            return Err(Malformed("an empty handshake record"));
        }
        rest = &rest[5 + fragment.len()..];
        message.extend_from_slice(fragment);
        if let Some(len) = message_len(&message)?
            && message.len() >= len
        {
            return client_hello(&message[4..len]).map(|sni| Hello::Complete { sni });
        }
    }
}

/// The payload of the record at the start of `buf`; `None` while it is incomplete.
fn record(buf: &[u8]) -> Result<Option<&[u8]>, Malformed> {
    if let Some(&kind) = buf.first()
        && kind != HANDSHAKE
    {
        return Err(Malformed("not a handshake record"));
    }
    // legacy_record_version: 0x0301 in practice, 0x0300..=0x0304 accepted.
    if let Some(&major) = buf.get(1)
        && major != 3
    {
        return Err(Malformed("not a TLS record version"));
    }
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_RECORD {
        return Err(Malformed("a record longer than 2^14 bytes"));
    }
    Ok(buf.get(5..5 + len))
}

/// Length of the handshake message (header included) starting `message`, once its header
/// is there.
fn message_len(message: &[u8]) -> Result<Option<usize>, Malformed> {
    if let Some(&kind) = message.first()
        && kind != CLIENT_HELLO
    {
        return Err(Malformed(
            "the first handshake message is not a ClientHello",
        ));
    }
    let Some(header) = message.get(..4) else {
        return Ok(None);
    };
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if len > MAX_CLIENT_HELLO {
        return Err(Malformed("a ClientHello longer than 16 KiB"));
    }
    Ok(Some(4 + len))
}

/// A cursor over a message body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("a field runs past its message"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The host name in a ClientHello body (RFC 8446 §4.1.2).
fn client_hello(body: &[u8]) -> Result<Option<String>, Malformed> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err(Malformed("a session id longer than 32 bytes"));
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed("a malformed cipher suite list"));
    }
    if r.vec8()?.is_empty() {
        return Err(Malformed("no compression methods"));
    }
    if r.0.is_empty() {
        // A ClientHello without extensions (TLS 1.2 and before allow it).
        return Ok(None);
    }
    let mut extensions = Reader(r.vec16()?);
    let mut sni = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == SERVER_NAME {
            if sni.is_some() {
                // RFC 8446 §4.2: at most one extension of each type.
                return Err(Malformed("two server_name extensions"));
            }
            sni = Some(server_name(data)?);
        }
    }
    Ok(sni.flatten())
}

/// The `host_name` entry of a ServerNameList (RFC 6066 §3), lower-cased.
fn server_name(data: &[u8]) -> Result<Option<String>, Malformed> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == HOST_NAME {
            // RFC 6066 §3: ASCII, no trailing dot; anything else matches no route anyway,
            // but is refused here so that no odd byte reaches a log line.
            if name.is_empty()
                || !name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Err(Malformed("a server name that is not a DNS name"));
            }
            let mut name = String::from_utf8_lossy(name).into_owned();
            name.make_ascii_lowercase();
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a rustls client for `name` (`None`: SNI turned off).
    fn client_hello_bytes(name: Option<&str>) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(crate::certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.enable_sni = name.is_some();
        let server_name = rustls::pki_types::ServerName::try_from(
            name.unwrap_or("no-sni.example.test").to_owned(),
        )
        .unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_rustls_client_hello_names_its_server_in_lower_case() {
        let hello = client_hello_bytes(Some("DB.Example.test"));
        assert_eq!(
            parse(&hello),
            Ok(Hello::Complete {
                sni: Some("db.example.test".into())
            })
        );
    }

    #[test]
    fn every_cut_of_a_client_hello_needs_more() {
        let hello = client_hello_bytes(Some("db.example.test"));
        for end in 0..hello.len() {
            assert_eq!(parse(&hello[..end]), Ok(Hello::Incomplete), "cut at {end}");
        }
    }

    #[test]
    fn a_client_hello_fragmented_over_records_is_reassembled() {
        let hello = client_hello_bytes(Some("db.example.test"));
        let message = &hello[5..];
        let mut fragmented = Vec::new();
        for chunk in message.chunks(7) {
            fragmented.extend_from_slice(&[22, 3, 1, 0, chunk.len() as u8]);
            fragmented.extend_from_slice(chunk);
        }
        for end in 0..fragmented.len() {
            assert_eq!(
                parse(&fragmented[..end]),
                Ok(Hello::Incomplete),
                "cut at {end}"
            );
        }
        assert_eq!(
            parse(&fragmented),
            Ok(Hello::Complete {
                sni: Some("db.example.test".into())
            })
        );
    }

    #[test]
    fn a_client_hello_without_sni_has_no_name() {
        let hello = client_hello_bytes(None);
        assert_eq!(parse(&hello), Ok(Hello::Complete { sni: None }));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(&[22, 4, 1]).is_err());
        // A record that is not a ClientHello (a ServerHello).
        assert!(parse(&[22, 3, 3, 0, 4, 2, 0, 0, 0]).is_err());
        // A ClientHello whose length claims more than the cap.
        assert!(parse(&[22, 3, 1, 0x40, 0, 1, 0x01, 0, 0]).is_err());
        // A whole message whose body is too short for its fields.
        assert!(parse(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0]).is_err());
        // A ClientHello whose session id claims more than 32 bytes (record header, message
        // header, legacy_version and random come first).
        let mut hello = client_hello_bytes(Some("db.example.test"));
        hello[5 + 4 + 2 + 32] = 33;
        assert_eq!(
            parse(&hello),
            Err(Malformed("a session id longer than 32 bytes"))
        );
    }

    #[test]
    fn every_flipped_byte_is_an_answer_not_a_panic() {
        let hello = client_hello_bytes(Some("db.example.test"));
        for i in 0..hello.len() {
            for bit in [0x01, 0x80, 0xff] {
                let mut bytes = hello.clone();
                bytes[i] ^= bit;
                let _ = parse(&bytes);
            }
        }
    }
}

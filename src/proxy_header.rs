//! The PROXY protocol stage, first after accept on a listener with `proxy_protocol = true`:
//! reads the header a load balancer puts before the client's bytes
//! (<https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>) and says which address
//! it carries.
//!
//! Contract: exactly the header's bytes are consumed, never one more, so the TLS handshake
//! or the HTTP request behind it reaches the next stage untouched. v1 is a line of at most
//! 107 bytes: what is already queued on the socket is peeked (`MSG_PEEK`) and only the part
//! up to the CRLF is read. v2 is a 16-byte fixed part that gives the length of the rest.
//! No allocation: the longest part kept is a v1 line on the stack; v2 TLVs are read through
//! a small buffer and dropped.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::io::Socket;
use tokio::io::AsyncReadExt;

use crate::io::proxy_header::{V1_MAX, V2_SIGNATURE};

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is a client's, relayed: its address and the one it reached.
    Proxied {
        client: SocketAddr,
        local: SocketAddr,
    },
    /// The proxy's own connection (v2 `LOCAL`: health checks), or a family without IP
    /// addresses (`UNKNOWN`, `AF_UNIX`, `AF_UNSPEC`): the socket's addresses stand.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("the connection ended inside the PROXY header")]
    Truncated,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("reading the PROXY header")]
    Io(#[source] io::Error),
}

impl ProxyHeaderError {
    /// The `sockgate_rejected_total` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyHeaderError::Timeout(_) => "proxy_header_timeout",
            _ => "bad_proxy_header",
        }
    }
}

fn io_error(e: io::Error) -> ProxyHeaderError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ProxyHeaderError::Truncated
    } else {
        ProxyHeaderError::Io(e)
    }
}

/// Reads one header within `timeout`.
pub async fn read(tcp: &mut Socket, timeout: Duration) -> Result<Header, ProxyHeaderError> {
    tokio::time::timeout(timeout, read_header(tcp))
        .await
        .unwrap_or(Err(ProxyHeaderError::Timeout(timeout)))
}

async fn read_header(tcp: &mut Socket) -> Result<Header, ProxyHeaderError> {
    let mut buf = [0u8; V1_MAX];
    // Eight bytes belong to any valid header: the shortest v1 line ("PROXY UNKNOWN\r\n") is
    // 15 bytes, a v2 header at least 16.
    tcp.read_exact(&mut buf[..8]).await.map_err(io_error)?;
    if buf[..8] == V2_SIGNATURE[..8] {
        return read_v2(tcp, &mut buf).await;
    }
    if &buf[..6] != b"PROXY " {
        return Err(ProxyHeaderError::Malformed("not a PROXY header"));
    }
    let mut have = 8;
    loop {
        if have == V1_MAX {
            return Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"));
        }
        // Whatever is queued, without taking it: the bytes after the CRLF are the client's.
        let n = tcp
            .peek(&mut buf[have..])
            .await
            .map_err(ProxyHeaderError::Io)?;
        if n == 0 {
            return Err(ProxyHeaderError::Truncated);
        }
        // The CR may be the last byte already taken.
        let window = &buf[have - 1..have + n];
        let take = match window.windows(2).position(|w| w == b"\r\n") {
            Some(i) => i + 1,
            None => n,
        };
        tcp.read_exact(&mut buf[have..have + take])
            .await
            .map_err(io_error)?;
        have += take;
        if buf[..have].ends_with(b"\r\n") {
            return parse_v1(&buf[..have]).map_err(ProxyHeaderError::Malformed);
        }
    }
}

async fn read_v2(tcp: &mut Socket, buf: &mut [u8; V1_MAX]) -> Result<Header, ProxyHeaderError> {
    tcp.read_exact(&mut buf[8..16]).await.map_err(io_error)?;
    let fixed: [u8; 16] = buf[..16].try_into().unwrap_or([0; 16]);
    let length = v2_length(&fixed).map_err(ProxyHeaderError::Malformed)?;
    // The addresses (36 bytes at most for IPv6; AF_UNIX's 216 are not kept), then TLVs,
    // which are skipped.
    let kept = length.min(36);
    let mut addresses = [0u8; 36];
    tcp.read_exact(&mut addresses[..kept])
        .await
        .map_err(io_error)?;
    let mut left = length - kept;
    while left > 0 {
        let chunk = left.min(buf.len());
        tcp.read_exact(&mut buf[..chunk]).await.map_err(io_error)?;
        left -= chunk;
    }
    parse_v2(&fixed, &addresses[..kept]).map_err(ProxyHeaderError::Malformed)
}

/// The length of what follows a v2 fixed part, once its signature and version are checked.
pub fn v2_length(fixed: &[u8; 16]) -> Result<usize, &'static str> {
    if fixed[..12] != V2_SIGNATURE {
        return Err("bad v2 signature");
    }
    if fixed[12] >> 4 != 2 {
        return Err("unknown v2 version");
    }
    Ok(usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

/// A v2 header from its fixed part and the start of its address block (up to 36 bytes).
pub fn parse_v2(fixed: &[u8; 16], addresses: &[u8]) -> Result<Header, &'static str> {
    v2_length(fixed)?;
    match fixed[12] & 0x0f {
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err("unknown v2 command"),
    }
    let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
    match fixed[13] {
        // TCP or UDP over IPv4: 4 + 4 + 2 + 2 bytes.
        0x11 | 0x12 => {
            if addresses.len() < 12 {
                return Err("v2 IPv4 address block too short");
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    addresses[at],
                    addresses[at + 1],
                    addresses[at + 2],
                    addresses[at + 3],
                ))
            };
            Ok(Header::Proxied {
                client: SocketAddr::new(ip(0), port(8)),
                local: SocketAddr::new(ip(4), port(10)),
            })
        }
        // Over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 | 0x22 => {
            if addresses.len() < 36 {
                return Err("v2 IPv6 address block too short");
            }
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addresses[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(Header::Proxied {
                client: SocketAddr::new(ip(0), port(32)),
                local: SocketAddr::new(ip(16), port(34)),
            })
        }
        // AF_UNSPEC, AF_UNIX: no IP addresses to take (section 2.2: the receiver uses the
        // socket's).
        0x00 | 0x31 | 0x32 => Ok(Header::Local),
        _ => Err("unknown v2 address family"),
    }
}

/// A v1 line, CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<Header, &'static str> {
    let line = line.strip_suffix(b"\r\n").ok_or("v1 line without CRLF")?;
    let line = std::str::from_utf8(line).map_err(|_| "v1 line is not text")?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err("v1 line does not start with PROXY");
    }
    let v6 = match fields.next() {
        Some("TCP4") => false,
        Some("TCP6") => true,
        // Section 2.1: whatever follows UNKNOWN is ignored.
        Some("UNKNOWN") => return Ok(Header::Local),
        _ => return Err("unknown v1 protocol"),
    };
    let mut next = || fields.next().ok_or("v1 line has too few fields");
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err("v1 line has too many fields");
    }
    let ip = |s: &str| -> Result<IpAddr, &'static str> {
        if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        }
        .map_err(|_| "v1 address does not match its protocol")
    };
    let port = |s: &str| -> Result<u16, &'static str> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("v1 port is not a number");
        }
        s.parse().map_err(|_| "v1 port out of range")
    };
    Ok(Header::Proxied {
        client: SocketAddr::new(ip(src)?, port(sport)?),
        local: SocketAddr::new(ip(dst)?, port(dport)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::proxy_header::{v1, v2};

    fn addrs() -> [(SocketAddr, SocketAddr); 3] {
        [
            (
                "192.0.2.7:40000".parse().unwrap(),
                "10.0.0.1:443".parse().unwrap(),
            ),
            (
                "[2001:db8::7]:1".parse().unwrap(),
                "[::1]:65535".parse().unwrap(),
            ),
            (
                "203.0.113.9:5".parse().unwrap(),
                "[2001:db8::1]:80".parse().unwrap(),
            ),
        ]
    }

    fn mapped(a: SocketAddr) -> SocketAddr {
        match a.ip() {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
            _ => a,
        }
    }

    #[test]
    fn what_the_gateway_writes_it_reads_back() {
        for (client, local) in addrs() {
            let want = if client.is_ipv4() == local.is_ipv4() {
                Header::Proxied { client, local }
            } else {
                Header::Proxied {
                    client: mapped(client),
                    local: mapped(local),
                }
            };
            assert_eq!(parse_v1(v1(client, local).as_bytes()), Ok(want));
            let e = v2(client, local);
            let b = e.as_bytes();
            let fixed: [u8; 16] = b[..16].try_into().unwrap();
            assert_eq!(v2_length(&fixed), Ok(b.len() - 16));
            assert_eq!(parse_v2(&fixed, &b[16..]), Ok(want));
        }
    }

    #[test]
    fn v1_special_and_bad_lines() {
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(Header::Local));
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Ok(Header::Local)
        );
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn every_prefix_of_a_v1_line_is_refused() {
        let line = v1(addrs()[1].0, addrs()[1].1);
        let b = line.as_bytes();
        for cut in 0..b.len() {
            assert!(parse_v1(&b[..cut]).is_err(), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn v2_local_unspec_unix_and_bad_fixed_parts() {
        let (client, local) = addrs()[0];
        let e = v2(client, local);
        let b = e.as_bytes();
        let mut fixed: [u8; 16] = b[..16].try_into().unwrap();
        fixed[12] = 0x20;
        assert_eq!(parse_v2(&fixed, &b[16..]), Ok(Header::Local), "LOCAL");
        fixed[12] = 0x21;
        for family in [0x00, 0x31, 0x32] {
            fixed[13] = family;
            assert_eq!(parse_v2(&fixed, &[]), Ok(Header::Local));
        }
        fixed[13] = 0x13;
        assert!(parse_v2(&fixed, &b[16..]).is_err());
        fixed[13] = 0x11;
        assert!(parse_v2(&fixed, &b[16..27]).is_err(), "short address block");
        fixed[12] = 0x22;
        assert!(parse_v2(&fixed, &b[16..]).is_err(), "command 2");
        fixed[12] = 0x11;
        assert!(v2_length(&fixed).is_err(), "version 1 in a v2 header");
        fixed[12] = 0x21;
        fixed[3] = b'x';
        assert!(v2_length(&fixed).is_err(), "signature");
    }
}

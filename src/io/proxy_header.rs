//! PROXY protocol headers as the gateway writes them toward servers
//! (<https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>): the client's address
//! and the address the client reached, as the first bytes of a backend connection. Built in
//! a fixed buffer on the stack; the listener side's parser is `crate::proxy_header`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// The twelve bytes every v2 header starts with (section 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 line (section 2.1), CRLF included.
pub const V1_MAX: usize = 107;

/// One encoded header: at most 107 bytes (v1) or 52 (v2 with IPv6 addresses).
pub struct Encoded {
    buf: [u8; V1_MAX],
    len: usize,
}

impl Encoded {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Both addresses in one family, as both versions require: an IPv4 address beside an IPv6
/// one is written IPv4-mapped.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        (v6(client), v6(local))
    }
}

/// `PROXY TCP4 <client> <local> <client port> <local port>\r\n` (section 2.1).
pub fn v1(client: SocketAddr, local: SocketAddr) -> Encoded {
    let (client, local) = same_family(client, local);
    let mut out = Encoded {
        buf: [0; V1_MAX],
        len: 0,
    };
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let mut cursor = &mut out.buf[..];
    // The longest line (two full IPv6 addresses, two 5-digit ports) is 104 bytes, so the
    // write always fits.
    let _ = write!(
        cursor,
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    );
    let left = cursor.len();
    out.len = V1_MAX - left;
    out
}

/// For a client with no address (a Unix socket's, without a PROXY header of its own):
/// `PROXY UNKNOWN\r\n` (section 2.1), or in v2 the PROXY command with family `AF_UNSPEC`
/// and no addresses (section 2.2); either way the server uses the connection's own endpoints.
pub fn unknown(v2: bool) -> Encoded {
    let mut out = Encoded {
        buf: [0; V1_MAX],
        len: 0,
    };
    if v2 {
        out.buf[..12].copy_from_slice(&V2_SIGNATURE);
        out.buf[12] = 0x21;
        // buf[13] (family and transport) and buf[14..16] (length) stay 0.
        out.len = 16;
    } else {
        let line = b"PROXY UNKNOWN\r\n";
        out.buf[..line.len()].copy_from_slice(line);
        out.len = line.len();
    }
    out
}

/// The binary form (section 2.2): version 2, command PROXY, TCP over IPv4 or IPv6, no TLVs.
pub fn v2(client: SocketAddr, local: SocketAddr) -> Encoded {
    let (client, local) = same_family(client, local);
    let mut out = Encoded {
        buf: [0; V1_MAX],
        len: 0,
    };
    out.buf[..12].copy_from_slice(&V2_SIGNATURE);
    out.buf[12] = 0x21;
    let mut at = 16;
    let mut put = |bytes: &[u8]| {
        out.buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            put(&c.octets());
            put(&l.octets());
        }
        (c, l) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                IpAddr::V6(ip) => ip.octets(),
            };
            put(&v6(c));
            put(&v6(l));
        }
    }
    put(&client.port().to_be_bytes());
    put(&local.port().to_be_bytes());
    out.buf[13] = if client.is_ipv4() { 0x11 } else { 0x21 };
    let length = (at - 16) as u16;
    out.buf[14..16].copy_from_slice(&length.to_be_bytes());
    out.len = at;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_client() {
        assert_eq!(unknown(false).as_bytes(), b"PROXY UNKNOWN\r\n");
        let v2 = unknown(true);
        assert_eq!(&v2.as_bytes()[..12], &V2_SIGNATURE);
        assert_eq!(&v2.as_bytes()[12..], &[0x21, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn v1_lines() {
        let c: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let l: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(
            v1(c, l).as_bytes(),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n"
        );
        let c6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(
            v1(c6, l).as_bytes(),
            b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 5 443\r\n"
        );
        let max: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        assert_eq!(v1(max, max).as_bytes().len(), 104);
        assert!(v1(max, max).as_bytes().ends_with(b"\r\n"));
    }

    #[test]
    fn v2_ipv4() {
        let c: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let l: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let e = v2(c, l);
        let b = e.as_bytes();
        assert_eq!(b.len(), 28);
        assert_eq!(&b[..12], &V2_SIGNATURE);
        assert_eq!(&b[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&b[16..20], &[192, 0, 2, 7]);
        assert_eq!(&b[20..24], &[10, 0, 0, 1]);
        assert_eq!(&b[24..28], &[0x9c, 0x40, 0x01, 0xbb]);
        let c6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(v2(c6, l).as_bytes().len(), 52);
    }
}

//! A client certificate's subject as an RFC 4514 string, the form nginx's
//! `$ssl_client_s_dn` and OpenSSL's `-nameopt RFC2253` print: the last RDN first, RDNs joined
//! by `,`, the attributes of a multi-valued RDN by `+`. Run once per connection, after the
//! handshake has verified the certificate; the result goes into a request header, so it is
//! kept to printable ASCII (anything else is escaped as `\XX` of its UTF-8 bytes, which
//! RFC 4514 §2.4 allows for any character).

use std::fmt::Write as _;

use x509_parser::asn1_rs::{Tag, ToDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

/// Short names for attribute types: RFC 4514 §3's table, plus the three registered LDAP
/// names OpenSSL prints under the same spelling. Others are written as a dotted OID with
/// the value's BER in hex, as §2.4 asks.
const SHORT_NAMES: [(&str, &str); 12] = [
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "STREET"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.12", "title"),
];

/// The subject of a DER certificate, or `None` if it does not parse (it was verified, so
/// only a certificate webpki accepts and x509-parser does not would get here).
pub fn subject_rfc4514(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut out = String::with_capacity(cert.subject().as_raw().len());
    let rdns: Vec<_> = cert.subject().iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            attribute(&mut out, attr)?;
        }
    }
    Some(out)
}

fn attribute(out: &mut String, attr: &AttributeTypeAndValue<'_>) -> Option<()> {
    let oid = attr.attr_type().to_id_string();
    let short = SHORT_NAMES
        .iter()
        .find(|(dotted, _)| *dotted == oid)
        .map(|(_, name)| *name);
    let value = attr.attr_value();
    let text = match short.map(|_| value.tag()) {
        Some(Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString) => {
            std::str::from_utf8(value.data).ok().map(str::to_owned)
        }
        // Teletex as Latin-1, as OpenSSL reads it.
        Some(Tag::TeletexString) => Some(value.data.iter().map(|&b| char::from(b)).collect()),
        Some(Tag::BmpString) => {
            let units = value
                .data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Some(Tag::UniversalString) => value
            .data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<String>>(),
        _ => None,
    };
    match (short, text) {
        (Some(name), Some(text)) => {
            out.push_str(name);
            out.push('=');
            escape(out, &text);
        }
        (name, _) => {
            out.push_str(name.unwrap_or(&oid));
            out.push_str("=#");
            for b in value.to_der_vec().ok()? {
                let _ = write!(out, "{b:02X}");
            }
        }
    }
    Some(())
}

/// RFC 4514 §2.4: `"+,;<>\` escaped with a backslash, as are a leading space or `#` and a
/// trailing space; NUL, control characters and non-ASCII as `\XX` per UTF-8 byte.
fn escape(out: &mut String, value: &str) {
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '#' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            ' '..='~' => out.push(c),
            _ => {
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject_of(build: impl FnOnce(&mut rcgen::DistinguishedName)) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        build(&mut params.distinguished_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        subject_rfc4514(cert.der()).unwrap()
    }

    #[test]
    fn rdns_are_written_last_first_with_short_names() {
        let s = subject_of(|dn| {
            dn.push(rcgen::DnType::CountryName, "DE");
            dn.push(rcgen::DnType::OrganizationName, "Example GmbH");
            dn.push(rcgen::DnType::OrganizationalUnitName, "Ops");
            dn.push(rcgen::DnType::CommonName, "client-1");
        });
        assert_eq!(s, "CN=client-1,OU=Ops,O=Example GmbH,C=DE");
    }

    #[test]
    fn special_characters_are_escaped() {
        let s = subject_of(|dn| {
            dn.push(rcgen::DnType::OrganizationName, "#a, b+c; \"d\" <e> \\ ");
            dn.push(rcgen::DnType::CommonName, " x\r\nSet-Cookie: y=1 é");
        });
        assert_eq!(
            s,
            "CN=\\ x\\0D\\0ASet-Cookie: y=1 \\C3\\A9,O=\\#a\\, b\\+c\\; \\\"d\\\" \\<e\\> \\\\\\ "
        );
        assert!(s.bytes().all(|b| (b' '..=b'~').contains(&b)));
    }

    #[test]
    fn unknown_attribute_types_are_dotted_with_hex_ber() {
        let s = subject_of(|dn| {
            dn.push(
                rcgen::DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 99999, 1]),
                rcgen::DnValue::Utf8String("ab".into()),
            );
            dn.push(rcgen::DnType::CommonName, "c");
        });
        assert_eq!(s, "CN=c,1.3.6.1.4.1.99999.1=#0C026162");
    }

    #[test]
    fn not_a_certificate_gives_none() {
        assert_eq!(subject_rfc4514(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(subject_rfc4514(b""), None);
    }
}

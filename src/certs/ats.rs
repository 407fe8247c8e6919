//! Why an Apple client would refuse a certificate. App Transport Security (ATS), on by
//! default in iOS and macOS apps, refuses a server certificate signed with SHA-1, a leaf key
//! under 2048 bits (RSA) or 256 bits (ECC), and a name the subjectAltName does not cover
//! (ATS ignores the CN). The protocol and cipher suite rules are met by [`super::provider`]
//! for every listener, so only the certificate is left to look at.
//!
//! Pure: DER in, reasons out; runs at config load, never per connection.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

/// SHA-1 signature algorithms: sha1WithRSAEncryption, ecdsa-with-SHA1, dsa-with-sha1 and
/// the obsolete OIW sha1WithRSA.
const SHA1_SIGNATURES: &[&str] = &[
    "1.2.840.113549.1.1.5",
    "1.2.840.10045.4.1",
    "1.2.840.10040.4.3",
    "1.3.14.3.2.29",
];

/// Every reason ATS would refuse `chain` (leaf first, as served) for the server `names`,
/// in a fixed order; empty when it would accept it. `names` are the configured server
/// names (lower-cased, exact or `*.example.com`); `None` skips the name rule, for a
/// default certificate that is served whatever name a client asks for.
pub fn refusals(chain: &[CertificateDer<'_>], names: Option<&[String]>) -> Vec<String> {
    let mut reasons = Vec::new();
    let Some(leaf_der) = chain.first() else {
        return reasons;
    };
    let leaf = match X509Certificate::from_der(leaf_der.as_ref()) {
        Ok((_, leaf)) => leaf,
        // rustls accepted it, so this is an extension the parser does not know; saying
        // nothing beats a warning about a parser's limits.
        Err(_) => return reasons,
    };
    for (i, der) in chain.iter().enumerate() {
        let parsed;
        let cert = if i == 0 {
            &leaf
        } else {
            match X509Certificate::from_der(der.as_ref()) {
                Ok((_, c)) => {
                    parsed = c;
                    &parsed
                }
                Err(_) => continue,
            }
        };
        // A self-signed root's own signature is never checked: trust in it comes from the
        // trust store, so SHA-1 there is harmless (and ATS does not object).
        if i > 0 && cert.subject() == cert.issuer() {
            continue;
        }
        let oid = cert.signature_algorithm.algorithm.to_id_string();
        if SHA1_SIGNATURES.contains(&oid.as_str()) {
            let which = if i == 0 {
                "the certificate".to_owned()
            } else {
                format!("chain certificate {} ({})", i + 1, cert.subject())
            };
            reasons.push(format!(
                "{which} is signed with SHA-1; reissue it with SHA-256 or stronger"
            ));
        }
    }
    match leaf.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = bit_length(rsa.modulus);
            if bits < 2048 {
                reasons.push(format!(
                    "its RSA key has {bits} bits; ATS needs at least 2048"
                ));
            }
        }
        Ok(PublicKey::EC(point)) => {
            let bits = point.key_size();
            if bits != 0 && bits < 256 {
                reasons.push(format!(
                    "its EC key has {bits} bits; ATS needs at least 256"
                ));
            }
        }
        _ => {}
    }
    if let Some(names) = names {
        let sans = dns_names(&leaf);
        for name in names {
            if !sans.iter().any(|san| covers(san, name)) {
                let listed = if sans.is_empty() {
                    "it has no subjectAltName DNS names".to_owned()
                } else {
                    format!("its subjectAltName DNS names are {}", sans.join(", "))
                };
                reasons.push(format!(
                    "`{name}` is not in its subjectAltName ({listed}; the CN does not count)"
                ));
            }
        }
    }
    reasons
}

/// The subjectAltName DNS entries, lower-cased.
fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Whether the subjectAltName entry `san` covers the configured server name `name`. A
/// wildcard covers exactly one whole leftmost label (RFC 6125 §6.4.3); a configured
/// wildcard name is covered only by the same wildcard, since it stands for every name
/// one label under it.
fn covers(san: &str, name: &str) -> bool {
    let san = san.trim_end_matches('.');
    let name = name.trim_end_matches('.');
    if san.eq_ignore_ascii_case(name) {
        return true;
    }
    let Some(parent) = san.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => {
            !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(parent)
        }
        None => false,
    }
}

/// The bit length of a big-endian unsigned integer (the DER modulus may carry a leading 0).
fn bit_length(bytes: &[u8]) -> usize {
    let bytes = match bytes.iter().position(|&b| b != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    bytes.len() * 8 - bytes[0].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    fn fixture(name: &str) -> Vec<CertificateDer<'static>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ats")
            .join(name);
        CertificateDer::pem_file_iter(&path)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
    }

    /// A self-signed ECDSA P-256, SHA-256 certificate with these SAN DNS names.
    fn p256(sans: &[&str]) -> Vec<CertificateDer<'static>> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        vec![params.self_signed(&key).unwrap().der().clone()]
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ecdsa_p256_with_matching_names_passes() {
        let chain = p256(&["chat.example.com", "*.games.example.com"]);
        let wanted = names(&[
            "chat.example.com",
            "eu.games.example.com",
            "*.games.example.com",
        ]);
        assert_eq!(refusals(&chain, Some(&wanted)), Vec::<String>::new());
        assert_eq!(refusals(&chain, None), Vec::<String>::new());
    }

    #[test]
    fn a_name_the_san_does_not_cover_is_a_reason() {
        let chain = p256(&["chat.example.com"]);
        let reasons = refusals(
            &chain,
            Some(&names(&["chat.example.com", "api.example.com"])),
        );
        assert_eq!(
            reasons,
            vec![
                "`api.example.com` is not in its subjectAltName (its subjectAltName DNS names are chat.example.com; the CN does not count)"
            ]
        );
        // The default certificate has no configured name: no name rule.
        assert!(refusals(&chain, None).is_empty());
    }

    #[test]
    fn a_wildcard_covers_one_label_not_two_nor_the_parent() {
        let chain = p256(&["*.example.com"]);
        assert!(refusals(&chain, Some(&names(&["a.example.com"]))).is_empty());
        assert!(refusals(&chain, Some(&names(&["*.example.com"]))).is_empty());
        let reasons = refusals(
            &chain,
            Some(&names(&[
                "a.b.example.com",
                "example.com",
                "*.b.example.com",
            ])),
        );
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].starts_with("`a.b.example.com` is not in"));
        assert!(reasons[1].starts_with("`example.com` is not in"));
        assert!(reasons[2].starts_with("`*.b.example.com` is not in"));
    }

    #[test]
    fn covers_follows_rfc_6125() {
        assert!(covers("chat.example.com", "CHAT.example.com"));
        assert!(covers("*.example.com", "x.example.com"));
        assert!(!covers("*.example.com", "x.y.example.com"));
        assert!(!covers("*.example.com", ".example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("chat.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "x.example.org"));
    }

    /// tests/fixtures/ats/rsa1024.crt: `openssl req -x509 -newkey rsa:1024 -sha256` with
    /// SAN localhost. (rcgen generates RSA keys only with aws-lc-rs.)
    #[test]
    fn rsa_1024_is_a_reason() {
        let chain = fixture("rsa1024.crt");
        assert_eq!(
            refusals(&chain, Some(&names(&["localhost"]))),
            vec!["its RSA key has 1024 bits; ATS needs at least 2048"]
        );
    }

    /// tests/fixtures/ats/sha1.crt: a P-256 leaf for localhost signed `-sha1` by a P-256
    /// CA whose self-signed certificate follows it (SHA-256).
    #[test]
    fn a_sha1_signed_leaf_is_a_reason() {
        let chain = fixture("sha1.crt");
        assert_eq!(chain.len(), 2);
        assert_eq!(
            refusals(&chain, Some(&names(&["localhost"]))),
            vec!["the certificate is signed with SHA-1; reissue it with SHA-256 or stronger"]
        );
    }

    /// tests/fixtures/ats/sha1-root.crt: a self-signed P-256 certificate signed `-sha1`.
    #[test]
    fn sha1_is_a_reason_in_the_chain_but_not_on_a_self_signed_root() {
        let mut chain = p256(&["localhost"]);
        chain.extend(fixture("sha1.crt").into_iter().take(1));
        chain.extend(fixture("sha1-root.crt"));
        assert_eq!(
            refusals(&chain, Some(&names(&["localhost"]))),
            vec![
                "chain certificate 2 (CN=localhost) is signed with SHA-1; reissue it with SHA-256 or stronger"
            ]
        );
        // As the leaf, a self-signed SHA-1 certificate is what the client checks.
        assert_eq!(refusals(&fixture("sha1-root.crt"), None).len(), 1);
    }

    #[test]
    fn bit_length_ignores_leading_zeros() {
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x01, 0]), 9);
        assert_eq!(bit_length(&[0, 0]), 0);
    }
}

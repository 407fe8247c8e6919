//! TLS termination: the per-listener rustls `ServerConfig` with an SNI resolver. The
//! stream over rustls is `io::tls`; the certificates and the crypto provider come from
//! `certs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::certs;
use crate::config::model::{ClientAuthMode, TlsConfig};

mod subject;

pub use subject::subject_rfc4514;

/// Picks the certificate from the ClientHello's server name: an exact name first, then a
/// one-label wildcard (`*.example.com` covers `a.example.com`, not `example.com` nor
/// `a.b.example.com`, as RFC 6125 §6.4.3 has it), then the listener's default.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(tls: &TlsConfig) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for entry in &tls.sni {
            for name in &entry.names {
                let name = name.to_ascii_lowercase();
                let target = match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()),
                    None => exact.entry(name),
                };
                // First entry in file order wins, like routes.
                target.or_insert_with(|| entry.pair.certified.clone());
            }
        }
        SniResolver {
            exact,
            wildcard,
            default: tls.default.certified.clone(),
        }
    }

    pub fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return key.clone();
        }
        self.default.clone()
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        crate::io::tls::note_sni(hello.server_name());
        Some(self.pick(hello.server_name()))
    }
}

/// Builds a listener's rustls config. `http` adds ALPN `h2` and `http/1.1` (listeners with HTTP or
/// WebSocket routes); a TCP-only listener offers no ALPN, so clients of other protocols
/// are not refused for offering theirs.
pub fn server_config(
    tls: &TlsConfig,
    http: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = certs::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    // One verifier for the listener, whichever certificate SNI picks: every name is served
    // under the same client-auth rule, so the session cache and ticketer below are shared
    // safely (rustls' `ServerConfig` docs warn against sharing them across rules).
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(auth.bundle.roots.clone(), provider);
            let verifier = match auth.mode {
                ClientAuthMode::Require => verifier,
                ClientAuthMode::Request => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| rustls::Error::General(format!("client certificate CAs: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(tls)));
    if http {
        // `h2` first: a client offering both takes the server's order (RFC 7301 §3.2 leaves
        // the choice to the server; rustls picks by this list), and browsers expect h2.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    // Resumption makes a returning client's handshake an abbreviated one: stateless tickets
    // (keys rotated by the ticketer) for TLS 1.3 and 1.2, plus a session-ID cache for TLS 1.2
    // clients that do not take tickets.
    config.ticketer = certs::ticketer()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    // `send_tls13_tickets` stays at rustls's 2: a client uses each ticket once, so two let it
    // resume two connections opened together. The second costs about 2% of a full handshake's
    // CPU by profile, a difference the handshake benchmark could not resolve.
    Ok(Arc::new(config))
}

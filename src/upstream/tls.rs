//! Backend TLS: the client configurations a backend's connections and health checks use,
//! built once per config load from the CA bundle and client certificate `config` loaded,
//! never per connection. The handshake itself is `io::tls`'s client side, which lends its
//! record buffers from the same pool as the client side's, so an idle backend connection
//! holds no TLS buffer either.

use std::io;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::config::{BackendTls, BackendVerify, ServerConfig};
use crate::io::Socket;
use crate::io::tls::BackendTls as TlsStream;

/// ALPN offered for HTTP and WebSocket traffic (and HTTP checks): the backend side speaks
/// HTTP/1.1 only, and a server that picks a protocol by ALPN must not pick h2.
const HTTP_ALPN: &[u8] = b"http/1.1";

/// How one backend's servers are spoken to over TLS.
#[derive(Debug)]
pub(super) struct Connector {
    /// For HTTP and WebSocket traffic: ALPN `http/1.1`.
    http: Arc<ClientConfig>,
    /// For TCP routes: no ALPN, the bytes are the client's business. Shares its session
    /// cache with `http`.
    raw: Arc<ClientConfig>,
    /// The name each server is asked for and verified against, in config order; `None`
    /// only for an address `config` would have refused.
    names: Box<[Option<ServerName<'static>>]>,
}

impl Connector {
    pub(super) fn new(tls: &BackendTls, servers: &[ServerConfig]) -> Result<Self, rustls::Error> {
        let provider = crate::certs::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &tls.verify {
            BackendVerify::Ca { bundle, .. } => {
                builder.with_root_certificates(bundle.roots.clone())
            }
            BackendVerify::Off => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        };
        let raw = match &tls.client_cert {
            Some(cert) => {
                builder.with_client_cert_resolver(Arc::new(Present(cert.0.certified.clone())))
            }
            None => builder.with_no_client_auth(),
        };
        let mut http = raw.clone();
        http.alpn_protocols = vec![HTTP_ALPN.to_vec()];
        Ok(Connector {
            http: Arc::new(http),
            raw: Arc::new(raw),
            names: servers
                .iter()
                .map(|s| tls.server_name(&s.address))
                .collect(),
        })
    }

    /// The TLS handshake on a fresh connection to server `index`, as a client offering
    /// ALPN `http/1.1` when `http`.
    pub(super) async fn handshake(
        &self,
        stream: Socket,
        index: usize,
        http: bool,
    ) -> io::Result<TlsStream> {
        let Some(name) = self.names.get(index).cloned().flatten() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the server's address gives no name to verify",
            ));
        };
        let config = if http { &self.http } else { &self.raw };
        crate::io::tls::connect(stream, config.clone(), name).await
    }
}

/// `verify = false`: any certificate is taken, but the handshake's signatures are still
/// checked, so the session is at least bound to the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The gateway's client certificate, presented to any server that asks for one.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

//! Certificates and keys: PEM loading, the key/certificate match check, and the crypto
//! provider every TLS configuration is built with. Read by config validation and by the
//! TLS stage; runs nothing.
//!
//! Only TLS 1.2 and 1.3 with forward-secret AEAD suites are offered (what Apple's App
//! Transport Security requires of servers): every suite rustls implements is ECDHE + AEAD,
//! and the list is spelled out below so a provider change cannot widen it silently.

pub mod ats;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertLoadError {
    #[error("cannot read certificate file {}", path.display())]
    CertRead {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no PEM certificate found in {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read private key file {}", path.display())]
    KeyRead {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("private key in {} is not a supported type (RSA, ECDSA P-256/P-384, Ed25519)", path.display())]
    KeyUnsupported {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// Why a CA bundle (a backend's `ca`, a listener's `client_auth` CA) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaLoadError {
    #[error("cannot read CA bundle {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no PEM certificate found in CA bundle {}", path.display())]
    Empty { path: PathBuf },
    #[error("certificate {index} of CA bundle {} cannot be a trust anchor", path.display())]
    Invalid {
        path: PathBuf,
        /// 1-based, in file order.
        index: usize,
        #[source]
        source: rustls::Error,
    },
}

/// CA certificates read from one PEM file: what a backend's servers or a listener's
/// client certificates are verified against.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// What the file held, to tell a changed bundle from the same one on reload.
    pub der: Arc<[CertificateDer<'static>]>,
    pub roots: Arc<rustls::RootCertStore>,
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for CaBundle {}

/// Reads a PEM bundle of CA certificates; each one must be usable as a trust anchor.
pub fn load_ca_bundle(path: &Path) -> Result<CaBundle, CaLoadError> {
    let der = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| CaLoadError::Read {
            path: path.to_owned(),
            source,
        })?;
    if der.is_empty() {
        return Err(CaLoadError::Empty {
            path: path.to_owned(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in der.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|source| CaLoadError::Invalid {
                path: path.to_owned(),
                index: i + 1,
                source,
            })?;
    }
    Ok(CaBundle {
        der: der.into(),
        roots: Arc::new(roots),
    })
}

// The crypto backends, chosen at build time by cargo features:
// - `ring` alone: ring for everything;
// - `aws-lc-rs` alone: aws-lc-rs for everything;
// - both: ring for everything but the key exchange, which aws-lc-rs does. Its X25519 takes
//   about half of ring's time, while ring's HMAC/HKDF (the TLS 1.3 key schedule), AEAD and
//   ECDSA are as fast as or faster than aws-lc-rs's through rustls.
// `backend` provides the cipher suites, signing keys, randomness and ticketer.
#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
use rustls::crypto::aws_lc_rs as backend;
#[cfg(feature = "ring")]
use rustls::crypto::ring as backend;
#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("sockgate needs a TLS crypto provider: enable the `ring` or `aws-lc-rs` feature");

/// The crypto library or libraries built in, as `--version` shows them.
pub const BACKEND: &str = if cfg!(all(feature = "ring", feature = "aws-lc-rs")) {
    "ring, key exchange by aws-lc-rs"
} else if cfg!(feature = "ring") {
    "ring"
} else {
    "aws-lc-rs"
};

/// The crypto provider every listener uses: the backend's defaults (signature algorithms,
/// randomness, key-exchange groups) with the cipher suites spelled out.
///
/// Key exchange follows the client's order among the groups offered here. ring has X25519,
/// P-256 and P-384. aws-lc-rs adds the hybrid X25519MLKEM768, which current browsers list
/// first, so with it they get a post-quantum key exchange (about 20 µs more server CPU per
/// handshake than X25519, and a ServerHello 1.1 KB larger).
pub fn provider() -> Arc<CryptoProvider> {
    use backend::cipher_suite as cs;
    let mut provider = backend::default_provider();
    #[cfg(all(feature = "ring", feature = "aws-lc-rs"))]
    {
        provider.kx_groups = rustls::crypto::aws_lc_rs::default_provider().kx_groups;
    }
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Reads a PEM certificate chain and a PEM private key and checks that they belong together.
pub fn load_cert_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertLoadError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| CertLoadError::CertRead {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertLoadError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|source| CertLoadError::KeyRead {
        path: key.to_owned(),
        source,
    })?;
    certified_key(chain, der, cert, key)
}

/// Same as [`load_cert_pair`] for PEM text already in memory (demo and tests).
pub fn cert_pair_from_pem(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>, CertLoadError> {
    let mem = PathBuf::from("<memory>");
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertLoadError::CertRead {
            path: mem.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertLoadError::NoCertificate { path: mem });
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| {
        CertLoadError::KeyRead {
            path: mem.clone(),
            source,
        }
    })?;
    certified_key(chain, der, &mem, &mem)
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    der: PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, CertLoadError> {
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|source| CertLoadError::KeyUnsupported {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err(CertLoadError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// The session-ticket encrypter of the crypto backend, its keys rotated by rustls.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    backend::Ticketer::new()
}

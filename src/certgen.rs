//! Development certificates: `sockgate cert dev`, the demo's self-signed certificate, and the
//! certificates tests generate. Never for production: keys are written unencrypted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The names a dev server certificate covers.
pub const DEV_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    #[error("cannot generate certificate")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// PEM text of one certificate and its private key.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

/// A dev CA plus a server certificate it signed.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca: PemPair,
    pub server: PemPair,
}

/// A self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[&str]) -> Result<PemPair, CertGenError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)?;
    Ok(PemPair {
        cert: generated.cert.pem(),
        key: generated.signing_key.serialize_pem(),
    })
}

/// A CA and a server certificate for `names`, signed by it.
pub fn dev_pki(names: &[&str]) -> Result<DevPki, CertGenError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sockgate dev CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone())?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(DevPki {
        ca: PemPair {
            cert: ca.pem(),
            key: ca_key_pem,
        },
        server: PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
    })
}

/// Writes `ca.crt`, `ca.key`, `server.crt`, `server.key` into `dir` (created if missing,
/// owner-only) and returns the paths written. Existing files are replaced.
pub fn write_dev_pki(dir: &Path) -> Result<Vec<PathBuf>, CertGenError> {
    let pki = dev_pki(DEV_NAMES)?;
    let files = [
        ("ca.crt", &pki.ca.cert),
        ("ca.key", &pki.ca.key),
        ("server.crt", &pki.server.cert),
        ("server.key", &pki.server.key),
    ];
    create_private_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, pem) in files {
        let path = dir.join(name);
        write_file(&path, pem)?;
        written.push(path);
    }
    Ok(written)
}

/// `mkdir -p` where the folders it creates are owner-only (0700); existing ones are left
/// as they are.
pub fn create_private_dir_all(dir: &Path) -> Result<(), CertGenError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| CertGenError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes PEM text, replacing the file if it exists (a symlink in its place is refused).
/// Key files (`.key`) are owner-only (0600) before their first byte is written.
pub fn write_file(path: &Path, pem: &str) -> Result<(), CertGenError> {
    write(path, pem, false)
}

/// Like [`write_file`], but the file must not exist yet: for the fresh private folders
/// the demo and `proxy --tls-self-signed` write into.
pub fn write_new_file(path: &Path, pem: &str) -> Result<(), CertGenError> {
    write(path, pem, true)
}

fn write(path: &Path, text: &str, new: bool) -> Result<(), CertGenError> {
    use std::io::Write;
    let is_key = path.extension().is_some_and(|e| e == "key");
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(if is_key { 0o600 } else { 0o644 })
            .custom_flags(libc::O_NOFOLLOW);
    }
    let written = options.open(path).and_then(|mut file| {
        // `mode` only applies to a file this call creates: narrow one that was there.
        #[cfg(unix)]
        if is_key {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    written.map_err(|source| CertGenError::Write {
        path: path.to_owned(),
        source,
    })
}

//! Certificates changed on disk: rewritten in place, swapped the way Kubernetes updates a
//! Secret volume, replaced by a bad pair, and moved by a reload. New handshakes see the new
//! certificate; connections opened before keep theirs; no SIGHUP is sent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certgen::{self, DevPki};
use crate::support::*;

/// A watched change is in force one to two polls (1 s each) after the last write; this
/// leaves room for a loaded machine.
const WITHIN: Duration = Duration::from_secs(15);

fn config(echo: SocketAddr, cert: &str, key: &str, sni: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  [listener.tls]
  cert = "{cert}"
  key = "{key}"
{sni}
  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"

[[backend]]
name = "echo"
servers = ["{echo}"]
"#
    )
}

fn leaf(pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

fn write_pair(dir: &Path, cert: &str, key: &str, pki: &DevPki) {
    certgen::write_file(&dir.join(cert), &pki.server.cert).unwrap();
    certgen::write_file(&dir.join(key), &pki.server.key).unwrap();
}

/// The leaf certificate a new handshake with `sni` is served.
async fn served(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> CertificateDer<'static> {
    let tls = tls_connect(addr, client.clone(), sni).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Polls every 50 ms until a new handshake is served `expected`, for up to [`WITHIN`].
async fn until_served(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    sni: &str,
    expected: &CertificateDer<'static>,
) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while served(addr, client, sni).await != *expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate for {sni} was not served within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the admin endpoint until `sockgate_certificate_reloads_total{result}` is `n`.
async fn until_counted(admin: SocketAddr, result: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let m = Metrics::parse(&http_get(admin, "/metrics").await.1);
        let got = m.get("sockgate_certificate_reloads_total", &[("result", result)]);
        if got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate reloads {result}: {got}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn round_trip<S: AsyncReadExt + AsyncWriteExt + Unpin>(stream: &mut S, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut got = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, bytes);
}

#[tokio::test]
async fn a_pair_rewritten_in_place_is_served_to_new_handshakes_and_not_to_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    // Another CA: nothing but the leaf's DER tells the two apart to the test.
    let second = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    write_pair(dir.path(), "server.crt", "server.key", &first);
    let echo = tcp_echo().await;
    let config_path = dir.path().join("sockgate.toml");
    std::fs::write(&config_path, config(echo, "server.crt", "server.key", "")).unwrap();
    let mut gw = Binary::spawn(
        &["--config", &config_path.display().to_string()],
        tempfile::tempdir().unwrap(),
    );
    let ready = gw.ready().await;
    let edge: SocketAddr = ready["listeners"]["edge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admin: SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    let client = client_config(&[&first.ca.cert, &second.ca.cert], &[]);

    let mut before = tls_connect(edge, client.clone(), "localhost").await;
    let before_leaf = before.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(before_leaf, leaf(&first.server.cert));
    round_trip(&mut before, b"opened before the change").await;
    let inode = std::fs::metadata(dir.path().join("server.crt")).unwrap();

    // Written in place, as cert-manager's and certbot's copy hooks do: same inode.
    write_pair(dir.path(), "server.crt", "server.key", &second);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(dir.path().join("server.crt")).unwrap()
        ),
        std::os::unix::fs::MetadataExt::ino(&inode),
    );
    until_served(edge, &client, "localhost", &leaf(&second.server.cert)).await;

    // The connection opened before keeps its session and its bytes flow.
    round_trip(&mut before, b"still here after the change").await;
    assert_eq!(
        before.get_ref().1.peer_certificates().unwrap()[0],
        before_leaf
    );
    let m = Metrics::parse(&http_get(admin, "/metrics").await.1);
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "error")]),
        0.0
    );
    assert_eq!(
        m.get("sockgate_config_reloads_total", &[]),
        0.0,
        "no SIGHUP, no reload"
    );
    let expiry = m.get(
        "sockgate_certificate_expiry_seconds",
        &[("listener", "edge"), ("name", "default")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "notAfter {expiry} is in the future");
    assert!(
        gw.stderr()
            .contains("certificates changed on disk are in force for new TLS handshakes"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn a_kubernetes_secret_volume_swap_of_an_sni_certificate_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let default = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    write_pair(root, "server.crt", "server.key", &default);
    // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..2026_a (a timestamped
    // directory); an update writes a new directory and renames a new `..data` over the old.
    let mount = root.join("chat-tls");
    std::fs::create_dir(&mount).unwrap();
    let chat_a = certgen::dev_pki(&["chat.example.com"]).unwrap();
    let chat_b = certgen::dev_pki(&["chat.example.com"]).unwrap();
    std::fs::create_dir(mount.join("..2026_a")).unwrap();
    write_pair(&mount.join("..2026_a"), "tls.crt", "tls.key", &chat_a);
    std::os::unix::fs::symlink("..2026_a", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", mount.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", mount.join("tls.key")).unwrap();
    let sni = r#"
  [[listener.tls.sni]]
  names = ["chat.example.com"]
  cert = "chat-tls/tls.crt"
  key = "chat-tls/tls.key"
"#;
    let echo = tcp_echo().await;
    let gw = Gateway::start(root, &config(echo, "server.crt", "server.key", sni)).await;
    let client = client_config(&[&default.ca.cert, &chat_a.ca.cert, &chat_b.ca.cert], &[]);
    assert_eq!(
        served(gw.addr("edge"), &client, "chat.example.com").await,
        leaf(&chat_a.server.cert)
    );

    std::fs::create_dir(mount.join("..2026_b")).unwrap();
    write_pair(&mount.join("..2026_b"), "tls.crt", "tls.key", &chat_b);
    std::os::unix::fs::symlink("..2026_b", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_a")).unwrap();

    until_served(
        gw.addr("edge"),
        &client,
        "chat.example.com",
        &leaf(&chat_b.server.cert),
    )
    .await;
    // The default certificate did not move.
    assert_eq!(
        served(gw.addr("edge"), &client, "localhost").await,
        leaf(&default.server.cert)
    );
    until_counted(gw.admin(), "ok", 1.0).await;
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "error")]),
        0.0
    );
    assert!(
        m.get(
            "sockgate_certificate_expiry_seconds",
            &[("listener", "edge"), ("name", "chat.example.com")]
        ) > 0.0
    );
}

#[tokio::test]
async fn a_bad_pair_keeps_the_certificate_in_force_until_a_good_one_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let first = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    let second = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    write_pair(dir.path(), "server.crt", "server.key", &first);
    let echo = tcp_echo().await;
    let config_path = dir.path().join("sockgate.toml");
    std::fs::write(&config_path, config(echo, "server.crt", "server.key", "")).unwrap();
    let mut gw = Binary::spawn(
        &["--config", &config_path.display().to_string()],
        tempfile::tempdir().unwrap(),
    );
    let ready = gw.ready().await;
    let edge: SocketAddr = ready["listeners"]["edge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admin: SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    let client = client_config(&[&first.ca.cert, &second.ca.cert], &[]);
    let key_path = dir.path().join("server.key");
    let cert_path = dir.path().join("server.crt");

    // A key from another certificate.
    certgen::write_file(&key_path, &second.server.key).unwrap();
    until_counted(admin, "error", 1.0).await;
    assert_eq!(
        served(edge, &client, "localhost").await,
        leaf(&first.server.cert)
    );
    let log = gw.stderr();
    assert!(
        log.lines().any(|l| l.contains("cannot be used")
            && l.contains(&key_path.display().to_string())
            && l.contains("does not match")),
        "{log}"
    );

    // A half-written certificate: its PEM cut in the middle.
    let cut = &second.server.cert[..second.server.cert.len() / 2];
    certgen::write_file(&cert_path, cut).unwrap();
    until_counted(admin, "error", 2.0).await;
    assert_eq!(
        served(edge, &client, "localhost").await,
        leaf(&first.server.cert)
    );

    // Not retried while nothing changes: the error count holds over more than two polls.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = Metrics::parse(&http_get(admin, "/metrics").await.1);
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "error")]),
        2.0
    );
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "ok")]),
        0.0
    );

    // Renamed over the old file, as certbot and atomic writers do: a new inode.
    let tmp = dir.path().join("server.crt.tmp");
    certgen::write_file(&tmp, &second.server.cert).unwrap();
    std::fs::rename(&tmp, &cert_path).unwrap();
    until_served(edge, &client, "localhost", &leaf(&second.server.cert)).await;
    until_counted(admin, "ok", 1.0).await;
}

#[tokio::test]
async fn a_reload_moves_the_watch_to_the_new_paths_and_a_drain_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    let b = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    let c = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
    write_pair(dir.path(), "a.crt", "a.key", &a);
    write_pair(dir.path(), "b.crt", "b.key", &b);
    let echo = tcp_echo().await;
    let gw = Gateway::start(dir.path(), &config(echo, "a.crt", "a.key", "")).await;
    let client = client_config(&[&a.ca.cert, &b.ca.cert, &c.ca.cert], &[]);
    let edge = gw.addr("edge");
    assert_eq!(
        served(edge, &client, "localhost").await,
        leaf(&a.server.cert)
    );

    let config_path = dir.path().join("sockgate.toml");
    std::fs::write(&config_path, config(echo, "b.crt", "b.key", "")).unwrap();
    gw.handle
        .reload(sockgate::config::load(&config_path).unwrap())
        .await
        .unwrap();
    assert_eq!(
        served(edge, &client, "localhost").await,
        leaf(&b.server.cert)
    );

    // The old path changes first, then the new one. Were the old one still watched, it
    // would be read (and counted) no later than the new one.
    write_pair(dir.path(), "a.crt", "a.key", &c);
    write_pair(dir.path(), "b.crt", "b.key", &c);
    until_served(edge, &client, "localhost", &leaf(&c.server.cert)).await;
    until_counted(gw.admin(), "ok", 1.0).await;
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "error")]),
        0.0
    );
    assert_eq!(
        m.get("sockgate_config_reloads_total", &[("result", "ok")]),
        1.0
    );

    // A drain stops the watch with the listeners: a change now is not read. Checked on the
    // admin side, since the listener no longer accepts.
    gw.handle.drain();
    write_pair(dir.path(), "b.crt", "b.key", &a);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "ok")]),
        1.0
    );
}

//! The built binary as operators run it: `check`, `cert dev`, `proxy`, `demo`, and the
//! drain on SIGTERM.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn check(config: &std::path::Path) -> (i32, String, String) {
    let out = Binary::command()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_good_config_and_refuses_a_broken_one_with_line_and_column() {
    let pki = Pki::new();
    let good = pki.path().join("good.toml");
    std::fs::write(
        &good,
        r#"[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "server.crt", key = "server.key" }

  [[listener.route]]
  name = "chat"
  backend = "chat"

[[backend]]
name = "chat"
servers = ["127.0.0.1:9001"]
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = check(&good);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.ends_with(": ok (1 listener, 1 route, 1 backend)\n"),
        "{stdout}"
    );

    // Without --config: exit 2, as for an invalid config, with one line saying what is missing.
    let out = Binary::command().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sockgate: check needs --config FILE\n"
    );

    let broken = pki.path().join("broken.toml");
    std::fs::write(
        &broken,
        r#"[[listener]]
name = "edge"
listen = "127.0.0.1:8443"

  [[listener.route]]
  name = "chat"
  backend = "chatt"

[[backend]]
name = "chat"
servers = ["127.0.0.1:9001"]
"#,
    )
    .unwrap();
    let (code, _, stderr) = check(&broken);
    assert_eq!(code, 2);
    let expected_prefix = format!("{}:7:13:", broken.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&expected_prefix) && l.contains("chatt")),
        "expected an error at line 7, column 13:\n{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn check_reports_an_unknown_key_and_a_bad_duration_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[defaults]\nidle_timeout = \"forever\"\n\n[[listener]]\nname = \"a\"\nlistn = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(":6:1:"),
        "unknown key `listn` at 6:1:\n{stderr}"
    );
}

#[test]
fn cert_dev_writes_a_ca_and_a_server_pair_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Binary::command()
        .args(["cert", "dev", "--out"])
        .arg(dir.path().join("dev"))
        .output()
        .unwrap();
    assert!(out.status.success());
    for f in ["ca.crt", "ca.key", "server.crt", "server.key"] {
        let text = std::fs::read_to_string(dir.path().join("dev").join(f)).unwrap();
        assert!(text.starts_with("-----BEGIN"), "{f}");
    }
    sockgate::certs::load_cert_pair(
        &dir.path().join("dev/server.crt"),
        &dir.path().join("dev/server.key"),
    )
    .unwrap();
}

#[test]
fn check_warns_about_certificates_apple_clients_would_refuse_and_still_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Binary::command()
        .args(["cert", "dev", "--out"])
        .arg(dir.path().join("dev"))
        .output()
        .unwrap();
    assert!(out.status.success());
    // A P-256 leaf for localhost signed with SHA-1 by a test CA (openssl `-sha1`).
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ats");
    std::fs::create_dir(dir.path().join("old")).unwrap();
    for f in ["sha1.crt", "sha1.key"] {
        std::fs::copy(fixtures.join(f), dir.path().join("old").join(f)).unwrap();
    }
    let path = dir.path().join("ats.toml");
    std::fs::write(
        &path,
        r#"[[listener]]
name = "edge"
listen = "127.0.0.1:8443"

  [listener.tls]
  cert = "dev/server.crt"
  key = "dev/server.key"

  [[listener.tls.sni]]
  names = ["localhost"]
  cert = "dev/server.crt"
  key = "dev/server.key"

  [[listener.tls.sni]]
  names = ["localhost", "api.example.com"]
  cert = "old/sha1.crt"
  key = "old/sha1.key"

  [[listener.route]]
  name = "chat"
  backend = "chat"

[[backend]]
name = "chat"
servers = ["127.0.0.1:9001"]
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, 0, "warnings must not fail check:\n{stderr}");
    assert!(
        stdout.ends_with(": ok (1 listener, 1 route, 1 backend)\n"),
        "{stdout}"
    );
    let prefix = format!(
        "{}:16:10: warning: listener `edge` certificate old/sha1.crt: Apple clients (App Transport Security) would refuse it: ",
        path.display()
    );
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        warnings,
        [
            format!(
                "{prefix}the certificate is signed with SHA-1; reissue it with SHA-256 or stronger"
            ),
            format!(
                "{prefix}`api.example.com` is not in its subjectAltName (its subjectAltName DNS names are localhost; the CN does not count)"
            ),
        ],
        "only the SHA-1 certificate is warned about, never the dev one:\n{stderr}"
    );
}

#[tokio::test]
async fn sigterm_drains_lets_a_tcp_connection_finish_and_exits_zero() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
drain_timeout = "10s"
drain_spread = "1s"
close_timeout = "1s"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"

[[backend]]
name = "echo"
servers = ["{echo}"]
"#
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg], dir);
    let ready = gw.ready().await;
    let edge: std::net::SocketAddr = ready["listeners"]["edge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admin: std::net::SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    let mut tcp = TcpStream::connect(edge).await.unwrap();
    tcp.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    tcp.read_exact(&mut got).await.unwrap();

    gw.signal("TERM");
    eventually("readyz turns 503", || async {
        http_get(admin, "/readyz").await.0 == 503
    })
    .await;
    // New connections are refused once the listener stops accepting.
    eventually("listener closed", || async {
        TcpStream::connect(edge).await.is_err()
    })
    .await;
    // The established connection keeps working during the drain.
    tcp.write_all(b"during").await.unwrap();
    tcp.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"during");
    drop(tcp);

    let status = gw.exit_status(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
    assert!(gw.stderr().contains("drained"), "{}", gw.stderr());
}

#[tokio::test]
async fn second_signal_stops_at_once() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            "[defaults]\ndrain_timeout = \"60s\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n  [[listener.route]]\n  name = \"echo\"\n  protocol = \"tcp\"\n  backend = \"echo\"\n\n[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n"
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg], dir);
    let ready = gw.ready().await;
    let edge: std::net::SocketAddr = ready["listeners"]["edge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    tcp.write_all(b"hold").await.unwrap();
    let mut got = [0u8; 4];
    tcp.read_exact(&mut got).await.unwrap();

    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("INT");
    let status = gw.exit_status(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    let mut rest = Vec::new();
    let n = tcp.read_to_end(&mut rest).await.unwrap_or(0);
    assert_eq!(n, 0, "the held connection was closed");
}

#[tokio::test]
async fn start_failure_is_one_clear_line_and_nonzero() {
    let (_taken, addr) = listen().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"edge\"\nlisten = \"{addr}\"\n\n  [[listener.route]]\n  name = \"x\"\n  protocol = \"tcp\"\n  backend = \"x\"\n\n[[backend]]\nname = \"x\"\nservers = [\"127.0.0.1:1\"]\n"
        ),
    )
    .unwrap();
    let out = Binary::command()
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[tokio::test]
async fn proxy_quick_mode_with_a_self_signed_certificate() {
    let echo = tcp_echo().await;
    let (probe, listen_addr) = listen().await;
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let listen_arg = listen_addr.to_string();
    let to = echo.to_string();
    let mut gw = Binary::spawn(
        &[
            "proxy",
            "--listen",
            &listen_arg,
            "--to",
            &to,
            "--tls-self-signed",
        ],
        dir,
    );
    gw.ready().await;
    // The certificate is self-signed: trust it as its own root.
    let tcp = TcpStream::connect(listen_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(insecure_client())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    wr.write_all(b"quick").await.unwrap();
    let mut got = [0u8; 5];
    rd.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"quick");
    gw.signal("TERM");
    drop((rd, wr));
    assert_eq!(
        gw.exit_status(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn demo_serves_websocket_http_and_tcp_echo() {
    let (p1, listen_addr) = listen().await;
    let (p2, admin_addr) = listen().await;
    drop((p1, p2));
    let dir = tempfile::tempdir().unwrap();
    let (l, a) = (listen_addr.to_string(), admin_addr.to_string());
    let mut gw = Binary::spawn(&["demo", "--listen", &l, "--admin", &a], dir);
    gw.ready().await;

    let tcp = TcpStream::connect(listen_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(insecure_client())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/chat", tls)
        .await
        .unwrap();
    ws.send(Message::text("demo")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("demo"));

    let (status, metrics) = http_get(admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sockgate_connections_total{listener=\"demo\",protocol=\"websocket\"} 1"),
        "{metrics}"
    );
    gw.signal("INT");
    drop(ws);
    assert_eq!(
        gw.exit_status(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

/// Accepts any server certificate: only for the self-signed quick-mode and demo tests.
fn insecure_client() -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAny(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = sockgate::certs::provider();
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    )
}

/// LISTEN sockets on `port` in this network namespace (IPv4).
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X} ");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && format!("{} ", fields[1]).ends_with(&local) && fields[3] == "0A"
        })
        .count()
}

#[tokio::test]
async fn each_worker_accepts_on_its_own_socket() {
    let echo = tcp_echo().await;
    let (probe, listen_addr) = listen().await;
    drop(probe);
    let listen_arg = listen_addr.to_string();
    let to = echo.to_string();
    let mut gw = Binary::spawn(
        &[
            "proxy",
            "--listen",
            &listen_arg,
            "--to",
            &to,
            "--workers",
            "3",
        ],
        tempfile::tempdir().unwrap(),
    );
    gw.ready().await;
    // Three sockets bound to one address (SO_REUSEPORT), three named worker threads.
    assert_eq!(listening_sockets(listen_addr.port()), 3);
    let pid = gw.child.as_ref().unwrap().id();
    let mut workers: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("worker-"))
        .collect();
    workers.sort();
    assert_eq!(workers, ["worker-0", "worker-1", "worker-2"]);
    // Connections spread over the sockets by the kernel: every one is served.
    let clients = (0..24u8).map(|i| async move {
        let mut tcp = TcpStream::connect(listen_addr).await.unwrap();
        let msg = [i; 100];
        tcp.write_all(&msg).await.unwrap();
        let mut got = [0u8; 100];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    });
    futures_util::future::join_all(clients).await;
    gw.signal("TERM");
    assert_eq!(
        gw.exit_status(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

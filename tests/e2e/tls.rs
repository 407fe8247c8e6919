//! TLS termination: SNI certificate choice, ALPN, and bad clients that must cost nothing.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// [`sni_config`] without the SNI certificates: every client gets the default one.
fn default_cert_config(echo: std::net::SocketAddr, extra_defaults: &str) -> String {
    sni_config(echo, extra_defaults).replace(
        "  [[listener.tls.sni]]\n  names = [\"chat.example.com\", \"*.games.example.com\"]\n  cert = \"chat.crt\"\n  key = \"chat.key\"\n",
        "",
    )
}

fn sni_config(echo: std::net::SocketAddr, extra_defaults: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
{extra_defaults}

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  # The table form: an inline `tls = {{...}}` cannot be extended by [[listener.tls.sni]].
  [listener.tls]
  cert = "server.crt"
  key = "server.key"

  [[listener.tls.sni]]
  names = ["chat.example.com", "*.games.example.com"]
  cert = "chat.crt"
  key = "chat.key"

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

#[tokio::test]
async fn sni_picks_the_certificate_by_server_name() {
    let pki = Pki::new();
    let chat = crate::certgen::dev_pki(&["chat.example.com", "*.games.example.com"]).unwrap();
    crate::certgen::write_file(&pki.path().join("chat.crt"), &chat.server.cert).unwrap();
    crate::certgen::write_file(&pki.path().join("chat.key"), &chat.server.key).unwrap();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &sni_config(echo, "")).await;
    let client = client_config(&[&pki.pki.ca.cert, &chat.ca.cert], &[]);

    for (sni, expected) in [
        ("localhost", &pki.pki.server.cert),
        ("chat.example.com", &chat.server.cert),
        ("eu.games.example.com", &chat.server.cert),
    ] {
        // The handshake itself verifies the chain and the name against the SNI sent.
        let mut tls = tls_connect(gw.addr("edge"), client.clone(), sni).await;
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(presented, leaf(expected), "certificate for {sni}");
        tls.write_all(sni.as_bytes()).await.unwrap();
        let mut got = vec![0u8; sni.len()];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sni.as_bytes());
    }
}

#[tokio::test]
async fn tcp_only_listener_offers_no_alpn_and_only_tls12_and_13() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let config = default_cert_config(echo, "");
    let gw = Gateway::start(pki.path(), &config).await;
    let tls = tls_connect(
        gw.addr("edge"),
        client_config(&[&pki.pki.ca.cert], &[b"mqtt"]),
        "localhost",
    )
    .await;
    let session = tls.get_ref().1;
    assert_eq!(session.alpn_protocol(), None);
    assert!(matches!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    ));

    // TLS 1.2 only: still accepted, with an ECDHE AEAD suite.
    let mut tls12 = rustls::ClientConfig::builder_with_provider(sockgate::certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(leaf(&pki.pki.ca.cert)).unwrap();
            roots
        })
        .with_no_client_auth();
    tls12.alpn_protocols.clear();
    let tls = tls_connect(gw.addr("edge"), std::sync::Arc::new(tls12), "localhost").await;
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap();
    let name = format!("{:?}", suite.suite());
    assert!(
        name.contains("ECDHE") && (name.contains("GCM") || name.contains("CHACHA20")),
        "{name}"
    );
}

#[tokio::test]
async fn garbage_and_a_silent_client_cost_nothing_to_a_good_client() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let config = default_cert_config(echo, "handshake_timeout = \"500ms\"");
    let gw = Gateway::start(pki.path(), &config).await;
    let addr = gw.addr("edge");

    // A client that connects and never speaks.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // A client that sends bytes that are not TLS.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&random_bytes(4096, 3)).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut answer))
        .await
        .expect("garbage connection closed");
    // A TLS record header with an absurd length, then nothing.
    let mut bad_record = TcpStream::connect(addr).await.unwrap();
    bad_record
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff])
        .await
        .unwrap();

    // Meanwhile a good client is served normally.
    let mut good = tls_connect(addr, pki.client_config(&[]), "localhost").await;
    good.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    good.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still here");

    // The silent client is closed by the handshake timeout.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("silent client closed by handshake_timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);

    let m = gw.metrics().await;
    eventually("handshake errors counted", || async {
        gw.metrics().await.get(
            "sockgate_tls_handshakes_total",
            &[("listener", "edge"), ("result", "error")],
        ) >= 3.0
    })
    .await;
    assert_eq!(
        m.get(
            "sockgate_tls_handshakes_total",
            &[("listener", "edge"), ("result", "ok")]
        ),
        1.0
    );
}

/// One round trip on a fresh connection; returns how the handshake went. Reading the echo
/// also takes in the TLS 1.3 tickets the gateway sends after the handshake.
/// A client of one TLS version that trusts the test CA and keeps sessions to resume, with
/// `tls12` saying how a TLS 1.2 session is resumed.
fn resuming_client(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
    tls12: rustls::client::Tls12Resumption,
) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf(&pki.pki.ca.cert)).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(sockgate::certs::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(16).tls12_resumption(tls12);
    std::sync::Arc::new(config)
}

async fn resumption_round(
    addr: std::net::SocketAddr,
    client: std::sync::Arc<rustls::ClientConfig>,
) -> rustls::HandshakeKind {
    let mut tls = tls_connect(addr, client, "localhost").await;
    tls.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tls.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.shutdown().await.unwrap();
    kind
}

#[tokio::test]
async fn returning_clients_resume_with_tls13_tickets_and_tls12_tickets_or_session_ids() {
    use rustls::HandshakeKind::{Full, Resumed};
    use rustls::client::Tls12Resumption;

    let pki = Pki::new();
    let echo = tcp_echo().await;
    let config = default_cert_config(echo, "");
    let gw = Gateway::start(pki.path(), &config).await;
    let addr = gw.addr("edge");
    let client = |version, tls12| resuming_client(&pki, version, tls12);

    // TLS 1.3: each handshake leaves the client a ticket for the next one, resumed or not.
    let tls13 = client(&rustls::version::TLS13, Tls12Resumption::Disabled);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(resumption_round(addr, tls13.clone()).await);
    }
    assert_eq!(kinds, [Full, Resumed, Resumed], "TLS 1.3");

    // TLS 1.2 with RFC 5077 tickets, then with session IDs only (the server-side cache).
    for (what, mode) in [
        ("TLS 1.2 tickets", Tls12Resumption::SessionIdOrTickets),
        ("TLS 1.2 session IDs", Tls12Resumption::SessionIdOnly),
    ] {
        let tls12 = client(&rustls::version::TLS12, mode);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            kinds.push(resumption_round(addr, tls12.clone()).await);
        }
        assert_eq!(kinds, [Full, Resumed, Resumed], "{what}");
    }
}

/// A client that lists the post-quantum hybrid first, as current browsers do, gets it when
/// aws-lc-rs is built in (ring has no ML-KEM).
#[cfg(feature = "aws-lc-rs")]
#[tokio::test]
async fn a_client_preferring_x25519mlkem768_gets_it() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let config = default_cert_config(echo, "");
    let gw = Gateway::start(pki.path(), &config).await;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
        rustls::crypto::aws_lc_rs::kx_group::X25519,
    ];
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(leaf(&pki.pki.ca.cert)).unwrap();
            roots
        })
        .with_no_client_auth();
    let mut tls = tls_connect(gw.addr("edge"), std::sync::Arc::new(client), "localhost").await;
    let group = tls.get_ref().1.negotiated_key_exchange_group().unwrap();
    assert_eq!(group.name(), rustls::NamedGroup::X25519MLKEM768);
    tls.write_all(b"pq").await.unwrap();
    let mut got = [0u8; 2];
    tls.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pq");
}

/// Writes at most `piece` bytes per call, so TLS records reach the gateway cut anywhere.
struct Dribble {
    inner: TcpStream,
    piece: usize,
}

impl tokio::io::AsyncRead for Dribble {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Dribble {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.piece);
        std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn records_cut_in_pieces_and_key_updates_both_ways_keep_the_bytes_exact() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &default_cert_config(echo, "")).await;

    // The handshake and 64 KiB of data in 7-byte TCP writes: the gateway sees records in
    // every state of completeness, including full-size ones split across many reads.
    let tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client_config(&[]))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            Dribble {
                inner: tcp,
                piece: 7,
            },
        )
        .await
        .unwrap();
    let data = random_bytes(64 * 1024, 11);
    let (mut rd, mut wr) = tokio::io::split(tls);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.flush().await.unwrap();
        wr
    });
    let mut got = vec![0u8; data.len()];
    rd.read_exact(&mut got).await.unwrap();
    assert!(got == data, "echoed bytes differ");
    tls = rd.unsplit(writer.await.unwrap());

    // A TLS 1.3 key update from the client asks the gateway to update its keys too; data
    // keeps flowing both ways under the new keys.
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    for round in 0..3u8 {
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        let msg = [round; 300];
        tls.write_all(&msg).await.unwrap();
        let mut back = [0u8; 300];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_forged_record_after_the_handshake_gets_an_alert_and_costs_only_its_connection() {
    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &default_cert_config(echo, "")).await;
    let addr = gw.addr("edge");

    let mut good = tls_connect(addr, pki.client_config(&[]), "localhost").await;
    good.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    good.read_exact(&mut got).await.unwrap();

    // A client completes the handshake, then sends an application-data record that is
    // not encrypted under its keys.
    let mut bad = tls_connect(addr, pki.client_config(&[]), "localhost").await;
    bad.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    bad.read_exact(&mut pong).await.unwrap();
    let (mut tcp, _) = bad.into_inner();
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    forged.extend(random_bytes(0x40, 5));
    tcp.write_all(&forged).await.unwrap();
    // The gateway answers with an alert (an encrypted record: type 0x17 in TLS 1.3) and
    // closes the connection.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("forged record closes the connection")
        .ok();
    assert!(
        answer.len() >= 5 + 2 + 1 + 16 && answer[0] == 0x17,
        "expected an encrypted alert record, got {answer:02x?}"
    );

    // The other connection is untouched.
    good.write_all(b"after").await.unwrap();
    let mut got = [0u8; 5];
    good.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"after");
}

#[tokio::test]
async fn tls12_bulk_arrives_byte_exact_and_resumed_sessions_keep_their_server_name() {
    use rustls::client::Tls12Resumption;

    let pki = Pki::new();
    let echo = tcp_echo().await;
    let gw = Gateway::start(pki.path(), &default_cert_config(echo, "")).await;
    let addr = gw.addr("edge");
    let client = |version| resuming_client(&pki, version, Tls12Resumption::SessionIdOrTickets);

    // TLS 1.2 records carry an explicit nonce: 1 MiB both ways, byte-exact.
    let tls = tls_connect(addr, client(&rustls::version::TLS12), "localhost").await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let data = random_bytes(1 << 20, 21);
    let (mut rd, mut wr) = tokio::io::split(tls);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert!(got == data, "TLS 1.2 bytes differ");

    // A resumed handshake (the certificate is not sent again) still tells the gateway the
    // server name: /connections shows it for both versions.
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client(version);
        let mut first = tls_connect(addr, config.clone(), "localhost").await;
        first.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        first.read_exact(&mut one).await.unwrap();
        first.shutdown().await.unwrap();
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).await.unwrap();
        drop(first);
        let mut resumed = tls_connect(addr, config, "localhost").await;
        resumed.write_all(b"y").await.unwrap();
        resumed.read_exact(&mut one).await.unwrap();
        assert_eq!(
            resumed.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        // Only the resumed connection is left once the first one's teardown is done.
        eventually("the first connection is gone", || async {
            http_get(gw.admin(), "/connections")
                .await
                .1
                .matches("\"sni\":")
                .count()
                == 1
        })
        .await;
        let (status, body) = http_get(gw.admin(), "/connections").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("\"sni\":\"localhost\""),
            "{version:?}: /connections has no server name: {body}"
        );
        drop(resumed);
        eventually("the resumed connection is gone", || async {
            !http_get(gw.admin(), "/connections")
                .await
                .1
                .contains("\"sni\":")
        })
        .await;
    }
}

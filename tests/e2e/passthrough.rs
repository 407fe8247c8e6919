//! TLS passthrough: a listener without `tls` reads the server name from the ClientHello and
//! relays the session untouched to a backend that terminates TLS itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support::*;

const NAME: &str = "db.example.test";

/// A TLS echo server with the PKI's certificate for [`NAME`]; the leaf's DER.
async fn tls_echo_backend(pki: &Pki) -> (SocketAddr, Vec<u8>) {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.pki.server.cert.as_bytes())
            .map(Result::unwrap)
            .collect();
    let leaf = chain[0].to_vec();
    let key = PrivateKeyDer::from_pem_slice(pki.pki.server.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(sockgate::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, leaf)
}

fn config(backend: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
detect_timeout = "300ms"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "db"
  protocol = "tls_passthrough"
  sni = "{NAME}"
  backend = "db"

[[backend]]
name = "db"
servers = ["{backend}"]
"#
    )
}

/// Reads until EOF or an error; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => panic!("the gateway kept the connection open for {limit:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!("the gateway answered {n} bytes instead of closing"),
    }
}

#[tokio::test]
async fn the_client_handshakes_with_the_backend_through_a_plaintext_listener() {
    let pki = Pki::for_names(&[NAME]);
    let (backend, leaf) = tls_echo_backend(&pki).await;
    let gw = Gateway::start(pki.path(), &config(backend)).await;

    let tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(pki.client_config(&[]))
            .connect(ServerName::try_from(NAME).unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert!(
        presented == leaf,
        "the client saw a certificate other than the backend's"
    );
    let data = random_bytes(200_000, 12);
    let (mut rd, mut wr) = tokio::io::split(&mut tls);
    let sent = data.clone();
    let (got, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            async {
                let mut got = vec![0u8; sent.len()];
                rd.read_exact(&mut got).await.unwrap();
                got
            },
            async {
                wr.write_all(&data).await.unwrap();
                wr.flush().await.unwrap();
            }
        )
    })
    .await
    .unwrap();
    assert!(got == sent, "echoed bytes differ from what was sent");

    let m = gw.metrics().await;
    let edge = ("listener", "edge");
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[edge, ("protocol", "tls_passthrough")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_connections_active",
            &[edge, ("protocol", "tls_passthrough")]
        ),
        1.0
    );
    // The TLS records, ClientHello included, are counted as they went by; more than the
    // payload, which they carry encrypted.
    let up = m.get(
        "sockgate_bytes_total",
        &[
            edge,
            ("route", "db"),
            ("backend", "db"),
            ("direction", "client_to_backend"),
        ],
    );
    assert!(up > sent.len() as f64, "client_to_backend = {up}");
    // The gateway terminated nothing.
    assert_eq!(
        m.get("sockgate_tls_handshakes_total", &[edge, ("result", "ok")]),
        0.0
    );

    let connections = http_get(gw.admin(), "/connections").await.1;
    assert!(
        connections.contains(&format!("\"sni\":\"{NAME}\"")),
        "{connections}"
    );
}

#[tokio::test]
async fn another_server_name_is_closed_and_counted_unrouted() {
    let pki = Pki::for_names(&[NAME, "other.example.test"]);
    let (backend, _) = tls_echo_backend(&pki).await;
    let gw = Gateway::start(pki.path(), &config(backend)).await;

    let tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let handshake = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(pki.client_config(&[]))
            .connect(ServerName::try_from("other.example.test").unwrap(), tcp),
    )
    .await
    .unwrap();
    assert!(handshake.is_err(), "a handshake with no route completed");

    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_unrouted_total",
            &[("listener", "edge"), ("protocol", "tls_passthrough")]
        ),
        1.0
    );
}

#[tokio::test]
async fn garbage_and_a_truncated_client_hello_are_closed_within_detect_timeout() {
    let pki = Pki::for_names(&[NAME]);
    let (backend, _) = tls_echo_backend(&pki).await;
    let gw = Gateway::start(pki.path(), &config(backend)).await;

    // A handshake record that holds a ServerHello: refused as soon as it is read.
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(&[22, 3, 1, 0, 6, 2, 0, 0, 2, 3, 3])
        .await
        .unwrap();
    let took = closed_within(&mut tcp, Duration::from_secs(2)).await;
    assert!(took < Duration::from_millis(250), "closed after {took:?}");

    // A ClientHello that announces 200 bytes and sends 10: closed when detect_timeout
    // (300 ms) runs out, not before.
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3])
        .await
        .unwrap();
    let took = closed_within(&mut tcp, Duration::from_secs(2)).await;
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(1),
        "closed after {took:?}"
    );

    // A ClientHello larger than the 16 KiB cap.
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(&[22, 3, 1, 0x40, 0, 1, 0x01, 0, 0])
        .await
        .unwrap();
    closed_within(&mut tcp, Duration::from_secs(2)).await;

    // Nothing reached the backend, and the gateway still serves.
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[("listener", "edge"), ("protocol", "tls_passthrough")]
        ),
        0.0
    );
    let tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(pki.client_config(&[]))
            .connect(ServerName::try_from(NAME).unwrap(), tcp),
    )
    .await
    .unwrap();
    assert!(tls.is_ok());
}

#[tokio::test]
async fn a_tls_listener_relays_its_passthrough_names_and_terminates_the_rest() {
    let gateway_pki = Pki::new();
    let backend_pki = Pki::for_names(&[NAME]);
    let (backend, leaf) = tls_echo_backend(&backend_pki).await;
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        gateway_pki.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}
route = [
  {{ name = "db", protocol = "tls_passthrough", sni = "{NAME}", backend = "db" }},
  {{ name = "echo", protocol = "tcp", backend = "echo" }},
]

[[backend]]
name = "db"
servers = ["{backend}"]

[[backend]]
name = "echo"
servers = ["{echo}"]
"#
        ),
    )
    .await;
    let trust = gateway_pki.client_config(&[backend_pki.pki.ca.cert.as_str()]);

    // The passthrough name: the backend's certificate, the backend's echo.
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        tls_connect(gw.addr("edge"), trust.clone(), NAME),
    )
    .await
    .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert!(presented == leaf, "not the backend's certificate");
    tls.write_all(b"through").await.unwrap();
    let mut got = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"through");

    // Any other name: the gateway's own certificate, terminated, then the TCP route.
    let gateway_leaf = CertificateDer::pem_slice_iter(gateway_pki.pki.server.cert.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        tls_connect(gw.addr("edge"), trust, "localhost"),
    )
    .await
    .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert!(presented == gateway_leaf, "not the gateway's certificate");
    tls.write_all(b"terminated").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"terminated");

    let m = gw.metrics().await;
    let edge = ("listener", "edge");
    for (protocol, want) in [("tls_passthrough", 1.0), ("tcp", 1.0)] {
        assert_eq!(
            m.get(
                "sockgate_connections_total",
                &[edge, ("protocol", protocol)]
            ),
            want,
            "{protocol}"
        );
    }
    assert_eq!(
        m.get("sockgate_tls_handshakes_total", &[edge, ("result", "ok")]),
        1.0
    );

    // Bytes that are not TLS still get the handshake's answer: an alert, then a close.
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        buf.first(),
        Some(&21),
        "expected a TLS alert record, got {buf:?}"
    );
}

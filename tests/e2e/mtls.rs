//! Client certificates on TLS listeners: `client_auth` in "require" and "request" mode,
//! routes on `client_cert`, the subject passed to HTTP and WebSocket backends in
//! `client_cert_header` (a client's own copy stripped), and a CA changed by a reload or on disk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::AlertDescription;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// The subject every test client certificate carries, as RFC 4514 prints it: the last RDN
/// first, `,` and `+` inside a value escaped.
const SUBJECT: &str = "CN=client-1,OU=Ops\\, Edge,O=Example\\+Co,C=DE";
const LIMIT: Duration = Duration::from_secs(10);

/// A CA for client certificates (PEM) that issues them.
struct ClientCa {
    pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl ClientCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        ClientCa {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// A client certificate with [`SUBJECT`], and its key.
    fn client(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let dn = &mut params.distinguished_name;
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::OrganizationName, "Example+Co");
        dn.push(DnType::OrganizationalUnitName, "Ops, Edge");
        dn.push(DnType::CommonName, "client-1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        (vec![cert.der().clone()], key)
    }
}

/// A client trusting the gateway's CA, presenting `cert` when given one.
fn client_tls(
    pki: &Pki,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.pki.ca.cert.as_bytes()).unwrap())
        .unwrap();
    // The SNI certificate's CA, when the test wrote one.
    if let Ok(pem) = CertificateDer::from_pem_file(pki.path().join("other-ca.crt")) {
        roots.add(pem).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(sockgate::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects and completes the handshake as far as the client sees it. In TLS 1.3 the client
/// is done before the server has checked its certificate: a refusal arrives as an alert on
/// the first read, which [`refused_with`] looks for.
async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    connect_as(addr, config, "localhost").await
}

async fn connect_as(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        LIMIT,
        TlsConnector::from(config).connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp),
    )
    .await
    .expect("handshake within 10s")
    .expect("the client's side of the handshake completes")
}

/// A request over a connection with `config`, and the first read of the answer: bytes, or
/// the refusal of the client's certificate.
async fn first_read(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<usize> {
    let mut tls = connect(addr, config).await;
    let _ = tls
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    tokio::time::timeout(LIMIT, tls.read(&mut buf))
        .await
        .expect("the gateway answers within 10s")
}

/// The alert the gateway refused the connection with, read where the client meets it.
async fn refused_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> AlertDescription {
    let error = first_read(addr, config)
        .await
        .expect_err("the gateway refuses the connection");
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        other => panic!("expected a TLS alert, got {error:?} ({other:?})"),
    }
}

/// An HTTP backend that answers every request with its name, then each header it received
/// as `name: value` lines.
async fn http_mirror(name: &'static str) -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| async move {
                    let mut page = format!("{name}\n");
                    for (k, v) in req.headers() {
                        page.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        page,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A WebSocket backend that reports the `x-client-cert-subject` values of each upgrade
/// request it accepts, then echoes.
async fn ws_mirror() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
) {
    use futures_util::StreamExt;
    let (listener, addr) = listen().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                // tungstenite's callback type, whose error is a whole response.
                #[allow(clippy::result_large_err)]
                let callback =
                    |req: &tungstenite::handshake::server::Request,
                     resp: tungstenite::handshake::server::Response| {
                        let seen = req
                            .headers()
                            .get_all("x-client-cert-subject")
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect();
                        let _ = tx.send(seen);
                        Ok(resp)
                    };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                let (sink, stream) = ws.split();
                let _ = stream.forward(sink).await;
            });
        }
    });
    (addr, rx)
}

fn config(strict_ca: &str, backends: [SocketAddr; 5]) -> String {
    let [private, public, private_ws, public_ws, echo] = backends;
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "strict"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key", client_auth = {{ ca = "{strict_ca}", mode = "require" }} }}
client_cert_header = "X-Client-Cert-Subject"
route = [{{ name = "private", protocol = "http", backend = "private" }}]

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
client_cert_header = "X-Client-Cert-Subject"

  [listener.tls]
  cert = "server.crt"
  key = "server.key"
  client_auth = {{ ca = "clients-ca.crt", mode = "request" }}

  # SNI certificates on the same listener: one client-auth rule for every name.
  [[listener.tls.sni]]
  names = ["other.example.test"]
  cert = "other.crt"
  key = "other.key"

  [[listener.route]]
  name = "private-ws"
  protocol = "websocket"
  client_cert = true
  backend = "private-ws"

  [[listener.route]]
  name = "public-ws"
  protocol = "websocket"
  client_cert = false
  backend = "public-ws"

  [[listener.route]]
  name = "private"
  protocol = "http"
  client_cert = true
  backend = "private"

  [[listener.route]]
  name = "public"
  protocol = "http"
  client_cert = false
  backend = "public"

# TCP only: routed on the certificate right after the handshake, no detection.
[[listener]]
name = "tcp"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key", client_auth = {{ ca = "clients-ca.crt", mode = "request" }} }}
route = [{{ name = "echo", protocol = "tcp", client_cert = true, backend = "echo" }}]

[[backend]]
name = "echo"
servers = ["{echo}"]

[[backend]]
name = "private"
servers = ["{private}"]

[[backend]]
name = "public"
servers = ["{public}"]

[[backend]]
name = "private-ws"
servers = ["{private_ws}"]

[[backend]]
name = "public-ws"
servers = ["{public_ws}"]
"#
    )
}

struct Setup {
    pki: Pki,
    gw: Gateway,
    ca: ClientCa,
    /// Upgrade requests each WebSocket backend saw: private, public.
    ws_seen: [tokio::sync::mpsc::UnboundedReceiver<Vec<String>>; 2],
}

async fn setup() -> Setup {
    let pki = Pki::new();
    let ca = ClientCa::new("clients CA");
    crate::certgen::write_file(&pki.path().join("clients-ca.crt"), &ca.pem).unwrap();
    // The SNI certificate, from a CA of its own that `client_tls` trusts too.
    let other = crate::certgen::dev_pki(&["other.example.test"]).unwrap();
    std::fs::write(pki.path().join("other-ca.crt"), &other.ca.cert).unwrap();
    let other = (other.server.cert, other.server.key);
    crate::certgen::write_file(&pki.path().join("other.crt"), &other.0).unwrap();
    crate::certgen::write_file(&pki.path().join("other.key"), &other.1).unwrap();
    let (private_ws, private_seen) = ws_mirror().await;
    let (public_ws, public_seen) = ws_mirror().await;
    let backends = [
        http_mirror("private").await,
        http_mirror("public").await,
        private_ws,
        public_ws,
        tcp_echo().await,
    ];
    let gw = Gateway::start(pki.path(), &config("clients-ca.crt", backends)).await;
    Setup {
        pki,
        gw,
        ca,
        ws_seen: [private_seen, public_seen],
    }
}

/// One GET over `tls` with a forged subject header; the status and the body.
async fn forged_get(tls: TlsStream<TcpStream>) -> (u16, String) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/who")
        .header("host", "localhost")
        .header("x-client-cert-subject", "CN=admin")
        .header("x-client-cert-subject", "CN=root")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .expect("answer within 10s")
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn require_mode_refuses_clients_without_a_valid_certificate_and_counts_them() {
    let s = setup().await;
    let strict = s.gw.addr("strict");
    let alpn: &[&[u8]] = &[b"http/1.1"];

    // No certificate: TLS 1.3's certificate_required.
    let alert = refused_with(strict, client_tls(&s.pki, None, alpn)).await;
    assert_eq!(alert, AlertDescription::CertificateRequired);
    // A certificate from a CA the listener does not trust.
    let rogue = ClientCa::new("rogue CA");
    let alert = refused_with(strict, client_tls(&s.pki, Some(rogue.client()), alpn)).await;
    assert_eq!(alert, AlertDescription::UnknownCA);

    // The right one is served, and its subject reaches the backend, the client's own copy
    // of the header gone.
    let tls = connect(strict, client_tls(&s.pki, Some(s.ca.client()), alpn)).await;
    let (status, page) = forged_get(tls).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.starts_with("private\n"), "{page}");
    assert_eq!(
        page.matches("x-client-cert-subject: ").count(),
        1,
        "one subject header: {page}"
    );
    assert!(
        page.contains(&format!("\nx-client-cert-subject: {SUBJECT}\n")),
        "{page}"
    );

    let m = s.gw.metrics().await;
    let strict_label = ("listener", "strict");
    for (reason, count) in [
        ("no_client_certificate", 1.0),
        ("bad_client_certificate", 1.0),
    ] {
        assert_eq!(
            m.get(
                "sockgate_tls_handshake_errors_total",
                &[strict_label, ("reason", reason)]
            ),
            count,
            "{reason}"
        );
    }
    assert_eq!(
        m.get(
            "sockgate_tls_handshakes_total",
            &[strict_label, ("result", "error")]
        ),
        2.0
    );
    assert_eq!(
        m.get(
            "sockgate_tls_handshakes_total",
            &[strict_label, ("result", "ok")]
        ),
        1.0
    );
}

#[tokio::test]
async fn request_mode_routes_on_the_certificate_and_passes_its_subject_to_http_backends() {
    let s = setup().await;
    let edge = s.gw.addr("edge");
    let alpn: &[&[u8]] = &[b"http/1.1"];

    // Without a certificate: the `client_cert = false` route, and no subject header at all,
    // whatever the client wrote.
    let tls = connect(edge, client_tls(&s.pki, None, alpn)).await;
    let (status, page) = forged_get(tls).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.starts_with("public\n"), "{page}");
    assert!(!page.contains("x-client-cert-subject"), "{page}");

    // With one: the `client_cert = true` route, and exactly the verified subject.
    let tls = connect(edge, client_tls(&s.pki, Some(s.ca.client()), alpn)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        // Each request on the connection carries it (keep-alive).
        let req = http::Request::get("/who")
            .header("host", "localhost")
            .header("X-Client-Cert-Subject", "CN=admin")
            .header("connection", "x-client-cert-subject")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&body).into_owned();
        assert!(page.starts_with("private\n"), "{page}");
        assert_eq!(page.matches("x-client-cert-subject: ").count(), 1, "{page}");
        assert!(
            page.contains(&format!("\nx-client-cert-subject: {SUBJECT}\n")),
            "{page}"
        );
    }
    // The subject is a connection field in `/connections` while the connection is open.
    let (status, body) = http_get(s.gw.admin(), "/connections").await;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let subjects: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["tls.client_subject"].as_str())
        .collect();
    assert_eq!(subjects, [SUBJECT], "{body}");

    // The listener's SNI certificate goes with the same client-auth rule.
    let tls = connect_as(
        edge,
        client_tls(&s.pki, Some(s.ca.client()), alpn),
        "other.example.test",
    )
    .await;
    let (status, page) = forged_get(tls).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.starts_with("private\n"), "{page}");
    assert!(
        page.contains(&format!("\nx-client-cert-subject: {SUBJECT}\n")),
        "{page}"
    );
    let tls = connect_as(edge, client_tls(&s.pki, None, alpn), "other.example.test").await;
    assert!(forged_get(tls).await.1.starts_with("public\n"));

    // A certificate the CA did not issue is refused even where certificates are optional.
    let rogue = ClientCa::new("rogue CA");
    let alert = refused_with(edge, client_tls(&s.pki, Some(rogue.client()), alpn)).await;
    assert_eq!(alert, AlertDescription::UnknownCA);
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_tls_handshake_errors_total",
            &[("listener", "edge"), ("reason", "bad_client_certificate")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_http_responses_total",
            &[("listener", "edge"), ("route", "private")]
        ),
        3.0
    );
    assert_eq!(
        m.get(
            "sockgate_http_responses_total",
            &[("listener", "edge"), ("route", "public")]
        ),
        2.0
    );
}

#[tokio::test]
async fn websocket_backends_get_the_subject_in_the_upgrade_request_and_never_a_forged_one() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut s = setup().await;
    let edge = s.gw.addr("edge");
    let alpn: &[&[u8]] = &[b"http/1.1"];
    for (with_cert, seen_by, expected) in
        [(true, 0, vec![SUBJECT.to_owned()]), (false, 1, Vec::new())]
    {
        let cert = with_cert.then(|| s.ca.client());
        let tls = connect(edge, client_tls(&s.pki, cert, alpn)).await;
        let mut req =
            tungstenite::client::IntoClientRequest::into_client_request("wss://localhost/chat")
                .unwrap();
        req.headers_mut()
            .append("x-client-cert-subject", "CN=admin".parse().unwrap());
        let (mut ws, response) =
            tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(req, tls))
                .await
                .expect("upgrade within 10s")
                .unwrap();
        assert_eq!(response.status(), 101);
        let seen = tokio::time::timeout(LIMIT, s.ws_seen[seen_by].recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, expected, "with a certificate: {with_cert}");
        ws.send(Message::text("hi")).await.unwrap();
        let echoed = tokio::time::timeout(LIMIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text("hi"));
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn a_reload_puts_a_changed_client_ca_in_force() {
    let s = setup().await;
    let strict = s.gw.addr("strict");
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let tls = connect(strict, client_tls(&s.pki, Some(s.ca.client()), alpn)).await;
    assert_eq!(forged_get(tls).await.0, 200);

    let next = ClientCa::new("next clients CA");
    crate::certgen::write_file(&s.pki.path().join("clients-ca.crt"), &next.pem).unwrap();
    let (status, body) = http_request(s.gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");

    let alert = refused_with(strict, client_tls(&s.pki, Some(s.ca.client()), alpn)).await;
    assert_eq!(alert, AlertDescription::UnknownCA);
    let tls = connect(strict, client_tls(&s.pki, Some(next.client()), alpn)).await;
    let (status, page) = forged_get(tls).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("\nx-client-cert-subject: {SUBJECT}\n")),
        "{page}"
    );

    // A CA file that no longer holds a certificate is refused whole; the CA before stays.
    std::fs::write(s.pki.path().join("clients-ca.crt"), "gone\n").unwrap();
    let (status, body) = http_request(s.gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no PEM certificate found in"), "{body}");
    let tls = connect(strict, client_tls(&s.pki, Some(next.client()), alpn)).await;
    assert_eq!(forged_get(tls).await.0, 200);
}

/// The gateway answers a request over a connection with `config` (true), or refuses the
/// client's certificate (false).
async fn answers(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    matches!(first_read(addr, config).await, Ok(n) if n > 0)
}

#[tokio::test]
async fn a_client_ca_rewritten_on_disk_is_in_force_without_a_reload() {
    let s = setup().await;
    let strict = s.gw.addr("strict");
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let next = ClientCa::new("next clients CA");
    assert!(!answers(strict, client_tls(&s.pki, Some(next.client()), alpn)).await);

    crate::certgen::write_file(&s.pki.path().join("clients-ca.crt"), &next.pem).unwrap();
    // The watcher looks once a second and applies a file that held still for a look.
    let mut in_force = false;
    for _ in 0..100 {
        if answers(strict, client_tls(&s.pki, Some(next.client()), alpn)).await {
            in_force = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_force, "the new CA was not in force within 10 s");
    let alert = refused_with(strict, client_tls(&s.pki, Some(s.ca.client()), alpn)).await;
    assert_eq!(alert, AlertDescription::UnknownCA);
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get("sockgate_certificate_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.get("sockgate_config_reloads_total", &[("result", "ok")]),
        0.0
    );
}

#[tokio::test]
async fn a_resumed_session_keeps_its_client_certificate() {
    let s = setup().await;
    let edge = s.gw.addr("edge");
    // One client config: its session cache makes the second connection a resumption.
    let config = client_tls(&s.pki, Some(s.ca.client()), &[b"http/1.1"]);
    for kind in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
        let tls = connect(edge, config.clone()).await;
        assert_eq!(tls.get_ref().1.handshake_kind(), Some(kind));
        let (status, page) = forged_get(tls).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.starts_with("private\n"), "{kind:?}: {page}");
        assert!(
            page.contains(&format!("\nx-client-cert-subject: {SUBJECT}\n")),
            "{kind:?}: {page}"
        );
    }
}

#[tokio::test]
async fn tcp_routes_match_on_the_certificate_too() {
    let s = setup().await;
    let addr = s.gw.addr("tcp");
    let mut tls = connect(addr, client_tls(&s.pki, Some(s.ca.client()), &[])).await;
    tls.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(LIMIT, tls.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");

    // Without a certificate no route takes it: closed, and counted as unrouted.
    let mut tls = connect(addr, client_tls(&s.pki, None, &[])).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, tls.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_unrouted_total",
            &[("listener", "tcp"), ("protocol", "tcp")]
        ),
        1.0
    );
}

#[tokio::test]
async fn over_http2_requests_and_websockets_route_on_the_certificate_and_carry_its_subject() {
    use futures_util::{SinkExt, StreamExt};
    use hyper::ext::Protocol;
    use hyper_util::rt::TokioExecutor;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let mut s = setup().await;
    let edge = s.gw.addr("edge");
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let tls = connect(edge, client_tls(&s.pki, Some(s.ca.client()), alpn)).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    // A request: the certificate's route, the verified subject once, the forged one gone.
    let req = http::Request::get("https://localhost/who")
        .header("X-Client-Cert-Subject", "CN=admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .expect("a response within 10s")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8_lossy(&body).into_owned();
    assert!(page.starts_with("private\n"), "{page}");
    assert_eq!(page.matches("x-client-cert-subject: ").count(), 1, "{page}");
    assert!(
        page.contains(&format!("\nx-client-cert-subject: {SUBJECT}\n")),
        "{page}"
    );

    // A WebSocket inside the same connection (RFC 8441): the HTTP/1.1 upgrade toward the
    // backend carries the subject, and only it.
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://localhost/chat")
        .header("sec-websocket-version", "13")
        .header("X-Client-Cert-Subject", "CN=admin")
        .extension(Protocol::from_static("websocket"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .expect("an answer to the CONNECT within 10s")
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = tokio::time::timeout(LIMIT, s.ws_seen[0].recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, [SUBJECT]);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("hi")).await.unwrap();
    let echoed = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hi"));
    ws.close(None).await.unwrap();
}

//! TLS toward backends: a backend with `tls` re-encrypts toward its servers, TLS servers
//! started here with tokio-rustls and certificates made with rcgen. TCP, HTTP (keep-alive)
//! and WebSocket traffic through them; the name and ALPN they are asked for; verification
//! failing on a wrong CA, with the retry on the next server; `verify = false`; a client
//! certificate toward them; health checks over TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

use crate::certgen::{self, PemPair};
use crate::support::*;

/// Every test here ends well within this.
const LIMIT: Duration = Duration::from_secs(20);

/// What a TLS backend saw of one handshake.
#[derive(Debug, Clone)]
struct Saw {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    client_cert: bool,
}

#[derive(Debug, Clone, Copy)]
enum Serve {
    /// Echoes every byte.
    Echo,
    /// The demo's HTTP server: WebSocket echo, and plain requests answered with their head.
    Http,
}

struct TlsBackend {
    addr: SocketAddr,
    saw: mpsc::UnboundedReceiver<Saw>,
    /// Completed handshakes.
    handshakes: Arc<AtomicUsize>,
}

/// A TLS server presenting `pair`, offering ALPN `http/1.1`, requiring a client certificate
/// issued by `client_ca` when given.
async fn tls_backend(pair: &PemPair, serve: Serve, client_ca: Option<&str>) -> TlsBackend {
    let chain = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
    let provider = sockgate::certs::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (listener, addr) = listen().await;
    let (tx, saw) = mpsc::unbounded_channel();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, tx, count) = (acceptor.clone(), tx.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (_, conn) = tls.get_ref();
                let _ = tx.send(Saw {
                    sni: conn.server_name().map(str::to_owned),
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                });
                match serve {
                    Serve::Echo => {
                        let (mut rd, mut wr) = tokio::io::split(tls);
                        if tokio::io::copy(&mut rd, &mut wr).await.is_ok() {
                            let _ = wr.shutdown().await;
                        }
                    }
                    Serve::Http => crate::demo::ws_echo_conn(tls).await,
                }
            });
        }
    });
    TlsBackend {
        addr,
        saw,
        handshakes,
    }
}

/// A gateway config: a plaintext listener `edge` whose one route (`protocol`) goes to
/// backend `b`, with `servers` and the backend keys in `backend_extra`.
fn config(protocol: &str, servers: &[SocketAddr], backend_extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
connect_timeout = "2s"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{{ name = "r", protocol = "{protocol}", backend = "b" }}]

[[backend]]
name = "b"
servers = [{}]
{backend_extra}
"#,
        servers.join(", ")
    )
}

fn write(dir: &Path, name: &str, pem: &str) {
    std::fs::write(dir.join(name), pem).unwrap();
}

/// Sends GET requests for `paths` on one keep-alive connection; (status, body) of each.
async fn keep_alive_gets(addr: SocketAddr, paths: &[&str]) -> Vec<(u16, String)> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for path in paths {
        let request = http::Request::get(*path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    answers
}

#[tokio::test]
async fn a_tcp_route_relays_both_ways_through_a_tls_backend_asking_for_the_configured_sni() {
    tokio::time::timeout(LIMIT, async {
        let pki = certgen::dev_pki(&["chat.internal"]).unwrap();
        let mut backend = tls_backend(&pki.server, Serve::Echo, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &pki.ca.cert);
        let gw = Gateway::start(
            dir.path(),
            &config(
                "tcp",
                &[backend.addr],
                r#"tls = { ca = "backend-ca.crt", sni = "chat.internal" }"#,
            ),
        )
        .await;

        // More than one pool buffer's worth each way, with a half-close at the end.
        let data = random_bytes(300 * 1024, 7);
        let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
        let (mut rd, mut wr) = tcp.split();
        let (_, got) = tokio::join!(
            async {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
            },
            async {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.unwrap();
                got
            }
        );
        assert!(got == data, "echoed {} of {} bytes", got.len(), data.len());

        let saw = backend.saw.recv().await.unwrap();
        assert_eq!(saw.sni.as_deref(), Some("chat.internal"));
        assert_eq!(saw.alpn, None, "TCP routes offer no ALPN");
        assert!(!saw.client_cert);
        let len = data.len() as f64;
        eventually("the bytes are counted", || async {
            let m = gw.metrics().await;
            m.get(
                "sockgate_bytes_total",
                &[("direction", "client_to_backend")],
            ) == len
                && m.get(
                    "sockgate_bytes_total",
                    &[("direction", "backend_to_client")],
                ) == len
        })
        .await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn http_requests_reuse_one_tls_connection_verified_against_the_servers_ip_address() {
    tokio::time::timeout(LIMIT, async {
        // The certificate names 127.0.0.1 among its IP addresses; no `sni`: the server's
        // address is what is verified, and no SNI is sent (RFC 6066 allows no IP there).
        let pki = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let mut backend = tls_backend(&pki.server, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &pki.ca.cert);
        let gw = Gateway::start(
            dir.path(),
            &config(
                "http",
                &[backend.addr],
                r#"tls = { ca = "backend-ca.crt" }"#,
            ),
        )
        .await;

        let answers = keep_alive_gets(gw.addr("edge"), &["/one", "/two", "/three"]).await;
        for (answer, path) in answers.iter().zip(["/one", "/two", "/three"]) {
            assert_eq!(answer.0, 200, "{answer:?}");
            assert!(answer.1.starts_with(&format!("GET {path}\n")), "{answer:?}");
        }
        assert_eq!(
            backend.handshakes.load(Ordering::SeqCst),
            1,
            "one backend connection kept alive for the three requests"
        );
        let saw = backend.saw.recv().await.unwrap();
        assert_eq!(saw.sni, None);
        assert_eq!(saw.alpn.as_deref(), Some(&b"http/1.1"[..]));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_websocket_echoes_through_a_tls_backend() {
    tokio::time::timeout(LIMIT, async {
        let pki = certgen::dev_pki(&["chat.internal"]).unwrap();
        let mut backend = tls_backend(&pki.server, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &pki.ca.cert);
        let gw = Gateway::start(
            dir.path(),
            &config(
                "websocket",
                &[backend.addr],
                r#"tls = { ca = "backend-ca.crt", sni = "chat.internal" }"#,
            ),
        )
        .await;

        let url = format!("ws://{}/ws", gw.addr("edge"));
        let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(response.status().as_u16(), 101);
        let big = "x".repeat(100_000);
        for text in ["hello", big.as_str(), "bye"] {
            ws.send(Message::text(text)).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), text);
        }
        ws.close(None).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
        let saw = backend.saw.recv().await.unwrap();
        assert_eq!(saw.sni.as_deref(), Some("chat.internal"));
        assert_eq!(saw.alpn.as_deref(), Some(&b"http/1.1"[..]));
        eventually("the WebSocket messages are counted", || async {
            gw.metrics().await.get(
                "sockgate_websocket_messages_total",
                &[("direction", "backend_to_client")],
            ) == 3.0
        })
        .await;
    })
    .await
    .unwrap();
}

/// `healthy` of each server of backend `b` in `/backends`, in config order.
async fn healthy(gw: &Gateway) -> Vec<bool> {
    let all: serde_json::Value =
        serde_json::from_str(&http_get(gw.admin(), "/backends").await.1).unwrap();
    let b = all
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "b")
        .unwrap();
    b["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["healthy"].as_bool().unwrap())
        .collect()
}

#[tokio::test]
async fn a_server_failing_verification_is_a_connect_failure_retried_on_the_next_and_ejected() {
    tokio::time::timeout(LIMIT, async {
        let good = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        // Same names, another CA: its chain leads nowhere the gateway trusts.
        let other = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let wrong = tls_backend(&other.server, Serve::Http, None).await;
        let right = tls_backend(&good.server, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &good.ca.cert);
        let gw = Gateway::start(
            dir.path(),
            &config(
                "http",
                &[wrong.addr, right.addr],
                r#"tls = { ca = "backend-ca.crt" }
passive = { failures = 2, eject = "1m" }"#,
            ),
        )
        .await;

        // Round robin sends every other connection to `wrong` first: its handshake fails
        // before any byte of the request was sent, so the next server gets the request.
        for i in 0..4 {
            let (status, body) = http_get(gw.addr("edge"), &format!("/{i}")).await;
            assert_eq!(status, 200, "request {i}: {body}");
        }
        assert_eq!(right.handshakes.load(Ordering::SeqCst), 4);
        assert_eq!(
            wrong.handshakes.load(Ordering::SeqCst),
            0,
            "the gateway refused the wrong certificate"
        );
        let m = gw.metrics().await;
        assert_eq!(
            m.get("sockgate_backend_connect_errors_total", &[("backend", "b")]),
            2.0
        );
        // Two failed handshakes in a row: ejected like a server refusing connections.
        assert_eq!(healthy(&gw).await, [false, true]);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_wrong_ca_answers_502_and_logs_the_rustls_error() {
    tokio::time::timeout(LIMIT, async {
        let good = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let other = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let wrong = tls_backend(&other.server, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &good.ca.cert);
        let path = dir.path().join("sockgate.toml");
        std::fs::write(
            &path,
            config("http", &[wrong.addr], r#"tls = { ca = "backend-ca.crt" }"#),
        )
        .unwrap();
        let path = path.to_str().unwrap().to_owned();
        let mut gw = Binary::spawn(&["--config", &path], dir);
        let ready = gw.ready().await;
        let edge: SocketAddr = ready["listeners"]["edge"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let admin: SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();

        let (status, _) = http_get(edge, "/").await;
        assert_eq!(status, 502);
        let m = Metrics::parse(&http_get(admin, "/metrics").await.1);
        assert_eq!(
            m.get("sockgate_backend_connect_errors_total", &[("backend", "b")]),
            1.0
        );
        let server = wrong.addr.to_string();
        eventually("the log names the rustls error", || {
            let stderr = gw.stderr();
            let server = server.clone();
            async move {
                stderr.lines().any(|l| {
                    l.contains(&format!("TLS handshake with {server} failed"))
                        && l.contains("invalid peer certificate: ")
                })
            }
        })
        .await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn verify_false_takes_a_self_signed_server_and_check_warns() {
    tokio::time::timeout(LIMIT, async {
        let pair = certgen::self_signed(&["anything.example"]).unwrap();
        let mut backend = tls_backend(&pair, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        let text = config("http", &[backend.addr], "tls = { verify = false }");
        let gw = Gateway::start(dir.path(), &text).await;

        let (status, body) = http_get(gw.addr("edge"), "/self-signed").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("GET /self-signed\n"), "{body}");
        assert!(backend.saw.recv().await.is_some());

        let out = Binary::command()
            .args(["check", "--config"])
            .arg(dir.path().join("sockgate.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains(":16:18: warning: backend `b` has verify = false: any certificate is taken from its servers"),
            "{stderr}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_server_requiring_a_client_certificate_takes_the_configured_one_and_refuses_none() {
    tokio::time::timeout(LIMIT, async {
        let server = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        // The gateway's certificate, from a CA only the backend trusts.
        let client = certgen::dev_pki(&["gateway.internal"]).unwrap();
        let mut backend = tls_backend(&server.server, Serve::Http, Some(&client.ca.cert)).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &server.ca.cert);
        write(dir.path(), "gateway.crt", &client.server.cert);
        write(dir.path(), "gateway.key", &client.server.key);
        let addr = backend.addr;
        let text = format!(
            r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [
  {{ name = "with", path_prefix = "/with", backend = "with" }},
  {{ name = "without", backend = "without" }},
]

[[backend]]
name = "with"
servers = ["{addr}"]
tls = {{ ca = "backend-ca.crt", cert = "gateway.crt", key = "gateway.key" }}

[[backend]]
name = "without"
servers = ["{addr}"]
tls = {{ ca = "backend-ca.crt" }}
"#
        );
        let gw = Gateway::start(dir.path(), &text).await;

        let (status, body) = http_get(gw.addr("edge"), "/with/cert").await;
        assert_eq!(status, 200, "{body}");
        let saw = backend.saw.recv().await.unwrap();
        assert!(saw.client_cert, "the backend got the gateway's certificate");

        // TLS 1.3: the client's handshake is done when the server judges its (empty)
        // certificate, so the refusal comes as an alert instead of the response: 502.
        let (status, _) = http_get(gw.addr("edge"), "/no/cert").await;
        assert_eq!(status, 502);
        assert_eq!(
            backend.handshakes.load(Ordering::SeqCst),
            1,
            "the server accepted only the handshake with a certificate"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn health_checks_speak_tls_and_take_out_a_server_that_does_not() {
    tokio::time::timeout(LIMIT, async {
        let pki = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let tls_echo = tls_backend(&pki.server, Serve::Echo, None).await;
        // Answers a ClientHello with the ClientHello: not TLS.
        let plain_echo = tcp_echo().await;
        let mut web = tls_backend(&pki.server, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &pki.ca.cert);
        let mut text = config(
            "tcp",
            &[plain_echo, tls_echo.addr],
            r#"tls = { ca = "backend-ca.crt" }
health = { kind = "tcp", interval = "100ms", timeout = "100ms", rise = 1, fall = 1 }"#,
        );
        text.push_str(&format!(
            r#"
[[backend]]
name = "web"
servers = ["{}"]
tls = {{ ca = "backend-ca.crt" }}
health = {{ kind = "http", path = "/healthz", interval = "100ms", timeout = "100ms", rise = 1, fall = 1 }}
"#,
            web.addr
        ));
        let gw = Gateway::start(dir.path(), &text).await;

        eventually("the server without TLS is down, the TLS one up", || async {
            healthy(&gw).await == [false, true]
        })
        .await;
        eventually("the TLS echo server is checked with handshakes", || async {
            tls_echo.handshakes.load(Ordering::SeqCst) >= 2
        })
        .await;
        // HTTP checks over TLS, with ALPN http/1.1; the server stays up through them.
        let saw = web.saw.recv().await.unwrap();
        assert_eq!(saw.alpn.as_deref(), Some(&b"http/1.1"[..]));
        eventually("several HTTP checks passed", || async {
            web.handshakes.load(Ordering::SeqCst) >= 3
        })
        .await;
        let m = gw.metrics().await;
        let web_server = web.addr.to_string();
        assert_eq!(
            m.get(
                "sockgate_backend_up",
                &[("backend", "web"), ("server", web_server.as_str())]
            ),
            1.0
        );
        let plain = plain_echo.to_string();
        assert_eq!(
            m.get(
                "sockgate_backend_up",
                &[("backend", "b"), ("server", plain.as_str())]
            ),
            0.0
        );

        // Traffic goes to the server still in.
        let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
        tcp.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_reload_picks_up_a_changed_ca_bundle() {
    tokio::time::timeout(LIMIT, async {
        let good = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let other = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let backend = tls_backend(&good.server, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &other.ca.cert);
        let gw = Gateway::start(
            dir.path(),
            &config(
                "http",
                &[backend.addr],
                r#"tls = { ca = "backend-ca.crt" }"#,
            ),
        )
        .await;
        assert_eq!(http_get(gw.addr("edge"), "/before").await.0, 502);

        // The same path, the CA that did issue the server's certificate.
        write(dir.path(), "backend-ca.crt", &good.ca.cert);
        let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = http_get(gw.addr("edge"), "/after").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(backend.handshakes.load(Ordering::SeqCst), 1);
    })
    .await
    .unwrap();
}

/// GETs `path` through `edge` until the answer is `status`, for up to 10 s: the certificate
/// watcher looks once a second and applies a change once it held still for a look.
async fn until_status(gw: &Gateway, path: &str, status: u16) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = http_get(gw.addr("edge"), path).await;
        if last.0 == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test]
async fn a_ca_bundle_rewritten_on_disk_is_in_force_without_a_reload() {
    tokio::time::timeout(LIMIT, async {
        let good = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let other = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        let backend = tls_backend(&good.server, Serve::Http, None).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &other.ca.cert);
        let gw = Gateway::start(
            dir.path(),
            &config(
                "http",
                &[backend.addr],
                r#"tls = { ca = "backend-ca.crt" }"#,
            ),
        )
        .await;
        assert_eq!(http_get(gw.addr("edge"), "/before").await.0, 502);

        // The CA that did issue the server's certificate, at the same path; no reload.
        write(dir.path(), "backend-ca.crt", &good.ca.cert);
        let (status, body) = until_status(&gw, "/after", 200).await;
        assert_eq!(status, 200, "{body}");
        assert!(backend.handshakes.load(Ordering::SeqCst) >= 1);
        let m = gw.metrics().await;
        assert_eq!(
            m.get("sockgate_certificate_reloads_total", &[("result", "ok")]),
            1.0
        );
        assert_eq!(
            m.get("sockgate_config_reloads_total", &[("result", "ok")]),
            0.0,
            "a watched file is no config reload"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_client_certificate_rewritten_on_disk_is_presented_without_a_reload() {
    tokio::time::timeout(LIMIT, async {
        let server = certgen::dev_pki(certgen::DEV_NAMES).unwrap();
        // The backend trusts only `trusted`'s CA; the gateway starts with a certificate
        // from another.
        let untrusted = certgen::dev_pki(&["gateway.internal"]).unwrap();
        let trusted = certgen::dev_pki(&["gateway.internal"]).unwrap();
        let mut backend = tls_backend(&server.server, Serve::Http, Some(&trusted.ca.cert)).await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "backend-ca.crt", &server.ca.cert);
        write(dir.path(), "gateway.crt", &untrusted.server.cert);
        write(dir.path(), "gateway.key", &untrusted.server.key);
        let gw = Gateway::start(
            dir.path(),
            &config(
                "http",
                &[backend.addr],
                r#"tls = { ca = "backend-ca.crt", cert = "gateway.crt", key = "gateway.key" }"#,
            ),
        )
        .await;
        assert_eq!(http_get(gw.addr("edge"), "/before").await.0, 502);
        assert_eq!(backend.handshakes.load(Ordering::SeqCst), 0);

        write(dir.path(), "gateway.crt", &trusted.server.cert);
        write(dir.path(), "gateway.key", &trusted.server.key);
        let (status, body) = until_status(&gw, "/after", 200).await;
        assert_eq!(status, 200, "{body}");
        let saw = backend.saw.recv().await.unwrap();
        assert!(saw.client_cert, "the backend got the new certificate");
        assert_eq!(
            gw.metrics()
                .await
                .get("sockgate_certificate_reloads_total", &[("result", "ok")]),
            1.0
        );
    })
    .await
    .unwrap();
}

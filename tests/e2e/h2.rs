//! HTTP/2 on a TLS listener: requests over h2 forwarded to an HTTP/1.1 backend, concurrent
//! streams that do not wait for each other, WebSockets over h2 (RFC 8441) bridged to an
//! HTTP/1.1 Upgrade, and a drain that closes them with 1001 before the GOAWAY.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::support::*;

/// What the backend saw of a WebSocket: its handshake's headers, then every Close code.
#[derive(Debug)]
enum Saw {
    Handshake(http::HeaderMap),
    Close(Option<u16>),
    /// A browser's page reported its result: the query of `/result`.
    Result(String),
}

struct Backend {
    addr: SocketAddr,
    /// Lets the `/slow` requests answer.
    release: Arc<Notify>,
    saw: mpsc::UnboundedReceiver<Saw>,
    /// Connections accepted.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

/// An HTTP/1.1 backend: `/slow` answers when released, a WebSocket upgrade on `/chat` is
/// accepted (with the first subprotocol offered) and echoed (`close:CODE` makes it close
/// with CODE), anything else gets a page listing the request's headers.
async fn backend() -> Backend {
    let (listener, addr) = listen().await;
    let release = Arc::new(Notify::new());
    let (tx, saw) = mpsc::unbounded_channel();
    let notify = release.clone();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (notify, tx) = (notify.clone(), tx.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (notify, tx) = (notify.clone(), tx.clone());
                    async move { Ok::<_, std::convert::Infallible>(answer(req, &notify, tx).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend {
        addr,
        release,
        saw,
        accepted,
    }
}

async fn answer(
    mut req: Request<Incoming>,
    release: &Notify,
    tx: mpsc::UnboundedSender<Saw>,
) -> hyper::Response<Full<Bytes>> {
    if req.uri().path() == "/slow" {
        release.notified().await;
        return hyper::Response::new(Full::new(Bytes::from("slow done\n")));
    }
    match req.uri().path() {
        "/index.html" => {
            let mut response = hyper::Response::new(Full::new(Bytes::from(PAGE)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
            return response;
        }
        "/result" => {
            let query = req.uri().query().unwrap_or("").to_owned();
            let _ = tx.send(Saw::Result(query));
            return hyper::Response::new(Full::default());
        }
        _ => {}
    }
    if req.uri().path().ends_with("/forbidden") {
        let mut response = hyper::Response::new(Full::new(Bytes::from("no\n")));
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let Some(key) = key.filter(|_| req.headers().contains_key(header::UPGRADE)) else {
        let mut page = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (name, value) in req.headers() {
            page.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
        }
        return hyper::Response::new(Full::new(Bytes::from(page)));
    };
    let protocol = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned());
    tx.send(Saw::Handshake(req.headers().clone())).unwrap();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = upgrade.await.unwrap();
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                // Gone without a Close.
                Message::Text(text) if text.as_str() == "drop" => return,
                Message::Text(text) if text.starts_with("close:") => {
                    let code: u16 = text["close:".len()..].parse().unwrap();
                    let frame = CloseFrame {
                        code: code.into(),
                        reason: "backend says bye".into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                }
                Message::Close(frame) => {
                    let _ = tx.send(Saw::Close(frame.map(|f| f.code.into())));
                    let _ = ws.flush().await;
                    break;
                }
                msg => {
                    let data = msg.is_text() || msg.is_binary();
                    if data && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = hyper::Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, "upgrade".parse().unwrap());
    headers.insert(header::UPGRADE, "websocket".parse().unwrap());
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.parse().unwrap());
    }
    response
}

/// The page a browser loads over HTTP/2: it opens a WebSocket on the same origin (which
/// Chromium then carries inside the HTTP/2 connection, RFC 8441), sends a message, reports
/// the echo, and closes with 1000.
const PAGE: &str = r#"<!doctype html>
<title>h2 websocket</title>
<script>
const report = (q) => fetch("/result?" + q);
const ws = new WebSocket("wss://" + location.host + "/chat", "chat.v1");
ws.onopen = () => ws.send("hello from chromium");
ws.onmessage = (e) => report("echo=" + encodeURIComponent(e.data) + "&protocol=" + ws.protocol)
    .then(() => ws.close(1000));
ws.onerror = () => report("error=1");
</script>
"#;

fn config(backend: SocketAddr, defaults: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
{defaults}
close_timeout = "2s"
drain_timeout = "10s"
drain_spread = "200ms"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  path_prefix = "/chat"
  backend = "app"

  [[listener.route]]
  name = "app"
  protocol = "http"
  backend = "app"

[[backend]]
name = "app"
servers = ["{backend}"]
"#
    )
}

struct Setup {
    pki: Pki,
    gw: Gateway,
    backend: Backend,
}

async fn setup() -> Setup {
    setup_with("").await
}

async fn setup_with(defaults: &str) -> Setup {
    let pki = Pki::new();
    let backend = backend().await;
    let gw = Gateway::start(pki.path(), &config(backend.addr, defaults)).await;
    Setup { pki, gw, backend }
}

type Sender = SendRequest<Empty<Bytes>>;

impl Setup {
    /// An HTTP/2 client offering `h2` and `http/1.1`, as browsers do; the gateway picks h2.
    /// The handle ends when the gateway closes the connection.
    async fn h2(&self) -> (Sender, tokio::task::JoinHandle<()>) {
        let config = client_config(&[&self.pki.pki.ca.cert], &[b"h2", b"http/1.1"]);
        let tls = tls_connect(self.gw.addr("edge"), config, "localhost").await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        (sender, conn)
    }

    async fn responses(&self, route: &str, code: &str) -> f64 {
        self.gw.metrics().await.get(
            "sockgate_http_responses_total",
            &[("listener", "edge"), ("route", route), ("code", code)],
        )
    }
}

async fn get(sender: &mut Sender, path: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut req = Request::get(format!("https://localhost{path}"));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("a response head within 10s")
    .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Sends an extended CONNECT (RFC 8441) for a WebSocket on `path`, offering `protocols`.
/// It needs the server's SETTINGS_ENABLE_CONNECT_PROTOCOL, which the answer to a first
/// request has surely come after.
async fn connect(sender: &mut Sender, path: &str, protocols: &str) -> hyper::Response<Incoming> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocols)
        .extension(Protocol::from_static("websocket"))
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer to the CONNECT within 10s")
        .unwrap()
}

/// Opens a WebSocket over an HTTP/2 stream (RFC 8441) on `path`, offering `protocols`.
async fn websocket(sender: &mut Sender, path: &str, protocols: &str) -> (H2Ws, http::HeaderMap) {
    let response = connect(sender, path, protocols).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (ws, headers)
}

async fn next_message(ws: &mut H2Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10s")
        .expect("the stream still open")
        .unwrap()
}

async fn backend_saw(backend: &mut Backend) -> Saw {
    tokio::time::timeout(Duration::from_secs(10), backend.saw.recv())
        .await
        .expect("the backend saw something within 10s")
        .unwrap()
}

#[tokio::test]
async fn requests_over_h2_reach_an_http1_backend_with_forwarding_headers() {
    let s = setup().await;
    let (mut sender, _conn) = s.h2().await;
    let cookies = [
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    let (status, page) = get(&mut sender, "/page?q=1", &cookies).await;
    assert_eq!(status, 200, "{page}");
    // An HTTP/1.1 request in origin form, with Host from :authority.
    assert!(page.starts_with("GET /page?q=1 HTTP/1.1\n"), "{page}");
    assert!(page.contains("\nhost: localhost\n"), "{page}");
    assert!(page.contains("\nx-forwarded-for: 127.0.0.1\n"), "{page}");
    assert!(page.contains("\nx-forwarded-proto: https\n"), "{page}");
    assert!(page.contains("\nx-forwarded-host: localhost\n"), "{page}");
    assert!(
        page.contains("\nforwarded: for=127.0.0.1;proto=https;host=\"localhost\"\n"),
        "{page}"
    );
    // RFC 9113 §8.2.3: split cookies joined for HTTP/1.1.
    assert!(page.contains("\ncookie: a=1; b=2\n"), "{page}");
    // Several requests on the one connection.
    for _ in 0..3 {
        assert_eq!(get(&mut sender, "/again", &[]).await.0, 200);
    }
    assert_eq!(s.responses("app", "200").await, 4.0);
    // One connection, counted once, its ALPN in `/connections`.
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[("listener", "edge"), ("protocol", "http")]
        ),
        1.0
    );
    let (_, live) = http_get(s.gw.admin(), "/connections").await;
    assert!(live.contains("\"tls.alpn\":\"h2\""), "{live}");

    // An HTTP/1.1 client on the same listener is served as before.
    let config = client_config(&[&s.pki.pki.ca.cert], &[b"http/1.1"]);
    let tls = tls_connect(s.gw.addr("edge"), config, "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = h1
        .send_request(
            Request::get("/h1")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(s.responses("app", "200").await, 5.0);
}

#[tokio::test]
async fn concurrent_streams_do_not_wait_behind_a_slow_one() {
    let s = setup().await;
    let (sender, _conn) = s.h2().await;
    let mut slow_sender = sender.clone();
    let slow = tokio::spawn(async move { get(&mut slow_sender, "/slow", &[]).await });
    // Let the slow request take the connection's backend session first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let fast: Vec<_> = (0..5)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move { get(&mut sender, &format!("/fast/{i}"), &[]).await })
        })
        .collect();
    for (i, task) in fast.into_iter().enumerate() {
        let (status, page) = task.await.unwrap();
        assert_eq!(status, 200);
        assert!(page.starts_with(&format!("GET /fast/{i} ")), "{page}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the fast streams took {:?}",
        started.elapsed()
    );
    assert!(
        !slow.is_finished(),
        "the slow stream answered before its release"
    );
    s.backend.release.notify_one();
    let (status, page) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, page.as_str()), (200, "slow done\n"));
    assert_eq!(s.responses("app", "200").await, 6.0);
}

/// Streams that find the connection's backend session busy keep the sessions they opened
/// for the streams after them: three rounds of five concurrent requests beside a slow one
/// need six backend connections, not sixteen.
#[tokio::test]
async fn concurrent_streams_reuse_the_backend_connections_they_opened() {
    let s = setup().await;
    let (sender, _conn) = s.h2().await;
    let mut slow_sender = sender.clone();
    let slow = tokio::spawn(async move { get(&mut slow_sender, "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        let fast: Vec<_> = (0..5)
            .map(|i| {
                let mut sender = sender.clone();
                tokio::spawn(async move { get(&mut sender, &format!("/r{round}/{i}"), &[]).await })
            })
            .collect();
        for task in fast {
            assert_eq!(task.await.unwrap().0, 200);
        }
        // The backend connections finish their responses and are ready again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = s
        .backend
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(accepted, 6, "backend connections for 16 requests");
    s.backend.release.notify_one();
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(s.responses("app", "200").await, 16.0);
}

#[tokio::test]
async fn websocket_over_h2_is_bridged_to_an_http1_upgrade_and_closes_both_ways() {
    let mut s = setup().await;
    let (mut sender, _conn) = s.h2().await;
    assert_eq!(get(&mut sender, "/", &[]).await.0, 200);
    let (mut ws, headers) = websocket(&mut sender, "/chat", "chat.v2, chat.v1").await;
    // The backend's choice of subprotocol comes back in the 200.
    assert_eq!(headers[header::SEC_WEBSOCKET_PROTOCOL], "chat.v2");
    let Saw::Handshake(seen) = backend_saw(&mut s.backend).await else {
        panic!("expected the handshake first");
    };
    // An RFC 6455 handshake toward the backend: a fresh key, version 13, the offer.
    assert_eq!(seen[header::UPGRADE], "websocket");
    assert_eq!(seen[header::CONNECTION], "upgrade");
    assert_eq!(seen[header::SEC_WEBSOCKET_VERSION], "13");
    assert_eq!(seen[header::SEC_WEBSOCKET_KEY].len(), 24);
    assert_eq!(seen[header::SEC_WEBSOCKET_PROTOCOL], "chat.v2, chat.v1");
    assert_eq!(seen[header::HOST], "localhost");
    assert_eq!(seen["x-forwarded-proto"], "https");

    for text in ["one", "two", "three"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(text));
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(vec![7u8; 100_000])
    );
    // Plain requests go on beside the WebSocket on the same connection.
    assert_eq!(get(&mut sender, "/beside", &[]).await.0, 200);

    // The backend closes with 4000: the client gets that code.
    ws.send(Message::text("close:4000")).await.unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected a Close, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Close(Some(4000))
    ));

    // A second WebSocket on the same connection; the client closes with 1000.
    let (mut ws, _) = websocket(&mut sender, "/chat", "chat.v1").await;
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Handshake(_)
    ));
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hello"));
    ws.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "".into(),
    }))
    .await
    .unwrap();
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Close(Some(1000))
    ));
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the Close reply, got {other:?}"),
    }

    let m = s.gw.metrics().await;
    let closes = |code: &str, initiator: &str| {
        m.get(
            "sockgate_websocket_closes_total",
            &[("route", "chat"), ("code", code), ("initiator", initiator)],
        )
    };
    assert_eq!(closes("other", "backend"), 1.0);
    assert_eq!(closes("1000", "client"), 1.0);
    let messages = m.get(
        "sockgate_websocket_messages_total",
        &[("route", "chat"), ("direction", "client_to_backend")],
    );
    // one, two, three, the binary, close:4000, hello.
    assert_eq!(messages, 6.0);
    assert_eq!(s.responses("chat", "200").await, 2.0);
}

#[tokio::test]
async fn drain_closes_websockets_inside_h2_with_1001_before_the_goaway() {
    let mut s = setup().await;
    let (mut sender, conn) = s.h2().await;
    assert_eq!(get(&mut sender, "/", &[]).await.0, 200);
    let (mut ws, _) = websocket(&mut sender, "/chat", "chat.v1").await;
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Handshake(_)
    ));
    ws.send(Message::text("before drain")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("before drain"));
    // A slow request in flight across the drain finishes.
    let mut slow_sender = sender.clone();
    let slow = tokio::spawn(async move { get(&mut slow_sender, "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    s.gw.handle.drain();
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a Close 1001, got {other:?}"),
    }
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Close(Some(1001))
    ));
    // No GOAWAY yet: the connection still takes a new stream while the WebSocket's
    // closing handshake is open.
    assert_eq!(get(&mut sender, "/after-close-frame", &[]).await.0, 200);
    assert!(!conn.is_finished());
    s.backend.release.notify_one();
    // The client answers the Close (tungstenite does on the next read); the stream ends.
    assert!(
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(slow.await.unwrap().0, 200);
    // Then the GOAWAY: no new stream is taken, and the connection closes.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the gateway closed the connection after the WebSocket's Close")
        .unwrap();
    assert!(
        sender
            .send_request(
                Request::get("https://localhost/")
                    .body(Empty::new())
                    .unwrap()
            )
            .await
            .is_err()
    );
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_websocket_closes_total",
            &[
                ("route", "chat"),
                ("code", "1001"),
                ("initiator", "gateway")
            ],
        ),
        1.0
    );
    tokio::time::timeout(Duration::from_secs(10), s.gw.handle.wait())
        .await
        .expect("gateway finished after the connection closed");
}

#[tokio::test]
async fn websocket_refusals_over_h2_come_back_as_they_came() {
    let s = setup().await;
    let (mut sender, _conn) = s.h2().await;
    assert_eq!(get(&mut sender, "/", &[]).await.0, 200);
    // The backend refuses the upgrade: its answer goes back as it came.
    let response = connect(&mut sender, "/chat/forbidden", "chat.v1").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"no\n");
    // No WebSocket route for the path: 404, as for an HTTP/1.1 upgrade.
    let response = connect(&mut sender, "/elsewhere", "chat.v1").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // The connection goes on.
    assert_eq!(get(&mut sender, "/still", &[]).await.0, 200);
    assert_eq!(s.responses("chat", "403").await, 1.0);
    assert_eq!(s.responses("", "404").await, 1.0);
}

#[tokio::test]
async fn an_h2_connection_without_streams_is_closed_after_handshake_timeout() {
    let s = setup_with(r#"handshake_timeout = "1s""#).await;
    let (mut sender, conn) = s.h2().await;
    assert_eq!(get(&mut sender, "/", &[]).await.0, 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection was closed within 5s")
        .unwrap();
    // Between one and two `handshake_timeout` of silence.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A client that sends nothing after choosing h2 is closed as well.
    let config = client_config(&[&s.pki.pki.ca.cert], &[b"h2"]);
    let mut tls = tls_connect(s.gw.addr("edge"), config, "localhost").await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        use tokio::io::AsyncReadExt;
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent h2 client was not closed within 8s"
    );

    // A WebSocket stream is not idle, however quiet.
    let (mut sender, conn) = s.h2().await;
    assert_eq!(get(&mut sender, "/", &[]).await.0, 200);
    let (mut ws, _) = websocket(&mut sender, "/chat", "chat.v1").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!conn.is_finished());
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still here"));
}

#[tokio::test]
async fn an_operator_close_gives_the_websockets_inside_1001_then_the_connection_closes() {
    let mut s = setup().await;
    let (mut sender, conn) = s.h2().await;
    assert_eq!(get(&mut sender, "/", &[]).await.0, 200);
    let (mut ws, _) = websocket(&mut sender, "/chat", "chat.v1").await;
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Handshake(_)
    ));
    // The connection's latest request is the WebSocket's: its route is `chat`.
    let (status, body) = http_request(s.gw.admin(), "DELETE", "/connections?route=chat").await;
    assert_eq!((status, body.trim()), (200, r#"{"closed":1}"#));
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a Close 1001, got {other:?}"),
    }
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Close(Some(1001))
    ));
    assert!(
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection closed after its WebSocket")
        .unwrap();
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_connections_active",
            &[("listener", "edge"), ("protocol", "http")]
        ),
        0.0
    );
}

/// A real browser: headless Chromium loads a page over HTTP/2 and opens a WebSocket, which
/// it carries inside that connection (RFC 8441). `scripts/test.sh` installs Chromium where
/// it can; elsewhere the test is skipped, saying so, but never under CI (`CI` set).
#[tokio::test]
async fn chromium_opens_a_websocket_over_h2() {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium on this CI machine: scripts/test.sh installs it (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium on this machine");
        return;
    };
    let mut s = setup().await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{}/index.html", s.gw.addr("edge").port());
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            // The test CA is not in the browser's store.
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match s.backend.saw.recv().await.unwrap() {
                Saw::Result(query) => return query,
                other => seen.push(other),
            }
        }
    })
    .await;
    let result =
        result.unwrap_or_else(|_| panic!("no result from the page in 60s; backend saw {seen:?}"));
    assert_eq!(result, "echo=hello%20from%20chromium&protocol=chat.v1");
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Close(Some(1000))
    ));
    child.kill().await.unwrap();
    // The WebSocket was accepted with a 200, which only HTTP/2 answers (HTTP/1.1 has 101).
    assert_eq!(s.responses("chat", "200").await, 1.0);
    assert_eq!(s.responses("chat", "101").await, 0.0);
    assert_eq!(
        s.gw.metrics().await.get(
            "sockgate_websocket_closes_total",
            &[("route", "chat"), ("code", "1000"), ("initiator", "client")],
        ),
        1.0
    );
}

#[tokio::test]
async fn a_lost_peer_over_h2_gets_the_same_close_codes() {
    let mut s = setup().await;
    let (mut sender, _conn) = s.h2().await;
    assert_eq!(get(&mut sender, "/", &[]).await.0, 200);

    // The backend vanishes without a Close: the client gets 1014 inside its stream.
    // (tungstenite does not know 1014, so the frames are read off the stream as they are.)
    let response = connect(&mut sender, "/chat", "chat.v1").await;
    assert_eq!(response.status(), StatusCode::OK);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut raw = RawWs::after_handshake(TokioIo::new(upgraded));
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Handshake(_)
    ));
    raw.send(0x1, b"drop").await;
    let (opcode, payload) = raw.read_frame().await;
    assert_eq!(opcode, 0x8, "expected a Close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1014);
    raw.send(0x8, &payload[..2]).await;
    assert!(raw.at_eof().await, "the stream did not end after the Close");

    // The client's stream goes away without a Close: the backend gets 1001.
    let (ws, _) = websocket(&mut sender, "/chat", "chat.v1").await;
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Handshake(_)
    ));
    drop(ws);
    assert!(matches!(
        backend_saw(&mut s.backend).await,
        Saw::Close(Some(1001))
    ));
    // The connection itself goes on.
    assert_eq!(get(&mut sender, "/still", &[]).await.0, 200);
    let m = s.gw.metrics().await;
    let closes = |code: &str| {
        m.get(
            "sockgate_websocket_closes_total",
            &[("route", "chat"), ("code", code), ("initiator", "gateway")],
        )
    };
    assert_eq!((closes("1014"), closes("1001")), (1.0, 1.0));
}

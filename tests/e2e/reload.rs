//! Reload (POST /reload, SIGHUP) and the spread of drain closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn ws_config(route: &str, backend: SocketAddr, spread: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
drain_spread = "{spread}"
drain_timeout = "10s"
close_timeout = "1s"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "{route}"
  protocol = "websocket"
  backend = "chat"

[[backend]]
name = "chat"
servers = ["{backend}"]
"#
    )
}

async fn ws_client(
    addr: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    tokio_tungstenite::connect_async(format!("ws://{addr}/chat"))
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn reload_closes_connections_of_a_removed_route_with_1012_and_refuses_a_bad_config() {
    let pki = Pki::new();
    let backend = ws_echo().await;
    let gw = Gateway::start(pki.path(), &ws_config("chat", backend, "200ms")).await;
    let config_path = pki.path().join("sockgate.toml");
    let mut ws = ws_client(gw.addr("edge")).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));

    // A broken config is refused whole, with file:line:col, and the old one keeps serving.
    std::fs::write(&config_path, "[[listener]]\nname = 1\n").unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("sockgate.toml:2:8"), "{body}");
    ws.send(Message::text("still")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still"));

    // The route is renamed: the connection on the old one gets Close 1012 (service restart).
    std::fs::write(&config_path, ws_config("chat-v2", backend, "200ms")).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("no Close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close, Some(1012));

    // New connections run on the new config.
    let mut ws = ws_client(gw.addr("edge")).await;
    ws.send(Message::text("new")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("new"));
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.get("sockgate_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_websocket_closes_total",
            &[
                ("route", "chat"),
                ("code", "1012"),
                ("initiator", "gateway")
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn drain_spreads_the_closes_over_drain_spread() {
    let pki = Pki::new();
    let backend = ws_echo().await;
    let gw = Gateway::start(pki.path(), &ws_config("chat", backend, "1s")).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut ws = ws_client(gw.addr("edge")).await;
        ws.send(Message::text("x")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        clients.push(ws);
    }
    let started = Instant::now();
    gw.handle.drain();
    let waits = clients.into_iter().map(|mut ws| async move {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
                    return started.elapsed();
                }
                Some(Ok(_)) => continue,
                other => panic!("no Close frame: {other:?}"),
            }
        }
    });
    let arrivals = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(waits),
    )
    .await
    .unwrap();
    let first = arrivals.iter().min().unwrap();
    let last = arrivals.iter().max().unwrap();
    // 20 uniform draws over 1s: all inside a 300ms slice has odds below 1e-9.
    assert!(
        *last - *first > Duration::from_millis(300),
        "closes not spread: {arrivals:?}"
    );
    assert!(
        *last < Duration::from_millis(2500),
        "closes late: {arrivals:?}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_adds_a_listener() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sockgate.toml");
    let listener = |name: &str, addr: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\n\n  [[listener.route]]\n  name = \"echo\"\n  protocol = \"tcp\"\n  backend = \"echo\"\n\n"
        )
    };
    let backend = format!("[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n");
    std::fs::write(
        &config,
        format!("{}{backend}", listener("one", "127.0.0.1:0")),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg], tempfile::tempdir().unwrap());
    gw.ready().await;

    std::fs::write(
        &config,
        format!(
            "{}{}{backend}",
            listener("one", "127.0.0.1:0"),
            listener("two", "127.0.0.1:0")
        ),
    )
    .unwrap();
    gw.signal("HUP");
    // The ready file is rewritten with the new listener's address.
    let ready = gw.dir.path().join("ready.json");
    let mut second = None;
    for _ in 0..250 {
        let text = std::fs::read_to_string(&ready).unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(addr) = parsed["listeners"]["two"].as_str() {
            second = Some(addr.parse::<SocketAddr>().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second =
        second.unwrap_or_else(|| panic!("listener `two` never appeared:\n{}", gw.stderr()));
    let mut tcp = TcpStream::connect(second).await.unwrap();
    tcp.write_all(b"reloaded").await.unwrap();
    let mut got = [0u8; 8];
    tcp.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"reloaded");
    assert!(gw.stderr().contains("config reloaded"), "{}", gw.stderr());
}

/// An HTTP backend that answers `NAME PATH`, after `?delay=MS` if the query says so, and
/// reports the end of each of its connections.
async fn named_backend(
    name: &'static str,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use http_body_util::Full;
    use hyper::body::Bytes;

    let (listener, addr) = listen().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let delay = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("delay="))
                            .and_then(|ms| ms.parse().ok())
                            .unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let text = format!("{name} {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

fn http_config(routes: &[(&str, &str, &str)], backends: &[(&str, SocketAddr)]) -> String {
    let mut text = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n",
    );
    for (name, prefix, backend) in routes {
        text.push_str(&format!(
            "\n  [[listener.route]]\n  name = \"{name}\"\n  protocol = \"http\"\n  path_prefix = \"{prefix}\"\n  backend = \"{backend}\"\n"
        ));
    }
    for (name, addr) in backends {
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\nservers = [\"{addr}\"]\n"
        ));
    }
    text
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>;

async fn keep_alive_client(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut Sender, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("an answer within 5s")
        .expect("the client connection is still open");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn reload_to(gw: &Gateway, config_path: &std::path::Path, text: &str) {
    std::fs::write(config_path, text).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_keep_alive_http_connection_routes_each_request_on_the_current_config() {
    let pki = Pki::new();
    let (one, _) = named_backend("one").await;
    let gw = Gateway::start(
        pki.path(),
        &http_config(
            &[("app", "/app", "one"), ("old", "/old", "one")],
            &[("one", one)],
        ),
    )
    .await;
    let config_path = pki.path().join("sockgate.toml");
    let mut client = keep_alive_client(gw.addr("edge")).await;
    assert_eq!(get(&mut client, "/app/x").await, (200, "one /app/x".into()));

    // The route the connection last used is removed, another one added.
    reload_to(
        &gw,
        &config_path,
        &http_config(
            &[("old", "/old", "one"), ("new", "/new", "one")],
            &[("one", one)],
        ),
    )
    .await;
    // Same connection: the removed route is gone, the new one is there.
    assert_eq!(get(&mut client, "/app/x").await.0, 404);
    assert_eq!(get(&mut client, "/new/y").await, (200, "one /new/y".into()));
    assert_eq!(get(&mut client, "/old/z").await, (200, "one /old/z".into()));
    // A WebSocket upgrade would run under the close the reload requested: it is sent to a
    // new connection instead.
    let upgrade = http::Request::get("/old/ws")
        .header("host", "localhost")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.send_request(upgrade).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["connection"], "close");
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_connections_total", &[("listener", "edge")]),
        1.0,
        "one client connection served every request"
    );
}

#[tokio::test]
async fn a_removed_backend_finishes_its_response_then_its_connection_closes() {
    let pki = Pki::new();
    let (one, mut one_closed) = named_backend("one").await;
    let (two, _) = named_backend("two").await;
    let gw = Gateway::start(
        pki.path(),
        &http_config(&[("app", "/", "one")], &[("one", one)]),
    )
    .await;
    let config_path = pki.path().join("sockgate.toml");
    let mut client = keep_alive_client(gw.addr("edge")).await;
    assert_eq!(get(&mut client, "/warm").await, (200, "one /warm".into()));

    // A slow request is in flight on backend `one` when the reload removes it.
    let (slow, ()) = tokio::join!(get(&mut client, "/slow?delay=600"), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        reload_to(
            &gw,
            &config_path,
            &http_config(&[("app", "/", "two")], &[("two", two)]),
        )
        .await;
    });
    assert_eq!(slow, (200, "one /slow".into()));
    // Then the connection to the removed backend closes, and the client's connection,
    // still open, goes to the new one.
    tokio::time::timeout(Duration::from_secs(2), one_closed.recv())
        .await
        .expect("the connection to the removed backend closed")
        .unwrap();
    assert_eq!(get(&mut client, "/next").await, (200, "two /next".into()));
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn reloads_of_a_large_config_give_the_freed_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sockgate.toml");
    // 10,000 routes on their own hosts, each to its own backend: the shape of
    // bench/config-scale.py.
    let mut text = String::from("[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "  [[listener.route]]\n  name = \"r{i}\"\n  host = \"h{i}.example.com\"\n  backend = \"b{i}\"\n"
        ));
    }
    for i in 0..10_000 {
        text.push_str(&format!(
            "[[backend]]\nname = \"b{i}\"\nservers = [\"127.0.0.1:{}\"]\n",
            1024 + i
        ));
    }
    std::fs::write(&config, text).unwrap();
    let config_arg = config.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg], tempfile::tempdir().unwrap());
    gw.ready().await;
    let pid = gw.child.as_ref().unwrap().id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = rss_kib(pid);

    // Each reload builds a second snapshot beside the first, then drops the old one. The
    // allocator would keep those pages resident: RSS settled at 2.2 to 2.6 times the
    // start figure with bench/config-scale.py's configs before the gateway trimmed.
    for n in 1..=3 {
        gw.signal("HUP");
        // A debug build on a loaded machine: up to 30 s for a reload of this size.
        for _ in 0..1500 {
            if gw.stderr().matches("config reloaded").count() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            gw.stderr().matches("config reloaded").count() >= n,
            "reload {n} did not finish:\n{}",
            gw.stderr()
        );
    }
    let mut settled = 0;
    for _ in 0..50 {
        settled = rss_kib(pid);
        if settled * 2 <= started * 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled * 2 <= started * 3,
        "RSS {started} KiB at start and still {settled} KiB after three reloads"
    );
}

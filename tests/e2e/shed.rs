//! `POST /connections/shed` (rebalancing after a scale-out) and `access_log_interval`
//! (progress events for long-lived connections): what clients and backends see, the answer,
//! `sockgate_shed_total`, and the access log's events as the binary writes them.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn config(ws_backend: SocketAddr, tcp_backend: SocketAddr, defaults: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
close_timeout = "2s"
{defaults}

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  backend = "chat"

  [[listener.route]]
  name = "game"
  protocol = "tcp"
  backend = "game"

[[backend]]
name = "chat"
servers = ["{ws_backend}"]

[[backend]]
name = "game"
servers = ["{tcp_backend}"]
"#
    )
}

/// What a client task reports.
#[derive(Debug)]
enum Saw {
    /// The echo of the latest probe came back.
    Echo(usize),
    /// The connection was closed: the WebSocket Close code (`None` for TCP's end), and when.
    Closed(usize, Option<u16>, Instant),
}

/// A client in a task of its own: answers each probe sent on its channel with an echo
/// report, and reports how its connection ended.
struct Client {
    probe: mpsc::UnboundedSender<()>,
}

async fn ws_client(gw: SocketAddr, index: usize, saw: mpsc::UnboundedSender<Saw>) -> Client {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{gw}/chat"))
        .await
        .unwrap();
    // Through the relay before the shed: the connection is routed and counted.
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let (probe, mut probes) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map(|f| u16::from(f.code));
                        let _ = saw.send(Saw::Closed(index, code, Instant::now()));
                        let _ = ws.close(None).await;
                        return;
                    }
                    Some(Ok(Message::Text(_))) => {
                        let _ = saw.send(Saw::Echo(index));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        let _ = saw.send(Saw::Closed(index, Some(1006), Instant::now()));
                        return;
                    }
                },
                Some(()) = probes.recv() => {
                    let _ = ws.send(Message::text(format!("probe {index}"))).await;
                }
            }
        }
    });
    Client { probe }
}

async fn tcp_client(gw: SocketAddr, index: usize, saw: mpsc::UnboundedSender<Saw>) -> Client {
    let mut tcp = TcpStream::connect(gw).await.unwrap();
    tcp.write_all(b"hello\n").await.unwrap();
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 6 {
        let n = tcp.read(&mut buf[got..]).await.unwrap();
        assert!(n > 0, "the TCP echo ended early");
        got += n;
    }
    let (probe, mut probes) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                n = tcp.read(&mut buf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = saw.send(Saw::Closed(index, None, Instant::now()));
                        return;
                    }
                    Ok(_) => {
                        let _ = saw.send(Saw::Echo(index));
                    }
                },
                Some(()) = probes.recv() => {
                    let _ = tcp.write_all(b"probe\n").await;
                }
            }
        }
    });
    Client { probe }
}

struct Fleet {
    gw: Gateway,
    _dir: tempfile::TempDir,
    backend: mpsc::UnboundedReceiver<BackendSaw>,
    clients: Vec<Client>,
    saw: mpsc::UnboundedReceiver<Saw>,
}

/// A gateway with `websockets` WebSocket clients (indexes first) and `tcps` TCP clients.
async fn fleet(websockets: usize, tcps: usize) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let (ws_backend, backend) = scripted_ws_backend().await;
    let gw = Gateway::start(dir.path(), &config(ws_backend, tcp_echo().await, "")).await;
    let (tx, saw) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for i in 0..websockets {
        clients.push(ws_client(gw.addr("edge"), i, tx.clone()).await);
    }
    for i in websockets..websockets + tcps {
        clients.push(tcp_client(gw.addr("edge"), i, tx.clone()).await);
    }
    assert_eq!(gw.handle.connections(), websockets + tcps);
    Fleet {
        gw,
        _dir: dir,
        backend,
        clients,
        saw,
    }
}

impl Fleet {
    async fn shed(&self, query: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_request(
            self.gw.admin(),
            "POST",
            &format!("/connections/shed?{query}"),
        )
        .await;
        (status, serde_json::from_str(&body).unwrap())
    }

    /// Closes reported within `window`: (index, code, when).
    async fn closes_within(&mut self, window: Duration) -> Vec<(usize, Option<u16>, Instant)> {
        let deadline = Instant::now() + window;
        let mut closed = Vec::new();
        while let Ok(Some(saw)) = tokio::time::timeout_at(deadline, self.saw.recv()).await {
            if let Saw::Closed(i, code, at) = saw {
                closed.push((i, code, at));
            }
        }
        closed
    }

    /// Probes every client not in `closed` and waits for all their echoes.
    async fn survivors_echo(&mut self, closed: &[usize]) {
        let alive: Vec<usize> = (0..self.clients.len())
            .filter(|i| !closed.contains(i))
            .collect();
        for &i in &alive {
            self.clients[i].probe.send(()).unwrap();
        }
        let mut echoed = Vec::new();
        while echoed.len() < alive.len() {
            match tokio::time::timeout(Duration::from_secs(5), self.saw.recv()).await {
                Ok(Some(Saw::Echo(i))) => echoed.push(i),
                other => panic!("a surviving client did not echo: {other:?} (echoed {echoed:?})"),
            }
        }
        echoed.sort_unstable();
        assert_eq!(echoed, alive);
    }

    async fn shed_total(&self) -> f64 {
        self.gw.metrics().await.get("sockgate_shed_total", &[])
    }
}

#[tokio::test]
async fn shedding_half_closes_6_of_12_spread_over_the_window_websockets_with_1012() {
    let mut f = fleet(8, 4).await;
    let asked = Instant::now();
    let (status, body) = f.shed("fraction=0.5&spread=1s").await;
    assert_eq!((status, body), (200, serde_json::json!({ "picked": 6 })));
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "answered at once, not after the window"
    );

    let closed = f.closes_within(Duration::from_millis(1500)).await;
    assert_eq!(closed.len(), 6, "{closed:?}");
    for (i, code, at) in &closed {
        let expected = if *i < 8 { Some(1012) } else { None };
        assert_eq!(*code, expected, "client {i}");
        assert!(
            *at - asked < Duration::from_millis(1400),
            "client {i} closed late"
        );
    }
    let first = closed.iter().map(|c| c.2).min().unwrap();
    let last = closed.iter().map(|c| c.2).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(100),
        "closes not spread over the window: all within {:?}",
        last - first
    );

    // The backend side of each WebSocket shed got 1012 too.
    let websockets_shed = closed.iter().filter(|c| c.0 < 8).count();
    for _ in 0..websockets_shed {
        assert_eq!(
            backend_close(&mut f.backend).await,
            BackendSaw::Close(Some(1012))
        );
    }

    let indexes: Vec<usize> = closed.iter().map(|c| c.0).collect();
    f.survivors_echo(&indexes).await;
    assert_eq!(f.shed_total().await, 6.0);
    let metrics = f.gw.metrics().await;
    assert_eq!(
        metrics.get(
            "sockgate_shed_total",
            &[("listener", "edge"), ("protocol", "websocket")]
        ),
        websockets_shed as f64
    );
    assert_eq!(
        metrics.get(
            "sockgate_websocket_closes_total",
            &[
                ("route", "chat"),
                ("code", "1012"),
                ("initiator", "gateway")
            ]
        ),
        websockets_shed as f64
    );
    eventually("the shed connections leave the live table", || async {
        f.gw.handle.connections() == 6
    })
    .await;
    // Nothing more is closed once the window is over.
    assert!(f.closes_within(Duration::from_millis(300)).await.is_empty());
}

#[tokio::test]
async fn shedding_a_quarter_of_40_websockets_closes_10_with_1012_and_leaves_30_untouched() {
    let mut f = fleet(40, 0).await;
    let (status, body) = f.shed("fraction=0.25&spread=1s").await;
    assert_eq!((status, body), (200, serde_json::json!({ "picked": 10 })));
    let closed = f.closes_within(Duration::from_millis(1500)).await;
    assert_eq!(closed.len(), 10, "{closed:?}");
    assert!(closed.iter().all(|c| c.1 == Some(1012)), "{closed:?}");
    let first = closed.iter().map(|c| c.2).min().unwrap();
    let last = closed.iter().map(|c| c.2).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(300),
        "{:?}",
        last - first
    );
    for _ in 0..10 {
        assert_eq!(
            backend_close(&mut f.backend).await,
            BackendSaw::Close(Some(1012))
        );
    }
    let indexes: Vec<usize> = closed.iter().map(|c| c.0).collect();
    f.survivors_echo(&indexes).await;
    assert_eq!(f.shed_total().await, 10.0);
}

#[tokio::test]
async fn filters_pick_only_from_their_route_and_backend_and_nothing_is_picked_twice() {
    let mut f = fleet(3, 4).await;
    // Nothing is both on route chat and backend game.
    let (status, body) = f.shed("route=chat&backend=game&fraction=1&spread=0s").await;
    assert_eq!((status, body), (200, serde_json::json!({ "picked": 0 })));

    // ceil(0.25 × 4) = 1 of the TCP connections, then at once the rest of them, twice
    // over: a connection picked by the first shed is not picked again.
    let (_, body) = f.shed("route=game&fraction=0.25&spread=300ms").await;
    assert_eq!(body, serde_json::json!({ "picked": 1 }));
    let (_, body) = f
        .shed("route=game&backend=game&fraction=1&spread=200ms")
        .await;
    assert_eq!(body, serde_json::json!({ "picked": 3 }));
    let (_, body) = f.shed("backend=game&fraction=1&spread=0s").await;
    assert_eq!(body, serde_json::json!({ "picked": 0 }));

    let closed = f.closes_within(Duration::from_millis(800)).await;
    let mut indexes: Vec<usize> = closed.iter().map(|c| c.0).collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        vec![3, 4, 5, 6],
        "only the TCP route's connections"
    );
    f.survivors_echo(&indexes).await;
    assert_eq!(f.shed_total().await, 4.0);
    assert_eq!(
        f.gw.metrics()
            .await
            .get("sockgate_shed_total", &[("protocol", "tcp")]),
        4.0
    );

    // An operator's close may combine the filters the same way.
    let (status, body) = http_request(
        f.gw.admin(),
        "DELETE",
        "/connections?route=chat&backend=chat",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{\"closed\":3}"));
    let closed = f.closes_within(Duration::from_millis(800)).await;
    assert_eq!(closed.len(), 3);
    assert!(closed.iter().all(|c| c.1 == Some(1001)), "{closed:?}");
    assert_eq!(
        f.shed_total().await,
        4.0,
        "an operator's close is not a shed"
    );
}

#[tokio::test]
async fn a_kept_alive_http_connection_is_closed_by_a_shed_after_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let app = ws_echo().await;
    let gw = Gateway::start(
        dir.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{{ name = "web", protocol = "http", backend = "web" }}]

[[backend]]
name = "web"
servers = ["{app}"]
"#
        ),
    )
    .await;
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    let (status, body) = http_request(
        gw.admin(),
        "POST",
        "/connections/shed?route=web&fraction=1&spread=0s",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{\"picked\":1}"));
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the idle kept-alive connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(
        gw.metrics()
            .await
            .get("sockgate_shed_total", &[("protocol", "http")]),
        1.0
    );
}

#[tokio::test]
async fn bad_shed_parameters_get_400_with_what_is_allowed() {
    let f = fleet(1, 0).await;
    for (query, says) in [
        ("fraction=0&spread=1s", "greater than 0 and at most 1"),
        ("fraction=1.5&spread=1s", "greater than 0 and at most 1"),
        ("fraction=-0.1&spread=1s", "greater than 0 and at most 1"),
        ("fraction=NaN&spread=1s", "greater than 0 and at most 1"),
        ("fraction=half&spread=1s", "greater than 0 and at most 1"),
        ("spread=1s", "`fraction` is missing"),
        ("fraction=0.5", "`spread` is missing"),
        ("fraction=0.5&spread=2h", "longer than 1h"),
        ("fraction=0.5&spread=soon", "is not a duration"),
        ("fraction=0.5&spread=10", "is not a duration"),
        (
            "fraction=0.5&spread=1s&listener=edge",
            "unknown parameter `listener`",
        ),
        ("fraction=0.5&fraction=0.2&spread=1s", "more than once"),
        ("fraction=0.5&spread=1s&route=a&route=b", "more than once"),
    ] {
        let (status, body) = f.shed(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(says), "{query}: {error}");
    }
    let (status, _) = http_request(f.gw.admin(), "GET", "/connections/shed").await;
    assert_eq!(status, 405);
    let (status, body) = http_request(f.gw.admin(), "DELETE", "/connections?fraction=1").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(f.shed_total().await, 0.0);
    assert_eq!(f.gw.handle.connections(), 1, "nothing was closed");
}

/// The access log's events in a JSON-lines log, each as its `fields` object.
fn access_events(log: &str, message: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["target"] == "sockgate::access")
        .filter_map(|event| event["fields"].as_object().cloned())
        .filter(|fields| fields["message"] == message)
        .collect()
}

#[tokio::test]
async fn long_lived_connections_get_progress_events_with_the_final_events_fields() {
    let (ws_backend, _backend) = scripted_ws_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("sockgate.toml");
    std::fs::write(
        &config_path,
        config(ws_backend, tcp_echo().await, "access_log_interval = \"1s\""),
    )
    .unwrap();
    let config_arg = config_path.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg, "--log-format", "json"], dir);
    let ready = gw.ready().await;
    let edge: SocketAddr = ready["listeners"]["edge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{edge}/chat"))
        .await
        .unwrap();
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    // Shorter than the interval: no progress event.
    let mut short = TcpStream::connect(edge).await.unwrap();
    short.write_all(b"brief\n").await.unwrap();
    let mut buf = [0u8; 64];
    assert!(short.read(&mut buf).await.unwrap() > 0);
    drop(short);

    // Traffic every 250 ms for 3.2 s: the counts grow between progress events.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3200) {
        ws.send(Message::text("tick")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("tick"));
        tcp.write_all(b"tick\n").await.unwrap();
        let mut got = 0;
        while got < 5 {
            got += tcp.read(&mut buf[got..]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(tcp);

    eventually("three final access-log events", || async {
        access_events(&gw.stderr(), "connection finished").len() == 3
    })
    .await;
    let log = gw.stderr();
    let finished = access_events(&log, "connection finished");
    let progress = access_events(&log, "connection progress");
    let outcome_fields = ["outcome", "closed_by", "error", "websocket.close_code"];
    for protocol in ["websocket", "tcp"] {
        let last = finished
            .iter()
            .filter(|f| f["protocol"] == protocol)
            .max_by_key(|f| f["duration_ms"].as_f64().unwrap() as u64)
            .unwrap();
        let id = &last["conn.id"];
        let events: Vec<_> = progress.iter().filter(|f| &f["conn.id"] == id).collect();
        assert!(
            events.len() >= 2,
            "{protocol}: {} progress events in 3.2 s at a 1 s interval:\n{log}",
            events.len()
        );
        let mut previous = (0, 0.0);
        for event in &events {
            // The final event's fields, less how it ended.
            let mut expected: Vec<&String> = last
                .keys()
                .filter(|k| !outcome_fields.contains(&k.as_str()) && *k != "message")
                .collect();
            let mut names: Vec<&String> = event.keys().filter(|k| *k != "message").collect();
            expected.sort();
            names.sort();
            assert_eq!(names, expected, "{protocol}");
            let bytes = event["bytes_client_to_backend"].as_u64().unwrap();
            let duration = event["duration_ms"].as_f64().unwrap();
            assert!(
                duration >= 1000.0,
                "{protocol}: an event before the interval"
            );
            assert!(
                bytes > previous.0,
                "{protocol}: bytes did not grow: {events:?}"
            );
            assert!(duration > previous.1);
            previous = (bytes, duration);
            assert_eq!(event["route"], last["route"]);
            assert_eq!(event["upstream.address"], last["upstream.address"]);
        }
        assert!(previous.0 <= last["bytes_client_to_backend"].as_u64().unwrap());
        if protocol == "websocket" {
            let first = events[0]["messages_client_to_backend"].as_u64().unwrap();
            assert!(first >= 1 && first < last["messages_client_to_backend"].as_u64().unwrap());
        }
    }
    let short_id = &finished
        .iter()
        .min_by_key(|f| f["duration_ms"].as_f64().unwrap() as u64)
        .unwrap()["conn.id"];
    assert!(
        progress.iter().all(|f| &f["conn.id"] != short_id),
        "the connection shorter than the interval got a progress event"
    );
}

#[test]
fn check_refuses_an_access_log_interval_under_1s_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockgate.toml");
    std::fs::write(
        &path,
        "[defaults]\naccess_log_interval = \"500ms\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\nroute = [{ name = \"r\", backend = \"b\" }]\n\n[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let out = Binary::command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:23: `access_log_interval` = \"500ms\" is shorter than 1s",
            path.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint: write \"1s\" or more"), "{stderr}");
}

#[tokio::test]
async fn a_reload_sets_and_removes_access_log_interval() {
    let (ws_backend, _backend) = scripted_ws_backend().await;
    let tcp_backend = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("sockgate.toml");
    std::fs::write(&config_path, config(ws_backend, tcp_backend, "")).unwrap();
    let config_arg = config_path.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg, "--log-format", "json"], dir);
    let ready = gw.ready().await;
    let edge: SocketAddr = ready["listeners"]["edge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut tcp = TcpStream::connect(edge).await.unwrap();
    tcp.write_all(b"hello\n").await.unwrap();
    let mut buf = [0u8; 16];
    assert!(tcp.read(&mut buf).await.unwrap() > 0);

    let reloads = |log: &str| log.matches("config reloaded").count();
    let progress = |log: &str| access_events(log, "connection progress").len();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(progress(&gw.stderr()), 0, "no interval, no progress event");

    std::fs::write(
        &config_path,
        config(ws_backend, tcp_backend, "access_log_interval = \"1s\""),
    )
    .unwrap();
    gw.signal("HUP");
    eventually(
        "a progress event after the reload set the interval",
        || async { progress(&gw.stderr()) >= 1 },
    )
    .await;

    std::fs::write(&config_path, config(ws_backend, tcp_backend, "")).unwrap();
    gw.signal("HUP");
    eventually("the second reload", || async { reloads(&gw.stderr()) == 2 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_removal = progress(&gw.stderr());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        progress(&gw.stderr()),
        after_removal,
        "progress events after the reload removed the interval"
    );
    tcp.write_all(b"still\n").await.unwrap();
    assert!(
        tcp.read(&mut buf).await.unwrap() > 0,
        "the connection kept running"
    );
}

#[tokio::test]
async fn an_http_request_in_flight_is_answered_before_a_shed_closes_its_connection() {
    // A backend that answers 400 ms after the request head.
    let (listener, app) = listen().await;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                    .await;
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{{ name = "web", protocol = "http", backend = "web" }}]

[[backend]]
name = "web"
servers = ["{app}"]
"#
        ),
    )
    .await;
    let mut tcp = TcpStream::connect(gw.addr("edge")).await.unwrap();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    eventually("the request is routed", || async {
        http_get(gw.admin(), "/connections")
            .await
            .1
            .contains("\"route\":\"web\"")
    })
    .await;
    let (status, body) =
        http_request(gw.admin(), "POST", "/connections/shed?fraction=1&spread=0s").await;
    assert_eq!((status, body.as_str()), (200, "{\"picked\":1}"));
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response))
        .await
        .expect("the connection closes after its response")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nslow"), "{response}");
}

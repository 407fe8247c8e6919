//! WebSocket closes: every case asserted on the Close code both sides receive, and on
//! `sockgate_websocket_closes_total`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::support::*;

type Client = WebSocketStream<TlsStream<TcpStream>>;

fn config(backend: SocketAddr, route_extra: &str, defaults: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
close_timeout = "2s"
drain_timeout = "10s"
drain_spread = "300ms"
{defaults}

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  backend = "chat"
  {route_extra}

[[backend]]
name = "chat"
servers = ["{backend}"]
"#
    )
}

struct Setup {
    pki: Pki,
    gw: Gateway,
    backend: tokio::sync::mpsc::UnboundedReceiver<BackendSaw>,
}

async fn setup(route_extra: &str, defaults: &str) -> Setup {
    let pki = Pki::new();
    let (addr, backend) = scripted_ws_backend().await;
    let gw = Gateway::start(pki.path(), &config(addr, route_extra, defaults)).await;
    Setup { pki, gw, backend }
}

impl Setup {
    async fn client(&self) -> Client {
        let tls = tls_connect(
            self.gw.addr("edge"),
            self.pki.client_config(&[]),
            "localhost",
        )
        .await;
        tokio_tungstenite::client_async("wss://localhost/chat", tls)
            .await
            .unwrap()
            .0
    }

    async fn closes(&self, code: &str, initiator: &str) -> f64 {
        self.gw.metrics().await.get(
            "sockgate_websocket_closes_total",
            &[("route", "chat"), ("code", code), ("initiator", initiator)],
        )
    }
}

/// Reads until a Close frame arrives; returns its code. Panics on a stream that ends
/// without one (what a client would see as 1006).
async fn client_close(ws: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a Close within 10s")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("stream failed before a Close (abnormal closure): {e}"),
            None => panic!("stream ended without a Close (abnormal closure)"),
        }
    }
}

/// After the closing handshake the gateway ends TCP: the stream reports its end.
async fn stream_ends(ws: &mut Client) {
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "TCP not closed after the closing handshake");
}

async fn echo(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
}

#[tokio::test]
async fn client_close_goes_through_and_the_reply_comes_back() {
    let mut s = setup("", "").await;
    let mut ws = s.client().await;
    echo(&mut ws, "hi").await;
    ws.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1000))
    );
    assert_eq!(client_close(&mut ws).await.0, 1000);
    stream_ends(&mut ws).await;
    assert_eq!(s.closes("1000", "client").await, 1.0);
}

#[tokio::test]
async fn backend_close_goes_through_and_the_reply_comes_back() {
    let mut s = setup("", "").await;
    let mut ws = s.client().await;
    ws.send(Message::text("close:4000")).await.unwrap();
    let (code, reason) = client_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4000, "backend says bye"));
    // tungstenite queued a reply with the same code when it read the Close; flush sends it.
    let _ = ws.flush().await;
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(4000))
    );
    stream_ends(&mut ws).await;
    // An application code: counted as `other` (one series for 3000–4999).
    assert_eq!(s.closes("other", "backend").await, 1.0);
}

#[tokio::test]
async fn drain_sends_1001_to_both_sides_and_readyz_turns_503() {
    let mut s = setup("", "").await;
    let mut ws = s.client().await;
    echo(&mut ws, "before drain").await;
    s.gw.handle.drain();
    assert_eq!(http_get(s.gw.admin(), "/readyz").await.0, 503);
    let (code, _) = client_close(&mut ws).await;
    assert_eq!(code, 1001);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    stream_ends(&mut ws).await;
    assert_eq!(s.closes("1001", "gateway").await, 1.0);
    tokio::time::timeout(Duration::from_secs(10), s.gw.handle.wait())
        .await
        .expect("gateway finished after the WebSocket closed");
}

#[tokio::test]
async fn backend_lost_without_close_gives_the_client_1014() {
    let s = setup("", "").await;
    // tungstenite turns a received 1014 into 1002 (it does not know the code), so this
    // client reads the frames off the wire itself.
    let tls = tls_connect(s.gw.addr("edge"), s.pki.client_config(&[]), "localhost").await;
    let mut ws = RawWs::handshake(tls, "/chat").await;
    ws.send(0x1, b"drop").await;
    let (opcode, payload) = ws.read_frame().await;
    assert_eq!(opcode, 0x8, "expected a Close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1014);
    let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
    assert!(reason.contains("backend"), "{reason}");
    // Answer the Close; the gateway then ends TCP.
    ws.send(0x8, &payload[..2]).await;
    assert!(
        ws.at_eof().await,
        "TCP not closed after the closing handshake"
    );
    assert_eq!(s.closes("1014", "gateway").await, 1.0);
}

#[tokio::test]
async fn client_lost_without_close_gives_the_backend_1001() {
    let mut s = setup("", "").await;
    let mut ws = s.client().await;
    echo(&mut ws, "x").await;
    // Cut TCP under the WebSocket: no Close frame.
    ws.get_mut().get_mut().0.shutdown().await.unwrap();
    drop(ws);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    eventually("close counted", || async {
        s.closes("1001", "gateway").await == 1.0
    })
    .await;
}

#[tokio::test]
async fn protocol_violation_gets_1002_and_the_backend_1001() {
    let mut s = setup("", "").await;
    let mut ws = s.client().await;
    echo(&mut ws, "fine so far").await;
    // A masked text frame with RSV2 set, which no extension allows (RFC 6455 §5.2).
    let frame = [0xA1u8, 0x81, 1, 2, 3, 4, b'x' ^ 1];
    let tls = ws.get_mut();
    tls.write_all(&frame).await.unwrap();
    tls.flush().await.unwrap();
    let (code, _) = client_close(&mut ws).await;
    assert_eq!(code, 1002);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    assert_eq!(s.closes("1002", "gateway").await, 1.0);
}

#[tokio::test]
async fn message_over_max_message_size_gets_1009() {
    let mut s = setup("max_message_size = \"1KiB\"", "").await;
    let mut ws = s.client().await;
    echo(&mut ws, &"a".repeat(1024)).await;
    ws.send(Message::binary(vec![7u8; 2048])).await.unwrap();
    let (code, _) = client_close(&mut ws).await;
    assert_eq!(code, 1009);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    assert_eq!(s.closes("1009", "gateway").await, 1.0);
}

#[tokio::test]
async fn message_rate_over_the_limit_gets_1008() {
    let mut s = setup("max_messages_per_second = 5", "").await;
    let mut ws = s.client().await;
    for i in 0..20 {
        if ws.send(Message::text(format!("m{i}"))).await.is_err() {
            break;
        }
    }
    let (code, _) = client_close(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    assert_eq!(s.closes("1008", "gateway").await, 1.0);
}

#[tokio::test]
async fn operator_close_sends_1001_to_both_sides() {
    let mut s = setup("", "").await;
    let mut ws = s.client().await;
    echo(&mut ws, "x").await;
    let (status, body) = http_request(s.gw.admin(), "DELETE", "/connections?route=chat").await;
    assert_eq!((status, body.as_str()), (200, "{\"closed\":1}"));
    assert_eq!(client_close(&mut ws).await.0, 1001);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
}

#[tokio::test]
async fn keepalive_pings_the_client_and_swallows_its_pongs() {
    let mut s = setup("ping_interval = \"100ms\"\n  pong_timeout = \"2s\"", "").await;
    let mut ws = s.client().await;
    // Reading makes tungstenite answer each Ping with a Pong.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Ping(_)))) = tokio::time::timeout_at(deadline, ws.next()).await {
            pings += 1;
        }
    }
    assert!(
        pings >= 3,
        "only {pings} pings in 700ms at a 100ms interval"
    );
    echo(&mut ws, "still fine").await;
    ws.close(None).await.unwrap();
    assert_eq!(backend_close(&mut s.backend).await, BackendSaw::Close(None));
    // The backend saw the data message but none of the client's pongs.
    let mut seen = Vec::new();
    while let Ok(saw) = s.backend.try_recv() {
        seen.push(saw);
    }
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, BackendSaw::Message(Message::Pong(_)))),
        "{seen:?}"
    );
    let m = s.gw.metrics().await;
    assert!(
        m.get(
            "sockgate_websocket_ping_rtt_seconds_count",
            &[("route", "chat")]
        ) >= 3.0
    );
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed() {
    let mut s = setup("ping_interval = \"100ms\"\n  pong_timeout = \"300ms\"", "").await;
    let mut ws = s.client().await;
    echo(&mut ws, "then silence").await;
    // Not reading: no pongs go back.
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    assert_eq!(s.closes("1001", "gateway").await, 1.0);
    drop(ws);
}

#[tokio::test]
async fn messages_are_counted_per_direction_as_they_pass() {
    let s = setup("", "").await;
    let mut ws = s.client().await;
    for i in 0..7 {
        echo(&mut ws, &format!("message {i}")).await;
    }
    ws.send(Message::binary(vec![1u8; 100_000])).await.unwrap();
    loop {
        if let Some(Ok(Message::Binary(b))) = ws.next().await {
            assert_eq!(b.len(), 100_000);
            break;
        }
    }
    // Counted while the connection is still open, not at close.
    let m = s.gw.metrics().await;
    let up = [("route", "chat"), ("direction", "client_to_backend")];
    let down = [("route", "chat"), ("direction", "backend_to_client")];
    assert_eq!(m.get("sockgate_websocket_messages_total", &up), 8.0);
    assert_eq!(m.get("sockgate_websocket_messages_total", &down), 8.0);
    assert_eq!(
        m.get("sockgate_websocket_message_size_bytes_count", &up),
        8.0
    );
    assert_eq!(
        m.get("sockgate_websocket_message_size_bytes_sum", &up),
        100_000.0 + 7.0 * 9.0
    );

    let (_, body) = http_get(s.gw.admin(), "/connections").await;
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows[0]["messages_client_to_backend"], 8);
    assert_eq!(rows[0]["messages_backend_to_client"], 8);
}

//! WebSockets through the gateway with a real client (tokio-tungstenite) and a real backend.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::*;

fn ws_config(app: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  path_prefix = "/ws"
  backend = "chat"

[[backend]]
name = "chat"
servers = ["{app}"]
"#
    )
}

async fn next_data(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10s")
            .expect("stream open")
            .expect("no protocol error");
        if !matches!(msg, Message::Ping(_)) {
            return msg;
        }
    }
}

#[tokio::test]
async fn wss_echo_text_binary_fragmented_and_ping() {
    let pki = Pki::new();
    let app = ws_echo().await;
    let gw = Gateway::start(pki.path(), &ws_config(app)).await;
    let tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    let (mut ws, response) = tokio_tungstenite::client_async("wss://localhost/ws/room1", tls)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);

    ws.send(Message::text("hello through the gateway"))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::text("hello through the gateway")
    );

    let big = random_bytes(1024 * 1024, 5);
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_data(&mut ws).await {
        Message::Binary(got) => assert!(got[..] == big[..], "1 MiB binary differs"),
        other => panic!("expected binary, got {other:?}"),
    }

    // One text message in three fragments with pings between them (RFC 6455 §5.4 allows
    // control frames inside a fragmented message).
    ws.send(Message::Frame(Frame::message(
        "frag-",
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Ping("between".into())).await.unwrap();
    ws.send(Message::Frame(Frame::message(
        "ment-",
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Ping("again".into())).await.unwrap();
    ws.send(Message::Frame(Frame::message(
        "ed",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let mut pongs = Vec::new();
    let reassembled = loop {
        match next_data(&mut ws).await {
            Message::Pong(p) => pongs.push(p),
            other => break other,
        }
    };
    assert_eq!(reassembled, Message::text("frag-ment-ed"));
    while pongs.len() < 2 {
        match next_data(&mut ws).await {
            Message::Pong(p) => pongs.push(p),
            other => panic!("expected pong, got {other:?}"),
        }
    }
    assert_eq!(
        pongs,
        vec![bytes::Bytes::from("between"), bytes::Bytes::from("again")]
    );

    ws.close(None).await.unwrap();
    // The backend's Close reply comes back through the gateway, then the stream ends.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("close reply")
        {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("close handshake failed: {e}"),
        }
    }

    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_connections_total",
            &[("listener", "edge"), ("protocol", "websocket")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_http_responses_total",
            &[("route", "chat"), ("code", "101")]
        ),
        1.0
    );
    let up = m.get(
        "sockgate_bytes_total",
        &[("route", "chat"), ("direction", "client_to_backend")],
    );
    let down = m.get(
        "sockgate_bytes_total",
        &[("route", "chat"), ("direction", "backend_to_client")],
    );
    assert!(
        up > 1024.0 * 1024.0 && down > 1024.0 * 1024.0,
        "up {up} down {down}"
    );
}

#[tokio::test]
async fn upgrade_to_an_unrouted_path_gets_404_and_a_dead_backend_502() {
    let pki = Pki::new();
    let dead = dead_port().await;
    let gw = Gateway::start(pki.path(), &ws_config(dead)).await;

    let tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    match tokio_tungstenite::client_async("wss://localhost/elsewhere", tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    let tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    match tokio_tungstenite::client_async("wss://localhost/ws", tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 502)
        }
        other => panic!("expected a 502, got {other:?}"),
    }
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_unrouted_total",
            &[("listener", "edge"), ("protocol", "websocket")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "sockgate_backend_connect_errors_total",
            &[("backend", "chat")]
        ),
        1.0
    );
}

#[tokio::test]
async fn live_connection_is_listed_and_can_be_closed_by_the_operator() {
    let pki = Pki::new();
    let app = ws_echo().await;
    let gw = Gateway::start(pki.path(), &ws_config(app)).await;
    let tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    let _ = next_data(&mut ws).await;

    let (status, body) = http_get(gw.admin(), "/connections").await;
    assert_eq!(status, 200);
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = &rows[0];
    assert_eq!(row["protocol"], "websocket");
    assert_eq!(row["route"], "chat");
    assert_eq!(row["backend"], "chat");
    assert_eq!(row["sni"], "localhost");
    assert_eq!(row["server"], app.to_string());
    assert!(row["bytes_client_to_backend"].as_u64().unwrap() > 0);
    assert!(row["started"].as_str().unwrap().ends_with('Z'));

    let (status, body) = http_request(gw.admin(), "DELETE", "/connections?backend=chat").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["closed"],
        1
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "connection not closed by the operator");
}

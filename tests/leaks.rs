//! Bad and vanished peers leave nothing behind: after a burst of garbage, silent, half-open
//! and abruptly dropped connections, the live table is empty, the active gauges are zero and
//! the process holds no more file descriptors than before. A test binary of its own, so no
//! other test opens descriptors in this process meanwhile.
#![allow(clippy::unwrap_used)]

#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;
// The binary's dev certificates and demo echo backends, which support.rs uses.
#[allow(dead_code)]
#[path = "../src/certgen.rs"]
mod certgen;
#[allow(dead_code)]
#[path = "../src/demo.rs"]
mod demo;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn bad_and_vanished_peers_leave_no_connection_and_no_descriptor() {
    let pki = Pki::new();
    let app = ws_echo().await;
    let echo = tcp_echo().await;
    let gw = Gateway::start(
        pki.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
handshake_timeout = "300ms"
detect_timeout = "200ms"
close_timeout = "300ms"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  backend = "chat"

  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"

[[backend]]
name = "chat"
servers = ["{app}"]

[[backend]]
name = "echo"
servers = ["{echo}"]
"#
        ),
    )
    .await;
    let addr = gw.addr("edge");
    // Warm up the runtime and metric families so their descriptors are in the baseline.
    let tls = tls_connect(addr, pki.client_config(&[]), "localhost").await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/x", tls)
        .await
        .unwrap();
    ws.send(Message::text("warm")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    eventually("warm-up connection gone", || async {
        gw.handle.connections() == 0
    })
    .await;
    let baseline = open_fds();

    let mut held = Vec::new();
    for i in 0..20u64 {
        // Garbage instead of a ClientHello.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        let _ = garbage.write_all(&random_bytes(300, i + 1)).await;
        held.push(garbage);
        // Silent: never sends a byte (closed by handshake_timeout).
        held.push(TcpStream::connect(addr).await.unwrap());
        // A WebSocket whose client vanishes without a Close.
        let tls = tls_connect(addr, pki.client_config(&[]), "localhost").await;
        let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/x", tls)
            .await
            .unwrap();
        ws.send(Message::text("then gone")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        drop(ws);
        // A TLS TCP client that half-closes and walks away.
        let mut tls = tls_connect(addr, pki.client_config(&[]), "localhost").await;
        tls.write_all(b"bye").await.unwrap();
        let _ = tls.shutdown().await;
        drop(tls);
    }
    drop(held);

    eventually("every connection ended", || async {
        gw.handle.connections() == 0
    })
    .await;
    let m = gw.metrics().await;
    for protocol in ["tcp", "websocket", "http"] {
        assert_eq!(
            m.get(
                "sockgate_connections_active",
                &[("listener", "edge"), ("protocol", protocol)]
            ),
            0.0,
            "{protocol}"
        );
    }
    // Descriptors are released as tasks end; give the runtime a moment, then compare.
    let mut now = open_fds();
    for _ in 0..100 {
        if now <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = open_fds();
    }
    println!("descriptors: {baseline} before the burst, {now} after");
    assert!(
        now <= baseline,
        "descriptors: {baseline} before, {now} after"
    );
}

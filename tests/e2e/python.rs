//! Interop with a second WebSocket implementation: Python's `websockets` on both ends,
//! negotiating permessage-deflate, so compressed frames (RSV1) cross the frame tracker.
//! `scripts/test.sh` installs the library.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_deflate.py");

#[tokio::test]
async fn compressed_messages_cross_the_gateway_intact_and_counted() {
    let available = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        available,
        "python3 with the `websockets` package is needed: run scripts/test.sh, which installs it"
    );

    let mut backend = Command::new("python3")
        .args([SCRIPT, "backend"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(backend.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();

    let pki = Pki::new();
    let gw = Gateway::start(
        pki.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "plain"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "deflate"
  protocol = "websocket"
  backend = "py"

[[backend]]
name = "py"
servers = ["127.0.0.1:{port}"]
"#
        ),
    )
    .await;
    let url = format!("ws://{}/compressed", gw.addr("plain"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([SCRIPT, "client", &url, "20"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    drop(backend.stdin.take());
    let _ = backend.kill();
    let _ = backend.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        seen["extensions"]
            .as_str()
            .unwrap_or("")
            .contains("permessage-deflate"),
        "{seen}"
    );
    assert_eq!(seen["echoed"], 40, "{seen}");
    assert_eq!(seen["mismatches"], 0, "{seen}");
    assert_eq!(seen["close_code"], 1000, "{seen}");

    let m = gw.metrics().await;
    let up = [("route", "deflate"), ("direction", "client_to_backend")];
    let down = [("route", "deflate"), ("direction", "backend_to_client")];
    assert_eq!(m.get("sockgate_websocket_messages_total", &up), 40.0);
    assert_eq!(m.get("sockgate_websocket_messages_total", &down), 40.0);
    // Sizes are what crossed the wire: compressed, far below the 40 × ~5 KiB sent.
    let sent = m.get("sockgate_websocket_message_size_bytes_sum", &up);
    assert!(
        sent > 0.0 && sent < 40.0 * 1000.0,
        "compressed size sum {sent}"
    );
    assert_eq!(
        m.get(
            "sockgate_websocket_closes_total",
            &[
                ("route", "deflate"),
                ("code", "1000"),
                ("initiator", "client")
            ]
        ),
        1.0
    );
}

//! The files in deploy/ against a live gateway: every `sockgate_*` series that the Grafana
//! dashboard's queries and the Prometheus alert rules name is exported by /metrics once a
//! little traffic has given each labelled family a child, and the Kubernetes ConfigMap's TOML
//! passes `sockgate check`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn deploy_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Every `sockgate_…` metric name in `text` (letters, digits and `_` after the prefix). A
/// recording rule's `sockgate:…` name does not match.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("sockgate_") {
        let start = from + at;
        let continues_a_word = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || matches!(bytes[start - 1], b'_' | b':'));
        let mut end = start + "sockgate_".len();
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !continues_a_word {
            into.insert(text[start..end].to_owned());
        }
        from = end;
    }
}

/// The metric names in the dashboard's panel queries and template variable queries.
fn dashboard_metrics(path: &Path) -> BTreeSet<String> {
    fn walk(value: &serde_json::Value, into: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", serde_json::Value::String(query)) => {
                            metric_names(query, into)
                        }
                        _ => walk(value, into),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, into)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    walk(&json, &mut names);
    names
}

/// The metric names in the `expr:` of each rule (one line, or a `|` / `>` block below it),
/// not in comments or annotations.
fn rule_metrics(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut names = BTreeSet::new();
    let mut block_indent: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if let Some(key_indent) = block_indent {
            if trimmed.is_empty() || indent > key_indent {
                metric_names(line, &mut names);
                continue;
            }
            block_indent = None;
        }
        let Some(rest) = trimmed
            .strip_prefix("- expr:")
            .or_else(|| trimmed.strip_prefix("expr:"))
        else {
            continue;
        };
        match rest.trim() {
            "|" | ">" | "|-" | ">-" => block_indent = Some(indent),
            one_line => metric_names(one_line, &mut names),
        }
    }
    names
}

/// Sample names in a Prometheus text exposition (`_bucket`, `_sum`, `_count` for histograms).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn config(echo: SocketAddr, app: SocketAddr, gone: SocketAddr, max: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
{max}

[[listener]]
name = "edge"
listen = "127.0.0.1:0"
tls = {{ cert = "server.crt", key = "server.key" }}

  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  path_prefix = "/ws"
  backend = "chat"
  ping_interval = "50ms"

[[listener]]
name = "plain"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"

[[listener]]
name = "broken"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "gone"
  protocol = "tcp"
  backend = "gone"

[[backend]]
name = "chat"
servers = ["{app}"]

[[backend]]
name = "echo"
servers = ["{echo}"]

[[backend]]
name = "gone"
servers = ["{gone}"]

[[listener]]
name = "unhealthy"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "down"
  protocol = "tcp"
  backend = "down"

[[backend]]
name = "down"
servers = ["{gone}"]
health = {{ kind = "tcp", interval = "100ms", timeout = "100ms", fall = 1 }}
"#
    )
}

async fn read_with_timeout(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    tokio::time::timeout(Duration::from_secs(5), stream.read(buf))
        .await
        .expect("an answer within 5s")
        .unwrap_or(0)
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    let mut wanted = dashboard_metrics(&deploy_file("grafana/sockgate.json"));
    let from_dashboard = wanted.len();
    let from_rules = rule_metrics(&deploy_file("prometheus/alerts.yml"));
    assert!(
        from_dashboard >= 10 && from_rules.len() >= 5,
        "too few names found: the extraction is broken ({wanted:?}, {from_rules:?})"
    );
    wanted.extend(from_rules);

    let pki = Pki::new();
    let echo = tcp_echo().await;
    let app = ws_echo().await;
    let gone = dead_port().await;
    let gw = Gateway::start(pki.path(), &config(echo, app, gone, "")).await;

    // A raw TCP echo: bytes, connections, lifetimes, backend connect time.
    let mut tcp = TcpStream::connect(gw.addr("plain")).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
    drop(tcp);

    // A backend that refuses: a connect error.
    let mut broken = TcpStream::connect(gw.addr("broken")).await.unwrap();
    broken.write_all(b"hello").await.unwrap();
    assert_eq!(read_with_timeout(&mut broken, &mut [0u8; 16]).await, 0);

    // A backend whose only server fails its health check: closed at once, counted.
    eventually("the failing server to be marked down", || async {
        gw.metrics()
            .await
            .get("sockgate_backend_up", &[("backend", "down")])
            == 0.0
    })
    .await;
    let mut refused = TcpStream::connect(gw.addr("unhealthy")).await.unwrap();
    assert_eq!(read_with_timeout(&mut refused, &mut [0u8; 16]).await, 0);

    // A TLS handshake, a WebSocket echo with keepalive pings answered, and a client Close.
    let tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    let (mut ws, response) = tokio_tungstenite::client_async("wss://localhost/ws/room", tls)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let mut echoed = false;
    let mut pings = 0;
    while !echoed || pings < 2 {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                assert_eq!(text.as_str(), "hello");
                echoed = true;
            }
            // Reading makes tungstenite queue the Pong; the next read or send flushes it.
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            other => panic!("expected the echo and pings, got {other:?}"),
        }
    }
    ws.send(Message::text("flushes the last pong"))
        .await
        .unwrap();
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}

    // No route for this path: 404, counted as unrouted.
    let tls = tls_connect(gw.addr("edge"), pki.client_config(&[]), "localhost").await;
    assert!(
        tokio_tungstenite::client_async("wss://localhost/elsewhere", tls)
            .await
            .is_err()
    );

    // A failed TLS handshake: plain text to the TLS listener.
    let mut not_tls = TcpStream::connect(gw.addr("edge")).await.unwrap();
    not_tls
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = read_with_timeout(&mut not_tls, &mut [0u8; 256]).await;
    drop(not_tls);

    // Reloads: one refused (a broken file), then one that sets max_connections to 1.
    let config_path = pki.path().join("sockgate.toml");
    std::fs::write(&config_path, "[[listener]]\nname = 3\n").unwrap();
    assert_eq!(http_request(gw.admin(), "POST", "/reload").await.0, 422);
    std::fs::write(&config_path, config(echo, app, gone, "max_connections = 1")).unwrap();
    let (status, body) = http_request(gw.admin(), "POST", "/reload").await;
    assert_eq!(status, 200, "{body}");

    // One connection held, the next one over the limit: rejected.
    eventually("the earlier connections to end", || async {
        gw.metrics().await.get("sockgate_connections_active", &[]) == 0.0
    })
    .await;
    let mut held = TcpStream::connect(gw.addr("plain")).await.unwrap();
    held.write_all(b"held").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), held.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let mut over = TcpStream::connect(gw.addr("plain")).await.unwrap();
    assert_eq!(read_with_timeout(&mut over, &mut [0u8; 16]).await, 0);

    // Families render once a child exists; connection ends are counted as they finish.
    let mut missing = wanted.clone();
    for _ in 0..100 {
        let text = http_get(gw.admin(), "/metrics").await.1;
        let have = exported(&text);
        missing = wanted.difference(&have).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        missing.is_empty(),
        "named in deploy/grafana/sockgate.json or deploy/prometheus/alerts.yml but not exported by /metrics: {missing:?}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "sockgate_rejected_total",
            &[("listener", "plain"), ("reason", "max_connections")]
        ),
        1.0
    );
    assert_eq!(
        m.get("sockgate_config_reloads_total", &[("result", "error")]),
        1.0
    );
    drop(held);
}

/// The block scalar under `key: |` in a YAML file, without its indentation.
fn yaml_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no `{key}: |` in the file"));
    let key_indent = head.len() - head.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    block
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect()
}

fn check(config: &Path) -> (bool, String) {
    let out = Binary::command()
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The TOML in deploy/kubernetes/configmap.yaml, laid out as the pod sees it (config in
/// config/, the Secret's tls.crt and tls.key in tls/), passes `sockgate check` with a real
/// certificate, and is refused with the placeholder Secret's.
#[test]
fn the_kubernetes_configmap_passes_check_and_the_placeholder_secret_does_not() {
    let configmap = std::fs::read_to_string(deploy_file("kubernetes/configmap.yaml")).unwrap();
    let toml = yaml_block(&configmap, "sockgate.toml");
    assert!(toml.contains("[[listener]]"), "{toml}");

    let pki = Pki::new();
    let config_dir = pki.path().join("config");
    let tls_dir = pki.path().join("tls");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::copy(pki.path().join("server.crt"), tls_dir.join("tls.crt")).unwrap();
    std::fs::copy(pki.path().join("server.key"), tls_dir.join("tls.key")).unwrap();
    let config = config_dir.join("sockgate.toml");
    std::fs::write(&config, &toml).unwrap();
    let (ok, output) = check(&config);
    assert!(ok, "sockgate check refused the ConfigMap's TOML:\n{output}");

    let secret = std::fs::read_to_string(deploy_file("kubernetes/secret-tls.yaml")).unwrap();
    std::fs::write(tls_dir.join("tls.crt"), yaml_block(&secret, "tls.crt")).unwrap();
    std::fs::write(tls_dir.join("tls.key"), yaml_block(&secret, "tls.key")).unwrap();
    let (ok, output) = check(&config);
    assert!(
        !ok,
        "sockgate check accepted the placeholder Secret:\n{output}"
    );
    assert!(
        output.contains("tls.crt") || output.contains("tls.key"),
        "{output}"
    );
}

//! Hostile WebSocket input (issue 10): frame floods, fragments that pile up, a swallowed
//! Pong sharing a read with a fragment, and close codes a peer picks to grow the metrics.
//! Every case asserts on the frames both sides get and on `sockgate_websocket_closes_total`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn config(backend: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
close_timeout = "2s"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

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
    _dir: tempfile::TempDir,
    gw: Gateway,
    backend: tokio::sync::mpsc::UnboundedReceiver<BackendSaw>,
}

async fn setup(route_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (addr, backend) = scripted_ws_backend().await;
    let gw = Gateway::start(dir.path(), &config(addr, route_extra)).await;
    Setup {
        _dir: dir,
        gw,
        backend,
    }
}

impl Setup {
    async fn client(&self) -> RawWs<TcpStream> {
        let tcp = TcpStream::connect(self.gw.addr("edge")).await.unwrap();
        RawWs::handshake(tcp, "/chat").await
    }

    async fn closes(&self, code: &str, initiator: &str) -> f64 {
        self.gw.metrics().await.get(
            "sockgate_websocket_closes_total",
            &[("route", "chat"), ("code", code), ("initiator", initiator)],
        )
    }
}

const KEY: [u8; 4] = [0x9C, 0x04, 0x5E, 0xA1];

/// One masked frame as a client sends it; `b0` holds FIN and the opcode.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![b0, 0x80 | payload.len() as u8];
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

/// Reads frames until one with `opcode`, skipping Pings and Pongs; returns its payload.
async fn next_frame(ws: &mut RawWs<TcpStream>, opcode: u8) -> Vec<u8> {
    loop {
        let (op, payload) = ws.read_frame().await;
        if op == opcode {
            return payload;
        }
        assert!(op == 0x9 || op == 0xA, "unexpected frame {op:#x}");
    }
}

async fn close_code(ws: &mut RawWs<TcpStream>) -> u16 {
    let payload = next_frame(ws, 0x8).await;
    u16::from_be_bytes([payload[0], payload[1]])
}

/// CPU time (user + system) this thread has used. The gateway runs on the test's own
/// runtime thread (`sockgate::start` uses no worker threads), so this is the worker's.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// A text message as 30,000 empty non-final fragments in one 180 KB write, then its final
/// fragment (issue 10). The gateway reads it 32 KiB at a time, each read ending inside a
/// header: the message must reach the backend, and the worker must be idle afterwards
/// rather than spinning on a full buffer.
#[tokio::test]
async fn thirty_thousand_empty_fragments_then_the_last_one_are_relayed_without_spinning() {
    let mut s = setup("").await;
    let mut ws = s.client().await;
    let mut burst = client_frame(0x01, b"");
    for _ in 1..30_000 {
        burst.extend(client_frame(0x00, b""));
    }
    assert_eq!(burst.len(), 180_000);
    let (cpu_start, wall_start) = (thread_cpu(), Instant::now());
    ws.send_raw(&burst).await;
    ws.send_raw(&client_frame(0x80, b"end")).await;

    let saw = tokio::time::timeout(Duration::from_secs(10), s.backend.recv())
        .await
        .expect("the backend got the message within 10 s");
    assert_eq!(saw, Some(BackendSaw::Message(Message::text("end"))));
    assert_eq!(next_frame(&mut ws, 0x1).await, b"end", "the echo");
    let (burst_cpu, burst_wall) = (thread_cpu() - cpu_start, wall_start.elapsed());

    // Idle now: the worker must not be busy.
    let idle_start = thread_cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_cpu = thread_cpu() - idle_start;
    eprintln!(
        "30,000 empty fragments: {burst_cpu:?} CPU over {burst_wall:?} (gateway, client and \
         backend on this thread); then {idle_cpu:?} CPU in 1 s idle"
    );
    assert!(
        idle_cpu < Duration::from_millis(100),
        "the worker spent {idle_cpu:?} of CPU in 1 s with nothing to do"
    );
    let m = s.gw.metrics().await;
    let up = [("route", "chat"), ("direction", "client_to_backend")];
    assert_eq!(m.get("sockgate_websocket_messages_total", &up), 1.0);
}

/// A non-final text fragment and the Pong answering the gateway's Ping, in one write
/// (issue 10). The Pong is swallowed, and only the Pong: had the fragment gone with it, the
/// backend would get a bare continuation frame and fail the connection.
#[tokio::test]
async fn a_fragment_and_the_answering_pong_in_one_write_reach_the_backend_as_one_message() {
    let mut s = setup("ping_interval = \"200ms\"").await;
    let mut ws = s.client().await;
    let ping = next_frame(&mut ws, 0x9).await;
    let mut both = client_frame(0x01, b"hello ");
    both.extend(client_frame(0x8A, &ping));
    ws.send_raw(&both).await;
    ws.send_raw(&client_frame(0x80, b"world")).await;

    let saw = tokio::time::timeout(Duration::from_secs(10), s.backend.recv())
        .await
        .expect("the backend reports within 10 s");
    assert_eq!(saw, Some(BackendSaw::Message(Message::text("hello world"))));
    assert_eq!(next_frame(&mut ws, 0x1).await, b"hello world");
    // The gateway took the Pong for its Ping: a round trip was recorded.
    let m = s.gw.metrics().await;
    assert!(
        m.get(
            "sockgate_websocket_ping_rtt_seconds_count",
            &[("route", "chat")]
        ) >= 1.0
    );
    ws.send(0x8, &1000u16.to_be_bytes()).await;
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1000))
    );
    assert_eq!(close_code(&mut ws).await, 1000);
    assert_eq!(s.closes("1002", "gateway").await, 0.0);
    assert_eq!(s.closes("1000", "client").await, 1.0);
}

/// `max_frames_per_second` counts every frame: a Ping flood and a message sent as endless
/// empty fragments both get Close 1008; the backend gets 1001.
#[tokio::test]
async fn frame_floods_get_1008() {
    let mut s = setup("max_frames_per_second = 50").await;

    let mut ws = s.client().await;
    let mut pings = Vec::new();
    for i in 0..200u8 {
        pings.extend(client_frame(0x89, &[i]));
    }
    ws.send_raw(&pings).await;
    assert_eq!(close_code(&mut ws).await, 1008);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    assert_eq!(s.closes("1008", "gateway").await, 1.0);

    let mut ws = s.client().await;
    let mut fragments = client_frame(0x01, b"");
    for _ in 0..1_000 {
        fragments.extend(client_frame(0x00, b""));
    }
    ws.send_raw(&fragments).await;
    assert_eq!(close_code(&mut ws).await, 1008);
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(1001))
    );
    assert_eq!(s.closes("1008", "gateway").await, 2.0);

    // Under the limit nothing happens: 20 frames, one message.
    let mut ws = s.client().await;
    let mut frames = client_frame(0x01, b"a");
    for _ in 0..18 {
        frames.extend(client_frame(0x00, b""));
    }
    frames.extend(client_frame(0x80, b"b"));
    ws.send_raw(&frames).await;
    assert_eq!(next_frame(&mut ws, 0x1).await, b"ab");
    assert_eq!(s.closes("1008", "gateway").await, 2.0);
}

/// A peer picks its close code: codes outside 1000–1015 share one `other` series.
#[tokio::test]
async fn an_application_close_code_is_counted_as_other() {
    let mut s = setup("").await;
    let mut ws = s.client().await;
    ws.send(0x8, &4321u16.to_be_bytes()).await;
    assert_eq!(
        backend_close(&mut s.backend).await,
        BackendSaw::Close(Some(4321))
    );
    assert_eq!(close_code(&mut ws).await, 4321);
    assert_eq!(s.closes("other", "client").await, 1.0);
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get("sockgate_websocket_closes_total", &[("code", "4321")]),
        0.0,
        "no series per application code"
    );
}

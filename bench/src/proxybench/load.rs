//! The clients: one load shape per scenario, driven from this process's runtime.
//!
//! Every load runs in a window: connections are set up first, then all clients start
//! together, send through a warm-up, and stop at the end of the measured part. What is
//! counted (bytes, round trips, handshakes, connections, messages) goes into one shared
//! counter that is read at both edges of the measured part, together with the proxy's CPU
//! time, so a rate and a CPU cost cover exactly the same interval. Latencies count only for
//! operations that start and end inside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use sockgate_bench::ws::round_trip;

use crate::backend::{BULK_CHUNK, ECHO, SINK, SOURCE, pattern};
use crate::{protected, tls};

/// A plain or TLS client stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

pub type WsClient = WebSocketStream<Stream>;

/// One connect, TLS handshake or operation that takes longer than this is an error.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Every connection sends (upload) or receives (download) as fast as it can.
    Bulk {
        upload: bool,
        tls: bool,
        connections: usize,
    },
    /// Persistent connections in a closed loop: `size` bytes out, the same back.
    RequestResponse { size: usize, connections: usize },
    /// `parallel` loops of: connect, full TLS 1.3 handshake, close_notify, wait for EOF.
    Handshake { parallel: usize },
    /// `parallel` loops of: connect (and handshake), one 64 B echo, close, wait for EOF.
    Connect { tls: bool, parallel: usize },
    /// WebSocket over TLS in a closed loop: one binary message of `size` bytes, its echo.
    Wss { size: usize, connections: usize },
    /// As `Wss`, but each connection sends one message every `1 / per_second` s (spread
    /// evenly over the interval across connections) instead of as fast as it can, so the
    /// clients keep up with thousands of connections.
    WssPaced {
        size: usize,
        connections: usize,
        per_second: f64,
    },
    /// Scenario 7: one HTTP/2 connection, `streams` closed loops of a small `GET`.
    H2Requests { streams: usize },
    /// Scenario 7: one HTTP/2 connection, `streams` WebSockets inside it (RFC 8441), each
    /// a closed loop of one binary message of `size` bytes and its echo.
    H2Wss { size: usize, streams: usize },
}

/// The TLS client configs: TCP frontends offer no ALPN, so neither do their clients.
pub struct Clients {
    pub tcp: TlsConnector,
    pub ws: TlsConnector,
    /// `--protected`: the request/response and new-connection loads start each connection
    /// with a PROXY protocol v2 header (see `protected::dial`).
    pub proxy_header: bool,
    /// ALPN `h2` only (scenario 7).
    pub h2: TlsConnector,
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
}

/// One run of one load at one target.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Bytes for bulk loads, else operations, completed in the measured part.
    pub count: f64,
    pub seconds: f64,
    /// Sorted, in nanoseconds.
    pub latencies: Vec<u64>,
    /// Failed connects, handshakes or operations (connection loads only; anything else
    /// failing fails the run).
    pub errors: u64,
    /// CPU seconds of the proxy's process tree in the measured part (NaN for direct).
    pub proxy_cpu: f64,
    /// What the TLS handshake settled on, when there was one.
    pub negotiated: Option<String>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.count / self.seconds
    }
}

pub async fn dial(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<(Stream, String)> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok((Box::new(tcp), String::new())),
        Some(connector) => {
            let stream = tls::connect(connector, tcp)
                .await
                .with_context(|| format!("TLS handshake with {addr}"))?;
            let negotiated = tls::negotiated(&stream);
            Ok((Box::new(stream), negotiated))
        }
    }
}

pub async fn dial_ws(addr: SocketAddr, clients: &Clients) -> anyhow::Result<(WsClient, String)> {
    let (stream, negotiated) = dial(addr, Some(&clients.ws)).await?;
    Ok((ws_handshake(stream, addr).await?, negotiated))
}

async fn ws_handshake<S>(stream: S, addr: SocketAddr) -> anyhow::Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = format!("wss://{}:{}/bench", tls::SERVER_NAME, addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .with_context(|| format!("WebSocket handshake with {addr}"))?;
    Ok(ws)
}

/// A wss client whose TCP socket stays reachable under its TLS stream, so that bytes can be
/// written past the TLS client (scenario 5's stalled row).
pub type RawWsClient = WebSocketStream<TlsStream<TcpStream>>;

async fn dial_ws_raw(addr: SocketAddr, clients: &Clients) -> anyhow::Result<RawWsClient> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let stream = tls::connect(&clients.ws, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    ws_handshake(stream, addr).await
}

#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub measure: Instant,
    pub end: Instant,
}

impl Window {
    /// Starts in a moment, so every client is waiting when it does.
    fn starting(timing: Timing) -> Window {
        let start = Instant::now() + Duration::from_millis(50);
        let measure = start + timing.warmup;
        Window {
            start,
            measure,
            end: measure + timing.duration,
        }
    }

    pub fn counts(&self, sent: Instant, received: Instant) -> bool {
        sent >= self.measure && received <= self.end
    }
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `load` against `addr`; `proxy_cpu` reads the proxy's CPU seconds (NaN for none).
pub async fn run(
    load: Load,
    addr: SocketAddr,
    clients: &Clients,
    timing: Timing,
    proxy_cpu: &dyn Fn() -> f64,
) -> anyhow::Result<Outcome> {
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut negotiated = None;

    // Persistent connections are opened before the clock starts.
    let tasks: Vec<JoinHandle<anyhow::Result<Vec<u64>>>>;
    let window;
    match load {
        Load::Bulk {
            upload,
            tls,
            connections,
        } => {
            let connector = tls.then_some(&clients.tcp);
            let streams = connect_all(connections, || dial(addr, connector)).await?;
            negotiated = streams.first().map(|(_, n)| n.clone());
            window = Window::starting(timing);
            let w = window;
            tasks = streams
                .into_iter()
                .map(|(stream, _)| {
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        bulk(stream, upload, w, &counter).await?;
                        Ok(Vec::new())
                    })
                })
                .collect();
        }
        Load::RequestResponse { size, connections } => {
            let streams = connect_all(connections, || {
                protected::dial(addr, None, clients.proxy_header)
            })
            .await?;
            window = Window::starting(timing);
            let w = window;
            tasks = streams
                .into_iter()
                .map(|(stream, _)| {
                    let counter = counter.clone();
                    tokio::spawn(async move { request_response(stream, size, w, &counter).await })
                })
                .collect();
        }
        Load::Wss { size, connections } => {
            let clients = connect_all(connections, || dial_ws(addr, clients)).await?;
            negotiated = clients.first().map(|(_, n)| n.clone());
            window = Window::starting(timing);
            let w = window;
            tasks = clients
                .into_iter()
                .map(|(ws, _)| {
                    let counter = counter.clone();
                    tokio::spawn(async move { ws_echo(ws, size, w, &counter).await })
                })
                .collect();
        }
        Load::WssPaced {
            size,
            connections,
            per_second,
        } => {
            let clients = connect_all(connections, || dial_ws(addr, clients)).await?;
            negotiated = clients.first().map(|(_, n)| n.clone());
            window = Window::starting(timing);
            let w = window;
            let interval = Duration::from_secs_f64(1.0 / per_second);
            tasks = clients
                .into_iter()
                .enumerate()
                .map(|(i, (ws, _))| {
                    let counter = counter.clone();
                    let phase = interval.mul_f64(i as f64 / connections as f64);
                    tokio::spawn(
                        async move { ws_paced(ws, size, w, interval, phase, &counter).await },
                    )
                })
                .collect();
        }
        Load::Handshake { parallel } | Load::Connect { parallel, .. } => {
            let tls = match load {
                Load::Handshake { .. } | Load::Connect { tls: true, .. } => {
                    Some(clients.tcp.clone())
                }
                _ => None,
            };
            // One connection outside the window, to learn what TLS settles on and to fail
            // early when the target does not answer at all.
            let header = clients.proxy_header;
            let (probe, n) = protected::dial(addr, tls.as_ref(), header).await?;
            drop(probe);
            if tls.is_some() {
                negotiated = Some(n);
            }
            let echo = matches!(load, Load::Connect { .. });
            window = Window::starting(timing);
            let w = window;
            tasks = (0..parallel)
                .map(|_| {
                    let (counter, errors, tls) = (counter.clone(), errors.clone(), tls.clone());
                    tokio::spawn(async move {
                        connections(addr, tls, echo, header, w, &counter, &errors).await
                    })
                })
                .collect();
        }
        Load::H2Requests { streams } | Load::H2Wss { streams, .. } => {
            let (size, websockets) = match load {
                Load::H2Wss { size, .. } => (size, true),
                _ => (0, false),
            };
            let opened = tokio::time::timeout(
                OP_TIMEOUT * 2,
                crate::h2::open(addr, &clients.h2, streams, websockets),
            )
            .await
            .context("h2 connection setup timed out")??;
            negotiated = Some(opened.negotiated.clone());
            window = Window::starting(timing);
            tasks = crate::h2::spawn(opened, streams, size, window, &counter);
        }
    }

    tokio::time::sleep_until(window.measure.into()).await;
    let (count0, cpu0, t0) = (counter.load(Ordering::Relaxed), proxy_cpu(), Instant::now());
    tokio::time::sleep_until(window.end.into()).await;
    let (count1, cpu1, t1) = (counter.load(Ordering::Relaxed), proxy_cpu(), Instant::now());

    let deadline = window.end + Duration::from_secs(10);
    let mut latencies = Vec::new();
    let mut failure = None;
    for task in &mut tasks.into_iter() {
        match tokio::time::timeout_at(deadline.into(), task).await {
            Ok(Ok(Ok(l))) => latencies.extend(l),
            Ok(Ok(Err(e))) => {
                failure.get_or_insert(e);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(anyhow::Error::new(e).context("client task failed"));
            }
            Err(_) => {
                failure.get_or_insert(anyhow::anyhow!("clients still busy 10 s after the end"));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    latencies.sort_unstable();
    let outcome = Outcome {
        count: (count1 - count0) as f64,
        seconds: (t1 - t0).as_secs_f64(),
        latencies,
        errors: errors.load(Ordering::Relaxed),
        proxy_cpu: cpu1 - cpu0,
        negotiated,
    };
    if outcome.count == 0.0 {
        bail!(
            "nothing completed in the measured part ({} errors)",
            outcome.errors
        );
    }
    Ok(outcome)
}

/// Opens `n` connections, at most 64 handshakes at a time.
async fn connect_all<T, F, Fut>(n: usize, open: F) -> anyhow::Result<Vec<T>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    futures_util::stream::iter((0..n).map(|_| {
        let attempt = open();
        async move {
            tokio::time::timeout(OP_TIMEOUT, attempt)
                .await
                .context("connection setup timed out")?
        }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect()
}

async fn bulk(
    mut stream: Stream,
    upload: bool,
    w: Window,
    counter: &AtomicU64,
) -> anyhow::Result<()> {
    stream
        .write_all(&[if upload { SINK } else { SOURCE }])
        .await?;
    stream.flush().await?;
    tokio::time::sleep_until(w.start.into()).await;
    let mut buf = if upload {
        pattern(BULK_CHUNK)
    } else {
        vec![0u8; BULK_CHUNK]
    };
    while Instant::now() < w.end {
        let n = if upload {
            stream.write(&buf).await?
        } else {
            stream.read(&mut buf).await?
        };
        if n == 0 {
            bail!("connection ended mid-run");
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    // Dropped with data in flight: a reset, which every target sees alike.
    Ok(())
}

async fn request_response(
    mut stream: Stream,
    size: usize,
    w: Window,
    counter: &AtomicU64,
) -> anyhow::Result<Vec<u64>> {
    let request = pattern(size);
    let mut response = vec![0u8; size];
    let mut rtts = Vec::with_capacity(1 << 16);
    stream.write_all(&[ECHO]).await?;
    stream.flush().await?;
    tokio::time::sleep_until(w.start.into()).await;
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            break;
        }
        stream.write_all(&request).await?;
        stream.flush().await?;
        stream.read_exact(&mut response).await?;
        let received = Instant::now();
        if response != request {
            bail!("echo differs from what was sent");
        }
        counter.fetch_add(1, Ordering::Relaxed);
        if w.counts(sent, received) {
            rtts.push(nanos(received - sent));
        }
    }
    Ok(rtts)
}

pub async fn ws_echo(
    mut ws: WsClient,
    size: usize,
    w: Window,
    counter: &AtomicU64,
) -> anyhow::Result<Vec<u64>> {
    let payload: Bytes = pattern(size).into();
    let mut rtts = Vec::with_capacity(1 << 14);
    tokio::time::sleep_until(w.start.into()).await;
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            break;
        }
        round_trip(&mut ws, &payload).await?;
        let received = Instant::now();
        counter.fetch_add(1, Ordering::Relaxed);
        if w.counts(sent, received) {
            rtts.push(nanos(received - sent));
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        ws.close(None).await?;
        while ws.next().await.is_some() {}
        anyhow::Ok(())
    })
    .await;
    Ok(rtts)
}

/// One message every `interval`, the first at `phase` after the start.
async fn ws_paced(
    mut ws: WsClient,
    size: usize,
    w: Window,
    interval: Duration,
    phase: Duration,
    counter: &AtomicU64,
) -> anyhow::Result<Vec<u64>> {
    let payload: Bytes = pattern(size).into();
    let mut rtts = Vec::new();
    let mut next = w.start + phase;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let sent = Instant::now();
        if sent >= w.end {
            break;
        }
        round_trip(&mut ws, &payload).await?;
        let received = Instant::now();
        counter.fetch_add(1, Ordering::Relaxed);
        if w.counts(sent, received) {
            rtts.push(nanos(received - sent));
        }
        // A late client does not catch up in a burst: it skips the ticks it missed.
        next += interval;
        while next < received {
            next += interval;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        ws.close(None).await?;
        while ws.next().await.is_some() {}
        anyhow::Ok(())
    })
    .await;
    Ok(rtts)
}

/// New connections in a loop; latency is the whole connection's life.
async fn connections(
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    echo: bool,
    proxy_header: bool,
    w: Window,
    counter: &AtomicU64,
    errors: &AtomicU64,
) -> anyhow::Result<Vec<u64>> {
    let request = pattern(64);
    let mut latencies = Vec::with_capacity(1 << 14);
    tokio::time::sleep_until(w.start.into()).await;
    loop {
        let began = Instant::now();
        if began >= w.end {
            break;
        }
        let attempt = async {
            let (mut stream, _) = protected::dial(addr, tls.as_ref(), proxy_header).await?;
            if echo {
                let mut message = vec![ECHO];
                message.extend_from_slice(&request);
                stream.write_all(&message).await?;
                stream.flush().await?;
                let mut response = vec![0u8; request.len()];
                stream.read_exact(&mut response).await?;
                if response != request {
                    bail!("echo differs from what was sent");
                }
            }
            // Close our side (close_notify first on TLS), then wait for the proxy to close
            // its side, so every connection counted has been torn down on the server too.
            stream.shutdown().await?;
            let mut rest = [0u8; 64];
            loop {
                match stream.read(&mut rest).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    // A FIN without close_notify still ends the connection.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e.into()),
                }
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(Ok(())) => {
                let ended = Instant::now();
                counter.fetch_add(1, Ordering::Relaxed);
                if w.counts(began, ended) {
                    latencies.push(nanos(ended - began));
                }
            }
            Ok(Err(_)) | Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(latencies)
}

/// Opens `n` WebSocket connections that complete their handshakes and then stay idle.
pub async fn open_idle(
    addr: SocketAddr,
    clients: &Clients,
    n: usize,
) -> anyhow::Result<Vec<WsClient>> {
    let opened = connect_all(n, || dial_ws(addr, clients)).await?;
    Ok(opened.into_iter().map(|(ws, _)| ws).collect())
}

/// Bytes of the stalled record that are sent: the rest of its 16 KiB never comes.
pub const PARTIAL_RECORD_SENT: usize = 100;

/// The start of a TLS 1.3 application-data record: its 5-byte header (type 23, legacy
/// version 3.3, length 16,384) and the first [`PARTIAL_RECORD_SENT`] bytes of its body.
fn partial_record() -> Vec<u8> {
    let mut record = vec![0x17, 0x03, 0x03, 0x40, 0x00];
    record.extend_from_slice(&pattern(PARTIAL_RECORD_SENT));
    record
}

/// Opens `n` WebSocket connections that complete their handshakes and echo once, then
/// writes the start of a TLS record straight onto each TCP socket, under the TLS client,
/// and stops: the proxy holds a partial record on every connection.
pub async fn open_stalled(
    addr: SocketAddr,
    clients: &Clients,
    n: usize,
) -> anyhow::Result<Vec<RawWsClient>> {
    let mut opened = connect_all(n, || dial_ws_raw(addr, clients)).await?;
    echo_once(&mut opened).await?;
    let record = partial_record();
    for ws in &mut opened {
        let (tcp, _) = ws.get_mut().get_mut();
        tcp.write_all(&record).await?;
    }
    Ok(opened)
}

/// How many stalled connections the proxy has closed, reset or sent anything on since they
/// stalled: each socket is peeked without waiting, and only "nothing to read yet" counts as
/// still held.
pub fn stalled_dropped(clients: &[RawWsClient]) -> usize {
    use std::os::fd::AsRawFd;
    clients
        .iter()
        .filter(|ws| {
            let fd = ws.get_ref().get_ref().0.as_raw_fd();
            let mut byte = 0u8;
            // SAFETY: `fd` is an open socket owned by `ws` for the whole call, and the buffer
            // is one valid, writable byte.
            let n = unsafe {
                libc::recv(
                    fd,
                    (&raw mut byte).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            let waiting =
                n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
            !waiting
        })
        .count()
}

/// One echo on each connection: the path is warm before memory is read.
pub async fn echo_once<S>(clients: &mut [WebSocketStream<S>]) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for ws in clients.iter_mut() {
        ws.send(Message::Binary(Bytes::from_static(b"warm")))
            .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => break,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended"),
            }
        }
    }
    Ok(())
}

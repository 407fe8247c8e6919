//! Scenario 8: UDP datagram relay, through nginx's stream module, sockgate's udp listener,
//! and straight at the backend (`direct`). HAProxy's community edition does not proxy UDP
//! (UDP load balancing is an HAProxy Enterprise module), so it has no figures here.
//!
//! Each session is its own client socket (its own source port, so its own session in the
//! proxy), connected to the target, in a closed loop: one datagram out, its echo back,
//! repeat. A datagram whose echo has not come in [`LOSS_TIMEOUT`] is counted as lost and
//! another one is sent; a late echo of it is recognised by its sequence number and skipped.
//!
//! The proxies run in instances of their own with only a UDP frontend (`nginx-udp.conf`,
//! `sockgate-udp.toml`), started once for the scenario, so the configs of the other
//! scenarios stay as they are.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sockgate_bench::proc::{Proc, Sockgate};
use tokio::net::UdpSocket;

use crate::backend::pattern;
use crate::load::Timing;
use crate::proxies::{Setup, Target};
use crate::{Measured, Metric};

/// No echo after this long: the datagram counts as lost and the next one goes out.
pub const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

/// Why HAProxy has no figures in scenario 8.
pub const HAPROXY_NA: &str = "HAProxy's community edition does not proxy UDP (UDP load balancing is the HAProxy Enterprise `udp-lb` module)";

/// Each session's first echo (its setup, before the clock starts) may take this long, lost
/// datagrams and retries included.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of a datagram that carry its sequence number.
const SEQ: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct UdpLoad {
    /// Bytes per datagram, at least [`SEQ`].
    pub size: usize,
    /// Client sockets, each its own session in the proxy.
    pub sessions: usize,
}

/// The backend's UDP echo: every datagram goes back to its sender as it came. Two tasks
/// read the one socket, as the backend runtime has a thread per core.
pub async fn echo(socket: UdpSocket) {
    set_buffers(&socket);
    let socket = Arc::new(socket);
    let serve = |socket: Arc<UdpSocket>| async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let _ = socket.send_to(&buf[..n], from).await;
                }
                Err(e) => {
                    eprintln!("proxybench backend: udp recv: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    tokio::join!(serve(socket.clone()), serve(socket));
}

/// 4 MiB receive and send buffers (or the most the kernel allows), so that the backend is
/// never where a datagram is dropped.
fn set_buffers(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: the fd is an open socket owned by `socket` for the whole call, and the
        // value is a valid c_int of the size given.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// A target ready for scenario 8: its process (none for direct) and its UDP address.
pub struct Running {
    pub target: Target,
    pub proc: Option<Proc>,
    pub addr: SocketAddr,
    /// The config it runs with, for the report.
    pub config: Option<(String, String)>,
}

impl Running {
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.proc {
            Some(proc) => proc.check_alive(),
            None => Ok(()),
        }
    }
}

pub fn start(target: Target, setup: &Setup) -> anyhow::Result<Running> {
    let dir = setup.dir.join(format!("{}-udp", target.label()));
    std::fs::create_dir_all(&dir)?;
    let mut running = match target {
        Target::Direct => Running {
            target,
            proc: None,
            addr: setup.backend.udp,
            config: None,
        },
        Target::Nginx => start_nginx(setup, &dir)?,
        Target::Sockgate => start_sockgate(setup, &dir)?,
        Target::Haproxy => bail!("{HAPROXY_NA}"),
    };
    wait_echoing(&mut running)?;
    Ok(running)
}

/// Waits until a datagram sent to the target comes back: the whole path works.
fn wait_echoing(running: &mut Running) -> anyhow::Result<()> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(running.addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    loop {
        // Refused (nothing listening yet) shows on the send or the receive: try again.
        if socket.send(b"ready?").is_ok() && matches!(socket.recv(&mut buf), Ok(6)) {
            return Ok(());
        }
        running.check_alive()?;
        if Instant::now() > deadline {
            let log = running
                .proc
                .as_ref()
                .map(Proc::log_tail)
                .unwrap_or_default();
            bail!(
                "{} does not echo UDP datagrams on {} after 10 s{log}",
                running.target,
                running.addr
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A UDP port that was free a moment ago, for nginx's config.
fn free_udp_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

pub fn nginx_config(
    listen: SocketAddr,
    backend: SocketAddr,
    dir: &Path,
    stream_module: Option<&Path>,
) -> String {
    let load = stream_module
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    let dir = dir.display();
    format!(
        r#"{load}worker_processes 2;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 16000;
}}

stream {{
    upstream udp_backend {{
        server {backend};
    }}

    server {{
        # reuseport, as in nginx's own UDP examples: a socket per worker, so a client's
        # datagrams keep reaching the worker that holds its session (sockgate's workers
        # have a SO_REUSEPORT socket each too).
        listen {listen} udp reuseport;
        proxy_pass udp_backend;
        # No proxy_responses: any number of datagrams may come back for each one sent,
        # and the session lasts until proxy_timeout passes without traffic, which is what
        # an echo, game or voice session needs. 60 s, as sockgate's session_idle_timeout.
        proxy_timeout 60s;
    }}
}}
"#
    )
}

fn start_nginx(setup: &Setup, dir: &Path) -> anyhow::Result<Running> {
    let addr = free_udp_port()?;
    let text = nginx_config(
        addr,
        setup.backend.udp,
        dir,
        setup.nginx_stream_module.as_deref(),
    );
    let proc = crate::proxies::spawn_nginx(setup, dir, &text)?;
    Ok(Running {
        target: Target::Nginx,
        proc: Some(proc),
        addr,
        config: Some(("nginx-udp.conf".into(), text)),
    })
}

/// One udp listener with its one route, session defaults (60 s idle, 100,000 sessions).
pub fn sockgate_config(backend: SocketAddr) -> String {
    format!(
        r#"[[listener]]
name = "udp"
listen = "127.0.0.1:0"
protocol = "udp"
route = [{{ name = "echo", backend = "udp-echo" }}]

[[backend]]
name = "udp-echo"
servers = ["{backend}"]
"#
    )
}

fn start_sockgate(setup: &Setup, dir: &Path) -> anyhow::Result<Running> {
    let text = sockgate_config(setup.backend.udp);
    let gateway = Sockgate::start(&setup.sockgate, dir, &text, &["--workers", "2"])?;
    Ok(Running {
        target: Target::Sockgate,
        addr: gateway.addr("udp")?,
        proc: Some(gateway.proc),
        config: Some(("sockgate-udp.toml".into(), text)),
    })
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure: Instant,
    end: Instant,
}

/// One run of `load` at `addr`; `proxy_cpu` reads the proxy's CPU seconds (NaN for none).
pub async fn run(
    load: UdpLoad,
    addr: SocketAddr,
    timing: Timing,
    proxy_cpu: &dyn Fn() -> f64,
) -> anyhow::Result<Measured> {
    if load.size < SEQ {
        bail!("a datagram needs at least {SEQ} bytes");
    }
    let counter = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));

    // Every session opens (one echo through the proxy) before the clock starts.
    let sockets =
        futures_util::future::try_join_all((0..load.sessions).map(|_| open(addr, load.size)))
            .await?;
    let start = Instant::now() + Duration::from_millis(50);
    let w = Window {
        start,
        measure: start + timing.warmup,
        end: start + timing.warmup + timing.duration,
    };
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let (counter, lost, sent) = (counter.clone(), lost.clone(), sent.clone());
            tokio::spawn(async move { session(socket, load.size, w, &counter, &lost, &sent).await })
        })
        .collect();

    tokio::time::sleep_until(w.measure.into()).await;
    let (count0, cpu0, t0) = (counter.load(Ordering::Relaxed), proxy_cpu(), Instant::now());
    tokio::time::sleep_until(w.end.into()).await;
    let (count1, cpu1, t1) = (counter.load(Ordering::Relaxed), proxy_cpu(), Instant::now());

    // Each session stops at most one LOSS_TIMEOUT after the end.
    let deadline = w.end + Duration::from_secs(10);
    let mut latencies = Vec::new();
    let mut failure = None;
    for task in tasks {
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
    let (count, seconds, cpu) = (
        (count1 - count0) as f64,
        (t1 - t0).as_secs_f64(),
        cpu1 - cpu0,
    );
    let (lost, sent) = (lost.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    if count == 0.0 {
        bail!("no echo came back in the measured part ({lost} of {sent} datagrams lost)");
    }
    let mut values = std::collections::BTreeMap::new();
    values.insert(Metric::Rate, count / seconds);
    for (metric, q) in [(Metric::P50, 0.5), (Metric::P99, 0.99)] {
        if let Some(ns) = sockgate_bench::stats::quantile(&latencies, q) {
            values.insert(metric, ns as f64 / 1e3);
        }
    }
    if cpu.is_finite() {
        values.insert(Metric::CpuPerOp, cpu / count * 1e6);
    }
    values.insert(Metric::Lost, lost as f64);
    Ok(Measured {
        values,
        proxy_cores: cpu / seconds,
        errors: 0,
        negotiated: None,
        note: format!(
            "{lost} of {} datagrams lost (no echo in {} ms: another one sent)",
            crate::report::thousands(sent as f64),
            LOSS_TIMEOUT.as_millis()
        ),
    })
}

/// A client socket of its own, connected to `addr`, whose first datagram has come back:
/// its session is open in the proxy.
async fn open(addr: SocketAddr, size: usize) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(addr).await?;
    let mut datagram = pattern(size);
    datagram[..SEQ].copy_from_slice(&0u64.to_le_bytes());
    let mut buf = vec![0u8; size + 1];
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while Instant::now() < deadline {
        socket
            .send(&datagram)
            .await
            .with_context(|| format!("send to {addr}"))?;
        if let Ok(received) = tokio::time::timeout(LOSS_TIMEOUT, socket.recv(&mut buf)).await {
            let n = received.with_context(|| format!("receive from {addr}"))?;
            if buf[..n] == datagram[..] {
                return Ok(socket);
            }
        }
    }
    bail!("no echo from {addr} in {} s", SETUP_TIMEOUT.as_secs_f64())
}

/// The closed loop of one session; returns the round trips that started and ended in the
/// measured part, in ns. A datagram lost (no echo in [`LOSS_TIMEOUT`]) counts in `lost` and
/// has no round trip.
async fn session(
    socket: UdpSocket,
    size: usize,
    w: Window,
    counter: &AtomicU64,
    lost: &AtomicU64,
    sent_total: &AtomicU64,
) -> anyhow::Result<Vec<u64>> {
    let mut datagram = pattern(size);
    let mut buf = vec![0u8; size + 1];
    let mut rtts = Vec::with_capacity(1 << 14);
    let mut seq = 0u64;
    tokio::time::sleep_until(w.start.into()).await;
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            break;
        }
        seq += 1;
        datagram[..SEQ].copy_from_slice(&seq.to_le_bytes());
        socket.send(&datagram).await.context("send")?;
        sent_total.fetch_add(1, Ordering::Relaxed);
        let deadline = sent + LOSS_TIMEOUT;
        loop {
            let Ok(received) =
                tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf)).await
            else {
                lost.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let n = received.context("receive")?;
            let echoed = u64::from_le_bytes(buf[..SEQ.min(n)].try_into().unwrap_or([0; SEQ]));
            if n == size && echoed < seq && buf[SEQ..n] == datagram[SEQ..] {
                // The late echo of a datagram counted as lost: not this one's.
                continue;
            }
            if buf[..n] != datagram[..] {
                bail!("echo differs from what was sent ({n} bytes, {size} sent)");
            }
            let received = Instant::now();
            counter.fetch_add(1, Ordering::Relaxed);
            if sent >= w.measure && received <= w.end {
                rtts.push(u64::try_from((received - sent).as_nanos()).unwrap_or(u64::MAX));
            }
            break;
        }
    }
    Ok(rtts)
}

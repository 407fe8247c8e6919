//! `wsbench`: what the WebSocket frame tracker costs, measured as echoed messages per second
//! and round-trip latency over three targets:
//!
//! - `direct`: client to the echo backend, no gateway (the ceiling);
//! - `websocket`: through a gateway listener whose route is `protocol = "websocket"`, so the
//!   bytes pass the HTTP upgrade and then the frame-tracking relay;
//! - `tcp`: through a gateway listener whose route is `protocol = "tcp"`, an opaque byte copy;
//!   the client's WebSocket handshake goes through the tunnel to the backend.
//!
//! Three processes share the machine: this one (the clients, one multi-thread runtime), the
//! echo backend (this binary re-run as `wsbench echo-backend`: its own process and runtime,
//! so its CPU is counted apart), and the release `sockgate` binary. Each client runs a closed
//! loop: send one binary message, wait for its echo, repeat. Targets run interleaved and each
//! run opens fresh connections, so slow drift on a shared machine spreads over all targets
//! instead of landing on one.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use sockgate_bench::proc::{Proc, Sockgate, cpu_seconds, ticks_per_second};
use sockgate_bench::stats::median;
use sockgate_bench::ws::round_trip;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Bytes;

/// WebSocket echo through sockgate's frame tracker vs its opaque TCP relay.
#[derive(Parser, Debug)]
#[command(name = "wsbench")]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,

    /// Concurrent connections in each run.
    #[arg(long, short = 'n', default_value_t = 100)]
    connections: usize,

    /// Measured seconds of each run.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,

    /// Seconds each run sends before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// Message sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,16384")]
    sizes: Vec<usize>,

    /// Runs of each target for each size; the table shows their medians.
    #[arg(long, short = 'r', default_value_t = 3)]
    repeats: usize,

    /// Targets, comma-separated: direct, websocket, tcp.
    #[arg(long, value_delimiter = ',', default_value = "direct,websocket,tcp")]
    targets: Vec<Target>,

    /// The gateway binary (build it with `cargo build --release` in the repo root).
    #[arg(long, value_name = "FILE", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/sockgate"))]
    sockgate: PathBuf,

    /// Keep the gateway's config and log in this folder instead of a temporary one.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// The echo backend alone: prints its address, echoes until stdin closes.
    #[command(hide = true)]
    EchoBackend,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Websocket,
    Tcp,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Websocket => "gateway websocket (tracker)",
            Target::Tcp => "gateway tcp (opaque)",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        Some(Sub::EchoBackend) => runtime.block_on(echo_backend()),
        None => bench(&args, &runtime),
    }
}

async fn echo_backend() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(echo(tcp));
                }
                Err(e) => eprintln!("wsbench echo-backend: accept: {e}"),
            }
        }
    };
    // The parent holds our stdin: when it goes away, however it ends, so do we.
    let parent_gone = async {
        let mut byte = [0u8; 1];
        let _ = tokio::io::stdin().read(&mut byte).await;
    };
    tokio::select! {
        () = accept => {}
        () = parent_gone => {}
    }
    Ok(())
}

async fn echo(tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    // tungstenite answers Ping and Close itself while we keep reading.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

fn start_backend() -> anyhow::Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let (proc, line) =
        Proc::spawn_announcing(Command::new(exe).arg("echo-backend"), "echo backend")?;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("echo backend printed {line:?}, not an address"))?;
    Ok((proc, addr))
}

/// Two plaintext listeners to the same backend: `ws` takes the WebSocket relay (detection,
/// hyper upgrade, frame tracker), `tcp` the opaque copy (no detection: every route is tcp).
fn gateway_config(backend: SocketAddr) -> String {
    format!(
        r#"[defaults]
idle_timeout = "10m"

[[listener]]
name = "ws"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "ws"
  protocol = "websocket"
  backend = "echo"

[[listener]]
name = "tcp"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "tcp"
  protocol = "tcp"
  backend = "echo"

[[backend]]
name = "echo"
servers = ["{backend}"]
"#
    )
}

struct Gateway {
    proc: Proc,
    ws: SocketAddr,
    tcp: SocketAddr,
}

fn start_gateway(binary: &Path, dir: &Path, backend: SocketAddr) -> anyhow::Result<Gateway> {
    if !binary.is_file() {
        bail!(
            "no gateway binary at {}: run `cargo build --release` in the repo root, or give --sockgate",
            binary.display()
        );
    }
    let gateway = Sockgate::start(binary, dir, &gateway_config(backend), &[])?;
    Ok(Gateway {
        ws: gateway.addr("ws")?,
        tcp: gateway.addr("tcp")?,
        proc: gateway.proc,
    })
}

#[derive(Clone, Copy)]
struct Cpu {
    gateway: f64,
    backend: f64,
    clients: f64,
}

struct Pids {
    gateway: String,
    backend: String,
    ticks: f64,
}

impl Pids {
    fn sample(&self) -> Cpu {
        Cpu {
            gateway: cpu_seconds(&self.gateway, self.ticks),
            backend: cpu_seconds(&self.backend, self.ticks),
            clients: cpu_seconds("self", self.ticks),
        }
    }
}

struct Run {
    target: Target,
    size: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// Gateway CPU per echoed message (the message and its echo both cross the gateway).
    gateway_cpu: Duration,
    /// CPU share of each process over the measured window, in cores.
    cores: Cpu,
}

type Client = WebSocketStream<TcpStream>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/bench"), tcp)
        .await
        .with_context(|| format!("WebSocket handshake via {addr}"))?;
    Ok(ws)
}

/// One connection's closed loop; returns the round trips that started after `measure` and
/// ended before `end`, in nanoseconds.
async fn drive(
    mut ws: Client,
    payload: Bytes,
    start: Instant,
    measure: Instant,
    end: Instant,
) -> anyhow::Result<Vec<u64>> {
    let mut rtts = Vec::with_capacity(4096);
    tokio::time::sleep_until(start.into()).await;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        round_trip(&mut ws, &payload).await?;
        let received = Instant::now();
        if sent >= measure && received <= end {
            rtts.push(u64::try_from((received - sent).as_nanos()).unwrap_or(u64::MAX));
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

struct Plan {
    connections: usize,
    warmup: Duration,
    duration: Duration,
}

async fn run_once(
    target: Target,
    addr: SocketAddr,
    size: usize,
    plan: &Plan,
    pids: &Pids,
) -> anyhow::Result<Run> {
    let payload: Bytes = (0..size)
        .map(|i| (i * 31 + 7) as u8)
        .collect::<Vec<u8>>()
        .into();
    let clients = futures_util::future::join_all((0..plan.connections).map(|_| connect(addr)))
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;

    let start = Instant::now() + Duration::from_millis(50);
    let measure = start + plan.warmup;
    let end = measure + plan.duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(drive(ws, payload.clone(), start, measure, end)))
        .collect();

    tokio::time::sleep_until(measure.into()).await;
    let before = pids.sample();
    tokio::time::sleep_until(end.into()).await;
    let after = pids.sample();

    let mut rtts = Vec::new();
    for task in tasks {
        rtts.extend(task.await??);
    }
    if rtts.is_empty() {
        bail!("no message completed in the measured window");
    }
    rtts.sort_unstable();
    let pick = |q: f64| Duration::from_nanos(rtts[((rtts.len() - 1) as f64 * q).round() as usize]);
    let seconds = plan.duration.as_secs_f64();
    let messages = rtts.len() as f64;
    let cores = Cpu {
        gateway: (after.gateway - before.gateway) / seconds,
        backend: (after.backend - before.backend) / seconds,
        clients: (after.clients - before.clients) / seconds,
    };
    Ok(Run {
        target,
        size,
        rate: messages / seconds,
        p50: pick(0.50),
        p99: pick(0.99),
        gateway_cpu: Duration::from_secs_f64(
            ((after.gateway - before.gateway) / messages).max(0.0),
        ),
        cores,
    })
}

fn bench(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if args.targets.is_empty() || args.sizes.is_empty() || args.repeats == 0 {
        bail!("nothing to run: give at least one target, one size and one repeat");
    }
    let temp;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let (mut backend, backend_addr) = start_backend()?;
    let mut gateway = start_gateway(&args.sockgate, &dir, backend_addr)?;
    let pids = Pids {
        gateway: gateway.proc.pid().to_string(),
        backend: backend.pid().to_string(),
        ticks: ticks_per_second(),
    };
    let plan = Plan {
        connections: args.connections,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
    };
    eprintln!(
        "wsbench: backend {backend_addr} (pid {}), sockgate {} (pid {}): websocket {}, tcp {}",
        pids.backend,
        args.sockgate.display(),
        pids.gateway,
        gateway.ws,
        gateway.tcp
    );

    let mut runs = Vec::new();
    runtime.block_on(async {
        for &size in &args.sizes {
            for repeat in 0..args.repeats {
                // Rotate the order so that no target always runs first or last.
                for i in 0..args.targets.len() {
                    let target = args.targets[(i + repeat) % args.targets.len()];
                    let addr = match target {
                        Target::Direct => backend_addr,
                        Target::Websocket => gateway.ws,
                        Target::Tcp => gateway.tcp,
                    };
                    let run = run_once(target, addr, size, &plan, &pids)
                        .await
                        .with_context(|| format!("{} with {size} B messages", target.label()))?;
                    eprintln!(
                        "  {size:>6} B  run {}/{}  {:<28} {:>9.0} msg/s  p50 {:>7}  p99 {:>7}  cores: gateway {:.2} backend {:.2} clients {:.2}",
                        repeat + 1,
                        args.repeats,
                        target.label(),
                        run.rate,
                        ms(run.p50),
                        ms(run.p99),
                        run.cores.gateway,
                        run.cores.backend,
                        run.cores.clients,
                    );
                    runs.push(run);
                    gateway.proc.check_alive()?;
                    backend.check_alive()?;
                    // Let the closed connections leave the gateway before the next run.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        anyhow::Ok(())
    })?;
    print!("{}", report(args, &runs));
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

struct Summary {
    rate: f64,
    rates: Vec<f64>,
    p50: f64,
    p99: f64,
    gateway_cpu_us: f64,
    gateway_cores: f64,
}

fn summarize(runs: &[&Run]) -> Summary {
    let of = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
    Summary {
        rate: of(&|r| r.rate),
        rates: runs.iter().map(|r| r.rate).collect(),
        p50: of(&|r| r.p50.as_secs_f64() * 1e3),
        p99: of(&|r| r.p99.as_secs_f64() * 1e3),
        gateway_cpu_us: of(&|r| r.gateway_cpu.as_secs_f64() * 1e6),
        gateway_cores: of(&|r| r.cores.gateway),
    }
}

fn report(args: &Args, runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### wsbench: {} connections, {} s measured after {} s warm-up, median of {} runs\n",
        args.connections, args.duration, args.warmup, args.repeats
    );
    let _ = writeln!(
        out,
        "| size | target | msg/s | p50 | p99 | gateway CPU per msg | gateway cores | msg/s of each run |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|");
    for &size in &args.sizes {
        for &target in &args.targets {
            let these: Vec<&Run> = runs
                .iter()
                .filter(|r| r.size == size && r.target == target)
                .collect();
            let s = summarize(&these);
            let each: Vec<String> = s.rates.iter().map(|r| format!("{r:.0}")).collect();
            let (cpu, cores) = if target == Target::Direct {
                ("–".to_string(), "–".to_string())
            } else {
                (
                    format!("{:.1} µs", s.gateway_cpu_us),
                    format!("{:.2}", s.gateway_cores),
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {cpu} | {cores} | {} |",
                size_label(size),
                target.label(),
                s.rate,
                s.p50,
                s.p99,
                each.join(", ")
            );
        }
    }

    let has = |t: Target| args.targets.contains(&t);
    if has(Target::Websocket) && has(Target::Tcp) {
        let _ = writeln!(
            out,
            "\n#### tracker / opaque: websocket route over tcp route (cost = 1 - ratio; the bar is a cost under 5%)\n"
        );
        let _ = writeln!(
            out,
            "| size | msg/s ratio | tracker cost | per-run msg/s ratios | p50 ratio | p99 ratio | gateway CPU per msg ratio |"
        );
        let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|");
        for &size in &args.sizes {
            let pick = |t: Target| -> Vec<&Run> {
                runs.iter()
                    .filter(|r| r.size == size && r.target == t)
                    .collect()
            };
            let (ws, tcp) = (pick(Target::Websocket), pick(Target::Tcp));
            let (w, t) = (summarize(&ws), summarize(&tcp));
            let ratio = w.rate / t.rate;
            let paired: Vec<String> = ws
                .iter()
                .zip(&tcp)
                .map(|(a, b)| format!("{:.3}", a.rate / b.rate))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {:.3} | {:+.1}% | {} | {:.3} | {:.3} | {:.3} ({:.1} vs {:.1} µs) |",
                size_label(size),
                ratio,
                (1.0 - ratio) * 100.0,
                paired.join(", "),
                w.p50 / t.p50,
                w.p99 / t.p99,
                w.gateway_cpu_us / t.gateway_cpu_us,
                w.gateway_cpu_us,
                t.gateway_cpu_us
            );
        }
    }
    out
}

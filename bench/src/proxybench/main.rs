//! `proxybench`: sockgate against HAProxy and nginx, with the same load driven through each
//! proxy (and straight at the backends, `direct`) in one run.
//!
//! Processes on the machine: this one (the clients, one tokio runtime), the backends (this
//! binary re-run as the hidden `backend` subcommand), and one process tree per proxy, each
//! with 2 worker threads or processes. Everything stays on 127.0.0.1. Scenarios 1–4, 6 and
//! 7 run against proxies started once; their order rotates in each repeat and the repeats
//! go round all scenarios in turn, so drift on a shared machine lands on every proxy and
//! every scenario alike. Scenario 5 (memory per idle connection, and per connection stalled
//! in the middle of a TLS record) starts each proxy afresh for each repeat and row, so
//! connections of earlier scenarios cannot leave memory behind that the new ones would
//! reuse. Scenario 8 (UDP datagram echo) runs against nginx and sockgate instances with
//! only a UDP frontend (see `udp.rs`); HAProxy's community edition does not proxy UDP.

mod backend;
mod curves;
mod h2;
mod load;
mod machine;
mod protected;
mod proxies;
mod report;
mod svg;
mod tls;
mod udp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sockgate_bench::proc::{Proc, raise_open_files, ticks_per_second};

use crate::load::{Clients, Load, Outcome, Timing};
use crate::proxies::{Certs, Running, Service, Setup, Target};

/// sockgate vs HAProxy vs nginx on loopback: TCP and TLS bulk, request/response latency,
/// TLS handshakes, WebSocket echo, memory per idle connection, connection rate, HTTP/2
/// requests and WebSockets over HTTP/2, UDP datagram echo.
#[derive(Parser, Debug)]
#[command(name = "proxybench")]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,

    /// Every scenario for about a second with few connections and one repeat; the table
    /// goes to a new temporary folder unless --out is given. Proxies that are not
    /// installed are left out (and the table says so) instead of failing the run.
    #[arg(long)]
    smoke: bool,

    /// Curves instead of the scenarios: sockgate against HAProxy as sizes grow (RSS per
    /// idle wss connection at 1k/5k/9k connections, CPU per wss message at 100/1k/5k
    /// active connections, CPU per new connection beside 0 and 9k idle ones). Writes
    /// curves.md and a chart per curve; --repeats defaults to 1, the output folder to
    /// bench/results/DATE-curves.
    #[arg(long)]
    curves: bool,

    /// Adds a protected row beside each row of scenarios 2 and 6 (issue 12): every proxy
    /// then takes a PROXY protocol v2 header on each connection (from trusted 127.0.0.0/8),
    /// balances least-connections over two backends with a TCP health check every second,
    /// and enforces connection limits set too high to refuse (per listener, per client
    /// address, new connections per address where the proxy can). results.md gets a table
    /// of protected ÷ plain per proxy. Not with --curves.
    #[arg(long)]
    protected: bool,

    /// Folder for results.md, the charts and the configs [default: bench/results/DATE, or
    /// a temporary folder with --smoke].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Runs of each scenario and target; tables show medians [default: 3; 1 with --smoke].
    #[arg(long, short = 'r')]
    repeats: Option<usize>,

    /// Measured seconds of each run [default: 3; 0.6 with --smoke].
    #[arg(long, short = 'd')]
    duration: Option<f64>,

    /// Seconds each run works before measuring starts [default: 1; 0.2 with --smoke].
    #[arg(long)]
    warmup: Option<f64>,

    /// Scenarios to run, comma-separated (1-8).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8")]
    scenarios: Vec<u8>,

    /// Targets, comma-separated: direct, haproxy, nginx, sockgate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,haproxy,nginx,sockgate"
    )]
    targets: Vec<Target>,

    /// Idle WebSocket connections of scenario 5 [default: 5000; 200 with --smoke].
    #[arg(long, value_name = "N")]
    idle_connections: Option<usize>,

    /// The gateway binary (build it with `cargo build --release` in the repo root).
    #[arg(long, value_name = "FILE", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/sockgate"))]
    sockgate: PathBuf,

    /// The haproxy binary (a name is looked up in PATH, /usr/sbin and /sbin).
    #[arg(long, value_name = "FILE", default_value = "haproxy")]
    haproxy: PathBuf,

    /// The nginx binary (a name is looked up in PATH, /usr/sbin and /sbin).
    #[arg(long, value_name = "FILE", default_value = "nginx")]
    nginx: PathBuf,

    /// Keep the configs, certificates and proxy logs in this folder.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// The backends alone: prints their addresses, serves until stdin closes.
    #[command(hide = true)]
    Backend {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

/// What one scenario row measures.
#[derive(Clone, Debug)]
pub enum Kind {
    Load(Load, Service),
    /// Scenario 5: WebSocket connections over TLS that complete the handshake, then idle.
    Idle {
        connections: usize,
        /// Each connection echoes once, then sends the start of a TLS record (its header
        /// and 100 of its 16,384 bytes) and stops, so the proxy holds a partial record.
        stalled: bool,
    },
    /// Scenario 8: UDP sessions in a closed loop of one datagram and its echo.
    Udp(udp::UdpLoad),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub scenario: u8,
    pub name: String,
    /// Unique across the suite and short enough for a chart's axis.
    pub short: String,
    pub kind: Kind,
    /// A `--protected` row: run against the protected proxies, with PROXY headers.
    pub protected: bool,
}

impl Case {
    /// Where direct makes sense: everything but the proxy's own memory, and but the
    /// protected rows (the backends read no PROXY header).
    pub fn has_direct(&self) -> bool {
        !matches!(self.kind, Kind::Idle { .. }) && !self.protected
    }

    /// Whether `target` can run this row at all.
    pub fn runs_at(&self, target: Target) -> bool {
        match (target, &self.kind) {
            // nginx has no WebSockets over HTTP/2 (RFC 8441).
            (Target::Nginx, Kind::Load(Load::H2Wss { .. }, _)) => false,
            // HAProxy's community edition has no UDP proxying.
            (Target::Haproxy, Kind::Udp(_)) => false,
            _ => true,
        }
    }

    /// Whether `target` has a figure for `metric`: direct has no proxy to measure.
    pub fn applies(&self, target: Target, metric: Metric) -> bool {
        self.runs_at(target)
            && (target.is_proxy()
                || (self.has_direct()
                    && !matches!(metric, Metric::CpuPerOp | Metric::RssPerConnection)))
    }
}

/// Figures a run can produce; a case has a subset of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    Rate,
    P50,
    P99,
    P999,
    /// Proxy CPU time per operation (handshake, connection, request, message).
    CpuPerOp,
    /// Proxy RSS per idle connection.
    RssPerConnection,
    /// Datagrams with no echo in time (scenario 8), over the whole run.
    Lost,
}

/// What one run of one case at one target measured.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub values: BTreeMap<Metric, f64>,
    /// CPU of the proxy's processes over the measured part, in cores.
    pub proxy_cores: f64,
    pub errors: u64,
    pub negotiated: Option<String>,
    /// A word on the run for the raw table (RSS before and after).
    pub note: String,
}

pub struct Record {
    pub case: usize,
    pub target: Target,
    pub repeat: usize,
    pub result: Result<Measured, String>,
}

pub struct Settings {
    pub smoke: bool,
    pub repeats: usize,
    pub timing: Timing,
    pub targets: Vec<Target>,
    /// Targets dropped because their program is missing, with the reason.
    pub missing: Vec<(Target, String)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match &args.command {
        Some(Sub::Backend { cert, key }) => runtime.block_on(backend::serve(cert, key)),
        None => bench(&args, &runtime),
    }
}

fn cases(smoke: bool, idle: usize, scenarios: &[u8]) -> Vec<Case> {
    let (bulk, rr, parallel, ws) = if smoke {
        ([1, 2], [1, 4], 4, 8)
    } else {
        ([1, 8], [1, 50], 16, 100)
    };
    let conns = |n: usize| {
        if n == 1 {
            "1 conn".to_string()
        } else {
            format!("{n} conns")
        }
    };
    let mut out = Vec::new();
    let mut add = |scenario: u8, name: String, short: String, kind: Kind| {
        if scenarios.contains(&scenario) {
            out.push(Case {
                scenario,
                name,
                short,
                kind,
                protected: false,
            });
        }
    };
    for tls in [false, true] {
        let scenario = if tls { 3 } else { 1 };
        let proto = if tls { "TLS" } else { "TCP" };
        for upload in [true, false] {
            for connections in bulk {
                let direction = if upload { "upload" } else { "download" };
                add(
                    scenario,
                    format!("{proto} bulk {direction}, {}", conns(connections)),
                    format!("{proto} {direction}, {}", conns(connections)),
                    Kind::Load(
                        Load::Bulk {
                            upload,
                            tls,
                            connections,
                        },
                        if tls { Service::Tls } else { Service::Tcp },
                    ),
                );
            }
        }
        if !tls {
            for connections in rr {
                add(
                    2,
                    format!("TCP 64 B request/response, {}", conns(connections)),
                    format!("req/resp, {}", conns(connections)),
                    Kind::Load(
                        Load::RequestResponse {
                            size: 64,
                            connections,
                        },
                        Service::Tcp,
                    ),
                );
            }
        }
    }
    add(
        3,
        format!("TLS 1.3 full handshakes, {parallel} parallel"),
        format!("TLS handshakes, {parallel} parallel"),
        Kind::Load(Load::Handshake { parallel }, Service::Tls),
    );
    for size in [128, 16 * 1024] {
        add(
            4,
            format!("wss echo {}, {}", report::size_label(size), conns(ws)),
            format!("wss {}, {}", report::size_label(size), conns(ws)),
            Kind::Load(
                Load::Wss {
                    size,
                    connections: ws,
                },
                Service::Wss,
            ),
        );
    }
    add(
        5,
        format!("{} idle wss connections", report::thousands(idle as f64)),
        format!("idle wss, {} conns", report::thousands(idle as f64)),
        Kind::Idle {
            connections: idle,
            stalled: false,
        },
    );
    add(
        5,
        format!(
            "{} wss connections stalled mid-record",
            report::thousands(idle as f64)
        ),
        format!("stalled wss, {} conns", report::thousands(idle as f64)),
        Kind::Idle {
            connections: idle,
            stalled: true,
        },
    );
    for tls in [false, true] {
        add(
            6,
            format!(
                "new connections, {}, {parallel} parallel",
                if tls { "TLS" } else { "plain" }
            ),
            format!("new conns, {}", if tls { "TLS" } else { "plain" }),
            Kind::Load(
                Load::Connect { tls, parallel },
                if tls { Service::Tls } else { Service::Tcp },
            ),
        );
    }
    add(
        7,
        format!("h2 request/response, 1 conn × {ws} streams"),
        format!("h2 req/resp, {ws} streams"),
        Kind::Load(Load::H2Requests { streams: ws }, Service::H2),
    );
    add(
        7,
        format!("wss over h2 echo 128 B, 1 conn × {ws} streams"),
        format!("wss over h2, {ws} streams"),
        Kind::Load(
            Load::H2Wss {
                size: 128,
                streams: ws,
            },
            Service::H2,
        ),
    );
    let udp_sessions = if smoke { [1, 8] } else { [1, 100] };
    for sessions in udp_sessions {
        let what = if sessions == 1 {
            "1 session".to_string()
        } else {
            format!("{sessions} sessions")
        };
        add(
            8,
            format!("UDP 64 B datagram echo, {what}"),
            format!("UDP 64 B, {what}"),
            Kind::Udp(udp::UdpLoad { size: 64, sessions }),
        );
    }
    let sessions = udp_sessions[1];
    add(
        8,
        format!("UDP 1200 B datagram echo, {sessions} sessions"),
        format!("UDP 1200 B, {sessions} sessions"),
        Kind::Udp(udp::UdpLoad {
            size: 1200,
            sessions,
        }),
    );
    out.sort_by_key(|c| c.scenario);
    out
}

/// A program given by name is looked up in PATH and the sbin folders (not always in a
/// user's PATH, and where Debian puts both proxies).
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn bench(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let began = Instant::now();
    let smoke = args.smoke;
    let repeats = args
        .repeats
        .unwrap_or(if smoke || args.curves { 1 } else { 3 });
    let timing = Timing {
        warmup: Duration::from_secs_f64(args.warmup.unwrap_or(if smoke { 0.2 } else { 1.0 })),
        duration: Duration::from_secs_f64(args.duration.unwrap_or(if smoke { 0.6 } else { 3.0 })),
    };
    let idle = args
        .idle_connections
        .unwrap_or(if smoke { 200 } else { 5000 });
    if repeats == 0 || args.targets.is_empty() || args.scenarios.is_empty() {
        bail!("nothing to run: give at least one scenario, one target and one repeat");
    }
    if let Some(bad) = args.scenarios.iter().find(|s| !(1..=8).contains(*s)) {
        bail!("there is no scenario {bad}: they are numbered 1 to 8");
    }
    let cases = cases(smoke, idle, &args.scenarios);
    let cases = if args.protected {
        protected::with_rows(cases, args.curves)?
    } else {
        cases
    };

    // Targets in a fixed order; a proxy that is not installed is fatal unless smoke.
    let mut targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| args.targets.contains(t))
        .collect();
    let mut missing = Vec::new();
    let haproxy = find_program(&args.haproxy);
    let nginx = find_program(&args.nginx);
    for (target, found, program) in [
        (Target::Haproxy, &haproxy, &args.haproxy),
        (Target::Nginx, &nginx, &args.nginx),
    ] {
        if targets.contains(&target) && found.is_none() {
            let why = format!("{} not found", program.display());
            if !smoke {
                bail!(
                    "{why}: install it (apt-get install -y haproxy nginx libnginx-mod-stream), give its path, or leave {target} out with --targets"
                );
            }
            eprintln!("proxybench: {why}; smoke mode goes on without {target}");
            missing.push((target, why));
            targets.retain(|t| *t != target);
        }
    }
    let nginx_stream_module = match (&nginx, targets.contains(&Target::Nginx)) {
        (Some(nginx), true) => proxies::nginx_stream_module(nginx)?,
        _ => None,
    };
    if !args.sockgate.is_file() {
        bail!(
            "no gateway binary at {}: run `cargo build --release` in the repo root, or give --sockgate",
            args.sockgate.display()
        );
    }

    let limit = raise_open_files();
    if cases.iter().any(|c| matches!(c.kind, Kind::Idle { .. }))
        && (limit as usize) < 2 * idle + 100
    {
        eprintln!(
            "proxybench: warning: open files are limited to {limit}; {idle} idle connections need about {} in the proxy",
            2 * idle + 100
        );
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
    let out = match &args.out {
        Some(out) => out.clone(),
        None if smoke => tempfile::Builder::new()
            .prefix("proxybench-smoke-")
            .tempdir()?
            .keep(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("results")
            .join(if args.curves {
                format!("{}-curves", machine::today())
            } else {
                machine::today()
            }),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let certs = Certs::create(&args.sockgate, &dir.join("certs"))?;
    let (mut backend, backend_addrs) = backend::start(&certs.cert, &certs.key)?;
    let setup = Setup {
        dir: dir.clone(),
        certs,
        backend: backend_addrs,
        sockgate: args.sockgate.clone(),
        haproxy: haproxy.unwrap_or_default(),
        nginx: nginx.unwrap_or_default(),
        nginx_stream_module,
    };
    let clients = Clients {
        tcp: tls::connector(&setup.certs.ca, &[])?,
        ws: tls::connector(&setup.certs.ca, &[b"http/1.1"])?,
        proxy_header: false,
        h2: h2::connector(&setup.certs.ca)?,
    };
    let environment = machine::describe(&args.sockgate, &setup);
    if args.curves {
        let targets: Vec<Target> = targets
            .iter()
            .copied()
            .filter(|t| matches!(t, Target::Haproxy | Target::Sockgate))
            .collect();
        if targets.is_empty() {
            bail!("--curves compares sockgate and HAProxy: give at least one of them");
        }
        eprintln!(
            "proxybench: curves of {} to {}",
            targets
                .iter()
                .map(|t| t.label())
                .collect::<Vec<_>>()
                .join(" and "),
            out.display()
        );
        let ok = curves::run(
            runtime,
            &setup,
            &clients,
            &targets,
            repeats,
            timing,
            smoke,
            &out,
            &environment,
            &mut backend,
        )?;
        drop(backend);
        if !ok {
            bail!(
                "a sockgate run failed; see {}",
                out.join("curves.md").display()
            );
        }
        return Ok(());
    }
    eprintln!(
        "proxybench: {} scenario rows × {} targets × {repeats} repeats, {:.1} s + {:.1} s warm-up each; results to {}",
        cases.len(),
        targets.len(),
        timing.duration.as_secs_f64(),
        timing.warmup.as_secs_f64(),
        out.display()
    );

    let mut records = Vec::new();
    let mut configs: BTreeMap<String, String> = BTreeMap::new();
    let ticks = ticks_per_second();

    // Scenarios 1-4, 6 and 7 against proxies started once.
    let load_cases: Vec<usize> = (0..cases.len())
        .filter(|&i| matches!(cases[i].kind, Kind::Load(..)))
        .collect();
    if !load_cases.is_empty() {
        let mut running = Vec::new();
        for &target in &targets {
            let r = proxies::start(target, &setup, "main")?;
            if let Some((name, text)) = &r.config {
                configs.insert(name.clone(), text.clone());
            }
            running.push(r);
        }
        let mut protected = protected::start(&cases, &setup, &targets, &clients, &mut configs)?;
        for repeat in 0..repeats {
            for &case in &load_cases {
                let Kind::Load(load, service) = cases[case].kind else {
                    continue;
                };
                // --protected rows: their own proxies and clients, no direct.
                let (running, clients, second) = match protected.as_mut() {
                    Some(p) if cases[case].protected => {
                        (&mut p.running, &p.clients, Some(&p.backend))
                    }
                    _ => (&mut running, &clients, None),
                };
                let n = running.len();
                for i in 0..n {
                    let r = &mut running[(i + repeat) % n];
                    if !cases[case].runs_at(r.target) {
                        continue;
                    }
                    let result = match second {
                        Some(second) => protected::run_load(
                            runtime, load, service, r, clients, timing, ticks, &backend, second,
                        ),
                        None => run_load(runtime, load, service, r, clients, timing, ticks),
                    };
                    progress(&cases[case], r.target, repeat, repeats, &result);
                    records.push(Record {
                        case,
                        target: r.target,
                        repeat,
                        result: result.map_err(|e| format!("{e:#}")),
                    });
                    if let Err(e) = r.check_alive() {
                        bail!("{e:#}");
                    }
                    backend.check_alive()?;
                    // Let closed connections leave every process before the next run.
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        if let Some(p) = protected {
            protected::finish(p, &mut configs)?;
        }
    }

    // Scenario 8 against instances of its own with a UDP frontend only, started once;
    // HAProxy has none (its community edition does not proxy UDP).
    let udp_cases: Vec<usize> = (0..cases.len())
        .filter(|&i| matches!(cases[i].kind, Kind::Udp(_)))
        .collect();
    let udp_targets: Vec<Target> = targets
        .iter()
        .copied()
        .filter(|t| *t != Target::Haproxy)
        .collect();
    if !udp_cases.is_empty() && !udp_targets.is_empty() {
        // A target that does not start has every run of it failed, with the reason.
        let mut running: Vec<(Target, Result<udp::Running, String>)> = Vec::new();
        for &target in &udp_targets {
            let r = udp::start(target, &setup);
            if let Ok(Some((name, text))) = r.as_ref().map(|r| &r.config) {
                configs.insert(name.clone(), text.clone());
            }
            running.push((target, r.map_err(|e| format!("{e:#}"))));
        }
        for repeat in 0..repeats {
            for &case in &udp_cases {
                let Kind::Udp(load) = cases[case].kind else {
                    continue;
                };
                for i in 0..running.len() {
                    let (target, r) = &mut running[(i + repeat) % udp_targets.len()];
                    let result = match r {
                        Ok(r) => {
                            let proc: Option<&Proc> = r.proc.as_ref();
                            let cpu = || proc.map_or(f64::NAN, |p| p.tree_cpu_seconds(ticks));
                            runtime.block_on(udp::run(load, r.addr, timing, &cpu))
                        }
                        Err(e) => Err(anyhow::anyhow!("{e}")),
                    };
                    progress(&cases[case], *target, repeat, repeats, &result);
                    records.push(Record {
                        case,
                        target: *target,
                        repeat,
                        result: result.map_err(|e| format!("{e:#}")),
                    });
                    if let Ok(r) = r {
                        if let Err(e) = r.check_alive() {
                            bail!("{e:#}");
                        }
                        // Let the sessions' last datagrams leave every process.
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    backend.check_alive()?;
                }
            }
        }
    }

    // Scenario 5 against a fresh process for each run.
    for (case, c) in cases.iter().enumerate() {
        let Kind::Idle {
            connections,
            stalled,
        } = c.kind
        else {
            continue;
        };
        let proxies: Vec<Target> = targets.iter().copied().filter(|t| t.is_proxy()).collect();
        for repeat in 0..repeats {
            for i in 0..proxies.len() {
                let target = proxies[(i + repeat) % proxies.len()];
                let instance = format!(
                    "{}-{}",
                    if stalled { "stalled" } else { "idle" },
                    repeat + 1
                );
                let result = run_idle(
                    runtime,
                    target,
                    &setup,
                    &clients,
                    connections,
                    stalled,
                    &instance,
                    &mut configs,
                );
                progress(c, target, repeat, repeats, &result);
                records.push(Record {
                    case,
                    target,
                    repeat,
                    result: result.map_err(|e| format!("{e:#}")),
                });
                backend.check_alive()?;
            }
        }
    }
    drop(backend);

    let settings = Settings {
        smoke,
        repeats,
        timing,
        targets,
        missing,
    };
    let elapsed = began.elapsed();
    let written = report::write(
        &out,
        &cases,
        &records,
        &settings,
        &environment,
        &configs,
        &dir,
        elapsed,
    )?;
    println!("{}", written.table);
    eprintln!(
        "proxybench: wrote {} in {:.0} s",
        out.join("results.md").display(),
        elapsed.as_secs_f64()
    );
    let failed: Vec<&Record> = records
        .iter()
        .filter(|r| r.result.is_err() && matches!(r.target, Target::Direct | Target::Sockgate))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} runs of sockgate or direct failed; see the errors in {}",
            failed.len(),
            out.join("results.md").display()
        );
    }
    Ok(())
}

fn progress(
    case: &Case,
    target: Target,
    repeat: usize,
    repeats: usize,
    result: &anyhow::Result<Measured>,
) {
    let what = match result {
        Ok(m) => m
            .values
            .iter()
            .map(|(metric, v)| report::short(case, *metric, *v))
            .collect::<Vec<_>>()
            .join("  "),
        Err(e) => format!("FAILED: {e:#}"),
    };
    eprintln!(
        "  {}/{}  {:<44} {:<9} {what}",
        repeat + 1,
        repeats,
        case.name,
        target.label()
    );
}

fn run_load(
    runtime: &tokio::runtime::Runtime,
    load: Load,
    service: Service,
    running: &Running,
    clients: &Clients,
    timing: Timing,
    ticks: f64,
) -> anyhow::Result<Measured> {
    let addr = running.frontends.get(service);
    let proc: Option<&Proc> = running.proc.as_ref();
    let cpu = || proc.map_or(f64::NAN, |p| p.tree_cpu_seconds(ticks));
    let outcome = runtime.block_on(load::run(load, addr, clients, timing, &cpu))?;
    Ok(measured(load, &outcome))
}

fn measured(load: Load, o: &Outcome) -> Measured {
    let mut values = BTreeMap::new();
    let rate = match load {
        Load::Bulk { .. } => o.rate() * 8.0 / 1e9,
        _ => o.rate(),
    };
    values.insert(Metric::Rate, rate);
    let latency =
        |q: f64| sockgate_bench::stats::quantile(&o.latencies, q).map(|ns| ns as f64 / 1e3);
    match load {
        Load::RequestResponse { .. } => {
            for (metric, q) in [
                (Metric::P50, 0.5),
                (Metric::P99, 0.99),
                (Metric::P999, 0.999),
            ] {
                if let Some(v) = latency(q) {
                    values.insert(metric, v);
                }
            }
        }
        Load::Wss { .. } | Load::WssPaced { .. } => {
            for (metric, q) in [(Metric::P50, 0.5), (Metric::P99, 0.99)] {
                if let Some(v) = latency(q) {
                    values.insert(metric, v);
                }
            }
        }
        Load::Handshake { .. } | Load::Connect { .. } => {
            if o.proxy_cpu.is_finite() {
                values.insert(Metric::CpuPerOp, o.proxy_cpu / o.count * 1e6);
            }
        }
        Load::H2Requests { .. } | Load::H2Wss { .. } => {
            for (metric, q) in [(Metric::P50, 0.5), (Metric::P99, 0.99)] {
                if let Some(v) = latency(q) {
                    values.insert(metric, v);
                }
            }
            if o.proxy_cpu.is_finite() {
                values.insert(Metric::CpuPerOp, o.proxy_cpu / o.count * 1e6);
            }
        }
        Load::Bulk { .. } => {}
    }
    Measured {
        values,
        proxy_cores: o.proxy_cpu / o.seconds,
        errors: o.errors,
        negotiated: o.negotiated.clone(),
        note: String::new(),
    }
}

/// Scenario 5: a fresh proxy, warmed with a few connections that come and go; its memory
/// before and after `n` WebSocket connections open and go idle (or, `stalled`, echo once
/// and then stop in the middle of a TLS record).
#[allow(clippy::too_many_arguments)]
fn run_idle(
    runtime: &tokio::runtime::Runtime,
    target: Target,
    setup: &Setup,
    clients: &Clients,
    n: usize,
    stalled: bool,
    instance: &str,
    configs: &mut BTreeMap<String, String>,
) -> anyhow::Result<Measured> {
    let mut running = proxies::start(target, setup, instance)?;
    // For the report, when no other scenario ran: the same config as every instance's.
    if let Some((name, text)) = &running.config {
        configs.entry(name.clone()).or_insert_with(|| text.clone());
    }
    let addr = running.frontends.wss;
    let Some(proc) = running.proc.as_ref() else {
        bail!("{target} has no process to measure");
    };
    let (before, after, processes) = runtime.block_on(async {
        let mut warm = load::open_idle(addr, clients, 20).await?;
        load::echo_once(&mut warm).await?;
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = proc.tree_rss_kib()?;
        if stalled {
            let held = load::open_stalled(addr, clients, n).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = proc.tree_rss_kib()?;
            let processes = proc.tree_len();
            // Every connection is still held, and the proxy is still waiting for the rest
            // of the record: none was closed or answered behind our back.
            let dropped = load::stalled_dropped(&held);
            if dropped > 0 {
                bail!("the proxy closed or answered {dropped} of {n} stalled connections");
            }
            drop(held);
            return anyhow::Ok((before, after, processes));
        }
        let mut idle = load::open_idle(addr, clients, n).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = proc.tree_rss_kib()?;
        let processes = proc.tree_len();
        // Every connection still works: none was refused or dropped behind our back.
        load::echo_once(&mut idle).await?;
        drop(idle);
        anyhow::Ok((before, after, processes))
    })?;
    running.check_alive()?;
    let mut values = BTreeMap::new();
    values.insert(
        Metric::RssPerConnection,
        (after as f64 - before as f64) / n as f64,
    );
    Ok(Measured {
        values,
        proxy_cores: f64::NAN,
        errors: 0,
        negotiated: None,
        note: format!(
            "RSS {} → {} KiB ({processes} process{})",
            report::thousands(before as f64),
            report::thousands(after as f64),
            if processes == 1 { "" } else { "es" }
        ),
    })
}

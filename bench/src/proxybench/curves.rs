//! `--curves`: how a cost grows with size, sockgate against HAProxy in one run. Each curve
//! is a scenario of the main suite with one size swept over a few points:
//!
//! 1. RSS per idle wss connection at 1,000, 5,000 and 9,000 connections (scenario 5's idle
//!    row, a fresh proxy for each point and run).
//! 2. Proxy CPU per relayed WebSocket message at 100, 1,000 and 5,000 active connections
//!    (scenario 4's 128 B wss echo, paced to 4,000 messages a second in all at every point
//!    so that the clients keep up; proxies started once for the whole curve).
//! 3. Proxy CPU per new plain connection with 0 and 9,000 idle wss connections held open
//!    beside it (scenario 6's plain row beside scenario 5's idle holder, a fresh proxy for
//!    each point and run).
//! 4. p99 latency of scenario 4's 128 B wss echo row (100 connections, closed loop) with 0
//!    and 9,000 idle wss connections held open beside it (a fresh proxy for each point and
//!    run).
//!
//! Writes `curves.md`, one table and one SVG chart per curve, and the proxies' configs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use sockgate_bench::proc::ticks_per_second;

use crate::load::{self, Clients, Load, Timing};
use crate::machine::{self, Environment};
use crate::proxies::{self, Setup, Target};
use crate::report::{self, thousands};
use crate::svg::{self, Bar, Chart, Group, Series};

/// Messages per second through the proxy in curve 2, the same at every point: each of N
/// connections sends `WSS_TOTAL_RATE / N` a second, so the points differ only in how many
/// connections carry the same traffic. (4 messages a second on each of 5,000 connections
/// was more than the clients could keep up with on 2 cores.)
pub const WSS_TOTAL_RATE: f64 = 4000.0;
/// Size of curve 2's messages.
pub const WSS_SIZE: usize = 128;
/// Curve 2's measured part is this many times --duration, so that the proxy's CPU time
/// is some hundred 10 ms clock ticks.
pub const WSS_DURATION_FACTOR: u32 = 2;
/// Connect loops of curve 3 (scenario 6's, full run).
pub const CONNECT_PARALLEL: usize = 16;
/// Connections of curve 4's echo row (scenario 4's).
pub const ECHO_CONNECTIONS: usize = 100;

pub struct Curve {
    pub file: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub axis: &'static str,
    pub points: Vec<usize>,
    pub what: &'static str,
}

pub fn curves(smoke: bool) -> Vec<Curve> {
    let (idle, active, held) = if smoke {
        (vec![100, 200], vec![10, 50], vec![0, 200])
    } else {
        (vec![1000, 5000, 9000], vec![100, 1000, 5000], vec![0, 9000])
    };
    vec![
        Curve {
            file: "curve-idle-rss.svg",
            title: "Proxy RSS per idle wss connection",
            unit: "KiB per connection",
            axis: "idle wss connections",
            points: idle,
            what: "a fresh proxy, warmed by 20 connections that come and go; its RSS before and a second after N wss connections open (TLS and WebSocket handshakes) and go idle, divided by N; every connection echoes once afterwards",
        },
        Curve {
            file: "curve-wss-cpu.svg",
            title: "Proxy CPU per relayed WebSocket message",
            unit: "µs per message",
            axis: "active wss connections",
            points: active,
            what: "N wss connections carrying 4,000 messages a second between them at every point: each sends one 128 B binary message every N/4,000 s (times spread evenly across connections) and waits for its echo; proxy CPU (user + system, whole process tree) over the measured part (twice --duration) divided by the messages echoed in it",
        },
        Curve {
            file: "curve-connect-cpu.svg",
            title: "Proxy CPU per new plain connection",
            unit: "µs per connection",
            axis: "idle wss connections held beside",
            points: held.clone(),
            what: "a fresh proxy holding N idle wss connections (opened as in curve 1) while 16 loops connect to its plain TCP frontend, echo 64 B, close and wait for the proxy to close; proxy CPU over the measured part divided by the connections completed",
        },
        Curve {
            file: "curve-echo-p99.svg",
            title: "p99 of the wss echo beside idle connections",
            unit: "µs p99",
            axis: "idle wss connections held beside",
            points: held,
            what: "a fresh proxy holding N idle wss connections (opened as in curve 1) while 100 other wss connections (10 in smoke mode) run scenario 4's closed loop of one 128 B binary message and its echo; the 99th percentile of the round trips in the measured part",
        },
    ]
}

struct Point {
    curve: usize,
    point: usize,
    target: Target,
    result: Result<(f64, String), String>,
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    runtime: &tokio::runtime::Runtime,
    setup: &Setup,
    clients: &Clients,
    targets: &[Target],
    repeats: usize,
    timing: Timing,
    smoke: bool,
    out: &Path,
    environment: &Environment,
    backend: &mut sockgate_bench::proc::Proc,
) -> anyhow::Result<bool> {
    let began = Instant::now();
    let curves = curves(smoke);
    let ticks = ticks_per_second();
    let mut points: Vec<Point> = Vec::new();
    let mut configs: BTreeMap<String, String> = BTreeMap::new();
    let say = |c: &Curve, n: usize, t: Target, r: &Result<(f64, String), String>| match r {
        Ok((v, note)) => eprintln!(
            "  {:<44} {:>6}  {:<9} {:.2} {} {note}",
            c.title,
            n,
            t.label(),
            v,
            c.unit
        ),
        Err(e) => eprintln!("  {:<44} {:>6}  {:<9} FAILED: {e}", c.title, n, t.label()),
    };

    // Curve 1: RSS per idle connection, a fresh proxy each time.
    for (p, &n) in curves[0].points.iter().enumerate() {
        for repeat in 0..repeats {
            for i in 0..targets.len() {
                let target = targets[(i + repeat + p) % targets.len()];
                let instance = format!("curve-idle-{n}-{}", repeat + 1);
                let result = crate::run_idle(
                    runtime,
                    target,
                    setup,
                    clients,
                    n,
                    false,
                    &instance,
                    &mut configs,
                )
                .map(|m| (m.values[&crate::Metric::RssPerConnection], m.note.clone()))
                .map_err(|e| format!("{e:#}"));
                say(&curves[0], n, target, &result);
                points.push(Point {
                    curve: 0,
                    point: p,
                    target,
                    result,
                });
                backend.check_alive()?;
            }
        }
    }

    // Curve 2: CPU per relayed message, proxies started once.
    {
        let mut running = Vec::new();
        for &target in targets {
            let r = proxies::start(target, setup, "curve-wss")?;
            if let Some((name, text)) = &r.config {
                configs.entry(name.clone()).or_insert_with(|| text.clone());
            }
            running.push(r);
        }
        let timing = Timing {
            warmup: timing.warmup,
            duration: timing.duration * WSS_DURATION_FACTOR,
        };
        for (p, &n) in curves[1].points.iter().enumerate() {
            for repeat in 0..repeats {
                for i in 0..running.len() {
                    let r = &mut running[(i + repeat + p) % targets.len()];
                    let load = Load::WssPaced {
                        size: WSS_SIZE,
                        connections: n,
                        per_second: WSS_TOTAL_RATE / n as f64,
                    };
                    let proc = r.proc.as_ref();
                    let cpu = || proc.map_or(f64::NAN, |p| p.tree_cpu_seconds(ticks));
                    let result = runtime
                        .block_on(load::run(load, r.frontends.wss, clients, timing, &cpu))
                        .map(|o| {
                            let p99 = sockgate_bench::stats::quantile(&o.latencies, 0.99)
                                .map_or(f64::NAN, |ns| ns as f64 / 1e3);
                            (
                                o.proxy_cpu / o.count * 1e6,
                                format!(
                                    "{} msg/s, {:.2} cores, p99 {} µs",
                                    thousands(o.rate()),
                                    o.proxy_cpu / o.seconds,
                                    thousands(p99)
                                ),
                            )
                        })
                        .map_err(|e| format!("{e:#}"));
                    say(&curves[1], n, r.target, &result);
                    points.push(Point {
                        curve: 1,
                        point: p,
                        target: r.target,
                        result,
                    });
                    r.check_alive()?;
                    backend.check_alive()?;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    // Curve 3: CPU per new connection beside N idle ones, a fresh proxy each time.
    for (p, &held) in curves[2].points.iter().enumerate() {
        for repeat in 0..repeats {
            for i in 0..targets.len() {
                let target = targets[(i + repeat + p) % targets.len()];
                let instance = format!("curve-connect-{held}-{}", repeat + 1);
                let result = beside(
                    runtime,
                    target,
                    setup,
                    clients,
                    held,
                    &instance,
                    timing,
                    ticks,
                    Load::Connect {
                        tls: false,
                        parallel: CONNECT_PARALLEL,
                    },
                )
                .map_err(|e| format!("{e:#}"));
                say(&curves[2], held, target, &result);
                points.push(Point {
                    curve: 2,
                    point: p,
                    target,
                    result,
                });
                backend.check_alive()?;
            }
        }
    }

    // Curve 4: the echo row's p99 beside N idle connections, a fresh proxy each time.
    let echo_connections = if smoke { 10 } else { ECHO_CONNECTIONS };
    for (p, &held) in curves[3].points.iter().enumerate() {
        for repeat in 0..repeats {
            for i in 0..targets.len() {
                let target = targets[(i + repeat + p) % targets.len()];
                let instance = format!("curve-echo-{held}-{}", repeat + 1);
                let result = beside(
                    runtime,
                    target,
                    setup,
                    clients,
                    held,
                    &instance,
                    timing,
                    ticks,
                    Load::Wss {
                        size: WSS_SIZE,
                        connections: echo_connections,
                    },
                )
                .map_err(|e| format!("{e:#}"));
                say(&curves[3], held, target, &result);
                points.push(Point {
                    curve: 3,
                    point: p,
                    target,
                    result,
                });
                backend.check_alive()?;
            }
        }
    }

    let elapsed = began.elapsed();
    write(
        out,
        &curves,
        &points,
        targets,
        repeats,
        timing,
        environment,
        &configs,
        elapsed,
    )?;
    eprintln!(
        "proxybench: wrote {} in {:.0} s",
        out.join("curves.md").display(),
        elapsed.as_secs_f64()
    );
    Ok(points
        .iter()
        .all(|p| p.result.is_ok() || p.target != Target::Sockgate))
}

/// Runs `load` through a fresh proxy that holds `held` idle wss connections beside it.
/// A connect load gives the proxy CPU per connection; an echo load, the p99 round trip.
#[allow(clippy::too_many_arguments)]
fn beside(
    runtime: &tokio::runtime::Runtime,
    target: Target,
    setup: &Setup,
    clients: &Clients,
    held: usize,
    instance: &str,
    timing: Timing,
    ticks: f64,
    load: Load,
) -> anyhow::Result<(f64, String)> {
    let mut running = proxies::start(target, setup, instance)?;
    let proc = running.proc.as_ref().context("no process to measure")?;
    let cpu = || proc.tree_cpu_seconds(ticks);
    let connect = matches!(load, Load::Connect { .. });
    let frontend = if connect {
        running.frontends.tcp
    } else {
        running.frontends.wss
    };
    let (value, note) = runtime.block_on(async {
        let mut idle = load::open_idle(running.frontends.wss, clients, held).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let o = load::run(load, frontend, clients, timing, &cpu).await?;
        // The held connections are still there.
        load::echo_once(&mut idle).await?;
        drop(idle);
        if connect {
            return anyhow::Ok((
                o.proxy_cpu / o.count * 1e6,
                format!(
                    "{} conn/s, {:.2} cores, {} errors",
                    thousands(o.rate()),
                    o.proxy_cpu / o.seconds,
                    o.errors
                ),
            ));
        }
        let quantile = |q| {
            sockgate_bench::stats::quantile(&o.latencies, q).map_or(f64::NAN, |ns| ns as f64 / 1e3)
        };
        anyhow::Ok((
            quantile(0.99),
            format!(
                "{} msg/s, p50 {} µs, {:.2} cores",
                thousands(o.rate()),
                thousands(quantile(0.5)),
                o.proxy_cpu / o.seconds
            ),
        ))
    })?;
    running.check_alive()?;
    Ok((value, note))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[allow(clippy::too_many_arguments)]
fn write(
    out: &Path,
    curves: &[Curve],
    points: &[Point],
    targets: &[Target],
    repeats: usize,
    timing: Timing,
    environment: &Environment,
    configs: &BTreeMap<String, String>,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let mut md = String::new();
    writeln!(md, "# Curves: how costs grow with size\n")?;
    writeln!(
        md,
        "`{}`, {} on {}; {repeats} run{} per point, {:.1} s measured after {:.1} s of warm-up where a load runs; {:.0} s in all. Load average before: {}.\n",
        std::env::var("PROXYBENCH_COMMAND").unwrap_or_else(|_| "proxybench --curves".into()),
        targets
            .iter()
            .map(|t| t.label())
            .collect::<Vec<_>>()
            .join(" and "),
        machine::today(),
        if repeats == 1 { "" } else { "s" },
        timing.duration.as_secs_f64(),
        timing.warmup.as_secs_f64(),
        elapsed.as_secs_f64(),
        environment.load_before,
    )?;
    writeln!(
        md,
        "Proxies, backends, clients and /proc sampling are the main suite's (see bench/README.md); the configs are saved next to this file. Config check and reload time against the number of routes and certificates: [`config-scale.py`](../../config-scale.py), with a run in [`2026-12-04-config-scale`](../2026-12-04-config-scale/).\n"
    )?;
    for (ci, c) in curves.iter().enumerate() {
        writeln!(md, "## {}. {}\n", ci + 1, c.title)?;
        writeln!(md, "{}.\n", c.what)?;
        write!(md, "| {} |", c.axis)?;
        for t in targets {
            write!(md, " {} ({}) |", t.label(), c.unit)?;
        }
        let ratio = targets.contains(&Target::Sockgate) && targets.contains(&Target::Haproxy);
        if ratio {
            write!(md, " sockgate ÷ HAProxy |")?;
        }
        writeln!(md)?;
        write!(md, "|---|")?;
        for _ in targets {
            write!(md, "---:|")?;
        }
        if ratio {
            write!(md, "---:|")?;
        }
        writeln!(md)?;
        let mut groups = Vec::new();
        let mut notes = String::new();
        for (pi, &n) in c.points.iter().enumerate() {
            write!(md, "| {} |", thousands(n as f64))?;
            let mut bars = Vec::new();
            let mut medians = BTreeMap::new();
            for &t in targets {
                let runs: Vec<&Point> = points
                    .iter()
                    .filter(|p| p.curve == ci && p.point == pi && p.target == t)
                    .collect();
                let mut ok: Vec<f64> = runs
                    .iter()
                    .filter_map(|p| p.result.as_ref().ok().map(|r| r.0))
                    .collect();
                for p in &runs {
                    let text = match &p.result {
                        Ok((v, note)) => format!("{:.2} {}; {note}", v, c.unit),
                        Err(e) => format!("failed: {e}"),
                    };
                    writeln!(notes, "- {} at {}: {text}", t.label(), thousands(n as f64))?;
                }
                if ok.is_empty() {
                    write!(md, " failed |")?;
                    bars.push(None);
                    continue;
                }
                let m = median(&mut ok);
                medians.insert(t, m);
                write!(md, " {} |", svg::compact(m))?;
                bars.push(Some(Bar {
                    value: m,
                    low: ok[0],
                    high: ok[ok.len() - 1],
                }));
            }
            if ratio {
                match (
                    medians.get(&Target::Sockgate),
                    medians.get(&Target::Haproxy),
                ) {
                    (Some(s), Some(h)) if *h > 0.0 => write!(md, " {:.2} |", s / h)?,
                    _ => write!(md, " – |")?,
                }
            }
            writeln!(md)?;
            groups.push(Group {
                label: format!("{} conns", thousands(n as f64)),
                bars,
            });
        }
        let chart = Chart {
            title: format!("{} ({})", c.title, c.axis),
            unit: c.unit.to_string(),
            series: targets
                .iter()
                .map(|&t| Series {
                    name: t.label().to_string(),
                    color: report::color(t),
                })
                .collect(),
            groups,
            lines: Vec::new(),
        };
        std::fs::write(out.join(c.file), svg::render(&chart))?;
        writeln!(md, "\n![{}]({})\n", c.title, c.file)?;
        writeln!(md, "Every run:\n\n{notes}")?;
    }
    writeln!(md, "## Machine\n")?;
    for (k, v) in environment
        .machine
        .iter()
        .chain(environment.versions.iter())
    {
        writeln!(md, "- {k}: {v}")?;
    }
    std::fs::write(out.join("curves.md"), &md)?;
    for (name, text) in configs {
        std::fs::write(out.join(name), text)?;
    }
    println!("{md}");
    Ok(())
}

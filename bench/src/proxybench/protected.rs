//! `--protected` (issue 12): scenarios 2 and 6 again, through proxies configured the way an
//! operator turns on the PROXY protocol, balancing, health checks and connection limits, so
//! that one run shows what those features cost beside the plain rows.
//!
//! Each proxy gets a second instance with two frontends (plain TCP and TLS-terminated TCP)
//! that:
//!
//! | feature | HAProxy | nginx | sockgate |
//! |---|---|---|---|
//! | PROXY protocol v2 header required, before TLS | `bind ... accept-proxy` | `listen ... proxy_protocol` + `set_real_ip_from 127.0.0.0/8` | `proxy_protocol = true` |
//! | header only from 127.0.0.0/8 | `tcp-request connection reject unless { src 127.0.0.0/8 }` | cannot: any source may send one; realip only decides whose is believed | `trusted_proxies = ["127.0.0.0/8"]` |
//! | least connections over two backends | `balance leastconn` | `least_conn`, with a `zone` shared by the workers | `balance = "least_conn"` |
//! | active TCP health check every 1 s | `check inter 1s` | none in open-source nginx (passive `max_fails` only, its default) | `health = { kind = "tcp", interval = "1s" }` |
//! | connections per listener | frontend `maxconn` | `limit_conn` on a zone keyed on `$server_port` | `max_connections` |
//! | connections per client address | stick table `conn_cur`, `tcp-request session reject` | `limit_conn` on a zone keyed on `$binary_remote_addr` | `max_connections_per_ip` |
//! | new connections per client address | stick table `conn_rate(1s)`, same rule | cannot: `limit_req` is HTTP only | `max_new_connections_per_ip` |
//!
//! The limits are far above what the run reaches (every client is 127.0.0.1, so one address
//! carries the whole load) but are checked on every connection. HAProxy's per-address rules
//! are `tcp-request session` ones: `tcp-request connection` rules see the socket's address,
//! not the header's (HAProxy's manual, `accept-proxy`), so only session rules count the
//! client the header names, as sockgate and nginx do.
//!
//! The second backend is another `proxybench backend` process, the first one's twin. Direct
//! has no protected row: the backends do not read PROXY headers. The protected sockgate has
//! an admin endpoint and the protected HAProxy a stats socket, which `finish` reads after
//! the runs to show the features were on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sockgate_bench::proc::{Proc, Sockgate};
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use crate::load::{self, Clients, Load, Stream, Timing};
use crate::proxies::{self, Frontends, Running, Service, Setup, Target};
use crate::report;
use crate::{Case, Kind, Measured, Record, Settings, backend, tls};

/// Open connections per listener (HAProxy's global `maxconn` is 9,500).
const MAX_CONNECTIONS: u32 = 9000;
/// Open connections per client address.
const MAX_CONNECTIONS_PER_IP: u32 = 5000;
/// New connections per client address per second.
const MAX_NEW_PER_IP_PER_SECOND: u32 = 100_000;

/// Name of the file (next to results.md) with what the protected sockgate and HAProxy
/// counted.
const CHECKS: &str = "protected-checks.md";

/// The plain rows with a protected row after each row of scenarios 2 and 6.
pub fn with_rows(plain: Vec<Case>, curves: bool) -> anyhow::Result<Vec<Case>> {
    if curves {
        bail!("--protected adds rows to scenarios 2 and 6; it does not apply to --curves");
    }
    let mut out = Vec::new();
    for case in plain {
        let protected = matches!(
            case.kind,
            Kind::Load(Load::RequestResponse { .. } | Load::Connect { .. }, _)
        )
        .then(|| Case {
            name: format!("{}, protected", case.name),
            short: format!("{}, prot.", case.short),
            protected: true,
            ..case.clone()
        });
        out.push(case);
        out.extend(protected);
    }
    if !out.iter().any(|c| c.protected) {
        bail!("--protected adds rows to scenarios 2 and 6, and --scenarios has neither");
    }
    Ok(out)
}

/// The protected proxies, the clients that send PROXY headers, and the second backend.
pub struct Protected {
    pub running: Vec<Running>,
    pub clients: Clients,
    /// The second backend process, the first one's twin.
    pub backend: Proc,
    /// The protected sockgate's admin endpoint, for its metrics.
    admin: Option<SocketAddr>,
    /// The protected HAProxy's stats socket, for its stick tables and servers.
    haproxy_socket: Option<PathBuf>,
}

/// Starts the second backend and a protected instance of each proxy among `targets`, when
/// `cases` has protected rows; their configs go into `configs`.
pub fn start(
    cases: &[Case],
    setup: &Setup,
    targets: &[Target],
    clients: &Clients,
    configs: &mut BTreeMap<String, String>,
) -> anyhow::Result<Option<Protected>> {
    if !cases.iter().any(|c| c.protected) {
        return Ok(None);
    }
    let (backend, second) = backend::start(&setup.certs.cert, &setup.certs.key)?;
    let servers = [setup.backend.tcp, second.tcp];
    let mut running = Vec::new();
    let mut admin = None;
    let mut haproxy_socket = None;
    for &target in targets.iter().filter(|t| t.is_proxy()) {
        let dir = setup.dir.join(format!("{}-protected", target.label()));
        std::fs::create_dir_all(&dir)?;
        let r = match target {
            Target::Direct => continue,
            Target::Haproxy => {
                haproxy_socket = Some(dir.join("haproxy.sock"));
                start_haproxy(setup, &dir, servers)?
            }
            Target::Nginx => start_nginx(setup, &dir, servers)?,
            Target::Sockgate => {
                let (r, a) = start_sockgate(setup, &dir, servers)?;
                admin = Some(a);
                r
            }
        };
        if let Some((name, text)) = &r.config {
            configs.insert(name.clone(), text.clone());
        }
        running.push(r);
    }
    Ok(Some(Protected {
        running,
        clients: Clients {
            tcp: clients.tcp.clone(),
            ws: clients.ws.clone(),
            h2: clients.h2.clone(),
            proxy_header: true,
        },
        backend,
        admin,
        haproxy_socket,
    }))
}

/// `load::dial`, but with `header` a PROXY protocol v2 header goes first, right after the
/// TCP connect and before any TLS: this connection's own addresses (the client's real
/// address, and the proxy's), as an L4 balancer in front of the proxy would write them.
pub async fn dial(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    header: bool,
) -> anyhow::Result<(Stream, String)> {
    if !header {
        return load::dial(addr, tls).await;
    }
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&header_v2(tcp.local_addr()?, addr)).await?;
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

/// A PROXY protocol v2 `PROXY` header for a TCP connection from `source` to `destination`.
pub fn header_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            h.push(0x21); // AF_INET6, STREAM
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
        }
    }
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&destination.port().to_be_bytes());
    h
}

/// `crate::run_load` for a protected row, with the CPU each backend used during the run in
/// the run's note: least-connections should spread the 50-connection and new-connection
/// rows over both.
#[allow(clippy::too_many_arguments)]
pub fn run_load(
    runtime: &tokio::runtime::Runtime,
    load: Load,
    service: Service,
    running: &Running,
    clients: &Clients,
    timing: Timing,
    ticks: f64,
    first: &Proc,
    second: &Proc,
) -> anyhow::Result<Measured> {
    let cpu = || [first, second].map(|b| b.tree_cpu_seconds(ticks));
    let before = cpu();
    let mut measured = crate::run_load(runtime, load, service, running, clients, timing, ticks)?;
    let after = cpu();
    let (a, b) = (after[0] - before[0], after[1] - before[1]);
    measured.note = format!(
        "backends' CPU {a:.2} s + {b:.2} s ({:.0}% on the second)",
        if a + b > 0.0 {
            b / (a + b) * 100.0
        } else {
            0.0
        }
    );
    Ok(measured)
}

/// After the last protected run: the second backend must still be up, and what the
/// protected sockgate and HAProxy counted (connections per server, health, refusals, the
/// per-address tables) goes to `configs` as [`CHECKS`], which `section` quotes.
pub fn finish(mut p: Protected, configs: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    p.backend.check_alive()?;
    let mut text = String::from(
        "Every protected row's client wrote a PROXY v2 header first. Had a proxy not read it, the header's 28 bytes would have reached the echo backend and come back, and the run would have failed on an echo that differs from what was sent; had it required one and found none, it would have closed the connection. What the protected proxies said after the last protected run:\n\n",
    );
    if let Some(admin) = p.admin {
        let metrics = http_get(admin, "/metrics")?;
        let backends = http_get(admin, "/backends")?;
        let wanted = [
            "sockgate_connections_total",
            "sockgate_rejected_total",
            "sockgate_backend_up",
            "sockgate_no_healthy_server_total",
            "sockgate_backend_connect_errors_total",
            "sockgate_tls_handshakes_total",
        ];
        let lines: Vec<&str> = metrics
            .lines()
            .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
            .collect();
        let rejected = lines
            .iter()
            .any(|l| l.starts_with("sockgate_rejected_total"));
        let _ = writeln!(
            text,
            "**sockgate** (`/metrics` and `/backends` on its admin endpoint). A connection without a header, from outside `trusted_proxies`, or over a limit is closed and counted in `sockgate_rejected_total`{}.\n",
            if rejected {
                " (its series are below)"
            } else {
                ", which has no series: nothing was refused"
            }
        );
        let _ = writeln!(text, "```\n{}\n```\n", lines.join("\n"));
        let _ = writeln!(text, "```json\n{}\n```\n", backends.trim());
    }
    if let Some(socket) = &p.haproxy_socket {
        let stat = haproxy_command(socket, "show stat")?;
        // pxname, svname, ..., stot (8th), ..., status (18th), ..., check_status (37th); the
        // frontends are named tcp and tls, the backend tcp.
        let servers: Vec<String> = stat
            .lines()
            .filter(|l| l.starts_with("tcp,") || l.starts_with("tls,"))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let get = |i: usize| f.get(i).copied().unwrap_or("?");
                format!(
                    "{:<12} sessions {:>7}  status {:<5} check {}",
                    format!("{}/{}", get(0), get(1)),
                    get(7),
                    get(17),
                    get(36)
                )
            })
            .collect();
        let mut tables = String::new();
        for frontend in ["tcp", "tls"] {
            tables += &haproxy_command(socket, &format!("show table {frontend}"))?;
        }
        let _ = writeln!(
            text,
            "**HAProxy** (`show stat` and `show table` on its stats socket): sessions per frontend and per server, each server's health check, and the per-address counters the `tcp-request session` rules read in the two frontends' stick tables.\n"
        );
        let _ = writeln!(
            text,
            "```\n{}\n{}\n```\n",
            servers.join("\n"),
            tables.trim()
        );
    }
    let _ = writeln!(
        text,
        "**nginx** has no statistics to ask in its open-source build beyond `stub_status` (HTTP only): that its runs succeeded is what shows it read the headers."
    );
    configs.insert(CHECKS.into(), text);
    Ok(())
}

/// One command on HAProxy's stats socket, and its answer.
fn haproxy_command(socket: &Path, command: &str) -> anyhow::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot reach HAProxy's stats socket {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(stream, "{command}")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// One HTTP/1.0 GET to the admin endpoint (1.0: no chunked body to undo).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot reach the admin endpoint at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response for {path}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

pub fn haproxy_config(f: &Frontends, servers: [SocketAddr; 2], pem: &Path, dir: &Path) -> String {
    let pem = pem.display();
    let mut text = String::from(
        r#"global
    nbthread 2
    maxconn 9500
"#,
    );
    // For proxybench to read the stick tables and the servers' state after the runs.
    let _ = writeln!(text, "    stats socket {}/haproxy.sock", dir.display());
    text.push_str(
        r#"
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout tunnel 1h
"#,
    );
    for (name, bind) in [
        ("tcp", format!("{} accept-proxy", f.tcp)),
        ("tls", format!("{} accept-proxy ssl crt {pem}", f.tls)),
    ] {
        let _ = write!(
            text,
            r#"
frontend {name}
    bind {bind}
    maxconn {MAX_CONNECTIONS}
    # PROXY headers from loopback only: connection rules see the socket's address.
    tcp-request connection reject unless {{ src 127.0.0.0/8 }}
    # Per client address: session rules see the address the PROXY header gave.
    stick-table type ip size 100k expire 30s store conn_cur,conn_rate(1s)
    tcp-request session track-sc0 src
    tcp-request session reject if {{ sc0_conn_cur gt {MAX_CONNECTIONS_PER_IP} }} || {{ sc0_conn_rate gt {MAX_NEW_PER_IP_PER_SECOND} }}
    default_backend tcp
"#
        );
    }
    let _ = write!(
        text,
        r#"
backend tcp
    balance leastconn
    server s1 {} check inter 1s
    server s2 {} check inter 1s
"#,
        servers[0], servers[1]
    );
    text
}

fn start_haproxy(setup: &Setup, dir: &Path, servers: [SocketAddr; 2]) -> anyhow::Result<Running> {
    let frontends = proxies::free_frontends()?;
    let text = haproxy_config(&frontends, servers, &setup.certs.combined, dir);
    let mut proc = proxies::spawn_haproxy(setup, dir, &text)?;
    // A bare connect gets no PROXY header, which the proxy refuses or times out: that
    // costs nothing measured.
    proxies::wait_listening(&mut proc, &[frontends.tcp, frontends.tls])?;
    Ok(Running {
        target: Target::Haproxy,
        proc: Some(proc),
        frontends,
        config: Some(("haproxy-protected.cfg".into(), text)),
    })
}

pub fn nginx_config(f: &Frontends, servers: [SocketAddr; 2], setup: &Setup, dir: &Path) -> String {
    let load = setup
        .nginx_stream_module
        .as_ref()
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    let (cert, key, dir) = (
        setup.certs.cert.display(),
        setup.certs.key.display(),
        dir.display(),
    );
    format!(
        r#"{load}worker_processes 2;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 16000;
}}

stream {{
    # Open-source nginx has no active health checks (health_check is NGINX Plus's); the
    # passive ones (max_fails=1 fail_timeout=10s) are its default.
    upstream tcp_backend {{
        # Shared by the workers, so that least_conn counts every worker's connections.
        zone tcp_backend 64k;
        least_conn;
        server {s1};
        server {s2};
    }}

    # The address in a PROXY header from loopback becomes $remote_addr. nginx cannot refuse
    # a header from anywhere else: it only leaves that sender's address in place.
    set_real_ip_from 127.0.0.0/8;

    # Open connections per client address (the header's) and per listener. There is no
    # limit on new connections per address in stream: limit_req is HTTP only.
    limit_conn_zone $binary_remote_addr zone=per_ip:10m;
    limit_conn_zone $server_port zone=per_listener:1m;
    limit_conn per_ip {MAX_CONNECTIONS_PER_IP};
    limit_conn per_listener {MAX_CONNECTIONS};

    server {{
        listen {tcp} proxy_protocol;
        proxy_pass tcp_backend;
    }}

    server {{
        listen {tls} ssl proxy_protocol;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass tcp_backend;
    }}
}}
"#,
        tcp = f.tcp,
        tls = f.tls,
        s1 = servers[0],
        s2 = servers[1],
    )
}

fn start_nginx(setup: &Setup, dir: &Path, servers: [SocketAddr; 2]) -> anyhow::Result<Running> {
    let frontends = proxies::free_frontends()?;
    let text = nginx_config(&frontends, servers, setup, dir);
    let mut proc = proxies::spawn_nginx(setup, dir, &text)?;
    // A bare connect gets no PROXY header, which the proxy refuses or times out: that
    // costs nothing measured.
    proxies::wait_listening(&mut proc, &[frontends.tcp, frontends.tls])?;
    Ok(Running {
        target: Target::Nginx,
        proc: Some(proc),
        frontends,
        config: Some(("nginx-protected.conf".into(), text)),
    })
}

pub fn sockgate_config(servers: [SocketAddr; 2], setup: &Setup) -> String {
    let (cert, key) = (setup.certs.cert.display(), setup.certs.key.display());
    let mut text = String::from(
        r#"[defaults]
idle_timeout = "1h"

# For proxybench to read what the gateway counted (rejections, server state).
[admin]
listen = "127.0.0.1:0"
"#,
    );
    for (name, tls) in [
        ("tcp", String::new()),
        (
            "tls",
            format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n"),
        ),
    ] {
        let _ = write!(
            text,
            r#"
[[listener]]
name = "{name}"
listen = "127.0.0.1:0"
{tls}proxy_protocol = true
trusted_proxies = ["127.0.0.0/8"]
max_connections = {MAX_CONNECTIONS}
max_connections_per_ip = {MAX_CONNECTIONS_PER_IP}
max_new_connections_per_ip = "{MAX_NEW_PER_IP_PER_SECOND}/s"

  [[listener.route]]
  name = "tcp"
  protocol = "tcp"
  backend = "tcp"
"#
        );
    }
    let _ = write!(
        text,
        r#"
[[backend]]
name = "tcp"
servers = ["{}", "{}"]
balance = "least_conn"
health = {{ kind = "tcp", interval = "1s" }}
"#,
        servers[0], servers[1]
    );
    text
}

fn start_sockgate(
    setup: &Setup,
    dir: &Path,
    servers: [SocketAddr; 2],
) -> anyhow::Result<(Running, SocketAddr)> {
    let text = sockgate_config(servers, setup);
    let gateway = Sockgate::start(&setup.sockgate, dir, &text, &["--workers", "2"])?;
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ready.json"))?)
            .context("bad ready file")?;
    let admin = ready["admin"]
        .as_str()
        .context("the ready file has no admin address")?
        .parse()
        .context("bad admin address in the ready file")?;
    let mut frontends = proxies::free_frontends()?;
    frontends.tcp = gateway.addr("tcp")?;
    frontends.tls = gateway.addr("tls")?;
    Ok((
        Running {
            target: Target::Sockgate,
            proc: Some(gateway.proc),
            frontends,
            config: Some(("sockgate-protected.toml".into(), text)),
        },
        admin,
    ))
}

/// results.md's section on the protected rows: each proxy's protected ÷ plain, and sockgate
/// ÷ HAProxy on both, from the same run; then what the protected sockgate counted.
pub fn section(
    cases: &[Case],
    records: &[Record],
    settings: &Settings,
    configs: &BTreeMap<String, String>,
) -> String {
    if !cases.iter().any(|c| c.protected) {
        return String::new();
    }
    let proxies: Vec<Target> = [Target::Haproxy, Target::Nginx, Target::Sockgate]
        .into_iter()
        .filter(|t| settings.targets.contains(t))
        .collect();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    };
    let cell = |v: Option<f64>| v.map_or("failed".to_string(), report::value);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Protected rows: PROXY protocol, balancing and limits\n"
    );
    let _ = writeln!(
        out,
        "`--protected` ran each row of scenarios 2 and 6 a second time through another instance of each proxy: every connection starts with a PROXY protocol v2 header (before the TLS ClientHello on TLS rows), accepted from 127.0.0.0/8 only (nginx cannot refuse other senders); least-connections over two backend processes with an active TCP check every second (nginx: no active checks); and limits on connections per listener, per client address and (HAProxy, sockgate) new connections per address per second, set far above what the run reaches. Direct has no protected row (the backends read no PROXY header), hence its `n/a` above. bench/README.md has each proxy's settings; the configs are below. `protected ÷ plain` is of medians from this run, as in the results table: above 1 is more, so better for rates and worse for latency and CPU.\n"
    );
    let _ = write!(out, "| # | row | figure |");
    for t in &proxies {
        let _ = write!(out, " {t} | {t} protected | {t} protected ÷ plain |");
    }
    let both = proxies.contains(&Target::Haproxy) && proxies.contains(&Target::Sockgate);
    if both {
        let _ = write!(
            out,
            " sockgate ÷ HAProxy, plain | sockgate ÷ HAProxy, protected |"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "|---|---|---|{}{}",
        "--:|--:|--:|".repeat(proxies.len()),
        if both { "--:|--:|" } else { "" }
    );
    for (i, case) in cases.iter().enumerate() {
        if !case.protected {
            continue;
        }
        let plain_name = case.name.trim_end_matches(", protected");
        let Some(plain) = cases
            .iter()
            .position(|c| !c.protected && c.name == plain_name)
        else {
            continue;
        };
        for metric in report::metrics_of(case) {
            let m = |c: usize, t: Target| report::median_of(records, c, t, metric);
            let _ = write!(
                out,
                "| {} | {plain_name} | {} |",
                case.scenario,
                report::figure(case, metric)
            );
            for &t in &proxies {
                let (p, q) = (m(plain, t), m(i, t));
                let _ = write!(out, " {} | {} | **{}** |", cell(p), cell(q), ratio(q, p));
            }
            if both {
                let _ = write!(
                    out,
                    " {} | **{}** |",
                    ratio(m(plain, Target::Sockgate), m(plain, Target::Haproxy)),
                    ratio(m(i, Target::Sockgate), m(i, Target::Haproxy)),
                );
            }
            let _ = writeln!(out);
        }
    }
    if let Some(checks) = configs.get(CHECKS) {
        let _ = writeln!(out, "\n{checks}");
    }
    let _ = writeln!(
        out,
        "The backends' CPU in each protected run (how least-connections spread the load over the two) is in the notes of [Every run](#every-run)."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_rows_follow_their_plain_rows_in_scenarios_2_and_6_only() {
        let plain = crate::cases(true, 10, &[1, 2, 6]);
        let all = with_rows(plain.clone(), false).unwrap();
        assert_eq!(all.len(), plain.len() + 4);
        for (i, case) in all.iter().enumerate() {
            if case.protected {
                assert!([2, 6].contains(&case.scenario));
                assert_eq!(case.name, format!("{}, protected", all[i - 1].name));
                assert!(!all[i - 1].protected);
                assert!(!case.has_direct());
            }
        }
        let shorts: std::collections::BTreeSet<&str> =
            all.iter().map(|c| c.short.as_str()).collect();
        assert_eq!(shorts.len(), all.len(), "chart labels stay unique");
        assert!(with_rows(crate::cases(true, 10, &[1, 3, 4, 5]), false).is_err());
        assert!(with_rows(plain, true).is_err());
    }

    #[test]
    fn header_v2_for_ipv4() {
        let h = header_v2(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..24], &[127, 0, 0, 1, 127, 0, 0, 1]);
        assert_eq!(&h[24..], &[0x9c, 0x40, 0x20, 0xfb]);
    }
}

//! The targets a load is driven at, and the equivalent configs of the three proxies.
//!
//! Each proxy gets four frontends on 127.0.0.1, all with the same backend process behind:
//!
//! | frontend | HAProxy | nginx | sockgate |
//! |---|---|---|---|
//! | `tcp`: plain TCP | `mode tcp` | `stream` module | listener whose routes are all `tcp` |
//! | `tls`: TLS terminated, then TCP | `mode tcp`, `bind ... ssl` | `stream` with `listen ... ssl` | the same with `tls` |
//! | `wss`: TLS terminated, WebSocket upgrade | `mode http` (upgrades are native) | `http` with `proxy_http_version 1.1` and the Upgrade/Connection headers | route `protocol = "websocket"` |
//! | `h2`: TLS terminated, ALPN `h2`, HTTP/1.1 backend (scenario 7) | `mode http`, `alpn h2,http/1.1` | `http`, `listen ... ssl http2`, upstream `keepalive` | routes `websocket` and `http` |
//!
//! The wss frontend is what an operator of each would write for a WebSocket service: an
//! HTTP-aware hop that sees the upgrade (HAProxy and nginx could also tunnel it as TCP,
//! but then neither could route on Host or path). Every proxy runs 2 worker threads or
//! processes, logs only warnings, and keeps its defaults otherwise: no `tune.*`, no
//! `reuseport`, no splice options. Limits are raised only where a default would refuse
//! scenario 5's 5,000 connections (HAProxy `maxconn`, nginx `worker_connections` and
//! `worker_rlimit_nofile`), and timeouts are long enough for an idle connection to survive.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use sockgate_bench::proc::{Proc, Sockgate};

use crate::backend::BackendAddrs;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Direct,
    Haproxy,
    Nginx,
    Sockgate,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::Direct,
        Target::Haproxy,
        Target::Nginx,
        Target::Sockgate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Haproxy => "HAProxy",
            Target::Nginx => "nginx",
            Target::Sockgate => "sockgate",
        }
    }

    pub fn is_proxy(self) -> bool {
        self != Target::Direct
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Which of a target's frontends a load goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Tcp,
    Tls,
    Wss,
    H2,
}

#[derive(Clone, Copy, Debug)]
pub struct Frontends {
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub wss: SocketAddr,
    pub h2: SocketAddr,
}

impl Frontends {
    pub fn get(&self, service: Service) -> SocketAddr {
        match service {
            Service::Tcp => self.tcp,
            Service::Tls => self.tls,
            Service::Wss => self.wss,
            Service::H2 => self.h2,
        }
    }
}

/// Files every proxy reads: the dev certificate from `sockgate cert dev`.
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file, as HAProxy's `crt` wants them.
    pub combined: PathBuf,
}

impl Certs {
    /// Writes the dev certificate with `sockgate cert dev` into `dir`.
    pub fn create(sockgate: &Path, dir: &Path) -> anyhow::Result<Certs> {
        let out = Command::new(sockgate)
            .args(["cert", "dev", "--out"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {} cert dev", sockgate.display()))?;
        if !out.status.success() {
            bail!(
                "`sockgate cert dev` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let certs = Certs {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            combined: dir.join("server.pem"),
        };
        let pem = std::fs::read_to_string(&certs.cert)? + &std::fs::read_to_string(&certs.key)?;
        std::fs::write(&certs.combined, pem)?;
        Ok(certs)
    }
}

/// The programs, and everything a proxy's config refers to.
pub struct Setup {
    pub dir: PathBuf,
    pub certs: Certs,
    pub backend: BackendAddrs,
    pub sockgate: PathBuf,
    pub haproxy: PathBuf,
    pub nginx: PathBuf,
    /// nginx's stream module when it is a dynamic module (Debian: libnginx-mod-stream).
    pub nginx_stream_module: Option<PathBuf>,
}

/// A target ready for load: its process (none for direct) and its addresses.
pub struct Running {
    pub target: Target,
    pub proc: Option<Proc>,
    pub frontends: Frontends,
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

pub fn start(target: Target, setup: &Setup, instance: &str) -> anyhow::Result<Running> {
    let dir = setup.dir.join(format!("{}-{instance}", target.label()));
    std::fs::create_dir_all(&dir)?;
    match target {
        Target::Direct => Ok(Running {
            target,
            proc: None,
            frontends: Frontends {
                tcp: setup.backend.tcp,
                tls: setup.backend.tls,
                wss: setup.backend.wss,
                h2: setup.backend.h2,
            },
            config: None,
        }),
        Target::Haproxy => start_haproxy(setup, &dir),
        Target::Nginx => start_nginx(setup, &dir),
        Target::Sockgate => start_sockgate(setup, &dir),
    }
}

/// A port that was free a moment ago, for proxies whose configs cannot say "any port".
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub fn free_frontends() -> anyhow::Result<Frontends> {
    Ok(Frontends {
        tcp: free_port()?,
        tls: free_port()?,
        wss: free_port()?,
        h2: free_port()?,
    })
}

/// Waits until every address in `addrs` accepts connections.
pub fn wait_listening(proc: &mut Proc, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &addr in addrs {
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} does not listen on {addr} after 10 s{}",
                    proc.name(),
                    proc.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

impl Frontends {
    /// Every frontend's address.
    fn all(&self) -> [SocketAddr; 4] {
        [self.tcp, self.tls, self.wss, self.h2]
    }
}

pub fn haproxy_config(f: &Frontends, b: &BackendAddrs, pem: &Path) -> String {
    let pem = pem.display();
    format!(
        r#"global
    nbthread 2
    # The default maxconn follows the open-file limit; said out loud so that scenario 5's
    # 5,000 connections, and the 9,000 held beside new ones in --curves (two sockets
    # each), fit under the sandbox's 20,000 files.
    maxconn 9500

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout tunnel 1h

frontend tcp
    bind {tcp}
    default_backend tcp

frontend tls
    bind {tls} ssl crt {pem}
    default_backend tcp

frontend wss
    mode http
    bind {wss} ssl crt {pem} alpn http/1.1
    default_backend ws

# Scenario 7: HTTP/2 to clients (and RFC 8441 WebSockets, which HAProxy 2.4+ announces
# and turns into an HTTP/1.1 upgrade toward the server), HTTP/1.1 to the backend.
frontend h2
    mode http
    bind {h2} ssl crt {pem} alpn h2,http/1.1
    default_backend http

backend tcp
    server s1 {btcp}

backend ws
    mode http
    server s1 {bws}

backend http
    mode http
    server s1 {bhttp}
"#,
        tcp = f.tcp,
        tls = f.tls,
        wss = f.wss,
        h2 = f.h2,
        btcp = b.tcp,
        bws = b.ws,
        bhttp = b.http,
    )
}

fn start_haproxy(setup: &Setup, dir: &Path) -> anyhow::Result<Running> {
    let frontends = free_frontends()?;
    let text = haproxy_config(&frontends, &setup.backend, &setup.certs.combined);
    let mut proc = spawn_haproxy(setup, dir, &text)?;
    wait_listening(&mut proc, &frontends.all())?;
    Ok(Running {
        target: Target::Haproxy,
        proc: Some(proc),
        frontends,
        config: Some(("haproxy.cfg".into(), text)),
    })
}

/// Writes `text` to DIR/haproxy.cfg and starts HAProxy on it in the foreground (`-db`), its
/// output in DIR/haproxy.log; stopped with SIGTERM (immediate stop).
pub fn spawn_haproxy(setup: &Setup, dir: &Path, text: &str) -> anyhow::Result<Proc> {
    let config = dir.join("haproxy.cfg");
    let log = dir.join("haproxy.log");
    std::fs::write(&config, text)?;
    let output = std::fs::File::create(&log)?;
    Proc::spawn(
        Command::new(&setup.haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output),
        "haproxy",
        Some(log),
        Some(libc::SIGTERM),
    )
}

/// Writes `text` to DIR/nginx.conf and starts nginx on it in the foreground. `-e`: the error
/// log before the config is read (the built-in path may not be writable); `-p`: the prefix
/// for relative paths. SIGTERM to the master is a fast shutdown that also stops the workers.
pub fn spawn_nginx(setup: &Setup, dir: &Path, text: &str) -> anyhow::Result<Proc> {
    let config = dir.join("nginx.conf");
    let log = dir.join("nginx.log");
    std::fs::write(&config, text)?;
    let output = std::fs::File::create(&log)?;
    Proc::spawn(
        Command::new(&setup.nginx)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output),
        "nginx",
        Some(dir.join("error.log")),
        Some(libc::SIGTERM),
    )
}

pub fn nginx_config(
    f: &Frontends,
    b: &BackendAddrs,
    certs: &Certs,
    dir: &Path,
    stream_module: Option<&Path>,
) -> String {
    let load = stream_module
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    let (cert, key, dir) = (certs.cert.display(), certs.key.display(), dir.display());
    format!(
        r#"{load}worker_processes 2;
# nginx's defaults (512 connections per worker, the inherited file limit) would refuse
# scenario 5; a worker may end up holding every connection, two sockets each.
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 16000;
}}

stream {{
    upstream tcp_backend {{
        server {btcp};
    }}

    server {{
        listen {tcp};
        proxy_pass tcp_backend;
    }}

    server {{
        listen {tls} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass tcp_backend;
    }}
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream ws_backend {{
        server {bws};
    }}

    server {{
        listen {wss} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        # nginx 1.22 leaves TLS 1.3 out of its default ssl_protocols (1.23.4 added it).
        ssl_protocols TLSv1.2 TLSv1.3;

        location / {{
            proxy_pass http://ws_backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}

    # Scenario 7: HTTP/2 to clients, HTTP/1.1 to the backend. nginx 1.22 has no WebSockets
    # over HTTP/2 (RFC 8441). Idle backend connections are kept for reuse, as HAProxy does
    # by default (nginx opens one per request without `keepalive`).
    upstream http_backend {{
        server {bhttp};
        keepalive 100;
    }}

    server {{
        listen {h2} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        # nginx closes a connection after 1,000 requests by default (GOAWAY); the row runs
        # all its requests on one connection.
        keepalive_requests 100000000;

        location / {{
            proxy_pass http://http_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"#,
        tcp = f.tcp,
        tls = f.tls,
        wss = f.wss,
        h2 = f.h2,
        btcp = b.tcp,
        bws = b.ws,
        bhttp = b.http,
    )
}

fn start_nginx(setup: &Setup, dir: &Path) -> anyhow::Result<Running> {
    let frontends = free_frontends()?;
    let text = nginx_config(
        &frontends,
        &setup.backend,
        &setup.certs,
        dir,
        setup.nginx_stream_module.as_deref(),
    );
    let mut proc = spawn_nginx(setup, dir, &text)?;
    wait_listening(&mut proc, &frontends.all())?;
    Ok(Running {
        target: Target::Nginx,
        proc: Some(proc),
        frontends,
        config: Some(("nginx.conf".into(), text)),
    })
}

pub fn sockgate_config(b: &BackendAddrs, certs: &Certs) -> String {
    let (cert, key) = (certs.cert.display(), certs.key.display());
    format!(
        r#"[defaults]
idle_timeout = "1h"

[[listener]]
name = "tcp"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "tcp"
  protocol = "tcp"
  backend = "tcp"

[[listener]]
name = "tls"
listen = "127.0.0.1:0"
tls = {{ cert = "{cert}", key = "{key}" }}

  [[listener.route]]
  name = "tcp"
  protocol = "tcp"
  backend = "tcp"

[[listener]]
name = "wss"
listen = "127.0.0.1:0"
tls = {{ cert = "{cert}", key = "{key}" }}

  [[listener.route]]
  name = "ws"
  protocol = "websocket"
  backend = "ws"

# Scenario 7: HTTP/2 (ALPN h2) on a TLS listener with HTTP routes; the backend is HTTP/1.1.
[[listener]]
name = "h2"
listen = "127.0.0.1:0"
tls = {{ cert = "{cert}", key = "{key}" }}

  [[listener.route]]
  name = "h2-ws"
  protocol = "websocket"
  backend = "http"

  [[listener.route]]
  name = "h2-http"
  protocol = "http"
  backend = "http"

[[backend]]
name = "tcp"
servers = ["{btcp}"]

[[backend]]
name = "ws"
servers = ["{bws}"]

[[backend]]
name = "http"
servers = ["{bhttp}"]
"#,
        btcp = b.tcp,
        bws = b.ws,
        bhttp = b.http,
    )
}

fn start_sockgate(setup: &Setup, dir: &Path) -> anyhow::Result<Running> {
    let binary = &setup.sockgate;
    let text = sockgate_config(&setup.backend, &setup.certs);
    let gateway = Sockgate::start(binary, dir, &text, &["--workers", "2"])?;
    Ok(Running {
        target: Target::Sockgate,
        frontends: Frontends {
            tcp: gateway.addr("tcp")?,
            tls: gateway.addr("tls")?,
            wss: gateway.addr("wss")?,
            h2: gateway.addr("h2")?,
        },
        proc: Some(gateway.proc),
        config: Some(("sockgate.toml".into(), text)),
    })
}

/// nginx's stream module file, when nginx was built with it as a dynamic module.
pub fn nginx_stream_module(nginx: &Path) -> anyhow::Result<Option<PathBuf>> {
    let out = Command::new(nginx)
        .arg("-V")
        .output()
        .with_context(|| format!("cannot run {} -V", nginx.display()))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !text.contains("--with-stream=dynamic") {
        return Ok(None);
    }
    let modules = text
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--modules-path="))
        .unwrap_or("/usr/lib/nginx/modules");
    let module = Path::new(modules).join("ngx_stream_module.so");
    if !module.is_file() {
        bail!(
            "nginx has the stream module as a dynamic module, but {} is missing (Debian: apt-get install libnginx-mod-stream)",
            module.display()
        );
    }
    Ok(Some(module))
}

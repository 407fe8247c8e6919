//! sockgate: a WebSocket/TCP reverse proxy and TLS-terminating gateway.
//!
//! One connection's path through the gateway, each stage a module:
//!
//! ```text
//! accept ─► TLS handshake (SNI → cert, ALPN) ─► detect ─► route ─► backend pick ─► connect ─► relay ─► finish
//! listener   tls + io::tls                     detect    route     upstream        upstream   relay     conn
//! ```
//!
//! `conn::serve` runs that pipeline for one connection, calling each stage in order. What
//! connections share is `services::Services`: the config snapshot in force (a connection
//! routes on the one current after detection; a reload publishes a new one without touching
//! running connections), the metrics, the live table and the drain signal.
//!
//! This file is the control plane: the [`Gateway`] builds and publishes snapshots, binds and
//! stops listeners, reloads, and answers the admin endpoint (through `admin::Control`).
//! [`start`] binds the listeners and the admin endpoint and returns a [`Handle`] to drain,
//! stop, reload, upgrade and wait for the gateway. Every import points down the layers the
//! README's "How it works" draws; `tests/architecture.rs` holds them.

// The public surface: start a gateway and control it (below), its config, certificates,
// errors and worker threads. Everything else is the gateway's own.
pub mod certs;
pub mod config;
pub mod error;
pub mod handoff;
pub mod upgrade;
pub mod workers;

mod admin;
mod certwatch;
mod client_hello;
mod conn;
mod detect;
mod io;
mod limits;
mod listener;
mod live;
mod metrics;
mod proxy_header;
mod relay;
mod route;
mod services;
mod shed;
mod shutdown;
mod snapshot;
mod tls;
mod upstream;

/// The hot paths `benches/hot_paths.rs` measures, reachable from outside for that alone:
/// not an API, and it changes with the code.
#[doc(hidden)]
pub mod bench {
    pub use crate::detect::{Detected, classify};
    pub use crate::io::buffer;
    pub use crate::metrics::Metrics;
    pub use crate::relay::websocket::tracker;
    pub use crate::route::RouteQuery;
    pub use crate::snapshot::Snapshot;
}

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, ListenAddr};
use crate::live::ConnLimit;
use crate::metrics::Metrics;
use crate::services::Services;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::workers::Workers;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error("admin endpoint cannot listen on {addr}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration")]
    Snapshot(#[from] SnapshotError),
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the gateway was started without a config file, so there is nothing to reload")]
    NoSource,
    #[error("the new config is invalid")]
    Invalid(#[from] ConfigErrors),
    #[error("the new config cannot be applied")]
    Start(#[from] StartError),
}

/// The control plane: publishes snapshots, binds and stops listeners, reloads, and answers
/// the admin endpoint. Connections see only its `Services`.
pub struct Gateway {
    services: Arc<Services>,
    ready: AtomicBool,
    conn_limit: Arc<ConnLimit>,
    /// Bound listeners by name, with the token that stops each accept loop.
    listeners: Mutex<HashMap<String, listener::Bound>>,
    /// Serializes reloads (SIGHUP and `POST /reload` may race).
    reloading: tokio::sync::Mutex<()>,
    workers: Workers,
    /// Told when a reload changes `access_log_interval` (see [`progress_events`]).
    progress_interval_changed: Arc<tokio::sync::Notify>,
}

impl Gateway {
    /// The current config snapshot.
    fn snapshot(&self) -> Arc<Snapshot> {
        self.services.snapshot()
    }

    /// Every listener bound and not draining.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.services.shutdown.is_draining()
    }

    fn listener_addrs(&self) -> Vec<(String, ListenAddr)> {
        let mut addrs: Vec<(String, ListenAddr)> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, bound)| (name.clone(), bound.local_addr.clone()))
            .collect();
        addrs.sort_by(|a, b| a.0.cmp(&b.0));
        addrs
    }

    /// Validates and applies a new config: binds listeners it adds, stops those it removes,
    /// then swaps the snapshot in one store. On any error nothing changes.
    async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.apply_config(config).await;
        // The parse tree and, unless connections still hold it, the old snapshot are freed
        // by now.
        release_freed_memory();
        if result.is_ok() {
            tracing::info!("config reloaded");
        }
        let label = if result.is_ok() { "ok" } else { "error" };
        self.services
            .metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        result
    }

    /// Reloads the file the running config came from.
    async fn reload_from_source(&self) -> Result<(), ReloadError> {
        let source = self
            .snapshot()
            .config
            .source
            .clone()
            .ok_or(ReloadError::NoSource);
        let config = match source {
            Ok(path) => config::load(&path).map_err(ReloadError::Invalid),
            Err(e) => Err(e),
        };
        match config {
            Ok(config) => self.reload(config).await,
            Err(e) => {
                self.services
                    .metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                Err(e)
            }
        }
    }

    async fn apply_config(&self, config: Config) -> Result<(), ReloadError> {
        let old = self.snapshot();
        if old.config.admin.as_ref().map(|a| a.listen) != config.admin.as_ref().map(|a| a.listen) {
            tracing::warn!(
                "the admin address changed in the config; it takes effect at the next restart"
            );
        }
        let snapshot = Snapshot::build_after(config, &self.services.metrics, Some(&old))
            .map_err(StartError::from)?;
        // A listener is kept when its address and kind (stream or UDP) are unchanged.
        let wanted: HashMap<String, (ListenAddr, bool)> = snapshot
            .config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), (l.listen.clone(), l.udp)))
            .collect();
        let keep: Vec<String> = {
            let bound = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            bound
                .iter()
                .filter(|(name, b)| {
                    wanted
                        .get(*name)
                        .is_some_and(|(addr, udp)| *addr == b.configured && *udp == b.udp)
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        // Listeners whose address changed are rebound: stop the old ones first so that a
        // listener moving between names on the same address can bind.
        let mut new_bound: Vec<listener::Pending> = Vec::new();
        // Stopped Unix listeners whose socket a renamed listener adopts.
        let mut taken_over: Vec<usize> = Vec::new();
        let mut stopped = Vec::new();
        {
            let mut bound = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = bound
                .keys()
                .filter(|name| !keep.contains(name))
                .cloned()
                .collect();
            for name in gone {
                if let Some(b) = bound.remove(&name) {
                    stopped.push((name, b));
                }
            }
        }
        for l in &snapshot.config.listeners {
            if keep.contains(&l.name) {
                continue;
            }
            // A Unix listener renamed on the same path takes over the socket it had: binding
            // anew would find the path still taken.
            let renamed = stopped.iter().position(|(_, b)| {
                matches!(l.listen, ListenAddr::Unix(_)) && b.configured == l.listen
            });
            let result = match renamed {
                Some(i) => stopped[i]
                    .1
                    .copies
                    .dup_all()
                    .map_err(|source| listener::BindError {
                        listener: l.name.clone(),
                        addr: l.listen.clone(),
                        source,
                    })
                    .and_then(|fds| {
                        taken_over.push(i);
                        listener::adopt(&l.name, &l.listen, l.unix, fds, l.udp)
                    }),
                None => listener::bind(
                    &l.name,
                    &l.listen,
                    l.unix,
                    self.workers.sockets_per_listener(),
                    l.udp,
                ),
            };
            match result {
                Ok(pending) => new_bound.push(pending),
                Err(e) => {
                    let e = StartError::from(e);
                    for pending in new_bound {
                        pending.discard();
                    }
                    // Put the stopped listeners back: the old config keeps running whole.
                    let mut bound = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
                    for (name, b) in stopped {
                        bound.insert(name, b);
                    }
                    return Err(ReloadError::Start(e));
                }
            }
        }
        for (i, (name, b)) in stopped.into_iter().enumerate() {
            tracing::info!(listener = %name, address = %b.local_addr, "listener removed by reload");
            b.stop.cancel();
            // A socket taken over by a renamed listener keeps its file.
            if !taken_over.contains(&i)
                && let Some(file) = &b.file
            {
                file.remove();
            }
        }
        let max_connections =
            listener::effective_max_connections(snapshot.config.defaults.max_connections);
        if max_connections != self.conn_limit.max() {
            tracing::info!(
                max_connections,
                previous = self.conn_limit.max(),
                "connection limit changed by reload"
            );
            self.conn_limit.set_max(max_connections);
            self.services
                .metrics
                .max_connections
                .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        }
        let snapshot = Arc::new(snapshot);
        self.services.publish(snapshot.clone());
        certwatch::export_expiry(&self.services.metrics, &snapshot.config);
        if snapshot.config.defaults.access_log_interval != old.config.defaults.access_log_interval {
            self.progress_interval_changed.notify_one();
        }
        snapshot.start_health(Some(&old), self.services.shutdown.drain_token());
        self.close_removed(&snapshot);
        // A kept Unix listener's file gets the `unix` settings of the new config.
        for l in &snapshot.config.listeners {
            if keep.contains(&l.name)
                && let ListenAddr::Unix(config::UnixAddr::Path(path)) = &l.listen
                && let Err(e) = listener::apply_perms(path, l.unix)
            {
                tracing::warn!(listener = %l.name, error = %e, "reload: the socket file keeps its mode and owner");
            }
        }
        for pending in new_bound {
            let bound = pending.spawn(&self.services, &self.conn_limit, &self.workers);
            tracing::info!(listener = %bound.0, address = %bound.1.local_addr, "listener added by reload");
            self.listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(bound.0, bound.1);
        }
        Ok(())
    }
}

impl Gateway {
    /// Closes the connections whose route or backend the new snapshot no longer has
    /// (WebSockets get Close 1012, spread over `drain_spread`); the rest run on untouched.
    fn close_removed(&self, snapshot: &Snapshot) {
        let mut closed = 0;
        // Each listener's (route, backend) pairs, gathered once per reload and only for the
        // listeners connections are on: a lookup per connection, not a scan of the routes.
        type Pairs = HashSet<(Arc<str>, Arc<str>)>;
        let mut kept_pairs: HashMap<Arc<str>, Option<Pairs>> = HashMap::new();
        for conn in self.services.live.all() {
            let (route, backend) = {
                let info = conn.info();
                (info.route.clone(), info.backend.clone())
            };
            let (Some(route), Some(backend)) = (route, backend) else {
                continue;
            };
            let pairs = kept_pairs.entry(conn.listener.clone()).or_insert_with(|| {
                snapshot.listener(&conn.listener).map(|l| {
                    l.routes
                        .iter()
                        .map(|r| (r.name.clone(), r.backend.name.clone()))
                        .collect()
                })
            });
            let kept = pairs
                .as_ref()
                .is_some_and(|pairs| pairs.contains(&(route, backend)));
            if !kept {
                conn.request_close(live::CloseReason::Reload);
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::info!(
                connections = closed,
                "closing connections whose route or backend the reload removed"
            );
        }
    }
}

/// Certificates and CA bundles changed on disk are put in force the way a reload puts in
/// force what it read, serialized with reloads. A listener's change rebuilds only the TLS
/// configurations; a backend's goes through the reload path, which rebuilds that backend's
/// server state. No listener is rebound and no connection closed.
impl certwatch::Target for Gateway {
    type Error = ReloadError;

    fn config(&self) -> Arc<Config> {
        self.snapshot().config.clone()
    }

    fn metrics(&self) -> &Metrics {
        &self.services.metrics
    }

    async fn apply(&self, changed: certwatch::Changed) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.snapshot();
        match certwatch::replace(&old.config, &changed) {
            None => {}
            // A backend's TLS client settings are part of its server state: the snapshot is
            // built again as a reload that re-reads these files builds it. That backend gets
            // new server state, whose health checks use the new settings; every other
            // backend keeps its own, and open connections keep theirs.
            Some((config, true)) => self.apply_config(config).await?,
            Some((config, false)) => {
                let snapshot = Arc::new(
                    old.with_certificates(config)
                        .map_err(|e| ReloadError::Start(e.into()))?,
                );
                self.services.publish(snapshot.clone());
                certwatch::export_expiry(&self.services.metrics, &snapshot.config);
            }
        }
        Ok(())
    }
}

impl Gateway {
    /// The live connections on the route and backend `filter` names.
    fn matching(&self, filter: admin::Filter<'_>) -> Vec<Arc<live::ConnCtx>> {
        let mut all = self.services.live.all();
        all.retain(|c| {
            let info = c.info();
            filter.matches(info.route.as_deref(), info.backend.as_deref())
        });
        all
    }
}

/// The access log's progress events (`access_log_interval`): one task, not a timer per
/// connection, walks the live table every interval and logs each connection open at least
/// that long, so such a connection gets an event every interval, the first between one and
/// two intervals after it opened. A reload that changes the interval restarts the tick; a
/// drain ends the task.
async fn progress_events(services: Arc<Services>, interval_changed: Arc<tokio::sync::Notify>) {
    loop {
        let interval = services.snapshot().config.defaults.access_log_interval;
        let tick = async {
            match interval {
                Some(interval) => tokio::time::sleep(interval).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = services.shutdown.drained() => return,
            _ = interval_changed.notified() => continue,
            _ = tick => {}
        }
        let Some(interval) = interval else { continue };
        services.live.each(|conn| {
            if conn.started_at.elapsed() >= interval {
                conn.log_progress();
            }
        });
    }
}

/// Controls a running gateway.
#[derive(Clone)]
pub struct Handle {
    gateway: Arc<Gateway>,
    admin_addr: Option<SocketAddr>,
    admin_stop: CancellationToken,
    /// The admin endpoint's configured address and socket, for an upgrade to hand over.
    admin_socket: Option<(SocketAddr, handoff::Copies)>,
}

/// Hands the allocator's free pages back to the kernel, off the calling thread. glibc keeps
/// what a config load frees (the TOML parse tree, an old snapshot after a reload) resident
/// for later allocations. At 100,000 routes that is about half of the process's RSS. Each
/// load and reload is followed by one trim; connections never cause one.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = std::thread::Builder::new()
            .name("sockgate-trim".into())
            .spawn(|| {
                #[allow(unsafe_code)]
                // SAFETY: malloc_trim takes no pointers; it works on the allocator's own
                // state, under the allocator's locks, as malloc and free do.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        // Without a thread to spare, the pages stay with the allocator, as before.
        if let Err(e) = trim {
            tracing::debug!(error = %e, "no thread to hand freed memory back on");
        }
    }
}

/// Binds every listener and the admin endpoint, then starts accepting on the current
/// runtime.
pub async fn start(config: Config) -> Result<Handle, StartError> {
    start_on(config, Workers::current()).await
}

/// Binds every listener (one socket per worker) and the admin endpoint, then starts
/// accepting on the workers. The admin endpoint and the drain timer run on the current
/// runtime.
pub async fn start_on(config: Config, workers: Workers) -> Result<Handle, StartError> {
    start_adopting(config, workers, &mut handoff::Inherited::default()).await
}

/// As [`start_on`], on the sockets received from the process this one replaces where a
/// listener (by name and configured address) or the admin endpoint (by address) has one;
/// the rest is bound.
pub async fn start_adopting(
    config: Config,
    workers: Workers,
    inherited: &mut handoff::Inherited,
) -> Result<Handle, StartError> {
    let metrics = Metrics::new();
    let max_connections = listener::effective_max_connections(config.defaults.max_connections);
    match config.defaults.max_connections {
        Some(_) => tracing::info!(max_connections, "connection limit set by the config"),
        None => tracing::info!(
            max_connections,
            open_files = listener::open_files_limit(),
            "connection limit derived from the open-files limit (two per connection, plus headroom)"
        ),
    }
    let conn_limit = ConnLimit::new(max_connections);
    metrics
        .max_connections
        .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let snapshot = Arc::new(Snapshot::build(config, &metrics)?);
    release_freed_memory();

    let mut pending = Vec::new();
    for l in &snapshot.config.listeners {
        pending.push(
            match inherited.take_listener(&l.name, &l.listen.to_string()) {
                Some(fds) => listener::adopt(&l.name, &l.listen, l.unix, fds, l.udp)?,
                None => listener::bind(
                    &l.name,
                    &l.listen,
                    l.unix,
                    workers.sockets_per_listener(),
                    l.udp,
                )?,
            },
        );
    }
    let admin_listener = match admin_listen {
        None => None,
        Some(addr) => Some(
            match inherited.take_admin(addr) {
                Some(socket) => tokio::net::TcpListener::from_std(socket),
                None => listener::listen_socket(addr),
            }
            .map_err(|source| StartError::AdminBind { addr, source })?,
        ),
    };

    let gateway = Arc::new(Gateway {
        services: Arc::new(Services::new(snapshot, metrics)),
        ready: AtomicBool::new(false),
        conn_limit,
        listeners: Mutex::new(HashMap::new()),
        reloading: tokio::sync::Mutex::new(()),
        workers,
        progress_interval_changed: Arc::new(tokio::sync::Notify::new()),
    });
    tokio::spawn(progress_events(
        gateway.services.clone(),
        gateway.progress_interval_changed.clone(),
    ));
    for p in pending {
        let (name, bound) = p.spawn(&gateway.services, &gateway.conn_limit, &gateway.workers);
        tracing::info!(listener = %name, address = %bound.local_addr, "listening");
        gateway
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, bound);
    }
    let admin_stop = CancellationToken::new();
    let admin_copies = handoff::Copies::default();
    let admin_addr = match admin_listener {
        None => None,
        Some(l) => {
            let addr = l.local_addr().ok();
            if let Some(addr) = addr {
                tracing::info!(address = %addr, "admin listening");
            }
            let copy = admin_copies.keep(&l);
            let serve = admin::serve(l, gateway.clone(), admin_stop.clone());
            tokio::spawn(async move {
                serve.await;
                drop(copy);
            });
            addr
        }
    };
    gateway
        .snapshot()
        .start_health(None, gateway.services.shutdown.drain_token());
    certwatch::export_expiry(&gateway.services.metrics, &gateway.snapshot().config);
    tokio::spawn(certwatch::run(
        gateway.clone(),
        gateway.services.shutdown.drain_token().clone(),
    ));
    gateway.ready.store(true, Ordering::Relaxed);
    Ok(Handle {
        gateway,
        admin_addr,
        admin_stop,
        admin_socket: admin_listen.map(|addr| (addr, admin_copies)),
    })
}

impl Handle {
    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.gateway.services.live.len()
    }

    /// The bound address of a TCP listener (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.gateway
            .listener_addrs()
            .into_iter()
            .find(|(name, _)| name == listener)
            .and_then(|(_, addr)| match addr {
                ListenAddr::Tcp(addr) => Some(addr),
                ListenAddr::Unix(_) => None,
            })
    }

    pub fn listener_addrs(&self) -> Vec<(String, ListenAddr)> {
        self.gateway.listener_addrs()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.gateway.services.metrics
    }

    /// Starts a drain: stop accepting, `/readyz` 503, let connections finish; after
    /// `drain_timeout` whatever is left is stopped. Unix listeners' socket files are removed:
    /// nothing will accept on them again.
    pub fn drain(&self) {
        for bound in self
            .gateway
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if let Some(file) = &bound.file {
                file.remove();
            }
        }
        self.start_drain();
    }

    fn start_drain(&self) {
        if self.gateway.services.shutdown.is_draining() {
            return;
        }
        self.gateway.services.shutdown.drain();
        let timeout = self.gateway.snapshot().config.defaults.drain_timeout;
        let shutdown = self.gateway.services.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {
                    if shutdown.tasks() > 0 {
                        tracing::warn!(remaining = shutdown.tasks(), "drain timeout reached; closing what is left");
                    }
                    shutdown.stop();
                }
                _ = shutdown.stopped() => {}
            }
        });
    }

    /// The process replacing this one is accepting on our sockets: stop accepting (the
    /// admin endpoint too, whose address now answers for the new process) and drain as on
    /// SIGTERM. The sockets stay open in the new process, so nothing queued is reset, and a
    /// Unix listener's socket file stays: it is the new process's.
    pub fn hand_over(&self) {
        self.admin_stop.cancel();
        self.start_drain();
    }

    /// Copies of every listening socket (each listener's, one per worker, and the admin
    /// endpoint's), for an upgrade to send.
    pub fn handoff_sockets(&self) -> std::io::Result<handoff::Sockets> {
        let mut listeners = Vec::new();
        for (name, bound) in self
            .gateway
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            listeners.push(handoff::ListenerSockets {
                name: name.clone(),
                configured: bound.configured.to_string(),
                fds: bound.copies.dup_all()?,
            });
        }
        let admin = match &self.admin_socket {
            Some((addr, copies)) => copies.dup_all()?.pop().map(|fd| (*addr, fd)),
            None => None,
        };
        Ok(handoff::Sockets {
            listeners,
            admin,
            control: None,
        })
    }

    /// The running config came from a file (not `demo` or `proxy`), so it can be reloaded
    /// and the binary upgraded.
    pub fn has_config_file(&self) -> bool {
        self.gateway.snapshot().config.source.is_some()
    }

    /// A drain has begun (a signal, or an upgrade handed over).
    pub fn is_draining(&self) -> bool {
        self.gateway.services.shutdown.is_draining()
    }

    /// Ends every connection now.
    pub fn stop(&self) {
        self.gateway.services.shutdown.stop();
    }

    pub async fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.gateway.reload(config).await
    }

    pub async fn reload_from_source(&self) -> Result<(), ReloadError> {
        self.gateway.reload_from_source().await
    }

    /// Waits until every listener and connection task has ended (after `drain` or `stop`),
    /// then closes the admin endpoint and ends the worker threads.
    pub async fn wait(&self) {
        self.gateway.services.shutdown.wait().await;
        self.admin_stop.cancel();
        self.gateway.workers.exit();
    }
}

/// What the admin endpoint may ask: it reads and closes through these answers and never
/// holds the data plane itself.
impl admin::Control for Gateway {
    fn admin_config(&self) -> Option<config::AdminConfig> {
        self.snapshot().config.admin.clone()
    }

    fn readiness(&self) -> admin::Readiness {
        if self.is_ready() {
            admin::Readiness::Ready
        } else if self.services.shutdown.is_draining() {
            admin::Readiness::Draining
        } else {
            admin::Readiness::Starting
        }
    }

    fn metrics_text(&self) -> String {
        for pool in self.snapshot().backends() {
            pool.publish_state();
        }
        self.services.metrics.render()
    }

    fn backends(&self) -> Vec<admin::BackendSummary> {
        self.snapshot()
            .backends()
            .iter()
            .map(|pool| admin::BackendSummary {
                name: pool.name.to_string(),
                servers: pool
                    .view()
                    .into_iter()
                    .map(|s| admin::ServerSummary {
                        address: s.address,
                        weight: s.weight,
                        healthy: s.healthy,
                        active_connections: s.active_connections,
                    })
                    .collect(),
            })
            .collect()
    }

    fn connections(&self) -> Vec<live::ConnSummary> {
        self.services
            .live
            .all()
            .iter()
            .map(|c| c.snapshot())
            .collect()
    }

    fn close(&self, which: admin::Which<'_>) -> usize {
        let picked: Vec<_> = match which {
            admin::Which::Id(id) => self.services.live.get(id).into_iter().collect(),
            admin::Which::Matching(filter) => self.matching(filter),
        };
        for conn in &picked {
            conn.request_close(live::CloseReason::Operator);
        }
        picked.len()
    }

    fn shed(&self, filter: admin::Filter<'_>, fraction: f64, spread: std::time::Duration) -> usize {
        // A drain closes every connection itself.
        if self.services.shutdown.is_draining() {
            return 0;
        }
        let schedule = shed::plan(self.matching(filter), fraction, spread);
        let picked = schedule.len();
        shed::spawn(self.services.clone(), schedule);
        picked
    }

    async fn reload(&self) -> Result<(), Vec<String>> {
        match self.reload_from_source().await {
            Ok(()) => Ok(()),
            Err(ReloadError::Invalid(errors)) => {
                Err(errors.0.iter().map(|e| e.to_string()).collect())
            }
            Err(e) => Err(vec![error::error_chain(&e)]),
        }
    }
}

//! The config snapshot: everything built from one validated config — TLS server configs, route
//! tables, backend pools. A connection loads the current snapshot once and keeps it for its
//! whole life (an HTTP connection loads it again for each request); a reload builds a
//! complete new one and swaps it in with one store.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Cidr, Config, Defaults, Rate};
use crate::metrics::Metrics;
use crate::route::{Route, RouteTable};
use tokio_util::sync::CancellationToken;

use crate::upstream::Pool;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    listeners: HashMap<String, Arc<ListenerSnap>>,
    /// Every backend's pool, in config order.
    backends: Vec<Arc<Pool>>,
    /// Where each backend's pool is in `backends`, by name: a reload looks up every
    /// backend of the snapshot before, and must stay linear in their number.
    by_name: HashMap<Arc<str>, usize>,
}

#[derive(Clone)]
pub struct ListenerSnap {
    pub name: Arc<str>,
    /// `protocol = "udp"`: datagrams, relayed per client session (see `conn::udp`).
    pub udp: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub routes: RouteTable,
    /// False when every route is `tcp`: no detection, no added delay.
    pub detect: bool,
    pub defaults: Defaults,
    /// Clients whose forwarded headers are kept and appended to (usually none).
    pub trusted_proxies: Box<[Cidr]>,
    /// Connections start with a PROXY header, from `trusted_proxies` only.
    pub proxy_protocol: bool,
    /// Some route's backend is sent a PROXY header: the address the client reached is kept.
    pub sends_proxy_header: bool,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<u32>,
    pub max_new_connections_per_ip: Option<Rate>,
    /// Carries the client certificate's subject to HTTP and WebSocket backends.
    pub client_cert_header: Option<http::HeaderName>,
    /// This listener's connection metrics, resolved once per protocol.
    pub conn_metrics: Arc<crate::metrics::ListenerHandles>,
}

impl ListenerSnap {
    /// Whether `ip` may send this listener PROXY headers and forwarded headers.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The per-address limits in force.
    pub fn ip_rules(&self) -> crate::limits::IpRules {
        crate::limits::IpRules {
            max_open: self.max_connections_per_ip,
            rate: self.max_new_connections_per_ip.map(|r| (r.count, r.per)),
        }
    }

    /// Whether any per-address limit is set.
    pub fn limits_per_ip(&self) -> bool {
        self.max_connections_per_ip.is_some() || self.max_new_connections_per_ip.is_some()
    }
}

impl std::fmt::Debug for ListenerSnap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSnap")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("routes", &self.routes)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("listener `{listener}`: cannot build the TLS configuration")]
    Tls {
        listener: String,
        #[source]
        source: rustls::Error,
    },
    #[error("backend `{backend}`: cannot build the TLS configuration")]
    BackendTls {
        backend: String,
        #[source]
        source: rustls::Error,
    },
    #[error("route `{route}` names backend `{backend}`, which is not defined")]
    UnknownBackend { route: String, backend: String },
}

impl Snapshot {
    pub fn build(config: Config, metrics: &Metrics) -> Result<Self, SnapshotError> {
        Self::build_after(config, metrics, None)
    }

    /// As [`Snapshot::build`], keeping the server state (health, ejections, live counts)
    /// of `previous`'s backends whose servers and health check are unchanged.
    pub fn build_after(
        config: Config,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Self, SnapshotError> {
        let defaults = &config.defaults;
        let pools: Vec<Arc<Pool>> = config
            .backends
            .iter()
            .map(|b| {
                let before = previous.and_then(|p| p.backend(&b.name));
                Pool::new(b, defaults.connect_timeout, metrics, before.map(|p| &**p))
                    .map(Arc::new)
                    .map_err(|source| SnapshotError::BackendTls {
                        backend: b.name.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let by_name: HashMap<Arc<str>, usize> = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let mut routes = Vec::with_capacity(l.routes.len());
            for r in &l.routes {
                let backend = by_name
                    .get(r.backend.as_str())
                    .map(|&i| &pools[i])
                    .ok_or_else(|| SnapshotError::UnknownBackend {
                        route: r.name.clone(),
                        backend: r.backend.clone(),
                    })?;
                routes.push(Arc::new(Route::new(r, backend.clone(), defaults)));
            }
            let sends_proxy_header = routes.iter().any(|r| r.backend.send_proxy.is_some());
            let routes = RouteTable::new(routes);
            let tls = match &l.tls {
                None => None,
                Some(tls) => Some(crate::tls::server_config(tls, routes.any_http()).map_err(
                    |source| SnapshotError::Tls {
                        listener: l.name.clone(),
                        source,
                    },
                )?),
            };
            let name: Arc<str> = l.name.as_str().into();
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerSnap {
                    conn_metrics: Arc::new(crate::metrics::ListenerHandles::new(name.clone())),
                    name,
                    udp: l.udp,
                    tls,
                    detect: !routes.all_tcp(),
                    routes,
                    defaults: defaults.clone(),
                    trusted_proxies: l.trusted_proxies.as_slice().into(),
                    proxy_protocol: l.proxy_protocol,
                    sends_proxy_header,
                    max_connections: l.max_connections,
                    max_connections_per_ip: l.max_connections_per_ip,
                    max_new_connections_per_ip: l.max_new_connections_per_ip,
                    // Validated as a header name (a token) when the config was read.
                    client_cert_header: l
                        .client_cert_header
                        .as_deref()
                        .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
                }),
            );
        }
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
            backends: pools,
            by_name,
        })
    }

    fn backend(&self, name: &str) -> Option<&Arc<Pool>> {
        self.by_name.get(name).map(|&i| &self.backends[i])
    }

    pub fn backends(&self) -> &[Arc<Pool>] {
        &self.backends
    }

    /// Puts this snapshot's health checks in force once it is published: starts the
    /// checks of its backends (those kept from `previous` run on), stops `previous`'s that
    /// it no longer uses, and drops their `sockgate_backend_up` series. Every check stops
    /// when `drain` fires.
    pub fn start_health(&self, previous: Option<&Snapshot>, drain: &CancellationToken) {
        for pool in &self.backends {
            pool.start_health(drain);
            pool.publish_state();
        }
        let Some(previous) = previous else { return };
        for old in &previous.backends {
            // A kept backend's new pool shares the old one's servers (see `build_after`).
            if self.backend(&old.name).is_some_and(|p| p.same_servers(old)) {
                continue;
            }
            old.stop_health();
            old.unpublish_state(|backend, server| {
                self.backend(backend)
                    .is_some_and(|p| p.view().iter().any(|s| s.address == server))
            });
        }
    }

    /// This snapshot with the certificates of `config`, which is this snapshot's config with
    /// certificate pairs replaced and nothing else changed. Routes and backend pools carry
    /// over as they are (their counters and schedules too). Each TLS listener gets a fresh
    /// ticketer and session cache, as a reload gives it: a client's next handshake is a full
    /// one that sees the new certificate, rather than resuming a session the old one
    /// authenticated.
    pub fn with_certificates(&self, config: Config) -> Result<Snapshot, SnapshotError> {
        let mut listeners = HashMap::with_capacity(self.listeners.len());
        for (name, old) in &self.listeners {
            let tls = config
                .listeners
                .iter()
                .find(|l| l.name == **name)
                .and_then(|l| l.tls.as_ref());
            let tls = match (&old.tls, tls) {
                (Some(_), Some(tls)) => Some(
                    crate::tls::server_config(tls, old.routes.any_http()).map_err(|source| {
                        SnapshotError::Tls {
                            listener: name.clone(),
                            source,
                        }
                    })?,
                ),
                _ => old.tls.clone(),
            };
            let snap = ListenerSnap {
                tls,
                ..ListenerSnap::clone(old)
            };
            listeners.insert(name.clone(), Arc::new(snap));
        }
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
            backends: self.backends.clone(),
            by_name: self.by_name.clone(),
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSnap>> {
        self.listeners.get(name)
    }
}

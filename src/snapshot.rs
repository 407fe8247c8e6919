//! The config snapshot: everything built from one validated config — TLS server configs, route
//! tables, backend pools. A connection loads the current snapshot once and keeps it for its
//! whole life (an HTTP connection loads it again for each request); a reload builds a
//! complete new one and swaps it in with one store.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Cidr, Config, Defaults, Rate};
use crate::metrics::Metrics;
use crate::route::{Route, RouteTable};
use crate::upstream::Pool;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    listeners: HashMap<String, Arc<ListenerSnap>>,
}

pub struct ListenerSnap {
    pub name: Arc<str>,
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
    #[error("route `{route}` names backend `{backend}`, which is not defined")]
    UnknownBackend { route: String, backend: String },
}

impl Snapshot {
    pub fn build(config: Config, metrics: &Metrics) -> Result<Self, SnapshotError> {
        let defaults = &config.defaults;
        let backends: HashMap<String, Arc<Pool>> = config
            .backends
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    Arc::new(Pool::new(b, defaults.connect_timeout, metrics)),
                )
            })
            .collect();
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let mut routes = Vec::with_capacity(l.routes.len());
            for r in &l.routes {
                let backend =
                    backends
                        .get(&r.backend)
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
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerSnap {
                    name: l.name.as_str().into(),
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
                }),
            );
        }
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSnap>> {
        self.listeners.get(name)
    }
}

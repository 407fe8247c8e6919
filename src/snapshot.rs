//! The config snapshot: everything built from one validated config — TLS server configs, route
//! tables, backend pools. A connection loads the current snapshot once and keeps it for its
//! whole life (an HTTP connection loads it again for each request); a reload builds a
//! complete new one and swaps it in with one store.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Cidr, Config, Defaults};
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
                Arc::new(Pool::new(
                    b,
                    defaults.connect_timeout,
                    metrics,
                    before.map(|p| &**p),
                ))
            })
            .collect();
        let backends: HashMap<String, Arc<Pool>> = pools
            .iter()
            .map(|p| (p.name.to_string(), p.clone()))
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
                }),
            );
        }
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
            backends: pools,
        })
    }

    fn backend(&self, name: &str) -> Option<&Arc<Pool>> {
        self.backends.iter().find(|p| &*p.name == name)
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
            if self.backends.iter().any(|p| p.same_servers(old)) {
                continue;
            }
            old.stop_health();
            old.unpublish_state(|backend, server| {
                self.backend(backend)
                    .is_some_and(|p| p.view().iter().any(|s| s.address == server))
            });
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSnap>> {
        self.listeners.get(name)
    }
}

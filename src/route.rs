//! The route table of one listener, built once per config snapshot. First match in file
//! order wins; a route's absent keys match anything.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::{Defaults, Protocol, RouteConfig, UdpSessions, WebSocketLimits};
use crate::metrics::{Metrics, RouteCounters};
use crate::upstream::Pool;

/// One route, with its backend pool resolved.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub protocol: Option<Protocol>,
    pub host: Option<String>,
    pub sni: Option<String>,
    pub path_prefix: Option<String>,
    pub backend: Arc<Pool>,
    /// HTTP: request sent to the backend's response head (the route's or the default).
    pub request_timeout: Duration,
    /// `Some(true)`: only clients with a verified certificate; `Some(false)`: only those
    /// without one.
    pub client_cert: Option<bool>,
    pub websocket: WebSocketLimits,
    /// UDP routes: session idle timeout and limit.
    pub sessions: UdpSessions,
    /// Its byte counters, resolved by the first connection that relays (see
    /// [`Route::counters`]).
    counters: OnceLock<RouteCounters>,
}

/// What is known about a connection or request when it is routed.
#[derive(Debug, Clone, Copy)]
pub struct RouteQuery<'a> {
    pub protocol: Protocol,
    /// Lower-case TLS server name.
    pub sni: Option<&'a str>,
    /// Lower-case Host without port or trailing dot, an IPv6 address in brackets in its
    /// shortest form (HTTP and WebSocket).
    pub host: Option<&'a str>,
    /// Request path (HTTP and WebSocket).
    pub path: Option<&'a str>,
    /// The client presented a certificate the listener's `client_auth` verified.
    pub client_cert: bool,
}

impl Route {
    pub fn new(config: &RouteConfig, backend: Arc<Pool>, defaults: &Defaults) -> Self {
        Route {
            name: config.name.as_str().into(),
            protocol: config.protocol,
            host: config.host.clone(),
            sni: config.sni.clone(),
            path_prefix: config.path_prefix.clone(),
            backend,
            request_timeout: config.request_timeout.unwrap_or(defaults.request_timeout),
            client_cert: config.client_cert,
            websocket: config.websocket.clone(),
            sessions: config.sessions,
            counters: OnceLock::new(),
        }
    }

    /// The route's `sockgate_bytes_total` children, looked up once for the route's life
    /// (a route belongs to one listener, `listener`).
    pub fn counters(&self, metrics: &Metrics, listener: &str) -> &RouteCounters {
        self.counters
            .get_or_init(|| metrics.route_counters(listener, &self.name, &self.backend.name))
    }

    pub fn matches(&self, q: &RouteQuery<'_>) -> bool {
        fn key_matches(want: &Option<String>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(want) => have == Some(want.as_str()),
            }
        }
        // A route for any protocol does not take passthrough TLS: those routes name it.
        let protocol = match self.protocol {
            None => q.protocol != Protocol::TlsPassthrough,
            Some(p) => p == q.protocol,
        };
        protocol
            && self.client_cert.is_none_or(|want| want == q.client_cert)
            && key_matches(&self.sni, q.sni)
            && key_matches(&self.host, q.host)
            && match &self.path_prefix {
                None => true,
                Some(prefix) => q.path.is_some_and(|p| p.starts_with(prefix.as_str())),
            }
    }
}

/// The routes of one listener, indexed so that finding the first match costs the same with
/// ten routes or a hundred thousand when they are told apart by host or SNI (as a
/// multi-tenant edge's are): a route with a `host` can only match a request with that Host,
/// one with an `sni` (and no host) only a connection with that server name. Only routes
/// with neither key are tried for every query.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Routes with a `host`, by host, in file order.
    by_host: HashMap<String, Vec<usize>>,
    /// Routes with an `sni` and no `host`, by server name, in file order.
    by_sni: HashMap<String, Vec<usize>>,
    /// Routes with neither, in file order.
    rest: Vec<usize>,
    /// Some route is `tls_passthrough`: a ClientHello is read for its server name.
    passthrough: bool,
}

impl RouteTable {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let mut table = RouteTable::default();
        for (i, route) in routes.iter().enumerate() {
            match (&route.host, &route.sni) {
                (Some(host), _) => table.by_host.entry(host.clone()).or_default().push(i),
                (None, Some(sni)) => table.by_sni.entry(sni.clone()).or_default().push(i),
                (None, None) => table.rest.push(i),
            }
        }
        table.passthrough = routes
            .iter()
            .any(|r| r.protocol == Some(Protocol::TlsPassthrough));
        table.routes = routes;
        table
    }

    /// The first route in file order that matches: the candidates of the query's host, of
    /// its server name and those with neither key, walked together in file order.
    pub fn find(&self, q: &RouteQuery<'_>) -> Option<&Arc<Route>> {
        let host = q
            .host
            .and_then(|h| self.by_host.get(h))
            .map_or(&[][..], Vec::as_slice);
        let sni = q
            .sni
            .and_then(|s| self.by_sni.get(s))
            .map_or(&[][..], Vec::as_slice);
        let mut lists = [host, sni, self.rest.as_slice()];
        loop {
            // The smallest next index of the three lists, each in file order.
            let (list, &next) = lists
                .iter()
                .enumerate()
                .filter_map(|(n, l)| l.first().map(|i| (n, i)))
                .min_by_key(|(_, i)| **i)?;
            lists[list] = &lists[list][1..];
            let route = &self.routes[next];
            if route.matches(q) {
                return Some(route);
            }
        }
    }

    /// Every route is `protocol = "tcp"`: the listener skips detection.
    pub fn all_tcp(&self) -> bool {
        self.routes
            .iter()
            .all(|r| r.protocol == Some(Protocol::Tcp))
    }

    /// Some route can take HTTP or WebSocket: the listener offers ALPN `http/1.1`.
    pub fn any_http(&self) -> bool {
        self.routes.iter().any(|r| {
            !matches!(
                r.protocol,
                Some(Protocol::Tcp | Protocol::TlsPassthrough | Protocol::Udp)
            )
        })
    }

    /// Some route is `tls_passthrough` (known without a walk over the routes).
    pub fn any_passthrough(&self) -> bool {
        self.passthrough
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A backend pool for routes built by hand, from a parsed config.
    fn pool() -> Arc<Pool> {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::from_str(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nroute = [{ name = \"r\", backend = \"b\" }]\n[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:9\"]\n",
            std::path::Path::new("sockgate.toml"),
            dir.path(),
        )
        .unwrap();
        let metrics = crate::metrics::Metrics::new();
        let snapshot = crate::snapshot::Snapshot::build(config, &metrics).unwrap();
        snapshot.listener("l").unwrap().routes.routes[0]
            .backend
            .clone()
    }

    #[test]
    fn a_routes_counters_are_its_listener_route_and_backend_series_resolved_once() {
        let metrics = Metrics::new();
        let r = route(0, ((0, 0, 0, 1), 0), &pool());
        r.counters(&metrics, "edge").client_to_backend.inc_by(5);
        r.counters(&metrics, "edge").backend_to_client.inc_by(7);
        let series = metrics.route_counters("edge", "r0", "b");
        assert_eq!(series.client_to_backend.get(), 5);
        assert_eq!(series.backend_to_client.get(), 7);
        assert!(std::ptr::eq(
            r.counters(&metrics, "edge"),
            r.counters(&metrics, "edge")
        ));
    }

    const HOSTS: [Option<&str>; 4] = [None, Some("a.test"), Some("b.test"), Some("c.test")];
    const SNIS: [Option<&str>; 3] = [None, Some("a.test"), Some("x.test")];
    const PATHS: [Option<&str>; 3] = [None, Some("/"), Some("/chat")];
    const PROTOCOLS: [Option<Protocol>; 5] = [
        None,
        Some(Protocol::Tcp),
        Some(Protocol::Http),
        Some(Protocol::WebSocket),
        Some(Protocol::TlsPassthrough),
    ];

    const CLIENT_CERTS: [Option<bool>; 3] = [None, Some(true), Some(false)];

    fn route(
        i: usize,
        keys: ((usize, usize, usize, usize), usize),
        backend: &Arc<Pool>,
    ) -> Arc<Route> {
        let ((host, sni, path, protocol), client_cert) = keys;
        Arc::new(Route {
            name: format!("r{i}").into(),
            protocol: PROTOCOLS[protocol],
            host: HOSTS[host].map(str::to_owned),
            sni: SNIS[sni].map(str::to_owned),
            path_prefix: PATHS[path].map(str::to_owned),
            backend: backend.clone(),
            request_timeout: Duration::from_secs(1),
            client_cert: CLIENT_CERTS[client_cert],
            websocket: WebSocketLimits::default(),
            sessions: Default::default(),
            counters: OnceLock::new(),
        })
    }

    proptest! {
        /// The index finds what a scan in file order finds, for any table and query.
        #[test]
        fn the_index_finds_the_first_match_in_file_order(
            keys in proptest::collection::vec(((0..4usize, 0..3usize, 0..3usize, 0..5usize), 0..3usize), 0..40),
            queries in proptest::collection::vec(((0..4usize, 0..3usize, 0..3usize, 1..5usize), any::<bool>()), 1..20),
        ) {
            let backend = pool();
            let routes: Vec<_> = keys.iter().enumerate().map(|(i, k)| route(i, *k, &backend)).collect();
            let table = RouteTable::new(routes.clone());
            for ((host, sni, path, protocol), client_cert) in queries {
                let q = RouteQuery {
                    protocol: PROTOCOLS[protocol].unwrap(),
                    sni: SNIS[sni],
                    host: HOSTS[host],
                    path: PATHS[path].map(|p| if p == "/" { "/other" } else { "/chat/room" }),
                    client_cert,
                };
                let scanned = routes.iter().find(|r| r.matches(&q)).map(|r| r.name.clone());
                prop_assert_eq!(table.find(&q).map(|r| r.name.clone()), scanned);
            }
        }
    }
}

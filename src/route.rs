//! The route table of one listener, built once per config snapshot. First match in file
//! order wins; a route's absent keys match anything.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Defaults, Protocol, RouteConfig, WebSocketLimits};
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
    pub websocket: WebSocketLimits,
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
            websocket: config.websocket.clone(),
        }
    }

    pub fn matches(&self, q: &RouteQuery<'_>) -> bool {
        fn key_matches(want: &Option<String>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(want) => have == Some(want.as_str()),
            }
        }
        self.protocol.is_none_or(|p| p == q.protocol)
            && key_matches(&self.sni, q.sni)
            && key_matches(&self.host, q.host)
            && match &self.path_prefix {
                None => true,
                Some(prefix) => q.path.is_some_and(|p| p.starts_with(prefix.as_str())),
            }
    }
}

#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        RouteTable { routes }
    }

    pub fn find(&self, q: &RouteQuery<'_>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(q))
    }

    /// Every route is `protocol = "tcp"`: the listener skips detection.
    pub fn all_tcp(&self) -> bool {
        self.routes
            .iter()
            .all(|r| r.protocol == Some(Protocol::Tcp))
    }

    /// Some route can take HTTP or WebSocket: the listener offers ALPN `http/1.1`.
    pub fn any_http(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.protocol != Some(Protocol::Tcp))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

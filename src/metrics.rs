//! One Prometheus registry for the process. Label values are bounded (listener, route,
//! backend, protocol, direction, code, result, reason): per-connection detail belongs in
//! `/connections` and the access log, never in a label.
//!
//! Hot-path counters are resolved to their labelled child once per connection
//! ([`RouteCounters`]), so relaying a chunk costs an atomic add, not a label lookup.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub connections_total: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub bytes_total: IntCounterVec,
    pub connection_duration_seconds: HistogramVec,
    pub tls_handshakes_total: IntCounterVec,
    pub tls_handshake_duration_seconds: HistogramVec,
    /// Failed client handshakes by reason (`timeout`, `no_client_certificate`,
    /// `bad_client_certificate`, `other`), beside `result="error"` of the family above.
    pub tls_handshake_errors_total: IntCounterVec,
    pub backend_connect_duration_seconds: HistogramVec,
    pub backend_connect_errors_total: IntCounterVec,
    pub websocket_messages_total: IntCounterVec,
    pub websocket_closes_total: IntCounterVec,
    pub websocket_message_size_bytes: HistogramVec,
    pub websocket_ping_rtt_seconds: HistogramVec,
    pub unrouted_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    /// Certificate pairs re-read after they changed on disk (`certwatch`), by result.
    pub certificate_reloads_total: IntCounterVec,
    /// notAfter of each served certificate, as Unix time.
    pub certificate_expiry_seconds: IntGaugeVec,
    pub rejected_total: IntCounterVec,
    pub shed_total: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub no_healthy_server_total: IntCounterVec,
    pub http_responses_total: IntCounterVec,
    /// UDP datagrams relayed, by route and direction.
    pub udp_datagrams_total: IntCounterVec,
    /// UDP datagrams the gateway could not relay, by reason.
    pub udp_dropped_total: IntCounterVec,
    /// The `max_connections` in force (configured, or derived from the open-files limit).
    pub max_connections: prometheus::IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

/// Sub-millisecond to seconds: handshakes and backend connects.
fn fast_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

/// Milliseconds to a day: connection lifetimes, which for WebSockets run long.
fn lifetime_buckets() -> Vec<f64> {
    vec![
        0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
    ]
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            connections_total: counter(
                &r,
                "sockgate_connections_total",
                "Client connections accepted, by the protocol detected.",
                &["listener", "protocol"],
            ),
            connections_active: gauge(
                &r,
                "sockgate_connections_active",
                "Client connections open now.",
                &["listener", "protocol"],
            ),
            bytes_total: counter(
                &r,
                "sockgate_bytes_total",
                "Bytes relayed, counted as they flow.",
                &["listener", "route", "backend", "direction"],
            ),
            connection_duration_seconds: histogram(
                &r,
                "sockgate_connection_duration_seconds",
                "Client connection lifetime.",
                &["listener", "protocol"],
                lifetime_buckets(),
            ),
            tls_handshakes_total: counter(
                &r,
                "sockgate_tls_handshakes_total",
                "TLS handshakes with clients, by result.",
                &["listener", "result"],
            ),
            tls_handshake_duration_seconds: histogram(
                &r,
                "sockgate_tls_handshake_duration_seconds",
                "Time from accept to a finished TLS handshake.",
                &["listener"],
                fast_buckets(),
            ),
            tls_handshake_errors_total: counter(
                &r,
                "sockgate_tls_handshake_errors_total",
                "TLS handshakes with clients that failed, by reason.",
                &["listener", "reason"],
            ),
            backend_connect_duration_seconds: histogram(
                &r,
                "sockgate_backend_connect_duration_seconds",
                "Time to connect to a backend server.",
                &["backend"],
                fast_buckets(),
            ),
            backend_connect_errors_total: counter(
                &r,
                "sockgate_backend_connect_errors_total",
                "Failed connection attempts to backend servers (refused, unreachable, timed out).",
                &["backend"],
            ),
            websocket_messages_total: counter(
                &r,
                "sockgate_websocket_messages_total",
                "WebSocket messages relayed.",
                &["route", "direction"],
            ),
            websocket_closes_total: counter(
                &r,
                "sockgate_websocket_closes_total",
                "WebSocket closing handshakes, by the code of the Close that started each and who sent it.",
                &["route", "code", "initiator"],
            ),
            websocket_message_size_bytes: histogram(
                &r,
                "sockgate_websocket_message_size_bytes",
                "WebSocket message payload size as sent on the wire (compressed size with permessage-deflate).",
                &["route", "direction"],
                vec![
                    16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
                    4194304.0, 16777216.0,
                ],
            ),
            websocket_ping_rtt_seconds: histogram(
                &r,
                "sockgate_websocket_ping_rtt_seconds",
                "Round trip of the gateway's keepalive pings to WebSocket clients.",
                &["route"],
                fast_buckets(),
            ),
            unrouted_total: counter(
                &r,
                "sockgate_unrouted_total",
                "Connections or requests that matched no route.",
                &["listener", "protocol"],
            ),
            config_reloads_total: counter(
                &r,
                "sockgate_config_reloads_total",
                "Config reloads, by result.",
                &["result"],
            ),
            certificate_reloads_total: counter(
                &r,
                "sockgate_certificate_reloads_total",
                "Certificate/key pairs re-read after they changed on disk, by result.",
                &["result"],
            ),
            certificate_expiry_seconds: gauge(
                &r,
                "sockgate_certificate_expiry_seconds",
                "notAfter of each served certificate as Unix time (name: `default` or the first name of an SNI entry).",
                &["listener", "name"],
            ),
            rejected_total: counter(
                &r,
                "sockgate_rejected_total",
                "Connections refused by a limit.",
                &["listener", "reason"],
            ),
            shed_total: counter(
                &r,
                "sockgate_shed_total",
                "Connections closed by POST /connections/shed, counted as each is closed.",
                &["listener", "protocol"],
            ),
            backend_up: gauge(
                &r,
                "sockgate_backend_up",
                "1 while a server takes new connections (health checks pass and it is not ejected), else 0.",
                &["backend", "server"],
            ),
            no_healthy_server_total: counter(
                &r,
                "sockgate_no_healthy_server_total",
                "Connections and requests refused because every server of the backend was down or ejected (HTTP/WebSocket 503, TCP closed).",
                &["backend"],
            ),
            max_connections: {
                let g = prometheus::IntGauge::new(
                    "sockgate_max_connections",
                    "The max_connections limit in force: configured, or derived from the open-files limit.",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            http_responses_total: counter(
                &r,
                "sockgate_http_responses_total",
                "HTTP responses sent to clients, by status code (101 for WebSocket upgrades).",
                &["listener", "route", "code"],
            ),
            udp_datagrams_total: counter(
                &r,
                "sockgate_udp_datagrams_total",
                "UDP datagrams relayed, each whole, by direction.",
                &["listener", "route", "direction"],
            ),
            udp_dropped_total: counter(
                &r,
                "sockgate_udp_dropped_total",
                "UDP datagrams not relayed: a socket's send buffer was full (client_busy, backend_busy) or no server could be given a new session (no_server).",
                &["listener", "reason"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The connection metrics of one listener and protocol, resolved (see [`ListenerHandles`]
    /// for the cached ones).
    pub fn conn_handles(&self, listener: &str, protocol: &str) -> ConnHandles {
        let labels = [listener, protocol];
        ConnHandles {
            total: self.connections_total.with_label_values(&labels),
            active: self.connections_active.with_label_values(&labels),
            duration: self.connection_duration_seconds.with_label_values(&labels),
        }
    }

    /// Byte counters for one listener/route/backend, resolved once.
    pub fn route_counters(&self, listener: &str, route: &str, backend: &str) -> RouteCounters {
        RouteCounters {
            client_to_backend: self.bytes_total.with_label_values(&[
                listener,
                route,
                backend,
                "client_to_backend",
            ]),
            backend_to_client: self.bytes_total.with_label_values(&[
                listener,
                route,
                backend,
                "backend_to_client",
            ]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `sockgate_connections_total`, `_active` and `sockgate_connection_duration_seconds` for one
/// listener and protocol.
pub struct ConnHandles {
    pub total: IntCounter,
    pub active: IntGauge,
    pub duration: Histogram,
}

/// Protocols a [`ListenerHandles`] has room for, indexed by the caller.
pub const PROTOCOL_SLOTS: usize = 8;

/// One listener's [`ConnHandles`] by protocol, each resolved when its first connection
/// needs it: a connection's start and end then take no label lookups. A listener's snapshot
/// holds one, so a reload starts a new one (under the same labels).
pub struct ListenerHandles {
    listener: Arc<str>,
    by_protocol: [OnceLock<ConnHandles>; PROTOCOL_SLOTS],
}

impl std::fmt::Debug for ListenerHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerHandles")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl ListenerHandles {
    pub fn new(listener: Arc<str>) -> Self {
        ListenerHandles {
            listener,
            by_protocol: Default::default(),
        }
    }

    pub fn listener(&self) -> &Arc<str> {
        &self.listener
    }

    /// The handles of the protocol in `slot` (below [`PROTOCOL_SLOTS`]), labelled `protocol`.
    pub fn get(&self, metrics: &Metrics, slot: usize, protocol: &str) -> &ConnHandles {
        self.by_protocol[slot].get_or_init(|| metrics.conn_handles(&self.listener, protocol))
    }
}

/// `sockgate_bytes_total` children for one route, per direction.
#[derive(Clone, Debug)]
pub struct RouteCounters {
    pub client_to_backend: IntCounter,
    pub backend_to_client: IntCounter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_connection_handles_count_in_the_same_series_as_lookups() {
        let metrics = Metrics::new();
        let cached = ListenerHandles::new("edge".into());
        let h = cached.get(&metrics, 2, "tcp");
        h.total.inc();
        h.active.inc();
        h.duration.observe(0.5);
        // The slot is resolved once: a second get is the same children.
        cached.get(&metrics, 2, "tcp").total.inc();
        let looked_up = metrics.conn_handles("edge", "tcp");
        assert_eq!(looked_up.total.get(), 2);
        assert_eq!(looked_up.active.get(), 1);
        assert_eq!(looked_up.duration.get_sample_count(), 1);
        let text = metrics.render();
        assert!(
            text.contains(r#"sockgate_connections_total{listener="edge",protocol="tcp"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"sockgate_connections_active{listener="edge",protocol="tcp"} 1"#));
        // Another protocol's slot is its own series.
        cached.get(&metrics, 1, "http").total.inc();
        assert_eq!(metrics.conn_handles("edge", "http").total.get(), 1);
        assert_eq!(looked_up.total.get(), 2);
    }
}

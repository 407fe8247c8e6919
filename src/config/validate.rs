//! The second layer: raw structs to the validated model. Every rule reports at the value it
//! is about and checking goes on, so one run lists every problem. Each step returns `None`
//! when it reported something; a whole `Config` is only built when nothing was.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::cidr::Cidr;
use super::error::Report;
use super::model::{
    AdminConfig, AdminToken, BackendConfig, CertPair, Config, Defaults, ListenerConfig, Protocol,
    ProxyVersion, Rate, RouteConfig, ServerConfig, SniCert, TlsConfig, WebSocketLimits,
};
use super::raw::{
    RawAdmin, RawBackend, RawConfig, RawDefaults, RawListener, RawRoute, RawServer, RawSize,
    RawSni, RawTls,
};
use super::values::{
    check_cert_name, check_dns_name, check_server_address, closest, normal_host, parse_duration,
    parse_size,
};
use crate::certs::{self, CertLoadError};

const DURATION_FORMS: &str = r#"write durations like "250ms", "30s", "5m" or "1h30m""#;
const GENERATE_PAIR: &str = "sockgate cert dev --out certs/dev";
/// What `pong_timeout` is when only `ping_interval` is given.
const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest duration any key takes: far beyond any sensible timeout, and far inside what
/// `Instant + Duration` can hold (a few hundred billion years would panic there).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Server weights are relative shares, bounded like HAProxy's (0–256), so that a typo cannot
/// ask for billions of turns.
pub const MAX_WEIGHT: u32 = 1000;

/// `max_connections` at most: ten million connections are twenty million open files.
pub const MAX_CONNECTIONS: usize = 10_000_000;

/// `max_new_connections_per_ip` at most: a million a second is no limit at all.
pub const MAX_RATE: u32 = 1_000_000;

pub(super) fn validate(
    raw: &RawConfig,
    base_dir: &Path,
    report: &mut Report<'_>,
) -> Option<Config> {
    let mut backend_names: Vec<String> = Vec::new();
    for name in raw.backend.iter().filter_map(|b| b.get_ref().name.as_ref()) {
        if !backend_names.contains(name.get_ref()) {
            backend_names.push(name.get_ref().clone());
        }
    }
    let mut v = Validator {
        report,
        base_dir,
        backend_names,
        listen_addrs: Vec::new(),
    };
    let defaults = v.defaults(raw.defaults.as_ref());
    let admin = present(raw.admin.as_ref(), |a| v.admin(a));
    let backends: Vec<_> = raw.backend.iter().map(|b| v.backend(b)).collect();
    v.unique_names(
        raw.backend.iter().map(|b| &b.get_ref().name),
        "backend",
        "backends",
    );
    let listeners: Vec<_> = raw.listener.iter().map(|l| v.listener(l)).collect();
    v.unique_names(
        raw.listener.iter().map(|l| &l.get_ref().name),
        "listener",
        "listeners",
    );
    Some(Config {
        source: None,
        admin: admin?,
        defaults: defaults?,
        listeners: listeners.into_iter().collect::<Option<_>>()?,
        backends: backends.into_iter().collect::<Option<_>>()?,
    })
}

/// `Some(None)` when the key is absent, `None` when it is present but invalid.
fn present<S, T>(value: Option<&S>, check: impl FnOnce(&S) -> Option<T>) -> Option<Option<T>> {
    match value {
        None => Some(None),
        Some(value) => check(value).map(Some),
    }
}

struct Validator<'r, 'a> {
    report: &'r mut Report<'a>,
    base_dir: &'r Path,
    /// Every backend name written, valid or not, so a route naming one is not also blamed.
    backend_names: Vec<String>,
    /// Who listens where so far, for the uniqueness rule.
    listen_addrs: Vec<(SocketAddr, String, Range<usize>)>,
}

impl Validator<'_, '_> {
    fn defaults(&mut self, raw: Option<&RawDefaults>) -> Option<Defaults> {
        let d = Defaults::default();
        let Some(raw) = raw else { return Some(d) };
        let connect_timeout =
            self.timeout(&raw.connect_timeout, "connect_timeout", d.connect_timeout);
        let detect_timeout = self.timeout(&raw.detect_timeout, "detect_timeout", d.detect_timeout);
        let handshake_timeout = self.timeout(
            &raw.handshake_timeout,
            "handshake_timeout",
            d.handshake_timeout,
        );
        let idle_timeout = self.timeout(&raw.idle_timeout, "idle_timeout", d.idle_timeout);
        let drain_timeout = self.timeout(&raw.drain_timeout, "drain_timeout", d.drain_timeout);
        let drain_spread = self.timeout(&raw.drain_spread, "drain_spread", d.drain_spread);
        let close_timeout = self.timeout(&raw.close_timeout, "close_timeout", d.close_timeout);
        let request_timeout = match &raw.request_timeout {
            None => Some(d.request_timeout),
            Some(t) => self.request_timeout(t),
        };
        if let Some(drain) = drain_timeout {
            let drain_span = raw.drain_timeout.as_ref().map(Spanned::span);
            let within = [
                (
                    drain_spread,
                    &raw.drain_spread,
                    "drain_spread",
                    "WebSocket closes would still be going out when the drain ends",
                ),
                (
                    close_timeout,
                    &raw.close_timeout,
                    "close_timeout",
                    "closing handshakes would be cut off when the drain ends",
                ),
            ];
            for (value, written, key, consequence) in within {
                let Some(value) = value.filter(|v| *v > drain) else {
                    continue;
                };
                // Blame the key the operator wrote; the other one is the default.
                let Some(span) = written.as_ref().map(Spanned::span).or(drain_span.clone()) else {
                    continue;
                };
                self.report.error(
                    span,
                    format!(
                        "`{key}` ({}) is longer than `drain_timeout` ({}): {consequence}",
                        humantime::format_duration(value),
                        humantime::format_duration(drain),
                    ),
                    format!("make `{key}` at most `drain_timeout`"),
                );
            }
        }
        let max_connections = present(raw.max_connections.as_ref(), |m| {
            match usize::try_from(*m.get_ref()) {
                Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => Some(n),
                Ok(n) if n > MAX_CONNECTIONS => {
                    self.report.error(
                        m.span(),
                        format!("`max_connections` must be at most {MAX_CONNECTIONS}, found {n}"),
                        "each connection needs two open files; remove the key to derive the limit from the open-files limit",
                    );
                    None
                }
                _ => {
                    self.report.error(
                        m.span(),
                        format!("`max_connections` must be at least 1, found {}: no connection would be accepted", m.get_ref()),
                        "remove the key to derive the limit from the open-files limit",
                    );
                    None
                }
            }
        });
        Some(Defaults {
            connect_timeout: connect_timeout?,
            detect_timeout: detect_timeout?,
            handshake_timeout: handshake_timeout?,
            idle_timeout: idle_timeout?,
            drain_timeout: drain_timeout?,
            drain_spread: drain_spread?,
            close_timeout: close_timeout?,
            request_timeout: request_timeout?,
            max_connections: max_connections?,
        })
    }

    /// A duration that defaults when absent.
    fn timeout(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        match raw {
            None => Some(default),
            Some(raw) => self.duration(raw, key),
        }
    }

    /// A written duration, which must parse and be more than zero.
    fn duration(&mut self, raw: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(raw.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.report.error(
                    raw.span(),
                    format!("`{key}` must be longer than zero"),
                    DURATION_FORMS,
                );
                None
            }
            Ok(d) if d > MAX_DURATION => {
                self.report.error(
                    raw.span(),
                    format!(
                        "`{key}` = \"{}\" is longer than 8760h (365 days), the longest duration the gateway takes",
                        raw.get_ref(),
                    ),
                    "for no practical limit, write \"8760h\"",
                );
                None
            }
            Ok(d) => Some(d),
            Err(why) => {
                self.report.error(
                    raw.span(),
                    format!("`{key}` = \"{}\" is not a duration: {why}", raw.get_ref()),
                    DURATION_FORMS,
                );
                None
            }
        }
    }

    /// `request_timeout`, in [defaults] or on a route.
    fn request_timeout(&mut self, raw: &Spanned<String>) -> Option<Duration> {
        self.duration(raw, "request_timeout")
    }

    /// `trusted_proxies`: addresses or CIDR ranges, IPv6 without brackets or with.
    fn trusted_proxies(&mut self, raw: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<Cidr>> {
        let ranges: Vec<_> = raw
            .get_ref()
            .iter()
            .map(|entry| match Cidr::parse(entry.get_ref()) {
                Ok(cidr) => Some(cidr),
                Err(why) => {
                    self.report.error(
                        entry.span(),
                        format!("`trusted_proxies` entry \"{}\" is not an address range: {why}", entry.get_ref()),
                        r#"write IP addresses or CIDR ranges, as in ["10.0.0.0/8", "192.0.2.7", "::1/128"]"#,
                    );
                    None
                }
            })
            .collect();
        ranges.into_iter().collect()
    }

    /// A whole number of connections, 1 to `max`.
    fn count(&mut self, raw: &Spanned<i64>, key: &str, max: u32) -> Option<u32> {
        match u32::try_from(*raw.get_ref()) {
            Ok(n) if (1..=max).contains(&n) => Some(n),
            _ if *raw.get_ref() > i64::from(max) => {
                self.report.error(
                    raw.span(),
                    format!("`{key}` must be at most {max}, found {}", raw.get_ref()),
                    "remove the key for no limit",
                );
                None
            }
            _ => {
                self.report.error(
                    raw.span(),
                    format!(
                        "`{key}` must be at least 1, found {}: every connection would be refused",
                        raw.get_ref()
                    ),
                    "remove the key for no limit",
                );
                None
            }
        }
    }

    /// A rate like `"50/s"` or `"600/m"`.
    fn rate(&mut self, raw: &Spanned<String>, key: &str) -> Option<Rate> {
        const FORMS: &str = r#"write a count per second or per minute, as in "50/s" or "600/m""#;
        let text = raw.get_ref().trim();
        let parsed = text.split_once('/').and_then(|(count, unit)| {
            let per = match unit.trim() {
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                _ => return None,
            };
            Some((count.trim().parse::<u64>().ok()?, per))
        });
        match parsed {
            Some((count, per)) if (1..=u64::from(MAX_RATE)).contains(&count) => Some(Rate {
                count: count as u32,
                per,
            }),
            Some((count, _)) => {
                self.report.error(
                    raw.span(),
                    format!(
                        "`{key}` = \"{text}\" must allow 1 to {MAX_RATE} connections, found {count}"
                    ),
                    "remove the key for no limit",
                );
                None
            }
            None => {
                self.report.error(
                    raw.span(),
                    format!("`{key}` = \"{text}\" is not a rate"),
                    FORMS,
                );
                None
            }
        }
    }

    fn admin(&mut self, raw: &Spanned<RawAdmin>) -> Option<AdminConfig> {
        let listen = self.required(
            &raw.get_ref().listen,
            raw.span(),
            "[admin]",
            "listen",
            r#""127.0.0.1:9901""#,
        )?;
        let listen = self.listen_addr(listen, "the admin listener".to_owned());
        let token = present(raw.get_ref().token_file.as_ref(), |t| self.admin_token(t));
        Some(AdminConfig {
            listen: listen?,
            token: token?,
        })
    }

    /// Reads `token_file` (relative to the config file's folder), at most a little more than
    /// the longest token allowed, so a path like /dev/zero cannot stall the check.
    fn admin_token(&mut self, raw: &Spanned<String>) -> Option<AdminToken> {
        use std::io::Read;
        const MAKE_ONE: &str = "write a random token into it, e.g. `head -c 32 /dev/urandom | base64 > admin.token` (relative paths start at the config file's folder), and make it readable by the gateway's user only";
        let path = self.base_dir.join(raw.get_ref());
        let mut text = Vec::new();
        let read = std::fs::File::open(&path).and_then(|file| {
            file.take(AdminToken::MAX_LEN as u64 + 3)
                .read_to_end(&mut text)
        });
        let problem = match read {
            Err(e) => format!("cannot read {}: {e}", path.display()),
            Ok(_) => match AdminToken::parse(&text) {
                Ok(token) => return Some(token),
                Err(why) => format!("{} {why}", path.display()),
            },
        };
        self.report.error(
            raw.span(),
            format!("`token_file`: {problem}; the admin endpoint would have no usable token"),
            MAKE_ONE,
        );
        None
    }

    /// Parses a `listen` value and checks no one else listens there. Port 0 (any free port)
    /// never collides.
    fn listen_addr(&mut self, raw: &Spanned<String>, owner: String) -> Option<SocketAddr> {
        let Ok(addr) = raw.get_ref().parse::<SocketAddr>() else {
            self.report.error(
                raw.span(),
                format!("`listen` = \"{}\" is not an IP address and port, so {owner} cannot be bound", raw.get_ref()),
                r#"write IP:PORT, IPv6 in brackets: "0.0.0.0:8443", "127.0.0.1:8443", "[::]:8443"; host names are not resolved"#,
            );
            return None;
        };
        if addr.port() != 0
            && let Some((_, first, at)) = self.listen_addrs.iter().find(|(a, _, _)| *a == addr)
        {
            let message = format!(
                "{owner} listens on {addr}, which {first} already uses: the second bind would fail"
            );
            let hint = format!(
                "give one of them another address (the first is at {})",
                self.report.position(at)
            );
            self.report.error(raw.span(), message, hint);
            return None;
        }
        self.listen_addrs.push((addr, owner, raw.span()));
        Some(addr)
    }

    fn listener(&mut self, raw: &Spanned<RawListener>) -> Option<ListenerConfig> {
        let l = raw.get_ref();
        let name = self.name(&l.name, raw.span(), "[[listener]]", r#""edge""#);
        let label = label("listener", &l.name);
        let listen = self
            .required(
                &l.listen,
                raw.span(),
                "[[listener]]",
                "listen",
                r#""0.0.0.0:8443""#,
            )
            .and_then(|listen| self.listen_addr(listen, label.clone()));
        let tls = present(l.tls.as_ref(), |t| self.tls(t, &label));
        let trusted_proxies = present(l.trusted_proxies.as_ref(), |t| self.trusted_proxies(t));
        let proxy_protocol = l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
        if let Some(p) = &l.proxy_protocol
            && *p.get_ref()
            && l.trusted_proxies
                .as_ref()
                .is_none_or(|t| t.get_ref().is_empty())
        {
            self.report.error(
                p.span(),
                format!("{label} expects a PROXY header but trusts no one to send it, so every connection would be closed"),
                r#"list the load balancers' addresses, as in trusted_proxies = ["10.0.0.0/8"]"#,
            );
        }
        let max_connections = present(l.max_connections.as_ref(), |m| {
            self.count(m, "max_connections", MAX_CONNECTIONS as u32)
                .map(|n| n as usize)
        });
        let per_ip = present(l.max_connections_per_ip.as_ref(), |m| {
            self.count(m, "max_connections_per_ip", MAX_CONNECTIONS as u32)
        });
        let rate = present(l.max_new_connections_per_ip.as_ref(), |r| {
            self.rate(r, "max_new_connections_per_ip")
        });
        if l.route.is_empty() {
            let at = l.name.as_ref().map_or(raw.span(), Spanned::span);
            self.report.error(
                at,
                format!("{label} has no routes, so every connection to it would be refused"),
                "add a [[listener.route]] with a `backend` after this listener",
            );
        }
        let routes: Vec<_> = l.route.iter().map(|r| self.route(r, l)).collect();
        self.unique_names(
            l.route.iter().map(|r| &r.get_ref().name),
            "route",
            "routes of one listener",
        );
        Some(ListenerConfig {
            name: name?,
            listen: listen?,
            tls: tls?,
            trusted_proxies: trusted_proxies?.unwrap_or_default(),
            proxy_protocol,
            max_connections: max_connections?,
            max_connections_per_ip: per_ip?,
            max_new_connections_per_ip: rate?,
            routes: routes.into_iter().collect::<Option<_>>()?,
        })
    }

    fn tls(&mut self, raw: &Spanned<RawTls>, listener: &str) -> Option<TlsConfig> {
        let t = raw.get_ref();
        let default = self.cert_pair(&t.cert, &t.key, raw.span(), "[listener.tls]", listener);
        let sni: Vec<_> = t.sni.iter().map(|s| self.sni(s, listener)).collect();
        Some(TlsConfig {
            default: default?,
            sni: sni.into_iter().collect::<Option<_>>()?,
        })
    }

    fn sni(&mut self, raw: &Spanned<RawSni>, listener: &str) -> Option<SniCert> {
        let s = raw.get_ref();
        let names = self
            .required(&s.names, raw.span(), "[[listener.tls.sni]]", "names", r#"["chat.example.com"]"#)
            .and_then(|names| {
                if names.get_ref().is_empty() {
                    self.report.error(
                        names.span(),
                        "`names` is empty, so this certificate would never be chosen",
                        r#"list the server names it is for, as in names = ["chat.example.com", "*.games.example.com"]"#,
                    );
                    return None;
                }
                let checked: Vec<_> = names.get_ref().iter().map(|n| self.cert_name(n)).collect();
                checked.into_iter().collect::<Option<Vec<_>>>()
            });
        let pair = self.cert_pair(
            &s.cert,
            &s.key,
            raw.span(),
            "[[listener.tls.sni]]",
            listener,
        );
        Some(SniCert {
            names: names?,
            pair: pair?,
        })
    }

    fn cert_name(&mut self, raw: &Spanned<String>) -> Option<String> {
        match check_cert_name(raw.get_ref()) {
            Ok(()) => Some(raw.get_ref().to_ascii_lowercase()),
            Err(why) => {
                self.report.error(
                    raw.span(),
                    format!("{why}, so clients can never ask for this certificate"),
                    r#"use exact names like "chat.example.com" or one-label wildcards like "*.example.com""#,
                );
                None
            }
        }
    }

    /// Loads a certificate and its key, paths relative to the config file's folder. A bad
    /// key file is reported at `key`; everything else, mismatch included, at `cert`.
    fn cert_pair(
        &mut self,
        cert: &Option<Spanned<String>>,
        key: &Option<Spanned<String>>,
        table: Range<usize>,
        table_name: &str,
        listener: &str,
    ) -> Option<CertPair> {
        let cert = self.required(
            cert,
            table.clone(),
            table_name,
            "cert",
            r#""certs/dev/server.crt""#,
        );
        let key = self.required(key, table, table_name, "key", r#""certs/dev/server.key""#);
        let (cert, key) = (cert?, key?);
        let cert_path = self.base_dir.join(cert.get_ref());
        let key_path = self.base_dir.join(key.get_ref());
        let error = match certs::load_cert_pair(&cert_path, &key_path) {
            Ok(certified) => {
                return Some(CertPair {
                    cert: cert_path,
                    key: key_path,
                    certified,
                });
            }
            Err(error) => error,
        };
        let (at, hint) = match &error {
            CertLoadError::CertRead { .. } | CertLoadError::NoCertificate { .. } => (
                cert.span(),
                format!(
                    "give a PEM certificate chain (relative paths start at the config file's folder), or create a development pair with `{GENERATE_PAIR}`"
                ),
            ),
            CertLoadError::KeyRead { .. } => (
                key.span(),
                format!(
                    "give the PEM private key of the certificate (relative paths start at the config file's folder), or create a development pair with `{GENERATE_PAIR}`"
                ),
            ),
            CertLoadError::KeyUnsupported { .. } => (
                key.span(),
                format!(
                    "use an RSA, ECDSA P-256/P-384 or Ed25519 key in PEM, or create a development pair with `{GENERATE_PAIR}`"
                ),
            ),
            CertLoadError::Mismatch { .. } => (
                cert.span(),
                format!(
                    "use the key the certificate was issued for, or create a matching development pair with `{GENERATE_PAIR}`"
                ),
            ),
        };
        self.report.error(
            at,
            format!(
                "{}; {listener} cannot serve TLS",
                crate::error::error_chain(&error)
            ),
            hint,
        );
        None
    }

    fn route(&mut self, raw: &Spanned<RawRoute>, listener: &RawListener) -> Option<RouteConfig> {
        let r = raw.get_ref();
        let name = self.name(&r.name, raw.span(), "[[listener.route]]", r#""chat""#);
        let label = label("route", &r.name);
        let listener_label = self::label("listener", &listener.name);
        let protocol = present(r.protocol.as_ref(), |p| self.protocol(p));
        // An invalid protocol was reported; check the rest as if it matched any.
        let kind = protocol.flatten();

        let host = present(r.host.as_ref(), |h| {
            if kind == Some(Protocol::Tcp) {
                self.report.error(
                    h.span(),
                    format!("`host` on {label} never matches: TCP connections carry no Host header"),
                    "remove `host` (use `sni` to pick TLS connections by server name), or change `protocol`",
                );
                return None;
            }
            self.host(h)
        });
        let path_prefix = present(r.path_prefix.as_ref(), |p| {
            if kind == Some(Protocol::Tcp) {
                self.report.error(
                    p.span(),
                    format!("`path_prefix` on {label} never matches: TCP connections carry no request path"),
                    "remove `path_prefix`, or change `protocol`",
                );
                return None;
            }
            if !p.get_ref().starts_with('/') {
                self.report.error(
                    p.span(),
                    format!(
                        "`path_prefix` = \"{}\" never matches: request paths start with `/`",
                        p.get_ref()
                    ),
                    format!("write path_prefix = \"/{}\"", p.get_ref()),
                );
                return None;
            }
            Some(p.get_ref().clone())
        });
        let sni = present(r.sni.as_ref(), |s| {
            if listener.tls.is_none() {
                self.report.error(
                    s.span(),
                    format!("`sni` on {label} never matches: {} is plaintext, so clients send no server name", listener_label),
                    r#"remove `sni`, or give the listener tls = { cert = "...", key = "..." }"#,
                );
                return None;
            }
            match check_dns_name(s.get_ref()) {
                Ok(()) => Some(s.get_ref().to_ascii_lowercase()),
                Err(why) => {
                    self.report.error(
                        s.span(),
                        format!("{why}, so `sni` on {label} never matches"),
                        r#"write the one server name this route is for, as in sni = "chat.example.com""#,
                    );
                    None
                }
            }
        });
        let backend = self
            .required(
                &r.backend,
                raw.span(),
                "[[listener.route]]",
                "backend",
                r#""chat""#,
            )
            .and_then(|b| self.backend_ref(b, &label));

        let request_timeout = present(r.request_timeout.as_ref(), |t| {
            if kind == Some(Protocol::Tcp) {
                self.report.error(
                    t.span(),
                    format!("`request_timeout` on {label} has no effect: TCP connections carry no requests"),
                    "remove `request_timeout` (`idle_timeout` in [defaults] ends silent TCP connections), or change `protocol`",
                );
                return None;
            }
            self.request_timeout(t)
        });

        let websocket = self.websocket_limits(r, kind, &label);
        Some(RouteConfig {
            name: name?,
            protocol: protocol?,
            host: host?,
            sni: sni?,
            path_prefix: path_prefix?,
            backend: backend?,
            request_timeout: request_timeout?,
            websocket: websocket?,
        })
    }

    /// The WebSocket-only keys of a route whose protocol is `kind` (`None`: any).
    fn websocket_limits(
        &mut self,
        r: &RawRoute,
        kind: Option<Protocol>,
        route: &str,
    ) -> Option<WebSocketLimits> {
        let max_message_size = present(r.max_message_size.as_ref(), |m| {
            self.websocket_only("max_message_size", m.span(), kind, route)?;
            self.size(m, "max_message_size")
        });
        let max_messages_per_second = present(r.max_messages_per_second.as_ref(), |m| {
            self.websocket_only("max_messages_per_second", m.span(), kind, route)?;
            self.per_second(m, "max_messages_per_second")
        });
        let max_frames_per_second = present(r.max_frames_per_second.as_ref(), |m| {
            self.websocket_only("max_frames_per_second", m.span(), kind, route)?;
            self.per_second(m, "max_frames_per_second")
        });
        let ping_interval = present(r.ping_interval.as_ref(), |p| {
            self.websocket_only("ping_interval", p.span(), kind, route)?;
            self.duration(p, "ping_interval")
        });
        let pong_timeout = present(r.pong_timeout.as_ref(), |p| {
            self.websocket_only("pong_timeout", p.span(), kind, route)?;
            if r.ping_interval.is_none() {
                self.report.error(
                    p.span(),
                    format!("`pong_timeout` has no effect without `ping_interval`: the gateway sends no pings on {route}"),
                    r#"add ping_interval = "30s", or remove `pong_timeout`"#,
                );
                return None;
            }
            self.duration(p, "pong_timeout")
        });
        let ping_interval = ping_interval?;
        Some(WebSocketLimits {
            max_message_size: max_message_size?,
            max_messages_per_second: max_messages_per_second?,
            max_frames_per_second: max_frames_per_second?,
            ping_interval,
            pong_timeout: pong_timeout?.or(ping_interval.map(|_| DEFAULT_PONG_TIMEOUT)),
        })
    }

    /// A per-second rate limit: 1 to `u32::MAX`; `None` after reporting anything else.
    fn per_second(&mut self, m: &Spanned<i64>, key: &str) -> Option<u32> {
        match u32::try_from(*m.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.report.error(
                    m.span(),
                    format!(
                        "`{key}` must be between 1 and {}, found {}",
                        u32::MAX,
                        m.get_ref()
                    ),
                    "remove the key for no limit",
                );
                None
            }
        }
    }

    /// `None` (after reporting) when `key` is on a route that can never carry a WebSocket.
    fn websocket_only(
        &mut self,
        key: &str,
        span: Range<usize>,
        kind: Option<Protocol>,
        route: &str,
    ) -> Option<()> {
        let Some(protocol @ (Protocol::Http | Protocol::Tcp)) = kind else {
            return Some(());
        };
        self.report.error(
            span,
            format!(
                "`{key}` only applies to WebSocket connections, but {route} has protocol = \"{}\"",
                protocol.as_str()
            ),
            format!("remove `{key}`, or set protocol = \"websocket\""),
        );
        None
    }

    fn protocol(&mut self, raw: &Spanned<String>) -> Option<Protocol> {
        match raw.get_ref().as_str() {
            "websocket" => Some(Protocol::WebSocket),
            "http" => Some(Protocol::Http),
            "tcp" => Some(Protocol::Tcp),
            "tls_passthrough" => {
                self.report.error(
                    raw.span(),
                    "`protocol = \"tls_passthrough\"` is not supported by this version of sockgate",
                    r#"TLS always ends at a listener with `tls`; to forward TLS untouched, use a listener without `tls` and protocol = "tcp""#,
                );
                None
            }
            other => {
                self.report.error(
                    raw.span(),
                    format!("`protocol` = \"{other}\" is not a protocol this route can match"),
                    r#"use "websocket", "http" or "tcp", or leave `protocol` out to match any"#,
                );
                None
            }
        }
    }

    fn host(&mut self, raw: &Spanned<String>) -> Option<String> {
        let host = raw.get_ref();
        if let Some(host) = normal_host(host) {
            return Some(host);
        }
        let hint = if host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!(
                "write IPv6 addresses in brackets, as Host headers carry them: host = \"[{host}]\""
            )
        } else {
            r#"write the name alone, without scheme, port or path, as in host = "chat.example.com""#
                .to_owned()
        };
        self.report.error(
            raw.span(),
            format!("`host` = \"{host}\" is not a host name, so it never matches a Host header"),
            hint,
        );
        None
    }

    fn backend_ref(&mut self, raw: &Spanned<String>, route: &str) -> Option<String> {
        let name = raw.get_ref();
        if self.backend_names.contains(name) {
            return Some(name.clone());
        }
        let message = format!(
            "{route} names backend `{name}`, which is not defined, so its connections would have nowhere to go"
        );
        let hint = if self.backend_names.is_empty() {
            format!("no backends are defined; add a [[backend]] with name = \"{name}\"")
        } else {
            let mut hint = format!("defined backends: {}", self.backend_names.join(", "));
            if let Some(close) = closest(name, self.backend_names.iter().map(String::as_str)) {
                hint.push_str(&format!("; did you mean `{close}`?"));
            }
            hint
        };
        self.report.error(raw.span(), message, hint);
        None
    }

    fn size(&mut self, raw: &Spanned<RawSize>, key: &str) -> Option<u64> {
        let parsed = match raw.get_ref() {
            RawSize::Bytes(n) => {
                u64::try_from(*n).map_err(|_| "sizes cannot be negative".to_owned())
            }
            RawSize::Text(s) => parse_size(s),
        };
        match parsed {
            Ok(n) if n >= 1 => Some(n),
            Ok(_) => {
                self.report.error(
                    raw.span(),
                    format!("`{key}` must be at least 1 byte: every message would be refused"),
                    "remove the key for no limit",
                );
                None
            }
            Err(why) => {
                self.report.error(
                    raw.span(),
                    format!("`{key}` is not a size: {why}"),
                    r#"write sizes like "64KiB", "1MiB" or a number of bytes"#,
                );
                None
            }
        }
    }

    fn backend(&mut self, raw: &Spanned<RawBackend>) -> Option<BackendConfig> {
        let b = raw.get_ref();
        let name = self.name(&b.name, raw.span(), "[[backend]]", r#""chat""#);
        let label = label("backend", &b.name);
        let servers = self
            .required(
                &b.servers,
                raw.span(),
                "[[backend]]",
                "servers",
                r#"["127.0.0.1:9001"]"#,
            )
            .and_then(|servers| {
                if servers.get_ref().is_empty() {
                    self.report.error(
                        servers.span(),
                        format!(
                            "{label} has no servers, so every connection routed to it would fail"
                        ),
                        r#"list at least one, as in servers = ["127.0.0.1:9001"]"#,
                    );
                    return None;
                }
                let checked: Vec<_> = servers.get_ref().iter().map(|s| self.server(s)).collect();
                checked.into_iter().collect::<Option<Vec<_>>>()
            });
        let send_proxy_protocol = present(b.send_proxy_protocol.as_ref(), |v| {
            match v.get_ref().as_str() {
                "v1" => Some(ProxyVersion::V1),
                "v2" => Some(ProxyVersion::V2),
                other => {
                    self.report.error(
                        v.span(),
                        format!(
                            "`send_proxy_protocol` = \"{other}\" is not a PROXY protocol version"
                        ),
                        r#"write "v1" (text) or "v2" (binary), whichever the servers expect"#,
                    );
                    None
                }
            }
        });
        Some(BackendConfig {
            name: name?,
            servers: servers?,
            send_proxy_protocol: send_proxy_protocol?,
        })
    }

    fn server(&mut self, raw: &Spanned<RawServer>) -> Option<ServerConfig> {
        let (address, weight) = match raw.get_ref() {
            RawServer::Address(address) => (Some(Spanned::new(raw.span(), address.clone())), None),
            RawServer::Table(t) => (
                self.required(
                    &t.address,
                    raw.span(),
                    "a `servers` entry",
                    "address",
                    r#""127.0.0.1:9001""#,
                )
                .cloned(),
                t.weight.as_ref(),
            ),
        };
        let address = address.and_then(|a| match check_server_address(a.get_ref()) {
            Ok(()) => Some(a.into_inner()),
            Err(why) => {
                self.report.error(
                    a.span(),
                    format!("server address \"{}\" cannot be connected to: {why}", a.get_ref()),
                    r#"write HOST:PORT, as in "127.0.0.1:9001", "[::1]:9001" or "chat.internal:9001""#,
                );
                None
            }
        });
        let weight = match weight {
            None => Some(1),
            Some(w) => match u32::try_from(*w.get_ref()) {
                Ok(n) if (1..=MAX_WEIGHT).contains(&n) => Some(n),
                _ if *w.get_ref() < 1 => {
                    self.report.error(
                        w.span(),
                        format!(
                            "`weight` must be between 1 and {MAX_WEIGHT}, found {}",
                            w.get_ref()
                        ),
                        "a server that should get no connections belongs out of `servers`",
                    );
                    None
                }
                _ => {
                    self.report.error(
                        w.span(),
                        format!(
                            "`weight` must be between 1 and {MAX_WEIGHT}, found {}",
                            w.get_ref()
                        ),
                        "weights are relative: divide them all by a common factor, as in 3 and 1 rather than 3000 and 1000",
                    );
                    None
                }
            },
        };
        Some(ServerConfig {
            address: address?,
            weight: weight?,
        })
    }

    /// A `name`: required and not empty.
    fn name(
        &mut self,
        raw: &Option<Spanned<String>>,
        table: Range<usize>,
        table_name: &str,
        example: &str,
    ) -> Option<String> {
        let name = self.required(raw, table, table_name, "name", example)?;
        if name.get_ref().is_empty() {
            self.report.error(
                name.span(),
                "`name` is empty; names label metrics, logs and the admin API",
                format!("give it a name, as in name = {example}"),
            );
            return None;
        }
        Some(name.get_ref().clone())
    }

    /// Reports the second and later uses of each name among siblings.
    fn unique_names<'n>(
        &mut self,
        names: impl Iterator<Item = &'n Option<Spanned<String>>>,
        what: &str,
        among: &str,
    ) {
        let mut seen: Vec<&Spanned<String>> = Vec::new();
        for name in names.flatten() {
            if let Some(first) = seen.iter().find(|s| s.get_ref() == name.get_ref()) {
                let first = self.report.position(&first.span());
                self.report.error(
                    name.span(),
                    format!("{what} name `{}` is used twice; names of {among} must be unique, as metrics and logs tell them apart by name", name.get_ref()),
                    format!("rename this one or the one at {first}"),
                );
            } else {
                seen.push(name);
            }
        }
    }

    /// A key that must be present; reported at its table when missing.
    fn required<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        table: Range<usize>,
        table_name: &str,
        key: &str,
        example: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.report.error(
                table,
                format!("{table_name} has no `{key}`, which it needs"),
                format!("add {key} = {example}"),
            );
        }
        value.as_ref()
    }
}

/// How messages name an object: "listener `edge`" (a missing name is reported on its own).
fn label(what: &str, name: &Option<Spanned<String>>) -> String {
    match name {
        Some(name) => format!("{what} `{}`", name.get_ref()),
        None => format!("the unnamed {what}"),
    }
}

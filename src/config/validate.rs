//! The second layer: raw structs to the validated model. Every rule reports at the value it
//! is about and checking goes on, so one run lists every problem. Each step returns `None`
//! when it reported something; a whole `Config` is only built when nothing was.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::cidr::Cidr;
use super::error::Report;
use super::model::{
    AdminConfig, AdminToken, BackendConfig, BackendTls, BackendVerify, Balance, CertPair,
    ClientAuth, ClientAuthMode, ClientCert, Config, Defaults, HashOn, HealthCheck, HealthKind,
    ListenAddr, ListenerConfig, MIN_ACCESS_LOG_INTERVAL, Passive, Protocol, ProxyVersion, Rate,
    RouteConfig, ServerConfig, SniCert, TlsConfig, UdpSessions, UnixAddr, UnixPerms,
    WebSocketLimits,
};
use super::raw::{
    RawAdmin, RawBackend, RawBackendTls, RawClientAuth, RawConfig, RawDefaults, RawHealth, RawId,
    RawListener, RawPassive, RawRoute, RawServer, RawSize, RawSni, RawTls, RawUnix,
};
use super::values::{
    check_cert_name, check_dns_name, check_server_address, closest, normal_host, parse_duration,
    parse_size,
};
use crate::certs::{self, CaLoadError, CertLoadError};

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

/// Health check bounds: checks no more often than 10 per second per server, no less than
/// hourly; a timeout of at least 10ms; `rise`, `fall` and passive `failures` up to 100.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3600);
pub const MIN_HEALTH_TIMEOUT: Duration = Duration::from_millis(10);
pub const MAX_HEALTH_COUNT: u32 = 100;
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Passive ejection: at least 100ms, at most an hour (before backoff doubles it).
pub const MIN_EJECT: Duration = Duration::from_millis(100);
pub const MAX_EJECT: Duration = Duration::from_secs(3600);
const DEFAULT_EJECT: Duration = Duration::from_secs(10);
const DEFAULT_PASSIVE_FAILURES: u32 = 3;

/// `max_connections` at most: ten million connections are twenty million open files.
pub const MAX_CONNECTIONS: usize = 10_000_000;

/// `max_new_connections_per_ip` at most: a million a second is no limit at all.
pub const MAX_RATE: u32 = 1_000_000;

/// `max_sessions` at most: each UDP session holds a socket toward its server, so the same
/// bound as `max_connections`.
pub const MAX_SESSIONS: usize = MAX_CONNECTIONS;

pub(super) fn validate(
    raw: &RawConfig,
    base_dir: &Path,
    report: &mut Report<'_>,
) -> Option<Config> {
    let mut backend_names = BackendNames::default();
    for name in raw.backend.iter().filter_map(|b| b.get_ref().name.as_ref()) {
        if backend_names.set.insert(name.get_ref().clone()) {
            backend_names.in_order.push(name.get_ref().clone());
        }
    }
    // Backends that hash a request's header, cookie or query: a TCP connection has none.
    let request_hashed = raw
        .backend
        .iter()
        .map(|b| b.get_ref())
        .filter(|b| {
            b.balance.as_ref().is_some_and(|k| k.get_ref() == "hash")
                && b.hash_on.as_ref().is_some_and(|h| {
                    ["header:", "cookie:", "query:"]
                        .iter()
                        .any(|p| h.get_ref().starts_with(p))
                })
        })
        .filter_map(|b| b.name.as_ref().map(|n| n.get_ref().clone()))
        .collect();
    // Backends that UDP routes send datagrams to, with the first such route's name.
    let mut udp_backends = HashMap::new();
    for l in raw.listener.iter().map(|l| l.get_ref()) {
        if l.protocol.as_ref().is_none_or(|p| p.get_ref() != "udp") {
            continue;
        }
        for r in l.route.iter().map(|r| r.get_ref()) {
            if let Some(b) = &r.backend {
                let route = r.name.as_ref().map_or("", |n| n.get_ref().as_str());
                udp_backends
                    .entry(b.get_ref().clone())
                    .or_insert_with(|| route.to_owned());
            }
        }
    }
    let mut v = Validator {
        report,
        base_dir,
        backend_names,
        request_hashed,
        udp_backends,
        listen_addrs: HashMap::new(),
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
        warnings: Vec::new(),
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
    backend_names: BackendNames,
    /// Backends with `hash_on` a header, cookie or query parameter.
    request_hashed: HashSet<String>,
    /// Backends used by UDP routes, with the first such route.
    udp_backends: HashMap<String, String>,
    /// Who listens where so far, for the uniqueness rule.
    listen_addrs: HashMap<ListenAddr, (String, Range<usize>)>,
}

/// Backend names looked up by every route (a set: configs with many thousands of routes
/// must check in time linear in their size) and listed in file order in hints.
#[derive(Default)]
struct BackendNames {
    set: HashSet<String>,
    in_order: Vec<String>,
}

/// Names a hint lists at most.
const HINT_NAMES: usize = 10;

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
        let access_log_interval = present(raw.access_log_interval.as_ref(), |raw| {
            let interval = self.duration(raw, "access_log_interval")?;
            if interval < MIN_ACCESS_LOG_INTERVAL {
                self.report.error(
                    raw.span(),
                    format!(
                        "`access_log_interval` = \"{}\" is shorter than 1s: a progress event for every connection that often would make the log the load",
                        raw.get_ref()
                    ),
                    "write \"1s\" or more (\"5m\" is typical), or remove the key for only the final event",
                );
                return None;
            }
            Some(interval)
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
            access_log_interval: access_log_interval?,
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
        match self.unique_listen(ListenAddr::Tcp(addr), raw, owner)? {
            ListenAddr::Tcp(addr) => Some(addr),
            ListenAddr::Unix(_) => None,
        }
    }

    /// A listener's `listen`: an IP address and port, or `unix:PATH` / `unix:@NAME`.
    fn listener_addr(&mut self, raw: &Spanned<String>, owner: String) -> Option<ListenAddr> {
        let Some(unix) = UnixAddr::parse(raw.get_ref()) else {
            return self.listen_addr(raw, owner).map(ListenAddr::Tcp);
        };
        // sun_path is 108 bytes (unix(7)): a path ends with a NUL, an abstract name starts
        // with one.
        const SUN_PATH: usize = 107;
        let problem = match &unix {
            UnixAddr::Abstract(name) if name.is_empty() => {
                Some("the abstract name is empty".to_owned())
            }
            UnixAddr::Abstract(name) if name.len() > SUN_PATH - 1 => Some(format!(
                "the abstract name is {} bytes; at most {} fit in a socket address",
                name.len(),
                SUN_PATH - 1
            )),
            UnixAddr::Abstract(_) => None,
            UnixAddr::Path(path) if path.as_os_str().is_empty() => {
                Some("the path is empty".to_owned())
            }
            UnixAddr::Path(path) if path.as_os_str().as_encoded_bytes().contains(&0) => {
                Some("the path holds a NUL byte".to_owned())
            }
            UnixAddr::Path(_) => None,
        };
        let unix = match unix {
            UnixAddr::Path(path) => UnixAddr::Path(self.base_dir.join(path)),
            abstract_name => abstract_name,
        };
        let problem = problem.or_else(|| match &unix {
            UnixAddr::Path(path) if path.as_os_str().len() > SUN_PATH => Some(format!(
                "the path {} is {} bytes; a Unix socket path holds at most {SUN_PATH}",
                path.display(),
                path.as_os_str().len()
            )),
            _ => None,
        });
        if let Some(problem) = problem {
            self.report.error(
                raw.span(),
                format!("`listen` = \"{}\" cannot be bound: {problem}", raw.get_ref()),
                r#"write "unix:/run/sockgate/NAME.sock" (a socket file; relative paths start at the config file's folder) or "unix:@NAME" (Linux's abstract namespace)"#,
            );
            return None;
        }
        self.unique_listen(ListenAddr::Unix(unix), raw, owner)
    }

    /// Records who listens at `addr`; a second owner is an error. Port 0 (any free port)
    /// never collides.
    fn unique_listen(
        &mut self,
        addr: ListenAddr,
        raw: &Spanned<String>,
        owner: String,
    ) -> Option<ListenAddr> {
        if !matches!(addr, ListenAddr::Tcp(a) if a.port() == 0)
            && let Some((first, at)) = self.listen_addrs.get(&addr)
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
        self.listen_addrs.insert(addr.clone(), (owner, raw.span()));
        Some(addr)
    }

    /// A listener's `unix = { mode, owner, group }`, for a listener on a socket file.
    fn unix_perms(
        &mut self,
        raw: &Spanned<RawUnix>,
        listen: Option<&ListenAddr>,
        label: &str,
    ) -> Option<UnixPerms> {
        match listen {
            Some(ListenAddr::Tcp(_)) => {
                self.report.error(
                    raw.span(),
                    format!("`unix` sets a Unix socket file's mode and owner, but {label} listens on TCP"),
                    r#"remove `unix`, or listen on a socket file, as in listen = "unix:/run/sockgate/chat.sock""#,
                );
                return None;
            }
            Some(ListenAddr::Unix(UnixAddr::Abstract(_))) => {
                self.report.error(
                    raw.span(),
                    format!("{label} listens on an abstract Unix socket, which has no file: `unix` (mode, owner, group) does not apply"),
                    r#"remove `unix`, or listen on a socket file, as in listen = "unix:/run/sockgate/chat.sock""#,
                );
                return None;
            }
            Some(ListenAddr::Unix(UnixAddr::Path(_))) | None => {}
        }
        let u = raw.get_ref();
        let mode = present(u.mode.as_ref(), |m| {
            let text = m.get_ref();
            let digits = text.strip_prefix("0o").unwrap_or(text);
            match u32::from_str_radix(digits, 8) {
                Ok(mode) if !digits.is_empty() && digits.len() <= 4 && mode <= 0o777 => Some(mode),
                _ => {
                    self.report.error(
                        m.span(),
                        format!("`mode` = \"{text}\" is not a file mode: octal digits, at most 0777"),
                        r#"write the permission bits in octal, as in mode = "0660" (owner and group read and write)"#,
                    );
                    None
                }
            }
        });
        let owner = present(u.owner.as_ref(), |o| {
            self.unix_id(o, "owner", "/etc/passwd")
        });
        let group = present(u.group.as_ref(), |g| self.unix_id(g, "group", "/etc/group"));
        Some(UnixPerms {
            mode: mode?,
            owner: owner?,
            group: group?,
        })
    }

    /// A user (`owner`) or group: a numeric id, or a name looked up in `file` (the local
    /// files only: names that only NSS modules such as LDAP know are not found; give the id).
    fn unix_id(&mut self, raw: &Spanned<RawId>, key: &str, file: &str) -> Option<u32> {
        let id = match raw.get_ref() {
            RawId::Id(n) => Ok(*n),
            RawId::Name(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) => {
                name.parse::<i64>()
                    .map_err(|_| format!("`{key}` = \"{name}\" is not a valid id"))
            }
            RawId::Name(name) => match lookup_id(file, name) {
                Ok(Some(id)) => Ok(i64::from(id)),
                Ok(None) => Err(format!("`{key}` = \"{name}\" is not in {file}")),
                Err(e) => Err(format!(
                    "`{key}` = \"{name}\" cannot be looked up: reading {file}: {e}"
                )),
            },
        };
        // u32::MAX is chown(2)'s "leave unchanged".
        match id {
            Ok(n) if (0..i64::from(u32::MAX)).contains(&n) => u32::try_from(n).ok(),
            Ok(n) => {
                self.report.error(
                    raw.span(),
                    format!("`{key}` = {n} is not a valid id"),
                    format!("give an id between 0 and {}", u32::MAX - 1),
                );
                None
            }
            Err(message) => {
                self.report.error(
                    raw.span(),
                    message,
                    format!(
                        "name an existing {} or give its numeric id, as in {key} = 33",
                        if key == "owner" { "user" } else { "group" }
                    ),
                );
                None
            }
        }
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
            .and_then(|listen| self.listener_addr(listen, label.clone()));
        let unix = present(l.unix.as_ref(), |u| {
            self.unix_perms(u, listen.as_ref(), &label)
        });
        let on_unix = matches!(listen, Some(ListenAddr::Unix(_)));
        let udp = present(l.protocol.as_ref(), |p| match p.get_ref().as_str() {
            "tcp" => Some(false),
            "udp" => Some(true),
            other => {
                self.report.error(
                    p.span(),
                    format!("`protocol` = \"{other}\" is not a protocol {label} can listen for"),
                    r#"use "udp" for datagrams, or leave `protocol` out for TCP (every route protocol but udp)"#,
                );
                None
            }
        });
        let is_udp = udp.flatten() == Some(true);
        if is_udp {
            self.udp_listener_keys(l, &label);
            if on_unix && let Some(at) = &l.listen {
                self.report.error(
                    at.span(),
                    format!("{label} is udp, but listens on a Unix socket: datagram listeners take an IP address and port"),
                    r#"write IP:PORT, as in listen = "0.0.0.0:4000", or leave `protocol` out for a stream listener"#,
                );
            }
        }
        let tls = present(l.tls.as_ref(), |t| self.tls(t, &label));
        let trusted_proxies = present(l.trusted_proxies.as_ref(), |t| self.trusted_proxies(t));
        let proxy_protocol = l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
        // A Unix listener's peers are local processes the socket file let in: trusted.
        if let Some(p) = &l.proxy_protocol
            && *p.get_ref()
            && !on_unix
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
        let client_cert_header = present(l.client_cert_header.as_ref(), |h| {
            self.client_cert_header(h, l, &label)
        });
        if l.route.is_empty() {
            let at = l.name.as_ref().map_or(raw.span(), Spanned::span);
            self.report.error(
                at,
                format!("{label} has no routes, so every connection to it would be refused"),
                "add a [[listener.route]] with a `backend` after this listener",
            );
        }
        if is_udp && let Some(second) = l.route.get(1) {
            self.report.error(
                second.span(),
                format!("{label} is udp and has more than one route: a datagram carries nothing to choose between routes by, so only the first would ever be used"),
                "keep one [[listener.route]] on a udp listener; give other backends their own listener",
            );
        }
        let routes: Vec<_> = l.route.iter().map(|r| self.route(r, l, is_udp)).collect();
        self.unique_names(
            l.route.iter().map(|r| &r.get_ref().name),
            "route",
            "routes of one listener",
        );
        Some(ListenerConfig {
            name: name?,
            listen: listen?,
            unix: unix?.unwrap_or_default(),
            udp: udp?.unwrap_or(false),
            tls: tls?,
            trusted_proxies: trusted_proxies?.unwrap_or_default(),
            proxy_protocol,
            max_connections: max_connections?,
            max_connections_per_ip: per_ip?,
            max_new_connections_per_ip: rate?,
            client_cert_header: client_cert_header?,
            routes: routes.into_iter().collect::<Option<_>>()?,
        })
    }

    /// `client_cert_header`: a header name the gateway may own, on a listener that asks
    /// clients for certificates.
    fn client_cert_header(
        &mut self,
        raw: &Spanned<String>,
        listener: &RawListener,
        label: &str,
    ) -> Option<String> {
        let asks = listener
            .tls
            .as_ref()
            .is_some_and(|t| t.get_ref().client_auth.is_some());
        if !asks {
            let why = if listener.tls.is_none() {
                "is plaintext"
            } else {
                "does not ask clients for certificates"
            };
            self.report.error(
                raw.span(),
                format!("`client_cert_header` on {label} never has a subject to pass on: the listener {why}"),
                r#"remove `client_cert_header`, or give the listener tls = { cert = "...", key = "...", client_auth = { ca = "clients-ca.crt", mode = "request" } }"#,
            );
            return None;
        }
        let name = raw.get_ref().to_ascii_lowercase();
        if name.is_empty() || !is_token(&name) {
            self.report.error(
                raw.span(),
                format!("`client_cert_header` = \"{}\" is not an HTTP header name", raw.get_ref()),
                r#"use letters, digits and `-`, as in client_cert_header = "X-Client-Cert-Subject""#,
            );
            return None;
        }
        // Headers the gateway writes or that frame the request: sharing a name with one
        // would overwrite it or be overwritten.
        const OWNED: [&str; 17] = [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
            "cookie",
            "authorization",
            "expect",
        ];
        if OWNED.contains(&name.as_str()) || name.starts_with("sec-websocket-") {
            self.report.error(
                raw.span(),
                format!("`client_cert_header` = \"{}\" names a header that requests already use, which the subject would replace", raw.get_ref()),
                r#"pick a header of its own, as in client_cert_header = "X-Client-Cert-Subject""#,
            );
            return None;
        }
        Some(name)
    }

    fn tls(&mut self, raw: &Spanned<RawTls>, listener: &str) -> Option<TlsConfig> {
        let t = raw.get_ref();
        // The default certificate is served for any name, or none: only its signature
        // and key are looked at for Apple clients.
        let default = self.cert_pair(
            &t.cert,
            &t.key,
            raw.span(),
            "[listener.tls]",
            listener,
            None,
        );
        let sni: Vec<_> = t.sni.iter().map(|s| self.sni(s, listener)).collect();
        let client_auth = present(t.client_auth.as_ref(), |c| self.client_auth(c, listener));
        Some(TlsConfig {
            default: default?,
            sni: sni.into_iter().collect::<Option<_>>()?,
            client_auth: client_auth?,
        })
    }

    /// `client_auth = { ca, mode }`: the CA bundle is read here, once per load or reload.
    fn client_auth(&mut self, raw: &Spanned<RawClientAuth>, listener: &str) -> Option<ClientAuth> {
        let c = raw.get_ref();
        let mode = match &c.mode {
            None => Some(ClientAuthMode::Require),
            Some(m) => match m.get_ref().as_str() {
                "require" => Some(ClientAuthMode::Require),
                "request" => Some(ClientAuthMode::Request),
                other => {
                    self.report.error(
                        m.span(),
                        format!("`mode` = \"{other}\" is not a client certificate mode"),
                        r#"use "require" (a client without a valid certificate is refused) or "request" (a certificate is optional, routes may match on it)"#,
                    );
                    None
                }
            },
        };
        let ca = self.required(
            &c.ca,
            raw.span(),
            "[listener.tls.client_auth]",
            "ca",
            r#""clients-ca.crt""#,
        )?;
        let path = self.base_dir.join(ca.get_ref());
        let bundle = match certs::load_ca_bundle(&path) {
            Ok(bundle) => Some(bundle),
            Err(error) => {
                let hint = match &error {
                    CaLoadError::Read { .. } | CaLoadError::Empty { .. } => {
                        "give the PEM certificate(s) of the CA that issues client certificates (relative paths start at the config file's folder)"
                    }
                    CaLoadError::Invalid { .. } => {
                        "give only CA certificates, in PEM, each one whole"
                    }
                };
                self.report.error(
                    ca.span(),
                    format!(
                        "{}; {listener} cannot check client certificates",
                        crate::error::error_chain(&error)
                    ),
                    hint,
                );
                None
            }
        };
        Some(ClientAuth {
            ca: path,
            mode: mode?,
            bundle: bundle?,
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
            names.as_deref(),
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
        names: Option<&[String]>,
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
                for reason in certs::ats::refusals(&certified.cert, names) {
                    self.report.warn(
                        cert.span(),
                        format!(
                            "{listener} certificate {}: Apple clients (App Transport Security) would refuse it: {reason}",
                            cert.get_ref()
                        ),
                    );
                }
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

    fn route(
        &mut self,
        raw: &Spanned<RawRoute>,
        listener: &RawListener,
        udp: bool,
    ) -> Option<RouteConfig> {
        let r = raw.get_ref();
        let name = self.name(&r.name, raw.span(), "[[listener.route]]", r#""chat""#);
        let label = label("route", &r.name);
        let listener_label = self::label("listener", &listener.name);
        let protocol = present(r.protocol.as_ref(), |p| {
            let protocol = self.protocol(p)?;
            match (udp, protocol) {
                (true, Protocol::Udp)
                | (
                    false,
                    Protocol::WebSocket | Protocol::Http | Protocol::Tcp | Protocol::TlsPassthrough,
                ) => Some(protocol),
                (true, other) => {
                    self.report.error(
                        p.span(),
                        format!("{label} has protocol = \"{}\", but {listener_label} is udp: it receives datagrams, never {} connections", other.as_str(), other.as_str()),
                        "remove `protocol` (routes of a udp listener are udp), or move the route to a TCP listener",
                    );
                    None
                }
                (false, Protocol::Udp) => {
                    self.report.error(
                        p.span(),
                        format!("{label} has protocol = \"udp\", but {listener_label} listens for TCP connections"),
                        r#"put the route on a listener with protocol = "udp""#,
                    );
                    None
                }
            }
        });
        // On a udp listener every route is udp, written or not.
        let protocol = protocol.map(|p| if udp { Some(Protocol::Udp) } else { p });
        // An invalid protocol was reported; check the rest as if it matched any.
        let kind = protocol.flatten();

        // TCP and passthrough TLS are relayed as bytes: no request, no Host, no path.
        let opaque = match kind {
            Some(Protocol::Tcp) => Some("TCP connections"),
            Some(Protocol::TlsPassthrough) => {
                Some("TLS passthrough connections (relayed without decrypting)")
            }
            Some(Protocol::Udp) => Some("UDP datagrams"),
            _ => None,
        };
        if kind == Some(Protocol::TlsPassthrough) && r.sni.is_none() {
            self.report.error(
                raw.span(),
                format!("{label} has protocol = \"tls_passthrough\" but no `sni`: passthrough routes are picked by the server name in the client's ClientHello"),
                r#"add the server name this route is for, as in sni = "db.example.com""#,
            );
        }

        let host = present(r.host.as_ref(), |h| {
            if let Some(what) = opaque {
                self.report.error(
                    h.span(),
                    format!("`host` on {label} never matches: {what} carry no Host header"),
                    "remove `host` (use `sni` to pick TLS connections by server name), or change `protocol`",
                );
                return None;
            }
            self.host(h)
        });
        let path_prefix = present(r.path_prefix.as_ref(), |p| {
            if let Some(what) = opaque {
                self.report.error(
                    p.span(),
                    format!("`path_prefix` on {label} never matches: {what} carry no request path"),
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
            if udp {
                self.report.error(
                    s.span(),
                    format!("`sni` on {label} never matches: UDP datagrams carry no server name"),
                    "remove `sni`",
                );
                return None;
            }
            if listener.tls.is_none() && kind != Some(Protocol::TlsPassthrough) {
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
            .and_then(|b| self.backend_ref(b, &label))
            .and_then(|b| {
                if let Some(kind @ (Protocol::Tcp | Protocol::TlsPassthrough | Protocol::Udp)) =
                    kind
                    && self.request_hashed.contains(&b)
                {
                    let at = r.backend.as_ref().map(Spanned::span).unwrap_or_default();
                    self.report.error(
                        at,
                        format!("{label} is `{}`, but backend `{b}` hashes on a request's header, cookie or query parameter, which a TCP connection does not have", kind.as_str()),
                        r#"give the backend hash_on = "client_ip", or route TCP to another backend"#,
                    );
                    return None;
                }
                Some(b)
            });

        let request_timeout = present(r.request_timeout.as_ref(), |t| {
            if let Some(what) = opaque {
                self.report.error(
                    t.span(),
                    format!("`request_timeout` on {label} has no effect: {what} carry no requests"),
                    "remove `request_timeout` (`idle_timeout` in [defaults] ends silent TCP connections), or change `protocol`",
                );
                return None;
            }
            self.request_timeout(t)
        });

        let client_cert = present(r.client_cert.as_ref(), |c| {
            self.route_client_cert(c, kind, listener, &label, &listener_label)
        });

        let websocket = self.websocket_limits(r, kind, &label);
        let sessions = self.udp_sessions(r, udp, &label);
        Some(RouteConfig {
            name: name?,
            protocol: protocol?,
            host: host?,
            sni: sni?,
            path_prefix: path_prefix?,
            backend: backend?,
            request_timeout: request_timeout?,
            client_cert: client_cert?,
            websocket: websocket?,
            sessions: sessions?,
        })
    }

    /// A route's `client_cert`: only on a listener that asks for certificates, never on a
    /// passthrough route (the gateway does not see that handshake).
    fn route_client_cert(
        &mut self,
        raw: &Spanned<bool>,
        kind: Option<Protocol>,
        listener: &RawListener,
        label: &str,
        listener_label: &str,
    ) -> Option<bool> {
        let want = *raw.get_ref();
        if kind == Some(Protocol::TlsPassthrough) {
            self.report.error(
                raw.span(),
                format!("`client_cert` on {label} never applies: passthrough TLS is relayed undecrypted, so the gateway never sees a client certificate"),
                "remove `client_cert` (the backend that ends the TLS session can ask for one)",
            );
            return None;
        }
        let mode = listener
            .tls
            .as_ref()
            .and_then(|t| t.get_ref().client_auth.as_ref())
            .map(|c| c.get_ref().mode.as_ref().map(|m| m.get_ref().as_str()));
        let Some(mode) = mode else {
            let why = if listener.tls.is_none() {
                "is plaintext"
            } else {
                "does not ask clients for certificates"
            };
            self.report.error(
                raw.span(),
                format!("`client_cert` on {label} cannot be told: {listener_label} {why}"),
                r#"remove `client_cert`, or give the listener tls = { cert = "...", key = "...", client_auth = { ca = "clients-ca.crt", mode = "request" } }"#,
            );
            return None;
        };
        if !want && matches!(mode, None | Some("require")) {
            self.report.error(
                raw.span(),
                format!("`client_cert = false` on {label} never matches: {listener_label} requires a client certificate of every client"),
                r#"remove the route or `client_cert`, or set mode = "request" in the listener's client_auth"#,
            );
            return None;
        }
        Some(want)
    }

    /// `session_idle_timeout` and `max_sessions`: on routes of udp listeners only.
    fn udp_sessions(&mut self, r: &RawRoute, udp: bool, route: &str) -> Option<UdpSessions> {
        let only_udp = |v: &mut Self, key: &str, span: Range<usize>| {
            if udp {
                return Some(());
            }
            v.report.error(
                span,
                format!("`{key}` only applies to UDP sessions, but {route} is on a TCP listener"),
                format!(r#"remove `{key}`, or put the route on a listener with protocol = "udp""#),
            );
            None
        };
        let defaults = UdpSessions::default();
        let idle = present(r.session_idle_timeout.as_ref(), |t| {
            only_udp(self, "session_idle_timeout", t.span())?;
            self.duration(t, "session_idle_timeout")
        });
        let max = present(r.max_sessions.as_ref(), |m| {
            only_udp(self, "max_sessions", m.span())?;
            self.count(m, "max_sessions", MAX_SESSIONS as u32)
                .map(|n| n as usize)
        });
        Some(UdpSessions {
            idle_timeout: idle?.unwrap_or(defaults.idle_timeout),
            max_sessions: max?.unwrap_or(defaults.max_sessions),
        })
    }

    /// Keys a udp listener cannot honour, each reported at its value.
    fn udp_listener_keys(&mut self, l: &RawListener, label: &str) {
        let mut refuse = |span: Range<usize>, key: &str, why: &str, hint: &str| {
            self.report.error(
                span,
                format!("`{key}` cannot apply to {label}, which is udp: {why}"),
                hint.to_owned(),
            );
        };
        if let Some(t) = &l.tls {
            refuse(
                t.span(),
                "tls",
                "the gateway terminates TLS over TCP only (DTLS is not supported)",
                "remove `tls`; UDP datagrams are relayed as they come",
            );
        }
        if let Some(p) = &l.proxy_protocol {
            refuse(
                p.span(),
                "proxy_protocol",
                "a PROXY header starts a TCP connection; datagrams carry none",
                "remove `proxy_protocol`",
            );
        }
        if let Some(t) = &l.trusted_proxies {
            refuse(
                t.span(),
                "trusted_proxies",
                "there are no PROXY or forwarded headers to trust in datagrams",
                "remove `trusted_proxies`",
            );
        }
        for (key, span) in [
            (
                "max_connections",
                l.max_connections.as_ref().map(Spanned::span),
            ),
            (
                "max_connections_per_ip",
                l.max_connections_per_ip.as_ref().map(Spanned::span),
            ),
            (
                "max_new_connections_per_ip",
                l.max_new_connections_per_ip.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span {
                refuse(
                    span,
                    key,
                    "it has sessions, not connections",
                    "remove it, and bound sessions with `max_sessions` on the listener's route",
                );
            }
        }
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
        let Some(
            protocol @ (Protocol::Http | Protocol::Tcp | Protocol::TlsPassthrough | Protocol::Udp),
        ) = kind
        else {
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
            "tls_passthrough" => Some(Protocol::TlsPassthrough),
            "udp" => Some(Protocol::Udp),
            other => {
                self.report.error(
                    raw.span(),
                    format!("`protocol` = \"{other}\" is not a protocol this route can match"),
                    r#"use "websocket", "http", "tcp", "tls_passthrough" or "udp", or leave `protocol` out to match any but passthrough TLS"#,
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
        if self.backend_names.set.contains(name) {
            return Some(name.clone());
        }
        let message = format!(
            "{route} names backend `{name}`, which is not defined, so its connections would have nowhere to go"
        );
        let defined = &self.backend_names.in_order;
        let hint = if defined.is_empty() {
            format!("no backends are defined; add a [[backend]] with name = \"{name}\"")
        } else {
            let mut hint = format!(
                "defined backends: {}",
                defined[..defined.len().min(HINT_NAMES)].join(", ")
            );
            if defined.len() > HINT_NAMES {
                hint.push_str(&format!(" and {} more", defined.len() - HINT_NAMES));
            }
            if let Some(close) = closest(name, defined.iter().map(String::as_str)) {
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
        let balance = self.balance(b, &label);
        let health = present(b.health.as_ref(), |h| self.health(h));
        let passive = present(b.passive.as_ref(), |p| self.passive(p));
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
        let tls = present(b.tls.as_ref(), |t| self.backend_tls(t, &label));
        if let Some(route) = b
            .name
            .as_ref()
            .and_then(|n| self.udp_backends.get(n.get_ref()))
        {
            let route = route.clone();
            self.udp_backend_keys(b, &label, &route);
        }
        Some(BackendConfig {
            name: name?,
            servers: servers?,
            balance: balance?,
            health: health?,
            passive: passive?,
            send_proxy_protocol: send_proxy_protocol?,
            tls: tls?,
        })
    }

    /// A backend's `tls`: verification against `ca` (or none, with a warning), the name
    /// asked for, and the gateway's own certificate.
    fn backend_tls(&mut self, raw: &Spanned<RawBackendTls>, backend: &str) -> Option<BackendTls> {
        let t = raw.get_ref();
        let verify_on = t.verify.as_ref().is_none_or(|v| *v.get_ref());
        let verify = match (&t.ca, verify_on) {
            (Some(ca), true) => self.ca_bundle(ca, backend),
            (None, true) => {
                self.report.error(
                    raw.span(),
                    format!("`tls` on {backend} verifies the servers' certificates but has no `ca` to verify them against"),
                    r#"add ca = "backend-ca.crt", the PEM file of the CA that issued the servers' certificates (for publicly issued ones, the system bundle, such as "/etc/ssl/certs/ca-certificates.crt"), or verify = false to skip verification"#,
                );
                None
            }
            (Some(ca), false) => {
                self.report.error(
                    ca.span(),
                    format!("`ca` has no effect on {backend}: verify = false takes any certificate"),
                    "remove `ca`, or remove verify = false to check the servers' certificates against it",
                );
                None
            }
            (None, false) => {
                if let Some(v) = &t.verify {
                    self.report.warn(
                        v.span(),
                        format!("{backend} has verify = false: any certificate is taken from its servers, so whoever is on the path to them can read and change the traffic"),
                    );
                }
                Some(BackendVerify::Off)
            }
        };
        let sni = present(t.sni.as_ref(), |s| match check_dns_name(s.get_ref()) {
            Ok(()) => Some(s.get_ref().to_ascii_lowercase()),
            Err(why) => {
                self.report.error(
                    s.span(),
                    format!("{why}, so no server certificate of {backend} can match `sni`"),
                    r#"write the DNS name the servers' certificates carry, as in sni = "chat.internal", or remove `sni` to use each server's host (an IP address is verified against the certificate's IP addresses)"#,
                );
                None
            }
        });
        let client_cert = match (&t.cert, &t.key) {
            (None, None) => Some(None),
            (Some(cert), None) => {
                self.report.error(
                    cert.span(),
                    format!("`cert` without `key` on {backend}'s `tls`: the gateway could not prove it owns the certificate"),
                    r#"add key = "gateway.key", the certificate's PEM private key, or remove `cert`"#,
                );
                None
            }
            (None, Some(key)) => {
                self.report.error(
                    key.span(),
                    format!("`key` without `cert` on {backend}'s `tls`: there is no client certificate to present with it"),
                    r#"add cert = "gateway.crt", the PEM certificate the servers accept, or remove `key`"#,
                );
                None
            }
            (Some(cert), Some(key)) => self.client_cert(cert, key, backend).map(Some),
        };
        Some(BackendTls {
            sni: sni?,
            verify: verify?,
            client_cert: client_cert?,
        })
    }

    fn ca_bundle(&mut self, raw: &Spanned<String>, backend: &str) -> Option<BackendVerify> {
        let path = self.base_dir.join(raw.get_ref());
        match certs::load_ca_bundle(&path) {
            Ok(bundle) => Some(BackendVerify::Ca { path, bundle }),
            Err(e) => {
                self.report.error(
                    raw.span(),
                    format!(
                        "{}; connections to {backend} could not be verified",
                        crate::error::error_chain(&e)
                    ),
                    "give the PEM file of the CA certificates that issued the servers' certificates (relative paths start at the config file's folder)",
                );
                None
            }
        }
    }

    /// The gateway's client certificate toward a backend: a bad key file is reported at
    /// `key`, everything else at `cert`.
    fn client_cert(
        &mut self,
        cert: &Spanned<String>,
        key: &Spanned<String>,
        backend: &str,
    ) -> Option<ClientCert> {
        let cert_path = self.base_dir.join(cert.get_ref());
        let key_path = self.base_dir.join(key.get_ref());
        let error = match certs::load_cert_pair(&cert_path, &key_path) {
            Ok(certified) => {
                return Some(ClientCert(CertPair {
                    cert: cert_path,
                    key: key_path,
                    certified,
                }));
            }
            Err(error) => error,
        };
        let (at, hint) = match &error {
            CertLoadError::CertRead { .. } | CertLoadError::NoCertificate { .. } => (
                cert.span(),
                "give the PEM certificate (chain) the servers accept from the gateway; relative paths start at the config file's folder",
            ),
            CertLoadError::KeyRead { .. } => (
                key.span(),
                "give the PEM private key of the certificate; relative paths start at the config file's folder",
            ),
            CertLoadError::KeyUnsupported { .. } => (
                key.span(),
                "use an RSA, ECDSA P-256/P-384 or Ed25519 key in PEM",
            ),
            CertLoadError::Mismatch { .. } => {
                (cert.span(), "use the key the certificate was issued for")
            }
        };
        self.report.error(
            at,
            format!(
                "{}; {backend} would get no client certificate",
                crate::error::error_chain(&error)
            ),
            hint,
        );
        None
    }

    /// Keys of a backend that a UDP route sends datagrams to and that only work over TCP.
    fn udp_backend_keys(&mut self, b: &RawBackend, backend: &str, route: &str) {
        // A session's first datagram is sent as it arrives: no name lookup in between.
        for server in b.servers.iter().flat_map(|s| s.get_ref()) {
            let address = match server.get_ref() {
                RawServer::Address(a) => Some((a.as_str(), server.span())),
                RawServer::Table(t) => t.address.as_ref().map(|a| (a.get_ref().as_str(), a.span())),
            };
            if let Some((address, span)) = &address
                && UnixAddr::parse(address).is_some()
            {
                self.report.error(
                    span.clone(),
                    format!("{backend} is used by udp route `{route}`, whose servers must be IP addresses: server \"{address}\" is a Unix stream socket"),
                    r#"write the server's IP address and port, as in "10.0.0.7:4000", or give the udp route a backend of its own"#,
                );
                continue;
            }
            if let Some((address, span)) = address
                && address.parse::<SocketAddr>().is_err()
                && check_server_address(address).is_ok()
            {
                self.report.error(
                    span,
                    format!("{backend} is used by udp route `{route}`, whose servers must be IP addresses: server \"{address}\" is a name, which datagram sessions do not look up"),
                    r#"write the server's IP address and port, as in "10.0.0.7:4000" or "[2001:db8::7]:4000""#,
                );
            }
        }
        if let Some(t) = &b.tls {
            self.report.error(
                t.span(),
                format!("{backend} is used by udp route `{route}`, but TLS runs over TCP only (DTLS is not supported)"),
                "remove `tls`, or give the udp route a backend of its own",
            );
        }
        if let Some(v) = &b.send_proxy_protocol {
            self.report.error(
                v.span(),
                format!("{backend} is used by udp route `{route}`, whose datagrams cannot carry a PROXY header"),
                "remove `send_proxy_protocol`, or give the udp route a backend of its own",
            );
        }
        if let Some(kind) = b
            .health
            .as_ref()
            .and_then(|h| h.get_ref().kind.as_ref())
            .filter(|k| matches!(k.get_ref().as_str(), "http" | "websocket"))
        {
            self.report.error(
                kind.span(),
                format!("{backend} is used by udp route `{route}`, but a `{}` health check asks its servers over TCP for what a UDP server does not answer", kind.get_ref()),
                r#"use kind = "tcp" if the servers also listen on TCP on that port, or remove `health` (passive ejection still counts ICMP port unreachable)"#,
            );
        }
    }

    /// `balance` and `hash_on`, which only `balance = "hash"` takes and needs.
    fn balance(&mut self, b: &RawBackend, backend: &str) -> Option<Balance> {
        const KINDS: [&str; 3] = ["round_robin", "least_conn", "hash"];
        let kind = match &b.balance {
            None => "round_robin",
            Some(raw) => match raw.get_ref().as_str() {
                k @ ("round_robin" | "least_conn" | "hash") => k,
                other => {
                    let mut hint =
                        r#"use "round_robin" (the default), "least_conn" or "hash""#.to_owned();
                    if let Some(close) = closest(other, KINDS) {
                        hint.push_str(&format!("; did you mean \"{close}\"?"));
                    }
                    self.report.error(
                        raw.span(),
                        format!("`balance` = \"{other}\" is not a way to pick servers"),
                        hint,
                    );
                    return None;
                }
            },
        };
        match (kind, &b.hash_on) {
            ("hash", None) => {
                let at = b.balance.as_ref().map(Spanned::span).unwrap_or_default();
                self.report.error(
                    at,
                    format!("`balance = \"hash\"` on {backend} needs `hash_on`: there is nothing to hash"),
                    r#"add hash_on = "client_ip", or "header:NAME", "cookie:NAME", "query:NAME""#,
                );
                None
            }
            ("hash", Some(on)) => self.hash_on(on).map(Balance::Hash),
            (_, Some(on)) => {
                self.report.error(
                    on.span(),
                    format!("`hash_on` has no effect: {backend} picks servers by {kind}"),
                    r#"add balance = "hash", or remove `hash_on`"#,
                );
                None
            }
            ("least_conn", None) => Some(Balance::LeastConn),
            _ => Some(Balance::RoundRobin),
        }
    }

    fn hash_on(&mut self, raw: &Spanned<String>) -> Option<HashOn> {
        const FORMS: &str = r#"write "client_ip", "header:NAME", "cookie:NAME" or "query:NAME", as in hash_on = "header:X-User-Id""#;
        let text = raw.get_ref();
        if text == "client_ip" {
            return Some(HashOn::ClientIp);
        }
        let parsed = match text.split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(|n| HashOn::Header(n.as_str().to_owned()))
                .map_err(|_| format!("`{name}` is not a header name")),
            Some(("cookie", name)) if is_token(name) => Ok(HashOn::Cookie(name.to_owned())),
            Some(("cookie", name)) => Err(format!("`{name}` is not a cookie name")),
            Some(("query", name)) if !name.is_empty() && !name.contains(['&', '=', '#', ' ']) => {
                Ok(HashOn::Query(name.to_owned()))
            }
            Some(("query", name)) => Err(format!("`{name}` is not a query parameter name")),
            _ => Err("it names no key of a connection or request".to_owned()),
        };
        parsed
            .map_err(|why| {
                self.report.error(
                    raw.span(),
                    format!("`hash_on` = \"{text}\" cannot be hashed: {why}"),
                    FORMS,
                );
            })
            .ok()
    }

    fn health(&mut self, raw: &Spanned<RawHealth>) -> Option<HealthCheck> {
        let h = raw.get_ref();
        let kind = self
            .required(&h.kind, raw.span(), "`health`", "kind", r#""tcp""#)
            .and_then(|k| match k.get_ref().as_str() {
                "tcp" => Some(HealthKind::Tcp),
                "http" => Some(HealthKind::Http),
                "websocket" => Some(HealthKind::WebSocket),
                other => {
                    self.report.error(
                        k.span(),
                        format!("health check `kind` = \"{other}\" is not a check the gateway can run"),
                        r#"use "tcp" (connect), "http" (GET `path`, expecting `expect_status`) or "websocket" (a handshake on `path`, expecting 101)"#,
                    );
                    None
                }
            });
        let path = present(h.path.as_ref(), |p| {
            if kind == Some(HealthKind::Tcp) {
                self.report.error(
                    p.span(),
                    "`path` has no effect on a `tcp` health check, which only connects",
                    r#"remove `path`, or use kind = "http" or "websocket""#,
                );
                return None;
            }
            let ok = p.get_ref().starts_with('/')
                && p.get_ref().parse::<http::uri::PathAndQuery>().is_ok();
            if !ok {
                self.report.error(
                    p.span(),
                    format!(
                        "health check `path` = \"{}\" is not a request path",
                        p.get_ref()
                    ),
                    r#"write a path starting with `/`, as in path = "/healthz""#,
                );
                return None;
            }
            Some(p.get_ref().clone())
        });
        let interval = present(h.interval.as_ref(), |i| {
            self.bounded_duration(i, "interval", MIN_HEALTH_INTERVAL, MAX_HEALTH_INTERVAL)
        });
        let timeout = present(h.timeout.as_ref(), |t| {
            self.bounded_duration(t, "timeout", MIN_HEALTH_TIMEOUT, MAX_HEALTH_INTERVAL)
        });
        let rise = self.health_count(h.rise.as_ref(), "rise", 2);
        let fall = self.health_count(h.fall.as_ref(), "fall", 3);
        let expect_status = present(h.expect_status.as_ref(), |e| {
            if kind != Some(HealthKind::Http) {
                self.report.error(
                    e.span(),
                    "`expect_status` only applies to `http` health checks (a WebSocket check expects 101)",
                    r#"remove `expect_status`, or use kind = "http""#,
                );
                return None;
            }
            match u16::try_from(*e.get_ref()) {
                Ok(n) if (200..=599).contains(&n) => Some(n),
                _ => {
                    self.report.error(
                        e.span(),
                        format!("`expect_status` must be a final HTTP status, 200 to 599, found {}", e.get_ref()),
                        "write the status the health endpoint answers when the server is fine, as in expect_status = 204",
                    );
                    None
                }
            }
        });
        let (interval, timeout) = (interval?, timeout?);
        let interval = interval.unwrap_or(DEFAULT_HEALTH_INTERVAL);
        let timeout = match (timeout, &h.timeout) {
            (Some(t), Some(raw_timeout)) if t > interval => {
                self.report.error(
                    raw_timeout.span(),
                    format!(
                        "health check `timeout` ({}) is longer than its `interval` ({}): checks would overlap",
                        humantime::format_duration(t),
                        humantime::format_duration(interval),
                    ),
                    "make `timeout` at most `interval`",
                );
                return None;
            }
            (Some(t), _) => t,
            (None, _) => DEFAULT_HEALTH_TIMEOUT.min(interval),
        };
        Some(HealthCheck {
            kind: kind?,
            path: path?.unwrap_or_else(|| "/".to_owned()),
            interval,
            timeout,
            rise: rise?,
            fall: fall?,
            expect_status: expect_status?.unwrap_or(200),
        })
    }

    /// `rise` or `fall`: 1 to [`MAX_HEALTH_COUNT`].
    fn health_count(&mut self, raw: Option<&Spanned<i64>>, key: &str, default: u32) -> Option<u32> {
        let Some(raw) = raw else { return Some(default) };
        match u32::try_from(*raw.get_ref()) {
            Ok(n) if (1..=MAX_HEALTH_COUNT).contains(&n) => Some(n),
            _ => {
                self.report.error(
                    raw.span(),
                    format!(
                        "health check `{key}` must be between 1 and {MAX_HEALTH_COUNT}, found {}",
                        raw.get_ref()
                    ),
                    format!(
                        "`{key}` counts consecutive checks; remove it for the default, {default}"
                    ),
                );
                None
            }
        }
    }

    fn passive(&mut self, raw: &Spanned<RawPassive>) -> Option<Passive> {
        let p = raw.get_ref();
        let failures = match &p.failures {
            None => Some(DEFAULT_PASSIVE_FAILURES),
            Some(f) => match u32::try_from(*f.get_ref()) {
                Ok(n) if (1..=MAX_HEALTH_COUNT).contains(&n) => Some(n),
                _ => {
                    self.report.error(
                        f.span(),
                        format!("`failures` must be between 1 and {MAX_HEALTH_COUNT}, found {}", f.get_ref()),
                        "the consecutive connect failures that take a server out; remove it for the default, 3",
                    );
                    None
                }
            },
        };
        let eject = present(p.eject.as_ref(), |e| {
            self.bounded_duration(e, "eject", MIN_EJECT, MAX_EJECT)
        });
        Some(Passive {
            failures: failures?,
            eject: eject?.unwrap_or(DEFAULT_EJECT),
        })
    }

    /// A duration within `min..=max`.
    fn bounded_duration(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let d = self.duration(raw, key)?;
        if d < min || d > max {
            self.report.error(
                raw.span(),
                format!(
                    "`{key}` must be between {} and {}, found {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    raw.get_ref()
                ),
                format!(
                    "write a duration in that range, as in {key} = \"{}\"",
                    humantime::format_duration(min.max(Duration::from_secs(1)).min(max))
                ),
            );
            return None;
        }
        Some(d)
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
                    r#"write HOST:PORT, as in "127.0.0.1:9001", "[::1]:9001" or "chat.internal:9001", or a Unix socket: "unix:/run/chat.sock", "unix:@chat""#,
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
        let mut seen: HashMap<&str, &Spanned<String>> = HashMap::new();
        for name in names.flatten() {
            if let Some(first) = seen.get(name.get_ref().as_str()) {
                let first = self.report.position(&first.span());
                self.report.error(
                    name.span(),
                    format!("{what} name `{}` is used twice; names of {among} must be unique, as metrics and logs tell them apart by name", name.get_ref()),
                    format!("rename this one or the one at {first}"),
                );
            } else {
                seen.insert(name.get_ref(), name);
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

/// An RFC 9110 token (cookie names are tokens, RFC 6265 §4.1.1).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// How messages name an object: "listener `edge`" (a missing name is reported on its own).
fn label(what: &str, name: &Option<Spanned<String>>) -> String {
    match name {
        Some(name) => format!("{what} `{}`", name.get_ref()),
        None => format!("the unnamed {what}"),
    }
}

/// The id of `name` in a passwd(5) or group(5) file (`name:x:ID:...`).
fn lookup_id(file: &str, name: &str) -> std::io::Result<Option<u32>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1).and_then(|id| id.parse().ok()))
            .flatten()
    }))
}

//! One test per rule, each asserting on the printed message, position included.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// A folder holding `certs/dev/server.{crt,key}`, a matching pair, and
/// `certs/other/server.key`, a key that matches nothing.
fn cert_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let other = rcgen::KeyPair::generate().expect("key");
    let write = |path: &str, pem: String| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, pem).expect("write");
    };
    write("certs/dev/server.crt", pair.cert.pem());
    write("certs/dev/server.key", pair.signing_key.serialize_pem());
    write("certs/other/server.key", other.serialize_pem());
    // A CA for client certificates, a file with no certificate in it, and one whose
    // certificate block is not a certificate.
    write("certs/clients-ca.crt", pair.cert.pem());
    write("certs/empty.crt", "nothing here\n".to_owned());
    write(
        "certs/bad-ca.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
    );
    dir
}

/// Checks `text` as `sockgate.toml` in a folder with certificates. The text's first line
/// break is dropped so that line 1 is the line after `r#"`.
fn check(text: &str) -> (Result<Config, ConfigErrors>, TempDir) {
    let dir = cert_dir();
    let text = text.strip_prefix('\n').unwrap_or(text);
    (from_str(text, Path::new("sockgate.toml"), dir.path()), dir)
}

fn valid(text: &str) -> Config {
    match check(text).0 {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// The printed errors.
fn errors(text: &str) -> String {
    match check(text).0 {
        Ok(_) => panic!("expected errors, the config was valid"),
        Err(errors) => errors.to_string(),
    }
}

#[track_caller]
fn assert_reports(printed: &str, expected: &str) {
    assert!(
        printed.contains(expected),
        "expected to find:\n{expected}\n\nin:\n{printed}"
    );
}

/// A valid listener and backend to add a rule's subject to.
const BACKEND: &str = r#"
[[backend]]
name = "chat"
servers = ["127.0.0.1:9001"]
"#;

fn with_backend(text: &str) -> String {
    format!("{text}{BACKEND}")
}

#[test]
fn spec_example_is_valid() {
    let config = valid(
        r#"
[admin]                          # optional; absent = no admin listener
listen = "127.0.0.1:9901"        # GET /metrics /healthz /readyz /connections

[defaults]                       # optional; every value here has a sane default
connect_timeout = "3s"           # backend TCP (+TLS) connect
detect_timeout  = "2s"           # wait for the client's first bytes; on expiry: raw TCP
handshake_timeout = "10s"        # TLS handshake and HTTP request head
idle_timeout    = "1h"           # no bytes either way
drain_timeout   = "30s"
drain_spread    = "10s"          # WebSocket closes spread over this window (jittered)
close_timeout   = "5s"           # WebSocket closing handshake

[[listener]]
name   = "edge"
listen = "0.0.0.0:8443"          # many listeners allowed; IPv6 "[::]:8443" too
tls    = { cert = "certs/dev/server.crt", key = "certs/dev/server.key" }   # absent = plaintext
# more certificates chosen by SNI:
# [[listener.tls.sni]]
# names = ["chat.example.com", "*.games.example.com"]
# cert = "..."; key = "..."

  [[listener.route]]             # first match wins, in file order
  name        = "chat"
  protocol    = "websocket"      # "websocket" | "http" | "tcp"; absent = any
  host        = "chat.example.com"   # optional, Host header (HTTP and WebSocket)
  sni         = "chat.example.com"   # optional, TLS server name (any protocol)
  path_prefix = "/ws"            # optional (HTTP and WebSocket)
  backend     = "chat"
  # WebSocket-only, all optional:
  # max_message_size = "1MiB"    # over it: Close 1009
  # max_messages_per_second = 100  # over it: Close 1008
  # ping_interval = "30s"; pong_timeout = "10s"   # gateway-originated keepalive

  [[listener.route]]
  name     = "game"
  protocol = "tcp"               # anything that is not HTTP, including server-speaks-first protocols
  backend  = "game"

[[backend]]
name    = "chat"
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[backend]]
name    = "game"
servers = ["127.0.0.1:7000"]
"#,
    );
    assert_eq!(config.source, None);
    assert_eq!(
        config.admin.map(|a| a.listen),
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
    let d = &config.defaults;
    assert_eq!(d.connect_timeout, Duration::from_secs(3));
    assert_eq!(d.detect_timeout, Duration::from_secs(2));
    assert_eq!(d.handshake_timeout, Duration::from_secs(10));
    assert_eq!(d.idle_timeout, Duration::from_secs(3600));
    assert_eq!(d.drain_timeout, Duration::from_secs(30));
    assert_eq!(d.drain_spread, Duration::from_secs(10));
    assert_eq!(d.close_timeout, Duration::from_secs(5));
    assert_eq!(d.max_connections, None);
    assert_eq!(d.access_log_interval, None);

    let [edge] = config.listeners.as_slice() else {
        panic!("one listener expected");
    };
    assert_eq!(edge.name, "edge");
    assert_eq!(edge.listen.tcp(), "0.0.0.0:8443".parse().ok());
    let tls = edge.tls.as_ref().expect("tls");
    assert!(tls.default.cert.ends_with("certs/dev/server.crt"));
    assert!(tls.sni.is_empty());
    let [chat, game] = edge.routes.as_slice() else {
        panic!("two routes expected");
    };
    assert_eq!(chat.name, "chat");
    assert_eq!(chat.protocol, Some(Protocol::WebSocket));
    assert_eq!(chat.host.as_deref(), Some("chat.example.com"));
    assert_eq!(chat.sni.as_deref(), Some("chat.example.com"));
    assert_eq!(chat.path_prefix.as_deref(), Some("/ws"));
    assert_eq!(chat.backend, "chat");
    assert_eq!(chat.websocket.max_message_size, None);
    assert_eq!(game.protocol, Some(Protocol::Tcp));
    assert_eq!(game.backend, "game");

    let servers: Vec<_> = config
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.servers.len()))
        .collect();
    assert_eq!(servers, [("chat", 2), ("game", 1)]);
    assert_eq!(config.backends[0].servers[1].address, "127.0.0.1:9002");
    assert_eq!(config.backends[0].servers[1].weight, 1);
}

#[test]
fn absent_sections_take_the_defaults() {
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "plain"
listen = "127.0.0.1:8080"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert!(config.admin.is_none());
    let d = Defaults::default();
    assert_eq!(config.defaults.idle_timeout, d.idle_timeout);
    assert_eq!(config.defaults.drain_spread, d.drain_spread);
    assert!(config.listeners[0].tls.is_none());
    assert_eq!(config.listeners[0].routes[0].protocol, None);
}

#[test]
fn syntax_error_is_one_error_at_its_position() {
    let printed = errors(
        r#"
[[listener]]
name = = "edge"
listen = "0.0.0.0:8443"
"#,
    );
    assert_eq!(
        printed,
        "sockgate.toml:2:8: invalid TOML: extra `=`, expected nothing\n  hint: each line is `key = value` with strings in double quotes (\"edge\", \"30s\"), tables as [name] and repeated ones as [[name]]; see config/edge.toml\n"
    );
}

#[test]
fn wrong_type_is_reported_at_the_value() {
    let printed = errors(
        r#"
[[listener]]
name = 5
"#,
    );
    assert_eq!(
        printed,
        "sockgate.toml:2:8: `listener.name`: invalid type: integer `5`, expected a string\n  hint: write it in double quotes: names, addresses, durations (\"30s\") and sizes (\"1MiB\") are strings\n"
    );
    let printed = errors("[defaults]\nmax_connections = \"many\"\n");
    assert_reports(
        &printed,
        "sockgate.toml:2:19: `defaults.max_connections`: invalid type: string \"many\", expected i64\n  hint: write a whole number without quotes",
    );
}

#[test]
fn single_brackets_for_an_array_of_tables_get_a_hint() {
    let printed = errors("[backend]\nname = \"chat\"\n");
    assert_eq!(
        printed,
        "sockgate.toml:1:1: `backend`: invalid type: map, expected a sequence\n  hint: write [[backend]], with double brackets, once per entry\n"
    );
}

#[test]
fn unknown_keys_are_all_reported_at_every_level() {
    let printed = errors(
        r#"
verbose = true

[defaults]
idle = "1h"

[[listener]]
name = "edge"
listn = "0.0.0.0:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", alpn = ["h2"] }

  [[listener.route]]
  name = "chat"
  backnd = "chat"

[[backend]]
name = "chat"
servers = [{ address = "127.0.0.1:9001", wieght = 2 }]
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:1:1: unknown key `verbose` in the top level\n  hint: valid keys: admin, defaults, listener, backend",
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:1: unknown key `idle` in [defaults]\n  hint: valid keys: connect_timeout, detect_timeout, handshake_timeout, idle_timeout, drain_timeout, drain_spread, close_timeout, request_timeout, max_connections, access_log_interval\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:8:1: unknown key `listn` in [[listener]]\n  hint: valid keys: name, listen, unix, protocol, tls, trusted_proxies, proxy_protocol, max_connections, max_connections_per_ip, max_new_connections_per_ip, client_cert_header, route; did you mean `listen`?",
    );
    assert_reports(
        &printed,
        "sockgate.toml:9:70: unknown key `alpn` in [listener.tls]\n  hint: valid keys: cert, key, client_auth, sni\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:13:3: unknown key `backnd` in [[listener.route]]\n  hint: valid keys: name, protocol, host, sni, path_prefix, backend, request_timeout, max_message_size, max_messages_per_second, max_frames_per_second, ping_interval, pong_timeout, client_cert, session_idle_timeout, max_sessions; did you mean `backend`?",
    );
    assert_reports(
        &printed,
        "sockgate.toml:17:42: unknown key `wieght` in a `servers` entry\n  hint: valid keys: address, weight; did you mean `weight`?",
    );
    // Removing the typos leaves the keys they stood for missing; that is said too.
    assert_reports(
        &printed,
        "sockgate.toml:6:1: [[listener]] has no `listen`, which it needs\n  hint: add listen = \"0.0.0.0:8443\"",
    );
}

#[test]
fn a_tls_passthrough_route_on_a_plaintext_listener_is_valid_and_keeps_its_sni() {
    let config = valid(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [
  { name = "db", protocol = "tls_passthrough", sni = "DB.example.com", backend = "b" },
  { name = "rest", backend = "b" },
]
[[backend]]
name = "b"
servers = ["127.0.0.1:9"]
"#,
    );
    let route = &config.listeners[0].routes[0];
    assert_eq!(route.protocol, Some(Protocol::TlsPassthrough));
    assert_eq!(route.sni.as_deref(), Some("db.example.com"));
}

#[test]
fn a_tls_passthrough_route_needs_sni_and_takes_no_host_path_or_request_keys() {
    let printed = errors(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
  [[listener.route]]
  name = "db"
  protocol = "tls_passthrough"
  host = "db.example.com"
  path_prefix = "/x"
  request_timeout = "5s"
  max_message_size = "1MiB"
  backend = "b"
[[backend]]
name = "b"
servers = ["127.0.0.1:9"]
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:3: route `db` has protocol = \"tls_passthrough\" but no `sni`: passthrough routes are picked by the server name in the client's ClientHello\n  hint: add the server name this route is for, as in sni = \"db.example.com\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:7:10: `host` on route `db` never matches: TLS passthrough connections (relayed without decrypting) carry no Host header\n  hint: remove `host`",
    );
    assert_reports(
        &printed,
        "sockgate.toml:8:17: `path_prefix` on route `db` never matches: TLS passthrough connections (relayed without decrypting) carry no request path",
    );
    assert_reports(
        &printed,
        "sockgate.toml:9:21: `request_timeout` on route `db` has no effect: TLS passthrough connections (relayed without decrypting) carry no requests",
    );
    assert_reports(
        &printed,
        "`max_message_size` only applies to WebSocket connections, but route `db` has protocol = \"tls_passthrough\"",
    );
}

#[test]
fn defaults_max_connections_is_supported() {
    let config = valid(&with_backend(
        r#"
[defaults]
max_connections = 100000

[[listener]]
name = "plain"
listen = "127.0.0.1:8080"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_eq!(config.defaults.max_connections, Some(100_000));

    let printed = errors("[defaults]\nmax_connections = 0\n");
    assert_reports(
        &printed,
        "sockgate.toml:2:19: `max_connections` must be at least 1, found 0: no connection would be accepted\n  hint: remove the key to derive the limit from the open-files limit",
    );
}

#[test]
fn server_entries_are_addresses_or_weighted_tables() {
    let config = valid(
        r#"
[[backend]]
name = "chat"
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }, { address = "chat.internal:9003" }]
"#,
    );
    let servers: Vec<_> = config.backends[0]
        .servers
        .iter()
        .map(|s| (s.address.as_str(), s.weight))
        .collect();
    assert_eq!(
        servers,
        [
            ("127.0.0.1:9001", 1),
            ("127.0.0.1:9002", 3),
            ("chat.internal:9003", 1)
        ]
    );
}

#[test]
fn server_weight_must_be_at_least_one() {
    let printed = errors(
        r#"
[[backend]]
name = "chat"
servers = [{ address = "127.0.0.1:9002", weight = 0 }, { weight = 2 }]
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:51: `weight` must be between 1 and 1000, found 0\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:56: a `servers` entry has no `address`, which it needs\n  hint: add address = \"127.0.0.1:9001\"",
    );
}

#[test]
fn route_backend_must_exist() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "plain"
listen = "127.0.0.1:8080"
  [[listener.route]]
  name = "chat"
  backend = "chatt"
  [[listener.route]]
  name = "other"
  backend = "nothing-like-it"

[[backend]]
name = "game"
servers = ["127.0.0.1:7000"]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:6:13: route `chat` names backend `chatt`, which is not defined, so its connections would have nowhere to go\n  hint: defined backends: game, chat; did you mean `chat`?",
    );
    assert_reports(
        &printed,
        "sockgate.toml:9:13: route `other` names backend `nothing-like-it`, which is not defined, so its connections would have nowhere to go\n  hint: defined backends: game, chat",
    );
}

#[test]
fn listener_names_are_unique() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8080"
route = [{ name = "all", backend = "chat" }]
[[listener]]
name = "edge"
listen = "127.0.0.1:8081"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:6:8: listener name `edge` is used twice; names of listeners must be unique, as metrics and logs tell them apart by name\n  hint: rename this one or the one at 2:8\n"
    );
}

#[test]
fn route_names_are_unique_within_a_listener() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
route = [{ name = "all", backend = "chat" }, { name = "all", backend = "chat" }]
[[listener]]
name = "b"
listen = "127.0.0.1:8081"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:4:55: route name `all` is used twice; names of routes of one listener must be unique, as metrics and logs tell them apart by name\n  hint: rename this one or the one at 4:19\n"
    );
}

#[test]
fn backend_names_are_unique() {
    let printed = errors(&with_backend(
        r#"
[[backend]]
name = "chat"
servers = ["127.0.0.1:9009"]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:6:8: backend name `chat` is used twice; names of backends must be unique, as metrics and logs tell them apart by name\n  hint: rename this one or the one at 2:8\n"
    );
}

/// `[admin]` with `token_file = "admin.token"`, checked in a folder where that file holds
/// `token` (or is absent).
fn admin_token(token: Option<&[u8]>) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().expect("temp dir");
    if let Some(token) = token {
        std::fs::write(dir.path().join("admin.token"), token).expect("write");
    }
    let text = "[admin]\nlisten = \"127.0.0.1:9901\"\ntoken_file = \"admin.token\"\n";
    from_str(text, Path::new("sockgate.toml"), dir.path())
}

#[test]
fn admin_token_file_is_read_and_its_line_break_trimmed() {
    let config = admin_token(Some(b"0123456789abcdef-token\r\n")).expect("valid");
    let token = config.admin.and_then(|a| a.token).expect("a token");
    assert!(token.matches(b"0123456789abcdef-token"));
    assert!(!token.matches(b"0123456789abcdef-tokem"));
    assert!(!token.matches(b"0123456789abcdef-token\n"));
    assert!(!token.matches(b""));
    // Never printed whole, even in debug output.
    assert_eq!(format!("{token:?}"), "AdminToken(22 bytes)");
    let config = valid("[admin]\nlisten = \"127.0.0.1:9901\"\n");
    assert!(config.admin.expect("admin").token.is_none());
}

#[test]
fn admin_token_file_must_hold_a_usable_token() {
    let hint = "\n  hint: write a random token into it, e.g. `head -c 32 /dev/urandom | base64 > admin.token` (relative paths start at the config file's folder), and make it readable by the gateway's user only\n";
    let cases: [(Option<&[u8]>, &str); 5] = [
        (None, "cannot read"),
        (Some(b"\n"), "is empty"),
        (
            Some(b"fifteen-bytes!!"),
            "holds a token of 15 bytes, shorter than the 16 a guess-resistant token needs",
        ),
        (
            Some(b"sixteen bytes with\ttab"),
            "cannot be sent in an Authorization header (0x20 at byte 8)",
        ),
        (Some(&[b'x'; 2000]), "holds more than 1024 bytes"),
    ];
    for (token, says) in cases {
        let printed = match admin_token(token) {
            Ok(_) => panic!("{says}: expected an error"),
            Err(errors) => errors.to_string(),
        };
        assert!(
            printed.starts_with("sockgate.toml:3:14: `token_file`: "),
            "{printed}"
        );
        assert!(printed.contains(says), "{says}: {printed}");
        assert!(
            printed.contains("; the admin endpoint would have no usable token"),
            "{printed}"
        );
        assert!(printed.ends_with(hint), "{printed}");
        assert_eq!(printed.lines().count(), 2, "{printed}");
    }
}

#[test]
fn listen_addresses_are_unique_admin_included() {
    let printed = errors(&with_backend(
        r#"
[admin]
listen = "127.0.0.1:9901"
[[listener]]
name = "a"
listen = "127.0.0.1:9901"
route = [{ name = "all", backend = "chat" }]
[[listener]]
name = "b"
listen = "[::1]:8443"
route = [{ name = "all", backend = "chat" }]
[[listener]]
name = "c"
listen = "[::1]:8443"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:5:10: listener `a` listens on 127.0.0.1:9901, which the admin listener already uses: the second bind would fail\n  hint: give one of them another address (the first is at 2:10)",
    );
    assert_reports(
        &printed,
        "sockgate.toml:13:10: listener `c` listens on [::1]:8443, which listener `b` already uses: the second bind would fail\n",
    );
}

#[test]
fn listen_port_zero_may_repeat() {
    let config = valid(&with_backend(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "a"
listen = "127.0.0.1:0"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_eq!(config.listeners[0].listen.tcp().expect("tcp").port(), 0);
}

#[test]
fn listen_must_be_an_ip_and_port() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "localhost:8443"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:3:10: `listen` = \"localhost:8443\" is not an IP address and port, so listener `a` cannot be bound\n  hint: write IP:PORT, IPv6 in brackets: \"0.0.0.0:8443\", \"127.0.0.1:8443\", \"[::]:8443\"; host names are not resolved\n"
    );
}

#[test]
fn ipv6_listener() {
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "v6"
listen = "[::]:8443"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    let listen = config.listeners[0].listen.tcp().expect("tcp");
    assert!(listen.is_ipv6() && listen.ip().is_unspecified() && listen.port() == 8443);
}

#[test]
fn server_address_must_be_host_and_port() {
    let printed = errors(
        r#"
[[backend]]
name = "chat"
servers = ["127.0.0.1", "::1:9001", "[::1]:9001", "chat.internal:70000", "chat_1.internal:9001", "bad host:1"]
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:12: server address \"127.0.0.1\" cannot be connected to: missing `:PORT`\n  hint: write HOST:PORT, as in \"127.0.0.1:9001\", \"[::1]:9001\" or \"chat.internal:9001\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:25: server address \"::1:9001\" cannot be connected to: IPv6 addresses must be in brackets, as in \"[::1]:9001\"\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:51: server address \"chat.internal:70000\" cannot be connected to: `70000` is not a port number (1-65535)\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:98: server address \"bad host:1\" cannot be connected to: `bad host` is not a valid host name or IP address\n",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 4, "{printed}");
}

#[test]
fn backend_needs_a_server() {
    let printed =
        errors("[[backend]]\nname = \"chat\"\nservers = []\n[[backend]]\nname = \"game\"\n");
    assert_reports(
        &printed,
        "sockgate.toml:3:11: backend `chat` has no servers, so every connection routed to it would fail\n  hint: list at least one, as in servers = [\"127.0.0.1:9001\"]",
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:1: [[backend]] has no `servers`, which it needs\n  hint: add servers = [\"127.0.0.1:9001\"]",
    );
}

#[test]
fn listener_needs_a_route() {
    let printed = errors("[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:8080\"\n");
    assert_eq!(
        printed,
        "sockgate.toml:2:8: listener `edge` has no routes, so every connection to it would be refused\n  hint: add a [[listener.route]] with a `backend` after this listener\n"
    );
}

#[test]
fn missing_required_keys_are_reported_at_their_table() {
    let printed = errors("[admin]\n[[listener]]\nroute = [{ protocol = \"tcp\" }]\n");
    assert_reports(
        &printed,
        "sockgate.toml:1:1: [admin] has no `listen`, which it needs\n  hint: add listen = \"127.0.0.1:9901\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:2:1: [[listener]] has no `name`, which it needs\n  hint: add name = \"edge\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:2:1: [[listener]] has no `listen`, which it needs\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:10: [[listener.route]] has no `name`, which it needs\n  hint: add name = \"chat\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:10: [[listener.route]] has no `backend`, which it needs\n",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 5, "{printed}");
}

#[test]
fn names_must_not_be_empty() {
    let printed = errors("[[backend]]\nname = \"\"\nservers = [\"127.0.0.1:9001\"]\n");
    assert_eq!(
        printed,
        "sockgate.toml:2:8: `name` is empty; names label metrics, logs and the admin API\n  hint: give it a name, as in name = \"chat\"\n"
    );
}

#[test]
fn protocol_must_be_known() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
route = [{ name = "all", protocol = "quic", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:4:37: `protocol` = \"quic\" is not a protocol this route can match\n  hint: use \"websocket\", \"http\", \"tcp\", \"tls_passthrough\" or \"udp\", or leave `protocol` out to match any but passthrough TLS\n"
    );
}

#[test]
fn tcp_route_rejects_host_and_path_prefix() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
  [[listener.route]]
  name = "game"
  protocol = "tcp"
  host = "game.example.com"
  path_prefix = "/game"
  backend = "chat"
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:7:10: `host` on route `game` never matches: TCP connections carry no Host header\n  hint: remove `host` (use `sni` to pick TLS connections by server name), or change `protocol`",
    );
    assert_reports(
        &printed,
        "sockgate.toml:8:17: `path_prefix` on route `game` never matches: TCP connections carry no request path\n  hint: remove `path_prefix`, or change `protocol`",
    );
}

#[test]
fn path_prefix_must_start_with_a_slash() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
route = [{ name = "ws", path_prefix = "ws", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:4:39: `path_prefix` = \"ws\" never matches: request paths start with `/`\n  hint: write path_prefix = \"/ws\"\n"
    );
}

#[test]
fn sni_on_a_plaintext_listener_never_matches() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "plain"
listen = "127.0.0.1:8080"
route = [{ name = "chat", sni = "chat.example.com", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:4:33: `sni` on route `chat` never matches: listener `plain` is plaintext, so clients send no server name\n  hint: remove `sni`, or give the listener tls = { cert = \"...\", key = \"...\" }\n"
    );
}

#[test]
fn host_and_sni_must_be_names() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key" }
route = [{ name = "chat", host = "chat.example.com:8443", sni = "*.example.com", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:5:34: `host` = \"chat.example.com:8443\" is not a host name, so it never matches a Host header\n  hint: write the name alone, without scheme, port or path, as in host = \"chat.example.com\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:5:65: `*.example.com` is not a valid DNS name, so `sni` on route `chat` never matches\n",
    );
}

#[test]
fn websocket_keys_are_rejected_on_http_and_tcp_routes() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
  [[listener.route]]
  name = "api"
  protocol = "http"
  max_message_size = "1MiB"
  max_messages_per_second = 100
  backend = "chat"
  [[listener.route]]
  name = "game"
  protocol = "tcp"
  ping_interval = "30s"
  pong_timeout = "10s"
  max_frames_per_second = 1000
  backend = "chat"
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:7:22: `max_message_size` only applies to WebSocket connections, but route `api` has protocol = \"http\"\n  hint: remove `max_message_size`, or set protocol = \"websocket\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:8:29: `max_messages_per_second` only applies to WebSocket connections, but route `api` has protocol = \"http\"\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:13:19: `ping_interval` only applies to WebSocket connections, but route `game` has protocol = \"tcp\"\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:14:18: `pong_timeout` only applies to WebSocket connections, but route `game` has protocol = \"tcp\"\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:15:27: `max_frames_per_second` only applies to WebSocket connections, but route `game` has protocol = \"tcp\"\n  hint: remove `max_frames_per_second`, or set protocol = \"websocket\"",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 5, "{printed}");
}

#[test]
fn websocket_limits_are_read() {
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  max_message_size = "64KiB"
  max_messages_per_second = 100
  max_frames_per_second = 1000
  ping_interval = "30s"
  backend = "chat"
  [[listener.route]]
  name = "any"
  max_message_size = 1000
  ping_interval = "1m"
  pong_timeout = "5s"
  backend = "chat"
"#,
    ));
    let [chat, any] = config.listeners[0].routes.as_slice() else {
        panic!("two routes expected");
    };
    assert_eq!(chat.websocket.max_message_size, Some(64 * 1024));
    assert_eq!(chat.websocket.max_messages_per_second, Some(100));
    assert_eq!(chat.websocket.max_frames_per_second, Some(1000));
    assert_eq!(any.websocket.max_frames_per_second, None);
    assert_eq!(chat.websocket.ping_interval, Some(Duration::from_secs(30)));
    // `pong_timeout` defaults once pings are on.
    assert_eq!(chat.websocket.pong_timeout, Some(Duration::from_secs(10)));
    assert_eq!(any.websocket.max_message_size, Some(1000));
    assert_eq!(any.websocket.pong_timeout, Some(Duration::from_secs(5)));
}

#[test]
fn websocket_limits_must_be_positive() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
route = [{ name = "chat", max_message_size = "0KiB", max_messages_per_second = 0, backend = "chat" }, { name = "b", max_message_size = "1 mile", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:46: `max_message_size` must be at least 1 byte: every message would be refused\n  hint: remove the key for no limit",
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:80: `max_messages_per_second` must be between 1 and 4294967295, found 0\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:136: `max_message_size` is not a size: unknown unit `mile` (use B, KiB, MiB, GiB, or KB, MB, GB)\n  hint: write sizes like \"64KiB\", \"1MiB\" or a number of bytes",
    );
}

#[test]
fn max_frames_per_second_must_be_between_1_and_u32_max() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
  [[listener.route]]
  name = "zero"
  max_frames_per_second = 0
  backend = "chat"
  [[listener.route]]
  name = "negative"
  max_frames_per_second = -5
  backend = "chat"
  [[listener.route]]
  name = "huge"
  protocol = "websocket"
  max_frames_per_second = 4294967296
  backend = "chat"
  [[listener.route]]
  name = "largest"
  protocol = "websocket"
  max_frames_per_second = 4294967295
  backend = "chat"
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:6:27: `max_frames_per_second` must be between 1 and 4294967295, found 0\n  hint: remove the key for no limit",
    );
    assert_reports(
        &printed,
        "sockgate.toml:10:27: `max_frames_per_second` must be between 1 and 4294967295, found -5\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:15:27: `max_frames_per_second` must be between 1 and 4294967295, found 4294967296\n",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 3, "{printed}");
}

#[test]
fn pong_timeout_needs_ping_interval() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
route = [{ name = "chat", pong_timeout = "10s", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:4:42: `pong_timeout` has no effect without `ping_interval`: the gateway sends no pings on route `chat`\n  hint: add ping_interval = \"30s\", or remove `pong_timeout`\n"
    );
}

#[test]
fn durations_must_parse_and_be_positive() {
    let printed = errors(
        r#"
[defaults]
connect_timeout = "0s"
detect_timeout = "2"
idle_timeout = "1d"
handshake_timeout = "-5s"
"#,
    );
    assert_eq!(
        printed,
        r#"sockgate.toml:2:19: `connect_timeout` must be longer than zero
  hint: write durations like "250ms", "30s", "5m" or "1h30m"
sockgate.toml:3:18: `detect_timeout` = "2" is not a duration: `2` has no unit (ms, s, m or h)
  hint: write durations like "250ms", "30s", "5m" or "1h30m"
sockgate.toml:4:16: `idle_timeout` = "1d" is not a duration: unknown unit `d` (use ms, s, m or h)
  hint: write durations like "250ms", "30s", "5m" or "1h30m"
sockgate.toml:5:21: `handshake_timeout` = "-5s" is not a duration: durations cannot be negative
  hint: write durations like "250ms", "30s", "5m" or "1h30m"
"#
    );
}

#[test]
fn drain_spread_is_at_most_drain_timeout() {
    let printed = errors("[defaults]\ndrain_spread = \"1m\"\n");
    assert_eq!(
        printed,
        "sockgate.toml:2:16: `drain_spread` (1m) is longer than `drain_timeout` (30s): WebSocket closes would still be going out when the drain ends\n  hint: make `drain_spread` at most `drain_timeout`\n"
    );
    // With only `drain_timeout` written, the default spread is measured against it there.
    let printed = errors("[defaults]\ndrain_timeout = \"5s\"\n");
    assert_reports(
        &printed,
        "sockgate.toml:2:17: `drain_spread` (10s) is longer than `drain_timeout` (5s)",
    );
}

#[test]
fn close_timeout_is_at_most_drain_timeout() {
    let printed = errors("[defaults]\ndrain_timeout = \"20s\"\nclose_timeout = \"25s\"\n");
    assert_eq!(
        printed,
        "sockgate.toml:3:17: `close_timeout` (25s) is longer than `drain_timeout` (20s): closing handshakes would be cut off when the drain ends\n  hint: make `close_timeout` at most `drain_timeout`\n"
    );
}

#[test]
fn cert_must_be_readable() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/missing.crt", key = "certs/dev/server.key" }
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert!(
        printed.starts_with("sockgate.toml:4:16: cannot read certificate file /"),
        "{printed}"
    );
    assert_reports(
        &printed,
        "certs/missing.crt: I/O error: No such file or directory (os error 2); listener `edge` cannot serve TLS\n  hint: give a PEM certificate chain (relative paths start at the config file's folder), or create a development pair with `sockgate cert dev --out certs/dev`",
    );
}

#[test]
fn key_must_be_readable() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.crt" }
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert!(
        printed.starts_with("sockgate.toml:4:46: cannot read private key file /"),
        "{printed}"
    );
    assert_reports(
        &printed,
        "  hint: give the PEM private key of the certificate",
    );
}

#[test]
fn mismatched_key_and_cert() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/other/server.key" }
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert!(
        printed.starts_with("sockgate.toml:4:16: private key /"),
        "{printed}"
    );
    assert_reports(
        &printed,
        "certs/other/server.key does not match certificate ",
    );
    assert_reports(
        &printed,
        "certs/dev/server.crt; listener `edge` cannot serve TLS\n  hint: use the key the certificate was issued for, or create a matching development pair with `sockgate cert dev --out certs/dev`",
    );
}

#[test]
fn relative_paths_resolve_from_the_config_folder() {
    let (config, dir) = check(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
route = [{ name = "all", backend = "chat" }]
  [listener.tls]
  cert = "certs/dev/server.crt"
  key = "certs/../certs/dev/server.key"
"#,
    ));
    let config = config.expect("valid");
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.default.cert, dir.path().join("certs/dev/server.crt"));
    assert_eq!(
        tls.default.key,
        dir.path().join("certs/../certs/dev/server.key")
    );
}

#[test]
fn load_reads_the_file_and_records_its_source() {
    let dir = cert_dir();
    let path = dir.path().join("sockgate.toml");
    let text = with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key" }
route = [{ name = "all", backend = "chat" }]
"#,
    );
    std::fs::write(&path, text).expect("write config");
    let config = load(&path).expect("valid");
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    let tls = config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.default.cert, dir.path().join("certs/dev/server.crt"));
}

#[test]
fn load_of_an_unreadable_file_is_one_error_at_1_1() {
    let path = PathBuf::from("/nonexistent/sockgate.toml");
    let errors = load(&path).expect_err("missing file");
    assert_eq!(
        errors.to_string(),
        "/nonexistent/sockgate.toml:1:1: cannot read the config file: No such file or directory (os error 2)\n"
    );
}

#[test]
fn sni_certificates_and_names() {
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
route = [{ name = "all", sni = "Chat.Example.COM", host = "Chat.Example.com", backend = "chat" }]
  [listener.tls]
  cert = "certs/dev/server.crt"
  key = "certs/dev/server.key"
  [[listener.tls.sni]]
  names = ["Chat.Example.com", "*.games.example.com"]
  cert = "certs/dev/server.crt"
  key = "certs/dev/server.key"
"#,
    ));
    let listener = &config.listeners[0];
    let sni = &listener.tls.as_ref().expect("tls").sni;
    assert_eq!(sni[0].names, ["chat.example.com", "*.games.example.com"]);
    assert_eq!(listener.routes[0].sni.as_deref(), Some("chat.example.com"));
    assert_eq!(listener.routes[0].host.as_deref(), Some("chat.example.com"));
}

#[test]
fn sni_names_must_be_valid_and_not_empty() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
route = [{ name = "all", backend = "chat" }]
  [listener.tls]
  cert = "certs/dev/server.crt"
  key = "certs/dev/server.key"
  [[listener.tls.sni]]
  names = []
  cert = "certs/dev/server.crt"
  key = "certs/dev/server.key"
  [[listener.tls.sni]]
  names = ["a.*.example.com", "bad name", "*.ok.example.com"]
  cert = "certs/dev/server.crt"
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:9:11: `names` is empty, so this certificate would never be chosen\n  hint: list the server names it is for, as in names = [\"chat.example.com\", \"*.games.example.com\"]",
    );
    assert_reports(
        &printed,
        "sockgate.toml:12:3: [[listener.tls.sni]] has no `key`, which it needs\n  hint: add key = \"certs/dev/server.key\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:13:12: `a.*.example.com`: `*` may only stand for the whole first label, as in \"*.example.com\", so clients can never ask for this certificate\n  hint: use exact names like \"chat.example.com\" or one-label wildcards like \"*.example.com\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:13:31: `bad name` is not a valid DNS name, so clients can never ask for this certificate\n",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 4, "{printed}");
}

#[test]
fn several_errors_are_reported_at_once_in_file_order() {
    let printed = errors(
        r#"
[defaults]
idle_timeout = "forever"

[[listener]]
name = "edge"
listen = "0.0.0.0:99999"
max_connections_per_ip = 0

  [[listener.route]]
  name = "chat"
  backend = "chatt"

[[backend]]
name = "chat"
servers = ["127.0.0.1"]
timeout = "1s"
"#,
    );
    let positions: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("sockgate.toml:"))
        .map(|l| l.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        positions,
        ["2:16", "6:10", "7:26", "11:13", "15:12", "16:1"],
        "{printed}"
    );
    assert_reports(
        &printed,
        "sockgate.toml:7:26: `max_connections_per_ip` must be at least 1, found 0: every connection would be refused\n  hint: remove the key for no limit",
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let printed =
        errors("# größe\n[defaults] # ünïcödé\nidle_timeout = \"0s\" # é\nx = 1 # \u{1F600}\n");
    assert_reports(
        &printed,
        "sockgate.toml:3:16: `idle_timeout` must be longer than zero",
    );
    let printed = errors("[defaults] \n\"clé\" = 1\n");
    assert_reports(
        &printed,
        "sockgate.toml:2:1: unknown key `clé` in [defaults]",
    );
    let printed = errors("[defaults]\nidle_timeout = \"é\" ; x\n");
    assert_reports(&printed, "sockgate.toml:2:20: invalid TOML:");
}

#[test]
fn parse_duration_forms() {
    let ok = [
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("1h30m", Duration::from_secs(5400)),
        ("1m500ms", Duration::from_millis(60_500)),
        ("0s", Duration::ZERO),
    ];
    for (text, want) in ok {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
    }
    let bad = [
        ("", "the duration is empty"),
        ("-1s", "durations cannot be negative"),
        ("10", "`10` has no unit (ms, s, m or h)"),
        ("10d", "unknown unit `d` (use ms, s, m or h)"),
        ("10 s", "unknown unit ` s` (use ms, s, m or h)"),
        (
            "1.5s",
            "fractions are not supported; use a smaller unit, as in \"1500ms\"",
        ),
        ("s", "expected a number at `s`"),
        ("99999999999999999999s", "the duration is too long"),
        ("9999999999999999999h", "the duration is too long"),
    ];
    for (text, want) in bad {
        assert_eq!(parse_duration(text), Err(want.to_owned()), "{text}");
    }
}

#[test]
fn parse_size_forms() {
    let ok = [
        ("512B", 512),
        ("1000", 1000),
        ("64KiB", 64 * 1024),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("2KB", 2000),
        ("2kB", 2000),
        ("3MB", 3_000_000),
        ("1GB", 1_000_000_000),
        ("1 MiB", 1 << 20),
    ];
    for (text, want) in ok {
        assert_eq!(parse_size(text), Ok(want), "{text}");
    }
    let bad = [
        ("", "the size is empty"),
        ("-1KiB", "sizes cannot be negative"),
        ("MiB", "expected a number, as in \"64KiB\""),
        (
            "1mib",
            "unknown unit `mib` (use B, KiB, MiB, GiB, or KB, MB, GB)",
        ),
        ("99999999999GiB", "the size is too large"),
    ];
    for (text, want) in bad {
        assert_eq!(parse_size(text), Err(want.to_owned()), "{text}");
    }
}

#[test]
fn weights_durations_and_max_connections_are_bounded() {
    // Each of these passed `check` once and then ran the gateway out of memory (a schedule
    // slot per unit of weight) or panicked at run time (`Instant + Duration`, a semaphore
    // over its permit limit).
    let printed = errors(
        r#"
[defaults]
idle_timeout = "5124095576030431h"
close_timeout = "8761h"
max_connections = 4000000000000

[[backend]]
name = "chat"
servers = [{ address = "127.0.0.1:9002", weight = 4000000000 }, { address = "127.0.0.1:9003", weight = 1001 }]
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:2:16: `idle_timeout` = \"5124095576030431h\" is longer than 8760h (365 days), the longest duration the gateway takes\n  hint: for no practical limit, write \"8760h\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:17: `close_timeout` = \"8761h\" is longer than 8760h (365 days), the longest duration the gateway takes\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:19: `max_connections` must be at most 10000000, found 4000000000000\n  hint: each connection needs two open files",
    );
    assert_reports(
        &printed,
        "sockgate.toml:8:51: `weight` must be between 1 and 1000, found 4000000000\n  hint: weights are relative",
    );
    assert_reports(
        &printed,
        "sockgate.toml:8:104: `weight` must be between 1 and 1000, found 1001\n",
    );

    let config = valid(
        r#"
[defaults]
idle_timeout = "8760h"
max_connections = 10000000

[[backend]]
name = "chat"
servers = [{ address = "127.0.0.1:9002", weight = 1000 }]

[[listener]]
name = "edge"
listen = "127.0.0.1:8080"
route = [{ name = "r", backend = "chat" }]
"#,
    );
    assert_eq!(
        config.defaults.idle_timeout,
        Duration::from_secs(8760 * 3600)
    );
    assert_eq!(config.defaults.max_connections, Some(10_000_000));
    assert_eq!(config.backends[0].servers[0].weight, 1000);
}

#[test]
fn trusted_proxies_are_address_ranges() {
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "::1/128", "[2001:db8::]/32"]
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    let ranges: Vec<String> = config.listeners[0]
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        ranges,
        ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "2001:db8::/32"]
    );
    let absent = valid(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8080"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert!(absent.listeners[0].trusted_proxies.is_empty());
}

#[test]
fn trusted_proxies_entries_must_parse() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8", "10.1.2.3/8", "proxy.internal", "::/129"]
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        r#"sockgate.toml:4:34: `trusted_proxies` entry "10.1.2.3/8" is not an address range: `10.1.2.3/8` has bits set past the first 8; the range it starts is 10.0.0.0/8
  hint: write IP addresses or CIDR ranges, as in ["10.0.0.0/8", "192.0.2.7", "::1/128"]
sockgate.toml:4:48: `trusted_proxies` entry "proxy.internal" is not an address range: `proxy.internal` is not an IP address
  hint: write IP addresses or CIDR ranges, as in ["10.0.0.0/8", "192.0.2.7", "::1/128"]
sockgate.toml:4:66: `trusted_proxies` entry "::/129" is not an address range: `/129` is not a prefix length (0-128)
  hint: write IP addresses or CIDR ranges, as in ["10.0.0.0/8", "192.0.2.7", "::1/128"]
"#
    );
}

#[test]
fn request_timeout_defaults_and_route_override() {
    let config = valid(&with_backend(
        r#"
[defaults]
request_timeout = "5s"

[[listener]]
name = "edge"
listen = "127.0.0.1:8080"

  [[listener.route]]
  name = "slow"
  path_prefix = "/reports"
  request_timeout = "2m"
  backend = "chat"

  [[listener.route]]
  name = "rest"
  backend = "chat"
"#,
    ));
    assert_eq!(config.defaults.request_timeout, Duration::from_secs(5));
    let routes = &config.listeners[0].routes;
    assert_eq!(routes[0].request_timeout, Some(Duration::from_secs(120)));
    assert_eq!(routes[1].request_timeout, None);
    assert_eq!(Defaults::default().request_timeout, Duration::from_secs(60));
}

#[test]
fn request_timeout_is_bounded() {
    let printed = errors(&with_backend(
        r#"
[defaults]
request_timeout = "0s"

[[listener]]
name = "edge"
listen = "127.0.0.1:8080"

  [[listener.route]]
  name = "forever"
  request_timeout = "8761h"
  backend = "chat"

  [[listener.route]]
  name = "raw"
  protocol = "tcp"
  request_timeout = "5s"
  backend = "chat"
"#,
    ));
    assert_eq!(
        printed,
        r#"sockgate.toml:2:19: `request_timeout` must be longer than zero
  hint: write durations like "250ms", "30s", "5m" or "1h30m"
sockgate.toml:10:21: `request_timeout` = "8761h" is longer than 8760h (365 days), the longest duration the gateway takes
  hint: for no practical limit, write "8760h"
sockgate.toml:16:21: `request_timeout` on route `raw` has no effect: TCP connections carry no requests
  hint: remove `request_timeout` (`idle_timeout` in [defaults] ends silent TCP connections), or change `protocol`
"#
    );
}

#[test]
fn ipv6_hosts_are_written_in_brackets() {
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "[::1]:8080"
route = [
  { name = "v6", host = "[0:0::1]", backend = "chat" },
  { name = "dot", host = "Chat.Example.com.", backend = "chat" },
]
"#,
    ));
    let routes = &config.listeners[0].routes;
    assert_eq!(routes[0].host.as_deref(), Some("[::1]"));
    assert_eq!(routes[1].host.as_deref(), Some("chat.example.com"));
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "[::1]:8080"
route = [{ name = "v6", host = "::1", backend = "chat" }]
"#,
    ));
    assert_eq!(
        printed,
        "sockgate.toml:4:32: `host` = \"::1\" is not a host name, so it never matches a Host header\n  hint: write IPv6 addresses in brackets, as Host headers carry them: host = \"[::1]\"\n"
    );
}

#[test]
fn proxy_protocol_and_limits_are_read() {
    let config = valid(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
proxy_protocol = true
trusted_proxies = ["10.0.0.0/8"]
max_connections = 50000
max_connections_per_ip = 200
max_new_connections_per_ip = "50/s"
route = [{ name = "r", backend = "b" }]

[[listener]]
name = "plain"
listen = "127.0.0.1:0"
max_new_connections_per_ip = " 600 / m "
route = [{ name = "r", backend = "b" }]

[[backend]]
name = "b"
servers = ["127.0.0.1:9001"]
send_proxy_protocol = "v2"
"#,
    );
    let edge = &config.listeners[0];
    assert!(edge.proxy_protocol);
    assert_eq!(edge.max_connections, Some(50000));
    assert_eq!(edge.max_connections_per_ip, Some(200));
    assert_eq!(
        edge.max_new_connections_per_ip,
        Some(Rate {
            count: 50,
            per: Duration::from_secs(1)
        })
    );
    let plain = &config.listeners[1];
    assert!(!plain.proxy_protocol);
    assert_eq!(
        (plain.max_connections, plain.max_connections_per_ip),
        (None, None)
    );
    assert_eq!(
        plain.max_new_connections_per_ip,
        Some(Rate {
            count: 600,
            per: Duration::from_secs(60)
        })
    );
    assert_eq!(
        config.backends[0].send_proxy_protocol,
        Some(ProxyVersion::V2)
    );
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let printed = errors(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
proxy_protocol = true
route = [{ name = "r", backend = "b" }]
[[backend]]
name = "b"
servers = ["127.0.0.1:9001"]
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:18: listener `edge` expects a PROXY header but trusts no one to send it, so every connection would be closed\n  hint: list the load balancers' addresses, as in trusted_proxies = [\"10.0.0.0/8\"]",
    );
}

#[test]
fn listener_limits_are_bounded() {
    let printed = errors(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
max_connections = 0
max_connections_per_ip = 10000001
max_new_connections_per_ip = "50/h"
route = [{ name = "r", backend = "b" }]
[[listener]]
name = "other"
listen = "127.0.0.1:0"
max_connections = -3
max_new_connections_per_ip = "0/s"
route = [{ name = "r", backend = "b" }]
[[backend]]
name = "b"
servers = ["127.0.0.1:9001"]
send_proxy_protocol = "v3"
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:19: `max_connections` must be at least 1, found 0: every connection would be refused\n  hint: remove the key for no limit",
    );
    assert_reports(
        &printed,
        "sockgate.toml:5:26: `max_connections_per_ip` must be at most 10000000, found 10000001\n  hint: remove the key for no limit",
    );
    assert_reports(
        &printed,
        "sockgate.toml:6:30: `max_new_connections_per_ip` = \"50/h\" is not a rate\n  hint: write a count per second or per minute, as in \"50/s\" or \"600/m\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:11:19: `max_connections` must be at least 1, found -3",
    );
    assert_reports(
        &printed,
        "sockgate.toml:12:30: `max_new_connections_per_ip` = \"0/s\" must allow 1 to 1000000 connections, found 0",
    );
    assert_reports(
        &printed,
        "sockgate.toml:17:23: `send_proxy_protocol` = \"v3\" is not a PROXY protocol version\n  hint: write \"v1\" (text) or \"v2\" (binary), whichever the servers expect",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 6, "{printed}");
}

#[test]
fn balance_health_and_passive_are_read_with_their_defaults() {
    let config = valid(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{ name = "r", backend = "chat" }, { name = "t", protocol = "tcp", backend = "game" }, { name = "i", protocol = "tcp", backend = "ip" }]

[[backend]]
name = "chat"
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
balance = "hash"
hash_on = "header:X-User"
health = { kind = "websocket", path = "/ws", interval = "2s", timeout = "1s", rise = 2, fall = 2 }
passive = { failures = 3, eject = "10s" }

[[backend]]
name = "game"
servers = ["127.0.0.1:7000"]
balance = "least_conn"
health = { kind = "http", interval = "500ms" }
passive = {}

[[backend]]
name = "ip"
servers = ["127.0.0.1:7000"]
balance = "hash"
hash_on = "client_ip"
"#,
    );
    let chat = &config.backends[0];
    assert_eq!(chat.balance, Balance::Hash(HashOn::Header("x-user".into())));
    let health = chat.health.as_ref().unwrap();
    assert_eq!(
        (health.kind, health.path.as_str(), health.rise, health.fall),
        (HealthKind::WebSocket, "/ws", 2, 2)
    );
    let game = &config.backends[1];
    assert_eq!(game.balance, Balance::LeastConn);
    let health = game.health.as_ref().unwrap();
    assert_eq!(
        (
            health.path.as_str(),
            health.timeout,
            health.rise,
            health.fall,
            health.expect_status
        ),
        ("/", Duration::from_millis(500), 2, 3, 200)
    );
    let passive = game.passive.as_ref().unwrap();
    assert_eq!(
        (passive.failures, passive.eject),
        (3, Duration::from_secs(10))
    );
}

#[test]
fn balance_rules_report_at_the_value() {
    let printed = errors(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{ name = "t", protocol = "tcp", backend = "a" }]

[[backend]]
name = "a"
servers = ["127.0.0.1:9001"]
balance = "hash"
hash_on = "cookie:sid"

[[backend]]
name = "b"
servers = ["127.0.0.1:9001"]
balance = "least_con"

[[backend]]
name = "c"
servers = ["127.0.0.1:9001"]
hash_on = "client_ip"

[[backend]]
name = "d"
servers = ["127.0.0.1:9001"]
balance = "hash"

[[backend]]
name = "e"
servers = ["127.0.0.1:9001"]
balance = "hash"
hash_on = "body:x"
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:4:52: route `t` is `tcp`, but backend `a` hashes on a request's header, cookie or query parameter, which a TCP connection does not have\n  hint: give the backend hash_on = \"client_ip\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:15:11: `balance` = \"least_con\" is not a way to pick servers\n  hint: use \"round_robin\" (the default), \"least_conn\" or \"hash\"; did you mean \"least_conn\"?",
    );
    assert_reports(
        &printed,
        "sockgate.toml:20:11: `hash_on` has no effect: backend `c` picks servers by round_robin\n  hint: add balance = \"hash\", or remove `hash_on`",
    );
    assert_reports(
        &printed,
        "sockgate.toml:25:11: `balance = \"hash\"` on backend `d` needs `hash_on`: there is nothing to hash",
    );
    assert_reports(
        &printed,
        "sockgate.toml:31:11: `hash_on` = \"body:x\" cannot be hashed: it names no key of a connection or request",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 5, "{printed}");
}

#[test]
fn health_and_passive_numbers_are_bounded() {
    let printed = errors(&with_backend(
        r#"
[[backend]]
name = "x"
servers = ["127.0.0.1:9001"]
health = { kind = "tcp", path = "/", interval = "10ms", rise = 0, fall = 101 }

[[backend]]
name = "y"
servers = ["127.0.0.1:9001"]
health = { kind = "ping", expect_status = 200 }
passive = { failures = 0, eject = "2h" }

[[backend]]
name = "z"
servers = ["127.0.0.1:9001"]
health = { kind = "http", path = "healthz", interval = "1s", timeout = "2s", expect_status = 99 }
"#,
    ));
    for expected in [
        "sockgate.toml:4:33: `path` has no effect on a `tcp` health check, which only connects",
        "sockgate.toml:4:49: `interval` must be between 100ms and 1h, found 10ms",
        "sockgate.toml:4:64: health check `rise` must be between 1 and 100, found 0",
        "sockgate.toml:4:74: health check `fall` must be between 1 and 100, found 101",
        "sockgate.toml:9:19: health check `kind` = \"ping\" is not a check the gateway can run",
        "sockgate.toml:9:43: `expect_status` only applies to `http` health checks",
        "sockgate.toml:10:24: `failures` must be between 1 and 100, found 0",
        "sockgate.toml:10:35: `eject` must be between 100ms and 1h, found 2h",
        "sockgate.toml:15:34: health check `path` = \"healthz\" is not a request path",
        "sockgate.toml:15:72: health check `timeout` (2s) is longer than its `interval` (1s): checks would overlap",
        "sockgate.toml:15:94: `expect_status` must be a final HTTP status, 200 to 599, found 99",
    ] {
        assert_reports(&printed, expected);
    }
    assert_eq!(printed.matches("sockgate.toml:").count(), 11, "{printed}");
}

#[test]
fn unknown_keys_in_health_and_passive_are_named() {
    let printed = errors(&with_backend(
        r#"
[[backend]]
name = "x"
servers = ["127.0.0.1:9001"]
health = { kind = "tcp", intervl = "1s" }
passive = { failure = 2 }
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:26: unknown key `intervl` in a backend's `health`\n  hint: valid keys: kind, path, interval, timeout, rise, fall, expect_status; did you mean `interval`?",
    );
    assert_reports(
        &printed,
        "sockgate.toml:5:13: unknown key `failure` in a backend's `passive`\n  hint: valid keys: failures, eject; did you mean `failures`?",
    );
}

const ONE_LISTENER: &str = r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
route = [{ name = "r", backend = "b" }]

[[backend]]
name = "b"
servers = ["127.0.0.1:9001"]
"#;

#[test]
fn access_log_interval_is_optional_and_at_least_1s() {
    let config = valid(&format!(
        "[defaults]\naccess_log_interval = \"5m\"\n{ONE_LISTENER}"
    ));
    assert_eq!(
        config.defaults.access_log_interval,
        Some(Duration::from_secs(300))
    );
    let config = valid(&format!(
        "[defaults]\naccess_log_interval = \"1s\"\n{ONE_LISTENER}"
    ));
    assert_eq!(
        config.defaults.access_log_interval,
        Some(Duration::from_secs(1))
    );
    assert_reports(
        &errors(&format!(
            "[defaults]\naccess_log_interval = \"500ms\"\n{ONE_LISTENER}"
        )),
        "sockgate.toml:2:23: `access_log_interval` = \"500ms\" is shorter than 1s: a progress event for every connection that often would make the log the load\n  hint: write \"1s\" or more (\"5m\" is typical), or remove the key for only the final event",
    );
    assert_reports(
        &errors(&format!(
            "[defaults]\naccess_log_interval = \"0s\"\n{ONE_LISTENER}"
        )),
        "sockgate.toml:2:23: `access_log_interval` must be longer than zero",
    );
    assert_reports(
        &errors(&format!(
            "[defaults]\naccess_log_interval = \"9000h\"\n{ONE_LISTENER}"
        )),
        "sockgate.toml:2:23: `access_log_interval` = \"9000h\" is longer than 8760h (365 days)",
    );
    assert_reports(
        &errors(&format!(
            "[defaults]\naccess_log_interval = \"often\"\n{ONE_LISTENER}"
        )),
        "sockgate.toml:2:23: `access_log_interval` = \"often\" is not a duration",
    );
}

#[test]
fn client_auth_header_and_route_client_cert_are_read() {
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
client_cert_header = "X-Client-Cert-Subject"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { ca = "certs/clients-ca.crt", mode = "request" } }
route = [
  { name = "private", client_cert = true, backend = "chat" },
  { name = "public", client_cert = false, backend = "chat" },
  { name = "any", backend = "chat" },
]

[[listener]]
name = "strict"
listen = "127.0.0.1:8444"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { ca = "certs/clients-ca.crt" } }
route = [{ name = "private", client_cert = true, protocol = "tcp", backend = "chat" }]
"#,
    ));
    let edge = &config.listeners[0];
    assert_eq!(
        edge.client_cert_header.as_deref(),
        Some("x-client-cert-subject")
    );
    let auth = edge.tls.as_ref().unwrap().client_auth.as_ref().unwrap();
    assert_eq!(auth.mode, ClientAuthMode::Request);
    assert!(auth.ca.ends_with("certs/clients-ca.crt"));
    assert_eq!(auth.bundle.roots.len(), 1);
    let wants: Vec<_> = edge.routes.iter().map(|r| r.client_cert).collect();
    assert_eq!(wants, [Some(true), Some(false), None]);
    // `mode` defaults to "require".
    let strict = &config.listeners[1];
    let auth = strict.tls.as_ref().unwrap().client_auth.as_ref().unwrap();
    assert_eq!(auth.mode, ClientAuthMode::Require);
    assert_eq!(strict.client_cert_header, None);
}

#[test]
fn client_auth_ca_must_be_a_readable_pem_bundle_of_certificates() {
    let listener = |ca: &str| {
        with_backend(&format!(
            r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = {{ cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = {{ ca = "{ca}", mode = "require" }} }}
route = [{{ name = "all", backend = "chat" }}]
"#
        ))
    };
    let printed = errors(&listener("certs/missing-ca.crt"));
    assert!(
        printed.starts_with("sockgate.toml:4:91: cannot read CA bundle /"),
        "{printed}"
    );
    assert_reports(
        &printed,
        "certs/missing-ca.crt: I/O error: No such file or directory (os error 2); listener `edge` cannot check client certificates\n  hint: give the PEM certificate(s) of the CA that issues client certificates (relative paths start at the config file's folder)",
    );
    let printed = errors(&listener("certs/empty.crt"));
    assert!(
        printed.starts_with("sockgate.toml:4:91: no PEM certificate found in CA bundle /"),
        "{printed}"
    );
    assert_reports(
        &printed,
        "certs/empty.crt; listener `edge` cannot check client certificates",
    );
    let printed = errors(&listener("certs/bad-ca.crt"));
    assert!(
        printed.starts_with("sockgate.toml:4:91: certificate 1 of CA bundle /"),
        "{printed}"
    );
    assert_reports(&printed, "certs/bad-ca.crt cannot be a trust anchor: ");
    assert_reports(
        &printed,
        "  hint: give only CA certificates, in PEM, each one whole",
    );
}

#[test]
fn client_auth_mode_is_require_or_request_and_ca_is_required() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { ca = "certs/clients-ca.crt", mode = "optional" } }
route = [{ name = "all", backend = "chat" }]

[[listener]]
name = "other"
listen = "127.0.0.1:8444"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { mode = "request" } }
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:122: `mode` = \"optional\" is not a client certificate mode\n  hint: use \"require\" (a client without a valid certificate is refused) or \"request\" (a certificate is optional, routes may match on it)",
    );
    assert_reports(
        &printed,
        "sockgate.toml:10:84: [listener.tls.client_auth] has no `ca`, which it needs\n  hint: add ca = \"clients-ca.crt\"",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 2, "{printed}");
}

#[test]
fn client_cert_header_needs_a_listener_that_asks_for_certificates() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "plain"
listen = "127.0.0.1:8080"
client_cert_header = "X-Client-Cert-Subject"
route = [{ name = "all", backend = "chat" }]

[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key" }
client_cert_header = "X-Client-Cert-Subject"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:22: `client_cert_header` on listener `plain` never has a subject to pass on: the listener is plaintext\n  hint: remove `client_cert_header`, or give the listener tls = { cert = \"...\", key = \"...\", client_auth = { ca = \"clients-ca.crt\", mode = \"request\" } }",
    );
    assert_reports(
        &printed,
        "sockgate.toml:11:22: `client_cert_header` on listener `edge` never has a subject to pass on: the listener does not ask clients for certificates\n",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 2, "{printed}");
}

#[test]
fn client_cert_header_must_be_a_header_name_of_its_own() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { ca = "certs/clients-ca.crt", mode = "request" } }
client_cert_header = "X Client"
route = [{ name = "all", backend = "chat" }]

[[listener]]
name = "b"
listen = "127.0.0.1:8444"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { ca = "certs/clients-ca.crt", mode = "request" } }
client_cert_header = "X-Forwarded-For"
route = [{ name = "all", backend = "chat" }]

[[listener]]
name = "c"
listen = "127.0.0.1:8445"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { ca = "certs/clients-ca.crt", mode = "request" } }
client_cert_header = "Sec-WebSocket-Key"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:5:22: `client_cert_header` = \"X Client\" is not an HTTP header name\n  hint: use letters, digits and `-`, as in client_cert_header = \"X-Client-Cert-Subject\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:12:22: `client_cert_header` = \"X-Forwarded-For\" names a header that requests already use, which the subject would replace\n  hint: pick a header of its own, as in client_cert_header = \"X-Client-Cert-Subject\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:19:22: `client_cert_header` = \"Sec-WebSocket-Key\" names a header",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 3, "{printed}");
}

#[test]
fn route_client_cert_needs_a_listener_that_asks_and_no_passthrough() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "plain"
listen = "127.0.0.1:8080"
route = [
  { name = "private", client_cert = true, backend = "chat" },
]

[[listener]]
name = "edge"
listen = "127.0.0.1:8443"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key" }
route = [
  { name = "private", client_cert = true, backend = "chat" },
]

[[listener]]
name = "strict"
listen = "127.0.0.1:8444"
tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key", client_auth = { ca = "certs/clients-ca.crt" } }
route = [
  { name = "db", protocol = "tls_passthrough", sni = "db.example.com", client_cert = true, backend = "chat" },
  { name = "public", client_cert = false, backend = "chat" },
  { name = "private", client_cert = true, backend = "chat" },
]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:5:37: `client_cert` on route `private` cannot be told: listener `plain` is plaintext\n  hint: remove `client_cert`, or give the listener tls = { cert = \"...\", key = \"...\", client_auth = { ca = \"clients-ca.crt\", mode = \"request\" } }",
    );
    assert_reports(
        &printed,
        "sockgate.toml:13:37: `client_cert` on route `private` cannot be told: listener `edge` does not ask clients for certificates\n",
    );
    assert_reports(
        &printed,
        "sockgate.toml:21:86: `client_cert` on route `db` never applies: passthrough TLS is relayed undecrypted, so the gateway never sees a client certificate\n  hint: remove `client_cert` (the backend that ends the TLS session can ask for one)",
    );
    assert_reports(
        &printed,
        "sockgate.toml:22:36: `client_cert = false` on route `public` never matches: listener `strict` requires a client certificate of every client\n  hint: remove the route or `client_cert`, or set mode = \"request\" in the listener's client_auth",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 4, "{printed}");
}

/// A backend with `tls` written as `tls_line`, beside a valid listener; the folder also
/// holds `certs/dev/ca.crt` (the self-signed certificate, as a CA bundle) and
/// `certs/bad.pem` (a PEM block that is not base64).
fn backend_tls(tls_line: &str) -> (Result<Config, ConfigErrors>, TempDir) {
    let dir = cert_dir();
    std::fs::copy(
        dir.path().join("certs/dev/server.crt"),
        dir.path().join("certs/dev/ca.crt"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("certs/bad.pem"),
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let text = format!(
        r#"[[listener]]
name = "edge"
listen = "127.0.0.1:0"
route = [{{ name = "r", backend = "chat" }}]
[[backend]]
name = "chat"
servers = ["127.0.0.1:9001", "chat.internal:9002"]
{tls_line}
"#
    );
    (from_str(&text, Path::new("sockgate.toml"), dir.path()), dir)
}

fn backend_tls_errors(tls_line: &str) -> String {
    match backend_tls(tls_line).0 {
        Ok(_) => panic!("expected errors, the config was valid"),
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn backend_tls_loads_the_ca_and_client_certificate_and_names_each_server() {
    let (config, _dir) = backend_tls(
        r#"tls = { ca = "certs/dev/ca.crt", sni = "Chat.Internal", cert = "certs/dev/server.crt", key = "certs/dev/server.key" }"#,
    );
    let config = config.unwrap_or_else(|e| panic!("{e}"));
    let tls = config.backends[0].tls.as_ref().expect("tls");
    assert_eq!(tls.sni.as_deref(), Some("chat.internal"));
    assert!(matches!(&tls.verify, BackendVerify::Ca { bundle, .. } if bundle.der.len() == 1));
    assert!(tls.client_cert.is_some());
    assert!(config.warnings.is_empty());
    let name = tls.server_name("127.0.0.1:9001").expect("name");
    assert_eq!(name.to_str(), "chat.internal");

    // Without `sni`: each server's own host, an IP address for a literal.
    let (config, _dir) = backend_tls(r#"tls = { ca = "certs/dev/ca.crt" }"#);
    let config = config.unwrap_or_else(|e| panic!("{e}"));
    let tls = config.backends[0].tls.as_ref().expect("tls");
    assert!(matches!(
        tls.server_name("127.0.0.1:9001"),
        Some(rustls_pki_types::ServerName::IpAddress(_))
    ));
    assert!(matches!(
        tls.server_name("[::1]:9001"),
        Some(rustls_pki_types::ServerName::IpAddress(_))
    ));
    assert_eq!(
        tls.server_name("chat.internal:9002")
            .expect("name")
            .to_str(),
        "chat.internal"
    );
}

#[test]
fn backend_tls_verify_false_is_accepted_with_a_warning() {
    let (config, _dir) = backend_tls("tls = { verify = false }");
    let config = config.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.backends[0].tls.as_ref().map(|t| &t.verify),
        Some(&BackendVerify::Off)
    );
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("sockgate.toml:8:18: warning: backend `chat` has verify = false: any certificate is taken"),
        "{warnings:?}"
    );
}

#[test]
fn backend_tls_without_ca_is_refused_unless_verify_is_off() {
    let printed = backend_tls_errors(r#"tls = { sni = "chat.internal" }"#);
    assert_reports(
        &printed,
        "sockgate.toml:8:7: `tls` on backend `chat` verifies the servers' certificates but has no `ca` to verify them against\n  hint: add ca = \"backend-ca.crt\"",
    );
    assert_reports(&printed, "/etc/ssl/certs/ca-certificates.crt");
}

#[test]
fn backend_tls_ca_with_verify_false_is_refused() {
    let printed = backend_tls_errors(r#"tls = { ca = "certs/dev/ca.crt", verify = false }"#);
    assert_reports(
        &printed,
        "sockgate.toml:8:14: `ca` has no effect on backend `chat`: verify = false takes any certificate",
    );
}

#[test]
fn backend_tls_ca_file_missing_is_refused_at_the_value() {
    let printed = backend_tls_errors(r#"tls = { ca = "certs/missing.crt" }"#);
    assert_reports(&printed, "sockgate.toml:8:14: cannot read CA bundle ");
    assert_reports(&printed, "missing.crt: ");
    assert_reports(
        &printed,
        "; connections to backend `chat` could not be verified\n  hint: give the PEM file of the CA certificates",
    );
}

#[test]
fn backend_tls_ca_bad_pem_or_no_certificate_is_refused() {
    let printed = backend_tls_errors(r#"tls = { ca = "certs/bad.pem" }"#);
    assert_reports(&printed, "sockgate.toml:8:14: cannot read CA bundle ");
    // A key file holds no certificate.
    let printed = backend_tls_errors(r#"tls = { ca = "certs/dev/server.key" }"#);
    assert_reports(
        &printed,
        "sockgate.toml:8:14: no PEM certificate found in CA bundle ",
    );
}

#[test]
fn backend_tls_unknown_key_is_named_with_the_valid_ones() {
    let printed = backend_tls_errors(r#"tls = { ca = "certs/dev/ca.crt", verfy = false }"#);
    assert_reports(
        &printed,
        "sockgate.toml:8:34: unknown key `verfy` in a backend's `tls`\n  hint: valid keys: ca, sni, verify, cert, key; did you mean `verify`?",
    );
}

#[test]
fn backend_tls_key_without_cert_and_cert_without_key_are_refused() {
    let printed =
        backend_tls_errors(r#"tls = { ca = "certs/dev/ca.crt", key = "certs/dev/server.key" }"#);
    assert_reports(
        &printed,
        "sockgate.toml:8:40: `key` without `cert` on backend `chat`'s `tls`: there is no client certificate to present with it",
    );
    let printed =
        backend_tls_errors(r#"tls = { ca = "certs/dev/ca.crt", cert = "certs/dev/server.crt" }"#);
    assert_reports(
        &printed,
        "sockgate.toml:8:41: `cert` without `key` on backend `chat`'s `tls`",
    );
}

#[test]
fn backend_tls_client_key_not_matching_its_certificate_is_refused() {
    let printed = backend_tls_errors(
        r#"tls = { ca = "certs/dev/ca.crt", cert = "certs/dev/server.crt", key = "certs/other/server.key" }"#,
    );
    assert_reports(&printed, "sockgate.toml:8:41: private key ");
    assert_reports(&printed, "; backend `chat` would get no client certificate");
}

#[test]
fn backend_tls_sni_must_be_a_dns_name() {
    let printed = backend_tls_errors(r#"tls = { ca = "certs/dev/ca.crt", sni = "not a name" }"#);
    assert_reports(
        &printed,
        "sockgate.toml:8:40: `not a name` is not a valid DNS name, so no server certificate of backend `chat` can match `sni`",
    );
}

fn unix_listener(listen: &str, extra: &str) -> String {
    with_backend(&format!(
        "[[listener]]\nname = \"local\"\nlisten = \"{listen}\"\n{extra}route = [{{ name = \"all\", backend = \"chat\" }}]\n"
    ))
}

#[test]
fn unix_listeners_and_servers_are_parsed() {
    let text = r#"
[[listener]]
name = "local"
listen = "unix:/run/sockgate/chat.sock"
unix = { mode = "0660", owner = "root", group = 0 }
proxy_protocol = true
route = [{ name = "all", backend = "local" }]

[[listener]]
name = "hidden"
listen = "unix:@sockgate-chat"
route = [{ name = "all", backend = "local" }]

[[listener]]
name = "relative"
listen = "unix:run/chat.sock"
route = [{ name = "all", backend = "local" }]

[[backend]]
name = "local"
servers = ["unix:/run/chat.sock", "unix:@chat", { address = "unix:/run/chat2.sock", weight = 2 }]
"#;
    let (config, dir) = check(text);
    let config = match config {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    };
    let l = &config.listeners[0];
    assert_eq!(
        l.listen,
        ListenAddr::Unix(UnixAddr::Path("/run/sockgate/chat.sock".into()))
    );
    assert_eq!(l.listen.to_string(), "unix:/run/sockgate/chat.sock");
    assert_eq!(
        l.unix,
        UnixPerms {
            mode: Some(0o660),
            owner: Some(0),
            group: Some(0)
        }
    );
    // A Unix listener's peers are local processes: PROXY headers need no trusted_proxies.
    assert!(l.proxy_protocol);
    assert_eq!(
        config.listeners[1].listen,
        ListenAddr::Unix(UnixAddr::Abstract("sockgate-chat".into()))
    );
    assert_eq!(
        config.listeners[1].listen.to_string(),
        "unix:@sockgate-chat"
    );
    // Relative to the config file's folder, as certificate paths are.
    assert_eq!(
        config.listeners[2].listen,
        ListenAddr::Unix(UnixAddr::Path(dir.path().join("run/chat.sock")))
    );
    let servers: Vec<_> = config.backends[0]
        .servers
        .iter()
        .map(|s| s.address.as_str())
        .collect();
    assert_eq!(
        servers,
        ["unix:/run/chat.sock", "unix:@chat", "unix:/run/chat2.sock"]
    );
}

#[test]
fn unix_socket_path_must_fit_sun_path() {
    let long = format!("/run/{}", "a".repeat(103));
    let printed = errors(&unix_listener(&format!("unix:{long}"), ""));
    assert_reports(
        &printed,
        &format!(
            "sockgate.toml:3:10: `listen` = \"unix:{long}\" cannot be bound: the path {long} is 108 bytes; a Unix socket path holds at most 107\n  hint: write \"unix:/run/sockgate/NAME.sock\""
        ),
    );
    // 107 bytes fit.
    let fits = format!("/run/{}", "a".repeat(102));
    valid(&unix_listener(&format!("unix:{fits}"), ""));
    let printed = errors(&unix_listener(&format!("unix:@{}", "n".repeat(107)), ""));
    assert_reports(
        &printed,
        "cannot be bound: the abstract name is 107 bytes; at most 106 fit in a socket address",
    );
    assert_reports(
        &errors(&unix_listener("unix:", "")),
        "`listen` = \"unix:\" cannot be bound: the path is empty",
    );
    assert_reports(
        &errors(&unix_listener("unix:@", "")),
        "`listen` = \"unix:@\" cannot be bound: the abstract name is empty",
    );
}

#[test]
fn two_listeners_on_one_unix_path_are_refused() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "unix:/run/chat.sock"
route = [{ name = "all", backend = "chat" }]

[[listener]]
name = "b"
listen = "unix:/run/chat.sock"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:8:10: listener `b` listens on unix:/run/chat.sock, which listener `a` already uses: the second bind would fail\n  hint: give one of them another address (the first is at 3:10)",
    );
}

#[test]
fn unix_mode_must_be_octal_at_most_0777() {
    for bad in ["0999", "1777", "rw-rw----", "", "01234"] {
        let printed = errors(&unix_listener(
            "unix:/run/chat.sock",
            &format!("unix = {{ mode = \"{bad}\" }}\n"),
        ));
        assert_reports(
            &printed,
            &format!(
                "sockgate.toml:4:17: `mode` = \"{bad}\" is not a file mode: octal digits, at most 0777\n  hint: write the permission bits in octal, as in mode = \"0660\""
            ),
        );
    }
    let config = valid(&unix_listener(
        "unix:/run/chat.sock",
        "unix = { mode = \"600\" }\n",
    ));
    assert_eq!(config.listeners[0].unix.mode, Some(0o600));
}

#[test]
fn unix_owner_and_group_must_exist() {
    let printed = errors(&unix_listener(
        "unix:/run/chat.sock",
        "unix = { owner = \"no-such-user-here\", group = \"no-such-group-here\" }\n",
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:18: `owner` = \"no-such-user-here\" is not in /etc/passwd\n  hint: name an existing user or give its numeric id, as in owner = 33",
    );
    assert_reports(
        &printed,
        "`group` = \"no-such-group-here\" is not in /etc/group\n  hint: name an existing group or give its numeric id, as in group = 33",
    );
    let printed = errors(&unix_listener(
        "unix:/run/chat.sock",
        "unix = { owner = -1 }\n",
    ));
    assert_reports(&printed, "`owner` = -1 is not a valid id");
    let config = valid(&unix_listener(
        "unix:/run/chat.sock",
        "unix = { owner = \"1000\", group = 33 }\n",
    ));
    assert_eq!(
        (
            config.listeners[0].unix.owner,
            config.listeners[0].unix.group
        ),
        (Some(1000), Some(33))
    );
}

#[test]
fn unix_key_only_on_unix_socket_files() {
    let printed = errors(&unix_listener(
        "127.0.0.1:8443",
        "unix = { mode = \"0660\" }\n",
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:8: `unix` sets a Unix socket file's mode and owner, but listener `local` listens on TCP\n  hint: remove `unix`, or listen on a socket file",
    );
    let printed = errors(&unix_listener("unix:@chat", "unix = { mode = \"0660\" }\n"));
    assert_reports(
        &printed,
        "sockgate.toml:4:8: listener `local` listens on an abstract Unix socket, which has no file: `unix` (mode, owner, group) does not apply",
    );
    assert_reports(
        &errors(&unix_listener(
            "unix:/run/chat.sock",
            "unix = { mode = \"0660\", user = \"x\" }\n",
        )),
        "unknown key `user` in a listener's `unix`\n  hint: valid keys: mode, owner, group",
    );
}

#[test]
fn unix_server_addresses_are_checked() {
    for (server, why) in [
        (
            "unix:run/chat.sock",
            "a Unix socket path must be absolute, as in \"unix:/run/chat.sock\"",
        ),
        ("unix:@", "the abstract name is empty"),
        ("unix:", "a Unix socket path must be absolute"),
    ] {
        let printed = errors(&format!(
            "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\nroute = [{{ name = \"all\", backend = \"b\" }}]\n\n[[backend]]\nname = \"b\"\nservers = [\"{server}\"]\n"
        ));
        assert_reports(
            &printed,
            &format!("server address \"{server}\" cannot be connected to: {why}"),
        );
    }
    let long = format!("unix:/{}", "a".repeat(107));
    let printed = errors(&format!(
        "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\nroute = [{{ name = \"all\", backend = \"b\" }}]\n\n[[backend]]\nname = \"b\"\nservers = [\"{long}\"]\n"
    ));
    assert_reports(
        &printed,
        "the path is 108 bytes; a Unix socket path holds at most 107",
    );
}

/// A udp listener with one route to backend `chat`, and `extra` keys on the listener.
fn udp_listener(listener_extra: &str, route_extra: &str) -> String {
    with_backend(&format!(
        r#"
[[listener]]
name = "voice"
listen = "127.0.0.1:4000"
protocol = "udp"
{listener_extra}
  [[listener.route]]
  name = "voice"
  backend = "chat"
  {route_extra}
"#
    ))
}

#[test]
fn udp_listener_is_valid_with_its_session_keys_and_defaults() {
    let config = valid(&udp_listener("", ""));
    let l = &config.listeners[0];
    assert!(l.udp);
    assert_eq!(l.routes[0].protocol, Some(Protocol::Udp));
    assert_eq!(l.routes[0].sessions, UdpSessions::default());
    assert_eq!(
        UdpSessions::default(),
        UdpSessions {
            idle_timeout: Duration::from_secs(60),
            max_sessions: 100_000
        }
    );
    let config = valid(&udp_listener(
        "",
        "protocol = \"udp\"\n  session_idle_timeout = \"5m\"\n  max_sessions = 500",
    ));
    assert_eq!(
        config.listeners[0].routes[0].sessions,
        UdpSessions {
            idle_timeout: Duration::from_secs(300),
            max_sessions: 500
        }
    );
    // `protocol = "tcp"` on a listener is the default, written out.
    let config = valid(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
protocol = "tcp"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert!(!config.listeners[0].udp);
}

#[test]
fn listener_protocol_must_be_tcp_or_udp() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
protocol = "sctp"
route = [{ name = "all", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:12: `protocol` = \"sctp\" is not a protocol listener `a` can listen for\n  hint: use \"udp\" for datagrams, or leave `protocol` out for TCP (every route protocol but udp)",
    );
}

#[test]
fn udp_listener_refuses_tls_proxy_protocol_and_connection_limits() {
    let printed = errors(&udp_listener(
        r#"tls = { cert = "certs/dev/server.crt", key = "certs/dev/server.key" }
proxy_protocol = true
trusted_proxies = ["10.0.0.0/8"]
max_connections = 10
max_connections_per_ip = 2
max_new_connections_per_ip = "5/s""#,
        "",
    ));
    assert_reports(
        &printed,
        "sockgate.toml:5:7: `tls` cannot apply to listener `voice`, which is udp: the gateway terminates TLS over TCP only (DTLS is not supported)\n  hint: remove `tls`; UDP datagrams are relayed as they come",
    );
    assert_reports(
        &printed,
        "sockgate.toml:6:18: `proxy_protocol` cannot apply to listener `voice`, which is udp: a PROXY header starts a TCP connection; datagrams carry none\n  hint: remove `proxy_protocol`",
    );
    assert_reports(
        &printed,
        "sockgate.toml:7:19: `trusted_proxies` cannot apply to listener `voice`, which is udp: there are no PROXY or forwarded headers to trust in datagrams\n  hint: remove `trusted_proxies`",
    );
    for (at, key) in [
        ("8:19", "max_connections"),
        ("9:26", "max_connections_per_ip"),
        ("10:30", "max_new_connections_per_ip"),
    ] {
        assert_reports(
            &printed,
            &format!(
                "sockgate.toml:{at}: `{key}` cannot apply to listener `voice`, which is udp: it has sessions, not connections\n  hint: remove it, and bound sessions with `max_sessions` on the listener's route"
            ),
        );
    }
}

#[test]
fn udp_listener_routes_are_udp_and_there_is_one() {
    let printed = errors(&udp_listener(
        "",
        "protocol = \"tcp\"\n  [[listener.route]]\n  name = \"second\"\n  backend = \"chat\"",
    ));
    assert_reports(
        &printed,
        "sockgate.toml:9:14: route `voice` has protocol = \"tcp\", but listener `voice` is udp: it receives datagrams, never tcp connections\n  hint: remove `protocol` (routes of a udp listener are udp), or move the route to a TCP listener",
    );
    assert_reports(
        &printed,
        "sockgate.toml:10:3: listener `voice` is udp and has more than one route: a datagram carries nothing to choose between routes by, so only the first would ever be used\n  hint: keep one [[listener.route]] on a udp listener; give other backends their own listener",
    );
}

#[test]
fn udp_route_on_a_tcp_listener_is_refused() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
route = [{ name = "all", protocol = "udp", backend = "chat" }]
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:4:37: route `all` has protocol = \"udp\", but listener `a` listens for TCP connections\n  hint: put the route on a listener with protocol = \"udp\"",
    );
}

#[test]
fn udp_route_refuses_host_path_sni_request_timeout_and_websocket_keys() {
    let printed = errors(&udp_listener(
        "",
        r#"host = "voice.example.com"
  path_prefix = "/v"
  sni = "voice.example.com"
  request_timeout = "5s"
  max_message_size = 1024
  ping_interval = "10s""#,
    ));
    assert_reports(
        &printed,
        "`host` on route `voice` never matches: UDP datagrams carry no Host header",
    );
    assert_reports(
        &printed,
        "`path_prefix` on route `voice` never matches: UDP datagrams carry no request path",
    );
    assert_reports(
        &printed,
        "`sni` on route `voice` never matches: UDP datagrams carry no server name\n  hint: remove `sni`",
    );
    assert_reports(
        &printed,
        "`request_timeout` on route `voice` has no effect: UDP datagrams carry no requests",
    );
    assert_reports(
        &printed,
        "`max_message_size` only applies to WebSocket connections, but route `voice` has protocol = \"udp\"",
    );
    assert_reports(
        &printed,
        "`ping_interval` only applies to WebSocket connections, but route `voice` has protocol = \"udp\"",
    );
    assert_eq!(printed.matches("sockgate.toml:").count(), 6, "{printed}");
}

#[test]
fn session_keys_only_on_udp_routes() {
    let printed = errors(&with_backend(
        r#"
[[listener]]
name = "a"
listen = "127.0.0.1:8080"
  [[listener.route]]
  name = "t"
  backend = "chat"
  session_idle_timeout = "30s"
  max_sessions = 10
"#,
    ));
    assert_reports(
        &printed,
        "sockgate.toml:7:26: `session_idle_timeout` only applies to UDP sessions, but route `t` is on a TCP listener\n  hint: remove `session_idle_timeout`, or put the route on a listener with protocol = \"udp\"",
    );
    assert_reports(
        &printed,
        "sockgate.toml:8:18: `max_sessions` only applies to UDP sessions, but route `t` is on a TCP listener",
    );
}

#[test]
fn session_keys_are_bounded() {
    let printed = errors(&udp_listener(
        "",
        "session_idle_timeout = \"8761h\"\n  max_sessions = 10000001",
    ));
    assert_reports(
        &printed,
        "`session_idle_timeout` = \"8761h\" is longer than 8760h (365 days), the longest duration the gateway takes",
    );
    assert_reports(
        &printed,
        "`max_sessions` must be at most 10000000, found 10000001",
    );
    let printed = errors(&udp_listener(
        "",
        "session_idle_timeout = \"0s\"\n  max_sessions = 0",
    ));
    assert_reports(&printed, "`session_idle_timeout` must be longer than zero");
    assert_reports(&printed, "`max_sessions` must be at least 1, found 0");
}

#[test]
fn udp_backend_refuses_proxy_headers_request_checks_request_hashing_and_names() {
    let printed = errors(
        r#"
[[listener]]
name = "voice"
listen = "127.0.0.1:4000"
protocol = "udp"
route = [{ name = "voice", backend = "chat" }]

[[backend]]
name = "chat"
servers = ["127.0.0.1:9001", "voice.internal:4000"]
send_proxy_protocol = "v2"
health = { kind = "http", path = "/healthz" }
balance = "hash"
hash_on = "header:x-user"
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:10:23: backend `chat` is used by udp route `voice`, whose datagrams cannot carry a PROXY header\n  hint: remove `send_proxy_protocol`, or give the udp route a backend of its own",
    );
    assert_reports(
        &printed,
        "sockgate.toml:11:19: backend `chat` is used by udp route `voice`, but a `http` health check asks its servers over TCP for what a UDP server does not answer\n  hint: use kind = \"tcp\" if the servers also listen on TCP on that port, or remove `health` (passive ejection still counts ICMP port unreachable)",
    );
    assert_reports(
        &printed,
        "sockgate.toml:9:30: backend `chat` is used by udp route `voice`, whose servers must be IP addresses: server \"voice.internal:4000\" is a name, which datagram sessions do not look up",
    );
    assert_reports(
        &printed,
        "route `voice` is `udp`, but backend `chat` hashes on a request's header, cookie or query parameter, which a TCP connection does not have",
    );
}

#[test]
fn udp_listener_on_a_unix_socket_and_udp_backends_over_unix_or_tls_are_refused() {
    let printed = errors(
        r#"
[[listener]]
name = "voice"
listen = "unix:/run/voice.sock"
protocol = "udp"
route = [{ name = "voice", backend = "chat" }]

[[backend]]
name = "chat"
servers = ["unix:/run/voice-server.sock"]
tls = { verify = false }
"#,
    );
    assert_reports(
        &printed,
        "sockgate.toml:3:10: listener `voice` is udp, but listens on a Unix socket: datagram listeners take an IP address and port",
    );
    assert_reports(
        &printed,
        "sockgate.toml:9:12: backend `chat` is used by udp route `voice`, whose servers must be IP addresses: server \"unix:/run/voice-server.sock\" is a Unix stream socket",
    );
    assert_reports(
        &printed,
        "sockgate.toml:10:7: backend `chat` is used by udp route `voice`, but TLS runs over TCP only (DTLS is not supported)",
    );
}

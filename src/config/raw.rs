//! The file's shape as serde reads it, before any rule is applied. Values that a rule may
//! cite keep their span. Keys the operator must write are still `Option` here: a missing one
//! is reported by validation together with every other problem, where serde would stop at
//! the first. Field order is the order the "valid keys" hints list them in.

use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use toml::Spanned;

type Text = Option<Spanned<String>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub admin: Option<Spanned<RawAdmin>>,
    pub defaults: Option<RawDefaults>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Text,
    pub token_file: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub connect_timeout: Text,
    pub detect_timeout: Text,
    pub handshake_timeout: Text,
    pub idle_timeout: Text,
    pub drain_timeout: Text,
    pub drain_spread: Text,
    pub close_timeout: Text,
    pub request_timeout: Text,
    pub max_connections: Option<Spanned<i64>>,
    pub access_log_interval: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub name: Text,
    pub listen: Text,
    pub unix: Option<Spanned<RawUnix>>,
    pub protocol: Text,
    pub tls: Option<Spanned<RawTls>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub max_new_connections_per_ip: Text,
    pub client_cert_header: Text,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnix {
    pub mode: Text,
    pub owner: Option<Spanned<RawId>>,
    pub group: Option<Spanned<RawId>>,
}

/// A user or group: a name, or a numeric id (a TOML integer or a string of digits).
pub(super) enum RawId {
    Id(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Text,
    pub key: Text,
    pub client_auth: Option<Spanned<RawClientAuth>>,
    #[serde(default)]
    pub sni: Vec<Spanned<RawSni>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAuth {
    pub ca: Text,
    pub mode: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    pub names: Option<Spanned<Vec<Spanned<String>>>>,
    pub cert: Text,
    pub key: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub name: Text,
    pub protocol: Text,
    pub host: Text,
    pub sni: Text,
    pub path_prefix: Text,
    pub backend: Text,
    pub request_timeout: Text,
    pub max_message_size: Option<Spanned<RawSize>>,
    pub max_messages_per_second: Option<Spanned<i64>>,
    pub max_frames_per_second: Option<Spanned<i64>>,
    pub ping_interval: Text,
    pub pong_timeout: Text,
    pub client_cert: Option<Spanned<bool>>,
    pub session_idle_timeout: Text,
    pub max_sessions: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub name: Text,
    pub servers: Option<Spanned<Vec<Spanned<RawServer>>>>,
    pub balance: Text,
    pub hash_on: Text,
    pub health: Option<Spanned<RawHealth>>,
    pub passive: Option<Spanned<RawPassive>>,
    pub send_proxy_protocol: Text,
    pub tls: Option<Spanned<RawBackendTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTls {
    pub ca: Text,
    pub sni: Text,
    pub verify: Option<Spanned<bool>>,
    pub cert: Text,
    pub key: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub kind: Text,
    pub path: Text,
    pub interval: Text,
    pub timeout: Text,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub expect_status: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassive {
    pub failures: Option<Spanned<i64>>,
    pub eject: Text,
}

/// A `servers` entry: `"127.0.0.1:9001"` or `{ address = "127.0.0.1:9001", weight = 3 }`.
pub(super) enum RawServer {
    Address(String),
    Table(RawServerTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTable {
    pub address: Text,
    pub weight: Option<Spanned<i64>>,
}

/// A byte count: a TOML integer, or a string with a unit such as `"1MiB"`.
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

// Hand-written rather than `#[serde(untagged)]`: untagged buffers the value, which loses
// the spans inside the inline table and replaces the type error with "did not match any
// variant".
impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServerVisitor;
        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = RawServer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an address like "127.0.0.1:9001" or a table like { address = "127.0.0.1:9001", weight = 3 }"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawServer, E> {
                Ok(RawServer::Address(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawServer, A::Error> {
                RawServerTable::deserialize(MapAccessDeserializer::new(map)).map(RawServer::Table)
            }
        }
        deserializer.deserialize_any(ServerVisitor)
    }
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = RawId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a name like "www-data" or a numeric id like 33"#)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawId, E> {
                Ok(RawId::Id(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId::Name(v.to_owned()))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size like "1MiB" or a number of bytes"#)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

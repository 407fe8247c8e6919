//! Unknown and not-yet-supported keys. The parsed document is walked against the raw structs
//! before serde reads it, so one run reports every such key (serde's `deny_unknown_fields`
//! stops at the first), and the keys are then removed so checking goes on with the rest.

use serde::de::value::Error as ProbeError;
use serde::de::{DeserializeOwned, Error as _, Visitor};
use toml::de::{DeTable, DeValue};

use super::error::Report;
use super::raw::{
    RawAdmin, RawBackend, RawBackendTls, RawClientAuth, RawConfig, RawDefaults, RawHealth,
    RawListener, RawPassive, RawRoute, RawServerTable, RawSni, RawTls, RawUnix,
};

/// One kind of table in the file.
pub(super) struct Section {
    /// How messages name it.
    name: &'static str,
    /// The keys its raw struct accepts.
    keys: fn() -> &'static [&'static str],
    /// Keys holding a table, or an array whose table items are, of another kind.
    children: &'static [(&'static str, &'static Section)],
}

pub(super) static ROOT: Section = Section {
    name: "the top level",
    keys: fields_of::<RawConfig>,
    children: &[
        ("admin", &ADMIN),
        ("defaults", &DEFAULTS),
        ("listener", &LISTENER),
        ("backend", &BACKEND),
    ],
};

static ADMIN: Section = Section {
    name: "[admin]",
    keys: fields_of::<RawAdmin>,
    children: &[],
};

static DEFAULTS: Section = Section {
    name: "[defaults]",
    keys: fields_of::<RawDefaults>,
    children: &[],
};

static LISTENER: Section = Section {
    name: "[[listener]]",
    keys: fields_of::<RawListener>,
    children: &[("unix", &UNIX), ("tls", &TLS), ("route", &ROUTE)],
};

static UNIX: Section = Section {
    name: "a listener's `unix`",
    keys: fields_of::<RawUnix>,
    children: &[],
};

static TLS: Section = Section {
    name: "[listener.tls]",
    keys: fields_of::<RawTls>,
    children: &[("sni", &SNI), ("client_auth", &CLIENT_AUTH)],
};

static CLIENT_AUTH: Section = Section {
    name: "[listener.tls.client_auth]",
    keys: fields_of::<RawClientAuth>,
    children: &[],
};

static SNI: Section = Section {
    name: "[[listener.tls.sni]]",
    keys: fields_of::<RawSni>,
    children: &[],
};

static ROUTE: Section = Section {
    name: "[[listener.route]]",
    keys: fields_of::<RawRoute>,
    children: &[],
};

static BACKEND: Section = Section {
    name: "[[backend]]",
    keys: fields_of::<RawBackend>,
    children: &[
        ("servers", &SERVER),
        ("health", &HEALTH),
        ("passive", &PASSIVE),
        ("tls", &BACKEND_TLS),
    ],
};

static BACKEND_TLS: Section = Section {
    name: "a backend's `tls`",
    keys: fields_of::<RawBackendTls>,
    children: &[],
};

static HEALTH: Section = Section {
    name: "a backend's `health`",
    keys: fields_of::<RawHealth>,
    children: &[],
};

static PASSIVE: Section = Section {
    name: "a backend's `passive`",
    keys: fields_of::<RawPassive>,
    children: &[],
};

static SERVER: Section = Section {
    name: "a `servers` entry",
    keys: fields_of::<RawServerTable>,
    children: &[],
};

/// Reports and removes every unknown key in `table` and below.
pub(super) fn check(table: &mut DeTable<'_>, section: &Section, report: &mut Report<'_>) {
    let valid = (section.keys)();
    let mut rejected = Vec::new();
    for (key, value) in table.iter_mut() {
        let name: &str = key.get_ref();
        if !valid.contains(&name) {
            let mut hint = format!("valid keys: {}", valid.join(", "));
            if let Some(close) = super::values::closest(name, valid.iter().copied()) {
                hint.push_str(&format!("; did you mean `{close}`?"));
            }
            report.error(
                key.span(),
                format!("unknown key `{name}` in {}", section.name),
                hint,
            );
            rejected.push(name.to_owned());
        } else if let Some((_, child)) = section.children.iter().find(|(k, _)| *k == name) {
            match value.get_mut() {
                DeValue::Table(inner) => check(inner, child, report),
                DeValue::Array(items) => {
                    for item in items.iter_mut() {
                        if let DeValue::Table(inner) = item.get_mut() {
                            check(inner, child, report);
                        }
                    }
                }
                // A wrong type is serde's to report.
                _ => {}
            }
        }
    }
    for name in rejected {
        table.remove(name.as_str());
    }
}

/// The keys a raw struct accepts, as its derived `Deserialize` declares them: serde hands the
/// field list to `deserialize_struct`, and this deserializer only records it. One list, so
/// this walk and serde cannot disagree.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // Always an error by design: the probe never produces a value.
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeError> {
        *self.0 = fields;
        Err(ProbeError::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The dotted key (`listener.route.backend`) whose value is the innermost one holding byte
/// `offset`, and whether that value is a table. serde's type errors name the type, not the
/// key; this names the key. Tables written as `[header]` span only their header, so the
/// whole tree is searched rather than descending by span.
pub(super) fn key_at(table: &DeTable<'_>, offset: usize) -> Option<(String, bool)> {
    let mut best = None;
    find_key(table, "", offset, &mut best);
    best.map(|(path, _, is_table)| (path, is_table))
}

fn find_key(
    table: &DeTable<'_>,
    prefix: &str,
    offset: usize,
    best: &mut Option<(String, usize, bool)>,
) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let span = value.span();
        let holds = span.start <= offset && (offset < span.end || span.is_empty());
        if holds && best.as_ref().is_none_or(|(_, len, _)| span.len() <= *len) {
            *best = Some((path.clone(), span.len(), value.get_ref().is_table()));
        }
        match value.get_ref() {
            DeValue::Table(inner) => find_key(inner, &path, offset, best),
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        find_key(inner, &path, offset, best);
                    }
                }
            }
            _ => {}
        }
    }
}

//! The config file: TOML text in, a validated [`Config`] out, or every problem found in it.
//! Runs at start-up, on `sockgate check`, and on reload, before anything is bound.
//!
//! Checking goes in stages, each reporting as much as it can before the next:
//!
//! ```text
//! text ─ parse ─ key walk ─ serde ─ validate ─▶ Config
//!          │        │         │        │
//!       syntax   unknown    wrong    rules, cross-references,
//!       error    keys (all) type     certificates (all of them)
//! ```
//!
//! A syntax error or a value of the wrong type ends checking there (nothing later can be
//! trusted); unknown keys are removed after being reported, so the rules still run.
//! Every error is printed as `FILE:LINE:COL: message` with an optional `  hint:` line.

use std::path::Path;

use serde::Deserialize;
use toml::de::DeTable;

mod cidr;
mod error;
mod keys;
pub mod model;
mod raw;
mod validate;
mod values;

#[cfg(test)]
mod tests;

pub use cidr::Cidr;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use validate::{MAX_CONNECTIONS, MAX_DURATION, MAX_SESSIONS, MAX_WEIGHT};
pub use values::{parse_duration, parse_size};

use error::Report;
use raw::RawConfig;

/// Reads and validates a config file; relative paths resolve from the file's folder. The
/// returned config records `path` as its source, for reload.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {e}"),
            hint: None,
        }])
    })?;
    let base_dir = path.parent().unwrap_or(Path::new(""));
    let mut config = from_str(&text, path, base_dir)?;
    config.source = Some(path.to_owned());
    Ok(config)
}

/// The testable core of [`load`]: `file` is only used in messages, `base_dir` resolves
/// relative paths. Certificates are read from disk. `source` is left `None`.
pub fn from_str(text: &str, file: &Path, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut report = Report::new(text, file);
    let mut document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(e) => {
            report.error(
                e.span().unwrap_or(0..0),
                format!("invalid TOML: {}", e.message()),
                TOML_FORMS,
            );
            return report.finish(None);
        }
    };
    keys::check(document.get_mut(), &keys::ROOT, &mut report);
    let raw = match RawConfig::deserialize(toml::de::Deserializer::from(document)) {
        Ok(raw) => raw,
        Err(e) => {
            type_error(text, &e, &mut report);
            return report.finish(None);
        }
    };
    let config = validate::validate(&raw, base_dir, &mut report);
    let warnings = report.take_warnings();
    let mut config = report.finish(config)?;
    config.warnings = warnings;
    Ok(config)
}

/// The hint under every TOML syntax error.
const TOML_FORMS: &str = r#"each line is `key = value` with strings in double quotes ("edge", "30s"), tables as [name] and repeated ones as [[name]]; see config/edge.toml"#;

/// A value of the wrong type, named by its key.
fn type_error(text: &str, error: &toml::de::Error, report: &mut Report<'_>) {
    let span = error.span().unwrap_or(0..0);
    // serde consumed the document; parsing it again is cheap and only happens here.
    let key = DeTable::parse(text)
        .ok()
        .and_then(|document| keys::key_at(document.get_ref(), span.start));
    let Some((path, is_table)) = key else {
        report.bare(span, error.message());
        return;
    };
    let message = format!("`{path}`: {}", error.message());
    let expected = error.message();
    let hint = if is_table && expected.ends_with("expected a sequence") {
        Some(format!(
            "write [[{path}]], with double brackets, once per entry"
        ))
    } else if expected.ends_with("expected a string") {
        Some(r#"write it in double quotes: names, addresses, durations ("30s") and sizes ("1MiB") are strings"#.to_owned())
    } else if expected.ends_with("expected i64") || expected.contains("expected an integer") {
        Some("write a whole number without quotes, as in max_connections = 10000".to_owned())
    } else if expected.ends_with("expected a boolean") {
        Some("write true or false, without quotes".to_owned())
    } else if expected.ends_with("expected a sequence") {
        Some(r#"write a list in brackets, as in servers = ["127.0.0.1:9001"]"#.to_owned())
    } else {
        None
    };
    match hint {
        Some(hint) => report.error(span, message, hint),
        None => report.bare(span, message),
    }
}

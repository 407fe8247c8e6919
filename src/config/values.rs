//! Single-value grammars of the config file: durations, sizes, addresses and names. Each
//! returns a short reason on failure; the caller adds the key and the position.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rustls_pki_types::DnsName;

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"` and sums like `"1h30m"`. Whole numbers only,
/// every number needs a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("the duration is empty".to_owned());
    }
    if s.starts_with('-') {
        return Err("durations cannot be negative".to_owned());
    }
    let too_long = || "the duration is too long".to_owned();
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        rest = after;
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
            "" => return Err(format!("`{n}` has no unit (ms, s, m or h)")),
            u if u.starts_with('.') => {
                return Err(
                    "fractions are not supported; use a smaller unit, as in \"1500ms\"".to_owned(),
                );
            }
            u => return Err(format!("unknown unit `{u}` (use ms, s, m or h)")),
        };
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    Ok(total)
}

/// Parses a byte count: `"512B"`, `"64KiB"`, `"1MiB"`, `"1GiB"`, a bare `"1000"`, and the
/// 1000-based `KB`/`MB`/`GB`. TOML integers are taken as bytes before reaching here.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the size is empty".to_owned());
    }
    if s.starts_with('-') {
        return Err("sizes cannot be negative".to_owned());
    }
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err("expected a number, as in \"64KiB\"".to_owned());
    }
    let too_large = || "the size is too large".to_owned();
    let n: u64 = s[..digits].parse().map_err(|_| too_large())?;
    let multiplier: u64 = match s[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        unit => {
            return Err(format!(
                "unknown unit `{unit}` (use B, KiB, MiB, GiB, or KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(multiplier).ok_or_else(too_large)
}

/// Checks a backend server address: `host:port` where host is a DNS name, an IPv4 address
/// or a bracketed IPv6 address, and port is 1-65535. Names are resolved at connect time.
pub(super) fn check_server_address(s: &str) -> Result<(), String> {
    if let Some(unix) = super::model::UnixAddr::parse(s) {
        // sun_path is 108 bytes (unix(7)), a path's last one a NUL, an abstract name's first.
        return match unix {
            super::model::UnixAddr::Abstract(name) if name.is_empty() => {
                Err("the abstract name is empty".to_owned())
            }
            super::model::UnixAddr::Abstract(name) if name.len() > 106 => Err(format!(
                "the abstract name is {} bytes; at most 106 fit in a socket address",
                name.len()
            )),
            super::model::UnixAddr::Path(path) if !path.is_absolute() => {
                Err("a Unix socket path must be absolute, as in \"unix:/run/chat.sock\"".to_owned())
            }
            super::model::UnixAddr::Path(path) if path.as_os_str().len() > 107 => Err(format!(
                "the path is {} bytes; a Unix socket path holds at most 107",
                path.as_os_str().len()
            )),
            _ => Ok(()),
        };
    }
    let port = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("missing `]` after the IPv6 address")?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
        after
            .strip_prefix(':')
            .ok_or("missing `:PORT` after the address")?
    } else {
        let (host, port) = s.rsplit_once(':').ok_or("missing `:PORT`")?;
        if host.is_empty() {
            return Err("missing the host before `:PORT`".to_owned());
        }
        if host.contains(':') {
            return Err("IPv6 addresses must be in brackets, as in \"[::1]:9001\"".to_owned());
        }
        if host.parse::<Ipv4Addr>().is_err() && DnsName::try_from(host).is_err() {
            return Err(format!("`{host}` is not a valid host name or IP address"));
        }
        port
    };
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be connected to".to_owned()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("`{port}` is not a port number (1-65535)")),
    }
}

/// Checks a name a client can send as TLS SNI or in a Host header.
pub(super) fn check_dns_name(name: &str) -> Result<(), String> {
    DnsName::try_from(name)
        .map(|_| ())
        .map_err(|_| format!("`{name}` is not a valid DNS name"))
}

/// `host` as the HTTP stage compares it, if it can be what a Host header names, port left
/// out: a DNS name or an IPv4 address, lower-cased, or a bracketed IPv6 address in its
/// shortest form (`[::1]` for `[0:0::1]`), which is how the HTTP stage writes the Host it got.
pub(super) fn normal_host(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(|ip| format!("[{ip}]"));
    }
    let ok = host.parse::<Ipv4Addr>().is_ok() || check_dns_name(host).is_ok();
    // A fully qualified `example.com.` names the same host; requests are compared without it.
    ok.then(|| host.trim_end_matches('.').to_ascii_lowercase())
}

/// Like [`check_dns_name`], also allowing a `*.` wildcard for exactly one leading label, the
/// form the SNI resolver matches.
pub(super) fn check_cert_name(name: &str) -> Result<(), String> {
    match name.strip_prefix("*.") {
        Some(rest) if !rest.contains('*') => check_dns_name(rest),
        _ if name.contains('*') => Err(format!(
            "`{name}`: `*` may only stand for the whole first label, as in \"*.example.com\""
        )),
        _ => check_dns_name(name),
    }
}

/// The candidate closest to `name`, if it is a plausible typo (edit distance at most 2).
pub(super) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            row[j + 1] = substitute.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    prev[b.len()]
}

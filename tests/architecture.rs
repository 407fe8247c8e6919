//! The module map: which module may import which. Every import points down the layers
//! drawn in the README's "How it works"; a module that needs one it may not use is a sign
//! that something sits in the wrong room. Change [`ALLOWED`] on purpose, when the design
//! changes, never to make an import compile.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module and the modules it may import, top of the stack first.
const ALLOWED: &[(&str, &[&str])] = &[
    // The binary: CLI, signals, the demo backends, dev certificates.
    (
        "main",
        &[
            "upgrade", "gateway", "handoff", "config", "workers", "certs", "error", "io",
        ],
    ),
    // Binary upgrade: the control socket, starting the new binary, the handover; drives the
    // gateway through its Handle.
    ("upgrade", &["gateway", "handoff", "error"]),
    // lib.rs: the control plane (snapshot swap, reload, listeners, Handle).
    (
        "gateway",
        &[
            "admin",
            "listener",
            "services",
            "snapshot",
            "handoff",
            "config",
            "metrics",
            "live",
            "workers",
            "error",
            "shed",
            "certwatch",
        ],
    ),
    // Shedding: picks connections and closes them over a window, by id, through the live
    // table; part of the control plane, split out of lib.rs.
    ("shed", &["services", "live"]),
    // Watches the certificate files of the config in force; the gateway applies what it
    // re-reads.
    ("certwatch", &["certs", "config", "metrics", "error"]),
    // Asks the gateway through `admin::Control`; reaches no connection itself.
    ("admin", &["config", "live"]),
    (
        "listener",
        &[
            "conn", "services", "snapshot", "limits", "handoff", "live", "io", "workers", "config",
            "shutdown",
        ],
    ),
    // The pipeline: calls every stage in order and maps their errors and ends.
    (
        "conn",
        &[
            "http",
            "proxy_header",
            "tls",
            "detect",
            "client_hello",
            "route",
            "limits",
            "upstream",
            "relay",
            "services",
            "snapshot",
            "live",
            "metrics",
            "shutdown",
            "io",
            "error",
            "config",
        ],
    ),
    // The HTTP stage routes and connects per request, so it uses route and upstream.
    (
        "http",
        &[
            "route", "upstream", "services", "snapshot", "live", "metrics", "io", "error", "config",
        ],
    ),
    // The UDP pipeline: per-client sessions on a udp listener's socket; picks the route and
    // server for each new session and hands its datagrams to the UDP relay.
    (
        "udp",
        &[
            "route", "upstream", "relay", "services", "live", "metrics", "io", "error", "config",
        ],
    ),
    // What every connection shares: the snapshot in force, metrics, live table, drain.
    ("services", &["snapshot", "metrics", "live", "shutdown"]),
    // The config in force and what is built from it for the stages.
    (
        "snapshot",
        &["route", "upstream", "tls", "config", "metrics", "limits"],
    ),
    // The PROXY header a load balancer puts before the client's bytes.
    ("proxy_header", &["io"]),
    ("tls", &["certs", "config", "io"]),
    ("detect", &["io"]),
    // The server name in a TLS ClientHello, for passthrough routes: a pure parser.
    ("client_hello", &[]),
    ("route", &["upstream", "config", "metrics"]),
    // Backend TLS builds its client configurations with the crypto provider `certs` holds.
    ("upstream", &["config", "metrics", "io", "error", "certs"]),
    // A relay knows its two streams, its counters and limits, and the drain signal.
    (
        "relay",
        &["live", "metrics", "shutdown", "io", "error", "config"],
    ),
    // Low modules: used by the layers above, runs nothing of theirs.
    ("live", &["config", "metrics"]),
    ("config", &["certs", "error"]),
    ("io", &[]),
    // Per-client-address counts of one listener, bounded in memory.
    ("limits", &[]),
    // Listening sockets passed to a new process over a Unix socket (SCM_RIGHTS).
    ("handoff", &[]),
    ("certs", &[]),
    ("metrics", &[]),
    ("shutdown", &[]),
    ("workers", &[]),
    ("error", &[]),
];

/// The module a source file belongs to, by its path under `src/`.
fn module_of(path: &Path) -> String {
    let rel: Vec<String> = path
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    match rel.as_slice() {
        [file] if file == "lib" => "gateway".into(),
        [file] if file == "main" || file == "demo" || file == "certgen" => "main".into(),
        [dir, sub, ..] if dir == "conn" && sub == "http" => "http".into(),
        [dir, sub] if dir == "conn" && sub == "udp" => "udp".into(),
        [first, ..] => first.clone(),
        [] => unreachable!("a file has a name"),
    }
}

/// The top-level modules a file's code names: through `crate::` (or `sockgate::` in the
/// binary), through `super::` (`up` is the module that resolves to), and, in lib.rs, by
/// their bare names. Comments and the unit tests at the end of a file are left out.
fn imports(source: &str, binary: bool, up: Option<&str>, root: bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut code = String::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            match lines.peek().map(|l| l.trim()) {
                Some(next) if next.starts_with("mod tests;") => {
                    lines.next();
                    continue;
                }
                Some(next) if next.starts_with("mod tests") => break,
                _ => {}
            }
        }
        if trimmed.starts_with("//") {
            continue;
        }
        // lib.rs's doors for the benchmarks re-export what they measure; not an import.
        if line.starts_with("pub mod bench {") {
            for inner in lines.by_ref() {
                if inner == "}" {
                    break;
                }
            }
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    let mut roots: Vec<(String, Option<String>)> = vec![(
        if binary { "sockgate::" } else { "crate::" }.to_owned(),
        None,
    )];
    if let Some(up) = up {
        roots.push(("super::".to_owned(), Some(up.to_owned())));
    }
    if root {
        for (m, _) in ALLOWED {
            roots.push((format!("{m}::"), Some((*m).to_owned())));
        }
    }
    for (root, fixed) in &roots {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(root.as_str()) {
            // Not a longer path ending in the root's name (`my_crate::`, `self.io::`).
            let before = rest[..at].chars().next_back();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '.') {
                continue;
            }
            if let Some(fixed) = fixed {
                found.insert(fixed.clone());
            } else if let Some(group) = rest.strip_prefix('{') {
                let end = matching_brace(group);
                for item in split_top_level(&group[..end]) {
                    found.insert(first_ident(item));
                }
            } else {
                found.insert(first_ident(rest));
            }
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

/// The module `super::` names from a file: the parent of its module path.
fn parent_module(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = path
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.pop();
    if parts.is_empty() {
        return Some("gateway".into());
    }
    Some(module_of(&parts.iter().collect::<PathBuf>()))
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Items of lib.rs named from the crate root (`crate::Handle`, `sockgate::start`): the gateway.
const GATEWAY_ITEMS: &[&str] = &[
    "start",
    "start_on",
    "start_adopting",
    "Handle",
    "ReloadError",
    "StartError",
    "Gateway",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    ALLOWED
        .iter()
        .map(|(m, uses)| (*m, uses.iter().copied().collect()))
        .collect()
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let table = allowed();
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        // Unit-test files may reach anything they test.
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let module = module_of(rel);
        let Some(may) = table.get(module.as_str()) else {
            problems.push(format!(
                "{}: module `{module}` is not in the map; add it to ALLOWED in tests/architecture.rs",
                rel.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(file).expect("a source file is readable");
        let binary = module == "main";
        let is_root = rel == Path::new("lib.rs");
        let up = if binary || is_root {
            None
        } else {
            parent_module(rel)
        };
        for import in imports(&source, binary, up.as_deref(), is_root) {
            let import = if GATEWAY_ITEMS.contains(&import.as_str()) {
                "gateway".to_owned()
            } else if import == "http" && module == "conn" {
                // `conn` owns `conn::http`.
                import
            } else if binary && (import == "demo" || import == "certgen") {
                continue;
            } else {
                import
            };
            if import == module {
                continue;
            }
            if !may.contains(import.as_str()) {
                problems.push(format!(
                    "{}: `{module}` imports `{import}`, which it may not (it may use: {})",
                    rel.display(),
                    may.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports that run against the layers:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_map_has_no_cycles() {
    let table = allowed();
    fn visit<'a>(
        m: &'a str,
        table: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(
            !path.contains(&m),
            "the map has a cycle: {} -> {m}",
            path.join(" -> ")
        );
        path.push(m);
        for next in table.get(m).into_iter().flatten() {
            assert!(
                table.contains_key(next),
                "`{m}` may use `{next}`, which is not in the map"
            );
            visit(next, table, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in table.keys() {
        visit(m, &table, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_reader_finds_grouped_and_plain_imports_but_not_comments_or_tests() {
    let source = "use crate::config::{self, Protocol};\n\
                  use crate::{io::Rewind, live::ConnCtx};\n\
                  // crate::admin is named in a comment only\n\
                  fn f() { crate::metrics::Metrics::new(); }\n\
                  #[cfg(test)]\n\
                  mod tests { use crate::gateway; }\n";
    let found: Vec<String> = imports(source, false, None, false).into_iter().collect();
    assert_eq!(found, ["config", "io", "live", "metrics"]);
    let nested = "use super::Cancel;\n#[cfg(test)]\nmod tests;\nfn g() { crate::io::x(); }\n";
    let found: Vec<String> = imports(nested, false, Some("relay"), false)
        .into_iter()
        .collect();
    assert_eq!(found, ["io", "relay"]);
    assert_eq!(
        parent_module(Path::new("conn/http.rs")).as_deref(),
        Some("conn")
    );
    assert_eq!(
        parent_module(Path::new("conn/http/headers.rs")).as_deref(),
        Some("http")
    );
    assert_eq!(
        parent_module(Path::new("listener.rs")).as_deref(),
        Some("gateway")
    );
    assert_eq!(
        parent_module(Path::new("io/mod.rs")).as_deref(),
        Some("gateway")
    );
}

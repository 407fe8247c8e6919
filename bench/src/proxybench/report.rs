//! results.md, the SVG charts, the configs and the raw runs of one invocation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::load::Load;
use crate::machine::{self, Environment};
use crate::proxies::{Service, Target};
use crate::svg::{self, Bar, Chart, Group, Series};
use crate::{Case, Kind, Metric, Record, Settings};

pub struct Written {
    /// The results table, also printed on stdout.
    pub table: String,
}

pub fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// A whole number with thousands separators: 12,345.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// A figure with as many decimals as its size deserves.
pub fn value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "–".into()
    } else if a >= 1000.0 {
        thousands(v)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn rate_unit(case: &Case) -> &'static str {
    match case.kind {
        Kind::Load(Load::Bulk { .. }, _) => "Gbit/s",
        Kind::Load(Load::RequestResponse { .. }, _) => "req/s",
        Kind::Load(Load::Handshake { .. }, _) => "handshakes/s",
        Kind::Load(Load::Wss { .. } | Load::WssPaced { .. }, _) => "msg/s",
        Kind::Load(Load::Connect { .. }, _) => "conn/s",
        Kind::Load(Load::H2Requests { .. }, _) => "req/s",
        Kind::Load(Load::H2Wss { .. }, _) => "msg/s",
        Kind::Idle { .. } => "",
        Kind::Udp(_) => "datagrams/s",
    }
}

/// WebSocket and HTTP/2 round trips are shown in ms, TCP ones in µs.
fn latency_in_ms(case: &Case) -> bool {
    matches!(
        case.kind,
        Kind::Load(
            Load::Wss { .. } | Load::H2Requests { .. } | Load::H2Wss { .. },
            _
        )
    )
}

pub fn unit(case: &Case, metric: Metric) -> &'static str {
    match metric {
        Metric::Rate => rate_unit(case),
        Metric::P50 | Metric::P99 | Metric::P999 if latency_in_ms(case) => "ms",
        Metric::P50 | Metric::P99 | Metric::P999 | Metric::CpuPerOp => "µs",
        Metric::RssPerConnection => "KiB",
        Metric::Lost => "datagrams",
    }
}

/// Stored values are µs for latency; this is what the report shows.
fn shown(case: &Case, metric: Metric, v: f64) -> f64 {
    if matches!(metric, Metric::P50 | Metric::P99 | Metric::P999) && latency_in_ms(case) {
        v / 1e3
    } else {
        v
    }
}

pub fn figure(case: &Case, metric: Metric) -> String {
    let per = match case.kind {
        Kind::Load(Load::Handshake { .. }, _) => "handshake",
        Kind::Udp(_) => "datagram",
        Kind::Load(Load::H2Requests { .. }, _) => "request",
        Kind::Load(Load::H2Wss { .. }, _) => "message",
        _ => "connection",
    };
    match metric {
        Metric::Rate => rate_unit(case).to_string(),
        Metric::P50 => format!("p50 ({})", unit(case, metric)),
        Metric::P99 => format!("p99 ({})", unit(case, metric)),
        Metric::P999 => format!("p99.9 ({})", unit(case, metric)),
        Metric::CpuPerOp => format!("proxy CPU per {per} (µs)"),
        Metric::RssPerConnection => "RSS per connection (KiB)".into(),
        Metric::Lost => "datagrams lost (no echo in 200 ms)".into(),
    }
}

fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Rate => "rate",
        Metric::P50 => "p50",
        Metric::P99 => "p99",
        Metric::P999 => "p99.9",
        Metric::CpuPerOp => "CPU/op",
        Metric::RssPerConnection => "RSS/conn",
        Metric::Lost => "lost",
    }
}

/// For the progress lines on stderr.
pub fn short(case: &Case, metric: Metric, v: f64) -> String {
    let v = shown(case, metric, v);
    match metric {
        Metric::Rate => format!("{} {}", value(v), unit(case, metric)),
        Metric::Lost => format!("lost {}", thousands(v)),
        _ => format!(
            "{} {} {}",
            metric_name(metric),
            value(v),
            unit(case, metric)
        ),
    }
}

pub fn metrics_of(case: &Case) -> Vec<Metric> {
    match case.kind {
        Kind::Load(Load::Bulk { .. }, _) => vec![Metric::Rate],
        Kind::Load(Load::RequestResponse { .. }, _) => {
            vec![Metric::Rate, Metric::P50, Metric::P99, Metric::P999]
        }
        Kind::Load(Load::Wss { .. } | Load::WssPaced { .. }, _) => {
            vec![Metric::Rate, Metric::P50, Metric::P99]
        }
        Kind::Load(Load::Handshake { .. } | Load::Connect { .. }, _) => {
            vec![Metric::Rate, Metric::CpuPerOp]
        }
        Kind::Load(Load::H2Requests { .. } | Load::H2Wss { .. }, _) => {
            vec![Metric::Rate, Metric::P50, Metric::P99, Metric::CpuPerOp]
        }
        Kind::Idle { .. } => vec![Metric::RssPerConnection],
        Kind::Udp(_) => vec![
            Metric::Rate,
            Metric::P50,
            Metric::P99,
            Metric::CpuPerOp,
            Metric::Lost,
        ],
    }
}

/// The medians of one row at one target, and the runs they come from.
struct Stat {
    median: f64,
    low: f64,
    high: f64,
    /// Per repeat, NaN where the run failed.
    runs: Vec<f64>,
}

fn stat(records: &[Record], case: usize, target: Target, metric: Metric) -> Option<Stat> {
    let runs: Vec<f64> = records
        .iter()
        .filter(|r| r.case == case && r.target == target)
        .map(|r| match &r.result {
            Ok(m) => m.values.get(&metric).copied().unwrap_or(f64::NAN),
            Err(_) => f64::NAN,
        })
        .collect();
    if runs.is_empty() {
        return None;
    }
    let ok: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
    Some(Stat {
        median: sockgate_bench::stats::median(runs.clone()),
        low: ok.iter().copied().fold(f64::INFINITY, f64::min),
        high: ok.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        runs,
    })
}

pub fn median_of(records: &[Record], case: usize, target: Target, metric: Metric) -> Option<f64> {
    stat(records, case, target, metric)
        .map(|s| s.median)
        .filter(|v| v.is_finite())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

pub fn color(target: Target) -> &'static str {
    match target {
        Target::Direct => "#9e9e9e",
        Target::Haproxy => "#1f77b4",
        Target::Nginx => "#2ca02c",
        Target::Sockgate => "#e6550d",
    }
}

/// The results table: one row per scenario figure, medians, and the ratios.
fn results_table(cases: &[Case], records: &[Record], settings: &Settings) -> String {
    let has = |t: Target| settings.targets.contains(&t);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| # | scenario | figure | direct | HAProxy | nginx | sockgate | sockgate ÷ HAProxy | sockgate ÷ direct | nginx ÷ HAProxy | nginx ÷ direct | HAProxy ÷ direct |"
    );
    let _ = writeln!(out, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (i, case) in cases.iter().enumerate() {
        for metric in metrics_of(case) {
            let m = |t: Target| {
                if !has(t) || !case.applies(t, metric) {
                    None
                } else {
                    median_of(records, i, t, metric).map(|v| shown(case, metric, v))
                }
            };
            let cell = |t: Target| {
                if !has(t) {
                    return "–".to_string();
                }
                if !case.applies(t, metric) {
                    return "n/a".to_string();
                }
                match m(t) {
                    Some(v) if metric == Metric::Lost => thousands(v),
                    Some(v) => value(v),
                    None => "failed".into(),
                }
            };
            let (d, h, n, s) = (
                m(Target::Direct),
                m(Target::Haproxy),
                m(Target::Nginx),
                m(Target::Sockgate),
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | **{}** | **{}** | {} | {} | {} | {} |",
                case.scenario,
                case.name,
                figure(case, metric),
                cell(Target::Direct),
                cell(Target::Haproxy),
                cell(Target::Nginx),
                cell(Target::Sockgate),
                ratio(s, h),
                ratio(s, d),
                ratio(n, h),
                ratio(n, d),
                ratio(h, d),
            );
        }
    }
    out
}

struct Check {
    goal: &'static str,
    row: String,
    measured: String,
    met: Option<bool>,
    margin: String,
}

/// Issue 4's targets for sockgate (and issue 10's for stalled connections), each against
/// this run's own figures.
fn checks(cases: &[Case], records: &[Record]) -> Vec<Check> {
    let mut out = Vec::new();
    let get = |i: usize, t: Target, m: Metric| median_of(records, i, t, m);
    for (i, case) in cases.iter().enumerate() {
        // Scenario 8 has no HAProxy figure to hold sockgate to (no UDP in its community
        // edition), and no target of its own.
        if matches!(case.kind, Kind::Udp(_)) {
            continue;
        }
        let sg = |m| get(i, Target::Sockgate, m);
        let hap = |m| get(i, Target::Haproxy, m);
        // Every throughput, rate and handshake row: at least 1.3× HAProxy.
        if metrics_of(case).contains(&Metric::Rate) {
            let (s, h) = (sg(Metric::Rate), hap(Metric::Rate));
            out.push(match (s, h) {
                (Some(s), Some(h)) => Check {
                    goal: "≥ 1.3× HAProxy",
                    row: format!("{} ({})", case.name, rate_unit(case)),
                    measured: format!("{} vs {} = {:.2}×", value(s), value(h), s / h),
                    met: Some(s / h >= 1.3),
                    margin: relative(s / h, 1.3),
                },
                _ => missing("≥ 1.3× HAProxy", case, rate_unit(case)),
            });
        }
        // Every p99 at most HAProxy's.
        if metrics_of(case).contains(&Metric::P99) {
            let (s, h) = (sg(Metric::P99), hap(Metric::P99));
            let u = unit(case, Metric::P99);
            out.push(match (s, h) {
                (Some(s), Some(h)) => Check {
                    goal: "p99 ≤ HAProxy's",
                    row: format!("{} (p99)", case.name),
                    measured: format!(
                        "{} vs {} {u} = {:.2}×",
                        value(shown(case, Metric::P99, s)),
                        value(shown(case, Metric::P99, h)),
                        s / h
                    ),
                    met: Some(s <= h),
                    margin: if s <= h {
                        format!("{:.0}% lower", (1.0 - s / h) * 100.0)
                    } else {
                        format!("{:.0}% higher", (s / h - 1.0) * 100.0)
                    },
                },
                _ => missing("p99 ≤ HAProxy's", case, "p99"),
            });
        }
        // Memory per idle WebSocket connection (issue 4), and per connection stalled in the
        // middle of a TLS record (issue 10: a few bytes must not pin the big buffers).
        if let Kind::Idle { stalled, .. } = case.kind {
            let goal = if stalled {
                "≤ 10 KiB per wss connection stalled mid-record"
            } else {
                "≤ 10 KiB per idle wss connection"
            };
            let s = sg(Metric::RssPerConnection);
            out.push(match s {
                Some(s) => Check {
                    goal,
                    row: case.name.clone(),
                    measured: format!(
                        "{s:.1} KiB (HAProxy {}, nginx {})",
                        get(i, Target::Haproxy, Metric::RssPerConnection)
                            .map_or("–".into(), |v| format!("{v:.1} KiB")),
                        get(i, Target::Nginx, Metric::RssPerConnection)
                            .map_or("–".into(), |v| format!("{v:.1} KiB")),
                    ),
                    met: Some(s <= 10.0),
                    margin: limit(s, 10.0, "KiB", 1),
                },
                None => missing(goal, case, "KiB"),
            });
        }
        // Plain TCP bulk at least half of direct.
        if case.scenario == 1 {
            let (s, d) = (sg(Metric::Rate), get(i, Target::Direct, Metric::Rate));
            out.push(match (s, d) {
                (Some(s), Some(d)) => Check {
                    goal: "plain TCP bulk ≥ 0.5× direct",
                    row: case.name.clone(),
                    measured: format!("{} vs {} Gbit/s = {:.2}×", value(s), value(d), s / d),
                    met: Some(s / d >= 0.5),
                    margin: relative(s / d, 0.5),
                },
                _ => missing("plain TCP bulk ≥ 0.5× direct", case, "Gbit/s"),
            });
        }
        // Proxy CPU per full TLS handshake.
        if matches!(case.kind, Kind::Load(Load::Handshake { .. }, _)) {
            let s = sg(Metric::CpuPerOp);
            out.push(match s {
                Some(s) => Check {
                    goal: "proxy CPU per TLS handshake ≤ 200 µs",
                    row: case.name.clone(),
                    measured: format!(
                        "{s:.0} µs (HAProxy {}, nginx {})",
                        get(i, Target::Haproxy, Metric::CpuPerOp)
                            .map_or("–".into(), |v| format!("{v:.0} µs")),
                        get(i, Target::Nginx, Metric::CpuPerOp)
                            .map_or("–".into(), |v| format!("{v:.0} µs")),
                    ),
                    met: Some(s <= 200.0),
                    margin: limit(s, 200.0, "µs", 0),
                },
                None => missing("proxy CPU per TLS handshake ≤ 200 µs", case, "µs"),
            });
        }
    }
    out
}

/// How far a ratio is above (or below) the ratio required.
fn relative(ratio: f64, required: f64) -> String {
    let by = (ratio / required - 1.0) * 100.0;
    if by >= 0.0 {
        format!("{by:.0}% above the {required}× needed")
    } else {
        format!("{:.0}% below the {required}× needed", -by)
    }
}

/// How far a value is under (or over) a ceiling.
fn limit(v: f64, max: f64, unit: &str, decimals: usize) -> String {
    if v <= max {
        format!("{:.*} {unit} under the limit", decimals, max - v)
    } else {
        format!(
            "{:.*} {unit} over the limit ({:.1}×)",
            decimals,
            v - max,
            v / max
        )
    }
}

fn missing(goal: &'static str, case: &Case, what: &str) -> Check {
    Check {
        goal,
        row: format!("{} ({what})", case.name),
        measured: "no figure (target left out or failed)".into(),
        met: None,
        margin: "–".into(),
    }
}

fn checks_table(checks: &[Check]) -> String {
    let mut out = String::new();
    let met = checks.iter().filter(|c| c.met == Some(true)).count();
    let judged = checks.iter().filter(|c| c.met.is_some()).count();
    let _ = writeln!(
        out,
        "{met} of {judged} targets met (each judged on this run's medians).\n"
    );
    let _ = writeln!(
        out,
        "| target | row | sockgate (vs reference) | met | margin |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for c in checks {
        let verdict = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {verdict} | {} |",
            c.goal, c.row, c.measured, c.margin
        );
    }
    out
}

/// Proxy CPU per unit of work, from CPU seconds per unit of the row's rate: µs per
/// operation, or ms per GB moved for bulk rows (whose rate is in Gbit/s).
fn cpu_per_work(case: &Case, seconds_per_unit: f64) -> String {
    if !seconds_per_unit.is_finite() {
        return "–".into();
    }
    match case.kind {
        Kind::Load(Load::Bulk { .. }, _) => format!("{} ms/GB", value(seconds_per_unit * 8e3)),
        _ => format!("{} µs/op", value(seconds_per_unit * 1e6)),
    }
}

fn cores_table(cases: &[Case], records: &[Record], settings: &Settings) -> String {
    let proxies: Vec<Target> = settings
        .targets
        .iter()
        .copied()
        .filter(|t| t.is_proxy())
        .collect();
    let mut out = String::new();
    let _ = write!(out, "| scenario |");
    for t in &proxies {
        let _ = write!(out, " {t}: cores | {t}: CPU per work |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "--:|--:|".repeat(proxies.len()));
    for (i, case) in cases.iter().enumerate() {
        if !matches!(case.kind, Kind::Load(..) | Kind::Udp(_)) {
            continue;
        }
        let _ = write!(out, "| {} |", case.name);
        for &t in &proxies {
            if !case.runs_at(t) {
                let _ = write!(out, " n/a | n/a |");
                continue;
            }
            let runs: Vec<&crate::Measured> = records
                .iter()
                .filter(|r| r.case == i && r.target == t)
                .filter_map(|r| r.result.as_ref().ok())
                .collect();
            let cores = sockgate_bench::stats::median(runs.iter().map(|m| m.proxy_cores).collect());
            // Per run, then the median: a slow run is also a cheap one in cores.
            let per_work = sockgate_bench::stats::median(
                runs.iter()
                    .filter_map(|m| m.values.get(&Metric::Rate).map(|r| m.proxy_cores / r))
                    .collect(),
            );
            if runs.is_empty() && !case.applies(t, Metric::Rate) {
                let _ = write!(out, " n/a | n/a |");
                continue;
            }
            let _ = write!(out, " {:.2} | {} |", cores, cpu_per_work(case, per_work));
        }
        let _ = writeln!(out);
    }
    out
}

fn runs_table(cases: &[Case], records: &[Record], settings: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | figure | target | each run | failed connections | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|--:|---|");
    for (i, case) in cases.iter().enumerate() {
        for metric in metrics_of(case) {
            for &t in &settings.targets {
                if !case.applies(t, metric) {
                    continue;
                }
                let Some(s) = stat(records, i, t, metric) else {
                    continue;
                };
                let runs: Vec<String> = s
                    .runs
                    .iter()
                    .map(|v| {
                        if v.is_finite() && metric == Metric::Lost {
                            thousands(*v)
                        } else if v.is_finite() {
                            value(shown(case, metric, *v))
                        } else {
                            "failed".into()
                        }
                    })
                    .collect();
                let these = records.iter().filter(|r| r.case == i && r.target == t);
                let errors: u64 = these
                    .clone()
                    .filter_map(|r| r.result.as_ref().ok().map(|m| m.errors))
                    .sum();
                let notes: Vec<String> = these
                    .filter_map(|r| r.result.as_ref().ok().map(|m| m.note.clone()))
                    .filter(|n| !n.is_empty())
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {t} | {} | {errors} | {} |",
                    case.name,
                    figure(case, metric),
                    runs.join(", "),
                    notes.join("; ")
                );
            }
        }
    }
    out
}

/// What TLS settled on at each target, for the TLS and the wss frontends.
fn negotiated(cases: &[Case], records: &[Record]) -> String {
    let mut seen: BTreeMap<(Target, &'static str), BTreeSet<String>> = BTreeMap::new();
    for r in records {
        let Ok(m) = &r.result else { continue };
        let Some(n) = m.negotiated.as_ref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let frontend = match cases[r.case].kind {
            Kind::Load(_, Service::Wss) => "wss",
            Kind::Load(_, Service::H2) => "h2",
            _ => "TLS TCP",
        };
        seen.entry((r.target, frontend))
            .or_default()
            .insert(n.clone());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| target | frontend | negotiated (version, cipher suite, key exchange) |"
    );
    let _ = writeln!(out, "|---|---|---|");
    for ((t, frontend), set) in seen {
        let list: Vec<String> = set.into_iter().collect();
        let _ = writeln!(out, "| {t} | {frontend} | {} |", list.join("; "));
    }
    out
}

/// One chart per scenario and kind of figure, plus one of every rate relative to HAProxy.
fn charts(
    out_dir: &Path,
    cases: &[Case],
    records: &[Record],
    settings: &Settings,
) -> anyhow::Result<Vec<(String, String)>> {
    let series: Vec<Series> = settings
        .targets
        .iter()
        .map(|t| Series {
            name: t.label().into(),
            color: color(*t),
        })
        .collect();
    let bar = |i: usize, t: Target, m: Metric| -> Option<Bar> {
        if !cases[i].applies(t, m) {
            return None;
        }
        stat(records, i, t, m).map(|s| Bar {
            value: shown(&cases[i], m, s.median),
            low: shown(&cases[i], m, s.low),
            high: shown(&cases[i], m, s.high),
        })
    };
    // Charts keyed by scenario, kind of figure and unit, in the order met.
    let mut order: Vec<(u8, &'static str, &'static str)> = Vec::new();
    let mut groups: BTreeMap<(u8, &'static str, &'static str), Vec<Group>> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        for metric in metrics_of(case) {
            let family = match metric {
                Metric::Rate => "rate",
                Metric::P50 | Metric::P99 | Metric::P999 => "latency",
                Metric::CpuPerOp => "cpu",
                Metric::RssPerConnection => "memory",
                // Counts, mostly zero: the table has them.
                Metric::Lost => continue,
            };
            let key = (case.scenario, family, unit(case, metric));
            if !order.contains(&key) {
                order.push(key);
            }
            let label = match metric {
                Metric::Rate | Metric::CpuPerOp | Metric::RssPerConnection => case.short.clone(),
                _ => format!("{} {}", case.short, metric_name(metric)),
            };
            groups.entry(key).or_default().push(Group {
                label,
                bars: settings
                    .targets
                    .iter()
                    .map(|&t| bar(i, t, metric))
                    .collect(),
            });
        }
    }
    let mut written = Vec::new();
    for key in order {
        let (scenario, family, unit) = key;
        let title = match family {
            "rate" => format!("Scenario {scenario}: {unit} (higher is better)"),
            "latency" => format!("Scenario {scenario}: round-trip latency (lower is better)"),
            "cpu" => format!("Scenario {scenario}: proxy CPU per operation (lower is better)"),
            _ => format!(
                "Scenario {scenario}: proxy RSS per idle or stalled connection (lower is better)"
            ),
        };
        let lines = match family {
            "cpu" if scenario == 3 => vec![(200.0, "target ≤ 200 µs".to_string())],
            "memory" => vec![(10.0, "target ≤ 10 KiB".to_string())],
            _ => Vec::new(),
        };
        let slug: String = unit
            .replace('µ', "u")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_lowercase();
        let file = format!("s{scenario}-{family}-{slug}.svg");
        // A target with no figure in any group (direct, for proxy CPU and memory) gets
        // no bar slot.
        let mut groups = groups.remove(&key).unwrap_or_default();
        let keep: Vec<bool> = (0..series.len())
            .map(|si| groups.iter().any(|g| g.bars[si].is_some()))
            .collect();
        for g in &mut groups {
            let bars = std::mem::take(&mut g.bars);
            g.bars = bars
                .into_iter()
                .zip(&keep)
                .filter_map(|(b, k)| k.then_some(b))
                .collect();
        }
        let chart = Chart {
            title,
            unit: unit.to_string(),
            series: series
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(s, _)| Series {
                    name: s.name.clone(),
                    color: s.color,
                })
                .collect(),
            groups,
            lines,
        };
        std::fs::write(out_dir.join(&file), svg::render(&chart))?;
        written.push((file, chart.title));
    }

    // Every rate relative to HAProxy.
    if settings.targets.contains(&Target::Haproxy) {
        let others: Vec<Target> = [Target::Nginx, Target::Sockgate]
            .into_iter()
            .filter(|t| settings.targets.contains(t))
            .collect();
        let mut groups = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            if !metrics_of(case).contains(&Metric::Rate) || matches!(case.kind, Kind::Udp(_)) {
                continue;
            }
            let h = median_of(records, i, Target::Haproxy, Metric::Rate);
            groups.push(Group {
                label: case.short.clone(),
                bars: others
                    .iter()
                    .map(|&t| {
                        let s = stat(records, i, t, Metric::Rate)?;
                        let h = h?;
                        Some(Bar {
                            value: s.median / h,
                            low: s.low / h,
                            high: s.high / h,
                        })
                    })
                    .collect(),
            });
        }
        let file = "ratio-to-haproxy.svg".to_string();
        let chart = Chart {
            title: "Every rate relative to HAProxy's in the same run (higher is better)".into(),
            unit: "× HAProxy".into(),
            series: others
                .iter()
                .map(|t| Series {
                    name: t.label().into(),
                    color: color(*t),
                })
                .collect(),
            groups,
            lines: vec![
                (1.0, "HAProxy".to_string()),
                (1.3, "target 1.3×".to_string()),
            ],
        };
        std::fs::write(out_dir.join(&file), svg::render(&chart))?;
        written.insert(0, (file, chart.title));
    }
    Ok(written)
}

#[allow(clippy::too_many_arguments)]
pub fn write(
    out_dir: &Path,
    cases: &[Case],
    records: &[Record],
    settings: &Settings,
    env: &Environment,
    configs: &BTreeMap<String, String>,
    work_dir: &Path,
    elapsed: Duration,
) -> anyhow::Result<Written> {
    let table = results_table(cases, records, settings);
    let checks = checks(cases, records);
    let charts = charts(out_dir, cases, records, settings)?;
    let date = machine::today();
    let mut md = String::new();
    let smoke = if settings.smoke { " (smoke run)" } else { "" };
    let _ = writeln!(md, "# sockgate vs HAProxy vs nginx, {date}{smoke}\n");
    let _ = writeln!(
        md,
        "The same load, from the same client process, through each proxy and straight at the backends (`direct`), in one run on one machine, all on 127.0.0.1. Each figure is the median of {} run{}; each run measured {:.1} s after {:.1} s of warm-up. Proxies took turns within each repeat (the order rotates), and each repeat went through every scenario, so drift on the machine fell on all of them alike. Written by `proxybench` (bench/src/proxybench); see bench/README.md for what each scenario does.\n",
        settings.repeats,
        if settings.repeats == 1 { "" } else { "s" },
        settings.timing.duration.as_secs_f64(),
        settings.timing.warmup.as_secs_f64(),
    );
    if settings.smoke {
        let _ = writeln!(
            md,
            "**Smoke run**: about a second per scenario, few connections, one repeat. It shows that the suite runs, not how fast anything is.\n"
        );
    }
    for (target, why) in &settings.missing {
        let _ = writeln!(
            md,
            "**{target} left out**: {why} (and it could not be installed), so its columns and the ratios to it are empty.\n"
        );
    }

    let _ = writeln!(md, "## Machine\n");
    for (k, v) in &env.machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "- load average (1, 5, 15 min): {} before, {} after",
        env.load_before,
        machine::load_average()
    );
    let _ = writeln!(md, "\n## Versions\n");
    for (k, v) in &env.versions {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "\n## Command\n");
    let args: Vec<String> = std::env::args().collect();
    if let Ok(command) = std::env::var("PROXYBENCH_COMMAND") {
        let _ = writeln!(md, "```sh\n{command}\n```\n");
        let _ = writeln!(md, "which ran\n");
    }
    let _ = writeln!(
        md,
        "```sh\n{}\n```\n\nin {:.1} minutes (builds not included).\n",
        args.join(" "),
        elapsed.as_secs_f64() / 60.0
    );

    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Medians. Ratios are of medians from this run: above 1 is more for rates, and worse for latency, CPU and memory. `direct` has no proxy: TCP to the backend, or TLS terminated by the backend itself. `n/a`: direct has no proxy CPU or memory to measure, and nginx 1.22 has no WebSockets over HTTP/2 (RFC 8441).\n"
    );
    let udp = cases.iter().any(|c| matches!(c.kind, Kind::Udp(_)));
    if udp {
        let _ = writeln!(
            md,
            "Scenario 8 (UDP): `n/a` for HAProxy, whose community edition does not proxy UDP (UDP load balancing is an HAProxy Enterprise module). Its rates count datagrams echoed (each relayed twice by the proxy, out and back), its CPU is per datagram echoed, and its lost datagrams are those whose echo had not come in 200 ms (another was sent instead), over the whole run.\n"
        );
    }
    md.push_str(&table);
    md.push_str(&crate::protected::section(
        cases, records, settings, configs,
    ));
    let _ = writeln!(md, "\n## sockgate against the targets of issues 4 and 10\n");
    md.push_str(&checks_table(&checks));
    let _ = writeln!(md, "\n## Charts\n");
    let _ = writeln!(
        md,
        "Bars are medians, whiskers the lowest and highest run.\n"
    );
    for (file, title) in &charts {
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    let _ = writeln!(md, "## Proxy CPU\n");
    let _ = writeln!(
        md,
        "Cores the proxy's processes kept busy during the measured part (user + system time from /proc/PID/stat, all processes of the proxy summed), and that CPU time per unit of work: per request, message, handshake or connection, or per GB moved in bulk rows (medians). The machine has {} cores, shared with the clients and the backends: where a proxy is not what limits a row (well under one core while the clients and backends fill the rest), the rates of the proxies come close together, and CPU per work is where they differ.\n",
        env.machine
            .first()
            .map_or("?".to_string(), |(_, v)| v.clone())
    );
    md.push_str(&cores_table(cases, records, settings));
    let _ = writeln!(md, "\n## TLS\n");
    let _ = writeln!(
        md,
        "All three proxies serve the same ECDSA P-256 certificate from `sockgate cert dev`. The clients are rustls (ring provider) offering TLS 1.3 only and never resuming, so every handshake is a full one; what each handshake settled on:\n"
    );
    md.push_str(&negotiated(cases, records));
    let _ = writeln!(md, "\n## Every run\n");
    md.push_str(&runs_table(cases, records, settings));
    let errors: Vec<&Record> = records.iter().filter(|r| r.result.is_err()).collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\n## Failed runs\n");
        for r in errors {
            if let Err(e) = &r.result {
                let _ = writeln!(
                    md,
                    "- {} at {}, repeat {}: `{}`",
                    cases[r.case].name,
                    r.target,
                    r.repeat + 1,
                    e.replace('`', "'").replace('\n', " ")
                );
            }
        }
    }
    let _ = writeln!(md, "\n## Configs\n");
    let _ = writeln!(
        md,
        "Next to this file, as each proxy ran them (`$RUN` is the run's temporary folder; ports were free ones picked at the start). Each proxy has four frontends to the same backends: plain TCP, TLS-terminated TCP, TLS-terminated WebSocket, and TLS-terminated HTTP/2 (ALPN h2) toward an HTTP/1.1 backend (scenario 7; nginx's upstream keeps idle backend connections with `keepalive`, as HAProxy does by default). HAProxy runs `nbthread 2` in the foreground (`-db`); nginx `worker_processes 2` with `daemon off`, the `stream` module for TCP and TLS, and `http` with `proxy_http_version 1.1` and the Upgrade and Connection headers for wss (what an operator writes to proxy WebSockets and still route on Host and path); sockgate `--workers 2` with `RUST_LOG=warn`. No access logs anywhere. Defaults otherwise: no `tune.*`, no `reuseport`, no splice options. Only the connection limits that would refuse scenario 5 were raised.\n"
    );
    if udp {
        let _ = writeln!(
            md,
            "Scenario 8 ran against instances of their own with a UDP frontend only (`nginx-udp.conf`, `sockgate-udp.toml`): nginx `listen … udp reuseport` (as nginx's UDP examples have it; sockgate's workers have a `SO_REUSEPORT` socket each too) with `proxy_timeout 60s` and no `proxy_responses`, sockgate a udp listener with the session defaults (60 s idle, 100,000 sessions).\n"
        );
    }
    for (name, text) in configs {
        let text = text.replace(&work_dir.to_string_lossy().into_owned(), "$RUN");
        std::fs::write(out_dir.join(name), text)?;
        let _ = writeln!(md, "- [{name}]({name})");
    }
    std::fs::write(out_dir.join("results.md"), &md)?;
    std::fs::write(out_dir.join("runs.json"), runs_json(cases, records)?)?;
    Ok(Written { table })
}

fn runs_json(cases: &[Case], records: &[Record]) -> anyhow::Result<String> {
    let runs: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let case = &cases[r.case];
            let mut v = serde_json::json!({
                "scenario": case.scenario,
                "case": case.name,
                "target": r.target.label(),
                "repeat": r.repeat + 1,
            });
            match &r.result {
                Ok(m) => {
                    for (metric, x) in &m.values {
                        v[format!("{} ({})", metric_name(*metric), unit(case, *metric))] =
                            serde_json::json!(shown(case, *metric, *x));
                    }
                    if m.proxy_cores.is_finite() {
                        v["proxy cores"] = serde_json::json!(m.proxy_cores);
                    }
                    v["errors"] = serde_json::json!(m.errors);
                    if let Some(n) = &m.negotiated {
                        v["tls"] = serde_json::json!(n);
                    }
                    if !m.note.is_empty() {
                        v["note"] = serde_json::json!(m.note);
                    }
                }
                Err(e) => v["error"] = serde_json::json!(e),
            }
            v
        })
        .collect();
    Ok(serde_json::to_string_pretty(&runs)?)
}

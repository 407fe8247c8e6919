//! The machine and the software a run was on, for the report.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proxies::Setup;

/// Labelled facts, in the order the report prints them.
pub struct Environment {
    pub machine: Vec<(&'static str, String)>,
    pub versions: Vec<(&'static str, String)>,
    pub load_before: String,
}

/// stdout and stderr of a command, trimmed; empty when it cannot run.
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.trim().to_string()
        })
        .unwrap_or_default()
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn describe(sockgate: &Path, setup: &Setup) -> Environment {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let machine = vec![
        ("nproc", output("nproc", &[])),
        ("CPU (/proc/cpuinfo model name)", cpu),
        ("memory (free -h)", free()),
        ("kernel (uname -srm)", output("uname", &["-srm"])),
        (
            "open files (ulimit -n, after raising)",
            output("sh", &["-c", "ulimit -n"]),
        ),
    ];
    let program = |p: &Path, args: &[&str]| {
        if p.as_os_str().is_empty() {
            "not installed".to_string()
        } else {
            first_line(&output(&p.to_string_lossy(), args))
        }
    };
    let versions = vec![
        ("sockgate", sockgate_version(sockgate)),
        ("HAProxy", program(&setup.haproxy, &["-v"])),
        ("nginx", program(&setup.nginx, &["-v"])),
        (
            "OpenSSL (HAProxy and nginx)",
            first_line(&output("openssl", &["version"])),
        ),
        ("rustc", first_line(&output("rustc", &["--version"]))),
    ];
    Environment {
        machine,
        versions,
        load_before: load_average(),
    }
}

fn free() -> String {
    let text = output("free", &["-h"]);
    text.lines()
        .find(|l| l.starts_with("Mem:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!(
                "{} total, {} available",
                f.get(1).unwrap_or(&"?"),
                f.get(6).unwrap_or(&"?")
            )
        })
        .unwrap_or(text)
}

/// `sockgate --version` and the commit of the work tree the binary was built in (the
/// binary's folder is inside it), marked `+dirty` when that tree has changes.
fn sockgate_version(binary: &Path) -> String {
    let version = first_line(&output(&binary.to_string_lossy(), &["--version"]));
    let dir = binary
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let commit = first_line(&output(
        "git",
        &["-C", &dir, "log", "-1", "--format=%h %s (%cs)"],
    ));
    if commit.is_empty() || commit.starts_with("fatal") {
        return version;
    }
    let dirty = output(
        "git",
        &["-C", &dir, "status", "--porcelain", "--untracked-files=no"],
    );
    let dirty = if dirty.is_empty() { "" } else { " +dirty" };
    format!("{version}, commit {commit}{dirty}")
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}

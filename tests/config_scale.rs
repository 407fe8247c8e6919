//! Config handling grows linearly with the config: validating and building the snapshot of
//! 20,000 routes (each with its own backend) costs about ten times what 2,000 cost. A name
//! looked up by a scan inside a loop makes the ratio about a hundred; the test allows 15.
//! A test binary of its own, so no other test shares the CPU while it times; it times on
//! the thread's CPU clock, so other processes on a busy machine do not move the ratio
//! either (on wall time a loaded 2-core machine pushed it from 10 to 16).
#![allow(clippy::unwrap_used)]

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use sockgate::bench::{Metrics, Snapshot};

/// One listener with `n` routes, each routed on its own host to its own backend.
fn config_text(n: usize) -> String {
    let mut text = String::from("[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n");
    for i in 0..n {
        writeln!(
            text,
            "  [[listener.route]]\n  name = \"r{i}\"\n  host = \"h{i}.example.com\"\n  backend = \"b{i}\"\n"
        )
        .unwrap();
    }
    for i in 0..n {
        writeln!(
            text,
            "[[backend]]\nname = \"b{i}\"\nservers = [\"127.0.0.1:{}\"]\n",
            1024 + i % 60_000
        )
        .unwrap();
    }
    text
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The fastest of three runs of check, snapshot build, and the build of a reload of the same
/// file after it (what a reload does before the swap).
fn fastest(text: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    (0..3)
        .map(|_| {
            let started = thread_cpu();
            let config =
                sockgate::config::from_str(text, Path::new("sockgate.toml"), dir.path()).unwrap();
            let metrics = Metrics::new();
            let first = Snapshot::build(config.clone(), &metrics).unwrap();
            // A reload of the same file: every backend looked up in the snapshot before.
            let second = Snapshot::build_after(config, &metrics, Some(&first)).unwrap();
            let took = thread_cpu() - started;
            drop((first, second));
            took
        })
        .min()
        .unwrap()
}

#[test]
fn twenty_thousand_routes_cost_about_ten_times_two_thousand() {
    let small = fastest(&config_text(2_000));
    let large = fastest(&config_text(20_000));
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    println!("2,000 routes: {small:?}; 20,000 routes: {large:?}; ratio {ratio:.1}");
    assert!(
        ratio < 15.0,
        "config handling grew faster than the config: 2,000 routes took {small:?}, 20,000 took {large:?} ({ratio:.1}×; linear is about 10×)"
    );
}

/// `n` backends that each draw a warning (`verify = false`) and, with `errors`, an error too
/// (weight 0): positions in the file are worked out for every one of them.
fn reported_text(n: usize, errors: bool) -> String {
    let mut text = String::from(
        "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n  [[listener.route]]\n  name = \"r\"\n  backend = \"b0\"\n\n",
    );
    let weight = if errors { 0 } else { 1 };
    for i in 0..n {
        writeln!(
            text,
            "[[backend]]\nname = \"b{i}\"\nservers = [{{ address = \"127.0.0.1:{}\", weight = {weight} }}]\ntls = {{ verify = false }}\n",
            1024 + i % 60_000
        )
        .unwrap();
    }
    text
}

/// The fastest of three checks of `text`, which may fail.
fn fastest_check(text: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    (0..3)
        .map(|_| {
            let started = thread_cpu();
            let checked = sockgate::config::from_str(text, Path::new("sockgate.toml"), dir.path());
            let took = thread_cpu() - started;
            drop(checked);
            took
        })
        .min()
        .unwrap()
}

/// One backend of `n` servers written on one line, each of weight 0: `n` errors on one line.
fn one_line_text(n: usize) -> String {
    let servers: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ address = \"127.0.0.1:{}\", weight = 0 }}",
                1024 + i % 60_000
            )
        })
        .collect();
    format!(
        "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n  [[listener.route]]\n  name = \"r\"\n  backend = \"b\"\n[[backend]]\nname = \"b\"\nservers = [{}]\n",
        servers.join(", ")
    )
}

#[test]
fn ten_thousand_warnings_and_errors_cost_about_ten_times_a_thousand() {
    type Text = fn(usize) -> String;
    let shapes: [(&str, Text); 3] = [
        ("a warning per backend", |n| reported_text(n, false)),
        ("a warning and an error per backend", |n| {
            reported_text(n, true)
        }),
        ("an error per server, all on one line", one_line_text),
    ];
    for (shape, text) in shapes {
        let small_text = text(1_000);
        let large_text = text(10_000);
        if shape != "a warning per backend" {
            let e =
                sockgate::config::from_str(&large_text, Path::new("sockgate.toml"), Path::new("."))
                    .unwrap_err();
            assert!(e.0.len() >= 10_000, "{shape}: {} errors", e.0.len());
            let last = e.0.last().unwrap();
            // The last weight is on the last `servers` line, the third from the end of the
            // text with a backend per error, the last line of the text on one line.
            let lines = large_text.lines().count();
            let line = if shape.contains("one line") {
                lines
            } else {
                lines - 2
            };
            assert_eq!(last.line, line, "{shape}: {last}");
            if shape.contains("one line") {
                let servers_line = large_text.lines().last().unwrap();
                let col = servers_line.rfind("weight = 0").unwrap() + "weight = ".len() + 1;
                assert_eq!(last.col, col, "{shape}: {last}");
            }
        }
        let small = fastest_check(&small_text);
        let large = fastest_check(&large_text);
        let ratio = large.as_secs_f64() / small.as_secs_f64();
        println!("{shape}: 1,000: {small:?}; 10,000: {large:?}; ratio {ratio:.1}");
        assert!(
            ratio < 15.0,
            "reporting grew faster than the config ({shape}): 1,000 took {small:?}, 10,000 took {large:?} ({ratio:.1}×; linear is about 10×)"
        );
    }
}

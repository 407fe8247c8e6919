//! Micro-benchmarks of the per-connection hot paths: the WebSocket frame tracker's scan, the
//! protocol detection on a client's first bytes, and the route table lookup.
//!
//! `cargo bench --bench hot_paths` measures; `cargo test --all-targets` runs each benchmark
//! once as a smoke test. Every input is checked before it is measured, so a benchmark that
//! silently stopped doing the work it names fails there.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use sockgate::bench::tracker::{Event, Extensions, Role, Tracker};
use sockgate::bench::{Detected, Metrics, RouteQuery, Snapshot, buffer, classify};
use sockgate::config::{self, Protocol};

// ---------------------------------------------------------------------------------------------
// Frame tracker

/// One masked binary frame (FIN set) as a client sends it, masked with a key from `seed`.
fn client_frame(out: &mut Vec<u8>, payload_len: usize, seed: &mut u32) {
    out.push(0x82);
    match payload_len {
        0..=125 => out.push(0x80 | payload_len as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
    *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
    let key = seed.to_be_bytes();
    out.extend_from_slice(&key);
    out.extend((0..payload_len).map(|i| (i as u8) ^ key[i % 4]));
}

/// Back-to-back client frames with `payload_len`-byte payloads, as many as fit in `total`.
fn client_stream(payload_len: usize, total: usize) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(total);
    let mut seed = 7;
    let mut frames = 0;
    loop {
        let mut frame = Vec::new();
        client_frame(&mut frame, payload_len, &mut seed);
        if out.len() + frame.len() > total {
            break;
        }
        out.extend_from_slice(&frame);
        frames += 1;
    }
    (out, frames)
}

fn client_tracker() -> Tracker {
    Tracker::new(Role::Client, Extensions::default())
}

/// What the WebSocket relay does with each read: step to the next event, and note whether
/// the bytes so far may be forwarded and whether that is a boundary. Returns the messages.
fn scan(tracker: &mut Tracker, mut chunk: &[u8], safe: &mut usize) -> u64 {
    let mut messages = 0;
    while !chunk.is_empty() {
        let step = tracker.step(chunk);
        chunk = &chunk[step.consumed..];
        if tracker.forwardable() && tracker.at_boundary() {
            *safe += 1;
        }
        match step.event {
            Some(Event::Message { .. }) => messages += 1,
            Some(Event::Error(error)) => panic!("bench input broke the protocol: {error}"),
            _ => {}
        }
    }
    messages
}

/// The stream as the relay reads it: in `read`-byte pieces, each scanned whole.
fn scan_stream(stream: &[u8], read: usize) -> u64 {
    let mut tracker = client_tracker();
    let mut safe = 0;
    let mut messages = 0;
    for chunk in stream.chunks(read) {
        messages += scan(&mut tracker, black_box(chunk), &mut safe);
    }
    black_box(safe);
    messages
}

fn tracker(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker");

    // 64 KiB of 128 B messages (134 B on the wire), read 32 KiB at a time like the relay.
    let (small, frames) = client_stream(128, 64 * 1024);
    assert_eq!(scan_stream(&small, buffer::SIZE), frames);
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("small_frames_128B", |b| {
        b.iter(|| scan_stream(black_box(&small), buffer::SIZE))
    });

    // Four 16 KiB messages: the payload is skipped by count, never read.
    let (large, frames) = client_stream(16 * 1024, 4 * (16 * 1024 + 8));
    assert_eq!(frames, 4);
    assert_eq!(scan_stream(&large, buffer::SIZE), frames);
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("large_frames_16KiB", |b| {
        b.iter(|| scan_stream(black_box(&large), buffer::SIZE))
    });

    // Eight 200 B messages (16-bit length, 8-byte header) arriving one byte per read: every
    // header is split, which is the tracker's partial-header path.
    let (short, frames) = client_stream(200, 8 * (200 + 8));
    assert_eq!(frames, 8);
    assert_eq!(scan_stream(&short, 1), frames);
    group.throughput(Throughput::Bytes(short.len() as u64));
    group.bench_function("one_byte_reads", |b| {
        b.iter(|| scan_stream(black_box(&short), 1))
    });

    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Protocol detection

fn detect(c: &mut Criterion) {
    let mut group = c.benchmark_group("detect");
    let upgrade: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: chat.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Origin: https://chat.example.com\r\n\r\n";
    let plain_get: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\
        Accept: */*\r\nUser-Agent: curl/8.5.0\r\n\r\n";
    // MQTT 3.1.1 CONNECT: fixed header, protocol name, level 4, clean session, keep-alive 60,
    // client id "bench".
    let mqtt: &[u8] = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05bench";
    // The first read cut a request inside its method token: wait for more.
    let partial: &[u8] = b"OPTIO";

    let cases: [(&str, &[u8], Option<Detected>); 4] = [
        ("websocket_upgrade", upgrade, Some(Detected::Http)),
        ("plain_get", plain_get, Some(Detected::Http)),
        ("mqtt_connect", mqtt, Some(Detected::Tcp)),
        ("partial_method", partial, None),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(classify(bytes), expected, "{name}");
        group.bench_function(name, |b| b.iter(|| classify(black_box(bytes))));
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Route table

/// A snapshot whose listener `bench` has `n` WebSocket routes `r0..r{n-1}`, all for host
/// `api.example.com`, route `ri` taking path prefix `/svc{i}/`.
fn snapshot_with_routes(n: usize) -> Snapshot {
    let mut text = String::from(
        "[[listener]]\nname = \"bench\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:9\"]\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[listener.route]]\nname = \"r{i}\"\nprotocol = \"websocket\"\n\
             host = \"api.example.com\"\npath_prefix = \"/svc{i}/\"\nbackend = \"b\"\n"
        ));
    }
    let config = config::from_str(&text, Path::new("bench.toml"), Path::new(".")).unwrap();
    Snapshot::build(config, &Metrics::new()).unwrap()
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let query = |path| RouteQuery {
        protocol: Protocol::WebSocket,
        sni: None,
        host: Some("api.example.com"),
        path: Some(path),
        client_cert: false,
    };

    let one = snapshot_with_routes(1);
    let one = &one.listener("bench").unwrap().routes;
    let hit = query("/svc0/events");
    assert_eq!(&*one.find(&hit).unwrap().name, "r0");
    group.bench_function("1_route_hit", |b| b.iter(|| one.find(black_box(&hit))));

    let fifty = snapshot_with_routes(50);
    let fifty = &fifty.listener("bench").unwrap().routes;
    let last = query("/svc49/events");
    assert_eq!(&*fifty.find(&last).unwrap().name, "r49");
    group.bench_function("50_routes_hit_last", |b| {
        b.iter(|| fifty.find(black_box(&last)))
    });

    let miss = query("/other/events");
    assert!(fifty.find(&miss).is_none());
    group.bench_function("50_routes_miss", |b| {
        b.iter(|| fifty.find(black_box(&miss)))
    });

    // A multi-tenant edge: one route per host. The lookup goes through the host index, so
    // the last of 100,000 tenants costs what the last of 10 does.
    for n in [10, 100_000] {
        let tenants = snapshot_with_tenants(n);
        let tenants = &tenants.listener("bench").unwrap().routes;
        let host = format!("t{}.example.com", n - 1);
        let last = RouteQuery {
            protocol: Protocol::WebSocket,
            sni: None,
            host: Some(&host),
            path: Some("/events"),
            client_cert: false,
        };
        assert_eq!(*tenants.find(&last).unwrap().name, *format!("t{}", n - 1));
        group.bench_function(format!("{n}_tenants_hit_last"), |b| {
            b.iter(|| tenants.find(black_box(&last)))
        });
    }

    group.finish();
}

/// A snapshot whose listener `bench` has `n` routes `t0..t{n-1}`, route `ti` for host
/// `ti.example.com`.
fn snapshot_with_tenants(n: usize) -> Snapshot {
    let mut text = String::from(
        "[[listener]]\nname = \"bench\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:9\"]\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[listener.route]]\nname = \"t{i}\"\nhost = \"t{i}.example.com\"\nbackend = \"b\"\n"
        ));
    }
    let config = config::from_str(&text, Path::new("bench.toml"), Path::new(".")).unwrap();
    Snapshot::build(config, &Metrics::new()).unwrap()
}

criterion_group!(benches, tracker, detect, route);
criterion_main!(benches);

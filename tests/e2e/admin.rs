//! The admin endpoint against hostile clients (slow, many, large, cross-site, without the
//! token), `token_file`, and the private scratch folders of `demo` and `proxy`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const TOKEN: &str = "s3cr3t-t0ken-0123456789abcdef";

fn config(extra_admin: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{extra_admin}

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"

[[backend]]
name = "echo"
servers = ["127.0.0.1:9"]
"#
    )
}

/// A response as read off the wire: status, head (lower-cased), body.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Everything the server sends until it closes (a reset after data counts as a close).
async fn read_all(tcp: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut raw = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return raw,
            Ok(Ok(n)) => raw.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "the admin endpoint neither answered nor closed within {limit:?}; got {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
}

/// Sends `request` as is (it should say `Connection: close`) and reads the reply.
async fn send(addr: SocketAddr, request: &str) -> Reply {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let raw = read_all(&mut tcp, Duration::from_secs(10)).await;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let (status, body) = parse_response(raw);
    let text = String::from_utf8_lossy(raw);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    Reply { status, head, body }
}

/// A request with a Host header and extra header lines (each ending in `\r\n`).
fn request(method: &str, path: &str, host: &str, headers: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn a_half_sent_head_an_idle_connection_and_a_trickled_body_are_cut_off_after_5s() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config("")).await;
    let admin = gw.admin();

    let half_head = async {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: local")
            .await
            .unwrap();
        let started = Instant::now();
        let got = read_all(&mut tcp, Duration::from_secs(10)).await;
        (started.elapsed(), got)
    };
    let silent = async {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        let started = Instant::now();
        let got = read_all(&mut tcp, Duration::from_secs(10)).await;
        (started.elapsed(), got)
    };
    let slow_body = async {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(
            request(
                "POST",
                "/reload",
                "localhost",
                "Content-Type: application/json\r\nContent-Length: 10\r\n",
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        tcp.write_all(b"{\"a\"").await.unwrap();
        let started = Instant::now();
        let got = read_all(&mut tcp, Duration::from_secs(10)).await;
        (started.elapsed(), parse(&got))
    };
    let ((half_took, half_got), (silent_took, silent_got), (slow_took, slow_got)) =
        tokio::join!(half_head, silent, slow_body);
    for (what, took) in [
        ("half head", half_took),
        ("silent", silent_took),
        ("slow body", slow_took),
    ] {
        assert!(
            took >= Duration::from_millis(4500) && took < Duration::from_secs(8),
            "{what}: closed after {took:?}"
        );
    }
    assert!(
        half_got.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&half_got)
    );
    assert!(silent_got.is_empty());
    assert_eq!(slow_got.status, 408, "{}", slow_got.body);
    // Nothing was reloaded by the request whose body never came.
    assert_eq!(
        gw.metrics()
            .await
            .get("sockgate_config_reloads_total", &[("result", "ok")]),
        0.0
    );
}

#[tokio::test]
async fn more_than_64_admin_connections_are_refused_at_once_and_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config("")).await;
    let admin = gw.admin();
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    // A request on a held connection still works: it has its slot.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), held[0].read(&mut buf))
        .await
        .expect("an answer on a connection within the limit")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    // The 65th gets a 503 and is closed at once, without sending anything.
    let started = Instant::now();
    let mut extra = TcpStream::connect(admin).await.unwrap();
    let raw = read_all(&mut extra, Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let reply = parse(&raw);
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("too many admin connections"),
        "{}",
        reply.body
    );

    // Closing the held connections frees their slots.
    drop(held);
    eventually("a slot is free again", || async {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(request("GET", "/healthz", "localhost", "").as_bytes())
            .await
            .unwrap();
        parse(&read_all(&mut tcp, Duration::from_secs(2)).await).status == 200
    })
    .await;
}

#[tokio::test]
async fn an_oversized_head_gets_431_and_an_oversized_body_413() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config("")).await;
    let admin = gw.admin();

    let big = "x".repeat(20 * 1024);
    let reply = send(
        admin,
        &request("GET", "/metrics", "localhost", &format!("X-Big: {big}\r\n")),
    )
    .await;
    assert_eq!(reply.status, 431);

    // Declared too large: refused before any of it is read.
    let reply = send(
        admin,
        &request(
            "POST",
            "/reload",
            "localhost",
            "Content-Type: application/json\r\nContent-Length: 4096\r\n",
        ),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.head.contains("connection: close"), "{}", reply.head);

    // Chunked, and over the limit once read.
    let chunk = "y".repeat(1500);
    let reply = send(
        admin,
        &format!(
            "{}{:x}\r\n{chunk}\r\n0\r\n\r\n",
            request(
                "POST",
                "/reload",
                "localhost",
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            ),
            chunk.len()
        ),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);

    // A small body is fine.
    let reply = send(
        admin,
        &format!(
            "{}{{}}",
            request(
                "POST",
                "/reload",
                "localhost",
                "Content-Type: application/json\r\nContent-Length: 2\r\n"
            )
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let m = gw.metrics().await;
    assert_eq!(
        m.get("sockgate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn a_host_that_is_not_the_admin_address_or_loopback_gets_421() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config("")).await;
    let admin = gw.admin();
    let port = admin.port();

    // What a page on a rebound DNS name sends, and other names.
    for host in [
        format!("rebind.example:{port}"),
        "rebind.example".to_owned(),
        format!("localhost.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("10.1.2.3:{port}"),
        "[::1".to_owned(),
        "localhost:port".to_owned(),
    ] {
        let reply = send(admin, &request("GET", "/connections", &host, "")).await;
        assert_eq!(reply.status, 421, "Host: {host}: {}", reply.body);
        assert!(reply.body.contains("DNS rebinding"), "{}", reply.body);
    }
    // An absolute-form target is checked like Host.
    let reply = send(
        admin,
        &request("GET", "http://rebind.example/metrics", "localhost", ""),
    )
    .await;
    assert_eq!(reply.status, 421);
    // Two Host headers: which one counts is ambiguous, so neither.
    let reply = send(
        admin,
        &request("GET", "/metrics", "localhost", "Host: rebind.example\r\n"),
    )
    .await;
    assert_eq!(reply.status, 400);

    for host in [
        "localhost".to_owned(),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "localhost:8080".to_owned(),
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{port}"),
        "[::1]".to_owned(),
        format!("[::1]:{port}"),
        admin.to_string(),
    ] {
        let reply = send(admin, &request("GET", "/connections", &host, "")).await;
        assert_eq!(reply.status, 200, "Host: {host}: {}", reply.body);
        assert_eq!(reply.body.trim(), "[]");
    }
    // HTTP/1.0 without Host, from loopback: allowed.
    let reply = send(admin, "GET /connections HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Probes do not care about Host.
    let reply = send(admin, &request("GET", "/healthz", "rebind.example", "")).await;
    assert_eq!(reply.status, 200);
    let reply = send(admin, &request("GET", "/readyz", "rebind.example", "")).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn web_form_posts_and_foreign_origins_are_refused_plain_posts_work() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config("")).await;
    let admin = gw.admin();
    let port = admin.port();

    let refused = [
        (
            "POST",
            "/reload",
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=b"
                .to_owned(),
        ),
        (
            "POST",
            "/reload",
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ),
        (
            "POST",
            "/reload",
            "Content-Type: Text/Plain;charset=UTF-8\r\nContent-Length: 2\r\n\r\nhi".to_owned(),
        ),
        (
            "DELETE",
            "/connections?route=echo",
            "Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ),
        // fetch(url, {method: "POST", mode: "no-cors"}) from another site: no body, no
        // content type, but an Origin.
        (
            "POST",
            "/reload",
            "Origin: https://evil.example\r\n\r\n".to_owned(),
        ),
        ("POST", "/reload", "Origin: null\r\n\r\n".to_owned()),
        (
            "POST",
            "/reload",
            format!("Origin: http://rebind.example:{port}\r\n\r\n"),
        ),
        // A page served by something else on loopback is another origin too.
        (
            "POST",
            "/reload",
            "Origin: http://localhost:8000\r\n\r\n".to_owned(),
        ),
    ];
    for (method, path, rest) in &refused {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        let reply = send(admin, &format!("{head}{rest}")).await;
        assert_eq!(
            reply.status, 403,
            "{method} {path} {rest:?}: {}",
            reply.body
        );
    }
    assert_eq!(
        gw.metrics().await.get("sockgate_config_reloads_total", &[]),
        0.0,
        "no refused request reloaded"
    );

    // What curl sends, JSON, and the endpoint's own origin: accepted.
    let accepted = [
        "\r\n".to_owned(),
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_owned(),
        format!("Origin: http://127.0.0.1:{port}\r\n\r\n"),
    ];
    for rest in &accepted {
        let head =
            format!("POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        let reply = send(admin, &format!("{head}{rest}")).await;
        assert_eq!(reply.status, 200, "{rest:?}: {}", reply.body);
    }
    let (status, body) = http_request(admin, "DELETE", "/connections?route=echo").await;
    assert_eq!((status, body.as_str()), (200, r#"{"closed":0}"#));
    assert_eq!(
        gw.metrics()
            .await
            .get("sockgate_config_reloads_total", &[("result", "ok")]),
        3.0
    );
}

#[tokio::test]
async fn with_token_file_every_request_but_the_probes_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let gw = Gateway::start(dir.path(), &config("token_file = \"admin.token\"")).await;
    let admin = gw.admin();
    let auth = |token: &str| format!("Authorization: Bearer {token}\r\n");

    let reply = send(admin, &request("GET", "/metrics", "localhost", "")).await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.head.contains("www-authenticate: bearer"),
        "{}",
        reply.head
    );
    for wrong in [
        "s3cr3t-t0ken-0123456789abcdeX",
        "s3cr3t-t0ken-0123456789abcde",
        "s3cr3t-t0ken-0123456789abcdef0",
    ] {
        let reply = send(
            admin,
            &request("GET", "/metrics", "localhost", &auth(wrong)),
        )
        .await;
        assert_eq!(reply.status, 401, "{wrong}");
        assert!(reply.head.contains("invalid_token"), "{}", reply.head);
    }
    let reply = send(
        admin,
        &request(
            "GET",
            "/metrics",
            "localhost",
            "Authorization: Basic Zm9vOmJhcg==\r\n",
        ),
    )
    .await;
    assert_eq!(reply.status, 401);

    let reply = send(
        admin,
        &request("GET", "/metrics", "localhost", &auth(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.head.contains("version=0.0.4"), "{}", reply.head);
    let reply = send(
        admin,
        &request(
            "GET",
            "/connections",
            "localhost",
            &format!("authorization: bearer {TOKEN}\r\n"),
        ),
    )
    .await;
    assert_eq!(reply.status, 200);
    for probe in ["/healthz", "/readyz"] {
        let reply = send(admin, &request("GET", probe, "localhost", "")).await;
        assert_eq!(reply.status, 200, "{probe}");
    }
    // The Host rule still holds with the token.
    let reply = send(
        admin,
        &request("GET", "/metrics", "rebind.example", &auth(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, 421);
    // DELETE without the token is refused before it closes anything.
    let reply = send(
        admin,
        &request("DELETE", "/connections?route=echo", "localhost", ""),
    )
    .await;
    assert_eq!(reply.status, 401);

    // The token file is read again at reload.
    let new_token = "another-token-with-enough-bytes";
    std::fs::write(dir.path().join("admin.token"), new_token).unwrap();
    let reply = send(
        admin,
        &request("POST", "/reload", "localhost", &auth(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = send(
        admin,
        &request("GET", "/metrics", "localhost", &auth(TOKEN)),
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = send(
        admin,
        &request("GET", "/metrics", "localhost", &auth(new_token)),
    )
    .await;
    assert_eq!(reply.status, 200);

    // A reload whose token file went bad is refused; the running token stays.
    std::fs::write(dir.path().join("admin.token"), "short\n").unwrap();
    let reply = send(
        admin,
        &request("POST", "/reload", "localhost", &auth(new_token)),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.body.contains("token_file"), "{}", reply.body);
    let reply = send(
        admin,
        &request("GET", "/metrics", "localhost", &auth(new_token)),
    )
    .await;
    assert_eq!(reply.status, 200);
}

fn check(config: &Path) -> (i32, String) {
    let out = Binary::command()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_a_missing_empty_short_or_binary_token_file_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockgate.toml");
    std::fs::write(&path, config("token_file = \"admin.token\"")).unwrap();
    let at = format!("{}:4:14: `token_file`: ", path.display());

    let (code, stderr) = check(&path);
    assert_eq!(code, 2);
    assert!(stderr.starts_with(&at), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    assert!(
        stderr.contains("\n  hint: write a random token"),
        "{stderr}"
    );

    for (content, says) in [
        ("\n".to_owned(), "is empty"),
        ("short-token\n".to_owned(), "shorter than the 16"),
        ("token with spaces inside\n".to_owned(), "printable ASCII"),
        ("x".repeat(5000), "too long"),
    ] {
        std::fs::write(dir.path().join("admin.token"), &content).unwrap();
        let (code, stderr) = check(&path);
        assert_eq!(code, 2, "{content:?}");
        assert!(stderr.starts_with(&at), "{stderr}");
        assert!(stderr.contains(says), "{content:?}: {stderr}");
        assert!(stderr.contains("hint:"), "{stderr}");
    }
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\r\n")).unwrap();
    let (code, stderr) = check(&path);
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn refused_admin_requests_and_a_refused_post_reload_are_logged_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let config_path = dir.path().join("sockgate.toml");
    std::fs::write(&config_path, config("token_file = \"admin.token\"")).unwrap();
    let config_arg = config_path.display().to_string();
    let mut gw = Binary::spawn(&["--config", &config_arg], dir);
    let ready = gw.ready().await;
    let admin: SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");

    let wrong = "wrong-token-but-long-enough";
    let reply = send(
        admin,
        &request(
            "GET",
            "/connections",
            "localhost",
            &format!("Authorization: Bearer {wrong}\r\n"),
        ),
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = send(
        admin,
        &request("GET", "/connections", "rebind.example", &auth),
    )
    .await;
    assert_eq!(reply.status, 421);

    // One kept-alive connection that goes idle after a request, one that never finishes
    // its head: both are closed after 5 s, only the second is worth a warning.
    let idle = async {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        read_all(&mut tcp, Duration::from_secs(10)).await
    };
    let half = async {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHo").await.unwrap();
        read_all(&mut tcp, Duration::from_secs(10)).await
    };
    let (idle, half) = tokio::join!(idle, half);
    assert!(idle.starts_with(b"HTTP/1.1 200"), "{idle:?}");
    assert!(half.is_empty());

    std::fs::write(&config_path, "[[listener]]\nname = 1\n").unwrap();
    let reply = send(admin, &request("POST", "/reload", "localhost", &auth)).await;
    assert_eq!(reply.status, 422);
    eventually("the refusals are logged", || async {
        let log = gw.stderr();
        log.contains("admin request refused: wrong bearer token")
            && log.contains("rebind.example")
            && log.contains("reload refused (POST /reload):")
            && log.contains("sockgate.toml:2:8:")
    })
    .await;
    let log = gw.stderr();
    assert_eq!(
        log.matches("admin connection closed: no complete request head within 5s")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains(TOKEN), "{log}");
    assert!(!log.contains(wrong), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("reload refused (POST /reload)")),
        "{log}"
    );
    gw.signal("TERM");
    gw.exit_status(Duration::from_secs(10)).await;
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Symlinks `sockgate-{what}-{pid}` -> `target` in `tmp` for the next `count` pids, the
/// names a process started next would have used before.
fn plant_predictable_names(tmp: &Path, what: &str, target: &Path, count: u32) -> (u32, u32) {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let first = last + 1;
    let end = (first + count).min(pid_max);
    for pid in first..end {
        std::os::unix::fs::symlink(target, tmp.join(format!("sockgate-{what}-{pid}"))).unwrap();
    }
    (first, end)
}

/// The one folder the child made in `tmp` (not a planted symlink).
fn made_dir(tmp: &Path) -> PathBuf {
    let made: Vec<PathBuf> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()
        })
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    made.into_iter().next().unwrap()
}

#[tokio::test]
async fn demo_writes_into_a_fresh_private_folder_not_a_planted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let attacker = tempfile::tempdir().unwrap();
    let (first, end) = plant_predictable_names(tmp.path(), "demo", attacker.path(), 3000);

    let (p1, listen_addr) = listen().await;
    let (p2, admin_addr) = listen().await;
    drop((p1, p2));
    let (l, a) = (listen_addr.to_string(), admin_addr.to_string());
    let mut gw = Binary::spawn_with_env(
        &["demo", "--listen", &l, "--admin", &a],
        tempfile::tempdir().unwrap(),
        &[("TMPDIR", tmp.path().as_os_str())],
    );
    gw.ready().await;
    let pid = gw.child.as_ref().unwrap().id();
    assert!(
        (first..end).contains(&pid),
        "pid {pid} outside the planted range {first}..{end}: the test proves nothing"
    );
    assert_eq!(
        std::fs::read_dir(attacker.path()).unwrap().count(),
        0,
        "the demo wrote into the planted folder"
    );
    let dir = made_dir(tmp.path());
    let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with(&format!("sockgate-demo-{pid}-")), "{name}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("demo.key")), 0o600);
    assert!(mode(&dir.join("demo.crt")) & 0o022 == 0);
    // The printed instructions name the folder actually used.
    let config = dir.join("sockgate.toml");
    eventually("the instructions are printed", || {
        let printed = gw.stdout();
        let config = config.display().to_string();
        async move { printed.contains(&config) }
    })
    .await;

    gw.signal("TERM");
    assert_eq!(
        gw.exit_status(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    assert!(!dir.exists(), "the scratch folder is removed at exit");
}

#[tokio::test]
async fn proxy_self_signed_says_where_its_certificate_is_and_keeps_it_private() {
    let tmp = tempfile::tempdir().unwrap();
    let attacker = tempfile::tempdir().unwrap();
    let (first, end) = plant_predictable_names(tmp.path(), "proxy", attacker.path(), 3000);

    let (probe, listen_addr) = listen().await;
    drop(probe);
    let listen_arg = listen_addr.to_string();
    let mut gw = Binary::spawn_with_env(
        &[
            "proxy",
            "--listen",
            &listen_arg,
            "--to",
            "127.0.0.1:9",
            "--tls-self-signed",
        ],
        tempfile::tempdir().unwrap(),
        &[("TMPDIR", tmp.path().as_os_str())],
    );
    gw.ready().await;
    let pid = gw.child.as_ref().unwrap().id();
    assert!(
        (first..end).contains(&pid),
        "pid {pid} outside the planted range {first}..{end}: the test proves nothing"
    );
    assert_eq!(std::fs::read_dir(attacker.path()).unwrap().count(), 0);
    let dir = made_dir(tmp.path());
    assert_eq!(mode(&dir), 0o700);
    let cert = dir.join("self-signed.crt");
    let key = dir.join("self-signed.key");
    assert_eq!(mode(&key), 0o600);
    let printed = gw.stdout();
    assert!(
        printed.contains(&format!(
            "self-signed certificate for localhost, 127.0.0.1, ::1: {}",
            cert.display()
        )),
        "{printed}"
    );
    // The printed certificate is the one served.
    let pem = std::fs::read_to_string(&cert).unwrap();
    let tls = tls_connect(listen_addr, client_config(&[&pem], &[]), "localhost").await;
    drop(tls);

    gw.signal("TERM");
    assert_eq!(
        gw.exit_status(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    assert!(!dir.exists(), "the scratch folder is removed at exit");
    let _ = key;
}

#[test]
fn cert_dev_keys_are_owner_only_and_a_planted_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("dev");
    let run = || {
        Binary::command()
            .args(["cert", "dev", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&out_dir), 0o700);
    for key in ["ca.key", "server.key"] {
        assert_eq!(mode(&out_dir.join(key)), 0o600, "{key}");
    }

    // A key file left world-readable is narrowed when rewritten.
    std::fs::set_permissions(
        out_dir.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // A symlink in place of a key is refused, and its target left alone.
    let elsewhere = dir.path().join("elsewhere.txt");
    std::fs::write(&elsewhere, "not a key").unwrap();
    std::fs::remove_file(out_dir.join("ca.key")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out_dir.join("ca.key")).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write") && stderr.contains("ca.key"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "not a key");

    std::fs::remove_file(out_dir.join("ca.key")).unwrap();
    let out = run();
    assert!(out.status.success(), "{out:?}");
    for key in ["ca.key", "server.key"] {
        assert_eq!(mode(&out_dir.join(key)), 0o600, "{key}");
    }
}

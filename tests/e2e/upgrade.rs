//! Binary upgrade, as an operator runs it: the built binary started through a symlink (the
//! path an upgrade starts again), a stream of new connections while `sockgate upgrade` or
//! SIGUSR2 runs, a WebSocket open across it, and the upgrades that must fail and leave the
//! running process serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The client loop: tasks opening connections one after the other, each at most this many,
/// for at most this long (it is stopped once the new process has been serving a while).
const LOOP_TASKS: usize = 3;
const LOOP_MAX_PER_TASK: usize = 300;
const LOOP_MAX: Duration = Duration::from_secs(6);
const LOOP_PAUSE: Duration = Duration::from_millis(8);

/// A gateway run from `dir/bin/sockgate`, a symlink the test can point elsewhere, with a
/// control socket, a TCP listener and a WebSocket listener on two workers each.
struct Upgradable {
    gw: Binary,
    dir: PathBuf,
    program: PathBuf,
    config: PathBuf,
    control: String,
    tcp: SocketAddr,
    ws: SocketAddr,
    admin: SocketAddr,
    pid: u32,
}

fn config_text(tcp_backend: SocketAddr, ws_backend: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[defaults]
drain_timeout = "10s"
drain_spread = "1s"
close_timeout = "1s"

[[listener]]
name = "tcp"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "echo"
  protocol = "tcp"
  backend = "echo"

[[listener]]
name = "ws"
listen = "127.0.0.1:0"

  [[listener.route]]
  name = "chat"
  protocol = "websocket"
  backend = "chat"

[[backend]]
name = "echo"
servers = ["{tcp_backend}"]

[[backend]]
name = "chat"
servers = ["{ws_backend}"]
"#
    )
}

/// Writes an executable script now, long before anything runs it: a file still open for
/// writing in some process (a fork in another test thread) cannot be executed (ETXTBSY).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Points the symlink `link` at `target` in one step, as a deploy that flips a symlink does.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

fn addr(ready: &serde_json::Value, key: &[&str]) -> SocketAddr {
    let mut v = ready;
    for k in key {
        v = &v[k];
    }
    v.as_str().unwrap().parse().unwrap()
}

impl Upgradable {
    async fn start(tcp_backend: SocketAddr, ws_backend: SocketAddr) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        std::fs::create_dir(dir.join("bin")).unwrap();
        let program = dir.join("bin/sockgate");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sockgate"), &program).unwrap();
        let config = dir.join("sockgate.toml");
        std::fs::write(&config, config_text(tcp_backend, ws_backend)).unwrap();
        let control = dir.join("control.sock").display().to_string();
        let config_arg = config.display().to_string();
        let mut gw = Binary::spawn_program(
            &program,
            &[
                "--config",
                &config_arg,
                "--workers",
                "2",
                "--control-socket",
                &control,
            ],
            tmp,
        );
        let ready = gw.ready().await;
        Upgradable {
            tcp: addr(&ready, &["listeners", "tcp"]),
            ws: addr(&ready, &["listeners", "ws"]),
            admin: addr(&ready, &["admin"]),
            pid: ready["pid"].as_u64().unwrap() as u32,
            gw,
            dir,
            program,
            config,
            control,
        }
    }

    fn ready_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("ready.json")).ok()?;
        let ready: serde_json::Value = serde_json::from_str(&text).ok()?;
        ready["pid"].as_u64().map(|p| p as u32)
    }

    /// `sockgate upgrade --control-socket ...`: (exit code, stdout, stderr).
    async fn upgrade(&self, extra: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sockgate"))
                .args(["upgrade", "--control-socket", &self.control])
                .args(extra)
                .output(),
        )
        .await
        .expect("sockgate upgrade answers within 30s")
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn stderr_contains(&self, what: &str) {
        eventually(what, || async { self.gw.stderr().contains(what) }).await;
    }
}

/// The process that took over: not a child of the test, so ended by pid when dropped.
struct Successor(u32);

impl Successor {
    fn alive(&self) -> bool {
        // A zombie waiting for its new parent to reap it has exited.
        std::fs::read_to_string(format!("/proc/{}/stat", self.0)).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.0.to_string()])
            .status();
    }

    /// SIGTERM, then waits (bounded) for the process to end.
    async fn terminate(&self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!self.alive(), "the new process did not exit after SIGTERM");
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.alive() {
            self.signal("KILL");
        }
    }
}

/// One new connection through the gateway: connect, send a line, read it back.
async fn round_trip(addr: SocketAddr, n: usize) -> Result<(), String> {
    let within = Duration::from_secs(5);
    let mut tcp = match tokio::time::timeout(within, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(format!("refused: {e}")),
        Err(_) => return Err("connect timed out".into()),
    };
    let line = format!("connection {n:06}\n");
    tcp.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("reset on write: {e}"))?;
    let mut got = vec![0u8; line.len()];
    match tokio::time::timeout(within, tcp.read_exact(&mut got)).await {
        Ok(Ok(_)) if got == line.as_bytes() => Ok(()),
        Ok(Ok(_)) => Err(format!("wrong bytes: {:?}", String::from_utf8_lossy(&got))),
        Ok(Err(e)) => Err(format!("reset or closed before the echo: {e}")),
        Err(_) => Err("no echo within 5s".into()),
    }
}

/// Clients opening new connections until `stop` (or the limits): (connections that
/// round-tripped, failures).
fn client_loop(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let tasks = (0..LOOP_TASKS).map(|t| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                for i in 0..LOOP_MAX_PER_TASK {
                    if stop.load(Ordering::Relaxed) || started.elapsed() >= LOOP_MAX {
                        break;
                    }
                    match round_trip(addr, t * LOOP_MAX_PER_TASK + i).await {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    tokio::time::sleep(LOOP_PAUSE).await;
                }
                (ok, failed)
            })
        });
        let mut total = (0, Vec::new());
        for task in tasks.collect::<Vec<_>>() {
            let (ok, failed) = task.await.unwrap();
            total.0 += ok;
            total.1.extend(failed);
        }
        total
    })
}

/// A WebSocket through the gateway that has echoed one message.
async fn open_websocket(addr: SocketAddr) -> RawWs<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut ws = RawWs::handshake(tcp, "/chat").await;
    ws.send(0x1, b"before").await;
    assert_eq!(ws.read_frame().await, (0x1, b"before".to_vec()));
    ws
}

/// The Close the gateway sends: (code, reason).
async fn close_code(ws: &mut RawWs<TcpStream>) -> u16 {
    let (opcode, payload) = ws.read_frame().await;
    assert_eq!(
        opcode, 0x8,
        "a Close frame, got opcode {opcode}: {payload:?}"
    );
    assert!(payload.len() >= 2, "a Close with a code");
    u16::from_be_bytes([payload[0], payload[1]])
}

/// The shared story of both ways to upgrade: new connections flow throughout, none is
/// refused or reset, the WebSocket opened before gets 1001 (the backend too), the old
/// process exits 0, the new one serves.
async fn upgrade_under_load(trigger: impl AsyncFnOnce(&Upgradable)) {
    let echo = tcp_echo().await;
    let (chat, mut backend) = scripted_ws_backend().await;
    let mut gw = Upgradable::start(echo, chat).await;
    let old_pid = gw.pid;
    let mut ws = open_websocket(gw.ws).await;

    let stop = Arc::new(AtomicBool::new(false));
    let loop_started = Instant::now();
    let clients = client_loop(gw.tcp, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upgrade_started = Instant::now();
    trigger(&gw).await;

    // The new process wrote the ready file; the old one stops accepting and drains.
    eventually("the new process's pid in the ready file", || async {
        gw.ready_pid().is_some_and(|pid| pid != old_pid)
    })
    .await;
    let new = Successor(gw.ready_pid().unwrap());
    let ready_after = upgrade_started.elapsed();
    assert!(new.alive());
    // New connections keep coming for a while after the handover.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = clients.await.unwrap();
    let loop_ran = loop_started.elapsed();

    assert_eq!(close_code(&mut ws).await, 1001);
    assert!(ws.at_eof().await, "the connection ends after the Close");
    assert_eq!(
        backend_close(&mut backend).await,
        BackendSaw::Close(Some(1001))
    );
    let status = gw.gw.exit_status(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.gw.stderr());
    let old_gone = upgrade_started.elapsed();

    // The new process's count: only what it accepted itself.
    let metrics = Metrics::parse(&http_get(gw.admin, "/metrics").await.1);
    let by_new = metrics.get("sockgate_connections_total", &[("listener", "tcp")]);
    eprintln!(
        "upgrade: {ok} connections round-tripped in {loop_ran:?}, {} refused or reset; \
         {by_new} of them accepted by the new process; new process ready {ready_after:?} \
         and old one gone {old_gone:?} after the request",
        failed.len()
    );
    assert!(failed.is_empty(), "refused or reset: {failed:?}");
    assert!(ok >= 100, "only {ok} connections in {loop_ran:?}");
    assert!(
        by_new >= 20.0,
        "the loop went on against the new process: {by_new} connections there"
    );

    // The new process serves, on the same addresses.
    round_trip(gw.tcp, 999_999).await.unwrap();
    let mut ws = open_websocket(gw.ws).await;
    ws.send(0x1, b"after").await;
    assert_eq!(ws.read_frame().await, (0x1, b"after".to_vec()));
    let metrics = Metrics::parse(&http_get(gw.admin, "/metrics").await.1);
    assert_eq!(
        metrics.get("sockgate_connections_total", &[("listener", "tcp")]),
        by_new + 1.0
    );
    assert_eq!(
        metrics.get("sockgate_connections_active", &[("listener", "ws")]),
        1.0
    );
    assert_eq!(http_get(gw.admin, "/readyz").await.0, 200);
    let log = gw.gw.stderr();
    assert!(log.contains("the new process is ready"), "{log}");
    assert!(log.contains("drained"), "{log}");
    drop(ws);
    new.terminate().await;
}

#[tokio::test]
async fn upgrade_command_hands_over_without_a_refused_connection_and_websockets_get_1001() {
    upgrade_under_load(async |gw: &Upgradable| {
        let (code, stdout, stderr) = gw.upgrade(&[]).await;
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.starts_with("upgraded: process ") && stdout.contains(&gw.pid.to_string()),
            "{stdout}"
        );
    })
    .await;
}

#[tokio::test]
async fn sigusr2_upgrades_to_the_file_now_at_the_path_and_ignores_a_second_one_meanwhile() {
    upgrade_under_load(async |gw: &Upgradable| {
        // The path the gateway was started as now leads to a "new release" that takes a
        // second to start (and then runs the real binary).
        let slow = script(
            &gw.dir,
            "slow-start",
            &format!("sleep 1\nexec '{}' \"$@\"", env!("CARGO_BIN_EXE_sockgate")),
        );
        point(&gw.program, &slow);
        gw.gw.signal("USR2");
        gw.stderr_contains("upgrade requested from=\"SIGUSR2\"")
            .await;
        gw.gw.signal("USR2");
        gw.stderr_contains("upgrade requested while one is in progress; ignored")
            .await;
        let (code, _, stderr) = gw.upgrade(&[]).await;
        assert_eq!(code, 1);
        assert_eq!(
            stderr,
            "sockgate: upgrade failed: an upgrade is already in progress\n"
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_upgrade_leaves_the_old_process_serving_and_nothing_drained() {
    let echo = tcp_echo().await;
    let (chat, _backend) = scripted_ws_backend().await;
    let mut gw = Upgradable::start(echo, chat).await;
    let mut ws = open_websocket(gw.ws).await;
    // Written now, run later (see `script`).
    let crash = script(
        &gw.dir,
        "crash",
        "echo 'new binary: cannot start' >&2\nexit 3",
    );
    let hang = script(&gw.dir, "hang", "exec sleep 30");
    let good_config = std::fs::read_to_string(&gw.config).unwrap();

    let still_serving = async |gw: &mut Upgradable, ws: &mut RawWs<TcpStream>, n: usize| {
        round_trip(gw.tcp, n).await.unwrap();
        ws.send(0x1, b"still here").await;
        assert_eq!(ws.read_frame().await, (0x1, b"still here".to_vec()));
        assert_eq!(http_get(gw.admin, "/readyz").await.0, 200);
        assert!(gw.gw.child.as_mut().unwrap().try_wait().unwrap().is_none());
        assert_eq!(gw.ready_pid(), Some(gw.pid));
    };

    // 1. The new config is invalid: the new process refuses it and says why.
    std::fs::write(
        &gw.config,
        good_config.replace(
            "drain_spread = \"1s\"",
            "drain_spread = \"1s\"\ndrain_sprad = \"2s\"",
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = gw.upgrade(&[]).await;
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with(
            "sockgate: upgrade failed: the new process refused to start: invalid config: "
        ) && stderr.contains("sockgate.toml:8:1: unknown key `drain_sprad`"),
        "{stderr}"
    );
    gw.stderr_contains("upgrade failed; this process keeps serving")
        .await;
    still_serving(&mut gw, &mut ws, 1).await;

    // 2. The binary at the path crashes on start.
    std::fs::write(&gw.config, &good_config).unwrap();
    point(&gw.program, &crash);
    let (code, _, stderr) = gw.upgrade(&[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "sockgate: upgrade failed: the new process exited before it was ready (exit status: 3)\n"
    );
    still_serving(&mut gw, &mut ws, 2).await;

    // 3. It never reports ready: killed at the timeout.
    point(&gw.program, &hang);
    let started = Instant::now();
    let (code, _, stderr) = gw.upgrade(&["--timeout", "1s"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "sockgate: upgrade failed: the new process was not ready within 1s\n"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    still_serving(&mut gw, &mut ws, 3).await;
    let log = gw.gw.stderr();
    assert!(!log.contains("draining"), "nothing drained: {log}");
    let metrics = Metrics::parse(&http_get(gw.admin, "/metrics").await.1);
    assert_eq!(
        metrics.get("sockgate_websocket_closes_total", &[("code", "1001")]),
        0.0
    );

    // Without --control-socket, `upgrade` says what it needs.
    let out = Binary::command().arg("upgrade").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("sockgate: upgrade needs --control-socket FILE"),
    );

    // The old process still drains and exits 0 on SIGTERM.
    drop(ws);
    gw.gw.signal("TERM");
    let status = gw.gw.exit_status(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.gw.stderr());
    assert!(
        !Path::new(&gw.control).exists(),
        "a clean exit removes the control socket"
    );
}

/// In one process: a gateway on three workers hands its sockets to one on a single event
/// loop, which must accept on all three (the kernel spreads new connections over every
/// socket of a `SO_REUSEPORT` group, and a socket nobody accepts on would hold its share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_with_fewer_workers_accepts_on_every_socket_it_received() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockgate.toml");
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"tcp\"\nlisten = \"127.0.0.1:0\"\n\n  [[listener.route]]\n  name = \"echo\"\n  protocol = \"tcp\"\n  backend = \"echo\"\n\n[[backend]]\nname = \"echo\"\nservers = [\"{echo}\"]\n"
        ),
    )
    .unwrap();
    let load = || sockgate::config::load(&path).unwrap();
    let old = sockgate::start_on(load(), sockgate::workers::Workers::spawn(3).unwrap())
        .await
        .unwrap();
    let addr = old.local_addr("tcp").unwrap();

    let sockets = old.handoff_sockets().unwrap();
    assert_eq!(sockets.listeners[0].fds.len(), 3);
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let (mut send, mut receive) = (
        sockgate::handoff::Channel::new(a),
        sockgate::handoff::Channel::new(b),
    );
    let (sent, received) = tokio::join!(send.offer(&sockets), receive.receive());
    sent.unwrap();
    drop(sockets);
    let mut inherited = received.unwrap();
    let new = sockgate::start_adopting(
        load(),
        sockgate::workers::Workers::current(),
        &mut inherited,
    )
    .await
    .unwrap();
    assert!(inherited.close_rest().is_empty());
    assert_eq!(new.local_addr("tcp"), Some(addr));

    // The old one stops accepting and drains; its sockets live on in the new one.
    old.hand_over();
    tokio::time::timeout(Duration::from_secs(10), old.wait())
        .await
        .expect("the old gateway drains at once: it has no connection");
    for n in 0..30 {
        round_trip(addr, n).await.unwrap();
    }
    let metrics = Metrics::parse(&new.metrics().render());
    assert_eq!(
        metrics.get("sockgate_connections_total", &[("listener", "tcp")]),
        30.0
    );
    new.drain();
    tokio::time::timeout(Duration::from_secs(10), new.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_udp_listener_hands_its_sockets_over_and_clients_go_on_through_the_new_process() {
    let echo = crate::udp::udp_echo(b"").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let config = dir.join("sockgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[defaults]
drain_timeout = "5s"
drain_spread = "1s"
[[listener]]
name = "voice"
listen = "127.0.0.1:0"
protocol = "udp"
route = [{{ name = "voice", backend = "voice" }}]
[[backend]]
name = "voice"
servers = ["{echo}"]
"#
        ),
    )
    .unwrap();
    let control = dir.join("control.sock").display().to_string();
    let config_arg = config.display().to_string();
    let mut gw = Binary::spawn(
        &[
            "--config",
            &config_arg,
            "--workers",
            "2",
            "--control-socket",
            &control,
        ],
        tmp,
    );
    let ready = gw.ready().await;
    let voice = addr(&ready, &["listeners", "voice"]);
    let old_pid = ready["pid"].as_u64().unwrap() as u32;
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let roundtrip = async |data: &[u8]| {
        client.send_to(data, voice).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("a reply within 5s")
            .unwrap();
        buf[..n].to_vec()
    };
    assert_eq!(roundtrip(b"before").await, b"before");

    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sockgate"))
            .args(["upgrade", "--control-socket", &control])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "upgrade: {}\ngateway: {}",
        String::from_utf8_lossy(&out.stderr),
        gw.stderr()
    );
    // The old process drains: its session ends with the drain, and it exits at once.
    let status = gw.exit_status(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.stderr());
    let text = std::fs::read_to_string(dir.join("ready.json")).unwrap();
    let ready: serde_json::Value = serde_json::from_str(&text).unwrap();
    let new = Successor(ready["pid"].as_u64().unwrap() as u32);
    assert_ne!(new.0, old_pid);
    // Same socket, same address: the client's next datagram opens a session in the new
    // process.
    assert_eq!(addr(&ready, &["listeners", "voice"]), voice);
    assert_eq!(roundtrip(b"after").await, b"after");
    let admin = addr(&ready, &["admin"]);
    let metrics = Metrics::parse(&http_get(admin, "/metrics").await.1);
    assert_eq!(
        metrics.get(
            "sockgate_connections_total",
            &[("listener", "voice"), ("protocol", "udp")]
        ),
        1.0
    );
    new.terminate().await;
}

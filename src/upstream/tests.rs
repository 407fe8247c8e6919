use std::time::Duration;

use std::sync::atomic::Ordering;

use super::*;
use crate::config::{BackendConfig, Balance, Passive, ServerConfig};

fn backend(addresses: &[String], balance: Balance, passive: Option<Passive>) -> BackendConfig {
    BackendConfig {
        name: "b".to_owned(),
        servers: addresses
            .iter()
            .map(|a| ServerConfig {
                address: a.clone(),
                weight: 1,
            })
            .collect(),
        balance,
        health: None,
        passive,
        send_proxy_protocol: None,
        tls: None,
    }
}

fn pool(config: &BackendConfig, timeout: Duration) -> Pool {
    Pool::new(config, timeout, &crate::metrics::Metrics::new(), None).unwrap()
}

fn opening() -> Opening {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    Opening {
        client: Some(addr),
        reached: addr,
        http: false,
    }
}

async fn dead_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

/// Keepalive on every backend socket that could lose its host silently; a loopback literal
/// cannot, and goes without (a name is not resolved twice to find out).
#[tokio::test]
async fn backend_sockets_have_keepalive_unless_the_server_is_a_loopback_literal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for (address, keepalive) in [
        (format!("127.0.0.1:{port}"), false),
        (format!("localhost:{port}"), true),
    ] {
        let config = backend(std::slice::from_ref(&address), Balance::RoundRobin, None);
        let pool = pool(&config, Duration::from_secs(2));
        let (stream, _) = pool.connect(Affinity::default(), opening()).await.unwrap();
        let BackendStream::Plain(stream) = stream else {
            panic!("a backend without tls is plain TCP");
        };
        let sock = socket2::SockRef::from(&stream);
        assert_eq!(sock.keepalive().unwrap(), keepalive, "{address}");
        if keepalive {
            assert_eq!(
                sock.tcp_keepalive_time().unwrap(),
                Duration::from_secs(60),
                "{address}"
            );
        }
        assert!(sock.tcp_nodelay().unwrap(), "{address}");
    }
}

#[test]
fn least_conn_takes_the_least_loaded_and_equal_servers_take_turns() {
    let addresses: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{i}")).collect();
    let pool = pool(
        &backend(&addresses, Balance::LeastConn, None),
        Duration::from_secs(1),
    );
    // Two connections held on server 0.
    let held = [Lease::new(&pool.servers, 0), Lease::new(&pool.servers, 0)];
    let a = pool
        .pick(
            Affinity::default(),
            pool.next.fetch_add(1, Ordering::Relaxed),
            &[],
        )
        .unwrap();
    let _a = Lease::new(&pool.servers, a);
    let b = pool
        .pick(
            Affinity::default(),
            pool.next.fetch_add(1, Ordering::Relaxed),
            &[],
        )
        .unwrap();
    let _b = Lease::new(&pool.servers, b);
    let mut picked = [a, b];
    picked.sort();
    assert_eq!(picked, [1, 2]);
    drop(held);
    // All idle again but 1 and 2: 0 is picked; then ties rotate rather than stick.
    assert_eq!(
        pool.pick(
            Affinity::default(),
            pool.next.fetch_add(1, Ordering::Relaxed),
            &[]
        ),
        Some(0)
    );
    drop((_a, _b));
    let turns: Vec<usize> = (0..6)
        .map(|_| {
            pool.pick(
                Affinity::default(),
                pool.next.fetch_add(1, Ordering::Relaxed),
                &[],
            )
            .unwrap()
        })
        .collect();
    let mut seen = turns.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [0, 1, 2],
        "ties always went to the same server: {turns:?}"
    );
    assert_eq!(pool.view()[0].active_connections, 0);
}

#[tokio::test]
async fn a_refused_server_moves_on_to_the_next_within_one_budget() {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addresses = [dead_port().await, live.local_addr().unwrap().to_string()];
    let pool = pool(
        &backend(&addresses, Balance::RoundRobin, None),
        Duration::from_secs(2),
    );
    let (_stream, lease) = pool.connect(Affinity::default(), opening()).await.unwrap();
    assert_eq!(lease.address(), addresses[1]);
    assert_eq!(pool.connect_errors.value(), 1);
}

#[tokio::test]
async fn consecutive_failures_eject_a_server_then_it_is_tried_again_with_backoff() {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addresses = [dead_port().await, live.local_addr().unwrap().to_string()];
    let passive = Passive {
        failures: 2,
        eject: Duration::from_millis(200),
    };
    let pool = pool(
        &backend(&addresses, Balance::RoundRobin, Some(passive)),
        Duration::from_secs(2),
    );
    // Round robin starts on the dead one; two failures eject it.
    for _ in 0..4 {
        pool.connect(Affinity::default(), opening()).await.unwrap();
    }
    assert_eq!(pool.connect_errors.value(), 2);
    assert!(!pool.view()[0].healthy);
    for _ in 0..10 {
        pool.connect(Affinity::default(), opening()).await.unwrap();
    }
    assert_eq!(
        pool.connect_errors.value(),
        2,
        "an ejected server was tried"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(pool.view()[0].healthy);
    // One failure after the ejection ends ejects it again, for twice as long.
    for _ in 0..2 {
        pool.connect(Affinity::default(), opening()).await.unwrap();
    }
    assert_eq!(pool.connect_errors.value(), 3);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !pool.view()[0].healthy,
        "the second ejection was not longer"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pool.view()[0].healthy);
}

#[tokio::test]
async fn no_server_available_is_its_own_error_and_counted() {
    let addresses = [dead_port().await];
    let passive = Passive {
        failures: 1,
        eject: Duration::from_secs(10),
    };
    let pool = pool(
        &backend(&addresses, Balance::RoundRobin, Some(passive)),
        Duration::from_secs(1),
    );
    assert!(matches!(
        pool.connect(Affinity::default(), opening()).await,
        Err(ConnectError::Io { .. })
    ));
    assert!(matches!(
        pool.connect(Affinity::default(), opening()).await,
        Err(ConnectError::NoHealthyServer { .. })
    ));
    assert_eq!(pool.no_healthy_server.value(), 1);
}

#[test]
fn weights_do_not_grow_memory() {
    // 1000 servers of weight 1000: the schedule holds one band, not a million slots.
    let addresses: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
        .collect();
    let mut config = backend(&addresses, Balance::RoundRobin, None);
    for s in &mut config.servers {
        s.weight = 1000;
    }
    let pool = pool(&config, Duration::from_secs(1));
    assert!(std::mem::size_of_val(&*pool.servers.list) < 1000 * 128);
}

#[tokio::test]
async fn udp_refusals_eject_passively_and_an_answer_resets_the_count() {
    let addresses = vec!["127.0.0.1:4001".to_owned(), "127.0.0.1:4002".to_owned()];
    let passive = Passive {
        failures: 2,
        eject: Duration::from_secs(10),
    };
    let pool = pool(
        &backend(&addresses, Balance::RoundRobin, Some(passive)),
        Duration::from_secs(1),
    );
    let (socket, lease) = pool.connect_udp(Affinity::default()).unwrap();
    assert_eq!(
        socket.peer_addr().unwrap().to_string(),
        lease.address(),
        "connected to the server picked"
    );
    assert_eq!(pool.view()[0].active_connections, 1, "the session counts");
    // One refusal, then an answer: the count starts again, so a second refusal ejects no one.
    pool.udp_refused(&lease);
    pool.udp_answered(&lease);
    pool.udp_refused(&lease);
    assert!(pool.view().iter().all(|s| s.healthy));
    // Two in a row eject the server.
    pool.udp_refused(&lease);
    let index = addresses.iter().position(|a| a == lease.address()).unwrap();
    assert!(!pool.view()[index].healthy);
    assert_eq!(pool.connect_errors.value(), 3);
    drop(lease);
    assert_eq!(pool.view()[index].active_connections, 0);
    // New sessions go to the other server.
    for _ in 0..3 {
        let (_, lease) = pool.connect_udp(Affinity::default()).unwrap();
        assert_ne!(lease.address(), addresses[index]);
    }
}

#[tokio::test]
async fn a_udp_server_named_by_host_name_is_not_connected() {
    let pool = pool(
        &backend(&["localhost:4000".to_owned()], Balance::RoundRobin, None),
        Duration::from_secs(1),
    );
    let e = pool.connect_udp(Affinity::default()).unwrap_err();
    assert!(
        crate::error::error_chain(&e).contains("needs an IP address"),
        "{}",
        crate::error::error_chain(&e)
    );
}

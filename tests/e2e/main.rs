//! End-to-end tests: real sockets on 127.0.0.1, real TLS with generated certificates, real
//! WebSocket clients and backends, and the built binary as a child process. One test binary
//! made of modules, so it links once.
#![allow(clippy::unwrap_used)]

// The binary's dev certificates and demo echo backends, reused as test fixtures.
#[allow(dead_code)]
#[path = "../../src/certgen.rs"]
mod certgen;
#[allow(dead_code)]
#[path = "../../src/demo.rs"]
mod demo;

mod admin;
mod backend_tls;
mod balance;
mod certwatch;
mod cli;
mod deploy;
mod h2;
mod http;
mod limits;
mod mtls;
mod passthrough;
mod proxy_protocol;
mod python;
mod reload;
mod shed;
mod support;
mod tcp;
mod tls;
mod udp;
mod unix;
mod upgrade;
mod websocket;
mod ws_close;
mod ws_hostile;

#!/usr/bin/env bash
# Runs the whole test suite: unit tests, property tests and the end-to-end tests (real
# sockets on 127.0.0.1, real TLS, real WebSocket clients, the built binary as a child).
# Installs what the tests need first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from your distribution or rustup first" >&2
  exit 1
fi

# The WebSocket interop test drives Python's `websockets` (it negotiates permessage-deflate).
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  echo "installing the Python websockets package for the interop test"
  python3 -m pip install --quiet --disable-pip-version-check 'websockets>=13' \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'websockets>=13'
fi

# The HTTP/2 test drives a real browser: headless Chromium opens a WebSocket over h2.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium for the browser test"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
    || echo "chromium could not be installed: the browser test will say it is skipped" >&2
fi

cargo test --locked --all-targets "$@"

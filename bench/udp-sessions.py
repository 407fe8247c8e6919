#!/usr/bin/env python3
"""RSS of a gateway holding N idle UDP sessions.

Starts a UDP echo server and `sockgate` (the binary given) with one udp listener, measures
the gateway's RSS, opens N client sockets that each send one datagram and read the echo
(one session each), waits, and measures again. Prints the RSS before and after and the
cost per session. Needs N + ~100 open files here and N + ~100 in the gateway (one socket
per session): stay under `ulimit -n`.

    python3 bench/udp-sessions.py target/release/sockgate 5000
"""
import json, os, select, socket, subprocess, sys, tempfile, threading, time

binary, n = sys.argv[1], int(sys.argv[2])
workers = sys.argv[3] if len(sys.argv) > 3 else "1"

echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
echo.bind(("127.0.0.1", 0))
echo.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
def serve():
    while True:
        data, addr = echo.recvfrom(65535)
        echo.sendto(data, addr)
threading.Thread(target=serve, daemon=True).start()

d = tempfile.mkdtemp()
cfg = os.path.join(d, "sockgate.toml")
with open(cfg, "w") as f:
    f.write(f"""
[[listener]]
name = "voice"
listen = "127.0.0.1:0"
protocol = "udp"
  [[listener.route]]
  name = "voice"
  backend = "voice"
  session_idle_timeout = "10m"
[[backend]]
name = "voice"
servers = ["127.0.0.1:{echo.getsockname()[1]}"]
""")
ready = os.path.join(d, "ready.json")
gw = subprocess.Popen([binary, "--config", cfg, "--ready-file", ready, "--workers", workers],
                      stderr=subprocess.DEVNULL)
for _ in range(500):
    if os.path.exists(ready) and os.path.getsize(ready) > 0:
        break
    time.sleep(0.02)
host, port = json.load(open(ready))["listeners"]["voice"].rsplit(":", 1)
addr = (host, int(port))

def rss_kib():
    for line in open(f"/proc/{gw.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

time.sleep(0.5)
before = rss_kib()
clients = []
answered = 0
for i in range(n):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.sendto(b"hello %d" % i, addr)
    clients.append(c)
    # Read replies as they come, so no client buffer overflows.
    if i % 200 == 199 or i == n - 1:
        deadline = time.time() + 5
        pending = [x for x in clients[answered:]]
        for x in pending:
            x.settimeout(max(0.01, deadline - time.time()))
            try:
                x.recvfrom(64)
                answered += 1
            except socket.timeout:
                pass
time.sleep(1)
after = rss_kib()
gw.terminate()
gw.wait()
print(f"sessions={n} answered={answered} workers={workers} rss_before_kib={before} "
      f"rss_after_kib={after} per_session_bytes={(after - before) * 1024 / max(answered, 1):.0f}")

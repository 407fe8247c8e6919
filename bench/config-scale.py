#!/usr/bin/env python3
"""How config handling grows: `sockgate check` time, reload time and resident memory for
configs of N routes (each on its own host, to its own backend of S servers, one by default)
and, optionally, C SNI certificates (every fourth a wildcard name).

Usage: bench/config-scale.py SOCKGATE_BINARY [--routes 10,1000,10000,100000] [--certs 0,10000]
                             [--servers 1,10]

For each size: writes the config to a temporary folder, times `sockgate check` (best of 3),
starts `sockgate --config F --workers 1` with an admin endpoint, reads VmRSS once it is
ready, times `POST /reload` of the same file (best of 3: what a SIGHUP costs, from request
to answer), reads VmRSS again, and stops the process. Prints one Markdown table.
Memory per route is the RSS difference between sizes divided by the routes added; memory
per backend server, the difference between server counts at one size divided by the servers
added.
"""
import json, os, signal, socket, subprocess, sys, tempfile, time, urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_config(folder, routes, certs, admin, servers=1):
    cert = os.path.join(folder, "server.crt")
    key = os.path.join(folder, "server.key")
    lines = [f'[admin]\nlisten = "127.0.0.1:{admin}"\n',
             '[[listener]]\nname = "edge"\nlisten = "127.0.0.1:0"\n']
    if certs:
        lines.append(f'[listener.tls]\ncert = "{cert}"\nkey = "{key}"\n')
        for i in range(certs):
            name = f"*.w{i}.example.com" if i % 4 == 0 else f"c{i}.example.com"
            lines.append(f'  [[listener.tls.sni]]\n  names = ["{name}"]\n'
                         f'  cert = "{cert}"\n  key = "{key}"\n')
    for i in range(routes):
        lines.append(f'  [[listener.route]]\n  name = "r{i}"\n  host = "h{i}.example.com"\n'
                     f'  backend = "b{i}"\n')
    for i in range(routes):
        addresses = ", ".join(f'"127.0.0.1:{1024 + (i * servers + j) % 60000}"'
                              for j in range(servers))
        lines.append(f'[[backend]]\nname = "b{i}"\nservers = [{addresses}]\n')
    path = os.path.join(folder, "sockgate.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def best_of(n, run):
    return min(run() for _ in range(n))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    sizes = [10, 1000, 10000, 100000]
    cert_counts = [0]
    server_counts = [1]
    args = sys.argv[2:]
    while args:
        flag, value = args[0], args[1]
        args = args[2:]
        if flag == "--routes":
            sizes = [int(v) for v in value.split(",")]
        elif flag == "--certs":
            cert_counts = [int(v) for v in value.split(",")]
        elif flag == "--servers":
            server_counts = [int(v) for v in value.split(",")]
    print("| routes + backends | servers per backend | SNI certificates | config size | check (s) | reload (s) | RSS after start (MiB) | RSS after reload (MiB) |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for certs, servers, routes in [(c, s, r) for c in cert_counts for s in server_counts
                                   for r in sizes]:
        with tempfile.TemporaryDirectory() as folder:
            if certs:
                subprocess.run([binary, "cert", "dev", "--out", folder],
                               check=True, capture_output=True)
            admin = free_port()
            path = write_config(folder, routes, certs, admin, servers)

            def check():
                started = time.monotonic()
                subprocess.run([binary, "check", "--config", path], check=True,
                               capture_output=True)
                return time.monotonic() - started
            check_s = best_of(3, check)

            ready = os.path.join(folder, "ready.json")
            proc = subprocess.Popen([binary, "--config", path, "--workers", "1",
                                     "--ready-file", ready],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 120
                while not os.path.exists(ready):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"the gateway did not start with {routes} routes")
                    time.sleep(0.05)
                rss_start = rss_kib(proc.pid)

                def reload():
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{admin}/reload", method="POST")
                    started = time.monotonic()
                    with urllib.request.urlopen(request, timeout=300) as answer:
                        body = json.load(answer)
                    took = time.monotonic() - started
                    assert body.get("result") == "ok", body
                    return took
                reload_s = best_of(3, reload)
                rss_reload = rss_kib(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            size = os.path.getsize(path)
            print(f"| {routes:,} | {servers} | {certs:,} | {size / 1e6:.1f} MB | {check_s:.3f} | "
                  f"{reload_s:.3f} | {rss_start / 1024:.1f} | {rss_reload / 1024:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()

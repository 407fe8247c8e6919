#!/usr/bin/env python3
"""CPU of a sockgate process while and after a client sends a text
message as 30,000 empty non-final fragments (6 bytes each, masked) in one 180 KB burst,
then its final fragment.

Usage: bench/ws-fragment-burst.py SOCKGATE_BINARY
Starts `SOCKGATE demo --workers 1` (TLS listener, built-in WebSocket echo backend) on free
loopback ports, runs the client, samples utime+stime of every thread of the process from
/proc/PID/task/*/stat, prints the deltas per thread, and stops the process.
"""
import os, socket, ssl, subprocess, sys, tempfile, time, json

HZ = os.sysconf("SC_CLK_TCK")
KEY = bytes([0x9C, 0x04, 0x5E, 0xA1])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def frame(b0, payload=b""):
    assert len(payload) < 126
    return bytes([b0, 0x80 | len(payload)]) + KEY + bytes(
        b ^ KEY[i % 4] for i, b in enumerate(payload))


def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / HZ
    return out


def delta(a, b):
    return {k: round(b[k] - a.get(k, 0.0), 2) for k in b }


def main():
    binary = sys.argv[1]
    listen, admin = free_port(), free_port()
    work = tempfile.mkdtemp()
    ready = os.path.join(work, "ready.json")
    gw = subprocess.Popen([binary, "demo", "--workers", "1", "--listen", f"127.0.0.1:{listen}",
                           "--admin", f"127.0.0.1:{admin}", "--ready-file", ready],
                          cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists(ready) and os.path.getsize(ready) > 0:
                break
            time.sleep(0.05)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", listen)),
                               server_hostname="localhost")
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        rest = head[head.index(b"\r\n\r\n") + 4:]

        burst = frame(0x01) + frame(0x00) * 29_999
        assert len(burst) == 180_000
        t0, c0 = time.monotonic(), threads(gw.pid)
        sock.sendall(burst)
        sock.sendall(frame(0x80, b"end"))
        sock.settimeout(5)
        echoed = False
        try:
            while not echoed:
                rest += sock.recv(4096)
                echoed = rest.startswith(b"\x81\x03end")
        except socket.timeout:
            pass
        t1, c1 = time.monotonic(), threads(gw.pid)
        time.sleep(3)
        t2, c2 = time.monotonic(), threads(gw.pid)
        print(json.dumps({
            "binary": binary,
            "echo_received": echoed,
            "burst_phase_s": round(t1 - t0, 2),
            "burst_phase_cpu_s": delta(c0, c1),
            "idle_phase_s": round(t2 - t1, 2),
            "idle_phase_cpu_s": delta(c1, c2),
        }, indent=1))
        sock.close()
    finally:
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait()


main()

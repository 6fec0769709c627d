#!/usr/bin/env python3
"""Measures the server's HTTP endpoints under the attacks of issue 13 (items 3, 6 and 8).

Starts `probermesh server` on loopback (a fresh data directory, static discovery), under
`prlimit --nofile=<n>:<n>` for the descriptor attack so that the server cannot raise its own
soft limit, runs one attack and prints what it measured:

  idle      N idle TCP connections, then: how long /metrics takes, and the server's CPU
            (user + system, all threads) over a window as a share of the wall time.
  targets   a pool of T targets; one /-/targets alone (its CPU and size), then P parallel
            /-/targets while /-/healthy is asked every 10 ms: the slowest /-/healthy and the
            server's peak RSS (VmHWM).
  reload    what /-/reload answers to GET, to `bearer` in lower case, to a wrong token; and
            how many refusal lines 51 wrong tokens (50 at once, one 1.1 s later) write.

Usage: scripts/attack-admin.py BINARY idle|targets|reload [--connections 1100] [--fd-limit 1024]
       [--targets 900000] [--parallel 20]
Traffic goes to 127.0.0.1 only; the server and its directory are removed at the end.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

TOKEN = "attack-admin-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def request(port, method, path, auth=None, timeout=30.0):
    """One HTTP/1.1 request; (status, headers text, body bytes, seconds)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if auth is not None:
            head += f"Authorization: {auth}\r\n"
        s.sendall((head + "Content-Length: 0\r\n\r\n").encode())
        data = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    seconds = time.monotonic() - start
    header, _, body = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1]) if header else 0
    return status, header.decode(errors="replace"), body, seconds


def wait_for(port, deadline_s=60.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/-/healthy", timeout=2.0)[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not answer /-/healthy within 60 s")


def probe_file(path, targets):
    per_block = 100_000
    with open(path, "w") as f:
        f.write("prober_configs:\n")
        block = 0
        while targets > 0:
            n = min(per_block, targets)
            names = ", ".join(f"h{block}x{i}" for i in range(n))
            f.write(f"  - {{prober_type: icmp, region: r{block}, targets: [{names}]}}\n")
            targets -= n
            block += 1


def start(binary, workdir, fd_limit=None, targets=0, log=None):
    token_file = os.path.join(workdir, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    http_port = free_port(socket.SOCK_STREAM)
    args = [
        binary, "server",
        "--rpc-listen-addr", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
        "--http-listen-addr", f"127.0.0.1:{http_port}",
        "--data-dir", os.path.join(workdir, "data"),
        "--auth-token-file", token_file,
        "--icmp-discovery", "static",
        "--log-level", "4",
    ]
    pool = os.path.join(workdir, "probe.yaml")
    probe_file(pool, targets)
    args += ["--probe-file", pool]
    if fd_limit is not None:
        args = ["prlimit", f"--nofile={fd_limit}:{fd_limit}", "--"] + args
    server = subprocess.Popen(args, stderr=log or subprocess.DEVNULL)
    wait_for(http_port)
    return server, http_port


def idle(binary, workdir, options):
    server, port = start(binary, workdir, fd_limit=options.fd_limit)
    try:
        held = []
        for _ in range(options.connections):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10.0))
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        try:
            status, _, _, seconds = request(port, "GET", "/metrics", timeout=30.0)
            answer = f"{status} in {seconds * 1000:.0f} ms"
        except OSError as error:
            answer = f"no answer ({error}) after {time.monotonic() - t0:.1f} s"
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
        share = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        print(f"{options.connections} idle connections, fd limit {options.fd_limit}: "
              f"/metrics {answer}; server CPU {share * 100:.0f} % of wall over "
              f"{time.monotonic() - t0:.1f} s")
        for s in held:
            s.close()
    finally:
        server.kill()
        server.wait()


def targets(binary, workdir, options):
    server, port = start(binary, workdir, targets=options.targets)
    try:
        print(f"server started with {options.targets} targets: peak RSS "
              f"{peak_rss_mib(server.pid):.0f} MiB")
        cpu0 = cpu_seconds(server.pid)
        status, _, body, seconds = request(port, "GET", "/-/targets")
        print(f"one /-/targets: {status}, {len(body) / 1e6:.1f} MB, "
              f"{seconds:.2f} s, server CPU {cpu_seconds(server.pid) - cpu0:.2f} s")
        cpu0 = cpu_seconds(server.pid)
        slowest = [0.0]
        done = threading.Event()

        def healthy():
            while not done.is_set():
                slowest[0] = max(slowest[0], request(port, "GET", "/-/healthy")[3])
                time.sleep(0.01)

        watcher = threading.Thread(target=healthy)
        watcher.start()
        t0 = time.monotonic()
        workers = [threading.Thread(target=request, args=(port, "GET", "/-/targets"))
                   for _ in range(options.parallel)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.monotonic() - t0
        done.set()
        watcher.join()
        print(f"{options.parallel} parallel /-/targets: {wall:.2f} s, server CPU "
              f"{cpu_seconds(server.pid) - cpu0:.2f} s, slowest /-/healthy meanwhile "
              f"{slowest[0] * 1000:.0f} ms, peak RSS {peak_rss_mib(server.pid):.0f} MiB")
    finally:
        server.kill()
        server.wait()


def reload(binary, workdir, options):
    log_path = os.path.join(workdir, "server.log")
    with open(log_path, "w") as log:
        server, port = start(binary, workdir, log=log)
    try:
        for method, auth in [("GET", f"Bearer {TOKEN}"), ("TRACE", f"Bearer {TOKEN}"),
                             ("POST", f"bearer {TOKEN}"), ("POST", f"BEARER   {TOKEN}"),
                             ("POST", f"Bearer {TOKEN}"), ("POST", "Bearer wrong")]:
            status, header, body, _ = request(port, method, "/-/reload", auth)
            allow = [l for l in header.split("\r\n") if l.lower().startswith("allow:")]
            print(f"{method} /-/reload with {auth.split()[0]!r}: {status} "
                  f"{body.decode(errors='replace').strip()!r} {allow}")
        time.sleep(1.1)
        skip = len(open(log_path).read().splitlines())
        for _ in range(50):
            request(port, "POST", "/-/reload", "Bearer wrong")
        time.sleep(1.1)
        request(port, "POST", "/-/reload", "Bearer wrong")
        time.sleep(0.2)
        lines = [l for l in open(log_path).read().splitlines()[skip:] if "refused" in l]
        suppressed = sum(int(w.split("=", 1)[1]) for l in lines for w in l.split()
                         if w.startswith("suppressed="))
        print(f"51 wrong tokens: {len(lines)} log lines (suppressed= adds up to {suppressed}); "
              f"last: {lines[-1] if lines else None!r}")
    finally:
        server.kill()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary")
    parser.add_argument("attack", choices=["idle", "targets", "reload"])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--fd-limit", type=int, default=1024)
    parser.add_argument("--targets", type=int, default=900_000)
    parser.add_argument("--parallel", type=int, default=20)
    options = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="probermesh-attack-")
    try:
        {"idle": idle, "targets": targets, "reload": reload}[options.attack](
            os.path.abspath(options.binary), workdir, options)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What a request pays for going through Sluice, next to what a plain proxy costs, in one run.

Called by `scripts/bench proxy` (which builds the release binaries first):

    bench-proxy.py --sluice BIN --mock BIN --config Config/sluice.json
                   [--seconds 10] [--connections 32] [--threads 2] [--stream-requests 200]

Starts, on free loopback ports: sluice-mock (the upstream), nginx (proxy_pass with an upstream
keep-alive pool), redis-server (no persistence), Sluice with the embedded limiter and Sluice with the
Redis limiter; every process is stopped again on exit, Ctrl-C or SIGTERM. Each target is warmed up,
then measured with the same wrk settings, one after another, so the rows are comparable.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import pwd
import grp
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_KEY_COUNT = 8
PROMPT = ("The quick brown fox jumps over the lazy dog near the river bank while the sun sets slowly. " * 8).strip()
CHAT_PATH = "/v1/chat/completions"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """An ephemeral loopback port that is free now (never one of the fixed ports the tests use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Every process this benchmark starts, each in its own session; `stop_all` ends them in reverse order."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self.started.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for name, proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for name, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) did not stop within 10 s; killing it")
                proc.kill()
                proc.wait()
        self.started.clear()


def wait_until(what: str, check, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"{what} exited during start-up; see {log_path}:\n{log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            sys.exit(f"{what} not ready after {timeout:.0f} s; see {log_path}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except Exception:
        return False


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- /proc accounting

def process_tree(pid: int) -> list[int]:
    """`pid` and its direct children (nginx: master and workers; the others are one process)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / CLOCK_TICKS


def memory_kib(pids: list[int], field: str) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


# ---------------------------------------------------------------- wrk

@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def parse_wrk(text: str) -> WrkResult:
    def latency(percent: str) -> float:
        m = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            raise ValueError(f"no {percent}% latency in wrk output:\n{text}")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    requests = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not requests or not rps:
        raise ValueError(f"unexpected wrk output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(int(requests.group(1)), float(rps.group(1)), latency("50"), latency("99"),
                     int(non_2xx.group(1)) if non_2xx else 0,
                     sum(int(g) for g in errors.groups()) if errors else 0)


def wrk_script(path: Path, secrets: list[str]) -> None:
    """A wrk script sending the non-streamed chat request, rotating the API key per request.

    The requests are formatted once in `init`, so wrk spends the same (tiny) time per request on
    every row."""
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]})
    lua_keys = ", ".join(json.dumps(s) for s in secrets)
    path.write_text(f"""
local secrets = {{ {lua_keys} }}
local body = {json.dumps(body)}
local requests = {{}}
local next_index = 0
function init(args)
  for i, secret in ipairs(secrets) do
    requests[i] = wrk.format("POST", "{CHAT_PATH}",
      {{ ["Host"] = wrk.headers["Host"], ["Content-Type"] = "application/json",
         ["Authorization"] = "Bearer " .. secret }}, body)
  end
end
function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end
""")


# ---------------------------------------------------------------- streaming TTFB

def stream_timings(port: int, count: int, tokens: int, delay_ms: int, secret: str) -> list[list[float]]:
    """`count` sequential streamed requests over one keep-alive connection; for each, the arrival
    times (ms after the request was sent) of every server-sent event."""
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}",
               "x-mock-token-delay-ms": str(delay_ms), "x-mock-completion-tokens": str(tokens)}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    runs = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", CHAT_PATH, body=body, headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"streamed request to port {port}: HTTP {response.status}: {response.read()[:300]!r}")
            arrivals, pending = [], b""
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    break
                now = (time.perf_counter() - started) * 1000
                pending += chunk
                while b"\n\n" in pending:
                    _, pending = pending.split(b"\n\n", 1)
                    arrivals.append(now)
            runs.append(arrivals)
    finally:
        connection.close()
    return runs


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# ---------------------------------------------------------------- the run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--mock", required=True)
    parser.add_argument("--config", required=True, help="the Sluice config the bench configs are derived from")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup-seconds", type=int, default=3)
    parser.add_argument("--stream-requests", type=int, default=200)
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (scripts/setup installs it)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        sys.exit("nginx is not installed (scripts/setup installs it)")

    # SIGTERM and SIGHUP take the same way out as Ctrl-C, through the `finally` that stops everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    processes = Processes()
    try:
        run(args, nginx, work, processes)
    finally:
        processes.stop_all()
        if os.environ.get("BENCH_KEEP_WORKDIR"):
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, nginx: str, work: Path, processes: Processes) -> None:
    mock_port, nginx_port, redis_port, embedded_port, redis_sluice_port = (free_port() for _ in range(5))

    # sluice-mock, the upstream of every row.
    mock = processes.start("sluice-mock", [args.mock, "--host", "127.0.0.1", "--port", str(mock_port)], work / "mock.log")
    wait_until("sluice-mock", lambda: http_ok(f"http://127.0.0.1:{mock_port}/v1/models"), mock, work / "mock.log")

    # redis-server: loopback only, no persistence (as scripts/cluster runs it).
    (work / "redis").mkdir()
    (work / "redis/redis.conf").write_text("\n".join([
        "bind 127.0.0.1", f"port {redis_port}", f"dir {work}/redis", f"logfile {work}/redis/redis.log",
        'save ""', "appendonly no", "protected-mode yes", "daemonize no", ""]))
    redis = processes.start("redis-server", ["redis-server", str(work / "redis/redis.conf")], work / "redis/stdout.log")
    wait_until("redis-server", lambda: tcp_open(redis_port), redis, work / "redis/redis.log")

    # nginx: a plain reverse proxy with an upstream keep-alive pool.
    (work / "nginx/tmp").mkdir(parents=True)
    # nginx's workers would otherwise switch to `nobody` when started by root.
    user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};" if os.getuid() == 0 else ""
    (work / "nginx/nginx.conf").write_text(f"""
# Generated by scripts/bench-proxy.py: what a plain proxy costs in front of sluice-mock.
{user}
daemon off;
worker_processes 1;
pid {work}/nginx/nginx.pid;
error_log {work}/nginx/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx/tmp/client_body;
  proxy_temp_path {work}/nginx/tmp/proxy;
  fastcgi_temp_path {work}/nginx/tmp/fastcgi;
  uwsgi_temp_path {work}/nginx/tmp/uwsgi;
  scgi_temp_path {work}/nginx/tmp/scgi;
  client_max_body_size 32m;
  upstream mock {{
    server 127.0.0.1:{mock_port};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    nginx_proc = processes.start("nginx", [nginx, "-p", f"{work}/nginx/", "-c", f"{work}/nginx/nginx.conf",
                                           "-e", f"{work}/nginx/error.log"], work / "nginx/stdout.log")
    wait_until("nginx", lambda: http_ok(f"http://127.0.0.1:{nginx_port}/v1/models"), nginx_proc, work / "nginx/error.log")

    # Two Sluice configs from the given one: bench keys with a generous tier, the mock upstream, and
    # (the second) a redis section.
    secrets = [f"sk-sluice-bench-{i}" for i in range(1, BENCH_KEY_COUNT + 1)]
    base = json.loads(Path(args.config).read_text())
    base["tiers"]["bench"] = {"requests_per_minute": 150_000_000, "tokens_per_minute": 150_000_000,
                              "max_concurrent_requests": 100_000}
    base["keys"] = base.get("keys", []) + [
        {"id": f"bench-{i}", "secret_sha256": hashlib.sha256(s.encode()).hexdigest(), "tier": "bench",
         "default_output_tokens": 1024} for i, s in enumerate(secrets, 1)]
    for upstream in base["upstreams"]:
        upstream["base_url"] = f"http://127.0.0.1:{mock_port}/v1"
    base.pop("redis", None)
    sluice_env = dict(os.environ, SLUICE_LOG_LEVEL="warning")
    sluices = {}
    for name, port, redis_section in (
            ("sluice-embedded", embedded_port, None),
            ("sluice-redis", redis_sluice_port, {"url": f"redis://127.0.0.1:{redis_port}", "on_failure": "local",
                                                 "fallback_node_count": 1})):
        config = json.loads(json.dumps(base))
        config.setdefault("server", {})["port"] = port
        config["server"]["host"] = "127.0.0.1"
        if redis_section:
            config["redis"] = redis_section
        (work / f"{name}.json").write_text(json.dumps(config, indent=2))
        proc = processes.start(name, [args.sluice, "serve", "--config", str(work / f"{name}.json")],
                               work / f"{name}.log", env=sluice_env)
        wait_until(name, lambda p=port: http_ok(f"http://127.0.0.1:{p}/readyz"), proc, work / f"{name}.log")
        sluices[name] = proc
    with urllib.request.urlopen(f"http://127.0.0.1:{redis_sluice_port}/readyz") as response:
        limiter = json.load(response).get("limiter")
    if limiter != "redis":
        sys.exit(f"the Redis-backed Sluice reports limiter {limiter!r}, not 'redis'; see {work}/sluice-redis.log")

    lua = work / "chat.lua"
    wrk_script(lua, secrets)
    # Each row: label, port, the measured proxy process (None: the floor has no proxy).
    rows = [
        ("(a) wrk → sluice-mock (floor)", mock_port, None),
        ("(b) wrk → nginx → mock", nginx_port, nginx_proc),
        ("(c) wrk → Sluice (embedded) → mock", embedded_port, sluices["sluice-embedded"]),
        ("(d) wrk → Sluice (Redis) → mock", redis_sluice_port, sluices["sluice-redis"]),
    ]
    results = []
    redis_cpu_per_request = None
    for label, port, proc in rows:
        url = f"http://127.0.0.1:{port}{CHAT_PATH}"
        pids = process_tree(proc.pid) if proc else []
        idle_kib = memory_kib(pids, "VmRSS") if proc else None
        log(f"{label}: warming up {args.warmup_seconds} s, measuring {args.seconds} s")
        subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.warmup_seconds}s",
                        "-s", str(lua), url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        cpu_before = cpu_seconds(pids) if proc else 0.0
        redis_before = cpu_seconds([redis.pid])
        output = subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s",
                                 "--latency", "-s", str(lua), url], capture_output=True, text=True, check=False)
        cpu_after = cpu_seconds(pids) if proc else 0.0
        redis_after = cpu_seconds([redis.pid])
        (work / f"wrk-{port}.txt").write_text(output.stdout + output.stderr)
        result = parse_wrk(output.stdout)
        if proc is sluices["sluice-redis"] and result.requests:
            redis_cpu_per_request = (redis_after - redis_before) / result.requests * 1e6
        peak_kib = memory_kib(pids, "VmHWM") if proc else None
        cpu_us = (cpu_after - cpu_before) / result.requests * 1e6 if proc and result.requests else None
        results.append((label, result, idle_kib, peak_kib, cpu_us))

    log(f"streaming: {args.stream_requests} sequential requests each, direct and through Sluice (embedded)")
    stream_tokens, stream_delay = 20, 5
    direct_runs = stream_timings(mock_port, args.stream_requests, stream_tokens, stream_delay, secrets[0])
    sluice_runs = stream_timings(embedded_port, args.stream_requests, stream_tokens, stream_delay, secrets[0])

    print_table(args, results, redis_cpu_per_request)
    print_streaming(direct_runs, sluice_runs, stream_tokens, stream_delay)


def print_table(args, results, redis_cpu_per_request) -> None:
    floor, plain = results[0][1], results[1][1]
    plain_added = (plain.p50_ms - floor.p50_ms, plain.p99_ms - floor.p99_ms)
    mib = lambda kib: f"{kib / 1024:.1f}" if kib is not None else "—"
    print(f"\nNon-streamed chat completion, ~150-token prompt, {BENCH_KEY_COUNT} keys in rotation; "
          f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s on every row, one run:\n")
    header = (f"{'path':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 µs':>9}{'+p99 µs':>9}"
              f"{'req/s÷b':>9}{'+p50÷b':>8}{'RSS idle':>10}{'RSS peak':>10}{'CPU µs/req':>12}{'errors':>8}")
    print(header)
    print("-" * len(header))
    for label, r, idle, peak, cpu in results:
        added = (r.p50_ms - floor.p50_ms, r.p99_ms - floor.p99_ms)
        is_floor = r is floor
        added_p50 = "—" if is_floor else f"{added[0] * 1000:.0f}"
        added_p99 = "—" if is_floor else f"{added[1] * 1000:.0f}"
        ratio_p50 = "—" if is_floor or plain_added[0] <= 0 else f"{added[0] / plain_added[0]:.2f}"
        print(f"{label:<36}{r.rps:>9.0f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{added_p50:>9}{added_p99:>9}"
              f"{r.rps / plain.rps:>9.2f}{ratio_p50:>8}{mib(idle):>10}{mib(peak):>10}"
              f"{(f'{cpu:.0f}' if cpu is not None else '—'):>12}{r.non_2xx + r.socket_errors:>8}")
    print("\nRSS in MiB of the proxy process (nginx: master + worker); CPU µs/req = its user+system time ÷ requests.")
    if redis_cpu_per_request is not None:
        print(f"Row (d) also cost redis-server {redis_cpu_per_request:.0f} µs CPU per request (not in the row).")


def print_streaming(direct_runs, sluice_runs, tokens: int, delay_ms: int) -> None:
    def ttfb(runs):
        return [r[0] for r in runs if r]
    d_ttfb, s_ttfb = ttfb(direct_runs), ttfb(sluice_runs)
    # Per event index, the median arrival time; the added latency per chunk is the median over the
    # events both paths delivered of (through Sluice − direct).
    events = min(min(len(r) for r in direct_runs), min(len(r) for r in sluice_runs))
    per_chunk = [statistics.median(r[k] for r in sluice_runs) - statistics.median(r[k] for r in direct_runs)
                 for k in range(events)]
    d_last = [r[-1] for r in direct_runs]
    s_last = [r[-1] for r in sluice_runs]
    print(f"\nStreamed chat completion, {tokens} tokens {delay_ms} ms apart, {len(direct_runs)} sequential requests per path:\n")
    header = f"{'path':<36}{'TTFB p50 ms':>13}{'TTFB p99 ms':>13}{'last event p50 ms':>19}{'events':>8}"
    print(header)
    print("-" * len(header))
    print(f"{'client → sluice-mock (direct)':<36}{statistics.median(d_ttfb):>13.3f}{percentile(d_ttfb, 99):>13.3f}"
          f"{statistics.median(d_last):>19.3f}{min(len(r) for r in direct_runs):>8}")
    print(f"{'client → Sluice (embedded) → mock':<36}{statistics.median(s_ttfb):>13.3f}{percentile(s_ttfb, 99):>13.3f}"
          f"{statistics.median(s_last):>19.3f}{min(len(r) for r in sluice_runs):>8}")
    print(f"\nSluice adds {1000 * (statistics.median(s_ttfb) - statistics.median(d_ttfb)):.0f} µs to the median TTFB "
          f"({1000 * (percentile(s_ttfb, 99) - percentile(d_ttfb, 99)):.0f} µs at p99) and a median "
          f"{1000 * statistics.median(per_chunk):.0f} µs per chunk (max {1000 * max(per_chunk):.0f} µs over {events} events).")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

#!/usr/bin/env python3
"""What a request pays for going through Sluice, next to what a plain proxy costs, in one run.

Called by `scripts/bench proxy` and `scripts/bench soak` (which build the release binaries first):

    bench-proxy.py --sluice BIN --mock BIN --config Config/sluice.json
                   [--seconds 8] [--runs 3] [--connections 32] [--threads 2] [--stream-requests 200]
                   [--c1-seconds 5]
    bench-proxy.py --sluice BIN --mock BIN --config Config/sluice.json --soak 600

With `--baseline-sluice PATH` (an older sluice binary; `BENCH_BASELINE_SLUICE` in scripts/bench) a fifth
row, (c′), runs that binary with the embedded limiter beside (c), interleaved with the others: a change's
cost measured in one run, against the same reference (it must accept the same bench config).

Starts, on free loopback ports: sluice-mock (the upstream), nginx (proxy_pass with an upstream
keep-alive pool), redis-server (no persistence), Sluice with the embedded limiter and Sluice with the
Redis limiter; every process is stopped again on exit, Ctrl-C or SIGTERM. The output starts with one
line naming the machine and the date (UTC), so a table copied elsewhere can cite both.

Throughput: every target is warmed up once, then measured with the same wrk settings in `--runs`
interleaved rounds (a, b, c, d, a, b, c, d, …) so slow drifts of the machine hit every row alike. The
table shows the median per row (ratios are computed from the medians); a second table shows how noisy
the runs were (min–max per row, and the per-run ratios c÷b and d÷b). RSS idle is sampled before the
first round, RSS peak is the high-water mark after the last.

Latency at a fixed rate: the throughput table measures latency at saturation, where it is mostly
queueing. The latency a client actually sees under ordinary load is measured at R = half of row (d)'s
median req/s, for every row (nginx as the reference for what a plain proxy adds), over 8 connections.
Debian's wrk 4 has no -R, so the rate comes from wrk's Lua `delay()` hook, which makes each request
wait for its slot in a timetable of R per second (see `PACING`; a plain fixed wait would fall short of
R by the latency). wrk's latency excludes the wait; the output shows the rate wrk achieved next to R,
and the targets for the latency Sluice adds.

Concurrency 1 (`--c1-seconds`, default 5): one connection, one request at a time, every row in `--runs`
interleaved rounds; the latency each row adds over the floor of the same round (p50, p99), median over
the rounds, with issue 19's target: Sluice's added p99 at most 2.5 × nginx's.

Soak (`--soak SECONDS`, instead of all of the above): only sluice-mock, redis-server and Sluice with
the Redis limiter; wrk at full speed for SECONDS, in chunks of up to 30 s, with Sluice's VmRSS and
VmHWM sampled after each chunk: memory has to stay under the targets and flat, not grow with the
number of requests served.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from datetime import datetime, timezone
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_KEY_COUNT = 8
PROMPT = ("The quick brown fox jumps over the lazy dog near the river bank while the sun sets slowly. " * 8).strip()
CHAT_PATH = "/v1/chat/completions"
# The fixed-rate section: enough connections that one is free at every send slot, few enough that
# they do not change what the server sees (at half the peak rate each is idle most of the time).
PACED_CONNECTIONS = 8
# The issue's targets: latency Sluice adds at half of (d)'s peak rate, and Sluice's memory.
TARGET_ADDED_P50_US = 250
TARGET_REDIS_GAP_P50_US = 150  # issue 13: row (d) adds at most this much more than row (c) at p50
TARGET_ADDED_P99_US = 1000
TARGET_C1_P99_FACTOR = 2.5    # issue 19: at concurrency 1, Sluice's added p99 ≤ 2.5 × nginx's added p99
TARGET_IDLE_MB = 60
TARGET_PEAK_MB = 150
SOAK_CHUNK_SECONDS = 30
# A soak is "flat" when RSS grew by at most this much between the sample at 1/4 of the run (the
# allocator's pools are filled by then) and the last one.
SOAK_FLAT_GROWTH_PERCENT = 5


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


def machine_description() -> str:
    """One line naming the machine and the time of the run: absolute numbers only describe this machine,
    so a table copied elsewhere (the README) can cite both."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Machine: {os.cpu_count()} cores, {model}, Linux {os.uname().release}; run {now}"


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


def wrk_script(path: Path, secrets: list[str], interval_ms: float | None = None) -> None:
    """A wrk script sending the non-streamed chat request, rotating the API key per request.

    The requests are formatted once in `init`, so wrk spends the same (tiny) time per request on
    every row. With `interval_ms`, each wrk thread paces its requests `interval_ms` apart, see `PACING`."""
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]})
    lua_keys = ", ".join(json.dumps(s) for s in secrets)
    pacing = "" if interval_ms is None else PACING.replace("INTERVAL_MS", f"{interval_ms:.6f}")
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
{pacing}""")


# wrk 4 has no -R; its `delay()` hook (called before each request of a connection, the wait excluded
# from the latency wrk records) has to make the rate. A fixed wait of C ÷ R per connection offers
# C ÷ (C ÷ R + latency), which falls short by the latency: 0.77 R for row (d) when it was tried. So each
# wrk thread keeps a timetable instead: request slots INTERVAL_MS apart on the monotonic clock (LuaJIT's
# FFI reads it), and a connection that asks waits until the next free slot; the rate is 1 ÷ INTERVAL_MS
# per thread as long as a connection is free at each slot. A thread that fell more than 8 slots behind
# (a stall) starts its timetable afresh rather than sending all the missed requests at once. wrk takes whole
# milliseconds, so the wait is rounded; the slots, not the waits, set the rate, so rounding only adds
# jitter of ±0.5 ms to the send times.
PACING = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local now_spec = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_spec)
  return tonumber(now_spec.tv_sec) * 1000 + tonumber(now_spec.tv_nsec) / 1e6
end
local interval = INTERVAL_MS
local next_slot = nil
function delay()
  local now = now_ms()
  if next_slot == nil or next_slot < now - 8 * interval then
    next_slot = now
  end
  local wait = next_slot - now
  next_slot = next_slot + interval
  return math.max(0, math.floor(wait + 0.5))
end
"""


def wrk_argv(url: str, lua: Path, seconds: int, connections: int, threads: int) -> list[str]:
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url]


def run_wrk(argv: list[str], output: Path) -> WrkResult:
    """Runs wrk, keeps its output in `output` (the work directory) and parses it."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    output.write_text(done.stdout + done.stderr)
    return parse_wrk(done.stdout)


# ---------------------------------------------------------------- throughput rows

@dataclass
class Target:
    """One row of the throughput table: where wrk sends its requests, and the proxy it measures."""
    key: str                         # "a" … "d", as in the label
    label: str
    port: int
    proc: subprocess.Popen | None    # None: the floor (wrk → mock directly) has no proxy
    pids: list[int]                  # the proxy's processes (nginx: master and worker)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"


@dataclass
class Sample:
    """One wrk measurement of one target, with the CPU it cost."""
    result: WrkResult
    cpu_us: float | None             # the proxy's user+system CPU per request
    redis_cpu_us: float              # redis-server's CPU per request (only row (d) uses it)


@dataclass
class RowSummary:
    """All runs of one target; the table shows medians, the noise table min–max."""
    target: Target
    samples: list[Sample]
    idle_kib: int | None
    peak_kib: int | None

    def median(self, value) -> float:
        return statistics.median(value(s) for s in self.samples)

    def span(self, value) -> tuple[float, float]:
        values = [value(s) for s in self.samples]
        return min(values), max(values)

    @property
    def rps(self) -> float:
        return self.median(lambda s: s.result.rps)

    @property
    def p50_ms(self) -> float:
        return self.median(lambda s: s.result.p50_ms)

    @property
    def p99_ms(self) -> float:
        return self.median(lambda s: s.result.p99_ms)

    @property
    def cpu_us(self) -> float | None:
        return self.median(lambda s: s.cpu_us) if self.target.proc else None

    @property
    def errors(self) -> int:
        return sum(s.result.non_2xx + s.result.socket_errors for s in self.samples)


def measure(args, target: Target, lua: Path, redis_pid: int, output: Path) -> Sample:
    """One full-speed wrk run against `target`, with the CPU the proxy (and redis-server) used meanwhile."""
    cpu_before, redis_before = cpu_seconds(target.pids), cpu_seconds([redis_pid])
    result = run_wrk(wrk_argv(target.url, lua, args.seconds, args.connections, args.threads), output)
    cpu_after, redis_after = cpu_seconds(target.pids), cpu_seconds([redis_pid])
    per_request = lambda seconds: seconds / result.requests * 1e6 if result.requests else 0.0
    return Sample(result, per_request(cpu_after - cpu_before) if target.proc else None,
                  per_request(redis_after - redis_before))


def throughput_rounds(args, targets: list[Target], lua: Path, redis_pid: int, work: Path) -> list[RowSummary]:
    """`args.runs` rounds over all targets, interleaved (a, b, c, d, a, b, c, d, …) so that a slow
    drift of the machine (another process, thermal state) hits every row alike instead of one.
    Warm-up only before the first round: the processes stay up, so they stay warm."""
    idle = {t.key: memory_kib(t.pids, "VmRSS") if t.proc else None for t in targets}
    samples: dict[str, list[Sample]] = {t.key: [] for t in targets}
    for round_index in range(args.runs):
        for target in targets:
            if round_index == 0:
                log(f"{target.label}: warming up {args.warmup_seconds} s")
                subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.warmup_seconds}s",
                                "-s", str(lua), target.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False)
            log(f"round {round_index + 1}/{args.runs}: {target.label}: measuring {args.seconds} s")
            samples[target.key].append(measure(args, target, lua, redis_pid,
                                               work / f"wrk-{target.key}-{round_index + 1}.txt"))
    # VmHWM is the high-water mark of the process's life, so read once at the end it is the max over runs.
    return [RowSummary(t, samples[t.key], idle[t.key], memory_kib(t.pids, "VmHWM") if t.proc else None)
            for t in targets]


# ---------------------------------------------------------------- latency at a fixed rate

@dataclass
class Paced:
    """The fixed-rate measurement: the rate asked for, how wrk was paced, and each target's result."""
    rate: float
    connections: int
    threads: int
    interval_ms: float                        # between two requests of one wrk thread
    results: list[tuple[Target, WrkResult]]   # (a) first: the floor the others are compared with


def measure_paced(args, targets: list[Target], secrets: list[str], rate: float, work: Path) -> Paced:
    """Latency at an offered `rate` rather than at saturation, where latency is mostly queueing. A few
    connections suffice (each is idle most of the time); wrk's `delay()` paces them, see `PACING`."""
    connections = PACED_CONNECTIONS
    threads = max(1, min(args.threads, connections))
    interval_ms = threads / rate * 1000
    lua = work / "chat-paced.lua"
    wrk_script(lua, secrets, interval_ms)
    # One paced run per path swings by hundreds of µs on a shared 2-core machine: like the throughput
    # rows, `args.runs` interleaved rounds, and each path's medians.
    per_target: dict[str, list[WrkResult]] = {target.key: [] for target in targets}
    for round_index in range(args.runs):
        for target in targets:
            log(f"fixed rate {rate:.0f} req/s, round {round_index + 1}/{args.runs}: {target.label}: measuring {args.seconds} s")
            per_target[target.key].append(run_wrk(wrk_argv(target.url, lua, args.seconds, connections, threads),
                                                  work / f"wrk-paced-{target.key}-{round_index + 1}.txt"))
    results = []
    for target in targets:
        runs = per_target[target.key]
        results.append((target, dataclasses.replace(
            runs[0], rps=statistics.median(r.rps for r in runs), p50_ms=statistics.median(r.p50_ms for r in runs),
            p99_ms=statistics.median(r.p99_ms for r in runs), non_2xx=sum(r.non_2xx for r in runs),
            socket_errors=sum(r.socket_errors for r in runs))))
    return Paced(rate, connections, threads, interval_ms, results)


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


# ---------------------------------------------------------------- starting the processes

def start_mock(args, work: Path, processes: Processes) -> int:
    """sluice-mock, the upstream of every row."""
    port = free_port()
    mock = processes.start("sluice-mock", [args.mock, "--host", "127.0.0.1", "--port", str(port)], work / "mock.log")
    wait_until("sluice-mock", lambda: http_ok(f"http://127.0.0.1:{port}/v1/models"), mock, work / "mock.log")
    return port


def start_redis(work: Path, processes: Processes) -> tuple[int, subprocess.Popen]:
    """redis-server: loopback only, no persistence (as scripts/cluster runs it)."""
    port = free_port()
    (work / "redis").mkdir()
    (work / "redis/redis.conf").write_text("\n".join([
        "bind 127.0.0.1", f"port {port}", f"dir {work}/redis", f"logfile {work}/redis/redis.log",
        'save ""', "appendonly no", "protected-mode yes", "daemonize no", ""]))
    redis = processes.start("redis-server", ["redis-server", str(work / "redis/redis.conf")], work / "redis/stdout.log")
    wait_until("redis-server", lambda: tcp_open(port), redis, work / "redis/redis.log")
    return port, redis


def start_nginx(nginx: str, work: Path, processes: Processes, mock_port: int) -> tuple[int, subprocess.Popen]:
    """nginx: a plain reverse proxy with an upstream keep-alive pool."""
    port = free_port()
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
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    proc = processes.start("nginx", [nginx, "-p", f"{work}/nginx/", "-c", f"{work}/nginx/nginx.conf",
                                     "-e", f"{work}/nginx/error.log"], work / "nginx/stdout.log")
    wait_until("nginx", lambda: http_ok(f"http://127.0.0.1:{port}/v1/models"), proc, work / "nginx/error.log")
    return port, proc


def bench_config(args, mock_port: int, secrets: list[str]) -> dict:
    """The Sluice config for the bench, from the given one: bench keys with a generous tier and the mock
    upstream; no redis section (`start_sluice` adds one)."""
    base = json.loads(Path(args.config).read_text())
    base["tiers"]["bench"] = {"requests_per_minute": 150_000_000, "tokens_per_minute": 150_000_000,
                              "max_concurrent_requests": 100_000}
    base["keys"] = base.get("keys", []) + [
        {"id": f"bench-{i}", "secret_sha256": hashlib.sha256(s.encode()).hexdigest(), "tier": "bench",
         "default_output_tokens": 1024} for i, s in enumerate(secrets, 1)]
    for upstream in base["upstreams"]:
        upstream["base_url"] = f"http://127.0.0.1:{mock_port}/v1"
    base.pop("redis", None)
    return base


def start_sluice(args, work: Path, processes: Processes, name: str, base: dict,
                 redis_port: int | None, binary: str | None = None) -> tuple[int, subprocess.Popen]:
    """Sluice with the embedded limiter, or (with `redis_port`) with the Redis limiter, which it must
    then report on /readyz: a Sluice that fell back to the local limiter would measure the wrong thing."""
    port = free_port()
    config = json.loads(json.dumps(base))
    config.setdefault("server", {})["port"] = port
    config["server"]["host"] = "127.0.0.1"
    # Its own admin listener (/metrics): the default port, 9464, would collide between the nodes.
    config["server"]["admin_host"] = "127.0.0.1"
    config["server"]["admin_port"] = free_port()
    if redis_port is not None:
        config["redis"] = {"url": f"redis://127.0.0.1:{redis_port}", "on_failure": "local", "fallback_node_count": 1}
    (work / f"{name}.json").write_text(json.dumps(config, indent=2))
    proc = processes.start(name, [binary or args.sluice, "serve", "--config", str(work / f"{name}.json")],
                           work / f"{name}.log", env=dict(os.environ, SLUICE_LOG_LEVEL="warning"))
    wait_until(name, lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), proc, work / f"{name}.log")
    if redis_port is not None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as response:
            limiter = json.load(response).get("limiter")
        if limiter != "redis":
            sys.exit(f"{name} reports limiter {limiter!r}, not 'redis'; see {work}/{name}.log")
    return port, proc


# ---------------------------------------------------------------- the run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--mock", required=True)
    parser.add_argument("--config", required=True, help="the Sluice config the bench configs are derived from")
    parser.add_argument("--seconds", type=int, default=8, help="length of each measurement")
    parser.add_argument("--runs", type=int, default=3, help="rounds of the throughput rows; the table shows medians")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup-seconds", type=int, default=3)
    parser.add_argument("--stream-requests", type=int, default=200)
    parser.add_argument("--c1-seconds", type=int, default=5, help="length of each concurrency-1 measurement")
    parser.add_argument("--baseline-sluice", metavar="PATH",
                        help="also measure this (older) sluice binary with the embedded limiter, as row (c′)")
    parser.add_argument("--soak", type=int, metavar="SECONDS",
                        help="instead of the tables: drive Sluice (Redis limiter) at full speed for SECONDS, sampling its RSS")
    args = parser.parse_args()
    if args.runs < 1 or args.seconds < 1 or (args.soak is not None and args.soak < 1):
        parser.error("--runs, --seconds and --soak must be at least 1")
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (scripts/setup installs it)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if args.soak is None and not os.access(nginx, os.X_OK):
        sys.exit("nginx is not installed (scripts/setup installs it)")

    # SIGTERM and SIGHUP take the same way out as Ctrl-C, through the `finally` that stops everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    processes = Processes()
    print(machine_description(), flush=True)
    try:
        if args.soak is None:
            run(args, nginx, work, processes)
        else:
            soak(args, work, processes)
    finally:
        processes.stop_all()
        if os.environ.get("BENCH_KEEP_WORKDIR"):
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, nginx: str, work: Path, processes: Processes) -> None:
    mock_port = start_mock(args, work, processes)
    redis_port, redis = start_redis(work, processes)
    nginx_port, nginx_proc = start_nginx(nginx, work, processes, mock_port)
    secrets = [f"sk-sluice-bench-{i}" for i in range(1, BENCH_KEY_COUNT + 1)]
    base = bench_config(args, mock_port, secrets)
    embedded_port, embedded = start_sluice(args, work, processes, "sluice-embedded", base, None)
    redis_sluice_port, redis_sluice = start_sluice(args, work, processes, "sluice-redis", base, redis_port)

    lua = work / "chat.lua"
    wrk_script(lua, secrets)
    targets = [
        Target("a", "(a) wrk → sluice-mock (floor)", mock_port, None, []),
        Target("b", "(b) wrk → nginx → mock", nginx_port, nginx_proc, process_tree(nginx_proc.pid)),
        Target("c", "(c) wrk → Sluice (embedded) → mock", embedded_port, embedded, [embedded.pid]),
        Target("d", "(d) wrk → Sluice (Redis) → mock", redis_sluice_port, redis_sluice, [redis_sluice.pid]),
    ]
    if args.baseline_sluice:
        # After (d): the rows keep their indices; interleaved like the others.
        before_port, before = start_sluice(args, work, processes, "sluice-baseline", base, None, binary=args.baseline_sluice)
        targets.append(Target("c0", "(c′) baseline Sluice (embedded)", before_port, before, [before.pid]))
    rows = throughput_rounds(args, targets, lua, redis.pid, work)
    if rows[3].rps < 2:
        sys.exit(f"row (d) served {rows[3].rps:.0f} req/s, no rate to measure latency at; see {work}/sluice-redis.log")
    paced = measure_paced(args, targets, secrets, rows[3].rps / 2, work)
    c1 = measure_concurrency_1(args, targets, lua, work)

    log(f"streaming: {args.stream_requests} sequential requests each, direct and through Sluice (embedded)")
    stream_tokens, stream_delay = 20, 5
    direct_runs = stream_timings(mock_port, args.stream_requests, stream_tokens, stream_delay, secrets[0])
    sluice_runs = stream_timings(embedded_port, args.stream_requests, stream_tokens, stream_delay, secrets[0])

    print_table(args, rows)
    print_noise(args, rows)
    print_paced(args, paced)
    print_concurrency_1(args, targets, c1)
    print_streaming(direct_runs, sluice_runs, stream_tokens, stream_delay)


# ---------------------------------------------------------------- soak

@dataclass
class SoakSample:
    """Sluice's memory after one chunk of load, with what wrk measured in that chunk."""
    elapsed_s: float
    rps: float
    errors: int
    rss_kib: int
    hwm_kib: int


def soak_chunk_seconds(total: int) -> int:
    """Chunks of 30 s, but at least about 8 samples in a short soak (never below 5 s, never beyond the end)."""
    return max(1, min(SOAK_CHUNK_SECONDS, max(5, total // 8), total))


def within_mb(kib: int, megabytes: int) -> bool:
    """The targets are in MB (10⁶ bytes), the printed values in MiB; compare bytes."""
    return kib * 1024 <= megabytes * 1_000_000


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def soak(args, work: Path, processes: Processes) -> None:
    """Sluice (Redis limiter) under full load for `args.soak` seconds: its memory must stay under the
    targets and flat, i.e. not grow with the number of requests served (a leak, an unbounded cache)."""
    mock_port = start_mock(args, work, processes)
    redis_port, _ = start_redis(work, processes)
    secrets = [f"sk-sluice-bench-{i}" for i in range(1, BENCH_KEY_COUNT + 1)]
    port, sluice = start_sluice(args, work, processes, "sluice-redis", bench_config(args, mock_port, secrets), redis_port)
    lua = work / "chat.lua"
    wrk_script(lua, secrets)
    url = f"http://127.0.0.1:{port}{CHAT_PATH}"
    mib = lambda kib: kib / 1024

    idle_before = memory_kib([sluice.pid], "VmRSS")
    chunk = soak_chunk_seconds(args.soak)
    print(f"\nSoak: wrk -t{args.threads} -c{args.connections} → Sluice (Redis limiter) → sluice-mock for {args.soak} s, "
          f"in chunks of {chunk} s;\nSluice's RSS before the load: {mib(idle_before):.1f} MiB, and after each chunk:\n")
    header = f"{'elapsed s':>10}{'req/s':>9}{'errors':>8}{'RSS MiB':>9}{'HWM MiB':>9}"
    print(header)
    print("-" * len(header), flush=True)
    samples: list[SoakSample] = []
    started, loaded = time.monotonic(), 0
    while loaded < args.soak:
        seconds = min(chunk, args.soak - loaded)
        result = run_wrk(wrk_argv(url, lua, seconds, args.connections, args.threads),
                         work / f"wrk-soak-{len(samples) + 1}.txt")
        loaded += seconds
        sample = SoakSample(time.monotonic() - started, result.rps, result.non_2xx + result.socket_errors,
                            memory_kib([sluice.pid], "VmRSS"), memory_kib([sluice.pid], "VmHWM"))
        samples.append(sample)
        print(f"{sample.elapsed_s:>10.0f}{sample.rps:>9.0f}{sample.errors:>8}{mib(sample.rss_kib):>9.1f}"
              f"{mib(sample.hwm_kib):>9.1f}", flush=True)
    time.sleep(2)  # let in-flight work finish before calling the process idle again
    idle_after = memory_kib([sluice.pid], "VmRSS")
    print_soak(args, samples, idle_before, idle_after)


def print_soak(args, samples: list[SoakSample], idle_before: int, idle_after: int) -> None:
    mib = lambda kib: kib / 1024
    first, last = samples[0], samples[-1]
    # The sample nearest 1/4 of the run, not the first: by then the allocator's pools and the connection
    # pools are filled, so what grows after it grows with the requests served.
    quarter = min(samples, key=lambda s: abs(s.elapsed_s - args.soak / 4))
    growth = last.rss_kib - quarter.rss_kib
    growth_percent = 100 * growth / quarter.rss_kib
    peak = max(s.hwm_kib for s in samples)
    idle = max(idle_before, idle_after)
    print(f"\nRSS: first sample {mib(first.rss_kib):.1f} MiB, last {mib(last.rss_kib):.1f} MiB, "
          f"max {mib(max(s.rss_kib for s in samples)):.1f} MiB; high-water mark (VmHWM) {mib(peak):.1f} MiB.")
    print(f"Idle: {mib(idle_before):.1f} MiB before the load, {mib(idle_after):.1f} MiB 2 s after it; "
          f"target ≤ {TARGET_IDLE_MB} MB ({TARGET_IDLE_MB * 1e6 / 2**20:.1f} MiB): {verdict(within_mb(idle, TARGET_IDLE_MB))}.")
    print(f"Peak: {mib(peak):.1f} MiB; target ≤ {TARGET_PEAK_MB} MB ({TARGET_PEAK_MB * 1e6 / 2**20:.1f} MiB): "
          f"{verdict(within_mb(peak, TARGET_PEAK_MB))}.")
    print(f"Growth from the sample at {quarter.elapsed_s:.0f} s (1/4 of the run) to the last at {last.elapsed_s:.0f} s: "
          f"{mib(growth):+.1f} MiB ({growth_percent:+.1f} %); flat (≤ {SOAK_FLAT_GROWTH_PERCENT} %): "
          f"{verdict(growth_percent <= SOAK_FLAT_GROWTH_PERCENT)}.")
    print(f"Requests: median {statistics.median(s.rps for s in samples):.0f} req/s over the chunks "
          f"(min {min(s.rps for s in samples):.0f}, max {max(s.rps for s in samples):.0f}); "
          f"{sum(s.errors for s in samples)} errors.")


# ---------------------------------------------------------------- tables

def print_table(args, rows: list[RowSummary]) -> None:
    floor, plain = rows[0], rows[1]
    plain_added = (plain.p50_ms - floor.p50_ms, plain.p99_ms - floor.p99_ms)
    mib = lambda kib: f"{kib / 1024:.1f}" if kib is not None else "—"
    runs = "one run" if args.runs == 1 else f"median of {args.runs} interleaved runs"
    print(f"\nNon-streamed chat completion, ~150-token prompt, {BENCH_KEY_COUNT} keys in rotation; "
          f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s on every row, {runs}:\n")
    header = (f"{'path':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 µs':>9}{'+p99 µs':>9}"
              f"{'req/s÷b':>9}{'+p50÷b':>8}{'RSS idle':>10}{'RSS peak':>10}{'CPU µs/req':>12}{'errors':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        added = (row.p50_ms - floor.p50_ms, row.p99_ms - floor.p99_ms)
        is_floor = row is floor
        added_p50 = "—" if is_floor else f"{added[0] * 1000:.0f}"
        added_p99 = "—" if is_floor else f"{added[1] * 1000:.0f}"
        ratio_p50 = "—" if is_floor or plain_added[0] <= 0 else f"{added[0] / plain_added[0]:.2f}"
        cpu = row.cpu_us
        print(f"{row.target.label:<36}{row.rps:>9.0f}{row.p50_ms:>9.3f}{row.p99_ms:>9.3f}{added_p50:>9}{added_p99:>9}"
              f"{row.rps / plain.rps:>9.2f}{ratio_p50:>8}{mib(row.idle_kib):>10}{mib(row.peak_kib):>10}"
              f"{(f'{cpu:.0f}' if cpu is not None else '—'):>12}{row.errors:>8}")
    print("\nRSS in MiB of the proxy process (nginx: master + worker): idle before the first run, peak = high-water mark;"
          "\nCPU µs/req = its user+system time ÷ requests. Latencies, req/s and CPU are medians over the runs, the ratios"
          "\nare ratios of those medians, errors (non-2xx and socket errors) are summed over all runs.")
    print(f"Row (d) also cost redis-server {rows[3].median(lambda s: s.redis_cpu_us):.0f} µs CPU per request (not in the row).")


def print_noise(args, rows: list[RowSummary]) -> None:
    """How far apart the runs were: a difference between rows smaller than this is not a difference."""
    if args.runs < 2:
        print("\nOne run: no estimate of the noise (--runs, BENCH_RUNS ≥ 2 gives one).")
        return
    print(f"\nRun-to-run noise over {args.runs} runs (min–max; spread = (max − min) ÷ median):\n")
    header = f"{'path':<36}{'req/s min–max':>17}{'spread':>8}{'p50 ms min–max':>17}{'p99 ms min–max':>17}"
    print(header)
    print("-" * len(header))
    for row in rows:
        rps_lo, rps_hi = row.span(lambda s: s.result.rps)
        p50_lo, p50_hi = row.span(lambda s: s.result.p50_ms)
        p99_lo, p99_hi = row.span(lambda s: s.result.p99_ms)
        print(f"{row.target.label:<36}{f'{rps_lo:.0f}–{rps_hi:.0f}':>17}{100 * (rps_hi - rps_lo) / row.rps:>7.1f}%"
              f"{f'{p50_lo:.3f}–{p50_hi:.3f}':>17}{f'{p99_lo:.3f}–{p99_hi:.3f}':>17}")
    plain = rows[1]

    def ratios(row: RowSummary) -> str:
        per_run = [s.result.rps / b.result.rps for s, b in zip(row.samples, plain.samples)]
        return f"{min(per_run):.2f}–{max(per_run):.2f} (ratio of the medians {row.rps / plain.rps:.2f})"
    print(f"\nreq/s ratio within each run: c÷b {ratios(rows[2])}, d÷b {ratios(rows[3])}.")
    if len(rows) > 4:
        baseline = rows[4]
        per_run = [c.result.rps / b.result.rps for c, b in zip(rows[2].samples, baseline.samples)]
        cpu = [c.cpu_us / b.cpu_us for c, b in zip(rows[2].samples, baseline.samples) if c.cpu_us and b.cpu_us]
        print(f"(c) against the baseline (c′), each run: req/s {min(per_run):.2f}–{max(per_run):.2f} "
              f"(ratio of the medians {rows[2].rps / baseline.rps:.2f}); CPU µs/req "
              f"{min(cpu):.2f}–{max(cpu):.2f} (ratio of the medians {(rows[2].cpu_us or 0) / (baseline.cpu_us or 1):.2f}).")


def print_paced(args, paced: Paced) -> None:
    floor = paced.results[0][1]
    print(f"\nLatency at a fixed offered rate R = ½ × row (d)'s median = {paced.rate:.0f} req/s: wrk -t{paced.threads} "
          f"-c{paced.connections} -d{args.seconds}s, each wrk thread\nsending a request every {paced.interval_ms:.2f} ms "
          f"(wrk's Lua delay(); its latency excludes the wait; req/s is what wrk achieved):\n")
    header = (f"{'path':<36}{'req/s':>9}{'÷R':>7}{'p50 ms':>9}{'p99 ms':>9}{'+p50 µs':>9}{'+p99 µs':>9}"
              f"{'errors':>8}  target")
    print(header)
    print("-" * (len(header) + 6))
    for target, r in paced.results:
        added_p50, added_p99 = (r.p50_ms - floor.p50_ms) * 1000, (r.p99_ms - floor.p99_ms) * 1000
        if r is floor:
            added, mark = f"{'—':>9}{'—':>9}", "—"
        elif target.key == "b":
            # The targets are Sluice's; nginx shows what a plain proxy adds on this machine at this rate.
            added, mark = f"{added_p50:>9.0f}{added_p99:>9.0f}", "reference"
        else:
            failed = [name for name, value, limit in (("+p50", added_p50, TARGET_ADDED_P50_US),
                                                      ("+p99", added_p99, TARGET_ADDED_P99_US)) if value > limit]
            added, mark = f"{added_p50:>9.0f}{added_p99:>9.0f}", f"FAIL ({', '.join(failed)})" if failed else "pass"
        print(f"{target.label:<36}{r.rps:>9.0f}{r.rps / paced.rate:>7.2f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{added}"
              f"{r.non_2xx + r.socket_errors:>8}  {mark}")
    print(f"\nTarget for the latency Sluice adds over (a) at this rate: +p50 ≤ {TARGET_ADDED_P50_US} µs, "
          f"+p99 ≤ {TARGET_ADDED_P99_US} µs.")
    by_key = {target.key: r for target, r in paced.results}
    if "c" in by_key and "d" in by_key:
        gap = (by_key["d"].p50_ms - by_key["c"].p50_ms) * 1000
        print(f"The Redis limiter's row against the embedded one's at this rate: (d) − (c) = {gap:+.0f} µs at p50 "
              f"(target ≤ +{TARGET_REDIS_GAP_P50_US} µs: {'pass' if gap <= TARGET_REDIS_GAP_P50_US else 'FAIL'}).")


def measure_concurrency_1(args, targets: list[Target], lua: Path, work: Path) -> dict[str, list[WrkResult]]:
    """Concurrency 1 (one connection, one request at a time: the figure public gateway benchmarks lead
    with): every target in `--runs` interleaved rounds of `--c1-seconds` each."""
    log(f"concurrency 1: {args.runs} interleaved rounds of {args.c1_seconds} s per row")
    per_target: dict[str, list[WrkResult]] = {target.key: [] for target in targets}
    for round_index in range(args.runs):
        for target in targets:
            per_target[target.key].append(run_wrk(wrk_argv(target.url, lua, args.c1_seconds, 1, 1),
                                                  work / f"wrk-c1-{target.key}-{round_index + 1}.txt"))
    return per_target


def print_concurrency_1(args, targets: list[Target], c1: dict[str, list[WrkResult]]) -> None:
    """Added p50 and p99 over the floor at concurrency 1: per round (a row against the floor of the same
    round), then the median over the rounds; against issue 19's target for p99."""
    floor = c1["a"]
    rounds = len(floor)
    def added(key: str, field: str) -> float:
        return statistics.median((getattr(r, field) - getattr(f, field)) * 1000 for r, f in zip(c1[key], floor))
    print(f"\nConcurrency 1: wrk -t1 -c1 -d{args.c1_seconds}s, {rounds} interleaved round{'s' if rounds > 1 else ''}; "
          f"latency added over (a) in the same round, median over the rounds:\n")
    header = f"{'path':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 µs':>9}{'+p99 µs':>9}{'errors':>8}  target"
    print(header)
    print("-" * (len(header) + 6))
    nginx_p99 = added("b", "p99_ms")
    for target in targets:
        results = c1[target.key]
        rps = statistics.median(r.rps for r in results)
        p50, p99 = statistics.median(r.p50_ms for r in results), statistics.median(r.p99_ms for r in results)
        errors = sum(r.non_2xx + r.socket_errors for r in results)
        if target.key == "a":
            print(f"{target.label:<36}{rps:>9.0f}{p50:>9.3f}{p99:>9.3f}{'—':>9}{'—':>9}{errors:>8}  —")
            continue
        add50, add99 = added(target.key, "p50_ms"), added(target.key, "p99_ms")
        if target.key == "b":
            mark = "reference"
        else:
            # nginx's added p99 can be ~0 (or below, by noise) on a quiet machine: the bound is at least 1 µs.
            bound = TARGET_C1_P99_FACTOR * max(nginx_p99, 1.0)
            mark = f"{verdict(add99 <= bound)} (+p99 ≤ {TARGET_C1_P99_FACTOR} × nginx's = {bound:.0f} µs)"
        print(f"{target.label:<36}{rps:>9.0f}{p50:>9.3f}{p99:>9.3f}{add50:>9.0f}{add99:>9.0f}{errors:>8}  {mark}")
    print(f"\nTarget (issue 19): Sluice's added p99 at concurrency 1 ≤ {TARGET_C1_P99_FACTOR} × nginx's added p99 in the same run.")


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

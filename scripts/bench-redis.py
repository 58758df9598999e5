#!/usr/bin/env python3
"""What the shared limiter costs Redis, per request, as Redis itself counts it.

For each limit configuration (requests/min only; requests + tokens; every limit kind a key can have)
one Sluice node with the Redis limiter runs under wrk (8 API keys in that configuration, rotated), and
Redis is asked, after `CONFIG RESETSTAT`, what the run cost it:

  commands/req   every command Redis ran (`INFO commandstats`: FCALL and the calls made inside the
                 scripts alike) ÷ the requests wrk completed; the node's heartbeat (a script every
                 2 s) is included, a few commands per run
  reads, writes  the same, split by the commands' own flags (`COMMAND INFO`: `readonly` / `write`)
  CPU µs/req     redis-server's user + system CPU (`INFO cpu`) ÷ requests
  bytes/key      `MEMORY USAGE` of every Redis key of one API key after the run
  p50 … p99.99   request latency at the client (wrk, `--latency` and its Lua `done()`), admission
                 included: the admission alone is not observable from outside Sluice

Then the cluster's admitted requests/s with 1, 2 and 4 nodes on the one Redis (every limit kind), one
wrk per node at the same time. On a 2-core machine that line measures the machine as much as Redis:
compare configurations, not absolute numbers (the first line names the machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_proxy", HERE / "bench-proxy.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_proxy"] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)

BIG = 150_000_000
CONFIGS = [
    ("requests/min", {"requests_per_minute": BIG}),
    ("requests + tokens", {"requests_per_minute": BIG, "tokens_per_minute": BIG}),
    ("every limit kind", {"requests_per_minute": BIG, "tokens_per_minute": BIG, "input_tokens_per_minute": BIG,
                          "output_tokens_per_minute": BIG, "max_concurrent_requests": 100_000,
                          "tokens_per_day": 10**13, "tokens_per_month": 10**14}),
]
SECRETS = [f"sk-sluice-bench-redis-{i}" for i in range(1, 9)]


class Redis:
    """A minimal RESP client: enough to ask Redis what it counted."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        out = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = str(arg).encode()
            out += f"${len(data)}\r\n".encode() + data + b"\r\n"
        self.sock.sendall(out)
        return self._reply()

    def _reply(self):
        line = self.file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def info(self, section: str) -> dict:
        fields = {}
        for line in self.call("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                name, value = line.split(":", 1)
                fields[name] = value
        return fields

    def command_calls(self) -> dict:
        calls = {}
        for name, value in self.info("commandstats").items():
            stats = dict(part.split("=") for part in value.split(","))
            calls[name.removeprefix("cmdstat_")] = int(stats["calls"])
        return calls

    def cpu_seconds(self) -> float:
        cpu = self.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def flags(self, command: str) -> list:
        reply = self.call("COMMAND", "INFO", command.split("|")[0])
        return reply[0][2] if reply and reply[0] else []


def wrk_script(path: Path) -> None:
    """The bench's chat request, keys rotated, and the deep percentiles printed by `done()`."""
    bench.wrk_script(path, SECRETS)
    path.write_text(path.read_text() + """
function done(summary, latency, requests)
  for _, p in ipairs({ 50, 95, 99, 99.9, 99.99 }) do
    io.write(string.format("percentile %g %d\\n", p, latency:percentile(p)))
  end
end
""")


def percentiles(text: str) -> dict:
    found = {}
    for line in text.splitlines():
        if line.startswith("percentile "):
            _, p, micros = line.split()
            found[p] = int(micros) / 1000
    return found


def run_wrk(url: str, lua: Path, seconds: int, connections: int, threads: int, output: Path) -> tuple:
    done = subprocess.run(bench.wrk_argv(url, lua, seconds, connections, threads), capture_output=True, text=True)
    output.write_text(done.stdout + done.stderr)
    return bench.parse_wrk(done.stdout), percentiles(done.stdout)


def start_node(args, work: Path, processes, name: str, limits: dict, mock_port: int, redis_port: int) -> int:
    base = bench.bench_config(argparse.Namespace(config=args.config), mock_port, SECRETS)
    base["tiers"]["bench"] = limits
    base.setdefault("server", {})["event_loop_threads"] = 1
    base["server"]["upstream_threads"] = 1
    port, _ = bench.start_sluice(args, work, processes, name, base, redis_port)
    return port


def measure_config(args, work: Path, label: str, limits: dict) -> dict:
    processes = bench.Processes()
    run_dir = work / label.replace(" ", "-").replace("/", "-").replace("+", "and")
    run_dir.mkdir()
    try:
        mock_port = bench.start_mock(args, run_dir, processes)
        redis_port, _ = bench.start_redis(run_dir, processes)
        port = start_node(args, run_dir, processes, "sluice", limits, mock_port, redis_port)
        lua = run_dir / "chat.lua"
        wrk_script(lua)
        url = f"http://127.0.0.1:{port}"
        run_wrk(url, lua, 2, args.connections, 1, run_dir / "warmup.txt")
        time.sleep(2.5)  # settlements and heartbeats of the warm-up are done
        redis = Redis(redis_port)
        redis.call("CONFIG", "RESETSTAT")
        cpu_before = redis.cpu_seconds()
        result, deep = run_wrk(url, lua, args.seconds, args.connections, 1, run_dir / "wrk.txt")
        time.sleep(0.5)  # the last settlements
        cpu = redis.cpu_seconds() - cpu_before
        calls = redis.command_calls()
        requests = max(result.requests, 1)
        reads = writes = 0
        for command, count in calls.items():
            flags = redis.flags(command)
            if "write" in flags:
                writes += count
            elif "readonly" in flags:
                reads += count
        keys = redis.call("KEYS", "sluice:{bench-1}:*") or []
        memory = sum(redis.call("MEMORY", "USAGE", key) or 0 for key in keys)
        return {
            "label": label, "rps": result.rps, "requests": result.requests, "errors": result.non_2xx + result.socket_errors,
            "commands": sum(calls.values()) / requests, "reads": reads / requests, "writes": writes / requests,
            "cpu_us": cpu / requests * 1e6, "memory": memory, "keys": len(keys), "latency": deep,
            "by_command": {c: n / requests for c, n in sorted(calls.items(), key=lambda kv: -kv[1])},
        }
    finally:
        processes.stop_all()


def measure_cluster(args, work: Path, nodes: int) -> float:
    processes = bench.Processes()
    run_dir = work / f"cluster-{nodes}"
    run_dir.mkdir()
    try:
        mock_port = bench.start_mock(args, run_dir, processes)
        redis_port, _ = bench.start_redis(run_dir, processes)
        ports = [start_node(args, run_dir, processes, f"node-{k}", CONFIGS[-1][1], mock_port, redis_port) for k in range(1, nodes + 1)]
        lua = run_dir / "chat.lua"
        wrk_script(lua)
        per_node = max(2, args.connections // nodes)
        running = [subprocess.Popen(bench.wrk_argv(f"http://127.0.0.1:{p}", lua, args.seconds, per_node, 1),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in ports]
        total = 0.0
        for k, proc in enumerate(running, 1):
            out, _ = proc.communicate()
            (run_dir / f"wrk-{k}.txt").write_text(out)
            total += bench.parse_wrk(out).rps
        return total
    finally:
        processes.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--mock", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-redis-"))
    print(bench.machine_description())
    print(f"{args.seconds} s per row, wrk -t1 -c{args.connections}, 8 keys rotated, one node (1 event loop, 1 curl thread)")
    print()
    rows = [measure_config(args, work, label, limits) for label, limits in CONFIGS]
    print("| limits | commands/req | reads/req | writes/req | redis CPU µs/req | bytes/key (keys) | req/s | p50 | p95 | p99 | p99.9 | p99.99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lat = r["latency"]
        print(f"| {r['label']} | {r['commands']:.1f} | {r['reads']:.1f} | {r['writes']:.1f} | {r['cpu_us']:.0f} | "
              f"{r['memory']:,} ({r['keys']}) | {r['rps']:,.0f} | "
              + " | ".join(f"{lat.get(p, float('nan')):.2f}" for p in ("50", "95", "99", "99.9", "99.99"))
              + f" | {r['errors']} |")
    print()
    print("commands per request, by command (" + rows[-1]["label"] + "): "
          + ", ".join(f"{c} {n:.2f}" for c, n in rows[-1]["by_command"].items()))
    print()
    cluster = {n: measure_cluster(args, work, n) for n in (1, 2, 4)}
    print("| nodes on one Redis (every limit kind) | 1 | 2 | 4 |")
    print("|---|---:|---:|---:|")
    print("| admitted req/s, all nodes | " + " | ".join(f"{cluster[n]:,.0f}" for n in (1, 2, 4)) + " |")
    if args.keep_workdir:
        print(f"\nwork directory kept: {work}", file=sys.stderr)
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What the shared limiter costs Redis, per request, as Redis itself counts it.

For each limit configuration one Sluice node with the Redis limiter runs under wrk (8 API keys in
that configuration, rotated), and Redis is asked, after `CONFIG RESETSTAT`, what the run cost it:

  requests/min                 only a requests bucket, `"lease": "off"`: every admission exact, in Redis
  requests + tokens            requests and tokens buckets, `"lease": "off"`
  every limit kind             requests, tokens, input and output token buckets, concurrency, daily and
                               monthly quotas (a key with concurrency or quotas is never leased)
  requests + tokens, leased    `"lease": "always"`: the node takes slices of the buckets and admits
                               against them locally
  requests + tokens, lease auto  the default mode (leased once the key's demand makes a call per
                               request wasteful, which it does here)

Every run: a fresh redis-server and node, a warm-up of the node, a pause (the warm-up's settlements
and usage flushes reach Redis), then the bench keys' state in Redis is deleted — each measured run starts
from the empty state a new deployment starts from — and the counts are reset (`CONFIG RESETSTAT`). Per row:

  commands/req   every command Redis ran (`INFO commandstats`: FCALL and the calls made inside the
                 scripts alike) ÷ the requests wrk completed; the node's heartbeat (every 2 s) and usage
                 flushes (per key every second) included
  reads, writes  the same, split by the commands' own flags (`COMMAND INFO`: `readonly` / `write`);
                 FCALL and TIME are neither, so reads + writes < commands
  CPU µs/req     redis-server's user + system CPU (`INFO cpu`) ÷ requests
  bytes/key      `MEMORY USAGE … SAMPLES 0` of every Redis key of one API key after the run (keys)
  p50 … p99.99   request latency at the client (wrk, `--latency` and its Lua `done()`), admission
                 included: the admission alone is not observable from outside Sluice
  usage ok       the requests the node recorded in the keys' usage hashes (`<model>:requests`) against
                 the requests wrk completed: never fewer, and at most the requests in flight when wrk
                 stopped more. A "NO" is a limiter that did not count what it served (e.g. a node that
                 fell back to its failure policy); the nodes' log lines (warning and above) are listed
                 at the end

then one line per row with the commands per request by command.

With `--baseline-sluice PATH` the exact rows (the first three) are measured again with that binary,
in the same run, each right after its row (the `lease` field omitted: an older Sluice refuses it),
and printed as a "before" table.

Then the cluster's admitted requests/s (2xx answers) with 1, 2 and 4 nodes on the one Redis, one wrk per
node at the same time, for "every limit kind" (and its baseline) and the leased row, with what they cost
Redis per request. On a 2-core machine that table measures the machine as much as Redis: compare
configurations, not absolute numbers (the first line names the machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_proxy", HERE / "bench-proxy.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_proxy"] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)

BIG = 150_000_000
EVERY_KIND = {"requests_per_minute": BIG, "tokens_per_minute": BIG, "input_tokens_per_minute": BIG,
              "output_tokens_per_minute": BIG, "max_concurrent_requests": 100_000,
              "tokens_per_day": 10**13, "tokens_per_month": 10**14}


@dataclass(frozen=True)
class Config:
    label: str
    limits: dict
    baseline: bool = False   # measured with --baseline-sluice too (an exact row)
    cluster: bool = False    # measured with 1, 2 and 4 nodes


CONFIGS = [
    Config("requests/min", {"requests_per_minute": BIG, "lease": "off"}, baseline=True),
    Config("requests + tokens", {"requests_per_minute": BIG, "tokens_per_minute": BIG, "lease": "off"}, baseline=True),
    Config("every limit kind", EVERY_KIND, baseline=True, cluster=True),
    Config("requests + tokens, leased", {"requests_per_minute": BIG, "tokens_per_minute": BIG, "lease": "always"},
           cluster=True),
    Config("requests + tokens, lease auto", {"requests_per_minute": BIG, "tokens_per_minute": BIG, "lease": "auto"}),
]
SECRETS = [f"sk-sluice-bench-redis-{i}" for i in range(1, 9)]
NODE_COUNTS = (1, 2, 4)
WARMUP_SECONDS = 2
# After wrk stops: the last settlements (2 ms) and the usage flush (every second) reach Redis.
SETTLE_SECONDS = 1.5
# The bench's own commands, not Sluice's: left out of the counts.
# (INFO and CONFIG RESETSTAT come before the counts are read, the rest after; Sluice uses none of them.)
OWN_COMMANDS = {"info", "config|resetstat", "command|info", "keys", "memory|usage", "del"}


def without_lease(limits: dict) -> dict:
    return {name: value for name, value in limits.items() if name != "lease"}


class Redis:
    """A minimal RESP client: enough to ask Redis what it counted."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

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
        """Calls per command since the last RESETSTAT (subcommands as `command|sub`), Sluice's only."""
        calls = {}
        for name, value in self.info("commandstats").items():
            stats = dict(part.split("=") for part in value.split(","))
            command = name.removeprefix("cmdstat_")
            if command not in OWN_COMMANDS:
                calls[command] = int(stats["calls"])
        return calls

    def cpu_seconds(self) -> float:
        cpu = self.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def flags(self, command: str) -> list:
        reply = self.call("COMMAND", "INFO", command.split("|")[0])
        return reply[0][2] if reply and reply[0] else []

    def reset(self) -> float:
        """Resets the command counts; returns redis-server's CPU seconds so far."""
        self.call("CONFIG", "RESETSTAT")
        return self.cpu_seconds()

    def delete_bench_keys(self) -> None:
        for key in self.call("KEYS", "sluice:{bench-*}:*") or []:
            self.call("DEL", key)

    def usage_requests(self) -> int:
        """Requests recorded in the bench keys' usage hashes (every day's, every model's)."""
        total = 0
        for key in self.call("KEYS", "sluice:{bench-*}:usage:*") or []:
            fields = self.call("HGETALL", key) or []
            total += sum(int(value) for field, value in zip(fields[::2], fields[1::2]) if field.endswith(":requests"))
        return total


@dataclass
class Cost:
    """What a run cost Redis, per request."""
    commands: float
    reads: float
    writes: float
    cpu_us: float
    by_command: dict


def redis_cost(redis: Redis, cpu_before: float, requests: int) -> Cost:
    calls = redis.command_calls()
    cpu = redis.cpu_seconds() - cpu_before
    requests = max(requests, 1)
    reads = writes = 0
    for command, count in calls.items():
        flags = redis.flags(command)
        if "write" in flags:
            writes += count
        elif "readonly" in flags:
            reads += count
    return Cost(sum(calls.values()) / requests, reads / requests, writes / requests, cpu / requests * 1e6,
                {c: n / requests for c, n in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0]))})


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


def run_wrk(url: str, lua: Path, seconds: int, connections: int, output: Path) -> tuple:
    done = subprocess.run(bench.wrk_argv(url, lua, seconds, connections, 1), capture_output=True, text=True)
    output.write_text(done.stdout + done.stderr)
    return bench.parse_wrk(done.stdout), percentiles(done.stdout)


def run_wrks(urls: list[str], lua: Path, seconds: int, connections: int, outputs: list[Path]) -> list:
    """One wrk per URL, all at the same time."""
    running = [subprocess.Popen(bench.wrk_argv(url, lua, seconds, connections, 1),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for url in urls]
    results = []
    for proc, output in zip(running, outputs):
        out, _ = proc.communicate()
        output.write_text(out)
        results.append(bench.parse_wrk(out))
    return results


def start_node(args, sluice: str, work: Path, processes, name: str, limits: dict, mock_port: int, redis_port: int) -> int:
    base = bench.bench_config(argparse.Namespace(config=args.config), mock_port, SECRETS)
    base["tiers"]["bench"] = limits
    base.setdefault("server", {})["event_loop_threads"] = 1
    base["server"]["upstream_threads"] = 1
    port, _ = bench.start_sluice(argparse.Namespace(sluice=sluice), work, processes, name, base, redis_port)
    return port


def log_problems(run_dir: Path) -> list[str]:
    """The nodes' log lines (they run at SLUICE_LOG_LEVEL=warning: every line is a warning or worse)."""
    lines = []
    for log in sorted(run_dir.glob("*.log")):
        if log.name == "mock.log":
            continue
        lines += [f"{log.stem}: {line}" for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def measure_config(args, work: Path, sluice: str, tag: str, label: str, limits: dict) -> dict:
    processes = bench.Processes()
    run_dir = work / f"{tag}-{slug(label)}"
    run_dir.mkdir()
    bench.log(f"{tag}: {label}: {args.seconds} s")
    try:
        mock_port = bench.start_mock(args, run_dir, processes)
        redis_port, _ = bench.start_redis(run_dir, processes)
        port = start_node(args, sluice, run_dir, processes, "sluice", limits, mock_port, redis_port)
        lua = run_dir / "chat.lua"
        wrk_script(lua)
        url = f"http://127.0.0.1:{port}"
        run_wrk(url, lua, WARMUP_SECONDS, args.connections, run_dir / "warmup.txt")
        time.sleep(2.5)  # settlements, usage flushes and heartbeats of the warm-up are done
        redis = Redis(redis_port)
        redis.delete_bench_keys()
        cpu_before = redis.reset()
        result, deep = run_wrk(url, lua, args.seconds, args.connections, run_dir / "wrk.txt")
        time.sleep(SETTLE_SECONDS)
        cost = redis_cost(redis, cpu_before, result.requests)
        keys = redis.call("KEYS", "sluice:{bench-1}:*") or []
        memory = sum(redis.call("MEMORY", "USAGE", key, "SAMPLES", 0) or 0 for key in keys)
        completed = result.requests
        recorded = redis.usage_requests()
        redis.close()
        return {
            "label": label, "rps": result.rps, "requests": result.requests,
            "errors": result.non_2xx + result.socket_errors,
            "cost": cost, "memory": memory, "keys": len(keys), "latency": deep,
            "completed": completed, "recorded": recorded,
            # wrk stops with up to one request per connection in flight.
            "usage_ok": completed <= recorded <= completed + args.connections,
            "log": log_problems(run_dir),
        }
    finally:
        processes.stop_all()


def measure_cluster(args, work: Path, sluice: str, tag: str, label: str, limits: dict, nodes: int) -> dict:
    processes = bench.Processes()
    run_dir = work / f"cluster-{tag}-{slug(label)}-{nodes}"
    run_dir.mkdir()
    bench.log(f"{tag}: {label}: {nodes} node(s), {args.seconds} s")
    try:
        mock_port = bench.start_mock(args, run_dir, processes)
        redis_port, _ = bench.start_redis(run_dir, processes)
        ports = [start_node(args, sluice, run_dir, processes, f"node-{k}", limits, mock_port, redis_port)
                 for k in range(1, nodes + 1)]
        lua = run_dir / "chat.lua"
        wrk_script(lua)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        per_node = max(2, args.connections // nodes)
        run_wrks(urls, lua, WARMUP_SECONDS, per_node, [run_dir / f"warmup-{k}.txt" for k in range(1, nodes + 1)])
        time.sleep(2.5)
        redis = Redis(redis_port)
        redis.delete_bench_keys()
        cpu_before = redis.reset()
        results = run_wrks(urls, lua, args.seconds, per_node, [run_dir / f"wrk-{k}.txt" for k in range(1, nodes + 1)])
        time.sleep(SETTLE_SECONDS)
        requests = sum(r.requests for r in results)
        cost = redis_cost(redis, cpu_before, requests)
        completed = requests
        recorded = redis.usage_requests()
        redis.close()
        # Admitted: the 2xx answers, at the rate wrk measured them.
        admitted = sum(r.rps * (r.requests - r.non_2xx) / r.requests for r in results if r.requests)
        return {
            "admitted": admitted, "cost": cost,
            "errors": sum(r.non_2xx + r.socket_errors for r in results),
            "usage_ok": completed <= recorded <= completed + per_node * nodes,
            "completed": completed, "recorded": recorded, "log": log_problems(run_dir),
        }
    finally:
        processes.stop_all()


def print_rows(title: str, rows: list[dict]) -> None:
    print(title)
    print()
    print("| limits | commands/req | reads/req | writes/req | redis CPU µs/req | bytes/key (keys) | req/s "
          "| p50 | p95 | p99 | p99.9 | p99.99 ms | errors | usage ok | log lines |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        lat, cost = r["latency"], r["cost"]
        print(f"| {r['label']} | {cost.commands:.2f} | {cost.reads:.2f} | {cost.writes:.2f} | {cost.cpu_us:.0f} | "
              f"{r['memory']:,} ({r['keys']}) | {r['rps']:,.0f} | "
              + " | ".join(f"{lat.get(p, float('nan')):.2f}" for p in ("50", "95", "99", "99.9", "99.99"))
              + f" | {r['errors']} | {'yes' if r['usage_ok'] else 'NO'} | {len(r['log'])} |")
    print()
    print("commands per request, by command:")
    for r in rows:
        print(f"  {r['label']}: " + ", ".join(f"{c} {n:.3f}" for c, n in r["cost"].by_command.items()))
    print()


def print_cluster(cluster: dict) -> None:
    print("| nodes on one Redis | " + " | ".join(str(n) for n in NODE_COUNTS) + " |")
    print("|---|" + "---:|" * len(NODE_COUNTS))
    for name, by_nodes in cluster.items():
        print(f"| {name}: admitted req/s, all nodes | "
              + " | ".join(f"{by_nodes[n]['admitted']:,.0f}" for n in NODE_COUNTS) + " |")
        print(f"| {name}: Redis commands/req · CPU µs/req | "
              + " | ".join(f"{by_nodes[n]['cost'].commands:.2f} · {by_nodes[n]['cost'].cpu_us:.0f}" for n in NODE_COUNTS)
              + " |")
        print(f"| {name}: errors · usage ok · log lines | "
              + " | ".join(f"{by_nodes[n]['errors']} · {'yes' if by_nodes[n]['usage_ok'] else 'NO'} · {len(by_nodes[n]['log'])}"
                           for n in NODE_COUNTS) + " |")
    print()


def print_checks(rows: dict, cluster: dict) -> None:
    """Usage counts and log lines: anything that says the limiter did not count what it served."""
    problems = []
    for name, row in rows.items():
        if not row["usage_ok"]:
            problems.append(f"{name}: usage hashes hold {row['recorded']:,} requests, wrk completed {row['completed']:,}")
    for name, by_nodes in cluster.items():
        for n, row in by_nodes.items():
            if not row["usage_ok"]:
                problems.append(f"{name}, {n} node(s): usage hashes hold {row['recorded']:,} requests, "
                                f"wrk completed {row['completed']:,}")
    logged = [(name, row["log"]) for name, row in rows.items() if row["log"]]
    logged += [(f"{name}, {n} node(s)", row["log"]) for name, by_nodes in cluster.items()
               for n, row in by_nodes.items() if row["log"]]
    if not problems and not logged:
        print("Checks: every run's usage hashes hold the requests wrk completed (plus at most those in flight "
              "when it stopped); no node logged a warning or error.")
        return
    print("Checks:")
    for line in problems:
        print(f"  usage mismatch: {line}")
    for name, lines in logged:
        print(f"  {name}: {len(lines)} log line(s) at warning or above, e.g. {lines[0][:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--mock", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--baseline-sluice", metavar="PATH",
                        help="an older sluice binary: the exact rows again, printed as a 'before' table")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args()
    if args.seconds < 1 or args.connections < 1:
        parser.error("--seconds and --connections must be at least 1")
    for binary in filter(None, (args.sluice, args.mock, args.baseline_sluice)):
        if not Path(binary).is_file():
            parser.error(f"no such binary: {binary}")
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (scripts/setup installs it)")
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-redis-"))
    print(bench.machine_description())
    print(f"{args.seconds} s per row after a {WARMUP_SECONDS} s warm-up, wrk -t1 -c{args.connections}, 8 keys rotated, "
          f"one node (1 event loop, 1 curl thread), redis-server {redis_version()}")
    print(f"after:  {args.sluice} ({version(args.sluice)})")
    if args.baseline_sluice:
        print(f"before: {args.baseline_sluice} ({version(args.baseline_sluice)}); its rows are measured each right "
              f"after the same row of 'after', without the `lease` field")
    print(flush=True)
    try:
        after, before = [], []
        for config in CONFIGS:
            after.append(measure_config(args, work, args.sluice, "after", config.label, config.limits))
            if args.baseline_sluice and config.baseline:
                before.append(measure_config(args, work, args.baseline_sluice, "before", config.label,
                                             without_lease(config.limits)))
        cluster = {}
        for config in CONFIGS:
            if not config.cluster:
                continue
            runs = [("after", args.sluice, config.label, config.limits)]
            if args.baseline_sluice and config.baseline:
                runs.append(("before", args.baseline_sluice, f"{config.label} (before)", without_lease(config.limits)))
            for tag, _, name, _ in runs:
                cluster[name] = {}
            for n in NODE_COUNTS:
                for tag, sluice, name, limits in runs:
                    cluster[name][n] = measure_cluster(args, work, sluice, tag, config.label, limits, n)
    finally:
        if args.keep_workdir:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_rows("After (this build):", after)
    if before:
        print_rows("Before (--baseline-sluice):", before)
        print("After ÷ before, commands/req · redis CPU µs/req: " + "; ".join(
            f"{a['label']} {a['cost'].commands / b['cost'].commands:.2f} · {a['cost'].cpu_us / b['cost'].cpu_us:.2f}"
            for a in after for b in before if a["label"] == b["label"]))
        print()
    print(f"Cluster: 1, 2 and 4 nodes on one Redis, one wrk -t1 -c{args.connections}÷nodes per node (at least 2), "
          f"{args.seconds} s after a {WARMUP_SECONDS} s warm-up:")
    print()
    print_cluster(cluster)
    checks = {f"after: {r['label']}": r for r in after}
    checks.update({f"before: {r['label']}": r for r in before})
    print_checks(checks, cluster)


def version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout.strip() or done.stderr.strip() or "version unknown").splitlines()[0]


def redis_version() -> str:
    done = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    for part in done.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return "(version unknown)"


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

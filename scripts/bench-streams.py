#!/usr/bin/env python3
"""How many concurrent streams one node carries, and what it adds to each, next to a plain proxy, in one run.

Called by `scripts/bench streams` (which builds the release binaries first):

    bench-streams.py --sluice BIN --mock BIN --config Config/sluice.json
                     [--seconds 10] [--runs 3] [--streams 100,250,500,1000,2000,4000]

Starts, on free loopback ports: sluice-mock (the upstream), nginx (proxy_pass, proxy_buffering off, an
upstream keep-alive pool) and Sluice (embedded limiter, bench keys whose limits never interfere, the
upstream's max_connections above the largest concurrency so that nothing queues for a connection);
every process is stopped again on exit, Ctrl-C or SIGTERM.

The load client is `sluice load --stream --frame-stats` (SwiftNIO, event-driven, one stream at a time per
worker): it times every server-sent event and reports time to first token (TTFT: the first data event)
and the gaps between frames (p50, p99), streams stalled (a gap over 10 × the pacing), frames missing
against the mock's count, errors. The direct row (client → sluice-mock) is the client checked against
the mock itself: if it does not deliver every frame, the client or the mock is the bottleneck, not the
proxy.

(a) Concurrency 1: short streams one after another on each path, `--runs` interleaved rounds (direct,
    nginx, Sluice, direct, …); medians over the rounds; added TTFT and added inter-frame gap over direct.
(b) Streams sustained: for each concurrency, the three paths one after another, each stream 64 tokens
    20 ms apart (~1.3 s, the issue's shape), for `--seconds` after a ramp-up of the workers' starts;
    per row whether every frame arrived, none stalled, errors < 0.1 %, and TTFT p99 added over direct
    at the same concurrency. Sluice's RSS is sampled every 100 ms during each of its runs (peak) and
    before the first (idle): RSS per 1,000 concurrent streams = (peak − idle) ÷ streams × 1,000.

Targets (issue 21): ≥ 2,000 concurrent streams through Sluice with every frame delivered and added TTFT
p99 ≤ 50 ms over direct; at concurrency 1 Sluice's added TTFT within 2 × nginx's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The process plumbing (ports, start-up, /proc accounting, nginx, Sluice's bench config) is the proxy
# bench's; loaded by path because its file name is not a module name.
_spec = importlib.util.spec_from_file_location("bench_proxy", Path(__file__).with_name("bench-proxy.py"))
bp = importlib.util.module_from_spec(_spec)
sys.modules["bench_proxy"] = bp  # its dataclasses look their module up
_spec.loader.exec_module(bp)

STREAM_TOKENS, STREAM_DELAY_MS = 64, 20        # (b): the streams
C1_TOKENS, C1_DELAY_MS = 16, 10                # (a): short, so that a round has ~50 streams per path
STALL_FACTOR = 10                              # a stream stalled: a gap over 10 × its pacing
MAX_ERROR_RATE = 0.001
TARGET_STREAMS = 2000
TARGET_ADDED_TTFT_P99_MS = 50
TARGET_C1_RATIO = 2
RSS_SAMPLE_SECONDS = 0.1
log = bp.log


@dataclass
class Path_:
    key: str
    label: str
    port: int
    pids: list[int]     # the proxy's processes (none for direct)


@dataclass
class Run:
    """One `sluice load --frame-stats` run: its JSON summary, and what it cost."""
    summary: dict
    client_cpu_percent: float
    proxy_cpu_percent: float | None
    mock_cpu_percent: float
    peak_rss_kib: int | None

    @property
    def delivered(self) -> bool:
        return self.summary["every_frame_delivered"]

    @property
    def errors_ok(self) -> bool:
        return self.summary["error_rate"] < MAX_ERROR_RATE


def load(args, path: Path_, mock_pid: int, concurrency: int, seconds: float, tokens: int, delay_ms: int,
         ramp_s: float, work: Path, name: str, sample_rss: bool = False) -> Run:
    argv = [args.sluice, "load", "--target", f"http://127.0.0.1:{path.port}", "--key", args.secret,
            "--stream", "--frame-stats", "--format", "json", "--concurrency", str(concurrency),
            "--duration", f"{seconds}s", "--ramp-up", f"{ramp_s}s", "--prompt-tokens", "16",
            "--mock-completion-tokens", str(tokens), "--mock-token-delay-ms", str(delay_ms),
            "--max-error-rate", str(MAX_ERROR_RATE)]
    peak = [0]
    stop = threading.Event()

    def sampler():
        while not stop.wait(RSS_SAMPLE_SECONDS):
            try:
                peak[0] = max(peak[0], bp.memory_kib(path.pids, "VmRSS"))
            except OSError:
                pass
    thread = threading.Thread(target=sampler, daemon=True) if sample_rss else None
    proxy_before = bp.cpu_seconds(path.pids) if path.pids else None
    mock_before = bp.cpu_seconds([mock_pid])
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    if thread:
        thread.start()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    stop.set()
    if thread:
        thread.join()
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (work / f"load-{name}.json").write_text(done.stdout + done.stderr)
    if done.returncode not in (0, 3) or not done.stdout.strip():
        sys.exit(f"sluice load failed ({done.returncode}) on {path.label}:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    client_cpu = (children_after.ru_utime + children_after.ru_stime - children_before.ru_utime - children_before.ru_stime)
    return Run(report["summary"], 100 * client_cpu / wall,
               100 * (bp.cpu_seconds(path.pids) - proxy_before) / wall if path.pids else None,
               100 * (bp.cpu_seconds([mock_pid]) - mock_before) / wall, peak[0] if sample_rss else None)


def start_nginx(nginx: str, work: Path, processes, mock_port: int) -> tuple[int, object]:
    """nginx as in the proxy bench (proxy_buffering off, upstream keep-alive), with room for thousands
    of streams: each holds two connections, and one worker per core like Sluice's event loops."""
    port, proc = bp.start_nginx(nginx, work, processes, mock_port)
    conf = work / "nginx/nginx.conf"
    text = conf.read_text().replace("worker_processes 1;", "worker_processes auto;\nworker_rlimit_nofile 40000;")
    text = text.replace("worker_connections 4096;", "worker_connections 20000;").replace("keepalive 64;", "keepalive 1024;")
    conf.write_text(text)
    subprocess.run([nginx, "-p", f"{work}/nginx/", "-c", str(conf), "-s", "reload"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # the new workers take over
    return port, proc


def raise_fd_limit(needed: int) -> None:
    """Every process started inherits this limit; each stream holds an fd in the client and the mock
    and two in a proxy."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        sys.exit(f"the open-files limit is {target}, {needed} are needed for {needed // 2 - 100} streams "
                 f"(raise the hard limit: ulimit -Hn, /etc/security/limits.conf)")


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", required=True, help="the sluice binary (also the load client: sluice load)")
    parser.add_argument("--mock", required=True)
    parser.add_argument("--config", required=True, help="the Sluice config the bench config is derived from")
    parser.add_argument("--seconds", type=float, default=10, help="length of each run of (b), ramp-up included")
    parser.add_argument("--c1-seconds", type=float, default=8, help="length of each run of (a)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds of (a)")
    parser.add_argument("--streams", default="100,250,500,1000,2000,4000", help="the concurrencies of (b)")
    parser.add_argument("--ramp-up", type=float, default=2, help="seconds over which (b)'s workers start")
    parser.add_argument("--mock-threads", type=int, default=2, help="sluice-mock's event loop threads")
    args = parser.parse_args()
    try:
        args.concurrencies = [int(c) for c in args.streams.split(",")]
    except ValueError:
        parser.error("--streams is a comma-separated list of concurrencies, e.g. 100,1000")
    if not args.concurrencies or any(not 1 <= c <= 10_000 for c in args.concurrencies):
        parser.error("--streams: each concurrency between 1 and 10000")
    if args.runs < 1 or args.seconds <= args.ramp_up or args.c1_seconds <= 0:
        parser.error("--runs ≥ 1, --seconds > --ramp-up, --c1-seconds > 0")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        sys.exit("nginx is not installed (scripts/setup installs it)")
    raise_fd_limit(2 * max(args.concurrencies) + 200)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-streams-"))
    processes = bp.Processes()
    print(bp.machine_description() + f"; {machine_load()} at the start", flush=True)
    try:
        run(args, nginx, work, processes)
    finally:
        processes.stop_all()
        if os.environ.get("BENCH_KEEP_WORKDIR"):
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, nginx: str, work: Path, processes) -> None:
    mock_port = bp.free_port()
    mock = processes.start("sluice-mock", [args.mock, "--host", "127.0.0.1", "--port", str(mock_port),
                                           "--threads", str(args.mock_threads)], work / "mock.log")
    bp.wait_until("sluice-mock", lambda: bp.http_ok(f"http://127.0.0.1:{mock_port}/v1/models"), mock, work / "mock.log")
    nginx_port, nginx_proc = start_nginx(nginx, work, processes, mock_port)
    secrets = [f"sk-sluice-bench-{i}" for i in range(1, bp.BENCH_KEY_COUNT + 1)]
    args.secret = secrets[0]
    config = bp.bench_config(args, mock_port, secrets)
    for upstream in config["upstreams"]:
        # Above the largest concurrency: this bench measures streams, not the queue for a connection.
        upstream["max_connections"] = max(2048, 2 * max(args.concurrencies))
    sluice_port, sluice = bp.start_sluice(args, work, processes, "sluice-embedded", config, None)
    paths = [
        Path_("direct", "client → sluice-mock (direct)", mock_port, []),
        Path_("nginx", "client → nginx → mock", nginx_port, bp.process_tree(nginx_proc.pid)),
        Path_("sluice", "client → Sluice (embedded) → mock", sluice_port, [sluice.pid]),
    ]
    for path in paths:  # warm-up: connections, pools, the allocator
        load(args, path, mock.pid, 50, 2, 8, 5, 0.5, work, f"warmup-{path.key}")
    time.sleep(1)
    idle_kib = bp.memory_kib([sluice.pid], "VmRSS")

    # (a) concurrency 1
    c1: dict[str, list[Run]] = {p.key: [] for p in paths}
    c1_load = machine_load()
    for round_index in range(args.runs):
        for path in paths:
            log(f"(a) concurrency 1, round {round_index + 1}/{args.runs}: {path.label}: {args.c1_seconds:.0f} s")
            c1[path.key].append(load(args, path, mock.pid, 1, args.c1_seconds, C1_TOKENS, C1_DELAY_MS, 0, work,
                                     f"c1-{path.key}-{round_index + 1}"))

    # (b) streams sustained
    sustained: list[tuple[int, dict[str, Run], str]] = []
    for concurrency in args.concurrencies:
        before = machine_load()
        rows = {}
        for path in paths:
            log(f"(b) {concurrency} concurrent streams: {path.label}: {args.seconds:.0f} s")
            rows[path.key] = load(args, path, mock.pid, concurrency, args.seconds, STREAM_TOKENS, STREAM_DELAY_MS,
                                  args.ramp_up, work, f"c{concurrency}-{path.key}", sample_rss=path.key == "sluice")
            time.sleep(1)  # the streams' connections close before the next row
        sustained.append((concurrency, rows, before))

    print_c1(args, paths, c1, c1_load)
    print_sustained(args, paths, sustained, idle_kib)


def med(runs: list[Run], field: str) -> float:
    return statistics.median(r.summary[field] for r in runs)


def print_c1(args, paths: list[Path_], c1: dict[str, list[Run]], load_text: str) -> dict:
    print(f"\n(a) Concurrency 1: streamed chat completions of {C1_TOKENS} tokens {C1_DELAY_MS} ms apart, one after "
          f"another for {args.c1_seconds:.0f} s per path,\n{args.runs} interleaved rounds, medians over the rounds "
          f"(TTFT: send → first data event; gap: between consecutive events); {load_text} before it:\n")
    header = (f"{'path':<36}{'streams':>8}{'TTFT p50':>10}{'TTFT p99':>10}{'+p50 ms':>9}{'+p99 ms':>9}"
              f"{'gap p50':>9}{'gap p99':>9}{'+gap p50':>10}{'+gap p99':>10}{'errors':>8}")
    print(header)
    print("-" * len(header))
    direct = c1["direct"]
    added = {}
    for path in paths:
        runs = c1[path.key]
        t50, t99, g50, g99 = (med(runs, f) for f in ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms"))
        a50 = t50 - med(direct, "ttft_p50_ms")
        a99 = t99 - med(direct, "ttft_p99_ms")
        ag50 = g50 - med(direct, "gap_p50_ms")
        ag99 = g99 - med(direct, "gap_p99_ms")
        added[path.key] = (a50, a99)
        dash = path.key == "direct"
        cell = lambda v, w: f"{'—':>{w}}" if dash else f"{v:>{w}.3f}"
        print(f"{path.label:<36}{sum(r.summary['started'] for r in runs):>8}{t50:>10.3f}{t99:>10.3f}{cell(a50, 9)}{cell(a99, 9)}"
              f"{g50:>9.3f}{g99:>9.3f}{cell(ag50, 10)}{cell(ag99, 10)}{sum(r.summary['errors'] for r in runs):>8}")
    print("\nTimes in ms; + = added over the direct row (medians over the rounds, subtracted).")
    sluice_added, nginx_added = added["sluice"][0], added["nginx"][0]
    ok = sluice_added <= TARGET_C1_RATIO * max(nginx_added, 0)
    print(f"Target: at concurrency 1, Sluice's added TTFT (p50) within {TARGET_C1_RATIO} × nginx's: "
          f"{sluice_added * 1000:.0f} µs vs {nginx_added * 1000:.0f} µs × {TARGET_C1_RATIO} = "
          f"{TARGET_C1_RATIO * max(nginx_added, 0) * 1000:.0f} µs: {'pass' if ok else 'FAIL'}.")
    return added


def print_sustained(args, paths: list[Path_], sustained, idle_kib: int) -> None:
    print(f"\n(b) Streams sustained: N workers each holding one streamed chat completion at a time ({STREAM_TOKENS} tokens "
          f"{STREAM_DELAY_MS} ms apart,\n~{STREAM_TOKENS * STREAM_DELAY_MS / 1000:.1f} s each) for {args.seconds:.0f} s, "
          f"their starts spread over the first {args.ramp_up:.0f} s; the paths one after another at each N.\n"
          f"delivered: every frame arrived ({STREAM_TOKENS + 4} per stream, [DONE] last) and no gap over "
          f"{STALL_FACTOR} × {STREAM_DELAY_MS} ms; errors must stay under {MAX_ERROR_RATE * 100:.1f} %.\n"
          f"CPU %: of one core, the proxy's (nginx: master + workers) and the load client's.\n")
    header = (f"{'N':>6}  {'path':<36}{'streams':>8}{'deliv.':>8}{'missing':>8}{'stalled':>8}{'errors':>8}"
              f"{'TTFT p50':>10}{'TTFT p99':>10}{'+p99 ms':>9}{'gap p99':>9}{'max gap':>9}{'CPU %':>7}{'client %':>9}"
              f"{'RSS MiB':>9}  verdict")
    print(header)
    print("-" * (len(header) + 8))
    sluice_ok: dict[int, bool] = {}
    for concurrency, rows, load_text in sustained:
        direct = rows["direct"]
        for path in paths:
            r = rows[path.key]
            added99 = r.summary["ttft_p99_ms"] - direct.summary["ttft_p99_ms"] if r.summary["ttft_p99_ms"] is not None \
                and direct.summary["ttft_p99_ms"] is not None else float("inf")
            ok = r.delivered and r.errors_ok and (path.key == "direct" or added99 <= TARGET_ADDED_TTFT_P99_MS)
            if path.key == "sluice":
                sluice_ok[concurrency] = ok
            fmt = lambda v: f"{v:.1f}" if v is not None else "—"
            print(f"{concurrency:>6}  {path.label:<36}{r.summary['started']:>8}{'yes' if r.delivered else 'NO':>8}"
                  f"{r.summary['missing_frames']:>8}{r.summary['stalled']:>8}{r.summary['errors']:>8}"
                  f"{fmt(r.summary['ttft_p50_ms']):>10}{fmt(r.summary['ttft_p99_ms']):>10}"
                  f"{('—' if path.key == 'direct' else f'{added99:.1f}'):>9}{fmt(r.summary['gap_p99_ms']):>9}"
                  f"{fmt(r.summary['largest_gap_ms']):>9}{(fmt(r.proxy_cpu_percent) if r.proxy_cpu_percent is not None else '—'):>7}"
                  f"{r.client_cpu_percent:>9.0f}{(f'{r.peak_rss_kib / 1024:.1f}' if r.peak_rss_kib else '—'):>9}"
                  f"  {'ok' if ok else 'FAIL'}")
        print(f"{'':>8}({load_text} before N = {concurrency}; mock CPU {direct.mock_cpu_percent:.0f} % on the direct row)")
    passed = [c for c in sorted(sluice_ok) if all(sluice_ok[d] for d in sluice_ok if d <= c)]
    best = passed[-1] if passed else 0
    print(f"\nTTFT in ms; +p99 = TTFT p99 added over the direct row at the same N; RSS = Sluice's peak VmRSS during its run "
          f"(idle before the runs: {idle_kib / 1024:.1f} MiB).")
    print("Memory per stream (Sluice): " + ", ".join(
        f"N = {c}: {(rows['sluice'].peak_rss_kib - idle_kib) / 1024 / c * 1000:.1f} MiB per 1,000"
        for c, rows, _ in sustained if rows["sluice"].peak_rss_kib) + " (peak − idle).")
    print(f"Target: ≥ {TARGET_STREAMS} concurrent streams through Sluice with every frame delivered, errors < "
          f"{MAX_ERROR_RATE * 100:.1f} % and added TTFT p99 ≤ {TARGET_ADDED_TTFT_P99_MS} ms: sustained {best} "
          f"(every N up to it ok): {'pass' if best >= TARGET_STREAMS else 'FAIL'}.")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

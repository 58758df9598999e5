"""Four Sluice nodes sharing their limits through Redis, observed from outside.

`scripts/cluster --background` starts redis-server, sluice-mock (with its request log), four nodes and
nginx. Many client threads then saturate three keys with small limits, spreading their requests over
the four nodes directly and nginx (round robin). The mock's request log is the observer:
it records every request that reached the upstream, i.e. every admitted one, with its arrival time and
the completion tokens it produced. Client threads remember which request id (`x-request-id`) belonged
to which key, and prompt tokens come from tiktoken with OpenAI's chat framing (the oracle, independent
of Sluice's tokenizer). From that, for each key and limit:

  (a) in every interval [t, t+Δ] (sliding, several Δ) the admitted cost is at most
      burst + rate·Δ + slack (slack: timestamp jitter and settlements not yet known at admission);
  (b) under saturation the long-run admitted rate is at least 97 % of the configured rate, and
      admissions go on to the end of the run;
  (c) the request limits hold the same way (one request of slack).

The accuracy test runs once per lease mode of the keys (`limits.lease`: `off`, exact; `auto`, the
default; `always`, every node admitting against leased slices of the buckets), same assertions.

Then the fault test: under load Redis is killed (SIGKILL) and restarted on the same port (from its
append-only file: scripts/cluster's Redis persists); with `on_failure: local` no request may fail
with a 5xx, every node stays ready, and `/readyz` reports the limiter mode: `redis` before, `local`
during the outage, `redis` again after.

Takes about three minutes. Skipped only when a binary it needs is missing.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from conftest import MOCK_BIN, ROOT, SLUICE_BIN, TOKENIZER_DIR, sha256_hex

REQUIRED = {"redis-server": shutil.which("redis-server"), "redis-cli": shutil.which("redis-cli"),
            "nginx": shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None),
            "sluice": SLUICE_BIN if os.access(SLUICE_BIN, os.X_OK) else None,
            "sluice-mock": MOCK_BIN if os.access(MOCK_BIN, os.X_OK) else None}
pytestmark = pytest.mark.skipif(not all(REQUIRED.values()),
                                reason="missing: " + ", ".join(k for k, v in REQUIRED.items() if not v))

# SLUICE_CLUSTER_NODES=1 runs the same checks against one node (its embedded limiter): a check of the
# harness itself, independent of Redis.
NODE_COUNT = int(os.environ.get("SLUICE_CLUSTER_NODES", "4"))
MODEL = "gpt-4o-mini"           # o200k_base
ACCURACY_SECONDS = 45.0
CLIENT_THREADS = 24              # 8 per key
RETRY_SLEEP_CAP = 0.25           # poll at least this often, in case a refund made the advice pessimistic
ARRIVAL_JITTER = 0.1             # seconds between admission in Sluice and arrival at the mock, at most
LONG_RUN_MINIMUM = 0.97
WINDOWS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
USAGE_FLUSH_WAIT = 5.0           # nodes flush usage totals to Redis every second: give them a few


@dataclass(frozen=True)
class AccuracyKey:
    """A key with small limits and the traffic that saturates it."""
    key_id: str
    secret: str
    limits: dict
    default_output_tokens: int
    messages: list
    completion_tokens: tuple      # x-mock-completion-tokens drawn uniformly from this closed range
    stream_every: int = 0         # every n-th request of a client streams (0: never)
    upstream_delay_ms: int = 0    # the mock waits this long before answering (x-mock-first-byte-delay-ms)

    def request_cost_bounds(self, prompt_tokens: int) -> tuple:
        return prompt_tokens + self.completion_tokens[0], prompt_tokens + self.completion_tokens[1]


LOREM = ("The river Sluice carries the mountain's snowmelt through seven locks, each opened by a keeper "
         "who counts the boats, weighs their cargo, and writes both numbers into a ledger that the next "
         "keeper reads before opening the next lock. ")
KEYS = [
    # Requests only: 60/min with a burst of 10. Completion tokens vary but cost nothing here.
    AccuracyKey("acc-requests", "sk-cluster-requests-0123456789",
                {"requests_per_minute": 60, "requests_burst": 10}, 50,
                [{"role": "user", "content": "Say hi."}], (1, 40)),
    # Tokens only: 6,000/min (burst 6,000), a token-heavy prompt, usage at most the reservation
    # (every settlement is a refund).
    AccuracyKey("acc-tokens", "sk-cluster-tokens-0123456789",
                {"tokens_per_minute": 6000}, 100,
                [{"role": "system", "content": LOREM * 4}, {"role": "user", "content": "Summarise."}], (5, 100)),
    # Both: 120 requests/min and 12,000 tokens/min; usage up to 100 tokens over the reservation (debt
    # charged at settlement), half of the requests streamed.
    AccuracyKey("acc-mixed", "sk-cluster-mixed-0123456789",
                {"requests_per_minute": 120, "tokens_per_minute": 12000}, 150,
                [{"role": "system", "content": "You are terse."}, {"role": "user", "content": LOREM}], (50, 250),
                stream_every=2),
]
LOAD_SECRET = "sk-cluster-load-0123456789"

# The accuracy test runs once per lease mode (`limits.lease`), each on its own copy of KEYS: `off`
# (every admission one exact step in Redis), `auto` (the default: leased while a node's demand makes
# it worthwhile) and `always` (each node admits locally against slices of the buckets it leased).
# The assertions are the same for all.
LEASE_MODES = ("off", "auto", "always")


def leased_keys(mode: str) -> list:
    """KEYS with `"lease": mode` in their limits, under their own ids and secrets."""
    return [replace(k, key_id=f"{k.key_id}-{mode}", secret=f"{k.secret}-{mode}", limits={**k.limits, "lease": mode})
            for k in KEYS]


def chat_prompt_tokens(messages) -> int:
    """OpenAI's chat framing for gpt-4o models, counted with tiktoken (the test oracle)."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(TOKENIZER_DIR) / "tiktoken-cache"))
    import tiktoken
    encoding = tiktoken.get_encoding("o200k_base")
    total = 3
    for message in messages:
        total += 3 + sum(len(encoding.encode(value)) for value in message.values())
    return total


def free_base_port(count: int, also_free_at=None) -> int:
    """A port P with P … P+count-1 all free on 127.0.0.1, and P+100 … P+100+count-1 (scripts/cluster's
    admin listeners); with `also_free_at` = d (or several), P+d … too (a Redis Cluster's bus ports).
    Chosen below Linux's ephemeral range (32768 and up): a port there can be taken between this check
    and the bind by any outgoing connection's local port (a CI run lost a node's admin listener so)."""
    rng = random.Random()
    offsets = [0, 100] + ([also_free_at] if isinstance(also_free_at, int) else list(also_free_at or []))
    for _ in range(200):
        base = rng.randrange(20000, 32768 - 100 - count)
        sockets = []
        ports = sorted({base + offset + k for offset in offsets for k in range(count)})
        try:
            for p in ports:
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port range")


@dataclass
class Cluster:
    run_dir: Path
    mock_log: Path
    lb_port: int
    node_ports: list
    redis_port: int
    env: dict

    def node_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.node_ports[index % len(self.node_ports)]}"

    def client_url(self, index: int) -> str:
        """Round robin over the nodes directly and, one in NODE_COUNT + 1, nginx in front of them."""
        ports = self.node_ports + [self.lb_port]
        return f"http://127.0.0.1:{ports[index % len(ports)]}"

    def mock_requests(self) -> list:
        if not self.mock_log.exists():
            return []
        return [json.loads(line) for line in self.mock_log.read_text().splitlines() if line.strip()]

    def redis_pid(self) -> int:
        return int((self.run_dir / "redis.pid").read_text().strip())


def cluster_config(node_port: int, mock_port: int, redis_port: int, keys: list, redis_cluster: bool = False) -> dict:
    """The config every node of a test cluster runs (scripts/cluster gives each its own port); with
    `redis_cluster`, the seeds of a Redis Cluster on redis_port … redis_port + 5 (two of them)."""
    return {
        "server": {"host": "127.0.0.1", "port": node_port, "event_loop_threads": 1, "shutdown_grace_seconds": 2},
        "tokenizer": {"directory": TOKENIZER_DIR},
        "upstreams": [{"name": "mock", "base_url": f"http://127.0.0.1:{mock_port}/v1", "models": [MODEL],
                       "connect_timeout_ms": 2000, "first_byte_timeout_ms": 10000, "stall_timeout_ms": 10000,
                       "request_timeout_ms": 30000, "max_connections": 32}],
        "tiers": {},
        "keys": keys,
        "redis": {**({"cluster_nodes": [f"redis://127.0.0.1:{redis_port}", f"redis://127.0.0.1:{redis_port + 1}"]}
                     if redis_cluster else {"url": f"redis://127.0.0.1:{redis_port}"}),
                  "on_failure": "local", "fallback_node_count": NODE_COUNT},
    }


def start_cluster(tmp: Path, keys: list, nodes: int = NODE_COUNT, redis_cluster: bool = False):
    """`scripts/cluster --background` with `keys` (config entries) on `nodes` nodes, the mock logging
    every request; with `redis_cluster`, over a Redis Cluster (3 primaries, 3 replicas). A generator
    for a fixture: yields the Cluster, stops everything afterwards."""
    redis_count = 6 if redis_cluster else 1
    base = free_base_port(nodes + 2 + redis_count, also_free_at=10_000 if redis_cluster else None)
    lb_port, node_ports = base, [base + 1 + k for k in range(nodes)]
    mock_port, redis_port = base + nodes + 1, base + nodes + 2
    config_path = tmp / "cluster.json"
    config_path.write_text(json.dumps(cluster_config(node_ports[0], mock_port, redis_port, keys, redis_cluster), indent=2))
    run_dir, mock_log = tmp / "run", tmp / "mock-requests.jsonl"
    env = dict(os.environ, SLUICE_BIN=SLUICE_BIN, SLUICE_MOCK_BIN=MOCK_BIN, SLUICE_TOKENIZER_DIR=TOKENIZER_DIR)
    start = subprocess.run(
        [str(ROOT / "scripts/cluster"), "--background", "--config", str(config_path), "--run-dir", str(run_dir),
         "--base-port", str(base), "--nodes", str(nodes), "--mock-log", str(mock_log)]
        + (["--redis-cluster"] if redis_cluster else []),
        env=env, capture_output=True, text=True, timeout=180)
    c = Cluster(run_dir, mock_log, lb_port, node_ports, redis_port, env)
    try:
        assert start.returncode == 0, f"scripts/cluster failed:\n{start.stdout}\n{start.stderr}"
        yield c
    finally:
        subprocess.run([str(ROOT / "scripts/cluster"), "stop", "--run-dir", str(run_dir)],
                       env=env, capture_output=True, text=True, timeout=120)


def key_entry(key: "AccuracyKey") -> dict:
    return {"id": key.key_id, "secret_sha256": sha256_hex(key.secret), "limits": key.limits,
            "default_output_tokens": key.default_output_tokens}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    keys = [key_entry(k) for k in KEYS + [k for mode in LEASE_MODES for k in leased_keys(mode)]]
    keys.append({"id": "load", "secret_sha256": sha256_hex(LOAD_SECRET),
                 "limits": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000}})
    yield from start_cluster(tmp_path_factory.mktemp("cluster"), keys)


# ---------------------------------------------------------------- the accuracy test

@dataclass
class Attempt:
    key_id: str
    status: int
    request_id: str
    sent: float
    received: float


def saturate(cluster: Cluster, seconds: float, keys: list) -> list:
    """CLIENT_THREADS threads, one key each (round robin over `keys`), each request to the next node
    (or nginx)."""
    attempts: list = []
    lock = threading.Lock()
    deadline = time.time() + seconds

    def client(index: int):
        key = keys[index % len(keys)]
        rng = random.Random(index)
        local = []
        with httpx.Client(timeout=30.0) as http:
            n = 0
            while time.time() < deadline:
                url = cluster.client_url(index + n) + "/v1/chat/completions"
                stream = key.stream_every > 0 and n % key.stream_every == 0
                n += 1
                body = {"model": MODEL, "messages": key.messages, "stream": stream}
                headers = {"authorization": f"Bearer {key.secret}",
                           "x-mock-completion-tokens": str(rng.randint(*key.completion_tokens))}
                if key.upstream_delay_ms:
                    headers["x-mock-first-byte-delay-ms"] = str(key.upstream_delay_ms)
                sent = time.time()
                try:
                    if stream:
                        with http.stream("POST", url, json=body, headers=headers) as r:
                            for _ in r.iter_bytes():
                                pass
                    else:
                        r = http.post(url, json=body, headers=headers)
                        r.read()
                except httpx.HTTPError as error:
                    local.append(Attempt(key.key_id, -1, f"transport error: {error!r}", sent, time.time()))
                    continue
                local.append(Attempt(key.key_id, r.status_code, r.headers.get("x-request-id", ""), sent, time.time()))
                if r.status_code == 429:
                    wait = float(r.headers.get("retry-after-ms", "100")) / 1000
                    time.sleep(min(max(wait, 0.0), RETRY_SLEEP_CAP, max(deadline - time.time(), 0)))
        with lock:
            attempts.extend(local)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENT_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return attempts


def max_window_sum(events: list, width: float) -> float:
    """The largest sum of costs of events with times in any [t, t+width] (events sorted by time)."""
    best, total, lo = 0.0, 0.0, 0
    for hi, (t, cost) in enumerate(events):
        total += cost
        while events[lo][0] < t - width:
            total -= events[lo][1]
            lo += 1
        best = max(best, total)
    return best


def long_run_rate(events: list, saturated_from: float) -> tuple:
    """Units per second admitted under saturation, how many events it is measured over, and over how
    many seconds.

    Under saturation each admission happens as soon as the bucket has room for its reservation, so
    between the first and the last admission of that period the bucket refilled exactly the actual
    costs of all admissions but the last (when every request reserves the same amount): the
    estimator is Σ cost[first..last) / (t_last − t_first). Usage above the reservation is charged at
    settlement, after admission: the debt of the requests in flight at either end is the estimator's
    error (see accuracy_report).
    """
    period = [(t, c) for t, c in events if t >= saturated_from]
    if len(period) < 3:
        return 0.0, len(period), 0.0
    span = period[-1][0] - period[0][0]
    return sum(c for _, c in period[:-1]) / span, len(period), span


def admitted_upstream_records(cluster, attempts: list, mock_before: int) -> list:
    """The mock's log records (since `mock_before`) of the admitted attempts; checks that every admitted
    request, and only those, reached the upstream, once."""
    time.sleep(0.5)  # the mock writes its log line when a request finishes
    upstream = cluster.mock_requests()[mock_before:]
    admitted = {a.request_id for a in attempts if a.status == 200}
    denied = {a.request_id for a in attempts if a.status == 429}
    seen = [r for r in upstream if r.get("request_id") in admitted]
    seen_ids = [r["request_id"] for r in seen]
    assert len(seen_ids) == len(set(seen_ids)), "a request reached the upstream twice"
    assert set(seen_ids) == admitted, "every admitted request, and only those, reached the upstream"
    assert not denied & {r.get("request_id") for r in upstream}, "a rate-limited request reached the upstream"
    return seen


@pytest.mark.parametrize("lease", LEASE_MODES)
def test_limits_hold_across_four_nodes(cluster, lease):
    # The load test of the fault test below, and any other traffic, must not be in the way.
    keys = leased_keys(lease)
    mock_before = len(cluster.mock_requests())
    attempts = saturate(cluster, ACCURACY_SECONDS, keys)
    table, problems = accuracy_report(cluster, keys, attempts, mock_before)
    print(f"\nlease {lease}:\n" + table)
    (cluster.run_dir / f"accuracy-{lease}.txt").write_text(table + "\n")
    assert not problems, "\n" + table + "\n\n" + "\n".join(problems)


def accuracy_report(cluster, keys: list, attempts: list, mock_before: int) -> tuple:
    """The accuracy checks (a)–(c) of the module's description over one saturating run: a table (one
    row per key and limit) and the problems found (empty: every limit held)."""
    prompt_tokens = {k.key_id: chat_prompt_tokens(k.messages) for k in keys}
    failures = [a for a in attempts if a.status not in (200, 429)]
    assert not failures, f"{len(failures)} requests neither admitted nor rate-limited, e.g. {failures[:5]}"
    key_of = {a.request_id: a.key_id for a in attempts if a.status == 200}
    seen = admitted_upstream_records(cluster, attempts, mock_before)
    assert all(r["status"] == 200 and r["outcome"] == "complete" for r in seen)

    rows, problems = [], []
    for key in keys:
        events = sorted((r["ts"], r["completion_tokens"]) for r in seen if key_of[r["request_id"]] == key.key_id)
        key_attempts = [a for a in attempts if a.key_id == key.key_id]
        first_denial = min((a.received for a in key_attempts if a.status == 429), default=None)
        if first_denial is None:
            problems.append(f"{key.key_id}: never rate-limited, so never saturated ({len(events)} admitted)")
            continue
        max_in_flight = max_concurrency([(a.sent, a.received) for a in key_attempts if a.status == 200])
        prompt = prompt_tokens[key.key_id]
        max_cost = prompt + key.completion_tokens[1]
        overrun = max(0, key.completion_tokens[1] - key.default_output_tokens)
        limits = []
        if "requests_per_minute" in key.limits:
            rpm = key.limits["requests_per_minute"]
            limits.append(("requests", rpm, key.limits.get("requests_burst", rpm),
                           [(t, 1.0) for t, _ in events], 1.0))
        if "tokens_per_minute" in key.limits:
            tpm = key.limits["tokens_per_minute"]
            # Settlement slack: usage above the reservation is charged after admission, so the
            # requests in flight may each bring that much debt; plus one request for the edges.
            limits.append(("tokens", tpm, key.limits.get("tokens_burst", tpm),
                           [(t, float(prompt + c)) for t, c in events], max_cost + max_in_flight * overrun))
        utilisations = []
        for name, per_minute, burst, costs, slack in limits:
            rate = per_minute / 60.0
            worst_ratio, worst_text = 0.0, ""
            for width in WINDOWS:
                observed = max_window_sum(costs, width)
                bound = burst + rate * (width + ARRIVAL_JITTER) + slack
                if observed / bound > worst_ratio:
                    worst_ratio, worst_text = observed / bound, f"{observed:.0f} in {width:.0f}s (bound {bound:.0f})"
                if observed > bound:
                    problems.append(f"{key.key_id} {name}: {observed:.0f} admitted within {width}s, "
                                    f"bound burst {burst} + {rate:.2f}/s × {width + ARRIVAL_JITTER}s + slack {slack:.0f} = {bound:.0f}")
            # From just after the first denial: admissions from the initial burst may still be on
            # their way to the mock when that denial is already back at the client.
            measured, count, span = long_run_rate(costs, first_denial + 0.2)
            # The debt of requests in flight (usage above their reservation, charged at settlement)
            # can differ between the first and the last admission by up to max_in_flight × overrun:
            # that much of the estimate is noise (a CI run saw 96.6 % for a key whose other runs
            # measured 99–105 %). Keys whose usage never exceeds the reservation keep the bare minimum.
            debt = max_in_flight * overrun if name == "tokens" else 0.0
            tolerance = debt / (rate * span) if span > 0 else 0.0
            utilisations.append((measured / rate + tolerance, name))
            rows.append((key.key_id, name, f"{per_minute}/min burst {burst}", worst_text,
                         f"{measured * 60:.0f}/min ({measured / rate:.1%}, {count} requests)"))
        best, binding = max(utilisations)
        if best < LONG_RUN_MINIMUM:
            problems.append(f"{key.key_id}: saturated, yet the binding limit ({binding}) admitted only {best:.1%} "
                            f"of its rate, counting the in-flight debt's error (need ≥ {LONG_RUN_MINIMUM:.0%})")
        # The long-run rate spans the first to the last admission only: admissions that stop early
        # would go unseen. Saturated, a key admits again as soon as each bucket has refilled one
        # request (and the debt of settlements): no gap longer than that, the client's retry delay
        # and the timestamps' jitter, up to the end of the run.
        refill = max(((max_cost if name == "tokens" else 1.0) + slack) / (per_minute / 60.0)
                     for name, per_minute, _, _, slack in limits)
        allowed_gap = refill + RETRY_SLEEP_CAP + ARRIVAL_JITTER + 0.5
        tail = max(a.sent for a in key_attempts) - (events[-1][0] if events else min(a.sent for a in key_attempts))
        if tail > allowed_gap:
            problems.append(f"{key.key_id}: saturated, yet nothing was admitted in the last {tail:.1f}s of the run "
                            f"(each bucket refills a request within {refill:.1f}s)")

    return format_table(("key", "limit", "configured", "highest in any window", "long-run rate"), rows), problems


def sluice_usage(cluster: Cluster, key: str) -> dict:
    """`sluice usage` for today, parsed: {model: (requests, prompt, completion)}."""
    out = subprocess.run([SLUICE_BIN, "usage", "--config", str(cluster.run_dir / "node-1/sluice.json"), "--key", key],
                         capture_output=True, text=True, env=cluster.env, timeout=30, check=True).stdout
    rows = {}
    for line in out.splitlines()[2:]:
        cells = line.split()
        rows[cells[0]] = tuple(int(c) for c in cells[1:])
    return rows


def test_usage_cli_reports_what_was_settled(cluster):
    before = sluice_usage(cluster, "load").get(MODEL, (0, 0, 0))
    for i in range(6):
        r = httpx.post(cluster.node_url(i) + "/v1/chat/completions",
                       headers={"authorization": f"Bearer {LOAD_SECRET}", "x-mock-completion-tokens": "3"},
                       json={"model": MODEL, "messages": [{"role": "user", "content": "count me"}]}, timeout=30)
        assert r.status_code == 200, r.text
    prompt = chat_prompt_tokens([{"role": "user", "content": "count me"}])
    expected = (6, 6 * prompt, 6 * 3)

    # Each node flushes its usage totals to Redis once a second: wait for the flushes (the counts
    # only grow, so the first reading that is not short is the one to judge).
    def difference():
        after = sluice_usage(cluster, "load").get(MODEL, (0, 0, 0))
        return tuple(a - b for a, b in zip(after, before))
    wait_until(lambda: difference()[0] >= expected[0], USAGE_FLUSH_WAIT)
    assert difference() == expected


def max_concurrency(intervals: list) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def format_table(header, rows) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---------------------------------------------------------------- the fault test

def test_redis_outage_falls_back_to_local_limits_and_recovers(cluster):
    stop = threading.Event()
    results: list = []          # (time, status or -1)
    readiness: list = []        # (time, node index, status, limiter or None)
    lock = threading.Lock()

    def load(index: int):
        with httpx.Client(timeout=10.0) as http:
            n = 0
            while not stop.is_set():
                url = cluster.client_url(index + n) + "/v1/chat/completions"
                n += 1
                try:
                    r = http.post(url, headers={"authorization": f"Bearer {LOAD_SECRET}", "x-mock-completion-tokens": "8"},
                                  json={"model": MODEL, "messages": [{"role": "user", "content": "ping"}]})
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    results.append((time.time(), status))
                time.sleep(0.02)

    def poll_readiness():
        with httpx.Client(timeout=2.0) as http:
            while not stop.is_set():
                for index in range(NODE_COUNT):
                    try:
                        r = http.get(cluster.node_url(index) + "/readyz")
                        entry = (time.time(), index, r.status_code, readyz_limiter(r))
                    except httpx.HTTPError:
                        entry = (time.time(), index, -1, None)
                    with lock:
                        readiness.append(entry)
                time.sleep(0.1)

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    threads.append(threading.Thread(target=poll_readiness, daemon=True))
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        killed_at = time.time()
        os.kill(cluster.redis_pid(), signal.SIGKILL)
        time.sleep(5.0)
        restarted_at = time.time()
        subprocess.run(["redis-server", str(cluster.run_dir / "redis/redis.conf"), "--daemonize", "yes"],
                       check=True, capture_output=True, timeout=10)
        assert wait_until(lambda: subprocess.run(["redis-cli", "-p", str(cluster.redis_port), "ping"],
                                                 capture_output=True, text=True).stdout.strip() == "PONG", 10)
        time.sleep(5.0)
        # Recovery may take a reconnect interval: wait up to 10 s more for every node to report redis.
        wait_until(lambda: all(last_limiter(readiness, lock, i) == "redis" for i in range(NODE_COUNT)), 10)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    finished_at = time.time()

    server_errors = [(t, s) for t, s in results if s >= 500 or s == -1]
    during = [s for t, s in results if killed_at + 0.5 <= t <= restarted_at]
    summary = (f"{len(results)} requests ({len(during)} during the outage); statuses "
               f"{sorted({s: sum(1 for _, x in results if x == s) for s in {x for _, x in results}}.items())}")
    print("\n" + summary)
    assert not server_errors, f"with on_failure=local no request may fail: {server_errors[:10]} — {summary}"
    assert during and all(s == 200 for s in during), summary
    for index in range(NODE_COUNT):
        r = httpx.get(cluster.node_url(index) + "/healthz", timeout=2.0)
        assert r.status_code == 200, f"node {index + 1} is not healthy after the outage"
    not_ready = [e for e in readiness if e[2] != 200]
    assert not not_ready, f"nodes stopped being ready: {not_ready[:10]}"

    def modes(index, start, end):
        return [e[3] for e in readiness if e[1] == index and start <= e[0] <= end]

    def first(index, mode, start):
        return next((e[0] - start for e in readiness if e[1] == index and e[0] >= start and e[3] == mode), None)
    for index in range(NODE_COUNT):
        to_local, to_redis = first(index, "local", killed_at), first(index, "redis", restarted_at)
        print(f"node {index + 1}: reported local {to_local if to_local is None else f'{to_local:.2f}s'} after the kill, "
              f"redis {to_redis if to_redis is None else f'{to_redis:.2f}s'} after the restart")
    for index in range(NODE_COUNT):
        # The last moments before the kill: a node may still be connecting right after start-up.
        before = modes(index, killed_at - 1.5, killed_at)
        outage = modes(index, killed_at, restarted_at)
        after = modes(index, restarted_at, finished_at)
        assert before and all(m == "redis" for m in before), f"node {index + 1} before the outage reported {set(before)}"
        assert "local" in outage, f"node {index + 1} never reported the local fallback while Redis was down: {outage}"
        assert after and after[-1] == "redis", f"node {index + 1} did not return to redis after the restart: {after[-5:]}"


def readyz_limiter(response):
    """The `limiter` field of a /readyz body (redis | local | open | closed | embedded), else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("limiter") if isinstance(body, dict) else None


def last_limiter(readiness, lock, index):
    with lock:
        for entry in reversed(readiness):
            if entry[1] == index:
                return entry[3]
    return None


def wait_until(predicate, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- sluice load against the cluster

def test_sluice_load_agrees_with_the_upstream_across_the_nodes(cluster):
    """`sluice load` pointed at every node directly: what it counts as admitted for a key is what
    reached the upstream (the mock's log, by the tool's request ids), and the key's shared limit holds."""
    key = KEYS[0]  # acc-requests: 60/min, burst 10, shared by the nodes through Redis
    time.sleep(12)  # let the key's bucket refill from the tests before (10 requests in 10 s)
    before = {r.get("request_id") for r in cluster.mock_requests()}
    targets = [arg for index in range(NODE_COUNT) for arg in ("--target", cluster.node_url(index))]
    proc = subprocess.run([SLUICE_BIN, "load", "--format", "json", *targets, "--key", key.secret,
                           "--concurrency", "8", "--duration", "5s", "--rate", "40/s", "--burst", "10",
                           "--model", MODEL], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    report = json.loads(proc.stdout)
    (tally,) = report["keys"]
    # 5 s at 60/min with a burst of 10, on four nodes together: within 10 + 5 (+1), at least the burst.
    assert 10 <= tally["admitted"] <= 16, tally
    assert not any(w["exceeded"] for w in tally["windows"])
    deadline = time.time() + 10
    while True:
        logged = [r for r in cluster.mock_requests()
                  if r.get("request_id") not in before and (r.get("request_id") or "").startswith("load-k0-")]
        if len(logged) == tally["admitted"] or time.time() > deadline:
            break
        time.sleep(0.2)
    assert len(logged) == tally["admitted"], (len(logged), tally)


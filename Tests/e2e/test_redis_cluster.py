"""Four Sluice nodes over a Redis Cluster, observed from outside.

`scripts/cluster --background --redis-cluster` starts six redis-servers (3 primaries, 3 replicas,
`cluster-node-timeout` 2 s), sluice-mock, four nodes (`redis.cluster_nodes` lists two seeds; they
find the rest) and nginx. The mock's request log is the observer, as in test_cluster.py, whose
accuracy checks are reused as they are:

1. the accuracy test: the keys of test_cluster.py, saturated for 45 s, hold every limit within the
   envelope burst + rate·Δ + slack, admit at least 97 % of the rate, and every admitted request (and
   only those) reaches the upstream once;
2. a primary killed (SIGKILL) under load: its replica takes over; no request fails (`on_failure:
   local` answers the keys of the dead shard meanwhile), keys on the other shards keep their exact
   limits throughout, the dead shard's keys hold the envelope again once the failover is over, and
   the test prints how much the failover window let through;
3. a resharding under load (`redis-cli --cluster reshard` moving the slots of the loaded keys to
   another primary while they are saturated): no admission lost or doubled (upstream = admitted),
   limits held, every concurrency slot given back, and `sluice usage` equal to what the upstream saw
   (no settlement lost).

Takes about three minutes. Skipped only when a binary it needs is missing.
"""
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from test_cluster import (ACCURACY_SECONDS, ARRIVAL_JITTER, KEYS, MODEL, NODE_COUNT, REQUIRED, USAGE_FLUSH_WAIT,
                          accuracy_report, admitted_upstream_records, chat_prompt_tokens, format_table,
                          key_entry, max_concurrency, max_window_sum, saturate, sluice_usage, start_cluster,
                          wait_until)

pytestmark = pytest.mark.skipif(not all(REQUIRED.values()),
                                reason="missing: " + ", ".join(k for k, v in REQUIRED.items() if not v))

FAULT_RUN_SECONDS = 30.0
FAULT_AT = 8.0                   # seconds into the run
SLOT_COUNT = 16384
RESHARD_SLOTS = 400              # moved from the owner of slot 0: the reshard keys' slots are below this


def crc16_slot(key: str) -> int:
    """Redis Cluster's slot of a key (CRC16/XMODEM of the hash tag, or of the key)."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % SLOT_COUNT


def state_slot(key_id: str) -> int:
    return crc16_slot(f"sluice:{{{key_id}}}:state")


def keys_with_slots(prefix: str, accept) -> list:
    """test_cluster's KEYS under new ids (`prefix-<name>-<n>`) whose state slot satisfies `accept`."""
    chosen = []
    for key in KEYS:
        n = 0
        while not accept(state_slot(f"{prefix}-{key.key_id}-{n}")):
            n += 1
        key_id = f"{prefix}-{key.key_id}-{n}"
        chosen.append(replace(key, key_id=key_id, secret=f"sk-{key_id}-secret-0123456789"))
    return chosen


ACCURACY_KEYS = [replace(k, key_id=f"rc-{k.key_id}", secret=f"{k.secret}-rc") for k in KEYS]
# One key per shard of the fresh cluster (0-5460, 5461-10922, 10923-16383): the first one's shard
# loses its primary.
FAILOVER_KEYS = [keys_with_slots("fo", lambda slot, lo=lo, hi=hi: lo <= slot <= hi)[i]
                 for i, (lo, hi) in enumerate([(0, 5460), (5461, 10922), (10923, 16383)])]
RESHARD_KEYS = keys_with_slots("rs", lambda slot: slot < RESHARD_SLOTS)
CONCURRENCY_LIMIT = 3
# Each request holds its slot for the mock's 150 ms at least: long against the client's view of a
# request's edges (sent before admission, received after the slot is freed), so overlapping requests
# seen by the client are requests Sluice let run together.
RESHARD_CONCURRENCY_KEY = replace(keys_with_slots("rs-conc", lambda slot: slot < RESHARD_SLOTS)[0],
                                  limits={"requests_per_minute": 100_000, "max_concurrent_requests": CONCURRENCY_LIMIT},
                                  upstream_delay_ms=150, stream_every=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    keys = [key_entry(k) for k in ACCURACY_KEYS + FAILOVER_KEYS + RESHARD_KEYS + [RESHARD_CONCURRENCY_KEY]]
    yield from start_cluster(tmp_path_factory.mktemp("redis-cluster"), keys, redis_cluster=True)


def redis_cli(cluster, port: int, *args) -> str:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=120, check=True).stdout


def cluster_ports(cluster) -> list:
    return [cluster.redis_port + k for k in range(6)]


def primaries(cluster) -> dict:
    """{port: (node id, [slot ranges])} of the primaries that serve slots, as a live server sees them."""
    for port in cluster_ports(cluster):
        try:
            text = redis_cli(cluster, port, "cluster", "nodes")
        except subprocess.CalledProcessError:
            continue
        result = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 9 and "master" in fields[2] and "fail" not in fields[2]:
                ranges = [tuple(int(x) for x in r.split("-")) for r in fields[8:] if not r.startswith("[")]
                result[int(re.split("[:@]", fields[1])[1])] = (fields[0], [(r[0], r[-1]) for r in ranges])
        if result:
            return result
    return {}


def owner(cluster, slot: int) -> int:
    for port, (_, ranges) in primaries(cluster).items():
        if any(lo <= slot <= hi for lo, hi in ranges):
            return port
    return 0


def restart_redis(cluster, port: int):
    """Starts a stopped server of the cluster again on its config and data, as scripts/cluster did, and
    waits until the cluster is whole: every server answers, three primaries, each with a synced replica."""
    name = f"redis-{port - cluster.redis_port + 1}"
    conf = cluster.run_dir / name / "redis.conf"
    with open(cluster.run_dir / name / "stdout.log", "ab") as log:
        subprocess.Popen(["setsid", "redis-server", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def whole():
        try:
            if any("cluster_state:ok" not in redis_cli(cluster, p, "cluster", "info") for p in cluster_ports(cluster)):
                return False
            serving = primaries(cluster)
            return len(serving) == 3 and all("state=online" in redis_cli(cluster, p, "info", "replication") for p in serving)
        except subprocess.CalledProcessError:
            return False
    assert wait_until(whole, 30), f"{name} did not rejoin the cluster"


def redis_pid(cluster, port: int) -> int:
    return int((cluster.run_dir / f"redis-{port - cluster.redis_port + 1}.pid").read_text().strip())


def node_slots(cluster, key_id: str) -> dict:
    """The concurrency slots each Sluice node holds for a key, from the key's state hash."""
    port = owner(cluster, state_slot(key_id))
    fields = redis_cli(cluster, port, "hgetall", f"sluice:{{{key_id}}}:state").split("\n")
    return {name: int(value.split()[0]) for name, value in zip(fields[::2], fields[1::2]) if name.startswith("n:")}


def envelope_ratio(events: list, limit: tuple, since: float = 0.0, until: float = float("inf")) -> tuple:
    """The worst observed/bound over the windows of test_cluster, counting events in [since, until)."""
    per_minute, burst, slack = limit
    chosen = [(t, c) for t, c in events if since <= t < until]
    worst, text = 0.0, ""
    for width in (1.0, 2.0, 5.0, 10.0):
        observed = max_window_sum(chosen, width)
        bound = burst + per_minute / 60.0 * (width + ARRIVAL_JITTER) + slack
        if observed / bound > worst:
            worst, text = observed / bound, f"{observed:.0f} in {width:.0f}s (bound {bound:.0f})"
    return worst, text


def key_limits(key, prompt: int, max_in_flight: int) -> list:
    """(name, per_minute, burst, slack, cost of an event) of each limit of an accuracy key."""
    limits = []
    if "requests_per_minute" in key.limits:
        rpm = key.limits["requests_per_minute"]
        limits.append(("requests", rpm, key.limits.get("requests_burst", rpm), 1.0, lambda c: 1.0))
    if "tokens_per_minute" in key.limits:
        tpm = key.limits["tokens_per_minute"]
        overrun = max(0, key.completion_tokens[1] - key.default_output_tokens)
        slack = prompt + key.completion_tokens[1] + max_in_flight * overrun
        limits.append(("tokens", tpm, key.limits.get("tokens_burst", tpm), slack, lambda c: float(prompt + c)))
    return limits


def test_limits_hold_across_four_nodes_over_a_redis_cluster(cluster):
    shards = {owner(cluster, state_slot(k.key_id)) for k in ACCURACY_KEYS}
    mock_before = len(cluster.mock_requests())
    attempts = saturate(cluster, ACCURACY_SECONDS, ACCURACY_KEYS)
    table, problems = accuracy_report(cluster, ACCURACY_KEYS, attempts, mock_before)
    print(f"\nredis cluster ({len(shards)} shards hold the keys):\n" + table)
    (cluster.run_dir / "accuracy-redis-cluster.txt").write_text(table + "\n")
    assert not problems, "\n" + table + "\n\n" + "\n".join(problems)


def test_a_primary_killed_under_load_is_replaced_and_limits_hold(cluster):
    victim_key = FAILOVER_KEYS[0]
    victim_port = owner(cluster, state_slot(victim_key.key_id))
    others = FAILOVER_KEYS[1:]
    assert victim_port and all(owner(cluster, state_slot(k.key_id)) != victim_port for k in others)
    mock_before = len(cluster.mock_requests())

    killed, recovered = {}, {}

    def kill_then_watch():
        time.sleep(FAULT_AT)
        killed["at"] = time.time()
        os.kill(redis_pid(cluster, victim_port), signal.SIGKILL)
        wait_until(lambda: owner(cluster, state_slot(victim_key.key_id)) not in (0, victim_port), 30)
        recovered["at"] = time.time()

    fault = threading.Thread(target=kill_then_watch, daemon=True)
    fault.start()
    attempts = saturate(cluster, FAULT_RUN_SECONDS, FAILOVER_KEYS)
    fault.join(40)
    assert "at" in recovered, "the replica never took over the killed primary's slots"
    new_owner = owner(cluster, state_slot(victim_key.key_id))
    assert new_owner not in (0, victim_port)

    # The killed server started again on its data rejoins as a replica of the new primary.
    restart_redis(cluster, victim_port)

    failures = [a for a in attempts if a.status not in (200, 429)]
    assert not failures, f"{len(failures)} requests failed (on_failure local promises none), e.g. {failures[:5]}"
    seen = admitted_upstream_records(cluster, attempts, mock_before)
    key_of = {a.request_id: a.key_id for a in attempts if a.status == 200}

    # The keys of the healthy shards: every check of the accuracy test, over the whole run.
    others_ids = {k.key_id for k in others}
    table, problems = accuracy_report(cluster, others, [a for a in attempts if a.key_id in others_ids], mock_before)

    # The dead shard's key: the envelope once the failover is over (a second for the nodes to see the
    # new map and their breakers to close), and what the window let through.
    prompt = chat_prompt_tokens(victim_key.messages)
    events = sorted((r["ts"], r["completion_tokens"]) for r in seen if key_of[r["request_id"]] == victim_key.key_id)
    in_flight = max_concurrency([(a.sent, a.received) for a in attempts if a.key_id == victim_key.key_id and a.status == 200])
    rows = []
    settled = recovered["at"] + 1.0
    for name, per_minute, burst, slack, cost in key_limits(victim_key, prompt, in_flight):
        costs = [(t, cost(c)) for t, c in events]
        before, before_text = envelope_ratio(costs, (per_minute, burst, slack), until=killed["at"])
        window, window_text = envelope_ratio(costs, (per_minute, burst, slack), since=killed["at"] - 10, until=settled + 10)
        after, after_text = envelope_ratio(costs, (per_minute, burst, slack), since=settled)
        rows.append((victim_key.key_id, name, f"{before:.0%} {before_text}", f"{window:.0%} {window_text}", f"{after:.0%} {after_text}"))
        if before > 1.0 or after > 1.0:
            problems.append(f"{victim_key.key_id} {name}: outside the envelope before ({before:.0%}) or after ({after:.0%}) the failover")
    failover_table = format_table(("key (dead shard)", "limit", "before the kill", "around the failover", "after it"), rows)
    print(f"\nfailover: primary :{victim_port} killed, replica :{new_owner} serving after "
          f"{recovered['at'] - killed['at']:.1f} s\n{failover_table}\nkeys on the healthy shards:\n{table}")
    (cluster.run_dir / "redis-cluster-failover.txt").write_text(failover_table + "\n" + table + "\n")
    assert not problems, "\n" + failover_table + "\n" + table + "\n\n" + "\n".join(problems)


def test_resharding_under_load_loses_no_admission_and_no_settlement(cluster):
    keys = RESHARD_KEYS + [RESHARD_CONCURRENCY_KEY]
    source = owner(cluster, 0)
    assert all(owner(cluster, state_slot(k.key_id)) == source for k in keys)
    target = next(port for port in primaries(cluster) if port != source)
    ids = {port: node_id for port, (node_id, _) in primaries(cluster).items()}
    usage_before = {k.key_id: sluice_usage(cluster, k.key_id).get(MODEL, (0, 0, 0)) for k in keys}
    mock_before = len(cluster.mock_requests())

    moved = {}

    def reshard():
        time.sleep(5.0)
        started = time.time()
        result = subprocess.run(
            ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source}", "--cluster-from", ids[source],
             "--cluster-to", ids[target], "--cluster-slots", str(RESHARD_SLOTS), "--cluster-yes"],
            capture_output=True, text=True, timeout=120)
        moved.update(code=result.returncode, seconds=time.time() - started, output=result.stdout[-2000:] + result.stderr[-2000:])

    mover = threading.Thread(target=reshard, daemon=True)
    mover.start()
    attempts = saturate(cluster, FAULT_RUN_SECONDS, keys)
    mover.join(130)
    assert moved.get("code") == 0, f"redis-cli --cluster reshard failed: {moved}"
    assert all(owner(cluster, state_slot(k.key_id)) == target for k in keys), "the keys' slots did not move"
    print(f"\nresharding: {RESHARD_SLOTS} slots moved :{source} → :{target} in {moved['seconds']:.1f} s under load")

    failures = [a for a in attempts if a.status not in (200, 429)]
    assert not failures, f"{len(failures)} requests failed during the resharding, e.g. {failures[:5]}"
    seen = admitted_upstream_records(cluster, attempts, mock_before)   # no admission lost or doubled

    rate_keys = {k.key_id for k in RESHARD_KEYS}
    table, problems = accuracy_report(cluster, RESHARD_KEYS, [a for a in attempts if a.key_id in rate_keys], mock_before)
    print(table)
    # The mock is the observer: a request holds its slot from admission until it settled, which is
    # after the mock's answer ended, and the mock holds each request 150 ms from its arrival — so
    # [arrival, arrival + 150 ms] lies inside the slot's time. The client's own [sent, received] does
    # not: it includes the wait for admission, which a resharding can stretch.
    conc_ids = {a.request_id for a in attempts if a.key_id == RESHARD_CONCURRENCY_KEY.key_id and a.status == 200}
    held = [(r["ts"], r["ts"] + RESHARD_CONCURRENCY_KEY.upstream_delay_ms / 1000) for r in seen if r["request_id"] in conc_ids]
    assert held, "the concurrency key admitted nothing"
    client_view = max_concurrency([(a.sent, a.received) for a in attempts if a.request_id in conc_ids])
    print(f"concurrency key: at most {max_concurrency(held)} requests held at the upstream at once "
          f"(limit {CONCURRENCY_LIMIT}; {client_view} overlapping as the clients saw them, admission waits included)")
    assert max_concurrency(held) <= CONCURRENCY_LIMIT

    # Every slot given back, and every settlement's usage recorded.
    assert wait_until(lambda: all(v == 0 for v in node_slots(cluster, RESHARD_CONCURRENCY_KEY.key_id).values()), 10), \
        f"concurrency slots still held after the run: {node_slots(cluster, RESHARD_CONCURRENCY_KEY.key_id)}"
    key_of = {a.request_id: a.key_id for a in attempts if a.status == 200}
    for key in keys:
        records = [r for r in seen if key_of[r["request_id"]] == key.key_id]
        prompt = chat_prompt_tokens(key.messages)
        expected = (len(records), len(records) * prompt, sum(r["completion_tokens"] for r in records))

        def difference(key=key):
            after = sluice_usage(cluster, key.key_id).get(MODEL, (0, 0, 0))
            return tuple(a - b for a, b in zip(after, usage_before[key.key_id]))
        wait_until(lambda: difference()[0] >= expected[0], USAGE_FLUSH_WAIT)
        if difference() != expected:
            problems.append(f"{key.key_id}: sluice usage says {difference()} (requests, prompt, completion), "
                            f"the upstream saw {expected}")
    assert not problems, "\n" + table + "\n\n" + "\n".join(problems)

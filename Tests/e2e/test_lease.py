"""Leasing's envelope: four nodes on one Redis, keys with `"lease": "always"` (each node takes a slice of
the key's bucket, an interval of its timeline, and admits against it by itself), saturated by clients.

The mock's request log is the observer, as in test_cluster.py: every admitted request reached it once,
at its arrival time. For each phase, on the admitted requests' arrival times:

  envelope     in every window [a, b] (every pair of admissions, not a set of widths) the admitted
               requests number at most burst + rate × (b − a + jitter) + 1 (jitter: admission to
               arrival at the mock, as in the accuracy test): the nodes together never exceed the one
               bucket, whatever they leased;
  utilisation  admitted / (burst + rate × T) over the phase's T seconds (from its first request sent
               to the end of its clients' sending).

Phases, each on its own key (1200 requests/min, burst 20, so each starts full):

  spread   clients evenly over the four nodes for 15 s: utilisation at least 97 %;
  skewed   most clients on node 1, one on each other node, 15 s: printed;
  kill     clients evenly over the four nodes; 6 s in, everyone pauses until the bucket is full
           again, the victim's clients resume first, and the victim is killed (SIGKILL) right after
           its first admission — its call leased a slice, and what it held unused is read from Redis
           (it must be at least one unit); then the other three nodes resume until 18 s. The dead
           node's slice is never given back, but is at most one burst: the envelope holds over the
           whole phase, and once time has passed the slice, the three get the whole rate: at least
           97 % from then on.

Also printed: how many admissions of each phase were local (not sent to Redis, read from MONITOR),
and the same for a key its clients do not saturate. Under saturation a call leases only what its
admissions left in the bucket, so few are; that is what the pause before the kill works around.

About 60 s. Skipped only when a binary it needs is missing.
"""
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import sha256_hex
from test_cluster import ARRIVAL_JITTER, MODEL, NODE_COUNT, REQUIRED, format_table, start_cluster

pytestmark = pytest.mark.skipif(not all(REQUIRED.values()) or NODE_COUNT < 2,
                                reason="missing: " + ", ".join(k for k, v in REQUIRED.items() if not v)
                                if not all(REQUIRED.values()) else "needs several nodes")

RATE_PER_MINUTE = 1200
BURST = 20
RATE = RATE_PER_MINUTE / 60.0
PHASE_SECONDS = 15.0
KILL_PHASE_SECONDS = 18.0
KILL_AFTER = 6.0
LULL_SECONDS = 1.5              # the bucket (burst 20 at 20/s) is full again after 1 s
THREADS_PER_NODE = 3
RETRY_SLEEP_CAP = 0.05          # a denied client retries within 50 ms at most (sooner if told so)
SPREAD_MINIMUM = 0.97
RECOVERED_MINIMUM = 0.97
PHASES = ("spread", "skewed", "kill")


def secret(phase: str) -> str:
    return f"sk-lease-{phase}-0123456789"


@pytest.fixture(scope="module")
def lease_cluster(tmp_path_factory):
    keys = [{"id": f"lease-{phase}", "secret_sha256": sha256_hex(secret(phase)),
             "limits": {"requests_per_minute": RATE_PER_MINUTE, "requests_burst": BURST, "lease": "always"}}
            for phase in PHASES]
    # Never limited by its clients: how many of its admissions still go to Redis (printed).
    keys.append({"id": "lease-unsaturated", "secret_sha256": sha256_hex(secret("unsaturated")),
                 "limits": {"requests_per_minute": 6_000_000, "lease": "always"}})
    yield from start_cluster(tmp_path_factory.mktemp("lease"), keys)


@dataclass
class Attempt:
    node: int
    status: int            # -1: transport error
    request_id: str
    sent: float
    received: float


def run_clients(cluster, phase: str, nodes: list, seconds: float, during=None, on_admitted=None, paused=None) -> tuple:
    """One thread per entry of `nodes` (a node index), each sending to its node as fast as the key
    allows (a 429 is retried after its retry-after-ms, at most RETRY_SLEEP_CAP later), for `seconds`.
    A thread whose node stops answering stops; one whose node is in the set `paused` waits.
    `during(start)` runs on the caller's thread meanwhile; `on_admitted(node)` on a client's thread
    as each 200 arrives. Returns the attempts, the phase's start and end (time.time()) and what
    `during` returned."""
    paused = paused if paused is not None else set()
    attempts: list = []
    lock = threading.Lock()
    start = time.time()
    deadline = start + seconds

    def client(node: int):
        local = []
        url = cluster.node_url(node) + "/v1/chat/completions"
        headers = {"authorization": f"Bearer {secret(phase)}", "x-mock-completion-tokens": "1"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=10.0) as http:
            while time.time() < deadline:
                if node in paused:
                    time.sleep(0.002)
                    continue
                sent = time.time()
                try:
                    r = http.post(url, json=body, headers=headers)
                except httpx.HTTPError as error:
                    local.append(Attempt(node, -1, repr(error), sent, time.time()))
                    break
                local.append(Attempt(node, r.status_code, r.headers.get("x-request-id", ""), sent, time.time()))
                if r.status_code == 200 and on_admitted:
                    on_admitted(node)
                if r.status_code == 429:
                    wait = float(r.headers.get("retry-after-ms", "50")) / 1000
                    time.sleep(min(max(wait, 0.0), RETRY_SLEEP_CAP, max(deadline - time.time(), 0)))
        with lock:
            attempts.extend(local)

    threads = [threading.Thread(target=client, args=(node,), daemon=True) for node in nodes]
    for t in threads:
        t.start()
    extra = during(start) if during else None
    for t in threads:
        t.join(seconds + 30)
    return attempts, start, deadline, extra


def admitted_times(cluster, attempts: list, mock_before: int) -> list:
    """The mock's arrival times of the admitted attempts, sorted, with (time, node); checks that every
    admitted request, and only those, reached the upstream, once."""
    time.sleep(0.5)  # the mock writes its log line when a request finishes
    upstream = cluster.mock_requests()[mock_before:]
    node_of = {a.request_id: a.node for a in attempts if a.status == 200}
    denied = {a.request_id for a in attempts if a.status == 429}
    seen = [r for r in upstream if r.get("request_id") in node_of]
    ids = [r["request_id"] for r in seen]
    assert len(ids) == len(set(ids)), "a request reached the upstream twice"
    assert set(ids) == set(node_of), "every admitted request, and only those, reached the upstream"
    assert not denied & {r.get("request_id") for r in upstream}, "a rate-limited request reached the upstream"
    return sorted((r["ts"], node_of[r["request_id"]]) for r in seen)


def worst_window(times: list) -> tuple:
    """The window [a, b] (a and b admission times) whose count exceeds rate × (b − a) the most:
    (excess, count, width). Every window, not a set of widths: count(i..j) − rate·(t_j − t_i) is
    (j + 1 − rate·t_j) − (i − rate·t_i), maximised with a running minimum over i."""
    best = (0.0, 0, 0.0)
    low, low_index = float("inf"), 0
    for j, t in enumerate(times):
        value = j - RATE * t
        if value < low:
            low, low_index = value, j
        excess = (j + 1 - RATE * t) - low
        if excess > best[0]:
            best = (excess, j - low_index + 1, t - times[low_index])
    return best


def envelope_problem(name: str, times: list):
    """None when every window holds burst + rate × (width + jitter) + 1, else what broke it."""
    excess, count, width = worst_window(times)
    allowed = BURST + RATE * ARRIVAL_JITTER + 1
    if excess > allowed + 1e-9:
        return (f"{name}: {count} admitted within {width:.3f}s, above burst {BURST} + {RATE:.0f}/s × "
                f"({width:.3f}s + {ARRIVAL_JITTER}s) + 1 = {BURST + RATE * (width + ARRIVAL_JITTER) + 1:.1f}")
    return None


def check_statuses(attempts: list, allow_transport_errors_from=None):
    bad = [a for a in attempts if a.status not in (200, 429)
           and not (a.status == -1 and a.node == allow_transport_errors_from)]
    assert not bad, f"{len(bad)} requests neither admitted nor rate-limited, e.g. {bad[:5]}"


class LimiterCalls:
    """What the nodes' limiter calls for one key carried, read from Redis' MONITOR while running:
    calls, admissions (batch.lua ARGV 23) and settlements (ARGV 22)."""

    def __init__(self, cluster, key_id: str, path: Path):
        self.state_key = f"sluice:{{{key_id}}}:state"
        self.path = path
        self.out = open(path, "w")
        self.proc = subprocess.Popen(["redis-cli", "-p", str(cluster.redis_port), "MONITOR"],
                                     stdout=self.out, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # MONITOR is on before the first request

    def stop(self) -> tuple:
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait(10)
        self.out.close()
        calls = admissions = settlements = 0
        for line in self.path.read_text(errors="replace").splitlines():
            if '"FCALL"' not in line or f'"{self.state_key}"' not in line:
                continue
            words = shlex.split(line.split("]", 1)[1])
            argv = words[3:]          # FCALL function numkeys, then the key (argv[0]) and ARGV 1…
            calls += 1
            settlements += int(argv[22])
            admissions += int(argv[23])
        return calls, admissions, settlements


def redis_cli(cluster, *args) -> str:
    return subprocess.run(["redis-cli", "-p", str(cluster.redis_port), *args],
                          capture_output=True, text=True, timeout=10).stdout.strip()


def test_leased_nodes_stay_within_the_envelope(lease_cluster):
    c = lease_cluster
    rows, problems, notes = [], [], []

    def row(phase, period, times, seconds, utilisation, local=""):
        excess, count, width = worst_window(times)
        rows.append((phase, period, len(times), f"{seconds:.1f}s", "" if utilisation is None else f"{utilisation:.1%}",
                     f"{count} in {width:.2f}s ({excess - BURST:+.1f})", local))

    def phase(name, nodes, seconds, **options):
        """Runs the clients of one phase under MONITOR. Returns the attempts, start, end, what
        `during` returned, the admitted requests' (arrival time, node) and how many of them were
        admitted locally: admitted − (admissions sent to Redis − denials; every denial was Redis')."""
        before = len(c.mock_requests())
        monitor = LimiterCalls(c, f"lease-{name}", c.run_dir / f"monitor-{name}.txt")
        attempts, start, end, extra = run_clients(c, name, nodes, seconds, **options)
        _, sent, _ = monitor.stop()
        admitted = admitted_times(c, attempts, before)
        denied = sum(1 for a in attempts if a.status == 429)
        # The phase starts when its first request is sent (not when its threads were started).
        start = min(a.sent for a in attempts)
        # (Out of 0…admitted only when denials did not come from Redis: a node on its failure policy.)
        return attempts, start, end, extra, admitted, min(max(len(admitted) - (sent - denied), 0), len(admitted))

    def local_text(local, admitted):
        return f"{local} ({local / max(len(admitted), 1):.0%})"

    # A key its clients do not saturate, for the record: how many of its admissions still went to
    # Redis (exact mode sends every one).
    spread_nodes = [n for n in range(NODE_COUNT) for _ in range(THREADS_PER_NODE)]
    monitor = LimiterCalls(c, "lease-unsaturated", c.run_dir / "monitor-unsaturated.txt")
    attempts, start, end, _ = run_clients(c, "unsaturated", spread_nodes, 2.0)
    calls, sent, settlements = monitor.stop()
    check_statuses(attempts)
    admitted = sum(1 for a in attempts if a.status == 200)
    notes.append(f"unsaturated key (not asserted): {admitted} admitted in 2 s, {max(admitted - sent, 0)} of them locally; "
                 f"{calls} limiter calls to Redis carried {sent} admissions and {settlements} settlements")

    # Spread: every node as busy as the others.
    attempts, start, end, _, admitted, local = phase("spread", spread_nodes, PHASE_SECONDS)
    check_statuses(attempts)
    times = [t for t, _ in admitted]
    spread = len(times) / (BURST + RATE * (end - start))
    row("spread", "whole", times, end - start, spread, local_text(local, admitted))
    problems.append(envelope_problem("spread", times))
    if spread < SPREAD_MINIMUM:
        problems.append(f"spread: utilisation {spread:.1%} (need ≥ {SPREAD_MINIMUM:.0%})")

    # Skewed: node 1 gets most clients, the others one each.
    skewed_nodes = [0] * (THREADS_PER_NODE * NODE_COUNT - (NODE_COUNT - 1)) + list(range(1, NODE_COUNT))
    attempts, start, end, _, admitted, local = phase("skewed", skewed_nodes, PHASE_SECONDS)
    check_statuses(attempts)
    times = [t for t, _ in admitted]
    skewed = len(times) / (BURST + RATE * (end - start))
    row("skewed", "whole", times, end - start, skewed, local_text(local, admitted))
    notes.append(f"skewed: {skewed_nodes.count(0)} clients on node 1, one on each other node; admitted per node "
                 f"{[sum(1 for _, n in admitted if n == node) for node in range(NODE_COUNT)]}")
    problems.append(envelope_problem("skewed", times))

    # Kill: spread again, then the victim is killed while it holds a slice, mid-run. Under saturation
    # a call finds nothing left to lease once its admissions are served, so slices are taken after a
    # lull: every client pauses until the bucket is full again, the victim's resume first, and the
    # victim is killed right after its first admission (that call leased what it asked for). What it
    # held is read from Redis: the units charged to the bucket since it was full, less what the
    # victim admitted (or may have: a request in flight at the kill).
    victim = NODE_COUNT - 1
    victim_pid = int((c.run_dir / f"node-{victim + 1}.pid").read_text().strip())
    victim_admitted = threading.Event()
    paused = set()

    def on_admitted(node):
        if node == victim:
            victim_admitted.set()

    def kill(start):
        time.sleep(KILL_AFTER)
        paused.update(range(NODE_COUNT))
        paused_at = time.time()
        time.sleep(LULL_SECONDS)
        victim_admitted.clear()
        paused.discard(victim)
        admitting = victim_admitted.wait(5.0)
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.time()
        tat = int(redis_cli(c, "HGET", "sluice:{lease-kill}:state", "r") or 0)
        paused.clear()
        return paused_at, killed_at, admitting, tat

    attempts, start, end, (paused_at, killed_at, admitting, tat), admitted, local = phase(
        "kill", spread_nodes, KILL_PHASE_SECONDS, during=kill, on_admitted=on_admitted, paused=paused)
    assert admitting, f"node {victim + 1} admitted nothing for 5 s after the lull"
    check_statuses(attempts, allow_transport_errors_from=victim)
    times = [t for t, _ in admitted]
    victim_after_lull = [t for t, n in admitted if n == victim and t > paused_at + LULL_SECONDS / 2]
    in_flight = sum(1 for a in attempts if a.node == victim and a.status == -1)
    # Units charged since the bucket was full, at least (its first charge came before the kill).
    charged = int((tat - killed_at * 1e6) // (1e6 / RATE))
    held = charged - len(victim_after_lull) - in_flight
    notes.append(f"kill: after a {LULL_SECONDS}s lull node {victim + 1} admitted {len(victim_after_lull)} "
                 f"({in_flight} more in flight), was killed; the bucket had ≥ {charged} units charged: "
                 f"a slice of ≥ {held} units died with it")
    assert not [t for t, n in admitted if n == victim and t > killed_at], "the killed node admitted after its death"
    if held < 1:
        problems.append(f"kill: node {victim + 1} held no slice when it was killed ({charged} units charged, "
                        f"{len(victim_after_lull)} admitted, {in_flight} in flight)")
    problems.append(envelope_problem("kill (whole phase)", times))
    before_kill = [t for t in times if t < paused_at]
    after_kill = [t for t, n in admitted if t >= killed_at and n != victim]
    # The bucket was full at the kill, less what the victim took; its slice is at most one burst:
    # once time has passed it, the bucket is the three others'.
    recovered_from = killed_at + BURST / RATE + 0.5
    recovered = [t for t in after_kill if t >= recovered_from]
    util_after = len(after_kill) / (BURST + RATE * (end - killed_at))
    util_recovered = len(recovered) / (RATE * (end - recovered_from))
    row("kill", "whole", times, end - start, None, local_text(local, admitted))
    row("kill", "before the lull", before_kill, paused_at - start, len(before_kill) / (BURST + RATE * (paused_at - start)))
    row("kill", "after the kill", after_kill, end - killed_at, util_after)
    row("kill", f"from kill+{recovered_from - killed_at:.1f}s", recovered, end - recovered_from, util_recovered)
    if util_recovered < RECOVERED_MINIMUM:
        problems.append(f"kill: the three nodes left got {util_recovered:.1%} of the rate once the dead node's "
                        f"slice had passed (need ≥ {RECOVERED_MINIMUM:.0%}); {util_after:.1%} from the kill on")

    table = format_table(("phase", "period", "admitted", "T", "utilisation",
                          "worst window (excess − burst)", "admitted locally"), rows)
    summary = (f"{RATE_PER_MINUTE}/min burst {BURST}, lease always; utilisation = admitted / (burst + rate × T), "
               f"from kill+{recovered_from - killed_at:.1f}s admitted / (rate × T); worst window: the most admitted "
               f"beyond rate × width, less the burst (allowed: +{RATE * ARRIVAL_JITTER + 1:.0f})\n{table}\n"
               + "\n".join(notes))
    print("\n" + summary)
    (c.run_dir / "lease-envelope.txt").write_text(summary + "\n")
    problems = [p for p in problems if p]
    assert not problems, "\n" + summary + "\n\n" + "\n".join(problems)

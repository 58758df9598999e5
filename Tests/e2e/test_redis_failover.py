"""A failover of a Redis primary/replica pair, without cluster mode, under a Sluice node.

Two redis-servers on loopback, the second a replica of the first (`--replicaof`). The node is given
neither: its `redis.url` is a TCP forwarder in this test process, the stable address a managed
endpoint, a DNS name or a Sentinel-aware proxy gives, pointed at one Redis at a time. Keys:
`quota` (tokens_per_day), `burst` (6 requests/min, burst 3) and `steady` (no practical limit), whose
requests run all along from a few client threads while `/readyz` is polled.

`test_primary_killed_replica_promoted` — the primary is SIGKILLed, the replica promoted with
`REPLICAOF NO ONE`, the forwarder switched to it:
  - before: the replica has the function library (FUNCTION LOAD replicates: the library the node
    loaded after replication had started is there) and the keys' state;
  - meanwhile: every steady request is answered 200 (`on_failure: local`), `/readyz` says `local`;
    with nothing behind the forwarder (it accepts and closes) the node's connections back off
    instead of reconnecting at once (fewer than 60 connections in the ~1 s outage);
  - after: `/readyz` says `redis` again, and the limits are enforced from the replica's state: the
    daily quota admits and denies exactly as what remains says, the spent burst is still spent (an
    empty Redis would admit), `sluice usage` shows what was recorded before the failover.

`test_primary_demoted_alive_without_the_library` — the managed-endpoint case: the primary stays up
and is demoted (`REPLICAOF` the promoted replica), the forwarder sends new connections to the new
primary but keeps the ones already open (as a DNS change does), so the node's connections still
reach the old primary, which now answers `READONLY`; and the new primary has lost its function
library (`FUNCTION FLUSH` after the promotion). The node reconnects on `READONLY`, loads the library
on the new primary by itself, and enforces the limits from its state. The library then reaches the
new primary's replicas: the old primary, and one that syncs only afterwards (by the RDB).

About 5 s each.
"""
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest

from conftest import SLUICE_BIN, Gateway, Mock, free_port, gateway_config, sha256_hex, wait_for_port
from test_cluster import chat_prompt_tokens, wait_until

pytestmark = pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("redis-cli")),
                                reason="redis-server and redis-cli are needed")

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Which lock comes after the mill?"}]
QUOTA_SECRET, QUOTA_PER_DAY = "sk-failover-quota-0123456789", 2000
BURST_SECRET = "sk-failover-burst-0123456789"
STEADY_SECRET = "sk-failover-steady-0123456789"


class Forwarder:
    """A TCP forwarder on 127.0.0.1: accepts, connects to the current target, copies both ways.
    With no target reachable it accepts and closes at once, as a proxy without a backend does."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list = []
        self.accepted = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def switch(self, target_port: int, close_existing: bool):
        """New connections go to `target_port`; the open ones are closed (the old primary is gone,
        or Sentinel killed its clients) or kept (a DNS change does not touch them)."""
        with self.lock:
            self.target_port = target_port
            pairs, self.pairs = (self.pairs, []) if close_existing else ([], self.pairs)
        for pair in pairs:
            for s in pair:
                close(s)

    def close(self):
        self.closed = True
        close(self.listener)
        self.switch(0, close_existing=True)

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                target = self.target_port
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=1)
            except OSError:
                close(client)
                continue
            upstream.settimeout(None)
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, destination):
        try:
            while data := source.recv(65536):
                destination.sendall(data)
        except OSError:
            pass
        for s in (source, destination):
            close(s)


def close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class RedisServer:
    def __init__(self, directory, replica_of: int | None = None):
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
                "--logfile", str(directory / "redis.log")]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def cli(self, *args, strip=True) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10).stdout
        return out.strip() if strip else out

    def role(self) -> str:
        return self.cli("ROLE").splitlines()[0] if self.proc.poll() is None else "dead"

    def replica_in_sync(self) -> bool:
        return "master_link_status:up" in self.cli("INFO", "replication")

    def libraries(self) -> list:
        lines = self.cli("FUNCTION", "LIST").splitlines()
        return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "library_name"]

    def quota_used(self) -> str:
        return self.cli("HGET", "sluice:{quota}:state", "qdu")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Pair:
    """Primary, replica, the forwarder in front of the primary, sluice-mock and one node."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.primary = RedisServer(tmp / "redis-a")
        self.replica = RedisServer(tmp / "redis-b", replica_of=self.primary.port)
        assert wait_until(self.replica.replica_in_sync, 10), "the replica did not sync"
        self.forwarder = Forwarder(self.primary.port)
        self.mock = Mock(tmp)
        config = gateway_config(free_port(), self.mock.port, [
            {"id": "quota", "secret_sha256": sha256_hex(QUOTA_SECRET),
             "limits": {"requests_per_minute": 10_000, "tokens_per_day": QUOTA_PER_DAY}},
            {"id": "burst", "secret_sha256": sha256_hex(BURST_SECRET),
             "limits": {"requests_per_minute": 6, "requests_burst": 3}},
            {"id": "steady", "secret_sha256": sha256_hex(STEADY_SECRET),
             "limits": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000}},
        ], {}, server={"event_loop_threads": 2, "shutdown_grace_seconds": 2})
        config["redis"] = {"url": f"redis://127.0.0.1:{self.forwarder.port}", "on_failure": "local",
                           "fallback_node_count": 1}
        self.node = Gateway(tmp, config)
        assert wait_until(lambda: self.limiter() == "redis", 10), "the node did not reach Redis"
        self.stop_load = threading.Event()
        self.lock = threading.Lock()
        self.steady: list = []      # (time, status)
        self.readiness: list = []   # (time, limiter)
        self.threads = [threading.Thread(target=self._load, daemon=True) for _ in range(3)]
        self.threads.append(threading.Thread(target=self._poll_readiness, daemon=True))
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_load.set()
        for t in self.threads:
            t.join(15)
        self.node.stop()
        self.mock.stop()
        self.forwarder.close()
        self.primary.kill()
        self.replica.kill()

    def limiter(self):
        try:
            return httpx.get(self.node.root_url + "/readyz", timeout=2).json().get("limiter")
        except (httpx.HTTPError, ValueError):
            return None

    def _load(self):
        with httpx.Client(timeout=10.0) as http:
            while not self.stop_load.is_set():
                try:
                    status = http.post(self.node.base_url + "/chat/completions",
                                       headers={"authorization": f"Bearer {STEADY_SECRET}", "x-mock-completion-tokens": "4"},
                                       json={"model": MODEL, "messages": MESSAGES}).status_code
                except httpx.HTTPError as error:
                    status = f"transport error {error!r}"
                with self.lock:
                    self.steady.append((time.time(), status))
                time.sleep(0.02)

    def _poll_readiness(self):
        while not self.stop_load.is_set():
            entry = (time.time(), self.limiter())
            with self.lock:
                self.readiness.append(entry)
            time.sleep(0.05)

    def chat(self, secret: str, max_tokens: int, completion_tokens: int):
        client = openai.OpenAI(base_url=self.node.base_url, api_key=secret, max_retries=0)
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens,
                                              extra_headers={"x-mock-completion-tokens": str(completion_tokens)})

    def usage(self) -> str:
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(self.node.config_path), "--key", "quota"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def spend_before_the_failover(self) -> int:
        """Part of the daily quota (one request refunded at settlement), the whole burst; waits until
        the usage is flushed and the replica has every write. Returns the quota spent."""
        prompt = chat_prompt_tokens(MESSAGES)
        for max_tokens, completion in ((100, 100), (300, 40)):
            assert self.chat(QUOTA_SECRET, max_tokens, completion).usage.completion_tokens == completion
        for _ in range(3):
            self.chat(BURST_SECRET, 1, 1)
        with pytest.raises(openai.RateLimitError):
            self.chat(BURST_SECRET, 1, 1)
        spent = 2 * prompt + 140
        assert wait_until(lambda: self.primary.quota_used() == str(spent), 5), self.primary.quota_used()
        assert wait_until(lambda: "total " in self.usage() and self.usage_total() == (2, 2 * prompt, 140), 5), self.usage()
        # Every write so far acknowledged by the replica (WAIT counts the primary's whole offset).
        assert self.primary.cli("WAIT", "1", "2000") == "1"
        assert self.replica.quota_used() == str(spent)
        return spent

    def usage_total(self) -> tuple:
        [row] = [line.split() for line in self.usage().splitlines() if line.startswith("total ")]
        return int(row[1]), int(row[2]), int(row[3])

    def check_limits_from_the_new_primary(self, spent: int):
        """The quota decides exactly from what the new primary holds; the burst spent before the
        failover is still spent; the usage recorded before it is there."""
        prompt = chat_prompt_tokens(MESSAGES)
        remaining = QUOTA_PER_DAY - spent
        with pytest.raises(openai.RateLimitError) as denied:
            self.chat(QUOTA_SECRET, remaining - prompt + 1, remaining - prompt + 1)
        assert denied.value.response.json()["error"]["code"] == "insufficient_quota", denied.value.response.text
        assert self.chat(QUOTA_SECRET, remaining - prompt, remaining - prompt).usage.completion_tokens == remaining - prompt
        with pytest.raises(openai.RateLimitError) as spent_out:
            self.chat(QUOTA_SECRET, 1, 1)
        assert spent_out.value.response.json()["error"]["code"] == "insufficient_quota"
        # 6/min refills one request per 10 s: within the test's seconds the burst key is still empty.
        with pytest.raises(openai.RateLimitError) as burst:
            self.chat(BURST_SECRET, 1, 1)
        assert burst.value.response.json()["error"]["type"] == "requests", burst.value.response.text
        assert wait_until(lambda: self.usage_total() == (3, 3 * prompt, 140 + remaining - prompt), 5), self.usage()

    def steady_summary(self, start: float, end: float):
        with self.lock:
            steady = [s for t, s in self.steady if start <= t <= end]
            modes = [m for t, m in self.readiness if start <= t <= end]
        return steady, modes


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def test_primary_killed_replica_promoted(pair):
    p = pair
    spent = p.spend_before_the_failover()
    [library] = p.primary.libraries()
    assert library.startswith("sluice_")
    # The library was loaded by the node after the replica had synced: FUNCTION LOAD replicated it.
    assert p.replica.libraries() == [library]

    failed_at = time.time()
    p.primary.kill()
    assert wait_until(lambda: p.limiter() == "local", 5), "the node never applied its failure policy"
    time.sleep(1.0)  # the outage: the node's connections reach the forwarder, which has no backend
    accepted_during_outage = p.forwarder.accepted
    assert p.replica.cli("REPLICAOF", "NO", "ONE") == "OK"
    assert p.replica.role() == "master"
    p.forwarder.switch(p.replica.port, close_existing=True)
    promoted_at = time.time()
    assert wait_until(lambda: p.limiter() == "redis", 10), "the node did not return to Redis after the failover"
    recovered_at = time.time()
    print(f"\nlocal → redis {recovered_at - promoted_at:.2f} s after the switch; forwarder connections "
          f"during the {promoted_at - failed_at:.1f} s outage: {accepted_during_outage}")
    # While nothing is behind the forwarder it accepts and closes: the node's two connections back
    # off (25 ms doubling to 2 s) instead of reconnecting at once (a spinning client opened ~1,000/s).
    assert accepted_during_outage < 60, accepted_during_outage

    p.check_limits_from_the_new_primary(spent)
    time.sleep(0.3)
    steady, modes = p.steady_summary(failed_at, time.time())
    assert len(steady) > 20 and all(s == 200 for s in steady), f"not 200 under on_failure=local: {[s for s in steady if s != 200][:10]}"
    assert "local" in modes and modes[-1] == "redis", sorted(set(modes), key=str)
    assert p.replica.libraries() == [library]


def test_primary_demoted_alive_without_the_library(pair):
    p = pair
    spent = p.spend_before_the_failover()
    [library] = p.primary.libraries()

    # The replica is promoted and loses the library (a new primary that never had it); the old
    # primary is demoted to its replica but stays up, and the node's open connections still reach it.
    assert p.replica.cli("REPLICAOF", "NO", "ONE") == "OK"
    assert p.replica.cli("FUNCTION", "FLUSH") == "OK" and p.replica.libraries() == []
    p.forwarder.switch(p.replica.port, close_existing=False)
    failed_at = time.time()
    assert p.primary.cli("REPLICAOF", "127.0.0.1", str(p.replica.port)) == "OK"
    assert wait_until(p.primary.replica_in_sync, 10), "the old primary did not become a replica"
    assert p.primary.cli("SET", "sluice:probe", "1").startswith("READONLY")
    assert wait_until(lambda: p.limiter() == "redis" and p.replica.libraries() == [library], 10), (
        f"the node did not move to the new primary: limiter {p.limiter()}, its libraries {p.replica.libraries()}")
    print(f"\nredis again on the new primary {time.time() - failed_at:.2f} s after the old one was demoted")
    assert "redis answered READONLY" in p.node.log_text()

    p.check_limits_from_the_new_primary(spent)
    steady, _ = p.steady_summary(failed_at, time.time())
    assert len(steady) > 20 and all(s == 200 for s in steady), f"not 200 under on_failure=local: {[s for s in steady if s != 200][:10]}"

    # The library the node loaded on the new primary reaches its replicas: the old primary (synced
    # before the load: by the replication stream) and a replica that syncs only now (by the RDB).
    assert wait_until(lambda: p.primary.libraries() == [library], 5), p.primary.libraries()
    late = RedisServer(p.tmp / "redis-c", replica_of=p.replica.port)
    try:
        assert wait_until(late.replica_in_sync, 10), "the late replica did not sync"
        assert late.libraries() == [library]
    finally:
        late.kill()

"""Quotas and usage survive a restart of Redis: `scripts/cluster`'s own Redis (append-only file,
`appendfsync everysec`, in DIR/redis) with one Sluice node, restarted as an operator would.

Two keys spend part of a quota (one daily, one monthly) through the openai SDK — one request of each
refunded at settlement, so settlements must have reached Redis too — and the node flushes their usage.
Then Redis is stopped with SIGTERM (a clean shutdown: the AOF is fsynced) and started again from the
same config and data directory. Afterwards:

  - Redis says it loaded the append-only file, and each key's quota fields (`qd qdu qm qmu` of
    `sluice:{<key>}:state`) are what they were;
  - `sluice usage` prints exactly what it printed before, and its totals are what the quota counted;
  - the quota admits and denies exactly as the remaining amount says: a request costing one token more
    than what remains is denied (429 `insufficient_quota`), one costing exactly what remains is
    admitted, and then the quota is spent (the next request is denied).

Had Redis come back empty, the first of those requests would have been admitted. About 10 s.
"""
import json
import os
import signal
import subprocess
import time
from datetime import datetime, timezone

import httpx
import openai
import pytest

from conftest import MOCK_BIN, ROOT, SLUICE_BIN, TOKENIZER_DIR, sha256_hex
from test_cluster import REQUIRED, chat_prompt_tokens, free_base_port, wait_until

pytestmark = pytest.mark.skipif(not all(REQUIRED.values()),
                                reason="missing: " + ", ".join(k for k, v in REQUIRED.items() if not v))

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Count the locks on the river Sluice."}]
# Each key has one quota; the per-minute limits are far away so that only the quota decides.
KEYS = {
    "daily": ("sk-restart-daily-0123456789", {"tokens_per_day": 2000}, "qdu"),
    "monthly": ("sk-restart-monthly-0123456789", {"tokens_per_month": 1700}, "qmu"),
}
QUOTA_FIELDS = ("qd", "qdu", "qm", "qmu")


class OneNodeCluster:
    """`scripts/cluster --background --nodes 1` on free ports, with the keys above."""

    def __init__(self, tmp):
        base = free_base_port(4)
        self.node_port, mock_port, self.redis_port = base + 1, base + 2, base + 3
        config = {
            "server": {"host": "127.0.0.1", "port": self.node_port, "event_loop_threads": 1,
                       "shutdown_grace_seconds": 2},
            "tokenizer": {"directory": TOKENIZER_DIR},
            "upstreams": [{"name": "mock", "base_url": f"http://127.0.0.1:{mock_port}/v1", "models": [MODEL],
                           "connect_timeout_ms": 2000, "first_byte_timeout_ms": 5000, "stall_timeout_ms": 5000,
                           "request_timeout_ms": 30000, "max_connections": 8}],
            "tiers": {},
            "keys": [{"id": key_id, "secret_sha256": sha256_hex(secret),
                      "limits": {"requests_per_minute": 10_000, **quota}}
                     for key_id, (secret, quota, _) in KEYS.items()],
            "redis": {"url": f"redis://127.0.0.1:{self.redis_port}", "on_failure": "local", "fallback_node_count": 1},
        }
        config_path = tmp / "restart.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.run_dir = tmp / "run"
        self.node_config = self.run_dir / "node-1/sluice.json"
        self.env = dict(os.environ, SLUICE_BIN=SLUICE_BIN, SLUICE_MOCK_BIN=MOCK_BIN, SLUICE_TOKENIZER_DIR=TOKENIZER_DIR)
        start = subprocess.run(
            [str(ROOT / "scripts/cluster"), "--background", "--config", str(config_path), "--run-dir", str(self.run_dir),
             "--base-port", str(base), "--nodes", "1"],
            env=self.env, capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, f"scripts/cluster failed:\n{start.stdout}\n{start.stderr}"

    def stop(self):
        subprocess.run([str(ROOT / "scripts/cluster"), "stop", "--run-dir", str(self.run_dir)],
                       env=self.env, capture_output=True, text=True, timeout=120)

    @property
    def node_url(self) -> str:
        return f"http://127.0.0.1:{self.node_port}"

    def redis(self, *args, strip=True) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.redis_port), *args],
                             capture_output=True, text=True, timeout=10).stdout
        return out.strip() if strip else out

    def redis_pid(self) -> int:
        return int((self.run_dir / "redis.pid").read_text().strip())

    def quota_fields(self, key_id: str) -> dict:
        # One line per field, empty for a field the hash does not have.
        values = self.redis("HMGET", f"sluice:{{{key_id}}}:state", *QUOTA_FIELDS, strip=False).split("\n")
        return dict(zip(QUOTA_FIELDS, values[:len(QUOTA_FIELDS)]))

    def usage(self, key_id: str) -> str:
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(self.node_config), "--key", key_id],
                             capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def limiter(self) -> str | None:
        try:
            return httpx.get(self.node_url + "/readyz", timeout=2).json().get("limiter")
        except (httpx.HTTPError, ValueError):
            return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = OneNodeCluster(tmp_path_factory.mktemp("redis-restart"))
    try:
        yield c
    finally:
        c.stop()


def usage_totals(text: str) -> tuple:
    """(requests, prompt tokens, completion tokens) of the `total` row of `sluice usage`."""
    [row] = [line.split() for line in text.splitlines() if line.startswith("total ")]
    return int(row[1]), int(row[2]), int(row[3])


def chat(c, secret: str, max_tokens: int, completion_tokens: int):
    client = openai.OpenAI(base_url=c.node_url + "/v1", api_key=secret, max_retries=0)
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens,
                                          extra_headers={"x-mock-completion-tokens": str(completion_tokens)})


def test_quotas_and_usage_survive_a_redis_restart(cluster):
    c = cluster
    day = datetime.now(timezone.utc).date()
    prompt = chat_prompt_tokens(MESSAGES)
    assert "appendonly yes" in (c.run_dir / "redis/redis.conf").read_text()
    assert c.redis("CONFIG", "GET", "appendfsync").splitlines() == ["appendfsync", "everysec"]

    # Spend part of each quota: two requests answered in full, one refunded (300 reserved, 40 used).
    spent = {}
    for key_id, (secret, _, _) in KEYS.items():
        for max_tokens, completion in ((100, 100), (300, 40), (100, 100)):
            answer = chat(c, secret, max_tokens, completion)
            assert answer.usage.completion_tokens == completion
        spent[key_id] = 3 * prompt + 240
    # The refund rides with the key's next call or goes alone within milliseconds; the usage totals
    # are flushed by the node every second.
    for key_id, (_, _, field) in KEYS.items():
        assert wait_until(lambda: c.quota_fields(key_id)[field] == str(spent[key_id]), 5), (key_id, c.quota_fields(key_id))
        assert wait_until(lambda: usage_totals(c.usage(key_id)) == (3, 3 * prompt, 240), 5), c.usage(key_id)
    before = {key_id: (c.quota_fields(key_id), c.usage(key_id)) for key_id in KEYS}
    print("\nbefore the restart:", {k: v[0] for k, v in before.items()})

    # A clean stop (SIGTERM: Redis fsyncs the AOF and exits), then a start on the same config and data.
    pid = c.redis_pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2], 10), \
        "Redis did not exit on SIGTERM"
    log_before = (c.run_dir / "redis/redis.log").read_text()
    subprocess.run(["redis-server", str(c.run_dir / "redis/redis.conf"), "--daemonize", "yes"],
                   check=True, capture_output=True, timeout=10)
    assert wait_until(lambda: c.redis("ping") == "PONG", 10)
    log = (c.run_dir / "redis/redis.log").read_text()[len(log_before):]
    assert "DB loaded from append only file" in log, log[-2000:]

    # The quota fields and the usage records are as they were.
    for key_id in KEYS:
        assert c.quota_fields(key_id) == before[key_id][0], key_id
        assert c.usage(key_id) == before[key_id][1], key_id
    assert wait_until(lambda: c.limiter() == "redis", 15), f"the node did not return to Redis: {c.limiter()}"

    # The quotas decide from where they were: one token over what remains is denied, exactly what
    # remains is admitted, then nothing is left.
    for key_id, (secret, quota, field) in KEYS.items():
        [limit] = quota.values()
        remaining = limit - spent[key_id]
        assert remaining > prompt + 1
        with pytest.raises(openai.RateLimitError) as denied:
            chat(c, secret, remaining - prompt + 1, remaining - prompt + 1)
        assert denied.value.response.json()["error"]["code"] == "insufficient_quota", denied.value.response.text
        answer = chat(c, secret, remaining - prompt, remaining - prompt)
        assert answer.usage.completion_tokens == remaining - prompt
        with pytest.raises(openai.RateLimitError) as spent_out:
            chat(c, secret, 1, 1)
        assert spent_out.value.response.json()["error"]["code"] == "insufficient_quota"
        assert c.quota_fields(key_id)[field] == str(limit)
        assert wait_until(lambda: usage_totals(c.usage(key_id)) == (4, 4 * prompt, 240 + remaining - prompt), 5), \
            c.usage(key_id)

    if datetime.now(timezone.utc).date() != day:
        pytest.skip("the UTC day changed during the test: the quotas started a new period")

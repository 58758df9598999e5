"""Money (issue 16): what each request costs at the configured prices, seen from outside.

One node with a `pricing` section on a Redis of its own (for the usage records), driven with the
official openai SDK: the `x-sluice-cost-usd` header of a non-streamed answer, the access log's
`cost_usd` (streams too), `sluice usage` and `sluice_spend_usd_total`, each checked against the price
applied by hand to the tokens the access log says were charged. A model without a price costs
`unknown`, never 0.
"""
import re
import shutil
import subprocess
import time
from decimal import Decimal

import httpx
import openai
import pytest

from conftest import SLUICE_BIN, Gateway, free_port, gateway_config, sha256_hex, wait_for_port

SECRET = "sk-money-e2e-0123456789"
MESSAGES = [{"role": "user", "content": "What does a request cost?"}]
# $0.15 / $0.075 / $0.60 per million tokens: 150, 75 and 600 nano-dollars per token.
PRICING = {"models": {"gpt-4o-mini": {"input_per_mtok": 0.15, "cached_input_per_mtok": 0.075, "output_per_mtok": 0.6}}}


def usd(nanos: int) -> str:
    """Nano-dollars as Sluice writes them: a plain decimal without trailing zeros."""
    text = format(Decimal(nanos) / Decimal(10**9), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@pytest.fixture(scope="module")
def redis_port(tmp_module):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_module)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    yield port
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="module")
def gateway(tmp_module, mock, redis_port):
    keys = [{"id": "spender", "secret_sha256": sha256_hex(SECRET), "limits": {"requests_per_minute": 1000}, "metrics": True}]
    config = gateway_config(free_port(), mock.port, keys=keys, tiers={})
    config["pricing"] = PRICING
    config["redis"] = {"url": f"redis://127.0.0.1:{redis_port}"}
    g = Gateway(tmp_module, config)
    yield g
    g.stop()


def access_line(gateway, request_id: str, timeout: float = 5) -> dict:
    """The access-log fields of the request (written once it settled)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in gateway.log_text().splitlines():
            if f"request_id={request_id} " in line and line.rstrip().endswith("request"):
                return dict(re.findall(r"(\w+)=(\S+)", line))
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {request_id}:\n{gateway.log_text()[-2000:]}")


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=SECRET, max_retries=0)


def test_non_streamed_answer_carries_its_cost(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, extra_headers={"x-mock-completion-tokens": "7"})
    raw.parse()
    fields = access_line(gateway, raw.headers["x-request-id"])
    prompt, completion = int(fields["prompt_tokens"]), int(fields["completion_tokens"])
    assert completion == 7
    expected = usd(prompt * 150 + completion * 600)
    assert raw.headers["x-sluice-cost-usd"] == expected
    assert fields["cost_usd"] == expected


def test_streamed_answer_logs_its_cost(gateway):
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, stream=True,
        extra_headers={"x-mock-completion-tokens": "5", "x-request-id": "money-stream-1"})
    chunks = list(stream)
    assert chunks
    fields = access_line(gateway, "money-stream-1")
    prompt, completion = int(fields["prompt_tokens"]), int(fields["completion_tokens"])
    assert completion == 5
    assert fields["cost_usd"] == usd(prompt * 150 + completion * 600)


def test_model_without_a_price_costs_unknown(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    raw.parse()
    assert raw.headers["x-sluice-cost-usd"] == "unknown"
    assert access_line(gateway, raw.headers["x-request-id"])["cost_usd"] == "unknown"


def test_spend_adds_up_in_usage_and_metrics(gateway, tmp_module):
    c = client(gateway)
    ids = []
    for tokens in (3, 11, 2):
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, extra_headers={"x-mock-completion-tokens": str(tokens)})
        raw.parse()
        ids.append(raw.headers["x-request-id"])
    for request_id in ids:
        access_line(gateway, request_id)
    # Every gpt-4o-mini request of this module so far, from the access log: the exact sum.
    lines = [dict(re.findall(r"(\w+)=(\S+)", line)) for line in gateway.log_text().splitlines()
             if "route=/v1/chat/completions" in line and "model=gpt-4o-mini " in line and line.rstrip().endswith("request")]
    total = sum(int(f["prompt_tokens"]) * 150 + int(f["completion_tokens"]) * 600 for f in lines)
    assert all(f["cost_usd"] != "unknown" for f in lines)

    # The node flushes its usage every second.
    deadline = time.time() + 10
    while True:
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(gateway.config_path), "--key", "spender"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:] if line.strip()}
        if "gpt-4o-mini" in rows and int(rows["gpt-4o-mini"][1]) == len(lines) or time.time() > deadline:
            break
        time.sleep(0.3)
    assert int(rows["gpt-4o-mini"][1]) == len(lines), out.stdout
    assert rows["gpt-4o-mini"][4] == usd(total), out.stdout
    assert rows["gpt-4o"][4:] == ["0", "+", "1", "unknown"], out.stdout

    # The same, as JSON and CSV, over a range (--from/--to: today and the day before).
    import datetime
    import json
    today = datetime.datetime.now(datetime.timezone.utc).date()
    out = subprocess.run([SLUICE_BIN, "usage", "--config", str(gateway.config_path), "--from", str(today - datetime.timedelta(days=1)),
                          "--to", str(today), "--format", "json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["from"] == str(today - datetime.timedelta(days=1)) and report["to"] == str(today)
    [mini] = [r for r in report["rows"] if r["key"] == "spender" and r["model"] == "gpt-4o-mini"]
    assert mini["day"] == str(today)
    assert mini["requests"] == len(lines)
    assert Decimal(str(mini["cost_usd"])) == Decimal(usd(total))
    assert mini["unknown_cost_requests"] == 0
    [unpriced] = [r for r in report["rows"] if r["model"] == "gpt-4o"]
    assert unpriced["cost_usd"] == 0 and unpriced["unknown_cost_requests"] == 1
    assert report["total"]["requests"] == len(lines) + 1
    out = subprocess.run([SLUICE_BIN, "usage", "--config", str(gateway.config_path), "--key", "spender", "--format", "csv"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    csv_lines = out.stdout.splitlines()
    assert csv_lines[0] == "key,day,model,requests,prompt_tokens,completion_tokens,cost_usd,unknown_cost_requests,plan"
    assert f"spender,{today},gpt-4o-mini,{len(lines)}," in out.stdout
    bad = subprocess.run([SLUICE_BIN, "usage", "--config", str(gateway.config_path), "--from", str(today), "--to", str(today - datetime.timedelta(days=1))],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "is after --to" in bad.stderr

    metrics = gateway.metrics()
    [value] = re.findall(r'^sluice_spend_usd_total\{key="spender",model="gpt-4o-mini"\} (\S+)$', metrics, re.M)
    assert abs(float(value) - total / 1e9) < 1e-12
    assert re.search(r'^sluice_spend_unknown_requests_total\{key="spender",model="gpt-4o"\} 1$', metrics, re.M), metrics


BUDGET_SECRET = "sk-money-budget-0123456789"


@pytest.fixture(scope="module")
def budget_gateway(tmp_path_factory, mock):
    """One node, the embedded limiter, a key with a tiny daily budget."""
    tmp = tmp_path_factory.mktemp("money-budget")
    keys = [{"id": "frugal", "secret_sha256": sha256_hex(BUDGET_SECRET), "limits": {"usd_per_day": 0.0005}}]
    config = gateway_config(free_port(), mock.port, keys=keys, tiers={})
    config["pricing"] = PRICING
    g = Gateway(tmp, config)
    yield g
    g.stop()


def hammer_budget(gateways, prefix: str, secrets=(BUDGET_SECRET,)):
    """$0.0005 a day; each request reserves (prompt × 150 + 20 × 600) n$ and costs prompt × 150 + 12 × 600.
    64 requests, 16 at a time, spread over `gateways`: the admitted requests' costs (from the access
    logs) add up to at most the budget, and the refusals are OpenAI's insufficient_quota, not to be
    retried."""
    import concurrent.futures
    clients = [openai.OpenAI(base_url=g.base_url, api_key=secret, max_retries=0) for g in gateways for secret in secrets]

    def one(i):
        try:
            clients[i % len(clients)].chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=20,
                extra_headers={"x-mock-completion-tokens": "12", "x-request-id": f"{prefix}-{i}"})
            return "ok"
        except openai.RateLimitError as error:
            assert error.code == "insufficient_quota", error
            assert error.response.headers.get("x-should-retry") == "false"
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    admitted = [i for i, r in enumerate(results) if r == "ok"]
    assert admitted and "refused" in results, results
    spent = 0
    for i in admitted:
        fields = access_line(gateways[(i % len(clients)) // len(secrets)], f"{prefix}-{i}")
        assert fields["status"] == "200"
        spent += int(fields["prompt_tokens"]) * 150 + int(fields["completion_tokens"]) * 600
    assert spent <= 500_000, f"{len(admitted)} admitted requests spent {spent} n$ of a 500,000 n$ budget"
    # And it is used up: at the last refusal, what was spent and reserved left less than one reservation
    # (prompt ≤ 30 tokens here: at most 16,500 n$); the at most 16 requests then in flight each got back
    # at most the 8 output tokens they did not use (4,800 n$).
    assert spent > 500_000 - 16_500 - 16 * 4_800, spent
    return spent


def key_state(gateway, secret: str) -> dict:
    """GET /v1/sluice/key, authenticated by the key itself."""
    response = httpx.get(gateway.base_url + "/sluice/key", headers={"Authorization": f"Bearer {secret}"}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_requests_never_overspend_a_budget(budget_gateway):
    spent = hammer_budget([budget_gateway], "budget")
    # Read back through the key itself: every request settled, so what is used is what was spent.
    state = key_state(budget_gateway, BUDGET_SECRET)
    assert state["id"] == "frugal"
    assert state["limits"]["usd_per_day"] == 0.0005
    assert Decimal(str(state["used"]["usd_today"])) == Decimal(usd(spent))
    assert Decimal(str(state["remaining"]["usd_today"])) == Decimal(usd(500_000 - spent))
    assert state["team"] is None


def test_two_nodes_on_redis_share_one_budget(tmp_path_factory, mock, redis_port):
    """The same key on two nodes sharing a Redis: one budget between them, never passed."""
    keys = [{"id": "frugal-shared", "secret_sha256": sha256_hex(BUDGET_SECRET), "limits": {"usd_per_day": 0.0005}}]
    nodes = []
    try:
        for _ in range(2):
            config = gateway_config(free_port(), mock.port, keys=keys, tiers={})
            config["pricing"] = PRICING
            config["redis"] = {"url": f"redis://127.0.0.1:{redis_port}"}
            nodes.append(Gateway(tmp_path_factory.mktemp("money-node"), config))
        spent = hammer_budget(nodes, "shared")
        for node in nodes:
            state = key_state(node, BUDGET_SECRET)
            assert Decimal(str(state["used"]["usd_today"])) == Decimal(usd(spent)), state
            assert state["used"]["usd_this_month"] is None, "no monthly budget: nothing counts the month"
            models = httpx.get(node.base_url + "/models", headers={"Authorization": f"Bearer {BUDGET_SECRET}"}, timeout=5)
            assert models.headers["x-ratelimit-limit-usd-day"] == "0.0005", dict(models.headers)
            assert Decimal(models.headers["x-ratelimit-remaining-usd-day"]) == Decimal(usd(500_000 - spent)), dict(models.headers)
    finally:
        for node in nodes:
            node.stop()


TEAM_SECRETS = ("sk-money-team-a-0123456789", "sk-money-team-b-0123456789")


def test_a_teams_keys_share_its_budget(tmp_path_factory, mock):
    """Two keys of one team (the team's $0.0005 a day, the keys unlimited): one budget between them."""
    keys = [{"id": f"member-{n}", "secret_sha256": sha256_hex(secret), "team": "squad", "limits": {"requests_per_minute": 1000}}
            for n, secret in enumerate(TEAM_SECRETS)]
    config = gateway_config(free_port(), mock.port, keys=keys, tiers={})
    config["pricing"] = PRICING
    config["teams"] = {"squad": {"usd_per_day": 0.0005}}
    node = Gateway(tmp_path_factory.mktemp("money-team"), config)
    try:
        spent = hammer_budget([node], "team", secrets=TEAM_SECRETS)
        state = key_state(node, TEAM_SECRETS[1])
        assert state["id"] == "member-1"
        assert state["team"]["id"] == "squad"
        assert Decimal(str(state["team"]["used"]["usd_today"])) == Decimal(usd(spent)), state
        assert state["used"]["usd_today"] is None, "the keys have no budget of their own: the team was charged"
    finally:
        node.stop()


def test_four_nodes_share_one_budget(tmp_path_factory):
    """scripts/cluster's four nodes on one Redis (as test_cluster.py starts them), one key with a
    $0.0005 daily budget, 16 clients over the four nodes: never more than the budget in all; read back
    through every node (GET /v1/sluice/key) and `sluice usage --format json`."""
    import json
    import types
    import test_cluster as tc
    if not all(tc.REQUIRED.values()):
        pytest.skip("missing: " + ", ".join(k for k, v in tc.REQUIRED.items() if not v))
    keys = [{"id": "frugal-4", "secret_sha256": sha256_hex(BUDGET_SECRET), "limits": {"usd_per_day": 0.0005}}]
    original = tc.cluster_config

    def with_pricing(*args, **kwargs):
        config = original(*args, **kwargs)
        config["pricing"] = PRICING
        return config

    tc.cluster_config = with_pricing
    cluster_run = tc.start_cluster(tmp_path_factory.mktemp("money-cluster"), keys)
    try:
        cluster = next(cluster_run)
        nodes = [types.SimpleNamespace(
                    base_url=f"http://127.0.0.1:{port}/v1",
                    log_text=(lambda k=k: (cluster.run_dir / f"node-{k}/sluice.log").read_text(errors="replace")))
                 for k, port in enumerate(cluster.node_ports, start=1)]
        spent = hammer_budget(nodes, "four")
        for node in nodes:
            state = key_state(node, BUDGET_SECRET)
            assert Decimal(str(state["used"]["usd_today"])) == Decimal(usd(spent)), state
        deadline = time.time() + 10
        while True:
            out = subprocess.run([SLUICE_BIN, "usage", "--config", str(cluster.run_dir / "node-1/sluice.json"),
                                  "--key", "frugal-4", "--format", "json"], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            report = json.loads(out.stdout)
            if Decimal(str(report["total"]["cost_usd"])) == Decimal(usd(spent)) or time.time() > deadline:
                break
            time.sleep(0.5)
        assert Decimal(str(report["total"]["cost_usd"])) == Decimal(usd(spent)), report
    finally:
        tc.cluster_config = original
        cluster_run.close()


def usage_total(config_path, *selector, expected: Decimal, timeout: float = 10) -> dict:
    """`sluice usage … --format json`, polled until its total cost is `expected` (the nodes flush their
    usage every second) or `timeout` passes."""
    import json
    deadline = time.time() + timeout
    while True:
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(config_path), *selector, "--format", "json"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        if Decimal(str(report["total"]["cost_usd"])) == expected or time.time() > deadline:
            return report
        time.sleep(0.3)


def test_a_teams_keys_on_two_nodes_sharing_redis_share_its_budget(tmp_path_factory, mock, redis_port):
    """Two keys of one team ($0.0005 a day; the keys' own limits far away), each used on two nodes
    sharing a Redis: the team's budget between all four, never passed; the refusal names the team;
    every node reads the team's spend back (GET /v1/sluice/key), and so does `sluice usage --team`."""
    keys = [{"id": f"redis-member-{n}", "secret_sha256": sha256_hex(secret), "team": "squad-redis", "limits": {"requests_per_minute": 1000}}
            for n, secret in enumerate(TEAM_SECRETS)]
    nodes = []
    try:
        for _ in range(2):
            config = gateway_config(free_port(), mock.port, keys=keys, tiers={})
            config["pricing"] = PRICING
            config["teams"] = {"squad-redis": {"usd_per_day": 0.0005}}
            config["redis"] = {"url": f"redis://127.0.0.1:{redis_port}"}
            nodes.append(Gateway(tmp_path_factory.mktemp("money-team-node"), config))
        spent = hammer_budget(nodes, "team-redis", secrets=TEAM_SECRETS)
        for node in nodes:
            for n, secret in enumerate(TEAM_SECRETS):
                state = key_state(node, secret)
                assert state["id"] == f"redis-member-{n}"
                assert state["team"]["id"] == "squad-redis"
                assert state["team"]["limits"]["usd_per_day"] == 0.0005
                assert Decimal(str(state["team"]["used"]["usd_today"])) == Decimal(usd(spent)), state
                assert Decimal(str(state["team"]["remaining"]["usd_today"])) == Decimal(usd(500_000 - spent)), state
                assert state["used"]["usd_today"] is None, "the keys have no budget of their own"
                # Answers that skip admission carry the team's budget headers too (before, with the Redis
                # limiter, GET /v1/models and GET /v1/sluice/key had none: its snapshot reads only buckets).
                for path in ("/models", "/sluice/key"):
                    answer = httpx.get(node.base_url + path, headers={"Authorization": f"Bearer {secret}"}, timeout=5)
                    assert answer.status_code == 200, answer.text
                    assert answer.headers["x-ratelimit-limit-team-usd-day"] == "0.0005", dict(answer.headers)
                    assert Decimal(answer.headers["x-ratelimit-remaining-team-usd-day"]) == Decimal(usd(500_000 - spent)), dict(answer.headers)
                    assert "x-ratelimit-limit-usd-day" not in answer.headers, "the key has no budget of its own"
        # A request that reserves more than the team's whole budget ($0.0006 of output): refused by the
        # team's budget, and the message says so.
        with pytest.raises(openai.RateLimitError) as refused:
            openai.OpenAI(base_url=nodes[1].base_url, api_key=TEAM_SECRETS[0], max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=1000)
        assert refused.value.code == "insufficient_quota"
        assert "of team squad-redis" in refused.value.message, refused.value.message
        headers = refused.value.response.headers
        assert headers["x-ratelimit-limit-team-usd-day"] == "0.0005", dict(headers)
        # As of the last limiter call that decided for this key on this node: a refusal repeated from
        # the node's short denial memory carries that call's values (the team's other keys and nodes
        # may have spent more since, or refunds come back), so only its range is certain here.
        assert 0 <= Decimal(headers["x-ratelimit-remaining-team-usd-day"]) < Decimal("0.0005"), dict(headers)
        assert headers["x-ratelimit-reset-team-usd-day"].endswith("s"), dict(headers)
        assert "x-ratelimit-limit-usd-day" not in headers, "the key has no budget of its own"
        report = usage_total(nodes[0].config_path, "--team", "squad-redis", expected=Decimal(usd(spent)))
        assert Decimal(str(report["total"]["cost_usd"])) == Decimal(usd(spent)), report
        assert {row["key"] for row in report["rows"]} == {"redis-member-0", "redis-member-1"}, report
    finally:
        for node in nodes:
            node.stop()


def test_four_nodes_share_one_team_budget(tmp_path_factory):
    """scripts/cluster's four nodes on one Redis, two keys of a team with a $0.0005 daily budget, 16
    clients over the four nodes and both keys: never more than the team's budget in all; read back
    through every node and `sluice usage --team … --format json`."""
    import types
    import test_cluster as tc
    if not all(tc.REQUIRED.values()):
        pytest.skip("missing: " + ", ".join(k for k, v in tc.REQUIRED.items() if not v))
    keys = [{"id": f"four-member-{n}", "secret_sha256": sha256_hex(secret), "team": "squad-4", "limits": {"requests_per_minute": 1000}}
            for n, secret in enumerate(TEAM_SECRETS)]
    original = tc.cluster_config

    def with_team(*args, **kwargs):
        config = original(*args, **kwargs)
        config["pricing"] = PRICING
        config["teams"] = {"squad-4": {"usd_per_day": 0.0005}}
        return config

    tc.cluster_config = with_team
    cluster_run = tc.start_cluster(tmp_path_factory.mktemp("money-team-cluster"), keys)
    try:
        cluster = next(cluster_run)
        nodes = [types.SimpleNamespace(
                    base_url=f"http://127.0.0.1:{port}/v1",
                    log_text=(lambda k=k: (cluster.run_dir / f"node-{k}/sluice.log").read_text(errors="replace")))
                 for k, port in enumerate(cluster.node_ports, start=1)]
        spent = hammer_budget(nodes, "four-team", secrets=TEAM_SECRETS)
        for node in nodes:
            state = key_state(node, TEAM_SECRETS[0])
            assert Decimal(str(state["team"]["used"]["usd_today"])) == Decimal(usd(spent)), state
        report = usage_total(cluster.run_dir / "node-1/sluice.json", "--team", "squad-4", expected=Decimal(usd(spent)))
        assert Decimal(str(report["total"]["cost_usd"])) == Decimal(usd(spent)), report
    finally:
        tc.cluster_config = original
        cluster_run.close()


CREW_SECRETS = ("sk-money-crew-a-0123456789", "sk-money-crew-b-0123456789")
# $1 per million tokens (1,000 n$ a token) until the 40th token of the month, $0.5 (500 n$) from it on.
TIERED_PRICING = {
    "models": {"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1,
                               "volume_tiers": [{"after_tokens": 40, "input_per_mtok": 0.5, "output_per_mtok": 0.5}]}},
    "plans": {"starter": {"monthly_fee": 20, "included_tokens": 0}},
}


def tiered_cost(start: int, tokens: int) -> int:
    return sum(1_000 if position < 40 else 500 for position in range(start, start + tokens))


def test_a_teams_keys_reach_a_volume_tier_together_and_usage_lists_plan_fees(tmp_path_factory, mock, redis_port):
    """Two keys of team `crew` on one node sharing Redis: the month whose volume earns the price break is
    the team's, so crew-b's first request is priced after crew-a's tokens — at the tier-2 price. Then
    `sluice usage --team crew` lists crew-a's plan fee ($20) for each calendar month of the range
    (this one and the one before), and totals with and without it."""
    import datetime
    import json
    keys = [{"id": "crew-a", "secret_sha256": sha256_hex(CREW_SECRETS[0]), "team": "crew", "plan": "starter",
             "limits": {"requests_per_minute": 1000}},
            {"id": "crew-b", "secret_sha256": sha256_hex(CREW_SECRETS[1]), "team": "crew", "limits": {"requests_per_minute": 1000}}]
    config = gateway_config(free_port(), mock.port, keys=keys, tiers={})
    config["pricing"] = TIERED_PRICING
    config["teams"] = {"crew": {"requests_per_minute": 1000}}
    config["redis"] = {"url": f"redis://127.0.0.1:{redis_port}"}
    node = Gateway(tmp_path_factory.mktemp("money-crew"), config)
    try:
        spent = 0
        costs = []
        position = 0
        for n, secret in enumerate(CREW_SECRETS):
            raw = openai.OpenAI(base_url=node.base_url, api_key=secret, max_retries=0).chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=40, extra_headers={"x-mock-completion-tokens": "30"})
            raw.parse()
            fields = access_line(node, raw.headers["x-request-id"])
            tokens = int(fields["prompt_tokens"]) + int(fields["completion_tokens"])
            if n == 0:
                assert tokens >= 40, "crew-a's request alone reaches the tier"
            expected = tiered_cost(position, tokens)
            assert raw.headers["x-sluice-cost-usd"] == usd(expected), (n, position, tokens, dict(raw.headers))
            costs.append(expected)
            position += tokens
            spent += expected
        assert costs[1] == 500 * tokens, "every token of crew-b's request at the tier-2 price"
        # crew-b's own month was empty: priced from 0 (the key's month) its tokens would have cost more.
        assert costs[1] < tiered_cost(0, tokens)

        today = datetime.datetime.now(datetime.timezone.utc).date()
        last_month_day = today.replace(day=1) - datetime.timedelta(days=1)
        months = [last_month_day.strftime("%Y-%m"), today.strftime("%Y-%m")]
        report = usage_total(node.config_path, "--team", "crew", "--from", str(last_month_day), "--to", str(today),
                             expected=Decimal(usd(spent)))
        assert Decimal(str(report["total"]["cost_usd"])) == Decimal(usd(spent)), report
        assert report["fees"] == [{"key": "crew-a", "month": month, "plan": "starter", "fee_usd": 20} for month in months], report
        assert report["total"]["fees_usd"] == 40
        assert Decimal(str(report["total"]["cost_with_fees_usd"])) == Decimal(usd(spent)) + 40, report
        # One day of this month: one month's fee.
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(node.config_path), "--key", "crew-a", "--format", "json"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["fees"] == [{"key": "crew-a", "month": months[1], "plan": "starter", "fee_usd": 20}]
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(node.config_path), "--key", "crew-b", "--format", "json"],
                             capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout)["fees"] == [] and json.loads(out.stdout)["total"]["fees_usd"] == 0, "crew-b has no plan"
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(node.config_path), "--team", "crew", "--from", str(last_month_day),
                              "--to", str(today), "--format", "csv"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "key,day,model,requests,prompt_tokens,completion_tokens,cost_usd,unknown_cost_requests,plan"
        assert lines[-2:] == [f"crew-a,{month},,0,0,0,20,0,starter" for month in months], lines
        assert sum(Decimal(line.split(",")[6]) for line in lines[1:]) == Decimal(usd(spent)) + 40
        out = subprocess.run([SLUICE_BIN, "usage", "--config", str(node.config_path), "--team", "crew", "--from", str(last_month_day),
                              "--to", str(today)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "request costs without plan fees" in out.stdout.splitlines()[0], out.stdout
        assert f"total with plan fees: {usd(spent + 40 * 10**9)} USD" in out.stdout, out.stdout
    finally:
        node.stop()

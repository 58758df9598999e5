"""Upstreams as a pool, end to end (issue 15): the official openai SDK → sluice serve → several
sluice-mock deployments. A model listed on a dead upstream and a healthy one keeps answering; a
provider's 503 or 429 is retried on the other deployment before anything reaches the client; fallback
models take over when a model's deployments are exhausted or its context window is too small; an
Azure-style deployment gets its own model name, key header and query."""
import json
import re
import socket
import time

import openai
import pytest

from conftest import Gateway, Mock, free_port, sha256_hex, TOKENIZER_DIR

KEY = "sk-e2e-pools-0123456789"


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def mock_in(tmp, name, *flags):
    directory = tmp / name
    directory.mkdir(exist_ok=True)
    return Mock(directory, *flags)


def upstream(name, base_url, models, **fields):
    return {"name": name, "base_url": base_url, "models": models, "connect_timeout_ms": 1000,
            "first_byte_timeout_ms": 5000, "stall_timeout_ms": 5000, "request_timeout_ms": 30000, **fields}


def config(upstreams, routing=None):
    c = {
        "server": {"host": "127.0.0.1", "port": free_port(), "admin_port": free_port()},
        "tokenizer": {"directory": TOKENIZER_DIR},
        "upstreams": upstreams,
        "tiers": {},
        "keys": [{"id": "pools", "secret_sha256": sha256_hex(KEY),
                  "limits": {"requests_per_minute": 100000, "tokens_per_minute": 100000000}}],
    }
    if routing is not None:
        c["routing"] = routing
    return c


def client(gateway):
    return openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def mocks(tmp_module):
    started = {
        "a": mock_in(tmp_module, "pool-a"),
        "b": mock_in(tmp_module, "pool-b"),
        "overloaded": mock_in(tmp_module, "pool-503", "--status", "503"),
        "limited": mock_in(tmp_module, "pool-429", "--status", "429", "--retry-after", "30"),
        "small": mock_in(tmp_module, "pool-ctx", "--context-window", "40"),
    }
    yield started
    for m in started.values():
        m.stop()


def solo_count(statuses, status):
    return sum(1 for model, s in statuses if model == "solo" and s == status)


def served(m, since=0):
    """The mock's requests after the first `since`, once its log stopped growing: the mock writes
    its log off its event loops, so its last lines may follow the answers by a moment."""
    deadline, last, stable_since = time.time() + 3, -1, time.time()
    while time.time() < deadline:
        count = len(m.requests())
        if count != last:
            last, stable_since = count, time.time()
        elif time.time() - stable_since >= 0.25:
            break
        time.sleep(0.05)
    return m.requests()[since:]


def test_a_dead_deployment_does_not_take_its_model_down(tmp_path, mocks):
    """The issue's case: the model on a dead upstream (first, as the old first-match routing picked
    it) and a healthy one. Every request succeeds; the dead one's circuit opens."""
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    g = Gateway(tmp_path, config([
        upstream("dead", dead, ["gpt-4o-mini"], circuit_breaker={"failure_threshold": 3, "open_ms": 60000}),
        upstream("live", mocks["a"].base_url, ["gpt-4o-mini"]),
    ]))
    try:
        before = len(served(mocks["a"]))
        attempts = []
        for _ in range(30):
            raw = client(g).chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert raw.http_response.status_code == 200
            attempts.append(int(raw.headers["x-sluice-attempts"]))
        assert len(served(mocks["a"], before)) == 30, "every request was answered by the live deployment"
        assert max(attempts) >= 2, f"some request was retried after the dead deployment refused: {attempts}"
        text = g.metrics()
        assert metric(text, "sluice_upstream_retries_total", upstream="dead", reason="connect_failed") >= 1, text
        assert metric(text, "sluice_upstream_circuit_open", upstream="dead") == 1
        # Once its circuit is open the dead deployment costs nothing: the last requests went straight.
        assert attempts[-5:] == [1] * 5, attempts
    finally:
        g.stop()


def test_a_providers_503_is_retried_on_the_other_deployment_unseen(tmp_path, mocks):
    g = Gateway(tmp_path, config([
        upstream("overloaded", mocks["overloaded"].base_url, ["gpt-4o-mini"]),
        upstream("live", mocks["b"].base_url, ["gpt-4o-mini"]),
    ], routing={"max_attempts": 2}))
    try:
        before_live, before_overloaded = len(served(mocks["b"])), len(served(mocks["overloaded"]))
        for _ in range(20):
            raw = client(g).chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            assert raw.http_response.status_code == 200
        assert len(served(mocks["b"], before_live)) == 20
        retried = len(served(mocks["overloaded"], before_overloaded))
        assert retried >= 1, "the overloaded deployment was asked at least once (weights are equal)"
        text = g.metrics()
        assert metric(text, "sluice_upstream_retries_total", upstream="overloaded", reason="http_5xx") == retried
        # Every 503 was held back: the client saw none.
        assert metric(text, "sluice_requests_total", status="503") == 0
    finally:
        g.stop()


def test_a_providers_429_moves_traffic_to_the_other_deployment(tmp_path, mocks):
    g = Gateway(tmp_path, config([
        upstream("limited", mocks["limited"].base_url, ["gpt-4o-mini"], weight=1000),
        upstream("spare", mocks["b"].base_url, ["gpt-4o-mini"]),
    ]))
    try:
        before_limited, before_spare = len(served(mocks["limited"])), len(served(mocks["b"]))
        for _ in range(10):
            answer = client(g).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            assert answer.choices[0].message.content
        # The preferred deployment answered 429 (retry-after 30) once; the request went on to the
        # spare, and so did every request after it while the limited one cools down.
        assert len(served(mocks["limited"], before_limited)) == 1
        assert len(served(mocks["b"], before_spare)) == 10
    finally:
        g.stop()


def test_a_stream_is_never_retried_after_its_first_byte(tmp_path, mocks):
    g = Gateway(tmp_path, config([
        upstream("first", mocks["a"].base_url, ["gpt-4o-mini"]),
        upstream("second", mocks["b"].base_url, ["gpt-4o-mini"]),
    ]))
    try:
        before = len(served(mocks["a"])) + len(served(mocks["b"]))
        raw = client(g).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20, stream=True,
            extra_headers={"x-mock-drop-after": "3", "x-mock-completion-tokens": "20"})
        assert raw.headers["x-sluice-attempts"] == "1"
        received = []
        with pytest.raises(openai.APIError):
            for chunk in raw.parse():
                received.extend(choice.delta.content for choice in chunk.choices if choice.delta.content)
        assert len(received) == 3, f"the three tokens sent before the upstream dropped reached the client: {received}"
        time.sleep(0.3)
        assert len(served(mocks["a"])) + len(served(mocks["b"])) - before == 1, "the cut stream was not sent again"
    finally:
        g.stop()


def test_every_deployment_at_its_provider_limit_gives_429_with_the_wait(tmp_path, mocks):
    """A provider 429 with retry-after makes its deployment cool down; while every deployment of the
    model cools down, Sluice answers 429 itself without asking, with the wait until the first is free."""
    g = Gateway(tmp_path, config([upstream("limited", mocks["limited"].base_url, ["gpt-4o-mini"])]))
    try:
        before = len(served(mocks["limited"]))
        with pytest.raises(openai.RateLimitError) as first:
            client(g).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert "injected HTTP 429" in str(first.value), "the provider's own answer came through"
        with pytest.raises(openai.RateLimitError) as second:
            client(g).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert "every deployment" in str(second.value)
        retry_after = float(second.value.response.headers["retry-after"])
        assert 20 <= retry_after <= 30, retry_after
        assert len(served(mocks["limited"], before)) == 1, "the cooling deployment was not asked again"
    finally:
        g.stop()


def test_fallback_models_take_over(tmp_path, mocks):
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    g = Gateway(tmp_path, config([
        upstream("dead", dead, ["big"]),
        upstream("small-window", mocks["small"].base_url, ["small-ctx"]),
        upstream("live", mocks["a"].base_url, ["gpt-4o-mini", "gpt-4o"]),
    ], routing={"max_attempts": 2, "backoff_initial_ms": 10, "backoff_max_ms": 20,
                "fallbacks": {"big": ["gpt-4o-mini"]}, "context_window_fallbacks": {"small-ctx": ["gpt-4o"]}}))
    try:
        before = len(served(mocks["a"]))
        raw = client(g).chat.completions.with_raw_response.create(
            model="big", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert raw.http_response.status_code == 200
        assert raw.parse().model == "gpt-4o-mini"
        assert [r["model"] for r in served(mocks["a"], before)] == ["gpt-4o-mini"]
        # A short prompt fits the small window; a long one is sent on to the larger model.
        short = client(g).chat.completions.create(model="small-ctx", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert short.model == "small-ctx"
        long_prompt = "lorem ipsum dolor sit amet " * 20
        answered = client(g).chat.completions.create(model="small-ctx", messages=[{"role": "user", "content": long_prompt}], max_tokens=3)
        assert answered.model == "gpt-4o"
        statuses = [r["status"] for r in served(mocks["small"])]
        assert statuses[-2:] == [200, 400], statuses
        text = g.metrics()
        assert metric(text, "sluice_model_fallbacks_total", model="big", fallback="gpt-4o-mini", reason="exhausted") == 1
        assert metric(text, "sluice_model_fallbacks_total", model="small-ctx", fallback="gpt-4o", reason="context_window") == 1
        log = g.log_text()
        assert re.search(r"fallback_model=gpt-4o\b", log) or '"fallback_model":"gpt-4o"' in log, log[-3000:]
    finally:
        g.stop()


def test_an_azure_style_deployment_gets_its_model_name_key_header_and_query(tmp_path, mocks):
    g = Gateway(tmp_path, config([
        upstream("azure", mocks["b"].base_url.removesuffix("/v1") + "/openai/deployments/prod", ["gpt-4o"],
                 api_key_env="SLUICE_E2E_AZURE_KEY", api_key_header="api-key",
                 query_params={"api-version": "2024-10-21"}, model_map={"gpt-4o": "prod-4o"}),
    ]), env_extra={"SLUICE_E2E_AZURE_KEY": "azure-e2e-secret"})
    try:
        before = len(served(mocks["b"]))
        answer = client(g).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert answer.choices[0].message.content
        seen = served(mocks["b"], before)
        assert len(seen) == 1
        request = seen[0]
        assert request["model"] == "prod-4o"
        assert request["api_key"] is True and request["authorization"] is False
        assert request["query"] == "api-version=2024-10-21"
        assert request["path"] == "/openai/deployments/prod/chat/completions"
        assert "azure-e2e-secret" not in g.log_text()
    finally:
        g.stop()


def test_a_providers_limits_hold_across_nodes(tmp_path, mocks):
    """`upstreams[].limits` in the shared store: four nodes on one Redis never send a deployment more
    than its limit (burst + rate × elapsed), pass the rest to the model's other deployment, and answer
    429 with the wait when every deployment of a model is at its limit."""
    import subprocess
    import threading
    from conftest import wait_for_port
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = []
    try:
        wait_for_port(redis_port, redis)
        rate, burst = 60, 5
        shared = config([
            # Preferred by weight, limited: 60/min with a burst of 5 for the whole fleet.
            upstream("tier1", mocks["a"].base_url, ["gpt-4o-mini", "solo"], weight=1000,
                     limits={"requests_per_minute": rate, "requests_burst": burst}),
            upstream("spare", mocks["b"].base_url, ["gpt-4o-mini"]),
        ])
        shared["redis"] = {"url": f"redis://127.0.0.1:{redis_port}"}
        for i in range(4):
            node_config = json.loads(json.dumps(shared))
            node_config["server"] = {"host": "127.0.0.1", "port": free_port(), "admin_port": free_port()}
            directory = tmp_path / f"node{i}"
            directory.mkdir()
            nodes.append(Gateway(directory, node_config))
        before_a, before_b = len(served(mocks["a"])), len(served(mocks["b"]))
        statuses, lock = [], threading.Lock()
        started = time.time()
        seconds = 8.0

        def worker(n, model):
            c = openai.OpenAI(base_url=nodes[n % len(nodes)].base_url, api_key=KEY, max_retries=0)
            while time.time() - started < seconds:
                try:
                    c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
                    status = 200
                except openai.RateLimitError as e:
                    status = 429
                    assert "every deployment" in str(e), str(e)
                    assert float(e.response.headers["retry-after"]) > 0
                with lock:
                    statuses.append((model, status))

        threads = [threading.Thread(target=worker, args=(i, "gpt-4o-mini" if i < 6 else "solo")) for i in range(9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        to_a = [r for r in served(mocks["a"], before_a)]
        to_b = served(mocks["b"], before_b)
        bound = burst + rate * elapsed / 60 + 1
        print(f"tier1 received {len(to_a)} (bound {bound:.1f}) in {elapsed:.1f} s; spare {len(to_b)}; "
              f"solo answered {solo_count(statuses, 200)}, refused {solo_count(statuses, 429)}")
        assert len(to_a) <= bound, f"tier1 received {len(to_a)} in {elapsed:.1f} s, its limit allows {bound:.1f}"
        assert len(to_a) >= burst, "the limited deployment was used up to its limit"
        mini = [s for m, s in statuses if m == "gpt-4o-mini"]
        solo = [s for m, s in statuses if m == "solo"]
        assert mini and all(s == 200 for s in mini), "gpt-4o-mini always had the spare deployment"
        assert len(to_b) == len(mini) - len([r for r in to_a if r["model"] == "gpt-4o-mini"])
        assert 429 in solo, "solo's only deployment reached its limit: Sluice answered 429 itself"
        assert solo.count(200) == len([r for r in to_a if r["model"] == "solo"])
    finally:
        for g in nodes:
            g.stop()
        redis.kill()
        redis.wait()


def test_a_stored_response_is_found_on_whichever_deployment_holds_it(tmp_path):
    """GET/DELETE /v1/responses/{id} with a model on two deployments: the response lives on the one
    that answered its POST (possibly chosen by another node); Sluice asks the deployments in turn and
    relays the one that holds it, and a 404 only when none does. Before, the first deployment alone
    was asked, and half the ids were "not found"."""
    first = mock_in(tmp_path, "store-a", "--store-responses")
    second = mock_in(tmp_path, "store-b", "--store-responses")
    g = Gateway(tmp_path, config([
        upstream("store-a", first.base_url, ["gpt-4o-mini"]),
        upstream("store-b", second.base_url, ["gpt-4o-mini"]),
    ]))
    try:
        c = client(g)
        created = []
        for _ in range(12):
            response = c.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=3)
            created.append(response.id)
        assert len(set(created)) == len(created)
        posts = lambda m: [r for r in served(m) if r["method"] == "POST"]
        # Both deployments hold some (least in flight, ties drawn at random), so both must be searched.
        assert posts(first) and posts(second), "both deployments stored some of the responses"
        # The SDK's own retrieval finds every one of them, wherever it is stored.
        for response_id in created:
            assert c.responses.retrieve(response_id).id == response_id
        # The first deployment was asked for all of them and answered 404 for those it does not hold.
        misses = [r for r in served(first) if r["method"] == "GET" and r.get("status") == 404]
        assert len(misses) == len(posts(second)), (len(misses), len(posts(second)))
        # Deleted on the deployment that holds it; then neither has it: the SDK's NotFoundError.
        deleted = c.responses.delete(created[0])
        assert deleted is None or getattr(deleted, "deleted", True)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(created[0])
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve("resp_nobody_has_this")
    finally:
        g.stop()
        first.stop()
        second.stop()

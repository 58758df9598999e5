"""The gateway end to end: the official openai SDK → sluice serve → sluice-mock, over real sockets."""
import asyncio
import json
import socket
import time

import httpx
import openai
import pytest

from conftest import Gateway, free_port, gateway_config, read_until_closed, sha256_hex

DEMO = "sk-e2e-demo-0123456789"
RETRY = "sk-e2e-retry-0123456789"
TIGHT = "sk-e2e-tight-0123456789"
MINI_ONLY = "sk-e2e-mini-only-0123456789"
CHARGE = "sk-e2e-charge-0123456789"
PAIR = "sk-e2e-pair-0123456789"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello to the tests."}]
# The gateway's curl engine threads, pinned: each has its own keep-alive pool and requests take the
# threads in turn, so sequential requests use at most one upstream connection per thread. The default
# (half the cores) would make that bound, checked by test_upstream_connections_are_pooled, depend on
# the machine the tests run on.
UPSTREAM_THREADS = 4


@pytest.fixture(scope="module")
def gateway(tmp_module, mock):
    tiers = {
        "unlimited": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000},
        "one-per-second": {"requests_per_minute": 60, "requests_burst": 1, "tokens_per_minute": 1_000_000},
        "tight-tokens": {"requests_per_minute": 1000, "tokens_per_minute": 600},
        "two-at-a-time": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000, "max_concurrent_requests": 2},
    }
    keys = [
        {"id": "demo", "secret_sha256": sha256_hex(DEMO), "tier": "unlimited"},
        {"id": "retry", "secret_sha256": sha256_hex(RETRY), "tier": "one-per-second"},
        {"id": "tight", "secret_sha256": sha256_hex(TIGHT), "tier": "tight-tokens", "default_output_tokens": 50},
        {"id": "mini-only", "secret_sha256": sha256_hex(MINI_ONLY), "tier": "unlimited", "models": ["gpt-4o-mini"]},
        {"id": "charge", "secret_sha256": sha256_hex(CHARGE), "tier": "unlimited"},
        {"id": "pair", "secret_sha256": sha256_hex(PAIR), "tier": "two-at-a-time"},
    ]
    config = gateway_config(free_port(), mock.port, keys, tiers,
                            server={"max_body_bytes": 1_048_576, "body_timeout_ms": 1500, "upstream_threads": UPSTREAM_THREADS})
    g = Gateway(tmp_module, config)
    yield g
    g.stop()


def client(gateway, key=DEMO, **kw):
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, **kw)


# ---------------------------------------------------------------- happy paths

def test_chat_non_stream_sync(gateway, mock):
    raw = client(gateway).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 16
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["x-ratelimit-limit-requests"]) == 1_000_000
    assert int(raw.headers["x-ratelimit-remaining-requests"]) < 1_000_000
    assert raw.headers["x-ratelimit-reset-tokens"].endswith("s")
    # The upstream saw the request id Sluice assigned.
    assert len(upstream_records(mock, raw.headers["x-request-id"])) == 1


def test_chat_non_stream_async(gateway):
    async def run():
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=DEMO, max_retries=0) as c:
            results = await asyncio.gather(*[
                c.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5) for _ in range(8)
            ])
        return results
    results = asyncio.run(run())
    assert all(r.usage.completion_tokens == 5 for r in results)


def test_stream_without_include_usage_hides_the_usage_chunk(gateway, mock):
    chunks = list(client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 16
    assert all(c.usage is None for c in chunks), "Sluice added include_usage itself, so the client must not see it"
    assert all(c.choices for c in chunks)
    # ...but upstream it was asked for, so the usage was known to Sluice.
    assert mock.requests()[-1]["include_usage"] is True


def test_stream_with_include_usage_passes_the_usage_chunk(gateway):
    chunks = list(client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, max_tokens=7))
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].usage.completion_tokens == 7
    assert usage_chunks[0].choices == []


def test_completions_and_embeddings(gateway):
    c = client(gateway)
    completion = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=3)
    assert completion.choices[0].text
    embedding = c.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert len(embedding.data) == 2


def test_models_lists_what_the_key_may_use(gateway):
    all_models = {m.id for m in client(gateway).models.list()}
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= all_models
    assert "gpt-4.1*" not in all_models  # prefixes are rules, not model names
    assert {m.id for m in client(gateway, MINI_ONLY).models.list()} == {"gpt-4o-mini"}


# ---------------------------------------------------------------- refusals

def test_missing_and_wrong_key_are_401(gateway):
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(gateway, "sk-not-a-real-key-123456").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert wrong.value.status_code == 401
    assert wrong.value.code == "invalid_api_key"
    assert "sk-not-a-real-key-123456" not in wrong.value.message, "never echo a secret"
    r = httpx.post(gateway.base_url + "/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_and_forbidden_model_are_404(gateway):
    with pytest.raises(openai.NotFoundError) as unknown:
        client(gateway).chat.completions.create(model="gpt-9-imaginary", messages=MESSAGES)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as forbidden:
        client(gateway, MINI_ONLY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert forbidden.value.code == "model_not_found"


def test_unknown_route_is_404_in_the_openai_envelope(gateway):
    r = httpx.get(gateway.root_url + "/v1/nothing-here", headers={"authorization": f"Bearer {DEMO}"})
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_429_then_a_retry_that_honours_retry_after_ms(gateway, mock):
    c = client(gateway, RETRY)
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as denied:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    headers = denied.value.response.headers
    wait_ms = float(headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    assert int(headers["retry-after"]) == 1
    body = denied.value.response.json()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
    assert "requests per min (RPM)" in body["message"]

    # The SDK's own retry: it reads retry-after-ms and waits that long, then succeeds.
    time.sleep(1.05)
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    start = time.monotonic()
    upstream_before = len(mock.requests())
    retrying = client(gateway, RETRY, max_retries=2)
    completion = retrying.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    elapsed = time.monotonic() - start
    assert completion.usage.completion_tokens == 1
    assert 0.5 <= elapsed < 5, f"the retry should wait about the advertised time, took {elapsed:.2f}s"
    assert len(mock.requests()) == upstream_before + 1, "the denied attempt never reached the upstream"


def test_request_bigger_than_the_bucket_is_never_retried(gateway):
    with pytest.raises(openai.RateLimitError) as denied:
        client(gateway, TIGHT).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5000)
    assert denied.value.response.headers["x-should-retry"] == "false"
    assert "Request too large" in denied.value.response.json()["error"]["message"]


# ---------------------------------------------------------------- bad input

def post_raw(gateway, body: bytes, headers=None):
    h = {"authorization": f"Bearer {DEMO}", "content-type": "application/json"}
    h.update(headers or {})
    return httpx.post(gateway.base_url + "/chat/completions", content=body, headers=h)


@pytest.mark.parametrize("body,param", [
    (b'{"model": "gpt-4o-mini", "messages": [', None),
    (b'{"model": "gpt-4o-mini"}', "messages"),
    (b'{"model": "gpt-4o-mini", "messages": "hi"}', "messages"),
    (b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": "ten"}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'[1, 2, 3]', None),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe bad utf-8"}]}', None),
])
def test_malformed_requests_get_400(gateway, body, param):
    r = post_raw(gateway, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


def test_body_over_the_cap_is_413(gateway):
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"a" * 1_100_000 + b'"}]}'
    r = post_raw(gateway, big)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_half_a_body_then_a_stall_gets_408_and_a_closed_connection(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + DEMO.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":")
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"error"' in data


def test_oversized_headers_are_refused(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "request_header_fields_too_large"
    assert httpx.get(gateway.root_url + "/healthz").status_code == 200, "the node survived"


# ---------------------------------------------------------------- disconnect mid-stream

def metric_value(gateway, name, **labels):
    text = gateway.metrics()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnect_mid_stream_cancels_upstream_and_charges_what_was_relayed(gateway, mock):
    before = metric_value(gateway, "sluice_completion_tokens_total", key="charge")
    c = client(gateway, CHARGE)
    stream = c.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=400,
        extra_headers={"x-mock-completion-tokens": "400", "x-mock-token-delay-ms": "20"})
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 10:
            break
    stream.close()

    deadline = time.time() + 5
    record = None
    while time.time() < deadline:
        done = [r for r in mock.requests() if r.get("max_tokens") == 400 and r.get("outcome") != "complete"]
        if done:
            record = done[-1]
            break
        time.sleep(0.05)
    assert record is not None, "the upstream transfer was not cancelled"
    assert record["outcome"] == "client_closed"
    assert record["completion_tokens"] < 400

    deadline = time.time() + 5
    charged = 0
    while time.time() < deadline:
        charged = metric_value(gateway, "sluice_completion_tokens_total", key="charge") - before
        if charged > 0:
            break
        time.sleep(0.05)
    assert received <= charged <= record["completion_tokens"], (received, charged, record)


def test_health_ready_metrics(gateway):
    assert httpx.get(gateway.root_url + "/healthz").json()["status"] == "ok"
    assert httpx.get(gateway.root_url + "/readyz").status_code == 200
    # /metrics is served by the admin listener only; the public port answers it 404 (OpenAI's shape).
    public = httpx.get(gateway.root_url + "/metrics")
    assert public.status_code == 404 and public.json()["error"]["type"] == "invalid_request_error"
    metrics = gateway.metrics()
    assert "sluice_requests_total" in metrics
    assert "sluice_rate_limited_total" in metrics
    assert httpx.get(gateway.admin_url + "/healthz").json()["status"] == "ok"
    assert httpx.get(gateway.admin_url + "/readyz").json()["status"] == "ready"


# ---------------------------------------------------------------- names a client makes up

def test_invented_model_names_under_a_prefix_share_the_patterns_series(gateway):
    """`gpt-4.1*` serves any name starting so: the names must not become label values."""
    c = client(gateway)
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    for i in range(40):
        c.chat.completions.create(model=f"gpt-4.1-invented-{i}", messages=MESSAGES, max_tokens=1)
    text = gateway.metrics()
    assert [line for line in text.splitlines() if "invented" in line] == []
    assert metric_value(gateway, "sluice_requests_total", model="gpt-4.1*") >= 40
    assert metric_value(gateway, "sluice_prompt_tokens_total", model="gpt-4.1*") > 0
    assert metric_value(gateway, "sluice_requests_total", model="gpt-4o-mini") >= 1, "listed names keep their own"
    models = {line.split('model="', 1)[1].split('"', 1)[0] for line in text.splitlines()
              if line.startswith(("sluice_requests_total{", "sluice_prompt_tokens_total{")) and 'model="' in line}
    configured = {"", "gpt-4o-mini", "gpt-4o", "gpt-4.1*", "text-embedding-3-small", "gpt-3.5-turbo-instruct"}
    assert models <= configured, models - configured


def test_a_model_name_cannot_forge_a_log_line(gateway):
    forged = "gpt-4.1-x\n2026-01-01T00:00:00+0000 critical sluice: key=admin FORGED LOG LINE\u0000\u001b[31m"
    client(gateway).chat.completions.create(model=forged, messages=MESSAGES, max_tokens=1)
    deadline = time.time() + 5
    while "FORGED" not in gateway.log_text() and time.time() < deadline:
        time.sleep(0.05)
    lines = [line for line in gateway.log_text().splitlines() if "FORGED" in line]
    assert len(lines) == 1, lines
    assert "model=gpt-4.1-x\\n2026-01-01T00:00:00+0000 critical sluice: key=admin FORGED LOG LINE\\0\\u{1B}[31m" in lines[0], lines[0]
    assert " info sluice: " in lines[0]
    text = gateway.log_text()
    assert "\x00" not in text and "\x1b" not in text


def test_a_huge_model_name_makes_a_bounded_log_line(gateway):
    client(gateway).chat.completions.create(model="gpt-4.1-HUGE" + "x" * 200_000, messages=MESSAGES, max_tokens=1)
    deadline = time.time() + 5
    while "gpt-4.1-HUGE" not in gateway.log_text() and time.time() < deadline:
        time.sleep(0.05)
    lines = [line for line in gateway.log_text().splitlines() if "gpt-4.1-HUGE" in line]
    assert len(lines) == 1 and len(lines[0]) < 1000, len(lines[0]) if lines else lines
    assert "…(200012 bytes)" in lines[0]


# ---------------------------------------------------------------- request ids

def access_log_line(gateway, request_id, timeout=5.0):
    """The access-log line ("request", with a status) of the request whose `request_id` is given."""
    deadline = time.time() + timeout
    while True:
        lines = [line for line in gateway.log_text().splitlines()
                 if f" request_id={request_id} " in line + " " and " status=" in line]
        if lines or time.time() > deadline:
            return lines
        time.sleep(0.05)


def upstream_records(mock, request_id, count=1, timeout=5.0):
    """The mock's records of requests that reached it with this `x-request-id`, once `count` are
    there (the mock writes a record when its response is done, which may be after the client read it)."""
    deadline = time.time() + timeout
    while True:
        records = [r for r in mock.requests() if r.get("request_id") == request_id]
        if len(records) >= count or time.time() > deadline:
            return records
        time.sleep(0.05)


def test_a_clients_request_id_is_echoed_sent_upstream_and_logged(gateway, mock):
    request_id = f"client-{time.time_ns()}:retry/1+b64=="
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=2, extra_headers={"x-request-id": request_id})
    assert raw.headers["x-request-id"] == request_id
    assert raw.parse()._request_id == request_id, "the SDK reports the client's own id"
    assert len(upstream_records(mock, request_id)) == 1
    [line] = access_log_line(gateway, request_id)
    assert " status=200 " in line + " "
    # Sluice's own id (the reservation's) is logged next to it.
    assert " reservation_id=req_" in line, line

    # Streamed, and on error responses (before and after authentication) too.
    streamed_id = request_id + "-stream"
    with client(gateway).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=2, stream=True,
            extra_headers={"x-request-id": streamed_id}) as streamed:
        assert streamed.headers["x-request-id"] == streamed_id
        assert "[DONE]" in streamed.read().decode()
    headers = {"x-request-id": request_id + "-error"}
    for url, key, body, status in [
        ("/chat/completions", "sk-not-a-real-key-123456", {"model": "gpt-4o-mini", "messages": MESSAGES}, 401),
        ("/chat/completions", DEMO, {"model": "no-such-model", "messages": MESSAGES}, 404),
        ("/chat/completions", DEMO, {"model": "gpt-4o-mini"}, 400),
        ("/no/such/route", DEMO, {}, 404),
    ]:
        r = httpx.post(gateway.base_url + url, json=body, headers={**headers, "authorization": f"Bearer {key}"})
        assert (r.status_code, r.headers["x-request-id"]) == (status, headers["x-request-id"]), (url, body)
    r = httpx.post(gateway.base_url + "/chat/completions",
                   json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1},
                   headers={**headers, "authorization": f"Bearer {DEMO}", "x-mock-status": "503"})
    assert (r.status_code, r.headers["x-request-id"]) == (503, headers["x-request-id"])
    # Of these, only the last one was forwarded, with the client's id: three times (the default
    # routing.max_attempts: a 503 is tried again before the client sees it), each with that id.
    assert [rec["status"] for rec in upstream_records(mock, headers["x-request-id"])] == [503] * 3
    assert r.headers["x-sluice-attempts"] == "3"


@pytest.mark.parametrize("sent", ["two words", "x" * 129, "semi;colon", "quote\"d", "percent%20", ""])
def test_a_malformed_request_id_is_replaced_by_sluices_own(gateway, mock, sent):
    r = httpx.post(gateway.base_url + "/chat/completions",
                   json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1},
                   headers={"authorization": f"Bearer {DEMO}", "x-request-id": sent})
    assert r.status_code == 200
    own = r.headers["x-request-id"]
    assert own.startswith("req_") and own != sent
    assert len(upstream_records(mock, own)) == 1
    assert not [rec for rec in mock.requests() if sent and rec.get("request_id") == sent]
    [line] = access_log_line(gateway, own)
    assert "reservation_id=" not in line, "one id only: Sluice's"


def test_requests_repeating_a_clients_id_are_still_reserved_apart(gateway):
    """The limiter never uses the client's id: two requests in flight with the same id hold two
    concurrency slots, and both give them back (one reservation shared by the two would leak a slot)."""
    c = client(gateway, PAIR)
    slow = {"x-request-id": "the-same-id", "x-mock-completion-tokens": "5", "x-mock-token-delay-ms": "40"}

    def open_stream():
        return c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, stream=True, extra_headers=slow)

    for _ in range(3):
        # Settles run right after a response has ended: a slot may take a moment to come back.
        deadline = time.time() + 5
        while True:
            first = open_stream()
            try:
                second = open_stream()
                break
            except openai.RateLimitError:
                first.close()
                assert time.time() < deadline, "a concurrency slot was never given back"
                time.sleep(0.05)
        assert first.response.headers["x-request-id"] == second.response.headers["x-request-id"] == "the-same-id"
        with pytest.raises(openai.RateLimitError):
            open_stream()
        for stream in (first, second):
            assert sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content) == 5


def test_upstream_connections_are_pooled(gateway, mock):
    before = len(mock.requests())
    c = client(gateway)
    for _ in range(50):
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
    records = mock.requests()[before:]
    assert len(records) == 50
    connections = {r["conn"] for r in records}
    # One keep-alive connection per curl engine thread at most, for sequential requests.
    assert len(connections) <= UPSTREAM_THREADS, f"50 sequential requests used {len(connections)} upstream connections"


def test_cli_counts_a_chat_body_like_the_cookbook(tmp_path):
    """`sluice tokens --chat` (the gateway's own counter) against the cookbook formula on real tiktoken."""
    import os
    import subprocess
    import tiktoken
    from conftest import SLUICE_BIN, TOKENIZER_DIR
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(TOKENIZER_DIR, "tiktoken-cache"))
    messages = [
        {"role": "system", "content": "You are a helpful, pattern-following assistant."},
        {"role": "user", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "assistant", "content": "Things working well together will increase revenue."},
    ]
    expected = {}
    for model, encoding in (("gpt-4o", "o200k_base"), ("gpt-4-0613", "cl100k_base")):
        enc = tiktoken.get_encoding(encoding)
        n = 3
        for m in messages:
            n += 3
            for key, value in m.items():
                n += len(enc.encode(value)) + (1 if key == "name" else 0)
        expected[model] = n
        (tmp_path / f"{model}.json").write_text(json.dumps({"model": model, "messages": messages}))
    out = subprocess.run([SLUICE_BIN, "tokens", "--chat", str(tmp_path / "gpt-4o.json"), str(tmp_path / "gpt-4-0613.json")],
                         capture_output=True, text=True, env={**os.environ, "SLUICE_TOKENIZER_DIR": TOKENIZER_DIR}, check=True)
    assert out.stdout.split() == [str(expected["gpt-4o"]), str(expected["gpt-4-0613"])]


def test_cli_tokens_responses_frames_the_input_as_the_equivalent_chat_request(tmp_path):
    """`sluice tokens --responses`: a /v1/responses body counted as the gateway counts it for admission
    (instructions as a developer message, a string input as a user message; the cookbook framing on
    real tiktoken is the oracle). `--model` recounts it with another model's encoding."""
    import os
    import subprocess
    import tiktoken
    from conftest import SLUICE_BIN, TOKENIZER_DIR
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(TOKENIZER_DIR, "tiktoken-cache"))
    instructions, text = "Be terse.", "Tell me a three sentence bedtime story about a unicorn."
    (tmp_path / "plain.json").write_text(json.dumps({"model": "gpt-4o", "input": text}))
    (tmp_path / "instructed.json").write_text(json.dumps({"model": "gpt-4o", "instructions": instructions, "input": text}))
    env = {**os.environ, "SLUICE_TOKENIZER_DIR": TOKENIZER_DIR}

    def expected(encoding, *messages):
        enc = tiktoken.get_encoding(encoding)
        return 3 + sum(3 + len(enc.encode(role)) + len(enc.encode(content)) for role, content in messages)

    out = subprocess.run([SLUICE_BIN, "tokens", "--responses", str(tmp_path / "plain.json"), str(tmp_path / "instructed.json")],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [str(expected("o200k_base", ("user", text))),
                                  str(expected("o200k_base", ("developer", instructions), ("user", text)))]
    out = subprocess.run([SLUICE_BIN, "tokens", "--responses", "--model", "gpt-4-0613", str(tmp_path / "plain.json")],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [str(expected("cl100k_base", ("user", text)))]
    refused = subprocess.run([SLUICE_BIN, "tokens", "--responses", "--chat", str(tmp_path / "plain.json")],
                             capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "give one" in refused.stderr


def test_cli_usage_refuses_a_day_that_is_not_on_the_calendar(tmp_path):
    """`sluice usage --day` names a UTC day; one that does not exist is refused, not shown as zeros."""
    import subprocess
    from conftest import SLUICE_BIN, wait_for_port
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, redis)
        config = gateway_config(free_port(), free_port(), [{"id": "demo", "secret_sha256": sha256_hex(DEMO), "tier": "any"}],
                                {"any": {"requests_per_minute": 60}})
        config["redis"] = {"url": f"redis://127.0.0.1:{port}"}
        (tmp_path / "sluice.json").write_text(json.dumps(config))

        def usage(day):
            return subprocess.run([SLUICE_BIN, "usage", "--config", str(tmp_path / "sluice.json"), "--key", "demo", "--day", day],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)

        for day in ("2026-02-28", "2024-02-29"):
            out = usage(day)
            assert out.returncode == 0, out.stderr
            assert f"usage of key demo on {day} (UTC)" in out.stdout
        for day in ("2026-13-04", "2026-00-04", "2026-01-32", "2026-02-30", "2026-02-29", "2026-04-31", "2026-1-04"):
            out = usage(day)
            assert out.returncode != 0, (day, out.stdout)
            assert out.stdout == "", (day, out.stdout)
            assert f'--day "{day}" is not a day of the calendar' in out.stderr, (day, out.stderr)
    finally:
        redis.kill()
        redis.wait()

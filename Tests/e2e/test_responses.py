"""The Responses API end to end: the official openai SDK's `client.responses.create` (streamed and
not) → sluice serve → sluice-mock. The tokens Sluice charges must equal the usage the mock reported."""
import time

import httpx
import openai
import pytest

from conftest import Gateway, free_port, gateway_config, sha256_hex

KEY = "sk-e2e-responses-0123456789"
OTHER = "sk-e2e-responses-other-0123456789"
MINI_ONLY = "sk-e2e-responses-mini-0123456789"


@pytest.fixture(scope="module")
def gateway(tmp_module, mock):
    tiers = {"unlimited": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000}}
    keys = [
        {"id": "resp", "secret_sha256": sha256_hex(KEY), "tier": "unlimited"},
        {"id": "resp-other", "secret_sha256": sha256_hex(OTHER), "tier": "unlimited",
         "previous_response_allowance_tokens": 500},
        {"id": "resp-mini", "secret_sha256": sha256_hex(MINI_ONLY), "tier": "unlimited", "models": ["gpt-4o-mini"]},
    ]
    g = Gateway(tmp_module, gateway_config(free_port(), mock.port, keys, tiers))
    yield g
    g.stop()


def client(gateway, key=KEY):
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def charged(gateway, key):
    """(prompt, completion) tokens charged to `key` so far, from the node's metrics."""
    totals = {"sluice_prompt_tokens_total": 0.0, "sluice_completion_tokens_total": 0.0}
    for line in gateway.metrics().splitlines():
        for name in totals:
            if line.startswith(name + "{") and f'key="{key}"' in line:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return int(totals["sluice_prompt_tokens_total"]), int(totals["sluice_completion_tokens_total"])


def charged_since(gateway, key, before, expected):
    """What `key` was charged since `before`, polled until it equals `expected` (settlement and its
    metrics follow the response by a moment) or 3 s pass."""
    deadline = time.time() + 3
    while True:
        after = charged(gateway, key)
        delta = (after[0] - before[0], after[1] - before[1])
        if delta == expected or time.time() > deadline:
            return delta
        time.sleep(0.05)


def test_non_streamed_response_is_charged_the_upstream_usage(gateway):
    before = charged(gateway, "resp")
    raw = client(gateway).responses.with_raw_response.create(
        model="gpt-4o-mini", instructions="Be terse.", input="Say hello to the tests, please.",
        extra_headers={"x-mock-completion-tokens": "11"})
    response = raw.parse()
    assert response.status == "completed"
    assert response.output_text == " the quick brown fox jumps over lazy dog the quick brown"
    assert response.usage.output_tokens == 11
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000000"
    expected = (response.usage.input_tokens, response.usage.output_tokens)
    assert charged_since(gateway, "resp", before, expected) == expected
    # The access log line carries the Responses usage details.
    lines = [line for line in gateway.log_text().splitlines() if raw.headers["x-request-id"] in line and "cached_input_tokens" in line]
    assert lines and "reasoning_tokens" in lines[-1], gateway.log_text()[-2000:]


def test_streamed_response_passes_events_through_and_is_charged_the_final_usage(gateway):
    before = charged(gateway, "resp")
    stream = client(gateway).responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Stream a few words to me."}]}],
        max_output_tokens=7, stream=True, extra_headers={"x-mock-completion-tokens": "5"})
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 5
    assert [e.sequence_number for e in events] == list(range(len(events))), "no event dropped or added"
    usage = events[-1].response.usage
    assert usage.output_tokens == 5
    expected = (usage.input_tokens, usage.output_tokens)
    assert charged_since(gateway, "resp", before, expected) == expected


def test_stream_helper(gateway):
    before = charged(gateway, "resp")
    with client(gateway).responses.stream(model="gpt-4o-mini", input="hello",
                                          extra_headers={"x-mock-completion-tokens": "4"}) as stream:
        final = stream.get_final_response()
    assert final.output_text == " the quick brown fox"
    expected = (final.usage.input_tokens, 4)
    assert charged_since(gateway, "resp", before, expected) == expected


def test_truncated_stream_ends_incomplete_and_is_charged_its_usage(gateway):
    # max_output_tokens cuts the answer: the stream ends with response.incomplete (with usage), which
    # the SDK's stream helper does not accept (it waits for response.completed); the raw stream does.
    before = charged(gateway, "resp")
    events = list(client(gateway).responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=3, stream=True,
                                                   extra_headers={"x-mock-completion-tokens": "9"}))
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.incomplete_details.reason == "max_output_tokens" and final.usage.output_tokens == 3
    expected = (final.usage.input_tokens, 3)
    assert charged_since(gateway, "resp", before, expected) == expected


def test_previous_response_id_is_settled_with_the_upstream_input_tokens(gateway, mock):
    c = client(gateway, OTHER)
    start = charged(gateway, "resp-other")
    first = c.responses.create(model="gpt-4o-mini", input="Remember the word 'sluice'.")
    charged_since(gateway, "resp-other", start, (first.usage.input_tokens, first.usage.output_tokens))
    before = charged(gateway, "resp-other")
    raw = c.responses.with_raw_response.create(model="gpt-4o-mini", input="Which word?", previous_response_id=first.id)
    second = raw.parse()
    # The mock stands in 100 input tokens for the stored conversation that Sluice cannot see.
    assert second.usage.input_tokens > 100
    expected = (second.usage.input_tokens, second.usage.output_tokens)
    assert charged_since(gateway, "resp-other", before, expected) == expected
    # The reservation held the allowance: remaining tokens at admission show at least 500 reserved
    # beyond the default output reservation.
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert 100_000_000 - remaining >= 500 + 1024


def test_stored_response_get_and_delete_pass_through(gateway, mock):
    c = client(gateway)
    got = c.responses.retrieve("resp_stored1")
    assert got.id == "resp_stored1"
    assert c.responses.delete("resp_stored1") is None
    # The mock writes its request log off its event loops: its last lines may follow the answer by a moment.
    wanted = {("GET", "/v1/responses/resp_stored1"), ("DELETE", "/v1/responses/resp_stored1")}
    deadline = time.time() + 3
    while not wanted <= {(r["method"], r["path"]) for r in mock.requests()} and time.time() < deadline:
        time.sleep(0.05)
    paths = {(r["method"], r["path"]) for r in mock.requests()}
    assert wanted <= paths, sorted(paths)[-5:]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong-000000000000", max_retries=0).responses.retrieve("resp_x")
    r = httpx.post(gateway.base_url + "/responses/resp_x", headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 405


def test_model_authorization_is_that_of_chat(gateway):
    with pytest.raises(openai.NotFoundError):
        client(gateway, MINI_ONLY).responses.create(model="gpt-4o", input="hi")
    assert client(gateway, MINI_ONLY).responses.create(model="gpt-4o-mini", input="hi").status == "completed"


def test_mock_knobs_apply_and_an_upstream_error_charges_nothing(gateway, mock):
    # Straight at the mock: the x-mock-* headers work on /v1/responses as on chat.
    direct = openai.OpenAI(base_url=mock.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        direct.responses.create(model="gpt-4o-mini", input="hi", extra_headers={"x-mock-status": "500"})
    started = time.monotonic()
    events = list(direct.responses.create(model="gpt-4o-mini", input="hi", stream=True,
                                          extra_headers={"x-mock-completion-tokens": "4", "x-mock-token-delay-ms": "50"}))
    assert time.monotonic() - started >= 0.15
    assert events[-1].response.usage.output_tokens == 4
    # Through Sluice: an upstream error is relayed and nothing is charged.
    before = charged(gateway, "resp")
    with pytest.raises(openai.InternalServerError):
        client(gateway).responses.create(model="gpt-4o-mini", input="hi", extra_headers={"x-mock-status": "500"})
    time.sleep(0.3)
    assert charged(gateway, "resp") == before


def test_stream_bytes_are_those_of_the_upstream(gateway, mock):
    """Every event reaches the client byte for byte as the upstream sent it (`event:` lines included);
    only the response id and creation time differ between two answers of the mock."""
    import re

    def raw_stream(base_url, key):
        body = {"model": "gpt-4o-mini", "input": "bytes please", "stream": True}
        with httpx.stream("POST", base_url + "/responses", json=body, timeout=10,
                          headers={"authorization": f"Bearer {key}", "x-mock-completion-tokens": "6"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            return re.sub(rb'"created_at":\d+', b'"created_at":0', re.sub(rb"(resp|msg)_mock\d+x\d+", rb"\1_X", r.read()))

    through = raw_stream(gateway.base_url, KEY)
    direct = raw_stream(mock.base_url, "x")
    assert through == direct
    assert through.count(b"event: response.output_text.delta\n") == 6

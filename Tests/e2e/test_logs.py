"""`log.format: json`: every line a node writes is one JSON object, and the access log carries what an
operator needs to follow one request — key, model, status, tokens, duration, the upstream it went to,
the attempts, whether it streamed, the upstream's time to first byte and the client's address — with
every value a client chose escaped, so that no request can forge a line or a field."""
import json
import time

import httpx
import openai
import pytest

from conftest import Gateway, free_port, gateway_config, sha256_hex

SECRET = "sk-e2e-logs-0123456789"
TIGHT = "sk-e2e-logs-tight-0123456789"
MESSAGES = [{"role": "user", "content": "Log me."}]


@pytest.fixture(scope="module")
def gateway(tmp_module, mock):
    keys = [
        {"id": "logs", "secret_sha256": sha256_hex(SECRET), "limits": {"requests_per_minute": 1_000_000}},
        {"id": "logs-tight", "secret_sha256": sha256_hex(TIGHT), "limits": {"requests_per_minute": 60, "requests_burst": 1}},
    ]
    config = gateway_config(free_port(), mock.port, keys, {})
    config["log"] = {"format": "json"}
    g = Gateway(tmp_module, config)
    yield g
    g.stop()


def records(gateway) -> list:
    """Every line the node wrote, parsed (a line that is not a JSON object fails the test)."""
    parsed = []
    for line in gateway.log_text().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


def access_record(gateway, request_id: str, timeout: float = 5.0) -> dict:
    deadline = time.time() + timeout
    while True:
        found = [r for r in records(gateway) if r.get("message") == "request" and r.get("request_id") == request_id]
        if found or time.time() > deadline:
            assert len(found) == 1, f"{len(found)} access-log records for {request_id}"
            return found[0]
        time.sleep(0.05)


def test_every_line_is_a_json_object_with_the_stable_fields(gateway):
    lines = records(gateway)
    assert lines, "the node logged nothing at start"
    for record in lines:
        assert {"time", "level", "logger", "source", "message"} <= record.keys(), record


def test_the_access_log_follows_a_request(gateway):
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key=SECRET, max_retries=0)
    whole = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-completion-tokens": "7"})
    record = access_record(gateway, whole.headers["x-request-id"])
    assert record["level"] == "info"
    assert record["status"] == "200" and record["key"] == "logs" and record["model"] == "gpt-4o-mini"
    assert record["completion_tokens"] == "7" and int(record["prompt_tokens"]) > 0
    assert record["upstream"] == "mock" and record["attempts"] == "1" and record["streamed"] == "false"
    assert record["upstream_http"] == "1.1", "http_version auto over cleartext"
    assert record["client"] == "127.0.0.1"
    assert 0 < float(record["ttfb_ms"]) <= float(record["duration_ms"])

    with sdk.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,
            extra_headers={"x-mock-completion-tokens": "5"}) as streamed:
        request_id = streamed.headers["x-request-id"]
        for _ in streamed.iter_lines():
            pass
    record = access_record(gateway, request_id)
    assert record["streamed"] == "true" and record["completion_tokens"] == "5" and record["upstream"] == "mock"

    # Refused before any upstream: no upstream, no attempt, no time to first byte.
    tight = openai.OpenAI(base_url=gateway.base_url, api_key=TIGHT, max_retries=0)
    tight.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as refused:
        tight.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    record = access_record(gateway, refused.value.response.headers["x-request-id"])
    assert record["status"] == "429" and record["upstream"] == "-" and record["attempts"] == "0" and record["ttfb_ms"] == "-"
    assert record["upstream_http"] == "-"


def test_a_hostile_model_name_cannot_forge_a_line_or_a_field(gateway):
    # Served (gpt-4.1* is a wildcard of the upstream), so the access log names it.
    hostile = 'gpt-4.1"}\n{"level":"critical","message":"forged"}\u2028\x1b[31m\\'
    response = httpx.post(gateway.base_url + "/chat/completions", timeout=10,
                          headers={"authorization": f"Bearer {SECRET}"},
                          json={"model": hostile, "messages": MESSAGES})
    record = access_record(gateway, response.headers["x-request-id"])
    assert record["model"] == hostile, "the value comes back exactly from a JSON parser"
    assert not [r for r in records(gateway) if r.get("message") == "forged"]
    raw = gateway.log_text()
    assert "\x1b" not in raw and "\u2028" not in raw

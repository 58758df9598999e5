"""The metrics contract end to end (issue 17): a node with traffic (an answered request, a streamed
one, a rate-limited one, one the upstream fails), scraped on its admin listener, checked by
`promtool check metrics` and against the families, labels and values the dashboard, the alerts and
the tracing work are built on."""
import re
import shutil
import subprocess
import time

import httpx
import pytest

from conftest import ROOT, Gateway, free_port, gateway_config, sha256_hex

WATCHED = "sk-e2e-metrics-watched-0123456789"
ONE = "sk-e2e-metrics-one-0123456789"
MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"
SNAKE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")

# name → type, and the label names each series carries (the contract, metrics-contract.md).
CONTRACT = {
    "sluice_requests_total": ("counter", {"route", "status", "model"}),
    "sluice_request_duration_seconds": ("histogram", {"route"}),
    "sluice_prompt_tokens_total": ("counter", {"key", "model"}),
    "sluice_completion_tokens_total": ("counter", {"key", "model"}),
    "sluice_rate_limited_total": ("counter", {"limit", "key"}),
    "sluice_upstream_errors_total": ("counter", {"upstream", "kind"}),
    "sluice_limiter_mode": ("gauge", {"mode"}),
    "sluice_limiter_pending_settlements": ("gauge", set()),
    "sluice_open_connections": ("gauge", set()),
    "sluice_request_tasks": ("gauge", set()),
    "sluice_config_reloads_total": ("counter", {"result"}),
    "sluice_added_latency_seconds": ("histogram", {"route"}),
    "sluice_upstream_request_duration_seconds": ("histogram", {"upstream", "outcome"}),
    "sluice_upstream_time_to_first_byte_seconds": ("histogram", {"upstream"}),
    "sluice_upstream_circuit_open": ("gauge", {"upstream"}),
    "sluice_limiter_call_duration_seconds": ("histogram", set()),
    "sluice_ready": ("gauge", set()),
    "sluice_build_info": ("gauge", {"version"}),
    "sluice_key_remaining": ("gauge", {"key", "limit"}),
    "gen_ai_client_token_usage": ("histogram", {"gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"}),
    "gen_ai_server_request_duration_seconds": ("histogram", {"gen_ai_operation_name", "gen_ai_request_model"}),
    "gen_ai_server_time_to_first_token_seconds": ("histogram", {"gen_ai_operation_name", "gen_ai_request_model"}),
    "gen_ai_server_time_per_output_token_seconds": ("histogram", {"gen_ai_operation_name", "gen_ai_request_model"}),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_cpu_seconds_total": ("counter", set()),
    "process_open_fds": ("gauge", set()),
    "process_max_fds": ("gauge", set()),
    "process_start_time_seconds": ("gauge", set()),
}
# Labels whose values are words of Sluice's own (not routes, keys, models or upstream names).
ENUMERATED = {"kind", "outcome", "limit", "reason", "mode", "result", "path", "gen_ai_token_type", "gen_ai_operation_name"}


def parse(text: str):
    """(types, helps, samples): family → type, family → help, [(name, labels, value)]."""
    types, helps, samples = {}, {}, []
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("# HELP "):
            _, _, name, help_text = line.split(" ", 3)
            helps[name] = help_text
        elif line and not line.startswith("#"):
            match = sample.match(line)
            assert match, f"not a sample line: {line!r}"
            samples.append((match.group(1), dict(label.findall(match.group(2) or "")), float(match.group(3))))
    return types, helps, samples


def value(samples, name, **labels):
    """The sum of `name`'s samples whose labels include `labels` (None: no such sample)."""
    found = [v for n, l, v in samples if n == name and all(l.get(k) == str(w) for k, w in labels.items())]
    return sum(found) if found else None


@pytest.fixture(scope="module")
def node(tmp_module, mock):
    keys = [
        {"id": "watched", "secret_sha256": sha256_hex(WATCHED), "tier": "roomy", "metrics": True},
        {"id": "one", "secret_sha256": sha256_hex(ONE), "tier": "one-per-minute"},
    ]
    tiers = {
        "roomy": {"requests_per_minute": 1000, "tokens_per_minute": 1_000_000},
        "one-per-minute": {"requests_per_minute": 1, "tokens_per_minute": 1_000_000},
    }
    config = gateway_config(free_port(), mock.port, keys, tiers)
    # Retries without a noticeable backoff: the watched key's gauge is read before its bucket refills.
    config["routing"] = {"backoff_initial_ms": 1, "backoff_max_ms": 2}
    g = Gateway(tmp_module, config)
    yield g
    g.stop()


def chat(node, secret, stream=False, headers=None):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 20, "stream": stream}
    return httpx.post(node.root_url + CHAT, json=body, timeout=30,
                      headers={"authorization": f"Bearer {secret}", **(headers or {})})


@pytest.fixture(scope="module")
def scrape(node):
    """The traffic, then one scrape of the admin listener: (text, parsed)."""
    assert chat(node, WATCHED).status_code == 200
    streamed = chat(node, WATCHED, stream=True, headers={"x-mock-completion-tokens": "8"})
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert chat(node, ONE).status_code == 200
    assert chat(node, ONE).status_code == 429, "the key's one request per minute is spent"
    assert chat(node, WATCHED, headers={"x-mock-status": "503"}).status_code == 503
    # The last request's task may still be settling when its response has ended.
    time.sleep(0.2)
    text = httpx.get(node.admin_url + "/metrics", timeout=5).text
    return text, parse(text)


def test_the_public_port_does_not_serve_metrics(node):
    r = httpx.get(node.root_url + "/metrics", timeout=5)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"
    # Health stays on both listeners.
    for url in (node.root_url, node.admin_url):
        assert httpx.get(url + "/healthz", timeout=5).json()["status"] == "ok"
        assert httpx.get(url + "/readyz", timeout=5).json()["status"] == "ready"
    assert httpx.get(node.admin_url + "/v1/models", timeout=5).status_code == 404, "the admin listener serves no API"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (scripts/setup installs the prometheus package)")
def test_promtool_finds_nothing_to_report(scrape):
    text, _ = scrape
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", (
        f"promtool check metrics:\n{result.stdout}{result.stderr}")


def test_every_family_of_the_contract_with_help_type_and_labels(scrape):
    _, (types, helps, samples) = scrape
    for name, (kind, label_names) in CONTRACT.items():
        assert types.get(name) == kind, f"{name}: type {types.get(name)}, contract says {kind}"
        series = [l for n, l, _ in samples if n in (name, name + "_count")]
        assert series, f"{name}: no series"
        for labels in series:
            assert set(labels) == label_names, f"{name}: labels {sorted(labels)}, contract says {sorted(label_names)}"
    assert set(helps) == set(types), f"families without HELP: {sorted(set(types) - set(helps))}"
    assert all(text.strip() for text in helps.values())
    for name, labels, _ in samples:
        for label_name, label_value in labels.items():
            if label_name in ENUMERATED:
                assert SNAKE.match(label_value), f"{name}{{{label_name}={label_value!r}}} is not snake_case"


def test_values_follow_the_traffic(scrape):
    _, (_, _, s) = scrape
    op = {"gen_ai_operation_name": "chat", "gen_ai_request_model": MODEL}
    # Three answered requests (plain, streamed, the one-per-minute key's), each counted once per token type.
    assert value(s, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **op) == 3
    assert value(s, "gen_ai_client_token_usage_count", gen_ai_token_type="output", **op) == 3
    assert value(s, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **op) >= 8
    assert value(s, "gen_ai_server_request_duration_seconds_count", **op) == 3
    assert value(s, "gen_ai_server_time_to_first_token_seconds_count", **op) == 1, "streams only"
    assert value(s, "gen_ai_server_time_per_output_token_seconds_count", **op) == 1
    # Every proxied request: three answered, one refused with 429, one the upstream failed.
    assert value(s, "sluice_added_latency_seconds_count", route=CHAT) == 5
    assert value(s, "sluice_added_latency_seconds_sum", route=CHAT) > 0
    assert value(s, "sluice_request_duration_seconds_sum", route=CHAT) > value(s, "sluice_added_latency_seconds_sum", route=CHAT)
    assert value(s, "sluice_requests_total", route=CHAT, status=200, model=MODEL) == 3
    assert value(s, "sluice_rate_limited_total", limit="requests", key="one") == 1
    assert value(s, "sluice_upstream_request_duration_seconds_count", upstream="mock", outcome="ok") == 3
    # The failed request was tried three times (routing.max_attempts), each attempt an exchange.
    assert value(s, "sluice_upstream_request_duration_seconds_count", upstream="mock", outcome="http_5xx") == 3
    assert value(s, "sluice_upstream_errors_total", upstream="mock", kind="http_5xx") == 3
    assert value(s, "sluice_upstream_retries_total", upstream="mock", reason="http_5xx") == 2
    assert value(s, "sluice_upstream_time_to_first_byte_seconds_count", upstream="mock") == 6
    assert value(s, "sluice_upstream_circuit_open", upstream="mock") == 0
    # Opt-in per key: the watched key's remaining requests, nothing for the other.
    remaining = value(s, "sluice_key_remaining", key="watched", limit="requests")
    assert remaining is not None and 990 <= remaining < 1000
    assert value(s, "sluice_key_remaining", key="watched", limit="tokens") is not None
    assert value(s, "sluice_key_remaining", key="one") is None
    assert value(s, "sluice_limiter_mode", mode="embedded") == 1
    assert value(s, "sluice_ready") == 1
    version = re.search(r'static let current = "([^"]+)"', (ROOT / "Sources/sluice/SluiceVersion.swift").read_text()).group(1)
    assert value(s, "sluice_build_info", version=version) == 1
    # The process, read from /proc at the scrape.
    assert value(s, "process_resident_memory_bytes") > 1e6
    assert value(s, "process_cpu_seconds_total") > 0
    assert 0 < value(s, "process_open_fds") <= value(s, "process_max_fds")
    assert time.time() - 3600 < value(s, "process_start_time_seconds") <= time.time()

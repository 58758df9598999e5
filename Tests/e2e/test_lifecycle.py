"""Graceful shutdown: SIGTERM lets in-flight streams finish, refuses new work, exits 0."""
import json
import signal
import time

import httpx
import openai

from conftest import Gateway, free_port, gateway_config, sha256_hex

KEY = "sk-e2e-lifecycle-0123456789"


def test_sigterm_drains_in_flight_streams(tmp_path, mock):
    config = gateway_config(free_port(), mock.port,
                            [{"id": "k", "secret_sha256": sha256_hex(KEY), "tier": "t"}],
                            {"t": {"requests_per_minute": 10000}},
                            server={"shutdown_grace_seconds": 20})
    g = Gateway(tmp_path, config)
    try:
        c = openai.OpenAI(base_url=g.base_url, api_key=KEY, max_retries=0)
        stream = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers={"x-mock-completion-tokens": "40", "x-mock-token-delay-ms": "50"})
        words = []
        first = next(iter(stream))
        g.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # While draining: not ready, and the listener is closed to new connections.
        try:
            r = httpx.get(g.root_url + "/readyz", timeout=2)
            assert r.status_code == 503
        except httpx.ConnectError:
            pass
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                words.append(chunk.choices[0].delta.content)
        assert len(words) == 40, "the in-flight stream finished completely"
        assert g.proc.wait(timeout=20) == 0
    finally:
        g.stop()


def test_sighup_reloads_a_valid_config_and_refuses_an_invalid_one(tmp_path, mock):
    old_key, new_key = "sk-e2e-reload-old-0123456789", "sk-e2e-reload-new-0123456789"
    tiers = {"t": {"requests_per_minute": 10000}}
    config = gateway_config(free_port(), mock.port, [{"id": "old", "secret_sha256": sha256_hex(old_key), "tier": "t"}], tiers)
    g = Gateway(tmp_path, config)
    try:
        def status(key):
            return httpx.get(g.base_url + "/models", headers={"authorization": f"Bearer {key}"}, timeout=5).status_code

        assert status(old_key) == 200 and status(new_key) == 401
        # A valid new file: the new key works at once, the removed one is refused.
        config["keys"] = [{"id": "new", "secret_sha256": sha256_hex(new_key), "tier": "t"}]
        g.config_path.write_text(json.dumps(config))
        g.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and status(new_key) != 200:
            time.sleep(0.05)
        assert status(new_key) == 200 and status(old_key) == 401

        # An invalid file changes nothing, and the log says why with the JSON path.
        config["keys"][0]["tier"] = "no-such-tier"
        g.config_path.write_text(json.dumps(config))
        g.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and "config reload refused" not in g.log_text():
            time.sleep(0.05)
        assert "config reload refused" in g.log_text()
        assert "$.keys[0].tier" in g.log_text()
        assert status(new_key) == 200
        assert g.proc.poll() is None, "the node kept running"
    finally:
        g.stop()


def test_a_refused_reload_with_several_problems_is_one_log_line(tmp_path, mock):
    key = "sk-e2e-reload-lines-0123456789"
    config = gateway_config(free_port(), mock.port, [{"id": "k", "secret_sha256": sha256_hex(key), "tier": "t"}],
                            {"t": {"requests_per_minute": 10000}})
    g = Gateway(tmp_path, config)
    try:
        config["keys"][0]["tier"] = "no-such-tier"
        config["keys"][0]["default_output_tokens"] = 0
        g.config_path.write_text(json.dumps(config))
        g.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and "config reload refused" not in g.log_text():
            time.sleep(0.05)
        lines = g.log_text().splitlines()
        refused = [i for i, line in enumerate(lines) if "config reload refused" in line]
        assert len(refused) == 1, lines
        line = lines[refused[0]]
        assert "problem_count=2" in line, line
        assert "$.keys[0].tier: unknown tier" in line and "; $.keys[0].default_output_tokens: must be" in line, line
        assert "\\n" not in line, "problems are joined with '; ', not newlines"
        assert all("$.keys[0]" not in later for later in lines[refused[0] + 1:]), "no problem on a line of its own"
    finally:
        g.stop()


def test_dead_upstream_opens_its_circuit(tmp_path, mock):
    key = "sk-e2e-breaker-0123456789"
    config = gateway_config(free_port(), mock.port, [{"id": "b", "secret_sha256": sha256_hex(key), "tier": "t"}],
                            {"t": {"requests_per_minute": 10000}})
    config["upstreams"][0]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    g = Gateway(tmp_path, config)
    try:
        c = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0)
        statuses = []
        for _ in range(6):
            try:
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            except openai.APIStatusError as e:
                statuses.append((e.status_code, e.response.headers.get("retry-after")))
        # Five refused connects (each retried once, safely: nothing was sent), then the circuit is open.
        assert [s for s, _ in statuses[:5]] == [502] * 5
        assert statuses[5][0] == 503 and statuses[5][1] is not None
        metrics = httpx.get(g.root_url + "/metrics").text
        assert 'kind="circuit_open"' in metrics
    finally:
        g.stop()

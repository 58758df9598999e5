"""Graceful shutdown: SIGTERM lets in-flight streams finish, refuses new work, exits 0."""
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

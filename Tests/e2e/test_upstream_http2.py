"""HTTP/2 to upstreams that speak it (issue 21, item 1): `upstreams[].http_version` and
`upstreams[].tls.ca_file`, against a real HTTP/2 server on loopback.

Debian's nginx (HTTP/2 module built in) stands in front of sluice-mock, proxying to it over HTTP/1.1
with `proxy_buffering off` so that streams stream. It listens on loopback ports:

  - `h2c`:     `listen … http2;`      cleartext HTTP/2 by prior knowledge
  - `tls_h2`:  `listen … ssl http2;`  TLS, ALPN offers h2 and http/1.1
  - `tls_h1`:  `listen … ssl;`        TLS, HTTP/1.1 only
  - `plain`:   `listen …;`            cleartext HTTP/1.1

with a self-signed certificate for 127.0.0.1 made by `openssl` in the test's directory, and on a fifth,
`h2c_short`, cleartext HTTP/2 whose connections close (GOAWAY) after 3 requests each. Its access
log records per request the port, `$server_protocol` (`HTTP/2.0` or `HTTP/1.1`), `$connection` (the
connection's serial number) and the `x-request-id` Sluice sends, so the tests see which protocol and
how many connections Sluice used. One Sluice node (2 engine threads, JSON logs) has one upstream per
case, each serving a model of its own; requests go through the official openai SDK.

Before: every upstream exchange was HTTP/1.1, one connection per exchange in flight (and
`http_version` and `tls` were unknown fields, so the node would not even start with this config).
"""
import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import openai
import pytest

from conftest import Gateway, free_port, sha256_hex, wait_for_port, TOKENIZER_DIR

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
KEY = "sk-e2e-upstream-h2-0123456789"
ENGINE_THREADS = 2
CONCURRENT_STREAMS = 50
MESSAGES = [{"role": "user", "content": "Say something over HTTP/2."}]

pytestmark = pytest.mark.skipif(
    not (os.access(NGINX, os.X_OK) and shutil.which("openssl")),
    reason="nginx and openssl are needed (scripts/setup installs them)")


# ---------------------------------------------------------------------------- nginx in front of the mock

class Nginx:
    """nginx on five loopback ports, proxying to the mock; its access log says what came in how."""

    LOG_FIELDS = ("port", "protocol", "connection", "request_id", "uri", "status")

    def __init__(self, tmp: Path, mock_port: int):
        self.dir = tmp / "nginx"
        (self.dir / "tmp").mkdir(parents=True)
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(self.key), "-out", str(self.cert), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True)
        self.ports = {name: free_port() for name in ("h2c", "tls_h2", "tls_h1", "plain", "h2c_short")}
        self.access_log = self.dir / "access.log"
        user = ""
        if os.getuid() == 0:  # workers would otherwise switch to `nobody`, who cannot read the key
            import grp
            import pwd
            user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
        d = self.dir
        (d / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format probe '$server_port $server_protocol $connection $http_x_request_id $request_uri $status';
  access_log {self.access_log} probe;
  client_body_temp_path {d}/tmp/client_body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  upstream mock {{
    server 127.0.0.1:{mock_port};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{self.ports['h2c']} http2;
    listen 127.0.0.1:{self.ports['tls_h2']} ssl http2;
    listen 127.0.0.1:{self.ports['tls_h1']} ssl;
    listen 127.0.0.1:{self.ports['plain']};
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Relay each SSE chunk as it comes (HTTP/2 frames included), never a buffered whole.
      proxy_buffering off;
    }}
  }}
  server {{
    listen 127.0.0.1:{self.ports['h2c_short']} http2;
    keepalive_requests 3;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
        self.stderr = open(d / "stderr.log", "wb")
        self.proc = subprocess.Popen([NGINX, "-p", f"{d}/", "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"],
                                     stdout=subprocess.DEVNULL, stderr=self.stderr)
        for port in self.ports.values():
            wait_for_port(port, self.proc)

    def records(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [dict(zip(self.LOG_FIELDS, line.split(" "))) for line in self.access_log.read_text().splitlines() if line.strip()]

    def records_for(self, request_ids: set[str], timeout: float = 5.0) -> list[dict]:
        """The access-log records of these requests, once all are there (nginx logs at a request's end)."""
        deadline = time.time() + timeout
        while True:
            found = [r for r in self.records() if r["request_id"] in request_ids]
            if len(found) >= len(request_ids) or time.time() > deadline:
                return found
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# ---------------------------------------------------------------------------- Sluice with one upstream per case

# model → (nginx port, http_version or None for the default, trust nginx's certificate)
CASES = {
    "gpt-4o-h2c": ("h2c", "h2c", False),
    "gpt-4o-h2-required": ("tls_h2", "2", True),
    "gpt-4o-auto-tls": ("tls_h2", None, True),
    "gpt-4o-h1-over-tls": ("tls_h2", "1.1", True),
    "gpt-4o-auto-cleartext": ("plain", "auto", False),
    "gpt-4o-h2-required-h1-server": ("tls_h1", "2", True),
    "gpt-4o-untrusted": ("tls_h2", "auto", False),
    "gpt-4o-h2c-short": ("h2c_short", "h2c", False),
}


def sluice_config(nginx: Nginx) -> dict:
    upstreams = []
    for model, (port_name, version, trusted) in CASES.items():
        scheme = "https" if port_name.startswith("tls") else "http"
        upstream = {
            "name": model.removeprefix("gpt-4o-"),
            "base_url": f"{scheme}://127.0.0.1:{nginx.ports[port_name]}/v1",
            "models": [model],
            "connect_timeout_ms": 2000, "first_byte_timeout_ms": 10000, "stall_timeout_ms": 10000,
            "max_connections": 256,
        }
        if version is not None:
            upstream["http_version"] = version
        if trusted:
            upstream["tls"] = {"ca_file": str(nginx.cert)}
        upstreams.append(upstream)
    return {
        "server": {"host": "127.0.0.1", "port": free_port(), "admin_port": free_port(), "upstream_threads": ENGINE_THREADS},
        "tokenizer": {"directory": TOKENIZER_DIR},
        "upstreams": upstreams,
        "tiers": {"unlimited": {"requests_per_minute": 10_000_000, "tokens_per_minute": 100_000_000}},
        "keys": [{"id": "h2", "secret_sha256": sha256_hex(KEY), "tier": "unlimited"}],
        "log": {"format": "json"},
    }


@pytest.fixture(scope="module")
def nginx(tmp_module, mock):
    n = Nginx(tmp_module, mock.port)
    yield n
    n.stop()


@pytest.fixture(scope="module")
def gateway(tmp_module, nginx):
    g = Gateway(tmp_module, sluice_config(nginx))
    yield g
    g.stop()


def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)


def access_record(gateway, request_id: str, timeout: float = 5.0) -> dict:
    """Sluice's access-log line of one request."""
    deadline = time.time() + timeout
    while True:
        for line in gateway.log_text().splitlines():
            if not line.startswith("{"):
                continue  # not a log entry of Sluice's (e.g. libcurl's verbose output while debugging)
            record = json.loads(line)
            if record.get("message") == "request" and record.get("request_id") == request_id:
                return record
        assert time.time() < deadline, f"no access-log line for {request_id}"
        time.sleep(0.05)


def whole_answer(gateway, model: str, tokens: int = 7):
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, extra_headers={"x-mock-completion-tokens": str(tokens)})
    return raw.headers["x-request-id"], raw.parse()


def streamed_answer(gateway, model: str, tokens: int = 12, delay_ms: int = 0):
    """(request id, content, usage, seconds to the first content chunk, seconds in all)."""
    started = time.monotonic()
    first = None
    with sdk(gateway).chat.completions.with_streaming_response.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_headers={"x-mock-completion-tokens": str(tokens), "x-mock-token-delay-ms": str(delay_ms)}) as response:
        request_id = response.headers["x-request-id"]
        content, usage = "", None
        for chunk in response.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.monotonic() - started
                content += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage
    return request_id, content, usage, first, time.monotonic() - started


# ---------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("model", ["gpt-4o-h2c", "gpt-4o-h2-required", "gpt-4o-auto-tls"])
def test_answers_travel_over_http2_intact_and_are_charged(gateway, nginx, model):
    request_id, completion = whole_answer(gateway, model, tokens=7)
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 7
    record = access_record(gateway, request_id)
    assert record["status"] == "200" and record["upstream_http"] == "2", record
    assert record["completion_tokens"] == "7" and int(record["prompt_tokens"]) > 0, record

    request_id, content, usage, first, total = streamed_answer(gateway, model, tokens=12)
    assert len(content.split()) == 12
    assert usage is not None and usage.completion_tokens == 12
    record = access_record(gateway, request_id)
    assert record["streamed"] == "true" and record["upstream_http"] == "2", record
    assert record["completion_tokens"] == "12" and int(record["prompt_tokens"]) > 0, record

    seen = nginx.records_for({request_id})
    assert [r["protocol"] for r in seen] == ["HTTP/2.0"], seen


def test_streams_stream_through_http2(gateway):
    """Each SSE chunk comes as the model makes it, not in one piece at the end (nginx's HTTP/2 with
    `proxy_buffering off`, curl's HTTP/2 without buffering of its own)."""
    for model in ("gpt-4o-h2c", "gpt-4o-auto-tls"):
        _, content, _, first, total = streamed_answer(gateway, model, tokens=10, delay_ms=100)
        assert len(content.split()) == 10
        assert total >= 0.9, total
        assert first < total / 2, f"{model}: first chunk after {first:.2f} s of {total:.2f} s: the stream was buffered"


@pytest.mark.parametrize("model", ["gpt-4o-h2c", "gpt-4o-auto-tls"])
def test_concurrent_streams_share_a_few_connections(gateway, nginx, model):
    async def one(client):
        async with client.chat.completions.with_streaming_response.create(
                model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
                extra_headers={"x-mock-completion-tokens": "10", "x-mock-token-delay-ms": "50"}) as response:
            request_id = response.headers["x-request-id"]
            content, usage = "", None
            async for chunk in await response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    content += chunk.choices[0].delta.content
                if chunk.usage is not None:
                    usage = chunk.usage
        return request_id, content, usage

    async def run():
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0) as client:
            return await asyncio.gather(*(one(client) for _ in range(CONCURRENT_STREAMS)))

    results = asyncio.run(run())
    assert all(len(content.split()) == 10 for _, content, _ in results)
    assert all(usage is not None and usage.completion_tokens == 10 for _, _, usage in results)
    request_ids = {request_id for request_id, _, _ in results}
    seen = nginx.records_for(request_ids)
    assert len(seen) == CONCURRENT_STREAMS, f"nginx logged {len(seen)} of {CONCURRENT_STREAMS}"
    assert {r["protocol"] for r in seen} == {"HTTP/2.0"}, collections.Counter(r["protocol"] for r in seen)
    connections = {r["connection"] for r in seen}
    # One HTTP/2 connection per engine thread is the expectation; a little slack for a connection
    # the server closed (GOAWAY) meanwhile. Over HTTP/1.1 it would be one per stream (50).
    assert len(connections) <= ENGINE_THREADS * 2, f"{CONCURRENT_STREAMS} streams on {len(connections)} connections"
    for request_id in list(request_ids)[:5]:
        assert access_record(gateway, request_id)["upstream_http"] == "2"


def test_h2c_connections_that_close_are_opened_again(gateway, nginx):
    """libcurl 7.88 breaks a connection that a prior-knowledge transfer reuses, so only a connection's
    first exchange goes by prior knowledge and the rest as plain HTTP/2 on it; when the connection
    is gone (here: nginx's GOAWAY after 3 requests), the next exchange must open a new one by prior
    knowledge again, not try an HTTP/1.1 upgrade on it."""
    request_ids = set()
    for _ in range(12):
        request_id, completion = whole_answer(gateway, "gpt-4o-h2c-short", tokens=3)
        assert completion.usage.completion_tokens == 3
        request_ids.add(request_id)
    seen = nginx.records_for(request_ids)
    assert len(seen) == 12 and {r["protocol"] for r in seen} == {"HTTP/2.0"}, seen
    assert {r["status"] for r in seen} == {"200"}
    assert len({r["connection"] for r in seen}) >= 12 // 3


def test_http_version_1_1_stays_on_http1_over_tls_that_offers_h2(gateway, nginx):
    request_id, completion = whole_answer(gateway, "gpt-4o-h1-over-tls")
    assert completion.usage.completion_tokens == 7
    assert access_record(gateway, request_id)["upstream_http"] == "1.1"
    assert [r["protocol"] for r in nginx.records_for({request_id})] == ["HTTP/1.1"]


def test_auto_over_cleartext_stays_http1(gateway, nginx):
    request_id, content, usage, _, _ = streamed_answer(gateway, "gpt-4o-auto-cleartext", tokens=5)
    assert len(content.split()) == 5 and usage.completion_tokens == 5
    assert access_record(gateway, request_id)["upstream_http"] == "1.1"
    assert [r["protocol"] for r in nginx.records_for({request_id})] == ["HTTP/1.1"]


def test_http2_required_refuses_a_server_without_it_before_sending(gateway, nginx):
    """`2` over TLS when the server's ALPN chose http/1.1: 502, and the request never reached it."""
    before = len(nginx.records())
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(gateway).chat.completions.create(model="gpt-4o-h2-required-h1-server", messages=MESSAGES)
    assert refused.value.status_code == 502, refused.value
    request_id = refused.value.response.headers["x-request-id"]
    record = access_record(gateway, request_id)
    assert record["status"] == "502" and record["upstream_http"] == "-", record
    assert record["prompt_tokens"] == "0", "never answered: refunded"
    time.sleep(0.3)
    assert not [r for r in nginx.records()[before:] if r["request_id"] == request_id], "the request was sent over HTTP/1.1"
    assert "did not agree to HTTP/2" in gateway.log_text()


def test_without_ca_file_the_self_signed_upstream_is_not_trusted(gateway, nginx):
    """Handles are reused across upstreams: the CA file of one never trusts a certificate for another."""
    whole_answer(gateway, "gpt-4o-auto-tls")  # a handle that just used the CA file
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(gateway).chat.completions.create(model="gpt-4o-untrusted", messages=MESSAGES)
    assert refused.value.status_code == 502, refused.value
    request_id = refused.value.response.headers["x-request-id"]
    assert not [r for r in nginx.records() if r["request_id"] == request_id]


def test_a_client_that_stops_reading_does_not_stall_the_shared_connection(gateway):
    """A stream whose client stops reading is paused (backpressure) while the other streams on its
    HTTP/2 connection go on: libcurl keeps reading the connection and holds the paused stream's data
    (up to its 32 MB stream window) instead of stopping every stream on it."""
    body = json.dumps({"model": "gpt-4o-h2c", "stream": True, "messages": MESSAGES}).encode()
    port = int(gateway.base_url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\n"
                      b"authorization: Bearer " + KEY.encode() + b"\r\nx-mock-completion-tokens: 300000\r\n"
                      b"x-mock-token-delay-ms: 0\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert stuck.recv(12) == b"HTTP/1.1 200"
        time.sleep(2)  # its answer fills every buffer on the way: the transfer pauses
        # Round-robin over the engine threads: some of these share the stuck stream's connection.
        for _ in range(2 * ENGINE_THREADS):
            _, content, usage, _, total = streamed_answer(gateway, "gpt-4o-h2c", tokens=5, delay_ms=10)
            assert len(content.split()) == 5 and usage.completion_tokens == 5
            assert total < 5, f"a stream next to a paused one took {total:.1f} s"


def test_metrics_count_responses_by_http_version(gateway):
    metrics = gateway.metrics()
    assert "# HELP sluice_upstream_responses_total " in metrics
    assert 'sluice_upstream_responses_total{upstream="h2c",http_version="2"}' in metrics
    assert 'sluice_upstream_responses_total{upstream="auto-cleartext",http_version="1.1"}' in metrics

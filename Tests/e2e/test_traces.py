"""Traces end to end: the official openai SDK → sluice serve (telemetry on) → sluice-mock, with the
spans exported over OTLP/HTTP to a tiny collector in this process (decoded with opentelemetry-proto).

Checks the span tree (request span continuing the client's traceparent; count, admit, upstream, relay,
settle as its children), the GenAI attributes, a 429's denial kind, and that the upstream received a
traceparent of the same trace naming Sluice's upstream span.
"""
import gzip
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from conftest import TOKENIZER_DIR, Gateway, free_port, gateway_config, sha256_hex

DEMO = "sk-e2e-traces-demo-0123456789"
TIGHT = "sk-e2e-traces-tight-0123456789"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Trace this, please."}]
CHILDREN = {"count", "admit", "upstream", "relay", "settle"}
REQUEST_SPAN = "POST /v1/chat/completions"


class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self):
        self.spans = []  # (resource attributes, span)
        self.posts = 0
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    collector.posts += 1
                    for resource_spans in request.resource_spans:
                        resource = attributes(resource_spans.resource.attributes)
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                collector.spans.append((resource, span))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def trace(self, trace_id: bytes, count: int, timeout: float = 15.0):
        """The spans of `trace_id` once at least `count` arrived."""
        deadline = time.time() + timeout
        while True:
            with self.lock:
                found = [span for _, span in self.spans if span.trace_id == trace_id]
            if len(found) >= count or time.time() > deadline:
                return found
            time.sleep(0.05)

    def request_span(self, request_id: str, timeout: float = 15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for _, span in self.spans:
                    if span.name == REQUEST_SPAN and attributes(span.attributes).get("sluice.request_id") == request_id:
                        return span
            time.sleep(0.05)
        return None


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(key_values) -> dict:
    return {kv.key: value(kv.value) for kv in key_values}


def chat_prompt_tokens(messages) -> int:
    """OpenAI's chat framing for gpt-4o models, counted with tiktoken (the test oracle)."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(TOKENIZER_DIR) / "tiktoken-cache"))
    import tiktoken
    encoding = tiktoken.get_encoding("o200k_base")
    return 3 + sum(3 + sum(len(encoding.encode(v)) for v in m.values()) for m in messages)


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def gateway(tmp_module, mock, collector):
    tiers = {
        "unlimited": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000},
        "one-a-minute": {"requests_per_minute": 1, "tokens_per_minute": 1_000_000},
    }
    keys = [
        {"id": "demo", "secret_sha256": sha256_hex(DEMO), "tier": "unlimited"},
        {"id": "tight", "secret_sha256": sha256_hex(TIGHT), "tier": "one-a-minute"},
    ]
    config = gateway_config(free_port(), mock.port, keys, tiers)
    config["telemetry"] = {"otlp_endpoint": f"http://127.0.0.1:{collector.port}", "service_name": "sluice-e2e"}
    # Export batches every 100 ms instead of swift-otel's 5 s default.
    g = Gateway(tmp_module, config, env_extra={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    yield g
    g.stop()


def client(gateway, key=DEMO):
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def new_traceparent():
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def by_name(spans) -> dict:
    named = {}
    for span in spans:
        assert span.name not in named, f"two spans named {span.name}"
        named[span.name] = span
    return named


def mock_record(mock, request_id, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = [r for r in mock.requests() if r.get("request_id") == request_id]
        if records:
            return records[-1]
        time.sleep(0.05)
    raise AssertionError(f"the mock logged no request {request_id}")


def check_tree(spans, trace_id, parent_id):
    named = by_name(spans)
    assert set(named) == {REQUEST_SPAN} | CHILDREN, sorted(named)
    root = named[REQUEST_SPAN]
    assert root.trace_id.hex() == trace_id
    assert root.parent_span_id.hex() == parent_id, "the request span continues the client's span"
    assert root.kind == trace_pb2.Span.SPAN_KIND_SERVER
    for name in CHILDREN:
        assert named[name].parent_span_id == root.span_id, f"{name} is a child of the request span"
    assert named["upstream"].kind == trace_pb2.Span.SPAN_KIND_CLIENT
    return named


def test_chat_span_tree_continues_the_incoming_trace(gateway, mock, collector):
    trace_id, parent_id, traceparent = new_traceparent()
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES,
        extra_headers={"traceparent": traceparent, "tracestate": "e2e=1", "x-mock-completion-tokens": "7"})
    completion = raw.parse()
    assert completion.usage.completion_tokens == 7
    request_id = raw.headers["x-request-id"]

    spans = collector.trace(bytes.fromhex(trace_id), 6)
    named = check_tree(spans, trace_id, parent_id)
    root = attributes(named[REQUEST_SPAN].attributes)
    assert root["gen_ai.operation.name"] == "chat"
    assert root["gen_ai.request.model"] == "gpt-4o-mini"
    assert root["gen_ai.response.model"] == completion.model
    assert root["gen_ai.usage.input_tokens"] == chat_prompt_tokens(MESSAGES), "Sluice's exact prompt count"
    assert root["gen_ai.usage.output_tokens"] == 7
    assert root["gen_ai.response.finish_reasons"] == [completion.choices[0].finish_reason]
    assert root["http.response.status_code"] == 200
    assert root["sluice.key"] == "demo"
    assert root["sluice.request_id"] == request_id
    assert root["sluice.attempts"] == 1
    assert root["sluice.limit.requests"] == 1_000_000
    assert root["sluice.remaining.requests"] < 1_000_000
    assert named[REQUEST_SPAN].status.code != trace_pb2.Status.STATUS_CODE_ERROR
    assert attributes(named["count"].attributes)["sluice.prompt_tokens"] == chat_prompt_tokens(MESSAGES)
    assert attributes(named["admit"].attributes)["sluice.admit.result"] == "admitted"
    upstream_events = [e.name for e in named["upstream"].events]
    assert "first_byte" in upstream_events and "connect" in upstream_events, upstream_events
    # No prompt or completion text in any span.
    for span in spans:
        for v in attributes(span.attributes).values():
            assert "Trace this" not in str(v)
            assert completion.choices[0].message.content not in str(v)
    # The resource names the service as configured.
    with collector.lock:
        resources = [r for r, s in collector.spans if s.trace_id == bytes.fromhex(trace_id)]
    assert resources[0]["service.name"] == "sluice-e2e"

    # The upstream got a traceparent of the same trace whose parent is Sluice's upstream span.
    record = mock_record(mock, request_id)
    assert record["traceparent"] == f"00-{trace_id}-{named['upstream'].span_id.hex()}-01"


def test_streamed_chat_is_traced(gateway, mock, collector):
    trace_id, parent_id, traceparent = new_traceparent()
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        extra_headers={"traceparent": traceparent, "x-mock-completion-tokens": "5"})
    chunks = list(stream)
    assert chunks
    named = check_tree(collector.trace(bytes.fromhex(trace_id), 6), trace_id, parent_id)
    root = attributes(named[REQUEST_SPAN].attributes)
    assert root["gen_ai.usage.output_tokens"] == 5
    assert root["gen_ai.usage.input_tokens"] == chat_prompt_tokens(MESSAGES)
    assert root["gen_ai.response.model"] == chunks[0].model
    assert root["sluice.stream"] is True
    assert root["gen_ai.response.finish_reasons"] == [next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)]
    assert attributes(named["relay"].attributes)["sluice.stream"] is True


def test_rate_limited_request_span_has_the_denial(gateway, collector):
    c = client(gateway, TIGHT)
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    trace_id, parent_id, traceparent = new_traceparent()
    with pytest.raises(openai.RateLimitError) as refused:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, extra_headers={"traceparent": traceparent})
    assert refused.value.status_code == 429
    spans = collector.trace(bytes.fromhex(trace_id), 3)
    named = by_name(spans)
    assert set(named) == {REQUEST_SPAN, "count", "admit"}, sorted(named)
    root = attributes(named[REQUEST_SPAN].attributes)
    assert root["http.response.status_code"] == 429
    assert root["sluice.denial.kind"] == "requests"
    assert root["sluice.key"] == "tight"
    assert root["sluice.remaining.requests"] == 0
    assert attributes(named["admit"].attributes)["sluice.denial.kind"] == "requests"
    assert named[REQUEST_SPAN].parent_span_id.hex() == parent_id


def test_malformed_traceparent_is_ignored(gateway, mock, collector):
    response = httpx.post(f"{gateway.base_url}/chat/completions", timeout=10, json={"model": "gpt-4o-mini", "messages": MESSAGES},
                          headers={"authorization": f"Bearer {DEMO}", "traceparent": "00-not-a-trace-01" + "x" * 5000})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    root = collector.request_span(request_id)
    assert root is not None
    assert root.parent_span_id == b"", "a new trace"
    sent = mock_record(mock, request_id)["traceparent"]
    assert sent.startswith(f"00-{root.trace_id.hex()}-")


def test_5xx_marks_the_request_span_as_error(gateway, collector):
    trace_id, parent_id, traceparent = new_traceparent()
    with pytest.raises(openai.InternalServerError):
        client(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"traceparent": traceparent, "x-mock-status": "503"})
    # request, count, admit, settle, and one upstream span per attempt (routing.max_attempts: 3).
    spans = collector.trace(bytes.fromhex(trace_id), 7)
    attempts = [span for span in spans if span.name == "upstream"]
    named = by_name([span for span in spans if span.name != "upstream"])
    assert named[REQUEST_SPAN].status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert attributes(named[REQUEST_SPAN].attributes)["http.response.status_code"] == 503
    assert attributes(named[REQUEST_SPAN].attributes)["sluice.attempts"] == 3
    assert len(attempts) == 3
    assert all(span.status.code == trace_pb2.Status.STATUS_CODE_ERROR for span in attempts)


def test_spans_are_flushed_at_shutdown(tmp_path, mock, collector):
    """With a batch delay far longer than the test, the spans arrive only because SIGTERM flushes them."""
    keys = [{"id": "demo", "secret_sha256": sha256_hex(DEMO), "tier": "unlimited"}]
    config = gateway_config(free_port(), mock.port, keys, {"unlimited": {"requests_per_minute": 1000}})
    config["telemetry"] = {"otlp_endpoint": f"http://127.0.0.1:{collector.port}"}
    g = Gateway(tmp_path, config, env_extra={"OTEL_BSP_SCHEDULE_DELAY": "600000"})
    try:
        trace_id, _, traceparent = new_traceparent()
        client(g).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3, extra_headers={"traceparent": traceparent})
        time.sleep(0.5)
        assert collector.trace(bytes.fromhex(trace_id), 1, timeout=0) == [], "not exported before shutdown"
    finally:
        g.stop()
    assert g.proc.returncode == 0
    assert len(collector.trace(bytes.fromhex(trace_id), 6, timeout=5)) == 6


def test_export_failures_never_affect_requests_and_are_logged_once(tmp_path, mock):
    keys = [{"id": "demo", "secret_sha256": sha256_hex(DEMO), "tier": "unlimited"}]
    config = gateway_config(free_port(), mock.port, keys, {"unlimited": {"requests_per_minute": 1000}})
    config["telemetry"] = {"otlp_endpoint": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    g = Gateway(tmp_path, config, env_extra={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        c = client(g)
        for _ in range(10):
            assert c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3).choices
            time.sleep(0.1)
    finally:
        g.stop()
    assert g.proc.returncode == 0
    failures = [line for line in g.log_text().splitlines() if "telemetry:" in line]
    assert len(failures) == 1, failures


def test_unsampled_parent_is_respected(gateway, mock, collector):
    """A traceparent that says "not sampled" records nothing, yet the upstream still joins that trace."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=3, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-00"})
    request_id = raw.headers["x-request-id"]
    sent = mock_record(mock, request_id)["traceparent"]
    assert sent.startswith(f"00-{trace_id}-") and sent.endswith("-00") and parent_id not in sent
    # Spans of later requests arrive, none of this one.
    later_trace, _, later = new_traceparent()
    client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3, extra_headers={"traceparent": later})
    assert len(collector.trace(bytes.fromhex(later_trace), 6)) == 6
    assert collector.trace(bytes.fromhex(trace_id), 1, timeout=0) == []

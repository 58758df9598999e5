"""Sluice accepts what OpenAI's API accepts (issue 22).

Walks the request fields Sluice reads — model, messages and every content-part type, tools and
functions, n, max_tokens, max_completion_tokens, stream, stream_options, prompt in all its forms,
embeddings input in all its forms — with the values the published API reference allows at their
edges (null where nullable, 0 and the minimum, whole-number floats, empty arrays where allowed, the
largest documented values), and checks that each reaches the upstream (sluice-mock's request log)
and is answered 2xx, rather than being refused by Sluice. Then checks that what Sluice refuses for a
reason of its own (hostile sizes, invalid UTF-8, nesting depth, negative n) is still refused, and
never reaches the upstream.

Rule (README, Endpoints): Sluice refuses only what it must — JSON it cannot parse, fields it needs
that are missing or of a type it cannot read, sizes beyond its bounds — and forwards the rest.
"""
import json
import time

import httpx
import pytest

from conftest import Gateway, free_port, gateway_config, sha256_hex

KEY = "sk-e2e-conformance-0123456789"
CHAT = "/chat/completions"
COMPLETIONS = "/completions"
EMBEDDINGS = "/embeddings"
USER = {"role": "user", "content": "Hi"}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
FUNCTION = {"name": "lookup", "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


@pytest.fixture(scope="module")
def gateway(tmp_module, mock):
    # Requests are limited, tokens not: a `max_tokens` reserved at Sluice's bound must still pass.
    keys = [{"id": "conformance", "secret_sha256": sha256_hex(KEY), "limits": {"requests_per_minute": 1_000_000}}]
    g = Gateway(tmp_module, gateway_config(free_port(), mock.port, keys, {}))
    yield g
    g.stop()


@pytest.fixture(scope="module")
def http(gateway):
    with httpx.Client(base_url=gateway.base_url, headers={"authorization": f"Bearer {KEY}"}, timeout=10) as c:
        yield c


def chat(**fields):
    return {"model": "gpt-4o-mini", "messages": [USER], **fields}


def messages(*given):
    return chat(messages=list(given))


def completion(**fields):
    return {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", **fields}


def embedding(value, **fields):
    return {"model": "text-embedding-3-small", "input": value, **fields}


# (id, path, body, fields the mock must have logged)
ACCEPTED = [
    # model
    ("model-exact", CHAT, chat(), {"model": "gpt-4o-mini"}),
    ("model-under-a-prefix", CHAT, chat(model="gpt-4.1-nano"), {"model": "gpt-4.1-nano"}),
    # messages: every role with the content its spec allows
    ("system-string", CHAT, messages({"role": "system", "content": "Be terse.", "name": "rules"}, USER), {}),
    ("system-text-parts", CHAT, messages({"role": "system", "content": [{"type": "text", "text": "Be terse."}]}, USER), {}),
    ("developer-string", CHAT, messages({"role": "developer", "content": "Be terse."}, USER), {}),
    ("developer-text-parts", CHAT, messages({"role": "developer", "content": [{"type": "text", "text": "x"}]}, USER), {}),
    ("user-empty-string", CHAT, messages({"role": "user", "content": ""}), {}),
    ("user-name-null", CHAT, messages({"role": "user", "content": "Hi", "name": None}), {}),
    ("assistant-null-content-with-tool-calls", CHAT,
     messages(USER, {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
              {"role": "tool", "tool_call_id": "call_1", "content": "found"}), {}),
    ("assistant-no-content-with-tool-calls", CHAT,
     messages(USER, {"role": "assistant", "tool_calls": [TOOL_CALL]},
              {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "found"}]}), {}),
    ("assistant-custom-tool-call", CHAT,
     messages(USER, {"role": "assistant", "content": None,
                     "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "sql", "input": "select 1"}}]}), {}),
    ("assistant-no-content-with-function-call", CHAT,
     messages(USER, {"role": "assistant", "function_call": {"name": "lookup", "arguments": "{}"}},
              {"role": "function", "name": "lookup", "content": "found"}), {}),
    ("assistant-text-and-refusal-parts", CHAT,
     messages(USER, {"role": "assistant", "content": [{"type": "text", "text": "No."}, {"type": "refusal", "refusal": "I can't."}],
                     "refusal": None, "audio": None, "function_call": None, "tool_calls": []}, USER), {}),
    ("assistant-refusal-and-audio-id", CHAT,
     messages(USER, {"role": "assistant", "content": "x", "refusal": "I can't.", "audio": {"id": "audio_1"}}, USER), {}),
    ("function-null-content", CHAT, messages(USER, {"role": "function", "name": "lookup", "content": None}), {}),
    # every user content-part type
    ("part-text", CHAT, messages({"role": "user", "content": [{"type": "text", "text": "Hi"}]}), {}),
    ("part-image-url-detail-omitted", CHAT,
     messages({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}), {}),
    *[(f"part-image-url-detail-{detail}", CHAT,
       messages({"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG, "detail": detail}}]}), {})
      for detail in ("auto", "low", "high")],
    *[(f"part-input-audio-{fmt}", CHAT,
       messages({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": fmt}}]}), {})
      for fmt in ("wav", "mp3")],
    ("part-file-by-id", CHAT, messages({"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}), {}),
    ("part-file-inline", CHAT,
     messages({"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}]}), {}),
    ("parts-mixed", CHAT,
     messages({"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PNG}}]}), {}),
    # tools and functions
    ("tools-empty", CHAT, chat(tools=[]), {}),
    ("tools-null", CHAT, chat(tools=None, tool_choice=None), {}),
    ("tool-function", CHAT, chat(tools=[{"type": "function", "function": FUNCTION}], tool_choice="auto", parallel_tool_calls=False), {}),
    ("tool-function-minimal", CHAT, chat(tools=[{"type": "function", "function": {"name": "ping"}}], tool_choice="none"), {}),
    ("tool-function-nulls", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "ping", "description": None, "parameters": {}, "strict": None}}],
          tool_choice="required"), {}),
    ("tool-function-strict", CHAT,
     chat(tools=[{"type": "function", "function": {**FUNCTION, "strict": True}}],
          tool_choice={"type": "function", "function": {"name": "lookup"}}), {}),
    ("tool-custom", CHAT, chat(tools=[{"type": "custom", "custom": {"name": "sql", "description": "Run SQL."}}]), {}),
    ("functions-empty", CHAT, chat(functions=[]), {}),
    ("functions", CHAT, chat(functions=[FUNCTION, {"name": "ping"}], function_call="auto"), {}),
    ("function-call-by-name", CHAT, chat(functions=[FUNCTION], function_call={"name": "lookup"}), {}),
    ("response-format-json-schema", CHAT,
     chat(response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}), {}),
    ("response-format-null", CHAT, chat(response_format=None), {}),
    # n
    ("n-null", CHAT, chat(n=None), {"n": 1}),
    ("n-minimum", CHAT, chat(n=1), {"n": 1}),
    ("n-whole-float", CHAT, chat(n=1.0), {"n": 1}),
    ("n-largest", CHAT, chat(n=128, max_tokens=1), {"n": 128}),
    ("n-largest-whole-float", CHAT, chat(n=128.0, max_tokens=1), {"n": 128}),
    # max_tokens, max_completion_tokens
    ("max-tokens-null", CHAT, chat(max_tokens=None), {"max_tokens": None}),
    ("max-tokens-zero", CHAT, chat(max_tokens=0), {"max_tokens": 0}),
    ("max-tokens-one", CHAT, chat(max_tokens=1), {"max_tokens": 1}),
    ("max-tokens-whole-float", CHAT, chat(max_tokens=228.0), {"max_tokens": 228}),
    ("max-tokens-exponent", CHAT, chat(max_tokens=2e1), {"max_tokens": 20}),
    ("max-tokens-int32-max", CHAT, chat(max_tokens=2_147_483_647), {"max_tokens": 2_147_483_647}),
    ("max-tokens-above-int32", CHAT, chat(max_tokens=2_147_483_648), {"max_tokens": 2_147_483_648}),
    ("max-completion-tokens-null", CHAT, chat(max_completion_tokens=None, max_tokens=3), {"max_tokens": 3}),
    ("max-completion-tokens-zero", CHAT, chat(max_completion_tokens=0), {"max_tokens": 0}),
    ("max-completion-tokens-whole-float", CHAT, chat(max_completion_tokens=5.0, max_tokens=9), {"max_tokens": 5}),
    ("max-completion-tokens-large", CHAT, chat(max_completion_tokens=10**12), {"max_tokens": 10**12}),
    # stream, stream_options
    ("stream-null", CHAT, chat(stream=None, stream_options=None), {"stream": False}),
    ("stream-false-with-options", CHAT, chat(stream=False, stream_options={"include_usage": True}), {"stream": False}),
    ("stream-true", CHAT, chat(stream=True), {"stream": True, "include_usage": True}),
    ("stream-options-null", CHAT, chat(stream=True, stream_options=None), {"stream": True, "include_usage": True}),
    ("stream-options-empty", CHAT, chat(stream=True, stream_options={}), {"stream": True, "include_usage": True}),
    ("stream-include-usage-null", CHAT, chat(stream=True, stream_options={"include_usage": None}), {"include_usage": True}),
    ("stream-include-usage-false", CHAT, chat(stream=True, stream_options={"include_usage": False}), {"include_usage": True}),
    ("stream-include-usage-true", CHAT,
     chat(stream=True, stream_options={"include_usage": True, "include_obfuscation": False}), {"include_usage": True}),
    ("stream-max-tokens-zero", CHAT, chat(stream=True, max_tokens=0, n=2.0), {"stream": True, "max_tokens": 0, "n": 2}),
    # other fields Sluice does not read, at their edges
    ("sampling-edges", CHAT,
     chat(temperature=0, top_p=0, frequency_penalty=-2.0, presence_penalty=2.0, logprobs=True, top_logprobs=20,
          logit_bias={"50256": -100}, seed=-1, stop=None, user="", metadata={}, store=False), {}),
    ("stop-four", CHAT, chat(stop=["a", "b", "c", "d"], temperature=2, top_p=1), {}),
    # completions: prompt in every form
    ("prompt-string", COMPLETIONS, completion(), {}),
    ("prompt-empty-string", COMPLETIONS, completion(prompt=""), {}),
    ("prompt-null", COMPLETIONS, completion(prompt=None), {}),
    ("prompt-strings", COMPLETIONS, completion(prompt=["a", "b"]), {}),
    ("prompt-empty-strings", COMPLETIONS, completion(prompt=[""]), {}),
    ("prompt-token-ids", COMPLETIONS, completion(prompt=[1, 2, 3]), {}),
    ("prompt-token-id-zero", COMPLETIONS, completion(prompt=[0]), {}),
    ("prompt-token-ids-whole-floats", COMPLETIONS, completion(prompt=[1.0, 2.0]), {}),
    ("prompt-token-id-negative", COMPLETIONS, completion(prompt=[1, -1]), {}),
    ("prompt-token-id-arrays", COMPLETIONS, completion(prompt=[[1, 2], [3]]), {}),
    ("completions-max-tokens-zero-echo", COMPLETIONS, completion(max_tokens=0, echo=True, logprobs=5), {"max_tokens": 0}),
    ("completions-max-tokens-whole-float", COMPLETIONS, completion(max_tokens=228.0, n=2.0), {"max_tokens": 228, "n": 2}),
    ("completions-best-of", COMPLETIONS, completion(best_of=20, n=1, suffix=None, stop=None, echo=False), {}),
    ("completions-stream", COMPLETIONS, completion(stream=True, stream_options=None, max_tokens=3), {"stream": True}),
    # embeddings: input in every form
    ("input-string", EMBEDDINGS, embedding("hello"), {}),
    ("input-strings", EMBEDDINGS, embedding(["hello", "world"]), {}),
    ("input-strings-largest", EMBEDDINGS, embedding(["x"] * 2048), {}),
    ("input-token-ids", EMBEDDINGS, embedding([1, 2, 3]), {}),
    ("input-token-ids-largest", EMBEDDINGS, embedding([0] * 8192), {}),
    ("input-token-id-arrays", EMBEDDINGS, embedding([[1, 2], [3]]), {}),
    ("input-token-ids-whole-floats", EMBEDDINGS, embedding([[1.0], [2.0]]), {}),
    ("embeddings-options", EMBEDDINGS, embedding("x", encoding_format="base64", dimensions=1, user=""), {}),
]


def logged(mock, request_id):
    """The mock's log line for `request_id` (written as the answer ends: wait a moment for it)."""
    deadline = time.time() + 3
    while time.time() < deadline:
        for record in mock.requests():
            if record.get("request_id") == request_id:
                return record
        time.sleep(0.02)
    return None


@pytest.mark.parametrize("path, body, expected", [case[1:] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_valid_request_is_forwarded(http, mock, path, body, expected):
    r = http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    record = logged(mock, r.headers["x-request-id"])
    assert record is not None, "the upstream never saw it"
    assert record["path"] == "/v1" + path
    assert record["status"] == 200
    for field, value in expected.items():
        assert record[field] == value, field


def test_percent_encoded_model_id_is_decoded(http):
    r = http.get("/models/gpt-4o%2Dmini")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "gpt-4o-mini"
    missing = http.get("/models/no%2Dsuch")
    assert missing.status_code == 404
    assert "`no-such`" in missing.json()["error"]["message"]


def test_head_answers_the_model_routes_alike(http):
    for path in ("/models", "/models/gpt-4o-mini"):
        head = http.head(path)
        assert head.status_code == 200
        assert head.content == b""
    # Same keep-alive connection: had a HEAD answer carried a body, this answer would be garbled.
    assert http.get("/models/gpt-4o-mini").json()["id"] == "gpt-4o-mini"


def test_api_paths_check_the_key_before_the_route(gateway):
    assert httpx.post(gateway.base_url + "/audio/speech", json={}).status_code == 401
    assert httpx.get(gateway.base_url + "/chat/completions").status_code == 401
    keyed = httpx.post(gateway.base_url + "/audio/speech", json={}, headers={"authorization": f"Bearer {KEY}"})
    assert keyed.status_code == 404
    assert keyed.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(gateway.root_url + "/nowhere").status_code == 404


# Refused by Sluice for reasons of its own; never forwarded.
REFUSED = [
    ("n-negative", CHAT, json.dumps(chat(n=-1)).encode(), "n"),
    ("n-zero", CHAT, json.dumps(chat(n=0)).encode(), "n"),
    ("n-above-128", CHAT, json.dumps(chat(n=129.0)).encode(), "n"),
    ("n-fraction", CHAT, json.dumps(chat(n=1.5)).encode(), "n"),
    ("max-tokens-negative", CHAT, json.dumps(chat(max_tokens=-1)).encode(), "max_tokens"),
    ("max-tokens-fraction", COMPLETIONS, json.dumps(completion(max_tokens=0.5)).encode(), "max_tokens"),
    ("token-id-fraction", EMBEDDINGS, json.dumps(embedding([1, 2.5])).encode(), "input[1]"),
    ("messages-missing", CHAT, b'{"model": "gpt-4o-mini"}', "messages"),
    ("user-content-missing", CHAT, json.dumps(messages({"role": "user"})).encode(), "messages[0].content"),
    ("input-null", EMBEDDINGS, json.dumps(embedding(None)).encode(), "input"),
    ("invalid-utf-8", CHAT, b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xc3\x28"}]}', None),
    ("nesting-too-deep", CHAT, b'{"model": "gpt-4o-mini", "messages": [], "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", None),
]


@pytest.mark.parametrize("path, body, param", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_what_sluice_must_refuse_is_still_refused(http, mock, path, body, param):
    seen = len(mock.requests())
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert len(mock.requests()) == seen, "a refused request must not reach the upstream"

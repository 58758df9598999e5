"""End-to-end tests of sluice-mock against the official openai SDK.

Starts the built binary (env SLUICE_MOCK_BIN, default .build/debug/sluice-mock) on a free port chosen by
the kernel, talks to it with the SDK, and checks the answers and the request log it writes.

Run: .venv/bin/python -m pytest Tests/e2e/test_mock.py
"""

import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import time
import uuid

import httpx2 as httpx
import openai
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MOCK_BIN = os.environ.get("SLUICE_MOCK_BIN", str(REPO / ".build" / "debug" / "sluice-mock"))
API_KEY = "sk-test-secret-value-never-logged"

# The text the mock generates, word by word; each word is one token (checked below with tiktoken).
WORDS = [" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog"]


def mock_text(tokens):
    return "".join(WORDS[i % len(WORDS)] for i in range(tokens))


class MockServer:
    def __init__(self, tmp_path, *flags):
        self.log_path = tmp_path / "requests.jsonl"
        self.process = subprocess.Popen(
            [MOCK_BIN, "--port", "0", "--log", str(self.log_path), *flags],
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stderr.readline()  # the one "listening" line, printed once bound
        prefix = "sluice-mock listening on "
        assert line.startswith(prefix), f"unexpected first stderr line: {line!r}"
        self.base_url = line[len(prefix):].strip()
        # One plain HTTP client for raw requests (creating a client per request costs ~0.3 s here).
        self.http = httpx.Client(base_url=self.base_url)

    def client(self, **kwargs):
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=API_KEY, max_retries=0, **kwargs)

    def log_records(self, request_id=None, count=None, timeout=3.0):
        """The log's records (those with `request_id` if given), waiting until `count` are there."""
        deadline = time.monotonic() + timeout
        while True:
            records = []
            if self.log_path.exists():
                for line in self.log_path.read_text().splitlines():
                    record = json.loads(line)
                    if request_id is None or record.get("request_id") == request_id:
                        records.append(record)
            if count is None or len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.02)

    def stop(self):
        self.http.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    if not os.access(MOCK_BIN, os.X_OK):
        pytest.fail(f"sluice-mock binary not found at {MOCK_BIN}: run `swift build --product sluice-mock`")
    server = MockServer(tmp_path_factory.mktemp("mock"))
    yield server
    if server.process.poll() is None:
        server.stop()


def new_request_id():
    return "test-" + uuid.uuid4().hex


def chat_messages(text="Say something, please."):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


def estimated_prompt_tokens(messages):
    return math.ceil(sum(len(m["content"].encode()) for m in messages) / 4)


# MARK: - Chat completions


def test_chat_non_stream_content_and_usage(mock):
    client = mock.client()
    messages = chat_messages("héllo wörld")  # non-ASCII: the estimate counts UTF-8 bytes
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, extra_headers={"x-mock-completion-tokens": "5"}
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == mock_text(5)
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == estimated_prompt_tokens(messages)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5


def test_chat_default_length_and_max_tokens_cap(mock):
    client = mock.client()
    default = client.chat.completions.create(model="gpt-4o", messages=chat_messages())
    assert default.usage.completion_tokens == 16  # --completion-tokens default
    assert default.choices[0].message.content == mock_text(16)

    capped = client.chat.completions.create(model="gpt-4o", messages=chat_messages(), max_tokens=3)
    assert capped.choices[0].message.content == mock_text(3)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage.completion_tokens == 3

    capped_new_name = client.chat.completions.create(
        model="gpt-4o", messages=chat_messages(), max_completion_tokens=2,
        extra_headers={"x-mock-completion-tokens": "40"},
    )
    assert capped_new_name.usage.completion_tokens == 2


def test_chat_n_choices(mock):
    completion = mock.client().chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), n=3, extra_headers={"x-mock-completion-tokens": "4"}
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content == mock_text(4) for c in completion.choices)
    assert completion.usage.completion_tokens == 12


def test_generated_words_are_one_token_each():
    """The mock's text is an oracle for completion counting only if N words are exactly N tokens."""
    cache = REPO / ".cache" / "tokenizer" / "tiktoken-cache"
    if not cache.is_dir():
        pytest.skip("tokenizer rank files not installed (scripts/setup)")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache))
    import tiktoken

    for name in ("cl100k_base", "o200k_base"):
        encoding = tiktoken.get_encoding(name)
        for tokens in (1, 7, 8, 9, 100):
            assert len(encoding.encode(mock_text(tokens))) == tokens, (name, tokens)


def test_chat_stream_without_usage(mock):
    stream = mock.client().chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), stream=True,
        extra_headers={"x-mock-completion-tokens": "6"},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.usage is None for chunk in chunks)
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert content == mock_text(6)
    token_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(token_chunks) == 6  # one chunk per token
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_with_include_usage(mock):
    messages = chat_messages("count me")
    stream = mock.client().chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-completion-tokens": "7"},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]  # the last chunk, after the finish chunk
    assert chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert usage.completion_tokens == 7
    assert usage.prompt_tokens == estimated_prompt_tokens(messages)
    assert usage.total_tokens == usage.prompt_tokens + 7


def test_chat_stream_with_n_and_max_tokens(mock):
    stream = mock.client().chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), stream=True, n=2, max_tokens=3,
        stream_options={"include_usage": True}, extra_headers={"x-mock-completion-tokens": "10"},
    )
    texts = {0: "", 1: ""}
    finish = {}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert texts == {0: mock_text(3), 1: mock_text(3)}
    assert finish == {0: "length", 1: "length"}
    assert usage.completion_tokens == 6


# MARK: - Completions, embeddings, models


def test_completions_non_stream_and_stream(mock):
    client = mock.client()
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", extra_headers={"x-mock-completion-tokens": "4"}
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text == mock_text(4)
    assert completion.usage.completion_tokens == 4
    assert completion.usage.prompt_tokens == math.ceil(len("Once upon a time") / 4)

    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-mock-completion-tokens": "4"},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == mock_text(4)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


EXPECTED_VECTOR = [0.5, -0.25, 0.125, 0.5, -0.5, 0.25, -0.125, 0.3125]


def test_embeddings_string_and_array(mock):
    client = mock.client()
    single = client.embeddings.create(model="text-embedding-3-small", input="hello world")  # SDK asks base64
    assert len(single.data) == 1
    assert single.data[0].embedding == EXPECTED_VECTOR
    assert single.usage.prompt_tokens == math.ceil(len("hello world") / 4)
    assert single.usage.total_tokens == single.usage.prompt_tokens

    several = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "bb", "ccc"], encoding_format="float"
    )
    assert [d.index for d in several.data] == [0, 1, 2]
    assert all(d.embedding == EXPECTED_VECTOR for d in several.data)
    assert several.model == "text-embedding-3-small"


def test_models_list(mock):
    ids = [model.id for model in mock.client().models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids


def test_unknown_route_is_404_with_error_envelope(mock):
    response = mock.http.get("/v1/nothing-here")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_invalid_body_is_400(mock):
    with pytest.raises(openai.BadRequestError) as raised:
        mock.client().chat.completions.create(model="gpt-4o-mini", messages=chat_messages(), n=500)
    assert raised.value.param == "n"


def post_raw(mock, path, body):
    return mock.http.post(path, content=body, headers={"content-type": "application/json"})


def test_prompt_estimate_counts_decoded_utf8_of_escaped_json(mock):
    # json.dumps escapes non-ASCII (\u00e9, surrogate pairs for emoji), quotes, backslashes and controls;
    # the estimate must count the decoded text's UTF-8 bytes.
    contents = ["caf\u00e9 \U0001F600 \"quoted\" back\\slash\n\ttab", "\u4e2d\u6587", "plain"]
    messages = [{"role": "user", "content": contents[0]}, {"role": "assistant", "content": None},
                {"role": "user", "content": [{"type": "text", "text": contents[1]},
                                             {"type": "image_url", "image_url": {"url": "data:x"}}]},
                {"role": "user", "content": contents[2], "name": "n\u00e4me"}]
    body = json.dumps({"model": "m\u00f6del \"x\"", "messages": messages})
    response = post_raw(mock, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "m\u00f6del \"x\""
    expected = math.ceil(sum(len(text.encode()) for text in contents) / 4)
    assert answer["usage"]["prompt_tokens"] == expected


def test_completion_and_embedding_inputs_as_token_ids(mock):
    completion = post_raw(mock, "/v1/completions", json.dumps({"model": "m", "prompt": [1, 2, 3, 4, 5]}))
    assert completion.json()["usage"]["prompt_tokens"] == 5
    embeddings = post_raw(mock, "/v1/embeddings", json.dumps({"model": "e", "input": [[1, 2], [3, 4, 5]]}))
    assert len(embeddings.json()["data"]) == 2
    assert embeddings.json()["usage"]["prompt_tokens"] == 5


@pytest.mark.parametrize("body", [
    '{"model": "m", "messages": []}',
    ' {"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0.5e-3,"stop":null,"tools":[{"a":[true,false,{}]}]} ',
    '{"model": "m", "messages": [], "stream": false, "n": 1, "max_tokens": null}',
    '{"model": "m", "messages": [], "extra": "\\ud800 lone surrogate"}',
    '{"model": "m", "messages": [', '{"model": "m", "messages": []', '{"model": "m", "messages": [],}',
    '{"model": "m" "messages": []}', '{"model": "m", "messages": [01]}', '{"model": "m", "messages": [1.]}',
    '{"model": "m", "messages": [], "x": tru}', '{"model": "m", "messages": []} x', '[]', '"text"', '',
    '{"model": "m", "messages": [], "x": "\\q"}', '{"model": "m", "messages": [], "x": "\\u12"}',
    '{"model": "m", "messages": [], "x": "tab\tinside"}', '{"model": "m", "messages": [], "x": -}',
    '{"model": "m", "messages": []' + ', "x": ' + '[' * 200 + ']' * 200 + '}',
])
def test_body_validity_agrees_with_python_json(mock, body):
    try:
        parsed = json.loads(body)
        valid = isinstance(parsed, dict) and json.dumps(parsed).count("[") < 60  # the mock caps nesting
    except ValueError:
        valid = False
    response = post_raw(mock, "/v1/chat/completions", body)
    assert response.status_code == (200 if valid else 400), (body, response.text)
    if not valid:
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ('{"messages": []}', "model"),
    ('{"model": 5, "messages": []}', "model"),
    ('{"model": "m"}', "messages"),
    ('{"model": "m", "messages": [], "stream": "yes"}', "stream"),
    ('{"model": "m", "messages": [], "max_tokens": 1.5}', "max_tokens"),
    ('{"model": "m", "messages": [], "n": 0}', "n"),
])
def test_wrong_fields_are_400_naming_the_param(mock, body, param):
    response = post_raw(mock, "/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_pipelined_requests_are_answered_in_order(mock):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def chat(tokens, extra=b""):
        return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                b"x-mock-completion-tokens: %d\r\n%s\r\n" % (len(body), tokens, extra)) + body

    host, port = mock.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        # All three in one write: the mock must answer them one after the other, then close as asked.
        connection.sendall(chat(2) + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
                           + chat(1, b"Connection: close\r\n"))
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    parts = received.split(b"HTTP/1.1 ")[1:]
    assert [p.split(b"\r\n", 1)[0] for p in parts] == [b"200 OK"] * 3
    bodies = [json.loads(p.split(b"\r\n\r\n", 1)[1]) for p in parts]
    assert bodies[0]["choices"][0]["message"]["content"] == mock_text(2)
    assert bodies[1]["object"] == "list"
    assert bodies[2]["choices"][0]["message"]["content"] == mock_text(1)
    assert b"connection: close" in parts[2].lower()


# MARK: - Injected failures


def test_injected_status_500_raises_internal_server_error(mock):
    with pytest.raises(openai.InternalServerError) as raised:
        mock.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages(), extra_headers={"x-mock-status": "500"}
        )
    assert raised.value.status_code == 500
    assert raised.value.type == "server_error"


def test_injected_status_429_raises_rate_limit_error(mock):
    with pytest.raises(openai.RateLimitError) as raised:
        mock.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages(), extra_headers={"x-mock-status": "429"}
        )
    assert raised.value.code == "rate_limit_exceeded"


def test_malformed_knob_is_400(mock):
    with pytest.raises(openai.BadRequestError):
        mock.client().chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages(), extra_headers={"x-mock-token-delay-ms": "soon"}
        )


def test_drop_after_raises_mid_stream(mock):
    request_id = new_request_id()
    stream = mock.client().chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), stream=True,
        extra_headers={"x-mock-completion-tokens": "20", "x-mock-drop-after": "3", "x-request-id": request_id},
    )
    received = ""
    with pytest.raises(openai.APIConnectionError) as raised:
        for chunk in stream:
            received += chunk.choices[0].delta.content or ""
    # The SDK wraps httpx's "incomplete chunked read": the connection ended, nothing timed out.
    assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError)
    assert received == mock_text(3)
    [record] = mock.log_records(request_id, count=1)
    assert record["outcome"] == "dropped"
    assert record["completion_tokens"] == 3


def test_stall_after_holds_the_stream_until_the_client_gives_up(mock):
    request_id = new_request_id()
    client = mock.client(timeout=httpx.Timeout(1.0))
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), stream=True,
        extra_headers={"x-mock-completion-tokens": "20", "x-mock-stall-after": "2", "x-request-id": request_id},
    )
    received = ""
    with pytest.raises(openai.APITimeoutError):
        for chunk in stream:
            received += chunk.choices[0].delta.content or ""
    assert received == mock_text(2)
    stream.close()
    client.close()  # the mock logs the request once the connection is gone
    [record] = mock.log_records(request_id, count=1)
    assert record["outcome"] == "stalled"
    assert record["completion_tokens"] == 2


def test_first_byte_and_token_delays(mock):
    client = mock.client()
    started = time.monotonic()
    client.chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), extra_headers={"x-mock-first-byte-delay-ms": "300"}
    )
    assert time.monotonic() - started >= 0.3

    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), stream=True,
        extra_headers={"x-mock-completion-tokens": "5", "x-mock-token-delay-ms": "100"},
    )
    arrivals = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 5
    # The first token comes at once, each next one a delay later: chunks are flushed as produced.
    assert arrivals[0] < 0.09
    assert arrivals[-1] >= 0.4


def test_token_delays_keep_a_timetable(mock):
    """Token k is due k delays after the first, like a model generating at a fixed rate: a timer that
    fires late shortens the next wait. Waiting a full delay from each send instead adds the timer's
    lateness once per token (0.1-0.5 ms here), which over 100 tokens is far beyond the slack below."""
    tokens, delay_ms = 100, 3
    arrivals = []
    with mock.http.stream(
        "POST", "/v1/chat/completions",
        headers={"authorization": f"Bearer {API_KEY}", "x-mock-completion-tokens": str(tokens),
                 "x-mock-token-delay-ms": str(delay_ms)},
        json={"model": "gpt-4o-mini", "messages": chat_messages(), "stream": True},
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == tokens
    span_ms = (arrivals[-1] - arrivals[0]) * 1000
    scheduled_ms = (tokens - 1) * delay_ms
    # The client may see the first token late (descheduled while the machine is busy), which shortens
    # the span it measures by that much: up to one delay of it is the client's, not the mock's.
    assert span_ms >= scheduled_ms - delay_ms, f"{tokens} tokens {delay_ms} ms apart took only {span_ms:.1f} ms: tokens came early"
    assert span_ms <= scheduled_ms + 15, f"{tokens} tokens {delay_ms} ms apart took {span_ms:.1f} ms: the delays drift"


# MARK: - The request log


def test_log_records_keep_alive_connections_and_fields(mock):
    request_id = new_request_id()
    headers = {"x-request-id": request_id, "x-mock-completion-tokens": "3"}
    first_client = mock.client()
    for _ in range(3):
        first_client.chat.completions.create(
            model="gpt-4o-mini", messages=chat_messages(), max_tokens=50, extra_headers=headers
        )
    list(first_client.chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), stream=True, stream_options={"include_usage": True},
        extra_headers=headers,
    ))
    mock.client().chat.completions.create(model="gpt-4o-mini", messages=chat_messages(), extra_headers=headers)
    mock.http.get("/v1/models", headers={"x-request-id": request_id})

    records = mock.log_records(request_id, count=6)
    assert len(records) == 6
    first_conn = {r["conn"] for r in records[:4]}
    assert len(first_conn) == 1, "one SDK client reuses its keep-alive connection"
    assert records[4]["conn"] not in first_conn and records[5]["conn"] not in first_conn

    non_stream = records[0]
    assert non_stream["method"] == "POST"
    assert non_stream["path"] == "/v1/chat/completions"
    assert non_stream["model"] == "gpt-4o-mini"
    assert non_stream["stream"] is False and non_stream["include_usage"] is False
    assert non_stream["max_tokens"] == 50
    assert non_stream["n"] == 1
    assert non_stream["authorization"] is True
    assert non_stream["status"] == 200
    assert non_stream["completion_tokens"] == 3
    assert non_stream["outcome"] == "complete"
    assert non_stream["body_bytes"] > 0
    assert isinstance(non_stream["ts"], float) and abs(non_stream["ts"] - time.time()) < 60

    streamed = records[3]
    assert streamed["stream"] is True and streamed["include_usage"] is True
    assert streamed["completion_tokens"] == 3

    models = records[5]
    assert models["method"] == "GET" and models["authorization"] is False and models["model"] is None

    assert API_KEY not in mock.log_path.read_text()


def test_log_records_client_closing_a_stream_early(mock):
    request_id = new_request_id()
    stream = mock.client().chat.completions.create(
        model="gpt-4o-mini", messages=chat_messages(), stream=True,
        extra_headers={"x-mock-completion-tokens": "200", "x-mock-token-delay-ms": "20", "x-request-id": request_id},
    )
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == 3:
                break
    stream.close()  # closes the response: the SDK does not reuse a half-read connection
    [record] = mock.log_records(request_id, count=1)
    assert record["outcome"] == "client_closed"
    assert 3 <= record["completion_tokens"] < 200
    # The mock stopped producing: nothing more is logged for it, and it still answers.
    time.sleep(0.2)
    assert len(mock.log_records(request_id)) == 1
    assert mock.client().models.list().data


def test_command_line_defaults_and_body_limit(tmp_path):
    server = MockServer(tmp_path, "--completion-tokens", "3", "--max-body-bytes", "1000", "--threads", "2")
    try:
        client = server.client()
        completion = client.chat.completions.create(model="m", messages=chat_messages())
        assert completion.usage.completion_tokens == 3

        too_large = chat_messages("x" * 2000)
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="m", messages=too_large)
        assert raised.value.status_code == 413
        # Chunked upload (no content-length): refused once the limit is crossed.
        chunked = server.http.post("/v1/chat/completions", content=iter([b"{" + b" " * 600, b" " * 600 + b"}"]))
        assert chunked.status_code == 413
        statuses = [r["status"] for r in server.log_records(count=3)]
        assert statuses == [200, 413, 413]
    finally:
        assert server.stop() == 0

    (tmp_path / "failing").mkdir()
    failing = MockServer(tmp_path / "failing", "--status", "503")
    try:
        with pytest.raises(openai.InternalServerError) as raised:
            failing.client().models.list()
        assert raised.value.status_code == 503
        # A header still overrides the flag.
        assert failing.client().models.list(extra_headers={"x-mock-status": "200"}).data
    finally:
        assert failing.stop() == 0


def test_sigterm_flushes_log_and_exits_zero(tmp_path):
    server = MockServer(tmp_path)
    client = server.client()
    for _ in range(25):
        client.models.list()
    assert server.stop() == 0
    records = server.log_records()
    assert len(records) == 25
    assert all(r["outcome"] == "complete" and r["status"] == 200 for r in records)

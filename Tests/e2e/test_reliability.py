"""Failure modes that must neither hang nor mis-charge: clients that stop reading or leave, upstreams
that fail or lie about usage. Each asserts what the key is charged through its rate-limit headers."""
import json
import re
import socket
import struct
import time

import httpx
import pytest

from conftest import Gateway, free_port, gateway_config, sha256_hex

KEY = "sk-e2e-reliability-0123456789"
TOKENS_PER_MINUTE = 60_000  # refills 1,000 tokens a second: a charge of a few thousand is plain to see
# Reported completion tokens no request of these tests allows: a count a JSON reader takes (a count
# above 2^31 - 1 is not read as usage at all, and Sluice counts the answer itself).
ABSURD_COMPLETION_TOKENS = 2_000_000_000


@pytest.fixture(scope="module")
def gateway(tmp_module, mock):
    dead_port = free_port()  # nothing listens there: an upstream that is never reached
    config = gateway_config(free_port(), mock.port,
                            [{"id": "rel", "secret_sha256": sha256_hex(KEY), "tier": "t"}],
                            {"t": {"requests_per_minute": 100_000, "tokens_per_minute": TOKENS_PER_MINUTE,
                                   "max_concurrent_requests": 1}})
    config["upstreams"].append({
        "name": "dead", "base_url": f"http://127.0.0.1:{dead_port}/v1", "models": ["dead-model"],
        "connect_timeout_ms": 500,
    })
    g = Gateway(tmp_module, config)
    yield g
    g.stop()


def remaining_tokens(g) -> int:
    r = httpx.get(g.base_url + "/models", headers={"authorization": f"Bearer {KEY}"}, timeout=5)
    assert r.status_code == 200
    return int(r.headers["x-ratelimit-remaining-tokens"])


def wait_until_full(g, timeout=70.0):
    deadline = time.time() + timeout
    while remaining_tokens(g) < TOKENS_PER_MINUTE:
        assert time.time() < deadline, "the tokens bucket never refilled"
        time.sleep(0.2)


def chat(g, *, headers=None, stream=False, max_tokens=None, prompt_words=1):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * prompt_words}]}
    if stream:
        body["stream"] = True
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return httpx.post(g.base_url + "/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {KEY}", **(headers or {})})


def raw_stream_request(g, extra_headers: str, receive_buffer: int | None = None) -> socket.socket:
    """Sends a streamed chat request on a plain socket and returns it after the response head arrived."""
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    s = socket.socket()
    if receive_buffer:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    s.connect(("127.0.0.1", g.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              + f"authorization: Bearer {KEY}\r\n{extra_headers}content-length: {len(body)}\r\n\r\n".encode() + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    return s


def test_stream_abandoned_by_a_client_that_stopped_reading_frees_its_slot(gateway):
    # The client stops reading (Sluice's writes wait, the upstream transfer pauses), then leaves with
    # the answer unread: the request must end, its slot (the key allows 1 at a time) come free, and its
    # reservation be settled. Before, the request hung for good and the key got 429 from then on.
    s = raw_stream_request(gateway, "x-mock-completion-tokens: 200000\r\n", receive_buffer=4096)
    time.sleep(1.0)
    s.close()
    deadline = time.time() + 5
    while True:
        r = chat(gateway)
        if r.status_code == 200:
            break
        assert r.status_code == 429 and time.time() < deadline, f"the slot stayed taken: {r.status_code} {r.text}"
        time.sleep(0.1)
    assert "status=499" in gateway.log_text()


def test_client_leaving_a_quiet_stream_is_noticed_at_once(gateway):
    # The upstream stops sending after 2 tokens and holds the connection (its stall timeout is 5 s):
    # the client's leaving must end the request now, not at the next upstream byte or the stall timeout.
    s = raw_stream_request(gateway, "x-mock-stall-after: 2\r\n")
    time.sleep(0.3)  # the two tokens are sent; the upstream is quiet now
    left = time.time()
    # A client killed mid-stream (or one leaving with data unread) resets the connection.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    r = chat(gateway)
    while r.status_code == 429 and time.time() - left < 10:
        time.sleep(0.05)
        r = chat(gateway)
    assert r.status_code == 200
    assert time.time() - left < 2.0, "the client's leaving was noticed late"


def test_upstream_error_status_is_not_charged(gateway):
    wait_until_full(gateway)
    r = chat(gateway, headers={"x-mock-status": "500"}, prompt_words=3000, max_tokens=10)
    assert r.status_code == 500
    # Refunded whole: the bucket is full again at once (a charged prompt would leave ~3,000 tokens missing).
    assert remaining_tokens(gateway) >= TOKENS_PER_MINUTE - 100


def test_upstream_never_reached_is_not_charged(gateway):
    wait_until_full(gateway)
    r = httpx.post(gateway.base_url + "/chat/completions", timeout=30,
                   headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "dead-model", "max_tokens": 10,
                         "messages": [{"role": "user", "content": "hello " * 3000}]})
    assert r.status_code in (502, 503, 504)
    assert remaining_tokens(gateway) >= TOKENS_PER_MINUTE - 100


def test_answered_request_is_charged_its_prompt(gateway):
    # The other side of the policy: an answer is charged (else the two tests above prove nothing).
    wait_until_full(gateway)
    r = chat(gateway, prompt_words=3000, max_tokens=10)
    assert r.status_code == 200
    assert remaining_tokens(gateway) <= TOKENS_PER_MINUTE - 2500


@pytest.mark.parametrize("stream", [False, True])
def test_absurd_reported_usage_is_charged_at_the_request_bound(gateway, stream):
    # An upstream reporting 2·10^9 completion tokens locked the key's tokens bucket for hours (10^15:
    # for good, and filled its quotas). It is charged at max_tokens × n, logged and counted.
    wait_until_full(gateway)
    headers = {"x-mock-reported-completion-tokens": str(ABSURD_COMPLETION_TOKENS)}
    if stream:
        body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {KEY}", **headers}) as r:
            assert r.status_code == 200
            text = "".join(r.iter_text())
        assert "data: [DONE]" in text
    else:
        r = chat(gateway, headers=headers, max_tokens=50)
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == ABSURD_COMPLETION_TOKENS, "the client still sees what the upstream said"
    remaining = remaining_tokens(gateway)
    assert remaining >= TOKENS_PER_MINUTE - 200, f"charged far more than max_tokens: {remaining} left"
    assert "implausible usage" in gateway.log_text()
    metrics = gateway.metrics()
    assert 'sluice_implausible_usage_total{upstream="mock"}' in metrics


SMALL_KEY, OPEN_KEY = "sk-e2e-small-tpm-0123456789", "sk-e2e-unlimited-0123456789"


@pytest.fixture(scope="module")
def one_loop_gateway(tmp_module, mock):
    # One event loop: a count that blocked it would stall every other connection of the node.
    config = gateway_config(free_port(), mock.port,
                            [{"id": "small", "secret_sha256": sha256_hex(SMALL_KEY), "tier": "small"},
                             {"id": "open", "secret_sha256": sha256_hex(OPEN_KEY), "tier": "open"}],
                            {"small": {"requests_per_minute": 5, "tokens_per_minute": 20_000},
                             "open": {"requests_per_minute": 100_000}},
                            server={"event_loop_threads": 1})
    d = tmp_module / "one-loop"
    d.mkdir()
    g = Gateway(d, config)
    yield g
    g.stop()


def big_prompt_request(g, key, megabytes):
    # Varied words, so the count cannot take a shortcut through repeated text.
    words = " ".join(f"w{i % 50_000}x{i % 7}" for i in range(megabytes * 1024 * 1024 // 10))
    body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": words}]}
    return httpx.post(g.base_url + "/chat/completions", json=body, timeout=120,
                      headers={"authorization": f"Bearer {key}", "x-mock-completion-tokens": "1"})


def test_prompt_that_can_never_fit_is_refused_without_counting_and_costs_a_request(one_loop_gateway):
    g = one_loop_gateway
    # 2 MB could still be 20,000 tokens by its size: it is counted, but only until it passes the
    # key's 20,000 (the full count would be ~400,000).
    r = big_prompt_request(g, SMALL_KEY, 2)
    assert r.status_code == 429 and r.headers.get("x-should-retry") == "false", r.text
    requested = int(re.search(r"Requested (\d+)", r.json()["error"]["message"]).group(1))
    assert 20_000 < requested < 21_000, r.text
    # 12 MB cannot be fewer than 12 MiB ÷ 128 bytes = 98,304 tokens: refused without counting.
    started = time.time()
    r = big_prompt_request(g, SMALL_KEY, 12)
    assert r.status_code == 429 and r.headers.get("x-should-retry") == "false", r.text
    assert time.time() - started < 5
    # Refused work is not free: each refusal took one of the key's 5 requests a minute.
    for _ in range(3):
        assert big_prompt_request(g, SMALL_KEY, 3).status_code == 429
    r = httpx.post(g.base_url + "/chat/completions", timeout=10, headers={"authorization": f"Bearer {SMALL_KEY}"},
                   json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and "requests" in r.json()["error"]["message"], r.text


def test_large_count_does_not_stall_the_event_loop(one_loop_gateway):
    import threading
    g = one_loop_gateway
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=big_prompt_request(g, OPEN_KEY, 14)))
    worker.start()
    time.sleep(0.5)  # the body is sent and being counted
    slowest = 0.0
    while worker.is_alive():
        t = time.time()
        assert httpx.get(g.root_url + "/healthz", timeout=10).status_code == 200
        slowest = max(slowest, time.time() - t)
        time.sleep(0.05)
    worker.join()
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].json()["usage"]["prompt_tokens"] > 0
    assert slowest < 0.3, f"/healthz waited {slowest:.2f} s behind a count"


WILDCARD_KEY = "sk-e2e-wildcard-0123456789"


@pytest.fixture(scope="module")
def redis_gateway(tmp_module, mock):
    """A node on a private Redis, its upstream serving a prefix (`gpt-4o*`)."""
    import shutil
    import subprocess
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = gateway_config(free_port(), mock.port,
                            [{"id": "wild", "secret_sha256": sha256_hex(WILDCARD_KEY), "tier": "t"}],
                            {"t": {"requests_per_minute": 100_000}})
    config["redis"] = {"url": f"redis://127.0.0.1:{redis_port}"}
    d = tmp_module / "redis-node"
    d.mkdir()
    try:
        g = Gateway(d, config)
        deadline = time.time() + 10
        while httpx.get(g.root_url + "/readyz", timeout=2).json().get("limiter") != "redis":
            assert time.time() < deadline, "the node did not reach Redis"
            time.sleep(0.1)
        g.redis_port = redis_port
        yield g
        g.stop()
    finally:
        redis.kill()
        redis.wait()


def test_usage_records_name_invented_models_by_the_config_entry(redis_gateway):
    import subprocess
    g = redis_gateway
    headers = {"authorization": f"Bearer {WILDCARD_KEY}"}
    # The upstream refuses names it does not serve (here: 404 from the mock).
    for n in range(5):
        r = httpx.post(g.base_url + "/chat/completions", timeout=10, headers={**headers, "x-mock-status": "404"},
                       json={"model": f"gpt-4.1-invented-{n}", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404
    # A name the upstream answered is recorded as the client sent it.
    r = httpx.post(g.base_url + "/chat/completions", timeout=10, headers=headers,
                   json={"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    day = time.strftime("%Y-%m-%d", time.gmtime())
    deadline = time.time() + 5
    while True:
        fields = subprocess.run(["redis-cli", "-p", str(g.redis_port), "HKEYS", f"sluice:{{wild}}:usage:{day}"],
                                capture_output=True, text=True).stdout.split()
        if "gpt-4.1-mini:requests" in fields or time.time() > deadline:
            break
        time.sleep(0.1)
    assert "gpt-4.1*:requests" in fields, fields
    assert "gpt-4.1-mini:requests" in fields, fields
    assert not [f for f in fields if "invented" in f], f"invented names grew the usage records: {fields}"


MANGLE_KEY = "sk-e2e-mangled-0123456789"


@pytest.fixture(scope="module")
def short_timeouts_gateway(tmp_module, mock):
    # Short idle and body timeouts: a request cut short is answered (408) and an idle connection
    # closed within half a second, so every mangled exchange ends quickly.
    config = gateway_config(free_port(), mock.port,
                            [{"id": "mangled", "secret_sha256": sha256_hex(MANGLE_KEY), "tier": "t"}],
                            {"t": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000,
                                   "max_concurrent_requests": 1}},
                            server={"idle_timeout_ms": 300, "body_timeout_ms": 300})
    directory = tmp_module / "mangled"
    directory.mkdir()
    g = Gateway(directory, config)
    yield g
    g.stop()


def mangled_chat_requests(count: int, seed: int) -> list[bytes]:
    """Valid chat requests (plain, streamed, pipelined), then one or two random changes to most:
    bytes replaced, inserted, deleted, repeated, or the tail cut off."""
    import random
    rng = random.Random(seed)
    def request(body: dict) -> bytes:
        data = json.dumps(body).encode()
        return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"authorization: Bearer {MANGLE_KEY}\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data)
    plain = request({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hello there"}]})
    streamed = request({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "system", "content": "be brief"},
                                                                            {"role": "user", "content": "hi"}]})
    seeds = [plain, streamed, plain + plain]
    alphabet = b'\r\n :{}[]",0123456789aZ\\\x00\xff\x80'
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(3)):
            at = rng.randrange(len(data))
            kind = rng.randrange(5)
            if kind == 0:
                data[at] = rng.choice(alphabet)
            elif kind == 1:
                data.insert(at, rng.choice(alphabet))
            elif kind == 2:
                del data[at:at + 1 + rng.randrange(8)]
            elif kind == 3:
                data[at:at] = data[at:at + 1 + rng.randrange(16)]
            else:
                del data[at:]
        out.append(bytes(data))
    return out


def parse_responses(answer: bytes) -> list[int]:
    """The statuses of the complete HTTP/1.1 responses in `answer`, read by h11 (a parser nobody here
    wrote); raises if the bytes are not a sequence of well-formed responses."""
    import h11
    if not answer:
        return []  # closed unanswered (a request cut short at the end of the client's bytes)
    conn = h11.Connection(h11.CLIENT)
    statuses = []
    conn.receive_data(answer)
    while True:
        if conn.our_state is h11.IDLE:
            conn.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if event is h11.NEED_DATA:
            # All bytes read, and no response started and left unfinished.
            unread, _ = conn.trailing_data
            assert conn.their_state is not h11.SEND_BODY and not unread, f"a response cut short: {answer[-300:]!r}"
            return statuses
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            statuses.append(event.status_code)
            if event.status_code >= 400:
                content_type = dict((k.lower(), v) for k, v in event.headers).get(b"content-type", b"")
                assert content_type.startswith(b"application/json"), f"an error outside OpenAI's envelope: {event}"
        if isinstance(event, h11.EndOfMessage):
            if conn.their_state is h11.MUST_CLOSE or conn.our_state is h11.MUST_CLOSE:
                return statuses
            conn.start_next_cycle()
        if isinstance(event, h11.ConnectionClosed):
            return statuses


def test_mangled_requests_get_well_formed_answers_and_leave_no_slot_taken(short_timeouts_gateway):
    # 240 chat requests, most mangled at random (seeded), 40 connections at a time: every answer is a
    # well-formed HTTP/1.1 response (errors in OpenAI's envelope), every connection ends, and the
    # key's only concurrency slot is free afterwards (a leaked one would refuse with 429 for good).
    g = short_timeouts_gateway
    requests = mangled_chat_requests(240, seed=19)
    statuses: dict[int, int] = {}
    for start in range(0, len(requests), 40):
        sockets = []
        for data in requests[start:start + 40]:
            s = socket.create_connection(("127.0.0.1", g.port))
            s.settimeout(5)
            try:
                s.sendall(data)
            except OSError:
                pass  # the node answered and closed before all was sent
            sockets.append((data, s))
        for data, s in sockets:
            answer = bytearray()
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
            except socket.timeout:
                raise AssertionError(f"the connection was left open: sent {data[:200]!r}, got {bytes(answer[:200])!r}")
            finally:
                s.close()
            for status in parse_responses(bytes(answer)):
                statuses[status] = statuses.get(status, 0) + 1
    print("mangled requests answered, by status:", sorted(statuses.items()))
    assert statuses.get(200, 0) >= 10 and statuses.get(400, 0) >= 20, statuses
    deadline = time.time() + 5
    while True:
        r = httpx.post(g.base_url + "/chat/completions", timeout=10, headers={"authorization": f"Bearer {MANGLE_KEY}"},
                       json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        if r.status_code == 200:
            break
        assert r.status_code == 429 and time.time() < deadline, f"the slot stayed taken: {r.status_code} {r.text}"
        time.sleep(0.1)
    assert g.proc.poll() is None

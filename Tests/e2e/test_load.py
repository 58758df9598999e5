"""`sluice load` against a gateway in front of the mock: what the tool counts as admitted is what
reached the upstream (the mock's request log, told apart per key by the tool's `x-request-id`,
`load-k<key>-<n>`, which Sluice forwards), the limited key's 429s are of kind `requests` with every
window within burst + rate × window (exit 0); a window over its bound and errors over
`--max-error-rate` each fail the run (exit 3)."""
import json
import socket
import subprocess
import time

import pytest

from conftest import SLUICE_BIN, Gateway, free_port, gateway_config, sha256_hex

LIMITED = "sk-load-limited-0123456789abcdef"
HIGH = "sk-load-high-0123456789abcdef"
# Limited like LIMITED, used by one test only, so that its bucket starts full.
FRESH = "sk-load-fresh-0123456789abcdef"


@pytest.fixture(scope="module")
def gateway(tmp_module, mock):
    config = gateway_config(
        free_port(), mock.port,
        keys=[
            {"id": "limited", "secret_sha256": sha256_hex(LIMITED), "tier": "limited"},
            {"id": "high", "secret_sha256": sha256_hex(HIGH), "tier": "high"},
            {"id": "fresh", "secret_sha256": sha256_hex(FRESH), "tier": "limited"},
        ],
        tiers={
            "limited": {"requests_per_minute": 60, "requests_burst": 10},
            "high": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000},
        },
    )
    g = Gateway(tmp_module, config)
    yield g
    g.stop()


def run_load(*args, timeout=60):
    proc = subprocess.run([SLUICE_BIN, "load", "--format", "json", *args],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def logged_per_key(mock):
    counts = {0: 0, 1: 0}
    for record in mock.requests():
        request_id = record.get("request_id") or ""
        if request_id.startswith("load-k"):
            counts[int(request_id.split("-")[1][1:])] += 1
    return counts


def test_admitted_counts_agree_with_the_upstream_and_the_limit_holds(gateway, mock):
    code, report, stderr = run_load(
        "--target", gateway.root_url, "--key", LIMITED, "--key", HIGH,
        "--concurrency", "4", "--duration", "5s", "--rate", "60/s", "--burst", "10")
    assert code == 0, (stderr, report)
    limited, high = report["keys"]
    assert report["errors"] == 0
    assert limited["limits"]["requests_per_minute"] == 60
    assert limited["limits"]["requests_burst"] == 10
    # 5 s at 60/min with a burst of 10: at most 10 + 5 (+1 for the edges), at least the burst.
    assert 10 <= limited["admitted"] <= 16, limited
    assert set(limited["limited"]) == {"requests"} and limited["limited"]["requests"] > 0
    assert limited["sent"] == limited["admitted"] + limited["limited"]["requests"]
    assert high["limited"] == {} and high["admitted"] == high["sent"] > 100
    assert high["prompt_tokens"] > 0 and high["completion_tokens"] > 0
    assert not any(w["exceeded"] for key in report["keys"] for w in key["windows"])
    one_second = next(w for w in limited["windows"] if w["measure"] == "requests" and w["seconds"] == 1)
    assert one_second["bound"] == 11 and 10 <= one_second["peak"] <= 12
    assert high["latency_ms"]["p50"] <= high["latency_ms"]["p99"]

    # The mock writes its log line as it finishes each answer: wait for the last ones.
    expected = {0: limited["admitted"], 1: high["admitted"]}
    deadline = time.time() + 5
    while logged_per_key(mock) != expected and time.time() < deadline:
        time.sleep(0.1)
    assert logged_per_key(mock) == expected


def test_errors_over_the_threshold_fail_the_run(gateway):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    code, report, stderr = run_load(
        "--target", gateway.root_url, "--target", f"http://127.0.0.1:{closed_port}",
        "--key", HIGH, "--concurrency", "2", "--duration", "1s", "--max-error-rate", "0")
    assert code == 3, (stderr, report)
    (high,) = report["keys"]
    assert high["transport_errors"] > 0 and high["admitted"] > 0
    assert report["errors_over_threshold"] and not report["limit_exceeded"] and not report["passed"]


def test_a_window_over_its_bound_fails_the_run(gateway):
    # The gateway's burst is 10; told it is 2, the tool sees the first second's 10 admissions as
    # over 2 + 1 (+1 of slack).
    code, report, stderr = run_load(
        "--target", gateway.root_url, "--key", FRESH, "--concurrency", "2", "--duration", "1s",
        "--rate", "30/s", "--burst", "2")
    assert code == 3, (stderr, report)
    (fresh,) = report["keys"]
    one_second = next(w for w in fresh["windows"] if w["measure"] == "requests" and w["seconds"] == 1)
    assert one_second["bound"] == 3 and one_second["peak"] >= 10 and one_second["exceeded"]
    assert report["limit_exceeded"] and not report["errors_over_threshold"]


def test_bad_options_are_refused():
    proc = subprocess.run([SLUICE_BIN, "load", "--target", "http://127.0.0.1:1", "--key", "k",
                           "--concurrency", "10001"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "--concurrency" in proc.stderr


def test_limits_and_bursts_come_from_the_config_when_given(gateway):
    # The config says burst 10 for the limited tier; no --burst needed, and the headers are not used.
    code, report, stderr = run_load(
        "--target", gateway.root_url, "--key", HIGH, "--config", str(gateway.config_path),
        "--concurrency", "1", "--duration", "500ms")
    assert code == 0, (stderr, report)
    (high,) = report["keys"]
    assert high["limits"]["requests_per_minute"] == 1_000_000
    assert high["limits"]["tokens_per_minute"] == 100_000_000
    # A key the config does not know is refused, not silently read from the headers.
    proc = subprocess.run([SLUICE_BIN, "load", "--target", gateway.root_url, "--key", "sk-not-in-the-config-0123",
                           "--config", str(gateway.config_path), "--duration", "1s"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "is not a key of" in proc.stderr


# ---------------------------------------------------------------- --frame-stats (issue 21)

def frame_stats(target, *extra, timeout=60):
    return run_load("--target", target, "--key", HIGH, "--stream", "--frame-stats", "--duration", "2s",
                    "--ramp-up", "200ms", "--mock-completion-tokens", "6", "--mock-token-delay-ms", "10",
                    *extra, timeout=timeout)


def test_frame_stats_counts_every_frame_through_the_gateway(gateway, mock):
    code, report, stderr = frame_stats(gateway.root_url, "--concurrency", "20")
    assert code == 0, (stderr, report)
    summary = report["summary"]
    assert report["expected_frames"] == 10  # role, 6 tokens, finish, usage, [DONE]
    assert summary["started"] >= 20 and summary["completed"] == summary["started"]
    assert summary["frames"] == 10 * summary["started"]
    assert summary["missing_frames"] == 0 and summary["stalled"] == 0 and summary["errors"] == 0
    assert summary["every_frame_delivered"] and report["passed"]
    # Paced 10 ms apart by the mock: the median gap is about that, and a stream takes ≥ 50 ms.
    assert 5 <= summary["gap_p50_ms"] <= 50
    assert summary["stall_gap_ms"] == 100
    assert summary["ttft_p50_ms"] is not None and summary["ttft_p50_ms"] < 1000


def test_frame_stats_report_streams_cut_short(tmp_path):
    # A mock that closes every connection after 2 token chunks: each stream misses 10 - 3 frames
    # (role + 2 tokens arrived) and is a transport error; the run fails.
    from conftest import MOCK_BIN, Process
    port = free_port()
    dropping = Process([MOCK_BIN, "--port", str(port), "--drop-after", "2"], port, tmp_path / "mock.stderr")
    try:
        code, report, stderr = frame_stats(f"http://127.0.0.1:{port}", "--concurrency", "4")
    finally:
        dropping.stop()
    assert code == 3, (stderr, report)
    summary = report["summary"]
    assert summary["errors"] == summary["started"] > 0
    assert summary["missing_frames"] == 7 * summary["started"]
    assert not summary["every_frame_delivered"] and not report["passed"]


def test_frame_stats_counts_a_stall(mock):
    # Straight at the mock, tokens 300 ms apart against a stall threshold of 100 ms: every stream is
    # stalled, none misses a frame.
    code, report, stderr = run_load(
        "--target", f"http://127.0.0.1:{mock.port}", "--key", HIGH, "--stream", "--frame-stats",
        "--duration", "1s", "--ramp-up", "0s", "--concurrency", "2", "--mock-completion-tokens", "2",
        "--mock-token-delay-ms", "300", "--stall-gap-ms", "100")
    assert code == 3, (stderr, report)
    summary = report["summary"]
    assert summary["stalled"] == summary["started"] > 0
    assert summary["missing_frames"] == 0
    assert summary["largest_gap_ms"] >= 250


def test_frame_stats_refuses_what_it_cannot_measure():
    for args, message in [
        (["--frame-stats"], "--stream"),
        (["--stream", "--frame-stats", "--rate", "10/s"], "--rate"),
        (["--stream", "--frame-stats", "--ramp-up", "1m"], "--ramp-up"),
        (["--stream", "--mock-token-delay-ms", "-1"], "--mock-token-delay-ms"),
        (["--stream", "--stall-gap-ms", "10"], "--frame-stats"),
    ]:
        proc = subprocess.run([SLUICE_BIN, "load", "--target", "http://127.0.0.1:1", "--key", HIGH,
                               "--duration", "2s", *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)

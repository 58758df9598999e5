"""Shared fixtures for the end-to-end tests: real processes on loopback ports.

`sluice-mock` is the fake OpenAI upstream (the only fake); `sluice serve` runs with a config written
per test module. Binaries come from SLUICE_BIN / SLUICE_MOCK_BIN (scripts/test sets both).
"""
import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(ROOT / ".build/debug/sluice"))
MOCK_BIN = os.environ.get("SLUICE_MOCK_BIN", str(ROOT / ".build/debug/sluice-mock"))
TOKENIZER_DIR = os.environ.get("SLUICE_TOKENIZER_DIR", str(ROOT / ".cache/tokenizer"))


# SIGILL and SIGTRAP (Swift's traps: a failed precondition, a fatalError), SIGABRT, SIGBUS, SIGFPE, SIGSEGV.
CRASH_SIGNALS = {4, 5, 6, 7, 8, 11}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout}s")


def read_until_closed(sock) -> bytes:
    """Everything the server sends on `sock` until it closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Process:
    def __init__(self, args, port, log_path, env=None):
        self.port = port
        self.log_path = log_path
        self.stderr = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.stderr, env=env)
        wait_for_port(port, self.proc)

    def stop(self, sig_timeout=15):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=sig_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        # A crash (during the test, or at shutdown: SWIFTNIO_STRICT turns a task scheduled on a loop
        # already gone into one) fails the test with the backtrace, not only as the client errors it
        # caused — or as nothing, if it came after the last request.
        if -self.proc.returncode in CRASH_SIGNALS:
            raise AssertionError(f"{self.log_path} exited on signal {-self.proc.returncode}:\n" + self.log_text()[-4000:])

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


class Mock(Process):
    def __init__(self, tmp: Path, *flags: str):
        """A sluice-mock logging to tmp/mock-requests.jsonl; `flags` set its defaults (--status 503, …)."""
        port = free_port()
        self.requests_log = tmp / "mock-requests.jsonl"
        super().__init__([MOCK_BIN, "--port", str(port), "--log", str(self.requests_log), *flags], port, tmp / "mock.stderr")
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def requests(self):
        if not self.requests_log.exists():
            return []
        return [json.loads(line) for line in self.requests_log.read_text().splitlines() if line.strip()]


def gateway_config(port: int, mock_port: int, keys: list, tiers: dict, server: dict | None = None) -> dict:
    return {
        # Each node its own admin listener (/metrics): the default 9464 would collide between tests.
        "server": {"host": "127.0.0.1", "port": port, "admin_port": free_port(), **(server or {})},
        "tokenizer": {"directory": TOKENIZER_DIR},
        "upstreams": [{
            "name": "mock",
            "base_url": f"http://127.0.0.1:{mock_port}/v1",
            "models": ["gpt-4o-mini", "gpt-4o", "gpt-4.1*", "text-embedding-3-small", "gpt-3.5-turbo-instruct"],
            "connect_timeout_ms": 2000,
            "first_byte_timeout_ms": 5000,
            "stall_timeout_ms": 5000,
            "request_timeout_ms": 30000,
            "max_connections": 16,
        }],
        "tiers": tiers,
        "keys": keys,
    }


class Gateway(Process):
    def __init__(self, tmp: Path, config: dict, env_extra=None, config_path: Path | None = None):
        """Serves `config`, written to tmp/sluice.json; or, given `config_path`, the file already
        there (which must hold `config`)."""
        if config_path is None:
            # A config of its own gets a free admin port unless it chose one (the default, 9464,
            # would collide between tests).
            config.setdefault("server", {}).setdefault("admin_port", free_port())
            config_path = tmp / "sluice.json"
            config_path.write_text(json.dumps(config, indent=2))
        self.config_path = config_path
        port = config["server"]["port"]
        admin_port = config["server"].get("admin_port", 9464)
        env = dict(os.environ)
        env.setdefault("SLUICE_TOKENIZER_DIR", TOKENIZER_DIR)
        # A task scheduled on an event loop that has shut down crashes the node instead of being dropped
        # with a printed warning (as in scripts/test's swift test): the e2e suite's starts, reloads and
        # stops catch it.
        env.setdefault("SWIFTNIO_STRICT", "1")
        env.update(env_extra or {})
        super().__init__([SLUICE_BIN, "serve", "--config", str(self.config_path)], port, tmp / "sluice.stderr", env=env)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.root_url = f"http://127.0.0.1:{port}"
        # The admin listener: /metrics (only there), /healthz, /readyz.
        self.admin_url = f"http://127.0.0.1:{admin_port}" if admin_port else None
        if admin_port:
            wait_for_port(admin_port, self.proc)

    def metrics(self, timeout: float = 5) -> str:
        """The node's /metrics, from its admin listener."""
        import httpx
        return httpx.get(self.admin_url + "/metrics", timeout=timeout).text


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def mock(tmp_module):
    m = Mock(tmp_module)
    yield m
    m.stop()

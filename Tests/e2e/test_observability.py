"""The Grafana dashboard and the alerting rules (Config/observability) against real processes.

`test_dashboard_and_alerts_use_contract_metrics` needs nothing running: every query of the dashboard
and every alert expression names only metrics of the contract (README, Observability), each panel
sits under one of the rows, every target reads the `${DS_PROMETHEUS}` datasource variable and selects
`$job`/`$node`.

The others share one stack: redis-server, sluice-mock, two Sluice nodes on that Redis (each with its
admin listener, `server.admin_port`) and Debian's real `prometheus`, scraping both admin listeners
every second and evaluating alerts.yml every second. The nodes' upstreams: the mock, and `down`, a
port nothing listens on (its model's requests fail to connect, then its circuit opens). Traffic:
chat completions plain and streamed, text completions, a key over its request limit (429s), an
upstream reporting more completion tokens than allowed (implausible usage), requests to `down`; it
goes on in the background so that every rate has samples. Redis is frozen (SIGSTOP) for a few
seconds: the nodes' calls time out (sluice_limiter_call_failures_total) and they fall back to
`local`; then thawed.

  - `test_alert_rules_loaded`: /api/v1/rules has every rule of alerts.yml, evaluated, health ok.
  - `test_dashboard_variables`: the `job` and `node` variables' queries list the job and both nodes.
  - `test_every_dashboard_query_returns_data`: each `expr` of the dashboard, with `$job`, `$node`,
    `$__rate_interval` (30s) and `$__range` (5m) substituted, answered through /api/v1/query with a
    non-empty result holding at least one finite value. No panel is exempt: the test creates each
    panel's condition (an open circuit, failing Redis calls, 429s, an opted-in key's remaining).
  - `test_alerts_react_to_real_conditions`: alerts with a `for:` cannot fire within a test, but they
    go pending: SluiceLimiterNotShared while Redis was frozen, SluiceLimiterCallFailures after it,
    SluiceUpstreamCircuitOpen for `down`, and SluiceNodeNotReady for the second node once it is
    stopped (last: it ends the stack's second node).

About 20 s.
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from conftest import ROOT, Gateway, Mock, free_port, gateway_config, sha256_hex, wait_for_port

DASHBOARD = ROOT / "Config/observability/grafana-dashboard.json"
ALERTS = ROOT / "Config/observability/alerts.yml"

# The metrics contract (README, Observability → Metrics): counters and gauges by name, histograms by
# their base name (queried as _bucket, _sum, _count). `up` is Prometheus' own.
CONTRACT_SERIES = {
    "sluice_requests_total", "sluice_prompt_tokens_total", "sluice_completion_tokens_total",
    "sluice_rate_limited_total", "sluice_upstream_errors_total", "sluice_limiter_mode",
    "sluice_limiter_pending_settlements", "sluice_open_connections", "sluice_request_tasks",
    "sluice_config_reloads_total", "sluice_limiter_admissions_total", "sluice_limiter_calls_total",
    "sluice_implausible_usage_total", "sluice_upstream_circuit_open", "sluice_limiter_call_failures_total",
    "sluice_ready", "sluice_build_info", "sluice_key_remaining", "sluice_upstream_queued_requests",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
    "process_start_time_seconds",
}
CONTRACT_HISTOGRAMS = {
    "sluice_request_duration_seconds", "sluice_added_latency_seconds",
    "sluice_upstream_request_duration_seconds", "sluice_upstream_time_to_first_byte_seconds",
    "sluice_limiter_call_duration_seconds", "gen_ai_client_token_usage", "sluice_upstream_queue_wait_seconds",
    "gen_ai_server_request_duration_seconds", "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
}
ROWS = ["Traffic", "Latency", "Rate limiting", "Tokens", "Upstreams", "Limiter", "Process", "Readiness"]
ALERT_NAMES = {"SluiceHighErrorRate", "SluiceAddedLatencyHigh", "SluiceLimiterNotShared",
               "SluiceUpstreamCircuitOpen", "SluiceNodeNotReady", "SluiceLimiterCallFailures", "SluiceUpstreamQueueing"}

MODEL = "gpt-4o-mini"
DOWN_MODEL = "gpt-4.1-nano"
STEADY_SECRET = "sk-obs-steady-0123456789"
TIGHT_SECRET = "sk-obs-tight-0123456789"
RATE_INTERVAL = "30s"
RANGE = "5m"

needs_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("prometheus", "redis-server")),
    reason="prometheus and redis-server are needed (scripts/setup installs them)")


# ---------------------------------------------------------------------------- the files themselves

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list:
    """(panel title, expr) of every query of the dashboard, in order."""
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"]
            for target in panel.get("targets", []) if target.get("expr")]


def alert_rules() -> list:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set:
    """The metric names a PromQL expression reads: identifiers left once label matchers, quoted
    strings, ranges and label lists (`by (…)`, `on (…)`, `group_left (…)`) are removed, that are
    neither functions, keywords nor aggregations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end():].lstrip()
        if rest.startswith("("):          # a function or an aggregation
            continue
        if word in {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}:
            continue
        names.add(word)
    return names


def contract_name(name: str) -> bool:
    if name in CONTRACT_SERIES or name == "up":
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base in CONTRACT_HISTOGRAMS and base != name


def test_dashboard_and_alerts_use_contract_metrics():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"job", "node"} <= variables.keys()

    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ROWS, f"rows: {rows}"
    assert board["panels"][0]["type"] == "row", "a panel above the first row"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"

    seen = set()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", f"{panel['title']}: datasource"
            assert 'job=~"$job"' in expr and 'instance=~"$node"' in expr, f"{panel['title']}: not filtered by $job/$node: {expr}"
            names = metric_names(expr)
            assert names, f"{panel['title']}: no metric found in {expr}"
            outside = {n for n in names if not contract_name(n)}
            assert not outside, f"{panel['title']}: not in the metrics contract: {outside} in {expr}"
            seen |= {n if n in CONTRACT_SERIES else re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    missing = (CONTRACT_SERIES | CONTRACT_HISTOGRAMS) - seen
    assert not missing, f"contract metrics no panel shows: {missing}"

    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:
        outside = {n for n in metric_names(rule["expr"]) if not contract_name(n)}
        assert not outside, f"{rule['alert']}: not in the metrics contract: {outside}"
        assert rule["labels"]["severity"] in {"page", "warning"}
        assert "First response" in rule["annotations"]["description"], f"{rule['alert']}: no first response"


def test_metric_names_reader():
    assert metric_names('histogram_quantile(0.5, sum by (gen_ai_request_model, le) (rate(x_bucket{a="b{c}"}[$__rate_interval])))') == {"x_bucket"}
    assert metric_names("a / b * on (instance) group_left (version) max by (instance, version) (c) or vector(0)") == {"a", "b", "c"}


# ---------------------------------------------------------------------------- the stack

class RedisServer:
    def __init__(self, directory: Path):
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


class Prometheus:
    def __init__(self, tmp: Path, targets: list):
        self.port = free_port()
        self.dir = tmp / "prometheus"
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "sluice", "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets}]}],
        }
        config_path = self.dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        assert wait_until(lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200, 30), \
            "prometheus did not become ready:\n" + self.log_text()

    def api(self, path: str, **params) -> dict:
        r = httpx.get(self.url + "/api/v1/" + path, params=params, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{path} {params}: {r.status_code} {body}"
        return body["data"]

    def query(self, expr: str) -> list:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        return data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]

    def alerts(self) -> list:
        return self.api("alerts")["alerts"]

    def log_text(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_until(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return True
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(interval)
    return False


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis")
        self.mock = Mock(tmp)
        self.down_port = free_port()   # nothing listens there
        self.nodes = []
        self.admin_ports = []
        for index in range(2):
            port, admin_port = free_port(), free_port()
            config = gateway_config(port, self.mock.port, [
                # Its remaining limits are exposed (sluice_key_remaining): "metrics": true.
                {"id": "steady", "secret_sha256": sha256_hex(STEADY_SECRET), "metrics": True,
                 "limits": {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000}},
                {"id": "tight", "secret_sha256": sha256_hex(TIGHT_SECRET),
                 "limits": {"requests_per_minute": 2, "requests_burst": 2}},
            ], {}, server={"admin_host": "127.0.0.1", "admin_port": admin_port, "event_loop_threads": 1,
                           "upstream_threads": 1, "shutdown_grace_seconds": 2})
            mock_upstream = config["upstreams"][0]
            mock_upstream["models"] = [MODEL, "gpt-3.5-turbo-instruct"]
            config["upstreams"].append({**mock_upstream, "name": "down", "models": [DOWN_MODEL],
                                        "base_url": f"http://127.0.0.1:{self.down_port}/v1",
                                        "connect_timeout_ms": 300})
            config["redis"] = {"url": f"redis://127.0.0.1:{self.redis.port}", "on_failure": "local",
                               "fallback_node_count": 2}
            node_dir = tmp / f"node-{index + 1}"
            node_dir.mkdir(exist_ok=True)
            node = Gateway(node_dir, config)
            self.nodes.append(node)
            self.admin_ports.append(admin_port)
            wait_for_port(admin_port, node.proc)
        self.prometheus = Prometheus(tmp, [f"127.0.0.1:{p}" for p in self.admin_ports])
        self.instances = [f"127.0.0.1:{p}" for p in self.admin_ports]
        self.observed_alerts: dict = {}   # alertname → the labels of each pending/firing alert seen
        self.stop_background = threading.Event()
        self.background = threading.Thread(target=self._background, daemon=True)

    def client(self, index: int, secret: str = STEADY_SECRET) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.nodes[index].base_url, api_key=secret, max_retries=0, timeout=20)

    def limiter(self, index: int) -> str:
        return httpx.get(self.nodes[index].root_url + "/readyz", timeout=5).json().get("limiter")

    def one_round(self, index: int):
        """Plain, streamed and text completions; one request to the dead upstream."""
        client = self.client(index)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Where does the canal go?"}],
                                       max_tokens=20)
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Stream the way to the lock."}], max_tokens=12,
            stream=True, stream_options={"include_usage": True},
            extra_headers={"x-mock-completion-tokens": "8", "x-mock-token-delay-ms": "2"})
        assert any(chunk.usage for chunk in stream)
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="The sluice gate", max_tokens=8)
        try:
            client.chat.completions.create(model=DOWN_MODEL, messages=[{"role": "user", "content": "hello?"}])
        except openai.APIStatusError as failure:
            assert failure.status_code in (502, 503, 504), failure
        else:
            raise AssertionError(f"{DOWN_MODEL} answered, its upstream is not listening")

    def _background(self):
        while not self.stop_background.is_set():
            for index, node in enumerate(self.nodes):
                if node.proc.poll() is not None:
                    continue
                try:
                    self.one_round(index)
                    # The tight key keeps being refused: its 429s have a rate when the queries run.
                    self.client(index, TIGHT_SECRET).chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "more"}], max_tokens=5)
                except (openai.APIError, httpx.HTTPError, AssertionError):
                    pass
            self.note_alerts()
            self.stop_background.wait(0.2)

    def note_alerts(self):
        try:
            alerts = self.prometheus.alerts()
        except (httpx.HTTPError, AssertionError, ValueError):
            return
        for alert in alerts:
            if alert["state"] in ("pending", "firing"):
                self.observed_alerts.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])

    def start(self):
        assert wait_until(lambda: all(self.limiter(i) == "redis" for i in range(2)), 15), "the nodes did not reach Redis"
        for index in range(2):
            self.one_round(index)
            # A key over its limit: 2 requests/min, burst 2 — the third and later get 429.
            tight = self.client(index, TIGHT_SECRET)
            statuses = []
            for _ in range(5):
                try:
                    tight.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=5)
                    statuses.append(200)
                except openai.RateLimitError:
                    statuses.append(429)
            assert 429 in statuses, statuses
            # An upstream reporting more completion tokens than max_tokens allows.
            self.client(index).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=5,
                extra_headers={"x-mock-reported-completion-tokens": "500"})
        # `down`'s circuit: 5 consecutive connect failures open it.
        for _ in range(6):
            for index in range(2):
                try:
                    self.client(index).chat.completions.create(model=DOWN_MODEL, messages=[{"role": "user", "content": "hi"}])
                except openai.APIStatusError:
                    pass
        self.background.start()

        # Redis frozen: calls time out, the nodes fall back to `local` (alert pending), then thawed.
        self.redis.proc.send_signal(signal.SIGSTOP)
        try:
            went_local = wait_until(lambda: any(self.limiter(i) == "local" for i in range(2)), 15)
            # Frozen until both alerts are seen pending: the failure counter's series is created at
            # the first failure, and Prometheus sees no rate until a later scrape finds it grown (the
            # node in `local` still probes Redis, and those calls time out too).
            if went_local:
                wait_until(lambda: {"SluiceLimiterNotShared", "SluiceLimiterCallFailures"} <= self.observed_alerts.keys(),
                           20, interval=0.5)
        finally:
            self.redis.proc.send_signal(signal.SIGCONT)
        self.went_local = went_local
        assert wait_until(lambda: all(self.limiter(i) == "redis" for i in range(2)), 20), "the nodes did not return to Redis"
        # Every series scraped a few times since the traffic began.
        time.sleep(4)

    def stop(self):
        self.stop_background.set()
        if self.background.is_alive():
            self.background.join(30)
        self.prometheus.stop()
        for node in self.nodes:
            node.stop()
        self.mock.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observability")
    s = Stack(tmp)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@needs_tools
def test_alert_rules_loaded(stack):
    def evaluated():
        groups = stack.prometheus.api("rules", type="alert")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return {r["name"] for r in rules} == ALERT_NAMES and all(r["health"] == "ok" for r in rules)
    assert wait_until(evaluated, 10), json.dumps(stack.prometheus.api("rules"), indent=1)
    for group in stack.prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            assert not rule.get("lastError"), f"{rule['name']}: {rule['lastError']}"


@needs_tools
def test_dashboard_variables(stack):
    jobs = stack.prometheus.api("label/job/values", **{"match[]": "sluice_build_info"})
    assert jobs == ["sluice"], jobs
    instances = stack.prometheus.api("label/instance/values", **{"match[]": 'sluice_build_info{job=~"sluice"}'})
    assert sorted(instances) == sorted(stack.instances), instances
    # And every contract metric is there under its name.
    names = set(stack.prometheus.api("label/__name__/values"))
    missing = CONTRACT_SERIES - names
    missing |= {h for h in CONTRACT_HISTOGRAMS if not {h + "_bucket", h + "_sum", h + "_count"} <= names}
    assert not missing, f"contract metrics Prometheus did not scrape: {sorted(missing)}"


def substitute(expr: str, instances: list) -> str:
    # As Grafana formats a multi-value variable for Prometheus: regex-escaped, the backslashes doubled
    # inside the PromQL string.
    node_regex = "|".join(re.escape(i).replace("\\", "\\\\") for i in instances)
    out = (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)
           .replace("$job", "sluice").replace("$node", node_regex))
    assert "$" not in out, f"a variable left: {out}"
    return out


def finite(sample) -> bool:
    try:
        return math.isfinite(float(sample["value"][1]))
    except (KeyError, ValueError, TypeError):
        return False


@needs_tools
def test_every_dashboard_query_returns_data(stack):
    targets = dashboard_targets()
    assert len(targets) >= 40, len(targets)
    empty, not_finite = [], []
    for title, expr in targets:
        result = stack.prometheus.query(substitute(expr, stack.instances))
        if not result:
            empty.append(f"{title}: {expr}")
        elif not any(finite(sample) for sample in result):
            not_finite.append(f"{title}: {expr} → {result}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)
    assert not not_finite, "queries with no finite value:\n" + "\n".join(not_finite)

    # Some panels, beyond having data, show what the test did.
    def panel(title):
        (expr,) = [e for t, e in targets if t == title]
        return [(sample["metric"], float(sample["value"][1])) for sample in stack.prometheus.query(substitute(expr, stack.instances))]
    assert any(m.get("limit") == "requests" and v > 0 for m, v in panel("429s/s by limit")), panel("429s/s by limit")
    assert any(m.get("key") == "tight" and v > 0 for m, v in panel("Top 10 keys by 429s (dashboard range)"))
    assert ({"upstream": "down"}, 1.0) in panel("Circuit open"), panel("Circuit open")
    assert any(m.get("upstream") == "down" and m.get("kind") == "connect_failed"
               for m, _ in panel("Upstream errors/s by upstream and kind"))
    assert any(m.get("reason") == "timeout" for m, _ in panel("Limiter (Redis) call failures/s by reason"))
    assert {m["key"] for m, _ in panel("Remaining per key (opt-in keys)")} == {"steady"}, "only the opted-in key"
    modes = {m["instance"]: m["mode"] for m, _ in panel("Limiter mode by node")}
    assert modes == {i: "redis" for i in stack.instances}, modes


@needs_tools
def test_alerts_react_to_real_conditions(stack):
    """Runs last: it stops the second node."""
    assert stack.went_local, "no node fell back to `local` while Redis was frozen"
    assert wait_until(lambda: (stack.note_alerts() or True) and {
        "SluiceLimiterNotShared", "SluiceLimiterCallFailures", "SluiceUpstreamCircuitOpen"} <= stack.observed_alerts.keys(), 15), \
        f"alerts seen pending or firing: {sorted(stack.observed_alerts)}"
    assert {a.get("upstream") for a in stack.observed_alerts["SluiceUpstreamCircuitOpen"]} == {"down"}
    assert {a["mode"] for a in stack.observed_alerts["SluiceLimiterNotShared"]} == {"local"}

    second = stack.instances[1]
    stack.nodes[1].stop()
    assert wait_until(lambda: (stack.note_alerts() or True) and any(
        a.get("instance") == second for a in stack.observed_alerts.get("SluiceNodeNotReady", [])), 20), \
        f"SluiceNodeNotReady never pending for {second}: {stack.observed_alerts.get('SluiceNodeNotReady')}"
    assert all(a.get("instance") == second for a in stack.observed_alerts["SluiceNodeNotReady"])

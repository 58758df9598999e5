"""The Docker and Kubernetes files against the code: what compose or Kubernetes gives a node to stop
must cover its drain, the probes must ask Sluice's own endpoints, and the config in the ConfigMaps must
be one that Sluice accepts."""
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker/docker-compose.yml"
DOCKERFILE = ROOT / "docker/Dockerfile"
KUBERNETES = ROOT / "docker/kubernetes"
CONFIG_IN_CONTAINER = "/etc/sluice/sluice.json"
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(ROOT / ".build/debug/sluice"))


def swift_constant(path: str, pattern: str) -> int:
    """An integer constant read from the Swift source, so the test follows the code."""
    match = re.search(pattern, (ROOT / path).read_text())
    assert match, f"{pattern} not found in {path}"
    return int(match.group(1))


def duration_seconds(text) -> float:
    """A compose duration ("45s", "1m30s", "500ms", "1h") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def sluice_nodes(services: dict) -> dict:
    """The services that run `sluice serve`: the Sluice image with its own entrypoint (sluice-mock,
    from the same image, overrides it)."""
    return {name: service for name, service in services.items()
            if str(service.get("image", "")).startswith("sluice")
            and service.get("entrypoint") in (None, "sluice", ["sluice"])}


def test_compose_publishes_the_load_balancer_alone_never_the_admin_port():
    """The admin listener (/metrics) is reachable inside the compose network only: no node publishes
    a port, and nginx forwards and publishes 8080 alone."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    nodes = sluice_nodes(services)
    assert nodes
    for name, service in nodes.items():
        assert not service.get("ports"), f"{name} publishes {service.get('ports')}"
        mounts = [v.split(":") for v in service.get("volumes", []) if isinstance(v, str)]
        [source] = [m[0] for m in mounts if len(m) > 1 and m[1] == CONFIG_IN_CONTAINER]
        server = json.loads((COMPOSE.parent / source).read_text())["server"]
        admin_port = server.get("admin_port", 9464)
        assert admin_port and admin_port != server["port"]
        assert server.get("admin_host", "127.0.0.1") in ("0.0.0.0", "::"), f"{source}: the admin listener must be reachable from a Prometheus container"
        published = [str(p) for s in services.values() for p in s.get("ports", [])]
        assert not any(p.rsplit(":", 1)[-1] == str(admin_port) for p in published), published
        nginx = (COMPOSE.parent / "nginx.conf").read_text()
        assert f":{admin_port}" not in nginx, "nginx forwards the admin port"


def test_compose_gives_every_node_the_time_to_drain():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    nodes = sluice_nodes(services)
    assert nodes, "no service runs sluice serve"
    default_grace = swift_constant("Sources/SluiceCore/Config/SluiceConfig.swift",
                                   r"static let defaultShutdownGraceSeconds\s*=\s*(\d+)")
    settlements = swift_constant("Sources/SluiceServer/HTTP/HTTPServer.swift",
                                 r"static let taskDrainTimeout\s*=\s*Duration\.seconds\((\d+)\)")
    for name, service in nodes.items():
        # The config the node runs: the file mounted where the image's command reads it.
        mounts = [v.split(":") for v in service.get("volumes", []) if isinstance(v, str)]
        [source] = [m[0] for m in mounts if len(m) > 1 and m[1] == CONFIG_IN_CONTAINER]
        config = json.loads((COMPOSE.parent / source).read_text())
        grace = config.get("server", {}).get("shutdown_grace_seconds", default_grace)
        assert "stop_grace_period" in service, f"{name}: no stop_grace_period (Docker's default of 10 s cuts the drain)"
        stop = duration_seconds(service["stop_grace_period"])
        assert stop > grace + settlements, (
            f"{name}: stop_grace_period {service['stop_grace_period']} does not cover shutdown_grace_seconds "
            f"{grace} of {source} + {settlements} s of settlements")


def test_duration_parsing():
    assert duration_seconds("45s") == 45
    assert duration_seconds("1m30s") == 90
    assert duration_seconds("1h") == 3600
    assert duration_seconds("1500ms") == 1.5


# ---------------------------------------------------------------- Kubernetes (docker/kubernetes)

def settlement_seconds() -> int:
    return swift_constant("Sources/SluiceServer/HTTP/HTTPServer.swift",
                          r"static let taskDrainTimeout\s*=\s*Duration\.seconds\((\d+)\)")


def default_grace_seconds() -> int:
    return swift_constant("Sources/SluiceCore/Config/SluiceConfig.swift",
                          r"static let defaultShutdownGraceSeconds\s*=\s*(\d+)")


def k8s_documents() -> list:
    """(file, resource) for every resource of the manifests (kustomization files are not resources)."""
    documents = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.relative_to(ROOT), document))
    return documents


def k8s_resources(kind: str, name: str | None = None) -> list:
    return [(path, doc) for path, doc in k8s_documents()
            if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]


def sluice_deployment() -> dict:
    [(_, deployment)] = k8s_resources("Deployment", "sluice")
    return deployment


def sluice_container(deployment: dict) -> dict:
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sluice"]
    return container


def sluice_configs() -> list:
    """(file, config) of every ConfigMap the Deployment mounts: the base's and the demo's replacement."""
    deployment = sluice_deployment()
    names = {volume["configMap"]["name"] for volume in deployment["spec"]["template"]["spec"]["volumes"]
             if "configMap" in volume}
    configs = [(path, json.loads(doc["data"][Path(CONFIG_IN_CONTAINER).name]))
               for name in sorted(names) for path, doc in k8s_resources("ConfigMap", name)]
    assert len(configs) >= 2, f"expected the base and the demo ConfigMap, found {[str(p) for p, _ in configs]}"
    return configs


def prestop_sleep_seconds(container: dict) -> int:
    """The preStop hook's sleep: `sleep N` run in the container, or Kubernetes' own sleep action."""
    pre_stop = container.get("lifecycle", {}).get("preStop")
    assert pre_stop, "no preStop hook: the Service would still route new connections to a node whose listener is closed"
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert len(command) == 2 and command[0] in ("sleep", "/bin/sleep"), f"preStop is not a plain sleep: {command}"
    return int(command[1])


def container_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def test_kubernetes_gives_every_node_the_time_to_drain():
    deployment = sluice_deployment()
    container = sluice_container(deployment)
    period = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    sleep = prestop_sleep_seconds(container)
    assert sleep > 0
    for path, config in sluice_configs():
        grace = config.get("server", {}).get("shutdown_grace_seconds", default_grace_seconds())
        # The grace period runs from the start of preStop: the sleep, then SIGTERM and the drain.
        needed = sleep + grace + settlement_seconds()
        assert period > needed, (
            f"terminationGracePeriodSeconds {period} does not cover the preStop sleep {sleep} s + "
            f"shutdown_grace_seconds {grace} of {path} + {settlement_seconds()} s of settlements")


def test_kubernetes_probes_ask_sluice_on_its_port():
    container = sluice_container(sluice_deployment())
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz", "readiness must follow /readyz (503 while draining)"
    assert liveness["path"] == "/healthz"
    for path, config in sluice_configs():
        port = config["server"]["port"]
        assert config["server"]["host"] in ("0.0.0.0", "::"), f"{path}: the node must listen on all addresses"
        assert container_port(container, readiness["port"]) == port, f"readiness probe asks another port than {path}"
        assert container_port(container, liveness["port"]) == port, f"liveness probe asks another port than {path}"
    routes = (ROOT / "Sources/SluiceServer/Route.swift").read_text()
    assert all(f'"{route}": .{case}' in routes for route, case in
               [("/readyz", "ready"), ("/healthz", "health")]), "Sluice's routes moved"


def test_kubernetes_scrapes_metrics_on_the_admin_port_which_no_service_exposes():
    """/metrics is served by the admin listener alone (server.admin_port): the scrape annotations
    and the container port named "metrics" point there; no Service forwards it."""
    container = sluice_container(sluice_deployment())
    annotations = sluice_deployment()["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    admin_ports = set()
    for path, config in sluice_configs():
        server = config["server"]
        admin_port = server.get("admin_port", 9464)
        assert admin_port and admin_port != server["port"], f"{path}: no admin listener of its own"
        assert server.get("admin_host", "127.0.0.1") in ("0.0.0.0", "::"), f"{path}: the admin listener must be reachable from Prometheus"
        assert int(annotations["prometheus.io/port"]) == admin_port, f"{path}: the annotations scrape another port"
        assert container_port(container, "metrics") == admin_port, f"{path}: the container port \"metrics\" is not the admin port"
        admin_ports.add(admin_port)
    for _, service in k8s_resources("Service"):
        for port in service["spec"]["ports"]:
            assert port.get("targetPort") not in ("metrics", *admin_ports) and port["port"] not in admin_ports, (
                f"the Service {service['metadata']['name']} exposes the admin port")
    admin = (ROOT / "Sources/SluiceServer/AdminHandler.swift").read_text()
    assert 'case "/metrics": route = .metrics' in admin, "the admin listener's routes moved"


def test_kubernetes_mounts_the_config_where_the_node_reads_it():
    deployment = sluice_deployment()
    container = sluice_container(deployment)
    # The command line the node runs: the container's args, else the image's CMD.
    args = container.get("args") or json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M).group(1))
    assert args[args.index("--config") + 1] == CONFIG_IN_CONTAINER
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_IN_CONTAINER).parent)]
    assert len(mounts) == 1, f"nothing mounted at {Path(CONFIG_IN_CONTAINER).parent}"
    # A subPath mount never sees a ConfigMap update.
    assert "subPath" not in mounts[0]
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[0]["name"]]
    assert "configMap" in volume


def test_kubernetes_passes_every_upstream_key_from_a_secret():
    container = sluice_container(sluice_deployment())
    from_secrets = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    for path, config in sluice_configs():
        for upstream in config["upstreams"]:
            if "api_key_env" in upstream:
                assert upstream["api_key_env"] in from_secrets, (
                    f"{path}: {upstream['name']}'s api_key_env {upstream['api_key_env']} is not set from a Secret")


def test_kubernetes_services_match_the_config():
    services = {doc["metadata"]["name"]: doc for _, doc in k8s_resources("Service")}
    for path, config in sluice_configs():
        redis = urlsplit(config["redis"]["url"])
        assert redis.hostname in services, f"{path}: redis.url names no Service of the manifests"
        assert (redis.port or 6379) in [p["port"] for p in services[redis.hostname]["spec"]["ports"]], (
            f"{path}: the Service {redis.hostname} has no port {redis.port or 6379}")
        for upstream in config["upstreams"]:
            host = urlsplit(upstream["base_url"]).hostname
            if "." not in host:  # a name inside the cluster: one of the manifests' Services
                assert host in services, f"{path}: {upstream['name']} points at {host}, which is no Service here"
        [(_, hpa)] = k8s_resources("HorizontalPodAutoscaler", "sluice")
        assert config["redis"].get("fallback_node_count") == hpa["spec"]["minReplicas"], (
            f"{path}: redis.fallback_node_count differs from the HPA's minReplicas")


def test_kubernetes_runs_every_container_unprivileged():
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", DOCKERFILE.read_text()).group(1))
    assert re.search(rf"^USER {uid}(:\d+)?$", DOCKERFILE.read_text(), re.M), "the image's USER is not sluice's uid"
    workloads = k8s_resources("Deployment") + k8s_resources("StatefulSet")
    assert len(workloads) >= 3
    for path, workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, f"{path}: runAsNonRoot"
        for container in pod["containers"]:
            if container["image"].split(":")[0] == "sluice":
                assert pod["securityContext"]["runAsUser"] == uid, f"{path}: not the image's user sluice ({uid})"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, f"{path}: {container['name']}"
            assert context["readOnlyRootFilesystem"] is True, f"{path}: {container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{path}: {container['name']}"


def test_kustomizations_name_existing_files():
    kustomizations = sorted(KUBERNETES.rglob("kustomization.yaml"))
    assert len(kustomizations) == 2
    for kustomization in kustomizations:
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]:
            assert (kustomization.parent / entry).exists(), f"{kustomization.relative_to(ROOT)}: {entry} does not exist"


def test_kubernetes_configs_pass_check_config(tmp_path):
    if not Path(SLUICE_BIN).exists():
        pytest.skip(f"no sluice binary at {SLUICE_BIN} (build it, or set SLUICE_BIN): the configs were not checked")
    for path, config in sluice_configs():
        file = tmp_path / "sluice.json"
        file.write_text(json.dumps(config))
        # check-config resolves api_key_env from the environment, as the Deployment's env does.
        env = dict(os.environ)
        env.update({u["api_key_env"]: "sk-test-not-a-key" for u in config["upstreams"] if "api_key_env" in u})
        result = subprocess.run([SLUICE_BIN, "check-config", str(file)], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path}: sluice check-config refused it:\n{result.stdout}{result.stderr}"
        assert result.stdout.startswith("ok:"), result.stdout


# ---------------------------------------------------------------- Redis persistence

def redis_server_options(command: list) -> dict:
    """The `--name value` options of a redis-server command line (`--save ""` gives `save: ""`)."""
    assert command and command[0] == "redis-server", f"not a redis-server command line: {command}"
    options, words = {}, list(command[1:])
    while words:
        name = words.pop(0)
        assert name.startswith("--"), f"redis-server: {name} is not an option (a config file is not checked here)"
        options[name[2:]] = words.pop(0) if words and not words[0].startswith("--") else ""
    return options


def assert_persistent(where: str, options: dict, mounts: dict):
    """Append-only file, fsynced every second, in a directory whose volume outlives the container.
    `mounts`: mount path → whether its volume persists."""
    assert options.get("appendonly") == "yes", f"{where}: no append-only file (quotas and usage would not survive a restart)"
    assert options.get("appendfsync") == "everysec", f"{where}: appendfsync is {options.get('appendfsync')!r}, not everysec"
    directory = options.get("dir")
    assert directory, f"{where}: no --dir: the AOF would land wherever the image's working directory is"
    assert mounts.get(directory), f"{where}: {directory} is not on a volume that survives the container"


def test_compose_redis_keeps_its_data_on_a_volume():
    spec = yaml.safe_load(COMPOSE.read_text())
    redis = spec["services"]["redis"]
    named = set(spec.get("volumes") or {})
    mounts = {}
    for volume in redis.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        mounts[target] = source in named  # a named volume: `docker compose down` keeps it
    assert_persistent("docker-compose.yml redis", redis_server_options(redis["command"]), mounts)


def test_kubernetes_redis_keeps_its_data_on_a_persistent_volume():
    statefulsets = [(path, s) for path, s in k8s_resources("StatefulSet")
                    if any("redis-server" in (c.get("args") or c.get("command") or [""])[0]
                           for c in s["spec"]["template"]["spec"]["containers"])]
    assert statefulsets, "no StatefulSet runs redis-server"
    for path, statefulset in statefulsets:
        claims = {t["metadata"]["name"] for t in statefulset["spec"].get("volumeClaimTemplates", [])}
        for container in statefulset["spec"]["template"]["spec"]["containers"]:
            command = (container.get("command") or []) + (container.get("args") or [])
            mounts = {m["mountPath"]: m["name"] in claims for m in container.get("volumeMounts", [])}
            assert_persistent(f"{path} {container['name']}", redis_server_options(command), mounts)

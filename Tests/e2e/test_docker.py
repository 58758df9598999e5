"""The Docker files against the code: what compose gives a node to stop must cover its drain."""
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker/docker-compose.yml"
CONFIG_IN_CONTAINER = "/etc/sluice/sluice.json"


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

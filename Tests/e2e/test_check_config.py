"""`sluice check-config`'s exit statuses (0 ok, 1 errors, 2 warnings only) on real files, and a
SIGHUP reload that sets the port back to its running value without a restart warning."""
import json
import signal
import subprocess
import time

from conftest import SLUICE_BIN, TOKENIZER_DIR, Gateway, free_port, gateway_config, sha256_hex

KEY = "sk-e2e-check-config-0123456789"


def config(**tier_fields) -> dict:
    return gateway_config(8080, 9000, [{"id": "k", "secret_sha256": sha256_hex(KEY), "tier": "t"}],
                          {"t": {"requests_per_minute": 120, **tier_fields}})


def check(tmp_path, document: dict, tokenizer_dir: str = TOKENIZER_DIR):
    path = tmp_path / "config.json"
    # The tokenizer directory comes from the file here, not from the environment.
    document["tokenizer"]["directory"] = tokenizer_dir
    path.write_text(json.dumps(document, indent=2))
    return subprocess.run([SLUICE_BIN, "check-config", str(path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60)


def test_ok_is_0(tmp_path):
    result = check(tmp_path, config())
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("ok: 1 keys, 1 upstreams, 1 tiers")


def test_warnings_only_is_2(tmp_path):
    result = check(tmp_path, config(requests_burst=100000, tokens_per_day=1000000))
    assert result.returncode == 2, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("warning: $.tiers.t.tokens_per_day: not enforced: quotas need the shared Redis store")
    assert lines[1].startswith("warning: $.tiers.t.requests_burst: requests_burst 100000 is more than 10 × requests_per_minute 120")
    assert lines[2].startswith("ok with 2 warnings: ")


def test_errors_are_1(tmp_path):
    missing = check(tmp_path, config(requests_burst=100000), tokenizer_dir=str(tmp_path / "no-such-dir"))
    assert missing.returncode == 1, missing.stdout
    assert missing.stdout.splitlines()[0] == (
        f'error: $.tokenizer.directory: directory "{tmp_path / "no-such-dir"}" does not exist: serve would not '
        "start (scripts/setup fetches the rank files into .cache/tokenizer)")
    assert "warning: $.tiers.t.requests_burst" in missing.stdout, "warnings are printed with the errors"
    assert not [line for line in missing.stdout.splitlines() if line.startswith("ok")]

    empty = tmp_path / "empty-dir"
    empty.mkdir()
    no_files = check(tmp_path, config(), tokenizer_dir=str(empty))
    assert no_files.returncode == 1 and "rank file cl100k_base.tiktoken is missing" in no_files.stdout

    invalid = config()
    invalid["keys"][0]["tier"] = "gold"
    result = check(tmp_path, invalid)
    assert result.returncode == 1
    assert result.stdout == 'error: $.keys[0].tier: unknown tier "gold" (known: t)\n'


def test_reload_compares_with_the_running_config(tmp_path, mock):
    port = free_port()
    document = gateway_config(port, mock.port, [{"id": "k", "secret_sha256": sha256_hex(KEY), "tier": "t"}],
                              {"t": {"requests_per_minute": 10000}})
    g = Gateway(tmp_path, document)
    warning = "changes to these sections take effect only after a restart"
    try:
        def reload(change):
            change(document)
            g.config_path.write_text(json.dumps(document))
            count = g.log_text().count("config reloaded")
            g.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 10
            while time.time() < deadline and g.log_text().count("config reloaded") == count:
                time.sleep(0.05)
            assert g.log_text().count("config reloaded") == count + 1
            time.sleep(0.2)  # the warning follows the notice

        reload(lambda d: d["server"].update(port=free_port()))
        assert g.log_text().count(warning) == 1 and "sections=server" in g.log_text()
        reload(lambda d: d["server"].update(port=port))
        assert g.log_text().count(warning) == 1, "back to the running port: no restart needed"
    finally:
        g.stop()

"""Key chores on a config file (`sluice keys new/list/revoke/rotate`) and `sluice --version`:
targeted edits that keep the rest of the file byte for byte, and a rotation with no downtime
against a running gateway."""
import datetime
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from conftest import ROOT, SLUICE_BIN, TOKENIZER_DIR, Gateway, free_port, gateway_config, sha256_hex

ENV = {"SLUICE_TOKENIZER_DIR": TOKENIZER_DIR, "PATH": "/usr/bin:/bin"}
SECRET_RE = re.compile(r"^  (\S+)$", re.MULTILINE)


def sluice(*args, check=None):
    result = subprocess.run([SLUICE_BIN, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=60)
    if check is not None:
        assert result.returncode == check, (result.returncode, result.stdout, result.stderr)
    return result


def printed_secret(stdout: str) -> str:
    """The secret a command printed once: the indented line after 'Secret for key' / 'New secret'."""
    lines = stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if "ecret for key" in line)
    return lines[index + 1].strip()


def demo_config(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.json"
    shutil.copy(ROOT / "Config/sluice.json", path)
    return path


def test_version():
    result = sluice("--version", check=0)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_new_checks_the_tier_and_the_id_against_the_config(tmp_path):
    path = demo_config(tmp_path)
    before = path.read_bytes()
    bad_tier = sluice("keys", "new", "--id", "alice", "--tier", "nonexistent", "--config", path, "--write", check=1)
    assert 'unknown tier "nonexistent"' in bad_tier.stderr and "small" in bad_tier.stderr
    assert "sk-" not in bad_tier.stdout, "no secret is printed for a refused key"
    taken = sluice("keys", "new", "--id", "demo", "--tier", "small", "--config", path, check=1)
    assert 'a key "demo" already exists' in taken.stderr
    assert path.read_bytes() == before
    # Without --write the checked entry is only printed.
    ok = sluice("keys", "new", "--id", "alice", "--tier", "small", "--config", path, check=0)
    assert '"tier": "small"' in ok.stdout and path.read_bytes() == before
    # Without --config the tier is not checked (nothing to check it against).
    sluice("keys", "new", "--id", "alice", "--tier", "nonexistent", check=0)
    sluice("keys", "new", "--id", "alice", "--tier", "small", "--write", check=64)


def test_new_write_inserts_only_the_entry(tmp_path):
    path = demo_config(tmp_path)
    before = path.read_text()
    result = sluice("keys", "new", "--id", "alice", "--tier", "small", "--config", path, "--write", check=0)
    secret = printed_secret(result.stdout)
    after = path.read_text()
    # Everything up to the end of the last entry, and everything after it, is unchanged.
    end_of_last_entry = before.rindex("}", 0, before.rindex("]")) + 1
    assert after.startswith(before[:end_of_last_entry])
    assert after.endswith(before[end_of_last_entry:])
    inserted = after[end_of_last_entry:len(after) - len(before) + end_of_last_entry]
    assert inserted == (',\n    {\n      "id": "alice",\n      "secret_sha256": "%s",\n      "tier": "small"\n    }'
                        % sha256_hex(secret)), inserted
    assert secret not in after, "the secret is never written"
    assert sluice("check-config", path).returncode == 0
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_list_shows_ids_tiers_and_expiry_never_secrets(tmp_path):
    path = demo_config(tmp_path)
    text = path.read_text()
    hashes = [key["secret_sha256"] for key in json.loads(text)["keys"]]
    path.write_text(text.replace('"tier": "small",', '"tier": "small",\n      "expires_at": "2020-01-01T00:00:00Z",'))
    out = sluice("keys", "list", "--config", path, check=0).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIER", "SECRET", "EXPIRES_AT", "STATUS"]
    assert lines[1].split() == ["demo", "unlimited-demo", f"sha256:{hashes[0][:8]}…", "never", "active"]
    assert lines[2].split() == ["small", "small", f"sha256:{hashes[1][:8]}…", "2020-01-01T00:00:00Z", "expired"]
    for digest in hashes:
        assert digest not in out and digest[:9] not in out
    assert "sk-sluice" not in out


def test_revoke_removes_the_entry_only(tmp_path):
    path = demo_config(tmp_path)
    before = path.read_text()
    sluice("keys", "revoke", "nobody", "--config", path, check=1)
    sluice("keys", "revoke", "demo", "--config", path, check=0)
    after = path.read_text()
    start = before.index("    {\n      \"id\": \"demo\"")
    end = before.index("    {\n      \"id\": \"small\"")
    assert after == before[:start] + before[end:]
    assert [key["id"] for key in json.loads(after)["keys"]] == ["small"]
    sluice("keys", "revoke", "small", "--config", path, check=0)
    assert json.loads(path.read_text())["keys"] == []
    assert path.read_text().startswith(before[:before.index('"keys"')])
    assert sluice("check-config", path).returncode == 0


def test_rotate_keeps_both_secrets_until_the_old_one_expires(tmp_path, mock):
    old = "sk-e2e-rotate-old-0123456789"
    config = gateway_config(free_port(), mock.port, [{"id": "k", "secret_sha256": sha256_hex(old), "tier": "t"}],
                            {"t": {"requests_per_minute": 10000}})
    g = Gateway(tmp_path, config)
    try:
        def status(key):
            return httpx.get(g.base_url + "/models", headers={"authorization": f"Bearer {key}"}, timeout=5).status_code

        assert status(old) == 200
        before = g.config_path.read_text()
        expiry = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=8)
        result = sluice("keys", "rotate", "k", "--config", g.config_path,
                        "--old-valid-until", expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), check=0)
        new = printed_secret(result.stdout)
        after = g.config_path.read_text()
        assert new not in after and old not in after
        entry = json.loads(after)["keys"][0]
        assert entry["secret_sha256"] == sha256_hex(new)
        assert entry["previous_secrets"] == [{"secret_sha256": sha256_hex(old), "expires_at": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}]
        # Only the key's entry changed.
        assert after[:after.index('"keys"')] == before[:before.index('"keys"')]

        g.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline and status(new) != 200:
            time.sleep(0.05)
        assert status(new) == 200 and status(old) == 200, "both secrets work until the old one's expiry"
        listed = sluice("keys", "list", "--config", g.config_path, check=0).stdout
        assert re.search(r"^k\s+\(previous\)\s+sha256:\S+\s+\S+Z\s+active$", listed, re.MULTILINE), listed

        while datetime.datetime.now(datetime.timezone.utc) < expiry + datetime.timedelta(milliseconds=200):
            time.sleep(0.1)
        assert status(old) == 401, "the old secret expired"
        assert status(new) == 200
        listed = sluice("keys", "list", "--config", g.config_path, check=0).stdout
        assert re.search(r"^k\s+\(previous\)\s+sha256:\S+\s+\S+Z\s+expired$", listed, re.MULTILINE), listed

        # A second rotation drops the expired previous secret.
        again = sluice("keys", "rotate", "k", "--config", g.config_path, check=0)
        assert "Dropped 1 previous secret(s) that had expired." in again.stdout
        entry = json.loads(g.config_path.read_text())["keys"][0]
        assert [p["secret_sha256"] for p in entry["previous_secrets"]] == [sha256_hex(new)]
        assert sluice("check-config", g.config_path).returncode == 0
    finally:
        g.stop()

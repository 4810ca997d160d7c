"""`secmlops serve` as a real process: uvicorn on 127.0.0.1, the registry's production model."""

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from secmlops.audit import AuditLog

from .conftest import NAME, alias_file, load_events
from .live import SECMLOPS, TOKEN, free_port, serve_command, serve_env, stock


def test_serve_starts_verifies_and_authenticates(tmp_path, pki, policy, serving_policy, releases):
    registry = stock(tmp_path, pki, policy, releases["v1"])
    port = free_port()
    env = serve_env(tmp_path, pki, serving_policy)
    server = subprocess.Popen(
        serve_command(tmp_path, port), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(server.stdout.read().decode() if server.stdout else "no output")
                time.sleep(0.3)
        assert health.json() == {"status": "ok"}  # liveness says nothing about the install
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready", "version": "v1"}
        serving = httpx.get(f"{base}/v1/model", headers=auth).json()
        assert serving["version"] == "v1" and serving["sequence"] == 1
        assert httpx.get(f"{base}/v1/model").status_code == 401
        assert httpx.get(f"{base}/docs").status_code == 401
        assert httpx.get(f"{base}/openapi.json", headers=auth).status_code == 404  # off
        # The accepted sequence is remembered in the installation's trust state.
        state = json.loads(Path(env["SECMLOPS_TRUST_STATE"]).read_text())
        (accepted,) = state.values()  # one alias of one registry, as accepted at start
        assert list(state) == [f"{registry.uri}#{NAME}@production"]
        assert accepted["sequence"] == 1 and len(accepted["digest"]) == 64
        files = {"image": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")}
        assert httpx.post(f"{base}/v1/detect", files=files).status_code == 401
        authorised = httpx.post(f"{base}/v1/detect", files=files, headers=auth)
        assert authorised.status_code == 422  # authenticated, then refused as undecodable
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_refuses_to_start_on_an_edited_alias_record(
    tmp_path, pki, policy, serving_policy, releases
):
    """Write access to the store only: production's record edited to name an ungated version."""
    registry = stock(tmp_path, pki, policy, releases["v1"])
    registry.push(
        releases["nogate"], NAME, "nogate", pki.keyring, AuditLog(tmp_path / "audit.jsonl")
    )
    path = alias_file(tmp_path / "registry")
    record = json.loads(path.read_text())
    weights = registry.store.read_version_record(NAME, "nogate")["weights_sha256"]
    path.write_text(json.dumps({**record, "version": "nogate", "weights_sha256": weights}))
    result = subprocess.run(
        serve_command(tmp_path, free_port()), env=serve_env(tmp_path, pki, serving_policy),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "trust chain broken at the alias record" in result.stdout + result.stderr
    assert not Path(tmp_path / "trust" / "alias-sequences.json").exists()  # nothing accepted
    (fail,) = load_events(tmp_path / "audit.jsonl", "fail")
    assert fail["details"]["link"] == "alias record" and fail["details"]["kept"] is None


def test_serve_refuses_to_start_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SECMLOPS_SERVING_TOKEN"}
    result = subprocess.run(
        [SECMLOPS, "serve", "--registry", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "SECMLOPS_SERVING_TOKEN" in result.stdout + result.stderr

"""`secmlops serve` as a real process: uvicorn on 127.0.0.1, the registry's production model."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from secmlops.audit import AuditLog
from secmlops.registry import Registry

TOKEN = "cli-test-token-" + "y" * 16


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_starts_verifies_and_authenticates(tmp_path, pki, releases):
    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(releases["v1"], "pds", "v1", pki["keyring"], audit)
    registry.promote("pds", "v1", "production", pki["keyring"], audit)
    port = free_port()
    env = {**os.environ, "SECMLOPS_SERVING_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    command = [
        str(Path(sys.executable).with_name("secmlops")), "serve",
        "--registry", str(tmp_path / "registry"), "--port", str(port), "--model-name", "pds",
        "--trusted-keys", str(pki["release"]["public"]),
        "--inference-log", str(tmp_path / "inference"),
        "--audit-log", str(tmp_path / "audit.jsonl"),
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
        assert health.json()["version"] == "v1" and health.json()["status"] == "ok"
        files = {"image": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")}
        assert httpx.post(f"{base}/v1/detect", files=files).status_code == 401
        authorised = httpx.post(
            f"{base}/v1/detect", files=files, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert authorised.status_code == 422  # authenticated, then refused as undecodable
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_refuses_to_start_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SECMLOPS_SERVING_TOKEN"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("secmlops")), "serve", "--registry", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "SECMLOPS_SERVING_TOKEN" in result.stdout + result.stderr

"""`secmlops serve` as a real process on 127.0.0.1, for the tests that talk to it over TCP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from secmlops.audit import AuditLog
from secmlops.registry import Registry

from .conftest import NAME

TOKEN = "cli-test-token-" + "y" * 16
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECMLOPS = str(Path(sys.executable).with_name("secmlops"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_env(tmp_path: Path, pki: Any, serving_policy: Path) -> dict[str, str]:
    """The settings a deployment gives `secmlops serve`: keys, policy, its own trust state."""
    return {
        **os.environ, **pki.env(), "SECMLOPS_POLICY": str(serving_policy),
        "SECMLOPS_WORKDIR": str(tmp_path / "work"),
        "SECMLOPS_TRUST_STATE": str(tmp_path / "trust" / "alias-sequences.json"),
        "SECMLOPS_SERVING_TOKEN": TOKEN, "OMP_NUM_THREADS": "1",
    }  # fmt: skip


def serve_command(tmp_path: Path, port: int, *options: str) -> list[str]:
    return [
        SECMLOPS, "serve", "--registry", str(tmp_path / "registry"), "--port", str(port),
        "--model-name", NAME, "--inference-log", str(tmp_path / "inference"),
        "--audit-log", str(tmp_path / "audit.jsonl"), *options,
    ]  # fmt: skip


def stock(tmp_path: Path, pki: Any, policy: Any, release: Path) -> Registry:
    """A registry with `release` as v1 in production, moved by the approver."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    registry.push(release, NAME, "v1", pki.keyring, audit)
    registry.promote(NAME, "v1", "production", pki.keyring, audit, key=pki["approver"].key,
                     policy=policy)  # fmt: skip
    return registry


@dataclass
class Server:
    """A running `secmlops serve`."""

    process: subprocess.Popen[bytes]
    base: str
    port: int

    def output(self) -> str:
        """Everything the server printed (once it has stopped)."""
        return self.process.stdout.read().decode() if self.process.stdout else ""

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@contextmanager
def running_server(
    tmp_path: Path, env: dict[str, str], *options: str, ready_s: float = 90
) -> Iterator[Server]:
    """Start `secmlops serve` with `options`; wait until /readyz says ready; SIGTERM after."""
    port = free_port()
    process = subprocess.Popen(
        serve_command(tmp_path, port, *options), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", port)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                if httpx.get(f"{server.base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the server did not become ready:\n{server.output()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_PROBE = """
import json, sys, time, pathlib, httpx
base, stop = sys.argv[1], pathlib.Path(sys.argv[2])
seen = []
with httpx.Client(timeout=10) as client:
    while not stop.exists():
        started = time.perf_counter()
        status = client.get(base + "/healthz").status_code
        seen.append([status, time.perf_counter() - started])
        time.sleep(0.01)
print(json.dumps(seen))
"""


@contextmanager
def health_probe(base: str, folder: Path) -> Iterator[list[tuple[int, float]]]:
    """Poll /healthz from another process (the test's own threads would slow a probe in this
    one) while the block runs; the yielded list fills with (status, seconds) when it ends."""
    stop = folder / "probe-stop"
    probe = subprocess.Popen([sys.executable, "-c", _PROBE, base, str(stop)],
                             stdout=subprocess.PIPE)  # fmt: skip
    seen: list[tuple[int, float]] = []
    try:
        time.sleep(0.5)  # the probe's interpreter starts
        yield seen
    finally:
        stop.touch()
        out, _ = probe.communicate(timeout=60)
        seen.extend((status, seconds) for status, seconds in json.loads(out or b"[]"))

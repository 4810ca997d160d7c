"""Releases with their whole trust chain, a registry serving one, and request helpers.

Self-contained (the registry tests build their own releases): every release here is signed by
the roles of the shared `pki` fixture (tests/trust.py) — provenance by the trainer key naming a
dataset manifest signed by the data owner, a gate record by the gate key made under the policy
`serving_policy` writes — and promotions to production are signed by the approver key.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from secmlops.audit import AuditLog, read_audit_log
from secmlops.errors import GateFailed
from secmlops.registry import Registry
from secmlops.registry.trust_chain import SequenceState

from ..evaluation.test_gate_checks import GATE, gated_operating_point, passing_report

NAME = "pds"
TOKEN = "t0ken-for-tests-" + "x" * 16
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The digest of the (data-owner signed) dataset manifest the provenance names.
DATA_MANIFEST = hashlib.sha256(b"serving tests: the verified training data").hexdigest()
# Label -> the gate outcome its record says: a pass, a failed gate, or no record at all.
RELEASES = {"v1": "pass", "v2": "pass", "v3": "pass", "failed": "fail", "nogate": None}


def gate_and_sign(model_dir: Path, pki: Any, policy: Path, gate: str | None = "pass") -> Path:
    """Gate `model_dir` (a signed record by the gate key under `policy`; a failed gate's record
    is written all the same) and sign its provenance with the trainer key. Returns `model_dir`."""
    from secmlops.evaluation.gate import run_gate
    from secmlops.models import read_card
    from secmlops.supplychain.provenance import sign_model

    record = None
    if gate is not None:
        report = passing_report(pgd_linf_4=0.01) if gate == "fail" else passing_report()
        card = read_card(model_dir)
        report["model"]["weights_sha256"] = card.weights_sha256
        if card.operating_point is not None:  # a trained model: judged at its own threshold
            report["operating_point"] = card.operating_point.model_dump(mode="json")
        work = model_dir.parent / f"{model_dir.name}-gate"
        work.mkdir()
        (work / "report.json").write_text(json.dumps(report))
        record = work / "gate-record.json"
        with contextlib.suppress(GateFailed):
            run_gate(work / "report.json", policy, signing_key=pki["gate"].key,
                     audit_log=work / "audit.jsonl", record_path=record)  # fmt: skip
    sign_model(model_dir, pki["trainer"].key, data_manifest_digest=DATA_MANIFEST,
               data_signer=pki["data_owner"].id, gate_record=record)  # fmt: skip
    return model_dir


@pytest.fixture(scope="session")
def serving_policy(pki, tmp_path_factory) -> Path:
    """The policy in force: the repository's, with the test GATE and the pki's roles."""
    return pki.write_policy(tmp_path_factory.mktemp("serving-policy") / "policy.yaml", gate=GATE)


@pytest.fixture(scope="session")
def policy(serving_policy):
    from secmlops.policy import load_policy

    return load_policy(serving_policy)


@pytest.fixture(scope="session")
def releases(tmp_path_factory, pki, serving_policy, tiny_scenes) -> dict[str, Path]:
    """Release folders by label (see RELEASES); read-only: copy before changing one."""
    from secmlops.models import build, save
    from secmlops.monitoring.reference import profile_model

    root = tmp_path_factory.mktemp("serving-releases")
    out = {}
    for label, gate in RELEASES.items():
        model = build("compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8)
        save(model, root / label, operating_point=gated_operating_point())
        if label == "v1":  # one release carries a drift reference: serving then logs embeddings
            profile_model(root / label, tiny_scenes, "train", max_images=24)
        out[label] = gate_and_sign(root / label, pki, serving_policy, gate)
    return out


def fixed_score(model, batch):
    """Detections from the model, a constant adversarial score (screening has its own tests)."""
    return model(batch), torch.full((len(batch),), 0.25)


def jpeg(width=96, height=64, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def detect(client, data, content_type="image/jpeg", headers=AUTH):
    return client.post("/v1/detect", files={"image": ("x", data, content_type)}, headers=headers)


def logged(folder: Path, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The inference log's records once it holds `count` (they are written by the service's log
    thread after the answer leaves, so a client may read the log before they land)."""
    import time

    from secmlops.serving.inference_log import read_inference_log

    deadline = time.monotonic() + timeout_s
    while True:
        records = list(read_inference_log(folder)) if folder.exists() else []
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def alias_file(root: Path, alias: str = "production") -> Path:
    """Where the file registry under `root` keeps an alias record (what an attacker edits)."""
    return root / "models" / NAME / "aliases" / f"{alias}.json"


def load_events(audit_path: Path, decision: str | None = None) -> list[dict[str, Any]]:
    """The serving stage's load_model entries of a (verified) audit log."""
    return [
        e
        for e in read_audit_log(audit_path)
        if (e["stage"], e["action"]) == ("serving", "load_model")
        and decision in (None, e["decision"])
    ]


@pytest.fixture
def stocked(tmp_path, pki, policy, releases) -> dict[str, Any]:
    """A file registry holding every release (see RELEASES), v1 in production (the approver's
    signed move); `promote(version, alias)` and `rollback(alias)` as the operators do them."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = Registry.open(tmp_path / "registry")
    for label, folder in releases.items():
        registry.push(folder, NAME, label, pki.keyring, audit)
    # The approver's own memory of the sequences it signed (the CLI's $SECMLOPS_TRUST_STATE).
    approver_state = SequenceState(tmp_path / "approver-state.json")

    def promote(version: str, alias: str = "production") -> dict[str, Any]:
        key = pki["approver" if alias == "production" else "gate"].key
        return registry.promote(NAME, version, alias, pki.keyring, audit, key=key,
                                policy=policy, state=approver_state)  # fmt: skip

    def rollback(alias: str = "production") -> dict[str, Any]:
        return registry.rollback(NAME, alias, pki.keyring, audit, key=pki["approver"].key,
                                 policy=policy, state=approver_state)  # fmt: skip

    promote("v1")
    return {"registry": registry, "audit": audit, "tmp": tmp_path, "root": tmp_path / "registry",
            "policy": policy, "promote": promote, "rollback": rollback}  # fmt: skip


def model_source(stocked: dict[str, Any], pki: Any, policy: Any, **kwargs: Any):
    """Serving's view of the stocked registry (its own `Registry` object, its own state file)."""
    from secmlops.serving.model_source import ModelSource

    kwargs.setdefault("state", SequenceState(stocked["tmp"] / "serving-state.json"))
    return ModelSource(Registry.open(stocked["root"]), NAME, "production", pki.keyring, policy,
                       stocked["audit"], **kwargs)  # fmt: skip


@pytest.fixture
def served(stocked, pki, policy) -> Any:
    """`stocked`, and a running app following production (reload by `source.refresh()`, for
    determinism): adds "client" and "source"."""
    from secmlops.serving.app import ServingConfig, create_app
    from secmlops.serving.inference_log import InferenceLog

    source = model_source(stocked, pki, policy)
    log = InferenceLog(stocked["tmp"] / "inference")
    from secmlops.serving.engine import EngineConfig

    limits = EngineConfig(max_bytes=200_000, max_pixels=1_000_000)
    config = ServingConfig(token=TOKEN, engine=limits, reload_interval_s=0, detect=fixed_score)
    with TestClient(create_app(source, log, config)) as client:
        yield {**stocked, "client": client, "source": source}

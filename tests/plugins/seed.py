"""A real SecMLOps work dir for the UI plugin: registry, audit log, drift report, trade-off study.

Everything is produced by the library's own functions (keys, signed models, the robustness gate,
registry push/promote, Evidently drift), laid out where the library's defaults look for it under
`$SECMLOPS_WORKDIR`, so the plugin finds it with nothing but that variable and the trusted keys.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..evaluation.test_gate_checks import GATE, gated_operating_point, passing_report

MODEL = "pds"
WINDOW = "20260601T120000Z"
STUDY = "20260602-quick"
TRADEOFF_HEADER = ("configuration", "clean_map50", "robust_map50", "latency_ms")
TRADEOFF_ROWS = [
    dict(zip(TRADEOFF_HEADER, row, strict=True))
    for row in (("undefended", "0.86", "0.02", "4.1"), ("fgsm-rs-4", "0.81", "0.41", "4.2"))
]


@dataclass(frozen=True)
class Seeded:
    """Where everything went, and the environment that points the plugin at it."""

    workdir: Path
    registry: Path
    audit_log: Path
    reports_root: Path
    tradeoffs_root: Path
    public_key: Path
    keyring: Any  # the trusted keys with their roles
    versions: dict[str, str]  # version -> weights sha256
    env: dict[str, str]


def seed_workdir(workdir: Path) -> Seeded:
    """Build the work dir (about 10 s on 2 cores: two tiny models, one Evidently report).

    Registry `pds`: v1 (passed gate, promoted to production), v2 (failed gate: its promotion is
    refused and audited), v3 (tampered in the registry after its push: signature refused).
    """
    import torch

    from secmlops.audit import AuditLog
    from secmlops.errors import GateFailed, IntegrityError
    from secmlops.evaluation.gate import run_gate
    from secmlops.models import build, read_card, save
    from secmlops.policy import load_policy
    from secmlops.registry import Registry
    from secmlops.supplychain.provenance import sign_model

    from ..trust import make_pki

    workdir = Path(workdir)
    pki = make_pki(workdir / "keys")
    keyring = pki.keyring
    policy = pki.write_policy(workdir / "policy.yaml", gate=GATE)
    audit = AuditLog(workdir / "audit" / "audit.jsonl", actor="ci@secmlops")
    registry = Registry.open(workdir / "registry")

    versions: dict[str, str] = {}
    for seed, (version, passes) in enumerate((("v1", True), ("v2", False), ("v3", True))):
        torch.manual_seed(seed)
        model_dir = workdir / "models" / version
        save(
            build("compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8),
            model_dir,
            operating_point=gated_operating_point(),
        )
        digest = read_card(model_dir).weights_sha256
        report = passing_report() if passes else passing_report(pgd_linf_4=0.01)
        report["model"]["weights_sha256"] = digest
        (model_dir.parent / f"{version}-report.json").write_text(json.dumps(report))
        record = model_dir.parent / f"{version}-gate-record.json"
        with contextlib.suppress(GateFailed):  # the failed record is signed and audited too
            run_gate(model_dir.parent / f"{version}-report.json", policy,
                     signing_key=pki["gate"].key, audit_log=audit, record_path=record)  # fmt: skip
        data = {"data_manifest_digest": "sha256:" + "5" * 64, "data_signer": pki["data_owner"].id}
        sign_model(model_dir, pki["trainer"].key, gate_record=record, **data)
        registry.push(model_dir, MODEL, version, keyring, audit)
        versions[version] = digest
    approve = {"key": pki["approver"].key, "policy": load_policy(policy)}
    registry.promote(MODEL, "v1", "production", keyring, audit, **approve)
    with contextlib.suppress(IntegrityError):  # refused: v2 failed the gate
        registry.promote(MODEL, "v2", "production", keyring, audit, **approve)
    stored = workdir / "registry" / "models" / MODEL / "versions" / "v3" / "model.json"
    card = json.loads(stored.read_text())
    card["classes"] = ["person", "anything"]
    stored.chmod(0o644)
    stored.write_text(json.dumps(card))

    reports_root = workdir / "runs" / "monitoring" / "reports"
    write_drift_report(reports_root / WINDOW)
    tradeoffs_root = workdir / "runs" / "tradeoffs"
    write_study(tradeoffs_root / STUDY)
    return Seeded(
        workdir=workdir,
        registry=workdir / "registry",
        audit_log=audit.path,
        reports_root=reports_root,
        tradeoffs_root=tradeoffs_root,
        public_key=pki["trainer"].public,
        keyring=keyring,
        versions=versions,
        env={
            "SECMLOPS_WORKDIR": str(workdir),
            "SECMLOPS_TRUSTED_KEYS": pki.trusted_keys,
            "SECMLOPS_POLICY": str(policy),
        },
    )


def write_drift_report(out_dir: Path) -> None:
    """A real Evidently report: a window whose every feature moved one standard deviation."""
    import numpy as np
    import pandas as pd

    from secmlops.monitoring.drift import MonitoringThresholds, check_drift
    from secmlops.monitoring.reference import FEATURE_COLUMNS

    rng = np.random.default_rng(0)
    columns = list(FEATURE_COLUMNS)
    reference = pd.DataFrame(rng.normal(size=(60, len(columns))), columns=columns)
    window = pd.DataFrame(rng.normal(loc=1.0, size=(40, len(columns))), columns=columns)
    thresholds = MonitoringThresholds(
        max_drifted_share=0.3, drift_p_value=0.01, min_window=20,
        max_flagged_share=0.1, jump_p_value=0.01, score_threshold=None,
    )  # fmt: skip
    check_drift(reference, window, out_dir, thresholds)


def write_study(run_dir: Path) -> None:
    """A small trade-off study as the study writes it: CSV, Markdown, HTML report, one plot."""
    import csv

    run_dir.mkdir(parents=True)
    with (run_dir / "tradeoffs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TRADEOFF_HEADER))
        writer.writeheader()
        writer.writerows(TRADEOFF_ROWS)
    (run_dir / "tradeoffs.md").write_text("| configuration | robust_map50 |\n| --- | --- |\n")
    (run_dir / "report.html").write_text(
        "<!doctype html><title>Trade-offs</title><h1>Trade-off study</h1><img src='pareto.png'>"
    )
    (run_dir / "notes.txt").write_text("not a report file: never served\n")
    _write_png(run_dir / "pareto.png")


def _write_png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (40, 120, 200)).save(path)

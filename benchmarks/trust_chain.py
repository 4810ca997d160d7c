"""Cost of verifying the whole release chain, against the plain signature check it replaced.

Builds a real release (the compact detector's weights at the default widths, a card, a passed
gate record signed by the gate key, provenance signed by the trainer key naming a data owner's
manifest), pushes it to a folder registry, promotes it with the approver key, then times, best of
`--repeats` in one run:

    baseline  verify_model: the provenance signature and every file's SHA-256 (what a serving
              reload and `registry pull` checked before the chain)
    ours      verify_chain on the same folder: provenance + gate record (signature, pass,
              digest, policy binding, validity) + dataset signer's role
    ours      serving reload: `Registry.pull` through the production alias (read and verify the
              signed move and its sequence, fetch every file, check each against the version
              record, verify_chain, rename into place)
    baseline  the same fetch without any verification (copy the files out of the registry)
    ours      promotion: `Registry.promote` (fetch, verify_chain with expiry and policy, sign the
              move, compare-and-swap), alternating between two versions
    baseline  pull + promote as they were before the chain: fetch + verify_model
    ours      the OpenSSF model-signing bundle (`model.sig`, ECDSA P-256): signing it, and
              verifying it with the upstream library, beside `sign_model` and `verify_model`

    python benchmarks/trust_chain.py
    python benchmarks/trust_chain.py --repeats 20 --widths 32 64 128 256
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from secmlops.audit import AuditLog
from secmlops.evaluation.gate import run_gate
from secmlops.models import build, read_card, save
from secmlops.policy import load_policy
from secmlops.registry import Registry
from secmlops.registry.trust_chain import SequenceState, verify_chain
from secmlops.supplychain.keys import ROLES, Keyring, generate_keypair, key_id, load_private_key
from secmlops.supplychain.provenance import sign_model, verify_model

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "bench"


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` calls, in milliseconds (the first warms caches)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def gate_report(weights_sha256: str, suite: dict[str, Any], gated: list[str]) -> dict[str, Any]:
    """A robustness report that passes the repository's gate (figures well above every floor)."""
    names = set(gated) | {
        f"{kind}_linf_{level}" for level in suite["linf_eps_levels"] for kind in ("fgsm", "pgd")
    }
    attacks = {
        name: {"family": "evasion", "library": "art", "mAP50": 0.9, "seconds": 1.0}
        for name in sorted(names)
    }
    return {
        "schema": "secmlops.robustness/v1",
        "model": {"dir": "bench", "weights_sha256": weights_sha256,
                  "architecture": "compact_centernet",
                  "defence": {"adversarial": {"method": "fgsm-rs", "eps": 4 / 255}}},
        "data": {"dir": "bench", "split": "test", "images": 100, "boxes": 500},
        "suite": suite,
        "clean": {"mAP50": 0.9, "mAP50_95": 0.5},
        "attacks": attacks,
        "cross_check": {"attack": "pgd_linf_4", "art_mAP50": 0.9, "ours_mAP50": 0.9,
                        "difference": 0.0, "tolerance": 0.03, "passed": True},
        "baseline": {"dir": "bench-plain", "weights_sha256": "7" * 64, "clean_mAP50": 0.92},
        "seconds": 1.0,
    }  # fmt: skip


def make_release(root: Path, label: str, keys: dict[str, Any], policy: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    model_dir = root / label
    save(build("compact_centernet"), model_dir)
    digest = read_card(model_dir).weights_sha256
    content = yaml.safe_load(policy.read_text())
    report = gate_report(
        digest, content["gate"]["attacks"], list(content["gate"]["min_robust_map50"])
    )
    (root / f"{label}-report.json").write_text(json.dumps(report))
    record = root / f"{label}-gate-record.json"
    run_gate(root / f"{label}-report.json", policy, signing_key=keys["gate"],
             audit_log=root / "gate-audit.jsonl", record_path=record)  # fmt: skip
    sign_model(model_dir, keys["trainer"], gate_record=record,
               data_manifest_digest="sha256:" + "5" * 64,
               data_signer=key_id(keys["data_owner"].public_key()))  # fmt: skip
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="secmlops-bench-chain-") as tmp:
        root = Path(tmp)
        keys, pubs = {}, []
        for role in ROLES:
            private, public = generate_keypair(root / "keys", role)
            keys[role] = load_private_key(private)
            pubs.append(public)
        trusted = Keyring.from_paths(pubs)
        roles = {role: [key_id(keys[role].public_key())] for role in ROLES}
        keyring = trusted.with_roles(roles)
        content = yaml.safe_load((REPO_ROOT / "policy.yaml").read_text())
        content["roles"] = roles
        policy_path = root / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(content))
        policy = load_policy(policy_path)
        audit = AuditLog(root / "audit.jsonl", actor="bench")
        registry = Registry.open(root / "registry")
        releases = [make_release(root, f"v{i}", keys, policy_path, i) for i in (1, 2)]
        for release in releases:
            registry.push(release, NAME, release.name, keyring, audit)
        state = SequenceState(root / "trust-state.json")
        promote = {"key": keys["approver"], "policy": policy, "state": state}
        registry.promote(NAME, "v1", "production", keyring, audit, **promote)
        size_mb = sum(p.stat().st_size for p in releases[0].iterdir()) / 1e6
        record = registry.store.read_version_record(NAME, "v1")
        assert record is not None

        def fetch_only() -> None:
            dest = root / "fetched"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            for file_name in record["files"]:
                registry.store.fetch_file(NAME, "v1", file_name, dest / file_name)

        def fetch_and_verify_model() -> None:
            fetch_only()
            verify_model(root / "fetched", keyring)

        def reload() -> None:
            registry.pull(NAME, "production", root / "served", keyring, policy,
                          audit=None, state=state, overwrite=True)  # fmt: skip

        target = iter(["v2", "v1"] * (args.repeats + 1))

        def promotion() -> None:
            registry.promote(NAME, next(target), "production", keyring, audit, **promote)

        from secmlops.supplychain.openssf import (
            generate_openssf_keypair,
            load_openssf_key,
            sign_openssf,
            verify_openssf,
        )

        ec_private, ec_public = generate_openssf_keypair(root / "keys", "trainer-openssf")
        ec_key, ec_pem = load_openssf_key(ec_private), ec_public.read_bytes()
        bundled = root / "bundled"
        shutil.copytree(releases[0], bundled)
        rows = [
            ("verify_model (provenance signature + file digests)",
             best_of(args.repeats, lambda: verify_model(releases[0], keyring))),
            ("verify_chain (+ gate record, policy, validity, dataset role)",
             best_of(args.repeats, lambda: verify_chain(
                 releases[0], keyring, policy, registry_weights=record["weights_sha256"]))),
            ("fetch only (copy the files, no verification)", best_of(args.repeats, fetch_only)),
            ("fetch + verify_model (a reload before the chain)",
             best_of(args.repeats, fetch_and_verify_model)),
            ("serving reload: pull via the signed alias, whole chain",
             best_of(args.repeats, reload)),
            ("promotion: fetch + chain + sign move + CAS (audited)",
             best_of(args.repeats, promotion)),
            ("sign_model (provenance over every file)",
             best_of(args.repeats, lambda: sign_model(bundled, keys["trainer"]))),
            ("OpenSSF bundle: sign_openssf (model-signing, ECDSA P-256)",
             best_of(args.repeats, lambda: sign_openssf(bundled, ec_key))),
            ("OpenSSF bundle: verify_openssf (upstream verifier)",
             best_of(args.repeats, lambda: verify_openssf(bundled, ec_pem))),
        ]  # fmt: skip
    base = rows[0][1]
    print(f"release: {size_mb:.1f} MB (compact CenterNet, default widths); best of {args.repeats}")
    print(f"{'check':<64} {'ms':>9} {'x verify_model':>15}")
    for label, ms in rows:
        print(f"{label:<64} {ms:>9.2f} {ms / base:>15.2f}")
    reload_ms, before_ms = rows[4][1], rows[3][1]
    print(f"serving reload with the chain / before it (fetch + verify_model): "
          f"{reload_ms / before_ms:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

"""Releases carry an OpenSSF model-signing bundle (`model.sig`) that the upstream `model_signing`
tool verifies offline, CLI and Python API alike; our chain verifies it too, with the key the
trainer's provenance names. A changed byte in any file fails both verifiers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from secmlops.audit import AuditLog
from secmlops.errors import IntegrityError
from secmlops.evaluation.gate import run_gate
from secmlops.models import build, read_card, save
from secmlops.policy import load_policy
from secmlops.registry import Registry
from secmlops.registry.trust_chain import ChainBroken, check_openssf_bundle
from secmlops.supplychain.openssf import (
    SIGNATURE_FILE,
    generate_openssf_keypair,
    load_openssf_key,
    sign_openssf,
    verify_openssf,
)
from secmlops.supplychain.provenance import sign_model, verify_model

from ..evaluation.test_gate_checks import GATE, gated_operating_point, passing_report

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


@pytest.fixture(scope="module")
def openssf_keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openssf-keys")
    private, public = generate_openssf_keypair(folder, "trainer-openssf", passphrase="pw")
    other, other_public = generate_openssf_keypair(folder, "attacker")
    return {"key": load_openssf_key(private, "pw"), "public": public,
            "other": load_openssf_key(other), "other_public": other_public}  # fmt: skip


@pytest.fixture(scope="module")
def pulled(tmp_path_factory, pki, openssf_keys):
    """A release signed with the bundle, pushed, promoted, and pulled through the chain."""
    root = tmp_path_factory.mktemp("openssf-release")
    policy_path = pki.write_policy(root / "policy.yaml", gate=GATE)
    policy = load_policy(policy_path)
    model_dir = root / "model"
    save(build("compact_centernet", input_size=(64, 64), widths=(8, 8, 8, 8), neck_width=8),
         model_dir, operating_point=gated_operating_point())  # fmt: skip
    report = passing_report()
    report["model"]["weights_sha256"] = read_card(model_dir).weights_sha256
    (root / "report.json").write_text(json.dumps(report))
    record = root / "gate-record.json"
    run_gate(root / "report.json", policy_path, signing_key=pki["gate"].key,
             audit_log=root / "gate-audit.jsonl", record_path=record)  # fmt: skip
    sign_model(model_dir, pki["trainer"].key, gate_record=record,
               data_manifest_digest="sha256:" + "5" * 64, data_signer=pki["data_owner"].id,
               openssf_key=openssf_keys["key"])  # fmt: skip
    audit = AuditLog(root / "audit.jsonl", actor="tester")
    registry = Registry.open(root / "registry")
    registry.push(model_dir, "pds", "v1", pki.keyring, audit)
    registry.promote("pds", "v1", "production", pki.keyring, audit, key=pki["approver"].key,
                     policy=policy)  # fmt: skip
    pulled = registry.pull("pds", "production", root / "pulled", pki.keyring, policy, audit=audit)
    return pulled.model.model_dir


def upstream_cli(model_dir: Path, public_key: Path) -> subprocess.CompletedProcess[str]:
    """`model_signing verify key`, as a user outside SecMLOps runs it (docs/supply_chain.md)."""
    return subprocess.run(
        [str(MODEL_SIGNING), "verify", "key", str(model_dir),
         "--signature", str(model_dir / SIGNATURE_FILE), "--public_key", str(public_key)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_pulled_release_verifies_with_the_upstream_cli_and_python_api(pulled, openssf_keys, pki):
    assert (pulled / SIGNATURE_FILE).is_file()
    result = upstream_cli(pulled, openssf_keys["public"])
    assert result.returncode == 0 and "Verification succeeded" in result.stdout, result.stderr
    from model_signing import verifying

    verifying.Config().use_elliptic_key_verifier(public_key=openssf_keys["public"]).verify(
        pulled, pulled / SIGNATURE_FILE
    )
    # The provenance lists the bundle as a subject and names the key that made it.
    verified = verify_model(pulled, pki.keyring)
    assert SIGNATURE_FILE in verified.subjects
    assert verified.predicate["openssf"]["public_key"] == openssf_keys["public"].read_text()


@pytest.mark.parametrize("name", ["model.safetensors", "model.json", "gate-record.json"])
def test_a_changed_byte_fails_the_upstream_verifier_and_ours(
    pulled, openssf_keys, pki, tmp_path, name
):
    copy = tmp_path / "release"
    shutil.copytree(pulled, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    assert upstream_cli(copy, openssf_keys["public"]).returncode != 0
    with pytest.raises(IntegrityError, match="OpenSSF model signature does not verify"):
        verify_openssf(copy, openssf_keys["public"].read_bytes())
    with pytest.raises(IntegrityError, match="changed since it was signed"):
        verify_model(copy, pki.keyring)


def test_a_bundle_by_another_key_than_the_provenance_names_is_refused(
    pulled, openssf_keys, pki, tmp_path
):
    copy = tmp_path / "release"
    shutil.copytree(pulled, copy)
    verified = verify_model(copy, pki.keyring)
    sign_openssf(copy, openssf_keys["other"])  # the attacker's own, valid bundle
    assert upstream_cli(copy, openssf_keys["other_public"]).returncode == 0
    with pytest.raises(ChainBroken, match=r"openssf bundle: .*does not verify"):
        check_openssf_bundle(copy, verified.subjects, verified.predicate)
    # ...and a bundle no provenance vouches for is refused even when it verifies.
    unnamed = {**verified.predicate, "openssf": None}
    with pytest.raises(ChainBroken, match="the provenance names no key for it"):
        check_openssf_bundle(copy, verified.subjects, unnamed)

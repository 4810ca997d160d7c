"""Signed model provenance: what a model is, and where it came from, bound under one signature.

Threat: a model swapped or edited between training and serving (weights, card, an extra file
such as a pickle dropped beside them), a model presented with someone else's provenance, or a
model that never went through the pipeline (other data, other code, no gate). The defence is an
in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md)
whose subjects are the digests of EVERY artifact file of the model directory, and whose predicate
records the inputs: the verified data manifest and its signer, the DVC revision, the git commit,
the training parameters, the gate record, and the environment lock. It is signed with Ed25519 in
a DSSE envelope (`provenance.json`) by the trainer role's key.

`verify_model` checks the signature against trusted keys first, then that the directory holds
exactly the signed files with exactly the signed digests: a changed byte, a missing file or an
unsigned extra file is refused before any weight is read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secmlops.errors import IntegrityError, ModelError
from secmlops.fsutil import atomic_write_bytes
from secmlops.models import CARD_FILE, WEIGHTS_FILE, read_card, sha256_file
from secmlops.supplychain.dsse import (
    envelope_from_bytes,
    envelope_to_bytes,
    sign_envelope,
    verify_envelope_signer,
)
from secmlops.supplychain.keys import Keyring

PROVENANCE_FILE = "provenance.json"
GATE_RECORD_FILE = "gate-record.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://secmlops.dev/model-provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# Training state, not part of the released artifact: never signed, never shipped.
NOT_ARTIFACTS = frozenset({PROVENANCE_FILE, "checkpoints"})
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class VerifiedModel:
    """What a successful `verify_model` vouches for."""

    model_dir: Path
    weights_sha256: str
    signer: str  # the trusted key that signed the provenance
    subjects: dict[str, str]  # artifact file name -> sha256 hex
    predicate: dict[str, Any]


def artifact_files(model_dir: Path) -> list[str]:
    """Names of the files that make up the released model (sorted; subfolders refused).

    Raises:
        IntegrityError: the directory holds a subfolder other than `checkpoints/`, or a
            symbolic link (both could smuggle unsigned content past a file-by-file check).
    """
    names = []
    for path in sorted(Path(model_dir).iterdir()):
        if path.name in NOT_ARTIFACTS or path.name.startswith("."):
            continue
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"{path}: not a regular file; a model directory holds files only")
        names.append(path.name)
    return names


def sign_model(
    model_dir: Path,
    private_key: Ed25519PrivateKey,
    *,
    data_manifest_digest: str | None = None,
    data_signer: str | None = None,
    dvc_revision: str | None = None,
    gate_record: Path | None = None,
    environment_lock: Path | None = None,
    policy_digest: str | None = None,
    image_commit: str | None = None,
    openssf_key: Any = None,
) -> Path:
    """Write `provenance.json`: a signed in-toto statement over every artifact file.

    Args:
        model_dir: the trained model (`model.safetensors`, `model.json`).
        private_key: the trainer role's key.
        data_manifest_digest, data_signer: the data version the data stage verified
            (`verify_signed_dataset`'s `manifest_digest` and `signer`).
        dvc_revision: the data registry revision the data was pulled at.
        gate_record: the passed gate record; copied into the directory (so it is one of the
            signed subjects and travels with the model to the registry).
        environment_lock: the pinned dependency file (default: the project's constraints.txt).
        policy_digest: the digest of the effective policy the run was gated under.
        image_commit: the commit of an installed image (`Settings.git_commit`), recorded when
            the code is not a git checkout.
        openssf_key: the trainer's ECDSA P-256 key (`openssf.load_openssf_key`): also write
            an OpenSSF model-signing bundle (`model.sig`), signed first, listed among the
            subjects, its public key named in the predicate.

    Returns:
        The provenance file.

    Raises:
        ModelError: the directory is not a complete model (card or weights missing or changed).
    """
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file() or sha256_file(weights) != card.weights_sha256:
        raise ModelError(f"{model_dir}: weights missing or not the ones {CARD_FILE} describes")
    if gate_record is not None and (
        Path(gate_record).resolve() != (model_dir / GATE_RECORD_FILE).resolve()
    ):
        shutil.copyfile(gate_record, model_dir / GATE_RECORD_FILE)
    openssf = None
    if openssf_key is not None:
        from secmlops.supplychain.openssf import SIGNATURE_FILE, public_pem_of, sign_openssf

        sign_openssf(model_dir, openssf_key)
        openssf = {"signature": SIGNATURE_FILE, "public_key": public_pem_of(openssf_key).decode()}
    subjects = {name: sha256_file(model_dir / name) for name in artifact_files(model_dir)}
    lock = Path(environment_lock) if environment_lock else REPO_ROOT / "constraints.txt"
    training = {k: v for k, v in card.training.items() if k != "history"}
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in subjects.items()],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": {"architecture": card.architecture, "weights_sha256": card.weights_sha256},
            "data": {"manifest_digest": data_manifest_digest, "signer": data_signer},
            "dvc_revision": dvc_revision,
            "code": code_version(image_commit),
            "policy_digest": policy_digest,
            "training": training,
            "gate_record_sha256": subjects.get(GATE_RECORD_FILE),
            "openssf": openssf,
            "environment": {
                "lock_file": lock.name,
                "lock_sha256": sha256_file(lock) if lock.is_file() else None,
                "python": platform.python_version(),
            },
            "signed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    out = model_dir / PROVENANCE_FILE
    atomic_write_bytes(out, envelope_to_bytes(sign_envelope(payload, PAYLOAD_TYPE, private_key)))
    return out


def verify_model(model_dir: Path, keyring: Keyring) -> VerifiedModel:
    """Check a model directory against its signed provenance; nothing is loaded before this.

    Raises:
        IntegrityError: no provenance (unsigned), a bad or untrusted signature, a statement of the
            wrong kind, or a file that is missing, changed, or not signed at all.
    """
    model_dir = Path(model_dir)
    path = model_dir / PROVENANCE_FILE
    if not model_dir.is_dir():
        raise IntegrityError(f"{model_dir}: model directory not found")
    if not path.is_file():
        raise IntegrityError(f"{model_dir}: unsigned model (no {PROVENANCE_FILE}); refusing it")
    verified = verify_envelope_signer(
        envelope_from_bytes(path.read_bytes(), str(path)), keyring, PAYLOAD_TYPE,
        role="trainer", what=f"{path} (model provenance)",
    )  # fmt: skip
    try:
        statement = json.loads(verified.payload)
        if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != PREDICATE_TYPE:
            raise ValueError("not a SecMLOps model provenance statement")
        subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
        predicate = statement["predicate"]
        weights_sha256 = predicate["model"]["weights_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: malformed provenance statement ({exc})") from None
    present = set(artifact_files(model_dir))
    problems = [f"{n}: not signed" for n in sorted(present - set(subjects))]
    problems += [f"{n}: signed but missing" for n in sorted(set(subjects) - present)]
    for name in sorted(present & set(subjects)):
        if sha256_file(model_dir / name) != subjects[name]:
            problems.append(f"{name}: changed since it was signed")
    if subjects.get(WEIGHTS_FILE) != weights_sha256:
        problems.append(f"{WEIGHTS_FILE}: digest differs from the statement's model digest")
    if problems:
        raise IntegrityError(f"{model_dir}: " + "; ".join(problems))
    return VerifiedModel(model_dir, weights_sha256, verified.key_id, subjects, predicate)


def load_verified(model_dir: Path, keyring: Keyring, device: str = "cpu") -> Any:
    """`verify_model`, then `secmlops.models.load`: the only way serving loads a model.

    Raises:
        IntegrityError: see `verify_model`.
        ModelError: the verified files do not make a loadable model.
    """
    from secmlops.models import load

    verified = verify_model(model_dir, keyring)
    model = load(model_dir, device=device)
    # nn.Module.__setattr__ is typed Tensor | Module, but any attribute value is accepted
    model.secmlops_provenance = verified  # type: ignore[assignment]  # torch __setattr__ stub
    return model


def code_version(image_commit: str | None = None) -> dict[str, Any]:
    """The code version: git commit of the project checkout, and whether it had local edits.

    Args:
        image_commit: the commit an installed image was built from (`Settings.git_commit`),
            reported when the code is not a git checkout.
    """
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        # An installed image has no checkout: the image build records the commit it was built
        # from (docker/Dockerfile, build arg GIT_COMMIT).
        return {"git_commit": image_commit, "dirty": None}
    return {"git_commit": commit, "dirty": bool(status.strip())}


def provenance_digest(model_dir: Path) -> str:
    """sha256 of the provenance envelope: names the signed release as a whole."""
    return hashlib.sha256((Path(model_dir) / PROVENANCE_FILE).read_bytes()).hexdigest()

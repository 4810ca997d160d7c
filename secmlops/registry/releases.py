"""A model release on local disk: staged from a source folder, verified, vetted for deployment.

The registry never verifies files in place: it checks a private copy (staged on push, fetched on
promote and pull), so what was verified is exactly what gets stored or deployed, even if the
source folder or the store changes meanwhile.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from secmlops.errors import IntegrityError
from secmlops.fsutil import sha256_file
from secmlops.supplychain.keys import Keyring

if TYPE_CHECKING:
    from secmlops.supplychain.provenance import VerifiedModel

# provenance.GATE_RECORD_FILE, not imported from there: that module loads torch, and listing a
# registry should not.
GATE_RECORD_FILE = "gate-record.json"


def verify_release(model_dir: Path, keyring: Keyring) -> VerifiedModel:
    """`verify_model` (imported late: it loads torch). Returns the `VerifiedModel`.

    Raises:
        IntegrityError: unsigned, tampered, or signed by an untrusted key.
    """
    from secmlops.supplychain.provenance import verify_model

    return verify_model(model_dir, keyring)


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file directly in `folder`, by name."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def stage_release(model_dir: Path, staged: Path) -> None:
    """Copy the artifact files and the provenance of a release into `staged`.

    Raises:
        IntegrityError: no such folder, no provenance, or a subfolder/symlink among the files.
    """
    from secmlops.supplychain.provenance import PROVENANCE_FILE, artifact_files

    if not model_dir.is_dir():
        raise IntegrityError(f"{model_dir}: model directory not found")
    if not (model_dir / PROVENANCE_FILE).is_file():
        raise IntegrityError(f"{model_dir}: unsigned model (no {PROVENANCE_FILE}); refusing it")
    for name in [*artifact_files(model_dir), PROVENANCE_FILE]:
        shutil.copyfile(model_dir / name, staged / name, follow_symlinks=False)


def gate_status(model_dir: Path, keyring: Keyring, weights_sha256: str) -> dict[str, str]:
    """{"status": "passed" | "refused" | "missing", "detail"?}: the gate record, verified now."""
    from secmlops.evaluation.gate import verify_gate_record

    if not (model_dir / GATE_RECORD_FILE).is_file():
        return {"status": "missing"}
    try:
        verify_gate_record(model_dir / GATE_RECORD_FILE, keyring, weights_sha256)
    except IntegrityError as exc:
        return {"status": "refused", "detail": str(exc)}
    return {"status": "passed"}

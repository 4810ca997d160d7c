"""Which model serving runs: the registry alias, verified at every load, hot-swapped when it moves.

The server only ever runs a model that verified (signature by a trusted key, every file's digest,
provenance) at the moment it was loaded. When the alias moves, the new version is pulled into a
fresh folder and verified there; only then does it replace the running model. A version that
fails to verify is refused, audited, and the old model keeps serving.
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from secmlops.audit import AuditLog
from secmlops.errors import ModelError, SecMLOpsError
from secmlops.monitoring.embedding import EmbeddingProjection
from secmlops.registry import Registry
from secmlops.supplychain.keys import Keyring


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded model and where it came from."""

    model: nn.Module
    version: str
    weights_sha256: str
    signer: str
    screener: Any = None  # a calibrated `Screener` when the release carries screening.json
    # The reference profile's embedding PCA (signed with the model): serving logs the projection.
    projection: EmbeddingProjection | None = None


class ModelSource:
    """The registry alias serving follows.

    Args:
        registry: the model registry (`Settings.model_registry()`).
        name: the model name in the registry.
        alias: the alias to serve (`production`).
        keyring: trusted model-signing keys.
        audit: where loads and refusals are recorded.
        device: where the model runs.
    """

    def __init__(
        self,
        registry: Registry,
        name: str,
        alias: str,
        keyring: Keyring,
        audit: AuditLog,
        device: str = "cpu",
    ) -> None:
        self.registry = registry
        self.name, self.alias, self.keyring, self.audit = name, alias, keyring, audit
        self.device = device
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        # The version last refused: not retried (and not re-audited) every interval while the
        # alias still names it; versions are immutable, so it would fail the same way.
        self._refused: str | None = None
        self._lock = threading.Lock()
        self._cache = Path(tempfile.mkdtemp(prefix="secmlops-serving-"))

    def refresh(self) -> bool:
        """Load the alias's version if it differs from the running one.

        Returns:
            True when a new model now serves.

        Raises:
            SecMLOpsError: only when no model is running yet (the server cannot start without
                one); later failures keep the old model and are reported in `last_error`.
        """
        with self._lock:
            version: str | None = None
            try:
                version, _ = self.registry.resolve(self.name, self.alias)
                if self.current is not None and version in (self.current.version, self._refused):
                    return False
                loaded = self._load(version)
            except SecMLOpsError as exc:
                self.last_error = str(exc)
                self._refused = version
                self.audit.append(
                    "serving", "load_model", "fail", f"{self.name}@{self.alias}",
                    {"error": str(exc), "kept": self.current.version if self.current else None},
                )  # fmt: skip
                if self.current is None:
                    raise
                return False
            previous = self.current.version if self.current else None
            self.current, self.last_error = loaded, None
            self.audit.append(
                "serving", "load_model", "pass", loaded.weights_sha256,
                {"model": self.name, "version": version, "alias": self.alias,
                 "previous": previous, "signer": loaded.signer},
            )  # fmt: skip
            return True

    def _load(self, version: str) -> LoadedModel:
        from secmlops.models import load
        from secmlops.monitoring.reference import load_projection
        from secmlops.serving.calibration import SCREENING_FILE
        from secmlops.serving.screening import Screener, ScreenerCalibration

        folder = self._cache / version
        verified = self.registry.pull(self.name, version, folder, self.keyring, overwrite=True)
        model = load(folder, device=self.device)
        screener = None
        if (folder / SCREENING_FILE).is_file():  # signed with the model: verified above
            try:
                calibration = ScreenerCalibration.from_json(
                    json.loads((folder / SCREENING_FILE).read_text())
                )
            except (ValueError, TypeError) as exc:
                raise ModelError(f"{self.name}@{version}: bad {SCREENING_FILE} ({exc})") from None
            screener = Screener(model, calibration)
        try:
            projection = load_projection(folder)  # signed with the model: verified above
        except SecMLOpsError as exc:
            raise ModelError(f"{self.name}@{version}: bad reference profile ({exc})") from None
        return LoadedModel(
            model, version, verified.weights_sha256, verified.signer, screener, projection
        )

    def describe(self) -> dict[str, Any]:
        """What is serving now, for /healthz."""
        current = self.current
        return {
            "model": self.name,
            "alias": self.alias,
            "version": current.version if current else None,
            "weights_sha256": current.weights_sha256 if current else None,
            "last_refusal": self.last_error,
        }

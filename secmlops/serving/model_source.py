"""Which model serving runs: the registry alias, verified at every load, hot-swapped when it moves.

The server only ever runs a model whose whole trust chain verified at the moment it was loaded
(`Registry.pull` through the alias: the signed alias move by the alias's role and its sequence,
the provenance, the passed gate record under the policy in force, the dataset's signer role;
`secmlops.registry.trust_chain`). When the alias record changes, the release it names is pulled
into a fresh folder and verified there; only then does it replace the running model. A release
that fails is refused, audited with the broken link named, and the old model keeps serving.
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from torch import nn

from secmlops.audit import AuditLog
from secmlops.errors import IntegrityError, ModelError, SecMLOpsError
from secmlops.fsutil import safe_name
from secmlops.models import ModelCard
from secmlops.monitoring.embedding import EmbeddingProjection
from secmlops.policy import Policy
from secmlops.registry import Registry, RegistryError
from secmlops.registry.trust_chain import SequenceState
from secmlops.supplychain.keys import Keyring


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded model and where it came from."""

    model: nn.Module
    version: str
    weights_sha256: str
    signer: str
    sequence: int  # the signed alias move's sequence
    alias_token: str  # identifies the alias record it was loaded through (its bytes' digest/ETag)
    screener: Any = None  # a calibrated `Screener` when the release carries screening.json
    # The reference profile's embedding PCA (signed with the model): serving logs the projection.
    projection: EmbeddingProjection | None = None
    # The operating point signed in the release's model.json: detections below it are dropped.
    score_threshold: float = field(kw_only=True)


class ModelSource:
    """The registry alias serving follows.

    Args:
        registry: the model registry (`Settings.model_registry()`).
        name: the model name in the registry.
        alias: the alias to serve (`production`).
        keyring: the trusted keys with their roles (`Settings.keyring()`).
        policy: the policy in force (the gate record must be made under it).
        audit: where loads and refusals are recorded.
        state: the highest alias sequences accepted (`Settings.trust_state`); a replayed older
            alias record is refused. Serving also remembers the one it runs in memory.
        device: where the model runs.
    """

    def __init__(
        self,
        registry: Registry,
        name: str,
        alias: str,
        keyring: Keyring,
        policy: Policy,
        audit: AuditLog,
        state: SequenceState | None = None,
        device: str = "cpu",
    ) -> None:
        self.registry = registry
        self.name, self.alias, self.keyring, self.audit = name, alias, keyring, audit
        self.policy, self.state = policy, state or SequenceState(None)
        self.device = device
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        # The alias record last refused: not retried (and not re-audited) every interval while
        # the alias still holds exactly those bytes; it would fail the same way.
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
            token: str | None = None
            try:
                _, token = self.registry.store.read_alias(self.name, self.alias)
                if token is None:
                    raise RegistryError(f"{self.name}: no alias {self.alias!r} to serve")
                if self.current is not None and token in (self.current.alias_token, self._refused):
                    return False
                loaded = self._load(token)
            except SecMLOpsError as exc:
                self.last_error = str(exc)
                self._refused = token
                self.audit.append(
                    "serving", "load_model", "fail", f"{self.name}@{self.alias}",
                    {"error": str(exc), "link": getattr(exc, "link", None),
                     "kept": self.current.version if self.current else None},
                )  # fmt: skip
                if self.current is None:
                    raise
                return False
            previous = self.current.version if self.current else None
            self.current, self.last_error = loaded, None
            self.audit.append(
                "serving", "load_model", "pass", loaded.weights_sha256,
                {"model": self.name, "version": loaded.version, "alias": self.alias,
                 "sequence": loaded.sequence, "previous": previous, "signer": loaded.signer},
            )  # fmt: skip
            return True

    def _load(self, token: str) -> LoadedModel:
        from secmlops.models import load
        from secmlops.monitoring.reference import load_projection
        from secmlops.serving.calibration import SCREENING_FILE
        from secmlops.serving.screening import Screener, ScreenerCalibration

        folder = self._cache / safe_name(token)
        release = self.registry.pull(
            self.name, self.alias, folder, self.keyring, self.policy, audit=None,
            state=self.state, overwrite=True,
        )  # fmt: skip
        verified, move = release.model, release.move
        if move is None:  # pull through an alias always verifies its move; never serve without
            raise IntegrityError(f"{self.name}@{self.alias}: no verified alias move")
        version = move.version
        model = load(folder, device=self.device)
        try:
            threshold = cast(ModelCard, model.secmlops_card).serving_threshold()
        except ModelError as exc:
            raise ModelError(f"{self.name}@{version}: {exc}") from None
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
            model,
            version,
            verified.weights_sha256,
            verified.signer,
            move.sequence,
            token,
            screener,
            projection,
            score_threshold=threshold,
        )

    def describe(self) -> dict[str, Any]:
        """What is serving now, for /healthz."""
        current = self.current
        return {
            "model": self.name,
            "alias": self.alias,
            "version": current.version if current else None,
            "sequence": current.sequence if current else None,
            "weights_sha256": current.weights_sha256 if current else None,
            "score_threshold": current.score_threshold if current else None,
            "last_refusal": self.last_error,
        }

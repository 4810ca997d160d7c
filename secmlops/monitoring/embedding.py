"""What the detector's backbone makes of an image: a pooled embedding, reduced by PCA.

Hand-made image statistics (`features.py`) miss shifts that leave brightness and sharpness alone
but change what the network sees (a new camera angle, new kinds of objects in the scene). The
backbone's deepest feature map, global-average pooled, captures them. It is taken with a forward
hook during the forward pass serving runs anyway, so it costs a mean over one small feature map.

Raw embeddings are as wide as the backbone (96 channels for the compact CenterNet, 960 for a
MobileNet): too wide to log per request and too many columns for a small window's tests. A PCA
fitted on the reference (validation) embeddings at training time keeps `EMBEDDING_COMPONENTS`
directions; the projection is stored in the model's reference profile, signed with the model, so
serving logs the reduced vector and monitoring compares it with Evidently's `EmbeddingsDrift`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from secmlops.errors import DataError, ModelError

EMBEDDING_COMPONENTS = 8
EMBEDDING_PREFIX = "emb_"


def embedding_columns(components: int) -> tuple[str, ...]:
    """Column names of a projected embedding: emb_0 .. emb_{components-1}."""
    return tuple(f"{EMBEDDING_PREFIX}{i}" for i in range(components))


def embedding_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the detector's deepest backbone feature map.

    Raises:
        ModelError: the architecture has no known backbone.
    """
    from secmlops.models.compact_centernet import CompactCenterNet

    core = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    if isinstance(core, CompactCenterNet):
        return core.stage32
    backbone = getattr(core, "backbone", None)  # every torchvision detector has one
    if isinstance(backbone, nn.Module):
        return backbone
    raise ModelError(f"{type(core).__name__}: no backbone to take an embedding from")


@contextmanager
def capture_embeddings(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the pooled backbone embedding [B,C] of every forward pass run inside the block.

    Yields:
        A list that receives one float32 CPU tensor per forward pass, in call order (a cascade
        that runs extra passes on squeezed copies appends more; the first is the image's own).
    """
    captured: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Mapping):  # torchvision FPN backbones: the coarsest level last
            output = list(output.values())[-1]
        captured.append(output.detach().float().mean(dim=(2, 3)).cpu())

    handle = embedding_layer(model).register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


@dataclass(frozen=True)
class EmbeddingProjection:
    """A PCA projection of backbone embeddings (JSON-serialisable).

    Attributes:
        mean: the reference embeddings' mean, [C].
        components: the principal directions, [k, C], by decreasing variance.
        explained_variance_ratio: share of the reference variance each direction keeps, [k].
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def columns(self) -> tuple[str, ...]:
        """The projected columns' names."""
        return embedding_columns(len(self.components))

    def project(self, embeddings: np.ndarray | Tensor) -> np.ndarray:
        """Project raw embeddings [N,C] onto the components: [N,k].

        Raises:
            DataError: the embedding width differs from the fitted one.
        """
        values = np.asarray(embeddings, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.mean.shape[0]:
            raise DataError(
                f"embeddings of shape {values.shape} do not fit a projection fitted on "
                f"{self.mean.shape[0]}-wide embeddings (a different backbone?)"
            )
        return (values - self.mean) @ self.components.T

    def to_json(self) -> dict[str, Any]:
        """Plain lists, for the reference profile."""
        return {
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmbeddingProjection:
        """Read `to_json` output back.

        Raises:
            DataError: a field is missing, not numeric, not finite, or the shapes disagree.
        """
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            components = np.asarray(data["components"], dtype=np.float64)
            ratio = np.asarray(data["explained_variance_ratio"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"embedding projection: missing or non-numeric field ({exc})") from None
        if (
            mean.ndim != 1
            or components.ndim != 2
            or components.shape[1] != mean.shape[0]
            or ratio.shape != (components.shape[0],)
        ):
            raise DataError(
                f"embedding projection: inconsistent shapes mean {mean.shape}, components "
                f"{components.shape}, explained_variance_ratio {ratio.shape}"
            )
        if not all(np.isfinite(a).all() for a in (mean, components, ratio)):
            raise DataError("embedding projection: non-finite values")
        return cls(mean, components, ratio)


def fit_projection(
    embeddings: np.ndarray | Sequence[Sequence[float]], components: int = EMBEDDING_COMPONENTS
) -> EmbeddingProjection:
    """Fit a PCA on reference embeddings [N,C] (SVD of the centred matrix).

    Args:
        embeddings: one raw embedding per reference image.
        components: directions to keep; capped at min(N - 1, C).

    Raises:
        DataError: fewer than 2 embeddings, or non-finite values.
    """
    values = np.asarray(embeddings, dtype=np.float64)
    if values.ndim != 2 or len(values) < 2:
        raise DataError(f"a PCA needs at least 2 embeddings as an [N,C] array, got {values.shape}")
    if not np.isfinite(values).all():
        raise DataError("embeddings hold non-finite values")
    mean = values.mean(axis=0)
    _, singular, directions = np.linalg.svd(values - mean, full_matrices=False)
    keep = max(1, min(components, len(values) - 1, values.shape[1]))
    variance = singular**2
    total = float(variance.sum()) or 1.0
    # Sign convention: the largest loading of each direction is positive, so a refit on the
    # same data gives the same columns (SVD signs are arbitrary).
    signs = np.sign(directions[np.arange(len(directions)), np.abs(directions).argmax(axis=1)])
    directions = directions * np.where(signs == 0, 1.0, signs)[:, None]
    return EmbeddingProjection(mean, directions[:keep], variance[:keep] / total)

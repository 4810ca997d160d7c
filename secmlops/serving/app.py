"""The detection service: `POST /v1/detect` on the verified production model.

Controls, in the order a request meets them:
1. bearer-token authentication (constant-time comparison; 401 without a valid token),
2. size limit on the body (413) before it is read in full, and a content-type allowlist checked
   against the file's magic bytes too (415), so a renamed file does not slip through,
3. decoding with a pixel limit (413 for decompression bombs) and a clear 422 for bytes that are
   not an image,
4. detection on the model that verified when it was loaded (`ModelSource`),
5. an adversarial-input score (`secmlops.serving.screening`), read off the same forward pass
   that produces the detections, returned with them,
6. one inference-log record per request (features, detections, score) for monitoring.
A rejected request never touches the model, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Request, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image, UnidentifiedImageError

from secmlops.monitoring.embedding import capture_embeddings
from secmlops.monitoring.features import request_features
from secmlops.serving.inference_log import InferenceLog
from secmlops.serving.model_source import ModelSource

Detector = Callable[
    [torch.nn.Module, torch.Tensor], tuple[list[dict[str, torch.Tensor]], torch.Tensor]
]

# auto_error=False: a missing header gets our 401 (with WWW-Authenticate), not FastAPI's 403.
_BEARER = HTTPBearer(auto_error=False)
# Module level, because FastAPI resolves these (string) annotations in the module's namespace.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]

# File signatures of the accepted types: the declared content type must match the bytes.
MAGIC = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",)}


@dataclass
class ServingConfig:
    """Limits and wiring of the service.

    Args:
        token: the bearer token clients must present.
        max_bytes: largest accepted upload.
        max_pixels: largest accepted width x height (decompression bombs are refused).
        reload_interval_s: how often the alias is checked for a new version (0: never).
        score_threshold: detections below this score are not returned.
    """

    token: str
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    reload_interval_s: float = 10.0
    score_threshold: float = 0.3
    # (model, batch) -> (detections, adversarial scores [B]); default: one forward pass that
    # yields both (`secmlops.serving.screening.detect_and_score`).
    detect: Detector | None = None
    extra_log_fields: dict[str, Any] = field(default_factory=dict)


def create_app(source: ModelSource, log: InferenceLog, config: ServingConfig) -> FastAPI:
    """The FastAPI application (run it with uvicorn; `secmlops serve` does).

    Raises:
        SecMLOpsError: at startup, when no verified model can be loaded.
    """
    if not config.token or len(config.token) < 16:
        raise ValueError("the serving token must be at least 16 characters")
    detector = config.detect or _default_detector()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        source.refresh()  # no verified model: the server does not start
        task = None
        if config.reload_interval_s > 0:
            task = asyncio.create_task(_follow_alias(source, config.reload_interval_s))
        yield
        if task:
            task.cancel()
        log.close()

    app = FastAPI(title="SecMLOps pedestrian detection", lifespan=lifespan)

    def authenticated(credentials: BearerCredentials) -> None:
        presented = credentials.credentials if credentials else ""
        if not secrets.compare_digest(presented.encode(), config.token.encode()):
            raise HTTPException(
                401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}
            )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok" if source.current else "no model", **source.describe()}

    @app.post("/v1/detect", dependencies=[Depends(authenticated)])
    async def detect(request: Request, image: UploadFile) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_bytes + 64 * 1024:
            raise HTTPException(413, f"request larger than {config.max_bytes} bytes")
        data = await image.read(config.max_bytes + 1)
        if len(data) > config.max_bytes:
            raise HTTPException(413, f"image larger than {config.max_bytes} bytes")
        content_type = (image.content_type or "").split(";")[0].strip().lower()
        if content_type not in MAGIC:
            raise HTTPException(415, f"unsupported content type {content_type!r}; send JPEG or PNG")
        if not data.startswith(MAGIC[content_type]):
            raise HTTPException(415, f"the bytes are not a {content_type} file")
        pixels = _decode(data, config.max_pixels)
        return await asyncio.to_thread(_serve, source, log, config, detector, pixels, data)

    return app


def _decode(data: bytes, max_pixels: int) -> torch.Tensor:
    """Float [3,H,W] in [0,1]; 413 for too many pixels, 422 for undecodable bytes."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise HTTPException(413, f"image has {width}x{height} pixels; limit {max_pixels}")
            rgb = probe.convert("RGB")
            rgb.load()
    except HTTPException:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HTTPException(422, f"cannot decode the image ({exc})") from None
    array = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    # contiguous(): a permuted view makes the forward pass ~25% slower on a CPU.
    return array.view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous().float().div_(255)


def _serve(
    source: ModelSource,
    log: InferenceLog,
    config: ServingConfig,
    detector: Detector,
    image: torch.Tensor,
    data: bytes,
) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = source.current
    if loaded is None:
        raise HTTPException(503, "no verified model is loaded")
    device = next(loaded.model.parameters()).device
    batch = image.unsqueeze(0).to(device)
    screening: dict[str, bool] = {}
    # The backbone embedding comes from the same forward pass, through a hook (monitoring); a
    # release without a projection in its reference profile logs none, so nothing is hooked.
    capture: AbstractContextManager[list[torch.Tensor]] = (
        capture_embeddings(loaded.model) if loaded.projection is not None else nullcontext([])
    )
    with capture as embeddings:
        if config.detect is None and loaded.screener is not None:
            # The calibrated cascade: score in units of the alarm threshold (> 1: alarm).
            result = loaded.screener(batch)
            outputs, scores = result.detections, result.score
            screening = {
                "flagged": bool(result.flagged[0]),
                "escalated": bool(result.escalated[0]),
                "degraded": bool(result.degraded[0]),
            }
        else:
            with torch.no_grad():
                outputs, scores = detector(loaded.model, batch)
    embedding: dict[str, list[float]] = {}
    if loaded.projection is not None and embeddings:
        projected = loaded.projection.project(embeddings[0][:1])[0]
        embedding = {"embedding": [round(float(v), 6) for v in projected]}
    detections = {k: v.cpu() for k, v in outputs[0].items()}
    score = round(float(scores[0]), 6)
    keep = detections["scores"] >= config.score_threshold
    people = [
        {"box": [round(float(v), 1) for v in box], "score": round(float(s), 4)}
        for box, s in zip(detections["boxes"][keep], detections["scores"][keep], strict=True)
    ]
    request_id = uuid.uuid4().hex
    height, width = image.shape[-2:]
    log.append(
        {
            "request_id": request_id,
            "model_version": loaded.version,
            "weights_sha256": loaded.weights_sha256,
            "width": width,
            "height": height,
            "bytes": len(data),
            # The CPU image, not the device batch: no copy back from the GPU per request.
            "features": request_features(image.unsqueeze(0), detections),
            **embedding,
            "detections": people,
            "adversarial_score": score,
            "screening": screening,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            **config.extra_log_fields,
        }
    )
    return {
        "request_id": request_id,
        "model": {"version": loaded.version, "weights_sha256": loaded.weights_sha256},
        "detections": people,
        "adversarial_score": score,
        "screening": screening,
    }


async def _follow_alias(source: ModelSource, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(source.refresh)


def _default_detector() -> Detector:
    from secmlops.serving.screening import detect_and_score

    return detect_and_score

"""The detection service: `POST /v1/detect` on the verified production model.

Controls, in the order a request meets them (`secmlops.serving.limits`, then the engine):
1. header deadline and size, then the bearer token (constant time; 401 at once, body unread),
2. the byte limit while the body streams in (413 at once), an admission slot (503 with
   Retry-After at once when the service is full), a deadline for the body (408),
3. off the event loop (`secmlops.serving.engine`): the multipart form, the content type checked
   against the file's magic bytes (415), the pixel count read from the image header before
   decoding (413 for pixel bombs), decoding (422 for bytes that are not an image),
4. detection on the model that verified when it was loaded (`ModelSource`), micro-batched,
5. an adversarial-input score (`secmlops.serving.screening`), read off the same forward pass,
6. one inference-log record per answered request (features, detections, score), for monitoring,
   written off the request's path and drained on shutdown.
A rejected request never touches the model, and the server keeps serving.

`GET /healthz` (liveness) and `GET /readyz` (a verified model is loaded) need no token and say
nothing about the installation; `GET /v1/model` (token) says which release serves and the last
refused load. `/docs` and `/openapi.json` exist only when enabled, and then behind the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from secmlops.errors import UploadRefused
from secmlops.serving.engine import Detector, EngineConfig, InferenceEngine
from secmlops.serving.inference_log import InferenceLog
from secmlops.serving.limits import (
    BODY_KEY,
    FORM_OVERHEAD_BYTES,
    ASGIApp,
    RequestGuard,
)
from secmlops.serving.model_source import ModelSource

logger = logging.getLogger(__name__)
DETECT_PATH = "/v1/detect"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


@dataclass
class ServingConfig:
    """Limits and wiring of the service.

    Args:
        token: the bearer token clients must present.
        engine: the upload limits, the queue and the batching (`EngineConfig`).
        reload_interval_s: how often the alias is checked for a new version (0: never).
        body_timeout_s: the whole body must arrive within this (408 after).
        docs: serve /docs and /openapi.json (behind the token).
        detect: (model, batch) -> (detections, adversarial scores [B]); default: the release's
            calibrated screener, else one forward pass that yields both.
    """

    token: str
    engine: EngineConfig = field(default_factory=EngineConfig)
    reload_interval_s: float = 10.0
    body_timeout_s: float = 30.0
    docs: bool = False
    detect: Detector | None = None


def create_app(source: ModelSource, log: InferenceLog, config: ServingConfig) -> ASGIApp:
    """The ASGI application (run it with uvicorn; `secmlops serve` does).

    Raises:
        ValueError: a token shorter than 16 characters, or limits out of range.
        SecMLOpsError: at startup, when no verified model can be loaded.
    """
    if not config.token or len(config.token) < 16:
        raise ValueError("the serving token must be at least 16 characters")
    engine = InferenceEngine(source, log, config.engine, config.detect)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        source.refresh()  # no verified model: the server does not start
        engine.start()
        follower = None
        if config.reload_interval_s > 0:
            follower = asyncio.create_task(_follow_alias(source, config.reload_interval_s))
        try:
            yield
        finally:
            if follower:
                follower.cancel()
            # Off the loop: the batcher answers what is still queued through it.
            await asyncio.to_thread(engine.close)

    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="SecMLOps pedestrian detection", lifespan=lifespan, **docs)  # type: ignore[arg-type]

    @app.exception_handler(UploadRefused)
    async def refused(_request: Request, exc: UploadRefused) -> JSONResponse:
        headers = {"Retry-After": str(engine.config.retry_after_s)} if exc.status == 503 else None
        return JSONResponse({"detail": str(exc)}, exc.status, headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (it says nothing about the installation)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: a verified model is loaded and the engine takes requests."""
        current = source.current
        if current is None or not engine.running:
            return JSONResponse({"status": "not ready"}, 503)
        return JSONResponse({"status": "ready", "version": current.version})

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """Which release serves, through which alias move, and the last refused load."""
        return {**source.describe(), "in_flight": engine.in_flight,
                "queue_size": engine.config.queue_size}  # fmt: skip

    @app.post(DETECT_PATH)
    async def detect(request: Request) -> Response:
        """Detect people in one JPEG or PNG (multipart/form-data, field `image`)."""
        body: bytes = request.scope[BODY_KEY]
        answer = await engine.detect(body, request.headers.get("content-type", ""))
        return Response(answer, media_type="application/json")

    return RequestGuard(
        app, token=config.token, public_paths=PUBLIC_PATHS,
        body_routes=frozenset({("POST", DETECT_PATH)}),
        max_body_bytes=config.engine.max_bytes + FORM_OVERHEAD_BYTES,
        body_timeout_s=config.body_timeout_s, admit=engine.admit, release=engine.release,
        retry_after_s=engine.config.retry_after_s,
    )  # fmt: skip


async def _follow_alias(source: ModelSource, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(source.refresh)
        except Exception:  # a network blip must not end the following (the old model serves)
            logger.exception("serving: checking the alias failed; retrying in %g s", interval_s)

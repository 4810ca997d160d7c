"""The work behind `/v1/detect`, off the event loop: decode, micro-batch, detect, screen, log.

The event loop only routes. A request that passed authentication holds one of `queue_size`
admission slots from its headers to its response; when none is free the service answers 503 at
once (`admit`), so the work in the system is bounded and a flood costs the flooder, not the
cameras. An admitted upload is parsed, decoded and measured (the monitoring features, the screener's
noise estimate) on a small thread pool (`decode_threads`), within a budget of decoded pixels
waiting for the model (so a burst of large images cannot pile up in memory), then a single
batcher thread runs only the model on micro-batches: a batch closes at
`max_batch` images or `batch_wait_ms` after its first image, whichever comes first, and only
holds images of one size (a detector may pad a batch to its largest image, which would change
the detections of the others: batching must not change any answer). Inference log records are
written by their own thread, after the response is on its way; `close` answers every request
already admitted and writes every record before it returns (SIGTERM drains).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from secmlops.errors import UploadRefused
from secmlops.monitoring.embedding import capture_embeddings
from secmlops.monitoring.features import detection_features, image_features
from secmlops.serving.inference_log import InferenceLog
from secmlops.serving.model_source import LoadedModel, ModelSource
from secmlops.serving.screening import detect_and_score, high_frequency_energy
from secmlops.serving.uploads import Upload, decode, header_size, image_part

logger = logging.getLogger(__name__)

Detector = Callable[
    [torch.nn.Module, torch.Tensor], tuple[list[dict[str, torch.Tensor]], torch.Tensor]
]
_STOP = object()


@dataclass(frozen=True)
class EngineConfig:
    """How much work the service takes on, and how it batches it.

    Args:
        max_bytes: largest accepted image (413 above).
        max_pixels: largest accepted width x height (413 above, read from the header).
        queue_size: requests admitted at once (reading, waiting, decoding or in the model);
            the next one gets 503 with Retry-After.
        max_batch: images per forward pass at most.
        batch_wait_ms: how long a batch waits for more images after its first one.
        decode_threads: threads that parse, decode and measure uploads (one torch thread each).
        torch_threads: intra-op threads of the model's forward pass (None: torch's default).
        retry_after_s: what a 503 tells the client to wait.
    """

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    queue_size: int = 64
    max_batch: int = 8
    batch_wait_ms: float = 2.0
    decode_threads: int = 1
    torch_threads: int | None = None
    retry_after_s: int = 1
    extra_log_fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "queue_size", "max_batch", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"serving: {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"serving: batch_wait_ms must be >= 0, got {self.batch_wait_ms}")


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[bytes]
    admitted: float  # perf_counter when the request reached the engine
    nbytes: int
    # float [H,W,3] in [0,1]: the batch is stacked in this layout and handed to the model as a
    # channels-last [B,3,H,W] view, without the copy a permute to [3,H,W] would cost.
    image: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0, 3))
    features: dict[str, float] = field(default_factory=dict)
    energy: torch.Tensor | None = None  # the screener's high-frequency energy, [1]
    queued: float = 0.0


class InferenceEngine:
    """Bounded, batched detection for the service (see the module docstring).

    Args:
        source: the verified model serving follows.
        log: where one record per answered request goes.
        config: the limits and batching.
        detect: (model, batch) -> (detections, adversarial scores [B]); default: the release's
            calibrated screener when it has one, else one forward pass that yields both
            (`secmlops.serving.screening.detect_and_score`).
    """

    def __init__(
        self,
        source: ModelSource,
        log: InferenceLog,
        config: EngineConfig,
        detect: Detector | None = None,
    ) -> None:
        self.source, self.log, self.config = source, log, config
        self._detect = detect
        self.in_flight = 0  # admitted requests; touched on the event loop only
        # One torch thread per decoder: their small ops must not fork thread teams that fight
        # the model's for the cores.
        self._decoders = ThreadPoolExecutor(
            config.decode_threads, "secmlops-decode", initializer=torch.set_num_threads,
            initargs=(1,),
        )  # fmt: skip
        self._batches: queue.Queue[Any] = queue.Queue()
        self._records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Decoded pixels waiting for (or in) the model: two batches' worth at most. A batch holds
        # at most `max_pixels` pixels, so an image at the limit runs alone.
        self._pixel_budget = 2 * config.max_pixels
        self._pixels_held = 0
        self._budget = threading.Condition()
        self._batcher = threading.Thread(target=self._run_batches, name="secmlops-batcher")
        self._writer = threading.Thread(target=self._write_records, name="secmlops-log")
        self._started = self._closed = False

    # ---------------------------------------------------------------- event-loop side
    def start(self) -> None:
        """Start the batcher and the log writer (idempotent)."""
        if not self._started:
            self._started = True
            self._batcher.start()
            self._writer.start()

    @property
    def running(self) -> bool:
        """The engine takes requests (started, not closed)."""
        return self._started and not self._closed

    def admit(self) -> bool:
        """Take an admission slot if one is free (call `release` when the response is sent)."""
        if self._closed or self.in_flight >= self.config.queue_size:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give back the slot `admit` took."""
        self.in_flight -= 1

    async def detect(self, body: bytes, content_type: str) -> bytes:
        """The answer to one admitted request, as its JSON body (parse, decode, batch, detect,
        log): `request_id`, `model` (version, weights_sha256), `detections` ([{box, score}]),
        `adversarial_score` and `screening`.

        Raises:
            UploadRefused: the upload is refused (413/415/422), or no verified model (503).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        job = _Job(loop, future, time.perf_counter(), len(body))
        # The decode thread queues the job itself, so `close` (which waits for the decoders)
        # finds every decoded upload in the batch queue.
        try:
            decoding = loop.run_in_executor(self._decoders, self._decode, job, body, content_type)
        except RuntimeError:  # the decoders shut down after this request was admitted
            raise UploadRefused(503, "the service is shutting down") from None
        await decoding  # raises the upload's refusal
        return await asyncio.shield(future)  # a client that leaves does not cancel the batch

    # ---------------------------------------------------------------- worker side
    def _decode(self, job: _Job, body: bytes, content_type: str) -> None:
        upload: Upload = image_part(body, content_type, self.config.max_bytes)
        width, height = header_size(upload)
        pixels = width * height
        if pixels <= self.config.max_pixels:  # larger ones are refused by `decode`, unheld
            with self._budget:
                # Wait for room; a budget of two batches always holds one image at the limit.
                self._budget.wait_for(lambda: self._pixels_held + pixels <= self._pixel_budget)
                self._pixels_held += pixels
        try:
            pixels_hwc = decode(upload, self.config.max_pixels)
            job.image = pixels_hwc.float().div_(255)
            view = job.image.permute(2, 0, 1).unsqueeze(0)  # [1,3,H,W], channels last
            job.features = image_features(view)[0]
            job.energy = high_frequency_energy(view.contiguous())  # 1.6x faster than the view
        except BaseException:
            self._give_back(pixels)
            raise
        job.queued = time.perf_counter()
        self._batches.put(job)

    def _give_back(self, pixels: int) -> None:
        if pixels > self.config.max_pixels:
            return
        with self._budget:
            self._pixels_held -= pixels
            self._budget.notify_all()

    def _run_batches(self) -> None:
        if self.config.torch_threads is not None:
            torch.set_num_threads(self.config.torch_threads)  # this thread's forward passes
        stopping = False
        while not stopping:
            first = self._batches.get()
            if first is _STOP:
                break
            jobs = [first]
            closes = time.perf_counter() + self.config.batch_wait_ms / 1000
            while len(jobs) < self.config.max_batch:
                try:
                    job = self._batches.get(timeout=max(0.0, closes - time.perf_counter()))
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                jobs.append(job)
            for group in _same_size_groups(jobs, self.config.max_pixels):
                self._answer(group)
        # Anything still queued behind the stop marker is answered too (nothing admitted is lost).
        leftovers = []
        while not self._batches.empty():
            job = self._batches.get_nowait()
            if job is not _STOP:
                leftovers.append(job)
        for group in _same_size_groups(leftovers, self.config.max_pixels):
            self._answer(group)

    def _answer(self, jobs: list[_Job]) -> None:
        try:
            loaded = self.source.current
            if loaded is None:
                raise UploadRefused(503, "no verified model is loaded")
            results = self._infer(loaded, jobs)
        except Exception as exc:  # every admitted request gets an answer, even from a bug
            if not isinstance(exc, UploadRefused):
                logger.exception("inference failed for a batch of %d", len(jobs))
            for job in jobs:
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
            return
        finally:
            self._give_back(sum(job.image.shape[0] * job.image.shape[1] for job in jobs))
        for job, (answer, record) in zip(jobs, results, strict=True):
            self._records.put(record)  # written by the log thread, after the answer leaves
            job.loop.call_soon_threadsafe(_settle, job.future, answer, None)

    def _infer(self, loaded: LoadedModel, jobs: list[_Job]) -> list[tuple[bytes, dict[str, Any]]]:
        device = next(loaded.model.parameters()).device
        batch = torch.stack([job.image for job in jobs]).to(device).permute(0, 3, 1, 2)
        screening: list[dict[str, bool]] = [{} for _ in jobs]
        # The backbone embedding comes from the same forward pass, through a hook (monitoring);
        # a release without a projection in its reference profile logs none: nothing is hooked.
        capture: AbstractContextManager[list[torch.Tensor]] = (
            capture_embeddings(loaded.model) if loaded.projection is not None else nullcontext([])
        )
        with capture as embeddings, torch.no_grad():
            if self._detect is None and loaded.screener is not None:
                # The calibrated cascade: score in units of the alarm threshold (> 1: alarm).
                energy = torch.cat([job.energy for job in jobs if job.energy is not None])
                result = loaded.screener(batch, energy if len(energy) == len(jobs) else None)
                outputs, scores = result.detections, result.score
                screening = [
                    {"flagged": bool(f), "escalated": bool(e), "degraded": bool(d)}
                    for f, e, d in zip(
                        result.flagged.tolist(), result.escalated.tolist(),
                        result.degraded.tolist(), strict=True,
                    )
                ]  # fmt: skip
            else:
                outputs, scores = (self._detect or detect_and_score)(loaded.model, batch)
        projected: list[list[float]] = []
        if loaded.projection is not None and embeddings:
            rows = loaded.projection.project(embeddings[0][: len(jobs)])
            projected = [[round(float(v), 6) for v in row] for row in rows]
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        finished = time.perf_counter()
        results = []
        for i, job in enumerate(jobs):
            detections = {k: v.cpu() for k, v in outputs[i].items()}
            keep = detections["scores"] >= loaded.score_threshold
            people = [
                {"box": [round(v, 1) for v in box], "score": round(s, 4)}
                for box, s in zip(
                    detections["boxes"][keep].tolist(), detections["scores"][keep].tolist(),
                    strict=True,
                )
            ]  # fmt: skip
            request_id = uuid.uuid4().hex
            score = round(float(scores[i]), 6)
            answer = {
                "request_id": request_id,
                "model": {"version": loaded.version, "weights_sha256": loaded.weights_sha256},
                "detections": people,
                "adversarial_score": score,
                "screening": screening[i],
            }
            record = {
                "request_id": request_id,
                "model_version": loaded.version,
                "weights_sha256": loaded.weights_sha256,
                "width": width,
                "height": height,
                "bytes": job.nbytes,
                "features": {
                    **job.features,
                    **detection_features(detections, float(width * height), loaded.score_threshold),
                },
                **({"embedding": projected[i]} if projected else {}),
                "detections": people,
                "adversarial_score": score,
                "screening": screening[i],
                "batch": len(jobs),
                "decode_ms": round((job.queued - job.admitted) * 1000, 2),
                "latency_ms": round((finished - job.admitted) * 1000, 2),
                **self.config.extra_log_fields,
            }
            # Serialised here, so the event loop only writes bytes.
            results.append((json.dumps(answer, separators=(",", ":")).encode(), record))
        return results

    def _write_records(self) -> None:
        stopping = False
        while not stopping:
            records = [self._records.get()]
            while not self._records.empty():  # whatever else is waiting: one write for all
                records.append(self._records.get_nowait())
            if _STOP in records:
                stopping = True
                records = [r for r in records if r is not _STOP]
            if not records:
                continue
            try:
                self.log.extend(records)
            except Exception:  # a full disk must not stop the service; it is reported
                logger.exception("inference log: %d records could not be written", len(records))

    # ---------------------------------------------------------------- shutdown
    def close(self, timeout_s: float = 60.0) -> None:
        """Refuse new requests, answer the admitted ones, write every record, close the log."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._decoders.shutdown(wait=True)  # decoded uploads reach the batch queue
            self._batches.put(_STOP)
            self._batcher.join(timeout_s)
            self._records.put(_STOP)
            self._writer.join(timeout_s)
        self.log.close()


def _same_size_groups(jobs: list[_Job], max_pixels: int) -> list[list[_Job]]:
    """Jobs split into batches of one image size and at most `max_pixels` pixels, in order."""
    by_size: dict[tuple[int, int], list[list[_Job]]] = defaultdict(list)
    for job in jobs:
        groups = by_size[(job.image.shape[0], job.image.shape[1])]
        pixels = job.image.shape[0] * job.image.shape[1]
        if not groups or (len(groups[-1]) + 1) * pixels > max_pixels:
            groups.append([])
        groups[-1].append(job)
    return [group for groups in by_size.values() for group in groups]


def _settle(
    future: asyncio.Future[bytes], answer: bytes | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(answer or b"{}")

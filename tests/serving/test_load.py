"""`secmlops serve` under a burst and on SIGTERM, over TCP on 127.0.0.1. Bounded in count and
time: a fixed number of requests, each with a timeout; no latency thresholds (shared machines)."""

from __future__ import annotations

import io
import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from secmlops.serving.inference_log import read_inference_log

from .conftest import jpeg, logged
from .live import AUTH, health_probe, running_server, serve_env, stock

LARGE_SIDE = 1024
MAX_BYTES = 4_000_000
MAX_PIXELS = LARGE_SIDE * LARGE_SIDE
QUEUE = 4


def noise_png(side: int, seed: int) -> bytes:
    """A PNG of random pixels (incompressible: about 3 bytes per pixel to decode)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def post(base: str, data: bytes, content_type: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/detect", files={"image": ("x", data, content_type)},
                      headers=AUTH, timeout=120)  # fmt: skip


@pytest.fixture
def stocked_env(tmp_path, pki, policy, serving_policy, releases):
    stock(tmp_path, pki, policy, releases["v1"])
    return serving_policy, serve_env(tmp_path, pki, serving_policy)


def test_a_burst_gets_503_not_timeouts_while_health_answers(tmp_path, stocked_env):
    _, env = stocked_env
    options = (
        *("--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS)),
        *("--queue-size", str(QUEUE), "--max-batch", "4", "--reload-interval", "0"),
    )
    large = [noise_png(LARGE_SIDE, seed) for seed in range(2)]
    assert all(len(image) <= MAX_BYTES for image in large)
    frames = [jpeg(320, 240, seed) for seed in range(4)]
    with running_server(tmp_path, env, *options) as server:
        # Warm: the first inference allocates the runtime's kernels and thread pools once.
        assert post(server.base, large[0], "image/png").status_code == 200
        assert post(server.base, frames[0], "image/jpeg").status_code == 200
        idle_rss = server.peak_rss_mb()
        uploads = [(large[i % 2], "image/png") for i in range(24)]
        uploads += [(frames[i % 4], "image/jpeg") for i in range(24)]
        with health_probe(server.base, tmp_path) as health, ThreadPoolExecutor(24) as clients:
            answers = list(clients.map(lambda u: post(server.base, *u), uploads))
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503}, statuses  # no 5xx but 503, no timeout (it raises)
        refused = [a for a in answers if a.status_code == 503]
        assert refused, "a queue of 4 took 48 concurrent uploads without a 503"
        assert all(a.headers["retry-after"] == "1" for a in refused)
        assert 200 in statuses
        assert health and all(status == 200 for status, _ in health)
        # After the burst it serves normally.
        assert post(server.base, frames[0], "image/jpeg").status_code == 200
        # Memory stays bounded (docs/operations.md): the bodies the queue admits (read in chunks,
        # then joined), a form being parsed, the decoded-pixel budget (two batches of uint8),
        # one float batch and its resized copy, PIL's decode buffers.
        bound_mb = (
            2 * QUEUE * MAX_BYTES + 3 * MAX_BYTES + MAX_PIXELS * (2 * 3 + 2 * 12 + 2 * 3)
        ) / 2**20
        grown = server.peak_rss_mb() - idle_rss
        assert grown <= bound_mb + 100, f"grew {grown:.0f} MiB; bound {bound_mb:.0f} MiB"
        latencies = sorted(latency * 1000 for _, latency in health)
        print(f"burst: {statuses.count(503)} x 503, health p50 {latencies[len(latencies) // 2]:.1f}"
              f" ms, worst {latencies[-1]:.0f} ms, "
              f"{len(health)} probes, memory +{grown:.0f} MiB (bound {bound_mb:.0f})")  # fmt: skip


def test_sigterm_answers_what_it_admitted_and_logs_every_answer(tmp_path, stocked_env):
    _, env = stocked_env
    frames = [jpeg(320, 240, seed) for seed in range(8)]
    options = ("--queue-size", "64", "--max-batch", "4", "--batch-wait-ms", "20",
               "--reload-interval", "0")  # fmt: skip
    with running_server(tmp_path, env, *options) as server:
        answers: list[httpx.Response | Exception] = []

        def client(i: int) -> None:
            try:
                answers.append(post(server.base, frames[i % 8], "image/jpeg"))
            except httpx.TransportError as exc:  # connection refused once the server stopped
                answers.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        # SIGTERM once the server is answering, with the other requests in flight.
        assert logged(tmp_path / "inference", 1, timeout_s=60), "nothing was answered"
        code = server.stop()
        for thread in threads:
            thread.join(60)
        output = server.output()
    # uvicorn re-raises the signal once its graceful shutdown is complete.
    assert code == -signal.SIGTERM and "Application shutdown complete" in output, output
    served = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
    assert served, f"nothing was served before SIGTERM: {answers}"
    assert all(isinstance(a, Exception) or a.status_code in (200, 503) for a in answers), answers
    in_log = {record["request_id"] for record in read_inference_log(tmp_path / "inference")}
    assert {a.json()["request_id"] for a in served} <= in_log
    assert len(in_log) == len(served)  # and nothing else: one record per answer


def test_batched_answers_equal_single_image_answers(tmp_path, tiny_model, tiny_scenes):
    """Concurrent requests are batched; each gets the answer it would get alone."""
    import asyncio
    from types import SimpleNamespace

    from secmlops.models import load
    from secmlops.serving.engine import EngineConfig, InferenceEngine
    from secmlops.serving.inference_log import InferenceLog
    from secmlops.serving.model_source import LoadedModel

    model = load(tiny_model)
    model.score_threshold = 0.0  # every peak (100 per image): many boxes to compare
    loaded = LoadedModel(model, "v1", "0" * 64, "trainer", 1, "token", score_threshold=0.0)
    source = SimpleNamespace(current=loaded)  # the engine reads only `current`
    paths = sorted((tiny_scenes / "images").iterdir())[:8]
    boundary = "b0undary"

    def form(path) -> bytes:
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"x\"\r\nContent-Type: image/png\r\n\r\n").encode()  # fmt: skip
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, "PNG")
        return head + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()

    async def answers(max_batch: int, log: str) -> list[dict]:
        config = EngineConfig(max_batch=max_batch, batch_wait_ms=500)
        engine = InferenceEngine(source, InferenceLog(tmp_path / log), config)  # type: ignore[arg-type]
        engine.start()
        try:
            ctype = f"multipart/form-data; boundary={boundary}"
            bodies = await asyncio.gather(*(engine.detect(form(p), ctype) for p in paths))
            return [json.loads(body) for body in bodies]
        finally:
            engine.close()

    alone, together = asyncio.run(answers(1, "alone")), asyncio.run(answers(8, "together"))
    batches = [r["batch"] for r in read_inference_log(tmp_path / "together")]
    assert max(batches) > 1, batches  # they were batched
    assert [r["batch"] for r in read_inference_log(tmp_path / "alone")] == [1] * len(paths)
    assert sum(len(a["detections"]) for a in alone) >= 100 * len(paths)
    for one, batched in zip(alone, together, strict=True):
        assert len(one["detections"]) == len(batched["detections"])
        for a, b in zip(one["detections"], batched["detections"], strict=True):
            # Rounded to 0.1 px and 4 decimals; float rounding of a batched convolution is ~1e-8.
            assert max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)) <= 0.1
            assert abs(a["score"] - b["score"]) <= 1e-4
        assert abs(one["adversarial_score"] - batched["adversarial_score"]) <= 1e-5

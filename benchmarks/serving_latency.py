"""Latency of `POST /v1/detect` against a bare model forward on the same images, in one run.

Three measurements per image, interleaved so machine noise hits all of them alike:
    bare      the detector's forward on the decoded image tensor (no HTTP, no screening, no log)
    plain     /v1/detect over real HTTP (uvicorn on 127.0.0.1) with screening and logging off
    full      /v1/detect with the adversarial-input screening and the inference log on
p50 and p95 in milliseconds. Goal: screening and logging add <= 15% of the bare forward at p50,
i.e. (full p50 - plain p50) / bare p50 <= 0.15.

    python benchmarks/serving_latency.py --model runs/demo/model-defended --images 200
"""

from __future__ import annotations

import argparse
import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from secmlops import models


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(app, port: int):  # type: ignore[no-untyped-def]
    """uvicorn in a background thread; returns the server (call `should_exit = True` to stop)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained model directory")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()

    import httpx
    from PIL import Image

    from secmlops.data.synthetic import generate_scenes
    from secmlops.serving.app import ServingConfig, create_app
    from secmlops.serving.inference_log import InferenceLog
    from secmlops.serving.model_source import LoadedModel

    model = models.load(args.model)
    token = "benchmark-token-" + "x" * 16
    with tempfile.TemporaryDirectory() as scratch:
        scenes = generate_scenes(Path(scratch) / "scenes", args.images, seed=5,
                                 width=args.width, height=args.height)  # fmt: skip
        files = sorted((scenes / "images").iterdir())
        payloads = [f.read_bytes() for f in files]
        tensors = [
            torch.from_numpy(np.array(Image.open(io.BytesIO(p)).convert("RGB")))
            .permute(2, 0, 1).float().div(255).unsqueeze(0)
            for p in payloads
        ]  # fmt: skip

        class Fixed:
            """A ModelSource serving one already-verified model (the benchmark times requests)."""

            current = LoadedModel(model, "bench", models.read_card(args.model).weights_sha256, "-")

            def refresh(self) -> bool:
                return False

            def describe(self) -> dict:
                return {}

        servers, clients = {}, {}
        for name, screener, log_dir in (
            ("plain", lambda m, b: (m(b), torch.zeros(len(b))), None),
            ("full", None, Path(scratch) / "log"),
        ):
            log = InferenceLog(log_dir) if log_dir else _NullLog()
            config = ServingConfig(token=token, reload_interval_s=0, detect=screener)
            port = free_port()
            servers[name] = start_server(create_app(Fixed(), log, config), port)  # type: ignore[arg-type]
            clients[name] = httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
            )
        timings: dict[str, list[float]] = {"bare": [], "plain": [], "full": []}
        for warmup in (True, False):
            for payload, tensor in zip(payloads[: 10 if warmup else None], tensors, strict=False):
                started = time.perf_counter()
                with torch.no_grad():
                    model(tensor)
                bare = time.perf_counter() - started
                measured = {"bare": bare}
                for name, client in clients.items():
                    started = time.perf_counter()
                    response = client.post(
                        "/v1/detect", files={"image": ("x.jpg", payload, "image/jpeg")}
                    )
                    measured[name] = time.perf_counter() - started
                    response.raise_for_status()
                if not warmup:
                    for key, value in measured.items():
                        timings[key].append(value * 1000)
        for server in servers.values():
            server.should_exit = True

    print(f"{len(timings['bare'])} synthetic images {args.width}x{args.height}, "
          f"torch threads {torch.get_num_threads()}, model {args.model}")  # fmt: skip
    print(f"{'':44s}{'p50 ms':>9s}{'p95 ms':>9s}")
    labels = {
        "bare": "bare model forward (baseline)",
        "plain": "/v1/detect, no screening, no log",
        "full": "/v1/detect, screening + inference log",
    }
    stats = {key: percentiles(values) for key, values in timings.items()}
    for key, label in labels.items():
        print(f"{label:44s}{stats[key][0]:9.1f}{stats[key][1]:9.1f}")
    added = (stats["full"][0] - stats["plain"][0]) / stats["bare"][0]
    print(f"screening + logging add {added:.0%} of the bare forward at p50 (goal <= 15%)")
    print(f"whole request vs bare forward at p50: {stats['full'][0] / stats['bare'][0]:.2f}x")


class _NullLog:
    def append(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


if __name__ == "__main__":
    main()

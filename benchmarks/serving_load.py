"""`secmlops serve` under closed-loop load, beside the bare model's best batched throughput.

In one run, on the same machine:
    baseline  the bare model's forward on pre-decoded float tensors (no HTTP, decoding,
              screening or logging), at batch sizes 1..32: the best images per second
    ours      `secmlops serve` (a real process on 127.0.0.1: uvicorn, the guard, the engine's
              micro-batches, the release's calibrated screener, the inference log) under
              closed-loop load by 1, 8 and 32 clients, each sending the next frame as soon as
              it has the answer to the last, for `--seconds` per level after a warm-up
on two workloads: synthetic 320x240 JPEG frames and real PETS 2009 768x576 frames. Per level:
req/s and its ratio to the bare best, p50/p95/p99 latency, 503s and other errors, and the
server's peak resident memory at that level. Goals (issue 17): at 32 clients >= 0.7x the bare
batched throughput, p99 <= 4x the single-client p50, no errors but 503s, bounded memory.

`--replicas N` runs N servers on their own ports with the clients spread over them, as N
processes behind a round-robin load balancer would be: the alternative to micro-batching in one
process (docs/operations.md, "Serving under load", compares them).

The release is a real one: a compact detector trained briefly on synthetic scenes (or
`--model DIR`), its screener calibrated on their validation split (`screening.json`), gated,
signed, pushed and promoted with a key per role. The load generator is asyncio on raw
keep-alive sockets with pre-built requests (a few tens of microseconds per request), in this
process: on a 2-core machine it shares the cores with the server, as any local client would.

    python benchmarks/serving_load.py
    python benchmarks/serving_load.py --model runs/demo/model-defended --seconds 20
    python benchmarks/serving_load.py --serve-option=--max-batch=16 --levels 1 8 32 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from release_chain import role_keys, sign_release

from secmlops.audit import AuditLog
from secmlops.policy import load_policy
from secmlops.registry import Registry

NAME = "bench"
TOKEN = "benchmark-token-" + "x" * 16
BOUNDARY = "secmlops-bench-boundary"
SECMLOPS = str(Path(sys.executable).with_name("secmlops"))


# ------------------------------------------------------------------------------- workloads
def synthetic_frames(root: Path, count: int) -> tuple[Path, list[bytes]]:
    """A synthetic dataset (for training and calibration) and `count` of its frames as JPEG."""
    from secmlops.data.synthetic import generate_scenes

    scenes = generate_scenes(root / "scenes", max(count, 240), seed=5, workers=1)
    files = sorted((scenes / "images").iterdir())[:count]
    return scenes, [_jpeg(Image.open(f).convert("RGB")) for f in files]


def pets_frames(pets_dir: Path, count: int) -> list[bytes]:
    """The first `count` frames of the PETS 2009 S2.L1 video, as JPEG (quality 90)."""
    import cv2

    capture = cv2.VideoCapture(str(pets_dir / "vtest.avi"))
    frames = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(_jpeg(Image.fromarray(bgr[:, :, ::-1])))
    capture.release()
    if not frames:
        raise SystemExit(f"no frames read from {pets_dir / 'vtest.avi'}")
    return frames


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def decoded(frames: Sequence[bytes]) -> list[torch.Tensor]:
    return [
        torch.from_numpy(np.array(Image.open(io.BytesIO(f)).convert("RGB")))
        .permute(2, 0, 1).float().div(255).contiguous()
        for f in frames
    ]  # fmt: skip


# -------------------------------------------------------------------------------- baseline
def bare_throughput(
    model: torch.nn.Module, images: list[torch.Tensor], seconds: float
) -> dict[int, float]:
    """Images per second of `model(batch)` on pre-decoded tensors, per batch size."""
    out = {}
    with torch.no_grad():
        for size in (1, 2, 4, 8, 16, 32):
            batches = [torch.stack([images[(i + j) % len(images)] for j in range(size)])
                       for i in range(0, 4 * size, size)]  # fmt: skip
            model(batches[0])  # warm the kernels for this shape
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                model(batches[done // size % len(batches)])
                done += size
            out[size] = done / (time.perf_counter() - started)
    return out


# ----------------------------------------------------------------------------------- load
def request_bytes(frame: bytes, port: int) -> bytes:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="f.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + frame
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass
class LevelResult:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    peak_rss_mb: float = 0.0
    server_cpu_s: float = 0.0  # the server process's CPU time during the measured seconds
    client_cpu_s: float = 0.0  # this process's (the load generator's)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


async def closed_loop(ports: list[int], pids: list[int], requests: list[bytes], clients: int,
                      warmup: float, seconds: float) -> LevelResult:  # fmt: skip
    """`clients` connections, each sending its next request as soon as the last is answered
    (client i talks to replica i mod len(ports), as a round-robin load balancer would)."""
    result = LevelResult(clients, seconds)
    measuring = asyncio.Event()
    stop = asyncio.Event()

    async def client(index: int) -> None:
        port = ports[index % len(ports)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        turn = index
        try:
            while not stop.is_set():
                payload = requests[turn % len(requests)]
                turn += clients
                started = time.perf_counter()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if measuring.is_set() and not stop.is_set():
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == 200:
                        result.latencies.append(time.perf_counter() - started)
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, asyncio.IncompleteReadError):
            result.transport_errors += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(warmup)
    measuring.set()
    server_cpu = sum(cpu_seconds(pid) for pid in pids)
    started, client_cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    stop.set()
    result.seconds = time.perf_counter() - started
    result.server_cpu_s = sum(cpu_seconds(pid) for pid in pids) - server_cpu
    result.client_cpu_s = time.process_time() - client_cpu
    await asyncio.gather(*tasks)
    return result


# --------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    root: Path, env: dict[str, str], port: int, options: list[str], replica: int
) -> subprocess.Popen[bytes]:
    import httpx

    command = [
        SECMLOPS, "serve", "--registry", str(root / "registry"), "--model-name", NAME,
        "--port", str(port), "--inference-log", str(root / "inference" / str(replica)),
        "--audit-log", str(root / "audit.jsonl"), "--reload-interval", "0", *options,
    ]  # fmt: skip
    log = open(root / f"server-{replica}.log", "wb")  # noqa: SIM115 (the server's lifetime)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    process.kill()
    raise SystemExit("the server did not start:\n" + (root / f"server-{replica}.log").read_text())


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each level reports its own peak.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def engine_summary(log_dir: Path) -> dict[tuple[int, int], dict[str, float]]:
    """Per image size, from the inference log: share escalated to the squeeze check, mean batch,
    and the engine's own p50 times (decode: arrival to the batch queue; total: to the answer)."""
    from secmlops.serving.inference_log import read_inference_log

    seen: dict[tuple[int, int], list[dict]] = {}
    for record in read_inference_log(log_dir):
        seen.setdefault((record["width"], record["height"]), []).append(record)
    return {
        size: {
            "escalated": float(np.mean([bool(r["screening"].get("escalated")) for r in records])),
            "batch": float(np.mean([r["batch"] for r in records])),
            "decode_ms": float(np.median([r["decode_ms"] for r in records])),
            "engine_ms": float(np.median([r["latency_ms"] for r in records])),
        }
        for size, records in seen.items()
    }


# ----------------------------------------------------------------------------------- main
def build_release(root: Path, scenes: Path, model: Path | None) -> Path:
    from secmlops.serving.calibration import calibrate_model

    model_dir = root / "v1"
    if model is not None:
        shutil.copytree(
            model,
            model_dir,
            ignore=shutil.ignore_patterns("checkpoints", "*.sig", "provenance.json"),
        )
    else:
        from secmlops.training.trainer import TrainConfig, train

        print("training a compact detector on synthetic scenes (about a minute) ...", flush=True)
        train(scenes, model_dir, TrainConfig(epochs=3, batch_size=16, warmup_steps=20, seed=1))
    calibrate_model(model_dir, scenes, "val")
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a trained model directory")
    pets = Path(__file__).resolve().parents[2] / "shared/data/pets09-s2l1"
    parser.add_argument("--pets-dir", type=Path, default=pets, help="vtest.avi of PETS 2009")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--replicas", type=int, default=1,
                        help="servers on their own ports, clients spread over them")  # fmt: skip
    parser.add_argument("--workloads", nargs="+", choices=["synthetic", "pets"],
                        default=["synthetic", "pets"])  # fmt: skip
    parser.add_argument("--seconds", type=float, default=15.0, help="measured per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured, per level")
    parser.add_argument("--frames", type=int, default=64, help="distinct frames per workload")
    parser.add_argument("--serve-option", action="append", default=[],
                        help="for secmlops serve, e.g. --serve-option=--max-batch=16")  # fmt: skip
    args = parser.parse_args()

    from secmlops import models

    with tempfile.TemporaryDirectory(prefix="secmlops-bench-serving-") as tmp:
        root = Path(tmp)
        scenes, synthetic = synthetic_frames(root, args.frames)
        workloads = {"synthetic 320x240": synthetic} if "synthetic" in args.workloads else {}
        if "pets" not in args.workloads:
            pass
        elif (args.pets_dir / "vtest.avi").is_file():
            workloads["PETS 768x576"] = pets_frames(args.pets_dir, args.frames)
        else:
            print(f"no PETS video at {args.pets_dir}: synthetic frames only")
        chain = role_keys(root)
        model_dir = sign_release(build_release(root, scenes, args.model), root, chain)
        audit = AuditLog(root / "audit.jsonl", actor="bench")
        registry = Registry.open(root / "registry")
        registry.push(model_dir, NAME, "v1", chain.keyring, audit)
        registry.promote(NAME, "v1", "production", chain.keyring, audit,
                         key=chain.keys["approver"], policy=load_policy(chain.policy))  # fmt: skip
        env = {**os.environ, **chain.env(), "SECMLOPS_SERVING_TOKEN": TOKEN,
               "SECMLOPS_WORKDIR": str(root / "work"),
               "SECMLOPS_TRUST_STATE": str(root / "trust-state.json")}  # fmt: skip
        ports = [free_port() for _ in range(args.replicas)]
        servers = [
            start_server(root, env, port, args.serve_option, replica)
            for replica, port in enumerate(ports)
        ]
        pids = [server.pid for server in servers]
        try:
            model = models.load(model_dir).eval()
            rows = []
            for label, frames in workloads.items():
                bare = bare_throughput(model, decoded(frames), seconds=3.0)
                best_batch = max(bare, key=lambda size: bare[size])
                requests = [request_bytes(f, ports[0]) for f in frames]
                for clients in args.levels:
                    for pid in pids:
                        reset_peak_rss(pid)
                    level = asyncio.run(
                        closed_loop(ports, pids, requests, clients, args.warmup, args.seconds)
                    )
                    level.peak_rss_mb = sum(peak_rss_mb(pid) for pid in pids)
                    rows.append((label, bare[1], best_batch, bare[best_batch], level))
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            for server in servers:
                server.wait(timeout=120)
        engine = engine_summary(root / "inference")
    print(f"\n{args.replicas} x secmlops serve, options: "
          f"{' '.join(args.serve_option) or '(defaults)'}; "
          f"{args.seconds:g} s per level; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'workload':<18} {'clients':>7} {'req/s':>7} {'x bare':>7} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'p99 ms':>7} {'p99/p50(1)':>10} {'503':>5} {'errors':>6} "
          f"{'p99/p50':>7} {'peak MiB':>8} {'CPU ms/req':>10}")  # fmt: skip
    single_p50: dict[str, float] = {}
    summary = []
    for label, _, _, best, level in rows:
        if level.clients == min(args.levels):
            single_p50[label] = level.percentile(50)
        rate = level.ok / level.seconds
        errors = sum(n for s, n in level.statuses.items() if s not in (200, 503))
        errors += level.transport_errors
        p50, p95, p99 = (level.percentile(q) for q in (50, 95, 99))
        print(f"{label:<18} {level.clients:>7} {rate:>7.1f} {rate / best:>7.2f} {p50:>7.1f} "
              f"{p95:>7.1f} {p99:>7.1f} {p99 / single_p50[label]:>10.2f} "
              f"{level.statuses.get(503, 0):>5} {errors:>6} {p99 / p50:>7.2f} "
              f"{level.peak_rss_mb:>8.0f} "
              f"{1000 * level.server_cpu_s / max(level.ok, 1):>10.1f}")  # fmt: skip
        print(f"{'':<18} load generator: {1000 * level.client_cpu_s / max(level.ok, 1):.2f} "
              f"CPU ms/req") if level.clients == max(args.levels) else None  # fmt: skip
        summary.append({"workload": label, "clients": level.clients, "req_s": rate,
                        "bare_best": best, "p50_ms": p50, "p99_ms": p99,
                        "peak_mib": level.peak_rss_mb})  # fmt: skip
    for label, single, batch, best, _ in {r[0]: r for r in rows}.values():
        print(f"bare model, {label}: {single:.1f} img/s at batch 1, "
              f"best {best:.1f} img/s at batch {batch}")  # fmt: skip
    for (width, height), seen in sorted(engine.items()):
        print(f"{width}x{height}, all levels: screening escalated {seen['escalated']:.0%}, "
              f"mean batch {seen['batch']:.1f}, engine p50 {seen['engine_ms']:.1f} ms "
              f"(decode {seen['decode_ms']:.1f} ms)")  # fmt: skip
    print(json.dumps({"rows": summary}))


if __name__ == "__main__":
    main()

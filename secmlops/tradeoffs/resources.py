"""What a step costs: wall time, peak memory, per-call latency.

Peak memory is the most a step *adds* to what the process already held when the step began:
- on CUDA, `torch.cuda.max_memory_allocated` after a reset, minus what was allocated at the start
  (tensors only: the CUDA context and the caching allocator's reserve are not counted);
- on the CPU, the process's resident set: Linux's peak-RSS counter (VmHWM) is reset at the start
  of the step (`/proc/self/clear_refs`, value 5) and read at the end. It counts everything
  resident, torch's tensors included, which `tracemalloc` would miss (it only sees Python's own
  allocator). Where the counter cannot be reset, a thread samples the RSS every 5 ms instead,
  which can miss a short spike.
A step that frees memory it did not allocate can show less than it used; one that reuses memory
freed by an earlier step shows only what it needed beyond that. Read the figures as "what this
step needs on top of a warm process", comparable between steps of one study.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_SAMPLE_SECONDS = 0.005
LATENCY_WARMUP = 2


@dataclass
class Usage:
    """Filled in when a `measured` block ends.

    Attributes:
        seconds: wall time of the block.
        peak_mb: peak memory the block added (MiB; see the module docstring).
        cpu_seconds: CPU time of the whole process (all threads) during the block. On a CPU
            shared with other jobs, wall time grows with their load; CPU time measures the
            work done and barely moves (a GPU's work is not in it).
    """

    seconds: float = 0.0
    peak_mb: float = 0.0
    cpu_seconds: float = 0.0


def memory_method(device: torch.device) -> str:
    """How `measured` measures peak memory on `device` (recorded in study.json)."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above the allocation at the step's start"
    if _can_reset_peak():
        return "process peak RSS (Linux VmHWM reset per step) above the RSS at the step's start"
    return "process RSS sampled every 5 ms, peak above the RSS at the step's start"


@contextmanager
def measured(device: torch.device) -> Iterator[Usage]:
    """Time a block and record the peak memory it adds (see the module docstring).

    Args:
        device: where the block's tensors live (CUDA peak statistics when it is a GPU).

    Yields:
        A `Usage` whose fields are set when the block exits normally.
    """
    usage = Usage()
    sampler: _RssSampler | None = None
    release_free_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    elif _can_reset_peak():
        _CLEAR_REFS.write_text("5")
        start_bytes = _rss_bytes()
    else:
        start_bytes = _rss_bytes()
        sampler = _RssSampler()
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        yield usage
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        usage.seconds = time.perf_counter() - started
        usage.cpu_seconds = time.process_time() - cpu_started
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        elif sampler is not None:
            peak = sampler.stop()
        else:
            peak = _peak_rss_bytes()
        usage.peak_mb = max(0, peak - start_bytes) / 2**20


def interleaved_latency(
    runs: dict[str, Callable[[Any], Any]], inputs: Sequence[Any], device: torch.device
) -> dict[str, tuple[float, float]]:
    """p50 and p95 milliseconds of each `run(x)` over `inputs`, one call per input and run.

    The runs take turns on every input (in a rotating order), so a burst of load from another
    job on a shared machine hits all of them alike instead of whichever ran at that moment.
    Each run's first `LATENCY_WARMUP` calls are made and discarded (lazy initialisation, caches).

    Args:
        runs: name -> the call to time (e.g. a detector on one image).
        inputs: what each call gets.
        device: synchronised around every call when it is a GPU, so the time is the work's.

    Returns:
        name -> (p50 ms, p95 ms).

    Raises:
        ValueError: no runs or no inputs.
    """
    if not runs or not inputs:
        raise ValueError("latency needs at least one run and one input")
    names = list(runs)
    for name in names:
        for x in list(inputs)[:LATENCY_WARMUP]:
            runs[name](x)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i, x in enumerate(inputs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            runs[name](x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples[name].append((time.perf_counter() - started) * 1000)
    return {
        name: (float(np.percentile(values, 50)), float(np.percentile(values, 95)))
        for name, values in samples.items()
    }


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc `malloc_trim`).

    Without it, memory an earlier step freed stays resident and a later step reuses it without
    raising the RSS: the first step measured would look expensive and the next ones free.
    """
    gc.collect()
    if _libc() is not None:
        _libc().malloc_trim(0)


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (musl and others lack it)
    except (OSError, AttributeError):
        return None
    return libc


@functools.cache
def _can_reset_peak() -> bool:
    # Writing is the only real test: the file can exist and still refuse (containers, seccomp).
    try:
        _CLEAR_REFS.write_text("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    return int(match[1]) if match else None


def _rss_bytes() -> int:
    if _STATUS.is_file():
        return (_status_kb("VmRSS") or 0) * 1024
    import psutil  # not on Linux: no /proc

    return int(psutil.Process().memory_info().rss)


def _peak_rss_bytes() -> int:
    return (_status_kb("VmHWM") or 0) * 1024


class _RssSampler:
    """Polls the RSS on a daemon thread until `stop`; returns the highest value seen."""

    def __init__(self) -> None:
        self._peak = _rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(_SAMPLE_SECONDS):
            self._peak = max(self._peak, _rss_bytes())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self._peak, _rss_bytes())

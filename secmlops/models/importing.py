"""Import externally trained weights into a normal model directory, without running their code.

Users bring `.pt`/`.pth` files written by `torch.save`, which are pickles: loading one the usual
way runs whatever callable it names. Here the file is read once, its opcodes are scanned against
an allowlist (`secmlops.supplychain.pickle_scan`), and only then are the same bytes handed to
`torch.load(weights_only=True)` (torch's restricted unpickler: a second, independent guard). The
weights must fit the chosen architecture exactly, and the result is written as safetensors, so
nothing downstream ever touches the pickle again.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from secmlops.errors import ModelError
from secmlops.fsutil import read_bytes_at_most, staged_directory
from secmlops.models import ModelCard, OperatingPoint, build, save
from secmlops.supplychain.pickle_scan import scan_pickle_bytes
from secmlops.supplychain.torch_archive import MAX_UNPACKED_BYTES

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
SAFETENSORS_SUFFIX = ".safetensors"
# Keys under which training scripts commonly nest the state dict in a checkpoint.
STATE_DICT_KEYS = ("state_dict", "model")
_MAX_LISTED = 8
# The file is read into memory whole (scanned bytes are loaded bytes): bounded like what it unpacks.
MAX_WEIGHTS_BYTES = MAX_UNPACKED_BYTES


def import_weights(
    weights_path: Path,
    architecture: str,
    out_dir: Path,
    *,
    config: Mapping[str, Any] | None = None,
    input_size: tuple[int, int] | None = None,
    score_threshold: float | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """Convert external weights into a model directory (model.safetensors + model.json).

    Args:
        weights_path: a `torch.save` file (.pt, .pth, .bin, .ckpt, .pkl) holding a state dict or
            a dict with it under "state_dict" or "model"; or a `.safetensors` file.
        architecture: a `secmlops.models.ARCHITECTURES` name the weights were trained for.
        out_dir: the model directory to create; written only when everything succeeded.
        config: architecture keyword arguments (as for `secmlops.models.build`).
        input_size: (height, width) the model sees; overrides `config["input_size"]`.
        score_threshold: the operating point to record (`chosen_by` "fixed"); None records
            none, and serving refuses the model until one is set.
        overwrite: replace an existing non-empty `out_dir`.

    Returns:
        The card written to `out_dir/model.json`; its `training` records the source file,
        its SHA-256 and the scan verdict.

    Raises:
        UnsafePickle: the pickle names a global outside the allowlist, or the archive is one
            torch could read otherwise than the scanner did (nothing is loaded).
        ModelError: unknown extension, unreadable file or one over `MAX_WEIGHTS_BYTES`, no
            state dict inside, keys or shapes that do not fit the architecture, or `out_dir`
            not empty.
    """
    source = Path(weights_path)
    suffix = source.suffix.lower()
    if suffix not in (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ModelError(
            f"{source}: unknown weights format {suffix or '(no extension)'!r}; expected "
            f"{', '.join((*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX))}"
        )
    try:
        # Read once: the bytes scanned are the bytes loaded (no swap between check and use).
        data = read_bytes_at_most(source, MAX_WEIGHTS_BYTES)
    except OSError as exc:
        raise ModelError(f"{source}: cannot read weights ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ModelError(f"{source}: weights file {exc}") from None
    record: dict[str, Any] = {
        "imported_from": source.name,
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }
    if suffix == SAFETENSORS_SUFFIX:
        state_dict = _read_safetensors(data, source)
        record.update(format="safetensors", scan="not needed (no pickle)")
    else:
        scan = scan_pickle_bytes(data, str(source))
        state_dict = _extract_state_dict(_torch_load(data, source), source)
        record.update(
            format=scan.format,
            scan="clean",
            scan_globals=list(scan.globals),
            fickling=scan.fickling_verdict,
        )
    cfg = dict(config or {})
    if input_size is not None:
        cfg["input_size"] = tuple(input_size)
    model = build(architecture, **cfg)
    _load_exactly(model, state_dict, architecture, source)
    try:
        with staged_directory(Path(out_dir), overwrite=overwrite) as staging:
            point = (
                None
                if score_threshold is None
                else OperatingPoint(score_threshold=score_threshold, chosen_by="fixed")
            )
            card = save(model, staging, training=record, operating_point=point)
    except FileExistsError as exc:
        raise ModelError(f"{exc}; pass overwrite to replace it") from None
    return card


def _read_safetensors(data: bytes, source: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{source}: not a readable safetensors file ({_first_line(exc)})"
        ) from None


def _torch_load(data: bytes, source: Path) -> Any:
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        raise ModelError(
            f"{source}: torch.load(weights_only=True) refused it ({_first_line(exc)})"
        ) from None


def _extract_state_dict(obj: Any, source: Path) -> dict[str, torch.Tensor]:
    """The state dict itself, or the one under "state_dict"/"model" in a checkpoint dict."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        nested = [k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)]
        if not nested:
            keys = ", ".join(sorted(map(str, obj))[:_MAX_LISTED])
            raise ModelError(
                f"{source}: no state dict found (top-level keys: {keys or 'none'}; "
                f"expected tensors, or a dict under {' or '.join(STATE_DICT_KEYS)!r})"
            )
        state = obj[nested[0]]
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ModelError(f"{source}: state dict entries are not tensors: {_listing(not_tensors)}")
    return {str(k): v for k, v in state.items()}


def _load_exactly(
    model: torch.nn.Module, state: dict[str, torch.Tensor], architecture: str, source: Path
) -> None:
    """load_state_dict(strict=True), with an error that names what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_listing(shapes)}")
    if problems:
        raise ModelError(
            f"{source}: weights do not fit {architecture} with this configuration: "
            + "; ".join(problems)
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{source}: weights do not fit {architecture} ({_first_line(exc)})"
        ) from None


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}] ({len(items)})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

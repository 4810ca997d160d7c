"""Static scan of pickle-based weight files (`torch.save`) before anything unpickles them.

Unpickling runs code: any global a pickle names can be called with arguments it chooses (a
`__reduce__` returning `(os.system, ("...",))` is enough). This module reads only the opcodes
(`pickletools.genops`, which never imports or calls anything) and accepts a file only when every
global it can reach is on an explicit allowlist of what a torch state dict needs. Anything else
(an unknown global, the extension registry, a STACK_GLOBAL whose operands are not literal strings,
a nested pickle via `torch.storage._load_from_bytes`, a TorchScript archive, bytes we cannot
parse) raises `UnsafePickle`: what cannot be checked is refused.

A zip checkpoint is opened the way torch opens it (`secmlops.supplychain.torch_archive`): the
data.pkl scanned is the one torch's own reader returns, and an archive that two zip readers
could read differently, holds members torch.save does not write, or declares more bytes than
allowed is refused before anything in it is unpacked. The storages a pickle references are
matched against the tensor bytes there are, so a small file cannot make torch allocate a large
one.

Threat model: an attacker controls every byte of the file (MITRE ATLAS AML.T0010.003, ML supply
chain: model). Trail of Bits' fickling gives an independent second opinion (its ML allowlist and
its overtly-malicious detectors); it can only add refusals, never overrule the allowlist.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import pickletools
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from secmlops.errors import IntegrityError
from secmlops.fsutil import read_bytes_at_most
from secmlops.supplychain.torch_archive import (
    ELEMENT_SIZES,
    MAX_UNPACKED_BYTES,
    Global,
    check_legacy_storages,
    check_storages,
    read_torch_zip,
)

# dtypes and devices are inert values (calling one with pickle arguments does nothing useful).
_DTYPES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
)
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "device"),
        ("torch", "Size"),
        *(("torch", storage) for storage in ELEMENT_SIZES),  # one per dtype, in persistent ids
        *(("torch", dtype) for dtype in _DTYPES),
    }
)
"""(module, name) pairs a torch state dict or a plain checkpoint dict may reference."""

# Well-known dangerous names under the module pickle records, to make refusals readable.
_KNOWN_AS = {
    "posix.system": "os.system",
    "nt.system": "os.system",
    "posix.popen": "os.popen",
    "nt.popen": "os.popen",
    "torch.storage._load_from_bytes": "a nested pickle",
}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# torch's legacy (non-zip) format: magic, protocol, sys_info, the object, storage keys; then raw
# storage bytes that torch reads without unpickling.
_TORCH_LEGACY_PICKLES = 5
_LEGACY_OBJECT = 3  # the fourth pickle is the object; its persistent ids name the storages
_UNICODE_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
# Opcodes whose argument is the value they push: kept, so persistent ids can be read back.
_LITERAL_OPS = frozenset(
    {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "SHORT_BINSTRING",
     "BINSTRING", "STRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BINFLOAT", "FLOAT"}
)  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_TUPLE_SIZES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_EXT_OPS = frozenset({"EXT1", "EXT2", "EXT4"})
_UNKNOWN = object()  # a stack value that is not a literal string

Format = Literal["torch-zip", "torch-legacy", "pickle"]


class UnsafePickle(IntegrityError):
    """A pickle names a global outside the allowlist, or cannot be verified at all.

    `offending` lists the globals as "module.name"; `reasons` every problem found.
    """

    def __init__(
        self, path: str, reasons: list[str], offending: list[str], fickling_verdict: str
    ) -> None:
        super().__init__(
            f"{path}: unsafe pickle: {'; '.join(reasons)} (fickling: {fickling_verdict}); "
            "refusing to load it"
        )
        self.path = path
        self.reasons = reasons
        self.offending = offending
        self.fickling_verdict = fickling_verdict


@dataclass(frozen=True)
class ScanResult:
    """A file that passed the scan: every global it references is allowlisted."""

    path: str
    format: Format
    sha256: str
    pickles: tuple[str, ...]
    globals: tuple[str, ...]
    fickling_verdict: str


@dataclass
class _Findings:
    globals: set[tuple[str, str]]
    reasons: list[str]
    fickling: list[tuple[int, str, str]]
    persistent_ids: dict[str, list[Any]] = field(default_factory=dict)  # where -> ids


def scan_pickle_file(path: Path) -> ScanResult:
    """Scan a pickle or `torch.save` file without unpickling it.

    Args:
        path: the file (torch zip format, torch legacy format, or one or more raw pickles).

    Returns:
        The scan result; only returned when the file is safe to hand to `torch.load`.

    Raises:
        UnsafePickle: a non-allowlisted global, or content that cannot be verified.
        IntegrityError: the file cannot be read, or is larger than `MAX_UNPACKED_BYTES`.
    """
    try:
        data = read_bytes_at_most(Path(path), MAX_UNPACKED_BYTES)
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise IntegrityError(f"{path}: weights file {exc}") from None
    return scan_pickle_bytes(data, str(path))


def scan_pickle_bytes(
    data: bytes, name: str, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES
) -> ScanResult:
    """Scan in-memory bytes (load these same bytes afterwards, not the file again).

    Args:
        data: the file's contents.
        name: how to name the file in messages.
        max_unpacked_bytes: the most a zip checkpoint's members may declare, all together.

    Returns:
        The scan result.

    Raises:
        UnsafePickle: a non-allowlisted global, or content that cannot be verified.
    """
    found = _Findings(set(), [], [])
    # Detect the format the way torch.load does (zip magic, then tar, then legacy pickle), so
    # that the bytes we check are the bytes torch would unpickle.
    if data[:4] == b"PK\x03\x04":
        fmt: Format = "torch-zip"
        streams = _scan_zip(data, found, max_unpacked_bytes)
    elif _is_tar(data):
        fmt = "pickle"
        streams = []
        found.reasons.append("legacy tar checkpoint (torch < 0.4) is not supported")
    else:
        fmt, streams = _scan_raw(data, found)
    verdict = _fickling_verdict(found.fickling) if streams else "not run"
    bad = sorted(f"{m}.{n}" for m, n in found.globals if (m, n) not in ALLOWED_GLOBALS)
    reasons = [
        f"global {_describe(m, n)} is not allowlisted"
        for m, n in sorted(found.globals - ALLOWED_GLOBALS)
    ]
    reasons += found.reasons
    if not streams and not reasons:
        reasons.append("no pickle found")
    if not reasons and verdict != "LIKELY_SAFE":
        # Our allowlist passed but fickling objects: two opinions must agree before we load.
        reasons.append("fickling flags it: " + "; ".join(m for _, _, m in found.fickling[:3]))
    if reasons:
        raise UnsafePickle(name, reasons, bad, verdict)
    return ScanResult(
        path=name,
        format=fmt,
        sha256=hashlib.sha256(data).hexdigest(),
        pickles=tuple(streams),
        globals=tuple(sorted(f"{m}.{n}" for m, n in found.globals)),
        fickling_verdict=verdict,
    )


def _describe(module: str, name: str) -> str:
    """'module.name', plus what it really is: protocol < 3 pickles name Python 2 modules
    (`__builtin__.eval`, `commands.Popen`) that the unpickler maps to Python 3 ones."""
    raw = f"{module}.{name}"
    py3_module, py3_name = _compat_pickle.NAME_MAPPING.get(
        (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
    )
    py3 = f"{py3_module}.{py3_name}"
    aliases = [a for a in (py3, _KNOWN_AS.get(py3)) if a and a != raw]
    return f"{raw} ({', '.join(aliases)})" if aliases else raw


def _is_tar(data: bytes) -> bool:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:"):
            return True
    except (tarfile.TarError, OSError, ValueError):
        return False


def _scan_zip(data: bytes, found: _Findings, max_unpacked_bytes: int) -> list[str]:
    """Scan the data.pkl torch would unpickle; check every other member is raw tensor bytes."""
    view = read_torch_zip(data, max_unpacked_bytes)
    found.reasons += view.reasons
    scanned = []
    for member, payload in view.pickles:
        end = _scan_stream(payload, 0, member, found)
        if end is not None and end != len(payload):
            found.reasons.append(f"{member}: {len(payload) - end} bytes after STOP")
        scanned.append(member)
    if not view.reasons and scanned:
        found.reasons += check_storages(view, found.persistent_ids.get(scanned[0], []))
    return scanned


def _scan_raw(data: bytes, found: _Findings) -> tuple[Format, list[str]]:
    """Scan a legacy torch file or stacked raw pickles; every stream up to EOF is checked."""
    fmt: Format = "pickle"
    streams: list[str] = []
    offset = 0
    while offset < len(data):
        where = f"pickle at byte {offset}"
        end = _scan_stream(data, offset, where, found)
        if end is None:
            break
        streams.append(where)
        if len(streams) == 1 and _is_legacy_magic(data[offset:end]):
            fmt = "torch-legacy"
        offset = end
        if fmt == "torch-legacy" and len(streams) == _TORCH_LEGACY_PICKLES:
            references = found.persistent_ids.get(streams[_LEGACY_OBJECT], [])
            found.reasons += check_legacy_storages(references, len(data) - offset)
            break  # the rest is raw storage bytes
    return fmt, streams


def _is_legacy_magic(stream: bytes) -> bool:
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(stream)]
    return [name for name, _ in ops] == ["PROTO", "LONG1", "STOP"] and (
        ops[1][1] == _TORCH_LEGACY_MAGIC
    )


def _scan_stream(data: bytes, start: int, where: str, found: _Findings) -> int | None:
    """Walk one pickle's opcodes from `start`; record its globals; return where it ends.

    The stack and memo are simulated only far enough to know the literal strings STACK_GLOBAL
    consumes; any operand that is not a literal string is refused rather than guessed.
    """
    stream = io.BytesIO(data)
    stream.seek(start)
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, pos in pickletools.genops(stream):
            name = op.name
            if name in _UNICODE_OPS or name in _LITERAL_OPS:
                stack.append(arg)
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.globals.add((module, attr))
                _apply_stack_effect(op, stack, marks)
                if name == "GLOBAL":
                    stack[-1] = Global(module, attr)
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                if not (isinstance(module, str) and isinstance(attr, str)):
                    found.reasons.append(f"{where}: STACK_GLOBAL at byte {pos} with computed names")
                    stack.append(_UNKNOWN)
                else:
                    found.globals.add((module, attr))
                    stack.append(Global(module, attr))
            elif name == "TUPLE":
                items = tuple(stack[marks[-1] :]) if marks else ()
                _apply_stack_effect(op, stack, marks)
                stack[-1] = items
            elif name in _TUPLE_SIZES:
                count = _TUPLE_SIZES[name]
                items = tuple(stack[len(stack) - count :])
                _apply_stack_effect(op, stack, marks)
                stack[-1] = items
            elif name in ("BINPERSID", "PERSID"):
                pid = arg if name == "PERSID" else (stack[-1] if stack else _UNKNOWN)
                found.persistent_ids.setdefault(where, []).append(pid)
                _apply_stack_effect(op, stack, marks)
            elif name in _EXT_OPS:
                found.reasons.append(f"{where}: {name} (copyreg extension registry) at byte {pos}")
                stack.append(_UNKNOWN)
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _PUT_OPS:
                assert arg is not None  # genops gives every PUT opcode its memo index
                memo[int(arg)] = stack[-1]
            elif name in _GET_OPS:
                assert arg is not None  # genops gives every GET opcode its memo index
                stack.append(memo.get(int(arg), _UNKNOWN))
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()
            else:
                _apply_stack_effect(op, stack, marks)
        end = stream.tell()
    except (ValueError, IndexError, EOFError) as exc:
        found.reasons.append(f"{where}: not a well-formed pickle ({exc or 'stack underflow'})")
        return None
    found.fickling.extend(_fickling_findings(data[start:end], where))
    return end


def _apply_stack_effect(op: pickletools.OpcodeInfo, stack: list[Any], marks: list[int]) -> None:
    before = op.stack_before
    if pickletools.markobject in before:
        if not marks:
            raise IndexError(f"{op.name} without MARK")
        del stack[marks.pop() :]
        below = before.index(pickletools.markobject)
    else:
        below = len(before)
    if below > len(stack):
        raise IndexError(f"{op.name}: stack underflow")
    del stack[len(stack) - below :]
    if pickletools.markobject in op.stack_after:
        marks.append(len(stack))
    else:
        stack.extend(_UNKNOWN for _ in op.stack_after)


def _fickling_findings(stream: bytes, where: str) -> list[tuple[int, str, str]]:
    """fickling's objections to one pickle as (rank, severity, message).

    Its ML allowlist, and from its general analyses only the overtly-malicious findings (the
    general ones call every torch import "likely unsafe").
    """
    from fickling.analysis import Analyzer, Severity, check_safety
    from fickling.fickle import Pickled
    from fickling.ml import MLAllowlist

    try:
        pickled = Pickled.load(stream)
        results = [
            *check_safety(pickled, analyzer=Analyzer([MLAllowlist()])).results,
            *(
                r
                for r in check_safety(pickled).results
                if r.severity >= Severity.LIKELY_OVERTLY_MALICIOUS
            ),
        ]
    except Exception as exc:  # fickling is a second opinion; its failure is a refusal
        return [(99, "ERROR", f"{where}: fickling could not analyse it ({type(exc).__name__})")]
    return [
        (r.severity.severity, r.severity.name, f"{where}: {r}")
        for r in results
        if r.severity > Severity.LIKELY_SAFE
    ]


def _fickling_verdict(findings: list[tuple[int, str, str]]) -> str:
    return max(findings)[1] if findings else "LIKELY_SAFE"

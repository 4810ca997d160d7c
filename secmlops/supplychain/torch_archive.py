"""How `torch.load` finds the members of a zip checkpoint, so the scanner reads the same bytes.

torch does not read a checkpoint with Python's `zipfile` but with its own reader
(`torch._C.PyTorchFileReader`, miniz), and on a hostile archive the two disagree:

- miniz looks a name up case-insensitively, by binary search over its sorted directory: given
  `archive/data.pkl` and `archive/DATA.PKL`, or the same name twice, which member torch
  unpickles depends on how many there are and where (neither the first nor the last; see
  tests/supplychain/test_torch_archive.py);
- the folder every name is looked up in is the one of the first directory entry;
- Python's zipfile accepts bytes before the archive and shifts every offset by their length;
  miniz reads the central directory exactly where the end record says. An archive with two
  central directories shows each reader another data.pkl.

So an archive is refused when the answer could depend on the reader (names equal but for case,
duplicates, a central directory not where the end record puts it, a member outside the one
folder, compression miniz does not read, encryption), when it holds a member `torch.save` does
not write, or when its declared sizes exceed the limit; all this before anything is
decompressed. Then torch's own reader lists the members (they must be Python's, with the same
sizes and offsets) and hands over the data.pkl bytes: what the scanner checks is what
`torch.load` unpickles. Tensor records are never unpickled; `check_storages` matches them one to
one with the storages data.pkl references, at the sizes it declares; `check_legacy_storages`
does the same for the legacy format, whose storages follow its pickles.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DATA_PKL = "data.pkl"
# Every record torch.save writes besides data.pkl and the tensors (older versions write fewer).
METADATA_RECORDS = frozenset(
    {"version", ".data/version", ".format_version", ".storage_alignment", "byteorder",
     ".data/serialization_id"}
)  # fmt: skip
STORAGE_RECORD = re.compile(r"data/(?:0|[1-9][0-9]{0,17})")  # data/<key>, keys "0", "1", ...
MAX_UNPACKED_BYTES = 2 << 30
"""Default bound on the sum of an archive's declared member sizes (the largest detector here
with an optimizer state is well under 1 GiB)."""
_LEGACY_SIZE_HEADER = 8  # a legacy file's raw storage starts with its element count
_MAX_METADATA_BYTES = 64  # the largest, .data/serialization_id, is 40 bytes
_MAX_MEMBERS = 100_000
_READ_CHUNK = 1 << 20
_READABLE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # all miniz decompresses
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
# The storage classes torch.save names in persistent ids (one per dtype), with the bytes per
# element of each: the only storage classes the scanner allows.
ELEMENT_SIZES = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}  # fmt: skip


@dataclass(frozen=True)
class Global:
    """A global a pickle names (module, name), as the scanner's stack holds it."""

    module: str
    name: str


@dataclass
class ZipView:
    """What the scanner must check in one archive.

    `pickles` holds (member name, bytes) to scan: data.pkl as torch's reader returns it, or,
    when the archive is refused anyway, every `.pkl` member (so the refusal also names what
    they call). `records` maps each record name under the folder to its size.
    """

    pickles: list[tuple[str, bytes]] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)
    prefix: str = ""
    reasons: list[str] = field(default_factory=list)


def read_torch_zip(data: bytes, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> ZipView:
    """Resolve a torch zip checkpoint's members the way `torch.load` does.

    Args:
        data: the whole file.
        max_unpacked_bytes: the most its members may declare, all together.

    Returns:
        The view; it is safe to go on only when `reasons` is empty.
    """
    view = ZipView()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        view.reasons.append(f"unreadable zip archive ({exc})")
        return view
    view.reasons += _layout_problems(data, archive, infos, max_unpacked_bytes)
    if not infos or len(infos) > _MAX_MEMBERS:
        return view
    view.prefix = infos[0].filename.partition("/")[0]
    view.records = {
        i.filename[len(view.prefix) + 1 :]: i.file_size
        for i in infos
        if i.filename.startswith(view.prefix + "/")
    }
    if view.reasons:
        if sum(i.file_size for i in infos) <= max_unpacked_bytes:  # each read is capped
            view.pickles = _python_pickles(archive, infos, view.reasons)
        return view
    data_pkl = _from_torch_reader(data, infos, view.prefix, view.reasons)
    if data_pkl is not None:
        member = f"{view.prefix}/{DATA_PKL}"
        if data_pkl != _read_capped(archive, archive.getinfo(member), view.reasons):
            view.reasons.append(f"{member}: torch's reader and Python's zipfile read other bytes")
        view.pickles = [(member, data_pkl)]
    return view


def check_storages(view: ZipView, persistent_ids: Iterable[Any]) -> list[str]:
    """Tensor records against the storages data.pkl references.

    Each reference must be a literal ('storage', <allowlisted storage class>, key, location,
    numel) whose record `data/<key>` holds exactly numel elements (torch checks that too),
    and each record must be referenced: no member is left that nothing accounted for.

    Returns:
        The problems found (empty: every record is accounted for).
    """
    problems, used = [], set()
    for pid in persistent_ids:
        nbytes = storage_bytes(pid, fields=5)
        if nbytes is None:
            problems.append(f"{DATA_PKL}: persistent id {_short(pid)} is not a storage reference")
            continue
        name = f"data/{pid[2]}"
        if name not in view.records:
            problems.append(f"{DATA_PKL} references {view.prefix}/{name}, which is not there")
        elif view.records[name] != nbytes:
            size = view.records[name]
            problems.append(f"{view.prefix}/{name}: {size} bytes, data.pkl declares {nbytes}")
        used.add(name)
    unused = sorted(n for n in view.records if STORAGE_RECORD.fullmatch(n) and n not in used)
    if unused:
        listed = ", ".join(f"{view.prefix}/{n}" for n in unused[:5])
        problems.append(f"archive members data.pkl does not reference: {listed}")
    return problems


def check_legacy_storages(persistent_ids: Iterable[Any], raw_bytes: int) -> list[str]:
    """The storages a legacy (non-zip) file's object references must fit in the `raw_bytes`
    after its pickles: torch allocates what a reference declares before it reads a byte.

    Returns:
        The problems found.
    """
    problems: list[str] = []
    declared: dict[str, int] = {}
    for pid in persistent_ids:
        if isinstance(pid, tuple) and pid[:1] == ("module",):
            continue  # a container class: its global is checked like any other
        nbytes = storage_bytes(pid, fields=6)
        if nbytes is None:
            problems.append(f"persistent id {_short(pid)} is not a storage reference")
        else:
            declared[pid[2]] = max(nbytes, declared.get(pid[2], 0))
    needed = sum(n + _LEGACY_SIZE_HEADER for n in declared.values())
    if needed > raw_bytes:
        problems.append(f"its storages declare {needed} bytes but only {raw_bytes} follow")
    return problems


def storage_bytes(pid: Any, fields: int) -> int | None:
    """Bytes a literal storage reference declares (numel x element size), else None.

    Args:
        pid: a persistent id as the scanner rebuilt it (tuples of literals and `Global`s).
        fields: 5 for the zip format, 6 for the legacy one (it adds view metadata).
    """
    if not (isinstance(pid, tuple) and len(pid) == fields and pid[0] == "storage"):
        return None
    kind, key, location, numel = pid[1:5]
    if not (isinstance(kind, Global) and kind.module == "torch"):
        return None
    size = ELEMENT_SIZES.get(kind.name)
    plain = isinstance(key, str) and isinstance(location, str)
    if size is None or not plain or type(numel) is not int or numel < 0:
        return None
    return numel * size


def _layout_problems(
    data: bytes, archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], max_bytes: int
) -> list[str]:
    """Everything that can be refused from the directory alone, before a byte is unpacked."""
    if not infos:
        return ["empty zip archive"]
    if len(infos) > _MAX_MEMBERS:
        return [f"{len(infos)} archive members, more than {_MAX_MEMBERS}"]
    problems = []
    directory = _central_directory_offset(data)
    if directory != archive.start_dir:
        # Python shifts offsets by any bytes before the archive; miniz does not.
        problems.append(
            "central directory is not where the end record puts it (bytes before the archive, "
            "or a second directory): zip readers would disagree on its members"
        )
    names = [info.filename for info in infos]
    duplicated = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicated:
        # Which duplicate torch reads depends on how many there are and where they sit.
        problems.append(f"duplicate archive members {duplicated}")
    folded = Counter(n.casefold() for n in set(names))
    clashing = sorted(n for n in set(names) if folded[n.casefold()] > 1)
    if clashing:
        problems.append(
            f"archive members {clashing} differ only in case (torch looks names up "
            "case-insensitively: it could read one the scanner did not)"
        )
    prefix = names[0].partition("/")[0]  # torch's folder: that of the first entry
    outside = sorted({n.partition("/")[0] for n in names if not n.startswith(prefix + "/")})
    if "/" not in names[0] or outside:
        problems.append(f"expected one top-level folder, found {sorted({prefix, *outside})}")
    rests = [n[len(prefix) + 1 :] for n in names if n.startswith(prefix + "/")]
    if any(r.casefold() == "constants.pkl" or r.casefold().startswith("code/") for r in rests):
        problems.append("TorchScript archive (it carries code, not only weights)")
    if rests.count(DATA_PKL) != 1:
        problems.append("expected exactly one data.pkl (torch.save layout)")
    for info, rest in zip(infos, (n[len(prefix) + 1 :] for n in names), strict=True):
        problems += _member_problems(info, rest, info.filename.startswith(prefix + "/"))
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        problems.append(f"archive unpacks to {total} bytes, more than the {max_bytes} allowed")
    return problems


def _member_problems(info: zipfile.ZipInfo, rest: str, inside: bool) -> list[str]:
    name, problems = info.filename, []
    known = rest in (DATA_PKL, *METADATA_RECORDS) or bool(STORAGE_RECORD.fullmatch(rest))
    if inside and not known and rest.casefold() != "constants.pkl":
        problems.append(f"unexpected archive member {name!r} (torch.save does not write it)")
    if info.flag_bits & 0x1:
        problems.append(f"{name}: encrypted member")
    if info.compress_type not in _READABLE:
        problems.append(f"{name}: compression method {info.compress_type} (torch reads none)")
    if rest in METADATA_RECORDS and info.file_size > _MAX_METADATA_BYTES:
        problems.append(f"{name}: {info.file_size} bytes, too large for a metadata record")
    return problems


def _central_directory_offset(data: bytes) -> int | None:
    """Where the end record says the central directory starts, found as miniz finds it (the
    last end-record signature with a full record after it; its zip64 record when present)."""
    at = data.rfind(_EOCD, 0, len(data) - 18)  # a signature with 22 bytes from its start
    if at < 0:
        return None
    offset: int = struct.unpack_from("<I", data, at + 16)[0]
    locator = at - 20
    if locator >= 0 and data[locator : locator + 4] == _EOCD64_LOCATOR:
        record: int = struct.unpack_from("<Q", data, locator + 8)[0]
        if data[record : record + 4] != _EOCD64 or record + 56 > len(data):
            return None
        offset = struct.unpack_from("<Q", data, record + 48)[0]
    return offset


def _from_torch_reader(
    data: bytes, infos: list[zipfile.ZipInfo], prefix: str, problems: list[str]
) -> bytes | None:
    """data.pkl as torch's reader returns it, once its member list matches Python's."""
    import torch

    try:
        reader: Any = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = list(reader.get_all_records())
        if records != [i.filename[len(prefix) + 1 :] for i in infos]:
            problems.append(f"torch's zip reader lists other members ({records[:8]})")
            return None
        differ = [
            (info.filename, seen, (info.file_size, info.header_offset))
            for info, name in zip(infos, records, strict=True)
            if (seen := (reader.get_record_size(name), reader.get_record_header_offset(name)))
            != (info.file_size, info.header_offset)
        ]
        if differ:
            member, seen, python = differ[0]
            problems.append(
                f"torch's zip reader and Python's zipfile disagree on {len(differ)} member(s): "
                f"{member} has size and offset {seen} for torch, {python} for Python"
            )
            return None
        return bytes(reader.get_record(DATA_PKL))
    except RuntimeError as exc:
        problems.append(f"torch cannot read the archive ({_first_line(exc)})")
        return None


def _python_pickles(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], problems: list[str]
) -> list[tuple[str, bytes]]:
    """Every `.pkl` member as Python reads it (only to name what a refused archive calls)."""
    found = []
    for info in infos:
        if info.filename.casefold().endswith(".pkl") and info.compress_type in _READABLE:
            payload = _read_capped(archive, info, problems)
            if payload is not None:
                found.append((info.filename, payload))
    return found


def _read_capped(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, problems: list[str]
) -> bytes | None:
    """A member's bytes, never more than it declares (a lying size is an error, not a bomb)."""
    chunks, total = [], 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(min(_READ_CHUNK, info.file_size + 1 - total) or 1):
                total += len(chunk)
                if total > info.file_size:
                    problems.append(f"{info.filename}: unpacks past its declared size")
                    return None
                chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as exc:
        problems.append(f"cannot read {info.filename} ({exc})")
        return None
    return b"".join(chunks)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

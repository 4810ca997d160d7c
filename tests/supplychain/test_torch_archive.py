"""Zip checkpoints are read the way torch reads them: no archive shows the scanner one pickle and
torch.load another, and none unpacks past the limit.

The first tests are the experiment: they show what torch's own zip reader (miniz, through
`torch._C.PyTorchFileReader`) does with names that differ only in case and with duplicates.
"""

import io
import os
import pickle
import struct
import warnings
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from secmlops.cli import EXIT_USER_ERROR, app
from secmlops.models.importing import import_weights
from secmlops.supplychain.pickle_scan import UnsafePickle, scan_pickle_bytes

from .test_pickle_scan import Payload, torch_bytes

CLEAN = torch_bytes({"w": torch.zeros(2)})
MEMBERS = [(i.filename, zipfile.ZipFile(io.BytesIO(CLEAN)).read(i))
           for i in zipfile.ZipFile(io.BytesIO(CLEAN)).infolist()]  # fmt: skip
REST = [(name, data) for name, data in MEMBERS if name != "archive/data.pkl"]
A = pickle.dumps("pickle A", protocol=2)
B = pickle.dumps("pickle B", protocol=2)


def archive(entries, compression=zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(out, "w", compression=compression) as dst:
            for name, data in entries:
                dst.writestr(name, data)
    return out.getvalue()


def torch_reads(data: bytes) -> bytes:
    """The data.pkl bytes torch.load would unpickle (its own reader, its own lookup)."""
    return torch._C.PyTorchFileReader(io.BytesIO(data)).get_record("data.pkl")


def refused(data: bytes, **kwargs) -> str:
    with pytest.raises(UnsafePickle) as info:
        scan_pickle_bytes(data, "weights.pt", **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------ the experiment
def test_torch_finds_names_case_insensitively():
    # Python's zipfile has no "archive/data.pkl" here; torch reads "archive/Data.Pkl" as it.
    only_other_case = archive([("archive/Data.Pkl", B), *REST])
    assert "archive/data.pkl" not in zipfile.ZipFile(io.BytesIO(only_other_case)).namelist()
    assert torch_reads(only_other_case) == B
    # Two names equal but for case: torch unpickles DATA.PKL, Python reads data.pkl.
    collision = archive([("archive/data.pkl", A), ("archive/DATA.PKL", B), *REST])
    assert torch_reads(collision) == B
    assert zipfile.ZipFile(io.BytesIO(collision)).read("archive/data.pkl") == A


def test_which_duplicate_torch_reads_depends_on_count_and_position():
    # miniz binary-searches a sorted directory: neither "first wins" nor "last wins" holds.
    winners = set()
    for count in (2, 3, 4, 5, 8):
        copies = [("archive/data.pkl", A if i == 0 else B) for i in range(count)]
        for layout in ([*copies, *REST], [*REST, *copies]):
            winners.add((count, layout[0][0] == "archive/data.pkl", torch_reads(archive(layout))))
    first_wins = {w for w in winners if w[2] == A}
    assert first_wins and len(first_wins) < len(winners)


# ------------------------------------------------------------------------ the refusals
def test_case_collision_archive_is_refused_naming_both_members(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=2)
    data = archive([("archive/data.pkl", MEMBERS[0][1]), ("archive/DATA.PKL", evil), *REST])
    message = refused(data)
    assert "['archive/DATA.PKL', 'archive/data.pkl'] differ only in case" in message
    assert "posix.system" in message  # the other member is scanned too, to say what it calls
    assert not marker.exists()


def test_only_other_case_data_pkl_is_refused():
    message = refused(archive([("archive/Data.Pkl", B), *REST]))
    assert "unexpected archive member 'archive/Data.Pkl'" in message
    assert "expected exactly one data.pkl" in message


def test_duplicate_member_archive_is_refused():
    data = archive([("archive/data.pkl", MEMBERS[0][1]), ("archive/data.pkl", B), *REST])
    assert "duplicate archive members ['archive/data.pkl']" in refused(data)


def test_zip_bomb_is_refused_before_it_is_unpacked():
    # 64 MiB of zeros deflate to 64 KiB; the limit (lowered here) counts declared sizes.
    bomb = archive([*MEMBERS, ("archive/data/1", bytes(64 << 20))], zipfile.ZIP_DEFLATED)
    assert len(bomb) < 1 << 20
    message = refused(bomb, max_unpacked_bytes=32 << 20)
    assert f"archive unpacks to {(64 << 20) + sum(len(d) for _, d in MEMBERS)} bytes" in message
    assert "more than the 33554432 allowed" in message


def test_declared_size_over_the_default_limit_is_refused_without_reading():
    # A directory that declares 3.75 GiB for one record: refused on the declaration alone.
    data = bytearray(CLEAN)
    struct.pack_into("<I", data, directory_entry(CLEAN, "archive/data/0") + 24, 0xF0000000)
    declared = sum(len(d) for _, d in MEMBERS) - 8 + 0xF0000000
    assert f"archive unpacks to {declared} bytes, more than the {2 << 30} allowed" in refused(
        bytes(data)
    )


def test_member_that_unpacks_past_its_declared_size_is_refused():
    # data.pkl declares its real size, but its deflate stream carries 8 MiB more.
    real = MEMBERS[0][1]
    data = bytearray(archive([("archive/data.pkl", real + bytes(8 << 20)), *REST],
                             zipfile.ZIP_DEFLATED))  # fmt: skip
    struct.pack_into("<I", data, directory_entry(bytes(data), "archive/data.pkl") + 24, len(real))
    message = refused(bytes(data))
    assert "archive/data.pkl" in message and "Bad CRC-32" in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("archive/extra.pkl", B), "unexpected archive member 'archive/extra.pkl'"),
        (("archive/notes.txt", b"hello"), "unexpected archive member 'archive/notes.txt'"),
        (("archive/data/1", bytes(8)), "data.pkl does not reference: archive/data/1"),
        (("archive/code/x.py", b"import os"), "TorchScript archive"),
        (("other/data.pkl", B), "expected one top-level folder"),
    ],
)
def test_members_torch_save_does_not_write_are_refused(extra, expected):
    assert expected in refused(archive([*MEMBERS, extra]))


def test_storage_sizes_must_match_what_data_pkl_declares():
    data_pkl = MEMBERS[0][1]
    assert b"K\x02t" in data_pkl  # numel 2 of the FloatStorage
    longer = data_pkl.replace(b"K\x02t", b"K\x03t")
    message = refused(archive([("archive/data.pkl", longer), *REST]))
    assert "archive/data/0: 8 bytes, data.pkl declares 12" in message
    missing = [m for m in MEMBERS if m[0] != "archive/data/0"]
    assert "references archive/data/0, which is not there" in refused(archive(missing))


def test_two_central_directories_are_refused(tmp_path):
    # Python's zipfile adds the length of "prepended" bytes to every offset; miniz does not.
    # Here Python sees a clean data.pkl while torch's reader returns the attacker's.
    marker = tmp_path / "pwned"
    evil_pkl = pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=2)
    evil = archive([("archive/data.pkl", evil_pkl), *REST])
    clean = archive(MEMBERS)
    crafted = _two_directories(evil, clean)
    assert zipfile.ZipFile(io.BytesIO(crafted)).read("archive/data.pkl") == MEMBERS[0][1]
    assert torch_reads(crafted) == evil_pkl
    assert "central directory is not where the end record puts it" in refused(crafted)
    assert not marker.exists()


def test_legacy_file_declaring_more_tensor_bytes_than_it_holds_is_refused():
    legacy = torch_bytes({"w": torch.zeros(2)}, _use_new_zipfile_serialization=False)
    scan_pickle_bytes(legacy, "old.pt")  # its good twin passes
    assert b"K\x02N" in legacy  # numel 2, no view
    huge = legacy.replace(b"K\x02N", b"\x8a\x05" + (10**11).to_bytes(5, "little") + b"N")
    assert "storages declare 400000000008 bytes but only 16 follow" in refused(huge)


def test_a_plain_torch_save_checkpoint_still_imports(tmp_path):
    from secmlops import models

    size = (64, 64)
    weights = tmp_path / "external.pt"
    torch.save(models.build("compact_centernet", input_size=size).state_dict(), weights)
    result = CliRunner().invoke(app, ["model", "import", "--weights", str(weights),
                                      "--architecture", "compact_centernet", "--out",
                                      str(tmp_path / "m"), "--input-size", "64x64"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "scan: clean" in result.output


def test_the_import_command_refuses_a_case_collision_in_one_line(tmp_path):
    weights = tmp_path / "collision.pt"
    weights.write_bytes(archive([("archive/data.pkl", MEMBERS[0][1]), ("archive/DATA.PKL", B),
                                 *REST]))  # fmt: skip
    result = CliRunner().invoke(app, ["model", "import", "--weights", str(weights),
                                      "--architecture", "compact_centernet", "--out",
                                      str(tmp_path / "m")])  # fmt: skip
    assert result.exit_code == EXIT_USER_ERROR, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "differ only in case" in lines[0]
    with pytest.raises(UnsafePickle):
        import_weights(weights, "compact_centernet", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def directory_entry(data: bytes, name: str) -> int:
    """Where the central directory entry of `name` starts."""
    at = zipfile.ZipFile(io.BytesIO(data)).start_dir
    while data[at + 46 : at + 46 + struct.unpack_from("<H", data, at + 28)[0]] != name.encode():
        at += 46 + sum(struct.unpack_from("<HHH", data, at + 28))
    return at


def _two_directories(seen_by_torch: bytes, seen_by_python: bytes) -> bytes:
    """torch's local entries, Python's, torch's directory, Python's directory, one end record
    that points at torch's. Python takes the directory just before the end record and shifts
    its offsets by the difference; miniz reads the one the record names."""

    def split(data: bytes) -> tuple[bytes, bytes, int]:
        size, offset = struct.unpack_from("<II", data, data.rfind(b"PK\x05\x06") + 12)
        count = struct.unpack_from("<H", data, data.rfind(b"PK\x05\x06") + 10)[0]
        return data[:offset], data[offset : offset + size], count

    torch_locals, torch_directory, count = split(seen_by_torch)
    python_locals, python_directory, _ = split(seen_by_python)
    assert len(torch_directory) == len(python_directory)  # same names, same entry sizes
    size = len(python_directory)
    shifted, at = bytearray(python_directory), 0
    while at < len(shifted):
        names, extra, comment = struct.unpack_from("<HHH", shifted, at + 28)
        offset = struct.unpack_from("<I", shifted, at + 42)[0]
        struct.pack_into("<I", shifted, at + 42, offset + len(torch_locals) - size)
        at += 46 + names + extra + comment
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, count, count, size,
                      len(torch_locals) + len(python_locals), 0)  # fmt: skip
    return torch_locals + python_locals + torch_directory + bytes(shifted) + end

"""The pickle scanner: real malicious pickles are refused without running; torch.save passes."""

import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch

from secmlops import models
from secmlops.errors import IntegrityError
from secmlops.supplychain.pickle_scan import (
    ALLOWED_GLOBALS,
    UnsafePickle,
    scan_pickle_bytes,
    scan_pickle_file,
)


class Payload:
    """Pickles as `func(*args)`: what an attacker's `__reduce__` returns."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def compact_state_dict():
    torch.manual_seed(0)
    return models.build("compact_centernet", input_size=(64, 64)).state_dict()


def refused(data: bytes, tmp_path, name="weights.pt") -> UnsafePickle:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UnsafePickle) as info:
        scan_pickle_file(path)
    assert str(path) in str(info.value)
    return info.value


def test_the_payload_is_live_when_unpickled(tmp_path):
    # Control: the same bytes the scanner refuses really do run a command when unpickled.
    marker = tmp_path / "control"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Payload(os.system, f"touch {marker}")))
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True)
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_os_system_pickle_is_refused_at_every_protocol(tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=protocol)
    error = refused(data, tmp_path, "evil.pkl")
    assert "posix.system (os.system) is not allowlisted" in str(error)
    assert error.offending == ["posix.system"]
    assert error.fickling_verdict in {"LIKELY_OVERTLY_MALICIOUS", "OVERTLY_MALICIOUS"}
    assert not marker.exists()


def test_payload_inside_a_torch_zip_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = torch_bytes({"weight": torch.ones(3), "extra": Payload(os.system, f"touch {marker}")})
    assert data[:4] == b"PK\x03\x04"
    error = refused(data, tmp_path)
    assert "posix.system" in str(error) and "os.system" in str(error)
    assert not marker.exists()


def test_payload_inside_a_legacy_torch_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = {"weight": torch.ones(3), "extra": Payload(os.system, f"touch {marker}")}
    data = torch_bytes(payload, _use_new_zipfile_serialization=False)
    assert "posix.system" in str(refused(data, tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("func", "args", "offending"),
    [
        (eval, ("__import__('os').system('true')",), "builtins.eval"),  # __builtin__ in proto 2
        (exec, ("import os",), "builtins.exec"),
        (subprocess.Popen, (["true"],), "subprocess.Popen"),  # commands.Popen in proto 2
        (getattr, ("text", "upper"), "builtins.getattr"),
        (__import__, ("os",), "builtins.__import__"),
    ],
)
def test_dangerous_callables_are_refused(tmp_path, func, args, offending):
    for protocol in (2, 5):
        data = pickle.dumps(Payload(func, *args), protocol=protocol)
        error = refused(data, tmp_path)
        assert len(error.offending) == 1 and offending in str(error)


def test_nested_pickle_of_a_tensor_is_refused(tmp_path):
    # pickle.dumps of a tensor stores its storage as torch.save bytes, loaded by a nested call.
    error = refused(pickle.dumps({"w": torch.ones(2)}), tmp_path)
    assert "torch.storage._load_from_bytes (a nested pickle)" in str(error)


def test_stack_global_names_are_resolved_through_the_memo(tmp_path):
    # Protocol 4: "posix" and "system" pushed once, memoized, fetched again for STACK_GLOBAL.
    data = (
        b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94\x8c\x0bcollections\x94\x8c\x0bOrderedDict"
        b"\x94\x93)R0h\x00h\x01\x93\x8c\x04true\x85R."
    )
    error = refused(data, tmp_path)
    assert error.offending == ["posix.system"]


def test_stack_global_with_computed_names_is_refused(tmp_path):
    # The module name comes from a call result, not a literal: the scanner cannot know it.
    data = b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R\x8c\x06system\x93)R."
    assert "STACK_GLOBAL at byte" in str(refused(data, tmp_path))


@pytest.mark.parametrize(
    ("data", "offending"),
    [
        (b"(Vtouch x\nitorch\nload\n.", "torch.load"),  # INST
        (b"\x80\x02ctorch\nload\nq\x00X\x01\x00\x00\x00x\x85R.", "torch.load"),  # GLOBAL+REDUCE
        (b"\x80\x02ccollections\nnamedtuple\n)R.", "collections.namedtuple"),
        (
            b"\x80\x02ctorch._utils\n_rebuild_from_type_v2\n)R.",
            "torch._utils._rebuild_from_type_v2",
        ),
    ],
)
def test_allowlisted_module_with_other_name_is_refused(tmp_path, data, offending):
    assert refused(data, tmp_path).offending == [offending]


def test_extension_registry_opcode_is_refused(tmp_path):
    assert "copyreg extension registry" in str(refused(b"\x80\x02\x82\x01.", tmp_path))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not a pickle at all", "not a well-formed pickle"),
        (pickle.dumps({"a": 1})[:-1], "not a well-formed pickle"),
        (pickle.dumps({"a": 1}) + b"junk", "not a well-formed pickle"),
        (b"", "no pickle found"),
    ],
)
def test_what_cannot_be_parsed_is_refused(tmp_path, data, reason):
    assert reason in str(refused(data, tmp_path))


def test_torch_save_of_a_state_dict_passes_with_only_allowlisted_globals(tmp_path):
    path = tmp_path / "weights.pt"
    state = compact_state_dict()
    state["half"] = torch.zeros(2, dtype=torch.float16)
    torch.save(state, path)
    result = scan_pickle_file(path)
    assert result.format == "torch-zip"
    assert result.pickles == ("weights/data.pkl",)
    assert set(result.globals) == {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
        "torch.HalfStorage",
        "torch.LongStorage",  # BatchNorm's num_batches_tracked
    }
    assert result.fickling_verdict == "LIKELY_SAFE"
    assert len(result.sha256) == 64


def test_checkpoint_dict_and_legacy_format_pass():
    checkpoint = {
        "state_dict": compact_state_dict(),
        "epoch": 3,
        "lr": 0.1,
        "device": torch.device("cpu"),
        "dtype": torch.float32,
        "scale": torch.nn.Parameter(torch.ones(1)),
    }
    result = scan_pickle_bytes(torch_bytes(checkpoint), "ckpt.pt")
    assert {"torch.device", "torch.float32", "torch._utils._rebuild_parameter"} <= set(
        result.globals
    )
    legacy = scan_pickle_bytes(torch_bytes(checkpoint, _use_new_zipfile_serialization=False), "x")
    assert legacy.format == "torch-legacy" and len(legacy.pickles) == 5
    allowed = {f"{module}.{name}" for module, name in ALLOWED_GLOBALS}
    assert set(result.globals) <= allowed and set(legacy.globals) <= allowed


def rewrite_zip(data: bytes, extra: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        for name, payload in extra.items():
            dst.writestr(name, payload)
    return out.getvalue()


def test_zip_layout_tricks_are_refused(tmp_path):
    clean = torch_bytes({"w": torch.ones(2)})
    evil = pickle.dumps(Payload(os.system, "true"), protocol=2)
    assert "posix.system" in str(refused(rewrite_zip(clean, {"archive/extra.pkl": evil}), tmp_path))
    assert "TorchScript" in str(
        refused(rewrite_zip(clean, {"archive/constants.pkl": pickle.dumps(())}), tmp_path)
    )
    assert "one top-level folder" in str(refused(rewrite_zip(clean, {"other/x": b"1"}), tmp_path))
    with pytest.warns(UserWarning, match="Duplicate name"):
        duplicated = rewrite_zip(clean, {"archive/data.pkl": evil})
    assert "duplicate archive members" in str(refused(duplicated, tmp_path))


def test_legacy_tar_checkpoints_are_refused(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("pickle")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\x80\x02N."))
    assert "legacy tar" in str(refused(out.getvalue(), tmp_path))


def test_missing_file_is_an_integrity_error(tmp_path):
    with pytest.raises(IntegrityError, match="cannot read"):
        scan_pickle_file(tmp_path / "absent.pt")
